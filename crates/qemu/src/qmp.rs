//! A small blocking QMP client (QEMU Machine Protocol: JSON objects, one per line, on a unix
//! socket).
//!
//! [`Qmp::connect`] reads the greeting and negotiates capabilities; [`Qmp::execute`] sends a
//! command with an `id` and reads until the answer with that `id`, queueing the asynchronous
//! events that arrive meanwhile; [`Qmp::wait_event`] takes them from the queue or the socket.
//! Every read is bounded by a timeout.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::error::QmpError;

/// Default bound on one command's answer.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// An asynchronous QMP event (`SHUTDOWN`, `STOP`, `RESUME`, `POWERDOWN`, ...).
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub name: String,
    pub data: Value,
    /// `seconds.microseconds` of QEMU's clock, as sent.
    pub timestamp: Option<f64>,
}

/// The VM's run state from `query-status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// "running", "paused", "prelaunch", "inmigrate", "postmigrate", "shutdown", ...
    pub status: String,
    pub running: bool,
}

/// A connected, negotiated QMP session.
pub struct Qmp {
    stream: UnixStream,
    buf: Vec<u8>,
    events: VecDeque<Event>,
    next_id: u64,
    timeout: Duration,
    /// QEMU's version from the greeting ("7.2.22").
    pub version: String,
}

