//! Services: small TOML files in `/etc/axion/services/`, one per service, named after the
//! file (`docker.toml` is the service `docker`).
//!
//! ```toml
//! # /etc/axion/services/docker.toml
//! command = "/usr/bin/engine"              # required, absolute path
//! args = ["-H", "unix:///run/docker.sock"] # default: none
//! environment = { RUST_LOG = "info" }      # added to PATH, HOME, TERM; default: none
//! after = ["network"]                      # "network" and/or other service names; default: none
//! restart = "always"                       # always (default) | on-failure | never
//! working-directory = "/"                  # default "/"
//! stop-timeout = 10                        # seconds from SIGTERM to SIGKILL; default 10
//! log-max-bytes = 1048576                  # /var/log/NAME.log cap (one rotation); default 1 MiB
//! ready = ["unix:/run/docker.sock", "tcp:2376"] # when it is ready; default: none
//! ready-timeout = 60                       # seconds the ready line waits for it; default 60
//! ```
//!
//! Unknown keys are errors (the file is skipped and the error shown on the console).
//!
//! Order: services start in dependency order (`after`), ties by name. `after = ["x"]` means
//! "once x has been started", not "once x is ready".
//!
//! Readiness: a service with `ready` is required for init's ready line. Each entry is
//! `unix:/ABSOLUTE/PATH` (a stream socket accepts a connection) or `tcp:PORT` (127.0.0.1:PORT
//! accepts a connection); the service is ready once every entry has answered once, which
//! init checks every [`supervisor::PROBE_INTERVAL`] while the service runs (a connect, no
//! protocol: the kernel queues a client's connection from `listen(2)` on, so the client's
//! first call succeeds). After `ready-timeout` seconds from its first start init gives up
//! on it with an `axion: not ready: ...` line and prints the ready line without it.
//! `after = ["network"]` means: the static address is configured, or DHCP got a lease, or
//! the bounded DHCP wait (3 s) ran out. Unknown dependencies and cycles are reported and
//! ignored, so every service still starts.
//!
//! Each service runs in its own session and process group with stdin on /dev/null and
//! stdout/stderr on a pipe that init copies, line by line prefixed with the service name, to
//! the consoles and, raw, to `/var/log/NAME.log` (cap `log-max-bytes`, then renamed to
//! `NAME.log.1`, replacing the previous one). A service that exits is restarted per its
//! policy after a backoff of 0.25 s doubling to at most 30 s; the backoff resets once a
//! run lasted 10 s.

pub mod output;
pub mod spawn;
pub mod supervisor;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

pub const SERVICE_DIR: &str = "/etc/axion/services";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Restart {
    Always,
    OnFailure,
    Never,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct ServiceFile {
    command: String,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    environment: BTreeMap<String, String>,
    #[serde(default)]
    after: Vec<String>,
    #[serde(default)]
    restart: Option<Restart>,
    #[serde(default)]
    working_directory: Option<String>,
    #[serde(default)]
    stop_timeout: Option<u64>,
    #[serde(default)]
    log_max_bytes: Option<u64>,
    #[serde(default)]
    ready: Vec<String>,
    #[serde(default)]
    ready_timeout: Option<u64>,
}

/// One readiness check (see the module doc).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadyCheck {
    Unix(std::path::PathBuf),
    Tcp(u16),
}

impl ReadyCheck {
    pub fn parse(s: &str) -> Result<ReadyCheck, String> {
        if let Some(p) = s.strip_prefix("unix:") {
            if p.starts_with('/') {
                return Ok(ReadyCheck::Unix(p.into()));
            }
        } else if let Some(port) = s.strip_prefix("tcp:") {
            if let Ok(n @ 1..) = port.parse::<u16>() {
                return Ok(ReadyCheck::Tcp(n));
            }
        }
        Err(format!(
            "ready {s:?}: use \"unix:/absolute/path\" or \"tcp:PORT\" (1-65535)"
        ))
    }
}

impl std::fmt::Display for ReadyCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadyCheck::Unix(p) => write!(f, "unix:{}", p.display()),
            ReadyCheck::Tcp(n) => write!(f, "tcp:{n}"),
        }
    }
}

