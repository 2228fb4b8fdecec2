//! Is KVM usable? Only a guest that really runs says so.
//!
//! On the machines this project grew up on, /dev/kvm exists and QEMU starts with `-accel kvm`,
//! but a Linux guest hangs. `query-kvm` would report "enabled", so the probe runs code:
//!
//! 1. /dev/kvm must open read-write.
//! 2. A 512-byte boot sector (below) that writes a marker to the serial port must print it
//!    under SeaBIOS within 5 s. This proves the vCPU executes guest code at all, at a useful
//!    speed: a working KVM gets there in well under a second, TCG in about one; the nested KVM
//!    measured here took 7 s (and `-cpu host` made QEMU abort on an MSR), so it fails here.
//! 3. If a kernel is given, it must boot under KVM to the end of its own initialisation: with
//!    no root file system it prints "VFS: Unable to mount root" / "No working init found" or,
//!    with a built-in initramfs, "Freeing unused kernel" / "Run /init". Timers, interrupts,
//!    paging, SMP bring-up all happen before that line, which is where hangs were seen.
//!
//! KVM counts as usable only when step 3 passed; without a kernel the answer is "no" with a
//! reason, so callers default to TCG. Every QEMU the probe starts is killed when the probe
//! ends (the `Vm` handle's drop), whether it passed or hung.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::{Accel, DiskFormat, Drive, VmConfig};
use crate::vm::Vm;

/// The marker the boot sector prints.
pub const BOOT_SECTOR_MARKER: &str = "AXION-PROBE-OK";

/// A boot sector that prints [`BOOT_SECTOR_MARKER`] on COM1 and halts, padded to 1 MiB
/// (SeaBIOS will not boot a virtio disk of one sector). Real-mode code:
///
/// ```text
///  0: 31 c0        xor ax, ax
///  2: 8e d8        mov ds, ax
///  4: fc           cld
///  5: ba f8 03     mov dx, 0x3f8      ; COM1 data port
///  8: be 17 7c     mov si, 0x7c17     ; the message at offset 23
/// 11: ac           lodsb
/// 12: 84 c0        test al, al
/// 14: 74 03        jz 19
/// 16: ee           out dx, al
/// 17: eb f8        jmp 11
/// 19: fa f4 eb fd  cli; hlt; jmp 20
/// 23: "AXION-PROBE-OK\r\n\0"
/// ```
pub fn boot_sector_image() -> Vec<u8> {
    let mut img = vec![
        0x31, 0xc0, 0x8e, 0xd8, 0xfc, 0xba, 0xf8, 0x03, 0xbe, 0x17, 0x7c, 0xac, 0x84, 0xc0, 0x74,
        0x03, 0xee, 0xeb, 0xf8, 0xfa, 0xf4, 0xeb, 0xfd,
    ];
    assert_eq!(img.len(), 23);
    img.extend_from_slice(BOOT_SECTOR_MARKER.as_bytes());
    img.extend_from_slice(b"\r\n\0");
    img.resize(510, 0);
    img.extend_from_slice(&[0x55, 0xaa]);
    img.resize(1 << 20, 0);
    img
}

/// The probe's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvmProbe {
    pub usable: bool,
    /// What was tried and what happened, for humans ("KVM: ..." / "TCG because ...").
    pub detail: String,
    pub took: Duration,
}

/// Kernel lines that show the kernel finished initialising (see the module comment).
const KERNEL_MARKERS: [&str; 4] = [
    "VFS: Unable to mount root",
    "No working init found",
    "Freeing unused kernel",
    "Run /init",
];

const BOOT_SECTOR_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs the probe: the boot sector gets at most 5 s, the kernel `timeout`.
pub fn probe_kvm(kernel: Option<&Path>, timeout: Duration) -> KvmProbe {
    let start = Instant::now();
    let verdict = |usable: bool, detail: String| KvmProbe {
        usable,
        detail,
        took: start.elapsed(),
    };
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        return verdict(false, format!("cannot open /dev/kvm read-write: {e}"));
    }
    let dir = match tempfile::Builder::new()
        .prefix("axion-kvm-probe-")
        .tempdir()
    {
        Ok(d) => d,
        Err(e) => return verdict(false, format!("cannot create a temporary directory: {e}")),
    };
    let disk = dir.path().join("boot-sector.img");
    if let Err(e) = std::fs::write(&disk, boot_sector_image()) {
        return verdict(false, format!("cannot write {}: {e}", disk.display()));
    }
    let base = VmConfig::new()
        .accel(Accel::Kvm)
        .cpus(1)
        .memory_mib(128)
        .no_reboot(true);

    let boot_sector = base
        .run_dir(dir.path().join("stage1"))
        .drive(Drive::disk(&disk, DiskFormat::Raw));
    match run_to_marker(
        boot_sector,
        &[BOOT_SECTOR_MARKER],
        timeout.min(BOOT_SECTOR_TIMEOUT),
    ) {
        Ok(_) => {}
        Err(e) => return verdict(false, format!("a boot sector did not run under KVM: {e}")),
    }
    let Some(kernel) = kernel else {
        return verdict(
            false,
            "KVM runs a boot sector, but no kernel was given to prove that Linux boots under it"
                .into(),
        );
    };
    match kernel_boots(kernel, Accel::Kvm, timeout) {
        Ok(line) => verdict(true, format!("KVM boots {} (\"{line}\")", kernel.display())),
        Err(e) => verdict(
            false,
            format!("{} did not boot under KVM: {e}", kernel.display()),
        ),
    }
}

