//! Many containers and killed daemons: a burst of 50 attached from one load, containers
//! attached from the pins while tetherd is down, the leftovers of a killed shim collected.

use std::time::Duration;

use anyhow::{anyhow, ensure, Result};
use tether_integration::wait::wait_until;
use tether_integration::TestEnv;

use super::{accounting_links, assert_detached, container_dir, lo_tc, pins_of, tether, tetherctl};
use crate::common::*;

/// Starts `n` detached `sleep` containers at once and waits until each runs.
fn start_many(env: &TestEnv, what: &str, n: usize) -> Result<Vec<String>> {
    let ids: Vec<String> = (0..n).map(|_| env.id(what)).collect();
    let runs: Vec<_> = ids
        .iter()
        .map(|id| {
            let run = env
                .run(id)
                .detach()
                .timeout(Duration::from_secs(240))
                .command(["/bin/sleep", "1000"]);
            spawn_run(env, run)
        })
        .collect();
    for (id, r) in ids.iter().zip(runs) {
        let out = join(r)?;
        ensure!(out.success(), "{id}: {out}");
    }
    Ok(ids)
}

fn prog_ids_in_use(env: &TestEnv) -> Result<std::collections::BTreeSet<u64>> {
    let ps = tetherctl(env, &["ps"])?;
    let mut ids = std::collections::BTreeSet::new();
    for c in ps.as_array().into_iter().flatten() {
        for a in c["attachments"].as_array().into_iter().flatten() {
            ids.insert(a["prog_id"].as_u64().unwrap_or(0));
        }
    }
    Ok(ids)
}

#[test]
fn burst_of_50_loads_once_and_attaches_all() -> Result<()> {
    tether("burst50", |env| {
        ensure!(
            env.containerd().tetherd_pid().is_none(),
            "tetherd runs already"
        );
        let ids = start_many(env, "b", 50)?;
        for id in &ids {
            let pins = pins_of(env, id);
            ensure!(pins == accounting_links(), "{id} is not attached: {pins:?}");
        }
        let status = tetherctl(env, &["status"])?;
        ensure!(
            status["loads"] == 1,
            "one load for the whole burst: {status}"
        );
        // Every container's links point at the same two cgroup programs (where those are
        // blind: connect4, and the two TC programs on each lo).
        let progs = prog_ids_in_use(env)?;
        ensure!(
            progs.len() == accounting_links().len() + 2 * lo_tc(),
            "programs in use: {progs:?}"
        );
        let ps = tetherctl(env, &["ps"])?;
        ensure!(ps.as_array().map_or(0, Vec::len) == 50, "{ps}");

        // tetherd killed: new containers still attach, from the pins.
        let pid = env
            .containerd()
            .tetherd_pid()
            .ok_or_else(|| anyhow!("no tetherd"))?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )?;
        wait_until("tetherd to die", STATE_TIMEOUT, || {
            Ok(env.containerd().tetherd_pid().is_none().then_some(()))
        })?;
        let more = start_many(env, "k", 10)?;
        for id in &more {
            ensure!(
                pins_of(env, id) == accounting_links(),
                "{id} without tetherd"
            );
        }
        for id in ids.iter().chain(&more) {
            env.ctr.force_remove(id)?;
        }
        for id in ids.iter().chain(&more) {
            ensure!(!container_dir(env, id).exists(), "{id} left pins");
        }
        Ok(())
    })
}

#[test]
fn leftovers_of_a_killed_shim_are_collected() -> Result<()> {
    tether("killed_shim", |env| {
        let id = env.id("orphan");
        env.ctr
            .run_container(&env.run(&id).detach().command(["/bin/sleep", "1000"]))?;
        wait_status(env, &id, "RUNNING")?;
        ensure!(pins_of(env, &id) == accounting_links());
        let shim = env.shim_of(&id)?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(shim.pid),
            nix::sys::signal::Signal::SIGKILL,
        )?;
        // containerd notices, runs the shim's `delete` action and forgets the task.
        wait_until("the task to go", STATE_TIMEOUT, || {
            Ok(env.ctr.task(&id)?.is_none().then_some(()))
        })?;
        let _ = env.ctr.run(["container", "rm", &id]);
        // containerd runs the shim's `delete` action, whose `runc delete` returns once the
        // orphaned init is reaped (by PID 1: slow on some machines); then the pins go, either
        // by that action or, once the cgroup is gone, by tetherd's garbage collection.
        wait_until("the orphan's pins to go", Duration::from_secs(120), || {
            let _ = tetherctl(env, &["gc"]);
            Ok((!container_dir(env, &id).exists()).then_some(()))
        })?;
        assert_detached(env, &id)?;
        env.assert_no_leaks(&id)
    })
}
