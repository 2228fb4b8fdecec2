//! A sandbox's limits and figures (the task API's `update` and `stats`).
//!
//! The sandbox's VM is one QEMU process on the host, put into cgroups of its own by
//! axion-vmd's cgroup code ([`vm_clone::cgroup`], directory `axion-shim/<sandbox>` beside
//! axion-vmd's), bounded by the sum of its containers' `linux.resources` (memory limit,
//! CPU quota): a container without a limit adds none, so a pod's pause container adds
//! none. `update` replaces one container's share and applies the new sum at once. The
//! guest's RAM stays the template's: a memory limit bounds the whole QEMU process.
//!
//! `stats` answers with cgroup v1 `Metrics` (what `ctr task metrics` and the CRI read):
//! `memory.usage` (usage, limit) and `cpu` (time, throttling) are the QEMU process's on
//! the host, what the node pays for the sandbox; `memory.rss` and `pids.current` are the
//! container's inside its VM, the guest engine's figures.

use super::{lock, rpc, Ctr, Service};
use crate::spec::Resources;
use containerd_shim::api;
use containerd_shim::protos::cgroups::metrics::{
    CPUStat, CPUUsage, MemoryEntry, MemoryStat, Metrics, PidsStat, Throttle,
};
use containerd_shim::protos::protobuf::MessageField;
use containerd_shim::protos::ttrpc::Code;
use containerd_shim::TtrpcResult;
use docker_api::ops::ContainerStats;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use vm_clone::cgroup::{self, Cgroups, Limits};

/// The shim's cgroups' directory, beside axion-vmd's `axion-vmd`.
const PARENT: &str = "axion-shim";

#[derive(Default)]
pub(super) struct SandboxLimits {
    /// Each container's limits, by container id (only those that have some).
    each: HashMap<String, Limits>,
    /// The cgroup directories the VM's QEMU was put in.
    dirs: Vec<PathBuf>,
    /// The host's layout, found at the first limit (Err: why none can be applied).
    cgroups: Option<Result<Cgroups, String>>,
}

/// The limits of a sandbox whose containers have `each`: memory added up, CPU quotas
/// added up at a 100 ms period.
pub(super) fn total(each: impl Iterator<Item = Limits>) -> Limits {
    let mut t = Limits::default();
    for l in each {
        if let Some(m) = l.memory {
            t.memory = Some(t.memory.unwrap_or(0).saturating_add(m));
        }
        if let Some((q, p)) = l.cpu {
            let q = q.saturating_mul(100_000) / p.max(1);
            let (sum, _) = t.cpu.unwrap_or((0, 100_000));
            t.cpu = Some((sum.saturating_add(q).max(1_000), 100_000));
        }
    }
    t
}

impl Service {
    /// Sets container `id`'s limits (empty: it has none, or is gone) and applies the
    /// sandbox's new sum to its VM's QEMU `pid`; `name` is the sandbox's cgroup name.
    pub(super) fn set_limits(
        &self,
        id: &str,
        limits: Limits,
        name: &str,
        pid: u32,
    ) -> Result<(), String> {
        let mut g = lock(&self.0.limits);
        let before = total(g.each.values().copied());
        if limits.is_empty() {
            g.each.remove(id);
        } else {
            g.each.insert(id.to_string(), limits);
        }
        let sum = total(g.each.values().copied());
        if sum == before || pid == 0 {
            return Ok(());
        }
        let cgroups = g
            .cgroups
            .get_or_insert_with(|| Cgroups::setup(PARENT))
            .clone()?;
        // A limit no container asks for any more is lifted before the new sum is set.
        cgroup::unlimit(&g.dirs);
        if sum.is_empty() {
            return Ok(());
        }
        let made = cgroups
            .apply(name, pid, &sum)
            .map_err(|e| format!("limiting the sandbox's VM: {e}"))?;
        for d in made {
            if !g.dirs.contains(&d) {
                g.dirs.push(d);
            }
        }
        Ok(())
    }

    /// After the VM is gone: its cgroups.
    pub(super) fn remove_cgroups(&self) {
        let dirs = std::mem::take(&mut lock(&self.0.limits).dirs);
        cgroup::remove(&dirs);
    }

    /// `update`: the task's new `linux.resources` (OCI JSON, as containerd sends them).
    pub(super) async fn update_task(&self, req: &api::UpdateTaskRequest) -> TtrpcResult<()> {
        let c = self.get(&req.id)?;
        let r: Resources = serde_json::from_slice(&req.resources.value).map_err(|e| {
            rpc(
                Code::INVALID_ARGUMENT,
                format!("the update's resources: {e}"),
            )
        })?;
        self.set_limits(&c.id, r.limits(), &self.cgroup_name(&c), c.pid)
            .map_err(|e| rpc(Code::FAILED_PRECONDITION, e))
    }

