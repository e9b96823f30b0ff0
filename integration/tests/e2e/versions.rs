//! What differs between containerd releases (1.6, 1.7, 2.x; `TETHER_CONTAINERD_DIR` picks
//! one): the daemon under test is the release asked for, with its own runc shim and config
//! format; the shim start protocol as containerd recorded it; a restart with several tasks in
//! different states.

use std::fs;
use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, ensure, Context, Result};
use containerd_shim_protos::api::{ConnectRequest, ConnectResponse};
use containerd_shim_protos::protobuf::Message;
use tether_integration::containerd_release;
use tether_integration::shim_api::{self, ShimEndpoint, TASK_SERVICE_V2, TASK_SERVICE_V3};
use tether_integration::wait::wait_until;
use tether_integration::{cgroup, process, EventLog, Runtime, TestEnv};

use crate::common::*;

/// The `Version:` line of `containerd-shim-runc-v2 -v`.
fn runc_shim_version(env: &TestEnv) -> Result<String> {
    let name = Runtime::RuncV2.shim_binary();
    let linked = env.containerd().bin_dir().join(name);
    let shim = if linked.exists() {
        linked
    } else {
        tether_integration::harness::find_on_path(name).ok_or_else(|| anyhow!("no {name}"))?
    };
    let out = process::run(Command::new(&shim).arg("-v"), None, Duration::from_secs(20))?.ok()?;
    out.stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("Version:"))
        .map(|v| v.trim().to_owned())
        .ok_or_else(|| anyhow!("no version from {} -v: {}", shim.display(), out.stdout))
}

#[test]
fn daemon_is_the_release_under_test() -> Result<()> {
    let env = TestEnv::new(Runtime::RuncV2, "release")?;
    let release = containerd_release::release()?;
    // The server's own word, through the ctr of the same release.
    let out = env.ctr.ok(["version"])?;
    let server = out
        .stdout
        .split("Server:")
        .nth(1)
        .context(format!("no Server section: {}", out.stdout))?;
    let served = server
        .lines()
        .find_map(|l| l.trim().strip_prefix("Version:"))
        .map(str::trim)
        .context(format!("no server version: {}", out.stdout))?;
    ensure!(
        served == release.version,
        "daemon serves {served}, release under test is {}",
        release.version
    );
    // Its config is in its own format.
    let dir = env
        .containerd()
        .address()
        .parent()
        .map(std::path::Path::to_path_buf)
        .context("containerd dir")?;
    let config = fs::read_to_string(dir.join("config.toml"))?;
    let header = format!("version = {}\n", release.config_version());
    ensure!(config.starts_with(&header), "config.toml: {config}");
    // The runc shim compared side by side comes from the same package.
    let shim = runc_shim_version(&env)?;
    ensure!(
        shim == release.version,
        "runc shim {shim} beside containerd {}",
        release.version
    );
    Ok(())
}

scenario!(start_protocol);
/// How containerd reached the shim, from what it recorded in the bundle: tether replies to
/// `start` with a plain address, which every release reads as task API v2 (containerd 2.x
/// writes that down in `bootstrap.json` as `"version":2`); the Go runc shim of 2.x announces
/// v3. The shim answers `Connect` on the recorded service with the task's pid, and tether
/// answers under both names, so a containerd that were told v3 would reach it too.
fn start_protocol(env: &mut TestEnv) -> Result<()> {
    let release = containerd_release::release()?;
    let id = detached_sleep(env, "proto", &[])?;
    let pid = wait_status(env, &id, "RUNNING")?;
    let shim = shim_api::shim_endpoint(env.containerd(), env.namespace(), &id)?;
    let bundle = env.containerd().bundle_dir(env.namespace(), &id);
    let expected = match env.runtime {
        Runtime::RuncV2 if release.major >= 2 => 3,
        _ => 2,
    };
    ensure!(
        shim.version == expected,
        "{} reached over task API v{} on containerd {}, expected v{expected}",
        env.runtime,
        shim.version,
        release.version
    );
    ensure!(
        bundle.join("bootstrap.json").exists() == (release.major >= 2),
        "bootstrap.json in the bundle on containerd {}: {:?}",
        release.version,
        fs::read_dir(&bundle).map(|d| d.flatten().map(|e| e.file_name()).collect::<Vec<_>>())
    );
    if env.runtime == Runtime::Tether {
        let written = fs::read_to_string(bundle.join("address"))?;
        ensure!(
            written.trim() == shim.address,
            "tether wrote {written:?}, containerd uses {}",
            shim.address
        );
    }
    let services: &[&str] = match env.runtime {
        Runtime::Tether => &[TASK_SERVICE_V2, TASK_SERVICE_V3],
        _ => &[shim.task_service()],
    };
    for service in services {
        let at = ShimEndpoint {
            version: if *service == TASK_SERVICE_V3 { 3 } else { 2 },
            ..shim.clone()
        };
        let mut req = ConnectRequest::new();
        req.id = id.clone();
        let resp = shim_api::call(&at, env.namespace(), "Connect", req.write_to_bytes()?)
            .with_context(|| format!("{service}/Connect"))?;
        let resp = ConnectResponse::parse_from_bytes(&resp)?;
        ensure!(
            resp.task_pid == pid,
            "{service}/Connect: task pid {} != {pid}",
            resp.task_pid
        );
    }
    kill_and_delete(env, &id)
}

