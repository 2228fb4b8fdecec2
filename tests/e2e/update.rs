//! Signed A/B updates end to end, one boot chain of one disk:
//!
//! 1. `cargo xtask keygen`, then `cargo xtask publish --sign-key` of the qemu profile twice,
//!    as v1 and v2 (`AXION_VERSION`, with the new key trusted through `AXION_TRUSTED_KEYS`),
//!    pushed to Debian's docker-registry on 127.0.0.1;
//! 2. two forged artifacts beside them: v2's files re-pushed as another manifest carrying
//!    v2's (valid, replayed) signature, and one signed by a key the image does not trust;
//! 3. boot v1's disk (SeaBIOS): slot A; write a file under /var/lib; both forgeries are
//!    refused and slot B stays empty; `axion-update apply` of v2 is started and QEMU killed
//!    (SIGKILL) with slot B half written (the test-only setting
//!    `axion.update.test-pause-write` holds the write there: it takes well under a second);
//!    the next boot runs v1 from slot A with nothing tried and /var/lib intact, and a second
//!    `apply` writes v2 to slot B;
//! 4. boot the same disk again (OVMF this time, so both firmwares run GRUB's slot choice
//!    and `save_env`): v2 runs from slot B, the boot check makes B active once the engine
//!    answers, and the file under /var/lib is still there;
//! 5. a broken v3 (v2's kernel with an initramfs that is not one: the kernel panics), signed
//!    with the trusted key, is applied to slot A; its one trial boot panics, and the boot after
//!    it is v2 on slot B again by itself, with v3 recorded as failed and refused from then on,
//!    and `docker info` shows it all as Labels (axion.version, axion.update.last-failed, ...);
//! 6. a fresh copy of v1's disk booted with `axion.update.policy=auto` and a window around
//!    now updates itself to v2 and reboots into it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use axion_tests::registry::Registry;
use axion_tests::{qemu, require, xtask_ok};
use qemu::{DiskFormat, Drive, Firmware, VmConfig};
use sha2::Digest;

const TIMEOUT: Duration = Duration::from_secs(3600);
const V1: &str = "0.1.0-e2e.1";
const V2: &str = "0.1.0-e2e.2";
const V3: &str = "0.1.0-e2e.3";

#[test]
fn update_to_a_signed_v2_and_refuse_forgeries() {
    require!(
        axion_tests::have_qemu(),
        "qemu-system-x86_64 is not installed"
    );
    require!(
        Path::new("/usr/bin/ssh").exists(),
        "the ssh client (openssh-client) is not installed"
    );
    let registry = match Registry::start() {
        Ok(r) => r,
        Err(e) => {
            axion_tests::skip(format!("no local registry: {e}"));
            return;
        }
    };
    chain(&registry).unwrap();
}

fn publish(dir: &Path, version: &str, key: &Path, public: &Path, reference: &str) -> Result<()> {
    // The xtask child inherits these (the tests run single-threaded).
    std::env::set_var("AXION_VERSION", version);
    std::env::set_var("AXION_TRUSTED_KEYS", public);
    let out = xtask_ok(
        &[
            "publish",
            "--profile",
            "qemu",
            "--out",
            dir.to_str().context("path")?,
            "--push",
            reference,
            "--sign-key",
            key.to_str().context("path")?,
        ],
        TIMEOUT,
    );
    std::env::remove_var("AXION_VERSION");
    std::env::remove_var("AXION_TRUSTED_KEYS");
    let out = out?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !stdout.contains("signed with key") {
        bail!("publish did not sign: {stdout}");
    }
    Ok(())
}

