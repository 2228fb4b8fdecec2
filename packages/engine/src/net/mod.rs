//! Bridge networking like Docker's default network: a bridge (`axion0`, 172.17.0.1/16 unless
//! `--bip` says otherwise), one veth pair per container whose inner end becomes `eth0` in
//! the container's network namespace with an address from [`Ipam`] and a default route via
//! the bridge, IPv4 forwarding on, and outbound NAT: an nf_tables table `ip axion` with a
//! `nat` chain on postrouting that masquerades the bridge subnet leaving through any other
//! interface. Published ports stay with the userland proxy (`netproxy`).
//!
//! Everything goes through [`netlink`] (rtnetlink and nfnetlink), no external tools.

pub mod netlink;

use netlink::{Msg, Socket, NLA_F_NESTED, NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_EXCL};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_NEWADDR: u16 = 20;
const RTM_NEWROUTE: u16 = 24;
const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_MASTER: u16 = 10;
const IFLA_LINKINFO: u16 = 18;
const IFLA_NET_NS_PID: u16 = 19;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
const VETH_INFO_PEER: u16 = 1;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_BROADCAST: u16 = 4;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const IFF_UP: u32 = 1;

/// The bridge network's shape, from `--bridge` and `--bip`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bridge {
    pub name: String,
    pub gateway: Ipv4Addr,
    pub prefix: u8,
}

impl Bridge {
    /// Parses `--bip` (the bridge's address with prefix length, e.g. 172.17.0.1/16).
    pub fn new(name: &str, bip: &str) -> Result<Bridge, String> {
        let (a, p) = bip
            .split_once('/')
            .ok_or_else(|| format!("--bip {bip:?}: expected ADDRESS/PREFIX, e.g. 172.17.0.1/16"))?;
        let gateway: Ipv4Addr = a
            .parse()
            .map_err(|_| format!("--bip {bip:?}: {a:?} is not an IPv4 address"))?;
        let prefix: u8 = p
            .parse()
            .ok()
            .filter(|p| (8..=30).contains(p))
            .ok_or_else(|| format!("--bip {bip:?}: prefix must be 8..30"))?;
        if name.is_empty()
            || name.len() > 15
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        {
            return Err(format!("--bridge {name:?}: not a valid interface name"));
        }
        let b = Bridge {
            name: name.to_string(),
            gateway,
            prefix,
        };
        if gateway == b.network() || gateway == b.broadcast() {
            return Err(format!(
                "--bip {bip:?}: the bridge address cannot be the network or broadcast address"
            ));
        }
        Ok(b)
    }

    pub fn mask(&self) -> u32 {
        u32::MAX << (32 - self.prefix)
    }

    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.gateway) & self.mask())
    }

    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.gateway) | !self.mask())
    }

    pub fn subnet(&self) -> String {
        format!("{}/{}", self.network(), self.prefix)
    }
}

/// A container's address on the bridge (persisted in its record).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Endpoint {
    pub ip: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Ipv4Addr,
    pub mac: String,
}

