//! Exit codes, signals, stdio, tty and exec.

use std::time::Duration;

use anyhow::{ensure, Result};
use tether_integration::{pty, Ctr, TestEnv};

use crate::common::*;

/// How long a pty-driven `ctr` may run.
const PTY_TIMEOUT: Duration = Duration::from_secs(60);

scenario!(exit_code);
/// `ctr run --rm` exits with the container's exit code, for a rootfs and for an image.
fn exit_code(env: &mut TestEnv) -> Result<()> {
    for code in [0, 3, 255] {
        let id = env.id("exit");
        let out = env
            .ctr
            .run_container(&env.run(&id).rm().sh(&format!("exit {code}")))?;
        ensure!(out.code == code, "exit {code}: {out}");
        env.assert_no_leaks(&id)?;
    }
    let id = env.id("img");
    let out = env
        .ctr
        .run_container(&env.run_image(&id)?.rm().sh("exit 4"))?;
    ensure!(out.code == 4, "image, exit 4: {out}");
    env.assert_no_leaks(&id)
}

scenario!(signal_exit);
/// A task killed by a signal exits 128+signal: SIGKILL of the init (137), SIGTERM of an exec
/// process (143: an exec is not the pid namespace's init, so SIGTERM's default action
/// applies), SIGTERM of an init that traps it (its own exit code).
fn signal_exit(env: &mut TestEnv) -> Result<()> {
    // SIGKILL of init, with `ctr run` in the foreground.
    let id = env.id("kill");
    let running = spawn_run(env, env.run(&id).rm().command(["/bin/sleep", "1000"]));
    wait_status(env, &id, "RUNNING")?;
    env.ctr.ok(["task", "kill", "--signal", "SIGKILL", &id])?;
    let out = join(running)?;
    ensure!(out.code == 137, "SIGKILL: {out}");
    env.assert_no_leaks(&id)?;

    // SIGTERM of an exec process.
    let id = detached_sleep(env, "exec", &[])?;
    let exec = spawn_ctr(
        env,
        [
            "task",
            "exec",
            "--exec-id",
            "sleeper",
            &id,
            "/bin/sleep",
            "1000",
        ]
        .map(String::from)
        .to_vec(),
    );
    let init_pid = wait_status(env, &id, "RUNNING")?;
    tether_integration::wait::wait_until("the exec to show in ps", STATE_TIMEOUT, || {
        Ok((env.ctr.task_pids(&id)?.iter().any(|p| *p != init_pid)).then_some(()))
    })?;
    env.ctr.ok([
        "task",
        "kill",
        "--exec-id",
        "sleeper",
        "--signal",
        "SIGTERM",
        &id,
    ])?;
    let out = join(exec)?;
    ensure!(out.code == 143, "SIGTERM of exec: {out}");
    // The init is unaffected.
    ensure!(wait_status(env, &id, "RUNNING")? == init_pid);
    kill_and_delete(env, &id)?;

    // SIGTERM (ctr's default signal) of an init that traps it.
    let id = env.id("trap");
    let marker = format!("ready-{id}");
    let running = spawn_run(
        env,
        env.run(&id).rm().sh(&format!(
            "trap 'exit 42' TERM; touch /tmp/{marker}; while true; do sleep 0.05; done"
        )),
    );
    wait_marker(env, &marker)?;
    env.ctr.ok(["task", "kill", &id])?;
    let out = join(running)?;
    ensure!(out.code == 42, "trapped SIGTERM: {out}");
    env.assert_no_leaks(&id)
}

scenario!(stdio);
/// stdout and stderr arrive separately and completely; stdin is piped in.
fn stdio(env: &mut TestEnv) -> Result<()> {
    let id = env.id("out");
    let out = env.ctr.run_container(
        &env.run(&id)
            .rm()
            .sh("echo to-stdout; echo to-stderr >&2; exit 0"),
    )?;
    ensure!(out.code == 0, "{out}");
    ensure!(out.stdout == "to-stdout\n", "stdout: {out}");
    ensure!(
        out.stderr.contains("to-stderr\n") && !out.stderr.contains("to-stdout"),
        "stderr: {out}"
    );
    env.assert_no_leaks(&id)?;

    // Output written right before exit must not be lost.
    let id = env.id("seq");
    let out = env
        .ctr
        .run_container(&env.run(&id).rm().command(["/bin/seq", "1", "20000"]))?;
    ensure!(out.code == 0, "{out}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    ensure!(
        lines.len() == 20000 && lines.last() == Some(&"20000"),
        "seq 1 20000 gave {} lines, last {:?}",
        lines.len(),
        lines.last()
    );
    env.assert_no_leaks(&id)?;

    // stdin: `echo hi | ctr run ... cat`, then a larger payload.
    let id = env.id("cat");
    let out = ctr_with_stdin(
        env,
        env.run(&id).rm().command(["/bin/cat"]).args(),
        b"hi\n".to_vec(),
        task_running(&id),
    )?;
    ensure!(out.code == 0 && out.stdout == "hi\n", "cat: {out}");
    env.assert_no_leaks(&id)?;

    let id = env.id("wc");
    let payload: String = (0..20000).map(|i| format!("line {i}\n")).collect();
    let out = ctr_with_stdin(
        env,
        env.run(&id).rm().sh("wc -c; exit 7").args(),
        payload.clone().into_bytes(),
        task_running(&id),
    )?;
    ensure!(out.code == 7, "{out}");
    ensure!(
        out.stdout.trim() == payload.len().to_string(),
        "wc -c of {} bytes: {out}",
        payload.len()
    );
    env.assert_no_leaks(&id)
}

