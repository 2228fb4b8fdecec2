//! `engine __vmd-agent PORT`: the clone agent of axion-vmd's VM-per-container mode
//! (host/vmd/src/guest.rs runs it as a service in the template VM). It waits on the
//! virtio-serial port named PORT for one line per restored clone, `clone HOSTNAME EPOCH MAC
//! SEED` (the protocol and every name both sides spell are in crates/vmd-contract), and gives the
//! clone its identity: host name (kernel and /etc/hostname), clock
//! (the saved guest's clock is the template's), a new MAC on the NIC (set live, then an ARP
//! request from it so that QEMU's user network learns it; changing the address also flushes
//! the NIC's neighbour entries), the host's random SEED credited to the kernel's pool and
//! its CRNG reseeded from it (every clone starts from the template's RNG state), and the host's
//! layer store mounted read-only
//! (9p tag [`vmd_contract::STORE_TAG`] at [`vmd_contract::STORE_DIR`], only now: a mounted 9p
//! export blocks saving the
//! template). It answers `ok HOSTNAME` once the clock, the RNG and the store are done (what
//! the container's create needs), and sets the host name and the MAC after the answer,
//! while the daemon goes on. `ping` answers `pong`; `mount` mounts the store ahead of the
//! identity (axion-vmd's warm pool) and answers `mounted`.
//!
//! It was a busybox shell loop; under TCG every fork + exec of `date`, `ip`, `arping`,
//! `mkdir` and `mount` cost tens of milliseconds of the clone's single vCPU, so the same
//! steps are now system calls in one resident process. Errors are logged (stdout, the
//! service log) and the agent goes on: a clone without, say, a new MAC still runs.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::time::Duration;

use vmd_contract::{Identity, Reply, Request, STORE_DIR, STORE_TAG};

/// `cache=loose`: the guest keeps what it read of the store in its page cache (and reads
/// ahead), where 9p's default reads every page over the channel each time, a container's
/// first exec included. Safe because the store never changes a file in place: layers are
/// content-addressed trees, unpacked once and only ever removed whole (host/vmd/src/store.rs).
const STORE_OPTS: &str = "trans=virtio,version=9p2000.L,msize=262144,cache=loose";
/// How long a read waits for the host end to connect. A read on a port with no host
/// connected returns EOF at once; the template is saved (and every clone restored) in this
/// loop, so this is the agent's latency. Once connected (the daemon stays so for the VM's
/// life) reads block.
const RETRY: Duration = Duration::from_millis(5);

pub fn main(argv: &[String]) -> i32 {
    let Some(name) = argv.first() else {
        let mode = vmd_contract::AGENT_MODE;
        eprintln!("engine {mode}: usage: engine {mode} PORT-NAME");
        return 2;
    };
    let path = loop {
        match find_port(name) {
            Some(p) => break p,
            None => std::thread::sleep(Duration::from_secs(1)),
        }
    };
    let mut port = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
    {
        Ok(f) => f,
        Err(e) => {
            eprintln!("vmd-agent: cannot open {path}: {e}");
            return 1;
        }
    };
    println!("vmd-agent: waiting on {path}");
    let mut store = false;
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        let n = match port.read(&mut buf) {
            Ok(0) | Err(_) => {
                std::thread::sleep(RETRY);
                continue;
            }
            Ok(n) => n,
        };
        pending.extend_from_slice(&buf[..n]);
        while let Some(i) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=i).collect();
            let line = String::from_utf8_lossy(&line);
            let (answer, then) = command(line.trim(), &mut store);
            if let Some(a) = answer {
                if let Err(e) = port.write_all(a.as_bytes()) {
                    eprintln!("vmd-agent: answering on {path}: {e}");
                }
            }
            if let Some(rest) = then {
                rest.apply();
            }
        }
    }
}

/// The character device of the virtio-serial port called `name` (no udev here, so no
/// /dev/virtio-ports/NAME link: the name is in sysfs).
fn find_port(name: &str) -> Option<String> {
    for e in std::fs::read_dir("/sys/class/virtio-ports").ok()?.flatten() {
        if std::fs::read_to_string(e.path().join("name"))
            .map(|n| n.trim() == name)
            .unwrap_or(false)
        {
            return Some(format!("/dev/{}", e.file_name().to_string_lossy()));
        }
    }
    None
}

/// Runs one command line; the answer to send back, if any, and what to do once it is sent.
fn command(line: &str, store: &mut bool) -> (Option<String>, Option<AfterAnswer>) {
    match Request::parse(line) {
        Ok(Some(Request::Clone(Identity {
            hostname,
            epoch,
            mac,
            seed,
        }))) => {
            clone(epoch, &seed, store);
            println!("vmd-agent: clone {hostname}");
            let answer = Reply::Ok {
                hostname: hostname.clone(),
            }
            .to_line();
            (
                answer.ok(),
                Some(AfterAnswer {
                    name: hostname,
                    mac,
                }),
            )
        }
        Ok(Some(Request::Ping)) => (Reply::Pong.to_line().ok(), None),
        // A pooled clone, before its identity: the store is the same for every clone.
        Ok(Some(Request::Mount)) => {
            mount_store(store);
            (Reply::Mounted.to_line().ok(), None)
        }
        Ok(None) => (None, None),
        Err(e) => {
            println!("vmd-agent: {e}");
            (None, None)
        }
    }
}

