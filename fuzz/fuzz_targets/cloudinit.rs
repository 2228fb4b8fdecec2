//! First-boot settings text: cloud-init meta-data, user-data (#cloud-config YAML),
//! network-config v2, base64 content, the kernel command line, /etc/hostname, and the
//! volume probe (vfat and ISO 9660 labels).
#![no_main]

use init::{cloudinit, settings};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first bytes of a block device, as init probes them for a seed volume.
    let _ = init::sources::probe(data);
    let s = String::from_utf8_lossy(data);
    let _ = cloudinit::parse_meta_data(&s);
    let _ = cloudinit::parse_user_data(&s);
    let _ = cloudinit::parse_network_config(&s);
    let _ = cloudinit::decode_base64(&s);
    let c = settings::parse_cmdline(&s);
    let _ = settings::Settings::merge([&c.layer]);
    let _ = settings::parse_ip(&s);
    let _ = settings::hostname_file_layer(&s);
});
