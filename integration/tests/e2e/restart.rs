//! containerd restarted while a container runs.

use anyhow::{ensure, Result};
use tether_integration::{procfs, EventLog, TestEnv};

use crate::common::*;

scenario!(containerd_restart);
/// After containerd restarts, the running task is still RUNNING, served by the same shim;
/// exec, kill (with its exit event) and delete work; nothing leaks.
fn containerd_restart(env: &mut TestEnv) -> Result<()> {
    let id = detached_sleep(env, "restart", &[])?;
    let pid = wait_status(env, &id, "RUNNING")?;
    let shim = env.shim_of(&id)?;
    let old_daemon = env.containerd().pid();

    env.restart_containerd()?;
    ensure!(
        env.containerd().pid() != old_daemon,
        "containerd was not restarted"
    );

    ensure!(
        wait_status(env, &id, "RUNNING")? == pid,
        "pid changed across restart"
    );
    ensure!(
        procfs::is_alive(shim.pid)? && env.shim_of(&id)?.pid == shim.pid,
        "the shim did not survive the restart"
    );
    let out = env.ctr.run([
        "task",
        "exec",
        "--exec-id",
        "after",
        &id,
        "/bin/sh",
        "-c",
        "echo after-restart; exit 8",
    ])?;
    ensure!(
        out.code == 8 && out.stdout == "after-restart\n",
        "exec: {out}"
    );

    // The shim publishes to the new daemon.
    let events = EventLog::start(&env.ctr)?;
    env.ctr.ok(["task", "kill", "--signal", "SIGKILL", &id])?;
    let exit = events.wait_for("init exit", EVENT_TIMEOUT, |e| {
        e.is("/tasks/exit", &id) && e.payload["id"] == id.as_str()
    })?;
    ensure!(exit.payload["exit_status"] == 137, "{}", exit.line);
    wait_status(env, &id, "STOPPED")?;
    env.ctr.ok(["task", "delete", &id])?;
    env.ctr.ok(["container", "delete", &id])?;
    env.assert_no_leaks(&id)
}
