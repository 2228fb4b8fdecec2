//! DHCPv4 messages (RFC 2131, options RFC 2132) and the IPv4/UDP framing used before the
//! interface has an address.

use std::net::Ipv4Addr;
use std::time::Duration;

pub const SERVER_PORT: u16 = 67;
pub const CLIENT_PORT: u16 = 68;
const MAGIC: [u8; 4] = [99, 130, 83, 99];
const FIXED_LEN: usize = 236;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Discover = 1,
    Offer = 2,
    Request = 3,
    Decline = 4,
    Ack = 5,
    Nak = 6,
    Release = 7,
    Inform = 8,
}

impl Kind {
    fn from_u8(v: u8) -> Option<Kind> {
        Some(match v {
            1 => Kind::Discover,
            2 => Kind::Offer,
            3 => Kind::Request,
            4 => Kind::Decline,
            5 => Kind::Ack,
            6 => Kind::Nak,
            7 => Kind::Release,
            8 => Kind::Inform,
            _ => return None,
        })
    }
}

mod opt {
    pub const PAD: u8 = 0;
    pub const SUBNET_MASK: u8 = 1;
    pub const ROUTER: u8 = 3;
    pub const DNS: u8 = 6;
    pub const HOSTNAME: u8 = 12;
    pub const DOMAIN_NAME: u8 = 15;
    pub const REQUESTED_IP: u8 = 50;
    pub const LEASE_TIME: u8 = 51;
    pub const MESSAGE_TYPE: u8 = 53;
    pub const SERVER_ID: u8 = 54;
    pub const PARAM_LIST: u8 = 55;
    pub const RENEWAL_TIME: u8 = 58;
    pub const REBINDING_TIME: u8 = 59;
    pub const CLIENT_ID: u8 = 61;
    pub const END: u8 = 255;
}

/// The fields of a DHCP message that this client reads or writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub op: u8,
    pub kind: Kind,
    pub xid: u32,
    pub secs: u16,
    pub broadcast: bool,
    pub ciaddr: Ipv4Addr,
    pub yiaddr: Ipv4Addr,
    pub siaddr: Ipv4Addr,
    pub chaddr: [u8; 6],
    pub requested_ip: Option<Ipv4Addr>,
    pub server_id: Option<Ipv4Addr>,
    pub lease_time: Option<Duration>,
    pub renewal_time: Option<Duration>,
    pub rebinding_time: Option<Duration>,
    pub subnet_mask: Option<Ipv4Addr>,
    pub routers: Vec<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub domain_name: Option<String>,
    pub hostname: Option<String>,
    pub client_id: Option<Vec<u8>>,
    pub param_list: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    TooShort(usize),
    NotEthernet,
    BadMagic,
    Truncated(u8),
    NoMessageType,
    UnknownMessageType(u8),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::TooShort(n) => write!(f, "DHCP message too short ({n} bytes)"),
            DecodeError::NotEthernet => write!(f, "DHCP message not for ethernet"),
            DecodeError::BadMagic => write!(f, "DHCP magic cookie missing"),
            DecodeError::Truncated(o) => write!(f, "DHCP option {o} truncated"),
            DecodeError::NoMessageType => write!(f, "DHCP message type option missing"),
            DecodeError::UnknownMessageType(t) => write!(f, "unknown DHCP message type {t}"),
        }
    }
}

