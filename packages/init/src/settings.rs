//! The first-boot settings model and its sources.
//!
//! One [`Settings`] value describes what the machine should be: hostname, network, ssh keys,
//! files to write, commands to run, NTP servers, the instance id, debug switches. It is
//! built by merging [`Layer`]s, lowest priority first:
//!
//! 1. built-in defaults (hostname `axion`, DHCP on the first ethernet NIC),
//! 2. the image (`/etc/hostname`),
//! 3. the OVF environment (vSphere ISO transport, `ovf-env.xml`; see `ovfenv`): its
//!    embedded `user-data`, then its `network-config`, then its plain properties,
//! 4. NoCloud: a `cidata` volume (vfat or ISO 9660): `meta-data`, then `user-data`
//!    (#cloud-config), then `network-config` v2 (see `cloudinit`, `sources`),
//! 5. QEMU fw_cfg `opt/axion/meta-data`, `opt/axion/user-data`, `opt/axion/network-config`
//!    (the NoCloud formats) and `opt/axion/cmdline` (`axion.*` keys as below),
//! 6. the kernel command line (`axion.*` keys), the most explicit per-boot choice.
//!
//! The platform's channel comes first and what a person types for one boot last: a
//! vSphere template's properties are the base, a seed volume or QEMU option attached to
//! this VM overrides them, the kernel command line overrides everything.
//!
//! A later layer replaces a scalar of an earlier one (hostname, network, instance id,
//! debug switches) and a list that is one setting (`runcmd`, `ntp` servers); ssh keys
//! accumulate over all layers (duplicates dropped) and so do `write_files` (written in
//! layer order, so the later one of two files with the same path wins).
//!
//! Kernel command line keys (values with spaces in double quotes, as the kernel allows):
//!
//! | key | meaning |
//! |---|---|
//! | `axion.hostname=NAME` | hostname (RFC 1123 labels, at most 64 bytes) |
//! | `axion.ip=dhcp` | DHCPv4 on the first ethernet NIC (the default) |
//! | `axion.ip=ADDR/PREFIX[,GATEWAY[,DNS[,DNS...]]]` | static IPv4, e.g. `axion.ip=192.168.1.10/24,192.168.1.1,192.168.1.1`; an empty gateway (`10.0.0.5/8,,1.1.1.1`) means none |
//! | `axion.ssh_key="ssh-ed25519 AAAA... me@host"` | an authorized ssh key for the ssh service (repeatable) |
//! | `axion.debug_shell[=0/1]` | a root shell on the serial console, respawned when it exits |
//! | `axion.debug[=0/1]` | verbose init messages |
//! | `axion.slot=A\|B`, `axion.update.*` | boot slot and update settings, for `axion-update` |
//!
//! Unknown `axion.*` keys and invalid values are reported on the console and ignored; they
//! never stop the boot.

use std::net::Ipv4Addr;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Settings {
    pub hostname: String,
    pub network: Network,
    pub ssh_keys: Vec<String>,
    pub debug_shell: bool,
    pub debug: bool,
    /// The instance id of the highest source that has one (see `identity`).
    pub instance_id: Option<String>,
    /// Files to write before services start, in layer order (a later one for the same path
    /// is written after, so it wins).
    pub write_files: Vec<WriteFile>,
    /// Commands to run once per instance, after the ready line (highest layer that has any).
    pub runcmd: Vec<RunCmd>,
    /// NTP servers (highest layer that has any); busybox ntpd is started for them.
    pub ntp_servers: Vec<String>,
}

/// One `write_files` entry of a #cloud-config document, content already decoded. Its
/// `Debug` shows the length, not the content (it may be a private key, and `axion.debug`
/// prints the settings on the console).
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WriteFile {
    pub path: String,
    pub content: Vec<u8>,
    pub mode: u32,
    pub append: bool,
    /// Where it came from, for messages (`nocloud user-data`).
    pub source: String,
}

impl std::fmt::Debug for WriteFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteFile")
            .field("path", &self.path)
            .field("bytes", &self.content.len())
            .field("mode", &format_args!("{:o}", self.mode))
            .field("append", &self.append)
            .field("source", &self.source)
            .finish()
    }
}

