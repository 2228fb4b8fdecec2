//! The daemon itself: `/version` and `/info`; and the seams with no endpoints yet.

use super::*;
use crate::cgroup;
use crate::containers::{Record, Status};
use docker_api::{EventBackend, SystemBackend, VolumeBackend};

impl SystemBackend for Engine {
    async fn version(&self) -> ApiResult<Version> {
        let u = nix::sys::utsname::uname().map_err(internal("uname"))?;
        let v = env!("CARGO_PKG_VERSION").to_string();
        Ok(Version {
            version: v.clone(),
            api_version: docker_api::version::API_VERSION.into(),
            min_api_version: docker_api::version::MIN_API_VERSION.into(),
            git_commit: "axion".into(),
            go_version: "none (Rust)".into(),
            os: "linux".into(),
            arch: "amd64".into(),
            kernel_version: u.release().to_string_lossy().into(),
            build_time: String::new(),
            components: vec![Component {
                name: "Engine".into(),
                version: v,
                details: [
                    ("ApiVersion", docker_api::version::API_VERSION),
                    ("MinAPIVersion", docker_api::version::MIN_API_VERSION),
                    ("GitCommit", "axion"),
                    ("GoVersion", "none (Rust)"),
                    ("Os", "linux"),
                    ("Arch", "amd64"),
                    ("Experimental", "false"),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .chain([(
                    "KernelVersion".to_string(),
                    u.release().to_string_lossy().into_owned(),
                )])
                .collect(),
            }],
        })
    }

    async fn info(&self) -> ApiResult<Info> {
        let u = nix::sys::utsname::uname().map_err(internal("uname"))?;
        let cs: Vec<Record> = self
            .containers
            .lock()
            .unwrap()
            .values()
            .map(|c| c.snapshot())
            .collect();
        let running = cs.iter().filter(|r| r.status == Status::Running).count() as i64;
        let mem = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_kb: i64 = mem
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let os = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
        let pretty = os
            .lines()
            .find_map(|l| l.strip_prefix("PRETTY_NAME="))
            .map(|s| s.trim_matches('"').to_string())
            .unwrap_or_else(|| "Linux".into());
        let mut warnings = Vec::new();
        let v2 = cgroup::available();
        if !v2 {
            warnings.push("WARNING: no cgroup v2 hierarchy at /sys/fs/cgroup: memory, CPU and pids limits are not applied".into());
        }
        if let Err(why) = &self.bridge {
            warnings.push(format!("WARNING: {why}: containers in the default network get loopback only; use -p to publish ports or --network host"));
        }
        Ok(Info {
            id: hex::encode(
                nix::unistd::gethostname()
                    .map(|h| h.to_string_lossy().as_bytes().to_vec())
                    .unwrap_or_default(),
            ),
            containers: cs.len() as i64,
            containers_running: running,
            containers_stopped: cs.len() as i64 - running,
            images: self.images.list().len() as i64,
            driver: "overlay2".into(),
            docker_root_dir: self.root.display().to_string(),
            kernel_version: u.release().to_string_lossy().into(),
            operating_system: pretty,
            os_type: "linux".into(),
            architecture: u.machine().to_string_lossy().into(),
            ncpu: std::thread::available_parallelism()
                .map(|n| n.get() as i64)
                .unwrap_or(1),
            mem_total: mem_kb * 1024,
            name: nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().into())
                .unwrap_or_default(),
            server_version: env!("CARGO_PKG_VERSION").into(),
            cgroup_driver: if v2 { "cgroupfs".into() } else { "none".into() },
            cgroup_version: if v2 { "2".into() } else { "1".into() },
            logging_driver: "json-file".into(),
            default_runtime: "axion".into(),
            security_options: vec!["name=seccomp,profile=builtin".into()],
            warnings,
            registry_config: Some(RegistryServiceConfig::new(
                registry::DOCKER_HUB,
                self.registry.insecure_cidrs(),
                self.registry.insecure_registries(),
            )),
            ..Default::default()
        })
    }
}

impl VolumeBackend for Engine {}
impl EventBackend for Engine {}
