//! `axion-update`: in-place, signed A/B updates of an axion machine's boot image.
//!
//! ```text
//! axion-update status                    slots, versions, what is pending, what failed
//! axion-update check [REF]               is a newer signed artifact published at REF?
//! axion-update apply [REF] [--allow-downgrade] [--retry-failed] [--reboot]
//! axion-update rollback [--reboot]       make the other (previously good) slot active
//! axion-update boot-check                run once per boot by init (the axion-update service)
//! axion-update install DEVICE [--force] [--from DIR]
//!                                        write the ISO's disk image to DEVICE (see [`install`])
//! ```
//!
//! REF (`registry:5000/axion/qemu:stable`) is, in order: the argument, the first-boot
//! setting `axion.update.ref=` (kernel command line, then QEMU fw_cfg `opt/axion/cmdline`),
//! then the file `/var/lib/axion-update/ref`. Registries are reached over plain HTTP when
//! they are loopback, listed in the engine's `/var/lib/axion-engine/daemon.json`
//! `insecure-registries`, or when `axion.update.insecure=1` is set; integrity never depends
//! on the transport: every byte is checked against the signed manifest.
//!
//! `apply` verifies before it writes: the manifest's cosign signature with a key of
//! `/etc/axion/update/trusted/` (the image's profile names them; an image built without one
//! refuses every update), the signed claims (`axion.profile` must be this machine's profile,
//! `axion.version` newer than the running one, and not the version that failed here last),
//! then both boot files' sizes and digests while they stream to `/var/lib/axion-update/`.
//! Only then is the inactive slot written (see [`slots`] for the order that keeps the running
//! slot bootable through a power-off) and marked to be tried once. Nothing reboots unless
//! `--reboot` is given.
//!
//! `boot-check` (the `axion-update` service, started by init like any other, so no failure
//! here can touch PID 1): on a slot on trial, it waits up to `axion.update.deadline=` seconds
//! (default 180) for the engine to answer `GET /_ping` on /run/docker.sock; then the slot
//! becomes active, or else its version is recorded as failed and the machine reboots into
//! the previous slot (GRUB has already spent the one try). Back on the active slot after a
//! trial that never confirmed (panic, hang, reset), it records that version as failed.

mod blockdev;
mod fetch;
mod grubenv;
mod install;
mod policy;
mod schedule;
mod slots;
mod state;

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use slots::{Esp, Slot};

const RELEASE: &str = "/etc/axion/release";
const TRUSTED: &str = "/etc/axion/update/trusted";
const STATE: &str = "/var/lib/axion-update";
const RUN: &str = "/run/axion-update";
const FW_CFG_CMDLINE: &str = "/sys/firmware/qemu_fw_cfg/by_name/opt/axion/cmdline/raw";
const DAEMON_JSON: &str = "/var/lib/axion-engine/daemon.json";
const ENGINE_SOCKET: &str = "/run/docker.sock";

struct Flags {
    allow_downgrade: bool,
    retry_failed: bool,
    reboot: bool,
    reference: Option<String>,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = match run(&args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("axion-update: {e:#}");
            1
        }
    };
    std::process::exit(code);
}

fn run(args: &[String]) -> Result<()> {
    let (cmd, rest) = args
        .split_first()
        .map(|(c, r)| (c.as_str(), r))
        .unwrap_or(("", &[]));
    if cmd == "install" {
        let _lock = lock()?;
        return install::main(rest);
    }
    let mut f = Flags {
        allow_downgrade: false,
        retry_failed: false,
        reboot: false,
        reference: None,
    };
    for a in rest {
        match a.as_str() {
            "--allow-downgrade" => f.allow_downgrade = true,
            "--retry-failed" => f.retry_failed = true,
            "--reboot" => f.reboot = true,
            s if s.starts_with('-') => bail!("unknown flag {s}"),
            s if f.reference.is_none() => f.reference = Some(s.to_owned()),
            s => bail!("unexpected argument {s}"),
        }
    }
    match cmd {
        "status" => status(),
        "check" => check(&f),
        "apply" => apply(&f),
        "rollback" => rollback(&f),
        "boot-check" => boot_check(),
        _ => bail!(
            "usage: axion-update status | check [REF] | apply [REF] [--allow-downgrade] \
                    [--retry-failed] [--reboot] | rollback [--reboot] | boot-check | \
                    install DEVICE [--force] [--from DIR]"
        ),
    }
}

