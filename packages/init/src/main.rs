//! axion's PID 1.
//!
//! # What it does, in boot order
//!
//! 0. When `/` is the initramfs's initial mount (rootfs), binds it onto `/` and chroots into
//!    the bind (`rootswitch`), so that the container engine can `pivot_root`: nothing is
//!    copied. A failure is logged and boot goes on, on rootfs.
//! 1. Blocks every signal and opens one signalfd: all signals are handled in one place, the
//!    event loop. Ctrl-Alt-Del is turned into SIGINT.
//! 2. Mounts /proc, /sys, /dev (devtmpfs), /dev/pts, /dev/shm, /run, /tmp and cgroup2 at
//!    /sys/fs/cgroup; moves itself into the `init` cgroup and delegates the cpu, memory,
//!    pids, io and cpuset controllers (`mounts`).
//! 3. Reads the first-boot settings and merges them, lowest priority first: defaults <
//!    /etc/hostname < OVF environment (`ovf-env.xml` on an ISO 9660 CD, vSphere's ISO
//!    transport) < NoCloud (`cidata` volume) < QEMU fw_cfg (`opt/axion/*`) < kernel command
//!    line (`settings`, `sources`, `cloudinit`, `ovfenv`). Opens every `console=` device
//!    for its messages (`log`). Bad settings are reported as `axion: settings: SOURCE: ...`
//!    and ignored.
//! 4. Sets the hostname; writes the ssh keys from the settings to
//!    `/run/axion/authorized_keys` for the ssh service.
//! 5. Mounts the `axion-data` partition at /var/lib (tmpfs, loudly, if missing or broken),
//!    binds /var/log to /var/lib/log (`data`). Per-clone identity (`identity`): on the first
//!    boot of an instance id, new machine-id, SSH host keys, engine TLS and RNG seed, with
//!    one `axion: identity regenerated (...)` line. Writes `write_files` (`firstboot`), then
//!    seeds the RNG from /var/lib/axion/random-seed (without crediting it).
//! 6. Network (`net`): loopback, the first ethernet NIC, static address or DHCPv4.
//! 7. Services from /etc/axion/services/*.toml (`services`, schema documented there), plus
//!    busybox ntpd when the settings name NTP servers, a respawned root shell on the serial
//!    console with `axion.debug_shell`, and the settings' `runcmd` (once per instance,
//!    after the ready line).
//! 8. Runs the event loop: signalfd (SIGCHLD reaps every zombie), power button devices,
//!    the DHCP socket, service output pipes, with the nearest timer as epoll's timeout. No
//!    polling, no sleeps.
//!
//! # The ready line (a contract with tests and benchmarks)
//!
//! Once the mounts are done, the network is configured (or the DHCP wait ran out), every
//! service has been started once and every service with `ready` checks answers on them
//! (the engine's API on its socket and TCP port; see `services`), init prints exactly one
//! line on every console:
//!
//! ```text
//! axion: ready in 1.234 s
//! ```
//!
//! The number is seconds since boot from CLOCK_BOOTTIME, with three decimals. So a client's
//! first call after that line succeeds. A service that does not answer within its
//! `ready-timeout` is given up on first, with one line on every console:
//!
//! ```text
//! axion: not ready: service docker did not answer on tcp:2376 within its ready-timeout; ...
//! ```
//!
//! Every step up to the ready line is timed in the boot trace (`trace`):
//! `/run/axion/boot-trace.json`, and on the consoles with `axion.debug`.
//!
//! DHCP does not hold the ready line hostage: init waits at most [`DHCP_WAIT`] (3 s) after
//! bringing up the NIC for the first lease, then starts the `after = ["network"]` services,
//! prints the ready line and keeps asking in the background. On QEMU's user network the
//! lease arrives in a few milliseconds, so the wait only matters when no DHCP server answers.
//!
//! # Shutdown
//!
//! Triggers, with busybox init's conventions so busybox `halt`, `poweroff` and `reboot` work:
//! SIGUSR1 halt, SIGUSR2 or SIGPWR power off, SIGTERM or SIGINT (Ctrl-Alt-Del) reboot, and
//! the ACPI power button (KEY_POWER on /dev/input/event*) power off. Then: the marker
//! /run/axion/shutdown (so the engine tells a shutdown from a restart of itself), SIGTERM to every
//! service's process group, SIGKILL after its `stop-timeout`; SIGTERM to every remaining
//! process, SIGKILL 2 s later; a fresh RNG seed is saved; sync; /var/log and /var/lib (and
//! anything mounted below) remounted read-only and unmounted; reboot(2).
//!
//! # What the image must provide
//!
//! `/sbin/init` (this program; an initramfs also needs `/init` -> `/sbin/init` or
//! `rdinit=/sbin/init`), `/dev/console` (char 5:1) in an initramfs so the kernel can give
//! init its stdio, the mount points `/proc /sys /dev /run /tmp /var/lib /var/log` when the
//! root is read-only (init creates them when it can), `/etc/resolv.conf` ->
//! `../run/resolv.conf`, `/etc/hostname`, and `/bin/sh` for `axion.debug_shell`
//! (overlays/base carries the files).
//!
//! # Never exits, never panics
//!
//! Every error is logged on the console and handled, and the code avoids anything that can
//! panic on bad input. What still could is kept away from PID 1: the kernel command line and
//! the first-boot settings sources are read and parsed in a forked child that hands the
//! result back as JSON (`isolate`); a panic, a hang (20 s) or garbage there is logged and
//! the boot goes on with the defaults (and the command line). DHCP packets are decoded in
//! init itself (one fork per packet is not worth it): that decoder is bounds-checked and
//! fuzzed (`fuzz/`, target `dhcp`).

