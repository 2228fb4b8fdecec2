//! Container records (persisted as `containers/<id>/state.json`) and their live parts:
//! the output broadcast that attach subscribes to, the state watch that wait uses, stdin.

use crate::runtime::Bind;
use docker_api::types::{ContainerConfig, HostConfig, MountPoint};
use docker_api::Frame;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use tokio::sync::{broadcast, watch};

/// A container's state, as Docker names it (`State.Status`, the `status` filter); stored in
/// state.json as the same lowercase string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    #[default]
    Created,
    Running,
    /// Docker's; the engine does not pause containers (yet).
    #[allow(dead_code)]
    Paused,
    /// Between an exit and the restart its policy asks for (the backoff sleep).
    Restarting,
    /// Docker's; the engine removes a container in one step and never shows it.
    #[allow(dead_code)]
    Removing,
    Exited,
    /// Docker's; the engine has no half-removed containers.
    #[allow(dead_code)]
    Dead,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Restarting => "restarting",
            Status::Removing => "removing",
            Status::Exited => "exited",
            Status::Dead => "dead",
        }
    }

    /// Running, or about to run again: what `docker ps` lists without `-a`.
    pub fn is_active(self) -> bool {
        matches!(self, Status::Running | Status::Restarting)
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Record {
    pub id: String,
    pub name: String,
    pub created: i128,
    pub image: String,
    pub image_id: String,
    pub config: ContainerConfig,
    pub host_config: HostConfig,
    pub path: String,
    pub args: Vec<String>,
    pub status: Status,
    pub pid: i32,
    pub exit_code: i64,
    pub error: String,
    pub started_at: i128,
    pub finished_at: i128,
    pub restart_count: i64,
    pub binds: Vec<Bind>,
    pub mounts: Vec<MountPoint>,
    pub stopped_by_user: bool,
    pub cgroup: Option<PathBuf>,
    /// The address on the bridge (held from the first start until removal).
    #[serde(default)]
    pub endpoint: Option<crate::net::Endpoint>,
    /// The last run ended because the memory limit's OOM killer struck.
    #[serde(default)]
    pub oom_killed: bool,
    /// Anonymous volumes made for this container (`rm -v` removes them).
    #[serde(default)]
    pub anon_volumes: Vec<String>,
    /// The host ports bound at the last start, by container port (`80/tcp`): what inspect,
    /// `docker ps` and `docker port` show, ephemeral ones (`-p 80`) included; a re-adopting
    /// engine binds these again.
    #[serde(default)]
    pub published: std::collections::BTreeMap<String, Vec<docker_api::types::PortBinding>>,
    /// Frozen (cgroup.freeze) while running: `docker pause`.
    #[serde(default)]
    pub paused: bool,
    /// `State.Health` of a container with a health check (backend/health.rs).
    #[serde(default)]
    pub health: Option<docker_api::types::Health>,
}

/// What `wait` watches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Events {
    pub exits: u64,
    pub exit_code: i64,
    pub running: bool,
    pub removed: bool,
}

pub struct Container {
    /// State (state.json), spec, /etc files, the root's mount point.
    pub dir: PathBuf,
    /// The writable layer (upper, work) and the log.
    pub data: PathBuf,
    pub rec: Mutex<Record>,
    /// Output of the current run; `None` marks the end of a run.
    pub output: broadcast::Sender<Option<Frame>>,
    pub events: watch::Sender<Events>,
    /// The connection for its stdin to its monitor (runtime::monitor, `I`).
    pub stdin: Mutex<Option<std::fs::File>>,
    pub proxies: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Serialises start/stop/remove of this container.
    pub op: tokio::sync::Mutex<()>,
}

impl Container {
    /// `dir`: the state and set-up files; `data`: the writable layer and the log (the same
    /// directory unless the engine has an `--exec-root`).
    pub fn new(dir: PathBuf, data: PathBuf, rec: Record) -> Self {
        let (output, _) = broadcast::channel(1024);
        let (events, _) = watch::channel(Events {
            running: rec.status == Status::Running,
            exit_code: rec.exit_code,
            ..Default::default()
        });
        Container {
            dir,
            data,
            rec: Mutex::new(rec),
            output,
            events,
            stdin: Mutex::new(None),
            proxies: Mutex::new(Vec::new()),
            op: tokio::sync::Mutex::new(()),
        }
    }

    pub fn snapshot(&self) -> Record {
        self.rec.lock().unwrap().clone()
    }

    pub fn log_path(&self) -> PathBuf {
        let id = self.rec.lock().unwrap().id.clone();
        self.data.join(format!("{id}-json.log"))
    }

    pub fn save(&self) {
        let rec = self.snapshot();
        let tmp = self.dir.join("state.json.tmp");
        if std::fs::write(&tmp, serde_json::to_vec_pretty(&rec).unwrap_or_default()).is_ok() {
            let _ = std::fs::rename(&tmp, self.dir.join("state.json"));
        }
    }

    pub fn load(dir: &Path) -> Option<Record> {
        serde_json::from_slice(&std::fs::read(dir.join("state.json")).ok()?).ok()
    }