/// `axion.update.NAME=` from the kernel command line, else from fw_cfg's cmdline.
fn setting(name: &str) -> Option<String> {
    let key = format!("axion.update.{name}=");
    [
        std::fs::read_to_string("/proc/cmdline").unwrap_or_default(),
        std::fs::read_to_string(FW_CFG_CMDLINE).unwrap_or_default(),
    ]
    .iter()
    .find_map(|c| {
        c.split_whitespace()
            .find_map(|w| w.strip_prefix(&key))
            .map(|v| v.trim_matches('"').to_owned())
    })
}

fn configured_ref(f: &Flags) -> Result<String> {
    if let Some(r) = &f.reference {
        return Ok(r.clone());
    }
    if let Some(r) = setting("ref") {
        return Ok(r);
    }
    let p = Path::new(STATE).join("ref");
    match std::fs::read_to_string(&p) {
        Ok(s) if !s.trim().is_empty() => Ok(s.trim().to_owned()),
        _ => bail!(
            "no update reference: give one, or set axion.update.ref=REGISTRY/REPO:TAG, or \
             write it to {}",
            p.display()
        ),
    }
}

fn insecure_registries(reference: &str) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read(DAEMON_JSON)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v["insecure-registries"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect();
    if setting("insecure").as_deref() == Some("1") {
        if let Some((host, _)) = reference.split_once('/') {
            out.push(host.to_owned());
        }
    }
    out
}

fn release() -> Result<policy::Release> {
    let text =
        std::fs::read_to_string(RELEASE).with_context(|| format!("cannot read {RELEASE}"))?;
    policy::Release::parse(&text).with_context(|| format!("{RELEASE}: no profile= or version="))
}

fn trusted_keys() -> Result<Vec<signing::PublicKey>> {
    let mut keys = Vec::new();
    let mut names: Vec<PathBuf> = match std::fs::read_dir(TRUSTED) {
        Ok(rd) => rd.flatten().map(|e| e.path()).collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    for p in names
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "pub"))
    {
        let text = std::fs::read_to_string(p)?;
        keys.extend(signing::public_keys(&text).with_context(|| p.display().to_string())?);
    }
    Ok(keys)
}

fn cmdline() -> String {
    std::fs::read_to_string("/proc/cmdline").unwrap_or_default()
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Holds `/run/axion-update/lock` (flock) for as long as it lives.
struct Lock {
    _file: std::fs::File,
}

fn lock() -> Result<Lock> {
    std::fs::create_dir_all(RUN)?;
    let f = std::fs::File::create(Path::new(RUN).join("lock"))?;
    // SAFETY: flock on a descriptor we own; no memory is involved.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
        bail!("cannot lock: {}", std::io::Error::last_os_error());
    }
    Ok(Lock { _file: f })
}

fn esp() -> Result<Esp> {
    let mut esp = slots::mount_esp(&Path::new(RUN).join("esp"))?;
    esp.mid_write_pause = test_pause_write();
    Ok(esp)
}

/// `axion.update.test-pause-write=SECONDS` (tests only, at most an hour): `apply` pauses with
/// half of the new `initrd.zst` written, so that a test can kill the machine there (see
/// [`slots::Esp::mid_write_pause`]).
fn test_pause_write() -> Option<Duration> {
    setting("test-pause-write")
        .and_then(|s| s.parse::<u64>().ok())
        .map(|s| Duration::from_secs(s.min(3600)))
}

fn active(env: &grubenv::Env) -> Slot {
    env.get("axion_active")
        .and_then(Slot::parse)
        .unwrap_or(Slot::A)
}

