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
