//! Helpers shared by the scenarios.

use std::path::PathBuf;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use std::io::Write;

use anyhow::{anyhow, Context, Result};
use tether_integration::wait::wait_until;
use tether_integration::{process, Ctr, Output, Run, Runtime, TestEnv};

/// Generates `mod $name { fn runc_v2(); fn tether(); }` running scenario fn `$name` against
/// each runtime in its own [`TestEnv`].
macro_rules! scenario {
    ($name:ident) => {
        mod $name {
            #[test]
            fn runc_v2() -> ::anyhow::Result<()> {
                $crate::common::run_scenario(
                    ::tether_integration::Runtime::RuncV2,
                    stringify!($name),
                    super::$name,
                )
            }

            #[test]
            fn tether() -> ::anyhow::Result<()> {
                $crate::common::run_scenario(
                    ::tether_integration::Runtime::Tether,
                    stringify!($name),
                    super::$name,
                )
            }
        }
    };
}

/// Runs `scenario` in a fresh [`TestEnv`]; on failure, prints the error and containerd's log to
/// stderr.
pub fn run_scenario(
    runtime: Runtime,
    name: &str,
    scenario: fn(&mut TestEnv) -> Result<()>,
) -> Result<()> {
    let mut env = TestEnv::new(runtime, name)?;
    let result = scenario(&mut env);
    if let Err(e) = &result {
        // The error first: a CI log that is cut short still says what failed.
        eprintln!("--- {name} on {runtime} failed: {e:#}");
        eprintln!(
            "--- {runtime} containerd log ({}), last lines ---\n{}\n--- end ---",
            env.containerd().log_path().display(),
            env.containerd().log_tail(60)
        );
    }
    result
}

/// How long a container may take to reach a state.
pub const STATE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an event may take to arrive.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(20);

/// Runs `ctr run` (built by `run`) in the background; join to get its output.
pub fn spawn_run(env: &TestEnv, run: Run) -> JoinHandle<Result<Output>> {
    let ctr = env.ctr.clone();
    thread::spawn(move || ctr.run_container(&run))
}

/// Runs `ctr ARGS` in the background; join to get its output.
pub fn spawn_ctr(env: &TestEnv, args: Vec<String>) -> JoinHandle<Result<Output>> {
    let ctr = env.ctr.clone();
    thread::spawn(move || ctr.run(args))
}

/// Joins a background `ctr`.
pub fn join(h: JoinHandle<Result<Output>>) -> Result<Output> {
    h.join().map_err(|_| anyhow!("ctr thread panicked"))?
}

/// Waits until `ctr task ls` shows task `id` with `status`; returns its pid.
pub fn wait_status(env: &TestEnv, id: &str, status: &str) -> Result<u32> {
    wait_until(&format!("task {id} to be {status}"), STATE_TIMEOUT, || {
        Ok(env
            .ctr
            .task(id)?
            .filter(|t| t.status == status)
            .map(|t| t.pid))
    })
}

/// Starts a detached container running `sleep 1000`; returns its id once RUNNING.
pub fn detached_sleep(env: &TestEnv, what: &str, extra_flags: &[&str]) -> Result<String> {
    let id = env.id(what);
    let mut run = env.run(&id).detach();
    for f in extra_flags {
        run = run.flag(*f);
    }
    env.ctr
        .run_container(&run.command(["/bin/sleep", "1000"]))?
        .ok()
        .with_context(|| format!("ctr run -d {id}"))?;
    wait_status(env, &id, "RUNNING")?;
    Ok(id)
}

/// SIGKILLs task `id`, waits for STOPPED, deletes task and container, checks for leaks.
pub fn kill_and_delete(env: &TestEnv, id: &str) -> Result<()> {
    kill_and_delete_only(env, id)?;
    env.assert_no_leaks(id)
}

/// [`kill_and_delete`] without the leak check.
pub fn kill_and_delete_only(env: &TestEnv, id: &str) -> Result<()> {
    env.ctr.ok(["task", "kill", "--signal", "SIGKILL", id])?;
    wait_status(env, id, "STOPPED")?;
    env.ctr.ok(["task", "delete", id])?;
    env.ctr.ok(["container", "delete", id])?;
    Ok(())
}

/// Runs `ctr ARGS` with `data` on its stdin, sending EOF only once `ready` holds.
///
/// ctr 1.6 (`stdinCloser` in cmd/ctr/commands/tasks) forwards stdin's EOF to the task
/// (CloseIO) only if EOF is read *after* the task or exec was created; an EOF read earlier is
/// dropped and the process never sees it. So EOF is held back until `ready` (e.g. the task is
/// RUNNING), which implies creation has returned.
pub fn ctr_with_stdin(
    env: &TestEnv,
    args: Vec<String>,
    data: Vec<u8>,
    ready: impl Fn(&Ctr) -> Result<bool> + Send + 'static,
) -> Result<Output> {
    let ctr = env.ctr.clone();
    let mut cmd = env.ctr.command(args);
    process::run_fed(
        &mut cmd,
        move |mut pipe| {
            let _ = pipe.write_all(&data);
            let _ = wait_until("ctr to be ready for stdin EOF", STATE_TIMEOUT, || {
                Ok(ready(&ctr)?.then_some(()))
            });
            drop(pipe);
        },
        env.ctr.timeout(),
    )
}

/// A path in the container's `/tmp` as seen from the host (containers use `--rootfs`, a bind
/// mount of this env's rootfs directory).
pub fn host_tmp_path(env: &TestEnv, name: &str) -> PathBuf {
    env.rootfs_dir().join("tmp").join(name)
}

/// Waits until the container created `/tmp/NAME` (a readiness marker).
pub fn wait_marker(env: &TestEnv, name: &str) -> Result<()> {
    let path = host_tmp_path(env, name);
    wait_until(
        &format!("{} to exist", path.display()),
        STATE_TIMEOUT,
        || Ok(path.exists().then_some(())),
    )
}
