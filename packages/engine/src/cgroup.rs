//! cgroup v2 limits under /sys/fs/cgroup/axion/<id> (memory.max, cpu.max, pids.max) and
//! the device program (crate::devices).
//! Hosts without a unified hierarchy at /sys/fs/cgroup (cgroup v1 or hybrid) run
//! containers without limits; the engine says so in `docker info` warnings.

use docker_api::devices::Rule;
use docker_api::types::HostConfig;
use std::path::{Path, PathBuf};

const ROOT: &str = "/sys/fs/cgroup";

pub fn available() -> bool {
    Path::new(ROOT).join("cgroup.controllers").exists()
}

fn enable(dir: &Path) {
    for c in ["+memory", "+cpu", "+pids", "+cpuset", "+io"] {
        let _ = std::fs::write(dir.join("cgroup.subtree_control"), c);
    }
}

/// Creates the container's cgroup with its limits and its device program (unless
/// `devices` is None: every device); None when cgroup v2 is unavailable.
pub fn create(
    id: &str,
    hc: &HostConfig,
    devices: Option<&[Rule]>,
) -> std::io::Result<Option<PathBuf>> {
    if !available() {
        return Ok(None);
    }
    let root = Path::new(ROOT);
    let parent = root.join("axion");
    enable(root);
    std::fs::create_dir_all(&parent)?;
    enable(&parent);
    let dir = parent.join(id);
    // One left by an engine that died holds its old device program: a fresh one has none.
    let _ = std::fs::remove_dir(&dir);
    std::fs::create_dir_all(&dir)?;
    apply(&dir, hc)?;
    if let Some(rules) = devices {
        crate::devices::bpf::attach(&dir, rules).map_err(std::io::Error::other)?;
    }
    Ok(Some(dir))
}

/// Writes the limits of `hc` into the cgroup `dir` (at creation and on `docker update`).
pub fn apply(dir: &Path, hc: &HostConfig) -> std::io::Result<()> {
    let write = |f: &str, v: String| {
        std::fs::write(dir.join(f), &v).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("writing {v:?} to {}: {e}", dir.join(f).display()),
            )
        })
    };
    if hc.memory > 0 {
        write("memory.max", hc.memory.to_string())?;
    }
    let period = if hc.cpu_period > 0 {
        hc.cpu_period
    } else {
        100_000
    };
    if hc.nano_cpus > 0 {
        write(
            "cpu.max",
            format!("{} {period}", hc.nano_cpus * period / 1_000_000_000),
        )?;
    } else if hc.cpu_quota > 0 {
        write("cpu.max", format!("{} {period}", hc.cpu_quota))?;
    }
    if let Some(p) = hc.pids_limit {
        write("pids.max", if p > 0 { p.to_string() } else { "max".into() })?;
    }
    for (key, file) in [("CpusetCpus", "cpuset.cpus"), ("CpusetMems", "cpuset.mems")] {
        if let Some(v) = hc.extra.get(key).and_then(|v| v.as_str()) {
            if !v.is_empty() {
                write(file, v.to_string())?;
            }
        }
    }
    if hc.cpu_shares > 0 {
        write("cpu.weight", cpu_weight(hc.cpu_shares).to_string())?;
    }
    if hc.memory_reservation > 0 {
        write("memory.low", hc.memory_reservation.to_string())?;
    }
    // MemorySwap is memory plus swap (-1: unlimited); the guest may have no swap file.
    if hc.memory > 0 && hc.memory_swap != 0 && dir.join("memory.swap.max").exists() {
        let swap = if hc.memory_swap < 0 {
            "max".to_string()
        } else {
            (hc.memory_swap - hc.memory).max(0).to_string()
        };
        write("memory.swap.max", swap)?;
    }
    Ok(())
}

/// `0-2,4`: numbers and ranges, comma-separated (cpuset.cpus / cpuset.mems).
pub fn valid_cpuset(s: &str) -> bool {
    s.split(',').all(|part| {
        let mut it = part.splitn(2, '-');
        let a = it.next().and_then(|x| x.parse::<u32>().ok());
        match (a, it.next()) {
            (Some(_), None) => true,
            (Some(a), Some(b)) => b.parse::<u32>().is_ok_and(|b| b >= a),
            _ => false,
        }
    })
}

/// cpu.weight for Docker's CPU shares (runc's conversion: 2..262144 → 1..10000).
pub fn cpu_weight(shares: i64) -> u64 {
    let s = shares.clamp(2, 262_144) as u64;
    1 + ((s - 2) * 9999) / 262_142
}

pub fn add(dir: &Path, pid: i32) -> std::io::Result<()> {
    std::fs::write(dir.join("cgroup.procs"), pid.to_string())
}

/// Did the OOM killer kill a process of this cgroup (memory.events `oom_kill`)?
pub fn oom_killed(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("memory.events"))
        .unwrap_or_default()
        .lines()
        .any(|l| {
            l.strip_prefix("oom_kill ")
                .and_then(|n| n.trim().parse::<u64>().ok())
                .is_some_and(|n| n > 0)
        })
}

pub fn remove(dir: &Path) {
    for _ in 0..20 {
        if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
}
