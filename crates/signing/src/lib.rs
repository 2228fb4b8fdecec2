//! Signatures of axion's published artifacts, in cosign's format (Sigstore), so that
//! `cosign verify --key axion.pub --insecure-ignore-tlog REF` checks what `cargo xtask publish
//! --sign-key` signed and the guest's `axion-update` checks the same bytes.
//!
//! Why this format rather than a TUF repository (`tough`, as Bottlerocket does): the
//! artifacts already live in an OCI registry as one manifest whose layers carry every file's
//! digest, so one signature over that manifest's digest covers every byte, and cosign stores
//! it beside the artifact in the same registry (tag `sha256-HEX.sig`) with nothing else to
//! host. The guest verifies it with `ring`, which rustls already links into every guest
//! binary; `tough` would add its own metadata repository, expiry management and a dozen
//! crates to a static musl binary. What TUF adds (role separation, freeze attacks through
//! expiry) is not needed for a key the operator holds; the downgrade check of the agent
//! covers replay of an older signed artifact.
//!
//! The pieces, as cosign writes them:
//! - keys: ECDSA P-256 with SHA-256; the public key a PEM `PUBLIC KEY` (SubjectPublicKeyInfo,
//!   what `cosign verify --key` reads), the private key a PEM `PRIVATE KEY` (unencrypted
//!   PKCS#8; `cosign import-key-pair` takes it; keep the file mode 0600);
//! - the payload: the "simple signing" JSON [`payload`] naming the manifest digest;
//! - the signature: ASN.1 DER ECDSA over the payload bytes, base64, in the layer annotation
//!   `dev.cosignproject.cosign/signature` of a manifest whose one layer is the payload
//!   ([`signature_manifest`]), pushed under the tag [`signature_tag`].
//!
//! The layer also carries `dev.axion.signing/key-id` (the signer's [`PublicKey::key_id`]), an
//! unsigned hint that only lets a refusal say "unknown key" instead of "bad signature".

use std::collections::BTreeMap;

use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair as _};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

pub const SIGNATURE_MEDIA_TYPE: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
pub const KEY_ID_ANNOTATION: &str = "dev.axion.signing/key-id";
pub const PAYLOAD_TYPE: &str = "cosign container image signature";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";

/// The DER prefix of a P-256 SubjectPublicKeyInfo (RFC 5480: id-ecPublicKey, prime256v1,
/// then a BIT STRING of 66 bytes); the 65-byte uncompressed point follows.
const SPKI_P256_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SignError {
    #[error("not a PEM '{label}' block: {why}")]
    Pem { label: &'static str, why: String },
    #[error(
        "the key is not an ECDSA P-256 key in PKCS#8 ({0}); make one with `cargo xtask keygen`"
    )]
    BadPrivateKey(String),
    #[error("the public key is not an ECDSA P-256 SubjectPublicKeyInfo")]
    BadPublicKey,
    #[error("cannot sign: {0}")]
    Sign(String),
    #[error("signed by key {0}, which this image does not trust")]
    UnknownKey(String),
    #[error("the signature does not verify with any trusted key ({0} tried)")]
    BadSignature(usize),
    #[error("no trusted keys: this image was built without one, so it accepts no update")]
    NoTrustedKeys,
    #[error("the signed payload is not a cosign simple-signing document: {0}")]
    BadPayload(String),
    #[error("the signature is for {signed}, the artifact is {actual}")]
    WrongDigest { signed: String, actual: String },
    #[error("'{0}' is not a sha256 digest")]
    NotADigest(String),
}

fn pem_decode(text: &str, label: &'static str) -> Result<Vec<u8>, SignError> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let bad = |why: &str| SignError::Pem {
        label,
        why: why.into(),
    };
    let start = text.find(&begin).ok_or_else(|| bad("no BEGIN line"))? + begin.len();
    let stop = text[start..].find(&end).ok_or_else(|| bad("no END line"))? + start;
    let b64: String = text[start..stop]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| bad(&e.to_string()))
}

