//! The daemon's image list. `docker pull` resolves the reference on the host with the
//! shared registry client (crates/registry, the guest engine's: anonymous, bearer-token and
//! basic auth, manifest, image index → linux/amd64, config blob, digests), fetches every
//! layer blob into the host's [`LayerStore`] and unpacks it there once; the VMs use those
//! layers over 9p. Records live in `images.json` in the state directory. (A VM's engine can
//! still pull from the registry itself, a registry on the host's 127.0.0.1 being 10.0.2.2
//! from inside, see
//! [`guest_ref`]: the daemon falls back to that only for a record from before the store.)

use crate::store::{Collected, LayerStore};
use docker_api::types::*;
use docker_api::{ApiError, ApiResult};
use registry::{Credentials, Reference, RegistryError};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageRecord {
    /// `registry/repo:tag` as the user wrote it (with `:latest` added when missing).
    pub name: String,
    /// Manifest digest.
    pub digest: String,
    /// Config digest (the image id).
    pub id: String,
    pub created: String,
    pub size: i64,
    pub config: ImageRunConfig,
    /// Layer blob digests (compressed), bottom first.
    pub layers: Vec<String>,
    /// The config's diff-ids (uncompressed layer digests), bottom first; empty for a
    /// record from before the layer store.
    #[serde(default)]
    pub diff_ids: Vec<String>,
    /// For a name given by `docker tag`: the name the image was pulled as, which a repair
    /// fetches again (the new name may be no registry's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

impl ImageRecord {
    /// The reference the image is fetched again from.
    pub fn pulled_as(&self) -> &str {
        self.source.as_deref().unwrap_or(&self.name)
    }
}

/// The name a record is kept under: `name:tag` as `docker images` shows it (`busybox:latest`,
/// `127.0.0.1:5000/busybox:1`), or `name@sha256:...` for a pull by digest.
pub fn record_name(r: &Reference) -> String {
    match (r.tagged(), &r.digest) {
        (Some(t), _) => t,
        (None, Some(d)) => format!("{}@{d}", r.familiar_name()),
        (None, None) => format!("{}:latest", r.familiar_name()),
    }
}

/// A registry on this host's loopback (reached over plain HTTP, and as 10.0.2.2 from a VM).
fn is_local(registry: &str) -> bool {
    let h = registry
        .rsplit_once(':')
        .map(|(h, _)| h)
        .unwrap_or(registry);
    h == "localhost" || h.starts_with("127.")
}

/// The reference as the VM's engine must pull it: a registry on the host's loopback is
/// 10.0.2.2 on QEMU's user network.
pub fn guest_ref(name: &str) -> String {
    match Reference::parse(name) {
        Ok(r) if is_local(&r.registry) => {
            let port = r
                .registry
                .rsplit_once(':')
                .map(|(_, p)| format!(":{p}"))
                .unwrap_or_default();
            let tag = r.tag.as_ref().map(|t| format!(":{t}")).unwrap_or_default();
            let digest = r
                .digest
                .as_ref()
                .map(|d| format!("@{d}"))
                .unwrap_or_default();
            let host = vmd_contract::HOST_ADDR;
            format!("{host}{port}/{}{tag}{digest}", r.repository)
        }
        _ => name.to_string(),
    }
}

/// A registry client error as the API answers it: a missing manifest is a 404 (the CLI's
/// "not found"), a refused login a 401.
fn api_error(name: &str, e: RegistryError) -> ApiError {
    match &e {
        RegistryError::NotFound { .. } => ApiError::not_found(format!(
            "manifest for {name} not found: manifest unknown: {e}"
        )),
        RegistryError::Status { status: 401, .. } => {
            ApiError::new(http::StatusCode::UNAUTHORIZED, e.to_string())
        }
        _ => ApiError::internal(format!("pulling {name}: {e}")),
    }
}

/// The registry client's `User-Agent`.
pub const USER_AGENT: &str = concat!("axion-vmd/", env!("CARGO_PKG_VERSION"));

pub struct Images {
    path: PathBuf,
    list: Mutex<Vec<ImageRecord>>,
    registry: registry::Client,
    pub store: LayerStore,
    /// One pull at a time: two pulls of images sharing a layer would unpack it twice. A
    /// garbage collection holds it too (a pull's blobs are not recorded until its end).
    pulling: tokio::sync::Mutex<()>,
    /// The images containers use, by container id, from their create until their VM is
    /// gone: their blobs and trees are kept even when the image is removed meanwhile.
    pins: Mutex<HashMap<String, ImageRecord>>,
    /// The credentials of the last successful pull of each repository (`registry/repo`),
    /// for fetching a damaged image again ([`repair`](Self::repair)). See [`Images::pull`].
    credentials: Mutex<HashMap<String, Credentials>>,
}

/// A pin taken for a container being created ([`Images::find_and_pin`]): dropped unless
/// [`kept`](Pin::keep), it releases the image again (a failed create).
pub struct Pin<'a> {
    images: &'a Images,
    id: String,
    armed: bool,
}

