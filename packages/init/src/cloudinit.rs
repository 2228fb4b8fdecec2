//! cloud-init's document formats, as far as axion uses them: NoCloud `meta-data`,
//! `#cloud-config` user-data and `network-config` version 2. The same parsers serve every
//! source that carries these documents (the `cidata` volume, QEMU fw_cfg, the OVF
//! environment's `user-data` property).
//!
//! Each parser returns a [`Layer`] and a list of problems (`KEY: what is wrong`); a problem
//! costs only the key it is about, never the whole document or the boot.
//!
//! # meta-data (YAML or JSON)
//!
//! | key | meaning |
//! |---|---|
//! | `instance-id` | the instance id (a new one regenerates the machine's identity) |
//! | `local-hostname` (or `hostname`) | hostname |
//! | `public-keys` | ssh keys: a string, a list, or a map of name to key(s) |
//!
//! # user-data: `#cloud-config`
//!
//! | key | meaning |
//! |---|---|
//! | `hostname` (or `fqdn` when there is no `hostname`) | hostname (overrides meta-data's) |
//! | `ssh_authorized_keys` | keys authorized for root |
//! | `users` | each entry's `ssh_authorized_keys` are authorized for **root**: axion has no other login user; `default` and the other per-user keys are reported and ignored |
//! | `write_files` | `path` (absolute), `content`, `encoding` (`b64`/`base64` or plain text), `permissions` (octal, default `0644`), `owner` (only root), `append`, `defer` (accepted, no effect) |
//! | `runcmd` | commands run once per instance after the ready line: a string runs with `/bin/sh -c`, a list is an argument vector |
//! | `ntp` | `servers` and `pools`: busybox `ntpd` is started for them; `enabled: false` turns that off |
//!
//! Other top-level keys (`packages`, `bootcmd`, `chpasswd`, ...) are reported as not
//! supported and ignored. User-data that is not `#cloud-config` (a shell script, MIME
//! multipart) is reported and ignored.
//!
//! # network-config, version 2
//!
//! A top-level `network:` wrapper is accepted. init configures one NIC (the first ethernet
//! one), so only the first entry of `ethernets` is used: `dhcp4: true`, or `addresses`
//! (the first IPv4 `ADDR/PREFIX`), `gateway4` or a default route in `routes`
//! (`to: default` or `0.0.0.0/0`, `via`), and `nameservers.addresses`. `config: disabled`
//! leaves the network to the other sources. Version 1, bonds, bridges, VLANs and IPv6
//! addresses are reported and ignored.

use std::net::Ipv4Addr;

use base64::Engine as _;
use serde_yaml_ng::{Mapping, Value};

use crate::settings::{valid_hostname, valid_ssh_key, Layer, Network, RunCmd, StaticIp, WriteFile};

/// A parsed document: what it says and what was wrong with it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Parsed {
    pub layer: Layer,
    pub problems: Vec<String>,
}

fn key_str(k: &Value) -> String {
    match k {
        Value::String(s) => s.clone(),
        other => serde_yaml_ng::to_string(other)
            .unwrap_or_default()
            .trim()
            .to_string(),
    }
}

fn as_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn load_yaml(text: &str) -> Result<Option<Mapping>, String> {
    let v: Value = serde_yaml_ng::from_str(text).map_err(|e| format!("not valid YAML: {e}"))?;
    match v {
        Value::Mapping(m) => Ok(Some(m)),
        Value::Null => Ok(None),
        _ => Err("the document is not a mapping of keys to values".into()),
    }
}

/// Decodes base64, tolerating line breaks and missing padding.
pub fn decode_base64(s: &str) -> Result<Vec<u8>, String> {
    let clean: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    let trimmed = clean.trim_end_matches('=');
    base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(trimmed)
        .map_err(|e| format!("bad base64: {e}"))
}

