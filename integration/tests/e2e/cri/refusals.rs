//! What a tenant writes in its pod spec cannot get past tether: a malformed annotation fails
//! the pod or the container with an error that names the key and the value (what
//! `kubectl describe` shows), and with a deny rule in the node's config every annotation
//! that would lower it is refused, naming the node's setting. Nothing is left behind.

use std::time::Duration;

use anyhow::{anyhow, ensure, Result};
use tether_integration::cri::{CriNode, K8S_NAMESPACE, RUNC_HANDLER, TETHER_HANDLER};
use tether_integration::wait::wait_until;

use super::on_node;

#[test]
fn bad_annotations_fail_the_pod_or_container_by_name() -> Result<()> {
    on_node("bad_annotations", |node| {
        let cri = &node.cri;
        // In the pod's annotations: the sandbox is refused, so is the pod.
        let bad = "10.0.0.300";
        let cfg = node.pod_config("badpod", &[("tether.io/egress-deny", bad)])?;
        let err = match cri.run_pod(&cfg, TETHER_HANDLER) {
            Ok(id) => return Err(anyhow!("pod {id} ran with egress-deny={bad}")),
            Err(e) => e.to_string(),
        };
        ensure!(
            err.contains("tether.io/egress-deny") && err.contains(bad),
            "the error names neither the key nor the value: {err}"
        );
        assert_left_nothing(node, 0)?;

        // In a container's: its start fails (containerd creates the task there), the pod
        // and its other containers go on.
        let cfg = node.pod_config("goodpod", &[])?;
        let pod = cri.run_pod(&cfg, TETHER_HANDLER)?;
        let c = cri.create_container(
            &pod,
            &node.container_config("bad", "sleep 1000", &[("tether.io/programs", "sometimes")]),
            &cfg,
        )?;
        let err = match cri.start_container(&c) {
            Ok(()) => return Err(anyhow!("container {c} started with programs=sometimes")),
            Err(e) => e.to_string(),
        };
        ensure!(
            err.contains("tether.io/programs") && err.contains("sometimes"),
            "the error names neither the key nor the value: {err}"
        );
        cri.remove_container(&c)?;
        tether_integration::leaks::assert_none(
            node.containerd(),
            K8S_NAMESPACE,
            &c,
            tether_integration::leaks::DEFAULT_TIMEOUT,
        )?;
        let ok =
            cri.create_container(&pod, &node.container_config("ok", "sleep 1000", &[]), &cfg)?;
        cri.start_container(&ok)?;
        cri.tear_down_pod(&pod)?;
        assert_left_nothing(node, 0)
    })
}

#[test]
fn pod_annotations_cannot_lower_the_nodes_policy() -> Result<()> {
    on_node("node_floor", |node| {
        let cri = &node.cri;
        let gw = node.gateway();
        let probe = format!("nc -w 3 {gw} 9; echo rc=$?");
        // Control: runc's pod reaches the gateway (nothing listens on port 9).
        let cfg = node.pod_config("control", &[])?;
        let control = cri.run_pod(&cfg, RUNC_HANDLER)?;
        let c =
            cri.create_container(&control, &node.container_config("probe", &probe, &[]), &cfg)?;
        cri.start_container(&c)?;
        let out = wait_log(node, "control", "probe")?;
        ensure!(out.contains("Connection refused"), "control: {out}");

        node.set_attach_config(&format!("egress_deny = [\"{gw}/32\"]\n"))?;
        // The node's rule holds for a pod that says nothing.
        let cfg = node.pod_config("plain", &[])?;
        let plain = cri.run_pod(&cfg, TETHER_HANDLER)?;
        let c = cri.create_container(&plain, &node.container_config("probe", &probe, &[]), &cfg)?;
        cri.start_container(&c)?;
        let out = wait_log(node, "plain", "probe")?;
        if crate::attach::blind() {
            // Blind cgroup programs: the pod's interfaces judge it, by the sandbox's rules
            // (the node's too): the SYN is dropped, the connect times out (see pod.rs).
            ensure!(
                !out.contains("Connection refused") && !out.contains("rc=0"),
                "the node's rule at the pod's interfaces: {out}"
            );
        } else {
            ensure!(
                out.contains("Operation not permitted"),
                "the node's rule: {out}"
            );
        }
        cri.tear_down_pod(&plain)?;

        // Each way down, as a pod annotation: the pod is refused, naming the key and the
        // node's setting, and leaves nothing.
        for (i, (key, value, setting)) in [
            ("tether.io/programs", "none", "[attach] programs"),
            ("tether.io/programs", "accounting", "[attach] egress_deny"),
            ("tether.io/failure-policy", "open", "[attach] egress_deny"),
            ("tether.io/audit", "off", "[attach] audit"),
            ("tether.io/interfaces", "none", "[attach] interfaces"),
        ]
        .into_iter()
        .enumerate()
        {
            let cfg = node.pod_config(&format!("lower{i}"), &[(key, value)])?;
            let err = match cri.run_pod(&cfg, TETHER_HANDLER) {
                Ok(id) => return Err(anyhow!("pod {id} ran with {key}={value}")),
                Err(e) => e.to_string(),
            };
            ensure!(
                err.contains(key) && err.contains(setting),
                "{key}={value}: the error names neither the key nor the node's setting: {err}"
            );
            // The control pod is the one left.
            assert_left_nothing(node, 1)?;
        }
        Ok(())
    })
}

fn wait_log(node: &CriNode, pod: &str, name: &str) -> Result<String> {
    wait_until("the probe's result", Duration::from_secs(20), || {
        let log = node.log_of(pod, name)?;
        Ok(log.contains("rc=").then_some(log))
    })
}

/// Only the `pods` pods the test keeps are left: no other sandbox, no address leased for
/// one, no shim, no pins.
fn assert_left_nothing(node: &CriNode, pods: usize) -> Result<()> {
    let cri = &node.cri;
    let cd = node.containerd();
    ensure!(
        cri.list_pods()?.len() == pods,
        "pods: {:?}",
        cri.list_pods()?
    );
    wait_until(
        "the refused pod's leftovers to go",
        Duration::from_secs(15),
        || {
            let leased = node.leased_addresses();
            let shims = cd.shim_processes()?;
            let pins: Vec<_> =
                std::fs::read_dir(cd.pin_root().join("containers").join(K8S_NAMESPACE))
                    .map(|d| d.flatten().map(|e| e.file_name()).collect())
                    .unwrap_or_default();
            if leased.len() == pods && shims.len() == pods && pins.is_empty() {
                return Ok(Some(()));
            }
            Err(anyhow!(
                "left: addresses {leased:?}, shims {:?}, pins {pins:?}",
                shims.iter().map(|s| s.pid).collect::<Vec<_>>()
            ))
        },
    )
}
