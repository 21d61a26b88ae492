//! Config files for processes under test, written to a temporary file that lives as long as
//! the handle, so the gateway can be started with `--config <path>` and the file disappears
//! with the test.

use std::io::Write as _;
use std::path::Path;

use anyhow::Context as _;
use tempfile::NamedTempFile;

/// A temporary file holding a config text; deleted on drop.
#[derive(Debug)]
pub struct TempConfig {
    file: NamedTempFile,
}

impl TempConfig {
    /// Writes `contents` to a new temporary `.yaml` file.
    pub fn new(contents: &str) -> anyhow::Result<Self> {
        Self::with_suffix(".yaml", contents)
    }

    /// Writes `contents` to a new temporary file whose name ends in `suffix` (for example
    /// `.json`), for loaders that pick the format by extension.
    pub fn with_suffix(suffix: &str, contents: &str) -> anyhow::Result<Self> {
        let file = tempfile::Builder::new()
            .prefix("hale-config-")
            .suffix(suffix)
            .tempfile()
            .context("creating a temporary config file")?;
        let config = Self { file };
        config.write(contents)?;
        Ok(config)
    }

    /// The file's path, to pass on a command line.
    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// Replaces the file's contents, for tests of config reloading and of bad input.
    pub fn write(&self, contents: &str) -> anyhow::Result<()> {
        let mut file = self.file.reopen().context("reopening the config file")?;
        file.set_len(0)?;
        file.write_all(contents.as_bytes())
            .with_context(|| format!("writing {}", self.path().display()))?;
        file.sync_all()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_and_rewrites_the_file_and_deletes_it_on_drop() {
        let config = TempConfig::new("server:\n  listen: 127.0.0.1:0\n").unwrap();
        let path = config.path().to_path_buf();
        assert_eq!(path.extension().unwrap(), "yaml");
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "server:\n  listen: 127.0.0.1:0\n"
        );
        config.write("x: 1\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "x: 1\n");
        drop(config);
        assert!(!path.exists());
    }
}
