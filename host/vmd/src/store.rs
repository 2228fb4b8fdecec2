//! The host's layer store, shared read-only with every VM over 9p (see the crate doc for
//! why unpacked layers rather than blobs).
//!
//! Under `<state>/store/` (mode 0700: the trees hold the images' setuid files):
//! - `blobs/sha256/<hex>`: layer blobs and image configs as the registry served them,
//!   written to `tmp/`, verified against their digest, fsynced and renamed into place;
//! - `layers/<diff-id hex>/`: each layer unpacked with the engine's rules
//!   ([`layer_unpack::unpack_layer`]: hostile-tar checks, whiteouts, diff-id check) and
//!   renamed into place only when complete; `layers/<diff-id hex>.tree` holds the digest of
//!   the tree as unpacked ([`tree_digest`]: names, types, modes, owners, contents).
//!
//! In the VM the clone agent mounts the store at /run/axion-store and the guest engine
//! (`--image-share`) resolves an image id there and uses its layers as overlayfs lower dirs.
//! Before each container is created the daemon checks the image's blobs and trees
//! ([`LayerStore::check`]): a damaged one is never handed to a VM.
//!
//! Garbage collection ([`LayerStore::gc`]): after `docker rmi`, when a container's VM is
//! gone, and when the daemon starts, blobs and trees that no image record and no container
//! still uses are removed (the caller says what is in use; see `images::Images::collect`).
//! Crash-safe by order: the image records are written and fsynced first; then, for a
//! layer, its `.tree` record goes before its tree (a tree without one counts as not
//! unpacked and is never handed to a VM), and the tree is renamed into `tmp/` (cleared on
//! open) before it is deleted. A power-off at any point leaves no record pointing at a
//! missing blob or tree, only garbage the next collection removes.

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct LayerStore {
    root: PathBuf,
}

fn hex_of(d: &str) -> &str {
    d.strip_prefix("sha256:").unwrap_or(d)
}

/// `sha256:HEX` with 64 hex digits (a digest we may use as a file name).
fn valid(d: &str) -> bool {
    d.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    })
}

/// What is wrong with a stored image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Damage {
    /// A blob is missing or does not hash to its digest.
    Blob { digest: String, why: String },
    /// An unpacked layer is missing or differs from what was unpacked.
    Tree { diff_id: String, why: String },
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Damage::Blob { digest, why } => write!(f, "blob {digest}: {why}"),
            Damage::Tree { diff_id, why } => write!(f, "unpacked layer {diff_id}: {why}"),
        }
    }
}

