//! A container's VM brought up: cloned from the template, limited, given its identity, its
//! image checked in the host store, and the container created in its engine. `docker create`
//! does it once; a `start` or `restart` of an exited container does it again on a new VM,
//! with the container's kept changes stacked on its image ([`changes`]).

use crate::*;

/// What a container's VM is made with, from its create request.
pub(crate) struct VmSpec<'a> {
    pub id: &'a str,
    pub dir: &'a Path,
    pub req: &'a ContainerCreateRequest,
    pub image: &'a images::ImageRecord,
    pub forwards: Vec<qemu::PortForward>,
    pub slots: Vec<volumes::Slot>,
    pub plan: &'a volumes::Plan,
    /// A clone from the warm pool, restored and waiting in `dir` ([`pool`]): used instead
    /// of cloning.
    pub warm: Option<pool::HandedOver>,
}

/// A VM with the container created in its engine.
pub(crate) struct Booted {
    pub vm: qemu::Vm,
    pub pid: u32,
    pub cgroup: Vec<PathBuf>,
    pub agent: std::os::unix::net::UnixStream,
    pub guest: GuestClient,
    pub gid: String,
}

/// The host name of the container's VM.
pub(crate) fn hostname_of(id: &str, req: &ContainerCreateRequest) -> String {
    if req.config.hostname.is_empty() {
        id[..12].to_string()
    } else {
        req.config.hostname.clone()
    }
}

/// QEMU's forwards for the container's published ports ((spec like "80/tcp", host port)).
pub(crate) fn forwards_of(ports: &[(String, u16)]) -> Vec<qemu::PortForward> {
    ports
        .iter()
        .filter_map(|(spec, hp)| {
            let (p, proto) = spec.split_once('/').unwrap_or((spec, "tcp"));
            Some(qemu::PortForward {
                protocol: if proto == "udp" {
                    qemu::Protocol::Udp
                } else {
                    qemu::Protocol::Tcp
                },
                host: *hp,
                guest: p.parse().ok()?,
            })
        })
        .collect()
}

impl Daemon {
    /// The 9p slots of the VM: a named volume's data (made when missing) or a host directory.
    pub(crate) fn slots_of(&self, plan: &volumes::Plan) -> ApiResult<Vec<volumes::Slot>> {
        let mut slots = Vec::new();
        for (src, _, ro) in &plan.mounts {
            let path = match src {
                volumes::Source::Named(n) => {
                    let (v, new) = self.volumes.create(n, None)?;
                    if new {
                        self.volume_event("create", &v.name);
                    }
                    self.volumes.data_path(n)
                }
                volumes::Source::Host(h) => {
                    if !h.exists() {
                        std::fs::create_dir_all(h).map_err(|e| {
                            ApiError::bad_request(format!(
                                "invalid mount config: creating {}: {e}",
                                h.display()
                            ))
                        })?;
                    }
                    if !h.is_dir() {
                        return Err(ApiError::bad_request(format!(
                            "invalid mount config: {} is not a directory (VM-per-container \
                             mode shares directories into the VM, not single files)",
                            h.display()
                        )));
                    }
                    h.clone()
                }
            };
            slots.push(volumes::Slot {
                path,
                readonly: *ro,
            });
        }
        Ok(slots)
    }

