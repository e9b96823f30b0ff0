//! Calls to a shim's ttrpc Task service that `ctr` 1.6 cannot make.
//!
//! [`request`] is any Task call, with the shim's status kept for the caller to compare.
//!
//! `ctr` 1.6 has no `task update` (it arrived in containerd 1.7), so the update scenario sends
//! the request containerd's tasks service would send for `Update`: `containerd.task.v2.Task/
//! Update` on the shim's socket (from the bundle's `address` file), with the namespace in the
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

/// The task service containerd 1.6 talks to. The protos crate generates the v3 service
/// (containerd 2.x); `UpdateTaskRequest` is encoded identically in both.
const TASK_SERVICE_V2: &str = "containerd.task.v2.Task";
/// The ttrpc metadata key containerd uses for the namespace.
const NAMESPACE_KEY: &str = "containerd-namespace-ttrpc";
/// typeurl of `specs.LinuxResources` as registered by containerd (JSON-encoded value).
const LINUX_RESOURCES_URL: &str =
    "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources";
/// Deadline of one shim call.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The ttrpc address (`unix:///...`) of the shim serving task `id`.
pub fn shim_address(cd: &Containerd, namespace: &str, id: &str) -> Result<String> {
    let path = cd.bundle_dir(namespace, id).join("address");
    Ok(fs::read_to_string(&path)
        .with_context(|| format!("reading {}", path.display()))?
        .trim()
        .to_owned())
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
    let address = shim_address(cd, namespace, id)?;
    let mut any = Any::new();
    any.type_url = LINUX_RESOURCES_URL.to_owned();
    any.value = serde_json::to_vec(resources).context("encoding LinuxResources")?;
    let mut req = UpdateTaskRequest::new();
    req.id = id.to_owned();
    req.resources = Some(any).into();
    let payload = req.write_to_bytes().context("encoding UpdateTaskRequest")?;
    call(&address, namespace, "Update", payload)
        .with_context(|| format!("Task.Update of {id} via {address}"))?;
    Ok(())
}

/// One unary call on the shim at `address`; returns the response payload.
fn call(address: &str, namespace: &str, method: &str, payload: Vec<u8>) -> Result<Vec<u8>> {
    request(address, namespace, method, payload)?.map_err(|s| anyhow!("{method}: {s:?}"))
}

/// One unary call of Task `method` on the shim at `address`, as containerd makes it. The
/// outer error is the transport's; the inner result is the shim's answer: the response
/// payload, or the status it returned (whose code a test can compare between runtimes).
pub fn request(
    address: &str,
    namespace: &str,
    method: &str,
    payload: Vec<u8>,
) -> Result<std::result::Result<Vec<u8>, ttrpc::Status>> {
    let client = ttrpc::Client::connect(address).map_err(|e| anyhow!("connecting: {e}"))?;
    let mut kv = ttrpc::proto::KeyValue::new();
    kv.key = NAMESPACE_KEY.to_owned();
    kv.value = namespace.to_owned();
    let mut req = ttrpc::Request::new();
    req.service = TASK_SERVICE_V2.to_owned();
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
