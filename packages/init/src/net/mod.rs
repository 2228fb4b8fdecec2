//! Networking: loopback, the first ethernet NIC, DHCPv4 or a static address, DNS.
//!
//! - The NIC is the first (by name) entry of `/sys/class/net` with `type` 1 (ethernet) and a
//!   `device` link (a real device: virtio-net, vmxnet3, e1000...), so bridges and veths that
//!   the container engine creates later are never picked.
//! - IPv6: the kernel configures a link-local address itself when the link comes up
//!   (SLAAC addresses too, if a router advertises). init does nothing more for IPv6.
//! - DNS servers go to `/run/resolv.conf`; the image's `/etc/resolv.conf` is a symlink to it
//!   (overlays/base), because the root filesystem may be read-only. When `/etc/resolv.conf`
//!   does not exist and the root is writable, init creates that symlink.
//! - Addresses and the default route are set with the classic ioctls (SIOCSIFADDR,
//!   SIOCSIFNETMASK, SIOCADDRT): enough for one IPv4 address per NIC, no netlink code.

pub mod client;
pub mod dhcp;

use std::fs;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::time::Instant;

use crate::settings::{Network as NetSettings, StaticIp};
use crate::sys;
use client::{Action, Client, Dest, Lease};
use dhcp::Message;

pub const RESOLV_CONF: &str = "/run/resolv.conf";

/// Picks the first ethernet NIC from a `/sys/class/net`-like directory.
pub fn find_nic(class_net: &Path) -> Option<String> {
    let mut names: Vec<String> = fs::read_dir(class_net)
        .ok()?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names.into_iter().find(|n| {
        let dir = class_net.join(n);
        fs::read_to_string(dir.join("type")).is_ok_and(|t| t.trim() == "1")
            && dir.join("device").exists()
    })
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.trim().split(':');
    for b in mac.iter_mut() {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// The text of resolv.conf for these servers.
pub fn resolv_conf(dns: &[Ipv4Addr], domain: Option<&str>) -> String {
    let mut s = String::from("# written by axion init\n");
    if let Some(d) = domain.filter(|d| !d.is_empty()) {
        s.push_str(&format!("search {d}\n"));
    }
    for d in dns.iter().take(3) {
        s.push_str(&format!("nameserver {d}\n"));
    }
    s
}

fn write_resolv(dns: &[Ipv4Addr], domain: Option<&str>) {
    let tmp = format!("{RESOLV_CONF}.new");
    let res =
        fs::write(&tmp, resolv_conf(dns, domain)).and_then(|()| fs::rename(&tmp, RESOLV_CONF));
    if let Err(e) = res {
        crate::error!("write {RESOLV_CONF}: {e}");
    }
    if fs::symlink_metadata("/etc/resolv.conf").is_err() {
        let _ = std::os::unix::fs::symlink("../run/resolv.conf", "/etc/resolv.conf");
    }
}

// ---- ioctl plumbing --------------------------------------------------------------------

#[repr(C)]
struct IfReqFlags {
    name: [u8; 16],
    flags: libc::c_short,
    _pad: [u8; 22],
}

#[repr(C)]
struct IfReqAddr {
    name: [u8; 16],
    addr: libc::sockaddr_in,
    _pad: [u8; 8],
}

#[repr(C)]
struct RtEntry {
    rt_pad1: libc::c_ulong,
    rt_dst: libc::sockaddr_in,
    rt_gateway: libc::sockaddr_in,
    rt_genmask: libc::sockaddr_in,
    rt_flags: libc::c_ushort,
    rt_pad2: libc::c_short,
    rt_pad3: libc::c_ulong,
    rt_tos: libc::c_uchar,
    rt_class: libc::c_uchar,
    rt_pad4: [libc::c_short; 3],
    rt_metric: libc::c_short,
    rt_dev: *mut libc::c_char,
    rt_mtu: libc::c_ulong,
    rt_window: libc::c_ulong,
    rt_irtt: libc::c_ushort,
}

fn ifname(name: &str) -> io::Result<[u8; 16]> {
    let mut b = [0u8; 16];
    if name.len() >= 16 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("interface name {name:?} too long"),
        ));
    }
    b[..name.len()].copy_from_slice(name.as_bytes());
    Ok(b)
}

