//! Command-line flags (dockerd-like names where one exists).

use clap::Parser;
use std::path::PathBuf;

#[derive(Parser, Debug, Clone)]
#[command(name = "engine", about = "axion container engine (Docker Engine API)")]
pub struct Args {
    /// Where images, containers, volumes and TLS material live.
    #[arg(long, default_value = "/var/lib/axion-engine")]
    pub data_root: PathBuf,
    /// Where each container's state and set-up files (spec, /etc/hosts, the root's mount
    /// point) live; default: under the data root. Its writable layer and its log stay under
    /// the data root. axion-vmd's VMs put this on tmpfs: a VM runs one container and never
    /// reboots, and the ext4 writes of that state cost a container's start 0.2-0.3 s there
    /// under TCG.
    #[arg(long)]
    pub exec_root: Option<PathBuf>,
    /// Mount containers' writable layers with overlayfs' `volatile` option: no sync under
    /// them reaches the disk (not even the one when a container's root is unmounted at its
    /// exit), and a crash loses them, which overlayfs then refuses to mount again. For
    /// axion-vmd's VMs, whose disk goes with their one container; there the exit's sync
    /// cost 0.1 s under TCG.
    #[arg(long)]
    pub volatile_layers: bool,
    /// Listen address: unix:///run/docker.sock or tcp://0.0.0.0:2376 (repeatable).
    #[arg(short = 'H', long = "host")]
    pub hosts: Vec<String>,
    /// CA that signs client certificates (mutual TLS). Default: <data-root>/tls/client-ca.pem,
    /// created with a client certificate on first start when absent.
    #[arg(long)]
    pub tlscacert: Option<PathBuf>,
    /// Server certificate; default <data-root>/tls/server-cert.pem, generated when absent.
    #[arg(long)]
    pub tlscert: Option<PathBuf>,
    /// Server key; default <data-root>/tls/server-key.pem, generated when absent.
    #[arg(long)]
    pub tlskey: Option<PathBuf>,
    /// Extra names/addresses for the generated server certificate's SANs.
    #[arg(long = "tls-san")]
    pub tls_sans: Vec<String>,
    /// Serve tcp:// hosts without TLS (explicit opt-in, like dockerd without --tls).
    #[arg(long)]
    pub tcp_insecure: bool,
    /// Registries reached over plain HTTP (localhost and 127.0.0.0/8 always are): HOST[:PORT]
    /// or a CIDR, as dockerd's flag.
    #[arg(long = "insecure-registry", value_parser = registry::parse_insecure)]
    pub insecure_registries: Vec<String>,
    /// Bridge for containers in the default (bridge) network; `none` turns bridge
    /// networking off (containers then get a network namespace with loopback only).
    #[arg(long, default_value = "axion0")]
    pub bridge: String,
    /// The bridge's address and prefix length; containers get addresses from that subnet.
    #[arg(long, default_value = "172.17.0.1/16")]
    pub bip: String,
    /// A read-only image store shared by the host (axion-vmd mounts its layer store here
    /// over 9p): image ids whose config is there run without a pull, on its unpacked layers.
    #[arg(long)]
    pub image_share: Option<PathBuf>,
    /// Also serve the API on the virtio-serial port with this name (axion-vmd's channel to
    /// the engine in each of its VMs): one multiplexed session per host connection, each
    /// stream one HTTP connection (crates/vchan).
    #[arg(long, value_name = "NAME")]
    pub vmd_port: Option<String>,
    /// Keep containers running when the engine stops on SIGTERM (dockerd's flag): only init's
    /// shutdown of the machine (its marker /run/axion/shutdown) stops them then. Whatever the
    /// flag, containers outlive an engine that crashes or is killed, and a started engine
    /// re-adopts those still running (backend/live.rs).
    #[arg(long)]
    pub live_restore: bool,
}

/// Settings a user can add without changing the service's command line, read from
/// `<data-root>/daemon.json` at start (the root filesystem is immutable, so dockerd's
/// /etc/docker/daemon.json would not be writable): `{"insecure-registries": ["host:port"],
/// "bridge": "axion0", "bip": "172.17.0.1/16", "live-restore": true}`. Values there add to
/// (registries) or override (bridge, bip, live-restore) the flags.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct DaemonJson {
    #[serde(default)]
    pub insecure_registries: Vec<String>,
    pub bridge: Option<String>,
    pub bip: Option<String>,
    pub live_restore: Option<bool>,
}

impl Args {
    /// Merges `<data-root>/daemon.json` into the flags; a malformed file is an error.
    pub fn with_daemon_json(mut self) -> anyhow::Result<Args> {
        let path = self.data_root.join("daemon.json");
        let data = match std::fs::read(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(self),
            Err(e) => return Err(anyhow::anyhow!("reading {}: {e}", path.display())),
        };
        let d: DaemonJson = serde_json::from_slice(&data)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        self.insecure_registries.extend(d.insecure_registries);
        if let Some(b) = d.bridge {
            self.bridge = b;
        }
        if let Some(b) = d.bip {
            self.bip = b;
        }
        if let Some(l) = d.live_restore {
            self.live_restore = l;
        }
        Ok(self)
    }
}
