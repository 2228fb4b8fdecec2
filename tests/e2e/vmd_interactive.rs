//! VM-per-container mode used interactively with the real docker CLI: `run -i` with piped
//! stdin, `run -it` under a pseudo-terminal (with its size), `exec` (-i, -t, -d, exit
//! codes), `attach` to a running container, Docker's errors for an exec in a stopped
//! container or an unknown exec id, and an exited container started again on a new VM with
//! its files. Every stream crosses the daemon's hijacked connection
//! and a hijacked stream to the engine in the container's VM. (tests/e2e/vmd.rs covers the
//! rest of the daemon; this is a separate test so each stays within its time.)

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use axion_tests::registry::{Compression, Registry};
use axion_tests::{image, qemus_under, require, DockerCli};
use xtask::image::Bootable;
use xtask::profile::Format;

#[test]
fn docker_cli_interactive_run_exec_attach_in_cloned_vms() {
    require!(
        axion_tests::have_qemu(),
        "qemu-system-x86_64 is not installed"
    );
    if let Some(why) = axion_tests::vmd_host_lacks() {
        require!(false, "{why}");
    }
    require!(
        Path::new("/usr/bin/script").exists(),
        "`script` (util-linux) is not installed: -it needs a terminal"
    );
    check().unwrap();
}

/// What these tests do with the CLI beyond [`DockerCli`]'s run and ok.
trait Interactive {
    fn piped(&self, args: &[&str], input: &str) -> Output;
    fn on_tty(&self, args: &[&str], size: (u16, u16), ready: &str, typed: &str) -> Result<Output>;
}

