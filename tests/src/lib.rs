//! Shared helpers for the end-to-end tests in `e2e/`: find or build what a test boots, boot it
//! with the serial console captured, run `cargo xtask` as a user would, and skip loudly when
//! the host cannot run a test. Thin on purpose: booting and QMP live in the `qemu` crate, and
//! the fixtures the bench shares (registry, busybox images, docker CLI, in-process vmd) in
//! crates/test-support, re-exported here. This crate is what needs the build tool (xtask);
//! test-support cannot depend on xtask, because xtask's bench depends on it.
//!
//! The tests run single-threaded (`cargo xtask test` passes `--test-threads=1`): they boot VMs
//! on a 2-core machine and share `out/`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

pub mod containerd;
pub mod guest;

pub use qemu;
pub use xtask::layout::Layout;

/// How long a boot under TCG may take to reach init's ready line (`AXION_READY_TIMEOUT`
/// seconds overrides; default 120).
pub fn ready_timeout() -> Duration {
    let secs = std::env::var("AXION_READY_TIMEOUT")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120);
    Duration::from_secs(secs)
}

/// Records that the calling test is skipped (or skips a part of itself) because of `reason`:
/// `cargo xtask test` reports it as skipped, counts it, and fails on it under `CI=true`
/// unless the test is host-optional (crate `test-skip` says how).
pub use test_skip::skip;

/// Skips the calling test (records it with [`skip`] and returns from it) unless `cond` holds.
///
/// ```ignore
/// axion_tests::require!(axion_tests::have_qemu(), "qemu-system-x86_64 is not installed");
/// ```
#[macro_export]
macro_rules! require {
    ($cond:expr, $($why:tt)+) => {
        if !$cond {
            $crate::skip(format_args!($($why)+));
            return;
        }
    };
}

/// The checkout and cache this test run uses.
pub fn layout() -> Layout {
    Layout::discover()
}

/// Is QEMU installed?
pub fn have_qemu() -> bool {
    Command::new("qemu-system-x86_64")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The kernel the build stages under `$AXION_CACHE/packages/linux-*/tree/boot/vmlinuz`
/// (the newest one), if it was built.
pub fn staged_kernel() -> Option<PathBuf> {
    xtask::run::staged_kernel(&layout())
}

/// The kernel, building it with `cargo xtask build linux` when it is not staged yet.
pub fn kernel() -> Result<PathBuf> {
    if let Some(k) = staged_kernel() {
        return Ok(k);
    }
    xtask_ok(&["build", "linux"], Duration::from_secs(3600))?;
    staged_kernel()
        .context("`cargo xtask build linux` succeeded but no linux-*/tree/boot/vmlinuz is staged")
}

/// A built image of `profile` in `format` under out/PROFILE/, built with
/// `cargo xtask image --profile P --format F` when missing (the real path, no shortcuts).
pub fn image(profile: &str, format: xtask::profile::Format) -> Result<xtask::image::Bootable> {
    let layout = layout();
    let out = layout.out(profile);
    if let Some(b) = xtask::image::find_bootable(&out, profile, format) {
        // Reuse a built image only while no input (recipe, overlay, package tree) is newer.
        let recipes = xtask::recipe::RecipeSet::load(&layout.recipes())?;
        let p = xtask::profile::load_profile(&layout.root, profile, &recipes)?;
        match xtask::image::stale_reason(&layout, &p, &b) {
            None => return Ok(b),
            Some(why) => eprintln!("rebuilding the {profile} {format} image: {why} is newer"),
        }
    }
    xtask_ok(
        &["image", "--profile", profile, "--format", format.name()],
        Duration::from_secs(3600),
    )?;
    xtask::image::find_bootable(&out, profile, format).with_context(|| {
        format!(
            "`cargo xtask image --profile {profile} --format {format}` \
            succeeded but left no {format} image in {}",
            out.display()
        )
    })
}

/// The accelerator for test VMs (TCG unless the KVM probe boots the staged kernel), and why.
pub fn accel() -> (qemu::Accel, String) {
    qemu::choose_accel(staged_kernel().as_deref())
}

/// Starts a VM (serial console captured to a file, QMP connected) and waits for init's ready
/// line. The VM is killed when the returned handle is dropped.
pub fn boot_ready(config: qemu::VmConfig) -> Result<(qemu::Vm, qemu::Ready)> {
    let mut vm = qemu::Vm::spawn(config)?;
    let ready = vm.wait_ready(ready_timeout())?;
    eprintln!(
        "{} (host: {:.2} s since QEMU started)",
        ready.line,
        ready.host.as_secs_f64()
    );
    Ok((vm, ready))
}

/// Runs `cargo xtask ARGS` in the checkout, like a user. Fails if it does not finish within
/// `timeout`, or if its stdout or stderr stay open after it exited (a process it left behind
/// holds them: a detached QEMU must not, or `$(cargo xtask run --detach)` would hang).
pub fn xtask(args: &[&str], timeout: Duration) -> Result<Output> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.arg("xtask").args(args).current_dir(&layout().root);
    run_with_timeout(cmd, timeout).with_context(|| format!("cargo xtask {}", args.join(" ")))
}

