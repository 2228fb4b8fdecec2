//! Thin, safe wrappers over the few syscalls init makes. Every `unsafe` block lives here (or
//! in the spawner's `pre_exec`) and says why it is sound. Errors are `io::Error`s; callers
//! add the path or object they were working on.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::time::Duration;

fn cstr(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL byte in string"))
}

fn path_cstr(p: &Path) -> io::Result<CString> {
    use std::os::unix::ffi::OsStrExt;
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL byte in path"))
}

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// mount(2). `data` is the comma-separated option string, if any.
pub fn mount(
    source: &str,
    target: &Path,
    fstype: &str,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> io::Result<()> {
    let source = cstr(source)?;
    let target = path_cstr(target)?;
    let fstype = cstr(fstype)?;
    let data = data.map(cstr).transpose()?;
    let data_ptr = data
        .as_ref()
        .map_or(std::ptr::null(), |d| d.as_ptr().cast());
    // SAFETY: all pointers are valid NUL-terminated strings (or null for data) that outlive
    // the call.
    check(unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            flags,
            data_ptr,
        )
    })?;
    Ok(())
}

/// umount2(2).
pub fn umount(target: &Path, flags: libc::c_int) -> io::Result<()> {
    let target = path_cstr(target)?;
    // SAFETY: target is a valid NUL-terminated string.
    check(unsafe { libc::umount2(target.as_ptr(), flags) })?;
    Ok(())
}

pub fn sethostname(name: &str) -> io::Result<()> {
    // SAFETY: pointer and length describe `name`'s bytes.
    check(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) })?;
    Ok(())
}

pub fn sync() {
    // SAFETY: sync takes no arguments and cannot fail.
    unsafe { libc::sync() }
}

/// reboot(2) with one of libc::RB_*. Only returns on error.
pub fn reboot(cmd: libc::c_int) -> io::Error {
    // SAFETY: reboot takes a plain integer command.
    unsafe { libc::reboot(cmd) };
    io::Error::last_os_error()
}

pub fn kill(pid: libc::pid_t, sig: libc::c_int) -> io::Result<()> {
    // SAFETY: kill takes plain integers.
    check(unsafe { libc::kill(pid, sig) })?;
    Ok(())
}

/// What waitpid reported about one child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    Exited(i32),
    Signaled(i32),
}

impl ExitStatus {
    pub fn success(self) -> bool {
        self == ExitStatus::Exited(0)
    }
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitStatus::Exited(c) => write!(f, "exit status {c}"),
            ExitStatus::Signaled(s) => write!(f, "killed by signal {s}"),
        }
    }
}

/// Reaps one exited child, if any: `Ok(None)` when no child has exited (or none exist).
pub fn reap_one() -> io::Result<Option<(libc::pid_t, ExitStatus)>> {
    let mut status: libc::c_int = 0;
    // SAFETY: status is a valid out pointer.
    let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
    if pid == 0 {
        return Ok(None);
    }
    if pid < 0 {
        let e = io::Error::last_os_error();
        return if e.raw_os_error() == Some(libc::ECHILD) {
            Ok(None)
        } else {
            Err(e)
        };
    }
    let st = if libc::WIFEXITED(status) {
        ExitStatus::Exited(libc::WEXITSTATUS(status))
    } else {
        ExitStatus::Signaled(libc::WTERMSIG(status))
    };
    Ok(Some((pid, st)))
}

