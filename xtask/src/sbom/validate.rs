//! The SPDX project's own validator, `pyspdxtools` from PyPI's `spdx-tools` (Debian does not
//! package it), in a venv under the cache: `$AXION_CACHE/spdx-venv`. `cargo xtask doctor
//! --spdx-tools` makes it (CI runs that), the publish test uses it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// What the venv holds; a different line here makes it anew.
pub const REQUIREMENT: &str = "spdx-tools==0.8.5";

pub fn venv_dir(cache: &Path) -> PathBuf {
    cache.join("spdx-venv")
}

/// The venv's `pyspdxtools` when it is there and holds [`REQUIREMENT`].
pub fn installed(cache: &Path) -> Option<PathBuf> {
    let dir = venv_dir(cache);
    let tool = dir.join("bin/pyspdxtools");
    let stamp = std::fs::read_to_string(dir.join("axion-requirements.txt")).ok()?;
    (tool.is_file() && stamp.trim() == REQUIREMENT).then_some(tool)
}

/// `pyspdxtools`, installed into the venv first when it is not there (python3 -m venv, pip
/// from PyPI). Returns its path.
pub fn ensure(cache: &Path) -> Result<PathBuf> {
    if let Some(tool) = installed(cache) {
        return Ok(tool);
    }
    let dir = venv_dir(cache);
    eprintln!("making the Python venv {} ({REQUIREMENT})", dir.display());
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(cache).with_context(|| format!("cannot create {}", cache.display()))?;
    let out = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&dir)
        .stdin(Stdio::null())
        .output()
        .context("cannot run python3 (Debian: apt-get install python3 python3-venv)")?;
    if !out.status.success() {
        bail!(
            "`python3 -m venv {}` failed (Debian: apt-get install python3-venv): {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let out = Command::new(dir.join("bin/python"))
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            REQUIREMENT,
        ])
        .stdin(Stdio::null())
        .output()
        .context("cannot run the venv's pip")?;
    if !out.status.success() {
        bail!(
            "pip could not install {REQUIREMENT} into {}: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    std::fs::write(
        dir.join("axion-requirements.txt"),
        format!("{REQUIREMENT}\n"),
    )
    .with_context(|| format!("cannot write in {}", dir.display()))?;
    installed(cache).with_context(|| format!("{REQUIREMENT} installed no bin/pyspdxtools"))
}

/// Runs `pyspdxtools -i FILE`: Ok with what it printed when it accepts the document, an
/// error with its findings when not.
pub fn validate(tool: &Path, file: &Path) -> Result<String> {
    let out = Command::new(tool)
        .arg("-i")
        .arg(file)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {}", tool.display()))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!(
            "pyspdxtools rejects {} ({}):\n{}",
            file.display(),
            out.status,
            text.trim()
        );
    }
    Ok(text)
}
