//! The OVF environment (`ovf-env.xml`) that vSphere writes on a small ISO attached to the
//! VM's CD-ROM when the vApp option "OVF environment transport: ISO image" is on (the
//! vsphere profile's OVA asks for it). Its `PropertySection` holds the values of the OVF
//! properties declared in the OVA's `ProductSection` (xtask/src/image/ova.rs):
//!
//! | property | meaning |
//! |---|---|
//! | `hostname` | hostname |
//! | `instance-id` | instance id (else the environment's `oe:id`, else vCenter's `ve:vCenterId`) |
//! | `ssh-key` or `public-keys` | ssh public key(s), one per line |
//! | `ip` | `dhcp`, `ADDR/PREFIX`, or `ADDR` with `netmask` |
//! | `netmask` | dotted (`255.255.255.0`) or a prefix length (`24`) |
//! | `gateway` | default gateway |
//! | `dns` | name servers, separated by commas or spaces |
//! | `network` | all of the above in one value, with the syntax of `axion.ip=` |
//! | `user-data` | a base64 `#cloud-config` document (see `cloudinit`) |
//! | `network-config` | base64 network-config version 2 |
//!
//! Empty values mean "not set" (vSphere passes every declared property, set or not). The
//! properties win over the embedded user-data and network-config. Unknown keys are
//! reported and ignored.

use std::net::Ipv4Addr;

use crate::cloudinit::{self, decode_base64, Parsed};
use crate::settings::{parse_ip, valid_hostname, valid_ssh_key, Layer, Network, StaticIp};

/// The layers an OVF environment yields, lowest priority first: embedded user-data,
/// embedded network-config, the plain properties. Problems are prefixed with the property.
pub fn parse(xml: &str) -> (Vec<Layer>, Vec<String>) {
    let mut problems = Vec::new();
    let doc = match roxmltree::Document::parse(xml) {
        Ok(d) => d,
        Err(e) => {
            return (
                Vec::new(),
                vec![format!("not valid XML: {e}; the whole document is ignored")],
            )
        }
    };
    let root = doc.root_element();
    if root.tag_name().name() != "Environment" {
        return (
            Vec::new(),
            vec![format!(
                "root element is <{}>, not <Environment>; ignored",
                root.tag_name().name()
            )],
        );
    }
    let attr = |n: roxmltree::Node, local: &str| {
        n.attributes()
            .find(|a| a.name() == local)
            .map(|a| a.value().trim().to_string())
    };
    let mut props: Vec<(String, String)> = Vec::new();
    for n in doc
        .descendants()
        .filter(|n| n.is_element() && n.tag_name().name() == "Property")
    {
        // Only the VM's own PropertySection, not those of sibling entities.
        if n.ancestors()
            .any(|a| a.is_element() && a.tag_name().name() == "Entity")
        {
            continue;
        }
        match (attr(n, "key"), attr(n, "value")) {
            (Some(k), Some(v)) => props.push((k, v)),
            _ => problems.push("Property without key or value attribute; ignored".to_string()),
        }
    }

    let mut user = Layer::default();
    let mut netcfg = Layer::default();
    let mut l = Layer::default();
    let (mut ip, mut netmask, mut gateway, mut dns) = (None, None, None, None);
    for (key, value) in &props {
        if value.is_empty() {
            continue;
        }
        let mut sub = |p: Parsed, what: &str, into: &mut Layer| {
            problems.extend(
                p.problems
                    .into_iter()
                    .map(|e| format!("{key} ({what}): {e}")),
            );
            *into = p.layer;
        };
        match key.as_str() {
            "hostname" => match valid_hostname(value) {
                Ok(()) => l.hostname = Some(value.clone()),
                Err(e) => problems.push(format!("hostname: {e}")),
            },
            "instance-id" => l.instance_id = Some(value.clone()),
            "ssh-key" | "public-keys" | "ssh_authorized_keys" => {
                for k in value.lines().map(str::trim).filter(|k| !k.is_empty()) {
                    if valid_ssh_key(k) {
                        l.ssh_keys.push(k.to_string());
                    } else {
                        problems.push(format!("{key}: {k:?} is not an ssh public key"));
                    }
                }
            }
            "ip" => ip = Some(value.clone()),
            "netmask" => netmask = Some(value.clone()),
            "gateway" => gateway = Some(value.clone()),
            "dns" => dns = Some(value.clone()),
            "network" => match parse_ip(value) {
                Ok(n) => l.network = Some(n),
                Err(e) => problems.push(format!("network: {e}")),
            },
            "user-data" => match decode_base64(value)
                .map(|b| String::from_utf8_lossy(&b).into_owned())
            {
                Ok(text) => sub(cloudinit::parse_user_data(&text), "user-data", &mut user),
                Err(e) => problems.push(format!("user-data: {e} (expected base64 #cloud-config)")),
            },
            "network-config" => {
                match decode_base64(value).map(|b| String::from_utf8_lossy(&b).into_owned()) {
                    Ok(text) => sub(
                        cloudinit::parse_network_config(&text),
                        "network-config",
                        &mut netcfg,
                    ),
                    Err(e) => problems.push(format!("network-config: {e}")),
                }
            }
            other => problems.push(format!("{other}: unknown property (ignored)")),
        }
    }
    if l.network.is_none() {
        match static_from_parts(
            ip.as_deref(),
            netmask.as_deref(),
            gateway.as_deref(),
            dns.as_deref(),
        ) {
            Ok(n) => l.network = n,
            Err(e) => problems.push(e),
        }
    } else if ip.is_some() {
        problems.push("ip: both network and ip are set; using network".into());
    }
    if l.instance_id.is_none() {
        l.instance_id = attr(root, "id")
            .filter(|s| !s.is_empty())
            .or_else(|| attr(root, "vCenterId").filter(|s| !s.is_empty()));
    }
    (vec![user, netcfg, l], problems)
}

