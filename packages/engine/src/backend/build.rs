//! `docker build`: the engine's [`BuildBackend`] and the [`Host`] the builder in
//! [`crate::build`] runs on (RUN steps are containers of this engine; layers and images go
//! to its store, as a commit's do).

use super::*;
use crate::build::{self, Host, Root, RunSpec, Tx};
use crate::images::diff_tar;
use docker_api::build::{BuildMessage, BuildOptions, BuildPruneOptions, BuildPruneReport};
use docker_api::{BuildBackend, ImageBackend};
use serde_json::{json, Value};

/// Removes a scratch directory when dropped.
struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Engine {
    fn build_dir(&self) -> PathBuf {
        self.root.join("build")
    }

    fn build_tmp(&self) -> PathBuf {
        let d = self.build_dir().join("tmp");
        let _ = std::fs::create_dir_all(&d);
        d
    }

    fn auth_for(&self, name: &str, o: &BuildOptions) -> Option<docker_api::RegistryAuth> {
        let host = registry::Reference::parse(name).ok()?.registry;
        o.auth
            .iter()
            .find(|(k, _)| {
                let k = k
                    .trim_start_matches("https://")
                    .trim_start_matches("http://");
                k.split('/').next() == Some(host.as_str())
            })
            .map(|(_, a)| a.clone())
    }
}

impl Host for Engine {
    async fn resolve(
        &self,
        name: &str,
        pull: bool,
        o: &BuildOptions,
        tx: &Tx,
    ) -> Result<String, String> {
        if !pull {
            if let Ok(id) = self.resolve_image(name) {
                return Ok(id);
            }
        }
        let mut rx = self
            .image_pull(name, "", self.auth_for(name, o))
            .await
            .map_err(|e| e.message)?;
        let mut failed = None;
        while let Some(m) = rx.recv().await {
            if let Some(e) = &m.error {
                failed = Some(e.clone());
                continue;
            }
            if !o.quiet {
                let _ = tx.send(BuildMessage::from(m)).await;
            }
        }
        if let Some(e) = failed {
            return Err(e);
        }
        self.resolve_image(name).map_err(|e| e.message)
    }

    fn resolve_local(&self, name: &str) -> Option<String> {
        self.resolve_image(name).ok()
    }

    fn config(&self, id: &str) -> Option<Value> {
        serde_json::from_slice(&self.images.config_bytes(id)?).ok()
    }

    fn has_layers(&self, id: &str) -> bool {
        self.images.lowers(id).is_some()
    }

    async fn run(
        &self,
        id: &str,
        spec: &RunSpec,
        o: &BuildOptions,
        tx: &Tx,
        announce: &(dyn Fn(&str) + Sync),
    ) -> Result<(i64, String), String> {
        let network = match o.network_mode.as_str() {
            "" | "default" => "",
            n => n,
        };
        let mut hc = json!({ "NetworkMode": network });
        if !o.extra_hosts.is_empty() {
            hc["ExtraHosts"] = json!(o.extra_hosts);
        }
        for (k, v) in [
            ("ShmSize", o.shm_size),
            ("Memory", o.memory),
            ("MemorySwap", o.memswap),
            ("CpuShares", o.cpu_shares),
            ("CpuPeriod", o.cpu_period),
            ("CpuQuota", o.cpu_quota),
        ] {
            if let Some(v) = v {
                hc[k] = json!(v);
            }
        }
        if !o.cpuset_cpus.is_empty() {
            hc["CpusetCpus"] = json!(o.cpuset_cpus);
        }
        let req = json!({
            "Image": id,
            "Cmd": spec.argv,
            "Entrypoint": [],
            "Env": spec.env,
            "WorkingDir": spec.workdir,
            "User": spec.user,
            "AttachStdout": true,
            "AttachStderr": true,
            "HostConfig": hc,
        });
        let req: ContainerCreateRequest =
            serde_json::from_value(req).map_err(|e| format!("build step container: {e}"))?;
        let c = self
            .container_create(None, req)
            .await
            .map_err(|e| format!("creating the build step's container: {}", e.message))?;
        self.build_container(&o.build_id, &c.id);
        announce(&c.id);
        let opts = docker_api::AttachOptions {
            stream: true,
            stdin: false,
            stdout: true,
            stderr: true,
            logs: false,
        };
        let io = match self.container_attach(&c.id, opts).await {
            Ok(io) => io,
            Err(e) => {
                self.remove_container(&c.id).await;
                return Err(e.message);
            }
        };
        if let Err(e) = self.container_start(&c.id).await {
            self.remove_container(&c.id).await;
            return Err(format!("starting the build step: {}", e.message));
        }
        let mut out = io.output;
        while let Some(f) = out.recv().await {
            if o.quiet {
                continue;
            }
            let text = String::from_utf8_lossy(&f.data).into_owned();
            // stderr as dockerd's classic builder marks it: in red.
            let text = match f.stream {
                docker_api::StdStream::Stderr => format!("\x1b[91m{text}\x1b[0m"),
                _ => text,
            };
            let _ = tx.send(BuildMessage::stream(text)).await;
        }
        let w = self
            .container_wait(&c.id, docker_api::WaitCondition::NotRunning)
            .await
            .map_err(|e| e.message)?;
        Ok((w.status_code, c.id))
    }

