//! Parsing hostile input where a panic cannot end PID 1.
//!
//! First-boot settings come from outside the image (a seed volume, fw_cfg, an OVF
//! environment, the kernel command line). Their parsers are written not to panic, but PID 1
//! must not bet the machine on it: a panic in init (under `panic = "unwind"` it unwinds out
//! of `main`, under abort it aborts) ends PID 1, and the kernel panics with it. So init
//! forks, the child parses and writes the result as JSON to a pipe and exits; the parent
//! waits at most a timeout and, on a panic, a signal, a timeout or a bad answer, logs it and
//! boots with what it has (see `main.rs`).
//!
//! The child inherits init's memory (the parsers' input, the open consoles for their
//! messages) and its mount namespace: a volume it mounts it also unmounts (the guard's
//! `Drop` runs on a caught panic too); one killed at the timeout leaves its mount under /run.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use serde::{de::DeserializeOwned, Serialize};

/// Runs `f` in a forked child and returns its result; `Err` says what went wrong.
pub fn in_child<T, F>(timeout: Duration, f: F) -> Result<T, String>
where
    T: Serialize + DeserializeOwned,
    F: FnOnce() -> T,
{
    let (r, w) = crate::sys::pipe().map_err(|e| format!("pipe: {e}"))?;
    // SAFETY: init is single-threaded here; the child only runs `f`, writes and `_exit`s.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(format!("fork: {}", io::Error::last_os_error()));
    }
    if pid == 0 {
        drop(r);
        child(w, f);
    }
    drop(w);
    let deadline = Instant::now() + timeout;
    let out = read_until_eof(&r, deadline);
    let timed_out = out.is_err();
    if timed_out {
        let _ = crate::sys::kill(pid, libc::SIGKILL);
    }
    let status = wait(pid);
    let out = out?;
    match status {
        Ok(crate::sys::ExitStatus::Exited(0)) => serde_json::from_slice(&out)
            .map_err(|e| format!("the parser's answer does not decode: {e}")),
        Ok(crate::sys::ExitStatus::Exited(PANICKED)) => Err("the parser panicked".into()),
        Ok(st) => Err(format!("the parser ended with {st}")),
        Err(e) => Err(format!("waitpid: {e}")),
    }
}

const PANICKED: i32 = 101;

fn child<T: Serialize, F: FnOnce() -> T>(w: OwnedFd, f: F) -> ! {
    let code = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(v) => match serde_json::to_vec(&v) {
            Ok(b) if write_all(&w, &b).is_ok() => 0,
            _ => 2,
        },
        Err(_) => PANICKED,
    };
    // SAFETY: _exit ends the child at once: no atexit handlers, no unwinding into the copy
    // of init's stack it inherited.
    unsafe { libc::_exit(code) }
}

fn write_all(fd: &OwnedFd, mut b: &[u8]) -> io::Result<()> {
    while !b.is_empty() {
        // SAFETY: b is a valid buffer of b.len() bytes.
        let n = unsafe { libc::write(fd.as_raw_fd(), b.as_ptr().cast(), b.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        b = b.get(n as usize..).unwrap_or_default();
    }
    Ok(())
}

/// Everything the child writes, until it closes the pipe (exits) or the deadline passes.
fn read_until_eof(r: &OwnedFd, deadline: Instant) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err("the parser did not finish in time (killed)".into());
        }
        let mut pfd = libc::pollfd {
            fd: r.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = left.as_millis().clamp(1, i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(format!("poll: {e}"));
        }
        if n == 0 {
            continue;
        }
        match crate::sys::read_nb(r.as_raw_fd(), &mut buf) {
            Ok(Some(0)) => return Ok(out),
            Ok(Some(k)) => out.extend_from_slice(buf.get(..k).unwrap_or_default()),
            Ok(None) => {}
            Err(e) => return Err(format!("read: {e}")),
        }
    }
}

fn wait(pid: libc::pid_t) -> io::Result<crate::sys::ExitStatus> {
    let mut status: libc::c_int = 0;
    loop {
        // SAFETY: status is a valid out pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            break;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    Ok(if libc::WIFEXITED(status) {
        crate::sys::ExitStatus::Exited(libc::WEXITSTATUS(status))
    } else {
        crate::sys::ExitStatus::Signaled(libc::WTERMSIG(status))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // These fork the test binary: fine, the children only compute, write and `_exit`.

    #[test]
    fn the_childs_answer_comes_back() {
        let v: Vec<String> =
            in_child(Duration::from_secs(10), || vec!["a".into(), "b".into()]).unwrap();
        assert_eq!(v, ["a", "b"]);
    }

    #[test]
    fn a_panic_in_the_child_is_an_error_not_the_end_of_the_caller() {
        let r: Result<u32, String> = in_child(Duration::from_secs(10), || panic!("hostile"));
        assert_eq!(r.unwrap_err(), "the parser panicked");
        // And the caller goes on.
        assert_eq!(in_child(Duration::from_secs(10), || 7u32).unwrap(), 7);
    }

    #[test]
    fn a_child_that_hangs_is_killed_at_the_timeout() {
        let t0 = Instant::now();
        let r: Result<u32, String> = in_child(Duration::from_millis(300), || loop {
            std::thread::sleep(Duration::from_secs(1));
        });
        assert!(r.unwrap_err().contains("did not finish in time"));
        assert!(t0.elapsed() < Duration::from_secs(5));
    }
}
