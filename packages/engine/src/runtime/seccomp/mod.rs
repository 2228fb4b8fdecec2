//! Docker seccomp profiles (the JSON format of `docker run --security-opt seccomp=FILE`)
//! compiled to a classic-BPF program for x86_64, as runc does through libseccomp.
//!
//! `default.json` is Docker's default profile, vendored unchanged from moby/profiles
//! (`seccomp/default.json`, commit cd3bed8061c7b7378b61fc6827c7885779417a75, the same profile
//! moby/moby ships as `profiles/seccomp/default.json`), Copyright Docker, Inc. and the Moby
//! authors, licensed under the Apache License 2.0 (https://www.apache.org/licenses/LICENSE-2.0).
//! It is an allow-list: anything not named answers EPERM; `clone` is allowed only without
//! namespace flags, `clone3` answers ENOSYS (so libc falls back to `clone`) and `personality`
//! only takes a few values, unless the container has CAP_SYS_ADMIN; capabilities added with
//! `--cap-add` unlock their syscalls (mount, unshare, setns with CAP_SYS_ADMIN, ptrace with
//! CAP_SYS_PTRACE, settimeofday with CAP_SYS_TIME, ...).
//!
//! What the compiler does with a profile (same meaning as moby + runc):
//! - `includes`/`excludes` are resolved against the container's capabilities (all listed caps
//!   must be held for `includes`, any held cap excludes), the architecture ("amd64") and the
//!   running kernel (`minKernel`);
//! - `args` conditions of one rule are ANDed; several rules for one syscall are ORed; when a
//!   rule names the same argument twice, its conditions become separate rules (runc does so);
//!   conditional rules are tried before an unconditional one; ops SCMP_CMP_EQ/NE/LT/LE/GT/GE/
//!   MASKED_EQ compare all 64 bits;
//! - actions: SCMP_ACT_ALLOW, SCMP_ACT_ERRNO (`errnoRet`, EPERM if absent; the default action
//!   takes `defaultErrnoRet`), SCMP_ACT_KILL/KILL_THREAD/KILL_PROCESS, SCMP_ACT_TRAP,
//!   SCMP_ACT_TRACE, SCMP_ACT_LOG; SCMP_ACT_NOTIFY (needs a listener) and unknown actions are
//!   errors;
//! - syscall names unknown on x86_64 (the profile serves every architecture) are skipped;
//! - only the native x86_64 ABI is let through: another audit architecture (i386 via `int 0x80`)
//!   kills the process and x32 system calls answer EPERM, whatever the profile says (`archMap`
//!   and `architectures` are accepted and otherwise ignored);
//! - as runc does, a syscall numbered above every syscall the profile names answers ENOSYS
//!   rather than the default error when the default action refuses, so programs built for
//!   newer kernels fall back instead of failing.

mod x86_64;

use serde::Deserialize;
use std::collections::BTreeMap;

/// Docker's default profile (see the module doc for its origin and license).
pub const DEFAULT_PROFILE: &str = include_str!("default.json");

