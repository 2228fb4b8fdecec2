//! Container operations beyond the lifecycle: stats (cgroup v2, /proc), top (/proc of the
//! container's cgroup), changes (the writable layer against the image's), export (a tar of a
//! read-only overlay of the container's root), pause/unpause (cgroup.freeze), rename, update
//! (the live cgroup's limits); and the event stream ([`crate::events`]).

use super::*;
use crate::containers::{valid_name, Status};
use crate::events;
use docker_api::ops::*;
use docker_api::time::rfc3339;
use docker_api::EventBackend;
use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

/// `key value` lines (cpu.stat, memory.stat, ...).
fn kv(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

/// A cgroup limit file: None for `max` or unreadable.
fn limit(p: &Path) -> Option<u64> {
    read(p).trim().parse().ok()
}

/// The host's CPU time in nanoseconds, from /proc/stat's `cpu` line (USER_HZ = 100).
fn system_cpu_ns() -> Option<u64> {
    let s = read(Path::new("/proc/stat"));
    let l = s.lines().find(|l| l.starts_with("cpu "))?;
    let ticks: u64 = l
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|x| x.parse::<u64>().ok())
        .sum();
    Some(ticks * 10_000_000)
}

fn online_cpus() -> u32 {
    std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1)
}

fn mem_total() -> u64 {
    read(Path::new("/proc/meminfo"))
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|k| k * 1024)
        .unwrap_or(0)
}

/// io.stat: `MAJ:MIN rbytes=.. wbytes=.. rios=.. wios=..` → bytes and operations entries.
fn blkio(text: &str) -> BlkioStats {
    let mut bytes = Vec::new();
    let mut ios = Vec::new();
    for l in text.lines() {
        let mut it = l.split_whitespace();
        let Some((major, minor)) = it.next().and_then(|d| d.split_once(':')) else {
            continue;
        };
        let (Ok(major), Ok(minor)) = (major.parse(), minor.parse()) else {
            continue;
        };
        for f in it {
            let Some((k, v)) = f.split_once('=') else {
                continue;
            };
            let Ok(value) = v.parse() else { continue };
            let (list, op) = match k {
                "rbytes" => (&mut bytes, "read"),
                "wbytes" => (&mut bytes, "write"),
                "rios" => (&mut ios, "read"),
                "wios" => (&mut ios, "write"),
                _ => continue,
            };
            list.push(BlkioEntry {
                major,
                minor,
                op: op.into(),
                value,
            });
        }
    }
    BlkioStats {
        io_service_bytes_recursive: Some(bytes),
        io_serviced_recursive: Some(ios),
        ..Default::default()
    }
}

/// /proc/PID/net/dev of the container's network namespace, loopback left out.
fn net_dev(text: &str) -> BTreeMap<String, NetworkStats> {
    let mut out = BTreeMap::new();
    for l in text.lines().skip(2) {
        let Some((name, rest)) = l.split_once(':') else {
            continue;
        };
        let name = name.trim();
        let v: Vec<u64> = rest
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        if name == "lo" || v.len() < 12 {
            continue;
        }
        out.insert(
            name.to_string(),
            NetworkStats {
                rx_bytes: v[0],
                rx_packets: v[1],
                rx_errors: v[2],
                rx_dropped: v[3],
                tx_bytes: v[8],
                tx_packets: v[9],
                tx_errors: v[10],
                tx_dropped: v[11],
            },
        );
    }
    out
}

/// The PIDs in a cgroup and its descendants.
fn cgroup_pids(dir: &Path) -> Vec<i32> {
    let mut pids: Vec<i32> = read(&dir.join("cgroup.procs"))
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            pids.extend(cgroup_pids(&e.path()));
        }
    }
    pids.sort_unstable();
    pids
}

struct Proc {
    pid: i32,
    uid: u32,
    state: String,
    tty: String,
    utime: u64,
    stime: u64,
    start: u64,
    vsz_kb: u64,
    rss_kb: u64,
    cmd: String,
}

fn proc_info(pid: i32) -> Option<Proc> {
    let stat = read(Path::new(&format!("/proc/{pid}/stat")));
    // The command name is in parentheses and may hold spaces: fields follow the last ')'.
    let (head, rest) = stat.rsplit_once(')')?;
    let comm = head.split_once('(')?.1.to_string();
    let f: Vec<&str> = rest.split_whitespace().collect();
    let n = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
    let status = read(Path::new(&format!("/proc/{pid}/status")));
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let tty_nr = n(4);
    Some(Proc {
        pid,
        uid,
        state: f.first().unwrap_or(&"?").to_string(),
        tty: if tty_nr == 0 {
            "?".into()
        } else {
            format!("pts/{}", (tty_nr & 0xff) | ((tty_nr >> 12) & 0xfff00))
        },
        utime: n(11),
        stime: n(12),
        start: n(19),
        vsz_kb: n(20) / 1024,
        rss_kb: n(21) * 4,
        cmd: if args.is_empty() {
            format!("[{comm}]")
        } else {
            args.join(" ")
        },
    })
}

