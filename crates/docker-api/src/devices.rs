//! Docker's device access, as clients send it, for the back ends that enforce it:
//!
//! - `HostConfig.DeviceCgroupRules` (`docker run --device-cgroup-rule 'c 1:3 rwm'`): one rule
//!   per string, `TYPE MAJOR:MINOR ACCESS` with TYPE `a` (any), `b` or `c`, MAJOR and MINOR a
//!   number or `*`, ACCESS one to three of `r`, `w`, `m` ([`parse_rule`], dockerd's syntax);
//! - `HostConfig.Devices` (`docker run --device /dev/sdc:/dev/xvdc:r`): `PathOnHost`,
//!   `PathInContainer` (empty: the same path) and `CgroupPermissions` (empty: `rwm`)
//!   ([`mappings`]).
//!
//! Rules only allow: what no rule allows is denied (Docker's default list is the back end's).

use std::fmt;

/// Access bits, numbered as the kernel's device cgroup numbers them (`BPF_DEVCG_ACC_*`).
pub const MKNOD: u8 = 1;
pub const READ: u8 = 2;
pub const WRITE: u8 = 4;
pub const ALL_ACCESS: u8 = MKNOD | READ | WRITE;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `a`: block and character devices.
    All,
    Block,
    Char,
}

/// One allow rule; `None` for a major or minor is `*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rule {
    pub kind: Kind,
    pub major: Option<u32>,
    pub minor: Option<u32>,
    pub access: u8,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DeviceError {
    #[error(
        "invalid device cgroup rule format: '{0}' (want TYPE MAJOR:MINOR ACCESS: TYPE a, b or c, \
         MAJOR and MINOR a number or *, ACCESS of r, w and m, as in 'c 1:3 rwm')"
    )]
    Rule(String),
    #[error("invalid device cgroup rule '{0}': {1} is out of range")]
    Number(String, String),
    #[error(
        "invalid device mode '{mode}' for {path}: the permissions are r, w and m, as in 'rwm'"
    )]
    Mode { path: String, mode: String },
    #[error("invalid device mapping: {0}")]
    Mapping(String),
}

impl Rule {
    pub fn new(kind: Kind, major: Option<u32>, minor: Option<u32>, access: u8) -> Rule {
        Rule {
            kind,
            major,
            minor,
            access,
        }
    }

    /// Does this rule allow `access` on device `kind` `major:minor` (a block or char one)?
    pub fn allows(&self, kind: Kind, major: u32, minor: u32, access: u8) -> bool {
        (self.kind == Kind::All || self.kind == kind)
            && self.major.is_none_or(|m| m == major)
            && self.minor.is_none_or(|m| m == minor)
            && access & !self.access == 0
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            Kind::All => 'a',
            Kind::Block => 'b',
            Kind::Char => 'c',
        };
        let num = |n: Option<u32>| n.map_or("*".to_string(), |n| n.to_string());
        write!(
            f,
            "{kind} {}:{} {}",
            num(self.major),
            num(self.minor),
            access_str(self.access)
        )
    }
}

/// `rwm` for [`ALL_ACCESS`].
pub fn access_str(access: u8) -> String {
    [(READ, 'r'), (WRITE, 'w'), (MKNOD, 'm')]
        .iter()
        .filter(|(b, _)| access & b != 0)
        .map(|(_, c)| *c)
        .collect()
}

/// One to three of `r`, `w`, `m` in any order (repeats allowed, as dockerd's pattern).
fn parse_access(s: &str) -> Option<u8> {
    if s.is_empty() || s.len() > 3 {
        return None;
    }
    s.chars().try_fold(0u8, |acc, c| {
        Some(
            acc | match c {
                'r' => READ,
                'w' => WRITE,
                'm' => MKNOD,
                _ => return None,
            },
        )
    })
}

/// A `--device-cgroup-rule` string: exactly `TYPE MAJOR:MINOR ACCESS`, single spaces.
pub fn parse_rule(s: &str) -> Result<Rule, DeviceError> {
    let bad = || DeviceError::Rule(s.to_string());
    let mut parts = s.split(' ');
    let (Some(kind), Some(numbers), Some(access), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    let kind = match kind {
        "a" => Kind::All,
        "b" => Kind::Block,
        "c" => Kind::Char,
        _ => return Err(bad()),
    };
    let (major, minor) = numbers.split_once(':').ok_or_else(bad)?;
    let number = |n: &str| -> Result<Option<u32>, DeviceError> {
        if n == "*" {
            return Ok(None);
        }
        if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        n.parse::<u32>()
            .map(Some)
            .map_err(|_| DeviceError::Number(s.to_string(), n.to_string()))
    };
    let access = parse_access(access).ok_or_else(bad)?;
    Ok(Rule::new(kind, number(major)?, number(minor)?, access))
}

/// One entry of `HostConfig.Devices`, defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub path_on_host: String,
    pub path_in_container: String,
    pub access: u8,
}

/// `HostConfig.Devices` (absent or null: none).
pub fn mappings(v: Option<&serde_json::Value>) -> Result<Vec<Mapping>, DeviceError> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(Vec::new());
    };
    let list = v
        .as_array()
        .ok_or_else(|| DeviceError::Mapping("Devices must be a list".into()))?;
    list.iter().map(mapping).collect()
}

