//! Many byte streams over one: the channel between axion-vmd on the host and the engine in
//! each of its VMs, a virtio-serial port (`axion.engine`), which is a single byte stream.
//! The daemon needs several HTTP connections to the guest engine at once (an attach or a
//! logs stream, a `wait`, a `create`...), so the port carries a multiplexer session and each
//! HTTP exchange gets a stream of its own.
//!
//! - The multiplexer is yamux, through libp2p's `yamux` crate (the reference Rust
//!   implementation, used by every rust-libp2p node). Also judged: `tokio-yamux` (nervos'
//!   tentacle), tokio-native and with a handle that opens streams from any task, so less glue;
//!   but its streams stop taking window updates once the peer half-closes (a stream that
//!   received FIN and still has more than one window to write hangs: our own echo test
//!   hung in about half its runs), so we pay for a small driver task here instead. Streams
//!   are futures-io; `tokio_util::compat` makes them tokio's (hyper's `TokioIo` takes them).
//! - The host end ([`Client`]) opens the streams; the guest end ([`serve_session`],
//!   [`port::serve`]) accepts them. The session lives as long as the [`Client`] or one of
//!   its streams does; when the other side goes away (QEMU exits: EOF on the socket) every
//!   open stream ends and [`Client::open`] fails, so callers get errors, never hangs.
//! - A virtio-serial port has no "connection": the guest sees the host side as connected
//!   or not (no host: `read` returns 0 at once and `poll` says POLLHUP). The guest runs
//!   one session per host connection and starts a fresh one after each ([`port::serve`]).
//!   A session must start at the first byte the host sends after it connects; see
//!   [`port`] for what that asks of the host.

use futures::future::poll_fn;
use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{mpsc, oneshot};
use tokio_util::compat::{Compat, FuturesAsyncReadCompatExt, TokioAsyncReadCompatExt};

pub mod port;

/// A stream the guest accepted, as a tokio byte stream.
pub type Inbound = Compat<yamux::Stream>;

/// The session settings of both ends: yamux's defaults.
pub fn config() -> yamux::Config {
    yamux::Config::default()
}

type Opened = oneshot::Sender<Result<yamux::Stream, yamux::ConnectionError>>;

/// What keeps a host-side session running: dropped with the last [`Client`] clone and the
/// last [`Stream`], which ends the session task and closes the socket.
struct Session {
    open: mpsc::UnboundedSender<Opened>,
}

/// The host end of a session: opens streams. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    session: Arc<Session>,
}

impl Client {
    /// Starts a session over `io` in a task of the current tokio runtime: the task drives
    /// the connection (yamux needs its owner to poll it) and opens streams on request.
    pub fn new<T>(io: T) -> Client
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let mut conn = yamux::Connection::new(io.compat(), config(), yamux::Mode::Client);
        let (open, mut requests) = mpsc::unbounded_channel::<Opened>();
        tokio::spawn(async move {
            let mut waiting: VecDeque<Opened> = VecDeque::new();
            poll_fn(|cx| {
                loop {
                    match requests.poll_recv(cx) {
                        Poll::Ready(Some(r)) => waiting.push_back(r),
                        // Every handle is gone: end (dropping the connection closes `io`).
                        Poll::Ready(None) => return Poll::Ready(()),
                        Poll::Pending => break,
                    }
                }
                while !waiting.is_empty() {
                    match conn.poll_new_outbound(cx) {
                        Poll::Ready(Ok(s)) => {
                            let _ = waiting.pop_front().expect("not empty").send(Ok(s));
                        }
                        Poll::Ready(Err(e)) => {
                            let _ = waiting.pop_front().expect("not empty").send(Err(e));
                            return Poll::Ready(());
                        }
                        Poll::Pending => break,
                    }
                }
                loop {
                    match conn.poll_next_inbound(cx) {
                        // The guest opens no streams of its own.
                        Poll::Ready(Some(Ok(s))) => drop(s),
                        Poll::Ready(Some(Err(_)) | None) => return Poll::Ready(()),
                        Poll::Pending => return Poll::Pending,
                    }
                }
            })
            .await;
        });
        Client {
            session: Arc::new(Session { open }),
        }
    }

    /// Connects to a unix socket (QEMU's end of the virtio-serial port) and starts a session.
    pub async fn connect(path: &Path) -> io::Result<Client> {
        let s = tokio::net::UnixStream::connect(path).await?;
        Ok(Client::new(s))
    }

    /// A new stream to the other end. Fails once the session has ended.
    pub async fn open(&self) -> io::Result<Stream> {
        let closed = |e: &dyn std::fmt::Display| {
            io::Error::new(
                io::ErrorKind::BrokenPipe,
                format!("the channel is closed ({e})"),
            )
        };
        let (tx, rx) = oneshot::channel();
        self.session
            .open
            .send(tx)
            .map_err(|_| closed(&"session ended"))?;
        match rx.await {
            Ok(Ok(s)) => Ok(Stream {
                inner: s.compat(),
                _session: self.session.clone(),
            }),
            Ok(Err(e)) => Err(closed(&e)),
            Err(_) => Err(closed(&"session ended")),
        }
    }

    /// Has the session ended (the other end went away, or the byte stream failed)?
    pub fn is_closed(&self) -> bool {
        self.session.open.is_closed()
    }
}

