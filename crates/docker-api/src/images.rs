//! The images and system group beyond pull/load/tag/remove: history, push, save, import,
//! commit, prune, search, `/distribution/{name}/json`, `/auth` and `/system/df` — their
//! routes ([`route`], one [`crate::route::Route::Images`] variant), request and response
//! types, and [`dispatch_images`].

use crate::error::{ApiError, ApiResult};
use crate::server::{base, decode_auth, json, read_json, Body, Query, Resp};
use crate::types::{ContainerConfig, ImageDeleteItem, ImageSummary, ProgressMessage};
use crate::Backend;
use bytes::Bytes;
use http::{header, Method, Request, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::mpsc;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageOp {
    History(String),
    Push(String),
    /// `GET /images/{name}/get`.
    Save(String),
    /// `GET /images/get?names=`.
    SaveMany,
    Prune,
    Search,
    Distribution(String),
    Commit,
    Auth,
    Df,
}

/// The group's routes (path without the version prefix).
pub fn route(method: &Method, path: &str) -> Option<ImageOp> {
    match (method, path) {
        (&Method::GET, "/images/get") => return Some(ImageOp::SaveMany),
        (&Method::POST, "/images/prune") => return Some(ImageOp::Prune),
        (&Method::GET, "/images/search") => return Some(ImageOp::Search),
        (&Method::POST, "/commit") => return Some(ImageOp::Commit),
        (&Method::POST, "/auth") => return Some(ImageOp::Auth),
        (&Method::GET, "/system/df") => return Some(ImageOp::Df),
        _ => {}
    }
    if let Some(rest) = path.strip_prefix("/distribution/") {
        let name = rest.strip_suffix("/json")?;
        return (method == Method::GET && !name.is_empty())
            .then(|| ImageOp::Distribution(name.into()));
    }
    let rest = path.strip_prefix("/images/")?;
    let (name, op) = rest.rsplit_once('/')?;
    if name.is_empty() {
        return None;
    }
    let name = name.to_string();
    match (method, op) {
        (&Method::GET, "history") => Some(ImageOp::History(name)),
        (&Method::POST, "push") => Some(ImageOp::Push(name)),
        (&Method::GET, "get") => Some(ImageOp::Save(name)),
        _ => None,
    }
}

/// One entry of `GET /images/{name}/history`, newest first.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct HistoryItem {
    /// The image id for the top entry, `<missing>` for the others (as dockerd).
    pub id: String,
    pub created: i64,
    pub created_by: String,
    pub tags: Option<Vec<String>>,
    pub size: i64,
    pub comment: String,
}

/// An `until` value as dockerd takes it: unix seconds (`1700000000[.5]`), RFC 3339, or a
/// duration before now (`10m`, `24h`, `1h30m`).
pub fn parse_until(x: &str) -> Option<i64> {
    if let Ok(f) = x.parse::<f64>() {
        return Some(f as i64);
    }
    if x.contains('T') || x.contains('-') {
        let t = crate::time::unix_from_rfc3339(x);
        return (t != 0).then_some(t);
    }
    let (mut secs, mut num) = (0f64, String::new());
    for c in x.chars() {
        if c.is_ascii_digit() || c == '.' {
            num.push(c);
            continue;
        }
        let n: f64 = num.parse().ok()?;
        num.clear();
        secs += n * match c {
            's' => 1.0,
            'm' => 60.0,
            'h' => 3600.0,
            _ => return None,
        };
    }
    if !num.is_empty() {
        return None;
    }
    let now = (crate::time::now_nanos() / 1_000_000_000) as i64;
    Some(now - secs as i64)
}

/// `POST /images/prune`'s filters.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PruneFilters {
    /// `dangling=true` (the default): only untagged images; false: every unused image.
    pub dangling: bool,
    /// Only images created before this (unix seconds).
    pub until: Option<i64>,
    /// `label=k` / `label=k=v`; `label!=...` in `labels_not`.
    pub labels: Vec<String>,
    pub labels_not: Vec<String>,
}

