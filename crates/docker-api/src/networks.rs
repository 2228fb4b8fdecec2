//! The network endpoints (`/networks/...`): their request and response bodies, routes, the
//! list and prune filters, and [`dispatch_networks`], which the server calls for every
//! [`NetworkOp`]. Shapes and messages follow moby's api/swagger.yaml and dockerd.

use crate::error::{ApiError, ApiResult};
use crate::filters::{label_matches, name_matches, Filters};
use crate::server::{empty, json, read_json, Query, Resp};
use crate::types::EndpointSettings;
use crate::Backend;
use http::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The networks every engine has and no one may remove.
pub const PREDEFINED: &[&str] = &["bridge", "host", "none"];

/// A network as `GET /networks/{id}` returns it (and `GET /networks`, without containers).
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct Network {
    pub name: String,
    #[serde(rename = "Id")]
    pub id: String,
    pub created: String,
    pub scope: String,
    pub driver: String,
    #[serde(rename = "EnableIPv4")]
    pub enable_ipv4: bool,
    #[serde(rename = "EnableIPv6")]
    pub enable_ipv6: bool,
    #[serde(rename = "IPAM")]
    pub ipam: Ipam,
    pub internal: bool,
    pub attachable: bool,
    pub ingress: bool,
    pub config_from: ConfigReference,
    pub config_only: bool,
    /// Container id → its endpoint, for running containers (as dockerd: endpoints exist
    /// while a container's sandbox does).
    pub containers: BTreeMap<String, NetworkContainer>,
    pub options: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct Ipam {
    pub driver: String,
    pub options: Option<BTreeMap<String, String>>,
    pub config: Option<Vec<IpamConfig>>,
}

/// A JSON null read as the empty string (docker-py sends `"Gateway": null`).
fn null_as_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(Option::<String>::deserialize(d)?.unwrap_or_default())
}

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "PascalCase", default)]
pub struct IpamConfig {
    #[serde(
        skip_serializing_if = "String::is_empty",
        deserialize_with = "null_as_empty"
    )]
    pub subnet: String,
    #[serde(
        rename = "IPRange",
        skip_serializing_if = "String::is_empty",
        deserialize_with = "null_as_empty"
    )]
    pub ip_range: String,
    #[serde(
        skip_serializing_if = "String::is_empty",
        deserialize_with = "null_as_empty"
    )]
    pub gateway: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auxiliary_addresses: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "PascalCase", default)]
pub struct ConfigReference {
    pub network: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "PascalCase", default)]
pub struct NetworkContainer {
    pub name: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    pub mac_address: String,
    #[serde(rename = "IPv4Address")]
    pub ipv4_address: String,
    #[serde(rename = "IPv6Address")]
    pub ipv6_address: String,
}

/// `POST /networks/create`.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct NetworkCreateRequest {
    pub name: String,
    /// Deprecated in the API; duplicates are always refused (as dockerd ≥ 25).
    pub check_duplicate: Option<bool>,
    pub driver: String,
    pub scope: String,
    pub internal: bool,
    pub attachable: bool,
    pub ingress: bool,
    pub config_only: bool,
    pub config_from: Option<ConfigReference>,
    #[serde(rename = "EnableIPv4")]
    pub enable_ipv4: Option<bool>,
    #[serde(rename = "EnableIPv6")]
    pub enable_ipv6: Option<bool>,
    #[serde(rename = "IPAM")]
    pub ipam: Option<Ipam>,
    pub options: Option<BTreeMap<String, String>>,
    pub labels: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct NetworkCreateResponse {
    pub id: String,
    pub warning: String,
}

/// `POST /networks/{id}/connect`.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct NetworkConnectRequest {
    pub container: String,
    pub endpoint_config: Option<EndpointSettings>,
}

/// `POST /networks/{id}/disconnect`.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct NetworkDisconnectRequest {
    pub container: String,
    pub force: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetworkOp {
    List,
    Create,
    Prune,
    Inspect(String),
    Delete(String),
    Connect(String),
    Disconnect(String),
}

