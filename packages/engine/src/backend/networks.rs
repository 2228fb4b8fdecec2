//! Networks: the [`NetworkBackend`] of the engine, and what the container lifecycle asks of
//! user networks (endpoints at create, wiring and the embedded DNS at start, clean-up at
//! exit and removal, inspect's `NetworkSettings.Networks`). Records and addresses are
//! `crate::networks`; links, bridges and nf_tables `crate::net`.

use super::*;
use crate::containers::Record;
use crate::networks::{
    dns, Attachment, Cidr, CreateSpec, EndpointReq, Found, NetError, Networks, UserNet,
};
use crate::runtime::host::IfaceAt;
use docker_api::networks::{
    Ipam, IpamConfig, Network, NetworkConnectRequest, NetworkContainer, NetworkCreateRequest,
    NetworkCreateResponse, NetworkDisconnectRequest,
};
use docker_api::NetworkBackend;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

/// The engine's network state: the store and each running container's DNS tasks.
pub struct NetState {
    pub store: Networks,
    dns: Mutex<HashMap<String, Vec<tokio::task::JoinHandle<()>>>>,
}

impl NetState {
    /// Opens the store and brings every user network's bridge up.
    pub fn open(root: &Path, bridge: Option<&net::Bridge>, rt: &dyn Runtime) -> NetState {
        let default = bridge.and_then(|b| Cidr::parse(&b.subnet()));
        let store = Networks::open(&root.join("network/networks.json"), default);
        for n in store.all() {
            if let Err(e) = rt.net_bridge(&n.as_bridge(), true) {
                eprintln!(
                    "engine: WARNING: network {} (bridge {}): {e}",
                    n.name, n.bridge
                );
            }
        }
        NetState {
            store,
            dns: Mutex::new(HashMap::new()),
        }
    }
}

fn net_err(e: NetError) -> ApiError {
    match e {
        NetError::NotFound(_) => ApiError::not_found(e.to_string()),
        NetError::Exists(_) => ApiError::conflict(e.to_string()),
        NetError::Forbidden(_) => ApiError::new(http::StatusCode::FORBIDDEN, e.to_string()),
        NetError::Invalid(_) | NetError::Ambiguous(_) => ApiError::bad_request(e.to_string()),
        NetError::Save { .. } => ApiError::internal(e.to_string()),
    }
}

fn forbidden(m: impl Into<String>) -> ApiError {
    ApiError::new(http::StatusCode::FORBIDDEN, m)
}

/// What a container start wires for user networks (made before the spawn, used in the
/// blocking spawn task once the pid is known, then handed back).
pub struct NetPlan {
    ifaces: Vec<(net::Bridge, String, String, net::Endpoint, bool, String)>,
    /// The variables the legacy links give the container (default bridge only).
    pub link_env: Vec<String>,
    dns: bool,
    /// Forward other names upstream: false when every network is internal.
    forward: bool,
    sockets: Mutex<Option<(std::net::UdpSocket, std::net::TcpListener)>>,
}

impl NetPlan {
    /// Runs in the spawn task, before the release: every veth, then the DNS sockets.
    pub fn wire(&self, rt: &dyn Runtime, pid: i32) -> std::io::Result<()> {
        for (b, host, ifname, ep, route, _) in &self.ifaces {
            let at = IfaceAt {
                host: host.clone(),
                ifname: ifname.clone(),
                pid,
                default_route: *route,
            };
            rt.net_attach_iface(b, &at, ep)?;
        }
        if self.dns {
            *self.sockets.lock().unwrap() = Some(rt.dns_bind(pid)?);
        }
        Ok(())
    }
}

fn endpoint_of(n: &UserNet, a: &Attachment) -> net::Endpoint {
    net::Endpoint {
        ip: a.ip,
        prefix: n.subnet.prefix,
        gateway: n.gateway,
        mac: a.mac.clone(),
    }
}

/// `NAME[:ALIAS]` of `--link`.
/// The variables a legacy link gives, as dockerd's `links.Link.ToEnv` (without its
/// `_START`/`_END` variables for runs of consecutive ports): `ALIAS_PORT` for the lowest
/// exposed port, `ALIAS_PORT_<port>_<PROTO>[_ADDR|_PORT|_PROTO]` for each, `ALIAS_NAME` (the
/// link's name, `/parent/alias`), and `ALIAS_ENV_<var>` for the linked container's
/// variables but HOME and PATH.
pub(super) fn link_env(
    alias: &str,
    link_name: &str,
    ip: Ipv4Addr,
    exposed: &[String],
    env: &[String],
) -> Vec<String> {
    let a = alias.to_ascii_uppercase().replace('-', "_");
    let mut ports: Vec<(u16, String)> = exposed
        .iter()
        .filter_map(|p| {
            let (n, proto) = p.split_once('/').unwrap_or((p, "tcp"));
            Some((n.parse().ok()?, proto.to_ascii_lowercase()))
        })
        .collect();
    // Lowest port first, tcp before udp at the same port (dockerd's withTCPPriority).
    ports.sort_by(|x, y| x.0.cmp(&y.0).then((x.1 != "tcp").cmp(&(y.1 != "tcp"))));
    ports.dedup();
    let mut out = Vec::new();
    if let Some((n, proto)) = ports.first() {
        out.push(format!("{a}_PORT={proto}://{ip}:{n}"));
    }
    for (n, proto) in &ports {
        let k = format!("{a}_PORT_{n}_{}", proto.to_ascii_uppercase());
        out.push(format!("{k}={proto}://{ip}:{n}"));
        out.push(format!("{k}_ADDR={ip}"));
        out.push(format!("{k}_PORT={n}"));
        out.push(format!("{k}_PROTO={proto}"));
    }
    out.push(format!("{a}_NAME={link_name}"));
    for v in env {
        if let Some((k, val)) = v.split_once('=') {
            if k != "HOME" && k != "PATH" {
                out.push(format!("{a}_ENV_{k}={val}"));
            }
        }
    }
    out
}

fn parse_link(l: &str) -> (&str, &str) {
    let l = l.trim_start_matches('/');
    match l.split_once(':') {
        Some((n, a)) => (n, a.rsplit('/').next().unwrap_or(a)),
        None => (l, l),
    }
}

