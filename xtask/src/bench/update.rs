//! `cargo xtask bench --update-only`: what an in-place update costs (issue 19): the bytes
//! `axion-update apply` downloads, and the time from starting `apply` to the new version's
//! engine answering `GET /_ping` through the forwarded TLS port (where a user's docker CLI
//! reaches it).
//!
//! Set up as tests/e2e/update.rs does: a fresh signing key, the qemu profile published
//! twice (v1 and v2, `AXION_VERSION`, the key trusted through `AXION_TRUSTED_KEYS`) to
//! Debian's docker-registry on 127.0.0.1, v1's qcow2 booted (SeaBIOS, the profile's
//! hardware), then over SSH `axion-update apply --reboot`. QEMU stays up across the guest's
//! reboot (no `-no-reboot`), and the host polls `/_ping` every 100 ms; an answer counts once
//! `/info`'s `axion.version` label names v2 (the old engine may still answer while it shuts
//! down). One run: each one publishes the profile twice and boots twice.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::stats::{Unit, Value};
use crate::layout::Layout;
use crate::run;

const V1: &str = "0.1.0-bench.1";
const V2: &str = "0.1.0-bench.2";

/// The figures of one update.
struct Figures {
    bytes: u64,
    /// `apply` itself: check, download, verify, write the slot (its own figure).
    apply_secs: f64,
    /// From starting `apply` to v2's engine answering `/_ping`.
    to_ping_secs: f64,
}

pub fn update_only(layout: &Layout) -> Result<()> {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let registry = test_support::registry::Registry::start()?;
    let tmp = tempfile::tempdir()?;
    let d = tmp.path();
    let (key, public) = crate::publish::sign::keygen_files(&d.join("release"))?;
    let host = registry.host();
    for (v, dir) in [(V1, "v1"), (V2, "v2")] {
        publish(
            layout,
            v,
            &key,
            &public,
            &d.join(dir),
            &format!("{host}/axion/qemu:{dir}"),
        )?;
    }
    let kernel = run::staged_kernel(layout);
    let (accel, reason) = qemu::choose_accel(kernel.as_deref());
    eprintln!("bench: update, accelerator {} ({reason})", accel.name());
    let f = measure(layout, d, registry.port, accel)?;
    let date = super::command_line("date", &["-u", "+%Y-%m-%d %H:%M"]).unwrap_or_default();
    let text = format!(
        "{} UTC · `cargo xtask bench --update-only` · {} · load {} at start · one update of \
         the qemu profile's qcow2 (v1 to v2, the same build with another version) from \
         docker-registry on 127.0.0.1, `axion-update apply --reboot` over SSH\n\n\
         - downloaded by `apply` (kernel + initramfs): {} ({} bytes)\n\
         - `apply` itself (check, signature, download, digests, slot written): {}\n\
         - from starting `apply` to v2's engine answering `/_ping` (including the reboot): {}\n",
        date.trim(),
        accel.name().to_uppercase(),
        load.split_whitespace().next().unwrap_or("?"),
        crate::ui::human_size(f.bytes),
        f.bytes,
        Value::from_samples(&[f.apply_secs], "").cell(Unit::Seconds),
        Value::from_samples(&[f.to_ping_secs], "").cell(Unit::Seconds),
    );
    print!("{text}");
    super::write_docs_section(layout, "update-only", &text)
}

/// `cargo xtask publish --push REF --sign-key KEY` of the qemu profile as `version`.
fn publish(
    layout: &Layout,
    version: &str,
    key: &Path,
    public: &Path,
    dir: &Path,
    reference: &str,
) -> Result<()> {
    // Read by image assembly (release.rs) and publish; xtask is single-threaded here.
    std::env::set_var("AXION_VERSION", version);
    std::env::set_var("AXION_TRUSTED_KEYS", public);
    let published = crate::publish::publish_profile(layout, "qemu", dir, Some(reference), false);
    std::env::remove_var("AXION_VERSION");
    std::env::remove_var("AXION_TRUSTED_KEYS");
    let digest = published?.pushed.context("publish pushed nothing")?;
    let claims = [
        ("axion.profile".to_owned(), "qemu".to_owned()),
        ("axion.version".to_owned(), version.to_owned()),
    ]
    .into();
    let k = crate::publish::sign::load_key(key)?;
    crate::publish::sign::push_signature(reference, &digest, &k, &claims)?;
    eprintln!("bench: published and signed {reference} ({version})");
    Ok(())
}

