//! Host cgroups for the VMs: each container's QEMU process gets its own cgroup with the
//! `docker run` limits (`-m` → memory, `--cpus`/`--cpu-quota` → CPU bandwidth).
//!
//! Two layouts, chosen by what the host has:
//! - cgroup v2 (unified hierarchy at /sys/fs/cgroup with `cgroup.controllers`):
//!   `/sys/fs/cgroup/axion-vmd/<id>/{memory.max,cpu.max}` (the controllers are enabled in
//!   the root's and `axion-vmd`'s `cgroup.subtree_control`; v2 allows no processes in an
//!   inner cgroup that delegates controllers, so this lives at the root);
//! - cgroup v1 (`memory` and `cpu` controllers mounted at /sys/fs/cgroup/memory and
//!   /sys/fs/cgroup/cpu, as on this build host): `<mount>/<daemon's cgroup>/axion-vmd/<id>/`
//!   with `memory.limit_in_bytes` and `cpu.cfs_quota_us`/`cpu.cfs_period_us`. The cgroups
//!   nest under the daemon's own cgroup of each hierarchy (`/` when it runs at the top), so
//!   limits put on the daemon still bound its VMs (v1 memory has `use_hierarchy` on).
//!
//! A container's cgroups are removed when its VM is gone (exit, `rm`, daemon stop).

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
    /// Picks and prepares the layout this host has, under `/sys/fs/cgroup`. Err says why
    /// no limits can be applied.
    pub fn setup() -> Result<Cgroups, String> {
        Self::setup_in(
            Path::new("/sys/fs/cgroup"),
            &std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default(),
        )
    }

    fn setup_in(root: &Path, self_cgroup: &str) -> Result<Cgroups, String> {
        if root.join("cgroup.controllers").exists() {
            let dir = root.join("axion-vmd");
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
            let memory = mem.join(own_path(self_cgroup, "memory")).join("axion-vmd");
            let cpu = cpu.join(own_path(self_cgroup, "cpu")).join("axion-vmd");
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

    pub fn version(&self) -> &'static str {
        match self {
            Cgroups::V2 { .. } => "2",
            Cgroups::V1 { .. } => "1",
        }
    }

    /// Creates `name`'s cgroups with `limits` and moves `pid` in; returns the directories
    /// made (to pass to [`remove`]). On error, what was made is removed again.
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
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    std::thread::sleep(std::time::Duration::from_millis(20))
                }
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    eprintln!("vmd: cannot remove cgroup {}: {e}", d.display());
                    break;
                }
                _ => break,
            }
        }
    }
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
        let cg = Cgroups::setup_in(t.path(), "4:memory:/p\n1:cpu:/\n").unwrap();
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
        let e = Cgroups::setup_in(&t.path().join("nothing"), "").unwrap_err();
        assert!(e.contains("neither"), "{e}");
    }
}
