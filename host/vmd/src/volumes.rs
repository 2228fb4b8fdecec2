//! Named volumes, kept on the host (`<state>/volumes/<name>/_data`, beside its `meta.json`)
//! so that they outlive every container VM, and shared into the VM of each container that
//! mounts one over 9p.
//!
//! A clone must have the template's device set (the saved state names every device), so the
//! template has [`SLOTS`] 9p devices (tags `axion.vol0`...), each exporting an empty directory;
//! a clone gives each of its mounts a slot and points that slot's export at the volume's
//! `_data` (or, for `-v /host/dir:/path`, at the host directory), read-only at QEMU for `:ro`.
//! A fsdev's path is not part of the migrated state, only the device is, so this costs the
//! restore nothing. In the guest, the container's mount becomes a volume of the guest engine's
//! local driver with `type=9p,device=axion.volN` (a mount the guest engine already makes for
//! `docker volume create -o type=... -o device=...`): no guest change. Writes are not cached
//! in the guest (9p's default `cache=none`), so what one container VM wrote is on the host
//! when its VM is killed, and the next VM reads it.
//!
//! Why slots rather than one export of the whole volumes directory: a VM sees only the
//! volumes its container mounts (one export of all of them would hand every VM every volume).
//! Why not host bind mounts into a per-VM export directory: a mount left behind by a crash
//! would put a volume's data under a directory the daemon removes.

use docker_api::time::{now_nanos, rfc3339};
use docker_api::volumes::{Mount, Volume, VolumeOptions, ANONYMOUS_LABEL};
use docker_api::{ApiError, ApiResult};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

// The slots (how many host directories one container VM can mount) are the template's.
pub use vm_clone::slots::{slot_tag, Slot, SLOTS};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Meta {
    created_ns: i128,
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
}

pub struct Volumes {
    dir: PathBuf,
    list: Mutex<BTreeMap<String, Meta>>,
}

/// `[a-zA-Z0-9][a-zA-Z0-9_.-]+`, dockerd's rule for local volume names.
pub fn valid_name(n: &str) -> bool {
    n.len() >= 2
        && n.len() <= 255
        && n.as_bytes()[0].is_ascii_alphanumeric()
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

impl Volumes {
    /// Opens `dir`, finding the volumes already there.
    pub fn open(dir: &Path) -> anyhow::Result<Volumes> {
        std::fs::create_dir_all(dir)?;
        let mut list = BTreeMap::new();
        for e in std::fs::read_dir(dir)?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let meta = std::fs::read(e.path().join("meta.json"))
                .ok()
                .and_then(|b| serde_json::from_slice::<Meta>(&b).ok());
            if let Some(m) = meta.filter(|_| valid_name(&name)) {
                list.insert(name, m);
            }
        }
        Ok(Volumes {
            dir: dir.to_path_buf(),
            list: Mutex::new(list),
        })
    }

    pub fn data_path(&self, name: &str) -> PathBuf {
        self.dir.join(name).join("_data")
    }

    pub fn exists(&self, name: &str) -> bool {
        self.list
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(name)
    }

    pub fn names(&self) -> Vec<String> {
        self.list
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect()
    }

    /// Creates `name` (a random one when empty: anonymous); answers it and whether it is new.
    pub fn create(
        &self,
        name: &str,
        mut labels: Option<BTreeMap<String, String>>,
    ) -> ApiResult<(Volume, bool)> {
        let name = if name.is_empty() {
            labels
                .get_or_insert_with(Default::default)
                .insert(ANONYMOUS_LABEL.into(), String::new());
            crate::random_hex(64)
        } else {
            name.to_string()
        };
        if !valid_name(&name) {
            return Err(ApiError::bad_request(format!(
                "create {name}: \"{name}\" includes invalid characters for a local volume name, \
                 only \"[a-zA-Z0-9][a-zA-Z0-9_.-]\" are allowed. If you intended to pass a host \
                 directory, use absolute path"
            )));
        }
        let mut list = self.list.lock().unwrap_or_else(PoisonError::into_inner);
        if list.contains_key(&name) {
            drop(list);
            return Ok((self.inspect(&name)?, false));
        }
        let meta = Meta {
            created_ns: now_nanos(),
            labels,
        };
        let d = self.dir.join(&name);
        let io = |e: std::io::Error| ApiError::internal(format!("creating volume {name}: {e}"));
        std::fs::create_dir_all(d.join("_data")).map_err(io)?;
        let tmp = d.join("meta.json.tmp");
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(&serde_json::to_vec(&meta).unwrap_or_default())
            .and_then(|_| f.sync_all())
            .map_err(io)?;
        std::fs::rename(&tmp, d.join("meta.json")).map_err(io)?;
        list.insert(name.clone(), meta);
        drop(list);
        Ok((self.inspect(&name)?, true))
    }

    pub fn inspect(&self, name: &str) -> ApiResult<Volume> {
        let list = self.list.lock().unwrap_or_else(PoisonError::into_inner);
        let m = list
            .get(name)
            .ok_or_else(|| ApiError::not_found(format!("get {name}: no such volume")))?;
        let created = rfc3339(m.created_ns);
        Ok(Volume {
            created_at: match created.split_once('.') {
                Some((s, _)) => format!("{s}Z"),
                None => created,
            },
            driver: "local".into(),
            labels: m.labels.clone(),
            mountpoint: self.data_path(name).display().to_string(),
            name: name.to_string(),
            options: None,
            scope: "local".into(),
            ..Default::default()
        })
    }

    /// Removes the volume and its data; answers the bytes freed.
    pub fn remove(&self, name: &str) -> ApiResult<u64> {
        let mut list = self.list.lock().unwrap_or_else(PoisonError::into_inner);
        if list.remove(name).is_none() {
            return Err(ApiError::not_found(format!("get {name}: no such volume")));
        }
        let d = self.dir.join(name);
        let size = du(&d.join("_data"));
        // The record first: a volume half removed is gone rather than half there.
        let _ = std::fs::remove_file(d.join("meta.json"));
        std::fs::remove_dir_all(&d)
            .map_err(|e| ApiError::internal(format!("removing volume {name}: {e}")))?;
        Ok(size)
    }
}

