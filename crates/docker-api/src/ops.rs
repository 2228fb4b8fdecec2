//! Container operations beyond the lifecycle (stats, top, changes, export, pause, unpause,
//! rename, update), the event stream, and what a node that is not a swarm manager answers for
//! swarm, services, tasks, secrets, configs, nodes and plugins: their routes ([`route`]),
//! bodies and [`dispatch`].

use crate::error::{ApiError, ApiResult};
use crate::events::{self, EventMessage};
use crate::filters::Filters;
use crate::server::{json_response, streaming_response, Query, Req, Resp};
use crate::types::RestartPolicy;
use crate::Backend;
use bytes::Bytes;
use http::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::mpsc;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Container(String, ContainerExtOp),
    Events,
    /// Swarm-only endpoints on a node outside a swarm; the text says which answer.
    NoSwarm(&'static str),
    PluginsList,
    /// A plugin by name (none is installed).
    PluginNotFound(String),
    /// Installing or creating plugins.
    PluginInstall,
    /// `DELETE /containers/{parent}/{alias}`: with `link=true`, removes a legacy link; the
    /// name with its `/` is otherwise no container.
    RemoveLink(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerExtOp {
    Stats,
    Top,
    Changes,
    Export,
    Pause,
    Unpause,
    Rename,
    Update,
}

/// dockerd's `errNoManager` on a node that never joined a swarm.
pub const NOT_A_MANAGER: &str = "This node is not a swarm manager. Use \"docker swarm init\" or \
    \"docker swarm join\" to connect this node to swarm and try again.";
/// dockerd's `errNoSwarm` (leaving, unlocking a swarm it is not in).
pub const NOT_IN_SWARM: &str = "This node is not part of a swarm";

/// Recognises this group's routes (the path without its `/vX.YZ` prefix).
pub fn route(method: &Method, path: &str) -> Option<Op> {
    if path == "/events" && method == Method::GET {
        return Some(Op::Events);
    }
    let first = path.trim_start_matches('/').split('/').next().unwrap_or("");
    match first {
        "swarm" => {
            return Some(Op::NoSwarm(match (method, path) {
                (&Method::POST, "/swarm/leave" | "/swarm/unlock") => NOT_IN_SWARM,
                _ => NOT_A_MANAGER,
            }))
        }
        "services" | "tasks" | "secrets" | "configs" | "nodes" => {
            return Some(Op::NoSwarm(NOT_A_MANAGER))
        }
        "plugins" => {
            return Some(match (method, path) {
                (&Method::GET, "/plugins") => Op::PluginsList,
                (&Method::POST, "/plugins/pull" | "/plugins/create")
                | (&Method::GET, "/plugins/privileges") => Op::PluginInstall,
                _ => {
                    let rest = path.strip_prefix("/plugins/")?;
                    let name = match rest.rsplit_once('/') {
                        Some((n, _)) if method != Method::DELETE => n,
                        _ => rest,
                    };
                    Op::PluginNotFound(name.to_string())
                }
            })
        }
        _ => {}
    }
    let rest = path.strip_prefix("/containers/")?;
    let (id, op) = rest.split_once('/')?;
    if id.is_empty() {
        return None;
    }
    if method == Method::DELETE && !op.is_empty() {
        return Some(Op::RemoveLink(rest.to_string()));
    }
    use ContainerExtOp::*;
    let op = match (method, op) {
        (&Method::GET, "stats") => Stats,
        (&Method::GET, "top") => Top,
        (&Method::GET, "changes") => Changes,
        (&Method::GET, "export") => Export,
        (&Method::POST, "pause") => Pause,
        (&Method::POST, "unpause") => Unpause,
        (&Method::POST, "rename") => Rename,
        (&Method::POST, "update") => Update,
        _ => return None,
    };
    Some(Op::Container(id.to_string(), op))
}

/// Parses detach keys (`ctrl-p,ctrl-q`, `a`, `ctrl-@`...`ctrl-_`) into bytes; None gives
/// dockerd's default, ctrl-p ctrl-q.
pub fn detach_keys(spec: Option<&str>) -> ApiResult<Vec<u8>> {
    let Some(spec) = spec.filter(|s| !s.is_empty()) else {
        return Ok(vec![16, 17]);
    };
    let bad = || ApiError::bad_request(format!("Invalid detach keys ({spec}) provided"));
    let mut out = Vec::new();
    for k in spec.split(',') {
        let b = match k.strip_prefix("ctrl-") {
            Some(c) if c.len() == 1 => {
                let c = c.as_bytes()[0].to_ascii_uppercase();
                if !(b'@'..=b'_').contains(&c) {
                    return Err(bad());
                }
                c - b'@'
            }
            None if k.len() == 1 && k.is_ascii() => k.as_bytes()[0],
            _ => return Err(bad()),
        };
        out.push(b);
    }
    Ok(out)
}

/// Finds the detach keys in a stream of input: bytes that could start the sequence are held
/// back until they turn out not to (then passed on) or complete it.
pub struct Escape {
    keys: Vec<u8>,
    held: usize,
}

impl Escape {
    /// No keys: nothing is looked for.
    pub fn new(keys: Vec<u8>) -> Self {
        Escape { keys, held: 0 }
    }

    /// The bytes to pass on, and whether the sequence is complete (the rest is then dropped).
    pub fn feed(&mut self, input: &[u8]) -> (Vec<u8>, bool) {
        if self.keys.is_empty() {
            return (input.to_vec(), false);
        }
        let mut out = Vec::with_capacity(input.len());
        for &b in input {
            if b == self.keys[self.held] {
                self.held += 1;
                if self.held == self.keys.len() {
                    self.held = 0;
                    return (out, true);
                }
                continue;
            }
            // Not the sequence after all: what was held goes out (and this byte may start it).
            out.extend_from_slice(&self.keys[..self.held]);
            self.held = 0;
            if b == self.keys[0] {
                self.held = 1;
                if self.keys.len() == 1 {
                    self.held = 0;
                    return (out, true);
                }
            } else {
                out.push(b);
            }
        }
        (out, false)
    }
}

/// `GET /containers/{id}/stats`, in dockerd's (cgroup v2) shape.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct ContainerStats {
    pub name: String,
    pub id: String,
    pub read: String,
    pub preread: String,
    pub pids_stats: PidsStats,
    pub blkio_stats: BlkioStats,
    pub num_procs: u32,
    pub storage_stats: serde_json::Value,
    pub cpu_stats: CpuStats,
    pub precpu_stats: CpuStats,
    pub memory_stats: MemoryStats,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub networks: Option<BTreeMap<String, NetworkStats>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct PidsStats {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct BlkioStats {
    pub io_service_bytes_recursive: Option<Vec<BlkioEntry>>,
    pub io_serviced_recursive: Option<Vec<BlkioEntry>>,
    pub io_queue_recursive: Option<Vec<BlkioEntry>>,
    pub io_service_time_recursive: Option<Vec<BlkioEntry>>,
    pub io_wait_time_recursive: Option<Vec<BlkioEntry>>,
    pub io_merged_recursive: Option<Vec<BlkioEntry>>,
    pub io_time_recursive: Option<Vec<BlkioEntry>>,
    pub sectors_recursive: Option<Vec<BlkioEntry>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq, Eq)]
pub struct BlkioEntry {
    pub major: u64,
    pub minor: u64,
    pub op: String,
    pub value: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq, Eq)]
pub struct CpuStats {
    pub cpu_usage: CpuUsage,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system_cpu_usage: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub online_cpus: Option<u32>,
    pub throttling_data: ThrottlingData,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq, Eq)]