fn mapping(v: &serde_json::Value) -> Result<Mapping, DeviceError> {
    let field = |k: &str| -> Result<String, DeviceError> {
        match v.get(k) {
            None | Some(serde_json::Value::Null) => Ok(String::new()),
            Some(serde_json::Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(DeviceError::Mapping(format!("{k} must be a string"))),
        }
    };
    if !v.is_object() {
        return Err(DeviceError::Mapping(
            "each device is an object with PathOnHost, PathInContainer and CgroupPermissions"
                .into(),
        ));
    }
    let host = field("PathOnHost")?;
    let mut inside = field("PathInContainer")?;
    if inside.is_empty() {
        inside = host.clone();
    }
    for (what, p) in [("PathOnHost", &host), ("PathInContainer", &inside)] {
        if !p.starts_with('/') || p.contains('\0') {
            return Err(DeviceError::Mapping(format!(
                "{what} {p:?} is not an absolute path"
            )));
        }
    }
    let mode = field("CgroupPermissions")?;
    let access = if mode.is_empty() {
        ALL_ACCESS
    } else {
        parse_access(&mode).ok_or_else(|| DeviceError::Mode {
            path: host.clone(),
            mode: mode.clone(),
        })?
    };
    Ok(Mapping {
        path_on_host: host,
        path_in_container: inside,
        access,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_parse_as_dockerd_reads_them() {
        assert_eq!(
            parse_rule("c 1:3 rwm"),
            Ok(Rule::new(Kind::Char, Some(1), Some(3), ALL_ACCESS))
        );
        assert_eq!(
            parse_rule("a *:* m"),
            Ok(Rule::new(Kind::All, None, None, MKNOD))
        );
        assert_eq!(
            parse_rule("b 254:* rr"),
            Ok(Rule::new(Kind::Block, Some(254), None, READ))
        );
        for bad in [
            "",
            "c 1:3",
            "c 1:3 rwm ",
            "c  1:3 rwm",
            "x 1:3 rwm",
            "c 1 rwm",
            "c 1:3 rwx",
            "c 1:3 rwmr",
            "c -1:3 r",
            "c +1:3 r",
            "c 1:3: r",
            "c :3 r",
            "c 1:3\tr",
        ] {
            assert!(
                matches!(parse_rule(bad), Err(DeviceError::Rule(_))),
                "{bad:?}"
            );
        }
        let e = parse_rule("c 99999999999:1 r").unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid device cgroup rule 'c 99999999999:1 r': 99999999999 is out of range"
        );
        assert!(parse_rule("q 1:2 r")
            .unwrap_err()
            .to_string()
            .starts_with("invalid device cgroup rule format: 'q 1:2 r'"));
    }

    #[test]
    fn a_rule_prints_as_it_parses() {
        for s in ["c 1:3 rwm", "a *:* m", "b 8:* rw", "c *:5 r"] {
            assert_eq!(parse_rule(s).unwrap().to_string(), s);
        }
    }

    #[test]
    fn allows_matches_kind_numbers_and_a_subset_of_access() {
        let r = parse_rule("c 1:* rw").unwrap();
        assert!(r.allows(Kind::Char, 1, 11, READ));
        assert!(r.allows(Kind::Char, 1, 11, READ | WRITE));
        assert!(!r.allows(Kind::Char, 1, 11, MKNOD));
        assert!(!r.allows(Kind::Block, 1, 11, READ));
        assert!(!r.allows(Kind::Char, 2, 11, READ));
        let a = parse_rule("a *:* rwm").unwrap();
        assert!(a.allows(Kind::Block, 254, 0, ALL_ACCESS));
    }

    #[test]
    fn mappings_fill_defaults_and_refuse_bad_entries() {
        let v = serde_json::json!([
            {"PathOnHost": "/dev/kmsg", "PathInContainer": "", "CgroupPermissions": ""},
            {"PathOnHost": "/dev/vda", "PathInContainer": "/dev/xvda", "CgroupPermissions": "r"},
        ]);
        assert_eq!(
            mappings(Some(&v)).unwrap(),
            vec![
                Mapping {
                    path_on_host: "/dev/kmsg".into(),
                    path_in_container: "/dev/kmsg".into(),
                    access: ALL_ACCESS
                },
                Mapping {
                    path_on_host: "/dev/vda".into(),
                    path_in_container: "/dev/xvda".into(),
                    access: READ
                },
            ]
        );
        assert_eq!(mappings(None).unwrap(), vec![]);
        assert_eq!(mappings(Some(&serde_json::Value::Null)).unwrap(), vec![]);
        let e = mappings(Some(
            &serde_json::json!([{"PathOnHost": "/dev/x", "CgroupPermissions": "rwx"}]),
        ))
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid device mode 'rwx' for /dev/x: the permissions are r, w and m, as in 'rwm'"
        );
        for bad in [
            serde_json::json!({}),
            serde_json::json!([1]),
            serde_json::json!([{"PathOnHost": "dev/x"}]),
            serde_json::json!([{"PathOnHost": "/dev/x", "PathInContainer": "x"}]),
            serde_json::json!([{"PathOnHost": 3}]),
            serde_json::json!([{}]),
        ] {
            assert!(mappings(Some(&bad)).is_err(), "{bad}");
        }
    }
}
