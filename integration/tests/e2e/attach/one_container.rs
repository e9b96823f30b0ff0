//! One container's own attach: its first instruction already denied, short-lived
//! containers counted apart, the attach step at raised priority, a host-network container,
//! an interface added while it runs.

use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, ensure, Result};
use tether_integration::wait::wait_until;

use super::{
    assert_detached, denied, lo_tc, pins_of, reached, refused_at_create, stats_of, tc_attachments,
    tc_count, tether, POLICY_LINKS,
};
use crate::common::*;
use tether_bpf::features::CgroupSockets;

#[test]
fn first_instruction_is_denied() -> Result<()> {
    tether("first_instruction", |env| {
        // The container's very first command connects to the denied address.
        let id = env.id("deny");
        let out = env.ctr.run_container(
            &env.run(&id)
                .rm()
                .flag("--annotation")
                .flag("tether.io/egress-deny=127.0.0.2/32")
                .command(["/bin/nc", "-w", "3", "127.0.0.2", "9"]),
        )?;
        ensure!(
            out.code != 0,
            "connect to a denied address succeeded: {out}"
        );
        if CgroupSockets::probe() == CgroupSockets::Blind {
            // The step-down: no cgroup program sees the socket, so no EPERM; TC on the
            // container's loopback drops the SYN, and counts it.
            ensure!(
                !out.stderr.contains("Connection refused"),
                "the SYN reached the closed port: {out}"
            );
        } else {
            ensure!(
                out.stderr.contains("Operation not permitted")
                    || out.stdout.contains("Operation not permitted"),
                "denied connect: {out}"
            );
        }
        // Its final counters outlive it (`run --rm`): the denial, or the drop at TC.
        let s = stats_of(env, &id)?;
        ensure!(s["deleted"] == true, "{s}");
        if CgroupSockets::probe() == CgroupSockets::Blind {
            ensure!(s["counted_at"] == "interfaces", "{s}");
            ensure!(
                s["drops"].as_u64().unwrap_or(0) >= 1,
                "no drop counted: {s}"
            );
        } else {
            ensure!(
                s["denials"].as_u64().unwrap_or(0) >= 1,
                "no denial counted: {s}"
            );
        }
        assert_detached(env, &id)?;
        env.assert_no_leaks(&id)?;

        // The same container without the annotation reaches the (closed) port.
        let id = env.id("allow");
        let out =
            env.ctr
                .run_container(&env.run(&id).rm().command(["/bin/nc", "127.0.0.2", "9"]))?;
        ensure!(
            out.stderr.contains("Connection refused") || out.stdout.contains("Connection refused"),
            "allowed connect: {out}"
        );
        env.assert_no_leaks(&id)
    })
}

#[test]
fn short_lived_containers_are_counted_separately() -> Result<()> {
    tether("counted", |env| {
        let mut ids = Vec::new();
        for n in [3, 7] {
            let id = env.id(&format!("count{n}"));
            let script = format!("for i in $(seq {n}); do nc 127.0.0.3 9; done; exit 0");
            env.ctr.run_container(&env.run(&id).detach().sh(&script))?;
            wait_status(env, &id, "STOPPED")?;
            ids.push((id, n));
        }
        // Both exited at once; their counters are there until delete.
        for (id, n) in &ids {
            let s = stats_of(env, id)?;
            let tx = s["tx_packets"].as_u64().unwrap_or(0);
            let rx = s["rx_packets"].as_u64().unwrap_or(0);
            ensure!(
                tx >= *n && tx <= 2 * n,
                "{id}: {n} SYNs sent, tx_packets {tx}: {s}"
            );
            ensure!(rx >= *n, "{id}: {n} RSTs received, rx_packets {rx}: {s}");
        }
        for (id, n) in &ids {
            env.ctr.ok(["task", "rm", id])?;
            env.ctr.ok(["container", "rm", id])?;
            wait_until("detach", STATE_TIMEOUT, || {
                Ok(assert_detached(env, id).is_ok().then_some(()))
            })?;
            // Gone from bpffs and the maps, its final counters stay readable in tetherd.
            let s = stats_of(env, id)?;
            ensure!(s["deleted"] == true, "{s}");
            ensure!(s["tx_packets"].as_u64().unwrap_or(0) >= *n, "{s}");
            env.assert_no_leaks(id)?;
        }
        Ok(())
    })
}

/// The nice value of every thread of `pid` (field 19 of `/proc/PID/task/TID/stat`).
fn thread_nice_values(pid: i32) -> Result<Vec<i64>> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let stat = std::fs::read_to_string(task?.path().join("stat"))?;
        // Fields after the command name, which is in parentheses: state is field 3.
        let rest = stat
            .rsplit_once(')')
            .map(|(_, r)| r)
            .ok_or_else(|| anyhow!("no command name in {stat:?}"))?;
        let nice = rest
            .split_whitespace()
            .nth(19 - 3)
            .ok_or_else(|| anyhow!("no nice field in {stat:?}"))?;
        out.push(nice.parse()?);
    }
    Ok(out)
}

#[test]
fn attach_step_runs_raised_and_the_shim_returns_to_its_own_priority() -> Result<()> {
    tether("nice", |env| {
        let id = detached_sleep(env, "nice", &[])?;
        let log = std::fs::read_to_string(env.containerd().log_path())?;
        ensure!(
            log.lines()
                .any(|l| l.contains(&format!("attached {id} in ")) && l.contains("at nice -20")),
            "no attach log line at nice -20 for {id}:\n{}",
            env.containerd().log_tail(40)
        );
        let shims = env.containerd().shim_processes()?;
        ensure!(!shims.is_empty(), "no shim process");
        for shim in shims {
            let nice = thread_nice_values(shim.pid)?;
            ensure!(
                nice.iter().all(|n| *n == 0),
                "shim {} threads' nice values after the step: {nice:?}",
                shim.pid
            );
        }
        kill_and_delete(env, &id)
    })
}

