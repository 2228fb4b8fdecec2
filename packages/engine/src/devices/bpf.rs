//! The device cgroup on cgroup v2: a `BPF_PROG_TYPE_CGROUP_DEVICE` program, attached to the
//! container's cgroup (`BPF_CGROUP_DEVICE`), that the kernel runs at each open and mknod of
//! a device node by a process of the cgroup. Like runc's devicefilter, the program is
//! hand-assembled ([`program`]): one block per allow rule, first match allows, the end
//! denies. It is loaded and attached with bpf(2) ([`attach`]); the cgroup holds it (not the
//! fd), so it stays while the cgroup lives, across engine restarts (live-restore).

use docker_api::devices::{Kind, Rule, ALL_ACCESS};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

/// One eBPF instruction, as `struct bpf_insn` lays it out (little-endian x86_64).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct Insn {
    pub code: u8,
    /// dst register in the low nibble, src in the high one.
    pub regs: u8,
    pub off: i16,
    pub imm: i32,
}

// Opcodes used (class | op | source).
const LDX_MEM_W: u8 = 0x61; // dst = *(u32 *)(src + off)
const ALU32_AND_K: u8 = 0x54;
const ALU32_RSH_K: u8 = 0x74;
const ALU32_MOV_K: u8 = 0xb4;
const ALU32_MOV_X: u8 = 0xbc;
const JMP32_JNE_K: u8 = 0x56; // if (u32)dst != imm goto +off
const JMP32_JNE_X: u8 = 0x5e; // if (u32)dst != (u32)src goto +off
const EXIT: u8 = 0x95;

// `struct bpf_cgroup_dev_ctx { u32 access_type; u32 major; u32 minor; }`:
// access_type is (access << 16) | type.
const DEV_BLOCK: i32 = 1; // BPF_DEVCG_DEV_BLOCK
const DEV_CHAR: i32 = 2; // BPF_DEVCG_DEV_CHAR

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src << 4) | (dst & 0x0f),
        off,
        imm,
    }
}

/// The program for `rules` (allow rules; what none allows is denied). Registers: r2 the
/// type, r3 the access asked for, r4 the major, r5 the minor; r1 scratch after the loads.
pub fn program(rules: &[Rule]) -> Vec<Insn> {
    let mut p = vec![
        insn(LDX_MEM_W, 2, 1, 0, 0),
        insn(ALU32_AND_K, 2, 0, 0, 0xffff),
        insn(LDX_MEM_W, 3, 1, 0, 0),
        insn(ALU32_RSH_K, 3, 0, 0, 16),
        insn(LDX_MEM_W, 4, 1, 4, 0),
        insn(LDX_MEM_W, 5, 1, 8, 0),
    ];
    for r in rules {
        // Each check jumps past the block's end when it fails: offsets are patched once the
        // block's length is known.
        let mut block: Vec<Insn> = Vec::new();
        match r.kind {
            Kind::All => {}
            Kind::Block => block.push(insn(JMP32_JNE_K, 2, 0, 0, DEV_BLOCK)),
            Kind::Char => block.push(insn(JMP32_JNE_K, 2, 0, 0, DEV_CHAR)),
        }
        if r.access & ALL_ACCESS != ALL_ACCESS {
            // (asked & allowed) must be what was asked.
            block.push(insn(ALU32_MOV_X, 1, 3, 0, 0));
            block.push(insn(ALU32_AND_K, 1, 0, 0, i32::from(r.access)));
            block.push(insn(JMP32_JNE_X, 1, 3, 0, 0));
        }
        if let Some(m) = r.major {
            block.push(insn(JMP32_JNE_K, 4, 0, 0, m as i32));
        }
        if let Some(m) = r.minor {
            block.push(insn(JMP32_JNE_K, 5, 0, 0, m as i32));
        }
        block.push(insn(ALU32_MOV_K, 0, 0, 0, 1));
        block.push(insn(EXIT, 0, 0, 0, 0));
        let len = block.len();
        for (i, ins) in block.iter_mut().enumerate() {
            if ins.code == JMP32_JNE_K || ins.code == JMP32_JNE_X {
                // To the first instruction after the block (relative to the next one).
                ins.off = (len - i - 1) as i16;
            }
        }
        p.extend(block);
    }
    p.push(insn(ALU32_MOV_K, 0, 0, 0, 0));
    p.push(insn(EXIT, 0, 0, 0, 0));
    p
}

#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    #[error("loading the device cgroup program: {0}{1}")]
    Load(std::io::Error, String),
    #[error("opening the cgroup {0}: {1}")]
    Open(String, std::io::Error),
    #[error("attaching the device cgroup program to {0}: {1}")]
    Attach(String, std::io::Error),
}

// bpf(2) commands and constants (linux/bpf.h).
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 2;

/// The `BPF_PROG_LOAD` part of `union bpf_attr` (fields up to expected_attach_type).
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// The `BPF_PROG_ATTACH` part of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct ProgAttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, initialised #[repr(C)] prefix of `union bpf_attr` for `cmd`,
    // and its size is passed with it; the kernel reads (and for a load, writes the log
    // through a pointer we own) only within that size.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn load(prog: &[Insn], log: Option<&mut [u8]>) -> std::io::Result<OwnedFd> {
    let license = c"Apache-2.0";
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: prog.len() as u32,
        insns: prog.as_ptr() as u64,
        license: license.as_ptr() as u64,
        ..Default::default()
    };
    attr.prog_name[..10].copy_from_slice(b"axion_devs");
    if let Some(buf) = log {
        attr.log_level = 1;
        attr.log_size = buf.len() as u32;
        attr.log_buf = buf.as_mut_ptr() as u64;
    }
    let fd = bpf(BPF_PROG_LOAD, &mut attr)?;
    // SAFETY: a successful BPF_PROG_LOAD returns a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Loads the program for `rules` and attaches it to the cgroup directory `cgroup`.
pub fn attach(cgroup: &Path, rules: &[Rule]) -> Result<(), BpfError> {
    let prog = program(rules);
    let fd = match load(&prog, None) {
        Ok(fd) => fd,
        Err(e) => {
            // Again with the verifier's log, for the message.
            let mut log = vec![0u8; 64 * 1024];
            let _ = load(&prog, Some(&mut log));
            let text = String::from_utf8_lossy(&log);
            let text = text.trim_end_matches('\0').trim();
            let detail = if text.is_empty() {
                String::new()
            } else {
                format!(" (verifier: {text})")
            };
            return Err(BpfError::Load(e, detail));
        }
    };
    let dir =
        std::fs::File::open(cgroup).map_err(|e| BpfError::Open(cgroup.display().to_string(), e))?;
    let mut attr = ProgAttachAttr {
        target_fd: dir.as_raw_fd() as u32,
        attach_bpf_fd: fd.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        // As runc: a parent's programs still run, and the kernel allows several per cgroup.
        attach_flags: BPF_F_ALLOW_MULTI,
        replace_bpf_fd: 0,
    };
    bpf(BPF_PROG_ATTACH, &mut attr)
        .map_err(|e| BpfError::Attach(cgroup.display().to_string(), e))?;
    Ok(())
}

#[cfg(test)]
mod tests;
