//! User-defined networks: their records, address management and persistence.
//!
//! Each user network is a Linux bridge of its own (`br-<id12>` unless
//! `com.docker.network.bridge.name` says otherwise) with its subnet: given (IPAM Config
//! Subnet/Gateway/IPRange) or the first free one of dockerd's default pools (172.18.0.0/16 …
//! 172.31.0.0/16, then 192.168.0.0/20 … 192.168.240.0/20), never overlapping another
//! network or the default bridge. A container's attachment (aliases, the address asked
//! for, the address held, its endpoint id) is kept from connect (or create) until
//! disconnect or removal, so a container keeps its address across restarts; the network's
//! `Containers` shows the running ones only, as dockerd's endpoints exist while a container
//! runs. Everything is kept in `<data-root>/network/networks.json` (written to a temporary
//! file, fsynced, renamed), with the ids of the predefined `bridge`, `host` and `none`.
//!
//! The wiring (bridges, veths, nf_tables) is in `crate::net`; the embedded DNS in [`dns`].

pub mod dns;

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// A subnet: network address and prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cidr {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Option<Cidr> {
        let (a, p) = s.split_once('/')?;
        let addr: Ipv4Addr = a.parse().ok()?;
        let prefix: u8 = p.parse().ok().filter(|p| *p <= 32)?;
        Some(Cidr { addr, prefix })
    }
    pub fn mask(&self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - self.prefix)
        }
    }
    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) & self.mask())
    }
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) | !self.mask())
    }
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.network())
    }
    pub fn overlaps(&self, o: &Cidr) -> bool {
        self.contains(o.network()) || o.contains(self.network())
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network(), self.prefix)
    }
}

/// One container's endpoint on a user network.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Attachment {
    pub endpoint_id: String,
    pub aliases: Vec<String>,
    /// The address the client asked for (`--ip`), kept for inspect's IPAMConfig.
    pub requested: Option<Ipv4Addr>,
    pub ip: Ipv4Addr,
    pub mac: String,
    /// Attach order: the container's interfaces are eth0, eth1, … in this order.
    pub order: u64,
    /// The interface inside the container while it runs (eth1, …).
    #[serde(default)]
    pub ifname: Option<String>,
    /// Endpoint links `NAME:ALIAS`: ALIAS resolves to NAME for this container only.
    #[serde(default)]
    pub links: Vec<String>,
    /// Endpoint driver options, kept as given (the bridge driver has none of its own).
    #[serde(default)]
    pub driver_opts: BTreeMap<String, String>,
}

/// What a container asks of its endpoint on one network.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointReq {
    pub aliases: Vec<String>,
    pub ip: Option<Ipv4Addr>,
    pub mac: Option<String>,
    pub links: Vec<String>,
    pub driver_opts: BTreeMap<String, String>,
}

/// A user-defined network, as stored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct UserNet {
    pub id: String,
    pub name: String,
    /// Unix nanoseconds.
    pub created: i128,
    pub internal: bool,
    pub attachable: bool,
    pub masquerade: bool,
    pub bridge: String,
    pub subnet: Cidr,
    pub gateway: Ipv4Addr,
    pub ip_range: Option<Cidr>,
    /// IPAM AuxiliaryAddresses: reserved, never handed to a container.
    #[serde(default)]
    pub aux: BTreeMap<String, Ipv4Addr>,
    /// Whether the client gave the subnet (then `--ip` is allowed, as in dockerd).
    pub user_subnet: bool,
    pub ipam_driver: String,
    pub ipam_options: BTreeMap<String, String>,
    pub options: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    /// Container id → attachment.
    pub endpoints: BTreeMap<String, Attachment>,
}

impl UserNet {
    /// The gateway as a `net::Bridge` (name, address, prefix).
    pub fn as_bridge(&self) -> crate::net::Bridge {
        crate::net::Bridge {
            name: self.bridge.clone(),
            gateway: self.gateway,
            prefix: self.subnet.prefix,
        }
    }

    fn free_ip(&self, exclude: &[Ipv4Addr]) -> Option<Ipv4Addr> {
        let range = self.ip_range.unwrap_or(self.subnet);
        let first = u32::from(range.network()).max(u32::from(self.subnet.network()) + 1);
        let last = u32::from(range.broadcast()).min(u32::from(self.subnet.broadcast()) - 1);
        let used: std::collections::HashSet<Ipv4Addr> =
            self.endpoints.values().map(|a| a.ip).collect();
        (first..=last).map(Ipv4Addr::from).find(|ip| {
            *ip != self.gateway
                && !used.contains(ip)
                && !exclude.contains(ip)
                && !self.aux.values().any(|a| a == ip)
        })
    }
}

