//! The images and system group's operations beyond pull/load/tag/remove (the trait methods
//! in [`super::images`] and [`super::system`] call these): history, save, import, commit,
//! prune, push, distribution inspect, login, disk usage.

use super::*;
use crate::images::{changes, diff_tar, ImageConfig};
use docker_api::images::*;
use docker_api::time::{rfc3339, unix_from_rfc3339};
use docker_api::RegistryAuth;
use registry::Reference;
use serde_json::{json, Map, Value};

fn creds(a: Option<RegistryAuth>) -> Option<registry::Credentials> {
    a.map(|a| registry::Credentials {
        username: a.username,
        password: a.password,
        identity_token: a.identity_token,
    })
}

fn bad<E: std::fmt::Display>(e: E) -> ApiError {
    ApiError::bad_request(e.to_string())
}

/// `repo[:tag]` → the store's `name:tag` (tag `latest` when none).
fn tag_of(repo: &str, tag: Option<&str>) -> ApiResult<String> {
    let full = match tag {
        Some(t) if !t.is_empty() => format!("{repo}:{t}"),
        _ => repo.to_string(),
    };
    let r = Reference::parse(&full).map_err(bad)?;
    if r.digest.is_some() {
        return Err(ApiError::bad_request(
            "refusing to create a tag with a digest",
        ));
    }
    r.tagged()
        .ok_or_else(|| ApiError::bad_request("a tag is required"))
}

/// Whether a user's image name names a tag (`a/b:1`, not `host:5000/a`).
pub(super) fn has_tag(name: &str) -> bool {
    name.rsplit('/')
        .next()
        .is_some_and(|last| last.contains(':'))
}

/// Copies the set fields of a container config (`from`) over an image's run config.
fn overlay(run: &mut Map<String, Value>, from: &ContainerConfig) {
    let v = serde_json::to_value(from).unwrap_or_default();
    let Value::Object(m) = v else { return };
    for (k, val) in m {
        let set = match &val {
            Value::Null => false,
            Value::String(s) => !s.is_empty(),
            Value::Array(a) => !a.is_empty(),
            Value::Object(o) => !o.is_empty(),
            _ => false,
        };
        if !set {
            continue;
        }
        match k.as_str() {
            "Env" => {
                let mut env: Vec<String> = run
                    .get("Env")
                    .and_then(|e| serde_json::from_value(e.clone()).ok())
                    .unwrap_or_default();
                for e in val
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                {
                    let key = e.split('=').next().unwrap_or(e);
                    env.retain(|x| x.split('=').next() != Some(key));
                    env.push(e.to_string());
                }
                run.insert(k, json!(env));
            }
            "Labels" | "ExposedPorts" | "Volumes" => {
                let dst = run.entry(k).or_insert_with(|| json!({}));
                if !dst.is_object() {
                    *dst = json!({});
                }
                if let (Some(d), Some(s)) = (dst.as_object_mut(), val.as_object()) {
                    d.extend(s.clone());
                }
            }
            "Cmd" | "Entrypoint" | "User" | "WorkingDir" | "StopSignal" | "Healthcheck"
            | "Shell" | "OnBuild" => {
                run.insert(k, val);
            }
            // Per-container settings (Hostname, Tty, AttachStdin, Image, ...) stay out.
            _ => {}
        }
    }
}

impl Engine {
    /// An image event on the engine's bus (packages/engine/src/events.rs), as dockerd
    /// sends them: the actor is `id`, with the reference in its `name` attribute.
    pub(super) fn image_event(&self, action: &str, id: &str, name: &str) {
        crate::events::publish("image", action, id, [("name", name.to_string())]);
    }

    pub(super) fn history_of(&self, name: &str) -> ApiResult<Vec<HistoryItem>> {
        let id = self.resolve_image(name)?;
        let img = self
            .images
            .image(&id)
            .ok_or_else(|| ApiError::not_found(format!("No such image: {name}")))?;
        Ok(history(&img.config, &id, img.tags, |d| {
            self.images.layer_size(d)
        }))
    }

