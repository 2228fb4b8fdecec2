//! A small synchronous netlink client: builds messages with (nested) attributes, sends
//! them (one request or an nfnetlink batch) and waits for the kernel's acknowledgements.
//! Used for rtnetlink (links, addresses, routes) and nf_tables (the NAT rule); see the
//! engine's README (packages/engine/README.md, "Networking") for why this is hand-written
//! rather than a crate.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

pub const NLM_F_REQUEST: u16 = 0x1;
pub const NLM_F_ACK: u16 = 0x4;
pub const NLM_F_EXCL: u16 = 0x200;
pub const NLM_F_CREATE: u16 = 0x400;
pub const NLM_F_APPEND: u16 = 0x800;
const NLMSG_ERROR: u16 = 2;
/// Marks a nested attribute (nf_tables expects it; rtnetlink does not need it).
pub const NLA_F_NESTED: u16 = 0x8000;

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// One netlink message under construction: header, fixed family header, attributes.
pub struct Msg {
    buf: Vec<u8>,
    nests: Vec<usize>,
    pub ack: bool,
}

impl Msg {
    /// A message of `ty` with `flags` (NLM_F_REQUEST is added) and the family's fixed header.
    pub fn new(ty: u16, flags: u16, header: &[u8]) -> Msg {
        let mut buf = vec![0u8; 16];
        buf[4..6].copy_from_slice(&ty.to_ne_bytes());
        buf[6..8].copy_from_slice(&(flags | NLM_F_REQUEST).to_ne_bytes());
        buf.extend_from_slice(header);
        buf.resize(align4(buf.len()), 0);
        Msg {
            buf,
            nests: Vec::new(),
            ack: flags & NLM_F_ACK != 0,
        }
    }

    pub fn attr(&mut self, ty: u16, data: &[u8]) -> &mut Self {
        let len = 4 + data.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.buf.resize(align4(self.buf.len()), 0);
        self
    }

    /// A NUL-terminated string attribute.
    pub fn str(&mut self, ty: u16, s: &str) -> &mut Self {
        let mut d = s.as_bytes().to_vec();
        d.push(0);
        self.attr(ty, &d)
    }

    pub fn u32(&mut self, ty: u16, v: u32) -> &mut Self {
        self.attr(ty, &v.to_ne_bytes())
    }

    /// A big-endian u32 (nf_tables attributes are network byte order).
    pub fn be32(&mut self, ty: u16, v: u32) -> &mut Self {
        self.attr(ty, &v.to_be_bytes())
    }

    /// Raw bytes appended as they are (e.g. the ifinfomsg inside VETH_INFO_PEER).
    pub fn raw(&mut self, data: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(data);
        self.buf.resize(align4(self.buf.len()), 0);
        self
    }

    /// Starts a nested attribute of type `ty` (add NLA_F_NESTED where the family wants it).
    pub fn begin(&mut self, ty: u16) -> &mut Self {
        self.nests.push(self.buf.len());
        self.buf.extend_from_slice(&[0, 0]);
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self
    }

    pub fn end(&mut self) -> &mut Self {
        if let Some(at) = self.nests.pop() {
            let len = (self.buf.len() - at) as u16;
            self.buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
        }
        self
    }

    fn finish(mut self, seq: u32) -> Vec<u8> {
        while !self.nests.is_empty() {
            self.end();
        }
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf[8..12].copy_from_slice(&seq.to_ne_bytes());
        self.buf
    }
}

pub struct Socket {
    fd: OwnedFd,
    seq: u32,
}

impl Socket {
    /// A netlink socket of `protocol` (NETLINK_ROUTE, NETLINK_NETFILTER) in the calling
    /// thread's network namespace.
    pub fn open(protocol: i32) -> io::Result<Socket> {
        // SAFETY: plain socket(2); the descriptor is owned right away.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                protocol,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let tv = libc::timeval {
            tv_sec: 5,
            tv_usec: 0,
        };
        // SAFETY: setsockopt with a correctly sized timeval.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            );
        }
        // SAFETY: sockaddr_nl is plain data; zeroed is a valid "let the kernel pick" address.
        let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as u16;
        // SAFETY: bind with a correctly sized sockaddr_nl.
        if unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sa as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        } < 0
        {
            return Err(io::Error::last_os_error());
        }
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(1);
        Ok(Socket { fd, seq: seed })
    }

    /// Sends `msgs` in one datagram and waits for the acknowledgement of each message that
    /// asked for one; the first error the kernel reports is returned.
    pub fn send(&mut self, msgs: Vec<Msg>) -> io::Result<()> {
        let mut out = Vec::new();
        let mut pending = Vec::new();
        for m in msgs {
            self.seq = self.seq.wrapping_add(1);
            if m.ack {
                pending.push(self.seq);
            }
            out.extend_from_slice(&m.finish(self.seq));
        }
        // SAFETY: sending a buffer we own to the kernel (the socket's default peer).
        let n = unsafe { libc::send(self.fd.as_raw_fd(), out.as_ptr().cast(), out.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = vec![0u8; 32 * 1024];
        while !pending.is_empty() {
            // SAFETY: receiving into a buffer we own.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(io::Error::new(
                    e.kind(),
                    format!("waiting for netlink acknowledgement: {e}"),
                ));
            }
            let mut data = &buf[..n as usize];
            while data.len() >= 16 {
                let len = u32::from_ne_bytes(data[0..4].try_into().unwrap_or_default()) as usize;
                let ty = u16::from_ne_bytes([data[4], data[5]]);
                let seq = u32::from_ne_bytes(data[8..12].try_into().unwrap_or_default());
                if len < 16 || len > data.len() {
                    break;
                }
                if ty == NLMSG_ERROR && len >= 20 {
                    let code = i32::from_ne_bytes(data[16..20].try_into().unwrap_or_default());
                    pending.retain(|s| *s != seq);
                    if code != 0 {
                        return Err(io::Error::from_raw_os_error(-code));
                    }
                }
                data = &data[align4(len).min(data.len())..];
            }
        }
        Ok(())
    }

    /// Sends one message and waits for its acknowledgement.
    pub fn request(&mut self, m: Msg) -> io::Result<()> {
        self.send(vec![m])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_padded_and_nests_sized() {
        let mut m = Msg::new(16, NLM_F_ACK, &[0u8; 16]);
        m.str(3, "eth0");
        m.begin(18 | NLA_F_NESTED).str(1, "veth").end();
        let b = m.finish(7);
        assert_eq!(
            u32::from_ne_bytes(b[0..4].try_into().unwrap()) as usize,
            b.len()
        );
        assert_eq!(u32::from_ne_bytes(b[8..12].try_into().unwrap()), 7);
        // header 16 + ifinfomsg 16, then IFNAME: len 9 padded to 12.
        assert_eq!(u16::from_ne_bytes([b[32], b[33]]), 9);
        assert_eq!(&b[36..41], b"eth0\0");
        // The nest starts at 44: 4 bytes of header + an attribute of 4 + 5 ("veth\0") → 13 padded
        // 16.
        assert_eq!(u16::from_ne_bytes([b[44], b[45]]), 4 + 12);
        assert_eq!(u16::from_ne_bytes([b[46], b[47]]), 18 | NLA_F_NESTED);
        assert_eq!(b.len(), 60);
    }
}
