//! A container's files across VMs: its changes layer.
//!
//! A container's VM goes when the container ends, and a later `docker start` or `restart`
//! runs it in a new clone of the template (a clone restored from the template's RAM cannot
//! take a written disk: the guest's cached file-system state would not match it). So before
//! the VM is killed the daemon asks the guest engine for the container's writable layer as a
//! layer tar (`GET /containers/{id}/export?layer=changes`: files, deletions as `.wh.`
//! whiteouts, opaque directories) and keeps it as `changes.tar` in the container's directory
//! (temp + fsync + rename). The next run stacks it on the image's layers: the tar goes into
//! the layer store as a blob and an unpacked tree, with an image config that is the image's
//! plus that layer ([`Stacked`]), pinned for the container while its VM runs; the guest
//! engine finds that config in the store like any image. The store's copies are garbage once
//! the VM is gone (the container's directory holds the layer); the next run puts them back.
//!
//! A run's layer holds only that run's changes (its upper dir starts empty on the stacked
//! layer), so it is [`merge`]d onto the kept one: one layer per container, whatever the
//! number of restarts (a restart policy may run a container thousands of times).

use crate::images::ImageRecord;
use crate::store::LayerStore;
use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The kept layer, in the container's directory.
pub const LAYER_FILE: &str = "changes.tar";

/// A tar entry's path, relative, without `./` or trailing `/`.
fn norm(p: &Path) -> PathBuf {
    let s = p.to_string_lossy();
    let s = s.trim_start_matches("./").trim_start_matches('/');
    PathBuf::from(s.trim_end_matches('/'))
}

/// What a layer does, by path.
#[derive(Default)]
struct Layer {
    /// Every entry's path (whiteout and opaque markers too), and whether it is a directory.
    paths: HashMap<PathBuf, bool>,
    /// Paths it deletes (`dir/.wh.NAME` deletes `dir/NAME`).
    whiteouts: HashSet<PathBuf>,
    /// Directories it makes opaque (`dir/.wh..wh..opq`): what is below them goes.
    opaque: HashSet<PathBuf>,
}

impl Layer {
    fn read(tar: &Path) -> Result<Layer> {
        let mut l = Layer::default();
        let f = std::fs::File::open(tar).with_context(|| format!("opening {}", tar.display()))?;
        let mut a = tar::Archive::new(f);
        for e in a.entries().context("reading the layer")? {
            let e = e.context("reading the layer")?;
            let p = norm(&e.path().context("an entry's path")?);
            let dir = e.header().entry_type() == tar::EntryType::Directory;
            let parent = p.parent().map(Path::to_path_buf).unwrap_or_default();
            match p.file_name().and_then(|n| n.to_str()) {
                Some(".wh..wh..opq") => {
                    l.opaque.insert(parent);
                }
                Some(n) if n.starts_with(".wh.") => {
                    l.whiteouts.insert(parent.join(&n[4..]));
                }
                _ => {}
            }
            l.paths.insert(p, dir);
        }
        Ok(l)
    }

    /// Whether an entry at `p` of the layer below is gone once this layer is on top.
    fn hides(&self, p: &Path, is_dir: bool) -> bool {
        // Replaced (a directory over a directory only updates it: its contents stay).
        if let Some(&dir) = self.paths.get(p) {
            if !(dir && is_dir) {
                return true;
            }
        }
        // A whiteout below for a path this layer makes again.
        if let Some(n) = p.file_name().and_then(|n| n.to_str()) {
            if let Some(name) = n.strip_prefix(".wh.").filter(|n| !n.starts_with(".wh.")) {
                let again = p.parent().unwrap_or(Path::new("")).join(name);
                if self.paths.contains_key(&again) {
                    return true;
                }
            }
        }
        if self.whiteouts.contains(p) {
            return true;
        }
        // Below a deleted path, an opaque directory or something that is no directory now.
        p.ancestors().skip(1).any(|a| {
            !a.as_os_str().is_empty()
                && (self.whiteouts.contains(a)
                    || self.opaque.contains(a)
                    || self.paths.get(a) == Some(&false))
        })
    }
}

