//! Installing from the ISO (issue 19's "ISO-installed case"):
//!
//! 1. boot the qemu profile's ISO as a CD (SeaBIOS) with an empty 1.5 GiB qcow2 attached: a
//!    live system, `axion-update status` says `booted slot: none`;
//! 2. over SSH, `axion-update install /dev/vda` finds the ISO, writes its disk image and
//!    verifies it; a second `install` is refused (the disk now holds an axion-data
//!    partition) unless `--force`;
//! 3. shut down cleanly, boot the disk alone (SeaBIOS): slot A booted and active, slot B
//!    empty, the update machinery managed (`update.state=idle`, not `unmanaged`), and the
//!    engine answers: `docker info` over its TLS port shows it all as Labels;
//! 4. when Debian's docker-registry runs here: the ISO is the one `cargo xtask publish` made
//!    of a signed v1 (as tests/e2e/update.rs does), and the installed disk updates once to
//!    the published v2: `apply`, reboot, slot B tried and made active.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use axion_tests::registry::Registry;
use axion_tests::{qemu, require, xtask_ok};
use qemu::{DiskFormat, Drive, VmConfig};

#[test]
fn install_from_the_iso_then_boot_the_disk() {
    require!(
        axion_tests::have_qemu(),
        "qemu-system-x86_64 is not installed"
    );
    require!(
        Path::new("/usr/bin/ssh").exists(),
        "the ssh client (openssh-client) is not installed"
    );
    require!(
        axion_tests::runs("qemu-img"),
        "qemu-img (qemu-utils) is not installed"
    );
    run().unwrap();
}

#[derive(Clone, Copy)]
struct Ports {
    ssh: u16,
    docker: u16,
}

fn vm(dir: &Path, name: &str, ports: Ports, cmdline: &str) -> VmConfig {
    let (accel, _) = axion_tests::accel();
    VmConfig::new()
        .accel(accel)
        .memory_mib(1024)
        .run_dir(dir.join(name))
        .user_net(
            qemu::NicModel::VirtioNet,
            vec![
                qemu::PortForward::tcp(ports.ssh, 22),
                qemu::PortForward::tcp(ports.docker, 2376),
            ],
        )
        .fw_cfg_string("opt/axion/cmdline", cmdline)
        .no_reboot(true)
}

/// Runs `command` over ssh, retrying while sshd is not up yet.
fn sh(key: &Path, port: u16, command: &str) -> Result<(bool, String)> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let out = axion_tests::ssh(key, port, &[], command).output()?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if out.status.code() != Some(255) {
            return Ok((out.status.success(), text));
        }
        if Instant::now() > deadline {
            bail!("ssh `{command}`: {text}");
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

const V1: &str = "0.1.0-install.1";
const V2: &str = "0.1.0-install.2";

fn publish(dir: &Path, version: &str, key: &Path, public: &Path, reference: &str) -> Result<()> {
    // The xtask child inherits these (the e2e tests run single-threaded).
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
        Duration::from_secs(3600),
    );
    std::env::remove_var("AXION_VERSION");
    std::env::remove_var("AXION_TRUSTED_KEYS");
    out.map(|_| ())
}

