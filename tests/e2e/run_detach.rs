//! `cargo xtask run --detach` boots the default profile's image in the background, waits for
//! init's ready line and prints `export` lines a shell can eval; `cargo xtask stop` powers it
//! off through the ACPI power button and cleans up. Builds the image first if it is missing.
//! The first-boot settings `run` passes through fw_cfg take effect: the host name, the SSH
//! key, and the Docker TLS material, so the exported DOCKER_* variables work as they are.

use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use axion_tests::{eval_exports, layout, require, xtask, xtask_ok, KillOnDrop};
use xtask::profile::Format;
use xtask::run::{is_running_qemu, RunDir};

const PROFILE: &str = "qemu";

#[test]
fn run_detach_then_stop() {
    require!(
        axion_tests::have_qemu(),
        "qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)"
    );
    axion_tests::image(PROFILE, Format::Qcow2).expect("the qemu profile's qcow2 image");
    let run = RunDir::new(&layout(), PROFILE);
    // TCG on a shared 2-core machine: give the boot more than run's default 120 s.
    if std::env::var_os("AXION_READY_TIMEOUT").is_none() {
        std::env::set_var("AXION_READY_TIMEOUT", "300");
    }
    // A VM left over from an earlier run would make `run` refuse.
    xtask_ok(&["stop", "--profile", PROFILE], Duration::from_secs(120)).unwrap();

    let ssh = qemu::free_port().unwrap();
    let docker = loop {
        let p = qemu::free_port().unwrap();
        if p != ssh {
            break p;
        }
    };
    let (ssh_s, docker_s) = (ssh.to_string(), docker.to_string());
    let keys = tempfile::tempdir().unwrap();
    let (key, _) = axion_tests::ssh_keygen(keys.path(), "run-detach").unwrap();
    let public = key.with_extension("pub");
    let out = xtask(
        &[
            "run",
            "--profile",
            PROFILE,
            "--format",
            "qcow2",
            "--detach",
            "--ssh-port",
            &ssh_s,
            "--docker-port",
            &docker_s,
            "--ssh-key",
            public.to_str().unwrap(),
            "--hostname",
            "rundetach",
        ],
        Duration::from_secs(1800), // includes a rebuild if an input changed
    )
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    eprintln!("--- run --detach stderr:\n{stderr}--- stdout:\n{stdout}---");
    // Whatever happens next, no QEMU survives this test.
    let pid_guard = std::fs::read_to_string(run.pid_file())
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .map(KillOnDrop);
    assert!(out.status.success(), "run --detach failed: {stderr}");

    // stdout is shell code only; the human messages went to stderr.
    assert!(!stdout.trim().is_empty());
    for line in stdout.lines() {
        assert!(
            line.starts_with("export ") && line.contains('='),
            "not an export line on stdout: {line:?}"
        );
    }
    assert!(stderr.contains("ready"), "{stderr}");
    let v = eval_exports(
        &stdout,
        &[
            "AXION_PROFILE",
            "AXION_PID",
            "AXION_SSH_PORT",
            "AXION_DOCKER_PORT",
            "AXION_SERIAL_LOG",
            "AXION_QMP_SOCKET",
            "DOCKER_HOST",
            "DOCKER_TLS_VERIFY",
            "DOCKER_CERT_PATH",
        ],
    )
    .unwrap();
    assert_eq!(v[0], PROFILE);
    let pid: u32 = v[1].parse().unwrap();
    assert_eq!(
        pid_guard.as_ref().map(|g| g.0),
        Some(pid),
        "pid file and AXION_PID differ"
    );
    assert_eq!(v[2], ssh_s);
    assert_eq!(v[3], docker_s);
    assert_eq!(v[4], run.serial_log().to_string_lossy());
    assert_eq!(v[5], run.qmp_socket().to_string_lossy());

    // It really runs in the background, booted to init's ready line, with the forwards open.
    assert!(
        is_running_qemu(pid),
        "QEMU {pid} is not running after run --detach"
    );
    let serial = std::fs::read_to_string(run.serial_log()).unwrap();
    assert!(
        serial.lines().any(|l| qemu::parse_ready_line(l).is_some()),
        "no ready line in the serial log:\n{serial}"
    );
    for port in [ssh, docker] {
        TcpStream::connect(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("nothing listens on the forwarded port {port}: {e}"));
    }
    // The docker CLI works with exactly the exported variables: mutual TLS with the
    // certificates the host made and the guest got through fw_cfg. The ready line waits for
    // the engine (ready_boots.rs asserts the first call succeeds); the retries stay for a
    // slow TLS handshake on a loaded machine.
    assert_eq!(v[6], format!("tcp://127.0.0.1:{docker}"));
    assert_eq!(v[7], "1");
    assert_eq!(v[8], run.docker_certs().to_string_lossy());
    let docker_config = tempfile::tempdir().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let version = loop {
        let out = Command::new("docker")
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("DOCKER_HOST", &v[6])
            .env("DOCKER_TLS_VERIFY", &v[7])
            .env("DOCKER_CERT_PATH", &v[8])
            .env("DOCKER_CONFIG", docker_config.path())
            .args(["version", "--format", "{{.Server.Os}}/{{.Server.Arch}}"])
            .output()
            .expect("the docker CLI runs");
        if out.status.success() || Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(Duration::from_secs(2));
    };
    assert!(
        version.status.success(),
        "docker version with the exported variables failed: {}\nserial:\n{}",
        String::from_utf8_lossy(&version.stderr),
        axion_tests::tail(&run.serial_log(), 40)
    );
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        "linux/amd64"
    );
    // The SSH key and host name from the first-boot settings.
    let ssh_out = axion_tests::ssh(&key, ssh, &[], "hostname")
        .output()
        .expect("ssh runs");
    assert!(
        ssh_out.status.success(),
        "ssh with the --ssh-key key failed: {}",
        String::from_utf8_lossy(&ssh_out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&ssh_out.stdout).trim(), "rundetach");

    // A second run of the same profile is refused while this one runs.
    let again = xtask(
        &["run", "--profile", PROFILE, "--detach"],
        Duration::from_secs(120),
    )
    .unwrap();
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already running"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );

    // stop: the power button; the guest powers off by itself (no kill) and the files go.
    let stop = xtask(&["stop", "--profile", PROFILE], Duration::from_secs(120)).unwrap();
    let stop_err = String::from_utf8_lossy(&stop.stderr);
    assert!(
        stop.status.success(),
        "stop failed: {stop_err}\nserial:\n{}",
        axion_tests::tail(&run.serial_log(), 30)
    );
    assert!(stop_err.contains("powered off"), "{stop_err}");
    assert!(!is_running_qemu(pid), "QEMU {pid} still runs after stop");
    assert!(
        !run.pid_file().exists(),
        "{} left behind",
        run.pid_file().display()
    );
    assert!(
        !run.qmp_socket().exists(),
        "{} left behind",
        run.qmp_socket().display()
    );
    drop(pid_guard);
}