/// A service as init runs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub name: String,
    pub command: String,
    pub args: Vec<String>,
    pub environment: BTreeMap<String, String>,
    pub after: Vec<String>,
    pub restart: Restart,
    pub working_directory: String,
    pub stop_timeout: Duration,
    pub log_max_bytes: u64,
    /// What must answer before the service counts as ready (empty: not waited for).
    pub ready: Vec<ReadyCheck>,
    pub ready_timeout: Duration,
    /// Run on this terminal (stdio + controlling tty) instead of a log pipe. Internal: the
    /// debug shell.
    pub tty: Option<String>,
}

pub const NETWORK: &str = "network";

pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name != NETWORK
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && !name.starts_with('.')
}

/// Parses one service file's text.
pub fn parse_service(name: &str, text: &str) -> Result<Service, String> {
    if !valid_name(name) {
        return Err(format!(
            "service name {name:?}: use letters, digits, '-', '_', '.' (and not \"network\")"
        ));
    }
    let f: ServiceFile = toml::from_str(text).map_err(|e| e.to_string().trim_end().to_string())?;
    if !f.command.starts_with('/') {
        return Err(format!("command {:?}: must be an absolute path", f.command));
    }
    let ready = f
        .ready
        .iter()
        .map(|r| ReadyCheck::parse(r))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Service {
        name: name.to_string(),
        command: f.command,
        args: f.args,
        environment: f.environment,
        after: f.after,
        restart: f.restart.unwrap_or(Restart::Always),
        working_directory: f.working_directory.unwrap_or_else(|| "/".into()),
        stop_timeout: Duration::from_secs(f.stop_timeout.unwrap_or(10)),
        log_max_bytes: f.log_max_bytes.unwrap_or(1 << 20),
        ready,
        ready_timeout: Duration::from_secs(f.ready_timeout.unwrap_or(60)),
        tty: None,
    })
}

/// Loads every `*.toml` in `dir`; bad files are reported in the error list and skipped.
pub fn load_dir(dir: &Path) -> (Vec<Service>, Vec<String>) {
    let mut services = Vec::new();
    let mut errors = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (services, errors),
        Err(e) => {
            errors.push(format!("{}: {e}", dir.display()));
            return (services, errors);
        }
    };
    let mut paths: Vec<_> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    paths.sort();
    for p in paths {
        let name = p
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        match std::fs::read_to_string(&p)
            .map_err(|e| e.to_string())
            .and_then(|t| parse_service(&name, &t))
        {
            Ok(s) => services.push(s),
            Err(e) => errors.push(format!("{}: {e} (service skipped)", p.display())),
        }
    }
    (services, errors)
}

