//! Host cgroups for the VMs, shared by axion-vmd and the containerd shim: each VM's QEMU
//! process gets its own cgroup with its container's limits (vmd: `docker run -m`,
//! `--cpus`/`--cpu-quota`; the shim: the OCI spec's `linux.resources`), memory and CPU
//! bandwidth.
//!
//! Two layouts, chosen by what the host has (`PARENT` is the program's own directory,
//! `axion-vmd` or `axion-shim`):
//! - cgroup v2 (unified hierarchy at /sys/fs/cgroup with `cgroup.controllers`):
//!   `/sys/fs/cgroup/PARENT/<id>/{memory.max,cpu.max}` (the controllers are enabled in
//!   the root's and PARENT's `cgroup.subtree_control`; v2 allows no processes in an
//!   inner cgroup that delegates controllers, so this lives at the root);
//! - cgroup v1 (`memory` and `cpu` controllers mounted at /sys/fs/cgroup/memory and
//!   /sys/fs/cgroup/cpu, as on this build host): `<mount>/<program's cgroup>/PARENT/<id>/`
//!   with `memory.limit_in_bytes` and `cpu.cfs_quota_us`/`cpu.cfs_period_us`. The cgroups
//!   nest under the program's own cgroup of each hierarchy (`/` when it runs at the top),
//!   so limits put on the program still bound its VMs (v1 memory has `use_hierarchy` on).
//!
//! A VM's cgroups are removed when it is gone ([`remove`]). [`usage`] reads what they
//! counted (the shim's `stats`).

use std::path::{Path, PathBuf};

/// The limits of one container, from its HostConfig.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Bytes (`-m`).
    pub memory: Option<i64>,
    /// (quota, period) in microseconds (`--cpus`, `--cpu-quota`/`--cpu-period`).
    pub cpu: Option<(i64, i64)>,
}

impl Limits {
    pub fn from_host_config(hc: &docker_api::types::HostConfig) -> Limits {
        let period = if hc.cpu_period > 0 {
            hc.cpu_period
        } else {
            100_000
        };
        let cpu = if hc.nano_cpus > 0 {
            Some(((hc.nano_cpus * period / 1_000_000_000).max(1_000), period))
        } else if hc.cpu_quota > 0 {
            Some((hc.cpu_quota, period))
        } else {
            None
        };
        Limits {
            memory: (hc.memory > 0).then_some(hc.memory),
            cpu,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.memory.is_none() && self.cpu.is_none()
    }
}

/// Where the per-container cgroups go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cgroups {
    V2 { parent: PathBuf },
    V1 { memory: PathBuf, cpu: PathBuf },
}

impl Cgroups {
    /// Picks and prepares the layout this host has, under `/sys/fs/cgroup`, with the VMs'
    /// cgroups in a directory named `parent`. Err says why no limits can be applied.
    pub fn setup(parent: &str) -> Result<Cgroups, String> {
        Self::setup_in(
            Path::new("/sys/fs/cgroup"),
            &std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default(),
            parent,
        )
    }

    fn setup_in(root: &Path, self_cgroup: &str, parent: &str) -> Result<Cgroups, String> {
        if root.join("cgroup.controllers").exists() {
            let dir = root.join(parent);
            let r = std::fs::create_dir_all(&dir)
                .and_then(|()| std::fs::write(root.join("cgroup.subtree_control"), "+memory +cpu"))
                .and_then(|()| std::fs::write(dir.join("cgroup.subtree_control"), "+memory +cpu"));
            return match r {
                Ok(()) => Ok(Cgroups::V2 { parent: dir }),
                Err(e) => Err(format!("cannot set up cgroup v2 {} ({e})", dir.display())),
            };
        }
        let (mem, cpu) = (root.join("memory"), root.join("cpu"));
        if mem.join("memory.limit_in_bytes").exists() && cpu.join("cpu.cfs_quota_us").exists() {
            let memory = mem.join(own_path(self_cgroup, "memory")).join(parent);
            let cpu = cpu.join(own_path(self_cgroup, "cpu")).join(parent);
            for d in [&memory, &cpu] {
                std::fs::create_dir_all(d)
                    .map_err(|e| format!("cannot create cgroup v1 {} ({e})", d.display()))?;
            }
            return Ok(Cgroups::V1 { memory, cpu });
        }
        Err(format!(
            "{} is neither a cgroup v2 hierarchy nor has the cgroup v1 memory and cpu \
             controllers mounted",
            root.display()
        ))
    }

