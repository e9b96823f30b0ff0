//! kubelet's side of the CRI: `runtime.v1` over containerd's socket, blocking.
//!
//! The types and the gRPC client come from the Kubernetes protos (`k8s-cri`); this module
//! gives the tests a synchronous client with a deadline on every call and errors that carry
//! the gRPC code and the runtime's message, as kubelet would show them in `kubectl describe`.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use hyper_util::rt::TokioIo;
use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::{Channel, Endpoint, Uri};

/// Deadline of one CRI call. RunPodSandbox runs CNI and the sandbox's shim; StopContainer
/// waits for the container's stop timeout.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// A CRI error: the gRPC status code and the runtime's message.
#[derive(Debug, thiserror::Error)]
#[error("CRI {call}: {code:?}: {message}")]
pub struct CriError {
    pub call: &'static str,
    pub code: tonic::Code,
    pub message: String,
}

/// A blocking CRI client bound to one containerd socket.
pub struct CriClient {
    rt: tokio::runtime::Runtime,
    channel: Channel,
}

impl CriClient {
    /// Connects to the CRI server on `socket` (containerd's gRPC address).
    pub fn connect(socket: &Path) -> Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("creating the CRI client's runtime")?;
        let path: PathBuf = socket.to_owned();
        // The URI is required by tonic and ignored by the connector.
        let endpoint = Endpoint::from_static("http://localhost").connect_timeout(CALL_TIMEOUT);
        let channel = rt
            .block_on(
                endpoint.connect_with_connector(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move {
                        let stream = tokio::net::UnixStream::connect(path).await?;
                        Ok::<_, std::io::Error>(TokioIo::new(stream))
                    }
                })),
            )
            .with_context(|| format!("connecting to the CRI on {}", socket.display()))?;
        Ok(CriClient { rt, channel })
    }

    fn runtime(&self) -> RuntimeServiceClient<Channel> {
        RuntimeServiceClient::new(self.channel.clone())
    }

    fn images(&self) -> ImageServiceClient<Channel> {
        ImageServiceClient::new(self.channel.clone())
    }

    /// Runs one call with [`CALL_TIMEOUT`], turning its status into a [`CriError`].
    fn call<T, F>(&self, name: &'static str, fut: F) -> Result<T, CriError>
    where
        F: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        // The deadline's timer is made here, so inside the runtime.
        let _in_rt = self.rt.enter();
        match self.rt.block_on(tokio::time::timeout(CALL_TIMEOUT, fut)) {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(s)) => Err(CriError {
                call: name,
                code: s.code(),
                message: s.message().to_owned(),
            }),
            Err(_) => Err(CriError {
                call: name,
                code: tonic::Code::DeadlineExceeded,
                message: format!("no answer within {CALL_TIMEOUT:?}"),
            }),
        }
    }

    /// The runtime's name and version (`containerd`, `v1.6.20~ds1`).
    pub fn version(&self) -> Result<cri::VersionResponse, CriError> {
        let req = cri::VersionRequest {
            version: "v1".into(),
        };
        self.call("Version", self.runtime().version(req))
    }

    /// Whether the image is known to the CRI (imported into `k8s.io`).
    pub fn image_present(&self, image: &str) -> Result<bool, CriError> {
        let req = cri::ImageStatusRequest {
            image: Some(image_spec(image)),
            verbose: false,
        };
        Ok(self
            .call("ImageStatus", self.images().image_status(req))?
            .image
            .is_some())
    }

    /// RunPodSandbox under runtime handler `handler`; returns the sandbox id.
    pub fn run_pod(
        &self,
        config: &cri::PodSandboxConfig,
        handler: &str,
    ) -> Result<String, CriError> {
        let req = cri::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: handler.into(),
        };
        Ok(self
            .call("RunPodSandbox", self.runtime().run_pod_sandbox(req))?
            .pod_sandbox_id)
    }

    pub fn stop_pod(&self, id: &str) -> Result<(), CriError> {
        let req = cri::StopPodSandboxRequest {
            pod_sandbox_id: id.into(),
        };
        self.call("StopPodSandbox", self.runtime().stop_pod_sandbox(req))
            .map(drop)
    }

    pub fn remove_pod(&self, id: &str) -> Result<(), CriError> {
        let req = cri::RemovePodSandboxRequest {
            pod_sandbox_id: id.into(),
        };
        self.call("RemovePodSandbox", self.runtime().remove_pod_sandbox(req))
            .map(drop)
    }

    pub fn pod_status(&self, id: &str) -> Result<cri::PodSandboxStatus, CriError> {
        let req = cri::PodSandboxStatusRequest {
            pod_sandbox_id: id.into(),
            verbose: false,
        };
        self.call("PodSandboxStatus", self.runtime().pod_sandbox_status(req))?
            .status
            .ok_or_else(|| missing("PodSandboxStatus", "status"))
    }

    /// The verbose info of sandbox `id`'s status (the runtime spec, the pid, ...).
    pub fn pod_info(&self, id: &str) -> Result<serde_json::Value> {
        let req = cri::PodSandboxStatusRequest {
            pod_sandbox_id: id.into(),
            verbose: true,
        };
        let info = self
            .call("PodSandboxStatus", self.runtime().pod_sandbox_status(req))?
            .info;
        verbose_info(&info, "PodSandboxStatus", id)
    }

    /// The path of the pod's network namespace, from the runtime spec in its verbose status
    /// (`/var/run/netns/cni-...`).
    pub fn pod_netns(&self, id: &str) -> Result<String> {
        let v = self.pod_info(id)?;
        v["runtimeSpec"]["linux"]["namespaces"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|ns| ns["type"] == "network")
            .and_then(|ns| ns["path"].as_str())
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("PodSandboxStatus of {id}: no network namespace path in {v}"))
    }

    /// The pid of sandbox `id`'s pause process.
    pub fn pod_pid(&self, id: &str) -> Result<u32> {
        pid_of(&self.pod_info(id)?, "PodSandboxStatus", id)
    }

    /// The pod's IP address from its status.
    pub fn pod_ip(&self, id: &str) -> Result<String, CriError> {
        self.pod_status(id)?
            .network
            .map(|n| n.ip)
            .filter(|ip| !ip.is_empty())
            .ok_or_else(|| missing("PodSandboxStatus", "network.ip"))
    }

    /// Ids of every sandbox the runtime knows.
    pub fn list_pods(&self) -> Result<Vec<String>, CriError> {
        let req = cri::ListPodSandboxRequest { filter: None };
        Ok(self
            .call("ListPodSandbox", self.runtime().list_pod_sandbox(req))?
            .items
            .into_iter()
            .map(|p| p.id)
            .collect())
    }

    /// CreateContainer in sandbox `pod` (whose config is `pod_config`); returns its id.
    pub fn create_container(
        &self,
        pod: &str,
        config: &cri::ContainerConfig,
        pod_config: &cri::PodSandboxConfig,
    ) -> Result<String, CriError> {
        let req = cri::CreateContainerRequest {
            pod_sandbox_id: pod.into(),
            config: Some(config.clone()),
            sandbox_config: Some(pod_config.clone()),
        };
        Ok(self
            .call("CreateContainer", self.runtime().create_container(req))?
            .container_id)
    }

    pub fn start_container(&self, id: &str) -> Result<(), CriError> {
        let req = cri::StartContainerRequest {
            container_id: id.into(),
        };
        self.call("StartContainer", self.runtime().start_container(req))
            .map(drop)
    }

    pub fn stop_container(&self, id: &str, timeout_s: i64) -> Result<(), CriError> {
        let req = cri::StopContainerRequest {
            container_id: id.into(),
            timeout: timeout_s,
        };
        self.call("StopContainer", self.runtime().stop_container(req))
            .map(drop)
    }

    pub fn remove_container(&self, id: &str) -> Result<(), CriError> {
        let req = cri::RemoveContainerRequest {
            container_id: id.into(),
        };
        self.call("RemoveContainer", self.runtime().remove_container(req))
            .map(drop)
    }

    pub fn container_status(&self, id: &str) -> Result<cri::ContainerStatus, CriError> {
        let req = cri::ContainerStatusRequest {
            container_id: id.into(),
            verbose: false,
        };
        self.call("ContainerStatus", self.runtime().container_status(req))?
            .status
            .ok_or_else(|| missing("ContainerStatus", "status"))
    }

    /// The pid of container `id`'s init process, from its verbose status.
    pub fn container_pid(&self, id: &str) -> Result<u32> {
        let req = cri::ContainerStatusRequest {
            container_id: id.into(),
            verbose: true,
        };
        let info = self
            .call("ContainerStatus", self.runtime().container_status(req))?
            .info;
        pid_of(
            &verbose_info(&info, "ContainerStatus", id)?,
            "ContainerStatus",
            id,
        )
    }

    /// Ids of the containers of sandbox `pod`.
    pub fn list_containers(&self, pod: &str) -> Result<Vec<String>, CriError> {
        let req = cri::ListContainersRequest {
            filter: Some(cri::ContainerFilter {
                pod_sandbox_id: pod.into(),
                ..Default::default()
            }),
        };
        Ok(self
            .call("ListContainers", self.runtime().list_containers(req))?
            .containers
            .into_iter()
            .map(|c| c.id)
            .collect())
    }

    /// ExecSync: `cmd` in container `id`; its exit code, stdout and stderr.
    pub fn exec_sync(
        &self,
        id: &str,
        cmd: &[&str],
        timeout_s: i64,
    ) -> Result<ExecResult, CriError> {
        let req = cri::ExecSyncRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| (*s).to_owned()).collect(),
            timeout: timeout_s,
        };
        let r = self.call("ExecSync", self.runtime().exec_sync(req))?;
        Ok(ExecResult {
            exit_code: r.exit_code,
            stdout: String::from_utf8_lossy(&r.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&r.stderr).into_owned(),
        })
    }

    pub fn container_stats(&self, id: &str) -> Result<cri::ContainerStats, CriError> {
        let req = cri::ContainerStatsRequest {
            container_id: id.into(),
        };
        self.call("ContainerStats", self.runtime().container_stats(req))?
            .stats
            .ok_or_else(|| missing("ContainerStats", "stats"))
    }

    /// Stops and removes sandbox `pod` with everything in it, as kubelet does when a pod
    /// goes; the first error, after trying every step.
    pub fn tear_down_pod(&self, pod: &str) -> Result<()> {
        let mut first: Option<anyhow::Error> = None;
        let mut keep = |r: Result<(), CriError>| {
            if let Err(e) = r {
                first.get_or_insert_with(|| anyhow!(e));
            }
        };
        match self.list_containers(pod) {
            Ok(ids) => {
                for id in ids {
                    keep(self.stop_container(&id, 0));
                    keep(self.remove_container(&id));
                }
            }
            Err(e) => keep(Err(e)),
        }
        keep(self.stop_pod(pod));
        keep(self.remove_pod(pod));
        first.map_or(Ok(()), Err)
    }
}

