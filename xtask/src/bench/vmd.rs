//! VM-per-container figures (issue 8): `docker run --rm IMAGE true` against `axion-vmd`,
//! every container in its own VM, cloned from the saved template (the mode's point) and,
//! as the baseline, booted cold. The image comes from a `docker-registry` on 127.0.0.1 with
//! the busybox image [`crate::registry`] builds; it is pulled once, untimed, before the runs.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::stats::Value;
use crate::layout::Layout;
use crate::registry::{Compression, Registry};

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

/// Runs both modes, `runs` timed containers each. A mode that fails is `n/a (why)`.
pub fn measure(layout: &Layout, guest: &Guest, out: &Path, runs: usize) -> Result<VmdFigures> {
    let registry = Registry::start().context("starting docker-registry on 127.0.0.1")?;
    registry.push_busybox("bench/busybox", "latest", Compression::Gzip)?;
    let image = format!("{}/bench/busybox:latest", registry.host());
    let exe = crate::vmd::build_daemon(layout)?;
    let mut start = Vec::new();
    let mut result = |cold: bool| -> Value {
        let mode = if cold { "cold" } else { "clone" };
        match one_mode(&exe, guest, &out.join(format!("vmd-{mode}")), cold, &image, runs) {
            Ok((started, samples)) => {
                if !cold {
                    start.push(started);
                }
                eprintln!("bench: vmd {mode}: started in {started:.1} s; docker run --rm: {samples:.2?}");
                Value::from_samples(&samples, "no runs")
            }
            Err(e) => {
                eprintln!("bench: vmd {mode}: {e:#}");
                Value::na(super::first_line(&format!("{e:#}")))
            }
        }
    };
    let clone_run = result(false);
    let cold_run = result(true);
    Ok(VmdFigures { start: Value::from_samples(&start, "the daemon did not start"), clone_run, cold_run })
}

/// Starts a daemon with a fresh state folder, times `docker run --rm` `runs` times, stops it.
fn one_mode(exe: &Path, guest: &Guest, state: &Path, cold: bool, image: &str, runs: usize) -> Result<(f64, Vec<f64>)> {
    let _ = std::fs::remove_dir_all(state);
    std::fs::create_dir_all(state).with_context(|| format!("cannot create {}", state.display()))?;
    let socket = state.join("vmd.sock");
    let log = state.join("vmd.log");
    let mut cmd = Command::new(exe);
    cmd.arg("--state-dir").arg(state).arg("--kernel").arg(guest.kernel).arg("--initrd").arg(guest.initrd).arg("--socket").arg(&socket);
    cmd.args(["--accel", guest.accel.name()]);
    if let Some(d) = guest.disk {
        cmd.arg("--disk").arg(d);
    }
    if cold {
        cmd.arg("--cold-boot");
    }
    let logf = std::fs::File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
    let started = Instant::now();
    let child = cmd.stdin(Stdio::null()).stdout(logf.try_clone()?).stderr(logf).spawn().with_context(|| format!("cannot start {}", exe.display()))?;
    let mut daemon = Daemon(child);
    let deadline = Instant::now() + Duration::from_secs(600);
    while !crate::vmd::answers(&socket) {
        if daemon.0.try_wait()?.is_some() || Instant::now() > deadline {
            bail!("axion-vmd did not serve {} (log {})", socket.display(), log.display());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let up = started.elapsed().as_secs_f64();
    let config = tempfile::tempdir()?;
    let docker = |args: &[&str]| -> Result<()> {
        let out = Command::new("docker")
            .env("DOCKER_HOST", format!("unix://{}", socket.display()))
            .env("DOCKER_CONFIG", config.path())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("cannot run the docker CLI")?;
        if !out.status.success() {
            bail!("docker {} failed: {}", args.join(" "), super::first_line(String::from_utf8_lossy(&out.stderr).trim()));
        }
        Ok(())
    };
    docker(&["pull", "-q", image])?;
    let mut samples = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        docker(&["run", "--rm", image, "true"])?;
        samples.push(t.elapsed().as_secs_f64());
    }
    daemon.stop();
    Ok((up, samples))
}

/// The daemon process; stopped (SIGTERM: it powers its VMs off) when dropped.
struct Daemon(Child);

impl Daemon {
    fn stop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.0.id().to_string()]).status();
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