/// Every file of a published folder (what `publish --push` pushed).
fn published_files(dir: &Path) -> Vec<PathBuf> {
    walk(dir)
        .into_iter()
        .filter(|p| {
            !p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect()
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

fn get(url: &str, accept: &str) -> Result<Vec<u8>> {
    let r = reqwest::blocking::Client::new()
        .get(url)
        .header("Accept", accept)
        .send()?
        .error_for_status()?;
    Ok(r.bytes()?.to_vec())
}

/// Cosign's signature tag of a manifest digest (`sha256-HEX.sig`; crates/signing makes it).
fn signature_tag(digest: &str) -> String {
    format!("{}.sig", digest.replace(':', "-"))
}

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

fn forge(registry: &Registry, v2_dir: &Path, v2_digest: &str) -> Result<(String, String)> {
    use xtask::publish::{oci, sign};
    let files = published_files(v2_dir);
    let host = registry.host();
    // Replay: the same files as another manifest, with v2's signature copied to it.
    let replay = format!("{host}/axion/qemu:replayed");
    let replay_digest = oci::push(
        &replay,
        v2_dir,
        &files,
        &[("org.example.forged".into(), "1".into())],
    )?;
    let base = format!("http://{host}/v2/axion/qemu");
    let sig = get(
        &format!("{base}/manifests/{}", signature_tag(v2_digest)),
        OCI_MANIFEST,
    )?;
    reqwest::blocking::Client::new()
        .put(format!(
            "{base}/manifests/{}",
            signature_tag(&replay_digest)
        ))
        .header("Content-Type", OCI_MANIFEST)
        .body(sig)
        .send()?
        .error_for_status()?;
    // A key nobody trusts.
    let other = format!("{host}/axion/qemu:otherkey");
    let other_digest = oci::push(
        &other,
        v2_dir,
        &files,
        &[("org.example.forged".into(), "2".into())],
    )?;
    let d = tempfile::tempdir()?;
    let (k, _) = sign::keygen_files(&d.path().join("intruder"))?;
    let claims = [
        ("axion.profile".to_owned(), "qemu".to_owned()),
        ("axion.version".to_owned(), V2.to_owned()),
    ]
    .into();
    sign::push_signature(&other, &other_digest, &sign::load_key(&k)?, &claims)?;
    Ok(("axion/qemu:replayed".into(), "axion/qemu:otherkey".into()))
}

fn pushed_digest(registry: &Registry, tag: &str) -> Result<String> {
    let body = get(
        &format!("http://{}/v2/axion/qemu/manifests/{tag}", registry.host()),
        OCI_MANIFEST,
    )?;
    Ok(format!(
        "sha256:{}",
        hex::encode(sha2::Sha256::digest(&body))
    ))
}

/// Host ports forwarded to the guest's sshd (22) and the engine's TLS port (2376).
#[derive(Clone, Copy)]
struct Ports {
    ssh: u16,
    docker: u16,
}

fn vm(dir: &Path, name: &str, disk: &Path, ports: Ports, cmdline: &str) -> VmConfig {
    let (accel, _) = axion_tests::accel();
    VmConfig::new()
        .accel(accel)
        .memory_mib(768)
        .run_dir(dir.join(name))
        .drive(Drive::disk(disk, DiskFormat::Qcow2))
        .user_net(
            qemu::NicModel::VirtioNet,
            vec![
                qemu::PortForward::tcp(ports.ssh, 22),
                qemu::PortForward::tcp(ports.docker, 2376),
            ],
        )
        .fw_cfg_string("opt/axion/cmdline", cmdline)
        // A reboot ends QEMU: the next boot is a new QEMU on the same disk.
        .no_reboot(true)
}

/// Runs `command` over ssh, retrying the connection for a while (sshd may still be starting).
fn sh(key: &Path, port: u16, command: &str) -> Result<(bool, String)> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let out = axion_tests::ssh(key, port, &[], command).output()?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // 255: ssh itself failed (no connection yet).
        if out.status.code() != Some(255) {
            return Ok((out.status.success(), text));
        }
        if Instant::now() > deadline {
            bail!("ssh `{command}`: {text}");
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// Starts `axion-update apply` over ssh, waits for its "writing" line and then for the pause
/// halfway through the new initramfs (`axion.update.test-pause-write`), and kills QEMU
/// (SIGKILL) there: a power cut in the middle of the write. Returns what `apply` printed.
fn kill_mid_apply(vm: &mut qemu::Vm, key: &Path, port: u16) -> Result<String> {
    use std::io::BufRead;
    let mut child = axion_tests::ssh(key, port, &[], "axion-update apply")
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().context("ssh's stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut seen = String::new();
    let outcome = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                seen.push_str(&line);
                seen.push('\n');
                if line.contains("paused") {
                    break Ok(());
                }
            }
            Err(_) => break Err(anyhow::anyhow!("apply never paused mid-write: {seen}")),
        }
    };
    if outcome.is_ok() {
        vm.kill()?;
        eprintln!("killed QEMU in the middle of apply:\n{seen}");
    }
    let _ = child.kill();
    let _ = child.wait();
    outcome.map(|()| seen)
}

/// A clean reboot through init (SIGTERM, what `apply --reboot` sends); the ssh session ends
/// with the machine, so its status says nothing.
fn reboot(key: &Path, port: u16) {
    let _ = axion_tests::ssh(key, port, &[], "kill -TERM 1").output();
}

fn chain(registry: &Registry) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let (key, public) = xtask::publish::sign::keygen_files(&d.join("release"))?;
    let host = registry.host();
    let (v1_dir, v2_dir) = (d.join("v1"), d.join("v2"));
    let t = Instant::now();
    publish(&v1_dir, V1, &key, &public, &format!("{host}/axion/qemu:v1"))?;
    publish(&v2_dir, V2, &key, &public, &format!("{host}/axion/qemu:v2"))?;
    eprintln!("published v1 and v2 in {:.0} s", t.elapsed().as_secs_f64());
    let v2_digest = pushed_digest(registry, "v2")?;
    let (replayed, otherkey) = forge(registry, &v2_dir, &v2_digest)?;

    let disk = d.join("disk.qcow2");
    std::fs::copy(
        v1_dir.join(format!("axion-qemu-{}.qcow2", xtask::image::VERSION)),
        &disk,
    )?;
    let (ssh_key, ssh_pub) = axion_tests::ssh_keygen(d, "ssh")?;
    let reg = format!("10.0.2.2:{}", registry.port);
    let cmdline = format!(
        "axion.ssh_key=\"{ssh_pub}\" axion.update.ref={reg}/axion/qemu:v2 \
         axion.update.insecure=1"
    );
    let ports = Ports {
        ssh: qemu::free_port()?,
        docker: qemu::free_port()?,
    };
    let port = ports.ssh;

    // Boot 1: v1 from slot A; `apply` pauses halfway through the slot (see kill_mid_apply).
    let paused = format!("{cmdline} axion.update.test-pause-write=600");
    let (mut vm1, _) = axion_tests::boot_ready(vm(d, "boot1", &disk, ports, &paused))?;
    let (_, status) = sh(&ssh_key, port, "axion-update status")?;
    assert!(
        status.contains(&format!("version: {V1}"))
            && status.contains("booted slot: A")
            && status.contains("slot B: empty"),
        "{status}"
    );
    let (ok, _) = sh(
        &ssh_key,
        port,
        "mkdir -p /var/lib/e2e && echo kept > /var/lib/e2e/marker && sync",
    )?;
    assert!(ok);
    for (forged, why) in [
        (&replayed, "the signature is for"),
        (&otherkey, "which this image does not trust"),
    ] {
        let (ok, out) = sh(
            &ssh_key,
            port,
            &format!("axion-update apply {reg}/{forged}"),
        )?;
        assert!(
            !ok && out.contains("refused") && out.contains(why),
            "{forged}: {out}"
        );
    }
    let (_, status) = sh(&ssh_key, port, "axion-update status")?;
    assert!(
        status.contains("slot B: empty") && !status.contains("pending"),
        "a refused artifact touched slot B: {status}"
    );
    // A power cut in the middle of `apply`: QEMU killed while the inactive slot is half
    // written (this boot's `axion.update.test-pause-write` holds the write there).
    let seen = kill_mid_apply(&mut vm1, &ssh_key, port)?;
    assert!(seen.contains(&format!("writing {V2} to slot B")), "{seen}");

    // Boot 1b: the old slot runs, nothing was tried, /var/lib is intact.
    let (mut vm1, _) = axion_tests::boot_ready(vm(d, "boot1b", &disk, ports, &cmdline))?;
    let (_, out) = sh(
        &ssh_key,
        port,
        "axion-update status; cat /run/axion-update/state /var/lib/e2e/marker; \
         ls /run/axion-update/esp/axion/B",
    )?;
    assert!(
        out.contains(&format!("version: {V1}"))
            && out.contains("booted slot: A")
            && out.contains("active slot: A")
            && out.contains("slot B: empty")
            && !out.contains("pending")
            && !out.contains("failed update")
            && out.contains("update.state=idle")
            && out.contains("kept"),
        "after a kill in the middle of apply: {out}"
    );
    // Where the kill landed: the initramfs half written (fsynced before the pause).
    assert!(out.contains("initrd.zst.new"), "{out}");
    let (ok, out) = sh(&ssh_key, port, "axion-update check")?;
    assert!(
        ok && out.contains(&format!("update available: {V1} -> {V2}")),
        "{out}"
    );
    // The second apply succeeds.
    let t = Instant::now();
    let (ok, out) = sh(&ssh_key, port, "axion-update apply")?;
    eprintln!("apply: {out}");
    assert!(ok && out.contains("written to slot B"), "{out}");
    reboot(&ssh_key, port);
    vm1.wait_exit(Duration::from_secs(180))
        .context("v1 did not reboot after apply")?;

    // Boot 2: GRUB tries slot B once; under OVMF this time.
    let cfg = vm(d, "boot2", &disk, ports, &cmdline).firmware(Firmware::ovmf());
    let (mut vm2, _) = axion_tests::boot_ready(cfg)?;
    // The boot check makes B active once the engine answers /_ping.
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let (_, status) = sh(&ssh_key, port, "axion-update status")?;
        if status.contains("active slot: B") {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "the boot check did not make slot B active: {status}\nserial:\n{}",
                vm2.serial_log()
                    .map(|p| axion_tests::tail(p, 40))
                    .unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_secs(3));
    }
    eprintln!(
        "apply to v2 confirmed healthy: {:.0} s ({}, including the reboot)",
        t.elapsed().as_secs_f64(),
        axion_tests::accel().0.name()
    );
    let (_, out) = sh(
        &ssh_key,
        port,
        "cat /etc/axion/release /var/lib/e2e/marker; cat /proc/cmdline; axion-update status",
    )?;
    assert!(out.contains(&format!("version={V2}")), "{out}");
    assert!(out.contains("kept"), "/var/lib lost its file: {out}");
    assert!(out.contains("axion.slot=B"), "{out}");
    assert!(
        out.contains("active slot: B") && out.contains(&format!("slot A: {V1}")),
        "{out}"
    );

    // A broken v3: the kernel panics on its initramfs (panic=-1 reboots at once).
    let v3_dir = d.join("v3");
    std::fs::create_dir_all(&v3_dir)?;
    let name = |ext: &str| format!("axion-qemu-{}.{ext}", xtask::image::VERSION);
    std::fs::copy(v2_dir.join(name("vmlinuz")), v3_dir.join(name("vmlinuz")))?;
    std::fs::write(v3_dir.join(name("initrd.zst")), b"not an initramfs")?;
    let v3_ref = format!("{host}/axion/qemu:v3");
    let files = published_files(&v3_dir);
    let v3_digest = xtask::publish::oci::push(&v3_ref, &v3_dir, &files, &[])?;
    let claims = [
        ("axion.profile".to_owned(), "qemu".to_owned()),
        ("axion.version".to_owned(), V3.to_owned()),
    ]
    .into();
    let k = xtask::publish::sign::load_key(&key)?;
    xtask::publish::sign::push_signature(&v3_ref, &v3_digest, &k, &claims)?;
    let (ok, out) = sh(
        &ssh_key,
        port,
        &format!("axion-update apply {reg}/axion/qemu:v3"),
    )?;
    assert!(ok && out.contains("written to slot A"), "{out}");
    reboot(&ssh_key, port);
    vm2.wait_exit(Duration::from_secs(180))
        .context("v2 did not reboot after applying v3")?;
    // Boot 3: the one trial of slot A panics; QEMU ends (no reboot).
    let mut vm3 = qemu::Vm::spawn(vm(d, "boot3", &disk, ports, &cmdline))?;
    vm3.wait_exit(Duration::from_secs(240))
        .context("the broken v3 did not end its boot")?;
    let log3 = vm3
        .serial_log()
        .map(|p| std::fs::read_to_string(p).unwrap_or_default())
        .unwrap_or_default();
    assert!(
        log3.contains("axion.slot=A") && log3.contains("Kernel panic"),
        "{log3}"
    );
    // Boot 4: back on v2 (slot B) by itself; v3 recorded as failed and refused.
    let (vm4, _) = axion_tests::boot_ready(vm(d, "boot4", &disk, ports, &cmdline))?;
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        let (_, status) = sh(
            &ssh_key,
            port,
            "axion-update status; cat /etc/axion/release",
        )?;
        if status.contains("failed update") || Instant::now() > deadline {
            break status;
        }
        std::thread::sleep(Duration::from_secs(3));
    };
    assert!(
        status.contains(&format!("failed update: {V3}"))
            && status.contains("booted slot: B")
            && status.contains("active slot: B")
            && status.contains(&format!("version={V2}")),
        "{status}"
    );
    let (ok, out) = sh(
        &ssh_key,
        port,
        &format!("axion-update apply {reg}/axion/qemu:v3"),
    )?;
    assert!(!ok && out.contains("failed its health check"), "{out}");
    // The same through the Docker API: `docker info` shows the update agent's state.
    if axion_tests::docker_installed() {
        let labels = docker_labels(d, &ssh_key, ports)?;
        for want in [
            format!("axion.version={V2}"),
            "axion.profile=qemu".into(),
            "axion.slot=B".into(),
            "axion.update.state=idle".into(),
            format!("axion.update.last-failed={V3}"),
        ] {
            assert!(
                labels.contains(&want),
                "{want} not in docker info's Labels: {labels}"
            );
        }
    } else {
        axion_tests::skip("docker info's Labels: the docker CLI is not installed");
    }
    drop(vm4);
    auto_policy(d, &v1_dir, &ssh_key, &ssh_pub, &reg)
}

