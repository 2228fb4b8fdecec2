//! Fetch tests against a small HTTP server on 127.0.0.1 written here (Range/206, 404, a
//! connection cut mid-body), plus the apt backend against Debian's real archive.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::*;
use crate::cache::sha256_bytes;
use crate::recipe::parse_recipe;

/// What the test server does for one path.
#[derive(Clone, Copy, Debug)]
enum Behaviour {
    /// 200, or 206 for a `Range: bytes=N-` request.
    Serve,
    /// Like `Serve`, but the first response sends this many body bytes and hangs up.
    CutFirst(usize),
    /// Every response sends this many body bytes (from where the range starts) and hangs up.
    CutAlways(usize),
}

#[derive(Debug, Clone, PartialEq)]
struct Hit {
    path: String,
    range: Option<u64>,
}

struct Server {
    base: String,
    hits: Arc<Mutex<Vec<Hit>>>,
}

impl Server {
    /// Serves `routes` (path → behaviour, body); anything else is a 404.
    fn start(routes: &[(&str, Behaviour, &[u8])]) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let routes: BTreeMap<String, (Behaviour, Vec<u8>)> = routes
            .iter()
            .map(|(p, b, body)| (p.to_string(), (*b, body.to_vec())))
            .collect();
        let hits = Arc::new(Mutex::new(Vec::new()));
        let log = hits.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let _ = handle(stream, &routes, &log);
            }
        });
        Server { base, hits }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }
}

fn handle(
    mut stream: TcpStream,
    routes: &BTreeMap<String, (Behaviour, Vec<u8>)>,
    log: &Mutex<Vec<Hit>>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut first = String::new();
    reader.read_line(&mut first)?;
    let path = first.split_whitespace().nth(1).unwrap_or("/").to_owned();
    let mut range = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.trim().eq_ignore_ascii_case("range") {
                range = v
                    .trim()
                    .strip_prefix("bytes=")
                    .and_then(|r| r.strip_suffix('-'))
                    .and_then(|n| n.parse::<u64>().ok());
            }
        }
    }
    let earlier = {
        let mut l = log.lock().unwrap();
        let n = l.iter().filter(|h| h.path == path).count();
        l.push(Hit {
            path: path.clone(),
            range,
        });
        n
    };
    let Some((behaviour, body)) = routes.get(&path) else {
        stream.write_all(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\nConnection: close\r\n\r\nnot found",
        )?;
        return Ok(());
    };
    let start = range.unwrap_or(0) as usize;
    if start >= body.len() && range.is_some() {
        write!(
            stream,
            "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes \
             */{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            body.len()
        )?;
        return Ok(());
    }
    let rest = &body[start..];
    if range.is_some() {
        write!(
            stream,
            "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {start}-{}/{}\r\nContent-Length: \
             {}\r\nConnection: close\r\n\r\n",
            body.len() - 1,
            body.len(),
            rest.len()
        )?;
    } else {
        write!(
            stream,
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nAccept-Ranges: \
             bytes\r\nConnection: close\r\n\r\n",
            rest.len()
        )?;
    }
    let cut = match behaviour {
        Behaviour::CutFirst(n) if earlier == 0 => Some(*n),
        Behaviour::CutAlways(n) => Some(*n),
        _ => None,
    };
    match cut {
        Some(n) => {
            stream.write_all(&rest[..n.min(rest.len())])?;
            stream.flush()?;
            stream.shutdown(std::net::Shutdown::Both)?;
        }
        None => stream.write_all(rest)?,
    }
    Ok(())
}

/// A checkout-like directory with one recipe, and a cache of its own (never the user's).
struct Env {
    dir: tempfile::TempDir,
    layout: Layout,
}

impl Env {
    fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("recipes")).unwrap();
        let layout = Layout::with_cache(dir.path().to_owned(), dir.path().join("cache"));
        Env { dir, layout }
    }

    /// Writes recipes/NAME.toml with one `[[source]]` made of `source_keys` and loads it.
    fn recipe(&self, name: &str, source_keys: &str) -> Recipe {
        let path = self.dir.path().join("recipes").join(format!("{name}.toml"));
        let text = format!(
            "[package]\nname = \"{name}\"\nversion = \"1\"\nlicense = \"MIT\"\nsummary = \
             \"test\"\n\n\
             [[source]]\n{source_keys}\n\n[build]\nkind = \"cargo\"\n"
        );
        std::fs::write(&path, &text).unwrap();
        parse_recipe(&path, &text).unwrap()
    }

    fn downloads(&self) -> PathBuf {
        self.layout.downloads()
    }

    /// Every file under downloads/ except the lock and stamps: entries, partials, scratch.
    fn cache_files(&self) -> Vec<String> {
        let root = self.downloads();
        let mut v: Vec<String> = walkdir::WalkDir::new(&root)
            .into_iter()
            .flatten()
            .filter(|e| e.file_type().is_file())
            .map(|e| e.path().strip_prefix(&root).unwrap().display().to_string())
            .filter(|p| p != ".lock" && !p.starts_with(".verified/"))
            .collect();
        v.sort();
        v
    }
}

