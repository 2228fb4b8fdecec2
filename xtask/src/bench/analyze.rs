//! The Debian peer's boot as waterfall steps, from `systemd-analyze` in the guest
//! (`systemd-analyze time` and `systemd-analyze critical-chain docker.service`, printed on
//! ttyS0 by the peer's marker unit, [`super::peer`]).
//!
//! `time` says when systemd started: "Startup finished in 2.1s (kernel) + 9.8s (userspace)
//! = 11.9s" (Debian's initramfs-tools initrd is not systemd, so its time is in "kernel").
//! `critical-chain` lists the units the unit waited for, each with the time it became active
//! (`@`, from systemd's start) or, for a unit that took time to start, when it began
//! activating (`@`) and how long that took (`+`). Each unit becomes one step at the moment it
//! was active, on the guest's monotonic clock (kernel + `@` [+ `+`]), with its bar from when
//! it began activating; a step `kernel` at systemd's start comes first, as in axion's trace.

use super::waterfall::Step;

/// A systemd timespan as `systemd-analyze` prints it ("1min 2.345s", "345ms", "1.5s",
/// "2h 3min"), in seconds.
pub fn timespan(text: &str) -> Option<f64> {
    let mut total = 0.0;
    let mut any = false;
    for word in text.split_whitespace() {
        let split = word
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .filter(|&i| i > 0)?;
        let (num, unit) = word.split_at(split);
        let n: f64 = num.parse().ok()?;
        let scale = match unit {
            "d" => 86_400.0,
            "h" => 3_600.0,
            "min" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            _ => return None,
        };
        total += n * scale;
        any = true;
    }
    any.then_some(total)
}

/// The "(kernel)" and "(initrd)" parts of `systemd-analyze time`: when systemd on the real
/// root started, in seconds since boot.
pub fn userspace_start(time_output: &str) -> Option<f64> {
    let line = time_output
        .lines()
        .find(|l| l.contains("Startup finished in"))?;
    let rest = line.split("Startup finished in").nth(1)?;
    let rest = rest.split('=').next()?;
    let mut start = 0.0;
    let mut found = false;
    for part in rest.split(" + ") {
        let part = part.trim();
        let (span, what) = part.rsplit_once(" (")?;
        let what = what.trim_end_matches(')');
        if what == "kernel" || what == "initrd" {
            start += timespan(span)?;
            found = true;
        }
    }
    found.then_some(start)
}

/// One unit of `critical-chain`: its name, `@` and `+` (seconds).
#[derive(Debug, Clone, PartialEq)]
pub struct ChainUnit {
    pub name: String,
    pub at: f64,
    pub took: Option<f64>,
}

/// The units of `critical-chain` output, as listed (the unit asked for first, what it waited
/// for below it). Lines without a time (the explanation at the top) are skipped.
pub fn critical_chain(output: &str) -> Vec<ChainUnit> {
    output
        .lines()
        .filter_map(|l| {
            let l = l.trim_start_matches(|c: char| c.is_whitespace() || "└├│─".contains(c));
            // The unit asked for is printed with its start-up time only ("docker.service
            // +57.2s"): it began once the last unit below it was active (NaN until
            // [`steps`] knows that).
            if let Some((name, took)) = l.split_once(" +").filter(|(n, _)| !n.contains(' ')) {
                if !name.is_empty() && !took.contains('@') {
                    return Some(ChainUnit {
                        name: name.to_owned(),
                        at: f64::NAN,
                        took: Some(timespan(took)?),
                    });
                }
            }
            let (name, times) = l.split_once(" @")?;
            if name.contains(' ') || name.is_empty() {
                return None;
            }
            let (at, took) = match times.split_once(" +") {
                Some((a, t)) => (timespan(a)?, Some(timespan(t)?)),
                None => (timespan(times)?, None),
            };
            Some(ChainUnit {
                name: name.to_owned(),
                at,
                took,
            })
        })
        .collect()
}

