//! The escape test: a tenant with a container's default capabilities tries every way out it
//! has (`tether_integration::escape`: sockets of each family and type, IP options,
//! extension headers, fragments, tunnels, packet sockets) against addresses a deny rule
//! names, in a namespace made here, whose receiver counts what arrives. Under each
//! attachment mode (TC on the container's interfaces, `interfaces=none`, the host's
//! network) nothing may arrive; the same probe under `io.containerd.runc.v2`, in the same
//! place, is the control: there, every variant arrives. Judged at its interfaces (`judge_at
//! = "interfaces"`: no cgroup egress program, TC judges every packet it sends), a container
//! whose interface arrives while it runs lets nothing through either.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{anyhow, ensure, Result};
use tether_integration::ctr::{Run, Source};
use tether_integration::escape::field::Field;
use tether_integration::escape::{parse_arrived, parse_sent, VARIANTS};
use tether_integration::{rootfs, Runtime, TestEnv};

use super::node_floor::NodeConfig;
use super::{blind, lo_tc, pins_of, stats_of, tc_attachments, tether};
use crate::common::wait_status;

#[derive(Clone, Copy, Debug)]
enum Mode {
    /// Its own namespace, TC programs on its interface.
    Netns,
    /// Its own namespace, on a node whose `[attach] interfaces` is `"none"`: only the
    /// cgroup programs.
    NoInterfaces,
    /// The host's network namespace.
    HostNetwork,
}

fn probe() -> Result<PathBuf> {
    let bin = tether_integration::containerd::tether_shim_binary()?
        .parent()
        .map(|d| d.join("tether-escape"))
        .ok_or_else(|| anyhow!("no directory for tether-escape"))?;
    ensure!(bin.is_file(), "{} is not built", bin.display());
    Ok(bin)
}

/// One run of the probe under `runtime`: what it says of each variant, and what arrived.
fn attempt(
    env: &TestEnv,
    field: &Field,
    runtime: Runtime,
    mode: Mode,
) -> Result<(Outcomes, Arrivals)> {
    let receiver = field.receive(&probe()?)?;
    let t = &field.targets;
    let id = env.id("escape");
    let mut run = Run::new(runtime, Source::Rootfs(env.rootfs_dir().to_path_buf()), &id)
        .rm()
        .flag("--annotation")
        .flag(format!(
            "tether.io/egress-deny={}/32,{}/128",
            t.denied4, t.denied6
        ));
    let netns = field.container_netns();
    run = match (mode, netns) {
        (Mode::HostNetwork, _) => run.flag("--net-host"),
        (_, None) => return Err(anyhow!("{mode:?} needs the container's own namespace")),
        (Mode::Netns | Mode::NoInterfaces, Some(ns)) => run
            .flag("--with-ns")
            .flag(format!("network:{}", ns.display())),
    };
    let mut argv = vec!["/bin/tether-escape".to_string(), "send".to_string()];
    argv.extend(t.args());
    let out = env.ctr.run_container(&run.command(argv))?;
    if !out.success()
        && runtime == Runtime::Tether
        && blind()
        && matches!(mode, Mode::HostNetwork | Mode::NoInterfaces)
    {
        // The cgroup programs are blind to its sockets and no TC program stands in: the
        // container is refused at create (fail-closed), which is how it is enforced here.
        ensure!(
            out.stderr.contains("cgroup-sockets: blind"),
            "{mode:?} refused, but not for its blind cgroup programs: {out}"
        );
        let _ = env.ctr.run(["container", "rm", &id]);
        env.assert_no_leaks(&id)?;
        let refused = VARIANTS
            .iter()
            .map(|v| (v.name.to_string(), "refused at create".to_string()))
            .collect();
        return Ok((refused, parse_arrived(&receiver.finish()?)));
    }
    let sent = probe_outcomes(&out, runtime)?;
    let arrived = parse_arrived(&receiver.finish()?);
    env.assert_no_leaks(&id)?;
    Ok((sent, arrived))
}

fn escape(env: &mut TestEnv, mode: Mode, subnet: u8) -> Result<()> {
    rootfs::add_binary(env.rootfs_dir(), &probe()?, "tether-escape")?;
    let field = match mode {
        Mode::HostNetwork => Field::host(subnet)?,
        Mode::Netns | Mode::NoInterfaces => Field::netns(subnet)?,
    };
    let _node = match mode {
        Mode::NoInterfaces => Some(NodeConfig::set(env, "interfaces = \"none\"\n")?),
        Mode::Netns | Mode::HostNetwork => None,
    };
    let (control_sent, control) = attempt(env, &field, Runtime::RuncV2, mode)?;
    let (sent, arrived) = attempt(env, &field, Runtime::Tether, mode)?;

    compare(
        &format!("{mode:?}"),
        (&control_sent, &control),
        (&sent, &arrived),
    )?;
    if let Mode::Netns = mode {
        exec_escape(env, &field)?;
    }
    Ok(())
}

