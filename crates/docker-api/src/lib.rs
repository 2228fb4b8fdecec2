//! The Docker Engine API front end, written once over a [`Backend`] trait.
//!
//! The container engine in the guest is the first back end; the host daemon that runs each
//! container in its own VM is meant to be the second. This crate owns everything that is
//! about the protocol: routes (with and without the `/vX.YZ` prefix), request and response
//! types, version negotiation (`/_ping` answers `API-Version`), Docker-style errors
//! (`{"message": ...}` with the right status), streaming (chunked JSON progress for pull,
//! stdcopy framing for logs and attach without a TTY, raw with one), connection hijacking
//! (`Upgrade: tcp`) for attach and exec start, and the listeners (unix socket, TCP with
//! mutual TLS, plain TCP). Endpoints we do not serve answer 404/501 with a message.

pub mod error;
pub mod filters;
pub mod portspec;
pub mod route;
pub mod server;
pub mod stdcopy;
pub mod time;
pub mod tls;
pub mod types;
pub mod version;

pub use error::{ApiError, ApiResult};
pub use stdcopy::{Frame, StdStream};

use bytes::Bytes;
use std::future::Future;
use tokio::sync::mpsc;
use types::*;

/// Output of a container or exec session: frames until the channel closes.
pub type FrameRx = mpsc::Receiver<Frame>;

/// What `attach` and `exec start` hand the front end: output frames, and where to send the
/// client's stdin (None when stdin is not attached). Closing `stdin` means EOF.
pub struct AttachIo {
    pub tty: bool,
    pub output: FrameRx,
    pub stdin: Option<mpsc::Sender<Bytes>>,
}

#[derive(Debug, Clone, Default)]
pub struct LogsOptions {
    pub follow: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub timestamps: bool,
    /// Number of lines from the end; None = all.
    pub tail: Option<usize>,
}

#[derive(Debug, Clone, Default)]
pub struct AttachOptions {
    pub stream: bool,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub logs: bool,
}

/// `wait?condition=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitCondition {
    NotRunning,
    NextExit,
    Removed,
}

/// Registry credentials from the `X-Registry-Auth` header (base64 JSON).
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct RegistryAuth {
    #[serde(default)]
    pub username: String,
    #[serde(default)]
    pub password: String,
    #[serde(default, rename = "identitytoken")]
    pub identity_token: String,
}

fn nyi<T>(what: &'static str) -> impl Future<Output = ApiResult<T>> + Send {
    async move { Err(ApiError::not_implemented(what)) }
}

/// A container back end. Every method has the meaning of the Docker endpoint it serves;
/// those with default bodies answer 501 until a back end implements them.
pub trait Backend: Send + Sync + 'static {
    fn version(&self) -> impl Future<Output = ApiResult<Version>> + Send;
    fn info(&self) -> impl Future<Output = ApiResult<Info>> + Send;

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
