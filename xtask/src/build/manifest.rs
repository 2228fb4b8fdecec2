//! The manifest of a staged tree: every path with its type, mode, owner, size and sha256.
//!
//! ```json
//! { "name": "busybox", "version": "1.35.0", "key": "<hex>", "license": "GPL-2.0-only",
//!   "entries": [
//!     { "path": "/bin", "type": "dir", "mode": 493, "uid": 0, "gid": 0, "size": 0 },
//!     { "path": "/bin/busybox", "type": "file", "mode": 493, "uid": 0, "gid": 0,
//!       "size": 1177408, "sha256": "<hex>" },
//!     { "path": "/bin/ls", "type": "symlink", "mode": 511, "uid": 0, "gid": 0,
//!       "size": 7, "target": "busybox" } ] }
//! ```
//!
//! `mode` is the permission bits as a number (493 = 0o755). Everything in the image belongs
//! to root, so `uid`/`gid` are 0 whoever ran the build. Modes are normalised before the scan
//! ([`normalize_tree`]): directories 0755, files 0755 when any execute bit is set and 0644
//! otherwise, so the builder's umask never shows. Entries are sorted by path; the root
//! directory itself is not listed.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::recipe::Recipe;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub name: String,
    pub version: String,
    pub key: String,
    pub license: String,
    pub entries: Vec<Entry>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryType {
    File,
    Dir,
    Symlink,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Absolute path in the image ("/bin/busybox").
    pub path: String,
    #[serde(rename = "type")]
    pub kind: EntryType,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Bytes of a file; length of a symlink's target; 0 for a directory.
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

impl Manifest {
    /// Describes every path under `tree`.
    pub fn scan(recipe: &Recipe, key: &str, tree: &Path) -> Result<Manifest> {
        let mut entries = Vec::new();
        for e in walkdir::WalkDir::new(tree).min_depth(1).sort_by_file_name() {
            let e = e.with_context(|| format!("cannot list {}", tree.display()))?;
            let rel = e.path().strip_prefix(tree).unwrap_or(e.path());
            let Some(rel) = rel.to_str() else {
                bail!("{}: path is not UTF-8", e.path().display())
            };
            let path = format!("/{rel}");
            let meta = e
                .path()
                .symlink_metadata()
                .with_context(|| format!("cannot stat {}", e.path().display()))?;
            let mode = meta.permissions().mode() & 0o7777;
            let ft = meta.file_type();
            let entry = if ft.is_symlink() {
                let target = std::fs::read_link(e.path())?;
                let Some(target) = target.to_str() else {
                    bail!("{}: link target is not UTF-8", e.path().display())
                };
                Entry {
                    path,
                    kind: EntryType::Symlink,
                    mode: 0o777,
                    uid: 0,
                    gid: 0,
                    size: target.len() as u64,
                    sha256: None,
                    target: Some(target.to_owned()),
                }
            } else if ft.is_dir() {
                Entry {
                    path,
                    kind: EntryType::Dir,
                    mode,
                    uid: 0,
                    gid: 0,
                    size: 0,
                    sha256: None,
                    target: None,
                }
            } else if ft.is_file() {
                let sha = super::sha256_file(e.path())?;
                Entry {
                    path,
                    kind: EntryType::File,
                    mode,
                    uid: 0,
                    gid: 0,
                    size: meta.len(),
                    sha256: Some(sha),
                    target: None,
                }
            } else {
                bail!(
                    "{}: only files, directories and symlinks can be staged",
                    e.path().display()
                );
            };
            entries.push(entry);
        }
        Ok(Manifest {
            name: recipe.name().to_owned(),
            version: recipe.version().to_owned(),
            key: key.to_owned(),
            license: recipe.spec.package.license.clone(),
            entries,
        })
    }

    pub fn write(&self, path: &Path) -> Result<()> {
        let mut text = serde_json::to_string_pretty(self)?;
        text.push('\n');
        std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
    }

    pub fn load(path: &Path) -> Result<Manifest> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("cannot parse {}", path.display()))
    }

    pub fn get(&self, path: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.path == path)
    }
}