use init::{
    data, debug, error, firstboot, identity, info, input, isolate, log, mounts, net, rootswitch,
    services, settings, sources, sys, trace, warn, watchdog,
};

use std::collections::HashMap;
use std::fs::{self, File};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::time::{Duration, Instant};

use services::output::LogSink;
use services::spawn::OsSpawner;
use services::supervisor::{Started, Supervisor};
use settings::Settings;

/// How long a first-boot parser (in its child, `isolate`) may take: reading a seed volume
/// included. Only a broken or hostile source gets near it.
const PARSE_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the ready line waits for the first DHCP lease.
pub const DHCP_WAIT: Duration = Duration::from_secs(3);
/// Between SIGTERM and SIGKILL for processes that are not services, at shutdown.
const KILL_WAIT: Duration = Duration::from_secs(2);
/// Written before the services are signalled at shutdown, so a service can tell the
/// machine's shutdown from a restart of itself: the engine, with `--live-restore`, stops its
/// containers on SIGTERM only when this exists (packages/engine, backend/live.rs). /run is a
/// tmpfs: it never outlives the boot.
const SHUTDOWN_MARKER: &str = "/run/axion/shutdown";
/// After SIGKILL, how long to wait for the last processes to disappear before unmounting.
const REAP_WAIT: Duration = Duration::from_secs(1);

const TOKEN_SIGNAL: u64 = 1;
const TOKEN_NET: u64 = 2;
const TOKEN_BUTTON: u64 = 1 << 32;
const TOKEN_PIPE: u64 = 2 << 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Final {
    PowerOff,
    Reboot,
    Halt,
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    StopServices { deadline: Instant },
    TermAll { deadline: Instant },
    Reap { deadline: Instant },
}

struct Init {
    epoll: sys::Epoll,
    sigfd: Option<OwnedFd>,
    net: net::Network,
    net_fd: Option<RawFd>,
    dhcp_deadline: Option<Instant>,
    network_ready: bool,
    sup: Supervisor<OsSpawner>,
    pipes: HashMap<RawFd, (OwnedFd, LogSink)>,
    buttons: Vec<File>,
    ready: bool,
    debug_shell: Option<services::Service>,
    /// `runcmd` from the settings: started once, right after the ready line (`firstboot`).
    runcmd: Option<services::Service>,
    shutdown: Option<(Final, Phase)>,
    /// `/dev/watchdog` when the machine has one (`watchdog`), petted from the event loop.
    watchdog: Option<watchdog::Watchdog>,
}