/// A stream opened by a [`Client`]; it keeps the session alive.
pub struct Stream {
    inner: Compat<yamux::Stream>,
    _session: Arc<Session>,
}

impl AsyncRead for Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The guest end: serves one session on `io`, spawning `serve(stream)` for each stream the
/// host opens, until the session ends (EOF: the host went away). Streams still being served
/// then end too.
pub async fn serve_session<T, F, Fut>(io: T, serve: &F) -> io::Result<()>
where
    T: AsyncRead + AsyncWrite + Unpin,
    F: Fn(Inbound) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut conn = yamux::Connection::new(io.compat(), config(), yamux::Mode::Server);
    while let Some(s) = poll_fn(|cx| conn.poll_next_inbound(cx)).await {
        let s = s.map_err(|e| io::Error::other(format!("yamux: {e}")))?;
        tokio::spawn(serve(s.compat()));
    }
    Ok(())
}

/// Serves sessions one after the other: `next()` gives the byte stream of the next host
/// connection (waiting for it); each is served with [`serve_session`]. Returns only when
/// `next()` fails.
pub async fn serve_sessions<T, N, NFut, F, Fut>(mut next: N, serve: F) -> io::Result<()>
where
    T: AsyncRead + AsyncWrite + Unpin,
    N: FnMut() -> NFut,
    NFut: Future<Output = io::Result<T>>,
    F: Fn(Inbound) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        let io = next().await?;
        if let Err(e) = serve_session(io, &serve).await {
            eprintln!("vchan: session failed: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full, StreamBody};
    use hyper_util::rt::TokioIo;
    use std::convert::Infallible;
    use std::time::Duration;

    /// An HTTP server on each stream: `/echo/X` answers X; `/slow/N` streams N chunks, one
    /// every 50 ms (a logs-follow); `/hang` never ends (a `wait`).
    async fn http_serve(s: Inbound) {
        let svc =
            hyper::service::service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                let path = req.uri().path().to_string();
                type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;
                let body: Body = if let Some(x) = path.strip_prefix("/echo/") {
                    BodyExt::boxed(Full::new(Bytes::from(x.to_string())))
                } else if let Some(n) = path.strip_prefix("/slow/") {
                    let n: usize = n.parse().unwrap();
                    let (tx, rx) = tokio::sync::mpsc::channel::<
                        Result<hyper::body::Frame<Bytes>, Infallible>,
                    >(1);
                    tokio::spawn(async move {
                        for i in 0..n {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            if tx
                                .send(Ok(hyper::body::Frame::data(Bytes::from(format!("{i};")))))
                                .await
                                .is_err()
                            {
                                return;
                            }
                        }
                    });
                    BodyExt::boxed(StreamBody::new(tokio_stream(rx)))
                } else {
                    let (tx, rx) = tokio::sync::mpsc::channel::<
                        Result<hyper::body::Frame<Bytes>, Infallible>,
                    >(1);
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                        drop(tx);
                    });
                    BodyExt::boxed(StreamBody::new(tokio_stream(rx)))
                };
                Ok::<_, Infallible>(hyper::Response::new(body))
            });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(s), svc)
            .await;
    }

    fn tokio_stream<T>(mut rx: tokio::sync::mpsc::Receiver<T>) -> impl futures::Stream<Item = T> {
        futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }

    /// One HTTP/1.1 exchange on a new stream; the whole body.
    async fn get(c: &Client, path: &str) -> Result<String, String> {
        let s = c.open().await.map_err(|e| e.to_string())?;
        let (mut send, conn) =
            hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(s))
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let req = hyper::Request::get(path)
            .header("host", "guest")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let r = send.send_request(req).await.map_err(|e| e.to_string())?;
        let b = r
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok(String::from_utf8_lossy(&b).into_owned())
    }

    async fn timeout<T>(f: impl Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(10), f)
            .await
            .expect("timed out")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_http_exchanges_over_one_socketpair() {
        let (host, guest) = tokio::net::UnixStream::pair().unwrap();
        let server = tokio::spawn(async move { serve_session(guest, &|s| http_serve(s)).await });
        let c = Client::new(host);
        // A long stream that never ends, a slow streaming body and many short exchanges, all
        // at once over the one byte stream.
        let hang = tokio::spawn({
            let c = c.clone();
            async move { get(&c, "/hang").await }
        });
        let slow = tokio::spawn({
            let c = c.clone();
            async move { get(&c, "/slow/10").await }
        });
        let mut short = Vec::new();
        for i in 0..20 {
            let c = c.clone();
            short.push(tokio::spawn(async move {
                get(&c, &format!("/echo/n{i}")).await
            }));
        }
        for (i, t) in short.into_iter().enumerate() {
            assert_eq!(timeout(t).await.unwrap().unwrap(), format!("n{i}"));
        }
        assert_eq!(
            timeout(slow).await.unwrap().unwrap(),
            "0;1;2;3;4;5;6;7;8;9;"
        );
        assert!(!hang.is_finished());
        assert!(!server.is_finished());
        // The guest end goes away (QEMU exits): the open stream ends with an error and new
        // streams cannot be opened, rather than hanging.
        server.abort();
        let r = timeout(hang).await.unwrap();
        assert!(
            r.is_err(),
            "a stream of a dead session ended cleanly: {r:?}"
        );
        let r = timeout(get(&c, "/echo/x")).await;
        assert!(r.is_err(), "an exchange on a dead session succeeded: {r:?}");
        assert!(c.is_closed());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn big_bodies_both_ways() {
        let (host, guest) = tokio::net::UnixStream::pair().unwrap();
        tokio::spawn(async move {
            serve_session(guest, &|s: Inbound| async move {
                // Echo: read everything, write it back (past yamux's 256 KiB window).
                let (mut r, mut w) = tokio::io::split(s);
                let _ = tokio::io::copy(&mut r, &mut w).await;
                use tokio::io::AsyncWriteExt;
                let _ = w.shutdown().await;
            })
            .await
        });
        let c = Client::new(host);
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        let s = c.open().await.unwrap();
        let (mut r, mut w) = tokio::io::split(s);
        let d2 = data.clone();
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            w.write_all(&d2).await.unwrap();
            w.shutdown().await.unwrap();
        });
        let mut back = Vec::new();
        use tokio::io::AsyncReadExt;
        timeout(r.read_to_end(&mut back)).await.unwrap();
        timeout(writer).await.unwrap();
        assert_eq!(back.len(), data.len());
        assert!(back == data);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_new_session_after_the_host_went_away() {
        // Each host connection is one end of a fresh duplex; the guest loop serves them in
        // turn, as it does with a virtio-serial port across host reconnections.
        let (tx, rx) = tokio::sync::mpsc::channel::<tokio::io::DuplexStream>(1);
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        let guest = tokio::spawn(serve_sessions(
            move || {
                let rx = rx.clone();
                async move {
                    rx.lock()
                        .await
                        .recv()
                        .await
                        .ok_or_else(|| io::Error::other("no more hosts"))
                }
            },
            http_serve,
        ));
        for round in 0..3 {
            let (host, g) = tokio::io::duplex(1 << 16);
            tx.send(g).await.unwrap();
            let c = Client::new(host);
            let pending = tokio::spawn({
                let c = c.clone();
                async move { get(&c, "/hang").await }
            });
            assert_eq!(
                timeout(get(&c, &format!("/echo/round{round}")))
                    .await
                    .unwrap(),
                format!("round{round}")
            );
            // The host goes away with a stream still open: the session ends on the guest
            // and the next host connection gets a fresh one.
            pending.abort();
            drop(c);
        }
        drop(tx);
        let r = timeout(guest).await.unwrap();
        assert!(
            r.is_err(),
            "the loop ends only when no host can come any more"
        );
    }
}
