//! End-to-end tests of axion's PID 1 (packages/init): direct kernel boot under QEMU TCG with
//! a test initramfs (our init, a static busybox, test services) and a virtio disk holding a
//! GPT partition labelled `axion-data`.
//!
//! What they assert: the ready line; `/` is a tmpfs copy of the initramfs (not rootfs) and
//! init re-executed itself from it; a crashing service is restarted with backoff; an
//! orphaned child that exits is reaped; DHCP on QEMU's user network gives 10.0.2.15 and DNS
//! 10.0.2.3; a static address from the kernel command line; the power button (QMP
//! `system_powerdown`) stops services, unmounts cleanly (e2fsck -fn is happy) and powers off,
//! and a file written before it is there on the next boot; busybox `reboot` (SIGTERM) works;
//! without the data partition the system still boots and says so.
//!
//! Needs: the kernel built by `cargo xtask build linux` (found in
//! `$AXION_CACHE/packages/linux-*/tree/boot/vmlinuz`, or set `AXION_TEST_KERNEL`), a static
//! busybox (`$AXION_CACHE/packages/busybox-*/tree/bin/busybox`, else the host's
//! `/bin/busybox` from busybox-static), qemu-system-x86_64, mkfs.ext4 and e2fsck. Missing
//! pieces make the tests skip, loudly and counted (`axion_tests::skip`).
//!
//! For experiments with a distribution kernel whose drivers are modules, set
//! `AXION_TEST_MODULES` to a colon-separated list of `.ko` files: they are put in the
//! initramfs and loaded by a tiny `/sbin/preinit` that then execs init as PID 1.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// QEMU boots are serialised: the machine has 2 cores and TCG is CPU-bound.
static QEMU_LOCK: Mutex<()> = Mutex::new(());

const TIMEOUT: Duration = Duration::from_secs(120);

// ---- locating inputs -------------------------------------------------------------------

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

fn cache_dir() -> PathBuf {
    if let Ok(c) = std::env::var("AXION_CACHE") {
        return PathBuf::from(c);
    }
    PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into())).join(".cache/axion")
}

/// The newest `$AXION_CACHE/packages/<prefix>*/tree/<rel>`.
fn newest_staged(prefix: &str, rel: &str) -> Option<PathBuf> {
    let dir = cache_dir().join("packages");
    let mut found: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .map(|e| e.path().join("tree").join(rel))
        .filter_map(|p| Some((p.metadata().ok()?.modified().ok()?, p)))
        .collect();
    found.sort();
    found.pop().map(|(_, p)| p)
}

fn kernel() -> Result<PathBuf, String> {
    if let Ok(k) = std::env::var("AXION_TEST_KERNEL") {
        return Ok(PathBuf::from(k));
    }
    newest_staged("linux-", "boot/vmlinuz").ok_or_else(|| {
        format!(
            "no kernel in {}/packages/linux-*/tree/boot/vmlinuz (run `cargo xtask build linux`)",
            cache_dir().display()
        )
    })
}

fn busybox() -> Result<PathBuf, String> {
    if let Some(b) = newest_staged("busybox-", "bin/busybox") {
        return Ok(b);
    }
    let host = PathBuf::from("/bin/busybox");
    if host.exists() {
        return Ok(host);
    }
    Err("no static busybox (cargo xtask build busybox, or apt-get install busybox-static)".into())
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args([
            "-c",
            &format!(
                "command -v {tool} >/dev/null || test -x /usr/sbin/{tool} || test -x /sbin/{tool}"
            ),
        ])
        .status()
        .is_ok_and(|s| s.success())
}

fn build_init() -> PathBuf {
    let root = workspace_root();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let st = Command::new(cargo)
        .current_dir(&root)
        .args([
            "build",
            "--release",
            "--target",
            "x86_64-unknown-linux-musl",
            "-p",
            "init",
        ])
        .status()
        .expect("run cargo build for init");
    assert!(st.success(), "cargo build -p init failed");
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("target"));
    target.join("x86_64-unknown-linux-musl/release/init")
}

/// Everything needed to boot, or the reason to skip.
struct Inputs {
    kernel: PathBuf,
    busybox: PathBuf,
    init: PathBuf,
}