fn add_keys(layer: &mut Layer, problems: &mut Vec<String>, key: &str, v: &Value) {
    let list: Vec<&Value> = match v {
        Value::Sequence(s) => s.iter().collect(),
        Value::String(_) => vec![v],
        Value::Mapping(m) => m.values().collect(),
        Value::Null => Vec::new(),
        _ => {
            problems.push(format!("{key}: expected a list of ssh public keys"));
            return;
        }
    };
    for item in list {
        match item {
            Value::String(s) => {
                for line in s.lines().map(str::trim).filter(|l| !l.is_empty()) {
                    if valid_ssh_key(line) {
                        if !layer.ssh_keys.iter().any(|k| k == line) {
                            layer.ssh_keys.push(line.to_string());
                        }
                    } else {
                        problems.push(format!(
                            "{key}: {line:?} is not an ssh public key (\"TYPE BASE64 [COMMENT]\")"
                        ));
                    }
                }
            }
            Value::Sequence(_) | Value::Mapping(_) => add_keys(layer, problems, key, item),
            _ => problems.push(format!("{key}: expected ssh public keys as strings")),
        }
    }
}

/// Parses NoCloud meta-data.
pub fn parse_meta_data(text: &str) -> Parsed {
    let mut p = Parsed::default();
    let m = match load_yaml(text) {
        Ok(Some(m)) => m,
        Ok(None) => return p,
        Err(e) => {
            p.problems.push(e);
            return p;
        }
    };
    let mut hostname: Option<(String, String)> = None;
    for (k, v) in &m {
        let key = key_str(k);
        match key.as_str() {
            "instance-id" | "instance_id" => match as_string(v).map(|s| s.trim().to_string()) {
                Some(s) if !s.is_empty() && s.len() <= 255 && !s.contains('\n') => {
                    p.layer.instance_id = Some(s)
                }
                _ => p.problems.push(format!(
                    "{key}: expected a non-empty string of at most 255 bytes"
                )),
            },
            "local-hostname" | "local_hostname" | "hostname" => match as_string(v) {
                Some(h) => {
                    // local-hostname wins over hostname when both are given.
                    if hostname.as_ref().is_none_or(|(k0, _)| k0 == "hostname") {
                        hostname = Some((key.clone(), h));
                    }
                }
                None => p.problems.push(format!("{key}: expected a string")),
            },
            "public-keys" | "public_keys" => add_keys(&mut p.layer, &mut p.problems, &key, v),
            "dsmode" => {}
            other => p
                .problems
                .push(format!("{other}: not supported by axion (ignored)")),
        }
    }
    if let Some((key, h)) = hostname {
        match valid_hostname(h.trim()) {
            Ok(()) => p.layer.hostname = Some(h.trim().to_string()),
            Err(e) => p.problems.push(format!("{key}: {e}")),
        }
    }
    p
}

/// Parses user-data; only `#cloud-config` documents are understood.
pub fn parse_user_data(text: &str) -> Parsed {
    let mut p = Parsed::default();
    let text = text.trim_start_matches('\u{feff}');
    if text.trim().is_empty() {
        return p;
    }
    let first = text.lines().next().unwrap_or("").trim_end();
    if !first.starts_with("#cloud-config") {
        let what = if first.starts_with("#!") {
            "user-data is a shell script; only #cloud-config user-data is supported (use runcmd)"
        } else if first.to_ascii_lowercase().starts_with("content-type:")
            || first.starts_with("MIME-Version")
        {
            "user-data is MIME multipart; only a plain #cloud-config document is supported"
        } else {
            "user-data does not start with #cloud-config"
        };
        p.problems
            .push(format!("{what}; the whole document is ignored"));
        return p;
    }
    let m = match load_yaml(text) {
        Ok(Some(m)) => m,
        Ok(None) => return p,
        Err(e) => {
            p.problems
                .push(format!("{e}; the whole document is ignored"));
            return p;
        }
    };
    let mut fqdn = None;
    for (k, v) in &m {
        let key = key_str(k);
        match key.as_str() {
            "hostname" => match as_string(v) {
                Some(h) => match valid_hostname(h.trim()) {
                    Ok(()) => p.layer.hostname = Some(h.trim().to_string()),
                    Err(e) => p.problems.push(format!("hostname: {e}")),
                },
                None => p.problems.push("hostname: expected a string".into()),
            },
            "fqdn" => fqdn = as_string(v),
            "ssh_authorized_keys" => add_keys(&mut p.layer, &mut p.problems, &key, v),
            "users" => users(&mut p, v),
            "write_files" => write_files(&mut p, v),
            "runcmd" => runcmd(&mut p, v),
            "ntp" => ntp(&mut p, v),
            // Settings that describe what axion does anyway.
            "preserve_hostname" | "prefer_fqdn_over_hostname" => {}
            other => p
                .problems
                .push(format!("{other}: not supported by axion (ignored)")),
        }
    }
    if p.layer.hostname.is_none() {
        if let Some(f) = fqdn {
            match valid_hostname(f.trim()) {
                Ok(()) => p.layer.hostname = Some(f.trim().to_string()),
                Err(e) => p.problems.push(format!("fqdn: {e}")),
            }
        }
    }
    p
}

