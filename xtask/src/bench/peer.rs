//! The peer: a conventional container host, built by the bench itself and booted the same way.
//!
//! Debian 12 (bookworm) minbase with systemd, Debian's docker.io and Debian's kernel, made by
//! `debootstrap --variant=minbase --include=...` from the mirror the host's apt configuration
//! names (read at run time from /etc/apt/sources.list.d/*.sources or /etc/apt/sources.list; no
//! host name is written in the repository). debootstrap skips Recommends, so the list names
//! what docker.io needs to work on Debian's kernel: apparmor (the kernel enables AppArmor) and
//! procps; udev and dbus for systemd-networkd.
//!
//! Decisions:
//! - Disk: one ext4 filesystem made by `mke2fs -d` from the bootstrap directory (no mounts, no
//!   loop devices), converted to qcow2. It boots by direct kernel boot of the peer's own
//!   `vmlinuz` and `initrd.img` with `root=/dev/vda`, like axion's initramfs format and the
//!   kernel floor, so no boot loader or firmware differs between the three.
//! - Markers on ttyS0 (printed by small units): `bench-peer: multi-user` when
//!   multi-user.target is reached (Debian's docker.service is part of it: Type=notify, so
//!   the target waits until dockerd says it is ready), `bench-peer: docker-info` when
//!   `docker info` first answers inside the guest, then `bench-peer: mem-used-kib N`
//!   (MemTotal - MemAvailable) and `bench-peer: daemon-rss-kib N` (VmRSS of dockerd + containerd),
//!   then, once the boot has finished, `systemd-analyze time` and `systemd-analyze
//!   critical-chain docker.service` line by line (`bench-peer: analyze-time ...`,
//!   `bench-peer: analyze-chain ...`, `bench-peer: analyze-end`) for the bench's waterfall.
//!   journald forwards errors to ttyS0 too.
//! - dockerd also listens on TCP 2375 (no TLS, only reachable through QEMU's user-mode
//!   forward on 127.0.0.1), so the host measures the API and `docker run` like for axion.
//! - Reproducible: SOURCE_DATE_EPOCH is fixed, mke2fs gets a fixed UUID, hash seed and
//!   E2FSPROGS_FAKE_TIME, machine-id is left empty (systemd makes one at boot), apt's caches
//!   and logs are removed. The same archive state gives the same packages; the cache key is a
//!   hash of every input (suite, mirror, package list, files written, this file's version).
//! - Cached under `$AXION_CACHE/bench/peer-<key>/` (vmlinuz, initrd.img, peer.qcow2,
//!   build.log); downloaded .debs are kept in `$AXION_CACHE/bench/debs` for rebuilds.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use crate::layout::Layout;

/// Bumped whenever the way the peer is built changes.
const RECIPE_VERSION: &str = "peer-5";
pub const SUITE: &str = "bookworm";
/// Fixed so two builds of the same archive state give the same bytes.
pub const SOURCE_DATE_EPOCH: u64 = 1_700_000_000;
pub const PACKAGES: &[&str] = &[
    "systemd-sysv",
    "udev",
    "dbus",
    "docker.io",
    "apparmor",
    "procps",
    "iptables",
    "linux-image-amd64",
    "initramfs-tools",
];
/// Sparse size of the root filesystem (room for /var/lib/docker).
const DISK_MIB: u64 = 3072;
pub const GUEST_DOCKER_PORT: u16 = 2375;
pub const MARK_MULTI_USER: &str = "bench-peer: multi-user";
pub const MARK_DOCKER: &str = "bench-peer: docker-info";
pub const MARK_MEM: &str = "bench-peer: mem-used-kib ";
/// Resident memory of the container daemons at idle: dockerd + containerd (KiB).
pub const MARK_DAEMON_RSS: &str = "bench-peer: daemon-rss-kib ";
/// Each line of `systemd-analyze time` and `systemd-analyze critical-chain docker.service`
/// once the boot has finished, then [`MARK_ANALYZE_END`] (the bench's peer waterfall,
/// [`super::analyze`]).
pub const MARK_ANALYZE_TIME: &str = "bench-peer: analyze-time ";
pub const MARK_ANALYZE_CHAIN: &str = "bench-peer: analyze-chain ";
pub const MARK_ANALYZE_END: &str = "bench-peer: analyze-end";
pub const CMDLINE: &str = "root=/dev/vda rw console=ttyS0,115200 panic=-1";

