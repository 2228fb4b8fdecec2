//! `cargo xtask bench --builds [--quick]`: what a build costs, per package and in total, with
//! an empty cache and with a warm shared build cache (remote_cache.rs), for the vsphere
//! profile. Its own section of docs/benchmarks.md.
//!
//! 1. Empty cache: `cargo xtask image --profile vsphere` end to end as a user runs it, into
//!    an empty temporary `$AXION_CACHE` that shares only the verified downloads (a fresh
//!    machine also downloads them: the kernel's 139 MB took ~4 s here) and no shared cache;
//!    packages build two at once where they can (build.rs), so each package's figure is the
//!    duration its build log recorded and the total is the wall time. `--quick` builds each
//!    other package alone and copies the kernel's entry from the default cache, showing the
//!    duration its build log recorded.
//! 2. Push: each entry pushed to a registry on 127.0.0.1 (Debian's `docker-registry`).
//! 3. Warm registry: each package into a second empty cache from the registry.
//! 4. End to end: `cargo xtask image --profile vsphere` as a user runs it (this binary, so the
//!    tool's own compile is excepted) with a fresh `$AXION_CACHE` and the warm registry, set-up
//!    checks included. Goal: 60 s.

use std::time::Instant;

use anyhow::{Context, Result};

use super::stats::{Unit, Value};
use crate::build::{self, BuildOptions};
use crate::layout::Layout;
use crate::recipe::RecipeSet;
use crate::remote_cache::Remote;

const PROFILE: &str = "vsphere";

struct PackageRow {
    name: String,
    clean: Value,
    push: Value,
    pull: Value,
}

pub fn measure(layout: &Layout, quick: bool) -> Result<()> {
    let recipes = RecipeSet::load(&layout.recipes())?;
    let profile = crate::profile::load_profile(&layout.root, PROFILE, &recipes)?;
    let names = profile.spec.profile.packages.clone();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load = load.split_whitespace().next().unwrap_or("?").to_owned();
    let registry = test_support::registry::Registry::start()
        .context("the builds bench needs a registry on 127.0.0.1")?;
    let cache_ref = format!("{}/axion/bench-cache", registry.host());
    let tmp = super::temp_cache(layout, "bench-builds-")?;
    let empty = |n: &str| -> Result<Layout> {
        let l = Layout::with_cache(layout.root.clone(), tmp.path().join(n));
        std::fs::create_dir_all(&l.cache)?;
        Ok(l)
    };
    let a = empty("a")?;
    std::os::unix::fs::symlink(layout.downloads(), a.downloads())
        .context("cannot link the downloads into the temporary cache")?;

    let planned = build::keys(layout, &recipes, &names)?;
    let mut rows = Vec::new();
    let cold = (!quick).then(|| image_cold(&a));
    for r in recipes.closure(&names)? {
        let name = r.name().to_owned();
        let key = &planned
            .iter()
            .find(|(n, _)| *n == name)
            .context("no key")?
            .1;
        let clean = if cold.is_some() {
            let log = std::fs::read_to_string(a.cache.join("logs").join(format!("{name}.log")));
            match log.ok().as_deref().and_then(super::logged_build_seconds) {
                Some(secs) => Value::one(secs),
                None => Value::na("no build log with a duration"),
            }
        } else if name == "linux" {
            kernel_from_default_cache(layout, &a, &name, key)
        } else {
            eprintln!("bench: clean build of {name}");
            let started = Instant::now();
            match build::build_packages(&a, &recipes, std::slice::from_ref(&name), &local()) {
                Ok(_) => Value::one(started.elapsed().as_secs_f64()),
                Err(e) => Value::na(format!("failed: {}", super::first_line(&format!("{e:#}")))),
            }
        };
        rows.push(PackageRow {
            name,
            clean,
            push: Value::None,
            pull: Value::None,
        });
    }
    let pusher = Remote::parse(&cache_ref, true)?;
    for row in &mut rows {
        let key = &planned
            .iter()
            .find(|(n, _)| *n == row.name)
            .context("no key")?
            .1;
        let entry = build::entry_dir(&a, &row.name, key);
        let started = Instant::now();
        row.push = match pusher.push_entry(&row.name, key, &entry) {
            Ok(_) => Value::one(started.elapsed().as_secs_f64()),
            Err(e) => Value::na(format!(
                "push failed: {}",
                super::first_line(&format!("{e:#}"))
            )),
        };
    }
    let b = empty("b")?;
    let reader = BuildOptions {
        remote: Some(Remote::parse(&cache_ref, false)?),
        ..local()
    };
    for row in &mut rows {
        let started = Instant::now();
        row.pull =
            match build::build_packages(&b, &recipes, std::slice::from_ref(&row.name), &reader) {
                Ok(_)
                    if !b
                        .cache
                        .join("logs")
                        .join(format!("{}.log", row.name))
                        .exists() =>
                {
                    Value::one(started.elapsed().as_secs_f64())
                }
                Ok(_) => Value::na("built, not pulled"),
                Err(e) => Value::na(format!("failed: {}", super::first_line(&format!("{e:#}")))),
            };
    }
    let end_to_end = image_end_to_end(&empty("c")?, &cache_ref);

    let cold = cold.unwrap_or_else(|| Value::na("--quick"));
    let text = section(&rows, &cold, &end_to_end, &load, quick);
    print!("{text}");
    super::write_docs_section(layout, "builds", &text)
}