/// Docker's scheme: 02:42 followed by the IPv4 address.
pub fn mac_for(ip: Ipv4Addr) -> String {
    let o = ip.octets();
    format!("02:42:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3])
}

fn mac_bytes(mac: &str) -> Option<[u8; 6]> {
    let v: Vec<u8> = mac
        .split(':')
        .filter_map(|h| u8::from_str_radix(h, 16).ok())
        .collect();
    v.try_into().ok()
}

/// Addresses handed to containers, kept in `<data-root>/network/ipam.json` so they survive
/// engine restarts; an address is held from a container's first start until it is removed.
pub struct Ipam {
    path: PathBuf,
    state: std::sync::Mutex<IpamState>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct IpamState {
    subnet: String,
    /// Container id → address.
    allocations: BTreeMap<String, Ipv4Addr>,
}

impl Ipam {
    /// Loads the allocations for `bridge`'s subnet (a different subnet starts afresh).
    pub fn open(path: &Path, bridge: &Bridge) -> Ipam {
        let mut state: IpamState = std::fs::read(path)
            .ok()
            .and_then(|d| serde_json::from_slice(&d).ok())
            .unwrap_or_default();
        if state.subnet != bridge.subnet() {
            state = IpamState {
                subnet: bridge.subnet(),
                allocations: BTreeMap::new(),
            };
        }
        Ipam {
            path: path.to_path_buf(),
            state: std::sync::Mutex::new(state),
        }
    }

    fn save(&self, s: &IpamState) -> io::Result<()> {
        if let Some(p) = self.path.parent() {
            std::fs::create_dir_all(p)?;
        }
        let tmp = self.path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(s).unwrap_or_default())?;
        std::fs::rename(&tmp, &self.path)
    }

    /// The container's address: the one it holds, else the lowest free one.
    pub fn allocate(&self, id: &str, bridge: &Bridge) -> io::Result<Endpoint> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let ip = match s.allocations.get(id) {
            Some(ip) => *ip,
            None => {
                let used: std::collections::HashSet<Ipv4Addr> =
                    s.allocations.values().copied().collect();
                let first = u32::from(bridge.network()) + 1;
                let last = u32::from(bridge.broadcast()) - 1;
                let ip = (first..=last)
                    .map(Ipv4Addr::from)
                    .find(|ip| *ip != bridge.gateway && !used.contains(ip))
                    .ok_or_else(|| {
                        io::Error::other(format!("no free address left in {}", bridge.subnet()))
                    })?;
                s.allocations.insert(id.to_string(), ip);
                self.save(&s)?;
                ip
            }
        };
        Ok(Endpoint {
            ip,
            prefix: bridge.prefix,
            gateway: bridge.gateway,
            mac: mac_for(ip),
        })
    }

    pub fn release(&self, id: &str) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if s.allocations.remove(id).is_some() {
            let _ = self.save(&s);
        }
    }

    /// Drops allocations of containers that no longer exist.
    pub fn retain(&self, live: &std::collections::HashSet<String>) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let before = s.allocations.len();
        s.allocations.retain(|id, _| live.contains(id));
        if s.allocations.len() != before {
            let _ = self.save(&s);
        }
    }
}

fn ifinfomsg(index: i32, flags: u32, change: u32) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[4..8].copy_from_slice(&index.to_ne_bytes());
    h[8..12].copy_from_slice(&flags.to_ne_bytes());
    h[12..16].copy_from_slice(&change.to_ne_bytes());
    h
}

/// The interface index of `name` in the calling thread's network namespace.
pub fn ifindex(name: &str) -> Option<i32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: if_nametoindex reads a NUL-terminated string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i as i32)
}

fn ctx(what: String) -> impl FnOnce(io::Error) -> io::Error {
    move |e| io::Error::new(e.kind(), format!("{what}: {e}"))
}

fn ignore_exists(r: io::Result<()>) -> io::Result<()> {
    match r {
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        r => r,
    }
}

fn link_up(s: &mut Socket, index: i32, extra: impl FnOnce(&mut Msg)) -> io::Result<()> {
    let mut m = Msg::new(RTM_NEWLINK, NLM_F_ACK, &ifinfomsg(index, IFF_UP, IFF_UP));
    extra(&mut m);
    s.request(m)
}

fn add_addr(s: &mut Socket, index: i32, ip: Ipv4Addr, prefix: u8, brd: Ipv4Addr) -> io::Result<()> {
    let mut h = [0u8; 8];
    h[0] = libc::AF_INET as u8;
    h[1] = prefix;
    h[4..8].copy_from_slice(&(index as u32).to_ne_bytes());
    let mut m = Msg::new(RTM_NEWADDR, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, &h);
    m.attr(IFA_LOCAL, &ip.octets())
        .attr(IFA_ADDRESS, &ip.octets())
        .attr(IFA_BROADCAST, &brd.octets());
    s.request(m)
}

