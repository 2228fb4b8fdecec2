//! Live-restore of the engine inside a booted qemu-profile image: containers outlive the
//! engine. One VM, driven by the real docker CLI on the host over mutual TLS and by ssh:
//! - a busybox container prints a counter every 0.2 s and exits 7; the engine is killed with
//!   `kill -9` while it runs, init restarts the engine, and the container is still Up, its
//!   log has every line (those written while the engine was down too), `docker wait` gives 7;
//! - a second container survives the kill and then a plain `kill` (SIGTERM outside a
//!   shutdown, the image runs the engine with `--live-restore`); `exec` and `stop` work on it;
//! - the VM's power-off still stops containers: the engine says so on the console.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use axion_tests::guest::{text, Boot, Guest};
use axion_tests::registry::{Compression, Registry};
use axion_tests::require;

/// The counter: lines `0` .. `COUNT-1`, one every 0.2 s, then exit 7.
const COUNT: u32 = 150;

#[test]
fn containers_outlive_a_killed_and_a_restarted_engine() {
    if let Some(why) = axion_tests::vm_test_host_lacks() {
        require!(false, "{why}");
    }
    check().unwrap();
}

/// What this file asks of the guest besides the shared harness.
trait LiveRestore {
    fn engine_pid(&self) -> Result<String>;
    fn wait_new_engine(&self, old: &str) -> Result<String>;
    fn status(&self, name: &str) -> Result<String>;
    fn counter(&self, name: &str) -> Result<Vec<u32>>;
}

impl LiveRestore for Guest {
    /// The engine's pid in the VM (the service, not a shim: shims are `engine __run`).
    fn engine_pid(&self) -> Result<String> {
        self.ssh_ok("for p in $(pidof engine); do grep -q __ /proc/$p/cmdline || echo $p; done")
    }

    /// Waits for an engine other than `old` to answer.
    fn wait_new_engine(&self, old: &str) -> Result<String> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let pid = self.engine_pid().unwrap_or_default();
            if !pid.is_empty() && pid != old {
                self.wait_engine()?;
                return Ok(pid);
            }
            if Instant::now() > deadline {
                bail!(
                    "init did not start the engine again within 120 s\nserial:\n{}",
                    self.serial()
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn status(&self, name: &str) -> Result<String> {
        self.ok(&[
            "ps",
            "-a",
            "--filter",
            &format!("name={name}"),
            "--format",
            "{{.Status}}",
        ])
    }

    /// The counter lines in the container's log.
    fn counter(&self, name: &str) -> Result<Vec<u32>> {
        let out = self.ok(&["logs", name])?;
        Ok(out.lines().filter_map(|l| l.trim().parse().ok()).collect())
    }
}

fn check() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let boot = Boot::new(dir.path())?;
    let registry = Registry::start()?;
    registry.push_busybox(
        &axion_tests::busybox(),
        "busybox",
        "latest",
        Compression::Gzip,
    )?;
    let reg = format!("10.0.2.2:{}", registry.port);
    let mut g = Guest::boot(&boot)?;
    // The host's registry is plain HTTP at 10.0.2.2: declared insecure in daemon.json, read
    // when the engine starts (this restart has no containers to keep).
    let first = g.engine_pid()?;
    g.write_daemon_json(&[&reg])?;
    g.ssh_ok(&format!("kill {first}"))?;
    g.wait_new_engine(&first)?;
    let image = format!("{reg}/busybox:latest");
    g.ok(&["pull", &image])?;
    g.ok(&["tag", &image, "busybox"])?;

    let script =
        format!("i=0; while [ $i -lt {COUNT} ]; do echo $i; i=$((i+1)); sleep 0.2; done; exit 7");
    g.ok(&[
        "run", "-d", "--name", "counter", "busybox", "sh", "-c", &script,
    ])?;
    g.ok(&["run", "-d", "--name", "idle", "busybox", "sleep", "600"])?;
    // Some output before the kill.
    let deadline = Instant::now() + Duration::from_secs(60);
    while g.counter("counter")?.len() < 5 {
        if Instant::now() > deadline {
            bail!(
                "the counter printed nothing in 60 s\nserial:\n{}",
                g.serial()
            );
        }
        std::thread::sleep(Duration::from_millis(300));
    }

    // --- kill -9 of the engine: init restarts it, the containers run on --------------------
    let pid = g.engine_pid()?;
    let before = g.counter("counter")?.len();
    let killed_at = Instant::now();
    g.ssh_ok(&format!("kill -9 {pid}"))?;
    let pid2 = g.wait_new_engine(&pid)?;
    eprintln!(
        "engine {pid} killed, engine {pid2} answers after {:.1} s",
        killed_at.elapsed().as_secs_f64()
    );
    for name in ["counter", "idle"] {
        let st = g.status(name)?;
        assert!(
            st.starts_with("Up"),
            "{name} after the engine's kill -9: {st:?}\nserial:\n{}",
            g.serial()
        );
    }
    let after = g.counter("counter")?;
    assert!(
        after.len() > before,
        "no new lines after the restart: {before} before, {after:?}"
    );
    // `logs -f` follows the adopted container (stops at our timeout, with new lines).
    let follow = g.docker_cmd(&["logs", "-f", "--tail", "1", "counter"]);
    let followed = axion_tests::run_with_timeout(follow, Duration::from_secs(4))
        .map(|o| text(&o))
        .unwrap_or_default();
    eprintln!("logs -f for 4 s: {followed:?}");

    // --- SIGTERM outside a shutdown (live-restore): the containers run on -------------------
    g.ssh_ok(&format!("kill {pid2}"))?;
    let pid3 = g.wait_new_engine(&pid2)?;
    eprintln!("engine {pid2} stopped with SIGTERM, engine {pid3} answers");
    for name in ["counter", "idle"] {
        let st = g.status(name)?;
        assert!(
            st.starts_with("Up"),
            "{name} after the engine's SIGTERM: {st:?}\nserial:\n{}",
            g.serial()
        );
    }
    // exec joins the adopted container, stop ends it.
    assert_eq!(g.ok(&["exec", "idle", "echo", "inside"])?, "inside");
    g.ok(&["stop", "-t", "1", "idle"])?;
    let st = g.status("idle")?;
    assert!(st.starts_with("Exited"), "idle after stop: {st:?}");

    // --- The counter ends with its own code; its log has no gap -----------------------------
    let code = g.ok(&["wait", "counter"])?;
    assert_eq!(code, "7", "docker wait of the adopted container");
    let st = g.status("counter")?;
    assert!(st.starts_with("Exited (7)"), "counter at the end: {st:?}");
    let lines = g.counter("counter")?;
    let want: Vec<u32> = (0..COUNT).collect();
    assert_eq!(
        lines, want,
        "the log must hold every line, those written while the engine was down too"
    );
    let ins = g.ok(&["inspect", "--format", "{{.State.ExitCode}}", "counter"])?;
    assert_eq!(ins, "7");

    // --- The VM's power-off still stops containers -------------------------------------------
    g.ok(&["run", "-d", "--name", "last", "busybox", "sleep", "600"])?;
    let _ = g.ssh("poweroff");
    let stopped = g.vm.wait_for_line(
        "(the machine shuts down), stopping containers",
        Duration::from_secs(120),
    );
    if let Err(e) = stopped {
        bail!(
            "the engine did not stop its containers at the power-off: {e}\nserial:\n{}",
            g.serial()
        );
    }
    Ok(())
}