impl Message {
    /// A client message with the usual fields set.
    pub fn client(kind: Kind, xid: u32, mac: [u8; 6]) -> Message {
        Message {
            op: 1,
            kind,
            xid,
            secs: 0,
            broadcast: false,
            ciaddr: Ipv4Addr::UNSPECIFIED,
            yiaddr: Ipv4Addr::UNSPECIFIED,
            siaddr: Ipv4Addr::UNSPECIFIED,
            chaddr: mac,
            requested_ip: None,
            server_id: None,
            lease_time: None,
            renewal_time: None,
            rebinding_time: None,
            subnet_mask: None,
            routers: Vec::new(),
            dns: Vec::new(),
            domain_name: None,
            hostname: None,
            client_id: None,
            param_list: Vec::new(),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; FIXED_LEN];
        b[0] = self.op;
        b[1] = 1; // htype ethernet
        b[2] = 6; // hlen
        b[4..8].copy_from_slice(&self.xid.to_be_bytes());
        b[8..10].copy_from_slice(&self.secs.to_be_bytes());
        if self.broadcast {
            b[10] = 0x80;
        }
        b[12..16].copy_from_slice(&self.ciaddr.octets());
        b[16..20].copy_from_slice(&self.yiaddr.octets());
        b[20..24].copy_from_slice(&self.siaddr.octets());
        b[28..34].copy_from_slice(&self.chaddr);
        b.extend_from_slice(&MAGIC);
        let mut put = |code: u8, data: &[u8]| {
            // Options longer than 255 bytes are split (RFC 3396); ours never are.
            for chunk in data.chunks(255) {
                b.push(code);
                b.push(chunk.len() as u8);
                b.extend_from_slice(chunk);
            }
        };
        put(opt::MESSAGE_TYPE, &[self.kind as u8]);
        if let Some(id) = &self.client_id {
            put(opt::CLIENT_ID, id);
        }
        if let Some(ip) = self.requested_ip {
            put(opt::REQUESTED_IP, &ip.octets());
        }
        if let Some(ip) = self.server_id {
            put(opt::SERVER_ID, &ip.octets());
        }
        for (code, d) in [
            (opt::LEASE_TIME, self.lease_time),
            (opt::RENEWAL_TIME, self.renewal_time),
            (opt::REBINDING_TIME, self.rebinding_time),
        ] {
            if let Some(d) = d {
                put(
                    code,
                    &(d.as_secs().min(u32::MAX as u64) as u32).to_be_bytes(),
                );
            }
        }
        if let Some(m) = self.subnet_mask {
            put(opt::SUBNET_MASK, &m.octets());
        }
        for (code, list) in [(opt::ROUTER, &self.routers), (opt::DNS, &self.dns)] {
            if !list.is_empty() {
                let v: Vec<u8> = list.iter().flat_map(|a| a.octets()).collect();
                put(code, &v);
            }
        }
        if let Some(h) = &self.hostname {
            put(opt::HOSTNAME, h.as_bytes());
        }
        if let Some(d) = &self.domain_name {
            put(opt::DOMAIN_NAME, d.as_bytes());
        }
        if !self.param_list.is_empty() {
            put(opt::PARAM_LIST, &self.param_list);
        }
        b.push(opt::END);
        // Some servers and relays drop BOOTP messages shorter than 300 bytes.
        if b.len() < 300 {
            b.resize(300, opt::PAD);
        }
        b
    }

    pub fn decode(b: &[u8]) -> Result<Message, DecodeError> {
        if b.len() < FIXED_LEN + 4 {
            return Err(DecodeError::TooShort(b.len()));
        }
        if b[1] != 1 || b[2] != 6 {
            return Err(DecodeError::NotEthernet);
        }
        if b[FIXED_LEN..FIXED_LEN + 4] != MAGIC {
            return Err(DecodeError::BadMagic);
        }
        let ip = |o: usize| Ipv4Addr::new(b[o], b[o + 1], b[o + 2], b[o + 3]);
        let mut chaddr = [0u8; 6];
        chaddr.copy_from_slice(&b[28..34]);
        let mut m = Message::client(
            Kind::Discover,
            u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
            chaddr,
        );
        m.op = b[0];
        m.secs = u16::from_be_bytes([b[8], b[9]]);
        m.broadcast = b[10] & 0x80 != 0;
        m.ciaddr = ip(12);
        m.yiaddr = ip(16);
        m.siaddr = ip(20);
        let mut kind = None;
        let mut i = FIXED_LEN + 4;
        while i < b.len() {
            let code = b[i];
            if code == opt::PAD {
                i += 1;
                continue;
            }
            if code == opt::END {
                break;
            }
            let len = *b.get(i + 1).ok_or(DecodeError::Truncated(code))? as usize;
            let data = b
                .get(i + 2..i + 2 + len)
                .ok_or(DecodeError::Truncated(code))?;
            i += 2 + len;
            let addr = |d: &[u8]| (d.len() >= 4).then(|| Ipv4Addr::new(d[0], d[1], d[2], d[3]));
            let addrs = |d: &[u8]| {
                d.chunks_exact(4)
                    .map(|c| Ipv4Addr::new(c[0], c[1], c[2], c[3]))
                    .collect::<Vec<_>>()
            };
            let secs = |d: &[u8]| {
                (d.len() >= 4).then(|| {
                    Duration::from_secs(u32::from_be_bytes([d[0], d[1], d[2], d[3]]) as u64)
                })
            };
            let text = |d: &[u8]| {
                String::from_utf8_lossy(d)
                    .trim_end_matches('\0')
                    .to_string()
            };
            match code {
                opt::MESSAGE_TYPE => {
                    let t = *data.first().ok_or(DecodeError::Truncated(code))?;
                    kind = Some(Kind::from_u8(t).ok_or(DecodeError::UnknownMessageType(t))?);
                }
                opt::SUBNET_MASK => m.subnet_mask = addr(data),
                opt::ROUTER => m.routers = addrs(data),
                opt::DNS => m.dns = addrs(data),
                opt::HOSTNAME => m.hostname = Some(text(data)),
                opt::DOMAIN_NAME => m.domain_name = Some(text(data)),
                opt::REQUESTED_IP => m.requested_ip = addr(data),
                opt::LEASE_TIME => m.lease_time = secs(data),
                opt::SERVER_ID => m.server_id = addr(data),
                opt::PARAM_LIST => m.param_list = data.to_vec(),
                opt::RENEWAL_TIME => m.renewal_time = secs(data),
                opt::REBINDING_TIME => m.rebinding_time = secs(data),
                opt::CLIENT_ID => m.client_id = Some(data.to_vec()),
                _ => {}
            }
        }
        m.kind = kind.ok_or(DecodeError::NoMessageType)?;
        Ok(m)
    }
}

