//! `/info` Labels from the update agent's state file and /etc/axion/release.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let labels = docker_api::host_labels::parse(&String::from_utf8_lossy(data), "axion.");
    assert!(labels.len() <= docker_api::host_labels::MAX_LABELS);
    assert!(labels.iter().all(|l| !l.contains('\n')));
});
