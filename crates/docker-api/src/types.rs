//! Request and response bodies of the Docker Engine API (the subset this engine serves).
//! Field names follow the API's PascalCase; unknown request fields are ignored, as the
//! daemon does, because the CLI sends many we do not use.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct Version {
    pub version: String,
    pub api_version: String,
    #[serde(rename = "MinAPIVersion")]
    pub min_api_version: String,
    pub git_commit: String,
    pub go_version: String,
    pub os: String,
    pub arch: String,
    pub kernel_version: String,
    pub build_time: String,
    pub components: Vec<Component>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct Component {
    pub name: String,
    pub version: String,
    /// ApiVersion, MinAPIVersion, GitCommit, GoVersion, Os, Arch, KernelVersion, ...
    pub details: BTreeMap<String, String>,
}

/// `/info`. Only what the CLI prints; the rest defaults.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct Info {
    #[serde(rename = "ID")]
    pub id: String,
    pub containers: i64,
    pub containers_running: i64,
    pub containers_paused: i64,
    pub containers_stopped: i64,
    pub images: i64,
    pub driver: String,
    pub docker_root_dir: String,
    pub kernel_version: String,
    pub operating_system: String,
    #[serde(rename = "OSType")]
    pub os_type: String,
    pub architecture: String,
    #[serde(rename = "NCPU")]
    pub ncpu: i64,
    pub mem_total: i64,
    pub name: String,
    pub server_version: String,
    pub cgroup_driver: String,
    pub cgroup_version: String,
    pub logging_driver: String,
    pub default_runtime: String,
    pub security_options: Vec<String>,
    pub warnings: Vec<String>,
    /// Which registries are reached over plain HTTP (`docker info`'s "Insecure Registries").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry_config: Option<RegistryServiceConfig>,
    #[serde(flatten)]
    pub details: crate::images::InfoDetails,
}

/// `Info.RegistryConfig` as dockerd fills it: the insecure networks (loopback always), one
/// index entry per registry given by name, plus the official index's (secure).
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct RegistryServiceConfig {
    #[serde(rename = "InsecureRegistryCIDRs")]
    pub insecure_registry_cidrs: Vec<String>,
    pub index_configs: BTreeMap<String, IndexInfo>,
    pub mirrors: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct IndexInfo {
    pub name: String,
    pub mirrors: Vec<String>,
    pub secure: bool,
    pub official: bool,
}

impl RegistryServiceConfig {
    /// From the official index's name (the registry crate's `DOCKER_HUB`), the insecure
    /// networks (CIDRs) and the insecure registries given by name.
    pub fn new(
        official: &str,
        insecure_cidrs: Vec<String>,
        insecure_registries: Vec<String>,
    ) -> Self {
        let mut index_configs: BTreeMap<String, IndexInfo> = insecure_registries
            .into_iter()
            .map(|n| {
                (
                    n.clone(),
                    IndexInfo {
                        name: n,
                        mirrors: Vec::new(),
                        secure: false,
                        official: false,
                    },
                )
            })
            .collect();
        index_configs.insert(
            official.into(),
            IndexInfo {
                name: official.into(),
                mirrors: Vec::new(),
                secure: true,
                official: true,
            },
        );
        RegistryServiceConfig {
            insecure_registry_cidrs: insecure_cidrs,
            index_configs,
            mirrors: Vec::new(),
        }
    }
}

/// `POST /containers/create` body: the container config plus `HostConfig`.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct ContainerConfig {
    pub hostname: String,
    pub domainname: String,
    pub user: String,
    pub attach_stdin: bool,
    pub attach_stdout: bool,
    pub attach_stderr: bool,
    pub exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
    pub tty: bool,
    pub open_stdin: bool,
    pub stdin_once: bool,
    pub env: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub image: String,
    pub volumes: Option<BTreeMap<String, serde_json::Value>>,
    pub working_dir: String,
    pub entrypoint: Option<Vec<String>>,
    pub labels: Option<BTreeMap<String, String>>,
    pub stop_signal: Option<String>,
    pub stop_timeout: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<HealthConfig>,
    /// The bridge MAC address (deprecated here since API 1.44, still sent by docker-py).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mac_address: Option<String>,
}