/// What [`copy_entries`] does with an entry.
enum Take {
    Skip,
    Keep,
    /// A directory both layers have: the lower one's place, the upper one's header.
    As(Box<tar::Header>),
}

/// Copies `tar`'s entries into `out` as `take` says.
fn copy_entries<W: Write>(
    tar: &Path,
    out: &mut tar::Builder<W>,
    mut take: impl FnMut(&Path, &tar::Header) -> Take,
) -> Result<()> {
    let f = std::fs::File::open(tar).with_context(|| format!("opening {}", tar.display()))?;
    let mut a = tar::Archive::new(f);
    for e in a.entries().context("reading the layer")? {
        let mut e = e.context("reading the layer")?;
        let path = e.path().context("an entry's path")?.into_owned();
        let mut h = match take(&norm(&path), e.header()) {
            Take::Skip => continue,
            Take::Keep => e.header().clone(),
            Take::As(h) => *h,
        };
        match h.entry_type() {
            tar::EntryType::Symlink | tar::EntryType::Link => {
                let target = e
                    .link_name()
                    .context("a link's target")?
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                out.append_link(&mut h, &path, &target)?;
            }
            _ => out.append_data(&mut h, &path, &mut e)?,
        }
    }
    Ok(())
}

/// The layer `newer` (made on top of `older`) squashed onto `older`: one layer with both
/// runs' changes to the image, written to `out`. A directory both have keeps its place
/// (before what is in it) with `newer`'s metadata.
pub fn merge<W: Write>(older: &Path, newer: &Path, out: W) -> Result<W> {
    let top = Layer::read(newer).context("the new changes")?;
    let mut dirs: HashMap<PathBuf, tar::Header> = HashMap::new();
    {
        let f = std::fs::File::open(newer)?;
        let mut a = tar::Archive::new(f);
        for e in a.entries()? {
            let e = e?;
            if e.header().entry_type() == tar::EntryType::Directory {
                dirs.insert(norm(&e.path()?), e.header().clone());
            }
        }
    }
    let mut b = tar::Builder::new(out);
    b.follow_symlinks(false);
    let mut placed = HashSet::new();
    copy_entries(older, &mut b, |p, h| {
        let dir = h.entry_type() == tar::EntryType::Directory;
        if top.hides(p, dir) {
            return Take::Skip;
        }
        match dirs.get(p) {
            Some(nh) if dir && placed.insert(p.to_path_buf()) => Take::As(Box::new(nh.clone())),
            // A second entry for one directory (not made by this module): once is enough.
            Some(_) if dir => Take::Skip,
            _ => Take::Keep,
        }
    })
    .context("the kept changes")?;
    copy_entries(newer, &mut b, |p, h| {
        if h.entry_type() == tar::EntryType::Directory && placed.contains(p) {
            Take::Skip
        } else {
            Take::Keep
        }
    })
    .context("the new changes")?;
    Ok(b.into_inner()?)
}

pub fn sha256_file(p: &Path) -> Result<String> {
    let mut h = Sha256::new();
    let mut f = std::fs::File::open(p).with_context(|| format!("opening {}", p.display()))?;
    std::io::copy(&mut f, &mut h)?;
    Ok(format!("sha256:{}", hex::encode(h.finalize())))
}

/// Writes `data` to `dest` durably: temp file, fsync, rename, fsync of the directory.
fn replace_with(
    dest: &Path,
    write: impl FnOnce(std::fs::File) -> Result<std::fs::File>,
) -> Result<()> {
    let tmp = dest.with_extension("tmp");
    let r = (|| {
        let f =
            std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let f = write(f)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, dest).with_context(|| format!("renaming to {}", dest.display()))?;
        if let Some(d) = dest.parent() {
            crate::store::sync_dir(d)?;
        }
        Ok(())
    })();
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r
}

/// Whether the tar at `p` ends with its two zero end-of-archive blocks.
fn ends_complete(p: &Path) -> Result<bool> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(p)?;
    let len = f.metadata()?.len();
    if len < 1024 || len % 512 != 0 {
        return Ok(false);
    }
    f.seek(SeekFrom::Start(len - 1024))?;
    let mut end = [0u8; 1024];
    f.read_exact(&mut end)?;
    Ok(end.iter().all(|&b| b == 0))
}

