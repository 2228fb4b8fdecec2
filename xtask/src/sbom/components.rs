//! What the image's binaries link statically, each its own SPDX package:
//!
//! - a `cargo` package: every crate its binary links for the musl target (`cargo tree -e
//!   normal,no-proc-macro --target x86_64-unknown-linux-musl -p CRATE`, so build scripts,
//!   proc macros, dev-dependencies and other platforms' crates are left out, and features are
//!   resolved as `cargo build -p CRATE` resolves them), with its version, license and
//!   crates.io checksum from `cargo metadata` and Cargo.lock; and what the Rust toolchain
//!   links into every musl binary: its standard library, its own copy of musl and LLVM's
//!   libunwind;
//! - a `make` package (built with musl-gcc): Debian's musl, the `libc.a` of `musl-dev`.
//!
//! Each component carries its license texts (the crate's own license files from the cargo
//! registry's unpacked sources), which `publish` writes under `licenses/`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::build::cargo::TARGET;
use crate::recipe::{Build, Recipe};

/// One statically linked component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Component {
    /// The SPDX identifier (`SPDXRef-Crate-NAME-VERSION`, `SPDXRef-Component-…`).
    pub id: String,
    pub name: String,
    pub version: String,
    /// `Organization: …` (SPDX's supplier: who distributes it).
    pub supplier: String,
    /// A URL, or NOASSERTION.
    pub download_location: String,
    /// An SPDX license expression, or NOASSERTION.
    pub license: String,
    /// Hex sha256 of what was downloaded (the .crate, the .deb), when known.
    pub sha256: Option<String>,
    /// A package URL (`pkg:cargo/…`, `pkg:deb/…`).
    pub purl: Option<String>,
    pub source_info: String,
    /// The folder under `licenses/` that holds its texts.
    pub license_dir: String,
    /// `(file name, text)`: its license files.
    pub license_texts: Vec<(String, Vec<u8>)>,
}

/// Every component of a set of packages, and which package links which.
#[derive(Debug, Clone, Default)]
pub struct Components {
    /// Sorted by id, each once.
    pub list: Vec<Component>,
    /// Package (recipe) name → the ids of the components its binaries link.
    pub links: BTreeMap<String, Vec<String>>,
}

/// The components of `recipes`, looked up in the checkout at `root`. `repository` is the
/// workspace's repository URL (empty: none), for the download location of our own crates.
pub fn collect(
    root: &Path,
    recipes: &[&Recipe],
    repository: &str,
    offline: bool,
) -> Result<Components> {
    let mut by_id: BTreeMap<String, Component> = BTreeMap::new();
    let mut links: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let cargo_recipes: Vec<(&Recipe, String)> = recipes
        .iter()
        .filter_map(|r| match &r.spec.build {
            Build::Cargo(spec) => Some((
                *r,
                spec.krate.clone().unwrap_or_else(|| r.name().to_owned()),
            )),
            _ => None,
        })
        .collect();
    if !cargo_recipes.is_empty() {
        let meta = CargoData::load(root, offline)?;
        let toolchain = rust_toolchain(root)?;
        for (r, krate) in &cargo_recipes {
            let mut ids = Vec::new();
            for (name, version) in linked_crates(root, krate, offline)? {
                let c = meta.component(root, &name, &version, repository)?;
                ids.push(c.id.clone());
                by_id.entry(c.id.clone()).or_insert(c);
            }
            for c in &toolchain {
                ids.push(c.id.clone());
                by_id.entry(c.id.clone()).or_insert_with(|| c.clone());
            }
            links.insert(r.name().to_owned(), ids);
        }
    }
    let make: Vec<&&Recipe> = recipes
        .iter()
        .filter(|r| matches!(r.spec.build, Build::Make(_)))
        .collect();
    if !make.is_empty() {
        let musl = debian_musl()?;
        for r in make {
            links.insert(r.name().to_owned(), vec![musl.id.clone()]);
        }
        by_id.insert(musl.id.clone(), musl);
    }
    Ok(Components {
        list: by_id.into_values().collect(),
        links,
    })
}

/// Writes every component's license texts under `out/licenses/`; returns the files.
pub fn write_licenses(components: &Components, out: &Path) -> Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    for c in &components.list {
        for (name, text) in &c.license_texts {
            let path = out.join("licenses").join(&c.license_dir).join(name);
            std::fs::create_dir_all(path.parent().unwrap_or(out))
                .with_context(|| format!("cannot create {}", path.display()))?;
            crate::image::write_atomic(&path, text)?;
            written.push(path);
        }
    }
    Ok(written)
}

