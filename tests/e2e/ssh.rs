//! SSH into a booted qemu-profile image: dropbear accepts the key given in the first-boot
//! settings (kernel command line), and refuses another key and passwords.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use axion_tests::{boot_ready, image, qemu, require};
use xtask::image::Bootable;
use xtask::profile::Format;

fn ssh(key: &std::path::Path, port: u16, extra: &[&str], command: &str) -> std::process::Output {
    axion_tests::ssh(key, port, extra, command)
        .output()
        .expect("ssh runs")
}

use axion_tests::ssh_keygen as keygen;

#[test]
fn key_login_works_and_nothing_else_does() {
    require!(
        axion_tests::have_qemu(),
        "qemu-system-x86_64 is not installed"
    );
    require!(
        std::path::Path::new("/usr/bin/ssh").exists(),
        "the ssh client (openssh-client) is not installed"
    );
    login_checks().unwrap();
}

fn login_checks() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (good, good_pub) = keygen(dir.path(), "good")?;
    let (bad, _) = keygen(dir.path(), "bad")?;

    let Bootable::Kernel { kernel, initrd } = image("qemu", Format::Initramfs)? else {
        bail!("the initramfs format is not a kernel and an initramfs");
    };
    let port = qemu::free_port()?;
    let (accel, why) = axion_tests::accel();
    eprintln!("accelerator: {why}");
    let cmdline = format!(
        "console=ttyS0,115200 panic=-1 axion.hostname=sshtest axion.ssh_key=\"{good_pub}\""
    );
    let config = qemu::VmConfig::new()
        .accel(accel)
        .memory_mib(512)
        .run_dir(dir.path().join("vm"))
        .kernel(&kernel, Some(initrd), cmdline)
        .user_net(
            qemu::NicModel::VirtioNet,
            vec![qemu::PortForward::tcp(port, 22)],
        );
    let (vm, _ready) = boot_ready(config)?;

    // sshd starts after the network; give it a moment to listen (and to make host keys).
    let deadline = Instant::now() + Duration::from_secs(90);
    let out = loop {
        let out = ssh(&good, port, &[], "hostname; id -u; cat /proc/1/comm");
        if out.status.success() || Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(Duration::from_secs(2));
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "ssh with the configured key failed: {}\nserial:\n{}",
        String::from_utf8_lossy(&out.stderr),
        vm.serial_log()
            .map(|p| axion_tests::tail(p, 40))
            .unwrap_or_default()
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines, ["sshtest", "0", "init"], "{stdout}");

    let out = ssh(&bad, port, &[], "true");
    assert!(
        !out.status.success(),
        "a key that is not configured was accepted"
    );
    let out = ssh(
        &good,
        port,
        &[
            "-o",
            "PreferredAuthentications=password,keyboard-interactive",
            "-o",
            "PubkeyAuthentication=no",
        ],
        "true",
    );
    assert!(
        !out.status.success(),
        "password login was offered and accepted"
    );
    Ok(())
}
