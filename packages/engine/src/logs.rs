//! Per-container logs in Docker's json-file format: one JSON object per chunk of output,
//! `{"log": "...", "stream": "stdout"|"stderr", "time": RFC3339}`.

use bytes::Bytes;
use docker_api::{Frame, StdStream};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
pub struct Line {
    pub log: String,
    pub stream: String,
    pub time: String,
}

/// A chunk of output as log entries: one per line (as dockerd's json-file writes them, so
/// that `tail` counts lines); a last part without its newline is an entry of its own.
pub fn encode(f: &Frame, time: &str) -> Vec<u8> {
    let stream = if f.stream == StdStream::Stderr {
        "stderr"
    } else {
        "stdout"
    };
    let mut v = Vec::new();
    for part in f.data.split_inclusive(|b| *b == b'\n') {
        v.extend(
            serde_json::to_vec(&Line {
                log: String::from_utf8_lossy(part).into_owned(),
                stream: stream.into(),
                time: time.into(),
            })
            .unwrap_or_default(),
        );
        v.push(b'\n');
    }
    v
}

/// The time of a log entry (`2026-01-01T00:00:00.123456789Z`) in nanoseconds.
pub fn entry_time(t: &str) -> i128 {
    let secs = docker_api::time::unix_from_rfc3339(t) as i128;
    let frac = t
        .split_once('.')
        .map(|(_, f)| f.trim_end_matches('Z'))
        .filter(|f| !f.is_empty() && f.len() <= 9 && f.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|f| format!("{f:0<9}").parse::<i128>().ok())
        .unwrap_or(0);
    secs * 1_000_000_000 + frac
}

/// The time of a stored line (None when it does not parse).
pub fn line_time(line: &str) -> Option<i128> {
    let l: Line = serde_json::from_str(line).ok()?;
    Some(entry_time(&l.time))
}

/// Parses log lines into frames, honouring stream selection and timestamps.
pub fn decode_line(line: &str, stdout: bool, stderr: bool, timestamps: bool) -> Option<Frame> {
    let l: Line = serde_json::from_str(line).ok()?;
    let stream = if l.stream == "stderr" {
        StdStream::Stderr
    } else {
        StdStream::Stdout
    };
    if (stream == StdStream::Stdout && !stdout) || (stream == StdStream::Stderr && !stderr) {
        return None;
    }
    let data = if timestamps {
        format!("{} {}", l.time, l.log)
    } else {
        l.log
    };
    Some(Frame {
        stream,
        data: Bytes::from(data),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn one_entry_per_line_and_times() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("log");
        let at = docker_api::time::rfc3339(docker_api::time::now_nanos());
        std::fs::write(&p, encode(&Frame::stdout("a\nb\nc"), &at)).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        let logs: Vec<String> = text
            .lines()
            .map(|l| serde_json::from_str::<Line>(l).unwrap().log)
            .collect();
        assert_eq!(logs, ["a\n", "b\n", "c"]);
        assert_eq!(
            entry_time("2023-11-14T22:13:20.5Z"),
            1_700_000_000_500_000_000
        );
        assert!(line_time(text.lines().next().unwrap()).unwrap() > 0);
    }

    #[test]
    fn round_trip() {
        let line = encode(&Frame::stderr("oops\n"), "2026-01-01T00:00:00.000000000Z");
        let s = std::str::from_utf8(&line).unwrap().trim_end();
        assert_eq!(
            decode_line(s, true, true, false).unwrap(),
            Frame::stderr("oops\n")
        );
        assert!(decode_line(s, true, false, false).is_none());
        let t = decode_line(s, true, true, true).unwrap();
        assert_eq!(&t.data[..], b"2026-01-01T00:00:00.000000000Z oops\n");
    }
}
