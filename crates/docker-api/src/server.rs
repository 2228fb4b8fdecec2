//! The HTTP side: one hyper service over any back end, served on unix sockets and TCP
//! (optionally with mutual TLS). Streams go out as chunked bodies; attach and exec start
//! hijack the connection when the client asks for `Upgrade: tcp`.

use crate::error::{ApiError, ApiResult};
use crate::filters::{ContainerPrune, Filters};
use crate::route::{route, ContainerOp, Route};
use crate::stdcopy::{self, Frame};
use crate::types::*;
use crate::{version, AttachIo, AttachOptions, Backend, LogsOptions, RegistryAuth, WaitCondition};
use base64::Engine as _;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body::{Body as HttpBody, Frame as BodyFrame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future as _;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::mpsc;

/// Largest JSON request body we read.
pub const MAX_JSON_BODY: usize = 1 << 20;
/// Largest archive upload (`docker cp` into a container).
pub const MAX_ARCHIVE_BODY: usize = 512 << 20;

/// Response body: a whole buffer, or chunks from a channel until it closes.
pub enum Body {
    Full(Option<Bytes>),
    Channel(mpsc::Receiver<Bytes>),
}

impl HttpBody for Body {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<BodyFrame<Bytes>, Infallible>>> {
        match self.get_mut() {
            Body::Full(b) => Poll::Ready(b.take().map(|b| Ok(BodyFrame::data(b)))),
            Body::Channel(rx) => rx.poll_recv(cx).map(|o| o.map(|b| Ok(BodyFrame::data(b)))),
        }
    }
    fn is_end_stream(&self) -> bool {
        matches!(self, Body::Full(None))
    }
    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Body::Full(None) => SizeHint::with_exact(0),
            Body::Channel(_) => SizeHint::default(),
        }
    }
}

pub(crate) type Resp = Response<Body>;

pub(crate) fn base(status: StatusCode) -> http::response::Builder {
    Response::builder()
        .status(status)
        .header("Api-Version", version::API_VERSION)
        .header("Ostype", "linux")
        .header("Docker-Experimental", "false")
        .header(header::SERVER, "Docker/axion-engine (linux)")
}

pub(crate) fn json<T: Serialize>(status: StatusCode, v: &T) -> Resp {
    let body = serde_json::to_vec(v).unwrap_or_else(|_| b"{}".to_vec());
    base(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::Full(Some(body.into())))
        .expect("static response parts")
}

pub(crate) fn empty(status: StatusCode) -> Resp {
    base(status)
        .body(Body::Full(None))
        .expect("static response parts")
}

pub(crate) fn json_response<T: Serialize>(status: StatusCode, v: &T) -> Resp {
    json(status, v)
}

pub(crate) fn empty_response(status: StatusCode) -> Resp {
    empty(status)
}

/// A chunked body from `rx` with `content_type`.
pub(crate) fn streaming_response(content_type: &'static str, rx: mpsc::Receiver<Bytes>) -> Resp {
    base(StatusCode::OK)
        .header(header::CONTENT_TYPE, content_type)
        .body(Body::Channel(rx))
        .expect("static response parts")
}

fn error_response(e: &ApiError) -> Resp {
    if e.status == StatusCode::NOT_MODIFIED {
        return empty(e.status);
    }
    base(e.status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::Full(Some(e.body().into())))
        .expect("static response parts")
}

/// A request's query string, parsed once in [`handle`] and passed to the route module that
/// serves it: every module reads its parameters (and `filters`) through this one type. An
/// empty value counts as absent; of a repeated key, [`Query::get`] sees the last.
pub(crate) struct Query(HashMap<String, String>, Vec<(String, String)>);

impl Query {
    pub(crate) fn parse(q: Option<&str>) -> Self {
        let pairs: Vec<(String, String)> = form_urlencoded::parse(q.unwrap_or("").as_bytes())
            .into_owned()
            .collect();
        Query(pairs.iter().cloned().collect(), pairs)
    }
    /// Every non-empty value of a repeated key (`changes=..&changes=..`).
    pub(crate) fn all(&self, k: &str) -> Vec<String> {
        let v = self.1.iter().filter(|(n, v)| n == k && !v.is_empty());
        v.map(|(_, v)| v.clone()).collect()
    }
    pub(crate) fn get(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(String::as_str).filter(|s| !s.is_empty())
    }
    pub(crate) fn flag(&self, k: &str) -> bool {
        matches!(self.get(k), Some("1" | "true" | "True" | "TRUE"))
    }
    fn int<T: std::str::FromStr>(&self, k: &str) -> ApiResult<Option<T>> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|_| ApiError::bad_request(format!("invalid value for {k}: {v:?}"))),
        }
    }
}

