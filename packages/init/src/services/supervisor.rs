//! The supervision state machine. It never touches the system itself: processes are started
//! and signalled through the [`Spawner`] trait (the real one in `spawn.rs`, a recording
//! double in the tests), and time is passed in, so all of it is tested without root.

use std::io;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use super::{ReadyCheck, Restart, Service, NETWORK};
use crate::sys::ExitStatus;

pub const BACKOFF_BASE: Duration = Duration::from_millis(250);
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A run at least this long resets the backoff.
pub const STABLE_RUN: Duration = Duration::from_secs(10);
/// How often a running service's `ready` checks are tried until they answer.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(10);

pub struct Spawned {
    pub pid: i32,
    /// The read end of the service's stdout/stderr pipe (None for tty services).
    pub output: Option<OwnedFd>,
}

/// What the supervisor needs from the operating system.
pub trait Spawner {
    fn spawn(&mut self, svc: &Service) -> io::Result<Spawned>;
    /// Sends `sig` to the service's process group (its pid: services are session leaders).
    fn signal(&mut self, pid: i32, sig: i32);
    /// True when `check` answers now (must not block for long: PID 1 waits on it).
    fn probe(&mut self, check: &ReadyCheck) -> bool;
}

/// Where a service stands on its `ready` checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// It has no `ready` checks: nobody waits for it.
    NotRequired,
    Waiting,
    Ready,
    /// Its `ready-timeout` ran out first.
    GaveUp,
}

/// News from [`Supervisor::check_ready`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadyEvent {
    Ready {
        name: String,
    },
    /// Gave up: the checks that never answered.
    TimedOut {
        name: String,
        missing: Vec<String>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Not started yet: waiting for its dependencies.
    Pending,
    Running {
        pid: i32,
        since: Instant,
    },
    /// Exited; restarts at `until`.
    Backoff {
        until: Instant,
    },
    /// Exited and not restarted (policy, or shutdown).
    Done,
}

pub struct Unit {
    pub svc: Service,
    pub state: State,
    /// Consecutive quick failures: the backoff exponent.
    pub step: u32,
    pub starts: u32,
    /// During shutdown: when SIGKILL follows the SIGTERM (its own stop-timeout).
    pub kill_at: Option<Instant>,
    pub readiness: Readiness,
    /// Which of `svc.ready` have answered.
    pub answered: Vec<bool>,
    pub first_start: Option<Instant>,
}

fn unit(svc: Service) -> Unit {
    let readiness = if svc.ready.is_empty() {
        Readiness::NotRequired
    } else {
        Readiness::Waiting
    };
    Unit {
        answered: vec![false; svc.ready.len()],
        svc,
        state: State::Pending,
        step: 0,
        starts: 0,
        kill_at: None,
        readiness,
        first_start: None,
    }
}

/// A service output pipe to watch, returned when a service starts.
pub struct Started {
    pub name: String,
    pub pid: i32,
    pub output: Option<OwnedFd>,
    pub log_max_bytes: u64,
}

pub struct Supervisor<S: Spawner> {
    pub spawner: S,
    pub units: Vec<Unit>,
    stopping: bool,
    next_probe: Option<Instant>,
}

pub fn backoff(step: u32) -> Duration {
    let factor = 1u32.checked_shl(step.min(16)).unwrap_or(u32::MAX);
    BACKOFF_BASE.saturating_mul(factor).min(BACKOFF_MAX)
}

impl<S: Spawner> Supervisor<S> {
    /// `services` must already be in start order (see `services::order`).
    pub fn new(spawner: S, services: Vec<Service>) -> Self {
        let units = services.into_iter().map(unit).collect();
        Supervisor {
            spawner,
            units,
            stopping: false,
            next_probe: None,
        }
    }

    fn dep_started(&self, dep: &str, network_ready: bool) -> bool {
        if dep == NETWORK {
            return network_ready;
        }
        self.units
            .iter()
            .find(|u| u.svc.name == dep)
            .is_none_or(|u| u.state != State::Pending)
    }

