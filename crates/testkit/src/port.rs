//! Free loopback ports for servers that a test starts and must know the address of upfront.
//!
//! Asking the OS for port 0 and closing the socket again leaves a window in which another
//! process may take the port, so callers that spawn servers (see `RedisServer`) retry on a
//! bind failure. Within one test process a port is never handed out twice, which removes the
//! common race of two servers in the same test being given the same number.

use std::collections::HashSet;
use std::io;
use std::net::{Ipv4Addr, TcpListener};
use std::sync::{Mutex, PoisonError};

/// Ports already handed out by this process; the OS may offer a just-closed port again.
static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// How many times to ask the OS before giving up on finding a port not handed out before.
const ATTEMPTS: usize = 64;

/// Returns a TCP port on 127.0.0.1 that was free a moment ago and that this process has not
/// handed out before.
///
/// # Panics
///
/// When the loopback interface cannot be bound at all: no test that needs a port can run then.
#[expect(
    clippy::panic,
    reason = "a host without a bindable loopback cannot run any test that needs a port"
)]
pub fn free_port() -> u16 {
    match try_free_port() {
        Ok(port) => port,
        Err(err) => panic!("cannot find a free port on 127.0.0.1: {err}"),
    }
}

/// Like [`free_port`], but reports a failure to bind instead of panicking.
pub fn try_free_port() -> io::Result<u16> {
    for _ in 0..ATTEMPTS {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
            .local_addr()?
            .port();
        // A poisoned lock only means another test panicked while holding it; the set of
        // ports it guards is still meaningful.
        let mut guard = HANDED_OUT.lock().unwrap_or_else(PoisonError::into_inner);
        if guard.get_or_insert_with(HashSet::new).insert(port) {
            return Ok(port);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AddrNotAvailable,
        format!("the OS offered only ports already handed out ({ATTEMPTS} attempts)"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_port_is_bindable_on_loopback() {
        let port = free_port();
        assert_ne!(port, 0);
        TcpListener::bind((Ipv4Addr::LOCALHOST, port)).expect("the port should still be free");
    }

    #[test]
    fn free_port_never_repeats_within_a_process() {
        let ports: Vec<u16> = (0..50).map(|_| free_port()).collect();
        let unique: HashSet<u16> = ports.iter().copied().collect();
        assert_eq!(unique.len(), ports.len(), "ports repeated: {ports:?}");
    }
}
