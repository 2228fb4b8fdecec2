//! `cargo xtask run` and `cargo xtask stop`: boot a built image in QEMU, in the foreground
//! with the serial console on the terminal, or detached in the background; power it off.
//!
//! Files of a profile's VM live in `out/PROFILE/run/` (removed by `clean`):
//!
//! | file            | what                                                                  |
//! |-----------------|-----------------------------------------------------------------------|
//! | `disk.qcow2`    | copy-on-write overlay over the built image: the image stays pristine, the guest's writes (its /var/lib) persist between runs |
//! | `disk.base`     | which image the overlay belongs to (path, size, mtime); a rebuilt image gets a fresh overlay |
//! | `OVMF_VARS.fd`  | the VM's UEFI variable store (`AXION_FIRMWARE=profile`, efi profiles)  |
//! | `serial.log`    | the serial console (also written during interactive runs)              |
//! | `qmp.sock`      | QMP monitor socket (`stop` uses it, for interactive runs too)          |
//! | `qemu.pid`      | QEMU's process id while it runs                                       |
//! | `qemu.log`      | QEMU's own messages (detached runs)                                    |
//! | `docker/`       | the Docker TLS certificates: a CA, the engine's server certificate, and the client side (`DOCKER_CERT_PATH`) |
//! | `first-boot/`   | `user-data` and `meta-data`, handed to the guest through fw_cfg         |
//!
//! Decisions: the format defaults to qcow2 if built, else raw, iso, vmdk, initramfs; an ISO
//! boots as a read-only CD-ROM (no persistent state); initramfs by direct kernel boot with the
//! profile's command line. Ports: 127.0.0.1:2222 → guest 22 (SSH) and 127.0.0.1:2376 → 2376
//! (Docker API), a free port instead when one is taken (and we say so). The accelerator comes
//! from `qemu::choose_accel` (TCG unless a KVM probe boots a kernel; `AXION_ACCEL=tcg` skips
//! the probe).
//!
//! First-boot settings ([`first_boot`]): the host name (`--hostname`), an SSH key
//! (`--ssh-key`, else the user's own public key) and the engine's TLS material go to the guest
//! through fw_cfg, so `run --detach` can print DOCKER_HOST/DOCKER_TLS_VERIFY/DOCKER_CERT_PATH
//! and the next `docker` command on the host reaches the VM over mutual TLS.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};

use crate::image::Bootable;
use crate::layout::Layout;
use crate::profile::{self, DiskController, Firmware, Format, Nic, Profile};
use crate::recipe::RecipeSet;

pub mod docker_certs;
pub mod first_boot;

/// `cargo xtask run`'s options.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    #[arg(long, default_value = "qemu")]
    pub profile: String,
    #[arg(long)]
    pub format: Option<Format>,
    /// Boot in the background, wait for the ready line, print `export` lines.
    #[arg(long)]
    pub detach: bool,
    /// Host port forwarded to the guest's SSH (default 2222, or a free one if busy).
    #[arg(long)]
    pub ssh_port: Option<u16>,
    /// Host port forwarded to the guest's Docker API (default 2376, or a free one if busy).
    #[arg(long)]
    pub docker_port: Option<u16>,
    /// SSH public key for root in the guest (default: ~/.ssh/id_ed25519.pub, id_ecdsa.pub
    /// or id_rsa.pub, the first that exists).
    #[arg(long)]
    pub ssh_key: Option<PathBuf>,
    /// Host name for the guest (a first-boot setting).
    #[arg(long)]
    pub hostname: Option<String>,
}

/// `cargo xtask stop`'s options.
#[derive(Debug, Clone, clap::Args)]
pub struct StopArgs {
    #[arg(long, default_value = "qemu")]
    pub profile: String,
}

const DEFAULT_SSH_PORT: u16 = 2222;
const DEFAULT_DOCKER_PORT: u16 = 2376;
const GUEST_SSH_PORT: u16 = 22;
const GUEST_DOCKER_PORT: u16 = 2376;