    fn start(&mut self, i: usize, now: Instant, out: &mut Vec<Started>) {
        let unit = &mut self.units[i];
        unit.starts += 1;
        unit.first_start.get_or_insert(now);
        if unit.readiness == Readiness::Waiting {
            self.next_probe = Some(now);
        }
        match self.spawner.spawn(&unit.svc) {
            Ok(sp) => {
                crate::debug!("service {} started, pid {}", unit.svc.name, sp.pid);
                if unit.starts == 1 {
                    crate::trace::mark(&format!("service {} start", unit.svc.name));
                }
                unit.state = State::Running {
                    pid: sp.pid,
                    since: now,
                };
                out.push(Started {
                    name: unit.svc.name.clone(),
                    pid: sp.pid,
                    output: sp.output,
                    log_max_bytes: unit.svc.log_max_bytes,
                });
            }
            Err(e) => {
                let delay = backoff(unit.step);
                unit.step += 1;
                crate::error!(
                    "service {}: cannot start {}: {e}; retrying in {:.2} s",
                    unit.svc.name,
                    unit.svc.command,
                    delay.as_secs_f64()
                );
                unit.state = State::Backoff { until: now + delay };
            }
        }
    }

    /// Adds a service after the others (started by the next `start_pending`).
    pub fn add(&mut self, svc: Service) {
        self.units.push(unit(svc));
    }

    /// Starts every pending service whose dependencies are met (one pass suffices: the units
    /// are in dependency order).
    pub fn start_pending(&mut self, now: Instant, network_ready: bool) -> Vec<Started> {
        let mut out = Vec::new();
        if self.stopping {
            return out;
        }
        for i in 0..self.units.len() {
            if self.units[i].state != State::Pending {
                continue;
            }
            let ready = self.units[i]
                .svc
                .after
                .iter()
                .all(|d| self.dep_started(d, network_ready));
            if ready {
                self.start(i, now, &mut out);
            }
        }
        out
    }

    /// True once no service waits for its first start.
    pub fn all_started(&self) -> bool {
        self.units.iter().all(|u| u.state != State::Pending)
    }

    /// True once no service's readiness is still awaited (each is ready, not required, or
    /// given up on).
    pub fn all_ready(&self) -> bool {
        self.units.iter().all(|u| u.readiness != Readiness::Waiting)
    }

    /// Tries the `ready` checks of running services that wait for them, when a probe is due;
    /// gives up on those past their `ready-timeout`. Returns what changed.
    pub fn check_ready(&mut self, now: Instant) -> Vec<ReadyEvent> {
        let mut out = Vec::new();
        if self.stopping || self.next_probe.is_none_or(|t| now < t) {
            return out;
        }
        let mut waiting = false;
        for u in &mut self.units {
            if u.readiness != Readiness::Waiting {
                continue;
            }
            let Some(first) = u.first_start else {
                // Not started yet (its dependencies): the timeout runs from its start.
                continue;
            };
            if matches!(u.state, State::Running { .. }) {
                let several = u.svc.ready.len() > 1;
                for (check, ok) in u.svc.ready.iter().zip(u.answered.iter_mut()) {
                    if !*ok {
                        *ok = self.spawner.probe(check);
                        if *ok && several {
                            // Which of them came last is what the trace must show.
                            crate::trace::mark(&format!("service {} {check}", u.svc.name));
                        }
                    }
                }
            }
            if u.answered.iter().all(|&a| a) {
                u.readiness = Readiness::Ready;
                crate::trace::mark(&format!("service {} ready", u.svc.name));
                out.push(ReadyEvent::Ready {
                    name: u.svc.name.clone(),
                });
            } else if now.saturating_duration_since(first) >= u.svc.ready_timeout {
                u.readiness = Readiness::GaveUp;
                let missing = u
                    .svc
                    .ready
                    .iter()
                    .zip(&u.answered)
                    .filter(|(_, &a)| !a)
                    .map(|(c, _)| c.to_string())
                    .collect();
                out.push(ReadyEvent::TimedOut {
                    name: u.svc.name.clone(),
                    missing,
                });
            } else {
                waiting = true;
            }
        }
        self.next_probe = waiting.then(|| now + PROBE_INTERVAL);
        out
    }

