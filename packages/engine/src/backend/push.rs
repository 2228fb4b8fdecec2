//! `docker push`: an image's layers (gzip blobs kept by the store), config and a Docker
//! schema 2 manifest to a registry, with dockerd's progress messages and its final `aux`.

use super::*;
use docker_api::RegistryAuth;
use registry::Reference;
use serde_json::json;

const MT_DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const MT_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const MT_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MT_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const MT_DOCKER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

fn short(d: &str) -> String {
    d.trim_start_matches("sha256:").chars().take(12).collect()
}

impl Engine {
    /// The tags to push: the one named, or every tag of the repository when none is.
    pub(super) fn push_targets(
        &self,
        name: &str,
        tag: &str,
    ) -> ApiResult<(Reference, Vec<String>)> {
        let named_tag = !tag.is_empty() || super::image_ops::has_tag(name);
        let full = if tag.is_empty() {
            name.to_string()
        } else {
            format!("{name}:{tag}")
        };
        let r = Reference::parse(&full).map_err(|e| ApiError::bad_request(e.to_string()))?;
        let tags: Vec<String> = if named_tag {
            r.tagged().into_iter().collect()
        } else {
            let repo = r.familiar_name();
            let mut v: Vec<String> = self
                .images
                .list()
                .into_iter()
                .flat_map(|i| i.tags)
                .filter(|t| t.rsplit_once(':').is_some_and(|(n, _)| n == repo))
                .collect();
            v.sort();
            v
        };
        let missing = || {
            ApiError::not_found(format!(
                "An image does not exist locally with the tag: {}",
                r.familiar_name()
            ))
        };
        if tags.is_empty() || tags.iter().any(|t| self.images.resolve(t).is_none()) {
            return Err(missing());
        }
        Ok((r, tags))
    }

    pub(super) async fn push(
        &self,
        name: &str,
        tag: &str,
        auth: Option<RegistryAuth>,
    ) -> ApiResult<mpsc::Receiver<ProgressMessage>> {
        let (r, tags) = self.push_targets(name, tag)?;
        let me = self
            .arc()
            .ok_or_else(|| ApiError::internal("engine is shutting down"))?;
        let (tx, rx) = mpsc::channel(256);
        tokio::spawn(async move {
            let creds = auth.map(|a| registry::Credentials {
                username: a.username,
                password: a.password,
                identity_token: a.identity_token,
            });
            let _ = tx
                .send(ProgressMessage::status(
                    None,
                    format!(
                        "The push refers to repository [{}/{}]",
                        r.registry, r.repository
                    ),
                ))
                .await;
            for t in tags {
                if let Err(e) = me.push_one(&r, &t, creds.clone(), &tx).await {
                    let _ = tx.send(ProgressMessage::error(e)).await;
                    return;
                }
            }
        });
        Ok(rx)
    }

    async fn push_one(
        &self,
        r: &Reference,
        tagged: &str,
        creds: Option<registry::Credentials>,
        tx: &mpsc::Sender<ProgressMessage>,
    ) -> Result<(), String> {
        let say = |id: &str, s: &str| ProgressMessage::status(Some(id), s);
        let tag = tagged.rsplit_once(':').map(|(_, t)| t).unwrap_or("latest");
        let id = self
            .images
            .resolve(tagged)
            .ok_or_else(|| format!("An image does not exist locally with the tag: {tagged}"))?;
        let cbytes = self
            .images
            .config_bytes(&id)
            .ok_or_else(|| format!("no config for {id}"))?;
        let config = self
            .images
            .config(&id)
            .ok_or_else(|| format!("bad config for {id}"))?;
        let mut s = self.registry.session(r, creds).for_push();
        let diffs = config.rootfs.diff_ids.clone();
        for d in diffs.iter().rev() {
            let _ = tx.send(say(&short(d), "Preparing")).await;
        }
        let mut layers = Vec::new();
        let mut zstd = false;
        for d in diffs.iter().rev() {
            let sid = short(d);
            let store = self.arc().ok_or("engine is shutting down")?;
            let d2 = d.clone();
            let (digest, size, mt, path) =
                tokio::task::spawn_blocking(move || store.images.push_blob(&d2))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| e.to_string())?;
            zstd |= mt.contains("zstd");
            layers.insert(0, (digest.clone(), size, mt));
            if s.blob_exists(&digest).await.map_err(|e| e.to_string())? {
                let _ = tx.send(say(&sid, "Layer already exists")).await;
                continue;
            }
            let mut mounted = None;
            for cand in self.images.repos_with_layer(d) {
                let Ok(c) = Reference::parse(&cand) else {
                    continue;
                };
                if c.registry != r.registry || c.repository == r.repository {
                    continue;
                }
                if s.mount_blob(&digest, &c.repository).await.unwrap_or(false) {
                    mounted = Some(c.repository);
                    break;
                }
            }
            if let Some(from) = mounted {
                let _ = tx.send(say(&sid, &format!("Mounted from {from}"))).await;
                continue;
            }
            let txp = tx.clone();
            let sid2 = sid.clone();
            s.upload_blob(&path, &digest, size, registry::UPLOAD_CHUNK, move |n| {
                let mut m = ProgressMessage::status(Some(&sid2), "Pushing");
                m.progress_detail = Some(json!({ "current": n, "total": size }));
                let _ = txp.try_send(m);
            })
            .await
            .map_err(|e| e.to_string())?;
            let _ = tx.send(say(&sid, "Pushed")).await;
        }
        let cpath = self.images.blob_path(&id);
        if !s.blob_exists(&id).await.map_err(|e| e.to_string())? {
            s.upload_blob(
                &cpath,
                &id,
                cbytes.len() as u64,
                registry::UPLOAD_CHUNK,
                |_| {},
            )
            .await
            .map_err(|e| e.to_string())?;
        }
        // Docker schema 2, unless a layer is zstd (only OCI manifests can say so).
        let (mmt, cmt) = if zstd {
            (MT_OCI_MANIFEST, MT_OCI_CONFIG)
        } else {
            (MT_DOCKER_MANIFEST, MT_DOCKER_CONFIG)
        };
        let layer_descs: Vec<_> = layers
            .iter()
            .map(|(d, n, mt)| {
                let mt = if zstd || !mt.contains("gzip") {
                    mt.as_str()
                } else {
                    MT_DOCKER_GZIP
                };
                json!({ "mediaType": mt, "size": n, "digest": d })
            })
            .collect();
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": mmt,
            "config": { "mediaType": cmt, "size": cbytes.len(), "digest": id },
            "layers": layer_descs,
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
        let aux = ProgressMessage {
            progress_detail: Some(json!({})),
            aux: Some(json!({ "Tag": tag, "Digest": digest, "Size": mbytes.len() })),
            ..Default::default()
        };
        let _ = tx.send(aux).await;
        let _ = self
            .images
            .add_repo_digest(&id, format!("{}@{digest}", r.familiar_name()));
        self.image_event("push", &id, tagged);
        Ok(())
    }
}
