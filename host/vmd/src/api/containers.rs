//! Containers: each one in a VM cloned from the template, driven through its guest engine.

use super::Api;
use crate::*;
use bytes::Bytes;
use docker_api::filters::ContainerPrune;
use docker_api::ops::{Change, ContainerStats, TopResponse};
use docker_api::ContainerBackend;

impl ContainerBackend for Api {
    async fn containers(&self, all: bool) -> ApiResult<Vec<ContainerSummary>> {
        let mut cs: Vec<Arc<Ctr>> = self
            .containers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        newest_first(&mut cs, |c| (c.created_ns, &c.id));
        let out: Vec<ContainerSummary> = cs
            .iter()
            .filter(|c| all || c.phase() == Phase::Running)
            .map(|c| {
                let st = c
                    .state
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone();
                let status = match c.phase() {
                    Phase::Created => "Created".to_string(),
                    Phase::Running => format!(
                        "Up {}{} (VM pid {})",
                        human(since(st.started_ns)),
                        if c.paused.load(Ordering::SeqCst) {
                            " (Paused)"
                        } else {
                            ""
                        },
                        st.pid
                    ),
                    Phase::Exited if c.policy.pending.load(Ordering::SeqCst) => format!(
                        "Restarting ({}) {} ago",
                        st.exit_code,
                        human(since(st.finished_ns))
                    ),
                    Phase::Exited | Phase::Removed => format!(
                        "Exited ({}) {} ago",
                        st.exit_code,
                        human(since(st.finished_ns))
                    ),
                };
                let cmd = c.req.config.cmd.clone().unwrap_or_default().join(" ");
                ContainerSummary {
                    id: c.id.clone(),
                    names: vec![format!("/{}", c.name())],
                    image: c.req.config.image.clone(),
                    image_id: c.image_id.clone(),
                    command: cmd,
                    created: (c.created_ns / 1_000_000_000) as i64,
                    ports: c
                        .ports
                        .iter()
                        .map(|(spec, hp)| {
                            let (p, proto) = spec.split_once('/').unwrap_or((spec, "tcp"));
                            Port {
                                ip: Some("127.0.0.1".into()),
                                private_port: p.parse().unwrap_or(0),
                                public_port: Some(*hp),
                                kind: proto.into(),
                            }
                        })
                        .collect(),
                    labels: c.req.config.labels.clone().unwrap_or_default(),
                    state: c.status().into(),
                    status,
                }
            })
            .collect();
        Ok(out)
    }

