//! The back-end traits: one per seam of the API, and [`Backend`], their union, which the
//! server dispatches on. Every method has the meaning of the Docker endpoint it serves; those
//! with default bodies answer 501 until a back end implements them, so a back end implements
//! each seam trait (an empty `impl` takes every default).

use crate::networks::{
    Network, NetworkConnectRequest, NetworkCreateRequest, NetworkCreateResponse,
    NetworkDisconnectRequest,
};
use crate::types::*;
use crate::{
    ApiError, ApiResult, AttachIo, AttachOptions, FrameRx, LogsOptions, RegistryAuth, WaitCondition,
};
use bytes::Bytes;
use std::future::Future;
use tokio::sync::mpsc;

async fn nyi<T>(what: &'static str) -> ApiResult<T> {
    Err(ApiError::not_implemented(what))
}

/// The daemon itself: `/version`, `/info` (and, as they come, auth, `df` and the other
/// system-wide calls).
pub trait SystemBackend: Send + Sync + 'static {
    fn version(&self) -> impl Future<Output = ApiResult<Version>> + Send;
    fn info(&self) -> impl Future<Output = ApiResult<Info>> + Send;
}

/// Images: list, inspect, pull, load, tag, remove.
pub trait ImageBackend: Send + Sync + 'static {
    fn images(&self) -> impl Future<Output = ApiResult<Vec<ImageSummary>>> + Send {
        nyi("listing images")
    }
    fn image_inspect(&self, _name: &str) -> impl Future<Output = ApiResult<ImageInspect>> + Send {
        nyi("image inspect")
    }
    /// Starts a pull; progress messages arrive on the channel until it closes.
    fn image_pull(
        &self,
        _image: &str,
        _tag: &str,
        _auth: Option<RegistryAuth>,
    ) -> impl Future<Output = ApiResult<mpsc::Receiver<ProgressMessage>>> + Send {
        nyi("image pull")
    }
    /// Loads a `docker save` archive (tar), streamed in as it arrives; returns the names
    /// (or ids) of the loaded images. The stream ends early if the request body breaks.
    fn image_load(
        &self,
        _tar: mpsc::Receiver<Bytes>,
    ) -> impl Future<Output = ApiResult<Vec<String>>> + Send {
        nyi("image load")
    }
    fn image_tag(
        &self,
        _name: &str,
        _repo: &str,
        _tag: &str,
    ) -> impl Future<Output = ApiResult<()>> + Send {
        nyi("image tag")
    }
    fn image_remove(
        &self,
        _name: &str,
        _force: bool,
    ) -> impl Future<Output = ApiResult<Vec<ImageDeleteItem>>> + Send {
        nyi("image remove")
    }
}

/// Containers' lifecycle, logs and attach.
pub trait ContainerBackend: Send + Sync + 'static {
    fn containers(
        &self,
        _all: bool,
    ) -> impl Future<Output = ApiResult<Vec<ContainerSummary>>> + Send {
        nyi("listing containers")
    }
    fn container_create(
        &self,
        _name: Option<String>,
        _req: ContainerCreateRequest,
    ) -> impl Future<Output = ApiResult<ContainerCreateResponse>> + Send {
        nyi("container create")
    }
    fn container_inspect(
        &self,
        _id: &str,
    ) -> impl Future<Output = ApiResult<ContainerInspect>> + Send {
        nyi("container inspect")
    }
    /// Err with status 304 when already running.
    fn container_start(&self, _id: &str) -> impl Future<Output = ApiResult<()>> + Send {
        nyi("container start")
    }
    fn container_stop(
        &self,
        _id: &str,
        _timeout: Option<i64>,
        _signal: Option<String>,
    ) -> impl Future<Output = ApiResult<()>> + Send {
        nyi("container stop")
    }
    fn container_kill(
        &self,
        _id: &str,
        _signal: Option<String>,
    ) -> impl Future<Output = ApiResult<()>> + Send {
        nyi("container kill")
    }
    fn container_restart(
        &self,
        _id: &str,
        _timeout: Option<i64>,
    ) -> impl Future<Output = ApiResult<()>> + Send {
        nyi("container restart")
    }
    fn container_remove(
        &self,
        _id: &str,
        _force: bool,
        _volumes: bool,
    ) -> impl Future<Output = ApiResult<()>> + Send {
        nyi("container remove")
    }
    fn container_prune(&self) -> impl Future<Output = ApiResult<Vec<String>>> + Send {
        nyi("container prune")
    }
    /// Resolves the wait; the returned future completes when the condition is met.
    fn container_wait(
        &self,
        _id: &str,
        _cond: WaitCondition,
    ) -> impl Future<Output = ApiResult<WaitResponse>> + Send {
        nyi("container wait")
    }
    /// Log frames (and whether the container has a TTY, which means raw output).
    fn container_logs(
        &self,
        _id: &str,
        _opts: LogsOptions,
    ) -> impl Future<Output = ApiResult<(bool, FrameRx)>> + Send {
        nyi("container logs")
    }
    fn container_attach(
        &self,
        _id: &str,
        _opts: AttachOptions,
    ) -> impl Future<Output = ApiResult<AttachIo>> + Send {
        nyi("container attach")
    }
    fn container_resize(
        &self,
        _id: &str,
        _h: u16,
        _w: u16,
    ) -> impl Future<Output = ApiResult<()>> + Send {
        async { Ok(()) }
    }
}

