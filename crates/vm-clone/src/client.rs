//! A Docker API client for the engine inside one VM: HTTP/1.1 over the VM's virtio-serial
//! port `axion.engine` (QEMU's unix socket in the VM's directory), one multiplexed stream per
//! request ([`vchan`]), with hyper's client connection API (reqwest takes no custom
//! transports).
//!
//! The session is opened on first use and never again: a session starts at the first byte
//! the host sends after it connects, so a second connection to a running guest could be
//! read as the rest of the first (see `vchan::port`). When QEMU exits, the session ends:
//! open streams fail and every later call fails at once ("the container's VM did not
//! answer"), never hangs.

use bytes::{Buf, Bytes, BytesMut};
use docker_api::types::*;
use docker_api::{ApiError, ApiResult, AttachIo, Frame, StdStream};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, OnceCell};

#[derive(Clone)]
pub struct GuestClient {
    socket: PathBuf,
    session: Arc<OnceCell<vchan::Client>>,
}

fn unreachable_err(what: &str, e: impl std::fmt::Display) -> ApiError {
    ApiError::internal(format!("the container's VM did not answer ({what}): {e}"))
}

/// `a=b&c=d`, form-encoded.
/// An id the guest engine answered, checked before it goes into request paths, messages and
/// slices: 1 to 128 characters of `[0-9A-Za-z_.-]`. The guest is not trusted.
pub fn guest_id(what: &str, id: String) -> ApiResult<String> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(id)
    } else {
        Err(ApiError::internal(format!(
            "{what}: bad answer from the guest engine: id {:?}",
            id.chars().take(140).collect::<String>()
        )))
    }
}

fn query(q: &[(&str, String)]) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in q {
        s.append_pair(k, v);
    }
    s.finish()
}

/// An error and its sources, one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        msg.push_str(&format!(": {s}"));
        src = s.source();
    }
    msg
}

impl GuestClient {
    /// A client for the engine behind `socket` (QEMU's end of the VM's `axion.engine` port).
    pub fn new(socket: &Path) -> GuestClient {
        GuestClient {
            socket: socket.to_path_buf(),
            session: Arc::new(OnceCell::new()),
        }
    }

    /// One request on a new stream: the response with its headers (the body follows).
    async fn send(
        &self,
        what: &str,
        method: http::Method,
        path: &str,
        q: &[(&str, String)],
        body: Option<Vec<u8>>,
    ) -> ApiResult<http::Response<Incoming>> {
        self.request(what, method, path, q, body, false).await
    }

