//! Moves PID 1 off the initial ramfs onto a tmpfs root, as busybox's and dracut's
//! `switch_root` and LinuxKit's init do.
//!
//! # Why
//!
//! The kernel unpacks the initramfs into `rootfs`, the root of the whole mount tree, and
//! `pivot_root(2)` cannot move that (EINVAL). A container runtime on such a root can only
//! `chroot` into its containers (runc's `--no-pivot`), which is no security boundary and
//! leaves the host's root files under every container's root. On a tmpfs mounted over `/`,
//! pivot_root works; the engine refuses to start containers without it (packages/engine,
//! `runtime::shim`). Deleting the old files (step 5) matters as much as the move: rootfs
//! stays the root of every mount namespace, under the containers' roots, and must be empty.
//!
//! # How (the very first step of boot, before anything else is mounted)
//!
//! 1. Mount /proc for a moment and read `/`'s entry in /proc/self/mountinfo: only a root
//!    of type `rootfs` is switched (a disk root, or a second run, is left alone).
//! 2. Mount a tmpfs (mode 0755) on [`NEW_ROOT`] and copy the tree into it ([`copy_tree`]):
//!    file types, contents, modes (setuid included), owners, symlinks, hard links (kept
//!    linked), device nodes, FIFOs and times. It does not descend into other mounts (there
//!    are none this early; the temporary /proc is unmounted first); a mount point becomes an
//!    empty directory and the mount is moved into the new root.
//! 3. Limit the tmpfs to what the copy uses plus [`HEADROOM`]: the root holds the image and
//!    only small files are written to it at run time (/etc/machine-id); state lives on
//!    /var/lib, /run and /tmp, their own mounts. Without a limit a runaway writer to `/`
//!    could take half of the RAM (tmpfs's default).
//! 4. Open the old root, `mount --move` the tmpfs onto `/`, `chroot(".")`, `chdir("/")`.
//! 5. Delete the old root's files through the open directory, without crossing into other
//!    filesystems ([`remove_contents`]), so their memory returns to the system, as busybox's
//!    switch_root does. A forked child does it (about 1 ms per entry under TCG, 0.4 s for
//!    the qemu image) while init re-executes and boots; init reaps it.
//! 6. Point stdio at the new root's /dev/console and exec init again (the path
//!    /proc/self/exe named) with the same arguments and [`GUARD`] added to the environment.
//!    The new image sees the guard, reports the switch and removes the variable, so no
//!    loop and no service inherits it.
//!
//! A failure before step 4 unmounts the tmpfs and leaves the initramfs as it was: boot goes
//! on, on rootfs, with an error on the console (and containers cannot start). A failed exec
//! after the switch is reported and init continues in the running image, on the new root.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::sys;

/// Set in the environment of the re-executed init; its value describes the switch.
pub const GUARD: &str = "AXION_ROOT_SWITCHED";
/// Where the tmpfs is mounted and filled before it is moved onto `/`.
pub const NEW_ROOT: &str = "/.axion-root";
/// Room for writes to the root beyond the copied image.
pub const HEADROOM: u64 = 64 << 20;

/// What the switch has to tell once the consoles are open.
#[derive(Debug, PartialEq, Eq)]
pub enum Note {
    /// Nothing was done: the root is not the initramfs.
    None,
    Info(String),
    Error(String),
}

/// Switches the root when it is the initramfs; returns only when there is nothing to do,
/// when the switch failed, or in the re-executed init (see the module doc).
pub fn switch_if_initramfs() -> Note {
    if let Some(v) = std::env::var_os(GUARD) {
        // Single-threaded: nothing reads the environment concurrently.
        std::env::remove_var(GUARD);
        return Note::Info(format!(
            "root moved from the initramfs to a tmpfs ({})",
            v.to_string_lossy()
        ));
    }
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
    let exe = fs::read_link("/proc/self/exe").ok();
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
    if root_fstype(&info).as_deref() != Some("rootfs") {
        return Note::None;
    }
    let mut others = top_mount_points(&info);
    if mounted_proc {
        others.retain(|p| p != proc_dir);
    }
    match switch(exe, &others, started) {
        Ok(msg) => Note::Info(msg),
        Err(msg) => Note::Error(format!("root switch: {msg}")),
    }
}

