//! axion-vmd: a Docker Engine API endpoint on the host where every container runs in its
//! own VM, instantly cloned from a saved template VM (Project Bonneville's idea, on QEMU).
//!
//! # How it works
//!
//! - The front end is `docker-api` (the same library the guest engine uses); [`Daemon`] is
//!   its second back end.
//! - [`template`]: the qemu profile's kernel + initramfs (+ an appended archive, [`guest`])
//!   is booted once to the point where its engine answers, then saved (QMP migrate to a
//!   file) with its disk overlay kept as the clones' read-only backing file.
//! - `docker create` clones: a new QEMU `-incoming` from the state file with its own qcow2
//!   overlay and forwards; the clone agent in the guest gets a new host name, clock, MAC
//!   and entropy over virtio-serial and mounts the host's layer store ([`store`]) read-only
//!   over 9p; then the daemon creates the container in that VM through the guest engine's
//!   API (the engine finds the image in the share: no pull), and starts, waits, stops, kills
//!   and streams output through it. When the container exits, its logs and its changes
//!   layer are copied to the host and its VM quits; `rm` deletes the VM's directory
//!   (overlay, sockets, logs, changes). A `start` of an exited container clones a new VM and
//!   stacks the kept changes on the image ([`changes`], `boot.rs`).
//!
//! # Decisions
//!
//! - Channel to the guest engine: a virtio-serial port, `axion.engine`, whose host end is a
//!   unix socket in the VM's directory (the state dir is 0700: only the daemon reaches it,
//!   so no TLS and no TCP port; user-net forwards are only for `-p`). A port is one byte
//!   stream and the daemon needs several HTTP connections at once (attach or logs streams,
//!   wait, create...), so it carries a yamux session ([`vchan`], libp2p's `yamux`) and each
//!   request is an HTTP/1.1 exchange on a stream of its own (hyper's client connection
//!   API, [`client`]); the guest engine (`--vmd-port axion.engine`) serves each stream
//!   with `docker_api::server::serve_connection`. The guest runs one session per host
//!   connection: with no host connected it checks every 5 ms (the template is saved in
//!   that wait, so a clone answers within one tick of the daemon connecting), and the
//!   daemon connects once per VM (a second connection could be read as the rest of the
//!   first). A QEMU that exits ends the session: streams and new requests fail at once.
//!   Before (TCP forward to the guest's 2376 with mutual TLS): a TLS handshake per
//!   connection under TCG, certificates in the appended archive, and a host port any local
//!   user could connect to. vsock would need /dev/vhost-vsock, which this host lacks.
//! - The guest side of this mode is configuration: an archive appended to the
//!   initramfs replaces the engine's service file and adds the clone agent's. The engine
//!   gained two flags for it, `--image-share DIR` (below) and `--vmd-port NAME` (above),
//!   and a hidden mode, `engine __vmd-agent PORT`: the clone agent (it was a busybox shell
//!   loop, whose forks cost a clone's single vCPU tens of milliseconds each under TCG; see
//!   "Clone latency").
//! - Images ([`images`], [`store`]): `docker pull` happens on the host only, with the
//!   engine's registry client (the `registry` crate: token auth, indexes, digest checks;
//!   plain HTTP for localhost, 127.0.0.0/8 and `--insecure-registry HOST[:PORT]|CIDR`):
//!   manifest and config are resolved there, every layer blob is fetched into a
//!   content-addressed store (`<state>/store/blobs/sha256/<hex>`: temp file, digest check,
//!   fsync, rename) and unpacked there once (`<state>/store/layers/<diff-id>/`) with the engine's
//!   own rules,
//!   now the `layer-unpack` crate (hostile-tar checks, whiteouts, diff-id check). The store
//!   is one 9p export (`security_model=passthrough,readonly=on`, QEMU runs as root here so
//!   the guest sees the layers' real owners and modes). The 9p device is in the template
//!   too (the device set must match the saved state) but is mounted by the clone agent only
//!   after the restore (a mounted 9p export blocks QEMU's migration, i.e. the save). The
//!   guest engine (`--image-share /run/axion-store`) resolves the image id there, checks the
//!   config's digest and uses the unpacked layers in place as overlayfs lower dirs (the
//!   container's upper dir is on the VM's own disk). Why unpacked trees rather than blobs
//!   the guest imports (like `docker load`): a clone then does no decompression, hashing
//!   or unpacking at all, which under TCG is the expensive part, and the layers take no
//!   space in the VMs. The in-VM pull was seconds per clone (docs/benchmarks.md); importing
//!   shared blobs would skip only its transfer and still pay gunzip + sha256 + unpack under
//!   TCG; with the shared trees the whole step is gone (the host's check of the store runs
//!   while the VM restores and is done when the engine answers). The cost is
//!   reading files over 9p (small for container start-up) and unpacking on the host as root
//!   (device nodes are skipped; whiteouts need mknod, so the daemon must be root, as QEMU's
//!   passthrough model needs anyway). Safety: the store is 0700 (the trees hold the images' setuid
//!   files), QEMU refuses guest writes, and before each container the daemon re-hashes the image's
//!   blobs and trees against their digests (the tree digest is taken at unpack time: names, types,
//!   modes, owners, contents); anything damaged is dropped and fetched again (with the credentials
//!   of the image's last `docker pull`, which the daemon keeps in memory only:
//!   [`images::Images::pull`] says why), or the run is refused with an error saying what is
//!   damaged: a damaged layer never reaches a VM. The check reads every byte of the image (fine for
//!   small images; large ones would want a cheaper seal) and runs while the VM is being cloned.
//!   Garbage collection ([`store`]): after `docker rmi`, when a container's VM is gone and at
//!   start, blobs and trees no image record and no live container (pinned from its create until its
//!   VM is gone) uses are removed, in a crash-safe order. Fallback: an image record from before the
//!   store (no diff-ids) is still pulled by the VM's engine from the registry (10.0.2.2 is the
//!   host's loopback, [`images::guest_ref`]).
//! - Memory (`-m`) and CPU (`--cpus`, `--cpu-quota`) limits are put on each QEMU process
//!   in its own cgroup ([`cgroup`]): cgroup v2 (`/sys/fs/cgroup/axion-vmd/<id>`) or v1
//!   (`/sys/fs/cgroup/{memory,cpu}/<daemon's cgroup>/axion-vmd/<id>`), whichever the host
//!   has; removed when the VM is gone. `-m` bounds the whole QEMU process (guest RAM it has
//!   touched plus QEMU's own), not the guest's RAM size (every clone has the template's RAM):
//!   a limit below the VM's RAM is accepted with a warning, and a guest that touches more
//!   gets its VM killed (the container then shows as exited with an error). Only when
//!   neither cgroup layout works do `docker info` and the daemon's log warn.
//! - Containers survive the daemon (live-restore, [`live`]): a daemon that dies leaves
//!   its VMs running, and with `--live-restore` so does one stopped by SIGTERM; the next
//!   daemon re-adopts them from the records beside each VM. Without `--live-restore`, a
//!   SIGTERM (`cargo xtask vmd --stop`) or Ctrl-C ends every VM. An exited container starts
//!   again on a new VM with its kept changes ([`changes`]).
//! - `-p HOST:CONTAINER` forwards 127.0.0.1:HOST (QEMU's user network binds loopback only)
//!   to the container's port in the VM: the container has its VM's network namespace and
//!   address (10.0.2.15; `bridge`, the default, and `host` both mean the VM's network,
//!   `none` a private one with loopback only): the VM is the sandbox, as in Bonneville.
//! - Interactive use (`run -i`/`-it`, `attach`, `exec [-i] [-t]`): the client's hijacked
//!   connection ends in docker-api's front end as an `AttachIo` (output frames, a stdin
//!   sender), the same shape the guest engine hands its own front end; the daemon fills it
//!   from a hijacked stream to the guest engine (`Upgrade: tcp` on a yamux stream,
//!   [`client::GuestClient::attach`], `exec_start`), so each hop is the engine's own
//!   attach and nothing is spliced as raw bytes. The client's EOF (the CLI's CloseWrite)
//!   half-closes the stream to the guest, which closes the process's stdin (as dockerd:
//!   `echo hi | docker run -i cat` ends). Resizes go to the guest as they come. Exec ids are
//!   the daemon's own, mapped to (container, guest exec id) in `exec.rs`; the exit code is
//!   fetched when an exec's stream ends and kept, since the CLI asks for it afterwards and
//!   the VM may be gone by then. Exec in a container that is not running is a 409, an
//!   unknown exec id a 404, as with dockerd. Detach keys (ctrl-p ctrl-q) on a terminal are
//!   the CLI's own: it closes the connection and the container runs on (tty stdin is not
//!   closed by an attach that ends); the daemon does not look for them in the input
//!   (dockerd does, which matters only for a client without a terminal), nor does the
//!   guest engine.

