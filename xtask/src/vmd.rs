//! `cargo xtask vmd [--detach] [--stop] [--tcp ADDR] [--state-dir DIR]
//! [--insecure-registry HOST[:PORT]|CIDR]... [--pool N]`: the VM-per-container Docker endpoint
//! (host/vmd). `--insecure-registry` is passed on to the daemon (plain HTTP for that
//! registry, as dockerd's flag; localhost and 127.0.0.0/8 always are), and so is `--pool`
//! (the warm pool's size).
//!
//! Builds the qemu profile's initramfs and qcow2 when missing or stale, builds the
//! `axion-vmd` binary, and runs it with its state under `$AXION_CACHE/vmd` or `--state-dir`
//! (template VM, clones, certificates, `vmd.sock`). In the foreground the daemon prints the
//! `export DOCKER_HOST=unix://...` line itself; with `--detach` it runs in the background
//! (log: `STATE/vmd.log`, pid: `vmd.pid`) and this command prints the export lines once the
//! socket answers. `--stop` ends a detached daemon (SIGTERM: every VM is stopped).
//!
//! `--tcp 127.0.0.1:PORT` also serves TCP with mutual TLS, as the engine in a VM does: a CA,
//! a server certificate for 127.0.0.1/localhost and a client certificate are made in
//! `STATE/docker/` (kept between starts), and the exports are DOCKER_HOST=tcp://...,
//! DOCKER_TLS_VERIFY and DOCKER_CERT_PATH. Only loopback addresses: the made certificate
//! names nothing else; for another address run `axion-vmd --tcp` with your own
//! `--tlscert/--tlskey/--tlscacert`.

use crate::layout::Layout;
use crate::profile::Format;
use anyhow::{bail, Context, Result};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `cargo xtask vmd`'s options.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Args {
    /// Run in the background; print the export line once it serves.
    #[arg(long)]
    pub detach: bool,
    /// Stop a detached daemon (and every VM it runs).
    #[arg(long)]
    pub stop: bool,
    /// Also serve TCP with mutual TLS on this loopback address (e.g. 127.0.0.1:2377);
    /// certificates are made in STATE/docker and exported as DOCKER_CERT_PATH.
    #[arg(long, value_name = "ADDR")]
    pub tcp: Option<String>,
    /// The daemon's state (template, clones, socket); default $AXION_CACHE/vmd.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Pull from this registry over plain HTTP (repeatable; passed on to axion-vmd).
    #[arg(long = "insecure-registry", value_name = "HOST[:PORT]|CIDR")]
    pub insecure_registries: Vec<String>,
    /// Clones kept restored and waiting for the next create (passed on to axion-vmd, whose
    /// default is 2; 0 turns the warm pool off).
    #[arg(long, value_name = "N")]
    pub pool: Option<usize>,
}

fn state_dir(layout: &Layout, opts: &Args) -> PathBuf {
    // Absolute: the daemon, its socket and `--stop` must agree whatever the working directory.
    opts.state_dir
        .as_deref()
        .and_then(|d| std::path::absolute(d).ok())
        .unwrap_or_else(|| layout.cache.join("vmd"))
}

/// The `--tcp` address, refused unless it is a loopback `IP:PORT`.
fn loopback_addr(addr: &str) -> Result<std::net::SocketAddr> {
    let parsed: std::net::SocketAddr = addr
        .parse()
        .with_context(|| format!("--tcp {addr:?}: expected IP:PORT, e.g. 127.0.0.1:2377"))?;
    if !parsed.ip().is_loopback() {
        bail!(
            "--tcp {addr}: only loopback addresses (the certificate made here names 127.0.0.1 \
             and localhost); for another address run axion-vmd --tcp with your own \
             --tlscert/--tlskey/--tlscacert"
        );
    }
    Ok(parsed)
}

/// The shell lines that point the docker CLI at the daemon.
fn exports(socket: &Path, tcp: Option<(&std::net::SocketAddr, &Path)>) -> Vec<String> {
    match tcp {
        Some((addr, certs)) => vec![
            format!("export DOCKER_HOST=tcp://{addr}"),
            "export DOCKER_TLS_VERIFY=1".into(),
            format!("export DOCKER_CERT_PATH={}", certs.display()),
        ],
        None => vec![format!("export DOCKER_HOST=unix://{}", socket.display())],
    }
}

/// A built, fresh image of the qemu profile in `format`, building it when needed.
fn ensure(layout: &Layout, format: Format) -> Result<crate::image::Bootable> {
    let recipes = crate::recipe::RecipeSet::load(&layout.recipes())?;
    let profile = crate::profile::load_profile(&layout.root, "qemu", &recipes)?;
    Ok(crate::image::ensure(layout, &profile, Some(format))?.1)
}

fn ping(socket: &Path) -> bool {
    let Ok(mut s) = std::os::unix::net::UnixStream::connect(socket) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /_ping HTTP/1.1\r\nHost: vmd\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    buf.starts_with("HTTP/1.1 200")
}

/// Builds the `axion-vmd` binary (debug, like the rest of xtask) and returns its path.
pub fn build_daemon(layout: &Layout) -> Result<PathBuf> {
    eprintln!("building axion-vmd");
    let st = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "-q", "-p", "vmd", "--bin", "axion-vmd"])
        .current_dir(&layout.root)
        .stdout(Stdio::null())
        .status()
        .context("running cargo build")?;
    if !st.success() {
        bail!("cargo build -p vmd failed");
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| layout.root.join("target"));
    Ok(target.join("debug/axion-vmd"))
}