/// Files written into the bootstrap tree: (path, mode, text).
fn files() -> Vec<(&'static str, u32, String)> {
    vec![
        ("/etc/hostname", 0o644, "peer\n".into()),
        (
            "/etc/hosts",
            0o644,
            "127.0.0.1 localhost\n127.0.1.1 peer\n".into(),
        ),
        ("/etc/fstab", 0o644, "/dev/vda / ext4 defaults 0 1\n".into()),
        (
            "/etc/systemd/network/10-wired.network",
            0o644,
            "[Match]\nName=en* \
             eth*\n\n[Network]\nDHCP=ipv4\n"
                .into(),
        ),
        (
            "/etc/systemd/journald.conf.d/console.conf",
            0o644,
            "[Journal]\nForwardToConsole=yes\nTTYPath=/dev/ttyS0\nMaxLevelConsole=err\n".into(),
        ),
        (
            "/etc/systemd/system/docker.service.d/bench-tcp.conf",
            0o644,
            format!(
                "[Service]\nExecStart=\nExecStart=/usr/sbin/dockerd -H fd:// -H \
                 tcp://0.0.0.0:{GUEST_DOCKER_PORT} \
                 --containerd=/run/containerd/containerd.sock\n"
            ),
        ),
        (
            "/etc/systemd/system/bench-multi-user.service",
            0o644,
            format!(
                "[Unit]\n\
                 Description=bench marker: multi-user.target reached\n\
                 # No default dependencies: else the target would also be \
                 ordered after this unit.\n\
                 DefaultDependencies=no\n\
                 After=multi-user.target\n\
                 \n\
                 [Service]\n\
                 Type=oneshot\n\
                 ExecStart=/bin/sh -c \
                 'read up idle < /proc/uptime; echo \"{MARK_MULTI_USER} $up\" > /dev/ttyS0'\n\
                 \n\
                 [Install]\n\
                 WantedBy=multi-user.target\n"
            ),
        ),
        (
            "/etc/systemd/system/bench-docker.service",
            0o644,
            "[Unit]\n\
             Description=bench marker: docker info answers\n\
             After=docker.service\n\
             Wants=docker.service\n\
             \n\
             # simple: multi-user.target does not wait for this loop.\n\
             [Service]\n\
             Type=simple\n\
             ExecStart=/bin/sh /usr/local/sbin/bench-docker\n\
             \n\
             [Install]\n\
             WantedBy=multi-user.target\n"
                .to_string(),
        ),
        (
            "/usr/local/sbin/bench-docker",
            0o755,
            format!(
                "#!/bin/sh\n# Loop until docker info answers, then print the markers on ttyS0.\n\
                 while ! docker info >/dev/null 2>&1; do sleep 0.2; done\n\
                 read up idle < /proc/uptime\n\
                 echo \"{MARK_DOCKER} $up\" > /dev/ttyS0\n\
                 sleep 5\n\
                 while read k v u; do case $k in MemTotal:) t=$v;; MemAvailable:) a=$v;; esac; \
                 done < /proc/meminfo\n\
                 echo \"{MARK_MEM}$((t - a))\" > /dev/ttyS0\n\
                 r=0; for p in $(pgrep -x dockerd) $(pgrep -x containerd); do while read k v u; do \
                 [ \"$k\" = VmRSS: ] && r=$((r + v)); done < /proc/$p/status; done\n\
                 echo \"{MARK_DAEMON_RSS}$r\" > /dev/ttyS0\n\
                 # systemd-analyze answers once the boot has finished (no job left).\n\
                 n=0; while ! systemd-analyze time >/dev/null 2>&1 && [ $n -lt 60 ]; do \
                 sleep 1; n=$((n + 1)); done\n\
                 systemd-analyze time 2>&1 | while IFS= read -r l; do \
                 echo \"{MARK_ANALYZE_TIME}$l\"; done > /dev/ttyS0\n\
                 systemd-analyze critical-chain docker.service 2>&1 | while IFS= read -r l; do \
                 echo \"{MARK_ANALYZE_CHAIN}$l\"; done > /dev/ttyS0\n\
                 echo \"{MARK_ANALYZE_END}\" > /dev/ttyS0\n"
            ),
        ),
    ]
}

