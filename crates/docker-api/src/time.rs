//! RFC 3339 timestamps and Docker's human durations. Used by both back ends (the guest
//! engine and axion-vmd) and by xtask's SBOM: times are kept as nanoseconds since the
//! epoch (`i128`), formatted as `2026-11-26T20:05:10.123456789Z` (UTC) the way dockerd
//! writes them. The calendar is the `time` crate's (already in the engine and xtask
//! through rcgen; default features off: no formatting or parsing code); xtask's SBOM dates
//! use it too, so the workspace has no date arithmetic of its own.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Now, in nanoseconds since the epoch.
pub fn now_nanos() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_nanos() as i128
}

/// `2026-11-26T20:05:10.123456789Z`; 0 gives Docker's zero time `0001-01-01T00:00:00Z`
/// (as does an instant beyond the year 9999).
pub fn rfc3339(nanos: i128) -> String {
    match time::OffsetDateTime::from_unix_timestamp_nanos(nanos) {
        Ok(t) if nanos != 0 => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:09}Z",
            t.year(),
            t.month() as u8,
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.nanosecond()
        ),
        _ => "0001-01-01T00:00:00Z".into(),
    }
}

/// `YYYY-MM-DDTHH:MM:SS...` (UTC; fraction and zone ignored) → seconds since the epoch;
/// 0 when unparsable (an image config without `created`, say) or not a real date.
pub fn unix_from_rfc3339(s: &str) -> i64 {
    let p = |a: usize, b: usize| s.get(a..b).and_then(|x| x.parse::<u16>().ok());
    let (Some(y), Some(m), Some(d), Some(hh), Some(mm), Some(ss)) =
        (p(0, 4), p(5, 7), p(8, 10), p(11, 13), p(14, 16), p(17, 19))
    else {
        return 0;
    };
    let month = u8::try_from(m)
        .ok()
        .and_then(|m| time::Month::try_from(m).ok());
    let date = month.and_then(|m| time::Date::from_calendar_date(y as i32, m, d as u8).ok());
    let tod = time::Time::from_hms(hh as u8, mm as u8, ss as u8).ok();
    match (date, tod) {
        (Some(d), Some(t)) => time::PrimitiveDateTime::new(d, t)
            .assume_utc()
            .unix_timestamp(),
        _ => 0,
    }
}

/// "3 seconds", "About a minute", "2 hours" like Docker's units.HumanDuration.
pub fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => "Less than a second".into(),
        1 => "1 second".into(),
        2..=59 => format!("{s} seconds"),
        60..=119 => "About a minute".into(),
        _ if s < 3600 * 2 => format!("{} minutes", s / 60),
        _ if s < 3600 * 48 => format!("{} hours", s / 3600),
        _ => format!("{} days", s / 86_400),
    }
}

/// How long ago `nanos` was (zero for the future).
pub fn since(nanos: i128) -> Duration {
    let d = now_nanos() - nanos;
    Duration::from_nanos(d.max(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(rfc3339(1_000_000_000), "1970-01-01T00:00:01.000000000Z");
        // 2024-02-29T12:34:56Z
        assert_eq!(
            rfc3339(1_709_210_096_000_000_000),
            "2024-02-29T12:34:56.000000000Z"
        );
        assert_eq!(
            rfc3339(1_709_210_096_000_000_123),
            "2024-02-29T12:34:56.000000123Z"
        );
        assert_eq!(rfc3339(0), "0001-01-01T00:00:00Z");
        assert_eq!(human(Duration::from_secs(5)), "5 seconds");
        assert_eq!(human(Duration::from_secs(7200)), "2 hours");
    }

    #[test]
    fn round_trip() {
        let s = rfc3339(1_795_734_895_500_000_000);
        assert_eq!(&s[..19], "2026-11-26T23:14:55");
        assert_eq!(unix_from_rfc3339(&s), 1_795_734_895);
        assert_eq!(unix_from_rfc3339("2024-01-01T00:00:00Z"), 1_704_067_200);
        assert_eq!(
            unix_from_rfc3339("2024-02-29T12:34:56.5+00:00"),
            1_709_210_096
        );
        assert_eq!(unix_from_rfc3339("1969-12-31T23:59:59Z"), -1);
        assert_eq!(unix_from_rfc3339("nonsense"), 0);
        assert_eq!(
            unix_from_rfc3339("2023-02-29T00:00:00Z"),
            0,
            "not a leap year"
        );
        assert_eq!(unix_from_rfc3339("2024-13-01T00:00:00Z"), 0);
        assert_eq!(rfc3339(-1_000_000_000), "1969-12-31T23:59:59.000000000Z");
        // Every day of a leap-year span maps back to itself.
        for day in (-800..800).map(|d| d * 17) {
            let t = day as i128 * 86_400_000_000_000 + 1;
            assert_eq!(
                unix_from_rfc3339(&rfc3339(t)),
                day * 86_400,
                "{}",
                rfc3339(t)
            );
        }
        assert!(since(now_nanos() + 10_000_000_000).is_zero());
    }
}