/// What ExecSync returned.
#[derive(Debug, Clone)]
pub struct ExecResult {
    pub exit_code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// A pod's config as kubelet writes it: metadata, log directory, a cgroup parent, the
/// pod's own network namespace, and `annotations`.
pub fn pod_config(
    name: &str,
    namespace: &str,
    uid: &str,
    log_directory: &Path,
    cgroup_parent: &str,
    annotations: HashMap<String, String>,
) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            uid: uid.into(),
            namespace: namespace.into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: log_directory.display().to_string(),
        labels: HashMap::from([("io.kubernetes.pod.name".into(), name.into())]),
        annotations,
        linux: Some(cri::LinuxPodSandboxConfig {
            cgroup_parent: cgroup_parent.into(),
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    network: cri::NamespaceMode::Pod as i32,
                    pid: cri::NamespaceMode::Container as i32,
                    ipc: cri::NamespaceMode::Pod as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A container's config as kubelet writes it: `image`, `sh -c script`, its log file
/// (`<name>.log` in the pod's log directory), `annotations`.
pub fn container_config(
    name: &str,
    image: &str,
    script: &str,
    annotations: HashMap<String, String>,
) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(image_spec(image)),
        command: vec!["sh".into(), "-c".into(), script.into()],
        log_path: format!("{name}.log"),
        annotations,
        linux: Some(cri::LinuxContainerConfig::default()),
        ..Default::default()
    }
}

/// The JSON document under "info" of a verbose status reply.
fn verbose_info(info: &HashMap<String, String>, call: &str, id: &str) -> Result<serde_json::Value> {
    let text = info
        .get("info")
        .ok_or_else(|| anyhow!("{call} of {id}: no verbose info"))?;
    serde_json::from_str(text).with_context(|| format!("{call} of {id}: verbose info {text}"))
}

fn pid_of(info: &serde_json::Value, call: &str, id: &str) -> Result<u32> {
    info["pid"]
        .as_u64()
        .and_then(|p| u32::try_from(p).ok())
        .filter(|p| *p > 0)
        .ok_or_else(|| anyhow!("{call} of {id}: no pid in {info}"))
}

fn image_spec(image: &str) -> cri::ImageSpec {
    cri::ImageSpec {
        image: image.into(),
        ..Default::default()
    }
}

fn missing(call: &'static str, field: &str) -> CriError {
    CriError {
        call,
        code: tonic::Code::Internal,
        message: format!("the reply has no {field}"),
    }
}
