//! The engine inside a booted qemu-profile image, driven by the real docker CLI on the host
//! over the forwarded TCP port with mutual TLS (client certificate fetched over SSH, as
//! docs/running.md tells users to do for a VM that `run --detach` did not start).

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use axion_tests::{boot_ready, image, qemu, require};
use xtask::image::Bootable;
use xtask::profile::Format;

#[test]
fn docker_cli_talks_to_the_engine_in_the_vm() {
    require!(
        axion_tests::have_qemu(),
        "qemu-system-x86_64 is not installed"
    );
    require!(
        std::path::Path::new("/usr/bin/ssh").exists(),
        "the ssh client (openssh-client) is not installed"
    );
    require!(
        axion_tests::docker_installed(),
        "the docker CLI is not installed"
    );
    check().unwrap();
}

fn check() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (key, public) = axion_tests::ssh_keygen(dir.path(), "id")?;
    let Bootable::Kernel { kernel, initrd } = image("qemu", Format::Initramfs)? else {
        bail!("the initramfs format is not a kernel and an initramfs");
    };
    let (ssh_port, docker_port) = (qemu::free_port()?, qemu::free_port()?);
    let (accel, _) = axion_tests::accel();
    let config = qemu::VmConfig::new()
        .accel(accel)
        .memory_mib(1024)
        .run_dir(dir.path().join("vm"))
        .kernel(
            &kernel,
            Some(initrd),
            format!("console=ttyS0,115200 panic=-1 axion.ssh_key=\"{public}\""),
        )
        .user_net(
            qemu::NicModel::VirtioNet,
            vec![
                qemu::PortForward::tcp(ssh_port, 22),
                qemu::PortForward::tcp(docker_port, 2376),
            ],
        );
    let (vm, _ready) = boot_ready(config)?;
    let serial = || {
        vm.serial_log()
            .map(|p| axion_tests::tail(p, 40))
            .unwrap_or_default()
    };

    // The engine makes its certificates on first start; wait until the client files exist.
    let certs = dir.path().join("certs");
    std::fs::create_dir_all(&certs)?;
    let deadline = Instant::now() + Duration::from_secs(180);
    'fetch: loop {
        let mut all = true;
        for f in ["ca", "cert", "key"] {
            let out = axion_tests::ssh(
                &key,
                ssh_port,
                &[],
                &format!("cat /var/lib/axion-engine/tls/client/{f}.pem"),
            )
            .output()?;
            if !out.status.success() || out.stdout.is_empty() {
                all = false;
                break;
            }
            std::fs::write(certs.join(format!("{f}.pem")), &out.stdout)?;
        }
        if all {
            break 'fetch;
        }
        if Instant::now() > deadline {
            bail!(
                "the engine's client certificate did not appear within 180 s\nserial:\n{}",
                serial()
            );
        }
        std::thread::sleep(Duration::from_secs(3));
    }

    let plain = axion_tests::DockerCli::new(
        format!("tcp://127.0.0.1:{docker_port}"),
        dir.path().join("docker-config"),
    );
    let tls = plain.clone().tls(&certs);
    let docker = |args: &[&str]| tls.output(args);
    let out = docker(&[
        "version",
        "--format",
        "{{.Server.APIVersion}} {{.Server.Os}}",
    ])?;
    assert!(
        out.status.success(),
        "docker version over TLS failed: {}\nserial:\n{}",
        String::from_utf8_lossy(&out.stderr),
        serial()
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1.47 linux");
    let out = docker(&["info", "--format", "{{.Containers}} {{.Images}}"])?;
    assert!(
        out.status.success(),
        "docker info: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "0 0");

    // Without the client certificate the engine refuses the connection.
    let out = plain.output(&["version", "--format", "{{.Server.APIVersion}}"])?;
    assert!(
        !out.status.success() || String::from_utf8_lossy(&out.stdout).trim().is_empty(),
        "plain TCP was served"
    );
    Ok(())
}
