//! `cargo xtask bench [--quick] [--json FILE]`: build, size, boot and container figures of
//! axion, side by side with a conventional container host (the Debian peer, [`peer`]) and the
//! kernel floor ([`floor`]), all booted by the same QEMU settings in the same run.
//!
//! Each figure is the median of several runs with min and max (`--quick`: fewer runs, no
//! clean builds, and the peer only if it is cached already). Outputs: a Markdown table on
//! stdout and in its dated section of docs/benchmarks.md (`--vmd-only`, `--build-only`,
//! `--update-only`: their own sections),
//! JSON (`--json FILE`, default `out/bench/bench.json`) and an SVG bar chart of the boot times
//! (`out/bench/bench.svg`). Nothing is invented: a figure that cannot be taken is
//! `n/a (why)`.
//!
//! How each figure is taken:
//! - Clean build: each package of the qemu profile built once into an empty temporary
//!   `$AXION_CACHE` that shares only the verified downloads (full run only; the kernel alone
//!   is ~8 min on 2 cores). No-op build: `cargo xtask build` run as a user would, with
//!   everything cached (the goal is under 2 s).
//! - Image assembly: `image::assemble` of each profile's formats with the packages cached.
//! - Sizes: every file of every format of the qemu and vsphere profiles: apparent size, and
//!   bytes on disk (allocated blocks) where they differ (the sparse raw disk).
//! - Boot: wall time from starting QEMU to a line on the serial console, polled every 20 ms.
//!   axion: init's ready line (host-measured, and init's own CLOCK_BOOTTIME figure), by direct
//!   kernel boot of the initramfs format (as the peer and the floor boot) and from the qcow2
//!   disk through SeaBIOS and GRUB (the firmware `run` picks: run::firmware). Peer:
//!   multi-user.target reached and `docker info` answering (marker units on ttyS0). Docker
//!   API: the host's first
//!   `GET /_ping` answered 200 through the forwarded port (axion: over mutual TLS, with
//!   certificates handed to the guest as first-boot settings through fw_cfg, as `run` does;
//!   the peer's dockerd: plain TCP).
//! - Memory: MemTotal − MemAvailable from the guest's /proc/meminfo, 5 s after the system is
//!   up: axion over SSH (dropbear, key as a first-boot setting through fw_cfg), the peer by a
//!   unit that prints it on ttyS0 5 s after `docker info` answered. At the same moment the
//!   container engine's own resident memory (VmRSS): axion's `engine`, the peer's `dockerd`
//!   plus `containerd` (the daemons a `docker run` needs there).
//! - `docker run --rm busybox true`: the host's docker CLI against the guest's API, after
//!   `docker load` of a one-layer busybox image made here from the host's static busybox (no
//!   registry needed).
//! - `docker build` ([`docker_build`]): a 10-step Dockerfile built with the classic builder
//!   by the host's CLI, first build, no-change rebuild and one-file-change rebuild, in the VM
//!   of the `docker run` figure (`--build-only`: these alone, one boot).
//! - VM per container ([`vmd`]): `docker run --rm busybox true` against `axion-vmd`, each
//!   container's VM cloned from the saved template, and booted cold as the baseline; the
//!   image from a docker-registry on 127.0.0.1; the two modes' runs alternate. Also the
//!   daemon's start (template boot + save). The VMs have the daemon's default vCPUs (the
//!   host's cores, at most 4) and 512 MiB.
//! - In-place update ([`update`], `--update-only`): bytes `axion-update apply` downloads and
//!   the time from `apply` to the new version's engine answering `/_ping`, one run.
//! - The containerd shim ([`containerd`], `--containerd-only`): `ctr run` to the first
//!   output and a pod's sandbox start through the CRI, beside vmd's `docker run`.
//! - Builds with a shared cache ([`builds`], `--builds`): each vsphere package from an empty
//!   cache, pushed, and pulled into another empty cache; `image --profile vsphere` end to end.
//! - The VMs: the qemu profile's virtual hardware for all three (2 vCPU, 1 GiB, `run`'s firmware
//!   and NIC), TCG unless the KVM probe shows a guest running.

pub mod analyze;
pub mod builds;
pub mod containerd;
pub mod docker_build;
pub mod floor;
pub mod peer;
pub mod report;
pub mod stats;
pub mod update;
pub mod vmd;
pub mod waterfall;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::build;
use crate::image::{find_bootable, Bootable};
use crate::layout::Layout;
use crate::profile::{self, Format, Profile};
use crate::recipe::RecipeSet;
use crate::run::{self, Ports, RunDir};
use report::{Meta, Report, Row};
use stats::{Unit, Value};

/// `cargo xtask bench`'s options.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Args {
    /// Fewer runs; skip clean builds and the peer build when it is not cached.
    #[arg(long)]
    pub quick: bool,
    /// Where to write the JSON (default out/bench/bench.json).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Only build (or find) the Debian peer, measure nothing.
    #[arg(long)]
    pub prepare: bool,
    /// Only the VM-per-container figures ([`vmd`]), printed and written to their section of
    /// docs/benchmarks.md.
    #[arg(long)]
    pub vmd_only: bool,
    /// Only the containerd shim's figures ([`containerd`]) beside axion-vmd's `docker run`,
    /// printed and written to their section of docs/benchmarks.md. Needs root and
    /// Debian's containerd.
    #[arg(long)]
    pub containerd_only: bool,
    /// Only the build figures ([`builds`]): each package of the vsphere profile from an empty
    /// cache and from a warm registry, and `image --profile vsphere` end to end; with --quick
    /// the kernel's clean build is its cached log's figure.
    #[arg(long)]
    pub builds: bool,
    /// Only the `docker build` figures ([`docker_build`]): the qemu profile booted once,
    /// printed and written to their section of docs/benchmarks.md.
    #[arg(long)]
    pub build_only: bool,
    /// Only the in-place update figures ([`update`]): bytes `axion-update apply` downloads
    /// and the time from `apply` to the new version answering `/_ping`; one run, written to
    /// their section of docs/benchmarks.md.
    #[arg(long)]
    pub update_only: bool,
    /// Timed `docker run`s per mode (default 5, or 2 with --quick), and timed rebuilds of
    /// each kind.
    #[arg(long, value_name = "N")]
    pub runs: Option<usize>,
}

struct Runs {
    boot: usize,
    peer: usize,
    noop: usize,
    docker_run: usize,
}

impl Runs {
    fn for_opts(opts: &Args) -> Runs {
        let mut runs = if opts.quick {
            Runs {
                boot: 2,
                peer: 1,
                noop: 2,
                docker_run: 2,
            }
        } else {
            Runs {
                boot: 5,
                peer: 3,
                noop: 5,
                docker_run: 5,
            }
        };
        if let Some(n) = opts.runs {
            runs.docker_run = n.max(1);
        }
        runs
    }
}

const PROFILES: [&str; 2] = ["qemu", "vsphere"];
const BOOT_TIMEOUT: Duration = Duration::from_secs(300);

