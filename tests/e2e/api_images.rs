//! The images and system group of the Docker API (issue 15) in one booted qemu image, driven
//! by the real docker CLI on the host over mutual TLS, against Debian's `docker-registry` on
//! the host's 127.0.0.1 (10.0.2.2 from the guest): one plain registry and one with basic
//! auth (htpasswd). Checks `docker history`, `import`, `commit --change`, `push` (with a
//! cross-repository mount) then `rmi` then `pull` giving the same id, `save | load` keeping
//! ids and tags (and two saves being the same bytes), `image prune`, `system df`, `login`
//! with wrong and right passwords and the credentials then used for push and pull, and
//! `info`'s swarm state.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use axion_tests::guest::{both, Boot, Guest};
use axion_tests::registry::{free_port, Compression, Registry};
use axion_tests::require;

#[test]
fn images_and_system_in_the_vm() {
    if let Some(why) = axion_tests::vm_test_host_lacks() {
        require!(false, "{why}");
    }
    check().unwrap();
}

/// What this file asks of the guest besides the shared harness.
trait Images {
    fn id(&self, name: &str) -> Result<String>;
}

impl Images for Guest {
    /// An image's id.
    fn id(&self, name: &str) -> Result<String> {
        self.ok(&["image", "inspect", "--format", "{{.Id}}", name])
    }
}

