//! File descriptors, the resource a gateway of long streams runs out of first: each stream
//! holds two sockets (the client's and the backend's), and the usual soft limit of 1,024
//! open files caps a replica near 500 streams however much CPU and memory it has.
//!
//! [`raise_nofile_limit`] lifts the soft `RLIMIT_NOFILE` to the hard limit at start (the
//! `rlimit` crate; on Linux bounded by `fs.nr_open`); `hale serve` logs the figures at INFO.
//! [`is_exhausted`] recognises EMFILE/ENFILE and [`usage`] says how many descriptors are open
//! against which limit, for the accept loop's rate-limited warning.

use std::io;

/// The soft limit on open files before and after raising it, and the hard limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NofileLimit {
    pub before: u64,
    pub now: u64,
    pub hard: u64,
}

/// Raises the soft open-file limit to the hard limit (see the module docs).
pub fn raise_nofile_limit() -> io::Result<NofileLimit> {
    let (before, hard) = rlimit::Resource::NOFILE.get()?;
    let now = rlimit::increase_nofile_limit(hard)?;
    Ok(NofileLimit { before, now, hard })
}

/// Whether `e` says the process (EMFILE) or the system (ENFILE) has no descriptor left.
pub fn is_exhausted(e: &io::Error) -> bool {
    const EMFILE: i32 = 24;
    const ENFILE: i32 = 23;
    matches!(e.raw_os_error(), Some(EMFILE | ENFILE))
}

/// Descriptors open in this process now and its soft limit, where they can be read (Linux:
/// `/proc/self/fd`); `None` for a figure that cannot be read.
pub fn usage() -> (Option<usize>, Option<u64>) {
    let open = std::fs::read_dir("/proc/self/fd").ok().map(Iterator::count);
    let limit = rlimit::Resource::NOFILE.get_soft().ok();
    (open, limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raises_to_the_hard_limit_and_counts_what_is_open() {
        let limit = raise_nofile_limit().unwrap();
        assert!(
            limit.now >= limit.before && limit.now <= limit.hard,
            "{limit:?}"
        );
        let (open, soft) = usage();
        assert_eq!(soft, Some(limit.now));
        assert!(open.unwrap() >= 3, "stdin, stdout, stderr at least");
    }

    #[test]
    fn recognises_descriptor_exhaustion_only() {
        assert!(is_exhausted(&io::Error::from_raw_os_error(24)));
        assert!(is_exhausted(&io::Error::from_raw_os_error(23)));
        assert!(!is_exhausted(&io::Error::from_raw_os_error(111)));
        assert!(!is_exhausted(&io::Error::other("x")));
    }
}
