//! The device rules a client sends (crates/docker-api's devices): `DeviceCgroupRules`
//! strings and the `Devices` mappings. Nothing may panic; a rule that parses prints back as
//! a string that parses to the same rule.
#![no_main]

use docker_api::devices::{mappings, parse_rule};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    for line in text.lines() {
        if let Ok(rule) = parse_rule(line) {
            assert_eq!(parse_rule(&rule.to_string()), Ok(rule), "{line:?}");
        }
    }
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
        let _ = mappings(Some(&v));
    }
});
