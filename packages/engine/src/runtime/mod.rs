//! A small container runtime: the engine re-executes itself as a shim per container
//! (`engine __run SPEC`) or exec session (`engine __exec SPEC`). The shim creates the
//! namespaces, forks the container's PID 1 and waits for it; its exit code is the
//! container's. A `__run` shim then stays as the container's monitor ([`monitor`]): it owns
//! the container's streams and log, records its exit and outlives the engine, which talks to
//! it over `shim.sock` (live-restore). Start-up protocol with the engine: fd 3 (shim → engine)
//! carries `pid N` and, if
//! setting up or exec'ing fails, `error MSG`; it reaches EOF once the program is running.
//! For `__run`, fd 4 (engine → child) releases the child (one byte) after the engine has
//! put it into its cgroup; a shim started before its container ([`Prespawned`], argument
//! `-`) first reads its spec's path from fd 4 as one line.
//!
//! The engine reaches the shim, cgroups, network attach and signals only through the
//! [`Runtime`] trait ([`host`]), so that its lifecycle logic is unit-tested on a recording
//! double (`fake`, test builds only).

pub mod confine;
pub mod host;
pub mod monitor;
pub mod rlimits;
pub mod seccomp;
pub mod shim;

pub use host::{Host, Runtime};
#[cfg(test)]
pub mod fake;

use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// One mount of a container besides its root: a bind of `source` (a host path or a
/// volume's data) or, with `tmpfs`, a new tmpfs (`source` unused).
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
pub struct Bind {
    pub source: PathBuf,
    pub dest: String,
    pub readonly: bool,
    #[serde(default)]
    pub tmpfs: Option<Tmpfs>,
    /// A volume's first use: when `source` is empty, the image's content at `dest` is
    /// copied into it before it is mounted, as Docker does.
    #[serde(default)]
    pub copy_up: bool,
    /// Bind only the mount at `source`, not those below it.
    #[serde(default)]
    pub non_recursive: bool,
}

/// A tmpfs mount: `MsFlags` bits and the data (`size=...,mode=...`).
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
pub struct Tmpfs {
    pub flags: u64,
    pub data: String,
}

/// What the shim needs to start a container (written as JSON next to the container).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct RunSpec {
    pub rootfs: PathBuf,
    pub lowers: Vec<PathBuf>,
    pub upper: PathBuf,
    pub work: PathBuf,
    pub binds: Vec<Bind>,
    /// Files bind-mounted over /etc/hosts, /etc/hostname, /etc/resolv.conf.
    pub etc_files: Vec<(PathBuf, String)>,
    pub hostname: String,
    pub new_netns: bool,
    /// `--pid host` / `--uts host`: stay in the VM's PID / UTS namespace.
    #[serde(default)]
    pub host_pid: bool,
    #[serde(default)]
    pub host_uts: bool,
    /// `--network container:ID`: join this network namespace (`/proc/PID/ns/net`).
    #[serde(default)]
    pub join_netns: Option<PathBuf>,
    /// Mount the overlay `volatile` (the engine's `--volatile-layers`).
    #[serde(default)]
    pub volatile: bool,
    pub process: Process,
    /// Report the shim's step timings (`trace ...` lines on the status pipe, see
    /// [`Spawned::trace`]); the engine asks for them with `AXION_ENGINE_TRACE`.
    #[serde(default)]
    pub trace: bool,
    /// The monitor's directory (`shim.sock`, `exit.json`): the container's state directory.
    #[serde(default)]
    pub state_dir: PathBuf,
    /// The container's json-file log, which the monitor writes.
    #[serde(default)]
    pub log_path: PathBuf,
    /// Give the container a stdin pipe (`docker run -i`); without it, /dev/null.
    #[serde(default)]
    pub open_stdin: bool,
    /// Device nodes to make in the container (`--device`, `--privileged`).
    #[serde(default)]
    pub devices: Vec<crate::devices::Node>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Process {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub user: String,
    pub tty: bool,
    #[serde(default)]
    pub confine: confine::Confinement,
    /// `--group-add`: more supplementary groups (names in the container's /etc/group, or ids).
    #[serde(default)]
    pub group_add: Vec<String>,
}

/// For `engine __exec`: join the namespaces of `pid` and run `process`.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct ExecSpec {
    pub pid: i32,
    pub cgroup: Option<PathBuf>,
    pub process: Process,
}

/// The standard streams of an exec session: pipes, or a terminal that the process creates
/// in the container's devpts and whose master it sends back (fd 5, see shim::console). A
/// container's shim (`__run`) gets `Detached`: its monitor makes the container's streams
/// itself, so that nothing of them is the engine's.
pub enum Stdio3 {
    Pipes { stdin: bool },
    Console,
    Detached,
}

/// Sends `fd` over the unix socket `sock` (SCM_RIGHTS, with one data byte).
pub fn send_fd(sock: i32, fd: i32) -> std::io::Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let fds = [fd];
    sendmsg::<()>(
        sock,
        &[std::io::IoSlice::new(&[0u8])],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )?;
    Ok(())
}

