//! The cache key of a package build: sha256 over every input, each framed with its name and
//! length so no two different input lists hash alike.
//!
//! Inputs, in this order:
//! - `logic`: [`super::BUILD_LOGIC`] (the build steps' version and the fixed epoch);
//! - `recipe`: the recipe file's bytes;
//! - `source:<file>`: each source's pinned sha256 (the bytes were verified against it);
//! - `file:<path>`: each local file the recipe names (kernel fragment, busybox config), by
//!   its path relative to recipes/ and its bytes;
//! - `crate:<path>`: for `cargo` packages, every file of the crate and of the workspace crates
//!   it depends on by path (normal and build dependencies: a release build compiles no
//!   dev-dependency), rust-toolchain.toml and .cargo/config.toml, and of Cargo.lock and the
//!   workspace Cargo.toml only what the crate's dependency graph reads ([`lockfile`]);
//! - `dep:<name>`: each dependency's key (so a changed dependency rebuilds its dependents);
//! - `toolchain`: the versions of the compilers the kind uses (gcc, ld, make, musl, rustc, cargo).
//!
//! `inputs.txt` in the cache entry lists every input with its own sha256.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

use super::Staged;
use crate::layout::Layout;
use crate::recipe::{Build, Recipe};

mod lockfile;

#[derive(Debug, Clone)]
pub struct Key {
    pub hex: String,
    /// One line per input: `<sha256 of the input>  <input name>`.
    pub inputs: String,
}

/// Accumulates named inputs.
#[derive(Default)]
pub struct KeyBuilder {
    hasher: Sha256,
    inputs: String,
}

impl KeyBuilder {
    pub fn add(&mut self, name: &str, data: &[u8]) {
        self.hasher.update((name.len() as u64).to_le_bytes());
        self.hasher.update(name.as_bytes());
        self.hasher.update((data.len() as u64).to_le_bytes());
        self.hasher.update(data);
        self.inputs
            .push_str(&format!("{}  {name}\n", hex::encode(Sha256::digest(data))));
    }

    pub fn add_file(&mut self, name: &str, path: &Path) -> Result<()> {
        let data = std::fs::read(path)
            .with_context(|| format!("cannot read {} (an input of the build)", path.display()))?;
        self.add(name, &data);
        Ok(())
    }

    pub fn finish(self) -> Key {
        Key {
            hex: hex::encode(self.hasher.finalize()),
            inputs: self.inputs,
        }
    }
}

/// Toolchain descriptions per build kind, probed once per run.
pub struct Toolchains {
    root: PathBuf,
    cache: BTreeMap<&'static str, String>,
}

impl Toolchains {
    pub fn new(root: PathBuf) -> Self {
        Toolchains {
            root,
            cache: BTreeMap::new(),
        }
    }

    /// A fixed description, for tests.
    pub fn fixed(root: PathBuf, text: &str) -> Self {
        let cache = ["kbuild", "make", "cargo"]
            .into_iter()
            .map(|k| (k, text.to_owned()))
            .collect();
        Toolchains { root, cache }
    }

