//! [`VmConfig`]: what a VM looks like, and the `qemu-system-x86_64` command line for it.
//!
//! The command line is built with `-nodefaults`, so every device is one we asked for and the
//! argument vector is the whole truth (the golden tests below pin it). Paths the run needs
//! (serial log, QMP socket, the writable UEFI variable store) are filled in by
//! [`VmConfig::resolve`] from a run directory; [`VmConfig::args`] itself never touches the
//! file system.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Debian's OVMF (package `ovmf`): the firmware code, mapped read-only.
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
/// Debian's empty UEFI variable store; each VM gets a private writable copy.
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
/// qboot (package `qemu-system-data`): a firmware that only loads a `-kernel` from fw_cfg.
pub const QBOOT: &str = "/usr/share/qemu/qboot.rom";

/// The machine type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Machine {
    /// Q35 + ICH9 (PCIe, AHCI). The default; boots with SeaBIOS and OVMF.
    Q35,
    /// i440FX + PIIX: the old PC, for guests or tools that want plain IDE.
    Pc,
}

/// How guest code runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// QEMU's binary translator: slow but works everywhere. The default.
    Tcg,
    /// Hardware virtualisation through /dev/kvm. Use only after [`crate::probe_kvm`] passed.
    Kvm,
}

impl Accel {
    pub fn name(self) -> &'static str {
        match self {
            Accel::Tcg => "tcg",
            Accel::Kvm => "kvm",
        }
    }
}

/// Firmware.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Firmware {
    /// SeaBIOS, QEMU's default legacy BIOS.
    Bios,
    /// qboot ([`QBOOT`]): no POST, no disk boot; it hands QEMU's ACPI tables to a direct
    /// `-kernel` and jumps to it. Under TCG 0.3-1 s sooner to the kernel than SeaBIOS, and
    /// 5-10 s sooner than OVMF (measurements in docs/benchmarks.md). Kernel boots only.
    Qboot,
    /// OVMF: `code` is mapped read-only; `vars` is the VM's own writable variable store,
    /// created from `vars_template` when missing (by [`VmConfig::prepare`]). Keep `vars` between
    /// runs to keep boot entries; `None` means "a fresh copy in the run directory".
    Uefi {
        code: PathBuf,
        vars_template: PathBuf,
        vars: Option<PathBuf>,
    },
}

impl Firmware {
    /// Debian's OVMF with a fresh variable store.
    pub fn ovmf() -> Firmware {
        Firmware::Uefi {
            code: OVMF_CODE.into(),
            vars_template: OVMF_VARS.into(),
            vars: None,
        }
    }
}

/// Disk image formats QEMU reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskFormat {
    Raw,
    Qcow2,
    Vmdk,
}

impl DiskFormat {
    pub fn name(self) -> &'static str {
        match self {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
            DiskFormat::Vmdk => "vmdk",
        }
    }
}

/// How a drive is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskInterface {
    /// virtio-blk-pci (disks only; a CD-ROM on this interface becomes virtio-scsi).
    Virtio,
    /// virtio-scsi-pci controller with scsi-hd / scsi-cd.
    VirtioScsi,
    /// VMware's paravirtual SCSI controller (what the vsphere profile uses).
    Pvscsi,
    /// AHCI on q35, IDE on pc: what every firmware and OS can boot from.
    Sata,
}

/// Disk or CD-ROM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Media {
    Disk,
    Cdrom,
}

/// One block device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drive {
    pub path: PathBuf,
    pub format: DiskFormat,
    pub interface: DiskInterface,
    pub media: Media,
    pub readonly: bool,
}

impl Drive {
    /// A disk image as virtio-blk.
    pub fn disk(path: impl Into<PathBuf>, format: DiskFormat) -> Drive {
        Drive {
            path: path.into(),
            format,
            interface: DiskInterface::Virtio,
            media: Media::Disk,
            readonly: false,
        }
    }

    /// An ISO image as a read-only SATA/IDE CD-ROM (bootable by SeaBIOS and OVMF).
    pub fn cdrom(path: impl Into<PathBuf>) -> Drive {
        Drive {
            path: path.into(),
            format: DiskFormat::Raw,
            interface: DiskInterface::Sata,
            media: Media::Cdrom,
            readonly: true,
        }
    }

    pub fn interface(mut self, interface: DiskInterface) -> Drive {
        self.interface = interface;
        self
    }

    pub fn readonly(mut self, readonly: bool) -> Drive {
        self.readonly = readonly;
        self
    }
}

/// The NIC model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NicModel {
    VirtioNet,
    /// What vSphere gives a VM; the vsphere profile is tested with it.
    Vmxnet3,
    E1000,
}

impl NicModel {
    pub fn device(self) -> &'static str {
        match self {
            NicModel::VirtioNet => "virtio-net-pci",
            NicModel::Vmxnet3 => "vmxnet3",
            NicModel::E1000 => "e1000",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Tcp,
    Udp,
}

/// `hostfwd`: 127.0.0.1:`host` on the host reaches `guest` in the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortForward {
    pub protocol: Protocol,
    pub host: u16,
    pub guest: u16,
}

