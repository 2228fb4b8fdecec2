//! The warm pool (`axion-vmd --pool N`, default 2): clones already restored from the template
//! and waiting, so that a `docker create`/`run` does not wait for QEMU's start and the
//! state's restore.
//!
//! - A pooled clone is what [`template::Template::clone_vm`] makes (its own overlay, QEMU
//!   restored from the saved state, `cont`) plus the two channels opened: the clone agent's
//!   connected and asked only to mount the layer store (`mount`: the same store for every
//!   clone; a TCG-cold 9p mount that took 0.12-0.29 s of each hand-over's identity step),
//!   and the guest engine's session started with a `/_ping` (the first answer after a
//!   restore is TCG-cold code: it is paid here). Then the VM is stopped through QMP
//!   (`stop`): a waiting clone costs the host no CPU, and its guest's clock does not run.
//! - Its identity is NOT handed over: no host name, clock, MAC or random seed went to the
//!   agent and no container exists in it; its RNG is still the template's. The daemon picks
//!   a container id for it in advance only because its directory is named after one
//!   (`<state>/c/<id12>`, where every container VM lives and what a restarted daemon looks
//!   at); that id is a fresh random one and is not given to the guest. At the hand-over
//!   ([`Pool::take`]) the VM is continued and the daemon sends the identity as for any
//!   clone (`boot.rs`).
//! - Who gets one: a create with no volume or bind mount (a 9p slot's directory is set at
//!   QEMU's start), not a cold boot (`--cold-boot`), and not the new VM of an exited
//!   container (it has its own directory). Published ports (`-p`) are added to the pooled
//!   VM's user network at the hand-over (HMP `hostfwd_add`, [`qemu::Vm::add_forward`]).
//!   Everything else clones as before; so does a create that finds the pool empty.
//! - Refill: one task ([`Daemon::start_pool`]) makes one clone at a time, whenever the pool
//!   is short, but not within [`REFILL_AFTER`] of a hand-over (the taken clone's container
//!   starts first), its QEMU at nice 10 until handed over. It makes none while the host's
//!   available memory is below twice a VM's RAM.
//! - Bounded memory: at most [`MAX`] clones; each costs its QEMU's memory of its own (the
//!   template's RAM is a shared copy-on-write file; figures in docs/benchmarks.md).
//! - Discarded: a pooled clone whose QEMU exited, or made from a template that is no longer
//!   the daemon's (its state file replaced), found at a hand-over or by the task's check
//!   every few seconds.
//! - Nothing outlives the daemon: shutdown (also with `--live-restore`, as pooled clones
//!   are no containers) kills every pooled QEMU and removes its directory. A daemon that
//!   dies (SIGKILL) leaves them until the next start, which finds directories without a
//!   container record and removes them with their QEMU (`live.rs`: they are never adopted).

use crate::*;
use anyhow::Context;
use std::collections::VecDeque;
use std::time::Instant;

/// The largest pool `--pool` accepts.
pub const MAX: usize = 8;
/// The pool's default size.
pub const DEFAULT: usize = 2;

/// Which template state a clone was made from: the state file's inode and change time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stamp(u64, i64, i64);

impl Stamp {
    pub(crate) fn of(t: &template::Template) -> Option<Stamp> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(&t.state).ok()?;
        t.dir
            .join("complete")
            .exists()
            .then(|| Stamp(m.ino(), m.ctime(), m.ctime_nsec()))
    }
}

/// A clone restored and waiting, stopped, without its identity. Dropped, it kills its QEMU
/// and removes its directory.
pub(crate) struct Warm {
    pub id: String,
    dir: PathBuf,
    vm: Option<qemu::Vm>,
    agent: Option<std::os::unix::net::UnixStream>,
    guest: GuestClient,
    stamp: Stamp,
    made: Instant,
}

/// What a container takes over from a pooled clone.
pub(crate) struct HandedOver {
    pub vm: qemu::Vm,
    pub agent: std::os::unix::net::UnixStream,
    pub guest: GuestClient,
}

impl Warm {
    /// The VM and its channels, for the container of id [`Warm::id`] in its directory.
    fn hand_over(mut self) -> Option<HandedOver> {
        let vm = self.vm.take()?;
        let agent = self.agent.take()?;
        // The directory is the container's now.
        self.dir = PathBuf::new();
        Some(HandedOver {
            vm,
            agent,
            guest: self.guest.clone(),
        })
    }

    /// Its QEMU has exited.
    fn dead(&mut self) -> bool {
        self.vm
            .as_mut()
            .is_none_or(|vm| vm.try_exit_status().is_some())
    }
}