fn body(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 % 251) as u8).collect()
}

fn fetch(env: &Env, r: &Recipe, mode: Mode) -> Result<PathBuf> {
    fetch_source(&env.layout, r, &r.spec.sources[0], mode)
}

fn err(r: Result<PathBuf>) -> String {
    format!("{:#}", r.unwrap_err())
}

#[test]
fn good_download_enters_the_cache_and_is_reused() {
    let data = body(300_000);
    let sha = sha256_bytes(&data);
    let s = Server::start(&[("/a.tar", Behaviour::Serve, &data)]);
    let env = Env::new();
    let r = env.recipe(
        "a",
        &format!(
            "file = \"a.tar\"\nsha256 = \"{sha}\"\nurls = [\"{}\"]",
            s.url("/a.tar")
        ),
    );
    let p = fetch(&env, &r, Mode::Online).unwrap();
    assert_eq!(p, env.downloads().join(&sha));
    assert_eq!(std::fs::read(&p).unwrap(), data);
    assert_eq!(env.cache_files(), vec![sha.clone()]);
    // Second time: from the cache, no request.
    assert_eq!(fetch(&env, &r, Mode::Online).unwrap(), p);
    assert_eq!(s.hits().len(), 1);
}

#[test]
fn wrong_hash_names_both_hashes_and_leaves_nothing() {
    let data = body(50_000);
    let want = sha256_bytes(b"something else");
    let s = Server::start(&[("/a.tar", Behaviour::Serve, &data)]);
    let env = Env::new();
    let r = env.recipe(
        "a",
        &format!(
            "file = \"a.tar\"\nsha256 = \"{want}\"\nurls = [\"{}\"]",
            s.url("/a.tar")
        ),
    );
    let e = err(fetch(&env, &r, Mode::Online));
    assert!(e.contains(&want), "expected hash missing: {e}");
    assert!(e.contains(&sha256_bytes(&data)), "actual hash missing: {e}");
    assert!(
        e.contains(&s.url("/a.tar")) && e.contains("'a.tar'") && e.contains("package 'a'"),
        "{e}"
    );
    assert_eq!(
        env.cache_files(),
        Vec::<String>::new(),
        "nothing may enter the cache, no temp files"
    );
}

#[test]
fn connection_cut_mid_body_is_resumed_with_a_range_request() {
    let data = body(400_000);
    let sha = sha256_bytes(&data);
    let s = Server::start(&[("/a.tar", Behaviour::CutFirst(123_456), &data)]);
    let env = Env::new();
    let r = env.recipe(
        "a",
        &format!(
            "file = \"a.tar\"\nsha256 = \"{sha}\"\nurls = [\"{}\"]",
            s.url("/a.tar")
        ),
    );
    let p = fetch(&env, &r, Mode::Online).unwrap();
    assert_eq!(std::fs::read(&p).unwrap(), data);
    let hits = s.hits();
    assert_eq!(hits.len(), 2, "{hits:?}");
    assert_eq!(hits[0].range, None);
    assert_eq!(
        hits[1].range,
        Some(123_456),
        "the second request continues where the first stopped"
    );
    assert_eq!(env.cache_files(), vec![sha]);
}

