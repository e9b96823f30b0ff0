//! Calls to a shim's ttrpc Task service that `ctr` 1.6 cannot make.
//!
//! [`request`] is any Task call, with the shim's status kept for the caller to compare.
//!
//! `ctr` 1.6 has no `task update` (it arrived in containerd 1.7), so the update scenario sends
//! the request containerd's tasks service would send for `Update`: `containerd.task.v2.Task/
//! Update` (`v3` for a shim that announced it to containerd 2.x) on the shim's socket (from the
//! bundle's `bootstrap.json` or `address` file), with the namespace in the
//! ttrpc metadata and the resources as a typeurl `Any` holding JSON `LinuxResources`.

use std::fs;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use containerd_shim_protos::api::UpdateTaskRequest;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::Message;
use containerd_shim_protos::ttrpc;
use serde_json::json;

use crate::containerd::Containerd;

/// The task service containerd 1.6 and 1.7 talk to, and 2.x to a shim that replied to `start`
/// with a plain address. The messages are encoded identically in v2 and v3.
pub const TASK_SERVICE_V2: &str = "containerd.task.v2.Task";
/// The task service containerd 2.x talks to a shim that announced version 3 (the Go runc shim
/// of 2.x serves only this one).
pub const TASK_SERVICE_V3: &str = "containerd.task.v3.Task";
/// The ttrpc metadata key containerd uses for the namespace.
const NAMESPACE_KEY: &str = "containerd-namespace-ttrpc";
/// typeurl of `specs.LinuxResources` as registered by containerd (JSON-encoded value).
const LINUX_RESOURCES_URL: &str =
    "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources";
/// Deadline of one shim call.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Where and how to reach the shim serving a task, as containerd recorded it in the bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShimEndpoint {
    /// `unix:///...`.
    pub address: String,
    /// The task API version: 2, or 3 for a shim that announced it in its bootstrap reply.
    pub version: u32,
}

impl ShimEndpoint {
    /// The ttrpc service name of the task API at this version.
    pub fn task_service(&self) -> &'static str {
        if self.version >= 3 {
            TASK_SERVICE_V3
        } else {
            TASK_SERVICE_V2
        }
    }
}

/// The endpoint of the shim serving task `id`: containerd 2.x records the shim's start reply
/// in the bundle's `bootstrap.json` (`{"version":3,"address":...,"protocol":"ttrpc"}` from the
/// Go runc shim, version 2 for a shim that replied with a plain address); 1.6/1.7 (and tether's
/// shim itself) write the plain address to `address`.
pub fn shim_endpoint(cd: &Containerd, namespace: &str, id: &str) -> Result<ShimEndpoint> {
    let bundle = cd.bundle_dir(namespace, id);
    let bootstrap = bundle.join("bootstrap.json");
    if let Ok(text) = fs::read_to_string(&bootstrap) {
        let v: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("parsing {}", bootstrap.display()))?;
        let address = v["address"]
            .as_str()
            .ok_or_else(|| anyhow!("no address in {}: {text}", bootstrap.display()))?;
        let version = v["version"].as_u64().unwrap_or(2);
        return Ok(ShimEndpoint {
            address: address.to_owned(),
            version: u32::try_from(version).unwrap_or(2),
        });
    }
    let path = bundle.join("address");
    let address = fs::read_to_string(&path)
        .with_context(|| format!("reading {}", path.display()))?
        .trim()
        .to_owned();
    Ok(ShimEndpoint {
        address,
        version: 2,
    })
}

/// Sets the memory limit of task `id` through its shim's `Task.Update`.
pub fn update_memory_limit(cd: &Containerd, namespace: &str, id: &str, bytes: i64) -> Result<()> {
    let resources = json!({ "memory": { "limit": bytes } });
    update(cd, namespace, id, &resources)
}

/// `Task.Update` of task `id` with `resources` (an OCI `LinuxResources` as JSON).
pub fn update(
    cd: &Containerd,
    namespace: &str,
    id: &str,
    resources: &serde_json::Value,
) -> Result<()> {
    let shim = shim_endpoint(cd, namespace, id)?;
    let mut any = Any::new();
    any.type_url = LINUX_RESOURCES_URL.to_owned();
    any.value = serde_json::to_vec(resources).context("encoding LinuxResources")?;
    let mut req = UpdateTaskRequest::new();
    req.id = id.to_owned();
    req.resources = Some(any).into();
    let payload = req.write_to_bytes().context("encoding UpdateTaskRequest")?;
    call(&shim, namespace, "Update", payload)
        .with_context(|| format!("Task.Update of {id} via {}", shim.address))?;
    Ok(())
}

/// One unary call on `shim`; returns the response payload.
pub fn call(
    shim: &ShimEndpoint,
    namespace: &str,
    method: &str,
    payload: Vec<u8>,
) -> Result<Vec<u8>> {
    request(shim, namespace, method, payload)?.map_err(|s| anyhow!("{method}: {s:?}"))
}

/// One unary call of Task `method` on `shim`, as containerd makes it. The outer error is
/// the transport's; the inner result is the shim's answer: the response payload, or the
/// status it returned (whose code a test can compare between runtimes).
pub fn request(
    shim: &ShimEndpoint,
    namespace: &str,
    method: &str,
    payload: Vec<u8>,
) -> Result<std::result::Result<Vec<u8>, ttrpc::Status>> {
    let client = ttrpc::Client::connect(&shim.address).map_err(|e| anyhow!("connecting: {e}"))?;
    let mut kv = ttrpc::proto::KeyValue::new();
    kv.key = NAMESPACE_KEY.to_owned();
    kv.value = namespace.to_owned();
    let mut req = ttrpc::Request::new();
    req.service = shim.task_service().to_owned();
    req.method = method.to_owned();
    req.payload = payload;
    req.timeout_nano = i64::try_from(CALL_TIMEOUT.as_nanos()).unwrap_or(i64::MAX);
    req.metadata = vec![kv];
    match client.request(req) {
        Ok(resp) => Ok(Ok(resp.payload)),
        Err(ttrpc::Error::RpcStatus(status)) => Ok(Err(status)),
        Err(e) => Err(anyhow!("{method}: {e}")),
    }
}
