//! The engine's container networking, cgroup limits and persistence inside a booted qemu
//! image, driven by the real docker CLI on the host over mutual TLS:
//! - bridge + veth + NAT: a container reaches the host's registry at 10.0.2.2 (QEMU user
//!   net's address of the host), two containers reach each other by IP, a published port is
//!   reached from the host, `--network none` has no route;
//! - cgroup v2: `-m`, `--cpus`, `--pids-limit` land in the container's cgroup files, and a
//!   container over its memory limit is OOM-killed (exit 137, State.OOMKilled);
//! - the container's `/` is its overlay (pivot_root; the VM's root is a tmpfs, not the
//!   initramfs), and a root process's chroot escape stays in the container's root;
//! - a pulled image and a stopped container survive a reboot (the data partition persists
//!   /var/lib), and `docker start -a` of the old container works;
//! - a hostile image (a layer entry with a NUL byte in its GNU long name, and one in a PAX
//!   `path` record, on a whiteout and a FIFO) fails `docker pull` with a clear error, and the
//!   engine, and a container started before, run on (the engine used to abort on it).
//!
//! The VM boots the image's kernel and initramfs (so the test can pass its SSH key on the
//! command line) with a copy-on-write overlay of the image's qcow2 disk as its data disk.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use axion_tests::registry::{Compression, Registry};
use axion_tests::{boot_ready, image, qemu, require};
use xtask::image::Bootable;
use xtask::profile::Format;

#[test]
fn bridge_nat_cgroups_and_reboot_in_the_vm() {
    require!(
        axion_tests::have_qemu(),
        "qemu-system-x86_64 is not installed"
    );
    require!(
        Path::new("/usr/bin/ssh").exists(),
        "the ssh client (openssh-client) is not installed"
    );
    require!(
        Path::new("/usr/bin/docker-registry").exists(),
        "docker-registry is not installed"
    );
    require!(
        Command::new("qemu-img")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success()),
        "qemu-img is not installed"
    );
    require!(
        axion_tests::docker_installed(),
        "the docker CLI is not installed"
    );
    check().unwrap();
}

