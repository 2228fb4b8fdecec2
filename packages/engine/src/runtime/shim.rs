//! The shim side (runs in a fresh single-threaded process, no async runtime).
//! `__run`: unshare mount/uts/ipc/pid (+net) namespaces, fork PID 1, which mounts the
//! overlay root, /proc, /dev, /sys, binds, pivots into the root, drops to the user and
//! execs; the shim stays as its monitor (super::monitor). `__exec`: setns into an existing
//! container's namespaces, fork, exec.

use super::{ExecSpec, Process, RunSpec};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};
use std::ffi::CString;
use std::fs;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::{Path, PathBuf};

const STATUS_FD: i32 = 3;
const RELEASE_FD: i32 = 4;
/// For TTY containers and exec sessions: where the pty master goes (see `console`).
const CONSOLE_FD: i32 = 5;

/// Step timings for [`super::RunSpec::trace`]: (step, seconds since the shim started).
static TRACE: std::sync::Mutex<Vec<(&'static str, f64)>> = std::sync::Mutex::new(Vec::new());
static TRACE_ON: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
static T0: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();

fn mark(step: &'static str) {
    if TRACE_ON.load(std::sync::atomic::Ordering::Relaxed) {
        let t = T0
            .get_or_init(std::time::Instant::now)
            .elapsed()
            .as_secs_f64();
        TRACE
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((step, t));
    }
}

/// Sends the steps marked so far as one `trace` line (and forgets them).
fn report_trace(who: &str) {
    if TRACE_ON.load(std::sync::atomic::Ordering::Relaxed) {
        let steps: Vec<String> = TRACE
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
            .map(|(s, t)| format!("{s} +{t:.3}"))
            .collect();
        report(&format!("trace {who}: {}\n", steps.join(", ")));
    }
}

fn report(msg: &str) {
    // SAFETY: fd 3 is the status pipe the engine gave us; ManuallyDrop keeps it open.
    let mut f = std::mem::ManuallyDrop::new(unsafe { fs::File::from_raw_fd(STATUS_FD) });
    let _ = f.write_all(msg.as_bytes());
}

fn close(fd: i32) {
    // SAFETY: closing a descriptor number we own.
    unsafe {
        libc::close(fd);
    }
}

fn set_cloexec(fd: i32) {
    // SAFETY: fcntl on a descriptor we own.
    unsafe {
        libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
    }
}

/// A shim's spec, by its mode.
#[derive(Debug)]
enum Spec {
    /// Boxed, both: the specs are large and of different sizes.
    Run(Box<RunSpec>),
    Exec(Box<ExecSpec>),
}

/// `MODE SPEC`, the shim's arguments.
fn parse_args(argv: &[String]) -> Option<(&str, &str)> {
    match argv {
        [m, s] => Some((m.as_str(), s.as_str())),
        _ => None,
    }
}

/// The spec at `path` (its bytes `data`) for `mode`: None for a mode that is not a shim's,
/// Err with the message to report.
fn parse_spec(mode: &str, path: &str, data: &[u8]) -> Option<Result<Spec, String>> {
    let bad = |e: serde_json::Error| format!("bad spec {path}: {e}");
    match mode {
        "__run" => Some(
            serde_json::from_slice(data)
                .map(|s| Spec::Run(Box::new(s)))
                .map_err(bad),
        ),
        "__exec" => Some(
            serde_json::from_slice(data)
                .map(|s| Spec::Exec(Box::new(s)))
                .map_err(bad),
        ),
        _ => None,
    }
}

pub fn main(argv: &[String]) -> i32 {
    let Some((mode, spec)) = parse_args(argv) else {
        eprintln!("engine shim: usage: engine __run|__exec SPEC");
        return 125;
    };
    // A pre-spawned shim (super::Prespawned) learns its spec's path only now.
    let waited;
    let spec = if spec == super::SPEC_ON_RELEASE_FD {
        match read_line_from(RELEASE_FD) {
            Some(p) => {
                waited = p;
                waited.as_str()
            }
            // The engine let it go unused (it stopped, or gave the container another shim).
            None => return 125,
        }
    } else {
        spec
    };
    // The trace's zero: the shim's start, or a pre-spawned one's spec.
    T0.get_or_init(std::time::Instant::now);
    let data = match fs::read(spec) {
        Ok(d) => d,
        Err(e) => {
            report(&format!("error reading spec {spec}: {e}\n"));
            return 125;
        }
    };
    match parse_spec(mode, spec, &data) {
        Some(Ok(Spec::Run(s))) => {
            TRACE_ON.store(s.trace, std::sync::atomic::Ordering::Relaxed);
            mark("spec read");
            run(*s)
        }
        Some(Ok(Spec::Exec(s))) => exec(*s),
        Some(Err(msg)) => {
            report(&format!("error {msg}\n"));
            125
        }
        None => 125,
    }
}

/// One line from `fd`, read a byte at a time so that nothing after it is consumed (the
/// container process reads its release byte from the same pipe); None at EOF.
fn read_line_from(fd: i32) -> Option<String> {
    let mut line = Vec::new();
    loop {
        let mut b = [0u8; 1];
        // SAFETY: reading one byte into a valid buffer.
        match unsafe { libc::read(fd, b.as_mut_ptr().cast(), 1) } {
            1 if b[0] == b'\n' => return String::from_utf8(line).ok(),
            1 => line.push(b[0]),
            n if n < 0
                && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted => {}
            _ => return None,
        }
    }
}

/// Waits for the child and turns its status into an exit code (128+signal if killed).
fn wait_for(child: Pid) -> i32 {
    loop {
        match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, c)) => return c,
            Ok(WaitStatus::Signaled(_, s, _)) => return 128 + s as i32,
            Ok(_) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return 255,
        }
    }
}

