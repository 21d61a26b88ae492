//! Ending child processes reliably, from async code and from destructors, and finding
//! programs on `PATH`. Shared by the Redis and mockllm harnesses.

use std::path::PathBuf;
use std::time::Duration;

use tokio::process::Child;
use tokio::time::Instant;

/// Sends SIGKILL and waits for the exit. A child that already exited is only reaped.
pub(crate) async fn kill_and_wait(child: &mut Child) -> anyhow::Result<()> {
    if child.try_wait()?.is_none() {
        // The child may exit between the check and the signal; the wait below settles it
        // either way, so a failed signal is not an error in itself.
        let _ = child.start_kill();
    }
    child.wait().await?;
    Ok(())
}

/// Kills a child from synchronous code (a `Drop`) and waits up to `limit` for it to exit, so
/// its ports are free once the handle is gone. `kill_on_drop` and tokio's orphan reaping
/// cover a child that outlives the limit.
pub(crate) fn kill_blocking(child: &mut Child, limit: Duration) {
    // Nothing useful can be done with a failed signal in a destructor; the process is either
    // gone already or the try_wait loop below reports nothing and kill_on_drop tries again.
    let _ = child.start_kill();
    let until = Instant::now() + limit;
    while Instant::now() < until {
        match child.try_wait() {
            Ok(None) => std::thread::yield_now(),
            Ok(Some(_)) | Err(_) => return,
        }
    }
}

/// The first executable file called `name` in a directory of `PATH`.
pub(crate) fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}
