//! What a container's process may do, applied by the shim just before exec (after all
//! mounts, `pivot_root` and `setns`, which the filter below would refuse):
//! - capabilities: Docker's default set (bounding set trimmed; inheritable and ambient
//!   cleared), adjusted by `--cap-add`/`--cap-drop`; `--privileged` keeps them all;
//! - a seccomp filter that refuses (EPERM) the syscalls Docker's default profile blocks for
//!   an unprivileged container (kernel modules, kexec, keyrings, bpf, perf, mount and
//!   namespace changes, clock setting, swap, reboot, ...), and refuses the x32 and i386 ABIs;
//!   a deny-list rather than Docker's allow-list, to stay small;
//! - `no_new_privs` with `--security-opt no-new-privileges`.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq, Eq)]
pub struct Confinement {
    /// Capabilities kept (numbers); None keeps all (privileged).
    pub capabilities: Option<Vec<u32>>,
    pub seccomp: bool,
    pub no_new_privs: bool,
}

/// Docker's default capabilities.
pub const DEFAULT_CAPS: &[&str] = &[
    "CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "MKNOD", "NET_RAW", "SETGID", "SETUID", "SETFCAP", "SETPCAP",
    "NET_BIND_SERVICE", "SYS_CHROOT", "KILL", "AUDIT_WRITE",
];

const CAP_NAMES: &[&str] = &[
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID", "SETPCAP",
    "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW", "IPC_LOCK", "IPC_OWNER",
    "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT", "SYS_ADMIN", "SYS_BOOT", "SYS_NICE",
    "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD", "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP",
    "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG", "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF",
    "CHECKPOINT_RESTORE",
];

fn cap_number(name: &str) -> Option<u32> {
    let n = name.trim().to_ascii_uppercase();
    let n = n.strip_prefix("CAP_").unwrap_or(&n);
    CAP_NAMES.iter().position(|c| *c == n).map(|i| i as u32)
}

