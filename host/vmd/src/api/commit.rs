//! `docker commit` and `docker history`. A commit is the container's changes as one layer
//! (its kept layer with the current run's squashed on top, from its VM's engine when it
//! runs: [`changes`]) over its image's layers, with an image config that is the image's
//! plus that layer and the container's run config; layer, tree and config go into the host
//! store and the image is recorded under its name, so `docker run` uses it like a pulled
//! one (and the VMs find it in the store). The layer blob is the uncompressed tar (its
//! digest is its diff-id).

use super::Api;
use crate::*;
use docker_api::images::{CommitOptions, HistoryItem};
use serde_json::{json, Value};
use sha2::Digest;

/// The container config's fields that become the image's, in the config's JSON names.
const RUN_KEYS: &[&str] = &[
    "User",
    "Cmd",
    "Entrypoint",
    "WorkingDir",
    "Labels",
    "ExposedPorts",
    "Volumes",
    "StopSignal",
];

/// `over`'s set fields over the image's run config `run`; `Env` is merged by name.
fn overlay(run: &mut serde_json::Map<String, Value>, over: &Value) {
    let set = |v: &Value| match v {
        Value::Null => false,
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
        _ => true,
    };
    for k in RUN_KEYS {
        if let Some(v) = over.get(*k).filter(|v| set(v)) {
            run.insert((*k).to_string(), v.clone());
        }
    }
    if let Some(Value::Array(extra)) = over.get("Env") {
        let mut env: Vec<Value> = match run.get("Env") {
            Some(Value::Array(a)) => a.clone(),
            _ => Vec::new(),
        };
        for e in extra {
            let key = e.as_str().and_then(|s| s.split('=').next()).unwrap_or("");
            env.retain(|x| x.as_str().and_then(|s| s.split('=').next()) != Some(key));
            env.push(e.clone());
        }
        run.insert("Env".into(), Value::Array(env));
    }
}

impl Api {
    pub(super) async fn commit(&self, o: CommitOptions) -> ApiResult<String> {
        let c = self.get(&o.container)?;
        if !o.changes.is_empty() {
            return Err(ApiError::bad_request(
                "commit --change is not served in VM-per-container mode yet",
            ));
        }
        let repo = o.repo.clone().filter(|r| !r.is_empty()).ok_or_else(|| {
            ApiError::bad_request(
                "in VM-per-container mode a commit needs a repository name \
                 (docker commit CONTAINER NAME[:TAG])",
            )
        })?;
        let full = match o.tag.as_deref().filter(|t| !t.is_empty()) {
            Some(t) => format!("{repo}:{t}"),
            None => repo,
        };
        let r = registry::Reference::parse(&full)
            .map_err(|e| ApiError::bad_request(format!("invalid reference format: {e}")))?;
        let name = images::record_name(&r);
        let base = self.images.find(&c.image_id).ok_or_else(|| {
            ApiError::conflict(format!(
                "container {}: its image {} was removed",
                c.short(),
                c.image_id
            ))
        })?;
        if base.diff_ids.is_empty() {
            return Err(ApiError::conflict(
                "the container's image is not in the host's layer store (a record from \
                 before it); pull it again",
            ));
        }
        // The current run's changes come from its VM; those of earlier runs are kept.
        let live = matches!(c.phase(), Phase::Created | Phase::Running)
            && c.vm
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .is_some();
        if live {
            c.not_paused()?;
        }
        let run = changes::scratch_of(&c.dir);
        if live {
            boot::fetch_changes(&c, &run).await.map_err(|e| {
                ApiError::internal(format!("commit: the container's changes: {e:#}"))
            })?;
        }
        let layer = c.dir.join(format!("commit-{}.tar", random_hex(8)));
        let (dir, run2, layer2) = (c.dir.clone(), run.clone(), layer.clone());
        let made = tokio::task::spawn_blocking(move || {
            let r = changes::all_changes(&dir, live.then_some(run2.as_path()), &layer2);
            let _ = std::fs::remove_file(&run2);
            r?;
            changes::sha256_file(&layer2)
        })
        .await
        .map_err(|e| ApiError::internal(format!("commit task: {e}")))?;
        let diff_id = match made {
            Ok(d) => d,
            Err(e) => {
                let _ = std::fs::remove_file(&layer);
                return Err(ApiError::internal(format!("commit: {e:#}")));
            }
        };
        let r = self
            .commit_layer(&c, &o, &base, &name, &layer, &diff_id)
            .await;
        let _ = std::fs::remove_file(&layer);
        let id = r?;
        c.event(&self.events, "commit", &[]);
        self.image_event("tag", &id, &name);
        Ok(id)
    }

