//! [`Api`]: the Docker API back end over the [`Daemon`], one file per seam ([`system`],
//! [`images`], [`containers`], [`exec`], and here archives, volumes and events). Networks take
//! the trait's defaults (501): every container has its VM's own network.

mod commit;
mod containers;
mod exec;
mod images;
mod push;
mod save;
mod system;
mod update;

use crate::*;
use bytes::Bytes;
use docker_api::ops::EventRx;
use docker_api::volumes::{Volume, VolumeCreateRequest, VolumeEntry};
use docker_api::{ArchiveBackend, EventBackend, NetworkBackend, VolumeBackend};

/// The Docker API back end over a shared [`Daemon`].
pub struct Api(pub Arc<Daemon>);

impl std::ops::Deref for Api {
    type Target = Arc<Daemon>;
    fn deref(&self) -> &Arc<Daemon> {
        &self.0
    }
}

/// `docker cp`, through the guest engine of the container's VM (which must be there).
impl ArchiveBackend for Api {
    async fn archive_get(
        &self,
        id: &str,
        path: &str,
    ) -> ApiResult<(PathStat, mpsc::Receiver<Bytes>)> {
        let c = self.with_vm(id)?;
        let (headers, rx) = c
            .guest()
            .byte_stream(
                "archive",
                http::Method::GET,
                &format!("/containers/{}/archive", c.gid()),
                &[("path", path.to_string())],
            )
            .await
            .map_err(|e| c.host_ids(e))?;
        Ok((path_stat(&headers)?, rx))
    }

    async fn archive_stat(&self, id: &str, path: &str) -> ApiResult<PathStat> {
        let c = self.with_vm(id)?;
        let (headers, _) = c
            .guest()
            .byte_stream(
                "archive stat",
                http::Method::HEAD,
                &format!("/containers/{}/archive", c.gid()),
                &[("path", path.to_string())],
            )
            .await
            .map_err(|e| c.host_ids(e))?;
        path_stat(&headers)
    }

    async fn archive_put(&self, id: &str, path: &str, tar: Bytes) -> ApiResult<()> {
        let c = self.with_vm(id)?;
        c.guest()
            .archive_put(&c.gid(), path, tar)
            .await
            .map_err(|e| c.host_ids(e))
    }
}

/// The guest engine's `X-Docker-Container-Path-Stat` (base64 of JSON).
fn path_stat(headers: &http::HeaderMap) -> ApiResult<PathStat> {
    use base64::Engine as _;
    let bad = |why: String| ApiError::internal(format!("bad path stat from the guest: {why}"));
    let h = headers
        .get("X-Docker-Container-Path-Stat")
        .ok_or_else(|| bad("no X-Docker-Container-Path-Stat header".into()))?;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(h.as_bytes())
        .map_err(|e| bad(e.to_string()))?;
    serde_json::from_slice(&raw).map_err(|e| bad(e.to_string()))
}

/// Named volumes on the host ([`crate::volumes`]).
impl VolumeBackend for Api {
    async fn volumes(&self) -> ApiResult<Vec<VolumeEntry>> {
        let refs = self.volume_refs();
        self.volumes
            .names()
            .into_iter()
            .map(|n| {
                Ok(VolumeEntry {
                    refs: refs.get(&n).cloned().unwrap_or_default(),
                    volume: self.volumes.inspect(&n)?,
                })
            })
            .collect()
    }

    async fn volume_create(&self, req: VolumeCreateRequest) -> ApiResult<Volume> {
        if !req.driver.is_empty() && req.driver != "local" {
            return Err(ApiError::not_found(format!(
                "error looking up volume plugin {}: plugin \"{}\" not found",
                req.driver, req.driver
            )));
        }
        if req.driver_opts.as_ref().is_some_and(|o| !o.is_empty()) {
            return Err(ApiError::bad_request(
                "volume driver options (type, device, o) are not supported in VM-per-container \
                 mode: a volume is a directory on the host, shared into each VM that mounts it",
            ));
        }
        if req.cluster_volume_spec.is_some() {
            return Err(ApiError::new(
                http::StatusCode::SERVICE_UNAVAILABLE,
                docker_api::ops::NOT_A_MANAGER,
            ));
        }
        let (v, new) = self.volumes.create(&req.name, req.labels)?;
        if new {
            self.volume_event("create", &v.name);
        }
        Ok(v)
    }

    async fn volume_inspect(&self, name: &str) -> ApiResult<Volume> {
        self.volumes.inspect(name)
    }

    async fn volume_remove(&self, name: &str, force: bool) -> ApiResult<()> {
        if !self.volumes.exists(name) {
            return if force {
                Ok(())
            } else {
                Err(ApiError::not_found(format!("get {name}: no such volume")))
            };
        }
        if let Some(ids) = self.volume_refs().get(name).filter(|i| !i.is_empty()) {
            return Err(ApiError::conflict(format!(
                "remove {name}: volume is in use - [{}]",
                ids.join(", ")
            )));
        }
        self.volumes.remove(name)?;
        self.volume_event("destroy", name);
        Ok(())
    }

    async fn volume_prune(&self, names: Vec<String>) -> ApiResult<(Vec<String>, u64)> {
        let refs = self.volume_refs();
        let (mut deleted, mut space) = (Vec::new(), 0);
        for n in names {
            if refs.get(&n).is_some_and(|i| !i.is_empty()) || !self.volumes.exists(&n) {
                continue;
            }
            space += self.volumes.remove(&n)?;
            self.volume_event("destroy", &n);
            deleted.push(n);
        }
        Ok((deleted, space))
    }
}

impl Api {
    /// Volume name → the containers (not removed) that mount it.
    fn volume_refs(&self) -> HashMap<String, Vec<String>> {
        let mut refs: HashMap<String, Vec<String>> = HashMap::new();
        for c in self
            .containers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
        {
            for v in &c.volumes {
                refs.entry(v.clone()).or_default().push(c.id.clone());
            }
        }
        refs
    }
}

impl NetworkBackend for Api {}

impl EventBackend for Api {
    async fn events(&self, since: Option<i128>) -> ApiResult<EventRx> {
        Ok(self.events.subscribe(since))
    }
}

impl docker_api::BuildBackend for Api {}
