//! Command-line flags (dockerd-like names where one exists).

use clap::Parser;
use std::path::PathBuf;

#[derive(Parser, Debug, Clone)]
#[command(name = "engine", about = "axion container engine (Docker Engine API)")]
pub struct Args {
    /// Where images, containers, volumes and TLS material live.
    #[arg(long, default_value = "/var/lib/axion-engine")]
    pub data_root: PathBuf,
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
    /// Registries reached over plain HTTP (localhost and 127.0.0.0/8 always are).
    #[arg(long = "insecure-registry")]
    pub insecure_registries: Vec<String>,
    /// Bridge name for container networking.
    #[arg(long, default_value = "axion0")]
    pub bridge: String,
}
