//! The KVM probe's last stage against the real kernel: under TCG (which works here) the staged
//! kernel, booted with no root file system, must print one of the lines the probe waits for,
//! so a probe failure under KVM means KVM, not a marker the kernel never prints.

use std::time::Duration;

use axion_tests::require;

#[test]
fn staged_kernel_reaches_the_probe_marker_under_tcg() {
    require!(
        axion_tests::have_qemu(),
        "qemu-system-x86_64 is not installed"
    );
    let kernel = axion_tests::kernel().expect("the staged kernel");
    let line = qemu::kernel_boots(&kernel, qemu::Accel::Tcg, Duration::from_secs(180))
        .unwrap_or_else(|e| panic!("{}: {e}", kernel.display()));
    eprintln!("marker: {line}");
    assert!(
        line.contains("VFS: Unable to mount root")
            || line.contains("Freeing unused kernel")
            || line.contains("Run /init")
            || line.contains("No working init"),
        "{line}"
    );
}