fn users(p: &mut Parsed, v: &Value) {
    let Value::Sequence(list) = v else {
        p.problems.push("users: expected a list".into());
        return;
    };
    for (i, u) in list.iter().enumerate() {
        match u {
            Value::String(s) if s == "default" => {}
            Value::String(s) => p.problems.push(format!(
                "users[{i}]: user {s:?}: axion has only root; no user created"
            )),
            Value::Mapping(m) => {
                let mut ignored = Vec::new();
                for (k, val) in m {
                    let key = key_str(k);
                    match key.as_str() {
                        "ssh_authorized_keys" | "ssh-authorized-keys" => add_keys(
                            &mut p.layer,
                            &mut p.problems,
                            &format!("users[{i}].{key}"),
                            val,
                        ),
                        "name" => {}
                        _ => ignored.push(key),
                    }
                }
                if !ignored.is_empty() {
                    p.problems.push(format!(
                        "users[{i}]: {} not supported (axion has only root; this user's ssh keys \
                         are authorized for root)",
                        ignored.join(", ")
                    ));
                }
            }
            _ => p
                .problems
                .push(format!("users[{i}]: expected a name or a mapping")),
        }
    }
}

fn parse_mode(v: &Value) -> Result<u32, String> {
    let s = match v {
        Value::String(s) => s.trim().to_string(),
        // YAML reads 0644 as the decimal number 644 (YAML 1.2) or octal 420 (YAML 1.1):
        // cloud-init documents quote it; an unquoted number is read as octal digits.
        Value::Number(n) => n.to_string(),
        _ => return Err("expected an octal string like \"0644\"".into()),
    };
    let digits = s.strip_prefix("0o").unwrap_or(&s);
    u32::from_str_radix(digits, 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| format!("{s:?} is not an octal file mode"))
}

fn write_files(p: &mut Parsed, v: &Value) {
    let Value::Sequence(list) = v else {
        p.problems.push("write_files: expected a list".into());
        return;
    };
    'entries: for (i, e) in list.iter().enumerate() {
        let Value::Mapping(m) = e else {
            p.problems.push(format!(
                "write_files[{i}]: expected a mapping with path and content"
            ));
            continue;
        };
        let mut path = None;
        let mut content = String::new();
        let mut encoding = String::new();
        let mut mode = 0o644;
        let mut append = false;
        for (k, val) in m {
            let key = key_str(k);
            match key.as_str() {
                "path" => path = as_string(val),
                "content" => content = as_string(val).unwrap_or_default(),
                "encoding" => encoding = as_string(val).unwrap_or_default(),
                "permissions" => match parse_mode(val) {
                    Ok(m) => mode = m,
                    Err(e) => p
                        .problems
                        .push(format!("write_files[{i}].permissions: {e}; using 0644")),
                },
                "owner" => {
                    let o = as_string(val).unwrap_or_default();
                    if !matches!(o.as_str(), "root" | "root:root" | "0" | "0:0") {
                        p.problems.push(format!(
                            "write_files[{i}].owner: {o:?}: axion writes files as root:root"
                        ));
                    }
                }
                "append" => append = matches!(val, Value::Bool(true)),
                "defer" => {}
                other => p
                    .problems
                    .push(format!("write_files[{i}].{other}: not supported (ignored)")),
            }
        }
        let Some(path) = path.filter(|p| p.starts_with('/') && !p.split('/').any(|c| c == ".."))
        else {
            p.problems.push(format!(
                "write_files[{i}].path: missing, not absolute, or contains '..'; entry ignored"
            ));
            continue 'entries;
        };
        let bytes = match encoding.to_ascii_lowercase().as_str() {
            "" | "text/plain" => content.into_bytes(),
            "b64" | "base64" => match decode_base64(&content) {
                Ok(b) => b,
                Err(e) => {
                    p.problems
                        .push(format!("write_files[{i}] ({path}): {e}; entry ignored"));
                    continue 'entries;
                }
            },
            other => {
                p.problems.push(format!(
                    "write_files[{i}] ({path}): encoding {other:?} not \
                     supported (b64 or text); entry ignored"
                ));
                continue 'entries;
            }
        };
        p.layer.write_files.push(WriteFile {
            path,
            content: bytes,
            mode,
            append,
            source: String::new(),
        });
    }
}

