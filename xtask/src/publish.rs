//! `cargo xtask publish`: the artifacts of one profile, ready to hand out.
//!
//! `DIR/` receives:
//! - the image files (`axion-PROFILE-VERSION.FORMAT`), copied from the image step;
//! - `axion-PROFILE-VERSION.spdx.json`: the SPDX 2.3 SBOM ([`crate::sbom`]);
//! - `licenses/PACKAGE/…`: the license texts of every package;
//! - `build-manifest.json`: profile, version, SOURCE_DATE_EPOCH, each package's recipe hash
//!   and build key, and the toolchain versions;
//! - `SHA256SUMS` over all of the above (what `sha256sum -c` reads).
//!
//! `--push REGISTRY/REPO:TAG` then pushes every file as one OCI artifact ([`oci`]);
//! `cargo xtask pull REF --out DIR` gets them back and checks SHA256SUMS.
//! `--sign-key FILE` (with `--push`) signs the pushed manifest, cosign-style ([`sign`]).

pub mod oci;
pub mod sign;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::json;

use crate::build::Staged;
use crate::cache::sha256_file;
use crate::image::write_atomic;
use crate::recipe::{Build, Recipe};
use crate::sbom::{self, Artifact, SbomInput};

/// `cargo xtask publish`'s options.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    #[arg(long, default_value = "vsphere")]
    pub profile: String,
    /// The folder to write into.
    #[arg(long)]
    pub out: PathBuf,
    /// Also push everything as one OCI artifact: REGISTRY/REPOSITORY:TAG.
    #[arg(long)]
    pub push: Option<String>,
    #[arg(long)]
    pub offline: bool,
    /// Sign the pushed artifact with this private key (`cargo xtask keygen`); needs --push.
    #[arg(long, value_name = "FILE")]
    pub sign_key: Option<PathBuf>,
}

/// `cargo xtask publish`: prints the published files with their sizes, and the pushed digest.
pub fn main(layout: &crate::layout::Layout, args: &Args) -> Result<()> {
    let push = args.push.as_deref();
    let key = match (&args.sign_key, push) {
        (Some(_), None) => bail!("--sign-key signs what is pushed: give --push REGISTRY/REPO:TAG"),
        (Some(path), Some(_)) => Some(sign::load_key(path)?),
        (None, _) => None,
    };
    let published = publish_profile(layout, &args.profile, &args.out, push, args.offline)?;
    for f in &published.files {
        let size = std::fs::metadata(f).map(|m| m.len()).unwrap_or(0);
        println!("{:>10}  {}", crate::ui::human_size(size), f.display());
    }
    if let (Some(reference), Some(digest)) = (push, published.pushed) {
        println!("pushed {reference} ({digest})");
        if let Some(key) = key {
            let claims = [
                ("axion.profile".to_owned(), args.profile.clone()),
                ("axion.version".to_owned(), crate::image::release_version()),
            ]
            .into();
            let tag = sign::push_signature(reference, &digest, &key, &claims)?;
            println!("signed with key {} ({tag})", key.public_key().key_id());
        }
    }
    Ok(())
}

/// `cargo xtask pull`'s options.
#[derive(Debug, Clone, clap::Args)]
pub struct PullArgs {
    /// REGISTRY/REPOSITORY:TAG
    pub reference: String,
    #[arg(long)]
    pub out: PathBuf,
}

/// `cargo xtask pull`: an artifact pushed by `publish --push`, checked against its
/// SHA256SUMS.
pub fn pull(args: &PullArgs) -> Result<()> {
    let files = oci::pull(&args.reference, &args.out)?;
    let checked = verify_sums(&args.out)?;
    eprintln!(
        "{} file(s) pulled into {}, {checked} checked against SHA256SUMS",
        files.len(),
        args.out.display()
    );
    Ok(())
}

