//! Where things live: the checkout, the cache outside it, the output folder.

use std::path::{Path, PathBuf};

/// `cargo xtask clean`'s options.
#[derive(Debug, Clone, clap::Args)]
pub struct CleanArgs {
    /// Also empty the download and build cache.
    #[arg(long)]
    pub cache: bool,
}

/// `cargo xtask clean`: removes `out/`, and with `--cache` the cache too.
pub fn clean(layout: &Layout, args: &CleanArgs) -> anyhow::Result<()> {
    use anyhow::Context;
    let out = layout.root.join("out");
    if out.exists() {
        std::fs::remove_dir_all(&out)
            .with_context(|| format!("cannot remove {}", out.display()))?;
    }
    if args.cache && layout.cache.exists() {
        std::fs::remove_dir_all(&layout.cache)
            .with_context(|| format!("cannot remove {}", layout.cache.display()))?;
        eprintln!("removed {}", layout.cache.display());
    }
    Ok(())
}

/// The directories every command works with.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The checkout (the workspace root).
    pub root: PathBuf,
    /// `$AXION_CACHE`, default `~/.cache/axion`: downloads, package builds. Outside the
    /// checkout so a fresh clone (and CI) reuses the kernel build.
    pub cache: PathBuf,
}

impl Layout {
    /// The layout for the checkout this binary was built from.
    pub fn discover() -> Layout {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("xtask lives in the workspace")
            .to_owned();
        Layout {
            root,
            cache: default_cache_dir(),
        }
    }

    pub fn with_cache(root: PathBuf, cache: PathBuf) -> Layout {
        Layout { root, cache }
    }

    pub fn recipes(&self) -> PathBuf {
        self.root.join("recipes")
    }

    /// Verified downloads, named by their sha256.
    pub fn downloads(&self) -> PathBuf {
        self.cache.join("downloads")
    }

    /// Staged package trees, named by package and input hash.
    pub fn packages(&self) -> PathBuf {
        self.cache.join("packages")
    }

    /// Scratch space for builds in progress; wiped per build.
    pub fn work(&self) -> PathBuf {
        self.cache.join("work")
    }

    /// Default image output folder for a profile.
    pub fn out(&self, profile: &str) -> PathBuf {
        self.root.join("out").join(profile)
    }
}

pub fn default_cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("AXION_CACHE").filter(|v| !v.is_empty()) {
        return PathBuf::from(dir);
    }
    dirs::cache_dir()
        .unwrap_or_else(std::env::temp_dir)
        .join("axion")
}
