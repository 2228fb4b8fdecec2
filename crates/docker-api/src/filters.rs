//! The `filters` query of list endpoints (`docker ps -f`, `docker images -f`), applied by the
//! front end to what a back end lists, so every back end filters the same way.
//!
//! The CLI sends a JSON object of filter name → values (`{"name":["web"]}`); old clients
//! send name → {value: true}. Values of one name are ORed (`label`'s ANDed), different
//! names are ANDed, as in Docker. `name` is a pattern as in Docker: a substring, with `^` and `$`
//! anchors honoured
//! (Docker takes a full regular expression; the anchored substring covers what scripts
//! use). An unknown filter name is a 400, never ignored.

use std::collections::BTreeMap;

use crate::error::{ApiError, ApiResult};
use crate::types::{ContainerSummary, ImageSummary};

/// Parsed filters: name → accepted values.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Filters(BTreeMap<String, Vec<String>>);

const CONTAINER_FILTERS: &[&str] = &["id", "name", "status", "label", "ancestor", "exited"];
const IMAGE_FILTERS: &[&str] = &["reference", "dangling", "label", "before", "since"];
const STATUSES: &[&str] = &[
    "created",
    "restarting",
    "running",
    "removing",
    "paused",
    "exited",
    "dead",
];

impl Filters {
    /// Reads the `filters` query value (absent or empty: no filters).
    pub fn parse(raw: Option<&str>) -> ApiResult<Filters> {
        let Some(raw) = raw.filter(|r| !r.trim().is_empty()) else {
            return Ok(Filters::default());
        };
        let bad =
            |e: serde_json::Error| ApiError::bad_request(format!("invalid filters {raw:?}: {e}"));
        let value: serde_json::Value = serde_json::from_str(raw).map_err(bad)?;
        let serde_json::Value::Object(map) = value else {
            return Err(ApiError::bad_request(format!(
                "invalid filters {raw:?}: not a JSON object"
            )));
        };
        let mut out = BTreeMap::new();
        for (name, values) in map {
            let list: Vec<String> = match values {
                serde_json::Value::Array(a) => a
                    .into_iter()
                    .map(|v| v.as_str().map(str::to_owned))
                    .collect::<Option<_>>(),
                serde_json::Value::Object(o) => Some(
                    o.into_iter()
                        .filter(|(_, on)| on.as_bool() == Some(true))
                        .map(|(k, _)| k)
                        .collect(),
                ),
                _ => None,
            }
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "invalid filters {raw:?}: the values of {name:?} are not strings"
                ))
            })?;
            out.insert(name, list);
        }
        Ok(Filters(out))
    }

    pub(crate) fn check(&self, known: &[&str]) -> ApiResult<()> {
        match self.0.keys().find(|k| !known.contains(&k.as_str())) {
            Some(k) => Err(ApiError::bad_request(format!("invalid filter '{k}'"))),
            None => Ok(()),
        }
    }

    /// The values given for `name` (None when it is not filtered).
    pub fn values(&self, name: &str) -> Option<&[String]> {
        self.0.get(name).map(Vec::as_slice)
    }

    /// The filter names given.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    pub fn has(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }

    /// True when every value of `name` satisfies `accept` (dockerd ANDs `label` values:
    /// compose lists a project's service with `label=project=P&label=service=S`).
    pub(crate) fn all(&self, name: &str, accept: impl Fn(&str) -> bool) -> bool {
        self.0
            .get(name)
            .is_none_or(|values| values.iter().all(|v| accept(v)))
    }

    /// True when `name` is not filtered, or when any of its values satisfies `accept`.
    pub(crate) fn any(&self, name: &str, accept: impl Fn(&str) -> bool) -> bool {
        self.0
            .get(name)
            .is_none_or(|values| values.iter().any(|v| accept(v)))
    }

    /// Keeps the containers the filters accept. Checks the names first (400 on unknown).
    pub fn containers(&self, list: Vec<ContainerSummary>) -> ApiResult<Vec<ContainerSummary>> {
        self.check(CONTAINER_FILTERS)?;
        if let Some(bad) = self
            .0
            .get("status")
            .and_then(|v| v.iter().find(|s| !STATUSES.contains(&s.as_str())))
        {
            return Err(ApiError::bad_request(format!(
                "invalid filter 'status={bad}'"
            )));
        }
        let mut exited_codes = Vec::new();
        for v in self.0.get("exited").into_iter().flatten() {
            exited_codes.push(
                v.parse::<i64>()
                    .map_err(|_| ApiError::bad_request(format!("invalid filter 'exited={v}'")))?,
            );
        }
        Ok(list
            .into_iter()
            .filter(|c| {
                self.any("id", |v| c.id.starts_with(v))
                    && self.any("name", |v| {
                        c.names
                            .iter()
                            .any(|n| name_matches(v, n.trim_start_matches('/')))
                    })
                    && self.any("status", |v| c.state == v)
                    && self.all("label", |v| label_matches(v, &c.labels))
                    && self.any("ancestor", |v| {
                        c.image == v
                            || c.image == format!("{v}:latest")
                            || c.image_id
                                .trim_start_matches("sha256:")
                                .starts_with(v.trim_start_matches("sha256:"))
                    })
                    && (exited_codes.is_empty()
                        || (c.state == "exited"
                            && exit_code(&c.status)
                                .is_some_and(|code| exited_codes.contains(&code))))
            })
            .collect())
    }

    /// Keeps the images the filters accept. Checks the names first (400 on unknown).
    pub fn images(&self, list: Vec<ImageSummary>) -> ApiResult<Vec<ImageSummary>> {
        self.check(IMAGE_FILTERS)?;
        if let Some(bad) = self.0.get("dangling").and_then(|v| {
            v.iter()
                .find(|s| !["true", "false", "1", "0"].contains(&s.as_str()))
        }) {
            return Err(ApiError::bad_request(format!(
                "invalid filter 'dangling={bad}'"
            )));
        }
        let created_of = |reference: &str| -> ApiResult<i64> {
            list.iter()
                .find(|i| {
                    i.repo_tags
                        .iter()
                        .any(|t| t == reference || *t == format!("{reference}:latest"))
                        || i.id
                            .trim_start_matches("sha256:")
                            .starts_with(reference.trim_start_matches("sha256:"))
                })
                .map(|i| i.created)
                .ok_or_else(|| ApiError::not_found(format!("No such image: {reference}")))
        };
        let before: Vec<i64> = self
            .0
            .get("before")
            .into_iter()
            .flatten()
            .map(|r| created_of(r))
            .collect::<ApiResult<_>>()?;
        let since: Vec<i64> = self
            .0
            .get("since")
            .into_iter()
            .flatten()
            .map(|r| created_of(r))
            .collect::<ApiResult<_>>()?;
        Ok(list
            .into_iter()
            .filter(|i| {
                let dangling =
                    i.repo_tags.is_empty() || i.repo_tags.iter().all(|t| t == "<none>:<none>");
                self.any("dangling", |v| (v == "true" || v == "1") == dangling)
                    && self.all("label", |v| label_matches(v, &i.labels))
                    && before.iter().all(|&t| i.created < t)
                    && since.iter().all(|&t| i.created > t)
            })
            .filter_map(|mut i| {
                // As in Docker, a reference filter also narrows the tags shown.
                if let Some(patterns) = self.0.get("reference") {
                    i.repo_tags
                        .retain(|t| patterns.iter().any(|p| reference_matches(p, t)));
                    i.repo_digests
                        .retain(|d| patterns.iter().any(|p| reference_matches(p, d)));
                    if i.repo_tags.is_empty() && i.repo_digests.is_empty() {
                        return None;
                    }
                }
                Some(i)
            })
            .collect())
    }
}

