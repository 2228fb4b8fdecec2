//! The classic builder: a Dockerfile (crates/dockerfile) run step by step over a [`Host`] (the
//! engine, in backend/build.rs). Each step makes an image: `RUN` and `COPY`/`ADD` add a
//! layer (a RUN's container's upper directory, a COPY's planned tar), the others change only
//! the config. A step whose parent, instruction and (for COPY/ADD) source digest were built
//! before is taken from the cache (`---> Using cache`). Output is what dockerd's classic
//! builder prints (`Step N/M : ...`, ` ---> Running in ...`, `Successfully built ...`).

pub mod context;
pub mod copy;

use docker_api::build::{BuildMessage, BuildOptions};
use dockerfile::command::command;
use dockerfile::{Command, Instruction, ShellOrExec, Stage};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use tokio::sync::mpsc;

pub type Tx = mpsc::Sender<BuildMessage>;

/// A failed build: the message and the code the CLI exits with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fail {
    pub code: i64,
    pub message: String,
}

impl Fail {
    fn new(m: impl Into<String>) -> Self {
        Fail {
            code: 1,
            message: m.into(),
        }
    }
}

impl From<dockerfile::Error> for Fail {
    fn from(e: dockerfile::Error) -> Self {
        Fail::new(e.to_string())
    }
}

impl From<String> for Fail {
    fn from(e: String) -> Self {
        Fail::new(e)
    }
}

/// What a `RUN` step's container is made with.
#[derive(Debug, Clone, Default)]
pub struct RunSpec {
    pub argv: Vec<String>,
    pub env: Vec<String>,
    pub workdir: String,
    pub user: String,
}

/// A directory holding an image's root file system while it is alive (a mount, or a layer
/// directory, or an empty directory for `scratch`).
pub struct Root {
    pub path: PathBuf,
    pub _guard: Option<Box<dyn Send>>,
}

/// What the builder needs from the engine.
pub trait Host: Send + Sync + 'static {
    /// The image id of `name`, pulled when missing (or always with `pull`); progress on `tx`.
    fn resolve(
        &self,
        name: &str,
        pull: bool,
        opts: &BuildOptions,
        tx: &Tx,
    ) -> impl Future<Output = Result<String, String>> + Send;
    /// The image id of `name` if it is in the store.
    fn resolve_local(&self, name: &str) -> Option<String>;
    /// An image's config (the OCI config JSON).
    fn config(&self, id: &str) -> Option<Value>;
    /// Whether every layer of image `id` is in the store (a cached step's image may have
    /// lost them to an image removal).
    fn has_layers(&self, id: &str) -> bool;
    /// Runs `spec` in a container from image `id` until it exits: output to `tx` (unless
    /// quiet), `announce` called with the container id once it exists. Returns the exit code
    /// and the container id.
    fn run(
        &self,
        id: &str,
        spec: &RunSpec,
        opts: &BuildOptions,
        tx: &Tx,
        announce: &(dyn Fn(&str) + Sync),
    ) -> impl Future<Output = Result<(i64, String), String>> + Send;
    /// The container's changes as a layer in the store: its diff id.
    fn commit_layer(&self, container: &str) -> impl Future<Output = Result<String, String>> + Send;
    fn remove_container(&self, container: &str) -> impl Future<Output = ()> + Send;
    /// Stores a layer tar (made on top of image `parent`): its diff id.
    fn add_layer(&self, tar: &Path, parent: &str) -> Result<String, String>;
    /// Stores an image config: its id (`sha256:...`).
    fn store(&self, config: &[u8]) -> Result<String, String>;
    fn tag(&self, id: &str, tag: &str) -> Result<(), String>;
    /// The root file system of image `id` ("" = scratch).
    fn root(&self, id: &str) -> Result<Root, String>;
    /// A directory for the build's scratch files.
    fn scratch(&self) -> PathBuf;
    /// Downloads `url` (ADD of a URL) into the empty directory `dir`, named by the URL's
    /// last path segment, mode 0600, dated by its `Last-Modified`: the file's path.
    fn download(
        &self,
        url: &str,
        dir: &Path,
    ) -> impl Future<Output = Result<PathBuf, String>> + Send;
    /// The cache index's file.
    fn cache_file(&self) -> PathBuf;
}

