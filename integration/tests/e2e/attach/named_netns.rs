//! Network namespaces set up by the caller: a CNI bridge interface attached before start and
//! counted there, and a pod's namespace made beforehand and named in the spec, shared by two
//! containers, through TCX links or the clsact fallback.

use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use tether_integration::wait::wait_until;
use tether_integration::{Runtime, TestEnv};

use super::cni::{CniNetwork, CNI_SUBNET_GW};
use super::{
    accounting_links, assert_detached, blind, cgroup_pins, interfaces_sum, lo_tc, pins_of,
    stats_of, tc_attachments, tc_count, tether, tetherctl, POLICY_LINKS,
};
use crate::common::*;

#[test]
fn cni_interface_is_attached_before_start() -> Result<()> {
    tether("cni", |env| {
        let _net = CniNetwork::new()?;
        let id = env.id("cni");
        // The first thing the container does is send three pings over eth0.
        env.ctr
            .run_container(&env.run(&id).detach().flag("--cni").sh(&format!(
                "ping -c 3 -i 0.2 -W 1 {CNI_SUBNET_GW}; sleep 1000"
            )))?;
        wait_status(env, &id, "RUNNING")?;
        let pins = pins_of(env, &id);
        let tc = tc_attachments(env, &id)?;
        // eth0's two programs, and lo's where TC stands in for the cgroup programs.
        ensure!(
            tc.len() == 2 * (1 + lo_tc()),
            "eth0 not attached: {pins:?} {tc:?}"
        );
        // eth0 arrives between create and start (ctr runs CNI then): the container is
        // moved to it before its first instruction and counted there (`count_at = "auto"`),
        // with no cgroup_skb program (connect4 ties the pins to the cgroup's life).
        ensure!(cgroup_pins(&pins) == ["cgroup_tether_connect4"], "{pins:?}");
        let counted = wait_until("eth0 to count the pings", Duration::from_secs(10), || {
            let s = stats_of(env, &id)?;
            Ok((interfaces_sum(&s, "tx_packets") >= 3).then_some(s))
        })?;
        eprintln!("{counted}");
        ensure!(
            counted["counted_at"] == "interfaces" && counted["cgroup"]["tx_packets"] == 0,
            "{counted}"
        );
        env.ctr.force_remove(&id)?;
        assert_detached(env, &id)?;
        env.assert_no_leaks(&id)?;

        // Asked to count at its interfaces: no cgroup_skb program (connect4 ties the pins
        // to the cgroup's life), the total is the interfaces', loopback is not counted
        // (but for blind cgroup programs, where TC counts it).
        let id = env.id("cni-ifaces");
        env.ctr.run_container(
            &env.run(&id)
                .detach()
                .flag("--cni")
                .flag("--annotation")
                .flag("tether.io/count-at=interfaces")
                .sh(&format!(
                    "ping -c 3 -i 0.2 -W 1 127.0.0.1; ping -c 3 -i 0.2 -W 1 {CNI_SUBNET_GW}; \
                     sleep 1000"
                )),
        )?;
        wait_status(env, &id, "RUNNING")?;
        let pins = pins_of(env, &id);
        let tc = tc_attachments(env, &id)?;
        // eth0's two programs, and lo's where TC stands in for the cgroup programs.
        ensure!(
            tc.len() == 2 * (1 + lo_tc()),
            "eth0 not attached: {pins:?} {tc:?}"
        );
        ensure!(cgroup_pins(&pins) == ["cgroup_tether_connect4"], "{pins:?}");
        let s = wait_until("eth0 to count the pings", Duration::from_secs(10), || {
            let s = stats_of(env, &id)?;
            Ok((s["tx_packets"].as_u64().unwrap_or(0) >= 3).then_some(s))
        })?;
        eprintln!("{s}");
        ensure!(s["counted_at"] == "interfaces", "{s}");
        for field in ["tx_packets", "rx_packets", "tx_bytes", "rx_bytes"] {
            ensure!(
                s["cgroup"][field] == 0,
                "{field} counted at the cgroup: {s}"
            );
            ensure!(
                s[field].as_u64() == Some(interfaces_sum(&s, field)),
                "{field}: {s}"
            );
        }
        // Its connect4 link ties it to its live cgroup: garbage collection keeps it.
        tetherctl(env, &["gc"])?;
        ensure!(
            pins_of(env, &id) == pins,
            "collected: {:?}",
            pins_of(env, &id)
        );
        let tx = s["tx_packets"].as_u64().unwrap_or(0);
        // Besides the pings: ARP, and IPv6 neighbour and router solicitations, more of them on
        // a slow (emulated) machine, where their timers fire while the test runs.
        // Where TC counts loopback too (blind cgroup programs), the three pings to
        // 127.0.0.1 leave lo twice each (request and reply).
        ensure!(
            (3..=16 + 6 * lo_tc() as u64).contains(&tx),
            "3 pings (and ARP, IPv6 ND) sent: {s}"
        );
        env.ctr.force_remove(&id)?;
        assert_detached(env, &id)?;
        let s = stats_of(env, &id)?;
        ensure!(
            s["deleted"] == true && s["counted_at"] == "interfaces",
            "{s}"
        );
        ensure!(s["tx_packets"].as_u64().unwrap_or(0) >= tx, "{s}");
        env.assert_no_leaks(&id)
    })
}