struct Guest {
    vm: qemu::Vm,
    dir: PathBuf,
    key: PathBuf,
    ssh_port: u16,
    docker_port: u16,
    web_port: u16,
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn both(o: &Output) -> String {
    format!(
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

impl Guest {
    fn boot(
        dir: &Path,
        kernel: &Path,
        initrd: &Path,
        disk: &Path,
        key: &Path,
        boot: u32,
    ) -> Result<Guest> {
        let public = std::fs::read_to_string(key.with_extension("pub"))?
            .trim()
            .to_owned();
        let (ssh_port, docker_port, web_port) =
            (qemu::free_port()?, qemu::free_port()?, qemu::free_port()?);
        let (accel, _) = axion_tests::accel();
        let config = qemu::VmConfig::new()
            .accel(accel)
            .memory_mib(1024)
            .cpus(2)
            .run_dir(dir.join(format!("vm{boot}")))
            .kernel(
                kernel,
                Some(initrd.to_path_buf()),
                format!("console=ttyS0,115200 panic=-1 axion.ssh_key=\"{public}\""),
            )
            .drive(qemu::Drive::disk(disk, qemu::DiskFormat::Qcow2))
            .user_net(
                qemu::NicModel::VirtioNet,
                vec![
                    qemu::PortForward::tcp(ssh_port, 22),
                    qemu::PortForward::tcp(docker_port, 2376),
                    qemu::PortForward::tcp(web_port, 8080),
                ],
            );
        let (vm, _ready) = boot_ready(config)?;
        Ok(Guest {
            vm,
            dir: dir.to_path_buf(),
            key: key.to_path_buf(),
            ssh_port,
            docker_port,
            web_port,
        })
    }

    fn serial(&self) -> String {
        self.vm
            .serial_log()
            .map(|p| axion_tests::tail(p, 60))
            .unwrap_or_default()
    }

    fn ssh(&self, cmd: &str) -> Result<Output> {
        axion_tests::ssh(&self.key, self.ssh_port, &[], cmd)
            .output()
            .context("running ssh")
    }

    fn certs(&self) -> PathBuf {
        self.dir.join("certs")
    }

    /// Waits until the engine's client certificate exists and copies it to `certs()`.
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

    fn docker(&self, args: &[&str]) -> Result<Output> {
        eprintln!("$ docker {}", args.join(" "));
        axion_tests::DockerCli::new(
            format!("tcp://127.0.0.1:{}", self.docker_port),
            self.dir.join("docker-config"),
        )
        .tls(&self.certs())
        .output(args)
    }

    /// `docker ARGS`, which must succeed; returns its trimmed stdout.
    fn docker_ok(&self, args: &[&str]) -> Result<String> {
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

    /// Waits until the engine answers over TLS.
    fn wait_engine(&self) -> Result<()> {
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
            std::thread::sleep(Duration::from_secs(2));
        }
    }
}

/// Tries the classic chroot escape (chroot into a subdirectory while the working directory
/// stays outside it, `..` up as far as the kernel allows, chroot there) and lists `/` before
/// and after. Docker's default capabilities include CAP_SYS_CHROOT, so a container's root
/// process can do this.
const CHROOT_ESCAPE_C: &str = r#"
#include <dirent.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>
static int list(const char *tag) {
    DIR *d = opendir("/");
    if (!d) { perror("opendir"); return 1; }
    struct dirent *e;
    while ((e = readdir(d))) printf("%s: %s\n", tag, e->d_name);
    closedir(d);
    return 0;
}
int main(void) {
    mkdir("/chroot-escape", 0755);
    if (list("before")) return 1;
    if (chroot("/chroot-escape") != 0) { perror("chroot"); return 1; }
    for (int i = 0; i < 64; i++) chdir("..");
    if (chroot(".") != 0) { perror("chroot ."); return 1; }
    return list("escaped");
}
"#;

/// In a container run by the engine in the VM: `/` in /proc/self/mountinfo is the overlay,
/// there is no `rootfs` and no mount of the VM's own paths, and a chroot escape ends where
/// it started, in the container's root.
///
/// Measured by hand on the image before the root switch (move the root over the initramfs
/// and chroot, as the old fallback did): the same mountinfo and the same failed escape,
/// because the container's root is mounted on the namespace's very root, where the kernel
/// stops `..`. What differs is what lies under that mount: the VM's files then, an emptied
/// rootfs now (init's root switch frees it). These checks guard the result; init_boot
/// checks the switch itself.
fn container_root_is_its_own(g: &Guest, dir: &Path) -> Result<()> {
    let info = g.docker_ok(&["run", "--rm", "busybox", "cat", "/proc/self/mountinfo"])?;
    eprintln!("container mountinfo:\n{info}");
    let roots: Vec<&str> = info
        .lines()
        .filter(|l| l.split(' ').nth(4) == Some("/"))
        .collect();
    assert_eq!(roots.len(), 1, "one mount on / in the container:\n{info}");
    assert!(
        roots[0].contains(" - overlay "),
        "the container's / is not its overlay: {}\n{info}",
        roots[0]
    );
    assert!(
        !info.contains("rootfs"),
        "rootfs visible in the container:\n{info}"
    );
    for l in info.lines() {
        let point = l.split(' ').nth(4).unwrap_or("");
        for vm_path in ["/var/lib", "/.axion-root", "/run/axion", "/sbin", "/usr"] {
            assert!(
                !point.starts_with(vm_path),
                "a VM path is mounted in the container: {l}\n{info}"
            );
        }
    }

    if Command::new("musl-gcc").arg("--version").output().is_err() {
        axion_tests::skip(
            "musl-gcc (musl-tools) is not installed: the chroot escape part is not run",
        );
        return Ok(());
    }
    let src = dir.join("escape.c");
    let bin = dir.join("escape");
    std::fs::write(&src, CHROOT_ESCAPE_C)?;
    let st = Command::new("musl-gcc")
        .args(["-static", "-Os", "-o"])
        .arg(&bin)
        .arg(&src)
        .status()?;
    if !st.success() {
        bail!("musl-gcc could not build the chroot escape test program");
    }
    let o = axion_tests::ssh(
        &g.key,
        g.ssh_port,
        &[],
        "mkdir -p /var/lib/escape-test && cat > \
         /var/lib/escape-test/escape && chmod 755 \
         /var/lib/escape-test/escape",
    )
    .stdin(std::fs::File::open(&bin)?)
    .output()
    .context("copying the escape program into the VM")?;
    assert!(
        o.status.success(),
        "copying the escape program into the VM: {}",
        both(&o)
    );
    let out = g.docker_ok(&[
        "run",
        "--rm",
        "-v",
        "/var/lib/escape-test:/escape-test:ro",
        "busybox",
        "/escape-test/escape",
    ])?;
    let names = |tag: &str| -> Vec<String> {
        let mut v: Vec<String> = out
            .lines()
            .filter_map(|l| l.strip_prefix(tag))
            .map(str::to_string)
            .collect();
        v.sort();
        v
    };
    let (before, after) = (names("before: "), names("escaped: "));
    assert!(
        before.iter().any(|n| n == "escape-test") && before.iter().any(|n| n == "bin"),
        "the container's root as the container sees it: {out}"
    );
    assert_eq!(
        after, before,
        "a chroot escape from a container left the container's root:\n{out}"
    );
    Ok(())
}

/// A tar entry whose name comes from a GNU long-name record (`././@LongLink`), which may
/// hold any byte, NUL included; `kind` is the real entry's type.
fn gnu_long_entry(b: &mut Vec<u8>, name: &[u8], kind: tar::EntryType) {
    let header = |name: &str, kind: tar::EntryType, size: usize| {
        let mut h = tar::Header::new_gnu();
        h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_entry_type(kind);
        h.set_mode(0o644);
        h.set_size(size as u64);
        h.set_cksum();
        h
    };
    let mut long = name.to_vec();
    long.push(0);
    b.extend_from_slice(
        header("././@LongLink", tar::EntryType::GNULongName, long.len()).as_bytes(),
    );
    b.extend_from_slice(&long);
    b.resize(b.len().div_ceil(512) * 512, 0);
    b.extend_from_slice(header("placeholder", kind, 0).as_bytes());
}

/// The same with a PAX extended header's `path` record.
fn pax_entry(b: &mut Vec<u8>, name: &[u8], kind: tar::EntryType) {
    let body = name.len() + " path=\n".len();
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    let mut rec = format!("{len} path=").into_bytes();
    rec.extend_from_slice(name);
    rec.push(b'\n');
    let mut h = tar::Header::new_ustar();
    h.set_path("PaxHeaders/x").unwrap();
    h.set_entry_type(tar::EntryType::XHeader);
    h.set_size(rec.len() as u64);
    h.set_cksum();
    b.extend_from_slice(h.as_bytes());
    b.extend_from_slice(&rec);
    b.resize(b.len().div_ceil(512) * 512, 0);
    let mut h = tar::Header::new_ustar();
    h.set_path("placeholder").unwrap();
    h.set_entry_type(kind);
    h.set_size(0);
    h.set_cksum();
    b.extend_from_slice(h.as_bytes());
}

/// Pulls images whose layer holds an entry name with a NUL byte (GNU long name and PAX path,
/// on a whiteout and on a FIFO): each pull fails with an error naming the entry, and the
/// engine (same pid) and a container started before it are still running afterwards.
fn hostile_pull_leaves_the_engine_and_containers_up(
    g: &Guest,
    registry: &Registry,
    reg: &str,
) -> Result<()> {
    let pid = |g: &Guest| -> Result<String> { Ok(text(&g.ssh("pidof engine")?)) };
    g.docker_ok(&["run", "-d", "--name", "keeper", "busybox", "sleep", "3600"])?;
    let started = g.docker_ok(&["inspect", "-f", "{{.State.StartedAt}}", "keeper"])?;
    let engine = pid(g)?;
    assert!(!engine.is_empty(), "no engine process in the VM");
    type Entry = fn(&mut Vec<u8>, &[u8], tar::EntryType);
    let cases: [(&str, Entry, &[u8], tar::EntryType); 4] = [
        (
            "gnu-whiteout",
            gnu_long_entry,
            b"etc/.wh.mo\0td",
            tar::EntryType::Regular,
        ),
        (
            "gnu-fifo",
            gnu_long_entry,
            b"run/fi\0fo",
            tar::EntryType::Fifo,
        ),
        (
            "pax-whiteout",
            pax_entry,
            b"etc/.wh.pa\0sswd",
            tar::EntryType::Regular,
        ),
        ("pax-fifo", pax_entry, b"var/p\0ipe", tar::EntryType::Fifo),
    ];
    for (tag, entry, name, kind) in cases {
        let mut layer = Vec::new();
        entry(&mut layer, name, kind);
        layer.extend_from_slice(&[0u8; 1024]);
        registry.push_image("hostile", tag, &layer, Compression::Gzip, "amd64")?;
        let image = format!("{reg}/hostile:{tag}");
        let o = g.docker(&["pull", &image])?;
        let out = both(&o);
        eprintln!("{out}");
        assert!(!o.status.success(), "pulling {image} succeeded:\n{out}");
        let shown = String::from_utf8_lossy(name.split(|&c| c == 0).next().unwrap_or(b""));
        assert!(
            out.contains("NUL byte") && out.contains(&*shown),
            "pulling {image}: not the clear error naming the entry:\n{out}\nserial:\n{}",
            g.serial()
        );
        assert_eq!(
            pid(g)?,
            engine,
            "the engine restarted while pulling {image}"
        );
    }
    let state = g.docker_ok(&[
        "inspect",
        "-f",
        "{{.State.Running}} {{.State.StartedAt}}",
        "keeper",
    ])?;
    assert_eq!(
        state,
        format!("true {started}"),
        "the container started before the hostile pulls"
    );
    assert_eq!(g.docker_ok(&["exec", "keeper", "echo", "alive"])?, "alive");
    g.docker_ok(&["rm", "-f", "keeper"])?;
    Ok(())
}

fn check() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (key, _) = axion_tests::ssh_keygen(dir.path(), "id")?;
    let Bootable::Kernel { kernel, initrd } = image("qemu", Format::Initramfs)? else {
        bail!("the initramfs format is not a kernel and an initramfs");
    };
    let Bootable::Disk { path: base, .. } = image("qemu", Format::Qcow2)? else {
        bail!("the qcow2 format is not a disk");
    };
    // The image's disk stays untouched: the VM writes to an overlay.
    let disk = dir.path().join("disk.qcow2");
    let st = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(&base)
        .arg(&disk)
        .status()?;
    if !st.success() {
        bail!("qemu-img create (overlay of {}) failed", base.display());
    }
    let registry = Registry::start()?;
    registry.push_busybox(
        &axion_tests::busybox(),
        "busybox",
        "latest",
        Compression::Gzip,
    )?;
    let reg = format!("10.0.2.2:{}", registry.port);

    let mut g = Guest::boot(dir.path(), &kernel, &initrd, &disk, &key, 1)?;
    g.fetch_certs()?;
    g.wait_engine()?;
    // QEMU's user network shows the host's 127.0.0.1 as 10.0.2.2: a plain-HTTP registry there
    // must be declared insecure (daemon.json on the data partition, read at engine start).
    let o = g.ssh(&format!(
        "printf '%s' '{{\"insecure-registries\": [\"{reg}\"]}}' > \
         /var/lib/axion-engine/daemon.json && kill $(pidof engine)"
    ))?;
    assert!(
        o.status.success(),
        "writing daemon.json and restarting the engine: {}",
        both(&o)
    );
    std::thread::sleep(Duration::from_secs(2));
    g.wait_engine()?;

    let image = format!("{reg}/busybox:latest");
    g.docker_ok(&["pull", &image])?;
    g.docker_ok(&["tag", &image, "busybox"])?;

    // --- A hostile layer: an error for the pull, nothing else ----------------------------------
    hostile_pull_leaves_the_engine_and_containers_up(&g, &registry, &reg)?;

    // --- The container's root: pivot_root into its overlay, nothing of the VM's root ----------
    container_root_is_its_own(&g, dir.path())?;

    // --- Bridge, NAT, DNS configuration -------------------------------------------------------
    let out = g.docker_ok(&[
        "run",
        "--rm",
        "busybox",
        "wget",
        "-q",
        "-O-",
        &format!("http://{reg}/v2/"),
    ])?;
    assert_eq!(out, "{}", "the registry's /v2/ through the bridge and NAT");
    let out = g.docker_ok(&["run", "--rm", "busybox", "ip", "route"])?;
    assert!(
        out.contains("default via 172.17.0.1 dev eth0"),
        "route in a bridged container: {out}"
    );
    let out = g.docker_ok(&["run", "--rm", "busybox", "cat", "/etc/resolv.conf"])?;
    assert!(
        out.contains("nameserver 10.0.2.3"),
        "resolv.conf in a container: {out}"
    );
    assert!(
        !out.contains("nameserver 127."),
        "resolv.conf in a container: {out}"
    );

    // Two containers over the bridge, by IP.
    let web = "mkdir -p /www && echo hello-from-$(hostname) > /www/index.html && exec httpd -f -p \
               80 -h /www";
    g.docker_ok(&[
        "run",
        "-d",
        "--name",
        "srv",
        "--hostname",
        "srv",
        "busybox",
        "sh",
        "-c",
        web,
    ])?;
    let fmt = "{{.NetworkSettings.IPAddress}} {{.NetworkSettings.Gateway}} \
               {{.NetworkSettings.MacAddress}} {{.NetworkSettings.IPPrefixLen}}";
    let ins = g.docker_ok(&["inspect", "-f", fmt, "srv"])?;
    let f: Vec<&str> = ins.split_whitespace().collect();
    assert_eq!(f.len(), 4, "inspect: {ins}");
    let ip = f[0];
    assert!(ip.starts_with("172.17.0."), "IPAddress: {ins}");
    assert_eq!(f[1], "172.17.0.1", "Gateway: {ins}");
    let o: Vec<u8> = ip.split('.').map(|p| p.parse().unwrap()).collect();
    assert_eq!(
        f[2],
        format!("02:42:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3]),
        "MacAddress: {ins}"
    );
    assert_eq!(f[3], "16");
    let mut body = String::new();
    for _ in 0..20 {
        let o = g.docker(&[
            "run",
            "--rm",
            "busybox",
            "wget",
            "-q",
            "-O-",
            &format!("http://{ip}/"),
        ])?;
        body = text(&o);
        if o.status.success() {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(
        body, "hello-from-srv",
        "container to container over the bridge"
    );

    // A published port, reached from the host (QEMU forwards host:web_port → guest:8080).
    g.docker_ok(&[
        "run",
        "-d",
        "--name",
        "pub",
        "--hostname",
        "pub",
        "-p",
        "8080:80",
        "busybox",
        "sh",
        "-c",
        web,
    ])?;
    let url = format!("http://127.0.0.1:{}/", g.web_port);
    let mut got = String::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(r) = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()?
            .get(&url)
            .send()
        {
            got = r.text().unwrap_or_default();
            if got.trim() == "hello-from-pub" {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(got.trim(), "hello-from-pub", "GET {url} (published port)");

    // --network none: loopback only, no route out.
    let out = g.docker_ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "busybox",
        "sh",
        "-c",
        "echo routes:$(ip route | wc -l) eth0:$(ip -o link | grep -c eth0)",
    ])?;
    assert_eq!(
        out, "routes:0 eth0:0",
        "--network none has no eth0 and no routes"
    );
    let o = g.docker(&[
        "run",
        "--rm",
        "--network",
        "none",
        "busybox",
        "wget",
        "-q",
        "-T",
        "3",
        "-O-",
        &format!("http://{reg}/v2/"),
    ])?;
    assert!(
        !o.status.success(),
        "--network none reached the registry: {}",
        both(&o)
    );
    // --network host still sees the VM's interfaces.
    let out = g.docker_ok(&[
        "run",
        "--rm",
        "--network",
        "host",
        "busybox",
        "ip",
        "-o",
        "link",
    ])?;
    assert!(
        out.contains("axion0"),
        "--network host sees the bridge: {out}"
    );
    g.docker_ok(&["rm", "-f", "srv", "pub"])?;

    // --- cgroup v2 limits ---------------------------------------------------------------------
    let o = g.ssh(
        "cat /sys/fs/cgroup/cgroup.subtree_control /sys/fs/cgroup/axion/cgroup.subtree_control",
    )?;
    eprintln!(
        "subtree_control (root, axion): {}",
        text(&o).replace('\n', " | ")
    );
    let id = g.docker_ok(&[
        "run",
        "-d",
        "--name",
        "lim",
        "-m",
        "32m",
        "--cpus",
        "0.5",
        "--pids-limit",
        "20",
        "busybox",
        "sleep",
        "300",
    ])?;
    let o = g.ssh(&format!(
        "cd /sys/fs/cgroup/axion/{id} && cat memory.max cpu.max pids.max && grep -c . cgroup.procs"
    ))?;
    assert!(
        o.status.success(),
        "reading the container's cgroup: {}\nserial:\n{}",
        both(&o),
        g.serial()
    );
    let lines: Vec<String> = text(&o).lines().map(str::to_string).collect();
    assert_eq!(
        lines,
        vec!["33554432", "50000 100000", "20", "1"],
        "memory.max, cpu.max, pids.max, process count"
    );
    // exec, a TTY from the container's devpts, and the confinement (Docker's default
    // capabilities, seccomp) all hold.
    let out = g.docker_ok(&[
        "exec",
        "-t",
        "lim",
        "sh",
        "-c",
        "tty; grep -E '^(CapBnd|Seccomp):' /proc/self/status | tr -s '\\t ' ' '",
    ])?;
    assert_eq!(
        out.replace('\r', ""),
        "/dev/pts/0\nCapBnd: 00000000a80425fb\nSeccomp: 2",
        "exec -t in the VM"
    );
    let out = g.docker_ok(&["run", "--rm", "-t", "busybox", "tty"])?;
    assert_eq!(out, "/dev/pts/0", "run -t in the VM");
    // Docker's default seccomp profile on the VM's kernel: personality flags beyond the few
    // Docker allows are refused; CAP_SYS_ADMIN unlocks mount.
    let o = g.docker(&["run", "--rm", "busybox", "setarch", "linux32", "-R", "true"])?;
    assert!(
        !o.status.success() && both(&o).contains("Operation not permitted"),
        "personality(0x40008) in the VM: {}",
        both(&o)
    );
    let out = g.docker_ok(&[
        "run",
        "--rm",
        "--cap-add",
        "SYS_ADMIN",
        "busybox",
        "sh",
        "-c",
        "mkdir -p /mnt && mount -t tmpfs none /mnt && echo mounted",
    ])?;
    assert_eq!(out, "mounted", "mount with CAP_SYS_ADMIN in the VM");
    // pids.max holds inside the container: 30 background sleeps cannot all start.
    let o = g.docker(&[
        "exec",
        "lim",
        "sh",
        "-c",
        "for i in $(seq 30); do sleep 60 & done 2>/dev/null; true",
    ])?;
    let o2 = g.ssh(&format!("cat /sys/fs/cgroup/axion/{id}/pids.events"))?;
    assert!(
        text(&o2).contains("max ") && !text(&o2).contains("max 0"),
        "pids.events after 30 forks: {} ({})",
        text(&o2),
        both(&o)
    );
    g.docker_ok(&["rm", "-f", "lim"])?;
    // Over its memory limit, the container is OOM-killed.
    let o = g.docker(&[
        "run",
        "--name",
        "oom",
        "-m",
        "16m",
        "busybox",
        "tail",
        "/dev/zero",
    ])?;
    assert_eq!(
        o.status.code(),
        Some(137),
        "a container over its memory limit: {}",
        both(&o)
    );
    let out = g.docker_ok(&[
        "inspect",
        "-f",
        "{{.State.OOMKilled}} {{.State.ExitCode}}",
        "oom",
    ])?;
    assert_eq!(out, "true 137");
    g.docker_ok(&["rm", "oom"])?;

    // --- Persistence across a reboot ----------------------------------------------------------
    let out = g.docker_ok(&["run", "--name", "keep", "busybox", "echo", "kept"])?;
    assert_eq!(out, "kept");
    let st =
        g.vm.powerdown_and_wait(Duration::from_secs(120))
            .with_context(|| format!("power button\nserial:\n{}", g.serial()))?;
    eprintln!("first boot powered off ({st})");
    drop(g);
    let g = Guest::boot(dir.path(), &kernel, &initrd, &disk, &key, 2)?;
    g.fetch_certs()?;
    g.wait_engine()?;
    let out = g.docker_ok(&["images", "--format", "{{.Repository}}:{{.Tag}}"])?;
    assert!(
        out.lines().any(|l| l == "busybox:latest"),
        "docker images after the reboot: {out}"
    );
    assert!(
        out.lines().any(|l| l == image),
        "docker images after the reboot: {out}"
    );
    let out = g.docker_ok(&["ps", "-a", "--format", "{{.Names}} {{.Status}}"])?;
    assert!(
        out.lines().any(|l| l.starts_with("keep Exited (0)")),
        "docker ps -a after the reboot: {out}"
    );
    let out = g.docker_ok(&["start", "-a", "keep"])?;
    assert_eq!(
        out, "kept",
        "docker start -a of the container made before the reboot"
    );
    // Networking comes back with the engine: NAT still works after the reboot.
    let out = g.docker_ok(&[
        "run",
        "--rm",
        "busybox",
        "wget",
        "-q",
        "-O-",
        &format!("http://{reg}/v2/"),
    ])?;
    assert_eq!(out, "{}");
    drop(registry);
    Ok(())
}