    async fn container_create(
        &self,
        name: Option<String>,
        req: ContainerCreateRequest,
    ) -> ApiResult<ContainerCreateResponse> {
        let no_image = || ApiError::not_found(format!("No such image: {}", req.config.image));
        self.images.find(&req.config.image).ok_or_else(no_image)?;
        let name = match name {
            Some(n) => {
                let n = n.trim_start_matches('/').to_string();
                if !valid_name(&n) {
                    return Err(ApiError::bad_request(format!(
                        "Invalid container name ({n}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
                    )));
                }
                if self
                    .containers
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .values()
                    .any(|c| c.name() == n)
                {
                    return Err(ApiError::conflict(format!(
                        "Conflict. The container name \"/{n}\" is already in use"
                    )));
                }
                Some(n)
            }
            None => None,
        };
        // Published ports: 127.0.0.1:HOST → QEMU's user network → the container's port in
        // its VM. The container has its VM's network (see `guest_network`), so nothing in
        // the guest forwards.
        let mut ports = Vec::new();
        let mut forwards = Vec::new();
        let map = req.host_config.port_bindings.clone().unwrap_or_default();
        for m in
            portspec::from_port_bindings(&map).map_err(|e| ApiError::bad_request(e.to_string()))?
        {
            let protocol = match m.proto {
                portspec::Proto::Tcp => qemu::Protocol::Tcp,
                portspec::Proto::Udp => qemu::Protocol::Udp,
            };
            // QEMU forwards from 127.0.0.1 only, whatever the host address asked for.
            let hp = match m.host_port {
                portspec::HostPort::Ephemeral => qemu::free_port()
                    .map_err(|e| ApiError::internal(format!("no free port: {e}")))?,
                portspec::HostPort::Fixed(p) => p,
                portspec::HostPort::Range(a, b) => {
                    (a..=b).find(|p| port_is_free(m.proto, *p)).ok_or_else(|| {
                        ApiError::internal(format!(
                            "Bind for 127.0.0.1:{a}-{b} failed: port is already allocated"
                        ))
                    })?
                }
            };
            forwards.push(qemu::PortForward {
                protocol,
                host: hp,
                guest: m.container_port,
            });
            ports.push((m.key(), hp));
        }
        guest_network(&req.host_config.network_mode)?;
        restart::Policy::of(&req.host_config.restart_policy, req.host_config.auto_remove)?;
        // Named volumes and host directories: each one a 9p slot of the VM (volumes.rs).
        let plan = volumes::plan(
            req.host_config.binds.as_deref(),
            req.host_config.mounts.as_deref(),
        )?;
        let slots = self.slots_of(&plan)?;
        // A clone from the warm pool when one waits and the VM needs nothing set at QEMU's
        // start (forwards, 9p slots): its directory is named after the id it was made for.
        let warm = if forwards.is_empty() && slots.is_empty() && self.pool.target() > 0 {
            let w = self.pool.take(pool::Stamp::of(&self.template));
            let counter = if w.is_some() {
                &self.pool.hits
            } else {
                &self.pool.misses
            };
            counter.fetch_add(1, Ordering::SeqCst);
            w
        } else {
            None
        };
        let (id, warm) = match warm {
            Some((id, w)) => (id, Some(w)),
            None => (random_hex(64), None),
        };
        let dir = self.opts.state_dir.join("c").join(&id[..12]);
        // Pinned: an rmi meanwhile keeps its files until this container's VM is gone.
        let Some((image, pin)) = self.images.find_and_pin(&req.config.image, &id) else {
            if let Some(w) = warm {
                let mut vm = w.vm;
                let _ = tokio::task::spawn_blocking(move || vm.kill()).await;
            }
            let _ = std::fs::remove_dir_all(&dir);
            return Err(no_image());
        };
        let name = name.unwrap_or_else(|| format!("vm-{}", &id[..8]));
        let booted = self
            .boot(boot::VmSpec {
                id: &id,
                dir: &dir,
                req: &req,
                image: &image,
                forwards,
                slots,
                plan: &plan,
                warm,
            })
            .await;
        let b = match booted {
            Ok(b) => b,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        let now = now_nanos();
        let hc = req.host_config.clone();
        let c = Arc::new(Ctr {
            id: id.clone(),
            name: Mutex::new(name),
            created: rfc3339(now),
            created_ns: now,
            image_id: image.id.clone(),
            req,
            dir,
            ports,
            state: Mutex::new(State {
                pid: b.pid,
                ..Default::default()
            }),
            phase: watch::channel(Phase::Created).0,
            vm: Mutex::new(Some(live::VmProc::Own(Box::new(b.vm)))),
            agent: Mutex::new(Some(b.agent)),
            guest: Mutex::new(b.guest),
            gid: Mutex::new(b.gid),
            finished: AtomicBool::new(false),
            quitting: AtomicBool::new(false),
            attached: AtomicUsize::new(0),
            detached: Notify::new(),
            cgroup: Mutex::new(b.cgroup),
            starts: AtomicUsize::new(0),
            waiting: Mutex::new(Vec::new()),
            reviving: AtomicBool::new(false),
            policy: Default::default(),
            hc: Mutex::new(hc),
            paused: AtomicBool::new(false),
            volumes: plan.named(),
            restarting: AtomicBool::new(false),
            restarts: AtomicUsize::new(0),
        });
        self.containers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id.clone(), c.clone());
        let warnings = self.limit_warnings(&c.req.host_config);
        c.save();
        c.event(&self.events, "create", &[]);
        self.watch_vm(c);
        pin.keep();
        Ok(ContainerCreateResponse { id, warnings })
    }