#[test]
fn existing_netns_named_in_the_spec_is_used() -> Result<()> {
    tether("pod_netns", pod_netns)
}

/// The clsact fallback (kernels without TCX; forced here): filters go on the pod's
/// interfaces and are removed at delete, while the pod's namespace lives on.
#[test]
fn clsact_filters_are_removed_from_a_pod_netns_at_delete() -> Result<()> {
    let mut env = TestEnv::with_env(
        Runtime::Tether,
        "clsact",
        vec![("TETHER_TC_ATTACH".into(), "clsact".into())],
    )?;
    pod_netns(&mut env)
}

fn pod_netns(env: &mut TestEnv) -> Result<()> {
    // clsact when forced, and on kernels without TCX (before 6.6).
    let clsact = env.containerd().env_var("TETHER_TC_ATTACH") == Some("clsact")
        || tether_bpf::tc::TcAttach::probe() == tether_bpf::tc::TcAttach::Clsact;
    {
        let pod_ns = PodNs::new(env, "ns")?;
        let ns = pod_ns.0.clone();
        let id = env.id("podns");
        env.ctr.run_container(
            &env.run(&id)
                .detach()
                .flag("--with-ns")
                .flag(format!("network:/run/netns/{ns}"))
                .command(["/bin/sleep", "1000"]),
        )?;
        wait_status(env, &id, "RUNNING")?;
        let pins = pins_of(env, &id);
        let filters = |dev: &str| -> Result<String> {
            let out = Command::new("ip")
                .args([
                    "netns", "exec", &ns, "tc", "filter", "show", "dev", dev, "egress",
                ])
                .output()?;
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        };
        if clsact {
            ensure!(
                pins == accounting_links(),
                "clsact pins nothing for TC: {pins:?}"
            );
            ensure!(
                filters("eth0")?.contains("tether_tc_egres"),
                "{}",
                filters("eth0")?
            );
            let s = stats_of(env, &id)?;
            ensure!(
                s["interfaces"].as_array().map_or(0, Vec::len) == 2 + lo_tc(),
                "{s}"
            );
            // `tetherctl ps` shows the filters: both programs on eth0 and eth1.
            let ps = tetherctl(env, &["ps"])?;
            let mine = ps
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| c["id"] == id.as_str())
                .with_context(|| format!("{id} not in ps: {ps}"))?;
            let clsact = mine["attachments"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|a| a["kind"] == "clsact")
                .count();
            ensure!(clsact == 2 * (2 + lo_tc()), "{mine}");
        } else {
            // eth0 and eth1 of the pod's namespace: two TC links each.
            ensure!(
                pins.iter().filter(|p| p.starts_with("tc_")).count() == 2 * (2 + lo_tc()),
                "{pins:?}"
            );
            ensure!(cgroup_pins(&pins) == accounting_links(), "{pins:?}");
        }
        // A second container of the pod, in its namespace: the interfaces stay the first
        // one's (its counters are not taken over or zeroed); the second one's attach skips
        // them, and its Create succeeds although its deny rule makes it fail closed (its
        // cgroup programs judge it), except where those are blind.
        let second = env.id("podns2");
        let out = env.ctr.run_container(
            &env.run(&second)
                .detach()
                .flag("--with-ns")
                .flag(format!("network:/run/netns/{ns}"))
                .flag("--annotation")
                .flag("tether.io/egress-deny=127.0.0.2")
                .command(["/bin/sleep", "1000"]),
        )?;
        if blind() {
            // Blind cgroup programs: nothing tells its packets from the first one's at their
            // interfaces, which judge by the first one's rules, and it has none: refused
            // (fail-closed).
            ensure!(
                out.code != 0
                    && out.stderr.contains("cgroup-sockets: blind")
                    && out.stderr.contains("another container's programs")
                    && out.stderr.contains("has no policy"),
                "{out}"
            );
            let _ = env.ctr.run(["container", "rm", &second]);
            owner_covers_its_joiners(env)?;
        } else {
            ensure!(out.code == 0, "{out}");
            wait_status(env, &second, "RUNNING")?;
            let theirs = pins_of(env, &second);
            ensure!(cgroup_pins(&theirs) == POLICY_LINKS, "{theirs:?}");
            ensure!(!theirs.iter().any(|p| p.starts_with("tc_")), "{theirs:?}");
            ensure!(tc_count(env, &second)? == 0, "{theirs:?}");
            let interfaces = |id: &str| -> Result<usize> {
                let s = stats_of(env, id)?;
                Ok(s["interfaces"].as_array().map_or(0, Vec::len))
            };
            ensure!(interfaces(&second)? == 0 && interfaces(&id)? == 2);
            env.ctr.force_remove(&second)?;
            assert_detached(env, &second)?;
            ensure!(interfaces(&id)? == 2);
        }
        env.assert_no_leaks(&second)?;
        ensure!(pins_of(env, &id) == pins, "{:?}", pins_of(env, &id));
        env.ctr.force_remove(&id)?;
        assert_detached(env, &id)?;
        ensure!(
            !filters("eth0")?.contains("tether"),
            "filters left: {}",
            filters("eth0")?
        );
        ensure!(
            !filters("eth1")?.contains("tether"),
            "filters left: {}",
            filters("eth1")?
        );
        env.assert_no_leaks(&id)
    }
}

