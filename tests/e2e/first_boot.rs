//! First-boot settings and per-clone identity, as someone who clones VMs from one image
//! would see them (packages/init: `sources`, `cloudinit`, `ovfenv`, `identity`):
//!
//! - one qcow2 image, cloned twice (qcow2 overlays), each clone booted with its own NoCloud
//!   volume (one ISO 9660, one vfat): two hostnames, two static addresses, two SSH host
//!   keys, two machine ids; an SSH login with the key from user-data runs a command, runcmd
//!   ran, write_files wrote; a reboot of a clone keeps its identity;
//! - the same with an `ovf-env.xml` ISO, as vSphere's ISO transport attaches it;
//! - QEMU fw_cfg (`opt/axion/*`) wins over a NoCloud volume attached at the same time, and
//!   the kernel command line wins over fw_cfg;
//! - malformed user-data: the VM still reaches the ready line and says what was wrong.
//!
//! Static addresses on QEMU's user network: the guest takes 10.0.2.x itself, and the port
//! forward names that address (`hostfwd=tcp:127.0.0.1:P-10.0.2.x:22`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use axion_tests::{boot_ready, image, qemu};
use qemu::{DiskFormat, Drive, VmConfig};
use xtask::image::Bootable;
use xtask::profile::Format;

fn have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .is_ok_and(|o| o.status.success())
}

fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

use axion_tests::ssh_keygen as keygen;

fn ssh(key: &Path, port: u16, command: &str) -> std::process::Output {
    axion_tests::ssh(key, port, &[], command)
        .output()
        .expect("ssh runs")
}

