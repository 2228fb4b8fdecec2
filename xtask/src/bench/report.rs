//! The bench's outputs: a Markdown table (stdout, and its marked section of
//! docs/benchmarks.md, [`splice_section`]), JSON and an SVG bar chart of the boot times.

use serde::Serialize;

use super::stats::{Unit, Value};

/// Where and how the figures were taken.
#[derive(Debug, Clone, Serialize)]
pub struct Meta {
    /// UTC, `YYYY-MM-DD HH:MM`.
    pub date: String,
    pub cpu: String,
    pub cores: usize,
    pub memory_gib: f64,
    pub host_kernel: String,
    pub qemu: String,
    /// "TCG" or "KVM".
    pub accel: String,
    pub accel_reason: String,
    /// The guests' virtual hardware (the same for axion, the peer and the floor).
    pub vm: String,
    pub quick: bool,
    /// The host's 1-minute load average when the bench started (the machine may be shared).
    pub load_average: String,
}

/// One line of the table.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub section: String,
    pub figure: String,
    pub unit: Unit,
    pub axion: Value,
    pub peer: Value,
    /// Boot figures are also shown as a multiple of the kernel floor.
    pub vs_floor: bool,
}

impl Row {
    pub fn new(section: &str, figure: &str, unit: Unit, axion: Value, peer: Value) -> Row {
        Row {
            section: section.into(),
            figure: figure.into(),
            unit,
            axion,
            peer,
            vs_floor: false,
        }
    }
    pub fn boot(mut self) -> Row {
        self.vs_floor = true;
        self
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub meta: Meta,
    /// The kernel floor's median (s), when measured.
    pub floor_seconds: Option<f64>,
    pub rows: Vec<Row>,
    pub notes: Vec<String>,
}

impl Report {
    fn cell(&self, v: &Value, unit: Unit, vs_floor: bool) -> String {
        let mut c = v.cell(unit);
        if let (true, Some(m), Some(f)) = (vs_floor, v.median(), self.floor_seconds) {
            if f > 0.0 {
                c.push_str(&format!(" = {:.1}× floor", m / f));
            }
        }
        c
    }

