//! The daemon's image list. `docker pull` resolves the reference on the host (manifest,
//! image index → linux/amd64, config blob), fetches every layer blob into the host's
//! [`LayerStore`] and unpacks it there once; the VMs use those layers over 9p. Records
//! live in `images.json` in the state directory. (A VM's engine can still pull from the
//! registry itself, a registry on the host's 127.0.0.1 being 10.0.2.2 from inside, see
//! [`guest_ref`]: the daemon falls back to that only for a record from before the store.)

use crate::store::LayerStore;
use docker_api::types::*;
use docker_api::{ApiError, ApiResult};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Mutex;

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
}

/// A parsed `[registry/]repo[:tag|@digest]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ref {
    pub registry: String,
    pub repo: String,
    pub tag: String,
}

impl Ref {
    pub fn parse(s: &str) -> Option<Ref> {
        if s.is_empty() || s.contains(char::is_whitespace) {
            return None;
        }
        let (registry, rest) = match s.split_once('/') {
            Some((first, rest)) if first.contains('.') || first.contains(':') || first == "localhost" => (first.to_string(), rest.to_string()),
            _ => ("docker.io".to_string(), s.to_string()),
        };
        let (repo, tag) = if let Some((r, d)) = rest.split_once('@') {
            (r.to_string(), d.to_string())
        } else {
            match rest.rsplit_once(':') {
                Some((r, t)) if !t.contains('/') => (r.to_string(), t.to_string()),
                _ => (rest.clone(), "latest".to_string()),
            }
        };
        let repo = if registry == "docker.io" && !repo.contains('/') { format!("library/{repo}") } else { repo };
        Some(Ref { registry, repo, tag })
    }

    /// The name as `docker images` shows it.
    pub fn display(&self) -> String {
        let repo = if self.registry == "docker.io" { self.repo.trim_start_matches("library/").to_string() } else { format!("{}/{}", self.registry, self.repo) };
        let sep = if self.tag.starts_with("sha256:") { '@' } else { ':' };
        format!("{repo}{sep}{}", self.tag)
    }

    fn is_local(&self) -> bool {
        let h = self.registry.rsplit_once(':').map(|(h, _)| h).unwrap_or(&self.registry);
        h == "localhost" || h.starts_with("127.")
    }
}

/// The reference as the VM's engine must pull it: a registry on the host's loopback is
/// 10.0.2.2 on QEMU's user network.
pub fn guest_ref(name: &str) -> String {
    match Ref::parse(name) {
        Some(r) if r.is_local() => {
            let port = r.registry.rsplit_once(':').map(|(_, p)| format!(":{p}")).unwrap_or_default();
            let sep = if r.tag.starts_with("sha256:") { '@' } else { ':' };
            format!("10.0.2.2{port}/{}{sep}{}", r.repo, r.tag)
        }
        _ => name.to_string(),
    }
}

pub struct Images {
    path: PathBuf,
    list: Mutex<Vec<ImageRecord>>,
    http: reqwest::Client,
    pub store: LayerStore,
    /// One pull at a time: two pulls of images sharing a layer would unpack it twice.
    pulling: tokio::sync::Mutex<()>,
}

const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";

impl Images {
    pub fn open(path: PathBuf, store: LayerStore) -> Images {
        let list = std::fs::read(&path).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
        let http = reqwest::Client::builder().connect_timeout(std::time::Duration::from_secs(15)).build().expect("reqwest client");
        Images { path, list: Mutex::new(list), http, store, pulling: tokio::sync::Mutex::new(()) }
    }

    fn save(&self, list: &[ImageRecord]) {
        if let Ok(b) = serde_json::to_vec_pretty(list) {
            let tmp = self.path.with_extension("tmp");
            if std::fs::write(&tmp, b).is_ok() {
                let _ = std::fs::rename(tmp, &self.path);
            }
        }
    }

    pub fn all(&self) -> Vec<ImageRecord> {
        self.list.lock().expect("images lock").clone()
    }

    /// The record for a name, a full or short id.
    pub fn find(&self, name: &str) -> Option<ImageRecord> {
        let list = self.list.lock().expect("images lock");
        let normalized = Ref::parse(name).map(|r| r.display());
        list.iter()
            .find(|i| Some(&i.name) == normalized.as_ref() || i.name == name)
            .or_else(|| {
                let n = name.trim_start_matches("sha256:");
                (n.len() >= 6).then(|| list.iter().find(|i| i.id.trim_start_matches("sha256:").starts_with(n))).flatten()
            })
            .cloned()
    }

    pub fn remove(&self, name: &str) -> Option<ImageRecord> {
        let rec = self.find(name)?;
        let mut list = self.list.lock().expect("images lock");
        list.retain(|i| i.name != rec.name);
        self.save(&list);
        Some(rec)
    }

    async fn get(&self, url: &str, accept: &str) -> ApiResult<reqwest::Response> {
        let r = self
            .http
            .get(url)
            .header("Accept", accept)
            .send()
            .await
            .map_err(|e| ApiError::internal(format!("GET {url}: {e}")))?;
        match r.status().as_u16() {
            200 => Ok(r),
            404 => Err(ApiError::not_found(format!("manifest unknown: {url} was not found"))),
            401 => Err(ApiError::new(http::StatusCode::UNAUTHORIZED, format!("{url}: the registry wants credentials; this daemon pulls anonymously only"))),
            s => Err(ApiError::internal(format!("GET {url}: HTTP {s}"))),
        }
    }