fn run(spec: RunSpec) -> i32 {
    // The monitor's ends, made before the namespaces: its socket, the container's streams.
    let listener = match super::monitor::listen(&spec.state_dir) {
        Ok(l) => l,
        Err(e) => {
            report(&format!(
                "error listening on {}/{}: {e}\n",
                spec.state_dir.display(),
                super::monitor::SOCKET
            ));
            return 125;
        }
    };
    // The monitor's own complaints (a panic's message) go to `shim.log` beside its socket:
    // its stderr was /dev/null, and the engine may be gone. The container's process gets its
    // own fds 0-2 (Streams).
    if let Ok(f) = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(spec.state_dir.join("shim.log"))
    {
        // SAFETY: dup2 of a descriptor we own onto stderr, in a single-threaded process.
        unsafe {
            libc::dup2(f.as_raw_fd(), 2);
        }
    }
    let streams = match Streams::new(spec.process.tty, spec.open_stdin) {
        Ok(s) => s,
        Err(e) => {
            report(&format!("error creating the container's streams: {e}\n"));
            return 125;
        }
    };
    // The monitor goes back to this mount namespace after the fork: the container's PID 1
    // shares the new one and pivots its root, which would move the monitor's root and
    // working directory into the container (and its exit file, log and socket out of reach).
    let host_mnt = match fs::File::open("/proc/self/ns/mnt") {
        Ok(f) => f,
        Err(e) => {
            report(&format!("error opening /proc/self/ns/mnt: {e}\n"));
            return 125;
        }
    };
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&spec.log_path)
        .ok();
    let mut flags = CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWIPC;
    if !spec.host_pid {
        flags |= CloneFlags::CLONE_NEWPID;
    }
    if !spec.host_uts {
        flags |= CloneFlags::CLONE_NEWUTS;
    }
    if spec.new_netns {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    if let Some(p) = &spec.join_netns {
        let joined = std::fs::File::open(p)
            .map_err(|e| e.to_string())
            .and_then(|f| {
                nix::sched::setns(f, CloneFlags::CLONE_NEWNET).map_err(|e| e.to_string())
            });
        if let Err(e) = joined {
            report(&format!(
                "error joining the network namespace {}: {e}\n",
                p.display()
            ));
            return 125;
        }
    }
    if let Err(e) = unshare(flags) {
        report(&format!("error creating namespaces: {e}\n"));
        return 125;
    }
    mark("namespaces");
    // SAFETY: this process is single-threaded (a fresh exec of the engine in shim mode).
    match unsafe { fork() } {
        Err(e) => {
            report(&format!("error fork: {e}\n"));
            125
        }
        Ok(ForkResult::Child) => {
            drop(host_mnt);
            streams.install_in_child();
            set_cloexec(STATUS_FD);
            set_cloexec(CONSOLE_FD);
            let mut b = [0u8; 1];
            // SAFETY: reading one byte from the release pipe into a valid buffer.
            let n = unsafe { libc::read(RELEASE_FD, b.as_mut_ptr().cast(), 1) };
            close(RELEASE_FD);
            if n != 1 {
                // SAFETY: _exit is always safe.
                unsafe { libc::_exit(125) };
            }
            mark("released");
            exit_child(container_init(&spec))
        }
        Ok(ForkResult::Parent { child }) => {
            mark("forked");
            // Before the pid line: the container waits for its release, which the engine
            // sends only after that line, so it cannot have pivoted yet.
            if let Err(e) = nix::sched::setns(&host_mnt, CloneFlags::CLONE_NEWNS) {
                let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
                report(&format!(
                    "error returning the monitor to the host's mount namespace: {e}\n"
                ));
                return 125;
            }
            drop(host_mnt);
            report_trace("shim");
            report(&format!("pid {child}\n"));
            close(STATUS_FD);
            close(RELEASE_FD);
            // SAFETY: the monitor writes to clients that may go away; EPIPE is handled.
            unsafe {
                libc::signal(libc::SIGPIPE, libc::SIG_IGN);
            }
            let m = streams.into_monitor(child.as_raw(), spec.state_dir.clone(), listener, log);
            m.run() as i32
        }
    }
}

