//! The Docker Engine API front end, written once over a [`Backend`] trait (the union of one
//! trait per seam: [`SystemBackend`], [`ImageBackend`], [`ContainerBackend`], [`ExecBackend`],
//! [`ArchiveBackend`], [`VolumeBackend`], [`NetworkBackend`], [`EventBackend`],
//! [`BuildBackend`]).
//!
//! Two back ends implement it: the container engine in the guest (packages/engine) and
//! axion-vmd, one VM per container (host/vmd). This crate owns everything that is
//! about the protocol: routes (with and without the `/vX.YZ` prefix), request and response
//! types, version negotiation (`/_ping` answers `API-Version`), Docker-style errors
//! (`{"message": ...}` with the right status), streaming (chunked JSON progress for pull,
//! stdcopy framing for logs and attach without a TTY, raw with one), connection hijacking
//! (`Upgrade: tcp`) for attach and exec start, and the listeners (unix socket, TCP with
//! mutual TLS, plain TCP). Endpoints we do not serve answer 404/501 with a message.

pub mod backend;
pub mod body;
pub mod build;
pub mod devices;
pub mod error;
pub mod events;
pub mod filters;
pub mod host_labels;
pub mod images;
pub mod networks;
pub mod ops;
pub mod portspec;
pub mod route;
pub mod server;
pub mod stdcopy;
pub mod time;
pub mod tls;
pub mod types;
pub mod version;
pub mod volumes;

pub use backend::{
    ArchiveBackend, Backend, ContainerBackend, EventBackend, ExecBackend, ImageBackend,
    NetworkBackend, SystemBackend, VolumeBackend,
};
pub use build::BuildBackend;
pub use error::{ApiError, ApiResult};
pub use stdcopy::{Frame, StdStream};

use bytes::Bytes;
use tokio::sync::mpsc;

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
    /// Only lines written at or after / before this time (nanoseconds since the epoch).
    pub since: Option<i128>,
    pub until: Option<i128>,
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
