//! A restore under a plan that fails closed (a deny rule makes it so) is refused at Create,
//! before runc runs: a restored container runs from inside `runc restore`, with no gap for
//! the attach step, so it would run unenforced. The same Create with no policy (a plan that
//! fails open) is accepted, so the refusal is the plan's and not the request's.
//!
//! containerd sends a restore as a Create carrying the checkpoint's directory; `ctr
//! containers restore` needs a checkpoint image, which needs a working criu, so the test
//! sends that Create itself to the shim of a running container, as containerd would.

use std::path::Path;

use anyhow::{anyhow, ensure, Context, Result};
use containerd_shim_protos::api::{CreateTaskRequest, DeleteRequest};
use containerd_shim_protos::protobuf::Message;
use serde_json::json;
use tether_integration::shim_api::{self, ShimEndpoint};
use tether_integration::TestEnv;

use super::{container_dir, tether};
use crate::common::wait_status;

/// A bundle for `id` in `dir`: the running container's spec with `annotations` instead of
/// its own.
fn bundle(env: &TestEnv, from: &str, id: &str, dir: &Path, deny: Option<&str>) -> Result<()> {
    let src = env
        .containerd()
        .bundle_dir(env.namespace(), from)
        .join("config.json");
    let mut spec: serde_json::Value = serde_json::from_slice(
        &std::fs::read(&src).with_context(|| format!("read {}", src.display()))?,
    )?;
    spec["annotations"] = match deny {
        Some(cidr) => json!({ "tether.io/egress-deny": cidr }),
        None => json!({}),
    };
    if let Some(path) = spec["linux"]["cgroupsPath"].as_str() {
        spec["linux"]["cgroupsPath"] = json!(path.replace(from, id));
    }
    std::fs::create_dir_all(dir.join("rootfs"))?;
    std::fs::write(dir.join("config.json"), serde_json::to_vec(&spec)?)?;
    Ok(())
}

/// Create of `id` from the checkpoint at `checkpoint`, on `shim`.
fn create_restored(
    env: &TestEnv,
    shim: &ShimEndpoint,
    id: &str,
    bundle: &Path,
    checkpoint: &Path,
) -> Result<std::result::Result<Vec<u8>, containerd_shim_protos::ttrpc::Status>> {
    let req = CreateTaskRequest {
        id: id.to_string(),
        bundle: bundle.display().to_string(),
        checkpoint: checkpoint.display().to_string(),
        ..Default::default()
    };
    shim_api::request(shim, env.namespace(), "Create", req.write_to_bytes()?)
}

fn restore(env: &mut TestEnv) -> Result<()> {
    let host = env.id("restore-host");
    env.ctr
        .run_container(&env.run(&host).detach().command(["/bin/sleep", "1000"]))?
        .ok()?;
    wait_status(env, &host, "RUNNING")?;
    let shim = shim_api::shim_endpoint(env.containerd(), env.namespace(), &host)?;
    let scratch = tempfile::tempdir()?;
    let checkpoint = scratch.path().join("checkpoint");
    std::fs::create_dir_all(&checkpoint)?;
    let runc_state = |id: &str| {
        Path::new(tether_integration::containerd::RUNC_ROOT)
            .join(env.namespace())
            .join(id)
    };

    // Under a deny rule: refused, with the reason, and nothing of it anywhere.
    let refused = env.id("restore-deny");
    let dir = scratch.path().join(&refused);
    bundle(env, &host, &refused, &dir, Some("127.0.0.2/32"))?;
    let status = match create_restored(env, &shim, &refused, &dir, &checkpoint)? {
        Ok(_) => return Err(anyhow!("a restore under a deny rule was accepted")),
        Err(s) => s,
    };
    ensure!(
        status.message.contains("refused") && status.message.contains("restore"),
        "the refusal does not say why: {status:?}"
    );
    ensure!(
        !container_dir(env, &refused).exists(),
        "pins of a refused restore"
    );
    ensure!(
        !runc_state(&refused).exists(),
        "runc state of a refused restore"
    );
    wait_status(env, &host, "RUNNING").context("the shim's other container after a refusal")?;

    // No policy: the same Create is accepted (its Start would run `runc restore` and attach
    // right after), and deleted again.
    let open = env.id("restore-open");
    let dir = scratch.path().join(&open);
    bundle(env, &host, &open, &dir, None)?;
    create_restored(env, &shim, &open, &dir, &checkpoint)?
        .map_err(|s| anyhow!("a restore with no policy was refused: {s:?}"))?;
    let del = DeleteRequest {
        id: open.clone(),
        ..Default::default()
    };
    shim_api::request(&shim, env.namespace(), "Delete", del.write_to_bytes()?)?
        .map_err(|s| anyhow!("Delete of the restored task: {s:?}"))?;
    ensure!(!runc_state(&open).exists(), "runc state left after Delete");

    env.ctr.force_remove(&host)?;
    env.assert_no_leaks(&host)
}

#[test]
fn restore_under_a_deny_rule_is_refused_at_create() -> Result<()> {
    tether("restore", restore)
}