impl Pin<'_> {
    /// The container exists now: its pin stays until [`Images::unpin`].
    pub fn keep(mut self) {
        self.armed = false;
    }
}

impl Drop for Pin<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.images.unpin(&self.id);
        }
    }
}

impl Images {
    /// The records in `path`, the layer store, and a registry client that reaches the
    /// `insecure` registries (`--insecure-registry`), localhost and loopback over plain HTTP.
    pub fn open(path: PathBuf, store: LayerStore, insecure: Vec<String>) -> Images {
        let list = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        Images {
            path,
            list: Mutex::new(list),
            registry: registry::Client::new(USER_AGENT, insecure),
            store,
            pulling: tokio::sync::Mutex::new(()),
            pins: Mutex::new(HashMap::new()),
            credentials: Mutex::new(HashMap::new()),
        }
    }

    /// Writes the records durably (temp file, fsync, rename, fsync of the directory): a
    /// garbage collection that follows must never outlive a record on disk.
    fn save(&self, list: &[ImageRecord]) -> std::io::Result<()> {
        let b = serde_json::to_vec_pretty(list).map_err(std::io::Error::other)?;
        let tmp = self.path.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&b)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &self.path)?;
        let dir = self.path.parent().unwrap_or(std::path::Path::new("."));
        std::fs::File::open(dir)?.sync_all()
    }

    /// What `docker info` shows as `RegistryConfig` (its "Insecure Registries").
    pub fn registry_config(&self) -> RegistryServiceConfig {
        RegistryServiceConfig::new(
            registry::DOCKER_HUB,
            self.registry.insecure_cidrs(),
            self.registry.insecure_registries(),
        )
    }

    pub fn all(&self) -> Vec<ImageRecord> {
        self.list
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The record for a name, a full or short id.
    pub fn find(&self, name: &str) -> Option<ImageRecord> {
        find_in(
            &self.list.lock().unwrap_or_else(PoisonError::into_inner),
            name,
        )
    }

    /// Like [`find`](Self::find), and pins the image for container `ctr` in the same step
    /// (so a concurrent `rmi` and collection either sees the pin or makes the find fail).
    pub fn find_and_pin(&self, name: &str, ctr: &str) -> Option<(ImageRecord, Pin<'_>)> {
        let list = self.list.lock().unwrap_or_else(PoisonError::into_inner);
        let rec = find_in(&list, name)?;
        self.pins
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(ctr.to_string(), rec.clone());
        drop(list);
        Some((
            rec,
            Pin {
                images: self,
                id: ctr.to_string(),
                armed: true,
            },
        ))
    }

    /// The registry client (push, login).
    pub fn registry(&self) -> &registry::Client {
        &self.registry
    }

    /// Records an image the daemon made (`docker commit`), replacing what its name was.
    pub fn add(&self, rec: ImageRecord) -> ApiResult<()> {
        let mut list = self.list.lock().unwrap_or_else(PoisonError::into_inner);
        let mut next: Vec<ImageRecord> = list
            .iter()
            .filter(|i| i.name != rec.name)
            .cloned()
            .collect();
        next.push(rec);
        self.save(&next)
            .map_err(|e| ApiError::internal(format!("writing {}: {e}", self.path.display())))?;
        *list = next;
        Ok(())
    }

    /// Pins `rec` for container `ctr` (replacing its pin): its blobs and trees stay until
    /// [`unpin`](Self::unpin). For an image the daemon makes itself (a container's image
    /// with its kept changes, `changes.rs`): pin it before storing its files.
    pub fn pin(&self, ctr: &str, rec: ImageRecord) {
        self.pins
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(ctr.to_string(), rec);
    }

    /// Runs the blocking `f` (which adds files to the store) while no pull or collection
    /// runs: a collection that listed what is in use before a pin would remove the files.
    pub async fn while_not_collecting<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
    ) -> anyhow::Result<T> {
        let _one = self.pulling.lock().await;
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| anyhow::anyhow!("store task: {e}"))?
    }

    /// Container `ctr` no longer uses its image (its VM is gone).
    pub fn unpin(&self, ctr: &str) {
        self.pins
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(ctr);
    }

    /// `docker tag`: `repo:tag` becomes another name of the image `name` (replacing what
    /// that name was); answers the new record. The layers are the same files in the store.
    pub fn tag(&self, name: &str, repo: &str, tag: &str) -> ApiResult<ImageRecord> {
        let full = if tag.is_empty() {
            repo.to_string()
        } else {
            format!("{repo}:{tag}")
        };
        let r = Reference::parse(&full).map_err(|e| ApiError::bad_request(e.to_string()))?;
        if r.digest.is_some() {
            return Err(ApiError::bad_request(format!(
                "refusing to create a tag with a digest reference: {full}"
            )));
        }
        let mut list = self.list.lock().unwrap_or_else(PoisonError::into_inner);
        let src = find_in(&list, name)
            .ok_or_else(|| ApiError::not_found(format!("No such image: {name}")))?;
        let rec = ImageRecord {
            name: record_name(&r),
            source: Some(src.pulled_as().to_string()),
            ..src
        };
        let mut next: Vec<ImageRecord> = list
            .iter()
            .filter(|i| i.name != rec.name)
            .cloned()
            .collect();
        next.push(rec.clone());
        self.save(&next)
            .map_err(|e| ApiError::internal(format!("writing {}: {e}", self.path.display())))?;
        *list = next;
        Ok(rec)
    }

    /// Removes the record (durably, before anything of the store goes; see
    /// [`collect`](Self::collect)); None when there is no such image.
    pub fn remove(&self, name: &str) -> ApiResult<Option<ImageRecord>> {
        let mut list = self.list.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(rec) = find_in(&list, name) else {
            return Ok(None);
        };
        let rest: Vec<ImageRecord> = list
            .iter()
            .filter(|i| i.name != rec.name)
            .cloned()
            .collect();
        self.save(&rest)
            .map_err(|e| ApiError::internal(format!("writing {}: {e}", self.path.display())))?;
        *list = rest;
        Ok(Some(rec))
    }

    /// What must stay in the store: the blobs and trees of every recorded image and of
    /// every image a container uses.
    fn in_use(&self) -> (HashSet<String>, HashSet<String>) {
        let list = self.list.lock().unwrap_or_else(PoisonError::into_inner);
        let pins = self.pins.lock().unwrap_or_else(PoisonError::into_inner);
        let (mut blobs, mut layers) = (HashSet::new(), HashSet::new());
        for r in list.iter().chain(pins.values()) {
            blobs.insert(r.id.clone());
            blobs.extend(r.layers.iter().cloned());
            layers.extend(r.diff_ids.iter().cloned());
        }
        (blobs, layers)
    }

    /// Garbage collection: removes from the store what no image and no container uses.
    /// Blocking; for the daemon's start, when nothing else runs.
    pub fn collect_now(&self) -> anyhow::Result<Collected> {
        let (blobs, layers) = self.in_use();
        self.store.gc(&blobs, &layers)
    }

    /// Garbage collection (after `rmi`, when a container's VM is gone): waits for a pull in
    /// progress, then removes from the store what no image and no container uses.
    pub async fn collect(&self) -> anyhow::Result<Collected> {
        let _one = self.pulling.lock().await;
        let (blobs, layers) = self.in_use();
        let st = self.store.clone();
        tokio::task::spawn_blocking(move || st.gc(&blobs, &layers))
            .await
            .map_err(|e| anyhow::anyhow!("collection task: {e}"))?
    }

    /// Resolves `name` at its registry (with the client's credentials, if any), stores its
    /// config and layers (fetched, verified, unpacked; what is stored and intact already is
    /// kept) and records it.
    ///
    /// Credentials: the daemon fetches an image again on its own when the host's copy is
    /// damaged ([`repair`](Self::repair), before a container runs), and by then no request
    /// carries any (`docker create`/`run` of an image that is present sends no
    /// `X-Registry-Auth`; the CLI sends it only with a pull). A Docker user expects an image
    /// that `docker pull` fetched with their login to keep working without logging in again,
    /// and the daemon cannot read the CLI's `~/.docker/config.json` (another user's file,
    /// perhaps on another machine when the CLI comes over TCP). So a successful pull's
    /// credentials are remembered per repository, in this process's memory only: never
    /// written to disk (images.json holds none), gone when the daemon stops, replaced by the
    /// next successful pull's, and forgotten when a pull of that repository succeeds without
    /// any (the user is logged out, and the registry serves it anyway). A repair that needs
    /// credentials the daemon does not have fails with an error asking for a `docker pull`.
    pub async fn pull(&self, name: &str, auth: Option<Credentials>) -> ApiResult<ImageRecord> {
        let auth = auth.filter(|a| !a.is_empty());
        let rec = self.fetch(name, auth.clone()).await?;
        let r = Reference::parse(name).map_err(|e| ApiError::bad_request(e.to_string()))?;
        let mut creds = self
            .credentials
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match auth {
            Some(a) => creds.insert(repo_key(&r), a),
            None => creds.remove(&repo_key(&r)),
        };
        Ok(rec)
    }

    /// Given what [`LayerStore::check`] found wrong with `image` in the store, the record
    /// to run: `image` itself when nothing was, else the image fetched again from its
    /// registry with the credentials its last pull used (the damaged files are dropped
    /// first); an error when that fails or the store is still damaged, so a damaged layer
    /// never reaches a VM.
    pub async fn repair(
        &self,
        image: &ImageRecord,
        damage: Vec<crate::store::Damage>,
    ) -> ApiResult<ImageRecord> {
        if damage.is_empty() {
            return Ok(image.clone());
        }
        let what = damage
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join("; ");
        eprintln!(
            "vmd: image {}: damaged in the host's layer store ({what}); fetching it again",
            image.name
        );
        self.store.discard(&damage);
        let auth = Reference::parse(image.pulled_as()).ok().and_then(|r| {
            self.credentials
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(&repo_key(&r))
                .cloned()
        });
        let had_auth = auth.is_some();
        let rec = self.fetch(image.pulled_as(), auth).await.map_err(|e| {
            let hint = if e.status == http::StatusCode::UNAUTHORIZED && !had_auth {
                " (the daemon keeps registry credentials in memory only, from the image's last \
                 pull: `docker pull` it again, logged in)"
            } else {
                ""
            };
            ApiError::internal(format!(
                "image {}: the host's layer store is damaged ({what}) and \
                 fetching the image again failed: {}{hint}",
                image.name, e.message
            ))
        })?;
        let (st, r) = (self.store.clone(), rec.clone());
        let again = tokio::task::spawn_blocking(move || st.check(&r.id, &r.layers, &r.diff_ids))
            .await
            .map_err(|e| ApiError::internal(format!("store check task: {e}")))?;
        if let Some(d) = again.first() {
            return Err(ApiError::internal(format!(
                "image {}: still damaged in the host's layer store after fetching it again: {d}",
                image.name
            )));
        }
        Ok(rec)
    }

    /// [`pull`](Self::pull) without touching the remembered credentials.
    async fn fetch(&self, name: &str, auth: Option<Credentials>) -> ApiResult<ImageRecord> {
        let _one = self.pulling.lock().await;
        let r = Reference::parse(name).map_err(|e| ApiError::bad_request(e.to_string()))?;
        let err = |e| api_error(name, e);
        let mut s = self.registry.session(&r, auth);
        let (manifest, _, digest) = s.manifest(r.object()).await.map_err(err)?;
        let cdesc = manifest
            .config
            .clone()
            .ok_or_else(|| ApiError::internal(format!("{name}: manifest without a config")))?;
        let cbytes = s.blob_bytes(&cdesc).await.map_err(err)?;
        self.store
            .put_bytes(&cdesc.digest, &cbytes)
            .map_err(|e| ApiError::internal(format!("{e:#}")))?;
        let config: serde_json::Value = serde_json::from_slice(&cbytes)
            .map_err(|e| ApiError::internal(format!("image config {}: {e}", cdesc.digest)))?;
        let diff_ids: Vec<String> = config["rootfs"]["diff_ids"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|d| d.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        if diff_ids.len() != manifest.layers.len() {
            return Err(ApiError::internal(format!(
                "image config {}: {} diff_ids for {} layers",
                cdesc.digest,
                diff_ids.len(),
                manifest.layers.len()
            )));
        }
        let mut lowers: Vec<PathBuf> = Vec::new();
        for (layer, diff_id) in manifest.layers.iter().zip(&diff_ids) {
            self.store.fetch_blob(&mut s, layer).await.map_err(|e| {
                match e.downcast::<RegistryError>() {
                    Ok(e) => err(e),
                    Err(e) => ApiError::internal(format!("{e:#}")),
                }
            })?;
            let (st, d, di, lw) = (
                self.store.clone(),
                layer.digest.clone(),
                diff_id.clone(),
                lowers.clone(),
            );
            tokio::task::spawn_blocking(move || st.unpack(&d, &di, &lw))
                .await
                .map_err(|e| ApiError::internal(format!("unpack task: {e}")))?
                .map_err(|e| ApiError::internal(format!("{e:#}")))?;
            lowers.insert(0, self.store.layer_path(diff_id));
        }
        let rec = ImageRecord {
            name: record_name(&r),
            digest,
            id: cdesc.digest.clone(),
            created: config["created"].as_str().unwrap_or_default().to_string(),
            size: manifest.layers.iter().map(|l| l.size as i64).sum(),
            config: serde_json::from_value(config["config"].clone()).unwrap_or_default(),
            layers: manifest.layers.iter().map(|l| l.digest.clone()).collect(),
            diff_ids,
            source: None,
        };
        let mut list = self.list.lock().unwrap_or_else(PoisonError::into_inner);
        list.retain(|i| i.name != rec.name);
        list.push(rec.clone());
        if let Err(e) = self.save(&list) {
            eprintln!(
                "vmd: WARNING: writing {}: {e} (the image {} is recorded in memory only)",
                self.path.display(),
                rec.name
            );
        }
        Ok(rec)
    }
}

