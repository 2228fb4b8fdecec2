//! The root filesystem: staged package trees plus overlays, merged into one sorted list of
//! entries that the image formats write out (the initramfs is the root filesystem).
//!
//! Rules, decided here:
//! - Every entry is owned by root:root and carries the same mtime, `SOURCE_DATE_EPOCH` (see
//!   [`source_date_epoch`]). Permission bits (including setuid and sticky) are kept as
//!   staged; symlinks are kept as symlinks; hard links become separate files.
//! - `/boot` of a staged tree is not part of the root filesystem: the kernel (`boot/vmlinuz`)
//!   goes next to the initramfs on the ESP, not inside it.
//! - Two packages staging the same path is an error naming both (a directory both create is
//!   fine). Overlays (`overlays/NAME`, in profile order) are meant to replace files, so an
//!   overlay file wins over a package file or an earlier overlay's file.
//! - Overlay files get the modes git can record, whatever the checkout's umask: 0755 when the
//!   owner may execute, else 0644; directories 0755. Two checkouts give the same image.
//! - The standard directories (`dev`, `proc`, `sys`, `run`, `tmp`, `var/lib`, …), the device
//!   nodes the kernel needs before any devtmpfs is mounted (`dev/console`, `dev/null`) and
//!   `/init → /sbin/init` (the kernel runs `/init` from an initramfs) are always there.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use thiserror::Error;

/// What a package build hands to image assembly: its name and its staged tree.
/// (`build::Staged` carries more; this is the part the root filesystem needs.)
#[derive(Debug, Clone)]
pub struct PackageTree {
    pub name: String,
    pub tree: PathBuf,
}

#[derive(Debug, Error)]
pub enum RootfsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("packages '{first}' and '{second}' both stage /{path}")]
    Conflict {
        path: String,
        first: String,
        second: String,
    },
    #[error("/{path}: '{first}' makes it a {first_kind}, '{second}' a {second_kind}")]
    KindConflict {
        path: String,
        first: String,
        first_kind: &'static str,
        second: String,
        second_kind: &'static str,
    },
    #[error("{path}: unsupported file type (only files, directories and symlinks are staged)")]
    Unsupported { path: PathBuf },
    #[error("{path}: not valid UTF-8; staged paths must be UTF-8")]
    NotUtf8 { path: PathBuf },
    #[error("cannot find SOURCE_DATE_EPOCH: not set, and `git log` in {root} failed: {message}")]
    Epoch { root: PathBuf, message: String },
}

/// One node of the root filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Dir,
    /// A regular file whose bytes are read from `source` when written out.
    File {
        source: PathBuf,
        size: u64,
    },
    Symlink(String),
    CharDev {
        major: u32,
        minor: u32,
    },
}

impl Node {
    fn kind(&self) -> &'static str {
        match self {
            Node::Dir => "directory",
            Node::File { .. } => "file",
            Node::Symlink(_) => "symlink",
            Node::CharDev { .. } => "device",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Path inside the image without a leading slash: `bin/busybox`.
    pub path: String,
    /// Permission bits (`0o7777`); the file type is [`Entry::node`].
    pub perm: u32,
    pub node: Node,
    /// The package or overlay (`overlay:NAME`) it came from, for error messages.
    pub origin: String,
}

impl Entry {
    /// The full `st_mode` (file type and permission bits).
    pub fn mode(&self) -> u32 {
        let t = match self.node {
            Node::Dir => 0o040000,
            Node::File { .. } => 0o100000,
            Node::Symlink(_) => 0o120000,
            Node::CharDev { .. } => 0o020000,
        };
        t | (self.perm & 0o7777)
    }
}

/// The merged root filesystem: entries sorted by path (parents before children), one mtime.
#[derive(Debug, Clone)]
pub struct Rootfs {
    pub entries: BTreeMap<String, Entry>,
    /// `SOURCE_DATE_EPOCH`: the mtime of every entry and of every image format.
    pub epoch: u64,
}

const STANDARD_DIRS: &[(&str, u32)] = &[
    ("bin", 0o755),
    ("dev", 0o755),
    ("etc", 0o755),
    ("mnt", 0o755),
    ("proc", 0o555),
    ("root", 0o700),
    ("run", 0o755),
    ("sbin", 0o755),
    ("sys", 0o555),
    ("tmp", 0o1777),
    ("usr", 0o755),
    ("var", 0o755),
    ("var/lib", 0o755),
    ("var/log", 0o755),
    ("var/tmp", 0o1777),
];

impl Rootfs {
    /// Merges the staged trees (minus `/boot`) and the overlay folders (in order).
    pub fn assemble(
        packages: &[PackageTree],
        overlays: &[(String, PathBuf)],
        epoch: u64,
    ) -> Result<Rootfs, RootfsError> {
        let mut fs = Rootfs {
            entries: BTreeMap::new(),
            epoch,
        };
        for (path, perm) in STANDARD_DIRS {
            fs.entries.insert(
                path.to_string(),
                Entry {
                    path: path.to_string(),
                    perm: *perm,
                    node: Node::Dir,
                    origin: "axion".into(),
                },
            );
        }
        for pkg in packages {
            for entry in scan(&pkg.tree, &pkg.name)? {
                if entry.path == "boot" || entry.path.starts_with("boot/") {
                    continue;
                }
                fs.add(entry, false)?;
            }
        }
        for (name, dir) in overlays {
            for mut entry in scan(dir, &format!("overlay:{name}"))? {
                entry.perm = match entry.node {
                    Node::Dir => 0o755,
                    Node::File { .. } if entry.perm & 0o100 != 0 => 0o755,
                    Node::File { .. } => 0o644,
                    _ => entry.perm,
                };
                fs.add(entry, true)?;
            }
        }
        let fixed = [
            Entry {
                path: "dev/console".into(),
                perm: 0o600,
                node: Node::CharDev { major: 5, minor: 1 },
                origin: "axion".into(),
            },
            Entry {
                path: "dev/null".into(),
                perm: 0o666,
                node: Node::CharDev { major: 1, minor: 3 },
                origin: "axion".into(),
            },
            Entry {
                path: "init".into(),
                perm: 0o777,
                node: Node::Symlink("/sbin/init".into()),
                origin: "axion".into(),
            },
        ];
        for e in fixed {
            fs.entries.entry(e.path.clone()).or_insert(e);
        }
        // Every parent directory exists, even where a tree only staged a deep file.
        let parents: Vec<String> = fs
            .entries
            .keys()
            .flat_map(|p| {
                let mut v = Vec::new();
                let mut cur = p.as_str();
                while let Some((parent, _)) = cur.rsplit_once('/') {
                    v.push(parent.to_owned());
                    cur = parent;
                }
                v
            })
            .collect();
        for p in parents {
            fs.entries.entry(p.clone()).or_insert(Entry {
                path: p,
                perm: 0o755,
                node: Node::Dir,
                origin: "axion".into(),
            });
        }
        Ok(fs)
    }

