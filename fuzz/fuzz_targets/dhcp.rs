//! init's DHCPv4 decoder: raw IPv4/UDP frames and DHCP messages (options, lengths).
#![no_main]

use init::net::dhcp;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let payload = dhcp::ip_udp_payload(data, 68).unwrap_or(data);
    if let Ok(m) = dhcp::Message::decode(payload) {
        // What decodes must encode again (the client echoes fields back).
        let _ = dhcp::Message::decode(&m.encode());
        if let Some(l) = init::net::client::Lease::from_message(&m) {
            // The client's timers: deadlines from the lease's durations.
            let now = std::time::Instant::now();
            let _ = [now + l.t1, now + l.t2, now + l.lease_time];
        }
    }
});
