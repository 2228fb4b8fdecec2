//! The client: manifests (Docker schema 2, OCI, indexes/manifest lists, picking
//! linux/amd64), blobs streamed to disk with size limits and sha256 verification, anonymous
//! and bearer-token auth from the `WWW-Authenticate` challenge (and basic auth when
//! credentials are given). Plain HTTP for localhost/127.0.0.0/8 and `--insecure-registry`.

use crate::reference::{valid_digest, Reference, DOCKER_HUB};
use base64::Engine as _;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

pub const MT_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MT_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const MT_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MT_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Manifests and configs larger than this are refused.
pub const MAX_MANIFEST: u64 = 4 << 20;
/// Layers larger than this are refused.
pub const MAX_BLOB: u64 = 8 << 30;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("request to {url} failed: {source}")]
    Http { url: String, source: reqwest::Error },
    #[error("{url}: registry answered {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
    #[error("{url}: manifest unknown (404)")]
    NotFound { url: String },
    #[error("authentication challenge from {url} not understood: {challenge:?}")]
    Challenge { url: String, challenge: String },
    #[error("digest mismatch for {what}: expected {expected}, got {actual}")]
    Digest {
        what: String,
        expected: String,
        actual: String,
    },
    #[error("{what} is larger than allowed ({limit} bytes)")]
    TooLarge { what: String, limit: u64 },
    #[error("{what} has {actual} bytes, descriptor says {expected}")]
    Size {
        what: String,
        expected: u64,
        actual: u64,
    },
    #[error("unsupported digest {0:?} (only sha256 is supported)")]
    BadDigest(String),
    #[error("invalid manifest from {url}: {msg}")]
    Manifest { url: String, msg: String },
    #[error("no linux/amd64 image in the index of {0}")]
    NoPlatform(String),
    #[error("writing {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Platform {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub variant: Option<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default)]
    pub platform: Option<Platform>,
}

/// A manifest or an index (both shapes in one struct; which one by `mediaType`/fields).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    #[serde(default)]
    pub media_type: Option<String>,
    #[serde(default)]
    pub config: Option<Descriptor>,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
    #[serde(default)]
    pub manifests: Option<Vec<Descriptor>>,
}

impl Manifest {
    pub fn is_index(&self, content_type: &str) -> bool {
        let mt = self.media_type.as_deref().unwrap_or(content_type);
        mt == MT_OCI_INDEX
            || mt == MT_DOCKER_LIST
            || (self.manifests.is_some() && self.config.is_none())
    }
}

/// Picks linux/amd64 from an index (a variant-less entry first).
pub fn select_platform(manifests: &[Descriptor]) -> Option<&Descriptor> {
    let amd64 = |d: &&Descriptor| {
        d.platform
            .as_ref()
            .map(|p| p.os == "linux" && p.architecture == "amd64")
            .unwrap_or(false)
    };
    manifests
        .iter()
        .filter(amd64)
        .find(|d| {
            d.platform
                .as_ref()
                .and_then(|p| p.variant.as_ref())
                .is_none()
        })
        .or_else(|| manifests.iter().find(amd64))
}

pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

pub fn verify(what: &str, expected: &str, data: &[u8]) -> Result<(), RegistryError> {
    if !valid_digest(expected) {
        return Err(RegistryError::BadDigest(expected.to_string()));
    }
    let actual = sha256_digest(data);
    if actual != expected {
        return Err(RegistryError::Digest {
            what: what.into(),
            expected: expected.into(),
            actual,
        });
    }
    Ok(())
}

/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub scheme: String,
    pub params: BTreeMap<String, String>,
}