/// Blind cgroup programs: a container under a policy that joins a namespace whose owner has
/// one runs when the owner's deny rules cover each of its own (the owner's interfaces judge
/// its packets by them), and is refused otherwise, naming its rule that is not covered.
fn owner_covers_its_joiners(env: &mut TestEnv) -> Result<()> {
    let pod_ns = PodNs::new(env, "ns-owner")?;
    let ns = &pod_ns.0;
    let run_in_ns = |env: &TestEnv, id: &str, deny: &str| {
        env.ctr.run_container(
            &env.run(id)
                .detach()
                .flag("--with-ns")
                .flag(format!("network:/run/netns/{ns}"))
                .flag("--annotation")
                .flag(format!("tether.io/egress-deny={deny}"))
                .command(["/bin/sleep", "1000"]),
        )
    };
    let owner = env.id("owner");
    let out = run_in_ns(env, &owner, "127.0.0.3, 10.99.0.0/16")?;
    ensure!(out.code == 0, "{out}");
    wait_status(env, &owner, "RUNNING")?;

    // Its rules are among the owner's (10.99.1.0/24 within 10.99.0.0/16): it runs.
    let covered = env.id("covered");
    let out = run_in_ns(env, &covered, "10.99.1.0/24")?;
    ensure!(out.code == 0, "{out}");
    wait_status(env, &covered, "RUNNING")?;

    // One rule the owner lacks: refused, naming it, and nothing of it is left.
    let uncovered = env.id("uncovered");
    let out = run_in_ns(env, &uncovered, "127.0.0.3, 10.98.0.0/16")?;
    ensure!(
        out.code != 0
            && out.stderr.contains("cgroup-sockets: blind")
            && out.stderr.contains(
                "its deny rule 10.98.0.0/16 is not among those of the container of cgroup"
            ),
        "{out}"
    );
    let _ = env.ctr.run(["container", "rm", &uncovered]);
    env.assert_no_leaks(&uncovered)?;

    env.ctr.force_remove(&covered)?;
    assert_detached(env, &covered)?;
    env.assert_no_leaks(&covered)?;
    env.ctr.force_remove(&owner)?;
    assert_detached(env, &owner)?;
    env.assert_no_leaks(&owner)
}

/// A network namespace made beforehand, as Kubernetes makes a pod's, with a veth pair (eth0,
/// eth1) in it; deleted when dropped.
struct PodNs(String);

impl PodNs {
    fn new(env: &TestEnv, label: &str) -> Result<PodNs> {
        let name = format!("tp-{}", env.id(label));
        let status = Command::new("ip").args(["netns", "add", &name]).status()?;
        ensure!(status.success(), "ip netns add {name}");
        let ns = PodNs(name);
        let status = Command::new("ip")
            .args([
                "-n", &ns.0, "link", "add", "eth0", "type", "veth", "peer", "name", "eth1",
            ])
            .status()?;
        ensure!(status.success(), "veth in {}", ns.0);
        Ok(ns)
    }
}

impl Drop for PodNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}
