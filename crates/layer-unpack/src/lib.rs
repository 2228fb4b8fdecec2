//! Safe layer unpacking into a fresh directory that becomes one overlayfs lower layer.
//!
//! - Paths are made relative (a leading `/` is dropped, as Docker does); any `..` component
//!   refuses the whole layer.
//! - Nothing is ever written through a symlink: every parent directory of an entry must be
//!   a real directory inside the layer. Symlinks themselves may point anywhere (they are
//!   resolved inside the container's root at run time).
//! - Hard links must name a path inside the root (same rules); a target that lives in a
//!   lower layer is copied.
//! - Device nodes are neutralised (skipped, counted); FIFOs are kept.
//! - Whiteouts `.wh.NAME` become overlayfs whiteouts (0:0 character devices) and
//!   `.wh..wh..opq` marks the directory opaque (`trusted.overlay.opaque=y`).
//! - Any read error (corrupt compression, truncated tar) fails the layer; callers unpack
//!   into a temporary directory and rename it into place only on success
//!   ([`unpack_layer`] does all of that and checks the diff-id).
//!
//! Used twice: by the guest engine (pull, `docker load`) and by axion-vmd's host-side
//! layer store (host/vmd), whose unpacked layers the VMs use over a read-only 9p share.

use std::ffi::CString;
use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

/// Errors of [`unpack_layer`].
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error(transparent)]
    Unpack(#[from] UnpackError),
    #[error("uncompressed content has diff-id {actual}, the image config says {expected}")]
    DiffId { expected: String, actual: String },
}

/// Decompresses and unpacks the layer blob `blob` into `tmp`, checks that the uncompressed
/// stream hashes to `diff_id` (`sha256:HEX`), then renames `tmp` to `dest`. On any failure
/// nothing is left at `dest` (nor at `tmp`). `lowers`: the layers below, top first.
pub fn unpack_layer(
    blob: &Path,
    tmp: &Path,
    dest: &Path,
    diff_id: &str,
    lowers: &[PathBuf],
) -> Result<Stats, LayerError> {
    use sha2::Digest as _;
    let _ = fs::remove_dir_all(tmp);
    fs::create_dir_all(tmp).map_err(|e| io_err(tmp, e))?;
    let result = (|| {
        let f = fs::File::open(blob).map_err(|e| io_err(blob, e))?;
        let rd = decompress(io::BufReader::new(f)).map_err(UnpackError::Read)?;
        let mut hashing = HashingReader {
            inner: rd,
            h: sha2::Sha256::new(),
        };
        let stats = unpack(&mut hashing, tmp, lowers)?;
        // The diff-id covers the whole stream, including the tar's trailing padding.
        io::copy(&mut hashing, &mut io::sink()).map_err(UnpackError::Read)?;
        let actual = format!("sha256:{}", hex::encode(hashing.h.finalize()));
        if actual != diff_id {
            return Err(LayerError::DiffId {
                expected: diff_id.into(),
                actual,
            });
        }
        fs::rename(tmp, dest).map_err(|e| io_err(dest, e))?;
        Ok(stats)
    })();
    if result.is_err() {
        let _ = fs::remove_dir_all(tmp);
    }
    result
}

struct HashingReader<R> {
    inner: R,
    h: sha2::Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use sha2::Digest as _;
        let n = self.inner.read(buf)?;
        self.h.update(&buf[..n]);
        Ok(n)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("layer entry {0:?} escapes the root (`..`)")]
    Escape(String),
    #[error("layer entry {entry:?} would be written through symlink {link:?}")]
    ThroughSymlink { entry: String, link: String },
    #[error("layer entry {entry:?}: parent {parent:?} is not a directory")]
    NotDir { entry: String, parent: String },
    #[error("hard link {entry:?} -> {target:?}: target not found in this or lower layers")]
    BadHardlink { entry: String, target: String },
    #[error("reading layer: {0}")]
    Read(io::Error),
    #[error("unpacking {path}: {source}")]
    Io { path: String, source: io::Error },
}

/// What an unpack did besides writing files.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub entries: usize,
    pub devices_skipped: usize,
    pub whiteouts: usize,
}

