//! `cargo xtask run` and `cargo xtask stop`: boot a built image in QEMU, in the foreground
//! with the serial console on the terminal, or detached in the background; power it off.
//!
//! Files of a profile's VM live in `out/PROFILE/run/` (removed by `clean`):
//!
//! | file            | what                                                                  |
//! |-----------------|-----------------------------------------------------------------------|
//! | `disk.qcow2`    | copy-on-write overlay over the built image: the image stays pristine, the guest's writes (its /var/lib) persist between runs |
//! | `disk.base`     | which image the overlay belongs to (path, size, mtime); a rebuilt image gets a fresh overlay |
//! | `OVMF_VARS.fd`  | the VM's UEFI variable store (efi profiles)                            |
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

use anyhow::{anyhow, bail, Context, Result};

use crate::layout::Layout;
use crate::profile::{self, DiskController, Firmware, Format, Nic, Profile};
use crate::recipe::RecipeSet;

pub mod docker_certs;
pub mod first_boot;

/// What `cargo xtask run` was asked for.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub profile: String,
    pub format: Option<Format>,
    pub detach: bool,
    /// Host port for the guest's SSH (default 2222).
    pub ssh_port: Option<u16>,
    /// Host port for the guest's Docker API (default 2376).
    pub docker_port: Option<u16>,
    /// SSH public key for root in the guest (default: the user's own, if any).
    pub ssh_key: Option<PathBuf>,
    /// The guest's host name (default: the image's).
    pub hostname: Option<String>,
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

/// What can be booted: a disk image, an ISO, or a kernel with its initramfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bootable {
    Disk {
        path: PathBuf,
        format: qemu::DiskFormat,
    },
    Iso(PathBuf),
    Kernel {
        kernel: PathBuf,
        initrd: PathBuf,
    },
}

/// Formats `run` can boot, in the order it prefers them when none is asked for.
const PREFERENCE: [Format; 5] = [
    Format::Qcow2,
    Format::Raw,
    Format::Iso,
    Format::Vmdk,
    Format::Initramfs,
];

/// Finds a built image of `format` in `out` (image assembly names files
/// `axion-PROFILE-VERSION.EXT`; the initramfs format is a kernel plus its initramfs). The
/// newest wins if there are several versions.
pub fn find_bootable(out: &Path, profile: &str, format: Format) -> Option<Bootable> {
    let files: Vec<PathBuf> = std::fs::read_dir(out)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    let newest = |pred: &dyn Fn(&str) -> bool| -> Option<PathBuf> {
        files
            .iter()
            .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(pred))
            .max_by_key(|p| {
                std::fs::metadata(p)
                    .and_then(|m| m.modified())
                    .unwrap_or(SystemTime::UNIX_EPOCH)
            })
            .cloned()
    };
    let prefix = format!("axion-{profile}-");
    let image =
        |ext: &str| newest(&|n: &str| n.starts_with(&prefix) && n.ends_with(&format!(".{ext}")));
    match format {
        Format::Raw => image("raw").map(|path| Bootable::Disk {
            path,
            format: qemu::DiskFormat::Raw,
        }),
        Format::Qcow2 => image("qcow2").map(|path| Bootable::Disk {
            path,
            format: qemu::DiskFormat::Qcow2,
        }),
        Format::Vmdk => image("vmdk").map(|path| Bootable::Disk {
            path,
            format: qemu::DiskFormat::Vmdk,
        }),
        Format::Iso => image("iso").map(Bootable::Iso),
        Format::Initramfs => {
            let kernel = newest(&|n: &str| {
                n.ends_with("vmlinuz") || n.ends_with(".vmlinuz") || n == "bzImage"
            })?;
            let initrd = newest(&|n: &str| n.contains("initrd") || n.contains("initramfs"))?;
            Some(Bootable::Kernel { kernel, initrd })
        }
        Format::Ova => None,
    }
}

