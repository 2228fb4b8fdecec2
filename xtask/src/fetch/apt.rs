//! Debian's archive through apt's own client, with a private apt state directory.
//!
//! The state lives in `$AXION_CACHE/apt` (D):
//!
//! ```text
//! D/parts/        the host's sources (/etc/apt/sources.list, sources.list.d/*.sources and
//!                 *.list), rewritten so every entry also has deb-src
//! D/state/status  an empty dpkg status: apt must not see (or touch) the host's packages
//! D/lists/        package and source indexes from `apt-get update`
//! D/cache/        apt's binary caches
//! D/updated       the sources the lists were made from; fresh for a day
//! ```
//!
//! apt reads the host's apt.conf (proxies, keyrings) but nothing it writes is the host's. No
//! archive host name is written in this repository: the host's configuration knows them.
//! apt is run in a scratch directory because it downloads into the current directory.

use std::collections::BTreeSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use sha2::Digest;

use super::FetchError;

/// Lists younger than this are reused; older ones are refreshed once per run.
const FRESH: Duration = Duration::from_secs(24 * 3600);

/// apt state directories already updated by this process: a pin that is not found in
/// lists refreshed during this run is really gone, no second update needed.
static UPDATED_THIS_RUN: Mutex<BTreeSet<PathBuf>> = Mutex::new(BTreeSet::new());

/// Whether a Debian package is a binary package (`apt-get download`) or a source package
/// (`apt-get source --download-only`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Binary,
    Source,
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Kind::Binary => "binary",
            Kind::Source => "source",
        })
    }
}

/// The private apt state, ready to use (lists present and fresh).
pub struct Apt {
    dir: PathBuf,
    _lock: File,
}

