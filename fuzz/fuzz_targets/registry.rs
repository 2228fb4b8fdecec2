//! Registry answers and names: manifests and indexes (JSON), auth challenges, references,
//! `--insecure-registry` values, digests.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = serde_json::from_slice::<registry::Manifest>(data) {
        for ct in ["", "application/vnd.oci.image.index.v1+json"] {
            let _ = m.is_index(ct);
        }
        if let Some(list) = &m.manifests {
            let _ = registry::select_platform(list);
        }
    }
    let s = String::from_utf8_lossy(data);
    let _ = registry::client::parse_challenge(&s);
    if let Ok(r) = registry::Reference::parse(&s) {
        let _ = (r.familiar_name(), r.tagged(), r.object().len());
    }
    let _ = registry::parse_insecure(&s);
    let _ = registry::valid_digest(&s);
    let _ = registry::verify("fuzz", &s, data);
});
