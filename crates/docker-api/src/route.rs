//! Request routing: `(method, path)` → [`Route`], with or without the `/vX.YZ` prefix.
//! Image names may contain `/` (`127.0.0.1:5000/busybox`), so image routes match by suffix,
//! as the daemon's `{name:.*}` patterns do.

use crate::error::ApiError;
use crate::version;
use http::Method;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Ping,
    Version,
    Info,
    ImagesList,
    ImagesCreate,
    ImagesLoad,
    ImageInspect(String),
    ImageTag(String),
    ImageDelete(String),
    ContainersList,
    ContainerCreate,
    ContainersPrune,
    Container(String, ContainerOp),
    ExecStart(String),
    ExecInspect(String),
    ExecResize(String),
    Volumes(crate::volumes::VolumeOp),
    /// Container operations, events, swarm and plugins ([`crate::ops`]).
    Ops(crate::ops::Op),
    /// History, push, save, prune, search, commit, distribution, auth, df.
    Images(crate::images::ImageOp),
    Network(crate::networks::NetworkOp),
    /// `docker build` and its cache ([`crate::build`]).
    Build(crate::build::BuildOp),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerOp {
    Inspect,
    Start,
    Stop,
    Kill,
    Restart,
    Wait,
    Delete,
    Logs,
    Attach,
    Resize,
    ExecCreate,
    ArchiveGet,
    ArchiveHead,
    ArchivePut,
}

/// The request's route and the API version it named (if any).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routed {
    pub route: Route,
    pub version: Option<String>,
}

/// Percent-decodes one path (the CLI escapes some characters in names).
fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn route(method: &Method, raw_path: &str) -> Result<Routed, ApiError> {
    let path = decode(raw_path);
    let (version, path) = split_version(&path)?;
    let m = method.clone();
    let not_found = || {
        ApiError::not_found(format!(
            "page not found: {m} {path} is not served by this engine"
        ))
    };
    let r = match (method, path) {
        (&Method::GET | &Method::HEAD, "/_ping") => Route::Ping,
        (&Method::GET, "/version") => Route::Version,
        (&Method::GET, "/info") => Route::Info,
        (&Method::GET, "/images/json") => Route::ImagesList,
        (&Method::POST, "/images/create") => Route::ImagesCreate,
        (&Method::POST, "/images/load") => Route::ImagesLoad,
        (&Method::GET, "/containers/json") => Route::ContainersList,
        (&Method::POST, "/containers/create") => Route::ContainerCreate,
        (&Method::POST, "/containers/prune") => Route::ContainersPrune,
        _ => {
            if let Some(op) = crate::ops::route(method, path) {
                Route::Ops(op)
            } else if let Some(op) = crate::build::route(method, path) {
                Route::Build(op)
            } else if let Some(op) = crate::images::route(method, path) {
                Route::Images(op)
            } else if let Some(rest) = path.strip_prefix("/images/") {
                image_route(method, rest).ok_or_else(not_found)?
            } else if let Some(rest) = path.strip_prefix("/containers/") {
                container_route(method, rest).ok_or_else(not_found)?
            } else if let Some(rest) = path.strip_prefix("/volumes") {
                Route::Volumes(crate::volumes::route(method, rest).ok_or_else(not_found)?)
            } else if let Some(rest) = path.strip_prefix("/networks") {
                Route::Network(crate::networks::route(method, rest).ok_or_else(not_found)?)
            } else if let Some(rest) = path.strip_prefix("/exec/") {
                let (id, op) = rest.split_once('/').ok_or_else(not_found)?;
                let id = id.to_string();
                match (method, op) {
                    (&Method::POST, "start") => Route::ExecStart(id),
                    (&Method::GET, "json") => Route::ExecInspect(id),
                    (&Method::POST, "resize") => Route::ExecResize(id),
                    _ => return Err(not_found()),
                }
            } else {
                return Err(not_found());
            }
        }
    };
    Ok(Routed { route: r, version })
}

fn split_version(path: &str) -> Result<(Option<String>, &str), ApiError> {
    if let Some(rest) = path.strip_prefix("/v") {
        if let Some(slash) = rest.find('/') {
            let v = &rest[..slash];
            if version::parse(v).is_some() {
                if !version::supported(v) {
                    let (got, max) = (version::parse(v), version::parse(version::API_VERSION));
                    let msg = if got > max {
                        format!(
                            "client version {v} is too new. Maximum supported API version is {}",
                            version::API_VERSION
                        )
                    } else {
                        format!(
                            "client version {v} is too old. Minimum supported API version is {}, \
                                please upgrade your client to a newer version",
                            version::MIN_API_VERSION
                        )
                    };
                    return Err(ApiError::bad_request(msg));
                }
                return Ok((Some(v.to_string()), &rest[slash..]));
            }
        }
    }
    Ok((None, path))
}