/// The container's standard streams, made by the shim before the fork: pipes (stdin a pipe
/// too with `-i`, else the shim's /dev/null), or the console socket on which the
/// container's process sends its terminal's master (TTY).
struct Streams {
    out: Option<(fs::File, fs::File)>,
    err: Option<(fs::File, fs::File)>,
    stdin: Option<(fs::File, fs::File)>,
    console: Option<(
        std::os::unix::net::UnixStream,
        std::os::unix::net::UnixStream,
    )>,
}

fn cloexec_pipe() -> std::io::Result<(fs::File, fs::File)> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(std::io::Error::from)?;
    Ok((fs::File::from(r), fs::File::from(w)))
}

impl Streams {
    fn new(tty: bool, open_stdin: bool) -> std::io::Result<Streams> {
        if tty {
            return Ok(Streams {
                out: None,
                err: None,
                stdin: None,
                console: Some(std::os::unix::net::UnixStream::pair()?),
            });
        }
        Ok(Streams {
            out: Some(cloexec_pipe()?),
            err: Some(cloexec_pipe()?),
            stdin: if open_stdin {
                Some(cloexec_pipe()?)
            } else {
                None
            },
            console: None,
        })
    }

    /// In the forked child: its ends onto fds 0-2 (or the console socket onto fd 5).
    fn install_in_child(&self) {
        // SAFETY: dup2 onto fixed numbers in the single-threaded child; the originals are
        // close-on-exec. Stdio first: a pipe's number may be 5 (CONSOLE_FD).
        unsafe {
            if let Some((r, _)) = &self.stdin {
                libc::dup2(r.as_raw_fd(), 0);
            }
            if let Some((_, w)) = &self.out {
                libc::dup2(w.as_raw_fd(), 1);
            }
            if let Some((_, w)) = &self.err {
                libc::dup2(w.as_raw_fd(), 2);
            }
            if let Some((_, c)) = &self.console {
                libc::dup2(c.as_raw_fd(), CONSOLE_FD);
            }
        }
    }

    /// In the shim after the fork: drops the child's ends, takes the terminal (blocks until
    /// the container's process sends it or dies) and makes the monitor.
    fn into_monitor(
        self,
        pid: i32,
        dir: PathBuf,
        listener: std::os::unix::net::UnixListener,
        log: Option<fs::File>,
    ) -> super::monitor::Monitor {
        use docker_api::StdStream;
        let mut outputs = Vec::new();
        let mut stdin = None;
        let mut pty = None;
        if let Some((r, w)) = self.out {
            drop(w);
            outputs.push((StdStream::Stdout, r));
        }
        if let Some((r, w)) = self.err {
            drop(w);
            outputs.push((StdStream::Stderr, r));
        }
        if let Some((r, w)) = self.stdin {
            drop(r);
            stdin = Some(w);
        }
        if let Some((mine, theirs)) = self.console {
            drop(theirs);
            // None: the process failed before making its terminal; the monitor sees its exit.
            if let Ok(Some(m)) = super::recv_fd(mine.as_raw_fd()) {
                let m = fs::File::from(m);
                stdin = m.try_clone().ok();
                pty = m.try_clone().ok();
                outputs.push((StdStream::Stdout, m));
            }
        }
        super::monitor::Monitor {
            pid,
            outputs,
            stdin,
            pty,
            dir,
            listener,
            log,
        }
    }
}

type Fail = (i32, String);

fn err<E: std::fmt::Display>(what: impl Into<String>) -> impl FnOnce(E) -> Fail {
    let what = what.into();
    move |e| (125, format!("{what}: {e}"))
}

/// Joins a path inside the container root (the path is already absolute in the container).
fn inside(root: &Path, p: &str) -> PathBuf {
    let rel: PathBuf = Path::new(p)
        .components()
        .filter(|c| matches!(c, std::path::Component::Normal(_)))
        .collect();
    root.join(rel)
}