    async fn container_inspect(&self, id: &str) -> ApiResult<ContainerInspect> {
        let c = self.get(id)?;
        let st = c
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let phase = c.phase();
        let mut ports = std::collections::BTreeMap::new();
        for (spec, hp) in &c.ports {
            ports.insert(
                spec.clone(),
                Some(vec![PortBinding {
                    host_ip: "127.0.0.1".into(),
                    host_port: hp.to_string(),
                }]),
            );
        }
        let (path, args) = {
            let mut argv = c.req.config.entrypoint.clone().unwrap_or_default();
            argv.extend(c.req.config.cmd.clone().unwrap_or_default());
            let mut it = argv.into_iter();
            (it.next().unwrap_or_default(), it.collect())
        };
        Ok(ContainerInspect {
            id: c.id.clone(),
            created: c.created.clone(),
            path,
            args,
            state: ContainerState {
                status: c.status().into(),
                running: phase == Phase::Running,
                paused: c.paused.load(Ordering::SeqCst),
                restarting: phase == Phase::Exited && c.policy.pending.load(Ordering::SeqCst),
                pid: st.pid as i64,
                exit_code: st.exit_code,
                error: st.error.clone(),
                started_at: if st.started_at.is_empty() {
                    "0001-01-01T00:00:00Z".into()
                } else {
                    st.started_at.clone()
                },
                finished_at: if st.finished_at.is_empty() {
                    "0001-01-01T00:00:00Z".into()
                } else {
                    st.finished_at.clone()
                },
                ..Default::default()
            },
            image: c.image_id.clone(),
            name: format!("/{}", c.name()),
            driver: "qemu-clone".into(),
            platform: "linux".into(),
            host_config: c.host_config(),
            config: with_vm_labels(&c, st.pid),
            network_settings: NetworkSettings {
                ports,
                ..Default::default()
            },
            log_path: c.dir.join("logs").display().to_string(),
            restart_count: c.policy.count.load(Ordering::SeqCst),
            mounts: self.mount_points(&c),
        })
    }

    async fn container_start(&self, id: &str) -> ApiResult<()> {
        let c = self.get(id)?;
        if c.phase() == Phase::Running {
            return Err(ApiError::not_modified());
        }
        // The user's start: the restart policy begins again (a pending restart is dropped).
        c.policy.user_start();
        self.0.start_ctr(&c, false).await
    }

    async fn container_stop(
        &self,
        id: &str,
        timeout: Option<i64>,
        signal: Option<String>,
    ) -> ApiResult<()> {
        let c = self.get(id)?;
        // No restart after this, and none pending (restart.rs).
        let cancelled = c.policy.stop();
        c.save();
        match c.phase() {
            Phase::Running => {}
            Phase::Created => {
                self.finish(&c, 0, None).await;
                return Ok(());
            }
            Phase::Exited if cancelled => {
                c.event(&self.events, "stop", &[]);
                return Ok(());
            }
            _ => return Err(ApiError::not_modified()),
        }
        self.stop_running(&c, timeout, signal).await
    }

    async fn container_kill(&self, id: &str, signal: Option<String>) -> ApiResult<()> {
        let c = self.get(id)?;
        if c.phase() != Phase::Running {
            return Err(ApiError::conflict(format!(
                "Container {} is not running",
                c.short()
            )));
        }
        self.unpause_for(&c);
        c.policy.by_hand.store(true, Ordering::SeqCst);
        let sig = signal.clone().unwrap_or_else(|| "SIGKILL".into());
        c.guest()
            .kill(&c.gid(), signal)
            .await
            .map_err(|e| c.host_ids(e))?;
        c.event(&self.events, "kill", &[("signal", sig)]);
        Ok(())
    }

    async fn container_remove(&self, id: &str, force: bool, _volumes: bool) -> ApiResult<()> {
        let c = self.get(id)?;
        match c.phase() {
            Phase::Running if !force => {
                return Err(ApiError::conflict(format!(
                    "You cannot remove a running container {}. Stop the container before \
                        attempting removal or force remove",
                    c.id
                )))
            }
            Phase::Removed => return Ok(()),
            Phase::Running | Phase::Created => {
                if c.phase() == Phase::Running {
                    c.event(&self.events, "kill", &[("signal", "9".into())]);
                }
                // Quit the VM at once (what is left is removed with it).
                c.quitting.store(true, Ordering::SeqCst);
                self.finish(&c, 137, None).await;
            }
            Phase::Exited => {}
        }
        if c.phase() != Phase::Removed {
            self.remove_now(&c);
        }
        Ok(())
    }