impl LayerStore {
    pub fn open(root: &Path) -> Result<LayerStore> {
        for d in ["blobs/sha256", "layers", "tmp"] {
            let p = root.join(d);
            std::fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
        }
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("chmod {}", root.display()))?;
        if let Ok(rd) = std::fs::read_dir(root.join("tmp")) {
            for e in rd.flatten() {
                let _ =
                    std::fs::remove_dir_all(e.path()).or_else(|_| std::fs::remove_file(e.path()));
            }
        }
        Ok(LayerStore {
            root: root.to_path_buf(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn blob_path(&self, digest: &str) -> PathBuf {
        self.root.join("blobs/sha256").join(hex_of(digest))
    }

    pub fn layer_path(&self, diff_id: &str) -> PathBuf {
        self.root.join("layers").join(hex_of(diff_id))
    }

    fn tree_file(&self, diff_id: &str) -> PathBuf {
        self.root
            .join("layers")
            .join(format!("{}.tree", hex_of(diff_id)))
    }

    fn scratch(&self, what: &str) -> PathBuf {
        self.root
            .join("tmp")
            .join(format!("{what}-{}", crate::random_hex(12)))
    }

    /// Whether the blob is there and hashes to its digest.
    pub fn blob_ok(&self, digest: &str) -> Result<(), String> {
        if !valid(digest) {
            return Err(format!("{digest:?} is not a sha256 digest"));
        }
        let p = self.blob_path(digest);
        let actual = file_sha256(&p).map_err(|e| format!("{}: {e}", p.display()))?;
        if actual != hex_of(digest) {
            return Err(format!(
                "{} is corrupt: its content hashes to sha256:{actual}",
                p.display()
            ));
        }
        Ok(())
    }

    /// Stores `bytes` (a config) as the blob `digest`, after checking it.
    pub fn put_bytes(&self, digest: &str, bytes: &[u8]) -> Result<()> {
        let actual = hex::encode(Sha256::digest(bytes));
        if !valid(digest) || actual != hex_of(digest) {
            bail!("blob {digest}: the registry sent content with digest sha256:{actual}");
        }
        if self.blob_ok(digest).is_ok() {
            return Ok(());
        }
        let tmp = self.scratch("blob");
        let mut f =
            std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, self.blob_path(digest))
            .with_context(|| format!("storing blob {digest}"))
    }

    /// Stores the file `src` (a layer made on this host) as the blob `digest`, unless a good
    /// copy is there: copied to a temporary file, checked, fsynced and renamed into place.
    pub fn put_file(&self, digest: &str, src: &Path) -> Result<()> {
        if !valid(digest) {
            bail!("{digest:?} is not a sha256 digest");
        }
        if self.blob_ok(digest).is_ok() {
            return Ok(());
        }
        let tmp = self.scratch("blob");
        let r = (|| {
            std::fs::copy(src, &tmp).with_context(|| format!("copying {}", src.display()))?;
            std::fs::File::open(&tmp)?.sync_all()?;
            let actual = file_sha256(&tmp)?;
            if actual != hex_of(digest) {
                bail!(
                    "{} changed while it was stored: its content hashes to sha256:{actual}",
                    src.display()
                );
            }
            std::fs::rename(&tmp, self.blob_path(digest))
                .with_context(|| format!("storing blob {digest}"))
        })();
        if r.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        r
    }

    /// Downloads the blob `d` through the registry `session` unless a good copy is stored:
    /// to a temporary file (the client checks its size and digest and fsyncs it), renamed
    /// into place only when it is right.
    pub async fn fetch_blob(
        &self,
        session: &mut registry::Session<'_>,
        d: &registry::Descriptor,
    ) -> Result<()> {
        if !valid(&d.digest) {
            bail!("{:?} is not a sha256 digest", d.digest);
        }
        if self.blob_ok(&d.digest).is_ok() {
            return Ok(());
        }
        let tmp = self.scratch("blob");
        if let Err(e) = session.blob_to_file(d, &tmp).await {
            let _ = std::fs::remove_file(&tmp);
            return Err(e.into());
        }
        std::fs::rename(&tmp, self.blob_path(&d.digest))
            .with_context(|| format!("storing blob {}", d.digest))
    }

    /// Unpacks the (verified) blob `digest` as layer `diff_id` unless a good tree is there;
    /// `lowers`: the layers below, top first. Blocking.
    pub fn unpack(&self, digest: &str, diff_id: &str, lowers: &[PathBuf]) -> Result<()> {
        if !valid(diff_id) {
            bail!("{diff_id:?} is not a sha256 diff-id");
        }
        if self.tree_ok(diff_id).is_ok() {
            return Ok(());
        }
        self.blob_ok(digest).map_err(anyhow::Error::msg)?;
        let dest = self.layer_path(diff_id);
        // A damaged or half-made tree goes aside first (a running VM may still read it).
        if dest.exists() {
            let old = self.scratch("old-layer");
            std::fs::rename(&dest, &old)
                .with_context(|| format!("moving {} aside", dest.display()))?;
            let _ = std::fs::remove_dir_all(&old);
        }
        let tmp = self.scratch("layer");
        layer_unpack::unpack_layer(
            &self.blob_path(digest),
            &tmp,
            &tmp.with_extension("done"),
            diff_id,
            lowers,
        )
        .with_context(|| format!("layer {digest}"))?;
        let done = tmp.with_extension("done");
        let d = tree_digest(&done).with_context(|| format!("hashing {}", done.display()))?;
        std::fs::write(self.tree_file(diff_id), &d)?;
        std::fs::rename(&done, &dest).with_context(|| format!("storing layer {diff_id}"))?;
        Ok(())
    }

    /// Whether the unpacked layer is there and is what was unpacked.
    pub fn tree_ok(&self, diff_id: &str) -> Result<(), String> {
        let dest = self.layer_path(diff_id);
        let want = std::fs::read_to_string(self.tree_file(diff_id))
            .map_err(|_| "not unpacked".to_string())?;
        if !dest.is_dir() {
            return Err("not unpacked".into());
        }
        let got = tree_digest(&dest).map_err(|e| format!("{}: {e}", dest.display()))?;
        if got != want.trim() {
            return Err(format!(
                "{} was changed after it was unpacked (tree digest {got}, recorded {})",
                dest.display(),
                want.trim()
            ));
        }
        Ok(())
    }

    /// Checks everything an image needs: its config, its layer blobs and its unpacked
    /// layers. Blocking (reads every byte).
    pub fn check(&self, config: &str, layers: &[String], diff_ids: &[String]) -> Vec<Damage> {
        let mut out = Vec::new();
        for d in std::iter::once(config).chain(layers.iter().map(String::as_str)) {
            if let Err(why) = self.blob_ok(d) {
                out.push(Damage::Blob {
                    digest: d.to_string(),
                    why,
                });
            }
        }
        if layers.len() != diff_ids.len() {
            out.push(Damage::Tree {
                diff_id: String::new(),
                why: format!("{} layers for {} diff-ids", layers.len(), diff_ids.len()),
            });
            return out;
        }
        for d in diff_ids {
            if let Err(why) = self.tree_ok(d) {
                out.push(Damage::Tree {
                    diff_id: d.clone(),
                    why,
                });
            }
        }
        out
    }

    /// Removes every blob not in `blobs` and every unpacked layer not in `layers` (digests,
    /// `sha256:<hex>`); only names that are digests are touched. Blocking. See the module
    /// doc for the order that makes it crash-safe.
    pub fn gc(&self, blobs: &HashSet<String>, layers: &HashSet<String>) -> Result<Collected> {
        let keep_blob: HashSet<&str> = blobs.iter().map(|d| hex_of(d)).collect();
        let keep_layer: HashSet<&str> = layers.iter().map(|d| hex_of(d)).collect();
        let mut out = Collected::default();
        let dir = self.root.join("blobs/sha256");
        for name in names(&dir)? {
            if is_hex64(&name) && !keep_blob.contains(name.as_str()) {
                let p = dir.join(&name);
                std::fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
                out.blobs.push(format!("sha256:{name}"));
            }
        }
        let dir = self.root.join("layers");
        let mut garbage: Vec<String> = names(&dir)?
            .into_iter()
            .map(|n| n.strip_suffix(".tree").map(str::to_string).unwrap_or(n))
            .filter(|h| is_hex64(h) && !keep_layer.contains(h.as_str()))
            .collect();
        garbage.sort();
        garbage.dedup();
        for h in garbage {
            // The record first: from here on the tree counts as not unpacked.
            let rec = dir.join(format!("{h}.tree"));
            match std::fs::remove_file(&rec) {
                Ok(()) => sync_dir(&dir)?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("removing {}", rec.display())),
            }
            let tree = dir.join(&h);
            if tree.exists() {
                let aside = self.scratch("gc-layer");
                std::fs::rename(&tree, &aside)
                    .with_context(|| format!("moving {} aside", tree.display()))?;
                std::fs::remove_dir_all(&aside)
                    .with_context(|| format!("removing {}", aside.display()))?;
            }
            out.layers.push(format!("sha256:{h}"));
        }
        Ok(out)
    }

    /// Drops what [`check`](Self::check) found damaged, so that the next pull fetches and
    /// unpacks it again.
    pub fn discard(&self, damage: &[Damage]) {
        for d in damage {
            match d {
                Damage::Blob { digest, .. } if valid(digest) => {
                    let _ = std::fs::remove_file(self.blob_path(digest));
                }
                Damage::Tree { diff_id, .. } if valid(diff_id) => {
                    let _ = std::fs::remove_file(self.tree_file(diff_id));
                }
                _ => {}
            }
        }
    }
}

/// What [`LayerStore::gc`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Collected {
    pub blobs: Vec<String>,
    pub layers: Vec<String>,
}