/// Whether `dest` is a directory in the container's root reached without a symbolic link
/// (before pivot_root a link would lead into the host's files).
fn real_dir_below(root: &Path, dest: &str) -> bool {
    let mut p = root.to_path_buf();
    for c in Path::new(dest).components() {
        if let std::path::Component::Normal(n) = c {
            p.push(n);
            match fs::symlink_metadata(&p) {
                Ok(m) if m.is_dir() => {}
                _ => return false,
            }
        }
    }
    true
}

/// Makes device node `n` in the container's root (before pivot_root: every directory on its
/// way must be a real one, made if missing; a node already there is kept, as runc does).
fn make_node(root: &Path, n: &crate::devices::Node) -> Result<(), Fail> {
    use nix::sys::stat::{makedev, mknod, Mode, SFlag};
    use std::os::unix::fs::PermissionsExt;
    let t = inside(root, &n.path);
    let mut dir = root.to_path_buf();
    let parent: Vec<_> = Path::new(&n.path)
        .parent()
        .into_iter()
        .flat_map(|p| p.components())
        .filter_map(|c| match c {
            std::path::Component::Normal(c) => Some(c.to_os_string()),
            _ => None,
        })
        .collect();
    for c in parent {
        dir.push(c);
        match fs::symlink_metadata(&dir) {
            Ok(m) if m.is_dir() => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                fs::create_dir(&dir).map_err(err(format!("creating {}", dir.display())))?;
            }
            _ => {
                return Err((
                    125,
                    format!(
                        "making device {}: {} is not a directory",
                        n.path,
                        dir.display()
                    ),
                ))
            }
        }
    }
    if fs::symlink_metadata(&t).is_ok() {
        return Ok(());
    }
    let kind = if n.block {
        SFlag::S_IFBLK
    } else {
        SFlag::S_IFCHR
    };
    let dev = makedev(u64::from(n.major), u64::from(n.minor));
    mknod(&t, kind, Mode::from_bits_truncate(n.mode), dev)
        .map_err(err(format!("making device {}", n.path)))?;
    fs::set_permissions(&t, fs::Permissions::from_mode(n.mode))
        .map_err(err(format!("chmod {}", n.path)))?;
    std::os::unix::fs::lchown(&t, Some(n.uid), Some(n.gid))
        .map_err(err(format!("chown {}", n.path)))?;
    Ok(())
}

fn dir_is_empty(p: &Path) -> bool {
    fs::read_dir(p).is_ok_and(|mut d| d.next().is_none())
}

/// Copies the tree at `from` into the (empty) directory `to`: files (hard links stay
/// links), directories, symbolic links, with their owners, modes and modification times;
/// the directory's own owner and mode too (a volume takes the image directory's). Device
/// nodes, sockets and fifos are skipped.
fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    copy_tree_in(from, to, &mut std::collections::HashMap::new())
}

fn copy_tree_in(
    from: &Path,
    to: &Path,
    links: &mut std::collections::HashMap<(u64, u64), PathBuf>,
) -> std::io::Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let own = |p: &Path, m: &fs::Metadata| -> std::io::Result<()> {
        std::os::unix::fs::lchown(p, Some(m.uid()), Some(m.gid()))?;
        if !m.file_type().is_symlink() {
            fs::set_permissions(p, fs::Permissions::from_mode(m.mode() & 0o7777))?;
            let t = nix::sys::time::TimeSpec::new(m.mtime(), m.mtime_nsec());
            let _ = nix::sys::stat::utimensat(
                None,
                p,
                &t,
                &t,
                nix::sys::stat::UtimensatFlags::NoFollowSymlink,
            );
        }
        Ok(())
    };
    for e in fs::read_dir(from)? {
        let e = e?;
        let m = e.metadata()?;
        let dst = to.join(e.file_name());
        let ft = m.file_type();
        if ft.is_dir() {
            fs::create_dir(&dst)?;
            copy_tree_in(&e.path(), &dst, links)?;
        } else if ft.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(e.path())?, &dst)?;
            own(&dst, &m)?;
        } else if ft.is_file() {
            if m.nlink() > 1 {
                if let Some(first) = links.get(&(m.dev(), m.ino())) {
                    fs::hard_link(first, &dst)?;
                    continue;
                }
                links.insert((m.dev(), m.ino()), dst.clone());
            }
            fs::copy(e.path(), &dst)?;
            own(&dst, &m)?;
        }
    }
    own(to, &fs::symlink_metadata(from)?)
}

fn mount_at(
    src: &str,
    target: &Path,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), Fail> {
    fs::create_dir_all(target).map_err(err(format!("mkdir {}", target.display())))?;
    mount(Some(src), target, Some(fstype), flags, data)
        .map_err(err(format!("mount {fstype} on {}", target.display())))
}