const DEFAULT_SHELL: [&str; 2] = ["/bin/sh", "-c"];

/// Names ADD's download directories apart between concurrent builds.
static DOWNLOADS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A scratch directory removed when dropped.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Serialises the cache index's read-modify-write between concurrent builds.
static CACHE_LOCK: Mutex<()> = Mutex::new(());

/// The cache index: step key → image id.
pub fn cache_load(file: &Path) -> BTreeMap<String, String> {
    std::fs::read(file)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

fn cache_put(file: &Path, key: &str, id: &str) {
    let _g = CACHE_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let mut m = cache_load(file);
    m.insert(key.to_string(), id.to_string());
    if let Ok(b) = serde_json::to_vec(&m) {
        let tmp = file.with_extension("tmp");
        if std::fs::write(&tmp, b).is_ok() {
            let _ = std::fs::rename(&tmp, file);
        }
    }
}

/// Empties the cache index; returns the keys it held.
pub fn cache_clear(file: &Path) -> Vec<String> {
    let _g = CACHE_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let m = cache_load(file);
    let _ = std::fs::remove_file(file);
    m.into_keys().collect()
}

fn short(id: &str) -> String {
    id.trim_start_matches("sha256:").chars().take(12).collect()
}

/// One stage's state between steps.
struct State {
    /// The current image ("" before anything on `scratch`).
    image: String,
    cfg: Value,
    shell: Vec<String>,
    /// ARGs declared in this stage, with their values (None: declared without one).
    args: BTreeMap<String, Option<String>>,
    cmd_set: bool,
}

impl State {
    fn run(&self) -> &Map<String, Value> {
        static EMPTY: std::sync::OnceLock<Map<String, Value>> = std::sync::OnceLock::new();
        self.cfg["config"]
            .as_object()
            .unwrap_or_else(|| EMPTY.get_or_init(Map::new))
    }
    fn run_mut(&mut self) -> &mut Map<String, Value> {
        if !self.cfg["config"].is_object() {
            self.cfg["config"] = json!({});
        }
        self.cfg["config"]
            .as_object_mut()
            .expect("just made an object")
    }
    fn env(&self) -> Vec<(String, String)> {
        self.run()
            .get("Env")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(|e| match e.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (e.to_string(), String::new()),
            })
            .collect()
    }
    /// Variables for substitution: the stage's ARGs, then the image's ENV over them.
    fn lookup(&self) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = self
            .args
            .iter()
            .filter_map(|(k, v)| v.clone().map(|v| (k.clone(), v)))
            .collect();
        v.extend(self.env());
        v
    }
    fn str_of(&self, k: &str) -> String {
        self.run()
            .get(k)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    }
}

struct Builder<'a, H: Host> {
    host: &'a H,
    o: &'a BuildOptions,
    ctx: &'a Path,
    tx: &'a Tx,
    escape: char,
    step: usize,
    total: usize,
    /// Built stages: (name, image id).
    stages: Vec<(Option<String>, String)>,
    meta: BTreeMap<String, Option<String>>,
    used: BTreeSet<String>,
    created: String,
    /// With `cachefrom`: the images (and their parents) cache hits may come from.
    cache_from: Option<HashSet<String>>,
    cache_file: PathBuf,
    cache: BTreeMap<String, String>,
}