/// The host's apt sources as files for the private parts directory: (name, text).
pub fn host_sources(etc_apt: &Path) -> Result<Vec<(String, String)>, FetchError> {
    let mut out = Vec::new();
    let main = etc_apt.join("sources.list");
    if let Ok(text) = std::fs::read_to_string(&main) {
        let t = one_line_with_src(&text);
        if !t.is_empty() {
            out.push(("host-sources.list".to_owned(), t));
        }
    }
    let parts = etc_apt.join("sources.list.d");
    let mut names: Vec<PathBuf> = match std::fs::read_dir(&parts) {
        Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    for p in names {
        let Some(name) = p.file_name().and_then(|n| n.to_str()).map(str::to_owned) else {
            continue;
        };
        // apt itself only reads these two suffixes (anything else is disabled or a backup).
        let text = if name.ends_with(".sources") {
            std::fs::read_to_string(&p).map(|t| deb822_with_src(&t))
        } else if name.ends_with(".list") {
            std::fs::read_to_string(&p).map(|t| one_line_with_src(&t))
        } else {
            continue;
        }
        .map_err(|source| FetchError::Io {
            action: "read",
            path: p.clone(),
            source,
        })?;
        if !text.trim().is_empty() {
            out.push((name, text));
        }
    }
    Ok(out)
}

/// deb822 `.sources`: every stanza gets `Types: deb deb-src`.
pub fn deb822_with_src(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        if line
            .split(':')
            .next()
            .is_some_and(|k| k.trim().eq_ignore_ascii_case("types"))
            && !line.starts_with([' ', '\t', '#'])
        {
            out.push_str("Types: deb deb-src\n");
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// One-line format: every `deb` line gets a `deb-src` twin (and the other way round).
pub fn one_line_with_src(text: &str) -> String {
    let mut seen = BTreeSet::new();
    let mut out = String::new();
    for line in text.lines() {
        let l = line.trim();
        let rest = match l.split_once(char::is_whitespace) {
            Some(("deb", rest)) | Some(("deb-src", rest)) => rest.trim(),
            _ => continue,
        };
        if seen.insert(rest.to_owned()) {
            out.push_str(&format!("deb {rest}\ndeb-src {rest}\n"));
        }
    }
    out
}

impl Apt {
    /// Opens (and if needed creates and updates) the private apt state under `dir`.
    pub fn open(dir: &Path) -> Result<Apt, FetchError> {
        Apt::open_with(dir, Path::new("/etc/apt"))
    }

    pub fn open_with(dir: &Path, etc_apt: &Path) -> Result<Apt, FetchError> {
        let io = |action: &'static str, path: &Path| {
            let path = path.to_owned();
            move |source| FetchError::Io {
                action,
                path,
                source,
            }
        };
        for sub in ["parts", "state", "lists/partial", "cache/archives/partial"] {
            let d = dir.join(sub);
            std::fs::create_dir_all(&d).map_err(io("create", &d))?;
        }
        let lock_path = dir.join(".lock");
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io("open", &lock_path))?;
        lock.lock().map_err(io("lock", &lock_path))?;
        let apt = Apt {
            dir: dir.to_owned(),
            _lock: lock,
        };

        let sources = host_sources(etc_apt)?;
        if sources.is_empty() {
            return Err(FetchError::Apt {
                command: "read the host's apt sources".into(),
                message: format!(
                    "no entries in {0}/sources.list or {0}/sources.list.d/*.sources: this host \
                     cannot reach Debian's archive through apt",
                    etc_apt.display()
                ),
            });
        }
        let mut fingerprint = String::new();
        for (name, text) in &sources {
            fingerprint.push_str(&format!("== {name}\n{text}"));
        }
        let fingerprint = format!(
            "{}\n",
            hex::encode(sha2::Sha256::digest(fingerprint.as_bytes()))
        );
        let status = dir.join("state/status");
        if !status.exists() {
            std::fs::write(&status, "").map_err(io("create", &status))?;
        }
        let updated = dir.join("updated");
        let fresh = std::fs::read_to_string(&updated).is_ok_and(|f| f == fingerprint)
            && std::fs::metadata(&updated)
                .and_then(|m| m.modified())
                .is_ok_and(|t| SystemTime::now().duration_since(t).unwrap_or(FRESH) < FRESH);
        if !fresh {
            let parts = dir.join("parts");
            for e in std::fs::read_dir(&parts)
                .map_err(io("read", &parts))?
                .flatten()
            {
                let _ = std::fs::remove_file(e.path());
            }
            for (name, text) in &sources {
                let p = parts.join(name);
                std::fs::write(&p, text).map_err(io("write", &p))?;
            }
            let _ = std::fs::remove_file(&updated);
            super::progress::note(&format!(
                "apt-get update (private lists in {})",
                dir.display()
            ));
            apt.update()?;
            std::fs::write(&updated, &fingerprint).map_err(io("write", &updated))?;
        }
        Ok(apt)
    }

    fn options(&self) -> Vec<String> {
        let d = self.dir.display();
        let mut o = vec![
            format!("Dir::State={d}/state"),
            format!("Dir::State::Lists={d}/lists"),
            format!("Dir::State::status={d}/state/status"),
            format!("Dir::Cache={d}/cache"),
            "Dir::Etc::SourceList=/dev/null".into(),
            format!("Dir::Etc::SourceParts={d}/parts"),
            "Acquire::Languages=none".into(),
        ];
        // As root apt downloads as the `_apt` user, who cannot write our directories; it then
        // warns and carries on as root. Say so up front instead.
        if is_root() {
            o.push("APT::Sandbox::User=root".into());
        }
        o.into_iter().flat_map(|o| ["-o".to_owned(), o]).collect()
    }

    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.args(self.options())
            .env("LC_ALL", "C")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null());
        c
    }

    /// `apt-get update` into the private lists.
    pub fn update(&self) -> Result<(), FetchError> {
        let scratch = tempfile::tempdir().map_err(|source| FetchError::Io {
            action: "create",
            path: std::env::temp_dir(),
            source,
        })?;
        let mut c = self.command("apt-get");
        c.args(["-q", "update"]);
        run(c, scratch.path(), "apt-get update (private lists)")?;
        UPDATED_THIS_RUN
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(self.dir.clone());
        Ok(())
    }

    fn updated_this_run(&self) -> bool {
        UPDATED_THIS_RUN
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&self.dir)
    }

    /// Versions of `package` the archive has now, newest first as apt lists them.
    pub fn available(&self, package: &str, kind: Kind) -> Vec<String> {
        let out = self
            .command("apt-cache")
            .args(["madison", package])
            .stderr(Stdio::null())
            .output();
        let Ok(out) = out else { return Vec::new() };
        let mut v = Vec::new();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let f: Vec<&str> = line.split('|').map(str::trim).collect();
            if f.len() != 3 || f[0] != package {
                continue;
            }
            let is_source = f[2].ends_with("Sources");
            if (kind == Kind::Source) == is_source && !v.contains(&f[1].to_owned()) {
                v.push(f[1].to_owned());
            }
        }
        v
    }

    fn gone(&self, package: &str, version: &str, kind: Kind) -> Option<FetchError> {
        let available = self.available(package, kind);
        if available.iter().any(|v| v == version) {
            return None;
        }
        Some(FetchError::DebianVersionGone {
            kind,
            package: package.into(),
            version: version.into(),
            available,
        })
    }

    /// `apt-get download package=version` into `into`; returns the .deb.
    pub fn download_binary(
        &self,
        package: &str,
        version: &str,
        into: &Path,
        label: &str,
    ) -> Result<PathBuf, FetchError> {
        let spec = format!("{package}={version}");
        let attempt = || {
            let mut c = self.command("apt-get");
            c.args(["-q", "download", &spec]);
            run_with_progress(c, into, &format!("apt-get download {spec}"), label)
        };
        if let Err(e) = attempt() {
            let e = self.explain(e, package, version, Kind::Binary);
            match e {
                FetchError::DebianVersionGone { .. } if !self.updated_this_run() => {
                    self.update()?;
                    attempt().map_err(|e| self.explain(e, package, version, Kind::Binary))?;
                }
                e => return Err(e),
            }
        }
        let debs = files_with(into, |n| n.ends_with(".deb"));
        match debs.as_slice() {
            [one] => Ok(one.clone()),
            _ => Err(FetchError::Apt {
                command: format!("apt-get download {spec}"),
                message: format!(
                    "expected one .deb in {}, found {}",
                    into.display(),
                    debs.len()
                ),
            }),
        }
    }

    /// `apt-get source --download-only package=version` into `into`; returns the named file
    /// and, when apt took another revision than the pinned one (apt does that silently when
    /// the pin is gone), that revision.
    pub fn download_source_file(
        &self,
        package: &str,
        version: &str,
        file: &str,
        into: &Path,
        label: &str,
    ) -> Result<(PathBuf, Option<String>), FetchError> {
        let spec = format!("{package}={version}");
        let attempt = || {
            let mut c = self.command("apt-get");
            c.args(["-q", "source", "--download-only", &spec]);
            run_with_progress(
                c,
                into,
                &format!("apt-get source --download-only {spec}"),
                label,
            )
        };
        if let Err(e) = attempt() {
            match self.explain(e, package, version, Kind::Source) {
                FetchError::DebianVersionGone { .. } if !self.updated_this_run() => {
                    self.update()?;
                    attempt().map_err(|e| self.explain(e, package, version, Kind::Source))?;
                }
                e => return Err(e),
            }
        }
        let upstream_version = version.split_once(':').map_or(version, |(_, v)| v);
        let want_dsc = format!("{package}_{upstream_version}.dsc");
        let dscs = files_with(into, |n| n.ends_with(".dsc"));
        let substituted = match dscs
            .iter()
            .find(|p| p.file_name().is_some_and(|n| n == want_dsc.as_str()))
        {
            Some(_) => None,
            // The .dsc's name lacks the epoch; its Version field has it.
            None => dscs.first().and_then(|p| {
                let text = std::fs::read_to_string(p).ok()?;
                let v = text
                    .lines()
                    .find_map(|l| l.strip_prefix("Version:"))?
                    .trim()
                    .to_owned();
                Some(v)
            }),
        };
        let path = into.join(file);
        if path.is_file() {
            return Ok((path, substituted));
        }
        if substituted.is_some() {
            if let Some(gone) = self.gone(package, version, Kind::Source) {
                return Err(gone);
            }
        }
        let found: Vec<String> = files_with(into, |_| true)
            .iter()
            .filter_map(|p| p.file_name()?.to_str().map(str::to_owned))
            .filter(|n| !n.starts_with('.') && n != "apt.log")
            .collect();
        Err(FetchError::NotInSourcePackage {
            package: package.into(),
            version: version.into(),
            file: file.into(),
            found,
        })
    }

    /// Turns a failed apt run into "that version is gone" when that is what happened.
    fn explain(&self, e: FetchError, package: &str, version: &str, kind: Kind) -> FetchError {
        self.gone(package, version, kind).unwrap_or(e)
    }
}

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    // /proc/self belongs to the process's effective user.
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