    async fn commit_layer(&self, container: &str) -> Result<String, String> {
        let c = self.find(container).map_err(|e| e.message)?;
        let image = c.snapshot().image_id;
        let lowers = self.images.lowers(&image).unwrap_or_default();
        let upper = c.data.join("upper");
        let me = self.arc().ok_or("engine is shutting down")?;
        tokio::task::spawn_blocking(move || -> Result<String, String> {
            let t = me.images.scratch("build-run-tar");
            let r = (|| {
                let f = std::fs::File::create(&t).map_err(|e| e.to_string())?;
                let mut f = diff_tar(&upper, std::io::BufWriter::new(f))
                    .map_err(|e| format!("reading the step's changes: {e}"))?;
                std::io::Write::flush(&mut f).map_err(|e| e.to_string())?;
                drop(f);
                me.images.add_layer(&t, &lowers).map_err(|e| e.to_string())
            })();
            let _ = std::fs::remove_file(&t);
            r
        })
        .await
        .map_err(|e| e.to_string())?
    }

    async fn remove_container(&self, container: &str) {
        let _ = self.container_remove(container, true, true).await;
        self.forget_build_container(container);
    }

    fn add_layer(&self, tar: &Path, parent: &str) -> Result<String, String> {
        let lowers = if parent.is_empty() {
            Vec::new()
        } else {
            self.images.lowers(parent).unwrap_or_default()
        };
        self.images
            .add_layer(tar, &lowers)
            .map_err(|e| e.to_string())
    }

    fn store(&self, config: &[u8]) -> Result<String, String> {
        self.images.add_config(config).map_err(|e| e.to_string())
    }

    fn tag(&self, id: &str, tag: &str) -> Result<(), String> {
        let r = registry::Reference::parse(tag).map_err(|e| format!("invalid tag {tag:?}: {e}"))?;
        let t = r.tagged().ok_or_else(|| format!("invalid tag {tag:?}"))?;
        self.images.tag(id, &t).map_err(|e| e.to_string())?;
        self.image_event("tag", id, &t);
        Ok(())
    }

