//! The boot waterfall: init's boot trace (`/run/axion/boot-trace.json`, packages/init's
//! `trace` module) as an SVG, one row per step, its bar from the step before it to the step
//! (or from the step's own `from`, the peer's units that took time to start: [`super::analyze`]).
//! Several boots are drawn as panels one above the other on one time scale ([`panels`]), so
//! axion's and the Debian peer's boots compare at a glance.
//!
//! The label column is as wide as the longest label needs (at [`CHAR_W`] per character, a
//! generous estimate for a 12 px sans-serif font), so no label runs into the bars; a label
//! longer than [`MAX_LABEL`] characters is shortened with an ellipsis.

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use super::report::xml;

/// One step of the trace: its name and the guest's CLOCK_BOOTTIME (s) when it was reached.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
pub struct Step {
    pub step: String,
    pub at: f64,
    /// When the step began, where that is known and not simply the previous step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<f64>,
}

#[derive(Deserialize)]
struct TraceFile {
    version: u32,
    steps: Vec<Step>,
}

/// Parses the trace file (version 1); steps stay in the file's order.
pub fn parse(json: &str) -> Result<Vec<Step>> {
    let t: TraceFile = serde_json::from_str(json).context("the boot trace is not its JSON")?;
    if t.version != 1 {
        bail!(
            "boot trace version {} (this bench reads version 1)",
            t.version
        );
    }
    if let Some(s) = t.steps.iter().find(|s| !s.at.is_finite() || s.at < 0.0) {
        bail!("boot trace step {:?} has no usable time ({})", s.step, s.at);
    }
    Ok(t.steps)
}

const CHAR_W: f64 = 7.5;
const MAX_LABEL: usize = 44;
const BAR_W: f64 = 560.0;
const ROW_H: f64 = 20.0;
const TOP: f64 = 44.0;

fn label(s: &str) -> String {
    if s.chars().count() <= MAX_LABEL {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(MAX_LABEL - 1).collect();
        t.push('…');
        t
    }
}

/// The waterfall of `steps`, titled `title`. The time axis starts at 0 (the guest's boot) so
/// the kernel's share shows; each bar spans from the previous step to this one.
pub fn svg(title: &str, steps: &[Step]) -> String {
    panels(title, &[(String::new(), steps.to_vec())])
}