    pub fn describe(&mut self, kind: &'static str) -> Result<String> {
        if let Some(t) = self.cache.get(kind) {
            return Ok(t.clone());
        }
        let mut t = String::new();
        let first_line = |prog: &str, args: &[&str], dir: &Path| -> Result<String> {
            let out = Command::new(prog)
                .args(args)
                .current_dir(dir)
                .output()
                .with_context(|| {
                    format!(
                        "cannot run `{prog} {}` to record the toolchain version",
                        args.join(" ")
                    )
                })?;
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            if !out.status.success() {
                anyhow::bail!(
                    "`{prog} {}` failed: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            Ok(text)
        };
        let root = self.root.clone();
        match kind {
            "kbuild" => {
                for (p, a) in [
                    ("gcc", "--version"),
                    ("ld", "--version"),
                    ("make", "--version"),
                ] {
                    t.push_str(first_line(p, &[a], &root)?.lines().next().unwrap_or(""));
                    t.push('\n');
                }
            }
            "make" => {
                t.push_str(
                    first_line("musl-gcc", &["--version"], &root)?
                        .lines()
                        .next()
                        .unwrap_or(""),
                );
                t.push('\n');
                t.push_str(
                    first_line("make", &["--version"], &root)?
                        .lines()
                        .next()
                        .unwrap_or(""),
                );
                t.push('\n');
                // musl itself (libc.a) and the kernel headers C packages compile against.
                // Not `musl-gcc -print-file-name=libc.a`: gcc answers from its own search
                // path, which is glibc's; musl's library directory is in the wrapper's specs.
                let libc = musl_libc()?;
                t.push_str(&format!("musl libc.a {}\n", super::sha256_file(&libc)?));
                let headers = Path::new("/usr/include/linux/version.h");
                t.push_str(&format!("linux headers {}\n", super::sha256_file(headers)?));
            }
            "cargo" => {
                // rustup picks the toolchain from rust-toolchain.toml in the checkout.
                t.push_str(&first_line("rustc", &["-vV"], &root)?);
                t.push_str(&first_line("cargo", &["-V"], &root)?);
            }
            other => anyhow::bail!("no toolchain description for build kind '{other}'"),
        }
        self.cache.insert(kind, t.clone());
        Ok(t)
    }
}

/// musl's `libc.a` as Debian's `musl-gcc` links it: the wrapper script (found on the build
/// PATH) names its specs file, whose `-L` is musl's library directory.
fn musl_libc() -> Result<PathBuf> {
    let script = super::BUILD_PATH
        .split(':')
        .map(|d| Path::new(d).join("musl-gcc"))
        .find(|p| p.is_file())
        .context("musl-gcc is not on the build PATH (install musl-tools)")?;
    let text = std::fs::read_to_string(&script)
        .with_context(|| format!("cannot read {}", script.display()))?;
    let specs = specs_of_wrapper(&text)
        .with_context(|| format!("{}: names no -specs file", script.display()))?;
    let specs_text = std::fs::read_to_string(&specs)
        .with_context(|| format!("cannot read {}", specs.display()))?;
    let dir = libdir_of_specs(&specs_text)
        .with_context(|| format!("{}: has no -L library directory", specs.display()))?;
    Ok(dir.join("libc.a"))
}

/// The path after `-specs` in musl-gcc's wrapper script (quoted or not).
fn specs_of_wrapper(script: &str) -> Option<PathBuf> {
    let rest = &script[script.find("-specs")? + "-specs".len()..];
    let word = rest
        .trim_start_matches([' ', '='])
        .split_whitespace()
        .next()?;
    let word = word.trim_matches(['"', '\'']);
    (!word.is_empty()).then(|| PathBuf::from(word))
}

/// The first absolute `-L` directory of a gcc specs file (musl's `*link_libgcc:` line).
fn libdir_of_specs(specs: &str) -> Option<PathBuf> {
    specs
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("-L"))
        .find(|d| d.starts_with('/'))
        .map(PathBuf::from)
}

/// The key of one recipe, given its built dependencies.
pub fn compute(
    layout: &Layout,
    recipe: &Recipe,
    deps: &[Staged],
    toolchains: &mut Toolchains,
) -> Result<Key> {
    let mut k = KeyBuilder::default();
    k.add("logic", super::BUILD_LOGIC.as_bytes());
    k.add_file("recipe", &recipe.path)?;
    for s in &recipe.spec.sources {
        k.add(&format!("source:{}", s.file), s.sha256.as_bytes());
    }
    for f in recipe.local_files() {
        let rel = f.strip_prefix(&recipe.dir).unwrap_or(&f);
        k.add_file(&format!("file:{}", rel.display()), &f)?;
    }
    if let Build::Cargo(spec) = &recipe.spec.build {
        let krate = spec
            .krate
            .clone()
            .unwrap_or_else(|| recipe.name().to_owned());
        let (lock, manifest) = cargo_lock_inputs(&layout.root, &krate)?;
        for f in cargo_inputs(&layout.root, &krate)? {
            let rel = f.strip_prefix(&layout.root).unwrap_or(&f);
            let name = format!("crate:{}", rel.display());
            if f == layout.root.join("Cargo.lock") {
                k.add(&name, lock.as_bytes());
            } else if f == layout.root.join("Cargo.toml") {
                k.add(&name, manifest.as_bytes());
            } else {
                k.add_file(&name, &f)?;
            }
        }
    }
    for d in deps {
        k.add(&format!("dep:{}", d.name), d.key.as_bytes());
    }
    k.add(
        "toolchain",
        toolchains
            .describe(super::kind_name(&recipe.spec.build))?
            .as_bytes(),
    );
    Ok(k.finish())
}

/// Every file a `cargo` package's build reads from the checkout: the crate, the workspace
/// crates it reaches through path dependencies, and the workspace files that steer cargo.
pub fn cargo_inputs(root: &Path, krate: &str) -> Result<Vec<PathBuf>> {
    let dirs = crate_dirs(root, krate)?;
    let mut files = BTreeSet::new();
    for dir in &dirs {
        for e in walkdir::WalkDir::new(dir)
            .sort_by_file_name()
            .into_iter()
            .filter_entry(|e| {
                let n = e.file_name().to_string_lossy();
                e.depth() == 0 || !(n == "target" || n.starts_with('.'))
            })
        {
            let e = e.with_context(|| format!("cannot list {}", dir.display()))?;
            if e.file_type().is_file() {
                files.insert(e.into_path());
            }
        }
    }
    let root_c = root.canonicalize().unwrap_or_else(|_| root.to_owned());
    let mut out: Vec<PathBuf> = files
        .into_iter()
        .map(|f| f.strip_prefix(&root_c).map(|r| root.join(r)).unwrap_or(f))
        .collect();
    for f in [
        "Cargo.lock",
        "Cargo.toml",
        "rust-toolchain.toml",
        ".cargo/config.toml",
    ] {
        let p = root.join(f);
        if p.is_file() {
            out.push(p);
        }
    }
    Ok(out)
}

/// The directories of the crate `packages/<krate>` and of the workspace crates it reaches
/// through normal and build path dependencies.
fn crate_dirs(root: &Path, krate: &str) -> Result<BTreeSet<PathBuf>> {
    let crate_dir = root.join("packages").join(krate);
    if !crate_dir.join("Cargo.toml").is_file() {
        anyhow::bail!(
            "crate '{krate}' not found: {} has no Cargo.toml",
            crate_dir.display()
        );
    }
    let workspace_deps = workspace_path_deps(root)?;
    let mut dirs = BTreeSet::new();
    let mut todo = vec![crate_dir];
    while let Some(dir) = todo.pop() {
        let dir = dir.canonicalize().unwrap_or(dir);
        if !dirs.insert(dir.clone()) {
            continue;
        }
        todo.extend(path_deps(&dir, &workspace_deps)?);
    }
    Ok(dirs)
}

/// What a `cargo` package's key takes of Cargo.lock and of the workspace Cargo.toml: the
/// lock entries of the crate's dependency graph and the manifest's part that graph reads.
pub fn cargo_lock_inputs(root: &Path, krate: &str) -> Result<(String, String)> {
    let ws = read_toml(&root.join("Cargo.toml"))?;
    let ws_deps = ws
        .get("workspace")
        .and_then(|w| w.get("dependencies"))
        .and_then(|d| d.as_table())
        .cloned()
        .unwrap_or_default();
    let mut graph = BTreeMap::new();
    let mut root_name = None;
    for dir in crate_dirs(root, krate)? {
        let doc = read_toml(&dir.join("Cargo.toml"))?;
        let Some(name) = doc
            .get("package")
            .and_then(|p| p.get("name"))
            .and_then(|n| n.as_str())
        else {
            continue;
        };
        if dir
            == root
                .join("packages")
                .join(krate)
                .canonicalize()
                .unwrap_or_default()
        {
            root_name = Some(name.to_owned());
        }
        let mut names = BTreeSet::new();
        for table in dependency_tables(&doc) {
            for (dep, v) in table {
                let renamed = v.get("package").and_then(|p| p.as_str()).or_else(|| {
                    (v.get("workspace").and_then(|w| w.as_bool()) == Some(true))
                        .then(|| ws_deps.get(dep).and_then(|w| w.get("package")))
                        .flatten()
                        .and_then(|p| p.as_str())
                });
                names.insert(renamed.unwrap_or(dep).to_owned());
            }
        }
        graph.insert(name.to_owned(), names);
    }
    let root_name = root_name.with_context(|| format!("packages/{krate}: no [package] name"))?;
    let lock_path = root.join("Cargo.lock");
    let lock_text = std::fs::read_to_string(&lock_path)
        .with_context(|| format!("cannot read {}", lock_path.display()))?;
    let closure = lockfile::closure(&lock_text, &root_name, &graph)?;
    let manifest_path = root.join("Cargo.toml");
    let manifest_text = std::fs::read_to_string(&manifest_path)
        .with_context(|| format!("cannot read {}", manifest_path.display()))?;
    let manifest = lockfile::workspace_manifest(&manifest_text, &lockfile::names(&closure))?;
    Ok((closure, manifest))
}

fn read_toml(path: &Path) -> Result<toml::Table> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("cannot parse {}", path.display()))
}