    fn root(&self, id: &str) -> Result<Root, String> {
        let lowers = if id.is_empty() {
            Vec::new()
        } else {
            self.images
                .lowers(id)
                .ok_or_else(|| format!("the layers of image {id} are missing"))?
        };
        if lowers.len() == 1 {
            // One layer is its own root (read, never written).
            return Ok(Root {
                path: lowers[0].clone(),
                _guard: None,
            });
        }
        let dir = self.build_tmp().join(format!("root-{}", random_id()));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        if lowers.is_empty() {
            return Ok(Root {
                path: dir.clone(),
                _guard: Some(Box::new(RemoveDir(dir))),
            });
        }
        // Read-only overlay of the layers (no upper directory: nothing can change them).
        let opts = format!(
            "lowerdir={}",
            lowers
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(":")
        );
        nix::mount::mount(
            Some("overlay"),
            &dir,
            Some("overlay"),
            nix::mount::MsFlags::MS_RDONLY,
            Some(opts.as_str()),
        )
        .map_err(|e| {
            let _ = std::fs::remove_dir(&dir);
            format!("cannot mount the image's root for the build: {e}")
        })?;
        Ok(Root {
            path: dir.clone(),
            _guard: Some(Box::new(super::archive::RootMount::removing(dir))),
        })
    }

    fn scratch(&self) -> PathBuf {
        self.build_tmp()
    }

    async fn download(&self, url: &str, dir: &Path) -> Result<PathBuf, String> {
        let name = url_file_name(url)
            .ok_or_else(|| format!("cannot determine filename from url: {url}"))?;
        let path = dir.join(name);
        let modified = fetch(url, &path).await?;
        let f = std::fs::File::options()
            .write(true)
            .open(&path)
            .map_err(|e| e.to_string())?;
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(|e| e.to_string())?;
        if let Some(t) = modified {
            f.set_modified(t).map_err(|e| e.to_string())?;
        }
        Ok(path)
    }

    fn cache_file(&self) -> PathBuf {
        let _ = std::fs::create_dir_all(self.build_dir());
        self.build_dir().join("cache.json")
    }
}

/// A build under way: how to stop it, and its RUN step's container while one runs.
pub struct Running {
    cancel: tokio::sync::watch::Sender<bool>,
    containers: Vec<String>,
}

/// Takes a build off the running list when its task ends, however it ends.
struct Deregister(Arc<Engine>, String);

impl Drop for Deregister {
    fn drop(&mut self) {
        self.0
            .builds
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&self.1);
    }
}

impl Engine {
    /// Notes a RUN step's container of build `build_id` (until it is removed; a cancel
    /// removes those still there, the kept ones of `rm=false` too).
    fn build_container(&self, build_id: &str, container: &str) {
        let mut b = self.builds.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = b.get_mut(build_id) {
            r.containers.push(container.to_string());
        }
    }

    fn forget_build_container(&self, container: &str) {
        let mut b = self.builds.lock().unwrap_or_else(|p| p.into_inner());
        for r in b.values_mut() {
            r.containers.retain(|c| c != container);
        }
    }

    /// Spools and unpacks the context, then runs the build (errors as messages on `tx`).
    async fn build_from_body(&self, opts: &BuildOptions, mut tar: mpsc::Receiver<Bytes>, tx: &Tx) {
        let tmp = self.build_tmp();
        let n = random_id();
        let raw = tmp.join(format!("context-{n}.tar"));
        let ctx = tmp.join(format!("context-{n}"));
        let _clean = (RemoveDir(ctx.clone()), RemoveFile(raw.clone()));
        let got = match &opts.remote {
            Some(url) => fetch(url, &raw).await.map(|_| ()),
            None => async {
                use tokio::io::AsyncWriteExt;
                let mut f = tokio::fs::File::create(&raw).await?;
                while let Some(c) = tar.recv().await {
                    f.write_all(&c).await?;
                }
                f.flush().await
            }
            .await
            .map_err(|e| format!("storing the build context: {e}")),
        };
        if let Err(e) = got {
            let _ = tx.send(BuildMessage::error(1, e)).await;
            return;
        }
        let (raw2, ctx2) = (raw.clone(), ctx.clone());
        // A remote that is not an archive is the Dockerfile itself, with no context (as
        // dockerd's plain-text remote).
        let plain = opts.remote.is_some() && !build::copy::is_archive(&raw);
        let df = build::context::clean(&opts.dockerfile);
        let unpacked = tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&ctx2).map_err(|e| e.to_string())?;
            if plain {
                let to = ctx2.join(&df);
                if let Some(p) = to.parent() {
                    std::fs::create_dir_all(p).map_err(|e| e.to_string())?;
                }
                return std::fs::copy(&raw2, to)
                    .map(|_| ())
                    .map_err(|e| e.to_string());
            }
            let f = std::fs::File::open(&raw2).map_err(|e| e.to_string())?;
            if f.metadata().map(|m| m.len()).unwrap_or(0) == 0 {
                return Ok(());
            }
            build::context::unpack(f, &ctx2)
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
        if let Err(e) = unpacked {
            let _ = tx.send(BuildMessage::error(1, e)).await;
            return;
        }
        if let Err(f) = build::build(self, opts, &ctx, tx).await {
            let _ = tx.send(BuildMessage::error(f.code, f.message)).await;
        }
    }
}