    pub(super) async fn save(&self, names: Vec<String>) -> ApiResult<mpsc::Receiver<Bytes>> {
        // (id, tags), in the order asked, one entry per image.
        let mut images: Vec<(String, Vec<String>)> = Vec::new();
        for n in &names {
            let id = self.resolve_image(n)?;
            let tag = Reference::parse(n)
                .ok()
                .and_then(|r| r.tagged())
                .filter(|t| self.images.resolve(t).as_deref() == Some(id.as_str()))
                .filter(|_| !hex_prefix_of(n, &id));
            match images.iter_mut().find(|(i, _)| *i == id) {
                Some((_, tags)) => tags.extend(tag.filter(|t| !tags.contains(t))),
                None => images.push((id, tag.into_iter().collect())),
            }
        }
        let me = self
            .arc()
            .ok_or_else(|| ApiError::internal("engine is shutting down"))?;
        // Check every layer has its archive before the 200 goes out.
        for (id, _) in &images {
            let c = self.images.config(id).unwrap_or_default();
            for d in &c.rootfs.diff_ids {
                if self.images.layer_source(d).is_none() {
                    return Err(ApiError::internal(format!(
                        "cannot save {id}: layer {d} has no stored archive (unpacked by an \
                         older engine or shared by the host); pull or load the image again"
                    )));
                }
            }
        }
        let (tx, rx) = mpsc::channel::<Bytes>(8);
        tokio::task::spawn_blocking(move || {
            let w =
                std::io::BufWriter::with_capacity(256 << 10, docker_api::body::ChannelWriter(tx));
            let r = me.images.save_archive(&images, w).and_then(|mut w| {
                std::io::Write::flush(&mut w).map_err(|e| crate::images::ImageError::Io {
                    path: "the client".into(),
                    source: e,
                })
            });
            if let Err(e) = r {
                // The 200 is out: a broken-off archive is what the client sees.
                eprintln!("engine: image save: {e}");
            }
            for (id, tags) in &images {
                me.image_event("save", id, tags.first().map(String::as_str).unwrap_or(id));
            }
        });
        Ok(rx)
    }

    pub(super) async fn import(
        &self,
        mut tar: mpsc::Receiver<Bytes>,
        o: ImportOptions,
    ) -> ApiResult<String> {
        use tokio::io::AsyncWriteExt;
        let (os, arch) = match o.platform.as_deref() {
            None | Some("") | Some("linux") | Some("linux/amd64") => ("linux", "amd64"),
            Some(p) => {
                return Err(ApiError::bad_request(format!(
                    "platform {p:?} is not supported by this engine (linux/amd64 only)"
                )))
            }
        };
        let tag = match &o.repo {
            Some(r) => Some(tag_of(r, o.tag.as_deref())?),
            None => None,
        };
        let mut run = Map::new();
        changes::apply(&mut run, &o.changes).map_err(ApiError::bad_request)?;
        let raw = self.images.scratch("import-body");
        let spool = async {
            let mut f = tokio::fs::File::create(&raw).await?;
            while let Some(c) = tar.recv().await {
                f.write_all(&c).await?;
            }
            f.flush().await
        };
        if let Err(e) = spool.await {
            let _ = std::fs::remove_file(&raw);
            return Err(ApiError::internal(format!("storing the import: {e}")));
        }
        let me = self
            .arc()
            .ok_or_else(|| ApiError::internal("engine is shutting down"))?;
        let raw2 = raw.clone();
        let diff = tokio::task::spawn_blocking(move || -> Result<String, String> {
            let plain = me.images.scratch("import-tar");
            let r = (|| {
                let f = std::fs::File::open(&raw2).map_err(|e| e.to_string())?;
                let mut rd = layer_unpack::decompress(std::io::BufReader::new(f))
                    .map_err(|e| e.to_string())?;
                let mut out = std::fs::File::create(&plain).map_err(|e| e.to_string())?;
                std::io::copy(&mut rd, &mut out).map_err(|e| format!("not a tarball: {e}"))?;
                me.images.add_layer(&plain, &[]).map_err(|e| e.to_string())
            })();
            let _ = std::fs::remove_file(&plain);
            r
        })
        .await
        .map_err(internal("import task"))?;
        let _ = std::fs::remove_file(&raw);
        let diff = diff.map_err(|e| ApiError::bad_request(format!("cannot import: {e}")))?;
        let now = rfc3339(now_nanos());
        let mut hist = json!({ "created": now });
        if !o.message.is_empty() {
            hist["comment"] = json!(o.message);
        }
        let mut cfg = json!({
            "architecture": arch,
            "os": os,
            "created": now,
            "config": Value::Object(run),
            "rootfs": { "type": "layers", "diff_ids": [diff] },
            "history": [hist],
        });
        if !o.message.is_empty() {
            cfg["comment"] = json!(o.message);
        }
        let bytes = serde_json::to_vec(&cfg).map_err(internal("config"))?;
        let id = self
            .images
            .add_config(&bytes)
            .map_err(internal("storing the image"))?;
        if let Some(t) = &tag {
            self.images.tag(&id, t).map_err(internal("tagging"))?;
        }
        self.image_event("import", &id, tag.as_deref().unwrap_or(&id));
        Ok(id)
    }