/// A manifest's normal and build dependency tables, of every target (not dev-dependencies:
/// a release build of the crate or of a dependent never compiles them).
fn dependency_tables(doc: &toml::Table) -> Vec<&toml::Table> {
    let keys = ["dependencies", "build-dependencies"];
    let mut tables: Vec<&toml::Table> = Vec::new();
    for key in keys {
        tables.extend(doc.get(key).and_then(|t| t.as_table()));
    }
    if let Some(targets) = doc.get("target").and_then(|t| t.as_table()) {
        for t in targets.values() {
            for key in keys {
                tables.extend(t.get(key).and_then(|t| t.as_table()));
            }
        }
    }
    tables
}

/// `[workspace.dependencies]` entries that are path dependencies: name → directory.
fn workspace_path_deps(root: &Path) -> Result<BTreeMap<String, PathBuf>> {
    let path = root.join("Cargo.toml");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let doc: toml::Table =
        toml::from_str(&text).with_context(|| format!("cannot parse {}", path.display()))?;
    let mut out = BTreeMap::new();
    if let Some(deps) = doc
        .get("workspace")
        .and_then(|w| w.get("dependencies"))
        .and_then(|d| d.as_table())
    {
        for (name, v) in deps {
            if let Some(p) = v.get("path").and_then(|p| p.as_str()) {
                out.insert(name.clone(), root.join(p));
            }
        }
    }
    Ok(out)
}

