//! When updates happen by themselves: the first-boot settings
//! `axion.update.policy=manual|auto` (manual is the default: nothing happens unless someone
//! runs `axion-update apply`), `axion.update.window=HH:MM-HH:MM` (UTC; the window may cross
//! midnight, `22:00-04:00`; without one, any time) and `axion.update.interval=N[s|m|h]`
//! (how often `auto` checks; default 6 h). Under `auto`, a verified newer version found
//! inside the window is applied and the machine reboots into it; outside the window
//! nothing is fetched.

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    Manual,
    Auto,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ScheduleError {
    #[error("axion.update.policy={0:?}: manual or auto")]
    Policy(String),
    #[error("axion.update.window={0:?}: HH:MM-HH:MM (UTC)")]
    Window(String),
    #[error("axion.update.interval={0:?}: seconds, or N followed by s, m or h (1 min to 7 days)")]
    Interval(String),
}

impl Policy {
    pub fn parse(s: Option<&str>) -> Result<Policy, ScheduleError> {
        match s.map(str::trim) {
            None | Some("") | Some("manual") => Ok(Policy::Manual),
            Some("auto") => Ok(Policy::Auto),
            Some(other) => Err(ScheduleError::Policy(other.to_owned())),
        }
    }
}

const DAY_MINUTES: u16 = 24 * 60;

/// A daily maintenance window, minutes after midnight UTC: `start` inclusive, `end`
/// exclusive; `start > end` crosses midnight, `start == end` is the whole day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub start: u16,
    pub end: u16,
}

fn minute_of_day(hhmm: &str) -> Option<u16> {
    let (h, m) = hhmm.trim().split_once(':')?;
    if h.is_empty() || h.len() > 2 || m.len() != 2 {
        return None;
    }
    let (h, m) = (h.parse::<u16>().ok()?, m.parse::<u16>().ok()?);
    (h < 24 && m < 60).then_some(h * 60 + m)
}

impl Window {
    pub const ALWAYS: Window = Window { start: 0, end: 0 };

    pub fn parse(s: &str) -> Result<Window, ScheduleError> {
        let bad = || ScheduleError::Window(s.to_owned());
        let (a, b) = s.split_once('-').ok_or_else(bad)?;
        Ok(Window {
            start: minute_of_day(a).ok_or_else(bad)?,
            end: minute_of_day(b).ok_or_else(bad)?,
        })
    }

    /// Whether the Unix time `unix_secs` falls inside the window.
    pub fn contains(&self, unix_secs: u64) -> bool {
        let now = ((unix_secs / 60) % u64::from(DAY_MINUTES)) as u16;
        match self.start.cmp(&self.end) {
            std::cmp::Ordering::Equal => true,
            std::cmp::Ordering::Less => (self.start..self.end).contains(&now),
            std::cmp::Ordering::Greater => now >= self.start || now < self.end,
        }
    }

    /// Seconds from `unix_secs` until the window next opens (0 inside it).
    pub fn wait_secs(&self, unix_secs: u64) -> u64 {
        if self.contains(unix_secs) {
            return 0;
        }
        let now_secs = unix_secs % 86_400;
        let start = u64::from(self.start) * 60;
        (start + 86_400 - now_secs) % 86_400
    }
}

/// `axion.update.interval=`: seconds, or with an `s`, `m` or `h` suffix; 1 min to 7 days.
pub fn interval(s: Option<&str>) -> Result<Duration, ScheduleError> {
    let Some(s) = s.map(str::trim).filter(|s| !s.is_empty()) else {
        return Ok(Duration::from_secs(6 * 3600));
    };
    let bad = || ScheduleError::Interval(s.to_owned());
    let (num, unit) = match s.as_bytes().last() {
        Some(b's') => (&s[..s.len() - 1], 1),
        Some(b'm') => (&s[..s.len() - 1], 60),
        Some(b'h') => (&s[..s.len() - 1], 3600),
        _ => (s, 1),
    };
    let secs = num
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(unit))
        .ok_or_else(bad)?;
    if !(60..=7 * 86_400).contains(&secs) {
        return Err(bad());
    }
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(h: u64, m: u64) -> u64 {
        // Some day in 2026, then the time of day.
        1_780_000_000 / 86_400 * 86_400 + h * 3600 + m * 60
    }

    #[test]
    fn policy_is_manual_unless_auto() {
        assert_eq!(Policy::parse(None), Ok(Policy::Manual));
        assert_eq!(Policy::parse(Some("manual")), Ok(Policy::Manual));
        assert_eq!(Policy::parse(Some("auto")), Ok(Policy::Auto));
        assert!(Policy::parse(Some("always")).is_err());
    }

    #[test]
    fn a_window_within_the_day() {
        let w = Window::parse("02:00-04:30").unwrap();
        assert_eq!(
            w,
            Window {
                start: 120,
                end: 270
            }
        );
        assert!(!w.contains(at(1, 59)));
        assert!(w.contains(at(2, 0)));
        assert!(w.contains(at(4, 29)));
        assert!(!w.contains(at(4, 30)), "the end is exclusive");
        assert_eq!(w.wait_secs(at(1, 0)), 3600);
        assert_eq!(w.wait_secs(at(3, 0)), 0);
        assert_eq!(w.wait_secs(at(5, 0)), 21 * 3600);
    }

    #[test]
    fn a_window_across_midnight_and_the_whole_day() {
        let w = Window::parse("22:00-4:00").unwrap();
        assert!(w.contains(at(23, 0)) && w.contains(at(0, 30)) && w.contains(at(3, 59)));
        assert!(!w.contains(at(4, 0)) && !w.contains(at(12, 0)));
        assert_eq!(w.wait_secs(at(21, 0)), 3600);
        assert!((0..24).all(|h| Window::ALWAYS.contains(at(h, 7))));
    }

    #[test]
    fn malformed_windows_and_intervals_are_refused() {
        for s in [
            "",
            "02:00",
            "24:00-01:00",
            "02:60-03:00",
            "2-3",
            "02:0-03:00",
            "a:bc-01:00",
        ] {
            assert!(Window::parse(s).is_err(), "{s:?}");
        }
        assert_eq!(interval(None), Ok(Duration::from_secs(6 * 3600)));
        assert_eq!(interval(Some("90m")), Ok(Duration::from_secs(5400)));
        assert_eq!(interval(Some("120")), Ok(Duration::from_secs(120)));
        for s in ["10s", "8d", "h", "99999999999999999999h", "-5m", "1x"] {
            assert!(interval(Some(s)).is_err(), "{s:?}");
        }
    }
}
