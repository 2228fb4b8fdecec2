//! The volume store: volumes of the `local` driver under the engine's root on the data
//! partition, `volumes/NAME/_data` (what containers mount) beside `volumes/NAME/volume.json`
//! (name, labels, options, creation time; written to a temporary file, synced, renamed), so
//! they survive a reboot. Which containers use a volume is not stored here: the engine
//! derives it from its containers' mount points.
//!
//! A volume with options is mounted on its `_data` when a container first needs it
//! ([`Store::prepare`]): `type=tmpfs` (with `o=size=...`), `type=none,o=bind,device=PATH`,
//! or another file system type on `device`, as dockerd's local driver does.

pub mod mounts;

use docker_api::volumes::Volume;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The metadata of one volume (volume.json).
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
pub struct Meta {
    pub name: String,
    pub driver: String,
    pub labels: Option<BTreeMap<String, String>>,
    pub options: Option<BTreeMap<String, String>>,
    /// Nanoseconds since the epoch.
    pub created: i128,
}

#[derive(Debug, thiserror::Error)]
pub enum VolError {
    #[error(
        "create {0}: {0:?} includes invalid characters for a local volume name, only \
        \"[a-zA-Z0-9][a-zA-Z0-9_.-]\" are allowed. If you intended to pass a host directory, use \
            absolute path"
    )]
    InvalidName(String),
    #[error("{0}")]
    InvalidOption(String),
    #[error("get {0}: no such volume")]
    NotFound(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> VolError {
    let what = what.into();
    move |source| VolError::Io { what, source }
}

/// `[a-zA-Z0-9][a-zA-Z0-9_.-]+`, dockerd's rule for local volume names.
pub fn valid_name(n: &str) -> bool {
    n.len() >= 2
        && n.len() <= 255
        && n.as_bytes()[0].is_ascii_alphanumeric()
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

/// Checks the local driver's options (`type`, `o`, `device`) as dockerd does at create:
/// `type` and `device` need each other, `o` needs both.
pub fn validate_options(opts: &BTreeMap<String, String>) -> Result<(), VolError> {
    for k in opts.keys() {
        match k.as_str() {
            "type" | "o" | "device" => {}
            "size" => {
                return Err(VolError::InvalidOption(
                    "quota size requested but no quota support".into(),
                ))
            }
            _ => return Err(VolError::InvalidOption(format!("invalid option: {k:?}"))),
        }
    }
    let mandatory: [(&str, &[&str]); 3] = [
        ("device", &["type"]),
        ("type", &["device"]),
        ("o", &["device", "type"]),
    ];
    for (opt, needs) in mandatory {
        if opts.contains_key(opt) {
            if let Some(missing) = needs.iter().find(|n| !opts.contains_key(**n)) {
                return Err(VolError::InvalidOption(format!(
                    "missing required option: {missing:?}"
                )));
            }
        }
    }
    let o = opts.get("o").map(String::as_str).unwrap_or("");
    mounts::mount_options(o, false).map_err(VolError::InvalidOption)?;
    let dev = opts.get("device").map(String::as_str).unwrap_or("");
    if is_bind(opts) && !dev.starts_with('/') {
        return Err(VolError::InvalidOption(format!(
            "invalid option: device {dev:?} of a bind volume must be an absolute path"
        )));
    }
    Ok(())
}

fn is_bind(opts: &BTreeMap<String, String>) -> bool {
    opts.get("o")
        .is_some_and(|o| o.split(',').any(|f| f == "bind" || f == "rbind"))
}

pub struct Store {
    dir: PathBuf,
    vols: Mutex<BTreeMap<String, Meta>>,
}

/// Writes `data` to `path` durably: a temporary file, fsync, rename, fsync of the directory.
fn write_durable(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(d) = path.parent() {
        std::fs::File::open(d)?.sync_all()?;
    }
    Ok(())
}

/// Whether `p` is a mount point in this mount namespace (/proc/self/mountinfo).
pub fn is_mountpoint(p: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = p.to_string_lossy();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|m| unescape_mountinfo(m) == want)
}

/// mountinfo escapes space, tab, newline and backslash as `\NNN` (octal).
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' {
            if let Some(n) = s
                .get(i + 1..i + 4)
                .and_then(|o| u8::from_str_radix(o, 8).ok())
            {
                out.push(n);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Bytes used by the files under `p` (not following symbolic links or other mounts).
pub fn disk_usage(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(top) = std::fs::symlink_metadata(p) else {
        return 0;
    };
    let dev = top.dev();
    let mut total = 0;
    let mut stack = vec![p.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                if m.dev() == dev {
                    stack.push(e.path());
                }
            } else {
                total += m.len();
            }
        }
    }
    total
}

