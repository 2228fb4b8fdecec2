//! Volumes: the `/volumes` routes (create, list, inspect, remove, prune), their bodies, the
//! list and prune filters (applied here, so every back end filters the same way), and the
//! container-side mount types (`HostConfig.Mounts`).

use crate::error::{ApiError, ApiResult};
use crate::filters::{label_matches, name_matches, Filters};
use crate::server::{empty, json, read_json, Query, Req, Resp};
use crate::Backend;
use http::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The label dockerd puts on the volumes it creates for a container (`-v /path`, an image's
/// `VOLUME`, `--mount type=volume` without a source); `volume prune` removes only these
/// unless `all=true` (API 1.42 and later).
pub const ANONYMOUS_LABEL: &str = "com.docker.volume.anonymous";

/// `GET /volumes/{name}`, an item of `GET /volumes`, the answer of create.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct Volume {
    pub created_at: String,
    pub driver: String,
    pub labels: Option<BTreeMap<String, String>>,
    pub mountpoint: String,
    pub name: String,
    pub options: Option<BTreeMap<String, String>>,
    pub scope: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<BTreeMap<String, serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage_data: Option<UsageData>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct UsageData {
    pub size: i64,
    pub ref_count: i64,
}

/// `POST /volumes/create` body.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct VolumeCreateRequest {
    #[serde(deserialize_with = "null_as_empty")]
    pub name: String,
    #[serde(deserialize_with = "null_as_empty")]
    pub driver: String,
    pub driver_opts: Option<BTreeMap<String, String>>,
    pub labels: Option<BTreeMap<String, String>>,
    /// Swarm cluster volumes: refused (this is not a swarm manager).
    pub cluster_volume_spec: Option<serde_json::Value>,
}

