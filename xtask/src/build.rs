//! Package builds: recipe + verified sources → a staged tree and its manifest, cached under
//! `$AXION_CACHE/packages/<name>-<key>/` by the hash of every input.
//!
//! One cache entry:
//!
//! ```text
//! packages/busybox-<key>/
//!   tree/            the staged files, laid out as in the image (/bin/busybox, /boot/vmlinuz …)
//!   manifest.json    every path of tree/: type, mode, owner, size, sha256 (see manifest.rs)
//!   inputs.txt       what went into the key, one line per input (to answer "why did it rebuild")
//!   build.log        the build's output (also kept at $AXION_CACHE/logs/<name>.log)
//! ```
//!
//! Rules:
//! - The key (key.rs) covers the recipe's bytes, its sources' sha256s, its local files, its
//!   dependencies' keys, the toolchain's versions and the build logic's version. When an
//!   entry with that key exists the package is up to date and nothing runs.
//! - A build runs in its own scratch directory `$AXION_CACHE/work/<name>-<pid>/` with a
//!   cleared environment: `PATH=/usr/local/bin:/usr/bin:/bin`, `LC_ALL=C`, `TZ=UTC`,
//!   `SOURCE_DATE_EPOCH` fixed, and the kernel's `KBUILD_BUILD_*` fixed; compilers get
//!   prefix maps so no scratch or checkout path reaches the outputs.
//! - The entry is assembled in `packages/.tmp-<name>-<pid>/` and renamed into place as the
//!   last step, so a build killed at any point leaves no entry. A per-package lock
//!   (`packages/.locks/<name>.lock`) serialises concurrent runs; whoever holds it removes the
//!   scratch and temp directories that killed runs left behind.
//! - Kinds: `kbuild` (kbuild.rs), `make` (make.rs), `cargo` (cargo.rs).

pub mod cargo;
pub mod kbuild;
pub mod key;
pub mod make;
pub mod manifest;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::doctor::{self, Need};
use crate::layout::Layout;
use crate::recipe::{Build, Recipe, RecipeSet};

/// `cargo xtask build`'s options.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Packages to build (default: every package of the qemu profile).
    pub packages: Vec<String>,
    #[arg(long)]
    pub offline: bool,
    #[command(flatten)]
    pub cache: crate::remote_cache::CacheArgs,
}

/// `cargo xtask build`: packages into staged trees in the cache.
pub fn main(layout: &Layout, args: &Args) -> Result<()> {
    args.cache.apply()?;
    let recipes = RecipeSet::load(&layout.recipes())?;
    let names = if args.packages.is_empty() {
        crate::profile::load_profile(&layout.root, "qemu", &recipes)?
            .spec
            .profile
            .packages
    } else {
        args.packages.clone()
    };
    let opts = BuildOptions {
        offline: args.offline,
        ..Default::default()
    };
    let started = Instant::now();
    let staged = build_packages(layout, &recipes, &names, &opts)?;
    eprintln!(
        "{} package(s) ready in {:.2} s under {}",
        staged.len(),
        started.elapsed().as_secs_f64(),
        layout.packages().display()
    );
    Ok(())
}

/// Every build sees this as `SOURCE_DATE_EPOCH` (2025-01-01 00:00:00 UTC): timestamps that
/// end up in outputs (the kernel's version string, busybox's banner) are this date, never the
/// time of the build. Changing it changes every key (it is part of [`BUILD_LOGIC`]).
pub const SOURCE_DATE_EPOCH: u64 = 1_735_689_600;
/// The same instant as `KBUILD_BUILD_TIMESTAMP` wants it (the format of `date`).
pub const BUILD_TIMESTAMP: &str = "Wed Jan  1 00:00:00 UTC 2025";
/// The version of the build steps themselves: bump when a kind builds differently, so every
/// cached package of that kind is rebuilt.
pub const BUILD_LOGIC: &str = "axion-build-3 epoch=1735689600";
/// The only PATH a build sees.
pub const BUILD_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// A built package: its staged tree and manifest in the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Staged {
    pub name: String,
    pub version: String,
    /// Hex sha256 of every input (see key.rs).
    pub key: String,
    /// The staged files, laid out as in the image.
    pub tree: PathBuf,
    /// manifest.json describing every path of `tree`.
    pub manifest: PathBuf,
}

