//! Images: the host's layer store, which every VM reads over 9p.

use super::Api;
use crate::*;
use docker_api::ImageBackend;

impl ImageBackend for Api {
    async fn images(&self) -> ApiResult<Vec<ImageSummary>> {
        // One entry per image id, with all its names (`docker tag` adds names).
        let all = self.images.all();
        let mut seen = std::collections::HashSet::new();
        Ok(all
            .iter()
            .filter(|i| seen.insert(i.id.clone()))
            .map(|i| ImageSummary {
                id: i.id.clone(),
                repo_tags: names_of(&all, &i.id),
                created: unix_from_rfc3339(&i.created),
                // A committed image has no manifest digest.
                repo_digests: (!i.digest.is_empty())
                    .then(|| {
                        format!(
                            "{}@{}",
                            i.name.rsplit_once(':').map(|(r, _)| r).unwrap_or(&i.name),
                            i.digest
                        )
                    })
                    .into_iter()
                    .collect(),
                size: i.size,
                containers: -1,
                shared_size: -1,
                ..Default::default()
            })
            .collect())
    }

    async fn image_inspect(&self, name: &str) -> ApiResult<ImageInspect> {
        let i = self
            .images
            .find(name)
            .ok_or_else(|| ApiError::not_found(format!("No such image: {name}")))?;
        Ok(ImageInspect {
            id: i.id.clone(),
            repo_tags: names_of(&self.images.all(), &i.id),
            repo_digests: (!i.digest.is_empty())
                .then(|| i.digest.clone())
                .into_iter()
                .collect(),
            created: i.created.clone(),
            architecture: "amd64".into(),
            os: "linux".into(),
            size: i.size,
            config: i.config.clone(),
            root_fs: RootFs {
                kind: "layers".into(),
                layers: i.layers.clone(),
            },
            ..Default::default()
        })
    }

    async fn image_pull(
        &self,
        image: &str,
        tag: &str,
        auth: Option<RegistryAuth>,
    ) -> ApiResult<mpsc::Receiver<ProgressMessage>> {
        let name = if tag.is_empty() {
            image.to_string()
        } else if tag.starts_with("sha256:") {
            format!("{image}@{tag}")
        } else {
            format!("{image}:{tag}")
        };
        let (tx, rx) = mpsc::channel(8);
        let d = self.0.clone();
        // Resolve first so that a missing image is a 404 (the CLI's "not found").
        let creds = auth.map(|a| registry::Credentials {
            username: a.username,
            password: a.password,
            identity_token: a.identity_token,
        });
        let rec = d.images.pull(&name, creds).await?;
        d.image_event("pull", &rec.name, &rec.name);
        tokio::spawn(async move {
            let _ = tx
                .send(ProgressMessage::status(
                    Some(&rec.name),
                    "Layers stored and unpacked on the host, shared read-only with the VMs",
                ))
                .await;
            let _ = tx
                .send(ProgressMessage::status(
                    None,
                    format!("Digest: {}", rec.digest),
                ))
                .await;
            let _ = tx
                .send(ProgressMessage::status(
                    None,
                    format!("Status: Image is up to date for {}", rec.name),
                ))
                .await;
        });
        Ok(rx)
    }

    async fn image_push(
        &self,
        name: &str,
        tag: &str,
        auth: Option<RegistryAuth>,
    ) -> ApiResult<mpsc::Receiver<ProgressMessage>> {
        self.push(name, tag, auth).await
    }

    async fn image_save(&self, names: Vec<String>) -> ApiResult<mpsc::Receiver<Bytes>> {
        self.save(names).await
    }

    async fn image_commit(&self, o: docker_api::images::CommitOptions) -> ApiResult<String> {
        self.commit(o).await
    }

    async fn image_history(&self, name: &str) -> ApiResult<Vec<docker_api::images::HistoryItem>> {
        self.history(name).await
    }

    async fn image_tag(&self, name: &str, repo: &str, tag: &str) -> ApiResult<()> {
        let rec = self.images.tag(name, repo, tag)?;
        self.image_event("tag", &rec.id, &rec.name);
        Ok(())
    }

    async fn image_remove(&self, name: &str, force: bool) -> ApiResult<Vec<ImageDeleteItem>> {
        let rec = self
            .images
            .find(name)
            .ok_or_else(|| ApiError::not_found(format!("No such image: {name}")))?;
        // As dockerd: the last name of an image that a container (running or not) was made
        // from is removed only with --force; the container keeps its layers either way.
        let last = self.images.all().iter().filter(|i| i.id == rec.id).count() == 1;
        if last && !force {
            let user = self
                .containers
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .values()
                .find(|c| c.image_id == rec.id && c.phase() != Phase::Removed)
                .map(|c| c.id.clone());
            if let Some(user) = user {
                let short = rec
                    .id
                    .trim_start_matches("sha256:")
                    .get(..12)
                    .unwrap_or(&rec.id)
                    .to_string();
                return Err(ApiError::conflict(format!(
                    "conflict: unable to remove repository \
                    reference \"{name}\" (must force) - container {} is using its referenced image \
                        {short}",
                    &user[..12]
                )));
            }
        }
        let rec = self
            .images
            .remove(name)?
            .ok_or_else(|| ApiError::not_found(format!("No such image: {name}")))?;
        self.image_event("untag", &rec.id, &rec.name);
        let mut out = vec![ImageDeleteItem {
            untagged: Some(rec.name.clone()),
            deleted: None,
        }];
        if !last {
            // Other names keep the image.
            return Ok(out);
        }
        self.image_event("delete", &rec.id, &rec.name);
        out.push(ImageDeleteItem {
            untagged: None,
            deleted: Some(rec.id),
        });
        // Blobs and trees nothing uses any more (those of a running container stay until
        // its VM is gone).
        match self.images.collect().await {
            Ok(c) => {
                report_collected(&c);
                out.extend(c.layers.into_iter().map(|l| ImageDeleteItem {
                    untagged: None,
                    deleted: Some(l),
                }));
            }
            Err(e) => eprintln!(
                "vmd: WARNING: collecting the layer store's garbage after removing {name}: {e:#}"
            ),
        }
        Ok(out)
    }
}

/// Every name of image `id`, in the order they were recorded.
fn names_of(all: &[images::ImageRecord], id: &str) -> Vec<String> {
    all.iter()
        .filter(|i| i.id == id)
        .map(|i| i.name.clone())
        .collect()
}