pub struct CpuUsage {
    pub total_usage: u64,
    pub usage_in_kernelmode: u64,
    pub usage_in_usermode: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq, Eq)]
pub struct ThrottlingData {
    pub periods: u64,
    pub throttled_periods: u64,
    pub throttled_time: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct MemoryStats {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stats: Option<BTreeMap<String, u64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq, Eq)]
pub struct NetworkStats {
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub rx_errors: u64,
    pub rx_dropped: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub tx_errors: u64,
    pub tx_dropped: u64,
}

/// `GET /containers/{id}/top`.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct TopResponse {
    pub titles: Vec<String>,
    pub processes: Vec<Vec<String>>,
}

/// One entry of `GET /containers/{id}/changes`: Kind 0 modified, 1 added, 2 deleted.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct Change {
    pub path: String,
    pub kind: u8,
}

/// `POST /containers/{id}/update` (the resources it can change, and the restart policy).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct UpdateRequest {
    pub memory: Option<i64>,
    pub memory_swap: Option<i64>,
    pub memory_reservation: Option<i64>,
    pub nano_cpus: Option<i64>,
    pub cpu_quota: Option<i64>,
    pub cpu_period: Option<i64>,
    pub cpu_shares: Option<i64>,
    pub cpuset_cpus: Option<String>,
    pub cpuset_mems: Option<String>,
    pub pids_limit: Option<i64>,
    pub blkio_weight: Option<u16>,
    pub kernel_memory: Option<i64>,
    pub restart_policy: Option<RestartPolicy>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct UpdateResponse {
    pub warnings: Vec<String>,
}

