//! The API filesystems, cgroup2 delegation, `/proc/mounts` parsing and unmounting at shutdown.

use std::fs;
use std::path::Path;

use crate::sys;

struct ApiMount {
    source: &'static str,
    target: &'static str,
    fstype: &'static str,
    flags: libc::c_ulong,
    data: Option<&'static str>,
}

const NOSUID: libc::c_ulong = libc::MS_NOSUID;
const NODEV: libc::c_ulong = libc::MS_NODEV;
const NOEXEC: libc::c_ulong = libc::MS_NOEXEC;

/// In order: each target's parent is mounted before it.
const API_MOUNTS: &[ApiMount] = &[
    ApiMount {
        source: "proc",
        target: "/proc",
        fstype: "proc",
        flags: NOSUID | NODEV | NOEXEC,
        data: None,
    },
    ApiMount {
        source: "sysfs",
        target: "/sys",
        fstype: "sysfs",
        flags: NOSUID | NODEV | NOEXEC,
        data: None,
    },
    ApiMount {
        source: "devtmpfs",
        target: "/dev",
        fstype: "devtmpfs",
        flags: NOSUID,
        data: Some("mode=0755"),
    },
    ApiMount {
        source: "devpts",
        target: "/dev/pts",
        fstype: "devpts",
        flags: NOSUID | NOEXEC,
        data: Some("gid=5,mode=0620,ptmxmode=0666"),
    },
    ApiMount {
        source: "shm",
        target: "/dev/shm",
        fstype: "tmpfs",
        flags: NOSUID | NODEV,
        data: Some("mode=1777"),
    },
    ApiMount {
        source: "run",
        target: "/run",
        fstype: "tmpfs",
        flags: NOSUID | NODEV,
        data: Some("mode=0755"),
    },
    ApiMount {
        source: "tmp",
        target: "/tmp",
        fstype: "tmpfs",
        flags: NOSUID | NODEV,
        data: Some("mode=1777"),
    },
    ApiMount {
        source: "cgroup2",
        target: "/sys/fs/cgroup",
        fstype: "cgroup2",
        flags: NOSUID | NODEV | NOEXEC,
        data: Some("nsdelegate"),
    },
];

/// Mounts everything in [`API_MOUNTS`] that is not mounted yet. Failures are reported and
/// the rest continues.
pub fn mount_api_filesystems() -> Vec<String> {
    let mut errors = Vec::new();
    for m in API_MOUNTS {
        // /proc is the first mount, so from the second on we can ask /proc/mounts.
        if m.target != "/proc" && is_mounted(m.target) {
            continue;
        }
        let target = Path::new(m.target);
        let _ = fs::create_dir_all(target);
        if let Err(e) = sys::mount(m.source, target, m.fstype, m.flags, m.data) {
            if e.raw_os_error() != Some(libc::EBUSY) {
                errors.push(format!("mount {} on {}: {e}", m.fstype, m.target));
            }
        }
    }
    // Links that devtmpfs does not provide.
    for (link, to) in [
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
    ] {
        let _ = std::os::unix::fs::symlink(to, link);
    }
    errors
}

/// One line of /proc/mounts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub source: String,
    pub target: String,
    pub fstype: String,
    pub options: String,
}

/// Undoes the octal escapes (`\040` for space) the kernel writes in /proc/mounts.
pub(crate) fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') as u32 * 64
                + (b[i + 2] - b'0') as u32 * 8
                + (b[i + 3] - b'0') as u32;
            out.push(v as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn parse_mounts(s: &str) -> Vec<MountEntry> {
    s.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some(MountEntry {
                source: unescape(f.next()?),
                target: unescape(f.next()?),
                fstype: f.next()?.to_string(),
                options: f.next()?.to_string(),
            })
        })
        .collect()
}

pub fn read_mounts() -> Vec<MountEntry> {
    fs::read_to_string("/proc/mounts")
        .map(|s| parse_mounts(&s))
        .unwrap_or_default()
}

pub fn is_mounted(target: &str) -> bool {
    read_mounts().iter().any(|m| m.target == target)
}

