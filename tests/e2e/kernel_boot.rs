//! The kernel we build boots under QEMU (TCG, direct kernel boot) to a trivial init.
//!
//! The initramfs is a tiny newc cpio written here: /dev/console (the kernel opens it for
//! init's stdio), our static busybox, and an /init script that prints a marker with facts
//! the container host needs (kernel release, overlay and cgroup2 in /proc/filesystems, the
//! number of CPUs) and powers off through reboot(2) (`poweroff -f`). The test asserts the
//! marker on the serial console and that QEMU exits by itself within the timeout.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use axion_tests::{have_qemu, layout, require, run_with_timeout};
use xtask::build::{build_packages, BuildOptions};
use xtask::recipe::RecipeSet;

const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
fs=$(/bin/busybox grep -E -o \
    'overlay|cgroup2|ext4|vfat|iso9660|squashfs|erofs|9p|virtiofs|fuse$' /proc/filesystems \
    | /bin/busybox tr '\n' ,)
cpus=$(/bin/busybox grep -c ^processor /proc/cpuinfo)
/bin/busybox echo "AXION-KERNEL-OK release=$(/bin/busybox uname -r)" \
    "arch=$(/bin/busybox uname -m) cpus=$cpus fs=$fs"
/bin/busybox poweroff -f
"#;

/// A newc ("070701") cpio archive, enough for an initramfs.
#[derive(Default)]
struct Cpio {
    out: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, data: &[u8], rdev: (u32, u32)) {
        self.ino += 1;
        let fields = [
            self.ino,
            mode,
            0,
            0,
            1,
            0,
            data.len() as u32,
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0,
        ];
        self.out.extend_from_slice(b"070701");
        for f in fields {
            self.out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[], (0, 0));
        self.out
    }
}

fn initramfs(busybox: &Path) -> Result<Vec<u8>> {
    let bb =
        std::fs::read(busybox).with_context(|| format!("cannot read {}", busybox.display()))?;
    let mut c = Cpio::default();
    for dir in ["dev", "proc", "sys", "bin"] {
        c.entry(dir, 0o040755, &[], (0, 0));
    }
    c.entry("dev/console", 0o020600, &[], (5, 1));
    c.entry("bin/busybox", 0o100755, &bb, (0, 0));
    c.entry("init", 0o100755, INIT.as_bytes(), (0, 0));
    Ok(c.finish())
}

#[test]
fn built_kernel_boots_to_a_trivial_init_under_tcg() {
    require!(have_qemu(), "qemu-system-x86_64 is not installed");
    let layout = layout();
    let recipes = RecipeSet::load(&layout.recipes()).expect("recipes load");
    // Builds the kernel (about 7.5 min on 2 cores) and busybox when they are not cached yet.
    let staged = build_packages(
        &layout,
        &recipes,
        &["linux".into(), "busybox".into()],
        &BuildOptions::default(),
    )
    .expect("linux and busybox build");
    let tree = |name: &str| {
        staged
            .iter()
            .find(|s| s.name == name)
            .map(|s| s.tree.clone())
            .expect("staged")
    };
    let kernel = tree("linux").join("boot/vmlinuz");
    let busybox = tree("busybox").join("bin/busybox");

    let dir = tempfile::tempdir().unwrap();
    let initrd = dir.path().join("init.cpio");
    std::fs::write(&initrd, initramfs(&busybox).unwrap()).unwrap();

    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args([
        "-accel",
        "tcg",
        "-m",
        "256",
        "-smp",
        "2",
        "-display",
        "none",
        "-monitor",
        "none",
        "-serial",
        "stdio",
        "-no-reboot",
    ])
    .arg("-kernel")
    .arg(&kernel)
    .arg("-initrd")
    .arg(&initrd)
    .args(["-append", "console=ttyS0 panic=-1"]);
    let started = Instant::now();
    let out = run_with_timeout(qemu, Duration::from_secs(240))
        .expect("QEMU powers off by itself within 240 s");
    let console = String::from_utf8_lossy(&out.stdout);
    let marker = console.lines().find(|l| l.contains("AXION-KERNEL-OK"));
    let Some(marker) = marker else {
        panic!(
            "no marker on the serial console ({}); console:\n{console}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    };
    eprintln!(
        "{marker} (QEMU ran {:.1} s)",
        started.elapsed().as_secs_f64()
    );
    assert!(out.status.success(), "QEMU exited with {}", out.status);
    assert!(
        marker.contains("release=6.1.") && marker.contains("-axion"),
        "{marker}"
    );
    assert!(marker.contains("arch=x86_64"), "{marker}");
    assert!(marker.contains("cpus=2"), "SMP: {marker}");
    for fs in [
        "overlay", "cgroup2", "ext4", "vfat", "iso9660", "squashfs", "erofs", "9p", "virtiofs",
    ] {
        assert!(
            marker.contains(fs),
            "{fs} missing from /proc/filesystems: {marker}"
        );
    }
    assert!(
        console.contains("reboot: Power down"),
        "the kernel powered off: {console}"
    );
}
