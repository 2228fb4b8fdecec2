//! The two boot slots on the ESP: `axion/A/` and `axion/B/`, each `vmlinuz`, `initrd.zst`
//! and `release`, chosen by GRUB through `grub/grubenv` (see [`crate::grubenv`]).
//!
//! Order of writes, so that a power-off at any point leaves the running slot bootable:
//! 1. the grubenv stops naming the inactive slot (`axion_next` removed, `axion_try=0`), so
//!    GRUB never boots it while it is half written;
//! 2. the slot's folder is created if missing (and its parent fsynced), its old files are
//!    removed and the new ones written under temporary names, each fsynced, then renamed
//!    into place, and the folder fsynced;
//! 3. only then the grubenv names it (`axion_next`, `axion_try=1`), rewritten in place and
//!    fsynced.
//!
//! For tests only, [`Esp::mid_write_pause`] stops the write halfway through `initrd.zst`
//! (half of it on disk, fsynced) so that a test can cut the power at a known point: the
//! whole write takes well under a second under KVM, too short to kill QEMU into reliably.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::grubenv::{self, Env};

/// The files of a slot, in the order they are written.
pub const FILES: [&str; 3] = ["vmlinuz", "initrd.zst", "release"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    A,
    B,
}

impl Slot {
    pub fn parse(s: &str) -> Option<Slot> {
        match s {
            "A" => Some(Slot::A),
            "B" => Some(Slot::B),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Slot::A => "A",
            Slot::B => "B",
        }
    }

    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }

    pub fn version_key(self) -> String {
        format!("axion_version_{}", self.name())
    }
}

/// `axion.slot=` of a kernel command line: the slot GRUB booted (None for the ISO or a
/// direct kernel boot).
pub fn booted_slot(cmdline: &str) -> Option<Slot> {
    cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix("axion.slot="))
        .and_then(Slot::parse)
}

/// The mounted ESP.
pub struct Esp {
    pub root: PathBuf,
    /// Tests only (`axion.update.test-pause-write=SECONDS`): how long [`Esp::write_slot`]
    /// pauses with half of `initrd.zst` written.
    pub mid_write_pause: Option<Duration>,
}

impl Esp {
    fn env_path(&self) -> PathBuf {
        self.root.join("grub/grubenv")
    }

    pub fn env(&self) -> Result<Env> {
        let p = self.env_path();
        let bytes = std::fs::read(&p).with_context(|| format!("cannot read {}", p.display()))?;
        Env::parse(&bytes).with_context(|| p.display().to_string())
    }

    /// Rewrites the block in place (the clusters GRUB's `save_env` writes), then fsyncs.
    pub fn write_env(&self, env: &Env) -> Result<()> {
        let p = self.env_path();
        let bytes = env.encode()?;
        let f = File::options()
            .write(true)
            .open(&p)
            .with_context(|| format!("cannot open {}", p.display()))?;
        if f.metadata()?.len() != grubenv::SIZE as u64 {
            bail!(
                "{} is not {} bytes: not touching it",
                p.display(),
                grubenv::SIZE
            );
        }
        f.write_all_at(&bytes, 0)
            .with_context(|| format!("cannot write {}", p.display()))?;
        f.sync_all()
            .with_context(|| format!("cannot sync {}", p.display()))?;
        Ok(())
    }

    pub fn slot_dir(&self, slot: Slot) -> PathBuf {
        self.root.join("axion").join(slot.name())
    }

    /// Whether the slot holds every file.
    pub fn slot_complete(&self, slot: Slot) -> bool {
        FILES.iter().all(|f| self.slot_dir(slot).join(f).is_file())
    }