/// Several waterfalls under one title, each panel headed by its name, all on the time scale
/// of the longest one.
pub fn panels(title: &str, panels: &[(String, Vec<Step>)]) -> String {
    let labels: Vec<Vec<String>> = panels
        .iter()
        .map(|(_, steps)| steps.iter().map(|s| label(&s.step)).collect())
        .collect();
    let longest = labels.iter().flatten().map(|l| l.chars().count()).max();
    let label_w = (longest.unwrap_or(0) as f64 * CHAR_W + 16.0).max(120.0);
    let end = panels
        .iter()
        .flat_map(|(_, steps)| steps.iter().map(|s| s.at))
        .fold(0.0_f64, f64::max);
    let scale = if end > 0.0 { BAR_W / end } else { 0.0 };
    // A grid line every second, or every 5 or 10 s on a long axis.
    let tick = if end > 60.0 {
        10.0
    } else if end > 20.0 {
        5.0
    } else {
        1.0
    };
    let width = label_w + BAR_W + 110.0;
    let heads = panels.iter().filter(|(name, _)| !name.is_empty()).count();
    let rows: usize = panels.iter().map(|(_, s)| s.len()).sum();
    let panel_gap = 40.0;
    let height = TOP
        + ROW_H * (rows + heads) as f64
        + panel_gap * (panels.len() as f64 - 1.0).max(0.0)
        + 40.0;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width:.0}\" height=\"{height:.0}\" \
         font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"10\" y=\"22\" font-size=\"14\" font-weight=\"bold\">{}</text>\n",
        xml(title)
    );
    let mut top = TOP;
    for ((name, steps), labels) in panels.iter().zip(&labels) {
        if !name.is_empty() {
            s.push_str(&format!(
                "<text x=\"10\" y=\"{:.0}\" font-weight=\"bold\">{}</text>\n",
                top + 14.0,
                xml(name)
            ));
            top += ROW_H;
        }
        let axis_y = top + ROW_H * steps.len() as f64 + 4.0;
        let mut sec = 0.0_f64;
        while sec <= end + 1e-9 {
            let x = label_w + sec * scale;
            s.push_str(&format!(
                "<line x1=\"{x:.1}\" y1=\"{:.0}\" x2=\"{x:.1}\" y2=\"{axis_y:.0}\" \
                 stroke=\"#dddddd\"/>\n<text x=\"{x:.1}\" y=\"{:.0}\" text-anchor=\"middle\" \
                 fill=\"#666666\">{sec:.0} s</text>\n",
                top - 4.0,
                axis_y + 14.0
            ));
            sec += tick;
        }
        let mut prev = 0.0_f64;
        for (i, (step, name)) in steps.iter().zip(labels).enumerate() {
            let y = top + ROW_H * i as f64;
            let from = step.from.unwrap_or(prev).min(step.at);
            let x = label_w + from * scale;
            let w = ((step.at - from) * scale).max(1.0);
            let color = if step.step == "kernel" {
                "#999999"
            } else if step.step.starts_with("service ") || step.step.ends_with(".service") {
                "#2a7ab0"
            } else {
                "#5a9e4b"
            };
            s.push_str(&format!(
                "<text x=\"{:.0}\" y=\"{:.0}\" text-anchor=\"end\">{}</text>\n\
                 <rect x=\"{x:.1}\" y=\"{:.0}\" width=\"{w:.1}\" height=\"{:.0}\" \
                 fill=\"{color}\"/>\n\
                 <text x=\"{:.1}\" y=\"{:.0}\">{:.3} s (+{:.3})</text>\n",
                label_w - 8.0,
                y + 14.0,
                xml(name),
                y + 3.0,
                ROW_H - 6.0,
                x + w + 6.0,
                y + 14.0,
                step.at,
                step.at - from
            ));
            prev = prev.max(step.at);
        }
        top = axis_y + panel_gap;
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACE: &str = r#"{"version":1,"clock":"boottime","steps":[
 {"step":"kernel","at":0.412000},
 {"step":"mounts","at":0.431200},
 {"step":"service docker unix & <more>","at":1.700000},
 {"step":"service docker ready","at":1.802000},
 {"step":"ready","at":1.803000}
]}"#;

    #[test]
    fn the_trace_file_parses_in_order() {
        let steps = parse(TRACE).unwrap();
        assert_eq!(steps.len(), 5);
        assert_eq!(
            steps[0],
            Step {
                step: "kernel".into(),
                at: 0.412,
                from: None,
            }
        );
        assert_eq!(steps[4].step, "ready");
    }

    #[test]
    fn other_versions_and_bad_times_are_refused() {
        assert!(parse(r#"{"version":2,"steps":[]}"#).is_err());
        assert!(parse(r#"{"version":1,"steps":[{"step":"x","at":-1}]}"#).is_err());
        assert!(parse("not json").is_err());
    }

    #[test]
    fn one_bar_per_step_labels_escaped_and_clear_of_the_bars() {
        let steps = parse(TRACE).unwrap();
        let s = svg("axion <boot>", &steps);
        assert!(s.starts_with("<svg"));
        assert!(s.trim_end().ends_with("</svg>"));
        assert_eq!(s.matches("<rect x=").count(), steps.len());
        assert!(s.contains("axion &lt;boot&gt;"));
        assert!(s.contains("&amp; &lt;more&gt;"));
        // Every label ends (text-anchor end) left of where every bar starts.
        let label_x: Vec<f64> = s
            .lines()
            .filter(|l| l.contains("text-anchor=\"end\""))
            .map(|l| attr(l, "x"))
            .collect();
        let bar_x: Vec<f64> = s
            .lines()
            .filter(|l| l.starts_with("<rect x="))
            .map(|l| attr(l, "x"))
            .collect();
        let longest = steps.iter().map(|s| s.step.chars().count()).max().unwrap();
        let min_bar = bar_x.iter().cloned().fold(f64::MAX, f64::min);
        for x in label_x {
            assert!(x >= longest as f64 * CHAR_W, "label column too narrow: {x}");
            assert!(x < min_bar, "a label at {x} overlaps a bar at {min_bar}");
        }
    }

    #[test]
    fn long_labels_are_shortened() {
        let long = "service a-very-long-service-name-that-goes-on tcp:12345 and more";
        let l = label(long);
        assert_eq!(l.chars().count(), MAX_LABEL);
        assert!(l.ends_with('…'));
        assert_eq!(label("ready"), "ready");
    }

    #[test]
    fn panels_share_one_time_scale_and_bars_start_at_from() {
        let axion = parse(TRACE).unwrap();
        let peer = vec![
            Step {
                step: "kernel".into(),
                at: 3.0,
                from: None,
            },
            Step {
                step: "docker.service".into(),
                at: 18.0,
                from: Some(9.0),
            },
        ];
        let s = panels(
            "two",
            &[("axion".into(), axion.clone()), ("peer".into(), peer)],
        );
        assert!(s.contains(">axion</text>") && s.contains(">peer</text>"));
        let bars: Vec<(f64, f64)> = s
            .lines()
            .filter(|l| l.starts_with("<rect x="))
            .map(|l| (attr(l, "x"), attr(l, "width")))
            .collect();
        assert_eq!(bars.len(), axion.len() + 2);
        let origin = bars[0].0;
        // 18 s spans the whole bar width: the peer's last bar ends there, from 9 s.
        let (x, w) = bars[bars.len() - 1];
        assert!((x - origin - BAR_W / 2.0).abs() < 0.2, "{x} {origin}");
        assert!((x + w - origin - BAR_W).abs() < 0.2);
        // axion's ready at 1.803 s is a tenth of the way on that shared scale.
        let (x, w) = bars[axion.len() - 1];
        assert!((x + w - origin - BAR_W * 1.803 / 18.0).abs() < 1.1);
        // Grid lines every 1 s up to 18 s, per panel.
        assert_eq!(s.matches(">18 s</text>").count(), 2);
    }

    fn attr(line: &str, name: &str) -> f64 {
        let key = format!(" {name}=\"");
        let start = line.find(&key).unwrap() + key.len();
        let end = start + line[start..].find('"').unwrap();
        line[start..end].parse().unwrap()
    }
}