/// One `runcmd` entry: a string goes to `sh -c`, a list is an argument vector.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum RunCmd {
    Shell(String),
    Argv(Vec<String>),
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Network {
    Dhcp,
    Static(StaticIp),
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StaticIp {
    pub addr: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
}

/// What one source says; `None` means "no opinion".
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Layer {
    pub hostname: Option<String>,
    pub network: Option<Network>,
    pub ssh_keys: Vec<String>,
    pub debug_shell: Option<bool>,
    pub debug: Option<bool>,
    pub instance_id: Option<String>,
    pub write_files: Vec<WriteFile>,
    pub runcmd: Option<Vec<RunCmd>>,
    pub ntp_servers: Option<Vec<String>>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            hostname: "axion".into(),
            network: Network::Dhcp,
            ssh_keys: Vec::new(),
            debug_shell: false,
            debug: false,
            instance_id: None,
            write_files: Vec::new(),
            runcmd: Vec::new(),
            ntp_servers: Vec::new(),
        }
    }
}

impl Settings {
    /// Merges layers over the defaults, lowest priority first.
    pub fn merge<'a>(layers: impl IntoIterator<Item = &'a Layer>) -> Settings {
        let mut s = Settings::default();
        for l in layers {
            if let Some(h) = &l.hostname {
                s.hostname = h.clone();
            }
            if let Some(n) = &l.network {
                s.network = n.clone();
            }
            for k in &l.ssh_keys {
                if !s.ssh_keys.contains(k) {
                    s.ssh_keys.push(k.clone());
                }
            }
            if let Some(d) = l.debug_shell {
                s.debug_shell = d;
            }
            if let Some(d) = l.debug {
                s.debug = d;
            }
            if let Some(i) = &l.instance_id {
                s.instance_id = Some(i.clone());
            }
            s.write_files.extend(l.write_files.iter().cloned());
            if let Some(r) = &l.runcmd {
                s.runcmd = r.clone();
            }
            if let Some(n) = &l.ntp_servers {
                s.ntp_servers = n.clone();
            }
        }
        s
    }
}

/// The image's `/etc/hostname` content as a layer.
pub fn hostname_file_layer(content: &str) -> Result<Layer, String> {
    let name = content.lines().next().unwrap_or("").trim();
    if name.is_empty() {
        return Ok(Layer::default());
    }
    valid_hostname(name)?;
    Ok(Layer {
        hostname: Some(name.to_string()),
        ..Layer::default()
    })
}

/// The parsed kernel command line: the settings layer plus what init itself needs.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Cmdline {
    pub layer: Layer,
    /// `console=` device names in order (`ttyS0`, `tty0`), options stripped.
    pub consoles: Vec<String>,
    /// Problems found, to be reported once the console is open.
    pub warnings: Vec<String>,
}

/// Splits a kernel command line like the kernel does: whitespace separates parameters except
/// inside double quotes; the quotes themselves are removed.
pub fn split_cmdline(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_quote = false;
    let mut have = false;
    for c in s.chars() {
        match c {
            '"' => {
                in_quote = !in_quote;
                have = true;
            }
            c if c.is_whitespace() && !in_quote => {
                if have {
                    out.push(std::mem::take(&mut cur));
                    have = false;
                }
            }
            c => {
                cur.push(c);
                have = true;
            }
        }
    }
    if have {
        out.push(cur);
    }
    out
}

fn parse_bool(key: &str, v: Option<&str>) -> Result<bool, String> {
    match v {
        None | Some("1") | Some("yes") | Some("true") | Some("on") => Ok(true),
        Some("0") | Some("no") | Some("false") | Some("off") => Ok(false),
        Some(o) => Err(format!("{key}={o}: expected 0/1/yes/no/true/false/on/off")),
    }
}

pub fn valid_hostname(h: &str) -> Result<(), String> {
    if h.is_empty() || h.len() > 64 {
        return Err(format!("hostname {h:?}: must be 1 to 64 bytes"));
    }
    for label in h.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !ok {
            return Err(format!(
                "hostname {h:?}: labels must be 1-63 letters, digits or inner hyphens"
            ));
        }
    }
    Ok(())
}

