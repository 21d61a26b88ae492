//! Which of the gateway's serving threads the code is running on.
//!
//! The binary serves client connections on several threads, each with a single-threaded tokio
//! runtime of its own (see `hale::workers`), and tells each thread its index once with
//! [`set_index`]. The proxy keeps what a request touches on every call per thread, by that
//! index: the idle upstream connections (a connection belongs to the event loop of the thread
//! that opened it; used from another thread, its wake-ups would cross threads, and the other
//! loop may be asleep) and the count of requests waiting for an answer (the polling in
//! `upstream` is about this thread's event loop only).
//!
//! A thread that never called [`set_index`] (the main thread, tests, tokio's blocking pool)
//! is index 0. The count of threads is [`ServerSettings::workers`](crate::ServerSettings); an
//! index at or above it shares slot `index % workers`, which is correct, only slower.

use std::cell::Cell;

thread_local! {
    static INDEX: Cell<usize> = const { Cell::new(0) };
}

/// Declares the calling thread to be serving thread `index` (0-based).
pub fn set_index(index: usize) {
    INDEX.with(|i| i.set(index));
}

/// The calling thread's index; 0 unless [`set_index`] said otherwise.
pub fn index() -> usize {
    INDEX.with(Cell::get)
}

/// The slot of the calling thread among `slots` per-thread slots.
pub(crate) fn slot<T>(slots: &[T]) -> &T {
    // Never empty (built with at least one slot); the fallback keeps this total.
    let i = index().checked_rem(slots.len()).unwrap_or(0);
    &slots[i]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_thread_has_its_own_index() {
        assert_eq!(index(), 0);
        set_index(3);
        assert_eq!(index(), 3);
        assert_eq!(*slot(&[10, 11]), 11, "index 3 of 2 slots shares slot 1");
        let other = std::thread::spawn(index).join().unwrap();
        assert_eq!(other, 0, "a new thread starts at 0");
        set_index(0);
    }
}
