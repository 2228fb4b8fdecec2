//! The engine's implementation of the Docker API back end: the [`Engine`] and what its seams
//! share (finding containers, threads that move a process's output and input, confinement,
//! tracing). Each seam's trait is implemented in its own file: [`system`], [`images`],
//! [`containers`], [`exec`], [`archive`].

mod archive;
mod build;
mod containers;
mod exec;
mod health;
mod image_ops;
mod images;
mod layer_export;
mod live;
mod networks;
mod ops;
mod push;
mod system;
#[cfg(test)]
mod tests;
mod volumes;

pub use live::{machine_shutting_down, sigterm_stops_containers};

use crate::args::Args;
use crate::containers::{Container, Status};
use crate::images::Store;
use crate::net;
use crate::runtime::{self, Runtime};
use bytes::Bytes;
use docker_api::time::now_nanos;
use docker_api::types::*;
use docker_api::{ApiError, ApiResult, ContainerBackend};
use exec::Exec;
use std::collections::HashMap;
use std::fs::File;
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
    volumes: crate::volumes::Store,
    registry: registry::Client,
    containers: Mutex<HashMap<String, Arc<Container>>>,
    execs: Mutex<HashMap<String, Arc<Exec>>>,
    me: OnceLock<Weak<Engine>>,
    shutting_down: std::sync::atomic::AtomicBool,
    /// Bridge networking, when enabled and set up; else why not.
    bridge: Result<(net::Bridge, net::Ipam), String>,
    /// What needs privilege: shims, cgroups, network attach, signals.
    runtime: Arc<dyn Runtime>,
    /// User-defined networks and the embedded DNS.
    nets: networks::NetState,
    /// Builds under way, by build id: what `POST /build/cancel` ends.
    builds: Mutex<HashMap<String, build::Running>>,
}

/// A running container the last engine left, re-adopted in [`Engine::restore`].
type Adopted = (Arc<Container>, Box<dyn runtime::host::Watch>);

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

/// Capabilities, seccomp, no_new_privs and ulimits for a container (runtime::confine,
/// runtime::rlimits).
fn confinement(hc: &HostConfig) -> Result<runtime::confine::Confinement, String> {
    let v = |o: &Option<Vec<String>>| o.clone().unwrap_or_default();
    let mut c = runtime::confine::for_container(
        hc.privileged,
        &v(&hc.cap_add),
        &v(&hc.cap_drop),
        &v(&hc.security_opt),
    )?;
    c.rlimits = runtime::rlimits::from_host_config(hc.extra.get("Ulimits"))?;
    Ok(c)
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
        *ON.get_or_init(|| std::env::var_os(vmd_contract::TRACE_ENV).is_some())
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
        Engine::with_runtime(args, Arc::new(runtime::Host::default()))
    }

    /// [`Engine::open`] on another runtime (the unit tests' recording one).
    pub fn with_runtime(args: &Args, runtime: Arc<dyn Runtime>) -> anyhow::Result<Self> {
        let root = args.data_root.clone();
        let images = Store::open(&root.join("images"))?.with_share(args.image_share.clone());
        std::fs::create_dir_all(root.join("containers"))?;
        let volumes = crate::volumes::Store::open(&root.join("volumes"))?;
        let bridge = if args.bridge == "none" {
            Err("bridge networking is off (--bridge none)".to_string())
        } else {
            let b = net::Bridge::new(&args.bridge, &args.bip).map_err(anyhow::Error::msg)?;
            match runtime.setup_bridge(&b) {
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
        let nets = networks::NetState::open(&root, bridge.as_ref().ok().map(|b| &b.0), &*runtime);
        let engine = Engine {
            root,
            exec_root,
            volatile_layers: args.volatile_layers,
            images,
            volumes,
            registry: registry::Client::new(USER_AGENT, args.insecure_registries.clone()),
            containers: Mutex::new(HashMap::new()),
            execs: Mutex::new(HashMap::new()),
            me: OnceLock::new(),
            shutting_down: false.into(),
            bridge,
            runtime,
            nets,
            builds: Mutex::new(HashMap::new()),
        };
        engine.networks_up();
        Ok(engine)
    }

    /// Starts one shim in advance for the next container (see [`runtime::Prespawned`]).
    pub fn prespawn_shim(&self) {
        self.runtime.prespawn();
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

    /// Loads containers from disk, re-adopts those that still run (live.rs) and restarts
    /// those whose policy says so.
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
        let mut adopted: Vec<Adopted> = Vec::new();
        if let Ok(rd) = std::fs::read_dir(self.exec_root.join("containers")) {
            for e in rd.flatten() {
                let Some(mut rec) = Container::load(&e.path()) else {
                    continue;
                };
                let (dir, data) = self.container_dirs(&rec.id);
                // Live-restore: a container whose monitor answers still runs.
                let mut watch = None;
                let mut ended_away = false;
                if rec.status == Status::Running {
                    watch = self.reconcile(&dir, &mut rec);
                    ended_away = watch.is_none();
                }
                // Restarting (or anything else in flight) when the engine went: over.
                if rec.status.is_active() && watch.is_none() {
                    rec.status = Status::Exited;
                    rec.finished_at = now_nanos();
                    rec.pid = 0;
                }
                let policy = rec.host_config.restart_policy.clone();
                let restart = watch.is_none()
                    && !rec.stopped_by_user
                    && match policy.name.as_str() {
                        "always" | "unless-stopped" => true,
                        // An exit the engine missed counts as one it saw.
                        "on-failure" => {
                            ended_away
                                && rec.exit_code != 0
                                && (policy.maximum_retry_count == 0
                                    || rec.restart_count < policy.maximum_retry_count)
                        }
                        _ => false,
                    };
                let c = Arc::new(Container::new(dir, data, rec.clone()));
                c.save();
                if restart {
                    to_start.push(rec.id.clone());
                }
                if let Some(w) = watch {
                    adopted.push((c.clone(), w));
                }
                self.containers.lock().unwrap().insert(rec.id.clone(), c);
            }
        }
        for (c, w) in adopted {
            self.readopt(c, w).await;
        }
        let live = self.containers.lock().unwrap().keys().cloned().collect();
        if let Ok((_, ipam)) = &self.bridge {
            ipam.retain(&live);
        }
        self.nets.store.retain(&live);
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
}
