//! The shared build cache (remote_cache.rs) against a real registry, Debian's
//! `docker-registry` on 127.0.0.1 (crate test-support):
//!
//! - entries pushed from one cache directory serve a build of the minimal profile into a
//!   second, empty one: nothing is compiled there (no build log, no scratch) and the images
//!   assembled from either have the same SHA256SUMS;
//! - a registry that is down costs a one-line warning and a local build (init, the smallest
//!   package);
//! - a blob the registry serves corrupted is refused and nothing enters the local cache.
//!
//! The kernel is never built here: the first cache is seeded by copying the default cache's
//! entries (`~/.cache/axion/packages`); the test skips loudly when the kernel is not there.

use std::path::{Path, PathBuf};
use std::process::Command;

use xtask::build::{build_packages, entry_dir, keys, BuildOptions, Staged};
use xtask::layout::Layout;
use xtask::recipe::RecipeSet;
use xtask::remote_cache::Remote;

const PROFILE: &str = "minimal";

fn copy_entry(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    let st = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(st.success(), "cp -a {} {}", from.display(), to.display());
}

fn images(layout: &Layout, staged: &[Staged], out: &Path) -> String {
    let recipes = RecipeSet::load(&layout.recipes()).unwrap();
    let profile = xtask::profile::load_profile(&layout.root, PROFILE, &recipes).unwrap();
    let trees: Vec<_> = staged
        .iter()
        .map(|s| xtask::rootfs::PackageTree {
            name: s.name.clone(),
            tree: s.tree.clone(),
        })
        .collect();
    xtask::image::assemble(layout, &profile, &trees, &profile.spec.profile.formats, out).unwrap();
    std::fs::read_to_string(out.join("SHA256SUMS")).unwrap()
}

/// What a cache directory compiled: its build logs.
fn build_logs(layout: &Layout) -> Vec<String> {
    std::fs::read_dir(layout.cache.join("logs"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn leftovers(layout: &Layout) -> Vec<PathBuf> {
    std::fs::read_dir(layout.packages())
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .unwrap()
                        .to_string_lossy()
                        .starts_with(".tmp-")
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn shared_cache_serves_an_empty_cache_and_falls_back_on_failures() {
    let shared = Layout::discover();
    let recipes = RecipeSet::load(&shared.recipes()).unwrap();
    let profile = xtask::profile::load_profile(&shared.root, PROFILE, &recipes).unwrap();
    let names = profile.spec.profile.packages.clone();
    let planned = keys(&shared, &recipes, &names).unwrap();
    let key_of = |n: &str| planned.iter().find(|(p, _)| p == n).unwrap().1.clone();
    let kernel = entry_dir(&shared, "linux", &key_of("linux"));
    if !kernel.join("manifest.json").is_file() {
        test_skip::skip(format_args!(
            "the kernel is not built in {} (this test does not build it): `cargo xtask build \
             linux` first",
            shared.packages().display()
        ));
        return;
    }
    let registry = match test_support::registry::Registry::start() {
        Ok(r) => r,
        Err(e) => {
            test_skip::skip(format_args!("no local registry: {e:#}"));
            return;
        }
    };
    let cache_ref = format!("{}/axion/build-cache", registry.host());
    let d = tempfile::tempdir().unwrap();

    // A: seeded from the default cache (what it lacks, other than the kernel, is built).
    let a = Layout::with_cache(shared.root.clone(), d.path().join("a"));
    for (n, k) in &planned {
        let from = entry_dir(&shared, n, k);
        if from.join("manifest.json").is_file() {
            copy_entry(&from, &entry_dir(&a, n, k));
        }
    }
    let pushing = BuildOptions {
        remote: Some(Remote::parse(&cache_ref, true).unwrap()),
        ..Default::default()
    };
    let staged_a = build_packages(&a, &recipes, &names, &pushing).unwrap();

    // B: empty, reading the registry only.
    let b = Layout::with_cache(shared.root.clone(), d.path().join("b"));
    let reading = BuildOptions {
        remote: Some(Remote::parse(&cache_ref, false).unwrap()),
        ..Default::default()
    };
    let staged_b = build_packages(&b, &recipes, &names, &reading).unwrap();
    assert_eq!(build_logs(&b), Vec::<String>::new(), "B compiled something");
    assert!(leftovers(&b).is_empty(), "{:?}", leftovers(&b));
    for s in &staged_b {
        assert!(s.tree.starts_with(b.packages()), "{}", s.tree.display());
        assert_eq!(
            std::fs::read(&s.manifest).unwrap(),
            std::fs::read(entry_dir(&a, &s.name, &s.key).join("manifest.json")).unwrap(),
            "{}: the pulled manifest differs",
            s.name
        );
    }
    let sums_a = images(&a, &staged_a, &d.path().join("out-a"));
    let sums_b = images(&b, &staged_b, &d.path().join("out-b"));
    assert_eq!(
        sums_a, sums_b,
        "images from pulled packages differ from local ones"
    );

    // A corrupted blob: the registry serves other bytes for init's tree. Refused, and
    // nothing enters the local cache.
    let init_key = key_of("init");
    let manifest: serde_json::Value = serde_json::from_slice(
        &reqwest::blocking::Client::new()
            .get(format!(
                "http://{}/v2/axion/build-cache/manifests/init-{init_key}",
                registry.host()
            ))
            .header("Accept", "application/vnd.oci.image.manifest.v1+json")
            .send()
            .unwrap()
            .bytes()
            .unwrap(),
    )
    .unwrap();
    let tree_digest = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["annotations"]["org.opencontainers.image.title"] == "tree.tar.zst")
        .unwrap()["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_owned();
    let blob = registry.storage().join(format!(
        "docker/registry/v2/blobs/sha256/{}/{tree_digest}/data",
        &tree_digest[..2]
    ));
    let mut bytes = std::fs::read(&blob).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&blob, &bytes).unwrap();
    let c = Layout::with_cache(shared.root.clone(), d.path().join("c"));
    std::fs::create_dir_all(c.packages()).unwrap();
    let init = recipes.get("init").unwrap();
    let entry = entry_dir(&c, "init", &init_key);
    let err = Remote::parse(&cache_ref, false)
        .unwrap()
        .fetch(&c.packages(), init, &init_key, &entry)
        .unwrap_err();
    assert!(format!("{err:#}").contains("digest"), "{err:#}");
    assert!(!entry.exists(), "a corrupt entry entered the cache");
    assert!(leftovers(&c).is_empty(), "{:?}", leftovers(&c));

    // A registry that is down: one warning line, then init is built here. The kernel and
    // busybox come from copies, so only init compiles.
    let down = format!(
        "127.0.0.1:{}/axion/build-cache",
        test_support::registry::free_port()
    );
    for (n, k) in planned.iter().filter(|(n, _)| n != "init") {
        copy_entry(&entry_dir(&a, n, k), &entry_dir(&c, n, k));
    }
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["build", "init", "--cache", &down])
        .env("AXION_CACHE", &c.cache)
        .current_dir(&shared.root)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let warnings: Vec<&str> = err.lines().filter(|l| l.starts_with("warning:")).collect();
    assert_eq!(warnings.len(), 1, "{err}");
    assert!(
        warnings[0].contains("init") && warnings[0].contains("building locally"),
        "{err}"
    );
    assert!(entry.join("manifest.json").is_file(), "{err}");
    assert_eq!(build_logs(&c), ["init.log"]);
}