scenario!(restart_with_tasks);
/// containerd restarted under a running task with a detached exec and a paused task: both
/// keep their state and shim; afterwards resume, metrics, a new exec, the exec's and the
/// init's exit events (to the new daemon) and delete all work; nothing leaks.
fn restart_with_tasks(env: &mut TestEnv) -> Result<()> {
    let running = detached_sleep(env, "running", &[])?;
    let paused = detached_sleep(env, "paused", &[])?;
    env.ctr.ok(["task", "pause", &paused])?;
    let paused_pid = wait_status(env, &paused, "PAUSED")?;
    // Detached: no ctr waits on it, whose loss of the daemon could end it.
    env.ctr.ok([
        "task",
        "exec",
        "--detach",
        "--exec-id",
        "long",
        &running,
        "/bin/sleep",
        "1000",
    ])?;
    wait_until("the exec to start", STATE_TIMEOUT, || {
        Ok((env.ctr.task_pids(&running)?.len() == 2).then_some(()))
    })?;
    let shims: Vec<i32> = [&running, &paused]
        .iter()
        .map(|id| env.shim_of(id).map(|s| s.pid))
        .collect::<Result<_>>()?;

    env.restart_containerd()?;

    ensure!(
        wait_status(env, &paused, "PAUSED")? == paused_pid,
        "paused task changed across the restart"
    );
    ensure!(
        cgroup::is_frozen(i32::try_from(paused_pid)?)?,
        "paused task thawed by the restart"
    );
    wait_status(env, &running, "RUNNING")?;
    for (id, pid) in [&running, &paused].iter().zip(&shims) {
        ensure!(env.shim_of(id)?.pid == *pid, "{id} has another shim");
    }
    let pids = env.ctr.task_pids(&running)?;
    ensure!(pids.len() == 2, "ps after restart: {pids:?}");

    env.ctr.ok(["task", "resume", &paused])?;
    wait_status(env, &paused, "RUNNING")?;
    let metrics = env.ctr.ok(["task", "metrics", &paused])?;
    ensure!(
        metrics.stdout.contains("pids.current"),
        "metrics after restart: {}",
        metrics.stdout
    );
    let out = env.ctr.run([
        "task",
        "exec",
        "--exec-id",
        "new",
        &running,
        "/bin/sh",
        "-c",
        "exit 5",
    ])?;
    ensure!(out.code == 5, "exec after restart: {out}");

    let events = EventLog::start(&env.ctr)?;
    env.ctr
        .ok(["task", "kill", "--all", "--signal", "SIGKILL", &running])?;
    for exec_id in ["long", running.as_str()] {
        let exit = events.wait_for(&format!("exit of {exec_id}"), EVENT_TIMEOUT, |e| {
            e.is("/tasks/exit", &running) && e.payload["id"] == exec_id
        })?;
        ensure!(exit.payload["exit_status"] == 137, "{}", exit.line);
    }
    wait_status(env, &running, "STOPPED")?;
    env.ctr.ok(["task", "delete", &running])?;
    env.ctr.ok(["container", "delete", &running])?;
    env.assert_no_leaks(&running)?;
    kill_and_delete(env, &paused)
}
