//! `docker build`: the engine's [`BuildBackend`] over the builder in [`crate::build`].

use super::*;
use docker_api::BuildBackend;

impl BuildBackend for Engine {}
