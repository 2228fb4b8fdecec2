//! Volumes: the `/volumes` operations over the store ([`crate::volumes`]), and the
//! container side: a container's mounts planned at create (volumes-from, binds, mounts,
//! tmpfs, anonymous volumes), volumes made ready at start, anonymous volumes removed with
//! the container (`rm -v`, `--rm`). Which containers use a volume is read from their
//! mount points, so it is right after a restart without being stored twice.

use super::*;
use crate::containers::Record;
use crate::runtime::{Bind, Tmpfs};
use crate::volumes::mounts::{self, Planned, Source};
use crate::volumes::VolError;
use docker_api::volumes::{Volume, VolumeCreateRequest, VolumeEntry, ANONYMOUS_LABEL};
use docker_api::VolumeBackend;
use std::collections::BTreeMap;

fn api_err(e: VolError) -> ApiError {
    match e {
        VolError::InvalidName(_) | VolError::InvalidOption(_) => {
            ApiError::bad_request(e.to_string())
        }
        VolError::NotFound(_) => ApiError::not_found(e.to_string()),
        VolError::Io { .. } => ApiError::internal(e.to_string()),
    }
}

/// dockerd's answer for a driver that is not `local` (it would look for a plugin).
fn no_such_driver(d: &str) -> ApiError {
    ApiError::not_found(format!(
        "error looking up volume plugin {d}: plugin {d:?} not found"
    ))
}

fn is_local(driver: &str) -> bool {
    driver.is_empty() || driver == "local"
}

/// A container's mounts as planned at create.
#[derive(Debug, Default)]
pub(super) struct MountPlan {
    pub binds: Vec<Bind>,
    pub mounts: Vec<MountPoint>,
    /// Anonymous volumes made for this container (removed with it by `rm -v`).
    pub anonymous: Vec<String>,
}

impl MountPlan {
    /// Puts a mount at its destination, replacing one there (a volumes-from mount that a
    /// bind or `--mount` overrides, as in dockerd).
    fn put(&mut self, point: Option<MountPoint>, bind: Bind) {
        let dest = bind.dest.clone();
        self.binds.retain(|b| b.dest != dest);
        self.mounts.retain(|m| m.destination != dest);
        self.binds.push(bind);
        self.mounts.extend(point);
    }

    fn has(&self, dest: &str) -> bool {
        self.binds.iter().any(|b| b.dest == dest)
    }
}

impl Engine {
    /// A volume event on the engine's bus, as dockerd's: the actor is the volume's name.
    fn volume_event(&self, action: &str, name: &str) {
        crate::events::publish("volume", action, name, [("driver", "local".to_string())]);
    }

    /// Volume name → ids of the containers that mount it.
    fn volume_refs(&self) -> HashMap<String, Vec<String>> {
        let mut refs: HashMap<String, Vec<String>> = HashMap::new();
        for c in self.containers.lock().unwrap().values() {
            let r = c.rec.lock().unwrap();
            for m in r.mounts.iter().filter(|m| m.kind == "volume") {
                let ids = refs.entry(m.name.clone()).or_default();
                if !ids.contains(&r.id) {
                    ids.push(r.id.clone());
                }
            }
        }
        refs
    }

    /// A volume for a mount, created if missing; answers its name and whether it is a new
    /// anonymous one.
    fn volume_for(
        &self,
        name: &Option<String>,
        driver: &str,
        labels: &Option<BTreeMap<String, String>>,
        driver_opts: &Option<BTreeMap<String, String>>,
    ) -> ApiResult<(String, bool)> {
        if let Some(n) = name {
            if self.volumes.get(n).is_some() {
                return Ok((n.clone(), false));
            }
        }
        if !is_local(driver) {
            return Err(no_such_driver(driver));
        }
        match name {
            Some(n) => {
                let (m, new) = self
                    .volumes
                    .create(n, labels.clone(), driver_opts.clone())
                    .map_err(api_err)?;
                if new {
                    self.volume_event("create", &m.name);
                }
                Ok((m.name, false))
            }
            None => {
                let mut l = labels.clone().unwrap_or_default();
                l.insert(ANONYMOUS_LABEL.into(), String::new());
                let (m, _) = self
                    .volumes
                    .create("", Some(l), driver_opts.clone())
                    .map_err(api_err)?;
                self.volume_event("create", &m.name);
                Ok((m.name, true))
            }
        }
    }