//!
//! # Clone latency (`docker run --rm busybox true`)
//!
//! A clone's run is what this mode is for, so each step of it was measured and cut; the
//! figures, dated, are in docs/benchmarks.md ("VM per container"). `VMD_DEBUG=1` prints each
//! of the daemon's steps with a wall-clock stamp and sets `AXION_ENGINE_TRACE` in the VMs:
//! the guest engine logs each create/start/exit step and the shim's own steps, and the agent
//! its steps, on the VM's serial console (`<state>/c/ID/serial.log`, kept until `rm`).
//!
//! Under TCG every clone is a new QEMU with an empty translation cache: each kernel and
//! engine path a container touches is translated again, which is why removing paths (netns,
//! ext4 writes, a fork + exec) paid more than making them faster. What the design does for
//! it:
//! - Nothing waits on a poll it could block on: the daemon keeps the agent's channel
//!   connected for the VM's life (with the host end closed the agent's read returns EOF at
//!   once, and a polling agent took TCG time from the container's start); the guest checks
//!   for the host every 5 ms (a clone resumes inside that wait); the daemon retries the
//!   engine's `/_ping` every 20 ms and polls QEMU's restore every 10 ms.
//! - The clone agent is the engine's `__vmd-agent` mode, not a shell loop: system calls
//!   instead of forking `date`, `ip`, `arping`, `mkdir` and `mount`. It answers once the
//!   clock, the RNG and the store are done, and sets the host name and the MAC (+ ARP) after
//!   the answer, on the other vCPU, while the daemon creates the container. The identity goes
//!   to the agent while the engine's first `/_ping` is answered, not one after the other.
//! - The agent credits the host's seed to the kernel's pool and reseeds the CRNG (ioctls
//!   RNDADDENTROPY, RNDRESEEDCRNG) rather than writing it to /dev/urandom: the engine's
//!   first `getrandom` no longer waits for the CRNG, and clones no longer share the
//!   template's CRNG output until the kernel's next periodic reseed (seen before: the guest
//!   engine gave the container of every clone the same id).
//! - The template is saved with work done that every clone would repeat: a shim already
//!   started and waiting for its spec (`engine::runtime::Prespawned`), the default seccomp
//!   program compiled (the engine compiles a profile once per capability set), a
//!   blocking-pool thread alive.
//! - The container has its VM's network (`guest_network`; the guest engine runs with
//!   `--bridge none`): no netns, veth, address or in-guest port proxy, and `-p` forwards
//!   straight to the container's port.
//! - The container's state and set-up files are on tmpfs (`--exec-root /run/axion-engine`)
//!   and its writable layer is mounted `volatile` (`--volatile-layers`): no ext4 writes of
//!   state files and no sync when the container's root is unmounted at its exit. Tried and
//!   dropped: `cache=unsafe` on the clone's overlay (the guest's own sync was the cost, not
//!   the host's) and warming the data root's ext4 metadata in the template.
//! - The layer store is mounted `cache=loose` (immutable trees; with 9p's default the
//!   container's first exec read busybox page by page over the channel), `--rm` containers
//!   skip the log copy, and every finished VM is killed rather than shut down.
//! - VMs get the host's cores as vCPUs (at most 4, as a container sees all the host's CPUs
//!   in Docker): a second TCG thread runs the agent beside the engine.
//! - The warm pool ([`pool`], `--pool N`): clones restored, their engine's first `/_ping`
//!   answered, then stopped, waiting for a create (identity handed over only then).
//! - Not worth it: an overlay pool (qemu-img is not the cost) or tearing the VM down as soon
//!   as `wait` returns.
//! - What is left, largest first: the guest engine's start (the container's mounts and
//!   confinement), the first `/_ping` after the restore (TCG-cold code), create, the restore,
//!   the exit. `xtask::bench::vmd::measure` (what `cargo xtask bench` runs for its vmd rows,
//!   the two modes' runs alternating) measures a change.
//!
//! # Not yet (next steps)
//!
//! - virtio-fs (with DAX) would be faster than 9p but needs a virtiofsd on the host.
//! - Restart policies ([`restart`]) start an exited container again on a new VM.
//! - `docker update` changes the QEMU's cgroup (`api/update.rs`); the guest's RAM stays.
//! - No user networks, server-side detach keys
//!   (`detachKeys`); docs/vmd.md lists what is not served and why.
//! - Volumes ([`volumes`]): named volumes are host directories shared into the VM over one of
//!   4 9p slots the template has (the device set is fixed by the saved state; a slot's path is
//!   not); `pause` is QMP `stop`/`cont` of the VM; events come from the daemon's own bus
//!   ([`events`]); top, stats, diff, export and cp go through the guest engine.
//! - Exec sessions do not survive a daemon restart (their ids are the daemon's, in memory);
//!   new ones work on a re-adopted container.
//! - `-m` does not size the guest (all clones share the template's RAM size): a template
//!   per memory size would make `-m` the VM's RAM.