/// `Config.Healthcheck` (container and image): durations in nanoseconds, 0 = inherit/default.
/// `Test`: `[]` inherit, `["NONE"]` disabled, `["CMD", args...]`, `["CMD-SHELL", command]`.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "PascalCase", default)]
pub struct HealthConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub test: Option<Vec<String>>,
    #[serde(skip_serializing_if = "is_zero", deserialize_with = "null_as_zero")]
    pub interval: i64,
    #[serde(skip_serializing_if = "is_zero", deserialize_with = "null_as_zero")]
    pub timeout: i64,
    #[serde(skip_serializing_if = "is_zero", deserialize_with = "null_as_zero")]
    pub start_period: i64,
    #[serde(skip_serializing_if = "is_zero", deserialize_with = "null_as_zero")]
    pub start_interval: i64,
    #[serde(skip_serializing_if = "is_zero", deserialize_with = "null_as_zero")]
    pub retries: i64,
}

/// docker-py sends `null` for the durations it was not given.
fn null_as_zero<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    Ok(Option::<i64>::deserialize(d)?.unwrap_or(0))
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

/// `State.Health`.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "PascalCase", default)]
pub struct Health {
    pub status: String,
    pub failing_streak: i64,
    pub log: Vec<HealthLog>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "PascalCase", default)]
pub struct HealthLog {
    pub start: String,
    pub end: String,
    pub exit_code: i64,
    pub output: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct ContainerCreateRequest {
    #[serde(flatten)]
    pub config: ContainerConfig,
    pub host_config: HostConfig,
    pub networking_config: NetworkingConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct HostConfig {
    pub binds: Option<Vec<String>>,
    pub network_mode: String,
    /// `--link NAME[:ALIAS]` (default bridge only).
    pub links: Option<Vec<String>>,
    pub port_bindings: Option<BTreeMap<String, Option<Vec<PortBinding>>>>,
    pub restart_policy: RestartPolicy,
    pub auto_remove: bool,
    pub privileged: bool,
    pub memory: i64,
    pub nano_cpus: i64,
    pub cpu_quota: i64,
    pub cpu_period: i64,
    pub pids_limit: Option<i64>,
    pub cap_add: Option<Vec<String>>,
    pub cap_drop: Option<Vec<String>>,
    pub security_opt: Option<Vec<String>>,
    pub mounts: Option<Vec<crate::volumes::Mount>>,
    pub tmpfs: Option<BTreeMap<String, String>>,
    pub volumes_from: Option<Vec<String>>,
    pub volume_driver: String,
    #[serde(deserialize_with = "null_as_zero")]
    pub cpu_shares: i64,
    #[serde(deserialize_with = "null_as_zero")]
    pub memory_swap: i64,
    #[serde(deserialize_with = "null_as_zero")]
    pub memory_reservation: i64,
    /// Every other field the client sent, echoed back by inspect as it came (what the engine
    /// cannot honour is refused at create, see the engine's checks).
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "PascalCase", default)]
pub struct PortBinding {
    pub host_ip: String,
    pub host_port: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "PascalCase", default)]