/// Receives one descriptor sent with [`send_fd`] (close-on-exec); None at EOF (nothing
/// was sent) or when the message carries no descriptor.
pub fn recv_fd(sock: i32) -> std::io::Result<Option<OwnedFd>> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    use std::os::fd::FromRawFd;
    let mut byte = [0u8; 1];
    let mut iov = [std::io::IoSliceMut::new(&mut byte)];
    let mut cbuf = nix::cmsg_space!(std::os::fd::RawFd);
    let msg = recvmsg::<()>(sock, &mut iov, Some(&mut cbuf), MsgFlags::MSG_CMSG_CLOEXEC)?;
    let fds = match msg.cmsgs()?.next() {
        Some(ControlMessageOwned::ScmRights(fds)) => fds,
        _ => Vec::new(),
    };
    // SAFETY: the kernel just installed these descriptors in this process for us alone.
    let mut owned: Vec<OwnedFd> = fds
        .into_iter()
        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
        .collect();
    // Only the first is wanted; any others are closed here.
    Ok(if msg.bytes == 0 || owned.is_empty() {
        None
    } else {
        Some(owned.swap_remove(0))
    })
}

pub struct Spawned {
    pub child: Child,
    /// PID of the container's process in the engine's PID namespace.
    pub pid: i32,
    /// Reader of fd 3 after the pid line (errors and EOF).
    status: BufReader<std::fs::File>,
    release: Option<std::fs::File>,
    /// The engine's end of the console socket (TTY sessions).
    console: Option<std::os::unix::net::UnixStream>,
    /// The shim's `trace` lines so far (with [`RunSpec::trace`]): steps and seconds.
    pub trace: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("starting the shim {exe}: {source}")]
    Exec { exe: String, source: std::io::Error },
    #[error("shim protocol: {0}")]
    Protocol(String),
    #[error("{0}")]
    Start(String),
}

fn pipe() -> std::io::Result<(std::fs::File, std::fs::File)> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(std::io::Error::from)?;
    Ok((std::fs::File::from(r), std::fs::File::from(w)))
}

/// Starts the shim with `mode` ("__run"/"__exec") on `spec_path`.
pub fn spawn(
    mode: &str,
    spec_path: &std::path::Path,
    stdio: Stdio3,
) -> Result<Spawned, SpawnError> {
    launch(mode, Some(spec_path), stdio)?.handshake()
}

/// A `__run` shim started before its container exists, waiting for its spec (axion-vmd's
/// VMs: the engine starts one before the template is saved, so a clone's container start
/// skips the fork, exec and loading of the shim, about 0.1 s of its vCPU under TCG). It
/// reads the spec's path as one line from the release pipe (fd 4), on which its container
/// process later reads the release byte. Every container fits: its monitor makes the
/// container's streams once it has the spec.
pub struct Prespawned(Launched);

impl Prespawned {
    pub fn start() -> Result<Prespawned, SpawnError> {
        Ok(Prespawned(launch("__run", None, Stdio3::Detached)?))
    }

    /// Whether a container with these standard streams can use it.
    pub fn fits(stdio: &Stdio3) -> bool {
        matches!(stdio, Stdio3::Detached)
    }

    /// Hands the shim its spec and waits, as [`spawn`] does, for the container's pid.
    pub fn run(mut self, spec_path: &std::path::Path) -> Result<Spawned, SpawnError> {
        let line = format!("{}\n", spec_path.display());
        let w = self.0.release.as_mut().ok_or_else(|| {
            SpawnError::Protocol("the pre-spawned shim has no release pipe".into())
        })?;
        w.write_all(line.as_bytes()).map_err(|e| {
            SpawnError::Protocol(format!("handing the pre-spawned shim its spec: {e}"))
        })?;
        self.0.handshake()
    }
}

/// A shim process and the engine's ends of its pipes, before its `pid` line.
struct Launched {
    child: Child,
    status: BufReader<std::fs::File>,
    release: Option<std::fs::File>,
    console: Option<std::os::unix::net::UnixStream>,
}

/// Starts the shim; without `spec_path` it waits for the path on fd 4 ([`Prespawned`]).
fn launch(
    mode: &str,
    spec_path: Option<&std::path::Path>,
    stdio: Stdio3,
) -> Result<Launched, SpawnError> {
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/proc/self/exe"));
    let io = |source| SpawnError::Exec {
        exe: exe.display().to_string(),
        source,
    };
    let (status_r, status_w) = pipe().map_err(io)?;
    let (release_r, release_w) = pipe().map_err(io)?;
    let mut cmd = Command::new(&exe);
    cmd.arg(mode)
        .arg(
            spec_path
                .map(|p| p.as_os_str())
                .unwrap_or(SPEC_ON_RELEASE_FD.as_ref()),
        )
        .env_clear();
    let mut console = None;
    let mut console_child: Option<OwnedFd> = None;
    match stdio {
        Stdio3::Pipes { stdin } => {
            cmd.stdin(if stdin { Stdio::piped() } else { Stdio::null() });
            cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        }
        Stdio3::Detached => {
            cmd.stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
        }
        Stdio3::Console => {
            cmd.stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let (a, b) = std::os::unix::net::UnixStream::pair().map_err(io)?;
            console = Some(a);
            console_child = Some(OwnedFd::from(b));
        }
    }
    let (sw, rr) = (status_w.as_raw_fd(), release_r.as_raw_fd());
    let cc = console_child.as_ref().map(|f| f.as_raw_fd()).unwrap_or(-1);
    // SAFETY: between fork and exec we only call async-signal-safe functions (dup2, setsid).
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(sw, 3) < 0 || libc::dup2(rr, 4) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if cc >= 0 && libc::dup2(cc, 5) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Its own session and process group: init stops a service with kill(-pgid), and a
            // container's monitor must outlive the engine (live-restore).
            libc::setsid();
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(io)?;
    drop(status_w);
    drop(release_r);
    drop(console_child);
    Ok(Launched {
        child,
        status: BufReader::new(status_r),
        release: Some(release_w),
        console,
    })
}

