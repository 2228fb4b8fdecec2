//! Reading a `docker save` archive (for `docker load`): its files extracted under a scratch
//! directory, its symlinks and hard links kept as a name map and resolved by name, so
//! nothing in it is ever written through a link. Entry names must stay inside the archive.
//! The engine parses `manifest.json` and unpacks the layers (packages/engine/src/images).

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The archive's fault; the message says what.
    #[error("{0}")]
    Bad(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

fn bad(msg: impl Into<String>) -> ArchiveError {
    ArchiveError::Bad(msg.into())
}

fn io_err(p: &Path) -> impl FnOnce(std::io::Error) -> ArchiveError + '_ {
    move |source| ArchiveError::Io {
        path: p.display().to_string(),
        source,
    }
}

/// An entry name as a safe relative path: no `..`, no absolute or empty names.
fn clean(name: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in name.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            _ => return None,
        }
    }
    (!out.as_os_str().is_empty()).then_some(out)
}

/// `a/b/../c` → `a/c`; `None` when it climbs above the root.
fn normalize(p: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(x) => out.push(x),
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            _ => return None,
        }
    }
    Some(out)
}

/// The archive's files extracted under `dir`, and its symlinks resolved by name.
pub struct Extracted {
    dir: PathBuf,
    links: BTreeMap<PathBuf, PathBuf>,
}

impl Extracted {
    /// Extracts the regular files of the tar stream `r` under `dir` (which must exist and
    /// be empty); links are remembered by name.
    pub fn unpack<R: std::io::Read>(r: R, dir: &Path) -> Result<Extracted, ArchiveError> {
        let mut tar = tar::Archive::new(r);
        let mut links = BTreeMap::new();
        let entries = tar
            .entries()
            .map_err(|e| bad(format!("not a tar archive: {e}")))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| bad(format!("broken tar archive: {e}")))?;
            let raw = entry
                .path()
                .map_err(|e| bad(format!("bad entry name: {e}")))?
                .into_owned();
            let name = clean(&raw)
                .ok_or_else(|| bad(format!("entry {} escapes the archive", raw.display())))?;
            if name.as_os_str().as_encoded_bytes().contains(&0) {
                return Err(bad(format!("entry {:?} has a NUL byte in its name", name)));
            }
            match entry.header().entry_type() {
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    let dest = dir.join(&name);
                    if let Some(parent) = dest.parent() {
                        std::fs::create_dir_all(parent).map_err(io_err(parent))?;
                    }
                    let mut out = std::fs::File::create(&dest).map_err(io_err(&dest))?;
                    let size = entry.size();
                    let got = std::io::copy(&mut entry, &mut out).map_err(|e| {
                        bad(format!("{}: {e} (truncated archive?)", name.display()))
                    })?;
                    if got != size {
                        return Err(bad(format!(
                            "{}: {got} of {size} bytes (truncated archive)",
                            name.display()
                        )));
                    }
                }
                tar::EntryType::Symlink | tar::EntryType::Link => {
                    let target = entry
                        .link_name()
                        .ok()
                        .flatten()
                        .ok_or_else(|| bad(format!("{}: link without target", name.display())))?
                        .into_owned();
                    // Symlink targets are relative to the link's folder; hardlinks to the root.
                    let base = if entry.header().entry_type() == tar::EntryType::Symlink {
                        name.parent().unwrap_or(Path::new("")).join(&target)
                    } else {
                        target.clone()
                    };
                    let resolved = normalize(&base).ok_or_else(|| {
                        bad(format!("{} links outside the archive", name.display()))
                    })?;
                    links.insert(name, resolved);
                }
                tar::EntryType::Directory => {}
                other => {
                    return Err(bad(format!(
                        "{}: unexpected entry type {other:?}",
                        name.display()
                    )))
                }
            }
        }
        Ok(Extracted {
            dir: dir.to_owned(),
            links,
        })
    }

    /// The extracted file for an archive name (following its links, a few levels deep).
    pub fn file(&self, name: &str) -> Result<PathBuf, ArchiveError> {
        let mut p = clean(Path::new(name))
            .ok_or_else(|| bad(format!("manifest.json names {name:?}, outside the archive")))?;
        for _ in 0..8 {
            match self.links.get(&p) {
                Some(t) => p = t.clone(),
                None => break,
            }
        }
        let f = self.dir.join(&p);
        // Only real files under `dir`: a name through one of the archive's directories
        // cannot be a link (links are never written), so `is_file` suffices.
        if f.is_file() {
            Ok(f)
        } else {
            Err(bad(format!(
                "manifest.json names {name}, which is not in the archive"
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(name: &[u8], size_claimed: u64, data: &[u8]) -> Vec<u8> {
        let mut h = tar::Header::new_gnu();
        let mut long = name.to_vec();
        long.push(0);
        h.as_gnu_mut().unwrap().name[..13].copy_from_slice(b"././@LongLink");
        h.set_entry_type(tar::EntryType::GNULongName);
        h.set_size(long.len() as u64);
        h.set_cksum();
        let mut b = h.as_bytes().to_vec();
        b.extend_from_slice(&long);
        b.resize(b.len().div_ceil(512) * 512, 0);
        let mut h = tar::Header::new_gnu();
        h.set_path("x").unwrap();
        h.set_size(size_claimed);
        h.set_cksum();
        b.extend_from_slice(h.as_bytes());
        b.extend_from_slice(data);
        b
    }

    #[test]
    fn nul_names_and_truncated_entries_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let e = Extracted::unpack(&tar_of(b"manifest\0.json", 0, b"")[..], d.path())
            .err()
            .unwrap();
        assert!(e.to_string().contains("NUL byte"), "{e}");
        let d = tempfile::tempdir().unwrap();
        let e = Extracted::unpack(&tar_of(b"manifest.json", 1 << 30, b"[]")[..], d.path())
            .err()
            .unwrap();
        assert!(e.to_string().contains("truncated"), "{e}");
    }
}
