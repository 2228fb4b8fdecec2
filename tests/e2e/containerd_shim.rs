//! The containerd shim (host/containerd-shim, runtime `io.containerd.axion.v1`) driven by
//! the real `ctr` against Debian's containerd, started here with its own root, state,
//! socket and config under a temporary directory (never the host's own containerd), the
//! shim built from the workspace on its PATH ([`axion_tests::containerd`], the node the
//! bench uses too). Every `ctr run` is a sandbox of one: its own VM cloned from the
//! template (built once, in this test's state directory).
//!
//! The same containerd then serves kubelet's way in, its CRI plugin, driven by a small gRPC
//! client (test_support::cri) with the runtime handler `axion` (a RuntimeClass's handler):
//! a pod's sandbox and two containers in one VM, then stopped and removed. The pod uses the
//! node's network (Debian has no CNI plugins; the VM is the pod's network anyway).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use axion_tests::containerd::{self, Containerd, Node, CRI_NS, PAUSE, RUNTIME};
use axion_tests::{qemus_under, require};
use test_support::cri::Cri;

#[test]
fn ctr_runs_containers_in_axion_vms() {
    let missing = containerd::missing();
    require!(missing.is_none(), "{}", missing.unwrap_or_default());
    check().unwrap();
}

fn check() -> Result<()> {
    let node = Node::prepare()?;
    eprintln!("template ready in {:.1} s", node.template_secs);
    let state = node.state.clone();
    let c = Containerd::start(&node)?;
    let img = c.import_busybox(node.dir.path())?;

    let run = Duration::from_secs(180);
    let t = Instant::now();
    let out = c.ok(
        &[
            "run",
            "--rm",
            "--runtime",
            RUNTIME,
            &img,
            "hello1",
            "echo",
            "hello",
        ],
        run,
    )?;
    eprintln!("ctr run echo hello: {:.1} s", t.elapsed().as_secs_f64());
    assert_eq!(out, "hello\n");

    // The exit code is passed through.
    let o = c.run(
        &[
            "run",
            "--rm",
            "--runtime",
            RUNTIME,
            &img,
            "exit3",
            "sh",
            "-c",
            "exit 3",
        ],
        run,
    )?;
    assert_eq!(
        o.status.code(),
        Some(3),
        "stderr: {}",
        String::from_utf8_lossy(&o.stderr)
    );

    // The container sees its own VM's kernel, not the host's; the spec's capability set
    // (ctr's default less CAP_CHOWN), its noNewPrivileges (ctr's default) and its seccomp
    // profile (containerd's default, asked for with --seccomp) hold in it.
    let host = std::fs::read_to_string("/proc/sys/kernel/osrelease")?;
    let out = c.ok(
        &[
            "run",
            "--rm",
            "--runtime",
            RUNTIME,
            "--cap-drop",
            "CAP_CHOWN",
            "--seccomp",
            &img,
            "uname",
            "sh",
            "-c",
            PROC_STATUS,
        ],
        run,
    )?;
    let guest = out.lines().next().unwrap_or_default();
    assert_ne!(
        guest.trim(),
        host.trim(),
        "the container saw the host's kernel"
    );
    assert!(!guest.trim().is_empty());
    let (caps, nnp) = caps_and_nnp(&out)?;
    assert_eq!(caps & CAP_CHOWN, 0, "CAP_CHOWN was dropped: {out}");
    assert_ne!(caps & CAP_KILL, 0, "CAP_KILL is ctr's default: {out}");
    assert!(nnp, "ctr's spec asks for no_new_privs: {out}");
    assert_eq!(seccomp_mode(&out)?, 2, "--seccomp: a filter: {out}");
    // ctr's spec has RLIMIT_NOFILE 1024/1024 (the kernel's default hard limit is 4096).
    assert_eq!(open_files(&out)?, (1024, 1024), "the spec's rlimit: {out}");

    // A running task with limits (its VM's QEMU in a cgroup of the shim's), the default
    // capabilities and new privileges allowed: exec into it, then kill and delete it.
    c.ok(
        &[
            "run",
            "-d",
            "--runtime",
            RUNTIME,
            "--memory-limit",
            &(1u64 << 30).to_string(),
            "--cpus",
            "0.5",
            "--allow-new-privs",
            &img,
            "long",
            "sleep",
            "600",
        ],
        run,
    )?;
    let qemu = qemus_under(&state);
    assert_eq!(qemu.len(), 1, "one VM for the task");
    let limits = axion_tests::cgroup_limits(qemu[0])?;
    assert!(limits.memory_path.contains("/axion-shim/"), "{limits:?}");
    assert_eq!(limits.memory, Some(1 << 30), "{limits:?}");
    assert_eq!(limits.cpu, Some((50_000, 100_000)), "{limits:?}");
    let o = c.ok(
        &[
            "task",
            "exec",
            "--exec-id",
            "s1",
            "long",
            "sh",
            "-c",
            PROC_STATUS,
        ],
        run,
    )?;
    let (caps, nnp) = caps_and_nnp(&o)?;
    assert_ne!(caps & CAP_CHOWN, 0, "default capabilities: {o}");
    assert!(!nnp, "--allow-new-privs: {o}");
    assert_eq!(
        seccomp_mode(&o)?,
        0,
        "a spec without seccomp runs unconfined: {o}"
    );
    // Stats: the QEMU's host figures and the container's in the guest.
    let m = c.ok(
        &["task", "metrics", "--format", "json", "long"],
        Duration::from_secs(60),
    )?;
    let mj: serde_json::Value =
        serde_json::from_str(&m).with_context(|| format!("ctr task metrics: {m}"))?;
    let n = |p: &str| mj.pointer(p).and_then(|v| v.as_u64()).unwrap_or(0);
    assert_eq!(n("/memory/usage/limit"), 1 << 30, "{m}");
    assert!(n("/memory/usage/usage") > 16 << 20, "QEMU's memory: {m}");
    assert!(n("/cpu/usage/total") > 0, "QEMU's CPU time: {m}");
    assert!(
        n("/memory/rss") > 0,
        "the container's memory in its VM: {m}"
    );
    assert!(n("/pids/current") >= 1, "the container's processes: {m}");
    eprintln!("ctr task metrics: {}", m.replace('\n', " "));
    let out = c.ok(
        &["task", "exec", "--exec-id", "e1", "long", "echo", "inside"],
        run,
    )?;
    assert_eq!(out, "inside\n");
    let o = c.run(
        &[
            "task",
            "exec",
            "--exec-id",
            "e2",
            "long",
            "sh",
            "-c",
            "exit 7",
        ],
        run,
    )?;
    assert_eq!(o.status.code(), Some(7), "exec's exit code");
    // A second container of the same sandbox (CRI's annotation, as a pod's containers have
    // it) runs in the same VM: the same kernel boot id, and still one QEMU.
    let boot_id = ["busybox", "cat", "/proc/sys/kernel/random/boot_id"];
    let mut args = vec!["task", "exec", "--exec-id", "b1", "long"];
    args.extend(boot_id);
    let first = c.ok(&args, run)?;
    let mut args = vec!["run", "--rm", "--runtime", RUNTIME];
    args.extend([
        "--annotation",
        "io.kubernetes.cri.sandbox-id=long",
        &img,
        "second",
    ]);
    args.extend(boot_id);
    let second = c.ok(&args, run)?;
    assert_eq!(
        first, second,
        "the sandbox's second container ran in another VM"
    );
    assert_eq!(qemus_under(&state).len(), 1, "one VM for the sandbox");
    let tasks = c.ok(&["task", "ls"], Duration::from_secs(30))?;
    assert!(
        tasks.contains("long") && tasks.contains("RUNNING"),
        "{tasks}"
    );
    c.ok(&["task", "kill", "-s", "SIGKILL", "long"], run)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !c
        .ok(&["task", "ls"], Duration::from_secs(30))?
        .contains("STOPPED")
    {
        assert!(Instant::now() < deadline, "the killed task did not stop");
        std::thread::sleep(Duration::from_millis(200));
    }
    c.ok(&["task", "delete", "long"], run)?;
    c.ok(&["container", "delete", "long"], run)?;
    nothing_left(&state, "axion-test")?;
    no_cgroup(&limits)?;

    cri_pod(&c, node.dir.path(), &state)
}

