//! Every format through its real checker, and two assemblies at different times into
//! different folders giving identical bytes. Uses hand-made staged trees and a stand-in
//! kernel (booting is the end-to-end tests' job, in tests/).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::*;
use crate::profile::parse_profile;

const PROFILE: &str = r#"
[profile]
name = "unit"
description = "unit test <profile> & co"
packages = ["linux", "busybox"]
overlays = ["base"]
cmdline = "console=ttyS0,115200 panic=-1"
formats = ["initramfs", "raw", "qcow2", "vmdk", "ova", "iso"]
data-size-mib = 32

[hardware]
cpus = 3
memory-mib = 1536
firmware = "efi"
nic = "vmxnet3"
disk-controller = "pvscsi"
vmware-hardware-version = 14
"#;

fn host_has(tools: &[&'static str]) -> bool {
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| {
            !crate::doctor::is_present(&crate::doctor::Requirement {
                probe: t,
                package: "",
                why: "",
            })
        })
        .collect();
    if !missing.is_empty() {
        test_skip::skip(format_args!("the host lacks {}", missing.join(", ")));
    }
    missing.is_empty()
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

struct Fixture {
    _dir: tempfile::TempDir,
    packages: Vec<PackageTree>,
    overlays: Vec<(String, PathBuf)>,
    profile: Profile,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let linux = dir.path().join("linux");
    std::fs::create_dir_all(linux.join("boot")).unwrap();
    // A stand-in kernel: big enough to span many clusters, not all zero, compressible.
    let kernel: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i % 251) as u8 ^ (i >> 12) as u8)
        .collect();
    std::fs::write(linux.join("boot/vmlinuz"), kernel).unwrap();
    let bb = crate::rootfs::tests::fake_package(dir.path(), "busybox");
    std::fs::remove_dir_all(bb.tree.join("boot")).unwrap();
    let ov = dir.path().join("overlays/base/etc");
    std::fs::create_dir_all(&ov).unwrap();
    std::fs::write(ov.join("hostname"), "axion\n").unwrap();
    let profile = parse_profile(Path::new("image-profiles/unit.toml"), PROFILE).unwrap();
    Fixture {
        packages: vec![
            PackageTree {
                name: "linux".into(),
                tree: linux,
            },
            bb,
        ],
        overlays: vec![("base".into(), dir.path().join("overlays/base"))],
        profile,
        _dir: dir,
    }
}

fn partition(raw: &Path, label: &str) -> (u64, u64) {
    let disk = gpt::GptConfig::new().writable(false).open(raw).unwrap();
    let p = disk
        .partitions()
        .values()
        .find(|p| p.name == label)
        .unwrap_or_else(|| panic!("no partition {label}"));
    (p.first_lba * 512, (p.last_lba - p.first_lba + 1) * 512)
}

fn extract(raw: &Path, label: &str, to: &Path) {
    let (off, len) = partition(raw, label);
    let mut f = File::open(raw).unwrap();
    std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(off)).unwrap();
    let mut out = File::create(to).unwrap();
    std::io::copy(&mut f.take(len), &mut out).unwrap();
}

