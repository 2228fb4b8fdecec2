//! `cargo xtask keygen` and the signing half of `publish --sign-key`: a cosign-compatible
//! signature (see the `signing` crate for the format and why) of the pushed artifact's
//! manifest, pushed beside it under the tag `sha256-HEX.sig` of the same repository.
//!
//! The signed payload carries two optional claims the guest's update agent checks:
//! `axion.profile` (the profile the artifact was built from) and `axion.version` (the
//! version it reports, see [`crate::image::release_version`]).

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use signing::SigningKey;

use super::oci::{self, OciError, Reference};

/// `cargo xtask keygen`'s options.
#[derive(Debug, Clone, clap::Args)]
pub struct KeygenArgs {
    /// Writes PREFIX.key (private, mode 0600) and PREFIX.pub; neither may exist yet.
    #[arg(long, default_value = "axion")]
    pub out: PathBuf,
}

/// `cargo xtask keygen`: a new ECDSA P-256 key pair for `publish --sign-key`.
pub fn keygen(args: &KeygenArgs) -> Result<()> {
    let (private, public) = keygen_files(&args.out)?;
    let key = signing::PublicKey::from_pem(&std::fs::read_to_string(&public)?)?;
    println!("private key {} (keep it secret)", private.display());
    println!("public key  {} (key id {})", public.display(), key.key_id());
    println!(
        "images trust it when a profile names it: [update] trusted-keys = [\"{}\"]",
        public.display()
    );
    Ok(())
}

/// Writes `PREFIX.key` and `PREFIX.pub`; refuses to replace either.
pub fn keygen_files(prefix: &Path) -> Result<(PathBuf, PathBuf)> {
    let private = prefix.with_extension("key");
    let public = prefix.with_extension("pub");
    for p in [&private, &public] {
        if p.exists() {
            bail!(
                "{} exists already; remove it or pick another --out",
                p.display()
            );
        }
    }
    let (priv_pem, pub_pem) = SigningKey::generate()?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&private)
        .with_context(|| format!("cannot create {}", private.display()))?;
    f.write_all(priv_pem.as_bytes())?;
    f.sync_all()?;
    crate::image::write_atomic(&public, pub_pem.as_bytes())?;
    Ok((private, public))
}

/// Reads a private key made by [`keygen`].
pub fn load_key(path: &Path) -> Result<SigningKey> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the signing key {}", path.display()))?;
    SigningKey::from_pem(&text).with_context(|| format!("{}", path.display()))
}

/// Signs the manifest `digest` pushed at `reference` with `key` and pushes the signature
/// manifest; returns its tag.
pub fn push_signature(
    reference: &str,
    digest: &str,
    key: &SigningKey,
    claims: &BTreeMap<String, String>,
) -> Result<String> {
    let r = Reference::parse(reference)?;
    let identity = format!("{}/{}", r.registry, r.repository);
    let payload = signing::payload(&identity, digest, claims);
    let signature = key.sign(&payload)?;
    let key_id = key.public_key().key_id();
    let manifest = signing::signature_manifest(&payload, &signature, &key_id);
    let c = oci::client()?;
    let payload_digest = signing::sha256_digest(&payload);
    let config = signing::signature_config(&payload_digest);
    for blob in [&config, &payload] {
        oci::upload_blob(
            &c,
            &r,
            &signing::sha256_digest(blob),
            blob.len() as u64,
            reqwest::blocking::Body::from(blob.to_vec()),
        )?;
    }
    let tag = signing::signature_tag(digest)?;
    let url = format!("{}/manifests/{tag}", r.base());
    oci::check(
        &url,
        c.put(&url)
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/vnd.oci.image.manifest.v1+json",
            )
            .body(manifest)
            .send()
            .map_err(|source| OciError::Http {
                url: url.clone(),
                source,
            })?,
    )?;
    Ok(tag)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keygen_writes_a_private_key_only_its_owner_reads_and_never_replaces_one() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let prefix = d.path().join("release");
        let (private, public) = keygen_files(&prefix).unwrap();
        assert_eq!(
            std::fs::metadata(&private).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let key = load_key(&private).unwrap();
        let trusted = signing::public_keys(&std::fs::read_to_string(&public).unwrap()).unwrap();
        assert_eq!(trusted, vec![key.public_key()]);
        let e = keygen_files(&prefix).unwrap_err().to_string();
        assert!(e.contains("exists already"), "{e}");
        let e = format!("{:#}", load_key(&public).err().unwrap());
        assert!(e.contains("not an ECDSA P-256 key in PKCS#8"), "{e}");
    }
}

#[cfg(test)]
mod registry_tests {
    use super::*;

    /// Push a small artifact and its signature to a real registry (Debian's docker-registry on
    /// 127.0.0.1), then read both back the way the guest does and verify.
    #[test]
    fn a_pushed_signature_verifies_against_the_pushed_manifest() {
        let registry = match test_support::registry::Registry::start() {
            Ok(r) => r,
            Err(e) => {
                test_skip::skip(format!("no local registry: {e}"));
                return;
            }
        };
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("axion-p-1.vmlinuz");
        std::fs::write(&file, b"kernel").unwrap();
        let reference = format!("{}/axion/p:1", registry.host());
        let digest = oci::push(&reference, d.path(), &[file], &[]).unwrap();
        let (private, public) = keygen_files(&d.path().join("k")).unwrap();
        let key = load_key(&private).unwrap();
        let claims = BTreeMap::from([("axion.version".to_owned(), "1".to_owned())]);
        let tag = push_signature(&reference, &digest, &key, &claims).unwrap();

        let c = oci::client().unwrap();
        let base = Reference::parse(&reference).unwrap().base();
        let get = |url: String| {
            c.get(&url)
                .header(
                    reqwest::header::ACCEPT,
                    "application/vnd.oci.image.manifest.v1+json",
                )
                .send()
                .unwrap()
                .error_for_status()
                .unwrap()
                .bytes()
                .unwrap()
                .to_vec()
        };
        let manifest = get(format!("{base}/manifests/{tag}"));
        let layers = signing::signature_layers(&manifest).unwrap();
        assert_eq!(layers.len(), 1, "{}", String::from_utf8_lossy(&manifest));
        let payload = get(format!("{base}/blobs/{}", layers[0].digest));
        let trusted = signing::public_keys(&std::fs::read_to_string(public).unwrap()).unwrap();
        let v = signing::verify(
            &trusted,
            &payload,
            &layers[0].signature,
            layers[0].key_id.as_deref(),
            &digest,
        )
        .unwrap();
        assert_eq!(v.optional["axion.version"], "1");
        assert_eq!(v.docker_reference, format!("{}/axion/p", registry.host()));
    }
}