/// docker-py sends `"Name": null` for a volume without a name.
fn null_as_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(Option::<String>::deserialize(d)?.unwrap_or_default())
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct VolumeListResponse {
    pub volumes: Vec<Volume>,
    pub warnings: Option<Vec<String>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct VolumePruneResponse {
    pub volumes_deleted: Vec<String>,
    pub space_reclaimed: u64,
}

/// A volume as a back end lists it: the volume and the containers that use it.
#[derive(Debug, Clone, Default)]
pub struct VolumeEntry {
    pub volume: Volume,
    pub refs: Vec<String>,
}

/// One `HostConfig.Mounts` item, echoed back by container inspect as the client sent it.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct Mount {
    #[serde(rename = "Type")]
    pub kind: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub source: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub target: String,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub consistency: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bind_options: Option<BindOptions>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub volume_options: Option<VolumeOptions>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tmpfs_options: Option<TmpfsOptions>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct BindOptions {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub propagation: String,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub non_recursive: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub create_mountpoint: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub read_only_non_recursive: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub read_only_force_recursive: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct VolumeOptions {
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub no_copy: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub driver_config: Option<DriverConfig>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub subpath: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct DriverConfig {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub options: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct TmpfsOptions {
    #[serde(skip_serializing_if = "is_zero")]
    pub size_bytes: i64,
    /// A Go `os.FileMode`: the permission bits as a number (the CLI sends 1770 octal as 1016).
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub mode: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub options: Option<Vec<Vec<String>>>,
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}
fn is_zero_u32(n: &u32) -> bool {
    *n == 0
}

/// The operations under `/volumes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeOp {
    List,
    Create,
    Prune,
    Inspect(String),
    Remove(String),
}

/// Routes a path below `/volumes` (`rest` is what follows `/volumes`, maybe empty).
pub fn route(method: &Method, rest: &str) -> Option<VolumeOp> {
    let rest = rest.strip_prefix('/').unwrap_or(rest);
    Some(match (method, rest) {
        (&Method::GET, "") => VolumeOp::List,
        (&Method::POST, "create") => VolumeOp::Create,
        (&Method::POST, "prune") => VolumeOp::Prune,
        (_, n) if n.is_empty() || n.contains('/') => return None,
        (&Method::GET, n) => VolumeOp::Inspect(n.to_string()),
        (&Method::DELETE, n) => VolumeOp::Remove(n.to_string()),
        _ => return None,
    })
}

const LIST_FILTERS: &[&str] = &["name", "label", "dangling", "driver"];
const PRUNE_FILTERS: &[&str] = &["label", "label!", "all"];

fn bool_value(key: &str, v: &str) -> ApiResult<bool> {
    match v {
        "true" | "1" | "True" | "TRUE" => Ok(true),
        "false" | "0" | "False" | "FALSE" => Ok(false),
        _ => Err(ApiError::bad_request(format!("invalid filter '{key}={v}'"))),
    }
}

/// Keeps the listed volumes the filters accept (400 on an unknown filter).
pub fn filter_list(f: &Filters, list: Vec<VolumeEntry>) -> ApiResult<Vec<VolumeEntry>> {
    f.check(LIST_FILTERS)?;
    let dangling: Vec<bool> = f
        .values("dangling")
        .unwrap_or_default()
        .iter()
        .map(|v| bool_value("dangling", v))
        .collect::<ApiResult<_>>()?;
    Ok(list
        .into_iter()
        .filter(|e| {
            let labels = e.volume.labels.clone().unwrap_or_default();
            f.any("name", |v| name_matches(v, &e.volume.name))
                && f.any("driver", |v| e.volume.driver == v)
                && f.any("label", |v| label_matches(v, &labels))
                && (dangling.is_empty() || dangling.contains(&e.refs.is_empty()))
        })
        .collect())
}

/// The volumes prune would remove: unused, matching the label filters, and anonymous unless
/// `all` (API 1.42 and later; older clients prune every unused volume, as dockerd does).
pub fn prune_candidates(
    f: &Filters,
    version: Option<&str>,
    list: &[VolumeEntry],
) -> ApiResult<Vec<String>> {
    f.check(PRUNE_FILTERS)?;
    let old_api = version
        .and_then(crate::version::parse)
        .is_some_and(|v| v < (1, 42));
    let mut all = old_api;
    for v in f.values("all").unwrap_or_default() {
        all = bool_value("all", v)?;
    }
    Ok(list
        .iter()
        .filter(|e| {
            let labels = e.volume.labels.clone().unwrap_or_default();
            e.refs.is_empty()
                && (all || labels.contains_key(ANONYMOUS_LABEL))
                && f.any("label", |v| label_matches(v, &labels))
                && f.values("label!")
                    .unwrap_or_default()
                    .iter()
                    .all(|v| !label_matches(v, &labels))
        })
        .map(|e| e.volume.name.clone())
        .collect())
}

/// Serves one `/volumes` operation.
pub(crate) async fn dispatch_volumes<B: Backend>(
    b: Arc<B>,
    req: Req,
    q: Query,
    version: Option<&str>,
    op: VolumeOp,
) -> ApiResult<Resp> {
    let filters = || Filters::parse(q.get("filters"));
    Ok(match op {
        VolumeOp::List => {
            let f = filters()?;
            let list = filter_list(&f, b.volumes().await?)?;
            json(
                StatusCode::OK,
                &VolumeListResponse {
                    volumes: list.into_iter().map(|e| e.volume).collect(),
                    warnings: None,
                },
            )
        }
        VolumeOp::Create => {
            let body: VolumeCreateRequest = read_json(req.into_body().take()?).await?;
            if body.cluster_volume_spec.is_some() {
                return Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "This node is not a swarm manager. Use \"docker swarm init\" or \"docker swarm \
                        join\" to connect this node to swarm and try again.",
                ));
            }
            json(StatusCode::CREATED, &b.volume_create(body).await?)
        }
        VolumeOp::Inspect(name) => json(StatusCode::OK, &b.volume_inspect(&name).await?),
        VolumeOp::Remove(name) => {
            b.volume_remove(&name, q.flag("force")).await?;
            empty(StatusCode::NO_CONTENT)
        }
        VolumeOp::Prune => {
            let f = filters()?;
            let names = prune_candidates(&f, version, &b.volumes().await?)?;
            let (deleted, space) = b.volume_prune(names).await?;
            json(
                StatusCode::OK,
                &VolumePruneResponse {
                    volumes_deleted: deleted,
                    space_reclaimed: space,
                },
            )
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, labels: &[(&str, &str)], refs: &[&str]) -> VolumeEntry {
        VolumeEntry {
            volume: Volume {
                name: name.into(),
                driver: "local".into(),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..Default::default()
            },
            refs: refs.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn names(l: &[VolumeEntry]) -> Vec<&str> {
        l.iter().map(|e| e.volume.name.as_str()).collect()
    }

    #[test]
    fn routes() {
        assert_eq!(route(&Method::GET, ""), Some(VolumeOp::List));
        assert_eq!(route(&Method::POST, "/create"), Some(VolumeOp::Create));
        assert_eq!(route(&Method::POST, "/prune"), Some(VolumeOp::Prune));
        assert_eq!(
            route(&Method::GET, "/v1"),
            Some(VolumeOp::Inspect("v1".into()))
        );
        assert_eq!(
            route(&Method::DELETE, "/v1"),
            Some(VolumeOp::Remove("v1".into()))
        );
        assert_eq!(route(&Method::GET, "/a/b"), None);
        assert_eq!(route(&Method::PATCH, "/a"), None);
        assert_eq!(route(&Method::DELETE, ""), None);
    }

    #[test]
    fn list_filters() {
        let l = vec![
            entry("data1", &[("team", "a")], &["c1"]),
            entry("data2", &[("team", "b")], &[]),
            entry("other", &[], &[]),
        ];
        let f = |s: &str| Filters::parse(Some(s)).unwrap();
        let got = filter_list(&f(r#"{"name":["data"]}"#), l.clone()).unwrap();
        assert_eq!(names(&got), ["data1", "data2"]);
        let got = filter_list(&f(r#"{"label":["team=b"]}"#), l.clone()).unwrap();
        assert_eq!(names(&got), ["data2"]);
        let got = filter_list(&f(r#"{"label":["team"]}"#), l.clone()).unwrap();
        assert_eq!(names(&got), ["data1", "data2"]);
        let got = filter_list(&f(r#"{"dangling":["true"]}"#), l.clone()).unwrap();
        assert_eq!(names(&got), ["data2", "other"]);
        let got = filter_list(&f(r#"{"dangling":["0"]}"#), l.clone()).unwrap();
        assert_eq!(names(&got), ["data1"]);
        let got = filter_list(&f(r#"{"driver":["nfs"]}"#), l.clone()).unwrap();
        assert!(got.is_empty());
        let e = filter_list(&f(r#"{"dangling":["maybe"]}"#), l.clone()).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        let e = filter_list(&f(r#"{"size":["1"]}"#), l).unwrap_err();
        assert_eq!(e.message, "invalid filter 'size'");
    }

    #[test]
    fn prune_takes_anonymous_unused_volumes_unless_all() {
        let l = vec![
            entry("named", &[], &[]),
            entry("anon1", &[(ANONYMOUS_LABEL, "")], &[]),
            entry("anon2", &[(ANONYMOUS_LABEL, "")], &["c1"]),
            entry("kept", &[("keep", "1")], &[]),
        ];
        let f = |s: &str| Filters::parse(Some(s)).unwrap();
        let none = Filters::default();
        assert_eq!(
            prune_candidates(&none, Some("1.47"), &l).unwrap(),
            ["anon1"]
        );
        assert_eq!(prune_candidates(&none, None, &l).unwrap(), ["anon1"]);
        // Before 1.42 every unused volume goes.
        assert_eq!(
            prune_candidates(&none, Some("1.41"), &l).unwrap(),
            ["named", "anon1", "kept"]
        );
        assert_eq!(
            prune_candidates(&f(r#"{"all":["true"]}"#), Some("1.47"), &l).unwrap(),
            ["named", "anon1", "kept"]
        );
        assert_eq!(
            prune_candidates(&f(r#"{"all":["1"],"label!":["keep"]}"#), None, &l).unwrap(),
            ["named", "anon1"]
        );
        assert_eq!(
            prune_candidates(&f(r#"{"all":["1"],"label":["keep=1"]}"#), None, &l).unwrap(),
            ["kept"]
        );
        assert!(prune_candidates(&f(r#"{"dangling":["1"]}"#), None, &l).is_err());
        assert!(prune_candidates(&f(r#"{"all":["x"]}"#), None, &l).is_err());
    }

    #[test]
    fn volume_and_mount_json_shapes() {
        let v = serde_json::to_value(Volume {
            name: "x".into(),
            ..Default::default()
        })
        .unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(|k| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "CreatedAt",
                "Driver",
                "Labels",
                "Mountpoint",
                "Name",
                "Options",
                "Scope"
            ]
        );
        // The CLI's `--mount type=tmpfs,destination=/t,tmpfs-size=1m,tmpfs-mode=1770`.
        let m: Mount = serde_json::from_str(
            r#"{"Type":"tmpfs","Target":"/t","TmpfsOptions":{"SizeBytes":1048576,"Mode":1016}}"#,
        )
        .unwrap();
        assert_eq!(m.tmpfs_options.as_ref().unwrap().mode, 0o1770);
        assert_eq!(
            serde_json::to_string(&m).unwrap(),
            r#"{"Type":"tmpfs","Target":"/t","TmpfsOptions":{"SizeBytes":1048576,"Mode":1016}}"#
        );
        let body: VolumeCreateRequest = serde_json::from_str(
            r#"{"Name":"v","Driver":"local","DriverOpts":{"type":"tmpfs"},"Labels":{}}"#,
        )
        .unwrap();
        assert_eq!(body.driver_opts.unwrap()["type"], "tmpfs");
        // docker-py's create_volume() without a name.
        let body: VolumeCreateRequest =
            serde_json::from_str(r#"{"Name":null,"Driver":null,"DriverOpts":null}"#).unwrap();
        assert_eq!((body.name.as_str(), body.driver.as_str()), ("", ""));
    }
}
