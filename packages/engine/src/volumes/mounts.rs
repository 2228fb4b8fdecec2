//! Parsing and checking a container's mounts as dockerd does: `HostConfig.Binds`
//! (`-v SRC:DST[:MODE]`), `HostConfig.Mounts` (`--mount`), `HostConfig.Tmpfs` (`--tmpfs`),
//! `--volumes-from`, and the mount options of tmpfs and of volumes with a file system.
//! What the engine cannot honour (shared or slave propagation: a container's mounts are
//! private; other mount types) is refused here, at create.

use docker_api::volumes::Mount;
use nix::mount::MsFlags;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// What is mounted at a destination.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// A host path; `create`: make it when missing (as `-v` does; `--mount` only with
    /// `bind-create-mountpoint`).
    Bind {
        path: PathBuf,
        create: bool,
    },
    /// A volume; no name: a new anonymous one.
    Volume {
        name: Option<String>,
        nocopy: bool,
        subpath: String,
        labels: Option<BTreeMap<String, String>>,
        /// The driver asked for (`VolumeOptions.DriverConfig.Name`); empty: the default.
        driver: String,
        driver_opts: Option<BTreeMap<String, String>>,
    },
    Tmpfs {
        flags: u64,
        data: String,
    },
}

/// One mount of a container, checked, before its volume is looked up or created.
#[derive(Debug, Clone, PartialEq)]
pub struct Planned {
    pub dest: String,
    pub source: Source,
    pub readonly: bool,
    /// Inspect's `Mode`.
    pub mode: String,
    /// Inspect's `Propagation`.
    pub propagation: String,
    pub non_recursive: bool,
}

fn invalid(kind: &str, what: impl std::fmt::Display) -> String {
    format!("invalid mount config for type {kind:?}: {what}")
}

/// An absolute destination that is not `/` and does not climb with `..`.
pub fn check_dest(kind: &str, dest: &str) -> Result<(), String> {
    if !dest.starts_with('/') {
        return Err(invalid(
            kind,
            format!("invalid mount path: '{dest}' mount path must be absolute"),
        ));
    }
    if dest.split('/').any(|c| c == "..") {
        return Err(invalid(
            kind,
            format!("invalid mount path: '{dest}' must not contain '..'"),
        ));
    }
    if dest.trim_end_matches('/').is_empty() {
        return Err(invalid(kind, "destination can't be '/'"));
    }
    Ok(())
}

/// Normalises a destination the way dockerd keys mount points (no trailing `/`).
pub fn clean_dest(dest: &str) -> String {
    let t = dest.trim_end_matches('/');
    if t.is_empty() {
        "/".into()
    } else {
        t.to_string()
    }
}

/// Shared and slave propagation need the host side's mounts shared, which a container's
/// private mount namespace is not: refused rather than accepted and ignored.
fn check_propagation(p: &str) -> Result<(), String> {
    match p {
        "" | "private" | "rprivate" => Ok(()),
        "shared" | "rshared" | "slave" | "rslave" => Err(format!(
            "bind propagation {p:?} is not supported by this engine: a container's mounts are \
                private (use private or rprivate)"
        )),
        _ => Err(format!("invalid propagation mode: {p}")),
    }
}

fn check_volume_name(n: &str) -> Result<(), String> {
    if super::valid_name(n) {
        Ok(())
    } else {
        Err(super::VolError::InvalidName(n.to_string()).to_string())
    }
}

