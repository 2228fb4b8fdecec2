//! A small CRI client: kubelet's gRPC API to a container runtime (`runtime.v1`, the
//! `k8s-cri` crate's generated types), spoken over a Unix socket, blocking, for tests that
//! drive containerd's CRI plugin as a kubelet would.
//!
//! Pods here use the node's network namespace: Debian ships no CNI plugins, and with the
//! axion runtime the VM is the sandbox anyway (its containers share its NIC).

use anyhow::{bail, Context, Result};
use hyper_util::rt::TokioIo;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, ContainerState, ContainerStatusRequest,
    CreateContainerRequest, ExecSyncRequest, ImageSpec, LinuxContainerResources,
    LinuxPodSandboxConfig, LinuxSandboxSecurityContext, ListImagesRequest, NamespaceMode,
    NamespaceOption, PodSandboxConfig, PodSandboxMetadata, RemovePodSandboxRequest,
    RunPodSandboxRequest, StartContainerRequest, StopPodSandboxRequest,
    UpdateContainerResourcesRequest, VersionRequest,
};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tonic::transport::{Channel, Endpoint, Uri};

/// How long one call may take (a pod's first container clones its VM: seconds under TCG).
const CALL: Duration = Duration::from_secs(180);

pub struct Cri {
    rt: tokio::runtime::Runtime,
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
}

/// What `exec_sync` gives back.
#[derive(Debug)]
pub struct ExecOutput {
    pub exit_code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// A pod as the CRI knows it: its id and the config every container create repeats.
pub struct Pod {
    pub id: String,
    config: PodSandboxConfig,
}

impl Cri {
    /// Connects to the CRI server on `sock` (containerd's gRPC socket).
    pub fn connect(sock: &Path) -> Result<Cri> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let path = sock.to_path_buf();
        let channel = rt
            .block_on(async {
                // The URI is a placeholder: the connector dials the socket.
                Endpoint::try_from("http://[::]:0")?
                    .connect_with_connector(tower::service_fn(move |_: Uri| {
                        let path: PathBuf = path.clone();
                        async move {
                            let s = tokio::net::UnixStream::connect(path).await?;
                            Ok::<_, std::io::Error>(TokioIo::new(s))
                        }
                    }))
                    .await
            })
            .with_context(|| format!("connecting to the CRI on {}", sock.display()))?;
        Ok(Cri {
            rt,
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
        })
    }

