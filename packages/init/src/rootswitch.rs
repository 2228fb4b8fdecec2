//! Moves PID 1's root off the initramfs's initial mount, so that `pivot_root(2)` works for
//! containers: the initramfs itself is bound onto `/` and init chroots into the bind.
//!
//! # Why
//!
//! The kernel unpacks the initramfs into `rootfs`, the initial mount at the bottom of the
//! whole mount tree, and `pivot_root(2)` refuses a caller whose root is that mount (EINVAL:
//! the root mount must have a parent). A container runtime on such a root could only
//! `chroot` into its containers (runc's `--no-pivot`), which is no security boundary; the
//! engine refuses to start containers that way (packages/engine, `runtime::shim`).
//!
//! A bind mount of rootfs moved onto `/` is a mount with a parent: pivot_root works from it
//! and from every mount namespace copied from it. busybox's and dracut's `switch_root` and
//! LinuxKit's init instead copy the whole initramfs into a fresh tmpfs and delete the old
//! files; under TCG that copy took 0.2 s of the boot's critical path for the qemu image
//! (12 MiB, 455 entries) and the deletion another 0.4 s of CPU beside it, for a root that
//! ends up with the same files on the same kind of filesystem (rootfs is a tmpfs when the
//! kernel has one and no `root=` is given). The files stay where the kernel put them:
//! beneath a container's pivoted root there is rootfs, as there is beneath every mount
//! namespace, but no path or descriptor leads below the container's root to it.
//!
//! # How (the very first step of boot, before anything else is mounted)
//!
//! 1. Mount /proc for a moment and read `/`'s entry in /proc/self/mountinfo: only a root
//!    that is the initial mount (its mount id is its own parent's, [`root_is_initial_mount`])
//!    is moved; a disk root, or a second run, is left alone.
//! 2. Bind `/` onto [`NEW_ROOT`] and limit the filesystem's size to what it holds plus
//!    [`HEADROOM`]: the root holds the image and only small files are written to it at run
//!    time (/etc/machine-id); state lives on /var/lib, /run and /tmp, their own mounts.
//!    Without a limit a runaway writer to `/` could take half of the RAM (tmpfs's default).
//! 3. Move the other mounts (none this early; the temporary /proc is unmounted first) into
//!    the bind, `mount --move` the bind onto `/`, `chroot(".")`, `chdir("/")`, and remove the
//!    now empty [`NEW_ROOT`] directory.
//!
//! Init goes on in the same process and image: nothing is copied, so nothing is re-executed.
//! A failure before the move unmounts the bind and leaves the root as it was: boot goes on,
//! on rootfs, with an error on the console (and containers cannot start).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::sys;

/// Where the bind of the initramfs is mounted before it is moved onto `/`.
pub const NEW_ROOT: &str = "/.axion-root";
/// Room for writes to the root beyond the image.
pub const HEADROOM: u64 = 64 << 20;

/// What the switch has to tell once the consoles are open.
#[derive(Debug, PartialEq, Eq)]
pub enum Note {
    /// Nothing was done: the root is not the initial mount.
    None,
    Info(String),
    Error(String),
}

/// Moves the root off the initial mount when it is on it (see the module doc).
pub fn switch_if_initramfs() -> Note {
    let started = Instant::now();
    let proc_dir = Path::new("/proc");
    let mut mounted_proc = false;
    if fs::metadata("/proc/self/mountinfo").is_err() {
        let _ = fs::create_dir(proc_dir);
        match sys::mount(
            "proc",
            proc_dir,
            "proc",
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            None,
        ) {
            Ok(()) => mounted_proc = true,
            Err(e) => {
                return Note::Error(format!(
                    "root switch: mount proc on /proc: {e}; staying on the initramfs root"
                ))
            }
        }
    }
    let info = fs::read_to_string("/proc/self/mountinfo");
    if mounted_proc {
        if let Err(e) = sys::umount(proc_dir, 0) {
            let _ = sys::umount(proc_dir, libc::MNT_DETACH);
            return Note::Error(format!(
                "root switch: unmount the temporary /proc: {e}; staying on the initramfs root"
            ));
        }
    }
    let info = match info {
        Ok(i) => i,
        Err(e) => {
            return Note::Error(format!(
                "root switch: read /proc/self/mountinfo: {e}; staying on the initramfs root"
            ))
        }
    };
    if root_is_initial_mount(&info) != Some(true) {
        return Note::None;
    }
    let mut others = top_mount_points(&info);
    if mounted_proc {
        others.retain(|p| p != proc_dir);
    }
    match switch(&others, started) {
        Ok(msg) => Note::Info(msg),
        Err(msg) => Note::Error(format!("root switch: {msg}")),
    }
}