fn user_name(uid: u32) -> String {
    read(Path::new("/etc/passwd"))
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() > 2 && f[2] == uid.to_string()).then(|| f[0].to_string())
        })
        .unwrap_or_else(|| uid.to_string())
}

fn cpu_time(ticks: u64) -> String {
    let s = ticks / 100;
    format!("{}:{:02}", s / 60, s % 60)
}

/// `top`'s table from /proc. `ps_args` with `u` (aux, waux) gives procps's user format;
/// anything else (the default `-ef`) busybox ps's `PID USER TIME COMMAND`.
fn top_table(pids: &[i32], ps_args: &str) -> TopResponse {
    let procs: Vec<Proc> = pids.iter().filter_map(|p| proc_info(*p)).collect();
    let user_format = ps_args.trim_start_matches('-').contains('u');
    if !user_format {
        return TopResponse {
            titles: ["PID", "USER", "TIME", "COMMAND"]
                .map(String::from)
                .to_vec(),
            processes: procs
                .iter()
                .map(|p| {
                    vec![
                        p.pid.to_string(),
                        user_name(p.uid),
                        cpu_time(p.utime + p.stime),
                        p.cmd.clone(),
                    ]
                })
                .collect(),
        };
    }
    let total = mem_total().max(1);
    let uptime: f64 = read(Path::new("/proc/uptime"))
        .split_whitespace()
        .next()
        .and_then(|x| x.parse().ok())
        .unwrap_or(0.0);
    TopResponse {
        titles: [
            "USER", "PID", "%CPU", "%MEM", "VSZ", "RSS", "TTY", "STAT", "START", "TIME", "COMMAND",
        ]
        .map(String::from)
        .to_vec(),
        processes: procs
            .iter()
            .map(|p| {
                let ran = (uptime - p.start as f64 / 100.0).max(0.01);
                let cpu = (p.utime + p.stime) as f64 / 100.0 / ran * 100.0;
                let started = docker_api::time::now_nanos()
                    - ((uptime - p.start as f64 / 100.0) * 1e9) as i128;
                vec![
                    user_name(p.uid),
                    p.pid.to_string(),
                    format!("{cpu:.1}"),
                    format!("{:.1}", (p.rss_kb * 1024) as f64 / total as f64 * 100.0),
                    p.vsz_kb.to_string(),
                    p.rss_kb.to_string(),
                    p.tty.clone(),
                    p.state.clone(),
                    rfc3339(started).get(11..16).unwrap_or("").to_string(),
                    cpu_time(p.utime + p.stime),
                    p.cmd.clone(),
                ]
            })
            .collect(),
    }
}

fn is_whiteout(m: &std::fs::Metadata) -> bool {
    m.file_type().is_char_device() && m.rdev() == 0
}

