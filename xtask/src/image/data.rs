//! The persistent data partition (`/var/lib`): an empty ext4 file system made without root by
//! `mke2fs` (Debian's e2fsprogs, the accepted host tool), reproducible: UUID and directory hash
//! seed fixed (derived from the profile), every timestamp `SOURCE_DATE_EPOCH`
//! (`E2FSPROGS_FAKE_TIME`), root directory owned by 0:0. Only `lost+found` is on it: state is
//! written at run time, and the root filesystem's own `/var/lib` is the empty mount point.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

/// Volume label (also the GPT partition label).
pub const LABEL: &str = "axion-data";

fn mke2fs() -> &'static str {
    for p in ["/usr/sbin/mke2fs", "/sbin/mke2fs"] {
        if Path::new(p).exists() {
            return p;
        }
    }
    "mke2fs"
}

/// Makes `path` (created or replaced, sparse) an ext4 file system of `size_mib` MiB.
pub fn make(path: &Path, size_mib: u64, uuid: uuid::Uuid, epoch: u64) -> Result<()> {
    let _ = std::fs::remove_file(path);
    let out = Command::new(mke2fs())
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("LC_ALL", "C")
        .env("E2FSPROGS_FAKE_TIME", epoch.to_string())
        .env("SOURCE_DATE_EPOCH", epoch.to_string())
        .env("MKE2FS_CONFIG", "/etc/mke2fs.conf")
        .args(["-q", "-F", "-t", "ext4", "-L", LABEL, "-U"])
        .arg(uuid.to_string())
        .arg("-E")
        .arg(format!(
            "root_owner=0:0,hash_seed={uuid},lazy_itable_init=0,lazy_journal_init=0"
        ))
        .arg(path)
        .arg(format!("{size_mib}M"))
        .output()
        .context("cannot run mke2fs (Debian package e2fsprogs; `cargo xtask doctor`)")?;
    if !out.status.success() {
        bail!(
            "mke2fs {} failed: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_partition_is_clean_and_reproducible() {
        if !Path::new(mke2fs()).exists() && Command::new("mke2fs").arg("-V").output().is_err() {
            test_skip::skip("mke2fs (e2fsprogs) is not installed");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let uuid = uuid::Uuid::from_u128(0x1234);
        let a = dir.path().join("a.ext4");
        let b = dir.path().join("b.ext4");
        make(&a, 32, uuid, 1_700_000_000).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1100));
        make(&b, 32, uuid, 1_700_000_000).unwrap();
        assert!(
            std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap(),
            "two mke2fs runs differ"
        );
        let out = Command::new("/usr/sbin/e2fsck")
            .args(["-f", "-n"])
            .arg(&a)
            .output()
            .or_else(|_| Command::new("e2fsck").args(["-f", "-n"]).arg(&a).output())
            .unwrap();
        assert!(
            out.status.success(),
            "e2fsck -fn: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}
