//! A service's output: copied line by line to the consoles (prefixed with the service name)
//! and raw to `/var/log/NAME.log`, which is rotated to `NAME.log.1` at its size cap.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Longest partial line kept before it is flushed to the console anyway.
const MAX_LINE: usize = 4096;

pub struct LogSink {
    pub name: String,
    path: PathBuf,
    file: Option<File>,
    size: u64,
    cap: u64,
    partial: Vec<u8>,
    warned: bool,
}

impl LogSink {
    pub fn new(name: &str, dir: &Path, cap: u64) -> LogSink {
        let path = dir.join(format!("{name}.log"));
        let size = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        LogSink {
            name: name.to_string(),
            path,
            file: None,
            size,
            cap: cap.max(1),
            partial: Vec::new(),
            warned: false,
        }
    }

    /// Handles a chunk read from the pipe; `console` receives whole prefixed lines.
    pub fn feed(&mut self, data: &[u8], console: &mut dyn FnMut(&[u8])) {
        self.write_file(data);
        self.partial.extend_from_slice(data);
        while let Some(pos) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=pos).collect();
            self.emit(&line, console);
        }
        if self.partial.len() >= MAX_LINE {
            let mut line = std::mem::take(&mut self.partial);
            line.push(b'\n');
            self.emit(&line, console);
        }
    }

    /// The pipe closed: flush a last unterminated line.
    pub fn finish(&mut self, console: &mut dyn FnMut(&[u8])) {
        if !self.partial.is_empty() {
            let mut line = std::mem::take(&mut self.partial);
            line.push(b'\n');
            self.emit(&line, console);
        }
    }

    fn emit(&self, line: &[u8], console: &mut dyn FnMut(&[u8])) {
        let mut out = Vec::with_capacity(self.name.len() + 2 + line.len());
        out.extend_from_slice(self.name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(line);
        console(&out);
    }

    fn write_file(&mut self, data: &[u8]) {
        if self.size + data.len() as u64 > self.cap && self.size > 0 {
            self.file = None;
            let mut old = self.path.clone().into_os_string();
            old.push(".1");
            let _ = fs::rename(&self.path, old);
            self.size = 0;
        }
        if self.file.is_none() {
            match OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
            {
                Ok(f) => self.file = Some(f),
                Err(e) => {
                    if !self.warned {
                        crate::warn!(
                            "cannot write {}: {e}; output goes to the console only",
                            self.path.display()
                        );
                        self.warned = true;
                    }
                    return;
                }
            }
        }
        if let Some(f) = &mut self.file {
            if f.write_all(data).is_ok() {
                self.size += data.len() as u64;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("axion-log-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn prefixes_whole_lines_and_keeps_partials() {
        let d = tmpdir("lines");
        let mut sink = LogSink::new("svc", &d, 1 << 20);
        let mut out: Vec<u8> = Vec::new();
        sink.feed(b"hello\nwor", &mut |b| out.extend_from_slice(b));
        assert_eq!(out, b"svc: hello\n");
        sink.feed(b"ld\n", &mut |b| out.extend_from_slice(b));
        sink.feed(b"tail", &mut |b| out.extend_from_slice(b));
        sink.finish(&mut |b| out.extend_from_slice(b));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "svc: hello\nsvc: world\nsvc: tail\n"
        );
        assert_eq!(fs::read(d.join("svc.log")).unwrap(), b"hello\nworld\ntail");
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn rotates_at_the_cap() {
        let d = tmpdir("rotate");
        let mut sink = LogSink::new("r", &d, 10);
        let mut ignore = |_: &[u8]| {};
        sink.feed(b"0123456\n", &mut ignore);
        sink.feed(b"abcdef\n", &mut ignore);
        sink.feed(b"xyz\n", &mut ignore);
        // The first two writes each overflowed the cap: one old file is kept.
        assert_eq!(fs::read(d.join("r.log.1")).unwrap(), b"abcdef\n");
        assert_eq!(fs::read(d.join("r.log")).unwrap(), b"xyz\n");
        // A chunk larger than the cap still lands whole in a fresh file.
        sink.feed(b"0123456789\n", &mut ignore);
        assert_eq!(fs::read(d.join("r.log.1")).unwrap(), b"xyz\n");
        assert_eq!(fs::read(d.join("r.log")).unwrap(), b"0123456789\n");
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn overlong_lines_are_flushed() {
        let d = tmpdir("long");
        let mut sink = LogSink::new("l", &d, 1 << 20);
        let mut n = 0;
        sink.feed(&vec![b'x'; MAX_LINE + 10], &mut |_| n += 1);
        assert_eq!(n, 1);
        fs::remove_dir_all(&d).unwrap();
    }
}
