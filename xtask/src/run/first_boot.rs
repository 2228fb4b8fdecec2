//! First-boot settings `run` hands the guest through QEMU fw_cfg, in the NoCloud shapes
//! init reads (see docs/first-boot.md):
//!
//! - `opt/axion/user-data`: a `#cloud-config` document: the host name, the SSH keys, and
//!   `write_files` with the engine's TLS material (see [`super::docker_certs`]);
//! - `opt/axion/meta-data`: the instance id, a hash of the user-data, so the guest treats
//!   new settings as a new instance (and applies them) but keeps its identity across runs
//!   with the same settings.
//!
//! fw_cfg works for every boot path (direct kernel, GRUB from a disk, the ISO), which the
//! kernel command line does not: GRUB's command line is baked into the image.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::docker_certs::DockerCerts;

/// Where the engine keeps its TLS material in the guest (packages/engine/README.md).
const ENGINE_TLS_DIR: &str = "/var/lib/axion-engine/tls";

#[derive(Debug, Clone, Default)]
pub struct FirstBoot {
    pub hostname: Option<String>,
    pub ssh_authorized_keys: Vec<String>,
    pub docker: Option<DockerCerts>,
}

#[derive(Serialize)]
struct CloudConfig<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    hostname: Option<&'a str>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    ssh_authorized_keys: &'a [String],
    #[serde(skip_serializing_if = "Vec::is_empty")]
    write_files: Vec<WriteFile<'a>>,
}

#[derive(Serialize)]
struct WriteFile<'a> {
    path: String,
    content: &'a str,
    permissions: &'static str,
}

impl FirstBoot {
    /// The `#cloud-config` document. JSON is YAML, and serde_json gets the quoting of PEM
    /// text right, so the body is written as JSON.
    pub fn user_data(&self) -> String {
        let mut write_files = Vec::new();
        if let Some(d) = &self.docker {
            let file = |name: &str, content, permissions| WriteFile {
                path: format!("{ENGINE_TLS_DIR}/{name}"),
                content,
                permissions,
            };
            write_files.push(file("client-ca.pem", d.ca_pem.as_str(), "0644"));
            write_files.push(file("ca.pem", d.ca_pem.as_str(), "0644"));
            write_files.push(file("server-cert.pem", d.server_cert_pem.as_str(), "0644"));
            write_files.push(file("server-key.pem", d.server_key_pem.as_str(), "0600"));
        }
        let doc = CloudConfig {
            hostname: self.hostname.as_deref(),
            ssh_authorized_keys: &self.ssh_authorized_keys,
            write_files,
        };
        format!(
            "#cloud-config\n{}\n",
            serde_json::to_string_pretty(&doc).expect("plain data serializes")
        )
    }

    pub fn meta_data(&self) -> String {
        let hash = hex::encode(Sha256::digest(self.user_data().as_bytes()));
        let mut m = format!("instance-id: axion-run-{}\n", &hash[..16]);
        if let Some(h) = &self.hostname {
            m.push_str(&format!("local-hostname: {h}\n"));
        }
        m
    }

    /// Writes the two documents into `dir` and returns the fw_cfg entries that carry them.
    pub fn write(&self, dir: &Path) -> Result<Vec<(String, PathBuf)>> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let mut entries = Vec::new();
        for (name, text) in [
            ("user-data", self.user_data()),
            ("meta-data", self.meta_data()),
        ] {
            let path = dir.join(name);
            crate::image::write_atomic(&path, text.as_bytes())?;
            // user-data holds the engine's server key: only the owner may read it.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .with_context(|| format!("cannot restrict {}", path.display()))?;
            entries.push((format!("opt/axion/{name}"), path));
        }
        Ok(entries)
    }
}

