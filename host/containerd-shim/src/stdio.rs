//! A process's stdio between the guest engine's attach (or exec) stream and the FIFOs
//! containerd hands over.
//!
//! As containerd's own shims do, the shim holds each FIFO open itself, so that no open
//! waits for containerd and containerd's ends coming and going never end a copy: an output
//! FIFO is held open for reading (output queues until containerd reads), the stdin FIFO for
//! writing until `CloseIO` (so containerd's writer closing is not yet the process's EOF).

use bytes::Bytes;
use docker_api::{AttachIo, StdStream};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::{Arc, Mutex, PoisonError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::task::JoinHandle;

/// The FIFO paths containerd gave a process (empty: none).
#[derive(Debug, Clone, Default)]
pub struct Fifos {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

/// The copies of one process's stdio.
pub struct Copies {
    /// Ends when the process's output has ended and is in the FIFOs.
    output: Mutex<Option<JoinHandle<()>>>,
    /// The shim's writer on the stdin FIFO, let go by `CloseIO`.
    stdin_hold: Arc<Mutex<Option<File>>>,
    input: Option<JoinHandle<()>>,
}

fn hold(path: &str, read: bool) -> std::io::Result<File> {
    OpenOptions::new()
        .read(read)
        .write(!read)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
}

fn io_err(path: &str) -> impl FnOnce(std::io::Error) -> std::io::Error + '_ {
    move |e| std::io::Error::new(e.kind(), format!("{path}: {e}"))
}

/// An output FIFO's writer and the shim's own reader that keeps it from failing.
fn writer(path: &str) -> std::io::Result<Option<(File, pipe::Sender)>> {
    if path.is_empty() {
        return Ok(None);
    }
    let h = hold(path, true).map_err(io_err(path))?;
    let w = pipe::OpenOptions::new()
        .open_sender(path)
        .map_err(io_err(path))?;
    Ok(Some((h, w)))
}

impl Copies {
    /// Starts copying `io` (the guest's stream of this process) to and from `f`.
    pub fn start(io: AttachIo, f: &Fifos) -> std::io::Result<Copies> {
        let mut out = writer(&f.stdout)?;
        // With a terminal everything is on stdout.
        let mut err = if f.terminal { None } else { writer(&f.stderr)? };
        let mut output = io.output;
        let output = tokio::spawn(async move {
            while let Some(frame) = output.recv().await {
                let w = match frame.stream {
                    StdStream::Stderr if err.is_some() => &mut err,
                    _ => &mut out,
                };
                if let Some((_, pipe)) = w.as_mut() {
                    if pipe.write_all(&frame.data).await.is_err() {
                        // containerd's reader is gone: nobody reads this stream any more.
                        *w = None;
                    }
                }
            }
        });
        let stdin_hold = Arc::new(Mutex::new(None));
        let mut input = None;
        if let (Some(tx), false) = (io.stdin, f.stdin.is_empty()) {
            let mut r = pipe::OpenOptions::new()
                .open_receiver(&f.stdin)
                .map_err(io_err(&f.stdin))?;
            *stdin_hold.lock().unwrap_or_else(PoisonError::into_inner) =
                Some(hold(&f.stdin, false).map_err(io_err(&f.stdin))?);
            input = Some(tokio::spawn(async move {
                let mut buf = vec![0u8; 32 * 1024];
                loop {
                    match r.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if tx.send(Bytes::copy_from_slice(&buf[..n])).await.is_err() {
                                break;
                            }
                        }
                    }
                }
                // Dropping the sender half-closes the guest stream: the process's stdin ends.
                drop(tx);
            }));
        }
        Ok(Copies {
            output: Mutex::new(Some(output)),
            stdin_hold,
            input,
        })
    }

    /// `CloseIO`: once containerd's writer is gone too, the process reads EOF.
    pub fn close_stdin(&self) {
        self.stdin_hold
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
    }

    /// Waits (at most `limit`) until the process's output is all in the FIFOs.
    pub async fn drained(&self, limit: std::time::Duration) {
        let h = self
            .output
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(h) = h {
            let abort = h.abort_handle();
            if tokio::time::timeout(limit, h).await.is_err() {
                abort.abort();
            }
        }
    }
}

impl Drop for Copies {
    fn drop(&mut self) {
        if let Some(h) = self.input.take() {
            h.abort();
        }
        if let Some(h) = self
            .output
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            h.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use docker_api::Frame;
    use tokio::sync::mpsc;

    fn mkfifo(p: &std::path::Path) {
        let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path; mkfifo only reads it.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    }

    #[tokio::test]
    async fn output_reaches_the_fifos_and_stdin_ends_at_close_io() {
        let d = tempfile::tempdir().unwrap();
        let (i, o, e) = (
            d.path().join("in"),
            d.path().join("out"),
            d.path().join("err"),
        );
        for p in [&i, &o, &e] {
            mkfifo(p);
        }
        // containerd's readers, opened first as containerd does.
        let mut ro = pipe::OpenOptions::new().open_receiver(&o).unwrap();
        let mut re = pipe::OpenOptions::new().open_receiver(&e).unwrap();
        let (otx, orx) = mpsc::channel(4);
        let (itx, mut irx) = mpsc::channel::<Bytes>(4);
        let io = AttachIo {
            tty: false,
            output: orx,
            stdin: Some(itx),
        };
        let f = Fifos {
            stdin: i.display().to_string(),
            stdout: o.display().to_string(),
            stderr: e.display().to_string(),
            terminal: false,
        };
        let c = Copies::start(io, &f).unwrap();
        otx.send(Frame::stdout("hello\n")).await.unwrap();
        otx.send(Frame::stderr("oops\n")).await.unwrap();
        drop(otx);
        c.drained(std::time::Duration::from_secs(5)).await;
        let mut s = String::new();
        ro.read_to_string(&mut s).await.unwrap();
        assert_eq!(s, "hello\n");
        s.clear();
        re.read_to_string(&mut s).await.unwrap();
        assert_eq!(s, "oops\n");
        // containerd writes, closes its end, then sends CloseIO: the guest sees data, EOF.
        let mut w = pipe::OpenOptions::new().open_sender(&i).unwrap();
        w.write_all(b"in").await.unwrap();
        drop(w);
        assert_eq!(&irx.recv().await.unwrap()[..], b"in");
        c.close_stdin();
        let end = tokio::time::timeout(std::time::Duration::from_secs(5), irx.recv()).await;
        assert!(matches!(end, Ok(None)), "stdin did not end: {end:?}");
    }
}
