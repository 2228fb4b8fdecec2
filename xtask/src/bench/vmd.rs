//! VM-per-container figures (issue 8, issue 23): `docker run --rm IMAGE true` against
//! `axion-vmd`, every container in its own VM, taken from the warm pool (clones restored and
//! waiting: `--pool 2`), cloned from the saved template at the run (`--pool 0`: the mode's
//! clone itself) and, as the baseline, booted cold. The image comes from a
//! `docker-registry` on 127.0.0.1 with the busybox image `test_support::registry` builds; it
//! is pulled once, untimed, before the runs. Before each pooled run the bench waits, untimed,
//! until the pool is full again: the figure is a run that finds a clone waiting (what a
//! user sees whose runs are not back to back), and the background refill does not fall on
//! the next timed run of the same mode.

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
    /// From the warm pool.
    pub pool_run: Value,
    /// Proportional set size (MiB) of an idle container VM's QEMU (`sleep`, the pooled
    /// daemon's, after the runs) and of a pooled clone waiting.
    pub idle_pss: Value,
    pub pooled_pss: Value,
}

/// How a daemon makes its containers' VMs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Pool,
    Clone,
    Cold,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Pool => "pool",
            Kind::Clone => "clone",
            Kind::Cold => "cold",
        }
    }
}

/// The pooled daemon's pool size.
const POOL: usize = 2;

/// The qemu profile's files the daemon boots.
pub struct Guest<'a> {
    pub kernel: &'a Path,
    pub initrd: &'a Path,
    pub disk: Option<&'a Path>,
    pub accel: qemu::Accel,
}

/// Runs the three modes, `runs` timed containers each, alternating: a pooled run, a clone's,
/// then a cold boot's, and so on, with all daemons up, so that the machine's slower and
/// faster spells (a shared host; TCG) fall on every mode alike rather than on one of them. A
/// mode that fails is `n/a (why)`.
pub fn measure(layout: &Layout, guest: &Guest, out: &Path, runs: usize) -> Result<VmdFigures> {
    let registry = Registry::start().context("starting docker-registry on 127.0.0.1")?;
    let busybox = crate::build::project_busybox()?;
    registry.push_busybox(&busybox, "bench/busybox", "latest", Compression::Gzip)?;
    let image = format!("{}/bench/busybox:latest", registry.host());
    let exe = crate::vmd::build_daemon(layout)?;
    let kinds = [Kind::Pool, Kind::Clone, Kind::Cold];
    let start = |kind: Kind| -> Result<Mode> {
        let mode = kind.name();
        let m = Mode::start(&exe, guest, &out.join(format!("vmd-{mode}")), kind, &image)
            .with_context(|| format!("vmd {mode}"));
        if let Err(e) = &m {
            eprintln!("bench: {e:#}");
        }
        m
    };
    let mut modes = kinds.map(start);
    let mut samples: [Vec<f64>; 3] = Default::default();
    let mut failed: [Option<String>; 3] = Default::default();
    for _ in 0..runs {
        for (i, m) in modes.iter_mut().enumerate() {
            let Ok(m) = m else { continue };
            if failed[i].is_some() {
                continue;
            }
            match m.time_run(&image) {
                Ok(t) => samples[i].push(t),
                Err(e) => {
                    eprintln!("bench: vmd {}: {e:#}", kinds[i].name());
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
                    kinds[i].name(),
                    m.up,
                    samples[i]
                );
                Value::from_samples(&samples[i], "no runs")
            }
        }
    };
    let (pool_run, clone_run, cold_run) = (figure(0), figure(1), figure(2));
    let (idle_pss, pooled_pss) = match &modes[0] {
        Ok(m) => m.memory(&image).unwrap_or_else(|e| {
            let why = super::first_line(&format!("{e:#}"));
            (Value::na(why.clone()), Value::na(why))
        }),
        Err(_) => (Value::na("no pooled daemon"), Value::na("no pooled daemon")),
    };
    // The daemon start of the clone mode (no pool filling beside the template's save).
    let start = match &modes[1] {
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
        pool_run,
        idle_pss,
        pooled_pss,
    })
}

/// What `/proc/PID/smaps_rollup` says of a process, in MiB: (Pss, Private_Dirty, Pss_Anon).
fn smaps_rollup(pid: u32) -> Result<(f64, f64, f64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .with_context(|| format!("reading /proc/{pid}/smaps_rollup"))?;
    let field = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    Ok((field("Pss:"), field("Private_Dirty:"), field("Pss_Anon:")))
}

/// Where a QEMU's own (private dirty) memory is, in MiB, from `/proc/PID/smaps`: the guest's
/// RAM (the mapping of the template's `ram` file: pages the guest wrote since the restore,
/// copied on write), TCG's translation buffer (the anonymous mappings that are writable and
/// executable: two of 63 MiB with QEMU 7.2 here, touched as code is translated) and the
/// rest (QEMU's heap, malloc arenas, thread stacks, device state).
fn where_it_goes(pid: u32) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let (mut ram, mut tb, mut rest) = (0u64, 0u64, 0u64);
    let mut kind = 2;
    for l in text.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.first()
            .is_some_and(|a| a.contains('-') && !a.ends_with(':'))
        {
            let (lo, hi) = f[0].split_once('-').unwrap_or(("0", "0"));
            let size = u64::from_str_radix(hi, 16)
                .unwrap_or(0)
                .saturating_sub(u64::from_str_radix(lo, 16).unwrap_or(0));
            let path = f.get(5).copied().unwrap_or("");
            let perms = f.get(1).copied().unwrap_or("");
            kind = if path.ends_with("/ram") {
                0
            } else if path.is_empty() && perms.starts_with("rwx") && size >= 1 << 20 {
                1
            } else {
                2
            };
        } else if f.first() == Some(&"Private_Dirty:") {
            let kib: u64 = f.get(1).and_then(|v| v.parse().ok()).unwrap_or(0);
            match kind {
                0 => ram += kib,
                1 => tb += kib,
                _ => rest += kib,
            }
        }
    }
    format!(
        "guest RAM written {:.1} MiB, TCG translation buffer {:.1} MiB, the rest {:.1} MiB",
        ram as f64 / 1024.0,
        tb as f64 / 1024.0,
        rest as f64 / 1024.0
    )
}