pub struct RestartPolicy {
    pub name: String,
    pub maximum_retry_count: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerCreateResponse {
    pub id: String,
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct Port {
    #[serde(rename = "IP", skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    pub private_port: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_port: Option<u16>,
    #[serde(rename = "Type")]
    pub kind: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerSummary {
    pub id: String,
    pub names: Vec<String>,
    pub image: String,
    #[serde(rename = "ImageID")]
    pub image_id: String,
    pub command: String,
    pub created: i64,
    pub ports: Vec<Port>,
    pub labels: BTreeMap<String, String>,
    pub state: String,
    pub status: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerState {
    pub status: String,
    pub running: bool,
    pub paused: bool,
    pub restarting: bool,
    #[serde(rename = "OOMKilled")]
    pub oom_killed: bool,
    pub dead: bool,
    pub pid: i64,
    pub exit_code: i64,
    pub error: String,
    pub started_at: String,
    pub finished_at: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub health: Option<Health>,
}

/// An item of container inspect's `Mounts` (`Name` and `Driver` only for volumes).
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct MountPoint {
    #[serde(rename = "Type")]
    pub kind: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    pub source: String,
    pub destination: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub driver: String,
    pub mode: String,
    #[serde(rename = "RW")]
    pub rw: bool,
    pub propagation: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerInspect {
    pub id: String,
    pub created: String,
    pub path: String,
    pub args: Vec<String>,
    pub state: ContainerState,
    pub image: String,
    pub name: String,
    pub restart_count: i64,
    pub driver: String,
    pub platform: String,
    pub host_config: HostConfig,
    pub config: ContainerConfig,
    pub mounts: Vec<MountPoint>,
    pub network_settings: NetworkSettings,
    pub log_path: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct NetworkSettings {
    pub bridge: String,
    #[serde(rename = "IPAddress")]
    pub ip_address: String,
    #[serde(rename = "IPPrefixLen")]
    pub ip_prefix_len: i64,
    pub gateway: String,
    pub mac_address: String,
    pub ports: BTreeMap<String, Option<Vec<PortBinding>>>,
    pub networks: BTreeMap<String, EndpointSettings>,
}

/// One network a container is attached to (`NetworkSettings.Networks.<name>`).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct EndpointSettings {
    #[serde(rename = "IPAMConfig")]
    pub ipam_config: Option<EndpointIpamConfig>,
    pub links: Option<Vec<String>>,
    pub aliases: Option<Vec<String>>,
    pub driver_opts: Option<BTreeMap<String, String>>,
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    pub gateway: String,
    #[serde(rename = "IPAddress")]
    pub ip_address: String,
    #[serde(rename = "IPPrefixLen")]
    pub ip_prefix_len: i64,
    pub mac_address: String,
    #[serde(rename = "IPv6Gateway")]
    pub ipv6_gateway: String,
    #[serde(rename = "GlobalIPv6Address")]
    pub global_ipv6_address: String,
    #[serde(rename = "GlobalIPv6PrefixLen")]
    pub global_ipv6_prefix_len: i64,
    #[serde(rename = "DNSNames")]
    pub dns_names: Option<Vec<String>>,
}

/// `EndpointSettings.IPAMConfig`: the addresses a client asks for (`--ip`).
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "PascalCase", default)]
pub struct EndpointIpamConfig {
    #[serde(rename = "IPv4Address")]
    pub ipv4_address: String,
    #[serde(rename = "IPv6Address")]
    pub ipv6_address: String,
    #[serde(rename = "LinkLocalIPs")]
    pub link_local_ips: Option<Vec<String>>,
}

/// `NetworkingConfig` of a container create: the endpoints to attach, by network name.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct NetworkingConfig {
    pub endpoints_config: Option<BTreeMap<String, EndpointSettings>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct WaitResponse {
    pub status_code: i64,
    pub error: Option<WaitError>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct WaitError {
    pub message: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct ImageSummary {
    pub id: String,
    pub parent_id: String,
    pub repo_tags: Vec<String>,
    pub repo_digests: Vec<String>,
    pub created: i64,
    pub size: i64,
    pub shared_size: i64,
    pub labels: BTreeMap<String, String>,
    pub containers: i64,
}

/// The image config (`Config` inside an image inspect) as stored in OCI image configs.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct ImageRunConfig {
    pub user: String,
    pub env: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub entrypoint: Option<Vec<String>>,
    pub working_dir: String,
    pub labels: Option<BTreeMap<String, String>>,
    pub exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
    pub volumes: Option<BTreeMap<String, serde_json::Value>>,
    pub stop_signal: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<HealthConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct ImageInspect {
    pub id: String,
    pub repo_tags: Vec<String>,
    pub repo_digests: Vec<String>,
    pub parent: String,
    pub created: String,
    pub architecture: String,
    pub os: String,
    pub size: i64,
    pub config: ImageRunConfig,
    #[serde(rename = "RootFS")]
    pub root_fs: RootFs,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct RootFs {
    #[serde(rename = "Type")]
    pub kind: String,
    pub layers: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct ImageDeleteItem {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub untagged: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deleted: Option<String>,
}

/// One line of a pull's JSON progress stream.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ProgressMessage {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_detail: Option<ErrorDetail>,
    /// `{"current":N,"total":M}` while a layer moves.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress_detail: Option<serde_json::Value>,
    /// A push's result: `{"Tag","Digest","Size"}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aux: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq, Eq)]
pub struct ErrorDetail {
    pub message: String,
}

impl ProgressMessage {
    pub fn status(id: Option<&str>, status: impl Into<String>) -> Self {
        ProgressMessage {
            status: Some(status.into()),
            id: id.map(str::to_string),
            ..Default::default()
        }
    }
    pub fn error(message: impl Into<String>) -> Self {
        let message = message.into();
        ProgressMessage {
            error: Some(message.clone()),
            error_detail: Some(ErrorDetail { message }),
            ..Default::default()
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct ExecCreateRequest {
    pub attach_stdin: bool,
    pub attach_stdout: bool,
    pub attach_stderr: bool,
    pub tty: bool,
    pub env: Option<Vec<String>>,
    pub cmd: Vec<String>,
    pub working_dir: String,
    pub user: String,
    pub privileged: bool,
    /// docker-py sends `detachKeys` (dockerd's JSON decoding ignores case).
    #[serde(alias = "detachKeys")]
    pub detach_keys: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct ExecStartRequest {
    pub detach: bool,
    pub tty: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct IdResponse {
    pub id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct ExecInspect {
    #[serde(rename = "ID")]
    pub id: String,
    pub running: bool,
    pub exit_code: Option<i64>,
    #[serde(rename = "ContainerID")]
    pub container_id: String,
    pub open_stdin: bool,
    pub open_stdout: bool,
    pub open_stderr: bool,
    pub pid: i64,
    pub can_remove: bool,
    pub detach_keys: String,
    pub process_config: ExecProcessConfig,
}

/// `ProcessConfig` of an exec inspect.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ExecProcessConfig {
    pub tty: bool,
    pub entrypoint: String,
    pub arguments: Vec<String>,
    pub privileged: bool,
    #[serde(skip_serializing_if = "String::is_empty", default)]
    pub user: String,
}

/// `X-Docker-Container-Path-Stat` for the archive endpoints (lowercase keys).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct PathStat {
    pub name: String,
    pub size: i64,
    pub mode: u32,
    pub mtime: String,
    #[serde(rename = "linkTarget")]
    pub link_target: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_request_from_cli_json() {
        let body = r#"{"Hostname":"","User":"","AttachStdout":true,"Tty":false,
            "Env":["A=1"],"Cmd":["echo","hi"],"Image":"busybox","WorkingDir":"/tmp",
            "Entrypoint":null,"Unknown":{"x":1},
            "HostConfig":{"Binds":["/a:/b:ro"],"AutoRemove":true,
              "RestartPolicy":{"Name":"always","MaximumRetryCount":0},
              "PortBindings":{"80/tcp":[{"HostIp":"","HostPort":"8080"}]}},
            "NetworkingConfig":{"EndpointsConfig":{}}}"#;
        let r: ContainerCreateRequest = serde_json::from_str(body).unwrap();
        assert_eq!(r.config.image, "busybox");
        assert_eq!(
            r.config.cmd.as_deref(),
            Some(&["echo".to_string(), "hi".into()][..])
        );
        assert!(r.config.entrypoint.is_none());
        assert!(r.host_config.auto_remove);
        assert_eq!(r.host_config.restart_policy.name, "always");
        let pb = r.host_config.port_bindings.unwrap();
        assert_eq!(pb["80/tcp"].as_ref().unwrap()[0].host_port, "8080");
    }

    #[test]
    fn healthcheck_nulls_and_exec_detach_keys_as_docker_py_sends_them() {
        let c: ContainerConfig = serde_json::from_str(
            r#"{"Image":"x","Healthcheck":{"Test":["CMD-SHELL","true"],"Interval":1000000000,
               "Timeout":null,"Retries":null,"StartPeriod":null}}"#,
        )
        .unwrap();
        let h = c.healthcheck.unwrap();
        assert_eq!((h.interval, h.timeout, h.retries), (1_000_000_000, 0, 0));
        let e: ExecCreateRequest =
            serde_json::from_str(r#"{"Cmd":["cat"],"detachKeys":"ctrl-p"}"#).unwrap();
        assert_eq!(e.detach_keys, "ctrl-p");
    }

    #[test]
    fn progress_error_shape() {
        let s = serde_json::to_string(&ProgressMessage::error("boom")).unwrap();
        assert_eq!(s, r#"{"error":"boom","errorDetail":{"message":"boom"}}"#);
    }

    #[test]
    fn version_field_names() {
        let v = serde_json::to_value(Version {
            api_version: "1.47".into(),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(v["ApiVersion"], "1.47");
        assert!(v.get("MinAPIVersion").is_some());
    }
}
