//! `cargo xtask test`: the one gate. Unit tests first (fast, no external resources), then the
//! end-to-end tests in tests/ that build images and boot them in QEMU.

use anyhow::{bail, Context, Result};

use crate::doctor;
use crate::layout::Layout;

/// `cargo xtask test`'s options.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Only the unit tests (no kernel build, no QEMU).
    #[arg(long)]
    pub unit: bool,
    /// Extra arguments for the test harness (a filter).
    pub args: Vec<String>,
}

/// Runs the gate. `--no-fail-fast`: one failing test binary must not hide how the others
/// fare.
pub fn main(layout: &Layout, opts: &Args) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = std::process::Command::new(&cargo)
        .current_dir(&layout.root)
        .args([
            "test",
            "--no-fail-fast",
            "--workspace",
            "--exclude",
            "axion-tests",
        ])
        .args(&opts.args)
        .status()
        .context("cannot run cargo test")?;
    if !status.success() {
        bail!("unit tests failed");
    }
    if opts.unit {
        return Ok(());
    }
    doctor::ensure(&doctor::all_needs())?;
    let status = std::process::Command::new(&cargo)
        .current_dir(&layout.root)
        .args([
            "test",
            "--no-fail-fast",
            "--package",
            "axion-tests",
            "--",
            "--test-threads=1",
        ])
        .args(&opts.args)
        .status()
        .context("cannot run cargo test")?;
    if !status.success() {
        bail!("end-to-end tests failed");
    }
    Ok(())
}