    pub fn is_running(&self) -> bool {
        self.rec.lock().unwrap().status == Status::Running
    }
}

/// Parses a signal name or number (`KILL`, `SIGTERM`, `9`).
pub fn parse_signal(s: &str) -> Option<nix::sys::signal::Signal> {
    use std::str::FromStr;
    if let Ok(n) = s.parse::<i32>() {
        return nix::sys::signal::Signal::try_from(n).ok();
    }
    let up = s.to_ascii_uppercase();
    let name = if up.starts_with("SIG") {
        up
    } else {
        format!("SIG{up}")
    };
    nix::sys::signal::Signal::from_str(&name).ok()
}

/// Generated names: `adjective_surname` (of scientists and engineers), as dockerd's are.
const LEFT: &[&str] = &[
    "admiring",
    "adoring",
    "affectionate",
    "agitated",
    "amazing",
    "angry",
    "awesome",
    "beautiful",
    "blissful",
    "bold",
    "boring",
    "brave",
    "busy",
    "charming",
    "clever",
    "compassionate",
    "competent",
    "condescending",
    "confident",
    "cool",
    "cranky",
    "crazy",
    "dazzling",
    "determined",
    "distracted",
    "dreamy",
    "eager",
    "ecstatic",
    "elastic",
    "elated",
    "elegant",
    "eloquent",
    "epic",
    "exciting",
    "fervent",
    "festive",
    "flamboyant",
    "focused",
    "friendly",
    "frosty",
    "funny",
    "gallant",
    "gifted",
    "goofy",
    "gracious",
    "great",
    "happy",
    "hardcore",
    "heuristic",
    "hopeful",
    "hungry",
    "infallible",
    "inspiring",
    "intelligent",
    "interesting",
    "jolly",
    "jovial",
    "keen",
    "kind",
    "laughing",
    "loving",
    "lucid",
    "magical",
    "modest",
    "musing",
    "mystifying",
    "naughty",
    "nervous",
    "nice",
    "nifty",
    "nostalgic",
    "objective",
    "optimistic",
    "peaceful",
    "pedantic",
    "pensive",
    "practical",
    "priceless",
    "quirky",
    "quizzical",
    "recursing",
    "relaxed",
    "reverent",
    "romantic",
    "sad",
    "serene",
    "sharp",
    "silly",
    "sleepy",
    "stoic",
    "strange",
    "stupefied",
    "suspicious",
    "sweet",
    "tender",
    "thirsty",
    "trusting",
    "unruffled",
    "upbeat",
    "vibrant",
    "vigilant",
    "vigorous",
    "wizardly",
    "wonderful",
    "xenodochial",
    "youthful",
    "zealous",
    "zen",
];
const RIGHT: &[&str] = &[
    "agnesi",
    "albattani",
    "allen",
    "almeida",
    "antonelli",
    "archimedes",
    "ardinghelli",
    "aryabhata",
    "austin",
    "babbage",
    "banach",
    "banzai",
    "bardeen",
    "bartik",
    "bassi",
    "beaver",
    "bell",
    "benz",
    "bhabha",
    "bhaskara",
    "black",
    "blackburn",
    "blackwell",
    "bohr",
    "booth",
    "borg",
    "bose",
    "bouman",
    "boyd",
    "brahmagupta",
    "brattain",
    "brown",
    "buck",
    "burnell",
    "cannon",
    "carson",
    "cartwright",
    "carver",
    "cerf",
    "chandrasekhar",
    "chaplygin",
    "chatelet",
    "chatterjee",
    "chaum",
    "chebyshev",
    "clarke",
    "cohen",
    "colden",
    "cori",
    "cray",
    "curie",
    "curran",
    "darwin",
    "davinci",
    "dewdney",
    "dhawan",
    "diffie",
    "dijkstra",
    "dirac",
    "driscoll",
    "dubinsky",
    "easley",
    "edison",
    "einstein",
    "elbakyan",
    "elgamal",
    "elion",
    "ellis",
    "engelbart",
    "euclid",
    "euler",
    "faraday",
    "feistel",
    "fermat",
    "fermi",
    "feynman",
    "franklin",
    "gagarin",
    "galileo",
    "galois",
    "ganguly",
    "gates",
    "gauss",
    "germain",
    "goldberg",
    "goldstine",
    "goldwasser",
    "golick",
    "goodall",
    "gould",
    "greider",
    "grothendieck",
    "haibt",
    "hamilton",
    "haslett",
    "hawking",
    "heisenberg",
    "hellman",
    "hermann",
    "herschel",
    "hertz",
    "heyrovsky",
    "hodgkin",
    "hofstadter",
    "hoover",
    "hopper",
    "hugle",
    "hypatia",
    "ishizaka",
    "jackson",
    "jang",
    "jemison",
    "jennings",
    "jepsen",
    "johnson",
    "joliot",
    "jones",
    "kalam",
    "kapitsa",
    "kare",
    "keldysh",
    "keller",
    "kepler",
    "khayyam",
    "khorana",
    "kilby",
    "kirch",
    "knuth",
    "kowalevski",
    "lalande",
    "lamarr",
    "lamport",
    "leakey",
    "leavitt",
    "lederberg",
    "lehmann",
    "lewin",
    "lichterman",
    "liskov",
    "lovelace",
    "lumiere",
    "mahavira",
    "margulis",
    "matsumoto",
    "maxwell",
    "mayer",
    "mccarthy",
    "mcclintock",
    "mclaren",
    "mclean",
    "mcnulty",
    "meitner",
    "mendel",
    "mendeleev",
    "meninsky",
    "merkle",
    "mestorf",
    "mirzakhani",
    "montalcini",
    "moore",
    "morse",
    "moser",
    "murdock",
    "napier",
    "nash",
    "neumann",
    "newton",
    "nightingale",
    "nobel",
    "noether",
    "northcutt",
    "noyce",
    "panini",
    "pare",
    "pascal",
    "pasteur",
    "payne",
    "perlman",
    "pike",
    "poincare",
    "poitras",
    "proskuriakova",
    "ptolemy",
    "raman",
    "ramanujan",
    "rhodes",
    "ride",
    "ritchie",
    "robinson",
    "roentgen",
    "rosalind",
    "rubin",
    "saha",
    "sammet",
    "sanderson",
    "satoshi",
    "shamir",
    "shannon",
    "shaw",
    "shirley",
    "shockley",
    "shtern",
    "sinoussi",
    "snyder",
    "solomon",
    "spence",
    "stonebraker",
    "sutherland",
    "swanson",
    "swartz",
    "swirles",
    "taussig",
    "tesla",
    "tharp",
    "thompson",
    "torvalds",
    "tu",
    "turing",
    "varahamihira",
    "vaughan",
    "villani",
    "visvesvaraya",
    "volhard",
    "wescoff",
    "wilbur",
    "wiles",
    "williams",
    "williamson",
    "wilson",
    "wing",
    "wozniak",
    "wright",
    "wu",
    "yalow",
    "yonath",
    "zhukovsky",
];

