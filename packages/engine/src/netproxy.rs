//! Published ports (`-p`): a userland proxy like docker-proxy. Each accepted host
//! connection is matched by a connection made from inside the container's network
//! namespace to 127.0.0.1:<container port> (a helper thread joins the namespace just to
//! create and connect the socket), so it works without a bridge as well.

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

fn connect_in_netns(pid: i32, port: u16) -> std::io::Result<TcpStream> {
    std::thread::spawn(move || {
        let ns = std::fs::File::open(format!("/proc/{pid}/ns/net"))?;
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)?;
        TcpStream::connect((Ipv4Addr::LOCALHOST, port))
    })
    .join()
    .unwrap_or_else(|_| Err(std::io::Error::other("proxy thread panicked")))
}

/// Listens on `host` and forwards to `port` in the namespace of `pid` until aborted.
pub async fn listen(host: SocketAddr, pid: i32, port: u16) -> std::io::Result<JoinHandle<()>> {
    let l = TcpListener::bind(host).await?;
    Ok(tokio::spawn(async move {
        loop {
            let Ok((mut inbound, _)) = l.accept().await else { continue };
            tokio::spawn(async move {
                let out = tokio::task::spawn_blocking(move || connect_in_netns(pid, port)).await;
                let Ok(Ok(out)) = out else { return };
                if out.set_nonblocking(true).is_err() {
                    return;
                }
                let Ok(mut out) = tokio::net::TcpStream::from_std(out) else { return };
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
            });
        }
    }))
}