/// An authorized_keys line: `TYPE BASE64 [COMMENT]` (options before the type are allowed
/// by sshd but not needed here; such a line has at least two fields too).
pub fn valid_ssh_key(k: &str) -> bool {
    let k = k.trim();
    k.split_whitespace().count() >= 2 && !k.contains('\n')
}

/// Parses `ADDR/PREFIX[,GATEWAY[,DNS...]]` or `dhcp`.
pub fn parse_ip(v: &str) -> Result<Network, String> {
    if v.eq_ignore_ascii_case("dhcp") {
        return Ok(Network::Dhcp);
    }
    let mut parts = v.split(',');
    let cidr = parts.next().unwrap_or("");
    let (addr, prefix) = cidr
        .split_once('/')
        .ok_or_else(|| format!("axion.ip={v}: expected ADDR/PREFIX[,GATEWAY[,DNS...]] or dhcp"))?;
    let addr: Ipv4Addr = addr
        .parse()
        .map_err(|_| format!("axion.ip={v}: bad address {addr:?}"))?;
    let prefix: u8 = prefix
        .parse()
        .ok()
        .filter(|p| *p <= 32)
        .ok_or_else(|| format!("axion.ip={v}: bad prefix length {prefix:?} (0-32)"))?;
    let gateway = match parts.next() {
        None | Some("") => None,
        Some(g) => Some(
            g.parse()
                .map_err(|_| format!("axion.ip={v}: bad gateway {g:?}"))?,
        ),
    };
    let mut dns = Vec::new();
    for d in parts {
        if d.is_empty() {
            continue;
        }
        dns.push(
            d.parse()
                .map_err(|_| format!("axion.ip={v}: bad DNS server {d:?}"))?,
        );
    }
    Ok(Network::Static(StaticIp {
        addr,
        prefix,
        gateway,
        dns,
    }))
}

