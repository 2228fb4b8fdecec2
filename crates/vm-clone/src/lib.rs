//! VM-per-container mode's machinery, shared by its two host programs (axion-vmd, host/vmd,
//! and the containerd shim, host/containerd-shim): the template VM booted once and saved,
//! its clones restored from the saved state ([`template`]), what the mode appends to the
//! image's initramfs ([`guest`]), the Docker API client of the engine inside each VM
//! over its virtio-serial port ([`client`]), and the host cgroups that bound each VM's
//! QEMU ([`cgroup`]). The design and its measured decisions are in
//! host/vmd/src/lib.rs; both programs use one template directory (its name is the hash of
//! everything a saved state depends on), so they run side by side on one host.

pub mod cgroup;
pub mod client;
pub mod guest;
pub mod slots;
pub mod template;

/// Progress lines on stderr with `VMD_DEBUG` set (a wall-clock stamp and the step).
pub fn debug(msg: &str) {
    if std::env::var_os("VMD_DEBUG").is_some() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        eprint!("[{}.{:03}] ", t.as_secs() % 1000, t.subsec_millis());
        eprintln!("vmd: {msg}");
    }
}
