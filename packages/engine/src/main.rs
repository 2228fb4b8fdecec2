//! axion's container engine: serves the Docker Engine API (crate `docker-api`) on a unix
//! socket, on TCP with mutual TLS and, for axion-vmd, on a virtio-serial port (`--vmd-port`), and
//! runs containers with its own small runtime
//! (namespaces, overlayfs, cgroup v2) — see `runtime`.
//!
//! Decisions (see also each module's top comment):
//! - Data root (default /var/lib/axion-engine): `images/` (content-addressed blobs and
//!   unpacked layers), `containers/<id>/`, `volumes/<name>/_data`, `tls/`.
//! - The runtime is our own rather than youki's libcontainer: a few hundred lines over
//!   `nix` that build static with musl; the engine binary re-executes itself as the
//!   per-container shim (`engine __run`, `engine __exec`).
//! - Plain TCP is served only with `--tcp-insecure`; `tcp://` hosts use mutual TLS.
//! - Panics: built with `panic = "unwind"` (root Cargo.toml), so that a bug reached by one
//!   request ends that request, not the engine and every container it supervises: the API
//!   handler's panic answers 500 and the server serves on (docker-api's `server::handle`),
//!   a panicking task (a layer unpack) ends alone. Hostile input itself gets errors, never
//!   panics (registry answers, layers, `docker load` archives, API requests).
//! - Containers outlive the engine (live-restore): each runs under its shim's monitor
//!   (runtime::monitor), which owns its streams, writes its log and records its exit; a
//!   started engine re-adopts the running ones (backend/live.rs). SIGTERM stops them unless
//!   `--live-restore` is given; with it, only during init's shutdown of the machine.

mod args;
mod backend;
mod build;
mod certs;
mod cgroup;
mod containers;
mod devices;
mod events;
mod images;
mod init_reaper;
mod logs;
mod net;
mod netproxy;
mod networks;
mod runtime;
mod vmd_agent;
mod volumes;
/// Safe layer unpacking lives in crates/layer-unpack (the host daemon uses it too).
use layer_unpack as unpack;

use anyhow::{bail, Context, Result};
use clap::Parser;
use std::sync::Arc;

fn main() -> Result<()> {
    let argv: Vec<String> = std::env::args().collect();
    if argv
        .get(1)
        .map(|s| s == vmd_contract::AGENT_MODE)
        .unwrap_or(false)
    {
        // axion-vmd's clone agent (a service in its template VM).
        std::process::exit(vmd_agent::main(&argv[2..]));
    }
    if argv.get(1).map(|s| s == "__init").unwrap_or(false) {
        // `docker run --init`: this binary as the container's PID 1 (init_reaper).
        std::process::exit(init_reaper::main(&argv[2..]));
    }
    if argv.get(1).map(|s| s.starts_with("__")).unwrap_or(false) {
        // The per-container shim: single-threaded, no tokio.
        std::process::exit(runtime::shim::main(&argv[1..]));
    }
    let args = args::Args::parse().with_daemon_json()?;
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.worker_threads(2).enable_all();
    if args.vmd_port.is_some() {
        // axion-vmd's template is saved with this engine idle: its clones then find the
        // blocking pool's threads alive instead of making them (a thread is a clone(2),
        // a stack and TCG-cold code in a restored VM, 0.03-0.05 s of a container's start).
        rt.thread_keep_alive(std::time::Duration::from_secs(24 * 3600));
    }
    let rt = rt.build().context("starting the async runtime")?;
    rt.block_on(serve(args))
}

async fn serve(args: args::Args) -> Result<()> {
    std::fs::create_dir_all(&args.data_root)
        .with_context(|| format!("creating data root {}", args.data_root.display()))?;
    let backend = Arc::new(backend::Engine::open(&args).context("opening the engine state")?);
    backend.clone().restore().await;
    let hosts = if args.hosts.is_empty() {
        vec!["unix:///run/docker.sock".to_string()]
    } else {
        args.hosts.clone()
    };
    let mut tasks = Vec::new();
    for h in hosts {
        if let Some(path) = h.strip_prefix("unix://") {
            let b = backend.clone();
            let path = std::path::PathBuf::from(path);
            eprintln!("engine: API listening on unix://{}", path.display());
            tasks.push(tokio::spawn(async move {
                docker_api::server::serve_unix(b, &path)
                    .await
                    .with_context(|| format!("serving on unix socket {}", path.display()))
            }));
        } else if let Some(addr) = h.strip_prefix("tcp://") {
            // The TLS material first, then bind: init counts the engine ready once the port
            // accepts connections (services/mod.rs), so it must be able to serve them.
            let tls = if args.tcp_insecure {
                eprintln!("engine: WARNING: plain TCP API on {addr} without TLS (--tcp-insecure)");
                None
            } else {
                let paths = certs::ensure(&args)?;
                Some(docker_api::tls::server_config(
                    &paths.cert,
                    &paths.key,
                    &paths.client_ca,
                )?)
            };
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding TCP listener {addr}"))?;
            if tls.is_some() {
                eprintln!("engine: API listening on tcp://{addr} (mutual TLS)");
            }
            let b = backend.clone();
            tasks.push(tokio::spawn(async move {
                docker_api::server::serve_tcp(b, listener, tls)
                    .await
                    .context("serving on TCP")
            }));
        } else {
            bail!("unsupported host {h:?}: use unix:///path or tcp://addr:port");
        }
    }
    if let Some(name) = args.vmd_port.clone() {
        // Before the host's first session, so axion-vmd's template (saved at its end) holds
        // the compiled default seccomp program (0.06-0.13 s of every clone's create under
        // TCG), a shim waiting for the container (runtime::Prespawned) and a thread in the
        // blocking pool.
        runtime::confine::warm_default();
        backend.prespawn_shim();
        let _ = tokio::task::spawn_blocking(|| ()).await;
        let b = backend.clone();
        tasks.push(tokio::spawn(async move {
            vchan::port::serve(&name, move |s| {
                docker_api::server::serve_connection(b.clone(), s)
            })
            .await
            .with_context(|| format!("serving on virtio-serial port {name}"))
        }));
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {
            let shutdown = backend::machine_shutting_down();
            if !backend::sigterm_stops_containers(args.live_restore, shutdown) {
                // live-restore: the monitors keep the containers; the next engine re-adopts.
                eprintln!("engine: SIGTERM, leaving the containers running (live-restore)");
                // At once: the runtime's drop would wait for the threads that follow the
                // containers, i.e. for the containers to end. Their state is saved.
                std::process::exit(0);
            }
            eprintln!(
                "engine: SIGTERM{}, stopping containers",
                if shutdown { " (the machine shuts down)" } else { "" }
            );
        }
        _ = tokio::signal::ctrl_c() => eprintln!("engine: interrupted, stopping containers"),
        r = futures_first(tasks) => { r?; }
    }
    backend.shutdown().await;
    Ok(())
}

async fn futures_first(tasks: Vec<tokio::task::JoinHandle<Result<()>>>) -> Result<()> {
    let (tx, mut rx) = tokio::sync::mpsc::channel(tasks.len().max(1));
    for t in tasks {
        let tx = tx.clone();
        tokio::spawn(async move {
            let r = match t.await {
                Ok(r) => r,
                Err(e) => Err(anyhow::anyhow!("listener task failed: {e}")),
            };
            let _ = tx.send(r).await;
        });
    }
    drop(tx);
    rx.recv().await.unwrap_or(Ok(()))
}
