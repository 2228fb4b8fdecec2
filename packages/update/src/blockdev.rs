//! The target disk of `axion-update install`: what the kernel says about it (sysfs, the
//! mount table) and the block-device ioctls the write needs.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

// <linux/fs.h>: _IO(0x12, 95), _IOR(0x12, 114, u64), _IO(0x12, 127).
const BLKRRPART: libc::c_ulong = 0x125f;
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
const BLKZEROOUT: libc::c_ulong = 0x127f;

/// A whole disk as sysfs shows it, with its partitions.
#[derive(Debug)]
pub struct Disk {
    /// `/dev/NAME` as given.
    pub path: PathBuf,
    /// The kernel's name (`vdb`).
    pub name: String,
    /// `MAJ:MIN` of the disk and of each partition.
    pub devs: Vec<String>,
    /// `(kernel name, GPT name)` of each partition.
    pub partitions: Vec<(String, String)>,
    /// Something (device mapper, md) is stacked on it or on one of its partitions.
    pub held: bool,
}

fn maj_min(rdev: u64) -> String {
    // glibc's gnu_dev_major/minor.
    let major = ((rdev >> 8) & 0xfff) | ((rdev >> 32) & 0xffff_f000);
    let minor = (rdev & 0xff) | ((rdev >> 12) & 0xffff_ff00);
    format!("{major}:{minor}")
}

fn has_holders(sys: &Path) -> bool {
    std::fs::read_dir(sys.join("holders")).is_ok_and(|mut d| d.next().is_some())
}

impl Disk {
    /// Looks `path` up: it must be a whole disk (not a partition).
    pub fn open(path: &Path) -> Result<Disk> {
        let meta = std::fs::metadata(path).with_context(|| format!("no {}", path.display()))?;
        if !meta.file_type().is_block_device() {
            bail!("{} is not a block device", path.display());
        }
        let dev = maj_min(meta.rdev());
        let sys = std::fs::canonicalize(format!("/sys/dev/block/{dev}"))
            .with_context(|| format!("the kernel does not list {} ({dev})", path.display()))?;
        if sys.join("partition").exists() {
            bail!(
                "{} is a partition: give the whole disk (axion installs a partition table)",
                path.display()
            );
        }
        let name = sys
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut disk = Disk {
            path: path.to_owned(),
            name,
            devs: vec![dev],
            partitions: Vec::new(),
            held: has_holders(&sys),
        };
        let mut entries: Vec<PathBuf> = std::fs::read_dir(&sys)?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.join("partition").exists())
            .collect();
        entries.sort();
        for p in entries {
            let uevent = std::fs::read_to_string(p.join("uevent")).unwrap_or_default();
            let field = |k: &str| {
                uevent
                    .lines()
                    .find_map(|l| l.strip_prefix(k))
                    .unwrap_or("")
                    .to_owned()
            };
            if let Ok(d) = std::fs::read_to_string(p.join("dev")) {
                disk.devs.push(d.trim().to_owned());
            }
            disk.held |= has_holders(&p);
            disk.partitions
                .push((field("DEVNAME="), field("PARTNAME=")));
        }
        Ok(disk)
    }

    /// The mount points (from `/proc/self/mountinfo`) on this disk or its partitions, and
    /// its partitions in use as swap.
    pub fn in_use(&self) -> Vec<String> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut used: Vec<String> = mountinfo
            .lines()
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                let dev = f.nth(2)?;
                let at = f.nth(1)?;
                self.devs.iter().any(|d| d == dev).then(|| at.to_owned())
            })
            .collect();
        let swaps = std::fs::read_to_string("/proc/swaps").unwrap_or_default();
        let mut names = vec![self.name.clone()];
        names.extend(self.partitions.iter().map(|(n, _)| n.clone()));
        for l in swaps.lines().skip(1) {
            let Some(dev) = l.split_whitespace().next() else {
                continue;
            };
            if names.iter().any(|n| dev == format!("/dev/{n}")) {
                used.push(format!("swap ({dev})"));
            }
        }
        used
    }

    /// The kernel names of this disk and its partitions.
    pub fn names(&self) -> Vec<String> {
        let mut n = vec![self.name.clone()];
        n.extend(self.partitions.iter().map(|(p, _)| p.clone()));
        n
    }
}

/// The size in bytes of the block device open as `f`.
pub fn size(f: &File) -> Result<u64> {
    let mut bytes: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which is valid for the call.
    let rc = unsafe { libc::ioctl(f.as_raw_fd(), BLKGETSIZE64 as _, &mut bytes as *mut u64) };
    if rc != 0 {
        bail!("BLKGETSIZE64: {}", std::io::Error::last_os_error());
    }
    Ok(bytes)
}

/// Zeroes `len` bytes at `offset` (BLKZEROOUT: the device, or the kernel for it, writes the
/// zeros, so a thin disk such as a qcow2 need not allocate them).
pub fn zero_out(f: &File, offset: u64, len: u64) -> std::io::Result<()> {
    let range: [u64; 2] = [offset, len];
    // SAFETY: BLKZEROOUT reads two u64 (start, length) through the pointer, valid for the call.
    let rc = unsafe { libc::ioctl(f.as_raw_fd(), BLKZEROOUT as _, range.as_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Asks the kernel to read the partition table again (BLKRRPART).
pub fn reread_partitions(f: &File) -> std::io::Result<()> {
    // SAFETY: BLKRRPART takes no argument.
    let rc = unsafe { libc::ioctl(f.as_raw_fd(), BLKRRPART as _, 0) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_numbers_split_like_the_kernel_does() {
        // makedev(8, 16) and makedev(259, 1) (an NVMe namespace's partition).
        assert_eq!(maj_min(0x0810), "8:16");
        assert_eq!(maj_min((259 << 8) | 1), "259:1");
        assert_eq!(
            maj_min((0x1000_u64 << 32) | (0x100 << 12) | 0x5),
            "4096:261"
        );
    }

    #[test]
    fn a_regular_file_is_not_a_target() {
        let f = tempfile::NamedTempFile::new().unwrap();
        let e = Disk::open(f.path()).unwrap_err().to_string();
        assert!(e.contains("not a block device"), "{e}");
        let e = Disk::open(Path::new("/nonexistent/disk")).unwrap_err();
        assert!(format!("{e:#}").contains("no /nonexistent/disk"), "{e:#}");
    }
}