fn is_opaque(p: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    let mut buf = [0u8; 4];
    for name in [c"trusted.overlay.opaque", c"user.overlay.opaque"] {
        // SAFETY: valid NUL-terminated strings and a buffer of the size given.
        let n = unsafe {
            libc::lgetxattr(
                c.as_ptr(),
                name.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        if n == 1 && buf[0] == b'y' {
            return true;
        }
    }
    false
}

/// What the engine mounts into every container, and the mount points it makes for them
/// (dockerd keeps them in a layer of its own, so they are never a change of the container's).
const ENGINE_FILES: &[&str] = &[
    "/dev",
    "/proc",
    "/sys",
    "/etc/hosts",
    "/etc/hostname",
    "/etc/resolv.conf",
    INIT_PATH,
];

/// Where `--init` puts the engine binary in a container (dockerd's path for its tini).
pub(super) const INIT_PATH: &str = "/sbin/docker-init";

/// The writable layer `upper` against the image's `lowers`: Kind 0 modified, 1 added,
/// 2 deleted (a whiteout), as dockerd reports them (sorted by path).
pub fn changes(upper: &Path, lowers: &[PathBuf]) -> Vec<Change> {
    /// Returns whether it skipped an engine file directly in `dir`.
    fn walk(dir: &Path, rel: &str, lowers: &[PathBuf], out: &mut Vec<Change>) -> bool {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return false;
        };
        let mut entries: Vec<_> = rd.flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        let mut skipped = false;
        for e in entries {
            let name = e.file_name().to_string_lossy().into_owned();
            let path = format!("{rel}/{name}");
            if ENGINE_FILES.contains(&path.as_str()) {
                skipped = true;
                continue;
            }
            let Ok(m) = e.path().symlink_metadata() else {
                continue;
            };
            let in_lower = lowers.iter().any(|l| {
                l.join(path.trim_start_matches('/'))
                    .symlink_metadata()
                    .is_ok()
            });
            if is_whiteout(&m) {
                out.push(Change { path, kind: 2 });
                continue;
            }
            out.push(Change {
                path: path.clone(),
                kind: if in_lower { 0 } else { 1 },
            });
            if m.is_dir() {
                // An added or opaque directory: all below it is added.
                let below: &[PathBuf] = if in_lower && !is_opaque(&e.path()) {
                    lowers
                } else {
                    &[]
                };
                let n = out.len();
                // A directory copied up only for the engine's mount points is no change.
                if walk(&e.path(), &path, below, out) && out.len() == n && in_lower {
                    out.pop();
                }
            }
        }
        skipped
    }
    let mut out = Vec::new();
    walk(upper, "", lowers, &mut out);
    out
}

/// Writes a tar of `root` (its contents, names without a leading `/`) into `w`.
fn tar_tree(root: &Path, w: impl Write) -> std::io::Result<()> {
    fn walk<W: Write>(b: &mut tar::Builder<W>, root: &Path, rel: &Path) -> std::io::Result<()> {
        let mut entries: Vec<_> = std::fs::read_dir(root.join(rel))?.flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let r = rel.join(e.file_name());
            let p = root.join(&r);
            b.append_path_with_name(&p, &r)?;
            if e.file_type()?.is_dir() {
                walk(b, root, &r)?;
            }
        }
        Ok(())
    }
    let mut b = tar::Builder::new(w);
    b.follow_symlinks(false);
    walk(&mut b, root, Path::new(""))?;
    b.finish()
}

/// A string field of HostConfig that the engine keeps as the client sent it (`PidMode`, ...).
pub(super) fn hc_str<'a>(hc: &'a HostConfig, key: &str) -> &'a str {
    hc.extra.get(key).and_then(|v| v.as_str()).unwrap_or("")
}

