//! Layer archives kept beside the unpacked layers, and what needs them: `docker save`,
//! `docker push`, `docker import` and `docker commit`.
//!
//! An unpacked layer cannot be tarred back into the exact bytes of its diff-id, so the store
//! keeps each layer's archive as a blob: `sources/<diff-id hex>.json` names it (the pulled
//! blob, gzip or zstd, or the uncompressed tar of a load, import or commit) and, once pushed
//! compressed, its gzip blob. Layers unpacked by an engine older than this have no archive;
//! saving or pushing them says so (pull the image again).

use super::{hex_of, io_err, ImageConfig, ImageError, Store};
use registry::Reference;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

pub const MT_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const MT_DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// Where a layer's archive is.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LayerSource {
    pub digest: String,
    pub media_type: String,
    pub size: u64,
    /// The gzip blob pushed for it, when the archive itself is not compressed.
    #[serde(default)]
    pub gzip: Option<(String, u64)>,
}

fn bad(msg: impl Into<String>) -> ImageError {
    ImageError::Config {
        digest: "layer".into(),
        msg: msg.into(),
    }
}

fn sha_file(p: &Path) -> Result<(String, u64), ImageError> {
    let mut f = std::fs::File::open(p).map_err(io_err(p))?;
    let mut h = Sha256::new();
    let n = std::io::copy(&mut f, &mut h).map_err(io_err(p))?;
    Ok((format!("sha256:{}", hex::encode(h.finalize())), n))
}

fn is_gzip(p: &Path) -> bool {
    let mut m = [0u8; 2];
    std::fs::File::open(p)
        .and_then(|mut f| f.read_exact(&mut m))
        .is_ok()
        && m == [0x1f, 0x8b]
}

impl Store {
    fn source_path(&self, diff_id: &str) -> PathBuf {
        self.root
            .join("sources")
            .join(format!("{}.json", hex_of(diff_id)))
    }

    pub fn layer_source(&self, diff_id: &str) -> Option<LayerSource> {
        let b = std::fs::read(self.source_path(diff_id)).ok()?;
        let s: LayerSource = serde_json::from_slice(&b).ok()?;
        self.blob_path(&s.digest).is_file().then_some(s)
    }