/// Opens a possibly compressed layer: gzip and zstd are detected by their magic bytes.
pub fn decompress<'a, R: Read + 'a>(mut r: R) -> io::Result<Box<dyn Read + 'a>> {
    let mut magic = [0u8; 4];
    let mut n = 0;
    while n < 4 {
        let k = r.read(&mut magic[n..])?;
        if k == 0 {
            break;
        }
        n += k;
    }
    let chained = io::Cursor::new(magic[..n].to_vec()).chain(r);
    if n >= 2 && magic[..2] == [0x1f, 0x8b] {
        Ok(Box::new(flate2::read::MultiGzDecoder::new(chained)))
    } else if n == 4 && magic == [0x28, 0xb5, 0x2f, 0xfd] {
        let d = ruzstd::decoding::StreamingDecoder::new(chained)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("zstd: {e}")))?;
        Ok(Box::new(d))
    } else {
        Ok(Box::new(chained))
    }
}

/// Relative, `..`-free path of an entry; Err on `..`.
fn clean(raw: &Path) -> Result<PathBuf, UnpackError> {
    let mut out = PathBuf::new();
    for c in raw.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
            Component::ParentDir => return Err(UnpackError::Escape(raw.display().to_string())),
        }
    }
    Ok(out)
}

/// Creates the parent directories of `rel` under `root`, refusing symlinks on the way.
fn ensure_parents(root: &Path, rel: &Path) -> Result<(), UnpackError> {
    let mut cur = root.to_path_buf();
    let parent = match rel.parent() {
        Some(p) => p,
        None => return Ok(()),
    };
    for c in parent.components() {
        cur.push(c);
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(UnpackError::ThroughSymlink {
                    entry: rel.display().to_string(),
                    link: cur.strip_prefix(root).unwrap_or(&cur).display().to_string(),
                })
            }
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(UnpackError::NotDir {
                    entry: rel.display().to_string(),
                    parent: cur.display().to_string(),
                })
            }
            Err(_) => fs::create_dir(&cur).map_err(|source| io_err(&cur, source))?,
        }
    }
    Ok(())
}

fn io_err(p: &Path, source: io::Error) -> UnpackError {
    UnpackError::Io {
        path: p.display().to_string(),
        source,
    }
}

fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("paths from tar have no NUL")
}

fn remove_existing(p: &Path, keep_dir: bool) -> Result<(), UnpackError> {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() && !m.file_type().is_symlink() => {
            if !keep_dir {
                fs::remove_dir_all(p).map_err(|e| io_err(p, e))?;
            }
        }
        Ok(_) => fs::remove_file(p).map_err(|e| io_err(p, e))?,
        Err(_) => {}
    }
    Ok(())
}

fn whiteout(p: &Path) -> Result<(), UnpackError> {
    remove_existing(p, false)?;
    // SAFETY: mknod with a valid NUL-terminated path; a 0:0 char device is overlayfs'
    // whiteout marker.
    let rc = unsafe { libc::mknod(cstr(p).as_ptr(), libc::S_IFCHR, libc::makedev(0, 0)) };
    if rc != 0 {
        return Err(io_err(p, io::Error::last_os_error()));
    }
    Ok(())
}

fn set_opaque(dir: &Path) -> Result<(), UnpackError> {
    let name = CString::new("trusted.overlay.opaque").expect("static");
    // SAFETY: valid C strings and a 1-byte value buffer.
    let rc = unsafe {
        libc::lsetxattr(
            cstr(dir).as_ptr(),
            name.as_ptr(),
            b"y".as_ptr().cast(),
            1,
            0,
        )
    };
    if rc != 0 {
        return Err(io_err(dir, io::Error::last_os_error()));
    }
    Ok(())
}

fn lchown(p: &Path, uid: u64, gid: u64) {
    // SAFETY: valid path; failure (e.g. not root in unit tests) is not fatal.
    unsafe {
        libc::lchown(cstr(p).as_ptr(), uid as libc::uid_t, gid as libc::gid_t);
    }
}

