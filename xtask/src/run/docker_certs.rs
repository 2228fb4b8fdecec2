//! The certificates that let the host's `docker` CLI talk to the engine in a VM that `run`
//! boots, over mutual TLS, with no step inside the guest.
//!
//! The host makes one CA per run directory and signs with it both the engine's server
//! certificate (for `127.0.0.1` and `localhost`: the forwarded port) and a client
//! certificate. The guest gets the CA as its client CA and the server certificate and key
//! through first-boot settings (see the engine README's contract); the host keeps the client
//! side as a ready `DOCKER_CERT_PATH` (`ca.pem`, `cert.pem`, `key.pem`).
//!
//! The files live in `out/PROFILE/run/docker/` and are kept between runs, so the guest's
//! settings (and so its instance id) stay the same until the run directory is cleaned.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};

/// The client side (`DOCKER_CERT_PATH`) and the guest's side of one CA.
#[derive(Debug, Clone)]
pub struct DockerCerts {
    /// `ca.pem`, `cert.pem`, `key.pem` for the docker CLI.
    pub client_dir: PathBuf,
    /// The CA certificate: the guest's client CA, and what the client verifies the server with.
    pub ca_pem: String,
    pub server_cert_pem: String,
    pub server_key_pem: String,
}

const FILES: [&str; 5] = [
    "ca.pem",
    "cert.pem",
    "key.pem",
    "server-cert.pem",
    "server-key.pem",
];

/// Loads the certificates in `dir`, or makes a new set when any file is missing.
pub fn ensure(dir: &Path) -> Result<DockerCerts> {
    if !FILES.iter().all(|f| dir.join(f).is_file()) {
        generate(dir)?;
    }
    let read = |f: &str| {
        std::fs::read_to_string(dir.join(f))
            .with_context(|| format!("cannot read {}", dir.join(f).display()))
    };
    Ok(DockerCerts {
        client_dir: dir.to_owned(),
        ca_pem: read("ca.pem")?,
        server_cert_pem: read("server-cert.pem")?,
        server_key_pem: read("server-key.pem")?,
    })
}

fn generate(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tls = |e: rcgen::Error| anyhow::anyhow!("cannot make the Docker TLS certificates: {e}");

    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(tls)?;
    ca.distinguished_name
        .push(DnType::CommonName, "axion run CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate().map_err(tls)?;
    let ca_cert = ca.self_signed(&ca_key).map_err(tls)?;

    let mut server = CertificateParams::new(Vec::<String>::new()).map_err(tls)?;
    server
        .distinguished_name
        .push(DnType::CommonName, "axion engine");
    server.subject_alt_names = vec![
        SanType::DnsName("localhost".try_into().map_err(tls)?),
        SanType::IpAddress([127, 0, 0, 1].into()),
    ];
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_key = KeyPair::generate().map_err(tls)?;
    let server_cert = server
        .signed_by(&server_key, &ca_cert, &ca_key)
        .map_err(tls)?;

    let mut client = CertificateParams::new(Vec::<String>::new()).map_err(tls)?;
    client
        .distinguished_name
        .push(DnType::CommonName, "axion client");
    client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client_key = KeyPair::generate().map_err(tls)?;
    let client_cert = client
        .signed_by(&client_key, &ca_cert, &ca_key)
        .map_err(tls)?;

    // Keys first and private; the CA key is not kept: a new set is made when one is lost.
    write(dir, "key.pem", &client_key.serialize_pem(), 0o600)?;
    write(dir, "server-key.pem", &server_key.serialize_pem(), 0o600)?;
    write(dir, "cert.pem", &client_cert.pem(), 0o644)?;
    write(dir, "server-cert.pem", &server_cert.pem(), 0o644)?;
    // ca.pem last: `ensure` makes a new set unless every file is there.
    write(dir, "ca.pem", &ca_cert.pem(), 0o644)
}

fn write(dir: &Path, name: &str, text: &str, mode: u32) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(name);
    let _ = std::fs::remove_file(&path);
    let mut f = std::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(mode)
        .open(&path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn made_once_then_kept_and_remade_when_incomplete() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("docker");
        let first = ensure(&d).unwrap();
        assert!(first.ca_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(first.server_key_pem.contains("PRIVATE KEY"));
        assert_eq!(
            std::fs::metadata(d.join("key.pem"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
        assert_eq!(
            ensure(&d).unwrap().ca_pem,
            first.ca_pem,
            "a complete set is kept"
        );
        std::fs::remove_file(d.join("cert.pem")).unwrap();
        let again = ensure(&d).unwrap();
        assert_ne!(
            again.ca_pem, first.ca_pem,
            "an incomplete set is replaced as a whole"
        );
        assert!(d.join("cert.pem").is_file());
    }

    #[test]
    fn certificates_chain_to_the_ca_with_the_right_names() {
        // openssl is the independent checker; without it the chain is not verified here.
        if std::process::Command::new("openssl")
            .arg("version")
            .output()
            .is_err()
        {
            test_skip::skip("openssl is not installed");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        ensure(d).unwrap();
        for (cert, purpose) in [("server-cert.pem", "sslserver"), ("cert.pem", "sslclient")] {
            let out = std::process::Command::new("openssl")
                .args(["verify", "-purpose", purpose, "-CAfile"])
                .arg(d.join("ca.pem"))
                .arg(d.join(cert))
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{cert}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let out = std::process::Command::new("openssl")
            .args([
                "verify",
                "-purpose",
                "sslserver",
                "-verify_ip",
                "127.0.0.1",
                "-CAfile",
            ])
            .arg(d.join("ca.pem"))
            .arg(d.join("server-cert.pem"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "server cert is not valid for 127.0.0.1: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