    async fn container_prune(&self, f: ContainerPrune) -> ApiResult<Vec<String>> {
        let cs: Vec<Arc<Ctr>> = self
            .containers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        let mut out = Vec::new();
        let labels = |c: &Ctr| c.req.config.labels.clone().unwrap_or_default();
        let pruned = |c: &Arc<Ctr>| {
            c.phase() == Phase::Exited
                && f.matches(&labels(c), (c.created_ns / 1_000_000_000) as i64)
        };
        for c in cs.into_iter().filter(pruned) {
            self.remove_now(&c);
            out.push(c.id.clone());
        }
        Ok(out)
    }

    async fn container_wait(&self, id: &str, cond: WaitCondition) -> ApiResult<WaitResponse> {
        let c = self.get(id)?;
        let mut rx = c.phase.subscribe();
        // The next exit of an exited container is the one after its next start.
        let (starts, exited) = (c.starts.load(Ordering::SeqCst), c.phase() == Phase::Exited);
        let done = |p: &Phase| match cond {
            WaitCondition::NotRunning => *p != Phase::Running,
            WaitCondition::NextExit => {
                *p == Phase::Removed
                    || (*p == Phase::Exited
                        && (!exited || c.starts.load(Ordering::SeqCst) > starts))
            }
            WaitCondition::Removed => *p == Phase::Removed,
        };
        rx.wait_for(done)
            .await
            .map_err(|_| ApiError::internal("the container went away"))?;
        let st = c
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        Ok(WaitResponse {
            status_code: st.exit_code,
            error: (!st.error.is_empty()).then(|| WaitError {
                message: st.error.clone(),
            }),
        })
    }

    async fn container_logs(&self, id: &str, opts: LogsOptions) -> ApiResult<(bool, FrameRx)> {
        let c = self.get(id)?;
        // The frozen VM's engine would not answer until it is continued.
        c.not_paused()?;
        let tty = c.req.config.tty;
        let live =
            c.vm.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .is_some();
        if live {
            if let Ok(rx) = c.guest().logs(&c.gid(), &opts, tty).await {
                return Ok((tty, rx));
            }
        }
        let frames: Vec<Frame> = saved_frames(&c.dir, tty)
            .into_iter()
            .filter(|f| {
                tty || (f.stream == docker_api::StdStream::Stdout && opts.stdout)
                    || (f.stream == docker_api::StdStream::Stderr && opts.stderr)
            })
            .collect();
        let frames = tail_frames(frames, opts.tail);
        let (tx, rx) = mpsc::channel(frames.len().max(1));
        for f in frames {
            let _ = tx.try_send(f);
        }
        Ok((tty, rx))
    }

    async fn container_attach(&self, id: &str, opts: AttachOptions) -> ApiResult<AttachIo> {
        let c = self.get(id)?;
        let tty = c.req.config.tty;
        let (tx, rx) = mpsc::channel(64);
        if c.phase() == Phase::Created || c.phase() == Phase::Running {
            // The guest engine's own hijacked attach: output, and stdin with -i (`docker run
            // -i` attaches before the start; the engine holds the input until the container
            // has its stdin).
            let stdin = opts.stdin && c.req.config.open_stdin;
            let opts = AttachOptions { stdin, ..opts };
            let AttachIo {
                output: grx, stdin, ..
            } = c
                .guest()
                .attach(&c.gid(), &opts, tty)
                .await
                .map_err(|e| c.host_ids(e))?;
            boot::forward_attach(c, grx, tx);
            return Ok(AttachIo {
                tty,
                output: rx,
                stdin,
            });
        }
        if opts.logs {
            for f in saved_frames(&c.dir, tty) {
                let _ = tx.send(f).await;
            }
        }
        let mut stdin = None;
        if opts.stream {
            // Exited: as with dockerd, the stream waits for the container's next start
            // (`docker start -a`), connected to its new VM before it starts there.
            let mut waiting = c.waiting.lock().unwrap_or_else(PoisonError::into_inner);
            if c.phase() == Phase::Exited {
                let input = (opts.stdin && c.req.config.open_stdin).then(|| mpsc::channel(64));
                let (itx, irx) = input.map_or((None, None), |(t, r)| (Some(t), Some(r)));
                stdin = itx;
                waiting.push(Waiter {
                    opts: opts.clone(),
                    output: tx,
                    stdin: irx,
                });
            }
        }
        Ok(AttachIo {
            tty,
            output: rx,
            stdin,
        })
    }

