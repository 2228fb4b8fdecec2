//! `cargo xtask test`: the one gate. In order, each step only if the one before passed:
//!
//! 1. `cargo fmt --all --check` (rustfmt's defaults, width 100);
//! 2. `cargo clippy --workspace --all-targets -- -D warnings` (with `[workspace.lints]`);
//! 3. the unit tests of every crate but `axion-tests` (tidy tests included);
//! 4. unless `--unit` or a filter: the fuzz smoke run, every cargo-fuzz target for a bounded
//!    time ([`crate::fuzz::SMOKE_SECONDS`]); a crash fails the gate with its input saved;
//! 5. unless `--unit`: the end-to-end tests in tests/ that build images and boot them in QEMU,
//!    one at a time.
//!
//! libtest has no "skipped" result, so a test that cannot run here records itself with
//! `test_skip::skip` in the file named by [`test_skip::LOG_ENV`], which this runner sets. The
//! runner reads cargo's output as it comes, prints such a test's result as
//! `skipped: REASON` instead of `ok`, and ends with one line over both test runs:
//! `N passed, N failed, N skipped` (passed excludes skipped; `#[ignore]`d tests are listed
//! above it, not counted). With `CI=true` any skip fails the run unless the test is in
//! [`HOST_OPTIONAL`].

use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};
use test_skip::Record;

use crate::doctor;
use crate::layout::Layout;

/// Tests that may skip in CI, each with why. Keep it short: every entry is a test CI does
/// not run. Named `BINARY::TEST`, the binary being the test target's name.
pub const HOST_OPTIONAL: &[(&str, &str)] = &[(
    "real_qemu::choose_accel_remembers_its_verdict",
    "skips only when AXION_ACCEL is set: that pins the accelerator, so choose_accel does not \
     probe and there is nothing to remember; a CI that pins TCG on purpose is not a broken host",
)];

/// `cargo xtask test`'s options.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Only the unit tests (no kernel build, no QEMU).
    #[arg(long)]
    pub unit: bool,
    /// Extra arguments for `cargo test` (a filter, or `-- --nocapture`).
    pub args: Vec<String>,
}

pub fn main(layout: &Layout, opts: &Args) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let cargo_cmd = || {
        let mut c = Command::new(&cargo);
        c.current_dir(&layout.root);
        c
    };

    step(cargo_cmd().args(["fmt", "--all", "--check"])).context(
        "formatting differs from rustfmt's (the diff is above; `cargo fmt --all` fixes it)",
    )?;
    step(cargo_cmd().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))
    .context("clippy found problems (above)")?;

    let log = tempfile::Builder::new()
        .prefix("axion-skips-")
        .tempfile()
        .context("cannot create the skip log")?;
    let mut tally = Tally::default();

    // `--no-fail-fast`: one failing test binary must not hide how the others fare.
    let mut unit = cargo_cmd();
    unit.args([
        "test",
        "--no-fail-fast",
        "--workspace",
        "--exclude",
        "axion-tests",
    ])
    .args(&opts.args);
    let unit_ok = tally.run(unit, log.path(), &mut std::io::stdout())?;

    let mut e2e_ok = true;
    if unit_ok && !opts.unit {
        // Not with a filter: that asks for some tests only.
        if opts.args.is_empty() {
            crate::fuzz::fuzz(&layout.root, None, crate::fuzz::SMOKE_SECONDS)?;
        }
        doctor::ensure(&doctor::all_needs())?;
        let mut e2e = cargo_cmd();
        e2e.args([
            "test",
            "--no-fail-fast",
            "--package",
            "axion-tests",
            "--",
            "--test-threads=1",
        ])
        .args(&opts.args);
        e2e_ok = tally.run(e2e, log.path(), &mut std::io::stdout())?;
    }

    tally.read_log(log.path());
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    let unexcused = tally.report(ci, &mut std::io::stdout().lock())?;
    if !unit_ok {
        bail!("unit tests failed");
    }
    if !e2e_ok {
        bail!("end-to-end tests failed");
    }
    if unexcused > 0 {
        bail!(
            "{unexcused} test(s) skipped under CI=true and not host-optional \
             (xtask/src/test.rs HOST_OPTIONAL)"
        );
    }
    Ok(())
}

/// Runs one gate step with its output on the terminal.
fn step(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    eprintln!("==> {}", shown.replace('"', ""));
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {shown}"))?;
    if !status.success() {
        bail!("{} failed ({status})", shown.replace('"', ""));
    }
    Ok(())
}

