//! A Docker API client for the engine inside one VM: HTTPS with the daemon's client
//! certificate to the clone's forwarded port on 127.0.0.1.

use crate::tls::Certs;
use bytes::{Buf, Bytes, BytesMut};
use docker_api::types::*;
use docker_api::{ApiError, ApiResult, Frame, StdStream};
use serde::de::DeserializeOwned;
use std::time::Duration;
use tokio::sync::mpsc;

#[derive(Clone)]
pub struct GuestClient {
    http: reqwest::Client,
    base: String,
}

fn unreachable_err(what: &str, e: impl std::fmt::Display) -> ApiError {
    ApiError::internal(format!("the container's VM did not answer ({what}): {e}"))
}

impl GuestClient {
    pub fn new(certs: &Certs, port: u16) -> anyhow::Result<GuestClient> {
        let mut id = certs.client_cert.clone().into_bytes();
        id.extend_from_slice(certs.client_key.as_bytes());
        let http = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(certs.ca.as_bytes())?)
            .identity(reqwest::Identity::from_pem(&id)?)
            .connect_timeout(Duration::from_secs(10))
            .pool_max_idle_per_host(2)
            .build()?;
        Ok(GuestClient { http, base: format!("https://127.0.0.1:{port}/v1.47") })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn check(&self, what: &str, r: reqwest::Result<reqwest::Response>) -> ApiResult<reqwest::Response> {
        let r = r.map_err(|e| unreachable_err(what, e))?;
        if r.status().is_success() || r.status().as_u16() == 304 {
            return Ok(r);
        }
        let status = http::StatusCode::from_u16(r.status().as_u16()).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
        let body = r.text().await.unwrap_or_default();
        let msg = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["message"].as_str().map(str::to_string))
            .unwrap_or(body);
        Err(ApiError::new(status, msg))
    }

    async fn json<T: DeserializeOwned>(&self, what: &str, r: reqwest::Result<reqwest::Response>) -> ApiResult<T> {
        let r = self.check(what, r).await?;
        let b = r.bytes().await.map_err(|e| unreachable_err(what, e))?;
        serde_json::from_slice(&b).map_err(|e| ApiError::internal(format!("{what}: bad answer from the guest engine: {e}")))
    }

    /// `/_ping` once, with a short timeout.
    pub async fn ping(&self) -> bool {
        self.try_ping().await.is_ok()
    }

    /// `/_ping` once; the error says why it failed.
    pub async fn try_ping(&self) -> Result<(), String> {
        let r = self.http.get(self.url("/_ping")).timeout(Duration::from_secs(5)).send().await;
        match r {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(format!("HTTP {}", r.status())),
            Err(e) => {
                let mut msg = e.to_string();
                let mut src = std::error::Error::source(&e);
                while let Some(s) = src {
                    msg.push_str(&format!(": {s}"));
                    src = s.source();
                }
                Err(msg)
            }
        }
    }

    /// Pulls `image` in the guest and waits for the end of the progress stream; a progress
    /// line with an error fails the pull.
    pub async fn pull(&self, image: &str) -> ApiResult<()> {
        let r = self.http.post(self.url("/images/create")).query(&[("fromImage", image)]).send().await;
        let r = self.check("pull", r).await?;
        let body = r.bytes().await.map_err(|e| unreachable_err("pull", e))?;
        for line in body.split(|&b| b == b'\n') {
            if let Ok(m) = serde_json::from_slice::<ProgressMessage>(line) {
                if let Some(e) = m.error {
                    return Err(ApiError::internal(format!("pulling {image} in the container's VM: {e}")));
                }
            }
        }
        Ok(())
    }

    pub async fn create(&self, req: &ContainerCreateRequest) -> ApiResult<String> {
        let r = self.http.post(self.url("/containers/create")).json(req).send().await;
        let c: ContainerCreateResponse = self.json("create", r).await?;
        Ok(c.id)
    }

    pub async fn start(&self, id: &str) -> ApiResult<()> {
        let r = self.http.post(self.url(&format!("/containers/{id}/start"))).send().await;
        self.check("start", r).await.map(drop)
    }

    pub async fn stop(&self, id: &str, timeout: Option<i64>, signal: Option<String>) -> ApiResult<()> {
        let mut q: Vec<(&str, String)> = Vec::new();
        if let Some(t) = timeout {
            q.push(("t", t.to_string()));
        }
        if let Some(s) = signal {
            q.push(("signal", s));
        }
        let r = self.http.post(self.url(&format!("/containers/{id}/stop"))).query(&q).send().await;
        self.check("stop", r).await.map(drop)
    }

    pub async fn kill(&self, id: &str, signal: Option<String>) -> ApiResult<()> {
        let q: Vec<(&str, String)> = signal.map(|s| ("signal", s)).into_iter().collect();
        let r = self.http.post(self.url(&format!("/containers/{id}/kill"))).query(&q).send().await;
        self.check("kill", r).await.map(drop)
    }

    pub async fn inspect(&self, id: &str) -> ApiResult<ContainerInspect> {
        let r = self.http.get(self.url(&format!("/containers/{id}/json"))).send().await;
        self.json("inspect", r).await
    }

    /// Waits until the container is not running; its exit code.
    pub async fn wait(&self, id: &str) -> ApiResult<WaitResponse> {
        let r = self.http.post(self.url(&format!("/containers/{id}/wait"))).query(&[("condition", "not-running")]).send().await;
        self.json("wait", r).await
    }

    /// All of the container's logs as the raw (stdcopy or tty) stream.
    pub async fn logs_raw(&self, id: &str) -> ApiResult<Bytes> {
        let r = self
            .http
            .get(self.url(&format!("/containers/{id}/logs")))
            .query(&[("stdout", "1"), ("stderr", "1")])
            .send()
            .await;
        let r = self.check("logs", r).await?;
        r.bytes().await.map_err(|e| unreachable_err("logs", e))
    }

    /// A streaming GET/POST whose body is container output: decoded into frames on `tx`.
    async fn stream(&self, what: &'static str, rb: reqwest::RequestBuilder, tty: bool) -> ApiResult<mpsc::Receiver<Frame>> {
        let r = self.check(what, rb.send().await).await?;
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            let mut r = r;
            let mut dec = Decoder::new(tty);
            loop {
                match r.chunk().await {
                    Ok(Some(chunk)) => {
                        for f in dec.push(&chunk) {
                            if tx.send(f).await.is_err() {
                                return;
                            }
                        }
                    }
                    Ok(None) => {
                        if std::env::var_os("VMD_DEBUG").is_some() {
                            eprintln!("vmd: {what} stream from the guest: end of body");
                        }
                        return;
                    }
                    Err(e) => {
                        eprintln!("vmd: {what} stream from the guest ended: {e}");
                        return;
                    }
                }
            }
        });
        Ok(rx)
    }

    pub async fn logs(&self, id: &str, opts: &docker_api::LogsOptions, tty: bool) -> ApiResult<mpsc::Receiver<Frame>> {
        let mut q = vec![("stdout", opts.stdout.to_string()), ("stderr", opts.stderr.to_string())];
        q.push(("follow", opts.follow.to_string()));
        q.push(("timestamps", opts.timestamps.to_string()));
        if let Some(t) = opts.tail {
            q.push(("tail", t.to_string()));
        }
        let rb = self.http.get(self.url(&format!("/containers/{id}/logs"))).query(&q);
        self.stream("logs", rb, tty).await
    }

    /// Attaches to the output (no stdin) without hijacking: the body is the stream.
    pub async fn attach(&self, id: &str, opts: &docker_api::AttachOptions, tty: bool) -> ApiResult<mpsc::Receiver<Frame>> {
        let q = [
            ("stream", "1"),
            ("stdout", if opts.stdout { "1" } else { "0" }),
            ("stderr", if opts.stderr { "1" } else { "0" }),
            ("logs", if opts.logs { "1" } else { "0" }),
        ];
        let rb = self.http.post(self.url(&format!("/containers/{id}/attach"))).query(&q);
        self.stream("attach", rb, tty).await
    }
}

