//! One booted qemu-profile image driven as a user drives it: ssh as root with a test key, and
//! the real docker CLI on the host over mutual TLS with the client certificate the engine
//! made. The engine e2e tests (api_*, engine_net, engine_live_restore) each boot one (or one
//! disk twice) and run their checks against it.
//!
//! ```ignore
//! let dir = tempfile::tempdir()?;
//! let boot = Boot::new(dir.path())?.overlay()?.forward(8080).run_dir("vm1");
//! let g = Guest::boot(&boot)?; // certificates fetched, the engine answers
//! g.insecure_registries(&[&reg])?;
//! let id = g.ok(&["run", "-d", "busybox", "sleep", "60"])?;
//! ```

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use xtask::image::Bootable;
use xtask::profile::Format;

use crate::{qemu, DockerCli};

/// The engine's TLS port in the guest.
const DOCKER_PORT: u16 = 2376;

/// What to boot: the qemu profile's kernel and initramfs (the test's key on the kernel
/// command line), optionally with a data disk, and which guest ports the host reaches.
/// Everything a boot writes lives in `dir`: the key (`id`), the client certificate (`certs/`),
/// the CLI's config (`docker-config/`), the disk overlay (`disk.qcow2`) and the VM's run
/// folder ([`Boot::run_dir`]).
#[derive(Debug, Clone)]
pub struct Boot {
    dir: PathBuf,
    key: PathBuf,
    public: String,
    kernel: PathBuf,
    initrd: PathBuf,
    disk: Option<PathBuf>,
    ports: Vec<u16>,
    run_dir: String,
}

impl Boot {
    /// A fresh key pair in `dir` and the qemu profile's initramfs (built if missing or
    /// stale). Found once here: a second boot of the same disk uses the same files.
    pub fn new(dir: &Path) -> Result<Boot> {
        let (key, public) = crate::ssh_keygen(dir, "id")?;
        let Bootable::Kernel { kernel, initrd } = crate::image("qemu", Format::Initramfs)? else {
            bail!("the initramfs format is not a kernel and an initramfs");
        };
        Ok(Boot {
            dir: dir.to_path_buf(),
            key,
            public,
            kernel,
            initrd,
            disk: None,
            ports: vec![22, DOCKER_PORT],
            run_dir: "vm".into(),
        })
    }

    /// A data disk: a copy-on-write overlay (`qemu-img create -b`) of the qemu profile's
    /// qcow2 image at DIR/disk.qcow2, so the image itself stays untouched. Its data
    /// partition keeps /var/lib across boots of this `Boot`.
    pub fn overlay(mut self) -> Result<Boot> {
        let Bootable::Disk { path: base, .. } = crate::image("qemu", Format::Qcow2)? else {
            bail!("the qcow2 format is not a disk");
        };
        let disk = self.dir.join("disk.qcow2");
        let st = Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
            .arg(&base)
            .arg(&disk)
            .status()
            .context("running qemu-img")?;
        if !st.success() {
            bail!("qemu-img create (overlay of {}) failed", base.display());
        }
        self.disk = Some(disk);
        Ok(self)
    }

    /// Forwards a free host port to `guest_port` (besides ssh and the engine's 2376); the
    /// booted [`Guest::host_port`] says which.
    pub fn forward(mut self, guest_port: u16) -> Boot {
        self.ports.push(guest_port);
        self
    }

    /// The VM's run folder under DIR (serial log, QMP socket); `vm` unless set. Each boot of
    /// one disk gets its own, so the first boot's log stays readable.
    pub fn run_dir(mut self, name: &str) -> Boot {
        self.run_dir = name.into();
        self
    }
}

/// A booted guest whose engine answers. The VM is killed when this is dropped.
pub struct Guest {
    pub vm: qemu::Vm,
    dir: PathBuf,
    key: PathBuf,
    /// (guest port, host port) for every forward.
    ports: Vec<(u16, u16)>,
    cli: DockerCli,
}

