//! Health checks (`HEALTHCHECK` of the image, `--health-*` of the run): while a container
//! runs, its probe runs as an exec session every interval; `State.Health` keeps the status
//! (starting, healthy, unhealthy), the failing streak and the last five results, and a
//! change of status is a `health_status: ...` event, as in dockerd.

use super::*;
use crate::containers::Status;
use docker_api::time::rfc3339;
use docker_api::ExecBackend;
use std::time::Duration;

const SECOND: i64 = 1_000_000_000;
/// dockerd's defaults.
const DEFAULT_INTERVAL: i64 = 30 * SECOND;
const DEFAULT_TIMEOUT: i64 = 30 * SECOND;
const DEFAULT_START_INTERVAL: i64 = 5 * SECOND;
const DEFAULT_RETRIES: i64 = 3;
/// Results kept in `State.Health.Log`, and the most of a probe's output kept.
const KEEP_RESULTS: usize = 5;
const MAX_OUTPUT: usize = 4096;

/// The check of a container with the image's as the base: the run's fields override, a
/// zero field inherits, `Test: ["NONE"]` disables.
pub(super) fn merge(
    run: Option<&HealthConfig>,
    image: Option<&HealthConfig>,
) -> ApiResult<Option<HealthConfig>> {
    let mut h = image.cloned().unwrap_or_default();
    if let Some(r) = run {
        if r.test.as_ref().is_some_and(|t| !t.is_empty()) {
            h.test = r.test.clone();
        }
        for (mine, theirs) in [
            (&mut h.interval, r.interval),
            (&mut h.timeout, r.timeout),
            (&mut h.start_period, r.start_period),
            (&mut h.start_interval, r.start_interval),
            (&mut h.retries, r.retries),
        ] {
            if theirs != 0 {
                *mine = theirs;
            }
        }
    }
    if h.test.is_none() && h == HealthConfig::default() {
        return Ok(None);
    }
    for (name, v) in [
        ("Interval", h.interval),
        ("Timeout", h.timeout),
        ("StartPeriod", h.start_period),
        ("StartInterval", h.start_interval),
    ] {
        if v != 0 && v < 1_000_000 {
            return Err(ApiError::bad_request(format!(
                "{name} in Healthcheck cannot be less than 1ms"
            )));
        }
    }
    if h.retries < 0 {
        return Err(ApiError::bad_request(
            "Retries in Healthcheck cannot be negative",
        ));
    }
    match h
        .test
        .as_deref()
        .and_then(|t| t.first())
        .map(String::as_str)
    {
        None | Some("NONE") | Some("CMD") | Some("CMD-SHELL") => {}
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "unknown health check type {other:?} (CMD, CMD-SHELL or NONE)"
            )))
        }
    }
    Ok(Some(h))
}

/// The probe's command line, None when the check is disabled or empty.
fn probe_cmd(h: &HealthConfig) -> Option<Vec<String>> {
    let t = h.test.as_ref()?;
    match t.first().map(String::as_str) {
        Some("CMD") if t.len() > 1 => Some(t[1..].to_vec()),
        Some("CMD-SHELL") if t.len() > 1 => {
            Some(vec!["/bin/sh".into(), "-c".into(), t[1..].join(" ")])
        }
        _ => None,
    }
}

fn or(v: i64, default: i64) -> Duration {
    Duration::from_nanos(if v > 0 { v } else { default } as u64)
}