impl PruneFilters {
    pub fn parse(raw: Option<&str>) -> ApiResult<Self> {
        let mut f = PruneFilters {
            dangling: true,
            ..Default::default()
        };
        let Some(raw) = raw.filter(|r| !r.trim().is_empty()) else {
            return Ok(f);
        };
        let v: BTreeMap<String, serde_json::Value> = serde_json::from_str(raw)
            .map_err(|e| ApiError::bad_request(format!("invalid filters: {e}")))?;
        for (k, v) in v {
            // Both shapes dockerd takes: {"k":["v"]} and {"k":{"v":true}}.
            let vals: Vec<String> = match v {
                serde_json::Value::Array(a) => a
                    .into_iter()
                    .map(|x| x.as_str().unwrap_or_default().to_string())
                    .collect(),
                serde_json::Value::Object(o) => o.keys().cloned().collect(),
                _ => return Err(ApiError::bad_request(format!("invalid filter {k:?}"))),
            };
            match k.as_str() {
                "dangling" => {
                    for x in &vals {
                        f.dangling = match x.as_str() {
                            "true" | "1" => true,
                            "false" | "0" => false,
                            _ => {
                                return Err(ApiError::bad_request(format!(
                                    "invalid filter 'dangling={x}'"
                                )))
                            }
                        }
                    }
                }
                "until" => {
                    for x in &vals {
                        f.until = Some(parse_until(x).ok_or_else(|| {
                            ApiError::bad_request(format!("invalid filter 'until={x}'"))
                        })?);
                    }
                }
                "label" => f.labels.extend(vals),
                "label!" => f.labels_not.extend(vals),
                _ => return Err(ApiError::bad_request(format!("invalid filter '{k}'"))),
            }
        }
        Ok(f)
    }

    /// Whether an image with these labels and creation time passes the label/until filters.
    pub fn matches(&self, labels: &BTreeMap<String, String>, created: i64) -> bool {
        let has = |l: &String| match l.split_once('=') {
            Some((k, v)) => labels.get(k).is_some_and(|x| x == v),
            None => labels.contains_key(l),
        };
        self.until.is_none_or(|u| created < u)
            && self.labels.iter().all(has)
            && !self.labels_not.iter().any(has)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct ImagePruneReport {
    /// null when nothing was deleted, as dockerd answers.
    pub images_deleted: Option<Vec<ImageDeleteItem>>,
    pub space_reclaimed: i64,
}

/// `docker import` (`POST /images/create?fromSrc=-`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImportOptions {
    pub repo: Option<String>,
    pub tag: Option<String>,
    pub message: String,
    /// Dockerfile instructions (`--change`).
    pub changes: Vec<String>,
    pub platform: Option<String>,
}

/// `POST /commit`.
#[derive(Debug, Clone, Default)]
pub struct CommitOptions {
    pub container: String,
    pub repo: Option<String>,
    pub tag: Option<String>,
    pub comment: String,
    pub author: String,
    pub pause: bool,
    pub changes: Vec<String>,
    /// The request body: a container config merged over the container's.
    pub config: Option<ContainerConfig>,
}

/// `POST /auth` body.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct AuthConfig {
    #[serde(default)]
    pub username: String,
    #[serde(default)]
    pub password: String,
    #[serde(default)]
    pub email: String,
    #[serde(default)]
    pub serveraddress: String,
    #[serde(default, rename = "identitytoken")]
    pub identity_token: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct AuthResponse {
    pub status: String,
    #[serde(skip_serializing_if = "String::is_empty", default)]
    pub identity_token: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct OciDescriptor {
    pub media_type: String,
    pub digest: String,
    pub size: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
pub struct OciPlatform {
    pub architecture: String,
    pub os: String,
    #[serde(
        rename = "os.version",
        skip_serializing_if = "Option::is_none",
        default
    )]
    pub os_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub variant: Option<String>,
}

/// `GET /distribution/{name}/json`.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct DistributionInspect {
    pub descriptor: OciDescriptor,
    pub platforms: Vec<OciPlatform>,
}