/// Runs a build of the unpacked context `ctx`; returns the image id.
pub async fn build<H: Host>(
    host: &H,
    o: &BuildOptions,
    ctx: &Path,
    tx: &Tx,
) -> Result<String, Fail> {
    let df_rel = context::clean(&o.dockerfile);
    let df_path = context::resolve(ctx, &df_rel, true);
    let text = std::fs::read(&df_path).map_err(|_| {
        Fail::new(format!(
            "Cannot locate specified Dockerfile: {}",
            o.dockerfile
        ))
    })?;
    context::remove_build_files(ctx, &o.dockerfile)
        .map_err(|e| Fail::new(format!("applying .dockerignore: {e}")))?;
    let df = dockerfile::parse(&String::from_utf8_lossy(&text))?;
    let (meta, stages) = dockerfile::stages(&df)?;
    let last = if o.target.is_empty() {
        stages.len() - 1
    } else {
        let t = o.target.to_ascii_lowercase();
        stages
            .iter()
            .position(|s| s.name.as_deref() == Some(t.as_str()))
            .ok_or_else(|| {
                Fail::new(format!(
                    "failed to reach build target {} in Dockerfile",
                    o.target
                ))
            })?
    };
    let total = stages[..=last]
        .iter()
        .map(|s| 1 + s.instructions.len())
        .sum();
    let created = match o.buildargs.get("SOURCE_DATE_EPOCH") {
        Some(Some(s)) => {
            let secs: i64 = s
                .parse()
                .map_err(|_| Fail::new(format!("invalid SOURCE_DATE_EPOCH: {s:?}")))?;
            docker_api::time::rfc3339(i128::from(secs) * 1_000_000_000)
        }
        _ => docker_api::time::rfc3339(docker_api::time::now_nanos()),
    };
    let cache_file = host.cache_file();
    let mut b = Builder {
        host,
        o,
        ctx,
        tx,
        escape: df.escape,
        step: 0,
        total,
        stages: Vec::new(),
        meta: BTreeMap::new(),
        used: BTreeSet::new(),
        created,
        cache_from: None,
        cache: cache_load(&cache_file),
        cache_file,
    };
    b.used.insert("SOURCE_DATE_EPOCH".into());
    if !o.cache_from.is_empty() {
        b.cache_from = Some(b.ancestors_of_cache_from().await);
    }
    for i in &meta {
        if let Command::Arg(list) = command(i, &b.meta_lookup()[..], b.escape)? {
            for (n, d) in list {
                let v = match o.buildargs.get(&n) {
                    Some(Some(v)) => Some(v.clone()),
                    _ => d,
                };
                b.used.insert(n.clone());
                b.meta.insert(n, v);
            }
        }
    }
    let mut id = String::new();
    for (k, st) in stages[..=last].iter().enumerate() {
        id = b.stage(st, k == last).await?;
        b.stages.push((st.name.clone(), id.clone()));
    }
    if id.is_empty() {
        return Err(Fail::new(
            "No image was generated. Is your Dockerfile empty?",
        ));
    }
    let unused: Vec<&String> = o
        .buildargs
        .keys()
        .filter(|k| !b.used.contains(*k) && !dockerfile::PROXY_ARGS.contains(&k.as_str()))
        .collect();
    if !unused.is_empty() {
        let list: Vec<&str> = unused.iter().map(|s| s.as_str()).collect();
        b.say(format!(
            "[Warning] One or more build-args [{}] were not consumed\n",
            list.join(" ")
        ))
        .await;
    }
    let _ = tx.send(BuildMessage::aux_id(&id)).await;
    if o.quiet {
        let _ = tx.send(BuildMessage::stream(format!("{id}\n"))).await;
    }
    b.say(format!("Successfully built {}\n", short(&id))).await;
    for t in &o.tags {
        host.tag(&id, t).map_err(Fail::new)?;
        b.say(format!("Successfully tagged {}\n", full_tag(t)))
            .await;
    }
    Ok(id)
}

/// `name` → `name:latest` when it has no tag (what dockerd prints).
fn full_tag(t: &str) -> String {
    let last = t.rsplit('/').next().unwrap_or(t);
    if last.contains(':') || t.contains('@') {
        t.to_string()
    } else {
        format!("{t}:latest")
    }
}