/// The architecture name profiles use in `includes.arches` (Go's GOARCH).
const ARCH: &str = "amd64";
const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const X32_SYSCALL_BIT: u32 = 0x4000_0000;
const BPF_MAXINSNS: usize = 4096;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Profile {
    #[serde(default)]
    default_action: String,
    default_errno_ret: Option<u32>,
    #[serde(default)]
    syscalls: Option<Vec<Syscall>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Syscall {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    names: Option<Vec<String>>,
    action: String,
    #[serde(default)]
    errno_ret: Option<u32>,
    #[serde(default)]
    args: Option<Vec<Arg>>,
    #[serde(default)]
    includes: Option<Filter>,
    #[serde(default)]
    excludes: Option<Filter>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Filter {
    #[serde(default)]
    caps: Option<Vec<String>>,
    #[serde(default)]
    arches: Option<Vec<String>>,
    #[serde(default)]
    min_kernel: Option<String>,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(rename_all = "camelCase")]
struct Arg {
    index: u32,
    value: u64,
    #[serde(default)]
    value_two: u64,
    op: String,
}

/// What the filter is compiled for: the container's effective capabilities (names such as
/// "CAP_SYS_ADMIN") and the running kernel's version (major, minor).
pub struct Target<'a> {
    pub caps: &'a [String],
    pub kernel: (u32, u32),
}

/// The running kernel's (major, minor), from uname.
pub fn kernel_version() -> (u32, u32) {
    // SAFETY: uname fills a plain struct we own.
    let release = unsafe {
        let mut u: libc::utsname = std::mem::zeroed();
        if libc::uname(&mut u) != 0 {
            return (0, 0);
        }
        std::ffi::CStr::from_ptr(u.release.as_ptr())
            .to_string_lossy()
            .into_owned()
    };
    parse_version(&release).unwrap_or((0, 0))
}

/// "6.1.0-18-amd64" or "4.8" → (6, 1) / (4, 8).
fn parse_version(s: &str) -> Option<(u32, u32)> {
    let mut it = s.split(|c: char| !c.is_ascii_digit());
    let major = it.next()?.parse().ok()?;
    let minor = it
        .next()
        .filter(|m| !m.is_empty())
        .map(|m| m.parse().ok())
        .unwrap_or(Some(0))?;
    Some((major, minor))
}

/// x86_64 number of a syscall name, None if x86_64 has no such syscall.
pub fn syscall_number(name: &str) -> Option<u32> {
    x86_64::SYSCALLS
        .binary_search_by(|(n, _)| (*n).cmp(name))
        .ok()
        .map(|i| x86_64::SYSCALLS[i].1)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Eq(u64),
    Ne(u64),
    Lt(u64),
    Le(u64),
    Gt(u64),
    Ge(u64),
    MaskedEq { mask: u64, want: u64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cond {
    index: u32,
    op: Op,
}

#[derive(Debug, Clone)]
struct Rule {
    conds: Vec<Cond>,
    ret: u32,
}

fn errno_ret(errno: u32, what: &str) -> Result<u32, String> {
    if errno > 4095 {
        return Err(format!(
            "seccomp profile: {what}: errno {errno} is out of range (0-4095)"
        ));
    }
    Ok(libc::SECCOMP_RET_ERRNO | errno)
}

/// The seccomp return value for a profile action.
fn action(name: &str, errno: Option<u32>, default_errno: u32, what: &str) -> Result<u32, String> {
    Ok(match name {
        "SCMP_ACT_ALLOW" => libc::SECCOMP_RET_ALLOW,
        "SCMP_ACT_ERRNO" => errno_ret(errno.unwrap_or(default_errno), what)?,
        "SCMP_ACT_KILL" | "SCMP_ACT_KILL_THREAD" => libc::SECCOMP_RET_KILL_THREAD,
        "SCMP_ACT_KILL_PROCESS" => libc::SECCOMP_RET_KILL_PROCESS,
        "SCMP_ACT_TRAP" => libc::SECCOMP_RET_TRAP,
        "SCMP_ACT_TRACE" => libc::SECCOMP_RET_TRACE | (errno.unwrap_or(0) & 0xffff),
        "SCMP_ACT_LOG" => libc::SECCOMP_RET_LOG,
        "SCMP_ACT_NOTIFY" => {
            return Err(format!(
                "seccomp profile: {what}: action SCMP_ACT_NOTIFY needs a listener, \
                which this engine does not provide"
            ));
        }
        "" => return Err(format!("seccomp profile: {what}: no action given")),
        other => return Err(format!("seccomp profile: {what}: unknown action {other:?}")),
    })
}

fn cond(a: &Arg, what: &str) -> Result<Cond, String> {
    if a.index > 5 {
        return Err(format!(
            "seccomp profile: {what}: argument index {} is out of range (0-5)",
            a.index
        ));
    }
    let op = match a.op.as_str() {
        "SCMP_CMP_EQ" => Op::Eq(a.value),
        "SCMP_CMP_NE" => Op::Ne(a.value),
        "SCMP_CMP_LT" => Op::Lt(a.value),
        "SCMP_CMP_LE" => Op::Le(a.value),
        "SCMP_CMP_GT" => Op::Gt(a.value),
        "SCMP_CMP_GE" => Op::Ge(a.value),
        "SCMP_CMP_MASKED_EQ" => Op::MaskedEq {
            mask: a.value,
            want: a.value_two,
        },
        other => {
            return Err(format!(
                "seccomp profile: {what}: unknown argument operator {other:?}"
            ))
        }
    };
    Ok(Cond { index: a.index, op })
}

/// Whether a rule applies to this target (moby's includes/excludes semantics).
fn applies(s: &Syscall, t: &Target, what: &str) -> Result<bool, String> {
    let has_cap = |c: &String| {
        let c = c.trim().to_ascii_uppercase();
        let c = if c.starts_with("CAP_") {
            c
        } else {
            format!("CAP_{c}")
        };
        t.caps.iter().any(|h| h.eq_ignore_ascii_case(&c))
    };
    let min_kernel = |v: &str| -> Result<bool, String> {
        let want = parse_version(v)
            .ok_or_else(|| format!("seccomp profile: {what}: invalid minKernel {v:?}"))?;
        Ok(t.kernel >= want)
    };
    if let Some(x) = &s.excludes {
        if x.arches
            .as_ref()
            .is_some_and(|a| a.iter().any(|a| a == ARCH))
        {
            return Ok(false);
        }
        if x.caps.as_ref().is_some_and(|c| c.iter().any(has_cap)) {
            return Ok(false);
        }
        if let Some(k) = &x.min_kernel {
            if min_kernel(k)? {
                return Ok(false);
            }
        }
    }
    if let Some(i) = &s.includes {
        if i.arches
            .as_ref()
            .is_some_and(|a| !a.is_empty() && !a.iter().any(|a| a == ARCH))
        {
            return Ok(false);
        }
        if i.caps.as_ref().is_some_and(|c| !c.iter().all(has_cap)) {
            return Ok(false);
        }
        if let Some(k) = &i.min_kernel {
            if !min_kernel(k)? {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

/// Compiles a profile (JSON text) for `t`. Ok(None): the profile disables seccomp (no default
/// action and no syscalls, as Docker reads it).
pub fn compile(json: &str, t: &Target) -> Result<Option<Vec<libc::sock_filter>>, String> {
    let p: Profile =
        serde_json::from_str(json).map_err(|e| format!("decoding seccomp profile failed: {e}"))?;
    let syscalls = p.syscalls.unwrap_or_default();
    if p.default_action.is_empty() && syscalls.is_empty() {
        return Ok(None);
    }
    if p.default_action.is_empty() {
        return Err("seccomp profile: defaultAction is missing".into());
    }
    let default_ret = action(
        &p.default_action,
        p.default_errno_ret,
        libc::EPERM as u32,
        "defaultAction",
    )?;
    let mut rules: BTreeMap<u32, Vec<Rule>> = BTreeMap::new();
    for (i, s) in syscalls.iter().enumerate() {
        let names: Vec<&str> = match (&s.name, &s.names) {
            (Some(_), Some(n)) if !n.is_empty() => {
                return Err(format!(
                    "seccomp profile: syscalls[{i}]: both 'name' and 'names' are given, use either"
                ));
            }
            (Some(n), _) => vec![n.as_str()],
            (None, Some(n)) => n.iter().map(String::as_str).collect(),
            (None, None) => vec![],
        };
        let what = format!(
            "syscalls[{i}] ({})",
            names.first().copied().unwrap_or("no names")
        );
        // Validate the whole rule even if it does not apply here, so a bad profile fails alike
        // everywhere.
        let ret = action(&s.action, s.errno_ret, libc::EPERM as u32, &what)?;
        let conds = s
            .args
            .iter()
            .flatten()
            .map(|a| cond(a, &what))
            .collect::<Result<Vec<_>, _>>()?;
        if !applies(s, t, &what)? {
            continue;
        }
        let mut per_index = [0u8; 6];
        conds.iter().for_each(|c| per_index[c.index as usize] += 1);
        let split: Vec<Vec<Cond>> = if per_index.iter().any(|n| *n > 1) {
            conds.iter().map(|c| vec![*c]).collect()
        } else {
            vec![conds]
        };
        for name in names {
            let Some(nr) = syscall_number(name) else {
                continue;
            };
            for conds in &split {
                rules.entry(nr).or_default().push(Rule {
                    conds: conds.clone(),
                    ret,
                });
            }
        }
    }
    Ok(Some(assemble(&rules, default_ret)?))
}

// ---- classic BPF assembly ------------------------------------------------------------------

const LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
const JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
const JGT_K: u16 = (libc::BPF_JMP | libc::BPF_JGT | libc::BPF_K) as u16;
const JGE_K: u16 = (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16;
const JA: u16 = (libc::BPF_JMP | libc::BPF_JA) as u16;
const AND_K: u16 = (libc::BPF_ALU | libc::BPF_AND | libc::BPF_K) as u16;
const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;

fn stmt(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// Jump targets inside one rule, resolved once the rule's length is known.
#[derive(Clone, Copy)]
enum To {
    Next,
    CondEnd,
    Fail,
}

struct Ins {
    code: u16,
    k: u32,
    jt: To,
    jf: To,
}

fn ld(off: u32) -> Ins {
    Ins {
        code: LD_W_ABS,
        k: off,
        jt: To::Next,
        jf: To::Next,
    }
}

fn j(code: u16, k: u32, jt: To, jf: To) -> Ins {
    Ins { code, k, jt, jf }
}

/// One condition; falls through when it holds, jumps to `Fail` when not.
fn cond_code(c: &Cond) -> Vec<Ins> {
    let lo = 16 + 8 * c.index;
    let hi = lo + 4;
    let split = |v: u64| ((v >> 32) as u32, v as u32);
    use To::*;
    match c.op {
        Op::Eq(v) => {
            let (vh, vl) = split(v);
            vec![
                ld(hi),
                j(JEQ_K, vh, Next, Fail),
                ld(lo),
                j(JEQ_K, vl, Next, Fail),
            ]
        }
        Op::Ne(v) => {
            let (vh, vl) = split(v);
            vec![
                ld(hi),
                j(JEQ_K, vh, Next, CondEnd),
                ld(lo),
                j(JEQ_K, vl, Fail, Next),
            ]
        }
        Op::MaskedEq { mask, want } => {
            let ((mh, ml), (wh, wl)) = (split(mask), split(want));
            vec![
                ld(hi),
                Ins {
                    code: AND_K,
                    k: mh,
                    jt: Next,
                    jf: Next,
                },
                j(JEQ_K, wh, Next, Fail),
                ld(lo),
                Ins {
                    code: AND_K,
                    k: ml,
                    jt: Next,
                    jf: Next,
                },
                j(JEQ_K, wl, Next, Fail),
            ]
        }
        Op::Gt(v) => {
            let (vh, vl) = split(v);
            vec![
                ld(hi),
                j(JGT_K, vh, CondEnd, Next),
                j(JEQ_K, vh, Next, Fail),
                ld(lo),
                j(JGT_K, vl, Next, Fail),
            ]
        }
        Op::Ge(v) => {
            let (vh, vl) = split(v);
            vec![
                ld(hi),
                j(JGT_K, vh, CondEnd, Next),
                j(JEQ_K, vh, Next, Fail),
                ld(lo),
                j(JGE_K, vl, Next, Fail),
            ]
        }
        Op::Lt(v) => {
            let (vh, vl) = split(v);
            vec![
                ld(hi),
                j(JGT_K, vh, Fail, Next),
                j(JEQ_K, vh, Next, CondEnd),
                ld(lo),
                j(JGE_K, vl, Fail, Next),
            ]
        }
        Op::Le(v) => {
            let (vh, vl) = split(v);
            vec![
                ld(hi),
                j(JGT_K, vh, Fail, Next),
                j(JEQ_K, vh, Next, CondEnd),
                ld(lo),
                j(JGT_K, vl, Fail, Next),
            ]
        }
    }
}

/// A conditional rule: its conditions, then `RET ret`; any failed condition jumps past it.
fn rule_code(r: &Rule) -> Result<Vec<libc::sock_filter>, String> {
    let mut ins: Vec<(Ins, usize)> = Vec::new(); // (instruction, end index of its condition)
    for c in &r.conds {
        let code = cond_code(c);
        let end = ins.len() + code.len();
        ins.extend(code.into_iter().map(|i| (i, end)));
    }
    let fail = ins.len() + 1; // after the RET
    let off = |from: usize, t: To, cond_end: usize| -> Result<u8, String> {
        let target = match t {
            To::Next => from + 1,
            To::CondEnd => cond_end,
            To::Fail => fail,
        };
        u8::try_from(target - from - 1)
            .map_err(|_| "seccomp profile: a rule is too long to compile".to_string())
    };
    let mut out = Vec::with_capacity(fail);
    for (n, (i, end)) in ins.iter().enumerate() {
        out.push(jump(i.code, i.k, off(n, i.jt, *end)?, off(n, i.jf, *end)?));
    }
    out.push(stmt(RET_K, r.ret));
    Ok(out)
}

/// The whole program: architecture check, x32 refused, ENOSYS above the highest known
/// syscall (if the default refuses), one block per syscall, then the default action.
fn assemble(
    rules: &BTreeMap<u32, Vec<Rule>>,
    default_ret: u32,
) -> Result<Vec<libc::sock_filter>, String> {
    let mut p = vec![
        stmt(LD_W_ABS, 4), // seccomp_data.arch
        jump(JEQ_K, AUDIT_ARCH_X86_64, 1, 0),
        stmt(RET_K, libc::SECCOMP_RET_KILL_PROCESS),
        stmt(LD_W_ABS, 0), // seccomp_data.nr
        jump(JGE_K, X32_SYSCALL_BIT, 0, 1),
        stmt(RET_K, libc::SECCOMP_RET_ERRNO | libc::EPERM as u32),
    ];
    let refuses = !matches!(
        default_ret & libc::SECCOMP_RET_ACTION_FULL,
        libc::SECCOMP_RET_ALLOW | libc::SECCOMP_RET_LOG
    );
    if let (true, Some(max)) = (refuses, rules.keys().next_back()) {
        p.push(jump(JGT_K, *max, 0, 1));
        p.push(stmt(RET_K, libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32));
    }
    for (nr, rs) in rules {
        // Conditional rules first (in profile order), then the first unconditional one.
        let uncond = rs.iter().find(|r| r.conds.is_empty());
        let conds: Vec<&Rule> = rs.iter().filter(|r| !r.conds.is_empty()).collect();
        if conds.is_empty() {
            let r = uncond.expect("a syscall has at least one rule");
            p.push(jump(JEQ_K, *nr, 0, 1));
            p.push(stmt(RET_K, r.ret));
            continue;
        }
        let mut body = Vec::new();
        for r in conds {
            body.extend(rule_code(r)?);
        }
        if let Some(r) = uncond {
            body.push(stmt(RET_K, r.ret));
        }
        p.push(jump(JEQ_K, *nr, 1, 0));
        p.push(stmt(JA, body.len() as u32));
        p.extend(body);
        p.push(stmt(LD_W_ABS, 0)); // the conditions loaded arguments: reload nr
    }
    p.push(stmt(RET_K, default_ret));
    if p.len() > BPF_MAXINSNS {
        return Err(format!(
            "seccomp profile: the compiled filter has {} instructions, more than \
            the kernel's limit of {BPF_MAXINSNS}",
            p.len()
        ));
    }
    Ok(p)
}

/// Instructions packed into u64 (code << 48 | jt << 40 | jf << 32 | k), to travel in the
/// shim's JSON spec.
pub fn pack(p: &[libc::sock_filter]) -> Vec<u64> {
    p.iter()
        .map(|i| (i.code as u64) << 48 | (i.jt as u64) << 40 | (i.jf as u64) << 32 | i.k as u64)
        .collect()
}

pub fn unpack(p: &[u64]) -> Vec<libc::sock_filter> {
    p.iter()
        .map(|v| libc::sock_filter {
            code: (v >> 48) as u16,
            jt: (v >> 40) as u8,
            jf: (v >> 32) as u8,
            k: *v as u32,
        })
        .collect()
}

/// Installs `p` on the calling thread (the shim's child, just before exec). Without
/// no_new_privs the caller needs CAP_SYS_ADMIN, which the shim still has as root.
pub fn install(p: &[libc::sock_filter]) -> std::io::Result<()> {
    let fprog = libc::sock_fprog {
        len: p.len() as u16,
        filter: p.as_ptr() as *mut _,
    };
    // SAFETY: prctl with a pointer to a program that outlives the call.
    if unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER,
            &fprog as *const libc::sock_fprog,
        )
    } != 0
    {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests;
