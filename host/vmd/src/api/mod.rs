//! [`Api`]: the Docker API back end over the [`Daemon`], one file per seam ([`system`],
//! [`images`], [`containers`], [`exec`]). Archives, volumes, networks and events take the
//! traits' defaults (501).

mod containers;
mod exec;
mod images;
mod system;

use crate::Daemon;
use docker_api::{ArchiveBackend, EventBackend, NetworkBackend, VolumeBackend};
use std::sync::Arc;

/// The Docker API back end over a shared [`Daemon`].
pub struct Api(pub Arc<Daemon>);

impl std::ops::Deref for Api {
    type Target = Arc<Daemon>;
    fn deref(&self) -> &Arc<Daemon> {
        &self.0
    }
}

impl ArchiveBackend for Api {}
impl VolumeBackend for Api {}
impl NetworkBackend for Api {}
impl EventBackend for Api {}
impl docker_api::BuildBackend for Api {}