fn files_with(dir: &Path, pred: impl Fn(&str) -> bool) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.is_file() && p.file_name().and_then(|n| n.to_str()).is_some_and(&pred)
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Runs apt in `cwd` with its output in `cwd/.apt.log`; the error carries apt's `E:` lines.
fn run(mut c: Command, cwd: &Path, what: &str) -> Result<(), FetchError> {
    let log = cwd.join(".apt.log");
    let f = File::create(&log).map_err(|source| FetchError::Io {
        action: "create",
        path: log.clone(),
        source,
    })?;
    let f2 = f.try_clone().map_err(|source| FetchError::Io {
        action: "open",
        path: log.clone(),
        source,
    })?;
    let status = c
        .current_dir(cwd)
        .stdout(f)
        .stderr(f2)
        .status()
        .map_err(|e| FetchError::Apt {
            command: what.into(),
            message: format!("cannot run apt ({e}); is this a Debian host?"),
        })?;
    finish(status, &log, what)
}

fn finish(status: std::process::ExitStatus, log: &Path, what: &str) -> Result<(), FetchError> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let _ = std::fs::remove_file(log);
    if status.success() {
        return Ok(());
    }
    let errors: Vec<&str> = text.lines().filter(|l| l.starts_with("E:")).collect();
    let message = if errors.is_empty() {
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(5)..].join("\n")
    } else {
        errors.join("\n")
    };
    Err(FetchError::Apt {
        command: what.into(),
        message: format!("{status}: {message}"),
    })
}

