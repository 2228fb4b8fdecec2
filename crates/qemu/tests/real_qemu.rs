//! The crate against the real qemu-system-x86_64 (TCG; no kernel needed: a paused machine, or
//! the probe's 512-byte boot sector that prints a line on the serial port).

use std::path::{Path, PathBuf};
use std::time::Duration;

use qemu::{boot_sector_image, DiskFormat, Drive, Error, Vm, VmConfig, BOOT_SECTOR_MARKER};

fn have_qemu() -> bool {
    let ok = std::process::Command::new("qemu-system-x86_64")
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        test_skip::skip(
            "qemu-system-x86_64 is not installed (Debian: apt-get install qemu-system-x86)",
        );
    }
    ok
}

fn boot_sector(dir: &Path) -> PathBuf {
    let p = dir.join("boot.img");
    std::fs::write(&p, boot_sector_image()).unwrap();
    p
}

fn small() -> VmConfig {
    VmConfig::new().cpus(1).memory_mib(64)
}

#[test]
fn paused_machine_answers_qmp_and_quits() {
    if !have_qemu() {
        return;
    }
    let mut vm = Vm::spawn(small().paused(true)).unwrap();
    let q = vm.qmp().unwrap();
    assert!(
        q.version.starts_with(|c: char| c.is_ascii_digit()),
        "{}",
        q.version
    );
    let st = q.query_status().unwrap();
    assert_eq!((st.status.as_str(), st.running), ("prelaunch", false));
    q.cont().unwrap();
    assert!(q.query_status().unwrap().running);
    q.stop().unwrap();
    let st = q.query_status().unwrap();
    assert_eq!((st.status.as_str(), st.running), ("paused", false));
    q.wait_event("STOP", Duration::from_secs(5)).unwrap();
    let err = q.execute("no-such-command", None).unwrap_err().to_string();
    assert!(err.contains("CommandNotFound"), "{err}");
    q.quit().unwrap();
    let st = vm.wait_exit(Duration::from_secs(10)).unwrap();
    assert!(st.success(), "{st}");
}

#[test]
fn serial_lines_are_followed_and_errors_show_them() {
    if !have_qemu() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut vm =
        Vm::spawn(small().drive(Drive::disk(boot_sector(dir.path()), DiskFormat::Raw))).unwrap();
    let line = vm
        .wait_for_line(BOOT_SECTOR_MARKER, Duration::from_secs(60))
        .unwrap();
    assert_eq!(line.line, BOOT_SECTOR_MARKER);
    assert!(line.elapsed > Duration::ZERO && line.elapsed < Duration::from_secs(60));
    assert_eq!(
        std::fs::read_to_string(vm.serial_log().unwrap()).unwrap(),
        format!("{BOOT_SECTOR_MARKER}\r\n")
    );
    // The line was consumed; waiting for it again times out and shows the console.
    let err = vm
        .wait_for_line(BOOT_SECTOR_MARKER, Duration::from_millis(300))
        .unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    assert!(
        err.to_string().contains(&format!("| {BOOT_SECTOR_MARKER}")),
        "{err}"
    );
    // Nothing in the guest handles the power button: QEMU is killed and the error says so.
    let err = vm
        .powerdown_and_wait(Duration::from_secs(1))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("power button") && err.contains(BOOT_SECTOR_MARKER),
        "{err}"
    );
    assert!(vm.try_exit_status().is_some());
}

