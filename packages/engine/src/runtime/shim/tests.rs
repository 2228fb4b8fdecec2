//! What of the shim runs without root: its arguments, spec parsing, the user lookup, paths
//! inside the root, the program search, the status of a waited child. (Namespaces, mounts
//! and pivot_root are covered by the root-only e2e tests.)

use super::*;
use std::os::fd::AsRawFd;

fn args(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn arguments_are_a_mode_and_a_spec() {
    assert_eq!(
        parse_args(&args(&["__run", "/x/spec.json"])),
        Some(("__run", "/x/spec.json"))
    );
    assert_eq!(parse_args(&args(&["__run"])), None);
    assert_eq!(parse_args(&args(&["__run", "a", "b"])), None);
    assert_eq!(parse_args(&[]), None);
    // Wrong arguments: the usage on stderr and 125, Docker's code for a runtime failure.
    assert_eq!(main(&args(&["__run"])), 125);
    // A mode that is not a shim's: 125, nothing reported (the spec is readable).
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("spec.json");
    std::fs::write(&p, "{}").unwrap();
    assert_eq!(main(&args(&["__nope", p.to_str().unwrap()])), 125);
}

/// A run spec as the engine writes it (serde of `RunSpec`), and as older engines wrote it,
/// without the later fields (`volatile`, `trace`, `confine`).
#[test]
fn run_and_exec_specs_parse_and_bad_ones_say_why() {
    let spec = RunSpec {
        rootfs: "/c/rootfs".into(),
        lowers: vec!["/l/2".into(), "/l/1".into()],
        hostname: "h1".into(),
        new_netns: true,
        volatile: true,
        process: Process {
            args: vec!["sh".into(), "-c".into(), "true".into()],
            user: "1000:1000".into(),
            ..Default::default()
        },
        ..Default::default()
    };
    let data = serde_json::to_vec(&spec).unwrap();
    match parse_spec("__run", "/c/spec.json", &data) {
        Some(Ok(Spec::Run(s))) => {
            assert_eq!(s.lowers, spec.lowers);
            assert_eq!(s.process.args, spec.process.args);
            assert!(s.volatile && s.new_netns && !s.trace);
        }
        other => panic!("{other:?}"),
    }
    let old = r#"{"rootfs":"/r","lowers":[],"upper":"/u","work":"/w","binds":[],
        "etc_files":[["/c/hosts","/etc/hosts"]],"hostname":"h","new_netns":false,
        "process":{"args":["true"],"env":[],"cwd":"","user":"","tty":false}}"#;
    match parse_spec("__run", "old.json", old.as_bytes()) {
        Some(Ok(Spec::Run(s))) => {
            assert!(!s.volatile && !s.trace);
            assert_eq!(s.etc_files, [("/c/hosts".into(), "/etc/hosts".to_string())]);
        }
        other => panic!("{other:?}"),
    }
    let exec = serde_json::to_vec(&ExecSpec {
        pid: 42,
        cgroup: Some("/sys/fs/cgroup/axion/x".into()),
        process: Process {
            args: vec!["ls".into()],
            ..Default::default()
        },
    })
    .unwrap();
    match parse_spec("__exec", "e.json", &exec) {
        Some(Ok(Spec::Exec(s))) => assert_eq!((s.pid, s.process.args.len()), (42, 1)),
        other => panic!("{other:?}"),
    }
    // A run spec is no exec spec, and junk is no spec: the message names the file.
    for (mode, data) in [("__exec", &data[..]), ("__run", b"{not json" as &[u8])] {
        match parse_spec(mode, "/c/spec.json", data) {
            Some(Err(m)) => assert!(m.starts_with("bad spec /c/spec.json: "), "{m}"),
            other => panic!("{mode}: {other:?}"),
        }
    }
    assert!(parse_spec("__other", "x", &data).is_none());
}

const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
app:x:1000:1000:App:/home/app:/bin/sh
short:x:7
";
const GROUP: &str = "root:x:0:
staff:x:50:app,daemon
video:x:44:app
app:x:1000:
";

fn ids(uid: u32, gid: u32, groups: &[u32], home: &str) -> Ids {
    Ids {
        uid,
        gid,
        groups: groups.to_vec(),
        home: home.into(),
    }
}

