//! The registry side: resolve the configured reference to the artifact `cargo xtask publish
//! --push --sign-key` made, verify its cosign signature, and download the two boot files.
//!
//! Nothing here writes outside the staging folder: the manifest's digest is computed over the
//! bytes received, the signature must cover exactly that digest, and each boot file is
//! streamed to staging with its size and sha256 checked against the (signed) manifest.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use registry::{Client, Descriptor, Reference, RegistryError, Session};
use serde_json::Value;

pub const ARTIFACT_TYPE: &str = "application/vnd.axion.image.v1";
const TITLE: &str = "org.opencontainers.image.title";

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("'{0}' is not an image reference")]
    Reference(String),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("{0} is not an axion artifact: {1}")]
    NotAnArtifact(String, String),
    #[error("{0} has no signature ({1}); publish it with --sign-key")]
    Unsigned(String, String),
    #[error("signature of {0} refused: {1}")]
    Signature(String, signing::SignError),
}

/// A verified artifact: its signed claims and the boot files' descriptors.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub reference: String,
    pub digest: String,
    pub key_id: String,
    pub claims: BTreeMap<String, String>,
    /// `vmlinuz` and `initrd.zst`, from the layers titled `*.vmlinuz` and `*.initrd.zst`.
    pub kernel: Descriptor,
    pub initrd: Descriptor,
}

impl Candidate {
    pub fn version(&self) -> Option<&str> {
        self.claims.get("axion.version").map(String::as_str)
    }
    pub fn profile(&self) -> Option<&str> {
        self.claims.get("axion.profile").map(String::as_str)
    }
}