    /// The image for the layer at `layer`: config, store and record.
    async fn commit_layer(
        &self,
        c: &Ctr,
        o: &CommitOptions,
        base: &images::ImageRecord,
        name: &str,
        layer: &Path,
        diff_id: &str,
    ) -> ApiResult<String> {
        let store = self.images.store.clone();
        let bytes = std::fs::read(store.blob_path(&base.id))
            .map_err(|e| ApiError::internal(format!("the image's config: {e}")))?;
        let mut cfg: Value = serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::internal(format!("the image's config: {e}")))?;
        let mut run = match cfg.get("config") {
            Some(Value::Object(m)) => m.clone(),
            _ => Default::default(),
        };
        overlay(
            &mut run,
            &serde_json::to_value(&c.req.config).unwrap_or_default(),
        );
        if let Some(body) = &o.config {
            overlay(&mut run, &serde_json::to_value(body).unwrap_or_default());
        }
        let now = rfc3339(now_nanos());
        let mut argv = c.req.config.entrypoint.clone().unwrap_or_default();
        argv.extend(c.req.config.cmd.clone().unwrap_or_default());
        let mut h = json!({ "created": now, "created_by": argv.join(" ") });
        for (k, v) in [("author", &o.author), ("comment", &o.comment)] {
            if !v.is_empty() {
                h[k] = json!(v);
                cfg[k] = json!(v);
            }
        }
        cfg["config"] = Value::Object(run);
        cfg["created"] = json!(now);
        cfg["container"] = json!(c.id);
        if !cfg["rootfs"]["diff_ids"].is_array() {
            cfg["rootfs"] = json!({ "type": "layers", "diff_ids": [] });
        }
        if let Some(a) = cfg["rootfs"]["diff_ids"].as_array_mut() {
            a.push(json!(diff_id));
        }
        if !cfg["history"].is_array() {
            cfg["history"] = json!([]);
        }
        if let Some(a) = cfg["history"].as_array_mut() {
            a.push(h);
        }
        let config = serde_json::to_vec(&cfg).map_err(|e| ApiError::internal(e.to_string()))?;
        let id = format!("sha256:{}", hex::encode(sha2::Sha256::digest(&config)));
        let size = std::fs::metadata(layer)
            .map(|m| m.len() as i64)
            .unwrap_or(0);
        let mut rec = base.clone();
        rec.name = name.to_string();
        rec.digest = String::new();
        rec.id = id.clone();
        rec.created = now;
        rec.size = base.size + size;
        rec.config = serde_json::from_value(cfg["config"].clone()).unwrap_or_default();
        rec.layers.push(diff_id.to_string());
        rec.diff_ids.push(diff_id.to_string());
        rec.source = None;
        // Pinned under a key of its own until recorded: a collection meanwhile keeps it.
        let key = format!("commit-{}", random_hex(12));
        self.images.pin(&key, rec.clone());
        let lowers: Vec<PathBuf> = base
            .diff_ids
            .iter()
            .rev()
            .map(|d| store.layer_path(d))
            .collect();
        let (st, l, d, cid) = (
            store.clone(),
            layer.to_path_buf(),
            diff_id.to_string(),
            id.clone(),
        );
        let stored = self
            .images
            .while_not_collecting(move || {
                st.put_file(&d, &l)?;
                st.unpack(&d, &d, &lowers)?;
                st.put_bytes(&cid, &config)
            })
            .await;
        let r = stored
            .map_err(|e| ApiError::internal(format!("commit: storing the image: {e:#}")))
            .and_then(|()| self.images.add(rec));
        self.images.unpin(&key);
        r.map(|()| id)
    }

    pub(super) async fn history(&self, name: &str) -> ApiResult<Vec<HistoryItem>> {
        let i = self
            .images
            .find(name)
            .ok_or_else(|| ApiError::not_found(format!("No such image: {name}")))?;
        let bytes = std::fs::read(self.images.store.blob_path(&i.id))
            .map_err(|e| ApiError::internal(format!("the image's config: {e}")))?;
        let cfg: Value = serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::internal(format!("the image's config: {e}")))?;
        let size_of = |digest: &str| {
            std::fs::metadata(self.images.store.blob_path(digest))
                .map(|m| m.len() as i64)
                .unwrap_or(0)
        };
        let mut layers = i.layers.iter();
        let mut out: Vec<HistoryItem> = cfg["history"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|h| {
                let empty = h["empty_layer"].as_bool().unwrap_or(false);
                let size = if empty {
                    0
                } else {
                    layers.next().map(|l| size_of(l)).unwrap_or(0)
                };
                HistoryItem {
                    id: "<missing>".into(),
                    created: unix_from_rfc3339(h["created"].as_str().unwrap_or("")),
                    created_by: h["created_by"].as_str().unwrap_or("").into(),
                    tags: None,
                    size,
                    comment: h["comment"].as_str().unwrap_or("").into(),
                }
            })
            .collect();
        out.reverse();
        if let Some(top) = out.first_mut() {
            top.id = i.id.clone();
            let names: Vec<String> = self
                .images
                .all()
                .into_iter()
                .filter(|r| r.id == i.id)
                .map(|r| r.name)
                .collect();
            top.tags = Some(names);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_containers_config_goes_over_the_images() {
        let mut run = serde_json::from_value::<serde_json::Map<String, Value>>(json!({
            "Env": ["PATH=/bin", "A=1"],
            "Cmd": ["sh"],
            "WorkingDir": "/",
        }))
        .unwrap();
        overlay(
            &mut run,
            &json!({"Env": ["A=2", "B=3"], "Cmd": ["echo", "hi"], "WorkingDir": "", "User": null}),
        );
        assert_eq!(run["Env"], json!(["PATH=/bin", "A=2", "B=3"]));
        assert_eq!(run["Cmd"], json!(["echo", "hi"]));
        assert_eq!(
            run["WorkingDir"],
            json!("/"),
            "unset fields keep the image's"
        );
        assert!(!run.contains_key("User"));
    }
}