/// `(name, version)` of every crate the binaries of `krate` link for the musl target, the
/// crate itself left out, sorted.
pub fn linked_crates(root: &Path, krate: &str, offline: bool) -> Result<Vec<(String, String)>> {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root).args([
        "tree",
        "--locked",
        "-p",
        krate,
        "--target",
        TARGET,
        "-e",
        "normal,no-proc-macro",
        "--prefix",
        "none",
        "-f",
        "{p}",
    ]);
    if offline {
        cmd.arg("--offline");
    }
    let text = run(&mut cmd)?;
    Ok(parse_tree(&text, krate))
}

/// `cargo tree --prefix none -f {p}` lines (`name vX.Y.Z [(path)] [(*)]`) → sorted, unique
/// `(name, version)`, `root` left out.
fn parse_tree(text: &str, root: &str) -> Vec<(String, String)> {
    let mut set = BTreeSet::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let (Some(name), Some(version)) = (words.next(), words.next()) else {
            continue;
        };
        let Some(version) = version.strip_prefix('v') else {
            continue;
        };
        if name != root {
            set.insert((name.to_owned(), version.to_owned()));
        }
    }
    set.into_iter().collect()
}

/// `cargo metadata` (licenses, where each crate's source is unpacked) and Cargo.lock
/// (checksums).
struct CargoData {
    packages: BTreeMap<(String, String), Value>,
    checksums: BTreeMap<(String, String), String>,
}

impl CargoData {
    fn load(root: &Path, offline: bool) -> Result<CargoData> {
        let mut cmd = Command::new("cargo");
        cmd.current_dir(root).args([
            "metadata",
            "--format-version",
            "1",
            "--locked",
            "--filter-platform",
            TARGET,
        ]);
        if offline {
            cmd.arg("--offline");
        }
        let meta: Value =
            serde_json::from_str(&run(&mut cmd)?).context("cargo metadata: not JSON")?;
        let mut packages = BTreeMap::new();
        for p in meta["packages"].as_array().into_iter().flatten() {
            let key = (
                p["name"].as_str().unwrap_or_default().to_owned(),
                p["version"].as_str().unwrap_or_default().to_owned(),
            );
            packages.insert(key, p.clone());
        }
        let lock_path = root.join("Cargo.lock");
        let lock: toml::Value = std::fs::read_to_string(&lock_path)
            .with_context(|| format!("cannot read {}", lock_path.display()))?
            .parse()
            .with_context(|| format!("{}: not TOML", lock_path.display()))?;
        Ok(CargoData {
            packages,
            checksums: lock_checksums(&lock),
        })
    }

    fn component(
        &self,
        root: &Path,
        name: &str,
        version: &str,
        repository: &str,
    ) -> Result<Component> {
        let key = (name.to_owned(), version.to_owned());
        let p = self
            .packages
            .get(&key)
            .with_context(|| format!("cargo metadata does not list {name} {version}"))?;
        let source = p["source"].as_str();
        let manifest = PathBuf::from(p["manifest_path"].as_str().unwrap_or_default());
        let dir = manifest.parent().unwrap_or(root).to_owned();
        let license = p["license"]
            .as_str()
            .map(normalize_license)
            .unwrap_or_else(|| "NOASSERTION".into());
        let from_crates_io = source.is_some_and(is_crates_io);
        let (supplier, location, purl, info) = match source {
            _ if from_crates_io => (
                "Organization: crates.io".to_owned(),
                // The purl names the crate exactly; the registry's address is cargo's to know.
                "NOASSERTION".to_owned(),
                Some(format!("pkg:cargo/{name}@{version}")),
                format!("crate {name} {version} from crates.io, as locked in Cargo.lock"),
            ),
            None => {
                let rel = dir.strip_prefix(root).unwrap_or(&dir).display().to_string();
                let location = if repository.is_empty() {
                    "NOASSERTION".to_owned()
                } else {
                    format!("git+{repository}#{rel}")
                };
                (
                    "Organization: axion".to_owned(),
                    location,
                    None,
                    format!("{rel} in the axion repository"),
                )
            }
            Some(other) => (
                "NOASSERTION".to_owned(),
                "NOASSERTION".to_owned(),
                None,
                format!("crate {name} {version} from {other}"),
            ),
        };
        let mut texts = license_files_in(&dir, p["license_file"].as_str())?;
        if texts.is_empty() && source.is_none() {
            // Our own crates carry the workspace's license.
            let l = root.join("LICENSE");
            if l.is_file() {
                texts.push(("LICENSE".into(), std::fs::read(&l)?));
            }
        }
        if texts.is_empty() {
            texts = common_license_texts(&license, name)?;
        }
        Ok(Component {
            id: super::spdx_id("Crate", &format!("{name}-{version}")),
            name: name.to_owned(),
            version: version.to_owned(),
            supplier,
            download_location: location,
            license,
            sha256: self.checksums.get(&key).cloned(),
            purl,
            source_info: info,
            license_dir: format!("crates/{name}-{version}"),
            license_texts: texts,
        })
    }
}