    /// The directories `name`'s cgroups have in this layout (made or not): what a
    /// program that died left behind, for [`remove`].
    pub fn dirs_of(&self, name: &str) -> Vec<PathBuf> {
        match self {
            Cgroups::V2 { parent } => vec![parent.join(name)],
            Cgroups::V1 { memory, cpu } => vec![memory.join(name), cpu.join(name)],
        }
    }

    pub fn version(&self) -> &'static str {
        match self {
            Cgroups::V2 { .. } => "2",
            Cgroups::V1 { .. } => "1",
        }
    }

    /// Creates `name`'s cgroups with `limits` and moves `pid` in; returns the directories
    /// made (to pass to [`remove`]). On error, what was made is removed again. Called again
    /// for the same `name`, it changes the limits in place (`docker update`, the shim's
    /// `update`).
    pub fn apply(&self, name: &str, pid: u32, limits: &Limits) -> std::io::Result<Vec<PathBuf>> {
        let mut made = Vec::new();
        let r = self.apply_into(name, pid, limits, &mut made);
        if r.is_err() {
            remove(&made);
            made.clear();
        }
        r.map(|()| made)
    }

    fn apply_into(
        &self,
        name: &str,
        pid: u32,
        limits: &Limits,
        made: &mut Vec<PathBuf>,
    ) -> std::io::Result<()> {
        let mk = |d: PathBuf, made: &mut Vec<PathBuf>| -> std::io::Result<PathBuf> {
            std::fs::create_dir(&d).or_else(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    Ok(())
                } else {
                    Err(e)
                }
            })?;
            made.push(d.clone());
            Ok(d)
        };
        let write = |d: &Path, file: &str, value: String| {
            std::fs::write(d.join(file), &value).map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!("writing {value:?} to {}: {e}", d.join(file).display()),
                )
            })
        };
        match self {
            Cgroups::V2 { parent } => {
                let d = mk(parent.join(name), made)?;
                if let Some(m) = limits.memory {
                    write(&d, "memory.max", m.to_string())?;
                }
                if let Some((q, p)) = limits.cpu {
                    write(&d, "cpu.max", format!("{q} {p}"))?;
                }
                write(&d, "cgroup.procs", pid.to_string())?;
            }
            Cgroups::V1 { memory, cpu } => {
                if let Some(m) = limits.memory {
                    let d = mk(memory.join(name), made)?;
                    write(&d, "memory.limit_in_bytes", m.to_string())?;
                    // Charge the RAM QEMU already holds (the restored guest) to the new
                    // cgroup too; best effort (the knob is deprecated in newer kernels).
                    let _ = std::fs::write(d.join("memory.move_charge_at_immigrate"), "1");
                    write(&d, "cgroup.procs", pid.to_string())?;
                }
                if let Some((q, p)) = limits.cpu {
                    let d = mk(cpu.join(name), made)?;
                    write(&d, "cpu.cfs_period_us", p.to_string())?;
                    write(&d, "cpu.cfs_quota_us", q.to_string())?;
                    write(&d, "cgroup.procs", pid.to_string())?;
                }
            }
        }
        Ok(())
    }
}

/// Removes cgroups made by [`Cgroups::apply`]. A cgroup can only go once its processes
/// are gone: QEMU has exited (or been killed) before this is called, but its exit may take
/// a moment to reach the cgroup, so this retries briefly.
pub fn remove(dirs: &[PathBuf]) {
    for d in dirs {
        for _ in 0..50 {
            match std::fs::remove_dir(d) {
                Err(e) if e.kind() == std::io::ErrorKind::ResourceBusy => {
                    std::thread::sleep(std::time::Duration::from_millis(20))
                }
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    eprintln!("cannot remove cgroup {}: {e}", d.display());
                    break;
                }
                _ => break,
            }
        }
    }
}