fn measure(layout: &Layout, d: &Path, registry_port: u16, accel: qemu::Accel) -> Result<Figures> {
    let disk = d.join("disk.qcow2");
    std::fs::copy(
        d.join("v1")
            .join(format!("axion-qemu-{}.qcow2", crate::image::VERSION)),
        &disk,
    )
    .context("v1's qcow2")?;
    let ssh_key = d.join("ssh");
    let st = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "bench", "-f"])
        .arg(&ssh_key)
        .status()
        .context("cannot run ssh-keygen")?;
    if !st.success() {
        bail!("ssh-keygen failed ({st})");
    }
    let public = std::fs::read_to_string(ssh_key.with_extension("pub"))?;
    let certs = run::docker_certs::ensure(&d.join("docker"))?;
    let fw_cfg = run::first_boot::FirstBoot {
        hostname: None,
        ssh_authorized_keys: vec![public.trim().to_owned()],
        docker: Some(certs.clone()),
    }
    .write(&d.join("first-boot"))?;
    let recipes = crate::recipe::RecipeSet::load(&layout.recipes())?;
    let hw = crate::profile::load_profile(&layout.root, "qemu", &recipes)?
        .spec
        .hardware;
    let ports = run::Ports {
        ssh: qemu::free_port()?,
        docker: qemu::free_port()?,
    };
    let mut cfg = qemu::VmConfig::new()
        .accel(accel)
        .cpus(hw.cpus)
        .memory_mib(hw.memory_mib)
        .run_dir(d.join("vm"))
        .device(qemu::Device::Rng)
        .drive(qemu::Drive::disk(&disk, qemu::DiskFormat::Qcow2))
        .user_net(
            qemu::NicModel::VirtioNet,
            vec![
                qemu::PortForward::tcp(ports.ssh, 22),
                qemu::PortForward::tcp(ports.docker, 2376),
            ],
        )
        .fw_cfg_string(
            "opt/axion/cmdline",
            format!(
                "axion.update.ref=10.0.2.2:{registry_port}/axion/qemu:v2 axion.update.insecure=1"
            ),
        );
    for (name, file) in fw_cfg {
        cfg = cfg.fw_cfg_file(name, file);
    }
    let mut vm = qemu::Vm::spawn(cfg)?;
    vm.wait_ready(super::BOOT_TIMEOUT)?;
    let client = tls_client(&certs)?;
    let api = format!("https://127.0.0.1:{}", ports.docker);
    wait_version(&client, &api, V1, Duration::from_secs(120)).context("v1's engine")?;
    let start = Instant::now();
    let out = ssh(&ssh_key, ports.ssh, "axion-update apply --reboot")?;
    let (bytes, apply_secs) =
        parse_apply(&out).with_context(|| format!("apply printed no figures: {out}"))?;
    wait_version(&client, &api, V2, Duration::from_secs(300)).with_context(|| {
        format!(
            "v2's engine; serial log {}",
            vm.serial_log()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        )
    })?;
    let to_ping_secs = start.elapsed().as_secs_f64();
    let _ = vm.kill();
    eprintln!(
        "bench: update: {bytes} bytes, apply {apply_secs:.1} s, to v2's /_ping {to_ping_secs:.1} s"
    );
    Ok(Figures {
        bytes,
        apply_secs,
        to_ping_secs,
    })
}

fn tls_client(certs: &run::docker_certs::DockerCerts) -> Result<reqwest::blocking::Client> {
    let read = |n: &str| {
        std::fs::read(certs.client_dir.join(n))
            .with_context(|| format!("cannot read {n} in {}", certs.client_dir.display()))
    };
    let mut identity = read("cert.pem")?;
    identity.extend(read("key.pem")?);
    Ok(reqwest::blocking::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(certs.ca_pem.as_bytes())?)
        .identity(reqwest::Identity::from_pem(&identity)?)
        .timeout(Duration::from_secs(2))
        .build()?)
}

/// Polls `/_ping` every 100 ms until it answers and `/info` says `axion.version=version`.
fn wait_version(
    client: &reqwest::blocking::Client,
    api: &str,
    version: &str,
    timeout: Duration,
) -> Result<()> {
    let want = format!("axion.version={version}");
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let ping = client
            .get(format!("{api}/_ping"))
            .send()
            .is_ok_and(|r| r.status().is_success());
        if ping {
            let info = client
                .get(format!("{api}/info"))
                .send()
                .and_then(|r| r.text())
                .unwrap_or_default();
            if info.contains(&want) {
                return Ok(());
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!(
        "no /_ping answer from {version} within {} s",
        timeout.as_secs()
    )
}

/// `N bytes downloaded, S s` from `apply`'s line.
fn parse_apply(out: &str) -> Option<(u64, f64)> {
    let (before, after) = out.split_once(" bytes downloaded, ")?;
    let bytes = before.rsplit(['(', ' ']).next()?.parse().ok()?;
    let secs = after.split_once(" s)")?.0.parse().ok()?;
    Some((bytes, secs))
}

/// Runs `command` as root over SSH, retrying the connection while sshd starts. The session
/// of `apply --reboot` may end with the machine: its status is not looked at once the
/// command printed something.
fn ssh(key: &Path, port: u16, command: &str) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = super::ssh_command(key, port)
            .arg(command)
            .output()
            .context("cannot run ssh")?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if out.status.code() != Some(255) || !out.stdout.is_empty() {
            return Ok(text);
        }
        if Instant::now() > deadline {
            bail!("ssh `{command}`: {text}");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_apply_line_gives_bytes_and_seconds() {
        let line = "axion-update: writing 0.2 to slot B\naxion-update: 0.2 written to slot B \
                    (8464967 bytes downloaded, 0.8 s); the next boot tries it once";
        assert_eq!(super::parse_apply(line), Some((8464967, 0.8)));
        assert_eq!(super::parse_apply("refused: no signature"), None);
    }
}
