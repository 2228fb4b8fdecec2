//! What init's watchdog reads each tick past its cutoff: the update agent's state file, and
//! the command lines it takes `axion.update.deadline=` from.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let text: &str = &text;
    let _ = init::watchdog::on_trial(text);
    let _ = init::watchdog::trial_cutoff(&[text, text]);
});