fn pem_encode(der: &[u8], label: &str) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// A private key that signs (xtask side).
pub struct SigningKey {
    pair: EcdsaKeyPair,
    rng: SystemRandom,
}

impl SigningKey {
    /// A new key pair: `(private PEM, public PEM)`.
    pub fn generate() -> Result<(String, String), SignError> {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
            .map_err(|e| SignError::Sign(e.to_string()))?;
        let key = SigningKey::from_pkcs8(pkcs8.as_ref())?;
        Ok((
            pem_encode(pkcs8.as_ref(), "PRIVATE KEY"),
            key.public_key().to_pem(),
        ))
    }

    pub fn from_pem(text: &str) -> Result<Self, SignError> {
        let der = pem_decode(text, "PRIVATE KEY").map_err(|e| match e {
            SignError::Pem { why, .. } => SignError::BadPrivateKey(why),
            e => e,
        })?;
        SigningKey::from_pkcs8(&der)
    }

    fn from_pkcs8(der: &[u8]) -> Result<Self, SignError> {
        let rng = SystemRandom::new();
        let pair = EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, der, &rng)
            .map_err(|e| SignError::BadPrivateKey(e.to_string()))?;
        Ok(SigningKey { pair, rng })
    }

    pub fn public_key(&self) -> PublicKey {
        PublicKey {
            point: self.pair.public_key().as_ref().to_vec(),
        }
    }

    /// The base64 DER signature of `payload`, as cosign stores it.
    pub fn sign(&self, payload: &[u8]) -> Result<String, SignError> {
        let sig = self
            .pair
            .sign(&self.rng, payload)
            .map_err(|e| SignError::Sign(e.to_string()))?;
        Ok(base64::engine::general_purpose::STANDARD.encode(sig.as_ref()))
    }
}

/// A trusted public key (guest side).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    /// The uncompressed point (65 bytes, 0x04 first).
    point: Vec<u8>,
}

impl PublicKey {
    pub fn from_pem(text: &str) -> Result<Self, SignError> {
        let der = pem_decode(text, "PUBLIC KEY")?;
        let point = der
            .strip_prefix(&SPKI_P256_PREFIX[..])
            .filter(|p| p.len() == 65 && p[0] == 4)
            .ok_or(SignError::BadPublicKey)?;
        Ok(PublicKey {
            point: point.to_vec(),
        })
    }

    fn spki(&self) -> Vec<u8> {
        [&SPKI_P256_PREFIX[..], &self.point].concat()
    }

    pub fn to_pem(&self) -> String {
        pem_encode(&self.spki(), "PUBLIC KEY")
    }

    /// The first 16 hex digits of the SubjectPublicKeyInfo's sha256: a name for messages.
    pub fn key_id(&self) -> String {
        hex::encode(Sha256::digest(self.spki()))[..16].to_owned()
    }

    fn verifies(&self, payload: &[u8], sig: &[u8]) -> bool {
        signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_ASN1, &self.point)
            .verify(payload, sig)
            .is_ok()
    }
}

/// `sha256-HEX.sig`: where cosign keeps the signatures of the manifest `digest`.
pub fn signature_tag(digest: &str) -> Result<String, SignError> {
    let hex = digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| SignError::NotADigest(digest.into()))?;
    Ok(format!("sha256-{hex}.sig"))
}

/// The simple-signing payload for the manifest `digest` of `docker_reference`
/// (`REGISTRY/REPOSITORY`), with `optional` claims (signed too).
pub fn payload(
    docker_reference: &str,
    digest: &str,
    optional: &BTreeMap<String, String>,
) -> Vec<u8> {
    let doc = json!({
        "critical": {
            "identity": { "docker-reference": docker_reference },
            "image": { "docker-manifest-digest": digest },
            "type": PAYLOAD_TYPE,
        },
        "optional": if optional.is_empty() { Value::Null } else { json!(optional) },
    });
    serde_json::to_vec(&doc).unwrap_or_default()
}