/// A crate from the registry cargo is configured with (the workspace names no other one); its
/// address is cargo's configuration, not written here.
fn is_crates_io(source: &str) -> bool {
    source.starts_with("registry+") || source.starts_with("sparse+")
}

/// Cargo.lock's `[[package]]` checksums by `(name, version)`.
fn lock_checksums(lock: &toml::Value) -> BTreeMap<(String, String), String> {
    let mut out = BTreeMap::new();
    for p in lock
        .get("package")
        .and_then(|p| p.as_array())
        .into_iter()
        .flatten()
    {
        let field = |k: &str| p.get(k).and_then(|v| v.as_str()).map(str::to_owned);
        if let (Some(n), Some(v), Some(c)) = (field("name"), field("version"), field("checksum")) {
            out.insert((n, v), c);
        }
    }
    out
}

/// Old crates write `MIT/Apache-2.0`; SPDX says `MIT OR Apache-2.0`.
pub fn normalize_license(l: &str) -> String {
    l.split('/').map(str::trim).collect::<Vec<_>>().join(" OR ")
}

/// The license files at the top of an unpacked crate (LICENSE*, COPYING*, NOTICE*, …), plus
/// the one its `license-file` names.
fn license_files_in(dir: &Path, license_file: Option<&str>) -> Result<Vec<(String, Vec<u8>)>> {
    let mut out = BTreeMap::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Ok(Vec::new());
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let lower = name.to_ascii_lowercase();
        let is_license = ["licen", "copying", "notice", "unlicense", "copyright"]
            .iter()
            .any(|p| lower.starts_with(p));
        if is_license && e.file_type().is_ok_and(|t| t.is_file()) {
            out.insert(name, std::fs::read(e.path())?);
        }
    }
    if let Some(f) = license_file {
        let path = dir.join(f);
        let name = Path::new(f)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| f.to_owned());
        if path.is_file() && !out.contains_key(&name) {
            out.insert(name, std::fs::read(&path)?);
        }
    }
    Ok(out.into_iter().collect())
}

/// For a crate that ships no license file: the text of a license its expression allows,
/// from Debian's common-licenses, with a note saying so.
fn common_license_texts(expr: &str, name: &str) -> Result<Vec<(String, Vec<u8>)>> {
    for id in expr.split(|c: char| c.is_whitespace() || c == '(' || c == ')') {
        let debian = match id {
            "Apache-2.0" => "Apache-2.0",
            "MPL-2.0" => "MPL-2.0",
            "GPL-2.0-only" | "GPL-2.0-or-later" => "GPL-2",
            _ => continue,
        };
        let p = Path::new("/usr/share/common-licenses").join(debian);
        if let Ok(text) = std::fs::read(&p) {
            let note = format!(
                "The crate {name} ships no license file; its license is {expr}. {id} is the \
                 text of that license as Debian ships it ({}).\n",
                p.display()
            );
            return Ok(vec![
                (id.to_owned(), text),
                ("NOTE".into(), note.into_bytes()),
            ]);
        }
    }
    bail!(
        "crate {name} ({expr}) ships no license file and none of its licenses is in \
         /usr/share/common-licenses"
    )
}

