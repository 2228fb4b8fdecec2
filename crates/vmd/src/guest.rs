//! What the daemon adds to the image for VM-per-container mode, without rebuilding it: a
//! second, uncompressed newc archive appended to the profile's initramfs. Linux unpacks
//! concatenated archives in order and later files replace earlier ones, so the image stays
//! the same bytes and this mode needs no guest code of its own:
//!
//! - `/etc/axion/services/docker.toml` (replaces the image's): the engine serving the
//!   daemon on the virtio-serial port `axion.engine` (`--vmd-port`, see [`ENGINE_CHANNEL`];
//!   no TCP listener), `--image-share /run/axion-store` (the host's layer store, mounted by
//!   the agent) and `--insecure-registry 10.0.2.2` (the host's 127.0.0.1 as QEMU's user
//!   network shows it);
//! - `/etc/axion/services/vmd-agent.toml` + `/etc/axion/vmd/agent.sh`: the clone agent, a
//!   busybox shell loop on the virtio-serial port `axion.vmd` (see [`AGENT_SH`]).

use std::path::Path;

/// The virtio-serial port name of the clone agent (/dev/virtio-ports/axion.vmd).
pub const AGENT_PORT: &str = "axion.vmd";
/// The virtio-serial port the guest engine serves the daemon on (`engine --vmd-port`): a
/// multiplexed session ([`vchan`]) per host connection, one HTTP connection per stream. Its
/// host end is a unix socket in the VM's directory (0700 state dir), so only the daemon
/// (root) reaches the engine: no TLS, no TCP port.
pub const ENGINE_CHANNEL: &str = "axion.engine";

/// The clone agent. After a restore, the daemon connects to the port's socket and sends one
/// line `clone HOSTNAME EPOCH MAC SEED`; the agent sets the host name, the clock (the saved
/// guest's clock is the template's), a new MAC on the NIC (live, as virtio-net allows, then an ARP request so that QEMU's user
/// network learns it; the address stays 10.0.2.15 because every clone has its own private user network), mixes the
/// host's random SEED into the kernel's pool (every clone starts from the same RNG state),
/// mounts the host's layer store (9p tag `axion.store`) read-only at /run/axion-store, and
/// answers `ok HOSTNAME`. A read on a port with no host connected returns EOF at once,
/// so the loop sleeps 0.02 s between attempts (the template is saved in that loop; a clone
/// is restored in it, so this is the agent's latency); once the daemon is connected (it
/// stays so for the VM's life) the read blocks. Each fork costs under TCG, so the agent
/// uses shell builtins where it can (the host name through /proc, a flag for the mount).
pub const AGENT_SH: &str = r#"#!/bin/sh
# axion vmd clone agent (written by crates/vmd/src/guest.rs)
# No udev: find the port by its name in sysfs (/dev/virtio-ports/NAME is a udev link).
port=
while [ -z "$port" ]; do
  for p in /sys/class/virtio-ports/*; do
    [ "$(cat "$p/name" 2>/dev/null)" = axion.vmd ] && port=/dev/${p##*/}
  done
  [ -z "$port" ] && sleep 1
done
exec 3<>"$port"
store=
echo "vmd-agent: waiting on $port"
while true; do
  if read -r cmd name epoch mac seed <&3; then
    case "$cmd" in
      clone)
        echo "$name" > /proc/sys/kernel/hostname
        echo "$name" > /etc/hostname
        date -s "@$epoch" >/dev/null 2>&1
        echo "$seed" > /dev/urandom
        for nic in /sys/class/net/*; do
          n=${nic##*/}
          [ "$n" = lo ] && continue
          ip link set dev "$n" address "$mac" 2>/dev/null || echo "vmd-agent: cannot change the MAC of $n"
          # QEMU's user network sends to the MAC it learnt: an ARP request from the new
          # one teaches it (otherwise forwarded connections stall). The request goes out
          # at once; busybox arping then waits out its 1 s, so it runs in the background.
          ip neigh flush dev "$n" >/dev/null 2>&1
          arping -c 1 -w 1 -I "$n" 10.0.2.2 >/dev/null 2>&1 &
          break
        done
        # The host's layer store (read-only 9p): mounted only now, after the restore,
        # since a mounted 9p export blocks saving the template.
        if [ -z "$store" ]; then
          [ -d /run/axion-store ] || mkdir /run/axion-store
          mount -t 9p -o ro,trans=virtio,version=9p2000.L,msize=262144 axion.store /run/axion-store && store=1 || echo "vmd-agent: cannot mount the layer store"
        fi
        echo "vmd-agent: clone $name"
        echo "ok $name" >&3
        ;;
      ping) echo "pong" >&3 ;;
      *) echo "vmd-agent: unknown command: $cmd" ;;
    esac
  else
    usleep 20000
  fi
done
"#;

