//! The shared build cache: package cache entries (build.rs) as OCI artifacts in a registry,
//! so one machine's builds serve every other machine, CI runner and colleague.
//!
//! Where: `--cache REGISTRY/REPOSITORY` on `cargo xtask build|image`, else the environment's
//! `AXION_BUILD_CACHE`, else `build-cache.registry` in `~/.config/axion/config.toml`
//! (`$XDG_CONFIG_HOME`). Pushing is off unless asked for (`--cache-push`,
//! `AXION_BUILD_CACHE_PUSH=1`, `build-cache.push = true`): an untrusted machine only reads.
//!
//! One entry is the manifest `REGISTRY/REPOSITORY:<package>-<key>` (the key is the hash of
//! every input, build/key.rs), artifact type [`ARTIFACT_TYPE`], the empty config and three
//! layers titled as ORAS does: `manifest.json` (the entry's own manifest: every path with
//! mode, size and sha256), `tree.tar.zst` (the staged tree) and `inputs.txt`.
//!
//! Pulling checks every blob's size and digest as it streams (crates/registry), unpacks the
//! tree in the package's temp folder, normalises and scans it and requires the scan to equal
//! the pulled manifest, whose name and key must be ours; only then is the folder renamed into
//! the local cache. A registry that is down, slow or serves a bad blob costs a one-line
//! warning and a local build; after a failure to reach it, the rest of the run does not ask
//! it again. "Slow" is bounded twice: the registry has [`ANSWER_TIMEOUT`] (or
//! `build-cache.timeout`) to answer the lookup of an entry, and one package's whole pull or
//! push has [`TRANSFER_TIMEOUT`]. Auth is docker's: `~/.docker/config.json`
//! (`$DOCKER_CONFIG`) `auths` entries, basic or a bearer token from the registry's challenge
//! (credential helpers are not run).
//!
//! Signed entries (trust.rs): with a signing key, a push also signs the entry; with trusted
//! keys, a pull uses only entries one of them signed. Settings: settings.rs.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use registry::{Client, Descriptor, RegistryError};
use serde_json::{json, Value};
use signing::{PublicKey, SigningKey};

use crate::build::manifest::{normalize_tree, Manifest};
use crate::recipe::Recipe;

pub(crate) mod settings;
mod trust;

use settings::{config_file, credentials, from_settings};
pub use settings::{CacheArgs, ENV, ENV_PUSH, ENV_SIGN_KEY, ENV_TIMEOUT, ENV_TRUSTED_KEYS};

pub const ARTIFACT_TYPE: &str = "application/vnd.axion.package.v1";
const MT_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MT_EMPTY: &str = "application/vnd.oci.empty.v1+json";
const MT_ENTRY_MANIFEST: &str = "application/vnd.axion.package.manifest.v1+json";
const MT_TREE: &str = "application/vnd.axion.package.tree.v1.tar+zstd";
const MT_TEXT: &str = "text/plain";
const TITLE: &str = "org.opencontainers.image.title";
/// One package's pull or push, all requests together.
pub const TRANSFER_TIMEOUT: Duration = Duration::from_secs(300);
/// How long the registry has to answer the lookup of an entry (default).
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(20);

/// The registry did not answer within the time it had.
#[derive(Debug, thiserror::Error)]
#[error("no answer within {} s", .0.as_secs())]
struct NoAnswer(Duration);