impl Engine {
    /// `docker rm --link PARENT/ALIAS`: the link goes from PARENT's HostConfig.Links (the
    /// linked container stays; a running PARENT keeps its /etc/hosts line, as with dockerd).
    pub(super) fn remove_link(&self, parent: &str, alias: &str) -> ApiResult<()> {
        let c = self.find(parent)?;
        let removed = {
            let mut r = c.rec.lock().unwrap();
            let links = r.host_config.links.get_or_insert_with(Vec::new);
            let before = links.len();
            links.retain(|l| parse_link(l).1 != alias);
            before != links.len()
        };
        if !removed {
            return Err(ApiError::not_found(format!(
                "No such container: {}/{alias}",
                parent.trim_start_matches('/')
            )));
        }
        c.save();
        Ok(())
    }

    /// A network event on the engine's bus (`create`, `connect`, `disconnect`, `destroy`), as
    /// dockerd's: the actor is the network, with its name and type, and the container for
    /// connect and disconnect.
    fn network_event(&self, action: &str, net_id: &str, net_name: &str, container: &str) {
        let mut attrs = vec![
            ("name", net_name.to_string()),
            ("type", "bridge".to_string()),
        ];
        if !container.is_empty() {
            attrs.push(("container", container.to_string()));
        }
        crate::events::publish("network", action, net_id, attrs);
    }

    fn default_bridge(&self) -> Option<&net::Bridge> {
        self.bridge.as_ref().ok().map(|(b, _)| b)
    }

    /// Rewrites the engine's nf_tables table for the default bridge and every user network.
    fn sync_net_rules(&self) -> ApiResult<()> {
        let mut rules: Vec<net::NetRules> = self
            .default_bridge()
            .map(|b| net::NetRules {
                bridge: b.clone(),
                masquerade: true,
                internal: false,
            })
            .into_iter()
            .collect();
        for n in self.nets.store.all() {
            rules.push(net::NetRules {
                bridge: n.as_bridge(),
                masquerade: n.masquerade,
                internal: n.internal,
            });
        }
        self.runtime
            .net_rules(&rules)
            .map_err(internal("installing the nf_tables rules of the networks"))
    }

    /// At engine start: the rules for every network (the default bridge's setup wrote its own).
    pub fn networks_up(&self) {
        if !self.nets.store.all().is_empty() {
            if let Err(e) = self.sync_net_rules() {
                eprintln!("engine: WARNING: {}", e.message);
            }
        }
    }

    fn records(&self) -> Vec<Record> {
        self.containers
            .lock()
            .unwrap()
            .values()
            .map(|c| c.snapshot())
            .collect()
    }

