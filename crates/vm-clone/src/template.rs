//! The template VM and its clones.
//!
//! The template is the qemu profile's kernel and initramfs (plus the daemon's appended
//! archive, see [`crate::guest`]) booted once with its data disk as a qcow2 overlay, until
//! init's ready line and a `/_ping` from the guest engine; then its state is saved to a file
//! (QMP migrate to `exec:cat`) and QEMU quits. Its disk overlay becomes the read-only
//! backing file of every clone's own overlay. A clone is a new QEMU with the same devices,
//! `-incoming` from the state file, its own overlay and its own forwarded ports; after `cont`
//! the daemon sends the clone agent its identity over virtio-serial. The daemon reaches the
//! guest engine over a second virtio-serial port ([`vmd_contract::ENGINE_PORT`], socket
//! [`ENGINE_SOCKET`] in the VM's directory); user-net forwards are only for `-p`.
//!
//! RAM (as VMware's instant clone does): the template's RAM is a file in its directory
//! (`ram`, a shared memory-backend-file), and the save leaves it out of the state (migration
//! capability `x-ignore-shared`), so the state file holds only device state. A clone maps
//! that file copy-on-write (`share=off`): its restore copies no RAM (0.09-0.12 s against
//! 0.13-0.27 s when the state held the template's 54 MiB of touched RAM) and clones share
//! the template's pages until they write them. Cold boots use anonymous RAM.
//!
//! Everything that must be equal between the template and its clones (devices, memory,
//! kernel, initrd, disk chain) comes from one function, [`Template::config`].

use crate::guest;
use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use vmd_contract::{Identity, Reply, Request};