#[test]
fn connection_always_cut_gives_a_clear_error_and_no_entry_then_the_next_run_resumes() {
    let data = body(200_000);
    let sha = sha256_bytes(&data);
    let s = Server::start(&[("/a.tar", Behaviour::CutAlways(10_000), &data)]);
    let env = Env::new();
    let r = env.recipe(
        "a",
        &format!(
            "file = \"a.tar\"\nsha256 = \"{sha}\"\nurls = [\"{}\"]",
            s.url("/a.tar")
        ),
    );
    let e = err(fetch(&env, &r, Mode::Online));
    assert!(
        e.contains(&s.url("/a.tar")) && e.contains("connection"),
        "{e}"
    );
    assert!(
        !env.downloads().join(&sha).exists(),
        "a partial download must not look like an entry"
    );
    // What arrived stays as a partial download only (for the next run to resume).
    assert_eq!(env.cache_files(), vec![format!(".partial/{sha}")]);
    let have = std::fs::metadata(env.downloads().join(".partial").join(&sha))
        .unwrap()
        .len();
    assert!(have > 0);

    let good = Server::start(&[("/a.tar", Behaviour::Serve, &data)]);
    let r = env.recipe(
        "a",
        &format!(
            "file = \"a.tar\"\nsha256 = \"{sha}\"\nurls = [\"{}\"]",
            good.url("/a.tar")
        ),
    );
    let p = fetch(&env, &r, Mode::Online).unwrap();
    assert_eq!(std::fs::read(&p).unwrap(), data);
    assert_eq!(good.hits()[0].range, Some(have));
    assert_eq!(env.cache_files(), vec![sha]);
}

#[test]
fn not_found_on_the_first_mirror_then_the_second() {
    let data = body(10_000);
    let sha = sha256_bytes(&data);
    let s = Server::start(&[("/mirror2/a.tar", Behaviour::Serve, &data)]);
    let env = Env::new();
    let urls = format!(
        "[\"{}\", \"{}\"]",
        s.url("/mirror1/a.tar"),
        s.url("/mirror2/a.tar")
    );
    let r = env.recipe(
        "a",
        &format!("file = \"a.tar\"\nsha256 = \"{sha}\"\nurls = {urls}"),
    );
    let p = fetch(&env, &r, Mode::Online).unwrap();
    assert_eq!(std::fs::read(&p).unwrap(), data);
    let paths: Vec<String> = s.hits().into_iter().map(|h| h.path).collect();
    assert_eq!(paths, ["/mirror1/a.tar", "/mirror2/a.tar"]);
}

#[test]
fn unreachable_mirror_fails_fast_and_the_next_is_used() {
    // A port nobody listens on: connection refused.
    let dead = TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}/a.tar", dead.local_addr().unwrap());
    drop(dead);
    let data = body(1000);
    let sha = sha256_bytes(&data);
    let s = Server::start(&[("/a.tar", Behaviour::Serve, &data)]);
    let env = Env::new();
    let r = env.recipe(
        "a",
        &format!(
            "file = \"a.tar\"\nsha256 = \"{sha}\"\nurls = [\"{dead_url}\", \"{}\"]",
            s.url("/a.tar")
        ),
    );
    let t = std::time::Instant::now();
    fetch(&env, &r, Mode::Online).unwrap();
    assert!(
        t.elapsed() < std::time::Duration::from_secs(5),
        "took {:?}",
        t.elapsed()
    );
}

#[test]
fn every_failed_mirror_is_listed() {
    let s = Server::start(&[]);
    let env = Env::new();
    let sha = sha256_bytes(b"x");
    let urls = format!("[\"{}\", \"{}\"]", s.url("/one"), s.url("/two"));
    let r = env.recipe(
        "a",
        &format!("file = \"a.tar\"\nsha256 = \"{sha}\"\nurls = {urls}"),
    );
    let e = err(fetch(&env, &r, Mode::Online));
    assert!(e.contains(&format!("{}: HTTP 404", s.url("/one"))), "{e}");
    assert!(e.contains(&format!("{}: HTTP 404", s.url("/two"))), "{e}");
    assert!(e.contains(&sha) && e.contains("a.tar"), "{e}");
    assert_eq!(env.cache_files(), Vec::<String>::new());
}

#[test]
fn corrupted_cache_entry_is_detected_and_fetched_again() {
    let data = body(64_000);
    let sha = sha256_bytes(&data);
    let s = Server::start(&[("/a.tar", Behaviour::Serve, &data)]);
    let env = Env::new();
    let r = env.recipe(
        "a",
        &format!(
            "file = \"a.tar\"\nsha256 = \"{sha}\"\nurls = [\"{}\"]",
            s.url("/a.tar")
        ),
    );
    let p = fetch(&env, &r, Mode::Online).unwrap();
    // Flip one byte, same size: only the hash can tell.
    let mut bad = data.clone();
    bad[1000] ^= 0xff;
    std::fs::write(&p, &bad).unwrap();
    let p2 = fetch(&env, &r, Mode::Online).unwrap();
    assert_eq!(p2, p);
    assert_eq!(std::fs::read(&p2).unwrap(), data);
    assert_eq!(s.hits().len(), 2, "the corrupt entry must be fetched again");
    // Offline, a corrupt entry counts as missing.
    std::fs::write(&p, &bad).unwrap();
    let e = err(fetch(&env, &r, Mode::Offline));
    assert!(e.contains("missing") && e.contains(&sha), "{e}");
    assert!(!p.exists());
}

