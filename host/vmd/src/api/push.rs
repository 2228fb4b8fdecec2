//! `docker push` and `docker login`, with the host's registry client (the `registry`
//! crate: token and basic auth; plain HTTP for loopback and `--insecure-registry`). A push
//! sends the image's blobs from the host store and a manifest made for them (Docker schema
//! 2 when every layer is gzip, else OCI, which can say uncompressed or zstd: a committed
//! layer is an uncompressed tar). A login only checks the credentials against the registry
//! and keeps nothing (the CLI keeps them and sends them with each push and pull).

use super::Api;
use crate::*;
use docker_api::images::{AuthConfig, AuthResponse};
use serde_json::json;

const MT_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const MT_DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const MT_DOCKER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
const MT_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MT_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";

/// A layer blob's media type from its first bytes: (OCI type, is gzip).
fn layer_type(p: &Path) -> (&'static str, bool) {
    use std::io::Read;
    let mut m = [0u8; 4];
    let n = std::fs::File::open(p)
        .and_then(|mut f| f.read(&mut m))
        .unwrap_or(0);
    if n >= 2 && m[..2] == [0x1f, 0x8b] {
        ("application/vnd.oci.image.layer.v1.tar+gzip", true)
    } else if n == 4 && m == [0x28, 0xb5, 0x2f, 0xfd] {
        ("application/vnd.oci.image.layer.v1.tar+zstd", false)
    } else {
        ("application/vnd.oci.image.layer.v1.tar", false)
    }
}

fn short(d: &str) -> String {
    d.trim_start_matches("sha256:").chars().take(12).collect()
}

fn creds_of(auth: Option<RegistryAuth>) -> Option<registry::Credentials> {
    auth.map(|a| registry::Credentials {
        username: a.username,
        password: a.password,
        identity_token: a.identity_token,
    })
}

impl Api {
    pub(super) async fn push(
        &self,
        name: &str,
        tag: &str,
        auth: Option<RegistryAuth>,
    ) -> ApiResult<mpsc::Receiver<ProgressMessage>> {
        let full = if tag.is_empty() {
            name.to_string()
        } else {
            format!("{name}:{tag}")
        };
        let r =
            registry::Reference::parse(&full).map_err(|e| ApiError::bad_request(e.to_string()))?;
        // The tag named, or every tag of the repository when none is.
        let named = !tag.is_empty() || name.rsplit('/').next().is_some_and(|l| l.contains(':'));
        let repo = r.familiar_name();
        let recs: Vec<images::ImageRecord> = if named {
            self.images
                .find(&images::record_name(&r))
                .into_iter()
                .collect()
        } else {
            self.images
                .all()
                .into_iter()
                .filter(|i| i.name.rsplit_once(':').is_some_and(|(n, _)| n == repo))
                .collect()
        };
        if recs.is_empty() {
            return Err(ApiError::not_found(format!(
                "An image does not exist locally with the tag: {repo}"
            )));
        }
        let (tx, rx) = mpsc::channel(256);
        let d = self.0.clone();
        let creds = creds_of(auth);
        tokio::spawn(async move {
            let _ = tx
                .send(ProgressMessage::status(
                    None,
                    format!(
                        "The push refers to repository [{}/{}]",
                        r.registry, r.repository
                    ),
                ))
                .await;
            for rec in recs {
                if let Err(e) = push_one(&d, &r, &rec, creds.clone(), &tx).await {
                    let _ = tx.send(ProgressMessage::error(e)).await;
                    return;
                }
            }
        });
        Ok(rx)
    }

    pub(super) async fn login(&self, a: AuthConfig) -> ApiResult<AuthResponse> {
        let addr = a
            .serveraddress
            .trim()
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .trim_end_matches("/v1")
            .trim_end_matches("/v2")
            .to_string();
        if addr.is_empty() || !(addr.contains('.') || addr.contains(':') || addr == "localhost") {
            return Err(ApiError::bad_request(format!(
                "cannot log in to {:?}: name a registry (HOST[:PORT]); vmd has no default index",
                a.serveraddress
            )));
        }
        let r = registry::Reference::parse(&format!("{addr}/login")).map_err(|_| {
            ApiError::bad_request(format!("invalid registry address {:?}", a.serveraddress))
        })?;
        let c = registry::Credentials {
            username: a.username,
            password: a.password,
            identity_token: a.identity_token,
        };
        let mut s = self.images.registry().session(&r, Some(c));
        match s.login().await {
            Ok(()) => Ok(AuthResponse {
                status: "Login Succeeded".into(),
                identity_token: String::new(),
            }),
            Err(registry::RegistryError::Status {
                status: 401 | 403,
                url,
                body,
            }) => Err(ApiError::new(
                http::StatusCode::UNAUTHORIZED,
                if body.starts_with("login attempt") {
                    body
                } else {
                    format!("login attempt to {url} failed with status: 401 Unauthorized")
                },
            )),
            Err(e) => Err(ApiError::internal(e.to_string())),
        }
    }
}