#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Use only the download cache.
    pub offline: bool,
    /// Parallel jobs for make and cargo (default: the machine's cores).
    pub jobs: usize,
    /// The shared build cache (default: the environment's or config file's, see
    /// remote_cache.rs).
    pub remote: Option<crate::remote_cache::Remote>,
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            offline: false,
            jobs: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            remote: crate::remote_cache::Remote::configured(),
        }
    }
}

/// Builds the named packages and everything they depend on; returns them dependencies first.
/// Packages whose inputs did not change are not rebuilt ("up to date").
///
/// Two packages build at once when neither needs the other: the kernel's compile then
/// overlaps the rest, whose serial steps (configure scripts, a crate's final codegen and LTO
/// link) leave a core idle on their own. `cargo` packages take turns among themselves, since
/// they share one target directory ([`cargo::guest_target_dir`]) that cargo would lock anyway.
pub fn build_packages(
    layout: &Layout,
    recipes: &RecipeSet,
    names: &[String],
    opts: &BuildOptions,
) -> Result<Vec<Staged>> {
    doctor::ensure(&[Need::Fetch, Need::Build])?;
    let order = recipes.closure(names)?;
    // Every key first (a key takes its dependencies' keys, not their builds).
    let mut toolchains = key::Toolchains::new(layout.root.clone());
    let mut planned: BTreeMap<String, Staged> = BTreeMap::new();
    let mut plan = Vec::new();
    for recipe in &order {
        let deps = dependency_closure(recipes, recipe, &planned)?;
        let key = key::compute(layout, recipe, &deps, &mut toolchains)?;
        let entry = entry_dir(layout, recipe.name(), &key.hex);
        planned.insert(recipe.name().to_owned(), staged_at(recipe, &key, &entry));
        plan.push((*recipe, key, deps));
    }

    struct Board {
        next: Vec<bool>,
        done: BTreeMap<String, Staged>,
        cargo_busy: bool,
        running: usize,
        failed: Option<anyhow::Error>,
    }
    let board = std::sync::Mutex::new(Board {
        next: vec![true; plan.len()],
        done: BTreeMap::new(),
        cargo_busy: false,
        running: 0,
        failed: None,
    });
    let changed = std::sync::Condvar::new();
    let is_cargo = |r: &Recipe| matches!(r.spec.build, Build::Cargo(_));
    let worker = || loop {
        let mut b = board
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let i = loop {
            if b.failed.is_some() || !b.next.contains(&true) {
                return;
            }
            let ready = (0..plan.len()).find(|&i| {
                let (r, _, deps) = &plan[i];
                b.next[i]
                    && deps.iter().all(|d| b.done.contains_key(&d.name))
                    && !(is_cargo(r) && b.cargo_busy)
            });
            match ready {
                Some(i) => break i,
                // Nothing runs and nothing can start: a dependency outside the plan.
                None if b.running == 0 => {
                    b.failed = Some(anyhow::anyhow!(
                        "no package can be built next: a dependency is missing from the plan"
                    ));
                    changed.notify_all();
                    return;
                }
                None => {
                    b = changed
                        .wait(b)
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                }
            }
        };
        let (recipe, key, deps) = &plan[i];
        b.next[i] = false;
        b.running += 1;
        b.cargo_busy |= is_cargo(recipe);
        drop(b);
        let result = build_one(layout, recipe, key, deps, opts);
        let mut b = board
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        b.running -= 1;
        if is_cargo(recipe) {
            b.cargo_busy = false;
        }
        match result {
            Ok(staged) => {
                b.done.insert(staged.name.clone(), staged);
            }
            Err(e) => {
                b.failed.get_or_insert(e);
            }
        }
        changed.notify_all();
    };
    std::thread::scope(|s| {
        let lanes = (0..2).map(|_| s.spawn(worker)).collect::<Vec<_>>();
        for lane in lanes {
            let _ = lane.join();
        }
    });
    let mut b = board
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(e) = b.failed.take() {
        return Err(e);
    }
    order
        .iter()
        .map(|r| {
            b.done
                .remove(r.name())
                .with_context(|| format!("package '{}' was not built", r.name()))
        })
        .collect()
}