#[test]
fn every_format_passes_its_checker_and_is_reproducible() {
    if !host_has(&[
        "grub-mkimage",
        "mke2fs",
        "mformat",
        "xorriso",
        "qemu-img",
        "fsck.vfat",
        "e2fsck",
    ]) {
        return;
    }
    let fx = fixture();
    let out_a = tempfile::tempdir().unwrap();
    let out_b = tempfile::tempdir().unwrap();
    let epoch = 1_700_000_000;
    let written = assemble_with(
        &fx.profile,
        &fx.packages,
        &fx.overlays,
        &Format::ALL,
        out_a.path(),
        epoch,
    )
    .unwrap();
    let names: Vec<String> = written
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    let base = format!("axion-unit-{VERSION}");
    for ext in [
        "vmlinuz",
        "initrd.zst",
        "raw",
        "qcow2",
        "vmdk",
        "ova",
        "iso",
    ] {
        assert!(
            names.contains(&format!("{base}.{ext}")),
            "{ext} missing from {names:?}"
        );
    }
    assert_eq!(names.last().map(String::as_str), Some("SHA256SUMS"));
    // No work folder or temporary file is left behind.
    let left: Vec<_> = std::fs::read_dir(out_a.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().starts_with('.'))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");

    let a = |ext: &str| out_a.path().join(format!("{base}.{ext}"));
    let raw = a("raw");

    // GPT read back; protective MBR with patched boot.img and the partition table.
    let disk = gpt::GptConfig::new().writable(false).open(&raw).unwrap();
    let parts: Vec<(String, String)> = disk
        .partitions()
        .values()
        .map(|p| {
            (
                p.name.clone(),
                p.part_type_guid.guid.to_string().to_uppercase(),
            )
        })
        .collect();
    assert_eq!(
        parts,
        [
            (
                "bios-boot".to_string(),
                "21686148-6449-6E6F-744E-656564454649".to_string()
            ),
            (
                "axion-esp".into(),
                "C12A7328-F81F-11D2-BA4B-00A0C93EC93B".into()
            ),
            (
                "axion-data".into(),
                "0FC63DAF-8483-4772-8E79-3D69D8477DE4".into()
            )
        ]
    );
    assert_eq!(*disk.guid(), derive_uuid("unit", "disk"));
    let mut mbr = [0u8; 512];
    File::open(&raw).unwrap().read_exact(&mut mbr).unwrap();
    assert_eq!(
        &mbr[..440],
        &grub::mbr_boot_code(disk::BIOS_BOOT_LBA).unwrap()[..]
    );
    assert_eq!(
        (mbr[510], mbr[511], mbr[0x1be + 4]),
        (0x55, 0xaa, 0xee),
        "protective MBR"
    );
    if host_has(&["sgdisk"]) {
        let v = run(Command::new("sgdisk").arg("-v").arg(&raw));
        assert!(v.contains("No problems found"), "{v}");
    }

    // ESP and data partition through fsck.
    let esp = out_a.path().join("esp.img");
    extract(&raw, "axion-esp", &esp);
    run(Command::new("fsck.vfat").arg("-n").arg(&esp));
    let fat = fatfs::FileSystem::new(
        File::options().read(true).write(true).open(&esp).unwrap(),
        fatfs::FsOptions::new(),
    )
    .unwrap();
    let mut cfg = String::new();
    fat.root_dir()
        .open_file("grub/grub.cfg")
        .unwrap()
        .read_to_string(&mut cfg)
        .unwrap();
    assert!(
        cfg.contains("linux /axion/$axion_slot/vmlinuz console=ttyS0,115200 panic=-1")
            && cfg.contains("axion.slot=$axion_slot")
            && cfg.contains("initrd /axion/$axion_slot/initrd.zst"),
        "{cfg}"
    );
    // A fresh disk: slot A active and holding this build, B empty, nothing to try.
    let mut env = Vec::new();
    fat.root_dir()
        .open_file("grub/grubenv")
        .unwrap()
        .read_to_end(&mut env)
        .unwrap();
    assert_eq!(env.len(), grub::GRUBENV_SIZE);
    let env = String::from_utf8(env).unwrap();
    assert!(
        env.starts_with(&format!(
            "{}axion_active=A\naxion_try=0\n",
            grub::GRUBENV_HEADER
        )),
        "{env}"
    );
    assert!(fat.root_dir().open_dir("axion/B").is_err());
    assert!(fat.root_dir().open_file(grub::MARKER).is_ok());
    let mut initrd = Vec::new();
    fat.root_dir()
        .open_file("axion/A/initrd.zst")
        .unwrap()
        .read_to_end(&mut initrd)
        .unwrap();
    assert_eq!(initrd, std::fs::read(a("initrd.zst")).unwrap());
    drop(fat);
    std::fs::remove_file(&esp).unwrap();
    let data = out_a.path().join("data.ext4");
    extract(&raw, "axion-data", &data);
    run(Command::new("e2fsck").args(["-f", "-n"]).arg(&data));
    std::fs::remove_file(&data).unwrap();

    // The initramfs holds the root filesystem.
    let cpio = initramfs::parse_cpio(&zstd::decode_all(&initrd[..]).unwrap()).unwrap();
    assert!(cpio
        .iter()
        .any(|e| e.name == "etc/hostname" && e.data == b"axion\n"));
    assert!(cpio.iter().any(|e| e.name == "bin/busybox"));
    assert!(!cpio.iter().any(|e| e.name.starts_with("boot")));

    // qcow2 and VMDK: clean, and the same disk as the raw.
    for (ext, fmt) in [("qcow2", "qcow2"), ("vmdk", "vmdk")] {
        run(Command::new("qemu-img")
            .args(["check", "-f", fmt])
            .arg(a(ext)));
        let cmp = run(Command::new("qemu-img")
            .args(["compare", "-f", "raw", "-F", fmt])
            .arg(&raw)
            .arg(a(ext)));
        assert!(cmp.contains("Images are identical"), "{ext}: {cmp}");
    }
    let info = run(Command::new("qemu-img")
        .args(["info", "-f", "vmdk"])
        .arg(a("vmdk")));
    assert!(info.contains("streamOptimized"), "{info}");

    // OVA: OVF first, then the disk, then a manifest whose hashes hold; the OVF parses.
    let mut ar = tar::Archive::new(File::open(a("ova")).unwrap());
    let mut members: Vec<(String, Vec<u8>)> = Vec::new();
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        assert_eq!(
            (e.header().uid().unwrap(), e.header().mtime().unwrap()),
            (0, epoch)
        );
        let name = e.path().unwrap().to_string_lossy().into_owned();
        let mut v = Vec::new();
        e.read_to_end(&mut v).unwrap();
        members.push((name, v));
    }
    let order: Vec<&str> = members.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        order,
        [
            format!("{base}.ovf"),
            format!("{base}.vmdk"),
            format!("{base}.mf")
        ]
    );
    assert_eq!(members[1].1, std::fs::read(a("vmdk")).unwrap());
    let mf = String::from_utf8(members[2].1.clone()).unwrap();
    for (name, bytes) in &members[..2] {
        let line = format!("SHA256({name})= {}", hex::encode(Sha256::digest(bytes)));
        assert!(
            mf.lines().any(|l| l == line),
            "manifest lacks {line}:\n{mf}"
        );
    }
    let ovf_text = String::from_utf8(members[0].1.clone()).unwrap();
    let doc = roxmltree::Document::parse(&ovf_text).unwrap();
    let ovf_ns = "http://schemas.dmtf.org/ovf/envelope/1";
    let rasd =
        "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData";
    let file = doc
        .descendants()
        .find(|n| n.has_tag_name((ovf_ns, "File")))
        .unwrap();
    assert_eq!(
        file.attribute((ovf_ns, "size"))
            .unwrap()
            .parse::<usize>()
            .unwrap(),
        members[1].1.len()
    );
    let disk_el = doc
        .descendants()
        .find(|n| n.has_tag_name((ovf_ns, "Disk")))
        .unwrap();
    assert_eq!(
        disk_el
            .attribute((ovf_ns, "capacity"))
            .unwrap()
            .parse::<u64>()
            .unwrap(),
        std::fs::metadata(&raw).unwrap().len()
    );
    let text_of = |tag: &str| {
        doc.descendants()
            .filter(|n| n.has_tag_name((rasd, tag)))
            .map(|n| n.text().unwrap_or("").to_owned())
            .collect::<Vec<_>>()
    };
    assert!(text_of("ResourceSubType").contains(&"VirtualSCSI".to_string()));
    assert!(text_of("ResourceSubType").contains(&"VmxNet3".to_string()));
    assert!(
        text_of("VirtualQuantity").contains(&"3".to_string())
            && text_of("VirtualQuantity").contains(&"1536".to_string())
    );
    assert!(ovf_text.contains("<vssd:VirtualSystemType>vmx-14</vssd:VirtualSystemType>"));
    assert!(ovf_text.contains(r#"vmw:key="firmware" vmw:value="efi""#));
    assert!(ovf_text.contains("unit test &lt;profile&gt; &amp; co"));
    // First-boot settings: the ISO transport, a CD-ROM for it, and the OVF properties that
    // init's ovfenv reads, all user-configurable.
    let hw = doc
        .descendants()
        .find(|n| n.has_tag_name((ovf_ns, "VirtualHardwareSection")))
        .unwrap();
    assert_eq!(hw.attribute((ovf_ns, "transport")), Some("iso"));
    assert!(
        text_of("ResourceType").contains(&"15".to_string()),
        "a CD-ROM drive"
    );
    let product = doc
        .descendants()
        .find(|n| n.has_tag_name((ovf_ns, "ProductSection")))
        .unwrap();
    let child = |tag: &str| {
        product
            .children()
            .find(|n| n.has_tag_name((ovf_ns, tag)))
            .and_then(|n| n.text())
            .unwrap_or("")
            .to_owned()
    };
    assert_eq!(child("Product"), "axion");
    assert_eq!(child("Vendor"), "axion");
    assert!(!child("Version").is_empty() && child("ProductUrl").starts_with("https://"));
    let props: Vec<(String, String)> = product
        .children()
        .filter(|n| n.has_tag_name((ovf_ns, "Property")))
        .map(|n| {
            (
                n.attribute((ovf_ns, "key")).unwrap().to_owned(),
                n.attribute((ovf_ns, "userConfigurable"))
                    .unwrap()
                    .to_owned(),
            )
        })
        .collect();
    for key in [
        "hostname",
        "instance-id",
        "ssh-key",
        "ip",
        "netmask",
        "gateway",
        "dns",
        "user-data",
    ] {
        assert!(
            props.contains(&(key.to_string(), "true".to_string())),
            "property {key} missing: {props:?}"
        );
    }

    // ISO: El Torito for BIOS and UEFI.
    let report = iso::el_torito_report(&a("iso")).unwrap();
    assert!(
        report
            .lines()
            .any(|l| l.contains("El Torito boot img") && l.contains("BIOS")),
        "{report}"
    );
    assert!(
        report
            .lines()
            .any(|l| l.contains("El Torito boot img") && l.contains("UEFI")),
        "{report}"
    );

    // ISO: the raw disk for `axion-update install`, and a manifest naming its sha256.
    let from_iso = tempfile::tempdir().unwrap();
    for f in ["disk.manifest", "disk.raw.zst"] {
        run(Command::new("xorriso")
            .args(["-osirrox", "on", "-indev"])
            .arg(a("iso"))
            .args(["-extract", &format!("/axion/{f}")])
            .arg(from_iso.path().join(f)));
    }
    let text = std::fs::read(from_iso.path().join("disk.manifest")).unwrap();
    let m = disk_manifest::Manifest::parse(&text).unwrap();
    assert_eq!(
        (m.profile.as_str(), m.file.as_str()),
        ("unit", "disk.raw.zst")
    );
    assert_eq!(m.size, std::fs::metadata(&raw).unwrap().len());
    assert_eq!(m.sha256, sha256_file(&raw).unwrap());
    let z = File::open(from_iso.path().join("disk.raw.zst")).unwrap();
    let unpacked = zstd::stream::decode_all(z).unwrap();
    assert_eq!(unpacked.len() as u64, m.size);
    assert_eq!(hex::encode(Sha256::digest(&unpacked)), m.sha256);

    // Reproducible: a second assembly, later, elsewhere, gives the same bytes.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assemble_with(
        &fx.profile,
        &fx.packages,
        &fx.overlays,
        &Format::ALL,
        out_b.path(),
        epoch,
    )
    .unwrap();
    let sums_a = std::fs::read_to_string(out_a.path().join("SHA256SUMS")).unwrap();
    let sums_b = std::fs::read_to_string(out_b.path().join("SHA256SUMS")).unwrap();
    assert_eq!(sums_a.lines().count(), 7, "{sums_a}");
    assert_eq!(sums_a, sums_b);
    for line in sums_a.lines() {
        let (h, n) = line.split_once("  ").unwrap();
        assert_eq!(sha256_file(&out_a.path().join(n)).unwrap(), h, "{n}");
    }
}