/// Docker's name filter is a regular expression; this honours its common subset: a
/// substring, anchored by a leading `^` and/or a trailing `$`.
pub(crate) fn name_matches(pattern: &str, name: &str) -> bool {
    let (start, rest) = match pattern.strip_prefix('^') {
        Some(r) => (true, r),
        None => (false, pattern),
    };
    let (end, core) = match rest.strip_suffix('$') {
        Some(r) => (true, r),
        None => (false, rest),
    };
    match (start, end) {
        (true, true) => name == core,
        (true, false) => name.starts_with(core),
        (false, true) => name.ends_with(core),
        (false, false) => name.contains(core),
    }
}

const CONTAINER_PRUNE_FILTERS: &[&str] = &["until", "label", "label!"];

/// The filters of `POST /containers/prune`, as dockerd takes them: `until` (created before:
/// Unix seconds, an RFC 3339 time or a duration before now), `label` (every one must
/// match) and `label!` (none may). Other names are a 400.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ContainerPrune {
    until: Vec<i64>,
    filters: Filters,
}

impl ContainerPrune {
    /// `now`: Unix seconds, for durations.
    pub fn parse(filters: Filters, now: i64) -> ApiResult<ContainerPrune> {
        filters.check(CONTAINER_PRUNE_FILTERS)?;
        let mut until = Vec::new();
        for v in filters.values("until").unwrap_or_default() {
            until.push(
                crate::networks::parse_until(v, now)
                    .ok_or_else(|| ApiError::bad_request(format!("invalid filter 'until={v}'")))?,
            );
        }
        Ok(ContainerPrune { until, filters })
    }

