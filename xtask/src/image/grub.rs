//! The boot loader: GRUB 2 from Debian for both firmwares, one `grub.cfg`.
//!
//! `grub-mkimage` (the accepted host tool) builds self-contained core images with every module
//! built in (no module folder on the ESP) and a small embedded config that finds the boot
//! medium by a file only axion media carry, `/axion/vmlinuz`, then reads `/grub/grub.cfg`
//! there:
//! - UEFI: `EFI/BOOT/BOOTX64.EFI` on the ESP (disk) or in the El Torito EFI image (ISO);
//! - BIOS disk: `core.img` in the GPT "BIOS boot" partition, reached from `boot.img` in the
//!   protective MBR, patched the way `grub-bios-setup` does (see [`mbr_boot_code`],
//!   [`patch_core_blocklist`]);
//! - BIOS CD: `eltorito.img` (`i386-pc-eltorito`), also used by the hybrid MBR of the ISO.
//!
//! `grub-mkimage` output was checked to be deterministic (two runs give the same bytes; the
//! PE header carries no timestamp), so no patching is needed for reproducibility.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

const GRUB_LIB: &str = "/usr/lib/grub";

const COMMON_MODULES: &[&str] = &[
    "part_gpt",
    "part_msdos",
    "fat",
    "iso9660",
    "normal",
    "linux",
    "configfile",
    "search",
    "search_fs_file",
    "echo",
    "serial",
    "terminal",
    "test",
    "sleep",
];

/// The config built into every core image.
pub const EARLY_CFG: &str =
    "search --no-floppy --file --set=root /axion/vmlinuz\nset prefix=($root)/grub\n";

/// The one `grub.cfg` for every medium and firmware.
pub fn config(title: &str, cmdline: &str) -> String {
    format!(
        "set timeout=0\nset default=0\n\
         serial --unit=0 --speed=115200\n\
         terminal_input serial console\n\
         terminal_output serial console\n\
         menuentry '{title}' {{\n    linux /axion/vmlinuz {cmdline}\n    initrd \
         /axion/initrd.zst\n}}\n"
    )
}

#[derive(Debug, Clone, Copy)]
pub enum Target {
    /// `BOOTX64.EFI`.
    Efi,
    /// `core.img` for the BIOS boot partition.
    BiosDisk,
    /// `eltorito.img` for a CD.
    BiosCd,
}

/// Runs `grub-mkimage` and returns the image.
pub fn mkimage(target: Target) -> Result<Vec<u8>> {
    let (format, dir, extra): (&str, &str, &[&str]) = match target {
        Target::Efi => ("x86_64-efi", "x86_64-efi", &["efi_gop", "all_video"]),
        Target::BiosDisk => ("i386-pc", "i386-pc", &["biosdisk"]),
        Target::BiosCd => ("i386-pc-eltorito", "i386-pc", &["biosdisk"]),
    };
    let tmp = tempfile::tempdir().context("cannot make a temporary folder")?;
    let cfg = tmp.path().join("early.cfg");
    std::fs::write(&cfg, EARLY_CFG).with_context(|| format!("cannot write {}", cfg.display()))?;
    let out = tmp.path().join("image");
    let moddir = Path::new(GRUB_LIB).join(dir);
    let result = Command::new("grub-mkimage")
        .arg("-O")
        .arg(format)
        .arg("-d")
        .arg(&moddir)
        .arg("-o")
        .arg(&out)
        .arg("-p")
        .arg("/grub")
        .arg("-c")
        .arg(&cfg)
        .args(COMMON_MODULES)
        .args(extra)
        .output()
        .context("cannot run grub-mkimage (Debian package grub-common; `cargo xtask doctor`)")?;
    if !result.status.success() {
        bail!(
            "grub-mkimage -O {format} -d {} failed: {}",
            moddir.display(),
            String::from_utf8_lossy(&result.stderr).trim()
        );
    }
    std::fs::read(&out).with_context(|| format!("cannot read {}", out.display()))
}