/// Creates the bridge if missing, gives it the gateway address, brings it up, turns on
/// IPv4 forwarding and installs the masquerade rule. Idempotent (the engine runs it on
/// every start).
pub fn setup_host(b: &Bridge) -> io::Result<()> {
    let mut s =
        Socket::open(libc::NETLINK_ROUTE).map_err(ctx("opening a rtnetlink socket".into()))?;
    if ifindex(&b.name).is_none() {
        let mut m = Msg::new(
            RTM_NEWLINK,
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
            &ifinfomsg(0, 0, 0),
        );
        m.str(IFLA_IFNAME, &b.name)
            .begin(IFLA_LINKINFO)
            .str(IFLA_INFO_KIND, "bridge")
            .end();
        ignore_exists(s.request(m)).map_err(ctx(format!("creating bridge {}", b.name)))?;
    }
    let idx = ifindex(&b.name)
        .ok_or_else(|| io::Error::other(format!("bridge {} vanished after creation", b.name)))?;
    ignore_exists(add_addr(&mut s, idx, b.gateway, b.prefix, b.broadcast())).map_err(ctx(
        format!("adding {}/{} to {}", b.gateway, b.prefix, b.name),
    ))?;
    link_up(&mut s, idx, |_| {}).map_err(ctx(format!("bringing {} up", b.name)))?;
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
        .map_err(ctx("enabling /proc/sys/net/ipv4/ip_forward".into()))?;
    masquerade(b).map_err(ctx(format!(
        "installing the nf_tables masquerade rule for {}",
        b.subnet()
    )))
}

/// Name of the host end of a container's veth pair (unique per container, ≤ 15 bytes).
pub fn host_veth(id: &str) -> String {
    format!("veth{}", &id[..id.len().min(11)])
}

/// Creates the container's veth pair: `eth0` inside the network namespace of `pid`, the host
/// end attached to the bridge and up; then configures `eth0` (MAC, address, up) and the
/// default route from inside that namespace.
pub fn attach(b: &Bridge, id: &str, pid: i32, ep: &Endpoint) -> io::Result<()> {
    attach_iface(b, &host_veth(id), "eth0", pid, ep, true)
}

/// Name of the host end of a container's veth on a user network (unique per container and
/// network, ≤ 15 bytes).
pub fn user_veth(id: &str, net_id: &str) -> String {
    use sha2::Digest;
    let h = sha2::Sha256::digest(format!("{id}/{net_id}"));
    format!("vn{}", &hex::encode(h)[..13])
}

/// One veth pair: `ifname` inside the namespace of `pid` with `ep`'s address (and the
/// default route via its gateway when `default_route`), `host` on bridge `b`.
pub fn attach_iface(
    b: &Bridge,
    host: &str,
    ifname: &str,
    pid: i32,
    ep: &Endpoint,
    default_route: bool,
) -> io::Result<()> {
    let host = host.to_string();
    let mut s =
        Socket::open(libc::NETLINK_ROUTE).map_err(ctx("opening a rtnetlink socket".into()))?;
    if let Some(old) = ifindex(&host) {
        // Left from a previous run whose namespace is still being torn down.
        let _ = s.request(Msg::new(RTM_DELLINK, NLM_F_ACK, &ifinfomsg(old, 0, 0)));
    }
    let mut m = Msg::new(
        RTM_NEWLINK,
        NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        &ifinfomsg(0, 0, 0),
    );
    m.str(IFLA_IFNAME, &host)
        .begin(IFLA_LINKINFO)
        .str(IFLA_INFO_KIND, "veth")
        .begin(IFLA_INFO_DATA)
        .begin(VETH_INFO_PEER);
    m.raw(&ifinfomsg(0, 0, 0))
        .str(IFLA_IFNAME, ifname)
        .u32(IFLA_NET_NS_PID, pid as u32);
    m.end().end().end();
    s.request(m).map_err(ctx(format!(
        "creating veth pair {host}/{ifname} for pid {pid}"
    )))?;
    let hidx = ifindex(&host)
        .ok_or_else(|| io::Error::other(format!("{host} vanished after creation")))?;
    let bidx = ifindex(&b.name)
        .ok_or_else(|| io::Error::other(format!("bridge {} is missing", b.name)))?;
    link_up(&mut s, hidx, |m| {
        m.u32(IFLA_MASTER, bidx as u32);
    })
    .map_err(ctx(format!("attaching {host} to {}", b.name)))?;
    let ep = ep.clone();
    let bcast = b.broadcast();
    let ifname = ifname.to_string();
    std::thread::spawn(move || -> io::Result<()> {
        let ns = std::fs::File::open(format!("/proc/{pid}/ns/net"))?;
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(io::Error::from)
            .map_err(ctx("joining the container's network namespace".into()))?;
        let mut s = Socket::open(libc::NETLINK_ROUTE)?;
        let idx = ifindex(&ifname)
            .ok_or_else(|| io::Error::other(format!("{ifname} is missing in the container")))?;
        let mac =
            mac_bytes(&ep.mac).ok_or_else(|| io::Error::other(format!("bad MAC {}", ep.mac)))?;
        s.request({
            let mut m = Msg::new(RTM_NEWLINK, NLM_F_ACK, &ifinfomsg(idx, 0, 0));
            m.attr(IFLA_ADDRESS, &mac);
            m
        })
        .map_err(ctx(format!("setting {ifname}'s MAC address")))?;
        add_addr(&mut s, idx, ep.ip, ep.prefix, bcast)
            .map_err(ctx(format!("adding {}/{} to {ifname}", ep.ip, ep.prefix)))?;
        link_up(&mut s, idx, |_| {}).map_err(ctx(format!("bringing {ifname} up")))?;
        if let Some(lo) = ifindex("lo") {
            link_up(&mut s, lo, |_| {}).map_err(ctx("bringing lo up".into()))?;
        }
        if !default_route {
            return Ok(());
        }
        let mut h = [0u8; 12];
        h[0] = libc::AF_INET as u8;
        h[4] = libc::RT_TABLE_MAIN;
        h[5] = libc::RTPROT_BOOT;
        h[6] = libc::RT_SCOPE_UNIVERSE;
        h[7] = libc::RTN_UNICAST;
        let mut m = Msg::new(RTM_NEWROUTE, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, &h);
        m.attr(RTA_GATEWAY, &ep.gateway.octets())
            .u32(RTA_OIF, idx as u32);
        match s.request(m) {
            // Another network of the container already gave it its default route.
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            r => r.map_err(ctx(format!("adding the default route via {}", ep.gateway))),
        }
    })
    .join()
    .unwrap_or_else(|_| Err(io::Error::other("network setup thread panicked")))
}