/// Parses `/proc/cmdline`.
pub fn parse_cmdline(s: &str) -> Cmdline {
    let mut c = Cmdline::default();
    for param in split_cmdline(s) {
        let (key, val) = match param.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (param.as_str(), None),
        };
        let res: Result<(), String> = match key {
            "console" => {
                if let Some(v) = val {
                    let name = v.split(',').next().unwrap_or("");
                    if !name.is_empty() {
                        c.consoles.push(name.to_string());
                    }
                }
                Ok(())
            }
            "axion.hostname" => match val {
                Some(h) => valid_hostname(h).map(|()| c.layer.hostname = Some(h.to_string())),
                None => Err("axion.hostname needs a value".into()),
            },
            "axion.ip" => match val {
                Some(v) => parse_ip(v).map(|n| c.layer.network = Some(n)),
                None => Err("axion.ip needs a value".into()),
            },
            "axion.ssh_key" => match val {
                Some(k) if valid_ssh_key(k) => {
                    c.layer.ssh_keys.push(k.trim().to_string());
                    Ok(())
                }
                _ => {
                    Err("axion.ssh_key: expected \"TYPE BASE64 [COMMENT]\" in double quotes".into())
                }
            },
            "axion.debug_shell" => parse_bool(key, val).map(|b| c.layer.debug_shell = Some(b)),
            "axion.debug" => parse_bool(key, val).map(|b| c.layer.debug = Some(b)),
            // GRUB's slot and the update agent's settings: axion-update reads them itself.
            k if k == "axion.slot" || k.starts_with("axion.update.") => Ok(()),
            k if k.starts_with("axion.") => Err(format!("unknown kernel parameter {k}")),
            _ => Ok(()),
        };
        if let Err(e) = res {
            c.warnings
                .push(format!("kernel command line: {e} (ignored)"));
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_like_the_kernel() {
        assert_eq!(
            split_cmdline("console=ttyS0,115200  axion.ssh_key=\"ssh-ed25519 AAAA me@h\" quiet\n"),
            vec![
                "console=ttyS0,115200",
                "axion.ssh_key=ssh-ed25519 AAAA me@h",
                "quiet"
            ]
        );
        assert_eq!(split_cmdline("\"a b\"=c d"), vec!["a b=c", "d"]);
        assert!(split_cmdline("   ").is_empty());
    }

    #[test]
    fn parses_all_keys() {
        let c = parse_cmdline(
            "console=ttyS0,115200 console=tty0 axion.hostname=web-1 \
             axion.ip=192.168.1.10/24,192.168.1.1,1.1.1.1,8.8.8.8 \
             axion.ssh_key=\"ssh-ed25519 AAAAC3 me@host\" axion.debug_shell axion.debug=0",
        );
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        assert_eq!(c.consoles, vec!["ttyS0", "tty0"]);
        assert_eq!(c.layer.hostname.as_deref(), Some("web-1"));
        assert_eq!(
            c.layer.network,
            Some(Network::Static(StaticIp {
                addr: Ipv4Addr::new(192, 168, 1, 10),
                prefix: 24,
                gateway: Some(Ipv4Addr::new(192, 168, 1, 1)),
                dns: vec![Ipv4Addr::new(1, 1, 1, 1), Ipv4Addr::new(8, 8, 8, 8)],
            }))
        );
        assert_eq!(c.layer.ssh_keys, vec!["ssh-ed25519 AAAAC3 me@host"]);
        assert_eq!(c.layer.debug_shell, Some(true));
        assert_eq!(c.layer.debug, Some(false));
    }

    #[test]
    fn static_ip_without_gateway() {
        assert_eq!(
            parse_ip("10.0.0.5/8,,1.1.1.1").unwrap(),
            Network::Static(StaticIp {
                addr: Ipv4Addr::new(10, 0, 0, 5),
                prefix: 8,
                gateway: None,
                dns: vec![Ipv4Addr::new(1, 1, 1, 1)],
            })
        );
        assert_eq!(parse_ip("DHCP").unwrap(), Network::Dhcp);
    }

    #[test]
    fn bad_values_warn_and_are_ignored() {
        let c = parse_cmdline(
            "axion.hostname=-bad- axion.ip=10.0.0.1/33 axion.ip=10.0.0.1 axion.frob=1 \
             axion.debug=maybe axion.ssh_key=nospace",
        );
        assert_eq!(c.layer, Layer::default());
        assert_eq!(c.warnings.len(), 6, "{:?}", c.warnings);
        assert!(c.warnings.iter().any(|w| w.contains("axion.frob")));
        assert!(c.warnings.iter().any(|w| w.contains("prefix")));
        // The slot GRUB booted and the update agent's settings are not init's to warn about.
        let c = parse_cmdline("axion.slot=B axion.update.ref=r:5000/axion/qemu:stable");
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    }

    #[test]
    fn later_layers_win_and_keys_accumulate() {
        let image = hostname_file_layer("img\n").unwrap();
        let a = Layer {
            ssh_keys: vec!["k1 a".into()],
            debug: Some(true),
            ..Layer::default()
        };
        let b = Layer {
            hostname: Some("cmd".into()),
            ssh_keys: vec!["k2 b".into(), "k1 a".into()],
            ..Layer::default()
        };
        let s = Settings::merge([&image, &a, &b]);
        assert_eq!(s.hostname, "cmd");
        assert_eq!(s.ssh_keys, vec!["k1 a", "k2 b"]);
        assert!(s.debug);
        assert_eq!(s.network, Network::Dhcp);
        assert_eq!(Settings::merge([&image]).hostname, "img");
        assert_eq!(Settings::merge([]).hostname, "axion");
    }

    #[test]
    fn write_files_debug_hides_the_content() {
        let f = WriteFile {
            path: "/k".into(),
            content: b"SECRET".to_vec(),
            mode: 0o600,
            append: false,
            source: "t".into(),
        };
        let d = format!("{f:?}");
        assert!(
            !d.contains("SECRET") && d.contains("bytes: 6") && d.contains("mode: 600"),
            "{d}"
        );
    }

    #[test]
    fn hostname_rules() {
        assert!(valid_hostname("a.b-c.d1").is_ok());
        assert!(valid_hostname("").is_err());
        assert!(valid_hostname("a..b").is_err());
        assert!(valid_hostname("under_score").is_err());
        assert!(valid_hostname(&"x".repeat(65)).is_err());
        assert!(hostname_file_layer("bad name\n").is_err());
        assert_eq!(hostname_file_layer("\n").unwrap(), Layer::default());
    }
}
