//! The content-addressed download cache: `$AXION_CACHE/downloads/<sha256 hex>`.
//!
//! A file is named by the sha256 of its bytes and only ever enters the cache through
//! [`Cache::install`]: hash the finished temp file, compare with the pin, fsync, rename into
//! place, fsync the directory. A mismatch never enters the cache; its temp file is removed.
//!
//! Layout of the downloads directory:
//!
//! ```text
//! downloads/<sha256>            verified entries (the only thing other modules read)
//! downloads/.verified/<sha256>  stamp: size, inode, mtime and ctime seen when last hashed
//! downloads/.partial/<sha256>   an interrupted HTTP download, resumed next time (Range)
//! downloads/.partial/tmp-*      scratch directories (apt downloads), removed when done (and
//!                               by the next fetch if a killed process left one)
//! downloads/.lock               held (flock) while one source is fetched
//! ```
//!
//! Checking an entry on use: hashing the 139 MB kernel .deb on every build would cost more
//! than the whole no-op build may take, so [`Cache::lookup`] re-hashes only when the file's
//! size, inode, mtime or ctime differ from its stamp. Any write to the file changes its
//! ctime (which no user tool can set back) and replacing it changes the inode, so a
//! corrupted or swapped entry is always re-hashed; an entry without a stamp (seeded by hand)
//! is hashed once. An entry that no longer matches its name is removed and reported as
//! missing, so the fetcher gets it again.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cannot {action} '{path}': {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{what}: sha256 mismatch: expected {expected}, got {actual} (not cached)")]
    Mismatch {
        what: String,
        expected: String,
        actual: String,
    },
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> CacheError {
    let path = path.to_owned();
    move |source| CacheError::Io {
        action,
        path,
        source,
    }
}

/// What the cache holds for a hash.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup {
    /// A verified entry.
    Hit(PathBuf),
    /// Nothing there.
    Missing,
    /// There was an entry, but its bytes hash to `actual`; it has been removed.
    Corrupt { actual: String },
}

/// The download cache in one directory.
#[derive(Debug, Clone)]
pub struct Cache {
    dir: PathBuf,
}

impl Cache {
    pub fn new(dir: impl Into<PathBuf>) -> Cache {
        Cache { dir: dir.into() }
    }

    pub fn for_layout(layout: &crate::layout::Layout) -> Cache {
        Cache::new(layout.downloads())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the entry for `sha256` lives (whether or not it is there).
    pub fn entry_path(&self, sha256: &str) -> PathBuf {
        self.dir.join(sha256)
    }

    fn stamp_path(&self, sha256: &str) -> PathBuf {
        self.dir.join(".verified").join(sha256)
    }

    fn partial_dir(&self) -> PathBuf {
        self.dir.join(".partial")
    }

    /// The resumable partial download of `sha256`. Never used without verification.
    pub fn partial_path(&self, sha256: &str) -> Result<PathBuf, CacheError> {
        let dir = self.partial_dir();
        std::fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        Ok(dir.join(sha256))
    }

    /// A scratch directory on the cache's file system (so finished files rename into the
    /// cache without a copy); removed when dropped.
    pub fn scratch_dir(&self) -> Result<tempfile::TempDir, CacheError> {
        let dir = self.partial_dir();
        std::fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        tempfile::Builder::new()
            .prefix("tmp-")
            .tempdir_in(&dir)
            .map_err(io_err("create a directory in", &dir))
    }

    /// Serialises fetches into this cache (across threads and processes) while held.
    pub fn lock(&self) -> Result<File, CacheError> {
        std::fs::create_dir_all(&self.dir).map_err(io_err("create", &self.dir))?;
        let path = self.dir.join(".lock");
        let f = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err("open", &path))?;
        f.lock().map_err(io_err("lock", &path))?;
        Ok(f)
    }

    /// Removes scratch directories left by a process that was killed mid-fetch. Call only
    /// while holding [`Cache::lock`]: every live scratch directory belongs to its holder.
    pub fn remove_stale_scratch(&self) {
        let Ok(rd) = std::fs::read_dir(self.partial_dir()) else {
            return;
        };
        for e in rd.flatten() {
            if e.file_name()
                .to_str()
                .is_some_and(|n| n.starts_with("tmp-"))
            {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }

    /// Checks the entry for `sha256`: by its stamp when the file is unchanged since it was
    /// last hashed, by hashing otherwise. A corrupt entry is removed.
    pub fn lookup(&self, sha256: &str) -> Result<Lookup, CacheError> {
        let path = self.entry_path(sha256);
        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Lookup::Missing),
            Err(e) => {
                return Err(CacheError::Io {
                    action: "inspect",
                    path,
                    source: e,
                })
            }
        };
        let stamp = self.stamp_path(sha256);
        if std::fs::read_to_string(&stamp).is_ok_and(|s| s == stamp_text(&meta)) {
            return Ok(Lookup::Hit(path));
        }
        let actual = sha256_file(&path).map_err(io_err("read", &path))?;
        if actual == sha256 {
            self.write_stamp(sha256, &path);
            return Ok(Lookup::Hit(path));
        }
        std::fs::remove_file(&path).map_err(io_err("remove corrupt entry", &path))?;
        let _ = std::fs::remove_file(&stamp);
        Ok(Lookup::Corrupt { actual })
    }

