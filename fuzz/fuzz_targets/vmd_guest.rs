//! What axion-vmd reads from a guest over its channel: the multiplexed output stream
//! (chunked as it arrives), the ids and JSON answers of the guest engine.
#![no_main]

use docker_api::types::*;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, rest)) = data.split_first() else {
        return;
    };
    let mut dec = vmd::client::Decoder::new(ctl & 1 == 1);
    let step = usize::from(ctl >> 1).max(1);
    let mut total = 0;
    for chunk in rest.chunks(step) {
        total += dec.push(chunk).iter().map(|f| f.data.len()).sum::<usize>();
    }
    assert!(total <= rest.len(), "decoded more than was sent");
    let _ = vmd::client::guest_id("fuzz", String::from_utf8_lossy(rest).into_owned());
    let _ = serde_json::from_slice::<ContainerInspect>(rest);
    let _ = serde_json::from_slice::<WaitResponse>(rest);
    let _ = serde_json::from_slice::<ExecInspect>(rest);
    let _ = serde_json::from_slice::<ContainerCreateResponse>(rest);
    let _ = serde_json::from_slice::<IdResponse>(rest);
    for line in rest.split(|&b| b == b'\n') {
        let _ = serde_json::from_slice::<ProgressMessage>(line);
    }
});
