//! The shim v2 task service (containerd's `containerd.task.v2.Task` over ttrpc, served by
//! the `containerd-shim` crate): one shim process per sandbox, one VM per shim
//! ([`crate::sandbox`]), every container and exec of the sandbox a process of the guest
//! engine in that VM, driven through its Docker API ([`vm_clone::client`]).
//!
//! Ids: containerd's container id is the task id; the guest engine's own container and
//! exec ids never leave the shim. Pids: a process inside the VM has no host pid, so every
//! task and exec reports its VM's QEMU process (what a signal from the host would have to
//! reach, and what its resources are counted on). Exit codes are the guest engine's wait
//! status, which is the process's exit code or 128 + its signal, as runc's shim reports.
//!
//! Beside this file: the binary's side of the protocol (`shim_api`: start, delete), the
//! processes' states (`process`), and the sandbox's limits and figures (`resources`:
//! update, stats).

use crate::config::Config;
use crate::sandbox;
use crate::spec::{Process, Spec};
use crate::stdio::{Copies, Fifos};
use async_trait::async_trait;
use containerd_shim::api;
use containerd_shim::asynchronous::publisher::RemotePublisher;
use containerd_shim::asynchronous::ExitSignal;
use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskStart,
};
use containerd_shim::protos::protobuf::{MessageDyn, MessageField};
use containerd_shim::protos::topics;
use containerd_shim::protos::ttrpc::{self, Code};
use containerd_shim::TtrpcResult;
use containerd_shim::{Task, TtrpcContext};
use docker_api::{ApiError, AttachOptions};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use vm_clone::client::GuestClient;

mod process;
mod resources;
mod shim_api;

use process::Process_;
pub use shim_api::Shim;

/// How long a finished process's output may take to reach its FIFOs before its exit is
/// reported anyway.
const DRAIN: Duration = Duration::from_secs(5);

fn rpc(code: Code, msg: impl std::fmt::Display) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, msg.to_string()))
}

fn internal(what: &str) -> impl FnOnce(anyhow::Error) -> ttrpc::Error + '_ {
    move |e| rpc(Code::INTERNAL, format!("{what}: {e:#}"))
}

