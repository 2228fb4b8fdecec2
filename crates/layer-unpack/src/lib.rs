//! Safe layer unpacking into a fresh directory that becomes one overlayfs lower layer.
//!
//! - Paths are made relative (a leading `/` is dropped, as Docker does); any `..` component
//!   refuses the whole layer.
//! - Nothing is ever written through a symlink: every parent directory of an entry must be
//!   a real directory inside the layer. Symlinks themselves may point anywhere (they are
//!   resolved inside the container's root at run time).
//! - Hard links must name a path inside the root (same rules); a target that lives in a
//!   lower layer is copied.
//! - A NUL byte in an entry's name or link target (possible in a GNU long name or a PAX
//!   record) refuses the layer with an error naming the entry; so does a whiteout that
//!   would name its own directory or its parent (`.wh.`, `.wh..`, `.wh...`), and a regular
//!   file whose data ends before its header's size.
//! - Device nodes are neutralised (skipped, counted); FIFOs are kept.
//! - Whiteouts `.wh.NAME` become overlayfs whiteouts (0:0 character devices) and
//!   `.wh..wh..opq` marks the directory opaque (`trusted.overlay.opaque=y`).
//! - Any read error (corrupt compression, truncated tar) fails the layer; callers unpack
//!   into a temporary directory and rename it into place only on success
//!   ([`unpack_layer`] does all of that and checks the diff-id).
//!
//! [`archive`] reads `docker save` archives (`docker load`) by the same rules.
//!
//! Used twice: by the guest engine (pull, `docker load`) and by axion-vmd's host-side
//! layer store (host/vmd), whose unpacked layers the VMs use over a read-only 9p share.

pub mod archive;

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
    #[error("layer entry {0:?} has a NUL byte in its name or link target")]
    NulInName(String),
    #[error("layer entry {0:?} is a whiteout of no valid name")]
    BadWhiteout(String),
    #[error("layer entry {entry:?} is truncated: {got} of {size} bytes")]
    Truncated { entry: String, size: u64, got: u64 },
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

/// Entry names are checked for NUL on the way in ([`no_nul`]); this is the backstop.
fn cstr(p: &Path) -> Result<CString, UnpackError> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| nul_err(p.as_os_str().as_bytes()))
}

fn nul_err(name: &[u8]) -> UnpackError {
    UnpackError::NulInName(String::from_utf8_lossy(name).into_owned())
}

/// A GNU long name or a PAX `path`/`linkpath` record may hold a NUL, which no file name can.
fn no_nul(p: &Path) -> Result<(), UnpackError> {
    let b = p.as_os_str().as_bytes();
    if b.contains(&0) {
        return Err(nul_err(b));
    }
    Ok(())
}

/// `root/rel` when it and every parent below `root` is a real directory (no symlink).
fn real_dir(root: &Path, rel: &Path) -> Option<PathBuf> {
    let mut cur = root.to_path_buf();
    for c in rel.components() {
        cur.push(c);
        let m = fs::symlink_metadata(&cur).ok()?;
        if !m.is_dir() {
            return None;
        }
    }
    Some(cur)
}

/// `lower/rel` when it is a regular file reached through real directories only: a lower
/// layer's symlinked parent must not lead a hard link out of the layer store.
fn lower_file(lower: &Path, rel: &Path) -> Option<PathBuf> {
    let mut cur = lower.to_path_buf();
    let mut comps = rel.components().peekable();
    while let Some(c) = comps.next() {
        cur.push(c);
        let m = fs::symlink_metadata(&cur).ok()?;
        let last = comps.peek().is_none();
        if last && m.is_file() {
            return Some(cur);
        }
        if last || !m.is_dir() {
            return None;
        }
    }
    None
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
    let c = cstr(p)?;
    // SAFETY: mknod with a valid NUL-terminated path; a 0:0 char device is overlayfs'
    // whiteout marker.
    let rc = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR, libc::makedev(0, 0)) };
    if rc != 0 {
        return Err(io_err(p, io::Error::last_os_error()));
    }
    Ok(())
}

fn set_opaque(dir: &Path) -> Result<(), UnpackError> {
    let name = c"trusted.overlay.opaque";
    let path = cstr(dir)?;
    // SAFETY: valid C strings and a 1-byte value buffer.
    let rc = unsafe { libc::lsetxattr(path.as_ptr(), name.as_ptr(), b"y".as_ptr().cast(), 1, 0) };
    if rc != 0 {
        return Err(io_err(dir, io::Error::last_os_error()));
    }
    Ok(())
}