/// One `-v`/`Binds` entry: `DST` (an anonymous volume), `SRC:DST` or `SRC:DST:MODE`, where
/// SRC is an absolute host path or a volume name and MODE a comma list of `ro`/`rw`,
/// `z`/`Z`, `nocopy` (volumes) and a propagation mode.
pub fn parse_bind(raw: &str) -> Result<Planned, String> {
    let bad = || format!("invalid volume specification: '{raw}'");
    let parts: Vec<&str> = raw.split(':').collect();
    let (src, dst, mode) = match parts.as_slice() {
        [d] => ("", *d, ""),
        [s, d] if !s.is_empty() => (*s, *d, ""),
        [s, d, m] if !s.is_empty() => (*s, *d, *m),
        _ => return Err(bad()),
    };
    let is_bind = src.starts_with('/');
    let kind = if is_bind { "bind" } else { "volume" };
    check_dest(kind, dst).map_err(|e| format!("{}: {e}", bad()))?;
    let (mut rw, mut label, mut prop, mut copy) = (None, None, None, None);
    for m in mode.split(',').filter(|m| !m.is_empty()) {
        let slot = match m {
            "ro" | "rw" => &mut rw,
            "z" | "Z" => &mut label,
            "nocopy" if !is_bind => &mut copy,
            "private" | "rprivate" | "shared" | "rshared" | "slave" | "rslave" => &mut prop,
            _ => return Err(format!("invalid mode: {mode}")),
        };
        if slot.replace(m).is_some() {
            return Err(format!("invalid mode: {mode}"));
        }
    }
    if let Some(p) = prop {
        check_propagation(p)?;
    }
    let readonly = rw == Some("ro");
    let dest = clean_dest(dst);
    if is_bind {
        return Ok(Planned {
            dest,
            source: Source::Bind {
                path: PathBuf::from(src),
                create: true,
            },
            readonly,
            mode: mode.to_string(),
            propagation: prop.unwrap_or("rprivate").to_string(),
            non_recursive: false,
        });
    }
    if !src.is_empty() {
        check_volume_name(src)?;
    }
    if prop.is_some() {
        return Err(format!("invalid mode: {mode}"));
    }
    Ok(Planned {
        dest,
        source: Source::Volume {
            name: Some(src.to_string()).filter(|s| !s.is_empty()),
            nocopy: copy.is_some(),
            subpath: String::new(),
            labels: None,
            driver: String::new(),
            driver_opts: None,
        },
        readonly,
        // dockerd fills an empty mode of a named local volume with "z".
        mode: if mode.is_empty() && !src.is_empty() {
            "z".into()
        } else {
            mode.to_string()
        },
        propagation: String::new(),
        non_recursive: false,
    })
}

