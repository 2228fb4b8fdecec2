//! Containers: each one in a VM cloned from the template, driven through its guest engine.

use super::Api;
use crate::*;
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
                    Phase::Running => {
                        format!("Up {} (VM pid {})", human(since(st.started_ns)), st.pid)
                    }
                    Phase::Exited | Phase::Removed => format!(
                        "Exited ({}) {} ago",
                        st.exit_code,
                        human(since(st.finished_ns))
                    ),
                };
                let cmd = c.req.config.cmd.clone().unwrap_or_default().join(" ");
                ContainerSummary {
                    id: c.id.clone(),
                    names: vec![format!("/{}", c.name)],
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
        let id = random_hex(64);
        // Pinned: an rmi meanwhile keeps its files until this container's VM is gone.
        let (image, pin) = self
            .images
            .find_and_pin(&req.config.image, &id)
            .ok_or_else(|| ApiError::not_found(format!("No such image: {}", req.config.image)))?;
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
                    .any(|c| c.name == n)
                {
                    return Err(ApiError::conflict(format!(
                        "Conflict. The container name \"/{n}\" is already in use"
                    )));
                }
                n
            }
            None => format!("vm-{}", &id[..8]),
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
        let network_mode = guest_network(&req.host_config.network_mode)?;
        // The image's layers in the host store are checked while the VM is cloned.
        let check = (!image.diff_ids.is_empty()).then(|| {
            let (st, rec) = (self.images.store.clone(), image.clone());
            tokio::task::spawn_blocking(move || st.check(&rec.id, &rec.layers, &rec.diff_ids))
        });
        let dir = self.opts.state_dir.join("c").join(&id[..12]);
        let hostname = if req.config.hostname.is_empty() {
            id[..12].to_string()
        } else {
            req.config.hostname.clone()
        };
        let t = self.template.clone();
        let (dir2, host2) = (dir.clone(), hostname.clone());
        let cold = self.opts.cold_boot;
        let t0 = std::time::Instant::now();
        let cloned =
            tokio::task::spawn_blocking(move || t.clone_vm(&dir2, &host2, &forwards, cold))
                .await
                .map_err(|e| ApiError::internal(format!("clone task: {e}")))?;
        let vm = match cloned {
            Ok(x) => x,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(internal("cloning the template VM")(e));
            }
        };
        let pid = vm.pid();
        debug(&format!(
            "{}: VM {} in {:.2} s",
            &id[..12],
            if cold { "booted" } else { "cloned" },
            t0.elapsed().as_secs_f64()
        ));
        let cgroup = self.limit(&id, pid, &req.host_config);
        // The identity goes to the clone agent while the engine's session starts: the two
        // are independent, and each waits on the guest's polling.
        let (dir3, host3) = (dir.clone(), hostname.clone());
        let identity = tokio::task::spawn_blocking(move || template::identify(&dir3, &host3));
        let guest = GuestClient::new(&dir.join(template::ENGINE_SOCKET));
        let mut vm = Some(vm);
        let setup = async {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            while let Err(e) = guest.try_ping().await {
                if tokio::time::Instant::now() > deadline {
                    return Err(ApiError::internal(format!(
                        "the engine in the cloned VM did not answer within 60 s: {e}"
                    )));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            debug(&format!(
                "{}: engine answers after {:.2} s",
                &id[..12],
                t0.elapsed().as_secs_f64()
            ));
            let agent = identity
                .await
                .map_err(|e| ApiError::internal(format!("identity task: {e}")))?
                .map_err(internal("cloning the template VM"))?;
            debug(&format!(
                "{}: identity taken after {:.2} s",
                &id[..12],
                t0.elapsed().as_secs_f64()
            ));
            let mut greq = req.clone();
            if let Some(check) = check {
                // The VM's engine finds the image in the host store it has mounted.
                let damage = check
                    .await
                    .map_err(|e| ApiError::internal(format!("store check task: {e}")))?;
                let rec = self.repair(&image, damage).await?;
                debug(&format!(
                    "{}: image checked in the host store after {:.2} s",
                    &id[..12],
                    t0.elapsed().as_secs_f64()
                ));
                greq.config.image = rec.id;
            } else {
                // A record from before the store: the VM's engine pulls from the registry.
                let gref = images::guest_ref(&req.config.image);
                guest.pull(&gref).await?;
                debug(&format!(
                    "{}: image pulled in the VM after {:.2} s",
                    &id[..12],
                    t0.elapsed().as_secs_f64()
                ));
                greq.config.image = gref;
            }
            greq.config.hostname = hostname.clone();
            greq.host_config.auto_remove = false;
            greq.host_config.network_mode = network_mode.into();
            // The client's endpoints name the host-side network (`bridge`); inside the VM the
            // container has the VM's own namespace, where an endpoint would be refused.
            greq.networking_config = Default::default();
            greq.host_config.port_bindings = None;
            let r = guest.create(&greq).await;
            debug(&format!(
                "{}: created in the VM after {:.2} s",
                &id[..12],
                t0.elapsed().as_secs_f64()
            ));
            r.map(|gid| (gid, agent))
        };
        let (gid, agent) = match setup.await {
            Ok(g) => g,
            Err(e) => {
                if let Some(mut vm) = vm.take() {
                    let _ = tokio::task::spawn_blocking(move || vm.kill()).await;
                }
                cgroup::remove(&cgroup);
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        let now = now_nanos();
        let c = Arc::new(Ctr {
            id: id.clone(),
            name,
            created: rfc3339(now),
            created_ns: now,
            image_id: image.id.clone(),
            req,
            dir,
            ports,
            state: Mutex::new(State {
                pid,
                ..Default::default()
            }),
            phase: watch::channel(Phase::Created).0,
            vm: Mutex::new(vm.map(|v| live::VmProc::Own(Box::new(v)))),
            agent: Mutex::new(Some(agent)),
            guest,
            gid,
            finished: AtomicBool::new(false),
            quitting: AtomicBool::new(false),
            attached: AtomicUsize::new(0),
            detached: Notify::new(),
            cgroup,
        });
        self.containers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id.clone(), c.clone());
        let warnings = self.limit_warnings(&c.req.host_config);
        c.save();
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
            name: format!("/{}", c.name),
            driver: "qemu-clone".into(),
            platform: "linux".into(),
            host_config: c.req.host_config.clone(),
            config: c.req.config.clone(),
            network_settings: NetworkSettings {
                ports,
                ..Default::default()
            },
            log_path: c.dir.join("logs").display().to_string(),
            ..Default::default()
        })
    }

    async fn container_start(&self, id: &str) -> ApiResult<()> {
        let c = self.get(id)?;
        match c.phase() {
            Phase::Running => return Err(ApiError::not_modified()),
            Phase::Exited | Phase::Removed => {
                return Err(ApiError::conflict(format!(
                    "container {} has exited and its VM is gone; \
                    in VM-per-container mode a container runs once (docker run again)",
                    c.short()
                )))
            }
            Phase::Created => {}
        }
        if let Err(e) = c.guest.start(&c.gid).await {
            // As dockerd: a container that cannot start is over (and gone with --rm).
            self.finish(&c, 128, Some(e.message.clone())).await;
            return Err(e);
        }
        {
            let mut st = c.state.lock().unwrap_or_else(PoisonError::into_inner);
            st.started_ns = now_nanos();
            st.started_at = rfc3339(st.started_ns);
        }
        let _ = c.phase.send(Phase::Running);
        debug(&format!("{}: started in the VM", c.short()));
        c.save();
        self.0.follow(c);
        Ok(())
    }

    async fn container_stop(
        &self,
        id: &str,
        timeout: Option<i64>,
        signal: Option<String>,
    ) -> ApiResult<()> {
        let c = self.get(id)?;
        match c.phase() {
            Phase::Running => {}
            Phase::Created => {
                self.finish(&c, 0, None).await;
                return Ok(());
            }
            _ => return Err(ApiError::not_modified()),
        }
        let t = timeout.unwrap_or(10).max(0);
        if c.guest.stop(&c.gid, Some(t), signal).await.is_err() {
            self.finish(
                &c,
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
                &c,
                137,
                Some("the container did not stop; its VM was powered off".into()),
            )
            .await;
        }
        Ok(())
    }

    async fn container_kill(&self, id: &str, signal: Option<String>) -> ApiResult<()> {
        let c = self.get(id)?;
        if c.phase() != Phase::Running {
            return Err(ApiError::conflict(format!(
                "Container {} is not running",
                c.short()
            )));
        }
        c.guest.kill(&c.gid, signal).await
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

    async fn container_prune(&self) -> ApiResult<Vec<String>> {
        let cs: Vec<Arc<Ctr>> = self
            .containers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        let mut out = Vec::new();
        for c in cs.into_iter().filter(|c| c.phase() == Phase::Exited) {
            self.remove_now(&c);
            out.push(c.id.clone());
        }
        Ok(out)
    }

    async fn container_wait(&self, id: &str, cond: WaitCondition) -> ApiResult<WaitResponse> {
        let c = self.get(id)?;
        let mut rx = c.phase.subscribe();
        let done = |p: &Phase| match cond {
            WaitCondition::NotRunning => *p != Phase::Running,
            WaitCondition::NextExit => matches!(p, Phase::Exited | Phase::Removed),
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
        let tty = c.req.config.tty;
        let live =
            c.vm.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .is_some();
        if live {
            if let Ok(rx) = c.guest.logs(&c.gid, &opts, tty).await {
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
                output: mut grx,
                stdin,
                ..
            } = c
                .guest
                .attach(&c.gid, &opts, tty)
                .await
                .map_err(|e| c.host_ids(e))?;
            c.attached.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                while let Some(f) = grx.recv().await {
                    if tx.send(f).await.is_err() {
                        break;
                    }
                }
                c.attached.fetch_sub(1, Ordering::SeqCst);
                c.detached.notify_waiters();
            });
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
        Ok(AttachIo {
            tty,
            output: rx,
            stdin: None,
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
        c.guest
            .resize(&c.gid, h, w)
            .await
            .map_err(|e| c.host_ids(e))
    }
}