impl std::fmt::Debug for Qmp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qmp")
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl Qmp {
    /// Connects to a QMP socket, reads the greeting and sends `qmp_capabilities`.
    pub fn connect(path: &Path) -> Result<Qmp, QmpError> {
        let stream = UnixStream::connect(path).map_err(|source| QmpError::Connect {
            path: path.to_owned(),
            source,
        })?;
        Qmp::handshake(stream)
    }

    /// Like [`Qmp::connect`], retrying while the socket does not exist or refuses, until
    /// `timeout` (QEMU creates it a moment after it starts).
    pub fn connect_retry(path: &Path, timeout: Duration) -> Result<Qmp, QmpError> {
        let start = Instant::now();
        loop {
            match UnixStream::connect(path) {
                Ok(s) => return Qmp::handshake(s),
                Err(source) if start.elapsed() >= timeout => {
                    return Err(QmpError::Connect {
                        path: path.to_owned(),
                        source,
                    })
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    /// Greeting and capability negotiation on an already connected stream.
    pub fn handshake(stream: UnixStream) -> Result<Qmp, QmpError> {
        let mut q = Qmp {
            stream,
            buf: Vec::new(),
            events: VecDeque::new(),
            next_id: 1,
            timeout: DEFAULT_TIMEOUT,
            version: String::new(),
        };
        let deadline = Instant::now() + q.timeout;
        let greeting = q.read_message(deadline, q.timeout, "reading the greeting")?;
        let Some(g) = greeting.get("QMP") else {
            return Err(QmpError::Protocol {
                doing: "reading the greeting".into(),
                message: greeting.to_string(),
            });
        };
        let v = &g["version"]["qemu"];
        q.version = format!("{}.{}.{}", v["major"], v["minor"], v["micro"]);
        q.execute("qmp_capabilities", None)?;
        Ok(q)
    }

    /// Bound on each command's answer (default 30 s).
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Runs a command and returns its `return` value.
    pub fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value, QmpError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = json!({ "execute": command, "id": id });
        if let Some(args) = arguments {
            msg["arguments"] = args;
        }
        let doing = format!("running '{command}'");
        let mut line = msg.to_string();
        line.push('\n');
        self.stream
            .write_all(line.as_bytes())
            .map_err(|e| io_or_closed(e, &doing))?;
        let deadline = Instant::now() + self.timeout;
        loop {
            let m = self.read_message(deadline, self.timeout, &doing)?;
            if let Some(e) = parse_event(&m) {
                self.events.push_back(e);
                continue;
            }
            if m.get("id").and_then(Value::as_u64) != Some(id) {
                // An answer to nobody (a previous command that timed out): skip it.
                continue;
            }
            if let Some(r) = m.get("return") {
                return Ok(r.clone());
            }
            if let Some(err) = m.get("error") {
                return Err(QmpError::Command {
                    command: command.to_string(),
                    class: err["class"].as_str().unwrap_or("?").to_string(),
                    desc: err["desc"].as_str().unwrap_or("?").to_string(),
                });
            }
            return Err(QmpError::Protocol {
                doing,
                message: m.to_string(),
            });
        }
    }

    /// Waits for an event named `name` (earlier events of other names stay queued).
    pub fn wait_event(&mut self, name: &str, timeout: Duration) -> Result<Event, QmpError> {
        if let Some(pos) = self.events.iter().position(|e| e.name == name) {
            return Ok(self.events.remove(pos).expect("position is in range"));
        }
        let doing = format!("waiting for event {name}");
        let deadline = Instant::now() + timeout;
        loop {
            let m = self.read_message(deadline, timeout, &doing)?;
            if let Some(e) = parse_event(&m) {
                if e.name == name {
                    return Ok(e);
                }
                self.events.push_back(e);
            }
        }
    }

    /// Events received so far and not yet taken.
    pub fn take_events(&mut self) -> Vec<Event> {
        self.events.drain(..).collect()
    }

    /// `query-status`.
    pub fn query_status(&mut self) -> Result<Status, QmpError> {
        let r = self.execute("query-status", None)?;
        match (r["status"].as_str(), r["running"].as_bool()) {
            (Some(s), Some(running)) => Ok(Status {
                status: s.to_string(),
                running,
            }),
            _ => Err(QmpError::Protocol {
                doing: "reading query-status".into(),
                message: r.to_string(),
            }),
        }
    }

    /// Presses the ACPI power button.
    pub fn system_powerdown(&mut self) -> Result<(), QmpError> {
        self.execute("system_powerdown", None).map(drop)
    }

    /// Pauses the CPUs.
    pub fn stop(&mut self) -> Result<(), QmpError> {
        self.execute("stop", None).map(drop)
    }

    /// Resumes the CPUs.
    pub fn cont(&mut self) -> Result<(), QmpError> {
        self.execute("cont", None).map(drop)
    }

    /// Ends QEMU at once (no guest shutdown). QEMU may close the socket before or after it
    /// answers; both count as success.
    pub fn quit(&mut self) -> Result<(), QmpError> {
        match self.execute("quit", None) {
            Ok(_) | Err(QmpError::Closed { .. }) => Ok(()),
            Err(QmpError::Io { source, .. }) if is_disconnect(&source) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Starts an outgoing migration to `uri` (e.g. `exec:cat > FILE`).
    pub fn migrate(&mut self, uri: &str) -> Result<(), QmpError> {
        self.execute("migrate", Some(json!({ "uri": uri })))
            .map(drop)
    }

    /// Starts an incoming migration (QEMU started with `-incoming defer`).
    pub fn migrate_incoming(&mut self, uri: &str) -> Result<(), QmpError> {
        self.execute("migrate-incoming", Some(json!({ "uri": uri })))
            .map(drop)
    }

    /// `query-migrate`'s status ("active", "completed", "failed", ...) and error text.
    pub fn query_migrate(&mut self) -> Result<(String, Option<String>), QmpError> {
        let r = self.execute("query-migrate", None)?;
        let status = r["status"].as_str().unwrap_or("none").to_string();
        Ok((status, r["error-desc"].as_str().map(str::to_string)))
    }

    /// Reads one JSON message, waiting at most until `deadline`.
    fn read_message(
        &mut self,
        deadline: Instant,
        budget: Duration,
        doing: &str,
    ) -> Result<Value, QmpError> {
        loop {
            if let Some(nl) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=nl).collect();
                let text = String::from_utf8_lossy(&line);
                let text = text.trim();
                if text.is_empty() {
                    continue;
                }
                return serde_json::from_str(text).map_err(|e| QmpError::Protocol {
                    doing: doing.to_string(),
                    message: format!("{e}: {text}"),
                });
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(QmpError::Timeout {
                    doing: doing.to_string(),
                    after: budget,
                });
            }
            self.stream
                .set_read_timeout(Some(left))
                .map_err(|e| io_or_closed(e, doing))?;
            let mut chunk = [0u8; 8192];
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    return Err(QmpError::Closed {
                        doing: doing.to_string(),
                    })
                }
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_or_closed(e, doing)),
            }
        }
    }
}