/// Does the switch; returns only when the re-exec failed (Ok: init goes on, on the new
/// root) or when something failed before the root moved (Err: still on the initramfs).
fn switch(exe: Option<PathBuf>, others: &[PathBuf], started: Instant) -> Result<String, String> {
    let new = Path::new(NEW_ROOT);
    if let Err(e) = fs::create_dir(new) {
        if e.kind() != io::ErrorKind::AlreadyExists {
            return Err(format!(
                "mkdir {NEW_ROOT}: {e}; staying on the initramfs root"
            ));
        }
    }
    sys::mount("root", new, "tmpfs", 0, Some("mode=0755"))
        .map_err(|e| format!("mount tmpfs on {NEW_ROOT}: {e}; staying on the initramfs root"))?;
    let undo = |why: String| -> String {
        let _ = std::env::set_current_dir("/");
        let _ = sys::umount(new, libc::MNT_DETACH);
        let _ = fs::remove_dir(new);
        format!("{why}; staying on the initramfs root")
    };
    let stats = copy_tree(Path::new("/"), new, &[new])
        .map_err(|e| undo(format!("copying the root to the tmpfs: {e}")))?;
    let copied_ms = started.elapsed().as_millis();
    let used = sys::statfs_used(new).unwrap_or(stats.bytes);
    let limit = used + HEADROOM;
    let mut warnings = Vec::new();
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
        let res = fs::create_dir_all(&to)
            .and_then(|()| sys::mount(&m.to_string_lossy(), &to, "", libc::MS_MOVE, None));
        if let Err(e) = res {
            warnings.push(format!(
                "mount on {} not moved into the new root: {e}",
                m.display()
            ));
        }
    }
    let old = fs::File::open("/").map_err(|e| undo(format!("open the old root: {e}")))?;
    let old_dev = old
        .metadata()
        .map_err(|e| undo(format!("stat the old root: {e}")))?
        .dev();
    std::env::set_current_dir(new).map_err(|e| undo(format!("chdir {NEW_ROOT}: {e}")))?;
    sys::mount(".", Path::new("/"), "", libc::MS_MOVE, None)
        .map_err(|e| undo(format!("mount --move {NEW_ROOT} /: {e}")))?;
    // The tmpfs is on `/` now: no way back from here, only reports.
    if let Err(e) = sys::chroot(Path::new(".")) {
        return Ok(format!(
            "WARNING: the tmpfs is mounted on / but chroot into it failed: {e}; init \
             stays on the initramfs root"
        ));
    }
    let _ = std::env::set_current_dir("/");
    let moved_ms = started.elapsed().as_millis();
    reopen_stdio();
    // Freeing the old files costs about 1 ms per entry under TCG: a child does it while boot
    // goes on (the re-executed init reaps it). Inline when fork fails.
    // SAFETY: PID 1 is single-threaded here; the child only deletes through `old`, writes
    // to stderr and exits with _exit.
    let freed = match unsafe { libc::fork() } {
        0 => {
            let t = Instant::now();
            let mut removed = 0u64;
            let mut errors = Vec::new();
            remove_contents(
                old.as_raw_fd(),
                old_dev,
                Path::new("(old root)"),
                &mut removed,
                &mut errors,
            );
            for e in errors.iter().take(5) {
                eprintln!("init: WARNING: root switch: old root not freed: {e}");
            }
            if crate::log::debug_enabled() || !errors.is_empty() {
                eprintln!(
                    "init: root switch: {removed} old entries freed in {} ms, {} error(s)",
                    t.elapsed().as_millis(),
                    errors.len()
                );
            }
            // SAFETY: _exit ends the child without running the parent's destructors.
            unsafe { libc::_exit(if errors.is_empty() { 0 } else { 1 }) }
        }
        pid if pid > 0 => format!("old files freed by child {pid}"),
        _ => {
            let mut removed = 0u64;
            let mut errors = Vec::new();
            remove_contents(
                old.as_raw_fd(),
                old_dev,
                Path::new("(old root)"),
                &mut removed,
                &mut errors,
            );
            if !errors.is_empty() {
                warnings.push(format!(
                    "{} file(s) of the old root not deleted, first: {}",
                    errors.len(),
                    errors[0]
                ));
            }
            format!(
                "{removed} old entries freed at {} ms",
                started.elapsed().as_millis()
            )
        }
    };
    drop(old);
    let mut msg = format!(
        "{} files ({:.1} MiB), {} directories, {} symlinks, {} hard links, {} device nodes copied \
         in {} ms; size limit {} MiB; moved at {} ms; {}",
        stats.files,
        stats.bytes as f64 / (1 << 20) as f64,
        stats.dirs,
        stats.symlinks,
        stats.hardlinks,
        stats.nodes,
        copied_ms,
        limit >> 20,
        moved_ms,
        freed
    );
    for w in &warnings {
        msg.push_str("; ");
        msg.push_str(w);
    }
    let Some(exe) = exe else {
        return Ok(format!(
            "root moved from the initramfs to a tmpfs ({msg}); init not re-executed: \
             /proc/self/exe was unreadable"
        ));
    };
    let args: Vec<OsString> = std::env::args_os().collect();
    let mut env: Vec<(OsString, OsString)> = std::env::vars_os().collect();
    env.push((GUARD.into(), msg.clone().into()));
    let e = sys::execve(&exe, &args, &env);
    Ok(format!(
        "root moved from the initramfs to a tmpfs ({msg}); re-exec of {} failed: {e}; init \
         goes on in the old image",
        exe.display()
    ))
}