/// The files of a profile's VM under `out/PROFILE/run/`.
#[derive(Debug, Clone)]
pub struct RunDir {
    pub dir: PathBuf,
}

impl RunDir {
    pub fn new(layout: &Layout, profile: &str) -> RunDir {
        RunDir {
            dir: layout.out(profile).join("run"),
        }
    }
    pub fn overlay(&self) -> PathBuf {
        self.dir.join("disk.qcow2")
    }
    pub fn overlay_base(&self) -> PathBuf {
        self.dir.join("disk.base")
    }
    pub fn uefi_vars(&self) -> PathBuf {
        self.dir.join("OVMF_VARS.fd")
    }
    pub fn serial_log(&self) -> PathBuf {
        self.dir.join("serial.log")
    }
    pub fn qmp_socket(&self) -> PathBuf {
        self.dir.join("qmp.sock")
    }
    pub fn pid_file(&self) -> PathBuf {
        self.dir.join("qemu.pid")
    }
    /// The Docker TLS certificates; the client side of them is a `DOCKER_CERT_PATH`.
    pub fn docker_certs(&self) -> PathBuf {
        self.dir.join("docker")
    }
    pub fn first_boot(&self) -> PathBuf {
        self.dir.join("first-boot")
    }

    /// The pid of a QEMU that is running for this profile, if any; removes stale files.
    pub fn running_pid(&self) -> Option<u32> {
        let pid: u32 = std::fs::read_to_string(self.pid_file())
            .ok()?
            .trim()
            .parse()
            .ok()?;
        if is_running_qemu(pid) {
            Some(pid)
        } else {
            self.remove_runtime_files();
            None
        }
    }

    /// Removes the pid file and the QMP socket (after QEMU is gone).
    pub fn remove_runtime_files(&self) {
        let _ = std::fs::remove_file(self.pid_file());
        let _ = std::fs::remove_file(self.qmp_socket());
    }
}

/// Creates (or keeps) the copy-on-write overlay over `image` in the run directory. If the
/// image changed since the overlay was made, the overlay is recreated: its blocks would no
/// longer match the new base. Returns whether a new overlay was made.
pub fn ensure_overlay(run: &RunDir, image: &Path, format: qemu::DiskFormat) -> Result<bool> {
    let image = image
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", image.display()))?;
    let identity = image_identity(&image)?;
    let overlay = run.overlay();
    if overlay.exists()
        && std::fs::read_to_string(run.overlay_base()).ok().as_deref() == Some(identity.as_str())
    {
        return Ok(false);
    }
    let _ = std::fs::remove_file(&overlay);
    let out = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", format.name(), "-b"])
        .arg(&image)
        .arg(&overlay)
        .output()
        .context("cannot run qemu-img (Debian: apt-get install qemu-utils)")?;
    if !out.status.success() {
        bail!(
            "qemu-img create of the overlay {} over {} failed: {}",
            overlay.display(),
            image.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    std::fs::write(run.overlay_base(), identity)
        .with_context(|| format!("cannot write {}", run.overlay_base().display()))?;
    Ok(true)
}

/// What identifies an image's bytes: its sha256 from the SHA256SUMS file image assembly
/// writes beside it (so a bit-identical rebuild keeps the overlay), else size and mtime.
fn image_identity(image: &Path) -> Result<String> {
    let meta =
        std::fs::metadata(image).with_context(|| format!("cannot read {}", image.display()))?;
    let name = image
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let sums = image.with_file_name("SHA256SUMS");
    let hash = std::fs::read_to_string(&sums).ok().and_then(|text| {
        text.lines().find_map(|l| {
            let (h, n) = l.split_once(char::is_whitespace)?;
            (n.trim_start().trim_start_matches('*') == name).then(|| h.to_string())
        })
    });
    Ok(match hash {
        Some(h) => format!("{}\nsha256 {h}\n", image.display()),
        None => {
            let mtime = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            format!("{}\nsize {} mtime {mtime}\n", image.display(), meta.len())
        }
    })
}

/// The newest staged kernel (`$AXION_CACHE/packages/linux-*/tree/boot/vmlinuz`), for the KVM
/// probe.
pub fn staged_kernel(layout: &Layout) -> Option<PathBuf> {
    std::fs::read_dir(layout.packages())
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("linux-"))
        .map(|e| e.path().join("tree/boot/vmlinuz"))
        .filter(|p| p.is_file())
        .max_by_key(|p| {
            std::fs::metadata(p)
                .and_then(|m| m.modified())
                .unwrap_or(SystemTime::UNIX_EPOCH)
        })
}

/// The ports a run uses on 127.0.0.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    pub ssh: u16,
    pub docker: u16,
}