    async fn container_resize(&self, id: &str, h: u16, w: u16) -> ApiResult<()> {
        let c = self.get(id)?;
        if c.phase() != Phase::Running {
            return Err(ApiError::conflict(format!(
                "Container {} is not running",
                c.short()
            )));
        }
        c.guest()
            .resize(&c.gid(), h, w)
            .await
            .map_err(|e| c.host_ids(e))
    }

    async fn container_restart(&self, id: &str, timeout: Option<i64>) -> ApiResult<()> {
        let c = self.get(id)?;
        if c.phase() != Phase::Running {
            // Created or exited: nothing to stop; a start (on a new VM once it has exited,
            // with its files) is the restart.
            self.container_start(id).await?;
            if c.phase() == Phase::Running {
                c.event(&self.events, "restart", &[]);
            }
            return Ok(());
        }
        self.unpause_for(&c);
        // Stopped and started by the engine in the same VM; the waiter keeps following it.
        c.restarting.store(true, Ordering::SeqCst);
        c.restarts.fetch_add(1, Ordering::SeqCst);
        let mut q = Vec::new();
        if let Some(t) = timeout {
            q.push(("t", t.to_string()));
        }
        let r = c
            .guest()
            .post("restart", &format!("/containers/{}/restart", c.gid()), &q)
            .await
            .map_err(|e| c.host_ids(e));
        c.restarting.store(false, Ordering::SeqCst);
        r?;
        {
            let mut st = c.state.lock().unwrap_or_else(PoisonError::into_inner);
            st.started_ns = now_nanos();
            st.started_at = rfc3339(st.started_ns);
        }
        c.save();
        c.event(&self.events, "restart", &[]);
        Ok(())
    }

    async fn container_rename(&self, id: &str, name: &str) -> ApiResult<()> {
        let c = self.get(id)?;
        let n = name.trim_start_matches('/').to_string();
        if !valid_name(&n) {
            return Err(ApiError::bad_request(format!(
                "Invalid container name ({n}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
            )));
        }
        let old = {
            let map = self
                .containers
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some(other) = map.values().find(|o| o.name() == n) {
                if other.id == c.id {
                    return Err(ApiError::bad_request(
                        "Renaming a container with the same name as its current name",
                    ));
                }
                return Err(ApiError::conflict(format!(
                    "Conflict. The container name \"/{n}\" is already in use by container \
                     \"{}\". You have to remove (or rename) that container to be able to \
                     reuse that name.",
                    other.id
                )));
            }
            std::mem::replace(
                &mut *c.name.lock().unwrap_or_else(PoisonError::into_inner),
                n,
            )
        };
        c.save();
        c.event(&self.events, "rename", &[("oldName", format!("/{old}"))]);
        Ok(())
    }

    async fn container_pause(&self, id: &str) -> ApiResult<()> {
        let c = self.running(id)?;
        if c.paused.load(Ordering::SeqCst) {
            return Err(ApiError::conflict(format!(
                "Container {} is already paused",
                c.id
            )));
        }
        self.set_paused(&c, true)?;
        c.event(&self.events, "pause", &[]);
        Ok(())
    }

    async fn container_unpause(&self, id: &str) -> ApiResult<()> {
        let c = self.get(id)?;
        if !c.paused.load(Ordering::SeqCst) {
            return Err(ApiError::conflict(format!(
                "Container {} is not paused",
                c.id
            )));
        }
        self.set_paused(&c, false)?;
        c.event(&self.events, "unpause", &[]);
        Ok(())
    }

