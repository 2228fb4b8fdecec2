//! The contract between axion-vmd (host/vmd, on the host) and the guest engine
//! (packages/engine, in each VM) in VM-per-container mode: everything both sides spell,
//! written once. The host writes these names into the VM's configuration (QEMU's devices,
//! the engine's service files); the guest finds its ports, mounts its share and parses the
//! clone agent's lines with the same constants and types.
//!
//! The clone agent's protocol, one line each way on the virtio-serial port [`AGENT_PORT`]:
//!
//! - host → guest `clone HOSTNAME EPOCH MAC SEED` ([`Request::Clone`]): after a restore, the
//!   clone's identity (host name, the host's clock in seconds since the epoch, a new MAC,
//!   a random seed in hex); the guest answers `ok HOSTNAME` ([`Reply::Ok`]) once the clock,
//!   the RNG and the layer store are done.
//! - host → guest `ping` ([`Request::Ping`]), answered `pong` ([`Reply::Pong`]).
//! - host → guest `mount` ([`Request::Mount`]): mount the layer store now, before the clone
//!   has its identity (axion-vmd's warm pool: the mount is then off a container's critical
//!   path; the store is the same for every clone, so this tells the guest nothing of its
//!   own). Answered `mounted` ([`Reply::Mounted`]) once tried; a `clone` after a failed try
//!   mounts it again.

use std::fmt;
use std::net::Ipv4Addr;

/// The virtio-serial port of the clone agent (the engine's [`AGENT_MODE`]).
pub const AGENT_PORT: &str = "axion.vmd";
/// The virtio-serial port the guest engine serves the daemon on (`engine --vmd-port`): a
/// multiplexed session (crate vchan) per host connection, one HTTP connection per stream.
pub const ENGINE_PORT: &str = "axion.engine";
/// The engine's hidden first argument that runs it as the clone agent:
/// `engine __vmd-agent PORT`.
pub const AGENT_MODE: &str = "__vmd-agent";
/// The 9p mount tag of the host's layer store, exported read-only to every VM.
pub const STORE_TAG: &str = "axion.store";
/// Where the clone agent mounts the layer store in the guest (the engine's `--image-share`).
pub const STORE_DIR: &str = "/run/axion-store";
/// The host as the guest sees it on QEMU's user network (its gateway): the host's
/// 127.0.0.1 registries are reached here, and the agent's ARP request asks for it.
pub const HOST_ADDR: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
/// Set in the guest's service environment (axion-vmd's `VMD_DEBUG`): the engine and the
/// agent log the time of each step.
pub const TRACE_ENV: &str = "AXION_ENGINE_TRACE";

/// A line of the agent's protocol that does not parse, or a value that cannot be sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("unknown command {0:?}")]
    Unknown(String),
    #[error("{what}: {line:?}")]
    Malformed { what: &'static str, line: String },
    #[error("host name {0:?} is empty or has white space (the line is space-separated)")]
    Hostname(String),
}

/// What a restored clone is told about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub hostname: String,
    /// The host's clock, seconds since the Unix epoch (the saved guest's clock is the
    /// template's).
    pub epoch: u64,
    /// A new MAC for the NIC (every clone resumes with the template's).
    pub mac: [u8; 6],
    /// Fresh random bytes credited to the guest kernel's pool (every clone resumes with the
    /// template's RNG state).
    pub seed: Vec<u8>,
}

/// A line from the host to the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Clone(Identity),
    Ping,
    Mount,
}

/// A line from the agent to the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// The identity is taken (clock, RNG, store); the host name and MAC follow.
    Ok {
        hostname: String,
    },
    Pong,
    /// The layer store's mount was tried (`mount`).
    Mounted,
}

fn check_hostname(h: &str) -> Result<(), Error> {
    if h.is_empty() || h.chars().any(char::is_whitespace) {
        return Err(Error::Hostname(h.to_string()));
    }
    Ok(())
}

impl Request {
    /// The line to send, newline included. Fails on a host name the line cannot carry.
    pub fn to_line(&self) -> Result<String, Error> {
        match self {
            Request::Clone(id) => {
                check_hostname(&id.hostname)?;
                if id.seed.is_empty() {
                    // An empty field would vanish from the space-separated line.
                    return Err(Error::Malformed {
                        what: "empty seed",
                        line: String::new(),
                    });
                }
                Ok(format!(
                    "clone {} {} {} {}\n",
                    id.hostname,
                    id.epoch,
                    format_mac(&id.mac),
                    hex(&id.seed)
                ))
            }
            Request::Ping => Ok("ping\n".into()),
            Request::Mount => Ok("mount\n".into()),
        }
    }

    /// Parses one line (surrounding white space ignored); `Ok(None)` for an empty line.
    pub fn parse(line: &str) -> Result<Option<Request>, Error> {
        let f: Vec<&str> = line.split_whitespace().collect();
        let bad = |what| Error::Malformed {
            what,
            line: line.trim().to_string(),
        };
        match f.as_slice() {
            [] => Ok(None),
            ["ping", ..] => Ok(Some(Request::Ping)),
            ["mount", ..] => Ok(Some(Request::Mount)),
            ["clone", hostname, epoch, mac, seed] => Ok(Some(Request::Clone(Identity {
                hostname: hostname.to_string(),
                epoch: epoch.parse().map_err(|_| bad("bad time"))?,
                mac: parse_mac(mac).ok_or_else(|| bad("bad MAC"))?,
                seed: unhex(seed).ok_or_else(|| bad("bad seed"))?,
            }))),
            ["clone", ..] => Err(bad("clone takes HOSTNAME EPOCH MAC SEED")),
            [cmd, ..] => Err(Error::Unknown(cmd.to_string())),
        }
    }
}

