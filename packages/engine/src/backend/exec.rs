//! `exec` sessions: a process started by a shim in a running container's namespaces and
//! cgroup.

use super::*;
use crate::runtime::{ExecSpec, Process, Stdio3};
use docker_api::{AttachIo, ExecBackend, Frame, StdStream};

/// One `exec` instance, from its create to after its exit (inspect reads its code).
pub struct Exec {
    id: String,
    container: String,
    req: ExecCreateRequest,
    state: Mutex<(bool, Option<i64>, i32)>, // running, exit code, pid
    pty: Mutex<Option<OwnedFd>>,
}

impl Engine {
    /// Kills an exec session's process (a health probe past its timeout).
    pub(super) fn kill_exec(&self, exec_id: &str) {
        let ex = self.execs.lock().unwrap().get(exec_id).cloned();
        if let Some(ex) = ex {
            let pid = ex.state.lock().unwrap().2;
            if pid > 0 {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

impl ExecBackend for Engine {
    async fn exec_create(&self, id: &str, req: ExecCreateRequest) -> ApiResult<String> {
        let c = self.find(id)?;
        if !c.is_running() {
            return Err(ApiError::conflict(format!(
                "container {} is not running",
                c.snapshot().id
            )));
        }
        if c.snapshot().paused {
            return Err(ApiError::conflict(format!(
                "Container {} is paused, unpause the container before exec",
                c.snapshot().id
            )));
        }
        let eid = random_id();
        let action = format!("exec_create: {}", req.cmd.join(" "));
        crate::events::container(&c.snapshot(), &action, &[("execID", eid.clone())]);
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

    async fn exec_start(&self, exec_id: &str, start: ExecStartRequest) -> ApiResult<AttachIo> {
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
                group_add: super::ops::hc_list(&r.host_config, "GroupAdd"),
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
        let rt = self.runtime.clone();
        let res = tokio::task::spawn_blocking(move || {
            let mut s = rt.spawn_exec(&sp, stdio)?;
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
                let _ = s.wait();
                *ex.state.lock().unwrap() = (false, Some(126), 0);
                let _ = tx.try_send(Frame::stderr(format!("OCI runtime exec failed: {e}\n")));
                return Ok(AttachIo {
                    tty: start.tty,
                    output: rx,
                    stdin: None,
                });
            }
        };
        *ex.state.lock().unwrap() = (true, None, s.pid());
        let action = format!("exec_start: {}", ex.req.cmd.join(" "));
        crate::events::container(&r, &action, &[("execID", ex.id.clone())]);
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
            let io = s.take_io();
            if let Some(o) = io.stdout {
                readers.push(reader_thread(File::from(o), fwd(StdStream::Stdout)));
            }
            if let Some(e) = io.stderr {
                readers.push(reader_thread(File::from(e), fwd(StdStream::Stderr)));
            }
            if let Some(i) = io.stdin {
                stdin_w = Some(File::from(i));
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
        let r2 = r.clone();
        std::thread::spawn(move || {
            let code = s.wait();
            *ex2.pty.lock().unwrap() = None;
            for r in readers {
                let _ = r.join();
            }
            *ex2.state.lock().unwrap() = (false, Some(code), 0);
            crate::events::container(
                &r2,
                "exec_die",
                &[("execID", ex2.id.clone()), ("exitCode", code.to_string())],
            );
            drop(tx); // closes the output stream only after the exit code is known
        });
        // Raw or multiplexed as the start request's Tty says (dockerd frames by it too).
        Ok(AttachIo {
            tty: start.tty,
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
            can_remove: false,
            detach_keys: ex.req.detach_keys.clone(),
            process_config: ExecProcessConfig {
                tty: ex.req.tty,
                entrypoint: ex.req.cmd.first().cloned().unwrap_or_default(),
                arguments: ex.req.cmd.iter().skip(1).cloned().collect(),
                privileged: ex.req.privileged,
                user: ex.req.user.clone(),
            },
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
}