    pub(super) async fn commit(&self, o: CommitOptions) -> ApiResult<String> {
        let c = self.find(&o.container)?;
        let rec = c.snapshot();
        let tag = match &o.repo {
            Some(r) => Some(tag_of(r, o.tag.as_deref())?),
            None => None,
        };
        let parent = self.images.config_bytes(&rec.image_id).ok_or_else(|| {
            ApiError::internal(format!("the container's image {} is gone", rec.image_id))
        })?;
        let mut cfg: Value = serde_json::from_slice(&parent).map_err(internal("image config"))?;
        let mut run = match cfg.get("config") {
            Some(Value::Object(m)) => m.clone(),
            _ => Map::new(),
        };
        overlay(&mut run, &rec.config);
        if let Some(body) = &o.config {
            overlay(&mut run, body);
        }
        changes::apply(&mut run, &o.changes).map_err(ApiError::bad_request)?;
        let lowers = self.images.lowers(&rec.image_id).unwrap_or_default();
        let upper = c.data.join("upper");
        let me = self
            .arc()
            .ok_or_else(|| ApiError::internal("engine is shutting down"))?;
        let diff = tokio::task::spawn_blocking(move || -> Result<String, String> {
            let t = me.images.scratch("commit-tar");
            let r = (|| {
                let f = std::fs::File::create(&t).map_err(|e| e.to_string())?;
                let mut f = diff_tar(&upper, std::io::BufWriter::new(f))
                    .map_err(|e| format!("reading the container's changes: {e}"))?;
                std::io::Write::flush(&mut f).map_err(|e| e.to_string())?;
                drop(f);
                me.images.add_layer(&t, &lowers).map_err(|e| e.to_string())
            })();
            let _ = std::fs::remove_file(&t);
            r
        })
        .await
        .map_err(internal("commit task"))?
        .map_err(|e| ApiError::internal(format!("commit: {e}")))?;
        let now = rfc3339(now_nanos());
        let created_by = std::iter::once(rec.path.clone())
            .chain(rec.args.iter().cloned())
            .collect::<Vec<_>>()
            .join(" ");
        let mut h = json!({ "created": now, "created_by": created_by });
        if !o.author.is_empty() {
            h["author"] = json!(o.author);
            cfg["author"] = json!(o.author);
        }
        if !o.comment.is_empty() {
            h["comment"] = json!(o.comment);
            cfg["comment"] = json!(o.comment);
        }
        cfg["config"] = Value::Object(run);
        cfg["created"] = json!(now);
        cfg["container"] = json!(rec.id);
        cfg["parent"] = json!(rec.image_id);
        if !cfg["rootfs"]["diff_ids"].is_array() {
            cfg["rootfs"] = json!({ "type": "layers", "diff_ids": [] });
        }
        if let Some(a) = cfg["rootfs"]["diff_ids"].as_array_mut() {
            a.push(json!(diff));
        }
        if !cfg["history"].is_array() {
            cfg["history"] = json!([]);
        }
        if let Some(a) = cfg["history"].as_array_mut() {
            a.push(h);
        }
        let bytes = serde_json::to_vec(&cfg).map_err(internal("config"))?;
        let id = self
            .images
            .add_config(&bytes)
            .map_err(internal("storing the image"))?;
        if let Some(t) = &tag {
            self.images.tag(&id, t).map_err(internal("tagging"))?;
        }
        self.image_event("commit", &id, tag.as_deref().unwrap_or(&id));
        Ok(id)
    }