#[test]
fn users_resolve_by_name_or_number_with_their_groups() {
    let r = |s: &str| resolve_user_in(s, PASSWD, GROUP);
    assert_eq!(r("").unwrap(), ids(0, 0, &[], "/root"));
    assert_eq!(r("app").unwrap(), ids(1000, 1000, &[50, 44], "/home/app"));
    assert_eq!(r("1000").unwrap(), ids(1000, 1000, &[50, 44], "/home/app"));
    assert_eq!(r("daemon:video").unwrap(), ids(1, 44, &[50], "/usr/sbin"));
    assert_eq!(r("app:0").unwrap(), ids(1000, 0, &[50, 44], "/home/app"));
    // A number not in passwd is taken as uid and gid, home /.
    assert_eq!(r("4242").unwrap(), ids(4242, 4242, &[], "/"));
    assert_eq!(r("4242:7").unwrap(), ids(4242, 7, &[], "/"));
    // A line with too few fields matches nothing.
    assert!(r("short").is_err());
    let (code, msg) = r("nobody").unwrap_err();
    assert_eq!(
        (code, msg.as_str()),
        (
            125,
            "unable to find user nobody: no matching entries in passwd file"
        )
    );
    let (code, msg) = r("app:wheel").unwrap_err();
    assert_eq!(
        (code, msg.as_str()),
        (
            125,
            "unable to find group wheel: no matching entries in group file"
        )
    );
    // No passwd at all (a scratch image): numbers still work, root by default.
    assert_eq!(resolve_user_in("", "", "").unwrap(), ids(0, 0, &[], "/"));
    assert_eq!(resolve_user_in("5:6", "", "").unwrap(), ids(5, 6, &[], "/"));
}

#[test]
fn paths_inside_the_root_stay_inside() {
    let root = Path::new("/c/rootfs");
    assert_eq!(inside(root, "/etc/hosts"), Path::new("/c/rootfs/etc/hosts"));
    assert_eq!(inside(root, "data"), Path::new("/c/rootfs/data"));
    assert_eq!(inside(root, "/a/./b/"), Path::new("/c/rootfs/a/b"));
    assert_eq!(inside(root, "/../../etc"), Path::new("/c/rootfs/etc"));
    assert_eq!(inside(root, "/"), Path::new("/c/rootfs"));
}

#[test]
fn programs_are_found_on_the_containers_path() {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::tempdir().unwrap();
    let (a, b) = (d.path().join("a"), d.path().join("b"));
    std::fs::create_dir_all(a.join("tool")).unwrap(); // a directory is no program
    std::fs::create_dir_all(&b).unwrap();
    std::fs::write(b.join("tool"), "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(b.join("tool"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let env = vec![
        "HOME=/".to_string(),
        format!("PATH={}:{}", a.display(), b.display()),
    ];
    assert_eq!(find_program("tool", &env), Some(b.join("tool")));
    assert_eq!(find_program("missing", &env), None);
    // With a slash: as given, found or not (exec says why).
    assert_eq!(
        find_program("./x/tool", &env),
        Some(PathBuf::from("./x/tool"))
    );
    // No PATH: the default one (sh is in /bin or /usr/bin on any build host).
    let sh = find_program("sh", &[]).expect("sh on the default PATH");
    assert!(sh.ends_with("bin/sh"), "{}", sh.display());
}

#[test]
fn the_spec_line_is_read_without_the_release_byte() {
    let (r, w) = nix::unistd::pipe().unwrap();
    let mut w = std::fs::File::from(w);
    w.write_all(b"/c/spec.json\ng").unwrap();
    assert_eq!(
        read_line_from(r.as_raw_fd()).as_deref(),
        Some("/c/spec.json")
    );
    // What follows the line is still in the pipe for the container process.
    let mut b = [0u8; 1];
    assert_eq!(nix::unistd::read(r.as_raw_fd(), &mut b).unwrap(), 1);
    assert_eq!(&b, b"g");
    // The engine closing its end first: no path.
    w.write_all(b"/half").unwrap();
    drop(w);
    assert_eq!(read_line_from(r.as_raw_fd()), None);
}

#[test]
fn a_waited_child_gives_its_code_or_128_plus_its_signal() {
    let run = |script: &str| {
        #[expect(clippy::zombie_processes, reason = "wait_for reaps it")]
        let c = std::process::Command::new("/bin/sh")
            .args(["-c", script])
            .spawn()
            .unwrap();
        // waitpid here reaps it; std's Child is not waited again (dropping it does not).
        wait_for(Pid::from_raw(c.id() as i32))
    };
    assert_eq!(run("exit 0"), 0);
    assert_eq!(run("exit 3"), 3);
    assert_eq!(run("kill -TERM $$"), 128 + 15);
    assert_eq!(run("kill -KILL $$"), 128 + 9);
    // Not our child: 255, not a hang.
    assert_eq!(wait_for(Pid::from_raw(1)), 255);
}

#[test]
fn a_refused_pivot_says_the_fallback_is_refused() {
    let (code, msg) = pivot_refused("pivot_root failed");
    assert_eq!(code, 125);
    assert_eq!(
        msg,
        "pivot_root failed; refusing the chroot fallback, which is escapable"
    );
    let (code, msg) = err("mount proc")(nix::errno::Errno::EPERM);
    assert_eq!(
        (code, msg.as_str()),
        (125, "mount proc: EPERM: Operation not permitted")
    );
}