    /// A child exited; returns false if it was not one of ours.
    pub fn on_exit(&mut self, pid: i32, status: ExitStatus, now: Instant) -> bool {
        let stopping = self.stopping;
        let Some(unit) = self
            .units
            .iter_mut()
            .find(|u| matches!(u.state, State::Running { pid: p, .. } if p == pid))
        else {
            return false;
        };
        let State::Running { since, .. } = unit.state else {
            return false;
        };
        let ran = now.saturating_duration_since(since);
        if stopping {
            crate::info!("service {} stopped ({status})", unit.svc.name);
            unit.state = State::Done;
            return true;
        }
        let restart = match unit.svc.restart {
            Restart::Always => true,
            Restart::OnFailure => !status.success(),
            Restart::Never => false,
        };
        if !restart {
            crate::info!(
                "service {} exited ({status}); not restarted (restart = {:?})",
                unit.svc.name,
                unit.svc.restart
            );
            unit.state = State::Done;
            return true;
        }
        if ran >= STABLE_RUN {
            unit.step = 0;
        }
        let delay = backoff(unit.step);
        unit.step = unit.step.saturating_add(1);
        crate::warn!(
            "service {} exited ({status}) after {:.1} s; restarting in {:.2} s",
            unit.svc.name,
            ran.as_secs_f64(),
            delay.as_secs_f64()
        );
        unit.state = State::Backoff { until: now + delay };
        true
    }

    /// Restarts services whose backoff has elapsed.
    pub fn on_timer(&mut self, now: Instant) -> Vec<Started> {
        let mut out = Vec::new();
        if self.stopping {
            return out;
        }
        for i in 0..self.units.len() {
            if matches!(self.units[i].state, State::Backoff { until } if until <= now) {
                self.start(i, now, &mut out);
            }
        }
        out
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        let probe = self.next_probe.filter(|_| !self.stopping);
        self.units
            .iter()
            .filter_map(|u| match u.state {
                State::Backoff { until } if !self.stopping => Some(until),
                State::Running { .. } if self.stopping => u.kill_at,
                _ => None,
            })
            .chain(probe)
            .min()
    }

    /// Begins shutdown: SIGTERM to every running service, no more restarts. Each gets SIGKILL
    /// from `stop_timer` once its own stop-timeout has passed. Returns the latest such time.
    pub fn stop_all(&mut self, now: Instant) -> Instant {
        self.stopping = true;
        let mut latest = now;
        for u in &mut self.units {
            match u.state {
                State::Running { pid, .. } => {
                    self.spawner.signal(pid, libc::SIGTERM);
                    let at = now + u.svc.stop_timeout;
                    u.kill_at = Some(at);
                    latest = latest.max(at);
                }
                State::Pending | State::Backoff { .. } => u.state = State::Done,
                State::Done => {}
            }
        }
        latest
    }

    /// During shutdown: SIGKILL to services whose stop-timeout has passed.
    pub fn stop_timer(&mut self, now: Instant) {
        for u in &mut self.units {
            if let (State::Running { pid, .. }, Some(at)) = (u.state, u.kill_at) {
                if at <= now {
                    crate::warn!(
                        "service {} did not stop in {} s; killing it",
                        u.svc.name,
                        u.svc.stop_timeout.as_secs()
                    );
                    self.spawner.signal(pid, libc::SIGKILL);
                    u.kill_at = None;
                }
            }
        }
    }

    pub fn running(&self) -> usize {
        self.units
            .iter()
            .filter(|u| matches!(u.state, State::Running { .. }))
            .count()
    }