/// The waterfall steps of the peer's boot from the two outputs (see the module doc), in time
/// order; None when `time` has no start (boot not finished) or the chain is empty.
pub fn steps(time_output: &str, chain_output: &str) -> Option<Vec<Step>> {
    let start = userspace_start(time_output)?;
    let mut chain = critical_chain(chain_output);
    if chain.is_empty() {
        return None;
    }
    let last_active = chain
        .iter()
        .filter(|u| u.at.is_finite())
        .map(|u| u.at + u.took.unwrap_or(0.0))
        .fold(0.0_f64, f64::max);
    for u in chain.iter_mut().filter(|u| !u.at.is_finite()) {
        u.at = last_active;
    }
    let mut steps: Vec<Step> = chain
        .into_iter()
        .map(|u| {
            let began = start + u.at;
            Step {
                step: u.name,
                at: began + u.took.unwrap_or(0.0),
                from: u.took.map(|_| began),
            }
        })
        .collect();
    steps.sort_by(|a, b| a.at.total_cmp(&b.at));
    steps.insert(
        0,
        Step {
            step: "kernel".into(),
            at: start,
            from: None,
        },
    );
    Some(steps)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIME: &str = "Startup finished in 2.457s (kernel) + 1min 9.876s (userspace) = \
                        1min 12.333s \nmulti-user.target reached after 1min 9.800s in userspace\n";

    const CHAIN: &str = "The time when unit became active or started is printed after the \"@\" \
                         character.\nThe time the unit took to start is printed after the \"+\" \
                         character.\n\ndocker.service +3.950s\n└─containerd.service \
                         @4.900s +600ms\n  └─network.target @4.880s\n    \
                         └─systemd-networkd.service @3.2s +1.678s\n      └─basic.target \
                         @3.1s\n";

    #[test]
    fn timespans() {
        let near = |t: &str, want: f64| {
            let got = timespan(t).unwrap_or_else(|| panic!("{t} did not parse"));
            assert!((got - want).abs() < 1e-9, "{t}: {got}");
        };
        near("1.5s", 1.5);
        near("345ms", 0.345);
        near("1min 2.5s", 62.5);
        near("2h 3min", 7380.0);
        near("12us", 12e-6);
        assert_eq!(timespan(""), None);
        assert_eq!(timespan("fast"), None);
        assert_eq!(timespan("3 s"), None);
    }

    #[test]
    fn userspace_starts_after_kernel_and_initrd() {
        assert!((userspace_start(TIME).unwrap() - 2.457).abs() < 1e-9);
        let with_initrd =
            "Startup finished in 1.000s (kernel) + 2.500s (initrd) + 3s (userspace) = 6.5s";
        assert!((userspace_start(with_initrd).unwrap() - 3.5).abs() < 1e-9);
        assert_eq!(
            userspace_start("Bootup is not yet finished (...FinishTimestampMonotonic=0).\n"),
            None
        );
    }

    #[test]
    fn chain_units_with_and_without_durations() {
        let c = critical_chain(CHAIN);
        assert_eq!(c.len(), 5, "{c:?}");
        assert_eq!(c[0].name, "docker.service");
        assert!(c[0].at.is_nan() && (c[0].took.unwrap() - 3.95).abs() < 1e-9);
        assert_eq!(c[2].name, "network.target");
        assert_eq!(c[2].took, None);
        assert_eq!(c[4].name, "basic.target");
    }

    #[test]
    fn steps_are_in_time_order_on_the_boot_clock() {
        let s = steps(TIME, CHAIN).unwrap();
        let names: Vec<&str> = s.iter().map(|s| s.step.as_str()).collect();
        assert_eq!(
            names,
            [
                "kernel",
                "basic.target",
                "systemd-networkd.service",
                "network.target",
                "containerd.service",
                "docker.service"
            ]
        );
        let docker = s.last().unwrap();
        // It began when containerd was active (4.9 + 0.6 s after systemd started).
        assert!((docker.at - (2.457 + 5.5 + 3.95)).abs() < 1e-9);
        assert!((docker.from.unwrap() - (2.457 + 5.5)).abs() < 1e-9);
        assert!((s[0].at - 2.457).abs() < 1e-9);
        assert_eq!(s[3].from, None, "network.target took no time");
        assert!(steps("not finished", CHAIN).is_none());
        assert!(steps(TIME, "").is_none());
    }
}