/// The confinement for a container from its HostConfig fields.
pub fn for_container(privileged: bool, cap_add: &[String], cap_drop: &[String], security_opt: &[String]) -> Result<Confinement, String> {
    let no_new_privs = security_opt.iter().any(|o| matches!(o.as_str(), "no-new-privileges" | "no-new-privileges=true" | "no-new-privileges:true"));
    let seccomp = !privileged && !security_opt.iter().any(|o| o == "seccomp=unconfined" || o == "seccomp:unconfined");
    if privileged {
        return Ok(Confinement { capabilities: None, seccomp, no_new_privs });
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
    Ok(Confinement { capabilities: Some(caps), seccomp, no_new_privs })
}

/// Syscalls refused with EPERM (x86_64 numbers from libc).
const DENIED: &[libc::c_long] = &[
    libc::SYS_acct, libc::SYS_add_key, libc::SYS_bpf, libc::SYS_clock_adjtime, libc::SYS_clock_settime,
    libc::SYS_delete_module, libc::SYS_finit_module,
    libc::SYS_init_module, libc::SYS_ioperm, libc::SYS_iopl, libc::SYS_kcmp, libc::SYS_kexec_file_load,
    libc::SYS_kexec_load, libc::SYS_keyctl, libc::SYS_lookup_dcookie, libc::SYS_mount, libc::SYS_move_mount,
    libc::SYS_fsopen, libc::SYS_fsconfig, libc::SYS_fsmount, libc::SYS_fspick, libc::SYS_open_tree,
    libc::SYS_name_to_handle_at, libc::SYS_nfsservctl, libc::SYS_open_by_handle_at, libc::SYS_perf_event_open,
    libc::SYS_pivot_root, libc::SYS_quotactl, libc::SYS_reboot, libc::SYS_request_key,
    libc::SYS_setns, libc::SYS_settimeofday, libc::SYS_swapon, libc::SYS_swapoff, libc::SYS_sysfs,
    libc::SYS__sysctl, libc::SYS_umount2, libc::SYS_unshare, libc::SYS_uselib, libc::SYS_userfaultfd,
    libc::SYS_ustat, libc::SYS_vhangup,
];

const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

fn stmt(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt: 0, jf: 0, k }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// The classic-BPF program: wrong architecture → kill; x32 → EPERM; denied → EPERM; else allow.
pub fn filter() -> Vec<libc::sock_filter> {
    const LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    const JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    const JGE_K: u16 = (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16;
    const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
    let eperm = libc::SECCOMP_RET_ERRNO | libc::EPERM as u32;
    let mut p = vec![
        stmt(LD_W_ABS, 4), // seccomp_data.arch
        jump(JEQ_K, AUDIT_ARCH_X86_64, 1, 0),
        stmt(RET_K, libc::SECCOMP_RET_KILL_PROCESS),
        stmt(LD_W_ABS, 0), // seccomp_data.nr
        jump(JGE_K, X32_SYSCALL_BIT, 0, 1),
        stmt(RET_K, eperm),
    ];
    for nr in DENIED {
        p.push(jump(JEQ_K, *nr as u32, 0, 1));
        p.push(stmt(RET_K, eperm));
    }
    p.push(stmt(RET_K, libc::SECCOMP_RET_ALLOW));
    p
}

fn os_err(what: &str) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

/// Applies `c` to the calling process (the shim's child, just before it drops to the user).
pub fn apply(c: &Confinement) -> Result<(), String> {
    // SAFETY: prctl calls with integer arguments; the seccomp program outlives the call.
    unsafe {
        if c.no_new_privs && libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(os_err("setting no_new_privs"));
        }
        if c.seccomp {
            let prog = filter();
            let fprog = libc::sock_fprog { len: prog.len() as u16, filter: prog.as_ptr() as *mut _ };
            if libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &fprog as *const libc::sock_fprog) != 0 {
                return Err(os_err("installing the seccomp filter"));
            }
        }
        if let Some(keep) = &c.capabilities {
            let last = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok())
                .unwrap_or(CAP_NAMES.len() as u32 - 1);
            for cap in 0..=last {
                if !keep.contains(&cap) && libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) != 0 {
                    return Err(os_err(&format!("dropping capability {cap} from the bounding set")));
                }
            }
            libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong, 0, 0, 0);
            // Inheritable set: empty. Effective and permitted stay as they are until exec (the
            // shim still has to set the user): root's exec takes them from the bounding set,
            // a non-root user keeps none.
            let mut hdr = CapHeader { version: 0x2008_0522, pid: 0 };
            let mut data = [CapData::default(); 2];
            if libc::syscall(libc::SYS_capget, &mut hdr as *mut CapHeader, data.as_mut_ptr()) != 0 {
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
        assert!(caps.contains(&0) && !caps.contains(&21), "CHOWN kept, SYS_ADMIN dropped");
        assert!(c.seccomp && !c.no_new_privs);
        let c = for_container(false, &["NET_ADMIN".into()], &["cap_chown".into()], &["no-new-privileges".into()]).unwrap();
        let caps = c.capabilities.unwrap();
        assert!(caps.contains(&12) && !caps.contains(&0));
        assert!(c.no_new_privs);
        let c = for_container(false, &[], &["ALL".into()], &[]).unwrap();
        assert_eq!(c.capabilities, Some(vec![]));
        let c = for_container(true, &[], &[], &[]).unwrap();
        assert_eq!(c.capabilities, None);
        assert!(!c.seccomp);
        assert!(for_container(false, &["NOPE".into()], &[], &[]).is_err());
        assert!(!for_container(false, &[], &[], &["seccomp=unconfined".into()]).unwrap().seccomp);
    }

    #[test]
    fn filter_shape() {
        let f = filter();
        assert_eq!(f.len(), 6 + 2 * DENIED.len() + 1);
        assert_eq!(f.last().unwrap().k, libc::SECCOMP_RET_ALLOW);
    }
}
