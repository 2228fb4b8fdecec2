//! `docker build` figures (issue 16's benchmark): the classic builder
//! (`DOCKER_BUILDKIT=0 docker build -q`, the CLI as a user runs it) of a 10-step Dockerfile on
//! busybox, timed as the whole command: a first build, then rebuilds with nothing changed
//! (every step `Using cache`) and rebuilds after one file of the context changed (the steps
//! from its `COPY` on made anew, one `RUN` among them).
//!
//! Taken in the same booted VM as `docker run` (after its `docker load` of busybox), against
//! axion's engine and the Debian peer's dockerd alike; `--build-only` boots the qemu profile
//! once for these figures alone.

use super::stats::{Unit, Value};
use crate::layout::Layout;
use crate::run;
use anyhow::{Context, Result};
use std::path::Path;
use std::time::Instant;

/// The Dockerfile: ten instructions, two COPYs and two RUNs; `b.txt` is the file that changes.
const DOCKERFILE: &str = "FROM busybox
ENV APP=/app
WORKDIR /app
COPY a.txt ./
RUN cat a.txt > copy-a.txt
COPY b.txt ./
RUN wc -c b.txt > size-b.txt
LABEL bench=build
EXPOSE 8080
CMD [\"cat\", \"/app/b.txt\"]
";

pub struct Figures {
    pub first: Value,
    pub no_change: Value,
    pub one_file: Value,
}

impl Figures {
    pub fn na(why: &str) -> Figures {
        Figures {
            first: Value::na(why),
            no_change: Value::na(why),
            one_file: Value::na(why),
        }
    }
}

/// `runs` timed rebuilds of each kind with `cli` (busybox must be loaded already).
pub fn measure(cli: &test_support::DockerCli, runs: usize) -> Result<Figures> {
    let ctx = tempfile::tempdir()?;
    let dir = ctx.path();
    std::fs::write(dir.join("Dockerfile"), DOCKERFILE)?;
    std::fs::write(dir.join("a.txt"), "a\n")?;
    std::fs::write(dir.join("b.txt"), "b 0\n")?;
    let cli = cli.clone().env("DOCKER_BUILDKIT", "0");
    let path = dir.to_string_lossy().to_string();
    let build = || -> Result<f64> {
        let t = Instant::now();
        cli.try_ok(&["build", "-q", "-t", "bench-build", &path])
            .context("docker build")?;
        Ok(t.elapsed().as_secs_f64())
    };
    let first = build()?;
    let mut no_change = Vec::new();
    let mut one_file = Vec::new();
    for i in 0..runs {
        no_change.push(build()?);
        std::fs::write(dir.join("b.txt"), format!("b {}\n", i + 1))?;
        one_file.push(build()?);
    }
    let _ = cli.try_ok(&["rmi", "bench-build"]);
    eprintln!(
        "bench: docker build: first {first:.2} s, no change {no_change:.2?}, one file \
         {one_file:.2?}"
    );
    Ok(Figures {
        first: Value::from_samples(&[first], ""),
        no_change: Value::from_samples(&no_change, "no runs"),
        one_file: Value::from_samples(&one_file, "no runs"),
    })
}

/// `cargo xtask bench --build-only`: boots the qemu profile once (as `run --detach`), loads
/// busybox, measures, prints the figures and writes them to their section of
/// docs/benchmarks.md.
pub fn build_only(layout: &Layout, runs: usize, busybox_tar: &Path) -> Result<()> {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let booted = run::boot_detached(
        layout,
        &run::Args {
            profile: "qemu".into(),
            format: None,
            detach: true,
            ssh_port: Some(qemu::free_port()?),
            docker_port: Some(qemu::free_port()?),
            ssh_key: None,
            hostname: None,
        },
    )?;
    let result = (|| -> Result<Figures> {
        anyhow::ensure!(
            booted.has_engine,
            "the qemu profile has no container engine"
        );
        let config = tempfile::tempdir()?;
        let cli = test_support::DockerCli::new(
            format!("tcp://127.0.0.1:{}", booted.ports.docker),
            config.path(),
        )
        .tls(&booted.run.docker_certs());
        cli.try_ok(&["load", "-i", &busybox_tar.to_string_lossy()])?;
        measure(&cli, runs)
    })();
    let _ = run::stop(layout, "qemu");
    let f = result?;
    let accel = qemu::choose_accel(None).0;
    let date = super::command_line("date", &["-u", "+%Y-%m-%d %H:%M"]).unwrap_or_default();
    let text = format!(
        "{} UTC · `cargo xtask bench --build-only --runs {runs}` · {} · load {} at start · \
         `DOCKER_BUILDKIT=0 docker build -q` of a 10-step Dockerfile (2 COPY, 2 RUN) on \
         busybox, the whole CLI command\n\n\
         - first build: {}\n- rebuild, nothing changed (10 of 10 steps cached): {}\n\
         - rebuild after one file changed (its COPY and the 4 steps after it made anew): \
         {}\n",
        date.trim(),
        accel.name().to_uppercase(),
        load.split_whitespace().next().unwrap_or("?"),
        f.first.cell(Unit::Seconds),
        f.no_change.cell(Unit::Seconds),
        f.one_file.cell(Unit::Seconds),
    );
    print!("{text}");
    super::write_docs_section(layout, "build-only", &text)
}
