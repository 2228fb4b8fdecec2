//! `cargo xtask verify PUBLISHED_DIR`: rebuilds what `publish` wrote from the inputs its
//! `build-manifest.json` records and compares every file with the published `SHA256SUMS`.
//!
//! The recorded inputs: the profile, SOURCE_DATE_EPOCH (set for the rebuild, so the
//! checkout's last commit date does not matter) and each package's build key, compared with
//! the checkout's own keys first (a differing key names the package whose inputs changed).
//! The rebuild is `publish` into a temporary folder with the local package cache (entries are
//! keyed by every input, so an entry with the recorded key is that build). The answer is
//! "identical" or each file that differs, is missing or is extra, with how many bytes differ
//! and where the first one is.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::layout::Layout;

/// `cargo xtask verify`'s options.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// A folder written by `cargo xtask publish` (or `pull`).
    pub published: PathBuf,
    #[arg(long)]
    pub offline: bool,
}

/// How one file of the published folder compares with the rebuild.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Difference {
    /// Different bytes: how many of the common length differ, the first such offset, sizes.
    Changed {
        name: String,
        differing: u64,
        first: Option<u64>,
        published: u64,
        rebuilt: u64,
    },
    /// Published but not rebuilt.
    Missing(String),
    /// Rebuilt but not published.
    Extra(String),
    /// The published file itself does not have the sha256 its SHA256SUMS says.
    NotAsListed(String),
}

impl std::fmt::Display for Difference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Difference::Changed {
                name,
                differing,
                first,
                published,
                rebuilt,
            } => {
                write!(f, "{name}: differs ({differing} byte(s)")?;
                if let Some(o) = first {
                    write!(f, ", the first at offset {o}")?;
                }
                if published != rebuilt {
                    write!(f, "; {published} bytes published, {rebuilt} rebuilt")?;
                }
                write!(f, ")")
            }
            Difference::Missing(n) => write!(f, "{n}: published, not rebuilt"),
            Difference::Extra(n) => write!(f, "{n}: rebuilt, not published"),
            Difference::NotAsListed(n) => {
                write!(
                    f,
                    "{n}: the published file does not match its SHA256SUMS line"
                )
            }
        }
    }
}

/// The comparison of two folders.
#[derive(Debug, Default)]
pub struct Report {
    pub identical: Vec<String>,
    pub differences: Vec<Difference>,
}

pub fn main(layout: &Layout, args: &Args) -> Result<()> {
    let dir = &args.published;
    let path = dir.join("build-manifest.json");
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?,
    )
    .with_context(|| format!("{}: not JSON", path.display()))?;
    let profile = manifest["profile"]
        .as_str()
        .with_context(|| format!("{}: no profile", path.display()))?;
    let version = manifest["version"].as_str().unwrap_or_default();
    if version != crate::image::VERSION {
        bail!(
            "{} is version {version}; this checkout builds {}",
            dir.display(),
            crate::image::VERSION
        );
    }
    let epoch = manifest["source-date-epoch"]
        .as_u64()
        .with_context(|| format!("{}: no source-date-epoch", path.display()))?;

    let recipes = crate::recipe::RecipeSet::load(&layout.recipes())?;
    let prof = crate::profile::load_profile(&layout.root, profile, &recipes)?;
    let keys = crate::build::keys(layout, &recipes, &prof.spec.profile.packages)?;
    for p in manifest["packages"].as_array().into_iter().flatten() {
        let name = p["name"].as_str().unwrap_or_default();
        let recorded = p["build-key"].as_str().unwrap_or_default();
        match keys.iter().find(|(n, _)| n == name) {
            Some((_, k)) if k == recorded => {}
            Some((_, k)) => eprintln!(
                "input changed: {name}: build key {} recorded, {} in this checkout",
                short(recorded),
                short(k)
            ),
            None => eprintln!("input changed: {name} is no longer in profile {profile}"),
        }
    }

    // The rebuild sees the recorded date, not the checkout's last commit's.
    std::env::set_var("SOURCE_DATE_EPOCH", epoch.to_string());
    let scratch = tempfile::tempdir().context("cannot make a temp folder for the rebuild")?;
    let rebuilt = scratch.path().join("rebuilt");
    crate::publish::publish_profile(layout, profile, &rebuilt, None, args.offline)?;
    let report = compare(dir, &rebuilt)?;
    for d in &report.differences {
        println!("{d}");
    }
    if report.differences.is_empty() {
        println!(
            "identical: all {} file(s) of {} rebuilt with the same sha256",
            report.identical.len(),
            dir.display()
        );
        Ok(())
    } else {
        bail!(
            "{} of {} file(s) differ from the rebuild (see above)",
            report.differences.len(),
            report.differences.len() + report.identical.len()
        )
    }
}

fn short(k: &str) -> &str {
    &k[..k.len().min(12)]
}

/// `name → sha256` of a folder's SHA256SUMS, plus SHA256SUMS itself.
fn sums(dir: &Path) -> Result<Vec<(String, String)>> {
    let path = dir.join("SHA256SUMS");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let (hash, name) = line
            .split_once("  ")
            .with_context(|| format!("{}:{}: not a sha256sum line", path.display(), i + 1))?;
        if name.starts_with('/') || name.split('/').any(|c| c == ".." || c.is_empty()) {
            bail!("{}:{}: unsafe file name '{name}'", path.display(), i + 1);
        }
        out.push((name.to_owned(), hash.to_owned()));
    }
    out.push(("SHA256SUMS".into(), crate::cache::sha256_file(&path)?));
    Ok(out)
}

