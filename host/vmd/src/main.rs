//! `axion-vmd`: the VM-per-container Docker endpoint (see the crate documentation).
//!
//!     axion-vmd --state-dir DIR --kernel out/qemu/axion-qemu-V.vmlinuz \
//!         --initrd out/qemu/axion-qemu-V.initrd.zst [--disk out/qemu/axion-qemu-V.qcow2]
//!
//! Prints `export DOCKER_HOST=unix://...` on stdout once the socket serves. `cargo xtask vmd`
//! builds the image and this binary and runs it so (docs/vmd.md).
//!
//! Panics: built with `panic = "unwind"` (root Cargo.toml). It runs as root on the host and
//! serves every container's VM, so no input may end it: guest answers are checked
//! (`client::guest_id`), an API request whose handler still panics answers 500 and the
//! daemon serves on (docker-api's `server::handle`), a panicking task (a layer unpack, a
//! guest stream) ends alone as a failed `JoinHandle`, and a lock a panic poisoned is taken
//! over rather than unwrapped, so the other containers are unaffected.

use anyhow::{bail, Context, Result};
use clap::Parser;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Parser, Debug)]
#[command(
    name = "axion-vmd",
    about = "Docker Engine API where every container runs in its own cloned QEMU VM"
)]
struct Args {
    /// Template, clones, certificates, images.json and the socket.
    #[arg(long)]
    state_dir: PathBuf,
    /// The qemu profile's kernel.
    #[arg(long)]
    kernel: PathBuf,
    /// The qemu profile's initramfs.
    #[arg(long)]
    initrd: PathBuf,
    /// The qemu profile's qcow2 disk (its axion-data partition is the VMs' /var/lib).
    #[arg(long)]
    disk: Option<PathBuf>,
    /// Memory of every VM (the template's; clones must match).
    #[arg(long, default_value_t = 512)]
    memory_mib: u64,
    /// vCPUs of every VM; default: the host's cores, at most 4. A container sees all the
    /// host's CPUs by default in Docker, and under TCG a second vCPU (its own host thread)
    /// runs the clone agent beside the engine: measured, 1.15-1.35 s → 0.96-1.09 s per
    /// `docker run --rm` of a clone, and 4.7-5.7 s → 4.5-5.2 s per cold boot.
    #[arg(long)]
    cpus: Option<u32>,
    /// tcg or kvm (use kvm only where a probe showed that it works).
    #[arg(long, default_value = "tcg")]
    accel: String,
    /// The API socket; default STATE_DIR/vmd.sock.
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Also serve TCP at this address with mutual TLS (needs --tlscert, --tlskey, --tlscacert).
    #[arg(long)]
    tcp: Option<String>,
    #[arg(long)]
    tlscert: Option<PathBuf>,
    #[arg(long)]
    tlskey: Option<PathBuf>,
    #[arg(long)]
    tlscacert: Option<PathBuf>,
    /// Boot every container's VM from scratch instead of cloning (benchmark baseline).
    #[arg(long)]
    cold_boot: bool,
    /// Pull from this registry over plain HTTP (repeatable), as dockerd's flag: HOST[:PORT],
    /// or a CIDR for every registry given by an address in it. localhost and 127.0.0.0/8
    /// always are.
    #[arg(
        long = "insecure-registry",
        value_name = "HOST[:PORT]|CIDR",
        value_parser = registry::parse_insecure
    )]
    insecure_registries: Vec<String>,
    /// On SIGTERM, leave the container VMs running for the next daemon, which re-adopts
    /// them (dockerd's flag). Without it SIGTERM and Ctrl-C end every VM. A daemon that
    /// dies (SIGKILL, a crash) always leaves them, whatever the flag.
    #[arg(long)]
    live_restore: bool,
    /// Clones kept restored from the template and waiting for the next `docker create`/`run`
    /// (their identity not yet given), refilled in the background; 0 turns the pool off. Each
    /// costs its QEMU's own memory (docs/vmd.md); at most 8.
    #[arg(
        long,
        default_value_t = vmd::pool::DEFAULT,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new()
            .range(0..=vmd::pool::MAX as u64)
    )]
    pool: usize,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let accel = match args.accel.as_str() {
        "tcg" => qemu::Accel::Tcg,
        "kvm" => qemu::Accel::Kvm,
        a => bail!("--accel {a}: use tcg or kvm"),
    };
    let opts = vmd::Options {
        state_dir: args.state_dir.clone(),
        image: vmd::template::ImageFiles {
            kernel: args.kernel.clone(),
            initrd: args.initrd.clone(),
            disk: args.disk.clone(),
        },
        memory_mib: args.memory_mib,
        cpus: args.cpus.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get().min(4) as u32)
                .unwrap_or(1)
        }),
        accel,
        cold_boot: args.cold_boot,
        insecure_registries: args.insecure_registries.clone(),
        pool: args.pool,
    };
    let daemon = Arc::new(vmd::Daemon::open(opts).context("starting the daemon")?);
    let socket = args
        .socket
        .clone()
        .unwrap_or_else(|| args.state_dir.join("vmd.sock"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let live_restore = args.live_restore;
    let keep = rt.block_on(async {
        // VMs an earlier daemon left running: reconnected before the socket serves.
        daemon.resume().await;
        let b = Arc::new(vmd::Api(daemon.clone()));
        let path = socket.clone();
        let unix = tokio::spawn(async move { docker_api::server::serve_unix(b, &path).await });
        if let Some(addr) = &args.tcp {
            let (Some(c), Some(k), Some(ca)) = (&args.tlscert, &args.tlskey, &args.tlscacert)
            else {
                bail!(
                    "--tcp needs --tlscert, --tlskey and --tlscacert (mutual TLS; plain TCP is \
                    not offered)"
                );
            };
            let tls = docker_api::tls::server_config(c, k, ca)?;
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding {addr}"))?;
            let b = Arc::new(vmd::Api(daemon.clone()));
            tokio::spawn(
                async move { docker_api::server::serve_tcp(b, listener, Some(tls)).await },
            );
            eprintln!("vmd: also serving tcp://{addr} (mutual TLS)");
        }
        for _ in 0..100 {
            if socket.exists() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        println!("export DOCKER_HOST=unix://{}", socket.display());
        eprintln!("vmd: serving unix://{}", socket.display());
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let keep = tokio::select! {
            _ = term.recv() => {
                if live_restore {
                    eprintln!("vmd: SIGTERM: leaving the VMs running for the next daemon \
                        (--live-restore)");
                } else {
                    eprintln!("vmd: SIGTERM: stopping every VM");
                }
                live_restore
            }
            _ = tokio::signal::ctrl_c() => { eprintln!("vmd: interrupted: stopping every \
                VM"); false }
            r = unix => { eprintln!("vmd: the unix listener ended: {r:?}"); false }
        };
        Ok::<bool, anyhow::Error>(keep)
    })?;
    if keep {
        daemon.detach_all();
    } else {
        daemon.shutdown();
    }
    let _ = std::fs::remove_file(&socket);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insecure_registry_flags() {
        let base = [
            "axion-vmd",
            "--state-dir",
            "s",
            "--kernel",
            "k",
            "--initrd",
            "i",
        ];
        let a = Args::try_parse_from(base.iter().copied().chain([
            "--insecure-registry",
            "http://myreg:5000/",
            "--insecure-registry",
            "10.9.0.0/16",
        ]))
        .unwrap();
        assert_eq!(a.insecure_registries, vec!["myreg:5000", "10.9.0.0/16"]);
        assert!(Args::try_parse_from(base)
            .unwrap()
            .insecure_registries
            .is_empty());
        let e = Args::try_parse_from(
            base.iter()
                .copied()
                .chain(["--insecure-registry", "tcp://myreg:5000"]),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("without a scheme"), "{e}");
    }

    #[test]
    fn pool_flag() {
        let base = [
            "axion-vmd",
            "--state-dir",
            "s",
            "--kernel",
            "k",
            "--initrd",
            "i",
        ];
        assert_eq!(Args::try_parse_from(base).unwrap().pool, vmd::pool::DEFAULT);
        let a = Args::try_parse_from(base.iter().copied().chain(["--pool", "0"])).unwrap();
        assert_eq!(a.pool, 0);
        assert!(Args::try_parse_from(base.iter().copied().chain(["--pool", "9"])).is_err());
    }
}