impl Drop for Warm {
    fn drop(&mut self) {
        if let Some(mut vm) = self.vm.take() {
            let _ = vm.kill();
        }
        if !self.dir.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

#[derive(Default)]
struct Inner {
    ready: VecDeque<Warm>,
    /// Directories of clones being made ([`Making`]).
    making: Vec<PathBuf>,
    closed: bool,
}

/// How long the refill waits after a hand-over: the container's create and start come
/// first (on this 2-core host the refill's restore otherwise ran beside the taken clone's
/// start, even niced, and a pooled run took 1-2 s instead of 0.6-0.9 s).
const REFILL_AFTER: Duration = Duration::from_millis(1500);

/// The pool's state; its refill task is [`Daemon::start_pool`].
#[derive(Default)]
pub struct Pool {
    target: AtomicUsize,
    inner: Mutex<Inner>,
    wake: Notify,
    /// The last hand-over (the refill waits [`REFILL_AFTER`] from it).
    last_take: Mutex<Option<Instant>>,
    /// Creates that took a pooled clone, and those that found none (eligible ones only).
    pub(crate) hits: AtomicUsize,
    pub(crate) misses: AtomicUsize,
}

impl Pool {
    pub fn new(target: usize) -> Pool {
        let p = Pool::default();
        p.target.store(target.min(MAX), Ordering::SeqCst);
        p
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn target(&self) -> usize {
        self.target.load(Ordering::SeqCst)
    }

    /// Changes the pool's size (at most [`MAX`]); clones beyond it are discarded.
    pub fn set_target(&self, n: usize) {
        self.target.store(n.min(MAX), Ordering::SeqCst);
        let extra: Vec<Warm> = {
            let mut g = self.lock();
            let keep = n.min(g.ready.len());
            g.ready.drain(keep..).collect()
        };
        drop(extra);
        self.wake.notify_one();
    }

    /// How many clones wait.
    pub fn ready(&self) -> usize {
        self.lock().ready.len()
    }

    /// A waiting clone of the current template (oldest first), continued; discards dead or
    /// stale ones on the way. None when the pool is empty (the caller clones as before).
    pub(crate) fn take(&self, current: Option<Stamp>) -> Option<(String, HandedOver)> {
        let mut discard = Vec::new();
        let got = {
            let mut g = self.lock();
            loop {
                let Some(mut w) = g.ready.pop_front() else {
                    break None;
                };
                if w.dead() || Some(w.stamp) != current {
                    discard.push(w);
                    continue;
                }
                break Some(w);
            }
        };
        for w in &discard {
            eprintln!(
                "vmd: pool: discarding the clone made for {} (its QEMU exited or the template \
                 changed)",
                &w.id[..12]
            );
        }
        drop(discard);
        let w = got?;
        *self
            .last_take
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
        self.wake.notify_one();
        let age = w.made.elapsed().as_secs_f64();
        let id = w.id.clone();
        let h = w.hand_over()?;
        // The container's VM runs at the daemon's priority, not the pool's.
        renice(h.vm.pid(), daemon_nice());
        debug(&format!(
            "{}: took a pooled clone (waiting {age:.1} s)",
            &id[..12]
        ));
        Some((id, h))
    }

    /// Adds a made clone; one the pool has no room for (closed or shrunk meanwhile) is
    /// killed and removed.
    fn put(&self, w: Warm) {
        let extra = {
            let mut g = self.lock();
            if g.closed || g.ready.len() >= self.target() {
                Some(w)
            } else {
                g.ready.push_back(w);
                None
            }
        };
        drop(extra);
    }

    /// Discards dead and stale clones; true when one more is wanted.
    fn sweep(&self, current: Option<Stamp>) -> bool {
        let (gone, short) = {
            let mut g = self.lock();
            let mut gone = Vec::new();
            let mut keep = VecDeque::new();
            while let Some(mut w) = g.ready.pop_front() {
                if w.dead() || Some(w.stamp) != current {
                    gone.push(w);
                } else {
                    keep.push_back(w);
                }
            }
            g.ready = keep;
            let short = !g.closed && g.ready.len() + g.making.len() < self.target();
            (gone, short)
        };
        for w in &gone {
            eprintln!(
                "vmd: pool: discarding the clone made for {} (its QEMU exited or the template \
                 changed)",
                &w.id[..12]
            );
        }
        short
    }

    /// Daemon shutdown: no more clones; every waiting one killed and removed. A clone being
    /// made is killed by its maker once it sees the pool closed (waited for, up to 30 s);
    /// then `cdir`'s directories without a container record, what a maker that did not finish
    /// left, go with their QEMU, as at the next start (`live.rs`).
    pub fn close(&self, cdir: &Path) {
        let ready = {
            let mut g = self.lock();
            g.closed = true;
            std::mem::take(&mut g.ready)
        };
        drop(ready);
        self.wake.notify_one();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.lock().making.is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        for e in std::fs::read_dir(cdir).into_iter().flatten().flatten() {
            let d = e.path();
            if d.join(live::STATE_FILE).exists() {
                continue;
            }
            for pid in orphan_vms(&d) {
                // SAFETY: kill(2) on a QEMU whose command line names this directory.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            }
            let _ = std::fs::remove_dir_all(&d);
        }
    }

    fn closed(&self) -> bool {
        self.lock().closed
    }

    /// `docker info`'s line.
    pub(crate) fn status(&self) -> String {
        format!(
            "{} ready of {}; {} of {} eligible creates took one",
            self.ready(),
            self.target(),
            self.hits.load(Ordering::SeqCst),
            self.hits.load(Ordering::SeqCst) + self.misses.load(Ordering::SeqCst)
        )
    }
}

/// A clone being made: listed in the pool while its maker runs (also when the maker's task
/// is cancelled, the guard's drop ends it).
struct Making<'a> {
    pool: &'a Pool,
    dir: PathBuf,
}

impl Drop for Making<'_> {
    fn drop(&mut self) {
        self.pool.lock().making.retain(|d| *d != self.dir);
    }
}

/// The nice value of a pooled clone while it is made and waits: it yields to the VMs of
/// running containers (on a small host a refill otherwise shares the cores with them:
/// measured under TCG, a pooled run took 0.9-1.2 s with the refill at the same priority).
/// Not 19: beside busy container VMs a clone at 19 got so little CPU that its restore, the
/// store's mount and its engine's first answer timed out (seen in the interactive e2e test
/// under a load average of 12), and the pool stayed empty.
const POOL_NICE: i32 = 10;

/// The daemon's own nice value (what a handed-over VM gets back).
fn daemon_nice() -> i32 {
    // SAFETY: getpriority(2) of the calling process; no pointers.
    unsafe { libc::getpriority(libc::PRIO_PROCESS, std::process::id()) }
}

/// Runs `f` with the calling thread at [`POOL_NICE`], so that the processes it starts
/// (qemu-img, QEMU and all of QEMU's threads) inherit it; the thread's own value is put
/// back after. Only as root: lowering it back needs CAP_SYS_NICE (without, `f` just runs).
fn niced<T>(f: impl FnOnce() -> T) -> T {
    // SAFETY: geteuid(2) and get/setpriority(2) on the calling thread (who 0); no pointers.
    unsafe {
        if libc::geteuid() != 0 {
            return f();
        }
        let before = libc::getpriority(libc::PRIO_PROCESS, 0);
        libc::setpriority(libc::PRIO_PROCESS, 0, POOL_NICE);
        let r = f();
        if libc::setpriority(libc::PRIO_PROCESS, 0, before) != 0 {
            eprintln!(
                "vmd: pool: WARNING: cannot put a worker thread's priority back: {}",
                std::io::Error::last_os_error()
            );
        }
        r
    }
}

/// Sets the nice value of every thread of process `pid` (Linux's nice is per thread).
fn renice(pid: u32, nice: i32) {
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
    {
        if let Ok(tid) = t.file_name().to_string_lossy().parse::<libc::id_t>() {
            // SAFETY: setpriority(2) on one thread of a QEMU this daemon started; no pointers.
            unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, nice) };
        }
    }
}

