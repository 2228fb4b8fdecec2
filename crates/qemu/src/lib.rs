//! Driving QEMU for `xtask run/test/bench`, the e2e tests and axion-vmd (host/vmd).
//!
//! - [`VmConfig`]: a builder for the `qemu-system-x86_64` command line (machine, TCG or KVM,
//!   SeaBIOS or OVMF, direct kernel boot, disks and CD-ROMs, user-mode network with port
//!   forwards, serial console, QMP socket, fw_cfg entries, extra devices).
//! - [`Vm`]: a running QEMU: follow the serial console ([`Vm::wait_for_line`],
//!   [`Vm::wait_ready`]), talk QMP ([`Vm::qmp`]), press the power button
//!   ([`Vm::powerdown_and_wait`]), save and restore ([`Vm::save`], [`VmConfig::restore_from`]).
//!   Dropping it kills QEMU.
//! - [`Qmp`]: the QMP client on its own (`cargo xtask stop` connects to a detached VM with it).
//! - [`probe_kvm`] / [`choose_accel`]: KVM only when a guest is seen running under it.
//! - [`free_port`]: ports for host forwards.
//!
//! Decisions: everything is blocking std code (threads where needed, no async runtime);
//! `-nodefaults` so the device list is exactly the configuration; QEMU's stderr goes to
//! `qemu.log` in the run directory and shows up in errors; the serial console is a plain file
//! followed by polling every 20 ms (so `elapsed` times are within ~20 ms).

mod config;
mod error;
mod kvm;
mod qmp;
mod vm;

use std::time::Duration;

pub use config::{
    restore_uri, shell_quote, Accel, Device, DirectKernel, DiskFormat, DiskInterface, Drive,
    Firmware, FwCfg, FwCfgValue, Machine, Media, NicModel, PortForward, Protocol, Security9p,
    Serial, UserNet, VmConfig, OVMF_CODE, OVMF_VARS, QBOOT, USER_NETDEV,
};
pub use error::{Error, QmpError, Result};
pub use kvm::{
    boot_sector_image, choose_accel, kernel_boots, probe_kvm, KvmProbe, BOOT_SECTOR_MARKER,
};
pub use qmp::{Event, Qmp, Status};
pub use vm::{Detached, SerialLine, Vm};

/// What init prints once on the serial console when the system is up (the contract in
/// DESIGN.md): `axion: ready in N.NNN s`, seconds since boot (CLOCK_BOOTTIME).
pub const READY_PREFIX: &str = "axion: ready in ";
/// Init's line for a required service that did not answer in time; it comes before the
/// ready line, which then does not mean that service is up.
pub const NOT_READY_PREFIX: &str = "axion: not ready: ";

/// Init's ready line, as seen from both sides.
#[derive(Debug, Clone, PartialEq)]
pub struct Ready {
    pub line: String,
    /// From starting QEMU until the host saw the line (includes firmware and boot loader).
    pub host: Duration,
    /// What init reported: time since the guest kernel started.
    pub guest: Duration,
}

/// The guest's boot time from a line containing `axion: ready in N.NNN s`.
pub fn parse_ready_line(line: &str) -> Option<Duration> {
    let rest = &line[line.find(READY_PREFIX)? + READY_PREFIX.len()..];
    let number = rest
        .strip_suffix(" s")
        .or_else(|| rest.split_once(" s").map(|(n, _)| n))?;
    let secs: f64 = number.trim().parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_nanos((secs * 1e9).round() as u64))
}

/// A TCP port on 127.0.0.1 that was free a moment ago (bind to port 0, read, release).
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind(("127.0.0.1", 0))?
        .local_addr()?
        .port())
}

/// `preferred` if it can be bound on 127.0.0.1 now, else a free one.
pub fn port_or_free(preferred: u16) -> std::io::Result<u16> {
    match std::net::TcpListener::bind(("127.0.0.1", preferred)) {
        Ok(_) => Ok(preferred),
        Err(_) => free_port(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_line_parses() {
        assert_eq!(
            parse_ready_line("axion: ready in 1.234 s"),
            Some(Duration::from_millis(1234))
        );
        assert_eq!(
            parse_ready_line("[    1.5] axion: ready in 0.870 s (3 services)"),
            Some(Duration::from_millis(870))
        );
        assert_eq!(parse_ready_line("axion: ready in soon s"), None);
        assert_eq!(parse_ready_line("axion: starting"), None);
    }

    #[test]
    fn ports_are_bindable() {
        let p = free_port().unwrap();
        assert!(p > 0);
        let held = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let busy = held.local_addr().unwrap().port();
        let other = port_or_free(busy).unwrap();
        assert_ne!(other, busy);
        assert_eq!(port_or_free(p).unwrap(), p);
    }
}