fn lchown(p: &Path, uid: u64, gid: u64) -> Result<(), UnpackError> {
    let c = cstr(p)?;
    // SAFETY: valid path; failure (e.g. not root in unit tests) is not fatal.
    unsafe {
        libc::lchown(c.as_ptr(), uid as libc::uid_t, gid as libc::gid_t);
    }
    Ok(())
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
        no_nul(&raw)?;
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
            // `.wh.`, `.wh..` and `.wh...` would name the directory itself or its parent
            // (`with_file_name("..")`): a whiteout of the root's parent deleted it.
            if matches!(hidden, "" | "." | "..") {
                return Err(UnpackError::BadWhiteout(rel.display().to_string()));
            }
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
                lchown(&target, uid, gid)?;
                dirs.push((rel.clone(), mode));
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
                let size = e.size();
                let got = io::copy(&mut e, &mut f).map_err(UnpackError::Read)?;
                // The tar crate ends an entry's data quietly at the end of the stream.
                if got != size {
                    return Err(UnpackError::Truncated {
                        entry: rel.display().to_string(),
                        size,
                        got,
                    });
                }
                lchown(&target, uid, gid)?;
                fs::set_permissions(&target, fs::Permissions::from_mode(mode))
                    .map_err(|s| io_err(&target, s))?;
            }
            T::Symlink => {
                let link = e
                    .link_name()
                    .map_err(UnpackError::Read)?
                    .unwrap_or_default()
                    .into_owned();
                no_nul(&link)?;
                remove_existing(&target, false)?;
                symlink(&link, &target).map_err(|s| io_err(&target, s))?;
                lchown(&target, uid, gid)?;
            }
            T::Link => {
                let link = e
                    .link_name()
                    .map_err(UnpackError::Read)?
                    .unwrap_or_default()
                    .into_owned();
                no_nul(&link)?;
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
                            .find_map(|l| lower_file(l, &lrel))
                            .ok_or_else(bad)?;
                        fs::copy(&lower, &target).map_err(|s| io_err(&target, s))?;
                    }
                }
            }
            T::Fifo => {
                remove_existing(&target, false)?;
                let c = cstr(&target)?;
                // SAFETY: valid path.
                if unsafe { libc::mkfifo(c.as_ptr(), mode as libc::mode_t) } != 0 {
                    return Err(io_err(&target, io::Error::last_os_error()));
                }
                lchown(&target, uid, gid)?;
            }
            T::Char | T::Block => stats.devices_skipped += 1,
            _ => {} // PAX/GNU headers are consumed by the tar crate; others are ignored.
        }
    }
    // Directory modes last, so read-only directories do not block their own contents.
    // A later entry may have replaced the directory, or one of its parents, with a symlink
    // (`d/` then `d -> /etc`): chmod follows symlinks, so only a directory still reached
    // through real directories gets its mode (else a layer could chmod any host path).
    for (rel, mode) in dirs.into_iter().rev() {
        if let Some(d) = real_dir(dest, &rel) {
            fs::set_permissions(&d, fs::Permissions::from_mode(mode)).map_err(|s| io_err(&d, s))?;
        }
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileTypeExt;

    /// A tar entry with a raw name (bypassing the tar crate's own path checks).
    fn entry(b: &mut Vec<u8>, name: &str, kind: tar::EntryType, link: &str, data: &[u8]) {
        entry_in(tar::Header::new_old(), b, name, kind, link, data)
    }

    /// The same in a GNU header: the tar crate honours long names and PAX records only after
    /// a GNU or ustar header.
    fn entry_gnu(b: &mut Vec<u8>, name: &str, kind: tar::EntryType, data: &[u8]) {
        entry_in(tar::Header::new_gnu(), b, name, kind, "", data)
    }

    fn entry_in(
        mut h: tar::Header,
        b: &mut Vec<u8>,
        name: &str,
        kind: tar::EntryType,
        link: &str,
        data: &[u8],
    ) {
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
                cstr(&d.path().join("var")).unwrap().as_ptr(),
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
        assert!(matches!(r, Err(UnpackError::Truncated { .. })), "{r:?}");
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

    /// A GNU long-name entry (`././@LongLink`, type `L`) carrying `name`, then `kind`.
    fn gnu_long(b: &mut Vec<u8>, name: &[u8], kind: tar::EntryType, data: &[u8]) {
        let mut long = name.to_vec();
        long.push(0);
        entry_gnu(b, "././@LongLink", tar::EntryType::GNULongName, &long);
        entry(b, "placeholder", kind, "", data);
    }

    /// A PAX extended header with one `key=value` record, then `kind` named `name`.
    fn pax(b: &mut Vec<u8>, key: &str, value: &[u8], kind: tar::EntryType, name: &str) {
        let body_len = key.len() + value.len() + 3; // ' ', '=', '\n'
        let mut len = body_len + 1;
        while len != body_len + len.to_string().len() {
            len = body_len + len.to_string().len();
        }
        let mut rec = format!("{len} {key}=").into_bytes();
        rec.extend_from_slice(value);
        rec.push(b'\n');
        entry_gnu(b, "PaxHeaders/x", tar::EntryType::XHeader, &rec);
        entry(b, name, kind, "", b"");
    }

    /// Everything under the parent of the unpack root, which must not change.
    fn outside_listing(d: &Path) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = fs::read_dir(d.parent().unwrap())
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        v.sort();
        v
    }

    /// Unpacks into `sandbox/root` and checks that nothing beside `root` appeared or went.
    fn run_boxed(tar: &[u8]) -> (tempfile::TempDir, Result<Stats, UnpackError>) {
        let sandbox = tempfile::tempdir().unwrap();
        let root = sandbox.path().join("root");
        fs::create_dir(&root).unwrap();
        fs::write(sandbox.path().join("sentinel"), b"s").unwrap();
        let before = outside_listing(&root);
        let r = unpack(tar, &root, &[]);
        assert!(root.is_dir(), "the root itself survives");
        assert_eq!(
            outside_listing(&root),
            before,
            "nothing written outside the root"
        );
        (sandbox, r)
    }

    fn assert_nul(r: Result<Stats, UnpackError>, frag: &str) {
        match r {
            Err(e @ UnpackError::NulInName(_)) => {
                let msg = e.to_string();
                assert!(msg.contains(frag) && msg.contains("\\0"), "{msg}");
            }
            other => panic!("want NulInName, got {other:?}"),
        }
    }

    #[test]
    fn nul_in_gnu_long_name_is_refused_naming_the_entry() {
        for kind in [
            tar::EntryType::Regular,
            tar::EntryType::Fifo,
            tar::EntryType::Directory,
        ] {
            let mut b = Vec::new();
            gnu_long(&mut b, b"dir/fi\0fo", kind, b"");
            let (_d, r) = run_boxed(&finish(b));
            assert_nul(r, "dir/fi");
        }
        // On a whiteout: the reported panic (`paths from tar have no NUL`) was here.
        let mut b = Vec::new();
        gnu_long(&mut b, b"etc/.wh.mo\0td", tar::EntryType::Regular, b"");
        let (_d, r) = run_boxed(&finish(b));
        assert_nul(r, "etc/.wh.mo");
    }

    #[test]
    fn nul_in_pax_path_is_refused_naming_the_entry() {
        for (name, kind) in [
            (&b"var/run/p\0ipe"[..], tar::EntryType::Fifo),
            (b"etc/.wh.pa\0sswd", tar::EntryType::Regular),
            (b"usr/.wh..wh..opq\0", tar::EntryType::Regular),
        ] {
            let mut b = Vec::new();
            pax(&mut b, "path", name, kind, "placeholder");
            let (_d, r) = run_boxed(&finish(b));
            let shown = String::from_utf8_lossy(name.split(|&c| c == 0).next().unwrap());
            assert_nul(r, &shown);
        }
        // And in a link target (PAX `linkpath`).
        for kind in [tar::EntryType::Symlink, tar::EntryType::Link] {
            let mut b = Vec::new();
            pax(&mut b, "linkpath", b"/bin/b\0x", kind, "bin/sh");
            let (_d, r) = run_boxed(&finish(b));
            assert_nul(r, "/bin/b");
        }
    }

    #[test]
    fn whiteout_of_the_root_or_its_parent_is_refused() {
        for name in [".wh.", ".wh..", ".wh...", "sub/.wh...", "sub/.wh.."] {
            let mut b = Vec::new();
            entry(&mut b, name, tar::EntryType::Regular, "", b"");
            let (_d, r) = run_boxed(&finish(b));
            assert!(
                matches!(r, Err(UnpackError::BadWhiteout(_))),
                "{name}: {r:?}"
            );
        }
    }

    #[test]
    fn bad_checksum_is_refused() {
        let mut b = Vec::new();
        entry(&mut b, "f", tar::EntryType::Regular, "", b"data");
        b[148] ^= 0x01; // the checksum field
        let (_d, r) = run_boxed(&finish(b));
        assert!(matches!(r, Err(UnpackError::Read(_))), "{r:?}");
    }

    #[test]
    fn huge_or_truncated_sizes_are_refused() {
        // A size far beyond the data: the entry ends at the end of the stream.
        for size in [1u64 << 40, 4097] {
            let mut h = tar::Header::new_gnu();
            h.set_path("big").unwrap();
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(size);
            h.set_mode(0o644);
            h.set_cksum();
            let mut b = h.as_bytes().to_vec();
            b.extend_from_slice(&[1u8; 4096]);
            let (_d, r) = run_boxed(&b);
            assert!(
                matches!(
                    r,
                    Err(UnpackError::Truncated { .. }) | Err(UnpackError::Read(_))
                ),
                "{size}: {r:?}"
            );
        }
    }

    #[test]
    fn escaping_symlinks_and_hardlinks_write_nothing_outside() {
        let cases: &[&[(&str, tar::EntryType, &str)]] = &[
            &[
                ("l", tar::EntryType::Symlink, ".."),
                ("l/x", tar::EntryType::Regular, ""),
            ],
            &[
                ("l", tar::EntryType::Symlink, "/"),
                ("l/tmp/", tar::EntryType::Directory, ""),
            ],
            &[
                ("a/l", tar::EntryType::Symlink, "../.."),
                ("a/l/f", tar::EntryType::Fifo, ""),
            ],
            &[("h", tar::EntryType::Link, "../sentinel")],
            &[
                ("l", tar::EntryType::Symlink, ".."),
                ("h", tar::EntryType::Link, "l/sentinel"),
            ],
            &[
                ("l", tar::EntryType::Symlink, ".."),
                ("l/.wh.sentinel", tar::EntryType::Regular, ""),
            ],
        ];
        for case in cases {
            let mut b = Vec::new();
            for (name, kind, link) in *case {
                entry(&mut b, name, *kind, link, b"");
            }
            let (_d, r) = run_boxed(&finish(b));
            assert!(r.is_err(), "{case:?}: {r:?}");
        }
    }

    #[test]
    fn a_directory_replaced_by_a_symlink_does_not_chmod_its_target() {
        use std::os::unix::fs::MetadataExt;
        let outside = tempfile::tempdir().unwrap();
        let victim = outside.path().join("victim");
        fs::create_dir(&victim).unwrap();
        fs::set_permissions(&victim, fs::Permissions::from_mode(0o700)).unwrap();
        let v = victim.to_str().unwrap();
        for case in [
            // The directory itself becomes the symlink.
            vec![
                ("d/", tar::EntryType::Directory, ""),
                ("d", tar::EntryType::Symlink, v),
            ],
            // Its parent does.
            vec![
                ("p/", tar::EntryType::Directory, ""),
                ("p/victim/", tar::EntryType::Directory, ""),
                (
                    "p",
                    tar::EntryType::Symlink,
                    outside.path().to_str().unwrap(),
                ),
            ],
        ] {
            let mut b = Vec::new();
            for (name, kind, link) in &case {
                entry(&mut b, name, *kind, link, b""); // entry() gives mode 0o755
            }
            let (_d, r) = run(&finish(b));
            r.unwrap();
            let mode = fs::metadata(&victim).unwrap().mode() & 0o7777;
            assert_eq!(mode, 0o700, "{case:?} chmodded the symlink's target");
        }
    }

    #[test]
    fn hardlink_into_a_lower_layer_does_not_follow_its_symlinks() {
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("secret"), b"host").unwrap();
        let lower = tempfile::tempdir().unwrap();
        symlink(outside.path(), lower.path().join("etc")).unwrap();
        fs::create_dir(lower.path().join("bin")).unwrap();
        fs::write(lower.path().join("bin/ok"), b"lower").unwrap();
        let mut b = Vec::new();
        entry(&mut b, "h", tar::EntryType::Link, "etc/secret", b"");
        let d = tempfile::tempdir().unwrap();
        let r = unpack(&finish(b)[..], d.path(), &[lower.path().to_path_buf()]);
        assert!(matches!(r, Err(UnpackError::BadHardlink { .. })), "{r:?}");
        assert!(!d.path().join("h").exists());
        let mut b = Vec::new();
        entry(&mut b, "h", tar::EntryType::Link, "bin/ok", b"");
        let d = tempfile::tempdir().unwrap();
        unpack(&finish(b)[..], d.path(), &[lower.path().to_path_buf()]).unwrap();
        assert_eq!(fs::read(d.path().join("h")).unwrap(), b"lower");
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