// Offsets in boot.img, from grub's include/grub/i386/pc/boot.h.
const KERNEL_SECTOR: usize = 0x5c;
const BOOT_DRIVE: usize = 0x64;
const DRIVE_CHECK: usize = 0x66;
// The first blocklist entry of diskboot.img ends the first sector of core.img:
// { start: u64, len: u16, segment: u16 } at 0x200 - 12 (grub's diskboot.S, firstlist).
const BLOCKLIST: usize = 0x200 - 12;

/// The first 440 bytes of the MBR: grub's `boot.img`, told that core.img starts at `core_lba`,
/// patched as `grub-bios-setup` does for a hard disk (boot drive 0xff = use the BIOS's,
/// the floppy check jump replaced by NOPs).
pub fn mbr_boot_code(core_lba: u64) -> Result<[u8; 440]> {
    let path = Path::new(GRUB_LIB).join("i386-pc/boot.img");
    let img = std::fs::read(&path).with_context(|| {
        format!(
            "cannot read {} (Debian package grub-pc-bin)",
            path.display()
        )
    })?;
    if img.len() != 512 {
        bail!(
            "{}: expected 512 bytes, found {}",
            path.display(),
            img.len()
        );
    }
    let mut code = [0u8; 440];
    code.copy_from_slice(&img[..440]);
    code[KERNEL_SECTOR..KERNEL_SECTOR + 8].copy_from_slice(&core_lba.to_le_bytes());
    code[BOOT_DRIVE] = 0xff;
    code[DRIVE_CHECK] = 0x90;
    code[DRIVE_CHECK + 1] = 0x90;
    Ok(code)
}

/// Points diskboot (the first sector of core.img) at the rest of core.img, which lies
/// contiguously right after it from `core_lba + 1`.
pub fn patch_core_blocklist(core: &mut [u8], core_lba: u64) -> Result<()> {
    let sectors = core.len().div_ceil(512) as u64;
    if core.len() < 512 || sectors < 2 {
        bail!("core.img is too small ({} bytes)", core.len());
    }
    let segment = u16::from_le_bytes([core[BLOCKLIST + 10], core[BLOCKLIST + 11]]);
    if segment != 0x820 {
        bail!(
            "core.img does not look like grub's diskboot (blocklist segment {segment:#x}, \
             expected 0x820)"
        );
    }
    core[BLOCKLIST..BLOCKLIST + 8].copy_from_slice(&(core_lba + 1).to_le_bytes());
    core[BLOCKLIST + 8..BLOCKLIST + 10].copy_from_slice(&((sectors - 1) as u16).to_le_bytes());
    // The entry before it (lists grow downwards) terminates the list.
    core[BLOCKLIST - 12..BLOCKLIST].fill(0);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn have_grub() -> bool {
        let ok = Path::new(GRUB_LIB).join("i386-pc/boot.img").exists()
            && Path::new(GRUB_LIB).join("x86_64-efi/linux.mod").exists();
        if !ok {
            test_skip::skip("grub-pc-bin / grub-efi-amd64-bin are not installed");
        }
        ok
    }

    #[test]
    fn core_images_are_deterministic_and_patchable() {
        if !have_grub() {
            return;
        }
        let a = mkimage(Target::BiosDisk).unwrap();
        let b = mkimage(Target::BiosDisk).unwrap();
        assert_eq!(a, b, "grub-mkimage must be deterministic");
        assert!(
            a.len() < 1024 * 1024 - 512,
            "core.img must fit the 1 MiB BIOS boot partition"
        );
        let mut core = a.clone();
        patch_core_blocklist(&mut core, 2048).unwrap();
        assert_eq!(
            u64::from_le_bytes(core[0x1f4..0x1fc].try_into().unwrap()),
            2049
        );
        assert_eq!(
            u16::from_le_bytes(core[0x1fc..0x1fe].try_into().unwrap()) as usize,
            a.len().div_ceil(512) - 1
        );
        let mbr = mbr_boot_code(2048).unwrap();
        assert_eq!(
            u64::from_le_bytes(mbr[0x5c..0x64].try_into().unwrap()),
            2048
        );
        let efi = mkimage(Target::Efi).unwrap();
        assert_eq!(&efi[..2], b"MZ");
        assert_eq!(efi, mkimage(Target::Efi).unwrap());
    }
}
