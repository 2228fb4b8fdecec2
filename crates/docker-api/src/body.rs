//! Streaming response bodies written from blocking code (tar builders in a thread).

use bytes::Bytes;
use tokio::sync::mpsc;

/// A blocking `Write` that hands its bytes to a response body's channel; a write after the
/// client went away fails (BrokenPipe), which ends the writer's work.
pub struct ChannelWriter(pub mpsc::Sender<Bytes>);

impl std::io::Write for ChannelWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0
            .blocking_send(Bytes::copy_from_slice(b))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "client went away"))?;
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
