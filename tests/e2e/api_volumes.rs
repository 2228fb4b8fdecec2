//! Volumes and mounts of the engine inside a booted qemu image, driven by the real docker
//! CLI on the host over mutual TLS, in one VM (booted twice on the same data disk):
//! - `docker volume create/ls/inspect/rm/prune` with labels, filters, a refused driver, the
//!   in-use conflict, and prune's default (anonymous volumes only) and `--all`;
//! - data written through `-v NAME:/data` by one container is read by another after the
//!   first is removed; `:ro` refuses writes; a new volume gets the image's content at its
//!   mount point;
//! - `--mount type=tmpfs` and `--tmpfs` are tmpfs mounts with their size (/proc/mounts in
//!   the container), a `type=tmpfs` volume too; `--mount type=volume` in inspect's
//!   `Mounts`; shared propagation is refused at create;
//! - `--volumes-from` (with `:ro`), an anonymous volume for `-v /path` that `rm -v`
//!   removes;
//! - a volume's data survives a power-off and a boot of the same disk.

use std::time::Duration;

use anyhow::{Context, Result};
use axion_tests::guest::{both, text, Boot, Guest};
use axion_tests::registry::{Compression, Registry};
use axion_tests::require;

#[test]
fn volumes_and_mounts_in_the_vm() {
    if let Some(why) = axion_tests::vm_test_host_lacks() {
        require!(false, "{why}");
    }
    require!(axion_tests::runs("qemu-img"), "qemu-img is not installed");
    check().unwrap();
}

/// What this file asks of the guest besides the shared harness.
trait Volumes {
    fn volume_names(&self, filters: &[&str]) -> Result<Vec<String>>;
}

impl Volumes for Guest {
    /// `docker volume ls` with these `--filter`s: the names, sorted.
    fn volume_names(&self, filters: &[&str]) -> Result<Vec<String>> {
        let mut args = vec!["volume", "ls", "--format", "{{.Name}}"];
        for f in filters {
            args.extend(["--filter", f]);
        }
        let mut v: Vec<String> = self.ok(&args)?.lines().map(str::to_string).collect();
        v.sort();
        Ok(v)
    }
}

