//! Docker's published-port specs, with Docker's meaning, for both back ends (the engine
//! and axion-vmd).
//!
//! Two spellings of the same thing:
//!
//! - the `-p` flag of `docker run` ([`parse`]): `[IP:][HOST:]CONTAINER[/PROTO]`, where
//!   CONTAINER and HOST may be ranges (`8000-8001:80-81` pairs them one by one; a host range
//!   for a single container port, `8000-8010:80`, means "any free one of these"), an IPv6
//!   address is bracketed (`[::1]:8080:80`), and PROTO is `tcp` (the default) or `udp`;
//! - the API's `HostConfig.PortBindings` ([`from_bindings`]), which is what the CLI sends
//!   after reading `-p`: `{"80/tcp": [{"HostIp": "", "HostPort": "8080"}]}`.
//!
//! No host port (`-p 80`, `-p 127.0.0.1::80`, `"HostPort": ""`) is an ephemeral port the
//! daemon picks ([`HostPort::Ephemeral`]), not host port 80. No host address means every
//! address. SCTP, which Docker also publishes, is refused: neither back end forwards it.

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::types::PortBinding;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// The host side's port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostPort {
    /// The daemon picks a free one (Docker: from the kernel's ephemeral range).
    Ephemeral,
    Fixed(u16),
    /// Any free port of `first..=last`.
    Range(u16, u16),
}

/// One published port: the host address and port that forward to the container's port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortMapping {
    /// `None`: every address.
    pub host_ip: Option<IpAddr>,
    pub host_port: HostPort,
    pub container_port: u16,
    pub proto: Proto,
}

impl PortMapping {
    /// The `PortBindings` key: `80/tcp`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.container_port, self.proto.as_str())
    }

    /// The binding as the API spells it.
    pub fn binding(&self) -> PortBinding {
        PortBinding {
            host_ip: self.host_ip.map(|ip| ip.to_string()).unwrap_or_default(),
            host_port: match self.host_port {
                HostPort::Ephemeral => String::new(),
                HostPort::Fixed(p) => p.to_string(),
                HostPort::Range(a, b) => format!("{a}-{b}"),
            },
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortSpecError {
    #[error(
        "invalid port specification {spec:?}: invalid proto {proto:?}, only tcp and udp can be \
        published"
    )]
    Proto { spec: String, proto: String },
    #[error("invalid port specification {spec:?}: invalid container port {port:?}")]
    ContainerPort { spec: String, port: String },
    #[error("invalid port specification {spec:?}: invalid host port {port:?}")]
    HostPort { spec: String, port: String },
    #[error("invalid port specification {spec:?}: invalid host IP {ip:?}")]
    HostIp { spec: String, ip: String },
    #[error(
        "invalid port specification {spec:?}: the host range and the container range differ in \
        length"
    )]
    RangeLength { spec: String },
}

/// A port (1-65535, or 0 too with `zero_ok`) or a range `A-B` with A <= B; `err` is the
/// error for anything else.
fn range(
    s: &str,
    zero_ok: bool,
    err: impl Fn() -> PortSpecError,
) -> Result<(u16, u16), PortSpecError> {
    let one = |p: &str| -> Result<u16, PortSpecError> {
        match p.parse::<u16>() {
            Ok(0) if !zero_ok => Err(err()),
            Ok(n) => Ok(n),
            Err(_) => Err(err()),
        }
    };
    match s.split_once('-') {
        None => one(s).map(|p| (p, p)),
        Some((a, b)) => {
            let (a, b) = (one(a)?, one(b)?);
            if a > b {
                return Err(err());
            }
            Ok((a, b))
        }
    }
}

fn proto(spec: &str, p: &str) -> Result<Proto, PortSpecError> {
    match p {
        "tcp" => Ok(Proto::Tcp),
        "udp" => Ok(Proto::Udp),
        _ => Err(PortSpecError::Proto {
            spec: spec.into(),
            proto: p.into(),
        }),
    }
}

fn host_ip(spec: &str, ip: &str) -> Result<Option<IpAddr>, PortSpecError> {
    let bare = ip
        .strip_prefix('[')
        .and_then(|i| i.strip_suffix(']'))
        .unwrap_or(ip);
    if bare.is_empty() {
        return Ok(None);
    }
    bare.parse().map(Some).map_err(|_| PortSpecError::HostIp {
        spec: spec.into(),
        ip: ip.into(),
    })
}