async fn read_body(body: Incoming, limit: usize) -> ApiResult<Bytes> {
    let limited = http_body_util::Limited::new(body, limit);
    match limited.collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) => Err(ApiError::bad_request(format!(
            "could not read request body (limit {limit} bytes): {e}"
        ))),
    }
}

pub(crate) async fn read_json<T: serde::de::DeserializeOwned + Default>(
    body: Incoming,
) -> ApiResult<T> {
    let b = read_body(body, MAX_JSON_BODY).await?;
    if b.iter().all(|c| c.is_ascii_whitespace()) {
        return Ok(T::default());
    }
    serde_json::from_slice(&b).map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

/// A request's body until a handler takes it; what no handler took is drained after the
/// handler answers, so the connection stays usable for the client's next request.
#[derive(Clone)]
pub struct BodySlot(Arc<std::sync::Mutex<Option<Incoming>>>);

impl BodySlot {
    pub(crate) fn take(&self) -> ApiResult<Incoming> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .ok_or_else(|| ApiError::internal("the request body was already read"))
    }
}

pub(crate) type Req = Request<BodySlot>;

/// The most of an unread request body that is read and dropped to keep a connection alive.
const DRAIN_LIMIT: usize = 64 << 20;

/// Reads and drops `body`; false when it is too large or too slow (then the connection closes).
async fn drain(mut body: Incoming) -> bool {
    let read = async {
        let mut n = 0usize;
        while let Some(f) = body.frame().await {
            match f {
                Ok(f) => {
                    n += f.data_ref().map_or(0, |d| d.len());
                    if n > DRAIN_LIMIT {
                        return false;
                    }
                }
                Err(_) => return false,
            }
        }
        true
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), read)
        .await
        .unwrap_or(false)
}

/// Handles one request; never panics on bad input. A panic that still happens in the
/// handler (a bug) is caught here and answered 500, and the server serves on: the binaries
/// that serve this API (the engine, axion-vmd) build with `panic = "unwind"` for it (see the
/// root Cargo.toml). Tasks a handler spawns (streams, hijacked connections) are contained by
/// tokio itself: a panicking task ends alone and its channel closes.
pub async fn handle<B: Backend>(backend: Arc<B>, req: Request<Incoming>) -> Resp {
    let what = format!("{} {}", req.method(), req.uri().path());
    let (parts, body) = req.into_parts();
    let slot = BodySlot(Arc::new(std::sync::Mutex::new(Some(body))));
    let mut fut = Box::pin(dispatch(backend, Request::from_parts(parts, slot.clone())));
    let caught = std::future::poll_fn(|cx| {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| fut.as_mut().poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(r)) => Poll::Ready(Ok(r)),
            Err(p) => Poll::Ready(Err(p)),
        }
    })
    .await;
    drop(fut);
    let mut resp = match caught {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => error_response(&e),
        Err(p) => {
            let msg = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            eprintln!("engine api: {what} panicked: {msg}");
            error_response(&ApiError::internal(format!(
                "internal error handling {what} (the request panicked; see the daemon's log)"
            )))
        }
    };
    // hyper closes a connection whose request body was not read to its end (a 404 for a POST
    // with a body, say); a client reusing the connection then reads "connection closed".
    let left = slot.0.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(body) = left {
        if !drain(body).await {
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
    }
    resp
}