fn pick_port(wanted: Option<u16>, default: u16, what: &str) -> Result<u16> {
    match wanted {
        // Asked for explicitly: that one or an error.
        Some(p) => {
            std::net::TcpListener::bind(("127.0.0.1", p))
                .with_context(|| format!("port {p} for {what} is busy on 127.0.0.1"))?;
            Ok(p)
        }
        None => {
            let p = qemu::port_or_free(default).context("cannot find a free port on 127.0.0.1")?;
            if p != default {
                eprintln!(
                    "note: 127.0.0.1:{default} is busy, {what} is forwarded from \
                     127.0.0.1:{p} instead"
                );
            }
            Ok(p)
        }
    }
}

/// The firmware a boot of `bootable` gets: the fastest that boots it. Measured under TCG on
/// the shared 2-core machine, QEMU start to `/_ping` in one run (2026-12-02, load 3-4): a
/// direct kernel with qboot 4.3 s, SeaBIOS 5.6 s, OVMF 12.0 s, the `microvm` machine 5.5 s
/// (it also needs `lpj=`/`tsc_early_khz=` and keeps time by jiffies: not used); the qcow2
/// disk through GRUB with SeaBIOS 7.8 s, OVMF 11.4 s. So a direct kernel (the initramfs
/// format) gets qboot (else SeaBIOS), a disk or ISO SeaBIOS, whatever the profile's
/// firmware: the images boot under BIOS and UEFI alike (image_boot checks both), and
/// `AXION_FIRMWARE=profile` boots with the profile's own firmware (OVMF for `efi`).
pub fn firmware(profile: &Profile, bootable: &Bootable, run: &RunDir) -> qemu::Firmware {
    let uefi = || qemu::Firmware::Uefi {
        code: qemu::OVMF_CODE.into(),
        vars_template: qemu::OVMF_VARS.into(),
        vars: Some(run.uefi_vars()),
    };
    if std::env::var("AXION_FIRMWARE").as_deref() == Ok("profile") {
        return match profile.spec.hardware.firmware {
            Firmware::Efi => uefi(),
            Firmware::Bios => qemu::Firmware::Bios,
        };
    }
    match bootable {
        Bootable::Kernel { .. } if Path::new(qemu::QBOOT).is_file() => qemu::Firmware::Qboot,
        Bootable::Kernel { .. } | Bootable::Disk { .. } | Bootable::Iso(_) => qemu::Firmware::Bios,
    }
}

/// What `run` says it boots with.
pub fn firmware_name(firmware: &qemu::Firmware) -> &'static str {
    match firmware {
        qemu::Firmware::Uefi { .. } => "UEFI (OVMF)",
        qemu::Firmware::Bios => "BIOS (SeaBIOS)",
        qemu::Firmware::Qboot => "qboot (direct kernel boot)",
    }
}