#[test]
fn offline_uses_the_cache_and_lists_exactly_what_is_missing() {
    let data = body(5_000);
    let sha = sha256_bytes(&data);
    let s = Server::start(&[("/a.tar", Behaviour::Serve, &data)]);
    let env = Env::new();
    let have = env.recipe(
        "have",
        &format!(
            "file = \"a.tar\"\nsha256 = \"{sha}\"\nurls = [\"{}\"]",
            s.url("/a.tar")
        ),
    );
    fetch(&env, &have, Mode::Online).unwrap();
    let hits = s.hits().len();

    // With the entry: served from the cache, no request.
    assert_eq!(
        fetch(&env, &have, Mode::Offline).unwrap(),
        env.downloads().join(&sha)
    );
    assert_eq!(s.hits().len(), hits);

    // Without: the error names package, file and sha256, and nothing is requested.
    let sha_b = sha256_bytes(b"b");
    let sha_c = sha256_bytes(b"c");
    env.recipe(
        "lacks",
        &format!(
            "file = \"b.tar\"\nsha256 = \"{sha_b}\"\nurls = [\"{}\"]",
            s.url("/b.tar")
        ),
    );
    env.recipe(
        "also",
        &format!(
            "file = \"c.tar\"\nsha256 = \"{sha_c}\"\nurls = [\"{}\"]",
            s.url("/c.tar")
        ),
    );
    let set = RecipeSet::load(&env.layout.recipes()).unwrap();
    let names: Vec<String> = ["have", "lacks", "also"].map(String::from).to_vec();
    let e = format!(
        "{:#}",
        fetch_packages(&env.layout, &set, &names, Mode::Offline).unwrap_err()
    );
    assert!(e.contains(&format!("lacks: b.tar (sha256 {sha_b})")), "{e}");
    assert!(e.contains(&format!("also: c.tar (sha256 {sha_c})")), "{e}");
    assert!(e.contains("2 source(s) missing"), "{e}");
    assert!(!e.contains("a.tar"), "a cached source is not missing: {e}");
    assert_eq!(s.hits().len(), hits, "offline makes no request");

    fetch_packages(&env.layout, &set, &["have".to_owned()], Mode::Offline).unwrap();
}

#[test]
fn local_path_is_verified_and_cached() {
    let env = Env::new();
    std::fs::create_dir(env.dir.path().join("recipes/files")).unwrap();
    std::fs::write(env.dir.path().join("recipes/files/x.tar"), b"local bytes").unwrap();
    let sha = sha256_bytes(b"local bytes");
    let r = env.recipe(
        "loc",
        &format!("file = \"x.tar\"\nsha256 = \"{sha}\"\npath = \"files/x.tar\""),
    );
    let p = fetch(&env, &r, Mode::Online).unwrap();
    assert_eq!(std::fs::read(p).unwrap(), b"local bytes");

    let wrong = sha256_bytes(b"other");
    let r = env.recipe(
        "loc2",
        &format!("file = \"x.tar\"\nsha256 = \"{wrong}\"\npath = \"files/x.tar\""),
    );
    let e = err(fetch(&env, &r, Mode::Online));
    assert!(
        e.contains(&wrong) && e.contains(&sha) && e.contains("files/x.tar"),
        "{e}"
    );
    assert_eq!(env.cache_files(), vec![sha]);
}

// ---- Debian's archive, for real ------------------------------------------------------------

/// A small binary package pinned for the apt test. If the archive drops this version the
/// test fails saying so: pick the version `apt-cache madison hello` shows, download it with
/// `apt-get download hello=VERSION`, and put its version and sha256 here.
const HELLO_VERSION: &str = "2.10-3";
const HELLO_SHA256: &str = "2e6e2f1a0007dc43bc91c273fd36e91e40a4f1c2765a03eca68b70a42103878a";

/// Why the apt test cannot run on this host, if it cannot.
fn apt_unavailable() -> Option<String> {
    if !Path::new("/usr/bin/apt-get").exists() {
        return Some("apt-get is not installed (not a Debian host)".into());
    }
    match apt::host_sources(Path::new("/etc/apt")) {
        Ok(s) if s.is_empty() => Some("the host has no apt sources".into()),
        Err(e) => Some(e.to_string()),
        Ok(_) => None,
    }
}