/// What a container needs before it is created, done before the answer: the clock (the
/// container's time), the reseeded RNG (its id and everything it draws) and the layer store
/// (its image).
fn clone(epoch: u64, seed: &[u8], store: &mut bool) {
    // With AXION_ENGINE_TRACE (axion-vmd's VMD_DEBUG): the time of each step.
    let t0 = std::time::Instant::now();
    let mut steps = Vec::new();
    let mut mark = |step: &str| {
        if std::env::var_os(vmd_contract::TRACE_ENV).is_some() {
            steps.push(format!("{step} +{:.3}", t0.elapsed().as_secs_f64()));
        }
    };
    let ts = libc::timespec {
        tv_sec: epoch as libc::time_t,
        tv_nsec: 0,
    };
    // SAFETY: clock_settime reads a timespec we own.
    if unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) } != 0 {
        println!(
            "vmd-agent: cannot set the clock: {}",
            std::io::Error::last_os_error()
        );
    }
    mark("clock");
    if let Err(e) = seed_kernel(seed) {
        println!("vmd-agent: cannot seed the kernel's RNG: {e}");
    }
    mark("seed");
    mount_store(store);
    mark("store mounted");
    if !steps.is_empty() {
        println!("vmd-agent: trace {}", steps.join(", "));
    }
}

/// Mounts the host's layer store read-only unless `store` says it is (a failure is logged;
/// the next `clone` or `mount` tries again).
fn mount_store(store: &mut bool) {
    if *store {
        return;
    }
    let _ = std::fs::create_dir(STORE_DIR);
    let r = nix::mount::mount(
        Some(STORE_TAG),
        STORE_DIR,
        Some("9p"),
        nix::mount::MsFlags::MS_RDONLY,
        Some(STORE_OPTS),
    );
    match r {
        Ok(()) => *store = true,
        Err(e) => println!("vmd-agent: cannot mount the layer store: {e}"),
    }
}

/// The rest of a clone's identity, done after the answer, while the daemon creates the
/// container (the VM has a second vCPU for it; 0.07-0.1 s under TCG): the host name (the
/// container has its own, from its create request) and the MAC, which only matters to
/// packets from outside, and the container is not started before the create is over.
struct AfterAnswer {
    name: String,
    mac: [u8; 6],
}

impl AfterAnswer {
    fn apply(self) {
        if let Err(e) = std::fs::write("/proc/sys/kernel/hostname", &self.name) {
            println!("vmd-agent: cannot set the host name: {e}");
        }
        let _ = std::fs::write("/etc/hostname", format!("{}\n", self.name));
        match nic() {
            Some(n) => {
                if let Err(e) = new_mac(&n, &self.mac) {
                    println!("vmd-agent: cannot change the MAC of {n}: {e}");
                }
            }
            None => println!("vmd-agent: no network interface"),
        }
    }
}

/// `RNDADDENTROPY` and `RNDRESEEDCRNG` (linux/random.h: `_IOW('R', 0x03, int[2])`, `_IO('R',
/// 0x07)`).
const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
const RNDRESEEDCRNG: libc::c_ulong = 0x5207;

/// Adds the host's SEED to the kernel's pool, credited as entropy, and reseeds the
/// kernel's CRNG from it. Every clone resumes with the template's CRNG state, which the
/// kernel would keep using until its next periodic reseed (a minute), and the template may
/// be saved before the CRNG was ready (nothing in it asked for random bytes), in which case
/// each clone's first `getrandom` blocked until the kernel gathered entropy itself (about
/// 1 s of its single vCPU under TCG, seen in the first `docker create`). The host is trusted
/// (it runs the VM) and the seed is fresh per clone. Writing it to /dev/urandom, the
/// fallback, mixes it in without either effect.
fn seed_kernel(bytes: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/urandom")?;
    // struct rand_pool_info { int entropy_count (bits); int buf_size (bytes); __u32 buf[]; }
    let mut info = Vec::with_capacity(8 + bytes.len());
    info.extend_from_slice(&(bytes.len() as i32 * 8).to_ne_bytes());
    info.extend_from_slice(&(bytes.len() as i32).to_ne_bytes());
    info.extend_from_slice(bytes);
    // SAFETY: the kernel reads a rand_pool_info of buf_size bytes from a buffer we own.
    let credited = unsafe { libc::ioctl(f.as_raw_fd(), RNDADDENTROPY as _, info.as_ptr()) } == 0
        // SAFETY: RNDRESEEDCRNG takes no argument.
        && unsafe { libc::ioctl(f.as_raw_fd(), RNDRESEEDCRNG as _, 0) } == 0;
    if !credited {
        let e = std::io::Error::last_os_error();
        f.write_all(bytes)?;
        return Err(std::io::Error::other(format!(
            "crediting the seed: {e} (mixed in uncredited)"
        )));
    }
    Ok(())
}