fn is_hex64(h: &str) -> bool {
    h.len() == 64
        && h.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

fn names(dir: &Path) -> Result<Vec<String>> {
    let rd = std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    Ok(rd
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .collect())
}

/// fsync(2) on a directory: makes the renames and removals in it durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("fsync {}", dir.display()))
}

fn file_sha256(p: &Path) -> std::io::Result<String> {
    let mut h = Sha256::new();
    std::io::copy(&mut std::fs::File::open(p)?, &mut h)?;
    Ok(hex::encode(h.finalize()))
}

/// A digest of a directory tree: every entry's relative name, type, mode, owner and
/// content (file bytes, link target, device number), in name order.
pub fn tree_digest(dir: &Path) -> std::io::Result<String> {
    let mut h = Sha256::new();
    walk(dir, Path::new(""), &mut h)?;
    Ok(format!("sha256:{}", hex::encode(h.finalize())))
}

fn walk(root: &Path, rel: &Path, h: &mut Sha256) -> std::io::Result<()> {
    let mut names: Vec<_> = std::fs::read_dir(root.join(rel))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()?;
    names.sort();
    for n in names {
        let r = rel.join(&n);
        let p = root.join(&r);
        let m = std::fs::symlink_metadata(&p)?;
        h.update(r.as_os_str().as_encoded_bytes());
        h.update(format!("\0{:o} {} {} {}\0", m.mode(), m.uid(), m.gid(), m.rdev()).as_bytes());
        let ft = m.file_type();
        if ft.is_symlink() {
            h.update(std::fs::read_link(&p)?.as_os_str().as_encoded_bytes());
        } else if ft.is_file() {
            h.update(file_sha256(&p)?.as_bytes());
        } else if ft.is_dir() {
            walk(root, &r, h)?;
        }
        h.update(b"\n");
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn layer() -> (Vec<u8>, String, String) {
        test_layer("bin/tool", b"abc")
    }

    /// A gzipped layer holding one file: (blob, digest, diff-id).
    pub(crate) fn test_layer(path: &str, content: &[u8]) -> (Vec<u8>, String, String) {
        let mut b = tar::Builder::new(Vec::new());
        let mut hd = tar::Header::new_gnu();
        hd.set_size(content.len() as u64);
        hd.set_mode(0o755);
        hd.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut hd, path, content).unwrap();
        let tar = b.into_inner().unwrap();
        let diff_id = format!("sha256:{}", hex::encode(Sha256::digest(&tar)));
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        let blob = gz.finish().unwrap();
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(&blob)));
        (blob, digest, diff_id)
    }

    #[test]
    fn blobs_and_trees_are_checked_and_damage_is_found() {
        let d = tempfile::tempdir().unwrap();
        let s = LayerStore::open(&d.path().join("store")).unwrap();
        let (blob, digest, diff_id) = layer();
        // A wrong digest never enters the store.
        let other = format!("sha256:{}", "a".repeat(64));
        assert!(s.put_bytes(&other, &blob).is_err());
        assert!(!s.blob_path(&other).exists());
        s.put_bytes(&digest, &blob).unwrap();
        s.unpack(&digest, &diff_id, &[]).unwrap();
        assert_eq!(
            std::fs::read(s.layer_path(&diff_id).join("bin/tool")).unwrap(),
            b"abc"
        );
        let config = format!("sha256:{}", hex::encode(Sha256::digest(b"{}")));
        s.put_bytes(&config, b"{}").unwrap();
        let layers = vec![digest.clone()];
        let diffs = vec![diff_id.clone()];
        assert_eq!(s.check(&config, &layers, &diffs), vec![]);
        // A corrupted blob.
        std::fs::write(s.blob_path(&digest), b"garbage").unwrap();
        let damage = s.check(&config, &layers, &diffs);
        assert!(
            matches!(
                &damage[..],
                [Damage::Blob { digest: d, why }] if *d == digest && why.contains("corrupt")
            ),
            "{damage:?}"
        );
        s.discard(&damage);
        assert!(!s.blob_path(&digest).exists());
        s.put_bytes(&digest, &blob).unwrap();
        // A changed file in the unpacked tree; unpacking again repairs it.
        std::fs::write(s.layer_path(&diff_id).join("bin/tool"), b"evil").unwrap();
        let damage = s.check(&config, &layers, &diffs);
        assert!(
            matches!(&damage[..], [Damage::Tree { why, .. }] if why.contains("changed")),
            "{damage:?}"
        );
        s.discard(&damage);
        s.unpack(&digest, &diff_id, &[]).unwrap();
        assert_eq!(
            std::fs::read(s.layer_path(&diff_id).join("bin/tool")).unwrap(),
            b"abc"
        );
        assert_eq!(s.check(&config, &layers, &diffs), vec![]);
        assert_eq!(
            std::fs::read_dir(d.path().join("store/tmp"))
                .unwrap()
                .count(),
            0
        );
    }

    /// An image in the store: (config digest, layer digests, diff-ids).
    fn put_image(s: &LayerStore, files: &[(&str, &[u8])]) -> (String, Vec<String>, Vec<String>) {
        let (mut layers, mut diffs, mut lowers) = (Vec::new(), Vec::new(), Vec::new());
        for (path, content) in files {
            let (blob, digest, diff_id) = test_layer(path, content);
            s.put_bytes(&digest, &blob).unwrap();
            s.unpack(&digest, &diff_id, &lowers).unwrap();
            lowers.insert(0, s.layer_path(&diff_id));
            layers.push(digest);
            diffs.push(diff_id);
        }
        let cfg = serde_json::to_vec(&serde_json::json!({"rootfs": {"diff_ids": diffs}})).unwrap();
        let config = format!("sha256:{}", hex::encode(Sha256::digest(&cfg)));
        s.put_bytes(&config, &cfg).unwrap();
        (config, layers, diffs)
    }

    fn keep(images: &[&(String, Vec<String>, Vec<String>)]) -> (HashSet<String>, HashSet<String>) {
        let blobs = images
            .iter()
            .flat_map(|i| std::iter::once(i.0.clone()).chain(i.1.iter().cloned()))
            .collect();
        let layers = images.iter().flat_map(|i| i.2.iter().cloned()).collect();
        (blobs, layers)
    }

    #[test]
    fn gc_removes_what_no_image_uses_and_keeps_shared_layers() {
        let d = tempfile::tempdir().unwrap();
        let s = LayerStore::open(&d.path().join("store")).unwrap();
        let a = put_image(&s, &[("bin/base", b"shared"), ("a", b"only in a")]);
        let b = put_image(&s, &[("bin/base", b"shared"), ("b", b"only in b")]);
        assert_eq!(a.1[0], b.1[0], "the base layer is shared");
        // Nothing to do while both are kept.
        let (kb, kl) = keep(&[&a, &b]);
        assert_eq!(s.gc(&kb, &kl).unwrap(), Collected::default());
        // `a` removed: its config, its own blob and tree go; the shared layer stays.
        let (kb, kl) = keep(&[&b]);
        let got = s.gc(&kb, &kl).unwrap();
        let mut want_blobs = vec![a.0.clone(), a.1[1].clone()];
        want_blobs.sort();
        let mut got_blobs = got.blobs.clone();
        got_blobs.sort();
        assert_eq!(got_blobs, want_blobs);
        assert_eq!(got.layers, vec![a.2[1].clone()]);
        assert!(!s.blob_path(&a.0).exists() && !s.blob_path(&a.1[1]).exists());
        assert!(!s.layer_path(&a.2[1]).exists() && !s.tree_file(&a.2[1]).exists());
        assert_eq!(
            s.check(&b.0, &b.1, &b.2),
            vec![],
            "the remaining image is intact"
        );
        // Nothing left behind in tmp/, and stray names that are not digests are not touched.
        assert_eq!(std::fs::read_dir(s.root().join("tmp")).unwrap().count(), 0);
        std::fs::write(s.root().join("blobs/sha256/README"), b"x").unwrap();
        // `b` removed too: the store is empty.
        let got = s.gc(&HashSet::new(), &HashSet::new()).unwrap();
        assert_eq!((got.blobs.len(), got.layers.len()), (3, 2));
        assert_eq!(
            names(&s.root().join("blobs/sha256")).unwrap(),
            vec!["README".to_string()]
        );
        assert_eq!(
            names(&s.root().join("layers")).unwrap(),
            Vec::<String>::new()
        );
    }

    #[test]
    fn gc_after_a_crash_mid_collection() {
        let d = tempfile::tempdir().unwrap();
        let s = LayerStore::open(&d.path().join("store")).unwrap();
        let a = put_image(&s, &[("x", b"a's layer")]);
        let b = put_image(&s, &[("y", b"b's layer")]);
        // A power-off after a layer's record was removed, before its tree went: the tree
        // counts as not unpacked (never handed to a VM) ...
        std::fs::remove_file(s.tree_file(&a.2[0])).unwrap();
        assert!(matches!(
            &s.check(&a.0, &a.1, &a.2)[..],
            [Damage::Tree { why, .. }] if why == "not unpacked"
        ));
        // ... and one after a tree was moved aside into tmp/.
        let aside = s.scratch("gc-layer");
        std::fs::rename(s.layer_path(&b.2[0]), &aside).unwrap();
        std::fs::remove_file(s.tree_file(&b.2[0])).unwrap();
        // The next start clears tmp/ and the next collection removes the orphan tree.
        let s = LayerStore::open(s.root()).unwrap();
        assert!(!aside.exists());
        let (kb, kl) = keep(&[]);
        let got = s.gc(&kb, &kl).unwrap();
        assert_eq!(got.layers, vec![a.2[0].clone()]);
        assert!(!s.layer_path(&a.2[0]).exists() && !s.layer_path(&b.2[0]).exists());
        assert_eq!(
            got.blobs.len(),
            4,
            "both images' configs and layer blobs: {got:?}"
        );
        // A kept layer whose record is gone is not removed: unpacking it again repairs it.
        let c = put_image(&s, &[("z", b"c's layer")]);
        std::fs::remove_file(s.tree_file(&c.2[0])).unwrap();
        let (kb, kl) = keep(&[&c]);
        assert_eq!(s.gc(&kb, &kl).unwrap(), Collected::default());
        s.unpack(&c.1[0], &c.2[0], &[]).unwrap();
        assert_eq!(s.check(&c.0, &c.1, &c.2), vec![]);
    }
}
