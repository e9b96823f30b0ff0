//! The attach step, end to end through containerd and the tether shim: programs are in place
//! before the container's first instruction, traffic is counted per container, late
//! interfaces are attached, bad annotations fail Create cleanly, delete leaves nothing.
//!
//! One module per scenario group: [`one_container`] (a container's own attach: denial from
//! its first instruction, counters, priority, host network, a late interface),
//! [`create_failures`] (bad annotations, the failure policy), [`many_containers`] (a burst,
//! tetherd or a shim killed), [`named_netns`] (CNI and a pod's namespace, TCX and clsact)
//! [`cni`] (the tests' CNI network, twenty pods at once), [`node_floor`] (annotations
//! cannot lower the node's policy), [`escape`] (a probe's 29 ways out), [`churn`] (faults
//! under load), [`restore`] (a restore under a deny rule is refused) and [`runc_shim`]
//! (`tether-runc` under containerd's runc shim). This file holds what they
//! share: `tetherctl`, the pins of a container, the detach check.

mod cgroup_v1;
mod churn;
mod cni;
mod create_failures;
mod escape;
mod many_containers;
mod named_netns;
mod node_floor;
mod one_container;
mod restore;
mod runc_shim;

use std::path::PathBuf;
use std::process::Command;

use anyhow::{anyhow, ensure, Context, Result};
use tether_integration::{Runtime, TestEnv};

use crate::common::*;

/// Whether a probe (`nc -w 3 ADDR 9`, nothing listening) reached its address: the port
/// answered with a reset.
pub(super) fn reached(out: &tether_integration::Output) -> bool {
    out.stderr.contains("Connection refused")
}

/// Whether a probe was denied: EPERM at connect, or where the cgroup programs are blind
/// (the step-down enforces at TC) a SYN dropped, so nc times out.
pub(super) fn denied(out: &tether_integration::Output) -> bool {
    let eperm = "Operation not permitted";
    if tether_bpf::features::CgroupSockets::probe() == tether_bpf::features::CgroupSockets::Blind {
        out.code != 0 && !reached(out)
    } else {
        out.stderr.contains(eperm) || out.stdout.contains(eperm)
    }
}

/// Runs `f` against the tether runtime only (these behaviours do not exist in runc.v2).
pub(super) fn tether(name: &str, f: fn(&mut TestEnv) -> Result<()>) -> Result<()> {
    run_scenario(Runtime::Tether, name, f)
}

pub(super) fn tetherctl(env: &TestEnv, args: &[&str]) -> Result<serde_json::Value> {
    tetherctl_at(env.containerd(), args)
}

/// `tetherctl --json ARGS` against the tetherd of `cd`'s shims.
pub(crate) fn tetherctl_at(
    cd: &tether_integration::Containerd,
    args: &[&str],
) -> Result<serde_json::Value> {
    let text = tetherctl_text_at(cd, &[&["--json"], args].concat())?;
    // `stats --json` prints one object per line; the others one document.
    if args.first() == Some(&"stats") {
        let rows: Vec<serde_json::Value> = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(serde_json::from_str)
            .collect::<Result<_, _>>()?;
        Ok(serde_json::Value::Array(rows))
    } else {
        Ok(serde_json::from_str(&text)?)
    }
}