fn inputs() -> Option<Inputs> {
    let check = || -> Result<(PathBuf, PathBuf), String> {
        let k = kernel()?;
        let b = busybox()?;
        for t in ["qemu-system-x86_64", "mkfs.ext4", "e2fsck"] {
            if !have(t) {
                return Err(format!("{t} is not installed"));
            }
        }
        Ok((k, b))
    };
    match check() {
        Ok((kernel, busybox)) => Some(Inputs {
            kernel,
            busybox,
            init: build_init(),
        }),
        Err(why) => {
            axion_tests::skip(why);
            None
        }
    }
}

fn workdir(name: &str) -> PathBuf {
    let d = workspace_root().join("target/e2e-init").join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("create test work dir");
    d
}

// ---- newc cpio -------------------------------------------------------------------------

struct Cpio {
    out: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn new() -> Cpio {
        Cpio {
            out: Vec::new(),
            ino: 1,
        }
    }

    fn entry(&mut self, name: &str, mode: u32, data: &[u8], rdev: (u32, u32)) {
        let name = name.trim_start_matches('/');
        let fields = [
            self.ino,
            mode,
            0,
            0,
            1,
            0,
            data.len() as u32,
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0,
        ];
        self.ino += 1;
        self.out.extend_from_slice(b"070701");
        for f in fields {
            self.out.extend_from_slice(format!("{f:08X}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
        self.out.extend_from_slice(data);
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }

    fn dir(&mut self, name: &str) {
        self.entry(name, 0o040755, b"", (0, 0));
    }
    fn file(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.entry(name, 0o100000 | mode, data, (0, 0));
    }
    fn symlink(&mut self, name: &str, to: &str) {
        self.entry(name, 0o120777, to.as_bytes(), (0, 0));
    }
    fn chardev(&mut self, name: &str, major: u32, minor: u32) {
        self.entry(name, 0o020600, b"", (major, minor));
    }
    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, b"", (0, 0));
        self.out
    }
}

// ---- GPT disk with one partition -------------------------------------------------------

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Writes a raw disk of `total_mib` with a GPT whose single partition (LBA 2048 to the end)
/// is named `label` and holds `fs` (an ext4 image).
fn gpt_disk(path: &Path, total_mib: u64, label: &str, fs: &[u8]) {
    const SECTOR: u64 = 512;
    let sectors = total_mib * 1024 * 1024 / SECTOR;
    let first = 2048u64;
    let last = sectors - 34;
    assert!(
        fs.len() as u64 <= (last - first + 1) * SECTOR,
        "filesystem larger than the partition"
    );
    let mut disk = vec![0u8; (sectors * SECTOR) as usize];
    // Protective MBR.
    disk[446 + 4] = 0xee;
    disk[446 + 8..446 + 12].copy_from_slice(&1u32.to_le_bytes());
    disk[446 + 12..446 + 16]
        .copy_from_slice(&((sectors - 1).min(u32::MAX as u64) as u32).to_le_bytes());
    disk[446 + 1..446 + 4].copy_from_slice(&[0, 2, 0]);
    disk[446 + 5..446 + 8].copy_from_slice(&[0xff, 0xff, 0xff]);
    disk[510] = 0x55;
    disk[511] = 0xaa;
    // One entry: Linux filesystem data type GUID 0FC63DAF-8483-4772-8E79-3D69D8477DE4.
    let mut entries = vec![0u8; 128 * 128];
    entries[0..16].copy_from_slice(&[
        0xaf, 0x3d, 0xc6, 0x0f, 0x83, 0x84, 0x72, 0x47, 0x8e, 0x79, 0x3d, 0x69, 0xd8, 0x47, 0x7d,
        0xe4,
    ]);
    entries[16..32].copy_from_slice(&[0x11; 16]);
    entries[32..40].copy_from_slice(&first.to_le_bytes());
    entries[40..48].copy_from_slice(&last.to_le_bytes());
    for (i, u) in label.encode_utf16().enumerate() {
        entries[56 + 2 * i..58 + 2 * i].copy_from_slice(&u.to_le_bytes());
    }
    let entries_crc = crc32(&entries);
    let header = |current: u64, backup: u64, entries_lba: u64| {
        let mut h = vec![0u8; 92];
        h[0..8].copy_from_slice(b"EFI PART");
        h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        h[12..16].copy_from_slice(&92u32.to_le_bytes());
        h[24..32].copy_from_slice(&current.to_le_bytes());
        h[32..40].copy_from_slice(&backup.to_le_bytes());
        h[40..48].copy_from_slice(&34u64.to_le_bytes());
        h[48..56].copy_from_slice(&last.to_le_bytes());
        h[56..72].copy_from_slice(&[0x22; 16]);
        h[72..80].copy_from_slice(&entries_lba.to_le_bytes());
        h[80..84].copy_from_slice(&128u32.to_le_bytes());
        h[84..88].copy_from_slice(&128u32.to_le_bytes());
        h[88..92].copy_from_slice(&entries_crc.to_le_bytes());
        let c = crc32(&h);
        h[16..20].copy_from_slice(&c.to_le_bytes());
        h
    };
    let at = |lba: u64| (lba * SECTOR) as usize;
    let primary = header(1, sectors - 1, 2);
    disk[at(1)..at(1) + 92].copy_from_slice(&primary);
    disk[at(2)..at(2) + entries.len()].copy_from_slice(&entries);
    let backup = header(sectors - 1, 1, sectors - 33);
    disk[at(sectors - 33)..at(sectors - 33) + entries.len()].copy_from_slice(&entries);
    disk[at(sectors - 1)..at(sectors - 1) + 92].copy_from_slice(&backup);
    disk[at(first)..at(first) + fs.len()].copy_from_slice(fs);
    std::fs::write(path, disk).expect("write disk image");
}

const DATA_FIRST_BYTE: u64 = 2048 * 512;

/// A disk with an empty ext4 `axion-data` partition.
fn data_disk(dir: &Path) -> PathBuf {
    let fs_img = dir.join("data.ext4");
    let st = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "axion-data"])
        .arg(&fs_img)
        .arg("30M")
        .status()
        .expect("run mkfs.ext4");
    assert!(st.success(), "mkfs.ext4 failed");
    let fs = std::fs::read(&fs_img).expect("read ext4 image");
    let disk = dir.join("disk.raw");
    gpt_disk(&disk, 32, "axion-data", &fs);
    disk
}