/// The config blob of a signature manifest (cosign's shape: one "layer", the payload).
pub fn signature_config(payload_digest: &str) -> Vec<u8> {
    let doc = json!({
        "architecture": "",
        "config": {},
        "created": "0001-01-01T00:00:00Z",
        "history": [{ "created": "0001-01-01T00:00:00Z" }],
        "os": "",
        "rootfs": { "type": "layers", "diff_ids": [payload_digest] },
    });
    serde_json::to_vec(&doc).unwrap_or_default()
}

pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The manifest pushed under [`signature_tag`]: config [`signature_config`] and the payload
/// as its one layer, annotated with the signature and the signer's key id.
pub fn signature_manifest(payload: &[u8], signature: &str, key_id: &str) -> Vec<u8> {
    let payload_digest = sha256_digest(payload);
    let config = signature_config(&payload_digest);
    let doc = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": OCI_CONFIG,
            "size": config.len(),
            "digest": sha256_digest(&config),
        },
        "layers": [{
            "mediaType": SIGNATURE_MEDIA_TYPE,
            "size": payload.len(),
            "digest": payload_digest,
            "annotations": {
                SIGNATURE_ANNOTATION: signature,
                KEY_ID_ANNOTATION: key_id,
            },
        }],
    });
    serde_json::to_vec(&doc).unwrap_or_default()
}

/// One signature layer of a signature manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct SignatureLayer {
    pub digest: String,
    pub size: u64,
    pub signature: String,
    pub key_id: Option<String>,
}

/// The signature layers of a manifest fetched from [`signature_tag`] (other layers ignored).
pub fn signature_layers(manifest: &[u8]) -> Result<Vec<SignatureLayer>, SignError> {
    let doc: Value =
        serde_json::from_slice(manifest).map_err(|e| SignError::BadPayload(e.to_string()))?;
    let mut out = Vec::new();
    for l in doc["layers"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
        if l["mediaType"] != SIGNATURE_MEDIA_TYPE {
            continue;
        }
        let (Some(digest), Some(size), Some(sig)) = (
            l["digest"].as_str(),
            l["size"].as_u64(),
            l["annotations"][SIGNATURE_ANNOTATION].as_str(),
        ) else {
            continue;
        };
        out.push(SignatureLayer {
            digest: digest.into(),
            size,
            signature: sig.into(),
            key_id: l["annotations"][KEY_ID_ANNOTATION].as_str().map(Into::into),
        });
    }
    Ok(out)
}

/// What a verified payload says.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    /// The key that verified it.
    pub key_id: String,
    pub docker_reference: String,
    pub optional: BTreeMap<String, String>,
}

/// Checks that `signature` (base64 DER) over `payload` verifies with one of `trusted`, and
/// that the payload is a simple-signing document for the manifest `digest`.
pub fn verify(
    trusted: &[PublicKey],
    payload: &[u8],
    signature: &str,
    key_hint: Option<&str>,
    digest: &str,
) -> Result<Verified, SignError> {
    if trusted.is_empty() {
        return Err(SignError::NoTrustedKeys);
    }
    if let Some(hint) = key_hint {
        if !trusted.iter().any(|k| k.key_id() == hint) {
            return Err(SignError::UnknownKey(hint.into()));
        }
    }
    let sig = base64::engine::general_purpose::STANDARD
        .decode(signature.trim())
        .map_err(|_| SignError::BadSignature(trusted.len()))?;
    let key = trusted
        .iter()
        .find(|k| k.verifies(payload, &sig))
        .ok_or(SignError::BadSignature(trusted.len()))?;
    let doc: Value =
        serde_json::from_slice(payload).map_err(|e| SignError::BadPayload(e.to_string()))?;
    let critical = &doc["critical"];
    if critical["type"] != PAYLOAD_TYPE {
        return Err(SignError::BadPayload(format!(
            "type is {}",
            critical["type"]
        )));
    }
    let signed = critical["image"]["docker-manifest-digest"]
        .as_str()
        .ok_or_else(|| SignError::BadPayload("no docker-manifest-digest".into()))?;
    if signed != digest {
        return Err(SignError::WrongDigest {
            signed: signed.into(),
            actual: digest.into(),
        });
    }
    let optional = doc["optional"]
        .as_object()
        .map(|o| {
            o.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_owned())))
                .collect()
        })
        .unwrap_or_default();
    Ok(Verified {
        key_id: key.key_id(),
        docker_reference: critical["identity"]["docker-reference"]
            .as_str()
            .unwrap_or_default()
            .into(),
        optional,
    })
}

