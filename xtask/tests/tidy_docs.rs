//! Tidy checks of the documentation, as ordinary tests (in the manner of rust-analyzer's
//! `tidy.rs`): the docs' links and the repository paths they name exist, and ARCHITECTURE.md's
//! code map agrees with the workspace (read from `cargo metadata`, so it stays true as crates
//! come and go) and with the import rules it states.
//!
//! Each failure says what to change: the doc, or the code map.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace root")
        .to_path_buf()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Every Markdown file of the checkout, outside build outputs and hidden folders.
fn markdown_files(root: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, root: &Path, out: &mut Vec<PathBuf>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            if p.is_dir() {
                let rel = p.strip_prefix(root).unwrap_or(&p);
                if rel == Path::new("target") || rel == Path::new("out") {
                    continue;
                }
                walk(&p, root, out);
            } else if name.ends_with(".md") {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

/// The text of a Markdown document outside fenced code blocks, line by line (with numbers).
fn prose_lines(doc: &str) -> Vec<(usize, &str)> {
    let mut fenced = false;
    let mut out = Vec::new();
    for (i, line) in doc.lines().enumerate() {
        let t = line.trim_start();
        if t.starts_with("```") {
            fenced = !fenced;
            continue;
        }
        // Four-space indented code, the Markdown way (not list continuations: those follow
        // a list item, and none of our docs indent code by four spaces inside one).
        if !fenced && !line.starts_with("    ") {
            out.push((i + 1, line));
        }
    }
    out
}

/// Splits a line into (inline code spans, the rest with code spans removed).
fn code_spans(line: &str) -> (Vec<&str>, String) {
    let mut spans = Vec::new();
    let mut rest = String::new();
    let mut s = line;
    while let Some(i) = s.find('`') {
        rest.push_str(&s[..i]);
        let after = &s[i + 1..];
        match after.find('`') {
            Some(j) => {
                spans.push(&after[..j]);
                s = &after[j + 1..];
            }
            None => {
                rest.push_str(&s[i..]);
                s = "";
            }
        }
    }
    rest.push_str(s);
    (spans, rest)
}

/// Inline link destinations `[text](dest)` of a line (code spans removed).
fn link_targets(line: &str) -> Vec<String> {
    let (_, text) = code_spans(line);
    let mut out = Vec::new();
    let mut s = text.as_str();
    while let Some(i) = s.find("](") {
        let after = &s[i + 2..];
        let Some(j) = after.find(')') else { break };
        let dest = after[..j].split_whitespace().next().unwrap_or("");
        out.push(dest.to_owned());
        s = &after[j + 1..];
    }
    out
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces as dashes.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

fn anchors(doc: &str) -> BTreeSet<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut out = BTreeSet::new();
    for (_, line) in prose_lines(doc) {
        let Some(h) = line.strip_prefix('#') else {
            continue;
        };
        let h = h.trim_start_matches('#');
        if !h.starts_with(' ') {
            continue;
        }
        let s = slug(h);
        let n = seen.entry(s.clone()).or_insert(0);
        out.insert(if *n == 0 {
            s.clone()
        } else {
            format!("{s}-{n}")
        });
        *n += 1;
    }
    out
}

#[test]
fn markdown_links_resolve() {
    let root = root();
    let mut bad = Vec::new();
    let files = markdown_files(&root);
    assert!(
        files.iter().any(|f| f.ends_with("README.md")),
        "no README.md found under {}",
        root.display()
    );
    for file in &files {
        let doc = read(file);
        let rel = file
            .strip_prefix(&root)
            .unwrap_or(file)
            .display()
            .to_string();
        for (n, line) in prose_lines(&doc) {
            for dest in link_targets(line) {
                if dest.is_empty()
                    || dest.starts_with("http://")
                    || dest.starts_with("https://")
                    || dest.starts_with("mailto:")
                {
                    continue;
                }
                let (path, anchor) = match dest.split_once('#') {
                    Some((p, a)) => (p, Some(a)),
                    None => (dest.as_str(), None),
                };
                let target = if path.is_empty() {
                    file.clone()
                } else {
                    file.parent().unwrap_or(&root).join(path)
                };
                if !target.exists() {
                    bad.push(format!(
                        "{rel}:{n}: link to {dest}: {} does not exist",
                        target.display()
                    ));
                    continue;
                }
                if let Some(a) = anchor {
                    if target.extension().is_some_and(|e| e == "md")
                        && !anchors(&read(&target)).contains(a)
                    {
                        bad.push(format!("{rel}:{n}: link to {dest}: no heading #{a} there"));
                    }
                }
            }
        }
    }
    assert!(
        bad.is_empty(),
        "broken links in the docs:\n{}",
        bad.join("\n")
    );
}

/// Folders of the checkout whose files the docs name in code spans (`host/vmd/src/lib.rs`).
const TOP_DIRS: &[&str] = &[
    "packages/",
    "host/",
    "crates/",
    "xtask/",
    "tests/",
    "recipes/",
    "image-profiles/",
    "overlays/",
    "docs/",
];

#[test]
fn files_named_in_the_docs_exist() {
    let root = root();
    let mut bad = Vec::new();
    for file in markdown_files(&root) {
        let doc = read(&file);
        let rel = file
            .strip_prefix(&root)
            .unwrap_or(&file)
            .display()
            .to_string();
        for (n, line) in prose_lines(&doc) {
            for span in code_spans(line).0 {
                // Files only (`x/y/z.rs`): a folder of another project (docker-py's
                // `tests/integration`) reads like one of ours, and the crates' folders are
                // the code map test's.
                let file_name = span.rsplit('/').next().unwrap_or("");
                let looks_like_a_path = TOP_DIRS.iter().any(|d| span.starts_with(d))
                    && file_name.contains('.')
                    && !file_name.starts_with('.')
                    && !span.contains(|c: char| c.is_whitespace() || "<>*{}$=…|:,()".contains(c))
                    && !span.contains("...");
                if looks_like_a_path && !root.join(span).exists() {
                    bad.push(format!(
                        "{rel}:{n}: `{span}` does not exist in the checkout"
                    ));
                }
            }
        }
    }
    assert!(
        bad.is_empty(),
        "the docs name files that do not exist (stale docs; a path under $AXION_CACHE or out/ \
         should say so):\n{}",
        bad.join("\n")
    );
}

/// A date in prose, `YYYY-MM-DD`: the mark of a measurement taken on a given day.
fn has_date(text: &str) -> bool {
    let b = text.as_bytes();
    b.windows(10).any(|w| {
        let d = |i: usize| w[i].is_ascii_digit();
        d(0) && d(1) && d(2) && d(3) && w[4] == b'-' && d(5) && d(6) && w[7] == b'-' && d(8) && d(9)
    })
}

#[test]
fn dated_figures_live_only_in_docs_benchmarks_md() {
    let root = root();
    let mut bad = Vec::new();
    for file in markdown_files(&root) {
        let rel = file.strip_prefix(&root).unwrap_or(&file);
        if rel == Path::new("docs/benchmarks.md") {
            continue;
        }
        let doc = read(&file);
        for (n, line) in prose_lines(&doc) {
            if has_date(&code_spans(line).1) {
                bad.push(format!("{}:{n}: {}", rel.display(), line.trim()));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "dated figures belong in docs/benchmarks.md (`cargo xtask bench` writes its own \
         there); guides say how things work:\n{}",
        bad.join("\n")
    );
}

/// What the code map says of each member: its path and kind ("guest", "host", ...).
fn code_map(architecture: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut in_map = false;
    for line in architecture.lines() {
        if let Some(h) = line.strip_prefix("## ") {
            in_map = h.trim() == "Code map";
            continue;
        }
        if !in_map {
            continue;
        }
        let Some(h) = line.strip_prefix("### `") else {
            continue;
        };
        let Some((path, rest)) = h.split_once('`') else {
            continue;
        };
        let kind = rest
            .trim()
            .trim_start_matches('—')
            .trim()
            .split(',')
            .next()
            .unwrap_or("")
            .trim()
            .to_owned();
        out.insert(path.to_owned(), kind);
    }
    out
}

/// The import rules table of ARCHITECTURE.md: kind → kinds it may import ("*": anything).
fn import_rules(architecture: &str) -> BTreeMap<String, BTreeSet<String>> {
    let phrase = |p: &str| -> String {
        match p.trim() {
            "shared libraries" => "shared library",
            "guest programs" => "guest",
            "host programs" => "host",
            "the build tool" => "build tool",
            "test fixtures" => "test fixtures",
            "tests" => "tests",
            "anything" => "*",
            other => panic!(
                "ARCHITECTURE.md's import rules name '{other}', which this test does not know: \
                 use shared libraries, guest programs, host programs, the build tool, test \
                 fixtures, tests or anything (or teach import_rules the new phrase)"
            ),
        }
        .to_owned()
    };
    let mut out = BTreeMap::new();
    let mut in_table = false;
    for line in architecture.lines() {
        if line.starts_with("| kind | may import |") {
            in_table = true;
            continue;
        }
        if !in_table || line.starts_with("|---") {
            continue;
        }
        let Some(row) = line.strip_prefix('|') else {
            break;
        };
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        if cells.len() < 2 {
            break;
        }
        out.insert(
            cells[0].to_owned(),
            cells[1].split(',').map(phrase).collect(),
        );
    }
    out
}

const KINDS: &[&str] = &[
    "guest",
    "host",
    "build tool",
    "shared library",
    "test fixtures",
    "tests",
];

struct Member {
    dir: String,
    /// (dependency's directory relative to the root, its kind: "normal", "dev" or "build")
    path_deps: Vec<(String, String)>,
}

/// The workspace members from `cargo metadata`, by directory relative to the root.
fn members(root: &Path) -> BTreeMap<String, Member> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(&cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
            "--manifest-path",
        ])
        .arg(root.join("Cargo.toml"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cargo} metadata: {e}"));
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON");
    let ws_root = PathBuf::from(meta["workspace_root"].as_str().expect("workspace_root"));
    let rel = |p: &Path| -> String {
        p.strip_prefix(&ws_root)
            .unwrap_or(p)
            .to_string_lossy()
            .replace('\\', "/")
    };
    let mut members = BTreeMap::new();
    for pkg in meta["packages"].as_array().expect("packages") {
        let manifest = PathBuf::from(pkg["manifest_path"].as_str().expect("manifest_path"));
        let dir = rel(manifest.parent().expect("a manifest has a folder"));
        let path_deps = pkg["dependencies"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|d| {
                let path = d["path"].as_str()?;
                let kind = d["kind"].as_str().unwrap_or("normal").to_owned();
                Some((rel(Path::new(path)), kind))
            })
            .collect();
        members.insert(dir.clone(), Member { dir, path_deps });
    }
    members
}

#[test]
fn code_map_lists_every_workspace_member_and_nothing_else() {
    let root = root();
    let map = code_map(&read(&root.join("ARCHITECTURE.md")));
    assert!(
        !map.is_empty(),
        "ARCHITECTURE.md has no '## Code map' with '### `PATH` — KIND' entries"
    );
    let members = members(&root);
    let mut bad = Vec::new();
    for dir in members.keys() {
        match map.get(dir) {
            None => bad.push(format!(
                "workspace member {dir} is missing from ARCHITECTURE.md's code map: add a \
                 '### `{dir}` — KIND' entry saying where it runs and what it is"
            )),
            Some(kind) if !KINDS.contains(&kind.as_str()) => bad.push(format!(
                "code map entry {dir}: kind '{kind}' is none of {KINDS:?}"
            )),
            Some(_) => {}
        }
    }
    for dir in map.keys() {
        if !members.contains_key(dir) {
            bad.push(format!(
                "ARCHITECTURE.md's code map lists {dir}, which is not a workspace member \
                 (cargo metadata): remove the entry or add the crate"
            ));
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

#[test]
fn path_dependencies_follow_the_import_rules() {
    let root = root();
    let arch = read(&root.join("ARCHITECTURE.md"));
    let map = code_map(&arch);
    let rules = import_rules(&arch);
    for k in KINDS {
        assert!(
            rules.contains_key(*k),
            "ARCHITECTURE.md's import rules table has no row for '{k}'"
        );
    }
    let mut bad = Vec::new();
    for m in members(&root).values() {
        // Unlisted members are the other test's to report.
        let Some(kind) = map.get(&m.dir) else {
            continue;
        };
        let Some(allowed) = rules.get(kind) else {
            continue;
        };
        for (dep, dep_kind_of_use) in &m.path_deps {
            let Some(dep_kind) = map.get(dep) else {
                continue;
            };
            let ok = allowed.contains("*")
                || allowed.contains(dep_kind)
                || (dep_kind_of_use == "dev" && dep_kind == "test fixtures");
            if !ok {
                bad.push(format!(
                    "{} ({kind}) depends on {dep} ({dep_kind}, {dep_kind_of_use}): ARCHITECTURE.md \
                     says a {kind} may import only {allowed:?} (and test fixtures as a \
                     dev-dependency)",
                    m.dir
                ));
            }
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

#[test]
fn the_parsers_of_this_file_read_what_they_should() {
    assert_eq!(
        slug("One VM per container (axion-vmd)"),
        "one-vm-per-container-axion-vmd"
    );
    assert_eq!(slug("The `docker` API: 1.47"), "the-docker-api-147");
    let doc = "# A\n## B b\n```\n# not a heading\n```\n## B b\n";
    assert_eq!(
        anchors(doc),
        ["a", "b-b", "b-b-1"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    );
    assert_eq!(
        link_targets("see [x](docs/a.md#b) and `[y](no.md)` and [z](https://e/x)"),
        ["docs/a.md#b", "https://e/x"]
    );
    assert_eq!(code_spans("a `b` c `d/e`").0, ["b", "d/e"]);
    assert!(has_date("measured 2026-11-27 by the bench"));
    assert!(!has_date("API 1.47, port 2376, 10.0.2.15"));
    let arch = concat!(
        "## Code map\n\n| kind | may import |\n|---|---|\n| guest | shared libraries |\n",
        "| tests | anything |\n\n### `packages/init` — guest\n\ntext\n",
        "### `crates/qemu` — shared library, host and build tool\n",
        "## Invariants\n### `not/listed` — guest\n"
    );
    let map = code_map(arch);
    assert_eq!(map.len(), 2);
    assert_eq!(map["packages/init"], "guest");
    assert_eq!(map["crates/qemu"], "shared library");
    let rules = import_rules(arch);
    assert!(rules["guest"].contains("shared library"));
    assert!(rules["tests"].contains("*"));
}