/// Rewrites the state file (`/info`'s Labels) from the release, the grubenv and what
/// `check` last saw; a failure here never fails the command.
fn publish_state(env: Option<&grubenv::Env>) {
    let r = release().ok();
    let booted = slots::booted_slot(&cmdline());
    let empty = grubenv::Env::default();
    let env = env.unwrap_or(&empty);
    let available = std::fs::read_to_string(Path::new(RUN).join("available")).ok();
    let s = state::State {
        version: r.as_ref().map_or("unknown", |r| r.version.as_str()),
        profile: r.as_ref().map_or("unknown", |r| r.profile.as_str()),
        slot: booted,
        phase: state::Phase::of(booted, env),
        last_failed: env.get("axion_failed"),
        available: available
            .as_deref()
            .map(str::trim)
            .filter(|v| !v.is_empty()),
    };
    if let Err(e) = s.write(&Path::new(RUN).join("state")) {
        eprintln!("axion-update: cannot write the state file: {e}");
    }
}

fn status() -> Result<()> {
    let r = release()?;
    println!("profile: {}", r.profile);
    println!("version: {}", r.version);
    let keys = trusted_keys()?;
    if keys.is_empty() {
        println!("trusted keys: none (this image was built without one and refuses every update)");
    } else {
        let ids: Vec<String> = keys.iter().map(|k| k.key_id()).collect();
        println!("trusted keys: {}", ids.join(", "));
    }
    let Some(booted) = slots::booted_slot(&cmdline()) else {
        println!("booted slot: none (ISO or direct kernel boot: no in-place updates)");
        return Ok(());
    };
    let esp = esp()?;
    let env = esp.env()?;
    publish_state(Some(&env));
    println!("booted slot: {}", booted.name());
    println!("active slot: {}", active(&env).name());
    for s in [Slot::A, Slot::B] {
        let v = match (esp.slot_complete(s), env.get(&s.version_key())) {
            (true, Some(v)) => v.to_owned(),
            (true, None) => "unknown".into(),
            (false, _) => "empty".into(),
        };
        println!("slot {}: {v}", s.name());
    }
    if let (Some(n), Some("1")) = (env.get("axion_next"), env.get("axion_try")) {
        println!("pending: slot {n} is tried once at the next boot");
    }
    if let Some(v) = env.get("axion_failed") {
        println!("failed update: {v}");
    }
    if let Ok(r) = configured_ref(&Flags {
        allow_downgrade: false,
        retry_failed: false,
        reboot: false,
        reference: None,
    }) {
        println!("update reference: {r}");
    }
    Ok(())
}

fn verified(f: &Flags) -> Result<(registry::Client, fetch::Candidate, policy::Release)> {
    let running = release()?;
    let keys = trusted_keys()?;
    if keys.is_empty() {
        bail!("refused: this image was built without a trusted update key; it accepts no update");
    }
    let reference = configured_ref(f)?;
    let client = fetch::client(insecure_registries(&reference));
    let cand = runtime()?
        .block_on(fetch::check(&client, &reference, &keys))
        .context("refused")?;
    Ok((client, cand, running))
}

fn check(f: &Flags) -> Result<()> {
    let (_, cand, running) = verified(f)?;
    let env_failed = slots::booted_slot(&cmdline())
        .and_then(|_| esp().ok())
        .and_then(|e| e.env().ok())
        .and_then(|e| e.get("axion_failed").map(str::to_owned));
    let opts = policy::Options {
        allow_downgrade: f.allow_downgrade,
        retry_failed: f.retry_failed,
    };
    let v = cand.version().unwrap_or("?");
    println!(
        "{}: version {v}, signed by key {} ({})",
        cand.reference, cand.key_id, cand.digest
    );
    match policy::admit(
        &running,
        cand.profile(),
        cand.version(),
        env_failed.as_deref(),
        &opts,
    ) {
        Ok(()) => {
            println!(
                "update available: {} -> {v} ({} bytes to download)",
                running.version,
                cand.kernel.size + cand.initrd.size
            );
            let _ = std::fs::create_dir_all(RUN);
            let _ = std::fs::write(Path::new(RUN).join("available"), v);
        }
        Err(e) => {
            println!("no update: {e}");
            let _ = std::fs::remove_file(Path::new(RUN).join("available"));
        }
    }
    let env = slots::booted_slot(&cmdline())
        .and_then(|_| esp().ok())
        .and_then(|e| e.env().ok());
    publish_state(env.as_ref());
    Ok(())
}

