//! The part of the workspace's Cargo.lock and Cargo.toml that one guest crate's build reads.
//!
//! Hashing the whole Cargo.lock made every dependency change anywhere in the workspace (a
//! test-only crate for the host, say) a new key for the engine, init and the update agent, and
//! so a rebuild of each, although `cargo build --locked -p CRATE` compiles only the crate's own
//! dependency graph and resolves its features among those packages alone. The key takes the
//! lock entries that graph reaches instead: from the crate, through the lock's `dependencies`,
//! where a workspace crate's entry is narrowed to its normal and build dependencies (the lock
//! lists its dev-dependencies too, which a release build of a dependent never compiles). A
//! superset is safe (an extra entry only costs a rebuild); a missing entry would not be.
//! Of the workspace Cargo.toml, everything but its member list and the
//! `[workspace.dependencies]` entries the graph does not use.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context, Result};

/// One `[[package]]` of Cargo.lock.
#[derive(Debug, Clone, serde::Deserialize)]
struct Locked {
    name: String,
    version: String,
    #[serde(default)]
    source: Option<String>,
    #[serde(default)]
    checksum: Option<String>,
    #[serde(default)]
    dependencies: Vec<String>,
}

#[derive(serde::Deserialize)]
struct LockFile {
    #[serde(default)]
    package: Vec<Locked>,
}

