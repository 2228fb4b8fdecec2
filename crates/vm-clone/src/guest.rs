//! What the daemon adds to the image for VM-per-container mode, without rebuilding it: a
//! second, uncompressed newc archive appended to the profile's initramfs. Linux unpacks
//! concatenated archives in order and later files replace earlier ones, so the image stays
//! the same bytes and this mode needs no guest code beyond the engine's (`--vmd-port`,
//! `--image-share` and its `__vmd-agent` mode):
//!
//! - `/etc/axion/services/docker.toml` (replaces the image's): the engine serving the
//!   daemon on the virtio-serial port [`vmd_contract::ENGINE_PORT`] (`--vmd-port`; no TCP
//!   listener), `--image-share` [`vmd_contract::STORE_DIR`] (the host's layer store, mounted
//!   by the agent), `--insecure-registry` [`vmd_contract::HOST_ADDR`] (the host's 127.0.0.1
//!   as QEMU's user network shows it), `--bridge none` (each container has its VM's network) and
//!   `--exec-root /run/axion-engine` (the container's state on tmpfs; its writable layer
//!   and log stay on the VM's disk) with `--volatile-layers` (no syncs under the writable
//!   layer: the disk goes with the container);
//! - `/etc/axion/services/vmd-agent.toml`: the clone agent, the engine's
//!   [`vmd_contract::AGENT_MODE`] on the virtio-serial port [`vmd_contract::AGENT_PORT`]
//!   (see `AGENT_ARGS`).
//!
//! The names both sides spell are in crates/vmd-contract. The engine port's host end is a
//! unix socket in the VM's directory (0700 state dir), so only the daemon (root) reaches
//! the engine: no TLS, no TCP port.

use std::path::Path;
use vmd_contract::{AGENT_MODE, AGENT_PORT, ENGINE_PORT, HOST_ADDR, STORE_DIR, TRACE_ENV};

/// The clone agent is the guest engine's hidden [`AGENT_MODE`]
/// (packages/engine/src/vmd_agent.rs), run as a service on the port [`AGENT_PORT`]. After a
/// restore, the daemon connects to the port's socket and sends one line
/// `clone HOSTNAME EPOCH MAC SEED` ([`vmd_contract::Request::Clone`]); the agent sets the clock
/// (the saved guest's clock is
/// the template's), credits the host's random SEED to the kernel's pool and reseeds its
/// CRNG (every clone starts from the same RNG state), mounts the host's layer store (9p tag
/// [`vmd_contract::STORE_TAG`]) read-only at [`STORE_DIR`], answers `ok HOSTNAME`,
/// and then, while the daemon creates the container, sets the host name and a new MAC on
/// the NIC (live, as virtio-net allows, then an ARP request so that QEMU's user network
/// learns it; the address stays 10.0.2.15 because every clone has its own private user
/// network). A read on a port with no host connected returns EOF at once, so
/// the agent retries every 5 ms (the template is saved in that loop; a clone is restored
/// in it); once the daemon is connected (it stays so for the VM's life) the read blocks.
/// It was a busybox shell loop: under TCG each of its forks (date, ip, arping, mkdir,
/// mount) cost the clone's single vCPU tens of milliseconds.
const AGENT_ARGS: [&str; 2] = [AGENT_MODE, AGENT_PORT];

fn docker_toml() -> String {
    format!(
        r#"# VM-per-container mode (host/vmd): the engine serves the daemon only, on the
# virtio-serial port {ENGINE_PORT} (no TCP), and reaches the host's registries at {HOST_ADDR}.
# No bridge: the container has its VM's network (host/vmd/src/lib.rs, guest_network).
command = "/usr/bin/engine"
# Container state on tmpfs (--exec-root) and a volatile writable layer: the VM runs one
# container, never reboots, and its disk goes with the container.
args = ["--data-root", "/var/lib/axion-engine", "--exec-root", "/run/axion-engine",
        "--volatile-layers", "-H", "unix:///run/docker.sock", "--vmd-port", "{ENGINE_PORT}",
        "--insecure-registry", "{HOST_ADDR}", "--image-share", "{STORE_DIR}", "--bridge", "none"]
after = ["network"]
# init's ready line waits for the engine (a cold boot returns on it).
ready = ["unix:/run/docker.sock"]
restart = "always"
stop-timeout = 5
"#
    )
}

fn agent_toml() -> String {
    format!(
        "# VM-per-container mode: the clone agent (host/vmd/src/guest.rs).\ncommand = \
         \"/usr/bin/engine\"\nargs = [\"{}\", \"{}\"]\nrestart = \"always\"\nstop-timeout = 1\n",
        AGENT_ARGS[0], AGENT_ARGS[1]
    )
}

/// The files of the appended archive: (path without leading slash, mode, contents).
/// With `VMD_DEBUG` set, the guest engine also logs the timing of each container's start
/// and exit (`engine: trace` lines on the VM's serial console, `<state>/c/ID/serial.log`).
pub fn overlay_files() -> Vec<(String, u32, Vec<u8>)> {
    let (mut docker, mut agent) = (docker_toml(), agent_toml());
    if std::env::var_os("VMD_DEBUG").is_some() {
        let env = format!("environment = {{ {TRACE_ENV} = \"1\" }}\n");
        docker.push_str(&env);
        agent.push_str(&env);
    }
    vec![
        (
            "etc/axion/services/docker.toml".into(),
            0o644,
            docker.into_bytes(),
        ),
        (
            "etc/axion/services/vmd-agent.toml".into(),
            0o644,
            agent.into_bytes(),
        ),
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
    let fields = [
        ino,
        mode,
        0,
        0,
        nlink,
        0,
        data.len() as u32,
        0,
        0,
        0,
        0,
        namesize as u32,
        0,
    ];
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
    while !out.len().is_multiple_of(4) {
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
        let (e, x, f, t) = (
            text.find("etc\0").unwrap(),
            text.find("etc/x\0").unwrap(),
            text.find("etc/x/f\0").unwrap(),
            text.find("TRAILER!!!").unwrap(),
        );
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
        let docker = files
            .iter()
            .find(|f| f.0 == "etc/axion/services/docker.toml")
            .unwrap();
        let s = String::from_utf8_lossy(&docker.2);
        assert!(
            s.contains(&format!(r#""--vmd-port", "{ENGINE_PORT}""#))
                && s.contains(&format!(r#""--insecure-registry", "{HOST_ADDR}""#))
                && s.contains(&format!(r#""--image-share", "{STORE_DIR}""#)),
            "{s}"
        );
        // The daemon reaches the engine over virtio-serial only: no TCP listener, no TLS files.
        assert!(!s.contains("tcp://") && !s.contains("--tls"), "{s}");
        assert!(
            files.iter().all(|f| !f.0.ends_with(".pem")),
            "certificates in the archive"
        );
        let agent = String::from_utf8_lossy(
            &files
                .iter()
                .find(|f| f.0 == "etc/axion/services/vmd-agent.toml")
                .unwrap()
                .2,
        )
        .into_owned();
        assert!(
            agent.contains(r#"command = "/usr/bin/engine""#)
                && agent.contains(&format!(r#"args = ["{AGENT_MODE}", "{AGENT_PORT}"]"#)),
            "{agent}"
        );
        // That the agent mounts the store this daemon exports (tag, mount point) is no longer
        // checked here: both sides take them from vmd-contract.
        assert!(!s.contains("tcp-insecure"));
    }
}
