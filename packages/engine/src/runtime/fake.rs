//! A recording [`Runtime`] for unit tests: no shim, no cgroup, no netlink, no signal leaves
//! the test process. It records every call, gives each "container process" a pid and real
//! pipes (so output reaches the engine's log and attach), and lets a test end a process
//! with the exit code it chooses ([`Fake::exit`]). A signal ends the process with 128+N
//! unless the test made the processes ignore it ([`Fake::ignore`]); SIGKILL always does.

use super::host::{IfaceAt, Runtime, Task, TaskIo, Watch};
use super::monitor;
use super::{RunSpec, SpawnError, Stdio3};
use crate::net::{Bridge, Endpoint};
use docker_api::types::HostConfig;
use nix::sys::signal::Signal;
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, Weak};

/// One call the engine made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    SetupBridge(String),
    Prespawn,
    /// A container's shim, with the program and arguments of its spec.
    Spawn {
        id: String,
        args: Vec<String>,
    },
    SpawnExec {
        pid: i32,
        args: Vec<String>,
    },
    CgroupCreate {
        id: String,
        memory: i64,
        /// The device rules (None: every device).
        devices: Option<Vec<docker_api::devices::Rule>>,
    },
    CgroupAdd(PathBuf, i32),
    CgroupRemove(PathBuf),
    NetAttach {
        id: String,
        pid: i32,
        ip: std::net::Ipv4Addr,
    },
    Kill(i32, Signal),
    /// A user network's call: what and on which bridge or interface.
    Net(String),
}

/// A live fake process: how to end it, and the write ends of its output.
struct Proc {
    id: String,
    exit: mpsc::Sender<i64>,
    stdout: Option<File>,
    stderr: Option<File>,
}

#[derive(Default)]
pub struct Fake {
    calls: Mutex<Vec<Call>>,
    procs: Arc<Mutex<HashMap<i32, Proc>>>,
    next_pid: Mutex<i32>,
    ignored: Mutex<HashSet<Signal>>,
    /// The next release fails with this message (the program cannot be exec'd, say).
    fail_next: Mutex<Option<String>>,
    /// What cgroups answer when asked whether the OOM killer struck.
    oom: std::sync::atomic::AtomicBool,
}

impl Fake {
    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    fn record(&self, c: Call) {
        self.calls.lock().unwrap().push(c);
    }

    /// How many times container `id` was spawned.
    pub fn spawns(&self, id: &str) -> usize {
        self.calls()
            .iter()
            .filter(|c| matches!(c, Call::Spawn { id: i, .. } if i == id))
            .count()
    }

    /// The signals sent to `pid`, in order.
    pub fn signals(&self, pid: i32) -> Vec<Signal> {
        self.calls()
            .iter()
            .filter_map(|c| match c {
                Call::Kill(p, s) if *p == pid => Some(*s),
                _ => None,
            })
            .collect()
    }

    /// Ends process `pid` with `code` (as if its program exited); false if it is not live.
    pub fn exit(&self, pid: i32, code: i64) -> bool {
        match self.procs.lock().unwrap().get(&pid) {
            Some(p) => p.exit.send(code).is_ok(),
            None => false,
        }
    }

    /// The live process of container `id`.
    pub fn pid_of(&self, id: &str) -> Option<i32> {
        let procs = self.procs.lock().unwrap();
        procs.iter().find(|(_, p)| p.id == id).map(|(pid, _)| *pid)
    }

    /// Writes to the stdout (or stderr) of process `pid`.
    pub fn output(&self, pid: i32, stderr: bool, text: &str) {
        let mut procs = self.procs.lock().unwrap();
        let p = procs.get_mut(&pid).expect("a live fake process");
        let w = if stderr { &mut p.stderr } else { &mut p.stdout };
        w.as_mut()
            .expect("a process with pipes")
            .write_all(text.as_bytes())
            .unwrap();
    }

    /// From now on, processes ignore `sig` (as a PID 1 without a handler ignores SIGTERM).
    pub fn ignore(&self, sig: Signal) {
        self.ignored.lock().unwrap().insert(sig);
    }

    /// Makes every cgroup report an OOM kill (or not).
    pub fn set_oom(&self, oom: bool) {
        self.oom.store(oom, std::sync::atomic::Ordering::SeqCst);
    }

    /// Makes the next start fail after the spawn, with `msg` as the container's error.
    pub fn fail_next_start(&self, msg: &str) {
        *self.fail_next.lock().unwrap() = Some(msg.to_string());
    }