/// Is there room in the host's memory for one more clone (available memory at least twice
/// a VM's RAM)? True where /proc/meminfo cannot be read.
fn memory_allows(vm_mib: u64) -> bool {
    let info = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let avail_kib = info
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok());
    avail_kib.is_none_or(|k| k / 1024 >= 2 * vm_mib)
}

impl Daemon {
    /// Starts the pool's refill task (with the daemon's runtime; call once, from
    /// [`Daemon::resume`]). It ends when the pool is closed.
    pub(crate) fn start_pool(self: &Arc<Self>) {
        if self.opts.cold_boot {
            return;
        }
        let d = self.clone();
        tokio::spawn(async move {
            let mut failures = 0u32;
            loop {
                if d.pool.closed() {
                    return;
                }
                let quiet = d
                    .pool
                    .last_take
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .map(|t| REFILL_AFTER.saturating_sub(t.elapsed()))
                    .unwrap_or_default();
                if !quiet.is_zero() {
                    tokio::time::sleep(quiet).await;
                    continue;
                }
                let stamp = Stamp::of(&d.template);
                if d.pool.sweep(stamp) && memory_allows(d.opts.memory_mib) {
                    match d.make_warm(stamp).await {
                        Ok(()) => failures = 0,
                        Err(e) => {
                            failures += 1;
                            eprintln!("vmd: pool: making a clone failed: {e:#}");
                            // A template that cannot be cloned is not retried in a tight loop.
                            let wait = Duration::from_secs(5 << failures.min(5));
                            let _ = tokio::time::timeout(wait, d.pool.wake.notified()).await;
                        }
                    }
                    continue;
                }
                let _ = tokio::time::timeout(Duration::from_secs(5), d.pool.wake.notified()).await;
            }
        });
    }

