//! `cargo xtask fuzz [TARGET] [--seconds N]`: builds the cargo-fuzz (libFuzzer) targets in
//! `fuzz/` and runs each for a bounded time; also the smoke run of `cargo xtask test`.
//!
//! - cargo-fuzz is installed with `cargo install cargo-fuzz --locked` when missing (into
//!   cargo's own bin directory, outside the checkout).
//! - The build uses the pinned toolchain; cargo-fuzz's `-Z` flags are accepted through
//!   `RUSTC_BOOTSTRAP=1` rather than a second, nightly toolchain. No sanitizer (`-s none`):
//!   the targets look for panics, overflows (overflow checks and debug assertions are on)
//!   and writes outside a scratch root, not memory errors in safe code, and an
//!   AddressSanitizer build and run cost about twice as much CI time.
//! - Each target starts from its committed seeds (`fuzz/seeds/TARGET`, taken from the unit
//!   tests) and grows a working corpus in `fuzz/corpus/TARGET` (not committed).
//! - A crash (panic, failed assertion, timeout, out of memory) fails the run; libFuzzer's
//!   input is kept as `fuzz/artifacts/TARGET/crash-...` and its path printed. Every crash
//!   becomes a regression unit test in the crate it came from.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};

/// Every target (fuzz/fuzz_targets/NAME.rs).
pub const TARGETS: &[&str] = &[
    "layer_unpack",
    "registry",
    "docker_load",
    "docker_api",
    "dhcp",
    "cloudinit",
    "ovfenv",
    "vmd_guest",
    "vmd_changes",
    "dockerfile",
    "device_rules",
    "host_labels",
    "watchdog",
    "disk_manifest",
];

/// Seconds per target in `cargo xtask test`: 11 targets take about 5 minutes, plus the
/// build (a few minutes from cold, seconds when fuzz/target is warm).
pub const SMOKE_SECONDS: u64 = 25;

/// What one target did.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub target: String,
    pub executions: u64,
    pub execs_per_sec: u64,
    /// The saved input of a crash.
    pub crash: Option<PathBuf>,
}

/// Builds and runs `target` (or every target) for `seconds` each; fails on a crash.
/// `cargo xtask fuzz`'s options.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// One target (default: all of them, one after the other).
    pub target: Option<String>,
    /// Seconds per target.
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
}

/// `cargo xtask fuzz`.
pub fn main(layout: &crate::layout::Layout, a: &Args) -> Result<()> {
    fuzz(&layout.root, a.target.as_deref(), a.seconds).map(drop)
}

