//! `docker build` (issue 16) in one booted qemu image, driven by the real docker CLI 28 on the
//! host over mutual TLS with the classic builder (`DOCKER_BUILDKIT=0`; there is no buildx
//! here), and by docker-py's `client.images.build` when the compat venv has it: a multi-stage
//! Dockerfile on a local busybox (RUN writing a file, `COPY --from` of it, ENV, WORKDIR, USER,
//! ENTRYPOINT, `.dockerignore`), the result run; a second build all `Using cache` with the
//! same id; a one-file change rebuilding from the step that copies it; a failing RUN exiting
//! with its code and output; the built image pushed to Debian's `docker-registry` and pulled
//! back with the same id; intermediate images hidden from `docker images`; `ADD` of a URL
//! served from the host and `--add-host`; a killed client stopping its build; a remote
//! Dockerfile (docker-py's `path=URL`). Prints the rebuild times (not asserted; the
//! benchmark is `cargo xtask bench --build-only`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use axion_tests::registry::{Compression, Registry};
use axion_tests::{boot_ready, image, qemu, require};
use xtask::profile::Format;

#[test]
fn docker_build_in_the_vm() {
    require!(
        axion_tests::have_qemu(),
        "qemu-system-x86_64 is not installed"
    );
    require!(
        Path::new("/usr/bin/ssh").exists(),
        "the ssh client (openssh-client) is not installed"
    );
    require!(
        Path::new("/usr/bin/docker-registry").exists(),
        "docker-registry is not installed"
    );
    require!(
        Command::new("docker")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success()),
        "the docker CLI is not installed"
    );
    check().unwrap();
}

fn both(o: &Output) -> String {
    format!(
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

struct Guest {
    vm: qemu::Vm,
    dir: PathBuf,
    key: PathBuf,
    ssh_port: u16,
    docker_port: u16,
}

impl Guest {
    fn serial(&self) -> String {
        self.vm
            .serial_log()
            .map(|p| axion_tests::tail(p, 60))
            .unwrap_or_default()
    }

    fn ssh(&self, cmd: &str) -> Result<Output> {
        axion_tests::ssh(&self.key, self.ssh_port, &[], cmd)
            .output()
            .context("running ssh")
    }

    fn certs(&self) -> PathBuf {
        self.dir.join("certs")
    }

    fn fetch_certs(&self) -> Result<()> {
        std::fs::create_dir_all(self.certs())?;
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            let mut all = true;
            for f in ["ca", "cert", "key"] {
                let out = self.ssh(&format!("cat /var/lib/axion-engine/tls/client/{f}.pem"))?;
                if !out.status.success() || out.stdout.is_empty() {
                    all = false;
                    break;
                }
                std::fs::write(self.certs().join(format!("{f}.pem")), &out.stdout)?;
            }
            if all {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "no client certificate within 180 s\nserial:\n{}",
                    self.serial()
                );
            }
            std::thread::sleep(Duration::from_secs(3));
        }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        eprintln!("$ docker {}", args.join(" "));
        let mut c = Command::new("docker");
        c.env(
            "DOCKER_HOST",
            format!("tcp://127.0.0.1:{}", self.docker_port),
        )
        .env("DOCKER_TLS_VERIFY", "1")
        .env("DOCKER_CERT_PATH", self.certs())
        .env("DOCKER_CONFIG", self.dir.join("docker-config"))
        .args(args);
        c
    }

    fn docker(&self, args: &[&str]) -> Result<Output> {
        self.cmd(args).output().context("running docker")
    }

    fn ok(&self, args: &[&str]) -> Result<String> {
        let o = self.docker(args)?;
        if !o.status.success() {
            bail!(
                "docker {} failed ({}):\n{}\nserial:\n{}",
                args.join(" "),
                o.status,
                both(&o),
                self.serial()
            );
        }
        Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
    }

    fn wait_engine(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let o = self.docker(&["version", "--format", "{{.Server.APIVersion}}"])?;
            if o.status.success() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("engine silent for 120 s: {}\n{}", both(&o), self.serial());
            }
            std::thread::sleep(Duration::from_secs(2));
        }
    }

    fn id(&self, name: &str) -> Result<String> {
        self.ok(&["image", "inspect", "--format", "{{.Id}}", name])
    }

    /// `DOCKER_BUILDKIT=0 docker build ARGS`: (exit code, stdout+stderr, seconds).
    fn build(&self, args: &[&str]) -> Result<(i32, String, f64)> {
        let mut full = vec!["build"];
        full.extend_from_slice(args);
        let t0 = Instant::now();
        let o = self
            .cmd(&full)
            .env("DOCKER_BUILDKIT", "0")
            .output()
            .context("running docker build")?;
        let secs = t0.elapsed().as_secs_f64();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        eprintln!("{text}");
        Ok((o.status.code().unwrap_or(-1), text, secs))
    }
}

