//! Kubernetes through the CRI: the tests play kubelet against a private containerd with its
//! CRI plugin on ([`CriNode`]), the `tether` runtime handler from the packaged snippet beside
//! `runc`, pods on a CNI bridge of the node's own.
//!
//! [`pod`] is a pod's life under tether (deny from the first instruction, per-container
//! accounting in a shared netns, exec, a late interface, nothing left behind).

mod cgroups;
mod pod;
mod refusals;
mod stats;

use std::path::Path;

use anyhow::{ensure, Result};
use tether_integration::cri::{CriNode, K8S_NAMESPACE};
use tether_integration::leaks;

use crate::attach::tetherctl_at;

/// Runs `f` on a new node; on failure prints the error, then containerd's log (where the
/// shims' logs go too).
fn on_node(name: &str, f: fn(&CriNode) -> Result<()>) -> Result<()> {
    let node = CriNode::start()?;
    let result = f(&node);
    if let Err(e) = &result {
        let cd = node.containerd();
        eprintln!("--- {name} failed: {e:#}");
        eprintln!(
            "--- containerd log ({}), last lines ---\n{}\n--- end ---",
            cd.log_path().display(),
            cd.log_tail(80)
        );
    }
    result
}

/// The `tetherctl stats` row of container `id`.
fn stats_row(node: &CriNode, id: &str) -> Result<serde_json::Value> {
    crate::attach::stats_at(node.containerd(), id)
}

/// The TC attachments of container `id`, as `tetherctl ps` lists them.
fn tc_attachments(node: &CriNode, id: &str) -> Result<Vec<serde_json::Value>> {
    crate::attach::tc_attachments_at(node.containerd(), id)
}

/// Nothing of a removed pod is left: for the sandbox and each container `ids`, no pins, no
/// attachment or live map entry, no process, mount, cgroup, bundle or runc state; the pod's
/// network namespace `netns` is gone.
fn assert_pod_gone(node: &CriNode, ids: &[&str], netns: &str) -> Result<()> {
    let cd = node.containerd();
    for id in ids {
        leaks::assert_none(cd, K8S_NAMESPACE, id, leaks::DEFAULT_TIMEOUT)?;
        let pins = cd
            .pin_root()
            .join("containers")
            .join(K8S_NAMESPACE)
            .join(id);
        ensure!(!pins.exists(), "pins of {id} left in {}", pins.display());
    }
    let ps = tetherctl_at(cd, &["ps"])?;
    let stats = tetherctl_at(cd, &["stats"])?;
    for id in ids {
        ensure!(
            !ps.as_array()
                .is_some_and(|a| a.iter().any(|r| r["id"] == *id)),
            "{id} still attached: {ps}"
        );
        ensure!(
            !stats
                .as_array()
                .is_some_and(|a| a.iter().any(|r| r["id"] == *id && r["deleted"] != true)),
            "map entries of {id} left: {stats}"
        );
    }
    ensure!(
        !Path::new(netns).exists(),
        "the pod's netns {netns} is left"
    );
    Ok(())
}