    fn call<T, F: Future<Output = Result<tonic::Response<T>, tonic::Status>>>(
        &self,
        what: &str,
        f: F,
    ) -> Result<T> {
        // The timer must be made inside the runtime (block_on), not before it.
        match self
            .rt
            .block_on(async { tokio::time::timeout(CALL, f).await })
        {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(status)) => bail!("CRI {what}: {:?}: {}", status.code(), status.message()),
            Err(_) => bail!("CRI {what}: no answer within {} s", CALL.as_secs()),
        }
    }

    /// The runtime's name and version, e.g. `containerd 1.6.20~ds1`.
    pub fn version(&self) -> Result<String> {
        let mut c = self.runtime.clone();
        let v = self.call("Version", async move {
            c.version(VersionRequest {
                version: "v1".into(),
            })
            .await
        })?;
        Ok(format!("{} {}", v.runtime_name, v.runtime_version))
    }

    /// The references of the images the CRI sees (its own namespace, `k8s.io`).
    pub fn image_refs(&self) -> Result<Vec<String>> {
        let mut c = self.images.clone();
        let r = self.call("ListImages", async move {
            c.list_images(ListImagesRequest { filter: None }).await
        })?;
        Ok(r.images.into_iter().flat_map(|i| i.repo_tags).collect())
    }

    /// RunPodSandbox in the node's network, with `handler` as its runtime handler (the
    /// name of a runtime in containerd's CRI config, as a RuntimeClass names it).
    pub fn run_pod(&self, name: &str, hostname: &str, handler: &str) -> Result<Pod> {
        let node = NamespaceMode::Node as i32;
        let config = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.into(),
                uid: format!("uid-{name}"),
                namespace: "default".into(),
                attempt: 0,
            }),
            hostname: hostname.into(),
            linux: Some(LinuxPodSandboxConfig {
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(NamespaceOption {
                        network: node,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut c = self.runtime.clone();
        let req = RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: handler.into(),
        };
        let r = self.call("RunPodSandbox", async move { c.run_pod_sandbox(req).await })?;
        Ok(Pod {
            id: r.pod_sandbox_id,
            config,
        })
    }

    /// CreateContainer in `pod`: `image`, running `command`; its container id.
    pub fn create_container(
        &self,
        pod: &Pod,
        name: &str,
        image: &str,
        command: &[&str],
    ) -> Result<String> {
        let req = CreateContainerRequest {
            pod_sandbox_id: pod.id.clone(),
            config: Some(ContainerConfig {
                metadata: Some(ContainerMetadata {
                    name: name.into(),
                    attempt: 0,
                }),
                image: Some(ImageSpec {
                    image: image.into(),
                    ..Default::default()
                }),
                command: command.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            }),
            sandbox_config: Some(pod.config.clone()),
        };
        let mut c = self.runtime.clone();
        let r = self.call(
            "CreateContainer",
            async move { c.create_container(req).await },
        )?;
        Ok(r.container_id)
    }

    pub fn start_container(&self, id: &str) -> Result<()> {
        let mut c = self.runtime.clone();
        let req = StartContainerRequest {
            container_id: id.into(),
        };
        self.call(
            "StartContainer",
            async move { c.start_container(req).await },
        )?;
        Ok(())
    }

    /// UpdateContainerResources: a running container's memory limit (bytes) and CPU quota
    /// (CFS quota and period, microseconds), as kubelet resizes a pod.
    pub fn update_resources(&self, id: &str, memory: i64, cpu: (i64, i64)) -> Result<()> {
        let mut c = self.runtime.clone();
        let req = UpdateContainerResourcesRequest {
            container_id: id.into(),
            linux: Some(LinuxContainerResources {
                memory_limit_in_bytes: memory,
                cpu_quota: cpu.0,
                cpu_period: cpu.1,
                ..Default::default()
            }),
            ..Default::default()
        };
        self.call("UpdateContainerResources", async move {
            c.update_container_resources(req).await
        })?;
        Ok(())
    }

    /// Whether the container is running (ContainerStatus).
    pub fn running(&self, id: &str) -> Result<bool> {
        let mut c = self.runtime.clone();
        let req = ContainerStatusRequest {
            container_id: id.into(),
            verbose: false,
        };
        let r = self.call(
            "ContainerStatus",
            async move { c.container_status(req).await },
        )?;
        Ok(r.status
            .is_some_and(|s| s.state == ContainerState::ContainerRunning as i32))
    }

    /// ExecSync: runs `cmd` in the container, waits for it (at most `timeout`).
    pub fn exec_sync(&self, id: &str, cmd: &[&str], timeout: Duration) -> Result<ExecOutput> {
        let mut c = self.runtime.clone();
        let req = ExecSyncRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: timeout.as_secs() as i64,
        };
        let r = self.call("ExecSync", async move { c.exec_sync(req).await })?;
        Ok(ExecOutput {
            exit_code: r.exit_code,
            stdout: String::from_utf8_lossy(&r.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&r.stderr).into_owned(),
        })
    }

    /// StopPodSandbox: stops every container of the pod and the sandbox.
    pub fn stop_pod(&self, id: &str) -> Result<()> {
        let mut c = self.runtime.clone();
        let req = StopPodSandboxRequest {
            pod_sandbox_id: id.into(),
        };
        self.call(
            "StopPodSandbox",
            async move { c.stop_pod_sandbox(req).await },
        )?;
        Ok(())
    }

    /// RemovePodSandbox: removes the pod's containers and the sandbox.
    pub fn remove_pod(&self, id: &str) -> Result<()> {
        let mut c = self.runtime.clone();
        let req = RemovePodSandboxRequest {
            pod_sandbox_id: id.into(),
        };
        self.call("RemovePodSandbox", async move {
            c.remove_pod_sandbox(req).await
        })?;
        Ok(())
    }
}