/// A busybox shell line printing the kernel release, the process's effective
/// capabilities and no_new_privs flag, and its open-files limit.
const PROC_STATUS: &str = "busybox uname -r; \
     busybox grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/self/status; \
     busybox grep 'Max open files' /proc/self/limits";
const CAP_CHOWN: u64 = 1 << 0;
const CAP_KILL: u64 = 1 << 5;

/// CapEff and NoNewPrivs of PROC_STATUS's output.
fn caps_and_nnp(out: &str) -> Result<(u64, bool)> {
    let field = |k: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(k))
            .map(str::trim)
            .with_context(|| format!("no {k} in {out:?}"))
    };
    let caps = u64::from_str_radix(field("CapEff:")?, 16)?;
    Ok((caps, field("NoNewPrivs:")? == "1"))
}

/// The `Seccomp:` mode in PROC_STATUS's output: 0 none, 2 a filter.
fn seccomp_mode(out: &str) -> Result<u32> {
    out.lines()
        .find_map(|l| l.strip_prefix("Seccomp:"))
        .map(str::trim)
        .with_context(|| format!("no Seccomp: in {out:?}"))?
        .parse()
        .with_context(|| format!("Seccomp: in {out:?}"))
}

/// The soft and hard open-files limits in PROC_STATUS's output.
fn open_files(out: &str) -> Result<(u64, u64)> {
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .with_context(|| format!("no open-files limit in {out:?}"))?;
    let mut f = line.split_whitespace().map(str::parse::<u64>);
    match (f.next(), f.next()) {
        (Some(Ok(soft)), Some(Ok(hard))) => Ok((soft, hard)),
        _ => anyhow::bail!("an open-files limit of {line:?}"),
    }
}