/// The units to enable (systemctl enable in the chroot works without a running systemd).
const ENABLE: &[&str] = &["systemd-networkd", "bench-multi-user", "bench-docker"];

/// The mirror for `suite` from the host's apt configuration: the first URI of a `deb` entry
/// that lists the suite (deb822 `.sources` files, then one-line `sources.list`).
pub fn host_mirror(etc_apt: &Path, suite: &str) -> Result<String> {
    let mut texts = Vec::new();
    let dir = etc_apt.join("sources.list.d");
    if let Ok(rd) = std::fs::read_dir(&dir) {
        let mut paths: Vec<PathBuf> = rd.filter_map(|e| e.ok()).map(|e| e.path()).collect();
        paths.sort();
        for p in paths {
            if p.extension().is_some_and(|e| e == "sources") {
                texts.push((
                    true,
                    std::fs::read_to_string(&p)
                        .with_context(|| format!("cannot read {}", p.display()))?,
                ));
            } else if p.extension().is_some_and(|e| e == "list") {
                texts.push((
                    false,
                    std::fs::read_to_string(&p)
                        .with_context(|| format!("cannot read {}", p.display()))?,
                ));
            }
        }
    }
    if let Ok(t) = std::fs::read_to_string(etc_apt.join("sources.list")) {
        texts.push((false, t));
    }
    for (deb822, text) in &texts {
        let found = if *deb822 {
            mirror_deb822(text, suite)
        } else {
            mirror_one_line(text, suite)
        };
        if let Some(m) = found {
            return Ok(m);
        }
    }
    bail!(
        "no `deb` entry for suite {suite} in {}/sources.list.d/*.sources or {}/sources.list: the \
         peer needs Debian's archive through apt",
        etc_apt.display(),
        etc_apt.display()
    )
}

fn mirror_deb822(text: &str, suite: &str) -> Option<String> {
    for stanza in text.split("\n\n") {
        let field = |name: &str| {
            stanza
                .lines()
                .filter(|l| !l.starts_with('#'))
                .find_map(|l| {
                    l.split_once(':')
                        .filter(|(k, _)| k.trim().eq_ignore_ascii_case(name))
                        .map(|(_, v)| v.trim().to_owned())
                })
        };
        let types = field("Types").unwrap_or_default();
        let suites = field("Suites").unwrap_or_default();
        if types.split_whitespace().any(|t| t == "deb")
            && suites.split_whitespace().any(|s| s == suite)
        {
            if let Some(uri) =
                field("URIs").and_then(|u| u.split_whitespace().next().map(str::to_owned))
            {
                return Some(uri);
            }
        }
    }
    None
}

fn mirror_one_line(text: &str, suite: &str) -> Option<String> {
    text.lines().find_map(|l| {
        // Drop the options: `deb [arch=amd64 signed-by=...] URI SUITE COMPONENTS`.
        let l = match (l.find('['), l.find(']')) {
            (Some(a), Some(b)) if a < b => format!("{}{}", &l[..a], &l[b + 1..]),
            _ => l.to_owned(),
        };
        let mut words = l.split_whitespace();
        if words.next()? != "deb" {
            return None;
        }
        let uri = words.next()?;
        (words.next()? == suite).then(|| uri.to_owned())
    })
}

/// The cache key of the peer: every input that shapes the image.
pub fn key(mirror: &str) -> String {
    let mut h = Sha256::new();
    for part in [
        RECIPE_VERSION,
        SUITE,
        mirror,
        &PACKAGES.join(","),
        &SOURCE_DATE_EPOCH.to_string(),
        &DISK_MIB.to_string(),
        &ENABLE.join(","),
        CMDLINE,
    ] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    for (path, mode, text) in files() {
        h.update(format!("{path} {mode:o} {}\n", text.len()).as_bytes());
        h.update(text.as_bytes());
    }
    hex::encode(h.finalize())[..16].to_owned()
}

/// A built peer in the cache.
#[derive(Debug, Clone)]
pub struct Peer {
    pub dir: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub qcow2: PathBuf,
}

