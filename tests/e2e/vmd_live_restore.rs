//! Live-restore of axion-vmd: a daemon restart re-adopts the container VMs that still run.
//! `cargo xtask vmd --detach` starts the daemon; a container prints a counter every 0.5 s
//! (and exits 7 on SIGTERM); the daemon is killed (`kill -9`: QEMU must outlive it) and
//! started again the same way; the container is still Up, its log has the lines written
//! while no daemon ran, `exec` works, `stop` ends it with its own exit code; `--stop` then
//! leaves no QEMU and no VM directory behind. Restart policies at the daemon's start: a
//! stopped `always` container runs again, a stopped `unless-stopped` one does not. The warm
//! pool's clones (`--pool 2`) outlive the killed daemon too, but the next one stops them and
//! never adopts them as containers.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use axion_tests::registry::{Compression, Registry};
use axion_tests::{eval_exports, qemus_under, require, xtask, xtask_ok, DockerCli};
use xtask::profile::Format;

/// Stops the daemon (and with it every VM) when the test ends, however it ends.
struct StopOnDrop(String);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let _ = xtask(
            &["vmd", "--stop", "--state-dir", &self.0],
            Duration::from_secs(600),
        );
        for pid in qemus_under(Path::new(&self.0)) {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
    }
}

fn start(state: &str) -> DockerCli {
    // The warm pool (its default size, said here): pooled clones are no containers and are
    // never adopted.
    let out = xtask_ok(
        &["vmd", "--detach", "--pool", "2", "--state-dir", state],
        Duration::from_secs(1800),
    )
    .unwrap();
    let v = eval_exports(&String::from_utf8_lossy(&out.stdout), &["DOCKER_HOST"]).unwrap();
    DockerCli::new(v[0].clone(), Path::new(state).join("docker-config"))
}