/// [`xtask`], failing with its stderr if it did not succeed; prints its stderr either way.
pub fn xtask_ok(args: &[&str], timeout: Duration) -> Result<Output> {
    let out = xtask(args, timeout)?;
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        bail!(
            "`cargo xtask {}` failed ({}):\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

/// Does `PROGRAM --version` run (and succeed) here?
pub fn runs(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// What the VM-per-container tests (tests/e2e/vmd*.rs) need on this host besides QEMU:
/// the first thing missing, if any.
pub fn vmd_host_lacks() -> Option<&'static str> {
    if !runs("docker") {
        Some("the docker CLI is not installed")
    } else if !Path::new("/usr/bin/docker-registry").exists() {
        Some("docker-registry is not installed")
    } else if !runs("qemu-img") {
        Some("qemu-img (qemu-utils) is not installed")
    } else {
        None
    }
}

/// What a test driving a booted image with [`guest::Guest`] needs on this host (QEMU, the
/// ssh client, docker-registry for its images, the docker CLI): the first thing missing.
pub fn vm_test_host_lacks() -> Option<&'static str> {
    if !have_qemu() {
        Some("qemu-system-x86_64 is not installed")
    } else if !Path::new("/usr/bin/ssh").exists() {
        Some("the ssh client (openssh-client) is not installed")
    } else if !Path::new("/usr/bin/docker-registry").exists() {
        Some("docker-registry is not installed")
    } else if !runs("docker") {
        Some("the docker CLI is not installed")
    } else {
        None
    }
}

/// `export NAME=VALUE` lines (as `run --detach` prints them) evaluated by a real shell.
pub fn eval_exports(exports: &str, names: &[&str]) -> Result<Vec<String>> {
    let mut script = exports.to_string();
    script.push('\n');
    for n in names {
        script.push_str(&format!("printf '%s\\n' \"${n}\"\n"));
    }
    let out = Command::new("sh")
        .arg("-c")
        .arg(&script)
        .output()
        .context("cannot run sh")?;
    if !out.status.success() {
        bail!(
            "sh could not evaluate the export lines:\n{exports}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect())
}

/// Kills a QEMU by pid when dropped unless it is gone already: a failing test must not leave
/// a detached VM running.
pub struct KillOnDrop(pub u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if xtask::run::is_running_qemu(self.0) {
            eprintln!("cleanup: killing QEMU pid {}", self.0);
            let _ = Command::new("kill")
                .args(["-KILL", &self.0.to_string()])
                .status();
        }
    }
}

/// The last `n` lines of a file, for failure messages.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The fixtures the bench uses too: a local registry with busybox images, the docker CLI,
/// axion-vmd in-process (crate test-support).
pub use test_support::docker::{installed as docker_installed, run_with_timeout};
pub use test_support::{busybox as busybox_images, registry, vmd, DockerCli};

/// The project's own busybox binary (built once, then cached), of which the test images
/// are made: pass it to [`registry::Registry::push_busybox`].
pub fn busybox() -> PathBuf {
    xtask::build::project_busybox().expect("the project's busybox")
}

/// QEMU processes whose command line mentions `dir` (a VM-per-container daemon's state: its
/// template and clones). Found from /proc here, independently of the daemon's own scan, so a
/// test can tell what the daemon left behind.
pub fn qemus_under(dir: &Path) -> Vec<u32> {
    let needle = dir.to_string_lossy().into_owned();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.starts_with("qemu-system") && cmd.contains(&needle) {
            out.push(pid);
        }
    }
    out
}

/// `ssh` as root to a guest's forwarded port on 127.0.0.1 with KEY only: no host-key checks
/// (every instance makes its own host keys), no agent keys, no prompts. `extra` options go
/// before the destination; add nothing after it, the command is already there.
pub fn ssh(key: &Path, port: u16, extra: &[&str], command: &str) -> Command {
    let mut c = Command::new("ssh");
    c.arg("-i").arg(key).args(["-p", &port.to_string()]);
    c.args([
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "BatchMode=yes",
        "-o",
        "ConnectTimeout=30",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "LogLevel=ERROR",
    ]);
    c.args(extra).arg("root@127.0.0.1").arg(command);
    c
}

/// A fresh ed25519 key pair without a passphrase at DIR/NAME (and NAME.pub); returns the
/// private key's path and the public key line.
pub fn ssh_keygen(dir: &Path, name: &str) -> Result<(PathBuf, String)> {
    let key = dir.join(name);
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
        .arg(&key)
        .status()
        .context("running ssh-keygen")?;
    if !st.success() {
        bail!("ssh-keygen failed ({st})");
    }
    let public = std::fs::read_to_string(key.with_extension("pub"))
        .context("reading the new public key")?
        .trim()
        .to_owned();
    Ok((key, public))
}

/// The host cgroup limits a process (a VM's QEMU) runs under: its memory and cpu cgroups'
/// paths (from `/proc/PID/cgroup`) and their memory limit and CFS quota (None: none).
#[derive(Debug)]
pub struct CgroupLimits {
    pub memory_path: String,
    pub cpu_path: String,
    pub memory: Option<i64>,
    pub cpu: Option<(i64, i64)>,
}

/// Reads [`CgroupLimits`] of `pid`, on a cgroup v2 or v1 host.
pub fn cgroup_limits(pid: u32) -> Result<CgroupLimits> {
    let own = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    let root = Path::new("/sys/fs/cgroup");
    let path_of = |controller: &str| -> Result<String> {
        let line = own
            .lines()
            .find(|l| {
                l.split(':')
                    .nth(1)
                    .is_some_and(|c| c.split(',').any(|c| c == controller))
            })
            .with_context(|| format!("no {controller:?} line in /proc/{pid}/cgroup: {own}"))?;
        Ok(line.splitn(3, ':').nth(2).unwrap_or_default().to_string())
    };
    let read = |p: PathBuf| -> Result<String> {
        Ok(std::fs::read_to_string(&p)
            .with_context(|| format!("reading {}", p.display()))?
            .trim()
            .to_string())
    };
    let num = |s: &str| s.parse::<i64>().ok();
    if root.join("cgroup.controllers").exists() {
        let p = path_of("")?;
        let d = root.join(p.trim_start_matches('/'));
        let cpu = read(d.join("cpu.max"))?;
        let (q, per) = cpu.split_once(' ').unwrap_or((&cpu, "100000"));
        Ok(CgroupLimits {
            memory_path: p.clone(),
            cpu_path: p,
            memory: num(&read(d.join("memory.max"))?),
            cpu: num(q).zip(num(per)),
        })
    } else {
        let (mp, cp) = (path_of("memory")?, path_of("cpu")?);
        let m = root.join("memory").join(mp.trim_start_matches('/'));
        let c = root.join("cpu").join(cp.trim_start_matches('/'));
        // v1 reads "no limit" as a huge number and a quota of -1.
        let memory = num(&read(m.join("memory.limit_in_bytes"))?).filter(|&l| l < 1 << 62);
        let quota = num(&read(c.join("cpu.cfs_quota_us"))?).filter(|&q| q > 0);
        let period = num(&read(c.join("cpu.cfs_period_us"))?);
        Ok(CgroupLimits {
            memory_path: mp,
            cpu_path: cp,
            memory,
            cpu: quota.zip(period),
        })
    }
}
