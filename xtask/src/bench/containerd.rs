//! `--containerd-only`: the containerd shim's figures (issue 20) beside axion-vmd's
//! `docker run`, taken in one run on the same machine. The shim's side is the
//! `containerd-bench` binary of the tests crate (its node setup is the e2e test's, and the
//! CRI client it needs lives there, so xtask itself needs no protoc): the template's build,
//! `ctr run --rm --runtime io.containerd.axion.v1 busybox echo hi` from starting `ctr` to
//! the first byte of its output (and to its exit), and a pod's sandbox started through
//! the CRI (`RunPodSandbox`, handler `axion`: the pod's VM cloned and answering). Then
//! [`super::vmd::measure`] for `docker run --rm busybox true` against axion-vmd. The
//! figures go to stdout and to their section of docs/benchmarks.md.

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use super::stats::{Unit, Value};
use super::vmd;
use crate::layout::Layout;

/// What `containerd-bench` prints.
#[derive(Debug, serde::Deserialize)]
struct ShimFigures {
    template_s: f64,
    ctr_first_output_s: Vec<f64>,
    ctr_run_s: Vec<f64>,
    pod_start_s: Vec<f64>,
}

/// Runs `containerd-bench` (built first); its figures, or why there are none.
fn shim_figures(layout: &Layout, runs: usize) -> Result<ShimFigures> {
    eprintln!("bench: the containerd shim's figures (containerd-bench, {runs} runs)");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "run",
            "-q",
            "-p",
            "axion-tests",
            "--bin",
            "containerd-bench",
            "--",
        ])
        .args(["--runs", &runs.to_string()])
        .current_dir(&layout.root)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo run --bin containerd-bench")?;
    if !out.status.success() {
        bail!("containerd-bench failed ({})", out.status);
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or_default();
    serde_json::from_str(line).with_context(|| format!("containerd-bench printed {text:?}"))
}

/// The shim's figures and axion-vmd's, printed and written to docs/benchmarks.md.
pub fn containerd_only(
    layout: &Layout,
    guest: &vmd::Guest,
    out: &Path,
    runs: usize,
    header: &str,
) -> Result<String> {
    let (template, first, whole, pod) = match shim_figures(layout, runs) {
        Ok(f) => (
            Value::one(f.template_s),
            Value::from_samples(&f.ctr_first_output_s, "no runs"),
            Value::from_samples(&f.ctr_run_s, "no runs"),
            Value::from_samples(&f.pod_start_s, "no runs"),
        ),
        Err(e) => {
            let why = super::first_line(&format!("{e:#}"));
            eprintln!("bench: {why}");
            let na = || Value::na(why.clone());
            (na(), na(), na(), na())
        }
    };
    let v = vmd::measure(layout, guest, out, runs)?;
    let s = Unit::Seconds;
    let mut text = format!("{header}\n\n");
    text.push_str(&format!(
        "- shim template (`containerd-shim-axion-v1 prepare`: boot + save): {}\n",
        template.cell(s)
    ));
    text.push_str(&format!(
        "- `ctr run --rm --runtime io.containerd.axion.v1 busybox echo hi`, to its first \
         output: {}; to its exit: {}\n",
        first.cell(s),
        whole.cell(s)
    ));
    text.push_str(&format!(
        "- pod sandbox start through the CRI (`RunPodSandbox`, handler `axion`): {}\n",
        pod.cell(s)
    ));
    text.push_str(&format!(
        "- beside it, axion-vmd's `docker run --rm busybox true`, cloned VM: {}; \
         cold-booted VM: {}\n",
        v.clone_run.cell(s),
        v.cold_run.cell(s)
    ));
    Ok(text)
}
