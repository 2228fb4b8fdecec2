//! The hybrid ISO, made by xorriso (Debian's, the accepted host tool) the way
//! `grub-mkrescue` does it: El Torito for BIOS (GRUB's `i386-pc-eltorito` image) and for UEFI
//! (a small FAT image holding `EFI/BOOT/BOOTX64.EFI`, also exposed as a partition), GRUB's
//! `boot_hybrid.img` in the MBR, so the same file boots from a CD and written to a USB stick.
//! The ISO 9660 tree holds `/grub/grub.cfg`, `/axion/vmlinuz`, `/axion/initrd.zst` and the
//! marker `/axion/medium` the core image searches for, and the profile's own raw disk for
//! `axion-update install`: `/axion/disk.raw.zst` (zstd) and `/axion/disk.manifest` (its size
//! and sha256, see the `disk-manifest` crate), so an install gives exactly the disk of the
//! raw and qcow2 images (GPT, BIOS boot, ESP with slot A and grubenv, an empty axion-data).
//!
//! Reproducible: every staged file's mtime is `SOURCE_DATE_EPOCH`, and xorriso gets it in its
//! environment, which fixes the volume dates, the volume UUID and the GPT GUIDs.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};

/// What goes on the ISO.
pub struct Contents<'a> {
    pub volume_id: &'a str,
    pub grub_cfg: &'a str,
    pub kernel: &'a [u8],
    pub initrd: &'a [u8],
    /// GRUB's El Torito image for BIOS.
    pub eltorito: &'a [u8],
    /// FAT image with EFI/BOOT/BOOTX64.EFI.
    pub efi_img: &'a [u8],
    /// The compressed raw disk and its manifest, for `axion-update install`.
    pub disk: Option<(&'a Path, &'a disk_manifest::Manifest)>,
}

/// zstd level of the carried disk: the kernel and initramfs in it are compressed already,
/// so higher levels gain little; the rest is zeros and an empty ext4.
const DISK_ZSTD_LEVEL: i32 = 3;

/// Compresses the raw disk `raw` to `out` (single-threaded zstd, so the same input gives
/// the same bytes) and returns its manifest.
pub fn compress_disk(
    raw: &Path,
    out: &Path,
    profile: &str,
    version: &str,
) -> Result<disk_manifest::Manifest> {
    let size = std::fs::metadata(raw)
        .with_context(|| format!("cannot read {}", raw.display()))?
        .len();
    let sha256 = super::sha256_file(raw)?;
    let input =
        std::fs::File::open(raw).with_context(|| format!("cannot read {}", raw.display()))?;
    let output = std::fs::File::create_new(out)
        .with_context(|| format!("cannot create {}", out.display()))?;
    let mut w = std::io::BufWriter::new(output);
    zstd::stream::copy_encode(std::io::BufReader::new(input), &mut w, DISK_ZSTD_LEVEL)
        .with_context(|| format!("cannot compress {} to {}", raw.display(), out.display()))?;
    std::io::Write::flush(&mut w)?;
    let file = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(disk_manifest::Manifest {
        profile: profile.to_owned(),
        version: version.to_owned(),
        file,
        size,
        sha256,
    })
}

fn put(root: &Path, rel: &str, bytes: &[u8], t: SystemTime) -> Result<()> {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().expect("has a parent"))?;
    std::fs::write(&p, bytes).with_context(|| format!("cannot write {}", p.display()))?;
    std::fs::File::options()
        .write(true)
        .open(&p)?
        .set_modified(t)?;
    Ok(())
}

/// Writes the ISO to `out` (must not exist).
pub fn write(out: &Path, c: &Contents, epoch: u64) -> Result<()> {
    let tmp = tempfile::tempdir().context("cannot make a temporary folder")?;
    let root = tmp.path().join("iso");
    let t = SystemTime::UNIX_EPOCH + Duration::from_secs(epoch);
    put(&root, "grub/grub.cfg", c.grub_cfg.as_bytes(), t)?;
    put(&root, "axion/vmlinuz", c.kernel, t)?;
    put(&root, super::grub::MARKER, b"axion\n", t)?;
    put(&root, "axion/initrd.zst", c.initrd, t)?;
    put(&root, "boot/eltorito.img", c.eltorito, t)?;
    put(&root, "boot/efi.img", c.efi_img, t)?;
    if let Some((image, manifest)) = c.disk {
        let dest = root.join("axion").join(&manifest.file);
        std::fs::copy(image, &dest)
            .with_context(|| format!("cannot copy {} to {}", image.display(), dest.display()))?;
        std::fs::File::options()
            .write(true)
            .open(&dest)?
            .set_modified(t)?;
        put(
            &root,
            "axion/disk.manifest",
            manifest.render().as_bytes(),
            t,
        )?;
    }
    for d in ["grub", "axion", "boot", ""] {
        std::fs::File::open(root.join(d))?.set_modified(t)?;
    }
    let result = Command::new("xorriso")
        .env("SOURCE_DATE_EPOCH", epoch.to_string())
        .env("HOME", tmp.path()) // no startup files of the user
        .args(["-as", "mkisofs", "-quiet", "-r", "-V"])
        .arg(c.volume_id)
        .arg("-o")
        .arg(out)
        .args([
            "--grub2-mbr",
            "/usr/lib/grub/i386-pc/boot_hybrid.img",
            "--protective-msdos-label",
        ])
        .args([
            "-b",
            "boot/eltorito.img",
            "-no-emul-boot",
            "-boot-load-size",
            "4",
            "-boot-info-table",
            "--grub2-boot-info",
        ])
        .args([
            "--efi-boot",
            "boot/efi.img",
            "-efi-boot-part",
            "--efi-boot-image",
        ])
        .args(["--sort-weight", "0", "/", "--sort-weight", "1", "/boot"])
        .arg(&root)
        .output()
        .context("cannot run xorriso (Debian package xorriso; `cargo xtask doctor`)")?;
    if !result.status.success() {
        bail!(
            "xorriso failed making {}: {}",
            out.display(),
            String::from_utf8_lossy(&result.stderr).trim()
        );
    }
    Ok(())
}

/// xorriso's El Torito report of an ISO (`-report_el_torito plain`).
pub fn el_torito_report(iso: &Path) -> Result<String> {
    let out = Command::new("xorriso")
        .args(["-indev"])
        .arg(iso)
        .args(["-report_el_torito", "plain"])
        .output()
        .context("cannot run xorriso")?;
    if !out.status.success() {
        bail!(
            "xorriso -indev {} -report_el_torito: {}",
            iso.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
