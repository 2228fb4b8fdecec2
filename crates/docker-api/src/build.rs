//! `docker build` with the classic builder's protocol: `POST /build` (the build context as a
//! tar body, options in the query, progress as a JSON stream of `stream`/`aux`/`errorDetail`
//! lines), `POST /build/prune` and `POST /build/cancel`; BuildKit's `/session` and `/grpc`
//! answer a message that says how to get the classic builder. The Dockerfile itself is
//! parsed by the back end (the engine uses crates/dockerfile).

use crate::error::{ApiError, ApiResult};
use crate::server::{base, json, Body, Query, Req, Resp};
use crate::types::ProgressMessage;
use crate::{Backend, RegistryAuth};
use base64::Engine as _;
use bytes::Bytes;
use http::{header, Method, StatusCode};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::mpsc;

/// What BuildKit clients (buildx, compose) are told.
pub const BUILDKIT_REFUSED: &str =
    "BuildKit is not supported by this engine; set DOCKER_BUILDKIT=0 to use the classic builder";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildOp {
    Build,
    Prune,
    Cancel,
    /// `/session`, `/grpc`: BuildKit's endpoints.
    BuildKit,
}

/// The group's routes (path without the version prefix).
pub fn route(method: &Method, path: &str) -> Option<BuildOp> {
    match (method, path) {
        (&Method::POST, "/build") => Some(BuildOp::Build),
        (&Method::POST, "/build/prune") => Some(BuildOp::Prune),
        (&Method::POST, "/build/cancel") => Some(BuildOp::Cancel),
        (_, "/session" | "/grpc") => Some(BuildOp::BuildKit),
        _ => None,
    }
}

/// `POST /build`'s query, as the docker CLI's classic builder and docker-py send it.
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// `dockerfile`: a path inside the context (default `Dockerfile`).
    pub dockerfile: String,
    /// `buildid`: the name `POST /build/cancel?id=` stops this build by (the back end makes
    /// one up when the client gave none).
    pub build_id: String,
    /// `t`, every one: `name[:tag]`.
    pub tags: Vec<String>,
    /// `remote`: a URL to fetch the context (or a plain Dockerfile) from.
    pub remote: Option<String>,
    /// `q`: only the image id is printed.
    pub quiet: bool,
    pub nocache: bool,
    /// `rm` (default true): remove intermediate containers after a successful step.
    pub rm: bool,
    /// `forcerm`: remove them after a failed one too.
    pub forcerm: bool,
    /// `pull`: pull the `FROM` images even when they are present.
    pub pull: bool,
    /// `buildargs`: a value of None means "take it from the environment" (unset here).
    pub buildargs: BTreeMap<String, Option<String>>,
    pub labels: BTreeMap<String, String>,
    /// `target`: the stage to stop at.
    pub target: String,
    /// `cachefrom`: images whose layers may be reused (then only those).
    pub cache_from: Vec<String>,
    /// `networkmode` for RUN steps (`default`/empty = the engine's default bridge).
    pub network_mode: String,
    /// `extrahosts`: `host:ip` entries for RUN steps' /etc/hosts.
    pub extra_hosts: Vec<String>,
    /// Limits for RUN steps' containers.
    pub shm_size: Option<i64>,
    pub memory: Option<i64>,
    pub memswap: Option<i64>,
    pub cpu_shares: Option<i64>,
    pub cpu_period: Option<i64>,
    pub cpu_quota: Option<i64>,
    pub cpuset_cpus: String,
    /// `platform`: empty or `linux`/`linux/amd64`.
    pub platform: String,
    /// `X-Registry-Config`: credentials per registry for pulling `FROM` images.
    pub auth: BTreeMap<String, RegistryAuth>,
    /// Whether the request body is gzip (`Content-Encoding: gzip`, as docker-py sends it);
    /// the back end also recognises compressed contexts by their magic bytes.
    pub gzip_encoded: bool,
}

/// `POST /build/prune`'s query.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BuildPruneOptions {
    pub all: bool,
    /// `keep-storage` (bytes): keep at most this much cache.
    pub keep_storage: Option<u64>,
    pub filters: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct BuildPruneReport {
    pub caches_deleted: Vec<String>,
    pub space_reclaimed: u64,
}

/// One line of the build's progress stream.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
pub struct BuildMessage {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    /// A pull's progress while `FROM` fetches its image.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,
    #[serde(rename = "progressDetail", skip_serializing_if = "Option::is_none")]
    pub progress_detail: Option<serde_json::Value>,
    /// `{"ID": "sha256:..."}` once the image is built.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aux: Option<serde_json::Value>,
    #[serde(rename = "errorDetail", skip_serializing_if = "Option::is_none")]
    pub error_detail: Option<BuildErrorDetail>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `code` is what the CLI exits with (a failing RUN's exit code).
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq, Eq)]
pub struct BuildErrorDetail {
    #[serde(default, skip_serializing_if = "is_zero")]
    pub code: i64,
    pub message: String,
}