pub fn parse_challenge(h: &str) -> Option<Challenge> {
    let h = h.trim();
    let (scheme, rest) = h.split_once(' ').unwrap_or((h, ""));
    let mut params = BTreeMap::new();
    let mut chars = rest.chars().peekable();
    loop {
        while matches!(chars.peek(), Some(' ' | ',')) {
            chars.next();
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' {
                break;
            }
            key.push(c);
            chars.next();
        }
        if key.is_empty() {
            break;
        }
        if chars.next() != Some('=') {
            return None;
        }
        let mut val = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    None => return None,
                    Some('"') => break,
                    Some('\\') => val.push(chars.next()?),
                    Some(c) => val.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                val.push(c);
                chars.next();
            }
        }
        params.insert(key.trim().to_ascii_lowercase(), val);
    }
    Some(Challenge {
        scheme: scheme.to_ascii_lowercase(),
        params,
    })
}

/// What a user logs in to a registry with (`docker login`): user name and password, or an
/// identity token. The Docker API front end decodes them from `X-Registry-Auth`
/// (`docker_api::RegistryAuth`, the header's wire form; callers convert). This type lives
/// here rather than in docker-api because it is the registry's notion: the client must not
/// depend on the HTTP API front end for it. `Debug` hides the secrets.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
    pub identity_token: String,
}

impl Credentials {
    /// Nothing given (the docker CLI sends `{}` when not logged in): an anonymous pull.
    pub fn is_empty(&self) -> bool {
        self.username.is_empty() && self.password.is_empty() && self.identity_token.is_empty()
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hidden = |s: &str| if s.is_empty() { "" } else { "<hidden>" };
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &hidden(&self.password))
            .field("identity_token", &hidden(&self.identity_token))
            .finish()
    }
}

/// The networks whose registries are always reached over plain HTTP (dockerd's default
/// `InsecureRegistryCIDRs`: loopback).
pub const LOOPBACK_CIDRS: [&str; 2] = ["127.0.0.0/8", "::1/128"];

/// One `--insecure-registry` value as dockerd takes it: `HOST[:PORT]` (an exact registry
/// name) or a CIDR (`10.0.0.0/8`: every registry given by an address in it). A leading
/// `http://` or `https://` is dropped (dockerd drops it with a warning), a trailing `/`
/// too; another scheme, an empty value, a path or a bad port is an error naming the value.
pub fn parse_insecure(entry: &str) -> Result<String, String> {
    let e = entry.trim();
    let lower = e.to_ascii_lowercase();
    let e = if lower.starts_with("http://") {
        &e[7..]
    } else if lower.starts_with("https://") {
        &e[8..]
    } else {
        e
    };
    let e = e.trim_end_matches('/');
    if e.contains("://") {
        return Err(format!(
            "insecure registry {entry:?}: give HOST[:PORT] or a CIDR, without a scheme"
        ));
    }
    if e.is_empty() || e.chars().any(|c| c.is_whitespace()) {
        return Err(format!(
            "insecure registry {entry:?}: give HOST[:PORT] or a CIDR"
        ));
    }
    if let Some((net, bits)) = e.split_once('/') {
        return match parse_cidr(e) {
            Some(_) => Ok(e.to_string()),
            None => Err(format!(
                "insecure registry {entry:?}: {net}/{bits} is neither HOST[:PORT] \
                 nor a CIDR (ADDRESS/PREFIX)"
            )),
        };
    }
    let port = if e.starts_with('[') {
        e.split_once("]:").map(|(_, p)| p)
    } else {
        e.rsplit_once(':').map(|(_, p)| p)
    };
    if let Some(p) = port {
        if p.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(format!("insecure registry {entry:?}: bad port {p:?}"));
        }
    }
    Ok(e.to_string())
}

/// `ADDRESS/PREFIX` as an address and a prefix length no longer than the address.
fn parse_cidr(s: &str) -> Option<(std::net::IpAddr, u8)> {
    let (a, b) = s.split_once('/')?;
    let ip: std::net::IpAddr = a.parse().ok()?;
    let bits: u8 = b.parse().ok()?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    (bits <= max).then_some((ip, bits))
}

fn in_cidr(ip: std::net::IpAddr, (net, bits): (std::net::IpAddr, u8)) -> bool {
    use std::net::IpAddr::{V4, V6};
    match (ip, net) {
        (V4(a), V4(n)) => bits == 0 || (u32::from(a) ^ u32::from(n)) >> (32 - bits as u32) == 0,
        (V6(a), V6(n)) => bits == 0 || (u128::from(a) ^ u128::from(n)) >> (128 - bits as u32) == 0,
        _ => false,
    }
}