/// Build options of a measured local build: nothing from a shared cache.
fn local() -> BuildOptions {
    BuildOptions {
        offline: true,
        remote: None,
        ..Default::default()
    }
}

/// `--quick`: the kernel's entry copied from the default cache, its figure from its log.
fn kernel_from_default_cache(layout: &Layout, into: &Layout, name: &str, key: &str) -> Value {
    let from = build::entry_dir(layout, name, key);
    let log = std::fs::read_to_string(from.join("build.log")).unwrap_or_default();
    let Some(secs) = super::logged_build_seconds(&log) else {
        return Value::na(format!(
            "--quick: {} has no build log with a duration",
            from.display()
        ));
    };
    let to = build::entry_dir(into, name, key);
    let copied = std::fs::create_dir_all(into.packages()).is_ok()
        && std::process::Command::new("cp")
            .arg("-a")
            .arg(&from)
            .arg(&to)
            .status()
            .is_ok_and(|s| s.success());
    if copied {
        Value::one(secs)
    } else {
        Value::na(format!("--quick: cannot copy {}", from.display()))
    }
}

/// `cargo xtask image --profile vsphere` with the empty cache `a` and no shared cache.
fn image_cold(a: &Layout) -> Value {
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => return Value::na(format!("no xtask binary: {e}")),
    };
    eprintln!("bench: cargo xtask image --profile {PROFILE} with an empty cache");
    let started = Instant::now();
    let run = std::process::Command::new(exe)
        .args(["image", "--profile", PROFILE, "--offline", "--out"])
        .arg(a.cache.join("out"))
        .env("AXION_CACHE", &a.cache)
        .env_remove(crate::remote_cache::settings::ENV)
        // No config file's shared cache either.
        .env("XDG_CONFIG_HOME", a.cache.join("no-config"))
        .current_dir(&a.root)
        .output();
    let secs = started.elapsed().as_secs_f64();
    match run {
        Ok(o) if o.status.success() => Value::one(secs),
        Ok(o) => Value::na(format!(
            "failed: {}",
            super::first_line(&String::from_utf8_lossy(&o.stderr))
        )),
        Err(e) => Value::na(format!("cannot run xtask: {e}")),
    }
}

