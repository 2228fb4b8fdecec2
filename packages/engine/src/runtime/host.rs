//! The engine's privileged operations behind one trait, [`Runtime`], as youki keeps its
//! system calls behind its `Syscall` trait: starting a container's or an exec session's
//! shim, cgroups (create with limits, add, OOM verdict, remove), the bridge and a
//! container's network attach, and signals. [`Host`] is the real implementation (the shim
//! of this module's parent, `crate::cgroup`, `crate::net`); the engine's unit tests run the
//! container lifecycle on a recording double instead, without root.

use super::monitor;
use super::{Prespawned, SpawnError, Spawned, Stdio3};
use crate::net::{Bridge, Endpoint};
use crate::{cgroup, net};
use docker_api::devices::Rule;
use docker_api::types::HostConfig;
use nix::sys::signal::Signal;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// What needs privilege, for the engine. Blocking calls: the engine makes them off its async
/// threads where they may take long (spawns, cgroup removal).
pub trait Runtime: Send + Sync + 'static {
    /// Sets up the bridge on the host (the link, its address, forwarding and NAT).
    fn setup_bridge(&self, b: &Bridge) -> std::io::Result<()>;
    /// Starts a container shim in advance for the next container, if it can.
    fn prespawn(&self);
    /// Starts the shim of container `id` on its spec (`RunSpec` JSON at `spec`); the
    /// container's process waits for [`Task::release`].
    fn spawn_container(
        &self,
        id: &str,
        spec: &Path,
        stdio: Stdio3,
    ) -> Result<Box<dyn Task>, SpawnError>;
    /// Starts an exec session's shim on its spec (`ExecSpec` JSON at `spec`).
    fn spawn_exec(&self, spec: &Path, stdio: Stdio3) -> Result<Box<dyn Task>, SpawnError>;
    /// Creates container `id`'s cgroup with its limits and, unless `devices` is None (every
    /// device), the device program allowing those rules; None without cgroup v2.
    fn cgroup_create(
        &self,
        id: &str,
        hc: &HostConfig,
        devices: Option<&[Rule]>,
    ) -> std::io::Result<Option<PathBuf>>;
    fn cgroup_add(&self, cg: &Path, pid: i32) -> std::io::Result<()>;
    /// Did the OOM killer strike in this cgroup?
    fn cgroup_oom_killed(&self, cg: &Path) -> bool;
    fn cgroup_remove(&self, cg: &Path);
    /// Gives the process `pid` (container `id`) its end of the bridge at `ep`.
    fn net_attach(&self, b: &Bridge, id: &str, pid: i32, ep: &Endpoint) -> std::io::Result<()>;
    fn kill(&self, pid: i32, sig: Signal) -> nix::Result<()>;
    /// Follows the monitor of the container whose state directory is `dir` (see
    /// super::monitor): its output from now on, then its exit. At a start `task` is its
    /// shim, not yet released (so nothing of its output is missed); at a restore, None.
    /// `log` is the container's json-file log, which the monitor writes.
    fn monitor_attach(
        &self,
        dir: &Path,
        log: &Path,
        task: Option<&mut dyn Task>,
    ) -> std::io::Result<Box<dyn Watch>>;
    /// The monitor's answer to `S` (Err: no monitor answers there).
    fn monitor_state(&self, dir: &Path) -> std::io::Result<monitor::State>;
    /// A connection for the container's stdin (frames: monitor::write_stdin, close_stdin).
    fn monitor_stdin(&self, dir: &Path) -> std::io::Result<std::fs::File>;
    /// Sets the container's terminal size.
    fn monitor_resize(&self, dir: &Path, h: u16, w: u16) -> std::io::Result<()>;
    /// User networks (`crate::networks`): a network's bridge up, or deleted.
    fn net_bridge(&self, b: &Bridge, up: bool) -> std::io::Result<()>;
    /// Replaces the engine's nf_tables table (NAT and isolation of every bridge).
    fn net_rules(&self, nets: &[net::NetRules]) -> std::io::Result<()>;
    /// A veth pair `host`/`ifname` from bridge `b` into the namespace of `pid`.
    fn net_attach_iface(&self, b: &Bridge, at: &IfaceAt, ep: &Endpoint) -> std::io::Result<()>;
    /// Deletes the host end of a veth pair (and so its peer).
    fn net_detach_iface(&self, host: &str) -> std::io::Result<()>;
    /// The embedded DNS's sockets at 127.0.0.11:53 in the namespace of `pid`.
    fn dns_bind(&self, pid: i32) -> std::io::Result<(std::net::UdpSocket, std::net::TcpListener)>;
}