/// Runs `e2fsck -fn` on the data partition of `disk`; returns (success, output).
fn fsck_data(disk: &Path, dir: &Path) -> (bool, String) {
    let bytes = std::fs::read(disk).expect("read disk");
    let part = dir.join("data-after.ext4");
    std::fs::write(
        &part,
        &bytes[DATA_FIRST_BYTE as usize..(bytes.len() - 34 * 512)],
    )
    .expect("write partition copy");
    let out = Command::new("e2fsck")
        .arg("-fn")
        .arg(&part)
        .output()
        .expect("run e2fsck");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

// ---- the test initramfs ----------------------------------------------------------------

/// Shell snippets run as services (each a file in /etc/axion/services).
fn service(name: &str, script: &str, extra: &str) -> (String, String) {
    let script = script.replace('\\', "\\\\").replace('"', "\\\"");
    (
        name.to_string(),
        format!("command = \"/bin/sh\"\nargs = [\"-c\", \"{script}\"]\n{extra}\n"),
    )
}

fn initramfs(inp: &Inputs, dir: &Path, services: &[(String, String)]) -> PathBuf {
    let mut c = Cpio::new();
    for d in [
        "bin",
        "sbin",
        "dev",
        "proc",
        "sys",
        "run",
        "tmp",
        "var",
        "var/lib",
        "var/log",
        "etc",
        "etc/axion",
        "etc/axion/services",
        "root",
        "lib",
        "lib/modules",
    ] {
        c.dir(d);
    }
    c.chardev("dev/console", 5, 1);
    c.chardev("dev/null", 1, 3);
    c.file(
        "sbin/init",
        0o755,
        &std::fs::read(&inp.init).expect("read init binary"),
    );
    c.file(
        "bin/busybox",
        0o755,
        &std::fs::read(&inp.busybox).expect("read busybox"),
    );
    for applet in [
        "sh", "cat", "echo", "sleep", "ip", "grep", "ls", "mkdir", "sync", "test", "cut", "ps",
        "poweroff", "reboot", "halt", "insmod", "wc", "dmesg", "mount", "touch", "readlink", "seq",
        "kill", "basename",
    ] {
        c.symlink(&format!("bin/{applet}"), "busybox");
    }
    c.file("etc/hostname", 0o644, b"axion-test\n");
    c.symlink("etc/resolv.conf", "../run/resolv.conf");
    for (name, text) in services {
        c.file(
            &format!("etc/axion/services/{name}.toml"),
            0o644,
            text.as_bytes(),
        );
    }
    if let Ok(mods) = std::env::var("AXION_TEST_MODULES") {
        let mut script = String::from("#!/bin/sh\n");
        for m in mods.split(':').filter(|m| !m.is_empty()) {
            let base = Path::new(m)
                .file_name()
                .expect("module file name")
                .to_string_lossy()
                .into_owned();
            c.file(
                &format!("lib/modules/{base}"),
                0o644,
                &std::fs::read(m).expect("read module"),
            );
            script.push_str(&format!("insmod /lib/modules/{base}\n"));
        }
        script.push_str("exec /sbin/init\n");
        c.file("sbin/preinit", 0o755, script.as_bytes());
    }
    let path = dir.join("initramfs.cpio");
    std::fs::write(&path, c.finish()).expect("write initramfs");
    path
}

// ---- QEMU (through the shared `qemu` crate) ---------------------------------------------

/// One boot: the VM, and its serial console log (read whole for the assertions).
struct Boot {
    vm: qemu::Vm,
    log: PathBuf,
}

fn boot(
    inp: &Inputs,
    dir: &Path,
    tag: &str,
    initrd: &Path,
    disk: Option<&Path>,
    append: &str,
) -> Boot {
    boot_on(
        inp,
        dir,
        tag,
        initrd,
        disk,
        append,
        qemu::NicModel::VirtioNet,
        qemu::DiskInterface::Virtio,
    )
}

#[allow(clippy::too_many_arguments)]
fn boot_on(
    inp: &Inputs,
    dir: &Path,
    tag: &str,
    initrd: &Path,
    disk: Option<&Path>,
    append: &str,
    nic: qemu::NicModel,
    disk_if: qemu::DiskInterface,
) -> Boot {
    let rdinit = if std::env::var("AXION_TEST_MODULES").is_ok() {
        "/sbin/preinit"
    } else {
        "/sbin/init"
    };
    let log = dir.join(format!("serial-{tag}.log"));
    // The KVM probe takes seconds when KVM does not work: ask once per test run.
    static ACCEL: std::sync::OnceLock<(qemu::Accel, String)> = std::sync::OnceLock::new();
    let (accel, why) = ACCEL.get_or_init(|| {
        let a = axion_tests::accel();
        eprintln!("accelerator: {}", a.1);
        a
    });
    let _ = why;
    let accel = *accel;
    let mut cfg = qemu::VmConfig::new()
        .machine(qemu::Machine::Pc)
        .accel(accel)
        .memory_mib(256)
        .kernel(
            &inp.kernel,
            Some(initrd.to_path_buf()),
            format!("console=ttyS0 panic=-1 rdinit={rdinit} {append}"),
        )
        .user_net(nic, Vec::new())
        .serial_file(&log)
        .run_dir(dir.join(format!("vm-{tag}")))
        .no_reboot(true);
    if let Some(d) = disk {
        cfg = cfg.drive(qemu::Drive::disk(d, qemu::DiskFormat::Raw).interface(disk_if));
    }
    let vm = qemu::Vm::spawn(cfg).unwrap_or_else(|e| panic!("start QEMU: {e}"));
    Boot { vm, log }
}

impl Boot {
    fn text(&self) -> String {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .replace('\r', "")
    }

    /// Waits until `pred(serial console so far)` holds; panics with the console's end if
    /// QEMU exits first or TIMEOUT passes.
    fn wait(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let t = self.text();
            if pred(&t) {
                return t;
            }
            let tail: Vec<&str> = t
                .lines()
                .rev()
                .take(40)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            if let Some(st) = self.vm.try_exit_status() {
                std::thread::sleep(Duration::from_millis(100));
                let t = self.text();
                if pred(&t) {
                    return t;
                }
                panic!(
                    "QEMU exited ({st}) before: {what}\n--- serial console ---\n{}",
                    tail.join("\n")
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out after {TIMEOUT:?} waiting for: {what}\n--- serial console ---\n{}",
                    tail.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn wait_line(&mut self, needle: &str) -> String {
        let n = needle.to_string();
        self.wait(needle, move |s| s.contains(&n))
    }

    /// Waits for the ready line; checks its form; returns init's seconds.
    fn ready(&mut self) -> f64 {
        let r = self
            .vm
            .wait_ready(TIMEOUT)
            .unwrap_or_else(|e| panic!("no ready line: {e}"));
        eprintln!(
            "{} ({:.1} s after QEMU started)",
            r.line,
            r.host.as_secs_f64()
        );
        assert_ready_line(&self.text())
    }
}

fn ready_lines(s: &str) -> Vec<String> {
    s.lines()
        .filter(|l| l.contains("axion: ready in"))
        .map(str::to_string)
        .collect()
}

/// Asserts exactly one ready line of the documented form and returns its seconds.
fn assert_ready_line(s: &str) -> f64 {
    let lines = ready_lines(s);
    assert_eq!(
        lines.len(),
        1,
        "expected exactly one ready line, got {lines:?}"
    );
    let l = lines[0].trim();
    let rest = l
        .strip_prefix("axion: ready in ")
        .unwrap_or_else(|| panic!("ready line does not start the line: {l:?}"));
    let num = rest
        .strip_suffix(" s")
        .unwrap_or_else(|| panic!("ready line does not end with ' s': {l:?}"));
    let (int, frac) = num
        .split_once('.')
        .unwrap_or_else(|| panic!("no decimals in {l:?}"));
    assert!(
        !int.is_empty() && int.bytes().all(|b| b.is_ascii_digit()),
        "{l:?}"
    );
    assert!(
        frac.len() == 3 && frac.bytes().all(|b| b.is_ascii_digit()),
        "{l:?}"
    );
    num.parse().expect("ready seconds")
}

// ---- the tests -------------------------------------------------------------------------

fn test_services(token: &str) -> Vec<(String, String)> {
    vec![
        // Exits at once, forever: must be restarted with backoff.
        service("crasher", "echo crasher-run; exit 3", ""),
        // Orphans a child (reparented to init) that exits a second later; then checks that
        // it is gone from /proc (a zombie stays there in state Z until init reaps it).
        service(
            "orphan",
            "sh -c 'sleep 1 & echo orphan-pid $!' > /tmp/orphan; cat /tmp/orphan; read x pid < \
             /tmp/orphan; \
             sleep 3; if test -e /proc/$pid; then echo zombie-check: pid $pid still there: $(cut \
             -d' ' -f3 /proc/$pid/stat); \
             else echo zombie-check: pid $pid reaped; fi; echo zombies-total: $(cat \
             /proc/[0-9]*/stat 2>/dev/null | grep -c ') Z ')",
            "restart = \"never\"",
        ),
        // Reports the address and DNS once the network is up.
        service(
            "netcheck",
            "ip -4 addr show | grep inet; cat /etc/resolv.conf; hostname 2>/dev/null || cat \
             /proc/sys/kernel/hostname",
            "after = [\"network\"]\nrestart = \"never\"",
        ),
        // The rest of the system as services see it: mounts, cgroups, IPv6, environment,
        // the RNG seed.
        service(
            "syscheck",
            "for m in /proc /sys /dev /dev/pts /dev/shm /run /tmp /sys/fs/cgroup /var/lib \
             /var/log; do \
             grep -q \" $m \" /proc/mounts || echo missing-mount $m; done; \
             echo controllers: $(cat /sys/fs/cgroup/cgroup.subtree_control); echo cgroup: $(cat \
             /proc/self/cgroup); \
             echo greeting: $GREETING; echo seed-bytes: $(wc -c < /var/lib/axion/random-seed); \
             for i in $(seq 50); do ip -6 addr show dev eth0 | grep -q 'inet6 fe80::' && break; \
             sleep 0.1; done; \
             ip -6 addr show dev eth0 | grep inet6; \
             echo root-mount: $(grep ' / / ' /proc/self/mountinfo); \
             echo init-exe: $(readlink /proc/1/exe); echo shmem: $(grep Shmem: /proc/meminfo); \
             echo syscheck-done",
            "after = [\"network\"]\nrestart = \"never\"\nenvironment = \
             { GREETING = \"hello from TOML\" }",
        ),
        // Writes a marker on the data partition on the first boot, reports it on later ones.
        service(
            "persist",
            &format!(
                "if test -f /var/lib/test/marker; then echo persist-found: $(cat \
                 /var/lib/test/marker); \
                 else mkdir -p /var/lib/test && echo {token} > /var/lib/test/marker && echo \
                 persist-wrote; fi; \
                 mount | grep /var/lib; echo crasher-log-lines: $(grep -c crasher-run \
                 /var/log/crasher.log)"
            ),
            "restart = \"never\"",
        ),
        // A long-running service that says goodbye on SIGTERM.
        service(
            "sleeper",
            "trap 'echo sleeper-got-term; exit 0' TERM; while true; do sleep 0.2; done",
            "stop-timeout = 5",
        ),
    ]
}

#[test]
fn init_boots_supervises_reaps_and_powers_off_cleanly() {
    let _guard = QEMU_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let Some(inp) = inputs() else {
        return;
    };
    let dir = workdir("main");
    let token = format!(
        "token-{}-{:?}",
        std::process::id(),
        std::time::SystemTime::now()
    );
    let token = token.replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "");
    let initrd = initramfs(&inp, &dir, &test_services(&token));
    let disk = data_disk(&dir);

    // Boot 1.
    let mut b = boot(&inp, &dir, "1", &initrd, Some(&disk), "");
    let secs = b.ready();
    eprintln!("boot 1: init reported ready at {secs:.3} s after the kernel started");

    // DHCP from QEMU's user network.
    let t = b.wait_line("netcheck: axion-test");
    assert!(
        t.contains("netcheck:     inet 10.0.2.15/24"),
        "no DHCP address 10.0.2.15/24 in:\n{t}"
    );
    assert!(
        t.contains("init: eth0: DHCP lease 10.0.2.15/24"),
        "init did not report the lease"
    );
    assert!(
        t.contains("netcheck: nameserver 10.0.2.3"),
        "DNS from DHCP not in /etc/resolv.conf:\n{t}"
    );

    // Mounts, cgroup delegation, service environment, RNG seed, IPv6 link-local.
    let t = b.wait_line("syscheck: syscheck-done");
    assert!(
        !t.contains("missing-mount"),
        "API file systems missing:\n{t}"
    );
    let controllers = t
        .lines()
        .find_map(|l| {
            l.split_once("syscheck: controllers: ")
                .map(|x| x.1.to_string())
        })
        .unwrap_or_default();
    for c in ["cpu", "memory", "pids", "io", "cpuset"] {
        assert!(
            controllers.split_whitespace().any(|x| x == c),
            "cgroup controller {c} not delegated: {controllers:?}"
        );
    }
    assert!(
        t.contains("syscheck: cgroup: 0::/init"),
        "services do not run in the init cgroup:\n{t}"
    );
    assert!(
        t.contains("syscheck: greeting: hello from TOML"),
        "service environment not set"
    );
    assert!(
        t.contains("syscheck: seed-bytes: 512"),
        "no RNG seed on the data partition"
    );
    assert!(
        t.contains("syscheck:     inet6 fe80::"),
        "no IPv6 link-local address:\n{t}"
    );

    // The root is no longer the initial mount (which pivot_root cannot leave): `/` is a
    // mount whose parent is another mount (the initramfs bound onto itself), and init goes
    // on in the same process from the same files.
    let root_mount = t
        .lines()
        .find_map(|l| {
            l.split_once("syscheck: root-mount: ")
                .map(|x| x.1.to_string())
        })
        .unwrap_or_default();
    let ids: Vec<&str> = root_mount.split(' ').take(2).collect();
    assert!(
        root_mount.contains(" / / ") && ids.len() == 2 && ids[0] != ids[1],
        "/ is still the initial mount (its own parent): {root_mount:?}\n{t}"
    );
    assert!(
        t.contains("syscheck: init-exe: /sbin/init\n"),
        "init's binary is not /sbin/init of the root:\n{t}"
    );
    assert!(
        t.contains("init: root moved off the initramfs's initial mount ("),
        "no root switch message:\n{t}"
    );
    assert!(!t.contains("root switch:"), "root switch error:\n{t}");
    // One copy of the initramfs' files: shared memory (tmpfs pages, the root among them) is
    // well below twice the initramfs, which it would be with a second copy alive.
    let shmem_kb: u64 = t
        .lines()
        .find_map(|l| {
            l.split_once("syscheck: shmem: Shmem: ")
                .map(|x| x.1.trim().trim_end_matches("kB").trim().to_string())
        })
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no Shmem figure:\n{t}"));
    let cpio_kb = std::fs::metadata(&initrd)
        .map(|m| m.len() / 1024)
        .unwrap_or(0);
    eprintln!("Shmem {shmem_kb} kB, initramfs {cpio_kb} kB");
    assert!(
        shmem_kb * 2 < cpio_kb * 3,
        "Shmem {shmem_kb} kB for a {cpio_kb} kB initramfs: the old root's files were not freed"
    );

    // The crashing service is restarted, with growing delays.
    let t = b.wait("the crasher's third run", |s| {
        s.matches("crasher: crasher-run").count() >= 3
    });
    assert!(
        t.contains("service crasher exited (exit status 3)"),
        "no restart message"
    );
    assert!(
        t.contains("restarting in 0.25 s") && t.contains("restarting in 0.50 s"),
        "no backoff in:\n{t}"
    );

    // The orphan was reaped.
    let t = b.wait_line("orphan: zombies-total:");
    assert!(
        t.contains("orphan: orphan-pid"),
        "orphan service did not run"
    );
    assert!(
        t.contains("orphan: zombie-check: pid") && t.contains(" reaped"),
        "orphan not reaped:\n{t}"
    );
    assert!(t.contains("orphan: zombies-total: 0"), "zombies left:\n{t}");

    // Data partition mounted and written.
    let t = b.wait_line("persist: persist-wrote");
    assert!(
        t.contains("init: data partition /dev/vda1 mounted on /var/lib"),
        "data partition not mounted:\n{t}"
    );

    // The power button: services stopped, file systems clean, power off.
    b.vm.powerdown_and_wait(Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("power button: {e}"));
    let t = b.text();
    assert!(
        t.contains("init: power button pressed"),
        "power button not seen:\n{t}"
    );
    assert!(
        t.contains("sleeper: sleeper-got-term"),
        "service did not get SIGTERM"
    );
    assert!(t.contains("init: powering off"), "no power-off message");
    assert!(!t.contains("WARNING: unmount"), "unclean unmount:\n{t}");
    drop(b);
    let (clean, out) = fsck_data(&disk, &dir);
    assert!(clean, "e2fsck -fn after power-off is unhappy:\n{out}");

    // Boot 2 from the same disk: the marker and boot 1's service log are there.
    let mut b = boot(&inp, &dir, "2", &initrd, Some(&disk), "");
    let secs = b.ready();
    eprintln!("boot 2: init reported ready at {secs:.3} s after the kernel started");
    let t = b.wait_line("persist: crasher-log-lines:");
    assert!(
        t.contains(&format!("persist: persist-found: {token}")),
        "marker lost:\n{t}"
    );
    let n: u32 = t
        .lines()
        .find_map(|l| l.strip_prefix("persist: crasher-log-lines: "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    assert!(
        n >= 3,
        "/var/log/crasher.log did not keep boot 1's output (count {n})"
    );
    b.vm.powerdown_and_wait(Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("second power-off: {e}"));
    drop(b);
    let (clean, out) = fsck_data(&disk, &dir);
    assert!(
        clean,
        "e2fsck -fn after the second power-off is unhappy:\n{out}"
    );
}

/// The pid of a `sh` whose stdin is the serial console (the debug shell), as shell code.
const FIND_SHELL: &str = "for f in /proc/[0-9]*; do if test \"$(readlink $f/fd/0)\" = /dev/ttyS0 \
                          && test \"$(cat $f/comm)\" = sh; then echo ${f#/proc/}; fi; done";

#[test]
fn static_ip_debug_shell_reboot_command_and_missing_data_partition() {
    let _guard = QEMU_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let Some(inp) = inputs() else {
        return;
    };
    let dir = workdir("static");
    let services = vec![
        service(
            "netcheck",
            "ip -4 addr show | grep inet; ip route | grep default; cat /etc/resolv.conf; cat \
             /proc/sys/kernel/hostname; cat /run/axion/authorized_keys",
            "after = [\"network\"]\nrestart = \"never\"",
        ),
        // Finds the debug shell on ttyS0, kills it, finds its replacement, then reboots with
        // busybox `reboot` (which signals PID 1 with SIGTERM).
        service(
            "shellcheck",
            &format!(
                "for i in $(seq 100); do p1=$({FIND_SHELL}); test -n \"$p1\" && break; sleep 0.1; \
                 done; echo shell-1: $p1; kill -9 $p1; \
                 for i in $(seq 100); do p2=$({FIND_SHELL}); test -n \"$p2\" && test \"$p2\" != \
                 \"$p1\" && break; sleep 0.1; done; \
                 echo shell-2: $p2; echo calling-reboot; reboot"
            ),
            "after = [\"netcheck\"]\nrestart = \"never\"",
        ),
    ];
    let initrd = initramfs(&inp, &dir, &services);
    let mut b = boot(
        &inp,
        &dir,
        "1",
        &initrd,
        None,
        "axion.ip=10.0.2.20/24,10.0.2.2,10.0.2.3 axion.hostname=static-host \
         axion.ssh_key=\"ssh-ed25519 AAAAtest me@host\" axion.frobnicate=1 axion.debug_shell \
         axion.debug",
    );
    b.ready();
    let t = b.wait_line("netcheck: ssh-ed25519 AAAAtest me@host");
    assert!(
        t.contains("NOTHING WILL PERSIST"),
        "missing data partition not reported loudly:\n{t}"
    );
    assert!(
        t.contains("unknown kernel parameter axion.frobnicate"),
        "bad parameter not reported"
    );
    assert!(
        t.contains("netcheck: static-host"),
        "hostname from the kernel command line not set"
    );
    assert!(
        t.contains("netcheck:     inet 10.0.2.20/24"),
        "static address not set:\n{t}"
    );
    assert!(
        t.contains("netcheck: default via 10.0.2.2"),
        "default route not set:\n{t}"
    );
    assert!(
        t.contains("netcheck: nameserver 10.0.2.3"),
        "DNS not written"
    );

    // The debug shell runs on ttyS0 and is respawned after it dies.
    let t = b.wait_line("shellcheck: calling-reboot");
    // The shell's prompt may share a line with service output: look inside lines.
    let pid = |tag: &str| {
        t.lines()
            .find_map(|l| l.find(tag).map(|i| l[i + tag.len()..].trim().to_string()))
            .unwrap_or_default()
    };
    let (p1, p2) = (pid("shellcheck: shell-1: "), pid("shellcheck: shell-2: "));
    assert!(
        !p1.is_empty() && !p2.is_empty() && p1 != p2,
        "debug shell not found or not respawned: {p1:?} then {p2:?}\n{t}"
    );
    assert!(
        t.contains("service debug-shell exited (killed by signal 9)"),
        "init's console died with the shell's tty:\n{t}"
    );

    b.vm.wait_exit(Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("reboot (SIGTERM) did not end the VM (-no-reboot): {e}"));
    let t = b.text();
    assert!(
        t.contains("shutting down (reboot)") && t.contains("init: rebooting"),
        "reboot path not taken:\n{t}"
    );
}

/// vSphere's virtual hardware as QEMU emulates it: a vmxnet3 NIC and the data disk on a
/// PVSCSI controller (whose disks are probed asynchronously by the kernel).
#[test]
fn vsphere_hardware_vmxnet3_and_pvscsi() {
    let _guard = QEMU_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let Some(inp) = inputs() else {
        return;
    };
    let dir = workdir("vsphere");
    let services = vec![service(
        "netcheck",
        "ip -4 addr show | grep inet; echo driver: $(basename $(readlink \
         /sys/class/net/eth0/device/driver)); mount | grep /var/lib",
        "after = [\"network\"]\nrestart = \"never\"",
    )];
    let initrd = initramfs(&inp, &dir, &services);
    let disk = data_disk(&dir);
    let mut b = boot_on(
        &inp,
        &dir,
        "1",
        &initrd,
        Some(&disk),
        "",
        qemu::NicModel::Vmxnet3,
        qemu::DiskInterface::Pvscsi,
    );
    b.ready();
    let t = b.wait_line("netcheck: driver:");
    assert!(
        t.contains("netcheck: driver: vmxnet3"),
        "NIC is not vmxnet3:\n{t}"
    );
    assert!(
        t.contains("netcheck:     inet 10.0.2.15/24"),
        "no DHCP lease on vmxnet3:\n{t}"
    );
    let t = b.wait_line("on /var/lib type ext4");
    assert!(
        t.contains("init: data partition /dev/sda1 mounted on /var/lib"),
        "data partition on PVSCSI not mounted:\n{t}"
    );
    b.vm.powerdown_and_wait(Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("power button: {e}"));
    drop(b);
    let (clean, out) = fsck_data(&disk, &dir);
    assert!(clean, "e2fsck -fn after power-off is unhappy:\n{out}");
}
