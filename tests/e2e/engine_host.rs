//! End-to-end: the engine runs ON THIS HOST (as root) and the real `docker` CLI drives it,
//! against a real registry on 127.0.0.1 holding a busybox image the test builds itself.
//! Tests skip loudly when not root or when the kernel lacks overlayfs/namespaces.

use axion_tests::registry::{free_port, Compression, Registry};
#[allow(unused_imports)]
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Builds the engine (debug) once and returns its path.
fn engine_binary() -> PathBuf {
    static ONCE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    ONCE.get_or_init(|| {
        let st = Command::new(env!("CARGO"))
            .args(["build", "-q", "-p", "engine"])
            .current_dir(workspace())
            .status()
            .expect("cargo build -p engine");
        assert!(st.success(), "building the engine failed");
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace().join("target"));
        target.join("debug/engine")
    })
    .clone()
}

fn skip_reason() -> Option<String> {
    // SAFETY: getuid has no preconditions.
    if unsafe { libc_getuid() } != 0 {
        return Some("not root (the engine needs namespaces, mounts and overlayfs)".into());
    }
    let fs = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    if !fs.contains("overlay") {
        return Some("the kernel has no overlayfs".into());
    }
    if !Path::new("/proc/self/ns/pid").exists() {
        return Some("the kernel has no PID namespaces".into());
    }
    if !axion_tests::docker_installed() {
        return Some("the docker CLI is not installed".into());
    }
    None
}

extern "C" {
    #[link_name = "getuid"]
    fn libc_getuid() -> u32;
}

macro_rules! skip_unless_capable {
    () => {
        if let Some(why) = skip_reason() {
            axion_tests::skip(why);
            return;
        }
    };
}

struct Engine {
    child: Child,
    host: String,
    root: tempfile::TempDir,
    config: tempfile::TempDir,
    log: PathBuf,
    extra_env: Vec<(String, String)>,
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.terminate();
    }
}

impl Engine {
    fn terminate(&mut self) {
        // SIGTERM lets it stop its containers.
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops the engine (SIGTERM) and starts it again on the same data root, as a reboot does.
    fn restart(&mut self, extra: &[&str]) {
        self.terminate();
        self.respawn(extra);
    }

    /// Kills the engine (SIGKILL, as a crash) and starts it again on the same data root.
    fn kill_and_restart(&mut self, extra: &[&str]) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.respawn(extra);
    }

