//! The daemon itself: `/version` and `/info`; and the seams with no endpoints yet.

use super::*;
use crate::cgroup;
use crate::containers::{Record, Status};
use docker_api::images::{AuthConfig, AuthResponse, DiskUsage, InfoDetails};
use docker_api::SystemBackend;

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
            warnings.push(
                "WARNING: no cgroup v2 hierarchy at /sys/fs/cgroup: memory, CPU and pids \
                limits are not applied"
                    .into(),
            );
        }
        if let Err(why) = &self.bridge {
            warnings.push(format!(
                "WARNING: {why}: containers in the default network get loopback \
                only; use -p to publish ports or --network host"
            ));
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
            details: self.info_details(v2),
            ..Default::default()
        })
    }

    async fn auth(&self, a: AuthConfig) -> ApiResult<AuthResponse> {
        self.login(a).await
    }

    async fn system_df(&self) -> ApiResult<DiskUsage> {
        self.df().await
    }
}

/// The update agent's state file: this boot's version, profile, slot and update state.
const UPDATE_STATE: &str = "/run/axion-update/state";
const RELEASE: &str = "/etc/axion/release";

/// `axion.version`, `axion.profile`, `axion.update.*`: the update agent's state file, or
/// (before its boot check wrote one, or on an image without it) the release file's version
/// and profile.
fn host_labels() -> Vec<String> {
    let text = std::fs::read_to_string(UPDATE_STATE)
        .or_else(|_| std::fs::read_to_string(RELEASE))
        .unwrap_or_default();
    docker_api::host_labels::parse(&text, "axion.")
}

impl Engine {
    /// The `/info` keys beyond the CLI's, as dockerd fills them on this engine.
    fn info_details(&self, cgroup_v2: bool) -> InfoDetails {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let ctrl = read("/sys/fs/cgroup/cgroup.controllers");
        let has = |c: &str| cgroup_v2 && ctrl.split_whitespace().any(|x| x == c);
        let nfd = std::fs::read_dir("/proc/self/fd")
            .map(|d| d.count() as i64)
            .unwrap_or(0);
        let threads = read("/proc/self/status")
            .lines()
            .find_map(|l| l.strip_prefix("Threads:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        let env = |k: &str| {
            std::env::var(k)
                .or_else(|_| std::env::var(k.to_ascii_lowercase()))
                .unwrap_or_default()
        };
        InfoDetails {
            driver_status: vec![
                ["Backing Filesystem".into(), "extfs".into()],
                ["Supports d_type".into(), "true".into()],
                ["Using metacopy".into(), "false".into()],
                ["Native Overlay Diff".into(), "true".into()],
                ["userxattr".into(), "false".into()],
            ],
            plugins: serde_json::json!({
                "Volume": ["local"],
                "Network": ["bridge", "host", "null"],
                "Authorization": null,
                "Log": ["json-file"],
            }),
            memory_limit: has("memory"),
            swap_limit: has("memory"),
            kernel_memory_tcp: false,
            cpu_cfs_period: has("cpu"),
            cpu_cfs_quota: has("cpu"),
            cpu_shares: has("cpu"),
            cpu_set: has("cpuset"),
            pids_limit: has("pids"),
            oom_kill_disable: false,
            ipv4_forwarding: read("/proc/sys/net/ipv4/ip_forward").trim() == "1",
            bridge_nf_iptables: false,
            bridge_nf_ip6tables: false,
            debug: false,
            nfd,
            n_goroutines: threads,
            system_time: docker_api::time::rfc3339(now_nanos()),
            n_events_listener: 0,
            index_server_address: format!("https://index.{}/v1/", registry::DOCKER_HUB),
            generic_resources: None,
            http_proxy: env("HTTP_PROXY"),
            https_proxy: env("HTTPS_PROXY"),
            no_proxy: env("NO_PROXY"),
            labels: host_labels(),
            experimental_build: false,
            runtimes: [(
                "axion".to_string(),
                serde_json::json!({ "path": "axion-engine" }),
            )]
            .into(),
            swarm: serde_json::json!({
                "NodeID": "",
                "NodeAddr": "",
                "LocalNodeState": "inactive",
                "ControlAvailable": false,
                "Error": "",
                "RemoteManagers": null,
            }),
            live_restore_enabled: false,
            isolation: String::new(),
            init_binary: "docker-init".into(),
            containerd_commit: serde_json::json!({ "ID": "" }),
            runc_commit: serde_json::json!({ "ID": "" }),
            init_commit: serde_json::json!({ "ID": "" }),
            product_license: String::new(),
            default_address_pools: Vec::new(),
            cdi_spec_dirs: Vec::new(),
            containerd: None,
        }
    }
}
