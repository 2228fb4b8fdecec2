//! The `docker load` archive reader: a hostile `docker save` tar extracted into a scratch
//! directory (links resolved by name), then every string its manifest.json holds resolved
//! as an archive name. Nothing may land outside the scratch directory.
#![no_main]

use layer_unpack::archive::Extracted;
use libfuzzer_sys::fuzz_target;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

fn strings(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::String(s) => out.push(s.clone()),
        serde_json::Value::Array(a) => a.iter().for_each(|x| strings(x, out)),
        serde_json::Value::Object(o) => o.values().for_each(|x| strings(x, out)),
        _ => {}
    }
}

fn sandbox() -> &'static (PathBuf, PathBuf) {
    static S: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    S.get_or_init(|| {
        let d = scratch_base().join(format!("axion-fuzz-load-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        (d.clone(), d.join("files"))
    })
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
    let (sb, files) = sandbox();
    let _ = std::fs::remove_dir_all(files);
    std::fs::create_dir(files).unwrap();
    if let Ok(x) = Extracted::unpack(data, files) {
        if let Ok(m) = x.file("manifest.json") {
            let bytes = std::fs::read(m).unwrap_or_default();
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes) {
                let mut names = Vec::new();
                strings(&v, &mut names);
                for n in names {
                    if let Ok(p) = x.file(&n) {
                        assert!(p.starts_with(files), "{n:?} resolved to {p:?}");
                    }
                }
            }
        }
    }
    let listing: Vec<_> = std::fs::read_dir(sb)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(
        listing,
        [files.clone()],
        "something was written beside the scratch directory"
    );
});