/// The QEMU configuration for a profile and an image, without serial/QMP choices.
pub fn vm_config(
    profile: &Profile,
    bootable: &Bootable,
    run: &RunDir,
    ports: Ports,
    accel: qemu::Accel,
) -> qemu::VmConfig {
    let hw = &profile.spec.hardware;
    let mut c = qemu::VmConfig::new()
        .name(format!("axion-{}", profile.name()))
        .accel(accel)
        .cpus(hw.cpus)
        .memory_mib(hw.memory_mib)
        .run_dir(&run.dir)
        .qmp_socket(run.qmp_socket());
    c = c.firmware(firmware(profile, bootable, run));
    // The guest's CRNG ready at once (see qemu::Device::Rng): nothing waits for entropy.
    c = c.device(qemu::Device::Rng);
    // A hardware watchdog init pets: a hung guest (or an update's trial that is never marked
    // good) resets, and GRUB falls back to the previous slot.
    c = c.device(qemu::Device::Watchdog);
    let interface = match hw.disk_controller {
        DiskController::Virtio => qemu::DiskInterface::Virtio,
        DiskController::Pvscsi => qemu::DiskInterface::Pvscsi,
        DiskController::Sata => qemu::DiskInterface::Sata,
    };
    c = match bootable {
        Bootable::Disk { .. } => {
            c.drive(qemu::Drive::disk(run.overlay(), qemu::DiskFormat::Qcow2).interface(interface))
        }
        Bootable::Iso(iso) => c.drive(qemu::Drive::cdrom(iso)),
        Bootable::Kernel { kernel, initrd } => c.kernel(
            kernel,
            Some(initrd.clone()),
            profile.spec.profile.cmdline.clone(),
        ),
    };
    let nic = match hw.nic {
        Nic::Virtio => qemu::NicModel::VirtioNet,
        Nic::Vmxnet3 => qemu::NicModel::Vmxnet3,
        Nic::E1000 => qemu::NicModel::E1000,
    };
    c.user_net(
        nic,
        vec![
            qemu::PortForward::tcp(ports.ssh, GUEST_SSH_PORT),
            qemu::PortForward::tcp(ports.docker, GUEST_DOCKER_PORT),
        ],
    )
}

/// The `export` lines `run --detach` prints for `eval "$(cargo xtask run --detach)"`: the
/// VM's facts, and the docker CLI's variables when the image has the engine.
pub fn export_lines(
    profile: &Profile,
    run: &RunDir,
    pid: u32,
    ports: Ports,
    docker: bool,
) -> Vec<String> {
    let q = |s: &str| qemu::shell_quote(s);
    let mut lines = vec![
        format!("export AXION_PROFILE={}", q(profile.name())),
        format!("export AXION_PID={pid}"),
        format!("export AXION_SSH_PORT={}", ports.ssh),
        format!("export AXION_DOCKER_PORT={}", ports.docker),
        format!(
            "export AXION_SERIAL_LOG={}",
            q(&run.serial_log().to_string_lossy())
        ),
        format!(
            "export AXION_QMP_SOCKET={}",
            q(&run.qmp_socket().to_string_lossy())
        ),
    ];
    if docker {
        lines.push(format!(
            "export DOCKER_HOST=tcp://127.0.0.1:{}",
            ports.docker
        ));
        lines.push("export DOCKER_TLS_VERIFY=1".to_string());
        lines.push(format!(
            "export DOCKER_CERT_PATH={}",
            q(&run.docker_certs().to_string_lossy())
        ));
    }
    lines
}

/// How long `--detach` waits for the ready line (`AXION_READY_TIMEOUT` seconds, default 120).
fn ready_timeout() -> Duration {
    let secs = std::env::var("AXION_READY_TIMEOUT")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120);
    Duration::from_secs(secs)
}

/// `cargo xtask run`.
pub fn run(layout: &Layout, opts: &Args) -> Result<()> {
    let prepared = prepare(layout, opts)?;
    if opts.detach {
        let booted = detach(prepared)?;
        for line in export_lines(
            &booted.profile,
            &booted.run,
            booted.pid,
            booted.ports,
            booted.has_engine,
        ) {
            println!("{line}");
        }
        Ok(())
    } else {
        foreground(&prepared.run, prepared.config)
    }
}