/// Incremental stdcopy decoder (raw pass-through with a TTY).
pub struct Decoder {
    tty: bool,
    buf: BytesMut,
}

impl Decoder {
    pub fn new(tty: bool) -> Decoder {
        Decoder { tty, buf: BytesMut::new() }
    }

    pub fn push(&mut self, chunk: &[u8]) -> Vec<Frame> {
        if self.tty {
            return vec![Frame::stdout(Bytes::copy_from_slice(chunk))];
        }
        self.buf.extend_from_slice(chunk);
        let mut out = Vec::new();
        while self.buf.len() >= 8 {
            let len = u32::from_be_bytes([self.buf[4], self.buf[5], self.buf[6], self.buf[7]]) as usize;
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
    use super::*;

    #[test]
    fn decoder_across_chunks() {
        let mut all = Vec::new();
        all.extend_from_slice(&docker_api::stdcopy::encode(&Frame::stdout("hello\n"), false));
        all.extend_from_slice(&docker_api::stdcopy::encode(&Frame::stderr("err\n"), false));
        let mut d = Decoder::new(false);
        let mut frames = Vec::new();
        for c in all.chunks(3) {
            frames.extend(d.push(c));
        }
        assert_eq!(frames, vec![Frame::stdout("hello\n"), Frame::stderr("err\n")]);
    }
}