    fn add(&mut self, entry: Entry, overlay: bool) -> Result<(), RootfsError> {
        let Some(old) = self.entries.get(&entry.path) else {
            self.entries.insert(entry.path.clone(), entry);
            return Ok(());
        };
        match (&old.node, &entry.node) {
            // A directory created twice: keep it; an overlay may change its mode.
            (Node::Dir, Node::Dir) => {
                if overlay {
                    let perm = entry.perm;
                    self.entries.get_mut(&entry.path).expect("present").perm = perm;
                }
                Ok(())
            }
            (Node::Dir, _) | (_, Node::Dir) => Err(RootfsError::KindConflict {
                path: entry.path.clone(),
                first: old.origin.clone(),
                first_kind: old.node.kind(),
                second: entry.origin.clone(),
                second_kind: entry.node.kind(),
            }),
            _ if overlay || old.origin == "axion" => {
                self.entries.insert(entry.path.clone(), entry);
                Ok(())
            }
            _ => Err(RootfsError::Conflict {
                path: entry.path.clone(),
                first: old.origin.clone(),
                second: entry.origin.clone(),
            }),
        }
    }

    /// The total size of the regular files' contents.
    pub fn content_size(&self) -> u64 {
        self.entries
            .values()
            .map(|e| {
                if let Node::File { size, .. } = e.node {
                    size
                } else {
                    0
                }
            })
            .sum()
    }
}

/// Every entry below `root` (not `root` itself), in no particular order.
fn scan(root: &Path, origin: &str) -> Result<Vec<Entry>, RootfsError> {
    let mut out = Vec::new();
    for item in walkdir::WalkDir::new(root).min_depth(1).sort_by_file_name() {
        let item = item.map_err(|e| RootfsError::Read {
            path: e
                .path()
                .map(Path::to_owned)
                .unwrap_or_else(|| root.to_owned()),
            source: e
                .into_io_error()
                .unwrap_or_else(|| std::io::Error::other("walk failed")),
        })?;
        let full = item.path();
        let rel = full
            .strip_prefix(root)
            .expect("walkdir stays below its root");
        let path = rel
            .to_str()
            .ok_or_else(|| RootfsError::NotUtf8 {
                path: full.to_owned(),
            })?
            .to_owned();
        let meta = std::fs::symlink_metadata(full).map_err(|source| RootfsError::Read {
            path: full.to_owned(),
            source,
        })?;
        let perm = meta.permissions().mode() & 0o7777;
        let ft = meta.file_type();
        let node = if ft.is_dir() {
            Node::Dir
        } else if ft.is_file() {
            Node::File {
                source: full.to_owned(),
                size: meta.len(),
            }
        } else if ft.is_symlink() {
            let target = std::fs::read_link(full).map_err(|source| RootfsError::Read {
                path: full.to_owned(),
                source,
            })?;
            Node::Symlink(
                target
                    .to_str()
                    .ok_or_else(|| RootfsError::NotUtf8 {
                        path: full.to_owned(),
                    })?
                    .to_owned(),
            )
        } else {
            return Err(RootfsError::Unsupported {
                path: full.to_owned(),
            });
        };
        let perm = if let Node::Symlink(_) = node {
            0o777
        } else {
            perm
        };
        out.push(Entry {
            path,
            perm,
            node,
            origin: origin.to_owned(),
        });
    }
    Ok(out)
}

/// `SOURCE_DATE_EPOCH` from the environment, else the time of the checkout's last commit.
pub fn source_date_epoch(root: &Path) -> Result<u64, RootfsError> {
    if let Some(v) = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .filter(|v| !v.is_empty())
    {
        return v.trim().parse().map_err(|_| RootfsError::Epoch {
            root: root.to_owned(),
            message: format!("SOURCE_DATE_EPOCH={v} is not a number"),
        });
    }
    let out = Command::new("git")
        .arg("-C")
        .arg(root)
        .args(["log", "-1", "--format=%ct"])
        .output()
        .map_err(|e| RootfsError::Epoch {
            root: root.to_owned(),
            message: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(RootfsError::Epoch {
            root: root.to_owned(),
            message: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .map_err(|_| RootfsError::Epoch {
            root: root.to_owned(),
            message: "no commit time in the output".into(),
        })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A small staged tree: a "busybox" with a symlink, a setuid file, and a /boot to skip.
    pub fn fake_package(dir: &Path, name: &str) -> PackageTree {
        let tree = dir.join(name);
        std::fs::create_dir_all(tree.join("bin")).unwrap();
        std::fs::create_dir_all(tree.join("boot")).unwrap();
        std::fs::write(tree.join("bin").join(name), format!("#!{name}\n")).unwrap();
        std::fs::set_permissions(
            tree.join("bin").join(name),
            std::fs::Permissions::from_mode(0o4755),
        )
        .unwrap();
        symlink(name, tree.join("bin").join(format!("{name}-link"))).unwrap();
        std::fs::write(tree.join("boot/vmlinuz"), b"kernel").unwrap();
        PackageTree {
            name: name.into(),
            tree,
        }
    }

    #[test]
    fn merges_trees_and_overlays_with_standard_dirs() {
        let dir = tempfile::tempdir().unwrap();
        let a = fake_package(dir.path(), "a");
        let b = fake_package(dir.path(), "b");
        let ov = dir.path().join("ov");
        std::fs::create_dir_all(ov.join("etc")).unwrap();
        std::fs::write(ov.join("etc/hostname"), "axion\n").unwrap();
        std::fs::write(ov.join("a-file"), "x").unwrap();
        std::fs::set_permissions(ov.join("a-file"), std::fs::Permissions::from_mode(0o700))
            .unwrap();
        std::fs::set_permissions(
            ov.join("etc/hostname"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        let fs = Rootfs::assemble(&[a, b], &[("base".into(), ov)], 42).unwrap();
        let e = &fs.entries["bin/a"];
        assert_eq!(e.mode(), 0o104755);
        assert_eq!(fs.entries["bin/b-link"].node, Node::Symlink("b".into()));
        assert!(
            !fs.entries.keys().any(|p| p.starts_with("boot")),
            "boot/ must not be in the rootfs"
        );
        assert_eq!(fs.entries["etc/hostname"].origin, "overlay:base");
        // Overlay modes as git records them, whatever the checkout's umask.
        assert_eq!(fs.entries["etc/hostname"].mode(), 0o100644);
        assert_eq!(fs.entries["a-file"].mode(), 0o100755);
        assert_eq!(fs.entries["tmp"].mode(), 0o041777);
        assert_eq!(fs.entries["init"].node, Node::Symlink("/sbin/init".into()));
        assert_eq!(
            fs.entries["dev/console"].node,
            Node::CharDev { major: 5, minor: 1 }
        );
        assert!(fs.entries.contains_key("var/lib"));
    }

    #[test]
    fn two_packages_with_one_path_is_an_error_naming_both() {
        let dir = tempfile::tempdir().unwrap();
        let a = fake_package(dir.path(), "a");
        let b = fake_package(dir.path(), "b");
        std::fs::write(b.tree.join("bin/a"), "other").unwrap();
        let e = Rootfs::assemble(&[a, b], &[], 0).unwrap_err().to_string();
        assert!(
            e.contains("'a'") && e.contains("'b'") && e.contains("/bin/a"),
            "{e}"
        );
    }

    #[test]
    fn an_overlay_replaces_a_package_file() {
        let dir = tempfile::tempdir().unwrap();
        let a = fake_package(dir.path(), "a");
        let ov = dir.path().join("ov");
        std::fs::create_dir_all(ov.join("bin")).unwrap();
        std::fs::write(ov.join("bin/a"), "replaced").unwrap();
        let fs = Rootfs::assemble(&[a], &[("o".into(), ov.clone())], 0).unwrap();
        assert_eq!(
            fs.entries["bin/a"].node,
            Node::File {
                source: ov.join("bin/a"),
                size: 8
            }
        );
    }

    #[test]
    fn epoch_comes_from_git_or_env() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let t = source_date_epoch(&root).unwrap();
        assert!(t > 1_600_000_000, "{t}");
    }
}