/// Ends a forked child that failed to become the container's process: reports why on the
/// status pipe and exits with the code Docker uses for that failure.
fn exit_child(result: Result<std::convert::Infallible, Fail>) -> ! {
    let code = match result {
        Ok(never) => match never {},
        Err((code, msg)) => {
            report(&format!("error {msg}\n"));
            code
        }
    };
    // SAFETY: _exit is always safe.
    unsafe { libc::_exit(code) }
}

fn container_init(spec: &RunSpec) -> Result<std::convert::Infallible, Fail> {
    match mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    ) {
        Ok(()) => {}
        // `/` is not a mount point: the engine runs chrooted, and pivot_root would fail too.
        Err(nix::errno::Errno::EINVAL) => {
            return Err(pivot_refused(
                "making / private failed (EINVAL): the host root is not a mount point (chroot?)",
            ))
        }
        Err(e) => return Err(err("making / private")(e)),
    }
    let root = &spec.rootfs;
    let lowers: Vec<String> = spec
        .lowers
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}{}",
        lowers.join(":"),
        spec.upper.display(),
        spec.work.display(),
        if spec.volatile { ",volatile" } else { "" }
    );
    if spec.volatile {
        // overlayfs leaves work/incompat/volatile behind and refuses the next volatile mount
        // of the same upper while it is there: a restart in the same boot (axion-vmd's
        // `docker restart`, whose VM has one boot) mounts it again. Within one boot the upper
        // is what the page cache holds, so it is consistent (the marker guards against a
        // crash, which ends the VM and its disk).
        // (The marker is a directory holding a `dirty` file.)
        let _ = fs::remove_dir_all(spec.work.join("work").join("incompat").join("volatile"));
    }
    mount_at("overlay", root, "overlay", MsFlags::empty(), Some(&opts))?;
    mark("overlay");
    let nosuid = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount_at("proc", &root.join("proc"), "proc", nosuid, None)?;
    mount_at(
        "tmpfs",
        &root.join("dev"),
        "tmpfs",
        MsFlags::MS_NOSUID,
        Some("mode=755,size=65536k"),
    )?;
    for d in ["null", "zero", "full", "random", "urandom", "tty"] {
        let t = root.join("dev").join(d);
        fs::write(&t, b"").map_err(err(format!("creating {}", t.display())))?;
        mount(
            Some(&Path::new("/dev").join(d)),
            &t,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(err(format!("binding /dev/{d}")))?;
    }
    mount_at(
        "devpts",
        &root.join("dev/pts"),
        "devpts",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
    )?;
    let _ = std::os::unix::fs::symlink("pts/ptmx", root.join("dev/ptmx"));
    mount_at(
        "shm",
        &root.join("dev/shm"),
        "tmpfs",
        nosuid,
        Some("mode=1777,size=65536k"),
    )?;
    for (l, t) in [
        ("/proc/self/fd", "fd"),
        ("/proc/self/fd/0", "stdin"),
        ("/proc/self/fd/1", "stdout"),
        ("/proc/self/fd/2", "stderr"),
    ] {
        let _ = std::os::unix::fs::symlink(l, root.join("dev").join(t));
    }
    for n in &spec.devices {
        make_node(root, n)?;
    }
    mark("proc, dev");
    if spec.new_netns {
        mount_at(
            "sysfs",
            &root.join("sys"),
            "sysfs",
            nosuid | MsFlags::MS_RDONLY,
            None,
        )?;
    } else {
        fs::create_dir_all(root.join("sys")).ok();
        mount(
            Some("/sys"),
            &root.join("sys"),
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(err("binding /sys"))?;
    }
    // Parents before children (`/a` before `/a/b`), as dockerd orders them.
    let mut binds: Vec<&crate::runtime::Bind> = spec.binds.iter().collect();
    binds.sort_by_key(|b| Path::new(&b.dest).components().count());
    for b in binds {
        let t = inside(root, &b.dest);
        if let Some(tm) = &b.tmpfs {
            fs::create_dir_all(&t).map_err(err(format!("mkdir {}", t.display())))?;
            mount(
                Some("tmpfs"),
                &t,
                Some("tmpfs"),
                MsFlags::from_bits_truncate(tm.flags),
                Some(tm.data.as_str()).filter(|d| !d.is_empty()),
            )
            .map_err(err(format!("tmpfs on {} ({})", b.dest, tm.data)))?;
            continue;
        }
        if b.copy_up && real_dir_below(root, &b.dest) && dir_is_empty(&b.source) {
            copy_tree(&t, &b.source).map_err(err(format!(
                "copying the image's {} into its volume",
                b.dest
            )))?;
        }
        if b.source.is_dir() {
            fs::create_dir_all(&t).map_err(err(format!("mkdir {}", t.display())))?;
        } else {
            if let Some(p) = t.parent() {
                fs::create_dir_all(p).ok();
            }
            if !t.exists() {
                fs::write(&t, b"").map_err(err(format!("creating {}", t.display())))?;
            }
        }
        let rec = if b.non_recursive {
            MsFlags::empty()
        } else {
            MsFlags::MS_REC
        };
        mount(
            Some(b.source.as_path()),
            &t,
            None::<&str>,
            MsFlags::MS_BIND | rec,
            None::<&str>,
        )
        .map_err(err(format!(
            "bind mount {} on {}",
            b.source.display(),
            b.dest
        )))?;
        if b.readonly {
            mount(
                None::<&str>,
                &t,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | rec,
                None::<&str>,
            )
            .map_err(err(format!("read-only remount of {}", b.dest)))?;
        }
    }
    // After the mounts (a volume at /etc must not hide them), unless one is the file itself.
    for (src, dst) in &spec.etc_files {
        if spec
            .binds
            .iter()
            .any(|b| Path::new(&b.dest) == Path::new(dst))
        {
            continue;
        }
        let t = inside(root, dst);
        if let Some(p) = t.parent() {
            fs::create_dir_all(p).ok();
        }
        if fs::symlink_metadata(&t)
            .map(|m| m.file_type().is_symlink())
            .unwrap_or(false)
        {
            fs::remove_file(&t).ok();
        }
        // A read-only mount at /etc may leave no place for the file: then it goes without.
        if !t.exists() && fs::write(&t, b"").is_err() {
            continue;
        }
        mount(
            Some(src.as_path()),
            &t,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(err(format!("binding {dst}")))?;
    }
    mark("sys, etc files, binds");
    if !spec.process.cwd.is_empty() {
        fs::create_dir_all(inside(root, &spec.process.cwd)).ok();
    }
    std::env::set_current_dir(root).map_err(err("chdir to root"))?;
    // pivot_root and nothing else: a chroot is no security boundary, and runc's --no-pivot
    // (move over `/`, chroot) keeps the host's root files under the container's root. The
    // host root must be a mount with a parent: axion's init moves itself off the initramfs's
    // initial mount (rootfs, which pivot_root cannot leave) onto a bind of it at boot; if
    // that failed, containers do not start (packages/engine/README.md, "pivot_root only").
    match nix::unistd::pivot_root(".", ".") {
        Ok(()) => umount2(".", MntFlags::MNT_DETACH).map_err(err("detaching old root"))?,
        Err(nix::errno::Errno::EINVAL) => {
            return Err(pivot_refused(
                "pivot_root into the container \
            root failed (EINVAL): the host root is not pivotable (initramfs?)",
            ))
        }
        Err(e) => return Err(err("pivot_root into the container root")(e)),
    }
    std::env::set_current_dir("/").map_err(err("chdir /"))?;
    mark("pivot_root");
    if !spec.hostname.is_empty() && !spec.host_uts {
        nix::unistd::sethostname(&spec.hostname).map_err(err("sethostname"))?;
    }
    if spec.new_netns {
        loopback_up();
    }
    start_process(&spec.process)
}

/// The error for a host root that pivot_root cannot leave.
fn pivot_refused(why: &str) -> Fail {
    (
        125,
        format!("{why}; refusing the chroot fallback, which is escapable"),
    )
}

/// Brings `lo` up in the new network namespace.
fn loopback_up() {
    // SAFETY: plain socket + ioctl with a zeroed, correctly sized ifreq.
    unsafe {
        let s = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if s < 0 {
            return;
        }
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo\0".iter().enumerate() {
            ifr.ifr_name[i] = *b as libc::c_char;
        }
        if libc::ioctl(s, libc::SIOCGIFFLAGS as _, &mut ifr) == 0 {
            ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            libc::ioctl(s, libc::SIOCSIFFLAGS as _, &ifr);
        }
        libc::close(s);
    }
}

#[derive(Debug, PartialEq, Eq)]
struct Ids {
    uid: u32,
    gid: u32,
    groups: Vec<u32>,
    home: String,
}

/// A group's id: a number, or a name in the container's /etc/group.
fn group_id(g: &str) -> Option<u32> {
    if let Ok(n) = g.parse() {
        return Some(n);
    }
    fs::read_to_string("/etc/group")
        .unwrap_or_default()
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() > 2 && f[0] == g)
        .and_then(|f| f[2].parse().ok())
}