/// Like [`run`], with a byte counter of what apt has written into `cwd` so far.
fn run_with_progress(
    mut c: Command,
    cwd: &Path,
    what: &str,
    label: &str,
) -> Result<(), FetchError> {
    let log = cwd.join(".apt.log");
    let f = File::create(&log).map_err(|source| FetchError::Io {
        action: "create",
        path: log.clone(),
        source,
    })?;
    let f2 = f.try_clone().map_err(|source| FetchError::Io {
        action: "open",
        path: log.clone(),
        source,
    })?;
    let started = Instant::now();
    let mut child = c
        .current_dir(cwd)
        .stdout(f)
        .stderr(f2)
        .spawn()
        .map_err(|e| FetchError::Apt {
            command: what.into(),
            message: format!("cannot run apt ({e}); is this a Debian host?"),
        })?;
    let bar = super::progress::bytes(None, label, &format!("with {what}"), 0);
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) => {}
            Err(e) => {
                return Err(FetchError::Apt {
                    command: what.into(),
                    message: e.to_string(),
                })
            }
        }
        bar.set_position(dir_bytes(cwd));
        std::thread::sleep(Duration::from_millis(150));
    };
    let got = dir_bytes(cwd);
    if status.success() {
        super::progress::done(&bar, label, got, started);
    } else {
        bar.abandon();
    }
    finish(status, &log, what)
}

fn dir_bytes(dir: &Path) -> u64 {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file() && e.file_name() != ".apt.log")
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deb822_gets_deb_src_in_every_stanza() {
        let t =
            "Types: deb\nURIs: http://mirror.invalid/debian\nSuites: stable\nComponents: main\n\n\
             # comment\ntypes: deb\nURIs: http://mirror.invalid/sec\nSuites: stable-security\n";
        let o = deb822_with_src(t);
        assert_eq!(o.matches("Types: deb deb-src").count(), 2, "{o}");
        assert!(
            o.contains("# comment") && o.contains("Suites: stable-security"),
            "{o}"
        );
    }

    #[test]
    fn one_line_format_gets_deb_src_twins() {
        let t = "# header\ndeb http://mirror.invalid/debian stable main\n\
                 deb-src http://mirror.invalid/debian stable main\n\
                 deb [signed-by=/k.gpg] http://mirror.invalid/sec stable-security main\n";
        let o = one_line_with_src(t);
        assert_eq!(
            o,
            "deb http://mirror.invalid/debian stable main\ndeb-src http://mirror.invalid/debian \
             stable main\n\
             deb [signed-by=/k.gpg] http://mirror.invalid/sec stable-security main\n\
             deb-src [signed-by=/k.gpg] http://mirror.invalid/sec stable-security main\n"
        );
    }

    #[test]
    fn host_sources_reads_both_formats_and_skips_disabled_files() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("sources.list.d")).unwrap();
        std::fs::write(
            d.path().join("sources.list"),
            "deb http://m.invalid/d stable main\n",
        )
        .unwrap();
        std::fs::write(
            d.path().join("sources.list.d/a.sources"),
            "Types: deb\nURIs: http://m.invalid/a\n",
        )
        .unwrap();
        std::fs::write(
            d.path().join("sources.list.d/b.list"),
            "deb http://m.invalid/b stable main\n",
        )
        .unwrap();
        std::fs::write(
            d.path().join("sources.list.d/c.sources.disabled"),
            "Types: deb\n",
        )
        .unwrap();
        let s = host_sources(d.path()).unwrap();
        let names: Vec<&str> = s.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["host-sources.list", "a.sources", "b.list"]);
        assert!(s[1].1.contains("Types: deb deb-src"));
        assert!(s[2].1.contains("deb-src http://m.invalid/b"));
    }

    #[test]
    fn no_host_sources_is_a_clear_error() {
        let d = tempfile::tempdir().unwrap();
        let etc = tempfile::tempdir().unwrap();
        let e = Apt::open_with(d.path(), etc.path())
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("sources.list") && e.contains("cannot reach"),
            "{e}"
        );
    }
}