/// True when this process has no children left at all.
pub fn no_children() -> bool {
    // SAFETY: siginfo_t is plain data: all zeroes is a valid value.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: info is a valid, writable siginfo_t; WNOHANG|WNOWAIT neither blocks nor reaps.
    let r = unsafe {
        libc::waitid(
            libc::P_ALL,
            0,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    r < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ECHILD)
}

/// Blocks every signal in this thread and returns a signalfd for the ones init handles.
pub fn block_signals_signalfd() -> io::Result<OwnedFd> {
    // SAFETY: set is initialised by sigfillset before use; pointers are valid.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut set);
        check(libc::sigprocmask(
            libc::SIG_BLOCK,
            &set,
            std::ptr::null_mut(),
        ))?;
        let fd = check(libc::signalfd(
            -1,
            &set,
            libc::SFD_CLOEXEC | libc::SFD_NONBLOCK,
        ))?;
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

/// Reads one pending signal number from a signalfd, or None when there is none.
pub fn read_signal(fd: &OwnedFd) -> io::Result<Option<i32>> {
    // SAFETY: signalfd_siginfo is plain data; we read exactly its size into it.
    let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::signalfd_siginfo>();
    // SAFETY: we read at most size bytes into info, which is exactly that large.
    let n = unsafe {
        libc::read(
            fd.as_raw_fd(),
            (&mut info as *mut libc::signalfd_siginfo).cast(),
            size,
        )
    };
    if n < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::WouldBlock {
            Ok(None)
        } else {
            Err(e)
        };
    }
    if n as usize != size {
        return Ok(None);
    }
    Ok(Some(info.ssi_signo as i32))
}

pub struct Epoll {
    fd: OwnedFd,
}

impl Epoll {
    pub fn new() -> io::Result<Epoll> {
        // SAFETY: epoll_create1 returns a new fd that we own.
        let fd = check(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        Ok(Epoll {
            // SAFETY: fd was just created and is owned by nobody else.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Watches `fd` for input; `token` comes back with its events.
    pub fn add(&self, fd: RawFd, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLHUP) as u32,
            u64: token,
        };
        // SAFETY: ev is a valid epoll_event.
        check(unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) })?;
        Ok(())
    }

    pub fn delete(&self, fd: RawFd) {
        // SAFETY: a null event is allowed for EPOLL_CTL_DEL; errors (fd already gone) are moot.
        unsafe {
            libc::epoll_ctl(
                self.fd.as_raw_fd(),
                libc::EPOLL_CTL_DEL,
                fd,
                std::ptr::null_mut(),
            )
        };
    }

    /// Waits for events up to `timeout` (None = forever); returns the ready tokens.
    pub fn wait(&self, timeout: Option<Duration>, out: &mut Vec<u64>) -> io::Result<()> {
        out.clear();
        let ms = match timeout {
            None => -1,
            // Round up so a deadline is never reported early (no busy loop at the edge).
            Some(d) => d.as_micros().div_ceil(1000).min(i32::MAX as u128) as libc::c_int,
        };
        let mut evs = [libc::epoll_event { events: 0, u64: 0 }; 32];
        // SAFETY: evs is a valid buffer of evs.len() events.
        let n = unsafe {
            libc::epoll_wait(self.fd.as_raw_fd(), evs.as_mut_ptr(), evs.len() as i32, ms)
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(())
            } else {
                Err(e)
            };
        }
        for ev in evs.iter().take(n as usize) {
            let token = ev.u64;
            out.push(token);
        }
        Ok(())
    }
}

/// Seconds since boot, including time suspended (CLOCK_BOOTTIME).
pub fn boottime() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Fills `buf` from the kernel RNG without blocking (GRND_INSECURE before the pool is ready).
pub fn getrandom(buf: &mut [u8]) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: rest is a valid writable buffer of rest.len() bytes.
        let n =
            unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), libc::GRND_INSECURE) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        done += n as usize;
    }
    Ok(())
}

/// A pipe whose both ends are close-on-exec; the read end is non-blocking.
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: fds is a valid array of two ints.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: both fds were just created and are owned by nobody else.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    set_nonblocking(r.as_raw_fd())?;
    Ok((r, w))
}

pub fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on an fd we hold with plain integer arguments.
    unsafe {
        let fl = check(libc::fcntl(fd, libc::F_GETFL))?;
        check(libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK))?;
    }
    Ok(())
}

/// read(2) that maps EAGAIN to `Ok(None)`.
pub fn read_nb(fd: RawFd, buf: &mut [u8]) -> io::Result<Option<usize>> {
    // SAFETY: buf is a valid writable buffer.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(None),
            _ => Err(e),
        };
    }
    Ok(Some(n as usize))
}

