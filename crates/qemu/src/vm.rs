//! [`Vm`]: one running QEMU process, its serial log, its QMP session.
//!
//! QEMU's own stdout/stderr go to `qemu.log` in the run directory (never to the caller's
//! stdout: a detached VM must not hold `$(...)` open). The serial console is a file that
//! [`Vm::wait_for_line`] follows as it grows. Dropping a `Vm` kills QEMU unless it was
//! [`Vm::detach`]ed, so a failing test never leaves a VM behind.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::config::{shell_quote, Serial, VmConfig};
use crate::error::{Error, QmpError, Result};
use crate::qmp::Qmp;

/// How many serial lines errors show.
const TAIL_LINES: usize = 30;
const POLL: Duration = Duration::from_millis(20);

/// A line seen on the serial console.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SerialLine {
    /// The line without its line ending.
    pub line: String,
    /// Time from starting QEMU until the line was seen (within ~20 ms).
    pub elapsed: Duration,
}

/// What a VM left behind when detached: enough for another process to find and stop it.
#[derive(Debug, Clone)]
pub struct Detached {
    pub pid: u32,
    pub run_dir: PathBuf,
    pub serial_log: Option<PathBuf>,
    pub qmp_socket: Option<PathBuf>,
}

/// A running QEMU.
pub struct Vm {
    child: Child,
    started: Instant,
    config: VmConfig,
    run_dir: PathBuf,
    temp: Option<tempfile::TempDir>,
    qemu_log: PathBuf,
    qmp: Option<Qmp>,
    serial: Option<SerialFollower>,
    exit: Option<ExitStatus>,
    detached: bool,
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm")
            .field("pid", &self.child.id())
            .field("run_dir", &self.run_dir)
            .finish_non_exhaustive()
    }
}

