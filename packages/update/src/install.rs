//! `axion-update install DEVICE [--force] [--from DIR]`: writes the disk image an axion ISO
//! carries (`/axion/disk.raw.zst`, described by `/axion/disk.manifest`) to a whole disk, so a
//! machine booted from the ISO becomes the same machine as one booted from the raw or qcow2
//! image: GPT, BIOS boot partition, ESP with slot A active and a fresh grubenv, an empty
//! `axion-data`. Like flatcar-install, it copies the image and nothing more: partitions and
//! the backup GPT header stay where the image has them, the rest of a larger disk is unused.
//!
//! Part of `axion-update` rather than a program of its own: it writes the layout the agent
//! updates, and the image then needs no other binary.
//!
//! Refusals, before anything is written: DEVICE is not a block device, is a partition, is
//! mounted (or a partition of it is, or is swap, or is held by device mapper/md) — always —
//! or holds a partition named `axion-data` (an installed axion's containers and volumes)
//! unless `--force`. The device is opened with `O_EXCL`, so the kernel refuses it too while
//! anything has it claimed.
//!
//! The write: the first MiB (protective MBR, primary GPT) is zeroed first and written last,
//! so until the very end the disk holds no partition table and cannot boot a half-written
//! image. The image is decompressed as a stream; runs of zeros become BLKZEROOUT (a thin
//! disk does not allocate them); every byte is hashed, and only when the size and sha256
//! match the manifest is the first MiB written and everything fsynced. Then the kernel
//! re-reads the partition table (BLKRRPART).

use std::fs::File;
use std::io::{BufReader, Read};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use disk_manifest::Manifest;
use sha2::{Digest, Sha256};

use crate::blockdev::{self, Disk};

/// Held back until the image is verified: the MBR and the primary GPT live here.
const HEAD: usize = 1024 * 1024;
const MEDIUM: &str = "/run/axion-update/medium";
const MANIFEST: &str = "axion/disk.manifest";

#[derive(Debug)]
struct Options {
    device: PathBuf,
    force: bool,
    from: Option<PathBuf>,
}

const USAGE: &str = "usage: axion-update install DEVICE [--force] [--from DIR]";

fn options(args: &[String]) -> Result<Options> {
    let mut o = Options {
        device: PathBuf::new(),
        force: false,
        from: None,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--force" => o.force = true,
            "--from" => o.from = Some(it.next().context(USAGE)?.into()),
            s if s.starts_with('-') => bail!("unknown flag {s}; {USAGE}"),
            s if o.device.as_os_str().is_empty() => o.device = s.into(),
            s => bail!("unexpected argument {s}; {USAGE}"),
        }
    }
    if o.device.as_os_str().is_empty() {
        bail!("{USAGE}");
    }
    Ok(o)
}

/// `axion-update install ARGS`.
pub fn main(args: &[String]) -> Result<()> {
    let o = options(args)?;
    let disk = Disk::open(&o.device)?;
    refuse_in_use(&disk, o.force)?;
    let medium = match &o.from {
        Some(dir) => Medium::Dir(dir.clone()),
        None => Medium::find(&disk.names())?,
    };
    let root = medium.root();
    let text = read_limited(&root.join(MANIFEST), disk_manifest::MAX_LEN + 1)?;
    let manifest = Manifest::parse(&text)
        .with_context(|| format!("{} is not a valid manifest", root.join(MANIFEST).display()))?;
    let image = root.join("axion").join(&manifest.file);
    let target = File::options()
        .write(true)
        .custom_flags(libc::O_EXCL)
        .open(&o.device)
        .with_context(|| format!("cannot open {} for writing (in use?)", o.device.display()))?;
    let capacity = blockdev::size(&target)?;
    if capacity < manifest.size {
        bail!(
            "{} holds {} MiB; the image needs {} MiB",
            o.device.display(),
            capacity >> 20,
            manifest.size.div_ceil(1 << 20)
        );
    }
    println!(
        "installing axion {} {} ({} MiB) from {} to {}",
        manifest.profile,
        manifest.version,
        manifest.size >> 20,
        image.display(),
        o.device.display()
    );
    let source = File::open(&image).with_context(|| format!("cannot open {}", image.display()))?;
    let target = Target {
        file: target,
        block: true,
    };
    write_image(source, &target, &manifest)?;
    match blockdev::reread_partitions(&target.file) {
        Ok(()) => {}
        Err(e) => eprintln!(
            "axion-update: the kernel did not re-read the partition table of {} ({e}); \
             it will at the next boot",
            o.device.display()
        ),
    }
    println!(
        "installed and verified (sha256 {}): power off, remove the ISO and boot from {}",
        manifest.sha256,
        o.device.display()
    );
    Ok(())
}

