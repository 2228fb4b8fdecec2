//! The back-end traits: one per seam of the API, and [`Backend`], their union, which the
//! server dispatches on. Every method has the meaning of the Docker endpoint it serves; those
//! with default bodies answer 501 until a back end implements them, so a back end implements
//! each seam trait (an empty `impl` takes every default).

use crate::filters::ContainerPrune;
use crate::images::*;
use crate::networks::{
    Network, NetworkConnectRequest, NetworkCreateRequest, NetworkCreateResponse,
    NetworkDisconnectRequest,
};
use crate::ops::{Change, ContainerStats, EventRx, TopResponse, UpdateRequest, UpdateResponse};
use crate::types::*;
use crate::volumes::{Volume, VolumeCreateRequest, VolumeEntry};
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
    /// `POST /auth` (`docker login`): checks the credentials with the registry.
    fn auth(&self, _a: AuthConfig) -> impl Future<Output = ApiResult<AuthResponse>> + Send {
        nyi("login")
    }
    fn system_df(&self) -> impl Future<Output = ApiResult<DiskUsage>> + Send {
        nyi("disk usage")
    }
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
    fn image_history(
        &self,
        _name: &str,
    ) -> impl Future<Output = ApiResult<Vec<HistoryItem>>> + Send {
        nyi("image history")
    }
    /// Starts a push of `name` (all its tags when `tag` is empty and `name` has none).
    fn image_push(
        &self,
        _name: &str,
        _tag: &str,
        _auth: Option<RegistryAuth>,
    ) -> impl Future<Output = ApiResult<mpsc::Receiver<ProgressMessage>>> + Send {
        nyi("image push")
    }
    /// A `docker save` archive of the images, streamed.
    fn image_save(
        &self,
        _names: Vec<String>,
    ) -> impl Future<Output = ApiResult<mpsc::Receiver<Bytes>>> + Send {
        nyi("image save")
    }
    /// `docker import`: a root filesystem tarball as a one-layer image; returns its id.
    fn image_import(
        &self,
        _tar: mpsc::Receiver<Bytes>,
        _opts: ImportOptions,
    ) -> impl Future<Output = ApiResult<String>> + Send {
        nyi("image import")
    }
    /// `docker commit`: the container's changes as a new image; returns its id.
    fn image_commit(&self, _opts: CommitOptions) -> impl Future<Output = ApiResult<String>> + Send {
        nyi("commit")
    }
    fn image_prune(
        &self,
        _f: PruneFilters,
    ) -> impl Future<Output = ApiResult<ImagePruneReport>> + Send {
        nyi("image prune")
    }
    fn distribution(
        &self,
        _name: &str,
        _auth: Option<RegistryAuth>,
    ) -> impl Future<Output = ApiResult<DistributionInspect>> + Send {
        nyi("distribution inspect")
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
    /// Removes the stopped containers that `f` accepts; returns their ids.
    fn container_prune(
        &self,
        _f: ContainerPrune,
    ) -> impl Future<Output = ApiResult<Vec<String>>> + Send {
        nyi("container prune")
    }
    /// The prune with the bytes it freed (`SpaceReclaimed`); by default none are counted.
    fn container_prune_reclaiming(
        &self,
        f: ContainerPrune,
    ) -> impl Future<Output = ApiResult<(Vec<String>, u64)>> + Send {
        async { Ok((self.container_prune(f).await?, 0)) }
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
    /// One sample (`precpu_stats` and `preread` are filled by the front end from the last).
    fn container_stats(&self, _id: &str) -> impl Future<Output = ApiResult<ContainerStats>> + Send {
        nyi("container stats")
    }
    fn container_top(
        &self,
        _id: &str,
        _ps_args: &str,
    ) -> impl Future<Output = ApiResult<TopResponse>> + Send {
        nyi("container top")
    }
    fn container_changes(&self, _id: &str) -> impl Future<Output = ApiResult<Vec<Change>>> + Send {
        nyi("container changes")
    }
    /// A tar stream of the container's root file system.
    fn container_export(
        &self,
        _id: &str,
    ) -> impl Future<Output = ApiResult<mpsc::Receiver<Bytes>>> + Send {
        nyi("container export")
    }
    /// `GET /containers/{id}/export?layer=changes` (an axion extension, not dockerd's): the
    /// container's writable layer as an OCI layer tar (its changes to the image, deletions
    /// as whiteouts). axion-vmd keeps it on the host when a container's VM goes, so that a
    /// restart on a new VM keeps the container's files.
    fn container_changes_layer(
        &self,
        _id: &str,
    ) -> impl Future<Output = ApiResult<mpsc::Receiver<Bytes>>> + Send {
        nyi("container export of the changes layer")
    }
    fn container_pause(&self, _id: &str) -> impl Future<Output = ApiResult<()>> + Send {
        nyi("container pause")
    }
    fn container_unpause(&self, _id: &str) -> impl Future<Output = ApiResult<()>> + Send {
        nyi("container unpause")
    }
    fn container_rename(
        &self,
        _id: &str,
        _name: &str,
    ) -> impl Future<Output = ApiResult<()>> + Send {
        nyi("container rename")
    }
    fn container_update(
        &self,
        _id: &str,
        _req: UpdateRequest,
    ) -> impl Future<Output = ApiResult<UpdateResponse>> + Send {
        nyi("container update")
    }
    /// `docker rm --link PARENT/ALIAS`: the parent's legacy link named ALIAS goes.
    fn container_remove_link(
        &self,
        _parent: &str,
        _alias: &str,
    ) -> impl Future<Output = ApiResult<()>> + Send {
        nyi("removing a link")
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

/// Volumes (`docker volume`); the front end filters what [`VolumeBackend::volumes`] lists.
pub trait VolumeBackend: Send + Sync + 'static {
    fn volumes(&self) -> impl Future<Output = ApiResult<Vec<VolumeEntry>>> + Send {
        nyi("listing volumes")
    }
    fn volume_create(
        &self,
        _req: VolumeCreateRequest,
    ) -> impl Future<Output = ApiResult<Volume>> + Send {
        nyi("volume create")
    }
    fn volume_inspect(&self, _name: &str) -> impl Future<Output = ApiResult<Volume>> + Send {
        nyi("volume inspect")
    }
    /// 409 while a container uses it; `force` makes a missing volume no error.
    fn volume_remove(
        &self,
        _name: &str,
        _force: bool,
    ) -> impl Future<Output = ApiResult<()>> + Send {
        nyi("volume remove")
    }
    /// Removes those of `names` still unused; answers the removed names and bytes freed.
    fn volume_prune(
        &self,
        _names: Vec<String>,
    ) -> impl Future<Output = ApiResult<(Vec<String>, u64)>> + Send {
        nyi("volume prune")
    }
}

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

/// The event stream.
pub trait EventBackend: Send + Sync + 'static {
    /// Events from `since` (nanoseconds; the bus's history from then) and then live ones, until
    /// the receiver is dropped. Without `since`, live events only.
    fn events(&self, _since: Option<i128>) -> impl Future<Output = ApiResult<EventRx>> + Send {
        nyi("events")
    }
}

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
    + crate::build::BuildBackend
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
        + crate::build::BuildBackend
{
}