/// Runs `command` over SSH, retrying while sshd comes up (it starts after the network and
/// makes its host key on the first connection).
fn ssh_retry(vm: &qemu::Vm, key: &Path, port: u16, command: &str) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let out = ssh(key, port, command);
        if out.status.success() {
            return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
        }
        if Instant::now() > deadline {
            bail!(
                "ssh {command:?} failed: {}\nserial:\n{}",
                String::from_utf8_lossy(&out.stderr),
                vm.serial_log()
                    .map(|p| axion_tests::tail(p, 60))
                    .unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// The SSH server's ed25519 host key as the client sees it.
fn host_key(port: u16) -> Result<String> {
    let out = run(Command::new("ssh-keyscan").args([
        "-T",
        "20",
        "-t",
        "ed25519",
        "-p",
        &port.to_string(),
        "127.0.0.1",
    ]))?;
    out.lines()
        .find(|l| l.contains("ssh-ed25519"))
        .map(|l| l.split_whitespace().last().unwrap_or("").to_owned())
        .context("ssh-keyscan printed no ed25519 key")
}

/// A NoCloud seed: ISO 9660 (xorriso, like cloud-localds) or vfat (mkfs.vfat + mcopy).
fn cidata(dir: &Path, name: &str, iso: bool, docs: &[(&str, &str)]) -> Result<PathBuf> {
    let tree = dir.join(format!("{name}-tree"));
    std::fs::create_dir_all(&tree)?;
    for (file, text) in docs {
        std::fs::write(tree.join(file), text)?;
    }
    if iso {
        let out = dir.join(format!("{name}.iso"));
        run(Command::new("xorriso")
            .args(["-as", "mkisofs", "-quiet", "-V", "cidata", "-J", "-R", "-o"])
            .arg(&out)
            .arg(&tree))?;
        Ok(out)
    } else {
        let out = dir.join(format!("{name}.img"));
        run(Command::new("mkfs.vfat")
            .args(["-n", "CIDATA", "-C"])
            .arg(&out)
            .arg("2048"))?;
        for (file, _) in docs {
            run(Command::new("mcopy")
                .arg("-i")
                .arg(&out)
                .arg(tree.join(file))
                .arg(format!("::{file}")))?;
        }
        Ok(out)
    }
}

/// A qcow2 clone of the image (its own data partition, the image untouched).
fn clone_of(base: &Path, dir: &Path, name: &str) -> Result<PathBuf> {
    let out = dir.join(format!("{name}.qcow2"));
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(base)
        .arg(&out))?;
    Ok(out)
}

/// QEMU's user network with SSH forwarded to `guest_ip` (a static address) or to the DHCP
/// address when `None`.
fn net_to(port: u16, guest_ip: Option<&str>) -> qemu::Device {
    let to = guest_ip.unwrap_or("");
    qemu::Device::Args(vec![
        "-netdev".into(),
        format!("user,id=fbnet,net=10.0.2.0/24,hostfwd=tcp:127.0.0.1:{port}-{to}:22"),
        "-device".into(),
        "virtio-net-pci,netdev=fbnet".into(),
    ])
}

fn qcow2_image() -> Result<PathBuf> {
    match image("qemu", Format::Qcow2)? {
        Bootable::Disk { path, .. } => Ok(path),
        _ => bail!("the qcow2 format is not a disk image"),
    }
}

fn initramfs_image() -> Result<(PathBuf, PathBuf)> {
    match image("qemu", Format::Initramfs)? {
        Bootable::Kernel { kernel, initrd } => Ok((kernel, initrd)),
        _ => bail!("the initramfs format is not a kernel and an initramfs"),
    }
}

fn serial(vm: &qemu::Vm) -> String {
    vm.serial_log()
        .map(|p| std::fs::read_to_string(p).unwrap_or_default())
        .unwrap_or_default()
}

fn disk_vm(run_dir: PathBuf, disk: &Path, port: u16, ip: Option<&str>) -> VmConfig {
    let (accel, _) = axion_tests::accel();
    VmConfig::new()
        .accel(accel)
        .memory_mib(768)
        .run_dir(run_dir)
        .drive(Drive::disk(disk, DiskFormat::Qcow2))
        .device(net_to(port, ip))
}

/// The qemu profile's kernel and initramfs with the serial console and `extra` parameters.
fn initramfs_vm(run_dir: PathBuf, kernel: &Path, initrd: &Path, extra: &str) -> VmConfig {
    let (accel, _) = axion_tests::accel();
    let cmdline = format!("console=ttyS0,115200 panic=-1 {extra}");
    VmConfig::new()
        .accel(accel)
        .memory_mib(512)
        .run_dir(run_dir)
        .kernel(kernel, Some(initrd.to_path_buf()), cmdline.trim_end())
}

struct Seen {
    hostname: String,
    addrs: String,
    machine_id: String,
    host_key: String,
    console: String,
}

/// Boots, logs in with `key`, and collects what differs between clones.
fn boot_and_look(config: VmConfig, key: &Path, port: u16, extra: &str) -> Result<(Seen, String)> {
    let (mut vm, _ready) = boot_ready(config)?;
    let out = ssh_retry(
        &vm,
        key,
        port,
        &format!("hostname; cat /etc/machine-id; echo @@; ip -4 addr show; echo @@; {extra}"),
    )?;
    let host_key = host_key(port)?;
    let parts: Vec<&str> = out.split("@@\n").collect();
    let [ids, addrs, extra_out] = parts[..] else {
        bail!("unexpected ssh output:\n{out}")
    };
    let mut lines = ids.lines();
    let hostname = lines.next().unwrap_or("").to_owned();
    let machine_id = lines.next().unwrap_or("").to_owned();
    let (addrs, extra_out) = (addrs.to_owned(), extra_out.trim_end().to_owned());
    let console = serial(&vm);
    vm.powerdown_and_wait(Duration::from_secs(60))
        .context("clean power-off")?;
    Ok((
        Seen {
            hostname,
            addrs,
            machine_id,
            host_key,
            console,
        },
        extra_out,
    ))
}

fn user_data(host: &str, key: &str) -> String {
    format!(
        "#cloud-config\nhostname: {host}\nusers:\n  - default\n  - name: root\n    \
         ssh_authorized_keys:\n      - {key}\nwrite_files:\n  - path: \
         /etc/axion-test/greeting\n    content: |\n      hello from {host}\n    permissions: \
         '0600'\nruncmd:\n  - echo runcmd-ran-on-$(hostname) > /var/lib/runcmd-flag\n"
    )
}

fn network(ip: &str) -> String {
    format!(
        "version: 2\nethernets:\n  eth0:\n    addresses: [{ip}/24]\n    gateway4: \
         10.0.2.2\n    nameservers:\n      addresses: [10.0.2.3]\n"
    )
}

/// What this host lacks for these tests, if anything.
fn preflight() -> Option<String> {
    let tools = [
        "qemu-img",
        "ssh",
        "ssh-keygen",
        "ssh-keyscan",
        "xorriso",
        "mkfs.vfat",
        "mcopy",
    ];
    let missing: Vec<&str> = tools.iter().copied().filter(|t| !have(t)).collect();
    if !axion_tests::have_qemu() {
        return Some("qemu-system-x86_64 is not installed".into());
    }
    if !missing.is_empty() {
        return Some(format!(
            "these host tools are missing: {}",
            missing.join(", ")
        ));
    }
    None
}

#[test]
fn nocloud_clones_get_their_own_identity() {
    if let Some(why) = preflight() {
        return axion_tests::skip(why);
    }
    nocloud_clones().unwrap();
}

fn nocloud_clones() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (key, public) = keygen(dir.path(), "clone")?;
    let base = qcow2_image()?;
    let mut seen = Vec::new();
    for (name, ip, iso) in [
        ("clone-a", "10.0.2.21", true),
        ("clone-b", "10.0.2.22", false),
    ] {
        let seed = cidata(
            dir.path(),
            name,
            iso,
            &[
                (
                    "meta-data",
                    &format!("instance-id: iid-{name}\nlocal-hostname: meta-{name}\n"),
                ),
                ("user-data", &user_data(name, &public)),
                ("network-config", &network(ip)),
            ],
        )?;
        let disk = clone_of(&base, dir.path(), name)?;
        let port = qemu::free_port()?;
        let config =
            disk_vm(dir.path().join(format!("vm-{name}")), &disk, port, Some(ip)).drive(if iso {
                Drive::cdrom(&seed)
            } else {
                Drive::disk(&seed, DiskFormat::Raw)
            });
        // runcmd runs after the ready line; give it a moment before looking.
        let look = "sleep 1; cat /etc/axion-test/greeting; stat -c %a /etc/axion-test/greeting; \
                    cat /var/lib/runcmd-flag";
        let (s, extra) = boot_and_look(config.clone(), &key, port, look)?;
        assert_eq!(
            s.hostname, name,
            "user-data hostname wins over meta-data local-hostname"
        );
        assert!(
            s.addrs.contains(&format!("inet {ip}/24")),
            "{name}: static address {ip} from network-config, got:\n{}",
            s.addrs
        );
        assert_eq!(
            extra.lines().collect::<Vec<_>>(),
            [
                format!("hello from {name}"),
                "600".into(),
                format!("runcmd-ran-on-{name}")
            ],
            "{name}: write_files and runcmd"
        );
        assert!(
            s.console.contains(&format!(
                "axion: identity regenerated (first boot of instance iid-{name}"
            )),
            "{name}: console:\n{}",
            s.console
        );
        assert_eq!(
            s.machine_id.len(),
            32,
            "{name}: machine-id {:?}",
            s.machine_id
        );

        if name == "clone-a" {
            // A reboot of the same instance keeps its identity and does not run runcmd again.
            let (again, extra) = boot_and_look(
                config,
                &key,
                port,
                "rm /var/lib/runcmd-flag; ls \
                 /var/lib/runcmd-flag 2>&1; sleep 2; ls /var/lib/runcmd-flag 2>&1 || true",
            )?;
            assert_eq!(
                (again.machine_id.as_str(), again.host_key.as_str()),
                (s.machine_id.as_str(), s.host_key.as_str()),
                "same instance, same identity"
            );
            assert!(
                !again.console.contains("identity regenerated"),
                "{}",
                again.console
            );
            assert!(
                again
                    .console
                    .contains("runcmd already ran for instance iid-clone-a"),
                "{}",
                again.console
            );
            assert!(
                extra.lines().all(|l| l.contains("No such file")),
                "runcmd ran twice: {extra}"
            );
        }
        seen.push(s);
    }
    let (a, b) = (&seen[0], &seen[1]);
    assert_ne!(a.hostname, b.hostname);
    assert_ne!(a.machine_id, b.machine_id, "two clones share a machine-id");
    assert_ne!(a.host_key, b.host_key, "two clones share an SSH host key");
    Ok(())
}

