//! Errors of the QEMU crate. Every message says what was being done and, where it helps,
//! shows the last lines of the guest's serial console and of QEMU's own output.

use std::path::PathBuf;
use std::time::Duration;

/// A QMP protocol or command failure.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("cannot connect to the QMP socket {path}: {source}")]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("QMP I/O error ({doing}): {source}")]
    Io {
        doing: String,
        source: std::io::Error,
    },
    #[error("QMP connection closed by QEMU ({doing})")]
    Closed { doing: String },
    #[error("QMP: no answer within {after:?} ({doing})")]
    Timeout { doing: String, after: Duration },
    #[error("QMP: unexpected message ({doing}): {message}")]
    Protocol { doing: String, message: String },
    #[error("QMP command '{command}' failed: {class}: {desc}")]
    Command {
        command: String,
        class: String,
        desc: String,
    },
}

/// Anything that can go wrong while configuring, starting or driving a VM.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid VM configuration: {0}")]
    Config(String),
    #[error(
        "cannot start {program}: {source} (is QEMU installed? Debian: apt-get install \
         qemu-system-x86)"
    )]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("{doing} {path}: {source}")]
    Io {
        doing: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "QEMU exited ({status}) while {waiting_for}{}",
        tails(serial_tail, qemu_output)
    )]
    Exited {
        status: String,
        waiting_for: String,
        serial_tail: Vec<String>,
        qemu_output: String,
    },
    #[error(
        "timed out after {after:.1?} while {waiting_for}{}",
        tails(serial_tail, qemu_output)
    )]
    Timeout {
        waiting_for: String,
        after: Duration,
        serial_tail: Vec<String>,
        qemu_output: String,
    },
    #[error(transparent)]
    Qmp(#[from] QmpError),
    #[error("migration ({what}) failed: {detail}")]
    Migration { what: String, detail: String },
}

fn tails(serial: &[String], qemu: &str) -> String {
    let mut s = String::new();
    if serial.is_empty() {
        s.push_str("\n  (the serial console printed nothing)");
    } else {
        s.push_str(&format!(
            "\n  last {} lines of the serial console:",
            serial.len()
        ));
        for l in serial {
            s.push_str("\n    | ");
            s.push_str(l);
        }
    }
    let qemu = qemu.trim();
    if !qemu.is_empty() {
        s.push_str("\n  QEMU said:");
        for l in qemu
            .lines()
            .rev()
            .take(10)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
        {
            s.push_str("\n    | ");
            s.push_str(l);
        }
    }
    s
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