/// Deletes the host end of a veth pair (the kernel removes its peer in the container).
pub fn detach_iface(host: &str) -> io::Result<()> {
    let Some(idx) = ifindex(host) else {
        return Ok(());
    };
    let mut s = Socket::open(libc::NETLINK_ROUTE)?;
    s.request(Msg::new(RTM_DELLINK, NLM_F_ACK, &ifinfomsg(idx, 0, 0)))
}

/// Creates a user network's bridge (its link, gateway address, up); idempotent.
pub fn setup_bridge_link(b: &Bridge) -> io::Result<()> {
    let mut s =
        Socket::open(libc::NETLINK_ROUTE).map_err(ctx("opening a rtnetlink socket".into()))?;
    if ifindex(&b.name).is_none() {
        let mut m = Msg::new(
            RTM_NEWLINK,
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
            &ifinfomsg(0, 0, 0),
        );
        m.str(IFLA_IFNAME, &b.name)
            .begin(IFLA_LINKINFO)
            .str(IFLA_INFO_KIND, "bridge")
            .end();
        ignore_exists(s.request(m)).map_err(ctx(format!("creating bridge {}", b.name)))?;
    }
    let idx = ifindex(&b.name)
        .ok_or_else(|| io::Error::other(format!("bridge {} vanished after creation", b.name)))?;
    ignore_exists(add_addr(&mut s, idx, b.gateway, b.prefix, b.broadcast())).map_err(ctx(
        format!("adding {}/{} to {}", b.gateway, b.prefix, b.name),
    ))?;
    link_up(&mut s, idx, |_| {}).map_err(ctx(format!("bringing {} up", b.name)))?;
    // Also when the default bridge is off (`--bridge none`), which otherwise turns it on.
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
        .map_err(ctx("enabling /proc/sys/net/ipv4/ip_forward".into()))
}

/// Deletes a user network's bridge.
pub fn remove_bridge_link(name: &str) -> io::Result<()> {
    detach_iface(name)
}

// --- nf_tables -------------------------------------------------------------------------------

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_NEWRULE: u16 = 6;
const NFPROTO_IPV4: u8 = 2;
/// The engine's own table: replaced as a whole on every start, touching nothing else.
pub const NFT_TABLE: &str = "axion";

fn nfgenmsg(family: u8, res_id: u16) -> [u8; 4] {
    let r = res_id.to_be_bytes();
    [family, 0, r[0], r[1]]
}

