//! The pushing half of the client (`docker push`), the login check (`docker login`) and the
//! descriptor lookup of `/distribution/{name}/json`: blobs are skipped when the registry has
//! them, mounted from another repository of the same registry when we know one that has
//! them, else uploaded (one `PUT` when small, `PATCH` chunks then a `PUT` when large);
//! manifests go up with their media type. Auth is the pull's (basic or bearer from the
//! challenge), asking for `pull,push` scope.

use crate::client::{read_limited, RegistryError, Session, MAX_MANIFEST};
use crate::client::{MT_DOCKER_LIST, MT_DOCKER_MANIFEST, MT_OCI_INDEX, MT_OCI_MANIFEST};
use std::io::Read;
use std::path::Path;

/// Blobs up to this size go up in one `PUT`; larger ones in chunks of this size.
pub const UPLOAD_CHUNK: u64 = 8 << 20;

impl Session<'_> {
    /// This session asks for push access when it authenticates.
    pub fn for_push(mut self) -> Self {
        self.actions = "pull,push";
        self
    }

    /// The repository this session talks to (`library/busybox`).
    pub fn repository(&self) -> &str {
        &self.repo
    }

    /// One request with the session's authorization; a 401 is answered by authenticating
    /// from its challenge and sending the request once more.
    async fn send(
        &mut self,
        method: reqwest::Method,
        url: &str,
        headers: &[(&str, String)],
        body: Option<Vec<u8>>,
    ) -> Result<reqwest::Response, RegistryError> {
        for attempt in 0..2 {
            let mut rb = self.client.http.request(method.clone(), url);
            for (k, v) in headers {
                rb = rb.header(*k, v);
            }
            if let Some(a) = &self.authorization {
                rb = rb.header("Authorization", a);
            }
            if let Some(b) = &body {
                rb = rb.body(b.clone());
            } else if method == reqwest::Method::PUT || method == reqwest::Method::POST {
                rb = rb.header("Content-Length", "0");
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
            return Ok(resp);
        }
        unreachable!("loop returns")
    }

    async fn expect(
        &mut self,
        method: reqwest::Method,
        url: &str,
        headers: &[(&str, String)],
        body: Option<Vec<u8>>,
        ok: &[u16],
    ) -> Result<reqwest::Response, RegistryError> {
        let resp = self.send(method, url, headers, body).await?;
        let status = resp.status().as_u16();
        if ok.contains(&status) {
            return Ok(resp);
        }
        let body = resp.text().await.unwrap_or_default();
        Err(RegistryError::Status {
            url: url.into(),
            status,
            body: body.chars().take(300).collect(),
        })
    }

    fn location(&self, resp: &reqwest::Response, url: &str) -> Result<String, RegistryError> {
        let loc = resp
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| RegistryError::Status {
                url: url.into(),
                status: resp.status().as_u16(),
                body: "upload answer without a Location".into(),
            })?;
        Ok(
            if loc.starts_with("http://") || loc.starts_with("https://") {
                loc.to_string()
            } else {
                format!("{}{loc}", self.base)
            },
        )
    }

    /// Whether the repository has the blob already.
    pub async fn blob_exists(&mut self, digest: &str) -> Result<bool, RegistryError> {
        let url = format!("{}/v2/{}/blobs/{digest}", self.base, self.repo);
        let resp = self.send(reqwest::Method::HEAD, &url, &[], None).await?;
        Ok(resp.status().is_success())
    }

    /// Asks the registry to mount the blob from repository `from` (same registry). True when
    /// it did (201); false when it opened an upload instead (it does not have the blob there,
    /// or mounting is off), which is then left to expire.
    pub async fn mount_blob(&mut self, digest: &str, from: &str) -> Result<bool, RegistryError> {
        let url = format!(
            "{}/v2/{}/blobs/uploads/?mount={digest}&from={from}",
            self.base, self.repo
        );
        let resp = self
            .expect(reqwest::Method::POST, &url, &[], None, &[201, 202])
            .await?;
        Ok(resp.status().as_u16() == 201)
    }

    /// Uploads the file at `path` as blob `digest` (`size` bytes): monolithic when it fits
    /// in [`UPLOAD_CHUNK`], else chunked. `progress` is told the bytes sent so far.
    pub async fn upload_blob(
        &mut self,
        path: &Path,
        digest: &str,
        size: u64,
        chunk: u64,
        mut progress: impl FnMut(u64),
    ) -> Result<(), RegistryError> {
        let io = |source| RegistryError::Io {
            path: path.display().to_string(),
            source,
        };
        let url = format!("{}/v2/{}/blobs/uploads/", self.base, self.repo);
        let resp = self
            .expect(reqwest::Method::POST, &url, &[], None, &[202])
            .await?;
        let mut loc = self.location(&resp, &url)?;
        let mut f = std::fs::File::open(path).map_err(io)?;
        let octets = ("Content-Type", "application/octet-stream".to_string());
        let with_digest = |loc: &str| {
            let sep = if loc.contains('?') { '&' } else { '?' };
            format!("{loc}{sep}digest={digest}")
        };
        if size <= chunk {
            let mut data = Vec::with_capacity(size as usize);
            f.read_to_end(&mut data).map_err(io)?;
            let put = with_digest(&loc);
            self.expect(reqwest::Method::PUT, &put, &[octets], Some(data), &[201])
                .await?;
            progress(size);
            return Ok(());
        }
        let mut sent = 0u64;
        loop {
            let mut data = vec![0u8; chunk as usize];
            let mut n = 0;
            while n < data.len() {
                let k = f.read(&mut data[n..]).map_err(io)?;
                if k == 0 {
                    break;
                }
                n += k;
            }
            if n == 0 {
                break;
            }
            data.truncate(n);
            let range = format!("{}-{}", sent, sent + n as u64 - 1);
            let hs = [octets.clone(), ("Content-Range", range)];
            let resp = self
                .expect(reqwest::Method::PATCH, &loc, &hs, Some(data), &[202])
                .await?;
            loc = self.location(&resp, &loc)?;
            sent += n as u64;
            progress(sent);
        }
        let put = with_digest(&loc);
        self.expect(reqwest::Method::PUT, &put, &[], None, &[201])
            .await?;
        Ok(())
    }

    /// Puts a manifest under `reference` (a tag or digest) with its media type; returns
    /// the digest the registry gives it (`Docker-Content-Digest`), else its sha256.
    pub async fn put_manifest(
        &mut self,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<String, RegistryError> {
        let url = format!("{}/v2/{}/manifests/{reference}", self.base, self.repo);
        let ct = ("Content-Type", media_type.to_string());
        let resp = self
            .expect(
                reqwest::Method::PUT,
                &url,
                &[ct],
                Some(bytes.to_vec()),
                &[200, 201],
            )
            .await?;
        let d = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        Ok(d.unwrap_or_else(|| crate::sha256_digest(bytes)))
    }

    /// The top-level descriptor of `object` (tag or digest): media type, bytes, digest; an
    /// index is not followed (`/distribution/{name}/json`).
    pub async fn descriptor(
        &mut self,
        object: &str,
    ) -> Result<(String, Vec<u8>, String), RegistryError> {
        let accept = [
            MT_OCI_INDEX,
            MT_DOCKER_LIST,
            MT_OCI_MANIFEST,
            MT_DOCKER_MANIFEST,
        ]
        .join(", ");
        let url = format!("{}/v2/{}/manifests/{object}", self.base, self.repo);
        let resp = self
            .expect(
                reqwest::Method::GET,
                &url,
                &[("Accept", accept)],
                None,
                &[200],
            )
            .await
            .map_err(|e| match e {
                RegistryError::Status { status: 404, .. } => {
                    RegistryError::NotFound { url: url.clone() }
                }
                e => e,
            })?;
        let ct = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let body = read_limited(resp, &url, MAX_MANIFEST).await?;
        let digest = crate::sha256_digest(&body);
        if object.starts_with("sha256:") {
            crate::verify(&url, object, &body)?;
        }
        Ok((ct, body, digest))
    }

    /// `docker login`: checks the credentials against the registry's `/v2/` with its own
    /// auth flow (basic, or a token from its realm). Err with the status dockerd names.
    pub async fn login(&mut self) -> Result<(), RegistryError> {
        let url = format!("{}/v2/", self.base);
        let resp = self.send(reqwest::Method::GET, &url, &[], None).await?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        Err(RegistryError::Status {
            url: url.clone(),
            status: status.as_u16(),
            body: format!(
                "login attempt to {url} failed with status: {} {}",
                status.as_u16(),
                status.canonical_reason().unwrap_or("")
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    //! Against a fake token-auth registry (a bearer challenge, a token realm that checks
    //! basic credentials, uploads, mounts and manifests), served here on 127.0.0.1.
    use crate::{Client, Credentials, Reference};
    use base64::Engine as _;
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[derive(Default)]
    struct State {
        /// (repo, digest) → bytes
        blobs: HashMap<(String, String), Vec<u8>>,
        uploads: HashMap<String, Vec<u8>>,
        /// (repo, reference) → (content type, bytes)
        manifests: HashMap<(String, String), (String, Vec<u8>)>,
        patches: usize,
        next: usize,
    }

    struct Req {
        method: String,
        path: String,
        query: HashMap<String, String>,
        headers: HashMap<String, String>,
        body: Vec<u8>,
    }

    async fn read_req(s: &mut tokio::net::TcpStream) -> Option<Req> {
        let mut buf = Vec::new();
        let mut b = [0u8; 4096];
        let head_end = loop {
            let n = s.read(&mut b).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&b[..n]);
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let mut first = lines.next()?.split(' ');
        let method = first.next()?.to_string();
        let target = first.next()?.to_string();
        let headers: HashMap<String, String> = lines
            .filter_map(|l| l.split_once(": "))
            .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
            .collect();
        let len: usize = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = buf[head_end..].to_vec();
        while body.len() < len {
            let n = s.read(&mut b).await.ok()?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&b[..n]);
        }
        let (path, q) = target.split_once('?').unwrap_or((&target, ""));
        let query = q
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.replace("%3A", ":")))
            .collect();
        Some(Req {
            method,
            path: path.to_string(),
            query,
            headers,
            body,
        })
    }

    fn handle(st: &Mutex<State>, port: u16, r: Req) -> (u16, Vec<(String, String)>, Vec<u8>) {
        let mut st = st.lock().unwrap();
        if r.path == "/token" {
            let want = base64::engine::general_purpose::STANDARD.encode("u:pw");
            if r.headers.get("authorization") != Some(&format!("Basic {want}")) {
                return (401, vec![], b"{}".to_vec());
            }
            return (200, vec![], br#"{"token":"tok"}"#.to_vec());
        }
        if r.headers.get("authorization").map(String::as_str) != Some("Bearer tok") {
            let ch = format!(r#"Bearer realm="http://127.0.0.1:{port}/token",service="fake""#);
            return (401, vec![("WWW-Authenticate".into(), ch)], vec![]);
        }
        if r.path == "/v2/" {
            return (200, vec![], b"{}".to_vec());
        }
        let rest = r.path.strip_prefix("/v2/").unwrap_or("");
        if let Some((repo, d)) = rest.split_once("/blobs/uploads/") {
            let repo = repo.to_string();
            if r.method == "POST" {
                if let (Some(m), Some(from)) = (r.query.get("mount"), r.query.get("from")) {
                    if let Some(b) = st.blobs.get(&(from.clone(), m.clone())).cloned() {
                        st.blobs.insert((repo, m.clone()), b);
                        return (201, vec![], vec![]);
                    }
                }
                st.next += 1;
                let id = format!("u{}", st.next);
                st.uploads.insert(id.clone(), Vec::new());
                let loc = format!("/v2/{repo}/blobs/uploads/{id}?_state=x");
                return (202, vec![("Location".into(), loc)], vec![]);
            }
            let Some(up) = st.uploads.get_mut(d) else {
                return (404, vec![], vec![]);
            };
            up.extend_from_slice(&r.body);
            if r.method == "PATCH" {
                st.patches += 1;
                let loc = format!("/v2/{repo}/blobs/uploads/{d}");
                return (202, vec![("Location".into(), loc)], vec![]);
            }
            let data = st.uploads.remove(d).unwrap_or_default();
            let digest = r.query.get("digest").cloned().unwrap_or_default();
            if crate::sha256_digest(&data) != digest {
                return (400, vec![], b"digest invalid".to_vec());
            }
            st.blobs.insert((repo, digest), data);
            return (201, vec![], vec![]);
        }
        if let Some((repo, d)) = rest.split_once("/blobs/") {
            let has = st.blobs.contains_key(&(repo.to_string(), d.to_string()));
            return (if has { 200 } else { 404 }, vec![], vec![]);
        }
        if let Some((repo, reference)) = rest.split_once("/manifests/") {
            let ct = r.headers.get("content-type").cloned().unwrap_or_default();
            let digest = crate::sha256_digest(&r.body);
            st.manifests
                .insert((repo.into(), reference.into()), (ct, r.body));
            return (201, vec![("Docker-Content-Digest".into(), digest)], vec![]);
        }
        (404, vec![], vec![])
    }

    async fn fake() -> (u16, Arc<Mutex<State>>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let st = Arc::new(Mutex::new(State::default()));
        let st2 = st.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = l.accept().await else {
                    return;
                };
                let st = st2.clone();
                tokio::spawn(async move {
                    while let Some(r) = read_req(&mut s).await {
                        let head = r.method == "HEAD";
                        let (code, hs, body) = handle(&st, port, r);
                        let mut out =
                            format!("HTTP/1.1 {code} X\r\nContent-Length: {}\r\n", body.len());
                        for (k, v) in hs {
                            out.push_str(&format!("{k}: {v}\r\n"));
                        }
                        out.push_str("\r\n");
                        let mut bytes = out.into_bytes();
                        if !head {
                            bytes.extend_from_slice(&body);
                        }
                        if s.write_all(&bytes).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (port, st)
    }

    fn creds(pw: &str) -> Option<Credentials> {
        Some(Credentials {
            username: "u".into(),
            password: pw.into(),
            identity_token: String::new(),
        })
    }

    #[tokio::test]
    async fn push_with_bearer_token_monolithic_chunked_mount_and_manifest() {
        let (port, st) = fake().await;
        let client = Client::new("test", vec![]);
        let r = Reference::parse(&format!("127.0.0.1:{port}/app")).unwrap();
        let mut s = client.session(&r, creds("pw")).for_push();
        let dir = tempfile::tempdir().unwrap();
        let small = dir.path().join("small");
        std::fs::write(&small, b"small blob").unwrap();
        let sd = crate::sha256_digest(b"small blob");
        assert!(!s.blob_exists(&sd).await.unwrap());
        s.upload_blob(&small, &sd, 10, 1000, |_| {}).await.unwrap();
        assert!(s.blob_exists(&sd).await.unwrap());
        assert_eq!(
            st.lock().unwrap().patches,
            0,
            "a small blob goes up in one PUT"
        );
        let big: Vec<u8> = (0..2500u32).map(|i| i as u8).collect();
        let bp = dir.path().join("big");
        std::fs::write(&bp, &big).unwrap();
        let bd = crate::sha256_digest(&big);
        let mut seen = Vec::new();
        s.upload_blob(&bp, &bd, 2500, 1000, |n| seen.push(n))
            .await
            .unwrap();
        assert_eq!(seen, vec![1000, 2000, 2500]);
        assert_eq!(st.lock().unwrap().patches, 3);
        // Into another repository of the same registry by mount, not upload.
        let r2 = Reference::parse(&format!("127.0.0.1:{port}/other")).unwrap();
        let mut s2 = client.session(&r2, creds("pw")).for_push();
        assert!(s2.mount_blob(&bd, "app").await.unwrap());
        assert!(s2.blob_exists(&bd).await.unwrap());
        assert!(!s2
            .mount_blob(&crate::sha256_digest(b"nope"), "app")
            .await
            .unwrap());
        let m = br#"{"schemaVersion":2}"#;
        let d = s
            .put_manifest("v1", crate::client::MT_DOCKER_MANIFEST, m)
            .await
            .unwrap();
        assert_eq!(d, crate::sha256_digest(m));
        let stored = st.lock().unwrap().manifests[&("app".into(), "v1".into())].clone();
        assert_eq!(stored.0, crate::client::MT_DOCKER_MANIFEST);
        // Login: the right password passes, a wrong one is refused.
        let mut ok = client.session(&r, creds("pw"));
        ok.login().await.unwrap();
        let mut bad = client.session(&r, creds("wrong"));
        match bad.login().await {
            Err(crate::RegistryError::Status { status: 401, .. }) => {}
            other => panic!("a wrong password logged in: {other:?}"),
        }
    }
}
