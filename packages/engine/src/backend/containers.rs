//! Containers: create, start (and the exit handler with its restart policies), stop, kill,
//! restart, remove, wait, logs, attach.

use super::*;
use crate::containers::{parse_signal, random_name_try, valid_name, Events, Record, Status};
use crate::runtime::{Process, RunSpec, Stdio3};
use crate::{logs, netproxy};
use docker_api::filters::ContainerPrune;
use docker_api::time::{human, rfc3339, since};
use docker_api::types::PortBinding;
use docker_api::{AttachIo, AttachOptions, FrameRx, LogsOptions, StdStream, WaitCondition};
use std::collections::BTreeMap;
use std::path::Path;

/// Binds the host side of every `-p` of a container (TCP and UDP). `again`: the ports a
/// re-adopted container had (its `published` record), not new picks for ephemeral ones.
pub(super) async fn publish_ports(r: &Record, again: bool) -> Result<Vec<netproxy::Bound>, String> {
    let map = if again && !r.published.is_empty() {
        r.published
            .iter()
            .map(|(k, v)| (k.clone(), Some(v.clone())))
            .collect()
    } else {
        r.host_config.port_bindings.clone().unwrap_or_default()
    };
    let mut bound = Vec::new();
    for m in docker_api::portspec::from_port_bindings(&map).map_err(|e| e.to_string())? {
        bound.push(netproxy::bind_mapping(&m).await?);
    }
    Ok(bound)
}

/// The host addresses `bound` holds, by container port, as the API shows them.
fn published_map(bound: &[netproxy::Bound]) -> BTreeMap<String, Vec<PortBinding>> {
    let mut m: BTreeMap<String, Vec<PortBinding>> = BTreeMap::new();
    for b in bound {
        if let (key, Some(addr)) = b.published() {
            m.entry(key).or_default().push(PortBinding {
                host_ip: addr.ip().to_string(),
                host_port: addr.port().to_string(),
            });
        }
    }
    m
}

/// A running container's ports as bound (the ephemeral ones with the port the kernel
/// picked), else as asked for.
fn shown_ports(r: &Record) -> BTreeMap<String, Option<Vec<PortBinding>>> {
    let asked = r.host_config.port_bindings.clone().unwrap_or_default();
    asked
        .into_iter()
        .map(|(k, v)| {
            let shown = if r.status != Status::Running {
                None
            } else {
                r.published.get(&k).cloned().or(v)
            };
            (k, shown)
        })
        .collect()
}