    /// Clones the VM and creates the container in it. On an error nothing of the VM is
    /// left running (the caller removes the directory when it is new).
    pub(crate) async fn boot(&self, s: VmSpec<'_>) -> ApiResult<Booted> {
        let (id, dir, req, image) = (s.id, s.dir, s.req, s.image);
        let network_mode = guest_network(&req.host_config.network_mode)?;
        // The image's layers in the host store are checked while the VM is cloned.
        let check = (!image.diff_ids.is_empty()).then(|| {
            let (st, rec) = (self.images.store.clone(), image.clone());
            tokio::task::spawn_blocking(move || st.check(&rec.id, &rec.layers, &rec.diff_ids))
        });
        let hostname = hostname_of(id, req);
        let cold = self.opts.cold_boot;
        let t0 = std::time::Instant::now();
        let pooled = s.warm.is_some();
        let (mut vm, agent, guest) = match s.warm {
            Some(w) => {
                // Continued (it waits stopped); its channels are open, its engine answered.
                let mut vm = w.vm;
                let cont = tokio::task::spawn_blocking(move || {
                    let r = vm.qmp().and_then(|q| Ok(q.cont()?));
                    (vm, r)
                })
                .await
                .map_err(|e| ApiError::internal(format!("continue task: {e}")))?;
                vm = cont.0;
                if let Err(e) = cont.1 {
                    let _ = tokio::task::spawn_blocking(move || vm.kill()).await;
                    return Err(internal("continuing the pooled clone")(e.into()));
                }
                (vm, Some(w.agent), w.guest)
            }
            None => {
                let t = self.template.clone();
                let (dir2, host2) = (dir.to_path_buf(), hostname.clone());
                let (forwards, slots) = (s.forwards, s.slots);
                let cloned = tokio::task::spawn_blocking(move || {
                    t.clone_vm(&dir2, &host2, &forwards, &slots, cold)
                })
                .await
                .map_err(|e| ApiError::internal(format!("clone task: {e}")))?;
                let vm = cloned.map_err(internal("cloning the template VM"))?;
                (
                    vm,
                    None,
                    GuestClient::new(&dir.join(template::ENGINE_SOCKET)),
                )
            }
        };
        let pid = vm.pid();
        debug(&format!(
            "{}: VM {} in {:.2} s",
            &id[..12],
            match (pooled, cold) {
                (true, _) => "from the pool",
                (false, true) => "booted",
                (false, false) => "cloned",
            },
            t0.elapsed().as_secs_f64()
        ));
        let cgroup = self.limit(id, pid, &req.host_config);
        // The identity goes to the clone agent while the engine's session starts: the two
        // are independent, and each waits on the guest's polling.
        let (dir3, host3) = (dir.to_path_buf(), hostname.clone());
        let identity = tokio::task::spawn_blocking(move || match agent {
            Some(a) => template::identify_over(a, &dir3, &host3),
            None => template::identify(&dir3, &host3),
        });
        let setup = async {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            // A pooled clone's engine has answered already.
            if !pooled {
                loop {
                    match guest.try_ping().await {
                        Ok(()) => break,
                        Err(e) if tokio::time::Instant::now() > deadline => {
                            return Err(ApiError::internal(format!(
                                "the engine in the cloned VM did not answer within 60 s: {e}"
                            )));
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                    }
                }
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
                let rec = self.repair(image, damage).await?;
                debug(&format!(
                    "{}: image checked in the host store after {:.2} s",
                    &id[..12],
                    t0.elapsed().as_secs_f64()
                ));
                greq.config.image = self.stack_changes(id, dir, rec).await?;
            } else {
                if dir.join(changes::LAYER_FILE).exists() {
                    return Err(ApiError::internal(
                        "the container's image is not in the host's layer store (a record \
                         from before it): its kept files cannot be stacked on it; pull the \
                         image again",
                    ));
                }
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
            greq.host_config.binds = s.plan.binds.clone();
            greq.host_config.mounts = s.plan.guest_mounts.clone();
            let r = guest.create(&greq).await;
            debug(&format!(
                "{}: created in the VM after {:.2} s",
                &id[..12],
                t0.elapsed().as_secs_f64()
            ));
            r.map(|gid| (gid, agent))
        };
        match setup.await {
            Ok((gid, agent)) => Ok(Booted {
                vm,
                pid,
                cgroup,
                agent,
                guest,
                gid,
            }),
            Err(e) => {
                let _ = tokio::task::spawn_blocking(move || vm.kill()).await;
                cgroup::remove(&cgroup);
                Err(e)
            }
        }
    }

    /// The image id the guest engine runs the container on: its image, or with a kept
    /// changes layer that image plus the layer, put into the store and pinned for the
    /// container (replacing the image's pin, which it covers) until its VM is gone.
    async fn stack_changes(
        &self,
        id: &str,
        dir: &Path,
        rec: images::ImageRecord,
    ) -> ApiResult<String> {
        let (st, d, base) = (self.images.store.clone(), dir.to_path_buf(), rec.clone());
        let stacked = tokio::task::spawn_blocking(move || changes::stacked(&st, &base, &d))
            .await
            .map_err(|e| ApiError::internal(format!("changes task: {e}")))?
            .map_err(internal("the container's kept files"))?;
        let Some(stacked) = stacked else {
            return Ok(rec.id);
        };
        self.images.pin(id, stacked.record.clone());
        let st = self.images.store.clone();
        let image = stacked.record.id.clone();
        self.images
            .while_not_collecting(move || stacked.store(&st))
            .await
            .map_err(internal("the container's kept files"))?;
        debug(&format!("{}: kept changes stacked as {image}", &id[..12]));
        Ok(image)
    }
}

/// What is left of a finished VM in the container's directory and goes before a new one is
/// made there (the logs, the record and the kept changes stay).
const VM_FILES: &[&str] = &[
    "disk.qcow2",
    template::ENGINE_SOCKET,
    "agent.sock",
    "qmp.sock",
    "serial.log",
    "qemu.log",
];

impl Daemon {
    /// `start` of an exited container: a new VM cloned from the template, with the
    /// container's kept changes stacked on its image, and the container created in it: it
    /// is `created` again, and attach streams that waited for it are connected.
    pub(crate) async fn revive(self: &Arc<Self>, c: &Arc<Ctr>) -> ApiResult<()> {
        if c.reviving.swap(true, Ordering::SeqCst) {
            return Err(ApiError::conflict(format!(
                "container {} is being started",
                c.short()
            )));
        }
        let r = self.revive_now(c).await;
        c.reviving.store(false, Ordering::SeqCst);
        if r.is_err() {
            // Nothing to wait for: the streams end.
            c.waiting
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clear();
        }
        r
    }

    async fn revive_now(self: &Arc<Self>, c: &Arc<Ctr>) -> ApiResult<()> {
        let t0 = std::time::Instant::now();
        let (image, pin) = self
            .images
            .find_and_pin(&c.image_id, &c.id)
            .ok_or_else(|| {
                ApiError::conflict(format!(
                    "container {}: its image {} was removed; it cannot run again",
                    c.short(),
                    c.image_id
                ))
            })?;
        let req = c.current_req();
        let hc = &req.host_config;
        let plan = volumes::plan(hc.binds.as_deref(), hc.mounts.as_deref())?;
        let slots = self.slots_of(&plan)?;
        for f in VM_FILES {
            let _ = std::fs::remove_file(c.dir.join(f));
        }
        let b = self
            .boot(VmSpec {
                id: &c.id,
                dir: &c.dir,
                req: &req,
                image: &image,
                forwards: forwards_of(&c.ports),
                slots,
                plan: &plan,
                warm: None,
            })
            .await?;
        *c.guest.lock().unwrap_or_else(PoisonError::into_inner) = b.guest;
        *c.gid.lock().unwrap_or_else(PoisonError::into_inner) = b.gid;
        *c.cgroup.lock().unwrap_or_else(PoisonError::into_inner) = b.cgroup;
        *c.agent.lock().unwrap_or_else(PoisonError::into_inner) = Some(b.agent);
        *c.vm.lock().unwrap_or_else(PoisonError::into_inner) =
            Some(live::VmProc::Own(Box::new(b.vm)));
        {
            let mut st = c.state.lock().unwrap_or_else(PoisonError::into_inner);
            st.pid = b.pid;
            st.error.clear();
        }
        c.finished.store(false, Ordering::SeqCst);
        c.quitting.store(false, Ordering::SeqCst);
        c.set_phase(Phase::Created);
        pin.keep();
        c.save();
        self.watch_vm(c.clone());
        debug(&format!(
            "{}: a new VM for the exited container in {:.2} s",
            c.short(),
            t0.elapsed().as_secs_f64()
        ));
        let waiting =
            std::mem::take(&mut *c.waiting.lock().unwrap_or_else(PoisonError::into_inner));
        for w in waiting {
            attach_waiter(c, w).await;
        }
        Ok(())
    }

    /// Before an exited container's VM goes: its changes layer from the guest engine, kept in
    /// its directory ([`changes::keep`]). A failure is logged: the container keeps the
    /// files of its earlier runs only.
    pub(crate) async fn keep_changes(&self, c: &Ctr) {
        let t0 = std::time::Instant::now();
        let scratch = changes::scratch_of(&c.dir);
        let r = match fetch_changes(c, &scratch).await {
            Ok(()) => {
                let (dir, run) = (c.dir.clone(), scratch.clone());
                tokio::task::spawn_blocking(move || changes::keep(&dir, &run))
                    .await
                    .map_err(|e| anyhow::anyhow!("task: {e}"))
                    .and_then(|r| r)
            }
            Err(e) => Err(e),
        };
        let _ = std::fs::remove_file(&scratch);
        match r {
            Ok(()) => debug(&format!(
                "{}: changes kept in {:.2} s",
                c.short(),
                t0.elapsed().as_secs_f64()
            )),
            Err(e) => eprintln!(
                "vmd: WARNING: {}: the container's changes of this run are not kept: {e:#}",
                c.short()
            ),
        }
    }
}

/// The container's writable layer in its VM, as a layer tar written to `dest` (the run's
/// changes only: see [`changes`]).
pub(crate) async fn fetch_changes(c: &Ctr, dest: &Path) -> anyhow::Result<()> {
    let fetch = async {
        let (_, mut rx) = c
            .guest()
            .byte_stream(
                "export of the changes",
                http::Method::GET,
                &format!("/containers/{}/export", c.gid()),
                &[("layer", "changes".to_string())],
            )
            .await
            .map_err(|e| anyhow::anyhow!("{}", e.message))?;
        use tokio::io::AsyncWriteExt;
        let mut f = tokio::fs::File::create(dest).await?;
        while let Some(b) = rx.recv().await {
            f.write_all(&b).await?;
        }
        f.flush().await?;
        anyhow::Ok(())
    };
    match tokio::time::timeout(Duration::from_secs(120), fetch).await {
        Ok(r) => r,
        Err(_) => Err(anyhow::anyhow!("the guest engine took over 120 s")),
    }
}

/// Connects an attach that waited for the container's new VM to its guest engine.
async fn attach_waiter(c: &Arc<Ctr>, w: Waiter) {
    let tty = c.req.config.tty;
    let opts = AttachOptions {
        stdin: w.stdin.is_some(),
        ..w.opts
    };
    match c.guest().attach(&c.gid(), &opts, tty).await {
        Ok(io) => {
            forward_attach(c.clone(), io.output, w.output);
            if let (Some(mut rx), Some(gin)) = (w.stdin, io.stdin) {
                tokio::spawn(async move {
                    while let Some(b) = rx.recv().await {
                        if gin.send(b).await.is_err() {
                            break;
                        }
                    }
                });
            }
        }
        Err(e) => eprintln!(
            "vmd: {}: attaching a waiting stream: {}",
            c.short(),
            e.message
        ),
    }
}

/// Moves the guest's attach output to the client's, counted in `attached` (the container's
/// end waits for its streams to deliver the last output).
pub(crate) fn forward_attach(c: Arc<Ctr>, mut from: FrameRx, to: mpsc::Sender<Frame>) {
    c.attached.fetch_add(1, Ordering::SeqCst);
    tokio::spawn(async move {
        while let Some(f) = from.recv().await {
            if to.send(f).await.is_err() {
                break;
            }
        }
        c.attached.fetch_sub(1, Ordering::SeqCst);
        c.detached.notify_waiters();
    });
}

impl Daemon {
    /// Starts a created or exited container (an exited one on a new VM: [`Daemon::revive`]).
    /// `by_policy`: a restart policy's start, which a `docker stop` meanwhile cancels.
    pub(crate) async fn start_ctr(
        self: &Arc<Self>,
        c: &Arc<Ctr>,
        by_policy: bool,
    ) -> ApiResult<()> {
        match c.phase() {
            Phase::Running => return Err(ApiError::not_modified()),
            Phase::Removed => {
                return Err(ApiError::conflict(format!(
                    "container {} is being removed",
                    c.short()
                )))
            }
            // A new VM, with the container's kept files.
            Phase::Exited => self.revive(c).await?,
            Phase::Created => {}
        }
        if by_policy && c.policy.cancelled.load(Ordering::SeqCst) {
            // Stopped while its new VM was made: it does not run.
            self.finish(c, 0, None).await;
            return Ok(());
        }
        if let Err(e) = c.guest().start(&c.gid()).await {
            // As dockerd: a container that cannot start is over (and gone with --rm), and
            // its restart policy does not try again until a `docker start`.
            c.policy.cancelled.store(true, Ordering::SeqCst);
            self.finish(c, 128, Some(e.message.clone())).await;
            return Err(e);
        }
        {
            let mut st = c.state.lock().unwrap_or_else(PoisonError::into_inner);
            st.started_ns = now_nanos();
            st.started_at = rfc3339(st.started_ns);
        }
        c.starts.fetch_add(1, Ordering::SeqCst);
        c.set_phase(Phase::Running);
        c.event(&self.events, "start", &[]);
        debug(&format!("{}: started in the VM", c.short()));
        c.save();
        self.follow(c.clone());
        Ok(())
    }

    /// After a container's exit: its restart policy's restart, after its delay
    /// ([`restart`]).
    pub(crate) fn restart_by_policy(self: &Arc<Self>, c: &Arc<Ctr>) {
        let policy = restart::Policy::of(&c.host_config().restart_policy, false)
            .unwrap_or(restart::Policy::No);
        let (code, ran) = {
            let st = c.state.lock().unwrap_or_else(PoisonError::into_inner);
            let ns = (st.finished_ns - st.started_ns).max(0) as u64;
            (st.exit_code, Duration::from_nanos(ns))
        };
        let Some(delay) = c.policy.after_exit(policy, code, ran) else {
            return;
        };
        c.save();
        debug(&format!(
            "{}: restarting in {} ms (restart {})",
            c.short(),
            delay.as_millis(),
            c.policy.count.load(Ordering::SeqCst)
        ));
        let (d, c) = (self.clone(), c.clone());
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            // A `docker stop`, `start` or `rm` meanwhile takes it over.
            if !c.policy.pending.load(Ordering::SeqCst) || c.phase() != Phase::Exited {
                return;
            }
            let r = d.start_ctr(&c, true).await;
            c.policy.pending.store(false, Ordering::SeqCst);
            if let Err(e) = r {
                eprintln!(
                    "vmd: {}: restart by its policy failed: {}",
                    c.short(),
                    e.message
                );
                let mut st = c.state.lock().unwrap_or_else(PoisonError::into_inner);
                st.error = e.message;
            }
        });
    }

    /// At the daemon's start: exited containers whose policy says so start again
    /// (`always`, `unless-stopped` unless stopped by hand), as with dockerd.
    pub(crate) fn start_by_policy(self: &Arc<Self>) {
        let all: Vec<Arc<Ctr>> = self
            .containers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .filter(|c| c.phase() == Phase::Exited)
            .cloned()
            .collect();
        for c in all {
            let policy = restart::Policy::of(&c.host_config().restart_policy, false)
                .unwrap_or(restart::Policy::No);
            if !policy.at_daemon_start(c.policy.by_hand.load(Ordering::SeqCst)) {
                continue;
            }
            let d = self.clone();
            tokio::spawn(async move {
                c.policy.user_start();
                if let Err(e) = d.start_ctr(&c, false).await {
                    eprintln!(
                        "vmd: {}: starting it again (restart policy): {}",
                        c.short(),
                        e.message
                    );
                }
            });
        }
    }
}