/// Everything the container changed, as one layer at `out`: its kept layer with the
/// current run's (`run`, if its VM runs) squashed on top; an empty layer for none. Blocking.
pub fn all_changes(dir: &Path, run: Option<&Path>, out: &Path) -> Result<()> {
    let kept = dir.join(LAYER_FILE);
    if let Some(run) = run {
        Layer::read(run).context("the container's changes")?;
        if !ends_complete(run)? {
            bail!("the container's changes: the layer tar is cut short");
        }
    }
    replace_with(out, |mut f| match (kept.exists(), run) {
        (true, Some(run)) => {
            let w = merge(&kept, run, std::io::BufWriter::new(f))?;
            w.into_inner().map_err(|e| anyhow::anyhow!("writing: {e}"))
        }
        (true, None) => {
            std::io::copy(&mut std::fs::File::open(&kept)?, &mut f)?;
            Ok(f)
        }
        (false, Some(run)) => {
            std::io::copy(&mut std::fs::File::open(run)?, &mut f)?;
            Ok(f)
        }
        (false, None) => Ok(tar::Builder::new(f).into_inner()?),
    })
}

/// Keeps a run's changes layer (the tar at `run`, a scratch file that is removed) in the
/// container's directory `dir`: merged onto the one kept before, if any. Blocking.
pub fn keep(dir: &Path, run: &Path) -> Result<()> {
    let kept = dir.join(LAYER_FILE);
    let r = (|| {
        // Checked first: a broken tar from the guest never replaces the kept layer. A stream
        // cut at an entry's end would read as a shorter layer: the end-of-archive blocks
        // that a complete tar ends with tell the two apart.
        Layer::read(run).context("the container's changes")?;
        if !ends_complete(run)? {
            bail!("the container's changes: the layer tar is cut short");
        }
        if kept.exists() {
            replace_with(&kept, |f| {
                let w = merge(&kept, run, std::io::BufWriter::new(f))?;
                w.into_inner().map_err(|e| anyhow::anyhow!("writing: {e}"))
            })
        } else {
            replace_with(&kept, |mut f| {
                std::io::copy(&mut std::fs::File::open(run)?, &mut f)?;
                Ok(f)
            })
        }
    })();
    let _ = std::fs::remove_file(run);
    r
}

/// The image a container runs on when it has a kept layer: its image's config and layers
/// plus that layer (see the module doc).
pub struct Stacked {
    /// What the layer store must keep while the container's VM runs (pin it first).
    pub record: ImageRecord,
    config: Vec<u8>,
    layer: PathBuf,
    lowers: Vec<PathBuf>,
}

/// The stacked image for `base` and the container's kept layer in `dir`, if it has one.
/// Blocking (hashes the layer).
pub fn stacked(store: &LayerStore, base: &ImageRecord, dir: &Path) -> Result<Option<Stacked>> {
    let layer = dir.join(LAYER_FILE);
    if !layer.exists() {
        return Ok(None);
    }
    if base.diff_ids.is_empty() {
        bail!("the container's image is not in the host's layer store; pull it again");
    }
    let diff_id = sha256_file(&layer)?;
    let cfg = std::fs::read(store.blob_path(&base.id))
        .with_context(|| format!("reading the config of image {}", base.id))?;
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&cfg).with_context(|| format!("image config {}", base.id))?;
    if !cfg["rootfs"]["diff_ids"].is_array() {
        bail!("image config {}: no rootfs.diff_ids", base.id);
    }
    if let Some(a) = cfg["rootfs"]["diff_ids"].as_array_mut() {
        a.push(serde_json::json!(diff_id));
    }
    if !cfg["history"].is_array() {
        cfg["history"] = serde_json::json!([]);
    }
    if let Some(h) = cfg["history"].as_array_mut() {
        h.push(serde_json::json!({"created_by": "axion-vmd: the container's own changes"}));
    }
    let config = serde_json::to_vec(&cfg)?;
    let id = format!("sha256:{}", hex::encode(Sha256::digest(&config)));
    let mut record = base.clone();
    record.id = id;
    record.layers.push(diff_id.clone());
    record.diff_ids.push(diff_id);
    let lowers = base
        .diff_ids
        .iter()
        .rev()
        .map(|d| store.layer_path(d))
        .collect();
    Ok(Some(Stacked {
        record,
        config,
        layer,
        lowers,
    }))
}