/// What the Rust toolchain links into every static musl binary: the standard library, the
/// musl of rust-std (`self-contained/libc.a`) and LLVM's libunwind.
fn rust_toolchain(root: &Path) -> Result<Vec<Component>> {
    let vv = run(Command::new("rustc").current_dir(root).arg("-vV"))?;
    let field = |k: &str| {
        vv.lines()
            .find_map(|l| l.strip_prefix(k))
            .map(|v| v.trim().to_owned())
            .unwrap_or_else(|| "NOASSERTION".into())
    };
    let release = field("release:");
    let llvm = field("LLVM version:");
    let sysroot = PathBuf::from(
        run(Command::new("rustc")
            .current_dir(root)
            .args(["--print", "sysroot"]))?
        .trim(),
    );
    let lib = sysroot.join("lib/rustlib").join(TARGET).join("lib");
    let docs = sysroot.join("share/doc/rust/licenses");
    let texts = |files: &[&str]| -> Result<Vec<(String, Vec<u8>)>> {
        let mut out = Vec::new();
        for f in files {
            let p = docs.join(f);
            out.push((
                f.to_string(),
                std::fs::read(&p).with_context(|| format!("cannot read {}", p.display()))?,
            ));
        }
        Ok(out)
    };
    let libc = lib.join("self-contained/libc.a");
    let unwind = lib.join("self-contained/libunwind.a");
    let musl_version = musl_version_in(&libc).unwrap_or_else(|| "NOASSERTION".into());
    let supplier = "Organization: The Rust Project".to_owned();
    let std_location =
        format!("https://static.rust-lang.org/dist/rust-std-{release}-{TARGET}.tar.xz");
    let mut musl_texts = Vec::new();
    // musl's own notice (MIT, with its authors) as Debian ships it, beside the MIT text.
    if let Ok(t) = std::fs::read("/usr/share/doc/musl-dev/copyright") {
        musl_texts.push(("copyright".to_owned(), t));
    }
    musl_texts.extend(texts(&["MIT.txt"])?);
    Ok(vec![
        Component {
            id: super::spdx_id("Component", &format!("rust-std-{release}")),
            name: "rust-std".into(),
            version: release.clone(),
            supplier: supplier.clone(),
            download_location: std_location.clone(),
            license: "MIT OR Apache-2.0".into(),
            sha256: None,
            purl: None,
            source_info: format!("Rust's standard library for {TARGET}, installed by rustup"),
            license_dir: format!("rust-std-{release}"),
            license_texts: texts(&["MIT.txt", "Apache-2.0.txt"])?,
        },
        Component {
            id: super::spdx_id("Component", &format!("musl-{musl_version}-rust-std")),
            name: "musl".into(),
            version: musl_version.clone(),
            supplier: supplier.clone(),
            download_location: std_location.clone(),
            license: "MIT".into(),
            sha256: Some(crate::cache::sha256_file(&libc)?),
            purl: None,
            source_info: format!(
                "musl's libc.a as rust-std {release} ships it for {TARGET} \
                 (lib/self-contained/libc.a; the checksum is that file's)"
            ),
            license_dir: format!("musl-{musl_version}"),
            license_texts: musl_texts,
        },
        Component {
            id: super::spdx_id("Component", &format!("llvm-libunwind-{llvm}")),
            name: "llvm-libunwind".into(),
            version: llvm.clone(),
            supplier,
            download_location: std_location,
            license: "Apache-2.0 WITH LLVM-exception".into(),
            sha256: Some(crate::cache::sha256_file(&unwind)?),
            purl: None,
            source_info: format!(
                "LLVM's libunwind as rust-std {release} ships it for {TARGET} \
                 (lib/self-contained/libunwind.a; the checksum is that file's)"
            ),
            license_dir: format!("llvm-libunwind-{llvm}"),
            license_texts: texts(&["Apache-2.0.txt", "LLVM-exception.txt"])?,
        },
    ])
}

/// musl's version, as the string `X.Y.Z` its libc.a carries (NUL on both sides).
fn musl_version_in(libc: &Path) -> Option<String> {
    let data = std::fs::read(libc).ok()?;
    data.split(|b| *b == 0)
        .filter_map(|s| std::str::from_utf8(s).ok())
        .find(|s| {
            let parts: Vec<&str> = s.split('.').collect();
            parts.len() == 3
                && parts
                    .iter()
                    .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()))
        })
        .map(str::to_owned)
}

/// Debian's musl as musl-gcc links it: the package that owns its libc.a, that package's
/// version and the .deb's sha256 from apt's lists.
fn debian_musl() -> Result<Component> {
    let libc = musl_gcc_libc()?;
    let owner = run(Command::new("dpkg-query").arg("-S").arg(&libc))?;
    let package = owner
        .split(':')
        .next()
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .with_context(|| format!("dpkg-query -S {}: no package", libc.display()))?
        .to_owned();
    let version = run(Command::new("dpkg-query").args(["-W", "-f", "${Version}", &package]))?;
    let version = version.trim().to_owned();
    let arch = run(Command::new("dpkg").arg("--print-architecture"))?;
    let arch = arch.trim().to_owned();
    // apt knows the .deb's hash when its lists are there (CI runs apt-get update first).
    let show = Command::new("apt-cache")
        .args(["show", &format!("{package}={version}")])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let (deb_sha256, filename) = apt_fields(&show, &arch);
    let libc_sha256 = crate::cache::sha256_file(&libc)?;
    let mut info = format!(
        "Debian binary package {package} version {version} ({arch}), linked as {} \
         (sha256 {libc_sha256})",
        libc.display()
    );
    if let Some(f) = &filename {
        info.push_str(&format!("; archive file {f}"));
    }
    let copyright = Path::new("/usr/share/doc").join(&package).join("copyright");
    let texts = vec![(
        "copyright".to_owned(),
        std::fs::read(&copyright)
            .with_context(|| format!("cannot read {}", copyright.display()))?,
    )];
    Ok(Component {
        id: super::spdx_id("Component", &format!("musl-{version}-debian")),
        name: "musl".into(),
        version: version.clone(),
        supplier: "Organization: Debian".into(),
        // The mirror is whatever apt is configured to use.
        download_location: "NOASSERTION".into(),
        license: "MIT".into(),
        sha256: deb_sha256,
        purl: Some(format!("pkg:deb/debian/{package}@{version}?arch={arch}")),
        source_info: info,
        license_dir: format!("musl-{version}"),
        license_texts: texts,
    })
}