fn ovf_env(props: &[(&str, &str)]) -> String {
    let mut s = String::from(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Environment \
         xmlns=\"http://schemas.dmtf.org/ovf/environment/1\" \
         xmlns:oe=\"http://schemas.dmtf.org/ovf/environment/1\" \
         xmlns:ve=\"http://www.vmware.com/schema/ovfenv\" oe:id=\"\" ve:vCenterId=\"vm-1001\">\n  \
         <PlatformSection>\n    <Kind>VMware ESXi</Kind>\n    <Version>7.0.3</Version>\n    \
         <Vendor>VMware, Inc.</Vendor>\n    <Locale>en</Locale>\n  </PlatformSection>\n  \
         <PropertySection>\n",
    );
    for (k, v) in props {
        s.push_str(&format!(
            "    <Property oe:key=\"{k}\" oe:value=\"{v}\"/>\n"
        ));
    }
    s.push_str("  </PropertySection>\n</Environment>\n");
    s
}

#[test]
fn ovf_environment_iso_configures_a_clone() {
    if let Some(why) = preflight() {
        return axion_tests::skip(why);
    }
    ovf_clone().unwrap();
}

fn ovf_clone() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (key, public) = keygen(dir.path(), "ovf")?;
    let base = qcow2_image()?;
    let tree = dir.path().join("ovf-tree");
    std::fs::create_dir_all(&tree)?;
    let ip = "10.0.2.33";
    let xml = ovf_env(&[
        ("hostname", "ovf-vm"),
        ("ssh-key", &public),
        ("ip", ip),
        ("netmask", "255.255.255.0"),
        ("gateway", "10.0.2.2"),
        ("dns", "10.0.2.3"),
        ("user-data", ""),
        ("unknown-thing", "x"),
    ]);
    std::fs::write(tree.join("ovf-env.xml"), xml)?;
    let iso = dir.path().join("ovf-env.iso");
    run(Command::new("xorriso")
        .args([
            "-as", "mkisofs", "-quiet", "-V", "OVF ENV", "-J", "-R", "-o",
        ])
        .arg(&iso)
        .arg(&tree))?;
    let disk = clone_of(&base, dir.path(), "ovf")?;
    let port = qemu::free_port()?;
    let config = disk_vm(dir.path().join("vm"), &disk, port, Some(ip)).drive(Drive::cdrom(&iso));
    let (s, _) = boot_and_look(config, &key, port, "true")?;
    assert_eq!(s.hostname, "ovf-vm");
    assert!(s.addrs.contains(&format!("inet {ip}/24")), "{}", s.addrs);
    assert!(
        s.console
            .contains("axion: identity regenerated (first boot of instance vm-1001"),
        "{}",
        s.console
    );
    assert!(
        s.console
            .contains("axion: settings: ovf-env: unknown-thing: unknown property (ignored)"),
        "{}",
        s.console
    );
    Ok(())
}