/// The cache key of each package `build_packages` would build for `names`, dependencies
/// first, without building anything: `(name, key)`.
pub fn keys(
    layout: &Layout,
    recipes: &RecipeSet,
    names: &[String],
) -> Result<Vec<(String, String)>> {
    let mut toolchains = key::Toolchains::new(layout.root.clone());
    let mut planned: BTreeMap<String, Staged> = BTreeMap::new();
    let mut out = Vec::new();
    for recipe in recipes.closure(names)? {
        let deps = dependency_closure(recipes, recipe, &planned)?;
        let key = key::compute(layout, recipe, &deps, &mut toolchains)?;
        let entry = entry_dir(layout, recipe.name(), &key.hex);
        planned.insert(recipe.name().to_owned(), staged_at(recipe, &key, &entry));
        out.push((recipe.name().to_owned(), key.hex));
    }
    Ok(out)
}

/// The already-built dependencies (direct and indirect) of a recipe, in build order.
fn dependency_closure(
    recipes: &RecipeSet,
    recipe: &Recipe,
    built: &BTreeMap<String, Staged>,
) -> Result<Vec<Staged>> {
    let deps = recipes.closure(&recipe.spec.package.depends)?;
    deps.iter()
        .map(|d| {
            built.get(d.name()).cloned().with_context(|| {
                format!(
                    "dependency '{}' of '{}' was not built first",
                    d.name(),
                    recipe.name()
                )
            })
        })
        .collect()
}

/// The directory names of one package's cache entry.
pub fn entry_dir(layout: &Layout, name: &str, key: &str) -> PathBuf {
    layout.packages().join(format!("{name}-{key}"))
}

fn staged_at(recipe: &Recipe, key: &key::Key, entry: &Path) -> Staged {
    Staged {
        name: recipe.name().to_owned(),
        version: recipe.version().to_owned(),
        key: key.hex.clone(),
        tree: entry.join("tree"),
        manifest: entry.join("manifest.json"),
    }
}

fn log_path(layout: &Layout, name: &str) -> PathBuf {
    layout.cache.join("logs").join(format!("{name}.log"))
}