fn guest_err(e: ApiError) -> ttrpc::Error {
    let code = match e.status.as_u16() {
        404 => Code::NOT_FOUND,
        409 => Code::FAILED_PRECONDITION,
        400 => Code::INVALID_ARGUMENT,
        501 => Code::UNIMPLEMENTED,
        _ => Code::INTERNAL,
    };
    rpc(code, format!("the sandbox's VM: {}", e.message))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

struct Exec {
    spec: Process,
    proc_: Process_,
    gid: Mutex<Option<String>>,
}

struct Ctr {
    id: String,
    bundle: PathBuf,
    /// The guest engine's container id.
    gid: String,
    pid: u32,
    /// The rootfs mounts were the shim's to make (and so to undo).
    mounted: bool,
    /// A pod's sandbox container: no process in the guest, the VM stands for it.
    pause: bool,
    /// The sandbox's directory (its VM, share and cgroup name).
    sandbox_dir: PathBuf,
    guest: GuestClient,
    init: Process_,
    execs: Mutex<HashMap<String, Arc<Exec>>>,
}

struct Inner {
    namespace: String,
    exit: Arc<ExitSignal>,
    publisher: RemotePublisher,
    config: Mutex<Option<Config>>,
    vm: tokio::sync::Mutex<Option<sandbox::Vm>>,
    containers: Mutex<HashMap<String, Arc<Ctr>>>,
    limits: Mutex<resources::SandboxLimits>,
}

#[derive(Clone)]
pub struct Service(Arc<Inner>);

impl Service {
    fn get(&self, id: &str) -> TtrpcResult<Arc<Ctr>> {
        lock(&self.0.containers)
            .get(id)
            .cloned()
            .ok_or_else(|| rpc(Code::NOT_FOUND, format!("container {id} not found")))
    }

    fn exec(&self, c: &Ctr, exec_id: &str) -> TtrpcResult<Arc<Exec>> {
        lock(&c.execs)
            .get(exec_id)
            .cloned()
            .ok_or_else(|| rpc(Code::NOT_FOUND, format!("exec {exec_id} not found")))
    }

    fn config(&self) -> TtrpcResult<Config> {
        let mut g = lock(&self.0.config);
        if let Some(c) = g.as_ref() {
            return Ok(c.clone());
        }
        let c = Config::load().map_err(|e| rpc(Code::FAILED_PRECONDITION, e))?;
        *g = Some(c.clone());
        Ok(c)
    }

    async fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        let ctx = ttrpc::context::with_timeout(0);
        if let Err(e) = self
            .0
            .publisher
            .publish(ctx, topic, &self.0.namespace, event)
            .await
        {
            log::warn!("publishing {topic}: {e}");
        }
    }

    /// The sandbox's VM, cloned on the first container (and the template built first if
    /// there is none yet).
    async fn vm(&self, dir: &Path, hostname: &str) -> TtrpcResult<(GuestClient, u32, String)> {
        let mut g = self.0.vm.lock().await;
        if let Some(vm) = g.as_ref() {
            return Ok((vm.guest.clone(), vm.pid(), vm.hostname.clone()));
        }
        let cfg = self.config()?;
        let (dir, hostname) = (dir.to_path_buf(), hostname.to_string());
        let vm = tokio::task::spawn_blocking(move || {
            let t = sandbox::template(&cfg)?;
            sandbox::Vm::clone(&t, &dir, &hostname)
        })
        .await
        .map_err(|e| rpc(Code::INTERNAL, format!("clone task: {e}")))?
        .map_err(internal("starting the sandbox's VM"))?;
        vm.ready()
            .await
            .map_err(internal("starting the sandbox's VM"))?;
        let r = (vm.guest.clone(), vm.pid(), vm.hostname.clone());
        *g = Some(vm);
        Ok(r)
    }

    /// Waits in the guest for the init process's exit, then reports it.
    fn follow(&self, c: Arc<Ctr>) {
        let s = self.clone();
        tokio::spawn(async move {
            let code = match c.guest.wait(&c.gid).await {
                Ok(w) => w.status_code.clamp(0, 255) as u32,
                Err(e) => {
                    log::warn!("{}: lost the sandbox's VM: {}", c.id, e.message);
                    255
                }
            };
            let copies = lock(&c.init.copies).clone();
            if let Some(cp) = copies {
                cp.drained(DRAIN).await;
            }
            s.init_exited(&c, code).await;
        });
    }

    /// The init process ended with `code`: its state, and the exit event for containerd.
    async fn init_exited(&self, c: &Ctr, code: u32) {
        c.init.exited(code);
        let p = c.init.get();
        self.publish(
            topics::TASK_EXIT_EVENT_TOPIC,
            Box::new(TaskExit {
                container_id: c.id.clone(),
                id: c.id.clone(),
                pid: c.pid,
                exit_status: code,
                exited_at: p.exited_at(),
                ..Default::default()
            }),
        )
        .await;
    }

    async fn start_exec(&self, c: Arc<Ctr>, exec_id: &str) -> TtrpcResult<api::StartResponse> {
        let e = self.exec(&c, exec_id)?;
        let stdin = !e.proc_.fifos.stdin.is_empty();
        let gid = c
            .guest
            .exec_create(&c.gid, &e.spec.exec_request(stdin))
            .await
            .map_err(guest_err)?;
        *lock(&e.gid) = Some(gid.clone());
        let start = docker_api::types::ExecStartRequest {
            detach: false,
            tty: e.spec.terminal,
        };
        let io = c
            .guest
            .exec_start(&gid, &start, e.spec.terminal, stdin)
            .await
            .map_err(guest_err)?;
        let copies = Arc::new(
            Copies::start(io, &e.proc_.fifos)
                .map_err(|er| rpc(Code::INTERNAL, format!("exec stdio: {er}")))?,
        );
        *lock(&e.proc_.copies) = Some(copies.clone());
        e.proc_
            .state
            .send_modify(|p| p.status = api::Status::RUNNING);
        let (s, exec_id, pid) = (self.clone(), exec_id.to_string(), c.pid);
        tokio::spawn(async move {
            // The exec's stream ends with the exec; its code is asked for then.
            copies.drained(Duration::MAX).await;
            let code = match c.guest.exec_inspect(&gid).await {
                Ok(i) => i.exit_code.unwrap_or(255).clamp(0, 255) as u32,
                Err(_) => 255,
            };
            e.proc_.exited(code);
            s.publish(
                topics::TASK_EXIT_EVENT_TOPIC,
                Box::new(TaskExit {
                    container_id: c.id.clone(),
                    id: exec_id,
                    pid: c.pid,
                    exit_status: code,
                    exited_at: e.proc_.get().exited_at(),
                    ..Default::default()
                }),
            )
            .await;
        });
        Ok(api::StartResponse {
            pid,
            ..Default::default()
        })
    }

    fn proc_of<'a>(&self, c: &'a Ctr, exec: &'a Option<Arc<Exec>>) -> &'a Process_ {
        match exec {
            Some(e) => &e.proc_,
            None => &c.init,
        }
    }

    fn exec_opt(&self, c: &Ctr, exec_id: &str) -> TtrpcResult<Option<Arc<Exec>>> {
        if exec_id.is_empty() {
            Ok(None)
        } else {
            self.exec(c, exec_id).map(Some)
        }
    }

    /// Undoes a create: the share entry and the rootfs mounts.
    fn release(&self, dir: &Path, id: &str, bundle: &Path, mounted: bool) {
        sandbox::unpublish(dir, id);
        if mounted {
            sandbox::unmount(&bundle.join("rootfs"));
        }
    }
}