#[test]
fn apt_backend_fetches_real_packages_from_debian() {
    if let Some(why) = apt_unavailable() {
        test_skip::skip(why);
        return;
    }
    let env = Env::new();
    // busybox's upstream tarball through its Debian source package, pinned as in the
    // repository's recipe (upstream's hash).
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../recipes");
    let busybox = RecipeSet::load(&repo)
        .unwrap()
        .get("busybox")
        .unwrap()
        .clone();
    let src = busybox.spec.sources[0].clone();
    let deb_src = src
        .debian_source
        .clone()
        .expect("recipes/busybox.toml has a debian-source");
    let r = env.recipe(
        "busybox",
        &format!(
            "file = \"{}\"\nsha256 = \"{}\"\ndebian-source = {{ package = \"{}\", version = \
             \"{}\", file = \"{}\" }}",
            src.file, src.sha256, deb_src.package, deb_src.version, deb_src.file
        ),
    );
    let p = fetch(&env, &r, Mode::Online).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(p, env.downloads().join(&src.sha256));
    assert_eq!(cache::sha256_file(&p).unwrap(), src.sha256);

    // A small binary package.
    let r = env.recipe(
        "hello",
        &format!(
            "file = \"hello_{HELLO_VERSION}_amd64.deb\"\nsha256 = \"{HELLO_SHA256}\"\n\
             debian-binary = {{ package = \"hello\", version = \"{HELLO_VERSION}\" }}"
        ),
    );
    match fetch(&env, &r, Mode::Online) {
        Ok(p) => assert_eq!(cache::sha256_file(&p).unwrap(), HELLO_SHA256),
        Err(e) => {
            let e = format!("{e:#}");
            if e.contains("no longer in the archive") {
                panic!(
                    "Debian's archive dropped hello={HELLO_VERSION}: update HELLO_VERSION and \
                     HELLO_SHA256 in \
                     xtask/src/fetch/tests.rs (see the comment there). apt says: {e}"
                );
            }
            panic!("{e}");
        }
    }
    // Only verified entries and no scratch left behind; the host's apt state untouched is
    // by construction (every apt directory points into the temp cache).
    assert_eq!(env.cache_files(), {
        let mut v = vec![src.sha256.clone(), HELLO_SHA256.to_owned()];
        v.sort();
        v
    });
    assert!(
        env.layout
            .cache
            .join("apt/lists")
            .read_dir()
            .unwrap()
            .count()
            > 1
    );

    // A source revision the archive no longer has, whose upstream tarball is still there
    // with the same bytes (apt takes the current revision by itself): the pinned hash
    // decides, so this works (with a warning), or at least says plainly what is there now.
    std::fs::remove_file(&p).unwrap();
    let old = env.recipe(
        "busybox-old",
        &format!(
            "file = \"{}\"\nsha256 = \"{}\"\ndebian-source = {{ package = \"busybox\", version = \
             \"1:1.35.0-4\", file = \"{}\" }}",
            src.file, src.sha256, deb_src.file
        ),
    );
    match fetch(&env, &old, Mode::Online) {
        Ok(p) => assert_eq!(cache::sha256_file(&p).unwrap(), src.sha256),
        Err(e) => {
            let e = format!("{e:#}");
            assert!(
                e.contains("busybox=1:1.35.0-4 is no longer in the archive; available now: 1:"),
                "{e}"
            );
        }
    }
    // An old revision whose file is not in the current one: said plainly.
    let ancient = env.recipe(
        "busybox-ancient",
        &format!(
            "file = \"busybox_1.30.1.orig.tar.bz2\"\nsha256 = \"{}\"\n\
             debian-source = {{ package = \"busybox\", version = \"1:1.30.1-1\", file = \
             \"busybox_1.30.1.orig.tar.bz2\" }}",
            sha256_bytes(b"ancient")
        ),
    );
    let e = err(fetch(&env, &ancient, Mode::Online));
    assert!(
        e.contains("busybox=1:1.30.1-1 is no longer in the archive; available now: 1:"),
        "{e}"
    );

    // A binary version the archive does not have: said plainly, with what it has now.
    let gone_sha = sha256_bytes(b"gone");
    let r = env.recipe(
        "gone",
        &format!(
            "file = \"hello_0.1-1_amd64.deb\"\nsha256 = \"{gone_sha}\"\n\
             debian-binary = {{ package = \"hello\", version = \"0.1-1\" }}"
        ),
    );
    let e = err(fetch(&env, &r, Mode::Online));
    assert!(e.contains("hello=0.1-1 is no longer in the archive"), "{e}");
    assert!(
        e.contains(&format!("available now: {HELLO_VERSION}")),
        "{e}"
    );
}