/// A container's output and exit as its monitor reports them (blocking).
pub trait Watch: Send {
    fn next_event(&mut self) -> monitor::Event;
}

impl Watch for monitor::Attached {
    fn next_event(&mut self) -> monitor::Event {
        monitor::Attached::next_event(self)
    }
}

/// Where a user network's veth goes: host end, container end, process, default route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IfaceAt {
    pub host: String,
    pub ifname: String,
    pub pid: i32,
    pub default_route: bool,
}

/// A started shim (see `super::Spawned`): its process waits for the release.
pub trait Task: Send {
    /// The container's (or exec's) process in the engine's PID namespace.
    fn pid(&self) -> i32;
    /// Gives up before the release: the process exits (the caller still waits).
    fn cancel(&mut self);
    /// Lets the process exec its program; Err with the reason if it could not.
    fn release(&mut self) -> Result<(), SpawnError>;
    /// The terminal's master, after a release (TTY sessions; None for pipes).
    fn take_console(&mut self) -> Result<Option<OwnedFd>, SpawnError>;
    /// The shim's trace lines so far.
    fn take_trace(&mut self) -> Vec<String>;
    /// The engine's ends of the process's standard pipes (none with a terminal).
    fn take_io(&mut self) -> TaskIo;
    /// Waits for the shim to exit: the process's exit code (128+N if signal N killed it),
    /// 255 when it is unknown.
    fn wait(&mut self) -> i64;
}

/// The engine's ends of a process's pipes.
#[derive(Default)]
pub struct TaskIo {
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
}

/// The real runtime: this engine binary as the shim, cgroup v2, rtnetlink, kill(2).
#[derive(Default)]
pub struct Host {
    /// A shim waiting for the next container's spec ([`Runtime::prespawn`]).
    prespawned: Mutex<Option<Prespawned>>,
}

impl Runtime for Host {
    fn setup_bridge(&self, b: &Bridge) -> std::io::Result<()> {
        net::setup_host(b)
    }

    /// axion-vmd's VMs run one container each and are cloned from a template saved with this
    /// shim waiting. Not refilled after use: a refill would compete with the running
    /// container for the VM's CPU, and a VM's one container has used it.
    fn prespawn(&self) {
        match Prespawned::start() {
            Ok(p) => *self.prespawned.lock().unwrap() = Some(p),
            Err(e) => eprintln!("engine: cannot start a shim in advance: {e}"),
        }
    }

    fn spawn_container(
        &self,
        id: &str,
        spec: &Path,
        stdio: Stdio3,
    ) -> Result<Box<dyn Task>, SpawnError> {
        let ready = if Prespawned::fits(&stdio) {
            self.prespawned.lock().unwrap().take()
        } else {
            None
        };
        let s = match ready.map(|p| p.run(spec)) {
            Some(Ok(s)) => {
                eprintln!(
                    "engine: container {} runs in the pre-spawned shim",
                    &id[..12.min(id.len())]
                );
                s
            }
            // Killed meanwhile, say: a fresh shim does the same (the container process, if
            // any, exits without its release).
            Some(Err(e)) => {
                eprintln!("engine: the pre-spawned shim failed ({e}); starting another");
                super::spawn("__run", spec, stdio)?
            }
            None => super::spawn("__run", spec, stdio)?,
        };
        Ok(Box::new(s))
    }