    /// [`Self::send`]; with `upgrade`, asks the engine to hijack the connection
    /// (`Upgrade: tcp`, as the docker CLI does for attach and exec start).
    async fn request(
        &self,
        what: &str,
        method: http::Method,
        path: &str,
        q: &[(&str, String)],
        body: Option<Vec<u8>>,
        upgrade: bool,
    ) -> ApiResult<http::Response<Incoming>> {
        let mux = self
            .session
            .get_or_try_init(|| vchan::Client::connect(&self.socket))
            .await
            .map_err(|e| {
                unreachable_err(
                    what,
                    format!("connecting to {}: {e}", self.socket.display()),
                )
            })?;
        let stream = mux.open().await.map_err(|e| unreachable_err(what, e))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| unreachable_err(what, chain(&e)))?;
        // The connection runs until the response body is read (or dropped), then closes;
        // after a 101 it hands the stream to `hyper::upgrade::on`.
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        let mut uri = format!("/v1.47{path}");
        if !q.is_empty() {
            uri.push('?');
            uri.push_str(&query(q));
        }
        let mut req = http::Request::builder()
            .method(method)
            .uri(uri)
            .header(http::header::HOST, "guest-engine");
        if body.is_some() {
            req = req.header(http::header::CONTENT_TYPE, "application/json");
        }
        if upgrade {
            req = req
                .header(http::header::CONNECTION, "Upgrade")
                .header(http::header::UPGRADE, "tcp");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ApiError::internal(format!("{what}: {e}")))?;
        let t0 = std::time::Instant::now();
        let r = sender
            .send_request(req)
            .await
            .map_err(|e| unreachable_err(what, chain(&e)));
        crate::debug(&format!(
            "guest {what}: answer (headers) in {:.3} s",
            t0.elapsed().as_secs_f64()
        ));
        r
    }

    /// [`Self::send`], and a status other than 2xx/304 becomes the engine's error.
    async fn call(
        &self,
        what: &str,
        method: http::Method,
        path: &str,
        q: &[(&str, String)],
        body: Option<Vec<u8>>,
    ) -> ApiResult<http::Response<Incoming>> {
        let r = self.send(what, method, path, q, body).await?;
        if r.status().is_success() || r.status().as_u16() == 304 {
            return Ok(r);
        }
        Err(Self::error_of(r).await)
    }

    /// The engine's error answer as an [`ApiError`] with its status and message.
    async fn error_of(r: http::Response<Incoming>) -> ApiError {
        let status = r.status();
        let body = r
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let body = String::from_utf8_lossy(&body).into_owned();
        let msg = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["message"].as_str().map(str::to_string))
            .unwrap_or(body);
        ApiError::new(status, msg)
    }

    async fn bytes(what: &str, r: http::Response<Incoming>) -> ApiResult<Bytes> {
        r.into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .map_err(|e| unreachable_err(what, chain(&e)))
    }

    async fn json<T: DeserializeOwned>(
        &self,
        what: &str,
        method: http::Method,
        path: &str,
        q: &[(&str, String)],
        body: Option<Vec<u8>>,
    ) -> ApiResult<T> {
        let r = self.call(what, method, path, q, body).await?;
        let b = Self::bytes(what, r).await?;
        serde_json::from_slice(&b).map_err(|e| {
            ApiError::internal(format!("{what}: bad answer from the guest engine: {e}"))
        })
    }

    /// `/_ping` once, with a short timeout.
    pub async fn ping(&self) -> bool {
        self.try_ping().await.is_ok()
    }

    /// `/_ping` once (5 s at most); the error says why it failed.
    pub async fn try_ping(&self) -> Result<(), String> {
        let r = tokio::time::timeout(Duration::from_secs(5), async {
            let r = self
                .send("ping", http::Method::GET, "/_ping", &[], None)
                .await?;
            let status = r.status();
            Self::bytes("ping", r).await?;
            Ok::<_, ApiError>(status)
        })
        .await;
        match r {
            Ok(Ok(s)) if s.is_success() => Ok(()),
            Ok(Ok(s)) => Err(format!("HTTP {s}")),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("no answer within 5 s".into()),
        }
    }

    /// Pulls `image` in the guest and waits for the end of the progress stream; a progress
    /// line with an error fails the pull.
    pub async fn pull(&self, image: &str) -> ApiResult<()> {
        let r = self
            .call(
                "pull",
                http::Method::POST,
                "/images/create",
                &[("fromImage", image.to_string())],
                None,
            )
            .await?;
        let body = Self::bytes("pull", r).await?;
        for line in body.split(|&b| b == b'\n') {
            if let Ok(m) = serde_json::from_slice::<ProgressMessage>(line) {
                if let Some(e) = m.error {
                    return Err(ApiError::internal(format!(
                        "pulling {image} in the container's VM: {e}"
                    )));
                }
            }
        }
        Ok(())
    }

    pub async fn create(&self, req: &ContainerCreateRequest) -> ApiResult<String> {
        let body =
            serde_json::to_vec(req).map_err(|e| ApiError::internal(format!("create: {e}")))?;
        let c: ContainerCreateResponse = self
            .json(
                "create",
                http::Method::POST,
                "/containers/create",
                &[],
                Some(body),
            )
            .await?;
        guest_id("create", c.id)
    }

    pub async fn start(&self, id: &str) -> ApiResult<()> {
        let r = self
            .call(
                "start",
                http::Method::POST,
                &format!("/containers/{id}/start"),
                &[],
                None,
            )
            .await?;
        Self::bytes("start", r).await.map(drop)
    }

    pub async fn stop(
        &self,
        id: &str,
        timeout: Option<i64>,
        signal: Option<String>,
    ) -> ApiResult<()> {
        let mut q: Vec<(&str, String)> = Vec::new();
        if let Some(t) = timeout {
            q.push(("t", t.to_string()));
        }
        if let Some(s) = signal {
            q.push(("signal", s));
        }
        let r = self
            .call(
                "stop",
                http::Method::POST,
                &format!("/containers/{id}/stop"),
                &q,
                None,
            )
            .await?;
        Self::bytes("stop", r).await.map(drop)
    }

    pub async fn kill(&self, id: &str, signal: Option<String>) -> ApiResult<()> {
        let q: Vec<(&str, String)> = signal.map(|s| ("signal", s)).into_iter().collect();
        let r = self
            .call(
                "kill",
                http::Method::POST,
                &format!("/containers/{id}/kill"),
                &q,
                None,
            )
            .await?;
        Self::bytes("kill", r).await.map(drop)
    }

    /// Removes container `id` (with `force`, a running one too).
    pub async fn remove(&self, id: &str, force: bool) -> ApiResult<()> {
        let q = [("force", if force { "1" } else { "0" }.to_string())];
        let r = self
            .call(
                "remove",
                http::Method::DELETE,
                &format!("/containers/{id}"),
                &q,
                None,
            )
            .await?;
        Self::bytes("remove", r).await.map(drop)
    }

    pub async fn inspect(&self, id: &str) -> ApiResult<ContainerInspect> {
        self.json(
            "inspect",
            http::Method::GET,
            &format!("/containers/{id}/json"),
            &[],
            None,
        )
        .await
    }

    /// Waits until the container is not running; its exit code.
    pub async fn wait(&self, id: &str) -> ApiResult<WaitResponse> {
        self.json(
            "wait",
            http::Method::POST,
            &format!("/containers/{id}/wait"),
            &[("condition", "not-running".into())],
            None,
        )
        .await
    }

    /// All of the container's logs as the raw (stdcopy or tty) stream.
    pub async fn logs_raw(&self, id: &str) -> ApiResult<Bytes> {
        let q = [("stdout", "1".to_string()), ("stderr", "1".to_string())];
        let r = self
            .call(
                "logs",
                http::Method::GET,
                &format!("/containers/{id}/logs"),
                &q,
                None,
            )
            .await?;
        Self::bytes("logs", r).await
    }

    /// A streaming GET/POST whose body is container output: decoded into frames on `tx`.
    async fn stream(
        &self,
        what: &'static str,
        method: http::Method,
        path: &str,
        q: &[(&str, String)],
        tty: bool,
    ) -> ApiResult<mpsc::Receiver<Frame>> {
        let r = self.call(what, method, path, q, None).await?;
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            let mut body = r.into_body();
            let mut dec = Decoder::new(tty);
            loop {
                match body.frame().await {
                    Some(Ok(f)) => {
                        let Ok(chunk) = f.into_data() else { continue };
                        for f in dec.push(&chunk) {
                            if tx.send(f).await.is_err() {
                                return;
                            }
                        }
                    }
                    None => {
                        if std::env::var_os("VMD_DEBUG").is_some() {
                            eprintln!("vmd: {what} stream from the guest: end of body");
                        }
                        return;
                    }
                    Some(Err(e)) => {
                        eprintln!("vmd: {what} stream from the guest ended: {}", chain(&e));
                        return;
                    }
                }
            }
        });
        Ok(rx)
    }

    pub async fn logs(
        &self,
        id: &str,
        opts: &docker_api::LogsOptions,
        tty: bool,
    ) -> ApiResult<mpsc::Receiver<Frame>> {
        let mut q = vec![
            ("stdout", opts.stdout.to_string()),
            ("stderr", opts.stderr.to_string()),
        ];
        q.push(("follow", opts.follow.to_string()));
        q.push(("timestamps", opts.timestamps.to_string()));
        if let Some(t) = opts.tail {
            q.push(("tail", t.to_string()));
        }
        self.stream(
            "logs",
            http::Method::GET,
            &format!("/containers/{id}/logs"),
            &q,
            tty,
        )
        .await
    }

    /// Attaches to the container's output and, with `opts.stdin`, its input: a hijacked
    /// stream, as the docker CLI's own attach.
    pub async fn attach(
        &self,
        id: &str,
        opts: &docker_api::AttachOptions,
        tty: bool,
    ) -> ApiResult<AttachIo> {
        let b = |x: bool| if x { "1".to_string() } else { "0".to_string() };
        let q = [
            ("stream", "1".to_string()),
            ("stdin", b(opts.stdin)),
            ("stdout", b(opts.stdout)),
            ("stderr", b(opts.stderr)),
            ("logs", b(opts.logs)),
        ];
        self.hijack(
            "attach",
            &format!("/containers/{id}/attach"),
            &q,
            None,
            tty,
            opts.stdin,
        )
        .await
    }

    pub async fn resize(&self, id: &str, h: u16, w: u16) -> ApiResult<()> {
        let q = [("h", h.to_string()), ("w", w.to_string())];
        let r = self
            .call(
                "resize",
                http::Method::POST,
                &format!("/containers/{id}/resize"),
                &q,
                None,
            )
            .await?;
        Self::bytes("resize", r).await.map(drop)
    }

    /// Creates an exec instance in container `id`; the engine's exec id.
    pub async fn exec_create(&self, id: &str, req: &ExecCreateRequest) -> ApiResult<String> {
        let body =
            serde_json::to_vec(req).map_err(|e| ApiError::internal(format!("exec create: {e}")))?;
        let r: IdResponse = self
            .json(
                "exec create",
                http::Method::POST,
                &format!("/containers/{id}/exec"),
                &[],
                Some(body),
            )
            .await?;
        guest_id("exec create", r.id)
    }

    /// Starts exec `eid`: its output and input on a hijacked stream, or (detached) nothing.
    pub async fn exec_start(
        &self,
        eid: &str,
        req: &ExecStartRequest,
        tty: bool,
        stdin: bool,
    ) -> ApiResult<AttachIo> {
        let body =
            serde_json::to_vec(req).map_err(|e| ApiError::internal(format!("exec start: {e}")))?;
        let path = format!("/exec/{eid}/start");
        if req.detach {
            let r = self
                .call("exec start", http::Method::POST, &path, &[], Some(body))
                .await?;
            Self::bytes("exec start", r).await?;
            return Ok(AttachIo {
                tty,
                output: mpsc::channel(1).1,
                stdin: None,
            });
        }
        self.hijack("exec start", &path, &[], Some(body), tty, stdin)
            .await
    }

    pub async fn exec_inspect(&self, eid: &str) -> ApiResult<ExecInspect> {
        self.json(
            "exec inspect",
            http::Method::GET,
            &format!("/exec/{eid}/json"),
            &[],
            None,
        )
        .await
    }

    pub async fn exec_resize(&self, eid: &str, h: u16, w: u16) -> ApiResult<()> {
        let q = [("h", h.to_string()), ("w", w.to_string())];
        let r = self
            .call(
                "exec resize",
                http::Method::POST,
                &format!("/exec/{eid}/resize"),
                &q,
                None,
            )
            .await?;
        Self::bytes("exec resize", r).await.map(drop)
    }

    /// A GET answered with JSON (top, stats, changes).
    pub async fn get_json<T: DeserializeOwned>(
        &self,
        what: &str,
        path: &str,
        q: &[(&str, String)],
    ) -> ApiResult<T> {
        self.json(what, http::Method::GET, path, q, None).await
    }

    /// A POST without a body whose answer does not matter (pause, unpause, rename...).
    pub async fn post(&self, what: &str, path: &str, q: &[(&str, String)]) -> ApiResult<()> {
        let r = self.call(what, http::Method::POST, path, q, None).await?;
        Self::bytes(what, r).await.map(drop)
    }

    /// A request whose answer is a byte stream (export, archive): its headers, then the
    /// body's chunks on the channel (closed at the end; a broken body ends it early).
    pub async fn byte_stream(
        &self,
        what: &'static str,
        method: http::Method,
        path: &str,
        q: &[(&str, String)],
    ) -> ApiResult<(http::HeaderMap, mpsc::Receiver<Bytes>)> {
        let r = self.call(what, method, path, q, None).await?;
        let headers = r.headers().clone();
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            let mut body = r.into_body();
            while let Some(f) = body.frame().await {
                match f {
                    Ok(f) => {
                        let Ok(chunk) = f.into_data() else { continue };
                        if tx.send(chunk).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        eprintln!("vmd: {what} stream from the guest ended: {}", chain(&e));
                        return;
                    }
                }
            }
        });
        Ok((headers, rx))
    }

    /// `PUT /containers/{id}/archive?path=`: the tar is extracted there in the guest.
    pub async fn archive_put(&self, id: &str, path: &str, tar: Bytes) -> ApiResult<()> {
        let r = self
            .call(
                "archive put",
                http::Method::PUT,
                &format!("/containers/{id}/archive"),
                &[("path", path.to_string())],
                Some(tar.to_vec()),
            )
            .await?;
        Self::bytes("archive put", r).await.map(drop)
    }

    /// A POST the engine answers by hijacking the stream (101): its output decoded into
    /// frames, and (with `stdin`) a sender whose bytes go to the engine, closing it
    /// half-closes the stream (EOF on the process's stdin, as the CLI's CloseWrite).
    /// The front end relays both to the client's own hijacked connection: docker-api's
    /// `AttachIo` is the one shape of an attach for the engine and for this daemon.
    async fn hijack(
        &self,
        what: &'static str,
        path: &str,
        q: &[(&str, String)],
        body: Option<Vec<u8>>,
        tty: bool,
        stdin: bool,
    ) -> ApiResult<AttachIo> {
        let mut r = self
            .request(what, http::Method::POST, path, q, body, true)
            .await?;
        if r.status() != http::StatusCode::SWITCHING_PROTOCOLS {
            if !r.status().is_success() {
                return Err(Self::error_of(r).await);
            }
            return Err(ApiError::internal(format!(
                "{what}: the guest engine answered {} instead of taking over the connection",
                r.status()
            )));
        }
        let upgraded = hyper::upgrade::on(&mut r)
            .await
            .map_err(|e| unreachable_err(what, chain(&e)))?;
        let (mut rd, mut wr) = tokio::io::split(TokioIo::new(upgraded));
        let (tx, output) = mpsc::channel(64);
        tokio::spawn(async move {
            let mut dec = Decoder::new(tty);
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match rd.read(&mut buf).await {
                    Ok(0) => break,
                    Ok(n) => {
                        for f in dec.push(&buf[..n]) {
                            if tx.send(f).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(e) => {
                        eprintln!("vmd: {what} stream from the guest ended: {e}");
                        break;
                    }
                }
            }
        });
        let (itx, mut irx) = mpsc::channel::<Bytes>(64);
        tokio::spawn(async move {
            while let Some(b) = irx.recv().await {
                if wr.write_all(&b).await.is_err() || wr.flush().await.is_err() {
                    return;
                }
            }
            let _ = wr.shutdown().await;
        });
        // Without stdin the sender is dropped here: the engine sees EOF at once and ignores it.
        Ok(AttachIo {
            tty,
            output,
            stdin: stdin.then_some(itx),
        })
    }
}