impl Engine {
    fn summary_status(r: &Record) -> String {
        match r.status {
            Status::Running if r.paused => {
                format!("Up {} (Paused)", human(since(r.started_at)))
            }
            Status::Running => match r.health.as_ref().filter(|_| r.config.healthcheck.is_some()) {
                Some(h) if h.status == "starting" => {
                    format!("Up {} (health: starting)", human(since(r.started_at)))
                }
                Some(h) => format!("Up {} ({})", human(since(r.started_at)), h.status),
                None => format!("Up {}", human(since(r.started_at))),
            },
            Status::Exited => format!(
                "Exited ({}) {} ago",
                r.exit_code,
                human(since(r.finished_at))
            ),
            Status::Created => "Created".into(),
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
        let mut binds = r.binds.clone();
        if r.host_config.extra.get("Init").and_then(|v| v.as_bool()) == Some(true) {
            let (bind, init_args) = super::ops::init_process(args)?;
            binds.push(bind);
            args = init_args;
        }
        Ok(RunSpec {
            rootfs: c.dir.join("rootfs"),
            lowers,
            upper: c.data.join("upper"),
            work: c.data.join("work"),
            binds,
            etc_files: vec![
                (c.dir.join("hosts"), "/etc/hosts".into()),
                (c.dir.join("hostname"), "/etc/hostname".into()),
                (c.dir.join("resolv.conf"), "/etc/resolv.conf".into()),
            ],
            hostname: r.config.hostname.clone(),
            new_netns: r.host_config.network_mode != "host"
                && !r.host_config.network_mode.starts_with("container:"),
            join_netns: self.join_netns(&r.host_config.network_mode)?,
            host_pid: super::ops::hc_str(&r.host_config, "PidMode") == "host",
            host_uts: super::ops::hc_str(&r.host_config, "UTSMode") == "host",
            volatile: self.volatile_layers,
            trace: Trace::enabled(),
            state_dir: c.dir.clone(),
            // The `none` log driver keeps nothing; the monitor writes to /dev/null.
            log_path: if super::ops::log_driver(&r.host_config) == "none" {
                PathBuf::from("/dev/null")
            } else {
                c.log_path()
            },
            open_stdin: r.config.open_stdin,
            devices: Vec::new(),
            process: Process {
                args,
                env,
                cwd: r.config.working_dir.clone(),
                user: r.config.user.clone(),
                tty: r.config.tty,
                confine: confinement(&r.host_config).map_err(ApiError::bad_request)?,
                group_add: super::ops::hc_list(&r.host_config, "GroupAdd"),
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
        if r.status == Status::Running {
            return Err(ApiError::not_modified());
        }
        let lowers = self.images.lowers(&r.image_id).ok_or_else(|| {
            ApiError::internal(format!(
                "image {} of container {} is missing its layers",
                r.image, r.id
            ))
        })?;
        self.prepare_volumes(&r)?;
        let mut spec = self.spec_for(c, &r, lowers)?;
        let devices = crate::devices::policy(&r.host_config).map_err(ApiError::bad_request)?;
        spec.devices = devices.nodes;
        trace.mark("spec (seccomp compiled)");
        // Published ports first: a taken host port fails the start, as in Docker.
        let published = publish_ports(&r, false).await.map_err(|e| {
            ApiError::internal(format!(
                "driver failed programming external connectivity on endpoint {} ({}): {e}",
                r.name.trim_start_matches('/'),
                r.id
            ))
        })?;
        let bound_ports = published_map(&published);
        // Bridge network: the container's address, and /etc/hosts naming it.
        let attach = match (r.host_config.network_mode.as_str(), &self.bridge) {
            ("bridge", Ok((b, ipam))) => {
                let mut ep = ipam
                    .allocate(&r.id, b)
                    .map_err(internal("allocating an address"))?;
                if let Some(m) = r.config.mac_address.as_ref().filter(|m| !m.is_empty()) {
                    ep.mac = m.to_ascii_lowercase(); // --mac-address, checked at create
                }
                self.write_hosts(&c.dir, &r.config.hostname, Some(ep.ip))
                    .map_err(internal("writing /etc/hosts"))?;
                Some((b.clone(), ep))
            }
            _ => None,
        };
        let plan = self.net_plan(c, &r, attach.as_ref().map(|(_, ep)| ep.ip))?;
        // The container's own variables win over its links' (as dockerd's).
        let env = &mut spec.process.env;
        for v in &plan.link_env {
            let key = v.split('=').next().unwrap_or_default();
            if !env.iter().any(|e| e.split('=').next() == Some(key)) {
                env.push(v.clone());
            }
        }
        let spec_path = c.dir.join("spec.json");
        std::fs::write(&spec_path, serde_json::to_vec(&spec).unwrap_or_default())
            .map_err(internal("writing spec"))?;
        let cg = self
            .runtime
            .cgroup_create(&r.id, &r.host_config, devices.rules.as_deref())
            .map_err(internal("creating cgroup"))?;
        trace.mark("ports, address, spec written, cgroup created");
        // The shim's monitor makes the container's streams; the last run's exit record goes.
        let stdio = Stdio3::Detached;
        runtime::monitor::clear(&c.dir);
        let cgc = cg.clone();
        let (id, att, tr, plan2) = (r.id.clone(), attach.clone(), trace.clone(), plan.clone());
        let rt = self.runtime.clone();
        let (dir, log) = (c.dir.clone(), c.log_path());
        let spawned = tokio::task::spawn_blocking(move || {
            tr.mark("blocking task runs");
            let mut s = rt.spawn_container(&id, &spec_path, stdio)?;
            tr.mark("shim forked the container process (pid read)");
            // Outside its cgroup the container would escape its limits and device rules.
            if let Some(cg) = &cgc {
                if let Err(e) = rt.cgroup_add(cg, s.pid()) {
                    s.cancel();
                    let e = format!("joining the cgroup {}: {e}", cg.display());
                    return Ok((s, Err(runtime::SpawnError::Start(e))));
                }
            }
            // The process waits for the release: its network is ready before it runs.
            if let Some((b, ep)) = &att {
                if let Err(e) = rt.net_attach(b, &id, s.pid(), ep) {
                    s.cancel();
                    return Ok((
                        s,
                        Err(runtime::SpawnError::Start(format!("network setup: {e}"))),
                    ));
                }
                tr.mark("network attached");
            }
            if let Err(e) = plan2.wire(&*rt, s.pid()) {
                s.cancel();
                let e = runtime::SpawnError::Start(format!("network setup: {e}"));
                return Ok((s, Err(e)));
            }
            // Attached before the release: no output of the container is missed.
            let res = match rt.monitor_attach(&dir, &log, Some(&mut *s)) {
                Ok(w) => s.release().map(|()| w),
                Err(e) => {
                    s.cancel();
                    Err(runtime::SpawnError::Start(format!(
                        "attaching to the container's monitor: {e}"
                    )))
                }
            };
            tr.mark("released: the container exec'd (or failed)");
            for t in s.take_trace() {
                tr.mark(&t);
            }
            Ok::<_, runtime::SpawnError>((s, res))
        })
        .await
        .map_err(internal("start task"))?;
        let fail = |msg: String, code: i64| {
            let mut rec = c.rec.lock().unwrap();
            rec.status = if rec.started_at == 0 {
                Status::Created
            } else {
                Status::Exited
            };
            rec.exit_code = code;
            rec.error = msg.clone();
            drop(rec);
            c.save();
            if let Some(cg) = &cg {
                self.runtime.cgroup_remove(cg);
            }
            ApiError::bad_request(format!("failed to create task for container: {msg}"))
        };
        let (mut s, res) = match spawned {
            Ok(v) => v,
            Err(e) => return Err(fail(e.to_string(), 128)),
        };
        let watch = match res {
            Ok(w) => w,
            Err(e) => {
                let _ = s.wait();
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
            rec.status = Status::Running;
            rec.pid = s.pid();
            rec.started_at = now_nanos();
            rec.error.clear();
            rec.cgroup = cg.clone();
            rec.oom_killed = false;
            rec.endpoint = attach.map(|(_, ep)| ep);
            rec.published = bound_ports;
        }
        c.save();
        self.net_started(&r.id, &plan);
        c.events.send_modify(|e| e.running = true);
        crate::events::container(&c.snapshot(), "start", &[]);
        self.start_health(c);
        trace.mark("running, state saved");
        // Output goes to the log from the monitor, to attach subscribers from `follow`.
        if r.config.open_stdin {
            *c.stdin.lock().unwrap() = Some(
                self.runtime
                    .monitor_stdin(&c.dir)
                    .map_err(internal("stdin"))?,
            );
        }
        // Published ports: the host sockets were bound before the start.
        let pid = s.pid();
        let proxies: Vec<_> = published.into_iter().map(|b| b.serve(pid)).collect();
        *c.proxies.lock().unwrap() = proxies;
        trace.mark("start answered");
        self.follow(c.clone(), watch, Some(s), now_nanos(), trace);
        Ok(())
    }

    pub(super) async fn on_exit(
        self: Arc<Self>,
        c: Arc<Container>,
        code: i64,
        started: i128,
        trace: &Trace,
    ) {
        let _ = c.output.send(None);
        self.net_stopped(&c.snapshot().id);
        for p in c.proxies.lock().unwrap().drain(..) {
            p.abort();
        }
        *c.stdin.lock().unwrap() = None;
        let r = {
            let mut rec = c.rec.lock().unwrap();
            rec.status = Status::Exited;
            rec.exit_code = code;
            rec.pid = 0;
            rec.paused = false;
            rec.finished_at = now_nanos();
            let cg = rec.cgroup.take();
            if let Some(cg) = &cg {
                rec.oom_killed = self.runtime.cgroup_oom_killed(cg);
            }
            (rec.clone(), cg)
        };
        let (r, cg) = r;
        c.save();
        // The cgroup goes before the waiters are told (its OOM verdict is already read): a
        // `docker restart` waits for this exit and then creates the same cgroup again, which
        // a removal still under way would take from the new run.
        if let Some(cg) = cg {
            let rt = self.runtime.clone();
            let _ = tokio::task::spawn_blocking(move || rt.cgroup_remove(&cg)).await;
            trace.mark("cgroup removed");
        }
        if r.oom_killed {
            crate::events::container(&r, "oom", &[]);
        }
        crate::events::container(&r, "die", &[("exitCode", code.to_string())]);
        c.events.send_modify(|e| {
            e.exits += 1;
            e.exit_code = code;
            e.running = false;
        });
        trace.mark("saved, waiters told");
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
                // Decided again under the lock: a stop that came after the snapshot above
                // (and found the container exited) must not be followed by a restart.
                let mut rec = c.rec.lock().unwrap();
                if rec.stopped_by_user || rec.status != Status::Exited {
                    return;
                }
                rec.restart_count += 1;
                rec.status = Status::Restarting;
            }
            c.save();
            tokio::time::sleep(std::time::Duration::from_millis(backoff)).await;
            let _g = c.op.lock().await;
            if c.rec.lock().unwrap().status != Status::Restarting {
                return; // stopped or removed meanwhile
            }
            if let Err(e) = self.start_inner(&c).await {
                eprintln!("engine: restart of {}: {}", r.id, e.message);
                c.rec.lock().unwrap().status = Status::Exited;
                c.save();
            }
        } else if r.host_config.auto_remove {
            let _ = self.remove_inner(&c).await;
            self.remove_anonymous_volumes(&r);
        }
    }

    async fn remove_inner(&self, c: &Arc<Container>) -> ApiResult<()> {
        let id = c.snapshot().id;
        crate::events::container(&c.snapshot(), "destroy", &[]);
        self.containers.lock().unwrap().remove(&id);
        if let Ok((_, ipam)) = &self.bridge {
            ipam.release(&id);
        }
        self.net_removed(&id);
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
        self.runtime.kill(pid, sig).map_err(internal("kill"))
    }

    pub(super) async fn stop_inner(
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
            if rec.status == Status::Restarting {
                rec.status = Status::Exited;
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
        crate::events::container(&r, "kill", &[("signal", (sig as i32).to_string())]);
        let _ = self.signal(&c, sig);
        self.thaw(&c);
        let wait = if t < 0 {
            None
        } else {
            Some(std::time::Duration::from_secs(t as u64))
        };
        if !self.wait_not_running(&c, wait).await {
            crate::events::container(&r, "kill", &[("signal", "9".into())]);
            let _ = self.signal(&c, nix::sys::signal::Signal::SIGKILL);
            self.wait_not_running(&c, Some(std::time::Duration::from_secs(10)))
                .await;
        }
        if by_user {
            crate::events::container(&c.snapshot(), "stop", &[]);
        }
        Ok(())
    }

    /// A generated name no container has: the name list has 120 pairs, so two unnamed
    /// containers in a dozen would often collide; Docker, too, draws again (and then adds
    /// digits).
    fn unused_name(&self) -> String {
        let taken = |n: &str| {
            self.containers
                .lock()
                .unwrap()
                .values()
                .any(|c| c.rec.lock().unwrap().name == n)
        };
        for _ in 0..50 {
            let n = random_name_try(0);
            if !taken(&n) {
                return n;
            }
        }
        loop {
            let n = format!("{}{}", random_name_try(0), rand::random::<u16>());
            if !taken(&n) {
                return n;
            }
        }
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
            format!(
                "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost \
                ip6-loopback\n{own}\t{hostname}\n"
            ),
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

    fn inspect_of(&self, c: &Container) -> ContainerInspect {
        let r = c.snapshot();
        let ports = shown_ports(&r);
        ContainerInspect {
            id: r.id.clone(),
            created: rfc3339(r.created),
            path: r.path.clone(),
            args: r.args.clone(),
            state: ContainerState {
                status: if r.paused {
                    "paused".into()
                } else {
                    r.status.to_string()
                },
                paused: r.paused,
                running: r.status == Status::Running,
                restarting: r.status == Status::Restarting,
                pid: r.pid as i64,
                exit_code: r.exit_code,
                oom_killed: r.oom_killed,
                error: r.error.clone(),
                started_at: rfc3339(r.started_at),
                finished_at: rfc3339(r.finished_at),
                health: r.health.clone().filter(|_| r.config.healthcheck.is_some()),
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
                if let (Some(ep), Status::Running) = (&r.endpoint, r.status) {
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
                            network_id: self.nets.store.predefined_id("bridge"),
                            endpoint_id: r.id.clone(),
                            driver_opts: self.nets.store.bridge_driver_opts(&r.id),
                            ..Default::default()
                        },
                    );
                }
                ns.networks.extend(self.user_endpoint_settings(&r));
                ns
            },
            log_path: c.log_path().display().to_string(),
        }
    }
}

impl ContainerBackend for Engine {
    async fn containers(&self, all: bool) -> ApiResult<Vec<ContainerSummary>> {
        let mut v: Vec<Record> = self
            .containers
            .lock()
            .unwrap()
            .values()
            .map(|c| c.snapshot())
            .collect();
        v.sort_by_key(|r| std::cmp::Reverse(r.created));
        Ok(v.into_iter()
            .filter(|r| all || r.status.is_active())
            .map(|r| {
                let mut ports = Vec::new();
                if r.status == Status::Running {
                    for (k, bs) in shown_ports(&r) {
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
                    state: if r.paused {
                        "paused".into()
                    } else {
                        r.status.to_string()
                    },
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
            None => self.unused_name(),
        };
        if let Ok(c) = self.find(&name) {
            if c.rec.lock().unwrap().name == name {
                let id = c.snapshot().id;
                return Err(ApiError::conflict(format!(
                    "Conflict. The container name \"/{name}\" is \
                    already in use by container \"{id}\". You have to remove (or rename) that \
                        container to be able to reuse that name."
                )));
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
        cfg.healthcheck =
            super::health::merge(req.config.healthcheck.as_ref(), ic.healthcheck.as_ref())?;
        let id = random_id();
        if cfg.hostname.is_empty() {
            cfg.hostname = id[..12].to_string();
        }
        let mut hc = req.host_config.clone();
        if hc.network_mode.is_empty() || hc.network_mode == "default" {
            hc.network_mode = "bridge".into();
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
        super::ops::check_create(&mut hc)?;
        super::ops::check_mac(cfg.mac_address.as_deref())?;
        trace.mark("confinement (seccomp compiled)");
        // The image's volumes join the request's, as dockerd merges them.
        if let Some(iv) = ic.volumes.clone().filter(|v| !v.is_empty()) {
            cfg.volumes.get_or_insert_with(Default::default).extend(iv);
        }
        let vols: Vec<String> = cfg
            .volumes
            .iter()
            .flatten()
            .map(|(k, _)| k.clone())
            .collect();
        let plan = self.plan_mounts(&hc, &vols)?;
        self.create_endpoints(&id, &hc, &req.networking_config)?;
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
            status: Status::Created,
            binds: plan.binds,
            mounts: plan.mounts,
            anon_volumes: plan.anonymous,
            ..Default::default()
        };
        let c = Arc::new(Container::new(dir, data, rec));
        c.save();
        crate::events::container(&c.snapshot(), "create", &[]);
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
                    self.remove_anonymous_volumes(&c.snapshot());
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
        crate::events::container(
            &c.snapshot(),
            "kill",
            &[("signal", (sig as i32).to_string())],
        );
        self.signal(&c, sig)?;
        if sig == nix::sys::signal::Signal::SIGKILL {
            // As dockerd: the answer comes once the container has exited, so a client that
            // inspects next sees it stopped.
            self.wait_not_running(&c, Some(std::time::Duration::from_secs(10)))
                .await;
        } else {
            self.thaw(&c);
        }
        Ok(())
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
        })?;
        if let Ok(c) = self.find(id) {
            crate::events::container(&c.snapshot(), "restart", &[]);
        }
        Ok(())
    }

    async fn container_remove(&self, id: &str, force: bool, volumes: bool) -> ApiResult<()> {
        let c = self.find(id)?;
        if c.rec.lock().unwrap().status.is_active() {
            if !force {
                return Err(ApiError::conflict(format!(
                    "cannot remove container \"/{}\": container \
                    is running: stop the container before removing or force \
                        remove",
                    c.snapshot().name
                )));
            }
            c.rec.lock().unwrap().stopped_by_user = true;
            if c.rec.lock().unwrap().status == Status::Restarting {
                c.rec.lock().unwrap().status = Status::Exited;
            }
            let _ = self.signal(&c, nix::sys::signal::Signal::SIGKILL);
            self.wait_not_running(&c, Some(std::time::Duration::from_secs(10)))
                .await;
        }
        let _g = c.op.lock().await;
        self.remove_inner(&c).await?;
        if volumes {
            self.remove_anonymous_volumes(&c.snapshot());
        }
        Ok(())
    }

    async fn container_prune(&self, f: ContainerPrune) -> ApiResult<Vec<String>> {
        Ok(self.container_prune_reclaiming(f).await?.0)
    }

    /// The bytes are those of the removed containers' writable layers.
    async fn container_prune_reclaiming(&self, f: ContainerPrune) -> ApiResult<(Vec<String>, u64)> {
        let stopped: Vec<Arc<Container>> = self
            .containers
            .lock()
            .unwrap()
            .values()
            .filter(|c| {
                let r = c.rec.lock().unwrap();
                let labels = r.config.labels.clone().unwrap_or_default();
                matches!(r.status, Status::Exited | Status::Created)
                    && f.matches(&labels, (r.created / 1_000_000_000) as i64)
            })
            .cloned()
            .collect();
        let mut ids = Vec::new();
        let mut space = 0;
        for c in stopped {
            ids.push(c.snapshot().id);
            let upper = c.data.join("upper");
            let bytes = tokio::task::spawn_blocking(move || crate::volumes::disk_usage(&upper))
                .await
                .unwrap_or(0);
            self.remove_inner(&c).await?;
            space += bytes;
        }
        Ok((ids, space))
    }

    async fn container_wait(&self, id: &str, cond: WaitCondition) -> ApiResult<WaitResponse> {
        let c = self.find(id)?;
        let mut rx = c.events.subscribe();
        let start: Events = *rx.borrow();
        let status = c.rec.lock().unwrap().status;
        let done = |e: &Events| match cond {
            WaitCondition::NotRunning => {
                !e.running && (status != Status::Running || e.exits > start.exits)
            }
            WaitCondition::NextExit => e.exits > start.exits,
            WaitCondition::Removed => e.removed,
        };
        if cond == WaitCondition::NotRunning && !status.is_active() {
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
        if super::ops::log_driver(&c.snapshot().host_config) == "none" {
            return Err(ApiError::new(
                http::StatusCode::NOT_IMPLEMENTED,
                "configured logging driver does not support reading",
            ));
        }
        settle_after_start(&c, &o).await;
        let tty = c.rec.lock().unwrap().config.tty;
        let path = c.log_path();
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            let mut pos = 0u64;
            let mut first = true;
            loop {
                let running = c.rec.lock().unwrap().status.is_active();
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
                let first_batch = first;
                first = false;
                if o.since.is_some() || o.until.is_some() {
                    lines.retain(|l| {
                        logs::line_time(l).is_some_and(|t| {
                            o.since.is_none_or(|s| t >= s) && o.until.is_none_or(|u| t <= u)
                        })
                    });
                }
                if let Some(n) = o.tail.filter(|_| first_batch) {
                    let k = lines.len().saturating_sub(n);
                    lines.drain(..k);
                }
                for l in lines {
                    if let Some(f) = logs::decode_line(l, o.stdout, o.stderr, o.timestamps) {
                        if tx.send(f).await.is_err() {
                            return;
                        }
                    }
                }
                // Followed logs end when the container is done and its log read to the end.
                if !o.follow || (!running && end == new.len()) {
                    return;
                }
                // Following stops at `until`, as dockerd's does.
                if o.until.is_some_and(|u| now_nanos() > u) {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        });
        Ok((tty, rx))
    }

    async fn container_attach(&self, id: &str, o: AttachOptions) -> ApiResult<AttachIo> {
        let c = self.find(id)?;
        let r = c.snapshot();
        if r.paused {
            return Err(ApiError::conflict(
                "You cannot attach to a paused container, unpause it first",
            ));
        }
        crate::events::container(&r, "attach", &[]);
        let mut sub = c.output.subscribe();
        let (tx, rx) = mpsc::channel(256);
        let past = if o.logs && super::ops::log_driver(&r.host_config) != "none" {
            tokio::fs::read_to_string(c.log_path())
                .await
                .unwrap_or_default()
        } else {
            String::new()
        };
        tokio::spawn(async move {
            // `logs=1`: what the container wrote so far first; `stream=0`: only that.
            for l in past.lines() {
                if let Some(f) = logs::decode_line(l, o.stdout, o.stderr, false) {
                    if tx.send(f).await.is_err() {
                        return;
                    }
                }
            }
            if !o.stream {
                return;
            }
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
                live::stdin_to_monitor(w, irx, once && !tty, move || {
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
        if c.rec.lock().unwrap().config.tty && c.is_running() {
            let dir = c.dir.clone();
            let rt = self.runtime.clone();
            let _ = tokio::task::spawn_blocking(move || rt.monitor_resize(&dir, h, w)).await;
        }
        Ok(())
    }

    // The operations of backend/ops.rs.
    async fn container_stats(&self, id: &str) -> ApiResult<docker_api::ops::ContainerStats> {
        self.stats_of(id).await
    }
    async fn container_top(&self, id: &str, a: &str) -> ApiResult<docker_api::ops::TopResponse> {
        self.top_of(id, a).await
    }
    async fn container_changes(&self, id: &str) -> ApiResult<Vec<docker_api::ops::Change>> {
        self.changes_of(id).await
    }
    async fn container_export(&self, id: &str) -> ApiResult<mpsc::Receiver<Bytes>> {
        self.export_of(id).await
    }
    async fn container_changes_layer(&self, id: &str) -> ApiResult<mpsc::Receiver<Bytes>> {
        self.changes_layer_of(id).await
    }
    async fn container_pause(&self, id: &str) -> ApiResult<()> {
        self.pause(id, true).await
    }
    async fn container_unpause(&self, id: &str) -> ApiResult<()> {
        self.pause(id, false).await
    }
    async fn container_rename(&self, id: &str, name: &str) -> ApiResult<()> {
        self.rename(id, name).await
    }
    async fn container_update(
        &self,
        id: &str,
        u: docker_api::ops::UpdateRequest,
    ) -> ApiResult<docker_api::ops::UpdateResponse> {
        self.update(id, u).await
    }
    async fn container_remove_link(&self, parent: &str, alias: &str) -> ApiResult<()> {
        self.remove_link(parent, alias)
    }
}

/// How long after its start a container's logs wait for it to end before a one-off read.
const LOGS_SETTLE: std::time::Duration = std::time::Duration::from_millis(100);

/// Clients read the logs of a short command right after `start` and expect its output
/// (docker-py's own build tests run `ls -a` that way): with dockerd its longer start path
/// (containerd's task start, a state checkpoint) gives the command time to finish first.
/// Ours answers sooner, so a one-off read of a container started less than [`LOGS_SETTLE`]
/// ago waits until it exits or that time has passed. Follow reads and older containers do
/// not wait.
async fn settle_after_start(c: &Container, o: &LogsOptions) {
    if o.follow {
        return;
    }
    let (running, started) = {
        let rec = c.rec.lock().unwrap();
        (rec.status == Status::Running, rec.started_at)
    };
    let age = u64::try_from(now_nanos().saturating_sub(started)).unwrap_or(u64::MAX);
    let Some(left) = LOGS_SETTLE.checked_sub(std::time::Duration::from_nanos(age)) else {
        return;
    };
    if running {
        let mut events = c.events.subscribe();
        let _ = tokio::time::timeout(left, events.wait_for(|e| !e.running)).await;
    }
}
