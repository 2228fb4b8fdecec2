//! Live-restore: container VMs outlive the daemon, and a started daemon re-adopts them.
//!
//! - What the daemon needs of a container VM is in `<state>/c/<id12>/vmd-state.json`
//!   ([`Persisted`]: QEMU's pid, its QMP socket, the guest channels' sockets, the port
//!   forwards, the host/guest container id mapping, the phase and times), written with
//!   temp + fsync + rename at create, start and exit.
//! - QEMU survives the daemon: the daemon never takes its VMs down when it dies (SIGKILL,
//!   a crash), and with `--live-restore` a SIGTERM leaves them running too (the VMs'
//!   handles are detached, so nothing kills them on the way out). Without `--live-restore`
//!   a SIGTERM (what `cargo xtask vmd --stop` sends) or Ctrl-C still ends every VM.
//! - Reconnecting: QEMU is the server of every VM's unix-socket chardevs (`server=on,
//!   wait=off`) and the daemon the client, so a new daemon just connects again — no
//!   `reconnect=` is needed. The guest engine ends its session when the old connection goes
//!   (virtio-serial reports the host's close) and waits for the host again, so the new
//!   daemon's first request starts a new session; it retries `/_ping` on a fresh connection
//!   until the guest answers. The clone agent's channel is connected again as well (the
//!   agent's read then blocks instead of seeing EOF).
//! - A VM whose QEMU is gone is recorded as exited (255, with the reason), its directory
//!   kept for `docker logs` and `rm` when its logs were saved; records of exited containers
//!   are loaded as they were.

use crate::*;
use serde::{Deserialize, Serialize};

/// The record beside each container's VM.
pub const STATE_FILE: &str = "vmd-state.json";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Persisted {
    pub id: String,
    pub name: String,
    pub created_ns: i128,
    pub image_id: String,
    pub req: ContainerCreateRequest,
    /// (container port spec like "80/tcp", host port): QEMU's user-net forwards.
    pub ports: Vec<(String, u16)>,
    /// The container's id in the guest engine.
    pub gid: String,
    pub qemu_pid: u32,
    pub qmp_socket: Option<PathBuf>,
    pub engine_socket: PathBuf,
    pub agent_socket: PathBuf,
    pub cgroup: Vec<PathBuf>,
    /// "created", "running" or "exited".
    pub phase: String,
    pub started_ns: i128,
    pub finished_ns: i128,
    pub exit_code: i64,
    pub error: String,
    /// The host's named volumes shared into the VM.
    #[serde(default)]
    pub volumes: Vec<String>,
    /// `docker stop` or `kill` ended it (restart policies: restart.rs).
    #[serde(default)]
    pub by_hand: bool,
    /// Its restart policy's restarts since the last `docker start`.
    #[serde(default)]
    pub restart_count: i64,
}

pub fn write(dir: &Path, p: &Persisted) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = dir.join(format!("{STATE_FILE}.tmp"));
    let data = serde_json::to_vec_pretty(p).map_err(std::io::Error::other)?;
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&data)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, dir.join(STATE_FILE))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

pub fn read(dir: &Path) -> Option<Persisted> {
    serde_json::from_slice(&std::fs::read(dir.join(STATE_FILE)).ok()?).ok()
}

/// Is `pid` a live QEMU of the VM in `dir` (its command line names the directory)?
pub fn qemu_alive(pid: u32, dir: &Path) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    if stat.is_empty() || stat.contains(") Z ") {
        return false;
    }
    let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
    cmd.starts_with("qemu-system") && cmd.contains(&format!("{}/", dir.display()))
}

/// What a started daemon does with a record it finds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// Its VM runs: re-adopt it.
    Adopt,
    /// Over before (exited), or its VM went while no daemon watched: keep it as exited.
    Exited { code: i64, error: String },
    /// Nothing worth keeping (a create that never finished): remove it.
    Discard,
}

pub fn decide(p: &Persisted, alive: bool) -> Found {
    match (p.phase.as_str(), alive) {
        ("created" | "running", true) => Found::Adopt,
        ("running", false) => Found::Exited {
            code: 255,
            error: "the container's VM (QEMU) went away while no daemon was running".into(),
        },
        ("exited", _) => Found::Exited {
            code: p.exit_code,
            error: p.error.clone(),
        },
        _ => Found::Discard,
    }
}

/// A container VM's QEMU: one this daemon started, or one an earlier daemon left running.
pub enum VmProc {
    Own(Box<qemu::Vm>),
    Adopted {
        pid: u32,
        qemu_log: PathBuf,
        serial_log: Option<PathBuf>,
        dir: PathBuf,
    },
}

