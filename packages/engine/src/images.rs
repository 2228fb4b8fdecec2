//! The image store under `<data-root>/images`:
//! - `blobs/sha256/<hex>`: manifests and image configs (content-addressed);
//! - `layers/<diff-id hex>/`: unpacked layers (overlayfs lower dirs), renamed into place
//!   only after the whole layer unpacked and its diff-id matched;
//! - `refs.json`: `name:tag` → image id (the config digest) and repo digests.
//!
//! A second, read-only store may be shared by the host (`--image-share DIR`: axion-vmd's
//! layer store over 9p, see host/vmd): `DIR/blobs/sha256/<hex>` (image configs, layer
//! blobs) and `DIR/layers/<diff-id hex>/` (unpacked layers, verified by the host). An image
//! id (`sha256:<config digest>`) whose config is there resolves without a pull, and its
//! layers are used in place as overlayfs lower dirs; a layer unpacked locally wins.

pub mod changes;
mod layers;
mod load;

pub use layers::diff_tar;

use crate::unpack;
use docker_api::types::{ImageRunConfig, ProgressMessage};
use registry::{Reference, Session};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use tokio::sync::mpsc;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(transparent)]
    Registry(#[from] registry::RegistryError),
    #[error("layer {digest}: {source}")]
    Unpack {
        digest: String,
        source: unpack::UnpackError,
    },
    #[error("layer {digest}: uncompressed content has diff-id {actual}, config says {expected}")]
    DiffId {
        digest: String,
        expected: String,
        actual: String,
    },
    #[error("image config {digest}: {msg}")]
    Config { digest: String, msg: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

fn io_err(p: &Path) -> impl FnOnce(std::io::Error) -> ImageError + '_ {
    move |source| ImageError::Io {
        path: p.display().to_string(),
        source,
    }
}

/// The parts of an OCI image config we use.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct ImageConfig {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub created: Option<String>,
    #[serde(default)]
    pub config: ImageRunConfig,
    pub rootfs: RootFs,
    #[serde(default)]
    pub history: Vec<HistoryEntry>,
    /// The image a commit was made from (dockerd's `parent`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
}

