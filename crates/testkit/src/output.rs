//! Where the output of a spawned test process goes: two files in a private temporary
//! directory, so a chatty server neither floods the test log nor blocks on a full pipe, and
//! its own words can still be quoted when it fails to start.
//!
//! The files are appended to across restarts of the same process; a [`Mark`] taken before a
//! spawn lets the caller look at what that one spawn printed.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::Context as _;
use tempfile::TempDir;

/// The most of each stream quoted in an error message; the start of a failure is rarely
/// interesting when a server printed megabytes.
const QUOTE_LIMIT: u64 = 8 * 1024;

/// The stdout and stderr files of one (possibly restarted) process.
#[derive(Debug)]
pub(crate) struct CapturedOutput {
    dir: TempDir,
    stdout: PathBuf,
    stderr: PathBuf,
}

/// The length of both files at one moment, to read what was written after it.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Mark {
    stdout: u64,
    stderr: u64,
}

impl CapturedOutput {
    /// Creates the directory and the two empty files; `name` prefixes the directory's name so
    /// a leftover one can be traced to its process.
    pub(crate) fn new(name: &str) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("hale-{name}-"))
            .tempdir()
            .context("creating a temporary directory for process output")?;
        let stdout = dir.path().join("stdout.log");
        let stderr = dir.path().join("stderr.log");
        for path in [&stdout, &stderr] {
            File::create(path).with_context(|| format!("creating {}", path.display()))?;
        }
        Ok(Self {
            dir,
            stdout,
            stderr,
        })
    }

    /// The private directory, also usable as the process's working directory.
    pub(crate) fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Opens both files for appending and returns them as a child's stdout and stderr, with
    /// a mark of where this spawn's output starts.
    pub(crate) fn attach(&self) -> anyhow::Result<(Stdio, Stdio, Mark)> {
        let mark = self.mark();
        let open = |path: &Path| {
            OpenOptions::new()
                .append(true)
                .open(path)
                .with_context(|| format!("opening {}", path.display()))
        };
        Ok((
            Stdio::from(open(&self.stdout)?),
            Stdio::from(open(&self.stderr)?),
            mark,
        ))
    }

    /// The current length of both files.
    pub(crate) fn mark(&self) -> Mark {
        let len = |path: &Path| std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        Mark {
            stdout: len(&self.stdout),
            stderr: len(&self.stderr),
        }
    }

    /// Everything written to stdout after `mark`, lossily decoded.
    pub(crate) fn stdout_since(&self, mark: Mark) -> String {
        read_from(&self.stdout, mark.stdout, u64::MAX)
    }

    /// Everything written to stderr after `mark` (the logs), lossily decoded, uncut.
    pub(crate) fn stderr_since(&self, mark: Mark) -> String {
        read_from(&self.stderr, mark.stderr, u64::MAX)
    }

    /// Both streams since `mark`, each cut to its last few kilobytes, formatted for an error
    /// message.
    pub(crate) fn quote_since(&self, mark: Mark) -> String {
        let stdout = read_from(&self.stdout, mark.stdout, QUOTE_LIMIT);
        let stderr = read_from(&self.stderr, mark.stderr, QUOTE_LIMIT);
        format!(
            "--- stdout ---\n{}\n--- stderr ---\n{}",
            stdout.trim_end(),
            stderr.trim_end()
        )
    }
}

/// Reads a file from `start`, keeping at most the last `limit` bytes. A file that cannot be
/// read yields a note instead: this only ever feeds error messages.
fn read_from(path: &Path, start: u64, limit: u64) -> String {
    let read = || -> std::io::Result<String> {
        let mut file = File::open(path)?;
        let len = file.metadata()?.len();
        let from = start.max(len.saturating_sub(limit)).min(len);
        file.seek(SeekFrom::Start(from))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let text = String::from_utf8_lossy(&bytes).into_owned();
        Ok(if from > start {
            format!("[... earlier output cut ...]\n{text}")
        } else {
            text
        })
    };
    read().unwrap_or_else(|err| format!("[cannot read {}: {err}]", path.display()))
}