/// What the event stream sends a client: the back end's events from `since` on (history,
/// then live), until the channel closes.
pub type EventRx = mpsc::Receiver<EventMessage>;

/// Serves this group's routes.
pub(crate) async fn dispatch<B: Backend>(b: Arc<B>, req: Req, q: Query, op: Op) -> ApiResult<Resp> {
    Ok(match op {
        Op::NoSwarm(msg) => return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, msg)),
        Op::PluginsList => json_response(StatusCode::OK, &Vec::<serde_json::Value>::new()),
        Op::PluginNotFound(name) => {
            let name = if name.contains(':') || name.contains('@') {
                name
            } else {
                format!("{name}:latest")
            };
            return Err(ApiError::not_found(format!("plugin \"{name}\" not found")));
        }
        Op::PluginInstall => return Err(ApiError::not_implemented("installing plugins")),
        Op::Events => events_stream(b, q).await?,
        Op::RemoveLink(name) => {
            let name = name.trim_end_matches('/');
            let Some((parent, alias)) = name.rsplit_once('/').filter(|_| q.flag("link")) else {
                return Err(ApiError::not_found(format!("No such container: {name}")));
            };
            b.container_remove_link(parent, alias).await?;
            crate::server::empty(StatusCode::NO_CONTENT)
        }
        Op::Container(id, op) => container(b, req, q, id, op).await?,
    })
}

async fn events_stream<B: Backend>(b: Arc<B>, q: Query) -> ApiResult<Resp> {
    let filters = Filters::parse(q.get("filters"))?;
    events::check_filters(&filters)?;
    let since = q
        .get("since")
        .map(|v| events::parse_time("since", v))
        .transpose()?;
    let until = q
        .get("until")
        .map(|v| events::parse_time("until", v))
        .transpose()?;
    let mut rx = b.events(since).await?;
    let (tx, body) = mpsc::channel::<Bytes>(64);
    tokio::spawn(async move {
        let deadline = until.map(|u| {
            let wait = (u - crate::time::now_nanos()).max(0);
            tokio::time::Instant::now() + std::time::Duration::from_nanos(wait as u64)
        });
        loop {
            let next = match deadline {
                Some(d) => tokio::select! {
                    biased;
                    e = rx.recv() => e,
                    _ = tokio::time::sleep_until(d) => {
                        // What the bus still hands over from before `until` goes out (the
                        // history of a past `until` may not have arrived yet).
                        let grace = std::time::Duration::from_millis(300);
                        while let Ok(Some(e)) = tokio::time::timeout(grace, rx.recv()).await {
                            if until.is_some_and(|u| e.time_nano > u) {
                                return;
                            }
                            if events::matches(&filters, &e) && tx.send(line(&e)).await.is_err() {
                                return;
                            }
                        }
                        return;
                    }
                },
                None => tokio::select! {
                    e = rx.recv() => e,
                    _ = tx.closed() => return,
                },
            };
            let Some(e) = next else { return };
            if until.is_some_and(|u| e.time_nano > u) {
                return;
            }
            if events::matches(&filters, &e) && tx.send(line(&e)).await.is_err() {
                return;
            }
        }
    });
    Ok(streaming_response("application/json", body))
}