fn apply(f: &Flags) -> Result<()> {
    let start = Instant::now();
    let booted = slots::booted_slot(&cmdline())
        .context("this machine did not boot from a disk slot (ISO or direct kernel boot)")?;
    let _lock = lock()?;
    let esp = esp()?;
    let env = esp.env()?;
    if booted != active(&env) {
        bail!(
            "slot {} is on trial (its health check has not passed yet); try again after it",
            booted.name()
        );
    }
    let (client, cand, running) = verified(f)?;
    let opts = policy::Options {
        allow_downgrade: f.allow_downgrade,
        retry_failed: f.retry_failed,
    };
    policy::admit(
        &running,
        cand.profile(),
        cand.version(),
        env.get("axion_failed"),
        &opts,
    )
    .context("refused")?;
    let version = cand.version().unwrap_or_default().to_owned();
    let staging = Path::new(STATE).join("staging");
    let _ = std::fs::remove_dir_all(&staging);
    let (kernel, initrd) = runtime()?
        .block_on(fetch::download(&client, &cand, &staging))
        .context("refused")?;
    let rel = staging.join("release");
    std::fs::write(
        &rel,
        format!("profile={}\nversion={version}\n", running.profile),
    )?;
    let target = booted.other();
    let files = [
        ("vmlinuz", kernel),
        ("initrd.zst", initrd),
        ("release", rel),
    ];
    println!("axion-update: writing {version} to slot {}", target.name());
    esp.write_slot(target, &files, &version)?;
    let _ = std::fs::remove_dir_all(&staging);
    let _ = std::fs::remove_file(Path::new(RUN).join("available"));
    publish_state(esp.env().ok().as_ref());
    let _ = std::fs::write(Path::new(STATE).join("ref"), &cand.reference);
    println!(
        "axion-update: {version} written to slot {} ({} bytes downloaded, {:.1} s); the next \
         boot tries it once, and returns to slot {} unless the engine answers within the \
         deadline",
        target.name(),
        cand.kernel.size + cand.initrd.size,
        start.elapsed().as_secs_f64(),
        booted.name()
    );
    if f.reboot {
        reboot();
    } else {
        println!("reboot to start it");
    }
    Ok(())
}

fn rollback(f: &Flags) -> Result<()> {
    let booted = slots::booted_slot(&cmdline())
        .context("this machine did not boot from a disk slot (ISO or direct kernel boot)")?;
    let _lock = lock()?;
    let esp = esp()?;
    let mut env = esp.env()?;
    let current = active(&env);
    // On trial: the active slot is the previous one already; just cancel the trial.
    let target = if booted != current {
        current
    } else {
        booted.other()
    };
    if !esp.slot_complete(target) {
        bail!("slot {} is empty: nothing to roll back to", target.name());
    }
    env.set("axion_active", target.name())?;
    env.remove("axion_next");
    env.set("axion_try", "0")?;
    esp.write_env(&env)?;
    publish_state(Some(&env));
    println!(
        "axion-update: slot {} ({}) is active from the next boot",
        target.name(),
        env.get(&target.version_key()).unwrap_or("unknown version")
    );
    if f.reboot {
        reboot();
    }
    Ok(())
}

/// The boot check, then (under `axion.update.policy=auto`) the automatic updates.
fn boot_check() -> Result<()> {
    boot_check_once()?;
    auto_updates()
}

/// `axion.update.policy=auto`: every interval, inside the window, apply a newer verified
/// version and reboot into it. Runs for as long as the machine does (the service is
/// `restart = "never"`, so a bad setting is reported once and not retried).
fn auto_updates() -> Result<()> {
    let policy = schedule::Policy::parse(setting("policy").as_deref())?;
    if policy == schedule::Policy::Manual || slots::booted_slot(&cmdline()).is_none() {
        return Ok(());
    }
    let window = match setting("window") {
        Some(w) => schedule::Window::parse(&w)?,
        None => schedule::Window::ALWAYS,
    };
    let every = schedule::interval(setting("interval").as_deref())?;
    println!(
        "policy auto: checking every {} s inside the window {:02}:{:02}-{:02}:{:02} UTC",
        every.as_secs(),
        window.start / 60,
        window.start % 60,
        window.end / 60,
        window.end % 60
    );
    loop {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let wait = window.wait_secs(now);
        if wait > 0 {
            println!("policy auto: outside the window, next check in {wait} s");
            std::thread::sleep(Duration::from_secs(wait));
            continue;
        }
        let f = Flags {
            allow_downgrade: false,
            retry_failed: false,
            reboot: true,
            reference: None,
        };
        // A refusal (nothing newer, a failed version, a bad signature) is only logged:
        // the next interval tries again.
        if let Err(e) = apply(&f) {
            println!("policy auto: no update applied: {e:#}");
        }
        std::thread::sleep(every);
    }
}

