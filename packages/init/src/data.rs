//! The persistent data partition and the RNG seed kept on it.
//!
//! The partition is the one whose GPT partition name is `axion-data` (found through
//! `/sys/class/block/*/uevent`, `PARTNAME=`). If `e2fsck` exists in the image it checks the
//! filesystem first (`-p`, automatic repair). It is mounted as ext4 at `/var/lib`; `/var/log`
//! is a bind mount of `/var/lib/log`, so logs persist too. When the partition is missing or
//! does not mount, `/var/lib` becomes a tmpfs and init says so loudly: the system boots, but
//! nothing persists.
//!
//! init looks once and does not wait for the disk: the kernel finishes its asynchronous
//! probing (SCSI scans, `sd` probes, virtio) before it starts PID 1 (`async_synchronize_full`
//! in `kernel_init`), so a disk that is attached at boot is there. Waiting "just in case"
//! would slow every boot without a data disk (an initramfs-only boot).

use std::fs;
use std::io::Write;
use std::path::Path;

use crate::sys;

pub const LABEL: &str = "axion-data";
pub const MOUNT_POINT: &str = "/var/lib";
pub const SEED_FILE: &str = "/var/lib/axion/random-seed";

/// (`PARTNAME`, `DEVNAME`) of a block device's uevent file, if it is a partition.
pub fn parse_uevent(s: &str) -> (Option<String>, Option<String>) {
    let mut partname = None;
    let mut devname = None;
    for line in s.lines() {
        if let Some(v) = line.strip_prefix("PARTNAME=") {
            partname = Some(v.to_string());
        } else if let Some(v) = line.strip_prefix("DEVNAME=") {
            devname = Some(v.to_string());
        }
    }
    (partname, devname)
}