impl Engine {
    /// Starts the health monitor of a container that just started (when it has a check).
    pub(super) fn start_health(&self, c: &Arc<Container>) {
        let r = c.snapshot();
        let Some(h) = r.config.healthcheck.clone() else {
            return;
        };
        let Some(cmd) = probe_cmd(&h) else { return };
        let Some(me) = self.arc() else { return };
        let exits = c.events.borrow().exits;
        c.rec.lock().unwrap().health = Some(Health {
            status: "starting".into(),
            failing_streak: 0,
            log: Vec::new(),
        });
        c.save();
        let c = c.clone();
        tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            let start_period = Duration::from_nanos(h.start_period.max(0) as u64);
            loop {
                let in_start = started.elapsed() < start_period;
                let wait = if in_start && h.start_interval > 0 {
                    or(h.start_interval, DEFAULT_START_INTERVAL)
                } else {
                    or(h.interval, DEFAULT_INTERVAL)
                };
                tokio::time::sleep(wait).await;
                let ev = *c.events.borrow();
                if ev.exits != exits || ev.removed || c.snapshot().status != Status::Running {
                    return;
                }
                if c.snapshot().paused {
                    continue;
                }
                let (code, output, t0) = me.probe(&c, &cmd, or(h.timeout, DEFAULT_TIMEOUT)).await;
                let in_start = started.elapsed() < start_period;
                me.record_health(&c, &h, code, output, t0, in_start);
            }
        });
    }

    /// Runs the probe once: its exit code (-1 when it could not run or timed out), output
    /// and start time.
    async fn probe(&self, c: &Container, cmd: &[String], timeout: Duration) -> (i64, String, i128) {
        let t0 = now_nanos();
        let id = c.snapshot().id;
        let req = ExecCreateRequest {
            attach_stdout: true,
            attach_stderr: true,
            cmd: cmd.to_vec(),
            ..Default::default()
        };
        let eid = match self.exec_create(&id, req).await {
            Ok(e) => e,
            Err(e) => return (-1, e.message, t0),
        };
        let run = async {
            let mut io = self.exec_start(&eid, ExecStartRequest::default()).await?;
            let mut out = Vec::new();
            while let Some(f) = io.output.recv().await {
                if out.len() < MAX_OUTPUT {
                    out.extend_from_slice(&f.data);
                }
            }
            out.truncate(MAX_OUTPUT);
            let code = self.exec_inspect(&eid).await?.exit_code.unwrap_or(-1);
            Ok::<_, ApiError>((code, String::from_utf8_lossy(&out).into_owned()))
        };
        let r = match tokio::time::timeout(timeout, run).await {
            Ok(Ok((code, out))) => (code, out, t0),
            Ok(Err(e)) => (-1, e.message, t0),
            Err(_) => {
                self.kill_exec(&eid);
                (
                    -1,
                    format!(
                        "Health check exceeded timeout ({})",
                        docker_api::time::human(timeout)
                    ),
                    t0,
                )
            }
        };
        self.execs.lock().unwrap().remove(&eid);
        r
    }

    fn record_health(
        &self,
        c: &Container,
        h: &HealthConfig,
        code: i64,
        output: String,
        t0: i128,
        in_start: bool,
    ) {
        let retries = if h.retries > 0 {
            h.retries
        } else {
            DEFAULT_RETRIES
        };
        let (changed, r) = {
            let mut rec = c.rec.lock().unwrap();
            let health = rec.health.get_or_insert_with(Health::default);
            let before = health.status.clone();
            if code == 0 {
                health.status = "healthy".into();
                health.failing_streak = 0;
            } else if !in_start || before != "starting" {
                // Failures in the start period do not count while the check never passed.
                health.failing_streak += 1;
                if health.failing_streak >= retries {
                    health.status = "unhealthy".into();
                }
            }
            health.log.push(HealthLog {
                start: rfc3339(t0),
                end: rfc3339(now_nanos()),
                exit_code: code,
                output,
            });
            let n = health.log.len();
            if n > KEEP_RESULTS {
                health.log.drain(..n - KEEP_RESULTS);
            }
            let changed = (health.status != before).then(|| health.status.clone());
            (changed, rec.clone())
        };
        c.save();
        if let Some(s) = changed {
            crate::events::container(&r, &format!("health_status: {s}"), &[]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hc(test: &[&str], interval: i64, retries: i64) -> HealthConfig {
        HealthConfig {
            test: Some(test.iter().map(|s| s.to_string()).collect()),
            interval,
            retries,
            ..Default::default()
        }
    }

    #[test]
    fn run_overrides_image_and_zero_inherits() {
        let image = hc(&["CMD-SHELL", "true"], 10 * SECOND, 2);
        let run = HealthConfig {
            retries: 5,
            ..Default::default()
        };
        let m = merge(Some(&run), Some(&image)).unwrap().unwrap();
        assert_eq!(m.test, image.test);
        assert_eq!((m.interval, m.retries), (10 * SECOND, 5));
        let off = merge(Some(&hc(&["NONE"], 0, 0)), Some(&image))
            .unwrap()
            .unwrap();
        assert_eq!(probe_cmd(&off), None);
        assert_eq!(merge(None, None).unwrap(), None);
        assert!(merge(Some(&hc(&["CMD", "x"], 10, 0)), None).is_err());
        assert!(merge(Some(&hc(&["BOGUS", "x"], 0, 0)), None).is_err());
    }

    #[test]
    fn probe_commands() {
        assert_eq!(
            probe_cmd(&hc(&["CMD-SHELL", "test -f /ok"], 0, 0)).unwrap(),
            ["/bin/sh", "-c", "test -f /ok"]
        );
        assert_eq!(probe_cmd(&hc(&["CMD", "true"], 0, 0)).unwrap(), ["true"]);
        assert_eq!(probe_cmd(&hc(&["CMD"], 0, 0)), None);
    }
}