/// Routes `/networks` and what follows it (`rest` is the path after `/networks`).
pub fn route(method: &Method, rest: &str) -> Option<NetworkOp> {
    let rest = match rest {
        "" | "/" => return (method == Method::GET).then_some(NetworkOp::List),
        r => r.strip_prefix('/')?,
    };
    let (id, op) = rest.split_once('/').unwrap_or((rest, ""));
    if id.is_empty() {
        return None;
    }
    let id = id.to_string();
    Some(match (method, id.as_str(), op) {
        (&Method::POST, "create", "") => NetworkOp::Create,
        (&Method::POST, "prune", "") => NetworkOp::Prune,
        (&Method::GET, _, "") => NetworkOp::Inspect(id),
        (&Method::DELETE, _, "") => NetworkOp::Delete(id),
        (&Method::POST, _, "connect") => NetworkOp::Connect(id),
        (&Method::POST, _, "disconnect") => NetworkOp::Disconnect(id),
        _ => return None,
    })
}

const LIST_FILTERS: &[&str] = &["name", "id", "label", "driver", "type", "dangling", "scope"];
const PRUNE_FILTERS: &[&str] = &["until", "label", "label!"];

fn is_builtin(n: &Network) -> bool {
    PREDEFINED.contains(&n.name.as_str())
}

fn bool_filter(f: &Filters, name: &str) -> ApiResult<Option<bool>> {
    let Some(values) = f.values(name) else {
        return Ok(None);
    };
    let mut out = None;
    for v in values {
        let b = match v.as_str() {
            "true" | "1" => true,
            "false" | "0" => false,
            _ => {
                return Err(ApiError::bad_request(format!(
                    "invalid filter '{name}={v}': invalid value"
                )))
            }
        };
        out = Some(b);
    }
    Ok(out)
}

/// Keeps the networks `GET /networks?filters=` accepts (dockerd's semantics: `name` and
/// `id` match as patterns, `type` is `custom` or `builtin`, `dangling` means a custom
/// network without containers).
pub fn filter_list(f: &Filters, list: Vec<Network>) -> ApiResult<Vec<Network>> {
    f.check(LIST_FILTERS)?;
    for t in f.values("type").unwrap_or_default() {
        if t != "custom" && t != "builtin" {
            return Err(ApiError::bad_request(format!(
                "invalid filter: 'type'='{t}'"
            )));
        }
    }
    let dangling = bool_filter(f, "dangling")?;
    Ok(list
        .into_iter()
        .filter(|n| {
            f.any("name", |v| name_matches(v, &n.name))
                && f.any("id", |v| name_matches(v, &n.id))
                && f.all("label", |v| label_matches(v, &n.labels))
                && f.any("driver", |v| v == n.driver)
                && f.any("scope", |v| v == n.scope)
                && f.any("type", |v| (v == "builtin") == is_builtin(n))
                && dangling.is_none_or(|d| d == (!is_builtin(n) && n.containers.is_empty()))
        })
        .collect())
}

/// `until` of prune: Unix seconds, an RFC 3339 time, or a Go duration before now (`24h`,
/// `90m`, `1h30m`, `10s`).
pub fn parse_until(v: &str, now: i64) -> Option<i64> {
    if let Ok(n) = v.parse::<f64>() {
        return Some(n as i64);
    }
    if v.contains('T') || v.contains('-') {
        let t = crate::time::unix_from_rfc3339(v);
        return (t > 0).then_some(t);
    }
    let mut total = 0f64;
    let mut num = String::new();
    for c in v.chars() {
        if c.is_ascii_digit() || c == '.' {
            num.push(c);
            continue;
        }
        let n: f64 = num.parse().ok()?;
        num.clear();
        total += n * match c {
            'h' => 3600.0,
            'm' => 60.0,
            's' => 1.0,
            _ => return None,
        };
    }
    num.is_empty().then_some(now - total as i64)
}

/// The custom networks without containers that prune's filters accept.
pub fn prune_candidates(f: &Filters, list: Vec<Network>, now: i64) -> ApiResult<Vec<Network>> {
    f.check(PRUNE_FILTERS)?;
    let mut until = Vec::new();
    for v in f.values("until").unwrap_or_default() {
        until.push(
            parse_until(v, now)
                .ok_or_else(|| ApiError::bad_request(format!("invalid filter 'until={v}'")))?,
        );
    }
    Ok(list
        .into_iter()
        .filter(|n| {
            let created = crate::time::unix_from_rfc3339(&n.created);
            !is_builtin(n)
                && n.containers.is_empty()
                && until.iter().all(|&u| created < u)
                && f.all("label", |v| label_matches(v, &n.labels))
                && f.values("label!")
                    .unwrap_or_default()
                    .iter()
                    .all(|v| !label_matches(v, &n.labels))
        })
        .collect())
}