    pub(super) fn images_in_use(&self) -> std::collections::HashSet<String> {
        self.containers
            .lock()
            .unwrap()
            .values()
            .map(|c| c.snapshot().image_id)
            .collect()
    }

    pub(super) async fn prune(&self, f: PruneFilters) -> ApiResult<ImagePruneReport> {
        let used = self.images_in_use();
        let mut deleted = Vec::new();
        let mut space = 0i64;
        // As dockerd: only images no other image names as parent are candidates (a tagged
        // build's intermediate steps stay); a removed one takes its unnamed parents along.
        for img in self.images.list() {
            if used.contains(&img.id)
                || (f.dangling && !img.tags.is_empty())
                || self.images.config(&img.id).is_none()
                || self.images.has_children(&img.id)
            {
                continue;
            }
            let created = img
                .config
                .created
                .as_deref()
                .map(unix_from_rfc3339)
                .unwrap_or(0);
            let labels = img.config.config.labels.clone().unwrap_or_default();
            if !f.matches(&labels, created) {
                continue;
            }
            // What goes: the layers no other image has.
            let others: std::collections::HashSet<String> = self
                .images
                .list()
                .into_iter()
                .filter(|o| o.id != img.id)
                .flat_map(|o| o.config.rootfs.diff_ids)
                .collect();
            let freed: i64 = img
                .config
                .rootfs
                .diff_ids
                .iter()
                .filter(|d| !others.contains(*d))
                .map(|d| self.images.layer_size(d))
                .sum();
            let parent = self.images.config(&img.id).and_then(|c| c.parent);
            let untagged = self
                .images
                .delete(&img.id)
                .map_err(internal("deleting image"))?;
            for t in untagged {
                self.image_event("untag", &img.id, &t);
                deleted.push(ImageDeleteItem {
                    untagged: Some(t),
                    deleted: None,
                });
            }
            self.image_event("delete", &img.id, &img.id);
            deleted.push(ImageDeleteItem {
                untagged: None,
                deleted: Some(img.id.clone()),
            });
            space += freed;
            self.delete_dangling_parents(parent, &mut deleted)?;
        }
        Ok(ImagePruneReport {
            images_deleted: (!deleted.is_empty()).then_some(deleted),
            space_reclaimed: space,
        })
    }