/// Incremental stdcopy decoder (raw pass-through with a TTY).
pub struct Decoder {
    tty: bool,
    buf: BytesMut,
}

impl Decoder {
    pub fn new(tty: bool) -> Decoder {
        Decoder {
            tty,
            buf: BytesMut::new(),
        }
    }

    pub fn push(&mut self, chunk: &[u8]) -> Vec<Frame> {
        if self.tty {
            return vec![Frame::stdout(Bytes::copy_from_slice(chunk))];
        }
        self.buf.extend_from_slice(chunk);
        let mut out = Vec::new();
        while self.buf.len() >= 8 {
            let len =
                u32::from_be_bytes([self.buf[4], self.buf[5], self.buf[6], self.buf[7]]) as usize;
            if self.buf.len() < 8 + len {
                break;
            }
            let stream = match self.buf[0] {
                2 => StdStream::Stderr,
                0 => StdStream::Stdin,
                _ => StdStream::Stdout,
            };
            self.buf.advance(8);
            let data = self.buf.split_to(len).freeze();
            out.push(Frame { stream, data });
        }
        out
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn guest_ids_are_checked() {
        let hex = "0123456789abcdef".repeat(4);
        assert_eq!(guest_id("create", hex.clone()).unwrap(), hex);
        for bad in [
            "",
            "a/b",
            "../x",
            "x?y",
            "a b",
            "aaaaaaaaaaa€",
            &"a".repeat(129),
        ] {
            let e = guest_id("create", bad.to_string()).unwrap_err();
            assert!(
                e.message.contains("bad answer from the guest engine"),
                "{bad}: {e:?}"
            );
        }
    }
    use super::*;
    use docker_api::{
        ArchiveBackend, AttachOptions, ContainerBackend, EventBackend, ExecBackend, ImageBackend,
        NetworkBackend, SystemBackend, VolumeBackend,
    };

    /// A guest engine whose attach echoes stdin back on stdout and says "eof" when stdin
    /// ends, and whose exec echoes on stderr; exec ids other than "e1" are unknown.
    struct Echo;
    impl Echo {
        fn io(stream: StdStream, tty: bool) -> AttachIo {
            let (itx, mut irx) = mpsc::channel::<Bytes>(4);
            let (tx, output) = mpsc::channel(4);
            tokio::spawn(async move {
                while let Some(b) = irx.recv().await {
                    let _ = tx.send(Frame { stream, data: b }).await;
                }
                let _ = tx
                    .send(Frame {
                        stream,
                        data: Bytes::from("eof"),
                    })
                    .await;
            });
            AttachIo {
                tty,
                output,
                stdin: Some(itx),
            }
        }
    }
    impl SystemBackend for Echo {
        async fn version(&self) -> ApiResult<Version> {
            Ok(Version::default())
        }
        async fn info(&self) -> ApiResult<Info> {
            Ok(Info::default())
        }
    }
    impl ImageBackend for Echo {}
    impl ArchiveBackend for Echo {}
    impl VolumeBackend for Echo {}
    impl NetworkBackend for Echo {}
    impl EventBackend for Echo {}
    impl docker_api::BuildBackend for Echo {}
    impl ContainerBackend for Echo {
        async fn container_attach(&self, id: &str, o: AttachOptions) -> ApiResult<AttachIo> {
            assert!(o.stdin && o.stdout && o.stream, "{o:?}");
            match id {
                "c1" => Ok(Echo::io(StdStream::Stdout, false)),
                "t1" => Ok(Echo::io(StdStream::Stdout, true)),
                _ => Err(ApiError::not_found(format!("No such container: {id}"))),
            }
        }
    }
    impl ExecBackend for Echo {
        async fn exec_start(&self, id: &str, _req: ExecStartRequest) -> ApiResult<AttachIo> {
            match id {
                "e1" => Ok(Echo::io(StdStream::Stderr, false)),
                _ => Err(ApiError::not_found(format!("No such exec instance: {id}"))),
            }
        }
    }

    /// A GuestClient whose "VM" is `Echo` behind a unix socket, as QEMU's port would be.
    async fn guest(dir: &Path) -> GuestClient {
        let sock = dir.join("engine.sock");
        let l = tokio::net::UnixListener::bind(&sock).unwrap();
        tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            let b = Arc::new(Echo);
            let _ = vchan::serve_session(s, &move |st| {
                docker_api::server::serve_connection(b.clone(), st)
            })
            .await;
        });
        GuestClient::new(&sock)
    }

    async fn collect(mut rx: mpsc::Receiver<Frame>) -> Vec<Frame> {
        let mut v = Vec::new();
        while let Some(f) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("output within 10 s")
        {
            v.push(f);
        }
        v
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hijacked_attach_carries_stdin_and_its_eof() {
        let dir = tempfile::tempdir().unwrap();
        let g = guest(dir.path()).await;
        let opts = AttachOptions {
            stream: true,
            stdin: true,
            stdout: true,
            stderr: true,
            logs: false,
        };
        // Multiplexed (no TTY): the stdcopy frames come back decoded.
        let io = g.attach("c1", &opts, false).await.unwrap();
        let stdin = io.stdin.expect("a stdin sender");
        stdin.send(Bytes::from("hello ")).await.unwrap();
        stdin.send(Bytes::from("world\n")).await.unwrap();
        // Closing our end half-closes the stream: the engine sees EOF and still answers.
        drop(stdin);
        let out: Vec<u8> = collect(io.output)
            .await
            .iter()
            .flat_map(|f| f.data.to_vec())
            .collect();
        assert_eq!(String::from_utf8_lossy(&out), "hello world\neof");
        // Raw (TTY).
        let io = g.attach("t1", &opts, true).await.unwrap();
        io.stdin.unwrap().send(Bytes::from("typed")).await.unwrap();
        let out: Vec<u8> = collect(io.output)
            .await
            .iter()
            .flat_map(|f| f.data.to_vec())
            .collect();
        assert_eq!(String::from_utf8_lossy(&out), "typedeof");
        // Errors keep the engine's status and message.
        let e = g
            .attach("nope", &opts, false)
            .await
            .err()
            .expect("an error");
        assert_eq!(
            (e.status.as_u16(), e.message.as_str()),
            (404, "No such container: nope")
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hijacked_exec_start_and_unknown_exec() {
        let dir = tempfile::tempdir().unwrap();
        let g = guest(dir.path()).await;
        let io = g
            .exec_start("e1", &ExecStartRequest::default(), false, true)
            .await
            .unwrap();
        io.stdin.unwrap().send(Bytes::from("x")).await.unwrap();
        let frames = collect(io.output).await;
        assert_eq!(frames, vec![Frame::stderr("x"), Frame::stderr("eof")]);
        // Without stdin asked for, the stream is half-closed at once: EOF right away.
        let io = g
            .exec_start("e1", &ExecStartRequest::default(), false, false)
            .await
            .unwrap();
        assert!(io.stdin.is_none());
        assert_eq!(collect(io.output).await, vec![Frame::stderr("eof")]);
        let e = g
            .exec_start("e2", &ExecStartRequest::default(), false, true)
            .await
            .err()
            .expect("an error");
        assert_eq!(
            (e.status.as_u16(), e.message.as_str()),
            (404, "No such exec instance: e2")
        );
    }

    #[test]
    fn decoder_across_chunks() {
        let mut all = Vec::new();
        all.extend_from_slice(&docker_api::stdcopy::encode(
            &Frame::stdout("hello\n"),
            false,
        ));
        all.extend_from_slice(&docker_api::stdcopy::encode(&Frame::stderr("err\n"), false));
        let mut d = Decoder::new(false);
        let mut frames = Vec::new();
        for c in all.chunks(3) {
            frames.extend(d.push(c));
        }
        assert_eq!(
            frames,
            vec![Frame::stdout("hello\n"), Frame::stderr("err\n")]
        );
    }
}
