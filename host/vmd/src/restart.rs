//! Restart policies (`--restart no|on-failure[:N]|always|unless-stopped`), as dockerd's
//! restart manager applies them: after an exit the container is started again (on a new
//! VM, with its files: boot.rs) after a delay that starts at 100 ms and doubles with each
//! restart up to a minute, back to 100 ms once a run lasted 10 s. `docker stop` and `kill`
//! mark the container stopped by hand, after which `unless-stopped` leaves it; a `stop` also
//! cancels any restart (a pending one too) until the container is started again. When the
//! daemon starts, `always` containers (even stopped ones, as dockerd) and `unless-stopped`
//! ones not stopped by hand are started again. `RestartCount` counts the policy's restarts
//! since the last `docker start`.

use docker_api::types::RestartPolicy;
use docker_api::{ApiError, ApiResult};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    No,
    Always,
    UnlessStopped,
    /// With its maximum retry count (0: no maximum).
    OnFailure(i64),
}

/// The first delay, and the longest.
const FIRST: Duration = Duration::from_millis(100);
const LONGEST: Duration = Duration::from_secs(60);
/// A run at least this long resets the delay.
const RESET_AFTER: Duration = Duration::from_secs(10);

impl Policy {
    /// The request's policy; dockerd's 400s for what it refuses.
    pub fn of(p: &RestartPolicy, auto_remove: bool) -> ApiResult<Policy> {
        let policy = match p.name.as_str() {
            "" | "no" => Policy::No,
            "always" => Policy::Always,
            "unless-stopped" => Policy::UnlessStopped,
            "on-failure" => {
                if p.maximum_retry_count < 0 {
                    return Err(ApiError::bad_request(
                        "invalid restart policy: maximum retry count cannot be negative",
                    ));
                }
                Policy::OnFailure(p.maximum_retry_count)
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "invalid restart policy: unknown policy '{other}'; use one of 'no', \
                     'always', 'on-failure' or 'unless-stopped'"
                )))
            }
        };
        if p.maximum_retry_count != 0 && !matches!(policy, Policy::OnFailure(_)) {
            return Err(ApiError::bad_request(format!(
                "invalid restart policy: maximum retry count can only be used with \
                 'on-failure', not '{}'",
                p.name
            )));
        }
        if auto_remove && policy != Policy::No {
            return Err(ApiError::bad_request(
                "can't create 'AutoRemove' container with restart policy",
            ));
        }
        Ok(policy)
    }

    /// Whether a container that exited with `code` starts again (`restarts`: how many times
    /// the policy restarted it so far; `by_hand`: `docker kill` or `stop` ended it). As
    /// dockerd's: `always` and `on-failure` restart after a `docker kill` too; a
    /// `docker stop` cancels any restart (the caller's part).
    pub fn restarts_after(self, code: i64, by_hand: bool, restarts: i64) -> bool {
        match self {
            Policy::No => false,
            Policy::Always => true,
            Policy::UnlessStopped => !by_hand,
            Policy::OnFailure(max) => code != 0 && (max == 0 || restarts < max),
        }
    }

    /// Whether the daemon starts the exited container when it starts.
    pub fn at_daemon_start(self, by_hand: bool) -> bool {
        match self {
            Policy::Always => true,
            Policy::UnlessStopped => !by_hand,
            Policy::No | Policy::OnFailure(_) => false,
        }
    }
}

