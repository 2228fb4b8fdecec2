//! The house rules as tests, in the manner of rust-analyzer's `tidy.rs`: each reads the
//! repository's files and names every place that breaks a rule. `cargo xtask test` runs them
//! with the other unit tests.

use std::path::{Path, PathBuf};

/// Lines may be this long (rustfmt's default width, which the tree is formatted with).
const MAX_COLUMNS: usize = 100;

/// Lines allowed over [`MAX_COLUMNS`] besides URLs in comments and Markdown table rows in doc
/// comments (a row cannot be wrapped): (file, a piece of the line, why).
const LONG_LINES_ALLOWED: &[(&str, &str, &str)] = &[
    (
        "xtask/src/image/ova.rs",
        "<Envelope xmlns=",
        "the OVF descriptor is written byte for byte from this template: wrapping its XML \
         would change every OVA",
    ),
    (
        "xtask/src/image/ova.rs",
        "<Disk ovf:capacity=",
        "the OVF descriptor's XML, as above",
    ),
    (
        "xtask/src/image/ova.rs",
        "<vmw:Config ovf:required=\"false\" vmw:key=\"bootOptions.efiSecureBootEnabled\"",
        "the OVF descriptor's XML, as above",
    ),
];

/// The strings of the host↔guest contract of axion-vmd (crates/vmd-contract): the
/// virtio-serial port names, the agent's mode argument, the 9p tag and mount point, the trace
/// variable. Host and guest must both take them from there.
const CONTRACT: &[&str] = &[
    "axion.vmd",
    "axion.engine",
    "__vmd-agent",
    "axion.store",
    "/run/axion-store",
    "AXION_ENGINE_TRACE",
];
const CONTRACT_FILE: &str = "crates/vmd-contract/src/lib.rs";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Every `.rs` file of the repository (not build outputs), as (path from the root, text).
fn rust_files() -> Vec<(String, String)> {
    let root = root();
    let mut files: Vec<(String, String)> = walkdir::WalkDir::new(&root)
        .into_iter()
        .filter_entry(|e| {
            let name = e.file_name().to_string_lossy();
            e.depth() == 0 || !(name.starts_with('.') || name == "target" || name == "out")
        })
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file() && e.path().extension().is_some_and(|x| x == "rs"))
        .map(|e| {
            let rel = e.path().strip_prefix(&root).unwrap();
            let text = std::fs::read_to_string(e.path())
                .unwrap_or_else(|err| panic!("{}: {err}", e.path().display()));
            (rel.to_string_lossy().into_owned(), text)
        })
        .collect();
    files.sort();
    assert!(files.len() > 50, "found only {} .rs files", files.len());
    files
}

fn is_comment(line: &str) -> bool {
    line.trim_start().starts_with("//")
}

/// A rule broken in these places: one line each.
fn assert_none(rule: &str, places: &[String]) {
    assert!(
        places.is_empty(),
        "{rule}: {} place(s):\n{}",
        places.len(),
        places.join("\n")
    );
}

/// Every file in tests/e2e/ is a `[[test]]` of tests/Cargo.toml (else it would never be
/// compiled or run), and every `[[test]]` names a file that is there.
#[test]
fn every_e2e_file_is_a_test_target() {
    let root = root();
    let manifest: toml::Table =
        toml::from_str(&std::fs::read_to_string(root.join("tests/Cargo.toml")).unwrap()).unwrap();
    let targets: Vec<toml::Value> = manifest
        .get("test")
        .and_then(|t| t.as_array())
        .cloned()
        .unwrap_or_default();
    let listed: Vec<String> = targets
        .iter()
        .filter_map(|t| t.get("path")?.as_str().map(str::to_string))
        .collect();
    let mut problems = Vec::new();
    for t in &targets {
        if t.get("test").and_then(|v| v.as_bool()) == Some(false) {
            problems.push(format!(
                "[[test]] {t} has test = false: `cargo test` skips it"
            ));
        }
    }
    let mut on_disk = Vec::new();
    for e in std::fs::read_dir(root.join("tests/e2e")).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        if name.ends_with(".rs") {
            let path = format!("e2e/{name}");
            if !listed.contains(&path) {
                problems.push(format!(
                    "tests/{path} has no [[test]] in tests/Cargo.toml: it is never run"
                ));
            }
            on_disk.push(path);
        }
    }
    for path in &listed {
        if !on_disk.contains(path) {
            problems.push(format!(
                "tests/Cargo.toml lists {path}, which does not exist"
            ));
        }
    }
    assert!(on_disk.len() >= 10, "only {on_disk:?} in tests/e2e");
    assert_none("end-to-end tests that do not run", &problems);
}