fn is_zero(c: &i64) -> bool {
    *c == 0
}

impl BuildMessage {
    pub fn stream(s: impl Into<String>) -> Self {
        BuildMessage {
            stream: Some(s.into()),
            ..Default::default()
        }
    }
    pub fn aux_id(id: &str) -> Self {
        BuildMessage {
            aux: Some(serde_json::json!({ "ID": id })),
            ..Default::default()
        }
    }
    pub fn error(code: i64, message: impl Into<String>) -> Self {
        let message = message.into();
        BuildMessage {
            error: Some(message.clone()),
            error_detail: Some(BuildErrorDetail { code, message }),
            ..Default::default()
        }
    }
}

impl From<ProgressMessage> for BuildMessage {
    fn from(p: ProgressMessage) -> Self {
        match p.error {
            Some(e) => BuildMessage::error(0, e),
            None => BuildMessage {
                status: p.status,
                id: p.id,
                progress: p.progress,
                progress_detail: p.progress_detail,
                aux: p.aux,
                ..Default::default()
            },
        }
    }
}

fn json_of<T: serde::de::DeserializeOwned>(q: &Query, k: &str) -> ApiResult<Option<T>> {
    match q.get(k) {
        None | Some("null") => Ok(None),
        Some(v) => serde_json::from_str(v)
            .map(Some)
            .map_err(|e| ApiError::bad_request(format!("invalid {k}: {e}"))),
    }
}

fn int(q: &Query, k: &str) -> ApiResult<Option<i64>> {
    match q.get(k) {
        None => Ok(None),
        Some(v) => v
            .parse()
            .map(Some)
            .map_err(|_| ApiError::bad_request(format!("invalid value for {k}: {v:?}"))),
    }
}

/// Checks `platform`: this engine builds for linux/amd64 only.
pub fn check_platform(p: &str) -> ApiResult<()> {
    let p = p.trim().to_ascii_lowercase();
    match p.as_str() {
        "" | "linux" | "linux/amd64" | "linux/x86_64" | "linux/amd64/v1" => Ok(()),
        _ if !p.starts_with("linux") => Err(ApiError::bad_request(format!(
            "invalid platform: {p:?}: unknown operating system or architecture \
             (this engine builds for linux/amd64 only)"
        ))),
        _ => Err(ApiError::bad_request(format!(
            "invalid platform: {p:?}: this engine builds for linux/amd64 only"
        ))),
    }
}

