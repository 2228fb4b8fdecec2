//! The layer unpacker on hostile tar streams (plain, gzip, zstd, or raw bytes through the
//! decompressor) into a scratch root beside a lower layer and an "outside" directory:
//! whatever the input, nothing outside the root may change.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

struct Sandbox {
    dir: PathBuf,
    root: PathBuf,
    lower: PathBuf,
    before: Vec<(PathBuf, Vec<u8>)>,
}

/// Every path under `d` (not following symlinks, and the root `skip` left out) with a file's
/// content or a link's target, and its mode.
fn snapshot(d: &Path, skip: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) {
    let Ok(rd) = fs::read_dir(d) else { return };
    let mut entries: Vec<_> = rd.flatten().map(|e| e.path()).collect();
    entries.sort();
    for p in entries {
        if p == skip {
            continue;
        }
        let m = fs::symlink_metadata(&p).expect("stat under the sandbox");
        let v = if m.file_type().is_symlink() {
            fs::read_link(&p)
                .unwrap()
                .into_os_string()
                .into_encoded_bytes()
        } else if m.is_file() {
            fs::read(&p).unwrap()
        } else {
            Vec::new()
        };
        // Modes too: a chmod through a symlink changes nothing else.
        let mut v = v;
        v.extend_from_slice(&m.mode().to_le_bytes());
        out.push((p.clone(), v));
        if m.is_dir() {
            snapshot(&p, skip, out);
        }
    }
}

fn sandbox() -> &'static Sandbox {
    static S: OnceLock<Sandbox> = OnceLock::new();
    S.get_or_init(|| {
        let dir = scratch_base().join(format!("axion-fuzz-layer-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let (root, lower, outside) = (dir.join("root"), dir.join("lower"), dir.join("outside"));
        for d in [&root, &lower, &outside, &lower.join("etc")] {
            fs::create_dir_all(d).unwrap();
        }
        fs::write(outside.join("sentinel"), b"outside").unwrap();
        fs::write(lower.join("etc/passwd"), b"root:x:0:0").unwrap();
        // A lower layer's symlinks must not lead hard links out (see lower_file).
        symlink("../outside", lower.join("out")).unwrap();
        symlink("/", lower.join("slash")).unwrap();
        let mut before = Vec::new();
        snapshot(&dir, &root, &mut before);
        Sandbox {
            dir,
            root,
            lower,
            before,
        }
    })
}

/// Removes the root whatever modes the layer gave its directories.
fn wipe(p: &Path) {
    if let Ok(rd) = fs::read_dir(p) {
        for e in rd.flatten() {
            let path = e.path();
            if let Ok(m) = fs::symlink_metadata(&path) {
                if m.is_dir() {
                    let _ = fs::set_permissions(&path, fs::Permissions::from_mode(0o700));
                    wipe(&path);
                }
            }
        }
    }
    let _ = fs::set_permissions(p, fs::Permissions::from_mode(0o700));
    let _ = fs::remove_dir_all(p);
}

/// tmpfs when there is one: every input creates and removes files, and a disk-backed
/// /tmp makes that the bottleneck.
fn scratch_base() -> PathBuf {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, tar)) = data.split_first() else {
        return;
    };
    let s = sandbox();
    wipe(&s.root);
    fs::create_dir(&s.root).unwrap();
    let stream: Vec<u8> = match mode % 4 {
        0 => tar.to_vec(),
        1 => {
            use std::io::Write as _;
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(tar).unwrap();
            gz.finish().unwrap()
        }
        2 => ruzstd::encoding::compress_to_vec(tar, ruzstd::encoding::CompressionLevel::Fastest),
        _ => tar.to_vec(), // raw: maybe a (broken) gzip or zstd stream itself
    };
    if let Ok(rd) = layer_unpack::decompress(&stream[..]) {
        let _ = layer_unpack::unpack(rd, &s.root, &[s.lower.clone()]);
    }
    assert!(s.root.is_dir(), "the root itself is gone");
    let mut after = Vec::new();
    snapshot(&s.dir, &s.root, &mut after);
    assert!(
        after == s.before,
        "the unpack changed something outside its root"
    );
});