/// The SSH public key to put into the guest: `--ssh-key FILE`, else the user's first
/// `~/.ssh/id_{ed25519,ecdsa,rsa}.pub` (as multipass and lima do), else none.
pub fn ssh_key(explicit: Option<&Path>) -> Result<Option<String>> {
    let candidates: Vec<PathBuf> = match explicit {
        Some(p) => vec![p.to_owned()],
        None => {
            let Some(home) = dirs::home_dir() else {
                return Ok(None);
            };
            ["id_ed25519.pub", "id_ecdsa.pub", "id_rsa.pub"]
                .iter()
                .map(|n| home.join(".ssh").join(n))
                .collect()
        }
    };
    for path in candidates {
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if explicit.is_none() && e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("cannot read the SSH public key {}", path.display()))
            }
        };
        let key = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with('#'))
            .unwrap_or("");
        if !key.starts_with("ssh-") && !key.starts_with("ecdsa-") && !key.starts_with("sk-") {
            bail!(
                "{} is not an SSH public key (expected a line like `ssh-ed25519 AAAA... comment`)",
                path.display()
            );
        }
        return Ok(Some(key.to_string()));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn certs() -> DockerCerts {
        DockerCerts {
            client_dir: "/c".into(),
            ca_pem: "-----BEGIN CERTIFICATE-----\nCA\n-----END CERTIFICATE-----\n".into(),
            server_cert_pem: "S\n".into(),
            server_key_pem: "K\n".into(),
        }
    }

    #[test]
    fn user_data_is_cloud_config_with_the_engine_files() {
        let fb = FirstBoot {
            hostname: Some("box".into()),
            ssh_authorized_keys: vec!["ssh-ed25519 AAAA me".into()],
            docker: Some(certs()),
        };
        let text = fb.user_data();
        assert!(text.starts_with("#cloud-config\n"), "{text}");
        let v: serde_json::Value =
            serde_json::from_str(text.strip_prefix("#cloud-config\n").unwrap()).unwrap();
        assert_eq!(v["hostname"], "box");
        assert_eq!(v["ssh_authorized_keys"][0], "ssh-ed25519 AAAA me");
        let files = v["write_files"].as_array().unwrap();
        let key = files
            .iter()
            .find(|f| f["path"] == "/var/lib/axion-engine/tls/server-key.pem")
            .unwrap();
        assert_eq!(
            (key["content"].as_str(), key["permissions"].as_str()),
            (Some("K\n"), Some("0600"))
        );
        let ca = files
            .iter()
            .find(|f| f["path"] == "/var/lib/axion-engine/tls/client-ca.pem")
            .unwrap();
        assert_eq!(ca["content"].as_str().unwrap(), certs().ca_pem);
        // Nothing asked for, nothing written.
        assert_eq!(FirstBoot::default().user_data(), "#cloud-config\n{}\n");
    }

    #[test]
    fn instance_id_follows_the_settings() {
        let a = FirstBoot {
            hostname: Some("a".into()),
            ..Default::default()
        };
        let b = FirstBoot {
            hostname: Some("b".into()),
            ..Default::default()
        };
        assert_eq!(a.meta_data(), a.clone().meta_data());
        assert_ne!(a.meta_data().lines().next(), b.meta_data().lines().next());
        assert!(a.meta_data().contains("local-hostname: a\n"));
    }

    #[test]
    fn the_documents_are_private_files() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let fb = FirstBoot {
            docker: Some(certs()),
            ..Default::default()
        };
        let entries = fb.write(dir.path()).unwrap();
        assert_eq!(
            entries.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
            ["opt/axion/user-data", "opt/axion/meta-data"]
        );
        for (_, path) in &entries {
            assert_eq!(
                std::fs::metadata(path).unwrap().permissions().mode() & 0o777,
                0o600,
                "{}",
                path.display()
            );
        }
        assert_eq!(
            std::fs::read_to_string(&entries[0].1).unwrap(),
            fb.user_data()
        );
    }

    #[test]
    fn ssh_keys_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("k.pub");
        std::fs::write(&good, "# mine\nssh-ed25519 AAAAC3Nza me@host\n").unwrap();
        assert_eq!(
            ssh_key(Some(&good)).unwrap().as_deref(),
            Some("ssh-ed25519 AAAAC3Nza me@host")
        );
        let private = dir.path().join("k");
        std::fs::write(&private, "-----BEGIN OPENSSH PRIVATE KEY-----\n").unwrap();
        let e = ssh_key(Some(&private)).unwrap_err().to_string();
        assert!(e.contains("not an SSH public key"), "{e}");
        let e = format!(
            "{:#}",
            ssh_key(Some(&dir.path().join("missing.pub"))).unwrap_err()
        );
        assert!(e.contains("missing.pub"), "{e}");
    }
}
