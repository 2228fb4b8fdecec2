//! Per-clone identity: what must differ between two VMs cloned from one template.
//!
//! The instance id is, in order: the settings' instance id (NoCloud or fw_cfg meta-data
//! `instance-id`, the OVF environment's `instance-id` property, `oe:id` or `ve:vCenterId`),
//! else the DMI product UUID (`/sys/class/dmi/id/product_uuid`: vSphere gives every clone
//! a new one; QEMU only with `-uuid`; all-zero UUIDs do not count), else the id stored on
//! the data partition, else a random one. It is kept in `/var/lib/axion/instance-id`.
//!
//! When the instance id differs from the stored one (or none is stored: the first boot),
//! init regenerates, before any service starts:
//!
//! - the machine id: `/var/lib/axion/machine-id` (32 hex digits, random), copied to
//!   `/etc/machine-id` on every boot;
//! - the SSH host keys: `/var/lib/dropbear/*_host_key` are deleted; dropbear (`-R`) makes
//!   new ones on its first connection;
//! - the engine's TLS material: `/var/lib/axion-engine/tls` is deleted; the engine makes
//!   new certificates at its start, keeping files that `write_files` supplies (written after
//!   this step);
//! - the RNG seed: the saved `/var/lib/axion/random-seed` is the template's, so it is
//!   deleted unused; a new one is saved after the kernel RNG is seeded.
//!
//! It prints one line: `axion: identity regenerated (REASON): ...`. Without any instance id
//! source and with a stored id, clones of a booted template keep the template's identity:
//! give each clone an instance id (meta-data, OVF property, or a unique DMI UUID).

use std::fs;
use std::path::Path;

pub const INSTANCE_ID: &str = "/var/lib/axion/instance-id";
pub const MACHINE_ID: &str = "/var/lib/axion/machine-id";

/// What the identity step decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub instance_id: String,
    /// `Some(reason)` when this boot is the first of this instance.
    pub regenerate: Option<String>,
}

/// A DMI product UUID worth using (not empty, not all zeros or all ones), lowercased.
pub fn usable_uuid(s: &str) -> Option<String> {
    let s = s.trim().to_ascii_lowercase();
    let hex: String = s.chars().filter(|c| *c != '-').collect();
    let ok = hex.len() == 32
        && hex.chars().all(|c| c.is_ascii_hexdigit())
        && hex.chars().any(|c| c != '0')
        && hex.chars().any(|c| c != 'f');
    ok.then_some(s)
}

/// Decides the instance id and whether to regenerate. `random` makes an id when there is
/// no other.
pub fn decide(
    from_settings: Option<&str>,
    dmi_uuid: Option<&str>,
    stored: Option<&str>,
    random: impl FnOnce() -> String,
) -> Decision {
    let stored = stored.map(str::trim).filter(|s| !s.is_empty());
    let current = from_settings
        .map(|s| (s.to_string(), "the settings"))
        .or_else(|| {
            dmi_uuid
                .and_then(usable_uuid)
                .map(|u| (u, "the DMI product UUID"))
        });
    match (current, stored) {
        (Some((id, _)), Some(old)) if id == old => Decision {
            instance_id: id,
            regenerate: None,
        },
        (Some((id, from)), Some(old)) => Decision {
            regenerate: Some(format!(
                "instance id changed from {old} to {id}, from {from}"
            )),
            instance_id: id,
        },
        (Some((id, from)), None) => Decision {
            regenerate: Some(format!("first boot of instance {id}, from {from}")),
            instance_id: id,
        },
        (None, Some(old)) => Decision {
            instance_id: old.to_string(),
            regenerate: None,
        },
        (None, None) => {
            let id = random();
            Decision {
                regenerate: Some(format!(
                    "first boot; no instance id in the settings or DMI, made up {id}"
                )),
                instance_id: id,
            }
        }
    }
}

fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    if let Err(e) = crate::sys::getrandom(&mut b) {
        crate::warn!("getrandom: {e}; identity falls back to the clock");
        let t = crate::sys::boottime().as_nanos().to_le_bytes();
        for (i, x) in b.iter_mut().enumerate() {
            *x = t[i % t.len()] ^ (i as u8).wrapping_mul(151);
        }
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn write_atomic(path: &str, text: &str) -> std::io::Result<()> {
    let tmp = format!("{path}.new");
    fs::write(&tmp, text)?;
    fs::File::open(&tmp)?.sync_all()?;
    fs::rename(&tmp, path)
}

/// Removes what the template left: host keys, engine TLS, RNG seed, machine id.
pub fn wipe(root: &Path) -> Vec<String> {
    let mut errors = Vec::new();
    if let Ok(rd) = fs::read_dir(root.join("var/lib/dropbear")) {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().ends_with("_host_key") {
                if let Err(err) = fs::remove_file(e.path()) {
                    errors.push(format!("remove {}: {err}", e.path().display()));
                }
            }
        }
    }
    let tls = root.join("var/lib/axion-engine/tls");
    if let Err(e) = fs::remove_dir_all(&tls) {
        if e.kind() != std::io::ErrorKind::NotFound {
            errors.push(format!("remove {}: {e}", tls.display()));
        }
    }
    for file in ["var/lib/axion/random-seed", "var/lib/axion/machine-id"] {
        let p = root.join(file);
        if let Err(e) = fs::remove_file(&p) {
            if e.kind() != std::io::ErrorKind::NotFound {
                errors.push(format!("remove {}: {e}", p.display()));
            }
        }
    }
    errors
}

