//! `/version` and `/info`.

use super::Api;
use crate::*;
use docker_api::SystemBackend;

impl SystemBackend for Api {
    async fn version(&self) -> ApiResult<Version> {
        let v = env!("CARGO_PKG_VERSION").to_string();
        Ok(Version {
            version: v.clone(),
            api_version: docker_api::version::API_VERSION.into(),
            min_api_version: docker_api::version::MIN_API_VERSION.into(),
            git_commit: String::new(),
            go_version: "rust".into(),
            os: "linux".into(),
            arch: "amd64".into(),
            kernel_version: String::new(),
            build_time: String::new(),
            components: vec![Component {
                name: "axion-vmd (one VM per container)".into(),
                version: v,
                details: Default::default(),
            }],
        })
    }

    async fn info(&self) -> ApiResult<Info> {
        let cs: Vec<Arc<Ctr>> = self
            .containers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        let running = cs.iter().filter(|c| c.phase() == Phase::Running).count() as i64;
        let mut warnings = self.warnings.clone();
        warnings.push(format!(
            "each container runs in its own QEMU VM ({} MiB, {} vCPU, {}) cloned from {}",
            self.opts.memory_mib,
            self.opts.cpus,
            self.opts.accel.name(),
            self.template.dir.display()
        ));
        Ok(Info {
            id: "axion-vmd".into(),
            containers: cs.len() as i64,
            containers_running: running,
            containers_stopped: cs.len() as i64 - running,
            images: self.images.all().len() as i64,
            driver: "qemu-clone".into(),
            docker_root_dir: self.opts.state_dir.display().to_string(),
            operating_system: "axion vmd (VM per container)".into(),
            os_type: "linux".into(),
            architecture: "x86_64".into(),
            ncpu: std::thread::available_parallelism()
                .map(|n| n.get() as i64)
                .unwrap_or(1),
            name: "axion-vmd".into(),
            server_version: env!("CARGO_PKG_VERSION").into(),
            cgroup_driver: if self.cgroups.is_some() {
                "cgroupfs".into()
            } else {
                "none".into()
            },
            cgroup_version: self
                .cgroups
                .as_ref()
                .map(|c| c.version())
                .unwrap_or("")
                .into(),
            logging_driver: "json-file".into(),
            default_runtime: "qemu".into(),
            warnings,
            registry_config: Some(self.images.registry_config()),
            ..Default::default()
        })
    }
}
