//! The per-container monitor, in the manner of conmon and containerd-shim: once the `__run`
//! shim has forked the container's PID 1 it stays as that process's parent and owner of its
//! standard streams, so the container outlives the engine (live-restore):
//!
//! - it writes the container's output to the container's json-file log itself, so output
//!   written while the engine is down is in the log;
//! - it records the exit code and finish time in `exit.json` beside the container's state
//!   (temp + fsync + rename) before it goes;
//! - it listens on `shim.sock` in the container's state directory (the exec root), through
//!   which a (re)started engine re-attaches.
//!
//! The shim runs in its own session (the engine starts it with `setsid`), so neither init's
//! signals to the engine service's process group nor the engine's death reach it.
//!
//! # Protocol on `shim.sock`
//!
//! A client sends one request byte, then:
//! - `A` (attach): the shim sends frames `[kind u8][len u32 BE][payload]` — [`FRAME_STDOUT`],
//!   [`FRAME_STDERR`] with the container's output from then on, and last one [`FRAME_EXIT`]
//!   ([`ExitInfo`] as JSON) once the container has exited and its output is drained.
//! - `I` (stdin): the client sends frames [`FRAME_STDIN`] (bytes for the container's stdin)
//!   and [`FRAME_CLOSE_STDIN`] (close it, for `stdin_once`). A client that goes away does not
//!   close the container's stdin: an engine that crashes must not end a `sh` reading it.
//! - `R` (resize): `h u16 BE, w u16 BE`; the shim sets the terminal's size and answers `k`.
//! - `S` (state): the shim answers one [`FRAME_STATE`] frame ([`State`] as JSON).
//!
//! Unix socket paths must fit 108 bytes and the engine's are longer
//! (`/var/lib/axion-engine/containers/<64 hex>/shim.sock`), so both sides reach the socket
//! through `/proc/self/fd/N/shim.sock` on an `O_PATH` descriptor of the directory when the
//! plain path does not fit.

use docker_api::StdStream;
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The monitor's socket, in the container's state directory.
pub const SOCKET: &str = "shim.sock";
/// The exit record, beside the container's state.json.
pub const EXIT_FILE: &str = "exit.json";

pub const REQ_ATTACH: u8 = b'A';
pub const REQ_STDIN: u8 = b'I';
pub const REQ_RESIZE: u8 = b'R';
pub const REQ_STATE: u8 = b'S';

pub const FRAME_STDOUT: u8 = 1;
pub const FRAME_STDERR: u8 = 2;
pub const FRAME_EXIT: u8 = 3;
pub const FRAME_STATE: u8 = 4;
pub const FRAME_STDIN: u8 = 5;
pub const FRAME_CLOSE_STDIN: u8 = 6;

/// Frames larger than this are a protocol error (the shim sends at most 32 KiB of output).
pub const MAX_FRAME: usize = 1 << 20;
/// After the container's PID 1 exits: how long the shim waits for its output to end.
const DRAIN: Duration = Duration::from_secs(2);
/// A client that does not read its output for this long is dropped (the container must
/// not stall on a stuck engine; its output still goes to the log).
const SEND_TIMEOUT: Duration = Duration::from_secs(2);
/// Stdin buffered in the shim before it stops reading from its stdin clients.
const STDIN_HIGH: usize = 64 * 1024;

/// How the container's PID 1 ended (the content of `exit.json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitInfo {
    pub exit_code: i64,
    /// Nanoseconds since the Unix epoch.
    pub finished_at: i128,
}

/// What `S` answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// The container's PID 1 in the engine's PID namespace.
    pub pid: i32,
    /// False between the exit and the shim's end (draining output).
    pub running: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("frame of {0} bytes exceeds the limit of {MAX_FRAME}")]
    TooLarge(usize),
    #[error("unexpected frame kind {0}")]
    Kind(u8),
    #[error("bad {what} payload: {source}")]
    Payload {
        what: &'static str,
        source: serde_json::Error,
    },
}

impl From<ProtocolError> for io::Error {
    fn from(e: ProtocolError) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }
}

pub fn encode_frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(5 + payload.len());
    v.push(kind);
    v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    v.extend_from_slice(payload);
    v
}

