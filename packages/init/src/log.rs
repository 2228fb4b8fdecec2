//! Console output. init writes its own messages and the services' output to every console
//! named by `console=` on the kernel command line (so the serial console sees them even when
//! `/dev/console` is `tty0`, which is the *last* `console=` the kernel was given). Before
//! /proc is mounted, and in unit tests, messages go to stderr.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// (device path, open file). The path is kept to reopen the device after a hangup: when a
/// session leader with the serial line as controlling tty exits (the debug shell), the
/// kernel hangs the tty up and every open file on it then fails with EIO.
static CONSOLES: Mutex<Vec<(String, File)>> = Mutex::new(Vec::new());
static DEBUG: AtomicBool = AtomicBool::new(false);

pub fn set_debug(on: bool) {
    DEBUG.store(on, Ordering::Relaxed);
}

pub fn debug_enabled() -> bool {
    DEBUG.load(Ordering::Relaxed)
}

/// Opens the console devices (`/dev/ttyS0`, `/dev/tty0`, ...). Unopenable ones are skipped;
/// if none opens, `/dev/console` is used.
pub fn open_consoles(names: &[String]) {
    let mut files = Vec::new();
    let mut seen = Vec::new();
    for name in names {
        let path = format!("/dev/{name}");
        if seen.contains(&path) {
            continue;
        }
        if let Ok(f) = open_tty(&path) {
            files.push((path.clone(), f));
            seen.push(path);
        }
    }
    if files.is_empty() {
        if let Ok(f) = open_tty("/dev/console") {
            files.push(("/dev/console".to_string(), f));
        }
    }
    if let Ok(mut c) = CONSOLES.lock() {
        *c = files;
    }
}

fn open_tty(path: &str) -> std::io::Result<File> {
    OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(path)
}

/// Writes raw bytes to every console (or stderr when none is open).
pub fn console_write(bytes: &[u8]) {
    let Ok(mut consoles) = CONSOLES.lock() else {
        return;
    };
    if consoles.is_empty() {
        let _ = std::io::stderr().write_all(bytes);
        return;
    }
    for (path, f) in consoles.iter_mut() {
        if let Err(e) = f.write_all(bytes) {
            if e.raw_os_error() == Some(libc::EIO) {
                if let Ok(new) = open_tty(path) {
                    *f = new;
                    let _ = f.write_all(bytes);
                }
            }
        }
    }
}

/// One line, terminated with CRLF-safe `\n` (the tty adds the CR).
pub fn line(s: &str) {
    let mut b = Vec::with_capacity(s.len() + 1);
    b.extend_from_slice(s.as_bytes());
    b.push(b'\n');
    console_write(&b);
}

#[macro_export]
macro_rules! info {
    ($($arg:tt)*) => { $crate::log::line(&format!("init: {}", format_args!($($arg)*))) };
}

#[macro_export]
macro_rules! warn {
    ($($arg:tt)*) => { $crate::log::line(&format!("init: WARNING: {}", format_args!($($arg)*))) };
}

#[macro_export]
macro_rules! error {
    ($($arg:tt)*) => { $crate::log::line(&format!("init: ERROR: {}", format_args!($($arg)*))) };
}

/// With `axion.debug`: verbose messages stamped with seconds since boot, for profiling.
#[macro_export]
macro_rules! debug {
    ($($arg:tt)*) => {
        if $crate::log::debug_enabled() {
            let t = $crate::sys::boottime();
            $crate::log::line(&format!(
                "init: debug: [{}.{:03}] {}",
                t.as_secs(),
                t.subsec_millis(),
                format_args!($($arg)*)
            ))
        }
    };
}
