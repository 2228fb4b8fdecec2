//! Package builds through the real `xtask` binary and library, each in a fresh cache
//! (`AXION_CACHE` in a temporary directory, so the scratch and entry paths differ per run):
//!
//! - busybox: a build killed mid-compile leaves no cache entry; the next run removes the
//!   leftovers and builds it; a second build under another path gives identical bytes; a
//!   no-op run says "up to date".
//! - linux (`#[ignore]`, one or two 7.5 min builds on 2 cores): the default cache's kernel and
//!   one built under another path are identical. Run it with
//!   `cargo test -p xtask --test build_cache -- --ignored kernel_is_reproducible`.
//!
//! The sources come from the default download cache (`~/.cache/axion/downloads`), linked
//! into the temporary cache; the test skips loudly when they are not there.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use xtask::build::manifest::Manifest;
use xtask::build::{build_packages, BuildOptions, Staged};
use xtask::layout::{default_cache_dir, Layout};
use xtask::recipe::RecipeSet;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// A fresh cache with the package's sources linked in from the default cache, or None (after
/// a loud skip line) when the default cache does not have them.
fn cache_with_sources(dir: &Path, package: &str) -> Option<PathBuf> {
    let recipes = RecipeSet::load(&root().join("recipes")).unwrap();
    let cache = dir.to_owned();
    let downloads = cache.join("downloads");
    std::fs::create_dir_all(&downloads).unwrap();
    let from = default_cache_dir().join("downloads");
    for s in &recipes.get(package).unwrap().spec.sources {
        let src = from.join(&s.sha256);
        if !src.is_file() {
            test_skip::skip(format_args!(
                "the source {} of {package} is not in {} (run `cargo xtask fetch {package}`)",
                s.file,
                from.display()
            ));
            return None;
        }
        std::os::unix::fs::symlink(&src, downloads.join(&s.sha256)).unwrap();
    }
    Some(cache)
}

fn xtask(cache: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_xtask"));
    c.env("AXION_CACHE", cache).current_dir(root());
    c
}

fn entries(cache: &Path, name: &str) -> Vec<String> {
    std::fs::read_dir(cache.join("packages"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(name) || n.starts_with(&format!(".tmp-{name}")))
                .collect()
        })
        .unwrap_or_default()
}

fn build(cache: &Path, name: &str) -> Staged {
    let layout = Layout::with_cache(root(), cache.to_owned());
    let recipes = RecipeSet::load(&layout.recipes()).unwrap();
    let staged = build_packages(
        &layout,
        &recipes,
        &[name.to_owned()],
        &BuildOptions::default(),
    )
    .unwrap();
    staged.into_iter().find(|s| s.name == name).unwrap()
}

