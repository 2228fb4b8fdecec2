//! The state of a task's processes (its init process and its execs) as containerd asks
//! for it: created, running, stopped with an exit code; waiters wake at the exit.

use crate::stdio::{Copies, Fifos};
use containerd_shim::api;
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::MessageField;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// A process's state as containerd sees it.
#[derive(Debug, Clone)]
pub(super) struct Proc {
    pub status: api::Status,
    pub exit_code: u32,
    pub exited_at: Option<Timestamp>,
}

impl Proc {
    pub fn created() -> Proc {
        Proc {
            status: api::Status::CREATED,
            exit_code: 0,
            exited_at: None,
        }
    }
    pub fn exited_at(&self) -> MessageField<Timestamp> {
        MessageField::from_option(self.exited_at.clone())
    }
}

/// A container's init process or one of its execs.
pub(super) struct Process_ {
    pub fifos: Fifos,
    pub state: watch::Sender<Proc>,
    pub copies: Mutex<Option<Arc<Copies>>>,
}

impl Process_ {
    pub fn new(fifos: Fifos) -> Process_ {
        Process_ {
            fifos,
            state: watch::channel(Proc::created()).0,
            copies: Mutex::new(None),
        }
    }
    pub fn get(&self) -> Proc {
        self.state.borrow().clone()
    }
    pub async fn wait(&self) -> Proc {
        let mut rx = self.state.subscribe();
        // The sender lives in `self`, so the wait ends only with an exit.
        let _ = rx.wait_for(|p| p.status == api::Status::STOPPED).await;
        let p = rx.borrow().clone();
        p
    }
    pub fn exited(&self, code: u32) {
        self.state.send_modify(|p| {
            p.status = api::Status::STOPPED;
            p.exit_code = code;
            p.exited_at = Some(Timestamp::now());
        });
    }
}