/// Points fds 0-2 (those open) at the new root's /dev/console, letting go of the old one.
fn reopen_stdio() {
    let Ok(console) = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open("/dev/console")
    else {
        return;
    };
    for fd in 0..3 {
        if sys::fd_is_open(fd) {
            let _ = sys::dup2(console.as_raw_fd(), fd);
        }
    }
}

/// The filesystem type of the topmost mount on `/` in /proc/self/mountinfo text.
pub fn root_fstype(mountinfo: &str) -> Option<String> {
    mountinfo
        .lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let point = pre.split(' ').nth(4)?;
            let fstype = post.split(' ').next()?;
            (point == "/").then(|| fstype.to_string())
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

/// What [`copy_tree`] copied.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CopyStats {
    pub files: u64,
    pub bytes: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub hardlinks: u64,
    /// Device nodes, FIFOs and sockets.
    pub nodes: u64,
    /// Directories on another filesystem than `src`: created empty, not descended.
    pub mount_points: u64,
}

/// Copies the tree below `src` into the existing directory `dst` (and `src`'s own mode,
/// owner and times onto `dst`), preserving what [the module doc](self) lists. Paths in
/// `exclude` are skipped. Stops at the first error.
pub fn copy_tree(src: &Path, dst: &Path, exclude: &[&Path]) -> io::Result<CopyStats> {
    let meta = fs::symlink_metadata(src).map_err(ctx("stat", src))?;
    let mut c = Copier {
        dev: meta.dev(),
        links: HashMap::new(),
        stats: CopyStats::default(),
        exclude,
    };
    c.contents(src, dst)?;
    c.attrs(dst, &meta, false)?;
    Ok(c.stats)
}

fn ctx<'a>(what: &'a str, p: &'a Path) -> impl FnOnce(io::Error) -> io::Error + 'a {
    move |e| io::Error::new(e.kind(), format!("{what} {}: {e}", p.display()))
}

struct Copier<'a> {
    dev: u64,
    /// (dev, inode) of a multiply linked source -> its first copy.
    links: HashMap<(u64, u64), PathBuf>,
    stats: CopyStats,
    exclude: &'a [&'a Path],
}

