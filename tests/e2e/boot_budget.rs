//! The boot budget (issue 22): in one run, boot the kernel floor (axion's kernel with an init
//! that powers off at once, as `cargo xtask bench` measures it: `xtask::bench::floor`) and
//! the qemu profile's initramfs image, the same QEMU settings for both (`run::vm_config`:
//! firmware, CPUs, memory, NIC), and fail when the image's guest-clock time to the engine
//! answering (the boot trace's `service docker ready`) exceeds the floor's guest-clock time
//! (the kernel's own timestamp of `Run /init as init process`) by more than [`RATIO`]. A
//! ratio of two figures from the same run holds on a noisy machine where absolute times do
//! not. Each round boots the floor and then the image, back to back, and the test takes the
//! round with the smallest ratio of [`ROUNDS`] (a burst of load that slows one boot of a
//! round does not fail it; a regression slows every round). The failure message prints the
//! traces of that round. It also prints how long the image took from its own handover to the
//! engine answering (init and the engine alone), the part a regression in them moves.
//!
//! The floor's clock is the kernel's printk time, not a shell's `cat /proc/uptime`: under
//! TCG on a loaded machine busybox sh and its forks alone took 0.25-1.2 s.

use std::time::Duration;

use axion_tests::{layout, require};
use xtask::bench::floor;
use xtask::image::Bootable;
use xtask::profile::Format;
use xtask::run::{self, Ports, RunDir};

const PROFILE: &str = "qemu";
const ROUNDS: usize = 3;
const TIMEOUT: Duration = Duration::from_secs(300);

/// The image may take this many times the floor's guest clock to the engine answering, in
/// the round with the smallest ratio. Measured on the shared 2-core machine under TCG: with
/// the engine of 2026-12-01 (it waited 1.5-3 s for the kernel's CRNG; OVMF), ratios per round
/// 1.25-3.06 in 4 runs (loads 6-14), the best of two or three 1.39-2.51; with a virtio RNG in
/// every VM and qboot (2026-12-02, 2 runs, load 5-14), rounds 1.75, 2.15, 2.23 and 1.88,
/// 2.28, 1.66; with the qemu profile's command line of issue 22 (no VT console, no legacy
/// ptys: the floor's kernel 0.9 s faster, so the same init and engine are a larger part of
/// the image's time), 2026-12-02 at load ~20: rounds 1.82, 1.51, 3.37, best 1.51. 2.5 (was
/// 3.0) is the largest best-of-rounds ratio seen plus a margin for a loaded machine. It is
/// loose because the ratio is mostly the kernel: the image's own handover comes 0.2-0.9 s
/// after the floor's (its 3.7 MB initramfs is unpacked first), the floor's handover swings
/// 1.8-3.5 s with load, and init plus the engine are 1.0-1.6 s of it; so it catches a
/// regression of about a second (the old CRNG wait in every round), not a tenth. The rounds
/// print the image's time from its own handover, the figure to watch for smaller ones.
const RATIO: f64 = 2.5;

struct Boot {
    /// Guest clock (s): the floor's handover to init, or the image's engine answering.
    guest: f64,
    /// The image's own handover (its trace's `kernel` step).
    handover: Option<f64>,
    /// What the failure message shows.
    trace: Vec<String>,
}

fn config(
    profile: &xtask::profile::Profile,
    bootable: &Bootable,
    dir: &std::path::Path,
) -> qemu::VmConfig {
    let run = RunDir { dir: dir.into() };
    std::fs::create_dir_all(&run.dir).unwrap();
    let _ = std::fs::remove_file(run.uefi_vars());
    let ports = Ports {
        ssh: qemu::free_port().unwrap(),
        docker: qemu::free_port().unwrap(),
    };
    let mut cfg = run::vm_config(profile, bootable, &run, ports, axion_tests::accel().0);
    // The engine's TLS material as first-boot settings, as `run` and the bench give them
    // (the floor gets them too: the same QEMU command line for both).
    let base = dir.parent().unwrap();
    let certs = run::docker_certs::ensure(&base.join("docker")).unwrap();
    let settings = run::first_boot::FirstBoot {
        hostname: None,
        ssh_authorized_keys: vec![],
        docker: Some(certs),
    };
    for (name, file) in settings.write(&base.join("first-boot")).unwrap() {
        cfg = cfg.fw_cfg_file(name, file);
    }
    cfg
}

fn boot_floor(
    profile: &xtask::profile::Profile,
    kernel: &std::path::Path,
    dir: &std::path::Path,
) -> Boot {
    let initrd = dir.join("floor-initramfs.cpio");
    floor::write_initramfs(&initrd).unwrap();
    let bootable = Bootable::Kernel {
        kernel: kernel.into(),
        initrd,
    };
    let mut cfg = config(profile, &bootable, &dir.join("floor"));
    cfg.no_reboot = true;
    let mut vm = qemu::Vm::spawn(cfg).unwrap();
    vm.wait_exit(TIMEOUT).expect("the floor powers off");
    let log = vm.serial_log().expect("a serial log").to_path_buf();
    let serial = std::fs::read_to_string(&log).unwrap_or_default();
    let guest = serial.lines().find_map(floor::handover).unwrap_or_else(|| {
        panic!(
            "no timed `Run /init as init process` line from the floor's kernel:\n{}",
            axion_tests::tail(&log, 40)
        )
    });
    Boot {
        guest,
        handover: None,
        trace: vec![format!(
            "floor: the kernel ran /init at {guest:.3} s on the guest clock (QEMU exited {:.2} s \
             after it started)",
            vm.elapsed().as_secs_f64()
        )],
    }
}