    fn write_source(&self, diff_id: &str, s: &LayerSource) -> Result<(), ImageError> {
        let p = self.source_path(diff_id);
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).map_err(io_err(d))?;
        }
        let tmp = p.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec(s).unwrap_or_default()).map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, &p).map_err(io_err(&p))
    }

    /// Keeps `file` (moved, or copied when `copy`) as the archive of layer `diff_id`.
    pub fn record_source(
        &self,
        diff_id: &str,
        file: &Path,
        media_type: Option<&str>,
        copy: bool,
    ) -> Result<(), ImageError> {
        if self.layer_source(diff_id).is_some() {
            return Ok(());
        }
        let (digest, size) = sha_file(file)?;
        let mt = match media_type {
            Some(m) if !m.is_empty() => m.to_string(),
            _ if is_gzip(file) => MT_DOCKER_LAYER_GZIP.to_string(),
            _ => MT_LAYER_TAR.to_string(),
        };
        let dest = self.blob_path(&digest);
        if !dest.is_file() {
            if copy {
                std::fs::copy(file, &dest).map_err(io_err(&dest))?;
            } else {
                std::fs::rename(file, &dest).map_err(io_err(&dest))?;
            }
        }
        self.write_source(
            diff_id,
            &LayerSource {
                digest,
                media_type: mt,
                size,
                gzip: None,
            },
        )
    }

    /// Forgets a removed layer's archive.
    pub fn drop_source(&self, diff_id: &str) {
        if let Some(s) = self.layer_source(diff_id) {
            let _ = std::fs::remove_file(self.blob_path(&s.digest));
            if let Some((g, _)) = s.gzip {
                let _ = std::fs::remove_file(self.blob_path(&g));
            }
        }
        let _ = std::fs::remove_file(self.source_path(diff_id));
    }

    fn missing(diff_id: &str) -> ImageError {
        bad(format!(
            "layer {diff_id} has no stored archive (unpacked by an older engine or shared by \
             the host); pull or load the image again"
        ))
    }

    /// The layer's uncompressed tar, as a reader.
    pub fn layer_tar(&self, diff_id: &str) -> Result<Box<dyn Read>, ImageError> {
        let s = self
            .layer_source(diff_id)
            .ok_or_else(|| Self::missing(diff_id))?;
        let p = self.blob_path(&s.digest);
        let f = std::fs::File::open(&p).map_err(io_err(&p))?;
        layer_unpack::decompress(std::io::BufReader::new(f)).map_err(io_err(&p))
    }

    /// The compressed blob to push for a layer: (digest, size, media type, path). An
    /// uncompressed archive is gzipped once (deterministically) and kept.
    pub fn push_blob(&self, diff_id: &str) -> Result<(String, u64, String, PathBuf), ImageError> {
        let mut s = self
            .layer_source(diff_id)
            .ok_or_else(|| Self::missing(diff_id))?;
        if s.media_type.contains("gzip") || s.media_type.contains("zstd") {
            let p = self.blob_path(&s.digest);
            return Ok((s.digest, s.size, s.media_type, p));
        }
        if let Some((g, n)) = &s.gzip {
            let p = self.blob_path(g);
            if p.is_file() {
                return Ok((g.clone(), *n, MT_DOCKER_LAYER_GZIP.into(), p));
            }
        }
        let tmp = self.scratch("gzip");
        {
            let src = self.blob_path(&s.digest);
            let mut r = std::fs::File::open(&src).map_err(io_err(&src))?;
            let out = std::fs::File::create(&tmp).map_err(io_err(&tmp))?;
            // No name or time in the header: the same layer always gzips to the same blob.
            let mut gz = flate2::GzBuilder::new()
                .mtime(0)
                .write(out, flate2::Compression::default());
            std::io::copy(&mut r, &mut gz).map_err(io_err(&tmp))?;
            gz.finish().map_err(io_err(&tmp))?;
        }
        let (g, n) = sha_file(&tmp)?;
        let p = self.blob_path(&g);
        std::fs::rename(&tmp, &p).map_err(io_err(&p))?;
        s.gzip = Some((g.clone(), n));
        self.write_source(diff_id, &s)?;
        Ok((g, n, MT_DOCKER_LAYER_GZIP.into(), p))
    }

    /// A layer's size as dockerd counts it: its files' bytes (as the image's size does).
    pub fn layer_size(&self, diff_id: &str) -> i64 {
        super::dir_size(&self.lower_path(diff_id))
    }

    /// Adds an uncompressed layer tar (import, commit): unpacks it over `lowers`, keeps the
    /// archive; returns its diff-id.
    pub fn add_layer(&self, tar: &Path, lowers: &[PathBuf]) -> Result<String, ImageError> {
        let (diff_id, _) = sha_file(tar)?;
        let dest = self.layer_path(&diff_id);
        if !dest.is_dir() {
            let tmp = self.scratch("layer");
            super::unpack_verified(tar, &tmp, &dest, &diff_id, lowers, &diff_id)?;
        }
        self.record_source(&diff_id, tar, Some(MT_LAYER_TAR), false)?;
        Ok(diff_id)
    }

    /// Stores an image config; returns the image id.
    pub fn add_config(&self, bytes: &[u8]) -> Result<String, ImageError> {
        let id = format!("sha256:{}", hex::encode(Sha256::digest(bytes)));
        let p = self.blob_path(&id);
        std::fs::write(&p, bytes).map_err(io_err(&p))?;
        let mut refs = self.refs.lock().unwrap();
        refs.digests.entry(id.clone()).or_default();
        self.save(&refs)?;
        Ok(id)
    }

    /// The raw config bytes of an image.
    pub fn config_bytes(&self, id: &str) -> Option<Vec<u8>> {
        std::fs::read(self.blob_path(id))
            .ok()
            .or_else(|| self.shared_config(id))
    }

    /// Records `name@digest` for an image (after a push).
    pub fn add_repo_digest(&self, id: &str, rd: String) -> Result<(), ImageError> {
        let mut refs = self.refs.lock().unwrap();
        let ds = refs.digests.entry(id.to_string()).or_default();
        if !ds.contains(&rd) {
            ds.push(rd);
        }
        self.save(&refs)
    }

    /// Repositories (`host/repo`, familiar form) of images that have layer `diff_id`, from
    /// their repo digests: where a registry may already hold its blob.
    pub fn repos_with_layer(&self, diff_id: &str) -> Vec<String> {
        let refs = self.refs.lock().unwrap();
        let ds: Vec<(String, Vec<String>)> = refs
            .digests
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        drop(refs);
        let mut out = BTreeSet::new();
        for (id, rds) in ds {
            let has = self
                .config(&id)
                .is_some_and(|c| c.rootfs.diff_ids.iter().any(|d| d == diff_id));
            if has {
                for rd in rds {
                    if let Some((n, _)) = rd.split_once('@') {
                        out.insert(n.to_string());
                    }
                }
            }
        }
        out.into_iter().collect()
    }

    /// Writes a `docker save` archive of `images` ((id, tags)) to `out`, in the layout
    /// dockerd 25+ writes (an OCI layout plus manifest.json and repositories). Every entry
    /// has mtime 0 and a fixed order, so the same images give the same bytes.
    pub fn save_archive<W: Write>(
        &self,
        images: &[(String, Vec<String>)],
        out: W,
    ) -> Result<W, ImageError> {
        let mut tar = tar::Builder::new(out);
        let w = |e: std::io::Error| bad(format!("writing the archive: {e}"));
        let dir = |tar: &mut tar::Builder<W>, name: &str| {
            let mut h = tar::Header::new_ustar();
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(0o755);
            h.set_mtime(0);
            h.set_size(0);
            tar.append_data(&mut h, name, std::io::empty())
        };
        fn file<W: Write>(
            tar: &mut tar::Builder<W>,
            name: &str,
            size: u64,
            r: impl Read,
        ) -> std::io::Result<()> {
            let mut h = tar::Header::new_ustar();
            h.set_entry_type(tar::EntryType::Regular);
            h.set_mode(0o644);
            h.set_mtime(0);
            h.set_size(size);
            tar.append_data(&mut h, name, r)
        }
        dir(&mut tar, "blobs/").map_err(w)?;
        dir(&mut tar, "blobs/sha256/").map_err(w)?;
        let mut written = BTreeSet::new();
        let mut manifest = Vec::new();
        let mut index = Vec::new();
        let mut repositories: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        for (id, tags) in images {
            let cbytes = self
                .config_bytes(id)
                .ok_or_else(|| bad(format!("no config for {id}")))?;
            let config: ImageConfig =
                serde_json::from_slice(&cbytes).map_err(|e| bad(format!("config {id}: {e}")))?;
            let mut layers = Vec::new();
            let mut descs = Vec::new();
            for d in &config.rootfs.diff_ids {
                let name = format!("blobs/sha256/{}", hex_of(d));
                // The tar header needs the size first: spool the uncompressed layer.
                let spool = self.scratch("save-layer");
                let size = {
                    let mut r = self.layer_tar(d)?;
                    let mut f = std::fs::File::create(&spool).map_err(io_err(&spool))?;
                    std::io::copy(&mut r, &mut f).map_err(io_err(&spool))?
                };
                if written.insert(name.clone()) {
                    let f = std::fs::File::open(&spool).map_err(io_err(&spool))?;
                    file(&mut tar, &name, size, f).map_err(w)?;
                }
                let _ = std::fs::remove_file(&spool);
                layers.push(name);
                descs.push(serde_json::json!({
                    "mediaType": MT_LAYER_TAR, "digest": d, "size": size,
                }));
            }
            let cname = format!("blobs/sha256/{}", hex_of(id));
            if written.insert(cname.clone()) {
                file(&mut tar, &cname, cbytes.len() as u64, &cbytes[..]).map_err(w)?;
            }
            let m = serde_json::json!({
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": id, "size": cbytes.len(),
                },
                "layers": descs,
            });
            let mbytes = serde_json::to_vec(&m).unwrap_or_default();
            let mdigest = format!("sha256:{}", hex::encode(Sha256::digest(&mbytes)));
            let mname = format!("blobs/sha256/{}", hex_of(&mdigest));
            if written.insert(mname.clone()) {
                file(&mut tar, &mname, mbytes.len() as u64, &mbytes[..]).map_err(w)?;
            }
            let desc = |ann: serde_json::Value| {
                serde_json::json!({
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": mdigest, "size": mbytes.len(), "annotations": ann,
                })
            };
            if tags.is_empty() {
                index.push(desc(serde_json::json!({})));
            }
            for t in tags {
                let Ok(r) = Reference::parse(t) else { continue };
                let tag = r.tag.clone().unwrap_or_else(|| "latest".into());
                index.push(desc(serde_json::json!({
                    "io.containerd.image.name": format!("{}/{}:{tag}", r.registry, r.repository),
                    "org.opencontainers.image.ref.name": tag,
                })));
                repositories
                    .entry(r.familiar_name())
                    .or_default()
                    .insert(tag, hex_of(id).to_string());
            }
            manifest.push(serde_json::json!({
                "Config": cname, "RepoTags": if tags.is_empty() { None } else { Some(tags) },
                "Layers": layers,
            }));
        }
        let idx = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": index,
        });
        let blobs: [(&str, Vec<u8>); 4] = [
            ("index.json", serde_json::to_vec(&idx).unwrap_or_default()),
            (
                "manifest.json",
                serde_json::to_vec(&manifest).unwrap_or_default(),
            ),
            ("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec()),
            (
                "repositories",
                serde_json::to_vec(&repositories).unwrap_or_default(),
            ),
        ];
        for (n, b) in blobs {
            if n == "repositories" && repositories.is_empty() {
                continue;
            }
            file(&mut tar, n, b.len() as u64, &b[..]).map_err(w)?;
        }
        tar.into_inner().map_err(w)
    }
}