/// Unpacks an uncompressed tar stream into `dest` (an existing, empty directory).
/// `lowers` are the already unpacked layers below, top first (for hard links across layers).
pub fn unpack<R: Read>(reader: R, dest: &Path, lowers: &[PathBuf]) -> Result<Stats, UnpackError> {
    let mut ar = tar::Archive::new(reader);
    let mut stats = Stats::default();
    let mut dirs: Vec<(PathBuf, u32)> = Vec::new();
    for entry in ar.entries().map_err(UnpackError::Read)? {
        let mut e = entry.map_err(UnpackError::Read)?;
        let raw = e.path().map_err(UnpackError::Read)?.into_owned();
        let rel = clean(&raw)?;
        stats.entries += 1;
        if rel.as_os_str().is_empty() {
            continue; // "./" itself
        }
        ensure_parents(dest, &rel)?;
        let target = dest.join(&rel);
        let name = rel
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name == ".wh..wh..opq" {
            set_opaque(target.parent().unwrap_or(dest))?;
            stats.whiteouts += 1;
            continue;
        }
        if let Some(hidden) = name.strip_prefix(".wh.") {
            whiteout(&target.with_file_name(hidden))?;
            stats.whiteouts += 1;
            continue;
        }
        let h = e.header().clone();
        let mode = h.mode().unwrap_or(0o644) & 0o7777;
        let (uid, gid) = (h.uid().unwrap_or(0), h.gid().unwrap_or(0));
        let kind = h.entry_type();
        use tar::EntryType as T;
        match kind {
            T::Directory => {
                remove_existing(&target, true)?;
                if !target.is_dir() {
                    fs::create_dir(&target).map_err(|s| io_err(&target, s))?;
                }
                lchown(&target, uid, gid);
                dirs.push((target, mode));
            }
            T::Regular | T::Continuous => {
                remove_existing(&target, false)?;
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .mode(0o600)
                    .open(&target)
                    .map_err(|s| io_err(&target, s))?;
                io::copy(&mut e, &mut f).map_err(UnpackError::Read)?;
                lchown(&target, uid, gid);
                fs::set_permissions(&target, fs::Permissions::from_mode(mode))
                    .map_err(|s| io_err(&target, s))?;
            }
            T::Symlink => {
                let link = e
                    .link_name()
                    .map_err(UnpackError::Read)?
                    .unwrap_or_default()
                    .into_owned();
                remove_existing(&target, false)?;
                symlink(&link, &target).map_err(|s| io_err(&target, s))?;
                lchown(&target, uid, gid);
            }
            T::Link => {
                let link = e
                    .link_name()
                    .map_err(UnpackError::Read)?
                    .unwrap_or_default()
                    .into_owned();
                let lrel = clean(&link)?;
                let bad = || UnpackError::BadHardlink {
                    entry: rel.display().to_string(),
                    target: link.display().to_string(),
                };
                ensure_parents(dest, &lrel)?;
                let src = dest.join(&lrel);
                remove_existing(&target, false)?;
                match fs::symlink_metadata(&src) {
                    Ok(m) if !m.is_dir() => {
                        fs::hard_link(&src, &target).map_err(|s| io_err(&target, s))?
                    }
                    Ok(_) => return Err(bad()),
                    Err(_) => {
                        let lower = lowers
                            .iter()
                            .map(|l| l.join(&lrel))
                            .find(|p| {
                                fs::symlink_metadata(p)
                                    .map(|m| m.is_file())
                                    .unwrap_or(false)
                            })
                            .ok_or_else(bad)?;
                        fs::copy(&lower, &target).map_err(|s| io_err(&target, s))?;
                    }
                }
            }
            T::Fifo => {
                remove_existing(&target, false)?;
                // SAFETY: valid path.
                if unsafe { libc::mkfifo(cstr(&target).as_ptr(), mode as libc::mode_t) } != 0 {
                    return Err(io_err(&target, io::Error::last_os_error()));
                }
                lchown(&target, uid, gid);
            }
            T::Char | T::Block => stats.devices_skipped += 1,
            _ => {} // PAX/GNU headers are consumed by the tar crate; others are ignored.
        }
    }
    // Directory modes last, so read-only directories do not block their own contents.
    for (d, mode) in dirs.into_iter().rev() {
        fs::set_permissions(&d, fs::Permissions::from_mode(mode)).map_err(|s| io_err(&d, s))?;
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileTypeExt;

    /// A tar entry with a raw name (bypassing the tar crate's own path checks).
    fn entry(b: &mut Vec<u8>, name: &str, kind: tar::EntryType, link: &str, data: &[u8]) {
        let mut h = tar::Header::new_old();
        {
            let old = h.as_old_mut();
            old.name[..name.len()].copy_from_slice(name.as_bytes());
            old.linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        h.set_entry_type(kind);
        h.set_mode(0o755);
        h.set_size(data.len() as u64);
        h.set_cksum();
        b.extend_from_slice(h.as_bytes());
        b.extend_from_slice(data);
        b.resize(b.len().div_ceil(512) * 512, 0);
    }

    fn finish(mut b: Vec<u8>) -> Vec<u8> {
        b.extend_from_slice(&[0u8; 1024]);
        b
    }

    fn run(tar: &[u8]) -> (tempfile::TempDir, Result<Stats, UnpackError>) {
        let d = tempfile::tempdir().unwrap();
        let r = unpack(tar, d.path(), &[]);
        (d, r)
    }

    fn is_root() -> bool {
        // SAFETY: getuid has no preconditions.
        unsafe { libc::getuid() == 0 }
    }

    #[test]
    fn regular_files_dirs_and_symlinks() {
        let mut b = Vec::new();
        entry(&mut b, "./bin/", tar::EntryType::Directory, "", b"");
        entry(&mut b, "./bin/busybox", tar::EntryType::Regular, "", b"ELF");
        entry(
            &mut b,
            "bin/sh",
            tar::EntryType::Symlink,
            "/bin/busybox",
            b"",
        );
        entry(&mut b, "bin/ash", tar::EntryType::Link, "bin/busybox", b"");
        entry(&mut b, "etc/deep/file", tar::EntryType::Regular, "", b"x");
        let (d, r) = run(&finish(b));
        r.unwrap();
        assert_eq!(fs::read(d.path().join("bin/busybox")).unwrap(), b"ELF");
        assert_eq!(
            fs::read_link(d.path().join("bin/sh")).unwrap(),
            Path::new("/bin/busybox")
        );
        assert_eq!(fs::read(d.path().join("bin/ash")).unwrap(), b"ELF");
        assert_eq!(fs::read(d.path().join("etc/deep/file")).unwrap(), b"x");
    }

    #[test]
    fn dotdot_is_refused() {
        let mut b = Vec::new();
        entry(&mut b, "a/../../evil", tar::EntryType::Regular, "", b"x");
        let (d, r) = run(&finish(b));
        assert!(matches!(r, Err(UnpackError::Escape(_))), "{r:?}");
        assert!(!d.path().parent().unwrap().join("evil").exists());
    }

    #[test]
    fn absolute_paths_are_made_relative() {
        let mut b = Vec::new();
        entry(&mut b, "/etc/passwd", tar::EntryType::Regular, "", b"root");
        let (d, r) = run(&finish(b));
        r.unwrap();
        assert_eq!(fs::read(d.path().join("etc/passwd")).unwrap(), b"root");
    }

    #[test]
    fn writing_through_symlink_is_refused() {
        let outside = tempfile::tempdir().unwrap();
        let mut b = Vec::new();
        let target = outside.path().to_str().unwrap();
        entry(&mut b, "link", tar::EntryType::Symlink, target, b"");
        entry(&mut b, "link/pwned", tar::EntryType::Regular, "", b"x");
        let (_d, r) = run(&finish(b));
        assert!(
            matches!(r, Err(UnpackError::ThroughSymlink { .. })),
            "{r:?}"
        );
        assert!(!outside.path().join("pwned").exists());
    }

    #[test]
    fn hardlink_outside_is_refused() {
        let mut b = Vec::new();
        entry(&mut b, "h", tar::EntryType::Link, "../../etc/shadow", b"");
        let (_d, r) = run(&finish(b));
        assert!(matches!(r, Err(UnpackError::Escape(_))), "{r:?}");
        // Absolute target: resolved inside the root, where it does not exist.
        let mut b = Vec::new();
        entry(&mut b, "h", tar::EntryType::Link, "/etc/hostname", b"");
        let (d, r) = run(&finish(b));
        assert!(matches!(r, Err(UnpackError::BadHardlink { .. })), "{r:?}");
        assert!(!d.path().join("h").exists());
        // Through a symlinked directory.
        let mut b = Vec::new();
        entry(&mut b, "l", tar::EntryType::Symlink, "/etc", b"");
        entry(&mut b, "h", tar::EntryType::Link, "l/hostname", b"");
        let (_d, r) = run(&finish(b));
        assert!(
            matches!(r, Err(UnpackError::ThroughSymlink { .. })),
            "{r:?}"
        );
    }

    #[test]
    fn device_nodes_are_neutralised() {
        let mut b = Vec::new();
        entry(&mut b, "dev/sda", tar::EntryType::Block, "", b"");
        entry(&mut b, "dev/mem", tar::EntryType::Char, "", b"");
        let (d, r) = run(&finish(b));
        assert_eq!(r.unwrap().devices_skipped, 2);
        assert!(!d.path().join("dev/sda").exists());
        assert!(!d.path().join("dev/mem").exists());
    }

    #[test]
    fn whiteouts_and_opaque_dirs() {
        if !is_root() {
            test_skip::skip("whiteouts need mknod and trusted xattrs (run as root)");
            return;
        }
        let mut b = Vec::new();
        entry(&mut b, "etc/.wh.motd", tar::EntryType::Regular, "", b"");
        entry(&mut b, "var/.wh..wh..opq", tar::EntryType::Regular, "", b"");
        let (d, r) = run(&finish(b));
        assert_eq!(r.unwrap().whiteouts, 2);
        let m = fs::symlink_metadata(d.path().join("etc/motd")).unwrap();
        assert!(m.file_type().is_char_device());
        use std::os::unix::fs::MetadataExt;
        assert_eq!(m.rdev(), 0);
        let mut buf = [0u8; 4];
        let name = CString::new("trusted.overlay.opaque").unwrap();
        // SAFETY: valid path, name and buffer.
        let n = unsafe {
            libc::lgetxattr(
                cstr(&d.path().join("var")).as_ptr(),
                name.as_ptr(),
                buf.as_mut_ptr().cast(),
                4,
            )
        };
        assert_eq!(&buf[..n as usize], b"y");
        assert!(!d.path().join("var/.wh..wh..opq").exists());
    }

    #[test]
    fn truncated_and_corrupt_layers_fail() {
        let mut b = Vec::new();
        entry(&mut b, "big", tar::EntryType::Regular, "", &[7u8; 4096]);
        let full = finish(b);
        let (_d, r) = run(&full[..1500]);
        assert!(matches!(r, Err(UnpackError::Read(_))), "{r:?}");
        // Corrupt gzip.
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &full).unwrap();
        let mut gz = gz.finish().unwrap();
        let mid = gz.len() / 2;
        gz[mid] ^= 0xff;
        gz[mid + 1] ^= 0xff;
        let d = tempfile::tempdir().unwrap();
        let r = decompress(&gz[..])
            .map_err(UnpackError::Read)
            .and_then(|rd| unpack(rd, d.path(), &[]));
        assert!(r.is_err(), "corrupt gzip must fail");
    }

    #[test]
    fn unpack_layer_checks_the_diff_id_and_leaves_nothing_on_failure() {
        use sha2::Digest as _;
        let mut b = Vec::new();
        entry(&mut b, "f", tar::EntryType::Regular, "", b"data");
        let full = finish(b);
        let diff_id = format!("sha256:{}", hex::encode(sha2::Sha256::digest(&full)));
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &full).unwrap();
        let d = tempfile::tempdir().unwrap();
        let blob = d.path().join("blob");
        fs::write(&blob, gz.finish().unwrap()).unwrap();
        let (tmp, dest) = (d.path().join("tmp"), d.path().join("layer"));
        let wrong = format!("sha256:{}", "0".repeat(64));
        let e = unpack_layer(&blob, &tmp, &dest, &wrong, &[]).unwrap_err();
        assert!(matches!(e, LayerError::DiffId { .. }), "{e}");
        assert!(!dest.exists() && !tmp.exists());
        unpack_layer(&blob, &tmp, &dest, &diff_id, &[]).unwrap();
        assert_eq!(fs::read(dest.join("f")).unwrap(), b"data");
        assert!(!tmp.exists());
    }

    #[test]
    fn gzip_and_plain_are_detected() {
        let mut b = Vec::new();
        entry(&mut b, "f", tar::EntryType::Regular, "", b"data");
        let full = finish(b);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &full).unwrap();
        let gz = gz.finish().unwrap();
        for input in [&full[..], &gz[..]] {
            let d = tempfile::tempdir().unwrap();
            unpack(decompress(input).unwrap(), d.path(), &[]).unwrap();
            assert_eq!(fs::read(d.path().join("f")).unwrap(), b"data");
        }
    }
}
