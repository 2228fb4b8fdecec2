//! The OVF environment (`ovf-env.xml`, vSphere's ISO transport) and what it embeds.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = init::ovfenv::parse(&String::from_utf8_lossy(data));
});