fn check() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let boot = Boot::new(dir.path())?.overlay()?;
    let registry = Registry::start()?;
    registry.push_busybox(
        &axion_tests::busybox(),
        "busybox",
        "latest",
        Compression::Gzip,
    )?;
    let reg = format!("10.0.2.2:{}", registry.port);

    let mut g = Guest::boot(&boot.clone().run_dir("vm1"))?;
    g.insecure_registries(&[&reg])?;
    let image = format!("{reg}/busybox:latest");
    g.ok(&["pull", &image])?;
    g.ok(&["tag", &image, "busybox"])?;

    // --- docker volume: create, ls with filters, inspect, the refused driver ----------------
    assert_eq!(
        g.ok(&["volume", "create", "--label", "team=a", "v1"])?,
        "v1"
    );
    assert_eq!(g.ok(&["volume", "create", "v2"])?, "v2");
    let generated = g.ok(&["volume", "create"])?;
    assert!(
        generated.len() == 64 && generated.bytes().all(|b| b.is_ascii_hexdigit()),
        "a generated volume name: {generated}"
    );
    let out = g.ok(&[
        "volume",
        "inspect",
        "-f",
        "{{.Name}} {{.Driver}} {{.Scope}} {{.Mountpoint}} {{index .Labels \"team\"}}",
        "v1",
    ])?;
    assert_eq!(
        out,
        "v1 local local /var/lib/axion-engine/volumes/v1/_data a"
    );
    let created = g.ok(&["volume", "inspect", "-f", "{{.CreatedAt}}", "v1"])?;
    assert!(created.ends_with('Z') && created.len() == 20, "{created}");
    let mut all = vec!["v1".to_string(), "v2".into(), generated.clone()];
    all.sort();
    assert_eq!(g.volume_names(&[])?, all);
    assert_eq!(g.volume_names(&["label=team=a"])?, ["v1"]);
    assert_eq!(g.volume_names(&["label=team"])?, ["v1"]);
    assert_eq!(g.volume_names(&["name=v2"])?, ["v2"]);
    assert_eq!(g.volume_names(&["driver=local", "name=v"])?, ["v1", "v2"]);
    assert_eq!(g.volume_names(&["dangling=true"])?, all);
    let e = g.fails(&["volume", "create", "-d", "nosuchdriver", "v3"])?;
    assert!(e.contains("plugin \"nosuchdriver\" not found"), "{e}");
    let e = g.fails(&["volume", "create", "bad/name"])?;
    assert!(e.contains("invalid characters"), "{e}");
    let e = g.fails(&["volume", "inspect", "nosuch"])?;
    assert!(e.contains("no such volume"), "{e}");

    // --- in use: rm is a conflict naming the container; dangling filters ------------------
    let user = g.ok(&[
        "create", "--name", "user", "-v", "v1:/data", "busybox", "true",
    ])?;
    let e = g.fails(&["volume", "rm", "v1"])?;
    assert!(
        e.contains("volume is in use") && e.contains(&user),
        "volume rm of a volume in use: {e}"
    );
    assert_eq!(g.volume_names(&["dangling=false"])?, ["v1"]);
    assert!(!g.volume_names(&["dangling=true"])?.contains(&"v1".into()));
    g.ok(&["rm", "user"])?;
    assert_eq!(
        g.ok(&["volume", "rm", "v1", &generated])?,
        format!("v1\n{generated}")
    );
    g.ok(&["volume", "rm", "-f", "v1"])?;

    // --- docker cp into and out of a stopped container goes through its volume ------------
    let cp = g.ok(&["create", "-v", "/vol1", "busybox", "cat", "/vol1/in.txt"])?;
    let local = dir.path().join("in.txt");
    std::fs::write(&local, "into the volume\n")?;
    g.ok(&["cp", &local.display().to_string(), &format!("{cp}:/vol1/")])?;
    assert_eq!(g.ok(&["start", "-a", &cp])?, "into the volume");
    let back = dir.path().join("back.txt");
    g.ok(&[
        "cp",
        &format!("{cp}:/vol1/in.txt"),
        &back.display().to_string(),
    ])?;
    assert_eq!(std::fs::read_to_string(&back)?, "into the volume\n");
    g.ok(&["rm", "-v", &cp])?;

    // --- data through -v NAME:/path outlives its container; :ro; the image's content -------
    g.ok(&[
        "run",
        "--name",
        "writer",
        "-v",
        "data:/data",
        "busybox",
        "sh",
        "-c",
        "echo hello > /data/f",
    ])?;
    g.ok(&["rm", "writer"])?;
    assert_eq!(
        g.ok(&[
            "run",
            "--rm",
            "-v",
            "data:/data",
            "busybox",
            "cat",
            "/data/f"
        ])?,
        "hello"
    );
    let e = g.fails(&[
        "run",
        "--rm",
        "-v",
        "data:/data:ro",
        "busybox",
        "touch",
        "/data/g",
    ])?;
    assert!(e.contains("Read-only file system"), "{e}");
    let out = g.ok(&[
        "inspect",
        "-f",
        "{{json .Mounts}}",
        &g.ok(&["create", "-v", "data:/data:ro", "busybox"])?,
    ])?;
    assert_eq!(
        out,
        concat!(
            r#"[{"Type":"volume","Name":"data","#,
            r#""Source":"/var/lib/axion-engine/volumes/data/_data","#,
            r#""Destination":"/data","Driver":"local","Mode":"ro","RW":false,"Propagation":""}]"#
        )
    );
    g.ok(&["container", "prune", "-f"])?;
    // A new volume at /etc gets the image's /etc.
    let out = g.ok(&[
        "run",
        "--rm",
        "-v",
        "etc:/etc",
        "busybox",
        "cat",
        "/etc/group",
    ])?;
    assert!(out.starts_with("root:x:0:"), "{out}");
    let out = g.ok(&["run", "--rm", "-v", "etc:/x", "busybox", "ls", "/x"])?;
    assert!(out.lines().any(|l| l == "passwd"), "{out}");
    let out = g.ok(&[
        "run",
        "--rm",
        "--mount",
        "type=volume,src=empty,dst=/etc,volume-nocopy",
        "busybox",
        "ls",
        "/etc",
    ])?;
    assert!(!out.lines().any(|l| l == "passwd"), "nocopy: {out}");

    // --- tmpfs: --mount type=tmpfs, --tmpfs, a tmpfs volume -------------------------------
    let out = g.ok(&[
        "run",
        "--rm",
        "--mount",
        "type=tmpfs,destination=/scratch,tmpfs-size=1m,tmpfs-mode=1770",
        "busybox",
        "sh",
        "-c",
        "grep ' /scratch ' /proc/mounts; stat -c %a /scratch",
    ])?;
    assert!(
        out.starts_with("tmpfs /scratch tmpfs rw,nosuid,nodev,noexec,")
            && out.contains("size=1024k")
            && out.contains("mode=1770")
            && out.ends_with("1770"),
        "--mount type=tmpfs: {out}"
    );
    let out = g.ok(&[
        "run",
        "--rm",
        "--tmpfs",
        "/run2:size=2m,exec",
        "busybox",
        "grep",
        " /run2 ",
        "/proc/mounts",
    ])?;
    assert!(
        out.starts_with("tmpfs /run2 tmpfs rw,nosuid,nodev,") && out.contains("size=2048k"),
        "--tmpfs: {out}"
    );
    assert!(
        !out.contains("noexec"),
        "exec overrides the default noexec: {out}"
    );
    let id = g.ok(&[
        "create",
        "--mount",
        "type=tmpfs,dst=/t",
        "--tmpfs",
        "/u",
        "busybox",
    ])?;
    assert_eq!(
        g.ok(&[
            "inspect",
            "-f",
            "{{json .Mounts}} {{json .HostConfig.Tmpfs}}",
            &id
        ])?,
        concat!(
            r#"[{"Type":"tmpfs","Source":"","Destination":"/t","Mode":"","RW":true,"#,
            r#""Propagation":""}] {"/u":""}"#
        )
    );
    g.ok(&["rm", &id])?;
    g.ok(&[
        "volume",
        "create",
        "--opt",
        "type=tmpfs",
        "--opt",
        "device=tmpfs",
        "--opt",
        "o=size=4m",
        "tv",
    ])?;
    let out = g.ok(&[
        "run",
        "--rm",
        "-v",
        "tv:/t",
        "busybox",
        "grep",
        " /t ",
        "/proc/mounts",
    ])?;
    assert!(
        out.starts_with("tmpfs /t tmpfs") && out.contains("size=4096k"),
        "{out}"
    );
    g.ok(&["volume", "rm", "tv"])?;

    // --- --mount type=volume in inspect; refused propagation and types ------------------
    let id = g.ok(&[
        "create",
        "--mount",
        "type=volume,src=mv,dst=/m,readonly,volume-label=k=v",
        "busybox",
    ])?;
    assert_eq!(
        g.ok(&["inspect", "-f", "{{json .Mounts}}", &id])?,
        concat!(
            r#"[{"Type":"volume","Name":"mv","Source":"/var/lib/axion-engine/volumes/mv/_data","#,
            r#""Destination":"/m","Driver":"local","Mode":"","RW":false,"Propagation":""}]"#
        )
    );
    assert_eq!(
        g.ok(&["inspect", "-f", "{{json .HostConfig.Mounts}}", &id])?,
        concat!(
            r#"[{"Type":"volume","Source":"mv","Target":"/m","ReadOnly":true,"#,
            r#""VolumeOptions":{"Labels":{"k":"v"},"DriverConfig":{}}}]"#
        )
    );
    assert_eq!(
        g.ok(&["volume", "inspect", "-f", "{{.Labels.k}}", "mv"])?,
        "v"
    );
    g.ok(&["rm", &id])?;
    let e = g.fails(&[
        "create",
        "--mount",
        "type=bind,src=/tmp,dst=/h,bind-propagation=rshared",
        "busybox",
    ])?;
    assert!(e.contains("not supported by this engine"), "{e}");
    let e = g.fails(&["create", "-v", "/tmp:/h:shared", "busybox"])?;
    assert!(e.contains("not supported by this engine"), "{e}");
    let e = g.fails(&["create", "-v", "aa:/x", "-v", "bb:/x", "busybox"])?;
    assert!(e.contains("Duplicate mount point: /x"), "{e}");
    let e = g.fails(&[
        "create",
        "--mount",
        "type=bind,src=/nonexistent,dst=/x",
        "busybox",
    ])?;
    assert!(
        e.contains("bind source path does not exist: /nonexistent"),
        "{e}"
    );

    // --- --volumes-from, anonymous volumes, rm -v -----------------------------------------
    g.ok(&[
        "run",
        "--name",
        "src",
        "-v",
        "fromvol:/v",
        "-v",
        "/anon",
        "busybox",
        "sh",
        "-c",
        "echo x > /v/f; echo y > /anon/f",
    ])?;
    let anon = g.ok(&[
        "inspect",
        "-f",
        "{{range .Mounts}}{{if eq .Destination \"/anon\"}}{{.Name}}{{end}}{{end}}",
        "src",
    ])?;
    assert_eq!(anon.len(), 64, "the anonymous volume's name: {anon}");
    assert_eq!(
        g.ok(&["volume", "inspect", "-f", "{{json .Labels}}", &anon])?,
        r#"{"com.docker.volume.anonymous":""}"#
    );
    let out = g.ok(&[
        "run",
        "--rm",
        "--volumes-from",
        "src",
        "busybox",
        "sh",
        "-c",
        "cat /v/f /anon/f",
    ])?;
    assert_eq!(out, "x\ny");
    let o = g.docker(&[
        "run",
        "--rm",
        "--volumes-from",
        "src:ro",
        "busybox",
        "sh",
        "-c",
        "cat /v/f; touch /v/g",
    ])?;
    assert!(
        !o.status.success()
            && text(&o) == "x"
            && String::from_utf8_lossy(&o.stderr).contains("Read-only"),
        "--volumes-from src:ro: {}",
        both(&o)
    );
    let id = g.ok(&["create", "--volumes-from", "src:ro", "busybox"])?;
    assert_eq!(
        g.ok(&["inspect", "-f", "{{json .HostConfig.VolumesFrom}}", &id])?,
        r#"["src:ro"]"#
    );
    g.ok(&["rm", &id])?;
    g.ok(&["rm", "-v", "src"])?;
    let names = g.volume_names(&[])?;
    assert!(!names.contains(&anon), "rm -v left {anon}: {names:?}");
    assert!(
        names.contains(&"fromvol".into()),
        "rm -v removed a named volume: {names:?}"
    );

    // --- prune: anonymous only by default, --all, label filters -------------------------
    let keep = g.ok(&["create", "--name", "keep", "-v", "/k", "busybox"])?;
    g.ok(&["run", "--rm", "-v", "/gone", "busybox", "true"])?;
    // --rm removed its anonymous volume; make an unused anonymous one by removing a
    // container without -v.
    let c = g.ok(&["create", "-v", "/left", "busybox"])?;
    let left = g.ok(&["inspect", "-f", "{{range .Mounts}}{{.Name}}{{end}}", &c])?;
    g.ok(&["rm", &c])?;
    let out = g.ok(&["volume", "prune", "-f"])?;
    assert!(out.contains(&left), "volume prune: {out}");
    let names = g.volume_names(&[])?;
    assert!(!names.contains(&left));
    assert!(names.contains(&"v2".into()) && names.contains(&"data".into()));
    g.ok(&["volume", "create", "--label", "tmp=1", "t1"])?;
    let out = g.ok(&["volume", "prune", "-af", "--filter", "label=tmp=1"])?;
    assert!(out.contains("t1"), "{out}");
    assert!(!g.volume_names(&[])?.contains(&"t1".into()));
    let out = g.ok(&["volume", "prune", "-af", "--filter", "label!=keep"])?;
    assert!(out.contains("v2") && out.contains("etc"), "{out}");
    let names = g.volume_names(&[])?;
    // `keep`'s anonymous volume is in use; `data` and `fromvol` are not, but...
    assert!(
        names.iter().any(|n| n.len() == 64),
        "in use, kept: {names:?}"
    );
    assert!(!names.contains(&"v2".into()));
    g.ok(&["rm", "-v", &keep])?;

    // --- a volume's data survives a power-off and a boot of the same disk ----------------
    g.ok(&["volume", "create", "--label", "boot=1", "persist"])?;
    g.ok(&[
        "run",
        "--rm",
        "-v",
        "persist:/p",
        "busybox",
        "sh",
        "-c",
        "echo survived > /p/f",
    ])?;
    let before = g.ok(&[
        "volume",
        "inspect",
        "-f",
        "{{.CreatedAt}} {{.Labels}}",
        "persist",
    ])?;
    let st =
        g.vm.powerdown_and_wait(Duration::from_secs(120))
            .with_context(|| format!("power button\nserial:\n{}", g.serial()))?;
    eprintln!("first boot powered off ({st})");
    drop(g);
    let g = Guest::boot(&boot.run_dir("vm2"))?;
    assert_eq!(
        g.ok(&[
            "volume",
            "inspect",
            "-f",
            "{{.CreatedAt}} {{.Labels}}",
            "persist"
        ])?,
        before
    );
    assert_eq!(
        g.ok(&["run", "--rm", "-v", "persist:/p", "busybox", "cat", "/p/f"])?,
        "survived"
    );
    g.ok(&["volume", "rm", "persist"])?;
    drop(registry);
    Ok(())
}