    /// Makes one pooled clone and puts it into the pool.
    async fn make_warm(&self, stamp: Option<Stamp>) -> anyhow::Result<()> {
        let Some(stamp) = stamp else {
            anyhow::bail!("the template is not complete");
        };
        let t0 = Instant::now();
        let id = random_hex(64);
        let dir = self.opts.state_dir.join("c").join(&id[..12]);
        {
            let mut g = self.pool.lock();
            if g.closed {
                return Ok(());
            }
            g.making.push(dir.clone());
        }
        let _making = Making {
            pool: &self.pool,
            dir: dir.clone(),
        };
        let (t, dir2, short) = (self.template.clone(), dir.clone(), id[..12].to_string());
        let made = tokio::task::spawn_blocking(move || {
            let vm = niced(|| t.clone_vm(&dir2, &short, &[], &[], false))?;
            let agent = template::connect_agent(&dir2, Duration::from_secs(60))?;
            // Not part of the identity, and a TCG-cold 9p mount: done now, off the
            // container's critical path.
            if !template::mount_store_ahead(&agent, Duration::from_secs(30))? {
                eprintln!(
                    "vmd: pool: the clone agent of {short} did not answer `mount` (an older \
                     image?): the store is mounted at the hand-over"
                );
            }
            anyhow::Ok((vm, agent))
        })
        .await;
        let (vm, agent) = match made {
            Ok(Ok(x)) => x,
            Ok(Err(e)) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                anyhow::bail!("clone task: {e}");
            }
        };
        // From here the clone's drop kills its QEMU and removes its directory.
        let mut w = Warm {
            id,
            dir: dir.clone(),
            vm: Some(vm),
            agent: Some(agent),
            guest: GuestClient::new(&dir.join(template::ENGINE_SOCKET)),
            stamp,
            made: Instant::now(),
        };
        // The engine's session, started (and its first, TCG-cold answer paid) now.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while let Err(e) = w.guest.try_ping().await {
            if tokio::time::Instant::now() > deadline || w.dead() || self.pool.closed() {
                anyhow::bail!("the engine in the pooled clone did not answer: {e}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Stopped while it waits: no host CPU, no guest clock.
        let mut vm = w.vm.take();
        let stopped = tokio::task::spawn_blocking(move || {
            let r = match vm.as_mut() {
                Some(v) => v
                    .qmp()
                    .and_then(|q| Ok(q.stop()?))
                    .map_err(anyhow::Error::from),
                None => Err(anyhow::anyhow!("no VM")),
            };
            (vm, r)
        })
        .await
        .map_err(|e| anyhow::anyhow!("stop task: {e}"))?;
        w.vm = stopped.0;
        stopped.1.context("stopping the pooled clone (QMP stop)")?;
        debug(&format!(
            "{}: pooled clone ready in {:.2} s",
            &w.id[..12],
            t0.elapsed().as_secs_f64()
        ));
        self.pool.put(w);
        Ok(())
    }

    /// The pool's size (0 turns it off; at most [`MAX`]).
    pub fn set_pool(&self, n: usize) {
        self.pool.set_target(n);
    }

    /// The pool (its size, the clones waiting).
    pub fn pool(&self) -> &Pool {
        &self.pool
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pool_is_bounded_and_closes() {
        let p = Pool::new(100);
        assert_eq!(p.target(), MAX);
        p.set_target(3);
        assert_eq!(p.target(), 3);
        assert!(p.sweep(None), "an empty pool wants clones");
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("left-by-a-maker")).unwrap();
        std::fs::create_dir(d.path().join("a-container")).unwrap();
        std::fs::write(d.path().join("a-container").join(live::STATE_FILE), b"{}").unwrap();
        p.close(d.path());
        assert!(!d.path().join("left-by-a-maker").exists());
        assert!(
            d.path().join("a-container").exists(),
            "a container's directory went"
        );
        assert!(!p.sweep(None), "a closed pool wants none");
        assert!(p.take(None).is_none());
        assert_eq!(p.status(), "0 ready of 3; 0 of 0 eligible creates took one");
    }

    #[test]
    fn memory_check_reads_meminfo() {
        // Any host running this test has more than 0 MiB available and less than 2^40 MiB.
        assert!(memory_allows(0));
        assert!(!memory_allows(1 << 40));
    }
}
