use super::*;

const ALLOW: u32 = libc::SECCOMP_RET_ALLOW;
const EPERM: u32 = libc::SECCOMP_RET_ERRNO | libc::EPERM as u32;
const ENOSYS: u32 = libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32;
const CLONE_NEWUSER: u64 = libc::CLONE_NEWUSER as u64;

/// Docker's default capabilities, as names.
fn default_caps() -> Vec<String> {
    crate::runtime::confine::DEFAULT_CAPS
        .iter()
        .map(|c| format!("CAP_{c}"))
        .collect()
}

fn program(json: &str, caps: &[String]) -> Vec<libc::sock_filter> {
    compile(
        json,
        &Target {
            caps,
            kernel: (6, 1),
        },
    )
    .unwrap()
    .expect("a filter")
}

/// A classic-BPF interpreter for what the compiler emits, run on a synthetic seccomp_data
/// (nr, arch, ip, args) laid out as the kernel does (little endian).
fn run(p: &[libc::sock_filter], arch: u32, nr: u32, args: [u64; 6]) -> u32 {
    let mut data = Vec::with_capacity(64);
    data.extend(nr.to_le_bytes());
    data.extend(arch.to_le_bytes());
    data.extend(0u64.to_le_bytes());
    for a in args {
        data.extend(a.to_le_bytes());
    }
    let (mut pc, mut a) = (0usize, 0u32);
    loop {
        let i = p
            .get(pc)
            .unwrap_or_else(|| panic!("ran off the program at {pc}"));
        pc += 1;
        match i.code {
            LD_W_ABS => {
                let o = i.k as usize;
                assert!(
                    o + 4 <= data.len() && o.is_multiple_of(4),
                    "bad load offset {o}"
                );
                a = u32::from_le_bytes(data[o..o + 4].try_into().unwrap());
            }
            AND_K => a &= i.k,
            JA => pc += i.k as usize,
            JEQ_K | JGT_K | JGE_K => {
                let t = match i.code {
                    JEQ_K => a == i.k,
                    JGT_K => a > i.k,
                    _ => a >= i.k,
                };
                pc += if t { i.jt } else { i.jf } as usize;
            }
            RET_K => return i.k,
            c => panic!("unexpected opcode {c:#x}"),
        }
    }
}

fn sys(name: &str) -> u32 {
    syscall_number(name).unwrap_or_else(|| panic!("{name} unknown"))
}

fn call(p: &[libc::sock_filter], name: &str, args: [u64; 6]) -> u32 {
    run(p, AUDIT_ARCH_X86_64, sys(name), args)
}

#[test]
fn names_and_versions() {
    assert_eq!(syscall_number("read"), Some(0));
    assert_eq!(syscall_number("_sysctl"), Some(156));
    assert_eq!(syscall_number("clone3"), Some(435));
    assert_eq!(syscall_number("mseal"), Some(462));
    assert_eq!(
        syscall_number("chown32"),
        None,
        "i386-only names are not x86_64 syscalls"
    );
    assert!(
        x86_64::SYSCALLS.windows(2).all(|w| w[0].0 < w[1].0),
        "table sorted for binary search"
    );
    assert_eq!(parse_version("6.1.0-18-amd64"), Some((6, 1)));
    assert_eq!(parse_version("4.8"), Some((4, 8)));
    assert_eq!(parse_version("5"), Some((5, 0)));
    assert_eq!(parse_version("x"), None);
    assert!(
        kernel_version() >= (3, 17),
        "the host kernel has seccomp filters"
    );
}