pub fn fuzz(root: &Path, target: Option<&str>, seconds: u64) -> Result<Vec<Outcome>> {
    let targets: Vec<&str> = match target {
        Some(t) if TARGETS.contains(&t) => vec![t],
        Some(t) => bail!("no fuzz target {t:?}; the targets: {}", TARGETS.join(", ")),
        None => TARGETS.to_vec(),
    };
    ensure_cargo_fuzz()?;
    let dir = root.join("fuzz");
    let t0 = Instant::now();
    let mut build = cargo();
    build
        .current_dir(&dir)
        .env("RUSTC_BOOTSTRAP", "1")
        .args(["fuzz", "build", "-s", "none"]);
    if targets.len() == 1 {
        build.arg(targets[0]);
    }
    let st = build.status().context("cannot run cargo fuzz build")?;
    if !st.success() {
        bail!("cargo fuzz build failed");
    }
    eprintln!("fuzz: built in {:.0} s", t0.elapsed().as_secs_f64());
    let mut out = Vec::new();
    for t in &targets {
        let o = run_one(&dir, t, seconds)?;
        eprintln!(
            "fuzz: {t}: {} executions in {seconds} s ({} exec/s){}",
            o.executions,
            o.execs_per_sec,
            if o.crash.is_some() { ", CRASHED" } else { "" }
        );
        out.push(o);
    }
    let crashes: Vec<String> = out
        .iter()
        .filter_map(|o| {
            o.crash
                .as_ref()
                .map(|c| format!("{}: {}", o.target, c.display()))
        })
        .collect();
    if !crashes.is_empty() {
        bail!(
            "fuzzing found {} crash(es); inputs saved:\n  {}",
            crashes.len(),
            crashes.join("\n  ")
        );
    }
    Ok(out)
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn ensure_cargo_fuzz() -> Result<()> {
    let have = cargo()
        .args(["fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if have {
        return Ok(());
    }
    eprintln!("fuzz: installing cargo-fuzz (cargo install cargo-fuzz --locked)");
    // From the home directory: the checkout's rust-toolchain.toml has no say here, and
    // nothing lands in the checkout.
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or("/".into());
    let st = cargo()
        .current_dir(home)
        .args(["install", "cargo-fuzz", "--locked"])
        .status()
        .context("cannot run cargo install")?;
    if !st.success() {
        bail!("cargo install cargo-fuzz failed");
    }
    Ok(())
}

fn run_one(dir: &Path, target: &str, seconds: u64) -> Result<Outcome> {
    let bin = dir
        .join("target/x86_64-unknown-linux-gnu/release")
        .join(target);
    let corpus = dir.join("corpus").join(target);
    let seeds = dir.join("seeds").join(target);
    let artifacts = dir.join("artifacts").join(target);
    for d in [&corpus, &artifacts] {
        std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
    }
    let log_path = dir.join("artifacts").join(format!("{target}.log"));
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("cannot create {}", log_path.display()))?;
    let mut cmd = Command::new(&bin);
    cmd.arg(format!("-max_total_time={seconds}"))
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .arg("-print_final_stats=1")
        // One input may take 10 s at most, and 2 GB: beyond is a crash (a hang, a bomb).
        .arg("-timeout=10")
        .arg("-rss_limit_mb=2048")
        .arg("-max_len=65536")
        // The parsers report bad input on stderr, as they do on a console: not here.
        .arg("-close_fd_mask=3")
        .arg(&corpus);
    if seeds.is_dir() {
        cmd.arg(&seeds);
    }
    let st = cmd
        .stdout(Stdio::null())
        .stderr(log)
        .status()
        .with_context(|| format!("cannot run {}", bin.display()))?;
    let text = std::fs::read_to_string(&log_path).unwrap_or_default();
    let stat = |k: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.trim_start_matches(':').trim().parse().ok())
            .unwrap_or(0)
    };
    let crash = if st.success() {
        None
    } else {
        let saved = text
            .lines()
            .find_map(|l| l.split_once("Test unit written to ").map(|(_, p)| p.trim()))
            .map(PathBuf::from);
        eprintln!(
            "fuzz: {target} failed ({st}); its log: {}",
            log_path.display()
        );
        for l in text.lines().filter(|l| !l.starts_with('#')).take(40) {
            eprintln!("  {l}");
        }
        Some(saved.unwrap_or(log_path.clone()))
    };
    Ok(Outcome {
        target: target.into(),
        executions: stat("stat::number_of_executed_units"),
        execs_per_sec: stat("stat::average_exec_per_sec"),
        crash,
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    #[test]
    fn every_target_has_a_source_and_seeds() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .unwrap()
            .to_path_buf();
        let manifest = std::fs::read_to_string(root.join("fuzz/Cargo.toml")).unwrap();
        for t in super::TARGETS {
            let src = root.join(format!("fuzz/fuzz_targets/{t}.rs"));
            assert!(src.is_file(), "{}", src.display());
            assert!(
                manifest.contains(&format!("name = \"{t}\"")),
                "{t} in fuzz/Cargo.toml"
            );
            let seeds = root.join("fuzz/seeds").join(t);
            assert!(
                std::fs::read_dir(&seeds).map(|d| d.count()).unwrap_or(0) > 0,
                "no seeds in {}",
                seeds.display()
            );
        }
    }
}