/// `HH:MM-HH:MM` (UTC) from five minutes ago to an hour from now.
fn window_around_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let minute = (secs / 60) % 1440;
    let hhmm = |m: u64| format!("{:02}:{:02}", m / 60, m % 60);
    format!(
        "{}-{}",
        hhmm((minute + 1440 - 5) % 1440),
        hhmm((minute + 60) % 1440)
    )
}

/// `axion.update.policy=auto` with a window around now: a fresh v1 disk updates itself to
/// v2 and reboots into it, nobody running a command. One QEMU: without `-no-reboot` the
/// guest's reboot restarts it in place, and its console shows both boots.
fn auto_policy(d: &Path, v1_dir: &Path, ssh_key: &Path, ssh_pub: &str, reg: &str) -> Result<()> {
    let disk = d.join("auto.qcow2");
    std::fs::copy(
        v1_dir.join(format!("axion-qemu-{}.qcow2", xtask::image::VERSION)),
        &disk,
    )?;
    let cmdline = format!(
        "axion.ssh_key=\"{ssh_pub}\" axion.update.ref={reg}/axion/qemu:v2 \
         axion.update.insecure=1 axion.update.policy=auto axion.update.window={} \
         axion.update.interval=1m",
        window_around_now()
    );
    let ports = Ports {
        ssh: qemu::free_port()?,
        docker: qemu::free_port()?,
    };
    let cfg = vm(d, "auto", &disk, ports, &cmdline).no_reboot(false);
    // Its first boot's lines are not awaited one by one: the agent may apply before init's
    // ready line.
    let t = Instant::now();
    let mut vm = qemu::Vm::spawn(cfg)?;
    let written = vm
        .wait_for_line(&format!("{V2} written to slot B"), Duration::from_secs(300))
        .context("policy auto did not apply v2")?;
    eprintln!("policy auto: {}", written.line);
    let ready = vm.wait_ready(axion_tests::ready_timeout())?;
    eprintln!("policy auto: rebooted by itself: {}", ready.line);
    let deadline = Instant::now() + Duration::from_secs(240);
    let status = loop {
        let (_, status) = sh(
            ssh_key,
            ports.ssh,
            "axion-update status; cat /etc/axion/release",
        )?;
        if status.contains("active slot: B") || Instant::now() > deadline {
            break status;
        }
        std::thread::sleep(Duration::from_secs(3));
    };
    assert!(
        status.contains("booted slot: B")
            && status.contains("active slot: B")
            && status.contains(&format!("version={V2}")),
        "policy auto did not end on a confirmed v2: {status}"
    );
    eprintln!(
        "policy auto: from starting QEMU on v1 to v2 confirmed: {:.0} s",
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `docker info`'s Labels over the engine's TLS port, with the client certificate the
/// engine keeps on the data disk copied out over ssh.
fn docker_labels(dir: &Path, ssh_key: &Path, ports: Ports) -> Result<String> {
    let certs = dir.join("certs");
    std::fs::create_dir_all(&certs)?;
    for f in ["ca", "cert", "key"] {
        let (ok, pem) = sh(
            ssh_key,
            ports.ssh,
            &format!("cat /var/lib/axion-engine/tls/client/{f}.pem"),
        )?;
        if !ok {
            bail!("no client certificate {f}.pem: {pem}");
        }
        std::fs::write(certs.join(format!("{f}.pem")), pem)?;
    }
    let cli = axion_tests::DockerCli::new(
        format!("tcp://127.0.0.1:{}", ports.docker),
        dir.join("docker-config"),
    )
    .tls(&certs);
    cli.try_ok(&["info", "--format", "{{json .Labels}}"])
}