fn du(p: &Path) -> u64 {
    let Ok(m) = std::fs::symlink_metadata(p) else {
        return 0;
    };
    if !m.is_dir() {
        return m.len();
    }
    std::fs::read_dir(p)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| du(&e.path()))
        .sum()
}

/// One host directory a container mounts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A named volume of this daemon.
    Named(String),
    /// A host directory (`-v /dir:/path`, `--mount type=bind`).
    Host(PathBuf),
}

/// The container's mounts of host directories, each given a slot, and the request's
/// `Binds`/`Mounts` as the guest engine gets them.
#[derive(Debug, Default)]
pub struct Plan {
    /// (source, target, read-only), in slot order.
    pub mounts: Vec<(Source, String, bool)>,
    pub binds: Option<Vec<String>>,
    pub guest_mounts: Option<Vec<Mount>>,
}

impl Plan {
    /// The named volumes in the plan.
    pub fn named(&self) -> Vec<String> {
        self.mounts
            .iter()
            .filter_map(|(s, _, _)| match s {
                Source::Named(n) => Some(n.clone()),
                Source::Host(_) => None,
            })
            .collect()
    }
}

/// Splits the container's `Binds` and `Mounts` into what is shared from the host (named
/// volumes and host directories, one slot each) and what stays the guest's own (anonymous
/// volumes, tmpfs). 400 for what VM-per-container mode cannot share: more than [`SLOTS`]
/// host directories, a host path that is not a directory, bind propagation.
pub fn plan(binds: Option<&[String]>, mounts: Option<&[Mount]>) -> ApiResult<Plan> {
    let mut p = Plan::default();
    let mut guest_binds = Vec::new();
    for b in binds.unwrap_or_default() {
        let parts: Vec<&str> = b.split(':').collect();
        let (src, dst, opts) = match parts.as_slice() {
            [s, d] => (*s, *d, ""),
            [s, d, o] => (*s, *d, *o),
            _ => {
                // `-v /path` (anonymous) arrives as a volume, not a bind; anything else is
                // the guest engine's to judge.
                guest_binds.push(b.clone());
                continue;
            }
        };
        let ro = opts.split(',').any(|o| o == "ro");
        if let Some(bad) = opts
            .split(',')
            .find(|o| !matches!(*o, "" | "ro" | "rw" | "z" | "Z" | "nocopy" | "private"))
        {
            return Err(ApiError::bad_request(format!(
                "invalid mode {bad:?} in {b:?}: VM-per-container mode shares host directories \
                 into a VM, with ro/rw only"
            )));
        }
        let source = if src.starts_with('/') {
            Source::Host(PathBuf::from(src))
        } else {
            Source::Named(src.to_string())
        };
        p.mounts.push((source, dst.to_string(), ro));
    }
    let mut guest_mounts = Vec::new();
    for m in mounts.unwrap_or_default() {
        match m.kind.as_str() {
            "volume" if !m.source.is_empty() => {
                if m.volume_options
                    .as_ref()
                    .is_some_and(|o| !o.subpath.is_empty())
                {
                    return Err(ApiError::bad_request(
                        "volume-subpath is not supported in VM-per-container mode",
                    ));
                }
                p.mounts.push((
                    Source::Named(m.source.clone()),
                    m.target.clone(),
                    m.read_only,
                ));
            }
            "bind" => {
                if m.bind_options
                    .as_ref()
                    .is_some_and(|o| !o.propagation.is_empty() && o.propagation != "rprivate")
                {
                    return Err(ApiError::bad_request(
                        "bind propagation is not supported in VM-per-container mode",
                    ));
                }
                p.mounts.push((
                    Source::Host(PathBuf::from(&m.source)),
                    m.target.clone(),
                    m.read_only,
                ));
            }
            _ => guest_mounts.push(m.clone()),
        }
    }
    if p.mounts.len() > SLOTS {
        return Err(ApiError::bad_request(format!(
            "a container in VM-per-container mode mounts at most {SLOTS} volumes or host \
             directories ({} asked)",
            p.mounts.len()
        )));
    }
    for (i, (src, dst, ro)) in p.mounts.iter().enumerate() {
        if let Source::Host(h) = src {
            if !h.is_absolute() {
                return Err(ApiError::bad_request(format!(
                    "invalid mount config: the bind source {} must be an absolute path",
                    h.display()
                )));
            }
        }
        guest_mounts.push(Mount {
            kind: "volume".into(),
            source: guest_volume(i),
            target: dst.clone(),
            read_only: *ro,
            volume_options: Some(VolumeOptions {
                // What the image has at the target is not copied into a shared directory.
                no_copy: true,
                driver_config: Some(docker_api::volumes::DriverConfig {
                    name: "local".into(),
                    options: Some(
                        [
                            ("type", "9p".to_string()),
                            ("device", slot_tag(i)),
                            ("o", "trans=virtio,version=9p2000.L,msize=262144".into()),
                        ]
                        .into_iter()
                        .map(|(k, v)| (k.to_string(), v))
                        .collect(),
                    ),
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    p.binds = (!guest_binds.is_empty()).then_some(guest_binds);
    p.guest_mounts = (!guest_mounts.is_empty()).then_some(guest_mounts);
    Ok(p)
}

/// The guest engine's name for the volume that mounts slot `i`.
pub fn guest_volume(i: usize) -> String {
    format!("axion-vol{i}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_and_mounts_get_slots() {
        let binds = vec![
            "data:/data".to_string(),
            "/srv/x:/x:ro".to_string(),
            "/anon".to_string(),
        ];
        let mounts = vec![
            Mount {
                kind: "tmpfs".into(),
                target: "/t".into(),
                ..Default::default()
            },
            Mount {
                kind: "volume".into(),
                source: "other".into(),
                target: "/o".into(),
                read_only: true,
                ..Default::default()
            },
        ];
        let p = plan(Some(&binds), Some(&mounts)).unwrap();
        assert_eq!(
            p.mounts,
            vec![
                (Source::Named("data".into()), "/data".into(), false),
                (Source::Host("/srv/x".into()), "/x".into(), true),
                (Source::Named("other".into()), "/o".into(), true),
            ]
        );
        assert_eq!(p.named(), ["data", "other"]);
        assert_eq!(p.binds, Some(vec!["/anon".to_string()]));
        let gm = p.guest_mounts.unwrap();
        assert_eq!(gm[0].kind, "tmpfs");
        assert_eq!(
            (gm[1].source.as_str(), gm[1].target.as_str()),
            ("axion-vol0", "/data")
        );
        let opts = gm[3].volume_options.as_ref().unwrap();
        let o = opts
            .driver_config
            .as_ref()
            .unwrap()
            .options
            .as_ref()
            .unwrap();
        assert_eq!(
            (o["type"].as_str(), o["device"].as_str()),
            ("9p", "axion.vol2")
        );
        assert!(gm[3].read_only);
    }

    #[test]
    fn too_many_or_odd_mounts_are_refused() {
        let five: Vec<String> = (0..5).map(|i| format!("v{i}:/m{i}")).collect();
        let e = plan(Some(&five), None).unwrap_err();
        assert!(e.message.contains("at most 4"), "{}", e.message);
        let e = plan(Some(&["v:/m:rshared".to_string()]), None).unwrap_err();
        assert_eq!(e.status, http::StatusCode::BAD_REQUEST);
    }

    #[test]
    fn volumes_live_in_their_directory() {
        let d = tempfile::tempdir().unwrap();
        let v = Volumes::open(d.path()).unwrap();
        let (vol, new) = v.create("data", None).unwrap();
        assert!(new && vol.mountpoint.ends_with("data/_data"));
        assert!(!v.create("data", None).unwrap().1);
        std::fs::write(v.data_path("data").join("f"), b"kept").unwrap();
        assert!(v.create("../x", None).is_err());
        let again = Volumes::open(d.path()).unwrap();
        assert_eq!(again.names(), ["data"]);
        assert_eq!(again.remove("data").unwrap(), 4);
        assert!(!d.path().join("data").exists());
        assert_eq!(
            again.remove("data").unwrap_err().status,
            http::StatusCode::NOT_FOUND
        );
    }
}