/// QEMU processes whose command line names `dir`.
fn qemus_under(dir: &Path) -> Vec<u32> {
    let needle = format!("{}/", dir.display());
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.starts_with("qemu-system") && cmd.contains(&needle) {
            out.push(pid);
        }
    }
    out
}

/// One daemon (with its warm pool, cloning at each run, or booting every VM cold) with a
/// fresh state folder and the image pulled.
struct Mode {
    kind: Kind,
    state: std::path::PathBuf,
    daemon: Daemon,
    socket: std::path::PathBuf,
    config: tempfile::TempDir,
    /// From starting the daemon to its API answering.
    up: f64,
}

impl Mode {
    fn start(exe: &Path, guest: &Guest, state: &Path, kind: Kind, image: &str) -> Result<Mode> {
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
        match kind {
            Kind::Cold => cmd.arg("--cold-boot"),
            Kind::Clone => cmd.args(["--pool", "0"]),
            Kind::Pool => cmd.args(["--pool", &POOL.to_string()]),
        };
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
            kind,
            state: state.to_path_buf(),
            daemon,
            socket,
            config: tempfile::tempdir()?,
            up,
        };
        m.docker(&["pull", "-q", image])?;
        Ok(m)
    }

    fn cli(&self) -> DockerCli {
        DockerCli::new(
            format!("unix://{}", self.socket.display()),
            self.config.path(),
        )
    }

    fn docker(&self, args: &[&str]) -> Result<()> {
        match self.cli().try_ok(args) {
            Ok(_) => Ok(()),
            // The figure's "n/a (why)" is one line.
            Err(e) => bail!("{}", super::first_line(&format!("{e:#}"))),
        }
    }

    /// Waits (untimed) until the daemon's warm pool is full (`docker info`'s line).
    fn wait_pool_full(&self) -> Result<()> {
        let want = format!("{POOL} ready of {POOL}");
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let status = self
                .cli()
                .try_ok(&["info", "--format", "{{json .DriverStatus}}"])
                .map_err(|e| anyhow::anyhow!("{}", super::first_line(&format!("{e:#}"))))?;
            if status.contains(&want) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the warm pool did not fill within 300 s ({})",
                    status.trim()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Memory of the pooled daemon's VMs: its waiting clones', then three idle containers'
    /// (`sleep`, 5 s after the pool is full again), as PSS in MiB (each VM's breakdown on
    /// stderr). The containers are removed after.
    fn memory(&self, image: &str) -> Result<(Value, Value)> {
        self.wait_pool_full()?;
        let cdir = self.state.join("c");
        let mut pooled = Vec::new();
        for pid in qemus_under(&cdir) {
            let (pss, dirty, anon) = smaps_rollup(pid)?;
            eprintln!(
                "bench: vmd pooled clone (QEMU {pid}): PSS {pss:.1} MiB, private dirty \
                 {dirty:.1} MiB, anonymous PSS {anon:.1} MiB; {}",
                where_it_goes(pid)
            );
            pooled.push(pss);
        }
        let names = ["bench-idle-1", "bench-idle-2", "bench-idle-3"];
        let mut idle = Vec::new();
        let r = (|| -> Result<()> {
            for n in names {
                self.docker(&["run", "-d", "--name", n, image, "sleep", "600"])?;
            }
            self.wait_pool_full()?;
            std::thread::sleep(Duration::from_secs(5));
            for n in names {
                let pid = self
                    .cli()
                    .try_ok(&["inspect", "-f", "{{.State.Pid}}", n])
                    .map_err(|e| anyhow::anyhow!("{}", super::first_line(&format!("{e:#}"))))?;
                let pid: u32 = pid.trim().parse().context("the container's QEMU pid")?;
                let (pss, dirty, anon) = smaps_rollup(pid)?;
                eprintln!(
                    "bench: vmd idle container {n} (QEMU {pid}): PSS {pss:.1} MiB, private \
                     dirty {dirty:.1} MiB, anonymous PSS {anon:.1} MiB; {}",
                    where_it_goes(pid)
                );
                idle.push(pss);
            }
            Ok(())
        })();
        let mut rm = vec!["rm", "-f"];
        rm.extend(names);
        let _ = self.docker(&rm);
        r?;
        Ok((
            Value::from_samples(&idle, "no containers"),
            Value::from_samples(&pooled, "no pooled clones"),
        ))
    }

    /// One timed `docker run --rm IMAGE true` (for the pooled mode, once its pool is full).
    fn time_run(&self, image: &str) -> Result<f64> {
        if self.kind == Kind::Pool {
            self.wait_pool_full()?;
        }
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