    /// Writes `files` (name from [`FILES`], source path) into `slot`, following the order in
    /// the module comment, and marks it to be tried once with `version`. The caller has
    /// checked that `slot` is not the booted one.
    pub fn write_slot(&self, slot: Slot, files: &[(&str, PathBuf)], version: &str) -> Result<()> {
        let mut env = self.env()?;
        if env.get("axion_next") == Some(slot.name()) || env.get("axion_try") != Some("0") {
            env.remove("axion_next");
            env.set("axion_try", "0")?;
        }
        env.remove(&slot.version_key());
        self.write_env(&env)?;

        let dir = self.slot_dir(slot);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        // A new slot folder's entry lives in its parent's clusters, which fsyncing the files
        // or the folder itself does not write on vfat: without this a power-off could keep
        // a grubenv that names a slot whose folder the disk never got.
        if let Some(parent) = dir.parent() {
            sync_dir(parent)?;
        }
        for e in std::fs::read_dir(&dir)? {
            let e = e?;
            std::fs::remove_file(e.path())
                .with_context(|| format!("cannot remove {}", e.path().display()))?;
        }
        sync_dir(&dir)?;
        for (name, src) in files {
            let tmp = dir.join(format!("{name}.new"));
            let pause = self.mid_write_pause.filter(|_| *name == "initrd.zst");
            copy_synced(src, &tmp, pause)?;
            std::fs::rename(&tmp, dir.join(name))
                .with_context(|| format!("cannot rename {}", tmp.display()))?;
        }
        sync_dir(&dir)?;
        if !self.slot_complete(slot) {
            bail!("slot {} is incomplete after writing", slot.name());
        }

        env.set(&slot.version_key(), version)?;
        env.set("axion_next", slot.name())?;
        env.set("axion_try", "1")?;
        self.write_env(&env)
    }
}

/// Copies `src` to `dest` and fsyncs it; with `pause`, first half of it (fsynced), then a
/// pause (see [`Esp::mid_write_pause`]), then the rest.
fn copy_synced(src: &Path, dest: &Path, pause: Option<Duration>) -> Result<()> {
    let mut from = File::open(src).with_context(|| format!("cannot open {}", src.display()))?;
    let mut to = File::create(dest).with_context(|| format!("cannot create {}", dest.display()))?;
    if let Some(pause) = pause {
        let half = from.metadata()?.len() / 2;
        std::io::copy(&mut (&mut from).take(half), &mut to)
            .with_context(|| format!("cannot write {}", dest.display()))?;
        to.sync_all()
            .with_context(|| format!("cannot sync {}", dest.display()))?;
        println!(
            "axion-update: paused {} s with {half} bytes of {} written \
             (axion.update.test-pause-write)",
            pause.as_secs(),
            dest.display()
        );
        std::thread::sleep(pause);
    }
    std::io::copy(&mut from, &mut to)
        .with_context(|| format!("cannot write {}", dest.display()))?;
    to.flush()?;
    to.sync_all()
        .with_context(|| format!("cannot sync {}", dest.display()))
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot sync {}", dir.display()))
}

/// `/dev/NAME` of the partition whose GPT name is `partname` (from the kernel's uevent).
pub fn find_partition(sys_block: &Path, partname: &str) -> Option<PathBuf> {
    for e in std::fs::read_dir(sys_block).ok()?.flatten() {
        let uevent = std::fs::read_to_string(e.path().join("uevent")).unwrap_or_default();
        if uevent.lines().any(|l| l == format!("PARTNAME={partname}")) {
            let dev = uevent
                .lines()
                .find_map(|l| l.strip_prefix("DEVNAME="))?
                .to_owned();
            return Some(Path::new("/dev").join(dev));
        }
    }
    None
}