impl Vm {
    /// Starts QEMU for `config` and connects to its QMP socket. Paths the configuration leaves
    /// open go to its run directory (a temporary one if none is set).
    pub fn spawn(config: VmConfig) -> Result<Vm> {
        let (run_dir, temp) = match &config.run_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir).map_err(|source| Error::Io {
                    doing: "cannot create the run directory",
                    path: dir.clone(),
                    source,
                })?;
                (dir.clone(), None)
            }
            None => {
                let t = tempfile::Builder::new()
                    .prefix("axion-vm-")
                    .tempdir()
                    .map_err(|source| Error::Io {
                        doing: "cannot create a temporary directory in",
                        path: std::env::temp_dir(),
                        source,
                    })?;
                (t.path().to_owned(), Some(t))
            }
        };
        let config = config.resolve(&run_dir);
        config.prepare()?;
        let args = config.args()?;
        let qemu_log = run_dir.join("qemu.log");
        let mut log = File::create(&qemu_log).map_err(|source| Error::Io {
            doing: "cannot create",
            path: qemu_log.clone(),
            source,
        })?;
        let _ = writeln!(log, "# {}", config.command_line()?);
        let log2 = log.try_clone().map_err(|source| Error::Io {
            doing: "cannot reopen",
            path: qemu_log.clone(),
            source,
        })?;
        let mut cmd = Command::new(&config.program);
        cmd.args(&args).stderr(log2);
        if matches!(config.serial, Serial::Stdio { .. }) {
            cmd.stdin(Stdio::inherit()).stdout(Stdio::inherit());
        } else {
            cmd.stdin(Stdio::null()).stdout(log);
        }
        let child = cmd.spawn().map_err(|source| Error::Spawn {
            program: config.program.display().to_string(),
            source,
        })?;
        let started = Instant::now();
        let serial = config
            .serial_log()
            .map(|p| SerialFollower::new(p.to_owned()));
        let mut vm = Vm {
            child,
            started,
            config,
            run_dir,
            temp,
            qemu_log,
            qmp: None,
            serial,
            exit: None,
            detached: false,
        };
        if let Some(sock) = vm.config.qmp.clone() {
            let qmp = vm.connect_qmp(&sock, Duration::from_secs(30))?;
            vm.qmp = Some(qmp);
        }
        Ok(vm)
    }

    fn connect_qmp(&mut self, sock: &Path, timeout: Duration) -> Result<Qmp> {
        let start = Instant::now();
        loop {
            match Qmp::connect(sock) {
                Ok(q) => return Ok(q),
                Err(QmpError::Connect { .. }) => {}
                Err(e) => return Err(e.into()),
            }
            self.check_alive("connecting to QMP")?;
            if start.elapsed() > timeout {
                return Err(self.timeout_error("connecting to the QMP socket", timeout));
            }
            std::thread::sleep(POLL);
        }
    }

    /// QEMU's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The configuration with every path filled in.
    pub fn config(&self) -> &VmConfig {
        &self.config
    }

    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// The serial console log, if the console goes to a file.
    pub fn serial_log(&self) -> Option<&Path> {
        self.config.serial_log()
    }

    /// QEMU's own output (stderr and, unless interactive, stdout), with the command line first.
    pub fn qemu_log(&self) -> &Path {
        &self.qemu_log
    }

    /// Time since QEMU was started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// The QMP session.
    pub fn qmp(&mut self) -> Result<&mut Qmp> {
        self.qmp
            .as_mut()
            .ok_or_else(|| Error::Config("this VM was started without a QMP socket".into()))
    }

    /// Adds a port forward to the running VM's user network (HMP `hostfwd_add`, through QMP):
    /// what `-netdev user,hostfwd=` sets at the start, for a VM already running.
    pub fn add_forward(&mut self, f: &crate::PortForward) -> Result<()> {
        let line = format!("hostfwd_add {} {}", crate::USER_NETDEV, f.rule());
        let out = self.qmp()?.execute(
            "human-monitor-command",
            Some(serde_json::json!({ "command-line": line })),
        )?;
        // HMP answers with text: nothing on success, the reason otherwise.
        match out.as_str().map(str::trim) {
            Some("") | None => Ok(()),
            Some(why) => Err(Error::Config(format!("{line}: {why}"))),
        }
    }

    /// The last lines the serial console printed (up to 30).
    pub fn serial_tail(&mut self) -> Vec<String> {
        if let Some(s) = &mut self.serial {
            s.poll();
            s.tail.iter().cloned().collect()
        } else {
            Vec::new()
        }
    }

    /// Waits for a serial line containing `pattern`. Lines are consumed: a second call looks
    /// only at lines after the one the first call returned.
    pub fn wait_for_line(&mut self, pattern: &str, timeout: Duration) -> Result<SerialLine> {
        self.wait_for(
            |l| l.contains(pattern),
            &format!("waiting for '{pattern}' on the serial console"),
            timeout,
        )
    }

    /// Waits for a serial line for which `matches` is true.
    pub fn wait_for(
        &mut self,
        mut matches: impl FnMut(&str) -> bool,
        waiting_for: &str,
        timeout: Duration,
    ) -> Result<SerialLine> {
        if self.serial.is_none() {
            return Err(Error::Config(
                "this VM's serial console does not go to a file".into(),
            ));
        }
        let deadline = Instant::now() + timeout;
        loop {
            let serial = self.serial.as_mut().expect("checked above");
            serial.poll();
            while let Some(line) = serial.pending.pop_front() {
                if matches(&line) {
                    return Ok(SerialLine {
                        line,
                        elapsed: self.started.elapsed(),
                    });
                }
            }
            if let Err(e) = self.check_alive(waiting_for) {
                // Whatever QEMU wrote before it exited is in the file now: look once more.
                let serial = self.serial.as_mut().expect("checked above");
                serial.poll();
                serial.flush_partial();
                while let Some(line) = serial.pending.pop_front() {
                    if matches(&line) {
                        return Ok(SerialLine {
                            line,
                            elapsed: self.started.elapsed(),
                        });
                    }
                }
                return Err(e);
            }
            if Instant::now() >= deadline {
                return Err(self.timeout_error(waiting_for, timeout));
            }
            std::thread::sleep(POLL);
        }
    }

    /// Waits for init's ready line (`axion: ready in N.NNN s`).
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<crate::Ready> {
        let line = self.wait_for(
            |l| crate::parse_ready_line(l).is_some(),
            "waiting for init's ready line",
            timeout,
        )?;
        let guest = crate::parse_ready_line(&line.line).expect("matched above");
        Ok(crate::Ready {
            line: line.line,
            host: line.elapsed,
            guest,
        })
    }

    /// Has QEMU exited? (Non-blocking.)
    pub fn try_exit_status(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            if let Ok(Some(st)) = self.child.try_wait() {
                self.exit = Some(st);
            }
        }
        self.exit
    }

    /// Waits up to `timeout` for QEMU to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.try_exit_status() {
                return Ok(st);
            }
            if Instant::now() >= deadline {
                return Err(self.timeout_error("waiting for QEMU to exit", timeout));
            }
            std::thread::sleep(POLL);
        }
    }

    /// Presses the ACPI power button and waits for the guest to power off and QEMU to exit.
    /// On timeout QEMU is killed and the error shows the serial console.
    pub fn powerdown_and_wait(&mut self, timeout: Duration) -> Result<ExitStatus> {
        if let Some(st) = self.try_exit_status() {
            return Ok(st);
        }
        match self.qmp()?.system_powerdown() {
            Ok(()) => {}
            // QEMU may be exiting already.
            Err(QmpError::Closed { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        match self.wait_exit(timeout) {
            Ok(st) => Ok(st),
            Err(_) => {
                let err = self.timeout_error(
                    "waiting for the guest to power off after the ACPI \
                     power button (QEMU was killed)",
                    timeout,
                );
                let _ = self.kill();
                Err(err)
            }
        }
    }

    /// Kills QEMU (SIGKILL) and reaps it.
    pub fn kill(&mut self) -> Result<ExitStatus> {
        if let Some(st) = self.try_exit_status() {
            return Ok(st);
        }
        let _ = self.child.kill();
        self.wait_exit(Duration::from_secs(10))
    }

    /// Saves the VM's whole state (CPU, devices, memory) to `file` by migrating it into the
    /// file: the CPUs are stopped first and stay stopped ("postmigrate"); usually you quit
    /// next (or `cont` to go on). Disks are not saved: restore with the same disks in the same
    /// state (or use `-snapshot`-free qcow2 overlays you keep). Restore with
    /// [`VmConfig::restore_from`] and [`Vm::wait_restored`].
    pub fn save(&mut self, file: &Path, timeout: Duration) -> Result<()> {
        let uri = format!("exec:cat > {}", shell_quote(&file.to_string_lossy()));
        let qmp = self.qmp()?;
        qmp.stop()?;
        qmp.migrate(&uri)?;
        let deadline = Instant::now() + timeout;
        loop {
            let (status, error) = self.qmp()?.query_migrate()?;
            match status.as_str() {
                "completed" => return Ok(()),
                "failed" | "cancelled" => {
                    return Err(Error::Migration {
                        what: format!("saving to {}", file.display()),
                        detail: error.unwrap_or(status),
                    })
                }
                _ => {}
            }
            if Instant::now() >= deadline {
                return Err(
                    self.timeout_error(&format!("saving the VM to {}", file.display()), timeout)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// After spawning with [`VmConfig::restore_from`]: waits until the saved state is loaded
    /// and returns the run state then. A VM saved by [`Vm::save`] had its CPUs stopped, so it
    /// comes back "paused": `qmp().cont()` resumes it.
    pub fn wait_restored(&mut self, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.qmp()?.query_status() {
                Ok(st) if st.status != "inmigrate" => return Ok(st.status),
                Ok(_) => {}
                Err(QmpError::Closed { .. }) => {
                    self.wait_exit(Duration::from_secs(5)).ok();
                }
                Err(e) => return Err(e.into()),
            }
            self.check_alive("restoring a saved VM")?;
            if Instant::now() >= deadline {
                return Err(self.timeout_error("restoring a saved VM", timeout));
            }
            // query-status is cheap; axion-vmd's clones wait here (about 0.2 s under TCG).
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Lets QEMU run on after this handle is gone (`xtask run --detach`). The QMP connection
    /// is closed so that another process can connect; a temporary run directory is kept.
    pub fn detach(mut self) -> Detached {
        self.detached = true;
        self.qmp = None;
        let run_dir = match self.temp.take() {
            Some(t) => t.keep(),
            None => self.run_dir.clone(),
        };
        Detached {
            pid: self.child.id(),
            run_dir,
            serial_log: self.config.serial_log().map(Path::to_owned),
            qmp_socket: self.config.qmp.clone(),
        }
    }

    fn check_alive(&mut self, waiting_for: &str) -> Result<()> {
        match self.try_exit_status() {
            None => Ok(()),
            Some(st) => Err(Error::Exited {
                status: st.to_string(),
                waiting_for: waiting_for.to_string(),
                serial_tail: self.serial_tail(),
                qemu_output: self.qemu_output(),
            }),
        }
    }

    fn timeout_error(&mut self, waiting_for: &str, after: Duration) -> Error {
        Error::Timeout {
            waiting_for: waiting_for.to_string(),
            after,
            serial_tail: self.serial_tail(),
            qemu_output: self.qemu_output(),
        }
    }

    /// QEMU's output without the command-line header.
    fn qemu_output(&self) -> String {
        std::fs::read_to_string(&self.qemu_log)
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.starts_with("# "))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if self.detached || self.try_exit_status().is_some() {
            return;
        }
        let _ = self.child.kill();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(POLL);
        }
        // A process stuck in the kernel (a hung KVM vCPU) may take longer to die; leave it
        // (a zombie until we exit) rather than block the caller.
        eprintln!(
            "qemu: QEMU (pid {}) did not exit within 5 s of SIGKILL",
            self.child.id()
        );
    }
}

/// Follows a growing file line by line.
struct SerialFollower {
    path: PathBuf,
    offset: u64,
    partial: Vec<u8>,
    pending: VecDeque<String>,
    tail: VecDeque<String>,
}

impl SerialFollower {
    fn new(path: PathBuf) -> SerialFollower {
        SerialFollower {
            path,
            offset: 0,
            partial: Vec::new(),
            pending: VecDeque::new(),
            tail: VecDeque::new(),
        }
    }

    /// Reads what was appended since the last call.
    fn poll(&mut self) {
        let Ok(mut f) = File::open(&self.path) else {
            return;
        };
        if f.seek(SeekFrom::Start(self.offset)).is_err() {
            return;
        }
        let mut data = Vec::new();
        if f.read_to_end(&mut data).is_err() {
            return;
        }
        self.offset += data.len() as u64;
        for b in data {
            if b == b'\n' {
                let raw = std::mem::take(&mut self.partial);
                self.push_line(&raw);
            } else {
                self.partial.push(b);
            }
        }
    }

    /// QEMU has exited: the last line may have no newline.
    fn flush_partial(&mut self) {
        if !self.partial.is_empty() {
            let raw = std::mem::take(&mut self.partial);
            self.push_line(&raw);
        }
    }

    fn push_line(&mut self, raw: &[u8]) {
        let line = clean_line(raw);
        if self.tail.len() == TAIL_LINES {
            self.tail.pop_front();
        }
        self.tail.push_back(line.clone());
        self.pending.push_back(line);
    }
}

/// A console line as text: invalid UTF-8 replaced, carriage returns and ANSI escapes removed.
fn clean_line(raw: &[u8]) -> String {
    let s = String::from_utf8_lossy(raw);
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' => {}
            '\x1b' => {
                // CSI: ESC [ params final-byte
                if chars.peek() == Some(&'[') {
                    chars.next();
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                }
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follower_splits_lines_across_reads_and_keeps_a_tail() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("serial.log");
        std::fs::write(&p, b"").unwrap();
        let mut f = SerialFollower::new(p.clone());
        let mut w = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
        w.write_all(b"\x1b[0mSeaBIOS\r\nhal").unwrap();
        f.poll();
        assert_eq!(f.pending.iter().collect::<Vec<_>>(), ["SeaBIOS"]);
        w.write_all(b"f line\r\n").unwrap();
        for i in 0..40 {
            writeln!(w, "line {i}").unwrap();
        }
        w.write_all(b"no newline").unwrap();
        f.poll();
        assert_eq!(f.pending[1], "half line");
        assert_eq!(f.pending.len(), 42);
        assert_eq!(f.tail.len(), TAIL_LINES);
        assert_eq!(f.tail.back().unwrap(), "line 39");
        f.flush_partial();
        assert_eq!(f.pending.back().unwrap(), "no newline");
    }

    #[test]
    fn clean_line_drops_escapes_and_invalid_bytes() {
        assert_eq!(clean_line(b"\x1b[1;32mok\x1b[0m\r"), "ok");
        assert_eq!(clean_line(b"a\xffb"), "a\u{fffd}b");
    }
}
