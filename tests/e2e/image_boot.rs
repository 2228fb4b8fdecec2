//! Every image format boots to init's ready line in QEMU (TCG):
//! raw and qcow2 under OVMF and SeaBIOS, the ISO as a CD and as a USB stick (a plain disk)
//! under both, the VMDK taken out of the OVA and converted with `qemu-img` under OVMF, and
//! the initramfs by direct kernel boot.
//!
//! Inputs: the staged trees in `$AXION_CACHE/packages/` (newest `linux-*`, `busybox-*`,
//! `init-*`), or `AXION_TEST_KERNEL=path/to/vmlinuz` for the kernel. Until the init package
//! is built, a stand-in `/sbin/init` (a shell script run by the host's static busybox) prints
//! the ready line and powers off; the test says so. Without a kernel it skips loudly.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use xtask::profile::{parse_profile, Format};
use xtask::rootfs::PackageTree;

const PROFILE: &str = r#"
[profile]
name = "e2e"
description = "end-to-end boot test"
packages = ["linux", "busybox", "init"]
cmdline = "console=ttyS0,115200 panic=-1"
formats = ["initramfs", "raw", "qcow2", "vmdk", "ova", "iso"]
data-size-mib = 64
"#;

const BOOT_TIMEOUT: Duration = Duration::from_secs(240);

/// The newest `$AXION_CACHE/packages/NAME-*/tree` that holds `file`.
fn staged(name: &str, file: &str) -> Option<PathBuf> {
    let dir = xtask::layout::default_cache_dir().join("packages");
    let mut found: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(&format!("{name}-")))
        .map(|e| e.path().join("tree"))
        .filter(|t| t.join(file).exists())
        .filter_map(|t| Some((std::fs::metadata(&t).ok()?.modified().ok()?, t)))
        .collect();
    found.sort();
    found.pop().map(|(_, t)| t)
}

struct Inputs {
    _tmp: tempfile::TempDir,
    packages: Vec<PackageTree>,
    note: Vec<String>,
}

fn inputs() -> Option<Inputs> {
    let tmp = tempfile::tempdir().unwrap();
    let mut note = Vec::new();
    let mut packages = Vec::new();
    let linux = if let Some(k) = std::env::var_os("AXION_TEST_KERNEL") {
        let t = tmp.path().join("linux");
        std::fs::create_dir_all(t.join("boot")).unwrap();
        std::fs::copy(&k, t.join("boot/vmlinuz")).unwrap_or_else(|e| panic!("AXION_TEST_KERNEL={}: {e}", Path::new(&k).display()));
        note.push(format!("kernel from AXION_TEST_KERNEL={}", Path::new(&k).display()));
        t
    } else if let Some(t) = staged("linux", "boot/vmlinuz") {
        note.push(format!("kernel from {}", t.display()));
        t
    } else {
        eprintln!("\n*** skip: because no kernel is built (no $AXION_CACHE/packages/linux-*/tree/boot/vmlinuz; run `cargo xtask build linux` or set AXION_TEST_KERNEL) ***\n");
        return None;
    };
    packages.push(PackageTree { name: "linux".into(), tree: linux });
    match (staged("init", "sbin/init"), staged("busybox", "bin/busybox")) {
        (Some(init), Some(bb)) => {
            note.push(format!("init from {}, busybox from {}", init.display(), bb.display()));
            packages.push(PackageTree { name: "busybox".into(), tree: bb });
            packages.push(PackageTree { name: "init".into(), tree: init });
        }
        _ => {
            let host_bb = Path::new("/bin/busybox");
            if !host_bb.exists() {
                eprintln!("\n*** skip: because neither the init package nor the host's busybox-static is there ***\n");
                return None;
            }
            note.push("STAND-IN init: a busybox script prints the ready line (the init package is not built yet)".into());
            let t = tmp.path().join("standin");
            std::fs::create_dir_all(t.join("bin")).unwrap();
            std::fs::create_dir_all(t.join("sbin")).unwrap();
            std::fs::copy(host_bb, t.join("bin/busybox")).unwrap();
            let script = "#!/bin/busybox sh\n\
                /bin/busybox mount -t proc proc /proc\n\
                /bin/busybox echo \"axion: ready in $(/bin/busybox cut -d' ' -f1 /proc/uptime) s\"\n\
                /bin/busybox poweroff -f\n";
            std::fs::write(t.join("sbin/init"), script).unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(t.join("sbin/init"), std::fs::Permissions::from_mode(0o755)).unwrap();
            packages.push(PackageTree { name: "standin".into(), tree: t });
        }
    }
    Some(Inputs { _tmp: tmp, packages, note })
}