    pub(super) async fn distribution_of(
        &self,
        name: &str,
        auth: Option<RegistryAuth>,
    ) -> ApiResult<DistributionInspect> {
        let r = Reference::parse(name).map_err(bad)?;
        let mut s = self.registry.session(&r, creds(auth));
        let reg = |e: registry::RegistryError| match e {
            registry::RegistryError::NotFound { .. } => {
                ApiError::not_found(format!("{name}: manifest unknown"))
            }
            registry::RegistryError::Status { status: 401, .. } => ApiError::new(
                http::StatusCode::UNAUTHORIZED,
                format!("{name}: unauthorized: {e}"),
            ),
            e => ApiError::internal(e.to_string()),
        };
        let (ct, bytes, digest) = s.descriptor(r.object()).await.map_err(reg)?;
        let m: registry::Manifest = serde_json::from_slice(&bytes).map_err(internal("manifest"))?;
        let media_type = m.media_type.clone().unwrap_or(ct.clone());
        let platforms = if m.is_index(&ct) {
            m.manifests
                .unwrap_or_default()
                .into_iter()
                .filter_map(|d| d.platform)
                .map(|p| OciPlatform {
                    architecture: p.architecture,
                    os: p.os,
                    os_version: None,
                    variant: p.variant,
                })
                .collect()
        } else {
            let cd = m
                .config
                .ok_or_else(|| ApiError::internal("manifest without config"))?;
            let cb = s.blob_bytes(&cd).await.map_err(reg)?;
            let c: ImageConfig = serde_json::from_slice(&cb).map_err(internal("config"))?;
            vec![OciPlatform {
                architecture: c.architecture,
                os: c.os,
                os_version: None,
                variant: None,
            }]
        };
        Ok(DistributionInspect {
            descriptor: OciDescriptor {
                media_type,
                digest,
                size: bytes.len() as i64,
            },
            platforms,
        })
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
                "cannot log in to {:?}: name a registry (HOST[:PORT]); no default index is \
                 reachable from this engine",
                a.serveraddress
            )));
        }
        let r = Reference::parse(&format!("{addr}/login")).map_err(|_| {
            ApiError::bad_request(format!("invalid registry address {:?}", a.serveraddress))
        })?;
        let c = registry::Credentials {
            username: a.username,
            password: a.password,
            identity_token: a.identity_token,
        };
        let mut s = self.registry.session(&r, Some(c));
        match s.login().await {
            Ok(()) => Ok(AuthResponse {
                status: "Login Succeeded".into(),
                identity_token: String::new(),
            }),
            Err(registry::RegistryError::Status {
                status: 401 | 403,
                url,
                body,
            }) => {
                let msg = if body.starts_with("login attempt") {
                    body
                } else {
                    format!("login attempt to {url} failed with status: 401 Unauthorized")
                };
                Err(ApiError::new(http::StatusCode::UNAUTHORIZED, msg))
            }
            Err(e) => Err(ApiError::internal(e.to_string())),
        }
    }

    pub(super) async fn df(&self) -> ApiResult<DiskUsage> {
        let images = self.images.list();
        let mut uses: HashMap<String, usize> = HashMap::new();
        for i in &images {
            for d in &i.config.rootfs.diff_ids {
                *uses.entry(d.clone()).or_default() += 1;
            }
        }
        let size_of: HashMap<String, i64> = uses
            .keys()
            .map(|d| (d.clone(), self.images.layer_size(d)))
            .collect();
        let recs: Vec<(crate::containers::Record, PathBuf)> = self
            .containers
            .lock()
            .unwrap()
            .values()
            .map(|c| (c.snapshot(), c.data.join("upper")))
            .collect();
        let summaries = ContainerBackend::containers(self, true).await?;
        let mut image_sizes = HashMap::new();
        let mut out_images = Vec::new();
        for i in &images {
            let shared: i64 = i
                .config
                .rootfs
                .diff_ids
                .iter()
                .filter(|d| uses.get(*d).copied().unwrap_or(0) > 1)
                .map(|d| size_of.get(d).copied().unwrap_or(0))
                .sum();
            image_sizes.insert(i.id.clone(), i.size);
            out_images.push(ImageSummary {
                id: i.id.clone(),
                repo_tags: i.tags.clone(),
                repo_digests: i.digests.clone(),
                created: i
                    .config
                    .created
                    .as_deref()
                    .map(unix_from_rfc3339)
                    .unwrap_or(0),
                size: i.size,
                shared_size: shared,
                labels: i.config.config.labels.clone().unwrap_or_default(),
                containers: recs.iter().filter(|(r, _)| r.image_id == i.id).count() as i64,
                ..Default::default()
            });
        }
        let mut containers = Vec::new();
        for s in summaries {
            let Some((rec, upper)) = recs.iter().find(|(r, _)| r.id == s.id) else {
                continue;
            };
            let rw = crate::images::dir_size(upper);
            let mut v = serde_json::to_value(&s).unwrap_or_default();
            v["SizeRw"] = json!(rw);
            v["SizeRootFs"] = json!(rw + image_sizes.get(&rec.image_id).copied().unwrap_or(0));
            containers.push(v);
        }
        Ok(DiskUsage {
            layers_size: size_of.values().sum(),
            images: out_images,
            containers,
            // The volume store is another helper's (not on main yet): no volumes here.
            volumes: Vec::new(),
            build_cache: Vec::new(),
        })
    }
}

fn hex_prefix_of(name: &str, id: &str) -> bool {
    let h = name.strip_prefix("sha256:").unwrap_or(name);
    h.len() >= 4 && id.trim_start_matches("sha256:").starts_with(h)
}

