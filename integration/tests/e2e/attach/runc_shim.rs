//! `tether-runc` as the runc binary of containerd's own runc shim: attached before the
//! first instruction, counted, exec/kill/delete passed through, a bad annotation as runc's
//! error.

use anyhow::{anyhow, ensure, Result};
use tether_integration::wait::wait_until;
use tether_integration::Runtime;

use super::{accounting_links, assert_detached, pins_of, stats_of};
use crate::common::*;

/// `tether-runc`, the runc-compatible entry point, as the runc binary of containerd's own
/// runc shim (`BinaryName`, here `ctr run --runc-binary`).
#[test]
fn tether_runc_under_containerds_runc_shim() -> Result<()> {
    run_scenario(Runtime::RuncV2, "tether_runc", |env| {
        let bin = tether_integration::containerd::tether_shim_binary()?
            .parent()
            .map(|d| d.join("tether-runc"))
            .ok_or_else(|| anyhow!("no directory for tether-runc"))?;
        ensure!(bin.is_file(), "{} is not built", bin.display());
        let runc_binary = bin.display().to_string();

        // Attached before the first instruction.
        let id = env.id("deny");
        let out = env.ctr.run_container(
            &env.run(&id)
                .rm()
                .flag("--runc-binary")
                .flag(runc_binary.as_str())
                .flag("--annotation")
                .flag("tether.io/egress-deny=127.0.0.2/32")
                .command(["/bin/nc", "127.0.0.2", "9"]),
        )?;
        ensure!(
            out.stderr.contains("Operation not permitted"),
            "denied connect under tether-runc: {out}"
        );
        assert_detached(env, &id)?;
        env.assert_no_leaks(&id)?;

        // Counted; exec, kill and delete pass through; delete detaches.
        let id = env.id("count");
        env.ctr.run_container(
            &env.run(&id)
                .detach()
                .flag("--runc-binary")
                .flag(runc_binary.as_str())
                .sh("for i in 1 2 3; do nc 127.0.0.3 9; done; exec sleep 1000"),
        )?;
        wait_status(env, &id, "RUNNING")?;
        ensure!(
            pins_of(env, &id) == accounting_links(),
            "{:?}",
            pins_of(env, &id)
        );
        let out = env.ctr.ok([
            "task",
            "exec",
            "--exec-id",
            "e1",
            &id,
            "/bin/echo",
            "exec-ok",
        ])?;
        ensure!(out.stdout.contains("exec-ok"), "{out}");
        wait_until("the counters", STATE_TIMEOUT, || {
            let s = stats_of(env, &id)?;
            Ok((s["tx_packets"].as_u64().unwrap_or(0) >= 3).then_some(()))
        })?;
        env.ctr.ok(["task", "kill", "--signal", "SIGKILL", &id])?;
        wait_status(env, &id, "STOPPED")?;
        env.ctr.ok(["task", "rm", &id])?;
        env.ctr.ok(["container", "rm", &id])?;
        assert_detached(env, &id)?;
        env.assert_no_leaks(&id)?;

        // A bad annotation fails create with the reason, as runc's error.
        let id = env.id("bad");
        let out = env.ctr.run_container(
            &env.run(&id)
                .rm()
                .flag("--runc-binary")
                .flag(runc_binary.as_str())
                .flag("--annotation")
                .flag("tether.io/egress-deny=banana")
                .command(["/bin/true"]),
        )?;
        ensure!(out.code != 0 && out.stderr.contains("banana"), "{out}");
        let _ = env.ctr.run(["container", "rm", &id]);
        env.assert_no_leaks(&id)
    })
}