fn main() {
    if std::process::id() != 1 {
        eprintln!(
            "init: axion's PID 1; refusing to run as pid {}",
            std::process::id()
        );
        std::process::exit(2);
    }
    // Before anything else: leave the initial mount (rootfs) for a bind of it, so that
    // pivot_root works for containers.
    trace::begin();
    let root_note = rootswitch::switch_if_initramfs();
    trace::end_handover();
    if let rootswitch::Note::Info(_) = root_note {
        trace::mark("rootswitch");
    }
    let mut init = boot(root_note);
    init.run();
}

/// Opens /dev/null on any of fds 0-2 the kernel did not give us (no /dev/console in the
/// initramfs), so nothing we open later lands on them.
fn fix_stdio() {
    if (0..3).all(sys::fd_is_open) {
        return;
    }
    if let Ok(null) = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        for fd in 0..3 {
            if !sys::fd_is_open(fd) {
                let _ = sys::dup2(null.as_raw_fd(), fd);
            }
        }
    }
}

fn boot(root_note: rootswitch::Note) -> Init {
    let sigfd = match sys::block_signals_signalfd() {
        Ok(fd) => Some(fd),
        Err(e) => {
            eprintln!("init: ERROR: signalfd: {e}");
            None
        }
    };
    // Ctrl-Alt-Del sends us SIGINT instead of rebooting at once.
    let _ = sys::reboot(libc::RB_DISABLE_CAD);

    let mount_errors = mounts::mount_api_filesystems();
    trace::mark("mounts");
    fix_stdio();
    let cmdline_text = fs::read_to_string("/proc/cmdline").unwrap_or_default();
    // Parsed in a child (`isolate`): the command line is input from outside the image.
    let (cmdline, cmdline_err) =
        match isolate::in_child(PARSE_TIMEOUT, || settings::parse_cmdline(&cmdline_text)) {
            Ok(c) => (c, None),
            Err(e) => (settings::Cmdline::default(), Some(e)),
        };
    log::open_consoles(&cmdline.consoles);
    if let Some(e) = cmdline_err {
        error!("kernel command line: {e}; its axion.* settings and console= are ignored");
    }
    info!("axion init {} starting", env!("CARGO_PKG_VERSION"));
    match root_note {
        rootswitch::Note::None => {}
        rootswitch::Note::Info(m) => info!("{m}"),
        rootswitch::Note::Error(m) => {
            error!("{m}");
            error!(
                "/ is still the initramfs (rootfs): pivot_root cannot work, the container \
                 engine will refuse to start containers"
            );
        }
    }
    for e in &mount_errors {
        error!("{e}");
    }
    for w in &cmdline.warnings {
        warn!("{w}");
    }

    let settings = match isolate::in_child(PARSE_TIMEOUT, || read_settings(&cmdline.layer)) {
        Ok(s) => s,
        Err(e) => {
            error!(
                "first-boot settings: {e}; booting with the defaults and the kernel command line"
            );
            Settings::merge([&cmdline.layer])
        }
    };
    log::set_debug(settings.debug);
    trace::mark("settings");
    debug!("settings: {settings:?}");

    if let Err(e) = sys::sethostname(&settings.hostname) {
        error!("sethostname {}: {e}", settings.hostname);
    }
    write_ssh_keys(&settings);

    for e in mounts::delegate_cgroups() {
        warn!("{e}");
    }
    trace::mark("cgroups");

    debug!("API file systems, settings, hostname and cgroups done");
    let data_state = data::mount_data();
    if let data::DataState::Volatile { .. } = data_state {
        debug!("/var/lib is a tmpfs: every boot is a first boot");
    }
    trace::mark("data");
    let identity = identity::ensure(settings.instance_id.as_deref());
    trace::mark("identity");
    let first_boot = identity.regenerate.is_some();
    let written = firstboot::write_files(&settings.write_files, first_boot);
    if written > 0 {
        info!("settings: {written} file(s) written (write_files)");
    }
    // Credit-free: the seed may be a template's that clones share (see data::seed_rng).
    data::seed_rng(false);

    let epoll = match sys::Epoll::new() {
        Ok(e) => e,
        Err(e) => {
            // Without epoll there is no event loop; this cannot happen on a sane kernel.
            error!("epoll_create: {e}; init cannot supervise anything");
            loop {
                // SAFETY: pause takes no arguments; this only parks PID 1 forever.
                unsafe { libc::pause() };
            }
        }
    };
    if let Some(fd) = &sigfd {
        if let Err(e) = epoll.add(fd.as_raw_fd(), TOKEN_SIGNAL) {
            error!("epoll add signalfd: {e}");
        }
    }

    debug!("data partition and RNG seed done");
    let now = Instant::now();
    let net = net::Network::start(&settings.network, &settings.hostname, now);
    trace::mark("network link");
    let network_ready = net.configured || net.dhcp.is_none();
    let dhcp_deadline = net.dhcp.as_ref().map(|_| now + DHCP_WAIT);

    debug!("network started");
    let (mut loaded, errors) = services::load_dir(Path::new(services::SERVICE_DIR));
    for e in errors {
        error!("{e}");
    }
    loaded.extend(firstboot::ntpd_service(&settings.ntp_servers));
    let runcmd = firstboot::runcmd_service(&settings.runcmd, &identity.instance_id);
    let (ordered, msgs) = services::order(loaded);
    for m in msgs {
        warn!("{m}");
    }
    info!("{} service(s) configured", ordered.len());
    // Started right after the ready line, so its prompt cannot share that line.
    let debug_shell = settings.debug_shell.then(|| debug_shell(&cmdline.consoles));
    let sup = Supervisor::new(OsSpawner, ordered);

    let buttons = input::open_power_buttons();
    for (i, b) in buttons.iter().enumerate() {
        if let Err(e) = epoll.add(b.as_raw_fd(), TOKEN_BUTTON + i as u64) {
            warn!("epoll add power button: {e}");
        }
    }
    if buttons.is_empty() {
        warn!("no power button found in /dev/input; only signals can shut down");
    }

    // Armed just before the event loop that pets it: the boot steps above run once and are
    // bounded by their own timeouts.
    let fw_cmdline =
        fs::read_to_string(Path::new(sources::FW_CFG_DIR).join("cmdline/raw")).unwrap_or_default();
    let watchdog = watchdog::Watchdog::open(&[&cmdline_text, &fw_cmdline], Instant::now());

    Init {
        epoll,
        sigfd,
        net,
        net_fd: None,
        dhcp_deadline,
        network_ready,
        sup,
        pipes: HashMap::new(),
        buttons,
        ready: false,
        debug_shell,
        runcmd,
        shutdown: None,
        watchdog,
    }
}