/// Resolves `user[:group]` (names or numbers) against the container's /etc/passwd and
/// /etc/group (already the container's root).
fn resolve_user(spec: &str) -> Result<Ids, Fail> {
    let passwd = fs::read_to_string("/etc/passwd").unwrap_or_default();
    let group = fs::read_to_string("/etc/group").unwrap_or_default();
    resolve_user_in(spec, &passwd, &group)
}

/// [`resolve_user`] against the text of a passwd and a group file.
fn resolve_user_in(spec: &str, passwd: &str, group: &str) -> Result<Ids, Fail> {
    let (u, g) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let u = if u.is_empty() { "0" } else { u };
    let mut ids = Ids {
        uid: 0,
        gid: 0,
        groups: vec![],
        home: "/".into(),
    };
    let entry = passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() >= 7 && (f[0] == u || f[2] == u));
    match (entry.as_ref(), u.parse::<u32>()) {
        (Some(f), _) => {
            ids.uid = f[2].parse().unwrap_or(0);
            ids.gid = f[3].parse().unwrap_or(0);
            ids.home = f[5].to_string();
        }
        (None, Ok(n)) => {
            ids.uid = n;
            ids.gid = n;
        }
        (None, Err(_)) => {
            return Err((
                125,
                format!("unable to find user {u}: no matching entries in passwd file"),
            ))
        }
    }
    if let Some(g) = g {
        ids.gid = match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => group
                .lines()
                .map(|l| l.split(':').collect::<Vec<_>>())
                .find(|f| f.len() >= 3 && f[0] == g)
                .and_then(|f| f[2].parse().ok())
                .ok_or_else(|| {
                    (
                        125,
                        format!("unable to find group {g}: no matching entries in group file"),
                    )
                })?,
        };
    }
    let name = entry.map(|f| f[0].to_string());
    for l in group.lines() {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() >= 4 {
            if let Some(n) = &name {
                if f[3].split(',').any(|m| m == n) {
                    if let Ok(gid) = f[2].parse() {
                        ids.groups.push(gid);
                    }
                }
            }
        }
    }
    Ok(ids)
}

