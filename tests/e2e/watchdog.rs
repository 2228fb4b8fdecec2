//! The hardware watchdog, one boot of the qemu profile's initramfs with QEMU's i6300esb
//! (`-action watchdog=reset`; with `-no-reboot` the reset ends QEMU):
//!
//! 1. init arms /dev/watchdog and pets it: the VM outlives the i6300esb's timeout (the
//!    driver's default 30 s) twice over;
//! 2. then the update agent's state file is made to say `update.state=trial` (what a slot on
//!    trial that was never marked good says) past init's cutoff (`axion.update.deadline=5`
//!    plus init's 60 s margin): init stops petting and the watchdog resets the machine.
//!
//! The rollback itself (GRUB booting the previous slot after the spent try) is what the
//! update test checks after a panicking trial; here only the reset is checked.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use axion_tests::{boot_ready, image, qemu, require};
use xtask::image::Bootable;
use xtask::profile::Format;

#[test]
fn a_trial_never_marked_good_is_reset_by_the_watchdog() {
    require!(
        axion_tests::have_qemu(),
        "qemu-system-x86_64 is not installed"
    );
    require!(
        Path::new("/usr/bin/ssh").exists(),
        "the ssh client (openssh-client) is not installed"
    );
    reset_checks().unwrap();
}

fn sh(key: &Path, port: u16, command: &str) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let out = axion_tests::ssh(key, port, &[], command).output()?;
        if out.status.success() {
            return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
        }
        if Instant::now() > deadline {
            bail!("ssh `{command}`: {}", String::from_utf8_lossy(&out.stderr));
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

fn serial(vm: &qemu::Vm) -> String {
    vm.serial_log()
        .map(|p| std::fs::read_to_string(p).unwrap_or_default())
        .unwrap_or_default()
}

fn reset_checks() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (key, public) = axion_tests::ssh_keygen(dir.path(), "ssh")?;
    let Bootable::Kernel { kernel, initrd } = image("qemu", Format::Initramfs)? else {
        bail!("the initramfs format is not a kernel and an initramfs");
    };
    let port = qemu::free_port()?;
    let (accel, why) = axion_tests::accel();
    eprintln!("accelerator: {why}");
    let cmdline =
        format!("console=ttyS0,115200 panic=-1 axion.update.deadline=5 axion.ssh_key=\"{public}\"");
    let config = qemu::VmConfig::new()
        .accel(accel)
        .memory_mib(512)
        .run_dir(dir.path().join("vm"))
        .kernel(&kernel, Some(initrd), cmdline)
        .device(qemu::Device::Watchdog)
        .no_reboot(true)
        .user_net(
            qemu::NicModel::VirtioNet,
            vec![qemu::PortForward::tcp(port, 22)],
        );
    let (mut vm, _) = boot_ready(config)?;
    let log = serial(&vm);
    assert!(
        log.contains("watchdog /dev/watchdog armed") && log.contains("65 s after boot"),
        "init did not arm the watchdog:\n{log}"
    );

    // Twice the i6300esb's timeout, with nothing but init's petting.
    let t = Instant::now();
    std::thread::sleep(Duration::from_secs(75));
    assert!(
        vm.try_exit_status().is_none(),
        "the VM ended although init pets the watchdog:\n{}",
        axion_tests::tail(vm.serial_log().context("serial log")?, 40)
    );
    let uptime = sh(&key, port, "cat /proc/uptime")?;
    eprintln!(
        "alive {:.0} s after the ready line, uptime {uptime}",
        t.elapsed().as_secs_f64()
    );

    // What a slot on trial that its boot check never confirmed says.
    sh(
        &key,
        port,
        "mkdir -p /run/axion-update && printf 'version=x\\nupdate.state=trial\\n' \
         > /run/axion-update/state.tmp && mv /run/axion-update/state.tmp \
         /run/axion-update/state",
    )?;
    let t = Instant::now();
    vm.wait_exit(Duration::from_secs(150))
        .context("the watchdog did not reset the machine")?;
    eprintln!(
        "reset {:.0} s after the trial state was written",
        t.elapsed().as_secs_f64()
    );
    let log = serial(&vm);
    assert!(
        log.contains("was not marked good within 65 s of boot: no more petting"),
        "{log}"
    );
    Ok(())
}