impl BuildOptions {
    /// Reads the query; refuses what the classic builder here cannot do.
    pub(crate) fn parse(q: &Query, headers: &http::HeaderMap) -> ApiResult<Self> {
        if q.flag("squash") {
            return Err(ApiError::bad_request(
                "squash is not supported by this engine (it is an experimental daemon feature); \
                 build without --squash",
            ));
        }
        if q.get("version") == Some("2") || q.get("session").is_some() {
            return Err(ApiError::bad_request(BUILDKIT_REFUSED));
        }
        if q.get("outputs").is_some_and(|o| o != "null" && o != "[]") {
            return Err(ApiError::bad_request(
                "build outputs (--output) need BuildKit, which this engine does not support",
            ));
        }
        match q.get("isolation") {
            None | Some("default") | Some("process") => {}
            Some(i) => {
                return Err(ApiError::bad_request(format!(
                    "invalid isolation {i:?}: only \"default\" is supported on linux"
                )))
            }
        }
        let platform = q.get("platform").unwrap_or("").to_string();
        check_platform(&platform)?;
        let auth = headers
            .get("X-Registry-Config")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let raw = base64::engine::general_purpose::URL_SAFE
                    .decode(v.trim())
                    .or_else(|_| base64::engine::general_purpose::STANDARD.decode(v.trim()))
                    .ok()?;
                serde_json::from_slice::<BTreeMap<String, RegistryAuth>>(&raw).ok()
            })
            .unwrap_or_default();
        let gzip_encoded = headers
            .get(header::CONTENT_ENCODING)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("gzip"));
        if let Some(enc) = headers
            .get(header::CONTENT_ENCODING)
            .and_then(|v| v.to_str().ok())
        {
            if !enc.eq_ignore_ascii_case("gzip") && !enc.eq_ignore_ascii_case("identity") {
                return Err(ApiError::bad_request(format!(
                    "unsupported Content-Encoding {enc:?} for the build context (gzip only)"
                )));
            }
        }
        // docker-py sends `ulimits` as JSON and the CLI `[]`: only the empty list is honoured.
        if let Some(u) = json_of::<Vec<serde_json::Value>>(q, "ulimits")? {
            if !u.is_empty() {
                return Err(ApiError::bad_request(
                    "ulimits for build steps are not supported by this engine",
                ));
            }
        }
        if q.get("cgroupparent").is_some() {
            return Err(ApiError::bad_request(
                "cgroupparent for build steps is not supported by this engine",
            ));
        }
        Ok(BuildOptions {
            // The first value, as Go's FormValue: docker-py sends an out-of-context
            // Dockerfile's name and then its text under the same key.
            dockerfile: q
                .all("dockerfile")
                .into_iter()
                .next()
                .unwrap_or_else(|| "Dockerfile".into()),
            build_id: q.get("buildid").unwrap_or("").to_string(),
            tags: q.all("t"),
            remote: q.get("remote").map(str::to_string),
            quiet: q.flag("q"),
            nocache: q.flag("nocache"),
            rm: q.get("rm").is_none() || q.flag("rm"),
            forcerm: q.flag("forcerm"),
            pull: q.flag("pull") || q.get("pull").is_some_and(|p| p == "always"),
            buildargs: json_of(q, "buildargs")?.unwrap_or_default(),
            labels: json_of(q, "labels")?.unwrap_or_default(),
            target: q.get("target").unwrap_or("").to_string(),
            cache_from: json_of(q, "cachefrom")?.unwrap_or_default(),
            network_mode: q.get("networkmode").unwrap_or("").to_string(),
            extra_hosts: q
                .all("extrahosts")
                .iter()
                .flat_map(|h| h.split(','))
                .filter(|h| !h.is_empty())
                .map(str::to_string)
                .collect(),
            shm_size: int(q, "shmsize")?.filter(|&n| n > 0),
            memory: int(q, "memory")?.filter(|&n| n > 0),
            memswap: int(q, "memswap")?.filter(|&n| n != 0),
            cpu_shares: int(q, "cpushares")?.filter(|&n| n > 0),
            cpu_period: int(q, "cpuperiod")?.filter(|&n| n > 0),
            cpu_quota: int(q, "cpuquota")?.filter(|&n| n > 0),
            cpuset_cpus: q.get("cpusetcpus").unwrap_or("").to_string(),
            platform,
            auth,
            gzip_encoded,
        })
    }
}

/// Builds images from a context (the engine's builder; axion-vmd leaves the defaults).
pub trait BuildBackend: Send + Sync + 'static {
    /// Starts a build of the context (`tar`, streamed in as the request body arrives; the
    /// channel closes early if the body breaks off). Err before anything is streamed (a bad
    /// option); afterwards failures arrive as an error message on the channel.
    fn build(
        &self,
        _opts: BuildOptions,
        _tar: mpsc::Receiver<Bytes>,
    ) -> impl std::future::Future<Output = ApiResult<mpsc::Receiver<BuildMessage>>> + Send {
        async { Err(ApiError::not_implemented("docker build")) }
    }
    fn build_prune(
        &self,
        _opts: BuildPruneOptions,
    ) -> impl std::future::Future<Output = ApiResult<BuildPruneReport>> + Send {
        async { Err(ApiError::not_implemented("build cache prune")) }
    }
    /// `POST /build/cancel?id=`: stops the build started with `buildid=ID` (a build also
    /// ends when its client goes away). Nothing to do by default.
    fn build_cancel(&self, _id: &str) -> impl std::future::Future<Output = ApiResult<()>> + Send {
        async { Ok(()) }
    }
}