/// Mounts the ESP (GPT name `axion-esp`) at `at` unless something is mounted there.
pub fn mount_esp(at: &Path) -> Result<Esp> {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let at_s = at.to_string_lossy();
    if !mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(&at_s))
    {
        let dev = find_partition(Path::new("/sys/class/block"), "axion-esp").context(
            "no partition named axion-esp: this machine did not boot from an axion disk",
        )?;
        std::fs::create_dir_all(at)?;
        let c = |s: &str| std::ffi::CString::new(s).context("path with a NUL byte");
        let (src, target, fstype) = (c(&dev.to_string_lossy())?, c(&at_s)?, c("vfat")?);
        // SAFETY: every pointer is a NUL-terminated string that outlives the call; data is
        // null (no options).
        let rc = unsafe {
            libc::mount(
                src.as_ptr(),
                target.as_ptr(),
                fstype.as_ptr(),
                libc::MS_NOATIME | libc::MS_NODEV | libc::MS_NOEXEC | libc::MS_NOSUID,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            bail!(
                "cannot mount {} on {}: {}",
                dev.display(),
                at.display(),
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(Esp {
        root: at.to_owned(),
        mid_write_pause: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fresh() -> (tempfile::TempDir, Esp) {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("grub")).unwrap();
        std::fs::create_dir_all(d.path().join("axion/A")).unwrap();
        let mut env = Env::default();
        env.set("axion_active", "A").unwrap();
        env.set("axion_try", "0").unwrap();
        env.set("axion_version_A", "0.1.0").unwrap();
        std::fs::write(d.path().join("grub/grubenv"), env.encode().unwrap()).unwrap();
        for f in FILES {
            std::fs::write(d.path().join("axion/A").join(f), b"a").unwrap();
        }
        let esp = Esp {
            root: d.path().to_owned(),
            mid_write_pause: None,
        };
        (d, esp)
    }

    #[test]
    fn writing_a_slot_marks_it_to_be_tried_once_and_keeps_the_block_in_place() {
        let (d, esp) = fresh();
        let src = d.path().join("src");
        std::fs::create_dir(&src).unwrap();
        let files: Vec<(&str, PathBuf)> = FILES
            .iter()
            .map(|f| {
                let p = src.join(f);
                std::fs::write(&p, format!("new {f}")).unwrap();
                (*f, p)
            })
            .collect();
        esp.write_slot(Slot::B, &files, "0.2.0").unwrap();
        let env = esp.env().unwrap();
        assert_eq!(env.get("axion_active"), Some("A"));
        assert_eq!(env.get("axion_next"), Some("B"));
        assert_eq!(env.get("axion_try"), Some("1"));
        assert_eq!(env.get("axion_version_B"), Some("0.2.0"));
        assert_eq!(
            std::fs::read(esp.slot_dir(Slot::B).join("vmlinuz")).unwrap(),
            b"new vmlinuz"
        );
        assert_eq!(
            std::fs::read(esp.slot_dir(Slot::A).join("vmlinuz")).unwrap(),
            b"a"
        );
        assert!(!esp.slot_dir(Slot::B).join("vmlinuz.new").exists());
        assert_eq!(
            std::fs::metadata(d.path().join("grub/grubenv"))
                .unwrap()
                .len(),
            1024
        );
    }

    #[test]
    fn a_write_paused_halfway_still_writes_every_byte() {
        let (d, mut esp) = fresh();
        esp.mid_write_pause = Some(Duration::ZERO);
        let initrd: Vec<u8> = (0..10_001u32).map(|i| (i % 251) as u8).collect();
        let src = d.path().join("initrd");
        std::fs::write(&src, &initrd).unwrap();
        let files = [
            ("vmlinuz", src.clone()),
            ("initrd.zst", src.clone()),
            ("release", src),
        ];
        esp.write_slot(Slot::B, &files, "0.2.0").unwrap();
        assert_eq!(
            std::fs::read(esp.slot_dir(Slot::B).join("initrd.zst")).unwrap(),
            initrd
        );
        assert_eq!(esp.env().unwrap().get("axion_try"), Some("1"));
    }

    #[test]
    fn a_failed_write_leaves_the_inactive_slot_untried() {
        let (d, esp) = fresh();
        let files = vec![("vmlinuz", d.path().join("missing"))];
        assert!(esp.write_slot(Slot::B, &files, "0.2.0").is_err());
        let env = esp.env().unwrap();
        assert_eq!(env.get("axion_next"), None);
        assert_eq!(env.get("axion_try"), Some("0"));
        assert_eq!(env.get("axion_active"), Some("A"));
    }

    #[test]
    fn the_booted_slot_comes_from_the_command_line() {
        assert_eq!(
            booted_slot("console=ttyS0 axion.slot=B panic=-1"),
            Some(Slot::B)
        );
        assert_eq!(booted_slot("console=ttyS0"), None);
        assert_eq!(booted_slot("axion.slot=C"), None);
    }

    #[test]
    fn partitions_are_found_by_their_gpt_name() {
        let d = tempfile::tempdir().unwrap();
        for (n, name) in [("vda1", "axion-bios"), ("vda2", "axion-esp")] {
            std::fs::create_dir(d.path().join(n)).unwrap();
            std::fs::write(
                d.path().join(n).join("uevent"),
                format!("MAJOR=254\nDEVNAME={n}\nDEVTYPE=partition\nPARTNAME={name}\n"),
            )
            .unwrap();
        }
        assert_eq!(
            find_partition(d.path(), "axion-esp"),
            Some(PathBuf::from("/dev/vda2"))
        );
        assert_eq!(find_partition(d.path(), "axion-data"), None);
    }
}