    async fn container_top(&self, id: &str, ps_args: &str) -> ApiResult<TopResponse> {
        let c = self.running(id)?;
        c.not_paused()?;
        let q: Vec<(&str, String)> = if ps_args.is_empty() {
            Vec::new()
        } else {
            vec![("ps_args", ps_args.to_string())]
        };
        c.guest()
            .get_json("top", &format!("/containers/{}/top", c.gid()), &q)
            .await
            .map_err(|e| c.host_ids(e))
    }

    async fn container_stats(&self, id: &str) -> ApiResult<ContainerStats> {
        let c = self.get(id)?;
        let now = rfc3339(now_nanos());
        let mut s = if c.phase() != Phase::Running {
            // As dockerd: a container that does not run has zero figures.
            ContainerStats::default()
        } else if c.paused.load(Ordering::SeqCst) {
            // The guest cannot answer: the QEMU process's own figures.
            let mut s = host_stats(c.state.lock().unwrap_or_else(PoisonError::into_inner).pid);
            s.memory_stats.limit = Some(self.opts.memory_mib << 20);
            s
        } else {
            let q = [
                ("stream", "false".to_string()),
                ("one-shot", "true".to_string()),
            ];
            c.guest()
                .get_json("stats", &format!("/containers/{}/stats", c.gid()), &q)
                .await
                .map_err(|e| c.host_ids(e))?
        };
        s.id = c.id.clone();
        s.name = format!("/{}", c.name());
        s.read = now;
        Ok(s)
    }

    async fn container_update(
        &self,
        id: &str,
        u: docker_api::ops::UpdateRequest,
    ) -> ApiResult<docker_api::ops::UpdateResponse> {
        self.update(id, u).await
    }

    async fn container_changes(&self, id: &str) -> ApiResult<Vec<Change>> {
        let c = self.with_vm(id)?;
        c.guest()
            .get_json("changes", &format!("/containers/{}/changes", c.gid()), &[])
            .await
            .map_err(|e| c.host_ids(e))
    }

    async fn container_export(&self, id: &str) -> ApiResult<mpsc::Receiver<Bytes>> {
        let c = self.with_vm(id)?;
        let (_, rx) = c
            .guest()
            .byte_stream(
                "export",
                http::Method::GET,
                &format!("/containers/{}/export", c.gid()),
                &[],
            )
            .await
            .map_err(|e| c.host_ids(e))?;
        Ok(rx)
    }
}

impl Api {
    /// `docker stop` of a running container: the guest engine stops it, and the waiter
    /// powers the VM off once it is down.
    pub(super) async fn stop_running(
        &self,
        c: &Arc<Ctr>,
        timeout: Option<i64>,
        signal: Option<String>,
    ) -> ApiResult<()> {
        self.unpause_for(c);
        let t = timeout.unwrap_or(10).max(0);
        if c.guest().stop(&c.gid(), Some(t), signal).await.is_err() {
            self.finish(
                c,
                137,
                Some("the VM did not answer the stop request; it was powered off".into()),
            )
            .await;
        }
        // The waiter powers the VM off once the container is down.
        let mut rx = c.phase.subscribe();
        let wait = rx.wait_for(|p| *p != Phase::Running);
        if tokio::time::timeout(Duration::from_secs(t as u64 + 30), wait)
            .await
            .is_err()
        {
            self.finish(
                c,
                137,
                Some("the container did not stop; its VM was powered off".into()),
            )
            .await;
        }
        c.event(&self.events, "stop", &[]);
        Ok(())
    }

    /// The container, 409 unless it runs.
    pub(super) fn running(&self, id: &str) -> ApiResult<Arc<Ctr>> {
        let c = self.get(id)?;
        if c.phase() != Phase::Running {
            return Err(ApiError::conflict(format!(
                "Container {} is not running",
                c.id
            )));
        }
        Ok(c)
    }

