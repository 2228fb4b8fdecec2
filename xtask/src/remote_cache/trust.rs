//! Signed cache entries: an entry pushed with a signing key gets a cosign-format signature
//! (crates/signing) of its manifest's digest under the tag `sha256-HEX.sig` of the same
//! repository, as `publish --sign-key` signs images. A machine that trusts keys
//! (`build-cache.trusted-keys`) uses an entry only when one of those keys signed it, for this
//! package and this key; without trusted keys every entry is used (its digests are still
//! checked), as before signatures existed.
//!
//! The signed payload's optional claims `axion.package` and `axion.key` name the entry, so a
//! signature cannot be moved to another package. Several keys may sign one entry: a push
//! adds its layer to the signature manifest and keeps the others.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use registry::{Descriptor, RegistryError, Session};
use serde_json::{json, Value};
use signing::{PublicKey, SigningKey};

const CLAIM_PACKAGE: &str = "axion.package";
const CLAIM_KEY: &str = "axion.key";
const MT_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MT_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";

/// The claims a cache entry's signature carries.
fn claims(name: &str, key: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (CLAIM_PACKAGE.to_owned(), name.to_owned()),
        (CLAIM_KEY.to_owned(), key.to_owned()),
    ])
}

/// Checks that one of `trusted` signed the entry manifest `digest` of package `name` at
/// build key `key`. Err says why not (no signature, unknown key, bad signature, other entry).
pub async fn check(
    s: &mut Session<'_>,
    trusted: &[PublicKey],
    digest: &str,
    name: &str,
    key: &str,
) -> Result<String> {
    let tag = signing::signature_tag(digest)?;
    let body = match s.descriptor(&tag).await {
        Ok((_, body, _)) => body,
        Err(RegistryError::NotFound { .. }) => {
            bail!("the entry is not signed, and this machine trusts only signed entries")
        }
        Err(e) => return Err(e.into()),
    };
    let layers = signing::signature_layers(&body)?;
    let mut why = Vec::new();
    for l in &layers {
        let d = Descriptor {
            media_type: signing::SIGNATURE_MEDIA_TYPE.into(),
            digest: l.digest.clone(),
            size: l.size,
            platform: None,
        };
        let payload = s.blob_bytes(&d).await?;
        match signing::verify(trusted, &payload, &l.signature, l.key_id.as_deref(), digest) {
            Ok(v) if v.optional == claims(name, key) => return Ok(v.key_id),
            Ok(v) => why.push(format!("key {} signed it for other claims", v.key_id)),
            Err(e) => why.push(e.to_string()),
        }
    }
    if why.is_empty() {
        bail!("its signature manifest {tag} has no signature");
    }
    bail!("no trusted signature: {}", why.join("; "))
}

/// Signs the entry manifest `digest` of `name` at `key` and pushes the signature (adding to
/// the signatures already there, unless this key's is one of them). Ok(false): it was there.
pub async fn sign(
    s: &mut Session<'_>,
    identity: &str,
    signer: &SigningKey,
    digest: &str,
    name: &str,
    key: &str,
    scratch: &Path,
) -> Result<bool> {
    let tag = signing::signature_tag(digest)?;
    let key_id = signer.public_key().key_id();
    let mut layers: Vec<Value> = Vec::new();
    match s.descriptor(&tag).await {
        Ok((_, body, _)) => {
            let old: Value = serde_json::from_slice(&body).context("the signature manifest")?;
            for l in old["layers"].as_array().into_iter().flatten() {
                if l["annotations"][signing::KEY_ID_ANNOTATION] == key_id.as_str() {
                    return Ok(false);
                }
                layers.push(l.clone());
            }
        }
        Err(RegistryError::NotFound { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    let payload = signing::payload(identity, digest, &claims(name, key));
    let signature = signer.sign(&payload)?;
    let ours: Value =
        serde_json::from_slice(&signing::signature_manifest(&payload, &signature, &key_id))?;
    layers.extend(ours["layers"].as_array().cloned().unwrap_or_default());
    // cosign's config lists every layer's digest as a diff id.
    let diff_ids: Vec<Value> = layers.iter().map(|l| l["digest"].clone()).collect();
    let config = serde_json::to_vec(&json!({
        "architecture": "",
        "config": {},
        "created": "0001-01-01T00:00:00Z",
        "history": [{ "created": "0001-01-01T00:00:00Z" }],
        "os": "",
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
    }))?;
    for (file, bytes) in [("sig-payload.json", &payload), ("sig-config.json", &config)] {
        let path = scratch.join(file);
        std::fs::write(&path, bytes).with_context(|| format!("cannot write {}", path.display()))?;
        let d = signing::sha256_digest(bytes);
        if !s.blob_exists(&d).await? {
            s.upload_blob(
                &path,
                &d,
                bytes.len() as u64,
                registry::UPLOAD_CHUNK,
                |_| {},
            )
            .await?;
        }
    }
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MT_OCI_MANIFEST,
        "config": {
            "mediaType": MT_OCI_CONFIG,
            "size": config.len(),
            "digest": signing::sha256_digest(&config),
        },
        "layers": layers,
    }))?;
    s.put_manifest(&tag, MT_OCI_MANIFEST, &manifest).await?;
    Ok(true)
}

/// Trusted public keys from PEM files (each may hold several keys).
pub fn load_trusted(paths: &[std::path::PathBuf]) -> Result<Vec<PublicKey>> {
    let mut out = Vec::new();
    for p in paths {
        let text = std::fs::read_to_string(p)
            .with_context(|| format!("cannot read the trusted key {}", p.display()))?;
        let keys = signing::public_keys(&text).with_context(|| format!("{}", p.display()))?;
        if keys.is_empty() {
            bail!("{}: no PUBLIC KEY in it", p.display());
        }
        out.extend(keys);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_binds_the_package_and_its_key() {
        let (private, public) = SigningKey::generate().unwrap();
        let signer = SigningKey::from_pem(&private).unwrap();
        let trusted = signing::public_keys(&public).unwrap();
        let digest = format!("sha256:{}", "c".repeat(64));
        let payload = signing::payload("127.0.0.1:5000/cache", &digest, &claims("init", "k1"));
        let sig = signer.sign(&payload).unwrap();
        let v = signing::verify(&trusted, &payload, &sig, None, &digest).unwrap();
        assert_eq!(v.optional, claims("init", "k1"));
        assert_ne!(v.optional, claims("engine", "k1"));
        assert_ne!(v.optional, claims("init", "k2"));
        let (_, other) = SigningKey::generate().unwrap();
        let others = signing::public_keys(&other).unwrap();
        assert!(signing::verify(&others, &payload, &sig, None, &digest).is_err());
    }

    #[test]
    fn trusted_key_files_must_hold_a_key() {
        let d = tempfile::tempdir().unwrap();
        let (_, public) = SigningKey::generate().unwrap();
        std::fs::write(d.path().join("a.pub"), &public).unwrap();
        std::fs::write(d.path().join("empty.pub"), "").unwrap();
        assert_eq!(load_trusted(&[d.path().join("a.pub")]).unwrap().len(), 1);
        assert!(load_trusted(&[d.path().join("empty.pub")]).is_err());
        assert!(load_trusted(&[d.path().join("missing.pub")]).is_err());
    }
}