pub fn write_frame(w: &mut impl Write, kind: u8, payload: &[u8]) -> io::Result<()> {
    // One write for the whole frame: several writers may share a socket (dup'd stdin).
    w.write_all(&encode_frame(kind, payload))
}

/// Reads one frame; None at a clean EOF before a frame starts.
pub fn read_frame(r: &mut impl Read) -> io::Result<Option<(u8, Vec<u8>)>> {
    let mut head = [0u8; 5];
    let mut got = 0;
    while got < head.len() {
        match r.read(&mut head[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if len > MAX_FRAME {
        return Err(ProtocolError::TooLarge(len).into());
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload)?;
    Ok(Some((head[0], payload)))
}

/// Splits whole frames off the front of `buf` (a non-blocking reader's accumulator).
fn take_frames(buf: &mut Vec<u8>) -> Result<Vec<(u8, Vec<u8>)>, ProtocolError> {
    let mut out = Vec::new();
    let mut at = 0;
    while buf.len() - at >= 5 {
        let len = u32::from_be_bytes([buf[at + 1], buf[at + 2], buf[at + 3], buf[at + 4]]) as usize;
        if len > MAX_FRAME {
            return Err(ProtocolError::TooLarge(len));
        }
        if buf.len() - at - 5 < len {
            break;
        }
        out.push((buf[at], buf[at + 5..at + 5 + len].to_vec()));
        at += 5 + len;
    }
    buf.drain(..at);
    Ok(out)
}

/// A socket address for `dir/shim.sock` that fits `sun_path`.
struct SockPath {
    _dir: Option<OwnedFd>,
    path: PathBuf,
}

fn sock_path(dir: &Path) -> io::Result<SockPath> {
    let full = dir.join(SOCKET);
    if full.as_os_str().len() < 100 {
        return Ok(SockPath {
            _dir: None,
            path: full,
        });
    }
    let fd = nix::fcntl::open(
        dir,
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )?;
    // SAFETY: open just returned this descriptor and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let path = PathBuf::from(format!("/proc/self/fd/{}/{SOCKET}", fd.as_raw_fd()));
    Ok(SockPath {
        _dir: Some(fd),
        path,
    })
}

/// Binds the monitor's socket in `dir` (a stale one from an earlier run is replaced).
pub fn listen(dir: &Path) -> io::Result<UnixListener> {
    let p = sock_path(dir)?;
    let _ = std::fs::remove_file(&p.path);
    let l = UnixListener::bind(&p.path)?;
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(&p.path, std::fs::Permissions::from_mode(0o600));
    Ok(l)
}

fn remove_socket(dir: &Path) {
    if let Ok(p) = sock_path(dir) {
        let _ = std::fs::remove_file(&p.path);
    }
}

/// Connects to the monitor in `dir` and sends `req`.
pub fn connect(dir: &Path, req: u8) -> io::Result<UnixStream> {
    let p = sock_path(dir)?;
    let mut s = UnixStream::connect(&p.path)?;
    s.write_all(&[req])?;
    Ok(s)
}

/// Asks the monitor in `dir` for its state (None: no monitor answers there).
pub fn state(dir: &Path) -> io::Result<State> {
    let mut s = connect(dir, REQ_STATE)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    match read_frame(&mut s)? {
        Some((FRAME_STATE, p)) => {
            Ok(
                serde_json::from_slice(&p).map_err(|source| ProtocolError::Payload {
                    what: "state",
                    source,
                })?,
            )
        }
        Some((k, _)) => Err(ProtocolError::Kind(k).into()),
        None => Err(io::ErrorKind::UnexpectedEof.into()),
    }
}

/// Sets the container's terminal size.
pub fn resize(dir: &Path, h: u16, w: u16) -> io::Result<()> {
    let mut s = connect(dir, REQ_RESIZE)?;
    let mut m = [0u8; 4];
    m[..2].copy_from_slice(&h.to_be_bytes());
    m[2..].copy_from_slice(&w.to_be_bytes());
    s.write_all(&m)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut k = [0u8; 1];
    s.read_exact(&mut k)
}

/// A connection for the container's stdin (frames: [`write_stdin`], [`close_stdin`]).
pub fn open_stdin(dir: &Path) -> io::Result<File> {
    Ok(File::from(OwnedFd::from(connect(dir, REQ_STDIN)?)))
}

pub fn write_stdin(w: &mut impl Write, data: &[u8]) -> io::Result<()> {
    for chunk in data.chunks(32 * 1024) {
        write_frame(w, FRAME_STDIN, chunk)?;
    }
    Ok(())
}

pub fn close_stdin(w: &mut impl Write) -> io::Result<()> {
    write_frame(w, FRAME_CLOSE_STDIN, &[])
}

/// What an attach connection delivers.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    Output(StdStream, Vec<u8>),
    Exit(ExitInfo),
    /// The connection ended without an exit frame: the monitor is gone (killed).
    Gone,
}

pub struct Attached(UnixStream);

/// Attaches to the monitor in `dir`: output from now on, then its exit.
pub fn attach(dir: &Path) -> io::Result<Attached> {
    connect(dir, REQ_ATTACH).map(Attached)
}

impl Attached {
    pub fn next_event(&mut self) -> Event {
        loop {
            return match read_frame(&mut self.0) {
                Ok(Some((FRAME_STDOUT, d))) => Event::Output(StdStream::Stdout, d),
                Ok(Some((FRAME_STDERR, d))) => Event::Output(StdStream::Stderr, d),
                Ok(Some((FRAME_EXIT, d))) => match serde_json::from_slice(&d) {
                    Ok(e) => Event::Exit(e),
                    Err(_) => Event::Gone,
                },
                // Unknown kinds from a newer shim: skipped.
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => Event::Gone,
            };
        }
    }
}

pub fn exit_path(dir: &Path) -> PathBuf {
    dir.join(EXIT_FILE)
}

/// Writes `exit.json` (temp + fsync + rename + fsync of the directory).
pub fn write_exit(dir: &Path, info: &ExitInfo) -> io::Result<()> {
    let tmp = dir.join(format!("{EXIT_FILE}.tmp"));
    let data = serde_json::to_vec(info).map_err(io::Error::other)?;
    let mut f = File::create(&tmp)?;
    f.write_all(&data)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, exit_path(dir))?;
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

pub fn read_exit(dir: &Path) -> Option<ExitInfo> {
    serde_json::from_slice(&std::fs::read(exit_path(dir)).ok()?).ok()
}

/// Before a start: the last run's exit record and socket go.
pub fn clear(dir: &Path) {
    let _ = std::fs::remove_file(exit_path(dir));
    remove_socket(dir);
}

/// What a restarted engine does with a container its state says was running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Restore {
    /// Its monitor answers: it still runs; re-attach.
    Adopt { pid: i32 },
    /// It ended while the engine was away: this exit (255 and now when nothing recorded it).
    Exited(ExitInfo),
}

/// The decision for a `running` record: `answer` is the monitor's reply to `S`, `exit` the
/// exit file, `now` the time to record when neither says anything.
pub fn restore_decision(answer: io::Result<State>, exit: Option<ExitInfo>, now: i128) -> Restore {
    match (answer, exit) {
        (Ok(State { pid, running: true }), _) if pid > 0 => Restore::Adopt { pid },
        // Exiting or gone: its record if it wrote one (it writes it before it goes).
        (_, Some(e)) => Restore::Exited(e),
        (Ok(State { pid, .. }), None) if pid > 0 => Restore::Adopt { pid },
        _ => Restore::Exited(ExitInfo {
            exit_code: 255,
            finished_at: now,
        }),
    }
}

/// `pidfd_open(2)`: a descriptor that turns readable when `pid` exits.
fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: a plain syscall with integer arguments.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor to us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn set_nonblocking(fd: i32, on: bool) {
    // SAFETY: fcntl on a descriptor the caller owns.
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        if fl >= 0 {
            let fl = if on {
                fl | libc::O_NONBLOCK
            } else {
                fl & !libc::O_NONBLOCK
            };
            libc::fcntl(fd, libc::F_SETFL, fl);
        }
    }
}