/// Mount points at or below `prefix`, deepest (latest mounted) first: the unmount order.
pub fn mounts_under(entries: &[MountEntry], prefix: &str) -> Vec<String> {
    let p = prefix.trim_end_matches('/');
    let mut v: Vec<String> = entries
        .iter()
        .filter(|m| m.target == p || m.target.starts_with(&format!("{p}/")))
        .map(|m| m.target.clone())
        .collect();
    v.reverse();
    v
}

/// Controllers init delegates to the cgroup tree's children.
pub const CONTROLLERS: &[&str] = &["cpu", "memory", "pids", "io", "cpuset"];

/// Moves init into `/sys/fs/cgroup/init` (so the root cgroup holds no processes of ours) and
/// enables the controllers for the children of the root, one at a time so one missing
/// controller does not cost the others.
pub fn delegate_cgroups() -> Vec<String> {
    let root = Path::new("/sys/fs/cgroup");
    let mut errors = Vec::new();
    let init = root.join("init");
    if let Err(e) =
        fs::create_dir_all(&init).and_then(|()| fs::write(init.join("cgroup.procs"), "0"))
    {
        errors.push(format!("move init into {}: {e}", init.display()));
    }
    let available = fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
    for c in CONTROLLERS {
        if !available.split_whitespace().any(|a| a == *c) {
            errors.push(format!(
                "cgroup controller {c} not available (kernel config?)"
            ));
            continue;
        }
        if let Err(e) = fs::write(root.join("cgroup.subtree_control"), format!("+{c}")) {
            errors.push(format!(
                "enable cgroup controller {c} in {}/cgroup.subtree_control: {e}",
                root.display()
            ));
        }
    }
    errors
}

/// Unmounts everything below `prefix` (deepest first) and then `prefix` itself, remounting
/// read-only first so the filesystem is clean even if the final unmount is refused.
pub fn unmount_tree(prefix: &str) -> Vec<String> {
    let mut errors = Vec::new();
    for target in mounts_under(&read_mounts(), prefix) {
        let p = Path::new(&target);
        let _ = sys::mount("", p, "", libc::MS_REMOUNT | libc::MS_RDONLY, None);
        if let Err(e) = sys::umount(p, 0) {
            // Still clean (read-only); detach so nothing holds it.
            let _ = sys::umount(p, libc::MNT_DETACH);
            errors.push(format!(
                "unmount {target}: {e} (remounted read-only, detached)"
            ));
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "rootfs / rootfs rw 0 0\n\
proc /proc proc rw,nosuid,nodev,noexec,relatime 0 0\n\
/dev/vda2 /var/lib ext4 rw,noatime 0 0\n\
/dev/vda2 /var/log ext4 rw,noatime 0 0\n\
overlay /var/lib/engine/c1/merged overlay rw,lowerdir=/a:/b 0 0\n\
tmpfs /var/lib/with\\040space tmpfs rw 0 0\n\
/dev/vdb /var/library ext4 rw 0 0\n";

    #[test]
    fn parses_proc_mounts() {
        let m = parse_mounts(SAMPLE);
        assert_eq!(m.len(), 7);
        assert_eq!(
            m[2],
            MountEntry {
                source: "/dev/vda2".into(),
                target: "/var/lib".into(),
                fstype: "ext4".into(),
                options: "rw,noatime".into()
            }
        );
        assert_eq!(m[5].target, "/var/lib/with space");
        assert!(parse_mounts("garbage\n\n").is_empty());
    }

    #[test]
    fn unmount_order_is_deepest_first_and_exact_prefix() {
        let m = parse_mounts(SAMPLE);
        assert_eq!(
            mounts_under(&m, "/var/lib"),
            vec![
                "/var/lib/with space",
                "/var/lib/engine/c1/merged",
                "/var/lib"
            ]
        );
        assert_eq!(mounts_under(&m, "/nothing"), Vec::<String>::new());
    }

    #[test]
    fn unescape_leaves_plain_backslashes() {
        assert_eq!(unescape("a\\134b"), "a\\b");
        assert_eq!(unescape("a\\9b"), "a\\9b");
        assert_eq!(unescape("end\\"), "end\\");
    }
}