impl BuildBackend for Engine {
    async fn build(
        &self,
        mut opts: BuildOptions,
        tar: mpsc::Receiver<Bytes>,
    ) -> ApiResult<mpsc::Receiver<BuildMessage>> {
        if let Some(r) = &opts.remote {
            if is_git(r) {
                return Err(ApiError::bad_request(format!(
                    "git build contexts ({r}) are not supported by this engine (it has no \
                     git): clone the repository and build from the directory"
                )));
            }
            if !build::copy::is_url(r) {
                return Err(ApiError::bad_request(format!(
                    "unable to prepare context: remote {r:?} is not an http or https URL"
                )));
            }
        }
        let me = self
            .arc()
            .ok_or_else(|| ApiError::internal("engine is shutting down"))?;
        if opts.build_id.is_empty() {
            opts.build_id = random_id();
        }
        let (cancel, mut cancelled) = tokio::sync::watch::channel(false);
        {
            let mut b = self.builds.lock().unwrap_or_else(|p| p.into_inner());
            if b.contains_key(&opts.build_id) {
                return Err(ApiError::conflict(format!(
                    "a build with id {} is already running",
                    opts.build_id
                )));
            }
            let r = Running {
                cancel,
                containers: Vec::new(),
            };
            b.insert(opts.build_id.clone(), r);
        }
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            let _gone = Deregister(me.clone(), opts.build_id.clone());
            // The build stops at `POST /build/cancel` or when the client goes away (as
            // dockerd's): the step's container is removed, nothing is tagged.
            let stop = async {
                tokio::select! {
                    _ = cancelled.wait_for(|c| *c) => "the build was cancelled",
                    () = tx.closed() => "the client went away",
                }
            };
            tokio::select! {
                () = me.build_from_body(&opts, tar, &tx) => {}
                why = stop => {
                    let live = me
                        .builds
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get_mut(&opts.build_id)
                        .map(|r| std::mem::take(&mut r.containers))
                        .unwrap_or_default();
                    for c in live {
                        Host::remove_container(&*me, &c).await;
                    }
                    let _ = tx.send(BuildMessage::error(1, why)).await;
                }
            }
        });
        Ok(rx)
    }

    async fn build_cancel(&self, id: &str) -> ApiResult<()> {
        let b = self.builds.lock().unwrap_or_else(|p| p.into_inner());
        match b.get(id) {
            Some(r) => {
                let _ = r.cancel.send(true);
                Ok(())
            }
            None => Err(ApiError::not_found(format!(
                "no build with id {id:?} is running"
            ))),
        }
    }

    async fn build_prune(&self, _o: BuildPruneOptions) -> ApiResult<BuildPruneReport> {
        let deleted = build::cache_clear(&self.cache_file());
        Ok(BuildPruneReport {
            caches_deleted: deleted,
            space_reclaimed: 0,
        })
    }
}

