//! Published artifacts as an OCI artifact in a registry (distribution API v2).
//!
//! The manifest is an OCI image manifest (1.1 style) with `artifactType`
//! `application/vnd.axion.image.v1`, the empty config, and one layer per file, titled with
//! `org.opencontainers.image.title` as ORAS does, so `oras pull` understands it too.
//! Pushing uploads each blob monolithically (POST then PUT ?digest=); pulling checks every
//! digest and size before a file is renamed into place.
//!
//! Plain http is used for 127.0.0.1 and localhost, as the docker CLI does for local
//! registries; everything else is https.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

pub const ARTIFACT_TYPE: &str = "application/vnd.axion.image.v1";
const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const EMPTY_TYPE: &str = "application/vnd.oci.empty.v1+json";
const TITLE: &str = "org.opencontainers.image.title";

#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("'{0}' is not a reference of the form HOST[:PORT]/REPOSITORY:TAG")]
    BadReference(String),
    #[error("{url}: {source}")]
    Http { url: String, source: reqwest::Error },
    #[error("{url}: the registry answered {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
    #[error("cannot {action} '{path}': {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what}: expected {expected}, got {actual}")]
    Mismatch {
        what: String,
        expected: String,
        actual: String,
    },
    #[error("the manifest at {0} is not an axion artifact: {1}")]
    NotAnArtifact(String, String),
}

/// HOST[:PORT]/REPO[/…]:TAG
#[derive(Debug, Clone, PartialEq)]
pub struct Reference {
    pub registry: String,
    pub repository: String,
    pub tag: String,
}

impl Reference {
    pub fn parse(s: &str) -> Result<Reference, OciError> {
        let bad = || OciError::BadReference(s.to_owned());
        let (registry, rest) = s.split_once('/').ok_or_else(bad)?;
        let (repository, tag) = match rest.rsplit_once(':') {
            Some((r, t)) if !t.contains('/') => (r, t),
            _ => (rest, "latest"),
        };
        let repo_ok = !repository.is_empty()
            && repository.split('/').all(|c| {
                !c.is_empty()
                    && c.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b)
                    })
            });
        let tag_ok = !tag.is_empty()
            && tag.len() <= 128
            && tag
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if registry.is_empty() || !repo_ok || !tag_ok {
            return Err(bad());
        }
        Ok(Reference {
            registry: registry.into(),
            repository: repository.into(),
            tag: tag.into(),
        })
    }

    pub(crate) fn base(&self) -> String {
        let host = self.registry.split(':').next().unwrap_or_default();
        let scheme = if host == "127.0.0.1" || host == "localhost" || host == "[::1]" {
            "http"
        } else {
            "https"
        };
        format!("{scheme}://{}/v2/{}", self.registry, self.repository)
    }
}

pub(crate) fn client() -> Result<reqwest::blocking::Client, OciError> {
    reqwest::blocking::Client::builder()
        .connect_timeout(Duration::from_secs(15))
        .timeout(Duration::from_secs(600))
        .build()
        .map_err(|source| OciError::Http {
            url: String::new(),
            source,
        })
}

pub(crate) fn check(
    url: &str,
    resp: reqwest::blocking::Response,
) -> Result<reqwest::blocking::Response, OciError> {
    if resp.status().is_success() {
        return Ok(resp);
    }
    let status = resp.status().as_u16();
    let body = resp.text().unwrap_or_default().chars().take(400).collect();
    Err(OciError::Status {
        url: url.to_owned(),
        status,
        body,
    })
}

fn sha256_of(path: &Path) -> Result<(String, u64), OciError> {
    let mut f = File::open(path).map_err(|source| OciError::Io {
        action: "open",
        path: path.into(),
        source,
    })?;
    let mut h = Sha256::new();
    let n = std::io::copy(&mut f, &mut h).map_err(|source| OciError::Io {
        action: "read",
        path: path.into(),
        source,
    })?;
    Ok((format!("sha256:{}", hex::encode(h.finalize())), n))
}

fn media_type(file_name: &str) -> &'static str {
    match file_name.rsplit('.').next().unwrap_or_default() {
        "json" => "application/spdx+json",
        "ova" => "application/vnd.axion.image.ova",
        "iso" => "application/vnd.axion.image.iso",
        "qcow2" => "application/vnd.axion.image.qcow2",
        "vmdk" => "application/vnd.axion.image.vmdk",
        "raw" => "application/vnd.axion.image.raw",
        _ => "application/octet-stream",
    }
}

