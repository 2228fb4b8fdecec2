//! A sandbox's VM: one clone of axion-vmd's template (crates/vm-clone) per sandbox, whose
//! 9p share ([`vmd_contract::STORE_TAG`], where axion-vmd shares its layer store) is the
//! sandbox's own directory of its containers' root filesystems.
//!
//! The guest engine runs a container from an image id in its share (`--image-share`), and
//! a root filesystem from containerd is made to look like one: `share/layers/<X>/` is a
//! bind mount of the bundle's `rootfs/` (what containerd's snapshotter prepared) and
//! `share/blobs/sha256/<digest>` an image config whose one layer is `sha256:<X>`. The guest
//! engine stacks its writable layer over it in the VM (overlayfs, upper dir on the VM's
//! disk), so no byte of the root filesystem is copied or pulled, and nothing in the guest
//! changed for it; the cost is that the container's writes stay in the VM and never reach
//! containerd's snapshot (docs/containerd.md).

use crate::config::Config;
use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;
use vm_clone::client::GuestClient;
use vm_clone::template::{self, Template};

pub struct Vm {
    pub dir: PathBuf,
    pub guest: GuestClient,
    /// The VM's host name: every container of the sandbox has it (a pod's one UTS).
    pub hostname: String,
    vm: Option<qemu::Vm>,
    /// The clone agent's channel, held for the VM's life (see `template::identify`).
    _agent: UnixStream,
}

/// The sandbox's directory under the shim's state: short, since QEMU's unix sockets live
/// in it (108 bytes for a socket path) and CRI's ids are 64 characters.
pub fn dir(state: &Path, namespace: &str, sandbox: &str) -> PathBuf {
    let h = hex::encode(Sha256::digest(format!("{namespace}/{sandbox}")));
    state.join("shim").join(&h[..12])
}

fn share(dir: &Path) -> PathBuf {
    dir.join("share")
}

impl Vm {
    /// Clones the template into `dir` with `dir/share` as its 9p share and hands it its
    /// identity. Blocking (about a second under TCG); then [`Vm::ready`].
    pub fn clone(template: &Template, dir: &Path, hostname: &str) -> Result<Vm> {
        let sh = share(dir);
        std::fs::create_dir_all(&sh).with_context(|| format!("creating {}", sh.display()))?;
        let mut t = template.clone();
        t.store = sh;
        let run = dir.join("vm");
        let vm = t.clone_vm(&run, hostname, &[], &[], false)?;
        let agent = template::identify(&run, hostname)?;
        let guest = GuestClient::new(&run.join(template::ENGINE_SOCKET));
        Ok(Vm {
            dir: dir.to_path_buf(),
            guest,
            hostname: hostname.to_string(),
            vm: Some(vm),
            _agent: agent,
        })
    }

    /// Waits until the VM's engine answers. On the runtime that will use [`Vm::guest`]: the
    /// channel's session lives on the runtime that opened it.
    pub async fn ready(&self) -> Result<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while let Err(e) = self.guest.try_ping().await {
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "the engine in the sandbox's VM did not answer within 60 s: {e} (serial log \
                     {})",
                    self.dir.join("vm/serial.log").display()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// QEMU's pid: the sandbox's processes on the host.
    pub fn pid(&self) -> u32 {
        self.vm.as_ref().map(|v| v.pid()).unwrap_or(0)
    }

    /// Powers the VM off (killed: nothing in it is needed) and removes its directory.
    pub fn destroy(&mut self) {
        if let Some(mut vm) = self.vm.take() {
            let _ = vm.kill();
        }
        let layers = share(&self.dir).join("layers");
        for e in std::fs::read_dir(&layers).into_iter().flatten().flatten() {
            unmount(&e.path());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.destroy();
    }
}

/// The template for these settings, built (booted and saved: tens of seconds under TCG)
/// when the state directory has none. A file lock keeps two shims, started for two
/// sandboxes at once, from building it together.
pub fn template(cfg: &Config) -> Result<Template> {
    let store = cfg.state_dir.join("store");
    std::fs::create_dir_all(&store).with_context(|| format!("creating {}", store.display()))?;
    let lock_path = cfg.state_dir.join("template.lock");
    let lock = std::fs::File::create(&lock_path)
        .with_context(|| format!("creating {}", lock_path.display()))?;
    // SAFETY: flock on a descriptor this function owns; released when `lock` closes.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        bail!(
            "locking {}: {}",
            lock_path.display(),
            std::io::Error::last_os_error()
        );
    }
    let accel = cfg
        .accel_kind()
        .map_err(|_| anyhow::anyhow!("accel = {:?}: use tcg or kvm", cfg.accel))?;
    let image = template::ImageFiles {
        kernel: cfg.kernel.clone(),
        initrd: cfg.initrd.clone(),
        disk: cfg.disk.clone(),
    };
    let t = Template::ensure(
        &cfg.state_dir,
        &image,
        cfg.memory_mib,
        cfg.cpus(),
        accel,
        &store,
    )?;
    drop(lock);
    Ok(t)
}

