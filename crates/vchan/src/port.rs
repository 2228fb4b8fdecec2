//! The guest end on a virtio-serial port (Linux's virtio_console driver).
//!
//! - The port is found by its name in sysfs (`/sys/class/virtio-ports/vportNpM/name`):
//!   there is no udev in axion, so no /dev/virtio-ports/NAME link.
//! - The driver tells whether the host side is connected: with no host, `poll` reports
//!   POLLHUP and `read` returns 0 at once. So [`serve`] opens the port and checks every
//!   5 ms until the host connects (a saved template waits in that loop, and so each of
//!   its clones resumes in it: that is the clone's latency for this step), then runs one
//!   session until EOF (the host went away), closes the port and starts again.
//! - The session reads and writes the port nonblocking through tokio's `AsyncFd` (the
//!   driver supports poll: it wakes pollers when host data arrives, when the host has
//!   taken what the guest wrote, and when the host connects or goes away).
//! - What this asks of the host: a session starts at the first byte the host sends after
//!   it connects, so the host must connect only when the guest is back in its wait loop
//!   after the previous session (the guest prints [`SESSION_ENDED`] then), or before the
//!   guest opened the port at all (data waits in QEMU until the guest opens it).

use std::fs::File;
use std::future::Future;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Printed (stderr) each time a session ends and the guest waits for the host again.
pub const SESSION_ENDED: &str = "session ended, waiting for the host";

/// How often the guest checks whether the host has connected.
pub const HOST_POLL: Duration = Duration::from_millis(5);

/// The device of the port named `name` under `sys` (normally /sys/class/virtio-ports).
pub fn find(sys: &Path, name: &str) -> Option<PathBuf> {
    for e in std::fs::read_dir(sys).ok()?.flatten() {
        if std::fs::read_to_string(e.path().join("name")).is_ok_and(|n| n.trim_end() == name) {
            return Some(Path::new("/dev").join(e.file_name()));
        }
    }
    None
}

/// Is the host side of the port connected? (`poll` without waiting: POLLHUP = no host.)
pub fn host_connected(f: &File) -> io::Result<bool> {
    let mut p = libc::pollfd {
        fd: f.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, timeout 0.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(p.revents & libc::POLLHUP == 0)
}

fn open(dev: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(dev)
}

/// A port (or any pollable file) as a tokio byte stream.
pub struct Port(AsyncFd<File>);

impl Port {
    /// `f` must be nonblocking.
    pub fn new(f: File) -> io::Result<Port> {
        // SAFETY: the AsyncFd owns the File, so the descriptor stays open and the same for
        // the AsyncFd's whole life.
        let fd = unsafe { AsyncFd::register(f) }.map_err(|e| e.into_parts().1)?;
        Ok(Port(fd))
    }
}

impl AsyncRead for Port {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.0.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard.try_io(|f| f.get_ref().read(unfilled)) {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for Port {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.0.poll_write_ready(cx))?;
            match guard.try_io(|f| f.get_ref().write(buf)) {
                Ok(r) => return Poll::Ready(r),
                Err(_would_block) => continue,
            }
        }
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Opens the port at `dev` and waits until the host side is connected.
pub async fn wait_for_host(dev: &Path) -> io::Result<Port> {
    let f = open(dev)
        .map_err(|e| io::Error::new(e.kind(), format!("opening {}: {e}", dev.display())))?;
    while !host_connected(&f)? {
        tokio::time::sleep(HOST_POLL).await;
    }
    Port::new(f)
}

/// Serves the port named `name` forever: finds it (waiting for it to appear), then one
/// session per host connection ([`crate::serve_sessions`]), each stream handed to `serve`.
pub async fn serve<F, Fut>(name: &str, serve: F) -> io::Result<()>
where
    F: Fn(crate::Inbound) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let sys = Path::new("/sys/class/virtio-ports");
    let dev = loop {
        if let Some(d) = find(sys, name) {
            break d;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    eprintln!(
        "vchan: serving virtio-serial port {name} ({})",
        dev.display()
    );
    let mut first = true;
    crate::serve_sessions(
        || {
            if !first {
                eprintln!("vchan: {name}: {SESSION_ENDED}");
            }
            first = false;
            let dev = dev.clone();
            async move {
                // A failed open (the port busy or gone) is retried, slowly.
                loop {
                    match wait_for_host(&dev).await {
                        Ok(p) => return Ok(p),
                        Err(e) => {
                            eprintln!("vchan: {e}");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    }
                }
            }
        },
        serve,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_port_by_name() {
        let d = tempfile::tempdir().unwrap();
        for (dev, name) in [("vport1p1", "org.example.a"), ("vport1p2", "org.example.b")] {
            std::fs::create_dir(d.path().join(dev)).unwrap();
            std::fs::write(d.path().join(dev).join("name"), format!("{name}\n")).unwrap();
        }
        std::fs::create_dir(d.path().join("vport0p0")).unwrap(); // no name file
        assert_eq!(
            find(d.path(), "org.example.b"),
            Some(PathBuf::from("/dev/vport1p2"))
        );
        assert_eq!(
            find(d.path(), "org.example.a"),
            Some(PathBuf::from("/dev/vport1p1"))
        );
        assert_eq!(find(d.path(), "axion"), None);
        assert_eq!(find(&d.path().join("missing"), "org.example.a"), None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_nonblocking_fd_carries_a_session() {
        // A socketpair stands in for the port: the same AsyncFd path as the device.
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        b.set_nonblocking(true).unwrap();
        let guest = Port::new(File::from(std::os::fd::OwnedFd::from(b))).unwrap();
        a.set_nonblocking(true).unwrap();
        let host = crate::Client::new(tokio::net::UnixStream::from_std(a).unwrap());
        let server = tokio::spawn(async move {
            crate::serve_session(guest, &|s: crate::Inbound| async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let (mut r, mut w) = tokio::io::split(s);
                let mut buf = Vec::new();
                r.read_to_end(&mut buf).await.unwrap();
                buf.reverse();
                w.write_all(&buf).await.unwrap();
                w.shutdown().await.unwrap();
            })
            .await
        });
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut all = Vec::new();
        for i in 0..5 {
            let h = host.clone();
            all.push(tokio::spawn(async move {
                let mut s = h.open().await.unwrap();
                let msg: Vec<u8> = format!("message {i} ").repeat(20_000).into_bytes();
                s.write_all(&msg).await.unwrap();
                s.shutdown().await.unwrap();
                let mut back = Vec::new();
                s.read_to_end(&mut back).await.unwrap();
                back.reverse();
                assert!(back == msg, "stream {i}");
            }));
        }
        for t in all {
            tokio::time::timeout(Duration::from_secs(20), t)
                .await
                .unwrap()
                .unwrap();
        }
        drop(host);
        // The host end closed: the guest's session ends.
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}