/// A stream of build messages as the response body (one JSON object per line).
fn stream(mut rx: mpsc::Receiver<BuildMessage>) -> Resp {
    let (tx, body_rx) = mpsc::channel(16);
    tokio::spawn(async move {
        // A client that goes away drops `rx` at once (the back end sees its sender closed
        // and stops the build), not at the next message.
        loop {
            let m = tokio::select! {
                m = rx.recv() => m,
                () = tx.closed() => None,
            };
            let Some(m) = m else { break };
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

pub(crate) async fn dispatch_build<B: Backend>(
    b: Arc<B>,
    req: Req,
    q: Query,
    op: BuildOp,
) -> ApiResult<Resp> {
    Ok(match op {
        BuildOp::BuildKit => return Err(ApiError::bad_request(BUILDKIT_REFUSED)),
        BuildOp::Cancel => {
            b.build_cancel(q.get("id").unwrap_or("")).await?;
            crate::server::empty(StatusCode::OK)
        }
        BuildOp::Prune => {
            let keep_storage = match q.get("keep-storage").or(q.get("reserved-space")) {
                None => None,
                Some(v) => Some(v.parse().map_err(|_| {
                    ApiError::bad_request(format!("invalid value for keep-storage: {v:?}"))
                })?),
            };
            let opts = BuildPruneOptions {
                all: q.flag("all"),
                keep_storage,
                filters: q.get("filters").map(str::to_string),
            };
            json(StatusCode::OK, &b.build_prune(opts).await?)
        }
        BuildOp::Build => {
            let opts = BuildOptions::parse(&q, req.headers())?;
            let (rx, _feed) = crate::images::body_channel(req.into_body().take()?);
            stream(b.build(opts, rx).await?)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(q: &str) -> ApiResult<BuildOptions> {
        BuildOptions::parse(&Query::parse(Some(q)), &http::HeaderMap::new())
    }

    #[test]
    fn routes() {
        assert_eq!(route(&Method::POST, "/build"), Some(BuildOp::Build));
        assert_eq!(route(&Method::POST, "/build/prune"), Some(BuildOp::Prune));
        assert_eq!(route(&Method::POST, "/build/cancel"), Some(BuildOp::Cancel));
        assert_eq!(route(&Method::POST, "/session"), Some(BuildOp::BuildKit));
        assert_eq!(route(&Method::GET, "/build"), None);
    }

    #[test]
    fn the_clis_classic_query() {
        // What CLI 28's classic builder sends for `docker build -t a -t b:2 --build-arg X=1
        // --label l=v --target t --network none --add-host h:1.2.3.4 .`
        let o = opts(
            "buildargs=%7B%22X%22%3A%221%22%2C%22Y%22%3Anull%7D&cachefrom=%5B%5D&cgroupparent=\
             &cpuperiod=0&cpuquota=0&cpusetcpus=&cpusetmems=&cpushares=0&dockerfile=Dockerfile\
             &extrahosts=h%3A1.2.3.4&labels=%7B%22l%22%3A%22v%22%7D&memory=0&memswap=0\
             &networkmode=none&rm=1&shmsize=0&t=a&t=b%3A2&target=t&ulimits=%5B%5D&version=1",
        )
        .unwrap();
        assert_eq!(o.tags, vec!["a", "b:2"]);
        assert_eq!(o.buildargs["X"].as_deref(), Some("1"));
        assert_eq!(o.buildargs["Y"], None);
        assert_eq!(o.labels["l"], "v");
        assert_eq!((o.target.as_str(), o.network_mode.as_str()), ("t", "none"));
        assert_eq!(o.extra_hosts, vec!["h:1.2.3.4"]);
        assert!(o.rm && !o.forcerm && !o.nocache && !o.quiet);
        assert_eq!((o.memory, o.shm_size), (None, None));
        assert_eq!(o.dockerfile, "Dockerfile");
    }

    #[test]
    fn docker_pys_query_and_defaults() {
        let o =
            opts("t=x&q=1&nocache=true&rm=false&forcerm=true&pull=true&shmsize=134217728").unwrap();
        assert!(o.quiet && o.nocache && !o.rm && o.forcerm && o.pull);
        assert_eq!(o.shm_size, Some(134217728));
        let o = opts("cachefrom=%5B%22build1%22%5D").unwrap();
        assert_eq!(o.cache_from, vec!["build1"]);
        assert!(o.rm, "rm defaults to true");
        // docker-py's out-of-context Dockerfile: its name, then its text.
        let o = opts("dockerfile=.dockerfile.ab12&dockerfile=FROM+busybox%0A").unwrap();
        assert_eq!(o.dockerfile, ".dockerfile.ab12");
    }

    #[test]
    fn refusals_are_clear() {
        let e = opts("squash=1").unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert!(e.message.contains("squash"), "{}", e.message);
        let e = opts("version=2").unwrap_err();
        assert!(e.message.contains("DOCKER_BUILDKIT=0"), "{}", e.message);
        let e = opts("platform=foobar").unwrap_err();
        assert!(e.message.contains("invalid platform"), "{}", e.message);
        assert!(opts("platform=linux%2Famd64").is_ok());
        assert!(opts("platform=linux%2Farm64").is_err());
        assert!(opts("buildargs=%7Bnope").is_err());
        assert!(opts("memory=lots").is_err());
        assert!(opts("isolation=hyperv").is_err());
        assert!(opts("isolation=default").is_ok());
    }

    #[test]
    fn messages_as_dockerd_writes_them() {
        let m = serde_json::to_string(&BuildMessage::stream("Step 1/2 : FROM busybox")).unwrap();
        assert_eq!(m, r#"{"stream":"Step 1/2 : FROM busybox"}"#);
        let m = serde_json::to_string(&BuildMessage::error(2, "boom")).unwrap();
        assert_eq!(
            m,
            r#"{"errorDetail":{"code":2,"message":"boom"},"error":"boom"}"#
        );
        let m = serde_json::to_string(&BuildMessage::aux_id("sha256:ab")).unwrap();
        assert_eq!(m, r#"{"aux":{"ID":"sha256:ab"}}"#);
    }
}