/// A VM that `run --detach` (or [`boot_detached`]) left running in the background.
#[derive(Debug, Clone)]
pub struct Booted {
    pub profile: Profile,
    pub run: RunDir,
    pub pid: u32,
    pub ports: Ports,
    /// The image has the container engine (the Docker API is forwarded on `ports.docker`).
    pub has_engine: bool,
}

/// Boots the profile's image in the background, as `cargo xtask run --detach` does, and
/// returns once init's ready line is seen, without printing the export lines.
pub fn boot_detached(layout: &Layout, opts: &Args) -> Result<Booted> {
    detach(prepare(layout, opts)?)
}

/// Everything a boot needs, ready to start QEMU.
struct Prepared {
    profile: Profile,
    run: RunDir,
    config: qemu::VmConfig,
    ports: Ports,
    has_engine: bool,
}

fn prepare(layout: &Layout, opts: &Args) -> Result<Prepared> {
    crate::doctor::ensure(&[crate::doctor::Need::Run])?;
    let recipes = RecipeSet::load(&layout.recipes())?;
    let profile = profile::load_profile(&layout.root, &opts.profile, &recipes)?;
    let run = RunDir::new(layout, profile.name());
    if let Some(pid) = run.running_pid() {
        bail!(
            "a VM of profile '{}' is already running (pid {pid}); stop it with `cargo xtask stop \
             --profile {}`",
            profile.name(),
            profile.name()
        );
    }
    let (format, bootable) = crate::image::ensure(layout, &profile, opts.format)?;
    std::fs::create_dir_all(&run.dir)
        .with_context(|| format!("cannot create {}", run.dir.display()))?;
    let image_desc = match &bootable {
        Bootable::Disk { path, format } => {
            if ensure_overlay(&run, path, *format)? {
                eprintln!(
                    "new disk overlay {} over {} (guest state starts fresh)",
                    run.overlay().display(),
                    path.display()
                );
            }
            path.display().to_string()
        }
        Bootable::Iso(p) => p.display().to_string(),
        Bootable::Kernel { kernel, initrd } => {
            format!("{} + {}", kernel.display(), initrd.display())
        }
    };
    let ports = Ports {
        ssh: pick_port(opts.ssh_port, DEFAULT_SSH_PORT, "SSH")?,
        docker: pick_port(opts.docker_port, DEFAULT_DOCKER_PORT, "the Docker API")?,
    };
    let probe_kernel = match &bootable {
        Bootable::Kernel { kernel, .. } => Some(kernel.clone()),
        _ => staged_kernel(layout),
    };
    let (accel, why) = qemu::choose_accel(probe_kernel.as_deref());
    let firmware = firmware_name(&firmware(&profile, &bootable, &run));
    eprintln!("booting {image_desc} ({format}, {firmware}, {why})");
    eprintln!(
        "forwarded: SSH 127.0.0.1:{} -> 22, Docker API 127.0.0.1:{} -> 2376",
        ports.ssh, ports.docker
    );
    let mut config = vm_config(&profile, &bootable, &run, ports, accel);
    let has_engine = profile.spec.profile.packages.iter().any(|p| p == "engine");
    for (name, file) in first_boot_settings(&run, opts, has_engine)?.write(&run.first_boot())? {
        config = config.fw_cfg_file(name, file);
    }
    Ok(Prepared {
        profile,
        run,
        config,
        ports,
        has_engine,
    })
}

/// The settings this run hands the guest: see [`first_boot`].
fn first_boot_settings(
    run: &RunDir,
    opts: &Args,
    has_engine: bool,
) -> Result<first_boot::FirstBoot> {
    let key = first_boot::ssh_key(opts.ssh_key.as_deref())?;
    match &key {
        Some(k) => eprintln!(
            "SSH: root may log in with {}",
            k.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
        ),
        None => eprintln!(
            "SSH: no public key found in ~/.ssh (id_ed25519.pub, id_ecdsa.pub, \
             id_rsa.pub); pass --ssh-key FILE to log in"
        ),
    }
    let docker = if has_engine {
        Some(docker_certs::ensure(&run.docker_certs())?)
    } else {
        None
    };
    Ok(first_boot::FirstBoot {
        hostname: opts.hostname.clone(),
        ssh_authorized_keys: key.into_iter().collect(),
        docker,
    })
}

