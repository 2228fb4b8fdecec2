//! The boot trace: one CLOCK_BOOTTIME timestamp per boot step, in the order they happened.
//!
//! Steps are marked with [`mark`] as boot goes (a process-wide list: PID 1 is single-threaded
//! and `data`, `net` and the supervisor mark their own steps). At the ready line init writes
//! the list to [`PATH`] (temp + rename) and, with `axion.debug`, prints it on the consoles, one
//! `axion: trace  SECONDS  STEP` line per step. Steps after the ready line (a service that
//! becomes ready late, a DHCP lease after the wait) are added to the file as they come.
//!
//! The file (version 1), times in seconds since boot with microseconds:
//!
//! ```json
//! {"version":1,"clock":"boottime","steps":[
//!  {"step":"kernel","at":0.412000},
//!  {"step":"mounts","at":0.431200},
//!  {"step":"service docker ready","at":1.802000},
//!  {"step":"ready","at":1.803000}
//! ]}
//! ```
//!
//! Step names: `kernel` (init's first instruction: the kernel's clock at the handover),
//! `rootswitch` (on the bind of the initramfs), `mounts`, `settings`, `hostname`,
//! `cgroups`, `fsck`, `data`, `identity`, `write-files`, `network link`, `dhcp lease`,
//! `service NAME start`, `service NAME CHECK` (each of several `ready` checks as it first
//! answers, e.g. `service docker tcp:2376`), `service NAME ready`, `service NAME not ready`
//! and `ready`.

use std::sync::Mutex;
use std::time::Duration;

pub const PATH: &str = "/run/axion/boot-trace.json";
/// Carries the first init's start time over the re-exec after the root switch.
pub const T0_ENV: &str = "AXION_INIT_T0";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub name: String,
    pub at: Duration,
}

static STEPS: Mutex<Vec<Step>> = Mutex::new(Vec::new());

/// Records `name` at the current CLOCK_BOOTTIME.
pub fn mark(name: &str) {
    mark_at(name, crate::sys::boottime());
}

pub fn mark_at(name: &str, at: Duration) {
    if let Ok(mut s) = STEPS.lock() {
        s.push(Step {
            name: name.to_string(),
            at,
        });
    }
}

pub fn steps() -> Vec<Step> {
    STEPS.lock().map(|s| s.clone()).unwrap_or_default()
}

/// Marks `kernel`, the handover: the first init's start, carried in [`T0_ENV`] over the
/// re-exec after the root switch; now when there is none. Leaves the time in the
/// environment for that re-exec; [`end_handover`] removes it.
pub fn begin() {
    let inherited = std::env::var(T0_ENV)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_nanos);
    let t0 = inherited.unwrap_or_else(crate::sys::boottime);
    // Single-threaded: nothing reads the environment concurrently.
    std::env::set_var(T0_ENV, t0.as_nanos().to_string());
    mark_at("kernel", t0);
}

/// After the root switch: services must not inherit [`T0_ENV`].
pub fn end_handover() {
    std::env::remove_var(T0_ENV);
}

fn json_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// The trace file's text (see the module doc).
pub fn to_json(steps: &[Step]) -> String {
    let mut out = String::from("{\"version\":1,\"clock\":\"boottime\",\"steps\":[");
    for (i, s) in steps.iter().enumerate() {
        out.push_str(if i == 0 {
            "\n {\"step\":"
        } else {
            ",\n {\"step\":"
        });
        json_string(&s.name, &mut out);
        out.push_str(&format!(
            ",\"at\":{}.{:06}}}",
            s.at.as_secs(),
            s.at.subsec_micros()
        ));
    }
    out.push_str("\n]}\n");
    out
}

/// The console lines: time since boot and the gap since the previous step.
pub fn lines(steps: &[Step]) -> Vec<String> {
    let mut prev = Duration::ZERO;
    steps
        .iter()
        .map(|s| {
            let gap = s.at.saturating_sub(prev);
            prev = s.at;
            format!(
                "axion: trace {:>3}.{:03} s (+{}.{:03}) {}",
                s.at.as_secs(),
                s.at.subsec_millis(),
                gap.as_secs(),
                gap.subsec_millis(),
                s.name
            )
        })
        .collect()
}

/// Writes the trace to `path` through a temporary file and a rename, so a reader never sees
/// half of it.
pub fn write(path: &std::path::Path, steps: &[Step]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, to_json(steps))?;
    std::fs::rename(&tmp, path)
}

/// Writes the current trace to [`PATH`]; an error is logged, never fatal.
pub fn save() {
    if let Err(e) = write(std::path::Path::new(PATH), &steps()) {
        crate::warn!("write {PATH}: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(name: &str, ms: u64) -> Step {
        Step {
            name: name.into(),
            at: Duration::from_micros(ms * 1000 + 7),
        }
    }

    #[test]
    fn json_is_valid_and_keeps_order_names_and_microseconds() {
        let steps = vec![
            step("kernel", 412),
            step("service \"odd\\name\"\n ready", 1802),
            step("ready", 12_003),
        ];
        let text = to_json(&steps);
        let v: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
        assert_eq!(v["version"], 1);
        assert_eq!(v["clock"], "boottime");
        let got: Vec<(String, f64)> = v["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["step"].as_str().unwrap().to_string(),
                    s["at"].as_f64().unwrap(),
                )
            })
            .collect();
        assert_eq!(got.len(), 3);
        assert_eq!(got[1].0, "service \"odd\\name\"\n ready");
        assert_eq!(got[0].0, "kernel");
        assert!((got[0].1 - 0.412007).abs() < 1e-9, "{}", got[0].1);
        assert!((got[2].1 - 12.003007).abs() < 1e-9, "{}", got[2].1);
        assert!(text.contains("\"at\":0.412007}"), "{text}");
    }

    #[test]
    fn empty_trace_is_valid_json() {
        let v: serde_json::Value = serde_json::from_str(&to_json(&[])).unwrap();
        assert_eq!(v["steps"].as_array().unwrap().len(), 0);
    }

    #[test]
    fn console_lines_show_time_and_gap() {
        let l = lines(&[step("kernel", 412), step("mounts", 1450)]);
        assert_eq!(l[0], "axion: trace   0.412 s (+0.412) kernel");
        assert_eq!(l[1], "axion: trace   1.450 s (+1.038) mounts");
    }

    #[test]
    fn write_replaces_the_file_whole() {
        let dir = std::env::temp_dir().join(format!("axion-trace-test-{}", std::process::id()));
        let path = dir.join("sub/boot-trace.json");
        write(&path, &[step("kernel", 1)]).unwrap();
        write(&path, &[step("kernel", 1), step("ready", 2)]).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, to_json(&[step("kernel", 1), step("ready", 2)]));
        assert!(!path.with_extension("json.tmp").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