/// The id of the user-network netdev ([`VmConfig::user_net`]), which HMP's `hostfwd_add`
/// names ([`crate::Vm::add_forward`]).
pub const USER_NETDEV: &str = "net0";

impl PortForward {
    /// The rule as `hostfwd=` and `hostfwd_add` spell it: `tcp:127.0.0.1:HOST-:GUEST`.
    pub fn rule(&self) -> String {
        let proto = match self.protocol {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        };
        format!("{proto}:127.0.0.1:{}-:{}", self.host, self.guest)
    }
}

impl PortForward {
    pub fn tcp(host: u16, guest: u16) -> PortForward {
        PortForward {
            protocol: Protocol::Tcp,
            host,
            guest,
        }
    }
}

/// QEMU's user-mode network (slirp): the guest gets 10.0.2.15 by DHCP, reaches the host's
/// 127.0.0.1 as 10.0.2.2, and the host reaches the guest only through the forwards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserNet {
    pub nic: NicModel,
    pub forwards: Vec<PortForward>,
    pub mac: Option<String>,
}

/// Where the guest's first serial port (ttyS0) goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Serial {
    /// To a file; `None` = `serial.log` in the run directory. What tests and `--detach` use.
    File(Option<PathBuf>),
    /// Interactive: the serial port multiplexed with QEMU's monitor on this terminal, Ctrl-C
    /// goes to the guest, `Ctrl-A X` quits QEMU, `Ctrl-A C` toggles the monitor. Optionally
    /// also written to `log`.
    Stdio { log: Option<PathBuf> },
    /// No serial port.
    None,
}

/// A value for a `-fw_cfg` entry (read by init from /sys/firmware/qemu_fw_cfg).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FwCfgValue {
    File(PathBuf),
    String(String),
}

/// `-fw_cfg name=NAME,...`. QEMU wants user names under `opt/`; ours are `opt/axion/...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FwCfg {
    pub name: String,
    pub value: FwCfgValue,
}

/// Extra devices; the enum is the extension point for what the host daemon will need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Device {
    /// A virtio-serial port named `name` in the guest (/dev/virtio-ports/NAME), a unix
    /// socket server at `socket` on the host: a channel for a guest agent.
    VirtioSerialPort { name: String, socket: PathBuf },
    /// vhost-vsock with the given guest CID (needs /dev/vhost-vsock on the host).
    Vsock { guest_cid: u32 },
    /// The host directory `path` shared over 9p (virtio-9p-pci); the guest mounts it with
    /// `mount -t 9p -o trans=virtio,version=9p2000.L TAG DIR`. `readonly` makes QEMU refuse
    /// every write. Note: while the guest has it mounted, QEMU refuses to migrate (save) the
    /// VM; a device that is present but not mounted does not block a save.
    Virtio9p {
        tag: String,
        path: PathBuf,
        readonly: bool,
        security: Security9p,
    },
    /// A virtio RNG fed from the host's /dev/urandom: the guest kernel credits it, so its
    /// CRNG is ready at once instead of after seconds of jitter entropy under TCG (a
    /// `getrandom` before that blocks: the engine's start waited 1.5-3 s for it).
    Rng,
    /// An Intel 6300ESB watchdog (`/dev/watchdog` with CONFIG_I6300ESB_WDT) whose expiry
    /// resets the machine (`-action watchdog=reset`; with [`VmConfig::no_reboot`] the reset
    /// ends QEMU, like any reboot). axion's init pets it (packages/init, watchdog.rs).
    Watchdog,
    /// Anything else, as raw arguments.
    Args(Vec<String>),
}

/// How a 9p share maps ownership and modes (QEMU's `security_model`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security9p {
    /// The host's own owners and modes, as they are (QEMU must be able to read the files;
    /// creating files as other users needs QEMU to run as root).
    Passthrough,
    /// Owners and modes kept in `user.virtfs.*` xattrs of files QEMU owns.
    MappedXattr,
    /// Like passthrough, but failures to set ownership are ignored.
    None,
}

impl Security9p {
    fn name(self) -> &'static str {
        match self {
            Security9p::Passthrough => "passthrough",
            Security9p::MappedXattr => "mapped-xattr",
            Security9p::None => "none",
        }
    }
}

/// Direct kernel boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectKernel {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub append: String,
}