    fn spawn_exec(&self, spec: &Path, stdio: Stdio3) -> Result<Box<dyn Task>, SpawnError> {
        Ok(Box::new(super::spawn("__exec", spec, stdio)?))
    }

    fn cgroup_create(
        &self,
        id: &str,
        hc: &HostConfig,
        devices: Option<&[Rule]>,
    ) -> std::io::Result<Option<PathBuf>> {
        cgroup::create(id, hc, devices)
    }

    fn cgroup_add(&self, cg: &Path, pid: i32) -> std::io::Result<()> {
        cgroup::add(cg, pid)
    }

    fn cgroup_oom_killed(&self, cg: &Path) -> bool {
        cgroup::oom_killed(cg)
    }

    fn cgroup_remove(&self, cg: &Path) {
        cgroup::remove(cg)
    }

    fn net_attach(&self, b: &Bridge, id: &str, pid: i32, ep: &Endpoint) -> std::io::Result<()> {
        net::attach(b, id, pid, ep)
    }

    fn net_bridge(&self, b: &Bridge, up: bool) -> std::io::Result<()> {
        if up {
            net::setup_bridge_link(b)
        } else {
            net::remove_bridge_link(&b.name)
        }
    }

    fn net_rules(&self, nets: &[net::NetRules]) -> std::io::Result<()> {
        net::apply_rules(nets)
    }

    fn net_attach_iface(&self, b: &Bridge, at: &IfaceAt, ep: &Endpoint) -> std::io::Result<()> {
        net::attach_iface(b, &at.host, &at.ifname, at.pid, ep, at.default_route)
    }

    fn net_detach_iface(&self, host: &str) -> std::io::Result<()> {
        net::detach_iface(host)
    }

    fn dns_bind(&self, pid: i32) -> std::io::Result<(std::net::UdpSocket, std::net::TcpListener)> {
        crate::networks::dns::bind_in_netns(pid)
    }

    fn kill(&self, pid: i32, sig: Signal) -> nix::Result<()> {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig)
    }

    fn monitor_attach(
        &self,
        dir: &Path,
        _log: &Path,
        _task: Option<&mut dyn Task>,
    ) -> std::io::Result<Box<dyn Watch>> {
        Ok(Box::new(monitor::attach(dir)?))
    }

    fn monitor_state(&self, dir: &Path) -> std::io::Result<monitor::State> {
        monitor::state(dir)
    }

    fn monitor_stdin(&self, dir: &Path) -> std::io::Result<std::fs::File> {
        monitor::open_stdin(dir)
    }

    fn monitor_resize(&self, dir: &Path, h: u16, w: u16) -> std::io::Result<()> {
        monitor::resize(dir, h, w)
    }
}

impl Task for Spawned {
    fn pid(&self) -> i32 {
        self.pid
    }

    fn cancel(&mut self) {
        Spawned::cancel(self)
    }

    fn release(&mut self) -> Result<(), SpawnError> {
        Spawned::release(self)
    }

    fn take_console(&mut self) -> Result<Option<OwnedFd>, SpawnError> {
        Spawned::take_console(self)
    }

    fn take_trace(&mut self) -> Vec<String> {
        std::mem::take(&mut self.trace)
    }

    fn take_io(&mut self) -> TaskIo {
        TaskIo {
            stdin: self.child.stdin.take().map(OwnedFd::from),
            stdout: self.child.stdout.take().map(OwnedFd::from),
            stderr: self.child.stderr.take().map(OwnedFd::from),
        }
    }

    fn wait(&mut self) -> i64 {
        self.child
            .wait()
            .map(|s| s.code().unwrap_or(255) as i64)
            .unwrap_or(255)
    }
}