fn build_one(
    layout: &Layout,
    recipe: &Recipe,
    key: &key::Key,
    deps: &[Staged],
    opts: &BuildOptions,
) -> Result<Staged> {
    let name = recipe.name();
    let entry = entry_dir(layout, name, &key.hex);
    let label = format!("{name} {}", recipe.version());
    if entry.join("manifest.json").is_file() {
        crate::ui::say(&format!("{label}: up to date ({})", &key.hex[..12]));
        if let Some(remote) = opts.remote.as_ref().filter(|r| r.push) {
            crate::remote_cache::push_or_warn(remote, name, &key.hex, &entry);
        }
        return Ok(staged_at(recipe, key, &entry));
    }
    let packages = layout.packages();
    let locks = packages.join(".locks");
    std::fs::create_dir_all(&locks)
        .with_context(|| format!("cannot create {}", locks.display()))?;
    // Per key: a build of other inputs (another checkout's kernel) need not wait for this one.
    let lock_path = locks.join(format!("{name}-{}.lock", key.hex));
    let lock = File::create(&lock_path)
        .with_context(|| format!("cannot create {}", lock_path.display()))?;
    if lock.try_lock().is_err() {
        eprintln!(
            "{label}: waiting for another build of it (lock {})",
            lock_path.display()
        );
        lock.lock()
            .with_context(|| format!("cannot lock {}", lock_path.display()))?;
    }
    // Another run may have built it while we waited.
    if entry.join("manifest.json").is_file() {
        crate::ui::say(&format!("{label}: up to date ({})", &key.hex[..12]));
        return Ok(staged_at(recipe, key, &entry));
    }
    clean_stale(layout, name)?;
    if let Some(remote) = &opts.remote {
        if crate::remote_cache::fetch_or_warn(remote, &packages, recipe, &key.hex, &entry) {
            crate::ui::say(&format!(
                "{label}: from the shared build cache ({})",
                &key.hex[..12]
            ));
            return Ok(staged_at(recipe, key, &entry));
        }
    }

    let pid = std::process::id();
    let work = layout.work().join(format!("{name}-{pid}"));
    let tmp = packages.join(format!(".tmp-{name}-{pid}"));
    let tree = tmp.join("tree");
    std::fs::create_dir_all(&work).with_context(|| format!("cannot create {}", work.display()))?;
    std::fs::create_dir_all(&tree).with_context(|| format!("cannot create {}", tree.display()))?;
    let log_file = log_path(layout, name);
    std::fs::create_dir_all(log_file.parent().unwrap_or(Path::new(".")))?;
    let log =
        File::create(&log_file).with_context(|| format!("cannot create {}", log_file.display()))?;

    let kind = kind_name(&recipe.spec.build);
    let bar = crate::ui::step(&format!("{label}: building ({kind})"));
    let tail = LogTail::start(&bar, &log_file, &format!("{label}: building ({kind})"));
    let started = Instant::now();
    let result = (|| -> Result<()> {
        let sources = source_files(layout, recipe, opts)?;
        let ctx = BuildCtx {
            layout,
            recipe,
            work: work.clone(),
            tree: tree.clone(),
            sources,
            deps,
            jobs: opts.jobs.max(1),
            offline: opts.offline,
            log,
        };
        ctx.note(&format!(
            "== {label} ({kind}), key {}\n== work {}\n",
            key.hex,
            work.display()
        ));
        match &recipe.spec.build {
            Build::Kbuild(spec) => kbuild::build(&ctx, spec),
            Build::Make(spec) => make::build(&ctx, spec),
            Build::Cargo(spec) => cargo::build(&ctx, spec),
        }?;
        ctx.stage_licenses()?;
        manifest::normalize_tree(&tree)?;
        let m = manifest::Manifest::scan(recipe, &key.hex, &tree)?;
        m.write(&tmp.join("manifest.json"))?;
        std::fs::write(tmp.join("inputs.txt"), &key.inputs).context("cannot write inputs.txt")?;
        ctx.note(&format!(
            "== built in {:.1} s with -j{}\n",
            started.elapsed().as_secs_f64(),
            ctx.jobs
        ));
        Ok(())
    })();
    drop(tail);
    bar.finish_and_clear();
    if let Err(e) = result {
        eprintln!(
            "{label}: FAILED after {:.0} s. Last lines of {}:",
            started.elapsed().as_secs_f64(),
            log_file.display()
        );
        for line in last_lines(&log_file, 30) {
            eprintln!("  | {line}");
        }
        // The scratch directory stays for a look; the next run of this package removes it.
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e.context(format!(
            "building '{name}' failed; full log: {}; scratch: {}",
            log_file.display(),
            work.display()
        )));
    }
    let _ = std::fs::copy(&log_file, tmp.join("build.log"));
    sync_dir(&tmp);
    std::fs::rename(&tmp, &entry)
        .with_context(|| format!("cannot move {} to {}", tmp.display(), entry.display()))?;
    sync_dir(&packages);
    // Waiters may go on: the entry is in place. The scratch tree (1.5 GB for the kernel) is
    // ours alone, named by our pid.
    drop(lock);
    let _ = std::fs::remove_dir_all(&work);
    crate::ui::say(&format!(
        "{label}: built in {:.1} s ({})",
        started.elapsed().as_secs_f64(),
        &key.hex[..12]
    ));
    if let Some(remote) = opts.remote.as_ref().filter(|r| r.push) {
        crate::remote_cache::push_or_warn(remote, name, &key.hex, &entry);
    }
    Ok(staged_at(recipe, key, &entry))
}

