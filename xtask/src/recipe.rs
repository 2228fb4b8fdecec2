//! Recipes: one TOML file per package in `recipes/`, plus the small files it names.
//!
//! ```toml
//! # recipes/busybox.toml
//! [package]
//! name = "busybox"                 # unique across recipes/
//! version = "1.35.0"
//! license = "GPL-2.0-only"         # SPDX expression, goes into the SBOM
//! license-files = ["LICENSE"]      # paths inside the unpacked source (optional)
//! summary = "Small shell and core utilities"
//! homepage = "https://busybox.net" # optional
//! depends = []                     # packages that must be built first (optional)
//!
//! [[source]]                       # zero or more; each pinned by sha256
//! file = "busybox-1.35.0.tar.bz2"  # name the source has in the cache and build dir
//! sha256 = "faeeb244…"
//! urls = ["https://…"]             # https mirrors, tried in order (optional)
//! debian-source = { package = "busybox", version = "1:1.35.0-4",
//!                   file = "busybox_1.35.0.orig.tar.bz2" }
//! debian-binary = { package = "linux-source-6.1", version = "6.1.170-3" }  # a .deb
//! path = "files/x.tar"             # a file next to the recipe (optional)
//!
//! [build]
//! kind = "make"                    # kbuild | make | cargo
//! config = "busybox/busybox.config"  # kbuild: fragment merged on `base`; make: full config
//! ```
//!
//! Kind-specific keys of `[build]`:
//! - `kbuild`: `config` (fragment, required), `base` ("tinyconfig" or "defconfig").
//! - `make`: `config` (optional, a Kconfig `.config`), `targets` (make targets, default
//!   `["all"]`), `configure` (if present, `./configure --host=x86_64-linux-musl --prefix=/usr`
//!   runs first with these extra arguments), `files` (`{ "name-in-source" = "recipe/file" }`,
//!   copied into the source tree before building, e.g. a `localoptions.h`), `make-args`
//!   (extra `VAR=value` arguments for every make call), `install` (`{ "built/file" =
//!   "/path/in/image" }`: copy these instead of running `make install`).
//! - `cargo`: `crate` (a package under packages/, defaults to the recipe name),
//!   `binaries` (bins to install, default: all), `install-dir` (default "/sbin").
//!
//! Unknown keys anywhere are errors. Every error names the file and the key.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum RecipeError {
    #[error("cannot read '{path}': {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: key '{key}': {message}")]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
    #[error("package '{name}' is defined twice: in '{first}' and in '{second}'")]
    Duplicate {
        name: String,
        first: PathBuf,
        second: PathBuf,
    },
    #[error("{path}: key 'package.depends': dependency cycle: {cycle}")]
    Cycle { path: PathBuf, cycle: String },
    #[error("no recipe named '{0}' (see `cargo xtask list`)")]
    Unknown(String),
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RecipeFile {
    pub package: PackageMeta,
    #[serde(default, rename = "source")]
    pub sources: Vec<Source>,
    pub build: Build,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct PackageMeta {
    pub name: String,
    pub version: String,
    pub license: String,
    #[serde(default)]
    pub license_files: Vec<String>,
    pub summary: String,
    #[serde(default)]
    pub homepage: Option<String>,
    #[serde(default)]
    pub depends: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Source {
    pub file: String,
    pub sha256: String,
    #[serde(default)]
    pub urls: Vec<String>,
    #[serde(default)]
    pub debian_source: Option<DebianSource>,
    #[serde(default)]
    pub debian_binary: Option<DebianBinary>,
    #[serde(default)]
    pub path: Option<String>,
}

/// A file out of a Debian source package (`apt-get source --download-only`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DebianSource {
    pub package: String,
    pub version: String,
    pub file: String,
}

/// A Debian binary package (`apt-get download`), used as the .deb itself.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DebianBinary {
    pub package: String,
    pub version: String,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Build {
    Kbuild(KbuildSpec),
    Make(MakeSpec),
    Cargo(CargoSpec),
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct KbuildSpec {
    pub config: String,
    #[serde(default = "default_kbuild_base")]
    pub base: String,
}

fn default_kbuild_base() -> String {
    "tinyconfig".into()
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct MakeSpec {
    #[serde(default)]
    pub config: Option<String>,
    #[serde(default)]
    pub targets: Vec<String>,
    #[serde(default)]
    pub configure: Option<Vec<String>>,
    #[serde(default)]
    pub files: BTreeMap<String, String>,
    #[serde(default)]
    pub make_args: Vec<String>,
    #[serde(default)]
    pub install: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct CargoSpec {
    #[serde(default, rename = "crate")]
    pub krate: Option<String>,
    #[serde(default)]
    pub binaries: Vec<String>,
    #[serde(default)]
    pub install_dir: Option<String>,
}

/// A loaded, validated recipe.
#[derive(Debug, Clone)]
pub struct Recipe {
    /// The TOML file it came from.
    pub path: PathBuf,
    /// The directory that relative file names in the recipe are resolved against.
    pub dir: PathBuf,
    pub spec: RecipeFile,
}

impl Recipe {
    pub fn name(&self) -> &str {
        &self.spec.package.name
    }

    pub fn version(&self) -> &str {
        &self.spec.package.version
    }

    /// Every file next to the recipe that the build reads (configs, local sources), resolved.
    pub fn local_files(&self) -> Vec<PathBuf> {
        let mut files = Vec::new();
        match &self.spec.build {
            Build::Kbuild(k) => files.push(self.dir.join(&k.config)),
            Build::Make(m) => {
                files.extend(m.config.iter().map(|c| self.dir.join(c)));
                files.extend(m.files.values().map(|f| self.dir.join(f)));
            }
            Build::Cargo(_) => {}
        }
        files.extend(
            self.spec
                .sources
                .iter()
                .filter_map(|s| s.path.as_ref())
                .map(|p| self.dir.join(p)),
        );
        files
    }
}

/// Parses one recipe file and checks what can be checked without the others.
pub fn load_recipe(path: &Path) -> Result<Recipe, RecipeError> {
    let text = std::fs::read_to_string(path).map_err(|source| RecipeError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse_recipe(path, &text)
}

pub fn parse_recipe(path: &Path, text: &str) -> Result<Recipe, RecipeError> {
    let spec: RecipeFile = toml::from_str(text).map_err(|e| RecipeError::Parse {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    let dir = path.parent().unwrap_or(Path::new(".")).to_owned();
    let recipe = Recipe {
        path: path.to_owned(),
        dir,
        spec,
    };
    validate_recipe(&recipe)?;
    Ok(recipe)
}

fn invalid(path: &Path, key: impl Into<String>, message: impl Into<String>) -> RecipeError {
    RecipeError::Invalid {
        path: path.to_owned(),
        key: key.into(),
        message: message.into(),
    }
}

fn validate_recipe(r: &Recipe) -> Result<(), RecipeError> {
    let p = &r.path;
    let meta = &r.spec.package;
    if !is_package_name(&meta.name) {
        return Err(invalid(
            p,
            "package.name",
            format!("'{}' must be lowercase letters, digits and '-'", meta.name),
        ));
    }
    let stem = p.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
    if stem != meta.name {
        return Err(invalid(
            p,
            "package.name",
            format!("'{}' must match the file name '{stem}.toml'", meta.name),
        ));
    }
    if meta.version.trim().is_empty() {
        return Err(invalid(p, "package.version", "must not be empty"));
    }
    if meta.license.trim().is_empty() {
        return Err(invalid(
            p,
            "package.license",
            "every package names its license (SPDX expression)",
        ));
    }
    let mut files = BTreeSet::new();
    for (i, s) in r.spec.sources.iter().enumerate() {
        let key = |k: &str| format!("source[{i}].{k}");
        if !is_sha256(&s.sha256) {
            return Err(invalid(
                p,
                key("sha256"),
                format!("'{}' is not 64 lowercase hex digits", s.sha256),
            ));
        }
        if s.file.is_empty() || s.file.contains('/') || s.file.starts_with('.') {
            return Err(invalid(
                p,
                key("file"),
                format!("'{}' must be a plain file name", s.file),
            ));
        }
        if !files.insert(&s.file) {
            return Err(invalid(
                p,
                key("file"),
                format!("'{}' is named by two sources", s.file),
            ));
        }
        for (j, u) in s.urls.iter().enumerate() {
            if !u.starts_with("https://") && !u.starts_with("http://") {
                return Err(invalid(
                    p,
                    format!("source[{i}].urls[{j}]"),
                    format!("'{u}' is not an http(s) URL"),
                ));
            }
        }
        if s.urls.is_empty()
            && s.debian_source.is_none()
            && s.debian_binary.is_none()
            && s.path.is_none()
        {
            return Err(invalid(
                p,
                format!("source[{i}]"),
                "names no place to get it from (urls, debian-source, debian-binary or path)",
            ));
        }
    }
    for f in r.local_files() {
        if !f.is_file() {
            return Err(invalid(
                p,
                local_file_key(r, &f),
                format!("file '{}' does not exist", f.display()),
            ));
        }
    }
    if let Build::Make(m) = &r.spec.build {
        for (name, to) in &m.install {
            if !to.starts_with('/')
                || to.split('/').any(|c| c == "..")
                || name.starts_with('/')
                || name.split('/').any(|c| c == "..")
            {
                return Err(invalid(
                    p,
                    format!("build.install.{name}"),
                    format!(
                        "'{name}' = '{to}': \
                         a path in the build tree and an absolute path in the image, without '..'"
                    ),
                ));
            }
        }
        for name in m.files.keys() {
            if name.starts_with('/') || name.split('/').any(|c| c == "..") {
                return Err(invalid(
                    p,
                    format!("build.files.{name}"),
                    "must be a relative path inside the source tree",
                ));
            }
        }
    }
    for d in &meta.depends {
        if d == &meta.name {
            return Err(RecipeError::Cycle {
                path: p.clone(),
                cycle: format!("{d} -> {d}"),
            });
        }
    }
    Ok(())
}

fn local_file_key(r: &Recipe, f: &Path) -> String {
    match &r.spec.build {
        Build::Kbuild(k) if r.dir.join(&k.config) == f => "build.config".into(),
        Build::Make(m) if m.config.as_ref().map(|c| r.dir.join(c)).as_deref() == Some(f) => {
            "build.config".into()
        }
        Build::Make(m) if m.files.values().any(|x| r.dir.join(x) == f) => {
            let name = m
                .files
                .iter()
                .find(|(_, x)| r.dir.join(x) == f)
                .map(|(k, _)| k.clone())
                .unwrap_or_default();
            format!("build.files.{name}")
        }
        _ => r
            .spec
            .sources
            .iter()
            .position(|s| s.path.as_ref().map(|x| r.dir.join(x)).as_deref() == Some(f))
            .map(|i| format!("source[{i}].path"))
            .unwrap_or_else(|| "build".into()),
    }
}

pub fn is_sha256(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn is_package_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
}

/// All recipes of a directory, checked together: unique names, known dependencies, no cycles.
#[derive(Debug, Clone)]
pub struct RecipeSet {
    pub recipes: BTreeMap<String, Recipe>,
}

impl RecipeSet {
    pub fn load(dir: &Path) -> Result<Self, RecipeError> {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|source| RecipeError::Read {
                path: dir.to_owned(),
                source,
            })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "toml") && p.is_file())
            .collect();
        paths.sort();
        let mut recipes: BTreeMap<String, Recipe> = BTreeMap::new();
        for path in paths {
            let r = load_recipe(&path)?;
            if let Some(first) = recipes.get(r.name()) {
                return Err(RecipeError::Duplicate {
                    name: r.name().into(),
                    first: first.path.clone(),
                    second: path,
                });
            }
            recipes.insert(r.name().to_owned(), r);
        }
        let set = RecipeSet { recipes };
        set.check_graph()?;
        Ok(set)
    }

    pub fn get(&self, name: &str) -> Result<&Recipe, RecipeError> {
        self.recipes
            .get(name)
            .ok_or_else(|| RecipeError::Unknown(name.into()))
    }

    fn check_graph(&self) -> Result<(), RecipeError> {
        for r in self.recipes.values() {
            for (i, d) in r.spec.package.depends.iter().enumerate() {
                if !self.recipes.contains_key(d) {
                    return Err(invalid(
                        &r.path,
                        format!("package.depends[{i}]"),
                        format!("no recipe named '{d}'"),
                    ));
                }
            }
        }
        // Depth-first search; the path on the stack is the cycle when we meet a grey node.
        #[derive(Clone, Copy, PartialEq)]
        enum Mark {
            White,
            Grey,
            Black,
        }
        let mut marks: BTreeMap<&str, Mark> = self
            .recipes
            .keys()
            .map(|k| (k.as_str(), Mark::White))
            .collect();
        fn visit<'a>(
            set: &'a RecipeSet,
            name: &'a str,
            marks: &mut BTreeMap<&'a str, Mark>,
            stack: &mut Vec<&'a str>,
        ) -> Result<(), RecipeError> {
            match marks[name] {
                Mark::Black => return Ok(()),
                Mark::Grey => {
                    let start = stack.iter().position(|n| *n == name).unwrap_or(0);
                    let mut cycle: Vec<&str> = stack[start..].to_vec();
                    cycle.push(name);
                    let path = set.recipes[stack[start]].path.clone();
                    return Err(RecipeError::Cycle {
                        path,
                        cycle: cycle.join(" -> "),
                    });
                }
                Mark::White => {}
            }
            marks.insert(name, Mark::Grey);
            stack.push(name);
            for d in &set.recipes[name].spec.package.depends {
                visit(set, d, marks, stack)?;
            }
            stack.pop();
            marks.insert(name, Mark::Black);
            Ok(())
        }
        let names: Vec<&str> = self.recipes.keys().map(|k| k.as_str()).collect();
        for n in names {
            visit(self, n, &mut marks, &mut Vec::new())?;
        }
        Ok(())
    }

    /// The named packages and everything they depend on, dependencies first.
    pub fn closure(&self, names: &[String]) -> Result<Vec<&Recipe>, RecipeError> {
        let mut order: Vec<&Recipe> = Vec::new();
        let mut seen = BTreeSet::new();
        fn add<'a>(
            set: &'a RecipeSet,
            name: &str,
            seen: &mut BTreeSet<String>,
            order: &mut Vec<&'a Recipe>,
        ) -> Result<(), RecipeError> {
            if !seen.insert(name.to_owned()) {
                return Ok(());
            }
            let r = set.get(name)?;
            for d in &r.spec.package.depends {
                add(set, d, seen, order)?;
            }
            order.push(r);
            Ok(())
        }
        for n in names {
            add(self, n, &mut seen, &mut order)?;
        }
        Ok(order)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[package]
name = "hello"
version = "1.0"
license = "MIT"
summary = "test"

[[source]]
file = "hello.tar.gz"
sha256 = "0000000000000000000000000000000000000000000000000000000000000000"
urls = ["https://example.invalid/hello.tar.gz"]

[build]
kind = "cargo"
"#;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn err_of(text: &str) -> String {
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), "hello.toml", text);
        load_recipe(&p).unwrap_err().to_string()
    }

    #[test]
    fn parses_a_good_recipe() {
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), "hello.toml", GOOD);
        let r = load_recipe(&p).unwrap();
        assert_eq!(r.name(), "hello");
        assert_eq!(r.spec.sources[0].urls.len(), 1);
        assert!(matches!(r.spec.build, Build::Cargo(_)));
    }

    #[test]
    fn unknown_key_names_file_and_key() {
        let e = err_of(&GOOD.replace("summary = \"test\"", "summary = \"test\"\ncolour = \"red\""));
        assert!(e.contains("hello.toml"), "{e}");
        assert!(e.contains("colour"), "{e}");
    }

    #[test]
    fn unknown_key_in_build_section_is_an_error() {
        let e = err_of(&GOOD.replace("kind = \"cargo\"", "kind = \"cargo\"\nspeed = 3"));
        assert!(e.contains("speed"), "{e}");
    }

    #[test]
    fn wrong_type_names_the_key() {
        let e = err_of(&GOOD.replace("version = \"1.0\"", "version = 1"));
        assert!(e.contains("version"), "{e}");
        assert!(e.contains("hello.toml"), "{e}");
    }

    #[test]
    fn unknown_build_kind() {
        let e = err_of(&GOOD.replace("kind = \"cargo\"", "kind = \"meson\""));
        assert!(e.contains("meson"), "{e}");
    }

    #[test]
    fn bad_sha256() {
        let e = err_of(&GOOD.replace(
            "0000000000000000000000000000000000000000000000000000000000000000",
            "abc",
        ));
        assert!(e.contains("source[0].sha256"), "{e}");
    }

    #[test]
    fn missing_required_key() {
        let e = err_of(&GOOD.replace("license = \"MIT\"\n", ""));
        assert!(e.contains("license"), "{e}");
    }

    #[test]
    fn missing_local_file_names_key_and_path() {
        let text = GOOD.replace(
            "kind = \"cargo\"",
            "kind = \"kbuild\"\nconfig = \"nope.config\"",
        );
        let e = err_of(&text);
        assert!(e.contains("build.config"), "{e}");
        assert!(e.contains("nope.config"), "{e}");
    }

    #[test]
    fn make_install_paths_must_stay_inside() {
        let e = err_of(&GOOD.replace(
            "kind = \"cargo\"",
            "kind = \"make\"\ninstall = { \"x\" = \"../etc/passwd\" }",
        ));
        assert!(e.contains("build.install.x"), "{e}");
        let e = err_of(&GOOD.replace(
            "kind = \"cargo\"",
            "kind = \"make\"\nfiles = { \"opts.h\" = \"missing.h\" }",
        ));
        assert!(
            e.contains("build.files.opts.h") && e.contains("missing.h"),
            "{e}"
        );
    }

    #[test]
    fn name_must_match_file() {
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), "other.toml", GOOD);
        let e = load_recipe(&p).unwrap_err().to_string();
        assert!(e.contains("package.name"), "{e}");
    }

    #[test]
    fn duplicate_names_across_files() {
        // Same package name in two files: only possible if one file name differs from the
        // name, which is itself rejected, so duplicates are caught by the name rule first.
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "hello.toml", GOOD);
        write(d.path(), "hello2.toml", GOOD);
        let e = RecipeSet::load(d.path()).unwrap_err().to_string();
        assert!(
            e.contains("hello2.toml") && e.contains("package.name"),
            "{e}"
        );
    }

    #[test]
    fn dependency_cycle_is_reported_with_its_path() {
        let d = tempfile::tempdir().unwrap();
        for (name, dep) in [("a", "b"), ("b", "c"), ("c", "a")] {
            let text = GOOD.replace(
                "name = \"hello\"",
                &format!("name = \"{name}\"\ndepends = [\"{dep}\"]"),
            );
            write(d.path(), &format!("{name}.toml"), &text);
        }
        let e = RecipeSet::load(d.path()).unwrap_err().to_string();
        assert!(e.contains("dependency cycle"), "{e}");
        assert!(e.contains("a -> b -> c -> a"), "{e}");
        assert!(e.contains("package.depends"), "{e}");
    }

    #[test]
    fn unknown_dependency() {
        let d = tempfile::tempdir().unwrap();
        write(
            d.path(),
            "hello.toml",
            &GOOD.replace("summary", "depends = [\"ghost\"]\nsummary"),
        );
        let e = RecipeSet::load(d.path()).unwrap_err().to_string();
        assert!(
            e.contains("package.depends[0]") && e.contains("ghost"),
            "{e}"
        );
    }

    #[test]
    fn closure_orders_dependencies_first() {
        let d = tempfile::tempdir().unwrap();
        write(
            d.path(),
            "a.toml",
            &GOOD.replace("name = \"hello\"", "name = \"a\"\ndepends = [\"b\"]"),
        );
        write(
            d.path(),
            "b.toml",
            &GOOD.replace("name = \"hello\"", "name = \"b\""),
        );
        let set = RecipeSet::load(d.path()).unwrap();
        let order: Vec<&str> = set
            .closure(&["a".into()])
            .unwrap()
            .iter()
            .map(|r| r.name())
            .collect();
        assert_eq!(order, ["b", "a"]);
    }

    #[test]
    fn repository_recipes_are_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../recipes");
        let set = RecipeSet::load(&dir).unwrap();
        assert!(set.recipes.contains_key("linux"));
        assert!(set.recipes.contains_key("busybox"));
    }
}