/// The key credentials are remembered under: registry and repository.
fn repo_key(r: &Reference) -> String {
    format!("{}/{}", r.registry, r.repository)
}

fn find_in(list: &[ImageRecord], name: &str) -> Option<ImageRecord> {
    let normalized = Reference::parse(name).ok().map(|r| record_name(&r));
    list.iter()
        .find(|i| Some(&i.name) == normalized.as_ref() || i.name == name)
        .or_else(|| {
            let n = name.trim_start_matches("sha256:");
            (n.len() >= 6)
                .then(|| {
                    list.iter()
                        .find(|i| i.id.trim_start_matches("sha256:").starts_with(n))
                })
                .flatten()
        })
        .cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refs() {
        let name = |s: &str| record_name(&Reference::parse(s).unwrap());
        assert_eq!(
            name("127.0.0.1:5000/busybox"),
            "127.0.0.1:5000/busybox:latest"
        );
        assert_eq!(name("busybox:1"), "busybox:1");
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(name(&format!("busybox@{d}")), format!("busybox@{d}"));
        assert_eq!(
            guest_ref(&format!("127.0.0.1:5000/a@{d}")),
            format!("10.0.2.2:5000/a@{d}")
        );
        assert_eq!(guest_ref("127.0.0.1:5000/a/b:v2"), "10.0.2.2:5000/a/b:v2");
        assert_eq!(guest_ref("localhost:5000/a"), "10.0.2.2:5000/a:latest");
        assert_eq!(guest_ref("example.org/a:1"), "example.org/a:1");
    }

    /// A registry on 127.0.0.1 that wants a bearer token (as Docker Hub does): every /v2/
    /// request without `Authorization: Bearer <TOKEN>` gets a 401 with a challenge naming
    /// the token endpoint, which hands out the token for the scope asked. It serves an OCI
    /// index whose linux/amd64 entry is a one-layer image.
    struct TokenRegistry {
        port: u16,
        /// Query strings the token endpoint was called with.
        token_requests: std::sync::Arc<Mutex<Vec<String>>>,
        /// The `User-Agent` of every request.
        user_agents: std::sync::Arc<Mutex<Vec<String>>>,
        config_digest: String,
        layer: (Vec<u8>, String, String),
    }

    const TOKEN: &str = "t0ken-for-pull";

    fn sha(b: &[u8]) -> String {
        use sha2::Digest;
        format!("sha256:{}", hex::encode(sha2::Sha256::digest(b)))
    }

    impl TokenRegistry {
        async fn start() -> TokenRegistry {
            TokenRegistry::start_with(None).await
        }

        /// With `login`, the token endpoint hands out a token only for those credentials
        /// (basic auth), as a private repository's does.
        async fn start_with(login: Option<(&'static str, &'static str)>) -> TokenRegistry {
            use base64::Engine as _;
            let want_basic = login.map(|(u, p)| {
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
                )
            });
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = listener.local_addr().unwrap().port();
            let layer =
                crate::store::tests::test_layer("etc/motd", b"hello from a token registry\n");
            let config = serde_json::to_vec(&serde_json::json!({
                "architecture": "amd64", "os": "linux", "created": "2024-01-01T00:00:00Z",
                "config": {"Cmd": ["cat", "/etc/motd"]},
                "rootfs": {"type": "layers", "diff_ids": [layer.2]},
            }))
            .unwrap();
            let config_digest = sha(&config);
            let manifest = serde_json::to_vec(&serde_json::json!({
                "schemaVersion": 2, "mediaType": registry::client::MT_DOCKER_MANIFEST,
                "config": {
                    "mediaType": "application/vnd.docker.container.image.v1+json",
                    "digest": config_digest,
                    "size": config.len(),
                },
                "layers": [{
                    "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                    "digest": layer.1,
                    "size": layer.0.len(),
                }],
            }))
            .unwrap();
            let mdigest = sha(&manifest);
            let index = serde_json::to_vec(&serde_json::json!({
                "schemaVersion": 2, "mediaType": registry::client::MT_OCI_INDEX,
                "manifests": [
                    {"mediaType": registry::client::MT_DOCKER_MANIFEST, "digest": sha(b"other"),
                     "size": 5, "platform": {"architecture": "arm64", "os": "linux"}},
                    {"mediaType": registry::client::MT_DOCKER_MANIFEST, "digest": mdigest,
                     "size": manifest.len(), "platform": {"architecture": "amd64", "os": "linux"}},
                ],
            }))
            .unwrap();
            let mut routes: std::collections::HashMap<String, (&'static str, Vec<u8>)> =
                std::collections::HashMap::new();
            routes.insert(
                "/v2/team/app/manifests/latest".into(),
                (registry::client::MT_OCI_INDEX, index),
            );
            routes.insert(
                format!("/v2/team/app/manifests/{mdigest}"),
                (registry::client::MT_DOCKER_MANIFEST, manifest),
            );
            routes.insert(
                format!("/v2/team/app/blobs/{config_digest}"),
                ("application/octet-stream", config),
            );
            routes.insert(
                format!("/v2/team/app/blobs/{}", layer.1),
                ("application/octet-stream", layer.0.clone()),
            );
            let token_requests = std::sync::Arc::new(Mutex::new(Vec::new()));
            let user_agents = std::sync::Arc::new(Mutex::new(Vec::new()));
            let (seen, agents) = (token_requests.clone(), user_agents.clone());
            tokio::spawn(async move {
                loop {
                    let Ok((mut sock, _)) = listener.accept().await else {
                        return;
                    };
                    let (routes, seen, agents, want_basic) = (
                        routes.clone(),
                        seen.clone(),
                        agents.clone(),
                        want_basic.clone(),
                    );
                    tokio::spawn(async move {
                        let mut req = Vec::new();
                        let mut buf = [0u8; 4096];
                        while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                            match sock.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => req.extend_from_slice(&buf[..n]),
                            }
                        }
                        let head = String::from_utf8_lossy(&req).to_string();
                        let target = head.split_whitespace().nth(1).unwrap_or("").to_string();
                        agents
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .extend(head.lines().filter_map(|l| {
                                l.split_once(':')
                                    .filter(|(k, _)| k.eq_ignore_ascii_case("user-agent"))
                                    .map(|(_, v)| v.trim().to_string())
                            }));
                        let authorized = head.lines().any(|l| {
                            l.to_ascii_lowercase().starts_with("authorization:")
                                && l.ends_with(&format!("Bearer {TOKEN}"))
                        });
                        let basic_ok = match &want_basic {
                            None => true,
                            Some(b) => head.lines().any(|l| {
                                l.to_ascii_lowercase().starts_with("authorization:")
                                    && l.ends_with(b.as_str())
                            }),
                        };
                        let (status, ctype, body, extra) = if let Some(q) =
                            target.strip_prefix("/token?")
                        {
                            seen.lock()
                                .unwrap_or_else(PoisonError::into_inner)
                                .push(q.to_string());
                            if !basic_ok {
                                (
                                    "401 Unauthorized",
                                    "application/json",
                                    b"{\"details\":\"incorrect username or password\"}".to_vec(),
                                    String::new(),
                                )
                            } else {
                                (
                                    "200 OK",
                                    "application/json",
                                    format!("{{\"token\":\"{TOKEN}\"}}").into_bytes(),
                                    String::new(),
                                )
                            }
                        } else if !authorized {
                            let ch = format!(
                                "WWW-Authenticate: Bearer \
                                 realm=\"http://127.0.0.1:{port}/token\",\
                                 service=\"test-registry\",scope=\"repository:team/app:pull\"\r\n"
                            );
                            (
                                "401 Unauthorized",
                                "application/json",
                                b"{\"errors\":[{\"code\":\"UNAUTHORIZED\"}]}".to_vec(),
                                ch,
                            )
                        } else if let Some((ct, b)) = routes.get(&target) {
                            ("200 OK", *ct, b.clone(), String::new())
                        } else {
                            (
                                "404 Not Found",
                                "application/json",
                                b"{}".to_vec(),
                                String::new(),
                            )
                        };
                        let head = format!(
                            "HTTP/1.1 {status}\r\nContent-Type: \
                             {ctype}\r\nContent-Length: {}\r\n{extra}Connection: \
                             close\r\n\r\n",
                            body.len()
                        );
                        let _ = sock.write_all(head.as_bytes()).await;
                        let _ = sock.write_all(&body).await;
                        let _ = sock.shutdown().await;
                    });
                }
            });
            TokenRegistry {
                port,
                token_requests,
                user_agents,
                config_digest,
                layer,
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pulls_from_a_registry_that_wants_a_bearer_token() {
        let reg = TokenRegistry::start().await;
        let d = tempfile::tempdir().unwrap();
        let store = LayerStore::open(&d.path().join("store")).unwrap();
        let images = Images::open(d.path().join("images.json"), store.clone(), Vec::new());
        let name = format!("127.0.0.1:{}/team/app", reg.port);
        let rec = images
            .pull(&name, None)
            .await
            .unwrap_or_else(|e| panic!("pull: {}", e.message));
        // The token was asked for the repository's pull scope, at the challenge's service.
        let asked = reg
            .token_requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        assert!(!asked.is_empty(), "the token endpoint was never called");
        assert!(
            asked[0].contains("service=test-registry")
                && asked[0].contains("scope=repository%3Ateam%2Fapp%3Apull"),
            "{asked:?}"
        );
        // Every request named the daemon, not the guest engine.
        let agents = reg
            .user_agents
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        assert!(agents.len() >= 5, "{agents:?}");
        assert!(
            agents
                .iter()
                .all(|a| *a == format!("axion-vmd/{}", env!("CARGO_PKG_VERSION"))),
            "{agents:?}"
        );
        // The index was resolved to linux/amd64, and everything landed in the store.
        assert_eq!(rec.name, format!("{name}:latest"));
        assert_eq!(rec.id, reg.config_digest);
        assert_eq!(rec.layers, vec![reg.layer.1.clone()]);
        assert_eq!(rec.diff_ids, vec![reg.layer.2.clone()]);
        assert_eq!(
            rec.config.cmd,
            Some(vec!["cat".to_string(), "/etc/motd".to_string()])
        );
        assert_eq!(
            std::fs::read(store.layer_path(&reg.layer.2).join("etc/motd")).unwrap(),
            b"hello from a token registry\n"
        );
        assert_eq!(store.check(&rec.id, &rec.layers, &rec.diff_ids), vec![]);
        assert_eq!(images.find(&name).map(|r| r.id), Some(rec.id.clone()));
        // Garbage collection: a container's pin keeps the image's files after its rmi ...
        let ctr = "c".repeat(64);
        let (pinned, pin) = images.find_and_pin(&name, &ctr).unwrap();
        assert_eq!(pinned.id, rec.id);
        pin.keep();
        assert_eq!(
            images.remove(&name).unwrap().map(|r| r.id),
            Some(rec.id.clone())
        );
        assert!(images.find(&name).is_none());
        assert_eq!(images.collect().await.unwrap(), Collected::default());
        assert_eq!(store.check(&rec.id, &rec.layers, &rec.diff_ids), vec![]);
        // ... until its VM is gone; a restarted daemon reads the removal from disk.
        images.unpin(&ctr);
        let got = images.collect().await.unwrap();
        assert_eq!((got.blobs.len(), got.layers.len()), (2, 1), "{got:?}");
        assert!(
            !store.blob_path(&rec.layers[0]).exists()
                && !store.layer_path(&rec.diff_ids[0]).exists()
        );
        assert!(
            Images::open(d.path().join("images.json"), store.clone(), Vec::new())
                .all()
                .is_empty()
        );
        // A pin of a failed create (dropped without keep) is released at once.
        let rec = images
            .pull(&name, None)
            .await
            .unwrap_or_else(|e| panic!("pull: {}", e.message));
        drop(images.find_and_pin(&name, &ctr));
        images.remove(&name).unwrap();
        assert_eq!(images.collect().await.unwrap().layers, rec.diff_ids);
        // A missing tag is a 404 with Docker's wording.
        let e = images
            .pull(&format!("{name}:nope"), None)
            .await
            .unwrap_err();
        assert_eq!(e.status, http::StatusCode::NOT_FOUND, "{}", e.message);
        assert!(e.message.contains("manifest unknown"), "{}", e.message);
    }

    /// A damaged image of a private repository is fetched again with the credentials of
    /// its pull, which the daemon keeps in memory only.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn repairs_a_private_image_with_the_credentials_of_its_pull() {
        let reg = TokenRegistry::start_with(Some(("ann", "pa55-w0rd"))).await;
        let d = tempfile::tempdir().unwrap();
        let store = LayerStore::open(&d.path().join("store")).unwrap();
        let images = Images::open(d.path().join("images.json"), store.clone(), Vec::new());
        let name = format!("127.0.0.1:{}/team/app", reg.port);
        // Without credentials (or with wrong ones) the registry refuses.
        let e = images.pull(&name, None).await.unwrap_err();
        assert_eq!(e.status, http::StatusCode::UNAUTHORIZED, "{}", e.message);
        let wrong = Credentials {
            username: "ann".into(),
            password: "nope".into(),
            identity_token: String::new(),
        };
        assert_eq!(
            images.pull(&name, Some(wrong)).await.unwrap_err().status,
            http::StatusCode::UNAUTHORIZED
        );
        let creds = Credentials {
            username: "ann".into(),
            password: "pa55-w0rd".into(),
            identity_token: String::new(),
        };
        let rec = images
            .pull(&name, Some(creds.clone()))
            .await
            .unwrap_or_else(|e| panic!("pull: {}", e.message));
        // No secret on disk.
        let on_disk = std::fs::read_to_string(d.path().join("images.json")).unwrap();
        assert!(
            !on_disk.contains("pa55-w0rd") && !on_disk.contains("ann"),
            "{on_disk}"
        );
        // Damage the layer's blob and its unpacked tree, then repair (the create path's step).
        std::fs::write(store.blob_path(&rec.layers[0]), b"garbage").unwrap();
        std::fs::write(
            store.layer_path(&rec.diff_ids[0]).join("etc/motd"),
            b"tampered\n",
        )
        .unwrap();
        let damage = store.check(&rec.id, &rec.layers, &rec.diff_ids);
        assert_eq!(damage.len(), 2, "{damage:?}");
        let tokens_before = reg
            .token_requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len();
        let fixed = images
            .repair(&rec, damage)
            .await
            .unwrap_or_else(|e| panic!("repair: {}", e.message));
        assert_eq!(fixed.id, rec.id);
        assert!(
            reg.token_requests
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .len()
                > tokens_before,
            "the repair never asked for a token"
        );
        assert_eq!(store.check(&rec.id, &rec.layers, &rec.diff_ids), vec![]);
        assert_eq!(
            std::fs::read(store.layer_path(&rec.diff_ids[0]).join("etc/motd")).unwrap(),
            b"hello from a token registry\n"
        );
        // Nothing damaged: nothing fetched.
        let n = reg
            .token_requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len();
        assert_eq!(images.repair(&rec, Vec::new()).await.unwrap().id, rec.id);
        assert_eq!(
            reg.token_requests
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .len(),
            n
        );
        // A restarted daemon has no credentials: the repair fails, says why and what to do,
        // and nothing damaged is left in the store.
        let restarted = Images::open(d.path().join("images.json"), store.clone(), Vec::new());
        assert_eq!(restarted.find(&name).map(|r| r.id), Some(rec.id.clone()));
        std::fs::write(store.blob_path(&rec.layers[0]), b"garbage").unwrap();
        let damage = store.check(&rec.id, &rec.layers, &rec.diff_ids);
        let e = restarted.repair(&rec, damage).await.unwrap_err();
        assert!(
            e.message.contains("damaged") && e.message.contains("docker pull"),
            "{}",
            e.message
        );
        assert!(!store.blob_path(&rec.layers[0]).exists());
        // A pull with the credentials gives them to it again.
        restarted
            .pull(&name, Some(creds))
            .await
            .unwrap_or_else(|e| panic!("pull: {}", e.message));
        std::fs::write(store.blob_path(&rec.layers[0]), b"garbage").unwrap();
        let damage = store.check(&rec.id, &rec.layers, &rec.diff_ids);
        restarted
            .repair(&rec, damage)
            .await
            .unwrap_or_else(|e| panic!("repair after a new pull: {}", e.message));
        assert_eq!(store.check(&rec.id, &rec.layers, &rec.diff_ids), vec![]);
    }

    /// `--insecure-registry`: plain HTTP for the registries given, and `docker info`'s
    /// `RegistryConfig` in the shape the docker CLI reads.
    #[test]
    fn insecure_registries() {
        let d = tempfile::tempdir().unwrap();
        let store = LayerStore::open(&d.path().join("store")).unwrap();
        let images = Images::open(
            d.path().join("images.json"),
            store.clone(),
            vec!["myreg:5000".into(), "http://10.9.0.0/16".into()],
        );
        let cfg = serde_json::to_value(images.registry_config()).unwrap();
        assert_eq!(
            cfg["InsecureRegistryCIDRs"],
            serde_json::json!(["127.0.0.0/8", "::1/128", "10.9.0.0/16"])
        );
        assert_eq!(
            cfg["IndexConfigs"]["myreg:5000"],
            serde_json::json!({
                "Name": "myreg:5000", "Mirrors": [], "Secure": false, "Official": false
            })
        );
        assert_eq!(cfg["IndexConfigs"][registry::DOCKER_HUB]["Secure"], true);
        assert_eq!(cfg["IndexConfigs"].as_object().unwrap().len(), 2, "{cfg}");
        assert_eq!(images.registry.scheme("myreg:5000"), "http");
        assert_eq!(images.registry.scheme("10.9.3.4:5000"), "http");
        assert_eq!(images.registry.scheme("other:5000"), "https");
        let none = Images::open(d.path().join("images.json"), store, Vec::new());
        assert_eq!(none.registry.scheme("myreg:5000"), "https");
        assert_eq!(
            serde_json::to_value(none.registry_config()).unwrap()["InsecureRegistryCIDRs"],
            serde_json::json!(["127.0.0.0/8", "::1/128"])
        );
    }
}