fn now_secs() -> i64 {
    (crate::time::now_nanos() / 1_000_000_000) as i64
}

/// Serves one network request.
pub(crate) async fn dispatch_networks<B: Backend>(
    b: Arc<B>,
    req: crate::server::Req,
    q: Query,
    op: NetworkOp,
) -> ApiResult<Resp> {
    let filters = || Filters::parse(q.get("filters"));
    Ok(match op {
        NetworkOp::List => {
            let mut list = filter_list(&filters()?, b.networks().await?)?;
            // dockerd lists endpoints only in inspect.
            for n in &mut list {
                n.containers.clear();
            }
            json(StatusCode::OK, &list)
        }
        NetworkOp::Inspect(id) => {
            let n = b.network_inspect(&id).await?;
            if let Some(scope) = q.get("scope") {
                if scope != n.scope {
                    return Err(ApiError::not_found(format!("network {id} not found")));
                }
            }
            json(StatusCode::OK, &n)
        }
        NetworkOp::Create => {
            let body: NetworkCreateRequest = read_json(req.into_body().take()?).await?;
            json(StatusCode::CREATED, &b.network_create(body).await?)
        }
        NetworkOp::Delete(id) => {
            b.network_remove(&id).await?;
            empty(StatusCode::NO_CONTENT)
        }
        NetworkOp::Connect(id) => {
            let body: NetworkConnectRequest = read_json(req.into_body().take()?).await?;
            b.network_connect(&id, body).await?;
            empty(StatusCode::OK)
        }
        NetworkOp::Disconnect(id) => {
            let body: NetworkDisconnectRequest = read_json(req.into_body().take()?).await?;
            b.network_disconnect(&id, body).await?;
            empty(StatusCode::OK)
        }
        NetworkOp::Prune => {
            let f = filters()?;
            let mut deleted = Vec::new();
            for n in prune_candidates(&f, b.networks().await?, now_secs())? {
                // One in use meanwhile (or refused) stays, as dockerd skips it.
                if b.network_remove(&n.id).await.is_ok() {
                    deleted.push(n.name);
                }
            }
            json(
                StatusCode::OK,
                &serde_json::json!({ "NetworksDeleted": deleted }),
            )
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(name: &str, driver: &str, containers: usize) -> Network {
        Network {
            name: name.into(),
            id: format!("{name:0<64}").replace(|c: char| !c.is_ascii_hexdigit(), "a"),
            driver: driver.into(),
            scope: "local".into(),
            created: "2026-12-01T20:00:00Z".into(),
            containers: (0..containers)
                .map(|i| (i.to_string(), NetworkContainer::default()))
                .collect(),
            ..Default::default()
        }
    }

    fn names(l: &[Network]) -> Vec<&str> {
        l.iter().map(|n| n.name.as_str()).collect()
    }

    fn all() -> Vec<Network> {
        let mut web = net("web", "bridge", 1);
        web.labels.insert("tier".into(), "front".into());
        vec![
            net("bridge", "bridge", 0),
            net("host", "host", 0),
            net("none", "null", 0),
            web,
            net("db", "bridge", 0),
        ]
    }

    fn f(j: &str) -> Filters {
        Filters::parse(Some(j)).unwrap()
    }

    #[test]
    fn routes() {
        assert_eq!(route(&Method::GET, ""), Some(NetworkOp::List));
        assert_eq!(route(&Method::POST, "/create"), Some(NetworkOp::Create));
        assert_eq!(route(&Method::POST, "/prune"), Some(NetworkOp::Prune));
        assert_eq!(
            route(&Method::GET, "/abc"),
            Some(NetworkOp::Inspect("abc".into()))
        );
        assert_eq!(
            route(&Method::DELETE, "/abc"),
            Some(NetworkOp::Delete("abc".into()))
        );
        assert_eq!(
            route(&Method::POST, "/abc/connect"),
            Some(NetworkOp::Connect("abc".into()))
        );
        assert_eq!(
            route(&Method::POST, "/abc/disconnect"),
            Some(NetworkOp::Disconnect("abc".into()))
        );
        assert_eq!(route(&Method::POST, "/abc/nope"), None);
        assert_eq!(route(&Method::GET, "foo"), None);
        assert_eq!(route(&Method::GET, "//x"), None);
    }

    #[test]
    fn list_filters() {
        let l = |j| names(&filter_list(&f(j), all()).unwrap()).join(",");
        assert_eq!(l(r#"{"name":["we"]}"#), "web");
        assert_eq!(l(r#"{"name":["^b"]}"#), "bridge");
        assert_eq!(l(r#"{"driver":["bridge"]}"#), "bridge,web,db");
        assert_eq!(l(r#"{"type":["custom"]}"#), "web,db");
        assert_eq!(l(r#"{"type":["builtin"]}"#), "bridge,host,none");
        assert_eq!(l(r#"{"dangling":["true"]}"#), "db");
        assert_eq!(l(r#"{"dangling":["false"]}"#), "bridge,host,none,web");
        assert_eq!(l(r#"{"label":["tier=front"]}"#), "web");
        assert_eq!(l(r#"{"label":["tier"],"driver":["null"]}"#), "");
        assert_eq!(
            l(r#"{"label":["tier","tier=front"]}"#),
            "web",
            "labels are ANDed"
        );
        assert_eq!(l(r#"{"label":["tier","other"]}"#), "");
        assert_eq!(l(r#"{"scope":["local"]}"#), "bridge,host,none,web,db");
        let id = all()[4].id.clone();
        assert_eq!(l(&format!(r#"{{"id":["{}"]}}"#, &id[..6])), "db");
        for bad in [
            r#"{"type":["x"]}"#,
            r#"{"dangling":["maybe"]}"#,
            r#"{"status":["x"]}"#,
        ] {
            let e = filter_list(&f(bad), all()).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{bad}");
        }
    }

    #[test]
    fn prune_filters() {
        let now = crate::time::unix_from_rfc3339("2026-12-01T21:00:00Z");
        let p = |j| names(&prune_candidates(&f(j), all(), now).unwrap()).join(",");
        assert_eq!(p("{}"), "db", "builtin and used networks stay");
        assert_eq!(p(r#"{"until":["30m"]}"#), "db");
        assert_eq!(p(r#"{"until":["2h"]}"#), "");
        assert_eq!(p(r#"{"label!":["tier"]}"#), "db");
        assert_eq!(p(r#"{"label":["tier"]}"#), "");
        assert!(prune_candidates(&f(r#"{"until":["soon"]}"#), all(), now).is_err());
        assert_eq!(parse_until("1h30m", 10_000), Some(10_000 - 5400));
        assert_eq!(parse_until("1700000000", 0), Some(1_700_000_000));
    }

    #[test]
    fn create_request_from_the_cli() {
        let body = r#"{"Name":"n1","CheckDuplicate":true,"Driver":"bridge","Scope":"",
            "EnableIPv6":false,"IPAM":{"Driver":"default","Options":{},
            "Config":[{"Subnet":"10.5.0.0/16","IPRange":"10.5.1.0/24","Gateway":"10.5.0.1"}]},
            "Internal":true,"Attachable":false,"Ingress":false,"ConfigOnly":false,
            "ConfigFrom":null,"Options":{"com.docker.network.bridge.name":"br-x"},
            "Labels":{"a":"b"}}"#;
        let r: NetworkCreateRequest = serde_json::from_str(body).unwrap();
        assert_eq!(r.name, "n1");
        // docker-py's IPAMPool sends nulls for what it was not given.
        let py = r#"{"Name":"p","IPAM":{"Driver":"default","Config":[{"Subnet":"10.6.0.0/16",
            "IPRange":null,"Gateway":null,"AuxiliaryAddresses":null}]}}"#;
        let p: NetworkCreateRequest = serde_json::from_str(py).unwrap();
        let c = &p.ipam.unwrap().config.unwrap()[0];
        assert_eq!((c.subnet.as_str(), c.gateway.as_str()), ("10.6.0.0/16", ""));
        assert!(r.internal);
        let c = &r.ipam.unwrap().config.unwrap()[0];
        assert_eq!(
            (c.subnet.as_str(), c.ip_range.as_str(), c.gateway.as_str()),
            ("10.5.0.0/16", "10.5.1.0/24", "10.5.0.1")
        );
        let v = serde_json::to_value(Network::default()).unwrap();
        for k in [
            "Name",
            "Id",
            "Created",
            "Scope",
            "Driver",
            "EnableIPv6",
            "IPAM",
            "Internal",
            "Attachable",
            "Ingress",
            "ConfigFrom",
            "ConfigOnly",
            "Containers",
            "Options",
            "Labels",
        ] {
            assert!(v.get(k).is_some(), "{k} missing from {v}");
        }
    }
}
