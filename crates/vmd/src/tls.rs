//! The daemon's certificates for talking to the engines in its VMs: one CA, a server
//! certificate for 127.0.0.1 (every clone presents the same one: they are all the daemon's
//! VMs and are only reached through forwards on the host's 127.0.0.1) and a client
//! certificate that only the daemon holds (files mode 0600 in a 0700 directory). A local
//! user who connects to a clone's forwarded port gets nothing without the client key.

use anyhow::{Context, Result};
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, SanType};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct Certs {
    pub dir: PathBuf,
    pub ca: String,
    pub server_cert: String,
    pub server_key: String,
    pub client_cert: String,
    pub client_key: String,
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
    f.write_all(data.as_bytes()).with_context(|| format!("writing {}", p.display()))
}

/// Loads the certificates from `dir`, creating them when any is missing.
pub fn ensure(dir: &Path) -> Result<Certs> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    let names = ["ca.pem", "server-cert.pem", "server-key.pem", "cert.pem", "key.pem"];
    if !names.iter().all(|n| dir.join(n).exists()) {
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.distinguished_name.push(DnType::CommonName, "axion vmd CA");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::DigitalSignature];
        let ca_key = KeyPair::generate()?;
        let ca = p.self_signed(&ca_key)?;

        let mut s = CertificateParams::new(Vec::<String>::new())?;
        s.distinguished_name.push(DnType::CommonName, "axion vmd guest engine");
        s.subject_alt_names = vec![SanType::IpAddress([127, 0, 0, 1].into())];
        s.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let sk = KeyPair::generate()?;
        let sc = s.signed_by(&sk, &ca, &ca_key)?;

        let mut c = CertificateParams::new(Vec::<String>::new())?;
        c.distinguished_name.push(DnType::CommonName, "axion vmd");
        c.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let ck = KeyPair::generate()?;
        let cc = c.signed_by(&ck, &ca, &ca_key)?;

        write_private(&dir.join("ca.pem"), &ca.pem())?;
        write_private(&dir.join("server-cert.pem"), &sc.pem())?;
        write_private(&dir.join("server-key.pem"), &sk.serialize_pem())?;
        write_private(&dir.join("cert.pem"), &cc.pem())?;
        write_private(&dir.join("key.pem"), &ck.serialize_pem())?;
        // The CA key is not kept: nothing else is ever signed.
    }
    let read = |n: &str| std::fs::read_to_string(dir.join(n)).with_context(|| format!("reading {}", dir.join(n).display()));
    Ok(Certs {
        dir: dir.to_owned(),
        ca: read("ca.pem")?,
        server_cert: read("server-cert.pem")?,
        server_key: read("server-key.pem")?,
        client_cert: read("cert.pem")?,
        client_key: read("key.pem")?,
    })
}
