//! `docker update`: a container's memory and CPU limits and its restart policy. The limits
//! are its QEMU's cgroup ([`crate::cgroup`]), changed at once while the VM runs and applied
//! to every later VM of the container; the guest's RAM size is the template's and does not
//! change (a warning says so). What a VM-per-container host cannot change is refused with
//! a 400 naming it.

use super::Api;
use crate::*;
use docker_api::ops::{UpdateRequest, UpdateResponse};

/// What `docker update` may change here, applied to `hc`; Err names what it may not.
pub(crate) fn apply(hc: &mut HostConfig, u: &UpdateRequest) -> ApiResult<()> {
    // The CLI sends every resource field, zero when not given (as dockerd reads them).
    let set = |v: Option<i64>| v.filter(|&v| v != 0);
    let refused: Vec<&str> = [
        ("--memory-reservation", set(u.memory_reservation).is_some()),
        ("--cpu-shares", set(u.cpu_shares).is_some()),
        (
            "--cpuset-cpus",
            u.cpuset_cpus.as_deref().is_some_and(|s| !s.is_empty()),
        ),
        (
            "--cpuset-mems",
            u.cpuset_mems.as_deref().is_some_and(|s| !s.is_empty()),
        ),
        ("--pids-limit", set(u.pids_limit).is_some()),
        ("--blkio-weight", u.blkio_weight.is_some_and(|w| w != 0)),
        ("--kernel-memory", set(u.kernel_memory).is_some()),
    ]
    .into_iter()
    .filter_map(|(n, on)| on.then_some(n))
    .collect();
    if !refused.is_empty() {
        return Err(ApiError::bad_request(format!(
            "cannot update {}: in VM-per-container mode a container's limits are its VM's \
             QEMU cgroup, and only --memory, --cpus, --cpu-quota, --cpu-period and --restart \
             can be updated",
            refused.join(", ")
        )));
    }
    if let Some(m) = set(u.memory) {
        if m < 6 << 20 {
            return Err(ApiError::bad_request("Minimum memory limit allowed is 6MB"));
        }
        hc.memory = m;
    }
    if let Some(n) = set(u.nano_cpus) {
        if set(u.cpu_quota).is_some() {
            return Err(ApiError::bad_request(
                "Conflicting options: Nano CPUs and CPU Quota cannot both be set",
            ));
        }
        hc.nano_cpus = n;
        hc.cpu_quota = 0;
    }
    if let Some(q) = set(u.cpu_quota) {
        hc.cpu_quota = q;
        hc.nano_cpus = 0;
    }
    if let Some(p) = set(u.cpu_period) {
        hc.cpu_period = p;
    }
    if let Some(rp) = u.restart_policy.as_ref().filter(|rp| !rp.name.is_empty()) {
        if hc.auto_remove && !matches!(rp.name.as_str(), "no") {
            return Err(ApiError::bad_request(
                "Restart policy cannot be updated because AutoRemove is enabled for the container",
            ));
        }
        restart::Policy::of(rp, false)?;
        hc.restart_policy = rp.clone();
    }
    Ok(())
}

impl Api {
    pub(super) async fn update(&self, id: &str, u: UpdateRequest) -> ApiResult<UpdateResponse> {
        let c = self.get(id)?;
        if c.phase() == Phase::Removed {
            return Err(ApiError::conflict(format!(
                "container {} is being removed",
                c.short()
            )));
        }
        let mut hc = c.host_config();
        apply(&mut hc, &u)?;
        let mut warnings = self.limit_warnings(&hc);
        let ram = (self.opts.memory_mib as i64) << 20;
        if set_to(u.memory) && hc.memory > ram {
            warnings.push(format!(
                "the VM's RAM stays {} MiB (the template's; it cannot change while it runs or \
                 for a new clone): a memory limit above it gives the container no more memory",
                self.opts.memory_mib
            ));
        }
        // The running VM's QEMU gets the new limits now.
        let pid = {
            let vm = c.vm.lock().unwrap_or_else(PoisonError::into_inner);
            vm.as_ref().map(|v| v.pid())
        };
        let limits = cgroup::Limits::from_host_config(&hc);
        if let (Some(pid), Some(cg)) = (pid, self.cgroups.as_ref()) {
            if !limits.is_empty() {
                let dirs = cg.apply(&c.id[..12], pid, &limits).map_err(|e| {
                    ApiError::internal(format!(
                        "Cannot update container {}: the VM's cgroup: {e}",
                        c.short()
                    ))
                })?;
                let mut have = c.cgroup.lock().unwrap_or_else(PoisonError::into_inner);
                for d in dirs {
                    if !have.contains(&d) {
                        have.push(d);
                    }
                }
            }
        }
        *c.hc.lock().unwrap_or_else(PoisonError::into_inner) = hc;
        c.save();
        c.event(&self.events, "update", &[]);
        Ok(UpdateResponse { warnings })
    }
}

fn set_to(v: Option<i64>) -> bool {
    v.is_some_and(|v| v != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_update_changes_and_refuses() {
        let mut hc = HostConfig {
            memory: 256 << 20,
            cpu_quota: 50_000,
            ..Default::default()
        };
        let u = UpdateRequest {
            memory: Some(300 << 20),
            nano_cpus: Some(250_000_000),
            cpu_shares: Some(0),
            restart_policy: Some(docker_api::types::RestartPolicy {
                name: "on-failure".into(),
                maximum_retry_count: 3,
            }),
            ..Default::default()
        };
        apply(&mut hc, &u).unwrap();
        assert_eq!(
            (hc.memory, hc.nano_cpus, hc.cpu_quota),
            (300 << 20, 250_000_000, 0)
        );
        assert_eq!(hc.restart_policy.name, "on-failure");
        let e = apply(
            &mut hc,
            &UpdateRequest {
                cpuset_cpus: Some("0".into()),
                pids_limit: Some(10),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert_eq!(e.status.as_u16(), 400);
        assert!(
            e.message.contains("--cpuset-cpus, --pids-limit"),
            "{}",
            e.message
        );
        hc.auto_remove = true;
        let e = apply(
            &mut hc,
            &UpdateRequest {
                restart_policy: Some(docker_api::types::RestartPolicy {
                    name: "always".into(),
                    maximum_retry_count: 0,
                }),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(e.message.contains("AutoRemove"), "{}", e.message);
    }
}