/// One `HostConfig.Mounts` item (`--mount`).
pub fn parse_mount(m: &Mount) -> Result<Planned, String> {
    let kind = m.kind.as_str();
    match kind {
        "bind" | "volume" | "tmpfs" => {}
        "npipe" | "cluster" | "image" => {
            return Err(invalid(kind, "mount type is not supported by this engine"))
        }
        _ => return Err(invalid(kind, "mount type unknown")),
    }
    if m.target.is_empty() {
        return Err(invalid(kind, "field Target must not be empty"));
    }
    check_dest(kind, &m.target)?;
    let not_with = |field: &str, set: bool| {
        if set {
            Err(invalid(
                kind,
                format!("field {field} must not be specified"),
            ))
        } else {
            Ok(())
        }
    };
    let dest = clean_dest(&m.target);
    match kind {
        "bind" => {
            not_with("VolumeOptions", m.volume_options.is_some())?;
            not_with("TmpfsOptions", m.tmpfs_options.is_some())?;
            if m.source.is_empty() {
                return Err(invalid(kind, "field Source must not be empty"));
            }
            if !m.source.starts_with('/') {
                return Err(invalid(
                    kind,
                    format!(
                        "invalid mount path: '{}' mount path must be absolute",
                        m.source
                    ),
                ));
            }
            let o = m.bind_options.clone().unwrap_or_default();
            check_propagation(&o.propagation)?;
            if o.read_only_force_recursive {
                return Err(invalid(
                    kind,
                    "ReadOnlyForceRecursive is not supported by this engine",
                ));
            }
            if (o.read_only_non_recursive || o.read_only_force_recursive) && !m.read_only {
                return Err(invalid(
                    kind,
                    "must be read-only to use ReadOnlyNonRecursive or ReadOnlyForceRecursive",
                ));
            }
            let path = PathBuf::from(&m.source);
            if !o.create_mountpoint && !path.exists() {
                return Err(invalid(
                    kind,
                    format!("bind source path does not exist: {}", m.source),
                ));
            }
            Ok(Planned {
                dest,
                source: Source::Bind {
                    path,
                    create: o.create_mountpoint,
                },
                readonly: m.read_only,
                mode: String::new(),
                propagation: if o.propagation.is_empty() {
                    "rprivate".into()
                } else {
                    o.propagation
                },
                non_recursive: o.non_recursive,
            })
        }
        "volume" => {
            not_with("BindOptions", m.bind_options.is_some())?;
            not_with("TmpfsOptions", m.tmpfs_options.is_some())?;
            if !m.source.is_empty() {
                check_volume_name(&m.source)?;
            }
            let o = m.volume_options.clone().unwrap_or_default();
            let sub = o.subpath.trim_end_matches('/').to_string();
            if !sub.is_empty()
                && (sub.starts_with('/') || sub.split('/').any(|c| c == ".." || c == "."))
            {
                return Err(invalid(
                    kind,
                    format!("subpath must be a relative path within the volume: {sub:?}"),
                ));
            }
            if !sub.is_empty() && m.source.is_empty() {
                return Err(invalid(
                    kind,
                    "subpath is only possible with a named volume",
                ));
            }
            let dc = o.driver_config.unwrap_or_default();
            Ok(Planned {
                dest,
                source: Source::Volume {
                    name: Some(m.source.clone()).filter(|s| !s.is_empty()),
                    nocopy: o.no_copy,
                    subpath: sub,
                    labels: o.labels,
                    driver: dc.name,
                    driver_opts: dc.options,
                },
                readonly: m.read_only,
                mode: String::new(),
                propagation: String::new(),
                non_recursive: false,
            })
        }
        _ => {
            not_with("BindOptions", m.bind_options.is_some())?;
            not_with("VolumeOptions", m.volume_options.is_some())?;
            if !m.source.is_empty() {
                return Err(invalid(kind, "field Source must not be specified"));
            }
            let o = m.tmpfs_options.clone().unwrap_or_default();
            if o.size_bytes < 0 {
                return Err(invalid(kind, "invalid tmpfs size: below zero"));
            }
            let mut opts = Vec::new();
            if o.size_bytes > 0 {
                opts.push(format!("size={}", o.size_bytes));
            }
            if o.mode != 0 {
                opts.push(format!("mode={:o}", o.mode & 0o7777));
            }
            for kv in o.options.unwrap_or_default() {
                match kv.as_slice() {
                    [k] => opts.push(k.clone()),
                    [k, v] => opts.push(format!("{k}={v}")),
                    _ => return Err(invalid(kind, format!("invalid tmpfs option {kv:?}"))),
                }
            }
            if m.read_only {
                opts.push("ro".into());
            }
            let (flags, data) = tmpfs_options(&opts.join(","))?;
            Ok(Planned {
                dest,
                source: Source::Tmpfs { flags, data },
                readonly: m.read_only,
                mode: String::new(),
                propagation: String::new(),
                non_recursive: false,
            })
        }
    }
}

/// One `HostConfig.Tmpfs` entry (`--tmpfs DST[:OPTIONS]`).
pub fn parse_tmpfs(dest: &str, opts: &str) -> Result<Planned, String> {
    check_dest("tmpfs", dest)?;
    let (flags, data) = tmpfs_options(opts)?;
    Ok(Planned {
        dest: clean_dest(dest),
        source: Source::Tmpfs { flags, data },
        readonly: flags & MsFlags::MS_RDONLY.bits() != 0,
        mode: String::new(),
        propagation: String::new(),
        non_recursive: false,
    })
}

/// A tmpfs's mount flags and data: dockerd's defaults (`noexec,nosuid,nodev`) then the
/// options given, a later flag overriding an earlier one (`exec` after the default).
pub fn tmpfs_options(opts: &str) -> Result<(u64, String), String> {
    let merged = format!("noexec,nosuid,nodev,{opts}");
    let (flags, data) = mount_options(&merged, true)?;
    Ok((flags, data))
}

