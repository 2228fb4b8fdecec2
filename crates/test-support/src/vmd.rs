//! axion-vmd inside a test (feature `vmd`): [`Server`] serves the daemon's API on a unix
//! socket from its own thread and runtime, and stops every VM when dropped.

use anyhow::{bail, Result};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use vmd::{Api, Daemon, Options};

pub struct Server {
    pub socket: PathBuf,
    daemon: Arc<Daemon>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    /// Opens the daemon (building the template when needed) and serves `socket`.
    pub fn start(opts: Options, socket: &Path) -> Result<Server> {
        let daemon = Arc::new(Daemon::open(opts)?);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let d = daemon.clone();
        let path = socket.to_owned();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("tokio runtime");
            rt.block_on(async move {
                // VMs an earlier daemon on this state left running (live-restore).
                d.resume().await;
                let serve = docker_api::server::serve_unix(Arc::new(Api(d)), &path);
                tokio::select! {
                    r = serve => eprintln!("vmd: the unix listener ended: {r:?}"),
                    _ = rx => {}
                }
            });
        });
        // Re-adopting VMs (live-restore) may take a while before the socket serves.
        let deadline = Instant::now() + Duration::from_secs(120);
        while !socket.exists() {
            if Instant::now() > deadline {
                bail!(
                    "the daemon did not create {} within 120 s",
                    socket.display()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Server {
            socket: socket.to_owned(),
            daemon,
            stop: Some(tx),
            thread: Some(thread),
        })
    }

    pub fn daemon(&self) -> &Arc<Daemon> {
        &self.daemon
    }

    /// `unix:///...` for DOCKER_HOST.
    pub fn docker_host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.daemon.shutdown();
        let _ = std::fs::remove_file(&self.socket);
    }
}