/// `cargo xtask image --profile vsphere` with the fresh cache `c` and the warm registry.
fn image_end_to_end(c: &Layout, cache_ref: &str) -> Value {
    let out = c.cache.join("out");
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => return Value::na(format!("no xtask binary: {e}")),
    };
    eprintln!("bench: cargo xtask image --profile {PROFILE} with a fresh cache and the registry");
    let started = Instant::now();
    let run = std::process::Command::new(exe)
        .args(["image", "--profile", PROFILE, "--cache", cache_ref, "--out"])
        .arg(&out)
        .env("AXION_CACHE", &c.cache)
        .current_dir(&c.root)
        .output();
    let secs = started.elapsed().as_secs_f64();
    match run {
        Ok(o) if o.status.success() && !c.cache.join("logs").exists() => Value::one(secs),
        Ok(o) if o.status.success() => Value::na("it compiled something (the registry lacked it)"),
        Ok(o) => Value::na(format!(
            "failed: {}",
            super::first_line(&String::from_utf8_lossy(&o.stderr))
        )),
        Err(e) => Value::na(format!("cannot run xtask: {e}")),
    }
}

fn sum(values: impl Iterator<Item = Value>) -> Value {
    let mut total = 0.0;
    for v in values {
        match v.median() {
            Some(s) => total += s,
            None => return Value::na("a package has no figure"),
        }
    }
    Value::one(total)
}

fn section(
    rows: &[PackageRow],
    cold: &Value,
    end_to_end: &Value,
    load: &str,
    quick: bool,
) -> String {
    let date = super::command_line("date", &["-u", "+%Y-%m-%d %H:%M"]).unwrap_or_default();
    let cpu = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mut t = format!(
        "{} UTC · `cargo xtask bench --builds{}` · profile {PROFILE} · {cpu} cores · load {load} \
         at start · registry: docker-registry on 127.0.0.1\n\n",
        date.trim(),
        if quick { " --quick" } else { "" },
    );
    t.push_str("| package | empty cache: build | push | warm registry, empty local cache |\n");
    t.push_str("|---|---|---|---|\n");
    for r in rows {
        t.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            r.name,
            r.clean.cell(Unit::Seconds),
            r.push.cell(Unit::Seconds),
            r.pull.cell(Unit::Seconds)
        ));
    }
    t.push_str(&format!(
        "| total | {} | {} | {} |\n\n",
        sum(rows.iter().map(|r| r.clean.clone())).cell(Unit::Seconds),
        sum(rows.iter().map(|r| r.push.clone())).cell(Unit::Seconds),
        sum(rows.iter().map(|r| r.pull.clone())).cell(Unit::Seconds)
    ));
    if quick {
        t.push_str("- `--quick`: the kernel's empty-cache figure is its cached build's log.\n");
    } else {
        t.push_str(&format!(
            "- `cargo xtask image --profile {PROFILE}`, empty `$AXION_CACHE` (downloads \
             excepted), packages building two at once, so the column's total is more than the \
             wall time (goal: 12 min): {}\n",
            cold.cell(Unit::Seconds)
        ));
    }
    t.push_str(&format!(
        "- `cargo xtask image --profile {PROFILE}`, fresh `$AXION_CACHE`, warm registry, set-up \
         checks included, the tool's own compile excepted (goal: 60 s): {}\n",
        end_to_end.cell(Unit::Seconds)
    ));
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_section_totals_each_column_and_says_what_is_missing() {
        let rows = vec![
            PackageRow {
                name: "linux".into(),
                clean: Value::one(900.0),
                push: Value::one(2.0),
                pull: Value::one(1.0),
            },
            PackageRow {
                name: "init".into(),
                clean: Value::one(60.0),
                push: Value::na("down"),
                pull: Value::one(0.5),
            },
        ];
        let s = section(&rows, &Value::one(700.0), &Value::one(30.0), "1.0", false);
        assert!(s.contains("| linux |"), "{s}");
        let total = s.lines().find(|l| l.starts_with("| total")).unwrap();
        assert!(total.contains("960"), "{total}");
        assert!(total.contains("n/a"), "{total}");
        assert!(s.contains("goal: 60 s"), "{s}");
        assert!(s.contains("goal: 12 min): 700"), "{s}");
    }
}