    /// The mount point and the runtime mount of one planned mount.
    fn resolve(
        &self,
        p: Planned,
        default_driver: &str,
        plan: &mut MountPlan,
    ) -> ApiResult<(Option<MountPoint>, Bind)> {
        let rw = !p.readonly;
        Ok(match p.source {
            Source::Bind { path, create } => {
                if create && !path.exists() {
                    std::fs::create_dir_all(&path).map_err(internal("creating bind source"))?;
                }
                (
                    Some(MountPoint {
                        kind: "bind".into(),
                        source: path.display().to_string(),
                        destination: p.dest.clone(),
                        mode: p.mode,
                        rw,
                        propagation: p.propagation,
                        ..Default::default()
                    }),
                    Bind {
                        source: path,
                        dest: p.dest,
                        readonly: p.readonly,
                        non_recursive: p.non_recursive,
                        ..Default::default()
                    },
                )
            }
            Source::Volume {
                name,
                nocopy,
                subpath,
                labels,
                driver,
                driver_opts,
            } => {
                let driver = if driver.is_empty() {
                    default_driver
                } else {
                    &driver
                };
                let (name, anon) = self.volume_for(&name, driver, &labels, &driver_opts)?;
                if anon {
                    plan.anonymous.push(name.clone());
                }
                let data = self.volumes.data_path(&name);
                let source = if subpath.is_empty() {
                    data.clone()
                } else {
                    data.join(&subpath)
                };
                (
                    Some(MountPoint {
                        kind: "volume".into(),
                        name,
                        source: data.display().to_string(),
                        destination: p.dest.clone(),
                        driver: "local".into(),
                        mode: p.mode,
                        rw,
                        propagation: p.propagation,
                    }),
                    Bind {
                        source,
                        dest: p.dest,
                        readonly: p.readonly,
                        copy_up: !nocopy && subpath.is_empty(),
                        ..Default::default()
                    },
                )
            }
            Source::Tmpfs { flags, data } => (
                Some(MountPoint {
                    kind: "tmpfs".into(),
                    destination: p.dest.clone(),
                    rw,
                    ..Default::default()
                }),
                Bind {
                    dest: p.dest,
                    readonly: p.readonly,
                    tmpfs: Some(Tmpfs { flags, data }),
                    ..Default::default()
                },
            ),
        })
    }

    /// Plans a new container's mounts in dockerd's order: `--volumes-from`, then binds and
    /// `--mount` (which replace a volumes-from mount at the same place, and may not share
    /// a destination with each other or with a `--tmpfs`), then `--tmpfs`, then an
    /// anonymous volume for each of `volumes` (the image's and the request's
    /// `Config.Volumes`) not mounted otherwise. Anonymous volumes made before an error are
    /// removed again.
    pub(super) fn plan_mounts(&self, hc: &HostConfig, volumes: &[String]) -> ApiResult<MountPlan> {
        let mut plan = MountPlan::default();
        let r = self.plan_into(hc, volumes, &mut plan);
        if r.is_err() {
            for n in &plan.anonymous {
                let _ = self.volumes.remove(n);
            }
        }
        r.map(|()| plan)
    }

