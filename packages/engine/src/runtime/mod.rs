//! A small container runtime: the engine re-executes itself as a shim per container
//! (`engine __run SPEC`) or exec session (`engine __exec SPEC`). The shim creates the
//! namespaces, forks the container's PID 1 and waits for it; its exit code is the
//! container's. Protocol with the engine: fd 3 (shim → engine) carries `pid N` and, if
//! setting up or exec'ing fails, `error MSG`; it reaches EOF once the program is running.
//! For `__run`, fd 4 (engine → child) releases the child (one byte) after the engine has
//! put it into its cgroup.

pub mod confine;
pub mod shim;

use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Bind {
    pub source: PathBuf,
    pub dest: String,
    pub readonly: bool,
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
    pub process: Process,
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
}

/// For `engine __exec`: join the namespaces of `pid` and run `process`.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct ExecSpec {
    pub pid: i32,
    pub cgroup: Option<PathBuf>,
    pub process: Process,
}

/// The container's standard streams: pipes, or a pty slave for all three.
pub enum Stdio3 {
    Pipes { stdin: bool },
    Pty(OwnedFd),
}

pub struct Spawned {
    pub child: Child,
    /// PID of the container's process in the engine's PID namespace.
    pub pid: i32,
    /// Reader of fd 3 after the pid line (errors and EOF).
    status: BufReader<std::fs::File>,
    release: Option<std::fs::File>,
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
pub fn spawn(mode: &str, spec_path: &std::path::Path, stdio: Stdio3) -> Result<Spawned, SpawnError> {
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/proc/self/exe"));
    let io = |source| SpawnError::Exec { exe: exe.display().to_string(), source };
    let (status_r, status_w) = pipe().map_err(io)?;
    let (release_r, release_w) = pipe().map_err(io)?;
    let mut cmd = Command::new(&exe);
    cmd.arg(mode).arg(spec_path).env_clear();
    match stdio {
        Stdio3::Pipes { stdin } => {
            cmd.stdin(if stdin { Stdio::piped() } else { Stdio::null() });
            cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        }
        Stdio3::Pty(slave) => {
            let a = slave.try_clone().map_err(io)?;
            let b = slave.try_clone().map_err(io)?;
            cmd.stdin(Stdio::from(slave)).stdout(Stdio::from(a)).stderr(Stdio::from(b));
        }
    }
    let (sw, rr) = (status_w.as_raw_fd(), release_r.as_raw_fd());
    // SAFETY: between fork and exec we only call async-signal-safe functions (dup2, setsid).
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(sw, 3) < 0 || libc::dup2(rr, 4) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::setsid();
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(io)?;
    drop(status_w);
    drop(release_r);
    let mut status = BufReader::new(status_r);
    let mut line = String::new();
    status.read_line(&mut line).map_err(|e| SpawnError::Protocol(e.to_string()))?;
    let line = line.trim();
    if let Some(msg) = line.strip_prefix("error ") {
        return Err(SpawnError::Start(msg.to_string()));
    }
    let pid: i32 = line
        .strip_prefix("pid ")
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| SpawnError::Protocol(format!("expected `pid N` from the shim, got {line:?}")))?;
    Ok(Spawned { child, pid, status, release: Some(release_w) })
}

impl Spawned {
    /// Gives up on the container before it runs: closing the release pipe unblocks the
    /// child, which exits with 125 (the caller still waits for the shim).
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
            if let Some(msg) = l.strip_prefix("error ") {
                return Err(SpawnError::Start(msg.to_string()));
            }
        }
        Ok(())
    }
}