fn nft(ty: u16, flags: u16) -> Msg {
    Msg::new(
        (NFNL_SUBSYS_NFTABLES << 8) | ty,
        flags | NLM_F_ACK,
        &nfgenmsg(NFPROTO_IPV4, 0),
    )
}

/// One expression of a rule: NFTA_LIST_ELEM { NFTA_EXPR_NAME, NFTA_EXPR_DATA { ... } }.
fn expr(m: &mut Msg, name: &str, data: impl FnOnce(&mut Msg)) {
    m.begin(1 | NLA_F_NESTED)
        .str(1, name)
        .begin(2 | NLA_F_NESTED);
    data(m);
    m.end().end();
}

/// NFTA_DATA_VALUE nested in attribute `ty`.
fn data_value(m: &mut Msg, ty: u16, v: &[u8]) {
    m.begin(ty | NLA_F_NESTED).attr(1, v).end();
}

/// What the engine's table says about one bridge network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetRules {
    pub bridge: Bridge,
    /// `ip saddr SUBNET oifname != BRIDGE masquerade`.
    pub masquerade: bool,
    /// `--internal`: nothing forwarded in or out of the bridge.
    pub internal: bool,
}

/// The batch that (re)creates `table ip axion { chain postrouting { type nat hook
/// postrouting priority srcnat; ip saddr SUBNET oifname != BRIDGE masquerade } }` for the
/// default bridge alone. Add, delete and add again: an atomic replace whether or not the
/// table existed.
pub fn masquerade_batch(b: &Bridge) -> Vec<Msg> {
    rules_batch(&[NetRules {
        bridge: b.clone(),
        masquerade: true,
        internal: false,
    }])
}

fn ifname_bytes(name: &str) -> [u8; 16] {
    let mut ifname = [0u8; 16];
    let n = name.len().min(15);
    ifname[..n].copy_from_slice(&name.as_bytes()[..n]);
    ifname
}

/// `meta KEY` (6 iifname, 7 oifname) compared (0 eq, 1 neq) with an interface name.
fn if_cmp(r: &mut Msg, key: u32, op: u32, name: &str) {
    expr(r, "meta", |m| {
        m.be32(1, 1).be32(2, key); // DREG, KEY
    });
    let ifname = ifname_bytes(name);
    expr(r, "cmp", |m| {
        m.be32(1, 1).be32(2, op);
        data_value(m, 3, &ifname);
    });
}

/// `immediate` drop verdict (NFTA_IMMEDIATE_DREG verdict, DATA { VERDICT { CODE NF_DROP } }).
fn drop_verdict(r: &mut Msg) {
    expr(r, "immediate", |m| {
        m.be32(1, 0);
        m.begin(2 | NLA_F_NESTED)
            .begin(2 | NLA_F_NESTED)
            .be32(1, 0)
            .end()
            .end();
    });
}