#[test]
fn fw_cfg_wins_over_nocloud_and_loses_to_the_kernel_command_line() {
    if let Some(why) = preflight() {
        return axion_tests::skip(why);
    }
    fw_cfg().unwrap();
}

fn fw_cfg() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (key, public) = keygen(dir.path(), "fw")?;
    let (nc_key, nc_public) = keygen(dir.path(), "nocloud")?;
    let (kernel, initrd) = initramfs_image()?;
    let seed = cidata(
        dir.path(),
        "seed",
        true,
        &[
            ("meta-data", "instance-id: nc-1\n"),
            ("user-data", &user_data("from-nocloud", &nc_public)),
        ],
    )?;
    let ud = dir.path().join("user-data");
    std::fs::write(
        &ud,
        format!(
            "#cloud-config\nhostname: from-fwcfg\nssh_authorized_keys: \
             [\"{public}\"]\nwrite_files:\n  - path: \
             /etc/axion-test/greeting\n    content: hello from fw_cfg\n  - \
             path: /var/lib/axion-engine/tls/client-ca.pem\n    content: not \
             really a CA\n"
        ),
    )?;
    let md = dir.path().join("meta-data");
    std::fs::write(&md, "instance-id: fw-1\n")?;
    let cmd = dir.path().join("cmdline");
    std::fs::write(&cmd, "axion.debug=0 axion.frobnicate=1")?;
    // fw_cfg asks for a static address; the kernel command line (higher) says DHCP, and the
    // port forward only reaches the DHCP address (10.0.2.15).
    let net = dir.path().join("network-config");
    std::fs::write(&net, network("10.0.2.50"))?;
    let port = qemu::free_port()?;
    let config = initramfs_vm(dir.path().join("vm"), &kernel, &initrd, "axion.ip=dhcp")
        .drive(Drive::cdrom(&seed))
        .fw_cfg_file("opt/axion/network-config", &net)
        .fw_cfg_file("opt/axion/user-data", &ud)
        .fw_cfg_file("opt/axion/meta-data", &md)
        .fw_cfg_file("opt/axion/cmdline", &cmd)
        .device(net_to(port, None));
    let (mut vm, _ready) = boot_ready(config)?;
    let out = ssh_retry(
        &vm,
        &key,
        port,
        "hostname; cat /etc/axion-test/greeting; echo; cat \
         /var/lib/axion-engine/tls/client-ca.pem; echo",
    )?;
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["from-fwcfg", "hello from fw_cfg", "not really a CA"],
        "fw_cfg user-data over NoCloud's"
    );
    // Keys accumulate over the sources: NoCloud's key works too.
    let nc = ssh(&nc_key, port, "true");
    assert!(
        nc.status.success(),
        "the NoCloud key was not authorized: {}",
        String::from_utf8_lossy(&nc.stderr)
    );
    let console = serial(&vm);
    assert!(
        console.contains("axion: identity regenerated (first boot of instance fw-1"),
        "{console}"
    );
    assert!(
        console
            .contains("axion: settings: fw_cfg cmdline: unknown kernel parameter axion.frobnicate"),
        "{console}"
    );
    assert!(
        console.contains("DHCP lease 10.0.2.15/24")
            && !console.contains("static address 10.0.2.50"),
        "the kernel command line's axion.ip=dhcp wins over fw_cfg's network-config:\n{console}"
    );
    vm.powerdown_and_wait(Duration::from_secs(60))?;
    Ok(())
}

