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

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use axion_tests::guest::{both, text, Boot, Guest};
use axion_tests::registry::{Compression, Registry};
use axion_tests::require;

#[test]
fn bridge_nat_cgroups_and_reboot_in_the_vm() {
    if let Some(why) = axion_tests::vm_test_host_lacks() {
        require!(false, "{why}");
    }
    require!(axion_tests::runs("qemu-img"), "qemu-img is not installed");
    check().unwrap();
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
    let info = g.ok(&["run", "--rm", "busybox", "cat", "/proc/self/mountinfo"])?;
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
    let o = g
        .ssh_cmd(
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
    let out = g.ok(&[
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
    g.ok(&["run", "-d", "--name", "keeper", "busybox", "sleep", "3600"])?;
    let started = g.ok(&["inspect", "-f", "{{.State.StartedAt}}", "keeper"])?;
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
    let state = g.ok(&[
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
    assert_eq!(g.ok(&["exec", "keeper", "echo", "alive"])?, "alive");
    g.ok(&["rm", "-f", "keeper"])?;
    Ok(())
}

fn check() -> Result<()> {
    let dir = tempfile::tempdir()?;
    // 8080: the published port's container side, reached from the host.
    let boot = Boot::new(dir.path())?.overlay()?.forward(8080);
    let registry = Registry::start()?;
    registry.push_busybox(
        &axion_tests::busybox(),
        "busybox",
        "latest",
        Compression::Gzip,
    )?;
    let reg = format!("10.0.2.2:{}", registry.port);

    let mut g = Guest::boot(&boot.clone().run_dir("vm1"))?;
    g.insecure_registries(&[&reg])?;

    let image = format!("{reg}/busybox:latest");
    g.ok(&["pull", &image])?;
    g.ok(&["tag", &image, "busybox"])?;

    // --- A hostile layer: an error for the pull, nothing else ----------------------------------
    hostile_pull_leaves_the_engine_and_containers_up(&g, &registry, &reg)?;

    // --- The container's root: pivot_root into its overlay, nothing of the VM's root ----------
    container_root_is_its_own(&g, dir.path())?;

    // --- Bridge, NAT, DNS configuration -------------------------------------------------------
    let out = g.ok(&[
        "run",
        "--rm",
        "busybox",
        "wget",
        "-q",
        "-O-",
        &format!("http://{reg}/v2/"),
    ])?;
    assert_eq!(out, "{}", "the registry's /v2/ through the bridge and NAT");
    let out = g.ok(&["run", "--rm", "busybox", "ip", "route"])?;
    assert!(
        out.contains("default via 172.17.0.1 dev eth0"),
        "route in a bridged container: {out}"
    );
    let out = g.ok(&["run", "--rm", "busybox", "cat", "/etc/resolv.conf"])?;
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
    g.ok(&[
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
    let ins = g.ok(&["inspect", "-f", fmt, "srv"])?;
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
    g.ok(&[
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
    let url = format!("http://127.0.0.1:{}/", g.host_port(8080));
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
    let out = g.ok(&[
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
    let out = g.ok(&[
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
    g.ok(&["rm", "-f", "srv", "pub"])?;

    // --- cgroup v2 limits ---------------------------------------------------------------------
    let o = g.ssh(
        "cat /sys/fs/cgroup/cgroup.subtree_control /sys/fs/cgroup/axion/cgroup.subtree_control",
    )?;
    eprintln!(
        "subtree_control (root, axion): {}",
        text(&o).replace('\n', " | ")
    );
    let id = g.ok(&[
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
    let out = g.ok(&[
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
    let out = g.ok(&["run", "--rm", "-t", "busybox", "tty"])?;
    assert_eq!(out, "/dev/pts/0", "run -t in the VM");
    // Docker's default seccomp profile on the VM's kernel: personality flags beyond the few
    // Docker allows are refused; CAP_SYS_ADMIN unlocks mount.
    let o = g.docker(&["run", "--rm", "busybox", "setarch", "linux32", "-R", "true"])?;
    assert!(
        !o.status.success() && both(&o).contains("Operation not permitted"),
        "personality(0x40008) in the VM: {}",
        both(&o)
    );
    let out = g.ok(&[
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
    g.ok(&["rm", "-f", "lim"])?;
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
    let out = g.ok(&[
        "inspect",
        "-f",
        "{{.State.OOMKilled}} {{.State.ExitCode}}",
        "oom",
    ])?;
    assert_eq!(out, "true 137");
    g.ok(&["rm", "oom"])?;

    // --- Persistence across a reboot ----------------------------------------------------------
    let out = g.ok(&["run", "--name", "keep", "busybox", "echo", "kept"])?;
    assert_eq!(out, "kept");
    let st =
        g.vm.powerdown_and_wait(Duration::from_secs(120))
            .with_context(|| format!("power button\nserial:\n{}", g.serial()))?;
    eprintln!("first boot powered off ({st})");
    drop(g);
    let g = Guest::boot(&boot.run_dir("vm2"))?;
    let out = g.ok(&["images", "--format", "{{.Repository}}:{{.Tag}}"])?;
    assert!(
        out.lines().any(|l| l == "busybox:latest"),
        "docker images after the reboot: {out}"
    );
    assert!(
        out.lines().any(|l| l == image),
        "docker images after the reboot: {out}"
    );
    let out = g.ok(&["ps", "-a", "--format", "{{.Names}} {{.Status}}"])?;
    assert!(
        out.lines().any(|l| l.starts_with("keep Exited (0)")),
        "docker ps -a after the reboot: {out}"
    );
    let out = g.ok(&["start", "-a", "keep"])?;
    assert_eq!(
        out, "kept",
        "docker start -a of the container made before the reboot"
    );
    // Networking comes back with the engine: NAT still works after the reboot.
    let out = g.ok(&[
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