mod boot;
pub use vm_clone::cgroup;
pub mod changes;
mod ending;
pub mod events;
mod exec;
pub mod images;
pub mod live;
pub mod pool;
pub mod restart;
pub mod store;
// The template, its clones and the guest engine's client are shared with the containerd shim.
pub use vm_clone::{client, guest, template};
pub mod volumes;

mod api;
pub use api::Api;

use bytes::Bytes;
use client::GuestClient;
use docker_api::portspec;
use docker_api::time::{human, now_nanos, rfc3339, since, unix_from_rfc3339};
use docker_api::types::*;
use docker_api::{
    ApiError, ApiResult, AttachIo, AttachOptions, Frame, FrameRx, LogsOptions, RegistryAuth,
    WaitCondition,
};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::{mpsc, watch, Notify};

/// Daemon settings.
#[derive(Debug, Clone)]
pub struct Options {
    pub state_dir: PathBuf,
    pub image: template::ImageFiles,
    pub memory_mib: u64,
    pub cpus: u32,
    pub accel: qemu::Accel,
    /// Boot every container's VM from scratch instead of cloning the saved template (the
    /// benchmark's baseline).
    pub cold_boot: bool,
    /// Registries pulled from over plain HTTP besides localhost and loopback
    /// (`--insecure-registry HOST[:PORT]` or `CIDR`, as dockerd's).
    pub insecure_registries: Vec<String>,
    /// Clones kept restored and waiting for the next create ([`pool`]; 0: none).
    pub pool: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Created,
    Running,
    Exited,
    Removed,
}