/// What [`publish_profile`] wrote (and pushed).
pub struct Published {
    pub files: Vec<PathBuf>,
    /// The manifest digest, when pushed.
    pub pushed: Option<String>,
}

/// `cargo xtask publish`: builds every format of profile `name`, writes the artifacts with
/// SBOM, licenses and build manifest into `dir`, and pushes them when `push` names a
/// reference.
pub fn publish_profile(
    layout: &crate::layout::Layout,
    name: &str,
    dir: &Path,
    push: Option<&str>,
    offline: bool,
) -> Result<Published> {
    crate::doctor::ensure(&[crate::doctor::Need::Image])?;
    let recipes = crate::recipe::RecipeSet::load(&layout.recipes())?;
    let profile = crate::profile::load_profile(&layout.root, name, &recipes)?;
    let staged = crate::image::profile_packages(layout, &recipes, &profile, offline)?;
    let trees: Vec<_> = staged
        .iter()
        .map(|s| crate::rootfs::PackageTree {
            name: s.name.clone(),
            tree: s.tree.clone(),
        })
        .collect();
    let images = layout.out(profile.name());
    let written = crate::image::assemble(
        layout,
        &profile,
        &trees,
        &profile.spec.profile.formats,
        &images,
    )?;
    let artifacts: Vec<PathBuf> = written
        .into_iter()
        .filter(|p| !p.ends_with("SHA256SUMS"))
        .collect();
    let mut toolchains = crate::build::key::Toolchains::new(layout.root.clone());
    let mut toolchain = Vec::new();
    for kind in ["kbuild", "make", "cargo"] {
        toolchain.push((kind.to_owned(), toolchains.describe(kind)?));
    }
    let input = PublishInput {
        root: &layout.root,
        profile: profile.name(),
        version: crate::image::VERSION,
        source_date_epoch: crate::rootfs::source_date_epoch(&layout.root)?,
        recipes: recipes.closure(&profile.spec.profile.packages)?,
        staged: &staged,
        artifacts: &artifacts,
        toolchain,
        offline,
    };
    let files = publish(&input, dir)?;
    let pushed = match push {
        Some(reference) => {
            let annotations = vec![
                (
                    "org.opencontainers.image.version".to_owned(),
                    crate::image::release_version(),
                ),
                (
                    "org.opencontainers.image.title".to_owned(),
                    format!("axion-{}", profile.name()),
                ),
            ];
            Some(oci::push(reference, dir, &files, &annotations)?)
        }
        None => None,
    };
    Ok(Published { files, pushed })
}

pub struct PublishInput<'a> {
    pub root: &'a Path,
    pub profile: &'a str,
    pub version: &'a str,
    pub source_date_epoch: u64,
    /// Every package in the image, dependencies first.
    pub recipes: Vec<&'a Recipe>,
    pub staged: &'a [Staged],
    /// The image files to publish.
    pub artifacts: &'a [PathBuf],
    /// `(tool, version line)` pairs recorded in the build manifest.
    pub toolchain: Vec<(String, String)>,
    /// Look crates up without the network (the SBOM's components).
    pub offline: bool,
}