fn runcmd(p: &mut Parsed, v: &Value) {
    let Value::Sequence(list) = v else {
        p.problems.push("runcmd: expected a list".into());
        return;
    };
    let mut cmds = Vec::new();
    for (i, c) in list.iter().enumerate() {
        match c {
            Value::Sequence(argv) => match argv.iter().map(as_string).collect::<Option<Vec<_>>>() {
                Some(a) if !a.is_empty() => cmds.push(RunCmd::Argv(a)),
                _ => p
                    .problems
                    .push(format!("runcmd[{i}]: expected a non-empty list of strings")),
            },
            other => match as_string(other) {
                Some(s) => cmds.push(RunCmd::Shell(s)),
                None => p.problems.push(format!(
                    "runcmd[{i}]: expected a string or a list of strings"
                )),
            },
        }
    }
    p.layer.runcmd = Some(cmds);
}

fn ntp(p: &mut Parsed, v: &Value) {
    let Value::Mapping(m) = v else {
        p.problems
            .push("ntp: expected a mapping (servers, pools, enabled)".into());
        return;
    };
    let mut servers = Vec::new();
    let mut enabled = true;
    for (k, val) in m {
        let key = key_str(k);
        match key.as_str() {
            "servers" | "pools" => match val {
                Value::Sequence(l) => {
                    for s in l {
                        match as_string(s)
                            .filter(|s| !s.is_empty() && !s.contains(char::is_whitespace))
                        {
                            Some(s) => servers.push(s),
                            None => p.problems.push(format!("ntp.{key}: expected host names")),
                        }
                    }
                }
                _ => p.problems.push(format!("ntp.{key}: expected a list")),
            },
            "enabled" => enabled = !matches!(val, Value::Bool(false)),
            other => p
                .problems
                .push(format!("ntp.{other}: not supported (ignored)")),
        }
    }
    p.layer.ntp_servers = Some(if enabled { servers } else { Vec::new() });
}

fn ipv4_list(v: &Value) -> Vec<String> {
    match v {
        Value::Sequence(l) => l.iter().filter_map(as_string).collect(),
        other => as_string(other).into_iter().collect(),
    }
}