/// Finds `/dev/NAME` of the first partition (by device name order) labelled `label`.
pub fn find_partition(class_block: &Path, label: &str) -> Option<String> {
    let mut names: Vec<_> = fs::read_dir(class_block)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .collect();
    names.sort();
    names.into_iter().find_map(|dir| {
        let s = fs::read_to_string(dir.join("uevent")).ok()?;
        match parse_uevent(&s) {
            (Some(p), Some(d)) if p == label => Some(format!("/dev/{d}")),
            _ => None,
        }
    })
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataState {
    Persistent { device: String },
    Volatile { reason: String },
}

fn run_fsck(device: &str) -> Result<(), String> {
    let Some(fsck) = ["/sbin/e2fsck", "/usr/sbin/e2fsck"]
        .into_iter()
        .find(|p| Path::new(p).exists())
    else {
        crate::debug!("no e2fsck in the image; relying on the ext4 journal for {device}");
        return Ok(());
    };
    match std::process::Command::new(fsck)
        .args(["-p", device])
        .status()
    {
        // 0 clean, 1 errors corrected, 2 corrected and reboot advised (not for an unmounted fs).
        Ok(st) => match st.code() {
            Some(0..=2) => Ok(()),
            other => Err(format!(
                "{fsck} -p {device} found errors it could not fix (exit {other:?})"
            )),
        },
        Err(e) => {
            crate::warn!("cannot run {fsck}: {e}; mounting {device} unchecked");
            Ok(())
        }
    }
}

fn mount_persistent() -> Result<String, String> {
    let device = find_partition(Path::new("/sys/class/block"), LABEL).ok_or_else(|| {
        format!("no partition labelled {LABEL} (looked in /sys/class/block/*/uevent)")
    })?;
    run_fsck(&device)?;
    crate::trace::mark("fsck");
    let _ = fs::create_dir_all(MOUNT_POINT);
    sys::mount(
        &device,
        Path::new(MOUNT_POINT),
        "ext4",
        libc::MS_NOATIME,
        None,
    )
    .map_err(|e| format!("mount {device} (ext4) on {MOUNT_POINT}: {e}"))?;
    Ok(device)
}

/// Mounts the data partition at /var/lib, or a tmpfs when that fails, then binds /var/log.
pub fn mount_data() -> DataState {
    let state = match mount_persistent() {
        Ok(device) => {
            crate::info!("data partition {device} mounted on {MOUNT_POINT}");
            DataState::Persistent { device }
        }
        Err(reason) => {
            crate::error!("********************************************************");
            crate::error!("data partition unusable: {reason}");
            crate::error!("{MOUNT_POINT} is a tmpfs: NOTHING WILL PERSIST ACROSS REBOOTS");
            crate::error!("********************************************************");
            let _ = fs::create_dir_all(MOUNT_POINT);
            if let Err(e) = sys::mount(
                "tmpfs",
                Path::new(MOUNT_POINT),
                "tmpfs",
                0,
                Some("mode=0755"),
            ) {
                crate::error!("mount tmpfs on {MOUNT_POINT}: {e}");
            }
            DataState::Volatile { reason }
        }
    };
    let log_dir = Path::new("/var/lib/log");
    let _ = fs::create_dir_all(log_dir);
    let _ = fs::create_dir_all("/var/log");
    if let Err(e) = sys::mount(
        "/var/lib/log",
        Path::new("/var/log"),
        "",
        libc::MS_BIND,
        None,
    ) {
        crate::warn!("bind /var/lib/log on /var/log: {e}; service logs may not be written");
    }
    let _ = fs::create_dir_all("/var/lib/axion");
    state
}

const RNDADDENTROPY: libc::c_ulong = 0x4008_5203; // _IOW('R', 0x03, int[2])
const SEED_LEN: usize = 512;

/// Feeds the saved seed to the kernel RNG (credited only when `credit`; init passes false:
/// a seed on a cloned disk is shared with the template and its siblings, so it is mixed in
/// but never counted as entropy), then replaces it at once with a fresh one. The identity
/// step deletes a template's seed before this runs; shutdown saves a fresh one again.
pub fn seed_rng(credit: bool) {
    match fs::read(SEED_FILE) {
        Ok(seed) if seed.len() >= 32 => {
            let credit = if credit { seed.len() * 8 } else { 0 };
            match add_entropy(&seed, credit) {
                Ok(()) => {
                    crate::debug!("seeded the RNG from {SEED_FILE} ({} bits credited)", credit)
                }
                Err(e) => crate::warn!("RNDADDENTROPY from {SEED_FILE}: {e}"),
            }
        }
        Ok(_) => crate::warn!("{SEED_FILE} is too short; not used"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            crate::debug!("no RNG seed yet ({SEED_FILE})")
        }
        Err(e) => crate::warn!("read {SEED_FILE}: {e}"),
    }
    save_seed();
}

/// Writes a fresh seed (from the kernel RNG) to the data partition.
pub fn save_seed() {
    let mut buf = [0u8; SEED_LEN];
    if let Err(e) = sys::getrandom(&mut buf) {
        crate::warn!("getrandom for {SEED_FILE}: {e}");
        return;
    }
    let tmp = format!("{SEED_FILE}.new");
    let res = (|| -> std::io::Result<()> {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(fs::Permissions::from_mode(0o600))?;
        f.write_all(&buf)?;
        f.sync_all()?;
        fs::rename(&tmp, SEED_FILE)
    })();
    if let Err(e) = res {
        crate::warn!("write {SEED_FILE}: {e}");
    }
}

fn add_entropy(seed: &[u8], credit_bits: usize) -> std::io::Result<()> {
    let f = fs::OpenOptions::new().write(true).open("/dev/urandom")?;
    // struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
    let mut req = Vec::with_capacity(8 + seed.len());
    req.extend_from_slice(&(credit_bits as i32).to_ne_bytes());
    req.extend_from_slice(&(seed.len() as i32).to_ne_bytes());
    req.extend_from_slice(seed);
    use std::os::fd::AsRawFd;
    // SAFETY: req holds a rand_pool_info header followed by buf_size bytes, as the ioctl reads.
    unsafe { sys::ioctl_ptr(f.as_raw_fd(), RNDADDENTROPY, req.as_mut_ptr()) }?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_partition_uevent() {
        let s = "MAJOR=254\nMINOR=2\nDEVNAME=vda2\nDEVTYPE=partition\nDISKSEQ=1\nPARTN=2\n\
                 PARTNAME=axion-data\n";
        assert_eq!(
            parse_uevent(s),
            (Some("axion-data".into()), Some("vda2".into()))
        );
        assert_eq!(
            parse_uevent("DEVNAME=vda\nDEVTYPE=disk\n"),
            (None, Some("vda".into()))
        );
    }

    #[test]
    fn finds_partition_by_label_in_a_fake_sysfs() {
        let dir = std::env::temp_dir().join(format!("axion-init-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        for (name, ev) in [
            ("vda", "DEVNAME=vda\nDEVTYPE=disk\n"),
            ("vda1", "DEVNAME=vda1\nPARTNAME=axion-esp\n"),
            ("vda2", "DEVNAME=vda2\nPARTNAME=axion-data\n"),
            ("vdb1", "DEVNAME=vdb1\nPARTNAME=axion-data\n"),
        ] {
            fs::create_dir_all(dir.join(name)).unwrap();
            fs::write(dir.join(name).join("uevent"), ev).unwrap();
        }
        assert_eq!(find_partition(&dir, LABEL), Some("/dev/vda2".into()));
        assert_eq!(find_partition(&dir, "nope"), None);
        assert_eq!(find_partition(&dir.join("missing"), LABEL), None);
        fs::remove_dir_all(&dir).unwrap();
    }
}