pub struct Client {
    pub(crate) http: reqwest::Client,
    /// The `--insecure-registry` values, normalised ([`parse_insecure`]).
    insecure: Vec<String>,
    /// Their CIDRs and loopback's.
    insecure_nets: Vec<(std::net::IpAddr, u8)>,
}

/// One repository on one registry, with the auth it negotiated.
pub struct Session<'a> {
    pub(crate) client: &'a Client,
    pub(crate) base: String,
    pub(crate) repo: String,
    pub(crate) auth: Option<Credentials>,
    pub(crate) authorization: Option<String>,
    /// The token scope's actions when the challenge names none (`pull`, or `pull,push`).
    pub(crate) actions: &'static str,
}

impl Client {
    /// A client that sends `User-Agent: <user_agent>` (the calling program and its version,
    /// e.g. `axion-engine/0.1.0`, so a registry's logs tell the pullers apart) and reaches
    /// the `insecure` registries (`--insecure-registry` values, see [`parse_insecure`]; one
    /// that does not parse is kept as a name, and matches only itself), `localhost` and
    /// loopback addresses over plain HTTP.
    pub fn new(user_agent: &str, insecure: Vec<String>) -> Self {
        let http = reqwest::Client::builder()
            .user_agent(user_agent)
            .connect_timeout(std::time::Duration::from_secs(15))
            .build()
            .expect("reqwest client with rustls");
        let mut list: Vec<String> = Vec::new();
        for i in insecure {
            let i = parse_insecure(&i).unwrap_or(i);
            if !list.contains(&i) {
                list.push(i);
            }
        }
        let insecure_nets = LOOPBACK_CIDRS
            .iter()
            .copied()
            .chain(list.iter().map(String::as_str))
            .filter_map(parse_cidr)
            .collect();
        Client {
            http,
            insecure: list,
            insecure_nets,
        }
    }

    /// The insecure registries given by name (`HOST[:PORT]`), as `docker info` lists them.
    pub fn insecure_registries(&self) -> Vec<String> {
        self.insecure
            .iter()
            .filter(|i| parse_cidr(i).is_none())
            .cloned()
            .collect()
    }

    /// The networks whose registries are insecure: loopback's, then the CIDRs given.
    pub fn insecure_cidrs(&self) -> Vec<String> {
        LOOPBACK_CIDRS
            .iter()
            .map(|c| c.to_string())
            .chain(
                self.insecure
                    .iter()
                    .filter(|i| parse_cidr(i).is_some())
                    .cloned(),
            )
            .collect()
    }

    /// `http` for an insecure registry (given by name with or without its port, an address
    /// in an insecure network, or `localhost`), else `https`. A name is not resolved to
    /// match a CIDR (dockerd does; here only registries given by address match one).
    pub fn scheme(&self, host: &str) -> &'static str {
        let h = if host.starts_with('[') {
            host.split_once(']').map(|(h, _)| &h[1..]).unwrap_or(host)
        } else {
            host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host)
        };
        let named = self.insecure.iter().any(|i| i == host || i == h);
        let in_net = h
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| self.insecure_nets.iter().any(|n| in_cidr(ip, *n)));
        if h.eq_ignore_ascii_case("localhost") || named || in_net {
            "http"
        } else {
            "https"
        }
    }

    pub fn session(&self, r: &Reference, auth: Option<Credentials>) -> Session<'_> {
        let host = if r.registry == DOCKER_HUB {
            "registry-1.docker.io"
        } else {
            r.registry.as_str()
        };
        Session {
            client: self,
            base: format!("{}://{host}", self.scheme(host)),
            repo: r.repository.clone(),
            auth,
            authorization: None,
            actions: "pull",
        }
    }
}