impl Guest {
    /// Boots `boot` (1 GiB, 2 CPUs, the accelerator the KVM probe chose), waits for init's
    /// ready line, copies the engine's client certificate out over ssh and waits until the
    /// engine answers the CLI.
    pub fn boot(boot: &Boot) -> Result<Guest> {
        let mut ports = Vec::new();
        for &guest in &boot.ports {
            ports.push((guest, qemu::free_port()?));
        }
        let (accel, _) = crate::accel();
        let mut config = qemu::VmConfig::new()
            .accel(accel)
            .memory_mib(1024)
            .cpus(2)
            .run_dir(boot.dir.join(&boot.run_dir))
            .kernel(
                &boot.kernel,
                Some(boot.initrd.clone()),
                format!(
                    "console=ttyS0,115200 panic=-1 axion.ssh_key=\"{}\"",
                    boot.public
                ),
            );
        if let Some(disk) = &boot.disk {
            config = config.drive(qemu::Drive::disk(disk, qemu::DiskFormat::Qcow2));
        }
        let config = config.user_net(
            qemu::NicModel::VirtioNet,
            ports
                .iter()
                .map(|&(guest, host)| qemu::PortForward::tcp(host, guest))
                .collect(),
        );
        let (vm, _ready) = crate::boot_ready(config)?;
        let docker_port = host_port(&ports, DOCKER_PORT);
        let g = Guest {
            vm,
            dir: boot.dir.clone(),
            key: boot.key.clone(),
            cli: DockerCli::new(
                format!("tcp://127.0.0.1:{docker_port}"),
                boot.dir.join("docker-config"),
            )
            .tls(&boot.dir.join("certs")),
            ports,
        };
        g.fetch_certs()?;
        g.wait_engine()?;
        Ok(g)
    }

    /// The folder the [`Boot`] was made in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The client certificate (`ca.pem`, `cert.pem`, `key.pem`) for the engine's TLS port.
    pub fn certs(&self) -> PathBuf {
        self.dir.join("certs")
    }

    /// The host port forwarded to `guest_port`. Panics unless the boot forwarded it
    /// ([`Boot::forward`]; 22 and 2376 always are).
    pub fn host_port(&self, guest_port: u16) -> u16 {
        host_port(&self.ports, guest_port)
    }

    /// The CLI aimed at this guest's engine.
    pub fn cli(&self) -> &DockerCli {
        &self.cli
    }

    /// The last 60 lines of the serial console, for failure messages.
    pub fn serial(&self) -> String {
        self.vm
            .serial_log()
            .map(|p| crate::tail(p, 60))
            .unwrap_or_default()
    }

    /// `ssh root@guest CMD`, not run yet (to set its stdin, say).
    pub fn ssh_cmd(&self, cmd: &str) -> Command {
        crate::ssh(&self.key, self.host_port(22), &[], cmd)
    }

    /// `ssh root@guest CMD`.
    pub fn ssh(&self, cmd: &str) -> Result<Output> {
        self.ssh_cmd(cmd).output().context("running ssh")
    }

    /// [`Guest::ssh`], which must succeed; its trimmed stdout.
    pub fn ssh_ok(&self, cmd: &str) -> Result<String> {
        let o = self.ssh(cmd)?;
        if !o.status.success() {
            bail!("ssh {cmd:?} failed: {}", both(&o));
        }
        Ok(text(&o))
    }