fn write(dir: &Path, files: &[(&str, &str)]) -> Result<()> {
    for (name, body) in files {
        let p = dir.join(name);
        std::fs::create_dir_all(p.parent().expect("a parent"))?;
        std::fs::write(&p, body)?;
    }
    Ok(())
}

const MULTI: &str = "\
# syntax=docker/dockerfile:1
ARG BASE=busybox
FROM ${BASE} AS build
RUN mkdir -p /out \\
 && echo \"built in stage one\" > /out/msg
FROM ${BASE:-nothing}
ENV GREETING=hello \\
    WHO=\"the builder\"
WORKDIR /app
COPY --from=build /out/msg ./msg
COPY . /ctx/
COPY greet.sh /app/
RUN chmod 755 /app/greet.sh && echo app:x:1234:1234::/app:/bin/sh >> /etc/passwd
USER app
LABEL org.example.test=api_build
ENTRYPOINT [\"/app/greet.sh\"]
CMD [\"from\"]
";

const GREET: &str = "#!/bin/sh\necho \"$GREETING $1 $WHO as $(id -u) in $(pwd): $(cat msg)\"\n";

fn check() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (key, public) = axion_tests::ssh_keygen(dir.path(), "id")?;
    let xtask::image::Bootable::Kernel { kernel, initrd } = image("qemu", Format::Initramfs)?
    else {
        bail!("the initramfs format is not a kernel and an initramfs");
    };
    let registry = Registry::start()?;
    registry.push_busybox(
        &axion_tests::busybox(),
        "busybox",
        "latest",
        Compression::Gzip,
    )?;
    let reg = format!("10.0.2.2:{}", registry.port);
    let (ssh_port, docker_port) = (qemu::free_port()?, qemu::free_port()?);
    let (accel, _) = axion_tests::accel();
    let config = qemu::VmConfig::new()
        .accel(accel)
        .memory_mib(1024)
        .cpus(2)
        .run_dir(dir.path().join("vm"))
        .kernel(
            &kernel,
            Some(initrd),
            format!("console=ttyS0,115200 panic=-1 axion.ssh_key=\"{public}\""),
        )
        .user_net(
            qemu::NicModel::VirtioNet,
            vec![
                qemu::PortForward::tcp(ssh_port, 22),
                qemu::PortForward::tcp(docker_port, 2376),
            ],
        );
    let (vm, _ready) = boot_ready(config)?;
    let g = Guest {
        vm,
        dir: dir.path().to_path_buf(),
        key,
        ssh_port,
        docker_port,
    };
    g.fetch_certs()?;
    g.wait_engine()?;
    let o = g.ssh(&format!(
        "printf '%s' '{{\"insecure-registries\": [\"{reg}\"]}}' > \
         /var/lib/axion-engine/daemon.json && kill $(pidof engine)"
    ))?;
    assert!(o.status.success(), "daemon.json: {}", both(&o));
    std::thread::sleep(Duration::from_secs(2));
    g.wait_engine()?;
    let bb = format!("{reg}/busybox:latest");
    g.ok(&["pull", &bb])?;
    g.ok(&["tag", &bb, "busybox"])?;

    // --- a multi-stage build, run ---------------------------------------------------------
    let ctx = dir.path().join("ctx");
    write(
        &ctx,
        &[
            ("Dockerfile", MULTI),
            ("greet.sh", GREET),
            ("secret.txt", "not for the image"),
            ("sub/kept.txt", "kept"),
            (".dockerignore", "secret.txt\n# a comment\n"),
        ],
    )?;
    let ctx_s = ctx.display().to_string();
    let (code, out, first) = g.build(&["-t", "built:1", "-t", "built:2", &ctx_s])?;
    assert_eq!(code, 0, "the build failed:\n{out}\nserial:\n{}", g.serial());
    assert!(out.contains("Step 1/13 : FROM ${BASE} AS build"), "{out}");
    assert!(out.contains(" ---> Running in "), "{out}");
    assert!(out.contains("Successfully tagged built:1"), "{out}");
    assert!(out.contains("Successfully tagged built:2"), "{out}");
    let id = g.id("built:1")?;
    assert_eq!(id, g.id("built:2")?);
    let ran = g.ok(&["run", "--rm", "built:1"])?;
    assert_eq!(
        ran,
        "hello from the builder as 1234 in /app: built in stage one"
    );
    let listed = g.ok(&[
        "run",
        "--rm",
        "--entrypoint",
        "find",
        "built:1",
        "/ctx",
        "-type",
        "f",
    ])?;
    let mut files: Vec<&str> = listed.lines().collect();
    files.sort();
    assert_eq!(
        files,
        vec![
            "/ctx/.dockerignore",
            "/ctx/Dockerfile",
            "/ctx/greet.sh",
            "/ctx/sub/kept.txt"
        ],
        ".dockerignore keeps secret.txt out"
    );
    let label = g.ok(&[
        "image",
        "inspect",
        "--format",
        "{{index .Config.Labels \"org.example.test\"}} {{.Config.User}} {{.Config.WorkingDir}}",
        "built:1",
    ])?;
    assert_eq!(label, "api_build app /app");

    // --- the same again: all from the cache, the same image ----------------------------------
    let (code, out, cached) = g.build(&["-t", "built:1", &ctx_s])?;
    assert_eq!(code, 0, "{out}");
    let hits = out.matches("Using cache").count();
    assert_eq!(hits, 11, "every step but the two FROMs is cached:\n{out}");
    assert!(!out.contains("Running in"), "{out}");
    assert_eq!(
        g.id("built:1")?,
        id,
        "an unchanged rebuild gives the same image"
    );

    // --- one file changed: rebuilt from the step that copies it ------------------------------
    write(
        &ctx,
        &[("greet.sh", &GREET.replace("echo", "echo changed:"))],
    )?;
    let (code, out, changed) = g.build(&["-t", "built:3", &ctx_s])?;
    assert_eq!(code, 0, "{out}");
    // ENV, WORKDIR, COPY --from and the build stage's RUN come from the cache; `COPY .` sees
    // the change first.
    assert_eq!(out.matches("Using cache").count(), 4, "{out}");
    let ran = g.ok(&["run", "--rm", "built:3"])?;
    assert!(ran.starts_with("changed: hello"), "{ran}");
    eprintln!(
        "api_build: benchmark: first build {first:.1} s, no-change rebuild {cached:.1} s, \
         one-file change {changed:.1} s (CLI wall time, TCG guest)"
    );

    // --- --no-cache, build args, target ---------------------------------------------------
    let (code, out, _) = g.build(&[
        "--no-cache",
        "--target",
        "build",
        "--build-arg",
        "BASE=busybox:latest",
        "-t",
        "stage1",
        &ctx_s,
    ])?;
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("Using cache"), "{out}");
    assert!(out.contains("Step 2/2 : RUN"), "{out}");
    assert_eq!(
        g.ok(&["run", "--rm", "stage1", "cat", "/out/msg"])?,
        "built in stage one"
    );

    // --- a failing RUN: its output and exit code ----------------------------------------------
    let bad = dir.path().join("bad");
    write(
        &bad,
        &[(
            "Dockerfile",
            "FROM busybox\nRUN echo about to fail && echo on stderr >&2 && exit 3\n",
        )],
    )?;
    let (code, out, _) = g.build(&["-t", "bad", &bad.display().to_string()])?;
    assert_eq!(code, 3, "a failing RUN's exit code is the CLI's:\n{out}");
    assert!(out.contains("about to fail"), "{out}");
    assert!(out.contains("on stderr"), "{out}");
    assert!(
        out.contains(concat!(
            "The command '/bin/sh -c echo about to fail && echo on stderr >&2 && exit 3' ",
            "returned a non-zero code: 3"
        )),
        "{out}"
    );
    assert!(g.docker(&["image", "inspect", "bad"])?.status.code() != Some(0));
    let left = g.ok(&["ps", "-a", "-q"])?;
    assert!(
        left.lines().count() <= 1,
        "a failed step leaves at most its container: {left}"
    );

    // --- a Dockerfile error is a clear message -------------------------------------------------
    write(&bad, &[("Dockerfile", "FROM busybox\nFROBNICATE x\n")])?;
    let (code, out, _) = g.build(&[&bad.display().to_string()])?;
    assert_ne!(code, 0);
    assert!(out.contains("unknown instruction: FROBNICATE"), "{out}");

    // --- push the built image and pull it back -------------------------------------------
    let pushed = format!("{reg}/built:1");
    g.ok(&["tag", "built:1", &pushed])?;
    g.ok(&["push", &pushed])?;
    g.ok(&["rmi", &pushed])?;
    g.ok(&["rmi", "built:1", "built:2"])?;
    g.ok(&["pull", &pushed])?;
    assert_eq!(g.id(&pushed)?, id, "the pulled image is the built one");

    // --- docker builder prune empties the cache ----------------------------------------------
    let o = g.docker(&["builder", "prune", "-f"])?;
    assert!(o.status.success(), "builder prune: {}", both(&o));
    let (code, out, _) = g.build(&["-t", "built:4", &ctx_s])?;
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        out.matches("Using cache").count(),
        0,
        "after a prune:\n{out}"
    );

    // --- intermediate images are hidden, as dockerd hides them -------------------------------
    let step = g.ok(&["image", "inspect", "--format", "{{.Parent}}", "built:3"])?;
    assert!(step.starts_with("sha256:"), "{step}");
    let shown = g.ok(&["images", "-q", "--no-trunc"])?;
    let all = g.ok(&["images", "-a", "-q", "--no-trunc"])?;
    assert!(
        all.contains(&step),
        "`docker images -a` lists the steps:\n{all}"
    );
    assert!(!shown.contains(&step), "without -a it does not:\n{shown}");

    // --- ADD of a URL (a server on the host, 10.0.2.2 from the guest), --add-host ------------
    let web = serve(vec![
        ("/hello.txt", b"hello from the web\n".to_vec()),
        (
            "/remote/Dockerfile",
            b"FROM busybox\nCMD [\"echo\", \"remote\"]\n".to_vec(),
        ),
    ])?;
    let add = dir.path().join("add");
    let df = format!(
        "FROM busybox\nADD http://10.0.2.2:{web}/hello.txt /hello.txt\n\
         RUN cat /hello.txt && stat -c %a /hello.txt && grep 'h.test' /etc/hosts\n"
    );
    write(&add, &[("Dockerfile", &df)])?;
    let add_s = add.display().to_string();
    let (code, out, _) = g.build(&["--add-host", "h.test:10.1.2.3", "-t", "added", &add_s])?;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("hello from the web"), "{out}");
    assert!(
        out.contains("\n600\n"),
        "a downloaded file is mode 0600:\n{out}"
    );
    assert!(out.contains("10.1.2.3\th.test"), "{out}");

    docker_py(&g, web)?;
    Ok(())
}