/// A generated name; `retry` > 0 (after a collision) adds a digit, as dockerd does.
pub fn random_name_try(retry: u32) -> String {
    use rand::seq::SliceRandom;
    use rand::Rng;
    let mut r = rand::thread_rng();
    let base = format!(
        "{}_{}",
        LEFT.choose(&mut r).unwrap_or(&"x"),
        RIGHT.choose(&mut r).unwrap_or(&"y")
    );
    if retry == 0 {
        base
    } else {
        format!("{base}{}", r.gen_range(0..10))
    }
}

pub fn valid_name(n: &str) -> bool {
    let n = n.strip_prefix('/').unwrap_or(n);
    n.len() >= 2
        && n.len() <= 128
        && n.as_bytes()[0].is_ascii_alphanumeric()
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn signals_and_names() {
        use nix::sys::signal::Signal;
        assert_eq!(parse_signal("KILL"), Some(Signal::SIGKILL));
        assert_eq!(parse_signal("sigterm"), Some(Signal::SIGTERM));
        assert_eq!(parse_signal("9"), Some(Signal::SIGKILL));
        assert_eq!(parse_signal("NOPE"), None);
        assert!(valid_name("web-1"));
        assert!(valid_name("/web_1"));
        assert!(!valid_name("a"));
        assert!(!valid_name("bad name"));
        assert!(!valid_name("../x"));
        assert!(LEFT.len() * RIGHT.len() > 20_000);
        for _ in 0..100 {
            assert!(valid_name(&random_name_try(0)));
            assert!(random_name_try(1).ends_with(|c: char| c.is_ascii_digit()));
        }
    }

    #[test]
    fn status_is_stored_as_dockers_lowercase_names() {
        let all = [
            (Status::Created, "created"),
            (Status::Running, "running"),
            (Status::Paused, "paused"),
            (Status::Restarting, "restarting"),
            (Status::Removing, "removing"),
            (Status::Exited, "exited"),
            (Status::Dead, "dead"),
        ];
        for (s, name) in all {
            assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{name}\""));
            assert_eq!(
                serde_json::from_str::<Status>(&format!("\"{name}\"")).unwrap(),
                s
            );
            assert_eq!(s.as_str(), name);
            assert_eq!(s.to_string(), name);
        }
        assert!(serde_json::from_str::<Status>("\"Running\"").is_err());
        assert!(Status::Running.is_active() && Status::Restarting.is_active());
        assert!(!Status::Exited.is_active() && !Status::Created.is_active());
    }

    #[test]
    fn a_record_written_with_string_status_still_loads() {
        // state.json as the engine wrote it when the status was a string.
        let dir = tempfile::tempdir().unwrap();
        let mut v = serde_json::to_value(Record::default()).unwrap();
        v["status"] = "exited".into();
        v["exit_code"] = 3.into();
        std::fs::write(dir.path().join("state.json"), v.to_string()).unwrap();
        let r = Container::load(dir.path()).unwrap();
        assert_eq!(r.status, Status::Exited);
        assert_eq!(r.exit_code, 3);
        let c = Container::new(dir.path().into(), dir.path().into(), r);
        c.save();
        let saved: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("state.json")).unwrap()).unwrap();
        assert_eq!(saved["status"], "exited");
    }
}