fn parse_event(m: &Value) -> Option<Event> {
    let name = m.get("event")?.as_str()?.to_string();
    let ts = &m["timestamp"];
    let timestamp = match (ts["seconds"].as_f64(), ts["microseconds"].as_f64()) {
        (Some(s), Some(us)) => Some(s + us / 1e6),
        _ => None,
    };
    Some(Event {
        name,
        data: m.get("data").cloned().unwrap_or(Value::Null),
        timestamp,
    })
}

fn is_disconnect(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::BrokenPipe
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::UnexpectedEof
    )
}

fn io_or_closed(e: std::io::Error, doing: &str) -> QmpError {
    if is_disconnect(&e) {
        QmpError::Closed {
            doing: doing.to_string(),
        }
    } else {
        QmpError::Io {
            doing: doing.to_string(),
            source: e,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::os::unix::net::UnixListener;

    const GREETING: &str = concat!(
        r#"{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "#,
        r#""package": "Debian"}, "capabilities": ["oob"]}}"#
    );

    /// A fake QEMU: sends the greeting, then answers each request line with what `script`
    /// returns for it (several lines allowed, so events can be interleaved). Returns the
    /// requests it saw.
    fn fake_server(
        script: impl Fn(&Value) -> Vec<String> + Send + 'static,
    ) -> (
        tempfile::TempDir,
        std::path::PathBuf,
        std::thread::JoinHandle<Vec<Value>>,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let handle = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            writeln!(s, "{GREETING}").unwrap();
            let mut seen = Vec::new();
            let reader = BufReader::new(s.try_clone().unwrap());
            for line in reader.lines() {
                let Ok(line) = line else { break };
                let req: Value = serde_json::from_str(&line).unwrap();
                let answers = script(&req);
                seen.push(req);
                if answers.is_empty() {
                    break; // hang up
                }
                for a in answers {
                    if s.write_all(format!("{a}\r\n").as_bytes()).is_err() {
                        break;
                    }
                }
            }
            seen
        });
        (dir, path, handle)
    }

    fn ok(req: &Value, ret: &str) -> String {
        format!(r#"{{"return": {ret}, "id": {}}}"#, req["id"])
    }

    #[test]
    fn handshake_execute_events_and_errors() {
        let (_dir, path, server) = fake_server(|req| match req["execute"].as_str().unwrap() {
            "qmp_capabilities" => vec![ok(req, "{}")],
            "query-status" => vec![
                concat!(
                    r#"{"timestamp": {"seconds": 1700000000, "microseconds": 500000}, "#,
                    r#""event": "RESUME"}"#
                )
                .into(),
                ok(
                    req,
                    r#"{"status": "running", "singlestep": false, "running": true}"#,
                ),
            ],
            "system_powerdown" => vec![
                ok(req, "{}"),
                r#"{"event": "POWERDOWN", "timestamp": {"seconds": 1, "microseconds": 0}}"#.into(),
            ],
            "nope" => vec![format!(
                concat!(
                    r#"{{"id": {}, "error": {{"class": "CommandNotFound", "#,
                    r#""desc": "The command nope has not been found"}}}}"#
                ),
                req["id"]
            )],
            _ => vec![],
        });
        let mut q = Qmp::connect(&path).unwrap();
        assert_eq!(q.version, "7.2.22");
        let st = q.query_status().unwrap();
        assert_eq!(
            st,
            Status {
                status: "running".into(),
                running: true
            }
        );
        q.system_powerdown().unwrap();
        let e = q.wait_event("POWERDOWN", Duration::from_secs(5)).unwrap();
        assert_eq!(e.timestamp, Some(1.0));
        // The event that came before the answer was queued, not lost.
        let queued = q.take_events();
        assert_eq!(queued.len(), 1);
        assert_eq!(queued[0].name, "RESUME");
        assert_eq!(queued[0].timestamp, Some(1_700_000_000.5));
        let err = q.execute("nope", None).unwrap_err();
        assert!(
            matches!(&err, QmpError::Command { class, .. } if class == "CommandNotFound"),
            "{err}"
        );
        assert!(
            err.to_string().contains("'nope'") && err.to_string().contains("has not been found"),
            "{err}"
        );
        drop(q);
        let seen = server.join().unwrap();
        let cmds: Vec<&str> = seen
            .iter()
            .map(|r| r["execute"].as_str().unwrap())
            .collect();
        assert_eq!(
            cmds,
            [
                "qmp_capabilities",
                "query-status",
                "system_powerdown",
                "nope"
            ]
        );
        // Every request carried a distinct id.
        let ids: Vec<u64> = seen.iter().map(|r| r["id"].as_u64().unwrap()).collect();
        assert_eq!(ids, [1, 2, 3, 4]);
    }

    #[test]
    fn arguments_are_sent_and_stale_answers_skipped() {
        let (_dir, path, server) = fake_server(|req| match req["execute"].as_str().unwrap() {
            "migrate" => vec![r#"{"return": {}, "id": 999}"#.into(), ok(req, "{}")],
            _ => vec![ok(req, "{}")],
        });
        let mut q = Qmp::connect(&path).unwrap();
        q.migrate("exec:cat > /tmp/x").unwrap();
        drop(q);
        let seen = server.join().unwrap();
        assert_eq!(seen[1]["arguments"]["uri"], "exec:cat > /tmp/x");
    }

    #[test]
    fn quit_accepts_hangup_but_other_commands_report_it() {
        let (_dir, path, _server) = fake_server(|req| match req["execute"].as_str().unwrap() {
            "qmp_capabilities" => vec![ok(req, "{}")],
            _ => vec![],
        });
        let mut q = Qmp::connect(&path).unwrap();
        q.quit().unwrap();
        let (_dir2, path2, _server2) = fake_server(|req| match req["execute"].as_str().unwrap() {
            "qmp_capabilities" => vec![ok(req, "{}")],
            _ => vec![],
        });
        let mut q = Qmp::connect(&path2).unwrap();
        let e = q.query_status().unwrap_err();
        assert!(matches!(e, QmpError::Closed { .. }), "{e}");
    }

    #[test]
    fn silence_times_out() {
        let (_dir, path, _server) = fake_server(|req| match req["execute"].as_str().unwrap() {
            "qmp_capabilities" => vec![ok(req, "{}")],
            _ => vec![" ".into()], // whitespace only, never an answer
        });
        let mut q = Qmp::connect(&path).unwrap();
        q.set_timeout(Duration::from_millis(300));
        let start = Instant::now();
        let e = q.query_status().unwrap_err();
        assert!(matches!(e, QmpError::Timeout { .. }), "{e}");
        assert!(
            start.elapsed() >= Duration::from_millis(300)
                && start.elapsed() < Duration::from_secs(5)
        );
        let e = q
            .wait_event("SHUTDOWN", Duration::from_millis(100))
            .unwrap_err();
        assert!(e.to_string().contains("SHUTDOWN"), "{e}");
    }

    #[test]
    fn garbage_greeting_is_a_protocol_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let listener = UnixListener::bind(&path).unwrap();
        let t = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            writeln!(s, r#"{{"hello": 1}}"#).unwrap();
            std::thread::sleep(Duration::from_millis(200));
        });
        let e = Qmp::connect(&path).unwrap_err();
        assert!(
            matches!(e, QmpError::Protocol { .. }) && e.to_string().contains("hello"),
            "{e}"
        );
        t.join().unwrap();
    }
}
