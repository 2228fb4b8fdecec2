//! Every image format boots to init's ready line in QEMU (TCG):
//! raw and qcow2 under OVMF and SeaBIOS, the ISO as a CD and as a USB stick (a plain disk)
//! under both, the VMDK taken out of the OVA and converted with `qemu-img` under OVMF, and
//! the initramfs by direct kernel boot.
//!
//! A second test shows state on `/var/lib` (the data partition) surviving a reboot.
//! Inputs: see [`inputs`].

use std::path::Path;
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

struct Inputs {
    _tmp: tempfile::TempDir,
    packages: Vec<PackageTree>,
    /// The real init (not the stand-in): it mounts the data partition and runs services.
    real_init: bool,
}

/// The packages the images are made of: `linux`, `busybox` and `init` from the package builds
/// (`build::build_packages`, a no-op when cached; the kernel takes minutes the first time).
/// `AXION_TEST_KERNEL=path/to/vmlinuz` instead boots that kernel with a stand-in init (a
/// script run by the host's static busybox that prints the ready line and powers off), for
/// working on the image formats without building anything.
fn inputs() -> Inputs {
    let tmp = tempfile::tempdir().unwrap();
    if let Some(k) = std::env::var_os("AXION_TEST_KERNEL") {
        eprintln!(
            "note: kernel from AXION_TEST_KERNEL={}, STAND-IN init (busybox script)",
            Path::new(&k).display()
        );
        let t = tmp.path().join("linux");
        std::fs::create_dir_all(t.join("boot")).unwrap();
        std::fs::copy(&k, t.join("boot/vmlinuz"))
            .unwrap_or_else(|e| panic!("AXION_TEST_KERNEL={}: {e}", Path::new(&k).display()));
        let s = tmp.path().join("standin");
        std::fs::create_dir_all(s.join("bin")).unwrap();
        std::fs::create_dir_all(s.join("sbin")).unwrap();
        std::fs::copy("/bin/busybox", s.join("bin/busybox"))
            .expect("the stand-in init needs Debian's busybox-static at /bin/busybox");
        let script = "#!/bin/busybox sh\n\
                      /bin/busybox mount -t proc proc /proc\n\
            /bin/busybox echo \"axion: ready in $(/bin/busybox cut -d' ' -f1 /proc/uptime) s\"\n\
                      /bin/busybox poweroff -f\n";
        std::fs::write(s.join("sbin/init"), script).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(s.join("sbin/init"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        let packages = vec![
            PackageTree {
                name: "linux".into(),
                tree: t,
            },
            PackageTree {
                name: "standin".into(),
                tree: s,
            },
        ];
        return Inputs {
            _tmp: tmp,
            packages,
            real_init: false,
        };
    }
    let layout = xtask::layout::Layout::discover();
    let recipes = xtask::recipe::RecipeSet::load(&layout.recipes()).expect("recipes");
    let names: Vec<String> = ["linux", "busybox", "init"].map(String::from).to_vec();
    let staged = xtask::build::build_packages(&layout, &recipes, &names, &Default::default())
        .expect("build linux, busybox, init");
    for s in &staged {
        eprintln!("note: {} {} from {}", s.name, s.version, s.tree.display());
    }
    let packages = staged
        .into_iter()
        .map(|s| PackageTree {
            name: s.name,
            tree: s.tree,
        })
        .collect();
    Inputs {
        _tmp: tmp,
        packages,
        real_init: true,
    }
}

fn boot(what: &str, config: qemu::VmConfig) {
    eprintln!("booting {what} ...");
    let mut vm = qemu::Vm::spawn(config.no_reboot(true))
        .unwrap_or_else(|e| panic!("{what}: cannot start QEMU: {e}"));
    match vm.wait_ready(BOOT_TIMEOUT) {
        Ok(r) => eprintln!(
            "  {what}: '{}' after {:.1} s on the host",
            r.line.trim(),
            r.host.as_secs_f64()
        ),
        Err(e) => panic!(
            "{what}: no ready line: {e}\nserial tail:\n{}",
            vm.serial_tail().join("\n")
        ),
    }
    let _ = vm.kill();
}

#[test]
fn every_format_boots_to_the_ready_line() {
    axion_tests::require!(
        axion_tests::have_qemu(),
        "qemu-system-x86_64 is not installed"
    );
    let inputs = inputs();
    let out = tempfile::tempdir().unwrap();
    let profile = parse_profile(Path::new("image-profiles/e2e.toml"), PROFILE).unwrap();
    xtask::image::assemble_with(
        &profile,
        &inputs.packages,
        &[],
        &Format::ALL,
        out.path(),
        1_700_000_000,
    )
    .expect("assemble");
    let f = |ext: &str| {
        out.path()
            .join(format!("axion-e2e-{}.{ext}", xtask::image::VERSION))
    };

    // The VMDK as vSphere gets it: out of the OVA, converted by qemu-img.
    let x = out.path().join("ova");
    std::fs::create_dir_all(&x).unwrap();
    let st = Command::new("tar")
        .arg("-xf")
        .arg(f("ova"))
        .arg("-C")
        .arg(&x)
        .status()
        .unwrap();
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
    boot(
        "initramfs (direct kernel boot)",
        vm().kernel(
            f("vmlinuz"),
            Some(f("initrd.zst")),
            "console=ttyS0,115200 panic=-1",
        ),
    );
    boot(
        "raw, OVMF",
        vm().firmware(Firmware::ovmf())
            .drive(Drive::disk(f("raw"), DiskFormat::Raw)),
    );
    boot(
        "raw, SeaBIOS",
        vm().drive(Drive::disk(f("raw"), DiskFormat::Raw)),
    );
    boot(
        "qcow2, OVMF",
        vm().firmware(Firmware::ovmf())
            .drive(Drive::disk(f("qcow2"), DiskFormat::Qcow2)),
    );
    boot(
        "qcow2, SeaBIOS",
        vm().drive(Drive::disk(f("qcow2"), DiskFormat::Qcow2)),
    );
    boot(
        "ISO as CD, OVMF",
        vm().firmware(Firmware::ovmf())
            .drive(Drive::cdrom(f("iso"))),
    );
    boot("ISO as CD, SeaBIOS", vm().drive(Drive::cdrom(f("iso"))));
    boot(
        "ISO as USB stick (disk), OVMF",
        vm().firmware(Firmware::ovmf())
            .drive(Drive::disk(f("iso"), DiskFormat::Raw)),
    );
    boot(
        "ISO as USB stick (disk), SeaBIOS",
        vm().drive(Drive::disk(f("iso"), DiskFormat::Raw)),
    );
    boot(
        "VMDK from the OVA, OVMF",
        vm().firmware(Firmware::ovmf())
            .drive(Drive::disk(&from_ova, DiskFormat::Qcow2)),
    );
}

/// A file written to /var/lib in one boot is there in the next: the data partition of the
/// disk image is found, mounted and kept. Needs the real init (it mounts `axion-data` and runs
/// services) and the built kernel (drivers built in).
#[test]
fn state_on_var_lib_survives_a_reboot() {
    axion_tests::require!(
        axion_tests::have_qemu(),
        "qemu-system-x86_64 is not installed"
    );
    let inputs = inputs();
    axion_tests::require!(
        inputs.real_init,
        "AXION_TEST_KERNEL's stand-in init does not mount /var/lib"
    );
    let tmp = tempfile::tempdir().unwrap();
    // A one-shot service that shows what the last boot left and adds a line.
    let svc = tmp.path().join("overlay/etc/axion/services");
    std::fs::create_dir_all(&svc).unwrap();
    std::fs::write(
        svc.join("e2e-state.toml"),
        "command = \"/bin/busybox\"\n\
         args = [\"sh\", \"-c\", \"echo state: $(cat /var/lib/e2e-state 2>/dev/null || echo none); \
         echo booted >> /var/lib/e2e-state; sync\"]\n\
         restart = \"never\"\n",
    )
    .unwrap();
    let packages = inputs.packages.clone();
    let profile = parse_profile(Path::new("image-profiles/e2e.toml"), PROFILE).unwrap();
    let out = tmp.path().join("out");
    xtask::image::assemble_with(
        &profile,
        &packages,
        &[("e2e".into(), tmp.path().join("overlay"))],
        &[Format::Qcow2],
        &out,
        1_700_000_000,
    )
    .expect("assemble");
    let disk = out.join(format!("axion-e2e-{}.qcow2", xtask::image::VERSION));

    use qemu::{DiskFormat, Drive, Firmware, VmConfig};
    for (boot, expect) in [(1, "state: none"), (2, "state: booted")] {
        let config = VmConfig::new()
            .memory_mib(512)
            .firmware(Firmware::ovmf())
            .drive(Drive::disk(&disk, DiskFormat::Qcow2));
        let mut vm = qemu::Vm::spawn(config)
            .unwrap_or_else(|e| panic!("boot {boot}: cannot start QEMU: {e}"));
        // The service may print before or after init's ready line: wait for both.
        let (mut state, mut ready) = (None::<String>, false);
        let waited = vm.wait_for(
            |l| {
                if l.contains("state: ") && state.is_none() {
                    state = Some(l.to_owned());
                }
                ready |= qemu::parse_ready_line(l).is_some();
                state.is_some() && ready
            },
            "the e2e-state service's line and init's ready line",
            BOOT_TIMEOUT,
        );
        if let Err(e) = waited {
            panic!(
                "boot {boot}: {e}\nserial tail:\n{}",
                vm.serial_tail().join("\n")
            );
        }
        let line = state.expect("seen");
        assert!(
            line.contains(expect),
            "boot {boot}: expected '{expect}', got '{line}'"
        );
        let status = vm
            .powerdown_and_wait(Duration::from_secs(120))
            .unwrap_or_else(|e| panic!("boot {boot}: power button: {e}"));
        eprintln!("boot {boot}: '{}', powered off ({status})", line.trim());
    }
}