impl VmProc {
    pub fn pid(&self) -> u32 {
        match self {
            VmProc::Own(vm) => vm.pid(),
            VmProc::Adopted { pid, .. } => *pid,
        }
    }

    pub fn kill(&mut self) {
        match self {
            VmProc::Own(vm) => {
                let _ = vm.kill();
            }
            VmProc::Adopted { pid, dir, .. } => {
                if qemu_alive(*pid, dir) {
                    // SAFETY: kill(2) on a QEMU whose command line names this VM's directory.
                    unsafe { libc::kill(*pid as libc::pid_t, libc::SIGKILL) };
                }
                // Not our child: its new parent reaps it; wait until it is gone.
                let deadline = std::time::Instant::now() + Duration::from_secs(5);
                while qemu_alive(*pid, dir) && std::time::Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }

    /// Some(description) once QEMU has exited.
    pub fn exited(&mut self) -> Option<String> {
        match self {
            VmProc::Own(vm) => vm.try_exit_status().map(|s| s.to_string()),
            VmProc::Adopted { pid, dir, .. } => {
                (!qemu_alive(*pid, dir)).then(|| "exited (adopted QEMU)".to_string())
            }
        }
    }

    /// `docker pause`/`unpause`: the whole VM stopped or continued through QMP.
    pub fn set_paused(&mut self, on: bool) -> anyhow::Result<()> {
        let cmd = if on { "stop" } else { "cont" };
        match self {
            VmProc::Own(vm) => {
                vm.qmp()?.execute(cmd, None)?;
            }
            VmProc::Adopted { dir, .. } => {
                let mut q = qemu::Qmp::connect(&dir.join("qmp.sock"))?;
                q.execute(cmd, None)?;
            }
        }
        Ok(())
    }

    pub fn qemu_log(&self) -> PathBuf {
        match self {
            VmProc::Own(vm) => vm.qemu_log().to_path_buf(),
            VmProc::Adopted { qemu_log, .. } => qemu_log.clone(),
        }
    }

    pub fn serial_log(&self) -> Option<PathBuf> {
        match self {
            VmProc::Own(vm) => vm.serial_log().map(Path::to_path_buf),
            VmProc::Adopted { serial_log, .. } => serial_log.clone(),
        }
    }

    /// Leaves QEMU running when the handle goes (live-restore on the daemon's way out).
    pub fn detach(self) {
        if let VmProc::Own(vm) = self {
            let _ = vm.detach();
        }
    }
}

impl Ctr {
    /// The record as it stands.
    pub(crate) fn persisted(&self) -> Persisted {
        let st = self
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let vm = self.vm.lock().unwrap_or_else(PoisonError::into_inner);
        Persisted {
            id: self.id.clone(),
            name: self.name(),
            created_ns: self.created_ns,
            image_id: self.image_id.clone(),
            req: self.current_req(),
            ports: self.ports.clone(),
            gid: self.gid(),
            qemu_pid: vm.as_ref().map(|v| v.pid()).unwrap_or(st.pid),
            qmp_socket: Some(self.dir.join("qmp.sock")),
            engine_socket: self.dir.join(template::ENGINE_SOCKET),
            agent_socket: self.dir.join("agent.sock"),
            cgroup: self.cgroup(),
            phase: match self.phase() {
                Phase::Created => "created",
                Phase::Running => "running",
                Phase::Exited | Phase::Removed => "exited",
            }
            .into(),
            started_ns: st.started_ns,
            finished_ns: st.finished_ns,
            exit_code: st.exit_code,
            error: st.error.clone(),
            volumes: self.volumes.clone(),
            by_hand: self.policy.by_hand.load(Ordering::SeqCst),
            restart_count: self.policy.count.load(Ordering::SeqCst),
        }
    }

    /// Writes the record (a failure is logged: the container runs on, but a restarted
    /// daemon would not find it).
    pub(crate) fn save(&self) {
        if self.phase() == Phase::Removed {
            return;
        }
        if let Err(e) = write(&self.dir, &self.persisted()) {
            eprintln!(
                "vmd: WARNING: {}: writing {}: {e}",
                self.short(),
                self.dir.join(STATE_FILE).display()
            );
        }
    }
}

/// A record found at start whose VM still runs, waiting for [`Daemon::resume`].
pub(crate) struct Pending {
    pub rec: Persisted,
    pub dir: PathBuf,
}

impl Daemon {
    /// At start: the records in `<state>/c`. Returns the VMs to re-adopt; exited containers
    /// are loaded as they were; the rest (and QEMUs of directories without a record) go.
    pub(crate) fn load_records(&self, cdir: &Path) -> Vec<Pending> {
        let mut adopt = Vec::new();
        for e in std::fs::read_dir(cdir).into_iter().flatten().flatten() {
            let dir = e.path();
            let found = read(&dir).map(|p| {
                let alive = qemu_alive(p.qemu_pid, &dir);
                (decide(&p, alive), p)
            });
            match found {
                Some((Found::Adopt, rec)) => {
                    // Its image stays until its VM is gone.
                    if let Some((_, pin)) = self.images.find_and_pin(&rec.image_id, &rec.id) {
                        pin.keep();
                    }
                    adopt.push(Pending { rec, dir });
                }
                Some((Found::Exited { code, error }, mut rec)) => {
                    for pid in orphan_vms(&dir) {
                        // SAFETY: kill(2) on a QEMU whose command line names this directory.
                        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
                    }
                    cgroup::remove(&rec.cgroup);
                    if rec.phase != "exited" {
                        rec.finished_ns = now_nanos();
                    }
                    rec.phase = "exited".into();
                    rec.exit_code = code;
                    rec.error = error;
                    let _ = write(&dir, &rec);
                    let c = self.ctr_from(rec, dir, None, GuestClient::new(Path::new("/")));
                    self.containers
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .insert(c.id.clone(), c);
                }
                Some((Found::Discard, _)) | None => {
                    for pid in orphan_vms(&dir) {
                        eprintln!("vmd: stopping QEMU pid {pid} left by an earlier daemon");
                        // SAFETY: kill(2) on a QEMU whose command line names this directory.
                        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
                    }
                    let _ = std::fs::remove_dir_all(&dir);
                }
            }
        }
        adopt
    }

    fn ctr_from(
        &self,
        rec: Persisted,
        dir: PathBuf,
        vm: Option<VmProc>,
        guest: GuestClient,
    ) -> Arc<Ctr> {
        let phase = match rec.phase.as_str() {
            "created" => Phase::Created,
            "running" => Phase::Running,
            _ => Phase::Exited,
        };
        let finished = phase == Phase::Exited;
        let hc = rec.req.host_config.clone();
        Arc::new(Ctr {
            id: rec.id.clone(),
            name: Mutex::new(rec.name),
            created: rfc3339(rec.created_ns),
            created_ns: rec.created_ns,
            image_id: rec.image_id,
            req: rec.req,
            dir,
            ports: rec.ports,
            state: Mutex::new(State {
                exit_code: rec.exit_code,
                error: rec.error,
                started_at: if rec.started_ns > 0 {
                    rfc3339(rec.started_ns)
                } else {
                    String::new()
                },
                started_ns: rec.started_ns,
                finished_at: if finished {
                    rfc3339(rec.finished_ns)
                } else {
                    String::new()
                },
                finished_ns: rec.finished_ns,
                pid: if finished { 0 } else { rec.qemu_pid },
            }),
            phase: watch::channel(phase).0,
            vm: Mutex::new(vm),
            agent: Mutex::new(None),
            guest: Mutex::new(guest),
            gid: Mutex::new(rec.gid),
            finished: AtomicBool::new(finished),
            quitting: AtomicBool::new(false),
            attached: AtomicUsize::new(0),
            detached: Notify::new(),
            cgroup: Mutex::new(rec.cgroup),
            starts: AtomicUsize::new(0),
            waiting: Mutex::new(Vec::new()),
            reviving: AtomicBool::new(false),
            policy: restart::Track::new(rec.by_hand, rec.restart_count),
            hc: Mutex::new(hc),
            paused: AtomicBool::new(false),
            volumes: rec.volumes,
            restarting: AtomicBool::new(false),
            restarts: AtomicUsize::new(0),
        })
    }

    /// Re-adopts the VMs found at start: reconnects to each one's engine and agent, then
    /// follows it as if this daemon had started it. Call once, before serving.
    /// Then starts again the exited containers whose restart policy says so (restart.rs).
    /// Then the warm pool starts filling ([`pool`]).
    pub async fn resume(self: &Arc<Self>) {
        self.resume_vms().await;
        self.start_by_policy();
        self.start_pool();
    }

    async fn resume_vms(self: &Arc<Self>) {
        let pending =
            std::mem::take(&mut *self.pending.lock().unwrap_or_else(PoisonError::into_inner));
        for p in pending {
            let short = p.rec.id[..12.min(p.rec.id.len())].to_string();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            // A fresh connection per try: the guest starts a session only once it has seen
            // the old daemon's connection end.
            let guest = loop {
                let g = GuestClient::new(&p.rec.engine_socket);
                match g.try_ping().await {
                    Ok(()) => break Some(g),
                    Err(e) if tokio::time::Instant::now() > deadline => {
                        eprintln!("vmd: {short}: the engine in its VM does not answer: {e}");
                        break None;
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            };
            let vm = VmProc::Adopted {
                pid: p.rec.qemu_pid,
                qemu_log: p.dir.join("qemu.log"),
                serial_log: Some(p.dir.join("serial.log")),
                dir: p.dir.clone(),
            };
            let agent = std::os::unix::net::UnixStream::connect(&p.rec.agent_socket).ok();
            let Some(guest) = guest else {
                let c = self.ctr_from(p.rec, p.dir, Some(vm), GuestClient::new(Path::new("/")));
                self.containers
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(c.id.clone(), c.clone());
                self.finish(
                    &c,
                    255,
                    Some(
                        "the engine in the container's VM did not answer after a daemon restart"
                            .into(),
                    ),
                )
                .await;
                continue;
            };
            let running = p.rec.phase == "running";
            let c = self.ctr_from(p.rec, p.dir, Some(vm), guest);
            *c.agent.lock().unwrap_or_else(PoisonError::into_inner) = agent;
            eprintln!(
                "vmd: {short}: re-adopted its VM (QEMU pid {})",
                c.state.lock().unwrap_or_else(PoisonError::into_inner).pid
            );
            self.containers
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(c.id.clone(), c.clone());
            self.watch_vm(c.clone());
            if running {
                self.follow(c);
            }
        }
    }

    /// For `--live-restore`: leaves every container VM running for the next daemon (records
    /// saved, handles detached so that nothing kills QEMU on the way out). Pooled clones are
    /// no containers: they go.
    pub fn detach_all(&self) {
        let all: Vec<_> = self
            .containers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain()
            .map(|(_, c)| c)
            .collect();
        for c in all {
            c.quitting.store(true, Ordering::SeqCst);
            c.save();
            if let Some(vm) = c.vm.lock().unwrap_or_else(PoisonError::into_inner).take() {
                vm.detach();
            }
        }
        self.pool.close(&self.opts.state_dir.join("c"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(phase: &str) -> Persisted {
        Persisted {
            id: "a".repeat(64),
            name: "web".into(),
            created_ns: 1,
            image_id: "sha256:x".into(),
            req: ContainerCreateRequest::default(),
            ports: vec![("80/tcp".into(), 8080)],
            gid: "b".repeat(64),
            qemu_pid: 4242,
            qmp_socket: Some("/s/c/aaaa/qmp.sock".into()),
            engine_socket: "/s/c/aaaa/engine.sock".into(),
            agent_socket: "/s/c/aaaa/agent.sock".into(),
            cgroup: vec![],
            phase: phase.into(),
            started_ns: 2,
            finished_ns: 0,
            exit_code: 0,
            error: String::new(),
            volumes: vec!["data".into()],
            by_hand: true,
            restart_count: 3,
        }
    }

    #[test]
    fn record_round_trips_through_its_file() {
        let d = tempfile::tempdir().unwrap();
        assert!(read(d.path()).is_none());
        let r = rec("running");
        write(d.path(), &r).unwrap();
        let json = |p: &Persisted| serde_json::to_value(p).unwrap();
        assert_eq!(read(d.path()).map(|p| json(&p)), Some(json(&r)));
        assert!(!d.path().join(format!("{STATE_FILE}.tmp")).exists());
        std::fs::write(d.path().join(STATE_FILE), b"{").unwrap();
        assert!(read(d.path()).is_none());
    }

    #[test]
    fn restore_decisions() {
        assert_eq!(decide(&rec("running"), true), Found::Adopt);
        assert_eq!(decide(&rec("created"), true), Found::Adopt);
        assert!(matches!(
            decide(&rec("running"), false),
            Found::Exited { code: 255, .. }
        ));
        let mut e = rec("exited");
        e.exit_code = 7;
        assert_eq!(
            decide(&e, false),
            Found::Exited {
                code: 7,
                error: String::new()
            }
        );
        assert_eq!(decide(&rec("created"), false), Found::Discard);
    }

    #[test]
    fn a_pid_that_is_not_this_vms_qemu_is_not_alive() {
        let d = tempfile::tempdir().unwrap();
        // This test process is alive but is no QEMU of that directory.
        assert!(!qemu_alive(std::process::id(), d.path()));
        assert!(!qemu_alive(0x7fff_fff0, d.path()));
    }
}