/// Boots `kernel` (no initramfs, no root disk) under `accel` until it shows it finished
/// initialising (see the module comment); returns that line. Stage 3 of the probe, public so
/// the markers can be tested against the real kernel under TCG.
pub fn kernel_boots(kernel: &Path, accel: Accel, timeout: Duration) -> Result<String, String> {
    let dir = tempfile::Builder::new()
        .prefix("axion-kernel-probe-")
        .tempdir()
        .map_err(|e| format!("cannot create a temporary directory: {e}"))?;
    let config = VmConfig::new()
        .accel(accel)
        .cpus(2)
        .memory_mib(256)
        .no_reboot(true)
        .run_dir(dir.path())
        .kernel(kernel, None, "console=ttyS0 panic=-1 loglevel=7");
    run_to_marker(config, &KERNEL_MARKERS, timeout)
}

fn run_to_marker(config: VmConfig, markers: &[&str], timeout: Duration) -> Result<String, String> {
    let mut vm = Vm::spawn(config).map_err(|e| first_line(&e.to_string()))?;
    let r = vm.wait_for(
        |l| markers.iter().any(|m| l.contains(m)),
        "probing KVM",
        timeout,
    );
    drop(vm); // kills QEMU
    r.map(|l| l.line).map_err(|e| first_line(&e.to_string()))
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or_default().to_string()
}

/// Which accelerator to use, and why. `AXION_ACCEL=tcg|kvm|auto` overrides; `auto` (the
/// default) runs [`probe_kvm`] (at most 5 + 20 s) and picks KVM only if it passed. The verdict
/// is remembered in this process and, until the host reboots, in a file in the temporary
/// directory (keyed by boot id, QEMU binary and kernel), so each `cargo xtask run` does not
/// pay for the probe again.
pub fn choose_accel(kernel: Option<&Path>) -> (Accel, String) {
    static CACHE: Mutex<Vec<(String, Accel, String)>> = Mutex::new(Vec::new());
    match std::env::var("AXION_ACCEL").unwrap_or_default().as_str() {
        "tcg" => return (Accel::Tcg, "TCG (AXION_ACCEL=tcg)".into()),
        "kvm" => return (Accel::Kvm, "KVM (AXION_ACCEL=kvm, not probed)".into()),
        _ => {}
    }
    let key = probe_key(kernel);
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, a, why)) = cache.iter().find(|(k, _, _)| *k == key) {
        return (*a, why.clone());
    }
    let file = std::env::temp_dir().join(format!("axion-kvm-probe-{}.txt", current_uid()));
    let remembered = std::fs::read_to_string(&file).ok().and_then(|text| {
        let mut lines = text.lines();
        (lines.next()? == key).then_some(())?;
        let accel = match lines.next()? {
            "kvm" => Accel::Kvm,
            "tcg" => Accel::Tcg,
            _ => return None,
        };
        Some((
            accel,
            format!("{} (remembered in {})", lines.next()?, file.display()),
        ))
    });
    let (accel, why) = remembered.unwrap_or_else(|| {
        let p = probe_kvm(kernel, Duration::from_secs(20));
        let verdict = if p.usable {
            (
                Accel::Kvm,
                format!("KVM: probe passed in {:.1?}: {}", p.took, p.detail),
            )
        } else {
            (
                Accel::Tcg,
                format!("TCG: KVM probe failed in {:.1?}: {}", p.took, p.detail),
            )
        };
        let _ = std::fs::write(
            &file,
            format!("{key}\n{}\n{}\n", verdict.0.name(), verdict.1),
        );
        verdict
    });
    cache.push((key, accel, why.clone()));
    (accel, why)
}

/// What a probe verdict depends on: this boot of the host, the QEMU binary, the kernel.
fn probe_key(kernel: Option<&Path>) -> String {
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let stamp = |p: &Path| {
        std::fs::metadata(p)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    };
    let qemu = which("qemu-system-x86_64")
        .map(|p| format!("{}@{}", p.display(), stamp(&p)))
        .unwrap_or_default();
    let kernel = kernel
        .map(|k| format!("{}@{}", k.display(), stamp(k)))
        .unwrap_or_else(|| "-".into());
    format!("boot {} qemu {qemu} kernel {kernel}", boot_id.trim())
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// The user id, from /proc (keeps the crate free of libc); separates users' verdict files.
fn current_uid() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .map(str::to_string)
        })
        .unwrap_or_else(|| "0".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_sector_layout() {
        let img = boot_sector_image();
        assert_eq!(img.len(), 1 << 20);
        assert_eq!(&img[510..512], &[0x55, 0xaa]);
        // `mov si, imm16` points at the message.
        let si = u16::from_le_bytes([img[9], img[10]]) as usize - 0x7c00;
        assert_eq!(
            &img[si..si + BOOT_SECTOR_MARKER.len()],
            BOOT_SECTOR_MARKER.as_bytes()
        );
        // The jz skips exactly `out` and the backward jmp; the jmp lands on lodsb.
        assert_eq!(img[14..16], [0x74, 0x03]);
        assert_eq!(16 + 3, 19);
        assert_eq!(img[19], 0xfa);
        assert_eq!((19i32 + (img[18] as i8) as i32), 11);
        assert_eq!(img[11], 0xac);
    }
}