fn foreground(run: &RunDir, config: qemu::VmConfig) -> Result<()> {
    let config = config
        .serial(qemu::Serial::Stdio {
            log: Some(run.serial_log()),
        })
        .resolve(&run.dir);
    config.prepare()?;
    eprintln!(
        "serial console below; quit QEMU with Ctrl-A X (Ctrl-A C: QEMU monitor), or power \
         off with `cargo xtask stop` from another terminal"
    );
    let mut child = config
        .command()?
        .spawn()
        .with_context(|| format!("cannot start {}", config.program.display()))?;
    std::fs::write(run.pid_file(), child.id().to_string())
        .with_context(|| format!("cannot write {}", run.pid_file().display()))?;
    let status = child.wait().context("waiting for QEMU")?;
    run.remove_runtime_files();
    if !status.success() {
        bail!(
            "QEMU exited with {status} (serial log: {})",
            run.serial_log().display()
        );
    }
    Ok(())
}

fn detach(prepared: Prepared) -> Result<Booted> {
    let Prepared {
        profile,
        run,
        config,
        ports,
        has_engine,
    } = prepared;
    let config = config.serial_file(run.serial_log());
    let mut vm = qemu::Vm::spawn(config)?;
    std::fs::write(run.pid_file(), vm.pid().to_string())
        .with_context(|| format!("cannot write {}", run.pid_file().display()))?;
    let timeout = ready_timeout();
    eprintln!(
        "waiting up to {} s for init's ready line (serial console: {})",
        timeout.as_secs(),
        run.serial_log().display()
    );
    let ready = match vm.wait_ready(timeout) {
        Ok(r) => r,
        Err(e) => {
            drop(vm); // kills QEMU
            run.remove_runtime_files();
            return Err(anyhow::Error::new(e).context(format!(
                "the VM of profile '{}' did not come up",
                profile.name()
            )));
        }
    };
    // The ready line means the required services answer, unless init gave up on one.
    let serial = std::fs::read_to_string(run.serial_log()).unwrap_or_default();
    let not_ready: Vec<&str> = serial
        .lines()
        .filter(|l| l.contains(qemu::NOT_READY_PREFIX))
        .collect();
    if !not_ready.is_empty() {
        drop(vm); // kills QEMU
        run.remove_runtime_files();
        bail!(
            "the VM of profile '{}' booted, but a required service does not answer:\n{}\n\
             serial console (last lines):\n{}",
            profile.name(),
            not_ready.join("\n"),
            tail(&run.serial_log(), 30)
        );
    }
    let pid = vm.pid();
    vm.detach();
    eprintln!(
        "ready: {:?} after {:.1} s on the host; running in the background (pid {pid}); stop it \
         with `cargo xtask stop --profile {}`",
        ready.line,
        ready.host.as_secs_f64(),
        profile.name()
    );
    Ok(Booted {
        profile,
        run,
        pid,
        ports,
        has_engine,
    })
}