type Outcomes = BTreeMap<String, String>;
type Arrivals = BTreeMap<String, u64>;

/// Prints each variant's fate under runc.v2 and tether, and holds the run to its two
/// claims: under runc.v2 every variant arrived (the control), under tether none did.
fn compare(
    what: &str,
    (control_sent, control): (&Outcomes, &Arrivals),
    (sent, arrived): (&Outcomes, &Arrivals),
) -> Result<()> {
    eprintln!("{what}: variant | runc.v2 (frames arrived) | tether (outcome, frames arrived)");
    for v in VARIANTS {
        eprintln!(
            "  {:24} {:>3} | {:14} {}",
            v.name,
            control.get(v.name).copied().unwrap_or(0),
            sent.get(v.name).map_or("?", String::as_str),
            arrived.get(v.name).copied().unwrap_or(0),
        );
    }
    let missed: Vec<_> = VARIANTS
        .iter()
        .filter(|v| !control.contains_key(v.name))
        .map(|v| format!("{} ({})", v.name, control_sent[v.name]))
        .collect();
    ensure!(
        missed.is_empty(),
        "control: without tether these did not reach the receiver: {missed:?}"
    );
    ensure!(
        arrived.is_empty(),
        "{what}: these reached a denied address under tether: {arrived:?}"
    );
    Ok(())
}

/// The outcome of each variant the probe tried, from its output; the probe must have
/// exited cleanly and tried every variant.
fn probe_outcomes(out: &tether_integration::Output, runtime: Runtime) -> Result<Outcomes> {
    ensure!(out.success(), "the probe under {runtime}: {out}");
    let sent = parse_sent(&out.stdout);
    ensure!(
        sent.len() == VARIANTS.len(),
        "the probe under {runtime} tried {} of {} variants: {out}",
        sent.len(),
        VARIANTS.len()
    );
    Ok(sent)
}

/// `tether-escape send` exec'd into running container `id`, aimed at `t`.
fn exec_probe(
    env: &TestEnv,
    id: &str,
    t: &tether_integration::escape::Targets,
) -> Result<tether_integration::Output> {
    let mut argv: Vec<String> = ["task", "exec", "--exec-id", "escape", id]
        .iter()
        .map(|s| s.to_string())
        .collect();
    argv.extend(["/bin/tether-escape".to_string(), "send".to_string()]);
    argv.extend(t.args());
    env.ctr.run(argv)
}

/// The same probe exec'd into a running container: nothing arrives either.
fn exec_escape(env: &TestEnv, field: &Field) -> Result<()> {
    let t = &field.targets;
    let id = env.id("escexec");
    let ns = field
        .container_netns()
        .ok_or_else(|| anyhow!("no container namespace"))?;
    env.ctr.run_container(
        &env.run(&id)
            .detach()
            .flag("--annotation")
            .flag(format!(
                "tether.io/egress-deny={}/32,{}/128",
                t.denied4, t.denied6
            ))
            .flag("--with-ns")
            .flag(format!("network:{}", ns.display()))
            .command(["/bin/sleep", "1000"]),
    )?;
    let receiver = field.receive(&probe()?)?;
    let out = exec_probe(env, &id, t);
    let arrived = parse_arrived(&receiver.finish()?);
    env.ctr.force_remove(&id)?;
    probe_outcomes(&out?, Runtime::Tether)?;
    ensure!(
        arrived.is_empty(),
        "these reached a denied address from an exec'd process: {arrived:?}"
    );
    Ok(())
}