/// What the daemon boots.
#[derive(Debug, Clone)]
pub struct ImageFiles {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// The profile's qcow2 disk (its axion-data partition becomes /var/lib); without one
    /// /var/lib is a tmpfs inside the saved RAM.
    pub disk: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct Template {
    pub dir: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub disk: Option<PathBuf>,
    pub state: PathBuf,
    /// The template's RAM (see [`Ram`]).
    pub ram: PathBuf,
    pub memory_mib: u64,
    pub cpus: u32,
    pub accel: qemu::Accel,
    /// The directory shared read-only over 9p ([`vmd_contract::STORE_TAG`]): axion-vmd's layer
    /// store, or a containerd sandbox's share of its containers' root filesystems.
    pub store: PathBuf,
}

/// QEMU's end of the guest engine's virtio-serial port, in the VM's run directory.
pub const ENGINE_SOCKET: &str = "engine.sock";
/// QEMU's end of the clone agent's virtio-serial port, in the VM's run directory.
const AGENT_SOCKET: &str = "agent.sock";

fn vm_serial(run: &Path) -> String {
    run.join("serial.log").display().to_string()
}

/// Kernel command line of the template (and so of every clone).
pub const CMDLINE: &str = "console=ttyS0,115200 panic=-1 quiet";

/// The firmware of every VM (template, clones, cold boots): qboot where installed, which only
/// jumps to the direct kernel (0.3-1 s sooner than SeaBIOS under TCG), else SeaBIOS. Part of
/// the template's key: a saved state restores only into the same firmware.
fn firmware() -> qemu::Firmware {
    if std::path::Path::new(qemu::QBOOT).is_file() {
        qemu::Firmware::Qboot
    } else {
        qemu::Firmware::Bios
    }
}

fn file_hash(h: &mut Sha256, p: &Path) -> Result<()> {
    let data = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
    h.update(Sha256::digest(&data));
    Ok(())
}

/// `qemu-img create -f qcow2 -b BACKING -F qcow2 DEST`.
pub fn overlay(backing: &Path, dest: &Path) -> Result<()> {
    let out = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(backing)
        .arg(dest)
        .output()
        .context("running qemu-img (Debian: apt-get install qemu-utils)")?;
    if !out.status.success() {
        bail!(
            "qemu-img create -b {} {}: {}",
            backing.display(),
            dest.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl Template {
    /// The template for these files and settings under `root/template-KEY/`, built when
    /// missing (boot + save, tens of seconds under TCG).
    pub fn ensure(
        root: &Path,
        image: &ImageFiles,
        memory_mib: u64,
        cpus: u32,
        accel: qemu::Accel,
        store: &Path,
    ) -> Result<Template> {
        let extra = guest::newc(&guest::overlay_files());
        let mut h = Sha256::new();
        file_hash(&mut h, &image.kernel)?;
        file_hash(&mut h, &image.initrd)?;
        if let Some(d) = &image.disk {
            file_hash(&mut h, d)?;
        }
        h.update(&extra);
        // A saved state only loads into the QEMU that wrote it.
        let qv = Command::new("qemu-system-x86_64")
            .arg("--version")
            .output()
            .map(|o| o.stdout)
            .unwrap_or_default();
        h.update(&qv);
        h.update(format!(
            "{memory_mib} {cpus} {} {CMDLINE} v3 9p vchan ram-file {:?} vol-slots-{}",
            accel.name(),
            firmware(),
            crate::slots::SLOTS
        ));
        let key = hex::encode(h.finalize());
        let dir = root.join(format!("template-{}", &key[..16]));
        let t = Template {
            kernel: image.kernel.clone(),
            initrd: dir.join("initrd"),
            disk: image.disk.as_ref().map(|_| dir.join("disk.qcow2")),
            state: dir.join("state"),
            ram: dir.join("ram"),
            dir: dir.clone(),
            memory_mib,
            cpus,
            accel,
            store: store.to_path_buf(),
        };
        if dir.join("complete").exists() {
            std::fs::create_dir_all(t.empty_slot())?;
            return Ok(t);
        }
        // Older templates are of no use any more.
        if let Ok(rd) = std::fs::read_dir(root) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().starts_with("template-") {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::create_dir_all(t.empty_slot())?;
        guest::append_initramfs(&image.initrd, &extra, &t.initrd)
            .with_context(|| format!("writing {}", t.initrd.display()))?;
        if let (Some(base), Some(disk)) = (&image.disk, &t.disk) {
            let base = std::fs::canonicalize(base)
                .with_context(|| format!("resolving {}", base.display()))?;
            overlay(&base, disk)?;
        }
        eprintln!(
            "vmd: building the template VM in {} (boot, then save)",
            dir.display()
        );
        let started = Instant::now();
        let run = dir.join("run");
        let cfg = t.config(&run, &[], &[], Ram::TemplateWrite);
        let mut vm = qemu::Vm::spawn(cfg).context("starting the template VM")?;
        vm.wait_ready(Duration::from_secs(300))
            .context("booting the template VM")?;
        // The engine starts a moment after the ready line; save only once it answers, so
        // a clone serves at once. One session for all attempts (a session starts at the
        // first byte after the host connects: vchan::port): what the host sends before the
        // engine has opened its port waits in QEMU.
        let serial = || vm_serial(&run);
        let client = crate::client::GuestClient::new(&run.join(ENGINE_SOCKET));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let deadline = Instant::now() + Duration::from_secs(120);
        while let Err(e) = rt.block_on(client.try_ping()) {
            if Instant::now() > deadline {
                bail!(
                    "the template VM's engine did not answer /_ping within 120 s: {e} (serial \
                     log: {})",
                    serial()
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        // Disconnect, and save only once the engine is back in its wait for the host: every
        // clone resumes there, ready for a session of its own.
        drop(client);
        drop(rt);
        vm.wait_for_line(vchan::port::SESSION_ENDED, Duration::from_secs(60))
            .with_context(|| {
                format!(
                    "the template VM's engine did not end its session with the \
                     host (serial log: {})",
                    serial()
                )
            })?;
        // The saved state then holds no RAM: the template's RAM is its file.
        ignore_shared_ram(&mut vm).context("saving the template VM")?;
        vm.save(&t.state, Duration::from_secs(300))
            .context("saving the template VM")?;
        let _ = vm.qmp().and_then(|q| q.quit().map_err(Into::into));
        let _ = vm.wait_exit(Duration::from_secs(20));
        std::fs::write(dir.join("complete"), b"")?;
        let size = std::fs::metadata(&t.state).map(|m| m.len()).unwrap_or(0);
        eprintln!(
            "vmd: template ready in {:.1} s (state {} MiB)",
            started.elapsed().as_secs_f64(),
            size >> 20
        );
        Ok(t)
    }

    /// The VM configuration: the same for the template and every clone except for the run
    /// directory (where the sockets are), the disk overlay, the port forwards (`-p`) and
    /// how the RAM is backed ([`Ram`]).
    /// What an unused volume slot exports (an empty directory, read-only).
    fn empty_slot(&self) -> PathBuf {
        self.dir.join("empty-slot")
    }

    pub fn config(
        &self,
        run_dir: &Path,
        forwards: &[qemu::PortForward],
        slots: &[crate::slots::Slot],
        ram: Ram,
    ) -> qemu::VmConfig {
        let mut extra: Vec<String> = Vec::new();
        if let Some(share) = match ram {
            Ram::Anonymous => None,
            Ram::TemplateWrite => Some("on"),
            Ram::TemplateCopyOnWrite => Some("off"),
        } {
            extra.extend([
                "-object".into(),
                format!(
                    "memory-backend-file,id=axion-ram,size={}M,mem-path={},share={share}",
                    self.memory_mib,
                    self.ram.display()
                ),
                "-machine".into(),
                "memory-backend=axion-ram".into(),
            ]);
        }
        let mut cfg = qemu::VmConfig::new()
            .accel(self.accel)
            .cpus(self.cpus)
            .memory_mib(self.memory_mib)
            .run_dir(run_dir)
            .no_reboot(true)
            .firmware(firmware())
            .kernel(&self.kernel, Some(self.initrd.clone()), CMDLINE)
            .user_net(qemu::NicModel::VirtioNet, forwards.to_vec())
            .device(qemu::Device::VirtioSerialPort {
                name: vmd_contract::AGENT_PORT.into(),
                socket: run_dir.join(AGENT_SOCKET),
            })
            .device(qemu::Device::VirtioSerialPort {
                name: vmd_contract::ENGINE_PORT.into(),
                socket: run_dir.join(ENGINE_SOCKET),
            })
            // Present in the template too (the device set must match the saved state), but
            // mounted only by a clone's agent: a mounted 9p export blocks the save.
            .device(qemu::Device::Virtio9p {
                tag: vmd_contract::STORE_TAG.into(),
                path: self.store.clone(),
                readonly: true,
                security: qemu::Security9p::Passthrough,
            });
        // The volume slots (crate::volumes): the same devices everywhere, each clone's paths.
        for i in 0..crate::slots::SLOTS {
            let (path, readonly) = match slots.get(i) {
                Some(s) => (s.path.clone(), s.readonly),
                None => (self.empty_slot(), true),
            };
            cfg = cfg.device(qemu::Device::Virtio9p {
                tag: crate::slots::slot_tag(i),
                path,
                readonly,
                security: qemu::Security9p::Passthrough,
            });
        }
        cfg.extra_args.extend(extra);
        if let Some(d) = &self.disk {
            // The clone's overlay sits at the same place in its run directory.
            let disk = if run_dir.ends_with("run") && run_dir.parent() == Some(&self.dir) {
                d.clone()
            } else {
                run_dir.join("disk.qcow2")
            };
            cfg = cfg.drive(qemu::Drive::disk(disk, qemu::DiskFormat::Qcow2));
        }
        cfg
    }

    /// Starts a clone in `run_dir`: overlay, QEMU restoring the saved state, `cont`. Returns
    /// the VM; its engine is reached through `run_dir/`[`ENGINE_SOCKET`], and it still needs
    /// its identity ([`identify`]) before it runs a container.
    /// With `cold`, the VM boots from scratch instead (same files, same devices), up to
    /// init's ready line: the baseline the clone is measured against.
    pub fn clone_vm(
        &self,
        run_dir: &Path,
        hostname: &str,
        forwards: &[qemu::PortForward],
        slots: &[crate::slots::Slot],
        cold: bool,
    ) -> Result<qemu::Vm> {
        std::fs::create_dir_all(run_dir)
            .with_context(|| format!("creating {}", run_dir.display()))?;
        if let Some(d) = &self.disk {
            let t0 = Instant::now();
            overlay(d, &run_dir.join("disk.qcow2"))?;
            crate::debug(&format!(
                "{hostname}: overlay created in {:.3} s",
                t0.elapsed().as_secs_f64()
            ));
        }
        let mut vm;
        if cold {
            let cfg = self.config(run_dir, forwards, slots, Ram::Anonymous);
            vm = qemu::Vm::spawn(cfg).context("starting the VM")?;
            vm.wait_ready(Duration::from_secs(300))
                .context("booting the VM")?;
        } else {
            let t0 = Instant::now();
            // The capability must be on at both ends before the stream starts (QEMU 7.2 has
            // no -global for it): wait for the stream, set it, then read the state.
            let mut cfg = self.config(run_dir, forwards, slots, Ram::TemplateCopyOnWrite);
            cfg.incoming = Some("defer".into());
            vm = qemu::Vm::spawn(cfg).context("starting the clone VM")?;
            ignore_shared_ram(&mut vm).context("starting the clone VM")?;
            vm.qmp()?
                .migrate_incoming(&qemu::restore_uri(&self.state))
                .context("restoring the template state")?;
            vm.wait_restored(Duration::from_secs(120))
                .context("restoring the template state")?;
            vm.qmp()?.cont()?;
            crate::debug(&format!(
                "{hostname}: QEMU restored the template in {:.2} s",
                t0.elapsed().as_secs_f64()
            ));
        }
        Ok(vm)
    }
}

/// Hands a started clone (or cold-booted VM) in `run_dir` its identity through the clone
/// agent (see guest.rs) and waits for its answer. The daemon runs this beside its first
/// `/_ping` of the VM's engine, which does not need it; a container does (the layer store
/// mounted, the RNG reseeded).
///
/// Returns the agent's channel, still connected: hold it for the VM's life. While the host
/// end is connected, the agent's read blocks; with it closed, the read returns EOF at once
/// and the agent polls every 5 ms, taking TCG time from the container's start.
pub fn identify(run_dir: &Path, hostname: &str) -> Result<UnixStream> {
    let agent = connect_agent(run_dir, Duration::from_secs(60))?;
    identify_over(agent, run_dir, hostname)
}

/// Connects to the clone agent's channel of the VM in `run_dir` without sending anything:
/// while the host end is connected the agent's read blocks, so a clone kept waiting (axion-vmd's
/// warm pool) does not poll. Its identity goes later over the same stream ([`identify_over`]).
pub fn connect_agent(run_dir: &Path, timeout: Duration) -> Result<UnixStream> {
    let sock = run_dir.join(AGENT_SOCKET);
    let deadline = Instant::now() + timeout;
    loop {
        match UnixStream::connect(&sock) {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() > deadline => {
                bail!("cannot connect to {}: {e}", sock.display())
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Asks the agent on `agent` (connected with [`connect_agent`]) to mount the layer store now,
/// before the clone has its identity (the store is the same for every clone), and waits
/// for its answer: a clone's identity then skips the mount. False when the agent did not
/// answer within `timeout` (a guest from before `mount`: the identity mounts the store).
pub fn mount_store_ahead(agent: &UnixStream, timeout: Duration) -> Result<bool> {
    let mut w = agent;
    w.write_all(Request::Mount.to_line()?.as_bytes())?;
    agent.set_read_timeout(Some(Duration::from_millis(200)))?;
    let mut r = BufReader::new(agent);
    let mut got = String::new();
    let deadline = Instant::now() + timeout;
    loop {
        match r.read_line(&mut got) {
            Ok(0) => bail!("the clone agent closed the channel"),
            Ok(_) if Reply::parse(&got) == Ok(Reply::Mounted) => return Ok(true),
            Ok(_) => got.clear(),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e.into()),
        }
        if Instant::now() > deadline {
            return Ok(false);
        }
    }
}

/// [`identify`] over a channel already connected with [`connect_agent`].
pub fn identify_over(agent: UnixStream, run_dir: &Path, hostname: &str) -> Result<UnixStream> {
    let t0 = Instant::now();
    let agent = agent_exchange(agent, hostname, Duration::from_secs(60)).with_context(|| {
        format!(
            "handing the clone its identity (serial log {})",
            run_dir.join("serial.log").display()
        )
    })?;
    crate::debug(&format!(
        "{hostname}: the clone agent took its identity (and mounted the store) in {:.2} s",
        t0.elapsed().as_secs_f64()
    ));
    Ok(agent)
}

/// How a VM's RAM is backed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ram {
    /// Ordinary anonymous memory (a cold boot).
    Anonymous,
    /// The template: its RAM is the file `ram` in the template's directory (a shared
    /// mapping), so the saved state needs none of it.
    TemplateWrite,
    /// A clone: the template's RAM file mapped copy-on-write (private). Restoring copies no
    /// RAM, and clones share the template's pages until they write them.
    TemplateCopyOnWrite,
}

/// Turns on the migration capability `x-ignore-shared`: RAM in a shared memory backend is
/// left out of the stream (the template's RAM is its file, see [`Ram`]).
fn ignore_shared_ram(vm: &mut qemu::Vm) -> Result<()> {
    let caps =
        serde_json::json!({ "capabilities": [{ "capability": "x-ignore-shared", "state": true }] });
    vm.qmp()?
        .execute("migrate-set-capabilities", Some(caps))
        .context("QMP migrate-set-capabilities x-ignore-shared")?;
    Ok(())
}

/// A fresh locally administered unicast MAC.
pub fn random_mac() -> [u8; 6] {
    let mut b: [u8; 6] = rand::random();
    b[0] = (b[0] & 0xfe) | 0x02;
    b
}

/// Sends `clone HOSTNAME EPOCH MAC SEED` to the agent on `stream` and waits for `ok
/// HOSTNAME`; returns the channel, still connected.
fn agent_exchange(stream: UnixStream, hostname: &str, timeout: Duration) -> Result<UnixStream> {
    // A host name the line cannot carry fails here, not as a time-out.
    let line = Request::Clone(Identity {
        hostname: hostname.to_string(),
        epoch: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        mac: random_mac(),
        seed: rand::random::<[u8; 32]>().to_vec(),
    })
    .to_line()?;
    let deadline = Instant::now() + timeout;
    (&stream).write_all(line.as_bytes())?;
    stream.set_read_timeout(Some(Duration::from_millis(500)))?;
    let mut r = BufReader::new(&stream);
    let mut got = String::new();
    let is_answer =
        |got: &str| matches!(Reply::parse(got), Ok(Reply::Ok { hostname: h }) if h == hostname);
    loop {
        match r.read_line(&mut got) {
            Ok(0) => bail!("the clone agent closed the channel"),
            Ok(_) if is_answer(&got) => break,
            Ok(_) => got.clear(),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e.into()),
        }
        if Instant::now() > deadline {
            bail!(
                "the clone agent did not answer within {} s",
                timeout.as_secs()
            );
        }
    }
    drop(r);
    Ok(stream)
}
