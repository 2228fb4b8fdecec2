//! The registry API v2 client of both pulling programs: the guest engine (packages/engine)
//! and the host daemon axion-vmd (host/vmd). One implementation of what a pull must get
//! right: references normalised as Docker does ([`reference`]), anonymous, bearer-token
//! (from the `WWW-Authenticate` challenge) and basic auth, image indexes / manifest lists
//! resolved to linux/amd64, Docker schema 2 and OCI manifests, size limits, and every
//! manifest, config and layer checked against its digest ([`client`]).
//!
//! Async reqwest with rustls (no OpenSSL: the engine is a static musl binary). Plain HTTP
//! is used for `localhost`, `127.0.0.0/8`, `[::1]` and the registries given as insecure
//! (`--insecure-registry HOST[:PORT]` or `CIDR`, as dockerd takes them: [`parse_insecure`]);
//! everything else is HTTPS. Docker Hub (`docker.io`) is reached at its API
//! host. Errors are [`RegistryError`] values naming the URL.

pub mod client;
pub mod push;
pub mod reference;

pub use client::{
    parse_insecure, select_platform, sha256_digest, verify, Challenge, Client, Credentials,
    Descriptor, Manifest, Platform, RegistryError, Session, LOOPBACK_CIDRS,
};
pub use push::UPLOAD_CHUNK;
pub use reference::{valid_digest, BadReference, Reference, DOCKER_HUB};