/// Everything about a VM. Build it with the chained setters:
///
/// ```
/// use qemu::{VmConfig, Drive, DiskFormat, PortForward};
/// let cfg = VmConfig::new()
///     .cpus(2)
///     .memory_mib(1024)
///     .uefi()
///     .drive(Drive::disk("axion.qcow2", DiskFormat::Qcow2))
///     .user_net(qemu::NicModel::VirtioNet, vec![PortForward::tcp(2222, 22)]);
/// let args = cfg.resolve(std::path::Path::new("/tmp/vm")).args().unwrap();
/// assert!(args.contains(&"-nodefaults".to_string()));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmConfig {
    /// The QEMU binary (default `qemu-system-x86_64` from PATH).
    pub program: PathBuf,
    pub name: Option<String>,
    pub machine: Machine,
    pub accel: Accel,
    /// `-cpu`; `None` = QEMU's default model (qemu64). Not `host` for KVM by default: on the
    /// nested-KVM machines here `-cpu host` makes QEMU abort ("failed to set MSR 0x10a").
    pub cpu: Option<String>,
    pub cpus: u32,
    pub memory_mib: u64,
    pub firmware: Firmware,
    pub kernel: Option<DirectKernel>,
    pub drives: Vec<Drive>,
    pub net: Option<UserNet>,
    pub serial: Serial,
    /// The QMP socket; `None` = `qmp.sock` in the run directory.
    pub qmp: Option<PathBuf>,
    /// Where [`crate::Vm::spawn`] keeps its files; `None` = a temporary directory removed
    /// when the VM is dropped.
    pub run_dir: Option<PathBuf>,
    /// `-no-reboot`: a guest reboot (or a kernel panic with `panic=-1`) ends QEMU.
    pub no_reboot: bool,
    /// `-snapshot`: disk writes go to a temporary overlay and are thrown away.
    pub snapshot: bool,
    /// `-S`: start with the CPUs stopped (`cont` over QMP starts them).
    pub paused: bool,
    /// `-incoming URI`: wait for a migration stream (restore a saved VM).
    pub incoming: Option<String>,
    pub fw_cfg: Vec<FwCfg>,
    pub devices: Vec<Device>,
    /// Appended verbatim, last.
    pub extra_args: Vec<String>,
}

impl Default for VmConfig {
    fn default() -> Self {
        VmConfig {
            program: "qemu-system-x86_64".into(),
            name: None,
            machine: Machine::Q35,
            accel: Accel::Tcg,
            cpu: None,
            cpus: 2,
            memory_mib: 1024,
            firmware: Firmware::Bios,
            kernel: None,
            drives: Vec::new(),
            net: None,
            serial: Serial::File(None),
            qmp: None,
            run_dir: None,
            no_reboot: false,
            snapshot: false,
            paused: false,
            incoming: None,
            fw_cfg: Vec::new(),
            devices: Vec::new(),
            extra_args: Vec::new(),
        }
    }
}

impl VmConfig {
    /// q35, TCG, 2 CPUs, 1 GiB, SeaBIOS, serial to a file, QMP on a socket, no disks, no NIC.
    pub fn new() -> VmConfig {
        VmConfig::default()
    }