/// The first interface other than loopback (the VM has one NIC).
fn nic() -> Option<String> {
    let mut names: Vec<String> = std::fs::read_dir("/sys/class/net")
        .ok()?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "lo")
        .collect();
    names.sort();
    names.into_iter().next()
}

fn ifreq(name: &str) -> std::io::Result<libc::ifreq> {
    // SAFETY: ifreq is plain data; all zeroes is valid.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.len() >= ifr.ifr_name.len() {
        return Err(std::io::Error::other(format!(
            "interface name {name:?} too long"
        )));
    }
    for (i, b) in name.bytes().enumerate() {
        ifr.ifr_name[i] = b as libc::c_char;
    }
    Ok(ifr)
}

/// Sets `mac` on `nic` (live: virtio-net allows it) and sends an ARP request for the
/// gateway from it, which teaches QEMU's user network the new address (it would otherwise
/// keep sending to the old one, and forwarded connections would stall).
fn new_mac(nic: &str, hw: &[u8; 6]) -> std::io::Result<()> {
    // SAFETY: a socket we close on every path (OwnedFd).
    let s = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if s < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: s is a fresh descriptor we own.
    let s = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(s) };
    let mut ifr = ifreq(nic)?;
    // SAFETY: SIOCSIFHWADDR reads the sockaddr in the ifreq we own.
    unsafe {
        ifr.ifr_ifru.ifru_hwaddr.sa_family = libc::ARPHRD_ETHER;
        for (i, b) in hw.iter().enumerate() {
            ifr.ifr_ifru.ifru_hwaddr.sa_data[i] = *b as libc::c_char;
        }
        if libc::ioctl(s.as_raw_fd(), libc::SIOCSIFHWADDR as _, &ifr) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    // The source address of the request: the NIC's IPv4 address (none yet: 0.0.0.0, a probe,
    // which still teaches nothing; the VM's address comes from DHCP before the template is saved).
    let mut ifr = ifreq(nic)?;
    let mut ip = [0u8; 4];
    // SAFETY: SIOCGIFADDR / SIOCGIFINDEX fill the ifreq we own.
    let index = unsafe {
        if libc::ioctl(s.as_raw_fd(), libc::SIOCGIFADDR as _, &mut ifr) == 0 {
            let sin =
                &*(&ifr.ifr_ifru.ifru_addr as *const libc::sockaddr as *const libc::sockaddr_in);
            ip = sin.sin_addr.s_addr.to_ne_bytes();
        }
        let mut ifr = ifreq(nic)?;
        if libc::ioctl(s.as_raw_fd(), libc::SIOCGIFINDEX as _, &mut ifr) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        ifr.ifr_ifru.ifru_ifindex
    };
    arp_request(index, hw, ip, vmd_contract::HOST_ADDR.octets())
}

/// Broadcasts one ARP request `who-has target tell ip` from `hw` on interface `index`.
fn arp_request(index: i32, hw: &[u8; 6], ip: [u8; 4], target: [u8; 4]) -> std::io::Result<()> {
    let mut frame = Vec::with_capacity(42);
    frame.extend_from_slice(&[0xff; 6]);
    frame.extend_from_slice(hw);
    frame.extend_from_slice(&0x0806u16.to_be_bytes());
    frame.extend_from_slice(&[0, 1, 0x08, 0, 6, 4, 0, 1]); // Ethernet, IPv4, sizes, request
    frame.extend_from_slice(hw);
    frame.extend_from_slice(&ip);
    frame.extend_from_slice(&[0; 6]);
    frame.extend_from_slice(&target);
    // SAFETY: a packet socket we close (OwnedFd); sendto reads the frame and address we own.
    unsafe {
        let fd = libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            (libc::ETH_P_ARP as u16).to_be() as i32,
        );
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let fd = <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd);
        let mut addr: libc::sockaddr_ll = std::mem::zeroed();
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = (libc::ETH_P_ARP as u16).to_be();
        addr.sll_ifindex = index;
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(&[0xff; 6]);
        let n = libc::sendto(
            fd.as_raw_fd(),
            frame.as_ptr().cast(),
            frame.len(),
            0,
            &addr as *const libc::sockaddr_ll as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        );
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands() {
        let mut store = true; // no mount attempt in a unit test
        assert_eq!(command("ping", &mut store).0.as_deref(), Some("pong\n"));
        assert!(command("", &mut store).0.is_none());
        assert!(command("nonsense 1 2", &mut store).0.is_none());
        // A malformed clone line is logged and not answered (the host times out, naming
        // the serial log).
        assert!(command("clone h 1 02:ab:00 00", &mut store).0.is_none());
    }
}