/// A shared build cache.
#[derive(Clone)]
pub struct Remote {
    pub registry: String,
    pub repository: String,
    pub push: bool,
    /// Signs what this machine pushes.
    pub signer: Option<Arc<SigningKey>>,
    /// When not empty, only entries one of these keys signed are used.
    pub trusted: Vec<PublicKey>,
    /// How long the registry has to answer a lookup.
    pub timeout: Duration,
    /// Set after a failure to reach the registry: the rest of the run builds locally.
    unreachable: Arc<AtomicBool>,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote")
            .field("registry", &self.registry)
            .field("repository", &self.repository)
            .field("push", &self.push)
            .field(
                "signs",
                &self.signer.as_ref().map(|k| k.public_key().key_id()),
            )
            .field("trusted", &self.trusted.len())
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Remote {
    /// `REGISTRY/REPOSITORY` (`127.0.0.1:5000/axion/cache`).
    pub fn parse(s: &str, push: bool) -> Result<Remote> {
        let bad = || anyhow::anyhow!("build cache '{s}' is not REGISTRY/REPOSITORY");
        let (registry, repository) = s.trim().split_once('/').ok_or_else(bad)?;
        let ok = !registry.is_empty()
            && !repository.is_empty()
            && repository.split('/').all(|c| {
                !c.is_empty()
                    && c.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b)
                    })
            });
        if !ok {
            return Err(bad());
        }
        Ok(Remote {
            registry: registry.into(),
            repository: repository.into(),
            push,
            signer: None,
            trusted: Vec::new(),
            timeout: ANSWER_TIMEOUT,
            unreachable: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Signs what it pushes with `key`.
    pub fn signing_with(mut self, key: SigningKey) -> Remote {
        self.signer = Some(Arc::new(key));
        self
    }

    /// Uses only entries one of `keys` signed.
    pub fn trusting(mut self, keys: Vec<PublicKey>) -> Remote {
        self.trusted = keys;
        self
    }

    /// Gives the registry `t` to answer a lookup.
    pub fn answering_within(mut self, t: Duration) -> Remote {
        self.timeout = t;
        self
    }

    /// `REGISTRY/REPOSITORY`, as the signatures name it.
    fn identity(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The environment's or the config file's build cache, if any. A setting that does not
    /// parse is a warning, not an error: building locally is always possible.
    pub fn configured() -> Option<Remote> {
        let file = config_file().and_then(|p| std::fs::read_to_string(p).ok());
        match from_settings(&|k| std::env::var(k).ok(), file.as_deref()) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("warning: shared build cache not used: {e:#}");
                None
            }
        }
    }

    fn tag(name: &str, key: &str) -> String {
        format!("{name}-{key}")
    }

    fn reference(&self, tag: &str) -> Result<registry::Reference> {
        registry::Reference::parse(&format!("{}/{}:{tag}", self.registry, self.repository))
            .map_err(|e| anyhow::anyhow!("build cache reference: {}", e.0))
    }

    pub fn is_unreachable(&self) -> bool {
        self.unreachable.load(Ordering::Relaxed)
    }

    /// Gets the entry of `recipe` at `key` into `entry` (not there yet). Ok(false): the
    /// registry has none. Err: it could not be used (nothing entered the local cache).
    pub fn fetch(&self, packages: &Path, recipe: &Recipe, key: &str, entry: &Path) -> Result<bool> {
        let name = recipe.name();
        let tmp = packages.join(format!(".tmp-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        let result = self.fetch_into(recipe, key, &tmp).and_then(|found| {
            if found {
                std::fs::rename(&tmp, entry).with_context(|| {
                    format!("cannot move {} to {}", tmp.display(), entry.display())
                })?;
            }
            Ok(found)
        });
        let _ = std::fs::remove_dir_all(&tmp);
        result
    }

    fn fetch_into(&self, recipe: &Recipe, key: &str, tmp: &Path) -> Result<bool> {
        let tag = Self::tag(recipe.name(), key);
        let reference = self.reference(&tag)?;
        let got = self.run(async {
            let client = Client::new(USER_AGENT, vec![]);
            let mut s = client.session(&reference, credentials(&self.registry));
            let lookup = tokio::time::timeout(self.timeout, s.descriptor(&tag));
            let (body, digest) = match lookup.await.map_err(|_| NoAnswer(self.timeout))? {
                Ok((_, body, digest)) => (body, digest),
                Err(RegistryError::NotFound { .. }) => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            if !self.trusted.is_empty() {
                trust::check(&mut s, &self.trusted, &digest, recipe.name(), key).await?;
            }
            let layers = artifact_layers(&body)?;
            for (title, d) in &layers {
                s.blob_to_file(d, &tmp.join(title)).await?;
            }
            Ok(Some(()))
        })?;
        if got.is_none() {
            return Ok(false);
        }
        let pulled = Manifest::load(&tmp.join("manifest.json"))?;
        if pulled.name != recipe.name() || pulled.key != key {
            bail!(
                "its manifest is of {} {}, not of {} {key}",
                pulled.name,
                pulled.key,
                recipe.name()
            );
        }
        let tree = tmp.join("tree");
        unpack_tree(&tmp.join("tree.tar.zst"), &tree)?;
        std::fs::remove_file(tmp.join("tree.tar.zst"))?;
        normalize_tree(&tree)?;
        let scanned = Manifest::scan(recipe, key, &tree)?;
        if scanned != pulled {
            bail!("the unpacked tree does not match its manifest");
        }
        Ok(true)
    }

    /// Pushes the local entry of package `name` at `key` unless the registry has it. Ok(true)
    /// when it pushed.
    pub fn push_entry(&self, name: &str, key: &str, entry: &Path) -> Result<bool> {
        let tag = Self::tag(name, key);
        let reference = self.reference(&tag)?;
        let scratch = tempfile::tempdir_in(entry.parent().unwrap_or(Path::new(".")))
            .context("cannot make a temp folder for the push")?;
        let tar = scratch.path().join("tree.tar.zst");
        let empty = scratch.path().join("config.json");
        std::fs::write(&empty, b"{}")?;
        let inputs = entry.join("inputs.txt");
        let mut files: Vec<(&str, &str, PathBuf)> = vec![(
            "manifest.json",
            MT_ENTRY_MANIFEST,
            entry.join("manifest.json"),
        )];
        let pushed = self.run(async {
            let client = Client::new(USER_AGENT, vec![]);
            let mut s = client
                .session(&reference, credentials(&self.registry))
                .for_push();
            let lookup = tokio::time::timeout(self.timeout, s.descriptor(&tag));
            match lookup.await.map_err(|_| NoAnswer(self.timeout))? {
                // There already: signed too, if this machine signs.
                Ok((_, _, digest)) => {
                    if let Some(signer) = &self.signer {
                        let (id, dir) = (self.identity(), scratch.path());
                        trust::sign(&mut s, &id, signer, &digest, name, key, dir).await?;
                    }
                    return Ok(false);
                }
                Err(RegistryError::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
            pack_tree(&entry.join("tree"), &tar)?;
            files.push(("tree.tar.zst", MT_TREE, tar.clone()));
            if inputs.is_file() {
                files.push(("inputs.txt", MT_TEXT, inputs.clone()));
            }
            let config = describe(&empty)?;
            let mut layers = Vec::new();
            for (title, mt, path) in &files {
                let (digest, size) = describe(path)?;
                if !s.blob_exists(&digest).await? {
                    s.upload_blob(path, &digest, size, registry::UPLOAD_CHUNK, |_| {})
                        .await?;
                }
                layers.push(json!({
                    "mediaType": mt, "digest": digest, "size": size,
                    "annotations": { TITLE: title },
                }));
            }
            if !s.blob_exists(&config.0).await? {
                s.upload_blob(&empty, &config.0, config.1, registry::UPLOAD_CHUNK, |_| {})
                    .await?;
            }
            let manifest = json!({
                "schemaVersion": 2,
                "mediaType": MT_MANIFEST,
                "artifactType": ARTIFACT_TYPE,
                "config": { "mediaType": MT_EMPTY, "digest": config.0, "size": config.1 },
                "layers": layers,
                "annotations": { "org.opencontainers.image.title": tag },
            });
            let bytes = serde_json::to_vec(&manifest)?;
            s.put_manifest(&tag, MT_MANIFEST, &bytes).await?;
            if let Some(signer) = &self.signer {
                let digest = registry::sha256_digest(&bytes);
                let (id, dir) = (self.identity(), scratch.path());
                trust::sign(&mut s, &id, signer, &digest, name, key, dir).await?;
            }
            Ok(true)
        })?;
        Ok(pushed)
    }

    /// Runs one registry conversation under [`TRANSFER_TIMEOUT`]; a failure to reach the
    /// registry (or an answer that does not come) marks it unreachable for the rest of the
    /// run.
    fn run<T>(&self, f: impl std::future::Future<Output = Result<T>>) -> Result<T> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")?;
        let r = rt.block_on(async { tokio::time::timeout(TRANSFER_TIMEOUT, f).await });
        match r {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                if matches!(
                    e.downcast_ref::<RegistryError>(),
                    Some(RegistryError::Http { .. })
                ) || e.downcast_ref::<NoAnswer>().is_some()
                {
                    self.unreachable.store(true, Ordering::Relaxed);
                }
                Err(e)
            }
            Err(_) => {
                self.unreachable.store(true, Ordering::Relaxed);
                Err(NoAnswer(TRANSFER_TIMEOUT).into())
            }
        }
    }
}

/// [`Remote::fetch`] for build.rs: true when the entry is now in place; a failure is one
/// line on stderr (and a local build).
pub fn fetch_or_warn(
    remote: &Remote,
    packages: &Path,
    recipe: &Recipe,
    key: &str,
    entry: &Path,
) -> bool {
    if remote.is_unreachable() {
        return false;
    }
    match remote.fetch(packages, recipe, key, entry) {
        Ok(found) => found,
        Err(e) => {
            eprintln!(
                "warning: {}: shared build cache {}/{} not used ({}), building locally",
                recipe.name(),
                remote.registry,
                remote.repository,
                one_line(&e)
            );
            false
        }
    }
}

/// [`Remote::push_entry`] for build.rs; a failure is one line on stderr.
pub fn push_or_warn(remote: &Remote, name: &str, key: &str, entry: &Path) {
    if remote.is_unreachable() {
        return;
    }
    match remote.push_entry(name, key, entry) {
        Ok(true) => eprintln!(
            "{name}: pushed to the shared build cache {}/{}",
            remote.registry, remote.repository
        ),
        Ok(false) => {}
        Err(e) => eprintln!(
            "warning: {name}: cannot push to the shared build cache {}/{}: {}",
            remote.registry,
            remote.repository,
            one_line(&e)
        ),
    }
}

fn one_line(e: &anyhow::Error) -> String {
    format!("{e:#}").replace('\n', " ")
}

const USER_AGENT: &str = concat!("axion-xtask/", env!("CARGO_PKG_VERSION"));

/// The three titled layers of a cache entry's manifest, checked for type and names.
fn artifact_layers(body: &[u8]) -> Result<Vec<(String, Descriptor)>> {
    let v: Value = serde_json::from_slice(body).context("the entry's manifest is not JSON")?;
    if v["artifactType"] != ARTIFACT_TYPE {
        bail!(
            "not an axion package entry (artifactType {})",
            v["artifactType"]
        );
    }
    let mut out = Vec::new();
    for l in v["layers"].as_array().into_iter().flatten() {
        let title = l["annotations"][TITLE].as_str().unwrap_or_default();
        if !["manifest.json", "tree.tar.zst", "inputs.txt"].contains(&title) {
            bail!("unexpected layer '{title}'");
        }
        let d: Descriptor = serde_json::from_value(l.clone()).context("a bad layer descriptor")?;
        if !registry::valid_digest(&d.digest) {
            bail!("layer '{title}' has a bad digest {}", d.digest);
        }
        out.push((title.to_owned(), d));
    }
    for need in ["manifest.json", "tree.tar.zst"] {
        if !out.iter().any(|(t, _)| t == need) {
            bail!("the entry has no {need}");
        }
    }
    Ok(out)
}

/// `sha256:…` and size of a file.
fn describe(path: &Path) -> Result<(String, u64)> {
    let size = std::fs::metadata(path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .len();
    Ok((format!("sha256:{}", crate::cache::sha256_file(path)?), size))
}

/// The staged tree as a tar (sorted, owner 0, time 0, modes as staged), zstd-compressed.
fn pack_tree(tree: &Path, dest: &Path) -> Result<()> {
    let file =
        std::fs::File::create(dest).with_context(|| format!("cannot create {}", dest.display()))?;
    let enc = zstd::Encoder::new(file, 3)?;
    let mut b = tar::Builder::new(enc);
    b.follow_symlinks(false);
    for e in walkdir::WalkDir::new(tree).min_depth(1).sort_by_file_name() {
        let e = e?;
        let rel = e.path().strip_prefix(tree).unwrap_or(e.path());
        let meta = std::fs::symlink_metadata(e.path())?;
        let mut h = tar::Header::new_gnu();
        h.set_metadata_in_mode(&meta, tar::HeaderMode::Deterministic);
        use std::os::unix::fs::PermissionsExt;
        h.set_mode(meta.permissions().mode() & 0o7777);
        h.set_mtime(0);
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(e.path())?;
            b.append_link(&mut h, rel, &target)?;
        } else if meta.is_dir() {
            h.set_size(0);
            b.append_data(&mut h, rel, std::io::empty())?;
        } else {
            b.append_data(&mut h, rel, std::fs::File::open(e.path())?)?;
        }
    }
    b.into_inner()?.finish()?.sync_all()?;
    Ok(())
}

/// Unpacks a pulled tree: only files, folders and symlinks, no path outside `dest`.
fn unpack_tree(archive: &Path, dest: &Path) -> Result<()> {
    std::fs::create_dir_all(dest)?;
    let file = std::fs::File::open(archive)?;
    let mut a = tar::Archive::new(zstd::Decoder::new(file)?);
    a.set_preserve_permissions(true);
    a.set_overwrite(false);
    for e in a.entries()? {
        let mut e = e?;
        let path = e.path()?.into_owned();
        let kind = e.header().entry_type();
        let safe = path
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
        if !safe || !(kind.is_file() || kind.is_dir() || kind.is_symlink()) {
            bail!("the tree holds a bad entry: {} ({kind:?})", path.display());
        }
        if !e.unpack_in(dest)? {
            bail!("the tree's entry {} points outside it", path.display());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tree_survives_pack_and_unpack() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let tree = d.path().join("tree");
        std::fs::create_dir_all(tree.join("bin")).unwrap();
        std::fs::write(tree.join("bin/tool"), b"#!/bin/sh\n").unwrap();
        std::fs::set_permissions(
            tree.join("bin/tool"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        std::os::unix::fs::symlink("tool", tree.join("bin/alias")).unwrap();
        let tar = d.path().join("t.tar.zst");
        pack_tree(&tree, &tar).unwrap();
        let again = d.path().join("t2.tar.zst");
        pack_tree(&tree, &again).unwrap();
        assert_eq!(std::fs::read(&tar).unwrap(), std::fs::read(&again).unwrap());
        let out = d.path().join("out");
        unpack_tree(&tar, &out).unwrap();
        assert_eq!(std::fs::read(out.join("bin/tool")).unwrap(), b"#!/bin/sh\n");
        let mode = std::fs::metadata(out.join("bin/tool"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
        assert_eq!(
            std::fs::read_link(out.join("bin/alias")).unwrap(),
            Path::new("tool")
        );
    }

    #[test]
    fn layers_other_than_an_entrys_are_refused() {
        let d = format!("sha256:{}", "a".repeat(64));
        let m = |t: &str, title: &str| {
            serde_json::to_vec(&json!({
                "artifactType": t,
                "layers": [
                    {"mediaType": MT_ENTRY_MANIFEST, "digest": d, "size": 1,
                     "annotations": {TITLE: "manifest.json"}},
                    {"mediaType": MT_TREE, "digest": d, "size": 1,
                     "annotations": {TITLE: title}},
                ],
            }))
            .unwrap()
        };
        assert_eq!(
            artifact_layers(&m(ARTIFACT_TYPE, "tree.tar.zst"))
                .unwrap()
                .len(),
            2
        );
        assert!(artifact_layers(&m("application/other", "tree.tar.zst")).is_err());
        assert!(artifact_layers(&m(ARTIFACT_TYPE, "../etc/passwd")).is_err());
    }
}
