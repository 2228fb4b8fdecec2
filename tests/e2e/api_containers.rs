//! Container operations, events, HTTP keep-alive and the swarm probe of the engine in one
//! booted qemu image, driven by the real docker CLI on the host over mutual TLS (and
//! Python's http.client for the raw keep-alive check):
//! - `docker events` with `--since`/`--until` and filters sees a run's create, start, die and
//!   destroy;
//! - `docker stats --no-stream` shows non-zero memory; `top`, `diff`, `export`,
//!   `pause`/`unpause`, `rename`, `update` (into the live cgroup), `kill` answering after the
//!   exit;
//! - a request on a kept-alive connection after a 404 for a POST with a body is answered;
//! - `docker node ls` and `GET /swarm` answer 503 "This node is not a swarm manager";
//! - `docker container prune` with `label`, `label!` and `until` filters;
//! - the device cgroup: a container (or an exec in it) may mknod any node but opens only
//!   Docker's default devices, not the VM's disk or /dev/kmsg; `--device`,
//!   `--device-cgroup-rule` and `--privileged` open more.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use axion_tests::guest::{both, Boot, Guest};
use axion_tests::registry::{Compression, Registry};
use axion_tests::require;

#[test]
fn container_operations_events_and_http_in_the_vm() {
    if let Some(why) = axion_tests::vm_test_host_lacks() {
        require!(false, "{why}");
    }
    require!(axion_tests::runs("python3"), "python3 is not installed");
    check().unwrap();
}