fn find_program(arg0: &str, env: &[String]) -> Option<PathBuf> {
    if arg0.contains('/') {
        return Some(PathBuf::from(arg0));
    }
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    path.split(':')
        .map(|d| Path::new(d).join(arg0))
        .find(|p| fs::metadata(p).map(|m| m.is_file()).unwrap_or(false))
}

/// The container's terminal: a pty from the container's own devpts (so `tty` and `ttyname`
/// name a device that exists inside), its slave on fds 0-2, its master sent to the engine
/// over the console socket (fd 5, SCM_RIGHTS), as runc's console socket does.
fn console() -> Result<(), Fail> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    // SAFETY: open/ioctl on paths and descriptors we own; the fds are owned right away.
    unsafe {
        let m = libc::open(
            c"/dev/pts/ptmx".as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        );
        if m < 0 {
            return Err((
                125,
                format!("opening /dev/pts/ptmx: {}", std::io::Error::last_os_error()),
            ));
        }
        let master = OwnedFd::from_raw_fd(m);
        let unlock: libc::c_int = 0;
        let mut n: libc::c_uint = 0;
        if libc::ioctl(m, libc::TIOCSPTLCK as _, &unlock) != 0
            || libc::ioctl(m, libc::TIOCGPTN as _, &mut n) != 0
        {
            return Err((
                125,
                format!("setting up the pty: {}", std::io::Error::last_os_error()),
            ));
        }
        let path = std::ffi::CString::new(format!("/dev/pts/{n}")).map_err(err("pty path"))?;
        let sl = libc::open(path.as_ptr(), libc::O_RDWR | libc::O_NOCTTY);
        if sl < 0 {
            return Err((
                125,
                format!("opening /dev/pts/{n}: {}", std::io::Error::last_os_error()),
            ));
        }
        super::send_fd(CONSOLE_FD, master.as_raw_fd())
            .map_err(err("sending the pty to the engine"))?;
        drop(master);
        close(CONSOLE_FD);
        for fd in 0..3 {
            libc::dup2(sl, fd);
        }
        if sl > 2 {
            close(sl);
        }
    }
    Ok(())
}

