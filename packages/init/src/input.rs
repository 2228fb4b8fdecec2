//! The ACPI power button: evdev devices under /dev/input that can report KEY_POWER (the
//! kernel's ACPI button driver exposes one as "Power Button"). QEMU's `system_powerdown`
//! and vSphere's "Shut Down Guest" without tools both press it.

use std::fs::{self, File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;

use crate::sys;

pub const EV_KEY: u16 = 1;
pub const KEY_POWER: u16 = 116;
const KEY_MAX: usize = 0x2ff;
const EVENT_SIZE: usize = 24; // struct input_event on 64-bit: timeval + u16 + u16 + i32

/// EVIOCGBIT(ev, len) = _IOC(_IOC_READ, 'E', 0x20 + ev, len)
fn eviocgbit(ev: u16, len: usize) -> libc::c_ulong {
    (2 << 30)
        | ((len as libc::c_ulong) << 16)
        | ((b'E' as libc::c_ulong) << 8)
        | (0x20 + ev as libc::c_ulong)
}

fn has_power_key(f: &File) -> bool {
    let mut bits = [0u8; KEY_MAX / 8 + 1];
    // SAFETY: bits is a writable buffer of exactly the length encoded in the request.
    let ok = unsafe {
        sys::ioctl_ptr(
            f.as_raw_fd(),
            eviocgbit(EV_KEY, bits.len()),
            bits.as_mut_ptr(),
        )
    };
    ok.is_ok() && bits[KEY_POWER as usize / 8] & (1 << (KEY_POWER % 8)) != 0
}

/// Opens every /dev/input/event* that has a power key.
pub fn open_power_buttons() -> Vec<File> {
    let mut out = Vec::new();
    let Ok(dir) = fs::read_dir("/dev/input") else {
        return out;
    };
    let mut paths: Vec<_> = dir
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("event"))
        })
        .collect();
    paths.sort();
    for p in paths {
        match OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(&p)
        {
            Ok(f) if has_power_key(&f) => {
                crate::debug!("power button: {}", p.display());
                out.push(f)
            }
            Ok(_) => {}
            Err(e) => crate::warn!("open {}: {e}", p.display()),
        }
    }
    out
}

/// True if the bytes hold a KEY_POWER press.
pub fn power_pressed(events: &[u8]) -> bool {
    events.chunks_exact(EVENT_SIZE).any(|e| {
        let ty = u16::from_ne_bytes([e[16], e[17]]);
        let code = u16::from_ne_bytes([e[18], e[19]]);
        let value = i32::from_ne_bytes([e[20], e[21], e[22], e[23]]);
        ty == EV_KEY && code == KEY_POWER && value == 1
    })
}

/// Drains a device; true if the power key was pressed.
pub fn read_power(f: &File) -> bool {
    let mut buf = [0u8; EVENT_SIZE * 16];
    let mut pressed = false;
    while let Ok(Some(n)) = sys::read_nb(f.as_raw_fd(), &mut buf) {
        if n == 0 {
            break;
        }
        pressed |= power_pressed(&buf[..n]);
    }
    pressed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(ty: u16, code: u16, value: i32) -> Vec<u8> {
        let mut e = vec![0u8; 16];
        e.extend_from_slice(&ty.to_ne_bytes());
        e.extend_from_slice(&code.to_ne_bytes());
        e.extend_from_slice(&value.to_ne_bytes());
        e
    }

    #[test]
    fn detects_power_press_not_release_or_other_keys() {
        let mut b = ev(EV_KEY, KEY_POWER, 0);
        b.extend(ev(0, 0, 0));
        b.extend(ev(EV_KEY, 30, 1));
        assert!(!power_pressed(&b));
        b.extend(ev(EV_KEY, KEY_POWER, 1));
        assert!(power_pressed(&b));
    }

    #[test]
    fn ioctl_number_matches_the_kernel_header() {
        // EVIOCGBIT(EV_KEY, 96) from linux/input.h, as computed by a C compiler: 0x80604521.
        assert_eq!(eviocgbit(EV_KEY, 96), 0x8060_4521);
    }
}