#[test]
fn default_profile_allow_list() {
    let p = program(DEFAULT_PROFILE, &default_caps());
    for name in [
        "read",
        "write",
        "openat",
        "execve",
        "exit_group",
        "mkdir",
        "chroot",
        "socket",
        "arch_prctl",
        "wait4",
        "rseq",
    ] {
        assert_eq!(
            call(&p, name, [libc::AF_INET as u64, 0, 0, 0, 0, 0]),
            ALLOW,
            "{name}"
        );
    }
    // clone for threads and fork, but not with namespace flags.
    let thread = (libc::CLONE_VM
        | libc::CLONE_FS
        | libc::CLONE_FILES
        | libc::CLONE_SIGHAND
        | libc::CLONE_THREAD) as u64;
    assert_eq!(call(&p, "clone", [thread, 0, 0, 0, 0, 0]), ALLOW);
    assert_eq!(
        call(&p, "clone", [libc::SIGCHLD as u64, 0, 0, 0, 0, 0]),
        ALLOW
    );
    assert_eq!(
        call(
            &p,
            "clone",
            [CLONE_NEWUSER | libc::SIGCHLD as u64, 0, 0, 0, 0, 0]
        ),
        EPERM
    );
    assert_eq!(
        call(&p, "clone", [libc::CLONE_NEWNS as u64, 0, 0, 0, 0, 0]),
        EPERM
    );
    assert_eq!(
        call(&p, "clone3", [0; 6]),
        ENOSYS,
        "clone3 answers ENOSYS so libc falls back to clone"
    );
    for name in [
        "unshare",
        "mount",
        "umount2",
        "setns",
        "keyctl",
        "add_key",
        "kexec_load",
        "init_module",
        "bpf",
        "kcmp",
        "reboot",
        "settimeofday",
        "swapon",
        "pivot_root",
        "open_by_handle_at",
        "acct",
        "iopl",
    ] {
        assert_eq!(call(&p, name, [0; 6]), EPERM, "{name}");
    }
    // personality: only the values Docker lets through (64-bit comparison).
    for v in [0u64, 8, 0x20000, 0x20008, 0xffff_ffff] {
        assert_eq!(
            call(&p, "personality", [v, 0, 0, 0, 0, 0]),
            ALLOW,
            "personality({v:#x})"
        );
    }
    for v in [0xdeadu64, 0x0040008, 0x1_0000_0000] {
        assert_eq!(
            call(&p, "personality", [v, 0, 0, 0, 0, 0]),
            EPERM,
            "personality({v:#x})"
        );
    }
    // socket: AF_VSOCK (40) and 38 are refused, the rest allowed.
    assert_eq!(call(&p, "socket", [40, 1, 0, 0, 0, 0]), EPERM);
    assert_eq!(call(&p, "socket", [38, 1, 0, 0, 0, 0]), EPERM);
    assert_eq!(call(&p, "socket", [39, 1, 0, 0, 0, 0]), ALLOW);
    assert_eq!(call(&p, "socket", [41, 1, 0, 0, 0, 0]), ALLOW);
    assert_eq!(
        call(&p, "socket", [libc::AF_UNIX as u64, 1, 0, 0, 0, 0]),
        ALLOW
    );
    // x32 system calls and other architectures.
    assert_eq!(
        run(&p, AUDIT_ARCH_X86_64, X32_SYSCALL_BIT | sys("read"), [0; 6]),
        EPERM,
        "x32 read"
    );
    assert_eq!(
        run(
            &p,
            AUDIT_ARCH_X86_64,
            X32_SYSCALL_BIT | sys("mkdir"),
            [0; 6]
        ),
        EPERM,
        "x32 mkdir"
    );
    assert_eq!(
        run(&p, 0x4000_0003, 3, [0; 6]),
        libc::SECCOMP_RET_KILL_PROCESS,
        "i386 ABI"
    );
    // Unknown to the profile and newer than anything it names: ENOSYS; a gap below: EPERM.
    assert_eq!(run(&p, AUDIT_ARCH_X86_64, 1000, [0; 6]), ENOSYS);
    assert_eq!(call(&p, "fsopen", [0; 6]), EPERM);
    // process_vm_readv and ptrace are allowed from kernel 4.8 on (minKernel).
    assert_eq!(call(&p, "process_vm_readv", [0; 6]), ALLOW);
    assert_eq!(call(&p, "ptrace", [0; 6]), ALLOW);
    let old = compile(
        DEFAULT_PROFILE,
        &Target {
            caps: &default_caps(),
            kernel: (4, 4),
        },
    )
    .unwrap()
    .unwrap();
    assert_eq!(
        call(&old, "process_vm_readv", [0; 6]),
        EPERM,
        "minKernel 4.8 not met on 4.4"
    );
}

