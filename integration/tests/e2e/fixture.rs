//! The harness itself: dropping a [`TestEnv`] in the middle of a scenario (as a failing test
//! does) must leave nothing behind.

use std::path::PathBuf;

use anyhow::{ensure, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tether_integration::wait::wait_until;
use tether_integration::{cgroup, procfs, Runtime, TestEnv};

use crate::common::*;

#[test]
fn drop_cleans_up_runc_v2() -> Result<()> {
    drop_cleans_up(Runtime::RuncV2, false)
}

#[test]
fn drop_cleans_up_tether() -> Result<()> {
    drop_cleans_up(Runtime::Tether, false)
}

#[test]
fn drop_after_daemon_crash_cleans_up_runc_v2() -> Result<()> {
    drop_cleans_up(Runtime::RuncV2, true)
}

#[test]
fn drop_after_daemon_crash_cleans_up_tether() -> Result<()> {
    drop_cleans_up(Runtime::Tether, true)
}

/// A running container, an exec and a paused container are all gone after the drop: shims,
/// container processes, runc state, cgroups, bundles, the daemon and its directory. With
/// `crash`, containerd is SIGKILLed first, so the drop cannot ask it to clean up.
fn drop_cleans_up(runtime: Runtime, crash: bool) -> Result<()> {
    let env = TestEnv::new(
        runtime,
        if crash {
            "fixture_crash"
        } else {
            "fixture_drop"
        },
    )?;
    let running = detached_sleep(&env, "running", &[])?;
    let paused = detached_sleep(&env, "paused", &[])?;
    env.ctr.ok(["task", "pause", &paused])?;
    wait_status(&env, &paused, "PAUSED")?;
    let exec = spawn_ctr(
        &env,
        [
            "task",
            "exec",
            "--exec-id",
            "x",
            &running,
            "/bin/sleep",
            "1000",
        ]
        .map(String::from)
        .to_vec(),
    );
    let init = wait_status(&env, &running, "RUNNING")?;
    wait_until("the exec to start", STATE_TIMEOUT, || {
        Ok((env.ctr.task_pids(&running)?.len() == 2).then_some(()))
    })?;

    let mut pids: Vec<i32> = env.shims()?.iter().map(|s| s.pid).collect();
    ensure!(pids.len() == 2, "expected 2 shims, found {pids:?}");
    pids.push(i32::try_from(init)?);
    pids.push(i32::try_from(wait_status(&env, &paused, "PAUSED")?)?);
    let daemon = env.containerd().pid();
    let dir: PathBuf = env
        .containerd()
        .address()
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default();
    let namespace = env.namespace().to_owned();

    if crash {
        if let Some(pid) = daemon {
            kill(Pid::from_raw(i32::try_from(pid)?), Signal::SIGKILL)?;
        }
    }
    drop(env);

    // The exec's ctr loses its daemon and its process: it must end.
    let _ = join(exec);
    if let Some(pid) = daemon {
        pids.push(i32::try_from(pid)?);
    }
    for pid in pids {
        ensure!(!procfs::is_alive(pid)?, "pid {pid} survived the drop");
    }
    ensure!(!dir.exists(), "{} survived the drop", dir.display());
    for id in [&running, &paused] {
        let left = cgroup::find_dirs_named(id, 4)?;
        ensure!(left.is_empty(), "cgroups of {id} survived: {left:?}");
        let runc_state = PathBuf::from(tether_integration::containerd::RUNC_ROOT)
            .join(&namespace)
            .join(id);
        ensure!(!runc_state.exists(), "{} survived", runc_state.display());
        let mounts: Vec<_> = procfs::mounts()?
            .into_iter()
            .filter(|m| {
                m.mount_point
                    .components()
                    .any(|c| c.as_os_str() == id.as_str())
            })
            .collect();
        ensure!(mounts.is_empty(), "mounts of {id} survived: {mounts:?}");
    }
    let ns_cgroups = cgroup::find_dirs_named(&namespace, 1)?;
    ensure!(
        ns_cgroups.is_empty(),
        "namespace cgroups survived: {ns_cgroups:?}"
    );
    Ok(())
}