    /// Waits (180 s at most) until the engine has made its client certificate, and copies it
    /// to [`Guest::certs`].
    fn fetch_certs(&self) -> Result<()> {
        std::fs::create_dir_all(self.certs())?;
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            let mut all = true;
            for f in ["ca", "cert", "key"] {
                let out = self.ssh(&format!("cat /var/lib/axion-engine/tls/client/{f}.pem"))?;
                if !out.status.success() || out.stdout.is_empty() {
                    all = false;
                    break;
                }
                std::fs::write(self.certs().join(format!("{f}.pem")), &out.stdout)?;
            }
            if all {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the engine's client certificate did not appear within 180 s\nserial:\n{}",
                    self.serial()
                );
            }
            std::thread::sleep(Duration::from_secs(3));
        }
    }

    /// `docker ARGS` as a command, not run yet (to stream its output, say).
    pub fn docker_cmd(&self, args: &[&str]) -> Command {
        eprintln!("$ docker {}", args.join(" "));
        self.cli.cmd(args)
    }

    /// `docker ARGS` (300 s at most).
    pub fn docker(&self, args: &[&str]) -> Result<Output> {
        eprintln!("$ docker {}", args.join(" "));
        self.cli.output(args)
    }

    /// `docker ARGS`, which must succeed; its trimmed stdout.
    pub fn ok(&self, args: &[&str]) -> Result<String> {
        let o = self.docker(args)?;
        if !o.status.success() {
            bail!(
                "docker {} failed ({}):\n{}\nserial:\n{}",
                args.join(" "),
                o.status,
                both(&o),
                self.serial()
            );
        }
        Ok(text(&o))
    }

    /// `docker ARGS`, which must fail; its trimmed stderr.
    pub fn fails(&self, args: &[&str]) -> Result<String> {
        let o = self.docker(args)?;
        if o.status.success() {
            bail!("docker {} succeeded: {}", args.join(" "), both(&o));
        }
        Ok(String::from_utf8_lossy(&o.stderr).trim().to_string())
    }

    /// `docker ARGS` with `input` on its stdin.
    pub fn with_stdin(&self, args: &[&str], input: &[u8]) -> Result<Output> {
        let mut child = self
            .docker_cmd(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("running docker")?;
        child.stdin.take().expect("piped").write_all(input)?;
        Ok(child.wait_with_output()?)
    }

    /// Waits (120 s at most) until the engine answers `docker version`.
    pub fn wait_engine(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let o = self.docker(&["version", "--format", "{{.Server.APIVersion}}"])?;
            if o.status.success() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the engine did not answer within 120 s: {}\nserial:\n{}",
                    both(&o),
                    self.serial()
                );
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    /// Writes daemon.json (on the data partition, read when the engine starts) declaring
    /// `registries` insecure: the tests' registries are plain HTTP on the host, which QEMU's
    /// user network shows the guest as 10.0.2.2.
    pub fn write_daemon_json(&self, registries: &[&str]) -> Result<()> {
        let json = serde_json::json!({ "insecure-registries": registries });
        self.ssh_ok(&format!(
            "printf '%s' '{json}' > /var/lib/axion-engine/daemon.json"
        ))?;
        Ok(())
    }

    /// [`Guest::write_daemon_json`], then a restart of the engine (init starts it again) and
    /// a wait until it answers. For a guest without containers: `pidof engine` is the
    /// service alone then, no shims.
    pub fn insecure_registries(&self, registries: &[&str]) -> Result<()> {
        self.write_daemon_json(registries)?;
        self.ssh_ok("kill $(pidof engine)")?;
        std::thread::sleep(Duration::from_secs(2));
        self.wait_engine()
    }

    /// Runs a Python script against the engine's TLS port (argv: the host port, the
    /// certificate folder); its trimmed stdout.
    pub fn python(&self, script: &str) -> Result<String> {
        let o = Command::new("python3")
            .arg("-c")
            .arg(script)
            .arg(self.host_port(DOCKER_PORT).to_string())
            .arg(self.certs())
            .output()?;
        if !o.status.success() {
            bail!("python failed: {}", both(&o));
        }
        Ok(text(&o))
    }
}

fn host_port(ports: &[(u16, u16)], guest_port: u16) -> u16 {
    match ports.iter().find(|p| p.0 == guest_port) {
        Some(&(_, host)) => host,
        None => panic!("guest port {guest_port} is not forwarded (Boot::forward)"),
    }
}

/// A command's trimmed stdout.
pub fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// A command's stdout and stderr, for failure messages.
pub fn both(o: &Output) -> String {
    format!(
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}