/// Removes what killed runs of this package left: `.tmp-<name>-*` entries and
/// `work/<name>-*` scratch directories of processes that are gone. Only called with the
/// package's lock held.
fn clean_stale(layout: &Layout, name: &str) -> Result<()> {
    let stale = |dir: &Path, prefix: &str| -> Result<()> {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return Ok(());
        };
        for e in rd.flatten() {
            let file_name = e.file_name();
            let Some(n) = file_name.to_str() else {
                continue;
            };
            let Some(rest) = n.strip_prefix(prefix) else {
                continue;
            };
            // A live process may still be removing its own scratch after publishing.
            let alive =
                rest != std::process::id().to_string() && Path::new("/proc").join(rest).exists();
            if rest.bytes().all(|b| b.is_ascii_digit()) && !rest.is_empty() && !alive {
                eprintln!(
                    "{name}: removing what an interrupted build left: {}",
                    e.path().display()
                );
                std::fs::remove_dir_all(e.path())
                    .with_context(|| format!("cannot remove {}", e.path().display()))?;
            }
        }
        Ok(())
    };
    stale(&layout.packages(), &format!(".tmp-{name}-"))?;
    stale(&layout.work(), &format!("{name}-"))
}

fn sync_dir(dir: &Path) {
    if let Ok(f) = File::open(dir) {
        let _ = f.sync_all();
    }
}

pub fn kind_name(b: &Build) -> &'static str {
    match b {
        Build::Kbuild(_) => "kbuild",
        Build::Make(_) => "make",
        Build::Cargo(_) => "cargo",
    }
}

/// The verified files of a recipe's sources, in recipe order, through the fetch module: from
/// the download cache when it is there and intact, otherwise fetched now (or, offline, an
/// error listing what is missing).
fn source_files(layout: &Layout, recipe: &Recipe, opts: &BuildOptions) -> Result<Vec<PathBuf>> {
    let mode = crate::fetch::Mode::from_offline(opts.offline);
    recipe
        .spec
        .sources
        .iter()
        .map(|s| {
            crate::fetch::fetch_source(layout, recipe, s, mode).with_context(|| {
                format!(
                    "{}: cannot get source '{}' (sha256 {})",
                    recipe.path.display(),
                    s.file,
                    s.sha256
                )
            })
        })
        .collect()
}

pub fn sha256_file(path: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    let mut f = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// What a build kind gets to work with.
pub struct BuildCtx<'a> {
    pub layout: &'a Layout,
    pub recipe: &'a Recipe,
    /// Scratch directory, empty at the start, removed after success.
    pub work: PathBuf,
    /// The staging root: files go here as they will be in the image.
    pub tree: PathBuf,
    /// Verified source files, in recipe order.
    pub sources: Vec<PathBuf>,
    /// Built dependencies, dependencies first.
    pub deps: &'a [Staged],
    pub jobs: usize,
    pub offline: bool,
    log: File,
}