impl Copier<'_> {
    fn contents(&mut self, src: &Path, dst: &Path) -> io::Result<()> {
        let mut names: Vec<OsString> = Vec::new();
        for e in fs::read_dir(src).map_err(ctx("read directory", src))? {
            names.push(e.map_err(ctx("read directory", src))?.file_name());
        }
        names.sort();
        for n in names {
            let s = src.join(&n);
            if self.exclude.contains(&s.as_path()) {
                continue;
            }
            self.entry(&s, &dst.join(&n))?;
        }
        Ok(())
    }

    fn entry(&mut self, s: &Path, d: &Path) -> io::Result<()> {
        let m = fs::symlink_metadata(s).map_err(ctx("stat", s))?;
        let ft = m.file_type();
        if ft.is_dir() {
            fs::create_dir(d).map_err(ctx("mkdir", d))?;
            if m.dev() == self.dev {
                self.stats.dirs += 1;
                self.contents(s, d)?;
            } else {
                self.stats.mount_points += 1;
            }
            return self.attrs(d, &m, false);
        }
        let key = (m.dev(), m.ino());
        if m.nlink() > 1 {
            if let Some(first) = self.links.get(&key) {
                fs::hard_link(first, d).map_err(ctx("link", d))?;
                self.stats.hardlinks += 1;
                return Ok(());
            }
        }
        if ft.is_symlink() {
            let target = fs::read_link(s).map_err(ctx("readlink", s))?;
            std::os::unix::fs::symlink(&target, d).map_err(ctx("symlink", d))?;
            self.stats.symlinks += 1;
            self.attrs(d, &m, true)?;
        } else if ft.is_file() {
            let mut from = fs::File::open(s).map_err(ctx("open", s))?;
            let mut to = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(d)
                .map_err(ctx("create", d))?;
            io::copy(&mut from, &mut to).map_err(ctx("copy to", d))?;
            drop(to);
            self.stats.files += 1;
            self.stats.bytes += m.len();
            self.attrs(d, &m, false)?;
        } else {
            sys::mknod(d, m.mode(), m.rdev()).map_err(ctx("mknod", d))?;
            self.stats.nodes += 1;
            self.attrs(d, &m, false)?;
        }
        if m.nlink() > 1 {
            self.links.insert(key, d.to_path_buf());
        }
        Ok(())
    }

    /// Owner, then mode (chown clears setuid), then times (last: the rest changes ctime only).
    fn attrs(&self, d: &Path, m: &fs::Metadata, symlink: bool) -> io::Result<()> {
        std::os::unix::fs::lchown(d, Some(m.uid()), Some(m.gid())).map_err(ctx("chown", d))?;
        if !symlink {
            fs::set_permissions(d, fs::Permissions::from_mode(m.mode() & 0o7777))
                .map_err(ctx("chmod", d))?;
        }
        sys::set_times_nofollow(d, (m.atime(), m.atime_nsec()), (m.mtime(), m.mtime_nsec()))
            .map_err(ctx("set times of", d))
    }
}

