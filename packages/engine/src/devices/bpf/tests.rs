use super::*;
use docker_api::devices::{parse_rule, MKNOD, READ, WRITE};

/// Runs `prog` as the kernel would on a device context: the subset of eBPF [`program`]
/// emits, every jump checked to land inside the program.
fn run(prog: &[Insn], kind: Kind, major: u32, minor: u32, access: u8) -> bool {
    let ty = match kind {
        Kind::Block => 1u32,
        Kind::Char => 2,
        Kind::All => unreachable!("a device is block or char"),
    };
    let ctx = [(u32::from(access) << 16) | ty, major, minor];
    let mut r = [0u64; 11];
    let mut r1_is_ctx = true;
    let mut pc = 0usize;
    for _ in 0..prog.len() + 1 {
        let i = prog[pc];
        let (dst, src) = (usize::from(i.regs & 0x0f), usize::from(i.regs >> 4));
        pc += 1;
        match i.code {
            LDX_MEM_W => {
                assert!(src == 1 && r1_is_ctx, "loads only from the context");
                assert!(
                    i.off >= 0 && i.off % 4 == 0 && i.off < 12,
                    "aligned, in bounds"
                );
                r[dst] = u64::from(ctx[i.off as usize / 4]);
            }
            ALU32_AND_K => r[dst] = u64::from((r[dst] as u32) & (i.imm as u32)),
            ALU32_RSH_K => r[dst] = u64::from((r[dst] as u32) >> i.imm),
            ALU32_MOV_K => r[dst] = u64::from(i.imm as u32),
            ALU32_MOV_X => r[dst] = u64::from(r[src] as u32),
            JMP32_JNE_K | JMP32_JNE_X => {
                let other = if i.code == JMP32_JNE_K {
                    i.imm as u32
                } else {
                    r[src] as u32
                };
                if r[dst] as u32 != other {
                    pc = (pc as i64 + i64::from(i.off)) as usize;
                }
            }
            EXIT => return r[0] == 1,
            c => panic!("unexpected opcode {c:#x}"),
        }
        if dst == 1 && i.code != JMP32_JNE_K && i.code != JMP32_JNE_X {
            r1_is_ctx = false;
        }
        assert!(pc < prog.len(), "a jump past the end");
    }
    panic!("the program did not exit (it has no backward jumps)")
}

#[test]
fn the_prologue_is_encoded_as_the_kernel_reads_it() {
    let p = program(&[]);
    // ldxw r2, [r1+0]; and32 r2, 0xffff; ...; mov32 r0, 0; exit
    assert_eq!(
        p[0],
        Insn {
            code: 0x61,
            regs: 0x12,
            off: 0,
            imm: 0
        }
    );
    assert_eq!(
        p[1],
        Insn {
            code: 0x54,
            regs: 0x02,
            off: 0,
            imm: 0xffff
        }
    );
    assert_eq!(
        p[4],
        Insn {
            code: 0x61,
            regs: 0x14,
            off: 4,
            imm: 0
        }
    );
    assert_eq!(
        p[5],
        Insn {
            code: 0x61,
            regs: 0x15,
            off: 8,
            imm: 0
        }
    );
    assert_eq!(p.len(), 8);
    assert_eq!(std::mem::size_of::<Insn>(), 8, "struct bpf_insn is 8 bytes");
    assert!(
        !run(&p, Kind::Char, 1, 3, READ),
        "no rules: everything denied"
    );
}

#[test]
fn the_default_rules_allow_dockers_devices_only() {
    let p = program(&super::super::default_rules());
    for (major, minor) in [
        (1, 3),
        (1, 5),
        (1, 7),
        (1, 8),
        (1, 9),
        (5, 0),
        (5, 1),
        (5, 2),
        (136, 0),
        (136, 7),
        (10, 200),
    ] {
        assert!(
            run(&p, Kind::Char, major, minor, READ | WRITE),
            "c {major}:{minor}"
        );
    }
    // The VM's disk, /dev/mem, /dev/kmsg, fuse: any mknod, no open.
    for (kind, major, minor) in [
        (Kind::Block, 254, 0),
        (Kind::Block, 8, 0),
        (Kind::Char, 1, 1),
        (Kind::Char, 1, 11),
        (Kind::Char, 10, 229),
    ] {
        assert!(
            run(&p, kind, major, minor, MKNOD),
            "mknod {kind:?} {major}:{minor}"
        );
        assert!(
            !run(&p, kind, major, minor, READ),
            "read {kind:?} {major}:{minor}"
        );
        assert!(
            !run(&p, kind, major, minor, WRITE),
            "write {kind:?} {major}:{minor}"
        );
        assert!(!run(&p, kind, major, minor, MKNOD | READ));
    }
    // A block device with a char device's numbers is another device.
    assert!(!run(&p, Kind::Block, 1, 3, READ));
}

#[test]
fn the_program_agrees_with_the_rules_on_every_case() {
    let sets: Vec<Vec<Rule>> = [
        &["c 1:3 r"][..],
        &["b 254:* rw", "c *:7 m"],
        &["a *:* rwm"],
        &["a 4:* w", "c 4:2 r", "b *:2 rm"],
        &["c 4294967295:0 rwm"],
    ]
    .iter()
    .map(|s| s.iter().map(|r| parse_rule(r).unwrap()).collect())
    .collect();
    for rules in &sets {
        let p = program(rules);
        for kind in [Kind::Block, Kind::Char] {
            for major in [0, 1, 2, 4, 7, 254, u32::MAX] {
                for minor in [0, 2, 3, 7] {
                    for access in 1..=7u8 {
                        let want = rules.iter().any(|r| r.allows(kind, major, minor, access));
                        assert_eq!(
                            run(&p, kind, major, minor, access),
                            want,
                            "{rules:?}: {kind:?} {major}:{minor} access {access}"
                        );
                    }
                }
            }
        }
    }
}

/// The kernel's verifier accepts the program (where this process may load BPF programs).
#[test]
fn the_kernel_loads_the_default_program() {
    let prog = program(&super::super::default_rules());
    match load(&prog, None) {
        Ok(_) => {}
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EPERM | libc::ENOSYS | libc::EACCES)
            ) =>
        {
            test_skip::skip(format!("this process may not load BPF programs: {e}"));
        }
        Err(e) => panic!("the verifier refused the program: {e}"),
    }
}