impl Peer {
    fn at(dir: PathBuf) -> Peer {
        Peer {
            kernel: dir.join("vmlinuz"),
            initrd: dir.join("initrd.img"),
            qcow2: dir.join("peer.qcow2"),
            dir,
        }
    }
    fn complete(&self) -> bool {
        self.kernel.is_file() && self.initrd.is_file() && self.qcow2.is_file()
    }
}

/// The cached peer if it was built already.
pub fn cached(layout: &Layout) -> Result<Option<Peer>> {
    let mirror = host_mirror(Path::new("/etc/apt"), SUITE)?;
    let peer = Peer::at(
        layout
            .cache
            .join("bench")
            .join(format!("peer-{}", key(&mirror))),
    );
    Ok(peer.complete().then_some(peer))
}

/// Builds the peer unless cached; returns it and whether it was built now.
pub fn ensure(layout: &Layout) -> Result<(Peer, bool)> {
    let mirror = host_mirror(Path::new("/etc/apt"), SUITE)?;
    let bench = layout.cache.join("bench");
    let peer = Peer::at(bench.join(format!("peer-{}", key(&mirror))));
    if peer.complete() {
        return Ok((peer, false));
    }
    if !is_root() {
        bail!(
            "building the peer runs debootstrap, which needs root (run `cargo xtask bench` as \
             root once; the result is cached under {})",
            bench.display()
        );
    }
    crate::doctor::ensure(&[crate::doctor::Need::Bench])?;
    let work = bench.join(format!("work-peer-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).with_context(|| format!("cannot create {}", work.display()))?;
    let debs = bench.join("debs");
    std::fs::create_dir_all(&debs).with_context(|| format!("cannot create {}", debs.display()))?;
    let log_path = work.join("build.log");
    let log = Log {
        path: log_path.clone(),
    };
    let root = work.join("root");
    let started = std::time::Instant::now();
    eprintln!(
        "bench: building the Debian {SUITE} peer with debootstrap (a few minutes; log {})",
        log_path.display()
    );

    let mut cmd = Command::new("debootstrap");
    cmd.env("SOURCE_DATE_EPOCH", SOURCE_DATE_EPOCH.to_string())
        .env("LC_ALL", "C.UTF-8")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .arg("--variant=minbase")
        .arg(format!("--include={}", PACKAGES.join(",")))
        .arg(format!("--cache-dir={}", debs.display()))
        .arg(SUITE)
        .arg(&root)
        .arg(&mirror);
    log.run("debootstrap", &mut cmd)?;

    for (path, mode, text) in files() {
        let p = root.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(p.parent().expect("absolute path"))
            .with_context(|| format!("cannot create the folder of {}", p.display()))?;
        std::fs::write(&p, text).with_context(|| format!("cannot write {}", p.display()))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("cannot chmod {}", p.display()))?;
    }
    let mut enable = Command::new("chroot");
    enable.arg(&root).args(["systemctl", "enable"]).args(ENABLE);
    log.run("systemctl enable", &mut enable)?;
    // Nothing that differs between two builds: machine-id made at boot, no apt caches or logs.
    std::fs::write(root.join("etc/machine-id"), "").context("cannot empty etc/machine-id")?;
    for dir in ["var/cache/apt", "var/lib/apt/lists", "var/log", "tmp"] {
        clear_dir(&root.join(dir))?;
    }
    let _ = std::fs::remove_file(root.join("var/cache/debconf/templates.dat-old"));
    let _ = std::fs::remove_file(root.join("var/cache/debconf/config.dat-old"));

    let kernel = newest_prefixed(&root.join("boot"), "vmlinuz-")?;
    let initrd = newest_prefixed(&root.join("boot"), "initrd.img-")?;
    std::fs::copy(&kernel, work.join("vmlinuz"))
        .with_context(|| format!("cannot copy {}", kernel.display()))?;
    std::fs::copy(&initrd, work.join("initrd.img"))
        .with_context(|| format!("cannot copy {}", initrd.display()))?;

    let raw = work.join("peer.raw");
    let mut mkfs = Command::new("mke2fs");
    mkfs.env("E2FSPROGS_FAKE_TIME", SOURCE_DATE_EPOCH.to_string())
        .args([
            "-q",
            "-F",
            "-t",
            "ext4",
            "-L",
            "peer-root",
            "-U",
            "6f1a3c2e-0b5d-4e8a-9c71-2d4f6a8b0c1e",
            "-E",
            "hash_seed=0b9c7d4e-1a2f-4c3b-8d5e-6f7a8b9c0d1e,root_owner=0:0",
            "-d",
        ])
        .arg(&root)
        .arg(&raw)
        .arg(format!("{DISK_MIB}M"));
    log.run("mke2fs -d", &mut mkfs)?;
    let mut convert = Command::new("qemu-img");
    convert
        .args(["convert", "-O", "qcow2"])
        .arg(&raw)
        .arg(work.join("peer.qcow2"));
    log.run("qemu-img convert", &mut convert)?;
    std::fs::remove_file(&raw).ok();
    std::fs::remove_dir_all(&root).with_context(|| format!("cannot remove {}", root.display()))?;

    let _ = std::fs::remove_dir_all(&peer.dir);
    std::fs::rename(&work, &peer.dir)
        .with_context(|| format!("cannot move {} to {}", work.display(), peer.dir.display()))?;
    eprintln!(
        "bench: peer built in {:.0} s: {}",
        started.elapsed().as_secs_f64(),
        peer.dir.display()
    );
    Ok((peer, true))
}

struct Log {
    path: PathBuf,
}

impl Log {
    fn run(&self, step: &str, cmd: &mut Command) -> Result<()> {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .with_context(|| format!("cannot open {}", self.path.display()))?;
        writeln!(f, "== {step}: {cmd:?}").ok();
        let out = f.try_clone()?;
        let status = cmd
            .stdout(out)
            .stderr(f)
            .status()
            .with_context(|| format!("cannot run {step}"))?;
        if !status.success() {
            let text = std::fs::read_to_string(&self.path).unwrap_or_default();
            let tail: Vec<&str> = text
                .lines()
                .rev()
                .take(25)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            bail!(
                "{step} failed ({status}); last lines of {}:\n{}",
                self.path.display(),
                tail.join("\n")
            );
        }
        Ok(())
    }
}

fn clear_dir(dir: &Path) -> Result<()> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for e in rd.filter_map(|e| e.ok()) {
        let p = e.path();
        let r = if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        };
        r.with_context(|| format!("cannot remove {}", p.display()))?;
    }
    Ok(())
}