impl<H: Host> Builder<'_, H> {
    async fn say(&self, s: impl Into<String>) {
        if !self.o.quiet {
            let _ = self.tx.send(BuildMessage::stream(s)).await;
        }
    }

    fn meta_lookup(&self) -> Vec<(String, String)> {
        self.meta
            .iter()
            .filter_map(|(k, v)| v.clone().map(|v| (k.clone(), v)))
            .collect()
    }

    async fn ancestors_of_cache_from(&self) -> HashSet<String> {
        let mut set = HashSet::new();
        for name in &self.o.cache_from {
            let Some(mut id) = self.host.resolve_local(name) else {
                continue;
            };
            while !id.is_empty() && set.insert(id.clone()) {
                id = self
                    .host
                    .config(&id)
                    .and_then(|c| c["parent"].as_str().map(str::to_string))
                    .unwrap_or_default();
            }
        }
        set
    }

    async fn step_line(&mut self, i: &Instruction) {
        self.step += 1;
        let line = format!("Step {}/{} : {}", self.step, self.total, i.original);
        self.say(line).await;
        self.say("\n").await;
    }

    async fn stage(&mut self, st: &Stage, last: bool) -> Result<String, Fail> {
        self.step_line(&st.from).await;
        let Command::From {
            image, platform, ..
        } = command(&st.from, &self.meta_lookup()[..], self.escape)?
        else {
            return Err(Fail::new("a stage must start with FROM"));
        };
        if let Some(p) = &platform {
            docker_api::build::check_platform(p).map_err(|e| Fail::new(e.message))?;
        }
        let lower = image.to_ascii_lowercase();
        let (id, cfg) = if lower == "scratch" {
            let cfg = json!({
                "architecture": "amd64",
                "os": "linux",
                "config": {},
                "rootfs": {"type": "layers", "diff_ids": []},
                "history": [],
            });
            (String::new(), cfg)
        } else {
            let id = match self
                .stages
                .iter()
                .rev()
                .find(|(n, _)| n.as_deref() == Some(&lower))
            {
                Some((_, id)) => id.clone(),
                None => self
                    .host
                    .resolve(&image, self.o.pull, self.o, self.tx)
                    .await
                    .map_err(Fail::new)?,
            };
            let cfg = self
                .host
                .config(&id)
                .ok_or_else(|| Fail::new(format!("the image {image} has no config")))?;
            (id, cfg)
        };
        self.say(format!(" ---> {}\n", short(&id))).await;
        let shell = cfg["config"]["Shell"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })
            .filter(|v: &Vec<String>| !v.is_empty())
            .unwrap_or_else(|| DEFAULT_SHELL.map(String::from).to_vec());
        let mut s = State {
            image: id,
            cfg,
            shell,
            args: BTreeMap::new(),
            cmd_set: false,
        };
        let triggers: Vec<String> = s
            .run()
            .get("OnBuild")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|t| t.as_str().map(str::to_string))
            .collect();
        if !triggers.is_empty() {
            s.run_mut().insert("OnBuild".into(), Value::Null);
            let n = triggers.len();
            let plural = if n == 1 { "" } else { "s" };
            self.say(format!("# Executing {n} build trigger{plural}\n"))
                .await;
            for t in triggers {
                let df = dockerfile::parse(&t)?;
                for i in &df.instructions {
                    self.exec(&mut s, i).await?;
                }
            }
        }
        for i in &st.instructions {
            self.step_line(i).await;
            self.exec(&mut s, i).await?;
        }
        if last && !self.o.labels.is_empty() {
            let labels = self.o.labels.clone();
            let text = labels
                .iter()
                .map(|(k, v)| format!("{k:?}={v:?}"))
                .collect::<Vec<_>>()
                .join(" ");
            self.meta_step(&mut s, &format!("LABEL {text}"), |r| {
                let l = r.entry("Labels").or_insert_with(|| json!({}));
                if !l.is_object() {
                    *l = json!({});
                }
                for (k, v) in &labels {
                    l[k] = json!(v);
                }
            })
            .await?;
        }
        Ok(s.image)
    }

    fn key(&self, s: &State, created_by: &str, extra: &str) -> String {
        let mut h = Sha256::new();
        let v = json!([s.image, created_by, s.cfg["config"], extra]);
        h.update(v.to_string().as_bytes());
        hex::encode(h.finalize())
    }

    /// A cache hit for `key`: the image id, if it is still there (and allowed by cachefrom).
    async fn cached(&self, s: &mut State, key: &str) -> bool {
        if self.o.nocache {
            return false;
        }
        let Some(id) = self.cache.get(key) else {
            return false;
        };
        if let Some(allowed) = &self.cache_from {
            if !allowed.contains(id) {
                return false;
            }
        }
        let Some(cfg) = self.host.config(id).filter(|_| self.host.has_layers(id)) else {
            return false;
        };
        self.say(" ---> Using cache\n").await;
        self.say(format!(" ---> {}\n", short(id))).await;
        s.image = id.clone();
        s.cfg = cfg;
        true
    }

    /// Stores the next image: `s.cfg` with a history entry (and the layer, if any).
    async fn commit(
        &mut self,
        s: &mut State,
        created_by: &str,
        diff: Option<String>,
        key: &str,
    ) -> Result<(), Fail> {
        let mut c = s.cfg.clone();
        c["created"] = json!(self.created);
        if s.image.is_empty() {
            if let Some(m) = c.as_object_mut() {
                m.remove("parent");
            }
        } else {
            c["parent"] = json!(s.image);
        }
        if let Some(m) = c.as_object_mut() {
            m.remove("container");
            m.remove("container_config");
        }
        let mut h = json!({"created": self.created, "created_by": created_by});
        if diff.is_none() {
            h["empty_layer"] = json!(true);
        }
        if !c["history"].is_array() {
            c["history"] = json!([]);
        }
        if let Some(a) = c["history"].as_array_mut() {
            a.push(h);
        }
        if !c["rootfs"]["diff_ids"].is_array() {
            c["rootfs"] = json!({"type": "layers", "diff_ids": []});
        }
        if let Some(d) = diff {
            if let Some(a) = c["rootfs"]["diff_ids"].as_array_mut() {
                a.push(json!(d));
            }
        }
        let bytes = serde_json::to_vec(&c).map_err(|e| Fail::new(e.to_string()))?;
        let id = self.host.store(&bytes).map_err(Fail::new)?;
        cache_put(&self.cache_file, key, &id);
        self.cache.insert(key.to_string(), id.clone());
        self.say(format!(" ---> {}\n", short(&id))).await;
        s.image = id;
        s.cfg = c;
        Ok(())
    }

    /// A step that changes only the config.
    async fn meta_step(
        &mut self,
        s: &mut State,
        text: &str,
        f: impl FnOnce(&mut Map<String, Value>),
    ) -> Result<(), Fail> {
        let created_by = format!("/bin/sh -c #(nop)  {text}");
        f(s.run_mut());
        let key = self.key(s, &created_by, "");
        if self.cached(s, &key).await {
            return Ok(());
        }
        self.commit(s, &created_by, None, &key).await
    }

    async fn exec(&mut self, s: &mut State, i: &Instruction) -> Result<(), Fail> {
        let vars = s.lookup();
        let cmd = command(i, &vars[..], self.escape)?;
        let shell = s.shell.clone();
        match cmd {
            Command::From { .. } => Err(Fail::new("FROM inside a stage")),
            Command::Run { cmd, network } => self.run_step(s, cmd, network).await,
            Command::Copy(a) => self.copy_step(s, "COPY", a).await,
            Command::Add(a) => self.copy_step(s, "ADD", a).await,
            Command::Arg(list) => {
                let mut text = Vec::new();
                for (n, d) in list {
                    let v = match self.o.buildargs.get(&n) {
                        Some(Some(v)) => Some(v.clone()),
                        _ => d.or_else(|| self.meta.get(&n).cloned().flatten()),
                    };
                    text.push(match &v {
                        Some(v) => format!("{n}={v}"),
                        None => n.clone(),
                    });
                    self.used.insert(n.clone());
                    s.args.insert(n, v);
                }
                self.meta_step(s, &format!("ARG {}", text.join(" ")), |_| {})
                    .await
            }
            Command::Env(kv) => {
                let text = kv
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(" ");
                self.meta_step(s, &format!("ENV {text}"), |r| {
                    let mut env: Vec<String> = r
                        .get("Env")
                        .and_then(|e| serde_json::from_value(e.clone()).ok())
                        .unwrap_or_default();
                    for (k, v) in &kv {
                        env.retain(|e| e.split('=').next() != Some(k.as_str()));
                        env.push(format!("{k}={v}"));
                    }
                    r.insert("Env".into(), json!(env));
                })
                .await
            }
            Command::Label(kv) => {
                let text = kv
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(" ");
                self.meta_step(s, &format!("LABEL {text}"), |r| {
                    let l = r.entry("Labels").or_insert_with(|| json!({}));
                    if !l.is_object() {
                        *l = json!({});
                    }
                    for (k, v) in &kv {
                        l[k] = json!(v);
                    }
                })
                .await
            }
            Command::Cmd(c) => {
                s.cmd_set = true;
                let argv = c.argv(&shell);
                self.meta_step(s, &format!("CMD {}", json!(argv)), |r| {
                    r.insert("Cmd".into(), json!(argv));
                })
                .await
            }
            Command::Entrypoint(c) => {
                let argv = c.argv(&shell);
                let reset_cmd = !s.cmd_set;
                self.meta_step(s, &format!("ENTRYPOINT {}", json!(argv)), |r| {
                    r.insert("Entrypoint".into(), json!(argv));
                    // An inherited CMD does not survive a new ENTRYPOINT (as dockerd).
                    if reset_cmd {
                        r.insert("Cmd".into(), Value::Null);
                    }
                })
                .await
            }
            Command::Expose(ports) => {
                let text = ports.join(" ");
                self.meta_step(s, &format!("EXPOSE {text}"), |r| {
                    let e = r.entry("ExposedPorts").or_insert_with(|| json!({}));
                    if !e.is_object() {
                        *e = json!({});
                    }
                    for p in &ports {
                        e[p] = json!({});
                    }
                })
                .await
            }
            Command::Workdir(w) => self.workdir_step(s, &w).await,
            Command::User(u) => {
                self.meta_step(s, &format!("USER {u}"), |r| {
                    r.insert("User".into(), json!(u));
                })
                .await
            }
            Command::Volume(v) => {
                let text = json!(v).to_string();
                self.meta_step(s, &format!("VOLUME {text}"), |r| {
                    let e = r.entry("Volumes").or_insert_with(|| json!({}));
                    if !e.is_object() {
                        *e = json!({});
                    }
                    for p in &v {
                        e[p] = json!({});
                    }
                })
                .await
            }
            Command::StopSignal(sig) => {
                self.meta_step(s, &format!("STOPSIGNAL {sig}"), |r| {
                    r.insert("StopSignal".into(), json!(sig));
                })
                .await
            }
            Command::Healthcheck(h) => {
                let mut v = json!({"Test": h.test});
                for (k, n) in [
                    ("Interval", h.interval),
                    ("Timeout", h.timeout),
                    ("StartPeriod", h.start_period),
                    ("StartInterval", h.start_interval),
                    ("Retries", h.retries),
                ] {
                    if n != 0 {
                        v[k] = json!(n);
                    }
                }
                self.meta_step(s, &format!("HEALTHCHECK {v}"), |r| {
                    r.insert("Healthcheck".into(), v.clone());
                })
                .await
            }
            Command::Shell(sh) => {
                s.shell = sh.clone();
                self.meta_step(s, &format!("SHELL {}", json!(sh)), |r| {
                    r.insert("Shell".into(), json!(sh));
                })
                .await
            }
            Command::Onbuild(t) => {
                self.meta_step(s, &format!("ONBUILD {t}"), |r| {
                    let e = r.entry("OnBuild").or_insert_with(|| json!([]));
                    if !e.is_array() {
                        *e = json!([]);
                    }
                    if let Some(a) = e.as_array_mut() {
                        a.push(json!(t));
                    }
                })
                .await
            }
            Command::Maintainer(m) => {
                s.cfg["author"] = json!(m);
                self.meta_step(s, &format!("MAINTAINER {m}"), |_| {}).await
            }
        }
    }

    /// The env of a RUN: the image's, then declared ARGs not overridden by it, then the
    /// proxy args given as build args; and the `|N k=v` prefix dockerd records for ARGs.
    fn run_env(&self, s: &State) -> (Vec<String>, Vec<String>) {
        let env = s.env();
        let mut out: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let mut recorded = Vec::new();
        for (k, v) in &s.args {
            let Some(v) = v else { continue };
            if env.iter().any(|(e, _)| e == k) {
                continue;
            }
            out.push(format!("{k}={v}"));
            if !dockerfile::PROXY_ARGS.contains(&k.as_str()) {
                recorded.push(format!("{k}={v}"));
            }
        }
        for p in dockerfile::PROXY_ARGS {
            if s.args.contains_key(*p) {
                continue;
            }
            if let Some(Some(v)) = self.o.buildargs.get(*p) {
                out.push(format!("{p}={v}"));
            }
        }
        (out, recorded)
    }

    async fn run_step(
        &mut self,
        s: &mut State,
        cmd: ShellOrExec,
        network: Option<String>,
    ) -> Result<(), Fail> {
        if s.image.is_empty() {
            return Err(Fail::new(
                "RUN on a scratch image: there is no shell or program to run (copy one in first)",
            ));
        }
        let argv = cmd.argv(&s.shell);
        let (env, recorded) = self.run_env(s);
        let mut created_by = argv.join(" ");
        if !recorded.is_empty() {
            created_by = format!("|{} {} {created_by}", recorded.len(), recorded.join(" "));
        }
        let key = self.key(s, &created_by, network.as_deref().unwrap_or(""));
        if self.cached(s, &key).await {
            return Ok(());
        }
        let spec = RunSpec {
            argv: argv.clone(),
            env,
            workdir: s.str_of("WorkingDir"),
            user: s.str_of("User"),
        };
        let mut o = self.o.clone();
        if let Some(n) = network {
            o.network_mode = n;
        }
        let tx = self.tx.clone();
        let quiet = self.o.quiet;
        let announce = move |cid: &str| {
            if !quiet {
                let _ = tx.try_send(BuildMessage::stream(format!(
                    " ---> Running in {}\n",
                    short(cid)
                )));
            }
        };
        let (code, cid) = self
            .host
            .run(&s.image, &spec, &o, self.tx, &announce)
            .await
            .map_err(Fail::new)?;
        if code != 0 {
            if self.o.forcerm {
                self.host.remove_container(&cid).await;
            }
            return Err(Fail {
                code,
                message: format!(
                    "The command '{}' returned a non-zero code: {code}",
                    argv.join(" ")
                ),
            });
        }
        let diff = self.host.commit_layer(&cid).await;
        if self.o.rm || self.o.forcerm || diff.is_err() {
            self.host.remove_container(&cid).await;
            self.say(format!("Removing intermediate container {}\n", short(&cid)))
                .await;
        }
        let diff = diff.map_err(Fail::new)?;
        self.commit(s, &created_by, Some(diff), &key).await
    }

    /// Where `--from` points: a stage (by name or index) or an image.
    async fn source_image(&self, f: &str) -> Result<String, Fail> {
        let l = f.to_ascii_lowercase();
        if let Some((_, id)) = self.stages.iter().find(|(n, _)| n.as_deref() == Some(&l)) {
            return Ok(id.clone());
        }
        if let Ok(n) = f.parse::<usize>() {
            return self.stages.get(n).map(|(_, id)| id.clone()).ok_or_else(|| {
                Fail::new(format!("invalid from flag value {f}: no stage {n} yet"))
            });
        }
        self.host
            .resolve(f, self.o.pull, self.o, self.tx)
            .await
            .map_err(Fail::new)
    }

    async fn copy_step(
        &mut self,
        s: &mut State,
        kw: &str,
        a: dockerfile::CopyArgs,
    ) -> Result<(), Fail> {
        let src = match &a.from {
            Some(f) => {
                let id = self.source_image(f).await?;
                Some(self.host.root(&id).map_err(Fail::new)?)
            }
            None => None,
        };
        let src_root = src.as_ref().map(|r| r.path.as_path()).unwrap_or(self.ctx);
        // ADD's URLs are downloaded at every build (as dockerd does): their content is the
        // cache key.
        let downloads = Scratch(self.host.scratch().join(format!(
            "add-{}-{}",
            std::process::id(),
            DOWNLOADS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        )));
        let mut fetched = Vec::new();
        for src in &a.sources {
            let dockerfile::CopySource::Path(u) = src else {
                continue;
            };
            if kw != "ADD" || !copy::is_url(u) {
                continue;
            }
            let dir = downloads.0.join(fetched.len().to_string());
            std::fs::create_dir_all(&dir).map_err(|e| Fail::new(format!("ADD {u}: {e}")))?;
            let f = self.host.download(u, &dir).await.map_err(Fail::new)?;
            fetched.push((u.clone(), f));
        }
        let dest = self.host.root(&s.image).map_err(Fail::new)?;
        let workdir = s.str_of("WorkingDir");
        let plan = copy::plan(kw, &a, src_root, &dest.path, &workdir, &fetched)?;
        let created_by = format!(
            "/bin/sh -c #(nop) {kw} {}:{} in {} ",
            if a.from.is_some() { "dir" } else { "multi" },
            &plan.digest[..16],
            a.dest
        );
        let key = self.key(s, &created_by, &plan.digest);
        if self.cached(s, &key).await {
            return Ok(());
        }
        let owner = match &a.chown {
            Some(c) => Some(copy::owner(c, &dest.path)?),
            None => None,
        };
        let tar = self.host.scratch().join(format!(
            "build-{}-{}.tar",
            std::process::id(),
            &plan.digest[..16]
        ));
        let mtime = docker_api::time::unix_from_rfc3339(&self.created).max(0) as u64;
        let wrote = (|| -> std::io::Result<()> {
            let f = std::fs::File::create(&tar)?;
            let w = copy::write(
                &plan,
                &dest.path,
                owner,
                a.chmod,
                mtime,
                std::io::BufWriter::new(f),
            )?;
            w.into_inner().map_err(|e| e.into_error())?.sync_all()
        })();
        drop(dest);
        drop(src);
        let diff = wrote
            .map_err(|e| format!("{kw} failed: {e}"))
            .and_then(|()| self.host.add_layer(&tar, &s.image));
        let _ = std::fs::remove_file(&tar);
        let diff = diff.map_err(Fail::new)?;
        self.commit(s, &created_by, Some(diff), &key).await
    }

    /// WORKDIR: a layer with the directory when the image lacks it, else config only.
    async fn workdir_step(&mut self, s: &mut State, w: &str) -> Result<(), Fail> {
        let cur = s.str_of("WorkingDir");
        let joined = if w.starts_with('/') {
            w.to_string()
        } else {
            format!(
                "{}/{w}",
                if cur.is_empty() {
                    ""
                } else {
                    cur.trim_end_matches('/')
                }
            )
        };
        let dir = format!("/{}", context::clean(&joined).display());
        let exists = {
            let r = self.host.root(&s.image).map_err(Fail::new)?;
            context::resolve(&r.path, Path::new(&dir), true).is_dir()
        };
        if exists || dir == "/" || s.image.is_empty() {
            let d = dir.clone();
            return self
                .meta_step(s, &format!("WORKDIR {dir}"), move |r| {
                    r.insert("WorkingDir".into(), json!(d));
                })
                .await;
        }
        s.run_mut().insert("WorkingDir".into(), json!(dir));
        let created_by = format!("/bin/sh -c #(nop) WORKDIR {dir}");
        let key = self.key(s, &created_by, "mkdir");
        if self.cached(s, &key).await {
            return Ok(());
        }
        let tar = self
            .host
            .scratch()
            .join(format!("build-{}-workdir.tar", std::process::id()));
        let mtime = docker_api::time::unix_from_rfc3339(&self.created).max(0) as u64;
        let wrote = (|| -> std::io::Result<()> {
            let mut b = tar::Builder::new(std::fs::File::create(&tar)?);
            let mut acc = PathBuf::new();
            for c in context::clean(&dir).components() {
                acc.push(c);
                let mut h = tar::Header::new_gnu();
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_mtime(mtime);
                h.set_size(0);
                b.append_data(&mut h, &acc, std::io::empty())?;
            }
            b.into_inner()?.sync_all()
        })();
        let diff = wrote
            .map_err(|e| format!("WORKDIR failed: {e}"))
            .and_then(|()| self.host.add_layer(&tar, &s.image));
        let _ = std::fs::remove_file(&tar);
        let diff = diff.map_err(Fail::new)?;
        self.commit(s, &created_by, Some(diff), &key).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_as_dockerd_prints_them() {
        assert_eq!(full_tag("a"), "a:latest");
        assert_eq!(full_tag("a:1"), "a:1");
        assert_eq!(full_tag("h:5000/a"), "h:5000/a:latest");
    }

    #[test]
    fn cache_index_round_trip() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("cache.json");
        cache_put(&f, "k1", "sha256:1");
        cache_put(&f, "k2", "sha256:2");
        assert_eq!(cache_load(&f).len(), 2);
        assert_eq!(cache_clear(&f), vec!["k1", "k2"]);
        assert!(cache_load(&f).is_empty());
    }
}