/// The lock entries reachable from `root` (a package name), one canonical line each:
/// `name version source checksum -> dep, dep`. `workspace_deps` gives, for each workspace
/// crate of the graph, the dependency names of its manifest that are not dev-only; a
/// workspace crate not in it keeps every dependency the lock lists.
pub fn closure(
    lock_text: &str,
    root: &str,
    workspace_deps: &BTreeMap<String, BTreeSet<String>>,
) -> Result<String> {
    let lock: LockFile = toml::from_str(lock_text).context("cannot parse Cargo.lock")?;
    let mut by_name: BTreeMap<&str, Vec<&Locked>> = BTreeMap::new();
    for p in &lock.package {
        by_name.entry(&p.name).or_default().push(p);
    }
    let find = |spec: &str| -> Option<&Locked> {
        let mut words = spec.split_whitespace();
        let name = words.next()?;
        let version = words.next();
        let candidates = by_name.get(name)?;
        match version {
            Some(v) => candidates.iter().copied().find(|p| p.version == v),
            None => candidates.first().copied(),
        }
    };
    let mut seen: BTreeMap<(String, String), String> = BTreeMap::new();
    let mut todo: Vec<&Locked> = by_name
        .get(root)
        .map(|v| v.iter().copied().filter(|p| p.source.is_none()).collect())
        .unwrap_or_default();
    anyhow::ensure!(
        !todo.is_empty(),
        "Cargo.lock has no workspace package '{root}'"
    );
    while let Some(p) = todo.pop() {
        let id = (p.name.clone(), p.version.clone());
        if seen.contains_key(&id) {
            continue;
        }
        let allowed = p
            .source
            .is_none()
            .then(|| workspace_deps.get(&p.name))
            .flatten();
        let deps: Vec<&String> = p
            .dependencies
            .iter()
            .filter(|d| {
                let name = d.split_whitespace().next().unwrap_or_default();
                allowed.is_none_or(|a| a.contains(name))
            })
            .collect();
        for d in &deps {
            let dep = find(d)
                .with_context(|| format!("Cargo.lock: '{}' needs '{d}', not locked", p.name))?;
            todo.push(dep);
        }
        let line = format!(
            "{} {} {} {} -> {}",
            p.name,
            p.version,
            p.source.as_deref().unwrap_or("workspace"),
            p.checksum.as_deref().unwrap_or("-"),
            deps.iter()
                .map(|d| d.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        seen.insert(id, line);
    }
    let mut out = String::new();
    for line in seen.values() {
        out.push_str(line);
        out.push('\n');
    }
    Ok(out)
}

/// The package names a closure's lines name (for [`workspace_manifest`]).
pub fn names(closure: &str) -> BTreeSet<String> {
    closure
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// The workspace Cargo.toml without `workspace.members`, `workspace.exclude` and the
/// `[workspace.dependencies]` entries whose package is not in `used`, as canonical text
/// (keys sorted at every level).
pub fn workspace_manifest(text: &str, used: &BTreeSet<String>) -> Result<String> {
    let mut doc: toml::Table = toml::from_str(text).context("cannot parse Cargo.toml")?;
    if let Some(ws) = doc.get_mut("workspace").and_then(|w| w.as_table_mut()) {
        ws.remove("members");
        ws.remove("exclude");
        if let Some(deps) = ws.get_mut("dependencies").and_then(|d| d.as_table_mut()) {
            deps.retain(|name, v| {
                let real = v.get("package").and_then(|p| p.as_str()).unwrap_or(name);
                used.contains(real)
            });
        }
    }
    let mut out = String::new();
    canonical(&toml::Value::Table(doc), &mut out);
    Ok(out)
}

fn canonical(v: &toml::Value, out: &mut String) {
    match v {
        toml::Value::Table(t) => {
            let sorted: BTreeMap<&String, &toml::Value> = t.iter().collect();
            out.push('{');
            for (k, v) in sorted {
                out.push_str(&format!("{k:?}="));
                canonical(v, out);
                out.push(',');
            }
            out.push('}');
        }
        toml::Value::Array(a) => {
            out.push('[');
            for v in a {
                canonical(v, out);
                out.push(',');
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCK: &str = r#"
version = 4

[[package]]
name = "app"
version = "0.1.0"
dependencies = ["lib", "serde", "testkit"]

[[package]]
name = "lib"
version = "0.1.0"
dependencies = ["rand 0.8.5"]

[[package]]
name = "testkit"
version = "0.1.0"
dependencies = ["grpc"]

[[package]]
name = "grpc"
version = "1.0.0"
source = "registry+https://example.invalid/index"
checksum = "aa"

[[package]]
name = "serde"
version = "1.0.0"
source = "registry+https://example.invalid/index"
checksum = "bb"

[[package]]
name = "rand"
version = "0.8.5"
source = "registry+https://example.invalid/index"
checksum = "cc"

[[package]]
name = "rand"
version = "0.9.0"
source = "registry+https://example.invalid/index"
checksum = "dd"

[[package]]
name = "unrelated"
version = "0.1.0"
dependencies = ["rand 0.9.0"]
"#;

    fn ws(deps: &[(&str, &[&str])]) -> BTreeMap<String, BTreeSet<String>> {
        deps.iter()
            .map(|(n, d)| (n.to_string(), d.iter().map(|s| s.to_string()).collect()))
            .collect()
    }

    #[test]
    fn the_closure_leaves_out_dev_only_and_unrelated_packages() {
        // testkit is a dev-dependency of app: its manifest's normal deps are lib and serde.
        let c = closure(LOCK, "app", &ws(&[("app", &["lib", "serde"])])).unwrap();
        let names = names(&c);
        assert_eq!(
            names,
            ["app", "lib", "rand", "serde"]
                .map(String::from)
                .into_iter()
                .collect()
        );
        assert!(
            c.contains("rand 0.8.5 registry+https://example.invalid/index cc"),
            "{c}"
        );
        assert!(!c.contains("0.9.0"), "{c}");
        // Without the manifest's narrowing, the lock's whole list is followed.
        let all = closure(LOCK, "app", &BTreeMap::new()).unwrap();
        assert!(super::names(&all).contains("grpc"));
    }

    #[test]
    fn a_change_outside_the_closure_keeps_it_and_one_inside_changes_it() {
        let w = ws(&[("app", &["lib", "serde"])]);
        let before = closure(LOCK, "app", &w).unwrap();
        let outside = LOCK.replace("checksum = \"aa\"", "checksum = \"a2\"");
        assert_eq!(closure(&outside, "app", &w).unwrap(), before);
        let inside = LOCK.replace("checksum = \"cc\"", "checksum = \"c2\"");
        assert_ne!(closure(&inside, "app", &w).unwrap(), before);
    }

    #[test]
    fn a_dependency_missing_from_the_lock_is_an_error() {
        let broken = LOCK.replace(
            "dependencies = [\"rand 0.8.5\"]",
            "dependencies = [\"nope\"]",
        );
        let e = closure(&broken, "app", &BTreeMap::new()).unwrap_err();
        assert!(format!("{e:#}").contains("nope"), "{e:#}");
        assert!(closure(LOCK, "absent", &BTreeMap::new()).is_err());
    }

    #[test]
    fn the_workspace_manifest_keeps_what_the_build_reads() {
        let text = "[workspace]\nmembers = [\"a\", \"b\"]\nexclude = [\"fuzz\"]\n\
                    [workspace.dependencies]\nserde = \"1\"\ngrpc = \"1\"\n\
                    myrand = { package = \"rand\", version = \"0.8\" }\n\
                    [profile.release]\nlto = true\n";
        let used: BTreeSet<String> = ["serde", "rand"].map(String::from).into_iter().collect();
        let a = workspace_manifest(text, &used).unwrap();
        assert!(
            a.contains("\"serde\"") && a.contains("\"myrand\"") && a.contains("lto"),
            "{a}"
        );
        assert!(
            !a.contains("grpc") && !a.contains("members") && !a.contains("fuzz"),
            "{a}"
        );
        let more_members = text.replace("\"a\", \"b\"", "\"a\", \"b\", \"c\"");
        assert_eq!(workspace_manifest(&more_members, &used).unwrap(), a);
        let reordered = "[profile.release]\nlto = true\n[workspace.dependencies]\nserde = \"1\"\n\
                         myrand = { version = \"0.8\", package = \"rand\" }\n";
        assert_eq!(workspace_manifest(reordered, &used).unwrap(), a);
        let other_profile = text.replace("lto = true", "lto = false");
        assert_ne!(workspace_manifest(&other_profile, &used).unwrap(), a);
    }
}