impl Stacked {
    /// Puts the layer (blob and unpacked tree) and the config into the store (what is there
    /// and intact already is kept). Blocking.
    pub fn store(&self, store: &LayerStore) -> Result<()> {
        let diff_id = self.record.diff_ids.last().cloned().unwrap_or_default();
        store.put_file(&diff_id, &self.layer)?;
        store.unpack(&diff_id, &diff_id, &self.lowers)?;
        store.put_bytes(&self.record.id, &self.config)
    }
}

/// A scratch file in the container's directory for a run's layer (for [`keep`]).
pub fn scratch_of(dir: &Path) -> PathBuf {
    dir.join(format!("changes-run-{}.tar", crate::random_hex(8)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    enum E<'a> {
        File(&'a str, &'a [u8]),
        Dir(&'a str),
        Link(&'a str, &'a str),
    }

    fn tar_of(p: &Path, entries: &[E]) {
        let mut b = tar::Builder::new(std::fs::File::create(p).unwrap());
        for e in entries {
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o644);
            match e {
                E::File(path, data) => {
                    h.set_size(data.len() as u64);
                    h.set_entry_type(tar::EntryType::Regular);
                    b.append_data(&mut h, path, *data).unwrap();
                }
                E::Dir(path) => {
                    h.set_mode(0o755);
                    h.set_size(0);
                    h.set_entry_type(tar::EntryType::Directory);
                    b.append_data(&mut h, path, std::io::empty()).unwrap();
                }
                E::Link(path, target) => {
                    h.set_size(0);
                    h.set_entry_type(tar::EntryType::Symlink);
                    b.append_link(&mut h, path, target).unwrap();
                }
            }
        }
        b.finish().unwrap();
    }

    /// (path, content or link target) of every entry, in order.
    fn entries(p: &Path) -> Vec<(String, String)> {
        let mut a = tar::Archive::new(std::fs::File::open(p).unwrap());
        a.entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let path = norm(&e.path().unwrap()).display().to_string();
                let mut s = String::new();
                if let Some(l) = e.link_name().unwrap() {
                    s = format!("-> {}", l.display());
                } else {
                    e.read_to_string(&mut s).unwrap();
                }
                (path, s)
            })
            .collect()
    }

    fn kept(dir: &Path) -> Vec<(String, String)> {
        entries(&dir.join(LAYER_FILE))
    }

    fn run(dir: &Path, e: &[E]) {
        let p = scratch_of(dir);
        tar_of(&p, e);
        keep(dir, &p).unwrap();
        assert!(!p.exists(), "the run's scratch file goes");
    }

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn runs_are_squashed_into_one_layer() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path();
        run(
            dir,
            &[
                E::Dir("etc"),
                E::File("etc/a", b"1"),
                E::File("etc/.wh.passwd", b""),
                E::File("f", b"kept"),
                E::Dir("tmp"),
                E::File("tmp/x", b"x"),
                E::Link("l", "f"),
                E::Dir("var"),
                E::File("var/log", b"old"),
            ],
        );
        assert_eq!(kept(dir).len(), 9);
        // The second run: changes etc/a, makes passwd again, deletes tmp, replaces the
        // directory var by a file, makes a new opaque directory over nothing, keeps f.
        run(
            dir,
            &[
                E::Dir("etc"),
                E::File("etc/a", b"2"),
                E::File("etc/passwd", b"root"),
                E::File(".wh.tmp", b""),
                E::File("var", b"now a file"),
                E::Dir("new"),
                E::File("new/.wh..wh..opq", b""),
                E::File("new/y", b"y"),
            ],
        );
        assert_eq!(
            kept(dir),
            pairs(&[
                ("etc", ""),
                ("f", "kept"),
                ("l", "-> f"),
                ("etc/a", "2"),
                ("etc/passwd", "root"),
                (".wh.tmp", ""),
                ("var", "now a file"),
                ("new", ""),
                ("new/.wh..wh..opq", ""),
                ("new/y", "y"),
            ])
        );
        // A third run empties etc (rm -rf etc; mkdir etc) and deletes f.
        run(
            dir,
            &[
                E::Dir("etc"),
                E::File("etc/.wh..wh..opq", b""),
                E::File("etc/b", b"b"),
                E::File(".wh.f", b""),
            ],
        );
        assert_eq!(
            kept(dir),
            pairs(&[
                ("etc", ""),
                ("l", "-> f"),
                (".wh.tmp", ""),
                ("var", "now a file"),
                ("new", ""),
                ("new/.wh..wh..opq", ""),
                ("new/y", "y"),
                ("etc/.wh..wh..opq", ""),
                ("etc/b", "b"),
                (".wh.f", ""),
            ])
        );
    }

    #[test]
    fn a_broken_run_never_replaces_the_kept_layer() {
        let d = tempfile::tempdir().unwrap();
        run(d.path(), &[E::File("f", b"kept")]);
        let bad = scratch_of(d.path());
        // A header whose file data is cut short.
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(5000);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, "g", &[0u8; 5000][..]).unwrap();
        let mut bytes = b.into_inner().unwrap();
        bytes.truncate(1024);
        std::fs::write(&bad, &bytes).unwrap();
        assert!(keep(d.path(), &bad).is_err());
        assert!(!bad.exists());
        // Cut where an entry ends: a valid-looking but incomplete layer.
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(3);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, "g", &b"abc"[..]).unwrap();
        let mut bytes = b.into_inner().unwrap();
        bytes.truncate(1024);
        std::fs::write(&bad, &bytes).unwrap();
        let e = keep(d.path(), &bad).unwrap_err();
        assert!(format!("{e:#}").contains("cut short"), "{e:#}");
        assert_eq!(kept(d.path()), pairs(&[("f", "kept")]));
        let names: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, [LAYER_FILE], "no temp file is left");
    }

    #[test]
    fn a_kept_layer_is_stacked_on_the_image() {
        let d = tempfile::tempdir().unwrap();
        let s = LayerStore::open(&d.path().join("store")).unwrap();
        let (blob, digest, diff_id) = crate::store::tests::test_layer("bin/sh", b"shell");
        s.put_bytes(&digest, &blob).unwrap();
        s.unpack(&digest, &diff_id, &[]).unwrap();
        let cfg = serde_json::to_vec(&serde_json::json!({
            "config": {"Cmd": ["sh"]},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        }))
        .unwrap();
        let id = format!("sha256:{}", hex::encode(Sha256::digest(&cfg)));
        s.put_bytes(&id, &cfg).unwrap();
        let base = ImageRecord {
            name: "busybox:latest".into(),
            digest: String::new(),
            id: id.clone(),
            created: String::new(),
            size: 0,
            config: Default::default(),
            layers: vec![digest.clone()],
            diff_ids: vec![diff_id.clone()],
            source: None,
        };
        let cdir = d.path().join("c");
        std::fs::create_dir(&cdir).unwrap();
        assert!(stacked(&s, &base, &cdir).unwrap().is_none(), "nothing kept");
        run(&cdir, &[E::File("f", b"kept"), E::File("bin/.wh.sh", b"")]);
        let st = stacked(&s, &base, &cdir).unwrap().unwrap();
        st.store(&s).unwrap();
        let r = &st.record;
        assert_eq!(r.diff_ids.len(), 2);
        assert_eq!(r.layers, vec![digest.clone(), r.diff_ids[1].clone()]);
        assert_eq!(s.check(&r.id, &r.layers, &r.diff_ids), vec![]);
        let top = s.layer_path(&r.diff_ids[1]);
        assert_eq!(std::fs::read(top.join("f")).unwrap(), b"kept");
        let c: serde_json::Value =
            serde_json::from_slice(&std::fs::read(s.blob_path(&r.id)).unwrap()).unwrap();
        assert_eq!(c["rootfs"]["diff_ids"][1], serde_json::json!(r.diff_ids[1]));
        assert_eq!(c["config"]["Cmd"][0], "sh");
        // Stored twice: the same record, nothing new.
        let again = stacked(&s, &base, &cdir).unwrap().unwrap();
        assert_eq!(again.record.id, r.id);
        again.store(&s).unwrap();
    }
}