fn sin(a: Ipv4Addr) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(a.octets()),
        },
        sin_zero: [0; 8],
    }
}

fn ctl_socket() -> io::Result<OwnedFd> {
    sys::socket(libc::AF_INET, libc::SOCK_DGRAM, 0)
}

/// Sets IFF_UP on an interface.
pub fn link_up(name: &str) -> io::Result<()> {
    let s = ctl_socket()?;
    let mut req = IfReqFlags {
        name: ifname(name)?,
        flags: 0,
        _pad: [0; 22],
    };
    // SAFETY: req is an ifreq-shaped struct (name + flags) as SIOC[GS]IFFLAGS expect.
    unsafe {
        sys::ioctl_ptr(s.as_raw_fd(), libc::SIOCGIFFLAGS as libc::c_ulong, &mut req)?;
        req.flags |= libc::IFF_UP as libc::c_short;
        sys::ioctl_ptr(s.as_raw_fd(), libc::SIOCSIFFLAGS as libc::c_ulong, &mut req)?;
    }
    Ok(())
}

fn set_addr(name: &str, req_code: libc::c_ulong, a: Ipv4Addr) -> io::Result<()> {
    let s = ctl_socket()?;
    let mut req = IfReqAddr {
        name: ifname(name)?,
        addr: sin(a),
        _pad: [0; 8],
    };
    // SAFETY: req is an ifreq-shaped struct (name + sockaddr) as the address ioctls expect.
    unsafe { sys::ioctl_ptr(s.as_raw_fd(), req_code, &mut req) }?;
    Ok(())
}

fn mask(prefix: u8) -> Ipv4Addr {
    Ipv4Addr::from(if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix as u32)
    })
}

/// Sets the interface's IPv4 address, netmask, broadcast and (optionally) default route.
pub fn configure(
    name: &str,
    addr: Ipv4Addr,
    prefix: u8,
    gateway: Option<Ipv4Addr>,
) -> io::Result<()> {
    set_addr(name, libc::SIOCSIFADDR as libc::c_ulong, addr)?;
    set_addr(name, libc::SIOCSIFNETMASK as libc::c_ulong, mask(prefix))?;
    let bcast = Ipv4Addr::from(u32::from(addr) | !u32::from(mask(prefix)));
    set_addr(name, libc::SIOCSIFBRDADDR as libc::c_ulong, bcast)?;
    if let Some(gw) = gateway {
        let s = ctl_socket()?;
        let mut dev = ifname(name)?;
        let mut rt = RtEntry {
            rt_pad1: 0,
            rt_dst: sin(Ipv4Addr::UNSPECIFIED),
            rt_gateway: sin(gw),
            rt_genmask: sin(Ipv4Addr::UNSPECIFIED),
            rt_flags: (libc::RTF_UP | libc::RTF_GATEWAY) as libc::c_ushort,
            rt_pad2: 0,
            rt_pad3: 0,
            rt_tos: 0,
            rt_class: 0,
            rt_pad4: [0; 3],
            rt_metric: 0,
            rt_dev: dev.as_mut_ptr().cast(),
            rt_mtu: 0,
            rt_window: 0,
            rt_irtt: 0,
        };
        // SAFETY: rt matches struct rtentry on 64-bit Linux; rt_dev points to a NUL-terminated
        // name that outlives the call.
        match unsafe { sys::ioctl_ptr(s.as_raw_fd(), libc::SIOCADDRT as libc::c_ulong, &mut rt) } {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("default route via {gw}: {e}"),
                ))
            }
        }
    }
    Ok(())
}

/// Removes the interface's IPv4 address (and with it the routes through it).
pub fn deconfigure(name: &str) -> io::Result<()> {
    set_addr(
        name,
        libc::SIOCSIFADDR as libc::c_ulong,
        Ipv4Addr::UNSPECIFIED,
    )
}