    /// The Markdown table, with a header line naming the machine and QEMU.
    pub fn table(&self) -> String {
        let m = &self.meta;
        let mut out = format!(
            "{} UTC · {} ({} cores, {:.0} GiB, load average {} at start) · host kernel {} · {} · \
             QEMU {} · guests: {}{}\n\n",
            m.date,
            m.cpu,
            m.cores,
            m.memory_gib,
            m.load_average,
            m.host_kernel,
            m.accel,
            m.qemu,
            m.vm,
            if m.quick { " · --quick" } else { "" }
        );
        out.push_str(
            "| | figure | axion | Debian 12 peer | peer ÷ axion |\n|---|---|---|---|---|\n",
        );
        let mut last = String::new();
        for r in &self.rows {
            let section = if r.section != last {
                r.section.clone()
            } else {
                String::new()
            };
            last = r.section.clone();
            let ratio = match (r.axion.median(), r.peer.median()) {
                (Some(a), Some(p)) if a > 0.0 => format!("{:.1}×", p / a),
                _ => String::new(),
            };
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} |\n",
                section,
                r.figure,
                self.cell(&r.axion, r.unit, r.vs_floor),
                self.cell(&r.peer, r.unit, r.vs_floor),
                ratio
            ));
        }
        if !self.notes.is_empty() {
            out.push('\n');
            for n in &self.notes {
                out.push_str(&format!("- {n}\n"));
            }
        }
        out
    }

    /// The README's headline figures (its `bench:readme` section): the boot to the Docker API
    /// and `docker run` beside the peer's, without the date (that and the machine's load are
    /// in docs/benchmarks.md, where dated figures live), so the README's figures are the
    /// bench's own and never copied by hand.
    pub fn headline(&self) -> String {
        let find = |prefix: &str| self.rows.iter().find(|r| r.figure.starts_with(prefix));
        let secs = |v: &Value| v.median().map(|m| Unit::Seconds.format(m));
        let mut lines = Vec::new();
        if let Some(r) = find("Docker API answers") {
            if let Some(a) = secs(&r.axion) {
                let mut l = format!(
                    "- From starting QEMU to the Docker API answering: **{a}** under {} on a \
                     {}-core machine (load average {} at the start)",
                    self.meta.accel, self.meta.cores, self.meta.load_average
                );
                if let (Some(p), Some(am), Some(pm)) =
                    (secs(&r.peer), r.axion.median(), r.peer.median())
                {
                    l.push_str(&format!(
                        "; a Debian 12 host with Debian's docker.io, booted the same way: {p} \
                         ({:.1}× slower)",
                        pm / am
                    ));
                }
                lines.push(l);
            }
        }
        if let Some(r) = find("ready, guest's own clock") {
            if let Some(a) = secs(&r.axion) {
                lines.push(format!(
                    "- init's ready line (the engine answering) on the guest's own clock: {a}"
                ));
            }
        }
        if let Some(r) = find("`docker run --rm busybox true`") {
            if let Some(a) = secs(&r.axion) {
                let peer = secs(&r.peer)
                    .map(|p| format!(" (the Debian host: {p})"))
                    .unwrap_or_default();
                lines.push(format!("- `docker run --rm busybox true`: {a}{peer}"));
            }
        }
        lines.push(
            "- Measured by `cargo xtask bench`, which writes these lines; its full table, the \
             machine, its load and the date: [docs/benchmarks.md](docs/benchmarks.md)."
                .to_owned(),
        );
        lines.join("\n") + "\n"
    }

    pub fn json(&self) -> String {
        serde_json::to_string_pretty(self).expect("the report serialises")
    }

    /// The bars of the chart: every boot figure that was measured, axion's first.
    pub fn boot_bars(&self) -> Vec<(String, f64, &'static str)> {
        let mut bars = Vec::new();
        if let Some(f) = self.floor_seconds {
            bars.push(("kernel floor (QEMU start → exit)".to_owned(), f, "#999999"));
        }
        for r in self.rows.iter().filter(|r| r.vs_floor) {
            if r.figure.starts_with("kernel floor") {
                continue;
            }
            if let Some(a) = r.axion.median() {
                bars.push((format!("axion: {}", r.figure), a, "#2a7ab0"));
            }
        }
        for r in self.rows.iter().filter(|r| r.vs_floor) {
            if let Some(p) = r.peer.median() {
                bars.push((format!("Debian peer: {}", r.figure), p, "#c0504d"));
            }
        }
        bars
    }

    /// A horizontal bar chart of the boot times (seconds from QEMU start), plain SVG.
    pub fn svg(&self) -> String {
        let bars = self.boot_bars();
        let max = bars.iter().map(|b| b.1).fold(1.0_f64, f64::max);
        let (label_w, bar_w, row_h, top) = (360.0, 420.0, 26.0, 50.0);
        let height = top + row_h * bars.len() as f64 + 30.0;
        let width = label_w + bar_w + 90.0;
        let mut s = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width:.0}\" height=\"{height:.0}\" \
             font-family=\"sans-serif\" font-size=\"13\">\n\
             <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
             <text x=\"10\" y=\"22\" font-size=\"15\" font-weight=\"bold\">Boot time from QEMU \
             start, seconds (median; {} , {} cores, QEMU {})</text>\n",
            xml(&self.meta.accel),
            self.meta.cores,
            xml(&self.meta.qemu)
        );
        for (i, (label, v, color)) in bars.iter().enumerate() {
            let y = top + row_h * i as f64;
            let w = (v / max * bar_w).max(1.0);
            s.push_str(&format!(
                "<text x=\"{:.0}\" y=\"{:.0}\" text-anchor=\"end\">{}</text>\n<rect x=\"{:.0}\" \
                 y=\"{:.0}\" width=\"{w:.1}\" height=\"{:.0}\" fill=\"{color}\"/>\n<text \
                 x=\"{:.1}\" y=\"{:.0}\">{}</text>\n",
                label_w - 8.0,
                y + 15.0,
                xml(label),
                label_w,
                y + 2.0,
                row_h - 6.0,
                label_w + w + 6.0,
                y + 15.0,
                xml(&Unit::Seconds.format(*v))
            ));
        }
        s.push_str("</svg>\n");
        s
    }
}

/// `doc` with its section `key` replaced by `body`: the lines between
/// `<!-- bench:KEY begin ... -->` and `<!-- bench:KEY end -->` (the marker lines are kept, so
/// the prose around them is the reader's to edit). A document without that section gets it
/// appended, markers and all.
pub fn splice_section(doc: &str, key: &str, body: &str) -> String {
    let begin = format!("<!-- bench:{key} begin");
    let end = format!("<!-- bench:{key} end -->");
    let body = body.trim_end_matches('\n');
    if let (Some(b), Some(e)) = (doc.find(&begin), doc.find(&end)) {
        let after_begin = doc[b..].find('\n').map_or(doc.len(), |i| b + i + 1);
        if after_begin <= e {
            return format!("{}{body}\n{}", &doc[..after_begin], &doc[e..]);
        }
    }
    let mut out = doc.to_owned();
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(&format!(
        "\n{begin}: written by `cargo xtask bench`; edits here are replaced -->\n{body}\n{end}\n"
    ));
    out
}

