//! The listener and the connections: accept loop, HTTP/1.1 serving with keep-alive, and the
//! `refuse` failure mode, which really closes the listening socket.
//!
//! `refuse` works at the socket level because that is what a proxy must survive: while the
//! listener is closed, connects get ECONNREFUSED; open keep-alive connections are shut as
//! well (gracefully, so the `/__mode` request that ordered the refuse still gets its answer,
//! and cut after [`CLOSE_GRACE`] if a response does not finish). After the requested time
//! the same address is bound again (`SO_REUSEADDR`, so connections in TIME_WAIT do not block
//! it) and the mode returns to healthy.
//!
//! Each connection gets its own oneshot "close now" receiver, registered once per
//! connection, so nothing is shared between connections per request; a shared watch channel
//! would take a common lock every time a connection task is polled.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, oneshot};

use crate::mode::RefuseOrder;
use crate::service::{self, State};

/// The listen backlog: deep enough for benchmark bursts of new connections.
const BACKLOG: u32 = 4096;
/// How long a connection may take to finish its current response once told to close.
const CLOSE_GRACE: Duration = Duration::from_millis(500);
/// How long to wait before retrying a failed accept (typically out of file descriptors).
const ACCEPT_RETRY: Duration = Duration::from_millis(10);
/// How long to wait before retrying to bind the port again after a refuse.
const REBIND_RETRY: Duration = Duration::from_millis(50);

/// Binds `addr` with `SO_REUSEADDR` and starts listening.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// The open connections and how to close them; see the module docs.
#[derive(Debug, Default)]
pub struct Connections {
    next_id: AtomicU64,
    open: Mutex<HashMap<u64, oneshot::Sender<()>>>,
}

impl Connections {
    fn register(&self) -> (u64, oneshot::Receiver<()>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, tx);
        (id, rx)
    }

    fn deregister(&self, id: u64) {
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
    }

    /// Tells every open connection to close.
    fn close_all(&self) {
        let open = std::mem::take(&mut *self.open.lock().unwrap_or_else(PoisonError::into_inner));
        for tx in open.into_values() {
            let _ = tx.send(());
        }
    }
}

/// Removes a connection from [`Connections`] however its task ends.
struct Registered {
    connections: &'static Connections,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.connections.deregister(self.id);
    }
}

/// Serves forever: accepts connections, and closes and re-opens the listener on refuse
/// orders.
pub async fn run(
    st: &'static State,
    mut listener: TcpListener,
    mut refuse_rx: mpsc::Receiver<RefuseOrder>,
) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    loop {
        let order = accept_until_refuse(st, &listener, &mut refuse_rx).await;
        drop(listener);
        st.connections.close_all();
        tokio::time::sleep_until(order.until).await;
        listener = rebind(addr).await;
        st.mode.end_refuse(order.generation);
    }
}

/// Accepts connections until a refuse order arrives, and returns it.
async fn accept_until_refuse(
    st: &'static State,
    listener: &TcpListener,
    refuse_rx: &mut mpsc::Receiver<RefuseOrder>,
) -> RefuseOrder {
    loop {
        tokio::select! {
            Some(order) = refuse_rx.recv() => return order,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    // Registering here, in the accept loop, means a refuse can never miss a
                    // connection accepted just before it.
                    let (id, close_rx) = st.connections.register();
                    let registered = Registered { connections: &st.connections, id };
                    tokio::spawn(serve_connection(st, stream, close_rx, registered));
                }
                Err(e) => {
                    eprintln!("mockllm: accept failed: {e}");
                    tokio::time::sleep(ACCEPT_RETRY).await;
                }
            },
        }
    }
}

/// Binds `addr` again, retrying until it is free.
async fn rebind(addr: SocketAddr) -> TcpListener {
    let mut reported = false;
    loop {
        match bind(addr) {
            Ok(listener) => return listener,
            Err(e) => {
                if !reported {
                    eprintln!("mockllm: cannot bind {addr} again yet ({e}); retrying");
                    reported = true;
                }
                tokio::time::sleep(REBIND_RETRY).await;
            }
        }
    }
}

/// Serves one connection until the client leaves, the service drops it, or it is told to
/// close.
async fn serve_connection(
    st: &'static State,
    stream: TcpStream,
    close_rx: oneshot::Receiver<()>,
    _registered: Registered,
) {
    // Small requests and answers must not wait for Nagle's algorithm.
    let _ = stream.set_nodelay(true);
    let service = service_fn(move |req| service::handle(st, req));
    let mut builder = http1::Builder::new();
    // No header timeout: it would arm a timer per request, and mockllm only meets clients
    // it trusts (tests, benchmarks).
    builder.header_read_timeout(None);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    let mut conn = pin!(conn);
    tokio::select! {
        // Connection errors are the client's business (resets, aborted streams); mockllm
        // has nothing to add to them.
        _ = conn.as_mut() => {}
        Ok(()) = close_rx => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(CLOSE_GRACE, conn.as_mut()).await;
        }
    }
}