pub(crate) fn upload_blob(
    c: &reqwest::blocking::Client,
    r: &Reference,
    digest: &str,
    size: u64,
    body: reqwest::blocking::Body,
) -> Result<(), OciError> {
    let head = format!("{}/blobs/{digest}", r.base());
    if c.head(&head)
        .send()
        .map(|x| x.status().is_success())
        .unwrap_or(false)
    {
        return Ok(()); // the registry has it already
    }
    let start = format!("{}/blobs/uploads/", r.base());
    let resp = check(
        &start,
        c.post(&start).send().map_err(|source| OciError::Http {
            url: start.clone(),
            source,
        })?,
    )?;
    let location = resp
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| OciError::Status {
            url: start.clone(),
            status: 202,
            body: "no Location header".into(),
        })?;
    let mut put = if location.starts_with("http") {
        location.to_owned()
    } else {
        let origin = r.base().split("/v2/").next().unwrap_or_default().to_owned();
        format!("{origin}{location}")
    };
    put.push(if put.contains('?') { '&' } else { '?' });
    put.push_str(&format!("digest={digest}"));
    check(
        &put,
        c.put(&put)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .header(reqwest::header::CONTENT_LENGTH, size)
            .body(body)
            .send()
            .map_err(|source| OciError::Http {
                url: put.clone(),
                source,
            })?,
    )?;
    Ok(())
}

/// Pushes `files` (all inside `base`) as one artifact; each layer's title is the file's path
/// relative to `base`, so a pull recreates the folder. Returns the manifest digest.
pub fn push(
    reference: &str,
    base: &Path,
    files: &[PathBuf],
    annotations: &[(String, String)],
) -> Result<String, OciError> {
    let r = Reference::parse(reference)?;
    let c = client()?;
    let empty = b"{}";
    let empty_digest = format!("sha256:{}", hex::encode(Sha256::digest(empty)));
    upload_blob(
        &c,
        &r,
        &empty_digest,
        2,
        reqwest::blocking::Body::from(empty.to_vec()),
    )?;
    let mut layers = Vec::new();
    for f in files {
        let name = f
            .strip_prefix(base)
            .unwrap_or(f)
            .to_string_lossy()
            .into_owned();
        let (digest, size) = sha256_of(f)?;
        eprintln!("push {name} ({size} bytes)");
        let file = File::open(f).map_err(|source| OciError::Io {
            action: "open",
            path: f.clone(),
            source,
        })?;
        upload_blob(
            &c,
            &r,
            &digest,
            size,
            reqwest::blocking::Body::sized(file, size),
        )?;
        layers.push(json!({
            "mediaType": media_type(&name),
            "digest": digest,
            "size": size,
            "annotations": { TITLE: name }
        }));
    }
    let annotations: serde_json::Map<String, Value> = annotations
        .iter()
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "artifactType": ARTIFACT_TYPE,
        "config": { "mediaType": EMPTY_TYPE, "digest": empty_digest, "size": 2, "data": "e30=" },
        "layers": layers,
        "annotations": annotations,
    });
    let bytes = serde_json::to_vec(&manifest).unwrap_or_default();
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
    let url = format!("{}/manifests/{}", r.base(), r.tag);
    check(
        &url,
        c.put(&url)
            .header(reqwest::header::CONTENT_TYPE, MANIFEST_TYPE)
            .body(bytes)
            .send()
            .map_err(|source| OciError::Http {
                url: url.clone(),
                source,
            })?,
    )?;
    Ok(digest)
}