/// A `docker run -p` value: every port it publishes.
pub fn parse(spec: &str) -> Result<Vec<PortMapping>, PortSpecError> {
    let (rest, proto) = match spec.rsplit_once('/') {
        Some((r, p)) => (r, proto(spec, p)?),
        None => (spec, Proto::Tcp),
    };
    // IP, HOST and CONTAINER from the right; an IPv6 address is bracketed.
    let (ip, ports) = match rest.strip_prefix('[') {
        Some(_) => match rest.find("]:") {
            Some(i) => (&rest[..=i], &rest[i + 2..]),
            None => {
                return Err(PortSpecError::HostIp {
                    spec: spec.into(),
                    ip: rest.into(),
                })
            }
        },
        None => match rest.matches(':').count() {
            0 | 1 => ("", rest),
            _ => {
                let i = rest.find(':').unwrap_or(0);
                (&rest[..i], &rest[i + 1..])
            }
        },
    };
    let (host, container) = match ports.split_once(':') {
        Some((h, c)) => (h, c),
        None => ("", ports),
    };
    let host_ip = host_ip(spec, ip)?;
    let (c0, c1) = range(container, false, || PortSpecError::ContainerPort {
        spec: spec.into(),
        port: container.into(),
    })?;
    let hosts: Option<(u16, u16)> = if host.is_empty() {
        None
    } else {
        Some(range(host, false, || PortSpecError::HostPort {
            spec: spec.into(),
            port: host.into(),
        })?)
    };
    let n = c1 - c0;
    let mapping = |container_port, host_port| PortMapping {
        host_ip,
        host_port,
        container_port,
        proto,
    };
    Ok(match hosts {
        None => (c0..=c1).map(|c| mapping(c, HostPort::Ephemeral)).collect(),
        // One container port, a host range: any free one of them.
        Some((h0, h1)) if n == 0 && h1 > h0 => vec![mapping(c0, HostPort::Range(h0, h1))],
        Some((h0, h1)) if h1 - h0 == n => (0..=n)
            .map(|i| mapping(c0 + i, HostPort::Fixed(h0 + i)))
            .collect(),
        Some(_) => {
            return Err(PortSpecError::RangeLength { spec: spec.into() });
        }
    })
}

/// One `PortBindings` entry: the key (`80/tcp`, `53/udp`, `80`) and its bindings. An entry
/// without bindings publishes nothing.
pub fn from_bindings(
    key: &str,
    bindings: &[PortBinding],
) -> Result<Vec<PortMapping>, PortSpecError> {
    let (port, p) = key.split_once('/').unwrap_or((key, "tcp"));
    let proto = proto(key, p)?;
    let (container_port, _) = match range(port, false, || PortSpecError::ContainerPort {
        spec: key.into(),
        port: port.into(),
    })? {
        (a, b) if a == b => (a, b),
        _ => {
            return Err(PortSpecError::ContainerPort {
                spec: key.into(),
                port: port.into(),
            })
        }
    };
    bindings
        .iter()
        .map(|b| {
            let spec = || format!("{key} {}:{}", b.host_ip, b.host_port);
            let host_ip = host_ip(&spec(), &b.host_ip)?;
            // "0" is what some clients send for "pick one".
            let host_port = match range(&b.host_port, true, || PortSpecError::HostPort {
                spec: spec(),
                port: b.host_port.clone(),
            }) {
                _ if b.host_port.is_empty() => HostPort::Ephemeral,
                Ok((0, 0)) => HostPort::Ephemeral,
                Ok((a, b)) if a == b => HostPort::Fixed(a),
                Ok((0, _)) => {
                    return Err(PortSpecError::HostPort {
                        spec: spec(),
                        port: b.host_port.clone(),
                    })
                }
                Ok((a, b)) => HostPort::Range(a, b),
                Err(e) => return Err(e),
            };
            Ok(PortMapping {
                host_ip,
                host_port,
                container_port,
                proto,
            })
        })
        .collect()
}

/// Every port of a container's `HostConfig.PortBindings`.
pub fn from_port_bindings(
    map: &BTreeMap<String, Option<Vec<PortBinding>>>,
) -> Result<Vec<PortMapping>, PortSpecError> {
    let mut out = Vec::new();
    for (key, bindings) in map {
        out.extend(from_bindings(key, bindings.as_deref().unwrap_or_default())?);
    }
    Ok(out)
}