    /// Whether a stopped container with these labels, created at `created` (Unix seconds),
    /// is pruned.
    pub fn matches(&self, labels: &BTreeMap<String, String>, created: i64) -> bool {
        self.until.iter().all(|&u| created < u)
            && self.filters.all("label", |v| label_matches(v, labels))
            && !self
                .filters
                .values("label!")
                .unwrap_or_default()
                .iter()
                .any(|v| label_matches(v, labels))
    }
}

/// `key` (present) or `key=value` (equal).
pub(crate) fn label_matches(filter: &str, labels: &BTreeMap<String, String>) -> bool {
    match filter.split_once('=') {
        Some((k, v)) => labels.get(k).is_some_and(|have| have == v),
        None => labels.contains_key(filter),
    }
}

/// Matches `repo`, `repo:tag` or `repo@digest` against a pattern naming the repository or
/// the whole reference, `*` matching within a path segment as Docker's glob does.
fn reference_matches(pattern: &str, reference: &str) -> bool {
    let repo = match reference.split_once('@') {
        Some((repo, _digest)) => repo,
        None => reference
            .rsplit_once(':')
            .filter(|(_, t)| !t.contains('/'))
            .map_or(reference, |(repo, _tag)| repo),
    };
    glob(pattern, reference) || glob(pattern, repo)
}

fn glob(pattern: &str, text: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == text,
        Some((head, tail)) => {
            let Some(rest) = text.strip_prefix(head) else {
                return false;
            };
            // `*` does not cross a `/`, as in path.Match.
            // Char boundaries first: `rest[..i]` inside a character panicked.
            (0..=rest.len())
                .filter(|&i| rest.is_char_boundary(i))
                .take_while(|&i| i == 0 || !rest[..i].contains('/'))
                .any(|i| glob(tail, &rest[i..]))
        }
    }
}

/// The code in a summary status such as `Exited (137) 5 seconds ago`.
fn exit_code(status: &str) -> Option<i64> {
    status
        .strip_prefix("Exited (")?
        .split_once(')')?
        .0
        .parse()
        .ok()
}