/// Debian's registry with basic auth (user `u`, password `pw`), killed on drop.
struct AuthRegistry {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for AuthRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// None (with the reason) when no bcrypt hash can be made here for the htpasswd file.
fn auth_registry() -> Result<std::result::Result<AuthRegistry, String>> {
    let hash = Command::new("python3")
        .args([
            "-W",
            "ignore",
            "-c",
            "import crypt; \
             print(crypt.crypt('pw', crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=32)))",
        ])
        .output();
    let hash = match hash {
        Ok(o) if o.status.success() && o.stdout.starts_with(b"$2") => {
            String::from_utf8_lossy(&o.stdout).trim().to_string()
        }
        _ => {
            return Ok(Err(
                "python3's crypt cannot make a bcrypt hash for htpasswd".into(),
            ))
        }
    };
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("htpasswd"), format!("u:{hash}\n"))?;
    let port = free_port();
    let cfg = dir.path().join("config.yml");
    std::fs::write(
        &cfg,
        format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    \
             rootdirectory: {}\nauth:\n  htpasswd:\n    realm: basic-realm\n    path: {}\n\
             http:\n  addr: 127.0.0.1:{port}\n",
            dir.path().join("data").display(),
            dir.path().join("htpasswd").display()
        ),
    )?;
    let child = Command::new("/usr/bin/docker-registry")
        .arg("serve")
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let r = AuthRegistry {
        child,
        port,
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("the auth registry did not listen within 20 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(Ok(r))
}

fn check() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let boot = Boot::new(dir.path())?;
    let registry = Registry::start()?;
    registry.push_busybox(
        &axion_tests::busybox(),
        "busybox",
        "latest",
        Compression::Gzip,
    )?;
    let reg = format!("10.0.2.2:{}", registry.port);
    let areg = auth_registry()?;
    let areg_host = areg.as_ref().ok().map(|a| format!("10.0.2.2:{}", a.port));

    let g = Guest::boot(&boot)?;
    let insecure: Vec<&str> = std::iter::once(reg.as_str())
        .chain(areg_host.as_deref())
        .collect();
    g.insecure_registries(&insecure)?;

    let bb = format!("{reg}/busybox:latest");
    g.ok(&["pull", &bb])?;
    g.ok(&["tag", &bb, "busybox"])?;
    let bb_id = g.id("busybox")?;

    // --- info: dockerd's keys -----------------------------------------------------------
    let out = g.ok(&[
        "info",
        "--format",
        "{{.Swarm.LocalNodeState}} {{.CgroupVersion}} {{.ExperimentalBuild}} {{.Debug}}",
    ])?;
    assert_eq!(out, "inactive 2 false false");

    // --- history ----------------------------------------------------------------------------
    let out = g.ok(&[
        "history",
        "--no-trunc",
        "--format",
        "{{.ID}}|{{.Size}}",
        "busybox",
    ])?;
    let first = out.lines().next().unwrap_or("");
    assert!(
        first.starts_with(&bb_id),
        "history's top is the image: {out}"
    );

    // --- import -------------------------------------------------------------------------------
    let layer = axion_tests::busybox_images::layer(&axion_tests::busybox(), "imported")?;
    let tarball = dir.path().join("rootfs.tar");
    std::fs::write(&tarball, &layer)?;
    let tarball_s = tarball.display().to_string();
    let imp = g.ok(&[
        "import",
        "-c",
        "CMD [\"cat\", \"/etc/axion-test-image\"]",
        "-c",
        "ENV IMPORTED=yes",
        "-m",
        "from the test",
        &tarball_s,
        "imported:1",
    ])?;
    assert!(imp.starts_with("sha256:"), "import prints the id: {imp}");
    assert_eq!(g.ok(&["run", "--rm", "imported:1"])?, "imported");
    let out = g.ok(&["history", "--format", "{{.Comment}}", "imported:1"])?;
    assert_eq!(out, "from the test");
    // A URL source is refused, not ignored.
    let o = g.docker(&["import", "http://10.0.2.2:1/x.tar", "nope:1"])?;
    assert!(!o.status.success(), "import from a URL: {}", both(&o));

    // --- commit with --change ----------------------------------------------------------------
    g.ok(&[
        "run",
        "--name",
        "c1",
        "busybox",
        "sh",
        "-c",
        "echo data > /hello; rm /bin/vi",
    ])?;
    let cid = g.ok(&[
        "commit",
        "-c",
        "CMD [\"cat\", \"/hello\"]",
        "-c",
        "ENV X=1",
        "-c",
        "LABEL made=by-commit",
        "-c",
        "WORKDIR /srv",
        "c1",
        "committed:1",
    ])?;
    assert!(cid.starts_with("sha256:"), "{cid}");
    assert_eq!(g.ok(&["run", "--rm", "committed:1"])?, "data");
    let out = g.ok(&[
        "run",
        "--rm",
        "committed:1",
        "sh",
        "-c",
        "pwd; ls /bin/vi || echo gone",
    ])?;
    assert!(out.contains("/srv") && out.contains("gone"), "{out}");
    let out = g.ok(&[
        "image",
        "inspect",
        "--format",
        "{{.Config.Labels.made}} {{.Config.Env}}",
        "committed:1",
    ])?;
    assert!(
        out.starts_with("by-commit [") && out.contains("X=1"),
        "{out}"
    );
    let o = g.docker(&["commit", "-c", "RUN rm -rf /", "c1", "bad:1"])?;
    assert!(!o.status.success(), "RUN in --change: {}", both(&o));

    // --- push, rmi, pull: the same id; the base layer is mounted from busybox's repo -----------
    let pushed = format!("{reg}/committed:1");
    g.ok(&["tag", "committed:1", &pushed])?;
    let committed_id = g.id(&pushed)?;
    let out = g.ok(&["push", &pushed])?;
    assert!(out.contains("Mounted from busybox"), "{out}");
    assert!(out.contains("Pushed"), "{out}");
    assert!(out.contains("1: digest: sha256:"), "{out}");
    g.ok(&["rmi", &pushed, "committed:1"])?;
    g.ok(&["pull", &pushed])?;
    assert_eq!(g.id(&pushed)?, committed_id, "pushed then pulled");
    let out = g.ok(&["push", &pushed])?;
    assert!(out.contains("Layer already exists"), "{out}");

    // --- save | load -------------------------------------------------------------------------
    let a = dir.path().join("a.tar");
    let b = dir.path().join("b.tar");
    let (a_s, b_s) = (a.display().to_string(), b.display().to_string());
    g.ok(&["save", "-o", &a_s, "busybox", &pushed])?;
    g.ok(&["save", "-o", &b_s, "busybox", &pushed])?;
    assert!(std::fs::read(&a)? == std::fs::read(&b)?, "two saves differ");
    let list = Command::new("tar").arg("tf").arg(&a).output()?;
    let names = String::from_utf8_lossy(&list.stdout);
    for n in ["manifest.json", "index.json", "oci-layout", "repositories"] {
        assert!(
            names.lines().any(|l| l == n),
            "{n} not in the archive: {names}"
        );
    }
    g.ok(&["rm", "c1"])?;
    g.ok(&["rmi", "busybox", &bb, &pushed])?;
    let out = g.ok(&["load", "-i", &a_s])?;
    assert!(out.contains("Loaded image: busybox:latest"), "{out}");
    assert_eq!(g.id("busybox")?, bb_id);
    assert_eq!(g.id(&pushed)?, committed_id);

    // --- prune -------------------------------------------------------------------------------
    // Importing again under the same tag leaves the first import dangling.
    g.ok(&["import", "-c", "LABEL again=1", &tarball_s, "imported:1"])?;
    let out = g.ok(&["image", "prune", "-f"])?;
    assert!(out.contains(&format!("deleted: {}", imp.trim())), "{out}");
    let out = g.ok(&["image", "prune", "-a", "-f", "--filter", "label=again=1"])?;
    assert!(out.contains("untagged: imported:1"), "{out}");
    assert!(g.docker(&["image", "inspect", "imported:1"])?.status.code() != Some(0));
    assert!(
        !g.ok(&["images", "-q", "busybox"])?.is_empty(),
        "prune -a with a label filter"
    );

    // --- system df ---------------------------------------------------------------------------
    g.ok(&[
        "run",
        "--name",
        "c2",
        "busybox",
        "sh",
        "-c",
        "head -c 100000 /dev/zero > /big",
    ])?;
    let out = g.ok(&[
        "system",
        "df",
        "--format",
        "{{.Type}} {{.TotalCount}} {{.Active}} {{.Size}}",
    ])?;
    assert!(out.contains("Images 2 1"), "{out}");
    assert!(out.contains("Containers 1 0 100kB"), "{out}");

    // --- login: wrong, right, then the credentials push and pull ---------------------------------
    match (&areg, &areg_host) {
        (Ok(_), Some(host)) => {
            let o = g.with_stdin(&["login", "-u", "u", "--password-stdin", host], b"wrong\n")?;
            assert!(
                !o.status.success(),
                "a wrong password logged in: {}",
                both(&o)
            );
            assert!(both(&o).contains("401"), "{}", both(&o));
            let o = g.with_stdin(&["login", "-u", "u", "--password-stdin", host], b"pw\n")?;
            assert!(o.status.success(), "login: {}", both(&o));
            assert!(both(&o).contains("Login Succeeded"), "{}", both(&o));
            let img = format!("{host}/private:1");
            g.ok(&["tag", "busybox", &img])?;
            g.ok(&["push", &img])?;
            g.ok(&["rmi", &img])?;
            g.ok(&["pull", &img])?;
            assert_eq!(g.id(&img)?, bb_id);
            g.ok(&["logout", host])?;
            g.ok(&["rmi", &img])?;
            let o = g.docker(&["pull", &img])?;
            assert!(
                !o.status.success(),
                "pulled without credentials: {}",
                both(&o)
            );
        }
        (Err(why), _) => axion_tests::skip(format!("login part not run: {why}")),
        _ => unreachable!("a host for a started registry"),
    }
    Ok(())
}