/// `GET /system/df`. Containers and volumes are JSON objects so each back end adds the
/// fields of its own list types (SizeRw, SizeRootFs; UsageData).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct DiskUsage {
    pub layers_size: i64,
    pub images: Vec<ImageSummary>,
    pub containers: Vec<serde_json::Value>,
    pub volumes: Vec<serde_json::Value>,
    pub build_cache: Vec<serde_json::Value>,
}

/// The `/info` keys beyond the ones the CLI prints ([`crate::types::Info`] flattens this),
/// with dockerd's names (swagger's SystemInfo).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct InfoDetails {
    pub driver_status: Vec<[String; 2]>,
    pub plugins: serde_json::Value,
    pub memory_limit: bool,
    pub swap_limit: bool,
    #[serde(rename = "KernelMemoryTCP")]
    pub kernel_memory_tcp: bool,
    pub cpu_cfs_period: bool,
    pub cpu_cfs_quota: bool,
    #[serde(rename = "CPUShares")]
    pub cpu_shares: bool,
    #[serde(rename = "CPUSet")]
    pub cpu_set: bool,
    pub pids_limit: bool,
    pub oom_kill_disable: bool,
    #[serde(rename = "IPv4Forwarding")]
    pub ipv4_forwarding: bool,
    pub bridge_nf_iptables: bool,
    #[serde(rename = "BridgeNfIp6tables")]
    pub bridge_nf_ip6tables: bool,
    pub debug: bool,
    #[serde(rename = "NFd")]
    pub nfd: i64,
    pub n_goroutines: i64,
    pub system_time: String,
    #[serde(rename = "NEventsListener")]
    pub n_events_listener: i64,
    pub index_server_address: String,
    pub generic_resources: Option<Vec<serde_json::Value>>,
    pub http_proxy: String,
    pub https_proxy: String,
    pub no_proxy: String,
    pub labels: Vec<String>,
    pub experimental_build: bool,
    pub runtimes: BTreeMap<String, serde_json::Value>,
    pub swarm: serde_json::Value,
    pub live_restore_enabled: bool,
    pub isolation: String,
    pub init_binary: String,
    pub containerd_commit: serde_json::Value,
    pub runc_commit: serde_json::Value,
    pub init_commit: serde_json::Value,
    pub product_license: String,
    pub default_address_pools: Vec<serde_json::Value>,
    #[serde(rename = "CDISpecDirs")]
    pub cdi_spec_dirs: Vec<String>,
    pub containerd: Option<serde_json::Value>,
}

fn channel_stream(rx: mpsc::Receiver<ProgressMessage>) -> Resp {
    let (tx, body_rx) = mpsc::channel(16);
    tokio::spawn(async move {
        let mut rx = rx;
        while let Some(m) = rx.recv().await {
            let mut line = serde_json::to_vec(&m).unwrap_or_default();
            line.extend_from_slice(b"\r\n");
            if tx.send(line.into()).await.is_err() {
                break;
            }
        }
    });
    base(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::Channel(body_rx))
        .expect("static response parts")
}

/// The request body as chunks on a channel (an archive may be larger than memory); the
/// task's result says whether the body arrived whole.
pub(crate) fn body_channel(
    mut body: Incoming,
) -> (mpsc::Receiver<Bytes>, tokio::task::JoinHandle<bool>) {
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    let feed = tokio::spawn(async move {
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { return false };
            if let Ok(data) = frame.into_data() {
                if tx.send(data).await.is_err() {
                    return true;
                }
            }
        }
        true
    });
    (rx, feed)
}

fn list(q: &Query, k: &str) -> Vec<String> {
    q.all(k)
}

fn auth_of<T>(req: &Request<T>) -> Option<crate::RegistryAuth> {
    req.headers()
        .get("X-Registry-Auth")
        .and_then(|v| v.to_str().ok())
        .and_then(decode_auth)
}