/// Frames a container writes to packet sockets skip the cgroup programs. Where those count
/// the container's packets (`count-at=cgroup`), the TC program on its interface counts
/// them there too: every frame that left (no deny rule here) is in the container's
/// `tx_packets`, which has no other traffic. Frames sent with `PACKET_QDISC_BYPASS` skip
/// TC as well and are left out (README: Where packets are counted).
fn packet_frames_counted(env: &mut TestEnv) -> Result<()> {
    rootfs::add_binary(env.rootfs_dir(), &probe()?, "tether-escape")?;
    let field = Field::netns(74)?;
    let ns = field
        .container_netns()
        .ok_or_else(|| anyhow!("no container namespace"))?;
    let id = env.id("pktcount");
    env.ctr.run_container(
        &env.run(&id)
            .detach()
            .flag("--annotation")
            .flag("tether.io/count-at=cgroup")
            .flag("--with-ns")
            .flag(format!("network:{}", ns.display()))
            .command(["/bin/sleep", "1000"]),
    )?;
    let receiver = field.receive(&probe()?)?;
    let mut argv: Vec<String> = ["task", "exec", "--exec-id", "packets", &id]
        .iter()
        .map(|s| s.to_string())
        .collect();
    argv.extend(["/bin/tether-escape".to_string(), "send".to_string()]);
    argv.extend(field.targets.args());
    argv.push("packet-".to_string());
    let out = env.ctr.run(argv);
    let arrived = parse_arrived(&receiver.finish()?);
    let stats = stats_of(env, &id);
    env.ctr.force_remove(&id)?;
    let (out, stats) = (out?, stats?);
    ensure!(out.success(), "the probe: {out}");
    let judged_at_tc: u64 = arrived
        .iter()
        .filter(|(name, _)| !name.contains("bypass"))
        .map(|(_, n)| n)
        .sum();
    ensure!(
        judged_at_tc >= 4,
        "too few packet-socket frames arrived to count: {arrived:?} ({out})"
    );
    // eth0 (and lo, where TC stands in for blind cgroup programs), each by its own name.
    let names: Vec<&str> = stats["interfaces"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["name"].as_str())
        .collect();
    ensure!(
        names.contains(&"eth0") && names.len() == 1 + lo_tc(),
        "the interfaces are named as in their namespace: {stats}"
    );
    let tx = stats["tx_packets"].as_u64().unwrap_or(0);
    eprintln!(
        "packet-socket frames that passed TC: {judged_at_tc}; the container's tx_packets: {tx}"
    );
    ensure!(
        tx >= judged_at_tc,
        "{judged_at_tc} packet-socket frames left the container, {tx} counted: {stats}"
    );
    env.assert_no_leaks(&id)
}

#[test]
fn packet_socket_frames_are_counted_at_the_cgroup() -> Result<()> {
    tether("packet_count", packet_frames_counted)
}

/// The probe exec'd into a container of `runtime` whose namespace runc made and whose
/// `eth0` (to the receiver) arrives while it runs, once tether's programs are on it.
fn late_attempt(env: &TestEnv, runtime: Runtime, subnet: u8) -> Result<(Outcomes, Arrivals)> {
    let id = env.id("escjudge");
    let run = Run::new(runtime, Source::Rootfs(env.rootfs_dir().to_path_buf()), &id)
        .detach()
        .flag("--annotation")
        .flag(format!(
            "tether.io/egress-deny=10.251.{subnet}.2/32,fd00:7e:{subnet}::2/128"
        ))
        .command(["/bin/sleep", "1000"]);
    env.ctr.run_container(&run)?.ok()?;
    let result = (|| {
        let pid = wait_status(env, &id, "RUNNING")?;
        let field = Field::late(subnet, pid)?;
        if runtime == Runtime::Tether {
            // Counted and judged at its interfaces: no cgroup egress program at all, and the
            // shim's log says so.
            let log = env.containerd().log_tail(400);
            ensure!(
                log.contains(&format!("attached {id} in"))
                    && log.contains("judged at its interfaces (no cgroup egress program)"),
                "the shim's log does not say where {id} is judged:\n{log}"
            );
            let pins = pins_of(env, &id);
            ensure!(
                !pins.iter().any(|p| p == "cgroup_tether_cg_egress"),
                "a cgroup egress program under judge_at = \"interfaces\": {pins:?}"
            );
            tether_integration::wait::wait_until(
                "eth0 to get its TC programs",
                std::time::Duration::from_secs(20),
                || Ok((tc_attachments(env, &id)?.len() >= 2).then_some(())),
            )?;
        }
        let receiver = field.receive(&probe()?)?;
        let out = exec_probe(env, &id, &field.targets)?;
        let sent = probe_outcomes(&out, runtime)?;
        Ok((sent, parse_arrived(&receiver.finish()?)))
    })();
    env.ctr.force_remove(&id)?;
    env.assert_no_leaks(&id)?;
    result
}

#[test]
fn nothing_escapes_a_container_judged_at_its_interfaces() -> Result<()> {
    tether("escape_judge_at", |env| {
        rootfs::add_binary(env.rootfs_dir(), &probe()?, "tether-escape")?;
        let _node = NodeConfig::set(
            env,
            "judge_at = \"interfaces\"\ncount_at = \"interfaces\"\n",
        )?;
        let (control_sent, control) = late_attempt(env, Runtime::RuncV2, 75)?;
        let (sent, arrived) = late_attempt(env, Runtime::Tether, 75)?;
        compare(
            "judged at the interfaces",
            (&control_sent, &control),
            (&sent, &arrived),
        )?;
        Ok(())
    })
}

#[test]
fn nothing_escapes_a_container_with_tc_programs() -> Result<()> {
    tether("escape_netns", |env| escape(env, Mode::Netns, 71))
}

#[test]
fn nothing_escapes_a_container_without_tc_programs() -> Result<()> {
    tether("escape_no_ifaces", |env| {
        escape(env, Mode::NoInterfaces, 72)
    })
}

#[test]
fn nothing_escapes_a_container_on_the_host_network() -> Result<()> {
    tether("escape_host", |env| escape(env, Mode::HostNetwork, 73))
}