impl Session<'_> {
    async fn get(&mut self, url: &str, accept: &str) -> Result<reqwest::Response, RegistryError> {
        for attempt in 0..2 {
            let mut rb = self.client.http.get(url).header("Accept", accept);
            if let Some(a) = &self.authorization {
                rb = rb.header("Authorization", a);
            }
            let resp = rb.send().await.map_err(|source| RegistryError::Http {
                url: url.into(),
                source,
            })?;
            if resp.status().as_u16() == 401 && attempt == 0 {
                let ch = resp
                    .headers()
                    .get("www-authenticate")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                self.authenticate(url, &ch).await?;
                continue;
            }
            if resp.status().as_u16() == 404 {
                return Err(RegistryError::NotFound { url: url.into() });
            }
            if !resp.status().is_success() {
                let status = resp.status().as_u16();
                let body = resp.text().await.unwrap_or_default();
                return Err(RegistryError::Status {
                    url: url.into(),
                    status,
                    body: body.chars().take(300).collect(),
                });
            }
            return Ok(resp);
        }
        unreachable!("loop returns")
    }

    pub(crate) async fn authenticate(
        &mut self,
        url: &str,
        header: &str,
    ) -> Result<(), RegistryError> {
        let bad = || RegistryError::Challenge {
            url: url.into(),
            challenge: header.into(),
        };
        let ch = parse_challenge(header).ok_or_else(bad)?;
        let basic = self
            .auth
            .as_ref()
            .filter(|a| !a.username.is_empty())
            .map(|a| {
                base64::engine::general_purpose::STANDARD
                    .encode(format!("{}:{}", a.username, a.password))
            });
        match ch.scheme.as_str() {
            "basic" => {
                self.authorization = Some(format!(
                    "Basic {}",
                    basic.ok_or_else(|| RegistryError::Status {
                        url: url.into(),
                        status: 401,
                        body:
                            "registry wants basic auth and no credentials were given (docker login)"
                                .into(),
                    })?
                ));
                Ok(())
            }
            "bearer" => {
                let realm = ch.params.get("realm").ok_or_else(bad)?;
                let mut q: Vec<(&str, String)> = Vec::new();
                if let Some(s) = ch.params.get("service") {
                    q.push(("service", s.clone()));
                }
                let scope = ch
                    .params
                    .get("scope")
                    .cloned()
                    .unwrap_or_else(|| format!("repository:{}:{}", self.repo, self.actions));
                q.push(("scope", scope));
                let mut rb = self.client.http.get(realm).query(&q);
                if let Some(b) = basic {
                    rb = rb.header("Authorization", format!("Basic {b}"));
                }
                let resp = rb.send().await.map_err(|source| RegistryError::Http {
                    url: realm.clone(),
                    source,
                })?;
                if !resp.status().is_success() {
                    return Err(RegistryError::Status {
                        url: realm.clone(),
                        status: resp.status().as_u16(),
                        body: "token request refused".into(),
                    });
                }
                #[derive(Deserialize)]
                struct Token {
                    token: Option<String>,
                    access_token: Option<String>,
                }
                let body = read_limited(resp, realm, MAX_MANIFEST).await?;
                let t: Token = serde_json::from_slice(&body).map_err(|_| bad())?;
                let token = t.token.or(t.access_token).ok_or_else(bad)?;
                self.authorization = Some(format!("Bearer {token}"));
                Ok(())
            }
            _ => Err(bad()),
        }
    }

    /// Fetches a manifest (following an index to linux/amd64). Returns the manifest, its
    /// bytes and its digest (verified against the reference or descriptor when known).
    pub async fn manifest(
        &mut self,
        object: &str,
    ) -> Result<(Manifest, Vec<u8>, String), RegistryError> {
        let accept = [
            MT_OCI_INDEX,
            MT_DOCKER_LIST,
            MT_OCI_MANIFEST,
            MT_DOCKER_MANIFEST,
        ]
        .join(", ");
        let mut object = object.to_string();
        for _ in 0..2 {
            let url = format!("{}/v2/{}/manifests/{object}", self.base, self.repo);
            let resp = self.get(&url, &accept).await?;
            let ct = resp
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let body = read_limited(resp, &url, MAX_MANIFEST).await?;
            let digest = if object.starts_with("sha256:") {
                verify(&url, &object, &body)?;
                object.clone()
            } else {
                sha256_digest(&body)
            };
            let m: Manifest =
                serde_json::from_slice(&body).map_err(|e| RegistryError::Manifest {
                    url: url.clone(),
                    msg: e.to_string(),
                })?;
            if m.schema_version != 2 {
                return Err(RegistryError::Manifest {
                    url,
                    msg: format!("schemaVersion {} is not supported", m.schema_version),
                });
            }
            if m.is_index(&ct) {
                let d = select_platform(m.manifests.as_deref().unwrap_or(&[]))
                    .ok_or_else(|| RegistryError::NoPlatform(url.clone()))?;
                object = d.digest.clone();
                continue;
            }
            if m.config.is_none() {
                return Err(RegistryError::Manifest {
                    url,
                    msg: "no config descriptor".into(),
                });
            }
            return Ok((m, body, digest));
        }
        Err(RegistryError::Manifest {
            url: self.base.clone(),
            msg: "index points to another index".into(),
        })
    }

    /// Downloads a small blob (config) into memory, verified.
    pub async fn blob_bytes(&mut self, d: &Descriptor) -> Result<Vec<u8>, RegistryError> {
        if d.size > MAX_MANIFEST {
            return Err(RegistryError::TooLarge {
                what: d.digest.clone(),
                limit: MAX_MANIFEST,
            });
        }
        let url = format!("{}/v2/{}/blobs/{}", self.base, self.repo, d.digest);
        let resp = self.get(&url, "*/*").await?;
        let body = read_limited(resp, &url, d.size).await?;
        verify(&url, &d.digest, &body)?;
        Ok(body)
    }

    /// Streams a blob into `dest`, enforcing the descriptor's size and verifying its digest.
    pub async fn blob_to_file(&mut self, d: &Descriptor, dest: &Path) -> Result<(), RegistryError> {
        if !valid_digest(&d.digest) {
            return Err(RegistryError::BadDigest(d.digest.clone()));
        }
        if d.size > MAX_BLOB {
            return Err(RegistryError::TooLarge {
                what: d.digest.clone(),
                limit: MAX_BLOB,
            });
        }
        let url = format!("{}/v2/{}/blobs/{}", self.base, self.repo, d.digest);
        let mut resp = self.get(&url, "*/*").await?;
        let io = |source| RegistryError::Io {
            path: dest.display().to_string(),
            source,
        };
        let mut f = std::fs::File::create(dest).map_err(io)?;
        let mut h = Sha256::new();
        let mut n = 0u64;
        while let Some(chunk) = resp.chunk().await.map_err(|source| RegistryError::Http {
            url: url.clone(),
            source,
        })? {
            n += chunk.len() as u64;
            if n > d.size {
                return Err(RegistryError::Size {
                    what: url,
                    expected: d.size,
                    actual: n,
                });
            }
            h.update(&chunk);
            f.write_all(&chunk).map_err(io)?;
        }
        if n != d.size {
            return Err(RegistryError::Size {
                what: url,
                expected: d.size,
                actual: n,
            });
        }
        let actual = format!("sha256:{}", hex::encode(h.finalize()));
        if actual != d.digest {
            return Err(RegistryError::Digest {
                what: url,
                expected: d.digest.clone(),
                actual,
            });
        }
        f.sync_all().map_err(io)?;
        Ok(())
    }
}