/// Runs the identity step (after the data partition is mounted, before the RNG seed is
/// used and before services start).
pub fn ensure(from_settings: Option<&str>) -> Decision {
    let dmi = fs::read_to_string("/sys/class/dmi/id/product_uuid").ok();
    let stored = fs::read_to_string(INSTANCE_ID).ok();
    let d = decide(from_settings, dmi.as_deref(), stored.as_deref(), || {
        format!("iid-random-{}", random_hex(8))
    });
    if let Some(reason) = &d.regenerate {
        for e in wipe(Path::new("/")) {
            crate::error!("identity: {e}");
        }
        if let Err(e) = write_atomic(INSTANCE_ID, &format!("{}\n", d.instance_id)) {
            crate::error!("write {INSTANCE_ID}: {e}");
        }
        crate::log::line(&format!(
            "axion: identity regenerated ({reason}): new machine-id, SSH host keys, engine TLS \
             certificates, RNG seed"
        ));
    }
    let machine_id = match fs::read_to_string(MACHINE_ID)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| s.len() == 32)
    {
        Some(m) => m,
        None => {
            let m = random_hex(16);
            if let Err(e) = write_atomic(MACHINE_ID, &format!("{m}\n")) {
                crate::error!("write {MACHINE_ID}: {e}");
            }
            m
        }
    };
    if let Err(e) = fs::write("/etc/machine-id", format!("{machine_id}\n")) {
        crate::warn!("write /etc/machine-id: {e}");
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dmi_uuids() {
        assert_eq!(
            usable_uuid("4C4C4544-0042-3510-8052-B4C04F4D4E31\n").as_deref(),
            Some("4c4c4544-0042-3510-8052-b4c04f4d4e31")
        );
        assert_eq!(usable_uuid("00000000-0000-0000-0000-000000000000"), None);
        assert_eq!(usable_uuid("FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF"), None);
        assert_eq!(usable_uuid("not a uuid"), None);
    }

    #[test]
    fn decisions() {
        let r = || "rnd".to_string();
        let same = decide(Some("a"), None, Some("a\n"), r);
        assert_eq!(
            same,
            Decision {
                instance_id: "a".into(),
                regenerate: None
            }
        );
        let changed = decide(
            Some("b"),
            Some("11111111-2222-3333-4444-555555555555"),
            Some("a"),
            r,
        );
        assert_eq!(changed.instance_id, "b");
        assert!(changed.regenerate.unwrap().contains("changed from a to b"));
        let dmi = decide(None, Some("11111111-2222-3333-4444-555555555555"), None, r);
        assert_eq!(dmi.instance_id, "11111111-2222-3333-4444-555555555555");
        assert!(dmi.regenerate.unwrap().contains("first boot"));
        let kept = decide(
            None,
            Some("00000000-0000-0000-0000-000000000000"),
            Some("old"),
            r,
        );
        assert_eq!(
            kept,
            Decision {
                instance_id: "old".into(),
                regenerate: None
            }
        );
        let made = decide(None, None, None, r);
        assert_eq!(made.instance_id, "rnd");
        assert!(made.regenerate.is_some());
    }

    #[test]
    fn wipes_template_secrets_only() {
        let root = std::env::temp_dir().join(format!("axion-identity-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        for f in [
            "var/lib/dropbear/dropbear_ed25519_host_key",
            "var/lib/dropbear/authorized_keys_backup",
            "var/lib/axion-engine/tls/ca.pem",
            "var/lib/axion-engine/images/refs.json",
            "var/lib/axion/random-seed",
            "var/lib/axion/machine-id",
        ] {
            fs::create_dir_all(root.join(f).parent().unwrap()).unwrap();
            fs::write(root.join(f), "x").unwrap();
        }
        assert!(wipe(&root).is_empty());
        assert!(!root
            .join("var/lib/dropbear/dropbear_ed25519_host_key")
            .exists());
        assert!(root
            .join("var/lib/dropbear/authorized_keys_backup")
            .exists());
        assert!(!root.join("var/lib/axion-engine/tls").exists());
        assert!(root.join("var/lib/axion-engine/images/refs.json").exists());
        assert!(!root.join("var/lib/axion/random-seed").exists());
        assert!(!root.join("var/lib/axion/machine-id").exists());
        assert!(
            wipe(&root).is_empty(),
            "a second wipe finds nothing to complain about"
        );
        fs::remove_dir_all(&root).unwrap();
    }
}
