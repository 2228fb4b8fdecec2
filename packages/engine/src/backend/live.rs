//! Live-restore, the engine's side: containers run under their shim's monitor
//! (runtime::monitor), which outlives the engine. The engine follows each running container
//! through the monitor's socket (output to attach subscribers, the exit to the exit handler),
//! and a restarted engine re-adopts the containers whose monitor still answers.
//!
//! When the engine stops containers: a `SIGTERM` stops them unless the engine runs with
//! `--live-restore` (dockerd's flag, also `"live-restore": true` in daemon.json); with it,
//! only a `SIGTERM` while init shuts the machine down ([`machine_shutting_down`]) does. A
//! crash, `kill -9` or an exit for any other reason never does: the monitors carry on.

use super::*;
use crate::containers::Record;
use crate::runtime::host::{Task, Watch};
use crate::runtime::monitor::{self, Event, Restore};
use docker_api::Frame;
use std::path::Path;

/// Written by init (packages/init, `begin_shutdown`) before it signals any service when the
/// machine halts, reboots or powers off; /run is a tmpfs, so it never outlives a boot.
pub const SHUTDOWN_MARKER: &str = "/run/axion/shutdown";

/// Whether init is shutting the machine down (then a `SIGTERM` means: stop the containers).
pub fn machine_shutting_down() -> bool {
    Path::new(SHUTDOWN_MARKER).exists()
}

/// Whether a `SIGTERM` stops the containers: always without live-restore; with it only
/// during the machine's shutdown.
pub fn sigterm_stops_containers(live_restore: bool, shutting_down: bool) -> bool {
    !live_restore || shutting_down
}

impl Engine {
    /// Follows a running container's monitor until its exit, then runs the exit handler.
    /// `task`: the shim, when this engine started it: reaped beside the watch (its status is
    /// the last resort for the exit code).
    pub(super) fn follow(
        &self,
        c: Arc<Container>,
        mut watch: Box<dyn Watch>,
        task: Option<Box<dyn Task>>,
        started: i128,
        trace: Arc<Trace>,
    ) {
        let me = self.arc();
        tokio::spawn(async move {
            let tx = c.output.clone();
            let dir = c.dir.clone();
            let tr = trace.clone();
            let reaper = task.map(|mut t| std::thread::spawn(move || t.wait()));
            let code = tokio::task::spawn_blocking(move || {
                let exit = loop {
                    match watch.next_event() {
                        Event::Output(stream, data) => {
                            let _ = tx.send(Some(Frame {
                                stream,
                                data: Bytes::from(data),
                            }));
                        }
                        Event::Exit(e) => break Some(e.exit_code),
                        Event::Gone => break None,
                    }
                };
                tr.mark("monitor reported the exit");
                let status = reaper.and_then(|r| r.join().ok());
                // The monitor killed before its exit frame: its file, else the shim's status.
                exit.or_else(|| monitor::read_exit(&dir).map(|e| e.exit_code))
                    .or(status)
                    .unwrap_or(255)
            })
            .await
            .unwrap_or(255);
            if let Some(me) = me {
                me.on_exit(c, code, started, &trace).await;
            }
            trace.mark("exit handled");
        });
    }

    /// For a record the last engine left `running`: adopt the container if its monitor
    /// answers (Some: the monitor's attach connection), else record how it ended.
    pub(super) fn reconcile(&self, dir: &Path, rec: &mut Record) -> Option<Box<dyn Watch>> {
        let answer = self.runtime.monitor_state(dir);
        let why = match &answer {
            Ok(s) => format!("monitor: {s:?}"),
            Err(e) => format!("monitor: {e}"),
        };
        let decision = monitor::restore_decision(answer, monitor::read_exit(dir), now_nanos());
        if let Restore::Adopt { pid } = decision {
            // Attach now: output from here on reaches the engine; an exit in between
            // arrives as the exit frame.
            let log = self
                .container_dirs(&rec.id)
                .1
                .join(format!("{}-json.log", rec.id));
            match self.runtime.monitor_attach(dir, &log, None) {
                Ok(w) => {
                    rec.pid = pid;
                    eprintln!(
                        "engine: container {} still runs (pid {pid}): re-attached",
                        short(&rec.id)
                    );
                    return Some(w);
                }
                Err(e) => eprintln!(
                    "engine: container {}: its monitor went away while re-attaching: {e}",
                    short(&rec.id)
                ),
            }
        }
        let e = monitor::read_exit(dir).unwrap_or(monitor::ExitInfo {
            exit_code: 255,
            finished_at: now_nanos(),
        });
        eprintln!(
            "engine: container {} exited ({}) while the engine was away ({why})",
            short(&rec.id),
            e.exit_code
        );
        rec.status = crate::containers::Status::Exited;
        rec.exit_code = e.exit_code;
        rec.finished_at = e.finished_at;
        rec.pid = 0;
        if let Some(cg) = rec.cgroup.take() {
            rec.oom_killed = self.runtime.cgroup_oom_killed(&cg);
            self.runtime.cgroup_remove(&cg);
        }
        None
    }

    /// Picks up an adopted container: its stdin, its published ports, the exit handler.
    pub(super) async fn readopt(&self, c: Arc<Container>, watch: Box<dyn Watch>) {
        let r = c.snapshot();
        if r.config.open_stdin {
            match self.runtime.monitor_stdin(&c.dir) {
                Ok(f) => *c.stdin.lock().unwrap() = Some(f),
                Err(e) => eprintln!("engine: container {}: stdin: {e}", short(&r.id)),
            }
        }
        // The engine's port proxies went with the old engine; bind them again.
        match super::containers::publish_ports(&r, true).await {
            Ok(bound) => {
                let proxies: Vec<_> = bound.into_iter().map(|b| b.serve(r.pid)).collect();
                *c.proxies.lock().unwrap() = proxies;
            }
            Err(e) => eprintln!(
                "engine: container {}: publishing its ports again: {e}",
                short(&r.id)
            ),
        }
        self.follow(c, watch, None, r.started_at, Arc::new(Trace::new(&r.id)));
    }
}

fn short(id: &str) -> &str {
    &id[..12.min(id.len())]
}

/// Writes what attach sends for a container's stdin to its monitor, framed; at the end, for
/// `stdin_once` (`close`), tells the monitor to close the container's stdin.
pub(super) fn stdin_to_monitor(
    mut w: std::fs::File,
    mut rx: mpsc::Receiver<Bytes>,
    close: bool,
    on_eof: impl FnOnce() + Send + 'static,
) {
    std::thread::spawn(move || {
        while let Some(b) = rx.blocking_recv() {
            if monitor::write_stdin(&mut w, &b).is_err() {
                break;
            }
        }
        if close {
            let _ = monitor::close_stdin(&mut w);
        }
        drop(w);
        on_eof();
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn when_sigterm_stops_containers() {
        // dockerd's default: a SIGTERM stops them.
        assert!(sigterm_stops_containers(false, false));
        assert!(sigterm_stops_containers(false, true));
        // live-restore: only the machine's shutdown does.
        assert!(!sigterm_stops_containers(true, false));
        assert!(sigterm_stops_containers(true, true));
    }
}