/// `docker import` from the request body (`fromSrc=-`); a URL source is refused.
pub(crate) async fn import<B: Backend>(
    b: Arc<B>,
    req: crate::server::Req,
    q: Query,
) -> ApiResult<Resp> {
    let src = q.get("fromSrc").unwrap_or("-");
    if src != "-" {
        return Err(ApiError::not_implemented(
            "importing from a URL (fromSrc=URL; send the tarball in the body with fromSrc=-)",
        ));
    }
    let opts = ImportOptions {
        repo: q.get("repo").map(str::to_string),
        tag: q.get("tag").map(str::to_string),
        message: q.get("message").unwrap_or("").to_string(),
        changes: list(&q, "changes"),
        platform: q.get("platform").map(str::to_string),
    };
    let (rx, feed) = body_channel(req.into_body().take()?);
    let id = b.image_import(rx, opts).await;
    let complete = feed.await.unwrap_or(false);
    let id = match (id, complete) {
        (Ok(_), false) => {
            return Err(ApiError::bad_request(
                "the request body broke off before the archive ended",
            ))
        }
        (r, _) => r?,
    };
    let mut line = serde_json::to_vec(&ProgressMessage::status(None, id)).unwrap_or_default();
    line.extend_from_slice(b"\r\n");
    let (tx, body_rx) = mpsc::channel(1);
    let _ = tx.send(Bytes::from(line)).await;
    Ok(base(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::Channel(body_rx))
        .expect("static response parts"))
}

pub(crate) async fn dispatch_images<B: Backend>(
    b: Arc<B>,
    req: crate::server::Req,
    q: Query,
    op: ImageOp,
) -> ApiResult<Resp> {
    Ok(match op {
        ImageOp::History(n) => json(StatusCode::OK, &b.image_history(&n).await?),
        ImageOp::Push(n) => {
            let auth = auth_of(&req);
            let rx = b.image_push(&n, q.get("tag").unwrap_or(""), auth).await?;
            channel_stream(rx)
        }
        ImageOp::Save(n) => save(b, vec![n]).await?,
        ImageOp::SaveMany => {
            let names = list(&q, "names");
            if names.is_empty() {
                return Err(ApiError::bad_request("names is required"));
            }
            save(b, names).await?
        }
        ImageOp::Prune => {
            let f = PruneFilters::parse(q.get("filters"))?;
            json(StatusCode::OK, &b.image_prune(f).await?)
        }
        ImageOp::Search => {
            // dockerd answers the error of its index lookup; no index is reachable here.
            return Err(ApiError::internal(
                "searching is not supported: this engine reaches no registry index \
                 (pull by name from a registry instead)",
            ));
        }
        ImageOp::Distribution(n) => {
            let auth = auth_of(&req);
            json(StatusCode::OK, &b.distribution(&n, auth).await?)
        }
        ImageOp::Commit => {
            let container = q
                .get("container")
                .ok_or_else(|| ApiError::bad_request("container is required"))?
                .to_string();
            let config: ContainerConfig = read_json(req.into_body().take()?).await?;
            let opts = CommitOptions {
                container,
                repo: q.get("repo").map(str::to_string),
                tag: q.get("tag").map(str::to_string),
                comment: q.get("comment").unwrap_or("").to_string(),
                author: q.get("author").unwrap_or("").to_string(),
                // dockerd pauses by default.
                pause: q.get("pause").is_none() || q.flag("pause"),
                changes: list(&q, "changes"),
                config: Some(config),
            };
            let id = b.image_commit(opts).await?;
            json(StatusCode::CREATED, &serde_json::json!({ "Id": id }))
        }
        ImageOp::Auth => {
            let a: AuthConfig = read_json(req.into_body().take()?).await?;
            json(StatusCode::OK, &b.auth(a).await?)
        }
        ImageOp::Df => json(StatusCode::OK, &b.system_df().await?),
    })
}

