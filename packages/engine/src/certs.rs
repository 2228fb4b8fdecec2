//! TLS material for the TCP listener. On first start, when the files are absent, the
//! engine creates under <data-root>/tls:
//! - `ca.pem`/`ca-key.pem`: a CA that signs the server certificate (clients verify the
//!   server with `ca.pem`);
//! - `server-cert.pem`/`server-key.pem`: SANs localhost, 127.0.0.1, the host name, every
//!   local IPv4 address and `--tls-san` values;
//! - when no `--tlscacert` is given: `client-ca.pem` (+ key) and a client certificate in
//!   `client/` (`ca.pem`, `cert.pem`, `key.pem`: a ready DOCKER_CERT_PATH).
//!
//! With `--tlscacert` (first-boot settings), only clients signed by that CA get in.

use crate::args::Args;
use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, SanType,
};
use std::path::{Path, PathBuf};

pub struct TlsPaths {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: PathBuf,
}

fn write_private(p: &Path, data: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(p)
        .with_context(|| format!("writing {}", p.display()))?;
    f.write_all(data.as_bytes())
        .with_context(|| format!("writing {}", p.display()))
}

fn ca(name: &str) -> Result<(rcgen::Certificate, KeyPair)> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.distinguished_name.push(DnType::CommonName, name);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let k = KeyPair::generate()?;
    Ok((p.self_signed(&k)?, k))
}

fn local_sans(extra: &[String]) -> Vec<SanType> {
    let mut sans = vec![
        SanType::DnsName("localhost".try_into().expect("static")),
        SanType::IpAddress([127, 0, 0, 1].into()),
    ];
    if let Ok(h) = nix::unistd::gethostname() {
        if let Ok(n) = h.to_string_lossy().to_string().try_into() {
            sans.push(SanType::DnsName(n));
        }
    }
    if let Ok(addrs) = nix::ifaddrs::getifaddrs() {
        for a in addrs {
            if let Some(sin) = a.address.as_ref().and_then(|s| s.as_sockaddr_in()) {
                let ip = std::net::IpAddr::V4(sin.ip());
                if !ip.is_loopback() {
                    sans.push(SanType::IpAddress(ip));
                }
            }
        }
    }
    for e in extra {
        match e.parse::<std::net::IpAddr>() {
            Ok(ip) => sans.push(SanType::IpAddress(ip)),
            Err(_) => {
                if let Ok(n) = e.clone().try_into() {
                    sans.push(SanType::DnsName(n));
                }
            }
        }
    }
    sans
}

pub fn ensure(args: &Args) -> Result<TlsPaths> {
    let dir = args.data_root.join("tls");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let cert = args
        .tlscert
        .clone()
        .unwrap_or_else(|| dir.join("server-cert.pem"));
    let key = args
        .tlskey
        .clone()
        .unwrap_or_else(|| dir.join("server-key.pem"));
    if !cert.exists() || !key.exists() {
        let (ca_cert, ca_key) = ca("axion engine CA")?;
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.distinguished_name
            .push(DnType::CommonName, "axion engine");
        p.subject_alt_names = local_sans(&args.tls_sans);
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let k = KeyPair::generate()?;
        let c = p.signed_by(&k, &ca_cert, &ca_key)?;
        std::fs::write(dir.join("ca.pem"), ca_cert.pem())?;
        write_private(&dir.join("ca-key.pem"), &ca_key.serialize_pem())?;
        std::fs::write(&cert, c.pem()).with_context(|| format!("writing {}", cert.display()))?;
        write_private(&key, &k.serialize_pem())?;
        eprintln!("engine: generated server certificate {}", cert.display());
    }
    let client_ca = match &args.tlscacert {
        Some(p) => p.clone(),
        None => {
            let p = dir.join("client-ca.pem");
            if !p.exists() {
                let (cca, cca_key) = ca("axion engine client CA")?;
                let mut cp = CertificateParams::new(Vec::<String>::new())?;
                cp.distinguished_name
                    .push(DnType::CommonName, "axion client");
                cp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
                let ck = KeyPair::generate()?;
                let cc = cp.signed_by(&ck, &cca, &cca_key)?;
                let cdir = dir.join("client");
                std::fs::create_dir_all(&cdir)?;
                std::fs::copy(dir.join("ca.pem"), cdir.join("ca.pem")).ok();
                std::fs::write(cdir.join("cert.pem"), cc.pem())?;
                write_private(&cdir.join("key.pem"), &ck.serialize_pem())?;
                write_private(&dir.join("client-ca-key.pem"), &cca_key.serialize_pem())?;
                std::fs::write(&p, cca.pem())?;
                eprintln!(
                    "engine: generated client CA and client certificate in {}",
                    cdir.display()
                );
            }
            p
        }
    };
    Ok(TlsPaths {
        cert,
        key,
        client_ca,
    })
}