async fn dispatch<B: Backend>(b: Arc<B>, req: Req) -> ApiResult<Resp> {
    let routed = route(req.method(), req.uri().path())?;
    let q = Query::parse(req.uri().query());
    let is_head = req.method() == Method::HEAD;
    Ok(match routed.route {
        Route::Ping => {
            let r = base(StatusCode::OK)
                .header(header::CACHE_CONTROL, "no-cache, no-store, must-revalidate")
                .header(header::PRAGMA, "no-cache")
                .header("Builder-Version", "1")
                .header(header::CONTENT_TYPE, "text/plain; charset=utf-8");
            let body = if is_head {
                Body::Full(None)
            } else {
                Body::Full(Some("OK".into()))
            };
            r.body(body).expect("static response parts")
        }
        Route::Version => json(StatusCode::OK, &b.version().await?),
        Route::Info => json(StatusCode::OK, &b.info().await?),
        Route::ImagesList => {
            let filters = Filters::parse(q.get("filters"))?;
            let mut list = b.images().await?;
            if !q.flag("all") {
                crate::filters::hide_intermediate(&mut list);
            }
            json(StatusCode::OK, &filters.images(list)?)
        }
        Route::ImageInspect(n) => json(StatusCode::OK, &b.image_inspect(&n).await?),
        Route::ImageTag(n) => {
            let repo = q
                .get("repo")
                .ok_or_else(|| ApiError::bad_request("repo is required"))?;
            b.image_tag(&n, repo, q.get("tag").unwrap_or("latest"))
                .await?;
            empty(StatusCode::CREATED)
        }
        Route::ImageDelete(n) => json(StatusCode::OK, &b.image_remove(&n, q.flag("force")).await?),
        Route::ImagesCreate => {
            if q.get("fromSrc").is_some() {
                return crate::images::import(b, req, q).await;
            }
            let image = q
                .get("fromImage")
                .ok_or_else(|| ApiError::bad_request("fromImage is required"))?;
            let auth = req
                .headers()
                .get("X-Registry-Auth")
                .and_then(|v| v.to_str().ok())
                .and_then(decode_auth);
            let mut rx = b
                .image_pull(image, q.get("tag").unwrap_or(""), auth)
                .await?;
            let (tx, body_rx) = mpsc::channel(16);
            tokio::spawn(async move {
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
        Route::ImagesLoad => {
            // The archive streams to the back end as it arrives (it may be larger than memory).
            let (rx, feed) = crate::images::body_channel(req.into_body().take()?);
            let loaded = b.image_load(rx).await;
            let complete = feed.await.unwrap_or(false);
            let loaded = match (loaded, complete) {
                (Ok(_), false) => Err(ApiError::bad_request(
                    "the request body broke off before the archive ended",
                )),
                (r, _) => r,
            };
            crate::images::load_answer(loaded)
        }
        Route::Images(op) => crate::images::dispatch_images(b, req, q, op).await?,
        Route::ContainersList => {
            // `-n N`/`-l` (limit) and a status filter look at every container, as in Docker.
            let filters = Filters::parse(q.get("filters"))?;
            let limit: Option<usize> = q
                .int::<i64>("limit")?
                .filter(|&n| n > 0)
                .map(|n| n as usize);
            let all =
                q.flag("all") || limit.is_some() || filters.has("status") || filters.has("exited");
            let mut list = filters.containers(b.containers(all).await?)?;
            // Newest first. Stable: `Created` is in seconds, and a back end lists same-second
            // containers in its own finer order (the engine sorts by nanoseconds).
            list.sort_by_key(|c| std::cmp::Reverse(c.created));
            if let Some(n) = limit {
                list.truncate(n);
            }
            json(StatusCode::OK, &list)
        }
        Route::ContainersPrune => {
            let now = (crate::time::now_nanos() / 1_000_000_000) as i64;
            let f = ContainerPrune::parse(Filters::parse(q.get("filters"))?, now)?;
            let (deleted, space) = b.container_prune_reclaiming(f).await?;
            json(
                StatusCode::OK,
                &serde_json::json!({"ContainersDeleted": deleted, "SpaceReclaimed": space}),
            )
        }
        Route::ContainerCreate => {
            let name = q.get("name").map(str::to_string);
            let body: ContainerCreateRequest = read_json(req.into_body().take()?).await?;
            json(StatusCode::CREATED, &b.container_create(name, body).await?)
        }
        Route::ExecStart(id) => {
            let upgrade = wants_upgrade(&req);
            let (parts, body) = req.into_parts();
            let start: ExecStartRequest = read_json(body.take()?).await?;
            let io = b.exec_start(&id, start.clone()).await?;
            if start.detach {
                drop(io);
                return Ok(empty(StatusCode::OK));
            }
            // The exec's own detach keys (from its create), else the default.
            let own = b
                .exec_inspect(&id)
                .await
                .map(|i| i.detach_keys)
                .unwrap_or_default();
            let keys = crate::ops::detach_keys(Some(own.as_str()))?;
            stream_io(Request::from_parts(parts, ()), upgrade, io, keys)?
        }
        Route::ExecInspect(id) => json(StatusCode::OK, &b.exec_inspect(&id).await?),
        Route::ExecResize(id) => {
            b.exec_resize(&id, q.int("h")?.unwrap_or(24), q.int("w")?.unwrap_or(80))
                .await?;
            empty(StatusCode::OK)
        }
        Route::Container(id, op) => container(b, req, q, id, op).await?,
        Route::Volumes(op) => {
            crate::volumes::dispatch_volumes(b, req, q, routed.version.as_deref(), op).await?
        }
        Route::Ops(op) => crate::ops::dispatch(b, req, q, op).await?,
        Route::Network(op) => crate::networks::dispatch_networks(b, req, q, op).await?,
        Route::Build(op) => crate::build::dispatch_build(b, req, q, op).await?,
    })
}

async fn container<B: Backend>(
    b: Arc<B>,
    req: Req,
    q: Query,
    id: String,
    op: ContainerOp,
) -> ApiResult<Resp> {
    use ContainerOp::*;
    Ok(match op {
        Inspect => json(StatusCode::OK, &b.container_inspect(&id).await?),
        Start => {
            b.container_start(&id).await?;
            empty(StatusCode::NO_CONTENT)
        }
        Stop => {
            let t = match q.int("t")? {
                Some(t) => Some(t),
                None => q.int("timeout")?,
            };
            b.container_stop(&id, t, q.get("signal").map(str::to_string))
                .await?;
            empty(StatusCode::NO_CONTENT)
        }
        Kill => {
            b.container_kill(&id, q.get("signal").map(str::to_string))
                .await?;
            empty(StatusCode::NO_CONTENT)
        }
        Restart => {
            b.container_restart(&id, q.int("t")?).await?;
            empty(StatusCode::NO_CONTENT)
        }
        Delete => {
            b.container_remove(&id, q.flag("force"), q.flag("v"))
                .await?;
            empty(StatusCode::NO_CONTENT)
        }
        Wait => {
            let cond = match q.get("condition") {
                None | Some("not-running") => WaitCondition::NotRunning,
                Some("next-exit") => WaitCondition::NextExit,
                Some("removed") => WaitCondition::Removed,
                Some(c) => return Err(ApiError::bad_request(format!("invalid condition: {c:?}"))),
            };
            // The CLI waits for the response headers before it starts the container, so
            // they go out now and the body when the condition is met (as dockerd does).
            b.container_inspect(&id).await?;
            let (tx, body_rx) = mpsc::channel(1);
            tokio::spawn(async move {
                let r = match b.container_wait(&id, cond).await {
                    Ok(r) => r,
                    Err(e) => WaitResponse {
                        status_code: -1,
                        error: Some(WaitError { message: e.message }),
                    },
                };
                let mut body = serde_json::to_vec(&r).unwrap_or_default();
                body.push(b'\n');
                let _ = tx.send(Bytes::from(body)).await;
            });
            base(StatusCode::OK)
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::Channel(body_rx))
                .expect("static response parts")
        }
        Logs => {
            let opts = LogsOptions {
                follow: q.flag("follow"),
                stdout: q.flag("stdout"),
                stderr: q.flag("stderr"),
                timestamps: q.flag("timestamps"),
                tail: match q.get("tail") {
                    None | Some("all") => None,
                    Some(_) => q.int("tail")?,
                },
                // `since=0` is the CLI's "from the start".
                since: match q.get("since") {
                    None | Some("0") => None,
                    Some(v) => Some(crate::events::parse_time("since", v)?),
                },
                until: match q.get("until") {
                    None | Some("0") => None,
                    Some(v) => Some(crate::events::parse_time("until", v)?),
                },
            };
            if !opts.stdout && !opts.stderr {
                return Err(ApiError::bad_request(
                    "Bad parameters: you must choose at least one stream",
                ));
            }
            let (tty, rx) = b.container_logs(&id, opts).await?;
            stream_frames(tty, rx)
        }
        Attach => {
            let opts = AttachOptions {
                stream: q.flag("stream"),
                stdin: q.flag("stdin"),
                stdout: q.flag("stdout"),
                stderr: q.flag("stderr"),
                logs: q.flag("logs"),
            };
            let upgrade = wants_upgrade(&req);
            let keys = crate::ops::detach_keys(q.get("detachKeys"))?;
            let io = b.container_attach(&id, opts).await?;
            let (parts, _) = req.into_parts();
            stream_io(Request::from_parts(parts, ()), upgrade, io, keys)?
        }
        Resize => {
            b.container_resize(&id, q.int("h")?.unwrap_or(24), q.int("w")?.unwrap_or(80))
                .await?;
            empty(StatusCode::OK)
        }
        ExecCreate => {
            let body: ExecCreateRequest = read_json(req.into_body().take()?).await?;
            if body.cmd.is_empty() {
                return Err(ApiError::bad_request("No exec command specified"));
            }
            json(
                StatusCode::CREATED,
                &IdResponse {
                    id: b.exec_create(&id, body).await?,
                },
            )
        }
        ArchiveHead => {
            let path = q
                .get("path")
                .ok_or_else(|| ApiError::bad_request("path is required"))?;
            let stat = b.archive_stat(&id, path).await?;
            base(StatusCode::OK)
                .header("X-Docker-Container-Path-Stat", stat_header(&stat))
                .body(Body::Full(None))
                .expect("static response parts")
        }
        ArchiveGet => {
            let path = q
                .get("path")
                .ok_or_else(|| ApiError::bad_request("path is required"))?;
            let (stat, rx) = b.archive_get(&id, path).await?;
            base(StatusCode::OK)
                .header("X-Docker-Container-Path-Stat", stat_header(&stat))
                .header(header::CONTENT_TYPE, "application/x-tar")
                .body(Body::Channel(rx))
                .expect("static response parts")
        }
        ArchivePut => {
            let path = q
                .get("path")
                .ok_or_else(|| ApiError::bad_request("path is required"))?
                .to_string();
            let tar = read_body(req.into_body().take()?, MAX_ARCHIVE_BODY).await?;
            b.archive_put(&id, &path, tar).await?;
            empty(StatusCode::OK)
        }
    })
}

fn stat_header(stat: &PathStat) -> HeaderValue {
    let j = serde_json::to_vec(stat).unwrap_or_default();
    HeaderValue::from_str(&base64::engine::general_purpose::STANDARD.encode(j))
        .expect("base64 is a valid header value")
}

/// The `X-Registry-Auth` header: base64 (URL-safe or standard) JSON credentials.
pub fn decode_auth(v: &str) -> Option<RegistryAuth> {
    let raw = base64::engine::general_purpose::URL_SAFE
        .decode(v.trim())
        .or_else(|_| base64::engine::general_purpose::STANDARD.decode(v.trim()))
        .ok()?;
    serde_json::from_slice(&raw).ok()
}

fn wants_upgrade<T>(req: &Request<T>) -> bool {
    req.headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.eq_ignore_ascii_case("tcp"))
        .unwrap_or(false)
}

fn stream_frames(tty: bool, mut rx: mpsc::Receiver<Frame>) -> Resp {
    let (tx, body_rx) = mpsc::channel(16);
    tokio::spawn(async move {
        while let Some(f) = rx.recv().await {
            if tx.send(stdcopy::encode(&f, tty)).await.is_err() {
                break;
            }
        }
    });
    let ct = if tty {
        "application/vnd.docker.raw-stream"
    } else {
        "application/vnd.docker.multiplexed-stream"
    };
    base(StatusCode::OK)
        .header(header::CONTENT_TYPE, ct)
        .body(Body::Channel(body_rx))
        .expect("static response parts")
}

/// Answers attach/exec start: hijacks the connection (101, `Upgrade: tcp`) when asked,
/// otherwise streams the output as the response body.
fn stream_io(req: Request<()>, upgrade: bool, io: AttachIo, keys: Vec<u8>) -> ApiResult<Resp> {
    if !upgrade {
        return Ok(stream_frames(io.tty, io.output));
    }
    let tty = io.tty;
    let mut req = req;
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => pump(TokioIo::new(upgraded), io, keys).await,
            Err(e) => eprintln!("engine api: connection upgrade failed: {e}"),
        }
    });
    let ct = if tty {
        "application/vnd.docker.raw-stream"
    } else {
        "application/vnd.docker.multiplexed-stream"
    };
    Ok(base(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONTENT_TYPE, ct)
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "tcp")
        .body(Body::Full(None))
        .expect("static response parts"))
}