fn prefix_of(mask: &str) -> Option<u8> {
    if let Ok(p) = mask.parse::<u8>() {
        return (p <= 32).then_some(p);
    }
    let m = u32::from(mask.parse::<Ipv4Addr>().ok()?);
    let p = m.leading_ones();
    (m.checked_shl(p).unwrap_or(0) == 0).then_some(p as u8)
}

/// `ip`, `netmask`, `gateway`, `dns` properties to a network setting.
fn static_from_parts(
    ip: Option<&str>,
    netmask: Option<&str>,
    gateway: Option<&str>,
    dns: Option<&str>,
) -> Result<Option<Network>, String> {
    let Some(ip) = ip else {
        if netmask.or(gateway).or(dns).is_some() {
            return Err("netmask/gateway/dns: set without ip; ignored".into());
        }
        return Ok(None);
    };
    if ip.eq_ignore_ascii_case("dhcp") {
        return Ok(Some(Network::Dhcp));
    }
    let (addr, prefix) = match ip.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (ip, netmask),
    };
    let addr: Ipv4Addr = addr
        .parse()
        .map_err(|_| format!("ip: {ip:?} is not an IPv4 address"))?;
    let prefix = match prefix {
        Some(p) => prefix_of(p)
            .ok_or_else(|| format!("netmask: {p:?} is not a netmask or prefix length"))?,
        None => return Err(format!("ip: {ip}: needs a netmask (or ip=ADDR/PREFIX)")),
    };
    let gateway = match gateway {
        Some(g) => Some(
            g.parse()
                .map_err(|_| format!("gateway: {g:?} is not an IPv4 address"))?,
        ),
        None => None,
    };
    let mut servers = Vec::new();
    for d in dns
        .unwrap_or("")
        .split([',', ' '])
        .filter(|d| !d.is_empty())
    {
        servers.push(
            d.parse()
                .map_err(|_| format!("dns: {d:?} is not an IPv4 address"))?,
        );
    }
    Ok(Some(Network::Static(StaticIp {
        addr,
        prefix,
        gateway,
        dns: servers,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    fn env(props: &[(&str, &str)]) -> String {
        let mut s = String::from(
            r#"<?xml version="1.0" encoding="UTF-8"?>
<Environment xmlns="http://schemas.dmtf.org/ovf/environment/1"
     xmlns:oe="http://schemas.dmtf.org/ovf/environment/1"
     xmlns:ve="http://www.vmware.com/schema/ovfenv" oe:id="" ve:vCenterId="vm-42">
  <PlatformSection><Kind>VMware ESXi</Kind><Version>7.0.3</Version>
    <Vendor>VMware, Inc.</Vendor><Locale>en</Locale></PlatformSection>
  <PropertySection>
"#,
        );
        for (k, v) in props {
            s.push_str(&format!(
                "    <Property oe:key=\"{k}\" oe:value=\"{v}\"/>\n"
            ));
        }
        s.push_str(
            "  </PropertySection>\n  <Entity oe:id=\"sib\"><PropertySection><Property \
             oe:key=\"hostname\" \
             oe:value=\"sibling\"/></PropertySection></Entity>\n</Environment>\n",
        );
        s
    }

    #[test]
    fn properties() {
        let ud = base64::engine::general_purpose::STANDARD
            .encode("#cloud-config\nhostname: from-ud\nruncmd: [date]\n");
        let (layers, problems) = parse(&env(&[
            ("hostname", "vm-a"),
            ("ssh-key", "ssh-ed25519 AAAA a@b"),
            ("ip", "192.168.10.5"),
            ("netmask", "255.255.255.0"),
            ("gateway", "192.168.10.1"),
            ("dns", "1.1.1.1, 8.8.8.8"),
            ("user-data", &ud),
            ("network-config", ""),
        ]));
        assert!(problems.is_empty(), "{problems:?}");
        let s = crate::settings::Settings::merge(&layers);
        assert_eq!(s.hostname, "vm-a");
        assert_eq!(s.ssh_keys, vec!["ssh-ed25519 AAAA a@b"]);
        assert_eq!(s.instance_id.as_deref(), Some("vm-42"));
        assert_eq!(s.runcmd.len(), 1);
        assert_eq!(
            s.network,
            Network::Static(StaticIp {
                addr: Ipv4Addr::new(192, 168, 10, 5),
                prefix: 24,
                gateway: Some(Ipv4Addr::new(192, 168, 10, 1)),
                dns: vec![Ipv4Addr::new(1, 1, 1, 1), Ipv4Addr::new(8, 8, 8, 8)],
            })
        );
    }

    #[test]
    fn network_property_and_instance_id() {
        let (layers, problems) = parse(&env(&[
            ("network", "10.0.0.5/8,10.0.0.1"),
            ("instance-id", "iid-7"),
            ("public-keys", "ssh-rsa A x&#10;ssh-ed25519 B y"),
        ]));
        assert!(problems.is_empty(), "{problems:?}");
        let s = crate::settings::Settings::merge(&layers);
        assert_eq!(s.instance_id.as_deref(), Some("iid-7"));
        assert_eq!(s.ssh_keys.len(), 2);
        assert!(matches!(
            s.network,
            Network::Static(StaticIp { prefix: 8, .. })
        ));
    }

    #[test]
    fn bad_input_is_reported() {
        let (layers, problems) = parse("<Environment><unclosed></Environment>");
        assert!(layers.is_empty());
        assert!(problems[0].starts_with("not valid XML"), "{problems:?}");
        let (_, problems) = parse(&env(&[
            ("hostname", "bad_name"),
            ("ip", "10.0.0.1"),
            ("frob", "1"),
            ("user-data", "%%%"),
        ]));
        assert_eq!(problems.len(), 4, "{problems:?}");
        assert!(problems.iter().any(|p| p.contains("needs a netmask")));
        assert!(problems.iter().any(|p| p.starts_with("frob")));
        let (_, problems) = parse(&env(&[(
            "user-data",
            &base64::engine::general_purpose::STANDARD.encode("#cloud-config\nfoo: [\n"),
        )]));
        assert!(
            problems[0].starts_with("user-data (user-data): not valid YAML"),
            "{problems:?}"
        );
    }

    #[test]
    fn netmasks() {
        assert_eq!(prefix_of("255.255.255.0"), Some(24));
        assert_eq!(prefix_of("255.0.255.0"), None);
        assert_eq!(prefix_of("0.0.0.0"), Some(0));
        assert_eq!(prefix_of("255.255.255.255"), Some(32));
        assert_eq!(prefix_of("16"), Some(16));
        assert_eq!(prefix_of("33"), None);
    }
}