#[test]
fn sha256sums_keeps_other_formats_and_drops_vanished_files() {
    let fx = fixture();
    let out = tempfile::tempdir().unwrap();
    std::fs::write(
        out.path().join("SHA256SUMS"),
        "00  gone.raw\n11  kept.txt\n",
    )
    .unwrap();
    std::fs::write(out.path().join("kept.txt"), "x").unwrap();
    assemble_with(
        &fx.profile,
        &fx.packages,
        &fx.overlays,
        &[Format::Initramfs],
        out.path(),
        1,
    )
    .unwrap();
    let sums = std::fs::read_to_string(out.path().join("SHA256SUMS")).unwrap();
    assert!(
        sums.contains("11  kept.txt") && !sums.contains("gone.raw") && sums.contains(".initrd.zst"),
        "{sums}"
    );
}

#[test]
fn a_profile_without_a_kernel_is_a_clear_error() {
    let fx = fixture();
    let out = tempfile::tempdir().unwrap();
    let e = assemble_with(
        &fx.profile,
        &fx.packages[1..],
        &fx.overlays,
        &[Format::Initramfs],
        out.path(),
        1,
    )
    .unwrap_err();
    assert!(format!("{e:#}").contains("/boot/vmlinuz"), "{e:#}");
}

#[test]
fn derived_ids_are_stable_and_distinct() {
    assert_eq!(derive_uuid("qemu", "disk"), derive_uuid("qemu", "disk"));
    assert_ne!(derive_uuid("qemu", "disk"), derive_uuid("vsphere", "disk"));
    assert_eq!(derive_uuid("qemu", "disk").get_version_num(), 4);
    assert_eq!(esp_size(10 * MIB), 64 * MIB);
    assert_eq!(esp_size(100 * MIB), 144 * MIB);
}