/// `axion: trace   1.802 s (+0.012) service docker ready` -> (1.802, "service docker ready").
fn trace_step(line: &str) -> Option<(f64, String)> {
    let rest = &line[line.find("axion: trace ")? + "axion: trace ".len()..];
    let (secs, rest) = rest.trim_start().split_once(" s ")?;
    let (_, name) = rest.split_once(") ")?;
    Some((secs.parse().ok()?, name.trim_end().to_string()))
}

fn boot_image(
    profile: &xtask::profile::Profile,
    bootable: &Bootable,
    dir: &std::path::Path,
) -> Boot {
    let mut cfg = config(profile, bootable, &dir.join("image"));
    // The trace on the console (and nothing else changed).
    if let Some(k) = &mut cfg.kernel {
        k.append.push_str(" axion.debug");
    }
    let mut vm = qemu::Vm::spawn(cfg).unwrap();
    let ready = vm
        .wait_ready(TIMEOUT)
        .expect("the image boots to its ready line");
    let log = vm
        .serial_log()
        .expect("the serial console goes to a file")
        .to_path_buf();
    let serial = std::fs::read_to_string(&log).unwrap_or_default();
    let trace: Vec<String> = serial
        .lines()
        .filter(|l| l.contains("axion: trace ") || l.contains("axion: ready in"))
        .map(|l| l.trim_end().to_string())
        .collect();
    let engine = trace
        .iter()
        .filter_map(|l| trace_step(l))
        .find(|(_, name)| name == "service docker ready")
        .map(|(t, _)| t);
    let guest = engine.unwrap_or_else(|| {
        panic!(
            "no `service docker ready` step in the boot trace (the engine did not answer before \
             the ready line?):\n{}",
            axion_tests::tail(&log, 60)
        )
    });
    let _ = ready;
    let handover = trace
        .iter()
        .filter_map(|l| trace_step(l))
        .find(|(_, name)| name == "kernel")
        .map(|(t, _)| t);
    Boot {
        guest,
        handover,
        trace,
    }
}

#[test]
fn image_boots_to_the_engine_within_its_budget_of_the_kernel_floor() {
    require!(
        axion_tests::have_qemu(),
        "qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)"
    );
    require!(
        std::path::Path::new(floor::HOST_BUSYBOX).is_file(),
        "{} is missing (apt-get install busybox-static): the floor's init needs it",
        floor::HOST_BUSYBOX
    );
    let bootable = axion_tests::image(PROFILE, Format::Initramfs).expect("the initramfs image");
    let Bootable::Kernel { kernel, .. } = &bootable else {
        panic!("the initramfs format boots by kernel, got {bootable:?}")
    };
    let layout = layout();
    let recipes = xtask::recipe::RecipeSet::load(&layout.recipes()).unwrap();
    let profile = xtask::profile::load_profile(&layout.root, PROFILE, &recipes).unwrap();
    let work = tempfile::tempdir().unwrap();
    let mut rounds = Vec::new();
    for round in 1..=ROUNDS {
        let f = boot_floor(&profile, kernel, work.path());
        let i = boot_image(&profile, &bootable, work.path());
        let own = i
            .handover
            .map(|h| format!(", {:.3} s after its own handover", i.guest - h))
            .unwrap_or_default();
        eprintln!(
            "round {round}: floor {:.3} s, image to the engine answering {:.3} s (guest \
             clock{own}), ratio {:.2}",
            f.guest,
            i.guest,
            i.guest / f.guest
        );
        rounds.push((f, i));
    }
    let (fb, ib) = rounds
        .iter()
        .min_by(|a, b| (a.1.guest / a.0.guest).total_cmp(&(b.1.guest / b.0.guest)))
        .unwrap();
    let (f, f_trace) = (fb.guest, fb.trace.join("\n"));
    let (i, i_trace) = (ib.guest, ib.trace.join("\n"));
    let ratio = i / f;
    eprintln!("best round: floor {f:.3} s, image {i:.3} s, ratio {ratio:.2} (budget {RATIO})");
    eprintln!("--- floor:\n{f_trace}\n--- image:\n{i_trace}");
    assert!(
        ratio <= RATIO,
        "boot over budget: the image's engine answered at {i:.3} s on the guest clock, \
         {ratio:.2}× the kernel floor's {f:.3} s (budget {RATIO}×)\n--- floor:\n{f_trace}\n\
         --- image:\n{i_trace}"
    );
}

#[test]
fn trace_lines_parse() {
    assert_eq!(
        trace_step("axion: trace   1.802 s (+0.012) service docker ready\r"),
        Some((1.802, "service docker ready".to_string()))
    );
    assert_eq!(trace_step("axion: ready in 1.9 s"), None);
}