    fn plan_into(
        &self,
        hc: &HostConfig,
        volumes: &[String],
        plan: &mut MountPlan,
    ) -> ApiResult<()> {
        let bad = ApiError::bad_request;
        for vf in hc.volumes_from.iter().flatten() {
            let (cid, rw) = mounts::parse_volumes_from(vf).map_err(bad)?;
            let src = self.find(&cid)?.snapshot();
            for m in &src.mounts {
                let Some(b) = src.binds.iter().find(|b| b.dest == m.destination) else {
                    continue;
                };
                let mut b = b.clone();
                b.readonly = !(m.rw && rw);
                b.copy_up = false;
                let point = MountPoint {
                    mode: String::new(),
                    rw: m.rw && rw,
                    ..m.clone()
                };
                plan.put(Some(point), b);
            }
        }
        let tmpfs = hc.tmpfs.clone().unwrap_or_default();
        let tmpfs_dests: Vec<String> = tmpfs.keys().map(|d| mounts::clean_dest(d)).collect();
        let mut planned = Vec::new();
        for raw in hc.binds.iter().flatten() {
            planned.push(mounts::parse_bind(raw).map_err(bad)?);
        }
        for m in hc.mounts.iter().flatten() {
            planned.push(mounts::parse_mount(m).map_err(bad)?);
        }
        for (i, p) in planned.iter().enumerate() {
            if planned[..i].iter().any(|q| q.dest == p.dest) || tmpfs_dests.contains(&p.dest) {
                return Err(bad(format!("Duplicate mount point: {}", p.dest)));
            }
        }
        for p in planned {
            let (point, bind) = self.resolve(p, &hc.volume_driver, plan)?;
            plan.put(point, bind);
        }
        for (dest, opts) in &tmpfs {
            let p = mounts::parse_tmpfs(dest, opts).map_err(bad)?;
            let (_, bind) = self.resolve(p, "", plan)?;
            // `--tmpfs` is not among inspect's `Mounts`, as with dockerd.
            plan.put(None, bind);
        }
        for dest in volumes {
            mounts::check_dest("volume", dest).map_err(bad)?;
            let dest = mounts::clean_dest(dest);
            if plan.has(&dest) {
                continue;
            }
            let p = Planned {
                dest,
                source: Source::Volume {
                    name: None,
                    nocopy: false,
                    subpath: String::new(),
                    labels: None,
                    driver: String::new(),
                    driver_opts: None,
                },
                readonly: false,
                mode: String::new(),
                propagation: String::new(),
                non_recursive: false,
            };
            let (point, bind) = self.resolve(p, &hc.volume_driver, plan)?;
            plan.put(point, bind);
        }
        Ok(())
    }

    /// Before a start: mounts the file systems of the container's volumes that have one
    /// (tmpfs, bind, device) and checks that volume subpaths exist.
    pub(super) fn prepare_volumes(&self, r: &Record) -> ApiResult<()> {
        for m in r.mounts.iter().filter(|m| m.kind == "volume") {
            self.volumes.prepare(&m.name).map_err(|e| match e {
                VolError::NotFound(_) => {
                    ApiError::not_found(format!("error while mounting volume '{}': {e}", m.source))
                }
                e => api_err(e),
            })?;
            if let Some(b) = r.binds.iter().find(|b| b.dest == m.destination) {
                if !b.source.exists() {
                    return Err(ApiError::bad_request(format!(
                        "error while mounting volume with subpath '{}': cannot access path {}: no \
                            such file or directory",
                        m.name,
                        b.source.display()
                    )));
                }
            }
        }
        Ok(())
    }

    /// After a container is removed with `-v` (or `--rm`): its anonymous volumes that no
    /// other container uses.
    pub(super) fn remove_anonymous_volumes(&self, r: &Record) {
        let refs = self.volume_refs();
        for n in &r.anon_volumes {
            if refs.get(n).is_some_and(|ids| !ids.is_empty()) {
                continue;
            }
            match self.volumes.remove(n) {
                Ok(_) => self.volume_event("destroy", n),
                Err(VolError::NotFound(_)) => {}
                Err(e) => eprintln!("engine: removing anonymous volume {n}: {e}"),
            }
        }
    }
}

impl VolumeBackend for Engine {
    async fn volumes(&self) -> ApiResult<Vec<VolumeEntry>> {
        let refs = self.volume_refs();
        Ok(self
            .volumes
            .list()
            .into_iter()
            .map(|m| VolumeEntry {
                refs: refs.get(&m.name).cloned().unwrap_or_default(),
                volume: self.volumes.to_api(&m),
            })
            .collect())
    }

    async fn volume_create(&self, req: VolumeCreateRequest) -> ApiResult<Volume> {
        if !is_local(&req.driver) {
            return Err(no_such_driver(&req.driver));
        }
        // As dockerd: a volume created without a name is anonymous (prune takes it).
        let mut labels = req.labels;
        if req.name.is_empty() {
            labels
                .get_or_insert_with(Default::default)
                .insert(ANONYMOUS_LABEL.into(), String::new());
        }
        let (m, new) = self
            .volumes
            .create(&req.name, labels, req.driver_opts)
            .map_err(api_err)?;
        if new {
            self.volume_event("create", &m.name);
        }
        Ok(self.volumes.to_api(&m))
    }