/// The options this client asks for.
pub const PARAMS: &[u8] = &[
    opt::SUBNET_MASK,
    opt::ROUTER,
    opt::DNS,
    opt::DOMAIN_NAME,
    opt::LEASE_TIME,
    opt::RENEWAL_TIME,
    opt::REBINDING_TIME,
];

fn checksum(data: &[u8], initial: u32) -> u16 {
    let mut sum = initial;
    for c in data.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from_be_bytes([c[0], 0])
        };
        sum += w as u32;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Wraps a UDP payload in IPv4 + UDP headers (for an AF_PACKET/SOCK_DGRAM socket).
pub fn ip_udp_wrap(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    let udp_len = 8 + payload.len();
    let total = 20 + udp_len;
    let mut p = Vec::with_capacity(total);
    p.extend_from_slice(&[0x45, 0x10]); // version 4, IHL 5; TOS low delay
    p.extend_from_slice(&(total as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, 0]); // id, flags/fragment
    p.extend_from_slice(&[64, 17, 0, 0]); // TTL, UDP, checksum (below)
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    let c = checksum(&p[..20], 0);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p.extend_from_slice(&sport.to_be_bytes());
    p.extend_from_slice(&dport.to_be_bytes());
    p.extend_from_slice(&(udp_len as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(payload);
    // UDP checksum over the pseudo header.
    let mut pseudo = 0u32;
    for w in src.octets().chunks(2).chain(dst.octets().chunks(2)) {
        pseudo += u16::from_be_bytes([w[0], w[1]]) as u32;
    }
    pseudo += 17 + udp_len as u32;
    let mut uc = checksum(&p[20..], pseudo);
    if uc == 0 {
        uc = 0xffff;
    }
    p[26..28].copy_from_slice(&uc.to_be_bytes());
    p
}

/// The UDP payload of an IPv4 packet sent to `dport`, if that is what it is.
pub fn ip_udp_payload(p: &[u8], dport: u16) -> Option<&[u8]> {
    if p.len() < 20 || p[0] >> 4 != 4 || p[9] != 17 {
        return None;
    }
    let ihl = ((p[0] & 0x0f) as usize) * 4;
    let total = (u16::from_be_bytes([p[2], p[3]]) as usize).min(p.len());
    if ihl < 20 || total < ihl + 8 {
        return None;
    }
    // Fragments are not DHCP replies we can use.
    if u16::from_be_bytes([p[6], p[7]]) & 0x3fff != 0 {
        return None;
    }
    let udp = &p[ihl..total];
    if u16::from_be_bytes([udp[2], udp[3]]) != dport {
        return None;
    }
    let ulen = (u16::from_be_bytes([udp[4], udp[5]]) as usize).clamp(8, udp.len());
    Some(&udp[8..ulen])
}

pub fn prefix_from_mask(mask: Ipv4Addr) -> u8 {
    u32::from(mask).leading_ones() as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

    /// An OFFER as QEMU's user network (slirp) sends it, byte for byte from its bootp.c
    /// layout: yiaddr 10.0.2.15, server 10.0.2.2, mask /24, router 10.0.2.2, DNS 10.0.2.3,
    /// lease 86400 s.
    fn slirp_offer() -> Vec<u8> {
        let mut b = vec![0u8; 236];
        b[0] = 2;
        b[1] = 1;
        b[2] = 6;
        b[4..8].copy_from_slice(&0xdead_beefu32.to_be_bytes());
        b[16..20].copy_from_slice(&[10, 0, 2, 15]);
        b[20..24].copy_from_slice(&[10, 0, 2, 2]);
        b[28..34].copy_from_slice(&MAC);
        b.extend_from_slice(&[99, 130, 83, 99]);
        b.extend_from_slice(&[53, 1, 2]);
        b.extend_from_slice(&[54, 4, 10, 0, 2, 2]);
        b.extend_from_slice(&[1, 4, 255, 255, 255, 0]);
        b.extend_from_slice(&[3, 4, 10, 0, 2, 2]);
        b.extend_from_slice(&[6, 4, 10, 0, 2, 3]);
        b.extend_from_slice(&[51, 4, 0, 1, 0x51, 0x80]);
        b.push(255);
        b.resize(548, 0);
        b
    }

    #[test]
    fn decodes_a_slirp_offer() {
        let m = Message::decode(&slirp_offer()).unwrap();
        assert_eq!(m.kind, Kind::Offer);
        assert_eq!(m.op, 2);
        assert_eq!(m.xid, 0xdeadbeef);
        assert_eq!(m.yiaddr, Ipv4Addr::new(10, 0, 2, 15));
        assert_eq!(m.chaddr, MAC);
        assert_eq!(m.server_id, Some(Ipv4Addr::new(10, 0, 2, 2)));
        assert_eq!(m.subnet_mask, Some(Ipv4Addr::new(255, 255, 255, 0)));
        assert_eq!(m.routers, vec![Ipv4Addr::new(10, 0, 2, 2)]);
        assert_eq!(m.dns, vec![Ipv4Addr::new(10, 0, 2, 3)]);
        assert_eq!(m.lease_time, Some(Duration::from_secs(86400)));
        assert_eq!(prefix_from_mask(m.subnet_mask.unwrap()), 24);
    }

    #[test]
    fn encodes_a_discover_byte_for_byte() {
        let mut m = Message::client(Kind::Discover, 0x01020304, MAC);
        m.client_id = Some(vec![1, 0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);
        m.param_list = vec![1, 3, 6];
        m.broadcast = true;
        let b = m.encode();
        assert_eq!(b.len(), 300);
        assert_eq!(&b[0..4], &[1, 1, 6, 0]);
        assert_eq!(&b[4..8], &[1, 2, 3, 4]);
        assert_eq!(&b[10..12], &[0x80, 0]);
        assert_eq!(&b[28..34], &MAC);
        assert!(b[34..236].iter().all(|&x| x == 0));
        assert_eq!(
            &b[236..260],
            &[
                99, 130, 83, 99, 53, 1, 1, 61, 7, 1, 0x52, 0x54, 0, 0x12, 0x34, 0x56, 55, 3, 1, 3,
                6, 255, 0, 0
            ]
        );
    }

    #[test]
    fn round_trips_every_field() {
        let mut m = Message::client(Kind::Ack, 7, MAC);
        m.op = 2;
        m.ciaddr = Ipv4Addr::new(1, 2, 3, 4);
        m.yiaddr = Ipv4Addr::new(5, 6, 7, 8);
        m.requested_ip = Some(Ipv4Addr::new(9, 9, 9, 9));
        m.server_id = Some(Ipv4Addr::new(8, 8, 8, 8));
        m.lease_time = Some(Duration::from_secs(600));
        m.renewal_time = Some(Duration::from_secs(300));
        m.rebinding_time = Some(Duration::from_secs(525));
        m.subnet_mask = Some(Ipv4Addr::new(255, 255, 0, 0));
        m.routers = vec![Ipv4Addr::new(5, 6, 0, 1)];
        m.dns = vec![Ipv4Addr::new(1, 1, 1, 1), Ipv4Addr::new(8, 8, 4, 4)];
        m.domain_name = Some("example.internal".into());
        m.hostname = Some("box".into());
        assert_eq!(Message::decode(&m.encode()).unwrap(), m);
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(Message::decode(&[0u8; 10]), Err(DecodeError::TooShort(10)));
        let mut b = slirp_offer();
        b[236] = 0;
        assert_eq!(Message::decode(&b), Err(DecodeError::BadMagic));
        let mut b = slirp_offer();
        b.truncate(245); // inside the server-id option
        assert_eq!(Message::decode(&b), Err(DecodeError::Truncated(54)));
        let mut b = slirp_offer();
        b[242] = 99;
        assert_eq!(
            Message::decode(&b),
            Err(DecodeError::UnknownMessageType(99))
        );
    }

    #[test]
    fn ip_udp_framing_round_trips_with_valid_checksums() {
        let payload = b"hello dhcp";
        let p = ip_udp_wrap(Ipv4Addr::UNSPECIFIED, Ipv4Addr::BROADCAST, 68, 67, payload);
        assert_eq!(p.len(), 20 + 8 + payload.len());
        // A header with its checksum sums to zero.
        assert_eq!(checksum(&p[..20], 0), 0);
        assert_eq!(ip_udp_payload(&p, 67), Some(&payload[..]));
        assert_eq!(ip_udp_payload(&p, 68), None);
        // UDP checksum verifies over the pseudo header (sum of all words is 0xffff).
        let mut pseudo = 0u32;
        for w in p[12..20].chunks(2) {
            pseudo += u16::from_be_bytes([w[0], w[1]]) as u32;
        }
        pseudo += 17 + (8 + payload.len()) as u32;
        assert_eq!(checksum(&p[20..], pseudo), 0);
        assert_eq!(ip_udp_payload(&p[..10], 67), None);
    }
}