/// What `docker images` leaves out without `-a`, as dockerd: an image with neither tags nor
/// repo digests that is the parent of another image (a build's intermediate step). An
/// untagged image without children stays: it is dangling (`<none>`).
pub fn hide_intermediate(list: &mut Vec<ImageSummary>) {
    let parents: std::collections::HashSet<String> = list
        .iter()
        .map(|i| i.parent_id.clone())
        .filter(|p| !p.is_empty())
        .collect();
    list.retain(|i| {
        !(i.repo_tags.is_empty() && i.repo_digests.is_empty() && parents.contains(&i.id))
    });
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_glob_over_non_ascii_text_does_not_panic() {
        assert!(glob("a*", "aé"));
        assert!(glob("*é", "xxé"));
        assert!(!glob("a*", "aé/b"));
    }
    use super::*;

    #[test]
    fn intermediate_images_are_hidden_dangling_ones_stay() {
        let img = |id: &str, parent: &str, tag: &str| ImageSummary {
            id: id.into(),
            parent_id: parent.into(),
            repo_tags: if tag.is_empty() {
                vec![]
            } else {
                vec![tag.into()]
            },
            ..Default::default()
        };
        let mut l = vec![
            img("base", "", "busybox:latest"),
            img("step1", "base", ""),
            img("step2", "step1", "built:latest"),
            img("dangling", "step1", ""),
        ];
        hide_intermediate(&mut l);
        let ids: Vec<&str> = l.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(ids, ["base", "step2", "dangling"]);
    }

    fn ctr(
        id: &str,
        name: &str,
        state: &str,
        status: &str,
        image: &str,
        labels: &[(&str, &str)],
    ) -> ContainerSummary {
        ContainerSummary {
            id: id.into(),
            names: vec![format!("/{name}")],
            image: image.into(),
            image_id: "sha256:abc123".into(),
            state: state.into(),
            status: status.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        }
    }

    fn names(list: &[ContainerSummary]) -> Vec<String> {
        list.iter()
            .map(|c| c.names[0].trim_start_matches('/').to_owned())
            .collect()
    }

    fn sample() -> Vec<ContainerSummary> {
        vec![
            ctr(
                "aaa111",
                "web",
                "running",
                "Up 2 minutes",
                "busybox:latest",
                &[("tier", "front")],
            ),
            ctr(
                "bbb222",
                "web-old",
                "exited",
                "Exited (137) 1 hour ago",
                "busybox:latest",
                &[],
            ),
            ctr(
                "ccc333",
                "db",
                "exited",
                "Exited (0) 3 minutes ago",
                "alpine:3",
                &[("tier", "back")],
            ),
        ]
    }

    fn filt(json: &str) -> Filters {
        Filters::parse(Some(json)).unwrap()
    }

    #[test]
    fn container_filters_as_the_cli_sends_them() {
        assert_eq!(
            names(&filt(r#"{"name":["web"]}"#).containers(sample()).unwrap()),
            ["web", "web-old"]
        );
        assert_eq!(
            names(&filt(r#"{"name":["^web$"]}"#).containers(sample()).unwrap()),
            ["web"]
        );
        assert_eq!(
            names(
                &filt(r#"{"status":["exited"]}"#)
                    .containers(sample())
                    .unwrap()
            ),
            ["web-old", "db"]
        );
        assert_eq!(
            names(&filt(r#"{"exited":["137"]}"#).containers(sample()).unwrap()),
            ["web-old"]
        );
        assert_eq!(
            names(&filt(r#"{"label":["tier"]}"#).containers(sample()).unwrap()),
            ["web", "db"]
        );
        assert_eq!(
            names(
                &filt(r#"{"label":["tier=back"]}"#)
                    .containers(sample())
                    .unwrap()
            ),
            ["db"]
        );
        // Label values are ANDed (compose: project and service), unlike other names'.
        assert_eq!(
            names(
                &filt(r#"{"label":["tier","tier=back"]}"#)
                    .containers(sample())
                    .unwrap()
            ),
            ["db"]
        );
        assert!(filt(r#"{"label":["tier=front","tier=back"]}"#)
            .containers(sample())
            .unwrap()
            .is_empty());
        assert_eq!(
            names(
                &filt(r#"{"ancestor":["busybox"]}"#)
                    .containers(sample())
                    .unwrap()
            ),
            ["web", "web-old"]
        );
        assert_eq!(
            names(&filt(r#"{"id":["ccc"]}"#).containers(sample()).unwrap()),
            ["db"]
        );
        // Values of one name are ORed, names are ANDed.
        assert_eq!(
            names(
                &filt(r#"{"name":["db","web-old"],"status":["exited"]}"#)
                    .containers(sample())
                    .unwrap()
            ),
            ["web-old", "db"]
        );
        assert_eq!(
            names(
                &filt(r#"{"name":["web"],"status":["exited"]}"#)
                    .containers(sample())
                    .unwrap()
            ),
            ["web-old"]
        );
        // The old form: name → {value: true}.
        assert_eq!(
            names(
                &filt(r#"{"name":{"db":true}}"#)
                    .containers(sample())
                    .unwrap()
            ),
            ["db"]
        );
        assert_eq!(
            names(&Filters::parse(None).unwrap().containers(sample()).unwrap()).len(),
            3
        );
    }

    #[test]
    fn bad_filters_are_400s() {
        for (json, msg) in [
            (r#"{"colour":["red"]}"#, "invalid filter 'colour'"),
            (
                r#"{"status":["sleeping"]}"#,
                "invalid filter 'status=sleeping'",
            ),
            (r#"{"exited":["x"]}"#, "invalid filter 'exited=x'"),
        ] {
            let e = filt(json).containers(sample()).unwrap_err();
            assert_eq!((e.status.as_u16(), e.message.as_str()), (400, msg));
        }
        for raw in ["{", "[1]", r#"{"name":[1]}"#] {
            assert_eq!(
                Filters::parse(Some(raw)).unwrap_err().status.as_u16(),
                400,
                "{raw}"
            );
        }
    }

    fn img(id: &str, tags: &[&str], created: i64) -> ImageSummary {
        let repo_digests = tags
            .iter()
            .map(|t| format!("{}@sha256:{}", t.rsplit_once(':').unwrap().0, &id[7..]))
            .collect();
        ImageSummary {
            id: id.into(),
            repo_tags: tags.iter().map(|t| t.to_string()).collect(),
            repo_digests,
            created,
            ..Default::default()
        }
    }

    #[test]
    fn image_filters() {
        let list = vec![
            img(
                "sha256:111",
                &["busybox:latest", "127.0.0.1:5000/tools/busybox:1"],
                10,
            ),
            img("sha256:222", &[], 20),
            img("sha256:333", &["alpine:3"], 30),
        ];
        let ids = |f: &str| {
            filt(f)
                .images(list.clone())
                .unwrap()
                .into_iter()
                .map(|i| i.id)
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(r#"{"dangling":["true"]}"#), ["sha256:222"]);
        assert_eq!(
            ids(r#"{"dangling":["false"]}"#),
            ["sha256:111", "sha256:333"]
        );
        assert_eq!(ids(r#"{"reference":["busybox"]}"#), ["sha256:111"]);
        let narrowed = filt(r#"{"reference":["busybox"]}"#)
            .images(list.clone())
            .unwrap();
        assert_eq!(
            narrowed[0].repo_tags,
            ["busybox:latest"],
            "only the matching tags are listed"
        );
        assert_eq!(
            narrowed[0].repo_digests,
            ["busybox@sha256:111"],
            "and digests"
        );
        assert_eq!(ids(r#"{"reference":["alp*"]}"#), ["sha256:333"]);
        assert_eq!(
            ids(r#"{"reference":["127.0.0.1:5000/tools/*"]}"#),
            ["sha256:111"]
        );
        assert_eq!(
            ids(r#"{"reference":["127.0.0.1:5000/*"]}"#),
            Vec::<String>::new(),
            "* stays within a path segment"
        );
        assert_eq!(
            ids(r#"{"before":["alpine:3"]}"#),
            ["sha256:111", "sha256:222"]
        );
        assert_eq!(
            ids(r#"{"since":["busybox"]}"#),
            ["sha256:222", "sha256:333"]
        );
        assert_eq!(
            filt(r#"{"before":["nope"]}"#)
                .images(list.clone())
                .unwrap_err()
                .status
                .as_u16(),
            404
        );
        assert_eq!(
            filt(r#"{"dangling":["maybe"]}"#)
                .images(list)
                .unwrap_err()
                .status
                .as_u16(),
            400
        );
    }

    #[test]
    fn name_patterns() {
        assert!(
            name_matches("eb", "web")
                && name_matches("^we", "web")
                && name_matches("eb$", "web")
                && name_matches("^web$", "web")
        );
        assert!(!name_matches("^eb", "web") && !name_matches("^we$", "web"));
    }

    #[test]
    fn container_prune_filters_as_dockerd() {
        let p = |raw: &str| ContainerPrune::parse(Filters::parse(Some(raw)).unwrap(), 1000);
        let labels: BTreeMap<String, String> = [
            ("team".to_string(), "a".to_string()),
            ("keep".to_string(), String::new()),
        ]
        .into();
        let none = BTreeMap::new();
        let all = p("{}").unwrap();
        assert!(all.matches(&none, 999) && all.matches(&labels, 5000));
        let f = p(r#"{"until":["10m"]}"#).unwrap();
        assert!(f.matches(&none, 399) && !f.matches(&none, 400));
        let f = p(r#"{"until":["500"],"label":["team=a"]}"#).unwrap();
        assert!(f.matches(&labels, 499));
        assert!(!f.matches(&labels, 500), "created at until is kept");
        assert!(!f.matches(&none, 1), "without the label");
        let f = p(r#"{"label!":["keep"]}"#).unwrap();
        assert!(!f.matches(&labels, 1) && f.matches(&none, 1));
        let f = p(r#"{"label":["team=b"]}"#).unwrap();
        assert!(!f.matches(&labels, 1));
        assert_eq!(
            p(r#"{"name":["x"]}"#).unwrap_err().message,
            "invalid filter 'name'"
        );
        assert_eq!(
            p(r#"{"until":["soon"]}"#).unwrap_err().message,
            "invalid filter 'until=soon'"
        );
    }
}
