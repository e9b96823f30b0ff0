//! Shim grouping: containers of one group share one shim process; and the shim's footprint.

use anyhow::{ensure, Result};
use tether_integration::wait::wait_until;
use tether_integration::{leaks, procfs, TestEnv};

use crate::common::*;

scenario!(group_by_label);
/// Two containers with the label `io.containerd.runc.v2.group=G` are served by one shim.
fn group_by_label(env: &mut TestEnv) -> Result<()> {
    let group = format!("label-{}", env.namespace());
    let flag = format!("--label=io.containerd.runc.v2.group={group}");
    grouped_pair(env, &flag)
}

scenario!(group_by_sandbox_annotation);
/// Two containers with the OCI annotation `io.kubernetes.cri.sandbox-id=S` (what the CRI
/// plugin sets for a pod's containers) are served by one shim.
fn group_by_sandbox_annotation(env: &mut TestEnv) -> Result<()> {
    let sandbox = format!("sandbox-{}", env.namespace());
    let flag = format!("--annotation=io.kubernetes.cri.sandbox-id={sandbox}");
    grouped_pair(env, &flag)
}

fn grouped_pair(env: &TestEnv, group_flag: &str) -> Result<()> {
    let first = detached_sleep(env, "first", &[group_flag])?;
    let second = detached_sleep(env, "second", &[group_flag])?;
    let shims = env.shims()?;
    ensure!(
        shims.len() == 1,
        "expected one shim for the group, found {}: {:?}",
        shims.len(),
        shims.iter().map(|s| s.cmdline_string()).collect::<Vec<_>>()
    );
    let shim = shims[0].pid;
    // Both tasks are children of that shim (it is their subreaper).
    for id in [&first, &second] {
        let pid = i32::try_from(wait_status(env, id, "RUNNING")?)?;
        let p = procfs::process(pid)?.ok_or_else(|| anyhow::anyhow!("{id}'s pid {pid} gone"))?;
        ensure!(
            p.ppid == shim,
            "{id} (pid {pid}) has parent {}, not shim {shim}",
            p.ppid
        );
        let out = env.ctr.run([
            "task",
            "exec",
            "--exec-id",
            "x",
            id,
            "/bin/sh",
            "-c",
            "exit 3",
        ])?;
        ensure!(out.code == 3, "exec in {id}: {out}");
    }

    // The shim outlives its first container and keeps serving the second. Its argv still
    // names the first container (`-id FIRST`), so only the rest is checked for leaks here.
    kill_and_delete_only(env, &first)?;
    let left = leaks::find(env.containerd(), env.namespace(), &first)?;
    ensure!(
        left.mounts.is_empty() && left.cgroups.is_empty() && left.dirs.is_empty(),
        "{first} leaked: {left}"
    );
    ensure!(procfs::is_alive(shim)?, "shim exited with a container left");
    let out = env
        .ctr
        .run(["task", "exec", "--exec-id", "y", &second, "/bin/true"])?;
    ensure!(
        out.code == 0,
        "exec in {second} after {first} was deleted: {out}"
    );

    // ...and exits with the last one.
    env.ctr
        .ok(["task", "kill", "--signal", "SIGKILL", &second])?;
    wait_status(env, &second, "STOPPED")?;
    env.ctr.ok(["task", "delete", &second])?;
    env.ctr.ok(["container", "delete", &second])?;
    wait_until("the group's shim to exit", STATE_TIMEOUT, || {
        Ok((!procfs::is_alive(shim)?).then_some(()))
    })?;
    env.assert_no_leaks(&first)?;
    env.assert_no_leaks(&second)
}

scenario!(shim_rss);
/// The bench's RSS probe finds the shim of an idle container and reads a plausible VmRSS.
fn shim_rss(env: &mut TestEnv) -> Result<()> {
    let id = detached_sleep(env, "rss", &[])?;
    let kib = env.shim_rss_kib(&id)?;
    eprintln!("{}: shim VmRSS {kib} KiB", env.runtime);
    ensure!(
        kib > 100 && kib < 1024 * 1024,
        "implausible shim VmRSS {kib} KiB"
    );
    kill_and_delete(env, &id)
}