fn docker_toml() -> String {
    format!(
        r#"# VM-per-container mode (crates/vmd): the engine serves the daemon only, on the
# virtio-serial port {ENGINE_CHANNEL} (no TCP), and reaches the host's registries at 10.0.2.2.
command = "/usr/bin/engine"
args = ["--data-root", "/var/lib/axion-engine", "-H", "unix:///run/docker.sock", "--vmd-port", "{ENGINE_CHANNEL}",
        "--insecure-registry", "10.0.2.2", "--image-share", "/run/axion-store"]
after = ["network"]
restart = "always"
stop-timeout = 5
"#
    )
}

const AGENT_TOML: &str = r#"# VM-per-container mode: the clone agent (crates/vmd/src/guest.rs).
command = "/bin/sh"
args = ["/etc/axion/vmd/agent.sh"]
restart = "always"
stop-timeout = 1
"#;

/// The files of the appended archive: (path without leading slash, mode, contents).
pub fn overlay_files() -> Vec<(String, u32, Vec<u8>)> {
    vec![
        ("etc/axion/services/docker.toml".into(), 0o644, docker_toml().into_bytes()),
        ("etc/axion/services/vmd-agent.toml".into(), 0o644, AGENT_TOML.as_bytes().to_vec()),
        ("etc/axion/vmd/agent.sh".into(), 0o755, AGENT_SH.as_bytes().to_vec()),
    ]
}

/// A newc ("070701") archive of `files`, with the directories they need, ending in TRAILER!!!.
pub fn newc(files: &[(String, u32, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut ino = 1u32;
    let mut dirs: Vec<String> = Vec::new();
    for (path, _, _) in files {
        let mut acc = String::new();
        let parts: Vec<&str> = path.split('/').collect();
        for p in &parts[..parts.len() - 1] {
            if !acc.is_empty() {
                acc.push('/');
            }
            acc.push_str(p);
            if !dirs.contains(&acc) {
                dirs.push(acc.clone());
            }
        }
    }
    for d in &dirs {
        entry(&mut out, ino, d, 0o040755, 2, &[]);
        ino += 1;
    }
    for (path, mode, data) in files {
        entry(&mut out, ino, path, 0o100000 | mode, 1, data);
        ino += 1;
    }
    entry(&mut out, 0, "TRAILER!!!", 0, 1, &[]);
    while out.len() % 512 != 0 {
        out.push(0);
    }
    out
}

fn entry(out: &mut Vec<u8>, ino: u32, name: &str, mode: u32, nlink: u32, data: &[u8]) {
    let namesize = name.len() + 1;
    let fields = [ino, mode, 0, 0, nlink, 0, data.len() as u32, 0, 0, 0, 0, namesize as u32, 0];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08X}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad4(out);
    out.extend_from_slice(data);
    pad4(out);
}

fn pad4(out: &mut Vec<u8>) {
    while out.len() % 4 != 0 {
        out.push(0);
    }
}

/// Writes `base` followed by `extra` (4-byte aligned, as the kernel expects the next
/// archive) to `dest`.
pub fn append_initramfs(base: &Path, extra: &[u8], dest: &Path) -> std::io::Result<()> {
    let mut data = std::fs::read(base)?;
    while data.len() % 4 != 0 {
        data.push(0);
    }
    data.extend_from_slice(extra);
    std::fs::write(dest, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newc_layout() {
        let a = newc(&[("etc/x/f".into(), 0o644, b"hi".to_vec())]);
        assert!(a.starts_with(b"070701"));
        assert_eq!(a.len() % 512, 0);
        let text = String::from_utf8_lossy(&a);
        // Directories first, then the file, then the trailer.
        let (e, x, f, t) = (text.find("etc\0").unwrap(), text.find("etc/x\0").unwrap(), text.find("etc/x/f\0").unwrap(), text.find("TRAILER!!!").unwrap());
        assert!(e < x && x < f && f < t);
        // The file's header: mode 0100644, size 2; its data follows the 4-aligned name.
        let hdr = &a[f - 110..f];
        assert_eq!(&hdr[14..22], b"000081A4");
        assert_eq!(&hdr[54..62], b"00000002");
        let data_at = (f + "etc/x/f\0".len()).div_ceil(4) * 4;
        assert_eq!(&a[data_at..data_at + 2], b"hi");
    }

    #[test]
    fn overlay_replaces_the_engine_service() {
        let files = overlay_files();
        let docker = files.iter().find(|f| f.0 == "etc/axion/services/docker.toml").unwrap();
        let s = String::from_utf8_lossy(&docker.2);
        assert!(s.contains(r#""--vmd-port", "axion.engine""#) && s.contains("10.0.2.2") && s.contains(crate::store::GUEST_DIR), "{s}");
        // The daemon reaches the engine over virtio-serial only: no TCP listener, no TLS files.
        assert!(!s.contains("tcp://") && !s.contains("--tls"), "{s}");
        assert!(files.iter().all(|f| !f.0.ends_with(".pem")), "certificates in the archive");
        let agent = String::from_utf8_lossy(&files.iter().find(|f| f.0 == "etc/axion/vmd/agent.sh").unwrap().2).into_owned();
        assert!(agent.contains(&format!("{} {}", crate::store::TAG, crate::store::GUEST_DIR)), "the agent mounts the store");
        assert!(!s.contains("tcp-insecure"));
    }
}
