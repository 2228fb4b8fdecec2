//! VM-per-container figures (issue 8): `docker run --rm IMAGE true` against `axion-vmd`,
//! every container in its own VM, cloned from the saved template (the mode's point) and,
//! as the baseline, booted cold. The image comes from a `docker-registry` on 127.0.0.1 with
//! the busybox image `test_support::registry` builds; it is pulled once, untimed, before the runs.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::stats::Value;
use crate::layout::Layout;
use test_support::registry::{Compression, Registry};
use test_support::DockerCli;

pub struct VmdFigures {
    /// From starting the daemon to its API answering (the template boots and is saved).
    pub start: Value,
    pub clone_run: Value,
    pub cold_run: Value,
}

/// The qemu profile's files the daemon boots.
pub struct Guest<'a> {
    pub kernel: &'a Path,
    pub initrd: &'a Path,
    pub disk: Option<&'a Path>,
    pub accel: qemu::Accel,
}

/// Runs both modes, `runs` timed containers each, alternating: a clone's run, then a cold
/// boot's, and so on, with both daemons up, so that the machine's slower and faster spells
/// (a shared host; TCG) fall on both modes alike rather than on one of them. A mode that
/// fails is `n/a (why)`.
pub fn measure(layout: &Layout, guest: &Guest, out: &Path, runs: usize) -> Result<VmdFigures> {
    let registry = Registry::start().context("starting docker-registry on 127.0.0.1")?;
    let busybox = crate::build::project_busybox()?;
    registry.push_busybox(&busybox, "bench/busybox", "latest", Compression::Gzip)?;
    let image = format!("{}/bench/busybox:latest", registry.host());
    let exe = crate::vmd::build_daemon(layout)?;
    let start = |cold: bool| -> Result<Mode> {
        let mode = if cold { "cold" } else { "clone" };
        let m = Mode::start(&exe, guest, &out.join(format!("vmd-{mode}")), cold, &image)
            .with_context(|| format!("vmd {mode}"));
        if let Err(e) = &m {
            eprintln!("bench: {e:#}");
        }
        m
    };
    let mut modes = [start(false), start(true)];
    let mut samples = [Vec::new(), Vec::new()];
    let mut failed: [Option<String>; 2] = [None, None];
    for _ in 0..runs {
        for (i, m) in modes.iter_mut().enumerate() {
            let Ok(m) = m else { continue };
            if failed[i].is_some() {
                continue;
            }
            match m.time_run(&image) {
                Ok(t) => samples[i].push(t),
                Err(e) => {
                    eprintln!(
                        "bench: vmd {}: {e:#}",
                        if i == 0 { "clone" } else { "cold" }
                    );
                    failed[i] = Some(super::first_line(&format!("{e:#}")));
                }
            }
        }
    }
    let figure = |i: usize| -> Value {
        match (&modes[i], &failed[i]) {
            (Err(e), _) => Value::na(super::first_line(&format!("{e:#}"))),
            (Ok(_), Some(why)) => Value::na(why.clone()),
            (Ok(m), None) => {
                eprintln!(
                    "bench: vmd {}: started in {:.1} s; docker run --rm: {:.2?}",
                    if i == 0 { "clone" } else { "cold" },
                    m.up,
                    samples[i]
                );
                Value::from_samples(&samples[i], "no runs")
            }
        }
    };
    let (clone_run, cold_run) = (figure(0), figure(1));
    let start = match &modes[0] {
        Ok(m) => Value::one(m.up),
        Err(_) => Value::na("the daemon did not start"),
    };
    for m in modes.iter_mut().flatten() {
        m.daemon.stop();
    }
    Ok(VmdFigures {
        start,
        clone_run,
        cold_run,
    })
}

/// One daemon (cloning, or booting every VM cold) with a fresh state folder and the image pulled.
struct Mode {
    daemon: Daemon,
    socket: std::path::PathBuf,
    config: tempfile::TempDir,
    /// From starting the daemon to its API answering.
    up: f64,
}

impl Mode {
    fn start(exe: &Path, guest: &Guest, state: &Path, cold: bool, image: &str) -> Result<Mode> {
        let _ = std::fs::remove_dir_all(state);
        std::fs::create_dir_all(state)
            .with_context(|| format!("cannot create {}", state.display()))?;
        let socket = state.join("vmd.sock");
        let log = state.join("vmd.log");
        let mut cmd = Command::new(exe);
        cmd.arg("--state-dir")
            .arg(state)
            .arg("--kernel")
            .arg(guest.kernel)
            .arg("--initrd")
            .arg(guest.initrd)
            .arg("--socket")
            .arg(&socket);
        cmd.args(["--accel", guest.accel.name()]);
        if let Some(d) = guest.disk {
            cmd.arg("--disk").arg(d);
        }
        if cold {
            cmd.arg("--cold-boot");
        }
        let logf = std::fs::File::create(&log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        let started = Instant::now();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(logf.try_clone()?)
            .stderr(logf)
            .spawn()
            .with_context(|| format!("cannot start {}", exe.display()))?;
        let mut daemon = Daemon(child);
        let deadline = Instant::now() + Duration::from_secs(600);
        while !crate::vmd::answers(&socket) {
            if daemon.0.try_wait()?.is_some() || Instant::now() > deadline {
                bail!(
                    "axion-vmd did not serve {} (log {})",
                    socket.display(),
                    log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let up = started.elapsed().as_secs_f64();
        let m = Mode {
            daemon,
            socket,
            config: tempfile::tempdir()?,
            up,
        };
        m.docker(&["pull", "-q", image])?;
        Ok(m)
    }

    fn docker(&self, args: &[&str]) -> Result<()> {
        let cli = DockerCli::new(
            format!("unix://{}", self.socket.display()),
            self.config.path(),
        );
        match cli.try_ok(args) {
            Ok(_) => Ok(()),
            // The figure's "n/a (why)" is one line.
            Err(e) => bail!("{}", super::first_line(&format!("{e:#}"))),
        }
    }

    /// One timed `docker run --rm IMAGE true`.
    fn time_run(&self, image: &str) -> Result<f64> {
        let t = Instant::now();
        self.docker(&["run", "--rm", image, "true"])?;
        Ok(t.elapsed().as_secs_f64())
    }
}

/// The daemon process; stopped (SIGTERM: it powers its VMs off) when dropped.
struct Daemon(Child);

impl Daemon {
    fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            self.stop();
        }
    }
}