/// Sets the modes the manifest promises: directories 0755, executables 0755, other files
/// 0644 (setuid and friends are dropped: nothing we build needs them).
pub fn normalize_tree(tree: &Path) -> Result<()> {
    for e in walkdir::WalkDir::new(tree) {
        let e = e.with_context(|| format!("cannot list {}", tree.display()))?;
        let ft = e.file_type();
        if ft.is_symlink() {
            continue;
        }
        let meta = e.metadata()?;
        let mode = meta.permissions().mode() & 0o7777;
        let want = if ft.is_dir() || mode & 0o111 != 0 {
            0o755
        } else {
            0o644
        };
        if mode != want {
            std::fs::set_permissions(e.path(), std::fs::Permissions::from_mode(want))
                .with_context(|| format!("cannot chmod {}", e.path().display()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recipe(dir: &Path) -> Recipe {
        let p = dir.join("pkg.toml");
        std::fs::write(
            &p,
            "[package]\nname=\"pkg\"\nversion=\"2\"\nlicense=\"MIT\"\n\
             summary=\"s\"\n[build]\nkind=\"make\"\n",
        )
        .unwrap();
        crate::recipe::load_recipe(&p).unwrap()
    }

    #[test]
    fn scan_describes_files_dirs_and_symlinks_with_normalised_modes() {
        let d = tempfile::tempdir().unwrap();
        let r = recipe(d.path());
        let tree = d.path().join("tree");
        std::fs::create_dir_all(tree.join("bin")).unwrap();
        std::fs::write(tree.join("bin/tool"), b"hello").unwrap();
        std::fs::set_permissions(
            tree.join("bin/tool"),
            std::fs::Permissions::from_mode(0o700),
        )
        .unwrap();
        std::fs::write(tree.join("bin/data"), b"").unwrap();
        std::fs::set_permissions(
            tree.join("bin/data"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        std::os::unix::fs::symlink("tool", tree.join("bin/alias")).unwrap();
        std::fs::set_permissions(tree.join("bin"), std::fs::Permissions::from_mode(0o700)).unwrap();
        normalize_tree(&tree).unwrap();
        let m = Manifest::scan(&r, "k", &tree).unwrap();
        let paths: Vec<&str> = m.entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["/bin", "/bin/alias", "/bin/data", "/bin/tool"]);
        let tool = m.get("/bin/tool").unwrap();
        assert_eq!(
            (tool.kind, tool.mode, tool.size, tool.uid),
            (EntryType::File, 0o755, 5, 0)
        );
        assert_eq!(
            tool.sha256.as_deref(),
            Some("2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824")
        );
        assert_eq!(m.get("/bin/data").unwrap().mode, 0o644);
        assert_eq!(m.get("/bin").unwrap().mode, 0o755);
        let alias = m.get("/bin/alias").unwrap();
        assert_eq!(
            (alias.kind, alias.target.as_deref(), alias.size),
            (EntryType::Symlink, Some("tool"), 4)
        );
        assert_eq!(
            (m.name.as_str(), m.version.as_str(), m.license.as_str()),
            ("pkg", "2", "MIT")
        );
    }

    #[test]
    fn manifest_round_trips_through_json() {
        let d = tempfile::tempdir().unwrap();
        let r = recipe(d.path());
        let tree = d.path().join("tree");
        std::fs::create_dir_all(tree.join("sbin")).unwrap();
        std::fs::write(tree.join("sbin/init"), b"x").unwrap();
        let m = Manifest::scan(&r, "abc", &tree).unwrap();
        let p = d.path().join("manifest.json");
        m.write(&p).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.contains("\"type\": \"file\""), "{text}");
        assert_eq!(Manifest::load(&p).unwrap(), m);
    }
}