impl Interactive for DockerCli {
    /// `docker ARGS` with `input` on its stdin (then EOF).
    fn piped(&self, args: &[&str], input: &str) -> Output {
        let mut c = self
            .cmd(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("docker runs");
        c.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        wait_output(c, Duration::from_secs(300))
            .unwrap_or_else(|e| panic!("docker {}: {e:#}", args.join(" ")))
    }
    /// `docker ARGS` on a pseudo-terminal of `rows` x `cols` (util-linux `script`): waits
    /// for `ready` in its output, types `typed`, and returns the whole output and status.
    fn on_tty(
        &self,
        args: &[&str],
        (rows, cols): (u16, u16),
        ready: &str,
        typed: &str,
    ) -> Result<Output> {
        let cmd = format!(
            "stty rows {rows} cols {cols}; exec docker {}",
            args.iter()
                .map(|a| format!("'{a}'"))
                .collect::<Vec<_>>()
                .join(" ")
        );
        let mut s = Command::new("script")
            .args(["-qec", &cmd, "/dev/null"])
            .env("DOCKER_HOST", &self.host)
            .env("DOCKER_CONFIG", &self.config)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let out = Arc::new(Mutex::new(Vec::new()));
        let mut so = s.stdout.take().unwrap();
        let o2 = out.clone();
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = so.read(&mut buf) {
                if n == 0 {
                    break;
                }
                o2.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        let text =
            |o: &Arc<Mutex<Vec<u8>>>| String::from_utf8_lossy(&o.lock().unwrap()).into_owned();
        let deadline = Instant::now() + Duration::from_secs(180);
        while !text(&out).contains(ready) {
            if Instant::now() > deadline || s.try_wait()?.is_some() {
                let _ = s.kill();
                bail!(
                    "no {ready:?} from docker {args:?} on a terminal; output: {:?}",
                    text(&out)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // Give the CLI's resize (sent right after the start) a moment to land.
        std::thread::sleep(Duration::from_millis(500));
        let mut stdin = s.stdin.take().unwrap();
        stdin.write_all(typed.as_bytes())?;
        let status = wait_status(&mut s, Duration::from_secs(120))?;
        drop(stdin);
        let _ = reader.join();
        let mut stderr = Vec::new();
        s.stderr.take().unwrap().read_to_end(&mut stderr)?;
        let stdout = out.lock().unwrap().clone();
        Ok(Output {
            status,
            stdout,
            stderr,
        })
    }
}

fn wait_status(c: &mut Child, timeout: Duration) -> Result<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(st) = c.try_wait()? {
            return Ok(st);
        }
        if Instant::now() > deadline {
            let _ = c.kill();
            bail!("still running after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn wait_output(mut c: Child, timeout: Duration) -> Result<Output> {
    let (mut so, mut se) = (c.stdout.take().unwrap(), c.stderr.take().unwrap());
    let t1 = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = so.read_to_end(&mut v);
        v
    });
    let t2 = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = se.read_to_end(&mut v);
        v
    });
    let status = wait_status(&mut c, timeout)?;
    Ok(Output {
        status,
        stdout: t1.join().unwrap(),
        stderr: t2.join().unwrap(),
    })
}

/// One raw API request on the daemon's socket: (status, body).
fn api(socket: &Path, method: &str, path: &str, body: &str) -> Result<(u16, String)> {
    let mut s = std::os::unix::net::UnixStream::connect(socket)
        .with_context(|| format!("connecting to {}", socket.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(120)))?;
    write!(
        s,
        "{method} /v1.47{path} HTTP/1.1\r\nHost: vmd\r\nConnection: close\r\nContent-Type: \
         application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let status: u16 = raw
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("not an HTTP answer: {raw:?}"))?;
    let body = raw
        .split_once("\r\n\r\n")
        .map(|x| x.1)
        .unwrap_or("")
        .to_string();
    Ok((status, body))
}

/// What `docker load` checks of a `docker save` archive: manifest.json, each config's
/// digest, and each layer (decompressed) against its config's diff-id. Returns the tags.
fn check_docker_archive(tar_bytes: &[u8]) -> Result<Vec<String>> {
    use sha2::Digest;
    let mut files = std::collections::HashMap::new();
    for e in tar::Archive::new(tar_bytes).entries()? {
        let mut e = e?;
        let name = e.path()?.display().to_string();
        let mut v = Vec::new();
        e.read_to_end(&mut v)?;
        files.insert(name, v);
    }
    let get = |n: &str| {
        files
            .get(n)
            .with_context(|| format!("no {n} in the archive"))
    };
    let manifest: serde_json::Value = serde_json::from_slice(get("manifest.json")?)?;
    let mut tags = Vec::new();
    for img in manifest.as_array().context("manifest.json is no list")? {
        let cname = img["Config"].as_str().context("no Config")?;
        let cbytes = get(cname)?;
        let hex = hex::encode(sha2::Sha256::digest(cbytes));
        assert!(cname.ends_with(&hex), "config {cname} hashes to {hex}");
        let cfg: serde_json::Value = serde_json::from_slice(cbytes)?;
        let diffs = cfg["rootfs"]["diff_ids"]
            .as_array()
            .context("no diff_ids")?;
        let layers = img["Layers"].as_array().context("no Layers")?;
        assert_eq!(diffs.len(), layers.len(), "{cname}: layers and diff-ids");
        for (l, d) in layers.iter().zip(diffs) {
            let blob = get(l.as_str().context("a layer name")?)?;
            let mut raw = Vec::new();
            if blob.starts_with(&[0x1f, 0x8b]) {
                flate2::read::MultiGzDecoder::new(&blob[..]).read_to_end(&mut raw)?;
            } else {
                raw = blob.clone();
            }
            let got = format!("sha256:{}", hex::encode(sha2::Sha256::digest(&raw)));
            assert_eq!(Some(got.as_str()), d.as_str(), "layer {l}");
        }
        for t in img["RepoTags"].as_array().into_iter().flatten() {
            tags.push(t.as_str().unwrap_or_default().to_string());
        }
    }
    Ok(tags)
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn check() -> Result<()> {
    let Bootable::Kernel { kernel, initrd } = image("qemu", Format::Initramfs)? else {
        bail!("the initramfs format is not a kernel and an initramfs");
    };
    let Bootable::Disk { path: disk, .. } = image("qemu", Format::Qcow2)? else {
        bail!("the qcow2 format is not a disk");
    };
    let reg = Registry::start()?;
    reg.push_busybox(
        &axion_tests::busybox(),
        "busybox",
        "latest",
        Compression::Gzip,
    )?;
    let img = format!("{}/busybox:latest", reg.host());

    let dir = tempfile::Builder::new()
        .prefix("vmd-it-")
        .tempdir_in("/tmp")?;
    let state = dir.path().join("state");
    let opts = vmd::Options {
        state_dir: state.clone(),
        image: vmd::template::ImageFiles {
            kernel,
            initrd,
            disk: Some(disk),
        },
        memory_mib: 512,
        cpus: 1,
        accel: qemu::Accel::Tcg,
        cold_boot: false,
        insecure_registries: Vec::new(),
        // The warm pool at its default size: every create here without a volume takes a
        // pooled clone when one waits (interactive runs, create + start + exec, commit...).
        pool: vmd::pool::DEFAULT,
    };
    let t = Instant::now();
    let socket = dir.path().join("vmd.sock");
    let server = axion_tests::vmd::Server::start(opts, &socket).context("starting the daemon")?;
    eprintln!(
        "daemon up (template included) in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let cli = DockerCli::new(server.docker_host(), dir.path().join("docker-config"));
    cli.ok(&["pull", "-q", &img]);

    // run -i: piped stdin reaches the container (and its EOF ends `cat`); output and exit
    // code come back.
    let t = Instant::now();
    let o = cli.piped(&["run", "-i", "--rm", &img, "cat"], "hi\n");
    assert!(o.status.success(), "echo hi | docker run -i cat: {o:?}");
    assert_eq!(String::from_utf8_lossy(&o.stdout), "hi\n");
    eprintln!(
        "echo hi | docker run -i --rm cat: {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let o = cli.piped(
        &[
            "run",
            "-i",
            "--rm",
            &img,
            "sh",
            "-c",
            "tr a-z A-Z; echo done >&2; exit 5",
        ],
        "shout\nagain\n",
    );
    assert_eq!(o.status.code(), Some(5), "{o:?}");
    assert_eq!(String::from_utf8_lossy(&o.stdout), "SHOUT\nAGAIN\n");
    assert_eq!(String::from_utf8_lossy(&o.stderr), "done\n");
    // Megabytes of stdin (past every window on the way: the daemon's connection, the yamux
    // stream, the engine's pipe) arrive whole and in order.
    let big: Vec<u8> = (0..4u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let want = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&big))
    };
    let t = Instant::now();
    let mut c = cli
        .cmd(&["run", "-i", "--rm", &img, "sha256sum"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut stdin = c.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || stdin.write_all(&big));
    let o = wait_output(c, Duration::from_secs(300))?;
    feeder.join().unwrap()?;
    assert!(o.status.success(), "{o:?}");
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).split_whitespace().next(),
        Some(want.as_str()),
        "4 MiB piped into docker run -i"
    );
    eprintln!(
        "4 MiB through docker run -i: {:.1} s",
        t.elapsed().as_secs_f64()
    );
    // An endless producer (`yes | docker run -i ... head -n 1`): the container's exit ends
    // the run, whatever is still being sent.
    let mut c = cli
        .cmd(&["run", "-i", "--rm", &img, "head", "-n", "1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut stdin = c.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || while stdin.write_all(b"y\n").is_ok() {});
    let o = wait_output(c, Duration::from_secs(120))?;
    assert!(o.status.success(), "{o:?}");
    assert_eq!(String::from_utf8_lossy(&o.stdout), "y\n");
    feeder.join().unwrap();
    // Without -i the container's stdin is not the client's (EOF at once: `cat` ends).
    let o = cli.piped(
        &["run", "--rm", &img, "sh", "-c", "cat; echo no-input"],
        "not-for-you\n",
    );
    assert_eq!(String::from_utf8_lossy(&o.stdout), "no-input\n", "{o:?}");

    // -t: the container has a terminal (raw stream).
    let out = cli.ok(&[
        "run",
        "--rm",
        "-t",
        &img,
        "sh",
        "-c",
        "test -t 0 && test -t 1 && tty && echo tty-ok",
    ]);
    assert_eq!(out, "/dev/pts/0\r\ntty-ok\r\n", "{out:?}");
    // -it on a terminal: what is typed reaches the container, and the terminal's size
    // reaches its pty (the CLI's POST /containers/ID/resize, forwarded to the VM).
    let o = cli.on_tty(
        &[
            "run",
            "--rm",
            "-it",
            &img,
            "sh",
            "-c",
            "echo ready; read x; stty size; echo got-$x; exit 3",
        ],
        (37, 101),
        "ready",
        "typed\r",
    )?;
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("got-typed"),
        "docker run -it: {out:?} {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        out.contains("37 101"),
        "the terminal's size did not reach the container's pty: {out:?}"
    );
    assert_eq!(
        o.status.code(),
        Some(3),
        "docker run -it exit code: {out:?}"
    );

    // ctrl-p ctrl-q (the CLI's detach keys) leaves the container running; attach again on
    // a terminal and the session goes on.
    let t = Instant::now();
    let o = cli.on_tty(
        &[
            "run",
            "-it",
            "--name",
            "det",
            &img,
            "sh",
            "-c",
            "echo ready; read x; echo after-$x; exit 2",
        ],
        (24, 80),
        "ready",
        "\x10\x11",
    )?;
    assert_eq!(
        o.status.code(),
        Some(0),
        "detaching from docker run -it: {o:?}"
    );
    eprintln!(
        "docker run -it, then detached: {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    assert_eq!(
        cli.ok(&["inspect", "-f", "{{.State.Running}}", "det"])
            .trim(),
        "true",
        "the container stopped when the CLI detached"
    );
    let o = cli.on_tty(&["attach", "det"], (24, 80), "", "again\r")?;
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("after-again"),
        "docker attach on a terminal: {out:?} {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(o.status.code(), Some(2), "docker attach exit code: {out:?}");
    eprintln!(
        "docker attach on a terminal until the container's exit: {:.1} s",
        t.elapsed().as_secs_f64()
    );

    // exec: output, exit code, stdin, a TTY, detached; in the container's namespaces.
    cli.ok(&[
        "run",
        "-d",
        "--name",
        "box",
        "-e",
        "WHO=box",
        &img,
        "sh",
        "-c",
        "echo started > /tmp/mark; sleep 600",
    ]);
    let o = cli.run(&[
        "exec",
        "box",
        "sh",
        "-c",
        "cat /tmp/mark; echo $WHO; echo to-stderr >&2; exit 7",
    ]);
    assert_eq!(o.status.code(), Some(7), "{o:?}");
    assert_eq!(String::from_utf8_lossy(&o.stdout), "started\nbox\n");
    assert_eq!(String::from_utf8_lossy(&o.stderr), "to-stderr\n");
    let o = cli.piped(
        &["exec", "-i", "box", "sh", "-c", "cat; echo eof"],
        "piped into exec\n",
    );
    assert!(o.status.success(), "{o:?}");
    assert_eq!(String::from_utf8_lossy(&o.stdout), "piped into exec\neof\n");
    let out = cli.ok(&[
        "exec",
        "-t",
        "box",
        "sh",
        "-c",
        "test -t 1 && tty && echo exec-tty",
    ]);
    assert!(
        out.starts_with("/dev/pts/") && out.ends_with("\r\nexec-tty\r\n"),
        "{out:?}"
    );
    let o = cli.on_tty(
        &[
            "exec",
            "-it",
            "box",
            "sh",
            "-c",
            "echo ready; read x; stty size; echo exec-got-$x",
        ],
        (21, 77),
        "ready",
        "word\r",
    )?;
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("exec-got-word") && out.contains("21 77"),
        "docker exec -it (typed input, terminal size): {out:?} {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "docker exec -it: {o:?}");
    cli.ok(&["exec", "-d", "box", "sh", "-c", "echo detached > /tmp/d"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while cli.run(&["exec", "box", "cat", "/tmp/d"]).stdout != b"detached\n" {
        assert!(Instant::now() < deadline, "docker exec -d did not run");
        std::thread::sleep(Duration::from_millis(300));
    }
    let o = cli.run(&["exec", "box", "no-such-command"]);
    assert!(
        matches!(o.status.code(), Some(126 | 127)),
        "exec of a missing command: {o:?}"
    );
    let o = cli.run(&["exec", "nosuch", "true"]);
    assert!(
        !o.status.success()
            && String::from_utf8_lossy(&o.stderr).contains("No such container: nosuch"),
        "{o:?}"
    );

    // The exec API as the CLI uses it, by hand: create, start (not hijacked: the body is
    // the stream), inspect for the exit code; unknown ids are 404.
    let (st, body) = api(
        &socket,
        "POST",
        "/containers/box/exec",
        r#"{"Cmd":["sh","-c","echo api; exit 9"],"AttachStdout":true}"#,
    )?;
    assert_eq!(st, 201, "{body}");
    let eid = serde_json::from_str::<serde_json::Value>(&body)?["Id"]
        .as_str()
        .context("exec create without an Id")?
        .to_string();
    let (st, body) = api(
        &socket,
        "POST",
        &format!("/exec/{eid}/start"),
        r#"{"Detach":false}"#,
    )?;
    assert!(
        st == 200 && body.contains("api\n"),
        "exec start: {st} {body:?}"
    );
    let (st, body) = api(&socket, "GET", &format!("/exec/{eid}/json"), "")?;
    let i: serde_json::Value = serde_json::from_str(&body)?;
    assert_eq!(
        (
            st,
            i["ExitCode"].as_i64(),
            i["Running"].as_bool(),
            i["ID"].as_str()
        ),
        (200, Some(9), Some(false), Some(eid.as_str())),
        "{body}"
    );
    for (method, path) in [
        ("GET", "/exec/nope/json"),
        ("POST", "/exec/nope/start"),
        ("POST", "/exec/nope/resize?h=1&w=1"),
    ] {
        let (st, body) = api(&socket, method, path, "{}")?;
        assert_eq!(
            (st, body.as_str()),
            (404, r#"{"message":"No such exec instance: nope"}"#),
            "{method} {path}"
        );
    }

    // docker create, then docker start without -a (so nothing waits on the container while
    // it starts), then exec: it runs (issue 23: it stayed `created`, exec answered 409).
    let t0 = unix_now();
    let cs = cli
        .ok(&["create", "--name", "cs", &img, "sleep", "600"])
        .trim()
        .to_string();
    assert_eq!(cli.ok(&["start", "cs"]).trim(), "cs");
    assert_eq!(
        cli.ok(&["inspect", "-f", "{{.State.Status}}", "cs"]).trim(),
        "running",
        "docker create + docker start"
    );
    assert_eq!(cli.ok(&["exec", "cs", "echo", "in-cs"]), "in-cs\n");
    // rename: the new name reaches inspect and ps; the old one is free.
    cli.ok(&["rename", "cs", "cs2"]);
    assert_eq!(cli.ok(&["inspect", "-f", "{{.Name}}", &cs]).trim(), "/cs2");
    let o = cli.run(&["inspect", "cs"]);
    assert!(!o.status.success(), "the old name still resolves: {o:?}");
    // top goes through the VM's engine; stats too, with the guest's memory figure.
    let top = cli.ok(&["top", "cs2"]);
    assert!(
        top.contains("PID") && top.contains("sleep 600"),
        "docker top: {top}"
    );
    let mem = cli.ok(&["stats", "--no-stream", "--format", "{{.MemUsage}}", "cs2"]);
    assert!(
        mem.contains('/') && !mem.trim().starts_with("0B"),
        "docker stats --no-stream memory: {mem:?}"
    );
    // docker cp both ways, diff and export: the container's file system in its VM.
    let host_dir = tempfile::tempdir()?;
    let inside = host_dir.path().join("in.txt");
    std::fs::write(&inside, "copied into the VM\n")?;
    cli.ok(&["cp", &inside.display().to_string(), "cs2:/tmp/in.txt"]);
    assert_eq!(
        cli.ok(&["exec", "cs2", "cat", "/tmp/in.txt"]),
        "copied into the VM\n"
    );
    cli.ok(&[
        "exec",
        "cs2",
        "sh",
        "-c",
        "echo made in the VM > /tmp/out.txt",
    ]);
    let out = host_dir.path().join("out.txt");
    cli.ok(&["cp", "cs2:/tmp/out.txt", &out.display().to_string()]);
    assert_eq!(std::fs::read_to_string(&out)?, "made in the VM\n");
    let diff = cli.ok(&["diff", "cs2"]);
    assert!(
        diff.lines().any(|l| l == "A /tmp/in.txt") && diff.lines().any(|l| l == "C /tmp"),
        "docker diff: {diff}"
    );
    let o = cli.run(&["export", "cs2"]);
    assert!(o.status.success(), "docker export: {o:?}");
    let mut names = Vec::new();
    for e in tar::Archive::new(&o.stdout[..]).entries()? {
        names.push(e?.path()?.display().to_string());
    }
    assert!(
        names.iter().any(|n| n == "tmp/out.txt") && names.iter().any(|n| n == "bin/busybox"),
        "docker export: {} entries, no tmp/out.txt or bin/busybox",
        names.len()
    );
    // pause stops the VM (QMP stop): exec is refused meanwhile, stats come from its QEMU;
    // unpause continues it.
    cli.ok(&["pause", "cs2"]);
    assert_eq!(
        cli.ok(&[
            "inspect",
            "-f",
            "{{.State.Status}} {{.State.Paused}}",
            "cs2"
        ])
        .trim(),
        "paused true"
    );
    let o = cli.run(&["exec", "cs2", "true"]);
    assert!(
        !o.status.success() && String::from_utf8_lossy(&o.stderr).contains("is paused"),
        "exec in a paused container: {o:?}"
    );
    let mem = cli.ok(&["stats", "--no-stream", "--format", "{{.MemUsage}}", "cs2"]);
    assert!(
        !mem.trim().starts_with("0B"),
        "stats of a paused container: {mem:?}"
    );
    cli.ok(&["unpause", "cs2"]);
    assert_eq!(cli.ok(&["exec", "cs2", "echo", "resumed"]), "resumed\n");
    // restart of a running container: stopped and started again in the same VM (its files
    // stay); the daemon keeps following it.
    let pid = cli.ok(&["inspect", "-f", "{{.State.Pid}}", "cs2"]);
    cli.ok(&["restart", "-t", "1", "cs2"]);
    assert_eq!(
        cli.ok(&["inspect", "-f", "{{.State.Status}} {{.State.Pid}}", "cs2"])
            .trim(),
        format!("running {}", pid.trim()),
        "after docker restart"
    );
    assert_eq!(
        cli.ok(&["exec", "cs2", "cat", "/tmp/in.txt"]),
        "copied into the VM\n"
    );
    cli.ok(&["rm", "-f", "cs2"]);
    // The events of all that, in order, for this container.
    let events = cli.ok(&[
        "events",
        "--since",
        &t0.to_string(),
        "--until",
        &(unix_now() + 1).to_string(),
        "--filter",
        &format!("container={cs}"),
        "--format",
        "{{.Action}}",
    ]);
    let actions: Vec<&str> = events.lines().filter(|a| !a.starts_with("exec_")).collect();
    assert_eq!(
        actions,
        ["create", "start", "rename", "pause", "unpause", "restart", "kill", "die", "destroy"],
        "docker events: {events}"
    );

    // attach to a running container: stdin reaches it, its output and exit code come back.
    cli.ok(&[
        "run",
        "-d",
        "-i",
        "--name",
        "att",
        &img,
        "sh",
        "-c",
        "read l; echo got-$l; exit 4",
    ]);
    let o = cli.piped(&["attach", "att"], "line\n");
    assert_eq!(String::from_utf8_lossy(&o.stdout), "got-line\n", "{o:?}");
    assert_eq!(o.status.code(), Some(4), "{o:?}");

    // create -i, then start -ai: the attach comes before the start, as with run -i.
    cli.ok(&[
        "create",
        "-i",
        "--name",
        "later",
        &img,
        "sh",
        "-c",
        "read l; echo start-$l; exit 6",
    ]);
    let o = cli.piped(&["start", "-ai", "later"], "x\n");
    assert_eq!(String::from_utf8_lossy(&o.stdout), "start-x\n", "{o:?}");
    assert_eq!(o.status.code(), Some(6), "{o:?}");

    // An exited container runs again, on a new VM, with the files it wrote and without
    // those it deleted (its changes layer is kept on the host and stacked on its image):
    // `docker start -a` twice (the second run sees both earlier runs' files), then
    // `docker restart` of an exited container and `docker exec` in it.
    let t = Instant::now();
    let script = "ls /bin/true >/dev/null 2>&1 && echo true-here || echo true-gone; \
                  cat /f 2>/dev/null || echo none; echo run >>/f; rm -f /bin/true; exit 3";
    let o = cli.run(&["run", "--name", "keep", &img, "sh", "-c", script]);
    assert_eq!(
        (o.status.code(), String::from_utf8_lossy(&o.stdout).as_ref()),
        (Some(3), "true-here\nnone\n"),
        "first run: {o:?}"
    );
    let o = cli.run(&["start", "-a", "keep"]);
    assert_eq!(
        (o.status.code(), String::from_utf8_lossy(&o.stdout).as_ref()),
        (Some(3), "true-gone\nrun\n"),
        "docker start -a of the exited container: {o:?}"
    );
    let o = cli.run(&["start", "-a", "keep"]);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "true-gone\nrun\nrun\n",
        "a third run: {o:?}"
    );
    assert_eq!(
        cli.ok(&[
            "inspect",
            "-f",
            "{{.State.Status}} {{.State.ExitCode}}",
            "keep"
        ])
        .trim(),
        "exited 3"
    );
    eprintln!(
        "run + start -a + start -a of one container: {:.1} s",
        t.elapsed().as_secs_f64()
    );
    cli.ok(&[
        "run",
        "--name",
        "rs",
        &img,
        "sh",
        "-c",
        "test -f /f && exec sleep 600; echo made >/f",
    ]);
    cli.ok(&["restart", "-t", "1", "rs"]);
    assert_eq!(
        cli.ok(&["inspect", "-f", "{{.State.Status}}", "rs"]).trim(),
        "running",
        "docker restart of an exited container"
    );
    assert_eq!(cli.ok(&["exec", "rs", "cat", "/f"]), "made\n");
    // docker commit of an exited container (its kept changes) and of a running one (its
    // VM's changes too): images in the host store that `docker run` uses; history.
    cli.ok(&["commit", "-m", "first note", "keep", "kept:1"]);
    let o = cli.run(&[
        "run",
        "--rm",
        "--entrypoint",
        "sh",
        "kept:1",
        "-c",
        "cat /f; ls /bin/true || echo no-true",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "run\nrun\nrun\nno-true\n",
        "a container of the committed image: {o:?}"
    );
    cli.ok(&["exec", "rs", "sh", "-c", "echo live >/g"]);
    cli.ok(&["commit", "rs", "live:1"]);
    assert_eq!(
        cli.ok(&["run", "--rm", "live:1", "cat", "/f", "/g"]),
        "made\nlive\n"
    );
    let hist = cli.ok(&[
        "history",
        "--no-trunc",
        "--format",
        "{{.CreatedBy}}|{{.Comment}}",
        "kept:1",
    ]);
    assert!(
        hist.lines()
            .next()
            .is_some_and(|l| l.ends_with("|first note")),
        "docker history: {hist}"
    );
    let df = cli.ok(&["system", "df"]);
    assert!(
        df.contains("Images") && df.contains("Containers"),
        "docker system df: {df}"
    );
    // login checks the credentials against the registry on 127.0.0.1 (it needs none); a
    // committed image pushed there comes back by a pull (after its removal) and runs.
    let o = cli.piped(
        &["login", "-u", "someone", "--password-stdin", &reg.host()],
        "secret\n",
    );
    assert!(
        o.status.success() && String::from_utf8_lossy(&o.stdout).contains("Login Succeeded"),
        "docker login: {o:?}"
    );
    let pushed = format!("{}/kept:1", reg.host());
    cli.ok(&["tag", "kept:1", &pushed]);
    cli.ok(&["push", &pushed]);
    // docker save: a docker-archive that holds what `docker load` checks.
    let saved = cli.run(&["save", "kept:1", "live:1"]);
    assert!(saved.status.success(), "docker save: {saved:?}");
    let mut tags = check_docker_archive(&saved.stdout)?;
    tags.sort();
    assert_eq!(tags, ["kept:1", "live:1"]);
    cli.ok(&["rm", "-f", "keep", "rs"]);
    cli.ok(&["rmi", "kept:1", &pushed, "live:1"]);
    cli.ok(&["pull", "-q", &pushed]);
    assert_eq!(
        cli.ok(&["run", "--rm", "--entrypoint", "cat", &pushed, "/f"]),
        "run\nrun\nrun\n",
        "the pushed image, pulled back"
    );
    cli.ok(&["rmi", &pushed]);

    // Restart policies: on-failure:2 runs three times (the logs hold every run) and stops
    // with RestartCount 2; always restarts until `docker stop`, which ends it for good.
    let t = Instant::now();
    cli.ok(&[
        "run",
        "-d",
        "--name",
        "pol",
        "--restart",
        "on-failure:2",
        &img,
        "sh",
        "-c",
        "echo ran; exit 1",
    ]);
    cli.ok(&[
        "run",
        "-d",
        "--name",
        "alw",
        "--restart",
        "always",
        &img,
        "sh",
        "-c",
        "sleep 1",
    ]);
    let state_of = |name: &str| {
        cli.ok(&["inspect", "-f", "{{.State.Status}} {{.RestartCount}}", name])
            .trim()
            .to_string()
    };
    let until = |name: &str, what: &str, done: &dyn Fn(&str) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(240);
        loop {
            let s = state_of(name);
            if done(&s) {
                return s;
            }
            assert!(Instant::now() < deadline, "{name}: no {what} in 240 s: {s}");
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    until("pol", "exit after 2 restarts", &|s| s == "exited 2");
    assert_eq!(cli.ok(&["logs", "pol"]), "ran\nran\nran\n");
    eprintln!(
        "on-failure:2, three runs: {:.1} s",
        t.elapsed().as_secs_f64()
    );
    until("alw", "second restart", &|s| {
        s.split(' ').nth(1).and_then(|n| n.parse::<u32>().ok()) >= Some(2)
    });
    cli.ok(&["stop", "-t", "1", "alw"]);
    let stopped = until("alw", "stop", &|s| s.starts_with("exited "));
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        state_of("alw"),
        stopped,
        "docker stop ends --restart always"
    );
    cli.ok(&["rm", "pol", "alw"]);

    // A stopped container: exec is refused (409, Docker's wording); the exec made before
    // keeps its exit code after the VM is gone.
    // ...and an exec still running when its container stops ends with it, with the code of
    // a killed process (137), as under dockerd.
    let mut running = cli
        .cmd(&["exec", "box", "sh", "-c", "echo running; exec sleep 120"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut first = running.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        let n = first.read(&mut buf).unwrap_or(0);
        let _ = tx.send(String::from_utf8_lossy(&buf[..n]).into_owned());
        let _ = std::io::copy(&mut first, &mut std::io::sink());
    });
    let got = rx
        .recv_timeout(Duration::from_secs(120))
        .context("no output from the long exec")?;
    assert_eq!(got, "running\n");
    cli.ok(&["stop", "-t", "1", "box"]);
    let st = wait_status(&mut running, Duration::from_secs(60))?;
    assert_eq!(
        st.code(),
        Some(137),
        "docker exec whose container stopped under it"
    );
    let o = cli.run(&["exec", "box", "true"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("is not running"),
        "exec in a stopped container: {o:?}"
    );
    let (st, body) = api(
        &socket,
        "POST",
        "/containers/box/exec",
        r#"{"Cmd":["true"]}"#,
    )?;
    assert!(st == 409 && body.contains("is not running"), "{st} {body}");
    let (st, body) = api(&socket, "GET", &format!("/exec/{eid}/json"), "")?;
    assert!(
        st == 200 && body.contains(r#""ExitCode":9"#),
        "exec inspect after the VM went: {st} {body}"
    );
    let (st, body) = api(&socket, "POST", "/containers/box/resize?h=10&w=10", "")?;
    assert_eq!(st, 409, "resize of a stopped container: {body}");
    // rm forgets its execs.
    cli.ok(&["rm", "box", "att", "later", "det"]);
    let (st, _) = api(&socket, "GET", &format!("/exec/{eid}/json"), "")?;
    assert_eq!(st, 404, "the exec of a removed container is still known");

    assert_eq!(cli.ok(&["ps", "-aq"]).trim(), "");
    drop(server);
    let deadline = Instant::now() + Duration::from_secs(15);
    while !qemus_under(&state).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        qemus_under(&state).is_empty(),
        "QEMU processes left: {:?}",
        qemus_under(&state)
    );
    Ok(())
}
