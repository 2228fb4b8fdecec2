//! `docker exec` in VM-per-container mode: each exec instance lives in the engine of its
//! container's VM; this table maps the ids the daemon hands out to (container, the guest
//! engine's exec id), so start, inspect and resize reach the right VM.
//!
//! Why ids of our own rather than the guest's: the CLI names an exec by id alone
//! (`/exec/ID/start`), so the daemon must find the VM from it, and ids made in different
//! VMs are not guaranteed distinct. The last state the guest reported is kept, because the
//! CLI asks for the exit code after the stream ends and the VM may be gone by then (the
//! container exited); an exec whose VM went away before it told its exit code reports 137,
//! as a process killed with its container does under dockerd.

use crate::Ctr;
use docker_api::types::ExecInspect;
use docker_api::{ApiError, ApiResult};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

/// Exit code of an exec whose VM went away before the guest reported one.
pub const LOST_EXIT_CODE: i64 = 137;

pub(crate) struct Exec {
    pub id: String,
    pub ctr: Arc<Ctr>,
    /// The guest engine's id for it.
    pub gid: String,
    pub tty: bool,
    pub stdin: bool,
    /// What the guest last said about it.
    last: Mutex<ExecInspect>,
}

impl Exec {
    /// The guest's answer in the daemon's terms (our ids), remembered for later.
    pub fn record(&self, mut i: ExecInspect) -> ExecInspect {
        i.id = self.id.clone();
        i.container_id = self.ctr.id.clone();
        *self.last.lock().unwrap_or_else(PoisonError::into_inner) = i.clone();
        i
    }

    /// The last state seen; an exec still marked running whose VM is gone is over.
    pub fn last(&self, vm_gone: bool) -> ExecInspect {
        let mut i = self
            .last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if vm_gone && (i.running || i.exit_code.is_none()) {
            i.running = false;
            i.pid = 0;
            i.exit_code = Some(LOST_EXIT_CODE);
        }
        i
    }
}

#[derive(Default)]
pub(crate) struct Execs {
    map: Mutex<HashMap<String, Arc<Exec>>>,
}

impl Execs {
    pub fn add(&self, id: String, ctr: Arc<Ctr>, gid: String, tty: bool, stdin: bool) -> Arc<Exec> {
        let last = ExecInspect {
            id: id.clone(),
            container_id: ctr.id.clone(),
            open_stdin: stdin,
            ..Default::default()
        };
        let e = Arc::new(Exec {
            id: id.clone(),
            ctr,
            gid,
            tty,
            stdin,
            last: Mutex::new(last),
        });
        self.map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, e.clone());
        e
    }

    /// By full id or a unique prefix (as the CLI allows for containers).
    pub fn get(&self, id: &str) -> ApiResult<Arc<Exec>> {
        let map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(e) = map.get(id) {
            return Ok(e.clone());
        }
        let mut m = map
            .values()
            .filter(|e| !id.is_empty() && e.id.starts_with(id));
        match (m.next(), m.next()) {
            (Some(e), None) => Ok(e.clone()),
            _ => Err(ApiError::not_found(format!("No such exec instance: {id}"))),
        }
    }

    /// Forgets the execs of a removed container (dockerd keeps them until then).
    pub fn forget(&self, container: &str) {
        self.map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|_, e| e.ctr.id != container);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctr(id: &str) -> Arc<Ctr> {
        Arc::new(Ctr {
            id: id.into(),
            name: Mutex::new(format!("n{id}")),
            created: String::new(),
            created_ns: 0,
            image_id: String::new(),
            req: Default::default(),
            dir: "/nonexistent".into(),
            ports: Vec::new(),
            state: Default::default(),
            phase: tokio::sync::watch::channel(crate::Phase::Running).0,
            vm: Mutex::new(None),
            agent: Mutex::new(None),
            guest: Mutex::new(crate::GuestClient::new(std::path::Path::new(
                "/nonexistent/engine.sock",
            ))),
            gid: Mutex::new("g".into()),
            finished: Default::default(),
            quitting: Default::default(),
            attached: Default::default(),
            detached: Default::default(),
            cgroup: Default::default(),
            starts: Default::default(),
            waiting: Default::default(),
            reviving: Default::default(),
            policy: Default::default(),
            hc: Default::default(),
            paused: Default::default(),
            volumes: Vec::new(),
            restarting: Default::default(),
            restarts: Default::default(),
        })
    }

    #[test]
    fn a_guest_id_that_is_not_ascii_does_not_panic_the_daemon() {
        // 11 ASCII bytes then a 3-byte character: byte 12 is inside it.
        let c = ctr(&"h".repeat(64));
        let mut c = Arc::try_unwrap(c).ok().unwrap();
        *c.gid.lock().unwrap() = "aaaaaaaaaaa€€€".into();
        let e = c.host_ids(ApiError::conflict(format!("container {} gone", c.gid())));
        assert_eq!(e.message, format!("container {} gone", c.id));
        c.id = "short".into();
        assert_eq!(c.short(), "short");
    }

    #[test]
    fn guest_errors_name_our_container() {
        let c = ctr(&"h".repeat(64));
        let c = Arc::try_unwrap(c).ok().unwrap();
        *c.gid.lock().unwrap() = "g".repeat(64);
        let e = c.host_ids(ApiError::conflict(format!(
            "container {} is not running ({})",
            c.gid(),
            &c.gid()[..12]
        )));
        assert_eq!(
            e.message,
            format!("container {} is not running ({})", c.id, &c.id[..12])
        );
        assert_eq!(e.status.as_u16(), 409);
    }

    #[test]
    fn ids_prefixes_and_forgetting() {
        let x = Execs::default();
        let (a, b) = (ctr("aaaa"), ctr("bbbb"));
        x.add("e1aa".into(), a.clone(), "g1".into(), false, true);
        x.add("e1bb".into(), a, "g2".into(), false, false);
        x.add("f2".into(), b, "g3".into(), true, false);
        assert_eq!(x.get("e1bb").unwrap().gid, "g2");
        assert_eq!(x.get("f").unwrap().gid, "g3");
        // Ambiguous, unknown and empty are the CLI's 404.
        for id in ["e1", "zz", ""] {
            let e = x.get(id).err().unwrap();
            assert_eq!(
                (e.status.as_u16(), e.message),
                (404, format!("No such exec instance: {id}"))
            );
        }
        x.forget("aaaa");
        assert!(x.get("e1aa").is_err() && x.get("f2").is_ok());
    }

    #[test]
    fn the_guests_state_in_our_ids_and_after_the_vm_is_gone() {
        let x = Execs::default();
        let e = x.add(
            "host-id".into(),
            ctr("cccc"),
            "guest-id".into(),
            false,
            false,
        );
        let i = e.record(ExecInspect {
            id: "guest-id".into(),
            container_id: "guest-ctr".into(),
            running: true,
            pid: 9,
            ..Default::default()
        });
        assert_eq!(
            (i.id.as_str(), i.container_id.as_str(), i.running),
            ("host-id", "cccc", true)
        );
        assert!(e.last(false).running);
        // The VM went while it ran: over, with the code of a killed process.
        let i = e.last(true);
        assert_eq!(
            (i.running, i.exit_code, i.pid),
            (false, Some(LOST_EXIT_CODE), 0)
        );
        // A code the guest reported stays.
        e.record(ExecInspect {
            exit_code: Some(3),
            ..Default::default()
        });
        assert_eq!(e.last(true).exit_code, Some(3));
    }
}
