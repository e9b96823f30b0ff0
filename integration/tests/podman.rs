//! Rootful Podman (Debian 12's 4.3, the OCI runtime run directly through conmon) with
//! `podman run --runtime tether` (the containers.conf drop-in tether ships, naming
//! `tether-runc`), against a private Podman (see
//! `tether_integration::podman`): a deny rule from an annotation holds from the container's
//! first instruction, traffic is counted and visible with tetherctl, exec/stop/rm and
//! `run --rm` behave as with runc, and nothing of a removed container is left (pins, runc
//! state under /run, its cgroup, processes, live map entries).
//!
//! Podman runs the runtime's `kill` and `delete` with no PATH and without the caller's
//! environment: the fixture's tether config names no runc (it is found on the default path)
//! and is the default config file (in a private mount namespace). Rootless: `tether-runc`
//! cannot attach in a user namespace; its refusal (fail-closed) and its warning (fail-open)
//! are tested in tests/tether_runc.rs.
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, ensure, Result};
use tether_integration::podman::{Podman, IMAGE, NAMESPACE, RUNC_STATE};
use tether_integration::{cgroup, wait, Output};

const DENY_2: &str = "tether.io/egress-deny=127.0.0.2/32";

/// `tetherctl --json ARGS` against the tetherd that tether-runc started.
fn tetherctl(p: &Podman, args: &[&str]) -> Result<Vec<serde_json::Value>> {
    let bin = tether_integration::containerd::tether_shim_binary()?
        .parent()
        .map(|d| d.join("tetherctl"))
        .ok_or_else(|| anyhow!("no tetherctl"))?;
    let out = Command::new(bin)
        .arg("--socket")
        .arg(p.tetherd_socket())
        .arg("--json")
        .args(args)
        .output()?;
    ensure!(
        out.status.success(),
        "tetherctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?)
}

/// The runtime's name in the shipped drop-in.
fn runtime() -> Result<String> {
    Ok("tether".to_string())
}

/// `podman run --rm --runtime RUNTIME EXTRA IMAGE CMD`; returns its output and the id
/// (from `--cidfile`).
fn run_rm(p: &Podman, runtime: &str, extra: &[&str], cmd: &[&str]) -> Result<(Output, String)> {
    let cidfile = p.path().join(format!("cid-{}", next_cidfile()));
    let cid = cidfile.to_string_lossy().into_owned();
    let mut args = vec!["run", "--rm", "--cidfile", &cid, "--runtime", runtime];
    args.extend_from_slice(extra);
    args.push(IMAGE);
    args.extend_from_slice(cmd);
    let out = p.podman(&args)?;
    let id = std::fs::read_to_string(&cidfile)
        .map_err(|e| anyhow!("no container id ({e}): {out}"))?
        .trim()
        .to_string();
    Ok((out, id))
}

fn next_cidfile() -> u32 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

fn denied(out: &Output) -> bool {
    out.code != 0 && out.stderr.contains("Operation not permitted")
}

fn refused(out: &Output) -> bool {
    out.code != 0 && out.stderr.contains("Connection refused")
}

/// Nothing of container `id` is left: pins, runc state, its cgroup (`libpod-ID`), a process
/// naming it (conmon, the link watcher), a live entry in tether's maps.
fn assert_gone(p: &Podman, id: &str) -> Result<()> {
    let mut last = String::new();
    wait::wait_until(
        &format!("everything of {id} to be gone"),
        Duration::from_secs(15),
        || {
            let mut left = Vec::new();
            if p.container_dir(id)?.exists() {
                left.push("pins".to_string());
            }
            if Path::new(RUNC_STATE).join(id).exists() {
                left.push(format!("{RUNC_STATE}/{id}"));
            }
            for c in cgroup::find_dirs_named(&format!("libpod-{id}"), 3)? {
                left.push(c.display().to_string());
            }
            left.extend(p.processes_naming(id)?);
            last = left.join("; ");
            Ok(left.is_empty().then_some(()))
        },
    )
    .map_err(|e| e.context(format!("left of {id}: {last}")))?;
    let live = tetherctl(p, &["stats"])?;
    ensure!(
        !live.iter().any(|r| r["id"] == id && r["deleted"] != true),
        "map entries left: {live:?}"
    );
    Ok(())
}

#[test]
fn podman_deny_from_first_instruction_and_run_rm() -> Result<()> {
    let p = Podman::start()?;
    let rt = runtime()?;
    // The very first instruction connects to the address the annotation denies.
    let (out, id) = run_rm(
        &p,
        &rt,
        &["--annotation", DENY_2],
        &["nc", "127.0.0.2", "9"],
    )?;
    ensure!(denied(&out), "annotated: {out}");
    assert_gone(&p, &id)?;
    let (out, id) = run_rm(&p, &rt, &[], &["nc", "127.0.0.2", "9"])?;
    ensure!(refused(&out), "no annotation: {out}");
    assert_gone(&p, &id)?;
    // Without a network of its own too: the rule is at the cgroup.
    let (out, id) = run_rm(
        &p,
        &rt,
        &["--annotation", DENY_2, "--network", "none"],
        &["nc", "127.0.0.2", "9"],
    )?;
    ensure!(denied(&out), "--network none: {out}");
    assert_gone(&p, &id)?;
    // Exit codes as with runc.
    for runtime in ["runc", rt.as_str()] {
        let (out, id) = run_rm(&p, runtime, &[], &["sh", "-c", "exit 3"])?;
        ensure!(out.code == 3, "{runtime}: {out}");
        assert_gone(&p, &id)?;
    }
    // A bad annotation fails the run with tether's reason and leaves nothing.
    let (out, id) = run_rm(
        &p,
        &rt,
        &["--annotation", "tether.io/egress-deny=banana"],
        &["true"],
    )?;
    ensure!(
        out.code != 0 && out.stderr.contains("banana"),
        "bad annotation: {out}"
    );
    // The runtime's JSON log (runtime_supports_json): a message, not a raw log line.
    ensure!(
        !out.stderr.contains("level=error"),
        "bad annotation, raw: {out}"
    );
    assert_gone(&p, &id)?;
    Ok(())
}

#[test]
fn podman_accounting_exec_stop_rm() -> Result<()> {
    let p = Podman::start()?;
    let rt = runtime()?;
    let gw = p.gateway();
    let id = p
        .ok(&[
            "run",
            "-d",
            "--runtime",
            &rt,
            "--annotation",
            DENY_2,
            IMAGE,
            "sh",
            "-c",
            &format!("ping -c 3 -i 0.2 {gw}; exec sleep 1000"),
        ])?
        .stdout
        .trim()
        .to_string();
    // Attached at create: the cgroup programs (the deny rule's too) and eth0's TC programs.
    let mut pins: Vec<String> = std::fs::read_dir(p.container_dir(&id)?)?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    pins.sort_unstable();
    ensure!(
        pins.iter().filter(|n| n.starts_with("tc_")).count() == 2
            && pins.iter().any(|n| n == "cgroup_tether_connect4"),
        "{pins:?}"
    );
    // The pings are counted, and visible with tetherctl (the container's eth0 by its TC
    // programs, the container by wherever tether counts it).
    let row = wait::wait_until("the pings to be counted", Duration::from_secs(10), || {
        let row = tetherctl(&p, &["stats", &id])?
            .first()
            .cloned()
            .ok_or_else(|| anyhow!("no row"))?;
        let iface_tx: u64 = row["interfaces"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|i| i["tx_packets"].as_u64().unwrap_or(0))
            .sum();
        let tx = row["tx_packets"].as_u64().unwrap_or(0);
        Ok((iface_tx >= 3 && tx >= 3).then_some(row))
    })?;
    ensure!(
        row["namespace"] == NAMESPACE && row["denials"] == 0,
        "{row}"
    );
    // By the name it has in the container, not its ifindex.
    ensure!(row["interfaces"][0]["name"] == "eth0", "{row}");
    let out = p.ok(&["exec", &id, "echo", "exec-ok"])?;
    ensure!(out.stdout.contains("exec-ok"), "{out}");
    // An exec'd process is in the container's cgroup: the rule holds for it, and counts.
    let out = p.podman(&["exec", &id, "nc", "127.0.0.2", "9"])?;
    ensure!(denied(&out), "exec: {out}");
    wait::wait_until("the denial to be counted", Duration::from_secs(10), || {
        let row = tetherctl(&p, &["stats", &id])?;
        Ok(row
            .first()
            .is_some_and(|r| r["denials"].as_u64() >= Some(1))
            .then_some(()))
    })?;
    // `podman restart`: a new create and start under the same id, attached again, the
    // rule holding for the new process; as under runc, the container runs after it.
    for runtime in ["runc", rt.as_str()] {
        let c = if runtime == "runc" {
            p.ok(&["run", "-d", "--runtime", "runc", IMAGE, "sleep", "1000"])?
                .stdout
                .trim()
                .to_string()
        } else {
            id.clone()
        };
        p.ok(&["restart", "-t", "1", &c])?;
        let out = p.ok(&["inspect", "-f", "{{.State.Status}}", &c])?;
        ensure!(
            out.stdout.trim() == "running",
            "{runtime}: after restart: {out}"
        );
        if c != id {
            p.ok(&["rm", "-f", &c])?;
        }
    }
    ensure!(
        p.container_dir(&id)?.is_dir(),
        "not attached again after the restart"
    );
    let out = p.podman(&["exec", &id, "nc", "127.0.0.2", "9"])?;
    ensure!(denied(&out), "exec after restart: {out}");
    p.ok(&["stop", "-t", "1", &id])?;
    let out = p.ok(&["inspect", "-f", "{{.State.Status}}", &id])?;
    ensure!(out.stdout.trim() == "exited", "{out}");
    p.ok(&["rm", &id])?;
    assert_gone(&p, &id)?;
    Ok(())
}
