//! Which devices a container may use, as Docker decides it: the device cgroup's allow rules
//! ([`Policy::rules`], enforced by the BPF program of [`bpf`] on the container's cgroup) and
//! the nodes the shim makes in the container's /dev ([`Policy::nodes`]).
//!
//! - By default, Docker's list ([`default_rules`]): any node may be made (CAP_MKNOD is in
//!   the default set, as in Docker), but only null, zero, full, random, urandom, tty,
//!   console, ptmx, the ptys and tun may be opened; so not the VM's disk, /dev/mem or
//!   /dev/kmsg through a node made with mknod.
//! - `--device HOST[:CONTAINER[:PERMS]]` (`HostConfig.Devices`): the host's node (or every
//!   node below a directory) made at CONTAINER with the host's numbers, mode and owner, and
//!   a rule for it with PERMS (`rwm` by default). A missing path fails the start.
//! - `--device-cgroup-rule` (`HostConfig.DeviceCgroupRules`): more allow rules.
//! - `--privileged`: every device allowed (no program) and every node of the VM's /dev made
//!   in the container's, as dockerd does.

pub mod bpf;

use docker_api::devices::{self, Kind, Rule, ALL_ACCESS, MKNOD};
use docker_api::types::HostConfig;
use serde::{Deserialize, Serialize};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

/// Docker's default rules: runc's allowed devices (with tun, which runc keeps) plus
/// dockerd's /dev/console.
pub fn default_rules() -> Vec<Rule> {
    let c = |major, minor| Rule::new(Kind::Char, Some(major), minor, ALL_ACCESS);
    vec![
        Rule::new(Kind::Char, None, None, MKNOD),
        Rule::new(Kind::Block, None, None, MKNOD),
        c(1, Some(3)),    // null
        c(1, Some(5)),    // zero
        c(1, Some(7)),    // full
        c(1, Some(8)),    // random
        c(1, Some(9)),    // urandom
        c(5, Some(0)),    // tty
        c(5, Some(1)),    // console
        c(5, Some(2)),    // ptmx
        c(136, None),     // the ptys of the container's devpts
        c(10, Some(200)), // tun
    ]
}

/// A device node the shim makes in the container (path inside it).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Node {
    pub path: String,
    pub block: bool,
    pub major: u32,
    pub minor: u32,
    /// Permission bits (the host node's).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub nodes: Vec<Node>,
    /// None: every device (privileged).
    pub rules: Option<Vec<Rule>>,
}

/// Checks at create what the client sent (an error is the client's: 400).
pub fn check(hc: &HostConfig) -> Result<(), devices::DeviceError> {
    devices::mappings(hc.extra.get("Devices"))?;
    cgroup_rules(hc)?;
    Ok(())
}

fn cgroup_rules(hc: &HostConfig) -> Result<Vec<Rule>, devices::DeviceError> {
    match hc.extra.get("DeviceCgroupRules").filter(|v| !v.is_null()) {
        None => Ok(Vec::new()),
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .map(|r| match r.as_str() {
                Some(s) => devices::parse_rule(s),
                None => Err(devices::DeviceError::Rule(r.to_string())),
            })
            .collect(),
        Some(v) => Err(devices::DeviceError::Rule(v.to_string())),
    }
}

/// The policy for a start: the host's nodes are looked at now, as dockerd does.
pub fn policy(hc: &HostConfig) -> Result<Policy, String> {
    let mut nodes = Vec::new();
    let mut rules = default_rules();
    for m in devices::mappings(hc.extra.get("Devices")).map_err(|e| e.to_string())? {
        let found = nodes_at(Path::new(&m.path_on_host), &m.path_in_container).map_err(|e| {
            format!(
                "error gathering device information while adding custom device {:?}: {e}",
                m.path_on_host
            )
        })?;
        for n in found {
            let kind = if n.block { Kind::Block } else { Kind::Char };
            rules.push(Rule::new(kind, Some(n.major), Some(n.minor), m.access));
            nodes.push(n);
        }
    }
    rules.extend(cgroup_rules(hc).map_err(|e| e.to_string())?);
    if hc.privileged {
        nodes.extend(host_devices(Path::new("/dev"), "/dev"));
        return Ok(Policy { nodes, rules: None });
    }
    Ok(Policy {
        nodes,
        rules: Some(rules),
    })
}

