//! `cargo xtask vmd --detach --tcp 127.0.0.1:PORT`, the documented way to start the
//! VM-per-container daemon, used as a user would: eval its export lines, drive it with the
//! real docker CLI over mutual TLS (pull from a registry on 127.0.0.1, run a container in a
//! cloned VM), see that a client without the certificate is refused, then `--stop` leaves
//! no daemon and no QEMU behind. (tests/e2e/vmd.rs tests the daemon itself, in-process.)

use std::path::Path;
use std::time::{Duration, Instant};

use axion_tests::registry::{free_port, Compression, Registry};
use axion_tests::{eval_exports, qemus_under, require, xtask, xtask_ok, DockerCli};
use xtask::profile::Format;

/// Stops the daemon when the test ends, however it ends.
struct StopOnDrop(String);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let _ = xtask(
            &["vmd", "--stop", "--state-dir", &self.0],
            Duration::from_secs(120),
        );
    }
}

#[test]
fn xtask_vmd_detach_over_tcp_with_mutual_tls() {
    require!(
        axion_tests::have_qemu(),
        "qemu-system-x86_64 is not installed"
    );
    require!(
        axion_tests::docker_installed(),
        "the docker CLI is not installed"
    );
    require!(
        Path::new("/usr/bin/docker-registry").exists(),
        "docker-registry is not installed"
    );
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
        .prefix("vmd-cli-")
        .tempdir_in("/tmp")
        .unwrap();
    let state = dir.path().join("state");
    let state_s = state.to_string_lossy().into_owned();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let _stop = StopOnDrop(state_s.clone());
    let out = xtask_ok(
        &["vmd", "--detach", "--tcp", &addr, "--state-dir", &state_s],
        Duration::from_secs(1800),
    )
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    for line in stdout.lines() {
        assert!(
            line.starts_with("export ") && line.contains('='),
            "not an export line on stdout: {line:?}"
        );
    }
    let v = eval_exports(
        &stdout,
        &["DOCKER_HOST", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH"],
    )
    .unwrap();
    assert_eq!(
        v,
        [
            format!("tcp://{addr}"),
            "1".to_string(),
            state.join("docker").to_string_lossy().into_owned()
        ]
    );
    let pid: u32 = std::fs::read_to_string(state.join("vmd.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();

    let config = dir.path().join("docker-config");
    // The environment the export lines set, as a user's shell would have it.
    let cli = DockerCli::new(&v[0], &config)
        .env("DOCKER_TLS_VERIFY", &v[1])
        .env("DOCKER_CERT_PATH", &v[2]);
    let ok = |args: &[&str]| {
        let o = cli.run(args);
        assert!(
            o.status.success(),
            "docker {args:?} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    assert_eq!(
        ok(&["version", "--format", "{{.Server.APIVersion}}"]).trim(),
        "1.47"
    );
    ok(&["pull", "-q", &img]);
    let t = Instant::now();
    assert_eq!(ok(&["run", "--rm", &img, "echo", "over-tls"]), "over-tls\n");
    eprintln!(
        "docker run --rm over TCP+TLS in a cloned VM: {:.1} s",
        t.elapsed().as_secs_f64()
    );
    // Piped stdin over TLS: the CLI's end of input (its CloseWrite) reaches the container.
    let mut c = cli.cmd(&["run", "-i", "--rm", &img, "cat"]);
    c.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = c.spawn().expect("docker runs");
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), b"piped-over-tls\n").unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "docker run -i over TLS: {o:?}");
    assert_eq!(String::from_utf8_lossy(&o.stdout), "piped-over-tls\n");

    // TLS without the client certificate: the handshake is refused.
    let empty = dir.path().join("no-certs");
    std::fs::create_dir_all(&empty).unwrap();
    let o = DockerCli::new(&v[0], &config)
        .env("DOCKER_TLS", "1")
        .env("DOCKER_CERT_PATH", empty.to_str().unwrap())
        .run(&["version"]);
    assert!(
        !o.status.success(),
        "a client without the certificate was served: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    // A second start on the same state is refused while the first runs.
    let again = xtask(
        &["vmd", "--detach", "--state-dir", &state_s],
        Duration::from_secs(600),
    )
    .unwrap();
    assert!(
        !again.status.success()
            && String::from_utf8_lossy(&again.stderr).contains("already serves"),
        "{again:?}"
    );

    xtask_ok(
        &["vmd", "--stop", "--state-dir", &state_s],
        Duration::from_secs(120),
    )
    .unwrap();
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "the daemon (pid {pid}) still runs after --stop"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !qemus_under(&state).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        qemus_under(&state),
        Vec::<u32>::new(),
        "QEMU processes left after --stop"
    );
    assert!(
        std::net::TcpStream::connect(&addr).is_err(),
        "{addr} still accepts connections after --stop"
    );
}