    async fn volume_inspect(&self, name: &str) -> ApiResult<Volume> {
        let m = self
            .volumes
            .get(name)
            .ok_or_else(|| api_err(VolError::NotFound(name.into())))?;
        Ok(self.volumes.to_api(&m))
    }

    async fn volume_remove(&self, name: &str, force: bool) -> ApiResult<()> {
        if self.volumes.get(name).is_none() {
            return if force {
                Ok(())
            } else {
                Err(api_err(VolError::NotFound(name.into())))
            };
        }
        if let Some(ids) = self.volume_refs().get(name).filter(|ids| !ids.is_empty()) {
            return Err(ApiError::conflict(format!(
                "remove {name}: volume is in use - [{}]",
                ids.join(", ")
            )));
        }
        self.volumes.remove(name).map_err(api_err)?;
        self.volume_event("destroy", name);
        Ok(())
    }

    async fn volume_prune(&self, names: Vec<String>) -> ApiResult<(Vec<String>, u64)> {
        let refs = self.volume_refs();
        let (mut deleted, mut space) = (Vec::new(), 0);
        for n in names {
            if refs.get(&n).is_some_and(|ids| !ids.is_empty()) {
                continue;
            }
            match self.volumes.remove(&n) {
                Ok(size) => {
                    self.volume_event("destroy", &n);
                    space += size;
                    deleted.push(n);
                }
                Err(VolError::NotFound(_)) => {}
                Err(e) => return Err(api_err(e)),
            }
        }
        Ok((deleted, space))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::containers::Container;
    use clap::Parser;
    use docker_api::volumes::Mount;
    use std::path::Path;

    fn engine(root: &Path) -> Engine {
        let args = crate::args::Args::parse_from([
            "engine",
            "--data-root",
            root.to_str().unwrap(),
            "--bridge",
            "none",
        ]);
        Engine::open(&args).unwrap()
    }

    /// Registers a container with `plan`'s mounts, as create does.
    fn add_container(e: &Engine, id: &str, plan: MountPlan) {
        let rec = Record {
            id: id.into(),
            name: id.into(),
            binds: plan.binds,
            mounts: plan.mounts,
            anon_volumes: plan.anonymous,
            ..Default::default()
        };
        let dir = e.root.join("containers").join(id);
        std::fs::create_dir_all(&dir).unwrap();
        let c = Arc::new(Container::new(dir.clone(), dir, rec));
        e.containers.lock().unwrap().insert(id.into(), c);
    }

    fn names(e: &Engine) -> Vec<String> {
        e.volumes.list().into_iter().map(|m| m.name).collect()
    }

    #[test]
    fn a_plan_in_dockerds_order_with_anonymous_volumes_for_the_rest() {
        let root = tempfile::tempdir().unwrap();
        let e = engine(root.path());
        let host = root.path().join("host");
        let hc = HostConfig {
            binds: Some(vec!["named:/a".into(), format!("{}:/b:ro", host.display())]),
            mounts: Some(vec![Mount {
                kind: "tmpfs".into(),
                target: "/c".into(),
                ..Default::default()
            }]),
            tmpfs: Some(BTreeMap::from([("/d".into(), "size=1m".into())])),
            ..Default::default()
        };
        let plan = e
            .plan_mounts(&hc, &["/e".into(), "/a".into(), "/d".into()])
            .unwrap();
        assert!(host.is_dir(), "a -v host source is made");
        let kinds: Vec<(&str, &str)> = plan
            .mounts
            .iter()
            .map(|m| (m.destination.as_str(), m.kind.as_str()))
            .collect();
        // `--tmpfs` is not among the mount points; `/a` and `/d` are mounted otherwise.
        assert_eq!(
            kinds,
            [
                ("/a", "volume"),
                ("/b", "bind"),
                ("/c", "tmpfs"),
                ("/e", "volume")
            ]
        );
        assert_eq!(plan.binds.len(), 5);
        let d = plan.binds.iter().find(|b| b.dest == "/d").unwrap();
        assert_eq!(d.tmpfs.as_ref().unwrap().data, "size=1m");
        let a = &plan.mounts[0];
        assert_eq!(
            (a.name.as_str(), a.mode.as_str(), a.driver.as_str()),
            ("named", "z", "local")
        );
        let b = plan.binds.iter().find(|b| b.dest == "/b").unwrap();
        assert!(b.readonly && !b.copy_up);
        assert!(plan.binds.iter().find(|b| b.dest == "/e").unwrap().copy_up);
        assert_eq!(plan.anonymous.len(), 1);
        assert_eq!(plan.anonymous[0], plan.mounts[3].name);
        let mut want = vec!["named".to_string(), plan.anonymous[0].clone()];
        want.sort();
        assert_eq!(names(&e), want);
    }

    #[test]
    fn a_failed_plan_leaves_no_anonymous_volume_and_refuses_clearly() {
        let root = tempfile::tempdir().unwrap();
        let e = engine(root.path());
        let err = e
            .plan_mounts(&HostConfig::default(), &["/ok".into(), "rel".into()])
            .unwrap_err();
        assert_eq!(err.status, http::StatusCode::BAD_REQUEST);
        assert!(names(&e).is_empty(), "{:?}", names(&e));
        let dup = HostConfig {
            binds: Some(vec!["vv:/x".into()]),
            tmpfs: Some(BTreeMap::from([("/x/".into(), String::new())])),
            ..Default::default()
        };
        let err = e.plan_mounts(&dup, &[]).unwrap_err();
        assert_eq!(err.message, "Duplicate mount point: /x");
        let plugin = HostConfig {
            binds: Some(vec!["vv:/x".into()]),
            volume_driver: "flocker".into(),
            ..Default::default()
        };
        let err = e.plan_mounts(&plugin, &[]).unwrap_err();
        assert_eq!(err.status, http::StatusCode::NOT_FOUND);
        assert!(names(&e).is_empty());
    }

    #[tokio::test]
    async fn in_use_volumes_conflict_and_prune_and_rm_v_spare_them() {
        let root = tempfile::tempdir().unwrap();
        let e = engine(root.path());
        let hc = HostConfig {
            binds: Some(vec!["shared:/s".into()]),
            ..Default::default()
        };
        let plan = e.plan_mounts(&hc, &["/anon".into()]).unwrap();
        let anon = plan.anonymous[0].clone();
        add_container(&e, "c1", plan);
        let err = e.volume_remove("shared", false).await.unwrap_err();
        assert_eq!(err.status, http::StatusCode::CONFLICT);
        assert_eq!(err.message, "remove shared: volume is in use - [c1]");
        assert!(e.volume_remove("gone", true).await.is_ok());
        assert_eq!(
            e.volume_remove("gone", false).await.unwrap_err().status,
            http::StatusCode::NOT_FOUND
        );
        let listed = e.volumes().await.unwrap();
        assert!(listed.iter().all(|v| v.refs == ["c1"]));
        let (deleted, _) = e.volume_prune(names(&e)).await.unwrap();
        assert!(deleted.is_empty());

        // --volumes-from c1:ro: the same volumes, read-only, no mode; a second user.
        let vf = HostConfig {
            volumes_from: Some(vec!["c1:ro".into()]),
            ..Default::default()
        };
        let plan = e.plan_mounts(&vf, &[]).unwrap();
        assert!(plan.anonymous.is_empty());
        assert_eq!(plan.mounts.len(), 2);
        assert!(plan.mounts.iter().all(|m| !m.rw && m.mode.is_empty()));
        assert!(plan.binds.iter().all(|b| b.readonly && !b.copy_up));
        add_container(&e, "c2", plan);
        let bad = HostConfig {
            volumes_from: Some(vec!["nosuch".into()]),
            ..Default::default()
        };
        assert_eq!(
            e.plan_mounts(&bad, &[]).unwrap_err().status,
            http::StatusCode::NOT_FOUND
        );

        // rm -v of c1: its anonymous volume is still c2's.
        let c1 = e
            .containers
            .lock()
            .unwrap()
            .remove("c1")
            .unwrap()
            .snapshot();
        e.remove_anonymous_volumes(&c1);
        assert!(e.volumes.get(&anon).is_some());
        e.containers.lock().unwrap().remove("c2");
        e.remove_anonymous_volumes(&c1);
        assert!(e.volumes.get(&anon).is_none());
        e.volume_remove("shared", false).await.unwrap();
        assert!(names(&e).is_empty());
    }
}