/// Lifts the limits of `dirs` (made by [`Cgroups::apply`]), keeping their processes in:
/// before a lower set of limits is applied (the shim's sandbox lost a limited container).
pub fn unlimit(dirs: &[PathBuf]) {
    const OFF: &[(&str, &str)] = &[
        ("memory.limit_in_bytes", "-1"),
        ("cpu.cfs_quota_us", "-1"),
        ("memory.max", "max"),
        ("cpu.max", "max"),
    ];
    for d in dirs {
        for (file, value) in OFF {
            let p = d.join(file);
            if p.exists() {
                if let Err(e) = std::fs::write(&p, value) {
                    eprintln!("cannot lift the limit {}: {e}", p.display());
                }
            }
        }
    }
}

/// What a VM's cgroups (the directories [`Cgroups::apply`] made) have counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Bytes charged to the memory cgroup, and its limit (None: no memory cgroup).
    pub memory: Option<(u64, Option<u64>)>,
    /// CFS bandwidth periods, throttled periods and throttled time (ns) of the cpu cgroup.
    pub throttling: Option<(u64, u64, u64)>,
}

/// Reads the counters of `dirs` (v1: `memory.usage_in_bytes`, `memory.limit_in_bytes`,
/// `cpu.stat`; v2: `memory.current`, `memory.max`, `cpu.stat`).
pub fn usage(dirs: &[PathBuf]) -> Usage {
    let read = |d: &Path, f: &str| std::fs::read_to_string(d.join(f)).ok();
    let num = |s: Option<String>| s.and_then(|s| s.trim().parse::<u64>().ok());
    let mut u = Usage::default();
    for d in dirs {
        if let Some(m) = num(read(d, "memory.usage_in_bytes")) {
            // No limit reads as a huge number (PAGE_COUNTER_MAX pages).
            let limit = num(read(d, "memory.limit_in_bytes")).filter(|&l| l < 1 << 62);
            u.memory = Some((m, limit));
        } else if let Some(m) = num(read(d, "memory.current")) {
            // `max` (no limit) parses as None.
            u.memory = Some((m, num(read(d, "memory.max"))));
        }
        if let Some(stat) = read(d, "cpu.stat") {
            let field = |k: &str| {
                stat.lines()
                    .filter_map(|l| l.split_once(' '))
                    .find(|(n, _)| *n == k)
                    .and_then(|(_, v)| v.trim().parse::<u64>().ok())
            };
            let (Some(p), Some(t)) = (field("nr_periods"), field("nr_throttled")) else {
                continue;
            };
            let time = field("throttled_time")
                .or_else(|| field("throttled_usec").map(|us| us * 1000))
                .unwrap_or(0);
            u.throttling = Some((p, t, time));
        }
    }
    u
}

/// The process's own cgroup path in the v1 hierarchy holding `controller` (relative, no
/// leading slash; empty at the top).
fn own_path(self_cgroup: &str, controller: &str) -> PathBuf {
    for line in self_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(ctrls), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if ctrls.split(',').any(|c| c == controller) {
            return PathBuf::from(path.trim_start_matches('/'));
        }
    }
    PathBuf::new()
}

#[cfg(test)]
mod tests {
    use super::*;
    use docker_api::types::HostConfig;

    #[test]
    fn limits_from_flags() {
        let hc = HostConfig {
            memory: 256 << 20,
            nano_cpus: 500_000_000,
            ..Default::default()
        };
        assert_eq!(
            Limits::from_host_config(&hc),
            Limits {
                memory: Some(256 << 20),
                cpu: Some((50_000, 100_000))
            }
        );
        let hc = HostConfig {
            cpu_quota: 20_000,
            cpu_period: 50_000,
            ..Default::default()
        };
        assert_eq!(Limits::from_host_config(&hc).cpu, Some((20_000, 50_000)));
        assert!(Limits::from_host_config(&HostConfig::default()).is_empty());
    }

    #[test]
    fn own_cgroup_per_controller() {
        let s =
            "9:name=systemd:/\n4:memory:/process_api/4d5f\n2:cpuacct:/\n1:cpu,cpuacct:/x\n0::/\n";
        assert_eq!(own_path(s, "memory"), PathBuf::from("process_api/4d5f"));
        assert_eq!(own_path(s, "cpu"), PathBuf::from("x"));
        assert_eq!(own_path(s, "pids"), PathBuf::new());
    }