/// The shim's argument in place of a spec path: read the path from fd 4.
pub const SPEC_ON_RELEASE_FD: &str = "-";

impl Launched {
    /// Reads the shim's `trace` lines and its `pid N` (or `error MSG`).
    fn handshake(mut self) -> Result<Spawned, SpawnError> {
        let mut trace = Vec::new();
        let mut line = String::new();
        loop {
            line.clear();
            self.status
                .read_line(&mut line)
                .map_err(|e| SpawnError::Protocol(e.to_string()))?;
            match line.trim().strip_prefix("trace ") {
                Some(t) => trace.push(t.to_string()),
                None => break,
            }
        }
        let line = line.trim();
        if let Some(msg) = line.strip_prefix("error ") {
            return Err(SpawnError::Start(msg.to_string()));
        }
        let pid: i32 = line
            .strip_prefix("pid ")
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| {
                SpawnError::Protocol(format!("expected `pid N` from the shim, got {line:?}"))
            })?;
        Ok(Spawned {
            child: self.child,
            pid,
            status: self.status,
            release: self.release,
            console: self.console,
            trace,
        })
    }
}

impl Spawned {
    /// Gives up on the container before it runs: closing the release pipe unblocks the
    /// child, which exits with 125 (the caller still waits for the shim).
    /// The terminal's master, which the container's process sent before it exec'd (call
    /// after a successful [`Spawned::release`]).
    pub fn take_console(&mut self) -> Result<Option<OwnedFd>, SpawnError> {
        match self.console.take() {
            None => Ok(None),
            Some(s) => match recv_fd(s.as_raw_fd()) {
                Ok(Some(fd)) => Ok(Some(fd)),
                Ok(None) => Err(SpawnError::Start(
                    "the container did not send its terminal".into(),
                )),
                Err(e) => Err(SpawnError::Start(format!(
                    "receiving the container's terminal: {e}"
                ))),
            },
        }
    }

    pub fn cancel(&mut self) {
        self.release = None;
    }

    /// Lets the container process continue, then waits until it exec'd its program
    /// (Ok) or failed to (Err with the reason).
    pub fn release(&mut self) -> Result<(), SpawnError> {
        if let Some(mut w) = self.release.take() {
            let _ = w.write_all(b"g");
        }
        let mut rest = String::new();
        let _ = self.status.read_to_string(&mut rest);
        for l in rest.lines() {
            if let Some(t) = l.strip_prefix("trace ") {
                self.trace.push(t.to_string());
            }
        }
        for l in rest.lines() {
            if let Some(msg) = l.strip_prefix("error ") {
                return Err(SpawnError::Start(msg.to_string()));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    /// A pipe's write end passed over a unix socket works on the far side, arrives
    /// close-on-exec, and the sender's EOF reads as None.
    #[test]
    fn passes_a_descriptor_over_a_unix_socket() {
        let (a, b) = UnixStream::pair().unwrap();
        let (r, w) = nix::unistd::pipe().unwrap();
        // Not a socket: an error, not a panic.
        assert!(send_fd(r.as_raw_fd(), w.as_raw_fd()).is_err());
        assert!(recv_fd(w.as_raw_fd()).is_err());
        send_fd(a.as_raw_fd(), w.as_raw_fd()).unwrap();
        drop(w);
        let got = recv_fd(b.as_raw_fd()).unwrap().expect("a descriptor");
        let flags = nix::fcntl::fcntl(got.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFD).unwrap();
        assert!(
            flags & libc::FD_CLOEXEC != 0,
            "received without close-on-exec"
        );
        let mut wf = std::fs::File::from(got);
        wf.write_all(b"through the socket").unwrap();
        drop(wf);
        let mut out = String::new();
        std::fs::File::from(r).read_to_string(&mut out).unwrap();
        assert_eq!(out, "through the socket");
        // Plain data without a descriptor: no descriptor. The peer gone: None too.
        (&a).write_all(b"x").unwrap();
        assert!(recv_fd(b.as_raw_fd()).unwrap().is_none());
        drop(a);
        assert!(recv_fd(b.as_raw_fd()).unwrap().is_none());
    }
}