/// Mounted, swap, stacked: always refused. An `axion-data` partition: unless `force`.
fn refuse_in_use(disk: &Disk, force: bool) -> Result<()> {
    let used = disk.in_use();
    if !used.is_empty() {
        bail!(
            "{} is in use ({}): not overwritten",
            disk.path.display(),
            used.join(", ")
        );
    }
    if disk.held {
        bail!(
            "{} is held by another device (device mapper, md): not overwritten",
            disk.path.display()
        );
    }
    if let Some((part, _)) = disk.partitions.iter().find(|(_, n)| n == "axion-data") {
        if !force {
            bail!(
                "{} holds an axion-data partition (/dev/{part}: an installed axion's images, \
                 containers and volumes); --force overwrites it",
                disk.path.display()
            );
        }
        eprintln!("axion-update: --force: overwriting the axion-data partition /dev/{part}");
    }
    Ok(())
}

/// At most `limit` bytes of `path` (a longer file is refused by the parser).
fn read_limited(path: &Path, limit: usize) -> Result<Vec<u8>> {
    let f = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut buf = Vec::new();
    f.take(limit as u64)
        .read_to_end(&mut buf)
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(buf)
}

/// Where the image comes from: a folder given with `--from`, or the ISO, found and mounted
/// read-only (unmounted again on drop).
enum Medium {
    Dir(PathBuf),
    Mounted(PathBuf),
}

impl Medium {
    fn root(&self) -> &Path {
        match self {
            Medium::Dir(p) | Medium::Mounted(p) => p,
        }
    }

    /// Tries each CD drive and whole disk but the target (`skip`) as ISO 9660: the first with
    /// `axion/disk.manifest` is the medium. (The hybrid ISO written to a USB stick is a whole
    /// disk holding ISO 9660.)
    fn find(skip: &[String]) -> Result<Medium> {
        let at = Path::new(MEDIUM);
        std::fs::create_dir_all(at)?;
        let mut names: Vec<String> = std::fs::read_dir("/sys/class/block")?
            .flatten()
            .filter(|e| !e.path().join("partition").exists())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !["loop", "ram", "zram"].iter().any(|p| n.starts_with(p)))
            .filter(|n| !skip.contains(n))
            .collect();
        names.sort();
        for n in &names {
            if mount_iso(&Path::new("/dev").join(n), at).is_err() {
                continue;
            }
            if at.join(MANIFEST).is_file() {
                println!("medium: /dev/{n}");
                return Ok(Medium::Mounted(at.to_owned()));
            }
            unmount(at);
        }
        bail!(
            "no axion ISO with a disk image among {} (boot from the ISO, or give --from DIR)",
            if names.is_empty() {
                "no devices".to_owned()
            } else {
                names.join(", ")
            }
        )
    }
}

impl Drop for Medium {
    fn drop(&mut self) {
        if let Medium::Mounted(p) = self {
            unmount(p);
        }
    }
}

fn cstr(p: &Path) -> Result<std::ffi::CString> {
    std::ffi::CString::new(p.to_string_lossy().as_bytes()).context("path with a NUL byte")
}