    fn respawn(&mut self, extra: &[&str]) {
        let sock = self.root.path().join("docker.sock");
        let _ = std::fs::remove_file(&sock);
        // `--bridge none`: the engine runs on the build host itself, whose network (bridges,
        // nf_tables, ip_forward) a test must not change; bridge networking is tested in the VM.
        let mut args = vec![
            "--data-root".to_string(),
            self.data().display().to_string(),
            "-H".into(),
            format!("unix://{}", sock.display()),
            "--bridge".into(),
            "none".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        self.child = Command::new(engine_binary())
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::OpenOptions::new()
                    .append(true)
                    .open(self.root.path().join("engine.err"))
                    .unwrap(),
            ))
            .spawn()
            .expect("restart engine");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !sock.exists() {
            assert!(Instant::now() < deadline, "engine socket did not reappear");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn start(extra: &[&str]) -> Engine {
        Engine::start_under(&[], extra)
    }

    /// Starts the engine behind `wrapper` (a command that ends by exec'ing its arguments, so
    /// the child's pid stays the engine's).
    fn start_under(wrapper: &[&str], extra: &[&str]) -> Engine {
        let root = tempfile::tempdir().unwrap();
        let sock = root.path().join("docker.sock");
        let log = root.path().join("engine.log");
        let mut args: Vec<String> = wrapper.iter().map(|s| s.to_string()).collect();
        args.extend([
            engine_binary().display().to_string(),
            "--data-root".to_string(),
            root.path().join("data").display().to_string(),
            "-H".into(),
            format!("unix://{}", sock.display()),
            "--bridge".into(),
            "none".into(),
        ]);
        args.extend(extra.iter().map(|s| s.to_string()));
        let child = Command::new(&args[0])
            .args(&args[1..])
            .stdout(Stdio::from(std::fs::File::create(&log).unwrap()))
            .stderr(Stdio::from(
                std::fs::File::create(root.path().join("engine.err")).unwrap(),
            ))
            .spawn()
            .expect("start engine");
        let e = Engine {
            child,
            host: format!("unix://{}", sock.display()),
            root,
            config: tempfile::tempdir().unwrap(),
            log,
            extra_env: vec![],
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !sock.exists() {
            assert!(
                Instant::now() < deadline,
                "engine socket did not appear; stderr: {}",
                e.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        e
    }

    fn stderr(&self) -> String {
        let _ = &self.log;
        std::fs::read_to_string(self.root.path().join("engine.err")).unwrap_or_default()
    }

    /// The CLI aimed at this engine (with `extra_env` on top).
    fn cli(&self) -> axion_tests::DockerCli {
        self.extra_env.iter().fold(
            axion_tests::DockerCli::new(&self.host, self.config.path()),
            |c, (k, v)| c.env(k, v),
        )
    }

    fn docker_cmd(&self, args: &[&str]) -> Command {
        self.cli().cmd(args)
    }

    fn docker(&self, args: &[&str]) -> Output {
        self.cli().run(args)
    }

    /// Runs docker and asserts success; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let o = self.docker(args);
        assert!(
            o.status.success(),
            "docker {args:?} failed ({:?}):\nstdout: {}\nstderr: {}\nengine: {}",
            o.status.code(),
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr),
            self.stderr()
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    fn data(&self) -> PathBuf {
        self.root.path().join("data")
    }
}

/// A raw HTTP/1.1 request on the engine's unix socket; returns (status, body).
fn raw(e: &Engine, method: &str, path: &str, body: &[u8]) -> (u16, String) {
    let sock = e.host.strip_prefix("unix://").unwrap();
    let mut s = std::os::unix::net::UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: docker\r\nContent-Type: \
         application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = s.write_all(body); // the engine may answer (and close) before reading it all
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

#[test]
fn version_info_and_bad_input() {
    skip_unless_capable!();
    let e = Engine::start(&[]);
    let v = e.ok(&["version"]);
    assert!(v.contains("API version:       1.47"), "{v}");
    assert!(v.contains("Engine:"), "{v}");
    let v = e.ok(&[
        "version",
        "--format",
        "{{.Server.APIVersion}} {{.Server.MinAPIVersion}}",
    ]);
    assert_eq!(v.trim(), "1.47 1.24");
    let i = e.ok(&[
        "info",
        "--format",
        "{{.OSType}} {{.Driver}} {{.Containers}}",
    ]);
    assert_eq!(i.trim(), "linux overlay2 0");
    let i = e.ok(&["info", "--format", "{{.SecurityOptions}}"]);
    assert_eq!(i.trim(), "[name=seccomp,profile=builtin]");

    let (s, b) = raw(&e, "GET", "/_ping", b"");
    assert_eq!((s, b.as_str()), (200, "OK"));
    // Not a swarm node: 503 with dockerd's message, so clients say what is wrong.
    let (s, b) = raw(&e, "GET", "/v1.47/swarm", b"");
    assert_eq!(s, 503, "{b}");
    assert!(b.contains("not a swarm manager"), "{b}");
    let (s, b) = raw(&e, "GET", "/v1.47/no-such-route", b"");
    assert_eq!(s, 404);
    assert!(b.contains("\"message\""), "{b}");
    let (s, b) = raw(&e, "GET", "/v9.99/version", b"");
    assert_eq!(s, 400, "{b}");
    let (s, b) = raw(&e, "POST", "/v1.47/containers/create", b"{not json");
    assert_eq!(s, 400, "{b}");
    assert!(b.contains("invalid JSON"), "{b}");
    let big = vec![b' '; 3 << 20];
    let (s, _) = raw(&e, "POST", "/v1.47/containers/create", &big);
    assert_eq!(s, 400);
    let (s, b) = raw(&e, "GET", "/v1.47/containers/nope/json", b"");
    assert_eq!(s, 404, "{b}");
    let (s, _) = raw(
        &e,
        "POST",
        "/v1.47/containers/create?name=bad%20name",
        br#"{"Image":"x"}"#,
    );
    assert_eq!(s, 400);
    let (s, _) = raw(&e, "POST", "/v1.47/images/create?fromImage=UPPER", b"");
    assert_eq!(s, 400);
    // Still serving.
    assert_eq!(raw(&e, "GET", "/_ping", b"").0, 200);
}

fn registry_with_busybox() -> (Registry, String) {
    let reg = Registry::start().expect("start registry");
    reg.push_busybox(
        &axion_tests::busybox(),
        "busybox",
        "latest",
        Compression::Gzip,
    )
    .expect("push busybox");
    let host = reg.host();
    (reg, host)
}

#[test]
fn pull_images_inspect_tag_rmi() {
    skip_unless_capable!();
    let (reg, host) = registry_with_busybox();
    let zd = reg
        .push_busybox(&axion_tests::busybox(), "bbzstd", "v1", Compression::Zstd)
        .unwrap();
    reg.push_index(
        &axion_tests::busybox(),
        "bbindex",
        "multi",
        &reg.push_busybox(
            &axion_tests::busybox(),
            "bbindex",
            "single",
            Compression::Gzip,
        )
        .unwrap(),
    )
    .unwrap();
    let _ = zd;
    let e = Engine::start(&[]);
    let img = format!("{host}/busybox:latest");
    let out = e.ok(&["pull", &img]);
    assert!(out.contains("Downloaded newer image"), "{out}");
    assert!(out.contains("Digest: sha256:"), "{out}");
    let out = e.ok(&["pull", &img]);
    assert!(out.contains("Image is up to date"), "{out}");
    let list = e.ok(&["images", "--format", "{{.Repository}}:{{.Tag}}"]);
    assert!(list.contains(&img), "{list}");
    let arch = e.ok(&[
        "image",
        "inspect",
        "--format",
        "{{.Os}}/{{.Architecture}} {{.Config.Cmd}}",
        &img,
    ]);
    assert_eq!(arch.trim(), "linux/amd64 [sh]");
    e.ok(&["tag", &img, "mine/bb:v2"]);
    let list = e.ok(&["images", "--format", "{{.Repository}}:{{.Tag}}"]);
    assert!(list.contains("mine/bb:v2"), "{list}");
    // Filters: a reference glob narrows the tags listed; an unknown filter is refused.
    assert_eq!(
        e.ok(&[
            "images",
            "--format",
            "{{.Repository}}:{{.Tag}}",
            "-f",
            "reference=mine/*"
        ]),
        "mine/bb:v2\n"
    );
    assert_eq!(e.ok(&["images", "-q", "-f", "dangling=true"]), "");
    let o = e.docker(&["images", "-f", "colour=red"]);
    assert!(
        !o.status.success()
            && String::from_utf8_lossy(&o.stderr).contains("invalid filter 'colour'"),
        "{o:?}"
    );
    let out = e.ok(&["inspect", "--format", "{{.Id}}", "mine/bb:v2"]);
    assert!(out.trim().starts_with("sha256:"), "{out}");
    let out = e.ok(&["rmi", "mine/bb:v2"]);
    assert!(out.contains("Untagged: mine/bb:v2"), "{out}");
    assert!(
        !out.contains("Deleted"),
        "image still tagged elsewhere: {out}"
    );
    // zstd layers and an index picking linux/amd64.
    let out = e.ok(&["pull", &format!("{host}/bbzstd:v1")]);
    assert!(out.contains("Downloaded newer image"), "{out}");
    let out = e.ok(&["pull", &format!("{host}/bbindex:multi")]);
    assert!(out.contains("Downloaded newer image"), "{out}");
    let arch = e.ok(&[
        "image",
        "inspect",
        "--format",
        "{{.Architecture}}",
        &format!("{host}/bbindex:multi"),
    ]);
    assert_eq!(arch.trim(), "amd64");
    // Missing image and registry errors are errors.
    let o = e.docker(&["pull", &format!("{host}/nothere:latest")]);
    assert!(!o.status.success());
    let o = e.docker(&["image", "inspect", "nothere"]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("No such image"),
        "{o:?}"
    );
    let out = e.ok(&["rmi", &img]);
    assert!(out.contains("Deleted: sha256:"), "{out}");
    let list = e.ok(&["images", "-q"]);
    assert_eq!(list.lines().count(), 2, "{list}");
    // `docker run` of a missing image pulls it first (create answers 404, the CLI pulls).
    let o = e.docker(&["run", "--rm", &img, "echo", "auto-pulled"]);
    assert!(o.status.success(), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stdout).ends_with("auto-pulled\n"),
        "{o:?}"
    );
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("Unable to find image"),
        "{o:?}"
    );
    e.ok(&["rmi", &img]);
    // Layers of the removed image are gone, other images keep theirs.
    let layers = std::fs::read_dir(e.data().join("images/layers"))
        .unwrap()
        .count();
    assert!(layers >= 1, "layers of remaining images must stay");
}

#[test]
fn load_a_saved_image_and_refuse_broken_archives() {
    skip_unless_capable!();
    let busybox = std::fs::read(axion_tests::busybox()).unwrap();
    let archive = axion_tests::busybox_images::image_tar(&busybox).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("busybox.tar");
    std::fs::write(&good, &archive).unwrap();
    let e = Engine::start(&[]);
    // A truncated archive: a clear error, nothing listed, the engine keeps serving.
    let cut = dir.path().join("cut.tar");
    std::fs::write(&cut, &archive[..archive.len() / 2]).unwrap();
    let o = e.docker(&["load", "-i", cut.to_str().unwrap()]);
    assert!(!o.status.success(), "a truncated archive loaded: {o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("cannot load the archive"),
        "{o:?}"
    );
    assert_eq!(e.ok(&["images", "-q"]).trim(), "");
    let out = e.ok(&["load", "-i", good.to_str().unwrap()]);
    assert!(out.contains("Loaded image: busybox:latest"), "{out}");
    let out = e.ok(&["run", "--rm", "busybox", "echo", "from a saved image"]);
    assert_eq!(out, "from a saved image\n");
}

/// An engine with the test busybox pulled; returns the image name.
fn engine_with_busybox(extra: &[&str]) -> (Registry, Engine, String) {
    let (reg, host) = registry_with_busybox();
    let e = Engine::start(extra);
    let img = format!("{host}/busybox:latest");
    e.ok(&["pull", "-q", &img]);
    (reg, e, img)
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Live-restore: containers outlive an engine that is killed (`kill -9`) or, with
/// `--live-restore`, stopped by SIGTERM; the next engine re-adopts them: Up, the log has
/// what they wrote meanwhile, exec, stdin, stop and their exit codes work. (The same in the
/// VM, with init restarting the engine: tests/e2e/engine_live_restore.rs.)
#[test]
fn containers_outlive_a_killed_engine() {
    skip_unless_capable!();
    let (_reg, mut e, img) = engine_with_busybox(&[]);
    let script = "i=0; while [ $i -lt 80 ]; do echo $i; i=$((i+1)); sleep 0.1; done; exit 7";
    e.ok(&["run", "-d", "--name", "counter", &img, "sh", "-c", script]);
    e.ok(&[
        "run",
        "-d",
        "-i",
        "--name",
        "reader",
        &img,
        "sh",
        "-c",
        "read l; echo \"got $l\"; sleep 100",
    ]);
    let lines = |e: &Engine| -> Vec<u32> {
        e.ok(&["logs", "counter"])
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while lines(&e).len() < 3 {
        assert!(
            Instant::now() < deadline,
            "no counter output: logs {:?}, ps {}, engine: {}",
            e.ok(&["logs", "counter"]),
            e.ok(&["ps", "-a"]),
            e.stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    e.kill_and_restart(&["--live-restore"]);
    let st = |e: &Engine, n: &str| e.ok(&["inspect", "--format", "{{.State.Status}}", n]);
    assert_eq!(st(&e, "counter").trim(), "running", "{}", e.stderr());
    assert_eq!(st(&e, "reader").trim(), "running");
    assert!(e.stderr().contains("re-attached"), "{}", e.stderr());

    // stdin reaches the adopted container (the killed engine's end did not close it).
    let mut c = e.docker_cmd(&["attach", "reader"]);
    let mut child = c
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"line\n").unwrap();
    wait_until("the adopted container reads stdin", || {
        e.ok(&["logs", "reader"]).contains("got line")
    });
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(e.ok(&["exec", "counter", "echo", "in"]).trim(), "in");
    // SIGTERM with --live-restore: the containers run on.
    e.restart(&[]);
    let id = e.ok(&["inspect", "--format", "{{.Id}}", "counter"]);
    let cdir = e.data().join("containers").join(id.trim());
    assert_eq!(
        st(&e, "counter").trim(),
        "running",
        "{}\n{:?}: {:?}\nshim.log: {}\nexit.json: {}",
        e.stderr(),
        cdir,
        std::fs::read_dir(&cdir).map(|d| d.flatten().map(|e| e.file_name()).collect::<Vec<_>>()),
        std::fs::read_to_string(cdir.join("shim.log")).unwrap_or_default(),
        std::fs::read_to_string(cdir.join("exit.json")).unwrap_or_default(),
    );
    // `logs -f` follows the adopted container until it ends (a client's stream ends with
    // the engine that served it, as with dockerd: so started after the last restart).
    let follow = e
        .docker_cmd(&["logs", "-f", "counter"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert_eq!(e.ok(&["wait", "counter"]).trim(), "7");
    let want: Vec<u32> = (0..80).collect();
    assert_eq!(lines(&e), want, "the log must have every line");
    let followed = follow.wait_with_output().unwrap();
    let got: Vec<u32> = String::from_utf8_lossy(&followed.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    assert_eq!(got, want, "logs -f of the adopted container");
    e.ok(&["stop", "-t", "1", "reader"]);
    assert_eq!(st(&e, "reader").trim(), "exited");
    // Exited while no engine ran: the exit file gives the real code.
    e.ok(&[
        "run",
        "-d",
        "--name",
        "quick",
        &img,
        "sh",
        "-c",
        "sleep 1; exit 5",
    ]);
    let _ = e.child.kill();
    let _ = e.child.wait();
    std::thread::sleep(Duration::from_millis(2500));
    e.respawn(&[]);
    assert_eq!(st(&e, "quick").trim(), "exited");
    assert_eq!(
        e.ok(&["inspect", "--format", "{{.State.ExitCode}}", "quick"])
            .trim(),
        "5"
    );
}

#[test]
fn run_attached_detached_and_lifecycle() {
    skip_unless_capable!();
    let (_reg, e, img) = engine_with_busybox(&[]);
    // Attached: output and exit code.
    let out = e.ok(&["run", "--rm", &img, "echo", "hello from axion"]);
    assert_eq!(out, "hello from axion\n");
    let o = e.docker(&[
        "run",
        "--rm",
        &img,
        "sh",
        "-c",
        "echo out; echo err >&2; exit 3",
    ]);
    assert_eq!(o.status.code(), Some(3), "{o:?}");
    assert_eq!(String::from_utf8_lossy(&o.stdout), "out\n");
    assert_eq!(String::from_utf8_lossy(&o.stderr), "err\n");
    // --rm removed it.
    assert_eq!(e.ok(&["ps", "-aq"]).trim(), "");
    // -e, -w, --entrypoint, --name, PID 1, hostname.
    let out = e.ok(&[
        "run",
        "--name",
        "envtest",
        "-e",
        "FOO=bar",
        "-w",
        "/tmp",
        &img,
        "sh",
        "-c",
        "echo $FOO $(pwd) $$",
    ]);
    assert_eq!(out, "bar /tmp 1\n");
    let out = e.ok(&[
        "run",
        "--rm",
        "--entrypoint",
        "/bin/echo",
        &img,
        "via",
        "entrypoint",
    ]);
    assert_eq!(out, "via entrypoint\n");
    let out = e.ok(&["ps", "-a", "--format", "{{.Names}} {{.Status}}"]);
    assert!(out.contains("envtest Exited (0)"), "{out}");
    // Missing executable: 127 and a message.
    let o = e.docker(&["run", "--rm", &img, "no-such-binary"]);
    assert_eq!(o.status.code(), Some(127), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("executable file not found"),
        "{o:?}"
    );
    // Detached, ps, logs, stop, start, restart, kill, wait, rm -f.
    let id = e.ok(&[
        "run",
        "-d",
        "--name",
        "ticker",
        &img,
        "sh",
        "-c",
        "trap 'echo bye; exit 0' \
         TERM; i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.2; done",
    ]);
    let id = id.trim().to_string();
    assert_eq!(id.len(), 64, "{id}");
    let ps = e.ok(&["ps", "--format", "{{.Names}} {{.Status}}"]);
    assert!(ps.contains("ticker Up"), "{ps}");
    wait_until("two ticks in the logs", || {
        e.ok(&["logs", "ticker"]).contains("tick 1")
    });
    let tail = e.ok(&["logs", "--tail", "1", "ticker"]);
    assert_eq!(tail.lines().count(), 1, "{tail}");
    // logs -f follows until the container stops.
    let mut follow = e
        .docker_cmd(&["logs", "-f", "ticker"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    e.ok(&["stop", "ticker"]);
    let mut followed = String::new();
    follow
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut followed)
        .unwrap();
    assert!(follow.wait().unwrap().success());
    assert!(
        followed.contains("tick 3") && followed.contains("bye"),
        "{followed}"
    );
    let code = e.ok(&["wait", "ticker"]);
    assert_eq!(code.trim(), "0");
    let st = e.ok(&[
        "inspect",
        "--format",
        "{{.State.Status}} {{.State.ExitCode}}",
        "ticker",
    ]);
    assert_eq!(st.trim(), "exited 0");
    e.ok(&["start", "ticker"]);
    assert_eq!(
        e.ok(&["inspect", "--format", "{{.State.Running}}", "ticker"])
            .trim(),
        "true"
    );
    e.ok(&["restart", "-t", "1", "ticker"]);
    assert_eq!(
        e.ok(&["inspect", "--format", "{{.State.Running}}", "ticker"])
            .trim(),
        "true"
    );
    e.ok(&["kill", "ticker"]);
    assert_eq!(e.ok(&["wait", "ticker"]).trim(), "137");
    // ps filters and -l, as scripts use them (newest first).
    assert_eq!(
        e.ok(&["ps", "--format", "{{.Names}}", "-f", "status=exited"]),
        "ticker\nenvtest\n"
    );
    assert_eq!(
        e.ok(&["ps", "-a", "--format", "{{.Names}}", "-f", "exited=137"]),
        "ticker\n"
    );
    assert_eq!(
        e.ok(&["ps", "-a", "--format", "{{.Names}}", "-f", "name=^env"]),
        "envtest\n"
    );
    assert_eq!(e.ok(&["ps", "-l", "--format", "{{.Names}}"]), "ticker\n");
    assert_eq!(e.ok(&["ps", "-q"]), "", "nothing runs");
    let o = e.docker(&["ps", "-f", "colour=red"]);
    assert!(
        !o.status.success()
            && String::from_utf8_lossy(&o.stderr).contains("invalid filter 'colour'"),
        "{o:?}"
    );
    let o = e.docker(&["kill", "ticker"]);
    assert!(!o.status.success(), "kill of a stopped container must fail");
    e.ok(&["start", "ticker"]);
    let o = e.docker(&["rm", "ticker"]);
    assert!(
        !o.status.success(),
        "rm of a running container must fail without -f"
    );
    e.ok(&["rm", "-f", "ticker"]);
    let ps = e.ok(&["ps", "-a", "--format", "{{.Names}}"]);
    assert!(!ps.contains("ticker"), "{ps}");
    assert!(e.docker(&["inspect", &id]).status.code() != Some(0));
    e.ok(&["rm", "envtest"]);
    // Stdin piped into `run -i`.
    let mut c = e
        .docker_cmd(&["run", "--rm", "-i", &img, "sh", "-c", "tr a-z A-Z"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(b"shout\n").unwrap();
    let o = c.wait_with_output().unwrap();
    assert!(o.status.success());
    assert_eq!(String::from_utf8_lossy(&o.stdout), "SHOUT\n");
}

/// Puts the engine in its own mount namespace, chrooted into a directory that is not a mount
/// point (each top-level directory of the host bound under it, so every path stays the
/// same): a root that pivot_root cannot leave. (The VM's initramfs, had init's root switch
/// failed, is the other such root; only a VM can show that one.) Arguments: the jail's base
/// directory, then the command to exec.
const UNPIVOTABLE_ROOT: &str = r#"set -e
base=$1; shift
mount -t tmpfs jail "$base"
jail=$base/root
mkdir "$jail"
for d in /*; do
  n=${d#/}
  if [ -L "$d" ]; then ln -s "$(readlink "$d")" "$jail/$n"
  elif [ -d "$d" ]; then mkdir "$jail/$n"; mount --rbind "$d" "$jail/$n"
  fi
done
exec chroot "$jail" "$@"
"#;

/// `--exec-root` (axion-vmd's VMs put it on tmpfs): a container's state and set-up files
/// live there, its writable layer and log under the data root; `rm` removes both, and a
/// writable layer whose state is gone (a tmpfs after a reboot) is removed at start.
#[test]
fn exec_root_keeps_state_apart_from_the_writable_layer() {
    skip_unless_capable!();
    let exec = tempfile::tempdir().unwrap();
    let exec_arg = exec.path().display().to_string();
    let (_reg, mut e, img) = engine_with_busybox(&["--exec-root", &exec_arg]);
    let id = e
        .ok(&[
            "run",
            "-d",
            &img,
            "sh",
            "-c",
            "echo written > /f; echo logged; sleep 300",
        ])
        .trim()
        .to_string();
    let (state, data) = (
        exec.path().join("containers").join(&id),
        e.data().join("containers").join(&id),
    );
    wait_until("the container's file in its writable layer", || {
        data.join("upper/f").is_file()
    });
    assert!(
        state.join("state.json").is_file()
            && state.join("spec.json").is_file()
            && state.join("hosts").is_file(),
        "state files not under --exec-root: {}",
        state.display()
    );
    assert!(
        !data.join("state.json").exists(),
        "state.json under the data root too"
    );
    wait_until("the container's log", || e.ok(&["logs", &id]) == "logged\n");
    assert!(
        data.join(format!("{id}-json.log")).is_file(),
        "the log is not under the data root"
    );
    e.ok(&["rm", "-f", &id]);
    assert!(
        !state.exists() && !data.exists(),
        "rm left {} or {}",
        state.display(),
        data.display()
    );
    // The exec root lost (tmpfs, reboot): the orphaned writable layer goes at start.
    let id2 = e.ok(&["create", &img, "true"]).trim().to_string();
    let data2 = e.data().join("containers").join(&id2);
    assert!(data2.join("upper").is_dir());
    e.terminate();
    std::fs::remove_dir_all(exec.path().join("containers")).unwrap();
    e.restart(&["--exec-root", &exec_arg]);
    assert_eq!(
        e.ok(&["ps", "-aq"]).trim(),
        "",
        "a container without state is listed"
    );
    assert!(
        !data2.exists(),
        "the orphaned writable layer {} is still there",
        data2.display()
    );
}

#[test]
fn refuses_a_root_pivot_root_cannot_leave() {
    skip_unless_capable!();
    if Command::new("unshare").arg("--version").output().is_err() {
        axion_tests::skip("util-linux's unshare is not installed");
        return;
    }
    let (_reg, host) = registry_with_busybox();
    let base = tempfile::tempdir().unwrap();
    let base_arg = base.path().display().to_string();
    let e = Engine::start_under(
        &[
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            UNPIVOTABLE_ROOT,
            "sh",
            &base_arg,
        ],
        &[],
    );
    let img = format!("{host}/busybox:latest");
    e.ok(&["pull", "-q", &img]);
    // The container does not start, the error says why, and nothing falls back to chroot.
    let o = e.docker(&["run", "--name", "stuck", &img, "echo", "escaped"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{o:?}");
    assert!(
        !String::from_utf8_lossy(&o.stdout).contains("escaped"),
        "{o:?}"
    );
    assert!(
        err.contains("the host root is not a mount point (chroot?); refusing the chroot fallback"),
        "{err}"
    );
    // The engine keeps serving, and the container stays a created one that never ran.
    assert_eq!(
        e.ok(&[
            "inspect",
            "--format",
            "{{.State.Status}} {{.State.Running}}",
            "stuck"
        ])
        .trim(),
        "created false"
    );
    e.ok(&["rm", "stuck"]);
    assert_eq!(e.ok(&["ps", "-aq"]).trim(), "");
}

#[test]
fn tcp_with_mutual_tls() {
    skip_unless_capable!();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut e = Engine::start(&["-H", &format!("tcp://{addr}")]);
    let certs = e.data().join("tls/client");
    wait_until("generated client certificates", || {
        certs.join("key.pem").exists()
    });
    e.extra_env = vec![
        ("DOCKER_HOST".into(), format!("tcp://{addr}")),
        ("DOCKER_TLS_VERIFY".into(), "1".into()),
        ("DOCKER_CERT_PATH".into(), certs.display().to_string()),
    ];
    let v = e.ok(&["version", "--format", "{{.Server.APIVersion}}"]);
    assert_eq!(v.trim(), "1.47");
    // A client without a certificate is refused by the server.
    let nocert = tempfile::tempdir().unwrap();
    std::fs::copy(certs.join("ca.pem"), nocert.path().join("ca.pem")).unwrap();
    let o = e
        .docker_cmd(&["version"])
        .env("DOCKER_TLS_VERIFY", "")
        .env_remove("DOCKER_CERT_PATH")
        .env("DOCKER_TLS", "1")
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&o.stdout).contains("1.47"),
        "served a client without certificate: {o:?}"
    );
    // Plain HTTP on the TLS port gets nothing useful.
    let o = e
        .docker_cmd(&["version", "--format", "{{.Server.APIVersion}}"])
        .env_remove("DOCKER_TLS_VERIFY")
        .env_remove("DOCKER_CERT_PATH")
        .output()
        .unwrap();
    assert!(!o.status.success(), "{o:?}");
    // Keep the client certificate; a second engine trusts its CA via --tlscacert.
    let keep = tempfile::tempdir().unwrap();
    for f in ["cert.pem", "key.pem"] {
        std::fs::copy(certs.join(f), keep.path().join(f)).unwrap();
    }
    let client_ca = keep.path().join("client-ca.pem");
    std::fs::copy(e.data().join("tls/client-ca.pem"), &client_ca).unwrap();
    drop(e);
    let port2 = free_port();
    let mut e2 = Engine::start(&[
        "-H",
        &format!("tcp://127.0.0.1:{port2}"),
        "--tlscacert",
        client_ca.to_str().unwrap(),
    ]);
    wait_until("server certificate", || {
        e2.data().join("tls/ca.pem").exists()
    });
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !e2.data().join("tls/client").exists(),
        "no client CA is generated when one is given"
    );
    std::fs::copy(e2.data().join("tls/ca.pem"), keep.path().join("ca.pem")).unwrap();
    e2.extra_env = vec![
        ("DOCKER_HOST".into(), format!("tcp://127.0.0.1:{port2}")),
        ("DOCKER_TLS_VERIFY".into(), "1".into()),
        ("DOCKER_CERT_PATH".into(), keep.path().display().to_string()),
    ];
    let v = e2.ok(&["version", "--format", "{{.Server.APIVersion}}"]);
    assert_eq!(v.trim(), "1.47");
}

#[test]
fn ports_volumes_exec_tty() {
    skip_unless_capable!();
    let (_reg, e, img) = engine_with_busybox(&[]);
    // -v: a bind mount and a named volume.
    let host_dir = tempfile::tempdir().unwrap();
    std::fs::write(host_dir.path().join("in.txt"), "from host\n").unwrap();
    let bind = format!("{}:/data", host_dir.path().display());
    let out = e.ok(&[
        "run",
        "--rm",
        "-v",
        &bind,
        &img,
        "sh",
        "-c",
        "cat /data/in.txt; echo from container > /data/out.txt",
    ]);
    assert_eq!(out, "from host\n");
    assert_eq!(
        std::fs::read_to_string(host_dir.path().join("out.txt")).unwrap(),
        "from container\n"
    );
    let ro = format!("{}:/data:ro", host_dir.path().display());
    let o = e.docker(&[
        "run",
        "--rm",
        "-v",
        &ro,
        &img,
        "sh",
        "-c",
        "echo x > /data/nope",
    ]);
    assert!(!o.status.success(), "write to a read-only bind must fail");
    e.ok(&[
        "run",
        "--rm",
        "-v",
        "vol1:/v",
        &img,
        "sh",
        "-c",
        "echo kept > /v/f",
    ]);
    assert_eq!(
        e.ok(&["run", "--rm", "-v", "vol1:/v", &img, "cat", "/v/f"]),
        "kept\n"
    );
    // The image's root is untouched by a container's writes (overlay upper layer).
    e.ok(&[
        "run",
        "--rm",
        &img,
        "sh",
        "-c",
        "rm /bin/ls; echo changed > /etc/axion-test-image",
    ]);
    assert!(e
        .ok(&["run", "--rm", &img, "cat", "/etc/axion-test-image"])
        .contains("busybox:latest"));
    // -p: published port through the userland proxy.
    let port = free_port();
    e.ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "-p",
        &format!("127.0.0.1:{port}:8080"),
        &img,
        "sh",
        "-c",
        "echo -e 'HTTP/1.0 200 OK\\r\\n\\r\\nhello-port' > /tmp/r; while true; do nc -l -p 8080 < \
         /tmp/r; done",
    ]);
    let mut got = String::new();
    wait_until("the published port to answer", || {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let _ = s.write_all(b"GET / HTTP/1.0\r\n\r\n");
            got.clear();
            let _ = s.read_to_string(&mut got);
        }
        got.contains("hello-port")
    });
    let ps = e.ok(&["ps", "--format", "{{.Ports}}"]);
    assert!(ps.contains(&format!("127.0.0.1:{port}->8080/tcp")), "{ps}");
    // A taken host port fails the start with Docker's message; the engine keeps serving.
    let o = e.docker(&[
        "run",
        "-d",
        "--name",
        "web-twice",
        "-p",
        &format!("127.0.0.1:{port}:8080"),
        &img,
        "sleep",
        "60",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success()
            && err.contains(&format!(
                "Bind for 127.0.0.1:{port} failed: port is already allocated"
            )),
        "{o:?}"
    );
    e.ok(&["rm", "web-twice"]);
    // -p .../udp: one reply per datagram from a udpsvd server in the container (dd reads
    // the whole datagram in one read; `read` would take one byte and drop the rest).
    let uport = free_port();
    e.ok(&[
        "run",
        "-d",
        "--name",
        "dns-like",
        "-p",
        &format!("127.0.0.1:{uport}:5353/udp"),
        &img,
        "udpsvd",
        "0",
        "5353",
        "sh",
        "-c",
        "l=$(dd bs=512 count=1 2>/dev/null); echo udp-$l",
    ]);
    let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    client
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let reply = loop {
        let _ = client.send_to(b"ping\n", ("127.0.0.1", uport));
        let mut buf = [0u8; 64];
        if let Ok(n) = client.recv(&mut buf) {
            break String::from_utf8_lossy(&buf[..n]).into_owned();
        }
        let logs = e.docker(&["logs", "dns-like"]);
        assert!(
            Instant::now() < deadline,
            "no UDP answer on 127.0.0.1:{uport}; container logs: {logs:?}\nengine: {}",
            e.stderr()
        );
    };
    assert_eq!(reply, "udp-ping\n");
    assert_eq!(
        e.ok(&["ps", "--format", "{{.Ports}}", "-f", "name=^dns-like$"]),
        format!("127.0.0.1:{uport}->5353/udp\n")
    );
    e.ok(&["rm", "-f", "dns-like"]);
    // exec: output, exit code, env, working dir, same namespaces.
    let out = e.ok(&[
        "exec",
        "web",
        "sh",
        "-c",
        "echo $$ > /dev/null; hostname; cat /proc/1/cmdline | tr '\\0' ' '",
    ]);
    let mut lines = out.lines();
    let hostname = lines.next().unwrap_or("");
    assert_eq!(hostname.len(), 12, "{out}");
    assert!(lines.next().unwrap_or("").starts_with("sh -c"), "{out}");
    let o = e.docker(&["exec", "web", "sh", "-c", "exit 7"]);
    assert_eq!(o.status.code(), Some(7), "{o:?}");
    let out = e.ok(&[
        "exec",
        "-e",
        "X=1",
        "-w",
        "/tmp",
        "web",
        "sh",
        "-c",
        "echo $X $(pwd)",
    ]);
    assert_eq!(out, "1 /tmp\n");
    let mut c = e
        .docker_cmd(&["exec", "-i", "web", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin
        .take()
        .unwrap()
        .write_all(b"piped into exec\n")
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&c.wait_with_output().unwrap().stdout),
        "piped into exec\n"
    );
    // -t: a TTY (raw stream, no stdcopy framing).
    // The pty comes from the container's own devpts: `tty` names a device that exists there.
    let out = e.ok(&[
        "run",
        "--rm",
        "-t",
        &img,
        "sh",
        "-c",
        "test -t 0 && test -t 1 && tty && echo tty-ok",
    ]);
    assert_eq!(out, "/dev/pts/0\r\ntty-ok\r\n", "{out:?}");
    let out = e.ok(&[
        "exec",
        "-t",
        "web",
        "sh",
        "-c",
        "test -t 1 && tty && echo exec-tty",
    ]);
    assert!(
        out.starts_with("/dev/pts/") && out.ends_with("\r\nexec-tty\r\n"),
        "{out:?}"
    );
    // Docker's default capabilities, a seccomp filter; --privileged keeps everything.
    let out = e.ok(&[
        "run",
        "--rm",
        &img,
        "sh",
        "-c",
        "grep -E '^(CapBnd|CapEff|Seccomp):' /proc/self/status | tr -s '\\t ' ' '",
    ]);
    assert_eq!(
        out, "CapEff: 00000000a80425fb\nCapBnd: 00000000a80425fb\nSeccomp: 2\n",
        "{out:?}"
    );
    let out = e.ok(&[
        "exec",
        "web",
        "sh",
        "-c",
        "grep -E '^CapBnd:' /proc/self/status | tr -s '\\t ' ' '",
    ]);
    assert_eq!(out, "CapBnd: 00000000a80425fb\n", "{out:?}");
    let out = e.ok(&[
        "run",
        "--rm",
        "--cap-drop",
        "ALL",
        "--cap-add",
        "NET_ADMIN",
        &img,
        "sh",
        "-c",
        "grep -E '^CapBnd:' /proc/self/status | tr -s '\\t ' ' '",
    ]);
    assert_eq!(out, "CapBnd: 0000000000001000\n", "{out:?}");
    let out = e.ok(&[
        "run",
        "--rm",
        "--privileged",
        &img,
        "sh",
        "-c",
        "grep -E '^Seccomp:' /proc/self/status | tr -s '\\t ' ' '",
    ]);
    assert_eq!(out, "Seccomp: 0\n", "{out:?}");
    // Docker's seccomp profile follows the capabilities: CAP_SYS_ADMIN unlocks mount.
    let mount = "mkdir -p /mnt && mount -t tmpfs none /mnt && grep -c ' /mnt tmpfs ' /proc/mounts";
    let out = e.docker(&["run", "--rm", &img, "sh", "-c", mount]);
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("permission denied"),
        "mount without CAP_SYS_ADMIN: {out:?}"
    );
    assert_eq!(
        e.ok(&[
            "run",
            "--rm",
            "--cap-add",
            "SYS_ADMIN",
            &img,
            "sh",
            "-c",
            mount
        ]),
        "1\n"
    );
    // -it under a pseudo-terminal made by `script`.
    if Path::new("/usr/bin/script").exists() {
        let cmd = format!("docker run --rm -it {img} sh -c 'read x; echo got-$x'");
        let mut s = Command::new("script")
            .args(["-qec", &cmd, "/dev/null"])
            .env("DOCKER_HOST", &e.host)
            .env("DOCKER_CONFIG", e.config.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = s.stdin.take().unwrap();
        std::thread::sleep(Duration::from_millis(1500));
        stdin.write_all(b"typed\r").unwrap();
        let o = s.wait_with_output().unwrap();
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(out.contains("got-typed"), "{out:?}");
    } else {
        axion_tests::skip("`script` (util-linux) is missing, -it is not exercised");
    }
    e.ok(&["rm", "-f", "web"]);
}

/// Docker's default seccomp profile (an allow-list), `seccomp=unconfined`, and a custom profile
/// file (the docker CLI reads it and sends its contents).
#[test]
fn seccomp_default_unconfined_and_custom_profiles() {
    skip_unless_capable!();
    let (_reg, e, img) = engine_with_busybox(&[]);
    let status = "grep -E '^Seccomp:' /proc/self/status | tr -s '\\t ' ' '";
    // An ordinary workload runs under the filter: fork/exec, mkdir, ps, a server and a client.
    let work = "echo ok; mkdir /made && echo made; ps -o pid,comm | grep -c ps; \
                mkdir /www && echo served > /www/i && httpd -p 127.0.0.1:8080 -h /www && \
                wget -q -O - http://127.0.0.1:8080/i";
    let out = e.ok(&["run", "--rm", &img, "sh", "-c", work]);
    assert_eq!(out, "ok\nmade\n1\nserved\n", "{out:?}");
    assert_eq!(
        e.ok(&["run", "--rm", &img, "sh", "-c", status]),
        "Seccomp: 2\n"
    );
    // Refused by the default profile whatever the capabilities say: a user namespace,
    // personality flags other than the few Docker allows.
    let o = e.docker(&["run", "--rm", &img, "unshare", "-U", "true"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("Operation not permitted"),
        "unshare -U: {o:?}"
    );
    e.ok(&["run", "--rm", &img, "setarch", "linux32", "true"]);
    let o = e.docker(&["run", "--rm", &img, "setarch", "linux32", "-R", "true"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("Operation not permitted"),
        "personality(0x40008): {o:?}"
    );
    // exec sessions get the same filter.
    e.ok(&["run", "-d", "--name", "confined", &img, "sleep", "1000"]);
    let o = e.docker(&["exec", "confined", "unshare", "-U", "true"]);
    assert!(!o.status.success(), "unshare -U in exec: {o:?}");
    assert_eq!(
        e.ok(&["exec", "confined", "sh", "-c", status]),
        "Seccomp: 2\n"
    );
    e.ok(&["rm", "-f", "confined"]);
    // seccomp=unconfined lifts it.
    let out = e.ok(&[
        "run",
        "--rm",
        "--security-opt",
        "seccomp=unconfined",
        &img,
        "sh",
        "-c",
        &format!("{status}; setarch linux32 -R true && echo personality-ok"),
    ]);
    assert_eq!(out, "Seccomp: 0\npersonality-ok\n", "{out:?}");
    // A custom profile: everything allowed but mkdir/mkdirat.
    let dir = tempfile::tempdir().unwrap();
    let profile = dir.path().join("no-mkdir.json");
    std::fs::write(
        &profile,
        r#"{
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [ { "names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1 } ]
    }"#,
    )
    .unwrap();
    let opt = format!("seccomp={}", profile.display());
    let o = e.docker(&[
        "run",
        "--rm",
        "--security-opt",
        &opt,
        &img,
        "sh",
        "-c",
        "echo before; mkdir /x",
    ]);
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(
        !o.status.success() && out == "before\n" && err.contains("Operation not permitted"),
        "{o:?}"
    );
    // ... and it replaces the default: a user namespace is fine there.
    let out = e.ok(&[
        "run",
        "--rm",
        "--security-opt",
        &opt,
        &img,
        "sh",
        "-c",
        &format!("{status}; unshare -U true && echo userns-ok"),
    ]);
    assert_eq!(out, "Seccomp: 2\nuserns-ok\n", "{out:?}");
    // A broken profile is the client's error at create, with the reason.
    std::fs::write(
        &profile,
        concat!(
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "#,
            r#""syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_SOMETIMES"}]}"#
        ),
    )
    .unwrap();
    let o = e.docker(&["create", "--security-opt", &opt, &img, "true"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("unknown action \"SCMP_ACT_SOMETIMES\""),
        "{o:?}"
    );
    // --privileged: no filter.
    assert_eq!(
        e.ok(&["run", "--rm", "--privileged", &img, "sh", "-c", status]),
        "Seccomp: 0\n"
    );
}

#[test]
fn restart_policies_cp_and_engine_restart() {
    skip_unless_capable!();
    let (_reg, mut e, img) = engine_with_busybox(&[]);
    let count = |e: &Engine, n: &str| -> i64 {
        e.ok(&["inspect", "--format", "{{.RestartCount}}", n])
            .trim()
            .parse()
            .unwrap_or(-1)
    };
    e.ok(&[
        "run",
        "-d",
        "--restart",
        "always",
        "--name",
        "again",
        &img,
        "sh",
        "-c",
        "echo run; sleep 0.2; exit 1",
    ]);
    wait_until("two restarts", || count(&e, "again") >= 2);
    e.ok(&[
        "run",
        "-d",
        "--restart",
        "on-failure:2",
        "--name",
        "twice",
        &img,
        "sh",
        "-c",
        "exit 4",
    ]);
    wait_until("on-failure to give up", || {
        e.ok(&[
            "inspect",
            "--format",
            "{{.State.Status}} {{.RestartCount}}",
            "twice",
        ])
        .trim()
            == "exited 2"
    });
    assert_eq!(e.ok(&["wait", "twice"]).trim(), "4");
    e.ok(&[
        "run",
        "-d",
        "--restart",
        "always",
        "--name",
        "svc",
        &img,
        "sleep",
        "1000",
    ]);
    e.ok(&[
        "run",
        "-d",
        "--restart",
        "unless-stopped",
        "--name",
        "held",
        &img,
        "sleep",
        "1000",
    ]);
    e.ok(&["stop", "-t", "1", "held"]);
    e.ok(&["stop", "-t", "1", "again"]);
    let c = count(&e, "again");
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(
        count(&e, "again"),
        c,
        "a stopped container must not be restarted"
    );
    assert_eq!(
        e.ok(&["inspect", "--format", "{{.State.Status}}", "again"])
            .trim(),
        "exited"
    );
    // cp in both directions (running container).
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("up.txt"), "uploaded\n").unwrap();
    e.ok(&["cp", d.path().join("up.txt").to_str().unwrap(), "svc:/tmp/"]);
    assert_eq!(e.ok(&["exec", "svc", "cat", "/tmp/up.txt"]), "uploaded\n");
    e.ok(&[
        "cp",
        "svc:/etc/axion-test-image",
        d.path().join("down.txt").to_str().unwrap(),
    ]);
    assert!(std::fs::read_to_string(d.path().join("down.txt"))
        .unwrap()
        .contains("busybox:latest"));
    // cp with a stopped container.
    e.ok(&[
        "run",
        "--name",
        "stopped",
        &img,
        "sh",
        "-c",
        "echo inside > /made-here",
    ]);
    e.ok(&[
        "cp",
        "stopped:/made-here",
        d.path().join("made.txt").to_str().unwrap(),
    ]);
    assert_eq!(
        std::fs::read_to_string(d.path().join("made.txt")).unwrap(),
        "inside\n"
    );
    e.ok(&["cp", d.path().join("up.txt").to_str().unwrap(), "stopped:/"]);
    assert_eq!(e.ok(&["start", "-a", "stopped"]), "");
    e.ok(&["rm", "stopped"]);
    // Engine restart (a reboot): images, stopped containers, logs survive; "always" restarts.
    e.ok(&["run", "--name", "keep", &img, "echo", "kept output"]);
    e.restart(&[]);
    let imgs = e.ok(&["images", "--format", "{{.Repository}}:{{.Tag}}"]);
    assert!(imgs.contains(&img), "{imgs}");
    let ps = e.ok(&["ps", "-a", "--format", "{{.Names}} {{.State}}"]);
    assert!(ps.contains("keep exited"), "{ps}");
    assert_eq!(e.ok(&["logs", "keep"]), "kept output\n");
    wait_until("the always container to run again", || {
        e.ok(&["inspect", "--format", "{{.State.Status}}", "svc"])
            .trim()
            == "running"
    });
    // Docker's rule: "always" restarts on daemon start even after a manual stop.
    assert_ne!(
        e.ok(&["inspect", "--format", "{{.State.Status}}", "again"])
            .trim(),
        "created"
    );
    assert_eq!(
        e.ok(&["inspect", "--format", "{{.State.Status}}", "held"])
            .trim(),
        "exited",
        "unless-stopped + stopped: stays stopped"
    );
    assert_eq!(e.ok(&["start", "-a", "keep"]), "kept output\n");
    e.ok(&["rm", "-f", "svc", "again", "twice", "keep", "held"]);
}

/// Benchmark, not a test (run with `--ignored --nocapture`): `docker run --rm` of a cached
/// image to exit, and the engine's resident memory at idle.
#[test]
#[ignore]
fn bench_run_rm_and_idle_memory() {
    skip_unless_capable!();
    let (_reg, e, img) = engine_with_busybox(&[]);
    e.ok(&["run", "--rm", &img, "true"]);
    let mut times = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        e.ok(&["run", "--rm", &img, "true"]);
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    std::thread::sleep(Duration::from_secs(1));
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", e.child.id())).unwrap_or_default();
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .unwrap_or("VmRSS: ?")
        .to_string();
    eprintln!(
        "bench: docker run --rm busybox true: median {:.3} s (min {:.3}, max {:.3}) over 5 runs",
        times[2], times[0], times[4]
    );
    eprintln!("bench: engine idle memory {rss}");
}
