//! The DHCPv4 client state machine (RFC 2131 section 4.4), free of I/O: messages and time go
//! in, [`Action`]s come out. `net::Network` does the sockets and the address configuration.
//!
//! Retransmissions: 1 s, doubling to 32 s while selecting; a REQUEST is sent 4 times before
//! starting over. Renewal at T1 (default half the lease) by unicast to the server, rebinding
//! at T2 (default 7/8) by broadcast, and at expiry the address is removed and discovery
//! starts again.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use super::dhcp::{prefix_from_mask, Kind, Message, PARAMS};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub addr: Ipv4Addr,
    pub prefix: u8,
    pub router: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub domain: Option<String>,
    pub server: Ipv4Addr,
    pub lease_time: Duration,
    pub t1: Duration,
    pub t2: Duration,
}

impl Lease {
    /// The lease an ACK (or OFFER) grants; `None` when it grants no address. Public for
    /// the fuzz target.
    pub fn from_message(m: &Message) -> Option<Lease> {
        let server = m
            .server_id
            .or((!m.siaddr.is_unspecified()).then_some(m.siaddr))?;
        if m.yiaddr.is_unspecified() {
            return None;
        }
        let lease_time = m
            .lease_time
            .unwrap_or(Duration::from_secs(3600))
            .max(Duration::from_secs(10));
        let t1 = m
            .renewal_time
            .filter(|t| *t < lease_time)
            .unwrap_or(lease_time / 2);
        let t2 = m
            .rebinding_time
            .filter(|t| *t < lease_time && *t > t1)
            .unwrap_or(lease_time * 7 / 8);
        let prefix = m.subnet_mask.map(prefix_from_mask).unwrap_or_else(|| {
            // Classful default, as RFC 2131 clients do without option 1.
            match m.yiaddr.octets()[0] {
                0..=127 => 8,
                128..=191 => 16,
                _ => 24,
            }
        });
        Some(Lease {
            addr: m.yiaddr,
            prefix,
            router: m.routers.first().copied(),
            dns: m.dns.clone(),
            domain: m.domain_name.clone(),
            server,
            lease_time,
            t1,
            t2,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dest {
    /// Broadcast from 0.0.0.0 over the raw socket (no address yet).
    RawBroadcast,
    /// Over the UDP socket, from our leased address.
    Unicast(Ipv4Addr),
    UdpBroadcast,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Send(Dest, Message),
    /// Configure (or refresh) this lease on the interface.
    Configure(Lease),
    /// The lease is gone: remove the address.
    Deconfigure(Ipv4Addr),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    Selecting,
    Requesting { offer: Lease, tries: u32 },
    Bound { lease: Lease, since: Instant },
    Renewing { lease: Lease, since: Instant },
    Rebinding { lease: Lease, since: Instant },
}

pub struct Client {
    mac: [u8; 6],
    hostname: Option<String>,
    xid: u32,
    pub state: State,
    deadline: Instant,
    /// Retransmission exponent in the current state.
    attempt: u32,
    started: Instant,
}

fn retransmit(attempt: u32) -> Duration {
    Duration::from_secs(1u64 << attempt.min(5))
}

impl Client {
    pub fn new(mac: [u8; 6], hostname: Option<String>, xid: u32, now: Instant) -> Client {
        Client {
            mac,
            hostname,
            xid,
            state: State::Selecting,
            deadline: now,
            attempt: 0,
            started: now,
        }
    }

    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Raw (packet) socket needed: no address configured yet.
    pub fn needs_raw(&self) -> bool {
        matches!(self.state, State::Selecting | State::Requesting { .. })
    }

    fn base(&self, kind: Kind, now: Instant) -> Message {
        let mut m = Message::client(kind, self.xid, self.mac);
        m.secs = now
            .saturating_duration_since(self.started)
            .as_secs()
            .min(u16::MAX as u64) as u16;
        let mut id = vec![1u8];
        id.extend_from_slice(&self.mac);
        m.client_id = Some(id);
        m.hostname = self.hostname.clone();
        m.param_list = PARAMS.to_vec();
        m
    }

    fn discover(&mut self, now: Instant) -> Vec<Action> {
        let mut m = self.base(Kind::Discover, now);
        m.broadcast = true;
        self.deadline = now + retransmit(self.attempt);
        self.attempt += 1;
        vec![Action::Send(Dest::RawBroadcast, m)]
    }

    fn request_selecting(&mut self, offer: &Lease, now: Instant) -> Vec<Action> {
        let mut m = self.base(Kind::Request, now);
        m.broadcast = true;
        m.requested_ip = Some(offer.addr);
        m.server_id = Some(offer.server);
        self.deadline = now + retransmit(self.attempt);
        self.attempt += 1;
        vec![Action::Send(Dest::RawBroadcast, m)]
    }

    fn request_renew(
        &mut self,
        lease: &Lease,
        dest: Dest,
        now: Instant,
        until: Instant,
    ) -> Vec<Action> {
        let mut m = self.base(Kind::Request, now);
        m.ciaddr = lease.addr;
        // RFC 2131 4.4.5: wait half the remaining time, at least 60 s.
        let half = until.saturating_duration_since(now) / 2;
        self.deadline = (now + half.max(Duration::from_secs(60))).min(until);
        vec![Action::Send(dest, m)]
    }

    /// Starts (or restarts) discovery.
    pub fn start(&mut self, now: Instant) -> Vec<Action> {
        self.state = State::Selecting;
        self.attempt = 0;
        self.started = now;
        self.xid = self.xid.wrapping_mul(1_103_515_245).wrapping_add(12345);
        self.discover(now)
    }

    pub fn on_message(&mut self, m: &Message, now: Instant) -> Vec<Action> {
        if m.op != 2 || m.xid != self.xid || m.chaddr != self.mac {
            return Vec::new();
        }
        match (&self.state, m.kind) {
            (State::Selecting, Kind::Offer) => {
                let Some(offer) = Lease::from_message(m) else {
                    return Vec::new();
                };
                self.attempt = 0;
                let acts = self.request_selecting(&offer, now);
                self.state = State::Requesting { offer, tries: 1 };
                acts
            }
            (State::Requesting { offer, .. }, Kind::Ack) => {
                let Some(mut lease) = Lease::from_message(m) else {
                    return Vec::new();
                };
                if lease.addr != offer.addr {
                    return Vec::new();
                }
                if lease.dns.is_empty() {
                    lease.dns = offer.dns.clone();
                }
                self.bind(lease, now)
            }
            (
                State::Renewing { lease: old, .. } | State::Rebinding { lease: old, .. },
                Kind::Ack,
            ) => {
                let Some(lease) = Lease::from_message(m) else {
                    return Vec::new();
                };
                let mut acts = Vec::new();
                if lease.addr != old.addr {
                    acts.push(Action::Deconfigure(old.addr));
                }
                acts.extend(self.bind(lease, now));
                acts
            }
            (State::Requesting { .. }, Kind::Nak) => self.start(now),
            (State::Renewing { lease, .. } | State::Rebinding { lease, .. }, Kind::Nak) => {
                let mut acts = vec![Action::Deconfigure(lease.addr)];
                acts.extend(self.start(now));
                acts
            }
            _ => Vec::new(),
        }
    }

    fn bind(&mut self, lease: Lease, now: Instant) -> Vec<Action> {
        self.deadline = now + lease.t1;
        self.state = State::Bound {
            lease: lease.clone(),
            since: now,
        };
        vec![Action::Configure(lease)]
    }

    pub fn on_timer(&mut self, now: Instant) -> Vec<Action> {
        if now < self.deadline {
            return Vec::new();
        }
        match self.state.clone() {
            State::Selecting => self.discover(now),
            State::Requesting { offer, tries } => {
                if tries >= 4 {
                    return self.start(now);
                }
                let acts = self.request_selecting(&offer, now);
                self.state = State::Requesting {
                    offer,
                    tries: tries + 1,
                };
                acts
            }
            State::Bound { lease, since } => {
                self.state = State::Renewing {
                    lease: lease.clone(),
                    since,
                };
                self.request_renew(&lease, Dest::Unicast(lease.server), now, since + lease.t2)
            }
            State::Renewing { lease, since } => {
                if now >= since + lease.t2 {
                    self.state = State::Rebinding {
                        lease: lease.clone(),
                        since,
                    };
                    self.request_renew(&lease, Dest::UdpBroadcast, now, since + lease.lease_time)
                } else {
                    self.request_renew(&lease, Dest::Unicast(lease.server), now, since + lease.t2)
                }
            }
            State::Rebinding { lease, since } => {
                if now >= since + lease.lease_time {
                    let mut acts = vec![Action::Deconfigure(lease.addr)];
                    acts.extend(self.start(now));
                    acts
                } else {
                    self.request_renew(&lease, Dest::UdpBroadcast, now, since + lease.lease_time)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];

    fn reply(kind: Kind, xid: u32, lease_secs: u64) -> Message {
        let mut m = Message::client(kind, xid, MAC);
        m.op = 2;
        m.yiaddr = Ipv4Addr::new(10, 0, 2, 15);
        m.server_id = Some(Ipv4Addr::new(10, 0, 2, 2));
        m.subnet_mask = Some(Ipv4Addr::new(255, 255, 255, 0));
        m.routers = vec![Ipv4Addr::new(10, 0, 2, 2)];
        m.dns = vec![Ipv4Addr::new(10, 0, 2, 3)];
        m.lease_time = Some(Duration::from_secs(lease_secs));
        m
    }

    fn sent(acts: &[Action]) -> &Message {
        match acts.first() {
            Some(Action::Send(_, m)) => m,
            other => panic!("expected a send, got {other:?}"),
        }
    }

    #[test]
    fn full_exchange_then_renew_rebind_expire() {
        let t0 = Instant::now();
        let mut c = Client::new(MAC, Some("axion".into()), 42, t0);
        let acts = c.start(t0);
        let d = sent(&acts);
        assert_eq!(d.kind, Kind::Discover);
        assert!(d.broadcast);
        assert_eq!(d.hostname.as_deref(), Some("axion"));
        assert!(c.needs_raw());
        let xid = d.xid;

        // Wrong xid is ignored.
        assert!(c
            .on_message(&reply(Kind::Offer, xid ^ 1, 100), t0)
            .is_empty());
        let acts = c.on_message(&reply(Kind::Offer, xid, 100), t0);
        let r = sent(&acts);
        assert_eq!(r.kind, Kind::Request);
        assert_eq!(r.requested_ip, Some(Ipv4Addr::new(10, 0, 2, 15)));
        assert_eq!(r.server_id, Some(Ipv4Addr::new(10, 0, 2, 2)));
        assert_eq!(acts[0], Action::Send(Dest::RawBroadcast, r.clone()));

        let acts = c.on_message(&reply(Kind::Ack, xid, 100), t0);
        let Action::Configure(lease) = &acts[0] else {
            panic!("{acts:?}")
        };
        assert_eq!(lease.addr, Ipv4Addr::new(10, 0, 2, 15));
        assert_eq!(lease.prefix, 24);
        assert_eq!(lease.router, Some(Ipv4Addr::new(10, 0, 2, 2)));
        assert_eq!(lease.dns, vec![Ipv4Addr::new(10, 0, 2, 3)]);
        assert_eq!(
            (lease.t1, lease.t2),
            (Duration::from_secs(50), Duration::from_millis(87500))
        );
        assert!(!c.needs_raw());
        assert_eq!(c.deadline(), t0 + Duration::from_secs(50));

        // T1: unicast renewal with ciaddr.
        assert!(c.on_timer(t0 + Duration::from_secs(49)).is_empty());
        let acts = c.on_timer(t0 + Duration::from_secs(50));
        assert!(matches!(&acts[0], Action::Send(Dest::Unicast(a), m)
                if *a == Ipv4Addr::new(10, 0, 2, 2) && m.ciaddr == Ipv4Addr::new(10, 0, 2, 15)));
        assert!(matches!(c.state, State::Renewing { .. }));
        // Renewal deadline is capped at T2.
        assert_eq!(c.deadline(), t0 + Duration::from_millis(87500));
        // T2: broadcast rebinding.
        let acts = c.on_timer(c.deadline());
        assert!(matches!(&acts[0], Action::Send(Dest::UdpBroadcast, _)));
        assert!(matches!(c.state, State::Rebinding { .. }));
        // Expiry: deconfigure and start over.
        let acts = c.on_timer(t0 + Duration::from_secs(100));
        assert_eq!(acts[0], Action::Deconfigure(Ipv4Addr::new(10, 0, 2, 15)));
        assert_eq!(sent(&acts[1..]).kind, Kind::Discover);
        assert!(c.needs_raw());
    }

    #[test]
    fn renewal_ack_rebinds_and_nak_restarts() {
        let t0 = Instant::now();
        let mut c = Client::new(MAC, None, 1, t0);
        let xid = sent(&c.start(t0)).xid;
        c.on_message(&reply(Kind::Offer, xid, 1000), t0);
        c.on_message(&reply(Kind::Ack, xid, 1000), t0);
        let t1 = t0 + Duration::from_secs(500);
        c.on_timer(t1);
        let acts = c.on_message(&reply(Kind::Ack, xid, 1000), t1);
        assert!(matches!(acts[0], Action::Configure(_)));
        assert_eq!(c.deadline(), t1 + Duration::from_secs(500));
        c.on_timer(t1 + Duration::from_secs(500));
        let acts = c.on_message(&reply(Kind::Nak, xid, 0), t1 + Duration::from_secs(501));
        assert_eq!(acts[0], Action::Deconfigure(Ipv4Addr::new(10, 0, 2, 15)));
        assert_eq!(sent(&acts[1..]).kind, Kind::Discover);
    }

    #[test]
    fn retransmits_with_backoff_and_gives_up_requesting() {
        let t0 = Instant::now();
        let mut c = Client::new(MAC, None, 1, t0);
        c.start(t0);
        let mut gaps = Vec::new();
        let mut now = t0;
        for _ in 0..7 {
            let next = c.deadline();
            gaps.push((next - now).as_secs());
            now = next;
            assert_eq!(sent(&c.on_timer(now)).kind, Kind::Discover);
        }
        assert_eq!(gaps, vec![1, 2, 4, 8, 16, 32, 32]);
        let xid = c.xid;
        c.on_message(&reply(Kind::Offer, xid, 100), now);
        for _ in 0..3 {
            now = c.deadline();
            assert_eq!(sent(&c.on_timer(now)).kind, Kind::Request);
        }
        now = c.deadline();
        assert_eq!(sent(&c.on_timer(now)).kind, Kind::Discover);
        assert!(matches!(c.state, State::Selecting));
    }

    #[test]
    fn offer_without_server_or_address_is_ignored() {
        let t0 = Instant::now();
        let mut c = Client::new(MAC, None, 1, t0);
        let xid = sent(&c.start(t0)).xid;
        let mut m = reply(Kind::Offer, xid, 100);
        m.yiaddr = Ipv4Addr::UNSPECIFIED;
        assert!(c.on_message(&m, t0).is_empty());
        let mut m = reply(Kind::Offer, xid, 100);
        m.server_id = None;
        assert!(c.on_message(&m, t0).is_empty());
        assert!(matches!(c.state, State::Selecting));
    }
}