/// The container's PID 1 exit status as Docker reports it (128 + signal when killed), if
/// it has exited.
fn reap(pid: i32) -> Option<i64> {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    loop {
        match waitpid(nix::unistd::Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, c)) => return Some(c as i64),
            Ok(WaitStatus::Signaled(_, s, _)) => return Some(128 + s as i64),
            Ok(WaitStatus::StillAlive) => return None,
            Ok(_) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            // Not our child any more (someone else reaped it): nothing to learn.
            Err(_) => return Some(255),
        }
    }
}

enum ClientKind {
    Attach,
    Stdin(Vec<u8>),
}

struct Client {
    sock: UnixStream,
    kind: ClientKind,
}

/// The monitor's half of a running container.
pub struct Monitor {
    /// The container's PID 1 (our child).
    pub pid: i32,
    /// Read ends of its output: stdout and stderr pipes, or the terminal's master as stdout.
    pub outputs: Vec<(StdStream, File)>,
    /// Where its stdin goes: a pipe's write end, or (TTY) a dup of the terminal's master.
    pub stdin: Option<File>,
    /// The terminal's master (TTY containers), for resize.
    pub pty: Option<File>,
    /// The state directory: `shim.sock`, `exit.json`.
    pub dir: PathBuf,
    pub listener: UnixListener,
    /// The json-file log.
    pub log: Option<File>,
}