/// Writes everything into `out` and returns the files, SHA256SUMS last.
pub fn publish(input: &PublishInput, out: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let mut written: Vec<PathBuf> = Vec::new();

    let mut artifacts = Vec::new();
    for a in input.artifacts {
        let name = a
            .file_name()
            .and_then(|n| n.to_str())
            .context("artifact without a file name")?;
        let dest = out.join(name);
        if a != &dest {
            copy_atomic(a, &dest)?;
        }
        artifacts.push(Artifact {
            file_name: name.to_owned(),
            sha256: sha256_file(&dest)?,
        });
        written.push(dest);
    }

    let stem = format!("axion-{}-{}", input.profile, input.version);
    let components =
        sbom::components::collect(input.root, &input.recipes, sbom::REPOSITORY, input.offline)
            .context("listing what the packages link statically, for the SBOM")?;
    let doc = sbom::document(&SbomInput {
        profile: input.profile,
        version: input.version,
        source_date_epoch: input.source_date_epoch,
        packages: input.recipes.clone(),
        artifacts,
        components: &components,
        repository: sbom::REPOSITORY,
    });
    let sbom_path = out.join(format!("{stem}.spdx.json"));
    write_atomic(&sbom_path, &serde_json::to_vec_pretty(&doc)?)?;
    written.push(sbom_path);

    for r in &input.recipes {
        for (name, text) in license_texts(input.root, r, input.staged)? {
            let path = out.join("licenses").join(r.name()).join(&name);
            std::fs::create_dir_all(path.parent().unwrap_or(out))?;
            write_atomic(&path, &text)?;
            written.push(path);
        }
    }
    written.extend(sbom::components::write_licenses(&components, out)?);

    let keys: BTreeMap<&str, &Staged> = input.staged.iter().map(|s| (s.name.as_str(), s)).collect();
    let packages: Vec<_> = input
        .recipes
        .iter()
        .map(|r| {
            let recipe_sha256 = sha256_file(&r.path).unwrap_or_default();
            json!({
                "name": r.name(),
                "version": r.version(),
                "recipe": r.path.strip_prefix(input.root).unwrap_or(&r.path).display().to_string(),
                "recipe-sha256": recipe_sha256,
                "build-key": keys.get(r.name()).map(|s| s.key.clone()),
                "sources": r.spec.sources.iter()
                    .map(|s| json!({"file": s.file, "sha256": s.sha256}))
                    .collect::<Vec<_>>(),
            })
        })
        .collect();
    let manifest = json!({
        "profile": input.profile,
        "version": input.version,
        "source-date-epoch": input.source_date_epoch,
        "packages": packages,
        "toolchain": input.toolchain.iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect::<serde_json::Map<_, _>>(),
    });
    let manifest_path = out.join("build-manifest.json");
    write_atomic(&manifest_path, &serde_json::to_vec_pretty(&manifest)?)?;
    written.push(manifest_path);

    let sums = sha256sums(out, &written)?;
    let sums_path = out.join("SHA256SUMS");
    write_atomic(&sums_path, sums.as_bytes())?;
    written.push(sums_path);
    // Handed out like the images: readable by all (temporary files are made 0600).
    for f in &written {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o644))
            .with_context(|| format!("cannot chmod {}", f.display()))?;
    }
    Ok(written)
}

/// `sha256sum`-format lines for `files`, with names relative to `dir`, sorted.
pub fn sha256sums(dir: &Path, files: &[PathBuf]) -> Result<String> {
    let mut lines: Vec<String> = files
        .iter()
        .map(|f| {
            let rel = f.strip_prefix(dir).unwrap_or(f).display().to_string();
            Ok(format!("{}  {rel}\n", sha256_file(f)?))
        })
        .collect::<Result<_>>()?;
    lines.sort();
    Ok(lines.concat())
}

/// Checks every line of `DIR/SHA256SUMS`; returns the number of files checked.
pub fn verify_sums(dir: &Path) -> Result<usize> {
    let path = dir.join("SHA256SUMS");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let mut n = 0;
    for (i, line) in text.lines().enumerate() {
        let (hash, name) = line
            .split_once("  ")
            .with_context(|| format!("{}:{}: not a sha256sum line", path.display(), i + 1))?;
        if name.split('/').any(|c| c == ".." || c.is_empty()) || name.starts_with('/') {
            bail!("{}:{}: unsafe file name '{name}'", path.display(), i + 1);
        }
        let actual = sha256_file(&dir.join(name))
            .with_context(|| format!("{name} is listed in SHA256SUMS but cannot be read"))?;
        if actual != hash {
            bail!("{name}: sha256 is {actual}, SHA256SUMS says {hash}");
        }
        n += 1;
    }
    Ok(n)
}

