//! Sources: local paths, https mirrors, Debian's archive through apt; every one verified by
//! its pinned sha256 into the download cache ([`crate::cache`]) before anything uses it.
//!
//! The recipe keys of a `[[source]]` (see [`crate::recipe`]):
//!
//! ```toml
//! [[source]]
//! file = "busybox-1.35.0.tar.bz2"   # the file's name (for messages and the build dir)
//! sha256 = "faeeb244…"              # the pin: nothing else decides whether bytes are right
//! path = "files/x.tar"              # a file next to the recipe
//! urls = ["https://…", "https://…"] # mirrors
//! debian-source = { package = "busybox", version = "1:1.35.0-4+deb12u1",
//!                   file = "busybox_1.35.0.orig.tar.bz2" }
//! debian-binary = { package = "linux-source-6.1", version = "6.1.170-3" }
//! ```
//!
//! Where a source has several places, they are tried in this order until one gives the
//! pinned bytes: `path`, then each of `urls`, then `debian-source`, then `debian-binary`.
//! A place that fails (cannot connect, 404, wrong bytes, version gone) is reported in one
//! line and the next is tried; if all fail, the error lists every attempt.
//!
//! - https: connect timeout 15 s (an unreachable host fails fast and the next mirror is
//!   tried), 30 s per read; a connection lost mid-body is resumed with a `Range` request
//!   (up to 4 attempts). An interrupted download stays in `downloads/.partial/<sha256>` and
//!   is resumed by the next run; it is never used without verification.
//! - Debian: `apt-get download package=version` (the .deb itself) or
//!   `apt-get source --download-only package=version` (then the named `file` is taken),
//!   with a private apt state in `$AXION_CACHE/apt` made from the host's apt sources
//!   ([`apt`]); the host's apt state is not changed. The lists are refreshed when older than
//!   a day, and once more when a pin is not found. When the pinned version is gone from the
//!   archive the error says so and names the versions available now. (apt silently takes
//!   another revision of a source package when the pinned one is gone; if the named file
//!   there still has the pinned hash, as upstream tarballs do, it is used with a warning.)
//! - Offline ([`Mode::Offline`]): only the cache; every missing source of every requested
//!   package is listed (package, file, sha256), then the command fails.

pub mod apt;
pub mod http;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Result;

use crate::cache::{self, Cache, CacheError, Lookup};
use crate::layout::Layout;
use crate::recipe::{Recipe, RecipeSet, Source};

/// `cargo xtask fetch`'s options.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Packages to fetch (default: all).
    pub packages: Vec<String>,
    /// Fetch the sources of every recipe.
    #[arg(long)]
    pub all: bool,
    /// Use only the cache; list exactly what is missing.
    #[arg(long)]
    pub offline: bool,
}

/// `cargo xtask fetch`: the packages' sources into the download cache, verified.
pub fn main(layout: &Layout, args: &Args) -> Result<()> {
    crate::doctor::ensure(&[crate::doctor::Need::Fetch])?;
    let recipes = RecipeSet::load(&layout.recipes())?;
    let names: Vec<String> = if args.all || args.packages.is_empty() {
        recipes.recipes.keys().cloned().collect()
    } else {
        args.packages.clone()
    };
    fetch_packages(layout, &recipes, &names, Mode::from_offline(args.offline))?;
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Online,
    /// Use only the cache; report exactly what is missing.
    Offline,
}

impl Mode {
    pub fn from_offline(offline: bool) -> Mode {
        if offline {
            Mode::Offline
        } else {
            Mode::Online
        }
    }
}

/// One source that `--offline` could not find in the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingSource {
    pub package: String,
    pub file: String,
    pub sha256: String,
}

impl std::fmt::Display for MissingSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} (sha256 {})",
            self.package, self.file, self.sha256
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{url}: HTTP {status}")]
    HttpStatus { url: String, status: u16 },
    #[error("{url}: {message}")]
    Network { url: String, message: String },
    #[error("cannot {action} '{path}': {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error("{command}: {message}")]
    Apt { command: String, message: String },
    #[error(
        "Debian {kind} package {package}={version} is no longer in the archive; available now: {}. \
         Pin one of these in the recipe (with its sha256), or seed the cache with the pinned file",
        if available.is_empty() { "none".to_owned() } else { available.join(", ") }
    )]
    DebianVersionGone {
        kind: apt::Kind,
        package: String,
        version: String,
        available: Vec<String>,
    },
    #[error(
        "Debian source package {package}={version} has no file '{file}' (it has: {})",
        found.join(", ")
    )]
    NotInSourcePackage {
        package: String,
        version: String,
        file: String,
        found: Vec<String>,
    },
    #[error("local source '{path}' (recipe {recipe}): {source}")]
    Local {
        path: PathBuf,
        recipe: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "cannot fetch '{file}' (sha256 {sha256}) of package '{package}' ({recipe}); tried:\n  {}",
        attempts.join("\n  ")
    )]
    AllFailed {
        package: String,
        file: String,
        sha256: String,
        recipe: PathBuf,
        attempts: Vec<String>,
    },
    #[error(
        "offline: {} source(s) missing from the cache {}:\n  {}\nrun `cargo xtask fetch` with \
         network access to get them",
        missing.len(),
        cache.display(),
        missing.iter().map(|m| m.to_string()).collect::<Vec<_>>().join("\n  ")
    )]
    Missing {
        cache: PathBuf,
        missing: Vec<MissingSource>,
    },
    #[error(
        "{} of {total} source(s) could not be fetched:\n{}",
        failures.len(),
        failures.join("\n")
    )]
    Failed { total: usize, failures: Vec<String> },
}