fn node(meta: &std::fs::Metadata, inside: &str) -> Option<Node> {
    let ft = meta.file_type();
    if !ft.is_block_device() && !ft.is_char_device() {
        return None;
    }
    let dev = meta.rdev();
    Some(Node {
        path: inside.to_string(),
        block: ft.is_block_device(),
        major: libc::major(dev),
        minor: libc::minor(dev),
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
    })
}

/// The node at `host` (symlinks followed), or those below it when it is a directory.
fn nodes_at(host: &Path, inside: &str) -> std::io::Result<Vec<Node>> {
    let meta = std::fs::metadata(host)?;
    if meta.is_dir() {
        return Ok(host_devices(host, inside));
    }
    node(&meta, inside).map(|n| vec![n]).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a device node (a block or character device)",
        )
    })
}

/// The device nodes below `dir` (not through symlinks), as runc's HostDevices lists them:
/// without the container's own pts, shm, mqueue and fd, nor the console.
fn host_devices(dir: &Path, inside: &str) -> Vec<Node> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let (Ok(meta), Ok(ft)) = (e.metadata(), e.file_type()) else {
            continue;
        };
        let path = format!("{}/{name}", inside.trim_end_matches('/'));
        if ft.is_dir() {
            if !matches!(
                name.as_str(),
                "pts" | "shm" | "fd" | "mqueue" | ".lxc" | ".lxd-mounts" | ".udev"
            ) {
                out.extend(host_devices(&e.path(), &path));
            }
        } else if name != "console" {
            out.extend(node(&meta, &path));
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hc(v: serde_json::Value) -> HostConfig {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn the_default_policy_is_dockers_list() {
        let p = policy(&hc(serde_json::json!({}))).unwrap();
        assert_eq!(p.nodes, vec![]);
        let rules: Vec<String> = p.rules.unwrap().iter().map(|r| r.to_string()).collect();
        assert_eq!(
            rules.join(", "),
            "c *:* m, b *:* m, c 1:3 rwm, c 1:5 rwm, c 1:7 rwm, c 1:8 rwm, c 1:9 rwm, \
             c 5:0 rwm, c 5:1 rwm, c 5:2 rwm, c 136:* rwm, c 10:200 rwm"
        );
    }

    #[test]
    fn devices_and_rules_add_to_it() {
        let p = policy(&hc(serde_json::json!({
            "Devices": [{"PathOnHost": "/dev/null", "PathInContainer": "/dev/mynull",
                         "CgroupPermissions": "r"}],
            "DeviceCgroupRules": ["b 8:* rw"],
        })))
        .unwrap();
        assert_eq!(p.nodes.len(), 1);
        let n = &p.nodes[0];
        assert_eq!(
            (n.path.as_str(), n.block, n.major, n.minor),
            ("/dev/mynull", false, 1, 3)
        );
        let rules = p.rules.unwrap();
        let tail: Vec<String> = rules[rules.len() - 2..]
            .iter()
            .map(|r| r.to_string())
            .collect();
        assert_eq!(tail, ["c 1:3 r", "b 8:* rw"]);
    }

    #[test]
    fn a_missing_or_non_device_path_fails_the_start() {
        for p in ["/nonexistent-device", "/etc/hostname"] {
            let e = policy(&hc(serde_json::json!({"Devices": [{"PathOnHost": p}]}))).unwrap_err();
            assert!(
                e.starts_with(&format!(
                    "error gathering device information while adding custom device {p:?}"
                )),
                "{e}"
            );
        }
    }

    #[test]
    fn privileged_allows_every_device() {
        let p = policy(&hc(serde_json::json!({"Privileged": true}))).unwrap();
        assert_eq!(p.rules, None);
        assert!(
            p.nodes.iter().any(|n| n.path == "/dev/null"),
            "{:?}",
            p.nodes
        );
        assert!(!p.nodes.iter().any(|n| n.path.starts_with("/dev/pts/")));
    }

    #[test]
    fn bad_rules_are_the_clients_error() {
        for v in [
            serde_json::json!({"DeviceCgroupRules": ["c 1:3"]}),
            serde_json::json!({"DeviceCgroupRules": [3]}),
            serde_json::json!({"DeviceCgroupRules": "c 1:3 r"}),
            serde_json::json!({"Devices": [{"PathOnHost": "/dev/x", "CgroupPermissions": "x"}]}),
        ] {
            assert!(check(&hc(v.clone())).is_err(), "{v}");
        }
        assert!(check(&hc(
            serde_json::json!({"DeviceCgroupRules": ["c 7:128 rwm"]})
        ))
        .is_ok());
    }
}