fn counter(cli: &DockerCli, name: &str) -> Vec<u32> {
    cli.ok(&["logs", name])
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

#[test]
fn a_daemon_restart_re_adopts_the_running_vms() {
    require!(
        axion_tests::have_qemu(),
        "qemu-system-x86_64 is not installed"
    );
    if let Some(why) = axion_tests::vmd_host_lacks() {
        require!(false, "{why}");
    }
    axion_tests::image("qemu", Format::Initramfs).expect("the qemu profile's initramfs");
    let reg = Registry::start().unwrap();
    reg.push_busybox(
        &axion_tests::busybox(),
        "busybox",
        "latest",
        Compression::Gzip,
    )
    .unwrap();
    let img = format!("{}/busybox:latest", reg.host());
    let dir = tempfile::Builder::new()
        .prefix("vmd-live-")
        .tempdir_in("/tmp")
        .unwrap();
    let state = dir.path().join("state");
    let state_s = state.to_string_lossy().into_owned();
    let _stop = StopOnDrop(state_s.clone());

    let cli = start(&state_s);
    cli.ok(&["pull", "-q", &img]);
    let script = "trap 'exit 7' TERM; i=0; while true; do echo $i; i=$((i+1)); sleep 0.5; done";
    cli.ok(&["run", "-d", "--name", "ticker", &img, "sh", "-c", script]);
    let deadline = Instant::now() + Duration::from_secs(120);
    while counter(&cli, "ticker").len() < 3 {
        assert!(
            Instant::now() < deadline,
            "no output from the container in 120 s"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // Restart policies at the daemon's next start: stopped by hand, an `always` container
    // runs again and an `unless-stopped` one does not (dockerd's rules).
    for (name, policy) in [("alw", "always"), ("uls", "unless-stopped")] {
        cli.ok(&[
            "run",
            "-d",
            "--name",
            name,
            "--restart",
            policy,
            &img,
            "sleep",
            "600",
        ]);
        cli.ok(&["stop", "-t", "0", name]);
    }
    // Two pooled clones wait beside the container's VM.
    let deadline = Instant::now() + Duration::from_secs(300);
    while !pool_full(&cli) {
        assert!(
            Instant::now() < deadline,
            "the warm pool did not fill in 300 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let qemus = qemus_under(&state);
    let ticker_pid: u32 = cli
        .ok(&["inspect", "-f", "{{.State.Pid}}", "ticker"])
        .trim()
        .parse()
        .unwrap();
    assert_eq!(qemus.len(), 3, "one container VM and two pooled: {qemus:?}");
    assert!(qemus.contains(&ticker_pid), "{qemus:?} {ticker_pid}");
    let pooled: Vec<u32> = qemus.iter().copied().filter(|p| *p != ticker_pid).collect();

    // --- The daemon dies; its VM does not --------------------------------------------------
    let pid = std::fs::read_to_string(state.join("vmd.pid")).unwrap();
    let pid = pid.trim().to_string();
    let st = Command::new("kill").args(["-9", &pid]).status().unwrap();
    assert!(st.success());
    let gone = Instant::now() + Duration::from_secs(10);
    while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < gone {
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = std::fs::remove_file(state.join("vmd.pid"));
    // Output goes on while no daemon runs.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        qemus_under(&state),
        qemus,
        "the container's QEMU must outlive the daemon"
    );

    // --- A new daemon re-adopts it ----------------------------------------------------------
    let t = Instant::now();
    let cli = start(&state_s);
    eprintln!(
        "the restarted daemon serves after {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let log = std::fs::read_to_string(state.join("vmd.log")).unwrap_or_default();
    let ps = cli.ok(&["ps", "--format", "{{.Names}} {{.Status}}"]);
    assert!(
        ps.lines().any(|l| l.starts_with("ticker Up")),
        "ticker after the daemon's restart: {ps:?}\ndaemon log:\n{log}"
    );
    // The earlier daemon's pooled clones were not adopted: stopped, and no container.
    let mut names: Vec<String> = cli
        .ok(&["ps", "-a", "--format", "{{.Names}}"])
        .lines()
        .map(str::to_string)
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["alw", "ticker", "uls"],
        "containers after the restart"
    );
    let now = qemus_under(&state);
    for p in &pooled {
        assert!(
            !now.contains(p),
            "the earlier daemon's pooled QEMU {p} still runs: {now:?}"
        );
    }
    let lines = counter(&cli, "ticker");
    let want: Vec<u32> = (0..lines.len() as u32).collect();
    assert_eq!(lines, want, "the counter's log has a gap");
    assert!(
        lines.len() >= 8,
        "lines written while no daemon ran are missing: {lines:?}"
    );
    assert_eq!(
        cli.ok(&["exec", "ticker", "echo", "inside"]).trim(),
        "inside"
    );
    let status = |name: &str| {
        cli.ok(&["inspect", "-f", "{{.State.Status}}", name])
            .trim()
            .to_string()
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while status("alw") != "running" {
        assert!(
            Instant::now() < deadline,
            "--restart always, stopped, after the daemon's start: {}",
            status("alw")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(status("uls"), "exited", "--restart unless-stopped, stopped");
    cli.ok(&["stop", "ticker"]);
    assert_eq!(cli.ok(&["wait", "ticker"]).trim(), "7");
    let ps = cli.ok(&["ps", "-a", "--format", "{{.Names}} {{.Status}}"]);
    assert!(
        ps.lines().any(|l| l.starts_with("ticker Exited (7)")),
        "ticker after stop: {ps:?}"
    );
    let after = counter(&cli, "ticker");
    assert!(after.len() >= lines.len(), "logs after the exit: {after:?}");

    // --- --stop still ends every VM ----------------------------------------------------------
    cli.ok(&["run", "-d", "--name", "last", &img, "sleep", "600"]);
    // (`cargo xtask` may build xtask first: minutes on a loaded machine.)
    xtask_ok(
        &["vmd", "--stop", "--state-dir", &state_s],
        Duration::from_secs(600),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !qemus_under(&state).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        qemus_under(&state).is_empty(),
        "QEMU left after --stop: {:?}",
        qemus_under(&state)
    );
    // Nor a VM directory (overlay, sockets), pooled clones' included.
    let left: Vec<_> = std::fs::read_dir(state.join("c"))
        .map(|r| r.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(
        left.is_empty(),
        "VM directories left after --stop: {left:?}"
    );
}

/// `docker info` says the warm pool is full (its line in the storage driver's status).
fn pool_full(cli: &DockerCli) -> bool {
    cli.ok(&["info", "--format", "{{json .DriverStatus}}"])
        .contains("2 ready of 2")
}
