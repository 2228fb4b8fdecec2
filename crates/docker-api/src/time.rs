//! RFC 3339 timestamps and Docker's human durations, without a date crate. Used by both
//! back ends (the guest engine and axion-vmd): times are kept as nanoseconds since the
//! epoch (`i128`), formatted as `2026-11-26T20:05:10.123456789Z` (UTC) the way dockerd
//! writes them.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Now, in nanoseconds since the epoch.
pub fn now_nanos() -> i128 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_nanos() as i128
}

/// Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Days since 1970-01-01 from a civil date (the inverse of `civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let (y, m) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + (153 * m + 2) / 5 + d - 1;
    era * 146_097 + doe - 719_468
}

/// `2026-11-26T20:05:10.123456789Z`; 0 gives Docker's zero time `0001-01-01T00:00:00Z`.
pub fn rfc3339(nanos: i128) -> String {
    if nanos == 0 {
        return "0001-01-01T00:00:00Z".into();
    }
    let secs = nanos.div_euclid(1_000_000_000) as i64;
    let frac = nanos.rem_euclid(1_000_000_000);
    let (y, mo, d) = civil(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    format!("{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{frac:09}Z", s / 3600, (s / 60) % 60, s % 60)
}

/// `YYYY-MM-DDTHH:MM:SS...` (UTC; fraction and zone ignored) → seconds since the epoch;
/// 0 when unparsable (an image config without `created`, say).
pub fn unix_from_rfc3339(s: &str) -> i64 {
    let p = |a: usize, b: usize| s.get(a..b).and_then(|x| x.parse::<i64>().ok());
    let (Some(y), Some(m), Some(d), Some(hh), Some(mm), Some(ss)) = (p(0, 4), p(5, 7), p(8, 10), p(11, 13), p(14, 16), p(17, 19)) else { return 0 };
    days_from_civil(y, m, d) * 86_400 + hh * 3600 + mm * 60 + ss
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
        assert_eq!(rfc3339(1_709_210_096_000_000_000), "2024-02-29T12:34:56.000000000Z");
        assert_eq!(rfc3339(1_709_210_096_000_000_123), "2024-02-29T12:34:56.000000123Z");
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
        assert_eq!(unix_from_rfc3339("2024-02-29T12:34:56.5+00:00"), 1_709_210_096);
        assert_eq!(unix_from_rfc3339("1969-12-31T23:59:59Z"), -1);
        assert_eq!(unix_from_rfc3339("nonsense"), 0);
        // Every day of a leap-year span maps back to itself.
        for day in (-800..800).map(|d| d * 17) {
            let t = day as i128 * 86_400_000_000_000 + 1;
            assert_eq!(unix_from_rfc3339(&rfc3339(t)), day * 86_400, "{}", rfc3339(t));
        }
        assert!(since(now_nanos() + 10_000_000_000).is_zero());
    }
}
