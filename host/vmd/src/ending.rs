//! A container's end: its waiter (the guest's wait), QEMU's watcher, and what is done once
//! it is over (logs and changes kept, the VM killed, its restart policy applied).

use crate::*;

impl Daemon {
    /// Called once when the container is over: keeps its logs, quits its VM, and removes it
    /// when it was created with --rm.
    pub(crate) async fn finish(self: &Arc<Self>, c: &Arc<Ctr>, code: i64, error: Option<String>) {
        if c.finished.swap(true, Ordering::SeqCst) {
            return;
        }
        // Being removed (`rm -f`, the daemon's shutdown): no later start, so no kept changes
        // and no restart.
        let removing = c.quitting.load(Ordering::SeqCst);
        self.unpause_for(c);
        // Let attach streams deliver the last output.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        while c.attached.load(Ordering::SeqCst) > 0 {
            if tokio::time::timeout_at(deadline, c.detached.notified())
                .await
                .is_err()
            {
                break;
            }
        }
        // The logs outlive the VM (`docker logs` of an exited container); a --rm container
        // has none to keep.
        if error.is_none() && !c.req.host_config.auto_remove {
            if let Ok(Ok(raw)) =
                tokio::time::timeout(Duration::from_secs(10), c.guest().logs_raw(&c.gid())).await
            {
                // Appended: an exited container started again keeps its earlier runs' logs.
                use std::io::Write;
                let _ = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(c.dir.join("logs"))
                    .and_then(|mut f| f.write_all(&raw));
            }
        }
        debug(&format!("{}: exit code {code}, logs saved", c.short()));
        // Its files outlive the VM too, for a later start on a new one (boot.rs); a --rm
        // container or one being removed has no later start.
        let vm_alive =
            c.vm.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .as_mut()
                .is_some_and(|vm| vm.exited().is_none());
        if !c.req.host_config.auto_remove && !removing && vm_alive {
            self.keep_changes(c).await;
        }
        c.quitting.store(true, Ordering::SeqCst);
        let vm = c.vm.lock().unwrap_or_else(PoisonError::into_inner).take();
        drop(
            c.agent
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
        if let Some(mut vm) = vm {
            // Killed, not shut down: nothing in the VM is needed any more (the container
            // has exited and a VM never runs again), and its overlay goes with `rm`.
            let _ = tokio::task::spawn_blocking(move || vm.kill()).await;
        }
        debug(&format!("{}: VM gone", c.short()));
        // Its image's files may go now if the image was removed meanwhile.
        self.images.unpin(&c.id);
        let d = self.clone();
        tokio::spawn(async move {
            match d.images.collect().await {
                Ok(c) => report_collected(&c),
                Err(e) => eprintln!("vmd: WARNING: collecting the layer store's garbage: {e:#}"),
            }
        });
        self.cleanup_cgroup(c);
        {
            let mut st = c.state.lock().unwrap_or_else(PoisonError::into_inner);
            st.exit_code = code;
            st.error = error.unwrap_or_default();
            st.finished_ns = now_nanos();
            st.finished_at = rfc3339(st.finished_ns);
            st.pid = 0;
        }
        c.set_phase(Phase::Exited);
        c.save();
        c.event(&self.events, "die", &[("exitCode", code.to_string())]);
        if c.req.host_config.auto_remove {
            self.remove_now(c);
        } else if !removing {
            self.restart_by_policy(c);
        }
    }

    pub(crate) fn remove_now(&self, c: &Arc<Ctr>) {
        self.containers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&c.id);
        self.execs.forget(&c.id);
        let _ = std::fs::remove_dir_all(&c.dir);
        c.set_phase(Phase::Removed);
        c.event(&self.events, "destroy", &[]);
    }

    /// Watches QEMU: if it exits while the daemon did not ask it to, the container ends
    /// with an error (rather than hanging its API calls).
    pub(crate) fn watch_vm(self: &Arc<Self>, c: Arc<Ctr>) {
        let d = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(300)).await;
                if c.finished.load(Ordering::SeqCst) || c.quitting.load(Ordering::SeqCst) {
                    return;
                }
                let exited = {
                    let mut g = c.vm.lock().unwrap_or_else(PoisonError::into_inner);
                    match g.as_mut() {
                        None => return,
                        Some(vm) => vm.exited().map(|st| {
                            (
                                st,
                                tail(&vm.qemu_log(), 5),
                                vm.serial_log().map(|p| tail(&p, 5)).unwrap_or_default(),
                            )
                        }),
                    }
                };
                if let Some((st, qlog, serial)) = exited {
                    if c.quitting.load(Ordering::SeqCst) {
                        return;
                    }
                    let msg = format!(
                        "the container's VM (QEMU) exited unexpectedly ({st}); QEMU \
                         said: {qlog}; last console lines: {serial}"
                    );
                    eprintln!("vmd: {}: {msg}", c.short());
                    d.finish(&c, 255, Some(msg)).await;
                    return;
                }
            }
        });
    }
}

impl Daemon {
    /// Waits in the guest for a running container's exit, then finishes it.
    pub(crate) fn follow(self: &Arc<Self>, c: Arc<Ctr>) {
        let d = self.clone();
        tokio::spawn(async move {
            let r = loop {
                let generation = c.restarts.load(Ordering::SeqCst);
                let r = c.guest().wait(&c.gid()).await;
                debug(&format!("{}: the guest's wait returned", c.short()));
                if c.finished.load(Ordering::SeqCst) || c.quitting.load(Ordering::SeqCst) {
                    return;
                }
                // `docker restart` stops and starts the container in the same VM: that stop
                // is not the end of the container.
                if c.restarting.load(Ordering::SeqCst)
                    || c.restarts.load(Ordering::SeqCst) != generation
                {
                    while c.restarting.load(Ordering::SeqCst) {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    continue;
                }
                break r;
            };
            match r {
                Ok(w) => {
                    let err = w.error.map(|e| e.message).filter(|m| !m.is_empty());
                    d.finish(&c, w.status_code, err).await
                }
                Err(e) => {
                    // The VM died (the watcher reports that) or the channel broke.
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    if c.quitting.load(Ordering::SeqCst) {
                        return;
                    }
                    d.finish(
                        &c,
                        255,
                        Some(format!("lost the container's VM: {}", e.message)),
                    )
                    .await
                }
            }
        });
    }
}
