//! Copying into and out of containers: through /proc/PID/root while one runs, else through its
//! volumes and binds where they cover the path (as dockerd mounts them for the copy), else
//! through a temporary mount of its root.

use super::*;
use crate::runtime::Bind;
use docker_api::time::rfc3339;
use docker_api::ArchiveBackend;
use std::path::Path;

impl Engine {
    /// Where `path` of the container is visible to the engine: through /proc/PID/root while
    /// it runs, else through a temporary overlay mount of its root (unmounted on drop).
    fn in_container(&self, c: &Container, path: &str) -> ApiResult<(PathBuf, Option<RootMount>)> {
        if path.split('/').any(|s| s == "..") {
            return Err(ApiError::bad_request(format!("invalid path {path:?}")));
        }
        let rel = path.trim_start_matches('/');
        let r = c.snapshot();
        if r.pid > 0 {
            return Ok((PathBuf::from(format!("/proc/{}/root/{rel}", r.pid)), None));
        }
        if let Some((b, rest)) = under_mount(&r.binds, path) {
            // A volume with a file system of its own has it mounted only for a run.
            if let Some(m) = r
                .mounts
                .iter()
                .find(|m| m.kind == "volume" && m.destination == b.dest)
            {
                self.volumes
                    .prepare(&m.name)
                    .map_err(|e| ApiError::internal(format!("mounting volume {}: {e}", m.name)))?;
            }
            return Ok((b.source.join(rest), None));
        }
        let lowers = self
            .images
            .lowers(&r.image_id)
            .ok_or_else(|| ApiError::internal("image layers missing"))?;
        let root = c.dir.join("rootfs");
        let opts = format!(
            "lowerdir={},upperdir={},workdir={}{}",
            lowers
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(":"),
            c.data.join("upper").display(),
            c.data.join("work").display(),
            // A layer used volatile is refused without it.
            if self.volatile_layers {
                ",volatile"
            } else {
                ""
            }
        );
        nix::mount::mount(
            Some("overlay"),
            &root,
            Some("overlay"),
            nix::mount::MsFlags::empty(),
            Some(opts.as_str()),
        )
        .map_err(|e| {
            ApiError::conflict(format!("cannot mount the stopped container's root: {e}"))
        })?;
        Ok((root.join(rel), Some(RootMount(root, false))))
    }
}

/// The mount of a stopped container that covers `path` (the deepest one), and the rest of the
/// path below it. tmpfs mounts are not: their content lives only while the container runs.
fn under_mount<'a>(binds: &'a [Bind], path: &str) -> Option<(&'a Bind, PathBuf)> {
    let parts = |p: &str| -> Vec<String> {
        p.split('/')
            .filter(|s| !s.is_empty() && *s != ".")
            .map(str::to_string)
            .collect()
    };
    let want = parts(path);
    binds
        .iter()
        .filter(|b| b.tmpfs.is_none())
        .filter_map(|b| {
            let dest = parts(&b.dest);
            (!dest.is_empty() && want.starts_with(&dest)).then_some((b, dest.len()))
        })
        .max_by_key(|(_, n)| *n)
        .map(|(b, n)| (b, want[n..].iter().collect()))
}

/// A temporary mount of a stopped container's root (its mount point removed after, when
/// made for it).
pub struct RootMount(PathBuf, bool);

impl RootMount {
    pub fn removing(dir: PathBuf) -> Self {
        RootMount(dir, true)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for RootMount {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
        if self.1 {
            let _ = std::fs::remove_dir(&self.0);
        }
    }
}

impl ArchiveBackend for Engine {
    async fn archive_stat(&self, id: &str, path: &str) -> ApiResult<PathStat> {
        let c = self.find(id)?;
        let (p, _m) = self.in_container(&c, path)?;
        stat_of(&p, path)
    }

    async fn archive_get(
        &self,
        id: &str,
        path: &str,
    ) -> ApiResult<(PathStat, mpsc::Receiver<Bytes>)> {
        let c = self.find(id)?;
        let (p, m) = self.in_container(&c, path)?;
        let stat = stat_of(&p, path)?;
        let (tx, rx) = mpsc::channel(16);
        let name = stat.name.clone();
        std::thread::spawn(move || {
            let _m = m;
            let mut b = tar::Builder::new(docker_api::body::ChannelWriter(tx));
            b.follow_symlinks(false);
            let r = if p.is_dir() {
                b.append_dir_all(&name, &p)
            } else {
                b.append_path_with_name(&p, &name)
            };
            if r.is_ok() {
                let _ = b.finish();
            }
        });
        Ok((stat, rx))
    }

    async fn archive_put(&self, id: &str, path: &str, tar: Bytes) -> ApiResult<()> {
        let c = self.find(id)?;
        let (p, m) = self.in_container(&c, path)?;
        if !p.is_dir() {
            return Err(ApiError::bad_request(format!(
                "extraction point is not a directory: {path}"
            )));
        }
        tokio::task::spawn_blocking(move || {
            let _m = m;
            crate::unpack::unpack(&tar[..], &p, &[])
        })
        .await
        .map_err(internal("copy task"))?
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
        Ok(())
    }
}

fn stat_of(p: &Path, shown: &str) -> ApiResult<PathStat> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::symlink_metadata(p).map_err(|_| {
        ApiError::not_found(format!("Could not find the file {shown} in container"))
    })?;
    let mut mode = m.mode() & 0o777;
    if m.is_dir() {
        mode |= 1 << 31;
    }
    if m.file_type().is_symlink() {
        mode |= 1 << 27;
    }
    Ok(PathStat {
        name: Path::new(shown)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "/".into()),
        size: m.len() as i64,
        mode,
        mtime: rfc3339(m.mtime() as i128 * 1_000_000_000),
        link_target: std::fs::read_link(p)
            .map(|l| l.display().to_string())
            .unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bind(dest: &str, source: &str, tmpfs: bool) -> Bind {
        Bind {
            source: source.into(),
            dest: dest.into(),
            tmpfs: tmpfs.then(Default::default),
            ..Default::default()
        }
    }

    #[test]
    fn a_path_under_a_volume_is_found_in_the_volume() {
        let binds = [
            bind("/vol1", "/v/a/_data", false),
            bind("/vol1/deeper", "/v/b/_data", false),
            bind("/run", "", true),
        ];
        let at = |p: &str| under_mount(&binds, p).map(|(b, rest)| b.source.join(rest));
        assert_eq!(at("/vol1/data.txt"), Some("/v/a/_data/data.txt".into()));
        assert_eq!(at("/vol1"), Some("/v/a/_data".into()));
        assert_eq!(at("/vol1/./"), Some("/v/a/_data".into()));
        assert_eq!(at("/vol1/deeper/x"), Some("/v/b/_data/x".into()));
        // A sibling with the same prefix is not under it; tmpfs content is not kept.
        assert_eq!(at("/vol10/x"), None);
        assert_eq!(at("/run/x"), None);
        assert_eq!(at("/"), None);
    }
}
