//! The kernel floor: axion's own kernel with a trivial init that powers off at once.
//!
//! The initramfs is an uncompressed newc cpio written here: `/init` is a two-line shell
//! script run by the host's static busybox (Debian's busybox-static) that calls
//! `busybox poweroff -f`, i.e. reboot(RB_POWER_OFF) without any shutdown work. QEMU runs
//! with `-no-reboot`, so the time from starting QEMU until it exits is the cost of firmware,
//! kernel boot and power-off: nothing any init could do faster.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};

/// The host's static busybox.
pub const HOST_BUSYBOX: &str = "/bin/busybox";

pub const INIT_SCRIPT: &str = "#!/bin/busybox sh\nexec /bin/busybox poweroff -f\n";

/// The guest-clock time of the kernel's handover to init in a serial-console line:
/// `[    3.326386] Run /init as init process` -> 3.326386. The floor's guest clock is the
/// kernel's printk time, not a shell's `cat /proc/uptime`: under TCG on a loaded machine
/// busybox sh and its forks alone took 0.25-1.2 s.
pub fn handover(line: &str) -> Option<f64> {
    let (stamp, rest) = line.trim_start().strip_prefix('[')?.split_once(']')?;
    rest.contains("Run /init as init process")
        .then(|| stamp.trim().parse().ok())
        .flatten()
}

/// One newc header + name, padded to 4 bytes.
fn header(w: &mut Vec<u8>, ino: u32, mode: u32, size: usize, name: &str) {
    let namesize = name.len() + 1;
    let h = format!(
        "070701{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}",
        ino, mode, 0, 0, 1, 0, size as u32, 0, 0, 0, 0, namesize, 0
    );
    w.extend_from_slice(h.as_bytes());
    w.extend_from_slice(name.as_bytes());
    w.push(0);
    pad(w);
}

fn pad(w: &mut Vec<u8>) {
    while !w.len().is_multiple_of(4) {
        w.push(0);
    }
}

/// The floor's initramfs: `bin/`, `bin/busybox` (the given bytes), `init`.
pub fn initramfs(busybox: &[u8]) -> Vec<u8> {
    let mut w = Vec::with_capacity(busybox.len() + 1024);
    let entries: [(&str, u32, &[u8]); 3] = [
        ("bin", 0o040755, b""),
        ("bin/busybox", 0o100755, busybox),
        ("init", 0o100755, INIT_SCRIPT.as_bytes()),
    ];
    for (i, (name, mode, data)) in entries.iter().enumerate() {
        header(&mut w, i as u32 + 1, *mode, data.len(), name);
        w.extend_from_slice(data);
        pad(&mut w);
    }
    header(&mut w, 0, 0, 0, "TRAILER!!!");
    w
}

/// Writes the floor's initramfs to `path` from the host's busybox.
pub fn write_initramfs(path: &Path) -> Result<()> {
    let busybox = std::fs::read(HOST_BUSYBOX).with_context(|| {
        format!("cannot read {HOST_BUSYBOX} (Debian: apt-get install busybox-static)")
    })?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut f =
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(&initramfs(&busybox))
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handover_lines_parse() {
        assert_eq!(
            handover("[    3.326386] Run /init as init process\r"),
            Some(3.326386)
        );
        assert_eq!(handover("[    3.3] Freeing unused kernel image"), None);
        assert_eq!(handover("init: Run /init as init process"), None);
    }

    #[test]
    fn the_floor_initramfs_parses_as_newc() {
        let bytes = initramfs(b"\x7fELF-not-really");
        let entries = crate::image::initramfs::parse_cpio(&bytes).expect("a valid newc archive");
        let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["bin", "bin/busybox", "init"]);
        let init = entries.iter().find(|e| e.name == "init").unwrap();
        assert_eq!(init.data, INIT_SCRIPT.as_bytes());
        assert_eq!(init.mode & 0o777, 0o755);
    }
}
