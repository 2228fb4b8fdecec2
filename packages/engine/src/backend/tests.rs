//! The container lifecycle on the recording runtime ([`crate::runtime::fake`]): create,
//! start, exit, stop, kill, restart policies, remove, wait, and the records on disk across
//! an engine restart. No root: nothing here reaches a shim, a cgroup or a netns.

use super::*;
use crate::containers::valid_name;
use crate::runtime::fake::{Call, Fake};
use clap::Parser;
use docker_api::filters::ContainerPrune;
use docker_api::{ContainerBackend, ExecBackend, LogsOptions, StdStream, WaitCondition};
use nix::sys::signal::Signal;
use sha2::Digest;
use std::collections::HashSet;
use std::ffi::OsString;
use std::path::Path;
use std::time::Duration;
use tokio::task::JoinHandle;

/// The engine's command line: `--data-root ROOT` and `extra`.
fn args(root: &Path, extra: &[&str]) -> Args {
    let mut argv = vec![
        "engine".into(),
        "--data-root".into(),
        root.as_os_str().to_owned(),
    ];
    argv.extend(extra.iter().map(OsString::from));
    Args::parse_from(argv)
}

/// An engine with `args` on the recording runtime, image `busybox` in its store, restored.
async fn engine_with(args: &Args, rt: &Arc<Fake>) -> Arc<Engine> {
    let e = Arc::new(Engine::with_runtime(args, rt.clone()).unwrap());
    add_image(&e);
    e.clone().restore().await;
    e
}

/// An engine on `root` (bridge networking off) with image `busybox` in its store, restored.
async fn engine_on(root: &Path, rt: &Arc<Fake>) -> Arc<Engine> {
    engine_with(&args(root, &["--bridge", "none"]), rt).await
}

/// How most tests start: [`engine_on`] a fresh temporary root, with its recording runtime.
async fn engine() -> (tempfile::TempDir, Arc<Fake>, Arc<Engine>) {
    let d = tempfile::tempdir().unwrap();
    let rt = Arc::new(Fake::default());
    let e = engine_on(d.path(), &rt).await;
    (d, rt, e)
}

/// Image `busybox:latest`: a config (`Cmd ["sh"]`) and one empty unpacked layer.
fn add_image(e: &Engine) {
    let diff_id = format!("sha256:{}", "ab".repeat(32));
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": ["sh"], "Env": ["PATH=/bin", "FROM_IMAGE=1"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    })
    .to_string();
    let id = format!("sha256:{}", hex::encode(sha2::Sha256::digest(&config)));
    std::fs::write(e.images.blob_path(&id), &config).unwrap();
    std::fs::create_dir_all(e.images.layer_path(&diff_id)).unwrap();
    e.images.tag(&id, "busybox:latest").unwrap();
}

fn req(v: serde_json::Value) -> ContainerCreateRequest {
    let mut v = v;
    if v.get("Image").is_none() {
        v["Image"] = "busybox".into();
    }
    serde_json::from_value(v).unwrap()
}

async fn create(e: &Engine, name: &str, v: serde_json::Value) -> String {
    let name = (!name.is_empty()).then(|| name.to_string());
    e.container_create(name, req(v)).await.unwrap().id
}

/// Creates and starts a container; returns its id and its process's pid.
async fn run(e: &Engine, rt: &Fake, v: serde_json::Value) -> (String, i32) {
    let id = create(e, "", v).await;
    e.container_start(&id).await.unwrap();
    let pid = rt.pid_of(&id).expect("a process");
    (id, pid)
}

/// A create request with `HostConfig.RestartPolicy.Name` = `name`.
fn restart_policy(name: &str) -> serde_json::Value {
    serde_json::json!({"HostConfig": {"RestartPolicy": {"Name": name}}})
}

fn status(e: &Engine, id: &str) -> String {
    e.find(id).unwrap().snapshot().status.to_string()
}