/// Two requests on one kept-alive TLS connection: a POST with a body to a route that does
/// not exist (404), then `GET /_ping`, then `GET /swarm`.
const KEEP_ALIVE_PY: &str = r#"
import http.client, json, ssl, sys, time
port, certs = int(sys.argv[1]), sys.argv[2]
ctx = ssl.create_default_context(cafile=certs + "/ca.pem")
ctx.check_hostname = False
ctx.load_cert_chain(certs + "/cert.pem", certs + "/key.pem")
c = http.client.HTTPSConnection("127.0.0.1", port, context=ctx)
body = json.dumps({"x": "y" * 100000})
c.putrequest("POST", "/v1.47/no/such/route")
c.putheader("Content-Type", "application/json")
c.putheader("Content-Length", str(len(body)))
c.endheaders()
time.sleep(0.3)  # the body comes after the headers, as requests sends it
c.send(body.encode())
r = c.getresponse(); r.read()
print(r.status)
c.request("GET", "/_ping"); r = c.getresponse(); print(r.status, r.read().decode())
c.request("GET", "/v1.47/swarm"); r = c.getresponse()
print(r.status, json.loads(r.read())["message"])
"#;

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
    let g = Guest::boot(&boot)?;
    g.insecure_registries(&[&reg])?;
    let image = format!("{reg}/busybox:latest");
    g.ok(&["pull", &image])?;
    g.ok(&["tag", &image, "busybox"])?;
    devices(&g)?;

    // --- HTTP keep-alive after a 404, and the swarm probe ------------------------------------
    let out = g.python(KEEP_ALIVE_PY)?;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.first(), Some(&"404"), "{out}");
    assert_eq!(
        lines.get(1),
        Some(&"200 OK"),
        "the kept-alive connection: {out}"
    );
    assert!(
        lines
            .get(2)
            .is_some_and(|l| l.starts_with("503 This node is not a swarm manager.")),
        "{out}"
    );
    let err = g.fails(&["node", "ls"])?;
    assert!(
        err.contains("This node is not a swarm manager"),
        "docker node ls: {err}"
    );
    let out = g.ok(&["plugin", "ls", "--format", "{{.Name}}"])?;
    assert_eq!(out, "", "no plugins");

    // --- Events: a run's lifecycle, with --since/--until and filters --------------------------
    let since = g.ok(&["version", "--format", "{{.Server.Os}}"]).map(|_| {
        // The VM's clock is the host's (kvmclock / RTC): a second's margin either way.
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            - 1
    })?;
    let o = g.docker(&[
        "run", "--name", "ev1", "--label", "team=a", "busybox", "sh", "-c", "exit 3",
    ])?;
    assert_eq!(o.status.code(), Some(3), "{}", both(&o));
    g.ok(&["rm", "ev1"])?;
    g.ok(&["tag", "busybox", "busybox:evtest"])?;
    std::thread::sleep(Duration::from_secs(2));
    let until = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 1;
    let (s, u) = (since.to_string(), until.to_string());
    let out = g.ok(&[
        "events",
        "--since",
        &s,
        "--until",
        &u,
        "--filter",
        "container=ev1",
        "--format",
        "{{.Type}} {{.Action}} {{.Actor.Attributes.name}} {{index .Actor.Attributes \"exitCode\"}}",
    ])?;
    eprintln!("events:\n{out}");
    let actions: Vec<&str> = out
        .lines()
        .map(|l| l.split(' ').nth(1).unwrap_or(""))
        .collect();
    for want in ["create", "attach", "start", "die", "destroy"] {
        assert!(actions.contains(&want), "no {want} event in:\n{out}");
    }
    assert!(
        out.lines().any(|l| l == "container die ev1 3"),
        "die with its exit code:\n{out}"
    );
    let pos = |a: &str| actions.iter().position(|x| *x == a).unwrap();
    assert!(
        pos("create") < pos("start") && pos("start") < pos("die") && pos("die") < pos("destroy")
    );
    // Filters: event and label; an image filter sees the container's events too.
    let out = g.ok(&[
        "events",
        "--since",
        &s,
        "--until",
        &u,
        "--filter",
        "event=die",
        "--filter",
        "label=team=a",
        "--format",
        "{{.Action}}",
    ])?;
    assert_eq!(out, "die", "event+label filters");
    let out = g.ok(&[
        "events",
        "--since",
        &s,
        "--until",
        &u,
        "--filter",
        "type=image",
        "--format",
        "{{.Action}}",
    ])?;
    assert!(out.lines().any(|l| l == "tag"), "image events: {out}");
    // A streaming `docker events` sees a container started after it.
    let mut stream = g
        .docker_cmd(&[
            "events",
            "--filter",
            "event=start",
            "--format",
            "{{.Actor.Attributes.name}}",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    std::thread::sleep(Duration::from_secs(2));
    g.ok(&["run", "--rm", "--name", "ev2", "busybox", "true"])?;
    std::thread::sleep(Duration::from_secs(2));
    let _ = stream.kill();
    let o = stream.wait_with_output()?;
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "ev2",
        "streamed events"
    );

    // --- stats, top, diff, export --------------------------------------------------------------
    g.ok(&[
        "run",
        "-d",
        "--name",
        "ops",
        "-m",
        "64m",
        "busybox",
        "sh",
        "-c",
        "mkdir /made && echo x > /made/file && rm /bin/wget; exec sleep 1000",
    ])?;
    std::thread::sleep(Duration::from_secs(1));
    let out = g.ok(&[
        "stats",
        "--no-stream",
        "--format",
        "{{.Name}} {{.MemUsage}} {{.PIDs}}",
        "ops",
    ])?;
    eprintln!("stats: {out}");
    assert!(
        out.starts_with("ops ") && !out.starts_with("ops 0B"),
        "non-zero memory: {out}"
    );
    assert!(out.contains("64MiB"), "the memory limit in stats: {out}");
    assert!(out.ends_with(" 1"), "one process: {out}");
    let out = g.ok(&["top", "ops"])?;
    assert!(out.contains("sleep 1000"), "top: {out}");
    let out = g.ok(&["top", "ops", "aux"])?;
    assert!(
        out.starts_with("USER") && out.contains("sleep 1000"),
        "top aux: {out}"
    );
    let out = g.ok(&["diff", "ops"])?;
    eprintln!("diff:\n{out}");
    for want in ["A /made", "A /made/file", "D /bin/wget", "C /bin"] {
        assert!(out.lines().any(|l| l == want), "{want} in diff:\n{out}");
    }
    for never in ["A /proc", "A /dev", "A /sys", "A /etc/hosts"] {
        assert!(!out.lines().any(|l| l == never), "{never} in diff:\n{out}");
    }
    let tar = dir.path().join("ops.tar");
    g.ok(&["export", "-o", tar.to_str().unwrap(), "ops"])?;
    let mut names = Vec::new();
    for e in tar::Archive::new(std::fs::File::open(&tar)?).entries()? {
        names.push(e?.path()?.display().to_string());
    }
    assert!(names.iter().any(|n| n == "made/file"), "export: {names:?}");
    assert!(names.iter().any(|n| n == "bin/sh"), "export: {names:?}");
    assert!(
        !names.iter().any(|n| n == "bin/wget"),
        "a deleted file exported"
    );
    assert!(
        !names.iter().any(|n| n.starts_with("proc/")),
        "mounts exported"
    );

    // --- pause / unpause ------------------------------------------------------------------------
    g.ok(&["pause", "ops"])?;
    assert_eq!(
        g.ok(&[
            "inspect",
            "-f",
            "{{.State.Status}} {{.State.Paused}} {{.State.Running}}",
            "ops"
        ])?,
        "paused true true"
    );
    let err = g.fails(&["exec", "ops", "true"])?;
    assert!(
        err.contains("is paused"),
        "exec in a paused container: {err}"
    );
    assert!(g
        .ok(&[
            "ps",
            "--filter",
            "status=paused",
            "--format",
            "{{.Names}} {{.Status}}"
        ])?
        .contains("ops Up"));
    g.ok(&["unpause", "ops"])?;
    assert_eq!(g.ok(&["exec", "ops", "echo", "thawed"])?, "thawed");

    // --- rename, update -------------------------------------------------------------------------
    g.ok(&["rename", "ops", "ops2"])?;
    assert_eq!(g.ok(&["inspect", "-f", "{{.Name}}", "ops2"])?, "/ops2");
    g.ok(&[
        "update",
        "--memory",
        "96m",
        "--memory-swap",
        "-1",
        "--pids-limit",
        "50",
        "--cpus",
        "0.5",
        "--restart",
        "on-failure:2",
        "ops2",
    ])?;
    assert_eq!(
        g.ok(&[
            "inspect",
            "-f",
            "{{.HostConfig.Memory}} {{.HostConfig.PidsLimit}} {{.HostConfig.NanoCpus}} \
                {{.HostConfig.RestartPolicy.Name}}",
            "ops2",
        ])?,
        "100663296 50 500000000 on-failure"
    );
    let id = g.ok(&["inspect", "-f", "{{.Id}}", "ops2"])?;
    let o = g.ssh(&format!(
        "cat /sys/fs/cgroup/axion/{id}/memory.max /sys/fs/cgroup/axion/{id}/pids.max \
            /sys/fs/cgroup/axion/{id}/cpu.max"
    ))?;
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "100663296\n50\n50000 100000",
        "the live cgroup after update: {}",
        both(&o)
    );

    // --- kill answers once the container has exited ---------------------------------------------
    g.ok(&["kill", "ops2"])?;
    assert_eq!(
        g.ok(&["inspect", "-f", "{{.State.Status}}", "ops2"])?,
        "exited"
    );
    let err = g.fails(&["kill", "ops2"])?;
    assert!(
        err.contains("is not running"),
        "kill of an exited container: {err}"
    );
    g.ok(&["rm", "ops2"])?;

    // --- health checks --------------------------------------------------------------------------
    for (name, cmd) in [("hok", "true"), ("hbad", "false")] {
        g.ok(&[
            "run",
            "-d",
            "--name",
            name,
            "--health-cmd",
            cmd,
            "--health-interval",
            "1s",
            "--health-retries",
            "2",
            "busybox",
            "sleep",
            "1000",
        ])?;
    }
    let want = [("hok", "healthy"), ("hbad", "unhealthy")];
    let deadline = Instant::now() + Duration::from_secs(60);
    for (name, status) in want {
        loop {
            let s = g.ok(&[
                "inspect",
                "-f",
                "{{.State.Health.Status}} {{.State.Health.FailingStreak}}",
                name,
            ])?;
            if s.starts_with(&format!("{status} ")) {
                break;
            }
            if Instant::now() > deadline {
                bail!("{name} did not become {status}: {s}");
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    assert!(g
        .ok(&["ps", "--format", "{{.Names}} {{.Status}}"])?
        .contains("(healthy)"));
    g.ok(&["rm", "-f", "hok", "hbad"])?;
    let hc = g.ok(&["create", "--no-healthcheck", "busybox", "true"])?;
    assert_eq!(
        g.ok(&["inspect", "-f", "{{json .Config.Healthcheck.Test}}", &hc])?,
        r#"["NONE"]"#
    );

    // --- logs: tail counts lines, the none driver, an unknown driver ---------------------------
    g.ok(&[
        "run",
        "--name",
        "lg",
        "busybox",
        "sh",
        "-c",
        "echo a; echo b; echo c",
    ])?;
    assert_eq!(g.ok(&["logs", "--tail", "1", "lg"])?, "c");
    assert_eq!(g.ok(&["logs", "--tail", "2", "lg"])?, "b\nc");
    g.ok(&[
        "run",
        "--name",
        "ln",
        "--log-driver",
        "none",
        "busybox",
        "echo",
        "x",
    ])?;
    let err = g.fails(&["logs", "ln"])?;
    assert!(
        err.contains("does not support reading"),
        "logs with none: {err}"
    );
    let err = g.fails(&["create", "--log-driver", "bogus", "busybox"])?;
    assert!(err.contains("bogus"), "an unknown log driver: {err}");
    assert_eq!(
        g.ok(&["inspect", "-f", "{{.HostConfig.LogConfig.Type}}", "lg"])?,
        "json-file"
    );

    // --- --init, --pid host, --uts host, --group-add ---------------------------------------------
    let out = g.ok(&[
        "run",
        "--rm",
        "--init",
        "busybox",
        "sh",
        "-c",
        "echo $$; cat /proc/1/comm",
    ])?;
    assert_eq!(
        out, "2\ndocker-init",
        "PID 1 with --init, the command under it"
    );
    let out = g.ok(&["run", "--rm", "busybox", "echo", "attached"])?;
    assert_eq!(out, "attached", "the output of a run");
    let out = g.ok(&[
        "run", "--rm", "--pid", "host", "busybox", "sh", "-c", "echo $$",
    ])?;
    assert_ne!(out, "1", "--pid host");
    let vm_host = String::from_utf8_lossy(&g.ssh("hostname")?.stdout)
        .trim()
        .to_string();
    assert_eq!(
        g.ok(&["run", "--rm", "--uts", "host", "busybox", "hostname"])?,
        vm_host
    );
    let out = g.ok(&["run", "--rm", "--group-add", "1234", "busybox", "id", "-G"])?;
    assert!(out.split(' ').any(|g| g == "1234"), "--group-add: {out}");

    // --- inspect echoes HostConfig; what the engine cannot honour is refused ---------------------
    let id = g.ok(&[
        "create",
        "--cpu-shares",
        "512",
        "--pid",
        "host",
        "--init",
        "busybox",
    ])?;
    assert_eq!(
        g.ok(&[
            "inspect",
            "-f",
            "{{.HostConfig.CpuShares}} {{.HostConfig.PidMode}} {{.HostConfig.Init}}",
            &id
        ])?,
        "512 host true"
    );
    let err = g.fails(&["create", "--read-only", "busybox"])?;
    assert!(err.contains("not supported"), "--read-only: {err}");

    // --- container prune's filters: label, label!, until ---------------------------------------
    let a = g.ok(&["create", "--label", "prune=a", "busybox"])?;
    let b = g.ok(&["create", "--label", "prune=b", "busybox"])?;
    let out = g.ok(&["container", "prune", "-f", "--filter", "label=prune=a"])?;
    assert!(out.contains(&a) && !out.contains(&b), "label=: {out}");
    let out = g.ok(&["container", "prune", "-f", "--filter", "until=1h"])?;
    assert!(
        !out.contains(&b),
        "until=1h keeps a container made now: {out}"
    );
    let out = g.ok(&["container", "prune", "-f", "--filter", "label!=prune=b"])?;
    assert!(!out.contains(&b), "label!=: {out}");
    assert_eq!(
        g.ok(&["ps", "-aq", "--no-trunc", "-f", "label=prune=b"])?,
        b
    );
    Ok(())
}

/// Prints the VM's first block device as `NAME MAJOR MINOR` (from the container's sysfs:
/// a loop device when the VM has no disk), then READ or DENIED for `head` on a node of it
/// and on one of /dev/kmsg (1:11) made with mknod.
const PROBE_SH: &str = r#"for b in /sys/block/*; do case ${b##*/} in ram*|zram*) continue;; esac
d=$(cat $b/dev); echo ${b##*/} ${d%:*} ${d#*:}; case ${b##*/} in loop*) ;; *) break;; esac
done | tail -1 > /tmp/dev
read name major minor < /tmp/dev; echo $name $major $minor
mknod /tmp/disk b $major $minor || echo NOMKNOD
mknod /tmp/kmsg c 1 11 || echo NOMKNOD
r /tmp/disk; r /tmp/kmsg"#;

/// `r NODE`: READ, DENIED (the cgroup's EPERM at open) or ERROR and the message.
const R_SH: &str = r#"r() { e=$(head -c 1 "$1" 2>&1 >/dev/null)
case $e in *"not permitted"*) echo DENIED;; "") echo READ;; *) echo "ERROR $e";; esac; }"#;