fn boot_check_once() -> Result<()> {
    let Some(booted) = slots::booted_slot(&cmdline()) else {
        publish_state(None);
        println!("not booted from a disk slot: nothing to check");
        return Ok(());
    };
    let _lock = lock()?;
    let esp = esp()?;
    let mut env = esp.env()?;
    let current = active(&env);
    if booted == current {
        let tried = env.get("axion_next").and_then(Slot::parse);
        if let Some(next) = tried.filter(|n| *n != current) {
            if env.get("axion_try") != Some("1") {
                let v = env.get(&next.version_key()).unwrap_or("unknown").to_owned();
                env.set("axion_failed", &v)?;
                env.remove("axion_next");
                esp.write_env(&env)?;
                println!(
                    "update to {v} failed (slot {} did not pass its health check): back on \
                     slot {}",
                    next.name(),
                    booted.name()
                );
            }
        }
        publish_state(Some(&env));
        println!("slot {} is the active slot", booted.name());
        return Ok(());
    }
    let version = release()
        .map(|r| r.version)
        .unwrap_or_else(|_| "unknown".into());
    let secs = setting("deadline")
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(180);
    publish_state(Some(&env));
    println!(
        "slot {} ({version}) is on trial: waiting up to {secs} s for the engine",
        booted.name()
    );
    if engine_answers_within(Duration::from_secs(secs)) {
        env.set("axion_active", booted.name())?;
        env.remove("axion_next");
        env.set("axion_try", "0")?;
        env.remove("axion_failed");
        esp.write_env(&env)?;
        publish_state(Some(&env));
        println!(
            "slot {} ({version}) is healthy: it is the active slot now",
            booted.name()
        );
        return Ok(());
    }
    env.remove("axion_next");
    env.set("axion_try", "0")?;
    env.set("axion_failed", &version)?;
    esp.write_env(&env)?;
    println!(
        "slot {} ({version}) failed its health check (no /_ping answer in {secs} s): rebooting \
         into slot {}",
        booted.name(),
        current.name()
    );
    reboot();
    Ok(())
}

/// Asks init (PID 1) for a clean reboot (SIGTERM, busybox init's convention).
fn reboot() {
    println!("rebooting");
    // SAFETY: kill(2) with constant arguments; it only sends a signal.
    unsafe {
        libc::kill(1, libc::SIGTERM);
    }
}

fn engine_answers_within(deadline: Duration) -> bool {
    let end = Instant::now() + deadline;
    while Instant::now() < end {
        if ping(Path::new(ENGINE_SOCKET)) {
            return true;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    false
}

/// `GET /_ping` on the engine's socket answers `200` with body `OK`.
fn ping(socket: &Path) -> bool {
    let Ok(mut s) = std::os::unix::net::UnixStream::connect(socket) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    if s.write_all(b"GET /_ping HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = Vec::new();
    let _ = s.take(4096).read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let status_ok = text
        .lines()
        .next()
        .is_some_and(|l| l.split_whitespace().nth(1) == Some("200"));
    status_ok && text.ends_with("OK")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ping_wants_a_200_ok_from_the_socket() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("docker.sock");
        assert!(!ping(&path), "no socket, no answer");
        let l = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let serve = |answer: &'static [u8]| {
            let (mut c, _) = l.accept().unwrap();
            let mut b = [0u8; 256];
            let _ = c.read(&mut b);
            c.write_all(answer).unwrap();
        };
        let t = std::thread::scope(|s| {
            let h = s.spawn(|| ping(&path));
            serve(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK");
            let first = h.join().unwrap();
            let h = s.spawn(|| ping(&path));
            serve(b"HTTP/1.1 500 Internal Server Error\r\n\r\nOK");
            (first, h.join().unwrap())
        });
        assert_eq!(t, (true, false));
    }
}