    /// The sandbox's cgroup name: its directory's (short, unique per namespace and id).
    pub(super) fn cgroup_name(&self, c: &Ctr) -> String {
        c.sandbox_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// `stats`: the VM's host figures and the container's guest figures.
    pub(super) async fn stats_of(&self, id: &str) -> TtrpcResult<api::StatsResponse> {
        let c = self.get(id)?;
        let dirs = lock(&self.0.limits).dirs.clone();
        let host = cgroup::usage(&dirs);
        let (user, kernel) = qemu_cpu_ns(c.pid).unwrap_or((0, 0));
        let mut m = Metrics::new();
        let (usage, limit) = match host.memory {
            Some((u, l)) => (u, l.unwrap_or(0)),
            None => (qemu_rss(c.pid).unwrap_or(0), 0),
        };
        let mut mem = MemoryStat {
            usage: MessageField::some(MemoryEntry {
                usage,
                limit,
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut pids = PidsStat::new();
        if !c.pause {
            let path = format!("/containers/{}/stats", c.gid);
            let q = [("stream", "false".to_string()), ("one-shot", "true".into())];
            match c.guest.get_json::<ContainerStats>("stats", &path, &q).await {
                Ok(s) => {
                    mem.rss = s.memory_stats.usage.unwrap_or(0);
                    mem.total_rss = mem.rss;
                    pids.current = s.pids_stats.current.unwrap_or(0);
                    pids.limit = s.pids_stats.limit.unwrap_or(0);
                }
                Err(e) => log::warn!("{}: the guest's stats: {}", c.id, e.message),
            }
        }
        m.memory = MessageField::some(mem);
        let (periods, throttled_periods, throttled_time) = host.throttling.unwrap_or_default();
        m.cpu = MessageField::some(CPUStat {
            usage: MessageField::some(CPUUsage {
                total: user + kernel,
                user,
                kernel,
                ..Default::default()
            }),
            throttling: MessageField::some(Throttle {
                periods,
                throttled_periods,
                throttled_time,
                ..Default::default()
            }),
            ..Default::default()
        });
        m.pids = MessageField::some(pids);
        let any = containerd_shim::util::convert_to_any(Box::new(m))
            .map_err(|e| rpc(Code::INTERNAL, format!("encoding the metrics: {e}")))?;
        Ok(api::StatsResponse {
            stats: MessageField::some(any),
            ..Default::default()
        })
    }
}

/// After a shim died: the cgroups of its sandbox `dir` (its QEMU was killed first).
pub(super) fn remove_leftover(dir: &Path) {
    let Some(name) = dir.file_name() else {
        return;
    };
    if let Ok(cg) = Cgroups::setup(PARENT) {
        cgroup::remove(&cg.dirs_of(&name.to_string_lossy()));
    }
}

/// QEMU's CPU time on the host, (user, kernel) in nanoseconds, from `/proc/PID/stat`.
fn qemu_cpu_ns(pid: u32) -> Option<(u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (user, kernel) = cpu_ticks(&s)?;
    // SAFETY: sysconf reads a constant of the system; no memory is involved.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let ns = 1_000_000_000 / u64::try_from(hz).ok().filter(|&h| h > 0)?;
    Some((user * ns, kernel * ns))
}

/// utime and stime (fields 14 and 15) of a `/proc/PID/stat` line; the command name in
/// parentheses may hold spaces, so the count starts after its closing one.
fn cpu_ticks(stat: &str) -> Option<(u64, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut f = rest.split_whitespace().skip(11);
    Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
}

/// QEMU's resident memory (bytes) when it has no memory cgroup.
fn qemu_rss(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb = s.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    kb.trim()
        .trim_end_matches("kB")
        .trim()
        .parse::<u64>()
        .ok()
        .map(|k| k * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sandbox_adds_up_its_containers_limits() {
        let a = Limits {
            memory: Some(1 << 30),
            cpu: Some((50_000, 100_000)),
        };
        let b = Limits {
            memory: Some(1 << 29),
            cpu: Some((10_000, 50_000)),
        };
        let t = total([a, b, Limits::default()].into_iter());
        assert_eq!(t.memory, Some(3 << 29));
        assert_eq!(t.cpu, Some((70_000, 100_000)));
        assert!(total(std::iter::empty()).is_empty());
        let only_cpu = total(
            [Limits {
                memory: None,
                cpu: Some((20_000, 100_000)),
            }]
            .into_iter(),
        );
        assert_eq!(only_cpu.memory, None);
    }

    #[test]
    fn cpu_ticks_of_a_stat_line() {
        let s = "4242 (qemu-system-x86) S 1 2 3 0 -1 4194560 100 0 0 0 731 152 0 0 20 0 3 0";
        assert_eq!(cpu_ticks(s), Some((731, 152)));
        assert_eq!(
            cpu_ticks("4242 (a) b) S 1 2 3 0 -1 0 0 0 0 0 7 8"),
            Some((7, 8))
        );
        assert_eq!(cpu_ticks("junk"), None);
        assert_eq!(cpu_ticks("1 (x) S"), None);
    }
}