/// After a shim died: kills the QEMU it left running in `dir` and removes the directory.
pub fn kill_leftover(dir: &Path) {
    let needle = format!("{}/", dir.display());
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.starts_with("qemu-system") && cmd.contains(&needle) {
            // SAFETY: kill(2) with a pid read from /proc; no memory is involved.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    let layers = share(dir).join("layers");
    for e in std::fs::read_dir(&layers).into_iter().flatten().flatten() {
        unmount(&e.path());
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// The layer id of container `id`'s root filesystem in the share.
fn layer_id(id: &str) -> String {
    hex::encode(Sha256::digest(format!("rootfs of {id}")))
}

/// Puts container `id`'s root filesystem `rootfs` into the sandbox's share; the image id
/// the guest engine finds it by.
pub fn publish(dir: &Path, id: &str, rootfs: &Path) -> Result<String> {
    let sh = share(dir);
    let layer = layer_id(id);
    let target = sh.join("layers").join(&layer);
    for d in [target.clone(), sh.join("blobs/sha256")] {
        std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
    }
    bind(rootfs, &target)?;
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": { "type": "layers", "diff_ids": [format!("sha256:{layer}")] },
    })
    .to_string();
    let digest = hex::encode(Sha256::digest(config.as_bytes()));
    let blob = sh.join("blobs/sha256").join(&digest);
    let tmp = blob.with_extension("tmp");
    std::fs::write(&tmp, &config).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &blob).with_context(|| format!("writing {}", blob.display()))?;
    Ok(format!("sha256:{digest}"))
}

/// Takes container `id`'s root filesystem out of the share again.
pub fn unpublish(dir: &Path, id: &str) {
    let target = share(dir).join("layers").join(layer_id(id));
    unmount(&target);
    let _ = std::fs::remove_dir(&target);
}

fn cstr(p: &Path) -> Result<std::ffi::CString> {
    std::ffi::CString::new(p.as_os_str().as_encoded_bytes())
        .with_context(|| format!("{}: a NUL in the path", p.display()))
}

/// `mount --rbind SRC DEST`.
pub fn bind(src: &Path, dest: &Path) -> Result<()> {
    let (s, d) = (cstr(src)?, cstr(dest)?);
    // SAFETY: two valid NUL-terminated paths; a bind mount reads no data argument.
    let r = unsafe {
        libc::mount(
            s.as_ptr(),
            d.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND | libc::MS_REC,
            std::ptr::null(),
        )
    };
    if r != 0 {
        bail!(
            "bind-mounting {} on {}: {}",
            src.display(),
            dest.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// Detaches whatever is mounted on `p` (nothing there is no error).
pub fn unmount(p: &Path) {
    if let Ok(c) = cstr(p) {
        // SAFETY: a valid NUL-terminated path.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sandbox_dirs_are_short_and_distinct() {
        let s = Path::new("/var/lib/axion-vmd");
        let id = "a".repeat(64);
        let a = dir(s, "k8s.io", &id);
        assert_eq!(a, dir(s, "k8s.io", &id));
        assert_ne!(a, dir(s, "default", &id));
        // QEMU's sockets go two levels below it.
        assert!(a.join("vm/engine.sock").as_os_str().len() < 60, "{a:?}");
    }

    #[test]
    fn layer_ids_differ_per_container() {
        assert_ne!(layer_id("a"), layer_id("b"));
        assert_eq!(layer_id("a").len(), 64);
    }
}
