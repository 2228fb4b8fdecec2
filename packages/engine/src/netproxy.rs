//! Published ports (`-p`): a userland proxy like docker-proxy, for TCP and UDP. The host
//! socket is bound before the container starts, so a port that is taken fails the start
//! with Docker's message instead of a log line. Each host connection (TCP) or each client
//! address (UDP) is matched by a socket made from inside the container's network namespace
//! towards 127.0.0.1:<container port> (a helper thread joins the namespace just to create
//! that socket), so it works without a bridge as well.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, UdpSocket};
use tokio::task::{JoinHandle, JoinSet};

/// How long a UDP client's flow stays open without traffic (docker-proxy uses 90 s too).
const UDP_IDLE: Duration = Duration::from_secs(90);

pub use docker_api::portspec::Proto;
use docker_api::portspec::{HostPort, PortMapping};

/// One published port: host address → container port and protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    pub host: SocketAddr,
    pub container_port: u16,
    pub proto: Proto,
}

/// Binds the host side of one published port (the spec is read by docker-api's portspec,
/// with Docker's meaning): no host address is every IPv4 address, no host port an ephemeral
/// one (the kernel's pick), a host range the first of its ports that is free.
pub async fn bind_mapping(m: &PortMapping) -> Result<Bound, String> {
    let ip = m
        .host_ip
        .unwrap_or(std::net::IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let (first, last) = match m.host_port {
        HostPort::Ephemeral => (0, 0),
        HostPort::Fixed(p) => (p, p),
        HostPort::Range(a, b) => (a, b),
    };
    let mut err = String::new();
    for port in first..=last {
        let b = Binding {
            host: SocketAddr::new(ip, port),
            container_port: m.container_port,
            proto: m.proto,
        };
        match bind(&b).await {
            Ok(bound) => return Ok(bound),
            Err(e) => err = e,
        }
    }
    Err(err)
}

/// A host socket bound for one binding, waiting for the container's pid.
pub enum Bound {
    Tcp(TcpListener, u16),
    Udp(UdpSocket, u16),
}

/// Binds the host side of `b`; the error is Docker's wording for a taken port.
pub async fn bind(b: &Binding) -> Result<Bound, String> {
    let taken = |e: std::io::Error| {
        format!(
            "Bind for {} failed: {}",
            b.host,
            if e.kind() == std::io::ErrorKind::AddrInUse {
                "port is already allocated".to_string()
            } else {
                e.to_string()
            }
        )
    };
    Ok(match b.proto {
        Proto::Tcp => Bound::Tcp(
            TcpListener::bind(b.host).await.map_err(taken)?,
            b.container_port,
        ),
        Proto::Udp => Bound::Udp(
            UdpSocket::bind(b.host).await.map_err(taken)?,
            b.container_port,
        ),
    })
}

impl Bound {
    /// The container port and protocol (`80/tcp`) and the host address actually bound.
    pub fn published(&self) -> (String, Option<SocketAddr>) {
        match self {
            Bound::Tcp(l, port) => (format!("{port}/tcp"), l.local_addr().ok()),
            Bound::Udp(s, port) => (format!("{port}/udp"), s.local_addr().ok()),
        }
    }

    /// Forwards to the container port in the network namespace of `pid` until aborted;
    /// aborting the handle also ends every connection or flow it started.
    pub fn serve(self, pid: i32) -> JoinHandle<()> {
        match self {
            Bound::Tcp(l, port) => tokio::spawn(serve_tcp(l, pid, port)),
            Bound::Udp(s, port) => tokio::spawn(serve_udp(s, pid, port)),
        }
    }
}

/// Runs `make` on a fresh thread that has joined the network namespace of `pid` (a fresh
/// one: a pooled thread would stay in that namespace for whatever it runs next).
async fn in_netns<T: Send + 'static>(
    pid: i32,
    make: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let made = std::fs::File::open(format!("/proc/{pid}/ns/net"))
            .and_then(|ns| {
                nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(std::io::Error::from)
            })
            .and_then(|()| make());
        let _ = tx.send(made);
    });
    rx.await
        .unwrap_or_else(|_| Err(std::io::Error::other("proxy thread panicked")))
}