impl BuildCtx<'_> {
    /// A command with the build environment and nothing else of ours: cleared environment,
    /// fixed PATH, locale, timezone and dates. Output goes to the package's log.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>, dir: &Path) -> Command {
        let mut c = Command::new(program);
        c.current_dir(dir)
            .env_clear()
            .env("PATH", BUILD_PATH)
            .env("LC_ALL", "C")
            .env("TZ", "UTC")
            .env("HOME", &self.work)
            .env("SOURCE_DATE_EPOCH", SOURCE_DATE_EPOCH.to_string())
            .env("KBUILD_BUILD_USER", "axion")
            .env("KBUILD_BUILD_HOST", "axion")
            .env("KBUILD_BUILD_TIMESTAMP", BUILD_TIMESTAMP)
            .env("KBUILD_BUILD_VERSION", "1")
            .env("KCONFIG_NOTIMESTAMP", "1")
            .stdin(Stdio::null());
        c
    }

    /// Runs a command with its output appended to the log; fails naming the step.
    pub fn run(&self, step: &str, cmd: &mut Command) -> Result<()> {
        self.note(&format!("== {step}: {cmd:?}\n"));
        let out = self
            .log
            .try_clone()
            .context("cannot duplicate the log file")?;
        let err = self
            .log
            .try_clone()
            .context("cannot duplicate the log file")?;
        let status = cmd.stdout(out).stderr(err).status().with_context(|| {
            format!(
                "{}: {step}: cannot run {:?}",
                self.recipe.name(),
                cmd.get_program()
            )
        })?;
        if !status.success() {
            bail!("{}: {step} failed ({status})", self.recipe.name());
        }
        Ok(())
    }

    /// Another handle on the log, for a child's stdout or stderr.
    pub fn log_handle(&self) -> Result<File> {
        self.log
            .try_clone()
            .context("cannot duplicate the log file")
    }

    /// A line in the log, for the reader.
    pub fn note(&self, text: &str) {
        use std::io::Write;
        let _ = (&self.log).write_all(text.as_bytes());
    }

    /// Unpacks a source archive (tarball, or a .deb's data) into `work/<into>` and returns the
    /// single top directory the archive holds (or `work/<into>` itself when it holds several).
    pub fn unpack(&self, archive: &Path, into: &str) -> Result<PathBuf> {
        let dest = self.work.join(into);
        std::fs::create_dir_all(&dest)?;
        let mut tar = self.command("tar", &dest);
        tar.args(["--no-same-owner", "--no-same-permissions", "-xf"])
            .arg(archive);
        self.run(&format!("unpack {}", archive.display()), &mut tar)?;
        let mut entries: Vec<PathBuf> = std::fs::read_dir(&dest)?
            .flatten()
            .map(|e| e.path())
            .collect();
        if entries.len() == 1 && entries[0].is_dir() {
            return Ok(entries.remove(0));
        }
        Ok(dest)
    }

    /// Copies the recipe's license files (paths inside the source tree) to
    /// `/usr/share/licenses/<name>/` in the tree, for the image's SBOM.
    pub fn stage_licenses(&self) -> Result<()> {
        let files = &self.recipe.spec.package.license_files;
        if files.is_empty() {
            return Ok(());
        }
        let src = self.work.join(SRC_LINK);
        let dest = self
            .tree
            .join("usr/share/licenses")
            .join(self.recipe.name());
        for f in files {
            let from = src.join(f);
            let to = dest.join(f);
            std::fs::create_dir_all(to.parent().unwrap_or(&dest))?;
            std::fs::copy(&from, &to).with_context(|| {
                format!(
                    "{}: key 'package.license-files': cannot copy '{}' ({})",
                    self.recipe.path.display(),
                    f,
                    from.display()
                )
            })?;
        }
        Ok(())
    }

    /// Records where the unpacked source is, for [`Self::stage_licenses`].
    pub fn set_source_dir(&self, dir: &Path) -> Result<()> {
        let link = self.work.join(SRC_LINK);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(dir, &link)
            .with_context(|| format!("cannot create {}", link.display()))
    }
}

const SRC_LINK: &str = ".source";

/// True when the ELF file at `path` asks for no program interpreter (statically linked).
pub fn is_static_elf(path: &Path) -> Result<bool> {
    let data = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    if data.len() < 64 || &data[..4] != b"\x7fELF" || data[4] != 2 {
        bail!("{} is not a 64-bit ELF file", path.display());
    }
    let u16_at = |o: usize| u16::from_le_bytes([data[o], data[o + 1]]) as usize;
    let u64_at =
        |o: usize| u64::from_le_bytes(data[o..o + 8].try_into().unwrap_or_default()) as usize;
    let (phoff, phentsize, phnum) = (u64_at(32), u16_at(54), u16_at(56));
    for i in 0..phnum {
        let o = phoff + i * phentsize;
        if o + 4 > data.len() {
            bail!("{}: truncated program headers", path.display());
        }
        let p_type = u32::from_le_bytes([data[o], data[o + 1], data[o + 2], data[o + 3]]);
        if p_type == 3 {
            return Ok(false); // PT_INTERP
        }
    }
    Ok(true)
}