/// `tetherctl ARGS` against the tetherd of `cd`'s shims, as a user reads it.
pub(crate) fn tetherctl_text_at(
    cd: &tether_integration::Containerd,
    args: &[&str],
) -> Result<String> {
    let bin = tether_integration::containerd::tether_shim_binary()?.with_file_name("tetherctl");
    let out = Command::new(&bin)
        .arg("--socket")
        .arg(cd.tetherd_socket())
        .args(args)
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    ensure!(
        out.status.success(),
        "tetherctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The `tetherctl stats` row of container `id`.
pub(crate) fn stats_at(cd: &tether_integration::Containerd, id: &str) -> Result<serde_json::Value> {
    let all = tetherctl_at(cd, &["stats"])?;
    all.as_array()
        .and_then(|a| a.iter().find(|r| r["id"] == id).cloned())
        .ok_or_else(|| anyhow!("no stats for {id}: {all}"))
}

pub(super) fn stats_of(env: &TestEnv, id: &str) -> Result<serde_json::Value> {
    stats_at(env.containerd(), id)
}

/// A counter of a `stats --json` row summed over its interfaces.
pub(super) fn interfaces_sum(row: &serde_json::Value, field: &str) -> u64 {
    row["interfaces"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| i[field].as_u64().unwrap_or(0))
        .sum()
}

pub(super) fn container_dir(env: &TestEnv, id: &str) -> PathBuf {
    env.containerd()
        .pin_root()
        .join("containers")
        .join(env.namespace())
        .join(id.replace('.', "%2E"))
}

/// Holds `ctr run` of container `id` to a refusal at create whose error says each of `want`,
/// then removes what containerd kept of it and checks that nothing of it is left: no pin
/// directory, no cgroup, mount or process.
pub(super) fn refused_at_create(
    env: &TestEnv,
    id: &str,
    out: &tether_integration::Output,
    want: &[&str],
) -> Result<()> {
    ensure!(out.code != 0, "{id}: created anyway: {out}");
    for w in want {
        ensure!(
            out.stderr.contains(w),
            "{id}: the error does not say {w:?}: {out}"
        );
    }
    let _ = env.ctr.run(["container", "rm", id]);
    ensure!(!container_dir(env, id).exists(), "{id}: pins left");
    env.assert_no_leaks(id)
}

pub(super) fn pins_of(env: &TestEnv, id: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(container_dir(env, id))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The container's TC attachments (one per interface and direction), whatever the kernel's
/// mechanism: TCX links (pinned, 6.6+) or clsact filters (older kernels), as `tetherctl ps`
/// lists them.
pub(super) fn tc_attachments(env: &TestEnv, id: &str) -> Result<Vec<serde_json::Value>> {
    tc_attachments_at(env.containerd(), id)
}

/// [`tc_attachments`] of a container of `cd`.
pub(crate) fn tc_attachments_at(
    cd: &tether_integration::Containerd,
    id: &str,
) -> Result<Vec<serde_json::Value>> {
    let all = tetherctl_at(cd, &["ps"])?;
    let row = all
        .as_array()
        .and_then(|a| a.iter().find(|r| r["id"] == id))
        .ok_or_else(|| anyhow!("{id} not in tetherctl ps: {all}"))?;
    Ok(row["attachments"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["kind"] == "tcx" || a["kind"] == "clsact")
        .cloned()
        .collect())
}

/// The number of the container's TC attachments ([`tc_attachments`]).
pub(super) fn tc_count(env: &TestEnv, id: &str) -> Result<usize> {
    Ok(tc_attachments(env, id)?.len())
}

/// The cgroup links of a container with the default plan (accounting, no deny rules), as
/// sorted pin names: the sock_addr programs are attached only for deny rules or connection
/// audit.
pub(super) const ACCOUNTING_LINKS: [&str; 2] =
    ["cgroup_tether_cg_egress", "cgroup_tether_cg_ingress"];
/// The cgroup links of a container with the default plan on this node. Where the cgroup
/// programs cannot see the container's sockets (`cgroup-sockets: blind`) it counts at its
/// interfaces, loopback included, and only `connect4` is attached (its link ties the pins
/// to the cgroup's life), as for `count-at=interfaces`.
pub(super) fn accounting_links() -> Vec<&'static str> {
    if blind() {
        vec!["cgroup_tether_connect4"]
    } else {
        ACCOUNTING_LINKS.to_vec()
    }
}

/// Whether this node's cgroup programs are blind to container sockets (the step-down).
pub(super) fn blind() -> bool {
    tether_bpf::features::CgroupSockets::probe() == tether_bpf::features::CgroupSockets::Blind
}

/// How many `lo` interfaces of a container's namespace get TC programs: one where the
/// cgroup programs are blind (TC stands in for them), else none.
pub(super) fn lo_tc() -> usize {
    usize::from(blind())
}

/// The cgroup links of a container with deny rules: every cgroup program.
pub(super) const POLICY_LINKS: [&str; 7] = [
    "cgroup_tether_cg_egress",
    "cgroup_tether_cg_ingress",
    "cgroup_tether_connect4",
    "cgroup_tether_connect6",
    "cgroup_tether_sendmsg4",
    "cgroup_tether_sendmsg6",
    "cgroup_tether_setsockopt",
];

/// The cgroup link pins among `pins` (sorted as `pins` is).
pub(super) fn cgroup_pins(pins: &[String]) -> Vec<&str> {
    pins.iter()
        .map(String::as_str)
        .filter(|p| p.starts_with("cgroup_"))
        .collect()
}

pub(super) fn assert_detached(env: &TestEnv, id: &str) -> Result<()> {
    ensure!(
        !container_dir(env, id).exists(),
        "pins of {id} left: {:?}",
        pins_of(env, id)
    );
    let stats = tetherctl(env, &["stats"])?;
    ensure!(
        !stats
            .as_array()
            .is_some_and(|a| a.iter().any(|r| r["id"] == id && r["deleted"] != true)),
        "map entries of {id} left: {stats}"
    );
    Ok(())
}