/// The cgroups of a VM that is gone were removed too.
fn no_cgroup(l: &axion_tests::CgroupLimits) -> Result<()> {
    let root = Path::new("/sys/fs/cgroup");
    let dirs = if root.join("cgroup.controllers").exists() {
        vec![root.join(l.memory_path.trim_start_matches('/'))]
    } else {
        vec![
            root.join("memory")
                .join(l.memory_path.trim_start_matches('/')),
            root.join("cpu").join(l.cpu_path.trim_start_matches('/')),
        ]
    };
    for d in dirs {
        assert!(!d.exists(), "cgroup {} left", d.display());
    }
    Ok(())
}

/// Nothing is left: no QEMU, no sandbox directory, no shim of `namespace`.
fn nothing_left(state: &Path, namespace: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !qemus_under(state).is_empty() {
        assert!(
            Instant::now() < deadline,
            "QEMU left running: {:?}",
            qemus_under(state)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let left: Vec<_> = std::fs::read_dir(state.join("shim"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "sandbox directories left: {left:?}");
    let shims = Command::new("pgrep")
        .args([
            "-f",
            &format!("containerd-shim-axion-v1 -namespace {namespace} "),
        ])
        .output()?;
    assert!(
        String::from_utf8_lossy(&shims.stdout).trim().is_empty(),
        "shim processes left: {}",
        String::from_utf8_lossy(&shims.stdout)
    );
    Ok(())
}

/// The CRI path kubelet uses: RunPodSandbox with the `axion` runtime handler, two
/// containers of the pod in its one VM (one hostname, one localhost), then
/// StopPodSandbox and RemovePodSandbox leave nothing behind.
fn cri_pod(c: &Containerd, dir: &Path, state: &Path) -> Result<()> {
    c.import_pause(dir)?;
    let cri = Cri::connect(&c.sock)?;
    eprintln!("CRI: {}", cri.version()?);
    containerd::wait_for_pause(&cri)?;

    let t = Instant::now();
    let pod = cri.run_pod("web", "axion-pod", "axion")?;
    eprintln!("RunPodSandbox: {:.1} s", t.elapsed().as_secs_f64());
    let server = cri.create_container(
        &pod,
        "server",
        PAUSE,
        &[
            "sh",
            "-c",
            concat!(
                "busybox mkdir -p /www && echo pod-hello > /www/index.html && ",
                "exec busybox httpd -f -p 8080 -h /www"
            ),
        ],
    )?;
    cri.start_container(&server)?;
    let client = cri.create_container(&pod, "client", PAUSE, &["sleep", "1000000"])?;
    cri.start_container(&client)?;
    assert!(cri.running(&server)? && cri.running(&client)?);
    let qemu = qemus_under(state);
    assert_eq!(qemu.len(), 1, "one VM for the pod");
    // kubelet's resize: the pod's limits are its VM's QEMU's, changed at once.
    cri.update_resources(&server, 768 << 20, (30_000, 100_000))?;
    let limits = axion_tests::cgroup_limits(qemu[0])?;
    assert!(limits.cpu_path.contains("/axion-shim/"), "{limits:?}");
    assert_eq!(limits.memory, Some(768 << 20), "{limits:?}");
    assert_eq!(limits.cpu, Some((30_000, 100_000)), "{limits:?}");

    let exec = Duration::from_secs(60);
    let out = |id: &str, cmd: &[&str]| -> Result<String> {
        let o = cri.exec_sync(id, cmd, exec)?;
        anyhow::ensure!(o.exit_code == 0, "exec {cmd:?} in {id}: {o:?}");
        Ok(o.stdout)
    };
    let boot_id = ["busybox", "cat", "/proc/sys/kernel/random/boot_id"];
    assert_eq!(
        out(&server, &boot_id)?,
        out(&client, &boot_id)?,
        "the pod's containers ran in two VMs"
    );
    let name = out(&server, &["busybox", "hostname"])?;
    assert!(!name.trim().is_empty());
    assert_eq!(
        name,
        out(&client, &["busybox", "hostname"])?,
        "one hostname in the pod"
    );
    assert_eq!(name.trim(), "axion-pod", "the pod's hostname");
    // The server container's httpd, reached from the client container on localhost.
    let get = [
        "busybox",
        "wget",
        "-q",
        "-O",
        "-",
        "http://127.0.0.1:8080/index.html",
    ];
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let o = cri.exec_sync(&client, &get, exec)?;
        if o.exit_code == 0 {
            assert_eq!(o.stdout, "pod-hello\n");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the client never reached the server on localhost: {o:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    let t = Instant::now();
    cri.stop_pod(&pod.id)?;
    cri.remove_pod(&pod.id)?;
    eprintln!(
        "StopPodSandbox + RemovePodSandbox: {:.1} s",
        t.elapsed().as_secs_f64()
    );
    nothing_left(state, CRI_NS)?;
    no_cgroup(&limits)
}