/// One image to `r`'s repository under its record's tag, with dockerd's progress messages
/// and its final `aux`.
async fn push_one(
    d: &Arc<Daemon>,
    r: &registry::Reference,
    rec: &images::ImageRecord,
    creds: Option<registry::Credentials>,
    tx: &mpsc::Sender<ProgressMessage>,
) -> Result<(), String> {
    let say = |id: &str, s: &str| ProgressMessage::status(Some(id), s);
    let tag = rec
        .name
        .rsplit_once(':')
        .map(|(_, t)| t)
        .unwrap_or("latest");
    let store = &d.images.store;
    let damage = {
        let (st, rec) = (store.clone(), rec.clone());
        tokio::task::spawn_blocking(move || st.check(&rec.id, &rec.layers, &rec.diff_ids))
            .await
            .map_err(|e| e.to_string())?
    };
    // Blobs only: a tree is not pushed.
    if let Some(b) = damage
        .iter()
        .find(|x| matches!(x, store::Damage::Blob { .. }))
    {
        return Err(format!("the image is damaged in the host store: {b}"));
    }
    let mut s = d.images.registry().session(r, creds).for_push();
    for l in rec.layers.iter().rev() {
        let _ = tx.send(say(&short(l), "Preparing")).await;
    }
    let mut layers = Vec::new();
    let mut all_gzip = true;
    for l in &rec.layers {
        let path = store.blob_path(l);
        let size = std::fs::metadata(&path).map_err(|e| e.to_string())?.len();
        let (mt, gzip) = layer_type(&path);
        all_gzip &= gzip;
        layers.push((l.clone(), size, mt));
        let sid = short(l);
        if s.blob_exists(l).await.map_err(|e| e.to_string())? {
            let _ = tx.send(say(&sid, "Layer already exists")).await;
            continue;
        }
        let (txp, sid2) = (tx.clone(), sid.clone());
        s.upload_blob(&path, l, size, registry::UPLOAD_CHUNK, move |n| {
            let mut m = ProgressMessage::status(Some(&sid2), "Pushing");
            m.progress_detail = Some(json!({ "current": n, "total": size }));
            let _ = txp.try_send(m);
        })
        .await
        .map_err(|e| e.to_string())?;
        let _ = tx.send(say(&sid, "Pushed")).await;
    }
    let cpath = store.blob_path(&rec.id);
    let csize = std::fs::metadata(&cpath).map_err(|e| e.to_string())?.len();
    if !s.blob_exists(&rec.id).await.map_err(|e| e.to_string())? {
        s.upload_blob(&cpath, &rec.id, csize, registry::UPLOAD_CHUNK, |_| {})
            .await
            .map_err(|e| e.to_string())?;
    }
    let (mmt, cmt) = if all_gzip {
        (MT_DOCKER_MANIFEST, MT_DOCKER_CONFIG)
    } else {
        (MT_OCI_MANIFEST, MT_OCI_CONFIG)
    };
    let descs: Vec<_> = layers
        .iter()
        .map(|(dg, n, mt)| {
            let mt = if all_gzip { MT_DOCKER_GZIP } else { mt };
            json!({ "mediaType": mt, "size": n, "digest": dg })
        })
        .collect();
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": mmt,
        "config": { "mediaType": cmt, "size": csize, "digest": rec.id },
        "layers": descs,
    });
    let mbytes = serde_json::to_vec_pretty(&manifest).map_err(|e| e.to_string())?;
    let digest = s
        .put_manifest(tag, mmt, &mbytes)
        .await
        .map_err(|e| e.to_string())?;
    let _ = tx
        .send(ProgressMessage::status(
            None,
            format!("{tag}: digest: {digest} size: {}", mbytes.len()),
        ))
        .await;
    let _ = tx
        .send(ProgressMessage {
            progress_detail: Some(json!({})),
            aux: Some(json!({ "Tag": tag, "Digest": digest, "Size": mbytes.len() })),
            ..Default::default()
        })
        .await;
    d.image_event("push", &rec.id, &rec.name);
    Ok(())
}
