//! Images: list, inspect, pull, load (`docker load`), tag, remove.

use super::*;
use docker_api::images::*;
use docker_api::time::unix_from_rfc3339;
use docker_api::{ImageBackend, RegistryAuth};
use registry::Reference;

impl ImageBackend for Engine {
    async fn images(&self) -> ApiResult<Vec<ImageSummary>> {
        Ok(self
            .images
            .list()
            .into_iter()
            .map(|i| ImageSummary {
                id: i.id.clone(),
                repo_tags: i.tags,
                repo_digests: i.digests,
                created: i
                    .config
                    .created
                    .as_deref()
                    .map(unix_from_rfc3339)
                    .unwrap_or(0),
                parent_id: i.config.parent.clone().unwrap_or_default(),
                size: i.size,
                shared_size: -1,
                containers: -1,
                labels: i.config.config.labels.clone().unwrap_or_default(),
            })
            .collect())
    }

    async fn image_inspect(&self, name: &str) -> ApiResult<ImageInspect> {
        let id = self.resolve_image(name)?;
        let i = self
            .images
            .image(&id)
            .ok_or_else(|| ApiError::not_found(format!("No such image: {name}")))?;
        Ok(ImageInspect {
            id: i.id,
            repo_tags: i.tags,
            repo_digests: i.digests,
            parent: i.config.parent.clone().unwrap_or_default(),
            created: i.config.created.clone().unwrap_or_default(),
            architecture: i.config.architecture.clone(),
            os: i.config.os.clone(),
            size: i.size,
            config: i.config.config.clone(),
            root_fs: RootFs {
                kind: "layers".into(),
                layers: i.config.rootfs.diff_ids.clone(),
            },
        })
    }

    async fn image_pull(
        &self,
        image: &str,
        tag: &str,
        auth: Option<RegistryAuth>,
    ) -> ApiResult<mpsc::Receiver<ProgressMessage>> {
        let full = if tag.is_empty() {
            image.to_string()
        } else if tag.starts_with("sha256:") {
            format!("{image}@{tag}")
        } else {
            format!("{image}:{tag}")
        };
        let r = Reference::parse(&full).map_err(|e| ApiError::bad_request(e.to_string()))?;
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
            let mut s = me.registry.session(&r, creds);
            let shown = r
                .tagged()
                .unwrap_or_else(|| format!("{}@{}", r.familiar_name(), r.object()));
            match me.images.pull(&mut s, &r, &tx).await {
                Ok((_, existed)) => {
                    // dockerd's pull event names the reference, not the image id.
                    me.image_event("pull", &shown, &shown);
                    let msg = if existed {
                        format!("Status: Image is up to date for {shown}")
                    } else {
                        format!("Status: Downloaded newer image for {shown}")
                    };
                    let _ = tx.send(ProgressMessage::status(None, msg)).await;
                }
                Err(e) => {
                    let msg = match &e {
                        crate::images::ImageError::Registry(
                            registry::RegistryError::NotFound { .. },
                        ) => format!("manifest for {shown} not found: manifest unknown: {e}"),
                        _ => e.to_string(),
                    };
                    let _ = tx.send(ProgressMessage::error(msg)).await;
                }
            }
        });
        Ok(rx)
    }

    async fn image_load(&self, mut tar: mpsc::Receiver<Bytes>) -> ApiResult<Vec<String>> {
        use tokio::io::AsyncWriteExt;
        let path = self.images.scratch("load-archive");
        let spool = async {
            let mut f = tokio::fs::File::create(&path).await?;
            while let Some(chunk) = tar.recv().await {
                f.write_all(&chunk).await?;
            }
            f.flush().await
        };
        if let Err(e) = spool.await {
            let _ = std::fs::remove_file(&path);
            return Err(ApiError::internal(format!(
                "cannot store the archive at {}: {e}",
                path.display()
            )));
        }
        let me = self
            .arc()
            .ok_or_else(|| ApiError::internal("engine is shutting down"))?;
        let p = path.clone();
        let r = tokio::task::spawn_blocking(move || me.images.load(&p)).await;
        let _ = std::fs::remove_file(&path);
        match r {
            Ok(Ok(loaded)) => {
                for n in &loaded {
                    let id = self.images.resolve(n).unwrap_or_else(|| n.clone());
                    self.image_event("load", &id, n);
                }
                Ok(loaded)
            }
            Ok(Err(e @ crate::images::ImageError::Io { .. })) => {
                Err(ApiError::internal(e.to_string()))
            }
            Ok(Err(e)) => Err(ApiError::bad_request(format!(
                "cannot load the archive: {e}"
            ))),
            Err(e) => Err(ApiError::internal(format!("load task: {e}"))),
        }
    }

    async fn image_tag(&self, name: &str, repo: &str, tag: &str) -> ApiResult<()> {
        let id = self.resolve_image(name)?;
        let r = Reference::parse(&format!("{repo}:{tag}"))
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        let t = r
            .tagged()
            .ok_or_else(|| ApiError::bad_request("a tag is required"))?;
        self.images.tag(&id, &t).map_err(internal("tagging"))?;
        self.image_event("tag", &id, &t);
        Ok(())
    }

    async fn image_remove(&self, name: &str, force: bool) -> ApiResult<Vec<ImageDeleteItem>> {
        // The untag and delete events are sent by image_remove_inner as it goes.
        self.image_remove_inner(name, force).await
    }

    async fn image_history(&self, name: &str) -> ApiResult<Vec<HistoryItem>> {
        self.history_of(name)
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

    async fn image_import(
        &self,
        tar: mpsc::Receiver<Bytes>,
        o: ImportOptions,
    ) -> ApiResult<String> {
        self.import(tar, o).await
    }

    async fn image_commit(&self, o: CommitOptions) -> ApiResult<String> {
        self.commit(o).await
    }

    async fn image_prune(&self, f: PruneFilters) -> ApiResult<ImagePruneReport> {
        self.prune(f).await
    }

    async fn distribution(
        &self,
        name: &str,
        auth: Option<RegistryAuth>,
    ) -> ApiResult<DistributionInspect> {
        self.distribution_of(name, auth).await
    }
}