/// The format to boot: the one asked for, else the first built one in [`PREFERENCE`] order.
pub fn choose_bootable(
    out: &Path,
    profile: &str,
    format: Option<Format>,
) -> Result<(Format, Bootable)> {
    let build_hint =
        |f: Format| format!("build it with `cargo xtask image --profile {profile} --format {f}`");
    match format {
        Some(Format::Ova) => bail!(
            "an OVA is for vSphere; to boot its disk here use --format vmdk (or convert the VMDK inside with `qemu-img convert`)"
        ),
        Some(f) => find_bootable(out, profile, f)
            .map(|b| (f, b))
            .ok_or_else(|| anyhow!("no {f} image of profile '{profile}' in {}: {}", out.display(), build_hint(f))),
        None => PREFERENCE
            .iter()
            .find_map(|&f| find_bootable(out, profile, f).map(|b| (f, b)))
            .ok_or_else(|| anyhow!("no bootable image of profile '{profile}' in {}: build one with `cargo xtask image --profile {profile}`", out.display())),
    }
}

/// Makes sure an image of the profile exists and is not older than its inputs, building it
/// with `cargo xtask image` when it is missing or stale. A stale image whose rebuild fails is
/// booted anyway, with a warning.
fn ensure_image(
    layout: &Layout,
    profile: &Profile,
    format: Option<Format>,
) -> Result<(Format, Bootable)> {
    let out = layout.out(profile.name());
    let name = profile.name();
    let found = choose_bootable(&out, name, format);
    let (wanted, reason) = match &found {
        Ok((f, b)) => match stale_reason(layout, profile, b) {
            None => return found,
            Some(why) => (*f, format!("the {f} image is older than {why}")),
        },
        Err(_) => {
            let f = format.unwrap_or_else(|| default_format(profile));
            (f, format!("there is no {f} image yet"))
        }
    };
    eprintln!("{reason}: building it with `cargo xtask image --profile {name} --format {wanted}`");
    match build_image(layout, name, wanted) {
        Ok(()) => choose_bootable(&out, name, Some(wanted)),
        Err(e) if found.is_ok() => {
            eprintln!("warning: rebuilding failed ({e:#}); booting the existing image");
            found
        }
        Err(e) => Err(e),
    }
}

/// The format to build when none is asked for and none is built: the first of the profile's
/// formats that `run` can boot, in [`PREFERENCE`] order.
fn default_format(profile: &Profile) -> Format {
    let fs = &profile.spec.profile.formats;
    PREFERENCE
        .into_iter()
        .find(|f| fs.contains(f))
        .unwrap_or(Format::Qcow2)
}

/// Builds the profile's image in `format` (its messages go to stderr, so that `run --detach`
/// keeps stdout for the export lines).
fn build_image(layout: &Layout, profile: &str, format: Format) -> Result<()> {
    crate::image::build_profile(layout, profile, &[format], None, false).with_context(|| {
        format!("`cargo xtask image --profile {profile} --format {format}` failed")
    })?;
    Ok(())
}