/// Pulls an artifact pushed by [`push`] into `dir`, verifying every blob. Returns the files.
pub fn pull(reference: &str, dir: &Path) -> Result<Vec<PathBuf>, OciError> {
    let r = Reference::parse(reference)?;
    let c = client()?;
    let url = format!("{}/manifests/{}", r.base(), r.tag);
    let resp = check(
        &url,
        c.get(&url)
            .header(reqwest::header::ACCEPT, MANIFEST_TYPE)
            .send()
            .map_err(|source| OciError::Http {
                url: url.clone(),
                source,
            })?,
    )?;
    let body = resp.bytes().map_err(|source| OciError::Http {
        url: url.clone(),
        source,
    })?;
    let manifest: Value = serde_json::from_slice(&body)
        .map_err(|e| OciError::NotAnArtifact(url.clone(), e.to_string()))?;
    if manifest["artifactType"] != ARTIFACT_TYPE {
        return Err(OciError::NotAnArtifact(
            url,
            format!("artifactType is {}", manifest["artifactType"]),
        ));
    }
    std::fs::create_dir_all(dir).map_err(|source| OciError::Io {
        action: "create",
        path: dir.into(),
        source,
    })?;
    let mut out = Vec::new();
    for layer in manifest["layers"].as_array().cloned().unwrap_or_default() {
        let name = layer["annotations"][TITLE].as_str().unwrap_or_default();
        // A title is a relative path of plain components: never let a manifest write
        // outside `dir`.
        if !is_safe_relative(name) {
            return Err(OciError::NotAnArtifact(
                url,
                format!("bad layer title '{name}'"),
            ));
        }
        let digest = layer["digest"].as_str().unwrap_or_default().to_owned();
        let size = layer["size"].as_u64().unwrap_or(0);
        let blob = format!("{}/blobs/{digest}", r.base());
        let mut resp = check(
            &blob,
            c.get(&blob).send().map_err(|source| OciError::Http {
                url: blob.clone(),
                source,
            })?,
        )?;
        let dest = dir.join(name);
        let parent = dest.parent().unwrap_or(dir).to_owned();
        std::fs::create_dir_all(&parent).map_err(|source| OciError::Io {
            action: "create",
            path: parent.clone(),
            source,
        })?;
        let tmp = parent.join(format!(
            ".{}.part",
            dest.file_name().and_then(|n| n.to_str()).unwrap_or("blob")
        ));
        let mut f = File::create(&tmp).map_err(|source| OciError::Io {
            action: "create",
            path: tmp.clone(),
            source,
        })?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        let mut n = 0u64;
        loop {
            let k = resp.read(&mut buf).map_err(|source| OciError::Io {
                action: "download",
                path: tmp.clone(),
                source,
            })?;
            if k == 0 {
                break;
            }
            h.update(&buf[..k]);
            f.write_all(&buf[..k]).map_err(|source| OciError::Io {
                action: "write",
                path: tmp.clone(),
                source,
            })?;
            n += k as u64;
        }
        let actual = format!("sha256:{}", hex::encode(h.finalize()));
        if actual != digest || n != size {
            let _ = std::fs::remove_file(&tmp);
            return Err(OciError::Mismatch {
                what: format!("{name} from {blob}"),
                expected: format!("{digest} ({size} bytes)"),
                actual: format!("{actual} ({n} bytes)"),
            });
        }
        f.sync_all().map_err(|source| OciError::Io {
            action: "sync",
            path: tmp.clone(),
            source,
        })?;
        std::fs::rename(&tmp, &dest).map_err(|source| OciError::Io {
            action: "rename",
            path: dest.clone(),
            source,
        })?;
        eprintln!("pulled {name} ({n} bytes, {digest})");
        out.push(dest);
    }
    Ok(out)
}

/// `a/b/c`: no empty, `.` or `..` component, not absolute, no hidden first component.
fn is_safe_relative(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('/')
        && !name.starts_with('.')
        && name
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_titles_cannot_escape() {
        assert!(is_safe_relative("licenses/linux/COPYING"));
        assert!(is_safe_relative("axion-qemu-0.1.0.raw"));
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a//b",
            ".hidden",
            "a/./b",
        ] {
            assert!(!is_safe_relative(bad), "{bad}");
        }
    }

    #[test]
    fn references() {
        let r = Reference::parse("127.0.0.1:5000/axion/qemu:0.1.0").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag.as_str()),
            ("127.0.0.1:5000", "axion/qemu", "0.1.0")
        );
        assert_eq!(r.base(), "http://127.0.0.1:5000/v2/axion/qemu");
        assert_eq!(Reference::parse("reg.example:443/a").unwrap().tag, "latest");
        assert!(Reference::parse("reg.example/a")
            .unwrap()
            .base()
            .starts_with("https://"));
        for bad in ["nohost", "127.0.0.1/UPPER:x", "127.0.0.1/a:b c", "/a:b"] {
            assert!(Reference::parse(bad).is_err(), "{bad}");
        }
    }
}