impl Engine {
    async fn image_remove_inner(&self, name: &str, force: bool) -> ApiResult<Vec<ImageDeleteItem>> {
        let id = self.resolve_image(name)?;
        let users: Vec<String> = self
            .containers
            .lock()
            .unwrap()
            .values()
            .map(|c| c.snapshot())
            .filter(|r| r.image_id == id)
            .map(|r| r.id[..12].to_string())
            .collect();
        let tagged = Reference::parse(name)
            .ok()
            .and_then(|r| r.tagged())
            .filter(|t| {
                self.images
                    .image(&id)
                    .map(|i| i.tags.contains(t))
                    .unwrap_or(false)
            });
        let mut out = Vec::new();
        if let Some(t) = tagged {
            let img = self.images.image(&id);
            let last = img.map(|i| i.tags.len() <= 1).unwrap_or(true);
            if last && !users.is_empty() && !force {
                return Err(ApiError::conflict(format!(
                    "conflict: unable to remove repository \
                    reference \"{name}\" (must force) - container {} is using its referenced image \
                        {}",
                    users[0],
                    &id[7..19]
                )));
            }
            self.images.untag(&t).map_err(internal("untagging"))?;
            self.image_event("untag", &id, &t);
            out.push(ImageDeleteItem {
                untagged: Some(t),
                deleted: None,
            });
            if last && users.is_empty() {
                let parent = self.images.config(&id).and_then(|c| c.parent);
                self.images
                    .delete(&id)
                    .map_err(internal("deleting image"))?;
                self.image_event("delete", &id, &id);
                out.push(ImageDeleteItem {
                    untagged: None,
                    deleted: Some(id),
                });
                self.delete_dangling_parents(parent, &mut out)?;
            }
            return Ok(out);
        }
        if !users.is_empty() && !force {
            return Err(ApiError::conflict(format!(
                "conflict: unable to delete {} (must be forced) \
                - image is being used by stopped container {}",
                &id[7..19],
                users[0]
            )));
        }
        let tags = self.images.image(&id).map(|i| i.tags).unwrap_or_default();
        if tags.len() > 1 && !force {
            return Err(ApiError::conflict(format!(
                "conflict: unable to delete {} (must be forced) \
                - image is referenced in multiple repositories",
                &id[7..19]
            )));
        }
        let parent = self.images.config(&id).and_then(|c| c.parent);
        for t in self
            .images
            .delete(&id)
            .map_err(internal("deleting image"))?
        {
            self.image_event("untag", &id, &t);
            out.push(ImageDeleteItem {
                untagged: Some(t),
                deleted: None,
            });
        }
        self.image_event("delete", &id, &id);
        out.push(ImageDeleteItem {
            untagged: None,
            deleted: Some(id),
        });
        self.delete_dangling_parents(parent, &mut out)?;
        Ok(out)
    }

    /// After a removal, as dockerd: the parent goes too when nothing names it, no container
    /// uses it and no other image is its child (a build's intermediate steps), and so on up.
    pub(super) fn delete_dangling_parents(
        &self,
        mut parent: Option<String>,
        out: &mut Vec<ImageDeleteItem>,
    ) -> ApiResult<()> {
        let used = self.images_in_use();
        while let Some(p) = parent.filter(|p| !p.is_empty()) {
            if self.images.config(&p).is_none()
                || !self.images.unnamed(&p)
                || used.contains(&p)
                || self.images.has_children(&p)
            {
                break;
            }
            parent = self.images.config(&p).and_then(|c| c.parent);
            self.images.delete(&p).map_err(internal("deleting image"))?;
            self.image_event("delete", &p, &p);
            out.push(ImageDeleteItem {
                untagged: None,
                deleted: Some(p),
            });
        }
        Ok(())
    }
}