impl Monitor {
    /// Serves until the container has exited and its output is drained; returns its code.
    pub fn run(mut self) -> i64 {
        let pidfd = pidfd_open(self.pid).ok();
        set_nonblocking(self.listener.as_raw_fd(), true);
        if let Some(s) = &self.stdin {
            set_nonblocking(s.as_raw_fd(), true);
        }
        let tty = self.pty.is_some();
        let mut clients: Vec<Client> = Vec::new();
        let mut pending: Vec<u8> = Vec::new();
        let mut close_stdin = false;
        let mut exited: Option<(i64, Instant)> = None;
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            // Which poll slot is what.
            enum Slot {
                Listener,
                Pidfd,
                Output(usize),
                Stdin,
                Client(usize),
            }
            let mut fds: Vec<libc::pollfd> = Vec::new();
            let mut slots: Vec<Slot> = Vec::new();
            let mut add = |fd: i32, events: i16, s: Slot| {
                fds.push(libc::pollfd {
                    fd,
                    events,
                    revents: 0,
                });
                slots.push(s);
            };
            add(self.listener.as_raw_fd(), libc::POLLIN, Slot::Listener);
            if exited.is_none() {
                if let Some(p) = &pidfd {
                    add(p.as_raw_fd(), libc::POLLIN, Slot::Pidfd);
                }
            }
            for (i, (_, f)) in self.outputs.iter().enumerate() {
                add(f.as_raw_fd(), libc::POLLIN, Slot::Output(i));
            }
            if let (Some(s), false) = (&self.stdin, pending.is_empty()) {
                add(s.as_raw_fd(), libc::POLLOUT, Slot::Stdin);
            }
            for (i, c) in clients.iter().enumerate() {
                let reading = match c.kind {
                    ClientKind::Attach => true,
                    ClientKind::Stdin(_) => pending.len() < STDIN_HIGH,
                };
                if reading {
                    add(c.sock.as_raw_fd(), libc::POLLIN, Slot::Client(i));
                }
            }
            let timeout = match (exited, &pidfd) {
                (Some((_, at)), _) => {
                    let left = (at + DRAIN).saturating_duration_since(Instant::now());
                    left.as_millis().min(i32::MAX as u128) as i32
                }
                // No pidfd (an old kernel): look for the exit every 50 ms.
                (None, None) => 50,
                (None, Some(_)) => -1,
            };
            // SAFETY: `fds` is a valid array of pollfd for the duration of the call.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
            if n < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                // Should not happen; do not spin.
                std::thread::sleep(Duration::from_millis(50));
            }
            let mut dead_outputs = Vec::new();
            let mut dead_clients = Vec::new();
            // New clients first: the engine connects before it releases the container, so
            // a client and the container's first output can be ready in the same poll, and
            // the output must reach the client.
            if fds[0].revents != 0 {
                self.accept(&mut clients, exited.is_none());
            }
            for (pfd, slot) in fds.iter().zip(slots.iter()) {
                if pfd.revents == 0 {
                    continue;
                }
                match *slot {
                    Slot::Listener => {}
                    Slot::Pidfd => {}
                    Slot::Output(i) => {
                        let (stream, f) = &mut self.outputs[i];
                        match f.read(&mut buf) {
                            Ok(0) => dead_outputs.push(i),
                            Ok(n) => {
                                let stream = *stream;
                                self.emit(stream, &buf[..n], &mut clients, &mut dead_clients);
                            }
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                            // EIO: a terminal whose last slave holder is gone.
                            Err(_) => dead_outputs.push(i),
                        }
                    }
                    Slot::Stdin => {
                        let r = self.stdin.as_mut().map(|s| s.write(&pending));
                        match r {
                            Some(Ok(n)) => {
                                pending.drain(..n);
                            }
                            Some(Err(e))
                                if e.kind() == io::ErrorKind::WouldBlock
                                    || e.kind() == io::ErrorKind::Interrupted => {}
                            // The container closed its stdin: what is left cannot go anywhere.
                            _ => {
                                self.stdin = None;
                                pending.clear();
                            }
                        }
                    }
                    Slot::Client(i) => {
                        let c = &mut clients[i];
                        match c.sock.read(&mut buf) {
                            Ok(0) => dead_clients.push(i),
                            Ok(n) => {
                                if let ClientKind::Stdin(acc) = &mut c.kind {
                                    acc.extend_from_slice(&buf[..n]);
                                    match take_frames(acc) {
                                        Ok(frames) => {
                                            for (k, d) in frames {
                                                match k {
                                                    FRAME_STDIN if self.stdin.is_some() => {
                                                        pending.extend_from_slice(&d)
                                                    }
                                                    FRAME_CLOSE_STDIN => close_stdin = true,
                                                    _ => {}
                                                }
                                            }
                                        }
                                        Err(_) => dead_clients.push(i),
                                    }
                                }
                                // Attach clients send nothing; whatever they send is ignored.
                            }
                            Err(e)
                                if e.kind() == io::ErrorKind::WouldBlock
                                    || e.kind() == io::ErrorKind::Interrupted => {}
                            Err(_) => dead_clients.push(i),
                        }
                    }
                }
            }
            for i in dead_outputs.into_iter().rev() {
                self.outputs.remove(i);
            }
            dead_clients.sort_unstable();
            dead_clients.dedup();
            for i in dead_clients.into_iter().rev() {
                clients.remove(i);
            }
            // stdin_once: closed when what came before the close has gone in. A terminal's
            // master stays (it is the output too).
            if close_stdin && pending.is_empty() && !tty {
                self.stdin = None;
            }
            if exited.is_none() {
                let ready = pidfd.is_none()
                    || fds
                        .iter()
                        .zip(slots.iter())
                        .any(|(p, s)| matches!(s, Slot::Pidfd) && p.revents != 0);
                if ready {
                    if let Some(code) = reap(self.pid) {
                        exited = Some((code, Instant::now()));
                    }
                }
            }
            if let Some((code, at)) = exited {
                if self.outputs.is_empty() || at.elapsed() >= DRAIN {
                    return self.finish(code, clients);
                }
            }
        }
    }

    /// Output: to the log, then to every attached client; a client that cannot take it
    /// (never waited for beyond [`SEND_TIMEOUT`]) goes into `dead`, to be dropped after the
    /// poll round (dropping it here would shift the indices the round still uses).
    fn emit(
        &mut self,
        stream: StdStream,
        data: &[u8],
        clients: &mut [Client],
        dead: &mut Vec<usize>,
    ) {
        if let Some(log) = &mut self.log {
            let f = docker_api::Frame {
                stream,
                data: bytes::Bytes::copy_from_slice(data),
            };
            let line = crate::logs::encode(
                &f,
                &docker_api::time::rfc3339(docker_api::time::now_nanos()),
            );
            let _ = log.write_all(&line);
        }
        let kind = if stream == StdStream::Stderr {
            FRAME_STDERR
        } else {
            FRAME_STDOUT
        };
        let frame = encode_frame(kind, data);
        for (i, c) in clients.iter_mut().enumerate() {
            if let ClientKind::Attach = c.kind {
                if c.sock.write_all(&frame).is_err() {
                    dead.push(i);
                }
            }
        }
    }

    fn accept(&mut self, clients: &mut Vec<Client>, running: bool) {
        loop {
            let mut s = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            };
            set_nonblocking(s.as_raw_fd(), false);
            // Only the engine (root, the socket is 0600) connects; still, a silent client
            // holds the monitor for at most this long.
            let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
            let _ = s.set_write_timeout(Some(SEND_TIMEOUT));
            let mut req = [0u8; 1];
            if s.read_exact(&mut req).is_err() {
                continue;
            }
            match req[0] {
                REQ_ATTACH => clients.push(Client {
                    sock: s,
                    kind: ClientKind::Attach,
                }),
                REQ_STDIN => {
                    set_nonblocking(s.as_raw_fd(), true);
                    clients.push(Client {
                        sock: s,
                        kind: ClientKind::Stdin(Vec::new()),
                    })
                }
                REQ_RESIZE => {
                    let mut m = [0u8; 4];
                    if s.read_exact(&mut m).is_ok() {
                        if let Some(p) = &self.pty {
                            set_winsize(p.as_raw_fd(), [m[0], m[1]], [m[2], m[3]]);
                        }
                        let _ = s.write_all(b"k");
                    }
                }
                REQ_STATE => {
                    let st = State {
                        pid: self.pid,
                        running,
                    };
                    let _ = write_frame(
                        &mut s,
                        FRAME_STATE,
                        &serde_json::to_vec(&st).unwrap_or_default(),
                    );
                }
                _ => {}
            }
        }
    }

    /// Records the exit (file first: a client that finds no socket reads the file), removes
    /// the socket, tells the attached clients.
    fn finish(self, code: i64, clients: Vec<Client>) -> i64 {
        let info = ExitInfo {
            exit_code: code,
            finished_at: docker_api::time::now_nanos(),
        };
        if let Some(mut log) = self.log {
            let _ = log.flush();
            let _ = log.sync_data();
        }
        let _ = write_exit(&self.dir, &info);
        // The socket goes before the engine hears of the exit: a restart it makes at once
        // binds the next monitor's socket at the same path, which must not be removed.
        remove_socket(&self.dir);
        let payload = serde_json::to_vec(&info).unwrap_or_default();
        for mut c in clients {
            if let ClientKind::Attach = c.kind {
                let _ = write_frame(&mut c.sock, FRAME_EXIT, &payload);
            }
        }
        code
    }
}