/// What a create asks for, validated by the back end's API layer.
#[derive(Debug, Clone, Default)]
pub struct CreateSpec {
    pub name: String,
    pub internal: bool,
    pub attachable: bool,
    pub subnet: Option<Cidr>,
    pub gateway: Option<Ipv4Addr>,
    pub ip_range: Option<Cidr>,
    pub aux: BTreeMap<String, Ipv4Addr>,
    pub ipam_driver: String,
    pub ipam_options: BTreeMap<String, String>,
    pub options: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("network {0} not found")]
    NotFound(String),
    #[error("network with name {0} already exists")]
    Exists(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Ambiguous(String),
    #[error("saving {path}: {source}")]
    Save {
        path: PathBuf,
        source: std::io::Error,
    },
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    /// `bridge`, `host`, `none` → their ids (drawn once, kept).
    predefined: BTreeMap<String, String>,
    networks: Vec<UserNet>,
    next_order: u64,
    /// Endpoint driver options given for the default bridge at create, by container id.
    #[serde(default)]
    bridge_driver_opts: BTreeMap<String, BTreeMap<String, String>>,
}

/// What a network name or id refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    Predefined { name: String, id: String },
    User(Box<UserNet>),
}

pub struct Networks {
    path: PathBuf,
    /// The default bridge's subnet: user networks never overlap it.
    default_subnet: Option<Cidr>,
    state: Mutex<State>,
}

fn random_hex() -> String {
    let b: [u8; 32] = rand::random();
    hex::encode(b)
}

/// dockerd's default address pools, in its order.
fn default_pools() -> impl Iterator<Item = Cidr> {
    (17u8..=31)
        .map(|b| Cidr {
            addr: Ipv4Addr::new(172, b, 0, 0),
            prefix: 16,
        })
        .chain((0u8..16).map(|i| Cidr {
            addr: Ipv4Addr::new(192, 168, i * 16, 0),
            prefix: 20,
        }))
}