/// Splits a mount option list into flags (`MsFlags` bits) and file system data. With
/// `tmpfs`, only tmpfs's own data options are accepted.
pub fn mount_options(opts: &str, tmpfs: bool) -> Result<(u64, String), String> {
    let mut flags = MsFlags::empty();
    // Data options by key, in order; a later value replaces an earlier one.
    let mut data: Vec<(String, Option<String>)> = Vec::new();
    for o in opts.split(',').map(str::trim).filter(|o| !o.is_empty()) {
        let (set, f) = match o {
            "defaults" | "private" | "rprivate" => continue,
            "shared" | "rshared" | "slave" | "rslave" | "unbindable" | "runbindable" => {
                return Err(format!(
                    "mount option {o:?} is not supported by this engine: a container's mounts are \
                        private"
                ))
            }
            "ro" => (true, MsFlags::MS_RDONLY),
            "rw" => (false, MsFlags::MS_RDONLY),
            "nosuid" => (true, MsFlags::MS_NOSUID),
            "suid" => (false, MsFlags::MS_NOSUID),
            "nodev" => (true, MsFlags::MS_NODEV),
            "dev" => (false, MsFlags::MS_NODEV),
            "noexec" => (true, MsFlags::MS_NOEXEC),
            "exec" => (false, MsFlags::MS_NOEXEC),
            "sync" => (true, MsFlags::MS_SYNCHRONOUS),
            "async" => (false, MsFlags::MS_SYNCHRONOUS),
            "dirsync" => (true, MsFlags::MS_DIRSYNC),
            "noatime" => (true, MsFlags::MS_NOATIME),
            "atime" => (false, MsFlags::MS_NOATIME),
            "nodiratime" => (true, MsFlags::MS_NODIRATIME),
            "diratime" => (false, MsFlags::MS_NODIRATIME),
            "relatime" => (true, MsFlags::MS_RELATIME),
            "norelatime" => (false, MsFlags::MS_RELATIME),
            "strictatime" => (true, MsFlags::MS_STRICTATIME),
            "nostrictatime" => (false, MsFlags::MS_STRICTATIME),
            "bind" if !tmpfs => (true, MsFlags::MS_BIND),
            "rbind" if !tmpfs => (true, MsFlags::MS_BIND | MsFlags::MS_REC),
            _ => {
                let (k, v) = match o.split_once('=') {
                    Some((k, v)) => (k, Some(v.to_string())),
                    None => (o, None),
                };
                if tmpfs {
                    let known = [
                        "size",
                        "mode",
                        "uid",
                        "gid",
                        "nr_inodes",
                        "nr_blocks",
                        "mpol",
                        "huge",
                        "inode64",
                        "inode32",
                        "noswap",
                    ];
                    if !known.contains(&k) {
                        return Err(format!("invalid tmpfs option {o:?}"));
                    }
                    if matches!(
                        k,
                        "size" | "mode" | "uid" | "gid" | "nr_inodes" | "nr_blocks"
                    ) && v.as_deref().is_none_or(str::is_empty)
                    {
                        return Err(format!("invalid tmpfs option {o:?}: a value is needed"));
                    }
                }
                data.retain(|(dk, _)| dk != k);
                data.push((k.to_string(), v));
                continue;
            }
        };
        flags.set(f, set);
    }
    let data = data
        .into_iter()
        .map(|(k, v)| match v {
            Some(v) => format!("{k}={v}"),
            None => k,
        })
        .collect::<Vec<_>>()
        .join(",");
    Ok((flags.bits(), data))
}