fn last_lines(path: &Path, n: usize) -> Vec<String> {
    let Ok(mut f) = File::open(path) else {
        return Vec::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
    let lines: Vec<String> = std::io::BufReader::new(f)
        .lines()
        .map_while(|l| l.ok())
        .collect();
    lines[lines.len().saturating_sub(n)..].to_vec()
}

/// On a terminal, shows the log's last line next to the spinner while a build runs.
struct LogTail {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LogTail {
    fn start(bar: &indicatif::ProgressBar, log: &Path, label: &str) -> LogTail {
        if !crate::ui::is_terminal() {
            return LogTail {
                stop: None,
                thread: None,
            };
        }
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let (bar, log, label) = (bar.clone(), log.to_owned(), label.to_owned());
        let thread = std::thread::spawn(move || {
            while rx
                .recv_timeout(std::time::Duration::from_millis(500))
                .is_err()
            {
                if let Some(line) = last_lines(&log, 1).pop() {
                    let line: String = line.trim().chars().take(60).collect();
                    bar.set_message(format!("{label}: {line}"));
                }
            }
        });
        LogTail {
            stop: Some(tx),
            thread: Some(thread),
        }
    }
}

impl Drop for LogTail {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The project's own busybox: the `busybox` package's staged binary (static, musl), built
/// now unless the cache has it. The tests' and the bench's images are made of it
/// (crate test-support).
pub fn project_busybox() -> Result<PathBuf> {
    static PATH: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    if let Some(p) = PATH.get() {
        return Ok(p.clone());
    }
    let layout = crate::layout::Layout::discover();
    let recipes = crate::recipe::RecipeSet::load(&layout.recipes())?;
    let staged = build_packages(
        &layout,
        &recipes,
        &["busybox".to_string()],
        &BuildOptions::default(),
    )
    .context("building the project's busybox for the test images")?;
    let tree = staged
        .into_iter()
        .find(|s| s.name == "busybox")
        .context("the busybox package staged nothing")?
        .tree;
    let path = tree.join("bin/busybox");
    if !path.is_file() {
        bail!("the busybox package has no {}", path.display());
    }
    Ok(PATH.get_or_init(|| path).clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_and_dynamic_elf_are_told_apart() {
        // /bin/sh on Debian is dynamically linked; busybox-static's busybox is static.
        assert!(!is_static_elf(Path::new("/bin/sh")).unwrap());
        let bb = Path::new("/bin/busybox");
        if bb.exists() {
            assert!(is_static_elf(bb).unwrap());
        } else {
            test_skip::skip(
                "/bin/busybox (busybox-static) is not installed, only the dynamic case ran",
            );
        }
        assert!(
            is_static_elf(Path::new("/etc/hostname")).is_err()
                || !Path::new("/etc/hostname").exists()
        );
    }

    #[test]
    fn stale_leftovers_of_killed_runs_are_removed_and_others_kept() {
        let d = tempfile::tempdir().unwrap();
        let layout = Layout::with_cache(d.path().join("root"), d.path().join("cache"));
        let p = layout.packages();
        let w = layout.work();
        // pid 1 is alive: its scratch is left alone.
        for dir in [
            w.join("busybox-1"),
            p.join(".tmp-busybox-999999123"),
            p.join(".tmp-busybox-x-9"),
            p.join("busybox-abc"),
            w.join("busybox-999999077"),
            w.join("busybox-x-1"),
            w.join("linux-77"),
        ] {
            std::fs::create_dir_all(dir.join("tree")).unwrap();
        }
        clean_stale(&layout, "busybox").unwrap();
        assert!(!p.join(".tmp-busybox-999999123").exists());
        assert!(!w.join("busybox-999999077").exists());
        // Another package whose name starts the same ("busybox-x"), entries and other packages
        // stay.
        assert!(p.join(".tmp-busybox-x-9").exists());
        assert!(w.join("busybox-x-1").exists());
        assert!(p.join("busybox-abc").exists());
        assert!(w.join("linux-77").exists());
        assert!(w.join("busybox-1").exists());
    }
}
