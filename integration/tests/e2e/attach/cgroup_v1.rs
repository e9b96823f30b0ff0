//! A pure cgroup v1 node (systemd's legacy layout: no cgroup2 mounted anywhere). tether's
//! programs attach to a container's cgroup v2, so no container can be attached there: a plan
//! that fails closed refuses the container with that reason, an open one runs it without
//! programs and says so in the log. Stats still answer as runc.v2's (the `stats` scenario).
//! Run by the kernel matrix's v1 VMs: `scripts/kernel-matrix.sh --cgroups v1`.

use anyhow::{ensure, Result};

use super::{refused_at_create, tether};

#[test]
#[ignore = "needs a pure cgroup v1 node: scripts/kernel-matrix.sh --cgroups v1 --scenarios v1"]
fn pure_v1_refuses_a_closed_plan_and_runs_an_open_one_unattached() -> Result<()> {
    let mount = tether_bpf::features::cgroup2_mount();
    ensure!(
        mount.is_err(),
        "not a pure cgroup v1 node: cgroup2 at {mount:?}"
    );
    tether("cgroup_v1", |env| {
        // A deny rule: the plan fails closed, and Create fails with the reason.
        let id = env.id("closed");
        let out = env.ctr.run_container(
            &env.run(&id)
                .rm()
                .flag("--annotation")
                .flag("tether.io/egress-deny=127.0.0.2")
                .command(["/bin/true"]),
        )?;
        refused_at_create(
            env,
            &id,
            &out,
            &["no cgroup2 file system is mounted (a pure cgroup v1 node)"],
        )?;

        // No rule: the plan is open, and the container runs, without programs, with a warning.
        let id = env.id("open");
        let out = env.ctr.run_container(&env.run(&id).rm().sh("echo ran"))?;
        ensure!(out.code == 0 && out.stdout.contains("ran"), "{out}");
        let log = env.containerd().log_tail(400);
        ensure!(
            log.contains("runs without its programs (failure policy: open)")
                && log.contains("no cgroup2 file system is mounted"),
            "no warning in the log:\n{log}"
        );
        env.assert_no_leaks(&id)
    })
}
