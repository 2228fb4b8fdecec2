//! `--ulimit` (HostConfig `Ulimits`): resource limits set in the container's process (and
//! its execs) just before exec, while it is still root with its capabilities, as runc sets
//! an OCI spec's `process.rlimits`. Docker's names (`nofile`, `nproc`, ...) and its `-1`
//! for unlimited; a soft limit above the hard one is refused with dockerd's message.

// The RLIMIT_* constants are u32 with glibc (the host's tests) and i32 with musl (the
// image): the casts are needed on one of the two.
#![allow(clippy::unnecessary_cast)]

use serde::{Deserialize, Serialize};

/// One limit: the resource's number (`RLIMIT_*`) and its soft and hard values.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Rlimit {
    pub resource: u32,
    pub soft: u64,
    pub hard: u64,
}

/// Docker's ulimit names and their resources.
const NAMES: &[(&str, u32)] = &[
    ("as", libc::RLIMIT_AS as u32),
    ("core", libc::RLIMIT_CORE as u32),
    ("cpu", libc::RLIMIT_CPU as u32),
    ("data", libc::RLIMIT_DATA as u32),
    ("fsize", libc::RLIMIT_FSIZE as u32),
    ("locks", libc::RLIMIT_LOCKS as u32),
    ("memlock", libc::RLIMIT_MEMLOCK as u32),
    ("msgqueue", libc::RLIMIT_MSGQUEUE as u32),
    ("nice", libc::RLIMIT_NICE as u32),
    ("nofile", libc::RLIMIT_NOFILE as u32),
    ("nproc", libc::RLIMIT_NPROC as u32),
    ("rss", libc::RLIMIT_RSS as u32),
    ("rtprio", libc::RLIMIT_RTPRIO as u32),
    ("rttime", libc::RLIMIT_RTTIME as u32),
    ("sigpending", libc::RLIMIT_SIGPENDING as u32),
    ("stack", libc::RLIMIT_STACK as u32),
];

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Ulimit {
    name: String,
    #[serde(default)]
    soft: i64,
    #[serde(default)]
    hard: i64,
}

/// The limits HostConfig's `Ulimits` asks for (absent, null or `[]`: none). Errors are
/// meant for the API client.
pub fn from_host_config(v: Option<&serde_json::Value>) -> Result<Vec<Rlimit>, String> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(Vec::new());
    };
    let list: Vec<Ulimit> =
        serde_json::from_value(v.clone()).map_err(|e| format!("invalid Ulimits: {e}"))?;
    let value = |n: i64| if n < 0 { libc::RLIM_INFINITY } else { n as u64 };
    list.iter()
        .map(|u| {
            let resource = NAMES
                .iter()
                .find(|(n, _)| *n == u.name)
                .map(|(_, r)| *r)
                .ok_or_else(|| format!("invalid ulimit type: {}", u.name))?;
            let (soft, hard) = (value(u.soft), value(u.hard));
            if soft > hard {
                return Err(format!(
                    "ulimit soft limit must be less than or equal to hard limit: {} > {}",
                    u.soft, u.hard
                ));
            }
            Ok(Rlimit {
                resource,
                soft,
                hard,
            })
        })
        .collect()
}

/// Sets `limits` on the calling process.
pub fn apply(limits: &[Rlimit]) -> Result<(), String> {
    for l in limits {
        let rl = libc::rlimit {
            rlim_cur: l.soft as libc::rlim_t,
            rlim_max: l.hard as libc::rlim_t,
        };
        // SAFETY: setrlimit on our own process with a struct we own.
        if unsafe { libc::setrlimit(l.resource as _, &rl) } != 0 {
            return Err(format!(
                "setting resource limit {}: {}",
                l.resource,
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_ulimits() {
        let v = serde_json::json!([
            {"Name": "nofile", "Soft": 1024, "Hard": 2048},
            {"Name": "core", "Soft": -1, "Hard": -1}
        ]);
        let l = from_host_config(Some(&v)).unwrap();
        assert_eq!(
            l[0],
            Rlimit {
                resource: libc::RLIMIT_NOFILE as u32,
                soft: 1024,
                hard: 2048
            }
        );
        assert_eq!(l[1].soft, libc::RLIM_INFINITY);
        assert!(from_host_config(None).unwrap().is_empty());
        assert!(from_host_config(Some(&serde_json::Value::Null))
            .unwrap()
            .is_empty());
        assert!(from_host_config(Some(&serde_json::json!([])))
            .unwrap()
            .is_empty());
        let e = from_host_config(Some(&serde_json::json!([{"Name": "files"}]))).unwrap_err();
        assert!(e.contains("invalid ulimit type: files"), "{e}");
        let e = from_host_config(Some(
            &serde_json::json!([{"Name": "nproc", "Soft": 10, "Hard": 5}]),
        ))
        .unwrap_err();
        assert!(e.contains("soft limit must be less"), "{e}");
        assert!(from_host_config(Some(&serde_json::json!({"a": 1}))).is_err());
    }
}
