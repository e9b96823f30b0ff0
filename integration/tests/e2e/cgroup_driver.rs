//! The cgroup driver of a systemd node. containerd's CRI writes a pod's cgroup path in
//! systemd's form (`<slice>:cri-containerd:<id>`) when kubelet uses the systemd driver, and
//! passes `SystemdCgroup = true` only to runtimes it knows as runc: tether's shim gets no
//! such option. tether reads the driver from the path's form; the test gives each runtime
//! what CRI gives it (runc.v2 the option, tether only the path) and compares: where
//! systemd runs (PID 1), both containers land in a scope of the same slice; where it does
//! not, runc's systemd driver fails the same way under both.

use std::path::Path;

use anyhow::{ensure, Result};
use tether_integration::ctr::{Run, Source};
use tether_integration::{Output, Runtime, TestEnv};

use crate::attach::tether;
use crate::common::*;

/// `/proc/<pid>/cgroup` with the container's id in it replaced by `ID`.
fn cgroups_of(pid: u32, id: &str) -> Result<String> {
    Ok(std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?.replace(id, "ID"))
}

fn run(env: &TestEnv, runtime: Runtime, id: &str) -> Result<Output> {
    let mut run = Run::new(runtime, Source::Rootfs(env.rootfs_dir().to_path_buf()), id)
        .detach()
        .flag("--cgroup")
        .flag(format!("system.slice:tether-test:{id}"));
    if runtime == Runtime::RuncV2 {
        run = run.flag("--runc-systemd-cgroup");
    }
    env.ctr.run_container(&run.command(["/bin/sleep", "1000"]))
}

fn systemd_driver(env: &mut TestEnv) -> Result<()> {
    let systemd = Path::new("/run/systemd/system").is_dir();
    let (a, b) = (env.id("sdrunc"), env.id("sdtether"));
    let (runc, tether) = (
        run(env, Runtime::RuncV2, &a)?,
        run(env, Runtime::Tether, &b)?,
    );
    if systemd {
        ensure!(
            runc.success() && tether.success(),
            "runc.v2: {runc}; tether: {tether}"
        );
        let (pa, pb) = (
            wait_status(env, &a, "RUNNING")?,
            wait_status(env, &b, "RUNNING")?,
        );
        let (ca, cb) = (cgroups_of(pa, &a)?, cgroups_of(pb, &b)?);
        ensure!(
            ca == cb && ca.contains("system.slice/tether-test-ID.scope"),
            "runc.v2: {ca}\ntether: {cb}"
        );
    } else {
        // runc's systemd driver needs systemd's bus: no systemd, no container, under both.
        for (name, out) in [("runc.v2", &runc), ("tether", &tether)] {
            ensure!(
                !out.success() && (out.stderr.contains("systemd") || out.stderr.contains("dbus")),
                "{name} with systemd's cgroup path and no systemd: {out}"
            );
        }
    }
    for id in [&a, &b] {
        env.ctr.force_remove(id)?;
        env.assert_no_leaks(id)?;
    }
    Ok(())
}

#[test]
fn a_systemd_cgroups_path_gets_the_systemd_driver_as_under_runc_v2() -> Result<()> {
    tether("systemd_driver", systemd_driver)
}