/// Whether `fd` is open in this process.
pub fn fd_is_open(fd: RawFd) -> bool {
    // SAFETY: F_GETFD only queries the descriptor table.
    unsafe { libc::fcntl(fd, libc::F_GETFD) >= 0 }
}

/// dup2(2).
pub fn dup2(old: RawFd, new: RawFd) -> io::Result<()> {
    // SAFETY: plain integer arguments.
    check(unsafe { libc::dup2(old, new) })?;
    Ok(())
}

/// Generic ioctl with a pointer argument.
///
/// # Safety
/// `arg` must point to memory of the type and size that `req` expects on `fd`.
pub unsafe fn ioctl_ptr<T>(fd: RawFd, req: libc::c_ulong, arg: *mut T) -> io::Result<libc::c_int> {
    check(libc::ioctl(fd, req as _, arg))
}

/// A socket(2) owned fd.
pub fn socket(domain: libc::c_int, ty: libc::c_int, proto: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: plain integer arguments; the result is a fresh fd we own.
    let fd = check(unsafe { libc::socket(domain, ty | libc::SOCK_CLOEXEC, proto) })?;
    // SAFETY: fd was just returned by socket(2) and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub fn setsockopt_int(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    val: libc::c_int,
) -> io::Result<()> {
    // SAFETY: val is a valid c_int for the given size.
    check(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&val as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as u32,
        )
    })?;
    Ok(())
}

pub fn setsockopt_bytes(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    val: &[u8],
) -> io::Result<()> {
    // SAFETY: pointer and length describe val.
    check(unsafe { libc::setsockopt(fd, level, name, val.as_ptr().cast(), val.len() as u32) })?;
    Ok(())
}

/// Interface index by name.
pub fn if_nametoindex(name: &str) -> io::Result<u32> {
    let c = cstr(name)?;
    // SAFETY: c is a valid NUL-terminated string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if i == 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(i)
    }
}

/// mknod(2): a device node, FIFO or socket with `mode` (type and permission bits).
pub fn mknod(path: &Path, mode: u32, dev: u64) -> io::Result<()> {
    let p = path_cstr(path)?;
    // SAFETY: p is a valid NUL-terminated string; mode and dev are plain integers.
    check(unsafe { libc::mknod(p.as_ptr(), mode as libc::mode_t, dev as libc::dev_t) })?;
    Ok(())
}