#[test]
fn malformed_user_data_still_boots_and_says_why() {
    if let Some(why) = preflight() {
        return axion_tests::skip(why);
    }
    malformed().unwrap();
}

fn malformed() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (kernel, initrd) = initramfs_image()?;
    let seed = cidata(
        dir.path(),
        "bad",
        false,
        &[
            (
                "meta-data",
                "instance-id: bad-1\nlocal-hostname: still-named\n",
            ),
            (
                "user-data",
                "#cloud-config\nhostname: [unclosed\nruncmd: {\n",
            ),
            ("network-config", "version: 1\nconfig: []\n"),
        ],
    )?;
    let config = initramfs_vm(dir.path().join("vm"), &kernel, &initrd, "")
        .drive(Drive::disk(&seed, DiskFormat::Raw))
        .user_net(qemu::NicModel::VirtioNet, Vec::new());
    let (mut vm, _ready) = boot_ready(config)?;
    let console = serial(&vm);
    assert!(
        console.contains("axion: settings: nocloud user-data: not valid YAML"),
        "{console}"
    );
    assert!(
        console.contains("axion: settings: nocloud network-config: version: 1 is not supported"),
        "{console}"
    );
    // What was fine still applies: meta-data (the instance id).
    assert!(
        console.contains("identity regenerated (first boot of instance bad-1"),
        "{console}"
    );
    vm.powerdown_and_wait(Duration::from_secs(60))?;
    Ok(())
}