    pub fn program(mut self, program: impl Into<PathBuf>) -> Self {
        self.program = program.into();
        self
    }
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }
    pub fn machine(mut self, machine: Machine) -> Self {
        self.machine = machine;
        self
    }
    pub fn accel(mut self, accel: Accel) -> Self {
        self.accel = accel;
        self
    }
    pub fn cpu(mut self, model: impl Into<String>) -> Self {
        self.cpu = Some(model.into());
        self
    }
    pub fn cpus(mut self, cpus: u32) -> Self {
        self.cpus = cpus;
        self
    }
    pub fn memory_mib(mut self, mib: u64) -> Self {
        self.memory_mib = mib;
        self
    }
    pub fn firmware(mut self, firmware: Firmware) -> Self {
        self.firmware = firmware;
        self
    }
    /// OVMF with a fresh variable store in the run directory.
    pub fn uefi(self) -> Self {
        self.firmware(Firmware::ovmf())
    }
    /// OVMF with a variable store kept at `vars` (created from the template when missing).
    pub fn uefi_with_vars(self, vars: impl Into<PathBuf>) -> Self {
        self.firmware(Firmware::Uefi {
            code: OVMF_CODE.into(),
            vars_template: OVMF_VARS.into(),
            vars: Some(vars.into()),
        })
    }
    pub fn kernel(
        mut self,
        kernel: impl Into<PathBuf>,
        initrd: Option<PathBuf>,
        append: impl Into<String>,
    ) -> Self {
        self.kernel = Some(DirectKernel {
            kernel: kernel.into(),
            initrd,
            append: append.into(),
        });
        self
    }
    pub fn drive(mut self, drive: Drive) -> Self {
        self.drives.push(drive);
        self
    }
    pub fn user_net(mut self, nic: NicModel, forwards: Vec<PortForward>) -> Self {
        self.net = Some(UserNet {
            nic,
            forwards,
            mac: None,
        });
        self
    }
    pub fn serial(mut self, serial: Serial) -> Self {
        self.serial = serial;
        self
    }
    pub fn serial_file(self, path: impl Into<PathBuf>) -> Self {
        self.serial(Serial::File(Some(path.into())))
    }
    pub fn qmp_socket(mut self, path: impl Into<PathBuf>) -> Self {
        self.qmp = Some(path.into());
        self
    }
    pub fn run_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.run_dir = Some(dir.into());
        self
    }
    pub fn no_reboot(mut self, on: bool) -> Self {
        self.no_reboot = on;
        self
    }
    pub fn snapshot(mut self, on: bool) -> Self {
        self.snapshot = on;
        self
    }
    pub fn paused(mut self, on: bool) -> Self {
        self.paused = on;
        self
    }
    /// Restore a VM saved with [`crate::Vm::save`] to `file`. The rest of the configuration
    /// (devices, memory, disks in the same state) must match the saved VM's.
    pub fn restore_from(mut self, file: &Path) -> Self {
        self.incoming = Some(restore_uri(file));
        self
    }
    pub fn fw_cfg_file(mut self, name: impl Into<String>, file: impl Into<PathBuf>) -> Self {
        self.fw_cfg.push(FwCfg {
            name: name.into(),
            value: FwCfgValue::File(file.into()),
        });
        self
    }
    pub fn fw_cfg_string(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.fw_cfg.push(FwCfg {
            name: name.into(),
            value: FwCfgValue::String(value.into()),
        });
        self
    }
    pub fn device(mut self, device: Device) -> Self {
        self.devices.push(device);
        self
    }
    pub fn extra_args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, args: I) -> Self {
        self.extra_args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Fills in every path left to the run directory: serial log, QMP socket, UEFI variables.
    pub fn resolve(&self, run_dir: &Path) -> VmConfig {
        let mut c = self.clone();
        c.run_dir = Some(run_dir.to_owned());
        if c.serial == Serial::File(None) {
            c.serial = Serial::File(Some(run_dir.join("serial.log")));
        }
        if c.qmp.is_none() {
            c.qmp = Some(run_dir.join("qmp.sock"));
        }
        if let Firmware::Uefi {
            vars: vars @ None, ..
        } = &mut c.firmware
        {
            *vars = Some(run_dir.join("OVMF_VARS.fd"));
        }
        c
    }

    /// The serial log file, if the serial console is written to one.
    pub fn serial_log(&self) -> Option<&Path> {
        match &self.serial {
            Serial::File(p) => p.as_deref(),
            Serial::Stdio { log } => log.as_deref(),
            Serial::None => None,
        }
    }

    /// Creates what the command line refers to but QEMU does not create: the writable UEFI
    /// variable store (copied from the template when missing) and an empty serial log.
    pub fn prepare(&self) -> Result<()> {
        if self.firmware == Firmware::Qboot && !Path::new(QBOOT).is_file() {
            return Err(Error::Config(format!(
                "qboot {QBOOT} not found (Debian: apt-get install qemu-system-data)"
            )));
        }
        if let Firmware::Uefi {
            code,
            vars_template,
            vars: Some(vars),
        } = &self.firmware
        {
            if !code.is_file() {
                return Err(Error::Config(format!(
                    "UEFI firmware {} not found (Debian: apt-get install ovmf)",
                    code.display()
                )));
            }
            if !vars.exists() {
                std::fs::copy(vars_template, vars).map_err(|source| Error::Io {
                    doing: "cannot copy the UEFI variable store to",
                    path: vars.clone(),
                    source,
                })?;
            }
        }
        if let Some(log) = self.serial_log() {
            std::fs::File::create(log).map_err(|source| Error::Io {
                doing: "cannot create the serial log",
                path: log.to_owned(),
                source,
            })?;
        }
        if let Some(qmp) = &self.qmp {
            match std::fs::remove_file(qmp) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(Error::Io {
                        doing: "cannot remove the old QMP socket",
                        path: qmp.clone(),
                        source,
                    })
                }
            }
        }
        Ok(())
    }

    /// The arguments after the program name. Fails on a configuration QEMU would reject in a
    /// less readable way (an unresolved path, a non-UTF-8 path, a bad fw_cfg name).
    pub fn args(&self) -> Result<Vec<String>> {
        let mut a = Args::default();
        a.push(["-nodefaults", "-no-user-config", "-display", "none"]);
        if let Some(name) = &self.name {
            a.push(["-name", &opt(name)]);
        }
        a.push([
            "-machine",
            match self.machine {
                Machine::Q35 => "q35",
                Machine::Pc => "pc",
            },
        ]);
        a.push(["-accel", self.accel.name()]);
        if let Some(cpu) = &self.cpu {
            a.push(["-cpu", cpu]);
        }
        if self.cpus == 0 || self.memory_mib < 16 {
            return Err(Error::Config(format!(
                "{} CPUs and {} MiB of memory make no VM",
                self.cpus, self.memory_mib
            )));
        }
        a.push(["-smp", &self.cpus.to_string()]);
        a.push(["-m", &format!("{}M", self.memory_mib)]);

        if self.firmware == Firmware::Qboot {
            if self.kernel.is_none() {
                return Err(Error::Config(
                    "qboot boots only a direct kernel (-kernel), not disks".into(),
                ));
            }
            a.push(["-bios", QBOOT]);
        }
        if let Firmware::Uefi { code, vars, .. } = &self.firmware {
            let vars = vars.as_ref().ok_or_else(|| {
                Error::Config("the UEFI variable store path is not resolved (call resolve)".into())
            })?;
            a.push([
                "-drive",
                &format!(
                    "if=pflash,format=raw,unit=0,readonly=on,file={}",
                    path(code)?
                ),
            ]);
            a.push([
                "-drive",
                &format!("if=pflash,format=raw,unit=1,file={}", path(vars)?),
            ]);
        }

        if let Some(k) = &self.kernel {
            a.push(["-kernel", &path(&k.kernel)?]);
            if let Some(initrd) = &k.initrd {
                a.push(["-initrd", &path(initrd)?]);
            }
            a.push(["-append", &k.append]);
        }

        let mut controllers: Vec<&str> = Vec::new();
        let mut sata_port = 0;
        for (i, d) in self.drives.iter().enumerate() {
            let id = format!("drive{i}");
            let mut drive = format!(
                "file={},format={},if=none,id={id}",
                path(&d.path)?,
                d.format.name()
            );
            if d.media == Media::Cdrom {
                drive.push_str(",media=cdrom");
            }
            if d.readonly {
                drive.push_str(",readonly=on");
            }
            a.push(["-drive", &drive]);
            // Boot order follows the order of the drives, unless the kernel is loaded directly.
            let boot = if self.kernel.is_none() {
                format!(",bootindex={i}")
            } else {
                String::new()
            };
            let scsi_dev = if d.media == Media::Cdrom {
                "scsi-cd"
            } else {
                "scsi-hd"
            };
            let device = match (d.interface, d.media) {
                (DiskInterface::Virtio, Media::Disk) => format!("virtio-blk-pci,drive={id}{boot}"),
                (DiskInterface::Virtio | DiskInterface::VirtioScsi, _) => {
                    if !controllers.contains(&"scsi0") {
                        controllers.push("scsi0");
                        a.push(["-device", "virtio-scsi-pci,id=scsi0"]);
                    }
                    format!("{scsi_dev},bus=scsi0.0,drive={id}{boot}")
                }
                (DiskInterface::Pvscsi, _) => {
                    if !controllers.contains(&"pvscsi0") {
                        controllers.push("pvscsi0");
                        a.push(["-device", "pvscsi,id=pvscsi0"]);
                    }
                    format!("{scsi_dev},bus=pvscsi0.0,drive={id}{boot}")
                }
                (DiskInterface::Sata, _) => {
                    let dev = if d.media == Media::Cdrom {
                        "ide-cd"
                    } else {
                        "ide-hd"
                    };
                    // q35's AHCI has six ports ide.0..ide.5; the pc's IDE has two buses.
                    let bus = match self.machine {
                        Machine::Q35 => format!("ide.{sata_port}"),
                        Machine::Pc => format!("ide.{},unit={}", sata_port / 2, sata_port % 2),
                    };
                    sata_port += 1;
                    format!("{dev},bus={bus},drive={id}{boot}")
                }
            };
            a.push(["-device", &device]);
        }

        if let Some(net) = &self.net {
            let mut netdev = format!("user,id={USER_NETDEV}");
            for f in &net.forwards {
                netdev.push_str(&format!(",hostfwd={}", f.rule()));
            }
            a.push(["-netdev", &netdev]);
            // romfile= : no PXE option ROM; a failed disk boot should fail, not netboot.
            let mut dev = format!("{},netdev={USER_NETDEV},romfile=", net.nic.device());
            if let Some(mac) = &net.mac {
                dev.push_str(&format!(",mac={mac}"));
            }
            a.push(["-device", &dev]);
        }

        match &self.serial {
            Serial::File(None) => {
                return Err(Error::Config(
                    "the serial log path is not resolved (call resolve)".into(),
                ))
            }
            Serial::File(Some(p)) => {
                a.push(["-chardev", &format!("file,id=serial0,path={}", path(p)?)]);
                a.push(["-serial", "chardev:serial0"]);
            }
            Serial::Stdio { log } => {
                let mut c = "stdio,id=serial0,mux=on,signal=off".to_string();
                if let Some(log) = log {
                    c.push_str(&format!(",logfile={}", path(log)?));
                }
                a.push(["-chardev", &c]);
                a.push(["-serial", "chardev:serial0"]);
                a.push(["-mon", "chardev=serial0,mode=readline"]);
            }
            Serial::None => {}
        }

        if let Some(qmp) = &self.qmp {
            a.push([
                "-chardev",
                &format!("socket,id=qmp,path={},server=on,wait=off", path(qmp)?),
            ]);
            a.push(["-mon", "chardev=qmp,mode=control"]);
        }

        for f in &self.fw_cfg {
            if !f.name.starts_with("opt/") || f.name.len() > 55 {
                return Err(Error::Config(format!(
                    "fw_cfg name '{}' must start with opt/ and be at most 55 bytes",
                    f.name
                )));
            }
            let value = match &f.value {
                FwCfgValue::File(p) => format!("file={}", path(p)?),
                FwCfgValue::String(s) => format!("string={}", opt(s)),
            };
            a.push(["-fw_cfg", &format!("name={},{value}", opt(&f.name))]);
        }

        let mut vser = 0;
        let mut fsdev = 0;
        for d in &self.devices {
            match d {
                Device::VirtioSerialPort { name, socket } => {
                    if vser == 0 {
                        a.push(["-device", "virtio-serial-pci,id=vser0"]);
                    }
                    a.push([
                        "-chardev",
                        &format!(
                            "socket,id=vser{vser},path={},server=on,wait=off",
                            path(socket)?
                        ),
                    ]);
                    a.push([
                        "-device",
                        &format!(
                            "virtserialport,bus=vser0.0,chardev=vser{vser},name={}",
                            opt(name)
                        ),
                    ]);
                    vser += 1;
                }
                Device::Vsock { guest_cid } => {
                    if *guest_cid < 3 {
                        return Err(Error::Config(format!(
                            "vsock guest CID {guest_cid} is reserved (use 3 or more)"
                        )));
                    }
                    a.push(["-device", &format!("vhost-vsock-pci,guest-cid={guest_cid}")]);
                }
                Device::Virtio9p {
                    tag,
                    path: dir,
                    readonly,
                    security,
                } => {
                    if tag.is_empty() || tag.len() > 31 || tag.contains(',') {
                        return Err(Error::Config(format!(
                            "9p mount tag {tag:?} must be 1 to 31 characters without commas"
                        )));
                    }
                    let ro = if *readonly { ",readonly=on" } else { "" };
                    a.push([
                        "-fsdev",
                        &format!(
                            "local,id=fsdev{fsdev},path={},security_model={}{ro}",
                            path(dir)?,
                            security.name()
                        ),
                    ]);
                    a.push([
                        "-device",
                        &format!("virtio-9p-pci,fsdev=fsdev{fsdev},mount_tag={tag}"),
                    ]);
                    fsdev += 1;
                }
                Device::Rng => a.push(["-device", "virtio-rng-pci"]),
                Device::Watchdog => {
                    a.push(["-device", "i6300esb"]);
                    a.push(["-action", "watchdog=reset"]);
                }
                Device::Args(args) => a.0.extend(args.iter().cloned()),
            }
        }

        if self.no_reboot {
            a.push(["-no-reboot"]);
        }
        if self.snapshot {
            a.push(["-snapshot"]);
        }
        if self.paused {
            a.push(["-S"]);
        }
        if let Some(uri) = &self.incoming {
            a.push(["-incoming", uri]);
        }
        a.0.extend(self.extra_args.iter().cloned());
        Ok(a.0)
    }

    /// The whole command line as one shell-quoted string, for messages and logs.
    pub fn command_line(&self) -> Result<String> {
        let mut words = vec![shell_quote(&self.program.to_string_lossy())];
        words.extend(self.args()?.iter().map(|a| shell_quote(a)));
        Ok(words.join(" "))
    }

    /// A [`std::process::Command`] for this configuration, stdio not yet set. For running QEMU
    /// in the foreground (interactive `xtask run`); [`crate::Vm::spawn`] is for everything else.
    pub fn command(&self) -> Result<std::process::Command> {
        let mut cmd = std::process::Command::new(&self.program);
        cmd.args(self.args()?);
        Ok(cmd)
    }
}