/// moby's `IsGitURL`: what it would clone rather than download.
fn is_git(r: &str) -> bool {
    r.starts_with("git://")
        || r.starts_with("git@")
        || r.starts_with("github.com/")
        || (build::copy::is_url(r) && (r.ends_with(".git") || r.contains(".git#")))
}

/// The last segment of a URL's path (without query or fragment), if any.
fn url_file_name(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let path = rest.split(['?', '#']).next()?;
    let (_, path) = path.split_once('/')?;
    let name = path.rsplit('/').next()?;
    (!name.is_empty() && name != "." && name != "..").then(|| name.to_string())
}

/// GETs `url` into the file `to`; its Last-Modified, if it sent one.
async fn fetch(url: &str, to: &Path) -> Result<Option<std::time::SystemTime>, String> {
    use tokio::io::AsyncWriteExt;
    let client = reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(30))
        .build()
        .map_err(|e| e.to_string())?;
    let mut r = client
        .get(url)
        .send()
        .await
        .map_err(|e| format!("failed to GET {url}: {e}"))?;
    if !r.status().is_success() {
        return Err(format!("failed to GET {url} with status {}", r.status()));
    }
    let modified = r
        .headers()
        .get(http::header::LAST_MODIFIED)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok());
    let mut f = tokio::fs::File::create(to)
        .await
        .map_err(|e| format!("{}: {e}", to.display()))?;
    while let Some(c) = r.chunk().await.map_err(|e| format!("reading {url}: {e}"))? {
        f.write_all(&c).await.map_err(|e| e.to_string())?;
    }
    f.flush().await.map_err(|e| e.to_string())?;
    Ok(modified)
}

struct RemoveFile(PathBuf);