impl Store {
    /// Loads the volumes under `dir`. A directory with `_data` but no metadata (volumes of
    /// an engine from before this store) is adopted as a volume without labels or options.
    pub fn open(dir: &Path) -> Result<Store, VolError> {
        std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
        let mut vols = BTreeMap::new();
        for e in std::fs::read_dir(dir)
            .map_err(io(format!("reading {}", dir.display())))?
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            if !valid_name(&name) || !e.path().is_dir() {
                continue;
            }
            let meta = match std::fs::read(e.path().join("volume.json")) {
                Ok(b) => match serde_json::from_slice::<Meta>(&b) {
                    Ok(m) if m.name == name => m,
                    _ => {
                        eprintln!("engine: volume {name}: unreadable volume.json, skipped");
                        continue;
                    }
                },
                Err(_) if e.path().join("_data").is_dir() => {
                    let created = e
                        .metadata()
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                        .map_or(0, |d| d.as_nanos() as i128);
                    let m = Meta {
                        name: name.clone(),
                        driver: "local".into(),
                        created,
                        ..Default::default()
                    };
                    let _ = write_durable(
                        &e.path().join("volume.json"),
                        &serde_json::to_vec_pretty(&m).unwrap_or_default(),
                    );
                    m
                }
                Err(_) => continue,
            };
            vols.insert(name, meta);
        }
        Ok(Store {
            dir: dir.to_path_buf(),
            vols: Mutex::new(vols),
        })
    }

    /// Where containers mount the volume.
    pub fn data_path(&self, name: &str) -> PathBuf {
        self.dir.join(name).join("_data")
    }

    pub fn get(&self, name: &str) -> Option<Meta> {
        self.vols.lock().unwrap().get(name).cloned()
    }

    pub fn list(&self) -> Vec<Meta> {
        self.vols.lock().unwrap().values().cloned().collect()
    }

    /// Creates a volume (a generated 64-hex name when `name` is empty); an existing volume
    /// of that name is answered as it is, as dockerd does. Returns it and whether it is new.
    pub fn create(
        &self,
        name: &str,
        labels: Option<BTreeMap<String, String>>,
        options: Option<BTreeMap<String, String>>,
    ) -> Result<(Meta, bool), VolError> {
        let name = if name.is_empty() {
            hex::encode(rand::random::<[u8; 32]>())
        } else {
            name.to_string()
        };
        if !valid_name(&name) {
            return Err(VolError::InvalidName(name));
        }
        if let Some(o) = &options {
            validate_options(o)?;
        }
        let mut vols = self.vols.lock().unwrap();
        if let Some(m) = vols.get(&name) {
            return Ok((m.clone(), false));
        }
        let meta = Meta {
            name: name.clone(),
            driver: "local".into(),
            labels,
            options,
            created: docker_api::time::now_nanos(),
        };
        let d = self.dir.join(&name);
        std::fs::create_dir_all(d.join("_data")).map_err(io(format!("creating volume {name}")))?;
        write_durable(
            &d.join("volume.json"),
            &serde_json::to_vec_pretty(&meta).unwrap_or_default(),
        )
        .map_err(io(format!("saving volume {name}")))?;
        vols.insert(name, meta.clone());
        Ok((meta, true))
    }

    /// Removes the volume and its data; answers the bytes freed. The caller checks that no
    /// container uses it. A mount on `_data` (tmpfs, bind) is detached first, and the data
    /// is not touched if that fails: a bind volume's data is the user's directory.
    pub fn remove(&self, name: &str) -> Result<u64, VolError> {
        let mut vols = self.vols.lock().unwrap();
        if !vols.contains_key(name) {
            return Err(VolError::NotFound(name.to_string()));
        }
        let data = self.data_path(name);
        if is_mountpoint(&data) {
            nix::mount::umount2(&data, nix::mount::MntFlags::MNT_DETACH)
                .map_err(|e| io(format!("unmounting volume {name}"))(e.into()))?;
            if is_mountpoint(&data) {
                return Err(VolError::Io {
                    what: format!("unmounting volume {name}"),
                    source: std::io::Error::other("still mounted"),
                });
            }
        }
        let size = disk_usage(&data);
        // The metadata goes first: a half-removed directory is not loaded again.
        let d = self.dir.join(name);
        let _ = std::fs::remove_file(d.join("volume.json"));
        std::fs::remove_dir_all(&d).map_err(io(format!("removing volume {name}")))?;
        vols.remove(name);
        Ok(size)
    }

    /// Makes the volume ready to be mounted by a container: mounts its file system on
    /// `_data` if it has one (and it is not mounted yet). Answers the path to mount.
    pub fn prepare(&self, name: &str) -> Result<PathBuf, VolError> {
        let meta = self
            .get(name)
            .ok_or_else(|| VolError::NotFound(name.to_string()))?;
        let data = self.data_path(name);
        std::fs::create_dir_all(&data).map_err(io(format!("creating volume {name}")))?;
        let Some(opts) = meta.options.as_ref().filter(|o| o.contains_key("type")) else {
            return Ok(data);
        };
        if is_mountpoint(&data) {
            return Ok(data);
        }
        let get = |k: &str| opts.get(k).cloned().unwrap_or_default();
        let (t, o) = (get("type"), get("o"));
        let mut dev = get("device");
        if dev.is_empty() {
            dev = t.clone();
        }
        let (flags, fsdata) = mounts::mount_options(&o, false).map_err(VolError::InvalidOption)?;
        let flags = nix::mount::MsFlags::from_bits_truncate(flags);
        let fstype = if flags.contains(nix::mount::MsFlags::MS_BIND) {
            None
        } else {
            Some(t.as_str())
        };
        nix::mount::mount(
            Some(dev.as_str()),
            &data,
            fstype,
            flags,
            Some(fsdata.as_str()).filter(|d| !d.is_empty()),
        )
        .map_err(|e| {
            VolError::InvalidOption(format!(
                "error while mounting volume '{}': failed to mount local volume: mount {dev}:{} \
                    (type {t}, options {o:?}): {e}",
                data.display(),
                data.display()
            ))
        })?;
        Ok(data)
    }

    /// The API's view of a volume.
    pub fn to_api(&self, m: &Meta) -> Volume {
        let created = docker_api::time::rfc3339(m.created);
        // dockerd writes CreatedAt in whole seconds.
        let created_at = match created.split_once('.') {
            Some((s, _)) => format!("{s}Z"),
            None => created,
        };
        Volume {
            created_at,
            driver: m.driver.clone(),
            labels: m.labels.clone(),
            mountpoint: self.data_path(&m.name).display().to_string(),
            name: m.name.clone(),
            options: m.options.clone(),
            scope: "local".into(),
            status: None,
            usage_data: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use docker_api::volumes::ANONYMOUS_LABEL;

    fn opts(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn create_list_get_remove_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let labels = Some(opts(&[("team", "a")]));
        let (m, new) = s.create("data", labels.clone(), None).unwrap();
        assert!(new && m.driver == "local" && m.labels == labels);
        assert!(s.data_path("data").is_dir());
        // Again: the existing volume, unchanged.
        let (again, new) = s.create("data", None, None).unwrap();
        assert!(!new);
        assert_eq!(again, m);
        let anon_labels = BTreeMap::from([(ANONYMOUS_LABEL.to_string(), String::new())]);
        let (anon, _) = s.create("", Some(anon_labels), None).unwrap();
        assert_eq!(anon.name.len(), 64);
        assert!(anon.name.bytes().all(|b| b.is_ascii_hexdigit()));
        assert!(anon.labels.as_ref().unwrap().contains_key(ANONYMOUS_LABEL));
        std::fs::write(s.data_path("data").join("f"), b"12345").unwrap();

        // A new store on the same directory (an engine restart, a reboot) sees the same.
        drop(s);
        let s = Store::open(dir.path()).unwrap();
        let names: Vec<String> = s.list().into_iter().map(|m| m.name).collect();
        assert_eq!(names.len(), 2);
        assert_eq!(s.get("data").unwrap(), m);
        let api = s.to_api(&m);
        assert_eq!(api.scope, "local");
        assert!(api.created_at.ends_with('Z') && !api.created_at.contains('.'));
        assert!(api.mountpoint.ends_with("/data/_data"));
        assert_eq!(
            std::fs::read(s.data_path("data").join("f")).unwrap(),
            b"12345"
        );

        assert_eq!(s.remove("data").unwrap(), 5);
        assert!(!dir.path().join("data").exists());
        assert!(matches!(s.remove("data"), Err(VolError::NotFound(_))));
        assert!(s.get("data").is_none());
        drop(s);
        let s = Store::open(dir.path()).unwrap();
        assert!(s.get("data").is_none());
        assert!(s.get(&anon.name).is_some());
    }

    #[test]
    fn names_and_options_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        for bad in ["a", "-x", "a/b", "../up", "sp ace", ".hidden"] {
            assert!(
                matches!(s.create(bad, None, None), Err(VolError::InvalidName(_))),
                "{bad}"
            );
        }
        let e = s
            .create("v1", None, Some(opts(&[("color", "red")])))
            .unwrap_err();
        assert_eq!(e.to_string(), "invalid option: \"color\"");
        assert!(s
            .create("v1", None, Some(opts(&[("device", "/x")])))
            .is_err());
        assert!(s
            .create("v1", None, Some(opts(&[("type", "ext4")])))
            .is_err());
        assert!(s
            .create(
                "v1",
                None,
                Some(opts(&[("type", "none"), ("o", "bind"), ("device", "rel")]))
            )
            .is_err());
        assert!(s.get("v1").is_none());
        let e = s
            .create(
                "t1",
                None,
                Some(opts(&[("type", "tmpfs"), ("o", "size=1m")])),
            )
            .unwrap_err();
        assert_eq!(e.to_string(), "missing required option: \"device\"");
        let tmpfs = [("type", "tmpfs"), ("device", "tmpfs"), ("o", "size=1m")];
        s.create("t1", None, Some(opts(&tmpfs))).unwrap();
        s.create(
            "b1",
            None,
            Some(opts(&[("type", "none"), ("o", "bind"), ("device", "/srv")])),
        )
        .unwrap();
    }

    #[test]
    fn a_volume_directory_without_metadata_is_adopted() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("old/_data")).unwrap();
        std::fs::create_dir_all(dir.path().join("notavolume")).unwrap();
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.get("old").unwrap().driver, "local");
        assert!(s.get("notavolume").is_none());
        assert!(dir.path().join("old/volume.json").exists());
    }

    #[test]
    fn mountinfo_paths_are_unescaped() {
        assert_eq!(unescape_mountinfo("/a\\040b"), "/a b");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
        assert_eq!(unescape_mountinfo("/end\\"), "/end\\");
        assert!(is_mountpoint(Path::new("/proc")));
        assert!(!is_mountpoint(Path::new("/proc/self")));
    }
}