async fn save<B: Backend>(b: Arc<B>, names: Vec<String>) -> ApiResult<Resp> {
    let rx = b.image_save(names).await?;
    Ok(base(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/x-tar")
        .body(Body::Channel(rx))
        .expect("static response parts"))
}

/// The answer to `POST /images/load`: a chunked JSON message stream, one "Loaded image"
/// line per image, as dockerd sends (docker-py reads it as a stream); an archive that does
/// not load is an error message in that stream (docker-py raises ImageLoadError from it).
pub(crate) fn load_answer(loaded: ApiResult<Vec<String>>) -> Resp {
    let lines: Vec<serde_json::Value> = match loaded {
        Ok(names) => names
            .into_iter()
            .map(|name| {
                let what = if name.starts_with("sha256:") {
                    "Loaded image ID"
                } else {
                    "Loaded image"
                };
                serde_json::json!({ "stream": format!("{what}: {name}\n") })
            })
            .collect(),
        Err(e) => vec![serde_json::to_value(ProgressMessage::error(e.message)).unwrap_or_default()],
    };
    let (tx, body_rx) = mpsc::channel(lines.len().max(1));
    for l in lines {
        let mut line = serde_json::to_vec(&l).unwrap_or_default();
        line.extend_from_slice(b"\r\n");
        let _ = tx.try_send(Bytes::from(line));
    }
    base(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::Channel(body_rx))
        .expect("static response parts")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let r = |m: Method, p: &str| route(&m, p);
        assert_eq!(
            r(Method::GET, "/images/127.0.0.1:5000/busybox:1/history"),
            Some(ImageOp::History("127.0.0.1:5000/busybox:1".into()))
        );
        assert_eq!(
            r(Method::POST, "/images/a/b/push"),
            Some(ImageOp::Push("a/b".into()))
        );
        assert_eq!(r(Method::GET, "/images/get"), Some(ImageOp::SaveMany));
        assert_eq!(
            r(Method::GET, "/images/busybox/get"),
            Some(ImageOp::Save("busybox".into()))
        );
        assert_eq!(r(Method::POST, "/images/prune"), Some(ImageOp::Prune));
        assert_eq!(
            r(Method::GET, "/distribution/x/y:1/json"),
            Some(ImageOp::Distribution("x/y:1".into()))
        );
        assert_eq!(r(Method::GET, "/system/df"), Some(ImageOp::Df));
        assert_eq!(r(Method::GET, "/images/x/json"), None);
        assert_eq!(r(Method::GET, "/distribution//json"), None);
    }

    #[test]
    fn prune_filters() {
        let f = PruneFilters::parse(None).unwrap();
        assert!(f.dangling);
        let f = PruneFilters::parse(Some(
            r#"{"dangling":{"false":true},"label":["a=1"],"label!":["b"],"until":["100"]}"#,
        ))
        .unwrap();
        assert!(!f.dangling);
        assert_eq!(f.until, Some(100));
        let l: BTreeMap<String, String> = [("a".to_string(), "1".to_string())].into();
        assert!(f.matches(&l, 50));
        assert!(!f.matches(&l, 150));
        let mut l2 = l.clone();
        l2.insert("b".into(), "x".into());
        assert!(!f.matches(&l2, 50));
        assert!(!f.matches(&BTreeMap::new(), 50));
        assert!(PruneFilters::parse(Some(r#"{"nope":["1"]}"#)).is_err());
        assert!(PruneFilters::parse(Some(r#"{"dangling":["maybe"]}"#)).is_err());
    }

    #[test]
    fn info_details_have_dockerd_names() {
        let v = serde_json::to_value(InfoDetails::default()).unwrap();
        for k in [
            "NFd",
            "NGoroutines",
            "NEventsListener",
            "KernelMemoryTCP",
            "CPUShares",
            "CPUSet",
            "IPv4Forwarding",
            "ExperimentalBuild",
            "LiveRestoreEnabled",
            "InitBinary",
            "ContainerdCommit",
            "IndexServerAddress",
        ] {
            assert!(v.get(k).is_some(), "{k}");
        }
    }
}
