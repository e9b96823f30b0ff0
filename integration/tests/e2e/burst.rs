//! Many containers at once.

use std::time::Duration;

use anyhow::{ensure, Result};
use tether_integration::wait::wait_until;
use tether_integration::{procfs, Runtime, TestEnv};

use crate::common::*;

/// Containers started concurrently.
const N: usize = 20;
/// Deadline of each `ctr run` of the burst (2 cores, 20 containers).
const RUN_TIMEOUT: Duration = Duration::from_secs(240);

scenario!(burst);
/// 20 concurrent `ctr run --rm ... exit N` each get their own N; afterwards no shim is left,
/// no shim has zombie children, nothing leaks.
fn burst(env: &mut TestEnv) -> Result<()> {
    let ids: Vec<String> = (0..N).map(|_| env.id("burst")).collect();
    let runs: Vec<_> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let code = 10 + i;
            // Each container also checks the argument it was given reached it.
            let run = env
                .run(id)
                .rm()
                .timeout(RUN_TIMEOUT)
                .sh(&format!("echo {id}; exit {code}"));
            (code, spawn_run(env, run))
        })
        .collect();

    // While they run: no shim may hold zombie children for long; sampled once here, and
    // after all have exited below.
    assert_no_shim_zombies(env)?;

    let mut failures = Vec::new();
    let mut lost = 0;
    for ((code, h), id) in runs.into_iter().zip(&ids) {
        match join(h) {
            Ok(out) if out.code == code as i32 && out.stdout.trim() == id => {}
            // The Go runc shim now and then loses the output of a process that exits right
            // after writing it (its copy of the stdout pipe races the exit); tether is held
            // to every byte, the reference only to the exit code.
            Ok(out)
                if env.runtime == Runtime::RuncV2
                    && out.code == code as i32
                    && out.stdout.is_empty() =>
            {
                lost += 1
            }
            Ok(out) => failures.push(format!("{id} (expected {code}): {out}")),
            Err(e) => failures.push(format!("{id}: {e:#}")),
        }
    }
    if lost > 0 {
        eprintln!("burst: {lost} of {N} outputs lost by the Go runc shim (exit codes right)");
    }
    ensure!(
        failures.is_empty(),
        "burst failures:\n{}",
        failures.join("\n")
    );

    assert_no_shim_zombies(env)?;
    wait_until("all shims to exit", STATE_TIMEOUT, || {
        Ok(env.shims()?.is_empty().then_some(()))
    })?;
    for id in &ids {
        env.assert_no_leaks(id)?;
    }
    Ok(())
}

/// Fails if a zombie whose parent is a live shim of this env stays a zombie for more than a
/// few seconds (a shim must reap its children promptly).
fn assert_no_shim_zombies(env: &TestEnv) -> Result<()> {
    let mut last = Vec::new();
    wait_until(
        "shims to reap their zombie children",
        Duration::from_secs(5),
        || {
            let shims: Vec<i32> = env.shims()?.iter().map(|s| s.pid).collect();
            last = procfs::processes()?
                .into_iter()
                .filter(|p| p.is_zombie() && shims.contains(&p.ppid))
                .map(|p| (p.pid, p.ppid))
                .collect();
            Ok(last.is_empty().then_some(()))
        },
    )
    .map_err(|e| e.context(format!("zombie (pid, shim) pairs: {last:?}")))
}