/// Does the daemon answer `GET /_ping` on its socket?
pub fn answers(socket: &Path) -> bool {
    ping(socket)
}

pub fn vmd(layout: &Layout, opts: &Args) -> Result<()> {
    let state = state_dir(layout, opts);
    let pid_file = state.join("vmd.pid");
    let socket = state.join("vmd.sock");
    if opts.stop {
        let pid = std::fs::read_to_string(&pid_file)
            .with_context(|| format!("no detached daemon ({} is missing)", pid_file.display()))?;
        let pid = pid.trim();
        let st = Command::new("kill").args(["-TERM", pid]).status()?;
        let _ = std::fs::remove_file(&pid_file);
        if !st.success() {
            bail!("the daemon (pid {pid}) is not running");
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("axion-vmd (pid {pid}) stopped");
        return Ok(());
    }
    if ping(&socket) {
        bail!(
            "a daemon already serves {} (cargo xtask vmd --stop ends a detached one)",
            socket.display()
        );
    }
    let tcp = opts.tcp.as_deref().map(loopback_addr).transpose()?;
    let crate::image::Bootable::Kernel { kernel, initrd } = ensure(layout, Format::Initramfs)?
    else {
        bail!("the initramfs format is not a kernel and an initramfs");
    };
    let disk = match ensure(layout, Format::Qcow2)? {
        crate::image::Bootable::Disk { path, .. } => Some(path),
        _ => None,
    };
    let exe = build_daemon(layout)?;
    std::fs::create_dir_all(&state)?;
    let mut cmd = Command::new(&exe);
    cmd.arg("--state-dir")
        .arg(&state)
        .arg("--kernel")
        .arg(&kernel)
        .arg("--initrd")
        .arg(&initrd)
        .arg("--socket")
        .arg(&socket);
    if let Some(d) = &disk {
        cmd.arg("--disk").arg(d);
    }
    for r in &opts.insecure_registries {
        cmd.arg("--insecure-registry").arg(r);
    }
    if let Some(n) = opts.pool {
        cmd.arg("--pool").arg(n.to_string());
    }
    let certs_dir = state.join("docker");
    if let Some(addr) = &tcp {
        crate::run::docker_certs::ensure(&certs_dir)?;
        cmd.arg("--tcp").arg(addr.to_string());
        cmd.arg("--tlscert")
            .arg(certs_dir.join("server-cert.pem"))
            .arg("--tlskey")
            .arg(certs_dir.join("server-key.pem"))
            .arg("--tlscacert")
            .arg(certs_dir.join("ca.pem"));
    }
    let exports = exports(&socket, tcp.as_ref().map(|a| (a, certs_dir.as_path())));
    if !opts.detach {
        if tcp.is_some() {
            eprintln!("for the TCP endpoint:\n{}", exports.join("\n"));
        }
        let st = cmd
            .status()
            .with_context(|| format!("running {}", exe.display()))?;
        if !st.success() {
            bail!("axion-vmd exited with {st}");
        }
        return Ok(());
    }
    let log_path = state.join("vmd.log");
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("creating {}", log_path.display()))?;
    {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", exe.display()))?;
    std::fs::write(&pid_file, child.id().to_string())?;
    eprintln!(
        "axion-vmd starting (pid {}, log {}); the first start boots and saves the template VM",
        child.id(),
        log_path.display()
    );
    let deadline = Instant::now() + Duration::from_secs(600);
    while !ping(&socket) {
        if let Some(st) = child.try_wait()? {
            let _ = std::fs::remove_file(&pid_file);
            bail!(
                "axion-vmd exited ({st}); its log:\n{}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!(
                "axion-vmd did not serve {} within 600 s (log {})",
                socket.display(),
                log_path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    for line in &exports {
        println!("{line}");
    }
    let stop = match &opts.state_dir {
        Some(d) => format!("cargo xtask vmd --stop --state-dir {}", d.display()),
        None => "cargo xtask vmd --stop".into(),
    };
    eprintln!("stop it with: {stop}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_only_on_loopback() {
        assert_eq!(loopback_addr("127.0.0.1:2377").unwrap().port(), 2377);
        assert!(loopback_addr("[::1]:2377").is_ok());
        assert!(loopback_addr("0.0.0.0:2377")
            .unwrap_err()
            .to_string()
            .contains("only loopback"));
        assert!(loopback_addr("localhost")
            .unwrap_err()
            .to_string()
            .contains("IP:PORT"));
    }

    #[test]
    fn export_lines() {
        let sock = Path::new("/s/vmd.sock");
        assert_eq!(
            exports(sock, None),
            ["export DOCKER_HOST=unix:///s/vmd.sock"]
        );
        let addr: std::net::SocketAddr = "127.0.0.1:2377".parse().unwrap();
        assert_eq!(
            exports(sock, Some((&addr, Path::new("/s/docker")))),
            [
                "export DOCKER_HOST=tcp://127.0.0.1:2377",
                "export DOCKER_TLS_VERIFY=1",
                "export DOCKER_CERT_PATH=/s/docker"
            ]
        );
    }
}