/// Trusted keys from PEM texts (a file may hold several `PUBLIC KEY` blocks).
pub fn public_keys(pem: &str) -> Result<Vec<PublicKey>, SignError> {
    let mut out = Vec::new();
    let mut rest = pem;
    const END: &str = "-----END PUBLIC KEY-----";
    while let Some(i) = rest.find("-----BEGIN PUBLIC KEY-----") {
        let block = &rest[i..];
        let stop = block
            .find(END)
            .map(|j| j + END.len())
            .unwrap_or(block.len());
        out.push(PublicKey::from_pem(&block[..stop])?);
        rest = &block[stop..];
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:6c3c624b58dbbcd3c0dd82b4c53f04194d1247c6eebdaab7c610cf7d66709b3b";

    fn signed(key: &SigningKey) -> (Vec<u8>, String) {
        let optional = BTreeMap::from([("version".to_owned(), "0.2.0".to_owned())]);
        let p = payload("127.0.0.1:5000/axion/qemu", DIGEST, &optional);
        let s = key.sign(&p).unwrap();
        (p, s)
    }

    #[test]
    fn sign_and_verify_round_trip_through_pem_and_the_manifest() {
        let (private, public) = SigningKey::generate().unwrap();
        assert!(
            private.starts_with("-----BEGIN PRIVATE KEY-----\n"),
            "{private}"
        );
        assert!(
            public.starts_with("-----BEGIN PUBLIC KEY-----\n"),
            "{public}"
        );
        let key = SigningKey::from_pem(&private).unwrap();
        let trusted = public_keys(&public).unwrap();
        assert_eq!(trusted, vec![key.public_key()]);
        let (p, s) = signed(&key);
        let m = signature_manifest(&p, &s, &key.public_key().key_id());
        let layers = signature_layers(&m).unwrap();
        assert_eq!(layers.len(), 1);
        assert_eq!(layers[0].digest, sha256_digest(&p));
        assert_eq!(layers[0].size, p.len() as u64);
        let v = verify(
            &trusted,
            &p,
            &layers[0].signature,
            layers[0].key_id.as_deref(),
            DIGEST,
        )
        .unwrap();
        assert_eq!(v.key_id, key.public_key().key_id());
        assert_eq!(v.docker_reference, "127.0.0.1:5000/axion/qemu");
        assert_eq!(v.optional["version"], "0.2.0");
        assert_eq!(
            signature_tag(DIGEST).unwrap(),
            format!("sha256-{}.sig", &DIGEST[7..])
        );
    }

    #[test]
    fn a_tampered_payload_or_another_digest_is_refused() {
        let (private, _) = SigningKey::generate().unwrap();
        let key = SigningKey::from_pem(&private).unwrap();
        let trusted = vec![key.public_key()];
        let (p, s) = signed(&key);
        // One byte of the signed document changed: the signature no longer verifies.
        let mut t = p.clone();
        let i = t.len() - 5;
        t[i] ^= 1;
        assert_eq!(
            verify(&trusted, &t, &s, None, DIGEST),
            Err(SignError::BadSignature(1))
        );
        // A valid signature of another manifest does not cover this one.
        let other = format!("sha256:{}", "1".repeat(64));
        assert!(matches!(
            verify(&trusted, &p, &s, None, &other),
            Err(SignError::WrongDigest { .. })
        ));
        assert_eq!(
            verify(&trusted, &p, "not base64!", None, DIGEST),
            Err(SignError::BadSignature(1))
        );
    }

    #[test]
    fn an_unknown_key_is_refused_and_no_keys_accept_nothing() {
        let (a, _) = SigningKey::generate().unwrap();
        let (b, _) = SigningKey::generate().unwrap();
        let signer = SigningKey::from_pem(&a).unwrap();
        let trusted = vec![SigningKey::from_pem(&b).unwrap().public_key()];
        let (p, s) = signed(&signer);
        let id = signer.public_key().key_id();
        assert_eq!(
            verify(&trusted, &p, &s, Some(&id), DIGEST),
            Err(SignError::UnknownKey(id))
        );
        // Without the hint it is still refused, as a bad signature.
        assert_eq!(
            verify(&trusted, &p, &s, None, DIGEST),
            Err(SignError::BadSignature(1))
        );
        // A hint naming a trusted key does not help a signature by another.
        let lie = trusted[0].key_id();
        assert_eq!(
            verify(&trusted, &p, &s, Some(&lie), DIGEST),
            Err(SignError::BadSignature(1))
        );
        assert_eq!(
            verify(&[], &p, &s, None, DIGEST),
            Err(SignError::NoTrustedKeys)
        );
    }

    /// The keys and signatures are the standard encodings cosign uses too: OpenSSL reads our
    /// PKCS#8 and SPKI PEM files, verifies our signature, and its own ECDSA signature with
    /// our key verifies here.
    #[test]
    fn openssl_agrees_on_keys_and_signatures() {
        use std::process::Command;
        if Command::new("openssl").arg("version").output().is_err() {
            test_skip::skip("openssl is not installed");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let (private, public) = SigningKey::generate().unwrap();
        let (kp, pp) = (d.path().join("k.pem"), d.path().join("p.pem"));
        std::fs::write(&kp, &private).unwrap();
        std::fs::write(&pp, &public).unwrap();
        let key = SigningKey::from_pem(&private).unwrap();
        let (payload, sig) = signed(&key);
        let payload_path = d.path().join("payload");
        std::fs::write(&payload_path, &payload).unwrap();
        let sig_path = d.path().join("sig.der");
        std::fs::write(
            &sig_path,
            base64::engine::general_purpose::STANDARD
                .decode(&sig)
                .unwrap(),
        )
        .unwrap();
        let out = Command::new("openssl")
            .args(["dgst", "-sha256", "-verify"])
            .arg(&pp)
            .arg("-signature")
            .arg(&sig_path)
            .arg(&payload_path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl does not verify our signature: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = Command::new("openssl")
            .args(["dgst", "-sha256", "-sign"])
            .arg(&kp)
            .arg(&payload_path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let theirs = base64::engine::general_purpose::STANDARD.encode(&out.stdout);
        let trusted = public_keys(&public).unwrap();
        verify(&trusted, &payload, &theirs, None, DIGEST).unwrap();
    }

    #[test]
    fn garbage_keys_and_manifests_are_errors() {
        assert!(PublicKey::from_pem("nothing").is_err());
        assert!(SigningKey::from_pem(
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----"
        )
        .is_err());
        let wrong = pem_encode(&[0u8; 91], "PUBLIC KEY");
        assert_eq!(PublicKey::from_pem(&wrong), Err(SignError::BadPublicKey));
        assert!(signature_layers(b"{").is_err());
        assert!(signature_layers(b"{\"layers\":[{}]}").unwrap().is_empty());
        assert!(signature_tag("sha256:zz").is_err());
    }
}
