//! The real `docker` CLI aimed at one daemon: the tests' and the bench's one wrapper.

use anyhow::{bail, Context, Result};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Does `docker --version` run here?
pub fn installed() -> bool {
    Command::new("docker")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// `docker` with `DOCKER_HOST` set to one daemon, a config folder of its own, and nothing
/// from the caller's environment that would aim it elsewhere (`DOCKER_TLS_VERIFY`,
/// `DOCKER_CERT_PATH` are cleared unless [`DockerCli::tls`] sets them).
#[derive(Debug, Clone)]
pub struct DockerCli {
    pub host: String,
    pub config: PathBuf,
    env: Vec<(String, String)>,
}

impl DockerCli {
    /// `host` as in `DOCKER_HOST` (`unix:///...`, `tcp://...`).
    pub fn new(host: impl Into<String>, config: impl Into<PathBuf>) -> DockerCli {
        DockerCli {
            host: host.into(),
            config: config.into(),
            env: Vec::new(),
        }
    }

    /// Mutual TLS with the client certificate in `cert_path` (`ca.pem`, `cert.pem`,
    /// `key.pem`), as the engine on TCP wants.
    pub fn tls(self, cert_path: &Path) -> DockerCli {
        self.env("DOCKER_TLS_VERIFY", "1")
            .env("DOCKER_CERT_PATH", &cert_path.to_string_lossy())
    }

    /// One more environment variable for every command (set last: it wins).
    pub fn env(mut self, name: &str, value: &str) -> DockerCli {
        self.env.push((name.into(), value.into()));
        self
    }

    /// The command, stdin closed; the caller may change that and the other pipes.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("docker");
        cmd.env_remove("DOCKER_TLS_VERIFY")
            .env_remove("DOCKER_CERT_PATH")
            .env("DOCKER_HOST", &self.host)
            .env("DOCKER_CONFIG", &self.config)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .args(args)
            .stdin(Stdio::null());
        cmd
    }

    /// `docker ARGS`, 300 s at most.
    pub fn output(&self, args: &[&str]) -> Result<Output> {
        run_with_timeout(self.cmd(args), Duration::from_secs(300))
            .with_context(|| format!("docker {}", args.join(" ")))
    }

    /// [`DockerCli::output`], failing with the CLI's stderr unless it succeeded; its stdout.
    pub fn try_ok(&self, args: &[&str]) -> Result<String> {
        let o = self.output(args)?;
        if !o.status.success() {
            bail!(
                "docker {} failed ({}): {}",
                args.join(" "),
                o.status,
                String::from_utf8_lossy(&o.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    }

    /// [`DockerCli::output`] in a test: panics if the CLI cannot be run at all.
    pub fn run(&self, args: &[&str]) -> Output {
        self.output(args).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// [`DockerCli::run`], asserting success; its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "docker {} failed ({}): {}{}",
            args.join(" "),
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
}

/// Runs a command with piped stdout/stderr and a deadline. Fails if it does not finish
/// within `timeout`, or if its stdout or stderr stay open after it exited (a process it left
/// behind holds them).
pub fn run_with_timeout(mut cmd: Command, timeout: Duration) -> Result<Output> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start")?;
    let (tx, rx) = std::sync::mpsc::channel();
    for (i, mut pipe) in [
        Box::new(child.stdout.take().expect("piped")) as Box<dyn Read + Send>,
        Box::new(child.stderr.take().expect("piped")),
    ]
    .into_iter()
    .enumerate()
    {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            let _ = tx.send((i, buf));
        });
    }
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("did not finish within {} s", timeout.as_secs());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut outs = [Vec::new(), Vec::new()];
    for _ in 0..2 {
        let (i, buf) = rx.recv_timeout(Duration::from_secs(10)).map_err(|_| {
            anyhow::anyhow!(
                "exited ({status}) but its stdout/stderr stayed open: a \
                process it started still holds them"
            )
        })?;
        outs[i] = buf;
    }
    let [stdout, stderr] = outs;
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cli_is_aimed_at_one_daemon_only() {
        let cli = DockerCli::new("unix:///run/x.sock", "/tmp/cfg")
            .tls(Path::new("/certs"))
            .env("DOCKER_API_VERSION", "1.47");
        let c = cli.cmd(&["ps", "-a"]);
        let env: Vec<(String, Option<String>)> = c
            .get_envs()
            .map(|(k, v)| {
                (
                    k.to_string_lossy().into_owned(),
                    v.map(|v| v.to_string_lossy().into_owned()),
                )
            })
            .collect();
        let get = |k: &str| env.iter().find(|e| e.0 == k).and_then(|e| e.1.clone());
        assert_eq!(get("DOCKER_HOST").as_deref(), Some("unix:///run/x.sock"));
        assert_eq!(get("DOCKER_CONFIG").as_deref(), Some("/tmp/cfg"));
        assert_eq!(get("DOCKER_TLS_VERIFY").as_deref(), Some("1"));
        assert_eq!(get("DOCKER_CERT_PATH").as_deref(), Some("/certs"));
        assert_eq!(get("DOCKER_API_VERSION").as_deref(), Some("1.47"));
        assert_eq!(c.get_args().collect::<Vec<_>>(), ["ps", "-a"]);
        // Without tls() the caller's TLS variables are removed, not inherited.
        let plain = DockerCli::new("unix:///run/x.sock", "/tmp/cfg").cmd(&[]);
        assert!(plain
            .get_envs()
            .any(|(k, v)| k == "DOCKER_TLS_VERIFY" && v.is_none()));
    }

    #[test]
    fn a_command_that_outlives_its_deadline_fails() {
        let mut c = Command::new("sleep");
        c.arg("5");
        let e = run_with_timeout(c, Duration::from_millis(200)).unwrap_err();
        assert!(e.to_string().contains("did not finish"), "{e}");
        let o = run_with_timeout(Command::new("true"), Duration::from_secs(10)).unwrap();
        assert!(o.status.success());
    }
}