/// How the tests of one `cargo xtask test` fared.
#[derive(Default, Debug)]
struct Tally {
    passed: usize,
    failed: Vec<String>,
    /// `BINARY::TEST` and the reason.
    skipped: Vec<(String, String)>,
    ignored: Vec<String>,
    /// Skip records read from the log and not yet matched to a result line.
    records: Vec<Record>,
    /// How much of the log is read.
    log_read: usize,
    /// The test binary running now: its file name and its target name.
    binary: (String, String),
    /// A `test NAME ... ` whose result had not come when the line was broken by other output.
    started: Option<String>,
}

impl Tally {
    /// Runs `cmd` (a `cargo test`) with its stdout and stderr through one pipe (so cargo's
    /// `Running` lines stay in order with the test binaries' output), passing every byte on
    /// as it comes except the result of a recorded skip, which is rewritten. True if it
    /// succeeded.
    fn run(&mut self, mut cmd: Command, log: &Path, out: &mut dyn Write) -> Result<bool> {
        let (mut reader, writer) = std::io::pipe().context("cannot make a pipe")?;
        cmd.env(test_skip::LOG_ENV, log)
            .stdout(writer.try_clone().context("cannot dup the pipe")?)
            .stderr(writer);
        eprintln!("==> {}", format!("{cmd:?}").replace('"', ""));
        let mut child = cmd.spawn().context("cannot run cargo test")?;
        // The pipe's write ends live only in the child now.
        drop(cmd);
        // Read on a thread of its own: EOF comes only when every process holding the pipe is
        // gone, and a daemon a test left behind must not keep the gate waiting.
        let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            loop {
                match reader.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) if tx.send(buf[..n].to_vec()).is_ok() => {}
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    _ => break,
                }
            }
        });
        let mut line: Vec<u8> = Vec::new();
        let mut shown = 0;
        let mut exited: Option<(std::process::ExitStatus, std::time::Instant)> = None;
        loop {
            let buf = match rx.recv_timeout(std::time::Duration::from_millis(200)) {
                Ok(chunk) => chunk,
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    if exited.is_none() {
                        let st = child.try_wait().context("cannot wait for cargo test")?;
                        exited = st.map(|st| (st, std::time::Instant::now()));
                    }
                    match exited {
                        // cargo is done; what still holds the pipe is not a test.
                        Some((_, at)) if at.elapsed() > std::time::Duration::from_secs(2) => {
                            eprintln!(
                                "note: a process the tests started still holds their output; \
                                 not waiting for it"
                            );
                            break;
                        }
                        _ => continue,
                    }
                }
            };
            let n = buf.len();
            for &b in &buf[..n] {
                line.push(b);
                if b == b'\n' {
                    let text = String::from_utf8_lossy(&line).into_owned();
                    let rewritten = self.line(text.trim_end_matches(['\n', '\r']), log);
                    match rewritten {
                        Some(new) => writeln!(out, "{}", &new[shown.min(new.len())..])?,
                        None => out.write_all(&line[shown..])?,
                    }
                    line.clear();
                    shown = 0;
                }
            }
            // Pass the unfinished line on now (progress output, `test NAME ... ` of a long
            // test), holding back only what a result may still rewrite: after " ... ".
            let hold = if self.started.is_some() {
                // The result of a test whose line other output broke: the line is reprinted
                // whole if it is rewritten.
                0
            } else if line.starts_with(b"test ") {
                find(&line, b" ... ").map(|i| i + 5).unwrap_or(0)
            } else if b"test ".starts_with(&line) {
                0
            } else {
                line.len()
            };
            if hold > shown {
                out.write_all(&line[shown..hold])?;
                shown = hold;
            }
            out.flush()?;
        }
        if !line.is_empty() {
            out.write_all(&line[shown..])?;
        }
        let status = match exited {
            Some((st, _)) => st,
            None => child.wait().context("cannot wait for cargo test")?,
        };
        Ok(status.success())
    }

    /// Takes one whole line of output; returns its replacement if it is the `ok` of a test
    /// that recorded a skip.
    fn line(&mut self, line: &str, log: &Path) -> Option<String> {
        let trimmed = line.trim_start();
        let running = trimmed
            .strip_prefix("Running ")
            .filter(|r| r.ends_with(')') && r.contains("deps/"));
        if let Some(rest) = running {
            // `Running unittests src/lib.rs (target/debug/deps/xtask-0123abcd)`
            let path = rest.rsplit_once('(').map_or(rest, |(_, p)| p);
            let file = Path::new(path.trim_end_matches(')'))
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default();
            let target = file.rsplit_once('-').map_or(&*file, |(t, _)| t).to_string();
            self.binary = (file, target);
            return None;
        }
        if let Some(krate) = trimmed.strip_prefix("Doc-tests ") {
            self.binary = (String::new(), format!("{krate} (doc)"));
            return None;
        }
        let (name, result) = match line
            .strip_prefix("test ")
            .and_then(|r| r.split_once(" ... "))
        {
            Some((name, result)) if is_result(result) => (name.to_string(), result),
            // `test NAME ... ` and then the test's own output, or nothing yet: the result
            // comes on a line of its own.
            Some((name, _)) => {
                self.started = Some(name.to_string());
                return None;
            }
            None => match self.started.take() {
                Some(name) if is_result(line) => (name, line),
                other => {
                    self.started = other;
                    return None;
                }
            },
        };
        self.started = None;
        let full = format!("{}::{name}", self.binary.1);
        if result == "ok" {
            let reasons = self.take_records(&name, log);
            if reasons.is_empty() {
                self.passed += 1;
                return None;
            }
            let reason = reasons.join("; ");
            self.skipped.push((full, reason.clone()));
            return Some(format!("test {name} ... skipped: {reason}"));
        }
        if result.starts_with("FAILED") {
            self.take_records(&name, log);
            self.failed.push(full);
        } else if result.starts_with("ignored") {
            self.ignored.push(full);
        }
        None
    }

    /// Reads whatever the skip log gained into the pending records.
    fn read_log(&mut self, log: &Path) {
        let Ok(text) = std::fs::read(log) else {
            return;
        };
        if text.len() > self.log_read {
            let new = String::from_utf8_lossy(&text[self.log_read..]);
            // Only whole lines: a record being written is taken next time.
            if let Some(end) = new.rfind('\n') {
                self.records
                    .extend(new[..=end].lines().filter_map(Record::parse));
                self.log_read += end + 1;
            }
        }
    }

    /// The reasons recorded for test `name` of the running binary, removed from the pending
    /// records.
    fn take_records(&mut self, name: &str, log: &Path) -> Vec<String> {
        self.read_log(log);
        let mut reasons = Vec::new();
        self.records.retain(|r| {
            let mine = r.test == name && (r.binary.is_empty() || r.binary == self.binary.0);
            if mine {
                reasons.push(r.reason.clone());
            }
            !mine
        });
        reasons
    }

    /// The closing report: ignored and skipped tests, then the summary line last. Returns how
    /// many skips CI does not excuse (0 unless `ci`).
    fn report(&self, ci: bool, out: &mut impl Write) -> Result<usize> {
        writeln!(out)?;
        for name in &self.ignored {
            writeln!(out, "ignored (#[ignore], not counted): {name}")?;
        }
        for name in &self.failed {
            writeln!(out, "FAILED: {name}")?;
        }
        let mut unexcused = 0;
        // Records no result line claimed (a skip from a thread not named after its test)
        // count as well: something did not run.
        let stray = self.records.iter().map(|r| {
            let target = r.binary.rsplit_once('-').map_or(&*r.binary, |(t, _)| t);
            (format!("{target}::{}", r.test), r.reason.clone())
        });
        let skipped: Vec<(String, String)> = self.skipped.iter().cloned().chain(stray).collect();
        for (name, reason) in &skipped {
            let optional = HOST_OPTIONAL.iter().any(|(n, _)| n == name);
            let mark = if !ci || optional {
                if optional {
                    " (host-optional)"
                } else {
                    ""
                }
            } else {
                unexcused += 1;
                " (not allowed under CI=true)"
            };
            writeln!(out, "skipped: {name}: {reason}{mark}")?;
        }
        writeln!(
            out,
            "{} passed, {} failed, {} skipped",
            self.passed,
            self.failed.len(),
            skipped.len()
        )?;
        Ok(unexcused)
    }
}