#[test]
fn busybox_build_is_atomic_reproducible_and_cached() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let (Some(cache_a), Some(cache_b)) = (
        cache_with_sources(&a.path().join("first"), "busybox"),
        cache_with_sources(&b.path().join("second-path"), "busybox"),
    ) else {
        return;
    };

    // 1. Kill a build (its whole process group, as Ctrl-C would) once it is compiling.
    let mut child = xtask(&cache_a)
        .args(["build", "busybox"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap();
    let log = cache_a.join("logs/busybox.log");
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text
            .lines()
            .filter(|l| l.trim_start().starts_with("CC "))
            .count()
            >= 5
        {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the build ended before it could be interrupted"
        );
        assert!(
            Instant::now() < deadline,
            "the build did not start compiling within 600 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let killed = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", child.id())])
        .status()
        .unwrap();
    assert!(killed.success());
    let _ = child.wait();
    let left = entries(&cache_a, "busybox");
    assert!(
        !left.iter().any(|n| n.starts_with("busybox-")),
        "a killed build left an entry: {left:?}"
    );
    assert!(
        left.iter().any(|n| n.starts_with(".tmp-busybox-")),
        "the build was interrupted before it made its temp entry: {left:?}"
    );

    // 2. The next run cleans up and builds it.
    let out = xtask(&cache_a).args(["build", "busybox"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("removing what an interrupted build left"),
        "{err}"
    );
    let left = entries(&cache_a, "busybox");
    assert_eq!(left.len(), 1, "one entry, no temp: {left:?}");
    assert!(
        std::fs::read_dir(cache_a.join("work"))
            .unwrap()
            .next()
            .is_none(),
        "scratch directories are removed"
    );

    // 3. No-op: nothing runs.
    let started = Instant::now();
    let out = xtask(&cache_a).args(["build", "busybox"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && err.contains("busybox 1.35.0: up to date"),
        "{err}"
    );
    eprintln!(
        "no-op build of busybox: {:.2} s",
        started.elapsed().as_secs_f64()
    );

    // 4. Another path, the same bytes.
    let first = build(&cache_a, "busybox");
    let second = build(&cache_b, "busybox");
    assert_eq!(first.key, second.key, "same inputs, same key");
    let (ma, mb) = (
        Manifest::load(&first.manifest).unwrap(),
        Manifest::load(&second.manifest).unwrap(),
    );
    assert_eq!(
        ma.entries,
        mb.entries,
        "busybox differs between {} and {}",
        cache_a.display(),
        cache_b.display()
    );
    let bb = ma.get("/bin/busybox").expect("/bin/busybox staged");
    assert_eq!(bb.mode, 0o755);
    assert_eq!(
        ma.get("/bin/ls").and_then(|e| e.target.as_deref()),
        Some("busybox"),
        "relative applet links"
    );
    assert_eq!(
        ma.get("/usr/bin/env").and_then(|e| e.target.as_deref()),
        Some("../../bin/busybox"),
        "relative applet links"
    );
    assert!(
        ma.get("/usr/share/licenses/busybox/LICENSE").is_some(),
        "license staged for the SBOM"
    );
    assert!(
        xtask::build::is_static_elf(&first.tree.join("bin/busybox")).unwrap(),
        "busybox is static"
    );
}

#[test]
#[ignore = "one or two kernel builds: 7.5-15 min on 2 cores; run explicitly"]
fn kernel_is_reproducible_across_build_paths() {
    // The default cache's kernel (built now if it is not there) against one built in a fresh
    // cache under another path: the scratch directory, and so every path the compiler sees,
    // differs.
    let b = tempfile::tempdir().unwrap();
    let Some(cache_b) = cache_with_sources(&b.path().join("kernel-two"), "linux") else {
        return;
    };
    let second = build(&cache_b, "linux");
    let first = build(&default_cache_dir(), "linux");
    let (ma, mb) = (
        Manifest::load(&first.manifest).unwrap(),
        Manifest::load(&second.manifest).unwrap(),
    );
    let vm = |m: &Manifest| {
        m.get("/boot/vmlinuz")
            .and_then(|e| e.sha256.clone())
            .expect("/boot/vmlinuz")
    };
    eprintln!(
        "vmlinuz sha256: {} ({}) and {} ({})",
        vm(&ma),
        first.tree.display(),
        vm(&mb),
        second.tree.display()
    );
    assert_eq!(
        ma.entries,
        mb.entries,
        "kernel builds differ between {} and {}",
        first.tree.display(),
        second.tree.display()
    );
}

#[test]
fn cargo_package_is_reproducible_across_checkouts() {
    // The same commit in a second checkout (git archive into a temporary directory) and a
    // fresh cache: the init binary must have the same bytes as the one built from this
    // checkout, so neither the checkout path nor the scratch path reaches it.
    let d = tempfile::tempdir().unwrap();
    let clone = d.path().join("elsewhere/axion");
    std::fs::create_dir_all(&clone).unwrap();
    let archive = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "git -C '{}' archive HEAD | tar -x -C '{}'",
            root().display(),
            clone.display()
        ))
        .status()
        .unwrap();
    if !archive.success() {
        test_skip::skip(format_args!(
            "`git archive HEAD` failed in {} (not a git checkout?)",
            root().display()
        ));
        return;
    }
    // The crate as it is now (uncommitted edits included), so both checkouts hold the same files.
    let status = Command::new("cp")
        .arg("-a")
        .arg(root().join("packages/init/."))
        .arg(clone.join("packages/init"))
        .status()
        .unwrap();
    assert!(status.success());
    let here = build(&default_cache_dir(), "init");
    let layout = Layout::with_cache(clone.clone(), d.path().join("cache"));
    let recipes = RecipeSet::load(&layout.recipes()).unwrap();
    let there = build_packages(
        &layout,
        &recipes,
        &["init".to_owned()],
        &BuildOptions::default(),
    )
    .unwrap()
    .pop()
    .unwrap();
    let (ma, mb) = (
        Manifest::load(&here.manifest).unwrap(),
        Manifest::load(&there.manifest).unwrap(),
    );
    assert_eq!(
        ma.entries,
        mb.entries,
        "init differs between {} and {}",
        root().display(),
        clone.display()
    );
    assert!(xtask::build::is_static_elf(&there.tree.join("sbin/init")).unwrap());
}
