//! The disk image manifest `axion-update install` reads from a medium it did not make.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = disk_manifest::Manifest::parse(data) {
        // What parses renders back to the same manifest, and stays within the limits.
        assert_eq!(
            disk_manifest::Manifest::parse(m.render().as_bytes()),
            Ok(m.clone())
        );
        assert!(m.size <= disk_manifest::MAX_SIZE && m.size.is_multiple_of(512));
        assert!(!m.file.contains('/') && !m.file.starts_with('.'));
    }
});