/// A place one source can come from, in the order they are tried.
#[derive(Debug)]
enum Origin<'a> {
    Local(PathBuf),
    Url(&'a str),
    DebianSource(&'a crate::recipe::DebianSource),
    DebianBinary(&'a crate::recipe::DebianBinary),
}

impl std::fmt::Display for Origin<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Local(p) => write!(f, "{}", p.display()),
            Origin::Url(u) => f.write_str(u),
            Origin::DebianSource(s) => write!(
                f,
                "Debian source package {}={} file {}",
                s.package, s.version, s.file
            ),
            Origin::DebianBinary(b) => {
                write!(f, "Debian binary package {}={}", b.package, b.version)
            }
        }
    }
}

fn origins<'a>(recipe: &Recipe, source: &'a Source) -> Vec<Origin<'a>> {
    let mut v = Vec::new();
    if let Some(p) = &source.path {
        v.push(Origin::Local(recipe.dir.join(p)));
    }
    v.extend(source.urls.iter().map(|u| Origin::Url(u)));
    if let Some(s) = &source.debian_source {
        v.push(Origin::DebianSource(s));
    }
    if let Some(b) = &source.debian_binary {
        v.push(Origin::DebianBinary(b));
    }
    v
}

/// The verified cache path of one source: from the cache when it is there and intact,
/// otherwise fetched (online) or reported missing (offline).
pub fn fetch_source(
    layout: &Layout,
    recipe: &Recipe,
    source: &Source,
    mode: Mode,
) -> Result<PathBuf> {
    Ok(fetch_one(layout, recipe, source, mode)?)
}

fn fetch_one(
    layout: &Layout,
    recipe: &Recipe,
    source: &Source,
    mode: Mode,
) -> Result<PathBuf, FetchError> {
    let cache = Cache::for_layout(layout);
    let sha = &source.sha256;
    if let Lookup::Hit(p) = check(&cache, recipe, source)? {
        return Ok(p);
    }
    if mode == Mode::Offline {
        return Err(FetchError::Missing {
            cache: cache.dir().to_owned(),
            missing: vec![missing(recipe, source)],
        });
    }
    let _lock = cache.lock()?;
    cache.remove_stale_scratch();
    // Another process may have fetched it while we waited for the lock.
    if let Lookup::Hit(p) = check(&cache, recipe, source)? {
        return Ok(p);
    }
    let label = format!("{}: {}", recipe.name(), source.file);
    let mut attempts = Vec::new();
    let origins = origins(recipe, source);
    let last = origins.len().saturating_sub(1);
    for (i, origin) in origins.iter().enumerate() {
        match fetch_from(layout, &cache, recipe, source, origin, &label) {
            Ok(p) => return Ok(p),
            Err(e) => {
                if i < last {
                    progress::note(&format!("{label}: {e}; trying the next source"));
                }
                attempts.push(e.to_string().replace('\n', "\n    "));
            }
        }
    }
    Err(FetchError::AllFailed {
        package: recipe.name().into(),
        file: source.file.clone(),
        sha256: sha.clone(),
        recipe: recipe.path.clone(),
        attempts,
    })
}

fn check(cache: &Cache, recipe: &Recipe, source: &Source) -> Result<Lookup, FetchError> {
    let l = cache.lookup(&source.sha256)?;
    if let Lookup::Corrupt { actual } = &l {
        progress::note(&format!(
            "{}: cache entry for {} no longer matches its sha256 {} (got {actual}); removed, \
             fetching again",
            recipe.name(),
            source.file,
            source.sha256
        ));
    }
    Ok(l)
}

fn missing(recipe: &Recipe, source: &Source) -> MissingSource {
    MissingSource {
        package: recipe.name().into(),
        file: source.file.clone(),
        sha256: source.sha256.clone(),
    }
}

