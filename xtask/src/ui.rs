//! Progress output: indicatif bars on a terminal, plain lines otherwise (CI, logs).

use std::io::IsTerminal;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

pub fn is_terminal() -> bool {
    std::io::stderr().is_terminal()
}

/// Every bar of the process, so that packages building at once each keep their own line.
fn bars() -> &'static MultiProgress {
    static BARS: std::sync::OnceLock<MultiProgress> = std::sync::OnceLock::new();
    BARS.get_or_init(MultiProgress::new)
}

/// A line on stderr that does not tear the bars being drawn.
pub fn say(line: &str) {
    bars().suspend(|| eprintln!("{line}"));
}

/// A byte counter for a download; hidden when not on a terminal (a plain line is printed
/// at the start and end instead).
pub fn bytes_bar(total: Option<u64>, label: &str) -> ProgressBar {
    if !is_terminal() {
        eprintln!("{label}");
        return ProgressBar::hidden();
    }
    let bar = bars().add(match total {
        Some(n) => ProgressBar::new(n),
        None => ProgressBar::new_spinner(),
    });
    bar.set_style(
        ProgressStyle::with_template(
            "{msg:40!} {bar:30} {bytes}/{total_bytes} {bytes_per_sec} {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message(label.to_owned());
    bar
}

/// A spinner for a step of unknown length (a build); plain line when not on a terminal.
pub fn step(label: &str) -> ProgressBar {
    if !is_terminal() {
        eprintln!("{label}");
        return ProgressBar::hidden();
    }
    let bar = bars().add(ProgressBar::new_spinner());
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg} [{elapsed}]")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.set_message(label.to_owned());
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    bar
}

/// `1.5 MiB`: a size for people.
pub fn human_size(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
