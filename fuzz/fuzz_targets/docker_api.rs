//! Docker API request decoding: `METHOD URI\nBODY` → the router (paths, percent-decoding,
//! versions, ids), the query string (filters JSON), the JSON bodies, X-Registry-Auth.
#![no_main]

use docker_api::types::*;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (head, body) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let head = String::from_utf8_lossy(head);
    let (method, uri) = head.split_once(' ').unwrap_or(("GET", &head));
    if let Ok(m) = http::Method::from_bytes(method.as_bytes()) {
        let (path, query) = uri.split_once('?').unwrap_or((uri, ""));
        let _ = docker_api::route::route(&m, path);
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            if k == "filters" {
                if let Ok(f) = docker_api::filters::Filters::parse(Some(&v)) {
                    let c = ContainerSummary {
                        id: "c0ffee".repeat(10),
                        names: vec!["/web".into(), "/wéb-ü".into()],
                        image: "busybox:latest".into(),
                        state: "running".into(),
                        ..Default::default()
                    };
                    let _ = f.containers(vec![c]);
                    let i = ImageSummary {
                        id: format!("sha256:{}", "a".repeat(64)),
                        repo_tags: vec!["busybox:latest".into()],
                        ..Default::default()
                    };
                    let _ = f.images(vec![i]);
                }
            }
        }
    }
    let _ = serde_json::from_slice::<ContainerCreateRequest>(body);
    let _ = serde_json::from_slice::<ExecCreateRequest>(body);
    let _ = serde_json::from_slice::<ExecStartRequest>(body);
    let _ = docker_api::server::decode_auth(&String::from_utf8_lossy(body));
    let _ = docker_api::stdcopy::decode(body);
});