/// Compares the published folder (its SHA256SUMS) with a rebuilt one (its SHA256SUMS); for
/// a differing file present in both, counts the differing bytes.
pub fn compare(published: &Path, rebuilt: &Path) -> Result<Report> {
    let want = sums(published)?;
    let got = sums(rebuilt)?;
    let mut report = Report::default();
    for (name, hash) in &want {
        let own = published.join(name);
        if name != "SHA256SUMS" && own.is_file() && crate::cache::sha256_file(&own)? != *hash {
            report
                .differences
                .push(Difference::NotAsListed(name.clone()));
        }
        match got.iter().find(|(n, _)| n == name) {
            None => report.differences.push(Difference::Missing(name.clone())),
            Some((_, h)) if h == hash => report.identical.push(name.clone()),
            Some(_) => {
                let (a, b) = (published.join(name), rebuilt.join(name));
                if name != "SHA256SUMS" && a.is_file() && crate::cache::sha256_file(&a)? != *hash {
                    report
                        .differences
                        .push(Difference::NotAsListed(name.clone()));
                }
                let (differing, first) = if a.is_file() {
                    byte_diff(&a, &b)?
                } else {
                    (0, None)
                };
                report.differences.push(Difference::Changed {
                    name: name.clone(),
                    differing,
                    first,
                    published: std::fs::metadata(&a).map(|m| m.len()).unwrap_or(0),
                    rebuilt: std::fs::metadata(&b).map(|m| m.len()).unwrap_or(0),
                });
            }
        }
    }
    for (name, _) in &got {
        if !want.iter().any(|(n, _)| n == name) {
            report.differences.push(Difference::Extra(name.clone()));
        }
    }
    Ok(report)
}

/// Differing bytes over the common length (plus the length difference) and the first offset.
fn byte_diff(a: &Path, b: &Path) -> Result<(u64, Option<u64>)> {
    let open =
        |p: &Path| std::fs::File::open(p).with_context(|| format!("cannot open {}", p.display()));
    let (mut fa, mut fb) = (open(a)?, open(b)?);
    let (mut ba, mut bb) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
    let (mut offset, mut differing, mut first) = (0u64, 0u64, None);
    loop {
        let na = read_full(&mut fa, &mut ba)?;
        let nb = read_full(&mut fb, &mut bb)?;
        let n = na.min(nb);
        for i in 0..n {
            if ba[i] != bb[i] {
                differing += 1;
                first.get_or_insert(offset + i as u64);
            }
        }
        if na != nb {
            first.get_or_insert(offset + n as u64);
            differing += (na.max(nb) - n) as u64;
            // The rest of the longer file differs too.
            let rest = |f: &mut std::fs::File| -> Result<u64> {
                Ok(std::io::copy(f, &mut std::io::sink())?)
            };
            differing += rest(&mut fa)? + rest(&mut fb)?;
            return Ok((differing, first));
        }
        if n == 0 {
            return Ok((differing, first));
        }
        offset += n as u64;
    }
}

fn read_full(f: &mut std::fs::File, buf: &mut [u8]) -> Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        let k = f.read(&mut buf[n..])?;
        if k == 0 {
            break;
        }
        n += k;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder(dir: &Path, files: &[(&str, &[u8])]) {
        std::fs::create_dir_all(dir).unwrap();
        let mut paths = Vec::new();
        for (n, b) in files {
            let p = dir.join(n);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, b).unwrap();
            paths.push(p);
        }
        let s = crate::publish::sha256sums(dir, &paths).unwrap();
        std::fs::write(dir.join("SHA256SUMS"), s).unwrap();
    }

    #[test]
    fn identical_folders_and_the_file_that_differs() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        folder(&a, &[("x.raw", b"abcdef"), ("licenses/l", b"text")]);
        folder(&b, &[("x.raw", b"abcdef"), ("licenses/l", b"text")]);
        let r = compare(&a, &b).unwrap();
        assert!(r.differences.is_empty(), "{:?}", r.differences);
        assert_eq!(r.identical.len(), 3);

        folder(&b, &[("x.raw", b"abXdeYZ"), ("new", b"1")]);
        let r = compare(&a, &b).unwrap();
        let text: Vec<String> = r.differences.iter().map(|d| d.to_string()).collect();
        assert!(
            r.differences.contains(&Difference::Changed {
                name: "x.raw".into(),
                differing: 3,
                first: Some(2),
                published: 6,
                rebuilt: 7,
            }),
            "{text:?}"
        );
        assert!(r
            .differences
            .contains(&Difference::Missing("licenses/l".into())));
        assert!(r.differences.contains(&Difference::Extra("new".into())));
        // A published file edited after SHA256SUMS was written is named as such.
        folder(&b, &[("x.raw", b"abcdef"), ("licenses/l", b"text")]);
        std::fs::write(a.join("x.raw"), b"abcdeF").unwrap();
        let r = compare(&a, &b).unwrap();
        assert!(
            r.differences
                .contains(&Difference::NotAsListed("x.raw".into())),
            "{:?}",
            r.differences
        );
        assert!(text
            .iter()
            .any(|t| t.starts_with("x.raw: differs (3 byte(s), the first at offset 2")));
    }
}