    /// Moves a finished download into the cache if it hashes to `sha256`. On a mismatch the
    /// file is removed and nothing enters the cache. `what` names the origin (URL, package)
    /// in the error.
    pub fn install(&self, file: &Path, sha256: &str, what: &str) -> Result<PathBuf, CacheError> {
        let actual = match sha256_file(file) {
            Ok(a) => a,
            Err(e) => {
                let _ = std::fs::remove_file(file);
                return Err(CacheError::Io {
                    action: "read",
                    path: file.to_owned(),
                    source: e,
                });
            }
        };
        if actual != sha256 {
            let _ = std::fs::remove_file(file);
            return Err(CacheError::Mismatch {
                what: what.to_owned(),
                expected: sha256.to_owned(),
                actual,
            });
        }
        File::open(file)
            .and_then(|f| f.sync_all())
            .map_err(io_err("sync", file))?;
        let dest = self.entry_path(sha256);
        std::fs::rename(file, &dest).map_err(io_err("move into the cache", &dest))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err("sync", &self.dir))?;
        self.write_stamp(sha256, &dest);
        Ok(dest)
    }

    /// Records the entry's metadata as verified. Best effort: without a stamp the next
    /// lookup hashes again, which is slower but still right.
    fn write_stamp(&self, sha256: &str, entry: &Path) {
        let Ok(meta) = std::fs::metadata(entry) else {
            return;
        };
        let stamp = self.stamp_path(sha256);
        let Some(dir) = stamp.parent() else { return };
        if std::fs::create_dir_all(dir).is_err() {
            return;
        }
        let tmp = dir.join(format!(".{sha256}.tmp"));
        if std::fs::write(&tmp, stamp_text(&meta)).is_ok() {
            let _ = std::fs::rename(&tmp, &stamp);
        }
    }
}

fn stamp_text(m: &std::fs::Metadata) -> String {
    format!(
        "size={} ino={} dev={} mtime={}.{:09} ctime={}.{:09}\n",
        m.len(),
        m.ino(),
        m.dev(),
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec()
    )
}

/// The sha256 of a file, lowercase hex.
pub fn sha256_file(path: &Path) -> io::Result<String> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

pub fn sha256_bytes(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Copies `from` into a fresh temp file in the cache's scratch area and installs it.
pub fn install_copy(
    cache: &Cache,
    from: &Path,
    sha256: &str,
    what: &str,
) -> Result<PathBuf, CacheError> {
    let scratch = cache.scratch_dir()?;
    let tmp = scratch.path().join("copy");
    let mut src = File::open(from).map_err(io_err("open", from))?;
    let mut dst = File::create(&tmp).map_err(io_err("create", &tmp))?;
    io::copy(&mut src, &mut dst).map_err(io_err("copy", from))?;
    dst.flush().map_err(io_err("write", &tmp))?;
    drop(dst);
    cache.install(&tmp, sha256, what)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files_in(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = walkdir::WalkDir::new(dir)
            .into_iter()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_file())
            .map(|e| e.path().strip_prefix(dir).unwrap().display().to_string())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn install_verifies_and_lookup_uses_the_stamp() {
        let d = tempfile::tempdir().unwrap();
        let cache = Cache::new(d.path().join("downloads"));
        let sha = sha256_bytes(b"hello");
        assert_eq!(cache.lookup(&sha).unwrap(), Lookup::Missing);
        let scratch = cache.scratch_dir().unwrap();
        let tmp = scratch.path().join("f");
        std::fs::write(&tmp, b"hello").unwrap();
        let p = cache.install(&tmp, &sha, "test").unwrap();
        assert_eq!(p, cache.entry_path(&sha));
        assert_eq!(std::fs::read(&p).unwrap(), b"hello");
        assert_eq!(cache.lookup(&sha).unwrap(), Lookup::Hit(p.clone()));
        assert!(cache.stamp_path(&sha).is_file());
    }

    #[test]
    fn mismatch_never_enters_the_cache() {
        let d = tempfile::tempdir().unwrap();
        let cache = Cache::new(d.path().join("downloads"));
        let want = sha256_bytes(b"good");
        let scratch = cache.scratch_dir().unwrap();
        let tmp = scratch.path().join("f");
        std::fs::write(&tmp, b"evil").unwrap();
        let e = cache
            .install(&tmp, &want, "http://x/y")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&want) && e.contains(&sha256_bytes(b"evil")) && e.contains("http://x/y"),
            "{e}"
        );
        assert!(!tmp.exists());
        drop(scratch);
        assert_eq!(files_in(cache.dir()), Vec::<String>::new());
    }

    #[test]
    fn corrupt_entry_is_detected_even_with_a_stamp_and_same_size() {
        let d = tempfile::tempdir().unwrap();
        let cache = Cache::new(d.path().join("downloads"));
        let sha = sha256_bytes(b"hello");
        let scratch = cache.scratch_dir().unwrap();
        let tmp = scratch.path().join("f");
        std::fs::write(&tmp, b"hello").unwrap();
        let p = cache.install(&tmp, &sha, "test").unwrap();
        std::fs::write(&p, b"jello").unwrap();
        assert_eq!(
            cache.lookup(&sha).unwrap(),
            Lookup::Corrupt {
                actual: sha256_bytes(b"jello")
            }
        );
        assert!(!p.exists());
        assert_eq!(cache.lookup(&sha).unwrap(), Lookup::Missing);
    }

    #[test]
    fn seeded_entry_without_stamp_is_hashed_once() {
        let d = tempfile::tempdir().unwrap();
        let cache = Cache::new(d.path().join("downloads"));
        let sha = sha256_bytes(b"seed");
        std::fs::create_dir_all(cache.dir()).unwrap();
        std::fs::write(cache.entry_path(&sha), b"seed").unwrap();
        assert!(!cache.stamp_path(&sha).exists());
        assert!(matches!(cache.lookup(&sha).unwrap(), Lookup::Hit(_)));
        assert!(cache.stamp_path(&sha).exists());
    }
}