    /// The container, 409 unless its VM is there (created or running) and not paused: what
    /// reads its file system goes through the VM's engine.
    pub(super) fn with_vm(&self, id: &str) -> ApiResult<Arc<Ctr>> {
        let c = self.get(id)?;
        let live =
            c.vm.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .is_some();
        if !live || matches!(c.phase(), Phase::Exited | Phase::Removed) {
            return Err(ApiError::conflict(format!(
                "container {}: in VM-per-container mode its file system is reached through \
                 its VM, which is gone once the container has exited",
                c.short()
            )));
        }
        c.not_paused()?;
        Ok(c)
    }

    fn set_paused(&self, c: &Ctr, on: bool) -> ApiResult<()> {
        let mut vm = c.vm.lock().unwrap_or_else(PoisonError::into_inner);
        let vm = vm
            .as_mut()
            .ok_or_else(|| ApiError::conflict(format!("Container {} is not running", c.id)))?;
        vm.set_paused(on).map_err(|e| {
            ApiError::internal(format!(
                "{} the container's VM through QMP: {e:#}",
                if on { "stopping" } else { "continuing" }
            ))
        })?;
        c.paused.store(on, Ordering::SeqCst);
        Ok(())
    }

    /// Inspect's `Mounts`: the host directories shared into the VM.
    fn mount_points(&self, c: &Ctr) -> Vec<MountPoint> {
        let hc = &c.req.host_config;
        let Ok(plan) = volumes::plan(hc.binds.as_deref(), hc.mounts.as_deref()) else {
            return Vec::new();
        };
        plan.mounts
            .iter()
            .map(|(src, dst, ro)| match src {
                volumes::Source::Named(n) => MountPoint {
                    kind: "volume".into(),
                    name: n.clone(),
                    source: self.volumes.data_path(n).display().to_string(),
                    destination: dst.clone(),
                    driver: "local".into(),
                    mode: if *ro { "ro" } else { "z" }.into(),
                    rw: !ro,
                    propagation: String::new(),
                },
                volumes::Source::Host(h) => MountPoint {
                    kind: "bind".into(),
                    source: h.display().to_string(),
                    destination: dst.clone(),
                    mode: if *ro { "ro" } else { "" }.into(),
                    rw: !ro,
                    propagation: "rprivate".into(),
                    ..Default::default()
                },
            })
            .collect()
    }
}

/// The container's config with labels that lead VM tooling to its VM: the QEMU's pid (while
/// it runs), its QMP socket and the VM's disk overlay.
fn with_vm_labels(c: &Ctr, pid: u32) -> ContainerConfig {
    let mut cfg = c.req.config.clone();
    let labels = cfg.labels.get_or_insert_with(Default::default);
    if pid != 0 {
        labels.insert("axion.vm.qemu-pid".into(), pid.to_string());
    }
    for (k, f) in [("qmp-socket", "qmp.sock"), ("overlay", "disk.qcow2")] {
        labels.insert(format!("axion.vm.{k}"), c.dir.join(f).display().to_string());
    }
    cfg
}

/// A paused VM's figures from its QEMU process on the host: resident memory and CPU time.
fn host_stats(pid: u32) -> ContainerStats {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command's closing parenthesis; utime and stime are the 14th and 15th.
    let ticks: Vec<u64> = stat
        .rsplit_once(')')
        .map(|(_, rest)| {
            rest.split_whitespace()
                .skip(11)
                .take(2)
                .filter_map(|t| t.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    // USER_HZ is 100 on Linux: a tick is 10 ms.
    let ns = |t: u64| t * 10_000_000;
    let (user, sys) = (
        ticks.first().copied().unwrap_or(0),
        ticks.get(1).copied().unwrap_or(0),
    );
    ContainerStats {
        memory_stats: docker_api::ops::MemoryStats {
            usage: Some(rss_kib << 10),
            ..Default::default()
        },
        cpu_stats: docker_api::ops::CpuStats {
            cpu_usage: docker_api::ops::CpuUsage {
                total_usage: ns(user + sys),
                usage_in_kernelmode: ns(sys),
                usage_in_usermode: ns(user),
            },
            ..Default::default()
        },
        ..Default::default()
    }
}