fn mount_iso(dev: &Path, at: &Path) -> Result<()> {
    let (src, target) = (cstr(dev)?, cstr(at)?);
    let fstype = c"iso9660";
    // SAFETY: NUL-terminated strings that outlive the call; no data.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            libc::MS_RDONLY | libc::MS_NODEV | libc::MS_NOEXEC | libc::MS_NOSUID,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        bail!(
            "mount {}: {}",
            dev.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

fn unmount(at: &Path) {
    if let Ok(c) = cstr(at) {
        // SAFETY: a NUL-terminated path valid for the call.
        unsafe { libc::umount2(c.as_ptr(), 0) };
    }
}

/// Where the image goes: a block device (zeros through BLKZEROOUT) or, in tests, a file.
pub struct Target {
    pub file: File,
    pub block: bool,
}

impl Target {
    fn zero(&self, offset: u64, len: u64) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        if self.block && blockdev::zero_out(&self.file, offset, len).is_ok() {
            return Ok(());
        }
        let zeros = vec![0u8; HEAD];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(HEAD as u64);
            self.file
                .write_all_at(&zeros[..n as usize], offset + done)
                .context("cannot write zeros")?;
            done += n;
        }
        Ok(())
    }
}

/// Reads until `buf` is full or the stream ends; returns how much it read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Decompresses the zstd `source` onto `target` as described at the top: returns once the
/// image, verified against `m`, is written and synced.
pub fn write_image(source: impl Read, target: &Target, m: &Manifest) -> Result<()> {
    let invalid = |e: &dyn std::fmt::Display| anyhow::anyhow!("the image is not valid zstd: {e}");
    let mut z =
        ruzstd::decoding::StreamingDecoder::new(BufReader::new(source)).map_err(|e| invalid(&e))?;
    // No partition table until the image is verified.
    target.zero(0, (HEAD as u64).min(m.size))?;
    target.file.sync_all().context("cannot sync the target")?;
    let mut hash = Sha256::new();
    let mut head = vec![0u8; HEAD];
    let mut chunk = vec![0u8; HEAD];
    let mut offset: u64 = 0;
    // A run of zero chunks not yet written: (start, length).
    let mut zeros: (u64, u64) = (0, 0);
    loop {
        let buf = if offset == 0 { &mut head } else { &mut chunk };
        let n = read_full(&mut z, buf).map_err(|e| invalid(&e))?;
        if n == 0 {
            break;
        }
        if offset + n as u64 > m.size {
            bail!(
                "the image is longer than its manifest's {} bytes: not installed",
                m.size
            );
        }
        let data = &buf[..n];
        hash.update(data);
        if offset == 0 {
            head.truncate(n);
        } else if data.iter().all(|&b| b == 0) {
            if zeros.0 + zeros.1 != offset {
                target.zero(zeros.0, zeros.1)?;
                zeros = (offset, 0);
            }
            zeros.1 += n as u64;
        } else {
            target.zero(zeros.0, zeros.1)?;
            zeros = (0, 0);
            target
                .file
                .write_all_at(data, offset)
                .with_context(|| format!("cannot write at byte {offset}"))?;
        }
        offset += n as u64;
        if offset % (256 << 20) < n as u64 {
            eprintln!("axion-update: {} MiB of {}", offset >> 20, m.size >> 20);
        }
    }
    target.zero(zeros.0, zeros.1)?;
    if offset != m.size {
        bail!(
            "the image ends after {offset} of its manifest's {} bytes (truncated): not installed, \
             the disk holds no partition table",
            m.size
        );
    }
    let got = hex::encode(hash.finalize());
    if got != m.sha256 {
        bail!(
            "the image's sha256 is {got}, its manifest says {}: not installed, the disk holds no \
             partition table",
            m.sha256
        );
    }
    target.file.sync_all().context("cannot sync the target")?;
    target
        .file
        .write_all_at(&head, 0)
        .context("cannot write the partition table")?;
    target.file.sync_all().context("cannot sync the target")?;
    Ok(())
}

#[cfg(test)]
#[path = "install_tests.rs"]
mod tests;
