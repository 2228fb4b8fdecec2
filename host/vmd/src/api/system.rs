//! `/version` and `/info`.

use super::Api;
use crate::*;
use docker_api::SystemBackend;

impl SystemBackend for Api {
    async fn auth(
        &self,
        a: docker_api::images::AuthConfig,
    ) -> ApiResult<docker_api::images::AuthResponse> {
        self.login(a).await
    }

    /// `docker system df`: the images' blobs in the host store (a layer shared by images
    /// counted once), each container's kept changes as its writable size (plus its VM's
    /// disk overlay while it runs), and the named volumes on the host.
    async fn system_df(&self) -> ApiResult<docker_api::images::DiskUsage> {
        use docker_api::ImageBackend;
        let size = |p: &Path| std::fs::metadata(p).map(|m| m.len() as i64).unwrap_or(0);
        let all = self.images.all();
        let mut uses: HashMap<String, usize> = HashMap::new();
        let mut seen = std::collections::HashSet::new();
        for i in all.iter().filter(|i| seen.insert(i.id.clone())) {
            for l in &i.layers {
                *uses.entry(l.clone()).or_default() += 1;
            }
        }
        let blob = |d: &str| size(&self.images.store.blob_path(d));
        let cs: Vec<Arc<Ctr>> = self
            .containers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        let mut images = self.images().await?;
        for s in &mut images {
            let rec = all.iter().find(|r| r.id == s.id);
            s.shared_size = rec
                .map(|r| {
                    r.layers
                        .iter()
                        .filter(|l| uses.get(*l).copied().unwrap_or(0) > 1)
                        .map(|l| blob(l))
                        .sum()
                })
                .unwrap_or(0);
            s.containers = cs.iter().filter(|c| c.image_id == s.id).count() as i64;
        }
        let mut containers = Vec::new();
        for s in docker_api::ContainerBackend::containers(self, true).await? {
            let Some(c) = cs.iter().find(|c| c.id == s.id) else {
                continue;
            };
            let rw = size(&c.dir.join(changes::LAYER_FILE)) + size(&c.dir.join("disk.qcow2"));
            let image = all
                .iter()
                .find(|r| r.id == c.image_id)
                .map_or(0, |r| r.size);
            let mut v = serde_json::to_value(&s).unwrap_or_default();
            v["SizeRw"] = serde_json::json!(rw);
            v["SizeRootFs"] = serde_json::json!(rw + image);
            containers.push(v);
        }
        let mut volumes = Vec::new();
        for e in docker_api::VolumeBackend::volumes(self).await? {
            let mut v = serde_json::to_value(&e.volume).unwrap_or_default();
            v["UsageData"] = serde_json::json!({
                "Size": dir_size(&self.volumes.data_path(&e.volume.name)),
                "RefCount": e.refs.len(),
            });
            volumes.push(v);
        }
        Ok(docker_api::images::DiskUsage {
            layers_size: uses.keys().map(|l| blob(l)).sum(),
            images,
            containers,
            volumes,
            build_cache: Vec::new(),
        })
    }

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
            details: docker_api::images::InfoDetails {
                driver_status: vec![["Warm pool".into(), self.pool.status()]],
                ..Default::default()
            },
            ..Default::default()
        })
    }
}

/// The bytes of the files under `dir` (not following links).
fn dir_size(dir: &Path) -> i64 {
    let mut n = 0;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        match e.metadata() {
            Ok(m) if m.is_dir() => n += dir_size(&e.path()),
            Ok(m) => n += m.len() as i64,
            Err(_) => {}
        }
    }
    n
}