/// The license texts of one package: files the build staged under
/// `usr/share/licenses/NAME/`, else the recipe's `license-files` found in the checkout for
/// our own crates, else the texts Debian ships for the SPDX identifiers named.
fn license_texts(root: &Path, r: &Recipe, staged: &[Staged]) -> Result<Vec<(String, Vec<u8>)>> {
    if let Some(s) = staged.iter().find(|s| s.name == r.name()) {
        let dir = s.tree.join("usr/share/licenses").join(r.name());
        if dir.is_dir() {
            // Nested too: the kernel's GPL-2.0 text is LICENSES/preferred/GPL-2.0.
            let mut out = Vec::new();
            for e in walkdir::WalkDir::new(&dir) {
                let e = e?;
                if e.file_type().is_file() {
                    let rel = e.path().strip_prefix(&dir).unwrap_or(e.path());
                    out.push((rel.display().to_string(), std::fs::read(e.path())?));
                }
            }
            if !out.is_empty() {
                out.sort();
                return Ok(out);
            }
        }
    }
    if matches!(r.spec.build, Build::Cargo(_)) {
        let path = root.join("LICENSE");
        if path.is_file() {
            return Ok(vec![("LICENSE".into(), std::fs::read(path)?)]);
        }
    }
    let mut out = Vec::new();
    for id in r
        .spec
        .package
        .license
        .split(|c: char| c.is_whitespace() || c == '(' || c == ')')
    {
        let debian = match id {
            "GPL-2.0-only" | "GPL-2.0-or-later" | "GPL-2.0" => "GPL-2",
            "GPL-3.0-only" | "GPL-3.0-or-later" => "GPL-3",
            "LGPL-2.1-only" | "LGPL-2.1-or-later" => "LGPL-2.1",
            "Apache-2.0" => "Apache-2.0",
            "MPL-2.0" => "MPL-2.0",
            _ => continue,
        };
        let p = Path::new("/usr/share/common-licenses").join(debian);
        if p.is_file() {
            out.push((id.to_owned(), std::fs::read(p)?));
        }
    }
    if out.is_empty() {
        bail!(
            "no license text for package '{}' ({}): stage it under usr/share/licenses/{}/",
            r.name(),
            r.spec.package.license,
            r.name()
        );
    }
    Ok(out)
}

fn copy_atomic(from: &Path, to: &Path) -> Result<()> {
    let dir = to.parent().unwrap_or(Path::new("."));
    let tmp = tempfile::NamedTempFile::new_in(dir)?;
    std::fs::copy(from, tmp.path())
        .with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
    tmp.as_file().sync_all()?;
    tmp.persist(to)
        .with_context(|| format!("cannot write {}", to.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_round_trip_and_detect_a_changed_file() {
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("a.raw");
        std::fs::write(&a, b"disk").unwrap();
        std::fs::create_dir(d.path().join("licenses")).unwrap();
        let b = d.path().join("licenses/GPL");
        std::fs::write(&b, b"text").unwrap();
        let sums = sha256sums(d.path(), &[a.clone(), b]).unwrap();
        assert!(
            sums.contains("  licenses/GPL\n") && sums.contains("  a.raw\n"),
            "{sums}"
        );
        std::fs::write(d.path().join("SHA256SUMS"), &sums).unwrap();
        assert_eq!(verify_sums(d.path()).unwrap(), 2);
        std::fs::write(&a, b"disk!").unwrap();
        let e = verify_sums(d.path()).unwrap_err().to_string();
        assert!(e.contains("a.raw"), "{e}");
    }

    #[test]
    fn sums_refuse_paths_outside_the_folder() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("SHA256SUMS"),
            format!("{}  ../etc/passwd\n", "0".repeat(64)),
        )
        .unwrap();
        assert!(verify_sums(d.path())
            .unwrap_err()
            .to_string()
            .contains("unsafe"));
    }
}