/// The delay before the next restart, after `last` (zero before the first) and a run of
/// `ran`.
pub fn next_delay(last: Duration, ran: Duration) -> Duration {
    if ran >= RESET_AFTER || last.is_zero() {
        FIRST
    } else {
        (last * 2).min(LONGEST)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(name: &str, max: i64) -> RestartPolicy {
        RestartPolicy {
            name: name.into(),
            maximum_retry_count: max,
        }
    }

    #[test]
    fn policies_are_read_as_dockerd_does() {
        assert_eq!(Policy::of(&p("", 0), true).unwrap(), Policy::No);
        assert_eq!(Policy::of(&p("no", 0), false).unwrap(), Policy::No);
        assert_eq!(Policy::of(&p("always", 0), false).unwrap(), Policy::Always);
        assert_eq!(
            Policy::of(&p("on-failure", 3), false).unwrap(),
            Policy::OnFailure(3)
        );
        for (bad, why) in [
            (p("sometimes", 0), "unknown policy"),
            (p("always", 2), "only be used with 'on-failure'"),
            (p("on-failure", -1), "negative"),
        ] {
            let e = Policy::of(&bad, false).unwrap_err();
            assert_eq!(e.status.as_u16(), 400);
            assert!(e.message.contains(why), "{}", e.message);
        }
        let e = Policy::of(&p("always", 0), true).unwrap_err();
        assert!(e.message.contains("AutoRemove"), "{}", e.message);
    }

    #[test]
    fn which_exits_restart() {
        let on = Policy::OnFailure(2);
        assert!(on.restarts_after(1, false, 0) && on.restarts_after(1, false, 1));
        assert!(!on.restarts_after(1, false, 2), "retries used up");
        assert!(!on.restarts_after(0, false, 0), "a success is no failure");
        assert!(Policy::OnFailure(0).restarts_after(1, false, 1000));
        assert!(Policy::Always.restarts_after(0, false, 99));
        assert!(Policy::Always.restarts_after(137, true, 0), "docker kill");
        assert!(!Policy::UnlessStopped.restarts_after(1, true, 0));
        assert!(!Policy::No.restarts_after(1, false, 0));
        assert!(Policy::Always.at_daemon_start(true));
        assert!(Policy::UnlessStopped.at_daemon_start(false));
        assert!(!Policy::UnlessStopped.at_daemon_start(true));
        assert!(!Policy::OnFailure(0).at_daemon_start(false));
    }

    #[test]
    fn a_stop_cancels_and_a_start_begins_again() {
        let t = Track::default();
        let quick = Duration::from_millis(10);
        assert_eq!(t.after_exit(Policy::Always, 0, quick), Some(FIRST));
        assert_eq!(
            t.after_exit(Policy::Always, 0, quick),
            Some(FIRST * 2),
            "doubled"
        );
        assert_eq!(t.count.load(SeqCst), 2);
        assert!(t.stop(), "the pending restart is cancelled");
        assert_eq!(t.after_exit(Policy::Always, 0, quick), None);
        t.user_start();
        assert_eq!(t.count.load(SeqCst), 0);
        assert_eq!(t.after_exit(Policy::OnFailure(1), 1, quick), Some(FIRST));
        assert_eq!(
            t.after_exit(Policy::OnFailure(1), 1, quick),
            None,
            "1 retry"
        );
    }

    #[test]
    fn backoff_doubles_and_resets_after_ten_seconds_up() {
        let quick = Duration::from_millis(50);
        let mut d = Duration::ZERO;
        let mut seen = Vec::new();
        for _ in 0..12 {
            d = next_delay(d, quick);
            seen.push(d.as_millis());
        }
        assert_eq!(&seen[..4], [100, 200, 400, 800]);
        assert_eq!(*seen.last().unwrap(), 60_000, "at most a minute");
        assert_eq!(next_delay(d, Duration::from_secs(10)), FIRST);
    }
}

/// A container's restart state (see the module doc).
#[derive(Debug, Default)]
pub struct Track {
    /// `docker stop` or `kill` ended it (kept in its record).
    pub by_hand: std::sync::atomic::AtomicBool,
    /// `docker stop` (or a failed start): no restart until the next `docker start`.
    pub cancelled: std::sync::atomic::AtomicBool,
    /// Restarts by the policy since the last `docker start` (`RestartCount`).
    pub count: std::sync::atomic::AtomicI64,
    /// The last delay, in milliseconds.
    pub delay_ms: std::sync::atomic::AtomicU64,
    /// A restart is waiting for its delay or under way (`restarting`).
    pub pending: std::sync::atomic::AtomicBool,
}

impl Track {
    pub fn new(by_hand: bool, count: i64) -> Track {
        let t = Track::default();
        t.by_hand.store(by_hand, SeqCst);
        t.count.store(count, SeqCst);
        t
    }

    /// A `docker start` by the user: a new run of the policy.
    pub fn user_start(&self) {
        self.by_hand.store(false, SeqCst);
        self.cancelled.store(false, SeqCst);
        self.pending.store(false, SeqCst);
        self.count.store(0, SeqCst);
        self.delay_ms.store(0, SeqCst);
    }

    /// `docker stop`: the container stays down; true if a pending restart was cancelled.
    pub fn stop(&self) -> bool {
        self.by_hand.store(true, SeqCst);
        self.cancelled.store(true, SeqCst);
        self.pending.swap(false, SeqCst)
    }

    /// After an exit: the delay before the restart, if the policy restarts the container
    /// (counted, and `pending` set).
    pub fn after_exit(&self, policy: Policy, code: i64, ran: Duration) -> Option<Duration> {
        if self.cancelled.load(SeqCst)
            || !policy.restarts_after(code, self.by_hand.load(SeqCst), self.count.load(SeqCst))
        {
            return None;
        }
        let d = next_delay(Duration::from_millis(self.delay_ms.load(SeqCst)), ran);
        self.delay_ms.store(d.as_millis() as u64, SeqCst);
        self.count.fetch_add(1, SeqCst);
        self.pending.store(true, SeqCst);
        Some(d)
    }
}

use std::sync::atomic::Ordering::SeqCst;