#[derive(Debug, Clone, Default)]
struct State {
    exit_code: i64,
    error: String,
    started_at: String,
    /// Nanoseconds since the epoch.
    started_ns: i128,
    finished_at: String,
    finished_ns: i128,
    pid: u32,
}

struct Ctr {
    id: String,
    /// Changed by `docker rename`.
    name: Mutex<String>,
    created: String,
    /// Creation time in nanoseconds since the epoch: the list's order (see [`newest_first`]).
    created_ns: i128,
    image_id: String,
    req: ContainerCreateRequest,
    dir: PathBuf,
    /// (container port spec like "80/tcp", host port)
    ports: Vec<(String, u16)>,
    state: Mutex<State>,
    phase: watch::Sender<Phase>,
    vm: Mutex<Option<live::VmProc>>,
    /// The clone agent's channel, kept connected while the VM runs (see `clone_vm`).
    agent: Mutex<Option<std::os::unix::net::UnixStream>>,
    /// The guest engine of the container's current VM and the container's id there (a new
    /// VM for each start of an exited container: [`Daemon::boot`]).
    guest: Mutex<GuestClient>,
    gid: Mutex<String>,
    finished: AtomicBool,
    quitting: AtomicBool,
    attached: AtomicUsize,
    detached: Notify,
    cgroup: Mutex<Vec<PathBuf>>,
    /// How many times the container was started (`wait` for the next exit of an exited one).
    starts: AtomicUsize,
    /// Attach streams of an exited container, waiting for its next VM (`docker start -a`).
    waiting: Mutex<Vec<Waiter>>,
    /// A new VM is being made for the exited container ([`Daemon::revive`]).
    reviving: AtomicBool,
    /// Its restart policy's state ([`restart`]).
    policy: restart::Track,
    /// Its host config as `docker update` left it (limits, restart policy); `req` keeps
    /// the one it was created with.
    hc: Mutex<HostConfig>,
    /// The VM is stopped through QMP (`docker pause`).
    paused: AtomicBool,
    /// The host's named volumes shared into the VM (see [`volumes`]).
    volumes: Vec<String>,
    /// A `docker restart` in the VM is under way; how many there were ([`Daemon::follow`]).
    restarting: AtomicBool,
    restarts: AtomicUsize,
}