/// The whole engine table for every bridge network: masquerade for those that NAT out, and
/// (when there is more than one bridge, or an internal one) a `forward` filter chain that
/// isolates networks from each other (`iifname A oifname B drop` for every pair) and keeps
/// internal ones in (`iifname X oifname != X drop`, `oifname X iifname != X drop`).
pub fn rules_batch(nets: &[NetRules]) -> Vec<Msg> {
    let mut msgs = vec![Msg::new(
        NFNL_MSG_BATCH_BEGIN,
        0,
        &nfgenmsg(0, NFNL_SUBSYS_NFTABLES),
    )];
    let table = |ty| {
        let mut m = nft(
            ty,
            if ty == NFT_MSG_NEWTABLE {
                NLM_F_CREATE
            } else {
                0
            },
        );
        m.str(1, NFT_TABLE); // NFTA_TABLE_NAME
        m
    };
    msgs.push(table(NFT_MSG_NEWTABLE));
    msgs.push(table(NFT_MSG_DELTABLE));
    msgs.push(table(NFT_MSG_NEWTABLE));
    let chain = |name: &str, hook: u32, prio: u32, kind: &str| {
        let mut c = nft(NFT_MSG_NEWCHAIN, NLM_F_CREATE);
        c.str(1, NFT_TABLE).str(3, name); // NFTA_CHAIN_TABLE, NFTA_CHAIN_NAME
        c.begin(4 | NLA_F_NESTED).be32(1, hook).be32(2, prio).end(); // HOOK { NUM, PRIORITY }
        c.be32(5, 1); // NFTA_CHAIN_POLICY = NF_ACCEPT
        c.str(7, kind); // NFTA_CHAIN_TYPE
        c
    };
    let rule = |chain: &str, body: &dyn Fn(&mut Msg)| {
        let mut r = nft(NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND);
        r.str(1, NFT_TABLE).str(2, chain); // NFTA_RULE_TABLE, NFTA_RULE_CHAIN
        r.begin(4 | NLA_F_NESTED); // NFTA_RULE_EXPRESSIONS
        body(&mut r);
        r.end();
        r
    };
    msgs.push(chain(
        "postrouting",
        libc::NF_INET_POST_ROUTING as u32,
        100,
        "nat",
    ));
    for n in nets.iter().filter(|n| n.masquerade && !n.internal) {
        let b = &n.bridge;
        msgs.push(rule("postrouting", &|r| {
            // payload load ip saddr (network header, offset 12, 4 bytes) → reg 1
            expr(r, "payload", |m| {
                m.be32(1, 1).be32(2, 1).be32(3, 12).be32(4, 4);
            });
            // reg 1 &= mask
            expr(r, "bitwise", |m| {
                m.be32(1, 1).be32(2, 1).be32(3, 4);
                data_value(m, 4, &b.mask().to_be_bytes());
                data_value(m, 5, &[0, 0, 0, 0]);
            });
            // reg 1 == network
            expr(r, "cmp", |m| {
                m.be32(1, 1).be32(2, 0); // SREG, OP = NFT_CMP_EQ
                data_value(m, 3, &b.network().octets());
            });
            if_cmp(r, 7, 1, &b.name); // oifname != bridge
            expr(r, "masq", |_| {});
        }));
    }
    if nets.len() > 1 || nets.iter().any(|n| n.internal) {
        msgs.push(chain("forward", libc::NF_INET_FORWARD as u32, 0, "filter"));
        for a in nets {
            if a.internal {
                msgs.push(rule("forward", &|r| {
                    if_cmp(r, 6, 0, &a.bridge.name);
                    if_cmp(r, 7, 1, &a.bridge.name);
                    drop_verdict(r);
                }));
                msgs.push(rule("forward", &|r| {
                    if_cmp(r, 7, 0, &a.bridge.name);
                    if_cmp(r, 6, 1, &a.bridge.name);
                    drop_verdict(r);
                }));
            }
            for b in nets.iter().filter(|b| b.bridge.name != a.bridge.name) {
                msgs.push(rule("forward", &|r| {
                    if_cmp(r, 6, 0, &a.bridge.name);
                    if_cmp(r, 7, 0, &b.bridge.name);
                    drop_verdict(r);
                }));
            }
        }
    }
    msgs.push(Msg::new(
        NFNL_MSG_BATCH_END,
        0,
        &nfgenmsg(0, NFNL_SUBSYS_NFTABLES),
    ));
    msgs
}

/// Replaces the engine's table with the rules for `nets`.
pub fn apply_rules(nets: &[NetRules]) -> io::Result<()> {
    let mut s = Socket::open(libc::NETLINK_NETFILTER)?;
    s.send(rules_batch(nets))
}

fn masquerade(b: &Bridge) -> io::Result<()> {
    let mut s = Socket::open(libc::NETLINK_NETFILTER)?;
    s.send(masquerade_batch(b))
}

/// The resolv.conf a bridged container gets: the host's, minus loopback nameservers (they
/// mean nothing inside the container); Google's public resolvers when none is left, as
/// Docker does.
pub fn container_resolv_conf(host: &str) -> String {
    let mut out = String::new();
    let mut servers = 0;
    for l in host.lines() {
        let mut w = l.split_whitespace();
        if w.next() == Some("nameserver") {
            let ip = w.next().unwrap_or("");
            if ip.starts_with("127.") || ip == "::1" {
                continue;
            }
            servers += 1;
        }
        out.push_str(l);
        out.push('\n');
    }
    if servers == 0 {
        out.push_str("nameserver 8.8.8.8\nnameserver 8.8.4.4\n");
    }
    out
}