#[test]
fn capabilities_unlock_syscalls() {
    let mut caps = default_caps();
    caps.push("CAP_SYS_ADMIN".into());
    let p = program(DEFAULT_PROFILE, &caps);
    for name in [
        "mount",
        "umount2",
        "unshare",
        "setns",
        "sethostname",
        "clone3",
    ] {
        assert_eq!(call(&p, name, [0; 6]), ALLOW, "{name} with CAP_SYS_ADMIN");
    }
    assert_eq!(call(&p, "clone", [CLONE_NEWUSER, 0, 0, 0, 0, 0]), ALLOW);
    assert_eq!(
        call(&p, "reboot", [0; 6]),
        EPERM,
        "still needs CAP_SYS_BOOT"
    );
    let mut caps = default_caps();
    caps.extend(
        [
            "CAP_SYS_PTRACE",
            "CAP_SYS_TIME",
            "CAP_SYS_BOOT",
            "CAP_SYS_MODULE",
        ]
        .map(String::from),
    );
    let p = program(DEFAULT_PROFILE, &caps);
    for name in [
        "kcmp",
        "pidfd_getfd",
        "settimeofday",
        "clock_settime",
        "reboot",
        "init_module",
        "finit_module",
    ] {
        assert_eq!(call(&p, name, [0; 6]), ALLOW, "{name}");
    }
    assert_eq!(call(&p, "mount", [0; 6]), EPERM);
    // Dropping CAP_SYS_CHROOT takes chroot away.
    let caps: Vec<String> = default_caps()
        .into_iter()
        .filter(|c| c != "CAP_SYS_CHROOT")
        .collect();
    assert_eq!(
        call(&program(DEFAULT_PROFILE, &caps), "chroot", [0; 6]),
        EPERM
    );
}

#[test]
fn comparison_operators_on_64_bits() {
    let json = r#"{"defaultAction":"SCMP_ACT_ERRNO","defaultErrnoRet":13,"syscalls":[
        {"names":["read"],"action":"SCMP_ACT_ALLOW",
            "args":[{"index":2,"value":4294967296,"op":"SCMP_CMP_LT"}]},
        {"names":["write"],"action":"SCMP_ACT_ALLOW",
            "args":[{"index":0,"value":4294967296,"op":"SCMP_CMP_GE"},
                {"index":1,"value":7,"op":"SCMP_CMP_LE"}]},
        {"names":["close"],"action":"SCMP_ACT_ERRNO","errnoRet":9,
            "args":[{"index":0,"value":4294967301,"op":"SCMP_CMP_GT"}]},
        {"names":["close"],"action":"SCMP_ACT_ALLOW"},
        {"names":["dup"],"action":"SCMP_ACT_ALLOW",
            "args":[{"index":0,"value":3,"op":"SCMP_CMP_EQ"},
                {"index":0,"value":5,"op":"SCMP_CMP_EQ"}]},
        {"names":["kill"],"action":"SCMP_ACT_ALLOW",
            "args":[{"index":5,"value":18446744069414584320,
                "valueTwo":4294967296,"op":"SCMP_CMP_MASKED_EQ"}]},
        {"names":["getpid"],"action":"SCMP_ACT_ALLOW",
            "args":[{"index":0,"value":5,"op":"SCMP_CMP_NE"}]},
        {"names":["no_such_syscall","sync_file_range2"],"action":"SCMP_ACT_ALLOW"}
    ]}"#;
    let p = program(json, &[]);
    let e13 = libc::SECCOMP_RET_ERRNO | 13;
    let r = |n: &str, a: [u64; 6]| call(&p, n, a);
    assert_eq!(r("read", [0, 0, 0xffff_ffff, 0, 0, 0]), ALLOW);
    assert_eq!(r("read", [0, 0, 1 << 32, 0, 0, 0]), e13);
    assert_eq!(r("read", [0, 0, (1 << 33) + 1, 0, 0, 0]), e13);
    assert_eq!(r("write", [1 << 32, 7, 0, 0, 0, 0]), ALLOW);
    assert_eq!(r("write", [(2 << 32) + 3, 0, 0, 0, 0, 0]), ALLOW);
    assert_eq!(
        r("write", [0xffff_ffff, 7, 0, 0, 0, 0]),
        e13,
        "GE on the high word"
    );
    assert_eq!(
        r("write", [1 << 32, 8, 0, 0, 0, 0]),
        e13,
        "both conditions must hold"
    );
    assert_eq!(
        r("write", [1 << 32, (1 << 32) + 1, 0, 0, 0, 0]),
        e13,
        "LE on the high word"
    );
    assert_eq!(
        r("close", [(1 << 32) + 6, 0, 0, 0, 0, 0]),
        libc::SECCOMP_RET_ERRNO | 9
    );
    assert_eq!(
        r("close", [(1 << 32) + 5, 0, 0, 0, 0, 0]),
        ALLOW,
        "the unconditional rule after the conditional one"
    );
    assert_eq!(
        r("close", [2 << 32, 0, 0, 0, 0, 0]),
        libc::SECCOMP_RET_ERRNO | 9
    );
    // Two conditions on one argument: ORed, as runc does.
    assert_eq!(r("dup", [3, 0, 0, 0, 0, 0]), ALLOW);
    assert_eq!(r("dup", [5, 0, 0, 0, 0, 0]), ALLOW);
    assert_eq!(r("dup", [4, 0, 0, 0, 0, 0]), e13);
    assert_eq!(r("kill", [0, 0, 0, 0, 0, (1 << 32) + 77]), ALLOW);
    assert_eq!(r("kill", [0, 0, 0, 0, 0, 3 << 32]), e13);
    assert_eq!(r("getpid", [4, 0, 0, 0, 0, 0]), ALLOW);
    assert_eq!(
        r("getpid", [(1 << 32) + 5, 0, 0, 0, 0, 0]),
        ALLOW,
        "NE on the high word"
    );
    assert_eq!(r("getpid", [5, 0, 0, 0, 0, 0]), e13);
    assert_eq!(r("open", [0; 6]), e13, "defaultErrnoRet");
    assert_eq!(
        r("mkdir", [0; 6]),
        ENOSYS,
        "numbered above every syscall the profile names"
    );
}

