//! The parts of the bundle's OCI runtime spec (`config.json`) the shim honours, and the
//! guest engine's create request made of them.
//!
//! The process (args, env, cwd, user, terminal, its capability set, `noNewPrivileges` and
//! rlimits), the host name and `linux.seccomp` go to the guest engine, which runs the
//! process as it runs a `docker run` with `--cap-drop ALL --cap-add <the spec's bounding
//! set>`, `--security-opt no-new-privileges`, `--ulimit` and `--security-opt
//! seccomp=<the spec's profile>` (the OCI profile is a subset of Docker's format: default
//! action, syscalls by name with action, errno and argument conditions; the engine compiles
//! it for those capabilities), or `seccomp=unconfined` when the spec has none, as runc runs
//! it. `linux.resources` (memory limit, CPU quota) bounds the VM's QEMU on the host instead
//! (crate::task::resources). What the spec says beyond that (mounts, namespaces) is not
//! applied: the guest engine has no call for it; docs/containerd.md lists it.

use serde::Deserialize;
use std::collections::BTreeMap;
use vm_clone::cgroup::Limits;

/// The annotation CRI puts on every container of a pod: the sandbox's id.
pub const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
/// CRI's annotation saying what a container is: `sandbox` for a pod's pause container.
pub const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Spec {
    pub process: Process,
    pub hostname: String,
    pub annotations: BTreeMap<String, String>,
    pub linux: Linux,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Linux {
    pub resources: Resources,
    /// The OCI seccomp profile as the spec has it; passed on whole (see the module doc).
    pub seccomp: Option<serde_json::Value>,
}

/// `linux.resources`, and the body of a task update (containerd sends the OCI
/// `LinuxResources` as JSON): the parts that bound a VM's QEMU.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Resources {
    pub memory: Option<MemoryResources>,
    pub cpu: Option<CpuResources>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct MemoryResources {
    pub limit: Option<i64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct CpuResources {
    pub quota: Option<i64>,
    pub period: Option<u64>,
}

impl Resources {
    /// The limits in the host cgroup's terms: a memory limit and a CFS quota only when
    /// positive (-1 and 0 mean none), the period 100 ms when the spec names none.
    pub fn limits(&self) -> Limits {
        let memory = self
            .memory
            .as_ref()
            .and_then(|m| m.limit)
            .filter(|&m| m > 0);
        let cpu = self.cpu.as_ref().and_then(|c| {
            let q = c.quota.filter(|&q| q > 0)?;
            let p = c.period.filter(|&p| p > 0).unwrap_or(100_000);
            Some((q, i64::try_from(p).unwrap_or(100_000)))
        });
        Limits { memory, cpu }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Process {
    pub terminal: bool,
    pub user: User,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    /// None: the spec names no set (the guest engine's default, Docker's, applies).
    pub capabilities: Option<Capabilities>,
    pub no_new_privileges: bool,
    pub rlimits: Vec<Rlimit>,
}

/// `{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Rlimit {
    #[serde(rename = "type")]
    pub kind: String,
    pub hard: u64,
    pub soft: u64,
}

impl Rlimit {
    /// Docker's `Ulimits` entry: the name without `RLIMIT_`, lower case, and -1 for
    /// unlimited (the OCI spec's all-ones).
    fn docker(&self) -> serde_json::Value {
        let n = self.kind.strip_prefix("RLIMIT_").unwrap_or(&self.kind);
        let v = |x: u64| i64::try_from(x).unwrap_or(-1);
        serde_json::json!({
            "Name": n.to_ascii_lowercase(),
            "Soft": v(self.soft),
            "Hard": v(self.hard),
        })
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Capabilities {
    /// The set the process may ever have; the guest engine keeps one set (bounding =
    /// effective = permitted) for a container, so this is the one passed on.
    pub bounding: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("{path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: not an OCI runtime spec: {source}")]
    Parse {
        path: String,
        source: serde_json::Error,
    },
    #[error("{0}: the process has no args")]
    NoArgs(String),
}

impl Spec {
    pub fn read(bundle: &std::path::Path) -> Result<Spec, SpecError> {
        let p = bundle.join("config.json");
        let path = p.display().to_string();
        let b = std::fs::read(&p).map_err(|source| SpecError::Read {
            path: path.clone(),
            source,
        })?;
        Self::parse(&b).map_err(|source| SpecError::Parse { path, source })
    }

    pub fn parse(b: &[u8]) -> Result<Spec, serde_json::Error> {
        serde_json::from_slice(b)
    }

    /// The sandbox this container belongs to: CRI's annotation, else its own id (a plain
    /// `ctr run` container is a sandbox of one).
    pub fn sandbox_id<'a>(&'a self, id: &'a str) -> &'a str {
        self.annotations
            .get(SANDBOX_ID)
            .map(String::as_str)
            .filter(|s| !s.is_empty())
            .unwrap_or(id)
    }
}

impl Spec {
    /// A pod's sandbox (pause) container: with a VM per pod the VM is the sandbox, so the
    /// shim runs no process for it (the VM stands for it until it is killed).
    pub fn is_pod_sandbox(&self) -> bool {
        self.annotations.get(CONTAINER_TYPE).map(String::as_str) == Some("sandbox")
    }
}

impl Process {
    /// The Docker API's `User`: numeric, as the spec gives it (containerd resolved names).
    pub fn docker_user(&self) -> String {
        format!("{}:{}", self.user.uid, self.user.gid)
    }

    /// The guest engine's create request for this process in the image `image` (an id in
    /// the sandbox's share), with stdin open when containerd handed over a stdin FIFO, and
    /// the spec's `linux.seccomp` profile (None: unconfined, as runc runs such a spec).
    pub fn create_request(
        &self,
        image: &str,
        hostname: &str,
        stdin: bool,
        seccomp: Option<&serde_json::Value>,
    ) -> Result<docker_api::types::ContainerCreateRequest, SpecError> {
        if self.args.is_empty() {
            return Err(SpecError::NoArgs("config.json".into()));
        }
        let groups: Vec<String> = self
            .user
            .additional_gids
            .iter()
            .map(u32::to_string)
            .collect();
        // The spec's capability set exactly: everything dropped, its set added back.
        let (cap_drop, cap_add) = match &self.capabilities {
            Some(c) => (vec!["ALL".to_string()], c.bounding.clone()),
            None => (Vec::new(), Vec::new()),
        };
        let mut security_opt = Vec::new();
        if self.no_new_privileges {
            security_opt.push("no-new-privileges".to_string());
        }
        security_opt.push(match seccomp {
            Some(profile) => format!("seccomp={profile}"),
            None => "seccomp=unconfined".to_string(),
        });
        let v = serde_json::json!({
            "Image": image,
            // The spec's args are the whole command line: no entrypoint of the image's.
            "Entrypoint": [],
            "Cmd": self.args,
            "Env": self.env,
            "WorkingDir": if self.cwd.is_empty() { "/" } else { &self.cwd },
            "User": self.docker_user(),
            "Tty": self.terminal,
            "Hostname": hostname,
            "OpenStdin": stdin,
            "StdinOnce": stdin,
            "AttachStdin": stdin,
            "AttachStdout": true,
            "AttachStderr": true,
            "HostConfig": {
                // The VM is the sandbox: its containers share its network (the pod's).
                "NetworkMode": "host",
                "GroupAdd": groups,
                "CapDrop": cap_drop,
                "CapAdd": cap_add,
                "SecurityOpt": security_opt,
                "Ulimits": self.rlimits.iter().map(Rlimit::docker).collect::<Vec<_>>(),
            },
        });
        // The fields above are all the type has; a failure here is a bug, not input.
        serde_json::from_value(v).map_err(|source| SpecError::Parse {
            path: "create request".into(),
            source,
        })
    }

    /// The guest engine's exec request for this process (an exec's spec is a Process).
    pub fn exec_request(&self, stdin: bool) -> docker_api::types::ExecCreateRequest {
        docker_api::types::ExecCreateRequest {
            attach_stdin: stdin,
            attach_stdout: true,
            attach_stderr: true,
            tty: self.terminal,
            env: Some(self.env.clone()),
            cmd: self.args.clone(),
            working_dir: self.cwd.clone(),
            user: self.docker_user(),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Trimmed from what `ctr run` writes (containerd 1.6).
    const CTR_SPEC: &str = r#"{
        "ociVersion": "1.0.2-dev",
        "process": {
            "user": {"uid": 0, "gid": 0, "additionalGids": [10]},
            "args": ["sh", "-c", "exit 3"],
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "cwd": "/",
            "capabilities": {"bounding": ["CAP_CHOWN"]},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs"},
        "hostname": "",
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
        "linux": {"namespaces": [{"type": "pid"}]}
    }"#;

    #[test]
    fn ctr_spec_becomes_a_create_request() {
        let s = Spec::parse(CTR_SPEC.as_bytes()).unwrap();
        assert_eq!(s.sandbox_id("c1"), "c1");
        let r = s
            .process
            .create_request("sha256:abc", "c1", false, None)
            .unwrap();
        let j = serde_json::to_value(&r).unwrap();
        assert_eq!(j["Image"], "sha256:abc");
        assert_eq!(j["Cmd"], serde_json::json!(["sh", "-c", "exit 3"]));
        assert_eq!(j["Entrypoint"], serde_json::json!([]));
        assert_eq!(j["User"], "0:0");
        assert_eq!(j["WorkingDir"], "/");
        assert_eq!(j["Hostname"], "c1");
        assert_eq!(j["Tty"], false);
        assert_eq!(j["OpenStdin"], false);
        assert_eq!(j["HostConfig"]["NetworkMode"], "host");
        assert_eq!(j["HostConfig"]["GroupAdd"], serde_json::json!(["10"]));
        assert_eq!(j["HostConfig"]["CapDrop"], serde_json::json!(["ALL"]));
        assert_eq!(j["HostConfig"]["CapAdd"], serde_json::json!(["CAP_CHOWN"]));
        assert_eq!(
            j["HostConfig"]["SecurityOpt"],
            serde_json::json!(["no-new-privileges", "seccomp=unconfined"])
        );
        assert!(s.linux.resources.limits().is_empty());
        assert_eq!(
            j["HostConfig"]["Ulimits"],
            serde_json::json!([{"Name": "nofile", "Soft": 1024, "Hard": 1024}])
        );
        let inf = Rlimit {
            kind: "RLIMIT_CORE".into(),
            hard: u64::MAX,
            soft: 0,
        };
        assert_eq!(
            inf.docker(),
            serde_json::json!({"Name": "core", "Soft": 0, "Hard": -1})
        );
    }

    #[test]
    fn no_capability_set_keeps_the_engines_default() {
        let s = Spec::parse(br#"{"process": {"args": ["true"]}}"#).unwrap();
        let r = s.process.create_request("i", "h", false, None).unwrap();
        let j = serde_json::to_value(&r).unwrap();
        assert_eq!(j["HostConfig"]["CapDrop"], serde_json::json!([]));
        assert_eq!(
            j["HostConfig"]["SecurityOpt"],
            serde_json::json!(["seccomp=unconfined"])
        );
    }

    #[test]
    fn the_specs_seccomp_profile_goes_to_the_engine_whole() {
        let s = Spec::parse(
            br#"{"process": {"args": ["true"]}, "linux": {"seccomp": {
                "defaultAction": "SCMP_ACT_ERRNO", "architectures": ["SCMP_ARCH_X86_64"],
                "syscalls": [{"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"}]}}}"#,
        )
        .unwrap();
        let r = s
            .process
            .create_request("i", "h", false, s.linux.seccomp.as_ref())
            .unwrap();
        let j = serde_json::to_value(&r).unwrap();
        let opts = j["HostConfig"]["SecurityOpt"].as_array().unwrap();
        assert_eq!(opts.len(), 1);
        let profile = opts[0].as_str().unwrap().strip_prefix("seccomp=").unwrap();
        let back: serde_json::Value = serde_json::from_str(profile).unwrap();
        assert_eq!(back, s.linux.seccomp.unwrap());
    }

    #[test]
    fn resources_become_cgroup_limits() {
        let s = Spec::parse(
            br#"{"linux": {"resources": {"memory": {"limit": 1073741824},
                "cpu": {"quota": 50000, "period": 100000, "shares": 1024}}}}"#,
        )
        .unwrap();
        let l = s.linux.resources.limits();
        assert_eq!(l.memory, Some(1 << 30));
        assert_eq!(l.cpu, Some((50_000, 100_000)));
        // What CRI writes for a container without limits, and an update's JSON.
        let none: Resources = serde_json::from_str(
            r#"{"memory": {"limit": 0}, "cpu": {"quota": 0, "period": 0, "shares": 2}}"#,
        )
        .unwrap();
        assert!(none.limits().is_empty());
        let u: Resources =
            serde_json::from_str(r#"{"memory": {"limit": -1}, "cpu": {"quota": 20000}}"#).unwrap();
        assert_eq!(u.limits().memory, None);
        assert_eq!(u.limits().cpu, Some((20_000, 100_000)));
    }

    #[test]
    fn cri_annotation_names_the_sandbox() {
        let s =
            Spec::parse(br#"{"annotations": {"io.kubernetes.cri.sandbox-id": "pod1"}}"#).unwrap();
        assert_eq!(s.sandbox_id("c2"), "pod1");
        assert!(!s.is_pod_sandbox());
        let pause = Spec::parse(
            br#"{"annotations": {"io.kubernetes.cri.container-type": "sandbox",
                "io.kubernetes.cri.sandbox-id": "pod1"}}"#,
        )
        .unwrap();
        assert!(pause.is_pod_sandbox());
        assert!(s.process.create_request("i", "h", false, None).is_err());
    }

    #[test]
    fn junk_is_an_error_not_a_panic() {
        for b in [&b"{"[..], b"{\"process\": 3}", b"\xff"] {
            assert!(Spec::parse(b).is_err(), "{b:?}");
        }
    }
}