/// How long `stop` waits for the guest to power off before it ends QEMU.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// `cargo xtask stop`: the ACPI power button, then wait for QEMU to exit.
pub fn stop(layout: &Layout, profile: &str) -> Result<()> {
    let run = RunDir::new(layout, profile);
    let Some(pid) = run.running_pid() else {
        eprintln!(
            "no VM of profile '{profile}' is running (no live QEMU in {})",
            run.pid_file().display()
        );
        return Ok(());
    };
    let start = Instant::now();
    let mut qmp = qemu::Qmp::connect(&run.qmp_socket())
        .with_context(|| format!("cannot talk to QEMU (pid {pid})"))?;
    qmp.system_powerdown()
        .context("pressing the power button")?;
    eprintln!(
        "pressed the power button of '{profile}' (pid {pid}); waiting up to {} s for it to \
         power off",
        STOP_TIMEOUT.as_secs()
    );
    if wait_gone(pid, STOP_TIMEOUT) {
        run.remove_runtime_files();
        eprintln!(
            "stopped: the guest powered off in {:.1} s",
            start.elapsed().as_secs_f64()
        );
        return Ok(());
    }
    // The guest ignored the button: end QEMU, politely first.
    let _ = qmp.quit();
    if !wait_gone(pid, Duration::from_secs(5)) {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
        wait_gone(pid, Duration::from_secs(5));
    }
    let gone = !is_running_qemu(pid);
    if gone {
        run.remove_runtime_files();
    }
    bail!(
        "the guest did not power off within {} s of the ACPI power button; QEMU {}. Last serial \
         lines:\n{}",
        STOP_TIMEOUT.as_secs(),
        if gone {
            "was ended"
        } else {
            "could not be killed"
        },
        tail(&run.serial_log(), 15)
    )
}

fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| format!("  | {}", l.trim_end_matches('\r')))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Is `pid` a live (not zombie) QEMU process?
pub fn is_running_qemu(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // "pid (comm) S ...": the state follows the last ')'.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .unwrap_or("");
    if state == "Z" || state == "X" {
        return false;
    }
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains("qemu-system"))
        .unwrap_or(false)
}

