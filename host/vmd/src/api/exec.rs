//! `exec` sessions, through the guest engine of the container's VM.

use super::Api;
use crate::*;
use docker_api::ExecBackend;

impl ExecBackend for Api {
    async fn exec_create(&self, id: &str, req: ExecCreateRequest) -> ApiResult<String> {
        let c = self.get(id)?;
        // Checked here too: once the container has exited its VM is gone, and the guest
        // could not say so.
        if c.phase() != Phase::Running {
            return Err(ApiError::conflict(format!(
                "container {} is not running",
                c.id
            )));
        }
        c.not_paused()?;
        let gid = c
            .guest()
            .exec_create(&c.gid(), &req)
            .await
            .map_err(|e| c.host_ids(e))?;
        let e = self
            .execs
            .add(random_hex(64), c, gid, req.tty, req.attach_stdin);
        debug(&format!(
            "{}: exec {} created in the VM",
            e.ctr.short(),
            &e.id[..12]
        ));
        Ok(e.id.clone())
    }

    async fn exec_start(&self, exec_id: &str, req: ExecStartRequest) -> ApiResult<AttachIo> {
        let e = self.execs.get(exec_id)?;
        if e.ctr.phase() != Phase::Running {
            return Err(ApiError::conflict(format!(
                "container {} is not running",
                e.ctr.id
            )));
        }
        let io = e
            .ctr
            .guest()
            .exec_start(&e.gid, &req, e.tty, e.stdin)
            .await
            .map_err(|err| e.ctr.host_ids(err))?;
        let AttachIo {
            tty,
            output: mut grx,
            stdin,
        } = io;
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            while let Some(f) = grx.recv().await {
                if tx.send(f).await.is_err() {
                    break;
                }
            }
            // The CLI asks for the exit code once the stream ends: have it before the end
            // reaches the CLI (the guest knows it when its stream ends; the VM may go soon).
            match e.ctr.guest().exec_inspect(&e.gid).await {
                Ok(i) => drop(e.record(i)),
                Err(err) => debug(&format!(
                    "{}: exec {}: no state from the guest after its stream: {}",
                    e.ctr.short(),
                    &e.id[..12],
                    err.message
                )),
            }
            drop(tx);
        });
        Ok(AttachIo {
            tty,
            output: rx,
            stdin,
        })
    }

    async fn exec_inspect(&self, exec_id: &str) -> ApiResult<ExecInspect> {
        let e = self.execs.get(exec_id)?;
        let live = e
            .ctr
            .vm
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some();
        if live {
            if let Ok(i) = e.ctr.guest().exec_inspect(&e.gid).await {
                return Ok(e.record(i));
            }
        }
        let gone = e
            .ctr
            .vm
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_none();
        Ok(e.last(gone))
    }

    async fn exec_resize(&self, exec_id: &str, h: u16, w: u16) -> ApiResult<()> {
        let e = self.execs.get(exec_id)?;
        if e.ctr.phase() != Phase::Running {
            return Err(ApiError::conflict(format!(
                "container {} is not running",
                e.ctr.id
            )));
        }
        e.ctr
            .guest()
            .exec_resize(&e.gid, h, w)
            .await
            .map_err(|err| e.ctr.host_ids(err))
    }
}
