//! Controlling a running task: kill --all, ps, pause/resume, metrics, update.

use anyhow::{bail, ensure, Context, Result};
use tether_integration::wait::wait_until;
use tether_integration::{cgroup, shim_api, TestEnv};

use crate::common::*;

scenario!(kill_all_and_ps);
/// `ctr task ps` lists the init, its children and exec processes; `ctr task kill --all`
/// kills every one of them, execs included.
fn kill_all_and_ps(env: &mut TestEnv) -> Result<()> {
    let id = env.id("all");
    env.ctr
        .run_container(&env.run(&id).detach().sh("sleep 1000 & sleep 1000 & wait"))?
        .ok()?;
    let init_pid = wait_status(env, &id, "RUNNING")?;
    let exec = spawn_ctr(
        env,
        ["task", "exec", "--exec-id", "x", &id, "/bin/sleep", "1000"]
            .map(String::from)
            .to_vec(),
    );
    // sh, two sleeps, the exec'd sleep.
    let pids = wait_until("4 processes in ctr task ps", STATE_TIMEOUT, || {
        let pids = env.ctr.task_pids(&id)?;
        Ok((pids.len() == 4).then_some(pids))
    })?;
    ensure!(
        pids.contains(&init_pid),
        "ps {pids:?} lacks init {init_pid}"
    );
    for pid in &pids {
        let p = tether_integration::procfs::process(i32::try_from(*pid)?)?
            .with_context(|| format!("ps lists {pid}, which does not exist"))?;
        ensure!(
            p.program() == Some("sleep") || p.program() == Some("sh"),
            "ps lists {pid}: {:?}",
            p.cmdline
        );
    }

    env.ctr
        .ok(["task", "kill", "--all", "--signal", "SIGKILL", &id])?;
    let out = join(exec)?;
    ensure!(out.code == 137, "exec after kill --all: {out}");
    wait_status(env, &id, "STOPPED")?;
    for pid in pids {
        ensure!(
            !tether_integration::procfs::is_alive(i32::try_from(pid)?)?,
            "{pid} survived kill --all"
        );
    }
    env.ctr.ok(["task", "delete", &id])?;
    env.ctr.ok(["container", "delete", &id])?;
    env.assert_no_leaks(&id)
}

scenario!(pause_resume);
/// `ctr task pause` freezes the cgroup and shows PAUSED; resume thaws it.
fn pause_resume(env: &mut TestEnv) -> Result<()> {
    let id = detached_sleep(env, "pause", &[])?;
    let pid = i32::try_from(wait_status(env, &id, "RUNNING")?)?;
    ensure!(!cgroup::is_frozen(pid)?, "frozen before pause");

    env.ctr.ok(["task", "pause", &id])?;
    wait_status(env, &id, "PAUSED")?;
    ensure!(cgroup::is_frozen(pid)?, "PAUSED but cgroup not frozen");

    env.ctr.ok(["task", "resume", &id])?;
    wait_status(env, &id, "RUNNING")?;
    ensure!(!cgroup::is_frozen(pid)?, "RUNNING but cgroup frozen");
    let out = env.ctr.run([
        "task",
        "exec",
        "--exec-id",
        "after",
        &id,
        "/bin/sh",
        "-c",
        "exit 9",
    ])?;
    ensure!(out.code == 9, "exec after resume: {out}");
    kill_and_delete(env, &id)
}

scenario!(metrics);
/// `ctr task metrics` prints memory, cpu and pids rows for the task's cgroup.
fn metrics(env: &mut TestEnv) -> Result<()> {
    let id = detached_sleep(env, "metrics", &[])?;
    let out = env.ctr.ok(["task", "metrics", &id])?;
    let rows = metric_rows(&out.stdout);
    ensure!(!rows.is_empty(), "no metric rows: {}", out.stdout);
    let value =
        |pred: &dyn Fn(&str) -> bool| rows.iter().find(|(k, _)| pred(k)).map(|(_, v)| v.clone());
    let usage = value(&|k| k == "memory.usage_in_bytes" || k == "memory.usage")
        .context(format!("no memory usage row: {}", out.stdout))?;
    ensure!(usage.parse::<u64>()? > 0, "memory usage {usage}");
    ensure!(
        value(&|k| k.starts_with("cpu")).is_some(),
        "no cpu row: {}",
        out.stdout
    );
    let pids = value(&|k| k == "pids.current").context(format!("no pids row: {}", out.stdout))?;
    ensure!(pids == "1", "pids.current {pids} for a lone sleep");
    kill_and_delete(env, &id)
}

/// `(name, value)` rows of the METRIC table of `ctr task metrics`.
fn metric_rows(text: &str) -> Vec<(String, String)> {
    text.lines()
        .skip_while(|l| !l.starts_with("METRIC"))
        .skip(1)
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some((f.next()?.to_owned(), f.collect::<Vec<_>>().join(" ")))
        })
        .collect()
}

scenario!(update);
/// Task.Update (what `ctr task update --memory-limit` does in containerd >= 1.7) changes the
/// cgroup's memory limit.
fn update(env: &mut TestEnv) -> Result<()> {
    const BEFORE: u64 = 64 << 20;
    const AFTER: u64 = 32 << 20;
    let id = detached_sleep(env, "update", &[&format!("--memory-limit={BEFORE}")])?;
    let pid = i32::try_from(wait_status(env, &id, "RUNNING")?)?;
    let limit = cgroup::memory_limit(pid)?;
    ensure!(limit == Some(BEFORE), "limit before update: {limit:?}");

    shim_api::update_memory_limit(env.containerd(), env.namespace(), &id, AFTER as i64)?;
    let limit = cgroup::memory_limit(pid)?;
    if limit != Some(AFTER) {
        bail!("limit after update to {AFTER}: {limit:?}");
    }
    wait_status(env, &id, "RUNNING")?;
    kill_and_delete(env, &id)
}