/// A list-of-strings field of HostConfig (`GroupAdd`, ...).
pub(super) fn hc_list(hc: &HostConfig, key: &str) -> Vec<String> {
    hc.extra
        .get(key)
        .and_then(|v| v.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The log drivers the engine has: json-file (its log file) and none (no log).
const LOG_DRIVERS: &[&str] = &["json-file", "none"];

/// The container's log driver (`json-file` unless it asked for another).
pub(super) fn log_driver(hc: &HostConfig) -> &str {
    hc.extra
        .get("LogConfig")
        .and_then(|l| l.get("Type"))
        .and_then(|t| t.as_str())
        .filter(|t| !t.is_empty())
        .unwrap_or("json-file")
}

fn nonzero(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::Null => false,
        serde_json::Value::Bool(b) => *b,
        serde_json::Value::Number(n) => n.as_f64() != Some(0.0),
        serde_json::Value::String(s) => !s.is_empty(),
        serde_json::Value::Array(a) => !a.is_empty(),
        serde_json::Value::Object(o) => !o.is_empty(),
    }
}

/// HostConfig fields this engine does not honour: refused at create when set, never
/// accepted and ignored. (Network, DNS and mount fields are the other groups' to check.)
const UNSUPPORTED: &[(&str, &str)] = &[
    ("BlkioWeight", "block I/O weights"),
    ("BlkioWeightDevice", "block I/O weights"),
    ("BlkioDeviceReadBps", "block I/O limits"),
    ("BlkioDeviceWriteBps", "block I/O limits"),
    ("BlkioDeviceReadIOps", "block I/O limits"),
    ("BlkioDeviceWriteIOps", "block I/O limits"),
    ("CpuRealtimePeriod", "real-time CPU scheduling"),
    ("CpuRealtimeRuntime", "real-time CPU scheduling"),
    ("DeviceRequests", "device requests (--gpus)"),
    ("KernelMemory", "kernel memory limits"),
    ("KernelMemoryTCP", "kernel memory limits"),
    ("OomKillDisable", "--oom-kill-disable"),
    ("Sysctls", "sysctls"),
    ("ReadonlyRootfs", "a read-only root file system"),
    ("UsernsMode", "user namespaces"),
    ("CgroupParent", "--cgroup-parent"),
    ("IOMaximumIOps", "I/O limits"),
    ("IOMaximumBandwidth", "I/O limits"),
    ("CpuCount", "CpuCount (Windows only)"),
    ("CpuPercent", "CpuPercent (Windows only)"),
    ("StorageOpt", "storage options"),
];

/// Checks at create what this group owns in HostConfig, and fills the defaults dockerd
/// shows in inspect (LogConfig, PidMode, ...).
pub(super) fn check_create(hc: &mut HostConfig) -> ApiResult<()> {
    for (key, what) in UNSUPPORTED {
        if hc.extra.get(*key).is_some_and(nonzero) {
            return Err(ApiError::bad_request(format!(
                "{key}: {what} is not supported by this engine"
            )));
        }
    }
    crate::devices::check(hc).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let driver = log_driver(hc).to_string();
    if !LOG_DRIVERS.contains(&driver.as_str()) {
        return Err(ApiError::bad_request(format!(
            "logger: no log driver named '{driver}' is registered"
        )));
    }
    let config = hc
        .extra
        .get("LogConfig")
        .and_then(|l| l.get("Config"))
        .cloned()
        .filter(|c| c.is_object())
        .unwrap_or_else(|| serde_json::json!({}));
    if driver == "json-file" {
        // Rotation (max-size) is not done: refused rather than ignored. max-file alone does
        // nothing in dockerd either (it counts the files max-size makes).
        if let Some(k) = config
            .as_object()
            .and_then(|o| o.keys().find(|k| k.as_str() != "max-file"))
        {
            return Err(ApiError::bad_request(format!(
                "unknown log opt '{k}' for json-file log driver (this engine takes max-file only; \
                    it does not rotate logs)"
            )));
        }
    }
    if !matches!(hc_str(hc, "Runtime"), "" | "runc") {
        return Err(ApiError::bad_request(format!(
            "unknown or invalid runtime name: {} (this engine has runc's semantics only)",
            hc_str(hc, "Runtime")
        )));
    }
    for key in ["CpusetCpus", "CpusetMems"] {
        let v = hc_str(hc, key);
        if !v.is_empty() && !crate::cgroup::valid_cpuset(v) {
            return Err(ApiError::bad_request(format!(
                "Invalid value {v} for {key}: not a list of numbers and ranges"
            )));
        }
    }
    hc.extra.insert(
        "LogConfig".into(),
        serde_json::json!({"Type": driver, "Config": config}),
    );
    for (key, ok) in [
        ("PidMode", &["", "host"][..]),
        ("UTSMode", &["", "host"][..]),
    ] {
        let v = hc_str(hc, key).to_string();
        if !ok.contains(&v.as_str()) {
            return Err(ApiError::bad_request(format!(
                "{key} {v:?} is not supported by this engine (only \"host\" or the default)"
            )));
        }
        hc.extra.entry(key.to_string()).or_insert_with(|| "".into());
    }
    if matches!(hc_str(hc, "IpcMode"), "host") || hc_str(hc, "IpcMode").starts_with("container:") {
        return Err(ApiError::bad_request(
            "IpcMode host or container:... is not supported by this engine",
        ));
    }
    if hc
        .extra
        .get("Init")
        .is_some_and(|v| !v.is_null() && !v.is_boolean())
    {
        return Err(ApiError::bad_request("Init must be a boolean"));
    }
    if let Some(g) = hc.extra.get("GroupAdd").filter(|g| !g.is_null()) {
        if !g
            .as_array()
            .is_some_and(|a| a.iter().all(|x| x.is_string()))
        {
            return Err(ApiError::bad_request(
                "GroupAdd must be a list of group names or ids",
            ));
        }
    }
    for (k, v) in [
        ("IpcMode", serde_json::json!("private")),
        ("Runtime", serde_json::json!("runc")),
        ("CgroupnsMode", serde_json::json!("private")),
        ("Isolation", serde_json::json!("")),
        ("ConsoleSize", serde_json::json!([0, 0])),
        ("CpusetCpus", serde_json::json!("")),
        ("CpusetMems", serde_json::json!("")),
        ("BlkioWeight", serde_json::json!(0)),
        ("OomKillDisable", serde_json::json!(false)),
        ("ReadonlyRootfs", serde_json::json!(false)),
        ("Devices", serde_json::json!([])),
        ("Ulimits", serde_json::json!([])),
        ("GroupAdd", serde_json::Value::Null),
        ("Init", serde_json::Value::Null),
    ] {
        if hc.extra.get(k).is_none_or(|x| x.is_null()) {
            hc.extra.insert(k.into(), v);
        }
    }
    Ok(())
}

/// `--mac-address`: six hex bytes, a unicast address.
pub(super) fn check_mac(mac: Option<&str>) -> ApiResult<()> {
    let Some(m) = mac.filter(|m| !m.is_empty()) else {
        return Ok(());
    };
    let bytes: Vec<Option<u8>> = m
        .split(':')
        .map(|b| {
            (b.len() == 2)
                .then(|| u8::from_str_radix(b, 16).ok())
                .flatten()
        })
        .collect();
    if bytes.len() != 6 || bytes.iter().any(Option::is_none) || bytes[0].is_some_and(|b| b & 1 == 1)
    {
        return Err(ApiError::bad_request(format!(
            "{m} is not a valid mac address"
        )));
    }
    Ok(())
}

/// `--init`: the engine binary (static) bound read-only at [`INIT_PATH`], running `args`.
pub(super) fn init_process(args: Vec<String>) -> ApiResult<(crate::runtime::Bind, Vec<String>)> {
    let exe = std::env::current_exe().map_err(internal("finding the engine binary for --init"))?;
    let mut v = vec![INIT_PATH.to_string(), "__init".into(), "--".into()];
    v.extend(args);
    Ok((
        crate::runtime::Bind {
            source: exe,
            dest: INIT_PATH.into(),
            readonly: true,
            ..Default::default()
        },
        v,
    ))
}

impl Engine {
    pub(super) async fn stats_of(&self, id: &str) -> ApiResult<ContainerStats> {
        let c = self.find(id)?;
        let r = c.snapshot();
        let mut s = ContainerStats {
            name: format!("/{}", r.name),
            id: r.id.clone(),
            read: rfc3339(now_nanos()),
            preread: rfc3339(0),
            storage_stats: serde_json::json!({}),
            ..Default::default()
        };
        let Some(cg) = r.cgroup.clone().filter(|_| r.status == Status::Running) else {
            // dockerd's answer for a container that is not running: zero values.
            return Ok(s);
        };
        let cpu = kv(&read(&cg.join("cpu.stat")));
        let g = |k: &str| cpu.get(k).copied().unwrap_or(0);
        s.cpu_stats = CpuStats {
            cpu_usage: CpuUsage {
                total_usage: g("usage_usec") * 1000,
                usage_in_kernelmode: g("system_usec") * 1000,
                usage_in_usermode: g("user_usec") * 1000,
            },
            system_cpu_usage: system_cpu_ns(),
            online_cpus: Some(online_cpus()),
            throttling_data: ThrottlingData {
                periods: g("nr_periods"),
                throttled_periods: g("nr_throttled"),
                throttled_time: g("throttled_usec") * 1000,
            },
        };
        s.memory_stats = MemoryStats {
            usage: limit(&cg.join("memory.current")),
            stats: Some(kv(&read(&cg.join("memory.stat")))),
            limit: Some(limit(&cg.join("memory.max")).unwrap_or_else(mem_total)),
        };
        s.pids_stats = PidsStats {
            current: limit(&cg.join("pids.current")),
            limit: limit(&cg.join("pids.max")),
        };
        s.blkio_stats = blkio(&read(&cg.join("io.stat")));
        if r.pid > 0 && r.host_config.network_mode != "host" {
            s.networks = Some(net_dev(&read(Path::new(&format!(
                "/proc/{}/net/dev",
                r.pid
            )))));
        }
        s.num_procs = 0;
        Ok(s)
    }

    pub(super) async fn top_of(&self, id: &str, ps_args: &str) -> ApiResult<TopResponse> {
        let c = self.find(id)?;
        let r = c.snapshot();
        if r.status != Status::Running || r.pid <= 0 {
            return Err(ApiError::conflict(format!(
                "container {} is not running",
                r.id
            )));
        }
        let pids = match &r.cgroup {
            Some(cg) => cgroup_pids(cg),
            None => vec![r.pid],
        };
        // The shim's container process is PID 1 inside; show what runs in the cgroup.
        Ok(top_table(&pids, ps_args))
    }

    pub(super) async fn changes_of(&self, id: &str) -> ApiResult<Vec<Change>> {
        let c = self.find(id)?;
        let r = c.snapshot();
        let lowers = self
            .images
            .lowers(&r.image_id)
            .ok_or_else(|| ApiError::internal("image layers missing"))?;
        let upper = c.data.join("upper");
        tokio::task::spawn_blocking(move || changes(&upper, &lowers))
            .await
            .map_err(internal("changes task"))
    }

    /// A read-only overlay of the container's root: its writable layer as the top lower (a
    /// second mount with the same upper dir would be refused while the container runs).
    fn ro_root(&self, c: &Container) -> ApiResult<super::archive::RootMount> {
        let r = c.snapshot();
        let lowers = self
            .images
            .lowers(&r.image_id)
            .ok_or_else(|| ApiError::internal("image layers missing"))?;
        let dir = c.dir.join(format!("export-{}", &random_id()[..8]));
        std::fs::create_dir_all(&dir).map_err(internal("export mount point"))?;
        let opts = format!(
            "lowerdir={}",
            std::iter::once(c.data.join("upper"))
                .chain(lowers)
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(":")
        );
        nix::mount::mount(
            Some("overlay"),
            &dir,
            Some("overlay"),
            nix::mount::MsFlags::MS_RDONLY,
            Some(opts.as_str()),
        )
        .map_err(|e| {
            let _ = std::fs::remove_dir(&dir);
            ApiError::internal(format!("cannot mount the container's root: {e}"))
        })?;
        Ok(super::archive::RootMount::removing(dir))
    }

    pub(super) async fn export_of(&self, id: &str) -> ApiResult<mpsc::Receiver<Bytes>> {
        let c = self.find(id)?;
        let m = self.ro_root(&c)?;
        let (tx, rx) = mpsc::channel(16);
        std::thread::spawn(move || {
            if let Err(e) = tar_tree(
                m.path(),
                std::io::BufWriter::with_capacity(64 << 10, docker_api::body::ChannelWriter(tx)),
            ) {
                eprintln!("engine: export: {e}");
            }
            drop(m);
        });
        Ok(rx)
    }

    fn freeze(&self, c: &Container, on: bool) -> ApiResult<()> {
        let r = c.snapshot();
        let what = if on { "pause" } else { "unpause" };
        let cg = r.cgroup.clone().ok_or_else(|| {
            ApiError::internal(format!(
                "cannot {what} container {}: no cgroup v2 freezer",
                r.id
            ))
        })?;
        std::fs::write(cg.join("cgroup.freeze"), if on { "1" } else { "0" })
            .map_err(internal("cgroup.freeze"))?;
        // The freeze completes asynchronously: wait for cgroup.events to say so.
        let want = if on { "frozen 1" } else { "frozen 0" };
        for _ in 0..200 {
            if read(&cg.join("cgroup.events")).lines().any(|l| l == want) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        Ok(())
    }

    pub(super) async fn pause(&self, id: &str, on: bool) -> ApiResult<()> {
        let c = self.find(id)?;
        let _g = c.op.lock().await;
        let r = c.snapshot();
        if r.status != Status::Running {
            return Err(ApiError::conflict(format!(
                "Container {} is not running",
                r.id
            )));
        }
        match (on, r.paused) {
            (true, true) => {
                return Err(ApiError::conflict(format!(
                    "Container {} is already paused",
                    r.id
                )))
            }
            (false, false) => {
                return Err(ApiError::conflict(format!(
                    "Container {} is not paused",
                    r.id
                )))
            }
            _ => {}
        }
        self.freeze(&c, on)?;
        c.rec.lock().unwrap().paused = on;
        c.save();
        events::container(&r, if on { "pause" } else { "unpause" }, &[]);
        Ok(())
    }

    /// Thaws a paused container (before a signal that must reach it: stop, kill).
    pub(super) fn thaw(&self, c: &Container) {
        if c.rec.lock().unwrap().paused {
            let _ = self.freeze(c, false);
            c.rec.lock().unwrap().paused = false;
            c.save();
        }
    }

    pub(super) async fn rename(&self, id: &str, new: &str) -> ApiResult<()> {
        let c = self.find(id)?;
        if !valid_name(new) {
            return Err(ApiError::bad_request(format!(
                "Invalid container name ({new}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
            )));
        }
        let new = new.trim_start_matches('/').to_string();
        let old = c.snapshot();
        if old.name == new {
            return Err(ApiError::bad_request(
                "Renaming a container with the same name as its current name",
            ));
        }
        {
            let map = self.containers.lock().unwrap();
            if let Some(o) = map.values().find(|o| o.rec.lock().unwrap().name == new) {
                let oid = o.snapshot().id;
                return Err(ApiError::conflict(format!(
                    "Conflict. The container name \"/{new}\" is \
                    already in use by container \"{oid}\". You have to remove (or rename) that \
                        container to be able to reuse that name."
                )));
            }
            c.rec.lock().unwrap().name = new.clone();
        }
        c.save();
        let r = c.snapshot();
        events::container(&r, "rename", &[("oldName", format!("/{}", old.name))]);
        Ok(())
    }

    pub(super) async fn update(&self, id: &str, u: UpdateRequest) -> ApiResult<UpdateResponse> {
        let c = self.find(id)?;
        let _g = c.op.lock().await;
        let refuse = |what: &str| {
            Err(ApiError::bad_request(format!(
                "{what} cannot be updated: this engine does not support it"
            )))
        };
        for (key, v) in [
            ("CpusetCpus", &u.cpuset_cpus),
            ("CpusetMems", &u.cpuset_mems),
        ] {
            if let Some(v) = v.as_deref().filter(|v| !v.is_empty()) {
                if !crate::cgroup::valid_cpuset(v) {
                    return Err(ApiError::bad_request(format!(
                        "Invalid value {v} for {key}: not a list of numbers and ranges"
                    )));
                }
            }
        }
        if u.blkio_weight.is_some_and(|w| w > 0) {
            return refuse("BlkioWeight");
        }
        if u.kernel_memory.is_some_and(|m| m > 0) {
            return refuse("KernelMemory");
        }
        if u.nano_cpus.is_some_and(|n| n > 0) && u.cpu_quota.is_some_and(|q| q > 0) {
            return Err(ApiError::bad_request(
                "Conflicting options: Nano CPUs and CPU Period cannot both be set",
            ));
        }
        let mut hc = c.snapshot().host_config;
        if let Some(p) = &u.restart_policy {
            if !matches!(
                p.name.as_str(),
                "" | "no" | "always" | "unless-stopped" | "on-failure"
            ) {
                return Err(ApiError::bad_request(format!(
                    "invalid restart policy {:?}",
                    p.name
                )));
            }
            if hc.auto_remove && !matches!(p.name.as_str(), "" | "no") {
                return Err(ApiError::bad_request(
                    "Restart policy cannot be updated because AutoRemove is enabled for the \
                        container",
                ));
            }
            hc.restart_policy = p.clone();
        }
        if let Some(m) = u.memory.filter(|m| *m != 0) {
            if m < 6 * 1024 * 1024 {
                return Err(ApiError::bad_request("Minimum memory limit allowed is 6MB"));
            }
            hc.memory = m;
        }
        if let Some(m) = u.memory_swap.filter(|m| *m != 0) {
            hc.memory_swap = m;
        }
        if let Some(m) = u.memory_reservation.filter(|m| *m != 0) {
            hc.memory_reservation = m;
        }
        if let Some(n) = u.nano_cpus.filter(|n| *n != 0) {
            hc.nano_cpus = n;
            hc.cpu_quota = 0;
        }
        if let Some(q) = u.cpu_quota.filter(|q| *q != 0) {
            hc.cpu_quota = q;
            hc.nano_cpus = 0;
        }
        if let Some(p) = u.cpu_period.filter(|p| *p != 0) {
            hc.cpu_period = p;
        }
        if let Some(s) = u.cpu_shares.filter(|s| *s != 0) {
            hc.cpu_shares = s;
        }
        if let Some(p) = u.pids_limit.filter(|p| *p != 0) {
            hc.pids_limit = Some(p);
        }
        for (key, v) in [
            ("CpusetCpus", &u.cpuset_cpus),
            ("CpusetMems", &u.cpuset_mems),
        ] {
            if let Some(v) = v.as_deref().filter(|v| !v.is_empty()) {
                hc.extra.insert(key.into(), v.into());
            }
        }
        if hc.memory_swap > 0 && hc.memory > 0 && hc.memory_swap < hc.memory {
            return Err(ApiError::bad_request(
                "Minimum memoryswap limit should be larger than memory limit, see usage",
            ));
        }
        let r = c.snapshot();
        if let Some(cg) = r.cgroup.as_ref().filter(|_| r.status == Status::Running) {
            crate::cgroup::apply(cg, &hc).map_err(internal("updating the cgroup"))?;
        }
        c.rec.lock().unwrap().host_config = hc;
        c.save();
        events::container(&c.snapshot(), "update", &[]);
        Ok(UpdateResponse { warnings: vec![] })
    }
}

impl EventBackend for Engine {
    async fn events(&self, since: Option<i128>) -> ApiResult<EventRx> {
        Ok(events::subscribe(since))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_files_parse() {
        let s = kv("usage_usec 1500\nuser_usec 1000\nsystem_usec 500\nnr_periods 0\n");
        assert_eq!(s["usage_usec"], 1500);
        let b = blkio("8:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n");
        let bytes = b.io_service_bytes_recursive.unwrap();
        assert_eq!(bytes.len(), 2);
        assert_eq!(bytes[1].op, "write");
        assert_eq!(bytes[1].value, 8192);
        let n = net_dev(
            "Inter-|   Receive  |  Transmit\n face |bytes packets errs drop fifo frame \
            compressed multicast|bytes packets errs drop fifo colls carrier compressed\n    lo: 10 \
                1 0 0 0 0 0 0 10 1 0 0 0 0 0 0\n  eth0: 1000 10 1 2 0 0 0 0 2000 20 3 4 0 0 0 0\n",
        );
        assert_eq!(n.len(), 1);
        assert_eq!(n["eth0"].rx_bytes, 1000);
        assert_eq!(n["eth0"].tx_packets, 20);
        assert_eq!(n["eth0"].tx_dropped, 4);
        use crate::cgroup::cpu_weight;
        assert_eq!(cpu_weight(1024), 39);
        assert_eq!(cpu_weight(2), 1);
        assert_eq!(cpu_weight(262_144), 10_000);
    }

    #[test]
    fn create_checks() {
        let hc_of = |j: serde_json::Value| -> HostConfig { serde_json::from_value(j).unwrap() };
        let mut hc = hc_of(serde_json::json!({"CpuShares": 512, "PidMode": "host"}));
        check_create(&mut hc).unwrap();
        let v = serde_json::to_value(&hc).unwrap();
        assert_eq!(
            v["LogConfig"],
            serde_json::json!({"Type": "json-file", "Config": {}})
        );
        assert_eq!(v["PidMode"], "host");
        assert_eq!(v["UTSMode"], "");
        assert_eq!(v["CpuShares"], 512);
        assert_eq!(v["Runtime"], "runc");
        assert!(v.get("Init").is_some() && v.get("GroupAdd").is_some());
        for bad in [
            serde_json::json!({"LogConfig": {"Type": "syslog"}}),
            serde_json::json!({"LogConfig": {"Type": "json-file", "Config": {"max-size": "1m"}}}),
            serde_json::json!({"Devices": [{"PathOnHost": "dev/null"}]}),
            serde_json::json!({"DeviceCgroupRules": ["c 1:3 rwx"]}),
            serde_json::json!({"ReadonlyRootfs": true}),
            serde_json::json!({"PidMode": "container:x"}),
            serde_json::json!({"Runtime": "kata"}),
            serde_json::json!({"CpusetCpus": "0-"}),
        ] {
            assert!(check_create(&mut hc_of(bad.clone())).is_err(), "{bad}");
        }
        let mut ok = hc_of(serde_json::json!({
            "LogConfig": {"Type": "json-file", "Config": {"max-file": "100"}},
            "CpusetCpus": "0", "Devices": [{"PathOnHost": "/dev/null"}], "ReadonlyRootfs": false,
            "Runtime": "runc", "DeviceCgroupRules": ["c 7:128 rwm"]
        }));
        check_create(&mut ok).unwrap();
        assert!(check_mac(Some("02:42:ac:11:00:0a")).is_ok());
        assert!(check_mac(Some("03:42:ac:11:00:0a")).is_err());
        assert!(check_mac(Some("02:42:ac:11:00")).is_err());
        assert!(crate::cgroup::valid_cpuset("0-1,3"));
        assert!(!crate::cgroup::valid_cpuset("1-0"));
    }

    #[test]
    fn top_of_this_process() {
        let me = std::process::id() as i32;
        let t = top_table(&[me], "-ef");
        assert_eq!(t.titles, ["PID", "USER", "TIME", "COMMAND"]);
        assert_eq!(t.processes[0][0], me.to_string());
        let t = top_table(&[me], "waux");
        assert_eq!(t.titles.len(), 11);
        assert_eq!(t.processes[0][1], me.to_string());
        assert_eq!(t.processes[0].len(), 11);
    }

    #[test]
    fn changes_of_an_upper_dir() {
        let d = tempfile::tempdir().unwrap();
        let (lower, upper) = (d.path().join("l"), d.path().join("u"));
        std::fs::create_dir_all(lower.join("etc")).unwrap();
        std::fs::write(lower.join("etc/passwd"), "x").unwrap();
        std::fs::write(lower.join("gone"), "x").unwrap();
        std::fs::create_dir_all(upper.join("etc")).unwrap();
        std::fs::write(upper.join("etc/passwd"), "y").unwrap();
        std::fs::create_dir_all(upper.join("new/sub")).unwrap();
        std::fs::create_dir_all(lower.join("etc")).unwrap();
        std::fs::write(upper.join("etc/hostname"), "h").unwrap();
        let whiteout = nix::sys::stat::mknod(
            &upper.join("gone"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::empty(),
            0,
        );
        let c = changes(&upper, &[lower]);
        let mut want = vec![
            Change {
                path: "/etc".into(),
                kind: 0,
            },
            Change {
                path: "/etc/passwd".into(),
                kind: 0,
            },
        ];
        if whiteout.is_ok() {
            want.push(Change {
                path: "/gone".into(),
                kind: 2,
            });
        } else {
            eprintln!("NOTE: cannot make a whiteout here (needs CAP_MKNOD): deletion not checked");
        }
        want.push(Change {
            path: "/new".into(),
            kind: 1,
        });
        want.push(Change {
            path: "/new/sub".into(),
            kind: 1,
        });
        assert_eq!(c, want);
    }

    #[test]
    fn tar_of_a_tree_has_relative_names() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("bin")).unwrap();
        std::fs::write(d.path().join("bin/sh"), "#!").unwrap();
        let mut out = Vec::new();
        tar_tree(d.path(), &mut out).unwrap();
        let mut a = tar::Archive::new(&out[..]);
        let names: Vec<String> = a
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert_eq!(names, ["bin", "bin/sh"]);
    }
}
