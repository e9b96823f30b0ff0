//! Containers that cannot start: the error reaches the user and nothing is left behind.

use anyhow::{ensure, Result};
use tether_integration::TestEnv;

use crate::common::*;

/// The phrase both runtimes' errors must contain (from runc's stat error).
const ENOENT: &str = "no such file or directory";

scenario!(missing_rootfs);
/// `ctr run --rootfs /nonexistent`: non-zero exit, an error naming the path and ENOENT.
fn missing_rootfs(env: &mut TestEnv) -> Result<()> {
    let id = env.id("norootfs");
    let missing = format!("/nonexistent-{id}");
    let out = env.ctr.run([
        "run",
        "--rm",
        "--runtime",
        env.runtime.name(),
        "--rootfs",
        &missing,
        &id,
        "/bin/true",
    ])?;
    ensure!(out.code != 0, "{out}");
    ensure!(
        out.stderr.contains(ENOENT) && out.stderr.contains(&missing),
        "error does not name the problem: {out}"
    );
    ensure!(
        out.stderr.contains("failed to create shim task"),
        "not a task-create error: {out}"
    );
    ensure!(env.ctr.task(&id)?.is_none(), "task left behind");
    env.assert_no_leaks(&id)
}

scenario!(missing_binary);
/// `ctr run ... /nope`: non-zero exit, an error naming the binary and ENOENT; the same for
/// an exec of a missing binary, which leaves the container running.
fn missing_binary(env: &mut TestEnv) -> Result<()> {
    let id = env.id("nobin");
    let out = env
        .ctr
        .run_container(&env.run(&id).rm().command(["/nope"]))?;
    ensure!(out.code != 0, "{out}");
    ensure!(
        out.stderr.contains(ENOENT) && out.stderr.contains("/nope"),
        "error does not name the problem: {out}"
    );
    ensure!(env.ctr.task(&id)?.is_none(), "task left behind");
    env.assert_no_leaks(&id)?;

    let id = detached_sleep(env, "noexec", &[])?;
    let out = env
        .ctr
        .run(["task", "exec", "--exec-id", "nope", &id, "/nope"])?;
    ensure!(out.code != 0, "{out}");
    ensure!(
        out.stderr.contains(ENOENT) && out.stderr.contains("/nope"),
        "exec error does not name the problem: {out}"
    );
    wait_status(env, &id, "RUNNING")?;
    let pids = env.ctr.task_pids(&id)?;
    ensure!(pids.len() == 1, "failed exec left processes: {pids:?}");
    // The failed exec's id is free again.
    let out = env
        .ctr
        .run(["task", "exec", "--exec-id", "nope", &id, "/bin/true"])?;
    ensure!(out.code == 0, "{out}");
    kill_and_delete(env, &id)
}
