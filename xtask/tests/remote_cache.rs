//! The shared build cache (remote_cache.rs) against a real registry, Debian's
//! `docker-registry` on 127.0.0.1 (crate test-support):
//!
//! - entries pushed from one cache directory serve a build of the minimal profile into a
//!   second, empty one: nothing is compiled there (no build log, no scratch) and the images
//!   assembled from either have the same SHA256SUMS;
//! - a registry that is down costs a one-line warning and a local build (init, the smallest
//!   package);
//! - a blob the registry serves corrupted is refused and nothing enters the local cache;
//! - signed entries: a machine that trusts keys uses only entries one of them signed, and a
//!   second signer adds its signature beside the first (no package is built: the entries are
//!   made by hand);
//! - a registry that accepts connections and never answers costs one bounded wait, then the
//!   run stops asking it.
//!
//! The kernel is never built here: the first cache is seeded by copying the default cache's
//! entries (`~/.cache/axion/packages`); the test skips loudly when the kernel is not there.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use xtask::build::manifest::Manifest;
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

/// A hand-made entry of package `init` at `key` in `layout`'s cache (no build).
fn fake_entry(layout: &Layout, recipes: &RecipeSet, key: &str) -> PathBuf {
    let entry = entry_dir(layout, "init", key);
    let tree = entry.join("tree/sbin");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("init"), format!("not a binary: {key}\n")).unwrap();
    xtask::build::manifest::normalize_tree(&entry.join("tree")).unwrap();
    let m = Manifest::scan(recipes.get("init").unwrap(), key, &entry.join("tree")).unwrap();
    m.write(&entry.join("manifest.json")).unwrap();
    std::fs::write(entry.join("inputs.txt"), "hand-made\n").unwrap();
    entry
}

fn key_pair(dir: &Path, name: &str) -> (signing::SigningKey, Vec<signing::PublicKey>) {
    let (private, public) = signing::SigningKey::generate().unwrap();
    std::fs::write(dir.join(format!("{name}.pub")), &public).unwrap();
    (
        signing::SigningKey::from_pem(&private).unwrap(),
        signing::public_keys(&public).unwrap(),
    )
}

#[test]
fn signed_entries_serve_only_machines_that_trust_the_key() {
    let shared = Layout::discover();
    let recipes = RecipeSet::load(&shared.recipes()).unwrap();
    let registry = match test_support::registry::Registry::start() {
        Ok(r) => r,
        Err(e) => {
            test_skip::skip(format_args!("no local registry: {e:#}"));
            return;
        }
    };
    let cache_ref = format!("{}/axion/signed-cache", registry.host());
    let d = tempfile::tempdir().unwrap();
    let (alice, alice_pub) = key_pair(d.path(), "alice");
    let (bob, bob_pub) = key_pair(d.path(), "bob");
    let init = recipes.get("init").unwrap();
    let (signed, unsigned) = ("1".repeat(64), "2".repeat(64));

    let a = Layout::with_cache(shared.root.clone(), d.path().join("a"));
    let pusher = Remote::parse(&cache_ref, true).unwrap().signing_with(alice);
    assert!(pusher
        .push_entry("init", &signed, &fake_entry(&a, &recipes, &signed))
        .unwrap());
    let plain = Remote::parse(&cache_ref, true).unwrap();
    assert!(plain
        .push_entry("init", &unsigned, &fake_entry(&a, &recipes, &unsigned))
        .unwrap());

    // Fetches into a fresh cache directory each time; Ok(entry) or the error text.
    let n = std::cell::Cell::new(0);
    let fetch = |remote: &Remote, key: &str| -> Result<PathBuf, String> {
        n.set(n.get() + 1);
        let c = Layout::with_cache(shared.root.clone(), d.path().join(format!("c{}", n.get())));
        std::fs::create_dir_all(c.packages()).unwrap();
        let entry = entry_dir(&c, "init", key);
        let r = remote.fetch(&c.packages(), init, key, &entry);
        assert!(leftovers(&c).is_empty(), "{:?}", leftovers(&c));
        match r {
            Ok(true) => Ok(entry),
            Ok(false) => Err("not found".into()),
            Err(e) => {
                assert!(!entry.exists(), "a refused entry entered the cache");
                Err(format!("{e:#}"))
            }
        }
    };
    let trusts_alice = || {
        Remote::parse(&cache_ref, false)
            .unwrap()
            .trusting(alice_pub.clone())
    };
    let trusts_bob = || {
        Remote::parse(&cache_ref, false)
            .unwrap()
            .trusting(bob_pub.clone())
    };
    let trusts_nobody = || Remote::parse(&cache_ref, false).unwrap();

    let got = fetch(&trusts_alice(), &signed).unwrap();
    assert_eq!(
        std::fs::read(got.join("manifest.json")).unwrap(),
        std::fs::read(entry_dir(&a, "init", &signed).join("manifest.json")).unwrap()
    );
    let err = fetch(&trusts_bob(), &signed).unwrap_err();
    assert!(err.contains("trust"), "{err}");
    let err = fetch(&trusts_alice(), &unsigned).unwrap_err();
    assert!(err.contains("not signed"), "{err}");
    // A machine that trusts no key uses every entry (their digests are still checked).
    fetch(&trusts_nobody(), &signed).unwrap();
    fetch(&trusts_nobody(), &unsigned).unwrap();

    // Bob signs the entry that is there already: his signature joins Alice's.
    let bob_pusher = Remote::parse(&cache_ref, true).unwrap().signing_with(bob);
    assert!(!bob_pusher
        .push_entry("init", &signed, &entry_dir(&a, "init", &signed))
        .unwrap());
    fetch(&trusts_bob(), &signed).unwrap();
    fetch(&trusts_alice(), &signed).unwrap();
}

#[test]
fn a_registry_that_never_answers_costs_one_bounded_wait() {
    let shared = Layout::discover();
    let recipes = RecipeSet::load(&shared.recipes()).unwrap();
    // Accepts every connection and never answers; the thread ends with the test process or
    // after a minute, whichever comes first.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let started = Instant::now();
        listener.set_nonblocking(true).unwrap();
        let mut held = Vec::new();
        while started.elapsed() < Duration::from_secs(60) {
            match listener.accept() {
                Ok((s, _)) => held.push(s),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    });
    let d = tempfile::tempdir().unwrap();
    let c = Layout::with_cache(shared.root.clone(), d.path().join("c"));
    std::fs::create_dir_all(c.packages()).unwrap();
    let init = recipes.get("init").unwrap();
    let key = "3".repeat(64);
    let entry = entry_dir(&c, "init", &key);
    let remote = Remote::parse(&format!("{addr}/axion/cache"), false)
        .unwrap()
        .answering_within(Duration::from_secs(2));

    let t = Instant::now();
    let err = remote.fetch(&c.packages(), init, &key, &entry).unwrap_err();
    let waited = t.elapsed();
    assert!(
        format!("{err:#}").contains("no answer within 2 s"),
        "{err:#}"
    );
    assert!(
        waited >= Duration::from_secs(2) && waited < Duration::from_secs(10),
        "waited {waited:?}"
    );
    assert!(remote.is_unreachable());
    assert!(!entry.exists() && leftovers(&c).is_empty());
    // The rest of the run does not wait again: the next package builds at once.
    let t = Instant::now();
    assert!(!xtask::remote_cache::fetch_or_warn(
        &remote,
        &c.packages(),
        init,
        &key,
        &entry
    ));
    assert!(t.elapsed() < Duration::from_secs(1));
}