/// An attach to an exited container: connected to the guest engine of its next VM before
/// the container starts there, so that none of its output is missed.
struct Waiter {
    opts: AttachOptions,
    output: mpsc::Sender<Frame>,
    stdin: Option<mpsc::Receiver<Bytes>>,
}

impl Ctr {
    fn host_config(&self) -> HostConfig {
        self.hc
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
    /// The create request with the current host config (for a new VM, the record).
    fn current_req(&self) -> ContainerCreateRequest {
        let mut r = self.req.clone();
        r.host_config = self.host_config();
        r
    }
    fn guest(&self) -> GuestClient {
        self.guest
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
    fn gid(&self) -> String {
        self.gid
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
    fn cgroup(&self) -> Vec<PathBuf> {
        self.cgroup
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
    fn name(&self) -> String {
        self.name
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
    /// A container event on the daemon's bus, with this container's attributes.
    fn event(&self, bus: &events::Bus, action: &str, extra: &[(&str, String)]) {
        bus.container(
            &self.id,
            &self.name(),
            &self.req.config.image,
            self.req.config.labels.as_ref(),
            action,
            extra,
        );
    }
    /// 409 while the VM is paused: its engine cannot answer.
    fn not_paused(&self) -> ApiResult<()> {
        if self.paused.load(Ordering::SeqCst) {
            return Err(ApiError::conflict(format!(
                "Container {} is paused, unpause the container before proceeding",
                self.id
            )));
        }
        Ok(())
    }
    fn phase(&self) -> Phase {
        *self.phase.borrow()
    }
    /// Always stored: `watch::Sender::send` drops the value when no one is subscribed, and
    /// often no one is (`docker start` without `-a` waits for nothing; that left a started
    /// container `created`, its exec refused with 409).
    fn set_phase(&self, p: Phase) {
        self.phase.send_replace(p);
    }
    fn status(&self) -> &'static str {
        match self.phase() {
            Phase::Created => "created",
            Phase::Running if self.paused.load(Ordering::SeqCst) => "paused",
            Phase::Running => "running",
            Phase::Exited if self.policy.pending.load(Ordering::SeqCst) => "restarting",
            Phase::Exited => "exited",
            Phase::Removed => "removing",
        }
    }
    fn short(&self) -> &str {
        self.id.get(..12).unwrap_or(&self.id)
    }
    /// The guest engine's error with its container id (full or short) replaced by ours:
    /// the user never sees the ids inside the VM.
    fn host_ids(&self, mut e: ApiError) -> ApiError {
        // `get`: the guest's id is checked ([`client::guest_id`]), but a slice of it must not
        // be what takes the daemon down if it ever is not.
        let gid = self.gid();
        if gid.len() < 12 {
            return e; // too short to stand for an id in free text
        }
        e.message = e.message.replace(&gid, &self.id);
        if let (Some(gshort), Some(short)) = (gid.get(..12), self.id.get(..12)) {
            e.message = e.message.replace(gshort, short);
        }
        e
    }
}

pub struct Daemon {
    opts: Options,
    template: template::Template,
    images: images::Images,
    containers: Mutex<HashMap<String, Arc<Ctr>>>,
    execs: exec::Execs,
    cgroups: Option<cgroup::Cgroups>,
    warnings: Vec<String>,
    /// VMs an earlier daemon left running, re-adopted by [`Daemon::resume`].
    pending: Mutex<Vec<live::Pending>>,
    events: events::Bus,
    volumes: volumes::Volumes,
    /// Clones restored and waiting for a container ([`pool`]).
    pool: pool::Pool,
}

fn internal(what: &str) -> impl FnOnce(anyhow::Error) -> ApiError + '_ {
    move |e| ApiError::internal(format!("{what}: {e:#}"))
}

impl Daemon {
    /// Opens the state directory, makes the certificates and the template (booting and
    /// saving it when needed: blocking, tens of seconds under TCG).
    pub fn open(opts: Options) -> anyhow::Result<Daemon> {
        std::fs::create_dir_all(&opts.state_dir)?;
        let store = store::LayerStore::open(&opts.state_dir.join("store"))?;
        let template = template::Template::ensure(
            &opts.state_dir,
            &opts.image,
            opts.memory_mib,
            opts.cpus,
            opts.accel,
            store.root(),
        )?;
        let cdir = opts.state_dir.join("c");
        std::fs::create_dir_all(&cdir)?;
        let images = images::Images::open(
            opts.state_dir.join("images.json"),
            store,
            opts.insecure_registries.clone(),
        );
        let volumes = volumes::Volumes::open(&opts.state_dir.join("volumes"))?;
        let mut warnings = Vec::new();
        let cgroups = match cgroup::Cgroups::setup("axion-vmd") {
            Ok(c) => Some(c),
            Err(why) => {
                let w = format!(
                    "WARNING: {why}: per-container memory and CPU limits (-m, --cpus) \
                     are NOT applied to the VMs"
                );
                eprintln!("vmd: {w}");
                warnings.push(w);
                None
            }
        };
        let d = Daemon {
            pool: pool::Pool::new(if opts.cold_boot { 0 } else { opts.pool }),
            opts,
            template,
            images,
            containers: Mutex::new(HashMap::new()),
            execs: Default::default(),
            cgroups,
            warnings,
            pending: Mutex::new(Vec::new()),
            events: events::Bus::default(),
            volumes,
        };
        // Live-restore (live.rs): VMs an earlier daemon left running are re-adopted (their
        // images pinned before the collection below), exited containers kept.
        let pending = d.load_records(&cdir);
        if !pending.is_empty() {
            eprintln!(
                "vmd: {} container VM(s) of an earlier daemon still run",
                pending.len()
            );
        }
        *d.pending.lock().unwrap_or_else(PoisonError::into_inner) = pending;
        // What no image record and no running VM uses goes (an interrupted pull or collection).
        match d.images.collect_now() {
            Ok(c) => report_collected(&c),
            Err(e) => eprintln!("vmd: WARNING: collecting the layer store's garbage: {e:#}"),
        }
        Ok(d)
    }

    pub fn template(&self) -> &template::Template {
        &self.template
    }

    fn get(&self, id: &str) -> ApiResult<Arc<Ctr>> {
        let map = self
            .containers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(c) = map.get(id) {
            return Ok(c.clone());
        }
        let name = id.trim_start_matches('/');
        if let Some(c) = map.values().find(|c| c.name() == name) {
            return Ok(c.clone());
        }
        let matches: Vec<_> = map.values().filter(|c| c.id.starts_with(id)).collect();
        match matches.len() {
            1 => Ok(matches[0].clone()),
            0 => Err(ApiError::not_found(format!("No such container: {id}"))),
            _ => Err(ApiError::bad_request(format!(
                "multiple containers match {id}"
            ))),
        }
    }

    /// Kills every VM (daemon shutdown), pooled clones included, and removes the containers'
    /// directories.
    pub fn shutdown(&self) {
        self.pool.close(&self.opts.state_dir.join("c"));
        let all: Vec<_> = self
            .containers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain()
            .map(|(_, c)| c)
            .collect();
        for c in all {
            c.quitting.store(true, Ordering::SeqCst);
            if let Some(mut vm) = c.vm.lock().unwrap_or_else(PoisonError::into_inner).take() {
                vm.kill();
            }
            self.cleanup_cgroup(&c);
            let _ = std::fs::remove_dir_all(&c.dir);
        }
    }

    /// Continues a paused VM (before a stop, kill or removal, which need its engine).
    fn unpause_for(&self, c: &Ctr) {
        if c.paused.swap(false, Ordering::SeqCst) {
            if let Some(vm) = c.vm.lock().unwrap_or_else(PoisonError::into_inner).as_mut() {
                if let Err(e) = vm.set_paused(false) {
                    eprintln!("vmd: {}: continuing the paused VM: {e:#}", c.short());
                }
            }
            c.event(&self.events, "unpause", &[]);
        }
    }

    fn volume_event(&self, action: &str, name: &str) {
        self.events.publish(
            "volume",
            action,
            name,
            events::attrs([("driver", "local".into())]),
        );
    }

    fn image_event(&self, action: &str, id: &str, name: &str) {
        self.events
            .publish("image", action, id, events::attrs([("name", name.into())]));
    }

    fn cleanup_cgroup(&self, c: &Ctr) {
        cgroup::remove(&c.cgroup());
    }

    /// Given what [`store::LayerStore::check`] found wrong with `image` in the host store,
    /// the record to run: see [`images::Images::repair`] (fetched again with the
    /// credentials of the image's last pull, which the daemon keeps in memory only).
    async fn repair(
        &self,
        image: &images::ImageRecord,
        damage: Vec<store::Damage>,
    ) -> ApiResult<images::ImageRecord> {
        self.images.repair(image, damage).await
    }

    /// What `docker run` prints about the limits it was given.
    fn limit_warnings(&self, hc: &HostConfig) -> Vec<String> {
        let limits = cgroup::Limits::from_host_config(hc);
        let mut w = Vec::new();
        if !limits.is_empty() && self.cgroups.is_none() {
            w.push(
                "this host has no usable cgroups: the memory and CPU limits are not applied to \
                 the container's VM"
                    .to_string(),
            );
        }
        if let Some(m) = limits.memory {
            if m < (self.opts.memory_mib as i64) << 20 {
                w.push(format!(
                    "the memory limit ({} MiB) is below the VM's RAM ({} MiB): it bounds the whole \
                     QEMU process, so the VM is killed when the guest touches more",
                    m >> 20,
                    self.opts.memory_mib
                ));
            }
        }
        w
    }

    /// Puts the VM's QEMU into its own cgroups with the container's limits.
    fn limit(&self, id: &str, pid: u32, hc: &HostConfig) -> Vec<PathBuf> {
        let limits = cgroup::Limits::from_host_config(hc);
        let Some(cg) = self.cgroups.as_ref().filter(|_| !limits.is_empty()) else {
            return Vec::new();
        };
        match cg.apply(&id[..12], pid, &limits) {
            Ok(dirs) => dirs,
            Err(e) => {
                eprintln!(
                    "vmd: WARNING: cgroup limits for {} not applied: {e}",
                    &id[..12]
                );
                Vec::new()
            }
        }
    }
}

/// QEMU processes whose command line names a path under `dir` (this daemon's clones).
fn orphan_vms(dir: &Path) -> Vec<u32> {
    let needle = format!("{}/", dir.display());
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.starts_with("qemu-system") && cmd.contains(&needle) {
            out.push(pid);
        }
    }
    out
}

fn report_collected(c: &store::Collected) {
    if !c.blobs.is_empty() || !c.layers.is_empty() {
        eprintln!(
            "vmd: layer store: removed {} blob(s) and {} unpacked layer(s) no image uses",
            c.blobs.len(),
            c.layers.len()
        );
    }
}

/// Can a forward of 127.0.0.1:`port` be set up now (for a `-p` host range)?
fn port_is_free(proto: portspec::Proto, port: u16) -> bool {
    match proto {
        portspec::Proto::Tcp => std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(),
        portspec::Proto::Udp => std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok(),
    }
}

/// The network mode the guest engine runs the container with. The VM is the container's
/// sandbox, as in Bonneville, where the container's NIC was the VM's: the container shares
/// its VM's network namespace ("host" inside the guest), with the VM's address (QEMU's user
/// network, 10.0.2.15), and `-p` forwards straight to it. A bridge and a veth pair inside a
/// VM that runs one container would isolate nothing more, and setting them up cost a
/// clone 0.15 s under TCG (netns, veth, address, the in-guest port proxy). `none` keeps a
/// private namespace with loopback only; `host` is the VM's network too (the daemon's host
/// network is never given to a container).
fn guest_network(mode: &str) -> ApiResult<&'static str> {
    match mode {
        "" | "default" | "bridge" | "host" => Ok("host"),
        "none" => Ok("none"),
        other => Err(ApiError::not_found(format!(
            "network {other} not found (VM-per-container mode \
             has: bridge, which is the VM's own network, host \
             and none)"
        ))),
    }
}

/// Progress lines on stderr with VMD_DEBUG set.
pub(crate) use vm_clone::debug;

fn tail(p: &Path, n: usize) -> String {
    let t = std::fs::read_to_string(p).unwrap_or_default();
    let lines: Vec<&str> = t
        .lines()
        .filter(|l| !l.starts_with("# ") && !l.trim().is_empty())
        .collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

fn random_hex(n: usize) -> String {
    let mut s = String::new();
    while s.len() < n {
        let b: [u8; 32] = rand::random();
        s.push_str(&hex::encode(b));
    }
    s.truncate(n);
    s
}

fn valid_name(n: &str) -> bool {
    let mut chars = n.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

fn saved_frames(dir: &Path, tty: bool) -> Vec<Frame> {
    let raw = std::fs::read(dir.join("logs")).unwrap_or_default();
    client::Decoder::new(tty).push(&raw)
}

fn tail_frames(frames: Vec<Frame>, n: Option<usize>) -> Vec<Frame> {
    let Some(n) = n else { return frames };
    // One frame is one line or more; keep the frames holding the last n lines.
    let mut lines = 0;
    let mut start = frames.len();
    while start > 0 && lines < n {
        start -= 1;
        lines += frames[start]
            .data
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            .max(1);
    }
    frames[start..].to_vec()
}

/// Sorts containers newest first by their creation time in nanoseconds (ties, if any, by
/// id), so that two created within one second keep their order: the map they come from
/// has none, and the API front end only re-sorts stably by whole seconds.
fn newest_first<T>(v: &mut [T], key: impl Fn(&T) -> (i128, &str)) {
    v.sort_by(|a, b| {
        let (ka, kb) = (key(a), key(b));
        kb.0.cmp(&ka.0).then_with(|| ka.1.cmp(kb.1))
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_is_newest_first_within_a_second() {
        // Three containers created in one second (and one earlier), in hash-map order.
        let base: i128 = 1_795_734_895 * 1_000_000_000;
        let mut v = vec![
            (base + 300, "c"),
            (base + 900_000_000, "d"),
            (base - 5_000_000_000, "old"),
            (base + 1, "b"),
            (base + 1, "a"),
        ];
        newest_first(&mut v, |x| (x.0, x.1));
        let names: Vec<&str> = v.iter().map(|x| x.1).collect();
        assert_eq!(names, ["d", "c", "a", "b", "old"]);
        // The front end's stable sort on whole seconds (docker-api's server) keeps it.
        let mut secs: Vec<(i64, &str)> = v
            .iter()
            .map(|x| ((x.0 / 1_000_000_000) as i64, x.1))
            .collect();
        secs.sort_by_key(|a| std::cmp::Reverse(a.0));
        assert_eq!(secs.iter().map(|x| x.1).collect::<Vec<_>>(), names);
    }

    #[test]
    fn containers_get_their_vms_network() {
        for m in ["", "default", "bridge", "host"] {
            assert_eq!(guest_network(m).unwrap(), "host", "{m:?}");
        }
        assert_eq!(guest_network("none").unwrap(), "none");
        let e = guest_network("backend").unwrap_err();
        assert_eq!(e.status, http::StatusCode::NOT_FOUND);
        assert!(
            e.message.contains("network backend not found"),
            "{}",
            e.message
        );
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        let f = vec![
            Frame::stdout("a\nb\n"),
            Frame::stdout("c\n"),
            Frame::stderr("d\n"),
        ];
        assert_eq!(tail_frames(f.clone(), Some(2)).len(), 2);
        assert_eq!(tail_frames(f.clone(), None).len(), 3);
        assert_eq!(tail_frames(f, Some(10)).len(), 3);
    }
}
