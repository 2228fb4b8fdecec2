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

pub fn encode(f: &Frame, time: &str) -> Vec<u8> {
    let stream = if f.stream == StdStream::Stderr {
        "stderr"
    } else {
        "stdout"
    };
    let mut v = serde_json::to_vec(&Line {
        log: String::from_utf8_lossy(&f.data).into_owned(),
        stream: stream.into(),
        time: time.into(),
    })
    .unwrap_or_default();
    v.push(b'\n');
    v
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
