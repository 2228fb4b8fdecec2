//! What a container's process may do, applied by the shim just before exec (after all
//! mounts, `pivot_root` and `setns`, which the filter below would refuse):
//! - capabilities: Docker's default set (bounding set trimmed; inheritable and ambient
//!   cleared), adjusted by `--cap-add`/`--cap-drop`; `--privileged` keeps them all;
//! - seccomp: Docker's default profile (an allow-list, see runtime::seccomp), compiled for the
//!   container's effective capabilities, so `--cap-add SYS_ADMIN` also unlocks mount, unshare,
//!   setns...; `--security-opt seccomp=unconfined` and `--privileged` turn it off;
//!   `--security-opt seccomp=FILE` uses the profile in FILE (the docker CLI reads the file and
//!   sends its contents as `seccomp=<json>`; the engine never reads a path). The profile is
//!   compiled by the engine when the container is created (a bad profile is an error for the
//!   client there; compiled programs are kept for the engine's life, keyed by profile and
//!   capabilities) and the program travels to the shim in its spec at each start;
//! - `no_new_privs` with `--security-opt no-new-privileges`.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq, Eq)]
pub struct Confinement {
    /// Capabilities kept (numbers); None keeps all (privileged).
    pub capabilities: Option<Vec<u32>>,
    /// The seccomp program (classic BPF, packed by seccomp::pack); None: unconfined.
    pub seccomp: Option<Vec<u64>>,
    pub no_new_privs: bool,
    /// `--ulimit`s (runtime::rlimits), set before the capabilities are dropped.
    #[serde(default)]
    pub rlimits: Vec<super::rlimits::Rlimit>,
}

/// Docker's default capabilities.
pub const DEFAULT_CAPS: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
];

const CAP_NAMES: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

fn cap_number(name: &str) -> Option<u32> {
    let n = name.trim().to_ascii_uppercase();
    let n = n.strip_prefix("CAP_").unwrap_or(&n);
    CAP_NAMES.iter().position(|c| *c == n).map(|i| i as u32)
}

/// "CAP_SYS_ADMIN" for 21.
pub fn cap_name(n: u32) -> Option<String> {
    CAP_NAMES.get(n as usize).map(|c| format!("CAP_{c}"))
}

/// Which seccomp profile `--security-opt` asks for: None = unconfined, else the JSON text
/// (the last `seccomp=` option wins; `seccomp:` is the old separator).
fn seccomp_profile(security_opt: &[String]) -> Option<&str> {
    let mut profile = Some(super::seccomp::DEFAULT_PROFILE);
    for o in security_opt {
        let Some(v) = o
            .strip_prefix("seccomp=")
            .or_else(|| o.strip_prefix("seccomp:"))
        else {
            continue;
        };
        profile = match v.trim() {
            "unconfined" => None,
            "" | "builtin" => Some(super::seccomp::DEFAULT_PROFILE),
            json => Some(json),
        };
    }
    profile
}

/// The confinement for a container from its HostConfig fields. Errors (unknown capability,
/// malformed seccomp profile) are meant for the API client.
pub fn for_container(
    privileged: bool,
    cap_add: &[String],
    cap_drop: &[String],
    security_opt: &[String],
) -> Result<Confinement, String> {
    let no_new_privs = security_opt.iter().any(|o| {
        matches!(
            o.as_str(),
            "no-new-privileges" | "no-new-privileges=true" | "no-new-privileges:true"
        )
    });
    if privileged {
        return Ok(Confinement {
            capabilities: None,
            seccomp: None,
            no_new_privs,
            rlimits: Vec::new(),
        });
    }
    let all = || (0..CAP_NAMES.len() as u32).collect::<Vec<_>>();
    let mut caps: Vec<u32> = DEFAULT_CAPS.iter().filter_map(|c| cap_number(c)).collect();
    let parse = |list: &[String]| -> Result<Vec<u32>, String> {
        let mut v = Vec::new();
        for c in list {
            if c.eq_ignore_ascii_case("ALL") {
                v.extend(all());
            } else {
                v.push(cap_number(c).ok_or_else(|| format!("unknown capability: {c:?}"))?);
            }
        }
        Ok(v)
    };
    let drop = parse(cap_drop)?;
    caps.retain(|c| !drop.contains(c));
    for c in parse(cap_add)? {
        if !caps.contains(&c) {
            caps.push(c);
        }
    }
    caps.sort_unstable();
    let seccomp = match seccomp_profile(security_opt) {
        None => None,
        Some(json) => compiled(json, &caps)?,
    };
    Ok(Confinement {
        capabilities: Some(caps),
        seccomp,
        no_new_privs,
        rlimits: Vec::new(),
    })
}

/// Compiles the confinement of a container with default settings into the cache below
/// (see its use in main.rs: axion-vmd's template).
pub fn warm_default() {
    if let Err(e) = for_container(false, &[], &[], &[]) {
        eprintln!("engine: the default confinement does not compile: {e}");
    }
}

/// The packed program for a profile and a capability set, compiled once per engine run: the
/// engine needs it at create (to refuse a bad profile) and at every start, and parsing plus
/// compiling Docker's default profile is measurable under TCG. The running kernel, the other
/// input, does not change while the engine runs. A few entries are kept (custom profiles
/// and capability sets are rare); errors are not cached.
fn compiled(json: &str, caps: &[u32]) -> Result<Option<Vec<u64>>, String> {
    type Entry = (String, Vec<u32>, Option<Vec<u64>>);
    static CACHE: std::sync::Mutex<Vec<Entry>> = std::sync::Mutex::new(Vec::new());
    const KEEP: usize = 8;
    if let Some(e) = CACHE
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .find(|e| e.0 == json && e.1 == caps)
    {
        return Ok(e.2.clone());
    }
    let names: Vec<String> = caps.iter().filter_map(|c| cap_name(*c)).collect();
    let target = super::seccomp::Target {
        caps: &names,
        kernel: super::seccomp::kernel_version(),
    };
    let program = super::seccomp::compile(json, &target)?.map(|p| super::seccomp::pack(&p));
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    if cache.len() >= KEEP {
        cache.remove(0);
    }
    cache.push((json.to_string(), caps.to_vec(), program.clone()));
    Ok(program)
}