// ---- the network as init runs it -------------------------------------------------------

pub struct Nic {
    pub name: String,
    ifindex: u32,
}

/// Loopback + NIC + DHCP client, with the socket the event loop watches.
pub struct Network {
    pub nic: Option<Nic>,
    pub dhcp: Option<Client>,
    sock: Option<(OwnedFd, bool)>, // (fd, is it the packet socket?)
    /// The kernel has no AF_PACKET (CONFIG_PACKET): discovery goes over UDP instead.
    no_packet: bool,
    /// Set once the static address is configured or DHCP got its first lease.
    pub configured: bool,
}

fn raw_socket(ifindex: u32) -> io::Result<OwnedFd> {
    let proto = (libc::ETH_P_IP as u16).to_be();
    let s = sys::socket(
        libc::AF_PACKET,
        libc::SOCK_DGRAM | libc::SOCK_NONBLOCK,
        proto as i32,
    )?;
    // SAFETY: an all-zero sockaddr_ll is valid; we set the fields bind needs.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto;
    sll.sll_ifindex = ifindex as i32;
    // SAFETY: sll is a valid sockaddr_ll of the size given.
    let r = unsafe {
        libc::bind(
            s.as_raw_fd(),
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(s)
}

fn udp_socket(ifname: &str) -> io::Result<OwnedFd> {
    let s = sys::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_NONBLOCK, 0)?;
    let fd = s.as_raw_fd();
    sys::setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    sys::setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_BROADCAST, 1)?;
    sys::setsockopt_bytes(
        fd,
        libc::SOL_SOCKET,
        libc::SO_BINDTODEVICE,
        ifname.as_bytes(),
    )?;
    let addr = libc::sockaddr_in {
        sin_port: dhcp::CLIENT_PORT.to_be(),
        ..sin(Ipv4Addr::UNSPECIFIED)
    };
    // SAFETY: addr is a valid sockaddr_in of the size given.
    let r = unsafe {
        libc::bind(
            fd,
            (&addr as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as u32,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(s)
}

impl Network {
    /// Brings up loopback and the NIC, then configures it statically or starts DHCP.
    pub fn start(settings: &NetSettings, hostname: &str, now: Instant) -> Network {
        if let Err(e) = link_up("lo") {
            crate::error!("bring up lo: {e}");
        }
        let mut net = Network {
            nic: None,
            dhcp: None,
            sock: None,
            no_packet: false,
            configured: false,
        };
        let Some(name) = find_nic(Path::new("/sys/class/net")) else {
            crate::warn!("no ethernet NIC found in /sys/class/net; networking is loopback only");
            return net;
        };
        let mac = fs::read_to_string(format!("/sys/class/net/{name}/address"))
            .ok()
            .and_then(|s| parse_mac(&s))
            .unwrap_or([0; 6]);
        let ifindex = match sys::if_nametoindex(&name) {
            Ok(i) => i,
            Err(e) => {
                crate::error!("interface {name}: {e}");
                return net;
            }
        };
        if let Err(e) = link_up(&name) {
            crate::error!("bring up {name}: {e}");
        }
        net.nic = Some(Nic {
            name: name.clone(),
            ifindex,
        });
        match settings {
            NetSettings::Static(StaticIp {
                addr,
                prefix,
                gateway,
                dns,
            }) => {
                match configure(&name, *addr, *prefix, *gateway) {
                    Ok(()) => crate::info!(
                        "{name}: static address {addr}/{prefix}{}",
                        gateway
                            .map(|g| format!(", gateway {g}"))
                            .unwrap_or_default()
                    ),
                    Err(e) => crate::error!("{name}: static address {addr}/{prefix}: {e}"),
                }
                write_resolv(dns, None);
                net.configured = true;
            }
            NetSettings::Dhcp => {
                let mut seed = [0u8; 4];
                let _ = sys::getrandom(&mut seed);
                let mut c = Client::new(
                    mac,
                    Some(hostname.to_string()),
                    u32::from_ne_bytes(seed),
                    now,
                );
                let acts = c.start(now);
                net.dhcp = Some(c);
                crate::debug!("{name}: DHCP discovery started");
                net.run(acts);
            }
        }
        net
    }

    /// The socket to watch right now (it changes between raw and UDP as the lease comes and
    /// goes), or None.
    pub fn fd(&self) -> Option<RawFd> {
        self.sock.as_ref().map(|(s, _)| s.as_raw_fd())
    }

    pub fn deadline(&self) -> Option<Instant> {
        self.dhcp.as_ref().map(|c| c.deadline())
    }

    pub fn on_timer(&mut self, now: Instant) {
        let acts = match &mut self.dhcp {
            Some(c) if now >= c.deadline() => c.on_timer(now),
            _ => return,
        };
        self.run(acts);
    }

    /// Reads what arrived on the socket.
    pub fn on_readable(&mut self, now: Instant) {
        let mut buf = [0u8; 1600];
        for _ in 0..64 {
            let Some((sock, raw)) = &self.sock else {
                return;
            };
            let n = match sys::read_nb(sock.as_raw_fd(), &mut buf) {
                Ok(Some(n)) => n,
                Ok(None) => return,
                Err(e) => {
                    crate::warn!("DHCP socket: {e}");
                    return;
                }
            };
            let payload = if *raw {
                match dhcp::ip_udp_payload(&buf[..n], dhcp::CLIENT_PORT) {
                    Some(p) => p,
                    None => continue,
                }
            } else {
                &buf[..n]
            };
            let msg = match Message::decode(payload) {
                Ok(m) => m,
                Err(e) => {
                    crate::debug!("ignoring DHCP packet: {e}");
                    continue;
                }
            };
            let acts = match &mut self.dhcp {
                Some(c) => c.on_message(&msg, now),
                None => return,
            };
            self.run(acts);
        }
    }

    fn ensure_socket(&mut self, raw: bool) {
        let raw = raw && !self.no_packet;
        if matches!(&self.sock, Some((_, r)) if *r == raw) {
            return;
        }
        self.sock = None;
        let Some(nic) = &self.nic else { return };
        if raw {
            match raw_socket(nic.ifindex) {
                Ok(s) => {
                    self.sock = Some((s, true));
                    return;
                }
                Err(e) => {
                    // Without CONFIG_PACKET: a UDP socket bound to the device can still send
                    // from 0.0.0.0 to 255.255.255.255 and receive broadcast replies.
                    crate::warn!(
                        "{}: DHCP packet socket: {e}; using a UDP socket for discovery",
                        nic.name
                    );
                    self.no_packet = true;
                }
            }
        }
        match udp_socket(&nic.name) {
            Ok(s) => self.sock = Some((s, false)),
            Err(e) => crate::error!("{}: DHCP UDP socket: {e}", nic.name),
        }
    }

    fn send(&mut self, dest: &Dest, m: &Message) {
        self.ensure_socket(matches!(dest, Dest::RawBroadcast));
        let (Some((sock, raw)), Some(nic)) = (&self.sock, &self.nic) else {
            return;
        };
        let raw = *raw;
        let payload = m.encode();
        let fd = sock.as_raw_fd();
        let r = if raw {
            let pkt = dhcp::ip_udp_wrap(
                Ipv4Addr::UNSPECIFIED,
                Ipv4Addr::BROADCAST,
                dhcp::CLIENT_PORT,
                dhcp::SERVER_PORT,
                &payload,
            );
            // SAFETY: an all-zero sockaddr_ll is valid; we fill in the destination.
            let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = (libc::ETH_P_IP as u16).to_be();
            sll.sll_ifindex = nic.ifindex as i32;
            sll.sll_halen = 6;
            sll.sll_addr[..6].copy_from_slice(&[0xff; 6]);
            // SAFETY: pkt and sll are valid for the sizes given.
            unsafe {
                libc::sendto(
                    fd,
                    pkt.as_ptr().cast(),
                    pkt.len(),
                    0,
                    (&sll as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                )
            }
        } else {
            let to = match dest {
                Dest::Unicast(a) => *a,
                _ => Ipv4Addr::BROADCAST,
            };
            let sa = libc::sockaddr_in {
                sin_port: dhcp::SERVER_PORT.to_be(),
                ..sin(to)
            };
            // SAFETY: payload and sa are valid for the sizes given.
            unsafe {
                libc::sendto(
                    fd,
                    payload.as_ptr().cast(),
                    payload.len(),
                    0,
                    (&sa as *const libc::sockaddr_in).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as u32,
                )
            }
        };
        if r < 0 {
            crate::debug!("{}: DHCP send: {}", nic.name, io::Error::last_os_error());
        }
    }

    fn run(&mut self, acts: Vec<Action>) {
        for a in acts {
            match a {
                Action::Send(dest, m) => self.send(&dest, &m),
                Action::Configure(lease) => self.apply(&lease),
                Action::Deconfigure(addr) => {
                    if let Some(nic) = &self.nic {
                        crate::warn!("{}: DHCP lease for {addr} lost; address removed", nic.name);
                        if let Err(e) = deconfigure(&nic.name) {
                            crate::error!("{}: remove {addr}: {e}", nic.name);
                        }
                    }
                }
            }
        }
        // Raw socket only while we have no address: afterwards it would see every packet.
        if let Some(c) = &self.dhcp {
            self.ensure_socket(c.needs_raw());
        }
    }

    fn apply(&mut self, lease: &Lease) {
        let Some(nic) = &self.nic else { return };
        match configure(&nic.name, lease.addr, lease.prefix, lease.router) {
            Ok(()) => {
                if !self.configured {
                    crate::info!(
                        "{}: DHCP lease {}/{} from {}{}, {} s",
                        nic.name,
                        lease.addr,
                        lease.prefix,
                        lease.server,
                        lease
                            .router
                            .map(|r| format!(", gateway {r}"))
                            .unwrap_or_default(),
                        lease.lease_time.as_secs()
                    );
                } else {
                    crate::debug!("{}: DHCP lease {} renewed", nic.name, lease.addr);
                }
                self.configured = true;
            }
            Err(e) => crate::error!(
                "{}: configure {}/{}: {e}",
                nic.name,
                lease.addr,
                lease.prefix
            ),
        }
        write_resolv(&lease.dns, lease.domain.as_deref());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_first_real_ethernet_nic() {
        let d = std::env::temp_dir().join(format!("axion-net-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        for (name, ty, dev) in [
            ("lo", "772", false),
            ("br0", "1", false),
            ("eth1", "1", true),
            ("eth0", "1", true),
            ("sit0", "776", true),
        ] {
            fs::create_dir_all(d.join(name)).unwrap();
            fs::write(d.join(name).join("type"), format!("{ty}\n")).unwrap();
            if dev {
                fs::create_dir_all(d.join(name).join("device")).unwrap();
            }
        }
        assert_eq!(find_nic(&d), Some("eth0".into()));
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn macs_masks_and_resolv_conf() {
        assert_eq!(
            parse_mac("52:54:00:12:34:56\n"),
            Some([0x52, 0x54, 0, 0x12, 0x34, 0x56])
        );
        assert_eq!(parse_mac("52:54:00:12:34"), None);
        assert_eq!(parse_mac("52:54:00:12:34:56:78"), None);
        assert_eq!(mask(24), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(mask(0), Ipv4Addr::UNSPECIFIED);
        assert_eq!(mask(32), Ipv4Addr::BROADCAST);
        assert_eq!(
            resolv_conf(&[Ipv4Addr::new(10, 0, 2, 3)], Some("lan")),
            "# written by axion init\nsearch lan\nnameserver 10.0.2.3\n"
        );
    }

    #[test]
    fn rtentry_has_the_kernel_layout() {
        // struct rtentry is 120 bytes on x86_64 (rt_dev at 80).
        assert_eq!(std::mem::size_of::<RtEntry>(), 120);
        assert_eq!(std::mem::size_of::<IfReqAddr>(), 40);
        assert_eq!(std::mem::size_of::<IfReqFlags>(), 40);
    }
}