fn run() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    // With a registry: v1 and v2 published and signed, v1's ISO installed. Without: the
    // checkout's ISO, and no update.
    let registry = Registry::start()
        .map_err(|e| {
            axion_tests::skip(format!(
                "the update after the install: no local registry: {e}"
            ))
        })
        .ok();
    let (iso, update_ref) = match &registry {
        Some(r) => {
            let (key, public) = xtask::publish::sign::keygen_files(&d.join("release"))?;
            let t = Instant::now();
            for (v, tag) in [(V1, "v1"), (V2, "v2")] {
                let reference = format!("{}/axion/qemu:{tag}", r.host());
                publish(&d.join(tag), v, &key, &public, &reference)?;
            }
            eprintln!("published v1 and v2 in {:.0} s", t.elapsed().as_secs_f64());
            let iso = d
                .join("v1")
                .join(format!("axion-qemu-{}.iso", xtask::image::VERSION));
            (iso, Some(format!("10.0.2.2:{}/axion/qemu:v2", r.port)))
        }
        None => match axion_tests::image("qemu", xtask::profile::Format::Iso)? {
            xtask::image::Bootable::Iso(p) => (p, None),
            other => bail!("not an ISO: {other:?}"),
        },
    };
    let disk = d.join("disk.qcow2");
    let out = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&disk)
        .arg("1536M")
        .output()?;
    if !out.status.success() {
        bail!("qemu-img create: {}", String::from_utf8_lossy(&out.stderr));
    }
    let (ssh_key, ssh_pub) = axion_tests::ssh_keygen(d, "ssh")?;
    let mut cmdline = format!("axion.ssh_key=\"{ssh_pub}\"");
    if let Some(r) = &update_ref {
        cmdline.push_str(&format!(" axion.update.ref={r} axion.update.insecure=1"));
    }
    let ports = Ports {
        ssh: qemu::free_port()?,
        docker: qemu::free_port()?,
    };
    let port = ports.ssh;

    // Boot 1: the ISO (first in the boot order), the empty disk beside it.
    let live = vm(d, "live", ports, &cmdline)
        .drive(Drive::cdrom(&iso))
        .drive(Drive::disk(&disk, DiskFormat::Qcow2));
    let (mut vm1, _) = axion_tests::boot_ready(live)?;
    let (_, status) = sh(&ssh_key, port, "axion-update status")?;
    assert!(status.contains("booted slot: none"), "{status}");
    let t = Instant::now();
    let (ok, out) = sh(&ssh_key, port, "axion-update install /dev/vda")?;
    eprintln!(
        "install: {:.0} s ({}):\n{out}",
        t.elapsed().as_secs_f64(),
        axion_tests::accel().0.name()
    );
    assert!(ok && out.contains("installed and verified"), "{out}");
    let (ok, out) = sh(
        &ssh_key,
        port,
        "cat /sys/class/block/vda*/uevent | grep PARTNAME; axion-update install /dev/vda",
    )?;
    assert!(
        out.contains("PARTNAME=axion-esp") && out.contains("PARTNAME=axion-data"),
        "the kernel did not re-read the new partition table: {out}"
    );
    assert!(
        !ok && out.contains("holds an axion-data partition") && out.contains("--force"),
        "a second install was not refused: {out}"
    );
    let (ok, out) = sh(&ssh_key, port, "axion-update install /dev/vda1")?;
    assert!(!ok && out.contains("is a partition"), "{out}");
    // A clean shutdown through init (which ends QEMU: -no-reboot).
    let _ = axion_tests::ssh(&ssh_key, port, &[], "kill -TERM 1").output();
    vm1.wait_exit(Duration::from_secs(180))
        .context("the live system did not shut down")?;

    // Boot 2: the installed disk alone, SeaBIOS.
    let installed =
        vm(d, "installed", ports, &cmdline).drive(Drive::disk(&disk, DiskFormat::Qcow2));
    let (vm2, _) = axion_tests::boot_ready(installed)?;
    let (_, out) = sh(
        &ssh_key,
        port,
        "axion-update status; cat /run/axion-update/state; cat /proc/cmdline",
    )?;
    assert!(
        out.contains("booted slot: A")
            && out.contains("active slot: A")
            && out.contains("slot B: empty")
            && out.contains("update.state=idle")
            && out.contains("axion.slot=A"),
        "the installed disk is not a managed slot-A system: {out}"
    );
    if axion_tests::docker_installed() {
        let labels = docker_labels(d, &ssh_key, ports)?;
        for want in [
            "axion.profile=qemu",
            "axion.slot=A",
            "axion.update.state=idle",
        ] {
            assert!(
                labels.contains(want),
                "{want} not in docker info's Labels: {labels}"
            );
        }
    } else {
        axion_tests::skip("docker info on the installed disk: the docker CLI is not installed");
    }
    let Some(_) = update_ref else {
        return Ok(());
    };
    // The installed v1 updates in place to the published v2.
    let (ok, out) = sh(&ssh_key, port, "axion-update apply")?;
    assert!(
        ok && out.contains(&format!("{V2} written to slot B")),
        "apply on the installed disk: {out}"
    );
    let _ = axion_tests::ssh(&ssh_key, port, &[], "kill -TERM 1").output();
    let mut vm2 = vm2;
    vm2.wait_exit(Duration::from_secs(180))
        .context("the installed disk did not reboot after apply")?;
    let updated = vm(d, "updated", ports, &cmdline).drive(Drive::disk(&disk, DiskFormat::Qcow2));
    let (_vm3, _) = axion_tests::boot_ready(updated)?;
    let deadline = Instant::now() + Duration::from_secs(240);
    let status = loop {
        let (_, status) = sh(
            &ssh_key,
            port,
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
            && status.contains(&format!("slot A: {V1}"))
            && status.contains(&format!("version={V2}")),
        "the installed disk did not end on a confirmed v2: {status}"
    );
    Ok(())
}

/// `docker info`'s Labels over the engine's TLS port, with the client certificate the engine
/// keeps on the data partition copied out over ssh; retried while the engine starts.
fn docker_labels(dir: &Path, ssh_key: &Path, ports: Ports) -> Result<String> {
    let certs = dir.join("certs");
    std::fs::create_dir_all(&certs)?;
    let deadline = Instant::now() + Duration::from_secs(180);
    for f in ["ca", "cert", "key"] {
        let pem = loop {
            let (ok, pem) = sh(
                ssh_key,
                ports.ssh,
                &format!("cat /var/lib/axion-engine/tls/client/{f}.pem"),
            )?;
            if ok {
                break pem;
            }
            if Instant::now() > deadline {
                bail!("no client certificate {f}.pem: {pem}");
            }
            std::thread::sleep(Duration::from_secs(2));
        };
        std::fs::write(certs.join(format!("{f}.pem")), pem)?;
    }
    let cli = axion_tests::DockerCli::new(
        format!("tcp://127.0.0.1:{}", ports.docker),
        dir.join("docker-config"),
    )
    .tls(&certs);
    loop {
        match cli.try_ok(&["info", "--format", "{{json .Labels}}"]) {
            Ok(labels) => return Ok(labels),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_secs(2)),
        }
    }
}