    /// Resolves `name` at its registry, stores its config and layers (fetched, verified,
    /// unpacked; what is stored and intact already is kept) and records it.
    pub async fn pull(&self, name: &str) -> ApiResult<ImageRecord> {
        let _one = self.pulling.lock().await;
        let r = Ref::parse(name).ok_or_else(|| ApiError::bad_request(format!("invalid reference format: {name:?}")))?;
        let scheme = if r.is_local() { "http" } else { "https" };
        let host = if r.registry == "docker.io" { "registry-1.docker.io" } else { r.registry.as_str() };
        let base = format!("{scheme}://{host}/v2/{}", r.repo);
        let mut url = format!("{base}/manifests/{}", r.tag);
        let mut resp = self.get(&url, ACCEPT).await?;
        let mut digest = resp.headers().get("docker-content-digest").and_then(|v| v.to_str().ok()).map(str::to_string);
        let mut manifest: serde_json::Value = resp.json().await.map_err(|e| ApiError::internal(format!("{url}: {e}")))?;
        if let Some(ms) = manifest["manifests"].as_array() {
            let m = ms
                .iter()
                .find(|m| m["platform"]["os"] == "linux" && m["platform"]["architecture"] == "amd64")
                .ok_or_else(|| ApiError::not_found(format!("{name}: no linux/amd64 image in the index")))?;
            let d = m["digest"].as_str().unwrap_or_default().to_string();
            url = format!("{base}/manifests/{d}");
            resp = self.get(&url, ACCEPT).await?;
            digest = Some(d);
            manifest = resp.json().await.map_err(|e| ApiError::internal(format!("{url}: {e}")))?;
        }
        let config_digest = manifest["config"]["digest"].as_str().ok_or_else(|| ApiError::internal(format!("{url}: manifest without a config")))?.to_string();
        let layers: Vec<String> = manifest["layers"].as_array().map(|a| a.iter().filter_map(|l| l["digest"].as_str().map(str::to_string)).collect()).unwrap_or_default();
        let size = manifest["layers"].as_array().map(|a| a.iter().filter_map(|l| l["size"].as_i64()).sum()).unwrap_or(0);
        let curl = format!("{base}/blobs/{config_digest}");
        let cbytes = self.get(&curl, "*/*").await?.bytes().await.map_err(|e| ApiError::internal(format!("{curl}: {e}")))?;
        self.store.put_bytes(&config_digest, &cbytes).map_err(|e| ApiError::internal(format!("{e:#}")))?;
        let config: serde_json::Value = serde_json::from_slice(&cbytes).map_err(|e| ApiError::internal(format!("{curl}: {e}")))?;
        let diff_ids: Vec<String> = config["rootfs"]["diff_ids"].as_array().map(|a| a.iter().filter_map(|d| d.as_str().map(str::to_string)).collect()).unwrap_or_default();
        if diff_ids.len() != layers.len() {
            return Err(ApiError::internal(format!("{curl}: {} diff_ids for {} layers", diff_ids.len(), layers.len())));
        }
        let mut lowers: Vec<PathBuf> = Vec::new();
        for (digest, diff_id) in layers.iter().zip(&diff_ids) {
            let burl = format!("{base}/blobs/{digest}");
            self.store.fetch_blob(&self.http, &burl, digest).await.map_err(|e| ApiError::internal(format!("{e:#}")))?;
            let (st, d, di, lw) = (self.store.clone(), digest.clone(), diff_id.clone(), lowers.clone());
            tokio::task::spawn_blocking(move || st.unpack(&d, &di, &lw))
                .await
                .map_err(|e| ApiError::internal(format!("unpack task: {e}")))?
                .map_err(|e| ApiError::internal(format!("{e:#}")))?;
            lowers.insert(0, self.store.layer_path(diff_id));
        }
        let rec = ImageRecord {
            name: r.display(),
            digest: digest.unwrap_or_default(),
            id: config_digest,
            created: config["created"].as_str().unwrap_or_default().to_string(),
            size,
            config: serde_json::from_value(config["config"].clone()).unwrap_or_default(),
            layers,
            diff_ids,
        };
        let mut list = self.list.lock().expect("images lock");
        list.retain(|i| i.name != rec.name);
        list.push(rec.clone());
        self.save(&list);
        Ok(rec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refs() {
        let r = Ref::parse("127.0.0.1:5000/busybox").unwrap();
        assert_eq!((r.registry.as_str(), r.repo.as_str(), r.tag.as_str()), ("127.0.0.1:5000", "busybox", "latest"));
        assert_eq!(r.display(), "127.0.0.1:5000/busybox:latest");
        assert_eq!(Ref::parse("busybox:1").unwrap().display(), "busybox:1");
        assert_eq!(Ref::parse("busybox").unwrap().repo, "library/busybox");
        assert_eq!(guest_ref("127.0.0.1:5000/a/b:v2"), "10.0.2.2:5000/a/b:v2");
        assert_eq!(guest_ref("localhost:5000/a"), "10.0.2.2:5000/a:latest");
        assert_eq!(guest_ref("example.org/a:1"), "example.org/a:1");
    }
}
