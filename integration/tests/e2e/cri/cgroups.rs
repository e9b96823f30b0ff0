//! Where a pod's containers land: the same cgroups under `tether` as under `runc`, from the
//! cgroup parent kubelet gives. On a node whose PID 1 is systemd (the kernel matrix boots
//! one: `kernel-matrix.sh --init systemd`) the parent is a slice, runc's handler has
//! `SystemdCgroup = true` and tether's has no such option (CRI passes runc's options only
//! to runtimes it knows as runc): both must end in the same slice, each in its
//! `cri-containerd-<id>.scope`. Elsewhere, both in the cgroupfs path.

use anyhow::{ensure, Result};
use tether_integration::cgroup;
use tether_integration::cri::{CriNode, RUNC_HANDLER, TETHER_HANDLER};

use super::on_node;

const MEMORY_LIMIT: i64 = 96 << 20;

#[test]
fn pod_cgroups_are_runcs() -> Result<()> {
    on_node("pod_cgroups", |node| {
        let runc = placed(node, RUNC_HANDLER)?;
        let tether = placed(node, TETHER_HANDLER)?;
        eprintln!("runc:\n{}\ntether:\n{}", runc.0, tether.0);
        ensure!(runc == tether, "runc: {runc:?}\ntether: {tether:?}");
        if node.systemd() {
            ensure!(
                runc.0.contains(".slice/cri-containerd-ID.scope"),
                "not in a scope of the pod's slice: {}",
                runc.0
            );
        }
        Ok(())
    })
}

/// A pod of `handler` named after it with one container: `/proc/<pid>/cgroup` of the
/// container with its id, the pod's name and the handler made `ID` and `POD`; its
/// sandbox's the same way; its memory limit.
fn placed(node: &CriNode, handler: &str) -> Result<(String, String, Option<u64>)> {
    let cri = &node.cri;
    let name = format!("cg{handler}");
    let cfg = node.pod_config(&name, &[])?;
    let pod = cri.run_pod(&cfg, handler)?;
    let (id, pid) = node.start_limited(&pod, &cfg, "app", "exec sleep 1000", MEMORY_LIMIT)?;
    let masked = |pid: u32, id: &str| -> Result<String> {
        Ok(std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?
            .replace(id, "ID")
            .replace(&name, "POD"))
    };
    let container = masked(pid, &id)?;
    // The sandbox: the pod's first process that is not the container's.
    let sandbox_pid = sandbox_pid(node, &pod)?;
    let sandbox = masked(sandbox_pid, &pod)?;
    let limit = cgroup::memory_limit(i32::try_from(pid)?)?;
    ensure!(
        limit == Some(MEMORY_LIMIT as u64),
        "{handler}: memory limit {limit:?}"
    );
    cri.tear_down_pod(&pod)?;
    Ok((container, sandbox, limit))
}

/// The pid of sandbox `pod`'s pause process, from its verbose status.
fn sandbox_pid(node: &CriNode, pod: &str) -> Result<u32> {
    node.cri.pod_pid(pod)
}