/// How long a client may go on sending after the output has ended before the connection
/// is closed under it (see [`pump`]).
const DRAIN_AFTER_OUTPUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Copies container output to the hijacked connection and the client's input to stdin.
///
/// When the output ends while the client still sends (`yes | docker run -i IMAGE head -n 1`),
/// its input is read and dropped until it closes the connection, which it does once it has
/// read the end: closing first, with its bytes unread, resets the connection (unix sockets
/// and TCP alike), and a client may read that reset instead of the end of the output (the
/// CLI then fails with "connection reset by peer").
///
/// With a TTY, the detach keys (`detachKeys`, default ctrl-p ctrl-q) in the input end the
/// session and leave the container running, as dockerd's escape proxy does.
async fn pump<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    conn: S,
    io: AttachIo,
    keys: Vec<u8>,
) {
    let (mut rd, mut wr) = tokio::io::split(conn);
    let AttachIo {
        tty,
        mut output,
        stdin,
    } = io;
    let (ended, mut ended_rx) = tokio::sync::oneshot::channel::<()>();
    let (detached, mut detached_rx) = tokio::sync::oneshot::channel::<()>();
    let input = tokio::spawn(async move {
        let mut stdin = stdin;
        let mut draining = false;
        let mut escape = crate::ops::Escape::new(if tty { keys } else { Vec::new() });
        let mut detached = Some(detached);
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let n = tokio::select! {
                r = rd.read(&mut buf) => match r {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                },
                _ = &mut ended_rx, if !draining => {
                    draining = true;
                    stdin = None;
                    continue;
                }
            };
            let (data, hit) = escape.feed(&buf[..n]);
            if hit && stdin.is_some() {
                if let Some(d) = detached.take() {
                    let _ = d.send(());
                }
                stdin = None;
            }
            if let Some(tx) = &stdin {
                tokio::select! {
                    r = tx.send(Bytes::from(data)) => if r.is_err() {
                        // The process's stdin is closed: what else comes is dropped.
                        stdin = None;
                    },
                    _ = &mut ended_rx, if !draining => {
                        draining = true;
                        stdin = None;
                    }
                }
            }
        }
        // Dropping the sender is EOF for the container's stdin.
        drop(stdin);
    });
    // Only a detach that was sent ends the output: the sender also goes away when the
    // client merely closes its input (`docker run` without -i).
    let mut watch_detach = true;
    loop {
        let f = tokio::select! {
            f = output.recv() => f,
            r = &mut detached_rx, if watch_detach => match r {
                Ok(()) => None,
                Err(_) => {
                    watch_detach = false;
                    continue;
                }
            },
        };
        let Some(f) = f else { break };
        if wr.write_all(&stdcopy::encode(&f, tty)).await.is_err() {
            break;
        }
        let _ = wr.flush().await;
    }
    let _ = wr.shutdown().await;
    let _ = ended.send(());
    let abort = input.abort_handle();
    if tokio::time::timeout(DRAIN_AFTER_OUTPUT, input)
        .await
        .is_err()
    {
        abort.abort();
    }
}