    /// Validates a create's network mode and endpoints and attaches the container to the
    /// user networks it names (holding their addresses).
    pub(super) fn create_endpoints(
        &self,
        id: &str,
        hc: &HostConfig,
        nc: &NetworkingConfig,
    ) -> ApiResult<()> {
        let eps = nc.endpoints_config.clone().unwrap_or_default();
        let mode = hc.network_mode.as_str();
        if let Some(other) = mode.strip_prefix("container:") {
            let target = self.find(other)?;
            if target.snapshot().id == id {
                return Err(ApiError::bad_request("cannot join own network namespace"));
            }
            if !eps.is_empty() || hc.links.as_ref().is_some_and(|l| !l.is_empty()) {
                return Err(ApiError::bad_request(
                    "conflicting options: networking options and links cannot be used with \
                        --network container:",
                ));
            }
            return Ok(());
        }
        for l in hc.links.clone().unwrap_or_default() {
            let (target, _) = parse_link(&l);
            self.find(target).map_err(|_| {
                ApiError::not_found(format!(
                    "could not get container for {target}: No such container: {target}"
                ))
            })?;
        }
        let mut wanted: Vec<(String, EndpointSettings)> = Vec::new();
        match mode {
            "bridge" | "host" | "none" => {
                for (name, ep) in &eps {
                    // The CLI names the default network `default` (its --network default).
                    let name = if name == "default" {
                        "bridge"
                    } else {
                        name.as_str()
                    };
                    if name == mode {
                        if ep.aliases.as_ref().is_some_and(|a| !a.is_empty()) {
                            return Err(ApiError::bad_request(
                                "network-scoped alias is supported only for containers in user \
                                    defined networks",
                            ));
                        }
                        if ep.ipam_config.as_ref().is_some_and(|c| {
                            c.link_local_ips.as_ref().is_some_and(|l| !l.is_empty())
                        }) {
                            return Err(ApiError::bad_request(
                                "link-local addresses (LinkLocalIPs) are not supported by this \
                                    engine",
                            ));
                        }
                        if ep
                            .ipam_config
                            .as_ref()
                            .is_some_and(|c| !c.ipv4_address.is_empty())
                        {
                            return Err(ApiError::bad_request(
                                "user specified IP address is supported on user defined networks \
                                    only",
                            ));
                        }
                        if let Some(o) = ep.driver_opts.clone().filter(|o| !o.is_empty()) {
                            // Kept and shown as dockerd does (its bridge driver reads none).
                            self.nets.store.set_bridge_driver_opts(id, o);
                        }
                    } else if mode == "bridge" {
                        wanted.push((name.to_string(), ep.clone()));
                    } else {
                        return Err(ApiError::bad_request(format!(
                            "container cannot be connected to network {name} with --network {mode}"
                        )));
                    }
                }
            }
            _ => {
                // On a user network a legacy link is an endpoint link, as dockerd makes it.
                let mut ep = eps.get(mode).cloned().unwrap_or_default();
                if let Some(l) = hc.links.as_ref().filter(|l| !l.is_empty()) {
                    ep.links
                        .get_or_insert_with(Vec::new)
                        .extend(l.iter().cloned());
                }
                wanted.push((mode.to_string(), ep));
                for (name, ep) in &eps {
                    if name != mode {
                        wanted.push((name.clone(), ep.clone()));
                    }
                }
            }
        }
        let mut done = Vec::new();
        for (name, ep) in wanted {
            let r = self.connect_one(id, &name, &ep);
            match r {
                Ok(net_id) => done.push(net_id),
                Err(e) => {
                    for n in done {
                        let _ = self.nets.store.disconnect(&n, id);
                    }
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Attaches container `cid` to user network `name` in the store; its network id.
    fn connect_one(&self, cid: &str, name: &str, ep: &EndpointSettings) -> ApiResult<String> {
        let n = match self.nets.store.find(name).map_err(net_err)? {
            Found::User(n) => n,
            Found::Predefined { name, .. } => {
                return Err(ApiError::bad_request(format!(
                    "connecting to the predefined network {name} besides another is not supported \
                        by this engine"
                )))
            }
        };
        if ep
            .ipam_config
            .as_ref()
            .is_some_and(|c| !c.ipv6_address.is_empty())
        {
            return Err(ApiError::bad_request(
                "IPv6 addresses are not supported by this engine",
            ));
        }
        let requested = match ep.ipam_config.as_ref().map(|c| c.ipv4_address.as_str()) {
            None | Some("") => None,
            Some(ip) => Some(
                ip.parse::<Ipv4Addr>()
                    .map_err(|_| ApiError::bad_request(format!("invalid IPv4 address: {ip}")))?,
            ),
        };
        if ep
            .ipam_config
            .as_ref()
            .is_some_and(|c| c.link_local_ips.as_ref().is_some_and(|l| !l.is_empty()))
        {
            return Err(ApiError::bad_request(
                "link-local addresses (LinkLocalIPs) are not supported by this engine",
            ));
        }
        let links = ep
            .links
            .clone()
            .unwrap_or_default()
            .iter()
            .map(|l| {
                let (n, a) = parse_link(l);
                format!("{n}:{a}")
            })
            .collect();
        let req = EndpointReq {
            aliases: ep.aliases.clone().unwrap_or_default(),
            ip: requested,
            mac: Some(ep.mac_address.clone()).filter(|m| !m.is_empty()),
            links,
            driver_opts: ep.driver_opts.clone().unwrap_or_default(),
        };
        self.nets.store.connect(&n.id, cid, req).map_err(net_err)?;
        Ok(n.id)
    }

    /// Before a start: the user networks' interfaces (eth0 first unless the default bridge
    /// has it), resolv.conf (the embedded DNS when on any user network), /etc/hosts with the
    /// container's own address and its links.
    pub(super) fn net_plan(
        &self,
        c: &Container,
        r: &Record,
        bridge_ip: Option<Ipv4Addr>,
    ) -> ApiResult<Arc<NetPlan>> {
        let mode = r.host_config.network_mode.as_str();
        if !matches!(mode, "bridge" | "host" | "none") && !mode.starts_with("container:") {
            // The network named at create must still exist (dockerd fails the start too).
            match self.nets.store.find(mode) {
                // Disconnected from it since: the container starts without it.
                Ok(Found::User(_)) => {}
                _ => return Err(ApiError::not_found(format!("network {mode} not found"))),
            }
        }
        let attached = self.nets.store.of_container(&r.id);
        let mut link_vars = Vec::new();
        let mut ifaces = Vec::new();
        let mut has_route = bridge_ip.is_some();
        let first = usize::from(bridge_ip.is_some());
        for (idx, (n, a)) in (first..).zip(attached.iter()) {
            let route = !n.internal && !has_route;
            has_route |= route;
            ifaces.push((
                n.as_bridge(),
                net::user_veth(&r.id, &n.id),
                format!("eth{idx}"),
                endpoint_of(n, a),
                route,
                n.id.clone(),
            ));
        }
        let dns = !attached.is_empty();
        let host = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        if dns {
            std::fs::write(c.dir.join("resolv.conf"), dns::resolv_conf(&host))
                .map_err(internal("writing resolv.conf"))?;
        } else if mode == "bridge" {
            std::fs::write(c.dir.join("resolv.conf"), net::container_resolv_conf(&host))
                .map_err(internal("writing resolv.conf"))?;
        }
        if let Some(other) = mode.strip_prefix("container:") {
            // Docker shares the other container's hosts and resolv.conf too.
            let t = self.find(other)?;
            if !t.is_running() {
                return Err(ApiError::conflict(format!(
                    "cannot join network namespace of a non running container {other}"
                )));
            }
            for f in ["hosts", "resolv.conf"] {
                let _ = std::fs::copy(t.dir.join(f), c.dir.join(f));
            }
        } else {
            let own = bridge_ip.or(attached.first().map(|(_, a)| a.ip));
            let mut hosts = format!(
                "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{}\t{}\n",
                own.map_or("127.0.1.1".to_string(), |ip| ip.to_string()),
                r.config.hostname
            );
            // Legacy links are /etc/hosts lines on the default bridge (on a user network
            // they became endpoint links at create).
            let links = match mode {
                "bridge" => r.host_config.links.clone().unwrap_or_default(),
                _ => Vec::new(),
            };
            for l in links {
                let (target, alias) = parse_link(&l);
                let t = self.find(target)?.snapshot();
                let Some(ep) = t.endpoint.as_ref().filter(|_| t.status == Status::Running) else {
                    return Err(ApiError::bad_request(format!(
                        "cannot link to a non running container: /{} AS /{}/{alias}",
                        t.name, r.name
                    )));
                };
                let mut names = vec![alias.to_string()];
                for n in [t.name.clone(), t.config.hostname.clone()] {
                    if !names.contains(&n) {
                        names.push(n);
                    }
                }
                hosts.push_str(&format!("{}\t{}\n", ep.ip, names.join(" ")));
                let exposed: Vec<String> = t
                    .config
                    .exposed_ports
                    .iter()
                    .flat_map(|m| m.keys().cloned())
                    .collect();
                let name = format!("/{}/{alias}", r.name);
                let env = t.config.env.clone().unwrap_or_default();
                link_vars.extend(link_env(alias, &name, ep.ip, &exposed, &env));
            }
            let gateway = self.default_bridge().map(|b| b.gateway);
            for h in super::ops::hc_list(&r.host_config, "ExtraHosts") {
                hosts.extend(net::extra_host_line(&h, gateway));
            }
            std::fs::write(c.dir.join("hosts"), hosts).map_err(internal("writing /etc/hosts"))?;
        }
        let forward = bridge_ip.is_some() || attached.iter().any(|(n, _)| !n.internal);
        Ok(Arc::new(NetPlan {
            link_env: link_vars,
            ifaces,
            dns,
            forward,
            sockets: Mutex::new(None),
        }))
    }

    /// After a successful start: the interfaces' names and the DNS tasks.
    pub(super) fn net_started(&self, id: &str, plan: &NetPlan) {
        for (_, _, ifname, _, _, net_id) in &plan.ifaces {
            self.nets.store.set_ifname(net_id, id, Some(ifname.clone()));
        }
        let Some((udp, tcp)) = plan.sockets.lock().unwrap().take() else {
            return;
        };
        let me = self.me.get().cloned().unwrap_or_default();
        let cid = id.to_string();
        let lookup: dns::Lookup =
            Arc::new(move |name: &str| me.upgrade().and_then(|e| e.dns_lookup(&cid, name)));
        let upstream = if plan.forward {
            dns::upstreams(&std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default())
        } else {
            Vec::new()
        };
        match dns::serve(udp, tcp, lookup, upstream) {
            Ok(tasks) => {
                if let Some(old) = self.nets.dns.lock().unwrap().insert(id.to_string(), tasks) {
                    old.iter().for_each(|t| t.abort());
                }
            }
            Err(e) => eprintln!("engine: embedded DNS for {id}: {e}"),
        }
    }

    /// At exit (and removal): the DNS tasks end; the namespace took the interfaces with it.
    pub(super) fn net_stopped(&self, id: &str) {
        if let Some(tasks) = self.nets.dns.lock().unwrap().remove(id) {
            tasks.iter().for_each(|t| t.abort());
        }
        for (n, _) in self.nets.store.of_container(id) {
            self.nets.store.set_ifname(&n.id, id, None);
        }
    }

    pub(super) fn net_removed(&self, id: &str) {
        self.net_stopped(id);
        self.nets.store.remove_container(id);
    }

    /// What container `asker` may resolve: names, short ids and aliases of the running
    /// containers on the user networks it is on (itself included), as dockerd answers.
    fn dns_lookup(&self, asker: &str, name: &str) -> Option<Vec<Ipv4Addr>> {
        let recs: HashMap<String, Record> = self
            .records()
            .into_iter()
            .filter(|r| r.status == Status::Running)
            .map(|r| (r.id.clone(), r))
            .collect();
        let mut ips = Vec::new();
        for n in self.nets.store.all() {
            let Some(mine) = n.endpoints.get(asker) else {
                continue;
            };
            // The asker's own links: ALIAS (or NAME) names the linked container.
            let linked: Vec<&str> = mine
                .links
                .iter()
                .filter_map(|l| l.split_once(':'))
                .filter(|(t, a)| a.eq_ignore_ascii_case(name) || t.eq_ignore_ascii_case(name))
                .map(|(t, _)| t)
                .collect();
            for (cid, a) in &n.endpoints {
                let Some(r) = recs.get(cid) else { continue };
                let hit = linked.iter().any(|t| r.name.eq_ignore_ascii_case(t))
                    || r.name.eq_ignore_ascii_case(name)
                    || cid.get(..12) == Some(name)
                    || a.aliases.iter().any(|al| al.eq_ignore_ascii_case(name));
                if hit && !ips.contains(&a.ip) {
                    ips.push(a.ip);
                }
            }
        }
        (!ips.is_empty()).then_some(ips)
    }

    /// `NetworkSettings.Networks` entries of the user networks (default bridge aside).
    pub(super) fn user_endpoint_settings(&self, r: &Record) -> Vec<(String, EndpointSettings)> {
        let running = r.status == Status::Running;
        self.nets
            .store
            .of_container(&r.id)
            .into_iter()
            .map(|(n, a)| {
                let mut dns_names = vec![r.name.clone()];
                dns_names.extend(a.aliases.iter().cloned());
                dns_names.push(r.id[..12].to_string());
                let es = EndpointSettings {
                    ipam_config: a.requested.map(|ip| EndpointIpamConfig {
                        ipv4_address: ip.to_string(),
                        ..Default::default()
                    }),
                    // null when none, as dockerd ≥ API 1.45 (no short id in it).
                    aliases: Some(a.aliases.clone()).filter(|a| !a.is_empty()),
                    links: Some(a.links.clone()).filter(|l| !l.is_empty()),
                    driver_opts: Some(a.driver_opts.clone()).filter(|o| !o.is_empty()),
                    network_id: n.id.clone(),
                    endpoint_id: if running {
                        a.endpoint_id.clone()
                    } else {
                        String::new()
                    },
                    gateway: if running {
                        n.gateway.to_string()
                    } else {
                        String::new()
                    },
                    ip_address: if running {
                        a.ip.to_string()
                    } else {
                        String::new()
                    },
                    ip_prefix_len: if running { n.subnet.prefix as i64 } else { 0 },
                    // A MAC the client chose shows before the start too, as in dockerd.
                    mac_address: if running || a.mac != net::mac_for(a.ip) {
                        a.mac.clone()
                    } else {
                        String::new()
                    },
                    dns_names: Some(dns_names),
                    ..Default::default()
                };
                (n.name, es)
            })
            .collect()
    }

    fn network_of_predefined(&self, name: &str, id: &str) -> Network {
        let mut n = Network {
            name: name.into(),
            id: id.into(),
            created: rfc3339_secs(0),
            scope: "local".into(),
            enable_ipv4: true,
            ipam: Ipam {
                driver: "default".into(),
                options: None,
                config: Some(Vec::new()),
            },
            ..Default::default()
        };
        match name {
            "bridge" => {
                n.driver = "bridge".into();
                if let Some(b) = self.default_bridge() {
                    n.ipam.config = Some(vec![IpamConfig {
                        subnet: b.subnet(),
                        gateway: b.gateway.to_string(),
                        ..Default::default()
                    }]);
                    for (k, v) in [
                        ("com.docker.network.bridge.default_bridge", "true"),
                        ("com.docker.network.bridge.enable_icc", "true"),
                        ("com.docker.network.bridge.enable_ip_masquerade", "true"),
                        ("com.docker.network.bridge.host_binding_ipv4", "0.0.0.0"),
                        ("com.docker.network.bridge.name", b.name.as_str()),
                        ("com.docker.network.driver.mtu", "1500"),
                    ] {
                        n.options.insert(k.into(), v.into());
                    }
                }
                for r in self.records() {
                    if let (Some(ep), Status::Running, "bridge") =
                        (&r.endpoint, r.status, r.host_config.network_mode.as_str())
                    {
                        n.containers.insert(
                            r.id.clone(),
                            NetworkContainer {
                                name: r.name.clone(),
                                endpoint_id: r.id.clone(),
                                mac_address: ep.mac.clone(),
                                ipv4_address: format!("{}/{}", ep.ip, ep.prefix),
                                ipv6_address: String::new(),
                            },
                        );
                    }
                }
            }
            "host" => n.driver = "host".into(),
            _ => n.driver = "null".into(),
        }
        n
    }

    fn network_of_user(&self, u: &UserNet) -> Network {
        let recs: HashMap<String, Record> = self
            .records()
            .into_iter()
            .map(|r| (r.id.clone(), r))
            .collect();
        Network {
            name: u.name.clone(),
            id: u.id.clone(),
            created: docker_api::time::rfc3339(u.created),
            scope: "local".into(),
            driver: "bridge".into(),
            enable_ipv4: true,
            enable_ipv6: false,
            ipam: Ipam {
                driver: u.ipam_driver.clone(),
                options: Some(u.ipam_options.clone()).filter(|o| !o.is_empty()),
                config: Some(vec![IpamConfig {
                    subnet: u.subnet.to_string(),
                    ip_range: u.ip_range.map(|r| r.to_string()).unwrap_or_default(),
                    gateway: u.gateway.to_string(),
                    auxiliary_addresses: Some(
                        u.aux
                            .iter()
                            .map(|(k, v)| (k.clone(), v.to_string()))
                            .collect::<BTreeMap<String, String>>(),
                    )
                    .filter(|a| !a.is_empty()),
                }]),
            },
            internal: u.internal,
            attachable: u.attachable,
            containers: u
                .endpoints
                .iter()
                .filter_map(|(cid, a)| {
                    let r = recs.get(cid).filter(|r| r.status == Status::Running)?;
                    Some((
                        cid.clone(),
                        NetworkContainer {
                            name: r.name.clone(),
                            endpoint_id: a.endpoint_id.clone(),
                            mac_address: a.mac.clone(),
                            ipv4_address: format!("{}/{}", a.ip, u.subnet.prefix),
                            ipv6_address: String::new(),
                        },
                    ))
                })
                .collect(),
            options: u.options.clone(),
            labels: u.labels.clone(),
            ..Default::default()
        }
    }

    fn network_of(&self, f: &Found) -> Network {
        match f {
            Found::Predefined { name, id } => self.network_of_predefined(name, id),
            Found::User(u) => self.network_of_user(u),
        }
    }

    fn next_ifname(&self, r: &Record) -> String {
        let mut used: Vec<String> = self
            .nets
            .store
            .of_container(&r.id)
            .into_iter()
            .filter_map(|(_, a)| a.ifname)
            .collect();
        if r.endpoint.is_some() && r.host_config.network_mode == "bridge" {
            used.push("eth0".into());
        }
        (0..)
            .map(|i| format!("eth{i}"))
            .find(|n| !used.contains(n))
            .unwrap_or_default()
    }
}

fn rfc3339_secs(s: i64) -> String {
    docker_api::time::rfc3339(s as i128 * 1_000_000_000)
}

fn parse_cidr(what: &str, v: &str) -> ApiResult<Option<Cidr>> {
    if v.is_empty() {
        return Ok(None);
    }
    if v.contains(':') {
        return Err(ApiError::bad_request(format!(
            "{what} {v}: IPv6 is not supported by this engine"
        )));
    }
    Cidr::parse(v)
        .map(Some)
        .ok_or_else(|| ApiError::bad_request(format!("invalid {what} {v}: expected A.B.C.D/N")))
}

impl NetworkBackend for Engine {
    async fn networks(&self) -> ApiResult<Vec<Network>> {
        let mut v: Vec<Network> = docker_api::networks::PREDEFINED
            .iter()
            .map(|n| self.network_of_predefined(n, &self.nets.store.predefined_id(n)))
            .collect();
        v.extend(
            self.nets
                .store
                .all()
                .iter()
                .map(|u| self.network_of_user(u)),
        );
        Ok(v)
    }

    async fn network_inspect(&self, id: &str) -> ApiResult<Network> {
        let f = self.nets.store.find(id).map_err(net_err)?;
        Ok(self.network_of(&f))
    }

    async fn network_create(&self, req: NetworkCreateRequest) -> ApiResult<NetworkCreateResponse> {
        if req.name.trim().is_empty() {
            return Err(ApiError::bad_request("network name is required"));
        }
        match req.driver.as_str() {
            "" | "bridge" => {}
            "host" | "null" => {
                return Err(forbidden(format!(
                    "only one instance of \"{}\" network is allowed",
                    req.driver
                )))
            }
            d => {
                return Err(ApiError::bad_request(format!(
                    "plugin \"{d}\" not found: this engine has the bridge network driver only"
                )))
            }
        }
        if req.enable_ipv6 == Some(true) {
            return Err(ApiError::bad_request(
                "IPv6 networks are not supported by this engine (EnableIPv6)",
            ));
        }
        if req.enable_ipv4 == Some(false) {
            return Err(ApiError::bad_request(
                "IPv6-only networks are not supported by this engine (EnableIPv4=false)",
            ));
        }
        if req.ingress
            || req.config_only
            || req
                .config_from
                .as_ref()
                .is_some_and(|c| !c.network.is_empty())
        {
            return Err(ApiError::bad_request(
                "ingress, config-only and config-from networks are swarm features this engine does \
                    not have",
            ));
        }
        if !matches!(req.scope.as_str(), "" | "local") {
            return Err(ApiError::bad_request(format!(
                "scope {:?} is not supported by this engine (local only)",
                req.scope
            )));
        }
        let ipam = req.ipam.clone().unwrap_or_default();
        if !matches!(ipam.driver.as_str(), "" | "default") {
            return Err(ApiError::bad_request(format!(
                "IPAM driver \"{}\" not found: this engine has the default IPAM driver only",
                ipam.driver
            )));
        }
        let configs = ipam.config.clone().unwrap_or_default();
        if configs.len() > 1 {
            return Err(ApiError::bad_request(
                "more than one IPAM config (subnet) per network is not supported by this engine",
            ));
        }
        let mut spec = CreateSpec {
            name: req.name.clone(),
            internal: req.internal,
            attachable: req.attachable,
            ipam_driver: ipam.driver.clone(),
            ipam_options: ipam.options.clone().unwrap_or_default(),
            options: req.options.clone().unwrap_or_default(),
            labels: req.labels.clone().unwrap_or_default(),
            ..Default::default()
        };
        if let Some(c) = configs.first() {
            for (k, v) in c.auxiliary_addresses.clone().unwrap_or_default() {
                let ip = v.parse::<Ipv4Addr>().map_err(|_| {
                    ApiError::bad_request(format!("invalid auxiliary address {k}={v}"))
                })?;
                spec.aux.insert(k, ip);
            }
            spec.subnet = parse_cidr("subnet", &c.subnet)?;
            spec.ip_range = parse_cidr("ip-range", &c.ip_range)?;
            if spec.subnet.is_none() && (spec.ip_range.is_some() || !c.gateway.is_empty()) {
                return Err(ApiError::bad_request(
                    "a gateway or ip-range needs a subnet (--subnet)",
                ));
            }
            if !c.gateway.is_empty() {
                spec.gateway = Some(c.gateway.parse().map_err(|_| {
                    ApiError::bad_request(format!("invalid gateway {}", c.gateway))
                })?);
            }
        }
        let n = self.nets.store.create(spec).map_err(net_err)?;
        let up = self
            .runtime
            .net_bridge(&n.as_bridge(), true)
            .map_err(internal("creating the network's bridge"))
            .and_then(|()| self.sync_net_rules());
        if let Err(e) = up {
            let _ = self.nets.store.remove(&n.id);
            let _ = self.runtime.net_bridge(&n.as_bridge(), false);
            return Err(e);
        }
        self.network_event("create", &n.id, &n.name, "");
        Ok(NetworkCreateResponse {
            id: n.id,
            warning: String::new(),
        })
    }

    async fn network_remove(&self, id: &str) -> ApiResult<()> {
        let u = match self.nets.store.find(id).map_err(net_err)? {
            Found::Predefined { name, .. } => {
                return Err(forbidden(format!(
                    "{name} is a pre-defined network and cannot be removed"
                )))
            }
            Found::User(u) => u,
        };
        if !self.network_of_user(&u).containers.is_empty() {
            return Err(forbidden(format!(
                "error while removing network: network {} id {} has active endpoints",
                u.name, u.id
            )));
        }
        self.nets.store.remove(&u.id).map_err(net_err)?;
        let _ = self.runtime.net_bridge(&u.as_bridge(), false);
        self.sync_net_rules()?;
        self.network_event("destroy", &u.id, &u.name, "");
        Ok(())
    }

    async fn network_connect(&self, id: &str, req: NetworkConnectRequest) -> ApiResult<()> {
        let f = self.nets.store.find(id).map_err(net_err)?;
        let c = self.find(&req.container)?;
        let _g = c.op.lock().await;
        let r = c.snapshot();
        let mode = r.host_config.network_mode.as_str();
        let u = match f {
            Found::Predefined { name, .. } => {
                if name == "bridge" && mode == "bridge" {
                    return Err(forbidden(format!(
                        "endpoint with name {} already exists in network bridge",
                        r.name
                    )));
                }
                return Err(forbidden(format!(
                    "connecting a container to the predefined network {name} is not supported"
                )));
            }
            Found::User(u) => u,
        };
        if matches!(mode, "host" | "none") || mode.starts_with("container:") {
            return Err(forbidden(format!(
                "container sharing network namespace with another container or host cannot be \
                    connected to any other network (--network {mode})"
            )));
        }
        let ep = req.endpoint_config.clone().unwrap_or_default();
        self.connect_one(&r.id, &u.id, &ep)?;
        if r.status == Status::Running {
            let Some((n, a)) = self
                .nets
                .store
                .of_container(&r.id)
                .into_iter()
                .find(|(n, _)| n.id == u.id)
            else {
                return Err(ApiError::internal("the new endpoint vanished"));
            };
            let ifname = self.next_ifname(&r);
            let at = IfaceAt {
                host: net::user_veth(&r.id, &n.id),
                ifname: ifname.clone(),
                pid: r.pid,
                default_route: !n.internal,
            };
            let (rt, b, ep) = (self.runtime.clone(), n.as_bridge(), endpoint_of(&n, &a));
            let wired = tokio::task::spawn_blocking(move || rt.net_attach_iface(&b, &at, &ep))
                .await
                .map_err(internal("network attach task"))?;
            if let Err(e) = wired {
                let _ = self.nets.store.disconnect(&n.id, &r.id);
                return Err(ApiError::internal(format!(
                    "connecting {} to {}: {e}",
                    r.name, n.name
                )));
            }
            self.nets.store.set_ifname(&n.id, &r.id, Some(ifname));
        }
        self.network_event("connect", &u.id, &u.name, &r.id);
        Ok(())
    }

    async fn network_disconnect(&self, id: &str, req: NetworkDisconnectRequest) -> ApiResult<()> {
        let f = self.nets.store.find(id).map_err(net_err)?;
        let u = match f {
            Found::Predefined { name, .. } => {
                return Err(forbidden(format!(
                    "disconnecting a container from the predefined network {name} is not supported \
                        by this engine"
                )))
            }
            Found::User(u) => u,
        };
        let c = match self.find(&req.container) {
            Ok(c) => c,
            Err(e) => {
                // Force: drop an endpoint whose container is gone (by id or name prefix).
                if req.force {
                    if let Some(cid) = u.endpoints.keys().find(|k| k.starts_with(&req.container)) {
                        let _ = self.nets.store.disconnect(&u.id, cid);
                        return Ok(());
                    }
                }
                return Err(e);
            }
        };
        let _g = c.op.lock().await;
        let r = c.snapshot();
        let a = self.nets.store.disconnect(&u.id, &r.id).map_err(net_err)?;
        if r.status == Status::Running && a.ifname.is_some() {
            let (rt, host) = (self.runtime.clone(), net::user_veth(&r.id, &u.id));
            let _ = tokio::task::spawn_blocking(move || rt.net_detach_iface(&host)).await;
        }
        self.network_event("disconnect", &u.id, &u.name, &r.id);
        Ok(())
    }
}

impl Engine {
    /// `--network container:ID`: the namespace of that container's process.
    pub(super) fn join_netns(&self, mode: &str) -> ApiResult<Option<PathBuf>> {
        let Some(other) = mode.strip_prefix("container:") else {
            return Ok(None);
        };
        let r = self.find(other)?.snapshot();
        if r.status != Status::Running || r.pid <= 0 {
            return Err(ApiError::conflict(format!(
                "cannot join network namespace of a non running container {other}"
            )));
        }
        Ok(Some(PathBuf::from(format!("/proc/{}/ns/net", r.pid))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::fake::{Call, Fake};
    use clap::Parser;
    use docker_api::ContainerBackend;

    #[test]
    fn a_legacy_link_gives_dockerds_variables() {
        let env = link_env(
            "my-db",
            "/web/my-db",
            Ipv4Addr::new(172, 17, 0, 3),
            &["6379/tcp".into(), "53/udp".into(), "53/tcp".into()],
            &[
                "FOO=1".into(),
                "PATH=/bin".into(),
                "HOME=/root".into(),
                "A=b=c".into(),
            ],
        );
        assert_eq!(
            env,
            [
                "MY_DB_PORT=tcp://172.17.0.3:53",
                "MY_DB_PORT_53_TCP=tcp://172.17.0.3:53",
                "MY_DB_PORT_53_TCP_ADDR=172.17.0.3",
                "MY_DB_PORT_53_TCP_PORT=53",
                "MY_DB_PORT_53_TCP_PROTO=tcp",
                "MY_DB_PORT_53_UDP=udp://172.17.0.3:53",
                "MY_DB_PORT_53_UDP_ADDR=172.17.0.3",
                "MY_DB_PORT_53_UDP_PORT=53",
                "MY_DB_PORT_53_UDP_PROTO=udp",
                "MY_DB_PORT_6379_TCP=tcp://172.17.0.3:6379",
                "MY_DB_PORT_6379_TCP_ADDR=172.17.0.3",
                "MY_DB_PORT_6379_TCP_PORT=6379",
                "MY_DB_PORT_6379_TCP_PROTO=tcp",
                "MY_DB_NAME=/web/my-db",
                "MY_DB_ENV_FOO=1",
                "MY_DB_ENV_A=b=c",
            ]
        );
        let bare = link_env("x", "/p/x", Ipv4Addr::LOCALHOST, &[], &[]);
        assert_eq!(bare, ["X_NAME=/p/x"]);
    }
    use sha2::Digest;

    async fn engine_on(root: &Path, rt: &Arc<Fake>) -> Arc<Engine> {
        let args = Args::parse_from([
            "engine".as_ref(),
            "--data-root".as_ref(),
            root.as_os_str(),
            "--bridge".as_ref(),
            "none".as_ref(),
        ]);
        let e = Arc::new(Engine::with_runtime(&args, rt.clone()).unwrap());
        let diff_id = format!("sha256:{}", "ab".repeat(32));
        let config = serde_json::json!({
            "architecture": "amd64", "os": "linux", "config": {"Cmd": ["sh"]},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        })
        .to_string();
        let id = format!("sha256:{}", hex::encode(sha2::Sha256::digest(&config)));
        std::fs::write(e.images.blob_path(&id), &config).unwrap();
        std::fs::create_dir_all(e.images.layer_path(&diff_id)).unwrap();
        e.images.tag(&id, "busybox:latest").unwrap();
        e.clone().restore().await;
        e
    }

    async fn net(e: &Engine, name: &str, subnet: &str) -> String {
        let ipam = (!subnet.is_empty()).then(|| Ipam {
            config: Some(vec![IpamConfig {
                subnet: subnet.into(),
                ..Default::default()
            }]),
            ..Default::default()
        });
        e.network_create(NetworkCreateRequest {
            name: name.into(),
            ipam,
            ..Default::default()
        })
        .await
        .unwrap()
        .id
    }

    async fn run_on(e: &Engine, name: &str, v: serde_json::Value) -> String {
        let mut v = v;
        v["Image"] = "busybox".into();
        let req: ContainerCreateRequest = serde_json::from_value(v).unwrap();
        let id = e.container_create(Some(name.into()), req).await.unwrap().id;
        e.container_start(&id).await.unwrap();
        id
    }

    fn net_calls(rt: &Fake) -> Vec<String> {
        rt.calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::Net(s) => Some(s),
                _ => None,
            })
            .collect()
    }

    #[tokio::test]
    async fn endpoints_dns_names_connect_and_remove() {
        let d = tempfile::tempdir().unwrap();
        let rt = Arc::new(Fake::default());
        let e = engine_on(d.path(), &rt).await;
        let n1 = net(&e, "n1", "10.9.0.0/24").await;
        let n2 = net(&e, "n2", "").await;
        let db = run_on(
            &e,
            "db",
            serde_json::json!({"HostConfig": {"NetworkMode": "n1"},
                "NetworkingConfig": {"EndpointsConfig": {"n1": {"Aliases": ["database"],
                    "IPAMConfig": {"IPv4Address": "10.9.0.9"}}}}}),
        )
        .await;
        let calls = net_calls(&rt);
        assert!(
            calls
                .iter()
                .any(|c| c.ends_with("eth0 10.9.0.9 pid 1000 route=true")
                    || (c.contains("eth0 10.9.0.9") && c.contains("route=true"))),
            "{calls:?}"
        );
        let resolv = std::fs::read_to_string(e.find(&db).unwrap().dir.join("resolv.conf")).unwrap();
        assert!(resolv.contains("nameserver 127.0.0.11"), "{resolv}");
        let ins = e.container_inspect("db").await.unwrap();
        let ep = &ins.network_settings.networks["n1"];
        assert_eq!(ep.ip_address, "10.9.0.9");
        assert_eq!(ep.gateway, "10.9.0.1");
        assert_eq!(ep.network_id, n1);
        assert_eq!(ep.aliases, Some(vec!["database".to_string()]));
        assert_eq!(
            ep.dns_names,
            Some(vec!["db".into(), "database".into(), db[..12].to_string()])
        );
        assert_eq!(
            ep.ipam_config.as_ref().unwrap().ipv4_address,
            "10.9.0.9",
            "the asked-for address is echoed"
        );
        let app = run_on(
            &e,
            "app",
            serde_json::json!({"HostConfig": {"NetworkMode": "n1"}}),
        )
        .await;
        let other = run_on(
            &e,
            "other",
            serde_json::json!({"HostConfig": {"NetworkMode": "n2"}}),
        )
        .await;
        let ip = |v: &str| Some(vec![v.parse::<Ipv4Addr>().unwrap()]);
        assert_eq!(e.dns_lookup(&app, "db"), ip("10.9.0.9"));
        assert_eq!(e.dns_lookup(&app, "database"), ip("10.9.0.9"));
        assert_eq!(e.dns_lookup(&app, &db[..12]), ip("10.9.0.9"));
        assert_eq!(e.dns_lookup(&other, "db"), None, "n2 does not see n1");
        assert_eq!(e.dns_lookup(&app, "nope"), None);
        let inspect = e.network_inspect("n1").await.unwrap();
        assert_eq!(inspect.containers.len(), 2);
        assert_eq!(inspect.containers[&db].ipv4_address, "10.9.0.9/24");

        // Connect a running container: its next interface, then its names on n2.
        e.network_connect(
            "n2",
            NetworkConnectRequest {
                container: "app".into(),
                endpoint_config: Some(EndpointSettings {
                    aliases: Some(vec!["api".into()]),
                    ..Default::default()
                }),
            },
        )
        .await
        .unwrap();
        assert!(
            net_calls(&rt).iter().any(|c| c.contains(" eth1 172.17.0.")),
            "{:?}",
            net_calls(&rt)
        );
        assert!(e.dns_lookup(&other, "api").is_some());
        let err = e.network_remove("n2").await.unwrap_err();
        assert_eq!(err.status, http::StatusCode::FORBIDDEN);
        assert!(err.message.contains("active endpoints"), "{}", err.message);
        let err = e.network_remove("bridge").await.unwrap_err();
        assert_eq!(err.status, http::StatusCode::FORBIDDEN);
        e.network_disconnect(
            &n2,
            NetworkDisconnectRequest {
                container: app.clone(),
                force: false,
            },
        )
        .await
        .unwrap();
        let veth = net::user_veth(&app, &n2);
        assert!(net_calls(&rt).contains(&format!("detach {veth}")));
        assert_eq!(e.dns_lookup(&other, "api"), None);

        // Refused at create: an unknown network, --ip on an automatic subnet, aliases on bridge.
        for (v, status) in [
            (
                serde_json::json!({"HostConfig": {"NetworkMode": "nope"}}),
                404,
            ),
            (
                serde_json::json!({"HostConfig": {"NetworkMode": "n2"}, "NetworkingConfig":
                    {"EndpointsConfig": {"n2": {"IPAMConfig": {"IPv4Address": "172.18.0.99"}}}}}),
                400,
            ),
            (
                serde_json::json!({"HostConfig": {"NetworkMode": "bridge"}, "NetworkingConfig":
                    {"EndpointsConfig": {"bridge": {"Aliases": ["x"]}}}}),
                400,
            ),
        ] {
            let mut v = v;
            v["Image"] = "busybox".into();
            let err = e
                .container_create(None, serde_json::from_value(v).unwrap())
                .await
                .unwrap_err();
            assert_eq!(err.status.as_u16(), status, "{}", err.message);
        }

        // Another engine on the same root: the same networks and endpoints.
        drop(e);
        let e = engine_on(d.path(), &rt).await;
        let list = e.networks().await.unwrap();
        let names: Vec<&str> = list.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["bridge", "host", "none", "n1", "n2"]);
        assert_eq!(e.network_inspect("n1").await.unwrap().id, n1);
        assert_eq!(
            e.nets.store.of_container(&db)[0].1.ip,
            Ipv4Addr::new(10, 9, 0, 9),
            "db keeps its address"
        );
    }

    #[tokio::test]
    async fn aux_addresses_links_and_a_chosen_mac() {
        let d = tempfile::tempdir().unwrap();
        let rt = Arc::new(Fake::default());
        let e = engine_on(d.path(), &rt).await;
        let aux: BTreeMap<String, String> = [("a".to_string(), "10.8.0.2".to_string())].into();
        e.network_create(NetworkCreateRequest {
            name: "n".into(),
            ipam: Some(Ipam {
                config: Some(vec![IpamConfig {
                    subnet: "10.8.0.0/24".into(),
                    auxiliary_addresses: Some(aux.clone()),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
        let ipam = e.network_inspect("n").await.unwrap().ipam;
        assert_eq!(ipam.options, None, "no IPAM options: null, as dockerd");
        assert_eq!(ipam.config.unwrap()[0].auxiliary_addresses, Some(aux));
        let up = run_on(
            &e,
            "upstream",
            serde_json::json!({"HostConfig": {"NetworkMode": "n"}}),
        )
        .await;
        assert_eq!(
            e.nets.store.of_container(&up)[0].1.ip,
            Ipv4Addr::new(10, 8, 0, 3),
            "the auxiliary address is skipped"
        );
        let req: ContainerCreateRequest =
            // As the CLI sends a plain `docker create`: the network named `default`.
            serde_json::from_value(serde_json::json!({"Image": "busybox",
                "HostConfig": {"NetworkMode": "default"},
                "NetworkingConfig": {"EndpointsConfig": {"default": {}}}}))
            .unwrap();
        let c = e
            .container_create(Some("cli".into()), req)
            .await
            .unwrap()
            .id;
        e.network_connect(
            "n",
            NetworkConnectRequest {
                container: c.clone(),
                endpoint_config: Some(EndpointSettings {
                    links: Some(vec!["upstream:bar".into()]),
                    mac_address: "02:42:AC:11:00:02".into(),
                    ..Default::default()
                }),
            },
        )
        .await
        .unwrap();
        let req: ContainerCreateRequest = serde_json::from_value(serde_json::json!({
            "Image": "busybox", "HostConfig": {"NetworkMode": "bridge"},
            "NetworkingConfig": {"EndpointsConfig": {"bridge": {"DriverOpts": {"k": "v"}}}}}))
        .unwrap();
        let b = e.container_create(None, req).await.unwrap().id;
        assert_eq!(
            e.nets.store.bridge_driver_opts(&b),
            Some([("k".to_string(), "v".to_string())].into())
        );
        let ins = e.container_inspect("cli").await.unwrap();
        let ep = &ins.network_settings.networks["n"];
        assert_eq!(
            ep.mac_address, "02:42:ac:11:00:02",
            "shown before the start"
        );
        assert_eq!(ep.links, Some(vec!["upstream:bar".to_string()]));
        assert_eq!(ep.ip_address, "", "no address before the start");
        e.container_start(&c).await.unwrap();
        assert_eq!(
            e.dns_lookup(&c, "bar"),
            Some(vec![Ipv4Addr::new(10, 8, 0, 3)])
        );
        assert_eq!(
            e.dns_lookup(&up, "bar"),
            None,
            "a link is the linking container's own"
        );
    }
}
