//! The engine's implementation of the Docker API back end.

use crate::args::Args;
use crate::containers::{parse_signal, random_name, valid_name, Container, Events, Record};
use crate::images::{self, Store};
use crate::runtime::{self, Bind, ExecSpec, Process, RunSpec, Stdio3};
use crate::{cgroup, logs, net, netproxy};
use bytes::Bytes;
use docker_api::time::{human, now_nanos, rfc3339, since, unix_from_rfc3339};
use docker_api::types::*;
use docker_api::{
    ApiError, ApiResult, AttachIo, AttachOptions, Backend, Frame, FrameRx, LogsOptions,
    RegistryAuth, StdStream, WaitCondition,
};
use registry::Reference;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use tokio::sync::mpsc;

/// The registry client's `User-Agent`.
pub const USER_AGENT: &str = concat!("axion-engine/", env!("CARGO_PKG_VERSION"));

pub struct Engine {
    root: PathBuf,
    /// Where containers' state lives (`--exec-root`, else `root`).
    exec_root: PathBuf,
    /// `--volatile-layers`.
    volatile_layers: bool,
    images: Store,
    registry: registry::Client,
    containers: Mutex<HashMap<String, Arc<Container>>>,
    execs: Mutex<HashMap<String, Arc<Exec>>>,
    me: OnceLock<Weak<Engine>>,
    shutting_down: std::sync::atomic::AtomicBool,
    /// Bridge networking, when enabled and set up; else why not.
    bridge: Result<(net::Bridge, net::Ipam), String>,
    /// A shim waiting for the next container's spec ([`Engine::prespawn_shim`]).
    prespawned: Mutex<Option<runtime::Prespawned>>,
}

pub struct Exec {
    id: String,
    container: String,
    req: ExecCreateRequest,
    state: Mutex<(bool, Option<i64>, i32)>, // running, exit code, pid
    pty: Mutex<Option<OwnedFd>>,
}

fn random_id() -> String {
    let b: [u8; 32] = rand::random();
    hex::encode(b)
}

fn internal<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> ApiError + '_ {
    move |e| ApiError::internal(format!("{what}: {e}"))
}

fn no_such_container(id: &str) -> ApiError {
    ApiError::not_found(format!("No such container: {id}"))
}

fn set_winsize(fd: &OwnedFd, h: u16, w: u16) {
    let ws = libc::winsize {
        ws_row: h,
        ws_col: w,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ on a pty master with a valid winsize.
    unsafe {
        libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ as _, &ws);
    }
}

/// Reads `r` in a thread, handing each chunk to `f` until EOF or error.
/// Binds the host side of every `-p` of a container (TCP and UDP).
async fn publish_ports(r: &Record) -> Result<Vec<netproxy::Bound>, String> {
    let map = r.host_config.port_bindings.clone().unwrap_or_default();
    let mut bound = Vec::new();
    for m in docker_api::portspec::from_port_bindings(&map).map_err(|e| e.to_string())? {
        bound.push(netproxy::bind_mapping(&m).await?);
    }
    Ok(bound)
}

fn reader_thread<R: Read + Send + 'static>(
    mut r: R,
    mut f: impl FnMut(Bytes) + Send + 'static,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match r.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => f(Bytes::copy_from_slice(&buf[..n])),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
    })
}

/// Writes chunks from `rx` into `w` (a pipe or pty master) in a thread.
fn stdin_thread(
    mut w: std::fs::File,
    mut rx: mpsc::Receiver<Bytes>,
    on_eof: impl FnOnce() + Send + 'static,
) {
    std::thread::spawn(move || {
        while let Some(b) = rx.blocking_recv() {
            if w.write_all(&b).is_err() {
                break;
            }
        }
        drop(w);
        on_eof();
    });
}

/// Capabilities, seccomp and no_new_privs for a container (runtime::confine).
fn confinement(hc: &HostConfig) -> Result<runtime::confine::Confinement, String> {
    let v = |o: &Option<Vec<String>>| o.clone().unwrap_or_default();
    runtime::confine::for_container(
        hc.privileged,
        &v(&hc.cap_add),
        &v(&hc.cap_drop),
        &v(&hc.security_opt),
    )
}

/// Start-up and exit timing of one container on stderr (the service log) when the engine runs
/// with `AXION_ENGINE_TRACE` set (axion-vmd sets it in its VMs under `VMD_DEBUG`): lines
/// `engine: trace ID12 +S.SSS s STEP`, seconds since the start request.
struct Trace {
    on: bool,
    id: String,
    t0: std::time::Instant,
}

impl Trace {
    fn enabled() -> bool {
        static ON: OnceLock<bool> = OnceLock::new();
        *ON.get_or_init(|| std::env::var_os("AXION_ENGINE_TRACE").is_some())
    }

    fn new(id: &str) -> Trace {
        Trace {
            on: Trace::enabled(),
            id: id.chars().take(12).collect(),
            t0: std::time::Instant::now(),
        }
    }

    fn mark(&self, step: &str) {
        if self.on {
            eprintln!(
                "engine: trace {} +{:.3} s {step}",
                self.id,
                self.t0.elapsed().as_secs_f64()
            );
        }
    }
}

impl Engine {
    pub fn open(args: &Args) -> anyhow::Result<Self> {
        let root = args.data_root.clone();
        let images = Store::open(&root.join("images"))?.with_share(args.image_share.clone());
        for d in ["containers", "volumes"] {
            std::fs::create_dir_all(root.join(d))?;
        }
        let bridge = if args.bridge == "none" {
            Err("bridge networking is off (--bridge none)".to_string())
        } else {
            let b = net::Bridge::new(&args.bridge, &args.bip).map_err(anyhow::Error::msg)?;
            match net::setup_host(&b) {
                Ok(()) => {
                    eprintln!(
                        "engine: bridge {} at {}/{} (NAT for {})",
                        b.name,
                        b.gateway,
                        b.prefix,
                        b.subnet()
                    );
                    let ipam = net::Ipam::open(&root.join("network/ipam.json"), &b);
                    Ok((b, ipam))
                }
                Err(e) => {
                    eprintln!("engine: WARNING: bridge networking unavailable: {e}");
                    Err(format!("bridge networking unavailable: {e}"))
                }
            }
        };
        let exec_root = args.exec_root.clone().unwrap_or_else(|| root.clone());
        std::fs::create_dir_all(exec_root.join("containers"))?;
        Ok(Engine {
            root,
            exec_root,
            volatile_layers: args.volatile_layers,
            images,
            registry: registry::Client::new(USER_AGENT, args.insecure_registries.clone()),
            containers: Mutex::new(HashMap::new()),
            execs: Mutex::new(HashMap::new()),
            me: OnceLock::new(),
            shutting_down: false.into(),
            bridge,
            prespawned: Mutex::new(None),
        })
    }

    /// Starts one shim in advance for the next container (see [`runtime::Prespawned`]):
    /// axion-vmd's VMs run one container each and are cloned from a template saved with
    /// this shim waiting. Not refilled after use: a refill would compete with the running
    /// container for the VM's CPU, and a VM's one container has used it.
    pub fn prespawn_shim(&self) {
        match runtime::Prespawned::start() {
            Ok(p) => *self.prespawned.lock().unwrap() = Some(p),
            Err(e) => eprintln!("engine: cannot start a shim in advance: {e}"),
        }
    }

    /// A container's two directories: state and set-up files, then writable layer and log
    /// (the same unless `--exec-root` is set).
    fn container_dirs(&self, id: &str) -> (PathBuf, PathBuf) {
        (
            self.exec_root.join("containers").join(id),
            self.root.join("containers").join(id),
        )
    }

    fn arc(&self) -> Option<Arc<Engine>> {
        self.me.get().and_then(Weak::upgrade)
    }