/// Every workspace member takes `[workspace.lints]` (`[lints] workspace = true`), so the
/// denied lints hold in a crate added later too.
#[test]
fn every_member_takes_the_workspace_lints() {
    let root = root();
    let mut members = vec![root.join("xtask"), root.join("tests")];
    for group in ["crates", "packages", "host"] {
        for e in std::fs::read_dir(root.join(group)).unwrap() {
            let dir = e.unwrap().path();
            if dir.join("Cargo.toml").exists() {
                members.push(dir);
            }
        }
    }
    let mut problems = Vec::new();
    for dir in &members {
        let manifest: toml::Table =
            toml::from_str(&std::fs::read_to_string(dir.join("Cargo.toml")).unwrap()).unwrap();
        let takes = manifest
            .get("lints")
            .and_then(|l| l.get("workspace"))
            .and_then(|w| w.as_bool());
        if takes != Some(true) {
            let rel = dir.strip_prefix(&root).unwrap().display().to_string();
            problems.push(format!(
                "{rel}/Cargo.toml has no `[lints] workspace = true`"
            ));
        }
    }
    assert!(members.len() >= 10, "only {members:?}");
    assert_none("members without the workspace lints", &problems);
}

/// Every `unsafe` block and `unsafe impl` says why it is sound: a `// SAFETY:` comment on
/// the lines just above it (clippy's `undocumented_unsafe_blocks` is denied as well; this
/// also covers code clippy does not build, e.g. another target's `cfg`).
#[test]
fn every_unsafe_has_a_safety_comment() {
    // Spelled in two pieces so that this file does not match itself.
    let block = ["unsafe", " {"].concat();
    let imp = ["unsafe", " impl "].concat();
    let mut problems = Vec::new();
    for (path, text) in rust_files() {
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            if is_comment(line) || !(line.contains(&block) || line.contains(&imp)) {
                continue;
            }
            if !has_safety_comment(&lines, i) {
                problems.push(format!("{path}:{}: {}", i + 1, line.trim()));
            }
        }
    }
    assert_none("`unsafe` without a `// SAFETY:` comment", &problems);
}

/// Looks for `SAFETY:` on line `i` or above it, through comment lines and the lines of the
/// same statement (those that do not end one: `;`, `{` or `}`), at most 12 lines up.
fn has_safety_comment(lines: &[&str], i: usize) -> bool {
    if lines[i].contains("SAFETY:") {
        return true;
    }
    for line in lines[..i].iter().rev().take(12) {
        let t = line.trim();
        if t.starts_with("//") {
            if t.contains("SAFETY:") {
                return true;
            }
            continue;
        }
        if t.is_empty() || t.ends_with(';') || t.ends_with('{') || t.ends_with('}') {
            return false;
        }
    }
    false
}

/// No line is over 100 columns: rustfmt wraps code but not strings or comments (split a
/// long string with a `\` line continuation, or `concat!` for raw strings). A comment line
/// may be longer only for a URL or a Markdown table row, which cannot be wrapped; other
/// exceptions are in [`LONG_LINES_ALLOWED`], each with why.
#[test]
fn no_line_is_over_100_columns() {
    let mut problems = Vec::new();
    for (path, text) in rust_files() {
        for (i, line) in text.lines().enumerate() {
            let columns = line.chars().count();
            let t = line.trim_start();
            let unwrappable = is_comment(line)
                && (line.contains("://") || t.starts_with("//! |") || t.starts_with("/// |"));
            let allowed = LONG_LINES_ALLOWED
                .iter()
                .any(|(file, piece, _)| *file == path && line.contains(piece));
            if columns > MAX_COLUMNS && !unwrappable && !allowed {
                problems.push(format!("{path}:{}: {columns} columns", i + 1));
            }
        }
    }
    assert_none("lines over 100 columns", &problems);
}

/// Tests that cannot run skip through `test_skip` (counted, and failed under CI), never
/// with a bare message and a `return` that libtest reports as `ok`.
#[test]
fn skips_go_through_test_skip() {
    let old = ["skip: ", "because"].concat();
    let mut problems = Vec::new();
    for (path, text) in rust_files() {
        for (i, line) in text.lines().enumerate() {
            if !is_comment(line) && line.contains(&old) {
                problems.push(format!("{path}:{}: {}", i + 1, line.trim()));
            }
        }
    }
    assert_none(
        "skips that are not counted (use test_skip::skip)",
        &problems,
    );
}

/// The strings of the vmd host↔guest contract are spelled once, in crates/vmd-contract:
/// host and guest take them from there, so neither can change one alone.
#[test]
fn vmd_contract_literals_live_in_one_file() {
    if !root().join(CONTRACT_FILE).exists() {
        test_skip::skip(format_args!(
            "{CONTRACT_FILE} is not in this tree yet (it comes with the layout change)"
        ));
        return;
    }
    let files = rust_files();
    let mut problems = Vec::new();
    for lit in CONTRACT {
        let quoted = format!("\"{lit}");
        let mut holders: Vec<&str> = files
            .iter()
            .filter(|(path, text)| {
                path != "xtask/tests/tidy.rs"
                    && text.lines().any(|l| !is_comment(l) && l.contains(&quoted))
            })
            .map(|(path, _)| path.as_str())
            .collect();
        holders.sort();
        if holders != [CONTRACT_FILE] {
            problems.push(format!("{lit:?} is spelled in {holders:?}"));
        }
    }
    assert_none(
        &format!("contract strings outside {CONTRACT_FILE} (use its constants)"),
        &problems,
    );
}