/// utimensat(2) with AT_SYMLINK_NOFOLLOW: sets a path's access and modification times
/// (seconds, nanoseconds) without following a final symlink.
pub fn set_times_nofollow(path: &Path, atime: (i64, i64), mtime: (i64, i64)) -> io::Result<()> {
    let p = path_cstr(path)?;
    let ts = [
        libc::timespec {
            tv_sec: atime.0 as _,
            tv_nsec: atime.1 as _,
        },
        libc::timespec {
            tv_sec: mtime.0 as _,
            tv_nsec: mtime.1 as _,
        },
    ];
    // SAFETY: p is a valid string, ts an array of two timespecs as utimensat expects.
    check(unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            p.as_ptr(),
            ts.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    Ok(())
}

pub fn chroot(path: &Path) -> io::Result<()> {
    let p = path_cstr(path)?;
    // SAFETY: p is a valid NUL-terminated string.
    check(unsafe { libc::chroot(p.as_ptr()) })?;
    Ok(())
}

/// Bytes in use on the filesystem holding `path` (statfs: blocks minus free blocks).
pub fn statfs_used(path: &Path) -> io::Result<u64> {
    let p = path_cstr(path)?;
    // SAFETY: st is plain data filled by statfs; p is a valid string.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: p is a valid C string and st a writable statfs.
    check(unsafe { libc::statfs(p.as_ptr(), &mut st) })?;
    Ok((st.f_blocks as u64).saturating_sub(st.f_bfree as u64) * st.f_bsize as u64)
}

/// execve(2). Only returns on error.
pub fn execve(
    path: &Path,
    args: &[std::ffi::OsString],
    env: &[(std::ffi::OsString, std::ffi::OsString)],
) -> io::Error {
    use std::os::unix::ffi::OsStrExt;
    let build = || -> io::Result<(CString, Vec<CString>, Vec<CString>)> {
        let p = path_cstr(path)?;
        let mut a = Vec::with_capacity(args.len());
        for x in args {
            a.push(CString::new(x.as_bytes()).map_err(|_| {
                io::Error::new(io::ErrorKind::InvalidInput, "NUL byte in argument")
            })?);
        }
        let mut e = Vec::with_capacity(env.len());
        for (k, v) in env {
            let mut kv = k.as_bytes().to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            e.push(CString::new(kv).map_err(|_| {
                io::Error::new(io::ErrorKind::InvalidInput, "NUL byte in environment")
            })?);
        }
        Ok((p, a, e))
    };
    let (p, a, e) = match build() {
        Ok(x) => x,
        Err(err) => return err,
    };
    let mut argv: Vec<*const libc::c_char> = a.iter().map(|s| s.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = e.iter().map(|s| s.as_ptr()).collect();
    envp.push(std::ptr::null());
    // SAFETY: p, argv and envp are valid NUL-terminated strings and NULL-terminated arrays
    // of them, all alive for the call.
    unsafe { libc::execve(p.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    io::Error::last_os_error()
}

fn name_cstr(name: &std::ffi::OsStr) -> io::Result<CString> {
    use std::os::unix::ffi::OsStrExt;
    CString::new(name.as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL byte in name"))
}

/// fstatat(2) with AT_SYMLINK_NOFOLLOW: `name` in directory `dir`.
pub fn lstat_at(dir: RawFd, name: &std::ffi::OsStr) -> io::Result<libc::stat> {
    let n = name_cstr(name)?;
    // SAFETY: st is plain data filled by fstatat; n is a valid string.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: n is a valid C string and st a writable stat.
    check(unsafe { libc::fstatat(dir, n.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) })?;
    Ok(st)
}

/// Opens the directory `name` in `dir` without following a symlink.
pub fn open_dir_at(dir: RawFd, name: &std::ffi::OsStr) -> io::Result<OwnedFd> {
    let n = name_cstr(name)?;
    // SAFETY: n is a valid string; the result is a fresh fd we own.
    let fd = check(unsafe {
        libc::openat(
            dir,
            n.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: fd was just returned by openat(2) and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// unlinkat(2); `flags` 0 or AT_REMOVEDIR.
pub fn unlink_at(dir: RawFd, name: &std::ffi::OsStr, flags: libc::c_int) -> io::Result<()> {
    let n = name_cstr(name)?;
    // SAFETY: n is a valid string.
    check(unsafe { libc::unlinkat(dir, n.as_ptr(), flags) })?;
    Ok(())
}

/// The entry names of the open directory `dir` (without `.` and `..`).
pub fn dir_names(dir: RawFd) -> io::Result<Vec<std::ffi::OsString>> {
    use std::os::unix::ffi::OsStrExt;
    // fdopendir takes the descriptor over: give it a duplicate, rewound.
    // SAFETY: plain integer arguments; the duplicate is owned by the DIR stream below.
    let dup = check(unsafe { libc::fcntl(dir, libc::F_DUPFD_CLOEXEC, 0) })?;
    // SAFETY: dup is a valid directory fd we own; on failure we close it ourselves.
    let d = unsafe { libc::fdopendir(dup) };
    if d.is_null() {
        let e = io::Error::last_os_error();
        // SAFETY: dup is ours and not owned by a DIR stream.
        unsafe { libc::close(dup) };
        return Err(e);
    }
    let mut names = Vec::new();
    // SAFETY: d is a valid DIR stream until closedir; each dirent is read before the next
    // readdir call.
    unsafe {
        libc::rewinddir(d);
        loop {
            let ent = libc::readdir(d);
            if ent.is_null() {
                break;
            }
            let name = std::ffi::CStr::from_ptr((*ent).d_name.as_ptr());
            let b = name.to_bytes();
            if b != b"." && b != b".." {
                names.push(std::ffi::OsStr::from_bytes(b).to_os_string());
            }
        }
        libc::closedir(d);
    }
    Ok(names)
}