#[derive(Default)]
struct Args(Vec<String>);

impl Args {
    fn push<const N: usize>(&mut self, words: [&str; N]) {
        self.0.extend(words.iter().map(|w| w.to_string()));
    }
}

/// A value inside a QEMU option list: commas are doubled.
fn opt(s: &str) -> String {
    s.replace(',', ",,")
}

fn path(p: &Path) -> Result<String> {
    p.to_str()
        .map(opt)
        .ok_or_else(|| Error::Config(format!("path {} is not UTF-8", p.display())))
}

/// Quotes a word for a POSIX shell (only when needed).
/// The migration URI that reads a state saved with [`crate::Vm::save`] from `file` (for
/// `-incoming`, or QMP `migrate-incoming` after `-incoming defer`).
pub fn restore_uri(file: &Path) -> String {
    format!("exec:cat {}", shell_quote(&file.to_string_lossy()))
}

pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn minimal_config_golden() {
        let args = VmConfig::new()
            .resolve(Path::new("/run/vm"))
            .args()
            .unwrap();
        assert_eq!(
            args,
            words(
                "-nodefaults -no-user-config -display none -machine q35 -accel tcg -smp 2 -m 1024M \
                 -chardev file,id=serial0,path=/run/vm/serial.log -serial chardev:serial0 \
                 -chardev socket,id=qmp,path=/run/vm/qmp.sock,server=on,wait=off -mon \
                 chardev=qmp,mode=control"
            )
        );
    }

    #[test]
    fn uefi_disk_net_golden() {
        let args = VmConfig::new()
            .name("axion-qemu")
            .cpus(4)
            .memory_mib(2048)
            .uefi()
            .drive(Drive::disk("/out/axion.qcow2", DiskFormat::Qcow2))
            .drive(Drive::cdrom("/out/axion.iso"))
            .user_net(
                NicModel::VirtioNet,
                vec![PortForward::tcp(2222, 22), PortForward::tcp(2376, 2376)],
            )
            .serial(Serial::None)
            .no_reboot(true)
            .resolve(Path::new("/run/vm"))
            .args()
            .unwrap();
        assert_eq!(
            args,
            words(
                "-nodefaults -no-user-config -display none -name axion-qemu -machine q35 -accel \
                 tcg -smp 4 -m 2048M -drive \
                 if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd \
                 -drive if=pflash,format=raw,unit=1,file=/run/vm/OVMF_VARS.fd \
                 -drive file=/out/axion.qcow2,format=qcow2,if=none,id=drive0 -device \
                 virtio-blk-pci,drive=drive0,bootindex=0 \
                 -drive file=/out/axion.iso,format=raw,if=none,id=drive1,media=cdrom,readonly=on \
                 -device ide-cd,bus=ide.0,drive=drive1,bootindex=1 \
                 -netdev \
                 user,id=net0,hostfwd=tcp:127.0.0.1:2222-:22,hostfwd=tcp:127.0.0.1:2376-:2376 \
                 -device virtio-net-pci,netdev=net0,romfile= \
                 -chardev socket,id=qmp,path=/run/vm/qmp.sock,server=on,wait=off -mon \
                 chardev=qmp,mode=control \
                 -no-reboot"
            )
        );
    }

    #[test]
    fn vsphere_hardware_golden() {
        let args = VmConfig::new()
            .accel(Accel::Kvm)
            .cpu("host")
            .drive(Drive::disk("/d.vmdk", DiskFormat::Vmdk).interface(DiskInterface::Pvscsi))
            .drive(
                Drive::disk("/e.raw", DiskFormat::Raw)
                    .interface(DiskInterface::Pvscsi)
                    .readonly(true),
            )
            .user_net(NicModel::Vmxnet3, vec![])
            .serial_file("/s.log")
            .qmp_socket("/q.sock")
            .args()
            .unwrap();
        assert_eq!(
            args,
            words(
                "-nodefaults -no-user-config -display none -machine q35 -accel kvm -cpu host -smp \
                 2 -m 1024M \
                 -drive file=/d.vmdk,format=vmdk,if=none,id=drive0 -device pvscsi,id=pvscsi0 \
                 -device scsi-hd,bus=pvscsi0.0,drive=drive0,bootindex=0 \
                 -drive file=/e.raw,format=raw,if=none,id=drive1,readonly=on -device \
                 scsi-hd,bus=pvscsi0.0,drive=drive1,bootindex=1 \
                 -netdev user,id=net0 -device vmxnet3,netdev=net0,romfile= \
                 -chardev file,id=serial0,path=/s.log -serial chardev:serial0 \
                 -chardev socket,id=qmp,path=/q.sock,server=on,wait=off -mon \
                 chardev=qmp,mode=control"
            )
        );
    }

    #[test]
    fn direct_kernel_interactive_fwcfg_devices_golden() {
        let cfg = VmConfig::new()
            .machine(Machine::Pc)
            .cpus(1)
            .memory_mib(256)
            .kernel(
                "/k/vmlinuz",
                Some("/k/initrd.zst".into()),
                "console=ttyS0 quiet",
            )
            .drive(Drive::disk("/a,b.raw", DiskFormat::Raw).interface(DiskInterface::Sata))
            .drive(Drive::cdrom("/c.iso"))
            .drive(Drive::cdrom("/d.iso"))
            .serial(Serial::Stdio {
                log: Some("/l.log".into()),
            })
            .fw_cfg_string("opt/axion/hostname", "a,b")
            .fw_cfg_file("opt/axion/settings", "/s.toml")
            .device(Device::VirtioSerialPort {
                name: "org.axion.agent".into(),
                socket: "/agent.sock".into(),
            })
            .device(Device::Vsock { guest_cid: 3 })
            .device(Device::Virtio9p {
                tag: "store".into(),
                path: "/s,t".into(),
                readonly: true,
                security: Security9p::Passthrough,
            })
            .snapshot(true)
            .paused(true)
            .restore_from(Path::new("/saved state"))
            .extra_args(["-rtc", "base=utc"]);
        let args = cfg.resolve(Path::new("/r")).args().unwrap();
        let mut expected = words(
            "-nodefaults -no-user-config -display none -machine pc -accel tcg -smp 1 -m 256M \
             -kernel /k/vmlinuz -initrd /k/initrd.zst -append",
        );
        expected.push("console=ttyS0 quiet".into());
        expected.extend(words(
            "-drive file=/a,,b.raw,format=raw,if=none,id=drive0 -device \
             ide-hd,bus=ide.0,unit=0,drive=drive0 \
             -drive file=/c.iso,format=raw,if=none,id=drive1,media=cdrom,readonly=on -device \
             ide-cd,bus=ide.0,unit=1,drive=drive1 \
             -drive file=/d.iso,format=raw,if=none,id=drive2,media=cdrom,readonly=on -device \
             ide-cd,bus=ide.1,unit=0,drive=drive2 \
             -chardev stdio,id=serial0,mux=on,signal=off,logfile=/l.log -serial chardev:serial0 \
             -mon chardev=serial0,mode=readline \
             -chardev socket,id=qmp,path=/r/qmp.sock,server=on,wait=off -mon \
             chardev=qmp,mode=control \
             -fw_cfg name=opt/axion/hostname,string=a,,b -fw_cfg \
             name=opt/axion/settings,file=/s.toml \
             -device virtio-serial-pci,id=vser0 -chardev \
             socket,id=vser0,path=/agent.sock,server=on,wait=off \
             -device virtserialport,bus=vser0.0,chardev=vser0,name=org.axion.agent \
             -device vhost-vsock-pci,guest-cid=3 \
             -fsdev local,id=fsdev0,path=/s,,t,security_model=passthrough,readonly=on -device \
             virtio-9p-pci,fsdev=fsdev0,mount_tag=store \
             -snapshot -S -incoming",
        ));
        expected.push("exec:cat '/saved state'".into());
        expected.extend(words("-rtc base=utc"));
        assert_eq!(args, expected);
    }

    #[test]
    fn the_watchdog_resets_the_machine() {
        let args = VmConfig::new()
            .kernel("/k", None, "console=ttyS0")
            .device(Device::Watchdog)
            .resolve(Path::new("/r"))
            .args()
            .unwrap()
            .join(" ");
        assert!(
            args.ends_with("-device i6300esb -action watchdog=reset"),
            "{args}"
        );
    }

    #[test]
    fn qboot_kernel_with_rng_golden() {
        let args = VmConfig::new()
            .firmware(Firmware::Qboot)
            .kernel("/k", None, "console=ttyS0")
            .device(Device::Rng)
            .resolve(Path::new("/r"))
            .args()
            .unwrap();
        let mut expected = words(
            "-nodefaults -no-user-config -display none -machine q35 -accel tcg -smp 2 -m 1024M \
             -bios /usr/share/qemu/qboot.rom -kernel /k -append",
        );
        expected.push("console=ttyS0".into());
        expected.extend(words(
            "-chardev file,id=serial0,path=/r/serial.log -serial chardev:serial0 \
             -chardev socket,id=qmp,path=/r/qmp.sock,server=on,wait=off -mon \
             chardev=qmp,mode=control -device virtio-rng-pci",
        ));
        assert_eq!(args, expected);
        // qboot cannot boot a disk: refused here rather than a VM that never boots.
        let disk = VmConfig::new()
            .firmware(Firmware::Qboot)
            .drive(Drive::disk("/d.qcow2", DiskFormat::Qcow2))
            .resolve(Path::new("/r"))
            .args();
        assert!(
            matches!(&disk, Err(Error::Config(m)) if m.contains("qboot")),
            "{disk:?}"
        );
    }

    #[test]
    fn unresolved_and_invalid_configs_are_refused() {
        let e = VmConfig::new().args().unwrap_err().to_string();
        assert!(e.contains("serial log path is not resolved"), "{e}");
        let e = VmConfig::new()
            .uefi()
            .serial(Serial::None)
            .args()
            .unwrap_err()
            .to_string();
        assert!(e.contains("UEFI variable store"), "{e}");
        let e = VmConfig::new()
            .serial(Serial::None)
            .fw_cfg_string("axion/x", "1")
            .args()
            .unwrap_err()
            .to_string();
        assert!(e.contains("axion/x") && e.contains("opt/"), "{e}");
        let e = VmConfig::new()
            .serial(Serial::None)
            .cpus(0)
            .args()
            .unwrap_err()
            .to_string();
        assert!(e.contains("0 CPUs"), "{e}");
    }

    #[test]
    fn command_line_is_shell_quoted() {
        let cfg = VmConfig::new()
            .serial(Serial::None)
            .kernel("/k", None, "console=ttyS0 it's");
        let line = cfg.command_line().unwrap();
        assert!(line.starts_with("qemu-system-x86_64 -nodefaults"), "{line}");
        assert!(line.ends_with(r"-append 'console=ttyS0 it'\''s'"), "{line}");
    }

    #[test]
    fn prepare_copies_uefi_vars_once_and_truncates_serial_log() {
        let dir = tempfile::tempdir().unwrap();
        let template = dir.path().join("template.fd");
        let code = dir.path().join("code.fd");
        std::fs::write(&template, b"fresh").unwrap();
        std::fs::write(&code, b"code").unwrap();
        let cfg = VmConfig::new()
            .firmware(Firmware::Uefi {
                code,
                vars_template: template,
                vars: None,
            })
            .resolve(dir.path());
        let vars = dir.path().join("OVMF_VARS.fd");
        std::fs::write(dir.path().join("serial.log"), b"old run").unwrap();
        cfg.prepare().unwrap();
        assert_eq!(std::fs::read(&vars).unwrap(), b"fresh");
        assert_eq!(std::fs::read(dir.path().join("serial.log")).unwrap(), b"");
        // A store that exists (boot entries written by the guest) is kept.
        std::fs::write(&vars, b"used").unwrap();
        cfg.prepare().unwrap();
        assert_eq!(std::fs::read(&vars).unwrap(), b"used");
    }
}