    fn start(&self, id: &str, stdio: Stdio3) -> Result<Box<dyn Task>, SpawnError> {
        let pid = {
            let mut n = self.next_pid.lock().unwrap();
            *n += 1;
            1000 + *n
        };
        let pipe = || -> (OwnedFd, OwnedFd) { nix::unistd::pipe().expect("a pipe") };
        let mut io = TaskIo::default();
        let (mut out_w, mut err_w) = (None, None);
        // A container's shim (Detached) has its monitor's pipes: here the fake's own.
        let stdio = match stdio {
            Stdio3::Detached => Stdio3::Pipes { stdin: false },
            s => s,
        };
        if let Stdio3::Pipes { stdin } = stdio {
            let (r, w) = pipe();
            io.stdout = Some(r);
            out_w = Some(File::from(w));
            let (r, w) = pipe();
            io.stderr = Some(r);
            err_w = Some(File::from(w));
            if stdin {
                // The engine's end only: what it writes is not read (a pipe buffer's worth).
                let (r, w) = pipe();
                io.stdin = Some(w);
                std::mem::forget(r);
            }
        }
        let (tx, rx) = mpsc::channel();
        self.procs.lock().unwrap().insert(
            pid,
            Proc {
                id: id.to_string(),
                exit: tx,
                stdout: out_w,
                stderr: err_w,
            },
        );
        Ok(Box::new(FakeTask {
            pid,
            io,
            exit: rx,
            procs: Arc::downgrade(&self.procs),
            fail: self.fail_next.lock().unwrap().take(),
            cancelled: false,
        }))
    }
}

impl Runtime for Fake {
    fn setup_bridge(&self, b: &Bridge) -> std::io::Result<()> {
        self.record(Call::SetupBridge(b.name.clone()));
        Ok(())
    }

    fn prespawn(&self) {
        self.record(Call::Prespawn);
    }

    fn spawn_container(
        &self,
        id: &str,
        spec: &Path,
        stdio: Stdio3,
    ) -> Result<Box<dyn Task>, SpawnError> {
        let spec: RunSpec =
            serde_json::from_slice(&std::fs::read(spec).expect("the spec")).expect("a RunSpec");
        self.record(Call::Spawn {
            id: id.to_string(),
            args: spec.process.args,
        });
        self.start(id, stdio)
    }

    fn spawn_exec(&self, spec: &Path, stdio: Stdio3) -> Result<Box<dyn Task>, SpawnError> {
        let spec: super::ExecSpec =
            serde_json::from_slice(&std::fs::read(spec).expect("the spec")).expect("an ExecSpec");
        self.record(Call::SpawnExec {
            pid: spec.pid,
            args: spec.process.args,
        });
        self.start("exec", stdio)
    }

    fn cgroup_create(
        &self,
        id: &str,
        hc: &HostConfig,
        devices: Option<&[docker_api::devices::Rule]>,
    ) -> std::io::Result<Option<PathBuf>> {
        self.record(Call::CgroupCreate {
            id: id.to_string(),
            memory: hc.memory,
            devices: devices.map(<[_]>::to_vec),
        });
        Ok(Some(PathBuf::from("/fake-cgroup").join(id)))
    }

    fn cgroup_add(&self, cg: &Path, pid: i32) -> std::io::Result<()> {
        self.record(Call::CgroupAdd(cg.to_path_buf(), pid));
        Ok(())
    }

    fn cgroup_oom_killed(&self, _cg: &Path) -> bool {
        self.oom.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn cgroup_remove(&self, cg: &Path) {
        self.record(Call::CgroupRemove(cg.to_path_buf()));
    }

    fn net_attach(&self, _b: &Bridge, id: &str, pid: i32, ep: &Endpoint) -> std::io::Result<()> {
        self.record(Call::NetAttach {
            id: id.to_string(),
            pid,
            ip: ep.ip,
        });
        Ok(())
    }

    /// The fake is its containers' monitor: it reads the process's pipes, writes the log
    /// and reports the output; the exit comes from the task's wait (no exit frame). Nothing
    /// answers at a restore: the fake's processes do not outlive their engine.
    fn monitor_attach(
        &self,
        _dir: &Path,
        log: &Path,
        task: Option<&mut dyn Task>,
    ) -> std::io::Result<Box<dyn Watch>> {
        let task = task.ok_or(std::io::ErrorKind::ConnectionRefused)?;
        let io = task.take_io();
        let (tx, rx) = mpsc::channel();
        for (stream, fd) in [
            (docker_api::StdStream::Stdout, io.stdout),
            (docker_api::StdStream::Stderr, io.stderr),
        ] {
            let Some(fd) = fd else { continue };
            let (tx, log) = (tx.clone(), log.to_path_buf());
            std::thread::spawn(move || {
                use std::io::Read;
                let mut r = File::from(fd);
                let mut buf = [0u8; 4096];
                while let Ok(n) = r.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let f = docker_api::Frame {
                        stream,
                        data: bytes::Bytes::copy_from_slice(&buf[..n]),
                    };
                    let line = crate::logs::encode(&f, "2026-01-01T00:00:00.000000000Z");
                    if let Ok(mut l) = std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(&log)
                    {
                        let _ = l.write_all(&line);
                    }
                    let _ = tx.send((stream, buf[..n].to_vec()));
                }
            });
        }
        Ok(Box::new(FakeWatch(rx)))
    }