#[test]
fn deny_list_profiles_and_errors() {
    let p = program(
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir","mkdirat"],
            "action":"SCMP_ACT_ERRNO"}]}"#,
        &[],
    );
    assert_eq!(call(&p, "mkdir", [0; 6]), EPERM);
    assert_eq!(call(&p, "mkdirat", [0; 6]), EPERM);
    assert_eq!(call(&p, "rmdir", [0; 6]), ALLOW);
    assert_eq!(
        run(&p, AUDIT_ARCH_X86_64, 1000, [0; 6]),
        ALLOW,
        "no ENOSYS stub when the default allows"
    );
    assert_eq!(
        run(&p, AUDIT_ARCH_X86_64, X32_SYSCALL_BIT | 83, [0; 6]),
        EPERM,
        "x32 cannot bypass a deny-list"
    );
    let t = Target {
        caps: &[],
        kernel: (6, 1),
    };
    assert_eq!(
        compile("{}", &t).unwrap().map(|p| p.len()),
        None,
        "an empty profile is unconfined, as in Docker"
    );
    let err = |json: &str| compile(json, &t).unwrap_err();
    assert!(
        err("{nope").contains("decoding seccomp profile failed"),
        "{}",
        err("{nope")
    );
    assert!(
        err(r#"{"defaultAction":"SCMP_ACT_BOGUS"}"#).contains("unknown action \"SCMP_ACT_BOGUS\"")
    );
    let e = err(
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["read"],
            "action":"SCMP_ACT_NOTIFY"}]}"#,
    );
    assert!(
        e.contains("syscalls[0] (read)") && e.contains("SCMP_ACT_NOTIFY"),
        "{e}"
    );
    let e = err(
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["read"],
            "action":"SCMP_ACT_ERRNO","args":[{"index":1,"value":1,"op":"SCMP_CMP_XX"}]}]}"#,
    );
    assert!(
        e.contains("unknown argument operator \"SCMP_CMP_XX\""),
        "{e}"
    );
    let e = err(
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["read"],
            "action":"SCMP_ACT_ERRNO","args":[{"index":6,"value":1,"op":"SCMP_CMP_EQ"}]}]}"#,
    );
    assert!(e.contains("argument index 6"), "{e}");
    assert!(
        err(r#"{"syscalls":[{"names":["read"],"action":"SCMP_ACT_ALLOW"}]}"#)
            .contains("defaultAction is missing")
    );
    assert!(
        err(r#"{"defaultAction":"SCMP_ACT_ERRNO","defaultErrnoRet":70000}"#)
            .contains("out of range")
    );
}

#[test]
fn pack_round_trip() {
    let p = program(DEFAULT_PROFILE, &default_caps());
    let q = unpack(&pack(&p));
    assert_eq!(p.len(), q.len());
    assert!(p
        .iter()
        .zip(&q)
        .all(|(a, b)| (a.code, a.jt, a.jf, a.k) == (b.code, b.jt, b.jf, b.k)));
    assert!(p.len() < 1000, "{} instructions", p.len());
}

/// Installs the default filter in a forked child and checks real syscalls' errno there.
#[test]
fn installed_in_a_child_process() {
    let p = program(DEFAULT_PROFILE, &default_caps());
    let dir = tempfile::tempdir().unwrap();
    let made =
        std::ffi::CString::new(dir.path().join("made").as_os_str().as_encoded_bytes()).unwrap();
    // Everything the child needs is prepared before fork: it only makes raw syscalls.
    // SAFETY: the child calls only async-signal-safe functions (prctl, syscall, _exit).
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        // SAFETY: the forked child makes raw syscalls on buffers prepared before the fork and
        // reads errno right after each; nothing here allocates or takes a lock.
        let code = unsafe {
            // (return value, errno) right after the call.
            let r = |ret: libc::c_long| (ret, *libc::__errno_location());
            let ok = |(ret, _): (libc::c_long, i32)| ret >= 0;
            let fails = |(ret, e): (libc::c_long, i32), want: i32| ret == -1 && e == want;
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 || install(&p).is_err() {
                libc::_exit(10);
            }
            if !ok(r(libc::syscall(libc::SYS_getpid))) {
                libc::_exit(20);
            }
            if !ok(r(libc::syscall(libc::SYS_mkdir, made.as_ptr(), 0o755))) {
                libc::_exit(21);
            }
            if !fails(
                r(libc::syscall(libc::SYS_unshare, libc::CLONE_NEWUSER)),
                libc::EPERM,
            ) {
                libc::_exit(22);
            }
            if !fails(
                r(libc::syscall(libc::SYS_keyctl, 0, 0, 0, 0, 0)),
                libc::EPERM,
            ) {
                libc::_exit(23);
            }
            if !fails(r(libc::syscall(libc::SYS_personality, 0xdead)), libc::EPERM) {
                libc::_exit(24);
            }
            if !fails(r(libc::syscall(libc::SYS_clone3, 0, 0)), libc::ENOSYS) {
                libc::_exit(25);
            }
            if !fails(
                r(libc::syscall(
                    libc::SYS_mount,
                    c"none".as_ptr(),
                    c"/mnt".as_ptr(),
                    c"tmpfs".as_ptr(),
                    0,
                    0,
                )),
                libc::EPERM,
            ) {
                libc::_exit(26);
            }
            if !fails(
                r(libc::syscall(libc::SYS_kexec_load, 0, 0, 0, 0)),
                libc::EPERM,
            ) {
                libc::_exit(27);
            }
            0
        };
        // SAFETY: _exit ends the forked child without running the parent's destructors.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(libc::WIFEXITED(status), "child died: status {status:#x}");
    let code = libc::WEXITSTATUS(status);
    assert_eq!(
        code, 0,
        "child exit {code}: 10 = install failed, 2N = check N in the child gave the wrong result"
    );
    assert!(
        dir.path().join("made").is_dir(),
        "mkdir under the filter worked"
    );
}