#[async_trait]
impl Task for Service {
    async fn create(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        if lock(&self.0.containers).contains_key(&req.id) {
            return Err(rpc(Code::ALREADY_EXISTS, format!("{} exists", req.id)));
        }
        if !req.checkpoint.is_empty() {
            return Err(rpc(Code::UNIMPLEMENTED, "restoring a checkpoint"));
        }
        let bundle = PathBuf::from(&req.bundle);
        let spec = Spec::read(&bundle).map_err(|e| rpc(Code::INVALID_ARGUMENT, e))?;
        let cfg = self.config()?;
        let rootfs = bundle.join("rootfs");
        let pause = spec.is_pod_sandbox();
        // A pause container's rootfs is never used: not mounted, not shared.
        for m in req.rootfs.iter().filter(|_| !pause) {
            let (ty, src) = (m.type_.clone(), m.source.clone());
            let (opts, target) = (m.options.clone(), rootfs.clone());
            tokio::task::spawn_blocking(move || {
                containerd_shim::mount::mount_rootfs(
                    Some(ty.as_str()).filter(|t| !t.is_empty()),
                    Some(src.as_str()).filter(|s| !s.is_empty()),
                    &opts,
                    &target,
                )
            })
            .await
            .map_err(|e| rpc(Code::INTERNAL, format!("mount task: {e}")))?
            .map_err(|e| rpc(Code::INTERNAL, format!("mounting the rootfs: {e}")))?;
        }
        let mounted = !pause && !req.rootfs.is_empty();
        let sb = spec.sandbox_id(&req.id).to_string();
        let dir = sandbox::dir(&cfg.state_dir, &self.0.namespace, &sb);
        let hostname = if spec.hostname.is_empty() {
            req.id.chars().take(12).collect()
        } else {
            spec.hostname.clone()
        };
        let fifos = Fifos {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let made = async {
            if pause {
                let (guest, pid, _) = self.vm(&dir, &hostname).await?;
                return Ok((guest, pid, String::new(), None));
            }
            let image = sandbox::publish(&dir, &req.id, &rootfs)
                .map_err(internal("sharing the rootfs with the VM"))?;
            // The sandbox's first container named the VM; the rest share its host name.
            let (guest, pid, hostname) = self.vm(&dir, &hostname).await?;
            let stdin = !fifos.stdin.is_empty();
            let creq = spec
                .process
                .create_request(&image, &hostname, stdin, spec.linux.seccomp.as_ref())
                .map_err(|e| rpc(Code::INVALID_ARGUMENT, e))?;
            let gid = guest.create(&creq).await.map_err(guest_err)?;
            // Attached before the start, so no output is lost.
            let opts = AttachOptions {
                stream: true,
                stdin,
                stdout: true,
                stderr: true,
                logs: false,
            };
            let io = guest
                .attach(&gid, &opts, req.terminal)
                .await
                .map_err(guest_err)?;
            let copies = Copies::start(io, &fifos)
                .map_err(|e| rpc(Code::INTERNAL, format!("stdio: {e}")))?;
            Ok::<_, ttrpc::Error>((guest, pid, gid, Some(copies)))
        };
        let (guest, pid, gid, copies) = match made.await {
            Ok(x) => x,
            Err(e) => {
                self.release(&dir, &req.id, &bundle, mounted);
                return Err(e);
            }
        };
        let init = Process_::new(fifos.clone());
        *lock(&init.copies) = copies.map(Arc::new);
        let c = Arc::new(Ctr {
            id: req.id.clone(),
            bundle,
            gid,
            pid,
            mounted,
            pause,
            sandbox_dir: dir.clone(),
            guest,
            init,
            execs: Mutex::new(HashMap::new()),
        });
        // The sandbox's VM now also carries this container's limits.
        if let Err(e) = self.set_limits(
            &c.id,
            spec.linux.resources.limits(),
            &self.cgroup_name(&c),
            pid,
        ) {
            log::warn!("{}: cgroup limits not applied: {e}", c.id);
        }
        lock(&self.0.containers).insert(req.id.clone(), c);
        self.publish(
            topics::TASK_CREATE_EVENT_TOPIC,
            Box::new(TaskCreate {
                container_id: req.id.clone(),
                bundle: req.bundle.clone(),
                rootfs: req.rootfs.clone(),
                io: MessageField::some(TaskIO {
                    stdin: fifos.stdin,
                    stdout: fifos.stdout,
                    stderr: fifos.stderr,
                    terminal: fifos.terminal,
                    ..Default::default()
                }),
                pid,
                ..Default::default()
            }),
        )
        .await;
        Ok(api::CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    async fn start(
        &self,
        _ctx: &TtrpcContext,
        req: api::StartRequest,
    ) -> TtrpcResult<api::StartResponse> {
        let c = self.get(&req.id)?;
        if !req.exec_id.is_empty() {
            let r = self.start_exec(c.clone(), &req.exec_id).await?;
            self.publish(
                topics::TASK_EXEC_STARTED_EVENT_TOPIC,
                Box::new(TaskExecStarted {
                    container_id: c.id.clone(),
                    exec_id: req.exec_id.clone(),
                    pid: c.pid,
                    ..Default::default()
                }),
            )
            .await;
            return Ok(r);
        }
        if c.init.get().status != api::Status::CREATED {
            return Err(rpc(
                Code::FAILED_PRECONDITION,
                format!("{} was started already", c.id),
            ));
        }
        if !c.pause {
            c.guest.start(&c.gid).await.map_err(guest_err)?;
        }
        c.init
            .state
            .send_modify(|p| p.status = api::Status::RUNNING);
        if !c.pause {
            self.follow(c.clone());
        }
        self.publish(
            topics::TASK_START_EVENT_TOPIC,
            Box::new(TaskStart {
                container_id: c.id.clone(),
                pid: c.pid,
                ..Default::default()
            }),
        )
        .await;
        Ok(api::StartResponse {
            pid: c.pid,
            ..Default::default()
        })
    }

    async fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> TtrpcResult<api::DeleteResponse> {
        let c = self.get(&req.id)?;
        let exec = self.exec_opt(&c, &req.exec_id)?;
        let p = self.proc_of(&c, &exec).get();
        if p.status == api::Status::RUNNING {
            return Err(rpc(
                Code::FAILED_PRECONDITION,
                format!("{} is running: kill it first", req.id),
            ));
        }
        let resp = api::DeleteResponse {
            pid: c.pid,
            exit_status: p.exit_code,
            exited_at: p.exited_at(),
            ..Default::default()
        };
        if exec.is_some() {
            lock(&c.execs).remove(&req.exec_id);
            return Ok(resp);
        }
        if c.pause {
            // Nothing runs in the guest for it.
        } else if let Err(e) = c.guest.remove(&c.gid, true).await {
            log::warn!("{}: removing it in the VM: {}", c.id, e.message);
        }
        lock(&c.init.copies).take();
        if let Ok(cfg) = self.config() {
            let spec = Spec::read(&c.bundle).unwrap_or_default();
            let dir = sandbox::dir(&cfg.state_dir, &self.0.namespace, spec.sandbox_id(&c.id));
            self.release(&dir, &c.id, &c.bundle, c.mounted);
        }
        lock(&self.0.containers).remove(&req.id);
        if let Err(e) = self.set_limits(&c.id, Default::default(), &self.cgroup_name(&c), c.pid) {
            log::warn!("{}: the sandbox's cgroup limits: {e}", c.id);
        }
        self.publish(
            topics::TASK_DELETE_EVENT_TOPIC,
            Box::new(TaskDelete {
                container_id: c.id.clone(),
                pid: c.pid,
                exit_status: p.exit_code,
                exited_at: p.exited_at(),
                ..Default::default()
            }),
        )
        .await;
        Ok(resp)
    }

    async fn pids(
        &self,
        _ctx: &TtrpcContext,
        req: api::PidsRequest,
    ) -> TtrpcResult<api::PidsResponse> {
        let c = self.get(&req.id)?;
        Ok(api::PidsResponse {
            processes: vec![containerd_shim::protos::types::task::ProcessInfo {
                pid: c.pid,
                ..Default::default()
            }],
            ..Default::default()
        })
    }

    async fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        let c = self.get(&req.id)?;
        if !req.exec_id.is_empty() {
            let e = self.exec(&c, &req.exec_id)?;
            if e.proc_.get().status == api::Status::STOPPED {
                return Err(rpc(Code::NOT_FOUND, "process already finished"));
            }
            // The Docker API has no signal for an exec.
            return Err(rpc(
                Code::UNIMPLEMENTED,
                "signalling an exec (the guest engine's API has no such call)",
            ));
        }
        match c.init.get().status {
            api::Status::STOPPED => {
                return Err(rpc(Code::NOT_FOUND, "process already finished"));
            }
            api::Status::CREATED => {
                // Never started: it exits without running, as runc's does.
                c.init.exited(128 + req.signal.min(127));
                return Ok(api::Empty::new());
            }
            _ if c.pause => {
                // The pause process "ends" at the signal; the VM stays for the pod's
                // containers until the sandbox's shim shuts down.
                self.init_exited(&c, 128 + req.signal.min(127)).await;
                return Ok(api::Empty::new());
            }
            _ => {}
        }
        c.guest
            .kill(&c.gid, Some(req.signal.to_string()))
            .await
            .map_err(guest_err)?;
        Ok(api::Empty::new())
    }

    async fn exec(
        &self,
        _ctx: &TtrpcContext,
        req: api::ExecProcessRequest,
    ) -> TtrpcResult<api::Empty> {
        let c = self.get(&req.id)?;
        if c.pause {
            return Err(rpc(
                Code::FAILED_PRECONDITION,
                format!("{} is a pod's sandbox: it runs no process to exec in", c.id),
            ));
        }
        if c.init.get().status != api::Status::RUNNING {
            return Err(rpc(
                Code::FAILED_PRECONDITION,
                format!("{} is not running", c.id),
            ));
        }
        let spec: Process = serde_json::from_slice(&req.spec.value).map_err(|e| {
            rpc(
                Code::INVALID_ARGUMENT,
                format!("the exec's process spec: {e}"),
            )
        })?;
        if spec.args.is_empty() {
            return Err(rpc(
                Code::INVALID_ARGUMENT,
                "the exec's process has no args",
            ));
        }
        let fifos = Fifos {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        {
            let mut execs = lock(&c.execs);
            if execs.contains_key(&req.exec_id) {
                return Err(rpc(
                    Code::ALREADY_EXISTS,
                    format!("exec {} exists", req.exec_id),
                ));
            }
            execs.insert(
                req.exec_id.clone(),
                Arc::new(Exec {
                    spec,
                    proc_: Process_::new(fifos),
                    gid: Mutex::new(None),
                }),
            );
        }
        self.publish(
            topics::TASK_EXEC_ADDED_EVENT_TOPIC,
            Box::new(TaskExecAdded {
                container_id: c.id.clone(),
                exec_id: req.exec_id.clone(),
                ..Default::default()
            }),
        )
        .await;
        Ok(api::Empty::new())
    }

    async fn resize_pty(
        &self,
        _ctx: &TtrpcContext,
        req: api::ResizePtyRequest,
    ) -> TtrpcResult<api::Empty> {
        let c = self.get(&req.id)?;
        let (h, w) = (
            req.height.min(u16::MAX as u32) as u16,
            req.width.min(u16::MAX as u32) as u16,
        );
        if c.pause {
            return Ok(api::Empty::new());
        }
        if req.exec_id.is_empty() {
            c.guest.resize(&c.gid, h, w).await.map_err(guest_err)?;
        } else {
            let e = self.exec(&c, &req.exec_id)?;
            let gid = lock(&e.gid).clone();
            if let Some(gid) = gid {
                c.guest.exec_resize(&gid, h, w).await.map_err(guest_err)?;
            }
        }
        Ok(api::Empty::new())
    }

    async fn close_io(
        &self,
        _ctx: &TtrpcContext,
        req: api::CloseIORequest,
    ) -> TtrpcResult<api::Empty> {
        let c = self.get(&req.id)?;
        let exec = self.exec_opt(&c, &req.exec_id)?;
        if let Some(cp) = lock(&self.proc_of(&c, &exec).copies).as_ref() {
            cp.close_stdin();
        }
        Ok(api::Empty::new())
    }

    async fn state(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> TtrpcResult<api::StateResponse> {
        let c = self.get(&req.id)?;
        let exec = self.exec_opt(&c, &req.exec_id)?;
        let pr = self.proc_of(&c, &exec);
        let p = pr.get();
        Ok(api::StateResponse {
            id: req.id.clone(),
            bundle: c.bundle.display().to_string(),
            pid: c.pid,
            status: p.status.into(),
            stdin: pr.fifos.stdin.clone(),
            stdout: pr.fifos.stdout.clone(),
            stderr: pr.fifos.stderr.clone(),
            terminal: pr.fifos.terminal,
            exit_status: p.exit_code,
            exited_at: p.exited_at(),
            exec_id: req.exec_id.clone(),
            ..Default::default()
        })
    }

    async fn wait(
        &self,
        _ctx: &TtrpcContext,
        req: api::WaitRequest,
    ) -> TtrpcResult<api::WaitResponse> {
        let c = self.get(&req.id)?;
        let exec = self.exec_opt(&c, &req.exec_id)?;
        let p = self.proc_of(&c, &exec).wait().await;
        Ok(api::WaitResponse {
            exit_status: p.exit_code,
            exited_at: p.exited_at(),
            ..Default::default()
        })
    }

    /// New `linux.resources` for a task: its share of the sandbox VM's cgroup limits.
    async fn update(
        &self,
        _ctx: &TtrpcContext,
        req: api::UpdateTaskRequest,
    ) -> TtrpcResult<api::Empty> {
        self.update_task(&req).await?;
        Ok(api::Empty::new())
    }

    async fn stats(
        &self,
        _ctx: &TtrpcContext,
        req: api::StatsRequest,
    ) -> TtrpcResult<api::StatsResponse> {
        self.stats_of(&req.id).await
    }

    async fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        let c = self.get(&req.id)?;
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid: c.pid,
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        })
    }

    /// containerd asks after each delete; the shim (and its VM) goes once the sandbox has
    /// no container left.
    async fn shutdown(
        &self,
        _ctx: &TtrpcContext,
        req: api::ShutdownRequest,
    ) -> TtrpcResult<api::Empty> {
        if !req.now && !lock(&self.0.containers).is_empty() {
            return Ok(api::Empty::new());
        }
        let vm = self.0.vm.lock().await.take();
        if let Some(mut vm) = vm {
            tokio::task::spawn_blocking(move || vm.destroy())
                .await
                .map_err(|e| rpc(Code::INTERNAL, format!("VM task: {e}")))?;
        }
        self.remove_cgroups();
        self.0.exit.signal();
        Ok(api::Empty::new())
    }
}
