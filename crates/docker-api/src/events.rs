//! `GET /events`: the message shape dockerd writes (with the legacy `status`/`id`/`from`),
//! the `since`/`until` times and the event filters, applied by the front end to what a back
//! end's event bus delivers, so both back ends filter the same way.

use crate::error::{ApiError, ApiResult};
use crate::filters::{label_matches, Filters};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Who an event is about: a container's, image's, volume's or network's id and attributes
/// (`name`, `image`, labels, `exitCode`, `signal`, ...).
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct EventActor {
    #[serde(rename = "ID")]
    pub id: String,
    pub attributes: BTreeMap<String, String>,
}

/// One line of `GET /events`.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq, Eq)]
pub struct EventMessage {
    /// Legacy fields (container and image events only), as dockerd still sends them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(rename = "Type")]
    pub kind: String,
    #[serde(rename = "Action")]
    pub action: String,
    #[serde(rename = "Actor")]
    pub actor: EventActor,
    pub scope: String,
    pub time: i64,
    #[serde(rename = "timeNano")]
    pub time_nano: i128,
}

impl EventMessage {
    /// An event of `kind` (container, image, volume, network, daemon) about `id`, now.
    pub fn new(
        kind: &str,
        action: &str,
        id: &str,
        attributes: BTreeMap<String, String>,
        time_nano: i128,
    ) -> Self {
        let legacy = matches!(kind, "container" | "image");
        EventMessage {
            status: legacy.then(|| action.to_string()),
            id: legacy.then(|| id.to_string()),
            from: if kind == "container" {
                attributes.get("image").cloned()
            } else {
                None
            },
            kind: kind.into(),
            action: action.into(),
            actor: EventActor {
                id: id.into(),
                attributes,
            },
            scope: "local".into(),
            time: (time_nano / 1_000_000_000) as i64,
            time_nano,
        }
    }
}

const EVENT_FILTERS: &[&str] = &[
    "config",
    "container",
    "daemon",
    "event",
    "image",
    "label",
    "network",
    "node",
    "plugin",
    "scope",
    "secret",
    "service",
    "type",
    "volume",
];
const EVENT_TYPES: &[&str] = &[
    "builder",
    "config",
    "container",
    "daemon",
    "image",
    "network",
    "node",
    "plugin",
    "secret",
    "service",
    "volume",
];

/// Checks the filter names and `type` values (400 on unknown, as dockerd answers).
pub fn check_filters(f: &Filters) -> ApiResult<()> {
    if let Some(k) = f.names().find(|k| !EVENT_FILTERS.contains(k)) {
        return Err(ApiError::bad_request(format!("invalid filter '{k}'")));
    }
    for t in f.values("type").unwrap_or_default() {
        if !EVENT_TYPES.contains(&t.as_str()) {
            return Err(ApiError::bad_request(format!(
                "invalid filter 'type={t}': unknown event type"
            )));
        }
    }
    Ok(())
}

fn any(f: &Filters, name: &str, accept: impl Fn(&str) -> bool) -> bool {
    f.values(name).is_none_or(|vs| vs.iter().any(|v| accept(v)))
}

/// Does `e` pass the filters? As dockerd's: values of one name ORed, names ANDed; `container`
/// matches the id (or a prefix of it) or the name; `image` the image attribute of container
/// events or the id/name of image events; `event` the action (`exec_start` matches
/// `exec_start: sh -c ...`).
pub fn matches(f: &Filters, e: &EventMessage) -> bool {
    let attr = |k: &str| e.actor.attributes.get(k).map(String::as_str);
    let is = |kind: &str, v: &str| {
        e.kind == kind && (e.actor.id.starts_with(v) || attr("name") == Some(v))
    };
    let image_is = |v: &str| {
        let strip = |s: &str| s.strip_suffix(":latest").unwrap_or(s).to_string();
        let want = strip(v);
        let candidates = [
            attr("image").map(str::to_string),
            (e.kind == "image").then(|| e.actor.id.clone()),
            (e.kind == "image").then(|| attr("name").unwrap_or("").to_string()),
        ];
        candidates
            .into_iter()
            .flatten()
            .any(|c| !c.is_empty() && (strip(&c) == want || c.starts_with(v)))
    };
    any(f, "type", |v| e.kind == v)
        && any(f, "container", |v| is("container", v))
        && any(f, "image", image_is)
        && any(f, "volume", |v| is("volume", v))
        && any(f, "network", |v| is("network", v))
        && any(f, "daemon", |v| is("daemon", v))
        && any(f, "plugin", |v| is("plugin", v))
        && any(f, "scope", |v| e.scope == v)
        && any(f, "event", |v| {
            e.action == v || e.action.split(':').next() == Some(v)
        })
        && any(f, "label", |v| label_matches(v, &e.actor.attributes))
        && ["config", "node", "secret", "service"]
            .iter()
            .all(|k| !f.has(k))
}

