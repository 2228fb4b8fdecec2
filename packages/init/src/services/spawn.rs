//! The real [`Spawner`]: fork/exec through `std::process::Command`.

use std::fs::OpenOptions;
use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use super::supervisor::{Spawned, Spawner};
use super::{ReadyCheck, Service};
use crate::sys;

pub const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

pub struct OsSpawner;

impl Spawner for OsSpawner {
    fn spawn(&mut self, svc: &Service) -> io::Result<Spawned> {
        let mut cmd = Command::new(&svc.command);
        cmd.args(&svc.args)
            .env_clear()
            .env("PATH", PATH)
            .env("HOME", "/root")
            .env("TERM", "linux")
            .envs(&svc.environment)
            .current_dir(&svc.working_directory);
        let tty = svc.tty.is_some();
        let mut output = None;
        if let Some(tty) = &svc.tty {
            let t = OpenOptions::new().read(true).write(true).open(tty)?;
            cmd.stdin(Stdio::from(t.try_clone()?))
                .stdout(Stdio::from(t.try_clone()?))
                .stderr(Stdio::from(t));
        } else {
            let (r, w) = sys::pipe()?;
            let w2 = w.try_clone()?;
            cmd.stdin(Stdio::null())
                .stdout(Stdio::from(w))
                .stderr(Stdio::from(w2));
            output = Some(r);
        }
        // SAFETY: the closure only makes async-signal-safe syscalls (sigprocmask, setsid,
        // ioctl) and allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
                if libc::setsid() < 0 {
                    return Err(io::Error::last_os_error());
                }
                if tty {
                    // Make the terminal (our stdin) the controlling tty, for job control.
                    libc::ioctl(0, libc::TIOCSCTTY as _, 1);
                }
                Ok(())
            });
        }
        let child = cmd.spawn()?;
        // The std Child would only be used to wait(); init reaps through waitpid(-1).
        let pid = child.id() as i32;
        drop(child);
        Ok(Spawned { pid, output })
    }

    fn signal(&mut self, pid: i32, sig: i32) {
        // The process group first (the service and what it forked), then the leader in case
        // it left its group.
        let _ = sys::kill(-pid, sig);
        let _ = sys::kill(pid, sig);
    }

    fn probe(&mut self, check: &ReadyCheck) -> bool {
        match check {
            // A unix connect does not wait: it succeeds (listening) or fails at once.
            ReadyCheck::Unix(path) => std::os::unix::net::UnixStream::connect(path).is_ok(),
            // Loopback answers a SYN at once (SYN-ACK or RST); the timeout is a backstop.
            ReadyCheck::Tcp(port) => std::net::TcpStream::connect_timeout(
                &std::net::SocketAddr::from(([127, 0, 0, 1], *port)),
                std::time::Duration::from_millis(100),
            )
            .is_ok(),
        }
    }
}