pub fn bench(layout: &Layout, opts: &Args) -> Result<()> {
    if opts.prepare {
        let (peer, built) = peer::ensure(layout)?;
        eprintln!(
            "bench: peer {} {}",
            if built { "built in" } else { "cached in" },
            peer.dir.display()
        );
        return Ok(());
    }
    if opts.builds {
        crate::doctor::ensure(&[crate::doctor::Need::Build, crate::doctor::Need::Image])?;
        return builds::measure(layout, opts.quick);
    }
    crate::doctor::ensure(&[
        crate::doctor::Need::Image,
        crate::doctor::Need::Run,
        crate::doctor::Need::Bench,
    ])?;
    let runs = Runs::for_opts(opts);
    if opts.vmd_only || opts.containerd_only {
        return vmd_only(layout, runs.docker_run, opts.containerd_only);
    }
    if opts.update_only {
        return update::update_only(layout);
    }
    if opts.build_only {
        let out = layout.root.join("out").join("bench");
        std::fs::create_dir_all(&out)
            .with_context(|| format!("cannot create {}", out.display()))?;
        let busybox_tar = out.join("busybox-image.tar");
        write_busybox_image(&busybox_tar)?;
        return docker_build::build_only(layout, runs.docker_run, &busybox_tar);
    }
    let load_at_start = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_default();
    let out = layout.root.join("out").join("bench");
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let recipes = RecipeSet::load(&layout.recipes())?;
    let qemu_profile = profile::load_profile(&layout.root, "qemu", &recipes)?;
    let mut rows = Vec::new();
    let mut notes = Vec::new();

    // Builds: make sure everything is cached first (that is not a figure), then measure.
    let step = crate::ui::step("bench: package builds");
    let staged = build::build_packages(
        layout,
        &recipes,
        &qemu_profile.spec.profile.packages,
        &build::BuildOptions::default(),
    )?;
    step.finish_and_clear();
    let recorded_path = layout.cache.join("bench").join("clean-builds.json");
    if opts.quick {
        // The cached entries' own build logs end with `== built in N s`; else what the last
        // full run recorded.
        let recorded = read_recorded(&recorded_path);
        for s in &staged {
            let from_log = s
                .tree
                .parent()
                .and_then(|d| std::fs::read_to_string(d.join("build.log")).ok())
                .and_then(|t| logged_build_seconds(&t));
            let from_run = recorded.as_ref().and_then(|r| {
                r.seconds
                    .iter()
                    .find(|(n, _)| *n == s.name)
                    .map(|(_, v)| (*v, r.date.clone()))
            });
            let (label, v) = match (from_log, from_run) {
                (Some(secs), _) => (
                    format!("clean build: {} (from its build log)", s.name),
                    Value::one(secs),
                ),
                (None, Some((secs, date))) => (
                    format!("clean build: {} (full bench run {date})", s.name),
                    Value::one(secs),
                ),
                (None, None) => (
                    format!("clean build: {}", s.name),
                    Value::na("not rebuilt in --quick; its build log has no duration"),
                ),
            };
            rows.push(Row::new("build", &label, Unit::Seconds, v, Value::None));
        }
    } else {
        let measured = clean_builds(layout, &recipes, &qemu_profile.spec.profile.packages)?;
        let mut rec = Recorded {
            date: command_line("date", &["-u", "+%Y-%m-%d"])
                .map(|s| s.trim().to_owned())
                .unwrap_or_default(),
            seconds: Vec::new(),
        };
        for (name, v) in measured {
            if let Some(m) = v.median() {
                rec.seconds.push((name.clone(), m));
            }
            rows.push(Row::new(
                "build",
                &format!("clean build: {name} (1 run)"),
                Unit::Seconds,
                v,
                Value::None,
            ));
        }
        crate::image::write_atomic(
            &recorded_path,
            serde_json::to_string_pretty(&rec)?.as_bytes(),
        )?;
    }
    let noop = noop_builds(layout, runs.noop)?;
    rows.push(Row::new(
        "build",
        "no-op `cargo xtask build` (goal < 2 s)",
        Unit::Seconds,
        noop,
        Value::None,
    ));

    // Images, assembled when missing or stale (always, timed, in a full run).
    for name in PROFILES {
        let p = profile::load_profile(&layout.root, name, &recipes)?;
        let t = ensure_images(layout, &recipes, &p, !opts.quick)?;
        if let Some(secs) = t {
            rows.push(Row::new(
                "build",
                &format!("image assembly: {name} ({})", formats_of(&p)),
                Unit::Seconds,
                Value::one(secs),
                Value::None,
            ));
        }
    }

    // The peer: built now unless --quick (then only if cached).
    let peer = if opts.quick {
        match peer::cached(layout)? {
            Some(p) => Some(p),
            None => {
                notes.push(
                    "the Debian peer is not built yet and --quick does not build it: run \
                     `cargo xtask bench` (or `--prepare`) once"
                        .into(),
                );
                None
            }
        }
    } else {
        Some(peer::ensure(layout)?.0)
    };

    // Sizes.
    for name in PROFILES {
        let p = profile::load_profile(&layout.root, name, &recipes)?;
        for (file, apparent, on_disk) in image_sizes(&layout.out(p.name()), p.name())? {
            let ext = file
                .rsplit_once('.')
                .map(|(_, e)| e)
                .unwrap_or(&file)
                .to_owned();
            let peer_v = match (ext.as_str(), &peer) {
                ("qcow2", Some(pe)) if name == "qemu" => {
                    Value::one(std::fs::metadata(&pe.qcow2)?.len() as f64)
                }
                _ => Value::None,
            };
            rows.push(Row::new(
                "size",
                &format!("{name}: {file}"),
                Unit::Bytes,
                Value::one(apparent as f64),
                peer_v,
            ));
            // Only sparse files: allocation rounding is not worth a row.
            if (on_disk as f64) < apparent as f64 * 0.9 {
                rows.push(Row::new(
                    "size",
                    &format!("{name}: {file} on disk (sparse)"),
                    Unit::Bytes,
                    Value::one(on_disk as f64),
                    Value::None,
                ));
            }
        }
    }

    // Boots.
    let bootable = find_bootable(&layout.out("qemu"), "qemu", Format::Initramfs)
        .context("the qemu profile's initramfs format is missing from out/qemu")?;
    let Bootable::Kernel { kernel, .. } = &bootable else {
        bail!("the initramfs format is not a kernel and an initramfs")
    };
    let (accel, accel_reason) = qemu::choose_accel(Some(kernel));
    eprintln!("bench: accelerator {} ({accel_reason})", accel.name());
    let busybox_tar = out.join("busybox-image.tar");
    write_busybox_image(&busybox_tar)?;
    let docker_cli = which("docker");
    let bench = Bench {
        layout,
        profile: &qemu_profile,
        bootable: bootable.clone(),
        accel,
        out: out.clone(),
        busybox_tar,
        docker_cli,
    };

    let (floor, floor_guest) = bench.floor(runs.boot)?;
    let floor_median = floor.median();
    let floor_guest_median = floor_guest.median();
    rows.push(
        Row::new(
            "boot",
            "kernel floor (QEMU start → exit, init powers off)",
            Unit::Seconds,
            floor,
            Value::None,
        )
        .boot(),
    );

    let engine = qemu_profile
        .spec
        .profile
        .packages
        .iter()
        .any(|p| p.contains("engine"));
    let ax = bench.axion_direct(runs.boot, runs.docker_run, engine)?;
    let disk = bench.axion_disk(runs.boot)?;
    let vm_per_container = {
        let disk = find_bootable(&layout.out("qemu"), "qemu", Format::Qcow2);
        let disk_path = match &disk {
            Some(Bootable::Disk { path, .. }) => Some(path.as_path()),
            _ => None,
        };
        let Bootable::Kernel { kernel, initrd } = &bootable else {
            unreachable!("checked above")
        };
        let guest = vmd::Guest {
            kernel,
            initrd,
            disk: disk_path,
            accel,
        };
        match vmd::measure(layout, &guest, &out, runs.docker_run) {
            Ok(f) => f,
            Err(e) => {
                let why = first_line(&format!("{e:#}"));
                vmd::VmdFigures {
                    start: Value::na(why.clone()),
                    clone_run: Value::na(why.clone()),
                    cold_run: Value::na(why.clone()),
                    pool_run: Value::na(why.clone()),
                    idle_pss: Value::na(why.clone()),
                    pooled_pss: Value::na(why),
                }
            }
        }
    };
    let pe = match &peer {
        Some(p) => Some(bench.peer(p, runs.peer, runs.docker_run)?),
        None => None,
    };
    let peer_or = |f: &dyn Fn(&PeerFigures) -> Value| match &pe {
        Some(x) => f(x),
        None => Value::na("peer not built"),
    };
    rows.push(
        Row::new(
            "boot",
            "ready (direct kernel boot; peer: multi-user.target)",
            Unit::Seconds,
            ax.ready_host.clone(),
            peer_or(&|p| p.multi_user.clone()),
        )
        .boot(),
    );
    rows.push(Row::new(
        "boot",
        "ready, guest's own clock (CLOCK_BOOTTIME / uptime)",
        Unit::Seconds,
        ax.ready_guest.clone(),
        peer_or(&|p| p.multi_user_guest.clone()),
    ));
    rows.push(Row::new(
        "boot",
        "kernel floor, guest's own clock (the kernel's `Run /init`)",
        Unit::Seconds,
        floor_guest,
        Value::None,
    ));
    rows.push(
        Row::new(
            "boot",
            "ready from the qcow2 disk (firmware + GRUB)",
            Unit::Seconds,
            disk,
            Value::None,
        )
        .boot(),
    );
    rows.push(
        Row::new(
            "boot",
            "Docker API answers /_ping",
            Unit::Seconds,
            ax.api.clone(),
            peer_or(&|p| p.api.clone()),
        )
        .boot(),
    );
    rows.push(
        Row::new(
            "boot",
            "`docker info` answers in the guest",
            Unit::Seconds,
            Value::None,
            peer_or(&|p| p.docker_info.clone()),
        )
        .boot(),
    );
    rows.push(Row::new(
        "run",
        "memory used after boot (MemTotal − MemAvailable)",
        Unit::Mib,
        ax.mem.clone(),
        peer_or(&|p| p.mem.clone()),
    ));
    rows.push(Row::new(
        "run",
        "container engine's memory at idle (VmRSS; peer: dockerd + containerd)",
        Unit::Mib,
        ax.engine_rss.clone(),
        peer_or(&|p| p.daemon_rss.clone()),
    ));
    rows.push(Row::new(
        "run",
        "`docker run --rm busybox true`",
        Unit::Seconds,
        ax.docker_run.clone(),
        peer_or(&|p| p.docker_run.clone()),
    ));
    for (label, ax_v, peer_v) in [
        (
            "`docker build` of a 10-step Dockerfile, first build (classic builder)",
            ax.build.first.clone(),
            peer_or(&|p| p.build.first.clone()),
        ),
        (
            "`docker build`, rebuild with nothing changed (all steps cached)",
            ax.build.no_change.clone(),
            peer_or(&|p| p.build.no_change.clone()),
        ),
        (
            "`docker build`, rebuild after a one-file change",
            ax.build.one_file.clone(),
            peer_or(&|p| p.build.one_file.clone()),
        ),
    ] {
        rows.push(Row::new("run", label, Unit::Seconds, ax_v, peer_v));
    }
    rows.push(Row::new(
        "vmd",
        "VM per container: daemon start (template boot + save)",
        Unit::Seconds,
        vm_per_container.start,
        Value::None,
    ));
    rows.push(Row::new(
        "vmd",
        "VM per container: `docker run --rm busybox true`, from the warm pool",
        Unit::Seconds,
        vm_per_container.pool_run.clone(),
        Value::None,
    ));
    rows.push(Row::new(
        "vmd",
        "VM per container: idle container VM's QEMU, proportional set size",
        Unit::Mib,
        vm_per_container.idle_pss.clone(),
        Value::None,
    ));
    rows.push(Row::new(
        "vmd",
        "VM per container: `docker run --rm busybox true`, cloned VM",
        Unit::Seconds,
        vm_per_container.clone_run.clone(),
        Value::None,
    ));
    rows.push(Row::new(
        "vmd",
        "VM per container: `docker run --rm busybox true`, cold-booted VM",
        Unit::Seconds,
        vm_per_container.cold_run.clone(),
        Value::None,
    ));
    if let (Some(clone), Some(cold)) = (
        vm_per_container.clone_run.median(),
        vm_per_container.cold_run.median(),
    ) {
        notes.push(format!(
            "VM per container: a clone runs a container {:.1}× faster than a cold \
             boot (goal: at least 5×)",
            cold / clone
        ));
    }
    if let (Some(pool), Some(cold)) = (
        vm_per_container.pool_run.median(),
        vm_per_container.cold_run.median(),
    ) {
        notes.push(format!(
            "VM per container: a run from the warm pool is {:.1}× faster than a cold boot \
             (goal: at least 10×, and at most 0.45 s)",
            cold / pool
        ));
    }

    if let (Some(ready), Some(handover)) = (ax.ready_guest.median(), floor_guest_median) {
        notes.push(format!(
            "guest clock: axion is ready (its engine answering) {:.2} s after the kernel floor \
             hands over to its init (goal: at most 0.5 s)",
            ready - handover
        ));
    }
    if let Some(api) = ax.api.median() {
        let peer = pe.as_ref().and_then(|p| p.api.median());
        notes.push(format!(
            "QEMU start to /_ping answering: {} (goal: at most 3 s){}",
            Unit::Seconds.format(api),
            peer.map_or(String::new(), |p| format!(
                "; the Debian peer {:.1}× slower (goal: at least 15×)",
                p / api
            ))
        ));
    }
    notes.push(format!(
        "boot figures are wall time from starting QEMU; \"= N× floor\" divides by the kernel floor \
         ({}); the peer boots its own Debian kernel and initrd by direct kernel boot",
        floor_median.map(|f| Unit::Seconds.format(f)).unwrap_or_else(|| "n/a".into())
    ));
    notes.push(format!(
        "VMs: the qemu profile's hardware for all three ({}); accelerator: {}",
        vm_description(&qemu_profile),
        accel_reason
    ));
    if let Some(p) = &peer {
        notes.push(format!(
            "peer: Debian {} minbase + {} (debootstrap; one ext4 root made by \
             mke2fs -d, as qcow2; cached in {})",
            peer::SUITE,
            peer::PACKAGES.join(", "),
            p.dir.display()
        ));
    }
    if !staged.is_empty() {
        notes.push(format!(
            "packages: {}",
            staged
                .iter()
                .map(|s| format!("{} {}", s.name, s.version))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }

    let report = Report {
        meta: Meta {
            load_average: load_at_start,
            ..meta(accel, &accel_reason, &qemu_profile, opts.quick)
        },
        floor_seconds: floor_median,
        rows,
        notes,
    };
    print!("{}", report.table());
    write_docs_section(layout, "full", &report.table())?;
    write_readme_section(layout, &report.headline())?;
    let json = opts.json.clone().unwrap_or_else(|| out.join("bench.json"));
    crate::image::write_atomic(&json, report.json().as_bytes())?;
    let svg = out.join("bench.svg");
    crate::image::write_atomic(&svg, report.svg().as_bytes())?;
    eprintln!("bench: wrote {} and {}", json.display(), svg.display());
    let peer_trace = match &pe {
        Some(p) => p.trace.clone(),
        None => Err("peer not built".to_owned()),
    };
    write_waterfall(layout, &out, &report.meta, &ax.trace, &peer_trace)?;
    Ok(())
}

/// The boot waterfall beside the table: `out/bench/boot-waterfall.svg`, and the copy the docs
/// show (`docs/boot-waterfall.svg`): axion's boot trace and, below it on the same time scale,
/// the Debian peer's boot from `systemd-analyze`; with no axion trace, why not.
fn write_waterfall(
    layout: &Layout,
    out: &Path,
    meta: &Meta,
    trace: &std::result::Result<Vec<waterfall::Step>, String>,
    peer: &std::result::Result<Vec<waterfall::Step>, String>,
) -> Result<()> {
    let steps = match trace {
        Ok(s) => s,
        Err(why) => {
            eprintln!("bench: no boot waterfall: no boot trace ({why})");
            return Ok(());
        }
    };
    let title = format!(
        "boot to the Docker API, guest clock, {} UTC, {}, load {}",
        meta.date, meta.accel, meta.load_average
    );
    let mut panels = vec![(
        "axion: init's boot trace (CLOCK_BOOTTIME)".to_owned(),
        steps.clone(),
    )];
    match peer {
        Ok(p) => panels.push((
            format!(
                "Debian {} peer: systemd-analyze time and critical-chain docker.service",
                peer::SUITE
            ),
            p.clone(),
        )),
        Err(why) => eprintln!("bench: the waterfall has no peer panel: {why}"),
    }
    let svg = waterfall::panels(&title, &panels);
    let file = out.join("boot-waterfall.svg");
    crate::image::write_atomic(&file, svg.as_bytes())?;
    let docs = layout.root.join("docs").join("boot-waterfall.svg");
    crate::image::write_atomic(&docs, svg.as_bytes())?;
    eprintln!("bench: wrote {} and {}", file.display(), docs.display());
    Ok(())
}

/// `--vmd-only`: the qemu profile's image (built if missing or stale), the three vmd modes, the
/// figures and their ratio on stdout. For iterating on clone speed without the full bench.
/// `--containerd-only` (`containerd`): the shim's figures beside vmd's, in their section.
fn vmd_only(layout: &Layout, runs: usize, containerd: bool) -> Result<()> {
    let recipes = RecipeSet::load(&layout.recipes())?;
    let p = profile::load_profile(&layout.root, "qemu", &recipes)?;
    ensure_images(layout, &recipes, &p, false)?;
    let out = layout.root.join("out").join("bench");
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let bootable = find_bootable(&layout.out("qemu"), "qemu", Format::Initramfs)
        .context("the qemu profile's initramfs format is missing from out/qemu")?;
    let Bootable::Kernel { kernel, initrd } = &bootable else {
        bail!("the initramfs format is not a kernel and an initramfs")
    };
    let disk = find_bootable(&layout.out("qemu"), "qemu", Format::Qcow2);
    let disk = match &disk {
        Some(Bootable::Disk { path, .. }) => Some(path.as_path()),
        _ => None,
    };
    let (accel, reason) = qemu::choose_accel(Some(kernel));
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    eprintln!(
        "bench: vmd only, {runs} runs per mode, accelerator {} ({reason}), load {}",
        accel.name(),
        load.split_whitespace().next().unwrap_or("?")
    );
    let guest = vmd::Guest {
        kernel,
        initrd,
        disk,
        accel,
    };
    let date = command_line("date", &["-u", "+%Y-%m-%d %H:%M"]).unwrap_or_default();
    if containerd {
        let header = format!(
            "{} UTC · `cargo xtask bench --containerd-only --runs {runs}` · shim VMs TCG, \
             1 vCPU, 512 MiB; vmd's {} · load {} at start",
            date.trim(),
            accel.name().to_uppercase(),
            load.split_whitespace().next().unwrap_or("?")
        );
        let text = containerd::containerd_only(layout, &guest, &out, runs, &header)?;
        print!("{text}");
        return write_docs_section(layout, "containerd-only", &text);
    }
    let f = vmd::measure(layout, &guest, &out, runs)?;
    let mut text = format!(
        "{} UTC · `cargo xtask bench --vmd-only --runs {runs}` · {} · load {} at start · \
         the three modes' runs alternate; the pooled runs each find the pool full\n\n",
        date.trim(),
        accel.name().to_uppercase(),
        load.split_whitespace().next().unwrap_or("?")
    );
    text.push_str(&format!(
        "- daemon start (template boot + save): {}\n",
        f.start.cell(Unit::Seconds)
    ));
    text.push_str(&format!(
        "- `docker run --rm busybox true`, from the warm pool (`axion-vmd --pool 2`): {}\n",
        f.pool_run.cell(Unit::Seconds)
    ));
    text.push_str(&format!(
        "- `docker run --rm busybox true`, cloned VM (`--pool 0`): {}\n",
        f.clone_run.cell(Unit::Seconds)
    ));
    text.push_str(&format!(
        "- `docker run --rm busybox true`, cold-booted VM (`axion-vmd --cold-boot`): {}\n",
        f.cold_run.cell(Unit::Seconds)
    ));
    if let (Some(clone), Some(cold)) = (f.clone_run.median(), f.cold_run.median()) {
        text.push_str(&format!(
            "- a clone is {:.1}× faster than a cold boot (goal: at least 5×)\n",
            cold / clone
        ));
    }
    text.push_str(&format!(
        "- proportional set size of an idle container VM's QEMU (`sleep`, TCG): {} (goal: at \
         most 32 MiB); of a pooled clone waiting: {}\n",
        f.idle_pss.cell(Unit::Mib),
        f.pooled_pss.cell(Unit::Mib)
    ));
    if let (Some(pool), Some(cold)) = (f.pool_run.median(), f.cold_run.median()) {
        text.push_str(&format!(
            "- a run from the warm pool is {:.1}× faster than a cold boot (goal: at least \
             10×, and at most 0.45 s)\n",
            cold / pool
        ));
    }
    print!("{text}");
    write_docs_section(layout, "vmd-only", &text)
}

/// Replaces the bench's section `key` of docs/benchmarks.md, where every dated figure of the
/// project lives ([`report::splice_section`]); committing it is the user's choice.
fn write_docs_section(layout: &Layout, key: &str, text: &str) -> Result<()> {
    let path = layout.root.join("docs").join("benchmarks.md");
    let doc = match std::fs::read_to_string(&path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => "# Benchmarks\n".to_owned(),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    crate::image::write_atomic(&path, report::splice_section(&doc, key, text).as_bytes())?;
    eprintln!("bench: wrote its section '{key}' of {}", path.display());
    Ok(())
}

/// Replaces the README's headline figures (its `bench:readme` section, [`Report::headline`]).
fn write_readme_section(layout: &Layout, text: &str) -> Result<()> {
    let path = layout.root.join("README.md");
    let doc = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    crate::image::write_atomic(
        &path,
        report::splice_section(&doc, "readme", text).as_bytes(),
    )?;
    eprintln!("bench: wrote its section 'readme' of {}", path.display());
    Ok(())
}

fn formats_of(p: &Profile) -> String {
    p.spec
        .profile
        .formats
        .iter()
        .map(|f| f.name())
        .collect::<Vec<_>>()
        .join(", ")
}

fn vm_description(p: &Profile) -> String {
    let hw = &p.spec.hardware;
    // The firmware `run` picks (run::firmware), not the profile's: the bench boots as run does.
    let kernel = if std::path::Path::new(qemu::QBOOT).is_file() {
        "qboot"
    } else {
        "seabios"
    };
    format!(
        "{} vCPU, {} MiB, {kernel} for a direct kernel and seabios for disks, virtio-rng, {:?} \
         NIC",
        hw.cpus, hw.memory_mib, hw.nic
    )
    .to_lowercase()
}

fn meta(accel: qemu::Accel, reason: &str, p: &Profile, quick: bool) -> Meta {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .and_then(|r| r.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    let qemu = command_line("qemu-system-x86_64", &["--version"])
        .and_then(|s| {
            s.lines()
                .next()
                .and_then(|l| l.split("version ").nth(1))
                .map(|v| v.split_whitespace().next().unwrap_or(v).to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    Meta {
        date: command_line("date", &["-u", "+%Y-%m-%d %H:%M"])
            .map(|s| s.trim().to_owned())
            .unwrap_or_default(),
        cpu,
        cores: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        memory_gib: mem_kib / 1024.0 / 1024.0,
        host_kernel: command_line("uname", &["-r"])
            .map(|s| s.trim().to_owned())
            .unwrap_or_default(),
        qemu,
        accel: accel.name().to_uppercase(),
        accel_reason: reason.to_owned(),
        vm: vm_description(p),
        quick,
        load_average: std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|l| l.split_whitespace().next().map(str::to_owned))
            .unwrap_or_default(),
    }
}

fn command_line(program: &str, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// Each package built once into an empty cache that shares only the downloads.
fn clean_builds(
    layout: &Layout,
    recipes: &RecipeSet,
    names: &[String],
) -> Result<Vec<(String, Value)>> {
    let tmp = temp_cache(layout, "bench-cache-")?;
    std::os::unix::fs::symlink(layout.downloads(), tmp.path().join("downloads"))
        .context("cannot link the downloads into the temporary cache")?;
    let clean = Layout::with_cache(layout.root.clone(), tmp.path().to_owned());
    let mut out = Vec::new();
    // Dependencies first: build_packages builds what a package needs, so time in closure order.
    let order = recipes.closure(names)?;
    for r in order {
        let name = r.spec.package.name.clone();
        eprintln!("bench: clean build of {name}");
        let started = Instant::now();
        let v = match build::build_packages(
            &clean,
            recipes,
            std::slice::from_ref(&name),
            &build::BuildOptions {
                offline: true,
                // A clean build is measured: nothing from a shared cache.
                remote: None,
                ..Default::default()
            },
        ) {
            Ok(_) => Value::one(started.elapsed().as_secs_f64()),
            Err(e) => Value::na(format!("failed: {}", first_line(&format!("{e:#}")))),
        };
        out.push((name, v));
    }
    Ok(out)
}

fn first_line(s: &str) -> String {
    let l = s.lines().next().unwrap_or("").to_owned();
    if l.len() > 100 {
        format!(
            "{}…",
            &l[..l.char_indices().nth(100).map(|(i, _)| i).unwrap_or(l.len())]
        )
    } else {
        l
    }
}

/// Clean build times a full run measured, shown by `--quick` (which does not rebuild).
#[derive(serde::Serialize, serde::Deserialize)]
struct Recorded {
    date: String,
    seconds: Vec<(String, f64)>,
}

/// The duration a package build log ends with: `== built in 123.4 s with -j2`.
pub fn logged_build_seconds(log: &str) -> Option<f64> {
    log.lines()
        .rev()
        .find_map(|l| l.strip_prefix("== built in "))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

fn read_recorded(path: &Path) -> Option<Recorded> {
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

/// `cargo xtask build` as a user runs it, with everything cached.
fn noop_builds(layout: &Layout, n: usize) -> Result<Value> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // One unmeasured warm-up: cargo may first rebuild xtask itself after a checkout change.
    let _ = std::process::Command::new(&cargo)
        .arg("xtask")
        .arg("build")
        .current_dir(&layout.root)
        .output();
    let mut samples = Vec::new();
    for _ in 0..n {
        let started = Instant::now();
        let out = std::process::Command::new(&cargo)
            .arg("xtask")
            .arg("build")
            .current_dir(&layout.root)
            .output()
            .context("cannot run cargo xtask build")?;
        let secs = started.elapsed().as_secs_f64();
        if !out.status.success() {
            return Ok(Value::na(format!(
                "cargo xtask build failed: {}",
                first_line(&String::from_utf8_lossy(&out.stderr))
            )));
        }
        samples.push(secs);
    }
    Ok(Value::from_samples(&samples, "no runs"))
}

/// Assembles the profile's formats into out/PROFILE when missing or stale, or always when
/// `always`; returns the time it took when it ran.
fn ensure_images(
    layout: &Layout,
    recipes: &RecipeSet,
    p: &Profile,
    always: bool,
) -> Result<Option<f64>> {
    let out = layout.out(p.name());
    let fresh = p
        .spec
        .profile
        .formats
        .iter()
        .all(|f| match find_bootable(&out, p.name(), *f) {
            Some(b) => crate::image::stale_reason(layout, p, &b).is_none(),
            None => {
                *f == Format::Ova
                    && std::fs::read_dir(&out).is_ok_and(|rd| {
                        rd.filter_map(|e| e.ok())
                            .any(|e| e.file_name().to_string_lossy().ends_with(".ova"))
                    })
            }
        });
    if fresh && !always {
        return Ok(None);
    }
    let staged = build::build_packages(
        layout,
        recipes,
        &p.spec.profile.packages,
        &build::BuildOptions::default(),
    )?;
    let trees: Vec<_> = staged
        .into_iter()
        .map(|s| crate::rootfs::PackageTree {
            name: s.name,
            tree: s.tree,
        })
        .collect();
    let step = crate::ui::step(&format!(
        "bench: assembling {} for profile {}",
        formats_of(p),
        p.name()
    ));
    let started = Instant::now();
    crate::image::assemble(layout, p, &trees, &p.spec.profile.formats, &out)?;
    step.finish_and_clear();
    Ok(Some(started.elapsed().as_secs_f64()))
}

/// (file name, apparent size, bytes on disk) of every image file of a profile.
fn image_sizes(dir: &Path, profile: &str) -> Result<Vec<(String, u64, u64)>> {
    use std::os::unix::fs::MetadataExt;
    let prefix = format!("axion-{profile}-");
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .filter_map(|e| e.ok())
    {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with(&prefix) {
            continue;
        }
        let m = e.metadata()?;
        if m.is_file() {
            out.push((name, m.len(), m.blocks() * 512));
        }
    }
    out.sort();
    Ok(out)
}

fn write_busybox_image(path: &Path) -> Result<()> {
    let busybox = std::fs::read(floor::HOST_BUSYBOX)
        .with_context(|| format!("cannot read {}", floor::HOST_BUSYBOX))?;
    crate::image::write_atomic(path, &test_support::busybox::image_tar(&busybox)?)
}

/// A Docker API on 127.0.0.1: plain TCP (the peer's dockerd), or mutual TLS with the
/// client side of [`run::docker_certs`] (axion's engine).
struct Endpoint {
    port: u16,
    tls: Option<run::docker_certs::DockerCerts>,
}

impl Endpoint {
    fn answers(&self) -> bool {
        match &self.tls {
            None => api_answers(self.port),
            Some(certs) => tls_api_answers(self.port, certs).unwrap_or(false),
        }
    }

    /// The docker CLI aimed at this endpoint, with the config folder `config`.
    fn cli(&self, config: &Path) -> test_support::DockerCli {
        let cli = test_support::DockerCli::new(format!("tcp://127.0.0.1:{}", self.port), config);
        match &self.tls {
            Some(c) => cli.tls(&c.client_dir),
            None => cli,
        }
    }
}

/// `GET /_ping` → 200 over mutual TLS.
fn tls_api_answers(port: u16, certs: &run::docker_certs::DockerCerts) -> Result<bool> {
    let read = |n: &str| {
        std::fs::read(certs.client_dir.join(n))
            .with_context(|| format!("cannot read {n} in {}", certs.client_dir.display()))
    };
    let mut identity = read("cert.pem")?;
    identity.extend(read("key.pem")?);
    let client = reqwest::blocking::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(certs.ca_pem.as_bytes())?)
        .identity(reqwest::Identity::from_pem(&identity)?)
        .timeout(Duration::from_secs(2))
        .build()?;
    Ok(client
        .get(format!("https://127.0.0.1:{port}/_ping"))
        .send()
        .is_ok_and(|r| r.status().is_success()))
}

/// Does a Docker API answer `GET /_ping` with 200 on 127.0.0.1:port (plain HTTP)?
pub fn api_answers(port: u16) -> bool {
    let Ok(mut s) = std::net::TcpStream::connect_timeout(
        &([127, 0, 0, 1], port).into(),
        Duration::from_millis(500),
    ) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /_ping HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 64];
    let mut got = Vec::new();
    while got.len() < 12 {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    let head = String::from_utf8_lossy(&got);
    head.starts_with("HTTP/1.") && head.get(9..12) == Some("200")
}

struct AxionFigures {
    ready_host: Value,
    ready_guest: Value,
    api: Value,
    mem: Value,
    /// The engine's VmRSS at idle after boot (MiB).
    engine_rss: Value,
    docker_run: Value,
    build: docker_build::Figures,
    /// init's boot trace of the run whose guest-clock ready time is nearest the median, or
    /// why there is none.
    trace: std::result::Result<Vec<waterfall::Step>, String>,
}

struct PeerFigures {
    multi_user: Value,
    multi_user_guest: Value,
    docker_info: Value,
    api: Value,
    mem: Value,
    /// dockerd + containerd VmRSS at idle after boot (MiB).
    daemon_rss: Value,
    docker_run: Value,
    /// The first run's boot from `systemd-analyze` ([`analyze`]), or why there is none.
    trace: std::result::Result<Vec<waterfall::Step>, String>,
    build: docker_build::Figures,
}

struct Bench<'a> {
    layout: &'a Layout,
    profile: &'a Profile,
    bootable: Bootable,
    accel: qemu::Accel,
    out: PathBuf,
    busybox_tar: PathBuf,
    docker_cli: Option<PathBuf>,
}

impl Bench<'_> {
    /// The qemu profile's VM for `bootable` in a bench run directory, with fresh ports.
    fn config(&self, bootable: &Bootable, dir: &str) -> Result<(qemu::VmConfig, Ports)> {
        let run = RunDir {
            dir: self.out.join(dir),
        };
        std::fs::create_dir_all(&run.dir)
            .with_context(|| format!("cannot create {}", run.dir.display()))?;
        // A fresh UEFI variable store each boot: every run starts from the same state.
        let _ = std::fs::remove_file(run.uefi_vars());
        let ports = Ports {
            ssh: qemu::free_port()?,
            docker: qemu::free_port()?,
        };
        Ok((
            run::vm_config(self.profile, bootable, &run, ports, self.accel),
            ports,
        ))
    }

    /// The floor's wall time (QEMU start to exit) and its guest-clock handover to init.
    fn floor(&self, n: usize) -> Result<(Value, Value)> {
        let Bootable::Kernel { kernel, .. } = &self.bootable else {
            unreachable!("checked by the caller")
        };
        let initrd = self.out.join("floor-initramfs.cpio");
        floor::write_initramfs(&initrd)?;
        let mut samples = Vec::new();
        let mut guest = Vec::new();
        for i in 0..n {
            let (mut cfg, _) = self.config(
                &Bootable::Kernel {
                    kernel: kernel.clone(),
                    initrd: initrd.clone(),
                },
                "run-floor",
            )?;
            cfg.no_reboot = true;
            let mut vm = qemu::Vm::spawn(cfg)?;
            vm.wait_exit(BOOT_TIMEOUT).with_context(|| {
                format!(
                    "the kernel floor did not power off; serial log: {:?}",
                    vm.serial_log()
                )
            })?;
            // Vm::elapsed counts from spawning QEMU; wait_exit polls every 20 ms.
            let secs = vm.elapsed().as_secs_f64();
            // A panic would also end QEMU (panic=-1, -no-reboot): only a power-off counts.
            vm.wait_for_line("reboot: Power down", Duration::ZERO)
                .context(
                    "the kernel floor's \
                     QEMU exited without the kernel's power-off line (see the serial log)",
                )?;
            let serial = vm
                .serial_log()
                .and_then(|p| std::fs::read_to_string(p).ok())
                .unwrap_or_default();
            let handover = serial.lines().find_map(floor::handover);
            eprintln!(
                "bench: floor run {}: {secs:.2} s (guest handover {})",
                i + 1,
                handover.map_or("?".into(), |h| format!("{h:.2} s"))
            );
            samples.push(secs);
            guest.extend(handover);
        }
        Ok((
            Value::from_samples(&samples, "no runs"),
            Value::from_samples(&guest, "no timed `Run /init` line from the floor's kernel"),
        ))
    }

    fn axion_direct(&self, n: usize, docker_runs: usize, engine: bool) -> Result<AxionFigures> {
        let keydir = tempfile::tempdir()?;
        let key = keydir.path().join("bench");
        let ssh_ok = which("ssh").is_some()
            && std::process::Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C", "bench", "-f"])
                .arg(&key)
                .status()
                .is_ok_and(|s| s.success());
        let public = std::fs::read_to_string(key.with_extension("pub"))
            .unwrap_or_default()
            .trim()
            .to_owned();
        // The engine's TLS material and the SSH key as first-boot settings, as `run` gives them.
        let certs = if engine {
            Some(run::docker_certs::ensure(&self.out.join("docker"))?)
        } else {
            None
        };
        let settings = run::first_boot::FirstBoot {
            hostname: None,
            ssh_authorized_keys: if ssh_ok { vec![public.clone()] } else { vec![] },
            docker: certs.clone(),
        };
        let fw_cfg = settings.write(&self.out.join("first-boot"))?;
        let (mut host, mut guest, mut api, mut mem, mut rss, mut drun) =
            (vec![], vec![], vec![], vec![], vec![], vec![]);
        let mut api_reason = "engine not in the image".to_owned();
        let mut build = docker_build::Figures::na("no docker API");
        let mut mem_reason = if ssh_ok {
            "no SSH answer".to_owned()
        } else {
            "no ssh/ssh-keygen on the host".to_owned()
        };
        let mut rss_reason = mem_reason.clone();
        let mut run_reason = api_reason.clone();
        // (guest-clock ready, trace) of each run that has one.
        let mut traces: Vec<(f64, Vec<waterfall::Step>)> = Vec::new();
        let mut trace_reason = mem_reason.clone();
        for i in 0..n {
            let (mut cfg, ports) = self.config(&self.bootable, "run-axion")?;
            for (name, file) in &fw_cfg {
                cfg = cfg.fw_cfg_file(name.clone(), file.clone());
            }
            let endpoint = Endpoint {
                port: ports.docker,
                tls: certs.clone(),
            };
            let mut vm = qemu::Vm::spawn(cfg)?;
            let ready = vm.wait_ready(BOOT_TIMEOUT)?;
            eprintln!(
                "bench: axion run {}: ready {:.2} s (guest {:.2} s)",
                i + 1,
                ready.host.as_secs_f64(),
                ready.guest.as_secs_f64()
            );
            host.push(ready.host.as_secs_f64());
            guest.push(ready.guest.as_secs_f64());
            // The Docker API: only worth waiting for when the engine is in the image.
            let wait = if engine {
                Duration::from_secs(120)
            } else {
                Duration::from_secs(0)
            };
            let deadline = Instant::now() + wait;
            let mut answered = None;
            loop {
                if endpoint.answers() {
                    answered = Some(vm.elapsed().as_secs_f64());
                    break;
                }
                if Instant::now() >= deadline {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            match answered {
                Some(t) => api.push(t),
                None if engine => {
                    api_reason = format!(
                        "engine in the image but no answer on 127.0.0.1:{} within {} s",
                        ports.docker,
                        wait.as_secs()
                    )
                }
                None => {}
            }
            if ssh_ok {
                std::thread::sleep(Duration::from_secs(5));
                match ssh_memory(&key, ports.ssh) {
                    Ok(m) => {
                        mem.push(m.used_kib as f64 / 1024.0);
                        match m.trace {
                            Ok(t) => traces.push((ready.guest.as_secs_f64(), t)),
                            Err(e) => trace_reason = e,
                        }
                        match m.engine_rss_kib {
                            Some(kib) => rss.push(kib as f64 / 1024.0),
                            None => rss_reason = "no engine process in the guest".to_owned(),
                        }
                    }
                    Err(e) => {
                        mem_reason = first_line(&format!("{e:#}"));
                        rss_reason = mem_reason.clone();
                        trace_reason = mem_reason.clone();
                    }
                }
            }
            if answered.is_some() && i == 0 {
                match self.docker_runs(&endpoint, docker_runs) {
                    Ok((s, b)) => {
                        drun.extend(s);
                        build = b;
                    }
                    Err(e) => run_reason = first_line(&format!("{e:#}")),
                }
            }
            let _ = vm.kill();
        }
        Ok(AxionFigures {
            ready_host: Value::from_samples(&host, "no runs"),
            ready_guest: Value::from_samples(&guest, "no runs"),
            api: Value::from_samples(&api, &api_reason),
            mem: Value::from_samples(&mem, &mem_reason),
            engine_rss: Value::from_samples(&rss, &rss_reason),
            docker_run: Value::from_samples(&drun, &run_reason),
            build,
            trace: median_trace(traces).ok_or(trace_reason),
        })
    }

    fn axion_disk(&self, n: usize) -> Result<Value> {
        let Some(disk) = find_bootable(&self.layout.out("qemu"), "qemu", Format::Qcow2) else {
            return Ok(Value::na("no qcow2 in out/qemu"));
        };
        let Bootable::Disk { path, format } = &disk else {
            return Ok(Value::na("the qcow2 format is not a disk"));
        };
        let mut samples = Vec::new();
        for i in 0..n {
            let (mut cfg, _) = self.config(&disk, "run-axion-disk")?;
            // Boot the built image itself; -snapshot keeps it pristine.
            let interface = cfg
                .drives
                .first()
                .map(|d| d.interface)
                .unwrap_or(qemu::DiskInterface::Virtio);
            cfg.drives = vec![qemu::Drive::disk(path, *format).interface(interface)];
            cfg.snapshot = true;
            let mut vm = qemu::Vm::spawn(cfg)?;
            let ready = vm.wait_ready(BOOT_TIMEOUT)?;
            eprintln!(
                "bench: axion disk run {}: ready {:.2} s",
                i + 1,
                ready.host.as_secs_f64()
            );
            samples.push(ready.host.as_secs_f64());
            let _ = vm.kill();
        }
        Ok(Value::from_samples(&samples, "no runs"))
    }

    fn peer(&self, p: &peer::Peer, n: usize, docker_runs: usize) -> Result<PeerFigures> {
        let (mut mu, mut mu_guest, mut info, mut api, mut mem, mut rss, mut drun) =
            (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
        let mut run_reason = String::from("no runs");
        let mut build = docker_build::Figures::na("no docker API");
        let mut api_reason = String::from("no answer");
        let mut trace = Err("no systemd-analyze output from the peer".to_owned());
        for i in 0..n {
            // The same VM as axion's (firmware, CPUs, memory, NIC); the peer's kernel, initrd
            // and disk, and a forward to its dockerd's TCP port.
            let (mut cfg, ports) = self.config(
                &Bootable::Kernel {
                    kernel: p.kernel.clone(),
                    initrd: p.initrd.clone(),
                },
                "run-peer",
            )?;
            if let Some(k) = cfg.kernel.as_mut() {
                k.append = peer::CMDLINE.into();
            }
            let interface = qemu::DiskInterface::Virtio;
            cfg.drives =
                vec![qemu::Drive::disk(&p.qcow2, qemu::DiskFormat::Qcow2).interface(interface)];
            cfg.snapshot = true;
            if let Some(net) = cfg.net.as_mut() {
                net.forwards = vec![qemu::PortForward::tcp(
                    ports.docker,
                    peer::GUEST_DOCKER_PORT,
                )];
            }
            let mut vm = qemu::Vm::spawn(cfg)?;
            let line = vm
                .wait_for_line(peer::MARK_MULTI_USER, BOOT_TIMEOUT)
                .context("the peer did not reach multi-user.target")?;
            mu.push(line.elapsed.as_secs_f64());
            if let Some(up) = line
                .line
                .rsplit(' ')
                .next()
                .and_then(|v| v.trim().parse::<f64>().ok())
            {
                mu_guest.push(up);
            }
            // API from the host, and the guest's own `docker info` marker, whichever first.
            let deadline = Instant::now() + BOOT_TIMEOUT;
            let mut got_api = None;
            let mut got_info = None;
            let mut got_mem = None;
            let mut got_rss = None;
            let (mut analyze_time, mut analyze_chain) = (String::new(), String::new());
            let mut analyzed = false;
            while Instant::now() < deadline
                && (got_api.is_none()
                    || got_info.is_none()
                    || got_mem.is_none()
                    || got_rss.is_none()
                    || !analyzed)
            {
                if got_api.is_none() && api_answers(ports.docker) {
                    got_api = Some(vm.elapsed().as_secs_f64());
                }
                for l in drain_serial(&mut vm) {
                    if l.contains(peer::MARK_DOCKER) {
                        got_info = Some(vm.elapsed().as_secs_f64());
                    } else if let Some(v) = l.split(peer::MARK_MEM).nth(1) {
                        got_mem = v.trim().parse::<f64>().ok();
                    } else if let Some(v) = l.split(peer::MARK_DAEMON_RSS).nth(1) {
                        got_rss = v.trim().parse::<f64>().ok();
                    } else if let Some(v) = l.split(peer::MARK_ANALYZE_TIME).nth(1) {
                        analyze_time.push_str(v.trim_end());
                        analyze_time.push('\n');
                    } else if let Some(v) = l.split(peer::MARK_ANALYZE_CHAIN).nth(1) {
                        analyze_chain.push_str(v.trim_end());
                        analyze_chain.push('\n');
                    } else if l.contains(peer::MARK_ANALYZE_END) {
                        analyzed = true;
                    }
                }
                if vm.try_exit_status().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            eprintln!(
                "bench: peer run {}: multi-user {:.1} s, API {:?}, docker info {:?}, mem \
                 {:?} KiB, daemons {:?} KiB",
                i + 1,
                line.elapsed.as_secs_f64(),
                got_api,
                got_info,
                got_mem,
                got_rss
            );
            match got_api {
                Some(t) => api.push(t),
                None => {
                    api_reason = format!(
                        "no answer on 127.0.0.1:{} within {} s",
                        ports.docker,
                        BOOT_TIMEOUT.as_secs()
                    )
                }
            }
            if analyzed && trace.is_err() {
                trace = analyze::steps(&analyze_time, &analyze_chain).ok_or_else(|| {
                    format!(
                        "systemd-analyze gave no boot times: {}",
                        first_line(&format!("{analyze_time} {analyze_chain}"))
                    )
                });
            }
            info.extend(got_info);
            mem.extend(got_mem.map(|k| k / 1024.0));
            rss.extend(got_rss.map(|k| k / 1024.0));
            if got_api.is_some() && i == 0 {
                match self.docker_runs(
                    &Endpoint {
                        port: ports.docker,
                        tls: None,
                    },
                    docker_runs,
                ) {
                    Ok((s, b)) => {
                        drun.extend(s);
                        build = b;
                    }
                    Err(e) => run_reason = first_line(&format!("{e:#}")),
                }
            }
            let _ = vm.kill();
        }
        Ok(PeerFigures {
            multi_user: Value::from_samples(&mu, "no runs"),
            multi_user_guest: Value::from_samples(&mu_guest, "no marker"),
            docker_info: Value::from_samples(&info, "no marker"),
            api: Value::from_samples(&api, &api_reason),
            mem: Value::from_samples(&mem, "no marker"),
            daemon_rss: Value::from_samples(&rss, "no marker"),
            docker_run: Value::from_samples(&drun, &run_reason),
            trace,
            build,
        })
    }

    /// `docker load` of the busybox image, then `n` timed `docker run --rm busybox true`,
    /// then the `docker build` figures ([`docker_build`]; n/a with why if they fail).
    fn docker_runs(
        &self,
        endpoint: &Endpoint,
        n: usize,
    ) -> Result<(Vec<f64>, docker_build::Figures)> {
        if self.docker_cli.is_none() {
            bail!("no docker CLI on the host")
        }
        let config = tempfile::tempdir()?;
        let cli = endpoint.cli(config.path());
        let docker = |args: &[&str]| cli.try_ok(args);
        docker(&["load", "-i", &self.busybox_tar.to_string_lossy()])?;
        let mut samples = Vec::new();
        for _ in 0..n {
            let started = Instant::now();
            docker(&["run", "--rm", "busybox", "true"])?;
            samples.push(started.elapsed().as_secs_f64());
        }
        eprintln!("bench: docker run --rm busybox true: {samples:.2?}");
        let build = docker_build::measure(&cli, n)
            .unwrap_or_else(|e| docker_build::Figures::na(&first_line(&format!("{e:#}"))));
        Ok((samples, build))
    }
}

/// The serial lines that arrived since the last look (consumed).
fn drain_serial(vm: &mut qemu::Vm) -> Vec<String> {
    let mut lines = Vec::new();
    while let Ok(l) = vm.wait_for(|_| true, "a serial line", Duration::from_millis(0)) {
        lines.push(l.line);
    }
    lines
}

/// The trace of the run whose ready time is nearest the median of those runs.
fn median_trace(mut traces: Vec<(f64, Vec<waterfall::Step>)>) -> Option<Vec<waterfall::Step>> {
    let median =
        Value::from_samples(&traces.iter().map(|t| t.0).collect::<Vec<_>>(), "").median()?;
    traces.sort_by(|a, b| (a.0 - median).abs().total_cmp(&(b.0 - median).abs()));
    traces.into_iter().next().map(|t| t.1)
}

/// Memory of the idle guest over SSH, retrying while sshd starts: MemTotal − MemAvailable
/// and the engine's resident set (VmRSS), both in KiB.
fn ssh_memory(key: &Path, port: u16) -> Result<GuestMemory> {
    // One command, so both figures come from the same moment.
    const SCRIPT: &str = "cat /proc/meminfo; echo ---; for p in $(pidof engine); do cat \
                          /proc/$p/status; done; echo ---; cat /run/axion/boot-trace.json";
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = String::new();
    while Instant::now() < deadline {
        let out = ssh_command(key, port)
            .arg(SCRIPT)
            .output()
            .context("cannot run ssh")?;
        if out.status.success() {
            let text = String::from_utf8_lossy(&out.stdout);
            let (meminfo, rest) = text.split_once("\n---\n").unwrap_or((&text, ""));
            let (status, trace) = rest.split_once("\n---\n").unwrap_or((rest, ""));
            return Ok(GuestMemory {
                used_kib: used_kib(meminfo)
                    .context("no MemTotal/MemAvailable in the guest's /proc/meminfo")?,
                engine_rss_kib: rss_kib(status),
                trace: waterfall::parse(trace).map_err(|e| format!("{e:#}")),
            });
        }
        last = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        std::thread::sleep(Duration::from_millis(500));
    }
    bail!("ssh to the guest failed: {last}")
}

struct GuestMemory {
    used_kib: u64,
    /// None when no `engine` process runs (an image without the engine).
    engine_rss_kib: Option<u64>,
    /// /run/axion/boot-trace.json, parsed.
    trace: std::result::Result<Vec<waterfall::Step>, String>,
}

/// The sum of the VmRSS lines of /proc/PID/status texts, None when there is none.
pub fn rss_kib(status: &str) -> Option<u64> {
    let values: Vec<u64> = status
        .lines()
        .filter_map(|l| l.strip_prefix("VmRSS:"))
        .filter_map(|r| r.split_whitespace().next()?.parse().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

/// MemTotal − MemAvailable from /proc/meminfo text.
pub fn used_kib(meminfo: &str) -> Option<u64> {
    let field = |name: &str| {
        meminfo
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|r| r.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some(field("MemTotal:")?.saturating_sub(field("MemAvailable:")?))
}

/// An empty cache directory inside the real one (so renames stay on one file system), removed
/// when dropped; the clean-build figures build into it.
pub(crate) fn temp_cache(layout: &Layout, prefix: &str) -> Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(&layout.cache)
        .with_context(|| {
            format!(
                "cannot make a temporary cache in {}",
                layout.cache.display()
            )
        })
}

/// `ssh` as root to the guest's forwarded port on 127.0.0.1 with the bench's key: batch
/// mode, no host-key bookkeeping (every boot has new host keys); the caller adds the command.
pub(crate) fn ssh_command(key: &Path, port: u16) -> std::process::Command {
    let mut c = std::process::Command::new("ssh");
    c.arg("-i").arg(key).args(["-p", &port.to_string()]);
    for o in [
        "StrictHostKeyChecking=no",
        "UserKnownHostsFile=/dev/null",
        "BatchMode=yes",
        "ConnectTimeout=10",
        "IdentitiesOnly=yes",
        "LogLevel=ERROR",
    ] {
        c.args(["-o", o]);
    }
    c.arg("root@127.0.0.1");
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_log_duration() {
        assert_eq!(
            logged_build_seconds("== work /x\nmake ...\n== built in 451.2 s with -j2\n"),
            Some(451.2)
        );
        assert_eq!(logged_build_seconds("== built init: /x/init\n"), None);
    }

    #[test]
    fn engine_rss_from_status() {
        let status = "Name:\tengine\nVmPeak:\t  9000 kB\nVmRSS:\t    7168 kB\nThreads:\t3\n";
        assert_eq!(rss_kib(status), Some(7168));
        assert_eq!(
            rss_kib(&format!("{status}{status}")),
            Some(14336),
            "two processes are summed"
        );
        assert_eq!(rss_kib("Name:\tengine\n"), None);
    }

    #[test]
    fn meminfo_used() {
        let text = "MemTotal:        1012345 kB\nMemFree:          900000 kB\nMemAvailable:     \
                    950000 kB\n";
        assert_eq!(used_kib(text), Some(62345));
        assert_eq!(used_kib("MemTotal: 5 kB\n"), None);
    }

    #[test]
    fn ping_of_a_closed_port_is_false() {
        let port = qemu::free_port().unwrap();
        assert!(!api_answers(port));
    }

    #[test]
    fn ping_of_a_docker_like_server_is_true() {
        let l = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let port = l.local_addr().unwrap().port();
        let t = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut buf = [0u8; 256];
            let _ = s.read(&mut buf);
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK")
                .unwrap();
        });
        assert!(api_answers(port));
        t.join().unwrap();
    }
}