fn wait_gone(pid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if !is_running_qemu(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    !is_running_qemu(pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(text: &str) -> Profile {
        crate::profile::parse_profile(Path::new("image-profiles/qemu.toml"), text).unwrap()
    }

    const QEMU_PROFILE: &str = r#"
[profile]
name = "qemu"
description = "t"
packages = ["linux"]
cmdline = "console=ttyS0"
formats = ["raw"]
[hardware]
cpus = 2
memory-mib = 1024
firmware = "efi"
nic = "vmxnet3"
disk-controller = "pvscsi"
vmware-hardware-version = 14
"#;

    #[test]
    fn config_follows_the_profile_hardware() {
        let p = profile(QEMU_PROFILE);
        let run = RunDir {
            dir: "/o/run".into(),
        };
        let ports = Ports {
            ssh: 2222,
            docker: 2376,
        };
        let disk = Bootable::Disk {
            path: "/o/a.raw".into(),
            format: qemu::DiskFormat::Raw,
        };
        let args = vm_config(&p, &disk, &run, ports, qemu::Accel::Tcg)
            .serial_file(run.serial_log())
            .args()
            .unwrap()
            .join(" ");
        // SeaBIOS for disks, though the profile says efi (see `firmware`).
        assert!(!args.contains("pflash"), "{args}");
        assert!(
            args.contains(
                "-drive file=/o/run/disk.qcow2,format=qcow2,if=none,id=drive0 -device pvscsi"
            ),
            "{args}"
        );
        assert!(
            args.contains("hostfwd=tcp:127.0.0.1:2222-:22,hostfwd=tcp:127.0.0.1:2376-:2376"),
            "{args}"
        );
        assert!(args.contains("-device vmxnet3,netdev=net0"), "{args}");
        assert!(args.contains("-smp 2 -m 1024M"), "{args}");
        let kernel = Bootable::Kernel {
            kernel: "/o/vmlinuz".into(),
            initrd: "/o/initrd.zst".into(),
        };
        let args = vm_config(&p, &kernel, &run, ports, qemu::Accel::Tcg)
            .serial_file(run.serial_log())
            .args()
            .unwrap();
        let i = args.iter().position(|a| a == "-append").unwrap();
        assert_eq!(args[i + 1], "console=ttyS0");
        assert!(!args.iter().any(|a| a.contains("bootindex")));
        // A direct kernel needs no OVMF (5-10 s under TCG): qboot where installed.
        assert!(!args.iter().any(|a| a.contains("pflash")), "{args:?}");
        let fw = firmware(&p, &kernel, &run);
        if Path::new(qemu::QBOOT).is_file() {
            assert_eq!(fw, qemu::Firmware::Qboot);
        } else {
            assert_eq!(fw, qemu::Firmware::Bios);
        }
        assert!(
            args.join(" ").contains("-device virtio-rng-pci"),
            "{args:?}"
        );
        assert!(
            args.join(" ")
                .contains("-device i6300esb -action watchdog=reset"),
            "{args:?}"
        );
    }

    #[test]
    fn export_lines_are_shell_code() {
        let p = profile(QEMU_PROFILE);
        let run = RunDir {
            dir: "/o o/run".into(),
        };
        let lines = export_lines(&p, &run, 42, Ports { ssh: 1, docker: 2 }, false);
        assert!(
            lines.contains(&"export AXION_SSH_PORT=1".to_string()),
            "{lines:?}"
        );
        assert!(
            lines.contains(&"export AXION_SERIAL_LOG='/o o/run/serial.log'".to_string()),
            "{lines:?}"
        );
        assert!(
            lines.iter().all(|l| l.starts_with("export AXION_")),
            "{lines:?}"
        );
        let lines = export_lines(&p, &run, 42, Ports { ssh: 1, docker: 2 }, true);
        assert!(
            lines.contains(&"export DOCKER_HOST=tcp://127.0.0.1:2".to_string()),
            "{lines:?}"
        );
        assert!(
            lines.contains(&"export DOCKER_TLS_VERIFY=1".to_string()),
            "{lines:?}"
        );
        assert!(
            lines.contains(&"export DOCKER_CERT_PATH='/o o/run/docker'".to_string()),
            "{lines:?}"
        );
    }

    #[test]
    fn overlay_is_kept_until_the_image_changes() {
        if std::process::Command::new("qemu-img")
            .arg("--version")
            .output()
            .is_err()
        {
            test_skip::skip("qemu-img is not installed");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("axion-qemu-0.1.0.raw");
        std::fs::write(&image, vec![0u8; 1 << 20]).unwrap();
        let run = RunDir {
            dir: dir.path().join("run"),
        };
        std::fs::create_dir_all(&run.dir).unwrap();
        assert!(ensure_overlay(&run, &image, qemu::DiskFormat::Raw).unwrap());
        let info = std::process::Command::new("qemu-img")
            .arg("info")
            .arg(run.overlay())
            .output()
            .unwrap();
        let info = String::from_utf8_lossy(&info.stdout);
        assert!(
            info.contains("backing file:") && info.contains("axion-qemu-0.1.0.raw"),
            "{info}"
        );
        assert!(!ensure_overlay(&run, &image, qemu::DiskFormat::Raw).unwrap());
        std::fs::write(&image, vec![1u8; 2 << 20]).unwrap();
        assert!(ensure_overlay(&run, &image, qemu::DiskFormat::Raw).unwrap());
        // With SHA256SUMS beside it, a bit-identical rebuild (new mtime) keeps the overlay.
        std::fs::write(
            dir.path().join("SHA256SUMS"),
            "abc123  axion-qemu-0.1.0.raw\n",
        )
        .unwrap();
        assert!(ensure_overlay(&run, &image, qemu::DiskFormat::Raw).unwrap());
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(&image, vec![1u8; 2 << 20]).unwrap();
        assert!(!ensure_overlay(&run, &image, qemu::DiskFormat::Raw).unwrap());
    }

    #[test]
    fn pid_files_of_dead_processes_are_stale() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir {
            dir: dir.path().to_owned(),
        };
        assert_eq!(run.running_pid(), None);
        // Our own pid is alive but not QEMU.
        std::fs::write(run.pid_file(), std::process::id().to_string()).unwrap();
        std::fs::write(run.qmp_socket(), "").unwrap();
        assert_eq!(run.running_pid(), None);
        assert!(!run.pid_file().exists() && !run.qmp_socket().exists());
        assert!(!is_running_qemu(std::process::id()));
    }
}