/// The directories of a crate's path dependencies (normal and build, any target: what a
/// release build of the crate compiles).
fn path_deps(dir: &Path, workspace: &BTreeMap<String, PathBuf>) -> Result<Vec<PathBuf>> {
    let doc = read_toml(&dir.join("Cargo.toml"))?;
    let mut out = Vec::new();
    for table in dependency_tables(&doc) {
        for (name, v) in table {
            if let Some(p) = v.get("path").and_then(|p| p.as_str()) {
                out.push(dir.join(p));
            } else if v.get("workspace").and_then(|w| w.as_bool()) == Some(true) {
                let real = v.get("package").and_then(|p| p.as_str()).unwrap_or(name);
                out.extend(workspace.get(real).or_else(|| workspace.get(name)).cloned());
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recipe::RecipeSet;

    #[test]
    fn musl_libc_comes_from_the_wrappers_specs_not_gccs_search_path() {
        let script = "#!/bin/sh\nexec \"${REALGCC:-x86_64-linux-gnu-gcc}\" \"$@\" -specs \
                      \"/usr/lib/x86_64-linux-musl/musl-gcc.specs\"\n";
        assert_eq!(
            specs_of_wrapper(script),
            Some(PathBuf::from("/usr/lib/x86_64-linux-musl/musl-gcc.specs"))
        );
        let specs = "*link_libgcc:\n-L/usr/lib/x86_64-linux-musl -L .%s\n\n*libgcc:\n";
        assert_eq!(
            libdir_of_specs(specs),
            Some(PathBuf::from("/usr/lib/x86_64-linux-musl"))
        );
        assert_eq!(specs_of_wrapper("exec gcc \"$@\"\n"), None);
        assert_eq!(libdir_of_specs("-L .%s\n"), None);
        // On a host with Debian's musl-tools, the real one: musl's, not glibc's.
        if Path::new("/usr/lib/x86_64-linux-musl/musl-gcc.specs").is_file() {
            let libc = musl_libc().unwrap();
            assert_eq!(libc, Path::new("/usr/lib/x86_64-linux-musl/libc.a"));
            assert!(libc.is_file());
        }
    }

    const A: &str = "[package]\nname = \"a\"\nversion = \"1\"\nlicense = \"MIT\"\nsummary = \
                     \"a\"\n\n[[source]]\nfile = \"a.tar\"\nsha256 = \
                     \"1111111111111111111111111111111111111111111111111111111111111111\"\npath = \
                     \"a/a.tar\"\n\n[build]\nkind = \"make\"\nconfig = \"a/a.config\"\n";
    const B: &str = "[package]\nname = \"b\"\nversion = \"1\"\nlicense = \"MIT\"\nsummary = \
                     \"b\"\ndepends = [\"a\"]\n\n[build]\nkind = \"make\"\n";
    const C: &str = "[package]\nname = \"c\"\nversion = \"1\"\nlicense = \"MIT\"\nsummary = \
                     \"c\"\n\n[build]\nkind = \"make\"\n";

    struct Fixture {
        _dir: tempfile::TempDir,
        layout: Layout,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let r = root.join("recipes");
        std::fs::create_dir_all(r.join("a")).unwrap();
        std::fs::write(r.join("a.toml"), A).unwrap();
        std::fs::write(r.join("a/a.tar"), "tar").unwrap();
        std::fs::write(r.join("a/a.config"), "CONFIG_X=y\n").unwrap();
        std::fs::write(r.join("b.toml"), B).unwrap();
        std::fs::write(r.join("c.toml"), C).unwrap();
        let layout = Layout::with_cache(root, dir.path().join("cache"));
        Fixture { _dir: dir, layout }
    }

    /// Keys of all recipes, computed as build_packages does (dependencies' keys first).
    fn keys(layout: &Layout) -> BTreeMap<String, String> {
        let set = RecipeSet::load(&layout.recipes()).unwrap();
        let mut tc = Toolchains::fixed(layout.root.clone(), "gcc 12");
        let names: Vec<String> = set.recipes.keys().cloned().collect();
        let mut out: BTreeMap<String, String> = BTreeMap::new();
        for r in set.closure(&names).unwrap() {
            let deps: Vec<Staged> = set
                .closure(&r.spec.package.depends)
                .unwrap()
                .iter()
                .map(|d| Staged {
                    name: d.name().into(),
                    version: "1".into(),
                    key: out[d.name()].clone(),
                    tree: "t".into(),
                    manifest: "m".into(),
                })
                .collect();
            out.insert(
                r.name().into(),
                compute(layout, r, &deps, &mut tc).unwrap().hex,
            );
        }
        out
    }

    #[test]
    fn keys_are_stable() {
        let f = fixture();
        assert_eq!(keys(&f.layout), keys(&f.layout));
    }

    #[test]
    fn changing_a_recipe_changes_it_and_its_dependents_only() {
        let f = fixture();
        let before = keys(&f.layout);
        let p = f.layout.recipes().join("a.toml");
        std::fs::write(&p, A.replace("summary = \"a\"", "summary = \"a changed\"")).unwrap();
        let after = keys(&f.layout);
        assert_ne!(before["a"], after["a"]);
        assert_ne!(before["b"], after["b"], "b depends on a");
        assert_eq!(before["c"], after["c"], "c is unrelated");
    }

    #[test]
    fn changing_a_local_file_or_source_pin_changes_the_key() {
        let f = fixture();
        let before = keys(&f.layout);
        std::fs::write(f.layout.recipes().join("a/a.config"), "CONFIG_X=n\n").unwrap();
        let after_config = keys(&f.layout);
        assert_ne!(before["a"], after_config["a"]);
        assert_eq!(before["c"], after_config["c"]);
        let p = f.layout.recipes().join("a.toml");
        std::fs::write(
            &p,
            A.replace(
                "1111111111111111111111111111111111111111111111111111111111111111",
                &"2".repeat(64),
            ),
        )
        .unwrap();
        assert_ne!(after_config["a"], keys(&f.layout)["a"]);
    }

    #[test]
    fn the_toolchain_is_part_of_the_key() {
        let f = fixture();
        let set = RecipeSet::load(&f.layout.recipes()).unwrap();
        let c = set.get("c").unwrap();
        let k1 = compute(
            &f.layout,
            c,
            &[],
            &mut Toolchains::fixed(f.layout.root.clone(), "gcc 12"),
        )
        .unwrap();
        let k2 = compute(
            &f.layout,
            c,
            &[],
            &mut Toolchains::fixed(f.layout.root.clone(), "gcc 13"),
        )
        .unwrap();
        assert_ne!(k1.hex, k2.hex);
        assert!(
            k1.inputs.contains("  recipe\n") && k1.inputs.contains("  toolchain\n"),
            "{}",
            k1.inputs
        );
    }

    #[test]
    fn framing_keeps_neighbouring_inputs_apart() {
        let mut a = KeyBuilder::default();
        a.add("x", b"ab");
        a.add("y", b"c");
        let mut b = KeyBuilder::default();
        b.add("x", b"a");
        b.add("y", b"bc");
        assert_ne!(a.finish().hex, b.finish().hex);
    }

    #[test]
    fn cargo_inputs_follow_path_dependencies_and_skip_target() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        std::fs::write(
            root.join("Cargo.toml"),
            "[workspace]\nmembers=[]\n\
             [workspace.dependencies]\nshared = \
             { path = \"crates/shared\" }\n",
        )
        .unwrap();
        std::fs::write(root.join("Cargo.lock"), "").unwrap();
        for (dir, toml) in [
            (
                "packages/app",
                "[package]\nname=\"app\"\n[dependencies]\nlib1 = \
                 { path = \"../../crates/lib1\" }\nshared = { workspace = true }\n\
                 [dev-dependencies]\ntestkit = { path = \"../../crates/testkit\" }\n",
            ),
            ("crates/testkit", "[package]\nname=\"testkit\"\n"),
            ("crates/lib1", "[package]\nname=\"lib1\"\n"),
            ("crates/shared", "[package]\nname=\"shared\"\n"),
            ("crates/other", "[package]\nname=\"other\"\n"),
        ] {
            std::fs::create_dir_all(root.join(dir).join("src")).unwrap();
            std::fs::create_dir_all(root.join(dir).join("target")).unwrap();
            std::fs::write(root.join(dir).join("Cargo.toml"), toml).unwrap();
            std::fs::write(root.join(dir).join("src/lib.rs"), "").unwrap();
            std::fs::write(root.join(dir).join("target/junk"), "").unwrap();
        }
        let files: Vec<String> = cargo_inputs(root, "app")
            .unwrap()
            .iter()
            .map(|p| p.strip_prefix(root).unwrap().display().to_string())
            .collect();
        assert!(
            files.contains(&"packages/app/src/lib.rs".to_string()),
            "{files:?}"
        );
        assert!(
            files.contains(&"crates/lib1/src/lib.rs".to_string()),
            "{files:?}"
        );
        assert!(
            files.contains(&"crates/shared/Cargo.toml".to_string()),
            "{files:?}"
        );
        assert!(files.contains(&"Cargo.lock".to_string()), "{files:?}");
        assert!(
            !files
                .iter()
                .any(|f| f.contains("other") || f.contains("target") || f.contains("testkit")),
            "{files:?}"
        );
    }

    /// On this workspace: the engine's key takes its own graph of Cargo.lock (tokio) but not
    /// what only the host's crates use (xtask's XML reader), nor the dev-only crates.
    #[test]
    fn the_engines_key_reads_only_its_own_part_of_cargo_lock() {
        let layout = crate::layout::Layout::discover();
        let (lock, manifest) = cargo_lock_inputs(&layout.root, "engine").unwrap();
        let names = lockfile::names(&lock);
        assert!(
            names.contains("tokio") && names.contains("docker-api"),
            "{lock}"
        );
        for host_only in ["roxmltree", "xtask", "test-support", "tempfile"] {
            assert!(
                !names.contains(host_only),
                "{host_only} in the engine's closure"
            );
        }
        assert!(manifest.contains("profile") && !manifest.contains("members"));
    }
}