fn set_winsize(fd: i32, h: [u8; 2], w: [u8; 2]) {
    let ws = libc::winsize {
        ws_row: u16::from_be_bytes(h),
        ws_col: u16::from_be_bytes(w),
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ on a terminal master with a valid winsize.
    unsafe {
        libc::ioctl(fd, libc::TIOCSWINSZ as _, &ws);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    #[test]
    fn frames_round_trip_and_bad_lengths_are_errors() {
        let mut wire = encode_frame(FRAME_STDOUT, b"hello");
        wire.extend(encode_frame(FRAME_EXIT, b"{}"));
        let mut r = &wire[..];
        assert_eq!(
            read_frame(&mut r).unwrap(),
            Some((FRAME_STDOUT, b"hello".to_vec()))
        );
        assert_eq!(
            read_frame(&mut r).unwrap(),
            Some((FRAME_EXIT, b"{}".to_vec()))
        );
        assert_eq!(read_frame(&mut r).unwrap(), None);
        // A truncated header or payload, an oversized length: errors, not panics.
        assert!(read_frame(&mut &[1u8, 0, 0][..]).is_err());
        assert!(read_frame(&mut &[1u8, 0, 0, 0, 9, b'x'][..]).is_err());
        assert!(read_frame(&mut &[1u8, 0xff, 0xff, 0xff, 0xff][..]).is_err());
        // The accumulator keeps a partial frame for the next read.
        let mut acc = encode_frame(FRAME_STDIN, b"ab");
        acc.extend(&encode_frame(FRAME_CLOSE_STDIN, b"")[..3]);
        let got = take_frames(&mut acc).unwrap();
        assert_eq!(got, vec![(FRAME_STDIN, b"ab".to_vec())]);
        assert_eq!(acc.len(), 3);
        acc.extend([0, 0]);
        assert_eq!(
            take_frames(&mut acc).unwrap(),
            vec![(FRAME_CLOSE_STDIN, vec![])]
        );
        assert!(acc.is_empty());
        let mut huge = vec![FRAME_STDIN, 0xff, 0xff, 0xff, 0xff];
        assert!(take_frames(&mut huge).is_err());
    }

    #[test]
    fn exit_file_is_written_whole_and_read_back() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(read_exit(d.path()), None);
        let e = ExitInfo {
            exit_code: 7,
            finished_at: 1_700_000_000_123_456_789,
        };
        write_exit(d.path(), &e).unwrap();
        assert_eq!(read_exit(d.path()), Some(e));
        assert!(!d.path().join("exit.json.tmp").exists());
        std::fs::write(exit_path(d.path()), b"{garbage").unwrap();
        assert_eq!(read_exit(d.path()), None);
        clear(d.path());
        assert!(!exit_path(d.path()).exists());
    }

    #[test]
    fn restore_decisions() {
        let now = 42;
        let gone = || Err(io::Error::from(io::ErrorKind::ConnectionRefused));
        let exit7 = ExitInfo {
            exit_code: 7,
            finished_at: 5,
        };
        // The monitor answers and the container runs: adopted.
        assert_eq!(
            restore_decision(
                Ok(State {
                    pid: 99,
                    running: true
                }),
                None,
                now
            ),
            Restore::Adopt { pid: 99 }
        );
        // Gone, with its exit recorded: the real code and time.
        assert_eq!(
            restore_decision(gone(), Some(exit7), now),
            Restore::Exited(exit7)
        );
        // Exited and draining, file already written: the file.
        assert_eq!(
            restore_decision(
                Ok(State {
                    pid: 99,
                    running: false
                }),
                Some(exit7),
                now
            ),
            Restore::Exited(exit7)
        );
        // Draining, file not yet written: adopt, the exit frame follows on attach.
        assert_eq!(
            restore_decision(
                Ok(State {
                    pid: 99,
                    running: false
                }),
                None,
                now
            ),
            Restore::Adopt { pid: 99 }
        );
        // Gone without a record (the monitor was killed): 255, as before live-restore.
        assert_eq!(
            restore_decision(gone(), None, now),
            Restore::Exited(ExitInfo {
                exit_code: 255,
                finished_at: now
            })
        );
    }

    /// A long directory (as the engine's are) still gets a usable socket.
    #[test]
    fn socket_in_a_directory_longer_than_sun_path() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("c".repeat(64)).join("d".repeat(64));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(dir.join(SOCKET).as_os_str().len() > 108);
        let l = listen(&dir).unwrap();
        assert!(dir.join(SOCKET).exists());
        let t = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut b = [0u8; 1];
            s.read_exact(&mut b).unwrap();
            b[0]
        });
        drop(connect(&dir, REQ_STATE).unwrap());
        assert_eq!(t.join().unwrap(), REQ_STATE);
        remove_socket(&dir);
        assert!(!dir.join(SOCKET).exists());
    }

    fn pipe() -> (File, File) {
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        (File::from(r), File::from(w))
    }

    /// Starts `script` under a monitor in a thread, as the shim does with a container.
    fn monitored(dir: &Path, script: &str) -> (i32, std::thread::JoinHandle<i64>) {
        let (out_r, out_w) = pipe();
        let (err_r, err_w) = pipe();
        let (in_r, in_w) = pipe();
        let child = Command::new("/bin/sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::from(in_r))
            .stdout(Stdio::from(out_w))
            .stderr(Stdio::from(err_w))
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        // The monitor reaps it, as the shim does its container.
        drop(child);
        let m = Monitor {
            pid,
            outputs: vec![(StdStream::Stdout, out_r), (StdStream::Stderr, err_r)],
            stdin: Some(in_w),
            pty: None,
            dir: dir.to_path_buf(),
            listener: listen(dir).unwrap(),
            log: Some(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(dir.join("log.json"))
                    .unwrap(),
            ),
        };
        (pid, std::thread::spawn(move || m.run()))
    }

    fn log_lines(dir: &Path) -> Vec<(String, String)> {
        std::fs::read_to_string(dir.join("log.json"))
            .unwrap()
            .lines()
            .map(|l| {
                let v: crate::logs::Line = serde_json::from_str(l).unwrap();
                (v.stream, v.log)
            })
            .collect()
    }

    /// Attach streams output and the exit, stdin goes in and `close` ends it, the log and
    /// the exit file hold everything, the socket goes away.
    #[test]
    fn monitor_streams_output_takes_stdin_and_records_the_exit() {
        let d = tempfile::tempdir().unwrap();
        let (pid, t) = monitored(
            d.path(),
            "read a; echo \"got $a\"; echo oops >&2; cat >/dev/null; echo eof; exit 7",
        );
        let st = state(d.path()).unwrap();
        assert_eq!(st, State { pid, running: true });
        let mut a = attach(d.path()).unwrap();
        let mut w = open_stdin(d.path()).unwrap();
        write_stdin(&mut w, b"hello\nmore\n").unwrap();
        close_stdin(&mut w).unwrap();
        let mut out = String::new();
        let mut err = String::new();
        let exit = loop {
            match a.next_event() {
                Event::Output(StdStream::Stderr, d) => err.push_str(&String::from_utf8(d).unwrap()),
                Event::Output(_, d) => out.push_str(&String::from_utf8(d).unwrap()),
                Event::Exit(e) => break e,
                Event::Gone => panic!("no exit frame"),
            }
        };
        assert_eq!(out, "got hello\neof\n");
        assert_eq!(err, "oops\n");
        assert_eq!(exit.exit_code, 7);
        assert_eq!(t.join().unwrap(), 7);
        assert_eq!(read_exit(d.path()), Some(exit));
        assert!(!d.path().join(SOCKET).exists());
        let logged: String = log_lines(d.path())
            .into_iter()
            .filter(|(s, _)| s == "stdout")
            .map(|(_, l)| l)
            .collect();
        assert_eq!(logged, "got hello\neof\n");
        // After the end: no monitor, the file says how it went.
        assert!(state(d.path()).is_err());
        assert_eq!(
            restore_decision(state(d.path()), read_exit(d.path()), 0),
            Restore::Exited(exit)
        );
    }

    /// The engine goes away (its connections close) and comes back: the container lives on,
    /// its stdin is not closed by the engine's departure, output written meanwhile is in the
    /// log, and the new attach gets the rest and the exit code.
    #[test]
    fn container_outlives_its_client_and_a_new_one_reattaches() {
        let d = tempfile::tempdir().unwrap();
        let (pid, t) = monitored(
            d.path(),
            "read go; i=0; while [ $i -lt 8 ]; do echo $i; i=$((i+1)); sleep 0.1; done; read x; \
                echo \"in $x\"; exit 3",
        );
        let mut a = attach(d.path()).unwrap();
        let mut w = open_stdin(d.path()).unwrap();
        write_stdin(&mut w, b"go\n").unwrap();
        match a.next_event() {
            Event::Output(StdStream::Stdout, d) => assert_eq!(d, b"0\n"),
            e => panic!("{e:?}"),
        }
        // The engine dies.
        drop(a);
        drop(w);
        std::thread::sleep(Duration::from_millis(400));
        // A new engine: the monitor answers, the decision is to adopt.
        assert_eq!(
            restore_decision(state(d.path()), read_exit(d.path()), 0),
            Restore::Adopt { pid }
        );
        let mut a = attach(d.path()).unwrap();
        let mut w = open_stdin(d.path()).unwrap();
        write_stdin(&mut w, b"again\n").unwrap();
        let mut out = String::new();
        let exit = loop {
            match a.next_event() {
                Event::Output(_, d) => out.push_str(&String::from_utf8(d).unwrap()),
                Event::Exit(e) => break e,
                Event::Gone => panic!("no exit frame"),
            }
        };
        assert!(out.ends_with("7\nin again\n"), "{out:?}");
        assert_eq!(exit.exit_code, 3);
        assert_eq!(t.join().unwrap(), 3);
        // The log has every line, the ones written while nobody was attached too.
        let logged: String = log_lines(d.path()).into_iter().map(|(_, l)| l).collect();
        assert_eq!(logged, "0\n1\n2\n3\n4\n5\n6\n7\nin again\n");
    }

    /// A container killed by a signal reports 128 + signal.
    #[test]
    fn killed_container_exit_code() {
        let d = tempfile::tempdir().unwrap();
        let (pid, t) = monitored(d.path(), "exec sleep 30");
        std::thread::sleep(Duration::from_millis(100));
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        assert_eq!(t.join().unwrap(), 137);
        assert_eq!(read_exit(d.path()).unwrap().exit_code, 137);
    }
}
