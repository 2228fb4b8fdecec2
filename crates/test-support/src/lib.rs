//! Test fixtures shared by the e2e tests (tests/, crate axion_tests) and the bench
//! (`cargo xtask bench`): a real registry on 127.0.0.1 with busybox images ([`registry`]),
//! busybox archives ([`busybox`]), one `docker` CLI wrapper ([`docker`]), a file server
//! ([`http`]), with the feature `vmd` axion-vmd served in-process ([`vmd`]) and, with the
//! feature `cri`, a CRI (kubelet's gRPC API) client ([`cri`]).
//!
//! Nothing here is shipped, and no product crate depends on it. It must not depend on
//! xtask (xtask's bench uses it): what needs the build tool, such as building the project's
//! busybox, is passed in (`xtask::build::project_busybox`).

pub mod busybox;
#[cfg(feature = "cri")]
pub mod cri;
pub mod docker;
pub mod http;
pub mod registry;
#[cfg(feature = "vmd")]
pub mod vmd;

pub use docker::DockerCli;