impl Reply {
    /// The line to send, newline included.
    pub fn to_line(&self) -> Result<String, Error> {
        match self {
            Reply::Ok { hostname } => {
                check_hostname(hostname)?;
                Ok(format!("ok {hostname}\n"))
            }
            Reply::Pong => Ok("pong\n".into()),
            Reply::Mounted => Ok("mounted\n".into()),
        }
    }

    /// Parses one line (surrounding white space ignored).
    pub fn parse(line: &str) -> Result<Reply, Error> {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            ["ok", hostname] => Ok(Reply::Ok {
                hostname: hostname.to_string(),
            }),
            ["pong"] => Ok(Reply::Pong),
            ["mounted"] => Ok(Reply::Mounted),
            [cmd, ..] => Err(Error::Unknown(cmd.to_string())),
            [] => Err(Error::Malformed {
                what: "empty reply",
                line: String::new(),
            }),
        }
    }
}

/// `02:ab:00:10:ff:09`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    MacDisplay(mac).to_string()
}

struct MacDisplay<'a>(&'a [u8; 6]);

impl fmt::Display for MacDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// Six colon-separated hex octets.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let parts: Vec<u8> = s
        .split(':')
        .map(|p| {
            if p.len() == 2 {
                u8::from_str_radix(p, 16).ok()
            } else {
                None
            }
        })
        .collect::<Option<_>>()?;
    parts.try_into().ok()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.is_ascii() {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clone_message_round_trips() {
        let id = Identity {
            hostname: "c0ffee123456".into(),
            epoch: 1_764_600_000,
            mac: [0x02, 0xab, 0x00, 0x10, 0xff, 0x09],
            seed: (0..32).collect(),
        };
        let line = Request::Clone(id.clone()).to_line().unwrap();
        assert_eq!(
            line,
            "clone c0ffee123456 1764600000 02:ab:00:10:ff:09 \
             000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\n"
        );
        assert_eq!(Request::parse(&line), Ok(Some(Request::Clone(id))));

        let ok = Reply::Ok {
            hostname: "c0ffee123456".into(),
        };
        assert_eq!(ok.to_line().unwrap(), "ok c0ffee123456\n");
        assert_eq!(Reply::parse(&ok.to_line().unwrap()), Ok(ok));
        assert_eq!(
            Request::parse(&Request::Ping.to_line().unwrap()),
            Ok(Some(Request::Ping))
        );
        assert_eq!(
            Reply::parse(&Reply::Pong.to_line().unwrap()),
            Ok(Reply::Pong)
        );
        assert_eq!(Request::Mount.to_line().unwrap(), "mount\n");
        assert_eq!(Request::parse("mount\n"), Ok(Some(Request::Mount)));
        assert_eq!(Reply::parse("mounted\n"), Ok(Reply::Mounted));
    }

    #[test]
    fn bad_lines_are_errors() {
        assert_eq!(Request::parse("  \n"), Ok(None));
        assert_eq!(Request::parse("ping extra"), Ok(Some(Request::Ping)));
        assert!(matches!(
            Request::parse("nonsense 1 2"),
            Err(Error::Unknown(_))
        ));
        assert!(Request::parse("clone h 1 02:ab:00:10:ff:09").is_err());
        assert!(Request::parse("clone h x 02:ab:00:10:ff:09 00").is_err());
        assert!(Request::parse("clone h 1 02:ab:00 00").is_err());
        assert!(Request::parse("clone h 1 zz:ab:00:10:ff:09 00").is_err());
        assert!(Request::parse("clone h 1 02:ab:00:10:ff:09 0").is_err());
        assert!(Request::parse("clone h 1 02:ab:00:10:ff:09 zz").is_err());
        assert!(Request::parse("clone h 1 02:ab:00:10:ff:09 é0").is_err());
        assert!(Reply::parse("ok").is_err());
        assert!(Reply::parse("").is_err());
    }

    #[test]
    fn a_host_name_the_line_cannot_carry_is_refused() {
        for h in ["", "two words", "tab\there"] {
            let r = Request::Clone(Identity {
                hostname: h.into(),
                epoch: 0,
                mac: [2, 0, 0, 0, 0, 1],
                seed: vec![1],
            });
            assert_eq!(r.to_line(), Err(Error::Hostname(h.into())));
        }
        let empty_seed = Request::Clone(Identity {
            hostname: "h".into(),
            epoch: 0,
            mac: [2, 0, 0, 0, 0, 1],
            seed: vec![],
        });
        assert!(empty_seed.to_line().is_err());
    }

    #[test]
    fn macs() {
        assert_eq!(
            parse_mac("02:ab:00:10:ff:09"),
            Some([2, 0xab, 0, 0x10, 0xff, 9])
        );
        assert_eq!(
            format_mac(&[2, 0xab, 0, 0x10, 0xff, 9]),
            "02:ab:00:10:ff:09"
        );
        assert_eq!(parse_mac("02:ab:00"), None);
        assert_eq!(parse_mac("02:ab:00:10:ff:09:00"), None);
        assert_eq!(parse_mac("zz:ab:00:10:ff:09"), None);
    }
}
