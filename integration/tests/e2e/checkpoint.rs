//! Checkpoint and restore through criu, or criu's failure reaching the user.

use std::fs;
use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, ensure, Context, Result};
use tether_integration::{process, TestEnv};

use crate::common::*;

scenario!(checkpoint);
/// If `criu check` passes: checkpoint a running container to an image, delete it, restore it,
/// and find it running with its memory. If not (as on kernels whose vDSO criu 3.17 cannot
/// parse): say so on stderr, and check that `ctr task checkpoint` fails with criu's error,
/// whose log holds criu's reason, and leaves the container running.
fn checkpoint(env: &mut TestEnv) -> Result<()> {
    match criu_check()? {
        None => checkpoint_restore(env),
        Some(reason) => {
            eprintln!("SKIPPED: criu check fails: {reason}");
            checkpoint_fails(env, &reason)
        }
    }
}

/// `None` if `criu check` passes, else criu's first error (e.g. "vdso: Unexpected rt vDSO
/// area bounds").
fn criu_check() -> Result<Option<String>> {
    let out = process::run(
        Command::new("criu").arg("check"),
        None,
        Duration::from_secs(60),
    )
    .context("running criu check (is criu installed?)")?;
    if out.success() {
        return Ok(None);
    }
    let text = format!("{}\n{}", out.stderr, out.stdout);
    let first_error = text
        .lines()
        .find(|l| l.contains("Error"))
        .or_else(|| text.lines().find(|l| !l.trim().is_empty()))
        .unwrap_or("criu check failed without output");
    // "Error (criu/vdso.c:381): vdso: Unexpected rt vDSO area bounds" -> after "): ".
    let reason = first_error
        .split_once("): ")
        .map_or(first_error, |(_, r)| r)
        .trim();
    Ok(Some(reason.to_owned()))
}

fn checkpoint_fails(env: &TestEnv, reason: &str) -> Result<()> {
    let id = detached_sleep(env, "ckpt", &[])?;
    let out = env.ctr.run(["task", "checkpoint", &id])?;
    ensure!(
        out.code != 0,
        "checkpoint succeeded although criu check fails: {out}"
    );
    ensure!(
        out.stderr.contains("criu failed"),
        "not criu's error: {out}"
    );
    // criu's reason must reach the user: in the error itself, or in the criu log the error
    // names. runc.v2: "runc did not terminate successfully: exit status 1: criu failed: type
    // DUMP errno 0 path= <bundle>/criu-dump.log: unknown" (runc's format).
    if !out.stderr.contains(reason) {
        let log = criu_log_path(&out.stderr)
            .ok_or_else(|| anyhow!("error holds neither criu's reason nor a log path: {out}"))?;
        let log_text =
            fs::read_to_string(log).with_context(|| format!("reading criu log {log}"))?;
        ensure!(
            log_text.contains(reason),
            "criu log {log} lacks criu check's reason {reason:?}"
        );
    }
    // A failed checkpoint without --exit leaves the container running.
    wait_status(env, &id, "RUNNING")?;
    let out = env
        .ctr
        .run(["task", "exec", "--exec-id", "alive", &id, "/bin/true"])?;
    ensure!(out.code == 0, "exec after failed checkpoint: {out}");
    kill_and_delete(env, &id)
}

/// The criu log named in a checkpoint error: runc's `path= FILE:` or `log file: FILE`.
fn criu_log_path(error: &str) -> Option<&str> {
    ["path= ", "log file: "].iter().find_map(|marker| {
        let rest = error.split_once(marker)?.1;
        let end = rest
            .find(|c: char| c == ':' || c == ';' || c.is_whitespace())
            .unwrap_or(rest.len());
        Some(&rest[..end]).filter(|p| p.starts_with('/'))
    })
}

fn checkpoint_restore(env: &TestEnv) -> Result<()> {
    let id = env.id("ckpt");
    let checkpoint_ref = format!("tether.test/checkpoint/{id}:1");
    env.ctr
        .run_container(
            &env.run_image(&id)?
                .detach()
                .sh("echo remembered > /tmp/state; sleep 1000"),
        )?
        .ok()?;
    let old_pid = wait_status(env, &id, "RUNNING")?;
    env.ctr.ok([
        "container",
        "checkpoint",
        "--task",
        "--rw",
        &id,
        &checkpoint_ref,
    ])?;
    // Without --exit the task keeps running; remove it to restore under the same id.
    env.ctr.ok(["task", "kill", "--signal", "SIGKILL", &id])?;
    wait_status(env, &id, "STOPPED")?;
    env.ctr.ok(["task", "delete", &id])?;
    env.ctr.ok(["container", "delete", &id])?;

    env.ctr.ok([
        "container",
        "restore",
        "--live",
        "--rw",
        &id,
        &checkpoint_ref,
    ])?;
    let pid = wait_status(env, &id, "RUNNING")?;
    ensure!(pid != 0, "restored task has no pid (old {old_pid})");
    let out = env.ctr.run([
        "task",
        "exec",
        "--exec-id",
        "check",
        &id,
        "/bin/cat",
        "/tmp/state",
    ])?;
    ensure!(
        out.code == 0 && out.stdout == "remembered\n",
        "after restore: {out}"
    );
    kill_and_delete(env, &id)
}