/// The libc.a musl-gcc links: in the first `-L` folder of the specs file the wrapper script
/// names (`musl-gcc -print-file-name=libc.a` answers with gcc's own, glibc's, libc.a).
fn musl_gcc_libc() -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let wrapper = std::env::split_paths(&path)
        .map(|d| d.join("musl-gcc"))
        .find(|p| p.is_file())
        .context("musl-gcc is not on PATH (Debian: apt-get install musl-tools)")?;
    let script = std::fs::read_to_string(&wrapper)
        .with_context(|| format!("cannot read {}", wrapper.display()))?;
    let specs = specs_of_wrapper(&script)
        .with_context(|| format!("{}: names no -specs file", wrapper.display()))?;
    let text = std::fs::read_to_string(&specs)
        .with_context(|| format!("cannot read {}", specs.display()))?;
    text.split_whitespace()
        .filter_map(|w| w.strip_prefix("-L"))
        .map(|d| Path::new(d).join("libc.a"))
        .find(|p| p.is_file())
        .with_context(|| format!("{}: no -L folder holds libc.a", specs.display()))
}

fn specs_of_wrapper(script: &str) -> Option<PathBuf> {
    let mut words = script.split_whitespace();
    words.find(|w| *w == "-specs")?;
    words.next().map(|w| PathBuf::from(w.trim_matches('"')))
}

/// `SHA256` and `Filename` of the stanza of `apt-cache show` for `arch`.
fn apt_fields(show: &str, arch: &str) -> (Option<String>, Option<String>) {
    for stanza in show.split("\n\n") {
        let field = |k: &str| {
            stanza
                .lines()
                .find_map(|l| l.strip_prefix(k))
                .map(|v| v.trim().to_owned())
        };
        if field("Architecture:").as_deref() == Some(arch) {
            return (field("SHA256:"), field("Filename:"));
        }
    }
    (None, None)
}

fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8(out.stdout).with_context(|| format!("{cmd:?}: output is not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tree_lines_become_unique_crates_without_the_root() {
        let text = "engine v0.1.0 (/x/packages/engine)\nanyhow v1.0.1\nserde v1.0.2\n\
                    docker-api v0.1.0 (/x/crates/docker-api)\nserde v1.0.2 (*)\n\n";
        assert_eq!(
            parse_tree(text, "engine"),
            [
                ("anyhow".to_owned(), "1.0.1".to_owned()),
                ("docker-api".into(), "0.1.0".into()),
                ("serde".into(), "1.0.2".into()),
            ]
        );
    }

    #[test]
    fn old_slash_licenses_become_spdx_expressions() {
        assert_eq!(normalize_license("MIT/Apache-2.0"), "MIT OR Apache-2.0");
        assert_eq!(normalize_license("MIT OR Apache-2.0"), "MIT OR Apache-2.0");
    }

    #[test]
    fn musl_gcc_wrapper_names_its_specs() {
        let script = "#!/bin/sh\nexec \"${REALGCC:-x86_64-linux-gnu-gcc}\" \"$@\" -specs \
                      \"/usr/lib/x86_64-linux-musl/musl-gcc.specs\"";
        assert_eq!(
            specs_of_wrapper(script),
            Some(PathBuf::from("/usr/lib/x86_64-linux-musl/musl-gcc.specs"))
        );
    }

    #[test]
    fn apt_stanza_of_the_host_architecture() {
        let show = "Package: musl-dev\nArchitecture: i386\nSHA256: aa\n\n\
                    Package: musl-dev\nArchitecture: amd64\nFilename: pool/m.deb\nSHA256: bb\n";
        assert_eq!(
            apt_fields(show, "amd64"),
            (Some("bb".into()), Some("pool/m.deb".into()))
        );
        assert_eq!(apt_fields("", "amd64"), (None, None));
    }
}