/// `PortBindings` as the docker CLI sends them for `mappings`.
pub fn to_port_bindings(mappings: &[PortMapping]) -> BTreeMap<String, Option<Vec<PortBinding>>> {
    let mut map: BTreeMap<String, Option<Vec<PortBinding>>> = BTreeMap::new();
    for m in mappings {
        map.entry(m.key())
            .or_default()
            .get_or_insert_with(Vec::new)
            .push(m.binding());
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(ip: Option<&str>, host_port: HostPort, container_port: u16, proto: Proto) -> PortMapping {
        PortMapping {
            host_ip: ip.map(|i| i.parse().unwrap()),
            host_port,
            container_port,
            proto,
        }
    }

    #[test]
    fn the_cli_forms_mean_what_they_mean_to_docker() {
        use HostPort::*;
        use Proto::*;
        let lo = Some("127.0.0.1");
        let cases: &[(&str, Vec<PortMapping>)] = &[
            // No host port: an ephemeral one, not host port 80.
            ("80", vec![m(None, Ephemeral, 80, Tcp)]),
            ("8080:80", vec![m(None, Fixed(8080), 80, Tcp)]),
            ("127.0.0.1:8080:80", vec![m(lo, Fixed(8080), 80, Tcp)]),
            ("127.0.0.1::80", vec![m(lo, Ephemeral, 80, Tcp)]),
            ("53:53/udp", vec![m(None, Fixed(53), 53, Udp)]),
            ("80/tcp", vec![m(None, Ephemeral, 80, Tcp)]),
            (
                "8000-8001:80-81",
                vec![m(None, Fixed(8000), 80, Tcp), m(None, Fixed(8001), 81, Tcp)],
            ),
            (
                "80-81/udp",
                vec![m(None, Ephemeral, 80, Udp), m(None, Ephemeral, 81, Udp)],
            ),
            ("8000-8010:80", vec![m(None, Range(8000, 8010), 80, Tcp)]),
            ("[::1]:8080:80", vec![m(Some("::1"), Fixed(8080), 80, Tcp)]),
            ("[::]::80", vec![m(Some("::"), Ephemeral, 80, Tcp)]),
        ];
        for (spec, want) in cases {
            assert_eq!(&parse(spec).unwrap(), want, "-p {spec}");
            // What the CLI would send reads back as the same ports.
            let sent = to_port_bindings(want);
            assert_eq!(
                &from_port_bindings(&sent).unwrap(),
                want,
                "-p {spec}: {sent:?}"
            );
        }
    }

    #[test]
    fn bad_cli_forms_are_refused() {
        for spec in [
            "",
            "http",
            "0",
            "65536",
            "80/sctp",
            "80/",
            "8080:",
            "x:80",
            "not-an-ip:8080:80",
            "[::1:8080:80",
            "8001-8000:80",
            "8000-8002:80-81",
            "8000:80-81",
            "1:2:3:4",
        ] {
            assert!(
                parse(spec).is_err(),
                "-p {spec:?} was accepted: {:?}",
                parse(spec)
            );
        }
        let e = parse("80/sctp").unwrap_err().to_string();
        assert!(e.contains("sctp") && e.contains("only tcp and udp"), "{e}");
    }

    fn b(ip: &str, port: &str) -> PortBinding {
        PortBinding {
            host_ip: ip.into(),
            host_port: port.into(),
        }
    }

    #[test]
    fn api_bindings_as_the_docker_cli_sends_them() {
        use HostPort::*;
        assert_eq!(
            from_bindings("53/udp", &[b("127.0.0.1", "5353")]).unwrap(),
            [m(Some("127.0.0.1"), Fixed(5353), 53, Proto::Udp)]
        );
        // `-p 8080` alone: an ephemeral host port on every address.
        assert_eq!(
            from_bindings("8080/tcp", &[b("", "")]).unwrap(),
            [m(None, Ephemeral, 8080, Proto::Tcp)]
        );
        assert_eq!(
            from_bindings("8080/tcp", &[b("0.0.0.0", "0")]).unwrap(),
            [m(Some("0.0.0.0"), Ephemeral, 8080, Proto::Tcp)]
        );
        assert_eq!(
            from_bindings("80", &[b("", "81")]).unwrap()[0].proto,
            Proto::Tcp
        );
        assert_eq!(
            from_bindings("80/tcp", &[b("", "8000-8010")]).unwrap(),
            [m(None, Range(8000, 8010), 80, Proto::Tcp)]
        );
        // Exposed, not published.
        assert_eq!(from_bindings("80/tcp", &[]).unwrap(), []);
        let mut map = BTreeMap::new();
        map.insert("80/tcp".to_string(), None);
        assert_eq!(from_port_bindings(&map).unwrap(), []);

        assert!(from_bindings("80/sctp", &[b("", "80")])
            .unwrap_err()
            .to_string()
            .contains("sctp"));
        assert!(from_bindings("http/tcp", &[]).is_err());
        assert!(from_bindings("0/tcp", &[]).is_err());
        assert!(from_bindings("80-81/tcp", &[]).is_err());
        assert!(from_bindings("80/tcp", &[b("not-an-ip", "80")])
            .unwrap_err()
            .to_string()
            .contains("not-an-ip"));
        for bad in ["x", "70000", "9-8", "0-5", "-1"] {
            assert!(
                from_bindings("80/tcp", &[b("", bad)]).is_err(),
                "host port {bad:?}"
            );
        }
    }
}
