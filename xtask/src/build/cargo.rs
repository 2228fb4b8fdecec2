//! `cargo`: a crate of packages/ built for x86_64-unknown-linux-musl, static.
//!
//! `cargo build --release --locked --target x86_64-unknown-linux-musl -p CRATE` in the
//! checkout, a cleared environment (PATH plus the rustup and cargo homes), and
//! `--remap-path-prefix` for the checkout, the target directory and the cargo home, so the
//! binaries do not depend on where the checkout is. The executables cargo reports
//! (`--message-format=json`) go to `install-dir` (default /sbin); `binaries` picks some of
//! them by name. Each must be static.
//!
//! Every cargo package of a checkout builds in one target directory of the cache,
//! `$AXION_CACHE/guest-target/<checkout id>/` (never the checkout's target/, which the running
//! xtask may hold): the crates the engine, init and the update agent share (tokio, serde,
//! rustls, ...) compile once, and a change to one package recompiles that package only. The
//! flags are the same for every package and every run of the checkout (the directory is
//! remapped to `/build/target`, where the scratch target used to be), so cargo's own
//! fingerprints decide what is stale, and what it reuses is what a clean build would have
//! produced: the cache key still covers every input. A fresh `$AXION_CACHE` starts cold.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{bail, Context, Result};

use super::BuildCtx;
use crate::recipe::CargoSpec;

pub const TARGET: &str = "x86_64-unknown-linux-musl";

fn home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"))
}

pub fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| home().join(".cargo"))
}

pub fn rustup_home() -> PathBuf {
    std::env::var_os("RUSTUP_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| home().join(".rustup"))
}

/// The one target directory of every cargo package built from the checkout at `root` (one
/// per checkout: the remapped paths differ between checkouts, and so would the flags).
pub fn guest_target_dir(cache: &Path, root: &Path) -> PathBuf {
    use sha2::Digest as _;
    let id = hex::encode(sha2::Sha256::digest(root.as_os_str().as_encoded_bytes()));
    cache.join("guest-target").join(&id[..16])
}

pub fn build(ctx: &BuildCtx, spec: &CargoSpec) -> Result<()> {
    let root = &ctx.layout.root;
    let krate = spec
        .krate
        .clone()
        .unwrap_or_else(|| ctx.recipe.name().to_owned());
    let manifest = root.join("packages").join(&krate).join("Cargo.toml");
    if !manifest.is_file() {
        bail!(
            "{}: key 'build.crate': no crate '{krate}' ({} does not exist)",
            ctx.recipe.path.display(),
            manifest.display()
        );
    }
    ctx.set_source_dir(manifest.parent().unwrap_or(root))?;
    let target_dir = guest_target_dir(&ctx.layout.cache, root);
    let cargo_home = cargo_home();
    let rustup_home = rustup_home();
    // rustc applies the last matching prefix: the more specific one comes last.
    let flags = [
        format!("--remap-path-prefix={}=/axion", root.display()),
        format!("--remap-path-prefix={}=/build/target", target_dir.display()),
        format!("--remap-path-prefix={}=/cargo", cargo_home.display()),
        "-Ctarget-feature=+crt-static".to_owned(),
    ];
    // Held from cargo's start to the copy of its binaries: another build from this checkout
    // (another key of the same package) would overwrite them in the shared target directory.
    std::fs::create_dir_all(&target_dir)
        .with_context(|| format!("cannot create {}", target_dir.display()))?;
    let lock_path = target_dir.join(".axion-build.lock");
    let lock = std::fs::File::create(&lock_path)
        .with_context(|| format!("cannot create {}", lock_path.display()))?;
    lock.lock()
        .with_context(|| format!("cannot lock {}", lock_path.display()))?;
    let mut cmd = ctx.command("cargo", root);
    cmd.env(
        "PATH",
        format!("{}:{}", cargo_home.join("bin").display(), super::BUILD_PATH),
    )
    .env("CARGO_HOME", &cargo_home)
    .env("RUSTUP_HOME", &rustup_home)
    .env("CARGO_ENCODED_RUSTFLAGS", flags.join("\u{1f}"))
    .env("CARGO_TERM_COLOR", "never")
    .args([
        "build",
        "--release",
        "--locked",
        "--target",
        TARGET,
        "-p",
        &krate,
        "--message-format=json-render-diagnostics",
    ])
    .arg("--target-dir")
    .arg(&target_dir)
    .arg(format!("-j{}", ctx.jobs));
    if ctx.offline {
        cmd.arg("--offline");
    }
    ctx.note(&format!("== cargo build: {cmd:?}\n"));
    let err = ctx.log_handle()?;
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(err)
        .spawn()
        .with_context(|| format!("{}: cannot run cargo", ctx.recipe.name()))?;
    let stdout = child.stdout.take().context("cargo's stdout")?;
    let manifest_c = manifest.canonicalize().unwrap_or(manifest.clone());
    let mut executables: Vec<(String, PathBuf)> = Vec::new();
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line?;
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(&line) else {
            ctx.note(&format!("{line}\n"));
            continue;
        };
        if msg["reason"] != "compiler-artifact" {
            continue;
        }
        let from_crate = msg["manifest_path"]
            .as_str()
            .map(|p| Path::new(p).canonicalize().unwrap_or(PathBuf::from(p)))
            == Some(manifest_c.clone());
        if let (true, Some(exe)) = (from_crate, msg["executable"].as_str()) {
            let name = msg["target"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            ctx.note(&format!("== built {name}: {exe}\n"));
            executables.push((name, PathBuf::from(exe)));
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!(
            "{}: cargo build -p {krate} failed ({status})",
            ctx.recipe.name()
        );
    }
    let chosen: Vec<&(String, PathBuf)> = if spec.binaries.is_empty() {
        executables.iter().collect()
    } else {
        let mut v = Vec::new();
        for b in &spec.binaries {
            v.push(executables.iter().find(|(n, _)| n == b).with_context(|| {
                format!(
                    "{}: key 'build.binaries': crate '{krate}' built no binary '{b}' (it \
                     built: {:?})",
                    ctx.recipe.path.display(),
                    executables.iter().map(|e| &e.0).collect::<Vec<_>>()
                )
            })?);
        }
        v
    };
    if chosen.is_empty() {
        bail!(
            "{}: crate '{krate}' has no binary to install",
            ctx.recipe.path.display()
        );
    }
    let dir = spec
        .install_dir
        .as_deref()
        .unwrap_or("/sbin")
        .trim_start_matches('/');
    let dest = ctx.tree.join(dir);
    std::fs::create_dir_all(&dest)?;
    for (name, exe) in chosen {
        if !super::is_static_elf(exe)? {
            bail!(
                "{} is dynamically linked; {TARGET} binaries must be static",
                exe.display()
            );
        }
        std::fs::copy(exe, dest.join(name))
            .with_context(|| format!("cannot copy {}", exe.display()))?;
    }
    Ok(())
}