fn fetch_from(
    layout: &Layout,
    cache: &Cache,
    recipe: &Recipe,
    source: &Source,
    origin: &Origin,
    label: &str,
) -> Result<PathBuf, FetchError> {
    let sha = &source.sha256;
    match origin {
        Origin::Local(path) => {
            if let Err(e) = std::fs::metadata(path) {
                return Err(FetchError::Local {
                    path: path.clone(),
                    recipe: recipe.path.clone(),
                    source: e,
                });
            }
            Ok(cache::install_copy(
                cache,
                path,
                sha,
                &path.display().to_string(),
            )?)
        }
        Origin::Url(url) => {
            let part = cache.partial_path(sha)?;
            http::download(url, &part, label)?;
            Ok(cache.install(&part, sha, url)?)
        }
        Origin::DebianBinary(b) => {
            let apt = apt::Apt::open(&layout.cache.join("apt"))?;
            let scratch = cache.scratch_dir()?;
            let deb = apt.download_binary(&b.package, &b.version, scratch.path(), label)?;
            Ok(cache.install(&deb, sha, &origin.to_string())?)
        }
        Origin::DebianSource(s) => {
            let apt = apt::Apt::open(&layout.cache.join("apt"))?;
            let scratch = cache.scratch_dir()?;
            let (file, substituted) =
                apt.download_source_file(&s.package, &s.version, &s.file, scratch.path(), label)?;
            match (cache.install(&file, sha, &origin.to_string()), substituted) {
                (Ok(p), None) => Ok(p),
                (Ok(p), Some(other)) => {
                    progress::note(&format!(
                        "warning: {label}: {}={} is gone from the archive; took {} from {other} \
                         (same sha256). \
                         Update the recipe's debian-source version to {other}",
                        s.package, s.version, s.file
                    ));
                    Ok(p)
                }
                (Err(e), None) => Err(e.into()),
                (Err(e), Some(_)) => Err(match apt.gone_source(&s.package, &s.version) {
                    Some(gone) => gone,
                    None => e.into(),
                }),
            }
        }
    }
}

impl apt::Apt {
    fn gone_source(&self, package: &str, version: &str) -> Option<FetchError> {
        let available = self.available(package, apt::Kind::Source);
        (!available.iter().any(|v| v == version)).then(|| FetchError::DebianVersionGone {
            kind: apt::Kind::Source,
            package: package.into(),
            version: version.into(),
            available,
        })
    }
}

/// Fetches every source of the named packages and of the packages they depend on. Offline,
/// lists every source missing from the cache and fails if there is one. Online, tries every
/// source and reports all failures together.
pub fn fetch_packages(
    layout: &Layout,
    recipes: &RecipeSet,
    names: &[String],
    mode: Mode,
) -> Result<()> {
    let list = recipes.closure(names)?;
    let started = Instant::now();
    let cache = Cache::for_layout(layout);
    let mut total = 0;
    if mode == Mode::Offline {
        let mut missing_sources = Vec::new();
        for r in &list {
            for s in &r.spec.sources {
                total += 1;
                if !matches!(check(&cache, r, s)?, Lookup::Hit(_)) {
                    missing_sources.push(missing(r, s));
                }
            }
        }
        if !missing_sources.is_empty() {
            return Err(FetchError::Missing {
                cache: cache.dir().to_owned(),
                missing: missing_sources,
            }
            .into());
        }
        progress::note(&format!(
            "all {total} source(s) are in the cache {}",
            cache.dir().display()
        ));
        return Ok(());
    }
    let mut failures = Vec::new();
    for r in &list {
        for s in &r.spec.sources {
            total += 1;
            match fetch_one(layout, r, s, mode) {
                Ok(p) => progress::note(&format!("{}: {} ok ({})", r.name(), s.file, short(&p))),
                Err(e) => failures.push(format!("{}: {e}", r.name())),
            }
        }
    }
    if !failures.is_empty() {
        return Err(FetchError::Failed { total, failures }.into());
    }
    progress::note(&format!(
        "{total} source(s) verified in {:.1} s",
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

fn short(p: &Path) -> String {
    p.display().to_string()
}

/// Download progress: an indicatif bar on a terminal, a line at the start and the end
/// otherwise.
pub(crate) mod progress {
    use indicatif::{ProgressBar, ProgressStyle};
    use std::time::Instant;

    /// A byte counter for `label`; `detail` (where from) goes only into the plain line.
    pub fn bytes(total: Option<u64>, label: &str, detail: &str, position: u64) -> ProgressBar {
        if !crate::ui::is_terminal() {
            match position {
                0 => eprintln!("{label}: downloading {detail}"),
                n => eprintln!("{label}: resuming at byte {n}: {detail}"),
            }
            return ProgressBar::hidden();
        }
        let bar = match total {
            Some(_) => crate::ui::bytes_bar(total, label),
            None => {
                let b = ProgressBar::new_spinner();
                b.set_style(
                    ProgressStyle::with_template(
                        "{spinner} {msg:40!} {bytes} {bytes_per_sec} [{elapsed}]",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                );
                b.set_message(label.to_owned());
                b.enable_steady_tick(std::time::Duration::from_millis(120));
                b
            }
        };
        bar.set_position(position);
        bar
    }

    pub fn done(bar: &ProgressBar, label: &str, bytes: u64, started: Instant) {
        bar.finish_and_clear();
        let secs = started.elapsed().as_secs_f64();
        eprintln!("{label}: {:.1} MB in {secs:.1} s", bytes as f64 / 1e6);
    }

    pub fn note(line: &str) {
        eprintln!("{line}");
    }
}