fn line(e: &EventMessage) -> Bytes {
    let mut v = serde_json::to_vec(e).unwrap_or_default();
    v.push(b'\n');
    v.into()
}

async fn container<B: Backend>(
    b: Arc<B>,
    req: Req,
    q: Query,
    id: String,
    op: ContainerExtOp,
) -> ApiResult<Resp> {
    use ContainerExtOp::*;
    Ok(match op {
        Stats => {
            let stream = !matches!(q.get("stream"), Some("0" | "false" | "False"));
            let one_shot = q.flag("one-shot");
            let first = b.container_stats(&id).await?;
            if !stream && one_shot {
                return Ok(json_response(StatusCode::OK, &first));
            }
            let (tx, body) = mpsc::channel::<Bytes>(4);
            tokio::spawn(async move {
                let mut prev = first;
                loop {
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    let Ok(mut s) = b.container_stats(&id).await else {
                        return;
                    };
                    s.precpu_stats = prev.cpu_stats.clone();
                    s.preread = prev.read.clone();
                    let mut v = serde_json::to_vec(&s).unwrap_or_default();
                    v.push(b'\n');
                    if tx.send(v.into()).await.is_err() || !stream {
                        return;
                    }
                    prev = s;
                }
            });
            streaming_response("application/json", body)
        }
        Top => json_response(
            StatusCode::OK,
            &b.container_top(&id, q.get("ps_args").unwrap_or("-ef"))
                .await?,
        ),
        Changes => {
            let c = b.container_changes(&id).await?;
            if c.is_empty() {
                // dockerd answers `null` for no changes.
                json_response(StatusCode::OK, &serde_json::Value::Null)
            } else {
                json_response(StatusCode::OK, &c)
            }
        }
        Export => {
            let rx = match q.get("layer") {
                None | Some("") => b.container_export(&id).await?,
                Some("changes") => b.container_changes_layer(&id).await?,
                Some(other) => {
                    return Err(ApiError::bad_request(format!(
                        "export: unknown layer {other:?} (the only one is \"changes\")"
                    )))
                }
            };
            streaming_response("application/octet-stream", rx)
        }
        Pause => {
            b.container_pause(&id).await?;
            crate::server::empty_response(StatusCode::NO_CONTENT)
        }
        Unpause => {
            b.container_unpause(&id).await?;
            crate::server::empty_response(StatusCode::NO_CONTENT)
        }
        Rename => {
            let name = q
                .get("name")
                .ok_or_else(|| ApiError::bad_request("name is required"))?;
            b.container_rename(&id, name).await?;
            crate::server::empty_response(StatusCode::NO_CONTENT)
        }
        Update => {
            let body: UpdateRequest = crate::server::read_json(req.into_body().take()?).await?;
            json_response(StatusCode::OK, &b.container_update(&id, body).await?)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::types::{Info, Version};
    use crate::*;

    /// Two past events (one a volume's) and one after `until`, delivered late.
    struct Bus;
    impl SystemBackend for Bus {
        async fn version(&self) -> ApiResult<Version> {
            Ok(Version::default())
        }
        async fn info(&self) -> ApiResult<Info> {
            Ok(Info::default())
        }
    }
    impl ImageBackend for Bus {}
    impl ContainerBackend for Bus {}
    impl ExecBackend for Bus {}
    impl ArchiveBackend for Bus {}
    impl VolumeBackend for Bus {}
    impl NetworkBackend for Bus {}
    impl crate::build::BuildBackend for Bus {}
    impl EventBackend for Bus {
        async fn events(&self, _since: Option<i128>) -> ApiResult<EventRx> {
            let (tx, rx) = mpsc::channel(8);
            tokio::spawn(async move {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                let at = |s: i128| s * 1_000_000_000;
                for (kind, action, t) in [
                    ("container", "start", at(100)),
                    ("volume", "create", at(101)),
                    ("container", "die", at(300)),
                ] {
                    let e = EventMessage::new(kind, action, "x", Default::default(), t);
                    let _ = tx.send(e).await;
                }
                tx.closed().await;
            });
            Ok(rx)
        }
    }

    #[tokio::test]
    async fn a_past_until_ends_the_stream_after_the_history() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (client, server) = tokio::io::duplex(1 << 16);
        tokio::spawn(crate::server::serve_connection(Arc::new(Bus), server));
        let (mut rd, mut wr) = tokio::io::split(client);
        let f = "%7B%22type%22%3A%5B%22container%22%5D%7D"; // {"type":["container"]}
        wr.write_all(
            format!(
                "GET /events?since=1&until=200&filters={f} HTTP/1.1\r\nHost: x\r\nConnection: \
                close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(std::time::Duration::from_secs(5), rd.read_to_end(&mut out))
            .await
            .expect("the stream ended")
            .unwrap();
        let out = String::from_utf8_lossy(&out);
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        assert!(out.contains(r#""Action":"start""#), "{out}");
        assert!(!out.contains(r#""Action":"create""#), "filtered: {out}");
        assert!(!out.contains(r#""Action":"die""#), "after until: {out}");
    }

    #[test]
    fn detach_keys_parse_and_match() {
        assert_eq!(detach_keys(None).unwrap(), [16, 17]);
        assert_eq!(detach_keys(Some("ctrl-a,x")).unwrap(), [1, b'x']);
        assert_eq!(detach_keys(Some("ctrl-@")).unwrap(), [0]);
        assert!(detach_keys(Some("ctrl-aa")).is_err());
        assert!(detach_keys(Some("ctrl-~")).is_err());
        let mut e = Escape::new(vec![16, 17]);
        assert_eq!(e.feed(b"ab\x10"), (b"ab".to_vec(), false));
        assert_eq!(e.feed(b"c"), (b"\x10c".to_vec(), false));
        assert_eq!(e.feed(b"\x10"), (vec![], false));
        assert_eq!(e.feed(b"\x11rest"), (vec![], true));
        let mut e = Escape::new(vec![]);
        assert_eq!(e.feed(b"\x10\x11"), (b"\x10\x11".to_vec(), false));
        let mut e = Escape::new(vec![b'q']);
        assert_eq!(e.feed(b"aq"), (b"a".to_vec(), true));
    }

    #[test]
    fn routes() {
        assert_eq!(route(&Method::GET, "/events"), Some(Op::Events));
        assert_eq!(
            route(&Method::GET, "/containers/abc/stats"),
            Some(Op::Container("abc".into(), ContainerExtOp::Stats))
        );
        assert_eq!(
            route(&Method::POST, "/containers/abc/update"),
            Some(Op::Container("abc".into(), ContainerExtOp::Update))
        );
        assert_eq!(route(&Method::POST, "/containers/abc/start"), None);
        assert_eq!(route(&Method::GET, "/containers/json"), None);
        // `docker rm --link web/db`; a plain remove (also with a trailing slash) is not here.
        assert_eq!(
            route(&Method::DELETE, "/containers/web/db"),
            Some(Op::RemoveLink("web/db".into()))
        );
        assert_eq!(route(&Method::DELETE, "/containers/web/"), None);
        assert_eq!(route(&Method::DELETE, "/containers/web"), None);
        assert_eq!(
            route(&Method::GET, "/swarm"),
            Some(Op::NoSwarm(NOT_A_MANAGER))
        );
        assert_eq!(
            route(&Method::POST, "/swarm/leave"),
            Some(Op::NoSwarm(NOT_IN_SWARM))
        );
        assert_eq!(
            route(&Method::GET, "/services/x/logs"),
            Some(Op::NoSwarm(NOT_A_MANAGER))
        );
        assert_eq!(
            route(&Method::GET, "/nodes"),
            Some(Op::NoSwarm(NOT_A_MANAGER))
        );
        assert_eq!(route(&Method::GET, "/plugins"), Some(Op::PluginsList));
        assert_eq!(
            route(&Method::GET, "/plugins/vieux/sshfs/json"),
            Some(Op::PluginNotFound("vieux/sshfs".into()))
        );
        assert_eq!(
            route(&Method::DELETE, "/plugins/sshfs"),
            Some(Op::PluginNotFound("sshfs".into()))
        );
        assert_eq!(route(&Method::GET, "/swarmish"), None);
    }
}