/// The boot layers of an artifact manifest.
fn boot_layers(url: &str, body: &[u8]) -> Result<(Descriptor, Descriptor), FetchError> {
    let bad = |why: String| FetchError::NotAnArtifact(url.to_owned(), why);
    let doc: Value = serde_json::from_slice(body).map_err(|e| bad(e.to_string()))?;
    if doc["artifactType"] != ARTIFACT_TYPE {
        return Err(bad(format!("artifactType is {}", doc["artifactType"])));
    }
    let layers = doc["layers"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    let find = |suffix: &str| -> Result<Descriptor, FetchError> {
        let found: Vec<&Value> = layers
            .iter()
            .filter(|l| {
                l["annotations"][TITLE]
                    .as_str()
                    .is_some_and(|t| t.ends_with(suffix) && !t.contains('/'))
            })
            .collect();
        let [l] = found.as_slice() else {
            return Err(bad(format!(
                "expected one layer titled *{suffix}, found {}",
                found.len()
            )));
        };
        serde_json::from_value((*l).clone()).map_err(|e| bad(e.to_string()))
    };
    Ok((find(".vmlinuz")?, find(".initrd.zst")?))
}

pub fn client(insecure: Vec<String>) -> Client {
    Client::new(
        concat!("axion-update/", env!("CARGO_PKG_VERSION")),
        insecure,
    )
}

/// Resolves `reference`, fetches and verifies its signature with `trusted`.
pub async fn check(
    client: &Client,
    reference: &str,
    trusted: &[signing::PublicKey],
) -> Result<Candidate, FetchError> {
    let r = Reference::parse(reference).map_err(|_| FetchError::Reference(reference.into()))?;
    let mut s = client.session(&r, None);
    let (_, body, digest) = s.manifest(r.object()).await?;
    let (kernel, initrd) = boot_layers(reference, &body)?;
    let (key_id, claims) = verify_signature(&mut s, reference, &digest, trusted).await?;
    Ok(Candidate {
        reference: reference.into(),
        digest,
        key_id,
        claims,
        kernel,
        initrd,
    })
}

async fn verify_signature(
    s: &mut Session<'_>,
    reference: &str,
    digest: &str,
    trusted: &[signing::PublicKey],
) -> Result<(String, BTreeMap<String, String>), FetchError> {
    let refused = |e| FetchError::Signature(reference.into(), e);
    if trusted.is_empty() {
        return Err(refused(signing::SignError::NoTrustedKeys));
    }
    let tag = signing::signature_tag(digest).map_err(refused)?;
    let (_, sig_manifest, _) = s
        .manifest(&tag)
        .await
        .map_err(|e| FetchError::Unsigned(reference.into(), e.to_string()))?;
    let layers = signing::signature_layers(&sig_manifest).map_err(refused)?;
    let mut last = None;
    for l in &layers {
        let payload = s
            .blob_bytes(&Descriptor {
                media_type: signing::SIGNATURE_MEDIA_TYPE.into(),
                digest: l.digest.clone(),
                size: l.size,
                platform: None,
            })
            .await?;
        match signing::verify(trusted, &payload, &l.signature, l.key_id.as_deref(), digest) {
            Ok(v) => return Ok((v.key_id, v.optional)),
            Err(e) => last = Some(e),
        }
    }
    Err(match last {
        Some(e) => refused(e),
        None => FetchError::Unsigned(reference.into(), format!("{tag} holds no signature")),
    })
}

/// Downloads the boot files into `staging` (verified); returns `(vmlinuz, initrd.zst)`.
pub async fn download(
    client: &Client,
    c: &Candidate,
    staging: &Path,
) -> Result<(PathBuf, PathBuf), FetchError> {
    let r =
        Reference::parse(&c.reference).map_err(|_| FetchError::Reference(c.reference.clone()))?;
    let mut s = client.session(&r, None);
    std::fs::create_dir_all(staging).map_err(|source| RegistryError::Io {
        path: staging.display().to_string(),
        source,
    })?;
    let k = staging.join("vmlinuz");
    let i = staging.join("initrd.zst");
    s.blob_to_file(&c.kernel, &k).await?;
    s.blob_to_file(&c.initrd, &i).await?;
    Ok((k, i))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_axion_artifacts_with_both_boot_files_are_candidates() {
        let d = |t: &str| {
            serde_json::json!({
                "mediaType": "application/octet-stream",
                "digest": format!("sha256:{}", "a".repeat(64)),
                "size": 3,
                "annotations": { TITLE: t }
            })
        };
        let m = |layers: Vec<Value>, at: &str| {
            serde_json::to_vec(&serde_json::json!({
                "schemaVersion": 2, "artifactType": at, "layers": layers
            }))
            .unwrap()
        };
        let good = m(
            vec![
                d("axion-qemu-0.1.0.vmlinuz"),
                d("axion-qemu-0.1.0.initrd.zst"),
                d("x.raw"),
            ],
            ARTIFACT_TYPE,
        );
        let (k, i) = boot_layers("r", &good).unwrap();
        assert_eq!((k.size, i.size), (3, 3));
        let image = m(vec![d("a.vmlinuz"), d("a.initrd.zst")], "");
        assert!(boot_layers("r", &image).is_err());
        let missing = m(vec![d("a.vmlinuz")], ARTIFACT_TYPE);
        assert!(boot_layers("r", &missing).is_err());
        let two = m(
            vec![d("a.vmlinuz"), d("b.vmlinuz"), d("a.initrd.zst")],
            ARTIFACT_TYPE,
        );
        assert!(boot_layers("r", &two).is_err());
        assert!(boot_layers("r", b"{").is_err());
    }
}

/// Against Debian's docker-registry on 127.0.0.1: artifacts pushed the way `cargo xtask
/// publish --push --sign-key` pushes them, then checked and downloaded as `apply` does.
#[cfg(test)]
mod registry_tests {
    use super::*;
    use signing::SigningKey;

    struct Pushed {
        reference: String,
        kernel: Vec<u8>,
    }

    /// Pushes an artifact (vmlinuz, initrd.zst; `size_lie` added to the initrd's declared
    /// size) under `tag`, signed by `key` when given.
    async fn push(
        host: &str,
        tag: &str,
        key: Option<&SigningKey>,
        size_lie: u64,
        dir: &Path,
    ) -> Pushed {
        let reference = format!("{host}/axion/qemu:{tag}");
        let c = client(vec![]);
        let r = Reference::parse(&reference).unwrap();
        let mut s = c.session(&r, None).for_push();
        let kernel = format!("kernel {tag}").into_bytes();
        let mut layers = Vec::new();
        for (name, bytes) in [
            ("axion-qemu-0.1.0.vmlinuz", kernel.clone()),
            ("axion-qemu-0.1.0.initrd.zst", b"initramfs".to_vec()),
        ] {
            let p = dir.join(name);
            std::fs::write(&p, &bytes).unwrap();
            let digest = signing::sha256_digest(&bytes);
            let n = bytes.len() as u64;
            s.upload_blob(&p, &digest, n, 1 << 20, |_| {})
                .await
                .unwrap();
            let lie = if name.ends_with(".zst") { size_lie } else { 0 };
            layers.push(serde_json::json!({
                "mediaType": "application/octet-stream", "digest": digest, "size": n + lie,
                "annotations": { TITLE: name }
            }));
        }
        let empty = dir.join("empty");
        std::fs::write(&empty, b"{}").unwrap();
        let ed = signing::sha256_digest(b"{}");
        s.upload_blob(&empty, &ed, 2, 1 << 20, |_| {})
            .await
            .unwrap();
        let m = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "artifactType": ARTIFACT_TYPE,
            "config": { "mediaType": "application/vnd.oci.empty.v1+json", "digest": ed, "size": 2 },
            "layers": layers,
        }))
        .unwrap();
        let mt = "application/vnd.oci.image.manifest.v1+json";
        s.put_manifest(tag, mt, &m).await.unwrap();
        if let Some(key) = key {
            let digest = signing::sha256_digest(&m);
            let claims = [
                ("axion.profile".to_owned(), "qemu".to_owned()),
                ("axion.version".to_owned(), "0.2.0".to_owned()),
            ]
            .into();
            let payload = signing::payload(&format!("{host}/axion/qemu"), &digest, &claims);
            let sig = key.sign(&payload).unwrap();
            let sm = signing::signature_manifest(&payload, &sig, &key.public_key().key_id());
            let pd = signing::sha256_digest(&payload);
            let config = signing::signature_config(&pd);
            for (i, blob) in [payload, config].iter().enumerate() {
                let p = dir.join(format!("sig{i}"));
                std::fs::write(&p, blob).unwrap();
                let d = signing::sha256_digest(blob);
                s.upload_blob(&p, &d, blob.len() as u64, 1 << 20, |_| {})
                    .await
                    .unwrap();
            }
            s.put_manifest(&signing::signature_tag(&digest).unwrap(), mt, &sm)
                .await
                .unwrap();
        }
        Pushed { reference, kernel }
    }

    #[test]
    fn signed_artifacts_pass_and_forged_or_truncated_ones_are_refused() {
        // The fixture starts (and waits for) the registry with blocking calls: outside tokio.
        let registry = match test_support::registry::Registry::start() {
            Ok(r) => r,
            Err(e) => {
                test_skip::skip(format!("no local registry: {e}"));
                return;
            }
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(refusals(registry.host()));
    }

    async fn refusals(host: String) {
        let d = tempfile::tempdir().unwrap();
        let (a, _) = SigningKey::generate().unwrap();
        let (b, _) = SigningKey::generate().unwrap();
        let (ours, theirs) = (
            SigningKey::from_pem(&a).unwrap(),
            SigningKey::from_pem(&b).unwrap(),
        );
        let trusted = vec![ours.public_key()];
        let c = client(vec![]);

        let good = push(&host, "good", Some(&ours), 0, d.path()).await;
        let cand = check(&c, &good.reference, &trusted).await.unwrap();
        assert_eq!(cand.version(), Some("0.2.0"));
        assert_eq!(cand.profile(), Some("qemu"));
        let staging = d.path().join("staging");
        let (k, _) = download(&c, &cand, &staging).await.unwrap();
        assert_eq!(std::fs::read(k).unwrap(), good.kernel);

        let unsigned = push(&host, "unsigned", None, 0, d.path()).await;
        let e = check(&c, &unsigned.reference, &trusted).await.unwrap_err();
        assert!(matches!(e, FetchError::Unsigned(..)), "{e}");

        let stranger = push(&host, "stranger", Some(&theirs), 0, d.path()).await;
        let e = check(&c, &stranger.reference, &trusted).await.unwrap_err();
        assert!(
            matches!(
                e,
                FetchError::Signature(_, signing::SignError::UnknownKey(_))
            ),
            "{e}"
        );
        assert!(matches!(
            check(&c, &good.reference, &[]).await.unwrap_err(),
            FetchError::Signature(_, signing::SignError::NoTrustedKeys)
        ));

        // The signed manifest promises one byte more than the registry serves: the check
        // passes (the signature is good) and the download refuses the short blob.
        let short = push(&host, "short", Some(&ours), 1, d.path()).await;
        let cand = check(&c, &short.reference, &trusted).await.unwrap();
        let e = download(&c, &cand, &d.path().join("short"))
            .await
            .unwrap_err();
        assert!(
            matches!(e, FetchError::Registry(RegistryError::Size { .. })),
            "{e}"
        );
    }
}
