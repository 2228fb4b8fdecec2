//! Figures: samples and their median, min and max, or the honest reason there is no number.

use serde::Serialize;

/// What a figure counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Unit {
    Seconds,
    Bytes,
    Mib,
}

impl Unit {
    pub fn format(self, v: f64) -> String {
        match self {
            Unit::Seconds if v < 10.0 => format!("{v:.2} s"),
            Unit::Seconds => format!("{v:.1} s"),
            Unit::Mib => format!("{v:.0} MiB"),
            Unit::Bytes => human_bytes(v),
        }
    }
}

pub fn human_bytes(v: f64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut x = v;
    let mut u = 0;
    while x >= 1024.0 && u < UNITS.len() - 1 {
        x /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{v:.0} B")
    } else if x < 10.0 {
        format!("{x:.2} {}", UNITS[u])
    } else {
        format!("{x:.1} {}", UNITS[u])
    }
}

/// Median, min and max of some samples.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stats {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub runs: usize,
    pub samples: Vec<f64>,
}

impl Stats {
    /// `None` for no samples. The median of an even count is the mean of the middle two.
    pub fn of(samples: &[f64]) -> Option<Stats> {
        let mut s: Vec<f64> = samples.iter().copied().filter(|v| v.is_finite()).collect();
        if s.is_empty() {
            return None;
        }
        s.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
        let n = s.len();
        let median = if n % 2 == 1 {
            s[n / 2]
        } else {
            (s[n / 2 - 1] + s[n / 2]) / 2.0
        };
        Some(Stats {
            median,
            min: s[0],
            max: s[n - 1],
            runs: n,
            samples: samples.to_vec(),
        })
    }
}

/// One cell of the table: a measured figure or why there is none.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Value {
    Measured(Stats),
    /// Not available, with the reason ("engine not in the image").
    Na {
        reason: String,
    },
    /// Does not apply to this column.
    None,
}

impl Value {
    pub fn from_samples(samples: &[f64], reason_if_empty: &str) -> Value {
        match Stats::of(samples) {
            Some(s) => Value::Measured(s),
            None => Value::na(reason_if_empty),
        }
    }
    pub fn na(reason: impl Into<String>) -> Value {
        Value::Na {
            reason: reason.into(),
        }
    }
    pub fn one(v: f64) -> Value {
        Value::Measured(Stats::of(&[v]).expect("one sample"))
    }
    pub fn median(&self) -> Option<f64> {
        match self {
            Value::Measured(s) => Some(s.median),
            _ => None,
        }
    }
    /// `1.52 s (1.41–1.60, 5 runs)`, `n/a (reason)` or `-`.
    pub fn cell(&self, unit: Unit) -> String {
        match self {
            Value::Measured(s) if s.runs == 1 || s.min == s.max => format!(
                "{}{}",
                unit.format(s.median),
                if s.runs > 1 {
                    format!(" ({} runs)", s.runs)
                } else {
                    String::new()
                }
            ),
            Value::Measured(s) => format!(
                "{} ({}–{}, {} runs)",
                unit.format(s.median),
                unit.format(s.min),
                unit.format(s.max),
                s.runs
            ),
            Value::Na { reason } => format!("n/a ({reason})"),
            Value::None => "-".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_min_max() {
        let s = Stats::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.runs), (2.0, 1.0, 3.0, 3));
        let s = Stats::of(&[4.0, 1.0, 2.0, 3.0]).unwrap();
        assert_eq!(s.median, 2.5);
        assert!(Stats::of(&[]).is_none());
        assert!(Stats::of(&[f64::NAN]).is_none());
    }

    #[test]
    fn cells() {
        assert_eq!(
            Value::from_samples(&[1.5, 1.25, 2.0], "x").cell(Unit::Seconds),
            "1.50 s (1.25 s–2.00 s, 3 runs)"
        );
        assert_eq!(Value::one(33.04).cell(Unit::Seconds), "33.0 s");
        assert_eq!(
            Value::from_samples(&[], "engine not in the image").cell(Unit::Seconds),
            "n/a (engine not in the image)"
        );
        assert_eq!(
            Value::one(575.0 * 1024.0 * 1024.0).cell(Unit::Bytes),
            "575.0 MiB"
        );
        assert_eq!(Value::one(2_400_000.0).cell(Unit::Bytes), "2.29 MiB");
        assert_eq!(Value::one(231.4).cell(Unit::Mib), "231 MiB");
    }
}