/// One `--volumes-from` entry: `CONTAINER[:ro|:rw]`; answers the container and whether
/// its mounts stay writable (`rw`, the default, keeps each mount's own mode).
pub fn parse_volumes_from(s: &str) -> Result<(String, bool), String> {
    match s.split_once(':') {
        None if !s.is_empty() => Ok((s.to_string(), true)),
        Some((c, "rw")) if !c.is_empty() => Ok((c.to_string(), true)),
        Some((c, "ro")) if !c.is_empty() => Ok((c.to_string(), false)),
        Some((c, m)) if !c.is_empty() => Err(format!("invalid mode: {m}")),
        _ => Err(format!("invalid volumes-from specification: '{s}'")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use docker_api::volumes::{BindOptions, TmpfsOptions, VolumeOptions};

    #[test]
    fn binds_as_dockerd_reads_them() {
        let p = parse_bind("/srv/x:/data:ro").unwrap();
        assert_eq!(
            p.source,
            Source::Bind {
                path: "/srv/x".into(),
                create: true
            }
        );
        assert!(p.readonly);
        assert_eq!(
            (p.mode.as_str(), p.propagation.as_str()),
            ("ro", "rprivate")
        );
        let p = parse_bind("/srv/x:/data/").unwrap();
        assert_eq!(p.dest, "/data");
        assert!(!p.readonly && p.mode.is_empty());
        let p = parse_bind("/srv/x:/data:rw,rprivate").unwrap();
        assert_eq!(p.propagation, "rprivate");

        let p = parse_bind("cache:/var/cache").unwrap();
        assert_eq!(p.mode, "z");
        assert!(
            matches!(&p.source, Source::Volume { name: Some(n), nocopy: false, .. } if n == "cache")
        );
        let p = parse_bind("cache:/var/cache:ro,nocopy").unwrap();
        assert!(p.readonly);
        assert!(matches!(p.source, Source::Volume { nocopy: true, .. }));
        // One part: an anonymous volume.
        let p = parse_bind("/scratch").unwrap();
        assert!(matches!(p.source, Source::Volume { name: None, .. }));
        assert_eq!(p.mode, "");

        for bad in [
            "",
            ":/x",
            "a:b:c:d",
            "/x:rel",
            "/x:/",
            "/x:/a/../b",
            "vol:/x:rx",
        ] {
            assert!(parse_bind(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_bind("/x:/y:ro,rw").unwrap_err(),
            "invalid mode: ro,rw"
        );
        assert!(parse_bind("/x:/y:nocopy").is_err());
        assert!(parse_bind("v!:/y")
            .unwrap_err()
            .contains("invalid characters"));
        let e = parse_bind("/x:/y:rshared").unwrap_err();
        assert!(e.contains("not supported"), "{e}");
        assert!(parse_bind("vol:/y:rprivate").is_err());
    }

    fn mount(kind: &str, src: &str, dst: &str) -> Mount {
        Mount {
            kind: kind.into(),
            source: src.into(),
            target: dst.into(),
            ..Default::default()
        }
    }

    #[test]
    fn mounts_as_dockerd_checks_them() {
        let p = parse_mount(&mount("bind", "/proc", "/h")).unwrap();
        assert_eq!(p.propagation, "rprivate");
        assert!(matches!(p.source, Source::Bind { create: false, .. }));
        let e = parse_mount(&mount("bind", "/no/such/dir", "/h")).unwrap_err();
        assert_eq!(
            e,
            "invalid mount config for type \"bind\": bind source path does not exist: /no/such/dir"
        );
        let mut m = mount("bind", "/no/such/dir", "/h");
        m.bind_options = Some(BindOptions {
            create_mountpoint: true,
            non_recursive: true,
            ..Default::default()
        });
        let p = parse_mount(&m).unwrap();
        assert!(p.non_recursive && matches!(p.source, Source::Bind { create: true, .. }));
        m.bind_options.as_mut().unwrap().propagation = "rslave".into();
        assert!(parse_mount(&m).unwrap_err().contains("not supported"));
        let e = parse_mount(&mount("bind", "", "/h")).unwrap_err();
        assert!(e.ends_with("field Source must not be empty"), "{e}");
        let e = parse_mount(&mount("volume", "v1", "")).unwrap_err();
        assert_eq!(
            e,
            "invalid mount config for type \"volume\": field Target must not be empty"
        );
        assert!(parse_mount(&mount("nfs", "", "/x"))
            .unwrap_err()
            .ends_with("mount type unknown"));

        let mut m = mount("volume", "v1", "/data");
        m.read_only = true;
        m.volume_options = Some(VolumeOptions {
            no_copy: true,
            subpath: "sub/dir".into(),
            ..Default::default()
        });
        let p = parse_mount(&m).unwrap();
        assert!(p.readonly && p.mode.is_empty() && p.propagation.is_empty());
        assert!(matches!(&p.source,
                Source::Volume { nocopy: true, subpath, .. } if subpath == "sub/dir"));
        m.volume_options.as_mut().unwrap().subpath = "../up".into();
        assert!(parse_mount(&m).is_err());
        let p = parse_mount(&mount("volume", "", "/anon")).unwrap();
        assert!(matches!(p.source, Source::Volume { name: None, .. }));
        let mut m = mount("volume", "v1", "/data");
        m.bind_options = Some(BindOptions::default());
        assert!(parse_mount(&m)
            .unwrap_err()
            .ends_with("field BindOptions must not be specified"));

        let mut m = mount("tmpfs", "", "/t");
        m.tmpfs_options = Some(TmpfsOptions {
            size_bytes: 1 << 20,
            mode: 0o1770,
            options: Some(vec![vec!["exec".into()]]),
        });
        let p = parse_mount(&m).unwrap();
        let Source::Tmpfs { flags, data } = &p.source else {
            panic!("{p:?}")
        };
        assert_eq!(data, "size=1048576,mode=1770");
        let f = MsFlags::from_bits_truncate(*flags);
        assert!(f.contains(MsFlags::MS_NOSUID) && !f.contains(MsFlags::MS_NOEXEC));
        assert!(parse_mount(&mount("tmpfs", "x", "/t"))
            .unwrap_err()
            .ends_with("field Source must not be specified"));
    }

    #[test]
    fn tmpfs_options_merge_over_dockerd_defaults() {
        let (f, d) = tmpfs_options("").unwrap();
        let f = MsFlags::from_bits_truncate(f);
        assert_eq!(
            f,
            MsFlags::MS_NOEXEC | MsFlags::MS_NOSUID | MsFlags::MS_NODEV
        );
        assert_eq!(d, "");
        let (f, d) = tmpfs_options("rw,exec,size=64m,mode=1777,size=3M").unwrap();
        let f = MsFlags::from_bits_truncate(f);
        assert!(!f.contains(MsFlags::MS_NOEXEC) && !f.contains(MsFlags::MS_RDONLY));
        assert_eq!(d, "mode=1777,size=3M");
        let p = parse_tmpfs("/run", "ro").unwrap();
        assert!(p.readonly);
        assert!(tmpfs_options("color=red").is_err());
        assert!(tmpfs_options("size=").is_err());
        assert!(tmpfs_options("rshared").is_err());
        assert!(parse_tmpfs("rel", "").is_err());
        let (f, d) = mount_options("bind", false).unwrap();
        assert_eq!(f, MsFlags::MS_BIND.bits());
        assert_eq!(d, "");
        let (_, d) = mount_options("addr=10.0.0.1,nfsvers=4", false).unwrap();
        assert_eq!(d, "addr=10.0.0.1,nfsvers=4");
    }

    #[test]
    fn volumes_from() {
        assert_eq!(parse_volumes_from("web").unwrap(), ("web".into(), true));
        assert_eq!(parse_volumes_from("web:ro").unwrap(), ("web".into(), false));
        assert_eq!(parse_volumes_from("web:rw").unwrap(), ("web".into(), true));
        assert_eq!(
            parse_volumes_from("web:xx").unwrap_err(),
            "invalid mode: xx"
        );
        assert!(parse_volumes_from("").is_err());
        assert!(parse_volumes_from(":ro").is_err());
    }
}
