//! The gateway's serving threads: how many, and the extra ones beside the main thread.
//!
//! Hale serves client connections on N threads, each running a single-threaded tokio runtime
//! of its own — the model of nginx's worker processes and HAProxy's `nbthread`. The main
//! thread is serving thread 0 and also runs everything that is not a client connection (the
//! health checks, Redis coordination, signals, reloads, the accept loop); threads 1..N serve
//! the connections that the accept loop hands them (see [`hale_api::server`]), and each keeps
//! its own upstream connections (see [`hale_proxy::worker`]). A request never leaves the
//! thread its connection lives on.
//!
//! Why not tokio's multi-threaded runtime: a proxy spends its time in socket calls and
//! wake-ups, not computation. The multi-threaded scheduler wakes a second worker to share
//! every new task (a futex call and a context switch, twice a request at low load), hands its
//! event queue from thread to thread and moves tasks between cores; measured in
//! `cargo xtask bench proxy` on the 2-core machines, one current-thread runtime used about
//! 15 % less CPU per request than the multi-threaded one, and is what lets a request wait for
//! a fast answer by polling instead of sleeping (see `hale_proxy::upstream`). One thread per
//! core keeps those savings and still uses every core. The price: a CPU-heavy step (a TLS
//! handshake, a multi-megabyte request body to scan) holds up the other connections of its
//! thread for as long as it takes.
//!
//! N is `HALE_WORKER_THREADS` when set (1 to 256), else the number of CPUs the process may use
//! ([`std::thread::available_parallelism`], which follows the cgroup CPU quota of a container
//! with a CPU limit). An environment variable, not a config key: DESIGN §5 lists no such key,
//! and the threads exist before the config is read.

use anyhow::Context as _;
use std::num::NonZeroUsize;
use std::thread::JoinHandle;
use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// The most serving threads `HALE_WORKER_THREADS` may ask for.
pub const MAX_THREADS: usize = 256;

/// How many serving threads to run: `HALE_WORKER_THREADS` (`raw`) if set, else `cpus`.
pub fn count(raw: Option<&str>, cpus: NonZeroUsize) -> anyhow::Result<usize> {
    let Some(raw) = raw else {
        return Ok(cpus.get().min(MAX_THREADS));
    };
    let n: usize = raw
        .trim()
        .parse()
        .with_context(|| format!("HALE_WORKER_THREADS={raw:?}: not a number"))?;
    if !(1..=MAX_THREADS).contains(&n) {
        anyhow::bail!("HALE_WORKER_THREADS={n}: must be within 1..={MAX_THREADS}");
    }
    Ok(n)
}

/// The number of serving threads this process runs, from the environment and the CPUs.
pub fn from_env() -> anyhow::Result<usize> {
    let cpus = std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN);
    count(std::env::var("HALE_WORKER_THREADS").ok().as_deref(), cpus)
}

/// Serving threads 1..N, running until [`Workers::stop`] (or drop).
#[derive(Debug)]
pub struct Workers {
    threads: Vec<Worker>,
}

#[derive(Debug)]
struct Worker {
    handle: Handle,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Workers {
    /// Starts `count - 1` threads (the caller's thread is serving thread 0), named
    /// `hale-worker-<i>`, each with a current-thread runtime that serves until stopped.
    pub fn start(count: usize) -> anyhow::Result<Self> {
        let mut threads = Vec::with_capacity(count.saturating_sub(1));
        for index in 1..count {
            let (ready, handle) = std::sync::mpsc::sync_channel(1);
            let (stop, stopped) = oneshot::channel::<()>();
            let thread = std::thread::Builder::new()
                .name(format!("hale-worker-{index}"))
                .spawn(move || {
                    hale_proxy::worker::set_index(index);
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build();
                    let rt = match rt {
                        Ok(rt) => {
                            let _ = ready.send(Ok(rt.handle().clone()));
                            rt
                        }
                        Err(e) => {
                            let _ = ready.send(Err(e));
                            return;
                        }
                    };
                    // Serves whatever is spawned on it until told to stop; dropping the
                    // runtime then cancels what is left.
                    let _ = rt.block_on(stopped);
                })
                .with_context(|| format!("starting serving thread {index}"))?;
            let handle = handle
                .recv()
                .context("a serving thread ended while starting")?
                .with_context(|| format!("building the runtime of serving thread {index}"))?;
            threads.push(Worker {
                handle,
                stop: Some(stop),
                thread: Some(thread),
            });
        }
        Ok(Self { threads })
    }

    /// The runtimes of threads 1..N, for the server to hand connections to.
    pub fn handles(&self) -> Vec<Handle> {
        self.threads.iter().map(|w| w.handle.clone()).collect()
    }

    /// Stops every thread and waits for it to end. Call it after the server has stopped: what
    /// still runs on them is cancelled.
    pub fn stop(mut self) {
        self.stop_all();
    }

    fn stop_all(&mut self) {
        for w in &mut self.threads {
            if let Some(stop) = w.stop.take() {
                let _ = stop.send(());
            }
        }
        for w in &mut self.threads {
            if let Some(thread) = w.thread.take() {
                let _ = thread.join();
            }
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpus(n: usize) -> NonZeroUsize {
        NonZeroUsize::new(n).unwrap()
    }

    #[test]
    fn the_count_is_the_cpus_unless_the_environment_says() {
        assert_eq!(count(None, cpus(2)).unwrap(), 2);
        assert_eq!(count(None, cpus(1000)).unwrap(), MAX_THREADS);
        assert_eq!(count(Some(" 3 "), cpus(2)).unwrap(), 3);
        assert_eq!(count(Some("1"), cpus(8)).unwrap(), 1);
        for bad in ["0", "257", "two", ""] {
            let e = count(Some(bad), cpus(2)).unwrap_err().to_string();
            assert!(e.contains("HALE_WORKER_THREADS"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn workers_run_spawned_work_on_their_own_threads_and_stop() {
        let workers = Workers::start(3).unwrap();
        let handles = workers.handles();
        assert_eq!(handles.len(), 2);
        for (i, h) in handles.iter().enumerate() {
            let (tx, rx) = std::sync::mpsc::channel();
            h.spawn(async move {
                let name = std::thread::current().name().map(str::to_owned);
                tx.send((name, hale_proxy::worker::index())).unwrap();
            });
            let (name, index) = rx.recv_timeout(std::time::Duration::from_secs(10)).unwrap();
            assert_eq!(
                name.as_deref(),
                Some(format!("hale-worker-{}", i + 1).as_str())
            );
            assert_eq!(index, i + 1);
        }
        workers.stop();
        assert_eq!(Workers::start(1).unwrap().handles().len(), 0);
    }
}
