//! Package builds through the real `xtask` binary and library, each in a fresh cache
//! (`AXION_CACHE` in a temporary directory, so the scratch and entry paths differ per run):
//!
//! - busybox: a build killed mid-compile leaves no cache entry; the next run removes the
//!   leftovers and builds it; a second build under another path gives identical bytes; a
//!   no-op run says "up to date".
//! - busybox and init, built from a second checkout of the same files (another path) in a
//!   child process with umask 077, another locale and another time zone, are byte for byte
//!   the packages this checkout builds in the default cache.
//! - linux (`#[ignore]`: one or two kernel builds, 15-17 min each on 2 cores): the same for
//!   the kernel. Run it with
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

/// A second checkout of this one's files (tracked and new, edits included) under another
/// path, or None after a loud skip when this is not a git checkout.
fn other_checkout(dir: &Path) -> Option<PathBuf> {
    let clone = dir.join("elsewhere/axion-two");
    std::fs::create_dir_all(&clone).unwrap();
    let copied = Command::new("sh")
        .arg("-c")
        .arg(
            "git ls-files -z --cached --others --exclude-standard | \
             tar --null --ignore-failed-read -T - -cf - | tar -x -C \"$0\"",
        )
        .arg(&clone)
        .current_dir(root())
        .status()
        .unwrap();
    if !copied.success() {
        test_skip::skip(format_args!(
            "cannot list the files of {} with git (not a git checkout?)",
            root().display()
        ));
        return None;
    }
    Some(clone)
}

const CHILD: &str = "AXION_TEST_BUILD_ELSEWHERE";

/// Builds `package` from checkout `root` into cache `cache` in a child process (this test
/// binary, [`child_build`]) under umask 077, `LC_ALL=C.UTF-8`, `LANG=de_DE.UTF-8` and
/// `TZ=Asia/Kathmandu`; returns its manifest.
fn build_elsewhere(root: &Path, cache: &Path, package: &str) -> Manifest {
    let out = Command::new("sh")
        .arg("-c")
        .arg("umask 077 && exec \"$0\" \"$@\"")
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", "child_build", "--ignored", "--nocapture"])
        .env(
            CHILD,
            format!("{}\n{}\n{package}", root.display(), cache.display()),
        )
        .env("LC_ALL", "C.UTF-8")
        .env("LANG", "de_DE.UTF-8")
        .env("TZ", "Asia/Kathmandu")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the build of {package} in {} failed:\n{text}\n{}",
        root.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let manifest = text
        .lines()
        .find_map(|l| l.strip_prefix("manifest: "))
        .unwrap_or_else(|| panic!("the child named no manifest:\n{text}"));
    Manifest::load(Path::new(manifest)).unwrap()
}

#[test]
#[ignore = "helper: the child process of build_elsewhere, run by the reproducibility tests"]
fn child_build() {
    let Ok(spec) = std::env::var(CHILD) else {
        test_skip::skip("child_build is the child process of build_elsewhere; not run alone");
        return;
    };
    let [root, cache, package]: [&str; 3] = spec
        .lines()
        .collect::<Vec<_>>()
        .try_into()
        .expect("root, cache, package");
    let layout = Layout::with_cache(root.into(), cache.into());
    let recipes = RecipeSet::load(&layout.recipes()).unwrap();
    let staged = build_packages(
        &layout,
        &recipes,
        &[package.to_owned()],
        &BuildOptions::default(),
    )
    .unwrap();
    let s = staged.into_iter().find(|s| s.name == package).unwrap();
    println!("manifest: {}", s.manifest.display());
}

/// `package` built here (default cache) and from a second checkout in a fresh cache, under
/// another umask, locale and time zone: the same staged bytes.
fn reproducible_elsewhere(d: &Path, clone: &Path, package: &str) {
    let Some(cache) = cache_with_sources(&d.join(format!("cache-{package}")), package) else {
        return;
    };
    let here = build(&default_cache_dir(), package);
    let there = build_elsewhere(clone, &cache, package);
    let ma = Manifest::load(&here.manifest).unwrap();
    assert_eq!(ma.key, there.key, "{package}: same inputs, same key");
    assert_eq!(
        ma.entries,
        there.entries,
        "{package} differs between {} and {} (umask 077, another locale and time zone)",
        root().display(),
        clone.display()
    );
}

#[test]
fn package_compiles_are_reproducible_across_checkouts_umask_locale_and_tz() {
    let d = tempfile::tempdir().unwrap();
    let Some(clone) = other_checkout(d.path()) else {
        return;
    };
    reproducible_elsewhere(d.path(), &clone, "busybox");
    reproducible_elsewhere(d.path(), &clone, "init");
}

#[test]
#[ignore = "one or two kernel builds: 15-17 min each on 2 cores; run explicitly"]
fn kernel_is_reproducible_across_checkouts_umask_locale_and_tz() {
    let d = tempfile::tempdir().unwrap();
    let Some(clone) = other_checkout(d.path()) else {
        return;
    };
    reproducible_elsewhere(d.path(), &clone, "linux");
}