/// Sets identity, session, directory and environment, then execs (never returns Ok).
fn start_process(p: &Process) -> Result<std::convert::Infallible, Fail> {
    let ids = resolve_user(&p.user)?;
    mark("user resolved");
    let mut env = p.env.clone();
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        env.push(format!("HOME={}", ids.home));
    }
    if p.tty {
        console()?;
    }
    nix::unistd::setsid().ok();
    if p.tty {
        // SAFETY: stdin is the pty slave; make it our controlling terminal.
        unsafe {
            libc::ioctl(0, libc::TIOCSCTTY as _, 0);
        }
    }
    super::confine::apply(&p.confine).map_err(|e| (125, e))?;
    mark("confined");
    let mut groups: Vec<nix::unistd::Gid> = ids
        .groups
        .iter()
        .map(|g| nix::unistd::Gid::from_raw(*g))
        .collect();
    for g in &p.group_add {
        let gid = group_id(g).ok_or_else(|| {
            (
                126,
                format!("unable to find group {g}: no matching entries in group file\n"),
            )
        })?;
        groups.push(nix::unistd::Gid::from_raw(gid));
    }
    nix::unistd::setgroups(&groups).map_err(err("setgroups"))?;
    nix::unistd::setgid(nix::unistd::Gid::from_raw(ids.gid)).map_err(err("setgid"))?;
    nix::unistd::setuid(nix::unistd::Uid::from_raw(ids.uid)).map_err(err("setuid"))?;
    let cwd = if p.cwd.is_empty() {
        "/"
    } else {
        p.cwd.as_str()
    };
    std::env::set_current_dir(cwd).map_err(|e| {
        (
            125,
            format!("chdir to cwd (\"{cwd}\") set in config.json failed: {e}"),
        )
    })?;
    if p.args.is_empty() {
        return Err((125, "no command specified".into()));
    }
    let prog = find_program(&p.args[0], &env).ok_or_else(|| {
        (
            127,
            format!(
                "exec: \"{}\": executable file not found in $PATH",
                p.args[0]
            ),
        )
    })?;
    let cprog = CString::new(prog.as_os_str().as_encoded_bytes()).map_err(err("program path"))?;
    let argv: Vec<CString> = p
        .args
        .iter()
        .filter_map(|a| CString::new(a.as_bytes()).ok())
        .collect();
    let envp: Vec<CString> = env
        .iter()
        .filter_map(|a| CString::new(a.as_bytes()).ok())
        .collect();
    mark("program found");
    report_trace("container");
    let e = nix::unistd::execve(&cprog, &argv, &envp).unwrap_err();
    let code = if e == nix::errno::Errno::ENOENT {
        127
    } else {
        126
    };
    Err((code, format!("exec {}: {e}", prog.display())))
}

fn exec(spec: ExecSpec) -> i32 {
    close(RELEASE_FD);
    if let Some(cg) = &spec.cgroup {
        let _ = fs::write(cg.join("cgroup.procs"), std::process::id().to_string());
    }
    let mut fds = Vec::new();
    for ns in ["ipc", "uts", "net", "pid", "mnt"] {
        let p = format!("/proc/{}/ns/{ns}", spec.pid);
        match fs::File::open(&p) {
            Ok(f) => fds.push((ns, f)),
            Err(e) => {
                report(&format!("error opening {p}: {e}\n"));
                return 125;
            }
        }
    }
    // The container's root as its process sees it: after joining the mount namespace this
    // is the root to chroot into (the namespace's root after pivot_root; setns into a mount
    // namespace leaves the caller's root at the namespace's root, and the chroot makes sure).
    let root = match fs::File::open(format!("/proc/{}/root", spec.pid)) {
        Ok(f) => f,
        Err(e) => {
            report(&format!("error opening /proc/{}/root: {e}\n", spec.pid));
            return 125;
        }
    };
    for (ns, f) in &fds {
        if let Err(e) = nix::sched::setns(f, CloneFlags::empty()) {
            report(&format!("error joining {ns} namespace: {e}\n"));
            return 125;
        }
    }
    drop(fds);
    if let Err(e) = nix::unistd::fchdir(root.as_raw_fd()).and_then(|()| nix::unistd::chroot(".")) {
        report(&format!("error entering the container's root: {e}\n"));
        return 125;
    }
    drop(root);
    let _ = std::env::set_current_dir("/");
    // SAFETY: single-threaded shim process.
    match unsafe { fork() } {
        Err(e) => {
            report(&format!("error fork: {e}\n"));
            125
        }
        Ok(ForkResult::Child) => {
            set_cloexec(STATUS_FD);
            set_cloexec(CONSOLE_FD);
            exit_child(start_process(&spec.process))
        }
        Ok(ForkResult::Parent { child }) => {
            report(&format!("pid {child}\n"));
            close(STATUS_FD);
            close(CONSOLE_FD);
            close(0);
            close(1);
            close(2);
            wait_for(child)
        }
    }
}

#[cfg(test)]
mod tests;