/// Does the move; Err when something failed before the root moved (still on rootfs).
fn switch(others: &[PathBuf], started: Instant) -> Result<String, String> {
    let new = Path::new(NEW_ROOT);
    if let Err(e) = fs::create_dir(new) {
        if e.kind() != io::ErrorKind::AlreadyExists {
            return Err(format!(
                "mkdir {NEW_ROOT}: {e}; staying on the initramfs root"
            ));
        }
    }
    sys::mount("/", new, "", libc::MS_BIND, None)
        .map_err(|e| format!("bind / on {NEW_ROOT}: {e}; staying on the initramfs root"))?;
    let undo = |why: String| -> String {
        let _ = std::env::set_current_dir("/");
        let _ = sys::umount(new, libc::MNT_DETACH);
        let _ = fs::remove_dir(new);
        format!("{why}; staying on the initramfs root")
    };
    let mut warnings = Vec::new();
    let used = sys::statfs_used(new).unwrap_or(0);
    let limit = used + HEADROOM;
    // A remount without MS_BIND changes the filesystem's own options (tmpfs: size); ramfs,
    // the initramfs of a kernel without tmpfs, has no limit to set.
    if let Err(e) = sys::mount(
        "",
        new,
        "",
        libc::MS_REMOUNT,
        Some(&format!("size={limit}")),
    ) {
        warnings.push(format!("size limit not set: {e}"));
    }
    for m in others {
        let to = new.join(m.strip_prefix("/").unwrap_or(m));
        if let Err(e) = sys::mount(&m.to_string_lossy(), &to, "", libc::MS_MOVE, None) {
            warnings.push(format!(
                "mount on {} not moved into the new root: {e}",
                m.display()
            ));
        }
    }
    std::env::set_current_dir(new).map_err(|e| undo(format!("chdir {NEW_ROOT}: {e}")))?;
    sys::mount(".", Path::new("/"), "", libc::MS_MOVE, None)
        .map_err(|e| undo(format!("mount --move {NEW_ROOT} /: {e}")))?;
    // The bind is on `/` now: no way back from here, only reports.
    if let Err(e) = sys::chroot(Path::new(".")) {
        return Ok(format!(
            "WARNING: the bind of the initramfs is mounted on / but chroot into it failed: \
             {e}; init stays on the initial mount and containers cannot start"
        ));
    }
    let _ = std::env::set_current_dir("/");
    // The mount point it was bound on, seen from the new root: the same, now empty directory.
    let _ = fs::remove_dir(new);
    let mut msg = format!(
        "root moved off the initramfs's initial mount (the initramfs bound onto /, so \
         pivot_root works; {:.1} MiB, size limit {} MiB) in {} ms",
        used as f64 / (1 << 20) as f64,
        limit >> 20,
        started.elapsed().as_millis()
    );
    for w in &warnings {
        msg.push_str("; ");
        msg.push_str(w);
    }
    Ok(msg)
}

/// Whether `/`'s topmost mount in /proc/self/mountinfo text is the initial mount, whose
/// parent is itself (`1 1 0:2 / / rw - rootfs rootfs ...`): the one root pivot_root refuses.
/// None when the text has no `/` entry.
pub fn root_is_initial_mount(mountinfo: &str) -> Option<bool> {
    mountinfo
        .lines()
        .filter_map(|l| {
            let mut f = l.split(' ');
            let id = f.next()?;
            let parent = f.next()?;
            let point = f.nth(2)?;
            (point == "/").then_some(id == parent)
        })
        .next_back()
}

/// The mount points other than `/` that are not below another one (moving those moves the
/// rest), in mountinfo order.
pub fn top_mount_points(mountinfo: &str) -> Vec<PathBuf> {
    let all: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(crate::mounts::unescape(p)))
        .filter(|p| p != Path::new("/"))
        .collect();
    let mut top: Vec<PathBuf> = Vec::new();
    for p in &all {
        if !all.iter().any(|q| q != p && p.starts_with(q)) && !top.contains(p) {
            top.push(p.clone());
        }
    }
    top
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOTFS: &str = "1 1 0:2 / / rw - rootfs rootfs rw,size=503972k,nr_inodes=125993\n\
                          13 1 0:12 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw\n\
                          14 1 0:13 / /sys rw,nosuid,nodev,noexec,relatime - sysfs sysfs rw\n\
                          15 14 0:14 / /sys/fs/cgroup rw shared:3 - cgroup2 cgroup2 rw,nsdelegate\n\
                          16 1 0:15 / /my\\040dev rw - devtmpfs devtmpfs rw\n";
    /// What the kernel's initramfs root looks like after the switch: the bind (id 20) of
    /// the same rootfs, its parent the initial mount.
    const SWITCHED: &str = "20 1 0:2 / / rw - rootfs rootfs rw,size=71680k,nr_inodes=61711\n\
                            13 20 0:12 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw\n";

    #[test]
    fn only_the_initial_mount_is_moved_off() {
        assert_eq!(root_is_initial_mount(ROOTFS), Some(true));
        assert_eq!(root_is_initial_mount(SWITCHED), Some(false));
        // A disk root: its parent is the (invisible) initial mount.
        let disk = "22 1 254:3 / / ro,relatime - ext4 /dev/vda3 ro\n";
        assert_eq!(root_is_initial_mount(disk), Some(false));
        // A mount stacked on / later wins.
        let stacked = format!("{ROOTFS}30 1 0:30 / / rw - tmpfs root rw\n");
        assert_eq!(root_is_initial_mount(&stacked), Some(false));
        assert_eq!(root_is_initial_mount("garbage\n"), None);
        assert_eq!(root_is_initial_mount(""), None);
    }

    #[test]
    fn top_mount_points_skip_nested_ones() {
        assert_eq!(
            top_mount_points(ROOTFS),
            vec![
                PathBuf::from("/proc"),
                PathBuf::from("/sys"),
                PathBuf::from("/my dev")
            ]
        );
        assert_eq!(top_mount_points(SWITCHED), vec![PathBuf::from("/proc")]);
    }
}