/// `since`/`until`: seconds since the epoch with an optional fraction (`1700000000.5`, what
/// the CLI sends), or an RFC 3339 time; in nanoseconds.
pub fn parse_time(name: &str, v: &str) -> ApiResult<i128> {
    let bad = || ApiError::bad_request(format!("invalid value for {name}: {v:?}"));
    if let Some((secs, frac)) = v.split_once('.') {
        let s: i128 = secs.parse().map_err(|_| bad())?;
        if frac.is_empty() || frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let n: i128 = format!("{frac:0<9}").parse().map_err(|_| bad())?;
        return Ok(s * 1_000_000_000 + n);
    }
    if let Ok(s) = v.parse::<i128>() {
        return Ok(s * 1_000_000_000);
    }
    let s = crate::time::unix_from_rfc3339(v);
    if s == 0 {
        return Err(bad());
    }
    Ok(s as i128 * 1_000_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(kind: &str, action: &str, id: &str, attrs: &[(&str, &str)]) -> EventMessage {
        EventMessage::new(
            kind,
            action,
            id,
            attrs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            1_700_000_000_123_456_789,
        )
    }

    fn f(j: &str) -> Filters {
        Filters::parse(Some(j)).unwrap()
    }

    #[test]
    fn message_shape_is_dockerds() {
        let e = ev(
            "container",
            "die",
            "abc",
            &[("image", "busybox"), ("name", "web"), ("exitCode", "3")],
        );
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["status"], "die");
        assert_eq!(v["id"], "abc");
        assert_eq!(v["from"], "busybox");
        assert_eq!(v["Type"], "container");
        assert_eq!(v["Action"], "die");
        assert_eq!(v["Actor"]["ID"], "abc");
        assert_eq!(v["Actor"]["Attributes"]["exitCode"], "3");
        assert_eq!(v["scope"], "local");
        assert_eq!(v["time"], 1_700_000_000);
        assert_eq!(v["timeNano"], 1_700_000_000_123_456_789i64);
        let n = serde_json::to_value(ev("network", "create", "n1", &[("name", "x")])).unwrap();
        assert!(n.get("status").is_none() && n.get("from").is_none());
    }

    #[test]
    fn filters_match_as_dockerd() {
        let e = ev(
            "container",
            "start",
            "abcdef",
            &[("image", "busybox:latest"), ("name", "web"), ("app", "1")],
        );
        assert!(matches(&Filters::default(), &e));
        assert!(matches(&f(r#"{"type":["container"]}"#), &e));
        assert!(!matches(&f(r#"{"type":["image"]}"#), &e));
        assert!(matches(&f(r#"{"container":["web"]}"#), &e));
        assert!(matches(&f(r#"{"container":["abc"]}"#), &e));
        assert!(!matches(&f(r#"{"container":["other"]}"#), &e));
        assert!(matches(&f(r#"{"image":["busybox"]}"#), &e));
        assert!(matches(&f(r#"{"event":["start","die"]}"#), &e));
        assert!(!matches(&f(r#"{"event":["die"]}"#), &e));
        assert!(matches(&f(r#"{"label":["app=1"]}"#), &e));
        assert!(!matches(&f(r#"{"label":["app=2"]}"#), &e));
        assert!(!matches(&f(r#"{"event":["start"],"type":["volume"]}"#), &e));
        let x = ev("container", "exec_start: sh -c true", "abcdef", &[]);
        assert!(matches(&f(r#"{"event":["exec_start"]}"#), &x));
        let v = ev("volume", "create", "data", &[("driver", "local")]);
        assert!(matches(&f(r#"{"volume":["data"]}"#), &v));
        assert!(!matches(&f(r#"{"volume":["data"]}"#), &e));
        assert!(check_filters(&f(r#"{"nope":["x"]}"#)).is_err());
        assert!(check_filters(&f(r#"{"type":["bogus"]}"#)).is_err());
        assert!(check_filters(&f(r#"{"type":["container"],"event":["die"]}"#)).is_ok());
    }

    #[test]
    fn times() {
        assert_eq!(parse_time("since", "10").unwrap(), 10_000_000_000);
        assert_eq!(parse_time("since", "10.5").unwrap(), 10_500_000_000);
        assert_eq!(
            parse_time("since", "1700000000.000000001").unwrap(),
            1_700_000_000_000_000_001
        );
        assert_eq!(
            parse_time("until", "2023-11-14T22:13:20Z").unwrap(),
            1_700_000_000_000_000_000
        );
        assert!(parse_time("since", "soon").is_err());
        assert!(parse_time("since", "1.x").is_err());
    }
}