/// The device cgroup (a BPF program on the container's cgroup, as runc's on cgroup v2).
fn devices(g: &Guest) -> Result<()> {
    let sh = |script: &str| format!("{R_SH}\n{script}");
    let probe = sh(PROBE_SH);
    let out = g.ok(&["run", "--rm", "busybox", "sh", "-c", &probe])?;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines.get(1..),
        Some(&["DENIED", "DENIED"][..]),
        "a default container must not open the VM's disk or /dev/kmsg: {out}"
    );
    let disk: Vec<&str> = lines[0].split(' ').collect();
    let (name, major, minor) = (disk[0], disk[1], disk[2]);
    // Docker's default devices still work.
    let out = g.ok(&[
        "run",
        "--rm",
        "busybox",
        "sh",
        "-c",
        "head -c 4 /dev/urandom | wc -c; echo x >/dev/null && head -c 2 /dev/zero | wc -c",
    ])?;
    assert_eq!(out, "4\n2", "the default devices");
    // An exec joins the container's cgroup: the same rules.
    g.ok(&["run", "-d", "--name", "devx", "busybox", "sleep", "1000"])?;
    let out = g.ok(&["exec", "devx", "sh", "-c", &probe])?;
    assert!(out.ends_with("DENIED\nDENIED"), "exec: {out}");
    g.ok(&["rm", "-f", "devx"])?;
    // --device: the node appears at its path in the container, its rule with the permissions.
    let host = format!("/dev/{name}");
    let out = g.ok(&[
        "run",
        "--rm",
        "--device",
        &format!("{host}:/dev/xdisk:r"),
        "--device",
        "/dev/kmsg",
        "busybox",
        "sh",
        "-c",
        &sh("ls -l /dev/xdisk | cut -c1; r /dev/xdisk; r /dev/kmsg; \
             echo x >/dev/kmsg 2>/dev/null && echo WROTE || echo DENIED; \
             dd if=/dev/zero of=/dev/xdisk bs=1 count=0 conv=notrunc 2>&1 \
             | grep -c 'not permitted'"),
    ])?;
    assert_eq!(
        out, "b\nREAD\nREAD\nWROTE\n1",
        "--device (the disk read-only): {out}"
    );
    let err = g.fails(&["run", "--rm", "--device", "/dev/nope", "busybox", "true"])?;
    assert!(err.contains("/dev/nope"), "a missing --device: {err}");
    // --device-cgroup-rule: nodes made inside open by their rule.
    let out = g.ok(&[
        "run",
        "--rm",
        "--device-cgroup-rule",
        &format!("b {major}:{minor} r"),
        "--device-cgroup-rule",
        "c 1:* rwm",
        "busybox",
        "sh",
        "-c",
        &probe,
    ])?;
    assert!(out.ends_with("READ\nREAD"), "--device-cgroup-rule: {out}");
    // --privileged: every device, and the VM's nodes in /dev.
    let out = g.ok(&[
        "run",
        "--rm",
        "--privileged",
        "busybox",
        "sh",
        "-c",
        &format!("{probe}\nr {host}"),
    ])?;
    assert!(out.ends_with("READ\nREAD\nREAD"), "--privileged: {out}");
    Ok(())
}
