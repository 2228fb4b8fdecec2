//! FAT images: the disk's EFI system partition and the ISO's El Torito EFI image.
//!
//! Made with mtools (`mformat`, `mmd`, `mcopy`; Debian's, a host tool) rather than the fatfs
//! crate: fatfs 0.3.6, the current release, writes long-file-name entries in front of every
//! directory's `.` and `..` entries, which `fsck.vfat` rejects ("Expected a valid '.' entry in
//! this slot") and firmware need not accept. mtools honours `SOURCE_DATE_EPOCH` for every
//! timestamp, so with a fixed volume id and label the image is bit-identical from run to run
//! (checked by the tests below).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};

/// Volume label of the disk's ESP (the GPT partition label is "axion-esp").
pub const LABEL: &str = "AXION-ESP";

fn mtool(tool: &str, args: &[&str], epoch: u64, home: &Path) -> Result<()> {
    let out = Command::new(tool)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", home)
        .env("MTOOLSRC", "/dev/null")
        .env("MTOOLS_SKIP_CHECK", "1")
        .env("LC_ALL", "C")
        .env("TZ", "UTC")
        .env("SOURCE_DATE_EPOCH", epoch.to_string())
        .args(args)
        .output()
        .with_context(|| {
            format!("cannot run {tool} (Debian package mtools; `cargo xtask doctor`)")
        })?;
    if !out.status.success() {
        bail!(
            "{tool} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Builds a FAT image of `size` bytes holding `files` (paths with `/`; parents created):
/// FAT32 from 64 MiB up (as the UEFI spec asks of a disk's ESP), smaller ones FAT12/16.
pub fn build(
    files: &[(&str, &[u8])],
    size: u64,
    label: &str,
    volume_id: u32,
    epoch: u64,
) -> Result<Vec<u8>> {
    let tmp = tempfile::tempdir().context("cannot make a temporary folder")?;
    let img = tmp.path().join("fat.img");
    let img_s = img
        .to_str()
        .context("temporary path is not UTF-8")?
        .to_owned();
    std::fs::File::create(&img)?.set_len(size)?;
    let vol = format!("{volume_id:08x}");
    let mut fmt = vec!["-i", &img_s, "-N", &vol, "-v", label];
    if size >= 64 * 1024 * 1024 {
        fmt.push("-F");
    }
    fmt.push("::");
    mtool("mformat", &fmt, epoch, tmp.path())?;

    let mut dirs: Vec<String> = Vec::new();
    for (path, _) in files {
        let mut cur = String::new();
        let parts: Vec<&str> = path.split('/').collect();
        for d in &parts[..parts.len() - 1] {
            cur = if cur.is_empty() {
                format!("::/{d}")
            } else {
                format!("{cur}/{d}")
            };
            if !dirs.contains(&cur) {
                dirs.push(cur.clone());
            }
        }
    }
    if !dirs.is_empty() {
        let mut args = vec!["-i", img_s.as_str()];
        args.extend(dirs.iter().map(String::as_str));
        mtool("mmd", &args, epoch, tmp.path())?;
    }
    let t = SystemTime::UNIX_EPOCH + Duration::from_secs(epoch);
    for (i, (path, bytes)) in files.iter().enumerate() {
        let src = tmp.path().join(format!("f{i}"));
        std::fs::write(&src, bytes)?;
        std::fs::File::options()
            .write(true)
            .open(&src)?
            .set_modified(t)?;
        let dest = format!("::/{path}");
        mtool(
            "mcopy",
            &[
                "-m",
                "-i",
                &img_s,
                src.to_str().context("temporary path is not UTF-8")?,
                &dest,
            ],
            epoch,
            tmp.path(),
        )
        .with_context(|| {
            format!(
                "cannot put {path} ({} bytes) on a FAT image of {size} bytes",
                bytes.len()
            )
        })?;
    }
    std::fs::read(&img).with_context(|| format!("cannot read {}", img.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn esp_passes_fsck_and_is_reproducible() {
        if Command::new("mformat").arg("--version").output().is_err() {
            test_skip::skip("mtools is not installed");
            return;
        }
        let kernel = vec![0x5au8; 300_000];
        let files: &[(&str, &[u8])] = &[
            ("EFI/BOOT/BOOTX64.EFI", b"MZ..."),
            ("grub/grub.cfg", b"set timeout=0\n"),
            ("axion/vmlinuz", &kernel),
        ];
        let a = build(files, 64 << 20, LABEL, 0x1234_5678, 1_700_000_000).unwrap();
        std::thread::sleep(Duration::from_millis(1100));
        let b = build(files, 64 << 20, LABEL, 0x1234_5678, 1_700_000_000).unwrap();
        assert!(a == b, "two builds differ");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("esp.img");
        std::fs::write(&path, &a).unwrap();
        let fs = fatfs::FileSystem::new(
            std::fs::File::options()
                .read(true)
                .write(true)
                .open(&path)
                .unwrap(),
            fatfs::FsOptions::new(),
        )
        .unwrap();
        assert_eq!(fs.volume_label(), "AXION-ESP");
        assert_eq!(fs.fat_type(), fatfs::FatType::Fat32);
        let mut v = Vec::new();
        std::io::Read::read_to_end(
            &mut fs.root_dir().open_file("axion/vmlinuz").unwrap(),
            &mut v,
        )
        .unwrap();
        assert_eq!(v, kernel);
        let e = fs
            .root_dir()
            .iter()
            .map(|e| e.unwrap())
            .find(|e| e.file_name() == "grub")
            .unwrap();
        let m = e.modified();
        assert_eq!(
            (
                m.date.year,
                m.date.month,
                m.date.day,
                m.time.hour,
                m.time.min
            ),
            (2023, 11, 14, 22, 13)
        );
        drop(fs);
        match Command::new("fsck.vfat").arg("-n").arg(&path).output() {
            Ok(out) => assert!(
                out.status.success(),
                "fsck.vfat -n: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(_) => test_skip::skip("fsck.vfat (dosfstools) is not installed"),
        }
        // Small images (the ISO's EFI image) work too.
        build(&files[..1], 2 << 20, "AXION-EFI", 1, 1).unwrap();
    }
}