/// Deletes everything in the open directory `dir` that lives on filesystem `dev`, deepest
/// first; a directory where another filesystem is mounted is left alone (with what is
/// below it). `dir` itself stays. `path` only names things in `errors`.
pub fn remove_contents(
    dir: RawFd,
    dev: u64,
    path: &Path,
    removed: &mut u64,
    errors: &mut Vec<String>,
) {
    let names = match sys::dir_names(dir) {
        Ok(n) => n,
        Err(e) => {
            errors.push(format!("read directory {}: {e}", path.display()));
            return;
        }
    };
    for n in names {
        let p = path.join(&n);
        let st = match sys::lstat_at(dir, &n) {
            Ok(st) => st,
            Err(e) => {
                errors.push(format!("stat {}: {e}", p.display()));
                continue;
            }
        };
        if st.st_dev as u64 != dev {
            continue;
        }
        let is_dir = st.st_mode & libc::S_IFMT == libc::S_IFDIR;
        if is_dir {
            match sys::open_dir_at(dir, &n) {
                Ok(sub) => remove_contents(sub.as_raw_fd(), dev, &p, removed, errors),
                Err(e) => errors.push(format!("open {}: {e}", p.display())),
            }
        }
        match sys::unlink_at(dir, &n, if is_dir { libc::AT_REMOVEDIR } else { 0 }) {
            Ok(()) => *removed += 1,
            Err(e) => errors.push(format!("remove {}: {e}", p.display())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::os::unix::fs::{symlink, FileTypeExt};

    const ROOTFS: &str = "1 1 0:2 / / rw - rootfs rootfs rw,size=503972k,nr_inodes=125993\n\
                          13 1 0:12 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw\n\
                          14 1 0:13 / /sys rw,nosuid,nodev,noexec,relatime - sysfs sysfs rw\n\
                          15 14 0:14 / /sys/fs/cgroup rw shared:3 - cgroup2 cgroup2 rw,nsdelegate\n\
                          16 1 0:15 / /my\\040dev rw - devtmpfs devtmpfs rw\n";
    const SWITCHED: &str = "20 1 0:21 / / rw,relatime - tmpfs root rw,size=71680k,mode=755\n\
                            13 20 0:12 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw\n";

    #[test]
    fn root_type_from_mountinfo() {
        assert_eq!(root_fstype(ROOTFS).as_deref(), Some("rootfs"));
        assert_eq!(root_fstype(SWITCHED).as_deref(), Some("tmpfs"));
        // A mount stacked on / later wins.
        let stacked = format!("{ROOTFS}30 1 0:30 / / rw - tmpfs root rw\n");
        assert_eq!(root_fstype(&stacked).as_deref(), Some("tmpfs"));
        assert_eq!(root_fstype("garbage\n"), None);
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

    /// A temporary directory removed (after unmounting what a test mounted) on drop.
    struct Tmp {
        path: PathBuf,
        mounts: Vec<PathBuf>,
    }

    impl Tmp {
        fn new(tag: &str) -> Tmp {
            let path =
                std::env::temp_dir().join(format!("init-rootswitch-{tag}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&path);
            fs::create_dir_all(&path).unwrap();
            Tmp {
                path,
                mounts: Vec::new(),
            }
        }

        /// Mounts a tmpfs at `rel` when the test runs as root; false (and a loud note) if not.
        fn mount_tmpfs(&mut self, rel: &str) -> bool {
            let p = self.path.join(rel);
            fs::create_dir_all(&p).unwrap();
            match sys::mount("tmpfs", &p, "tmpfs", 0, Some("mode=0711")) {
                Ok(()) => {
                    self.mounts.push(p);
                    true
                }
                Err(e) => {
                    test_skip::skip(format_args!(
                        "mounting a tmpfs needs root ({e}): the \
                         mount-crossing part of this test is not run"
                    ));
                    false
                }
            }
        }
    }

    impl Drop for Tmp {
        fn drop(&mut self) {
            for m in self.mounts.iter().rev() {
                let _ = sys::umount(m, libc::MNT_DETACH);
            }
            let _ = fs::remove_dir_all(&self.path);
        }
    }

    fn is_root() -> bool {
        // SAFETY: geteuid takes no arguments and cannot fail.
        unsafe { libc::geteuid() == 0 }
    }

    /// type, mode, uid, gid, mtime (s, ns), content or target, rdev; per relative path.
    type Snap = BTreeMap<PathBuf, (char, u32, u32, u32, (i64, i64), Vec<u8>, u64)>;

    fn snapshot(root: &Path) -> Snap {
        fn walk(root: &Path, dir: &Path, out: &mut Snap) {
            for e in fs::read_dir(dir).unwrap() {
                let p = e.unwrap().path();
                let m = fs::symlink_metadata(&p).unwrap();
                let ft = m.file_type();
                let (kind, data) = if ft.is_dir() {
                    ('d', Vec::new())
                } else if ft.is_symlink() {
                    (
                        'l',
                        fs::read_link(&p)
                            .unwrap()
                            .into_os_string()
                            .into_encoded_bytes(),
                    )
                } else if ft.is_file() {
                    ('f', fs::read(&p).unwrap())
                } else if ft.is_fifo() {
                    ('p', Vec::new())
                } else if ft.is_char_device() {
                    ('c', Vec::new())
                } else {
                    ('?', Vec::new())
                };
                let rel = p.strip_prefix(root).unwrap().to_path_buf();
                // A directory's mtime is checked after its children were written.
                out.insert(
                    rel,
                    (
                        kind,
                        m.mode(),
                        m.uid(),
                        m.gid(),
                        (m.mtime(), m.mtime_nsec()),
                        data,
                        m.rdev(),
                    ),
                );
                if ft.is_dir() {
                    walk(root, &p, out);
                }
            }
        }
        let mut out = Snap::new();
        walk(root, root, &mut out);
        out
    }

    /// A source tree with every kind of entry init's root has, odd modes and fixed times.
    fn make_tree(src: &Path) {
        fs::create_dir_all(src.join("bin")).unwrap();
        fs::create_dir_all(src.join("etc/axion/services")).unwrap();
        fs::create_dir_all(src.join("private")).unwrap();
        fs::create_dir_all(src.join("tmp")).unwrap();
        fs::write(src.join("bin/busybox"), b"\x7fELF pretend").unwrap();
        symlink("busybox", src.join("bin/sh")).unwrap();
        symlink("/nowhere/at/all", src.join("bin/dangling")).unwrap();
        fs::hard_link(src.join("bin/busybox"), src.join("bin/busybox-hardlink")).unwrap();
        fs::write(src.join("etc/hostname"), b"axion\n").unwrap();
        fs::write(
            src.join("etc/axion/services/engine.toml"),
            b"command = \"/usr/bin/engine\"\n",
        )
        .unwrap();
        fs::write(src.join("bin/su"), b"setuid").unwrap();
        fs::write(src.join("private/secret"), b"key").unwrap();
        let fifo = src.join("etc/fifo");
        sys::mknod(&fifo, libc::S_IFIFO | 0o640, 0).unwrap();
        if is_root() {
            sys::mknod(
                &src.join("etc/null"),
                libc::S_IFCHR | 0o666,
                libc::makedev(1, 3),
            )
            .unwrap();
            std::os::unix::fs::lchown(src.join("etc/hostname"), Some(1234), Some(5678)).unwrap();
            std::os::unix::fs::lchown(src.join("bin/sh"), Some(42), Some(43)).unwrap();
        }
        for (p, mode) in [
            ("bin/su", 0o4755),
            ("private", 0o700),
            ("private/secret", 0o600),
            ("tmp", 0o1777),
            ("etc/hostname", 0o644),
            ("bin/busybox", 0o755),
        ] {
            fs::set_permissions(src.join(p), fs::Permissions::from_mode(mode)).unwrap();
        }
        // Times last, leaves first (writing into a directory changes its mtime).
        let mut t = 1_700_000_000i64;
        for p in [
            "bin/sh",
            "bin/dangling",
            "bin/busybox",
            "bin/su",
            "etc/hostname",
            "etc/fifo",
            "etc/axion/services/engine.toml",
            "private/secret",
            "etc/axion/services",
            "etc/axion",
            "etc",
            "private",
            "tmp",
            "bin",
        ] {
            sys::set_times_nofollow(&src.join(p), (t, 5), (t, 123_456_789)).unwrap();
            t += 1000;
        }
    }

    #[test]
    fn copy_preserves_types_modes_owners_links_and_times() {
        let tmp = Tmp::new("copy");
        let (src, dst) = (tmp.path.join("src"), tmp.path.join("dst"));
        fs::create_dir(&src).unwrap();
        make_tree(&src);
        fs::set_permissions(&src, fs::Permissions::from_mode(0o755)).unwrap();
        sys::set_times_nofollow(&src, (1, 0), (1_600_000_000, 7)).unwrap();
        fs::create_dir(&dst).unwrap();
        let stats = copy_tree(&src, &dst, &[]).unwrap();

        assert_eq!(snapshot(&src), snapshot(&dst));
        let (s, d) = (fs::metadata(&src).unwrap(), fs::metadata(&dst).unwrap());
        assert_eq!(
            (d.mode(), d.mtime(), d.mtime_nsec()),
            (s.mode(), s.mtime(), s.mtime_nsec()),
            "the root's own attributes"
        );
        // The hard link is still one file, not two copies.
        let a = fs::metadata(dst.join("bin/busybox")).unwrap();
        let b = fs::metadata(dst.join("bin/busybox-hardlink")).unwrap();
        assert_eq!(a.ino(), b.ino());
        assert_eq!(a.nlink(), 2);
        assert_ne!(
            a.ino(),
            fs::metadata(src.join("bin/busybox")).unwrap().ino(),
            "a copy, not the source"
        );
        assert_eq!(
            fs::metadata(dst.join("bin/su")).unwrap().mode() & 0o7777,
            0o4755,
            "setuid bit kept"
        );
        let expect_nodes = if is_root() { 2 } else { 1 };
        assert_eq!(
            stats,
            CopyStats {
                files: 5,
                bytes: 12 + 6 + 28 + 6 + 3,
                dirs: 6,
                symlinks: 2,
                hardlinks: 1,
                nodes: expect_nodes,
                mount_points: 0
            }
        );
        if is_root() {
            let n = fs::symlink_metadata(dst.join("etc/null")).unwrap();
            assert!(n.file_type().is_char_device() && n.rdev() == libc::makedev(1, 3));
            let h = fs::metadata(dst.join("etc/hostname")).unwrap();
            assert_eq!((h.uid(), h.gid()), (1234, 5678));
        } else {
            test_skip::skip("not root: device nodes and other owners are not tested");
        }
    }

    #[test]
    fn copy_skips_excluded_paths_and_does_not_cross_mounts() {
        let mut tmp = Tmp::new("xdev");
        let (src, dst) = (tmp.path.join("src"), tmp.path.join("dst"));
        fs::create_dir(&src).unwrap();
        fs::create_dir(&dst).unwrap();
        fs::write(src.join("file"), b"x").unwrap();
        fs::create_dir(src.join("newroot")).unwrap();
        fs::write(src.join("newroot/inside"), b"x").unwrap();
        let crossing = tmp.mount_tmpfs("src/proc");
        if crossing {
            fs::write(src.join("proc/not-copied"), b"other filesystem").unwrap();
        }
        let excluded = src.join("newroot");
        let stats = copy_tree(&src, &dst, &[excluded.as_path()]).unwrap();
        assert!(dst.join("file").exists());
        assert!(!dst.join("newroot").exists(), "an excluded path was copied");
        if crossing {
            assert_eq!(stats.mount_points, 1);
            let p = fs::metadata(dst.join("proc")).unwrap();
            assert!(p.is_dir());
            assert_eq!(
                p.mode() & 0o7777,
                0o711,
                "the mount point keeps the mounted root's mode"
            );
            assert_eq!(
                fs::read_dir(dst.join("proc")).unwrap().count(),
                0,
                "copied across a mount point"
            );
        }
    }

    #[test]
    fn copy_stops_at_an_error() {
        let tmp = Tmp::new("err");
        let (src, dst) = (tmp.path.join("src"), tmp.path.join("dst"));
        fs::create_dir_all(src.join("a")).unwrap();
        fs::create_dir_all(dst.join("a")).unwrap(); // already there: mkdir fails
        let e = copy_tree(&src, &dst, &[]).unwrap_err();
        assert!(
            e.to_string().contains("mkdir") && e.to_string().contains("dst/a"),
            "{e}"
        );
    }

    #[test]
    fn remove_contents_deletes_all_but_other_filesystems() {
        let mut tmp = Tmp::new("rm");
        let root = tmp.path.join("old");
        fs::create_dir(&root).unwrap();
        make_tree(&root);
        // Read-only directories and files do not stop root's unlinkat; this one is 0500.
        fs::set_permissions(root.join("private"), fs::Permissions::from_mode(0o500)).unwrap();
        let crossing = tmp.mount_tmpfs("old/newroot");
        if crossing {
            fs::write(root.join("newroot/keep"), b"on another filesystem").unwrap();
        }
        let dir = fs::File::open(&root).unwrap();
        let dev = dir.metadata().unwrap().dev();
        let (mut removed, mut errors) = (0, Vec::new());
        remove_contents(
            dir.as_raw_fd(),
            dev,
            Path::new("old"),
            &mut removed,
            &mut errors,
        );
        if !is_root() {
            // Without root, a 0500 directory's entries cannot be unlinked.
            test_skip::skip(format_args!(
                "not root: expecting an error for private/ ({errors:?})"
            ));
            return;
        }
        assert!(errors.is_empty(), "{errors:?}");
        let left: Vec<OsString> = fs::read_dir(&root)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        if crossing {
            assert_eq!(
                left,
                vec![OsString::from("newroot")],
                "only the mount point stays"
            );
            assert_eq!(
                fs::read(root.join("newroot/keep")).unwrap(),
                b"on another filesystem"
            );
        } else {
            assert!(left.is_empty(), "{left:?}");
        }
        // Every entry make_tree made: 6 directories, 6 file names, 2 symlinks, 2 nodes.
        assert_eq!(removed, 16);
        assert!(root.is_dir(), "the directory itself stays");
    }
}
