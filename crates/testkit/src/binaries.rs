//! Finding the workspace's own binaries (`hale`, `mockllm`) from tests in any package.
//!
//! Cargo sets `CARGO_BIN_EXE_<name>` only for tests of the package that defines the binary,
//! and does not build other packages' binaries for a test run. So tests elsewhere look next
//! to their own executable (`target/<profile>/deps/<test>` → `target/<profile>/<name>`), or
//! in `HALE_BIN_DIR` when set (a packaged test run, a release build), and fail loudly when
//! the binary is missing rather than running against nothing.

use std::env::consts::EXE_SUFFIX;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

/// The environment variable that overrides where binaries are looked for.
const BIN_DIR_ENV: &str = "HALE_BIN_DIR";

/// The path of the workspace binary `name`, from `HALE_BIN_DIR` or the current test
/// executable's target directory. Fails when the file does not exist.
pub fn bin_path(name: &str) -> anyhow::Result<PathBuf> {
    let dir = match std::env::var_os(BIN_DIR_ENV) {
        Some(dir) => PathBuf::from(dir),
        None => profile_dir()?,
    };
    let path = dir.join(format!("{name}{EXE_SUFFIX}"));
    if !path.is_file() {
        bail!(
            "binary `{name}` not built: run `cargo build --bins` first (cargo xtask test does); \
             looked for {}",
            path.display()
        );
    }
    Ok(path)
}

/// `target/<profile>` derived from the running executable, which lives in its `deps` (tests)
/// or `examples` subdirectory, or in it directly.
fn profile_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("finding the current executable")?;
    let parent = exe
        .parent()
        .with_context(|| format!("{} has no parent directory", exe.display()))?;
    let in_subdir = parent
        .file_name()
        .is_some_and(|name| name == "deps" || name == "examples");
    let dir = if in_subdir {
        parent.parent().unwrap_or(Path::new("."))
    } else {
        parent
    };
    Ok(dir.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_binary_names_the_fix() {
        let err = bin_path("no-such-binary-for-hale").unwrap_err().to_string();
        assert!(
            err.starts_with(
                "binary `no-such-binary-for-hale` not built: run `cargo build --bins` first \
                 (cargo xtask test does)"
            ),
            "unexpected message: {err}"
        );
    }

    #[test]
    fn profile_dir_is_the_parent_of_deps() {
        let dir = profile_dir().unwrap();
        let exe = std::env::current_exe().unwrap();
        assert!(
            exe.starts_with(&dir),
            "{} is not under {}",
            exe.display(),
            dir.display()
        );
        assert_ne!(dir.file_name().unwrap(), "deps");
    }
}