fn boot(what: &str, config: qemu::VmConfig) {
    eprintln!("booting {what} ...");
    let mut vm = qemu::Vm::spawn(config.no_reboot(true)).unwrap_or_else(|e| panic!("{what}: cannot start QEMU: {e}"));
    match vm.wait_ready(BOOT_TIMEOUT) {
        Ok(r) => eprintln!("  {what}: '{}' after {:.1} s on the host", r.line.trim(), r.host.as_secs_f64()),
        Err(e) => panic!("{what}: no ready line: {e}\nserial tail:\n{}", vm.serial_tail().join("\n")),
    }
    let _ = vm.kill();
}

#[test]
fn every_format_boots_to_the_ready_line() {
    let Some(inputs) = inputs() else { return };
    for n in &inputs.note {
        eprintln!("note: {n}");
    }
    let out = tempfile::tempdir().unwrap();
    let profile = parse_profile(Path::new("image-profiles/e2e.toml"), PROFILE).unwrap();
    xtask::image::assemble_with(&profile, &inputs.packages, &[], &Format::ALL, out.path(), 1_700_000_000).expect("assemble");
    let f = |ext: &str| out.path().join(format!("axion-e2e-{}.{ext}", xtask::image::VERSION));

    // The VMDK as vSphere gets it: out of the OVA, converted by qemu-img.
    let x = out.path().join("ova");
    std::fs::create_dir_all(&x).unwrap();
    let st = Command::new("tar").arg("-xf").arg(f("ova")).arg("-C").arg(&x).status().unwrap();
    assert!(st.success());
    let from_ova = out.path().join("from-ova.qcow2");
    let st = Command::new("qemu-img")
        .args(["convert", "-f", "vmdk", "-O", "qcow2"])
        .arg(x.join(format!("axion-e2e-{}.vmdk", xtask::image::VERSION)))
        .arg(&from_ova)
        .status()
        .unwrap();
    assert!(st.success(), "qemu-img convert of the OVA's VMDK failed");

    use qemu::{DiskFormat, Drive, Firmware, VmConfig};
    let vm = || VmConfig::new().memory_mib(512).snapshot(true);
    boot("initramfs (direct kernel boot)", vm().kernel(f("vmlinuz"), Some(f("initrd.zst")), "console=ttyS0,115200 panic=-1"));
    boot("raw, OVMF", vm().firmware(Firmware::ovmf()).drive(Drive::disk(f("raw"), DiskFormat::Raw)));
    boot("raw, SeaBIOS", vm().drive(Drive::disk(f("raw"), DiskFormat::Raw)));
    boot("qcow2, OVMF", vm().firmware(Firmware::ovmf()).drive(Drive::disk(f("qcow2"), DiskFormat::Qcow2)));
    boot("qcow2, SeaBIOS", vm().drive(Drive::disk(f("qcow2"), DiskFormat::Qcow2)));
    boot("ISO as CD, OVMF", vm().firmware(Firmware::ovmf()).drive(Drive::cdrom(f("iso"))));
    boot("ISO as CD, SeaBIOS", vm().drive(Drive::cdrom(f("iso"))));
    boot("ISO as USB stick (disk), OVMF", vm().firmware(Firmware::ovmf()).drive(Drive::disk(f("iso"), DiskFormat::Raw)));
    boot("ISO as USB stick (disk), SeaBIOS", vm().drive(Drive::disk(f("iso"), DiskFormat::Raw)));
    boot("VMDK from the OVA, OVMF", vm().firmware(Firmware::ovmf()).drive(Drive::disk(&from_ova, DiskFormat::Qcow2)));
}
