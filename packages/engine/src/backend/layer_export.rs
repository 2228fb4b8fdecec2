//! `GET /containers/{id}/export?layer=changes`: the container's writable layer as an OCI
//! layer tar ([`diff_tar`]: its files, deletions as `.wh.` whiteouts, opaque directories as
//! `.wh..wh..opq`), streamed. axion-vmd asks for it when a container has exited and before
//! its VM goes, and stacks it on the image's layers when the container runs again in a new
//! VM (host/vmd/src/changes.rs), so the container keeps its files across VMs.

use super::*;
use crate::images::diff_tar;
use docker_api::body::ChannelWriter;

impl Engine {
    pub(super) async fn changes_layer_of(&self, id: &str) -> ApiResult<mpsc::Receiver<Bytes>> {
        let c = self.find(id)?;
        let upper = c.data.join("upper");
        if !upper.is_dir() {
            return Err(ApiError::internal(format!(
                "container {}: no writable layer",
                c.snapshot().id
            )));
        }
        let (tx, rx) = mpsc::channel(16);
        std::thread::spawn(move || {
            let w = std::io::BufWriter::with_capacity(64 << 10, ChannelWriter(tx));
            match diff_tar(&upper, w) {
                Ok(mut w) => {
                    let _ = w.flush();
                }
                // The stream ends short: the reader's tar parser sees it is cut.
                Err(e) => eprintln!("engine: export of the changes layer: {e}"),
            }
        });
        Ok(rx)
    }
}