/// Serves one connection (any byte stream) until it closes.
pub async fn serve_connection<B, S>(backend: Arc<B>, io: S)
where
    B: Backend,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req| {
        let b = backend.clone();
        async move { Ok::<_, Infallible>(handle(b, req).await) }
    });
    if let Err(e) = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades()
        .await
    {
        if !e.is_incomplete_message() {
            eprintln!("engine api: connection error: {e}");
        }
    }
}

/// Serves the API on a unix socket (replacing a stale socket file), mode 0660.
pub async fn serve_unix<B: Backend>(backend: Arc<B>, path: &Path) -> std::io::Result<()> {
    let _ = std::fs::remove_file(path);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let listener = UnixListener::bind(path)?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    }
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("engine api: accept on {}: {e}", path.display());
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        tokio::spawn(serve_connection(backend.clone(), stream));
    }
}

/// Serves the API on TCP; with `tls`, every connection must complete a TLS handshake
/// (with the client certificate checks the config carries) first.
pub async fn serve_tcp<B: Backend>(
    backend: Arc<B>,
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> std::io::Result<()> {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("engine api: tcp accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let b = backend.clone();
        match &acceptor {
            None => {
                tokio::spawn(serve_connection(b, stream));
            }
            Some(acc) => {
                let acc = acc.clone();
                tokio::spawn(async move {
                    match acc.accept(stream).await {
                        Ok(tls) => serve_connection(b, tls).await,
                        // A peer that closed before finishing its hello is a port probe
                        // (axion's init checks readiness so), not a failed client.
                        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {}
                        Err(e) => eprintln!("engine api: TLS handshake with {peer} failed: {e}"),
                    }
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        ArchiveBackend, ContainerBackend, EventBackend, ExecBackend, ImageBackend, NetworkBackend,
        SystemBackend, VolumeBackend,
    };

    /// A back end that implements only the required methods and an inspect that knows
    /// container "c1", so the rest answer 501 and unknown ids 404.
    struct Fake;
    impl SystemBackend for Fake {
        async fn version(&self) -> ApiResult<Version> {
            Ok(Version {
                api_version: version::API_VERSION.into(),
                ..Default::default()
            })
        }
        async fn info(&self) -> ApiResult<Info> {
            Ok(Info::default())
        }
    }
    impl ImageBackend for Fake {}
    impl ExecBackend for Fake {}
    impl ArchiveBackend for Fake {}
    impl VolumeBackend for Fake {}
    impl NetworkBackend for Fake {}
    impl EventBackend for Fake {}
    impl crate::build::BuildBackend for Fake {}
    impl ContainerBackend for Fake {
        async fn container_inspect(&self, id: &str) -> ApiResult<ContainerInspect> {
            if id == "boom" {
                panic!("a bug in the back end");
            }
            if id == "c1" {
                Ok(ContainerInspect {
                    id: "c1".into(),
                    ..Default::default()
                })
            } else {
                Err(ApiError::not_found(format!("No such container: {id}")))
            }
        }
    }

    /// A back end whose container "c1" says "bye" and exits at once, with stdin attached.
    struct Quick;
    impl SystemBackend for Quick {
        async fn version(&self) -> ApiResult<Version> {
            Ok(Version::default())
        }
        async fn info(&self) -> ApiResult<Info> {
            Ok(Info::default())
        }
    }
    impl ImageBackend for Quick {}
    impl ExecBackend for Quick {}
    impl ArchiveBackend for Quick {}
    impl VolumeBackend for Quick {}
    impl NetworkBackend for Quick {}
    impl EventBackend for Quick {}
    impl crate::build::BuildBackend for Quick {}
    impl ContainerBackend for Quick {
        async fn container_attach(&self, _id: &str, _o: AttachOptions) -> ApiResult<AttachIo> {
            let (tx, output) = mpsc::channel(1);
            tx.send(Frame::stdout("bye\n")).await.unwrap();
            // Its stdin is gone with it.
            let stdin = mpsc::channel(1).0;
            Ok(AttachIo {
                tty: false,
                output,
                stdin: Some(stdin),
            })
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_client_still_sending_sees_the_end_of_the_output_not_a_reset() {
        // `yes | docker run -i IMAGE head -n 1`: the container is done while the client
        // still sends. Closing the connection with its bytes unread would reset it (on unix
        // sockets and TCP alike), and the client could read the reset instead of the end.
        for _ in 0..20 {
            let (client, server) = std::os::unix::net::UnixStream::pair().unwrap();
            server.set_nonblocking(true).unwrap();
            tokio::spawn(serve_connection(
                Arc::new(Quick),
                tokio::net::UnixStream::from_std(server).unwrap(),
            ));
            let mut w = client.try_clone().unwrap();
            let mut r = client;
            let reader = std::thread::spawn(move || {
                use std::io::Read;
                r.set_read_timeout(Some(std::time::Duration::from_secs(10)))
                    .unwrap();
                let mut out = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    match r.read(&mut buf) {
                        Ok(0) => {
                            // Done, as the CLI is: it closes the connection.
                            let _ = r.shutdown(std::net::Shutdown::Both);
                            return Ok(out);
                        }
                        Ok(n) => out.extend_from_slice(&buf[..n]),
                        Err(e) => return Err((e, String::from_utf8_lossy(&out).into_owned())),
                    }
                }
            });
            use std::io::Write;
            w.write_all(
                b"POST /containers/c1/attach?stream=1&stdin=1&stdout=1 HTTP/1.1\r\nHost: \
                x\r\nConnection: Upgrade\r\nUpgrade: tcp\r\nContent-Length: 0\r\n\r\n",
            )
            .unwrap();
            // The endless producer, until the connection is gone.
            let writer = std::thread::spawn(move || while w.write_all(b"y\n").is_ok() {});
            let out = tokio::task::spawn_blocking(move || reader.join().unwrap())
                .await
                .unwrap();
            let out = out.unwrap_or_else(|(e, got)| panic!("the client read {e} after {got:?}"));
            let out = String::from_utf8_lossy(&out);
            assert!(
                out.starts_with("HTTP/1.1 101") && out.ends_with("bye\n"),
                "{out:?}"
            );
            drop(writer);
        }
    }

    /// A back end whose container "c1" says "late" after a while, stdin attached.
    struct Late;
    impl SystemBackend for Late {
        async fn version(&self) -> ApiResult<Version> {
            Ok(Version::default())
        }
        async fn info(&self) -> ApiResult<Info> {
            Ok(Info::default())
        }
    }
    impl ImageBackend for Late {}
    impl ExecBackend for Late {}
    impl ArchiveBackend for Late {}
    impl VolumeBackend for Late {}
    impl NetworkBackend for Late {}
    impl EventBackend for Late {}
    impl crate::build::BuildBackend for Late {}
    impl ContainerBackend for Late {
        async fn container_attach(&self, _id: &str, o: AttachOptions) -> ApiResult<AttachIo> {
            let (tx, output) = mpsc::channel(1);
            tokio::spawn(async move {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                let _ = tx.send(Frame::stdout("late\n")).await;
            });
            Ok(AttachIo {
                tty: o.stdin,
                output,
                stdin: Some(mpsc::channel(1).0),
            })
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn output_goes_on_after_the_client_closes_its_input_and_detach_keys_end_it() {
        use std::io::{Read, Write};
        for (tty, input, want_late) in [(false, &b""[..], true), (true, &b"\x10\x11"[..], false)] {
            let (client, server) = std::os::unix::net::UnixStream::pair().unwrap();
            server.set_nonblocking(true).unwrap();
            tokio::spawn(serve_connection(
                Arc::new(Late),
                tokio::net::UnixStream::from_std(server).unwrap(),
            ));
            let stdin = if tty { "1" } else { "0" };
            let out = tokio::task::spawn_blocking(move || {
                let mut c = client;
                c.set_read_timeout(Some(std::time::Duration::from_secs(5)))
                    .unwrap();
                write!(
                    c,
                    "POST /containers/c1/attach?stream=1&stdout=1&stdin={stdin} \
                    HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n"
                )
                .unwrap();
                let mut out = Vec::new();
                let mut b = [0u8; 1];
                while !out.ends_with(b"\r\n\r\n") && c.read(&mut b).unwrap_or(0) == 1 {
                    out.push(b[0]);
                }
                c.write_all(input).unwrap();
                // `docker run` without -i: the client's input ends at once.
                c.shutdown(std::net::Shutdown::Write).unwrap();
                let _ = c.read_to_end(&mut out);
                String::from_utf8_lossy(&out).into_owned()
            })
            .await
            .unwrap();
            assert!(out.starts_with("HTTP/1.1 101"), "{out:?}");
            assert_eq!(out.ends_with("late\n"), want_late, "tty {tty}: {out:?}");
        }
    }

    async fn request(raw: &str) -> String {
        let (client, server) = tokio::io::duplex(1 << 16);
        tokio::spawn(serve_connection(Arc::new(Fake), server));
        let (mut rd, mut wr) = tokio::io::split(client);
        wr.write_all(raw.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = tokio::time::timeout(std::time::Duration::from_secs(5), rd.read(&mut buf))
                .await
                .unwrap()
                .unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn ping_has_api_version_header() {
        let r = request("GET /_ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        assert!(r.to_ascii_lowercase().contains("api-version: 1.47"), "{r}");
        assert!(r.ends_with("OK"), "{r}");
    }

    #[tokio::test]
    async fn unimplemented_is_501_and_unknown_is_404() {
        let r = request("GET /v1.47/images/json HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await;
        assert!(r.starts_with("HTTP/1.1 501"), "{r}");
        assert!(
            r.contains(r#"{"message":"listing images is not implemented by this engine"}"#),
            "{r}"
        );
        let r = request(
            "GET /v1.47/containers/zz/json HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(r.starts_with("HTTP/1.1 404"), "{r}");
        let r = request(
            "POST /v1.47/containers/zz/wait HTTP/1.1\r\nHost: x\r\nConnection: \
            close\r\nContent-Length: 0\r\n\r\n",
        )
        .await;
        assert!(r.starts_with("HTTP/1.1 404"), "{r}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_connection_stays_open_after_an_error_with_an_unread_body() {
        // Python's requests sends the body after the headers; hyper would close a connection
        // whose body the handler never read, and the client's next request on it fails.
        let (client, server) = tokio::io::duplex(1 << 16);
        tokio::spawn(serve_connection(Arc::new(Fake), server));
        let (mut rd, mut wr) = tokio::io::split(client);
        let body = "x".repeat(50_000);
        wr.write_all(
            format!(
                "POST /v1.47/nope HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        wr.write_all(body.as_bytes()).await.unwrap();
        wr.write_all(
            b"POST /containers/zz/kill HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}",
        )
        .await
        .unwrap();
        wr.write_all(b"GET /swarm HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(std::time::Duration::from_secs(5), rd.read_to_end(&mut out))
            .await
            .unwrap()
            .unwrap();
        let out = String::from_utf8_lossy(&out);
        assert_eq!(out.matches("HTTP/1.1 ").count(), 3, "{out}");
        assert!(out.starts_with("HTTP/1.1 404"), "{out}");
        assert!(out.contains("HTTP/1.1 503"), "{out}");
        assert!(
            out.contains(crate::ops::NOT_A_MANAGER.replace('"', "\\\"").as_str()),
            "{out}"
        );
    }

    #[tokio::test]
    async fn bad_json_and_bad_query_are_400() {
        let body = "{oops";
        let r = request(&format!(
            "POST /containers/create HTTP/1.1\r\nHost: x\r\nConnection: \
            close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ))
        .await;
        assert!(r.starts_with("HTTP/1.1 400"), "{r}");
        let r = request(
            "POST /containers/c1/stop?t=abc HTTP/1.1\r\nHost: x\r\nConnection: \
            close\r\nContent-Length: 0\r\n\r\n",
        )
        .await;
        assert!(r.starts_with("HTTP/1.1 400"), "{r}");
        let r = request(
            "POST /containers/c1/wait?condition=whenever HTTP/1.1\r\nHost: \
            x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
        )
        .await;
        assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    }

    #[tokio::test]
    async fn a_panicking_handler_answers_500_and_the_server_serves_on() {
        // Both requests on one keep-alive connection: the connection survives too.
        let r = request(concat!(
            "GET /v1.47/containers/boom/json HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET /v1.47/containers/c1/json HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        ))
        .await;
        assert!(r.starts_with("HTTP/1.1 500"), "{r}");
        assert!(r.contains("GET /v1.47/containers/boom/json"), "{r}");
        let second = r
            .find("HTTP/1.1 200")
            .unwrap_or_else(|| panic!("no 200 after: {r}"));
        assert!(r[second..].contains(r#""Id":"c1""#), "{r}");
        // And a new connection.
        let r = request("GET /_ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    }
}
