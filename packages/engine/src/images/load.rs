//! `docker load`: images from a `docker save` archive, for hosts without a registry.
//!
//! The archive is a tar with `manifest.json` (`[{Config, RepoTags, Layers}]`) naming the
//! config and layer files inside it: `<id>.json` + `<id>/layer.tar` from older Docker, or
//! `blobs/sha256/<hex>` (an OCI layout) from Docker 25 and later; duplicate layers may be
//! symlinks to another entry. Trust nothing in it: entry names must stay inside the archive,
//! the image id is the sha256 of the config bytes, and every layer goes through the same
//! unpacking and diff-id check as a pulled one ([`super::unpack_verified`]), so a layer that
//! does not match its config is refused and nothing half-loaded stays in the store.

use super::{check_digests, hex_of, io_err, unpack_verified, ImageConfig, ImageError, Store};
use layer_unpack::archive::{ArchiveError, Extracted};
use registry::Reference;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use std::path::{Path, PathBuf};

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct SavedImage {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

fn from_archive(e: ArchiveError) -> ImageError {
    match e {
        ArchiveError::Bad(m) => bad(m),
        ArchiveError::Io { path, source } => ImageError::Io { path, source },
    }
}

fn bad(msg: impl Into<String>) -> ImageError {
    ImageError::Config {
        digest: "docker load archive".into(),
        msg: msg.into(),
    }
}

impl Store {
    /// A fresh path under the store's tmp folder (emptied at every start).
    pub fn scratch(&self, what: &str) -> PathBuf {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.root.join("tmp").join(format!("{what}-{n}"))
    }

    /// Loads every image of a `docker save` archive; returns the tags loaded (or the ids of
    /// untagged images).
    pub fn load(&self, archive: &Path) -> Result<Vec<String>, ImageError> {
        let work = self.scratch("load");
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work).map_err(io_err(&work))?;
        let result = self.load_from(archive, &work);
        let _ = std::fs::remove_dir_all(&work);
        result
    }

    fn load_from(&self, archive: &Path, work: &Path) -> Result<Vec<String>, ImageError> {
        let files = work.join("files");
        std::fs::create_dir_all(&files).map_err(io_err(&files))?;
        let f = std::fs::File::open(archive).map_err(io_err(archive))?;
        let x = Extracted::unpack(std::io::BufReader::new(f), &files).map_err(from_archive)?;
        let manifest_path = x
            .file("manifest.json")
            .map_err(|_| bad("no manifest.json: not a `docker save` archive"))?;
        let manifest: Vec<SavedImage> =
            serde_json::from_slice(&std::fs::read(&manifest_path).map_err(io_err(&manifest_path))?)
                .map_err(|e| bad(format!("manifest.json: {e}")))?;
        if manifest.is_empty() {
            return Err(bad("manifest.json lists no images"));
        }
        let mut loaded = Vec::new();
        for img in manifest {
            let cpath = x.file(&img.config).map_err(from_archive)?;
            let cbytes = std::fs::read(&cpath).map_err(io_err(&cpath))?;
            let id = format!("sha256:{}", hex::encode(Sha256::digest(&cbytes)));
            let config: ImageConfig =
                serde_json::from_slice(&cbytes).map_err(|e| ImageError::Config {
                    digest: id.clone(),
                    msg: e.to_string(),
                })?;
            check_digests(&id, &config, [])?;
            if config.rootfs.diff_ids.len() != img.layers.len() {
                return Err(ImageError::Config {
                    digest: id,
                    msg: format!(
                        "{} diff_ids for {} layers",
                        config.rootfs.diff_ids.len(),
                        img.layers.len()
                    ),
                });
            }
            let mut lowers: Vec<PathBuf> = Vec::new();
            for (layer, diff_id) in img.layers.iter().zip(&config.rootfs.diff_ids) {
                let dest = self.layer_path(diff_id);
                if !dest.is_dir() {
                    let blob = x.file(layer).map_err(from_archive)?;
                    let tmp = work.join(format!("layer-{}", hex_of(diff_id)));
                    unpack_verified(&blob, &tmp, &dest, diff_id, &lowers, layer)?;
                    self.record_source(diff_id, &blob, None, true)?;
                }
                lowers.insert(0, dest);
            }
            let blob = self.blob_path(&id);
            std::fs::write(&blob, &cbytes).map_err(io_err(&blob))?;
            let tags: Vec<String> = img
                .repo_tags
                .unwrap_or_default()
                .iter()
                .map(|t| {
                    Reference::parse(t)
                        .ok()
                        .and_then(|r| r.tagged())
                        .ok_or_else(|| bad(format!("bad RepoTags entry {t:?}")))
                })
                .collect::<Result<_, _>>()?;
            if tags.is_empty() {
                // An untagged image is still listed (by id) through `digests`.
                let mut refs = self
                    .refs
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                refs.digests.entry(id.clone()).or_default();
                self.save(&refs)?;
                loaded.push(id.clone());
            }
            for t in tags {
                self.tag(&id, &t)?;
                loaded.push(t);
            }
        }
        Ok(loaded)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer_tar(file: &str, data: &[u8]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, file, data).unwrap();
        b.into_inner().unwrap()
    }

    fn sha(b: &[u8]) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(b)))
    }

    /// A `docker save` archive with one image; `tamper` changes the layer after hashing.
    fn archive(
        tags: &str,
        tamper: bool,
        extra: &[(&str, tar::EntryType, &str, &[u8])],
    ) -> (Vec<u8>, String) {
        let layer = layer_tar("hello.txt", b"hi\n");
        let config = format!(
            r#"{{"architecture":"amd64","os":"linux","config":{{"Cmd":["/hello"]}},
                "rootfs":{{"type":"layers","diff_ids":["{}"]}}}}"#,
            sha(&layer)
        );
        let id = sha(config.as_bytes());
        let manifest = format!(
            r#"[{{"Config":"blobs/sha256/{}","RepoTags":{tags},"Layers":["blobs/sha256/{}"]}}]"#,
            hex_of(&id),
            hex_of(&sha(&layer))
        );
        let stored_layer = if tamper {
            layer_tar("hello.txt", b"evil")
        } else {
            layer.clone()
        };
        let mut b = tar::Builder::new(Vec::new());
        let mut add = |name: &str, kind: tar::EntryType, link: &str, data: &[u8]| {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_entry_type(kind);
            if !link.is_empty() {
                h.set_link_name(link).unwrap();
            }
            // set_path refuses `..`; write the raw name like a hostile archive would.
            let raw = &mut h.as_old_mut().name;
            raw.fill(0);
            raw[..name.len()].copy_from_slice(name.as_bytes());
            h.set_cksum();
            b.append(&h, data).unwrap();
        };
        add(
            "manifest.json",
            tar::EntryType::Regular,
            "",
            manifest.as_bytes(),
        );
        add(
            &format!("blobs/sha256/{}", hex_of(&id)),
            tar::EntryType::Regular,
            "",
            config.as_bytes(),
        );
        add(
            &format!("blobs/sha256/{}", hex_of(&sha(&layer))),
            tar::EntryType::Regular,
            "",
            &stored_layer,
        );
        for (n, k, l, d) in extra {
            add(n, *k, l, d);
        }
        (b.into_inner().unwrap(), id)
    }

    fn store() -> (tempfile::TempDir, Store) {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        (d, s)
    }

    fn load(s: &Store, dir: &Path, bytes: &[u8]) -> Result<Vec<String>, ImageError> {
        let a = dir.join("in.tar");
        std::fs::write(&a, bytes).unwrap();
        s.load(&a)
    }

    #[test]
    fn loads_tags_and_layers() {
        let (d, s) = store();
        let (bytes, id) = archive(r#"["busybox:latest","127.0.0.1:5000/x/y:v1"]"#, false, &[]);
        assert_eq!(
            load(&s, d.path(), &bytes).unwrap(),
            vec!["busybox:latest", "127.0.0.1:5000/x/y:v1"]
        );
        assert_eq!(s.resolve("busybox").as_deref(), Some(id.as_str()));
        let lowers = s.lowers(&id).unwrap();
        assert_eq!(std::fs::read(lowers[0].join("hello.txt")).unwrap(), b"hi\n");
        // Loading again is fine (layers already there); nothing is left in tmp.
        assert_eq!(load(&s, d.path(), &bytes).unwrap().len(), 2);
        assert_eq!(std::fs::read_dir(d.path().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn untagged_images_are_listed_by_id() {
        let (d, s) = store();
        let (bytes, id) = archive("null", false, &[]);
        assert_eq!(load(&s, d.path(), &bytes).unwrap(), vec![id.clone()]);
        assert_eq!(s.list().len(), 1);
    }

    #[test]
    fn a_layer_that_does_not_match_its_config_is_refused() {
        let (d, s) = store();
        let (bytes, id) = archive(r#"["busybox:latest"]"#, true, &[]);
        let e = load(&s, d.path(), &bytes).unwrap_err().to_string();
        assert!(e.contains("diff-id"), "{e}");
        assert!(s.resolve("busybox").is_none() && s.lowers(&id).is_none());
        assert_eq!(
            std::fs::read_dir(d.path().join("layers")).unwrap().count(),
            0,
            "a half-loaded layer stayed"
        );
    }

    #[test]
    fn escaping_names_and_links_are_refused() {
        let (d, s) = store();
        let (bytes, _) = archive(
            r#"["a:b"]"#,
            false,
            &[("../evil", tar::EntryType::Regular, "", b"x")],
        );
        let e = load(&s, d.path(), &bytes).unwrap_err().to_string();
        assert!(e.contains("escapes the archive"), "{e}");
        assert!(!d.path().join("tmp/evil").exists() && !d.path().join("evil").exists());
        let (bytes, _) = archive(
            r#"["a:b"]"#,
            false,
            &[(
                "x/layer.tar",
                tar::EntryType::Symlink,
                "../../../etc/passwd",
                b"",
            )],
        );
        let e = load(&s, d.path(), &bytes).unwrap_err().to_string();
        assert!(e.contains("links outside"), "{e}");
    }

    #[test]
    fn truncated_and_foreign_archives_get_clear_errors() {
        let (d, s) = store();
        let (bytes, _) = archive(r#"["a:b"]"#, false, &[]);
        let e = load(&s, d.path(), &bytes[..bytes.len() / 2])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("truncated") || e.contains("broken") || e.contains("not in the archive"),
            "{e}"
        );
        let e = load(&s, d.path(), &layer_tar("hello", b"x"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a `docker save` archive"), "{e}");
        assert!(s.list().is_empty());
    }

    #[test]
    fn a_diff_id_that_is_not_a_digest_is_refused_before_it_names_a_path() {
        // `layers/../../..` is a directory that exists: it was taken for an unpacked layer.
        let (d, s) = store();
        for diff_id in ["sha256:../../..", "sha256:", "../x", "sha256:ééé"] {
            let config = format!(r#"{{"rootfs":{{"type":"layers","diff_ids":["{diff_id}"]}}}}"#);
            let id = sha(config.as_bytes());
            let manifest = r#"[{"Config":"c.json","RepoTags":["evil:1"],"Layers":["l.tar"]}]"#;
            let mut b = tar::Builder::new(Vec::new());
            for (name, data) in [
                ("manifest.json", manifest.as_bytes()),
                ("c.json", config.as_bytes()),
                ("l.tar", &[0u8; 1024][..]),
            ] {
                let mut h = tar::Header::new_gnu();
                h.set_size(data.len() as u64);
                h.set_mode(0o644);
                b.append_data(&mut h, name, data).unwrap();
            }
            let e = load(&s, d.path(), &b.into_inner().unwrap()).unwrap_err();
            assert!(
                e.to_string().contains("is not a sha256 digest"),
                "{diff_id}: {e}"
            );
            assert!(s.config(&id).is_none());
        }
    }
}