/// Parses network-config version 2.
pub fn parse_network_config(text: &str) -> Parsed {
    let mut p = Parsed::default();
    let mut m = match load_yaml(text) {
        Ok(Some(m)) => m,
        Ok(None) => return p,
        Err(e) => {
            p.problems
                .push(format!("{e}; the whole document is ignored"));
            return p;
        }
    };
    if let Some(Value::Mapping(inner)) = m.get("network") {
        m = inner.clone();
    }
    if m.get("config").and_then(Value::as_str) == Some("disabled") {
        return p;
    }
    match m.get("version").and_then(Value::as_u64) {
        Some(2) => {}
        Some(v) => {
            p.problems.push(format!(
                "version: {v} is not supported (only version 2); the whole document is ignored"
            ));
            return p;
        }
        None => {
            p.problems.push(
                "version: missing (only version 2 is supported); the whole document is ignored"
                    .into(),
            );
            return p;
        }
    }
    for (k, _) in &m {
        let key = key_str(k);
        match key.as_str() {
            "version" | "ethernets" | "renderer" => {}
            other => p
                .problems
                .push(format!("{other}: not supported by axion (ignored)")),
        }
    }
    let Some(eths) = m.get("ethernets") else {
        return p;
    };
    let Value::Mapping(eths) = eths else {
        p.problems
            .push("ethernets: expected a mapping of interface names".into());
        return p;
    };
    let mut iter = eths.iter();
    let Some((name, cfg)) = iter.next() else {
        return p;
    };
    let name = key_str(name);
    for (other, _) in iter {
        p.problems.push(format!(
            "ethernets.{}: init configures one NIC (the first ethernet one) \
             from ethernets.{name}; ignored",
            key_str(other)
        ));
    }
    let Value::Mapping(cfg) = cfg else {
        p.problems
            .push(format!("ethernets.{name}: expected a mapping"));
        return p;
    };
    let mut dhcp = false;
    let mut addr: Option<(Ipv4Addr, u8)> = None;
    let mut gateway = None;
    let mut dns = Vec::new();
    for (k, v) in cfg {
        let key = key_str(k);
        let at = format!("ethernets.{name}.{key}");
        match key.as_str() {
            "dhcp4" => {
                dhcp = matches!(v, Value::Bool(true))
                    || as_string(v).is_some_and(|s| s == "yes" || s == "true")
            }
            "dhcp6" => {
                if matches!(v, Value::Bool(true)) {
                    p.problems.push(format!(
                        "{at}: DHCPv6 is not supported (the kernel's SLAAC still works)"
                    ));
                }
            }
            "addresses" => {
                for a in ipv4_list(v) {
                    let parsed = a.split_once('/').and_then(|(ip, pre)| {
                        Some((
                            ip.parse::<Ipv4Addr>().ok()?,
                            pre.parse::<u8>().ok().filter(|p| *p <= 32)?,
                        ))
                    });
                    match parsed {
                        Some(x) if addr.is_none() => addr = Some(x),
                        Some(_) => p
                            .problems
                            .push(format!("{at}: {a}: one IPv4 address per NIC; ignored")),
                        None if a.contains(':') => p.problems.push(format!(
                            "{at}: {a}: IPv6 addresses are not supported; ignored"
                        )),
                        None => p.problems.push(format!("{at}: {a:?} is not ADDR/PREFIX")),
                    }
                }
            }
            "gateway4" => match as_string(v).and_then(|s| s.parse().ok()) {
                Some(g) => gateway = Some(g),
                None => p.problems.push(format!("{at}: expected an IPv4 address")),
            },
            "gateway6" => p
                .problems
                .push(format!("{at}: IPv6 is not supported; ignored")),
            "routes" => {
                let Value::Sequence(routes) = v else {
                    p.problems.push(format!("{at}: expected a list"));
                    continue;
                };
                for r in routes {
                    let to = r.get("to").and_then(as_string).unwrap_or_default();
                    let via = r.get("via").and_then(as_string).unwrap_or_default();
                    if to == "default" || to == "0.0.0.0/0" {
                        match via.parse() {
                            Ok(g) => gateway = Some(g),
                            Err(_) => p.problems.push(format!(
                                "{at}: default route via {via:?} is not an IPv4 address"
                            )),
                        }
                    } else {
                        p.problems.push(format!(
                            "{at}: route to {to:?}: only the default route is supported; ignored"
                        ));
                    }
                }
            }
            "nameservers" => {
                if let Some(a) = v.get("addresses") {
                    for d in ipv4_list(a) {
                        match d.parse::<Ipv4Addr>() {
                            Ok(ip) => dns.push(ip),
                            Err(_) => p.problems.push(format!(
                                "{at}.addresses: {d:?}: only IPv4 name servers are supported"
                            )),
                        }
                    }
                }
                if v.get("search").is_some() {
                    p.problems
                        .push(format!("{at}.search: not supported (ignored)"));
                }
            }
            "match" | "set-name" | "optional" | "mtu" | "critical" | "wakeonlan" => {}
            other => p.problems.push(format!(
                "ethernets.{name}.{other}: not supported by axion (ignored)"
            )),
        }
    }
    p.layer.network = match (addr, dhcp) {
        (Some((addr, prefix)), _) => {
            if dhcp {
                p.problems.push(format!(
                    "ethernets.{name}: both dhcp4 and a static address; using the static address"
                ));
            }
            Some(Network::Static(StaticIp {
                addr,
                prefix,
                gateway,
                dns,
            }))
        }
        (None, true) => Some(Network::Dhcp),
        (None, false) => {
            p.problems.push(format!(
                "ethernets.{name}: neither dhcp4: true nor an IPv4 address; \
                 network left to the other sources"
            ));
            None
        }
    };
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_data_yaml_and_json() {
        let p = parse_meta_data(
            "instance-id: iid-abc\nlocal-hostname: web-1\npublic-keys:\n  - ssh-ed25519 AAAA a@b\n",
        );
        assert!(p.problems.is_empty(), "{:?}", p.problems);
        assert_eq!(p.layer.instance_id.as_deref(), Some("iid-abc"));
        assert_eq!(p.layer.hostname.as_deref(), Some("web-1"));
        assert_eq!(p.layer.ssh_keys, vec!["ssh-ed25519 AAAA a@b"]);
        let p = parse_meta_data(
            r#"{"instance-id": "i-1", "hostname": "h", "local-hostname": "lh", "frob": 1}"#,
        );
        assert_eq!(p.layer.instance_id.as_deref(), Some("i-1"));
        assert_eq!(p.layer.hostname.as_deref(), Some("lh"));
        assert_eq!(p.problems, vec!["frob: not supported by axion (ignored)"]);
        assert!(parse_meta_data("").problems.is_empty());
    }

    const USER_DATA: &str = r#"#cloud-config
hostname: node-7
ssh_authorized_keys:
  - ssh-ed25519 AAAAtop top@host
users:
  - default
  - name: admin
    sudo: ALL=(ALL) NOPASSWD:ALL
    ssh_authorized_keys:
      - ssh-rsa AAAAuser user@host
write_files:
  - path: /etc/motd
    content: |
      hello
    permissions: '0600'
  - path: /var/lib/axion-engine/tls/ca.pem
    encoding: b64
    content: aGk=
    owner: root:root
  - path: relative/bad
    content: x
ntp:
  servers: [ntp.example.org]
  pools: [pool.example.org]
runcmd:
  - echo one > /tmp/one
  - [touch, /tmp/two]
packages: [vim]
"#;

    #[test]
    fn cloud_config() {
        let p = parse_user_data(USER_DATA);
        let l = &p.layer;
        assert_eq!(l.hostname.as_deref(), Some("node-7"));
        assert_eq!(
            l.ssh_keys,
            vec!["ssh-ed25519 AAAAtop top@host", "ssh-rsa AAAAuser user@host"]
        );
        assert_eq!(l.write_files.len(), 2);
        assert_eq!(l.write_files[0].path, "/etc/motd");
        assert_eq!(l.write_files[0].content, b"hello\n");
        assert_eq!(l.write_files[0].mode, 0o600);
        assert_eq!(l.write_files[1].content, b"hi");
        assert_eq!(l.write_files[1].mode, 0o644);
        assert_eq!(
            l.ntp_servers.as_deref(),
            Some(
                &[
                    "ntp.example.org".to_string(),
                    "pool.example.org".to_string()
                ][..]
            )
        );
        assert_eq!(
            l.runcmd.as_deref(),
            Some(
                &[
                    RunCmd::Shell("echo one > /tmp/one".into()),
                    RunCmd::Argv(vec!["touch".into(), "/tmp/two".into()])
                ][..]
            )
        );
        assert_eq!(p.problems.len(), 3, "{:?}", p.problems);
        assert!(p
            .problems
            .iter()
            .any(|w| w.starts_with("users[1]: sudo not supported")));
        assert!(p
            .problems
            .iter()
            .any(|w| w.starts_with("write_files[2].path")));
        assert!(p
            .problems
            .iter()
            .any(|w| w == "packages: not supported by axion (ignored)"));
    }

    #[test]
    fn bad_user_data_is_reported_not_fatal() {
        let p = parse_user_data("#cloud-config\nhostname: [unclosed\n");
        assert_eq!(p.layer, Layer::default());
        assert_eq!(p.problems.len(), 1);
        assert!(
            p.problems[0].starts_with("not valid YAML"),
            "{:?}",
            p.problems
        );
        let p = parse_user_data("#!/bin/sh\necho hi\n");
        assert!(p.problems[0].contains("shell script"), "{:?}", p.problems);
        let p = parse_user_data("hostname: x\n");
        assert!(
            p.problems[0].contains("does not start with #cloud-config"),
            "{:?}",
            p.problems
        );
        let p = parse_user_data(
            "#cloud-config\nhostname: -bad-\nssh_authorized_keys: \
             [nokey]\nwrite_files:\n  - path: /x\n    encoding: gzip\n    \
             content: zz\n  - path: /y\n    encoding: b64\n    content: \
             '!!!'\nruncmd: oops\n",
        );
        assert_eq!(p.layer, Layer::default(), "{:?}", p.layer);
        assert_eq!(p.problems.len(), 5, "{:?}", p.problems);
        assert!(parse_user_data("  \n").problems.is_empty());
        assert!(parse_user_data("#cloud-config\n").problems.is_empty());
    }

    #[test]
    fn file_modes() {
        assert_eq!(parse_mode(&Value::String("0755".into())), Ok(0o755));
        assert_eq!(parse_mode(&Value::String("0o600".into())), Ok(0o600));
        assert_eq!(
            parse_mode(&serde_yaml_ng::from_str("644").unwrap()),
            Ok(0o644)
        );
        assert!(parse_mode(&Value::String("0999".into())).is_err());
    }

    #[test]
    fn network_config_static_and_dhcp() {
        let p = parse_network_config(
            "network:\n  version: 2\n  ethernets:\n    eth0:\n      match: {name: 'e*'}\n      \
             addresses: [10.0.2.21/24, 'fd00::5/64']\n      routes:\n        - to: \
             default\n          via: 10.0.2.2\n      nameservers:\n        addresses: [10.0.2.3]\n",
        );
        assert_eq!(
            p.layer.network,
            Some(Network::Static(StaticIp {
                addr: Ipv4Addr::new(10, 0, 2, 21),
                prefix: 24,
                gateway: Some(Ipv4Addr::new(10, 0, 2, 2)),
                dns: vec![Ipv4Addr::new(10, 0, 2, 3)],
            }))
        );
        assert_eq!(p.problems.len(), 1, "{:?}", p.problems);
        assert!(p.problems[0].contains("IPv6"));
        let p = parse_network_config(
            "version: 2\nethernets:\n  ens3:\n    dhcp4: true\n  ens4:\n    dhcp4: true\n",
        );
        assert_eq!(p.layer.network, Some(Network::Dhcp));
        assert_eq!(p.problems.len(), 1, "{:?}", p.problems);
        let p = parse_network_config(
            "version: 2\nethernets:\n  e:\n    addresses: \
             [192.168.0.5/24]\n    gateway4: 192.168.0.1\n",
        );
        assert!(matches!(
            p.layer.network,
            Some(Network::Static(StaticIp {
                gateway: Some(_),
                ..
            }))
        ));
    }

    #[test]
    fn network_config_unsupported() {
        let p = parse_network_config("version: 1\nconfig: []\n");
        assert!(p.problems[0].contains("version: 1"));
        assert!(parse_network_config("network:\n  config: disabled\n")
            .problems
            .is_empty());
        let p = parse_network_config("version: 2\nbonds: {}\nethernets:\n  e: {}\n");
        assert_eq!(p.layer.network, None);
        assert_eq!(p.problems.len(), 2, "{:?}", p.problems);
        assert!(parse_network_config(": : :").problems[0].contains("YAML"));
    }

    #[test]
    fn base64_forms() {
        assert_eq!(decode_base64("aGVs\nbG8=").unwrap(), b"hello");
        assert_eq!(decode_base64("aGVsbG8").unwrap(), b"hello");
        assert!(decode_base64("***").is_err());
    }
}