fn newest_prefixed(dir: &Path, prefix: &str) -> Result<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.is_file()
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(prefix))
        })
        .collect();
    found.sort();
    found
        .pop()
        .with_context(|| format!("no {prefix}* in {}", dir.display()))
}

fn is_root() -> bool {
    // SAFETY-free: read our effective uid from /proc (no libc dependency in xtask).
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2))
                .map(|u| u == "0")
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirror_from_deb822_skips_other_suites_and_src() {
        let text =
            "Types: deb-src\nURIs: http://src.example/debian\nSuites: bookworm\nComponents: \
             main\n\n\
             Types: deb\n# a comment: with colon\nURIs: \
             http://sec.example/debian-security\nSuites: bookworm-security\nComponents: \
             main\n\n\
             Types: deb\nURIs: http://main.example/debian \
             http://other.example/debian\nSuites: bookworm bookworm-updates\nComponents: \
             main\n";
        assert_eq!(
            mirror_deb822(text, "bookworm").as_deref(),
            Some("http://main.example/debian")
        );
        assert_eq!(mirror_deb822(text, "trixie"), None);
    }

    #[test]
    fn mirror_from_one_line_sources() {
        let text = "# deb http://old.example/debian bookworm main\ndeb-src \
                    http://src.example/debian bookworm main\n\
                    deb [arch=amd64 signed-by=/k.gpg] http://main.example/debian bookworm main\n";
        assert_eq!(
            mirror_one_line(text, "bookworm").as_deref(),
            Some("http://main.example/debian")
        );
        assert_eq!(mirror_one_line(text, "bookworm-updates"), None);
    }

    #[test]
    fn key_depends_on_mirror() {
        assert_ne!(
            key("http://a.example/debian"),
            key("http://b.example/debian")
        );
        assert_eq!(
            key("http://a.example/debian"),
            key("http://a.example/debian")
        );
    }
}
