//! What the kernel says about a process under test, read from `/proc/<pid>/status`: its
//! resident memory, for tests that hold a gateway to a memory budget under load.
//!
//! Linux only, like the rest of the harness's process handling; on another system the read
//! fails with an error that names the file, which fails the test rather than skipping it.

use anyhow::{Context as _, anyhow};

/// The resident set size (`VmRSS`) of process `pid`, in bytes.
pub fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .ok_or_else(|| anyhow!("no VmRSS line in {path}"))?;
    let kib: u64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .with_context(|| format!("parsing {line:?} in {path}"))?;
    Ok(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_our_own_rss() {
        let rss = rss_bytes(std::process::id()).unwrap();
        assert!(rss > 100 * 1024 && rss < 4 * 1024 * 1024 * 1024, "{rss}");
        assert!(rss_bytes(u32::MAX).is_err());
    }
}
