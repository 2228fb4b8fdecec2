//! What axion-vmd makes of a container's changes layer, a tar the guest engine sends
//! (`export?layer=changes`): kept, then a second one squashed onto it (changes.rs). The
//! first byte splits the input into the two tars.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let at = (usize::from(split) * 512).min(rest.len());
    let dir = std::env::temp_dir().join(format!("vmd-fuzz-changes-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for part in [&rest[..at], &rest[at..]] {
        let run = vmd::changes::scratch_of(&dir);
        std::fs::write(&run, part).unwrap();
        // Errors are fine; a panic or a kept layer that is no tar is not.
        let _ = vmd::changes::keep(&dir, &run);
        assert!(!run.exists(), "the run's scratch file is left");
    }
    let _ = std::fs::remove_dir_all(&dir);
});
