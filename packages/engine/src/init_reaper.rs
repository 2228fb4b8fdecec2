//! `docker run --init`: the engine binary, bind-mounted read-only at /sbin/docker-init in the
//! container (it is static), runs as the container's PID 1 (`docker-init __init -- CMD...`):
//! it starts the command, passes the signals it gets on to it, reaps every orphan that the
//! kernel hands it, and exits with the command's status (128 + signal when it was killed), as
//! dockerd's tini does.

use nix::sys::signal::{kill, sigprocmask, SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{execvp, fork, ForkResult, Pid};
use std::ffi::CString;

pub fn main(args: &[String]) -> i32 {
    let cmd: Vec<&String> = match args.first().map(String::as_str) {
        Some("--") => args[1..].iter().collect(),
        _ => args.iter().collect(),
    };
    if cmd.is_empty() {
        eprintln!("docker-init: no command given");
        return 127;
    }
    let Ok(argv) = cmd
        .iter()
        .map(|a| CString::new(a.as_bytes()))
        .collect::<Result<Vec<_>, _>>()
    else {
        eprintln!("docker-init: an argument holds a NUL byte");
        return 127;
    };
    // Every signal waits for sigwait below; the child gets the default mask back.
    let all = SigSet::all();
    let mut old = SigSet::empty();
    if let Err(e) = sigprocmask(SigmaskHow::SIG_BLOCK, Some(&all), Some(&mut old)) {
        eprintln!("docker-init: sigprocmask: {e}");
        return 127;
    }
    // SAFETY: single-threaded here; the child only restores its mask and execs.
    let child = match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&old), None);
            let e = execvp(&argv[0], &argv).unwrap_err();
            eprintln!("docker-init: exec {}: {e}", cmd[0]);
            std::process::exit(if e == nix::errno::Errno::ENOENT {
                127
            } else {
                126
            });
        }
        Ok(ForkResult::Parent { child }) => child,
        Err(e) => {
            eprintln!("docker-init: fork: {e}");
            return 127;
        }
    };
    loop {
        let sig = match all.wait() {
            Ok(s) => s,
            Err(_) => continue,
        };
        if sig != Signal::SIGCHLD {
            let _ = kill(child, sig);
            continue;
        }
        if let Some(code) = reap(child) {
            return code;
        }
    }
}

/// Reaps every exited child; the command's exit status once it has exited.
fn reap(child: Pid) -> Option<i32> {
    let mut result = None;
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(p, code)) if p == child => result = Some(code),
            Ok(WaitStatus::Signaled(p, sig, _)) if p == child => result = Some(128 + sig as i32),
            Ok(WaitStatus::StillAlive) | Err(_) => return result,
            Ok(_) => continue,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reaps_and_returns_the_status() {
        // main() runs in a child process (it waits for signals of its own), with a command
        // that exits 7.
        // SAFETY: the child runs main() and exits; it does not return into the harness.
        match unsafe { fork() }.unwrap() {
            ForkResult::Child => {
                let code = main(&["--".into(), "sh".into(), "-c".into(), "exit 7".into()]);
                std::process::exit(code);
            }
            ForkResult::Parent { child } => {
                assert_eq!(waitpid(child, None).unwrap(), WaitStatus::Exited(child, 7));
            }
        }
    }
}
