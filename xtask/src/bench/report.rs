//! Writing a suite's figures into docs/BENCHMARKS.md: each suite owns the text between its
//! `<!-- bench:NAME -->` and `<!-- /bench:NAME -->` markers, so re-running one suite replaces
//! only its own section and leaves the others' figures alone.

use std::path::Path;

use anyhow::Context as _;

const HEADER: &str = "# Benchmarks\n\n\
Figures measured by `cargo xtask bench <suite>` on the project's machines (2 cores, shared and \
noisy: compare ratios within one run, not absolute numbers across runs). Each section is \
rewritten by its suite, with the command that produced it.\n";

pub(crate) fn write_section(root: &Path, name: &str, body: &str) -> anyhow::Result<()> {
    let path = root.join("docs/BENCHMARKS.md");
    let current = std::fs::read_to_string(&path).unwrap_or_else(|_| HEADER.to_owned());
    let start = format!("<!-- bench:{name} -->");
    let end = format!("<!-- /bench:{name} -->");
    let section = format!("{start}\n{}\n{end}", body.trim_end());
    let updated = match (current.find(&start), current.find(&end)) {
        (Some(s), Some(e)) if e > s => {
            format!("{}{section}{}", &current[..s], &current[e + end.len()..])
        }
        _ => format!("{}\n{section}\n", current.trim_end()),
    };
    std::fs::write(&path, updated).with_context(|| format!("writing {}", path.display()))?;
    println!("wrote the `{name}` section of {}", path.display());
    Ok(())
}