async fn serve_tcp(l: TcpListener, pid: i32, port: u16) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = l.accept() => {
                let Ok((mut inbound, _)) = accepted else { continue };
                conns.spawn(async move {
                    let connect = move || std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port));
                    let Ok(out) = in_netns(pid, connect).await else {
                        return;
                    };
                    if out.set_nonblocking(true).is_err() {
                        return;
                    }
                    let Ok(mut out) = tokio::net::TcpStream::from_std(out) else { return };
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                });
            }
            // Reap finished connections so the set does not grow.
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// UDP has no connections: each client address gets its own socket in the container, and
/// a task that sends the container's replies back to that client until the flow is idle.
async fn serve_udp(host: UdpSocket, pid: i32, port: u16) {
    let host = Arc::new(host);
    let mut flows: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
    let mut replies = JoinSet::new();
    let mut buf = vec![0u8; 65536];
    loop {
        tokio::select! {
            got = host.recv_from(&mut buf) => {
                let Ok((n, client)) = got else { continue };
                let inner = match flows.get(&client) {
                    Some(s) => s.clone(),
                    None => {
                        let made = in_netns(pid, move || {
                            let s = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
                            s.connect((Ipv4Addr::LOCALHOST, port))?;
                            s.set_nonblocking(true)?;
                            Ok(s)
                        })
                        .await;
                        let Ok(Ok(s)) = made.map(UdpSocket::from_std) else { continue };
                        let s = Arc::new(s);
                        flows.insert(client, s.clone());
                        replies.spawn(relay_replies(s.clone(), host.clone(), client));
                        s
                    }
                };
                let _ = inner.send(&buf[..n]).await;
            }
            Some(ended) = replies.join_next(), if !replies.is_empty() => {
                if let Ok(client) = ended {
                    flows.remove(&client);
                }
            }
        }
    }
}

/// Container → client, until nothing arrives for [`UDP_IDLE`]; returns the client so its
/// flow can be forgotten.
async fn relay_replies(
    inner: Arc<UdpSocket>,
    host: Arc<UdpSocket>,
    client: SocketAddr,
) -> SocketAddr {
    let mut buf = vec![0u8; 65536];
    while let Ok(Ok(n)) = tokio::time::timeout(UDP_IDLE, inner.recv(&mut buf)).await {
        let _ = host.send_to(&buf[..n], client).await;
    }
    client
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(ip: &str, host_port: HostPort) -> PortMapping {
        PortMapping {
            host_ip: Some(ip.parse().unwrap()),
            host_port,
            container_port: 80,
            proto: Proto::Tcp,
        }
    }

    fn port(b: &Bound) -> u16 {
        match b {
            Bound::Tcp(l, _) => l.local_addr().unwrap().port(),
            Bound::Udp(s, _) => s.local_addr().unwrap().port(),
        }
    }

    /// `-p 80` binds a port the kernel picks, not host port 80; a range takes its first
    /// free port.
    #[tokio::test]
    async fn ephemeral_and_range_host_ports() {
        let e = bind_mapping(&m("127.0.0.1", HostPort::Ephemeral))
            .await
            .unwrap();
        assert_ne!(port(&e), 0);
        assert_ne!(port(&e), 80);
        let taken = port(&e);
        // A range whose first port is held here and whose second was free a moment ago.
        let mut held = Vec::new();
        let first = loop {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let p = l.local_addr().unwrap().port();
            held.push(l);
            if p < u16::MAX && std::net::TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
                break p;
            }
            assert!(held.len() < 50, "no port with a free neighbour");
        };
        let r = bind_mapping(&m("127.0.0.1", HostPort::Range(first, first + 1)))
            .await
            .unwrap();
        assert_eq!(port(&r), first + 1);
        let err = bind_mapping(&m("127.0.0.1", HostPort::Fixed(taken)))
            .await
            .err()
            .expect("a taken port fails");
        assert!(err.contains("port is already allocated"), "{err}");
    }

    #[tokio::test]
    async fn a_taken_port_gets_dockers_message() {
        let first = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = first.local_addr().unwrap().port();
        let b = Binding {
            host: format!("127.0.0.1:{port}").parse().unwrap(),
            container_port: 80,
            proto: Proto::Tcp,
        };
        let err = bind(&b).await.err().expect("a second bind fails");
        assert_eq!(
            err,
            format!("Bind for 127.0.0.1:{port} failed: port is already allocated")
        );
    }

    /// UDP through the proxy to a server in this process's own namespace (the proxy joins
    /// the namespace of `pid`; our own pid's namespace is the one the server is in).
    #[tokio::test]
    async fn udp_round_trip_per_client() {
        let server = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let sport = server.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let mut buf = [0u8; 100];
            while let Ok((n, from)) = server.recv_from(&mut buf) {
                let reply = format!("echo:{}", String::from_utf8_lossy(&buf[..n]));
                let _ = server.send_to(reply.as_bytes(), from);
            }
        });
        let b = Binding {
            host: "127.0.0.1:0".parse().unwrap(),
            container_port: sport,
            proto: Proto::Udp,
        };
        let bound = bind(&b).await.unwrap();
        let Bound::Udp(s, _) = &bound else {
            panic!("not udp")
        };
        let front = s.local_addr().unwrap();
        let proxy = bound.serve(std::process::id() as i32);
        for name in ["a", "b"] {
            let c = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            c.send_to(name.as_bytes(), front).await.unwrap();
            let mut buf = [0u8; 100];
            let (n, from) = tokio::time::timeout(Duration::from_secs(5), c.recv_from(&mut buf))
                .await
                .expect("a reply")
                .unwrap();
            assert_eq!(
                (&buf[..n], from),
                (format!("echo:{name}").as_bytes(), front)
            );
        }
        proxy.abort();
    }
}