/// Readiness for [`ctr_with_stdin`]: task `id` is RUNNING.
fn task_running(id: &str) -> impl Fn(&Ctr) -> Result<bool> + Send + 'static {
    let id = id.to_owned();
    move |ctr| Ok(ctr.task(&id)?.is_some_and(|t| t.status == "RUNNING"))
}

/// Shell that prints the terminal, waits until the terminal has a size, prints it, exits
/// with `code`. ctr sets the size only after starting the process (`HandleConsoleResize`
/// after `Start`), so the process may briefly see 0x0, for which busybox `stty size` prints
/// nothing on stdout (and an error on stderr) but still exits 0.
fn tty_script(code: i32) -> String {
    format!(
        "tty; while s=$(stty size 2>/dev/null); [ -z \"$s\" ]; do sleep 0.05; done; \
         echo \"size $s\"; exit {code}"
    )
}

scenario!(tty);
/// `ctr run -t` on a terminal: the container sees a /dev/pts terminal of the caller's size,
/// and the exit code still propagates.
fn tty(env: &mut TestEnv) -> Result<()> {
    let id = env.id("tty");
    let run = env.run(&id).rm().tty().sh(&tty_script(6));
    let out = pty::run(env.ctr.command(run.args()), 31, 97, PTY_TIMEOUT)?;
    check_tty(&out, 6, 31, 97)?;
    env.assert_no_leaks(&id)
}

/// What `tty_script` prints on a terminal of `rows` x `cols`, and its exit code.
fn check_tty(out: &pty::PtyOutput, code: i32, rows: u16, cols: u16) -> Result<()> {
    ensure!(
        out.code == code,
        "exit code {}; output {:?}",
        out.code,
        out.output
    );
    ensure!(
        out.output.contains("/dev/pts/"),
        "tty output {:?}",
        out.output
    );
    ensure!(
        out.output.contains(&format!("size {rows} {cols}")),
        "stty size output {:?}",
        out.output
    );
    Ok(())
}

scenario!(exec);
/// `ctr task exec`: exit code, stdout, stderr, stdin, and a failing exec.
fn exec(env: &mut TestEnv) -> Result<()> {
    let id = detached_sleep(env, "exec", &[])?;
    let out = env.ctr.run([
        "task",
        "exec",
        "--exec-id",
        "e1",
        &id,
        "/bin/sh",
        "-c",
        "echo exec-out; echo exec-err >&2; exit 5",
    ])?;
    ensure!(out.code == 5, "{out}");
    ensure!(out.stdout == "exec-out\n", "{out}");
    ensure!(out.stderr.contains("exec-err\n"), "{out}");

    let init_pid = wait_status(env, &id, "RUNNING")?;
    let exec_visible = {
        let id = id.clone();
        move |ctr: &Ctr| Ok(ctr.task_pids(&id)?.iter().any(|p| *p != init_pid))
    };
    let out = ctr_with_stdin(
        env,
        ["task", "exec", "--exec-id", "e2", &id, "/bin/cat"]
            .map(String::from)
            .to_vec(),
        b"piped-in\n".to_vec(),
        exec_visible,
    )?;
    ensure!(out.code == 0 && out.stdout == "piped-in\n", "{out}");

    // The exec id can be reused once the previous exec is gone.
    let out = env
        .ctr
        .run(["task", "exec", "--exec-id", "e1", &id, "/bin/true"])?;
    ensure!(out.code == 0, "reused exec id: {out}");

    // The container is unaffected by its execs.
    wait_status(env, &id, "RUNNING")?;
    kill_and_delete(env, &id)
}

scenario!(null_io);
/// `ctr run --null-io`: a process without stdio (its output goes to /dev/null) is created,
/// runs and reports its exit code, in the foreground and detached.
fn null_io(env: &mut TestEnv) -> Result<()> {
    let id = env.id("nullio");
    let out = env.ctr.run_container(
        &env.run(&id)
            .rm()
            .flag("--null-io")
            .sh("echo lost; echo lost >&2; exit 3"),
    )?;
    ensure!(out.code == 3 && out.stdout.is_empty(), "{out}");
    env.assert_no_leaks(&id)?;
    let id = detached_sleep(env, "nulliod", &["--null-io"])?;
    kill_and_delete(env, &id)
}

scenario!(exec_tty);
/// `ctr task exec -t` on a terminal.
fn exec_tty(env: &mut TestEnv) -> Result<()> {
    let id = detached_sleep(env, "exectty", &[])?;
    let cmd = env.ctr.command([
        "task",
        "exec",
        "--tty",
        "--exec-id",
        "t1",
        &id,
        "/bin/sh",
        "-c",
        &tty_script(7),
    ]);
    let out = pty::run(cmd, 24, 111, PTY_TIMEOUT)?;
    check_tty(&out, 7, 24, 111)?;
    kill_and_delete(env, &id)
}