/// Serves `files` (path, body) on 127.0.0.1 from a thread: its port.
fn serve(files: Vec<(&'static str, Vec<u8>)>) -> Result<u16> {
    Ok(test_support::http::serve_files(files)?.port())
}

/// docker-py's `client.images.build` against the same engine, when the compat venv has it:
/// a context from a file object, and a remote Dockerfile the engine downloads (from the
/// server on `web`).
fn docker_py(g: &Guest, web: u16) -> Result<()> {
    let cache = std::env::var_os("AXION_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/axion")));
    let python = cache.map(|c| c.join("compat-venv/bin/python"));
    let Some(python) = python.filter(|p| p.exists()) else {
        test_skip::skip("no compat venv with docker-py (cargo xtask compat makes it)");
        return Ok(());
    };
    let certs = g.certs();
    let script = r#"
import io, docker
client = docker.from_env()
df = io.BytesIO(b"FROM busybox\nARG WHO\nRUN echo py-$WHO > /who\nCMD [\"cat\", \"/who\"]\n")
image, logs = client.images.build(fileobj=df, tag="pybuilt", buildargs={"WHO": "docker"})
print("".join(l.get("stream", "") for l in logs))
print("RESULT", client.containers.run("pybuilt", remove=True).decode().strip())
image, _ = client.images.build(path="http://10.0.2.2:WEB/remote/Dockerfile", tag="remote")
print("REMOTE", client.containers.run("remote", remove=True).decode().strip())
"#
    .replace("WEB", &web.to_string());
    // requests lets these override the VM's CA that docker-py passes (as in xtask compat).
    let o = Command::new(&python)
        .arg("-c")
        .arg(&script)
        .env("DOCKER_HOST", format!("tcp://127.0.0.1:{}", g.docker_port))
        .env("DOCKER_TLS_VERIFY", "1")
        .env("DOCKER_CERT_PATH", &certs)
        .env_remove("REQUESTS_CA_BUNDLE")
        .env_remove("CURL_CA_BUNDLE")
        .output()?;
    assert!(o.status.success(), "docker-py build: {}", both(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("RESULT py-docker"), "{out}");
    assert!(out.contains("REMOTE remote"), "{out}");
    Ok(())
}
