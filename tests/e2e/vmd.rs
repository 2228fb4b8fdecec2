//! VM-per-container mode (host/vmd): the real docker CLI against the host daemon's unix
//! socket; every container runs in its own QEMU cloned from the saved template VM, its
//! image from a registry on 127.0.0.1. One test, because the template (a boot and a save)
//! is built once and shared.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use axion_tests::registry::{Compression, Registry};
use axion_tests::{image, qemus_under, require, DockerCli};
use xtask::image::Bootable;
use xtask::profile::Format;

#[test]
fn docker_cli_runs_each_container_in_its_own_cloned_vm() {
    require!(
        axion_tests::have_qemu(),
        "qemu-system-x86_64 is not installed"
    );
    if let Some(why) = axion_tests::vmd_host_lacks() {
        require!(false, "{why}");
    }
    check().unwrap();
}

fn pid_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

/// Checks that `pid` sits in cgroups named `name` with exactly these limits; returns the
/// cgroup directories.
fn check_limits(
    pid: u32,
    name: &str,
    memory: i64,
    (quota, period): (i64, i64),
) -> Result<Vec<PathBuf>> {
    let own = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    let root = Path::new("/sys/fs/cgroup");
    let path_of = |controller: &str| -> Result<PathBuf> {
        let line = own
            .lines()
            .find(|l| {
                l.split(':')
                    .nth(1)
                    .is_some_and(|c| c.split(',').any(|c| c == controller))
            })
            .with_context(|| format!("no {controller:?} line in /proc/{pid}/cgroup: {own}"))?;
        let p = line.splitn(3, ':').nth(2).unwrap_or_default();
        assert!(
            p.ends_with(&format!("/axion-vmd/{name}")),
            "QEMU's {controller:?} cgroup is {p}, not axion-vmd/{name}"
        );
        Ok(PathBuf::from(p.trim_start_matches('/')))
    };
    let read = |p: PathBuf| -> Result<String> {
        Ok(std::fs::read_to_string(&p)
            .with_context(|| format!("reading {}", p.display()))?
            .trim()
            .to_string())
    };
    if root.join("cgroup.controllers").exists() {
        eprintln!("cgroup v2 host");
        let d = root.join(path_of("")?);
        assert_eq!(read(d.join("memory.max"))?, memory.to_string());
        assert_eq!(read(d.join("cpu.max"))?, format!("{quota} {period}"));
        Ok(vec![d])
    } else {
        eprintln!("cgroup v1 host");
        let m = root.join("memory").join(path_of("memory")?);
        let c = root.join("cpu").join(path_of("cpu")?);
        assert_eq!(read(m.join("memory.limit_in_bytes"))?, memory.to_string());
        assert_eq!(read(c.join("cpu.cfs_quota_us"))?, quota.to_string());
        assert_eq!(read(c.join("cpu.cfs_period_us"))?, period.to_string());
        Ok(vec![m, c])
    }
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
    // Another image with the same layer (its own config): garbage collection keeps the
    // shared layer while either image is there.
    reg.push_variant("busybox", "latest", "variant", "latest", "true")?;
    let variant = format!("{}/variant:latest", reg.host());

    let dir = tempfile::Builder::new().prefix("vmd-").tempdir_in("/tmp")?;
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
        insecure_registries: vec!["10.9.0.0/16".into(), "myreg:5000".into()],
        // Off for the checks that count QEMUs and directories; turned on near the end.
        pool: 0,
    };
    let t = Instant::now();
    let server = axion_tests::vmd::Server::start(opts, &dir.path().join("vmd.sock"))
        .context("starting the daemon")?;
    eprintln!(
        "daemon up (template included) in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    assert!(
        qemus_under(&state).is_empty(),
        "the template VM is still running after it was saved"
    );
    let cli = DockerCli::new(server.docker_host(), dir.path().join("docker-config"));

    assert_eq!(
        cli.ok(&["version", "--format", "{{.Server.APIVersion}}"])
            .trim(),
        "1.47"
    );
    // --insecure-registry reaches `docker info` as dockerd's would (the CLI prints it).
    let info = cli.ok(&["info"]);
    let insecure = info
        .split("Insecure Registries:")
        .nth(1)
        .unwrap_or_else(|| panic!("no Insecure Registries in docker info:\n{info}"));
    for want in ["myreg:5000", "10.9.0.0/16", "127.0.0.0/8"] {
        assert!(
            insecure.lines().any(|l| l.trim() == want),
            "{want} missing from docker info's Insecure Registries:\n{info}"
        );
    }

    // Attached run: output and exit code come back from the VM; --rm leaves nothing.
    let t = Instant::now();
    let o = cli.run(&["run", "--rm", &img, "echo", "hi"]);
    assert!(
        o.status.success(),
        "docker run failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&o.stdout), "hi\n");
    eprintln!(
        "docker run --rm (pull + clone + run): {:.1} s",
        t.elapsed().as_secs_f64()
    );
    assert!(cli
        .ok(&["images", "--format", "{{.Repository}}:{{.Tag}}"])
        .contains(&img));

    // The pull stored the layer on the host: its blob (verified) and its unpacked tree.
    let store = state.join("store");
    let blob = largest_file(&store.join("blobs/sha256"))?;
    let layers: Vec<PathBuf> = std::fs::read_dir(store.join("layers"))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    assert_eq!(layers.len(), 1, "unpacked layers in the store: {layers:?}");
    assert!(
        layers[0].join("bin/busybox").is_file(),
        "no bin/busybox in {}",
        layers[0].display()
    );
    let digest = blob.file_name().unwrap().to_string_lossy().into_owned();
    cli.ok(&["pull", &variant]);
    let variant_id = cli
        .ok(&["image", "inspect", "-f", "{{.Id}}", &variant])
        .trim()
        .to_string();
    let variant_config = store
        .join("blobs/sha256")
        .join(variant_id.trim_start_matches("sha256:"));
    assert!(
        variant_config.is_file(),
        "the variant's config is not in the store: {}",
        variant_config.display()
    );
    let count = |d: &str| {
        std::fs::read_dir(store.join(d))
            .map(|r| r.count())
            .unwrap_or(0)
    };
    assert_eq!(
        (count("blobs/sha256"), count("layers")),
        (3, 2),
        "two configs and one shared layer blob; one tree and its .tree record"
    );
    // A corrupted blob is found before the next container uses the store, and fetched again.
    std::fs::write(&blob, b"not the layer")?;
    assert_eq!(cli.ok(&["run", "--rm", &img, "echo", "again"]), "again\n");
    assert_eq!(
        sha256_file(&blob)?,
        digest,
        "the corrupted blob was not fetched again"
    );

    // From now on the registry is gone: every container runs from the host's store.
    drop(reg);
    let o = cli.run(&[
        "run",
        "--rm",
        "-e",
        "CODE=3",
        &img,
        "sh",
        "-c",
        "echo to-stderr >&2; exit $CODE",
    ]);
    assert_eq!(
        o.status.code(),
        Some(3),
        "exit code: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("to-stderr"));
    assert_eq!(
        cli.ok(&["ps", "-aq"]).trim(),
        "",
        "--rm containers are still listed"
    );

    // docker tag of a pulled image (vmd has no `docker load`; issue 23): the short name runs,
    // shares the image's id and layers, and rmi of it only untags.
    cli.ok(&["tag", &img, "mybox:1"]);
    assert_eq!(
        cli.ok(&["run", "--rm", "mybox:1", "echo", "tagged"]),
        "tagged\n"
    );
    let ids = cli.ok(&["image", "inspect", "-f", "{{.Id}}", &img, "mybox:1"]);
    let ids: Vec<&str> = ids.lines().collect();
    assert!(
        ids.len() == 2 && ids[0] == ids[1],
        "tag made another image: {ids:?}"
    );
    let tags = cli.ok(&["image", "inspect", "-f", "{{json .RepoTags}}", "mybox:1"]);
    assert!(
        tags.contains("\"mybox:1\"") && tags.contains(&img),
        "RepoTags: {tags}"
    );
    let out = cli.ok(&["rmi", "mybox:1"]);
    assert!(
        out.contains("Untagged: mybox:1") && !out.contains("Deleted"),
        "rmi of a second name: {out}"
    );
    assert!(cli.run(&["image", "inspect", &img]).status.success());

    // A named volume lives on the host: written by one container's VM, read by the next
    // one's (another VM), kept after both; --mount creates one too; --tmpfs stays the VM's.
    let t0 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    cli.ok(&["volume", "create", "data"]);
    cli.ok(&[
        "run",
        "--rm",
        "-v",
        "data:/data",
        &img,
        "sh",
        "-c",
        "echo from-the-first-vm > /data/f",
    ]);
    let host_file = state.join("volumes/data/_data/f");
    assert_eq!(
        std::fs::read_to_string(&host_file).ok().as_deref(),
        Some("from-the-first-vm\n"),
        "the volume's file is not on the host"
    );
    let o = cli.ok(&[
        "run",
        "--rm",
        "--mount",
        "type=volume,src=data,dst=/d,readonly",
        "--mount",
        "type=volume,src=other,dst=/o",
        "--tmpfs",
        "/t",
        &img,
        "sh",
        "-c",
        "cat /d/f; touch /d/x 2>/dev/null || echo read-only; grep -c ' /t tmpfs' /proc/mounts; \
         echo o > /o/g",
    ]);
    assert_eq!(
        o, "from-the-first-vm\nread-only\n1\n",
        "the second VM's view"
    );
    let vols = cli.ok(&["volume", "ls", "-q"]);
    assert_eq!(
        vols.lines().collect::<Vec<_>>(),
        ["data", "other"],
        "{vols}"
    );
    let mp = cli.ok(&["volume", "inspect", "-f", "{{.Mountpoint}}", "other"]);
    assert_eq!(
        std::fs::read_to_string(Path::new(mp.trim()).join("g"))?,
        "o\n"
    );
    // In use: refused; then removed with its data.
    let v = cli
        .ok(&["run", "-d", "-v", "data:/data", &img, "sleep", "600"])
        .trim()
        .to_string();
    let mounts = cli.ok(&[
        "inspect",
        "-f",
        "{{range .Mounts}}{{.Type}} {{.Name}} {{.Destination}}{{end}}",
        &v,
    ]);
    assert_eq!(mounts.trim(), "volume data /data");
    let o = cli.run(&["volume", "rm", "data"]);
    assert!(
        !o.status.success() && String::from_utf8_lossy(&o.stderr).contains("volume is in use"),
        "volume rm of a volume in use: {o:?}"
    );
    cli.ok(&["rm", "-f", &v]);
    cli.ok(&["volume", "rm", "data", "other"]);
    assert!(
        !host_file.exists(),
        "the removed volume's data is still there"
    );
    let events = cli.ok(&[
        "events",
        "--since",
        &t0.to_string(),
        "--until",
        &(t0 + 3600)
            .min(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)?
                    .as_secs()
                    + 1,
            )
            .to_string(),
        "--filter",
        "type=volume",
        "--format",
        "{{.Action}} {{.Actor.ID}}",
    ]);
    assert_eq!(
        events.lines().collect::<Vec<_>>(),
        [
            "create data",
            "create other",
            "destroy data",
            "destroy other"
        ],
        "volume events"
    );

    // Two containers at once, each in its own VM (own QEMU, own host name).
    let a = cli
        .ok(&[
            "run",
            "-d",
            "--name",
            "a",
            &img,
            "sh",
            "-c",
            "hostname; sleep 600",
        ])
        .trim()
        .to_string();
    let b = cli
        .ok(&[
            "run",
            "-d",
            "--name",
            "b",
            &img,
            "sh",
            "-c",
            "hostname; sleep 600",
        ])
        .trim()
        .to_string();
    let running = cli.ok(&["ps", "--format", "{{.Names}}"]);
    assert!(
        running.contains('a') && running.contains('b'),
        "docker ps: {running}"
    );
    let pa: u32 = cli
        .ok(&["inspect", "-f", "{{.State.Pid}}", "a"])
        .trim()
        .parse()?;
    let pb: u32 = cli
        .ok(&["inspect", "-f", "{{.State.Pid}}", "b"])
        .trim()
        .parse()?;
    assert!(pa != pb && pid_alive(pa) && pid_alive(pb), "pids {pa} {pb}");
    assert_eq!(qemus_under(&state).len(), 2);
    // The daemon talks to the engine in each VM over virtio-serial only: QEMU has the
    // engine's port with its socket in the VM's directory and forwards no TCP port to it.
    let cmd =
        String::from_utf8_lossy(&std::fs::read(format!("/proc/{pa}/cmdline"))?).replace('\0', " ");
    assert!(
        cmd.contains("virtserialport,")
            && cmd.contains(&format!("name={}", vmd_contract::ENGINE_PORT)),
        "no {} port: {cmd}",
        vmd_contract::ENGINE_PORT
    );
    assert!(
        cmd.contains(&format!("{}/engine.sock", &a[..12])),
        "the engine's socket is not in the VM's directory: {cmd}"
    );
    assert!(
        !cmd.contains("hostfwd"),
        "a clone without -p has a TCP forward: {cmd}"
    );
    // Its RAM is the template's RAM file mapped copy-on-write, and the saved state holds no
    // RAM (only device state): nothing to copy at restore.
    assert!(
        cmd.contains("memory-backend-file,") && cmd.contains("/ram,share=off"),
        "a clone's RAM is not the template's file, copy-on-write: {cmd}"
    );
    let template = std::fs::read_dir(&state)?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("template-"))
        })
        .expect("a template directory");
    let saved = std::fs::metadata(template.join("state"))?.len();
    assert!(
        saved < 8 << 20,
        "the template's saved state holds RAM ({saved} bytes)"
    );
    // ...and the guest engine listens on no TCP port (the old channel was TCP 2376 with
    // mutual TLS): /proc/net/tcp of the VM, seen from a container in its network namespace.
    let tcp = cli.ok(&[
        "run",
        "--rm",
        "--network",
        "host",
        &img,
        "sh",
        "-c",
        "cat /proc/net/tcp; cat /proc/net/tcp6 2>/dev/null; true",
    ]);
    assert!(tcp.contains("local_address"), "{tcp}");
    let engine: Vec<&str> = tcp
        .lines()
        .filter(|l| {
            l.split_whitespace()
                .nth(1)
                .is_some_and(|a| a.ends_with(":0948"))
                && l.split_whitespace().nth(3) == Some("0A")
        })
        .collect();
    assert!(
        engine.is_empty(),
        "something listens on TCP 2376 in the VM: {engine:?}\n{tcp}"
    );
    // The container has its VM's network (the VM is its sandbox): the VM's address on eth0.
    let addr = cli.ok(&[
        "run", "--rm", &img, "ip", "-4", "-o", "addr", "show", "eth0",
    ]);
    assert!(
        addr.contains("inet 10.0.2.15/"),
        "the container does not have its VM's address: {addr}"
    );
    // Each VM's container ran in the shim its engine had started before the template was saved.
    for id in [&a, &b] {
        let serial = std::fs::read_to_string(state.join("c").join(&id[..12]).join("serial.log"))?;
        assert!(
            serial.contains("runs in the pre-spawned shim"),
            "the container of VM {} did not use the pre-spawned shim; serial log:\n{serial}",
            &id[..12]
        );
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (la, lb) = (cli.ok(&["logs", "a"]), cli.ok(&["logs", "b"]));
        if la.trim() == &a[..12] && lb.trim() == &b[..12] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "host names in the VMs: {la:?} {lb:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // Limits: -m and --cpus put the container's QEMU into its own cgroup(s) on the host
    // (v2 or v1, whichever the host has), removed with the container.
    let l = cli
        .ok(&[
            "run", "-d", "-m", "256m", "--cpus", "0.5", &img, "sleep", "600",
        ])
        .trim()
        .to_string();
    let lpid: u32 = cli
        .ok(&["inspect", "-f", "{{.State.Pid}}", &l])
        .trim()
        .parse()?;
    let dirs = check_limits(lpid, &l[..12], 256 << 20, (50_000, 100_000))?;
    // docker update changes the running VM's cgroup, and the record (inspect); a memory
    // limit above the VM's RAM is accepted with a warning that the RAM stays; what a VM
    // cannot change is refused.
    cli.ok(&[
        "update",
        "-m",
        "300m",
        "--cpus",
        "0.25",
        "--restart",
        "on-failure:3",
        &l,
    ]);
    check_limits(lpid, &l[..12], 300 << 20, (25_000, 100_000))?;
    assert_eq!(
        cli.ok(&[
            "inspect",
            "-f",
            "{{.HostConfig.Memory}} {{.HostConfig.NanoCpus}} {{.HostConfig.RestartPolicy.Name}}",
            &l
        ])
        .trim(),
        "314572800 250000000 on-failure"
    );
    let o = cli.run(&["update", "-m", "1g", &l]);
    assert!(
        o.status.success() && String::from_utf8_lossy(&o.stdout).contains("RAM stays"),
        "docker update -m above the VM's RAM: {o:?}"
    );
    check_limits(lpid, &l[..12], 1 << 30, (25_000, 100_000))?;
    let o = cli.run(&["update", "--cpuset-cpus", "0", &l]);
    assert!(
        !o.status.success() && String::from_utf8_lossy(&o.stderr).contains("--cpuset-cpus"),
        "docker update --cpuset-cpus: {o:?}"
    );
    cli.ok(&["rm", "-f", &l]);
    assert!(
        !pid_alive(lpid),
        "the VM of a removed container is still running"
    );
    let left: Vec<_> = dirs.iter().filter(|d| d.exists()).collect();
    assert!(left.is_empty(), "cgroups left after rm -f: {left:?}");

    // A published port reaches the container in its VM.
    let port = qemu::free_port()?;
    cli.ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "-p",
        &format!("{port}:8080"),
        &img,
        "sh",
        "-c",
        "while true; do echo hello-from-vm | nc -l -p 8080; done",
    ]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let got = loop {
        let r = std::net::TcpStream::connect(("127.0.0.1", port)).and_then(|mut s| {
            use std::io::Read;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            let mut buf = String::new();
            s.read_to_string(&mut buf)?;
            Ok(buf)
        });
        match r {
            Ok(s) if s.contains("hello-from-vm") => break s,
            _ if Instant::now() > deadline => {
                bail!("127.0.0.1:{port} did not reach the container: {r:?}")
            }
            _ => std::thread::sleep(Duration::from_millis(500)),
        }
    };
    assert_eq!(got.trim(), "hello-from-vm");

    // stop powers the VM off; rm removes what is left; nothing stays behind.
    cli.ok(&["stop", "-t", "1", "a"]);
    assert!(
        !pid_alive(pa),
        "the VM of a stopped container is still running"
    );
    let st = cli.ok(&[
        "inspect",
        "-f",
        "{{.State.Status}} {{.State.ExitCode}}",
        "a",
    ]);
    assert!(st.starts_with("exited "), "{st}");
    assert!(
        cli.ok(&["logs", "a"]).contains(&a[..12]),
        "logs of a stopped container"
    );
    let o = cli.run(&["rm", "b"]);
    assert!(!o.status.success(), "rm of a running container succeeded");
    cli.ok(&["rm", "a"]);
    cli.ok(&["rm", "-f", "b", "web"]);
    assert_eq!(cli.ok(&["ps", "-aq"]).trim(), "");
    let deadline = Instant::now() + Duration::from_secs(15);
    while !qemus_under(&state).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        qemus_under(&state).is_empty(),
        "QEMU processes left: {:?}",
        qemus_under(&state)
    );
    let left: Vec<_> = std::fs::read_dir(state.join("c"))?
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(
        left.is_empty(),
        "container directories (overlays, sockets) left: {left:?}"
    );

    // A crashed QEMU shows as an exited container with an error, not a hung API.
    let c = cli
        .ok(&["run", "-d", &img, "sleep", "600"])
        .trim()
        .to_string();
    let pid: u32 = cli
        .ok(&["inspect", "-f", "{{.State.Pid}}", &c])
        .trim()
        .parse()?;
    Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .stderr(Stdio::null())
        .status()?;
    let w = cli.ok(&["wait", &c]);
    assert_eq!(w.trim(), "255");
    let err = cli.ok(&["inspect", "-f", "{{.State.Error}}", &c]);
    assert!(err.contains("exited unexpectedly"), "{err}");
    cli.ok(&["rm", &c]);

    // Garbage collection: `docker rmi` of an image a running container uses keeps its files
    // until the container's VM is gone; the layer it shares with busybox stays after that.
    let v = cli
        .ok(&["run", "-d", &variant, "sleep", "600"])
        .trim()
        .to_string();
    // As dockerd: without -f, the image a container uses is refused (409).
    let o = cli.run(&["rmi", &variant]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("(must force) - container") && err.contains(&v[..12]),
        "rmi of an image in use: {o:?}"
    );
    let out = cli.ok(&["rmi", "-f", &variant]);
    assert!(out.contains(&variant_id), "rmi output: {out}");
    assert!(
        variant_config.is_file(),
        "the config of an image a running container uses was removed"
    );
    cli.ok(&["rm", "-f", &v]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while variant_config.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        !variant_config.exists(),
        "the removed image's config is still in the store after its container went"
    );
    assert!(
        blob.is_file() && layers[0].join("bin/busybox").is_file(),
        "the layer busybox shares with the removed image was removed"
    );
    assert_eq!((count("blobs/sha256"), count("layers")), (2, 2));
    assert_eq!(
        cli.ok(&["run", "--rm", &img, "echo", "still-here"]),
        "still-here\n"
    );

    warm_pool(&server, &cli, &img, &state)?;

    // A changed file in an unpacked layer (the registry is gone, so it cannot be fetched
    // again): refused with a clear error, never handed to a VM.
    let tool = layers[0].join("bin/busybox");
    let mut data = std::fs::read(&tool)?;
    data.extend_from_slice(b"tampered");
    std::fs::write(&tool, data)?;
    let o = cli.run(&["run", "--rm", &img, "true"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "a run from a tampered store succeeded");
    assert!(
        err.contains("damaged")
            && err.contains("changed after it was unpacked")
            && err.contains("fetching the image again failed"),
        "{err}"
    );
    assert!(
        qemus_under(&state).is_empty(),
        "a VM was left after the refused run"
    );

    // rmi of the last image using them: its blobs and unpacked layers are gone.
    cli.ok(&["rmi", &img]);
    let left = |d: &str| -> Vec<PathBuf> {
        std::fs::read_dir(store.join(d))
            .map(|r| r.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    };
    assert!(
        left("blobs/sha256").is_empty(),
        "blobs left after the last rmi: {:?}",
        left("blobs/sha256")
    );
    assert!(
        left("layers").is_empty(),
        "unpacked layers left after the last rmi: {:?}",
        left("layers")
    );
    assert!(
        left("tmp").is_empty(),
        "scratch left after the last rmi: {:?}",
        left("tmp")
    );

    drop(server);
    assert!(qemus_under(&state).is_empty());
    Ok(())
}

/// The warm pool (host/vmd/src/pool.rs), on this daemon: two clones restored and waiting
/// (stopped, no container record, so no container); two runs from it get a fresh identity
/// each (host name, MAC, boot id, random bytes, container id); `docker run --rm busybox true`
/// works from it; a pooled QEMU that dies is replaced; turned off, nothing of it is left.
fn warm_pool(
    server: &axion_tests::vmd::Server,
    cli: &DockerCli,
    img: &str,
    state: &Path,
) -> Result<()> {
    let d = server.daemon();
    let full = |what: &str| -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(300);
        while d.pool().ready() < 2 {
            if Instant::now() > deadline {
                bail!("the warm pool did not fill within 300 s ({what})");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    };
    let t = Instant::now();
    d.set_pool(2);
    full("at first")?;
    eprintln!("warm pool filled in {:.1} s", t.elapsed().as_secs_f64());
    let pooled = qemus_under(&state.join("c"));
    assert_eq!(pooled.len(), 2, "two pooled QEMUs: {pooled:?}");
    assert_eq!(
        cli.ok(&["ps", "-aq"]).trim(),
        "",
        "a pooled clone shows as a container"
    );
    let info = cli.ok(&["info", "--format", "{{json .DriverStatus}}"]);
    assert!(
        info.contains("Warm pool") && info.contains("2 ready of 2"),
        "{info}"
    );

    // Two runs from the pool: each takes a waiting clone and gets its own identity.
    let probe = "hostname; cat /sys/class/net/eth0/address; \
                 cat /proc/sys/kernel/random/boot_id; head -c 16 /dev/urandom | od -An -tx1";
    let mut seen = Vec::new();
    for name in ["pool-a", "pool-b"] {
        full(name)?;
        let t = Instant::now();
        let out = cli.ok(&["run", "--name", name, img, "sh", "-c", probe]);
        eprintln!(
            "docker run from the warm pool: {:.2} s",
            t.elapsed().as_secs_f64()
        );
        let id = cli
            .ok(&["inspect", "-f", "{{.Id}}", name])
            .trim()
            .to_string();
        let lines: Vec<String> = out.lines().map(|l| l.trim().to_string()).collect();
        assert_eq!(lines.len(), 4, "{out:?}");
        assert_eq!(
            lines[0],
            id[..12],
            "the host name is the container's short id"
        );
        assert_ne!(
            lines[1], "52:54:00:12:34:56",
            "the VM kept QEMU's default MAC (the template's)"
        );
        cli.ok(&["rm", name]);
        seen.push((id, lines));
    }
    let (a, b) = (&seen[0], &seen[1]);
    assert_ne!(a.0, b.0, "container ids");
    for (i, what) in ["host name", "MAC", "boot id", "random bytes"]
        .iter()
        .enumerate()
    {
        assert_ne!(a.1[i], b.1[i], "two pooled clones share their {what}");
    }
    let status = cli.ok(&["info", "--format", "{{json .DriverStatus}}"]);
    assert!(
        status.contains("2 of 2 eligible creates took one"),
        "{status}"
    );
    full("after two runs")?;
    let t = Instant::now();
    cli.ok(&["run", "--rm", img, "true"]);
    eprintln!(
        "docker run --rm busybox true from the warm pool: {:.2} s",
        t.elapsed().as_secs_f64()
    );
    let status = cli.ok(&["info", "--format", "{{json .DriverStatus}}"]);
    assert!(
        status.contains("3 of 3 eligible creates took one"),
        "{status}"
    );

    // A pooled QEMU that dies is discarded (its directory too) and replaced.
    full("before a pooled QEMU is killed")?;
    let before = qemus_under(&state.join("c"));
    let victim = before[0];
    Command::new("kill")
        .args(["-KILL", &victim.to_string()])
        .status()?;
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let now = qemus_under(&state.join("c"));
        let dirs = std::fs::read_dir(state.join("c"))?.count();
        if now.len() == 2 && !now.contains(&victim) && dirs == 2 && d.pool().ready() == 2 {
            break;
        }
        if Instant::now() > deadline {
            bail!("the killed pooled clone was not replaced: QEMUs {now:?}, {dirs} directories");
        }
        std::thread::sleep(Duration::from_millis(200));
    }

    // Off: every pooled QEMU and directory goes.
    d.set_pool(0);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !qemus_under(state).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(qemus_under(state).is_empty(), "pooled QEMUs left");
    assert_eq!(std::fs::read_dir(state.join("c"))?.count(), 0);
    Ok(())
}

fn largest_file(dir: &Path) -> Result<PathBuf> {
    let mut files: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)?
        .flatten()
        .filter_map(|e| Some((e.metadata().ok()?.len(), e.path())))
        .collect();
    files.sort();
    files
        .pop()
        .map(|f| f.1)
        .with_context(|| format!("no files in {}", dir.display()))
}

fn sha256_file(p: &Path) -> Result<String> {
    use sha2::Digest;
    Ok(hex::encode(sha2::Sha256::digest(std::fs::read(p)?)))
}
