//! Ready means ready: right after `cargo xtask run --detach` returns, a client's first calls
//! succeed, with no retry: `docker version` and a `docker load` of a small archive, over the
//! exported TCP + mutual TLS endpoint. Ten boots in a row (issue 22: before init waited for
//! the engine, the first `docker version` failed in ten boots out of ten with "connection
//! reset by peer"). `AXION_READY_BOOTS` sets another count.
//!
//! Its own test binary: `run_detach`'s test boots the same profile's run directory, and test
//! binaries run one after the other.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use axion_tests::{eval_exports, layout, require, xtask, xtask_ok, KillOnDrop};
use xtask::profile::Format;
use xtask::run::RunDir;

const PROFILE: &str = "qemu";

/// A one-layer `docker save` archive (one 6-byte file), small so the load itself is quick.
fn tiny_image_tar() -> Vec<u8> {
    use sha2::{Digest, Sha256};
    let file = |name: &str, data: &[u8]| {
        let mut h = tar::Header::new_ustar();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_mtime(0);
        h.set_path(name).unwrap();
        h.set_cksum();
        (h, data.to_vec())
    };
    let mut layer = tar::Builder::new(Vec::new());
    let (h, d) = file("hello", b"ready\n");
    layer.append(&h, d.as_slice()).unwrap();
    let layer = layer.into_inner().unwrap();
    let layer_id = hex::encode(Sha256::digest(&layer));
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": { "Cmd": ["/hello"] },
        "rootfs": { "type": "layers", "diff_ids": [format!("sha256:{layer_id}")] },
    })
    .to_string();
    let config_id = hex::encode(Sha256::digest(config.as_bytes()));
    let manifest = serde_json::json!([{
        "Config": format!("{config_id}.json"),
        "RepoTags": ["axion-ready-probe:latest"],
        "Layers": [format!("{layer_id}/layer.tar")]
    }])
    .to_string();
    let mut t = tar::Builder::new(Vec::new());
    for (name, data) in [
        (format!("{layer_id}/layer.tar"), layer.as_slice()),
        (format!("{config_id}.json"), config.as_bytes()),
        ("manifest.json".to_string(), manifest.as_bytes()),
    ] {
        let (h, d) = file(&name, data);
        t.append(&h, d.as_slice()).unwrap();
    }
    t.into_inner().unwrap()
}

fn docker(v: &[String], config: &std::path::Path, args: &[&str]) -> Output {
    Command::new("docker")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("DOCKER_HOST", &v[0])
        .env("DOCKER_TLS_VERIFY", &v[1])
        .env("DOCKER_CERT_PATH", &v[2])
        .env("DOCKER_CONFIG", config)
        .args(args)
        .output()
        .expect("the docker CLI runs")
}

#[test]
fn first_calls_after_run_detach_succeed_ten_boots_in_a_row() {
    require!(
        axion_tests::have_qemu(),
        "qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)"
    );
    require!(
        Command::new("docker").arg("--version").output().is_ok(),
        "the docker CLI is not installed (apt-get install docker.io or docker-cli)"
    );
    axion_tests::image(PROFILE, Format::Qcow2).expect("the qemu profile's qcow2 image");
    let boots: usize = std::env::var("AXION_READY_BOOTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let run = RunDir::new(&layout(), PROFILE);
    if std::env::var_os("AXION_READY_TIMEOUT").is_none() {
        std::env::set_var("AXION_READY_TIMEOUT", "300");
    }
    xtask_ok(&["stop", "--profile", PROFILE], Duration::from_secs(120)).unwrap();
    let work = tempfile::tempdir().unwrap();
    let archive = work.path().join("tiny.tar");
    std::fs::write(&archive, tiny_image_tar()).unwrap();
    let archive = archive.to_str().unwrap().to_string();
    let docker_config = work.path().join("docker-config");
    std::fs::create_dir_all(&docker_config).unwrap();

    let mut figures = Vec::new();
    for boot in 1..=boots {
        let docker_port = qemu::free_port().unwrap().to_string();
        let ssh_port = loop {
            let p = qemu::free_port().unwrap().to_string();
            if p != docker_port {
                break p;
            }
        };
        let started = Instant::now();
        let out = xtask(
            &[
                "run",
                "--profile",
                PROFILE,
                "--format",
                "qcow2",
                "--detach",
                "--ssh-port",
                &ssh_port,
                "--docker-port",
                &docker_port,
            ],
            Duration::from_secs(1800),
        )
        .unwrap();
        let returned = started.elapsed();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        let guard = std::fs::read_to_string(run.pid_file())
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .map(KillOnDrop);
        assert!(
            out.status.success(),
            "boot {boot}: run --detach failed: {stderr}"
        );
        let v = eval_exports(
            &String::from_utf8_lossy(&out.stdout),
            &["DOCKER_HOST", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH"],
        )
        .unwrap();
        // At once, no retry: the ready line promised the engine answers.
        let version = docker(
            &v,
            &docker_config,
            &["version", "--format", "{{.Server.Os}}"],
        );
        let load = docker(&v, &docker_config, &["load", "-i", &archive]);
        let serial = axion_tests::tail(&run.serial_log(), 40);
        assert!(
            version.status.success(),
            "boot {boot}: the first docker version after run --detach failed: {}\n\
             serial:\n{serial}",
            String::from_utf8_lossy(&version.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&version.stdout).trim(), "linux");
        assert!(
            load.status.success(),
            "boot {boot}: docker load right after run --detach failed: {}\nserial:\n{serial}",
            String::from_utf8_lossy(&load.stderr)
        );
        assert!(
            String::from_utf8_lossy(&load.stdout).contains("axion-ready-probe:latest"),
            "boot {boot}: {}",
            String::from_utf8_lossy(&load.stdout)
        );
        let text = std::fs::read_to_string(run.serial_log()).unwrap_or_default();
        let guest = text.lines().find_map(qemu::parse_ready_line);
        eprintln!(
            "boot {boot}/{boots}: run --detach returned after {:.1} s (guest ready at {:.3} s); \
             docker version and docker load succeeded at once",
            returned.as_secs_f64(),
            guest.map_or(f64::NAN, |g| g.as_secs_f64())
        );
        figures.push(returned.as_secs_f64());
        xtask_ok(&["stop", "--profile", PROFILE], Duration::from_secs(120)).unwrap();
        drop(guard);
    }
    eprintln!("{boots} boots: run --detach took {figures:.1?} s; every first call succeeded");
}