#[test]
fn host_network_gets_cgroup_programs_only() -> Result<()> {
    tether("host_net", |env| {
        let id = env.id("hostnet");
        if CgroupSockets::probe() == CgroupSockets::Blind {
            // Nowhere to enforce: the default (fail-closed) plan refuses it, and says why.
            let out = env.ctr.run_container(
                &env.run(&id)
                    .rm()
                    .flag("--net-host")
                    .flag("--annotation")
                    .flag("tether.io/egress-deny=127.0.0.2/32")
                    .command(["/bin/true"]),
            )?;
            return refused_at_create(env, &id, &out, &["cgroup-sockets: blind"]);
        }
        env.ctr.run_container(
            &env.run(&id)
                .detach()
                .flag("--net-host")
                .flag("--annotation")
                .flag("tether.io/egress-deny=127.0.0.2/32")
                .command(["/bin/sleep", "1000"]),
        )?;
        wait_status(env, &id, "RUNNING")?;
        // Deny rules: every cgroup program, and nothing on the host's interfaces.
        let pins = pins_of(env, &id);
        ensure!(pins == POLICY_LINKS, "{pins:?}");
        env.ctr.ok(["task", "kill", "--signal", "SIGKILL", &id])?;
        wait_status(env, &id, "STOPPED")?;
        env.ctr.ok(["task", "rm", &id])?;
        env.ctr.ok(["container", "rm", &id])?;
        assert_detached(env, &id)?;
        env.assert_no_leaks(&id)
    })
}

#[test]
fn interface_added_to_a_running_container_is_attached() -> Result<()> {
    tether("late_iface", |env| {
        let id = env.id("late");
        env.ctr
            .run_container(&env.run(&id).detach().command(["/bin/sleep", "1000"]))?;
        wait_status(env, &id, "RUNNING")?;
        let lo_tc = 2 * lo_tc();
        ensure!(
            tc_count(env, &id)? == lo_tc,
            "{:?}",
            tc_attachments(env, &id)?
        );
        let before = pins_of(env, &id);
        ensure!(
            before.iter().all(|p| p.starts_with("cgroup_")),
            "only lo before: {before:?}"
        );
        let pid = env
            .ctr
            .task(&id)?
            .ok_or_else(|| anyhow!("no task {id}"))?
            .pid;
        let host_end = format!("tl{}", std::process::id() % 100_000);
        let run = |args: &[&str]| -> Result<()> {
            let s = Command::new("ip").args(args).status()?;
            ensure!(s.success(), "ip {args:?}");
            Ok(())
        };
        run(&[
            "link", "add", &host_end, "type", "veth", "peer", "name", "eth7",
        ])?;
        let cleanup = scopeguard(&host_end);
        run(&["link", "set", "eth7", "netns", &pid.to_string()])?;
        wait_until(
            "the new interface to be attached",
            Duration::from_secs(10),
            // Ingress and egress of eth7, and of lo where TC stands in for the cgroup.
            || Ok((tc_count(env, &id)? == 2 + lo_tc).then_some(())),
        )?;
        drop(cleanup);
        env.ctr.ok(["task", "kill", "--signal", "SIGKILL", &id])?;
        wait_status(env, &id, "STOPPED")?;
        env.ctr.ok(["task", "rm", &id])?;
        env.ctr.ok(["container", "rm", &id])?;
        assert_detached(env, &id)?;
        env.assert_no_leaks(&id)
    })
}

/// Deletes the host end of a test veth when dropped (the container end goes with its netns).
struct VethGuard(String);
impl Drop for VethGuard {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.0]).status();
    }
}
fn scopeguard(name: &str) -> VethGuard {
    VethGuard(name.to_string())
}

/// A process exec'd into a running container is in its cgroup and network namespace: the
/// deny rule holds for it, and its denial is the container's. The same exec to an address
/// not denied reaches it (the control).
#[test]
fn an_exec_process_is_denied() -> Result<()> {
    tether("exec_denied", |env| {
        let id = detached_sleep(
            env,
            "exec",
            &["--annotation", "tether.io/egress-deny=127.0.0.2/32"],
        )?;
        let exec = |exec_id: &str, addr: &str| {
            env.ctr.run([
                "task",
                "exec",
                "--exec-id",
                exec_id,
                &id,
                "/bin/nc",
                "-w",
                "3",
                addr,
                "9",
            ])
        };
        let out = exec("allowed", "127.0.0.3")?;
        ensure!(
            reached(&out),
            "the control exec did not reach 127.0.0.3: {out}"
        );
        let out = exec("denied", "127.0.0.2")?;
        ensure!(
            denied(&out),
            "an exec'd process reached the denied address: {out}"
        );
        let s = stats_of(env, &id)?;
        let held = if CgroupSockets::probe() == CgroupSockets::Blind {
            s["drops"].as_u64().unwrap_or(0) >= 1
        } else {
            s["denials"].as_u64().unwrap_or(0) >= 1
        };
        ensure!(held, "the exec's denial is not the container's: {s}");
        kill_and_delete(env, &id)
    })
}
