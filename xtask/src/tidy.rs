//! `cargo xtask tidy`: conventions the compiler does not check. Today: every Rust file opens
//! (first non-empty line) with a `//!` paragraph saying what it is for, so a reader landing in
//! any file learns its purpose before its contents.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

/// The directories that hold the project's Rust code, relative to the workspace root.
const ROOTS: &[&str] = &["crates", "bins", "tests", "xtask"];

/// Checks every `.rs` file under [`ROOTS`] and lists all offenders before failing.
pub(crate) fn run(root: &Path) -> anyhow::Result<()> {
    let mut files = Vec::new();
    for dir in ROOTS {
        let dir = root.join(dir);
        if dir.is_dir() {
            collect_rust_files(&dir, &mut files)?;
        }
    }
    files.sort();
    let mut offenders = Vec::new();
    for file in &files {
        let text =
            fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        let first = text.lines().map(str::trim).find(|line| !line.is_empty());
        if !first.is_some_and(|line| line.starts_with("//!")) {
            let shown = file.strip_prefix(root).unwrap_or(file);
            offenders.push(format!(
                "    {}: first line is {:?}",
                shown.display(),
                first.unwrap_or("")
            ));
        }
    }
    if !offenders.is_empty() {
        bail!(
            "{} of {} .rs files do not open with a `//!` doc comment:\n{}",
            offenders.len(),
            files.len(),
            offenders.join("\n")
        );
    }
    println!(
        "    {} .rs files open with a `//!` doc comment",
        files.len()
    );
    Ok(())
}

/// Every `.rs` file below `dir`, skipping build output (`target`) and hidden directories.
fn collect_rust_files(dir: &Path, files: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let entries = fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))?;
    for entry in entries {
        let entry = entry?;
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if entry.file_type()?.is_dir() {
            if name != "target" && !name.starts_with('.') {
                collect_rust_files(&path, files)?;
            }
        } else if name.ends_with(".rs") {
            files.push(path);
        }
    }
    Ok(())
}
