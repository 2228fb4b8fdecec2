//! `docker save`: a docker-archive tar of images from the host store, streamed: each blob
//! once under `blobs/sha256/<hex>` (configs, and layers as stored: gzip as pulled, an
//! uncompressed tar as committed; `docker load` decompresses), and `manifest.json` naming
//! each image's config, tags and layers, as `docker load` (dockerd's or the engine's) reads.

use super::Api;
use crate::*;
use std::io::Write;

use docker_api::body::ChannelWriter;

fn blob_name(d: &str) -> String {
    format!("blobs/sha256/{}", d.trim_start_matches("sha256:"))
}

/// Writes the archive of `recs` (with the tags each is saved under) from `store` to `out`.
pub(crate) fn write_archive<W: Write>(
    store: &store::LayerStore,
    recs: &[(images::ImageRecord, Vec<String>)],
    out: W,
) -> anyhow::Result<W> {
    let mut b = tar::Builder::new(out);
    let mut done = std::collections::HashSet::new();
    let mut manifest = Vec::new();
    for (rec, tags) in recs {
        for d in std::iter::once(&rec.id).chain(&rec.layers) {
            if !done.insert(d.clone()) {
                continue;
            }
            b.append_path_with_name(store.blob_path(d), blob_name(d))?;
        }
        manifest.push(serde_json::json!({
            "Config": blob_name(&rec.id),
            "RepoTags": tags,
            "Layers": rec.layers.iter().map(|l| blob_name(l)).collect::<Vec<_>>(),
        }));
    }
    let m = serde_json::to_vec(&manifest)?;
    let mut h = tar::Header::new_gnu();
    h.set_size(m.len() as u64);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    b.append_data(&mut h, "manifest.json", &m[..])?;
    Ok(b.into_inner()?)
}

impl Api {
    pub(super) async fn save(&self, names: Vec<String>) -> ApiResult<mpsc::Receiver<Bytes>> {
        let mut recs: Vec<(images::ImageRecord, Vec<String>)> = Vec::new();
        for n in &names {
            let rec = self
                .images
                .find(n)
                .ok_or_else(|| ApiError::not_found(format!("No such image: {n}")))?;
            // By name: saved with that tag; by id: untagged.
            let by_id = rec
                .id
                .trim_start_matches("sha256:")
                .starts_with(n.trim_start_matches("sha256:"));
            let tags = if by_id {
                Vec::new()
            } else {
                vec![rec.name.clone()]
            };
            match recs.iter_mut().find(|(r, _)| r.id == rec.id) {
                Some((_, t)) => t.extend(tags),
                None => recs.push((rec, tags)),
            }
        }
        // Only what is intact leaves the host (a damaged blob would fail the load).
        for (rec, _) in &recs {
            let (st, r) = (self.images.store.clone(), rec.clone());
            let damage =
                tokio::task::spawn_blocking(move || st.check(&r.id, &r.layers, &r.diff_ids))
                    .await
                    .map_err(|e| ApiError::internal(format!("check task: {e}")))?;
            if let Some(b) = damage
                .iter()
                .find(|x| matches!(x, store::Damage::Blob { .. }))
            {
                return Err(ApiError::internal(format!(
                    "image {} is damaged in the host store: {b}; pull it again",
                    rec.name
                )));
            }
        }
        let (tx, rx) = mpsc::channel(16);
        let st = self.images.store.clone();
        std::thread::spawn(move || {
            let w = std::io::BufWriter::with_capacity(64 << 10, ChannelWriter(tx));
            match write_archive(&st, &recs, w) {
                Ok(mut w) => {
                    let _ = w.flush();
                }
                Err(e) => eprintln!("vmd: docker save: {e:#}"),
            }
        });
        Ok(rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Digest;

    #[test]
    fn the_archive_names_configs_tags_and_layers_once() {
        let d = tempfile::tempdir().unwrap();
        let s = store::LayerStore::open(&d.path().join("store")).unwrap();
        let (blob, digest, diff_id) = store::tests::test_layer("bin/sh", b"shell");
        s.put_bytes(&digest, &blob).unwrap();
        let cfg = br#"{"rootfs":{"type":"layers","diff_ids":[]}}"#;
        let id = format!("sha256:{}", hex::encode(sha2::Sha256::digest(cfg)));
        s.put_bytes(&id, cfg).unwrap();
        let rec = images::ImageRecord {
            name: "a:1".into(),
            digest: String::new(),
            id: id.clone(),
            created: String::new(),
            size: 0,
            config: Default::default(),
            layers: vec![digest.clone()],
            diff_ids: vec![diff_id],
            source: None,
        };
        let recs = vec![(rec.clone(), vec!["a:1".to_string()]), (rec, Vec::new())];
        let out = write_archive(&s, &recs, Vec::new()).unwrap();
        let mut names = Vec::new();
        let mut manifest = Vec::new();
        for e in tar::Archive::new(&out[..]).entries().unwrap() {
            let mut e = e.unwrap();
            let n = e.path().unwrap().display().to_string();
            if n == "manifest.json" {
                std::io::Read::read_to_end(&mut e, &mut manifest).unwrap();
            }
            names.push(n);
        }
        assert_eq!(
            names,
            [blob_name(&id), blob_name(&digest), "manifest.json".into()]
        );
        let m: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
        assert_eq!(m[0]["Config"], blob_name(&id));
        assert_eq!(m[0]["RepoTags"][0], "a:1");
        assert_eq!(m[0]["Layers"][0], blob_name(&digest));
        assert_eq!(m[1]["RepoTags"], serde_json::json!([]));
    }
}