fn os_err(what: &str) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

/// Applies `c` to the calling process (the shim's child, just before it drops to the user).
pub fn apply(c: &Confinement) -> Result<(), String> {
    super::rlimits::apply(&c.rlimits)?;
    // SAFETY: prctl and capget/capset on our own process, with integers and structs we own.
    unsafe {
        if c.no_new_privs && libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(os_err("setting no_new_privs"));
        }
        if let Some(keep) = &c.capabilities {
            let last = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok())
                .unwrap_or(CAP_NAMES.len() as u32 - 1);
            for cap in 0..=last {
                if !keep.contains(&cap)
                    && libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) != 0
                {
                    return Err(os_err(&format!(
                        "dropping capability {cap} from the bounding set"
                    )));
                }
            }
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
                0,
                0,
                0,
            );
            // Inheritable set: empty. Effective and permitted stay as they are until exec (the
            // shim still has to set the user): root's exec takes them from the bounding set,
            // a non-root user keeps none.
            let mut hdr = CapHeader {
                version: 0x2008_0522,
                pid: 0,
            };
            let mut data = [CapData::default(); 2];
            if libc::syscall(
                libc::SYS_capget,
                &mut hdr as *mut CapHeader,
                data.as_mut_ptr(),
            ) != 0
            {
                return Err(os_err("reading the capability sets"));
            }
            for d in &mut data {
                d.inheritable = 0;
            }
            if libc::syscall(libc::SYS_capset, &mut hdr as *mut CapHeader, data.as_ptr()) != 0 {
                return Err(os_err("clearing the inheritable capabilities"));
            }
        }
    }
    // Last, so a custom profile that refuses prctl or capset cannot break the steps above;
    // the shim's remaining calls (setgroups, setgid, setuid, chdir, execve) must be allowed by
    // the profile, as with runc. Root still holds CAP_SYS_ADMIN here, so no_new_privs is not
    // required to install it.
    if let Some(p) = &c.seccomp {
        super::seccomp::install(&super::seccomp::unpack(p))
            .map_err(|e| format!("installing the seccomp filter: {e}"))?;
    }
    Ok(())
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_set_and_adjustments() {
        let c = for_container(false, &[], &[], &[]).unwrap();
        let caps = c.capabilities.unwrap();
        assert_eq!(caps.len(), DEFAULT_CAPS.len());
        assert!(
            caps.contains(&0) && !caps.contains(&21),
            "CHOWN kept, SYS_ADMIN dropped"
        );
        assert!(c.seccomp.is_some() && !c.no_new_privs);
        let c = for_container(
            false,
            &["NET_ADMIN".into()],
            &["cap_chown".into()],
            &["no-new-privileges".into()],
        )
        .unwrap();
        let caps = c.capabilities.unwrap();
        assert!(caps.contains(&12) && !caps.contains(&0));
        assert!(c.no_new_privs);
        let c = for_container(false, &[], &["ALL".into()], &[]).unwrap();
        assert_eq!(c.capabilities, Some(vec![]));
        let c = for_container(true, &[], &[], &[]).unwrap();
        assert_eq!(c.capabilities, None);
        assert!(c.seccomp.is_none());
        assert!(for_container(false, &["NOPE".into()], &[], &[]).is_err());
    }

    #[test]
    fn seccomp_options() {
        let prog = |opts: &[&str], add: &[&str]| {
            let opts: Vec<String> = opts.iter().map(|s| s.to_string()).collect();
            let add: Vec<String> = add.iter().map(|s| s.to_string()).collect();
            for_container(false, &add, &[], &opts).map(|c| c.seccomp)
        };
        let default = prog(&[], &[]).unwrap().expect("the default profile");
        assert_eq!(
            prog(&["seccomp=builtin"], &[]).unwrap().as_ref(),
            Some(&default)
        );
        assert_ne!(
            prog(&[], &["SYS_ADMIN"]).unwrap().as_ref(),
            Some(&default),
            "capabilities change the program"
        );
        assert_eq!(prog(&["seccomp=unconfined"], &[]).unwrap(), None);
        assert_eq!(prog(&["seccomp:unconfined"], &[]).unwrap(), None);
        // The docker CLI sends the profile file's contents.
        let profile = r#"seccomp={"defaultAction":"SCMP_ACT_ALLOW",
            "syscalls":[{"names":["mkdir"],"action":"SCMP_ACT_ERRNO"}]}"#;
        let custom = prog(&[profile], &[]).unwrap().unwrap();
        assert!(custom.len() < 12, "{custom:?}");
        let e = prog(&[r#"seccomp={"defaultAction":"SCMP_ACT_NOPE"}"#], &[]).unwrap_err();
        assert!(e.contains("unknown action"), "{e}");
        let e = prog(&["seccomp=/etc/profile.json"], &[]).unwrap_err();
        assert!(e.contains("decoding seccomp profile failed"), "{e}");
        let c = for_container(
            true,
            &[],
            &[],
            &[r#"seccomp={"defaultAction":"SCMP_ACT_ALLOW"}"#.into()],
        )
        .unwrap();
        assert_eq!(c.seccomp, None, "--privileged: unconfined");
    }
}