    /// SIGKILL to every service still running.
    pub fn kill_remaining(&mut self) {
        for u in &mut self.units {
            if let State::Running { pid, .. } = u.state {
                self.spawner.signal(pid, libc::SIGKILL);
                u.kill_at = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::parse_service;

    #[derive(Default)]
    struct Fake {
        next_pid: i32,
        spawned: Vec<(String, i32)>,
        signals: Vec<(i32, i32)>,
        fail: Vec<String>,
        /// Checks that answer (as their Display text), and every probe made.
        answering: Vec<String>,
        probes: Vec<String>,
    }

    impl Spawner for Fake {
        fn spawn(&mut self, svc: &Service) -> io::Result<Spawned> {
            if self.fail.contains(&svc.name) {
                return Err(io::Error::from_raw_os_error(libc::ENOENT));
            }
            self.next_pid += 1;
            let pid = 100 + self.next_pid;
            self.spawned.push((svc.name.clone(), pid));
            Ok(Spawned { pid, output: None })
        }
        fn signal(&mut self, pid: i32, sig: i32) {
            self.signals.push((pid, sig));
        }
        fn probe(&mut self, check: &ReadyCheck) -> bool {
            let c = check.to_string();
            self.probes.push(c.clone());
            self.answering.contains(&c)
        }
    }

    fn svc(name: &str, extra: &str) -> Service {
        parse_service(name, &format!("command = \"/bin/{name}\"\n{extra}")).unwrap()
    }

    fn names(f: &Fake) -> Vec<&str> {
        f.spawned.iter().map(|(n, _)| n.as_str()).collect()
    }

    #[test]
    fn starts_in_order_and_waits_for_network() {
        let t0 = Instant::now();
        let mut s = Supervisor::new(
            Fake::default(),
            vec![
                svc("a", ""),
                svc("b", "after = [\"network\"]"),
                svc("c", "after = [\"b\"]"),
            ],
        );
        s.start_pending(t0, false);
        assert_eq!(names(&s.spawner), vec!["a"]);
        assert!(!s.all_started());
        let started = s.start_pending(t0, true);
        assert_eq!(
            started.iter().map(|x| x.name.as_str()).collect::<Vec<_>>(),
            vec!["b", "c"]
        );
        assert_eq!(names(&s.spawner), vec!["a", "b", "c"]);
        assert!(s.all_started());
        // Nothing starts twice.
        assert!(s.start_pending(t0, true).is_empty());
    }

    #[test]
    fn crash_loop_backs_off_exponentially_and_resets_after_a_stable_run() {
        let t0 = Instant::now();
        let mut s = Supervisor::new(Fake::default(), vec![svc("crash", "")]);
        s.start_pending(t0, true);
        let mut now = t0;
        let mut delays = Vec::new();
        for _ in 0..9 {
            let pid = s.spawner.spawned.last().unwrap().1;
            assert!(s.on_exit(pid, ExitStatus::Exited(1), now));
            let d = s.next_deadline().unwrap();
            delays.push(d - now);
            // Not before the deadline...
            assert!(s.on_timer(d - Duration::from_millis(1)).is_empty());
            // ...but at it.
            assert_eq!(s.on_timer(d).len(), 1);
            now = d;
        }
        let ms: Vec<u128> = delays.iter().map(|d| d.as_millis()).collect();
        assert_eq!(
            ms,
            vec![250, 500, 1000, 2000, 4000, 8000, 16000, 30000, 30000]
        );
        assert_eq!(s.spawner.spawned.len(), 10);
        // A run of 10 s resets the backoff.
        let pid = s.spawner.spawned.last().unwrap().1;
        s.on_exit(pid, ExitStatus::Signaled(9), now + STABLE_RUN);
        assert_eq!(
            s.next_deadline().unwrap() - (now + STABLE_RUN),
            BACKOFF_BASE
        );
    }

    #[test]
    fn restart_policies() {
        let t0 = Instant::now();
        let mut s = Supervisor::new(
            Fake::default(),
            vec![
                svc("never", "restart = \"never\""),
                svc("onf", "restart = \"on-failure\""),
            ],
        );
        s.start_pending(t0, true);
        let (p_never, p_onf) = (s.spawner.spawned[0].1, s.spawner.spawned[1].1);
        assert!(s.on_exit(p_never, ExitStatus::Exited(1), t0));
        assert_eq!(s.units[0].state, State::Done);
        assert!(s.on_exit(p_onf, ExitStatus::Exited(2), t0));
        assert!(matches!(s.units[1].state, State::Backoff { .. }));
        let started = s.on_timer(t0 + Duration::from_secs(1));
        assert_eq!(started.len(), 1);
        let p2 = started[0].pid;
        assert!(s.on_exit(p2, ExitStatus::Exited(0), t0 + Duration::from_secs(2)));
        assert_eq!(s.units[1].state, State::Done);
        assert_eq!(s.next_deadline(), None);
        // Unknown pids (orphans reaped by init) are not ours.
        assert!(!s.on_exit(4242, ExitStatus::Exited(0), t0));
    }

    #[test]
    fn spawn_failure_retries_and_does_not_block_dependents() {
        let t0 = Instant::now();
        let mut f = Fake::default();
        f.fail.push("missing".into());
        let mut s = Supervisor::new(
            f,
            vec![svc("missing", ""), svc("after", "after = [\"missing\"]")],
        );
        s.start_pending(t0, true);
        assert_eq!(names(&s.spawner), vec!["after"]);
        assert!(s.all_started());
        assert_eq!(s.next_deadline(), Some(t0 + BACKOFF_BASE));
        assert!(s.on_timer(t0 + BACKOFF_BASE).is_empty());
        assert_eq!(s.units[0].starts, 2);
        assert_eq!(s.next_deadline(), Some(t0 + BACKOFF_BASE + backoff(1)));
    }

    #[test]
    fn shutdown_terms_then_kills_each_at_its_own_timeout_and_never_restarts() {
        let t0 = Instant::now();
        let mut s = Supervisor::new(
            Fake::default(),
            vec![
                svc("a", "stop-timeout = 2"),
                svc("b", "stop-timeout = 5"),
                svc("c", ""),
                svc("d", "stop-timeout = 1"),
            ],
        );
        s.start_pending(t0, true);
        let pids: Vec<i32> = s.spawner.spawned.iter().map(|x| x.1).collect();
        // c crashed just before shutdown and waits in backoff.
        s.on_exit(pids[2], ExitStatus::Exited(1), t0);
        let latest = s.stop_all(t0);
        assert_eq!(latest, t0 + Duration::from_secs(5));
        assert_eq!(
            s.spawner.signals,
            vec![
                (pids[0], libc::SIGTERM),
                (pids[1], libc::SIGTERM),
                (pids[3], libc::SIGTERM)
            ]
        );
        assert_eq!(s.running(), 3);
        assert!(s.on_exit(pids[0], ExitStatus::Signaled(15), t0));
        assert_eq!(s.running(), 2);
        // d ignores SIGTERM: killed after its own 1 s, not b's 5 s.
        assert_eq!(s.next_deadline(), Some(t0 + Duration::from_secs(1)));
        s.stop_timer(t0 + Duration::from_secs(1));
        assert_eq!(s.spawner.signals.last(), Some(&(pids[3], libc::SIGKILL)));
        assert_eq!(s.next_deadline(), Some(t0 + Duration::from_secs(5)));
        assert!(s.on_exit(
            pids[3],
            ExitStatus::Signaled(9),
            t0 + Duration::from_secs(1)
        ));
        // No restarts while stopping.
        assert!(s.on_timer(t0 + Duration::from_secs(60)).is_empty());
        assert!(s.start_pending(t0, true).is_empty());
        s.kill_remaining();
        assert_eq!(s.spawner.signals.last(), Some(&(pids[1], libc::SIGKILL)));
        assert_eq!(s.spawner.spawned.len(), 4);
    }

    #[test]
    fn services_added_later_start_on_the_next_pass() {
        let t0 = Instant::now();
        let mut s = Supervisor::new(Fake::default(), vec![svc("a", "")]);
        s.start_pending(t0, true);
        s.add(svc("shell", ""));
        assert!(!s.all_started());
        assert_eq!(s.start_pending(t0, true).len(), 1);
        assert_eq!(names(&s.spawner), vec!["a", "shell"]);
    }

    #[test]
    fn readiness_waits_for_every_check_then_reports_once() {
        let t0 = Instant::now();
        let mut s = Supervisor::new(
            Fake::default(),
            vec![
                svc("plain", ""),
                svc("eng", "ready = [\"unix:/run/e.sock\", \"tcp:2376\"]"),
            ],
        );
        // Nothing to wait for before anything starts... but eng is required.
        assert!(!s.all_ready());
        assert_eq!(s.next_deadline(), None);
        s.start_pending(t0, true);
        assert_eq!(s.next_deadline(), Some(t0));
        assert!(s.check_ready(t0).is_empty());
        assert_eq!(s.spawner.probes, vec!["unix:/run/e.sock", "tcp:2376"]);
        // Not before the next probe is due.
        assert_eq!(s.next_deadline(), Some(t0 + PROBE_INTERVAL));
        assert!(s.check_ready(t0 + PROBE_INTERVAL / 2).is_empty());
        assert_eq!(s.spawner.probes.len(), 2);
        // The socket answers first; it is not asked again.
        s.spawner.answering.push("unix:/run/e.sock".into());
        let t1 = t0 + PROBE_INTERVAL;
        assert!(s.check_ready(t1).is_empty());
        s.spawner.answering.push("tcp:2376".into());
        let t2 = t1 + PROBE_INTERVAL;
        assert_eq!(
            s.check_ready(t2),
            vec![ReadyEvent::Ready { name: "eng".into() }]
        );
        assert_eq!(
            s.spawner.probes,
            vec![
                "unix:/run/e.sock",
                "tcp:2376",
                "unix:/run/e.sock",
                "tcp:2376",
                "tcp:2376"
            ]
        );
        assert!(s.all_ready());
        assert_eq!(s.units[1].readiness, Readiness::Ready);
        assert_eq!(s.units[0].readiness, Readiness::NotRequired);
        // No more probes, no more deadlines.
        assert_eq!(s.next_deadline(), None);
        assert!(s.check_ready(t2 + Duration::from_secs(1)).is_empty());
        assert_eq!(s.spawner.probes.len(), 5);
    }

    #[test]
    fn readiness_gives_up_at_its_timeout_and_does_not_probe_a_service_in_backoff() {
        let t0 = Instant::now();
        let mut s = Supervisor::new(
            Fake::default(),
            vec![svc(
                "eng",
                "ready = [\"tcp:1\", \"tcp:2\"]\nready-timeout = 2",
            )],
        );
        s.spawner.answering.push("tcp:1".into());
        s.start_pending(t0, true);
        assert!(s.check_ready(t0).is_empty());
        let pid = s.spawner.spawned[0].1;
        s.on_exit(pid, ExitStatus::Exited(1), t0);
        let probes = s.spawner.probes.len();
        assert!(s.check_ready(t0 + PROBE_INTERVAL).is_empty());
        assert_eq!(s.spawner.probes.len(), probes, "probed while in backoff");
        let t = t0 + Duration::from_secs(2);
        assert_eq!(
            s.check_ready(t),
            vec![ReadyEvent::TimedOut {
                name: "eng".into(),
                missing: vec!["tcp:2".into()]
            }]
        );
        assert_eq!(s.units[0].readiness, Readiness::GaveUp);
        assert!(s.all_ready());
    }
}