/// Waits (up to 10 s) until `f` holds.
async fn until(what: &str, f: impl Fn() -> bool) {
    for _ in 0..1000 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

async fn wait_exit(e: &Engine, id: &str) -> i64 {
    tokio::time::timeout(
        Duration::from_secs(10),
        e.container_wait(id, WaitCondition::NotRunning),
    )
    .await
    .expect("the container to stop")
    .unwrap()
    .status_code
}

/// Ends the process `pid` of container `id` with `code`; the exit code `docker wait` gives.
async fn exit(e: &Engine, rt: &Fake, id: &str, pid: i32, code: i64) -> i64 {
    assert!(rt.exit(pid, code), "no process {pid}");
    wait_exit(e, id).await
}

/// After 300 ms, time enough for a restart a policy would make: how often `id` was started,
/// and its status.
async fn settled(e: &Engine, rt: &Fake, id: &str) -> (usize, String) {
    tokio::time::sleep(Duration::from_millis(300)).await;
    (rt.spawns(id), status(e, id))
}

/// `container_wait(id, cond)` in a task of its own, so that the test can act meanwhile;
/// [`waited`] gives its answer.
fn wait_in_task(e: &Arc<Engine>, id: &str, cond: WaitCondition) -> JoinHandle<WaitResponse> {
    let (e, id) = (e.clone(), id.to_string());
    tokio::spawn(async move { e.container_wait(&id, cond).await.unwrap() })
}

/// The answer of a [`wait_in_task`] (10 s at most).
async fn waited(w: JoinHandle<WaitResponse>) -> WaitResponse {
    tokio::time::timeout(Duration::from_secs(10), w)
        .await
        .expect("the wait to end")
        .unwrap()
}

#[tokio::test]
async fn create_checks_names_and_refuses_a_name_in_use() {
    let (_d, rt, e) = engine().await;
    let id = create(&e, "/web-1", serde_json::json!({})).await;
    assert_eq!(e.find(&id).unwrap().snapshot().name, "web-1");
    assert_eq!(e.container_inspect("web-1").await.unwrap().name, "/web-1");
    assert_eq!(status(&e, &id), "created");

    let err = e
        .container_create(Some("web-1".into()), req(serde_json::json!({})))
        .await
        .unwrap_err();
    assert_eq!(err.status, http::StatusCode::CONFLICT);
    assert!(
        err.message.contains(&format!(
            "The container name \"/web-1\" is already in use by container \"{id}\""
        )),
        "{}",
        err.message
    );
    for bad in ["a", "bad name", "../x", "-x"] {
        let err = e
            .container_create(Some(bad.into()), req(serde_json::json!({})))
            .await
            .unwrap_err();
        assert_eq!(err.status, http::StatusCode::BAD_REQUEST, "{bad}");
        assert!(err.message.contains("Invalid container name"), "{bad}");
    }
    // Without a name: a generated one, adjective_name.
    let other = create(&e, "", serde_json::json!({})).await;
    let n = e.find(&other).unwrap().snapshot().name;
    assert!(n.contains('_') && valid_name(&n), "{n}");
    // Generated names do not collide (there are 120 of the first kind).
    let mut names = HashSet::from([n]);
    for _ in 0..150 {
        let id = create(&e, "", serde_json::json!({})).await;
        assert!(names.insert(e.find(&id).unwrap().snapshot().name));
    }
    // A short id prefix finds it; nothing was started.
    assert_eq!(e.find(&id[..6]).unwrap().snapshot().id, id);
    assert!(!rt.calls().iter().any(|c| matches!(c, Call::Spawn { .. })));
}

#[tokio::test]
async fn create_refuses_what_docker_refuses() {
    let (_d, _, e) = engine().await;
    let cases = [
        (
            serde_json::json!({"Image": ""}),
            400,
            "config.Image is required",
        ),
        (
            serde_json::json!({"Image": "nope"}),
            404,
            "No such image: nope",
        ),
        (
            serde_json::json!({"HostConfig": {"RestartPolicy": {"Name": "sometimes"}}}),
            400,
            "invalid restart policy",
        ),
        (
            serde_json::json!({
                "HostConfig": {"AutoRemove": true, "RestartPolicy": {"Name": "always"}}
            }),
            400,
            "cannot specify both --restart and --rm",
        ),
        (
            serde_json::json!({"HostConfig": {"NetworkMode": "mine"}}),
            404,
            "network mine not found",
        ),
        (
            serde_json::json!({"WorkingDir": "rel"}),
            400,
            "needs to be an absolute path",
        ),
        (
            serde_json::json!({"HostConfig": {"Binds": ["/tmp:rel"]}}),
            400,
            "mount path must be absolute",
        ),
    ];
    for (v, code, msg) in cases {
        let err = e.container_create(None, req(v.clone())).await.unwrap_err();
        assert_eq!(err.status.as_u16(), code, "{v}: {}", err.message);
        assert!(err.message.contains(msg), "{v}: {}", err.message);
    }
    assert!(e.containers.lock().unwrap().is_empty());
}

#[tokio::test]
async fn create_merges_the_image_config() {
    let (_d, _, e) = engine().await;
    let id = create(
        &e,
        "",
        serde_json::json!({"Env": ["FROM_IMAGE=2", "MINE=1"]}),
    )
    .await;
    let r = e.find(&id).unwrap().snapshot();
    // The image's Cmd, since the request has none; request env overrides by key.
    assert_eq!((r.path.as_str(), r.args.len()), ("sh", 0));
    assert_eq!(
        r.config.env.unwrap(),
        ["PATH=/bin", "FROM_IMAGE=2", "MINE=1"]
    );
    assert_eq!(r.config.hostname, id[..12]);
    assert_eq!(r.host_config.network_mode, "bridge");
}

#[tokio::test]
async fn start_spawns_in_its_cgroup_and_a_second_start_is_not_modified() {
    let (_d, rt, e) = engine().await;
    let (id, pid) = run(
        &e,
        &rt,
        serde_json::json!({"Cmd": ["echo", "hi"], "HostConfig": {"Memory": 1048576}}),
    )
    .await;
    let cg = PathBuf::from("/fake-cgroup").join(&id);
    assert_eq!(
        rt.calls(),
        [
            Call::CgroupCreate {
                id: id.clone(),
                memory: 1048576,
                devices: Some(crate::devices::default_rules()),
            },
            Call::Spawn {
                id: id.clone(),
                args: vec!["echo".into(), "hi".into()]
            },
            Call::CgroupAdd(cg.clone(), pid),
        ]
    );
    let i = e.container_inspect(&id).await.unwrap();
    assert!(i.state.running && i.state.status == "running");
    assert_eq!(i.state.pid, pid as i64);
    assert_eq!(
        e.container_start(&id).await.unwrap_err().status,
        http::StatusCode::NOT_MODIFIED
    );
    assert_eq!(rt.spawns(&id), 1);
    // `docker ps` lists it; the spec the shim reads is next to the record.
    assert_eq!(e.containers(false).await.unwrap().len(), 1);
    assert!(e.find(&id).unwrap().dir.join("spec.json").is_file());
}

#[tokio::test]
async fn an_exit_is_recorded_with_its_code_and_the_cgroup_removed() {
    let (_d, rt, e) = engine().await;
    let (id, pid) = run(&e, &rt, serde_json::json!({})).await;
    rt.output(pid, false, "out\n");
    rt.output(pid, true, "err\n");
    assert_eq!(exit(&e, &rt, &id, pid, 3).await, 3);
    let i = e.container_inspect(&id).await.unwrap();
    assert_eq!((i.state.status.as_str(), i.state.exit_code), ("exited", 3));
    assert!(!i.state.running && i.state.pid == 0);
    // Removed after the waiters are told.
    let cg = Call::CgroupRemove(PathBuf::from("/fake-cgroup").join(&id));
    until("the cgroup's removal", || rt.calls().contains(&cg)).await;
    // `docker ps` no longer lists it, `-a` does, as "Exited (3) ...".
    assert!(e.containers(false).await.unwrap().is_empty());
    let all = e.containers(true).await.unwrap();
    assert!(
        all[0].status.starts_with("Exited (3) "),
        "{}",
        all[0].status
    );
    // Its output went to the log, each line on its stream.
    let (tty, mut rx) = e
        .container_logs(
            &id,
            LogsOptions {
                stdout: true,
                stderr: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(!tty);
    let mut got = Vec::new();
    while let Some(f) = rx.recv().await {
        got.push((f.stream, String::from_utf8_lossy(&f.data).into_owned()));
    }
    got.sort_by_key(|(s, _)| *s as u8);
    assert_eq!(
        got,
        [
            (StdStream::Stdout, "out\n".to_string()),
            (StdStream::Stderr, "err\n".to_string())
        ]
    );
    // And the record on disk says so.
    let rec = Container::load(&e.find(&id).unwrap().dir).unwrap();
    assert_eq!((rec.status, rec.exit_code), (Status::Exited, 3));
}

#[tokio::test]
async fn a_start_that_cannot_exec_leaves_the_container_created_with_127() {
    let (_d, rt, e) = engine().await;
    let id = create(&e, "", serde_json::json!({"Cmd": ["nope"]})).await;
    rt.fail_next_start("exec: \"nope\": executable file not found in $PATH");
    let err = e.container_start(&id).await.unwrap_err();
    assert_eq!(err.status, http::StatusCode::BAD_REQUEST);
    assert!(
        err.message
            .starts_with("failed to create task for container: exec: \"nope\""),
        "{}",
        err.message
    );
    let i = e.container_inspect(&id).await.unwrap();
    assert_eq!(
        (i.state.status.as_str(), i.state.exit_code),
        ("created", 127)
    );
    assert!(i.state.error.contains("executable file not found"));
    // Waiters see it as an exit with that code; the cgroup is gone.
    assert_eq!(wait_exit(&e, &id).await, 127);
    assert!(rt
        .calls()
        .contains(&Call::CgroupRemove(PathBuf::from("/fake-cgroup").join(&id))));
}

#[tokio::test]
async fn stop_sends_the_stop_signal_then_kills_after_the_timeout() {
    let (_d, rt, e) = engine().await;
    // A process that dies of SIGTERM: one signal, exit 143.
    let (id, pid) = run(&e, &rt, serde_json::json!({})).await;
    e.container_stop(&id, Some(10), None).await.unwrap();
    assert_eq!(rt.signals(pid), [Signal::SIGTERM]);
    assert_eq!(wait_exit(&e, &id).await, 143);
    assert!(e.find(&id).unwrap().snapshot().stopped_by_user);
    // Stopping it again: not modified.
    assert_eq!(
        e.container_stop(&id, None, None).await.unwrap_err().status,
        http::StatusCode::NOT_MODIFIED
    );
    // The image's or container's StopSignal is used.
    let (id2, pid2) = run(&e, &rt, serde_json::json!({"StopSignal": "SIGINT"})).await;
    e.container_stop(&id2, Some(10), None).await.unwrap();
    assert_eq!(rt.signals(pid2), [Signal::SIGINT]);
    assert_eq!(wait_exit(&e, &id2).await, 130);
    // One that ignores SIGTERM (a PID 1 without a handler): SIGKILL after the timeout.
    rt.ignore(Signal::SIGTERM);
    let (id3, pid3) = run(&e, &rt, serde_json::json!({})).await;
    let t0 = std::time::Instant::now();
    e.container_stop(&id3, Some(1), None).await.unwrap();
    assert!(t0.elapsed() >= Duration::from_secs(1), "{:?}", t0.elapsed());
    assert_eq!(rt.signals(pid3), [Signal::SIGTERM, Signal::SIGKILL]);
    assert_eq!(wait_exit(&e, &id3).await, 137);
}

#[tokio::test]
async fn kill_signals_a_running_container_only() {
    let (_d, rt, e) = engine().await;
    let (id, pid) = run(&e, &rt, serde_json::json!({})).await;
    let err = e
        .container_kill(&id, Some("NOPE".into()))
        .await
        .unwrap_err();
    assert_eq!(err.message, "Invalid signal: NOPE");
    rt.ignore(Signal::SIGHUP);
    e.container_kill(&id, Some("HUP".into())).await.unwrap();
    assert_eq!(status(&e, &id), "running");
    e.container_kill(&id, None).await.unwrap();
    assert_eq!(rt.signals(pid), [Signal::SIGHUP, Signal::SIGKILL]);
    assert_eq!(wait_exit(&e, &id).await, 137);
    let err = e.container_kill(&id, None).await.unwrap_err();
    assert_eq!(err.status, http::StatusCode::CONFLICT);
    assert!(err.message.contains("is not running"), "{}", err.message);
}

#[tokio::test]
async fn restart_policy_no_leaves_it_exited() {
    let (_d, rt, e) = engine().await;
    let (id, pid) = run(&e, &rt, serde_json::json!({})).await;
    assert_eq!(exit(&e, &rt, &id, pid, 1).await, 1);
    assert_eq!(settled(&e, &rt, &id).await, (1, "exited".into()));
}

#[tokio::test]
async fn restart_policy_on_failure_counts_its_retries() {
    let (_d, rt, e) = engine().await;
    let policy = serde_json::json!({
        "HostConfig": {"RestartPolicy": {"Name": "on-failure", "MaximumRetryCount": 2}}
    });
    let (id, _) = run(&e, &rt, policy.clone()).await;
    // Three failures: the first run and two retries; then it stays exited.
    for n in 1..=3 {
        until("the run", || {
            rt.spawns(&id) == n && rt.pid_of(&id).is_some()
        })
        .await;
        until("running", || status(&e, &id) == "running").await;
        rt.exit(rt.pid_of(&id).unwrap(), 2);
        until("the exit", || status(&e, &id) != "running").await;
    }
    until("the last exit", || status(&e, &id) == "exited").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r = e.find(&id).unwrap().snapshot();
    assert_eq!((rt.spawns(&id), r.restart_count, r.exit_code), (3, 2, 2));
    assert_eq!(e.container_inspect(&id).await.unwrap().restart_count, 2);
    // Exit 0 is no failure: no restart.
    let (id0, pid0) = run(&e, &rt, policy).await;
    assert_eq!(exit(&e, &rt, &id0, pid0, 0).await, 0);
    assert_eq!(settled(&e, &rt, &id0).await, (1, "exited".into()));
}

#[tokio::test]
async fn restart_policy_always_restarts_a_clean_exit_until_stopped() {
    let (_d, rt, e) = engine().await;
    let (id, pid) = run(&e, &rt, restart_policy("always")).await;
    rt.exit(pid, 0);
    until("the restart", || {
        rt.spawns(&id) == 2 && status(&e, &id) == "running"
    })
    .await;
    assert_eq!(e.find(&id).unwrap().snapshot().restart_count, 1);
    // A user's stop is final.
    e.container_stop(&id, Some(10), None).await.unwrap();
    assert_eq!(wait_exit(&e, &id).await, 143);
    assert_eq!(settled(&e, &rt, &id).await, (2, "exited".into()));
}

#[tokio::test]
async fn a_stop_during_the_backoff_cancels_the_restart() {
    let (_d, rt, e) = engine().await;
    let (id, pid) = run(&e, &rt, restart_policy("unless-stopped")).await;
    // A long backoff (3.2 s, as after five restarts) so that the stop lands in it.
    e.find(&id).unwrap().rec.lock().unwrap().restart_count = 5;
    rt.exit(pid, 1);
    until("restarting", || status(&e, &id) == "restarting").await;
    assert!(e.containers(false).await.unwrap().len() == 1, "ps lists it");
    e.container_stop(&id, None, None).await.unwrap();
    assert_eq!(status(&e, &id), "exited");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!((rt.spawns(&id), status(&e, &id)), (1, "exited".into()));
}

#[tokio::test]
async fn restart_stops_and_starts_again() {
    let (_d, rt, e) = engine().await;
    let (id, pid) = run(&e, &rt, serde_json::json!({})).await;
    e.container_restart(&id, Some(10)).await.unwrap();
    assert_eq!(rt.signals(pid), [Signal::SIGTERM]);
    assert_eq!((rt.spawns(&id), status(&e, &id)), (2, "running".into()));
    // Not a user's stop: an unless-stopped policy still applies afterwards.
    assert!(!e.find(&id).unwrap().snapshot().stopped_by_user);
    // A stopped container just starts.
    let id2 = create(&e, "", serde_json::json!({})).await;
    e.container_restart(&id2, None).await.unwrap();
    assert_eq!(rt.spawns(&id2), 1);
}

#[tokio::test]
async fn remove_needs_force_while_running() {
    let (_d, rt, e) = engine().await;
    let (id, pid) = run(&e, &rt, restart_policy("always")).await;
    let name = e.find(&id).unwrap().snapshot().name;
    let dir = e.find(&id).unwrap().dir.clone();
    let err = e.container_remove(&id, false, false).await.unwrap_err();
    assert_eq!(err.status, http::StatusCode::CONFLICT);
    assert!(
        err.message.contains(&format!(
            "cannot remove container \"/{name}\": container is running"
        )),
        "{}",
        err.message
    );
    assert_eq!(status(&e, &id), "running");
    // A waiter for its removal is told.
    let removed = wait_in_task(&e, &id, WaitCondition::Removed);
    // The test runtime has one thread: this lets the waiter subscribe.
    tokio::time::sleep(Duration::from_millis(50)).await;
    e.container_remove(&id, true, false).await.unwrap();
    assert_eq!(rt.signals(pid), [Signal::SIGKILL]);
    assert_eq!(
        e.find(&id).err().map(|e| e.status),
        Some(http::StatusCode::NOT_FOUND)
    );
    assert!(!dir.exists(), "{} left", dir.display());
    waited(removed).await;
    // Not restarted by its policy, and its name is free again.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rt.spawns(&id), 1);
    create(&e, &name, serde_json::json!({})).await;
    // A stopped one needs no force.
    let id2 = create(&e, "", serde_json::json!({})).await;
    e.container_remove(&id2, false, false).await.unwrap();
    assert!(e.find(&id2).is_err());
}

#[tokio::test]
async fn auto_remove_removes_it_after_its_exit() {
    let (_d, rt, e) = engine().await;
    let (id, pid) = run(
        &e,
        &rt,
        serde_json::json!({"HostConfig": {"AutoRemove": true}}),
    )
    .await;
    let dir = e.find(&id).unwrap().dir.clone();
    rt.exit(pid, 0);
    until("the removal", || e.find(&id).is_err() && !dir.exists()).await;
}

#[tokio::test]
async fn prune_removes_stopped_containers_only() {
    let (_d, rt, e) = engine().await;
    let created = create(&e, "", serde_json::json!({})).await;
    let (exited, pid) = run(&e, &rt, serde_json::json!({})).await;
    exit(&e, &rt, &exited, pid, 0).await;
    let (running, _) = run(&e, &rt, serde_json::json!({})).await;
    let mut pruned = e.container_prune(ContainerPrune::default()).await.unwrap();
    pruned.sort();
    let mut want = vec![created, exited];
    want.sort();
    assert_eq!(pruned, want);
    assert_eq!(status(&e, &running), "running");
}

#[tokio::test]
async fn prune_filters_by_label_and_creation_time() {
    let (_d, _rt, e) = engine().await;
    let f = |raw: &str, now: i64| {
        ContainerPrune::parse(docker_api::filters::Filters::parse(Some(raw)).unwrap(), now).unwrap()
    };
    let a = create(&e, "", serde_json::json!({"Labels": {"team": "a"}})).await;
    let b = create(
        &e,
        "",
        serde_json::json!({"Labels": {"team": "b", "keep": ""}}),
    )
    .await;
    let plain = create(&e, "", serde_json::json!({})).await;
    let now = (docker_api::time::now_nanos() / 1_000_000_000) as i64;
    // Created just now: `until=1h` (before an hour ago) keeps them all.
    assert_eq!(
        e.container_prune(f(r#"{"until":["1h"]}"#, now))
            .await
            .unwrap(),
        Vec::<String>::new()
    );
    assert_eq!(
        e.container_prune(f(r#"{"label":["team=a"]}"#, now))
            .await
            .unwrap(),
        [a]
    );
    assert_eq!(
        e.container_prune(f(r#"{"label!":["keep"]}"#, now))
            .await
            .unwrap(),
        [plain]
    );
    let until = (now + 10).to_string();
    let left = e
        .container_prune(f(&format!(r#"{{"until":["{until}"]}}"#), now))
        .await;
    assert_eq!(left.unwrap(), [b]);
}

#[tokio::test]
async fn wait_conditions() {
    let (_d, rt, e) = engine().await;
    // Not running: at once, with the last exit code (none yet: 0).
    let id = create(&e, "", serde_json::json!({})).await;
    assert_eq!(wait_exit(&e, &id).await, 0);
    // next-exit waits for an exit after the call, even of a stopped container.
    let next = wait_in_task(&e, &id, WaitCondition::NextExit);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!next.is_finished());
    e.container_start(&id).await.unwrap();
    let pid = rt.pid_of(&id).unwrap();
    // Not running, called while it runs: waits for this run's exit.
    let not_running = wait_in_task(&e, &id, WaitCondition::NotRunning);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!not_running.is_finished());
    rt.exit(pid, 42);
    for w in [next, not_running] {
        assert_eq!(waited(w).await.status_code, 42);
    }
    assert_eq!(
        e.container_wait("nope", WaitCondition::NotRunning)
            .await
            .unwrap_err()
            .status,
        http::StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn records_survive_an_engine_restart_and_policies_apply_on_boot() {
    let (d, rt, e) = engine().await;
    let created = create(&e, "created", serde_json::json!({})).await;
    let (exited, pid) = run(&e, &rt, serde_json::json!({})).await;
    exit(&e, &rt, &exited, pid, 7).await;
    // Running when the engine goes away (its state says running).
    let (plain, _) = run(&e, &rt, serde_json::json!({})).await;
    let (always, _) = run(&e, &rt, restart_policy("always")).await;
    let (unless_running, _) = run(&e, &rt, restart_policy("unless-stopped")).await;
    let (unless_stopped, _) = run(&e, &rt, restart_policy("unless-stopped")).await;
    e.container_stop(&unless_stopped, Some(10), None)
        .await
        .unwrap();
    wait_exit(&e, &unless_stopped).await;
    let names: HashMap<String, String> = e
        .containers
        .lock()
        .unwrap()
        .values()
        .map(|c| (c.snapshot().id, c.snapshot().name))
        .collect();

    // A new engine on the same root, as after a reboot of the engine.
    let rt2 = Arc::new(Fake::default());
    let e2 = engine_on(d.path(), &rt2).await;
    let got: HashMap<String, String> = e2
        .containers
        .lock()
        .unwrap()
        .values()
        .map(|c| (c.snapshot().id, c.snapshot().name))
        .collect();
    assert_eq!(got, names);
    assert_eq!(status(&e2, &created), "created");
    let r = e2.find(&exited).unwrap().snapshot();
    assert_eq!((r.status, r.exit_code), (Status::Exited, 7));
    // What was running is exited (255): its process went with the old engine.
    let r = e2.find(&plain).unwrap().snapshot();
    assert_eq!((r.status, r.exit_code, r.pid), (Status::Exited, 255, 0));
    assert_eq!(
        Container::load(&e2.find(&plain).unwrap().dir)
            .unwrap()
            .status,
        Status::Exited
    );
    // always and unless-stopped (not stopped by the user) start again; the rest do not.
    for id in [&always, &unless_running] {
        assert_eq!(
            (rt2.spawns(id), status(&e2, id)),
            (1, "running".into()),
            "{id}"
        );
    }
    for id in [&created, &exited, &plain, &unless_stopped] {
        assert_eq!(rt2.spawns(id), 0, "{id}");
    }
    assert_eq!(status(&e2, &unless_stopped), "exited");
    // The restored records work as any: a start of one, a removal of another.
    e2.container_start(&plain).await.unwrap();
    assert_eq!(status(&e2, &plain), "running");
    e2.container_remove(&exited, false, false).await.unwrap();
    assert!(!d.path().join("containers").join(&exited).exists());
}

#[tokio::test]
async fn a_tmpfs_exec_root_that_went_away_takes_the_writable_layers_with_it() {
    let d = tempfile::tempdir().unwrap();
    let exec_root = d.path().join("run");
    let rt = Arc::new(Fake::default());
    let args = args(
        d.path(),
        &[
            "--exec-root",
            exec_root.to_str().unwrap(),
            "--bridge",
            "none",
        ],
    );
    let e = engine_with(&args, &rt).await;
    let id = create(&e, "", serde_json::json!({})).await;
    assert!(exec_root
        .join("containers")
        .join(&id)
        .join("state.json")
        .is_file());
    assert!(d.path().join("containers").join(&id).join("upper").is_dir());
    drop(e);
    std::fs::remove_dir_all(&exec_root).unwrap();
    let e2 = Arc::new(Engine::with_runtime(&args, rt).unwrap());
    e2.clone().restore().await;
    assert!(e2.containers.lock().unwrap().is_empty());
    assert!(!d.path().join("containers").join(&id).exists());
}

#[tokio::test]
async fn shutdown_stops_what_runs() {
    let (_d, rt, e) = engine().await;
    let (id, pid) = run(&e, &rt, restart_policy("always")).await;
    e.shutdown().await;
    assert_eq!(rt.signals(pid), [Signal::SIGTERM]);
    // Exited, and not restarted: the engine is going away.
    assert_eq!(settled(&e, &rt, &id).await, (1, "exited".into()));
    // Its record keeps the policy for the next boot.
    assert!(!e.find(&id).unwrap().snapshot().stopped_by_user);
}

#[tokio::test]
async fn bridge_containers_get_an_address_before_they_run() {
    let d = tempfile::tempdir().unwrap();
    let rt = Arc::new(Fake::default());
    let args = args(d.path(), &["--bridge", "test0", "--bip", "10.9.0.1/24"]);
    let e = engine_with(&args, &rt).await;
    assert_eq!(rt.calls(), [Call::SetupBridge("test0".into())]);
    let (id, pid) = run(&e, &rt, serde_json::json!({})).await;
    let ip = rt
        .calls()
        .iter()
        .find_map(|c| match c {
            Call::NetAttach { id: i, pid: p, ip } if *i == id && *p == pid => Some(*ip),
            _ => None,
        })
        .expect("a network attach");
    assert_eq!(ip.octets()[..3], [10, 9, 0]);
    let i = e.container_inspect(&id).await.unwrap();
    assert_eq!(i.network_settings.ip_address, ip.to_string());
    assert_eq!(i.network_settings.gateway, "10.9.0.1");
    let hosts = std::fs::read_to_string(e.find(&id).unwrap().dir.join("hosts")).unwrap();
    assert!(hosts.contains(&format!("{ip}\t{}", &id[..12])), "{hosts}");
    // --network host and none: no attach.
    let n = rt.calls().len();
    run(
        &e,
        &rt,
        serde_json::json!({"HostConfig": {"NetworkMode": "none"}}),
    )
    .await;
    assert!(!rt.calls()[n..]
        .iter()
        .any(|c| matches!(c, Call::NetAttach { .. })));
}

#[tokio::test]
async fn exec_runs_in_the_containers_process() {
    let (_d, rt, e) = engine().await;
    let id = create(&e, "", serde_json::json!({})).await;
    let ereq: ExecCreateRequest =
        serde_json::from_value(serde_json::json!({"Cmd": ["ls"], "AttachStdout": true})).unwrap();
    let err = e.exec_create(&id, ereq.clone()).await.unwrap_err();
    assert_eq!(err.status, http::StatusCode::CONFLICT);
    e.container_start(&id).await.unwrap();
    let pid = rt.pid_of(&id).unwrap();
    let eid = e.exec_create(&id, ereq).await.unwrap();
    let mut io = e.exec_start(&eid, Default::default()).await.unwrap();
    assert!(rt.calls().contains(&Call::SpawnExec {
        pid,
        args: vec!["ls".into()]
    }));
    let epid = rt.pid_of("exec").unwrap();
    rt.output(epid, false, "bin\n");
    rt.exit(epid, 5);
    let f = io.output.recv().await.unwrap();
    assert_eq!(&f.data[..], b"bin\n");
    assert!(io.output.recv().await.is_none());
    let i = e.exec_inspect(&eid).await.unwrap();
    assert_eq!((i.running, i.exit_code), (false, Some(5)));
}

#[tokio::test]
async fn an_oom_kill_shows_in_inspect_until_the_next_start() {
    let (_d, rt, e) = engine().await;
    let (id, pid) = run(
        &e,
        &rt,
        serde_json::json!({"HostConfig": {"Memory": 8388608}}),
    )
    .await;
    rt.set_oom(true);
    assert_eq!(exit(&e, &rt, &id, pid, 137).await, 137);
    assert!(e.container_inspect(&id).await.unwrap().state.oom_killed);
    rt.set_oom(false);
    e.container_start(&id).await.unwrap();
    assert!(!e.container_inspect(&id).await.unwrap().state.oom_killed);
}

#[tokio::test]
async fn an_ephemeral_published_port_shows_the_port_bound() {
    let (_d, rt, e) = engine().await;
    // `-p 127.0.0.1::80`: Docker's meaning is a port the kernel picks, not host port 80.
    let (id, _) = run(
        &e,
        &rt,
        serde_json::json!({"HostConfig": {"NetworkMode": "none", "PortBindings":
            {"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": ""}]}}}),
    )
    .await;
    let ins = e.container_inspect(&id).await.unwrap();
    let shown = ins.network_settings.ports["80/tcp"].clone().unwrap();
    let port: u16 = shown[0].host_port.parse().unwrap();
    assert!(port != 0 && port != 80, "{shown:?}");
    assert_eq!(shown[0].host_ip, "127.0.0.1");
    // The port is really bound by the engine until the container stops.
    assert!(std::net::TcpListener::bind(("127.0.0.1", port)).is_err());
    let listed = e.containers(false).await.unwrap();
    assert_eq!(listed[0].ports[0].public_port, Some(port));
}