/// A libtest result word, as it ends a `test NAME ... ` line.
fn is_result(s: &str) -> bool {
    s == "ok" || s.starts_with("FAILED") || s.starts_with("ignored")
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `lines` as cargo's output with `log` as the skip log; the rewritten output.
    fn feed(tally: &mut Tally, lines: &[&str], log: &Path) -> Vec<String> {
        lines
            .iter()
            .map(|l| tally.line(l, log).unwrap_or_else(|| l.to_string()))
            .collect()
    }

    #[test]
    fn skips_are_rewritten_counted_and_kept_apart_per_binary() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("skips");
        let rec = |binary: &str, test: &str, reason: &str| {
            Record {
                binary: binary.into(),
                test: test.into(),
                reason: reason.into(),
            }
            .to_line()
        };
        std::fs::write(
            &log,
            rec("xtask-aa11", "image::tests::esp", "mtools is not installed")
                + &rec("xtask-aa11", "image::tests::esp", "and no fsck.vfat")
                + &rec("vmd-bb22", "same_name", "no docker"),
        )
        .unwrap();
        let mut t = Tally::default();
        let out = feed(
            &mut t,
            &[
                "     Running unittests src/lib.rs (target/debug/deps/xtask-aa11)",
                "running 3 tests",
                "test image::tests::esp ... ok",
                "test same_name ... ok",
                "test build::slow ... ignored, one kernel build",
                "     Running e2e/vmd.rs (target/debug/deps/vmd-bb22)",
                "test same_name ... ",
                "some output of a long test",
                "ok",
                "test broken ... FAILED",
                "   Doc-tests qemu",
                "test src/lib.rs - Vm (line 3) ... ok",
            ],
            &log,
        );
        assert_eq!(
            out[2],
            "test image::tests::esp ... skipped: mtools is not installed; and no fsck.vfat"
        );
        // The same name in another binary, which recorded nothing: passed.
        assert_eq!(out[3], "test same_name ... ok");
        assert_eq!(out[8], "test same_name ... skipped: no docker");
        assert_eq!(t.passed, 2);
        assert_eq!(t.failed, ["vmd::broken"]);
        assert_eq!(t.ignored, ["xtask::build::slow"]);
        assert_eq!(
            t.skipped,
            [
                (
                    "xtask::image::tests::esp".to_string(),
                    "mtools is not installed; and no fsck.vfat".to_string()
                ),
                ("vmd::same_name".to_string(), "no docker".to_string())
            ]
        );

        let mut report = Vec::new();
        assert_eq!(t.report(false, &mut report).unwrap(), 0);
        let report = String::from_utf8(report).unwrap();
        assert!(
            report.ends_with("\n2 passed, 1 failed, 2 skipped\n"),
            "{report}"
        );
        assert!(
            report.contains("skipped: vmd::same_name: no docker\n"),
            "{report}"
        );
        assert_eq!(t.report(true, &mut Vec::new()).unwrap(), 2);
    }

    #[test]
    fn host_optional_skips_pass_under_ci() {
        let (name, why) = HOST_OPTIONAL[0];
        assert!(!why.is_empty());
        let t = Tally {
            skipped: vec![(name.to_string(), "no /dev/kvm".to_string())],
            ..Default::default()
        };
        let mut report = Vec::new();
        assert_eq!(t.report(true, &mut report).unwrap(), 0);
        assert!(String::from_utf8(report)
            .unwrap()
            .contains("(host-optional)"));
    }

    /// The real pipe: a shell stands in for cargo, printing a `test ... ` prefix before the
    /// test's output and result, as libtest does with one test thread.
    #[test]
    fn run_passes_output_through_and_sees_the_result() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("skips");
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(format!(
            "echo '     Running e2e/x.rs (target/debug/deps/x-1)' >&2; \
             printf 'test a ... '; sleep 0.1; printf 'x-1\\ta\\tno tool\\n' >> {log}; \
             echo ok; echo 'test b ... ok'; \
             printf 'test c ... '; echo 'output of c'; printf 'x-1\\tc\\tno disk\\n' >> {log}; \
             echo ok; exit 3",
            log = log.display()
        ));
        let mut t = Tally::default();
        let mut out = Vec::new();
        assert!(!t.run(cmd, &log, &mut out).unwrap());
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "     Running e2e/x.rs (target/debug/deps/x-1)\ntest a ... skipped: no tool\n\
             test b ... ok\ntest c ... output of c\ntest c ... skipped: no disk\n"
        );
        assert_eq!(t.passed, 1);
        assert_eq!(
            t.skipped,
            [
                ("x::a".to_string(), "no tool".to_string()),
                ("x::c".to_string(), "no disk".to_string())
            ]
        );
    }

    /// A daemon a test left running holds the pipe open: the gate goes on once cargo exits.
    #[test]
    fn run_does_not_wait_for_processes_left_behind() {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg("echo 'test a ... ok'; sleep 30 & exit 0");
        let mut t = Tally::default();
        let started = std::time::Instant::now();
        let mut out = Vec::new();
        assert!(t.run(cmd, &dir.path().join("skips"), &mut out).unwrap());
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
        assert_eq!(String::from_utf8(out).unwrap(), "test a ... ok\n");
        assert_eq!(t.passed, 1);
    }
}