/// An `ExtraHosts` entry (`--add-host NAME:IP`, also `NAME=IP`) as its /etc/hosts line, as
/// dockerd writes it (`IP<TAB>NAME`); `host-gateway` is the bridge's gateway. None when the
/// entry is malformed (refused at create) or names the gateway where there is none.
pub fn extra_host_line(entry: &str, gateway: Option<Ipv4Addr>) -> Option<String> {
    let (name, ip) = entry.split_once('=').or_else(|| entry.split_once(':'))?;
    let (name, ip) = (
        name.trim(),
        ip.trim().trim_start_matches('[').trim_end_matches(']'),
    );
    if name.is_empty() || ip.is_empty() {
        return None;
    }
    let ip = if ip == "host-gateway" {
        gateway?.to_string()
    } else {
        ip.parse::<std::net::IpAddr>().ok()?.to_string()
    };
    Some(format!("{ip}\t{name}\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extra_hosts_as_dockerd_writes_them() {
        let gw = Some(Ipv4Addr::new(172, 17, 0, 1));
        let line = |e| extra_host_line(e, gw);
        assert_eq!(
            line("a.test:127.0.0.1").as_deref(),
            Some("127.0.0.1\ta.test\n")
        );
        assert_eq!(line("b=10.0.0.2").as_deref(), Some("10.0.0.2\tb\n"));
        assert_eq!(line("v6:::1").as_deref(), Some("::1\tv6\n"));
        assert_eq!(line("g:host-gateway").as_deref(), Some("172.17.0.1\tg\n"));
        assert_eq!(extra_host_line("g:host-gateway", None), None);
        assert_eq!(line("nohost"), None);
        assert_eq!(line("x:not-an-ip"), None);
    }

    #[test]
    fn bip_parsing_and_subnet_math() {
        let b = Bridge::new("axion0", "172.17.0.1/16").unwrap();
        assert_eq!(b.network(), Ipv4Addr::new(172, 17, 0, 0));
        assert_eq!(b.broadcast(), Ipv4Addr::new(172, 17, 255, 255));
        assert_eq!(b.subnet(), "172.17.0.0/16");
        assert!(Bridge::new("axion0", "172.17.0.0/16").is_err());
        assert!(Bridge::new("axion0", "172.17.0.1").is_err());
        assert!(Bridge::new("a-name-longer-than-15", "10.1.0.1/24").is_err());
        assert_eq!(mac_for(Ipv4Addr::new(172, 17, 0, 2)), "02:42:ac:11:00:02");
        assert_eq!(
            mac_bytes("02:42:ac:11:00:02"),
            Some([2, 0x42, 0xac, 0x11, 0, 2])
        );
    }

    #[test]
    fn ipam_persists_and_releases() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("network/ipam.json");
        let b = Bridge::new("axion0", "10.9.0.1/29").unwrap();
        let ipam = Ipam::open(&p, &b);
        let a = ipam.allocate("a", &b).unwrap();
        let c = ipam.allocate("c", &b).unwrap();
        assert_eq!(a.ip, Ipv4Addr::new(10, 9, 0, 2));
        assert_eq!(c.ip, Ipv4Addr::new(10, 9, 0, 3));
        assert_eq!(
            ipam.allocate("a", &b).unwrap().ip,
            a.ip,
            "a container keeps its address"
        );
        // A restarted engine sees the same allocations.
        let ipam = Ipam::open(&p, &b);
        assert_eq!(ipam.allocate("a", &b).unwrap().ip, a.ip);
        ipam.release("a");
        assert_eq!(
            ipam.allocate("d", &b).unwrap().ip,
            Ipv4Addr::new(10, 9, 0, 2),
            "a released address is reused"
        );
        for id in ["e", "f", "g"] {
            ipam.allocate(id, &b).unwrap();
        }
        // .1 gateway, .2-.6 taken, .7 broadcast: the /29 is full.
        assert!(ipam.allocate("h", &b).is_err());
        // Another subnet starts afresh.
        let b2 = Bridge::new("axion0", "10.8.0.1/24").unwrap();
        assert_eq!(
            Ipam::open(&p, &b2).allocate("x", &b2).unwrap().ip,
            Ipv4Addr::new(10, 8, 0, 2)
        );
    }

    #[test]
    fn resolv_conf_drops_loopback_servers() {
        assert_eq!(
            container_resolv_conf("nameserver 10.0.2.3\n"),
            "nameserver 10.0.2.3\n"
        );
        assert_eq!(
            container_resolv_conf("search lan\nnameserver 127.0.0.53\n"),
            "search lan\nnameserver 8.8.8.8\nnameserver 8.8.4.4\n"
        );
    }

    #[test]
    fn rules_batch_has_isolation_only_when_needed() {
        let n = |name: &str, bip: &str, internal| NetRules {
            bridge: Bridge::new(name, bip).unwrap(),
            masquerade: true,
            internal,
        };
        let one = rules_batch(&[n("axion0", "172.17.0.1/16", false)]);
        assert_eq!(one.len(), 7, "begin, table x3, chain, masquerade, end");
        // Two bridges: a masquerade each, the forward chain, a drop each way.
        let two = rules_batch(&[
            n("axion0", "172.17.0.1/16", false),
            n("br-a", "172.18.0.1/16", false),
        ]);
        assert_eq!(two.len(), 1 + 3 + 1 + 2 + 1 + 2 + 1);
        // An internal one: no masquerade, its two keep-in rules.
        let int = rules_batch(&[n("br-i", "10.1.0.1/24", true)]);
        assert_eq!(int.len(), 1 + 3 + 1 + 1 + 2 + 1);
        assert!(int[1..int.len() - 1].iter().all(|m| m.ack));
    }

    #[test]
    fn masquerade_batch_is_framed() {
        let b = Bridge::new("axion0", "172.17.0.1/16").unwrap();
        let msgs = masquerade_batch(&b);
        assert_eq!(msgs.len(), 7);
        assert!(
            !msgs[0].ack && !msgs[6].ack,
            "batch begin/end are not acknowledged"
        );
        assert!(msgs[1..6].iter().all(|m| m.ack));
    }

    /// Needs root and a kernel with bridge/veth/nf_tables. It changes the network of the
    /// namespace it runs in, so run it in a scratch one:
    /// `unshare -n target/debug/deps/engine-HASH --ignored --exact net::tests::in_a_scratch_netns`
    #[test]
    #[ignore]
    fn in_a_scratch_netns() {
        use std::process::Command;
        let b = Bridge::new("axtest0", "10.123.0.1/24").unwrap();
        setup_host(&b).unwrap();
        setup_host(&b).unwrap();
        let sh = |c: &str| {
            let o = Command::new("sh").arg("-c").arg(c).output().unwrap();
            String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
        };
        let nft = sh("nft list table ip axion");
        assert!(
            nft.contains("type nat hook postrouting priority srcnat"),
            "{nft}"
        );
        assert!(
            nft.contains("ip saddr 10.123.0.0/24 oifname != \"axtest0\" masquerade"),
            "{nft}"
        );
        assert!(sh("ip addr show axtest0").contains("inet 10.123.0.1/24"));
        let mut child = Command::new("unshare")
            .args(["-n", "sleep", "30"])
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(300));
        let pid = child.id() as i32;
        let ep = Endpoint {
            ip: Ipv4Addr::new(10, 123, 0, 2),
            prefix: 24,
            gateway: b.gateway,
            mac: mac_for(Ipv4Addr::new(10, 123, 0, 2)),
        };
        attach(&b, "0123456789abcdef", pid, &ep).unwrap();
        let inside = sh(&format!(
            "nsenter -t {pid} -n ip addr; nsenter -t {pid} -n ip route"
        ));
        assert!(inside.contains("inet 10.123.0.2/24"), "{inside}");
        assert!(inside.contains("link/ether 02:42:0a:7b:00:02"), "{inside}");
        assert!(
            inside.contains("default via 10.123.0.1 dev eth0"),
            "{inside}"
        );
        // TCP from the container's namespace to the bridge address, over the veth pair.
        let l = std::net::TcpListener::bind("10.123.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let tcp = sh(&format!(
            "nsenter -t {pid} -n bash -c 'echo hi > /dev/tcp/10.123.0.1/{port}' && echo connected"
        ));
        let _ = child.kill();
        let _ = child.wait();
        assert!(tcp.contains("connected"), "{tcp}");
        let (_, peer) = l.accept().unwrap();
        assert_eq!(peer.ip(), std::net::IpAddr::V4(ep.ip));
        assert!(sh("ip link show master axtest0").contains("veth0123456789a"));
    }
}