#[test]
fn qemu_refusing_to_start_is_reported_with_its_message() {
    if !have_qemu() {
        return;
    }
    let err = Vm::spawn(small().extra_args(["-no-such-option"])).unwrap_err();
    assert!(matches!(err, Error::Exited { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("-no-such-option") && msg.contains("QEMU said"),
        "{msg}"
    );
}

#[test]
fn drop_kills_qemu() {
    if !have_qemu() {
        return;
    }
    let vm = Vm::spawn(small().paused(true)).unwrap();
    let pid = vm.pid();
    let run_dir = vm.run_dir().to_owned();
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    drop(vm);
    // Reaped, not a zombie, and the temporary run directory is gone.
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "QEMU {pid} still there after drop"
    );
    assert!(!run_dir.exists());
}

#[test]
fn save_and_restore_a_running_guest() {
    if !have_qemu() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let disk = boot_sector(dir.path());
    let state = dir.path().join("saved state.bin");
    let config = small().drive(Drive::disk(&disk, DiskFormat::Raw));
    let mut vm = Vm::spawn(config.clone()).unwrap();
    vm.wait_for_line(BOOT_SECTOR_MARKER, Duration::from_secs(60))
        .unwrap();
    vm.save(&state, Duration::from_secs(60)).unwrap();
    assert_eq!(
        vm.qmp().unwrap().query_status().unwrap().status,
        "postmigrate"
    );
    vm.qmp().unwrap().quit().unwrap();
    vm.wait_exit(Duration::from_secs(10)).unwrap();
    let size = std::fs::metadata(&state).unwrap().len();
    assert!(size > 100_000, "saved state is only {size} bytes");

    let mut restored = Vm::spawn(config.restore_from(&state)).unwrap();
    // Saved with its CPUs stopped, so restored stopped; `cont` resumes it.
    assert_eq!(
        restored.wait_restored(Duration::from_secs(60)).unwrap(),
        "paused"
    );
    restored.qmp().unwrap().cont().unwrap();
    assert_eq!(
        restored.qmp().unwrap().query_status().unwrap().status,
        "running"
    );
    // The guest continues where it was (halted after printing), it does not boot again.
    let err = restored
        .wait_for_line(BOOT_SECTOR_MARKER, Duration::from_secs(2))
        .unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
}

#[test]
fn uefi_firmware_starts_with_a_private_variable_store() {
    if !have_qemu() {
        return;
    }
    if !Path::new(qemu::OVMF_CODE).exists() {
        test_skip::skip(format_args!(
            "{} is missing (Debian: apt-get install ovmf)",
            qemu::OVMF_CODE
        ));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut vm = Vm::spawn(small().memory_mib(256).uefi().run_dir(dir.path())).unwrap();
    let vars = dir.path().join("OVMF_VARS.fd");
    assert_eq!(
        std::fs::metadata(&vars).unwrap().len(),
        std::fs::metadata(qemu::OVMF_VARS).unwrap().len()
    );
    // OVMF writes its boot manager's messages to the serial console; with no disk it finds
    // nothing to boot.
    let line = vm
        .wait_for(
            |l| l.contains("BdsDxe") || l.contains("UEFI"),
            "waiting for OVMF",
            Duration::from_secs(120),
        )
        .unwrap();
    assert!(!line.line.is_empty());
}

#[test]
fn kvm_probe_without_a_kernel_never_picks_kvm_and_leaves_nothing_running() {
    if !have_qemu() {
        return;
    }
    let p = qemu::probe_kvm(None, Duration::from_secs(10));
    eprintln!("probe: {p:?}");
    assert!(!p.usable, "{p:?}");
    assert!(p.took < Duration::from_secs(40), "{p:?}");
    // Either /dev/kvm is unusable, or the boot sector stage ran (passed or timed out) and
    // the verdict says why KVM is not chosen.
    assert!(
        p.detail.contains("/dev/kvm") || p.detail.contains("boot sector"),
        "{p:?}"
    );
}

#[test]
fn choose_accel_remembers_its_verdict() {
    if !have_qemu() {
        return;
    }
    if std::env::var_os("AXION_ACCEL").is_some() {
        test_skip::skip("AXION_ACCEL is set, so choose_accel does not probe");
        return;
    }
    let (a1, why1) = qemu::choose_accel(None);
    // No kernel to prove Linux boots: never KVM.
    assert_eq!(a1, qemu::Accel::Tcg, "{why1}");
    let start = std::time::Instant::now();
    let (a2, why2) = qemu::choose_accel(None);
    assert_eq!((a1, &why1), (a2, &why2));
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "the second call probed again"
    );
}