/// Tars a container's overlayfs upper dir as a layer (`docker commit`): overlay whiteouts
/// (0:0 character devices) become `.wh.NAME` files and opaque directories get
/// `.wh..wh..opq`; entries in name order, owners and times as they are. The mount points
/// the engine made for a run (empty `/etc/hosts`, `/etc/hostname`, `/etc/resolv.conf`, empty
/// `/proc`, `/sys`, `/dev`) are left out, as dockerd's init layer keeps them out of a diff.
pub fn diff_tar<W: Write>(upper: &Path, out: W) -> std::io::Result<W> {
    let mut tar = tar::Builder::new(out);
    tar.follow_symlinks(false);
    walk(upper, Path::new(""), &mut tar)?;
    tar.into_inner()
}

fn header_for(m: &std::fs::Metadata) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_mode(m.mode() & 0o7777);
    h.set_uid(m.uid() as u64);
    h.set_gid(m.gid() as u64);
    h.set_mtime(m.mtime().max(0) as u64);
    h.set_size(0);
    h
}

fn opaque(p: &Path) -> bool {
    let c = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(p.as_os_str()));
    let Ok(c) = c else { return false };
    let mut v = [0u8; 2];
    for name in [c"trusted.overlay.opaque", c"user.overlay.opaque"] {
        // SAFETY: valid NUL-terminated path and attribute name, and a buffer of its length.
        let n = unsafe {
            libc::lgetxattr(
                c.as_ptr(),
                name.as_ptr(),
                v.as_mut_ptr() as *mut libc::c_void,
                v.len(),
            )
        };
        if n == 1 && v[0] == b'y' {
            return true;
        }
    }
    false
}