/// Reads and merges every settings source (in the `isolate` child: they are outside input).
fn read_settings(cmdline: &settings::Layer) -> Settings {
    let mut layers = Vec::new();
    match fs::read_to_string("/etc/hostname") {
        Ok(t) => match settings::hostname_file_layer(&t) {
            Ok(l) => layers.push(l),
            Err(e) => warn!("/etc/hostname: {e} (ignored)"),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => warn!("/etc/hostname: {e}"),
    }
    let (ovf, nocloud) = sources::volumes(Path::new("/sys/class/block"));
    layers.extend(ovf);
    layers.extend(nocloud);
    layers.extend(sources::fw_cfg(Path::new(sources::FW_CFG_DIR)));
    layers.push(cmdline.clone());
    Settings::merge(&layers)
}

fn debug_shell(consoles: &[String]) -> services::Service {
    let tty = consoles
        .iter()
        .find(|c| c.starts_with("ttyS") || c.starts_with("hvc"))
        .map(|c| format!("/dev/{c}"))
        .unwrap_or_else(|| "/dev/console".into());
    warn!("axion.debug_shell: root shell on {tty}, respawned");
    services::Service {
        name: "debug-shell".into(),
        command: "/bin/sh".into(),
        args: Vec::new(),
        environment: Default::default(),
        after: Vec::new(),
        restart: services::Restart::Always,
        working_directory: "/".into(),
        stop_timeout: Duration::from_secs(1),
        log_max_bytes: 0,
        ready: Vec::new(),
        ready_timeout: Duration::ZERO,
        tty: Some(tty),
    }
}

fn write_ssh_keys(s: &Settings) {
    if s.ssh_keys.is_empty() {
        return;
    }
    let dir = Path::new("/run/axion");
    let path = dir.join("authorized_keys");
    let mut text = s.ssh_keys.join("\n");
    text.push('\n');
    let res = fs::create_dir_all(dir).and_then(|()| {
        use std::os::unix::fs::PermissionsExt;
        fs::write(&path, text)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
    });
    match res {
        Ok(()) => info!(
            "{} ssh key(s) written to {}",
            s.ssh_keys.len(),
            path.display()
        ),
        Err(e) => error!("write {}: {e}", path.display()),
    }
}

impl Init {
    fn run(&mut self) -> ! {
        // Children from before the signalfd existed (the root switch's cleaner) whose
        // SIGCHLD was lost.
        self.reap(Instant::now());
        let mut tokens = Vec::new();
        loop {
            let now = Instant::now();
            self.tick(now);
            let timeout = self
                .next_deadline()
                .map(|d| d.saturating_duration_since(Instant::now()));
            if let Err(e) = self.epoll.wait(timeout, &mut tokens) {
                error!("epoll_wait: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            // Output pipes first, so a service's last words come before the news of its exit.
            tokens.sort_by_key(|t| if t & TOKEN_PIPE != 0 { 0 } else { 1 });
            for &t in &tokens {
                self.dispatch(t);
            }
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        let mut d: Option<Instant> = None;
        let mut consider = |x: Option<Instant>| {
            if let Some(x) = x {
                d = Some(d.map_or(x, |d| d.min(x)));
            }
        };
        consider(self.net.deadline());
        if !self.network_ready {
            consider(self.dhcp_deadline);
        }
        consider(self.sup.next_deadline());
        consider(
            self.watchdog
                .as_ref()
                .and_then(watchdog::Watchdog::next_deadline),
        );
        if let Some((_, phase)) = self.shutdown {
            consider(Some(match phase {
                Phase::StopServices { deadline }
                | Phase::TermAll { deadline }
                | Phase::Reap { deadline } => deadline,
            }));
        }
        d
    }

    fn dispatch(&mut self, token: u64) {
        let now = Instant::now();
        match token {
            TOKEN_SIGNAL => self.on_signals(now),
            TOKEN_NET => self.net.on_readable(now),
            t if t & TOKEN_PIPE != 0 => self.on_pipe((t & 0xffff_ffff) as RawFd),
            t if t & TOKEN_BUTTON != 0 => {
                let i = (t & 0xffff_ffff) as usize;
                if self.buttons.get(i).is_some_and(input::read_power) {
                    info!("power button pressed");
                    self.begin_shutdown(Final::PowerOff, now);
                }
            }
            _ => {}
        }
    }

    fn tick(&mut self, now: Instant) {
        if let Some(w) = &mut self.watchdog {
            w.on_timer(now);
        }
        self.net.on_timer(now);
        self.sync_net_fd();
        if !self.network_ready {
            if self.net.configured {
                trace::mark("dhcp lease");
                self.network_ready = true;
            } else if self.dhcp_deadline.is_some_and(|d| now >= d) {
                let nic = self.net.nic.as_ref().map_or("?", |n| n.name.as_str());
                warn!(
                    "{nic}: no DHCP lease after {} s; starting services anyway, DHCP continues \
                     in the background",
                    DHCP_WAIT.as_secs()
                );
                self.network_ready = true;
            }
        }
        if self.shutdown.is_none() {
            let started = self.sup.on_timer(now);
            self.watch(started);
            let started = self.sup.start_pending(now, self.network_ready);
            self.watch(started);
            self.check_ready(now);
            if !self.ready && self.network_ready && self.sup.all_started() && self.sup.all_ready() {
                self.ready = true;
                let t = sys::boottime();
                trace::mark_at("ready", t);
                if log::debug_enabled() {
                    for l in trace::lines(&trace::steps()) {
                        log::line(&l);
                    }
                }
                trace::save();
                log::line(&format!(
                    "axion: ready in {}.{:03} s",
                    t.as_secs(),
                    t.subsec_millis()
                ));
                for s in [self.debug_shell.take(), self.runcmd.take()]
                    .into_iter()
                    .flatten()
                {
                    self.sup.add(s);
                    let started = self.sup.start_pending(now, self.network_ready);
                    self.watch(started);
                }
            }
        } else {
            self.shutdown_step(now);
        }
    }

    /// Readiness news: a required service answering, or given up on (the ready line then
    /// goes on without it, after a line that says so).
    fn check_ready(&mut self, now: Instant) {
        use services::supervisor::ReadyEvent;
        for ev in self.sup.check_ready(now) {
            match ev {
                ReadyEvent::Ready { name } => debug!("service {name} is ready"),
                ReadyEvent::TimedOut { name, missing } => {
                    trace::mark(&format!("service {name} not ready"));
                    log::line(&format!(
                        "axion: not ready: service {name} did not answer on {} within its \
                         ready-timeout; going on without it",
                        missing.join(", ")
                    ));
                }
            }
            if self.ready {
                // After the ready line: keep the file complete.
                trace::save();
            }
        }
    }

    fn sync_net_fd(&mut self) {
        let fd = self.net.fd();
        if fd == self.net_fd {
            return;
        }
        if let Some(old) = self.net_fd {
            self.epoll.delete(old);
        }
        self.net_fd = None;
        if let Some(fd) = fd {
            match self.epoll.add(fd, TOKEN_NET) {
                Ok(()) => self.net_fd = Some(fd),
                Err(e) => error!("epoll add DHCP socket: {e}"),
            }
        }
    }

    fn watch(&mut self, started: Vec<Started>) {
        for s in started {
            let Some(fd) = s.output else { continue };
            let raw = fd.as_raw_fd();
            if let Err(e) = self.epoll.add(raw, TOKEN_PIPE | raw as u64) {
                error!("epoll add output of {}: {e}", s.name);
                continue;
            }
            debug!("watching the output of {} (pid {})", s.name, s.pid);
            let sink = LogSink::new(&s.name, Path::new("/var/log"), s.log_max_bytes);
            self.pipes.insert(raw, (fd, sink));
        }
    }

    fn on_pipe(&mut self, fd: RawFd) {
        let mut buf = [0u8; 8192];
        let mut closed = false;
        if let Some((pipe, sink)) = self.pipes.get_mut(&fd) {
            for _ in 0..16 {
                match sys::read_nb(pipe.as_raw_fd(), &mut buf) {
                    Ok(Some(0)) => {
                        closed = true;
                        break;
                    }
                    Ok(Some(n)) => sink.feed(&buf[..n], &mut log::console_write),
                    Ok(None) => break,
                    Err(e) => {
                        warn!("read output of {}: {e}", sink.name);
                        closed = true;
                        break;
                    }
                }
            }
        }
        if closed {
            self.epoll.delete(fd);
            if let Some((_, mut sink)) = self.pipes.remove(&fd) {
                sink.finish(&mut log::console_write);
            }
        }
    }

    fn on_signals(&mut self, now: Instant) {
        let Some(sigfd) = &self.sigfd else { return };
        let mut sigs = Vec::new();
        loop {
            match sys::read_signal(sigfd) {
                Ok(Some(s)) => sigs.push(s),
                Ok(None) => break,
                Err(e) => {
                    error!("read signalfd: {e}");
                    break;
                }
            }
        }
        for sig in sigs {
            match sig {
                libc::SIGCHLD => self.reap(now),
                libc::SIGTERM | libc::SIGINT => self.begin_shutdown(Final::Reboot, now),
                libc::SIGUSR1 => self.begin_shutdown(Final::Halt, now),
                libc::SIGUSR2 | libc::SIGPWR => self.begin_shutdown(Final::PowerOff, now),
                other => debug!("ignoring signal {other}"),
            }
        }
    }

    fn reap(&mut self, now: Instant) {
        loop {
            match sys::reap_one() {
                Ok(Some((pid, status))) => {
                    if !self.sup.on_exit(pid, status, now) {
                        debug!("reaped pid {pid} ({status})");
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    error!("waitpid: {e}");
                    break;
                }
            }
        }
    }

    fn begin_shutdown(&mut self, how: Final, now: Instant) {
        if self.shutdown.is_some() {
            return;
        }
        let what = match how {
            Final::PowerOff => "power off",
            Final::Reboot => "reboot",
            Final::Halt => "halt",
        };
        info!("shutting down ({what}): stopping services");
        if let Err(e) = fs::create_dir_all("/run/axion")
            .and_then(|()| fs::write(SHUTDOWN_MARKER, format!("{what}\n")))
        {
            warn!("writing {SHUTDOWN_MARKER}: {e}");
        }
        // Each service gets SIGKILL at its own stop-timeout (stop_timer); this deadline is the
        // backstop for one that does not even die of that.
        let deadline = self.sup.stop_all(now) + KILL_WAIT;
        self.shutdown = Some((how, Phase::StopServices { deadline }));
    }

    fn shutdown_step(&mut self, now: Instant) {
        let Some((how, phase)) = self.shutdown else {
            return;
        };
        match phase {
            Phase::StopServices { deadline } => {
                self.sup.stop_timer(now);
                if self.sup.running() > 0 && now < deadline {
                    return;
                }
                // Only services stuck in the kernel (D state) survive SIGKILL this long.
                self.sup.kill_remaining();
                info!("sending SIGTERM to all processes");
                let _ = sys::kill(-1, libc::SIGTERM);
                self.shutdown = Some((
                    how,
                    Phase::TermAll {
                        deadline: now + KILL_WAIT,
                    },
                ));
                self.shutdown_step(now);
            }
            Phase::TermAll { deadline } => {
                if !sys::no_children() && now < deadline {
                    return;
                }
                if !sys::no_children() {
                    info!("sending SIGKILL to all processes");
                }
                let _ = sys::kill(-1, libc::SIGKILL);
                self.shutdown = Some((
                    how,
                    Phase::Reap {
                        deadline: now + REAP_WAIT,
                    },
                ));
                self.shutdown_step(now);
            }
            Phase::Reap { deadline } => {
                self.reap(now);
                if !sys::no_children() && now < deadline {
                    return;
                }
                self.finish(how);
            }
        }
    }

    fn finish(&mut self, how: Final) -> ! {
        // Flush what the services wrote last.
        let fds: Vec<RawFd> = self.pipes.keys().copied().collect();
        for fd in fds {
            self.on_pipe(fd);
        }
        self.pipes.clear();
        data::save_seed();
        sys::sync();
        for e in mounts::unmount_tree("/var/log")
            .into_iter()
            .chain(mounts::unmount_tree(data::MOUNT_POINT))
        {
            warn!("{e}");
        }
        sys::sync();
        let (cmd, what) = match how {
            Final::PowerOff => (libc::RB_POWER_OFF, "powering off"),
            Final::Reboot => (libc::RB_AUTOBOOT, "rebooting"),
            Final::Halt => (libc::RB_HALT_SYSTEM, "halted"),
        };
        info!("{what}");
        let e = sys::reboot(cmd);
        error!("reboot(2): {e}; parking");
        loop {
            // SAFETY: pause takes no arguments; PID 1 must not exit.
            unsafe { libc::pause() };
        }
    }
}