/// `exec` sessions in a running container.
pub trait ExecBackend: Send + Sync + 'static {
    fn exec_create(
        &self,
        _id: &str,
        _req: ExecCreateRequest,
    ) -> impl Future<Output = ApiResult<String>> + Send {
        nyi("exec")
    }
    fn exec_start(
        &self,
        _exec_id: &str,
        _req: ExecStartRequest,
    ) -> impl Future<Output = ApiResult<AttachIo>> + Send {
        nyi("exec start")
    }
    fn exec_inspect(&self, _exec_id: &str) -> impl Future<Output = ApiResult<ExecInspect>> + Send {
        nyi("exec inspect")
    }
    fn exec_resize(
        &self,
        _exec_id: &str,
        _h: u16,
        _w: u16,
    ) -> impl Future<Output = ApiResult<()>> + Send {
        async { Ok(()) }
    }
}

/// Copying files into and out of containers (`docker cp`).
pub trait ArchiveBackend: Send + Sync + 'static {
    /// A tar stream of `path` in the container, and its stat.
    fn archive_get(
        &self,
        _id: &str,
        _path: &str,
    ) -> impl Future<Output = ApiResult<(PathStat, mpsc::Receiver<Bytes>)>> + Send {
        nyi("copying from containers")
    }
    fn archive_stat(
        &self,
        _id: &str,
        _path: &str,
    ) -> impl Future<Output = ApiResult<PathStat>> + Send {
        nyi("copying from containers")
    }
    /// Extracts a tar archive into `path` in the container.
    fn archive_put(
        &self,
        _id: &str,
        _path: &str,
        _tar: Bytes,
    ) -> impl Future<Output = ApiResult<()>> + Send {
        nyi("copying into containers")
    }
}

/// Named volumes. No methods yet; those to come default to 501 as the others do.
pub trait VolumeBackend: Send + Sync + 'static {}

/// Networks: user-defined bridges and the predefined `bridge`, `host`, `none`
/// (see [`crate::networks`]). Prune is the front end's: list, then remove the candidates.
pub trait NetworkBackend: Send + Sync + 'static {
    /// Every network, with its running containers' endpoints.
    fn networks(&self) -> impl Future<Output = ApiResult<Vec<Network>>> + Send {
        nyi("networks")
    }
    /// By full id, name or unique id prefix.
    fn network_inspect(&self, _id: &str) -> impl Future<Output = ApiResult<Network>> + Send {
        nyi("network inspect")
    }
    fn network_create(
        &self,
        _req: NetworkCreateRequest,
    ) -> impl Future<Output = ApiResult<NetworkCreateResponse>> + Send {
        nyi("network create")
    }
    /// 403 for a predefined network or one with active endpoints.
    fn network_remove(&self, _id: &str) -> impl Future<Output = ApiResult<()>> + Send {
        nyi("network remove")
    }
    fn network_connect(
        &self,
        _id: &str,
        _req: NetworkConnectRequest,
    ) -> impl Future<Output = ApiResult<()>> + Send {
        nyi("network connect")
    }
    fn network_disconnect(
        &self,
        _id: &str,
        _req: NetworkDisconnectRequest,
    ) -> impl Future<Output = ApiResult<()>> + Send {
        nyi("network disconnect")
    }
}

/// The event stream. No methods yet; those to come default to 501 as the others do.
pub trait EventBackend: Send + Sync + 'static {}

/// A whole container back end: every seam. Implemented for any type that implements them all.
pub trait Backend:
    SystemBackend
    + ImageBackend
    + ContainerBackend
    + ExecBackend
    + ArchiveBackend
    + VolumeBackend
    + NetworkBackend
    + EventBackend
{
}

impl<T> Backend for T where
    T: SystemBackend
        + ImageBackend
        + ContainerBackend
        + ExecBackend
        + ArchiveBackend
        + VolumeBackend
        + NetworkBackend
        + EventBackend
{
}
