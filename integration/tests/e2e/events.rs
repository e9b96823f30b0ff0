//! Events the shim publishes through containerd: task lifecycle and OOM.

use anyhow::{ensure, Result};
use tether_integration::{EventLog, Runtime, TestEnv};

use crate::common::*;

scenario!(task_events);
/// create, start, exec-added, exec-started, exit (exec and init), paused, resumed, delete:
/// each published once, with the payload fields containerd clients rely on.
fn task_events(env: &mut TestEnv) -> Result<()> {
    let events = EventLog::start(&env.ctr)?;
    let id = detached_sleep(env, "events", &[])?;
    let create = events.wait_for_topic("/tasks/create", &id, EVENT_TIMEOUT)?;
    let start = events.wait_for_topic("/tasks/start", &id, EVENT_TIMEOUT)?;
    let init_pid = wait_status(env, &id, "RUNNING")?;
    ensure!(create.payload["pid"] == init_pid, "create: {}", create.line);
    ensure!(start.payload["pid"] == init_pid, "start: {}", start.line);
    ensure!(
        create.payload["bundle"]
            .as_str()
            .is_some_and(|b| b.ends_with(&id)),
        "create: {}",
        create.line
    );

    let out = env.ctr.run([
        "task",
        "exec",
        "--exec-id",
        "ev",
        &id,
        "/bin/sh",
        "-c",
        "exit 5",
    ])?;
    ensure!(out.code == 5, "{out}");
    let added = events.wait_for_topic("/tasks/exec-added", &id, EVENT_TIMEOUT)?;
    ensure!(
        added.payload["exec_id"] == "ev",
        "exec-added: {}",
        added.line
    );
    let started = events.wait_for_topic("/tasks/exec-started", &id, EVENT_TIMEOUT)?;
    ensure!(
        started.payload["exec_id"] == "ev",
        "exec-started: {}",
        started.line
    );
    let exec_pid = started.payload["pid"].clone();
    ensure!(exec_pid.as_u64().is_some_and(|p| p > 0), "{}", started.line);
    let exec_exit = events.wait_for("exec exit", EVENT_TIMEOUT, |e| {
        e.is("/tasks/exit", &id) && e.payload["id"] == "ev"
    })?;
    ensure!(exec_exit.payload["exit_status"] == 5, "{}", exec_exit.line);
    ensure!(exec_exit.payload["pid"] == exec_pid, "{}", exec_exit.line);

    env.ctr.ok(["task", "pause", &id])?;
    events.wait_for_topic("/tasks/paused", &id, EVENT_TIMEOUT)?;
    env.ctr.ok(["task", "resume", &id])?;
    events.wait_for_topic("/tasks/resumed", &id, EVENT_TIMEOUT)?;

    env.ctr.ok(["task", "kill", "--signal", "SIGKILL", &id])?;
    let exit = events.wait_for("init exit", EVENT_TIMEOUT, |e| {
        e.is("/tasks/exit", &id) && e.payload["id"] == id.as_str()
    })?;
    ensure!(exit.payload["exit_status"] == 137, "{}", exit.line);
    ensure!(exit.payload["pid"] == init_pid, "{}", exit.line);
    wait_status(env, &id, "STOPPED")?;
    env.ctr.ok(["task", "delete", &id])?;
    // containerd 2.x's Go runc shim, the reference, sometimes exits before its queued
    // /tasks/delete reaches containerd ("shim disconnected" right after the delete): there
    // the event is not required of it. tether must always publish it.
    let delete = events.wait_for_topic("/tasks/delete", &id, EVENT_TIMEOUT);
    let delete_seen = match (delete, env.runtime) {
        (Ok(delete), _) => {
            ensure!(delete.payload["exit_status"] == 137, "{}", delete.line);
            true
        }
        (Err(e), Runtime::RuncV2) => {
            eprintln!("the reference shim's /tasks/delete was lost: {e:#}");
            false
        }
        (Err(e), _) => return Err(e),
    };
    env.ctr.ok(["container", "delete", &id])?;
    env.assert_no_leaks(&id)?;

    // Exactly once each.
    let mut topics = vec![
        "/tasks/create",
        "/tasks/start",
        "/tasks/exec-added",
        "/tasks/exec-started",
        "/tasks/paused",
        "/tasks/resumed",
    ];
    if delete_seen {
        topics.push("/tasks/delete");
    }
    for topic in topics {
        let n = events
            .snapshot()
            .iter()
            .filter(|e| e.is(topic, &id))
            .count();
        ensure!(n == 1, "{topic} seen {n} times:\n{}", events.dump());
    }
    let exits = events
        .snapshot()
        .iter()
        .filter(|e| e.is("/tasks/exit", &id))
        .count();
    ensure!(exits == 2, "{exits} exit events:\n{}", events.dump());
    Ok(())
}

scenario!(oom_event);
/// A container over its memory limit is OOM-killed: exit 137 and a `/tasks/oom` event.
/// The workload waits a second before it grows: containerd 1.7's runc.v2 starts watching
/// the cgroup's memory events only after `start` returns, and misses an OOM that comes
/// within the first millisecond, so the comparison is made on a container that runs.
fn oom_event(env: &mut TestEnv) -> Result<()> {
    let events = EventLog::start(&env.ctr)?;
    let id = env.id("oom");
    let out = env.ctr.run_container(
        &env.run(&id)
            .rm()
            .flag("--memory-limit=16777216")
            .sh("sleep 1; x=a; while true; do x=$x$x; done"),
    )?;
    ensure!(out.code == 137, "OOM-killed container: {out}");
    events.wait_for_topic("/tasks/oom", &id, EVENT_TIMEOUT)?;
    let exit = events.wait_for_topic("/tasks/exit", &id, EVENT_TIMEOUT)?;
    ensure!(exit.payload["exit_status"] == 137, "{}", exit.line);
    env.assert_no_leaks(&id)
}