fn valid_ifname(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 15
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

impl Networks {
    pub fn open(path: &Path, default_subnet: Option<Cidr>) -> Networks {
        let mut state: State = std::fs::read(path)
            .ok()
            .and_then(|d| serde_json::from_slice(&d).ok())
            .unwrap_or_default();
        let mut changed = false;
        for n in docker_api::networks::PREDEFINED.iter().copied() {
            if !state.predefined.contains_key(n) {
                state.predefined.insert(n.to_string(), random_hex());
                changed = true;
            }
        }
        let me = Networks {
            path: path.to_path_buf(),
            default_subnet,
            state: Mutex::new(state),
        };
        if changed {
            let s = me.lock();
            if let Err(e) = me.save(&s) {
                eprintln!("engine: WARNING: {e}");
            }
        }
        me
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Temp file, fsync, rename, fsync of the directory: a crash leaves the old or the new.
    fn save(&self, s: &State) -> Result<(), NetError> {
        let err = |source| NetError::Save {
            path: self.path.clone(),
            source,
        };
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(err)?;
        let tmp = self.path.with_extension("json.tmp");
        let mut f = std::fs::File::create(&tmp).map_err(err)?;
        f.write_all(&serde_json::to_vec_pretty(s).unwrap_or_default())
            .map_err(err)?;
        f.sync_all().map_err(err)?;
        std::fs::rename(&tmp, &self.path).map_err(err)?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    pub fn predefined_id(&self, name: &str) -> String {
        self.lock()
            .predefined
            .get(name)
            .cloned()
            .unwrap_or_default()
    }

    pub fn all(&self) -> Vec<UserNet> {
        self.lock().networks.clone()
    }

    /// By full id, exact name, then unique id prefix (dockerd's order).
    pub fn find(&self, key: &str) -> Result<Found, NetError> {
        let s = self.lock();
        for (name, id) in &s.predefined {
            if key == id || key == name {
                return Ok(Found::Predefined {
                    name: name.clone(),
                    id: id.clone(),
                });
            }
        }
        if let Some(n) = s.networks.iter().find(|n| n.id == key || n.name == key) {
            return Ok(Found::User(Box::new(n.clone())));
        }
        if key.is_empty() {
            return Err(NetError::NotFound(key.into()));
        }
        let mut hits: Vec<Found> = s
            .predefined
            .iter()
            .filter(|(_, id)| id.starts_with(key))
            .map(|(name, id)| Found::Predefined {
                name: name.clone(),
                id: id.clone(),
            })
            .collect();
        hits.extend(
            s.networks
                .iter()
                .filter(|n| n.id.starts_with(key))
                .map(|n| Found::User(Box::new(n.clone()))),
        );
        match hits.len() {
            0 => Err(NetError::NotFound(key.into())),
            1 => Ok(hits.remove(0)),
            _ => Err(NetError::Ambiguous(format!(
                "network {key} is ambiguous ({} matches found based on ID prefix)",
                hits.len()
            ))),
        }
    }

    pub fn create(&self, spec: CreateSpec) -> Result<UserNet, NetError> {
        let mut s = self.lock();
        if docker_api::networks::PREDEFINED.contains(&spec.name.as_str())
            || s.networks.iter().any(|n| n.name == spec.name)
        {
            return Err(NetError::Exists(spec.name));
        }
        let taken: Vec<Cidr> = s
            .networks
            .iter()
            .map(|n| n.subnet)
            .chain(self.default_subnet)
            .collect();
        let subnet = match spec.subnet {
            Some(c) => {
                if c.prefix > 30 {
                    return Err(NetError::Invalid(format!(
                        "invalid subnet {c}: the prefix must be /30 or shorter"
                    )));
                }
                if taken.iter().any(|t| t.overlaps(&c)) {
                    return Err(NetError::Forbidden(
                        "invalid pool request: Pool overlaps with other one on this address space"
                            .into(),
                    ));
                }
                c
            }
            None => default_pools()
                .find(|p| !taken.iter().any(|t| t.overlaps(p)))
                .ok_or_else(|| {
                    NetError::Forbidden(
                        "could not find an available, non-overlapping IPv4 address pool among the \
                            defaults to assign to the network"
                            .into(),
                    )
                })?,
        };
        let subnet = Cidr {
            addr: subnet.network(),
            prefix: subnet.prefix,
        };
        if let Some(r) = spec.ip_range {
            if !subnet.contains(r.network()) || r.prefix < subnet.prefix {
                return Err(NetError::Invalid(format!(
                    "invalid ip-range {r}: it must be inside the subnet {subnet}"
                )));
            }
        }
        let gateway = match spec.gateway {
            Some(g) => {
                if !subnet.contains(g) || g == subnet.network() || g == subnet.broadcast() {
                    return Err(NetError::Invalid(format!(
                        "invalid gateway {g}: it must be a host address of the subnet {subnet}"
                    )));
                }
                g
            }
            None => Ipv4Addr::from(u32::from(subnet.network()) + 1),
        };
        for (k, a) in &spec.aux {
            if !subnet.contains(*a) || *a == gateway {
                return Err(NetError::Invalid(format!(
                    "invalid auxiliary address {k}={a}: it must be in the subnet {subnet} and not \
                        the gateway"
                )));
            }
        }
        let id = random_hex();
        let options = spec.options.clone();
        let bridge = match options.get("com.docker.network.bridge.name") {
            Some(b) if !valid_ifname(b) => {
                return Err(NetError::Invalid(format!(
                    "com.docker.network.bridge.name {b:?}: not a valid interface name (1-15 of \
                        a-z, 0-9, _ . -)"
                )))
            }
            Some(b) => b.clone(),
            None => format!("br-{}", &id[..12]),
        };
        if s.networks.iter().any(|n| n.bridge == bridge) {
            return Err(NetError::Forbidden(format!(
                "bridge name {bridge} is already used by another network"
            )));
        }
        let masquerade = match options
            .get("com.docker.network.bridge.enable_ip_masquerade")
            .map(String::as_str)
        {
            None | Some("true") => true,
            Some("false") => false,
            Some(v) => {
                return Err(NetError::Invalid(format!(
                    "com.docker.network.bridge.enable_ip_masquerade {v:?}: expected true or false"
                )))
            }
        };
        for (k, v) in &options {
            let ok = match k.as_str() {
                "com.docker.network.bridge.name"
                | "com.docker.network.bridge.enable_ip_masquerade" => true,
                "com.docker.network.bridge.enable_icc" => v == "true",
                "com.docker.network.driver.mtu" => v == "1500",
                "com.docker.network.bridge.host_binding_ipv4" => v == "0.0.0.0",
                _ => false,
            };
            if !ok {
                return Err(NetError::Invalid(format!(
                    "network option {k}={v} is not supported by this engine (supported: \
                        com.docker.network.bridge.name, \
                            com.docker.network.bridge.enable_ip_masquerade, enable_icc=true, \
                                driver.mtu=1500, host_binding_ipv4=0.0.0.0)"
                )));
            }
        }
        let n = UserNet {
            id,
            name: spec.name,
            created: docker_api::time::now_nanos(),
            internal: spec.internal,
            attachable: spec.attachable,
            masquerade,
            bridge,
            subnet,
            gateway,
            ip_range: spec.ip_range,
            aux: spec.aux,
            user_subnet: spec.subnet.is_some(),
            ipam_driver: if spec.ipam_driver.is_empty() {
                "default".into()
            } else {
                spec.ipam_driver
            },
            ipam_options: spec.ipam_options,
            options,
            labels: spec.labels,
            endpoints: BTreeMap::new(),
        };
        s.networks.push(n.clone());
        if let Err(e) = self.save(&s) {
            s.networks.pop();
            return Err(e);
        }
        Ok(n)
    }

    pub fn remove(&self, id: &str) -> Result<UserNet, NetError> {
        let mut s = self.lock();
        let i = s
            .networks
            .iter()
            .position(|n| n.id == id)
            .ok_or_else(|| NetError::NotFound(id.into()))?;
        let n = s.networks.remove(i);
        if let Err(e) = self.save(&s) {
            s.networks.insert(i, n);
            return Err(e);
        }
        Ok(n)
    }

    /// Attaches container `cid` (holding its address from now on). `other_ips` are
    /// addresses to skip (none today; kept for reservations).
    pub fn connect(
        &self,
        net_id: &str,
        cid: &str,
        req: EndpointReq,
    ) -> Result<Attachment, NetError> {
        let requested = req.ip;
        let mut s = self.lock();
        let order = s.next_order;
        let n = s
            .networks
            .iter_mut()
            .find(|n| n.id == net_id)
            .ok_or_else(|| NetError::NotFound(net_id.into()))?;
        if n.endpoints.contains_key(cid) {
            return Err(NetError::Forbidden(format!(
                "endpoint with name {} already exists in network {}",
                &cid[..cid.len().min(12)],
                n.name
            )));
        }
        let ip = match requested {
            Some(ip) => {
                if !n.user_subnet {
                    return Err(NetError::Invalid(
                        "user specified IP address is supported only when connecting to networks \
                            with user configured subnets"
                            .into(),
                    ));
                }
                if !n.subnet.contains(ip)
                    || ip == n.gateway
                    || ip == n.subnet.network()
                    || ip == n.subnet.broadcast()
                {
                    return Err(NetError::Invalid(format!(
                        "invalid address {ip}: it is not a host address of {} ({}) other than its \
                            gateway",
                        n.subnet, n.name
                    )));
                }
                if n.endpoints.values().any(|a| a.ip == ip) || n.aux.values().any(|a| *a == ip) {
                    return Err(NetError::Forbidden(format!(
                        "Address already in use: {ip} on network {}",
                        n.name
                    )));
                }
                ip
            }
            None => n.free_ip(&[]).ok_or_else(|| {
                NetError::Forbidden(format!("no available IPv4 addresses on network {}", n.name))
            })?,
        };
        let mac = match req.mac {
            Some(m) => {
                let ok = m.split(':').count() == 6
                    && m.split(':')
                        .all(|h| h.len() == 2 && u8::from_str_radix(h, 16).is_ok());
                if !ok {
                    return Err(NetError::Invalid(format!("invalid MAC address {m}")));
                }
                m.to_ascii_lowercase()
            }
            None => crate::net::mac_for(ip),
        };
        let a = Attachment {
            endpoint_id: random_hex(),
            aliases: req.aliases,
            requested,
            ip,
            mac,
            order,
            ifname: None,
            links: req.links,
            driver_opts: req.driver_opts,
        };
        n.endpoints.insert(cid.to_string(), a.clone());
        s.next_order += 1;
        self.save(&s)?;
        Ok(a)
    }

    pub fn disconnect(&self, net_id: &str, cid: &str) -> Result<Attachment, NetError> {
        let mut s = self.lock();
        let n = s
            .networks
            .iter_mut()
            .find(|n| n.id == net_id)
            .ok_or_else(|| NetError::NotFound(net_id.into()))?;
        let name = n.name.clone();
        let a = n.endpoints.remove(cid).ok_or_else(|| {
            NetError::Forbidden(format!(
                "container {cid} is not connected to network {name}"
            ))
        })?;
        self.save(&s)?;
        Ok(a)
    }

    /// Records the interface name a running container's endpoint got (or None at exit).
    pub fn set_ifname(&self, net_id: &str, cid: &str, ifname: Option<String>) {
        let mut s = self.lock();
        if let Some(a) = s
            .networks
            .iter_mut()
            .find(|n| n.id == net_id)
            .and_then(|n| n.endpoints.get_mut(cid))
        {
            a.ifname = ifname;
        }
    }

    /// The container's user networks with its attachment, in attach order.
    pub fn of_container(&self, cid: &str) -> Vec<(UserNet, Attachment)> {
        let s = self.lock();
        let mut v: Vec<(UserNet, Attachment)> = s
            .networks
            .iter()
            .filter_map(|n| n.endpoints.get(cid).map(|a| (n.clone(), a.clone())))
            .collect();
        v.sort_by_key(|(_, a)| a.order);
        v
    }

    /// Keeps the driver options of a container's default-bridge endpoint (echoed by inspect).
    pub fn set_bridge_driver_opts(&self, cid: &str, opts: BTreeMap<String, String>) {
        let mut s = self.lock();
        s.bridge_driver_opts.insert(cid.to_string(), opts);
        let _ = self.save(&s);
    }

    pub fn bridge_driver_opts(&self, cid: &str) -> Option<BTreeMap<String, String>> {
        self.lock().bridge_driver_opts.get(cid).cloned()
    }

    /// Drops every attachment of a removed container.
    pub fn remove_container(&self, cid: &str) {
        let mut s = self.lock();
        let mut changed = s.bridge_driver_opts.remove(cid).is_some();
        for n in &mut s.networks {
            changed |= n.endpoints.remove(cid).is_some();
        }
        if changed {
            let _ = self.save(&s);
        }
    }

    /// Drops attachments of containers that no longer exist (after a restore).
    pub fn retain(&self, live: &std::collections::HashSet<String>) {
        let mut s = self.lock();
        let before = s.bridge_driver_opts.len();
        s.bridge_driver_opts.retain(|id, _| live.contains(id));
        let mut changed = s.bridge_driver_opts.len() != before;
        for n in &mut s.networks {
            let before = n.endpoints.len();
            n.endpoints.retain(|id, _| live.contains(id));
            n.endpoints.values_mut().for_each(|a| a.ifname = None);
            changed |= n.endpoints.len() != before;
        }
        if changed {
            let _ = self.save(&s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(d: &tempfile::TempDir) -> Networks {
        Networks::open(
            &d.path().join("network/networks.json"),
            Cidr::parse("172.17.0.1/16"),
        )
    }

    fn spec(name: &str) -> CreateSpec {
        CreateSpec {
            name: name.into(),
            ..Default::default()
        }
    }

    #[test]
    fn auto_subnets_skip_the_default_bridge_and_each_other() {
        let d = tempfile::tempdir().unwrap();
        let s = store(&d);
        let a = s.create(spec("a")).unwrap();
        let b = s.create(spec("b")).unwrap();
        assert_eq!(a.subnet.to_string(), "172.18.0.0/16");
        assert_eq!(a.gateway, Ipv4Addr::new(172, 18, 0, 1));
        assert_eq!(b.subnet.to_string(), "172.19.0.0/16");
        assert_eq!(a.bridge, format!("br-{}", &a.id[..12]));
        // A given subnet in the pool is skipped by the next automatic one.
        let mut c = spec("c");
        c.subnet = Cidr::parse("172.20.0.0/16");
        s.create(c).unwrap();
        assert_eq!(
            s.create(spec("d")).unwrap().subnet.to_string(),
            "172.21.0.0/16"
        );
        // Overlaps and duplicates are refused.
        let mut e = spec("e");
        e.subnet = Cidr::parse("172.18.5.0/24");
        assert!(matches!(s.create(e), Err(NetError::Forbidden(_))));
        assert!(matches!(s.create(spec("a")), Err(NetError::Exists(_))));
        assert!(matches!(s.create(spec("bridge")), Err(NetError::Exists(_))));
        let mut bad = spec("f");
        bad.options.insert(
            "com.docker.network.bridge.enable_icc".into(),
            "false".into(),
        );
        assert!(matches!(s.create(bad), Err(NetError::Invalid(_))));
    }

    #[test]
    fn addresses_gateway_range_and_requested() {
        let d = tempfile::tempdir().unwrap();
        let s = store(&d);
        let mut sp = spec("n");
        sp.subnet = Cidr::parse("10.5.0.0/16");
        sp.gateway = Some(Ipv4Addr::new(10, 5, 0, 254));
        sp.ip_range = Cidr::parse("10.5.1.0/30");
        let n = s.create(sp).unwrap();
        assert_eq!(n.gateway, Ipv4Addr::new(10, 5, 0, 254));
        let a = s
            .connect(
                &n.id,
                "c1",
                EndpointReq {
                    aliases: vec!["web".into()],
                    ..Default::default()
                },
            )
            .unwrap();
        let b = s.connect(&n.id, "c2", EndpointReq::default()).unwrap();
        assert_eq!(a.ip, Ipv4Addr::new(10, 5, 1, 0));
        assert_eq!(b.ip, Ipv4Addr::new(10, 5, 1, 1));
        assert!(a.order < b.order);
        assert_eq!(a.mac, "02:42:0a:05:01:00");
        let fixed = s
            .connect(
                &n.id,
                "c3",
                EndpointReq {
                    ip: Some(Ipv4Addr::new(10, 5, 9, 9)),
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(fixed.ip, Ipv4Addr::new(10, 5, 9, 9));
        assert!(s
            .connect(
                &n.id,
                "c4",
                EndpointReq {
                    ip: Some(Ipv4Addr::new(10, 5, 9, 9)),
                    ..Default::default()
                }
            )
            .is_err());
        assert!(s
            .connect(
                &n.id,
                "c4",
                EndpointReq {
                    ip: Some(Ipv4Addr::new(10, 6, 0, 2)),
                    ..Default::default()
                }
            )
            .is_err());
        assert!(
            s.connect(&n.id, "c1", EndpointReq::default()).is_err(),
            "twice"
        );
        // Auto subnets refuse --ip, as dockerd.
        let auto = s.create(spec("auto")).unwrap();
        assert!(matches!(
            s.connect(
                &auto.id,
                "c1",
                EndpointReq {
                    ip: Some(Ipv4Addr::new(172, 18, 0, 9)),
                    ..Default::default()
                }
            ),
            Err(NetError::Invalid(_))
        ));
        // Released addresses are reused.
        s.disconnect(&n.id, "c1").unwrap();
        assert_eq!(
            s.connect(&n.id, "c5", EndpointReq::default()).unwrap().ip,
            Ipv4Addr::new(10, 5, 1, 0)
        );
        assert_eq!(
            s.of_container("c5").len(),
            1,
            "c5 is on n only (auto has no c5)"
        );
    }

    #[test]
    fn persists_across_reopen_and_finds_by_prefix() {
        let d = tempfile::tempdir().unwrap();
        let (id, bridge_id) = {
            let s = store(&d);
            let n = s.create(spec("keep")).unwrap();
            s.connect(
                &n.id,
                "c1",
                EndpointReq {
                    aliases: vec!["x".into()],
                    ..Default::default()
                },
            )
            .unwrap();
            (n.id, s.predefined_id("bridge"))
        };
        let s = store(&d);
        assert_eq!(s.predefined_id("bridge"), bridge_id, "predefined ids stay");
        let Found::User(n) = s.find("keep").unwrap() else {
            panic!("keep is a user network")
        };
        assert_eq!(n.id, id);
        assert_eq!(n.endpoints["c1"].aliases, vec!["x".to_string()]);
        assert!(matches!(s.find(&id[..5]), Ok(Found::User(_))));
        assert!(matches!(s.find("host"), Ok(Found::Predefined { .. })));
        assert!(matches!(s.find("nope"), Err(NetError::NotFound(_))));
        s.retain(&Default::default());
        assert!(store(&d).of_container("c1").is_empty());
        s.remove(&id).unwrap();
        assert!(store(&d).find("keep").is_err());
        assert!(!d.path().join("network/networks.json.tmp").exists());
    }
}