    /// Loads containers from disk; restarts those whose policy says so.
    pub async fn restore(self: Arc<Self>) {
        let _ = self.me.set(Arc::downgrade(&self));
        let mut to_start = Vec::new();
        if self.exec_root != self.root {
            // Writable layers whose state went with a tmpfs exec root (a reboot): nothing
            // can use them any more.
            for e in std::fs::read_dir(self.root.join("containers"))
                .into_iter()
                .flatten()
                .flatten()
            {
                if !self
                    .exec_root
                    .join("containers")
                    .join(e.file_name())
                    .exists()
                {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        if let Ok(rd) = std::fs::read_dir(self.exec_root.join("containers")) {
            for e in rd.flatten() {
                let Some(mut rec) = Container::load(&e.path()) else {
                    continue;
                };
                if rec.status == "running" || rec.status == "restarting" {
                    rec.status = "exited".into();
                    rec.exit_code = 255;
                    rec.finished_at = now_nanos();
                    rec.pid = 0;
                }
                let policy = rec.host_config.restart_policy.name.clone();
                let restart =
                    policy == "always" || (policy == "unless-stopped" && !rec.stopped_by_user);
                let (dir, data) = self.container_dirs(&rec.id);
                let c = Arc::new(Container::new(dir, data, rec.clone()));
                c.save();
                if restart {
                    to_start.push(rec.id.clone());
                }
                self.containers.lock().unwrap().insert(rec.id.clone(), c);
            }
        }
        if let Ok((_, ipam)) = &self.bridge {
            ipam.retain(&self.containers.lock().unwrap().keys().cloned().collect());
        }
        for id in to_start {
            if let Err(e) = self.container_start(&id).await {
                eprintln!("engine: restarting {id} on boot: {}", e.message);
            }
        }
    }

    /// Stops running containers (SIGTERM, then SIGKILL after 5 s) before the engine exits.
    pub async fn shutdown(&self) {
        self.shutting_down
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let ids: Vec<String> = self
            .containers
            .lock()
            .unwrap()
            .values()
            .filter(|c| c.is_running())
            .map(|c| c.snapshot().id)
            .collect();
        let mut tasks = Vec::new();
        for id in ids {
            if let Some(me) = self.arc() {
                tasks.push(tokio::spawn(async move {
                    me.stop_inner(&id, Some(5), None, false).await
                }));
            }
        }
        for t in tasks {
            let _ = t.await;
        }
    }

    fn find(&self, name: &str) -> ApiResult<Arc<Container>> {
        let map = self.containers.lock().unwrap();
        if let Some(c) = map.get(name) {
            return Ok(c.clone());
        }
        let n = name.strip_prefix('/').unwrap_or(name);
        if let Some(c) = map.values().find(|c| c.rec.lock().unwrap().name == n) {
            return Ok(c.clone());
        }
        let m: Vec<_> = map
            .iter()
            .filter(|(id, _)| !name.is_empty() && id.starts_with(name))
            .collect();
        match m.len() {
            1 => Ok(m[0].1.clone()),
            0 => Err(no_such_container(name)),
            _ => Err(ApiError::bad_request(format!(
                "multiple IDs found with provided prefix: {name}"
            ))),
        }
    }

    fn resolve_image(&self, name: &str) -> ApiResult<String> {
        self.images
            .resolve(name)
            .ok_or_else(|| ApiError::not_found(format!("No such image: {name}")))
    }

    fn summary_status(r: &Record) -> String {
        match r.status.as_str() {
            "running" => format!("Up {}", human(since(r.started_at))),
            "exited" => format!(
                "Exited ({}) {} ago",
                r.exit_code,
                human(since(r.finished_at))
            ),
            "created" => "Created".into(),
            s => s.to_string(),
        }
    }

    fn spec_for(&self, c: &Container, r: &Record, lowers: Vec<PathBuf>) -> ApiResult<RunSpec> {
        let mut env = r.config.env.clone().unwrap_or_default();
        if !env.iter().any(|e| e.starts_with("PATH=")) {
            env.insert(
                0,
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
            );
        }
        env.push(format!("HOSTNAME={}", r.config.hostname));
        if r.config.tty && !env.iter().any(|e| e.starts_with("TERM=")) {
            env.push("TERM=xterm".into());
        }
        let mut args = vec![r.path.clone()];
        args.extend(r.args.iter().cloned());
        Ok(RunSpec {
            rootfs: c.dir.join("rootfs"),
            lowers,
            upper: c.data.join("upper"),
            work: c.data.join("work"),
            binds: r.binds.clone(),
            etc_files: vec![
                (c.dir.join("hosts"), "/etc/hosts".into()),
                (c.dir.join("hostname"), "/etc/hostname".into()),
                (c.dir.join("resolv.conf"), "/etc/resolv.conf".into()),
            ],
            hostname: r.config.hostname.clone(),
            new_netns: r.host_config.network_mode != "host",
            volatile: self.volatile_layers,
            trace: Trace::enabled(),
            process: Process {
                args,
                env,
                cwd: r.config.working_dir.clone(),
                user: r.config.user.clone(),
                tty: r.config.tty,
                confine: confinement(&r.host_config).map_err(ApiError::bad_request)?,
            },
        })
    }

    /// Boxed because the exit handler restarts containers through it (a recursive future).
    fn start_inner<'a>(
        &'a self,
        c: &'a Arc<Container>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ApiResult<()>> + Send + 'a>> {
        Box::pin(self.start_impl(c))
    }

    async fn start_impl(&self, c: &Arc<Container>) -> ApiResult<()> {
        let r = c.snapshot();
        let trace = Arc::new(Trace::new(&r.id));
        if r.status == "running" {
            return Err(ApiError::not_modified());
        }
        let lowers = self.images.lowers(&r.image_id).ok_or_else(|| {
            ApiError::internal(format!(
                "image {} of container {} is missing its layers",
                r.image, r.id
            ))
        })?;
        let spec = self.spec_for(c, &r, lowers)?;
        trace.mark("spec (seccomp compiled)");
        // Published ports first: a taken host port fails the start, as in Docker.
        let published = publish_ports(&r).await.map_err(|e| {
            ApiError::internal(format!(
                "driver failed programming external connectivity on endpoint {} ({}): {e}",
                r.name.trim_start_matches('/'),
                r.id
            ))
        })?;
        // Bridge network: the container's address, and /etc/hosts naming it.
        let attach = match (r.host_config.network_mode.as_str(), &self.bridge) {
            ("bridge", Ok((b, ipam))) => {
                let ep = ipam
                    .allocate(&r.id, b)
                    .map_err(internal("allocating an address"))?;
                self.write_hosts(&c.dir, &r.config.hostname, Some(ep.ip))
                    .map_err(internal("writing /etc/hosts"))?;
                Some((b.clone(), ep))
            }
            _ => None,
        };
        let spec_path = c.dir.join("spec.json");
        std::fs::write(&spec_path, serde_json::to_vec(&spec).unwrap_or_default())
            .map_err(internal("writing spec"))?;
        let cg = cgroup::create(&r.id, &r.host_config).map_err(internal("creating cgroup"))?;
        trace.mark("ports, address, spec written, cgroup created");
        let stdio = if r.config.tty {
            Stdio3::Console
        } else {
            Stdio3::Pipes {
                stdin: r.config.open_stdin,
            }
        };
        let cgc = cg.clone();
        let (id, att, tr) = (r.id.clone(), attach.clone(), trace.clone());
        let ready = if runtime::Prespawned::fits(&stdio) {
            self.prespawned.lock().unwrap().take()
        } else {
            None
        };
        let spawned = tokio::task::spawn_blocking(move || {
            tr.mark("blocking task runs");
            let mut s = match ready.map(|p| p.run(&spec_path)) {
                Some(Ok(s)) => {
                    eprintln!(
                        "engine: container {} runs in the pre-spawned shim",
                        &id[..12.min(id.len())]
                    );
                    s
                }
                // Killed meanwhile, say: a fresh shim does the same (the container process,
                // if any, exits without its release).
                Some(Err(e)) => {
                    eprintln!("engine: the pre-spawned shim failed ({e}); starting another");
                    runtime::spawn("__run", &spec_path, stdio)?
                }
                None => runtime::spawn("__run", &spec_path, stdio)?,
            };
            tr.mark("shim forked the container process (pid read)");
            if let Some(cg) = &cgc {
                let _ = cgroup::add(cg, s.pid);
            }
            // The process waits for the release: its network is ready before it runs.
            if let Some((b, ep)) = &att {
                if let Err(e) = net::attach(b, &id, s.pid, ep) {
                    s.cancel();
                    return Ok((
                        s,
                        Err(runtime::SpawnError::Start(format!("network setup: {e}"))),
                    ));
                }
                tr.mark("network attached");
            }
            let res = s.release().and_then(|()| s.take_console());
            tr.mark("released: the container exec'd (or failed)");
            for t in s.trace.drain(..) {
                tr.mark(&t);
            }
            Ok::<_, runtime::SpawnError>((s, res))
        })
        .await
        .map_err(internal("start task"))?;
        let fail = |msg: String, code: i64| {
            let mut rec = c.rec.lock().unwrap();
            rec.status = if rec.started_at == 0 {
                "created".into()
            } else {
                "exited".into()
            };
            rec.exit_code = code;
            rec.error = msg.clone();
            drop(rec);
            c.save();
            if let Some(cg) = &cg {
                cgroup::remove(cg);
            }
            ApiError::bad_request(format!("failed to create task for container: {msg}"))
        };
        let (mut s, res) = match spawned {
            Ok(v) => v,
            Err(e) => return Err(fail(e.to_string(), 128)),
        };
        let master = match res {
            Ok(m) => m,
            Err(e) => {
                let _ = s.child.wait();
                let code = if e.to_string().contains("executable file not found") {
                    127
                } else {
                    126
                };
                return Err(fail(e.to_string(), code));
            }
        };
        {
            let mut rec = c.rec.lock().unwrap();
            rec.status = "running".into();
            rec.pid = s.pid;
            rec.started_at = now_nanos();
            rec.error.clear();
            rec.cgroup = cg.clone();
            rec.oom_killed = false;
            rec.endpoint = attach.map(|(_, ep)| ep);
        }
        c.save();
        c.events.send_modify(|e| e.running = true);
        trace.mark("running, state saved");
        // Output → log file + attach subscribers.
        let log = c.log_path();
        let mut readers = Vec::new();
        let sink = |stream: StdStream| {
            let tx = c.output.clone();
            let log = log.clone();
            move |b: Bytes| {
                let f = Frame { stream, data: b };
                let _ = logs::append(&log, &f);
                let _ = tx.send(Some(f));
            }
        };
        if let Some(m) = master {
            let rd = std::fs::File::from(m.try_clone().map_err(internal("pty"))?);
            *c.stdin.lock().unwrap() =
                Some(std::fs::File::from(m.try_clone().map_err(internal("pty"))?));
            *c.pty.lock().unwrap() = Some(m);
            readers.push(reader_thread(rd, sink(StdStream::Stdout)));
        } else {
            if let Some(o) = s.child.stdout.take() {
                readers.push(reader_thread(o, sink(StdStream::Stdout)));
            }
            if let Some(e) = s.child.stderr.take() {
                readers.push(reader_thread(e, sink(StdStream::Stderr)));
            }
            if let Some(i) = s.child.stdin.take() {
                *c.stdin.lock().unwrap() = Some(std::fs::File::from(OwnedFd::from(i)));
            }
        }
        // Published ports: the host sockets were bound before the start.
        let proxies: Vec<_> = published.into_iter().map(|b| b.serve(s.pid)).collect();
        *c.proxies.lock().unwrap() = proxies;
        // Exit handling.
        let me = self.arc();
        let c2 = c.clone();
        let started = now_nanos();
        trace.mark("start answered");
        tokio::spawn(async move {
            let mut child = s.child;
            let tr = trace.clone();
            let code = tokio::task::spawn_blocking(move || {
                let st = child.wait();
                tr.mark("shim exited");
                for r in readers {
                    let _ = r.join();
                }
                tr.mark("output drained");
                st.map(|s| s.code().unwrap_or(255) as i64).unwrap_or(255)
            })
            .await
            .unwrap_or(255);
            if let Some(me) = me {
                me.on_exit(c2, code, started, &trace).await;
            }
            trace.mark("exit handled");
        });
        Ok(())
    }

    async fn on_exit(self: Arc<Self>, c: Arc<Container>, code: i64, started: i128, trace: &Trace) {
        let _ = c.output.send(None);
        for p in c.proxies.lock().unwrap().drain(..) {
            p.abort();
        }
        *c.stdin.lock().unwrap() = None;
        *c.pty.lock().unwrap() = None;
        let r = {
            let mut rec = c.rec.lock().unwrap();
            rec.status = "exited".into();
            rec.exit_code = code;
            rec.pid = 0;
            rec.finished_at = now_nanos();
            let cg = rec.cgroup.take();
            if let Some(cg) = &cg {
                rec.oom_killed = cgroup::oom_killed(cg);
            }
            (rec.clone(), cg)
        };
        let (r, cg) = r;
        c.save();
        c.events.send_modify(|e| {
            e.exits += 1;
            e.exit_code = code;
            e.running = false;
        });
        trace.mark("saved, waiters told");
        // Cleanup after the waiters are told (its OOM verdict is already read); before a
        // restart, which creates the cgroup again.
        if let Some(cg) = cg {
            let _ = tokio::task::spawn_blocking(move || cgroup::remove(&cg)).await;
            trace.mark("cgroup removed");
        }
        if self.shutting_down.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        let p = &r.host_config.restart_policy;
        let restart = !r.stopped_by_user
            && match p.name.as_str() {
                "always" | "unless-stopped" => true,
                "on-failure" => {
                    code != 0
                        && (p.maximum_retry_count == 0 || r.restart_count < p.maximum_retry_count)
                }
                _ => false,
            };
        if restart {
            let ran = std::time::Duration::from_nanos((now_nanos() - started).max(0) as u64);
            let backoff = if ran.as_secs() >= 10 {
                100
            } else {
                (100u64 << r.restart_count.min(8)).min(10_000)
            };
            {
                let mut rec = c.rec.lock().unwrap();
                rec.restart_count += 1;
                rec.status = "restarting".into();
            }
            c.save();
            tokio::time::sleep(std::time::Duration::from_millis(backoff)).await;
            let _g = c.op.lock().await;
            if c.rec.lock().unwrap().status != "restarting" {
                return; // stopped or removed meanwhile
            }
            if let Err(e) = self.start_inner(&c).await {
                eprintln!("engine: restart of {}: {}", r.id, e.message);
                c.rec.lock().unwrap().status = "exited".into();
                c.save();
            }
        } else if r.host_config.auto_remove {
            let _ = self.remove_inner(&c).await;
        }
    }

    async fn remove_inner(&self, c: &Arc<Container>) -> ApiResult<()> {
        let id = c.snapshot().id;
        self.containers.lock().unwrap().remove(&id);
        if let Ok((_, ipam)) = &self.bridge {
            ipam.release(&id);
        }
        let (dir, data) = (c.dir.clone(), c.data.clone());
        let _ = tokio::task::spawn_blocking(move || {
            let _ = std::fs::remove_dir_all(&data);
            std::fs::remove_dir_all(dir)
        })
        .await;
        c.events.send_modify(|e| e.removed = true);
        Ok(())
    }

    async fn wait_not_running(
        &self,
        c: &Arc<Container>,
        timeout: Option<std::time::Duration>,
    ) -> bool {
        let mut rx = c.events.subscribe();
        let fut = rx.wait_for(|e| !e.running);
        match timeout {
            Some(t) => matches!(tokio::time::timeout(t, fut).await, Ok(Ok(_))),
            None => fut.await.is_ok(),
        }
    }

    fn signal(&self, c: &Container, sig: nix::sys::signal::Signal) -> ApiResult<()> {
        let pid = c.rec.lock().unwrap().pid;
        if pid <= 0 {
            return Err(ApiError::conflict("container is not running"));
        }
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig).map_err(internal("kill"))
    }

    async fn stop_inner(
        &self,
        id: &str,
        timeout: Option<i64>,
        signal: Option<String>,
        by_user: bool,
    ) -> ApiResult<()> {
        let c = self.find(id)?;
        let _g = c.op.lock().await;
        {
            let mut rec = c.rec.lock().unwrap();
            if by_user {
                rec.stopped_by_user = true;
            }
            if rec.status == "restarting" {
                rec.status = "exited".into();
                drop(rec);
                c.save();
                return Ok(());
            }
        }
        if !c.is_running() {
            c.save();
            return Err(ApiError::not_modified());
        }
        let r = c.snapshot();
        let sig = signal
            .or(r.config.stop_signal.clone())
            .and_then(|s| parse_signal(&s))
            .unwrap_or(nix::sys::signal::Signal::SIGTERM);
        let t = timeout.or(r.config.stop_timeout).unwrap_or(10);
        let _ = self.signal(&c, sig);
        let wait = if t < 0 {
            None
        } else {
            Some(std::time::Duration::from_secs(t as u64))
        };
        if !self.wait_not_running(&c, wait).await {
            let _ = self.signal(&c, nix::sys::signal::Signal::SIGKILL);
            self.wait_not_running(&c, Some(std::time::Duration::from_secs(10)))
                .await;
        }
        Ok(())
    }

    fn write_hosts(
        &self,
        dir: &Path,
        hostname: &str,
        ip: Option<std::net::Ipv4Addr>,
    ) -> std::io::Result<()> {
        let own = ip
            .map(|ip| ip.to_string())
            .unwrap_or_else(|| "127.0.1.1".into());
        std::fs::write(
            dir.join("hosts"),
            format!("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{own}\t{hostname}\n"),
        )
    }

    fn make_dirs(
        &self,
        dir: &Path,
        data: &Path,
        hostname: &str,
        network_mode: &str,
    ) -> std::io::Result<()> {
        std::fs::create_dir_all(dir.join("rootfs"))?;
        for d in ["upper", "work"] {
            std::fs::create_dir_all(data.join(d))?;
        }
        std::fs::write(dir.join("hostname"), format!("{hostname}\n"))?;
        self.write_hosts(dir, hostname, None)?;
        // The host's resolv.conf (init writes the DHCP servers there); inside a private
        // network namespace loopback resolvers would not answer, so they are left out.
        let host = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        let resolv = if network_mode == "host" {
            host
        } else {
            net::container_resolv_conf(&host)
        };
        std::fs::write(dir.join("resolv.conf"), resolv)
    }

    fn parse_binds(&self, binds: &[String]) -> ApiResult<(Vec<Bind>, Vec<MountPoint>)> {
        let mut out = Vec::new();
        let mut mounts = Vec::new();
        for b in binds {
            let parts: Vec<&str> = b.split(':').collect();
            let (src, dst, mode) = match parts.as_slice() {
                [s, d] => (*s, *d, ""),
                [s, d, m] => (*s, *d, *m),
                _ => {
                    return Err(ApiError::bad_request(format!(
                        "invalid volume specification: {b:?}"
                    )))
                }
            };
            if !dst.starts_with('/') || dst.split('/').any(|c| c == "..") {
                return Err(ApiError::bad_request(format!(
                    "invalid mount config: mount path must be absolute: {dst:?}"
                )));
            }
            let readonly = mode.split(',').any(|m| m == "ro");
            let (source, kind, name) = if src.starts_with('/') {
                let p = PathBuf::from(src);
                if !p.exists() {
                    std::fs::create_dir_all(&p).map_err(internal("creating bind source"))?;
                }
                (p, "bind", String::new())
            } else {
                if !valid_name(src) {
                    return Err(ApiError::bad_request(format!(
                        "invalid volume name {src:?}"
                    )));
                }
                let p = self.root.join("volumes").join(src).join("_data");
                std::fs::create_dir_all(&p).map_err(internal("creating volume"))?;
                (p, "volume", src.to_string())
            };
            mounts.push(MountPoint {
                kind: kind.into(),
                name,
                source: source.display().to_string(),
                destination: dst.into(),
                mode: mode.into(),
                rw: !readonly,
            });
            out.push(Bind {
                source,
                dest: dst.into(),
                readonly,
            });
        }
        Ok((out, mounts))
    }

    fn inspect_of(&self, c: &Container) -> ContainerInspect {
        let r = c.snapshot();
        let mut ports = std::collections::BTreeMap::new();
        for (k, v) in r.host_config.port_bindings.clone().unwrap_or_default() {
            ports.insert(k, if r.status == "running" { v } else { None });
        }
        ContainerInspect {
            id: r.id.clone(),
            created: rfc3339(r.created),
            path: r.path.clone(),
            args: r.args.clone(),
            state: ContainerState {
                status: r.status.clone(),
                running: r.status == "running",
                restarting: r.status == "restarting",
                pid: r.pid as i64,
                exit_code: r.exit_code,
                oom_killed: r.oom_killed,
                error: r.error.clone(),
                started_at: rfc3339(r.started_at),
                finished_at: rfc3339(r.finished_at),
                ..Default::default()
            },
            image: r.image_id.clone(),
            name: format!("/{}", r.name),
            restart_count: r.restart_count,
            driver: "overlay2".into(),
            platform: "linux".into(),
            host_config: r.host_config.clone(),
            config: r.config.clone(),
            mounts: r.mounts.clone(),
            network_settings: {
                let mut ns = NetworkSettings {
                    ports,
                    ..Default::default()
                };
                if let (Some(ep), "running") = (&r.endpoint, r.status.as_str()) {
                    ns.ip_address = ep.ip.to_string();
                    ns.gateway = ep.gateway.to_string();
                    ns.mac_address = ep.mac.clone();
                    ns.ip_prefix_len = ep.prefix as i64;
                    if let Ok((b, _)) = &self.bridge {
                        ns.bridge = b.name.clone();
                    }
                    ns.networks.insert(
                        "bridge".into(),
                        EndpointSettings {
                            ip_address: ns.ip_address.clone(),
                            gateway: ns.gateway.clone(),
                            mac_address: ns.mac_address.clone(),
                            ip_prefix_len: ns.ip_prefix_len,
                            network_id: "bridge".into(),
                            endpoint_id: r.id.clone(),
                        },
                    );
                }
                ns
            },
            log_path: c.log_path().display().to_string(),
        }
    }

    /// Where `path` of the container is visible to the engine: through /proc/PID/root while
    /// it runs, else through a temporary overlay mount of its root (unmounted on drop).
    fn in_container(&self, c: &Container, path: &str) -> ApiResult<(PathBuf, Option<RootMount>)> {
        if path.split('/').any(|s| s == "..") {
            return Err(ApiError::bad_request(format!("invalid path {path:?}")));
        }
        let rel = path.trim_start_matches('/');
        let r = c.snapshot();
        if r.pid > 0 {
            return Ok((PathBuf::from(format!("/proc/{}/root/{rel}", r.pid)), None));
        }
        let lowers = self
            .images
            .lowers(&r.image_id)
            .ok_or_else(|| ApiError::internal("image layers missing"))?;
        let root = c.dir.join("rootfs");
        let opts = format!(
            "lowerdir={},upperdir={},workdir={}{}",
            lowers
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(":"),
            c.data.join("upper").display(),
            c.data.join("work").display(),
            // A layer used volatile is refused without it.
            if self.volatile_layers {
                ",volatile"
            } else {
                ""
            }
        );
        nix::mount::mount(
            Some("overlay"),
            &root,
            Some("overlay"),
            nix::mount::MsFlags::empty(),
            Some(opts.as_str()),
        )
        .map_err(|e| {
            ApiError::conflict(format!("cannot mount the stopped container's root: {e}"))
        })?;
        Ok((root.join(rel), Some(RootMount(root))))
    }
}

/// A temporary mount of a stopped container's root.
pub struct RootMount(PathBuf);

impl Drop for RootMount {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

impl Backend for Engine {
    async fn version(&self) -> ApiResult<Version> {
        let u = nix::sys::utsname::uname().map_err(internal("uname"))?;
        let v = env!("CARGO_PKG_VERSION").to_string();
        Ok(Version {
            version: v.clone(),
            api_version: docker_api::version::API_VERSION.into(),
            min_api_version: docker_api::version::MIN_API_VERSION.into(),
            git_commit: "axion".into(),
            go_version: "none (Rust)".into(),
            os: "linux".into(),
            arch: "amd64".into(),
            kernel_version: u.release().to_string_lossy().into(),
            build_time: String::new(),
            components: vec![Component {
                name: "Engine".into(),
                version: v,
                details: [
                    ("ApiVersion", docker_api::version::API_VERSION),
                    ("MinAPIVersion", docker_api::version::MIN_API_VERSION),
                    ("GitCommit", "axion"),
                    ("GoVersion", "none (Rust)"),
                    ("Os", "linux"),
                    ("Arch", "amd64"),
                    ("Experimental", "false"),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .chain([(
                    "KernelVersion".to_string(),
                    u.release().to_string_lossy().into_owned(),
                )])
                .collect(),
            }],
        })
    }

    async fn info(&self) -> ApiResult<Info> {
        let u = nix::sys::utsname::uname().map_err(internal("uname"))?;
        let cs: Vec<Record> = self
            .containers
            .lock()
            .unwrap()
            .values()
            .map(|c| c.snapshot())
            .collect();
        let running = cs.iter().filter(|r| r.status == "running").count() as i64;
        let mem = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_kb: i64 = mem
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let os = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
        let pretty = os
            .lines()
            .find_map(|l| l.strip_prefix("PRETTY_NAME="))
            .map(|s| s.trim_matches('"').to_string())
            .unwrap_or_else(|| "Linux".into());
        let mut warnings = Vec::new();
        let v2 = cgroup::available();
        if !v2 {
            warnings.push("WARNING: no cgroup v2 hierarchy at /sys/fs/cgroup: memory, CPU and pids limits are not applied".into());
        }
        if let Err(why) = &self.bridge {
            warnings.push(format!("WARNING: {why}: containers in the default network get loopback only; use -p to publish ports or --network host"));
        }
        Ok(Info {
            id: hex::encode(
                &nix::unistd::gethostname()
                    .map(|h| h.to_string_lossy().as_bytes().to_vec())
                    .unwrap_or_default(),
            ),
            containers: cs.len() as i64,
            containers_running: running,
            containers_stopped: cs.len() as i64 - running,
            images: self.images.list().len() as i64,
            driver: "overlay2".into(),
            docker_root_dir: self.root.display().to_string(),
            kernel_version: u.release().to_string_lossy().into(),
            operating_system: pretty,
            os_type: "linux".into(),
            architecture: u.machine().to_string_lossy().into(),
            ncpu: std::thread::available_parallelism()
                .map(|n| n.get() as i64)
                .unwrap_or(1),
            mem_total: mem_kb * 1024,
            name: nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().into())
                .unwrap_or_default(),
            server_version: env!("CARGO_PKG_VERSION").into(),
            cgroup_driver: if v2 { "cgroupfs".into() } else { "none".into() },
            cgroup_version: if v2 { "2".into() } else { "1".into() },
            logging_driver: "json-file".into(),
            default_runtime: "axion".into(),
            security_options: vec!["name=seccomp,profile=builtin".into()],
            warnings,
            registry_config: Some(RegistryServiceConfig::new(
                registry::DOCKER_HUB,
                self.registry.insecure_cidrs(),
                self.registry.insecure_registries(),
            )),
            ..Default::default()
        })
    }

    async fn images(&self) -> ApiResult<Vec<ImageSummary>> {
        Ok(self
            .images
            .list()
            .into_iter()
            .map(|i| ImageSummary {
                id: i.id.clone(),
                repo_tags: i.tags,
                repo_digests: i.digests,
                created: i
                    .config
                    .created
                    .as_deref()
                    .map(unix_from_rfc3339)
                    .unwrap_or(0),
                size: i.size,
                shared_size: -1,
                containers: -1,
                labels: i.config.config.labels.clone().unwrap_or_default(),
                ..Default::default()
            })
            .collect())
    }

    async fn image_inspect(&self, name: &str) -> ApiResult<ImageInspect> {
        let id = self.resolve_image(name)?;
        let i = self
            .images
            .image(&id)
            .ok_or_else(|| ApiError::not_found(format!("No such image: {name}")))?;
        Ok(ImageInspect {
            id: i.id,
            repo_tags: i.tags,
            repo_digests: i.digests,
            parent: String::new(),
            created: i.config.created.clone().unwrap_or_default(),
            architecture: i.config.architecture.clone(),
            os: i.config.os.clone(),
            size: i.size,
            config: i.config.config.clone(),
            root_fs: RootFs {
                kind: "layers".into(),
                layers: i.config.rootfs.diff_ids.clone(),
            },
        })
    }

    async fn image_pull(
        &self,
        image: &str,
        tag: &str,
        auth: Option<RegistryAuth>,
    ) -> ApiResult<mpsc::Receiver<ProgressMessage>> {
        let full = if tag.is_empty() {
            image.to_string()
        } else if tag.starts_with("sha256:") {
            format!("{image}@{tag}")
        } else {
            format!("{image}:{tag}")
        };
        let r = Reference::parse(&full).map_err(|e| ApiError::bad_request(e.to_string()))?;
        let me = self
            .arc()
            .ok_or_else(|| ApiError::internal("engine is shutting down"))?;
        let (tx, rx) = mpsc::channel(256);
        tokio::spawn(async move {
            let creds = auth.map(|a| registry::Credentials {
                username: a.username,
                password: a.password,
                identity_token: a.identity_token,
            });
            let mut s = me.registry.session(&r, creds);
            let shown = r
                .tagged()
                .unwrap_or_else(|| format!("{}@{}", r.familiar_name(), r.object()));
            match me.images.pull(&mut s, &r, &tx).await {
                Ok((_, existed)) => {
                    let msg = if existed {
                        format!("Status: Image is up to date for {shown}")
                    } else {
                        format!("Status: Downloaded newer image for {shown}")
                    };
                    let _ = tx.send(ProgressMessage::status(None, msg)).await;
                }
                Err(e) => {
                    let msg = match &e {
                        images::ImageError::Registry(registry::RegistryError::NotFound {
                            ..
                        }) => format!("manifest for {shown} not found: manifest unknown: {e}"),
                        _ => e.to_string(),
                    };
                    let _ = tx.send(ProgressMessage::error(msg)).await;
                }
            }
        });
        Ok(rx)
    }

    async fn image_load(&self, mut tar: mpsc::Receiver<Bytes>) -> ApiResult<Vec<String>> {
        use tokio::io::AsyncWriteExt;
        let path = self.images.scratch("load-archive");
        let spool = async {
            let mut f = tokio::fs::File::create(&path).await?;
            while let Some(chunk) = tar.recv().await {
                f.write_all(&chunk).await?;
            }
            f.flush().await
        };
        if let Err(e) = spool.await {
            let _ = std::fs::remove_file(&path);
            return Err(ApiError::internal(format!(
                "cannot store the archive at {}: {e}",
                path.display()
            )));
        }
        let me = self
            .arc()
            .ok_or_else(|| ApiError::internal("engine is shutting down"))?;
        let p = path.clone();
        let r = tokio::task::spawn_blocking(move || me.images.load(&p)).await;
        let _ = std::fs::remove_file(&path);
        match r {
            Ok(Ok(loaded)) => Ok(loaded),
            Ok(Err(e @ images::ImageError::Io { .. })) => Err(ApiError::internal(e.to_string())),
            Ok(Err(e)) => Err(ApiError::bad_request(format!(
                "cannot load the archive: {e}"
            ))),
            Err(e) => Err(ApiError::internal(format!("load task: {e}"))),
        }
    }

    async fn image_tag(&self, name: &str, repo: &str, tag: &str) -> ApiResult<()> {
        let id = self.resolve_image(name)?;
        let r = Reference::parse(&format!("{repo}:{tag}"))
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        let t = r
            .tagged()
            .ok_or_else(|| ApiError::bad_request("a tag is required"))?;
        self.images.tag(&id, &t).map_err(internal("tagging"))
    }

    async fn image_remove(&self, name: &str, force: bool) -> ApiResult<Vec<ImageDeleteItem>> {
        let id = self.resolve_image(name)?;
        let users: Vec<String> = self
            .containers
            .lock()
            .unwrap()
            .values()
            .map(|c| c.snapshot())
            .filter(|r| r.image_id == id)
            .map(|r| r.id[..12].to_string())
            .collect();
        let tagged = Reference::parse(name)
            .ok()
            .and_then(|r| r.tagged())
            .filter(|t| {
                self.images
                    .image(&id)
                    .map(|i| i.tags.contains(t))
                    .unwrap_or(false)
            });
        let mut out = Vec::new();
        if let Some(t) = tagged {
            let img = self.images.image(&id);
            let last = img.map(|i| i.tags.len() <= 1).unwrap_or(true);
            if last && !users.is_empty() && !force {
                return Err(ApiError::conflict(format!("conflict: unable to remove repository reference \"{name}\" (must force) - container {} is using its referenced image {}", users[0], &id[7..19])));
            }
            self.images.untag(&t).map_err(internal("untagging"))?;
            out.push(ImageDeleteItem {
                untagged: Some(t),
                deleted: None,
            });
            if last && users.is_empty() {
                self.images
                    .delete(&id)
                    .map_err(internal("deleting image"))?;
                out.push(ImageDeleteItem {
                    untagged: None,
                    deleted: Some(id),
                });
            }
            return Ok(out);
        }
        if !users.is_empty() && !force {
            return Err(ApiError::conflict(format!("conflict: unable to delete {} (must be forced) - image is being used by stopped container {}", &id[7..19], users[0])));
        }
        let tags = self.images.image(&id).map(|i| i.tags).unwrap_or_default();
        if tags.len() > 1 && !force {
            return Err(ApiError::conflict(format!("conflict: unable to delete {} (must be forced) - image is referenced in multiple repositories", &id[7..19])));
        }
        for t in self
            .images
            .delete(&id)
            .map_err(internal("deleting image"))?
        {
            out.push(ImageDeleteItem {
                untagged: Some(t),
                deleted: None,
            });
        }
        out.push(ImageDeleteItem {
            untagged: None,
            deleted: Some(id),
        });
        Ok(out)
    }

    async fn containers(&self, all: bool) -> ApiResult<Vec<ContainerSummary>> {
        let mut v: Vec<Record> = self
            .containers
            .lock()
            .unwrap()
            .values()
            .map(|c| c.snapshot())
            .collect();
        v.sort_by(|a, b| b.created.cmp(&a.created));
        Ok(v.into_iter()
            .filter(|r| all || r.status == "running" || r.status == "restarting")
            .map(|r| {
                let mut ports = Vec::new();
                if r.status == "running" {
                    for (k, bs) in r.host_config.port_bindings.clone().unwrap_or_default() {
                        let (p, proto) = k.split_once('/').unwrap_or((&k, "tcp"));
                        for b in bs.unwrap_or_default() {
                            ports.push(Port {
                                ip: Some(if b.host_ip.is_empty() {
                                    "0.0.0.0".into()
                                } else {
                                    b.host_ip.clone()
                                }),
                                private_port: p.parse().unwrap_or(0),
                                public_port: b.host_port.parse().ok(),
                                kind: proto.into(),
                            });
                        }
                    }
                }
                ContainerSummary {
                    id: r.id.clone(),
                    names: vec![format!("/{}", r.name)],
                    image: r.image.clone(),
                    image_id: r.image_id.clone(),
                    command: std::iter::once(r.path.clone())
                        .chain(r.args.iter().cloned())
                        .collect::<Vec<_>>()
                        .join(" "),
                    created: (r.created / 1_000_000_000) as i64,
                    ports,
                    labels: r.config.labels.clone().unwrap_or_default(),
                    state: r.status.clone(),
                    status: Self::summary_status(&r),
                }
            })
            .collect())
    }

    async fn container_create(
        &self,
        name: Option<String>,
        req: ContainerCreateRequest,
    ) -> ApiResult<ContainerCreateResponse> {
        if req.config.image.is_empty() {
            return Err(ApiError::bad_request("config.Image is required"));
        }
        let trace = Trace::new("create");
        let name = match name {
            Some(n) => {
                if !valid_name(&n) {
                    return Err(ApiError::bad_request(format!(
                        "Invalid container name ({n}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
                    )));
                }
                n.trim_start_matches('/').to_string()
            }
            None => random_name(),
        };
        if let Ok(c) = self.find(&name) {
            if c.rec.lock().unwrap().name == name {
                let id = c.snapshot().id;
                return Err(ApiError::conflict(format!("Conflict. The container name \"/{name}\" is already in use by container \"{id}\". You have to remove (or rename) that container to be able to reuse that name.")));
            }
        }
        trace.mark("named");
        let image_id = self.resolve_image(&req.config.image)?;
        let img = self
            .images
            .config(&image_id)
            .ok_or_else(|| ApiError::not_found(format!("No such image: {}", req.config.image)))?;
        trace.mark("image resolved");
        let ic = img.config;
        let mut cfg = req.config.clone();
        // Environment: image first, request overrides by key.
        let mut env: Vec<String> = ic.env.clone().unwrap_or_default();
        for e in req.config.env.clone().unwrap_or_default() {
            let k = e.split('=').next().unwrap_or("").to_string();
            env.retain(|x| x.split('=').next() != Some(k.as_str()));
            env.push(e);
        }
        cfg.env = Some(env);
        let (entry, cmd) = match &req.config.entrypoint {
            Some(ep) => (ep.clone(), req.config.cmd.clone().unwrap_or_default()),
            None => (
                ic.entrypoint.clone().unwrap_or_default(),
                req.config
                    .cmd
                    .clone()
                    .or(ic.cmd.clone())
                    .unwrap_or_default(),
            ),
        };
        cfg.entrypoint = Some(entry.clone()).filter(|e| !e.is_empty());
        cfg.cmd = Some(cmd.clone());
        let mut argv: Vec<String> = entry.into_iter().chain(cmd).collect();
        if argv.is_empty() {
            return Err(ApiError::bad_request("no command specified"));
        }
        if cfg.working_dir.is_empty() {
            cfg.working_dir = ic.working_dir.clone();
        }
        if !cfg.working_dir.is_empty() && !cfg.working_dir.starts_with('/') {
            return Err(ApiError::bad_request(format!(
                "the working directory '{}' is invalid, it needs to be an absolute path",
                cfg.working_dir
            )));
        }
        if cfg.user.is_empty() {
            cfg.user = ic.user.clone();
        }
        if cfg.stop_signal.is_none() {
            cfg.stop_signal = ic.stop_signal.clone();
        }
        let id = random_id();
        if cfg.hostname.is_empty() {
            cfg.hostname = id[..12].to_string();
        }
        let mut hc = req.host_config.clone();
        if hc.network_mode.is_empty() || hc.network_mode == "default" {
            hc.network_mode = "bridge".into();
        }
        if !matches!(hc.network_mode.as_str(), "bridge" | "host" | "none") {
            return Err(ApiError::not_found(format!(
                "network {} not found (networks: bridge, host, none)",
                hc.network_mode
            )));
        }
        if !matches!(
            hc.restart_policy.name.as_str(),
            "" | "no" | "always" | "unless-stopped" | "on-failure"
        ) {
            return Err(ApiError::bad_request(format!(
                "invalid restart policy {:?}",
                hc.restart_policy.name
            )));
        }
        if hc.auto_remove && !matches!(hc.restart_policy.name.as_str(), "" | "no") {
            return Err(ApiError::bad_request(
                "conflicting options: cannot specify both --restart and --rm",
            ));
        }
        confinement(&hc).map_err(ApiError::bad_request)?;
        trace.mark("confinement (seccomp compiled)");
        let (binds, mounts) = self.parse_binds(&hc.binds.clone().unwrap_or_default())?;
        let (dir, data) = self.container_dirs(&id);
        self.make_dirs(&dir, &data, &cfg.hostname, &hc.network_mode)
            .map_err(internal("creating container directory"))?;
        trace.mark("directories made");
        let path = argv.remove(0);
        let rec = Record {
            id: id.clone(),
            name,
            created: now_nanos(),
            image: req.config.image.clone(),
            image_id,
            config: cfg,
            host_config: hc,
            path,
            args: argv,
            status: "created".into(),
            binds,
            mounts,
            ..Default::default()
        };
        let c = Arc::new(Container::new(dir, data, rec));
        c.save();
        trace.mark("saved");
        self.containers.lock().unwrap().insert(id.clone(), c);
        Ok(ContainerCreateResponse {
            id,
            warnings: vec![],
        })
    }

    async fn container_inspect(&self, id: &str) -> ApiResult<ContainerInspect> {
        let c = self.find(id)?;
        Ok(self.inspect_of(&c))
    }

    async fn container_start(&self, id: &str) -> ApiResult<()> {
        let c = self.find(id)?;
        let _g = c.op.lock().await;
        c.rec.lock().unwrap().stopped_by_user = false;
        let r = self.start_inner(&c).await;
        if let Err(e) = &r {
            if e.status != http::StatusCode::NOT_MODIFIED {
                // Attach and wait see the failed start as an exit with its code.
                let _ = c.output.send(None);
                let code = c.rec.lock().unwrap().exit_code;
                c.events.send_modify(|ev| {
                    ev.exits += 1;
                    ev.exit_code = code;
                    ev.running = false;
                });
                if c.rec.lock().unwrap().host_config.auto_remove {
                    let _ = self.remove_inner(&c).await;
                }
            }
        }
        r
    }

    async fn container_stop(
        &self,
        id: &str,
        timeout: Option<i64>,
        signal: Option<String>,
    ) -> ApiResult<()> {
        self.stop_inner(id, timeout, signal, true).await
    }

    async fn container_kill(&self, id: &str, signal: Option<String>) -> ApiResult<()> {
        let c = self.find(id)?;
        if !c.is_running() {
            return Err(ApiError::conflict(format!(
                "Cannot kill container: {id}: container {} is not running",
                c.snapshot().id
            )));
        }
        let s = signal.as_deref().unwrap_or("KILL");
        let sig =
            parse_signal(s).ok_or_else(|| ApiError::bad_request(format!("Invalid signal: {s}")))?;
        if sig == nix::sys::signal::Signal::SIGKILL {
            c.rec.lock().unwrap().stopped_by_user = true;
        }
        self.signal(&c, sig)
    }

    async fn container_restart(&self, id: &str, timeout: Option<i64>) -> ApiResult<()> {
        match self.stop_inner(id, timeout, None, false).await {
            Ok(()) => {}
            Err(e) if e.status == http::StatusCode::NOT_MODIFIED => {}
            Err(e) => return Err(e),
        }
        self.container_start(id).await.or_else(|e| {
            if e.status == http::StatusCode::NOT_MODIFIED {
                Ok(())
            } else {
                Err(e)
            }
        })
    }

    async fn container_remove(&self, id: &str, force: bool, _volumes: bool) -> ApiResult<()> {
        let c = self.find(id)?;
        if c.is_running() || c.rec.lock().unwrap().status == "restarting" {
            if !force {
                return Err(ApiError::conflict(format!("cannot remove container \"/{}\": container is running: stop the container before removing or force remove", c.snapshot().name)));
            }
            c.rec.lock().unwrap().stopped_by_user = true;
            if c.rec.lock().unwrap().status == "restarting" {
                c.rec.lock().unwrap().status = "exited".into();
            }
            let _ = self.signal(&c, nix::sys::signal::Signal::SIGKILL);
            self.wait_not_running(&c, Some(std::time::Duration::from_secs(10)))
                .await;
        }
        let _g = c.op.lock().await;
        self.remove_inner(&c).await
    }

    async fn container_prune(&self) -> ApiResult<Vec<String>> {
        let stopped: Vec<Arc<Container>> = self
            .containers
            .lock()
            .unwrap()
            .values()
            .filter(|c| {
                let s = c.rec.lock().unwrap().status.clone();
                s == "exited" || s == "created"
            })
            .cloned()
            .collect();
        let mut ids = Vec::new();
        for c in stopped {
            ids.push(c.snapshot().id);
            self.remove_inner(&c).await?;
        }
        Ok(ids)
    }

    async fn container_wait(&self, id: &str, cond: WaitCondition) -> ApiResult<WaitResponse> {
        let c = self.find(id)?;
        let mut rx = c.events.subscribe();
        let start: Events = *rx.borrow();
        let status = c.rec.lock().unwrap().status.clone();
        let done = |e: &Events| match cond {
            WaitCondition::NotRunning => {
                !e.running && (status != "running" || e.exits > start.exits)
            }
            WaitCondition::NextExit => e.exits > start.exits,
            WaitCondition::Removed => e.removed,
        };
        if cond == WaitCondition::NotRunning && status != "running" && status != "restarting" {
            return Ok(WaitResponse {
                status_code: c.rec.lock().unwrap().exit_code,
                error: None,
            });
        }
        let e = match rx.wait_for(done).await {
            Ok(e) => *e,
            Err(_) => *c.events.borrow(),
        };
        Ok(WaitResponse {
            status_code: e.exit_code,
            error: None,
        })
    }

    async fn container_logs(&self, id: &str, o: LogsOptions) -> ApiResult<(bool, FrameRx)> {
        let c = self.find(id)?;
        let tty = c.rec.lock().unwrap().config.tty;
        let path = c.log_path();
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            let mut pos = 0u64;
            let mut first = true;
            loop {
                let running = c.is_running() || c.rec.lock().unwrap().status == "restarting";
                let data = tokio::fs::read(&path).await.unwrap_or_default();
                let new = &data[(pos as usize).min(data.len())..];
                let end = new
                    .iter()
                    .rposition(|b| *b == b'\n')
                    .map(|i| i + 1)
                    .unwrap_or(0);
                let mut lines: Vec<&str> = std::str::from_utf8(&new[..end])
                    .unwrap_or("")
                    .lines()
                    .collect();
                pos += end as u64;
                if first {
                    if let Some(n) = o.tail {
                        let k = lines.len().saturating_sub(n);
                        lines.drain(..k);
                    }
                    first = false;
                }
                for l in lines {
                    if let Some(f) = logs::decode_line(l, o.stdout, o.stderr, o.timestamps) {
                        if tx.send(f).await.is_err() {
                            return;
                        }
                    }
                }
                if !o.follow || (!running && end == new.len()) {
                    if !o.follow || !running {
                        return;
                    }
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        });
        Ok((tty, rx))
    }

    async fn container_attach(&self, id: &str, o: AttachOptions) -> ApiResult<AttachIo> {
        let c = self.find(id)?;
        let r = c.snapshot();
        let mut sub = c.output.subscribe();
        let (tx, rx) = mpsc::channel(256);
        tokio::spawn(async move {
            loop {
                match sub.recv().await {
                    Ok(Some(f)) => {
                        let want = match f.stream {
                            StdStream::Stdout | StdStream::Stdin => o.stdout,
                            StdStream::Stderr => o.stderr,
                        };
                        if want && tx.send(f).await.is_err() {
                            return;
                        }
                    }
                    Ok(None) | Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                }
            }
        });
        let stdin = if o.stdin && r.config.open_stdin {
            let (itx, irx) = mpsc::channel::<Bytes>(64);
            let c2 = c.clone();
            let once = r.config.stdin_once;
            let tty = r.config.tty;
            // The pipe appears when the container starts; wait for it if attaching first.
            tokio::spawn(async move {
                let w = loop {
                    if let Some(w) = c2
                        .stdin
                        .lock()
                        .unwrap()
                        .as_ref()
                        .and_then(|f| f.try_clone().ok())
                    {
                        break w;
                    }
                    if c2.events.borrow().removed {
                        return;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    if irx.is_closed() && irx.is_empty() {
                        return;
                    }
                };
                let c3 = c2.clone();
                stdin_thread(w, irx, move || {
                    if once && !tty {
                        *c3.stdin.lock().unwrap() = None;
                    }
                });
            });
            Some(itx)
        } else {
            None
        };
        Ok(AttachIo {
            tty: r.config.tty,
            output: rx,
            stdin,
        })
    }

    async fn container_resize(&self, id: &str, h: u16, w: u16) -> ApiResult<()> {
        let c = self.find(id)?;
        if let Some(m) = c.pty.lock().unwrap().as_ref() {
            set_winsize(m, h, w);
        }
        Ok(())
    }

    async fn exec_create(&self, id: &str, req: ExecCreateRequest) -> ApiResult<String> {
        let c = self.find(id)?;
        if !c.is_running() {
            return Err(ApiError::conflict(format!(
                "container {} is not running",
                c.snapshot().id
            )));
        }
        let eid = random_id();
        self.execs.lock().unwrap().insert(
            eid.clone(),
            Arc::new(Exec {
                id: eid.clone(),
                container: c.snapshot().id,
                req,
                state: Mutex::new((false, None, 0)),
                pty: Mutex::new(None),
            }),
        );
        Ok(eid)
    }

    async fn exec_start(&self, exec_id: &str, _start: ExecStartRequest) -> ApiResult<AttachIo> {
        let ex = self
            .execs
            .lock()
            .unwrap()
            .get(exec_id)
            .cloned()
            .ok_or_else(|| ApiError::not_found(format!("No such exec instance: {exec_id}")))?;
        let c = self.find(&ex.container)?;
        let r = c.snapshot();
        if r.pid <= 0 {
            return Err(ApiError::conflict(format!(
                "container {} is not running",
                r.id
            )));
        }
        let mut env = r.config.env.clone().unwrap_or_default();
        if !env.iter().any(|e| e.starts_with("PATH=")) {
            env.insert(
                0,
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
            );
        }
        env.extend(ex.req.env.clone().unwrap_or_default());
        if ex.req.tty && !env.iter().any(|e| e.starts_with("TERM=")) {
            env.push("TERM=xterm".into());
        }
        let spec = ExecSpec {
            pid: r.pid,
            cgroup: r.cgroup.clone(),
            process: Process {
                args: ex.req.cmd.clone(),
                env,
                cwd: if ex.req.working_dir.is_empty() {
                    r.config.working_dir.clone()
                } else {
                    ex.req.working_dir.clone()
                },
                user: if ex.req.user.is_empty() {
                    r.config.user.clone()
                } else {
                    ex.req.user.clone()
                },
                tty: ex.req.tty,
                confine: confinement(&r.host_config).map_err(ApiError::bad_request)?,
            },
        };
        let spec_path = c.dir.join(format!("exec-{}.json", ex.id));
        std::fs::write(&spec_path, serde_json::to_vec(&spec).unwrap_or_default())
            .map_err(internal("writing exec spec"))?;
        let stdio = if ex.req.tty {
            Stdio3::Console
        } else {
            Stdio3::Pipes {
                stdin: ex.req.attach_stdin,
            }
        };
        let sp = spec_path.clone();
        let res = tokio::task::spawn_blocking(move || {
            let mut s = runtime::spawn("__exec", &sp, stdio)?;
            let r = s.release().and_then(|()| s.take_console());
            Ok::<_, runtime::SpawnError>((s, r))
        })
        .await
        .map_err(internal("exec task"))?;
        let _ = std::fs::remove_file(&spec_path);
        let (mut s, started) = res.map_err(|e| ApiError::internal(e.to_string()))?;
        let (tx, rx) = mpsc::channel::<Frame>(256);
        let master = match started {
            Ok(m) => m,
            Err(e) => {
                let _ = s.child.wait();
                *ex.state.lock().unwrap() = (false, Some(126), 0);
                let _ = tx.try_send(Frame::stderr(format!("OCI runtime exec failed: {e}\n")));
                return Ok(AttachIo {
                    tty: ex.req.tty,
                    output: rx,
                    stdin: None,
                });
            }
        };
        *ex.state.lock().unwrap() = (true, None, s.pid);
        let mut readers = Vec::new();
        let fwd = |stream: StdStream| {
            let tx = tx.clone();
            move |b: Bytes| {
                let _ = tx.blocking_send(Frame { stream, data: b });
            }
        };
        let mut stdin_w: Option<std::fs::File> = None;
        if let Some(m) = master {
            readers.push(reader_thread(
                std::fs::File::from(m.try_clone().map_err(internal("pty"))?),
                fwd(StdStream::Stdout),
            ));
            stdin_w = Some(std::fs::File::from(m.try_clone().map_err(internal("pty"))?));
            *ex.pty.lock().unwrap() = Some(m);
        } else {
            if let Some(o) = s.child.stdout.take() {
                readers.push(reader_thread(o, fwd(StdStream::Stdout)));
            }
            if let Some(e) = s.child.stderr.take() {
                readers.push(reader_thread(e, fwd(StdStream::Stderr)));
            }
            if let Some(i) = s.child.stdin.take() {
                stdin_w = Some(std::fs::File::from(OwnedFd::from(i)));
            }
        }
        let stdin = match stdin_w {
            Some(w) if ex.req.attach_stdin => {
                let (itx, irx) = mpsc::channel::<Bytes>(64);
                stdin_thread(w, irx, || {});
                Some(itx)
            }
            _ => None,
        };
        let ex2 = ex.clone();
        let mut child = s.child;
        std::thread::spawn(move || {
            let code = child
                .wait()
                .map(|s| s.code().unwrap_or(255) as i64)
                .unwrap_or(255);
            *ex2.pty.lock().unwrap() = None;
            for r in readers {
                let _ = r.join();
            }
            *ex2.state.lock().unwrap() = (false, Some(code), 0);
            drop(tx); // closes the output stream only after the exit code is known
        });
        Ok(AttachIo {
            tty: ex.req.tty,
            output: rx,
            stdin,
        })
    }

    async fn exec_inspect(&self, exec_id: &str) -> ApiResult<ExecInspect> {
        let ex = self
            .execs
            .lock()
            .unwrap()
            .get(exec_id)
            .cloned()
            .ok_or_else(|| ApiError::not_found(format!("No such exec instance: {exec_id}")))?;
        let (running, code, pid) = *ex.state.lock().unwrap();
        Ok(ExecInspect {
            id: ex.id.clone(),
            running,
            exit_code: code,
            container_id: ex.container.clone(),
            open_stdin: ex.req.attach_stdin,
            open_stdout: ex.req.attach_stdout,
            open_stderr: ex.req.attach_stderr,
            pid: pid as i64,
        })
    }

    async fn exec_resize(&self, exec_id: &str, h: u16, w: u16) -> ApiResult<()> {
        let ex = self
            .execs
            .lock()
            .unwrap()
            .get(exec_id)
            .cloned()
            .ok_or_else(|| ApiError::not_found(format!("No such exec instance: {exec_id}")))?;
        if let Some(m) = ex.pty.lock().unwrap().as_ref() {
            set_winsize(m, h, w);
        }
        Ok(())
    }

    async fn archive_stat(&self, id: &str, path: &str) -> ApiResult<PathStat> {
        let c = self.find(id)?;
        let (p, _m) = self.in_container(&c, path)?;
        stat_of(&p, path)
    }

    async fn archive_get(
        &self,
        id: &str,
        path: &str,
    ) -> ApiResult<(PathStat, mpsc::Receiver<Bytes>)> {
        let c = self.find(id)?;
        let (p, m) = self.in_container(&c, path)?;
        let stat = stat_of(&p, path)?;
        let (tx, rx) = mpsc::channel(16);
        let name = stat.name.clone();
        std::thread::spawn(move || {
            let _m = m;
            struct W(mpsc::Sender<Bytes>);
            impl Write for W {
                fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                    self.0
                        .blocking_send(Bytes::copy_from_slice(b))
                        .map_err(|_| std::io::Error::other("client gone"))?;
                    Ok(b.len())
                }
                fn flush(&mut self) -> std::io::Result<()> {
                    Ok(())
                }
            }
            let mut b = tar::Builder::new(W(tx));
            b.follow_symlinks(false);
            let r = if p.is_dir() {
                b.append_dir_all(&name, &p)
            } else {
                b.append_path_with_name(&p, &name)
            };
            if r.is_ok() {
                let _ = b.finish();
            }
        });
        Ok((stat, rx))
    }

    async fn archive_put(&self, id: &str, path: &str, tar: Bytes) -> ApiResult<()> {
        let c = self.find(id)?;
        let (p, m) = self.in_container(&c, path)?;
        if !p.is_dir() {
            return Err(ApiError::bad_request(format!(
                "extraction point is not a directory: {path}"
            )));
        }
        tokio::task::spawn_blocking(move || {
            let _m = m;
            crate::unpack::unpack(&tar[..], &p, &[])
        })
        .await
        .map_err(internal("copy task"))?
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
        Ok(())
    }
}

fn stat_of(p: &Path, shown: &str) -> ApiResult<PathStat> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::symlink_metadata(p).map_err(|_| {
        ApiError::not_found(format!("Could not find the file {shown} in container"))
    })?;
    let mut mode = m.mode() & 0o777;
    if m.is_dir() {
        mode |= 1 << 31;
    }
    if m.file_type().is_symlink() {
        mode |= 1 << 27;
    }
    Ok(PathStat {
        name: Path::new(shown)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "/".into()),
        size: m.len() as i64,
        mode,
        mtime: rfc3339(m.mtime() as i128 * 1_000_000_000),
        link_target: std::fs::read_link(p)
            .map(|l| l.display().to_string())
            .unwrap_or_default(),
    })
}
