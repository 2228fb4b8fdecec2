//! Loud, counted skips for tests that cannot run on this host (no QEMU, not root, a tool
//! missing). libtest has no "skipped" result: a test that returns early reports `ok`. So a
//! test that cannot run calls [`skip`] (or [`require!`]) before it returns; that records the
//! test and the reason, one line each, in the file named by [`LOG_ENV`]. `cargo xtask test`
//! sets it, reports such a test as `skipped: REASON` instead of `ok`, counts it apart from the
//! passed ones, and under `CI=true` fails the run unless the test is on its documented list
//! of host-optional tests.
//!
//! A test that skips only a part of itself (and asserts the rest) calls [`skip`] too and
//! carries on: it did not fully run, so it is counted as skipped, not passed.
//!
//! Run outside the runner (plain `cargo test`, no [`LOG_ENV`]), the reason goes straight to
//! stderr, past libtest's output capture, so it is seen there too.

use std::fmt::Display;
use std::io::Write;

/// The environment variable naming the append-only file skips are recorded in.
pub const LOG_ENV: &str = "AXION_SKIP_LOG";

/// One recorded skip: which test binary, which test, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The test executable's file name (`xtask-0123abcd`), as cargo prints it in its
    /// `Running ... (target/debug/deps/xtask-0123abcd)` line.
    pub binary: String,
    /// The test's name as libtest prints it (`image::tests::esp_round_trip`).
    pub test: String,
    pub reason: String,
}

impl Record {
    /// The log line, newline included: `BINARY<TAB>TEST<TAB>REASON`; tabs and newlines in the
    /// fields become spaces so a record is always one line.
    pub fn to_line(&self) -> String {
        let clean = |s: &str| s.replace(['\t', '\n', '\r'], " ");
        format!(
            "{}\t{}\t{}\n",
            clean(&self.binary),
            clean(&self.test),
            clean(&self.reason)
        )
    }

    /// Parses one log line (without or with its newline); `None` if it is not a record.
    pub fn parse(line: &str) -> Option<Record> {
        let mut f = line.trim_end_matches(['\n', '\r']).splitn(3, '\t');
        let (binary, test, reason) = (f.next()?, f.next()?, f.next()?);
        Some(Record {
            binary: binary.to_string(),
            test: test.to_string(),
            reason: reason.to_string(),
        })
    }
}

/// Records that the calling test is skipped, or skips a part of itself, because of `reason`
/// ("qemu-img is not installed"). The caller returns (or goes on without the part).
///
/// libtest runs each test on a thread named after it; that name is the test's. Skipping from
/// another thread records that thread's name instead.
pub fn skip(reason: impl Display) {
    let record = Record {
        binary: std::env::current_exe()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_default(),
        test: std::thread::current()
            .name()
            .unwrap_or("<unnamed thread>")
            .to_string(),
        reason: reason.to_string(),
    };
    let logged = std::env::var_os(LOG_ENV).is_some_and(|path| {
        // One write of one line to a file opened for appending: lines of tests running in
        // parallel do not interleave.
        std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
            .and_then(|mut f| f.write_all(record.to_line().as_bytes()))
            .is_ok()
    });
    if !logged {
        // `std::io::stderr()` directly, not `eprintln!`: libtest captures the macros' output
        // of a passing test and never shows it.
        let _ = writeln!(
            std::io::stderr(),
            "\n*** skipped: {}: {} ***",
            record.test,
            record.reason
        );
    }
}

/// Skips the calling test (records it with [`skip`] and returns from the test) unless `cond`
/// holds. The reason is a format string with its arguments.
///
/// ```no_run
/// fn needs_qemu() {
///     let have_qemu = false;
///     test_skip::require!(have_qemu, "qemu-system-x86_64 is not installed");
///     unreachable!("not reached without QEMU");
/// }
/// needs_qemu();
/// ```
#[macro_export]
macro_rules! require {
    ($cond:expr, $($why:tt)+) => {
        if !$cond {
            $crate::skip(format_args!($($why)+));
            return;
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_is_one_line_and_round_trips() {
        let r = Record {
            binary: "xtask-0123".into(),
            test: "image::tests::esp".into(),
            reason: "mtools\tis not\ninstalled".into(),
        };
        let line = r.to_line();
        assert_eq!(
            line,
            "xtask-0123\timage::tests::esp\tmtools is not installed\n"
        );
        assert_eq!(
            Record::parse(&line),
            Some(Record {
                reason: "mtools is not installed".into(),
                ..r
            })
        );
        assert_eq!(Record::parse("no tabs here"), None);
    }

    #[test]
    fn skip_appends_the_test_name_and_reason() {
        // libtest names each test's thread after the test; a thread named so stands in.
        let dir = std::env::temp_dir().join(format!("test-skip-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("skips");
        let _ = std::fs::remove_file(&log);
        // No other test of this crate reads or writes the environment.
        std::env::set_var(LOG_ENV, &log);
        std::thread::Builder::new()
            .name("some::test".into())
            .spawn(|| {
                skip("first");
                skip(format_args!("second {}", 2));
            })
            .unwrap()
            .join()
            .unwrap();
        let text = std::fs::read_to_string(&log).unwrap();
        let records: Vec<Record> = text.lines().filter_map(Record::parse).collect();
        assert_eq!(records.len(), 2, "{text}");
        assert_eq!(records[0].test, "some::test");
        assert_eq!(records[1].reason, "second 2");
        let exe = std::env::current_exe().unwrap();
        assert_eq!(
            records[0].binary,
            exe.file_name().unwrap().to_string_lossy()
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