    fn monitor_state(&self, _dir: &Path) -> std::io::Result<monitor::State> {
        Err(std::io::ErrorKind::ConnectionRefused.into())
    }

    fn monitor_stdin(&self, _dir: &Path) -> std::io::Result<File> {
        // The engine's end only: what it writes is not read (a pipe buffer's worth).
        let (r, w) = nix::unistd::pipe()?;
        std::mem::forget(r);
        Ok(File::from(w))
    }

    fn monitor_resize(&self, _dir: &Path, _h: u16, _w: u16) -> std::io::Result<()> {
        Ok(())
    }

    fn net_bridge(&self, b: &Bridge, up: bool) -> std::io::Result<()> {
        self.record(Call::Net(format!("bridge {} up={up}", b.name)));
        Ok(())
    }

    fn net_rules(&self, nets: &[crate::net::NetRules]) -> std::io::Result<()> {
        self.record(Call::Net(format!("rules for {} bridges", nets.len())));
        Ok(())
    }

    fn net_attach_iface(&self, b: &Bridge, at: &IfaceAt, ep: &Endpoint) -> std::io::Result<()> {
        self.record(Call::Net(format!(
            "attach {} {} {} pid {} route={}",
            b.name, at.ifname, ep.ip, at.pid, at.default_route
        )));
        Ok(())
    }

    fn net_detach_iface(&self, host: &str) -> std::io::Result<()> {
        self.record(Call::Net(format!("detach {host}")));
        Ok(())
    }

    fn dns_bind(&self, _pid: i32) -> std::io::Result<(std::net::UdpSocket, std::net::TcpListener)> {
        // Loopback sockets of the test process stand in for the container's.
        let udp = std::net::UdpSocket::bind("127.0.0.1:0")?;
        let tcp = std::net::TcpListener::bind("127.0.0.1:0")?;
        udp.set_nonblocking(true)?;
        tcp.set_nonblocking(true)?;
        Ok((udp, tcp))
    }

    fn kill(&self, pid: i32, sig: Signal) -> nix::Result<()> {
        self.record(Call::Kill(pid, sig));
        let procs = self.procs.lock().unwrap();
        let p = procs.get(&pid).ok_or(nix::errno::Errno::ESRCH)?;
        if sig == Signal::SIGKILL || !self.ignored.lock().unwrap().contains(&sig) {
            let _ = p.exit.send(128 + sig as i64);
        }
        Ok(())
    }
}

/// Output until the process's pipes close (after its wait), then Gone.
struct FakeWatch(mpsc::Receiver<(docker_api::StdStream, Vec<u8>)>);

impl Watch for FakeWatch {
    fn next_event(&mut self) -> monitor::Event {
        match self.0.recv() {
            Ok((s, d)) => monitor::Event::Output(s, d),
            Err(_) => monitor::Event::Gone,
        }
    }
}

struct FakeTask {
    pid: i32,
    io: TaskIo,
    exit: mpsc::Receiver<i64>,
    /// Weak: a process left running when a test ends ends with the [`Fake`] (its waiter
    /// sees the sender go), or the runtime's drop would wait for that waiter for ever.
    procs: Weak<Mutex<HashMap<i32, Proc>>>,
    fail: Option<String>,
    cancelled: bool,
}

impl Task for FakeTask {
    fn pid(&self) -> i32 {
        self.pid
    }

    fn cancel(&mut self) {
        self.cancelled = true;
    }

    fn release(&mut self) -> Result<(), SpawnError> {
        let failed = match (self.cancelled, self.fail.take()) {
            (true, _) => "cancelled".to_string(),
            (false, Some(msg)) => msg,
            (false, None) => return Ok(()),
        };
        // The process exits without running its program.
        self.cancelled = true;
        self.forget();
        Err(SpawnError::Start(failed))
    }

    fn take_console(&mut self) -> Result<Option<OwnedFd>, SpawnError> {
        Ok(None)
    }

    fn take_trace(&mut self) -> Vec<String> {
        Vec::new()
    }

    fn take_io(&mut self) -> TaskIo {
        std::mem::take(&mut self.io)
    }

    /// A process that never ran (a failed or cancelled release) is gone at once, with 125
    /// as the shim's; else it runs until [`Fake::exit`] or a signal ends it.
    fn wait(&mut self) -> i64 {
        let code = if self.cancelled {
            125
        } else {
            self.exit.recv().unwrap_or(255)
        };
        self.forget();
        code
    }
}

impl FakeTask {
    /// The process is gone: its pipes close with it, so the engine's readers see EOF.
    fn forget(&self) {
        if let Some(procs) = self.procs.upgrade() {
            procs.lock().unwrap().remove(&self.pid);
        }
    }
}
