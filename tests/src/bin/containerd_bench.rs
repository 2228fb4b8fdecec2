//! `containerd-bench [--runs N]`: the containerd shim's figures, for `cargo xtask bench
//! --containerd-only` (which runs this binary: the CRI client lives with the tests, so the
//! build tool itself needs no protoc). On the node of [`axion_tests::containerd`]: the
//! template's build (`prepare`), then N times `ctr run --rm --runtime io.containerd.axion.v1
//! busybox echo hi` (from starting `ctr` to the first byte of its output, and to its exit),
//! then N times a pod's sandbox started through the CRI (`RunPodSandbox` with handler
//! `axion`: the pod's VM cloned and answering), each pod stopped and removed after. Prints
//! one JSON object of seconds on stdout; progress and errors on stderr.

use std::io::Read;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use axion_tests::containerd::{self, Containerd, Node, CTR_NS, RUNTIME};
use test_support::cri::Cri;

fn main() {
    if let Err(e) = run() {
        eprintln!("containerd-bench: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runs = match args.as_slice() {
        [] => 5,
        [flag, n] if flag == "--runs" => n.parse::<usize>().context("--runs N")?.max(1),
        _ => bail!("usage: containerd-bench [--runs N]"),
    };
    if let Some(why) = containerd::missing() {
        bail!("{why}");
    }
    let node = Node::prepare()?;
    eprintln!(
        "containerd-bench: template ready in {:.1} s",
        node.template_secs
    );
    let c = Containerd::start(&node)?;
    let img = c.import_busybox(node.dir.path())?;
    let (mut first, mut whole) = (Vec::new(), Vec::new());
    for i in 0..runs {
        let (f, w) = first_output(&c, &img, &format!("bench{i}"))?;
        eprintln!("containerd-bench: ctr run: first output {f:.2} s, exit {w:.2} s");
        first.push(f);
        whole.push(w);
    }
    c.import_pause(node.dir.path())?;
    let cri = Cri::connect(&c.sock)?;
    containerd::wait_for_pause(&cri)?;
    let mut pods = Vec::new();
    for i in 0..runs {
        let t = Instant::now();
        let pod = cri.run_pod(&format!("bench{i}"), "bench", "axion")?;
        let secs = t.elapsed().as_secs_f64();
        eprintln!("containerd-bench: RunPodSandbox {secs:.2} s");
        pods.push(secs);
        cri.stop_pod(&pod.id)?;
        cri.remove_pod(&pod.id)?;
    }
    let j = serde_json::json!({
        "runs": runs,
        "template_s": node.template_secs,
        "ctr_first_output_s": first,
        "ctr_run_s": whole,
        "pod_start_s": pods,
    });
    println!("{j}");
    Ok(())
}

/// One `ctr run --rm ... echo hi`: seconds to its first output byte and to its exit.
fn first_output(c: &Containerd, img: &str, id: &str) -> Result<(f64, f64)> {
    let mut cmd = c.ctr(
        CTR_NS,
        &["run", "--rm", "--runtime", RUNTIME, img, id, "echo", "hi"],
    );
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let t = Instant::now();
    let mut child = cmd.spawn().context("starting ctr")?;
    // A run that hangs is killed after 3 minutes (then its read ends).
    let (done, watch) = mpsc::channel::<()>();
    let pid = child.id().to_string();
    let guard = std::thread::spawn(move || {
        if watch.recv_timeout(Duration::from_secs(180)).is_err() {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid])
                .status();
        }
    });
    let mut stdout = child.stdout.take().context("ctr's stdout")?;
    let mut out = vec![0u8; 1];
    let n = stdout.read(&mut out)?;
    let first = t.elapsed().as_secs_f64();
    out.truncate(n);
    stdout.read_to_end(&mut out)?;
    let o = child.wait_with_output()?;
    let whole = t.elapsed().as_secs_f64();
    let _ = done.send(());
    let _ = guard.join();
    if !o.status.success() || out != b"hi\n" {
        bail!(
            "ctr run {id}: {} (stdout {:?}, stderr {})",
            o.status,
            String::from_utf8_lossy(&out),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    Ok((first, whole))
}