/// A mount point the engine made in the upper dir (see [`diff_tar`]).
fn engine_made(rel: &Path, p: &Path, m: &std::fs::Metadata) -> bool {
    fn no_files(d: &Path) -> bool {
        std::fs::read_dir(d).is_ok_and(|rd| {
            rd.flatten()
                .all(|e| e.file_type().is_ok_and(|t| t.is_dir()) && no_files(&e.path()))
        })
    }
    match rel.to_str() {
        Some("etc/hosts" | "etc/hostname" | "etc/resolv.conf" | ".dockerenv") => {
            m.is_file() && m.len() == 0
        }
        Some("proc" | "sys" | "dev") => m.is_dir() && no_files(p),
        _ => false,
    }
}

fn walk<W: Write>(dir: &Path, rel: &Path, tar: &mut tar::Builder<W>) -> std::io::Result<()> {
    let mut names: Vec<_> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .collect();
    names.sort();
    if !rel.as_os_str().is_empty() && opaque(dir) {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(0);
        h.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut h, rel.join(".wh..wh..opq"), std::io::empty())?;
    }
    for n in names {
        let p = dir.join(&n);
        let r = rel.join(&n);
        let m = std::fs::symlink_metadata(&p)?;
        if engine_made(&r, &p, &m) {
            continue;
        }
        let ft = m.file_type();
        let mut h = header_for(&m);
        if ft.is_char_device() && m.rdev() == 0 {
            let mut wh = std::ffi::OsString::from(".wh.");
            wh.push(&n);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            tar.append_data(&mut h, rel.join(wh), std::io::empty())?;
        } else if ft.is_dir() {
            h.set_entry_type(tar::EntryType::Directory);
            tar.append_data(&mut h, &r, std::io::empty())?;
            walk(&p, &r, tar)?;
        } else if ft.is_symlink() {
            h.set_entry_type(tar::EntryType::Symlink);
            let target = std::fs::read_link(&p)?;
            tar.append_link(&mut h, &r, target)?;
        } else if ft.is_file() {
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(m.len());
            tar.append_data(&mut h, &r, std::fs::File::open(&p)?)?;
        } else if ft.is_fifo() || ft.is_char_device() || ft.is_block_device() {
            h.set_entry_type(if ft.is_fifo() {
                tar::EntryType::Fifo
            } else if ft.is_char_device() {
                tar::EntryType::Char
            } else {
                tar::EntryType::Block
            });
            let dev = m.rdev();
            h.set_device_major(libc::major(dev))?;
            h.set_device_minor(libc::minor(dev))?;
            tar.append_data(&mut h, &r, std::io::empty())?;
        }
        // Sockets are not part of a layer.
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Store) {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        (d, s)
    }

    fn layer_tar(file: &str, data: &[u8]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, file, data).unwrap();
        b.into_inner().unwrap()
    }

    /// An image of one layer added as import does it; returns its id.
    fn image(s: &Store, dir: &Path, tag: &str) -> String {
        let t = dir.join("l.tar");
        std::fs::write(&t, layer_tar("hello.txt", b"hi\n")).unwrap();
        let d = s.add_layer(&t, &[]).unwrap();
        let config = format!(
            "{{\"architecture\":\"amd64\",\"os\":\"linux\",\"config\":{{}},\
             \"rootfs\":{{\"type\":\"layers\",\"diff_ids\":[\"{d}\"]}}}}"
        );
        let id = s.add_config(config.as_bytes()).unwrap();
        s.tag(&id, tag).unwrap();
        id
    }

    /// Two steps that changed nothing share the empty layer: it is one lower dir, at the
    /// topmost place it occurs (overlayfs refuses a lower dir given twice).
    #[test]
    fn a_layer_that_occurs_twice_is_one_lower_dir_at_its_top_place() {
        let (d, s) = store();
        let (ta, tb) = (d.path().join("a.tar"), d.path().join("b.tar"));
        std::fs::write(&ta, layer_tar("a", b"a")).unwrap();
        std::fs::write(&tb, layer_tar("b", b"b")).unwrap();
        let a = s.add_layer(&ta, &[]).unwrap();
        let b = s.add_layer(&tb, &[]).unwrap();
        let config = format!(
            "{{\"architecture\":\"amd64\",\"os\":\"linux\",\"config\":{{}},\
             \"rootfs\":{{\"type\":\"layers\",\"diff_ids\":[\"{a}\",\"{b}\",\"{a}\"]}}}}"
        );
        let id = s.add_config(config.as_bytes()).unwrap();
        assert_eq!(
            s.lowers(&id).unwrap(),
            vec![s.lower_path(&a), s.lower_path(&b)]
        );
    }

    #[test]
    fn save_is_deterministic_and_loads_back_with_the_same_id() {
        let (d, s) = store();
        let id = image(&s, d.path(), "busybox:latest");
        let imgs = vec![(id.clone(), vec!["busybox:latest".to_string()])];
        let a = s.save_archive(&imgs, Vec::new()).unwrap();
        let b = s.save_archive(&imgs, Vec::new()).unwrap();
        assert_eq!(a, b, "two saves of one image differ");
        let mut names = Vec::new();
        let mut ar = tar::Archive::new(&a[..]);
        for e in ar.entries().unwrap() {
            let e = e.unwrap();
            assert_eq!(e.header().mtime().unwrap(), 0);
            names.push(e.path().unwrap().display().to_string());
        }
        for n in ["manifest.json", "index.json", "oci-layout", "repositories"] {
            assert!(names.contains(&n.to_string()), "{n} missing in {names:?}");
        }
        assert!(names.contains(&format!("blobs/sha256/{}", hex_of(&id))));
        // Into a fresh store: the same id and tag.
        let (d2, s2) = store();
        let p = d2.path().join("in.tar");
        std::fs::write(&p, &a).unwrap();
        assert_eq!(s2.load(&p).unwrap(), vec!["busybox:latest".to_string()]);
        assert_eq!(s2.resolve("busybox:latest"), Some(id.clone()));
        // And its layer archive was kept, so it saves again to the same bytes.
        assert_eq!(s2.save_archive(&imgs, Vec::new()).unwrap(), a);
    }

    #[test]
    fn push_blob_is_gzip_and_stable() {
        let (d, s) = store();
        let id = image(&s, d.path(), "x:1");
        let diff = s.config(&id).unwrap().rootfs.diff_ids[0].clone();
        let (g1, n1, mt, p) = s.push_blob(&diff).unwrap();
        assert_eq!(mt, MT_DOCKER_LAYER_GZIP);
        assert!(is_gzip(&p));
        assert_eq!(sha_file(&p).unwrap(), (g1.clone(), n1));
        let (g2, ..) = s.push_blob(&diff).unwrap();
        assert_eq!(g1, g2);
        let mut out = Vec::new();
        s.layer_tar(&diff).unwrap().read_to_end(&mut out).unwrap();
        assert_eq!(out, layer_tar("hello.txt", b"hi\n"));
    }

    #[test]
    fn diff_of_an_upper_dir() {
        let d = tempfile::tempdir().unwrap();
        let up = d.path().join("upper");
        std::fs::create_dir_all(up.join("etc")).unwrap();
        std::fs::create_dir_all(up.join("proc")).unwrap();
        std::fs::write(up.join("etc/hosts"), b"").unwrap();
        std::fs::write(up.join("etc/new.conf"), b"x=1\n").unwrap();
        std::os::unix::fs::symlink("new.conf", up.join("etc/link")).unwrap();
        let c = std::ffi::CString::new(up.join("etc/gone").to_str().unwrap()).unwrap();
        // SAFETY: mknod with a valid NUL-terminated path (an overlay whiteout).
        let rc = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR, libc::makedev(0, 0)) };
        let root = rc == 0;
        let t = diff_tar(&up, Vec::new()).unwrap();
        let mut ar = tar::Archive::new(&t[..]);
        let names: Vec<String> = ar
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        let mut want = vec!["etc", "etc/.wh.gone", "etc/link", "etc/new.conf"];
        if !root {
            // Without mknod (not root) there is no whiteout to see.
            want.retain(|n| !n.contains(".wh."));
        }
        assert_eq!(names, want);
    }
}
