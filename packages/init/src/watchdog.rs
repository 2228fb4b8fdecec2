//! The hardware watchdog: `/dev/watchdog` (QEMU's `-device i6300esb -action watchdog=reset`,
//! CONFIG_I6300ESB_WDT). When the device exists, init opens it and pets it from the event
//! loop every [`PET_EVERY`], so a hung kernel or a PID 1 that stops running resets the
//! machine (the i6300esb's default timeout is 30 s).
//!
//! A slot on trial (an update's one try, see packages/update) must be marked good by the
//! update agent's boot check within `axion.update.deadline=` seconds (default 180). If the
//! agent's state file (`/run/axion-update/state`) still says `update.state=trial` when
//! that deadline plus [`MARGIN`] has passed since boot, the boot check itself is stuck (or
//! the engine hangs it): init stops petting, the watchdog resets the machine, and GRUB,
//! whose one try is spent, boots the previous slot. A missing or unreadable state file is
//! not a reason to reset: only a trial that says so.
//!
//! The device is never closed, so no magic close can disarm it.

use std::fs::File;
use std::io::Write;
use std::time::{Duration, Instant};

pub const DEVICE: &str = "/dev/watchdog";
pub const UPDATE_STATE: &str = "/run/axion-update/state";
/// The boot check's default deadline (packages/update, `axion.update.deadline`).
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(180);
/// How long after the boot check's deadline a trial may still say so: the check starts a
/// while after boot, and it reboots by itself when the engine does not answer.
pub const MARGIN: Duration = Duration::from_secs(60);
/// Well inside the i6300esb's 30 s, even with a busy TCG guest.
pub const PET_EVERY: Duration = Duration::from_secs(5);
/// The longest deadline taken from the settings (a day): no overflow, no "never".
const MAX_DEADLINE: u64 = 86_400;

/// Seconds since boot after which a trial that was not marked good stops the petting:
/// `axion.update.deadline=` from the first command line that has it, plus [`MARGIN`].
pub fn trial_cutoff(cmdlines: &[&str]) -> Duration {
    let deadline = cmdlines
        .iter()
        .find_map(|c| {
            c.split_whitespace()
                .find_map(|w| w.strip_prefix("axion.update.deadline="))
        })
        .and_then(|v| v.trim_matches('"').parse::<u64>().ok())
        .map(|s| Duration::from_secs(s.min(MAX_DEADLINE)))
        .unwrap_or(DEFAULT_DEADLINE);
    deadline + MARGIN
}

/// Whether the update agent's state file says this boot is a trial not yet marked good.
pub fn on_trial(state: &str) -> bool {
    state
        .lines()
        .filter_map(|l| l.split_once('='))
        .rfind(|(k, _)| k.trim() == "update.state")
        .is_some_and(|(_, v)| v.trim() == "trial")
}

/// Whether to go on petting, `since_boot` into the boot: always before the cutoff, and
/// after it unless the state file says the trial is still not marked good.
pub fn keep_petting(since_boot: Duration, cutoff: Duration, state: Option<&str>) -> bool {
    since_boot < cutoff || !state.is_some_and(on_trial)
}

pub struct Watchdog {
    device: File,
    cutoff: Duration,
    next: Instant,
    given_up: bool,
}

impl Watchdog {
    /// Opens the device, which starts it; None (and one line saying so when it exists but
    /// cannot be opened) without one.
    pub fn open(cmdlines: &[&str], now: Instant) -> Option<Watchdog> {
        if !std::path::Path::new(DEVICE).exists() {
            return None;
        }
        let device = match File::options().write(true).open(DEVICE) {
            Ok(f) => f,
            Err(e) => {
                crate::warn!("{DEVICE}: {e}; no watchdog");
                return None;
            }
        };
        let cutoff = trial_cutoff(cmdlines);
        crate::info!(
            "watchdog {DEVICE} armed: petted every {} s; a slot on trial not marked good {} s \
             after boot is reset",
            PET_EVERY.as_secs(),
            cutoff.as_secs()
        );
        let mut w = Watchdog {
            device,
            cutoff,
            next: now,
            given_up: false,
        };
        w.on_timer(now);
        Some(w)
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        (!self.given_up).then_some(self.next)
    }

    pub fn on_timer(&mut self, now: Instant) {
        if self.given_up || now < self.next {
            return;
        }
        self.next = now + PET_EVERY;
        let since_boot = crate::sys::boottime();
        let state = (since_boot >= self.cutoff)
            .then(|| std::fs::read_to_string(UPDATE_STATE).ok())
            .flatten();
        if !keep_petting(since_boot, self.cutoff, state.as_deref()) {
            self.given_up = true;
            crate::error!(
                "the slot on trial was not marked good within {} s of boot: no more petting, \
                 the watchdog resets the machine and GRUB boots the previous slot",
                self.cutoff.as_secs()
            );
            return;
        }
        if let Err(e) = self.device.write_all(b"\0") {
            crate::warn!("{DEVICE}: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cutoff_is_the_update_deadline_plus_the_margin() {
        assert_eq!(trial_cutoff(&[]), DEFAULT_DEADLINE + MARGIN);
        assert_eq!(
            trial_cutoff(&["console=ttyS0", "axion.update.deadline=\"30\" quiet"]),
            Duration::from_secs(90)
        );
        // The kernel command line first, then fw_cfg's.
        assert_eq!(
            trial_cutoff(&["axion.update.deadline=10", "axion.update.deadline=99"]),
            Duration::from_secs(70)
        );
        assert_eq!(
            trial_cutoff(&["axion.update.deadline=soon"]),
            DEFAULT_DEADLINE + MARGIN
        );
        assert_eq!(
            trial_cutoff(&["axion.update.deadline=99999999999999999999"]),
            DEFAULT_DEADLINE + MARGIN
        );
        assert_eq!(
            trial_cutoff(&["axion.update.deadline=999999999"]),
            Duration::from_secs(MAX_DEADLINE) + MARGIN
        );
    }

    #[test]
    fn only_a_trial_past_the_cutoff_stops_the_petting() {
        let cutoff = Duration::from_secs(240);
        let trial = "version=0.2.0\nslot=B\nupdate.state=trial\n";
        let good = "version=0.2.0\nslot=B\nupdate.state=idle\n";
        let early = Duration::from_secs(100);
        let late = Duration::from_secs(300);
        assert!(keep_petting(early, cutoff, Some(trial)));
        assert!(!keep_petting(late, cutoff, Some(trial)));
        assert!(!keep_petting(cutoff, cutoff, Some(trial)));
        assert!(keep_petting(late, cutoff, Some(good)));
        assert!(
            keep_petting(late, cutoff, None),
            "no state file: keep petting"
        );
        assert!(keep_petting(late, cutoff, Some("garbage\0\n=\n")));
        // The last line for the key counts, spaces aside.
        assert!(on_trial("update.state=idle\n update.state = trial \n"));
        assert!(!on_trial("update.state=trial\nupdate.state=idle\n"));
        assert!(!on_trial("update.state=trialx\n"));
    }
}