pub fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Report {
        Report {
            meta: Meta {
                date: "2026-11-26 21:00".into(),
                cpu: "Test CPU".into(),
                cores: 2,
                memory_gib: 24.0,
                host_kernel: "6.1.0".into(),
                qemu: "7.2.22".into(),
                accel: "TCG".into(),
                accel_reason: "test".into(),
                vm: "2 vCPU, 1024 MiB".into(),
                quick: true,
                load_average: "0.50".into(),
            },
            floor_seconds: Some(1.0),
            rows: vec![
                Row::new(
                    "boot",
                    "kernel floor (QEMU start → exit)",
                    Unit::Seconds,
                    Value::one(1.0),
                    Value::None,
                )
                .boot(),
                Row::new(
                    "boot",
                    "ready <line>",
                    Unit::Seconds,
                    Value::from_samples(&[2.0, 3.0, 2.5], ""),
                    Value::one(10.0),
                )
                .boot(),
                Row::new(
                    "boot",
                    "Docker API answers",
                    Unit::Seconds,
                    Value::na("engine not in the image"),
                    Value::one(33.0),
                )
                .boot(),
                Row::new(
                    "size",
                    "qcow2",
                    Unit::Bytes,
                    Value::one(10.0 * 1048576.0),
                    Value::one(575.0 * 1048576.0),
                ),
            ],
            notes: vec!["a note".into()],
        }
    }

    #[test]
    fn splice_replaces_only_its_own_section() {
        let doc = concat!(
            "# Benchmarks\n\nprose\n<!-- bench:full begin: note -->\nold\ntable\n",
            "<!-- bench:full end -->\nmore prose\n",
            "<!-- bench:vmd-only begin -->\nvmd\n<!-- bench:vmd-only end -->\n"
        );
        let out = splice_section(doc, "full", "new table\n");
        assert_eq!(
            out,
            concat!(
                "# Benchmarks\n\nprose\n<!-- bench:full begin: note -->\nnew table\n",
                "<!-- bench:full end -->\nmore prose\n",
                "<!-- bench:vmd-only begin -->\nvmd\n<!-- bench:vmd-only end -->\n"
            )
        );
        // Running twice gives the same document.
        assert_eq!(splice_section(&out, "full", "new table"), out);
        let out = splice_section(&out, "vmd-only", "fast");
        assert!(out.contains("<!-- bench:vmd-only begin -->\nfast\n<!-- bench:vmd-only end -->\n"));
        assert!(out.contains("new table\n"));
    }

    #[test]
    fn splice_appends_a_missing_section() {
        let out = splice_section("# Benchmarks\nprose", "full", "t");
        assert_eq!(
            out,
            concat!(
                "# Benchmarks\nprose\n\n",
                "<!-- bench:full begin: written by `cargo xtask bench`; ",
                "edits here are replaced -->\nt\n<!-- bench:full end -->\n"
            )
        );
        assert_eq!(splice_section(&out, "full", "t"), out);
        // An end marker before its begin marker is not a section: append a fresh one.
        let odd = "<!-- bench:full end -->\n<!-- bench:full begin -->\n";
        assert!(splice_section(odd, "full", "t").ends_with("t\n<!-- bench:full end -->\n"));
    }

    #[test]
    fn table_has_ratios_and_na() {
        let t = sample().table();
        assert!(t.contains("TCG · QEMU 7.2.22"), "{t}");
        assert!(
            t.contains(
                "|  | ready <line> | 2.50 s (2.00 s–3.00 s, 3 runs) = 2.5× floor | 10.0 \
                 s = 10.0× floor | 4.0× |"
            ),
            "{t}"
        );
        assert!(t.contains("n/a (engine not in the image)"), "{t}");
        assert!(
            t.contains("| size | qcow2 | 10.0 MiB | 575.0 MiB | 57.5× |"),
            "{t}"
        );
        assert!(t.contains("- a note"));
    }

    #[test]
    fn headline_has_the_figures_and_no_date() {
        let mut r = sample();
        let h = r.headline();
        // The API row has no axion figure in the sample: only the pointer line.
        assert!(!h.contains("Docker API answering"), "{h}");
        assert!(h.contains("docs/benchmarks.md"));
        r.rows[2].axion = Value::from_samples(&[2.0, 2.2, 2.1], "");
        let h = r.headline();
        assert!(
            h.contains("**2.10 s** under TCG on a 2-core machine (load average 0.50")
                && h.contains("(15.7× slower)"),
            "{h}"
        );
        assert!(
            !h.contains("2026"),
            "dates belong in docs/benchmarks.md: {h}"
        );
    }

    #[test]
    fn json_round_trips_through_serde() {
        let v: serde_json::Value = serde_json::from_str(&sample().json()).unwrap();
        assert_eq!(v["meta"]["accel"], "TCG");
        assert_eq!(v["rows"][1]["axion"]["kind"], "measured");
        assert_eq!(v["rows"][1]["axion"]["median"], 2.5);
        assert_eq!(v["rows"][2]["axion"]["kind"], "na");
        assert_eq!(v["rows"][0]["peer"]["kind"], "none");
    }

    #[test]
    fn svg_has_one_bar_per_measured_boot_figure_and_escapes() {
        let s = sample().svg();
        assert!(s.starts_with("<svg"));
        // floor, axion ready, peer ready, peer docker (axion's docker figure is n/a).
        assert_eq!(s.matches("<rect x=").count(), 4, "{s}");
        assert!(s.contains("ready &lt;line&gt;"));
        assert!(!s.contains("ready <line>"));
    }
}