/// The history entries of a config, newest first, as dockerd lists them: the top one has
/// the image id and tags, the others `<missing>`; each entry that made a layer has its size.
pub(super) fn history(
    c: &ImageConfig,
    id: &str,
    tags: Vec<String>,
    size: impl Fn(&str) -> i64,
) -> Vec<HistoryItem> {
    let created = |s: &Option<String>| s.as_deref().map(unix_from_rfc3339).unwrap_or(0);
    let mut layers = c.rootfs.diff_ids.iter();
    let mut out: Vec<HistoryItem> = if c.history.is_empty() {
        layers
            .map(|d| HistoryItem {
                id: "<missing>".into(),
                created: created(&c.created),
                size: size(d),
                ..Default::default()
            })
            .collect()
    } else {
        c.history
            .iter()
            .map(|h| HistoryItem {
                id: "<missing>".into(),
                created: created(&h.created),
                created_by: h.created_by.clone().unwrap_or_default(),
                tags: None,
                size: if h.empty_layer {
                    0
                } else {
                    layers.next().map(|d| size(d)).unwrap_or(0)
                },
                comment: h.comment.clone().unwrap_or_default(),
            })
            .collect()
    };
    out.reverse();
    if let Some(top) = out.first_mut() {
        top.id = id.to_string();
        top.tags = Some(tags);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn history_as_dockerd_lists_it() {
        let c: ImageConfig = serde_json::from_str(concat!(
            r#"{"created":"2024-01-01T00:00:00Z","#,
            r#""rootfs":{"type":"layers","diff_ids":["sha256:aa","sha256:bb"]},"#,
            r#""history":[{"created":"2024-01-01T00:00:00Z","created_by":"ADD rootfs /"},"#,
            r#"{"created":"2024-01-01T00:00:01Z","created_by":"CMD [\"sh\"]","#,
            r#""empty_layer":true},"#,
            r#"{"created":"2024-01-01T00:00:02Z","created_by":"RUN touch /x","comment":"c"}]}"#
        ))
        .unwrap();
        let h = history(&c, "sha256:id", vec!["x:1".into()], |d| {
            if d == "sha256:aa" {
                100
            } else {
                7
            }
        });
        assert_eq!(h.len(), 3);
        assert_eq!(h[0].id, "sha256:id");
        assert_eq!(h[0].tags, Some(vec!["x:1".to_string()]));
        assert_eq!((h[0].size, h[0].comment.as_str()), (7, "c"));
        assert_eq!(
            (h[1].id.as_str(), h[1].size, h[1].tags.clone()),
            ("<missing>", 0, None)
        );
        assert_eq!((h[2].size, h[2].created), (100, 1_704_067_200));
        assert_eq!(h[2].created_by, "ADD rootfs /");
    }

    #[test]
    fn commit_overlay_merges_env_and_labels() {
        let mut run: Map<String, Value> = serde_json::from_value(json!({
            "Env": ["PATH=/bin", "A=0"], "Cmd": ["sh"], "Labels": {"a": "1"}
        }))
        .unwrap();
        let cc: ContainerConfig = serde_json::from_value(json!({
            "Env": ["A=1"], "Cmd": ["echo", "hi"], "Labels": {"b": "2"}, "Hostname": "h"
        }))
        .unwrap();
        overlay(&mut run, &cc);
        assert_eq!(run["Env"], json!(["PATH=/bin", "A=1"]));
        assert_eq!(run["Cmd"], json!(["echo", "hi"]));
        assert_eq!(run["Labels"], json!({"a": "1", "b": "2"}));
        assert!(run.get("Hostname").is_none());
    }

    #[test]
    fn tags_and_names() {
        assert!(has_tag("a/b:1"));
        assert!(!has_tag("127.0.0.1:5000/a"));
        assert_eq!(tag_of("busybox", None).unwrap(), "busybox:latest");
        assert_eq!(tag_of("h:5000/x", Some("2")).unwrap(), "h:5000/x:2");
        assert!(tag_of("Bad Name", None).is_err());
    }

    /// An engine on the recording runtime with `busybox:latest` (one layer with one file).
    async fn engine(root: &Path) -> Arc<Engine> {
        use clap::Parser;
        let args = crate::args::Args::parse_from([
            "engine".as_ref(),
            "--data-root".as_ref(),
            root.as_os_str(),
            "--bridge".as_ref(),
            "none".as_ref(),
        ]);
        let rt = Arc::new(crate::runtime::fake::Fake::default());
        let e = Arc::new(Engine::with_runtime(&args, rt).unwrap());
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(1000);
        h.set_mode(0o644);
        b.append_data(&mut h, "base.bin", &[7u8; 1000][..]).unwrap();
        let t = root.join("base.tar");
        std::fs::write(&t, b.into_inner().unwrap()).unwrap();
        let d = e.images.add_layer(&t, &[]).unwrap();
        let c = json!({
            "architecture": "amd64", "os": "linux", "created": "2024-01-01T00:00:00Z",
            "config": {"Cmd": ["sh"], "Env": ["PATH=/bin"]},
            "rootfs": {"type": "layers", "diff_ids": [d]},
            "history": [{"created": "2024-01-01T00:00:00Z", "created_by": "ADD base"}],
        });
        let id = e.images.add_config(c.to_string().as_bytes()).unwrap();
        e.images.tag(&id, "busybox:latest").unwrap();
        e.clone().restore().await;
        e
    }

    fn create(cmd: &[&str]) -> ContainerCreateRequest {
        serde_json::from_value(json!({"Image": "busybox", "Cmd": cmd})).unwrap()
    }

    #[tokio::test]
    async fn commit_a_containers_changes_with_changes_and_parent() {
        let d = tempfile::tempdir().unwrap();
        let e = engine(d.path()).await;
        let base = e.resolve_image("busybox").unwrap();
        let c = e
            .container_create(None, create(&["touch", "/new"]))
            .await
            .unwrap();
        let upper = e.find(&c.id).unwrap().data.join("upper");
        std::fs::create_dir_all(&upper).unwrap();
        std::fs::write(upper.join("new"), b"12345").unwrap();
        let id = e
            .commit(CommitOptions {
                container: c.id.clone(),
                repo: Some("mine".into()),
                tag: Some("v1".into()),
                comment: "a comment".into(),
                author: "me".into(),
                changes: vec!["EXPOSE 8000".into(), "CMD [\"bash\"]".into()],
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(e.resolve_image("mine:v1").unwrap(), id);
        let cfg: Value = serde_json::from_slice(&e.images.config_bytes(&id).unwrap()).unwrap();
        assert_eq!(cfg["parent"], json!(base));
        assert_eq!(cfg["config"]["Cmd"], json!(["bash"]));
        assert_eq!(cfg["config"]["ExposedPorts"], json!({"8000/tcp": {}}));
        assert_eq!(cfg["config"]["Env"], json!(["PATH=/bin"]));
        assert_eq!(cfg["author"], json!("me"));
        assert_eq!(cfg["rootfs"]["diff_ids"].as_array().unwrap().len(), 2);
        let h = e.history_of("mine:v1").unwrap();
        assert_eq!(h.len(), 2);
        assert_eq!((h[0].id.as_str(), h[0].size), (id.as_str(), 5));
        assert_eq!(h[0].comment, "a comment");
        assert_eq!(h[0].created_by, "touch /new");
        assert_eq!((h[1].id.as_str(), h[1].size), ("<missing>", 1000));
        // The new layer has the file; RUN is not a change commit takes.
        let lowers = e.images.lowers(&id).unwrap();
        assert_eq!(std::fs::read(lowers[0].join("new")).unwrap(), b"12345");
        let bad = e
            .commit(CommitOptions {
                container: c.id,
                changes: vec!["RUN true".into()],
                ..Default::default()
            })
            .await;
        assert_eq!(bad.unwrap_err().status, http::StatusCode::BAD_REQUEST);
    }

    /// dockerd prunes leaves only: a tagged image's unnamed build steps stay; an unnamed
    /// leaf goes with its unnamed parents.
    #[tokio::test]
    async fn prune_keeps_the_steps_of_a_tagged_build_and_takes_a_dangling_chain() {
        let d = tempfile::tempdir().unwrap();
        let e = engine(d.path()).await;
        let base = e.resolve_image("busybox").unwrap();
        let mut v: Value = serde_json::from_slice(&e.images.config_bytes(&base).unwrap()).unwrap();
        let mut child_of = |parent: &str, label: &str| {
            v["parent"] = json!(parent);
            v["config"]["Labels"] = json!({ "step": label });
            e.images.add_config(v.to_string().as_bytes()).unwrap()
        };
        let kept_step = child_of(&base, "kept-step");
        let tagged = child_of(&kept_step, "tagged");
        e.images.tag(&tagged, "built:1").unwrap();
        let gone_step = child_of(&base, "gone-step");
        let gone_leaf = child_of(&gone_step, "gone-leaf");

        let r = e.prune(PruneFilters::parse(None).unwrap()).await.unwrap();
        let mut deleted: Vec<String> = r
            .images_deleted
            .unwrap()
            .into_iter()
            .filter_map(|i| i.deleted)
            .collect();
        deleted.sort();
        let mut want = vec![gone_step.clone(), gone_leaf.clone()];
        want.sort();
        assert_eq!(deleted, want);
        for id in [&base, &kept_step, &tagged] {
            assert!(e.images.config(id).is_some(), "{id} was pruned");
        }
    }

    #[tokio::test]
    async fn prune_filters_and_df_sums() {
        let d = tempfile::tempdir().unwrap();
        let e = engine(d.path()).await;
        let base = e.resolve_image("busybox").unwrap();
        // An untagged image over the same layer, and a labelled tagged one.
        let c = e.images.config_bytes(&base).unwrap();
        let mut v: Value = serde_json::from_slice(&c).unwrap();
        v["config"]["Labels"] = json!({"keep": "no"});
        let labelled = e.images.add_config(v.to_string().as_bytes()).unwrap();
        e.images.tag(&labelled, "labelled:1").unwrap();
        v["config"]["Labels"] = json!({"x": "1"});
        let dangling = e.images.add_config(v.to_string().as_bytes()).unwrap();
        let ctr = e.container_create(None, create(&["true"])).await.unwrap();
        let upper = e.find(&ctr.id).unwrap().data.join("upper");
        std::fs::create_dir_all(&upper).unwrap();
        std::fs::write(upper.join("f"), [0u8; 300]).unwrap();

        let df = e.df().await.unwrap();
        assert_eq!(df.layers_size, 1000, "one layer, counted once");
        assert_eq!(df.images.len(), 3);
        for i in &df.images {
            assert_eq!((i.size, i.shared_size), (1000, 1000), "{}", i.id);
            let want = if i.id == base { 1 } else { 0 };
            assert_eq!(i.containers, want, "{}", i.id);
        }
        assert_eq!(df.containers.len(), 1);
        assert_eq!(df.containers[0]["SizeRw"], json!(300));
        assert_eq!(df.containers[0]["SizeRootFs"], json!(1300));

        // dangling=true (the default): only the untagged image; its layer stays (shared).
        let r = e.prune(PruneFilters::parse(None).unwrap()).await.unwrap();
        let del = r.images_deleted.unwrap();
        assert_eq!(
            del,
            vec![ImageDeleteItem {
                untagged: None,
                deleted: Some(dangling)
            }]
        );
        assert_eq!(r.space_reclaimed, 0);
        // A label filter that matches nothing deletes nothing (an empty list is null).
        let f = PruneFilters::parse(Some(r#"{"dangling":["false"],"label":["nope"]}"#)).unwrap();
        assert_eq!(e.prune(f).await.unwrap().images_deleted, None);
        // dangling=false: every unused image, not busybox (the container uses it).
        let f = PruneFilters::parse(Some(r#"{"dangling":["false"]}"#)).unwrap();
        let r = e.prune(f).await.unwrap();
        let del = r.images_deleted.unwrap();
        assert!(del.contains(&ImageDeleteItem {
            untagged: Some("labelled:1".into()),
            deleted: None
        }));
        assert!(e.resolve_image("busybox").is_ok());
        assert!(e.resolve_image("labelled:1").is_err());
    }
}