pub(crate) async fn read_limited(
    mut resp: reqwest::Response,
    url: &str,
    limit: u64,
) -> Result<Vec<u8>, RegistryError> {
    let mut out = Vec::new();
    while let Some(c) = resp.chunk().await.map_err(|source| RegistryError::Http {
        url: url.into(),
        source,
    })? {
        if (out.len() + c.len()) as u64 > limit {
            return Err(RegistryError::TooLarge {
                what: url.into(),
                limit,
            });
        }
        out.extend_from_slice(&c);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_challenge() {
        let c = parse_challenge(concat!(
            r#"Bearer realm="https://auth.example/token",service="registry.example","#,
            r#"scope="repository:library/busybox:pull,push""#
        ))
        .unwrap();
        assert_eq!(c.scheme, "bearer");
        assert_eq!(c.params["realm"], "https://auth.example/token");
        assert_eq!(c.params["scope"], "repository:library/busybox:pull,push");
        assert_eq!(c.params["service"], "registry.example");
        let b = parse_challenge(r#"Basic realm="basic-realm""#).unwrap();
        assert_eq!(b.scheme, "basic");
        assert!(parse_challenge(r#"Bearer realm="unterminated"#).is_none());
    }

    fn desc(arch: &str, variant: Option<&str>, d: char) -> Descriptor {
        Descriptor {
            media_type: MT_OCI_MANIFEST.into(),
            digest: format!("sha256:{}", d.to_string().repeat(64)),
            size: 1,
            platform: Some(Platform {
                architecture: arch.into(),
                os: "linux".into(),
                variant: variant.map(Into::into),
            }),
        }
    }

    #[test]
    fn picks_linux_amd64() {
        let list = vec![
            desc("arm64", Some("v8"), 'a'),
            desc("amd64", Some("v3"), 'b'),
            desc("amd64", None, 'c'),
        ];
        assert!(select_platform(&list).unwrap().digest.ends_with('c'));
        assert!(select_platform(&list[..2]).unwrap().digest.ends_with('b'));
        assert!(select_platform(&list[..1]).is_none());
    }

    #[test]
    fn index_detection_and_parse() {
        let idx: Manifest = serde_json::from_str(concat!(
            r#"{"schemaVersion":2,"#,
            r#""mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#
        ))
        .unwrap();
        assert!(idx.is_index(""));
        let m: Manifest = serde_json::from_str(concat!(
            r#"{"schemaVersion":2,"#,
            r#""config":{"mediaType":"x","digest":"sha256:00","size":1},"layers":[]}"#
        ))
        .unwrap();
        assert!(!m.is_index(MT_DOCKER_MANIFEST));
    }

    #[test]
    fn digest_verification() {
        let d = sha256_digest(b"hello");
        assert!(verify("x", &d, b"hello").is_ok());
        assert!(matches!(
            verify("x", &d, b"hellO"),
            Err(RegistryError::Digest { .. })
        ));
        assert!(matches!(
            verify("x", "md5:abc", b"hello"),
            Err(RegistryError::BadDigest(_))
        ));
    }

    /// A registry on 127.0.0.1 that wants a bearer token: records the `User-Agent` of every
    /// request (registry and token endpoint) and answers 404 for the manifest once the
    /// token is presented.
    #[tokio::test]
    async fn sends_the_callers_user_agent_and_credentials() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen =
            std::sync::Arc::new(std::sync::Mutex::new(Vec::<(String, String, String)>::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                let log = log.clone();
                tokio::spawn(async move {
                    let mut req = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                        match sock.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => req.extend_from_slice(&buf[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&req).to_string();
                    let target = head.split_whitespace().nth(1).unwrap_or("").to_string();
                    let header = |name: &str| {
                        head.lines()
                            .find_map(|l| {
                                l.split_once(':')
                                    .filter(|(k, _)| k.eq_ignore_ascii_case(name))
                                    .map(|(_, v)| v.trim().to_string())
                            })
                            .unwrap_or_default()
                    };
                    let (ua, authz) = (header("user-agent"), header("authorization"));
                    log.lock()
                        .unwrap()
                        .push((target.clone(), ua, authz.clone()));
                    let (status, body, extra) = if target.starts_with("/token?") {
                        ("200 OK", "{\"token\":\"tok\"}".to_string(), String::new())
                    } else if authz != "Bearer tok" {
                        (
                            "401 Unauthorized",
                            "{}".to_string(),
                            format!(
                                "WWW-Authenticate: Bearer \
                                 realm=\"http://127.0.0.1:{port}/token\",service=\"t\"\r\n"
                            ),
                        )
                    } else {
                        ("404 Not Found", "{}".to_string(), String::new())
                    };
                    let resp = format!(
                        "HTTP/1.1 {status}\r\nContent-Type: \
                         application/json\r\nContent-Length: \
                         {}\r\n{extra}Connection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = sock.write_all(resp.as_bytes()).await;
                    let _ = sock.shutdown().await;
                });
            }
        });
        let client = Client::new("axion-test/9.8.7", Vec::new());
        let r = Reference::parse(&format!("127.0.0.1:{port}/team/app")).unwrap();
        let creds = Credentials {
            username: "ann".into(),
            password: "s3cret".into(),
            identity_token: String::new(),
        };
        assert!(
            !format!("{creds:?}").contains("s3cret"),
            "Debug shows the password: {creds:?}"
        );
        let e = client
            .session(&r, Some(creds))
            .manifest("latest")
            .await
            .unwrap_err();
        assert!(matches!(e, RegistryError::NotFound { .. }), "{e}");
        let seen = seen.lock().unwrap().clone();
        let targets: Vec<&str> = seen.iter().map(|(t, _, _)| t.as_str()).collect();
        assert_eq!(targets.len(), 3, "challenge, token, manifest: {targets:?}");
        assert!(
            targets[1].starts_with("/token?") && targets[2] == "/v2/team/app/manifests/latest",
            "{targets:?}"
        );
        for (t, ua, _) in &seen {
            assert_eq!(ua, "axion-test/9.8.7", "User-Agent of {t}");
        }
        // The token endpoint got the user's credentials (basic), the registry the token.
        let basic = base64::engine::general_purpose::STANDARD.encode("ann:s3cret");
        assert_eq!(seen[1].2, format!("Basic {basic}"));
        assert_eq!(seen[2].2, "Bearer tok");
    }

    #[test]
    fn insecure_registries_as_dockerd_takes_them() {
        assert_eq!(
            parse_insecure("http://10.0.2.2:5000/").unwrap(),
            "10.0.2.2:5000"
        );
        assert_eq!(parse_insecure("HTTPS://myreg:5000").unwrap(), "myreg:5000");
        assert_eq!(parse_insecure(" 10.1.0.0/16 ").unwrap(), "10.1.0.0/16");
        assert_eq!(parse_insecure("[fd00::1]:5000").unwrap(), "[fd00::1]:5000");
        for bad in [
            "",
            "tcp://myreg:5000",
            "myreg:http",
            "myreg:0",
            "10.0.0.0/33",
            "myreg/path",
            "my reg",
        ] {
            assert!(parse_insecure(bad).is_err(), "{bad:?} accepted");
        }
        let c = Client::new(
            "t/1",
            vec![
                "myreg:5000".into(),
                "http://plain".into(),
                "10.1.0.0/16".into(),
                "fd00::/8".into(),
                "myreg:5000".into(),
            ],
        );
        for (host, scheme) in [
            ("myreg:5000", "http"),
            ("myreg", "https"), // the port is part of the name given
            ("plain", "http"),
            ("plain:443", "http"), // a name without port: any port
            ("10.1.200.3:5000", "http"),
            ("10.2.0.1:5000", "https"),
            ("[fd12::3]:5000", "http"),
            ("[fe80::1]:5000", "https"),
            ("127.0.0.1:5000", "http"),
            ("127.8.9.1", "http"),
            ("[::1]:5000", "http"),
            ("localhost:5000", "http"),
            ("127.x", "https"), // a name, not an address
            ("other:5000", "https"),
        ] {
            assert_eq!(c.scheme(host), scheme, "{host}");
        }
        assert_eq!(c.insecure_registries(), vec!["myreg:5000", "plain"]);
        assert_eq!(
            c.insecure_cidrs(),
            vec!["127.0.0.0/8", "::1/128", "10.1.0.0/16", "fd00::/8"]
        );
        let plain = Client::new("t/1", Vec::new());
        assert_eq!(plain.scheme("10.1.200.3:5000"), "https");
        assert!(plain.insecure_registries().is_empty());
    }
}