fn image_route(method: &Method, rest: &str) -> Option<Route> {
    if rest.is_empty() {
        return None;
    }
    if method == Method::DELETE {
        return Some(Route::ImageDelete(rest.to_string()));
    }
    let (name, op) = rest.rsplit_once('/')?;
    if name.is_empty() {
        return None;
    }
    match (method, op) {
        (&Method::GET, "json") => Some(Route::ImageInspect(name.to_string())),
        (&Method::POST, "tag") => Some(Route::ImageTag(name.to_string())),
        _ => None,
    }
}

fn container_route(method: &Method, rest: &str) -> Option<Route> {
    let (id, op) = match rest.split_once('/') {
        Some((id, op)) => (id, op),
        None => (rest, ""),
    };
    if id.is_empty() {
        return None;
    }
    use ContainerOp::*;
    let op = match (method, op) {
        (&Method::GET, "json") => Inspect,
        (&Method::POST, "start") => Start,
        (&Method::POST, "stop") => Stop,
        (&Method::POST, "kill") => Kill,
        (&Method::POST, "restart") => Restart,
        (&Method::POST, "wait") => Wait,
        (&Method::DELETE, "") => Delete,
        (&Method::GET, "logs") => Logs,
        (&Method::POST, "attach") => Attach,
        (&Method::POST, "resize") => Resize,
        (&Method::POST, "exec") => ExecCreate,
        (&Method::GET, "archive") => ArchiveGet,
        (&Method::HEAD, "archive") => ArchiveHead,
        (&Method::PUT, "archive") => ArchivePut,
        _ => return None,
    };
    Some(Route::Container(id.to_string(), op))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(m: Method, p: &str) -> Route {
        route(&m, p).unwrap().route
    }

    #[test]
    fn with_and_without_version_prefix() {
        assert_eq!(r(Method::GET, "/_ping"), Route::Ping);
        assert_eq!(r(Method::HEAD, "/_ping"), Route::Ping);
        assert_eq!(r(Method::GET, "/v1.47/version"), Route::Version);
        let routed = route(&Method::GET, "/v1.41/info").unwrap();
        assert_eq!(routed.version.as_deref(), Some("1.41"));
        assert_eq!(routed.route, Route::Info);
    }

    #[test]
    fn too_new_and_too_old_versions() {
        let e = route(&Method::GET, "/v1.99/version").unwrap_err();
        assert_eq!(e.status, http::StatusCode::BAD_REQUEST);
        assert!(e.message.contains("too new"), "{}", e.message);
        let e = route(&Method::GET, "/v1.12/version").unwrap_err();
        assert!(e.message.contains("too old"));
    }

    #[test]
    fn image_names_with_slashes_and_ports() {
        assert_eq!(
            r(
                Method::GET,
                "/v1.47/images/127.0.0.1:5000/busybox:latest/json"
            ),
            Route::ImageInspect("127.0.0.1:5000/busybox:latest".into())
        );
        assert_eq!(
            r(Method::DELETE, "/images/127.0.0.1%3A5000/busybox"),
            Route::ImageDelete("127.0.0.1:5000/busybox".into())
        );
        assert_eq!(
            r(Method::POST, "/images/abc/tag"),
            Route::ImageTag("abc".into())
        );
    }

    #[test]
    fn container_ops() {
        assert_eq!(
            r(Method::POST, "/v1.47/containers/abc/attach"),
            Route::Container("abc".into(), ContainerOp::Attach)
        );
        assert_eq!(
            r(Method::DELETE, "/containers/abc"),
            Route::Container("abc".into(), ContainerOp::Delete)
        );
        assert_eq!(
            r(Method::POST, "/exec/e1/start"),
            Route::ExecStart("e1".into())
        );
    }

    #[test]
    fn unknown_is_404_not_panic() {
        for (m, p) in [
            (Method::GET, "/nope"),
            (Method::POST, "/containers//start"),
            (Method::GET, "/images/"),
            (Method::PATCH, "/containers/x/json"),
            (Method::GET, "/v1.47"),
            (Method::GET, "%zz%"),
        ] {
            if let Err(e) = route(&m, p) {
                assert_eq!(e.status, http::StatusCode::NOT_FOUND, "{m} {p}");
            }
        }
        assert!(route(&Method::GET, "/swarmy").is_err());
    }
}