/// Orders services so each comes after its dependencies (stable: by name otherwise). Unknown
/// dependencies and cycle edges are dropped with a message, so every service is kept.
pub fn order(mut services: Vec<Service>) -> (Vec<Service>, Vec<String>) {
    let mut msgs = Vec::new();
    services.sort_by(|a, b| a.name.cmp(&b.name));
    let names: Vec<String> = services.iter().map(|s| s.name.clone()).collect();
    for s in &mut services {
        let name = s.name.clone();
        s.after.retain(|d| {
            let ok = d == NETWORK || (names.contains(d) && *d != name);
            if !ok {
                msgs.push(format!("service {name}: unknown dependency {d:?} ignored"));
            }
            ok
        });
    }
    let mut out: Vec<Service> = Vec::with_capacity(services.len());
    let mut rest = services;
    while !rest.is_empty() {
        let placed =
            |d: &String, out: &Vec<Service>| d == NETWORK || out.iter().any(|o| &o.name == d);
        if let Some(i) = rest
            .iter()
            .position(|s| s.after.iter().all(|d| placed(d, &out)))
        {
            out.push(rest.remove(i));
        } else {
            // A cycle: break it at the first remaining service (by name).
            let mut s = rest.remove(0);
            let names_left: Vec<String> = rest.iter().map(|r| r.name.clone()).collect();
            s.after.retain(|d| {
                let cyc = names_left.contains(d);
                if cyc {
                    msgs.push(format!(
                        "service {}: dependency cycle through {d:?}; ignoring that edge",
                        s.name
                    ));
                }
                !cyc
            });
            out.push(s);
        }
    }
    (out, msgs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(name: &str, after: &[&str]) -> Service {
        let mut s = parse_service(name, "command = \"/bin/true\"").unwrap();
        s.after = after.iter().map(|s| s.to_string()).collect();
        s
    }

    #[test]
    fn parses_full_example() {
        let s = parse_service(
            "engine",
            r#"
command = "/usr/bin/axion-engine"
args = ["--host", "unix:///run/docker.sock"]
environment = { RUST_LOG = "info" }
after = ["network"]
restart = "on-failure"
working-directory = "/var/lib"
stop-timeout = 3
log-max-bytes = 4096
ready = ["unix:/run/docker.sock", "tcp:2376"]
ready-timeout = 5
"#,
        )
        .unwrap();
        assert_eq!(s.command, "/usr/bin/axion-engine");
        assert_eq!(s.args, vec!["--host", "unix:///run/docker.sock"]);
        assert_eq!(
            s.environment.get("RUST_LOG").map(String::as_str),
            Some("info")
        );
        assert_eq!(s.after, vec!["network"]);
        assert_eq!(s.restart, Restart::OnFailure);
        assert_eq!(s.working_directory, "/var/lib");
        assert_eq!(s.stop_timeout, Duration::from_secs(3));
        assert_eq!(s.log_max_bytes, 4096);
        assert_eq!(
            s.ready,
            vec![
                ReadyCheck::Unix("/run/docker.sock".into()),
                ReadyCheck::Tcp(2376)
            ]
        );
        assert_eq!(s.ready_timeout, Duration::from_secs(5));
        assert_eq!(s.ready[1].to_string(), "tcp:2376");
    }

    #[test]
    fn rejects_bad_ready_checks() {
        for bad in [
            "unix:run/x",
            "tcp:0",
            "tcp:70000",
            "tcp:",
            "http://x",
            "unix",
        ] {
            let e =
                parse_service("x", &format!("command = \"/x\"\nready = [\"{bad}\"]")).unwrap_err();
            assert!(e.contains("ready"), "{bad}: {e}");
        }
    }

    #[test]
    fn defaults() {
        let s = parse_service("x", "command = \"/bin/x\"").unwrap();
        assert_eq!(s.restart, Restart::Always);
        assert!(s.args.is_empty() && s.after.is_empty() && s.environment.is_empty());
        assert_eq!(s.working_directory, "/");
        assert_eq!(s.stop_timeout, Duration::from_secs(10));
        assert_eq!(s.log_max_bytes, 1 << 20);
        assert!(s.ready.is_empty());
        assert_eq!(s.ready_timeout, Duration::from_secs(60));
    }

    #[test]
    fn rejects_bad_files() {
        let e = parse_service("x", "command = \"/bin/x\"\nrestrat = \"never\"").unwrap_err();
        assert!(e.contains("restrat"), "{e}");
        assert!(parse_service("x", "command = \"bin/x\"")
            .unwrap_err()
            .contains("absolute"));
        assert!(parse_service("x", "args = []")
            .unwrap_err()
            .contains("command"));
        assert!(parse_service("x", "command = \"/x\"\nrestart = \"sometimes\"").is_err());
        assert!(parse_service("network", "command = \"/x\"").is_err());
        assert!(parse_service("a/b", "command = \"/x\"").is_err());
    }

    #[test]
    fn orders_by_dependencies_then_name() {
        let (o, msgs) = order(vec![
            svc("web", &["db", "network"]),
            svc("db", &["network"]),
            svc("alpha", &[]),
            svc("zeta", &["ghost"]),
        ]);
        let names: Vec<_> = o.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, vec!["alpha", "db", "web", "zeta"]);
        assert_eq!(msgs.len(), 1);
        assert!(msgs[0].contains("ghost"));
        assert!(o[3].after.is_empty());
    }

    #[test]
    fn breaks_cycles_and_keeps_everyone() {
        let (o, msgs) = order(vec![svc("a", &["b"]), svc("b", &["a"]), svc("c", &["a"])]);
        let names: Vec<_> = o.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, vec!["a", "b", "c"]);
        assert!(msgs.iter().any(|m| m.contains("cycle")), "{msgs:?}");
    }

    #[test]
    fn loads_a_directory_skipping_bad_files() {
        let dir = std::env::temp_dir().join(format!("axion-svc-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("b.toml"), "command = \"/bin/b\"").unwrap();
        std::fs::write(dir.join("a.toml"), "command = \"/bin/a\"").unwrap();
        std::fs::write(dir.join("bad.toml"), "command = 3").unwrap();
        std::fs::write(dir.join("README"), "not a service").unwrap();
        let (s, errs) = load_dir(&dir);
        assert_eq!(
            s.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
            vec!["a", "b"]
        );
        assert_eq!(errs.len(), 1);
        assert!(errs[0].contains("bad.toml"));
        assert_eq!(load_dir(&dir.join("none")).0.len(), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
