//! The state file `/run/axion-update/state`: what this boot runs and where its update
//! stands, as `key=value` lines the engine turns into `/info` Labels (`axion.KEY=VALUE`,
//! see docker_api::host_labels), so `docker info` shows the version without SSH.
//!
//! Rewritten whole (temporary file, then rename) by every command that learns something, so
//! a reader never sees half of it. It lives under /run: each boot starts without one until
//! the boot check writes it.

use std::path::Path;

use crate::grubenv::Env;
use crate::slots::Slot;

/// Where the update of this machine stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Not booted from a disk slot (ISO or direct kernel boot): no in-place updates.
    Unmanaged,
    /// Running the active slot, nothing written for the next boot.
    Idle,
    /// A new version is in the other slot; the next boot tries it once.
    Pending,
    /// This boot is the one trial of a new slot; the boot check has not passed yet.
    Trial,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Unmanaged => "unmanaged",
            Phase::Idle => "idle",
            Phase::Pending => "pending",
            Phase::Trial => "trial",
        }
    }

    /// The phase the grubenv says this boot is in.
    pub fn of(booted: Option<Slot>, env: &Env) -> Phase {
        let Some(booted) = booted else {
            return Phase::Unmanaged;
        };
        let active = env
            .get("axion_active")
            .and_then(Slot::parse)
            .unwrap_or(Slot::A);
        let next = env.get("axion_next").and_then(Slot::parse);
        if booted != active {
            Phase::Trial
        } else if next.is_some_and(|n| n != active) && env.get("axion_try") == Some("1") {
            Phase::Pending
        } else {
            Phase::Idle
        }
    }
}

/// Everything the state file says.
pub struct State<'a> {
    pub version: &'a str,
    pub profile: &'a str,
    pub slot: Option<Slot>,
    pub phase: Phase,
    pub last_failed: Option<&'a str>,
    /// The newer version `check` saw published, if any.
    pub available: Option<&'a str>,
}

impl State<'_> {
    pub fn render(&self) -> String {
        // Values come from the grubenv and the signed claims: keep them to one line each.
        let one_line = |s: &str| s.replace(['\n', '\r'], " ");
        let mut out = format!(
            "version={}\nprofile={}\nslot={}\nupdate.state={}\n",
            one_line(self.version),
            one_line(self.profile),
            self.slot.map(Slot::name).unwrap_or("none"),
            self.phase.name()
        );
        out.push_str(&format!(
            "update.last-failed={}\n",
            one_line(self.last_failed.unwrap_or(""))
        ));
        out.push_str(&format!(
            "update.available={}\n",
            one_line(self.available.unwrap_or(""))
        ));
        out
    }

    /// Writes it to `path` through a temporary file renamed over it.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, self.render())?;
        std::fs::rename(&tmp, path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Env {
        let mut e = Env::default();
        for (k, v) in pairs {
            e.set(k, v).unwrap();
        }
        e
    }

    #[test]
    fn phase_follows_the_grubenv() {
        let a = Some(Slot::A);
        assert_eq!(Phase::of(None, &env(&[])), Phase::Unmanaged);
        assert_eq!(Phase::of(a, &env(&[("axion_active", "A")])), Phase::Idle);
        let pending = env(&[
            ("axion_active", "A"),
            ("axion_next", "B"),
            ("axion_try", "1"),
        ]);
        assert_eq!(Phase::of(a, &pending), Phase::Pending);
        assert_eq!(Phase::of(Some(Slot::B), &pending), Phase::Trial);
        // The try was spent (GRUB set axion_try=0) and we are back on A: nothing pending.
        let spent = env(&[
            ("axion_active", "A"),
            ("axion_next", "B"),
            ("axion_try", "0"),
        ]);
        assert_eq!(Phase::of(a, &spent), Phase::Idle);
    }

    #[test]
    fn renders_one_key_per_line_and_writes_atomically() {
        let s = State {
            version: "0.2.0",
            profile: "qemu",
            slot: Some(Slot::B),
            phase: Phase::Idle,
            last_failed: Some("0.3.0\nevil=1"),
            available: None,
        };
        let text = s.render();
        assert_eq!(
            text,
            "version=0.2.0\nprofile=qemu\nslot=B\nupdate.state=idle\n\
             update.last-failed=0.3.0 evil=1\nupdate.available=\n"
        );
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("run/state");
        s.write(&p).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), text);
        assert!(!p.with_extension("tmp").exists());
    }
}