/// Why a built image is stale: the newest input (the profile, recipes, overlays, package
/// sources and the workspace crates they build from, staged package trees in the cache)
/// that is newer than it, or `None`.
pub fn stale_reason(layout: &Layout, profile: &Profile, bootable: &Bootable) -> Option<String> {
    let image = match bootable {
        Bootable::Disk { path, .. } | Bootable::Iso(path) => path,
        Bootable::Kernel { initrd, .. } => initrd,
    };
    let built = std::fs::metadata(image).and_then(|m| m.modified()).ok()?;
    let mut inputs: Vec<PathBuf> = vec![
        profile.path.clone(),
        layout.recipes(),
        layout.root.join("overlays"),
        layout.root.join("packages"),
    ];
    if let Ok(rd) = std::fs::read_dir(layout.packages()) {
        inputs.extend(rd.filter_map(|e| e.ok()).map(|e| e.path()));
    }
    for input in inputs {
        let walk =
            walkdir::WalkDir::new(&input).max_depth(if input.starts_with(layout.packages()) {
                0
            } else {
                20
            });
        for entry in walk
            .into_iter()
            .filter_entry(|e| e.file_name() != "target")
            .filter_map(|e| e.ok())
        {
            let newer = entry
                .metadata()
                .ok()
                .and_then(|m| m.modified().ok())
                .is_some_and(|t| t > built);
            if newer {
                let p = entry.path();
                return Some(
                    p.strip_prefix(&layout.root)
                        .unwrap_or(p)
                        .display()
                        .to_string(),
                );
            }
        }
    }
    // The workspace crates the image's Rust programs reach through path dependencies
    // (crates/docker-api, vchan, registry...): their package build keys cover them, so a
    // change there must make the image stale too (crates only the host uses do not).
    let crates = layout.root.join("crates");
    for e in std::fs::read_dir(layout.root.join("packages"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        if !e.path().join("Cargo.toml").is_file() {
            continue;
        }
        for f in crate::build::key::cargo_inputs(&layout.root, &name).unwrap_or_default() {
            if f.starts_with(&crates)
                && std::fs::metadata(&f)
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| t > built)
            {
                return Some(
                    f.strip_prefix(&layout.root)
                        .unwrap_or(&f)
                        .display()
                        .to_string(),
                );
            }
        }
    }
    None
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
                eprintln!("note: 127.0.0.1:{default} is busy, {what} is forwarded from 127.0.0.1:{p} instead");
            }
            Ok(p)
        }
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
    c = match hw.firmware {
        Firmware::Efi => c.uefi_with_vars(run.uefi_vars()),
        Firmware::Bios => c.firmware(qemu::Firmware::Bios),
    };
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
pub fn run(layout: &Layout, opts: &RunOptions) -> Result<()> {
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
pub fn boot_detached(layout: &Layout, opts: &RunOptions) -> Result<Booted> {
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

fn prepare(layout: &Layout, opts: &RunOptions) -> Result<Prepared> {
    crate::doctor::ensure(&[crate::doctor::Need::Run])?;
    let recipes = RecipeSet::load(&layout.recipes())?;
    let profile = profile::load_profile(&layout.root, &opts.profile, &recipes)?;
    let run = RunDir::new(layout, profile.name());
    if let Some(pid) = run.running_pid() {
        bail!(
            "a VM of profile '{}' is already running (pid {pid}); stop it with `cargo xtask stop --profile {}`",
            profile.name(),
            profile.name()
        );
    }
    let (format, bootable) = ensure_image(layout, &profile, opts.format)?;
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
    let firmware = match profile.spec.hardware.firmware {
        Firmware::Efi => "UEFI (OVMF)",
        Firmware::Bios => "BIOS (SeaBIOS)",
    };
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
    opts: &RunOptions,
    has_engine: bool,
) -> Result<first_boot::FirstBoot> {
    let key = first_boot::ssh_key(opts.ssh_key.as_deref())?;
    match &key {
        Some(k) => eprintln!("SSH: root may log in with {}", k.split_whitespace().take(3).collect::<Vec<_>>().join(" ")),
        None => eprintln!("SSH: no public key found in ~/.ssh (id_ed25519.pub, id_ecdsa.pub, id_rsa.pub); pass --ssh-key FILE to log in"),
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
    eprintln!("serial console below; quit QEMU with Ctrl-A X (Ctrl-A C: QEMU monitor), or power off with `cargo xtask stop` from another terminal");
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
    let pid = vm.pid();
    vm.detach();
    eprintln!(
        "ready: {:?} after {:.1} s on the host; running in the background (pid {pid}); stop it with `cargo xtask stop --profile {}`",
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
    eprintln!("pressed the power button of '{profile}' (pid {pid}); waiting up to {} s for it to power off", STOP_TIMEOUT.as_secs());
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
        "the guest did not power off within {} s of the ACPI power button; QEMU {}. Last serial lines:\n{}",
        STOP_TIMEOUT.as_secs(),
        if gone { "was ended" } else { "could not be killed" },
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

    fn touch(dir: &Path, name: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, name).unwrap();
        p
    }

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
    fn format_preference_and_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let e = choose_bootable(d, "qemu", None).unwrap_err().to_string();
        assert!(e.contains("cargo xtask image --profile qemu"), "{e}");
        touch(d, "axion-qemu-0.1.0.raw");
        touch(d, "axion-other-0.1.0.qcow2"); // another profile's image is not ours
        assert_eq!(choose_bootable(d, "qemu", None).unwrap().0, Format::Raw);
        let qcow = touch(d, "axion-qemu-0.1.0.qcow2");
        let (f, b) = choose_bootable(d, "qemu", None).unwrap();
        assert_eq!(
            (f, b),
            (
                Format::Qcow2,
                Bootable::Disk {
                    path: qcow,
                    format: qemu::DiskFormat::Qcow2
                }
            )
        );
        let e = choose_bootable(d, "qemu", Some(Format::Iso))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no iso image") && e.contains("--format iso"),
            "{e}"
        );
        let e = choose_bootable(d, "qemu", Some(Format::Ova))
            .unwrap_err()
            .to_string();
        assert!(e.contains("vmdk"), "{e}");
        let k = touch(d, "vmlinuz");
        let i = touch(d, "initrd.zst");
        assert_eq!(
            choose_bootable(d, "qemu", Some(Format::Initramfs))
                .unwrap()
                .1,
            Bootable::Kernel {
                kernel: k,
                initrd: i
            }
        );
    }

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
        assert!(
            args.contains("-drive if=pflash,format=raw,unit=1,file=/o/run/OVMF_VARS.fd"),
            "{args}"
        );
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
            eprintln!("skip: because qemu-img is not installed");
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
    fn stale_when_an_input_is_newer() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("repo");
        for d in [
            "recipes",
            "overlays/base",
            "packages/init/src",
            "packages/init/target",
            "image-profiles",
            "out/qemu",
        ] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::write(root.join("image-profiles/qemu.toml"), QEMU_PROFILE).unwrap();
        let mut p = profile(QEMU_PROFILE);
        p.path = root.join("image-profiles/qemu.toml");
        let layout = Layout::with_cache(root.clone(), dir.path().join("cache"));
        std::thread::sleep(Duration::from_millis(20));
        let img = touch(&root.join("out/qemu"), "axion-qemu-0.1.0.raw");
        let b = Bootable::Disk {
            path: img,
            format: qemu::DiskFormat::Raw,
        };
        assert_eq!(stale_reason(&layout, &p, &b), None);
        std::thread::sleep(Duration::from_millis(20));
        touch(&root.join("packages/init/target"), "ignored.o"); // build output is not an input
        assert_eq!(stale_reason(&layout, &p, &b), None);
        touch(&root.join("packages/init/src"), "main.rs");
        // The folder counts too (a deleted file changes only its folder).
        let why = stale_reason(&layout, &p, &b).unwrap();
        assert!(why.starts_with("packages/init/src"), "{why}");
    }

    #[test]
    fn stale_when_a_crate_a_package_builds_from_is_newer() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("repo");
        for d in [
            "recipes",
            "overlays",
            "packages/engine/src",
            "crates/api/src",
            "crates/hostonly/src",
            "image-profiles",
            "out/qemu",
        ] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::write(
            root.join("Cargo.toml"),
            "[workspace]\nmembers = [\"packages/*\", \"crates/*\"]\n",
        )
        .unwrap();
        std::fs::write(
            root.join("packages/engine/Cargo.toml"),
            "[package]\nname = \"engine\"\n[dependencies]\napi = { path = \"../../crates/api\" }\n",
        )
        .unwrap();
        std::fs::write(
            root.join("crates/api/Cargo.toml"),
            "[package]\nname = \"api\"\n",
        )
        .unwrap();
        std::fs::write(
            root.join("crates/hostonly/Cargo.toml"),
            "[package]\nname = \"hostonly\"\n",
        )
        .unwrap();
        std::fs::write(root.join("image-profiles/qemu.toml"), QEMU_PROFILE).unwrap();
        let mut p = profile(QEMU_PROFILE);
        p.path = root.join("image-profiles/qemu.toml");
        let layout = Layout::with_cache(root.clone(), dir.path().join("cache"));
        std::thread::sleep(Duration::from_millis(20));
        let img = touch(&root.join("out/qemu"), "axion-qemu-0.1.0.raw");
        let b = Bootable::Disk {
            path: img,
            format: qemu::DiskFormat::Raw,
        };
        assert_eq!(stale_reason(&layout, &p, &b), None);
        std::thread::sleep(Duration::from_millis(20));
        touch(&root.join("crates/hostonly/src"), "lib.rs"); // no package builds from it
        assert_eq!(stale_reason(&layout, &p, &b), None);
        touch(&root.join("crates/api/src"), "lib.rs");
        assert_eq!(
            stale_reason(&layout, &p, &b).as_deref(),
            Some("crates/api/src/lib.rs")
        );
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