    /// A fake v1 layout in a temporary folder: the files the kernel would have.
    #[test]
    fn v1_layout_in_a_fake_tree() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("memory/p")).unwrap();
        std::fs::create_dir_all(t.path().join("cpu")).unwrap();
        std::fs::write(t.path().join("memory/memory.limit_in_bytes"), "").unwrap();
        std::fs::write(t.path().join("cpu/cpu.cfs_quota_us"), "").unwrap();
        let cg = Cgroups::setup_in(t.path(), "4:memory:/p\n1:cpu:/\n", "axion-vmd").unwrap();
        assert_eq!(
            cg,
            Cgroups::V1 {
                memory: t.path().join("memory/p/axion-vmd"),
                cpu: t.path().join("cpu/axion-vmd")
            }
        );
        assert_eq!(cg.version(), "1");
        let made = cg
            .apply(
                "abc",
                42,
                &Limits {
                    memory: Some(1 << 28),
                    cpu: Some((50_000, 100_000)),
                },
            )
            .unwrap();
        assert_eq!(made.len(), 2);
        assert_eq!(
            std::fs::read_to_string(
                t.path()
                    .join("memory/p/axion-vmd/abc/memory.limit_in_bytes")
            )
            .unwrap(),
            "268435456"
        );
        assert_eq!(
            std::fs::read_to_string(t.path().join("cpu/axion-vmd/abc/cpu.cfs_quota_us")).unwrap(),
            "50000"
        );
        assert_eq!(
            std::fs::read_to_string(t.path().join("cpu/axion-vmd/abc/cgroup.procs")).unwrap(),
            "42"
        );
        // In a real cgroupfs the files vanish with the directory; here remove them first.
        for d in &made {
            for e in std::fs::read_dir(d).unwrap().flatten() {
                std::fs::remove_file(e.path()).unwrap();
            }
        }
        remove(&made);
        assert!(made.iter().all(|d| !d.exists()));
        // Neither layout: a clear reason.
        let e = Cgroups::setup_in(&t.path().join("nothing"), "", "axion-vmd").unwrap_err();
        assert!(e.contains("neither"), "{e}");
    }

    #[test]
    fn usage_of_v1_and_v2_files() {
        let t = tempfile::tempdir().unwrap();
        let (m, c) = (t.path().join("m"), t.path().join("c"));
        std::fs::create_dir_all(&m).unwrap();
        std::fs::create_dir_all(&c).unwrap();
        std::fs::write(m.join("memory.usage_in_bytes"), "1000\n").unwrap();
        std::fs::write(m.join("memory.limit_in_bytes"), "4096\n").unwrap();
        std::fs::write(
            c.join("cpu.stat"),
            "nr_periods 10\nnr_throttled 3\nthrottled_time 500\n",
        )
        .unwrap();
        let u = usage(&[m.clone(), c.clone()]);
        assert_eq!(u.memory, Some((1000, Some(4096))));
        assert_eq!(u.throttling, Some((10, 3, 500)));
        // v2: one directory, `max` is no limit, the time in microseconds.
        let v2 = t.path().join("v2");
        std::fs::create_dir_all(&v2).unwrap();
        std::fs::write(v2.join("memory.current"), "77\n").unwrap();
        std::fs::write(v2.join("memory.max"), "max\n").unwrap();
        std::fs::write(
            v2.join("cpu.stat"),
            "usage_usec 9\nnr_periods 2\nnr_throttled 1\nthrottled_usec 4\n",
        )
        .unwrap();
        let u = usage(std::slice::from_ref(&v2));
        assert_eq!(u.memory, Some((77, None)));
        std::fs::write(v2.join("cpu.max"), "50000 100000").unwrap();
        unlimit(&[v2.clone(), m.clone()]);
        assert_eq!(std::fs::read_to_string(v2.join("cpu.max")).unwrap(), "max");
        assert_eq!(
            std::fs::read_to_string(m.join("memory.limit_in_bytes")).unwrap(),
            "-1"
        );
        assert_eq!(u.throttling, Some((2, 1, 4000)));
        assert_eq!(usage(&[]), Usage::default());
    }
}