/// One `history` entry of an image config.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct HistoryEntry {
    #[serde(default)]
    pub created: Option<String>,
    #[serde(default)]
    pub created_by: Option<String>,
    #[serde(default)]
    pub comment: Option<String>,
    #[serde(default)]
    pub empty_layer: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct RootFs {
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub diff_ids: Vec<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Refs {
    /// "name:tag" → image id
    tags: BTreeMap<String, String>,
    /// image id → ["name@sha256:manifest"]
    digests: BTreeMap<String, Vec<String>>,
}

pub struct Store {
    root: PathBuf,
    refs: Mutex<Refs>,
    /// The host's read-only shared store, if any.
    shared: Option<PathBuf>,
}

pub struct Image {
    pub id: String,
    pub config: ImageConfig,
    pub tags: Vec<String>,
    pub digests: Vec<String>,
    pub size: i64,
}

fn hex_of(d: &str) -> &str {
    d.strip_prefix("sha256:").unwrap_or(d)
}

impl Store {
    /// With a host's shared read-only store (see the module doc).
    pub fn with_share(mut self, shared: Option<PathBuf>) -> Self {
        self.shared = shared;
        self
    }

    pub fn open(root: &Path) -> Result<Self, ImageError> {
        for d in ["blobs/sha256", "layers", "tmp"] {
            let p = root.join(d);
            std::fs::create_dir_all(&p).map_err(io_err(&p))?;
        }
        // Leftovers of interrupted pulls never count as layers.
        let tmp = root.join("tmp");
        if let Ok(rd) = std::fs::read_dir(&tmp) {
            for e in rd.flatten() {
                let _ =
                    std::fs::remove_dir_all(e.path()).or_else(|_| std::fs::remove_file(e.path()));
            }
        }
        let refs_path = root.join("refs.json");
        let refs = match std::fs::read(&refs_path) {
            Ok(b) => serde_json::from_slice(&b).unwrap_or_default(),
            Err(_) => Refs::default(),
        };
        Ok(Store {
            root: root.to_path_buf(),
            refs: Mutex::new(refs),
            shared: None,
        })
    }

    fn save(&self, refs: &Refs) -> Result<(), ImageError> {
        let p = self.root.join("refs.json");
        let tmp = self.root.join("refs.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(refs).unwrap_or_default())
            .map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, &p).map_err(io_err(&p))
    }

    pub fn blob_path(&self, digest: &str) -> PathBuf {
        self.root.join("blobs/sha256").join(hex_of(digest))
    }

    pub fn layer_path(&self, diff_id: &str) -> PathBuf {
        self.root.join("layers").join(hex_of(diff_id))
    }

    /// The unpacked layer: the local one, else the host's shared one.
    fn lower_path(&self, diff_id: &str) -> PathBuf {
        let local = self.layer_path(diff_id);
        match &self.shared {
            Some(s) if !local.is_dir() => s.join("layers").join(hex_of(diff_id)),
            _ => local,
        }
    }

    pub fn config(&self, id: &str) -> Option<ImageConfig> {
        let b = std::fs::read(self.blob_path(id))
            .ok()
            .or_else(|| self.shared_config(id))?;
        serde_json::from_slice(&b).ok()
    }

    /// The config bytes of image `id` from the host's share, if there and intact.
    fn shared_config(&self, id: &str) -> Option<Vec<u8>> {
        let h = hex_of(id);
        if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let b = std::fs::read(self.shared.as_ref()?.join("blobs/sha256").join(h)).ok()?;
        (hex::encode(Sha256::digest(&b)) == h).then_some(b)
    }

    /// Resolves a user's name for an image: `name[:tag]`, a full or short id.
    pub fn resolve(&self, name: &str) -> Option<String> {
        let refs = self
            .refs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Ok(r) = Reference::parse(name) {
            if let Some(t) = r.tagged() {
                if r.digest.is_none() {
                    if let Some(id) = refs.tags.get(&t) {
                        return Some(id.clone());
                    }
                }
            }
            if let Some(d) = &r.digest {
                let want = format!("{}@{d}", r.familiar_name());
                for (id, ds) in &refs.digests {
                    if ds.contains(&want) {
                        return Some(id.clone());
                    }
                }
            }
        }
        let h = name.strip_prefix("sha256:").unwrap_or(name);
        // A full id of an image in the host's share.
        if self.shared_config(h).is_some() {
            return Some(format!("sha256:{h}"));
        }
        if h.len() >= 4 && h.bytes().all(|b| b.is_ascii_hexdigit()) {
            let mut ids: Vec<String> = refs
                .tags
                .values()
                .chain(refs.digests.keys())
                .cloned()
                .collect();
            ids.sort();
            ids.dedup();
            let m: Vec<_> = ids
                .into_iter()
                .filter(|id| hex_of(id).starts_with(h))
                .collect();
            if m.len() == 1 {
                return Some(m[0].clone());
            }
        }
        None
    }

    pub fn image(&self, id: &str) -> Option<Image> {
        let config = self.config(id)?;
        let refs = self
            .refs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let tags = refs
            .tags
            .iter()
            .filter(|(_, v)| *v == id)
            .map(|(k, _)| k.clone())
            .collect();
        let digests = refs.digests.get(id).cloned().unwrap_or_default();
        drop(refs);
        let size = config
            .rootfs
            .diff_ids
            .iter()
            .map(|d| dir_size(&self.lower_path(d)))
            .sum();
        Some(Image {
            id: id.to_string(),
            config,
            tags,
            digests,
            size,
        })
    }

    pub fn list(&self) -> Vec<Image> {
        self.ids().iter().filter_map(|id| self.image(id)).collect()
    }

    /// Every image id the store knows: tagged, with repo digests, or stored untagged (a
    /// build's steps, a commit).
    pub fn ids(&self) -> Vec<String> {
        let refs = self
            .refs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut v: Vec<String> = refs
            .tags
            .values()
            .chain(refs.digests.keys())
            .cloned()
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// Whether `id` has neither a tag nor a repo digest.
    pub fn unnamed(&self, id: &str) -> bool {
        let refs = self
            .refs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        !refs.tags.values().any(|v| v == id) && refs.digests.get(id).is_none_or(Vec::is_empty)
    }

    /// Whether another known image names `id` as its parent.
    pub fn has_children(&self, id: &str) -> bool {
        self.ids().iter().any(|o| {
            o != id
                && self
                    .config(o)
                    .is_some_and(|c| c.parent.as_deref() == Some(id))
        })
    }

    /// Lower dirs for overlayfs, top layer first. A layer that occurs twice (two build steps
    /// that changed nothing both add the empty layer) is kept at its topmost place only:
    /// overlayfs refuses a lower dir given twice (ELOOP), and `A over B over A` shows the
    /// same tree as `A over B` (the upper A re-adds all the lower one has).
    pub fn lowers(&self, id: &str) -> Option<Vec<PathBuf>> {
        let c = self.config(id)?;
        let mut seen = std::collections::HashSet::new();
        let v: Vec<PathBuf> = c
            .rootfs
            .diff_ids
            .iter()
            .rev()
            .filter(|d| seen.insert(d.as_str()))
            .map(|d| self.lower_path(d))
            .collect();
        v.iter().all(|p| p.is_dir()).then_some(v)
    }

    pub fn tag(&self, id: &str, tagged: &str) -> Result<(), ImageError> {
        let mut refs = self
            .refs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        refs.tags.insert(tagged.to_string(), id.to_string());
        self.save(&refs)
    }

    /// Removes a tag; returns whether the image id is now unreferenced.
    pub fn untag(&self, tagged: &str) -> Result<Option<(String, bool)>, ImageError> {
        let mut refs = self
            .refs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(id) = refs.tags.remove(tagged) else {
            return Ok(None);
        };
        let orphan = !refs.tags.values().any(|v| *v == id);
        if orphan {
            refs.digests.remove(&id);
        }
        self.save(&refs)?;
        Ok(Some((id, orphan)))
    }

    /// Drops an image id entirely (all tags) and its layers not used by other images.
    pub fn delete(&self, id: &str) -> Result<Vec<String>, ImageError> {
        let mut refs = self
            .refs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let untagged: Vec<String> = refs
            .tags
            .iter()
            .filter(|(_, v)| *v == id)
            .map(|(k, _)| k.clone())
            .collect();
        for t in &untagged {
            refs.tags.remove(t);
        }
        refs.digests.remove(id);
        self.save(&refs)?;
        // Untagged images (listed by id) keep their layers too.
        let others: Vec<String> = refs
            .tags
            .values()
            .chain(refs.digests.keys())
            .filter(|o| *o != id)
            .cloned()
            .collect();
        drop(refs);
        let mut keep = std::collections::HashSet::new();
        for o in others {
            if let Some(c) = self.config(&o) {
                keep.extend(c.rootfs.diff_ids);
            }
        }
        if let Some(c) = self.config(id) {
            for d in c.rootfs.diff_ids {
                if !keep.contains(&d) {
                    let _ = std::fs::remove_dir_all(self.layer_path(&d));
                    self.drop_source(&d);
                }
            }
        }
        let _ = std::fs::remove_file(self.blob_path(id));
        Ok(untagged)
    }

    /// Pulls `r`, reporting progress; returns the image id.
    pub async fn pull(
        &self,
        session: &mut Session<'_>,
        r: &Reference,
        tx: &mpsc::Sender<ProgressMessage>,
    ) -> Result<(String, bool), ImageError> {
        let say = |id: Option<&str>, s: String| {
            let _ = tx.try_send(ProgressMessage::status(id, s));
        };
        say(
            r.tag.as_deref().or(r.digest.as_deref()),
            format!("Pulling from {}", r.familiar_name()),
        );
        let (manifest, mbytes, mdigest) = session.manifest(r.object()).await?;
        let cdesc = manifest.config.clone().ok_or_else(|| ImageError::Config {
            digest: mdigest.clone(),
            msg: "the manifest has no config".into(),
        })?;
        let cbytes = session.blob_bytes(&cdesc).await?;
        let config: ImageConfig =
            serde_json::from_slice(&cbytes).map_err(|e| ImageError::Config {
                digest: cdesc.digest.clone(),
                msg: e.to_string(),
            })?;
        check_digests(
            &cdesc.digest,
            &config,
            manifest.layers.iter().map(|l| l.digest.as_str()),
        )?;
        if config.rootfs.diff_ids.len() != manifest.layers.len() {
            return Err(ImageError::Config {
                digest: cdesc.digest.clone(),
                msg: format!(
                    "{} diff_ids for {} layers",
                    config.rootfs.diff_ids.len(),
                    manifest.layers.len()
                ),
            });
        }
        let id = cdesc.digest.clone();
        let existed = self.config(&id).is_some() && self.lowers(&id).is_some();
        let mut lowers: Vec<PathBuf> = Vec::new();
        for (layer, diff_id) in manifest.layers.iter().zip(&config.rootfs.diff_ids) {
            let short = hex_of(&layer.digest)
                .get(..12)
                .unwrap_or(hex_of(&layer.digest));
            let dest = self.layer_path(diff_id);
            // Unpacked here already, or in the host's share.
            let have = self.lower_path(diff_id);
            if have.is_dir() {
                say(Some(short), "Already exists".into());
                lowers.insert(0, have);
                continue;
            }
            say(Some(short), "Pulling fs layer".into());
            let tmp_blob = self
                .root
                .join("tmp")
                .join(format!("blob-{}", hex_of(&layer.digest)));
            say(Some(short), "Downloading".into());
            let res = session.blob_to_file(layer, &tmp_blob).await;
            if let Err(e) = res {
                let _ = std::fs::remove_file(&tmp_blob);
                return Err(e.into());
            }
            say(Some(short), "Verifying Checksum".into());
            say(Some(short), "Download complete".into());
            say(Some(short), "Extracting".into());
            let (blob, diff, dest2, lw, digest) = (
                tmp_blob.clone(),
                diff_id.clone(),
                dest.clone(),
                lowers.clone(),
                layer.digest.clone(),
            );
            let tmp_dir = self
                .root
                .join("tmp")
                .join(format!("layer-{}", hex_of(diff_id)));
            let r = tokio::task::spawn_blocking(move || {
                unpack_verified(&blob, &tmp_dir, &dest2, &diff, &lw, &digest)
            })
            .await
            .unwrap_or_else(|e| {
                Err(ImageError::Config {
                    digest: layer.digest.clone(),
                    msg: format!("unpack task: {e}"),
                })
            });
            if r.is_ok() {
                // Kept for save and push (see layers.rs).
                self.record_source(diff_id, &tmp_blob, Some(&layer.media_type), false)?;
            }
            let _ = std::fs::remove_file(&tmp_blob);
            r?;
            say(Some(short), "Pull complete".into());
            lowers.insert(0, dest);
        }
        let cpath = self.blob_path(&id);
        std::fs::write(&cpath, &cbytes).map_err(io_err(&cpath))?;
        let mpath = self.blob_path(&mdigest);
        std::fs::write(&mpath, &mbytes).map_err(io_err(&mpath))?;
        {
            let mut refs = self
                .refs
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(t) = r.tagged() {
                refs.tags.insert(t, id.clone());
            }
            let rd = format!("{}@{mdigest}", r.familiar_name());
            let ds = refs.digests.entry(id.clone()).or_default();
            if !ds.contains(&rd) {
                ds.push(rd);
            }
            self.save(&refs)?;
        }
        say(None, format!("Digest: {mdigest}"));
        Ok((id, existed))
    }
}

/// Every diff-id of `config` and every layer digest must be `sha256:` and 64 lowercase hex
/// digits before any of them names a path: a diff-id `sha256:../../..` made
/// `layers/<hex>` the engine's own root, which was then used as a layer of the image (it
/// "already exists", so nothing was unpacked or checked).
fn check_digests<'a>(
    config_digest: &str,
    config: &'a ImageConfig,
    layers: impl IntoIterator<Item = &'a str>,
) -> Result<(), ImageError> {
    let bad = config
        .rootfs
        .diff_ids
        .iter()
        .map(String::as_str)
        .chain(layers)
        .find(|d| !registry::valid_digest(d));
    match bad {
        Some(d) => Err(ImageError::Config {
            digest: config_digest.to_string(),
            msg: format!(
                "{:?} is not a sha256 digest",
                d.chars().take(80).collect::<String>()
            ),
        }),
        None => Ok(()),
    }
}

/// Decompresses and unpacks a verified blob into `tmp`, checks the diff-id, then renames
/// `tmp` to `dest`. On any failure nothing is left at `dest`.
fn unpack_verified(
    blob: &Path,
    tmp: &Path,
    dest: &Path,
    diff_id: &str,
    lowers: &[PathBuf],
    digest: &str,
) -> Result<(), ImageError> {
    unpack::unpack_layer(blob, tmp, dest, diff_id, lowers)
        .map(|_| ())
        .map_err(|e| match e {
            unpack::LayerError::Unpack(source) => ImageError::Unpack {
                digest: digest.to_string(),
                source,
            },
            unpack::LayerError::DiffId { expected, actual } => ImageError::DiffId {
                digest: digest.to_string(),
                expected,
                actual,
            },
        })
}

pub fn dir_size(p: &Path) -> i64 {
    let mut total = 0i64;
    let mut stack = vec![p.to_path_buf()];
    while let Some(d) = stack.pop() {
        if let Ok(rd) = std::fs::read_dir(&d) {
            for e in rd.flatten() {
                if let Ok(m) = e.path().symlink_metadata() {
                    if m.is_dir() {
                        stack.push(e.path());
                    } else {
                        total += m.len() as i64;
                    }
                }
            }
        }
    }
    total
}