impl Drop for RemoveFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An engine on the recording runtime with `busybox:latest` (one layer with one file).
    async fn engine(root: &Path) -> Arc<Engine> {
        use clap::Parser;
        let args = crate::args::Args::parse_from([
            "engine".as_ref(),
            "--data-root".as_ref(),
            root.as_os_str(),
            "--bridge".as_ref(),
            "none".as_ref(),
        ]);
        let rt = Arc::new(crate::runtime::fake::Fake::default());
        let e = Arc::new(Engine::with_runtime(&args, rt).unwrap());
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(3);
        h.set_mode(0o644);
        b.append_data(&mut h, "etc/passwd", &b"x:\n"[..]).unwrap();
        let t = root.join("base.tar");
        std::fs::write(&t, b.into_inner().unwrap()).unwrap();
        let d = e.images.add_layer(&t, &[]).unwrap();
        let c = json!({
            "architecture": "amd64", "os": "linux", "created": "2024-01-01T00:00:00Z",
            "config": {"Cmd": ["sh"], "Env": ["PATH=/bin"], "OnBuild": ["LABEL from=onbuild"]},
            "rootfs": {"type": "layers", "diff_ids": [d]},
            "history": [{"created": "2024-01-01T00:00:00Z", "created_by": "ADD base"}],
        });
        let id = e.images.add_config(c.to_string().as_bytes()).unwrap();
        e.images.tag(&id, "busybox:latest").unwrap();
        e.clone().restore().await;
        e
    }

    async fn run(e: &Engine, ctx: &Path, o: &BuildOptions) -> (Result<String, String>, String) {
        let (tx, mut rx) = mpsc::channel(1000);
        let r = build::build(e, o, ctx, &tx).await.map_err(|f| f.message);
        drop(tx);
        let mut out = String::new();
        while let Some(m) = rx.recv().await {
            out.push_str(m.stream.as_deref().unwrap_or(""));
        }
        (r, out)
    }

    #[tokio::test]
    async fn metadata_and_copy_steps_cache_and_rebuild_on_change() {
        let d = tempfile::tempdir().unwrap();
        let e = engine(&d.path().join("root")).await;
        let ctx = d.path().join("ctx");
        std::fs::create_dir_all(&ctx).unwrap();
        std::fs::write(
            ctx.join("Dockerfile"),
            "FROM busybox\nARG V=1\nCOPY f /w/\nENV A=$V\nEXPOSE 80\nENTRYPOINT [\"x\"]\n",
        )
        .unwrap();
        std::fs::write(ctx.join("f"), b"one").unwrap();
        let mut o = BuildOptions {
            dockerfile: "Dockerfile".into(),
            tags: vec!["out".into()],
            rm: true,
            ..Default::default()
        };
        o.buildargs.insert("V".into(), Some("2".into()));
        o.buildargs.insert("UNUSED".into(), Some("x".into()));
        let (id, out) = run(&e, &ctx, &o).await;
        let id = id.unwrap();
        assert!(out.contains("Step 1/6 : FROM busybox"), "{out}");
        assert!(out.contains("# Executing 1 build trigger"), "{out}");
        assert!(
            out.contains("[Warning] One or more build-args [UNUSED]"),
            "{out}"
        );
        assert!(out.contains("Successfully tagged out:latest"), "{out}");
        assert_eq!(e.resolve_image("out").unwrap(), id);
        let cfg = Host::config(&*e, &id).unwrap();
        assert_eq!(cfg["config"]["Env"], json!(["PATH=/bin", "A=2"]));
        assert_eq!(cfg["config"]["Entrypoint"], json!(["x"]));
        assert_eq!(
            cfg["config"]["Cmd"],
            Value::Null,
            "ENTRYPOINT resets an inherited CMD"
        );
        assert_eq!(cfg["config"]["ExposedPorts"], json!({"80/tcp": {}}));
        assert_eq!(cfg["config"]["Labels"], json!({"from": "onbuild"}));
        assert_eq!(cfg["config"]["OnBuild"], Value::Null);
        assert_eq!(cfg["rootfs"]["diff_ids"].as_array().unwrap().len(), 2);
        let top = e.images.lowers(&id).unwrap();
        assert_eq!(std::fs::read(top[0].join("w/f")).unwrap(), b"one");
        // Again: every step from the cache, the same image.
        let (again, out) = run(&e, &ctx, &o).await;
        assert_eq!(again.unwrap(), id);
        assert_eq!(out.matches("Using cache").count(), 6, "{out}");
        // --no-cache makes the steps anew.
        o.nocache = true;
        let (_, out) = run(&e, &ctx, &o).await;
        assert_eq!(out.matches("Using cache").count(), 0, "{out}");
        o.nocache = false;
        // A changed file: the steps before its COPY are cached, the rest made anew.
        std::fs::write(ctx.join("f"), b"two").unwrap();
        let (changed, out) = run(&e, &ctx, &o).await;
        let changed = changed.unwrap();
        assert_ne!(changed, id);
        assert_eq!(
            out.matches("Using cache").count(),
            2,
            "ONBUILD's LABEL and ARG: {out}"
        );
        // Prune empties the cache.
        let r = e.build_prune(BuildPruneOptions::default()).await.unwrap();
        assert!(!r.caches_deleted.is_empty());
        let (_, out) = run(&e, &ctx, &o).await;
        assert_eq!(out.matches("Using cache").count(), 0, "{out}");
    }

    #[tokio::test]
    async fn errors_name_the_problem() {
        let d = tempfile::tempdir().unwrap();
        let e = engine(&d.path().join("root")).await;
        let ctx = d.path().join("ctx");
        std::fs::create_dir_all(&ctx).unwrap();
        let o = BuildOptions {
            dockerfile: "Dockerfile".into(),
            ..Default::default()
        };
        let (r, _) = run(&e, &ctx, &o).await;
        assert_eq!(
            r.unwrap_err(),
            "Cannot locate specified Dockerfile: Dockerfile"
        );
        for (df, want) in [
            ("FROM busybox\nBOGUS x\n", "unknown instruction: BOGUS"),
            ("FROM scratch\nRUN true\n", "RUN on a scratch image"),
            (
                "FROM busybox\nCOPY missing /\n",
                "file not found in build context",
            ),
            ("FROM nosuch:image\n", "nosuch"),
            ("FROM busybox AS a\n", "failed to reach build target zz"),
        ] {
            std::fs::write(ctx.join("Dockerfile"), df).unwrap();
            let mut o = o.clone();
            if df.contains("AS a") {
                o.target = "zz".into();
            }
            let (r, out) = run(&e, &ctx, &o).await;
            let m = r.unwrap_err();
            assert!(m.contains(want), "{df:?}: {m}\n{out}");
        }
        // FROM scratch with labels from the query only: an image of no layers.
        std::fs::write(ctx.join("Dockerfile"), "FROM scratch\n").unwrap();
        let mut o = o.clone();
        o.labels.insert("test".into(), "OK".into());
        let (r, _) = run(&e, &ctx, &o).await;
        let cfg = Host::config(&*e, &r.unwrap()).unwrap();
        assert_eq!(cfg["config"]["Labels"], json!({"test": "OK"}));
    }

    fn serve(files: Vec<(&'static str, Vec<u8>)>) -> String {
        format!("http://{}", test_support::http::serve_files(files).unwrap())
    }

    /// Every message of a build started through the API, until its stream ends.
    async fn drain(mut rx: mpsc::Receiver<BuildMessage>) -> (String, Option<String>) {
        let (mut out, mut err) = (String::new(), None);
        while let Some(m) = rx.recv().await {
            out.push_str(m.stream.as_deref().unwrap_or(""));
            err = err.or(m.error);
        }
        (out, err)
    }

    #[tokio::test]
    async fn add_of_a_url_and_a_remote_dockerfile() {
        let d = tempfile::tempdir().unwrap();
        let e = engine(&d.path().join("root")).await;
        let base = serve(vec![("/hello.txt", b"hi\n".to_vec())]);
        let df = format!("FROM busybox\nADD {base}/hello.txt /w/\n");
        let base = serve(vec![
            ("/hello.txt", b"hi\n".to_vec()),
            ("/Dockerfile", df.clone().into_bytes()),
        ]);
        let ctx = d.path().join("ctx");
        std::fs::create_dir_all(&ctx).unwrap();
        std::fs::write(ctx.join("Dockerfile"), &df).unwrap();
        let o = BuildOptions {
            dockerfile: "Dockerfile".into(),
            ..Default::default()
        };
        let (id, out) = run(&e, &ctx, &o).await;
        let id = id.unwrap_or_else(|m| panic!("{m}\n{out}"));
        let top = &e.images.lowers(&id).unwrap()[0];
        let f = top.join("w/hello.txt");
        assert_eq!(std::fs::read(&f).unwrap(), b"hi\n");
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(&f).unwrap();
        assert_eq!(m.mode() & 0o777, 0o600);
        // Downloaded again next time, and the same content is a cache hit.
        let (again, out) = run(&e, &ctx, &o).await;
        assert_eq!(again.unwrap(), id);
        assert_eq!(
            out.matches("Using cache").count(),
            2,
            "ONBUILD and ADD: {out}"
        );
        // The same Dockerfile as a remote: a plain file is the Dockerfile.
        let mut r = o.clone();
        r.remote = Some(format!("{base}/Dockerfile"));
        let (_tx, body) = mpsc::channel(1);
        let (out, err) = drain(e.build(r.clone(), body).await.unwrap()).await;
        assert_eq!(err, None, "{out}");
        assert!(
            out.contains(&format!("Successfully built {}", short_id(&id))),
            "{out}"
        );
        // What is not there, and git, say so.
        r.remote = Some(format!("{base}/nothing"));
        let (_tx, body) = mpsc::channel(1);
        let (_, err) = drain(e.build(r.clone(), body).await.unwrap()).await;
        assert!(err.unwrap().contains("404"));
        r.remote = Some("https://example.invalid/repo.git".into());
        let (_tx, body) = mpsc::channel(1);
        assert!(e.build(r, body).await.unwrap_err().message.contains("git"));
        assert_eq!(
            url_file_name("http://h/a/b.txt?x=1").as_deref(),
            Some("b.txt")
        );
        assert_eq!(url_file_name("http://h/"), None);
        assert_eq!(url_file_name("http://h"), None);
    }

    fn short_id(id: &str) -> &str {
        &id[7..19]
    }

    #[tokio::test]
    async fn cancel_stops_a_running_step_and_removes_its_container() {
        let d = tempfile::tempdir().unwrap();
        let e = engine(&d.path().join("root")).await;
        let mut b = tar::Builder::new(Vec::new());
        let df = b"FROM busybox\nRUN sleep 1000\n";
        let mut h = tar::Header::new_gnu();
        h.set_size(df.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, "Dockerfile", &df[..]).unwrap();
        let (body_tx, body) = mpsc::channel(1);
        body_tx.send(b.into_inner().unwrap().into()).await.unwrap();
        drop(body_tx);
        let o = BuildOptions {
            dockerfile: "Dockerfile".into(),
            build_id: "b1".into(),
            rm: true,
            ..Default::default()
        };
        let mut rx = e.build(o.clone(), body).await.unwrap();
        let (_tx2, body2) = mpsc::channel(1);
        let dup = e.build(o, body2).await.unwrap_err();
        assert_eq!(dup.status, http::StatusCode::CONFLICT);
        loop {
            let m = rx.recv().await.expect("the step starts");
            assert_eq!(m.error, None);
            if m.stream.as_deref().unwrap_or("").contains("Running in") {
                break;
            }
        }
        assert_eq!(e.containers.lock().unwrap().len(), 1);
        e.build_cancel("b1").await.unwrap();
        let (_, err) = drain(rx).await;
        assert_eq!(err.as_deref(), Some("the build was cancelled"));
        assert!(e.containers.lock().unwrap().is_empty());
        assert!(e.builds.lock().unwrap().is_empty());
        let gone = e.build_cancel("b1").await.unwrap_err();
        assert_eq!(gone.status, http::StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn rmi_takes_the_steps_with_it_and_the_cache_misses_them() {
        let d = tempfile::tempdir().unwrap();
        let e = engine(&d.path().join("root")).await;
        let ctx = d.path().join("ctx");
        std::fs::create_dir_all(&ctx).unwrap();
        std::fs::write(ctx.join("Dockerfile"), "FROM busybox\nCOPY f /\nENV A=1\n").unwrap();
        std::fs::write(ctx.join("f"), b"x").unwrap();
        let o = BuildOptions {
            dockerfile: "Dockerfile".into(),
            tags: vec!["t1".into()],
            ..Default::default()
        };
        let (id, _) = run(&e, &ctx, &o).await;
        let id = id.unwrap();
        let copy_step = Host::config(&*e, &id).unwrap()["parent"]
            .as_str()
            .unwrap()
            .to_string();
        // `docker images` hides the COPY step (it has a child), `-a` shows it.
        let mut list = e.images().await.unwrap();
        assert!(list.iter().any(|i| i.id == copy_step));
        docker_api::filters::hide_intermediate(&mut list);
        assert!(!list.iter().any(|i| i.id == copy_step));
        let gone = e.image_remove("t1", false).await.unwrap();
        let deleted: Vec<_> = gone.iter().filter_map(|d| d.deleted.clone()).collect();
        assert!(
            deleted.contains(&id) && deleted.contains(&copy_step),
            "{deleted:?}"
        );
        assert_eq!(
            deleted.len(),
            3,
            "ENV, COPY and ONBUILD's LABEL: {deleted:?}"
        );
        assert!(e.resolve_image("busybox").is_ok(), "a tagged parent stays");
        // The cache still names the removed steps: they are misses, and the build works.
        let (again, out) = run(&e, &ctx, &o).await;
        assert!(again.is_ok(), "{out}");
        assert_eq!(out.matches("Using cache").count(), 0, "{out}");
    }
}
