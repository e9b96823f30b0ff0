//! The attach step, end to end through containerd and the tether shim: programs are in place
//! before the container's first instruction, traffic is counted per container, late
//! interfaces are attached, bad annotations fail Create cleanly, delete leaves nothing.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, ensure, Context, Result};
use tether_integration::wait::wait_until;
use tether_integration::{Runtime, TestEnv};

use crate::common::*;

/// Runs `f` against the tether runtime only (these behaviours do not exist in runc.v2).
fn tether(name: &str, f: fn(&mut TestEnv) -> Result<()>) -> Result<()> {
    run_scenario(Runtime::Tether, name, f)
}

fn tetherctl(env: &TestEnv, args: &[&str]) -> Result<serde_json::Value> {
    let bin = tether_integration::containerd::tether_shim_binary()?
        .parent()
        .map(|d| d.join("tetherctl"))
        .ok_or_else(|| anyhow!("no directory for tetherctl"))?;
    let out = Command::new(&bin)
        .arg("--socket")
        .arg(env.containerd().tetherd_socket())
        .arg("--json")
        .args(args)
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    ensure!(
        out.status.success(),
        "tetherctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    // `stats --json` prints one object per line; the others one document.
    if args.first() == Some(&"stats") {
        let rows: Vec<serde_json::Value> = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(serde_json::from_str)
            .collect::<Result<_, _>>()?;
        Ok(serde_json::Value::Array(rows))
    } else {
        Ok(serde_json::from_str(&text)?)
    }
}

fn stats_of(env: &TestEnv, id: &str) -> Result<serde_json::Value> {
    let all = tetherctl(env, &["stats"])?;
    all.as_array()
        .and_then(|a| a.iter().find(|r| r["id"] == id).cloned())
        .ok_or_else(|| anyhow!("no stats for {id}: {all}"))
}

/// A counter of a `stats --json` row summed over its interfaces.
fn interfaces_sum(row: &serde_json::Value, field: &str) -> u64 {
    row["interfaces"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| i[field].as_u64().unwrap_or(0))
        .sum()
}

fn container_dir(env: &TestEnv, id: &str) -> PathBuf {
    env.containerd()
        .pin_root()
        .join("containers")
        .join(env.namespace())
        .join(id.replace('.', "%2E"))
}

fn pins_of(env: &TestEnv, id: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(container_dir(env, id))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The cgroup links of a container with the default plan (accounting, no deny rules), as
/// sorted pin names: the sock_addr programs are attached only for deny rules or connection
/// audit.
const ACCOUNTING_LINKS: [&str; 2] = ["cgroup_tether_cg_egress", "cgroup_tether_cg_ingress"];
/// The cgroup links of a container with deny rules: every cgroup program.
const POLICY_LINKS: [&str; 6] = [
    "cgroup_tether_cg_egress",
    "cgroup_tether_cg_ingress",
    "cgroup_tether_connect4",
    "cgroup_tether_connect6",
    "cgroup_tether_sendmsg4",
    "cgroup_tether_sendmsg6",
];

/// The cgroup link pins among `pins` (sorted as `pins` is).
fn cgroup_pins(pins: &[String]) -> Vec<&str> {
    pins.iter()
        .map(String::as_str)
        .filter(|p| p.starts_with("cgroup_"))
        .collect()
}

fn assert_detached(env: &TestEnv, id: &str) -> Result<()> {
    ensure!(
        !container_dir(env, id).exists(),
        "pins of {id} left: {:?}",
        pins_of(env, id)
    );
    let stats = tetherctl(env, &["stats"])?;
    ensure!(
        !stats
            .as_array()
            .is_some_and(|a| a.iter().any(|r| r["id"] == id && r["deleted"] != true)),
        "map entries of {id} left: {stats}"
    );
    Ok(())
}

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
                .command(["/bin/nc", "127.0.0.2", "9"]),
        )?;
        ensure!(
            out.code != 0,
            "connect to a denied address succeeded: {out}"
        );
        ensure!(
            out.stderr.contains("Operation not permitted")
                || out.stdout.contains("Operation not permitted"),
            "denied connect: {out}"
        );
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
fn malformed_annotation_fails_create() -> Result<()> {
    tether("bad_annotation", |env| {
        for (ann, want) in [
            ("tether.io/egress-deny=10.0.0.1/8", "host bits"),
            ("tether.io/egress-deny=banana", "banana"),
            ("tether.io/egres-deny=1.2.3.4", "unknown annotation"),
            ("tether.io/failure-policy=sometimes", "sometimes"),
            ("tether.io/count-at=eth0", "tether.io/count-at"),
        ] {
            let id = env.id("bad");
            let out = env.ctr.run_container(
                &env.run(&id)
                    .rm()
                    .flag("--annotation")
                    .flag(ann)
                    .command(["/bin/true"]),
            )?;
            ensure!(out.code != 0, "{ann}: created anyway: {out}");
            ensure!(out.stderr.contains(want), "{ann}: {out}");
            let _ = env.ctr.run(["container", "rm", &id]);
            ensure!(!container_dir(env, &id).exists(), "{ann}: pins left");
            env.assert_no_leaks(&id)?;
        }
        Ok(())
    })
}

#[test]
fn host_network_gets_cgroup_programs_only() -> Result<()> {
    tether("host_net", |env| {
        let id = env.id("hostnet");
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
            Duration::from_secs(1),
            || {
                let pins = pins_of(env, &id);
                Ok((pins.iter().filter(|p| p.starts_with("tc_")).count() == 2).then_some(pins))
            },
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

/// Starts `n` detached `sleep` containers at once and waits until each runs.
fn start_many(env: &TestEnv, what: &str, n: usize) -> Result<Vec<String>> {
    let ids: Vec<String> = (0..n).map(|_| env.id(what)).collect();
    let runs: Vec<_> = ids
        .iter()
        .map(|id| {
            let run = env
                .run(id)
                .detach()
                .timeout(Duration::from_secs(240))
                .command(["/bin/sleep", "1000"]);
            spawn_run(env, run)
        })
        .collect();
    for (id, r) in ids.iter().zip(runs) {
        let out = join(r)?;
        ensure!(out.success(), "{id}: {out}");
    }
    Ok(ids)
}

fn prog_ids_in_use(env: &TestEnv) -> Result<std::collections::BTreeSet<u64>> {
    let ps = tetherctl(env, &["ps"])?;
    let mut ids = std::collections::BTreeSet::new();
    for c in ps.as_array().into_iter().flatten() {
        for a in c["attachments"].as_array().into_iter().flatten() {
            ids.insert(a["prog_id"].as_u64().unwrap_or(0));
        }
    }
    Ok(ids)
}

#[test]
fn burst_of_50_loads_once_and_attaches_all() -> Result<()> {
    tether("burst50", |env| {
        ensure!(
            env.containerd().tetherd_pid().is_none(),
            "tetherd runs already"
        );
        let ids = start_many(env, "b", 50)?;
        for id in &ids {
            let pins = pins_of(env, id);
            ensure!(pins == ACCOUNTING_LINKS, "{id} is not attached: {pins:?}");
        }
        let status = tetherctl(env, &["status"])?;
        ensure!(
            status["loads"] == 1,
            "one load for the whole burst: {status}"
        );
        // Every container's links point at the same two cgroup programs.
        let progs = prog_ids_in_use(env)?;
        ensure!(progs.len() == 2, "programs in use: {progs:?}");
        let ps = tetherctl(env, &["ps"])?;
        ensure!(ps.as_array().map_or(0, Vec::len) == 50, "{ps}");

        // tetherd killed: new containers still attach, from the pins.
        let pid = env
            .containerd()
            .tetherd_pid()
            .ok_or_else(|| anyhow!("no tetherd"))?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )?;
        wait_until("tetherd to die", STATE_TIMEOUT, || {
            Ok(env.containerd().tetherd_pid().is_none().then_some(()))
        })?;
        let more = start_many(env, "k", 10)?;
        for id in &more {
            ensure!(pins_of(env, id) == ACCOUNTING_LINKS, "{id} without tetherd");
        }
        for id in ids.iter().chain(&more) {
            env.ctr.force_remove(id)?;
        }
        for id in ids.iter().chain(&more) {
            ensure!(!container_dir(env, id).exists(), "{id} left pins");
        }
        Ok(())
    })
}

#[test]
fn leftovers_of_a_killed_shim_are_collected() -> Result<()> {
    tether("killed_shim", |env| {
        let id = env.id("orphan");
        env.ctr
            .run_container(&env.run(&id).detach().command(["/bin/sleep", "1000"]))?;
        wait_status(env, &id, "RUNNING")?;
        ensure!(pins_of(env, &id) == ACCOUNTING_LINKS);
        let shim = env.shim_of(&id)?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(shim.pid),
            nix::sys::signal::Signal::SIGKILL,
        )?;
        // containerd notices, runs the shim's `delete` action and forgets the task.
        wait_until("the task to go", STATE_TIMEOUT, || {
            Ok(env.ctr.task(&id)?.is_none().then_some(()))
        })?;
        let _ = env.ctr.run(["container", "rm", &id]);
        // containerd runs the shim's `delete` action, whose `runc delete` returns once the
        // orphaned init is reaped (by PID 1: slow on some machines); then the pins go, either
        // by that action or, once the cgroup is gone, by tetherd's garbage collection.
        wait_until("the orphan's pins to go", Duration::from_secs(120), || {
            let _ = tetherctl(env, &["gc"]);
            Ok((!container_dir(env, &id).exists()).then_some(()))
        })?;
        assert_detached(env, &id)?;
        env.assert_no_leaks(&id)
    })
}

/// A CNI bridge network for `ctr run --cni` (ctr 1.6 reads /etc/cni/net.d and
/// /opt/cni/bin): a test-owned subnet on a test-owned bridge, removed on drop together with
/// whatever the test created under /etc/cni and /opt/cni.
struct CniNetwork {
    conf: PathBuf,
    created: Vec<PathBuf>,
    bridge: String,
    _ipam: tempfile::TempDir,
}

const CNI_SUBNET_GW: &str = "10.215.0.1";

impl CniNetwork {
    fn new() -> Result<Self> {
        let mut created = Vec::new();
        for dir in ["/etc/cni", "/etc/cni/net.d", "/opt/cni"] {
            if !std::path::Path::new(dir).exists() {
                std::fs::create_dir(dir)?;
                created.push(PathBuf::from(dir));
            }
        }
        let bin = PathBuf::from("/opt/cni/bin");
        if !bin.exists() {
            std::os::unix::fs::symlink("/usr/lib/cni", &bin)?;
            created.push(bin);
        }
        let ipam = tempfile::tempdir()?;
        let bridge = "tethere2e0".to_string();
        let conf = PathBuf::from("/etc/cni/net.d/00-tether-e2e.conflist");
        let json = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "tether-e2e",
            "plugins": [{
                "type": "bridge",
                "bridge": bridge,
                "isGateway": true,
                "ipMasq": false,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": "10.215.0.0/24", "gateway": CNI_SUBNET_GW}]],
                    "dataDir": ipam.path(),
                }
            }]
        });
        std::fs::write(&conf, serde_json::to_vec_pretty(&json)?)?;
        Ok(CniNetwork {
            conf,
            created,
            bridge,
            _ipam: ipam,
        })
    }
}

impl Drop for CniNetwork {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.conf);
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .status();
        for p in self.created.iter().rev() {
            let _ = std::fs::remove_file(p).or_else(|_| std::fs::remove_dir(p));
        }
    }
}

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
        ensure!(
            pins.iter().filter(|p| p.starts_with("tc_")).count() == 2,
            "eth0 not attached: {pins:?}"
        );
        ensure!(cgroup_pins(&pins) == ACCOUNTING_LINKS, "{pins:?}");
        let counted = wait_until("eth0 to count the pings", Duration::from_secs(10), || {
            let s = stats_of(env, &id)?;
            Ok((interfaces_sum(&s, "tx_packets") >= 3).then_some(s))
        })?;
        eprintln!("{counted}");
        // A namespace named in the spec may be shared (a pod's): counted at the cgroup.
        ensure!(counted["counted_at"] == "cgroup", "{counted}");
        env.ctr.force_remove(&id)?;
        assert_detached(env, &id)?;
        env.assert_no_leaks(&id)?;

        // Asked to count at its interfaces: no cgroup_skb program (connect4 ties the pins
        // to the cgroup's life), the total is the interfaces', loopback is not counted.
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
        ensure!(
            pins.iter().filter(|p| p.starts_with("tc_")).count() == 2,
            "eth0 not attached: {pins:?}"
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
        ensure!((3..=8).contains(&tx), "3 pings (and ARP) sent: {s}");
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
    let clsact = env.containerd().env_var("TETHER_TC_ATTACH") == Some("clsact");
    {
        // A namespace made beforehand, as Kubernetes does for a pod, with a veth in it.
        let ns = format!("tp-{}", env.id("ns"));
        let status = Command::new("ip").args(["netns", "add", &ns]).status()?;
        ensure!(status.success(), "ip netns add");
        struct Ns(String);
        impl Drop for Ns {
            fn drop(&mut self) {
                let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
            }
        }
        let _ns = Ns(ns.clone());
        let s = Command::new("ip")
            .args([
                "-n", &ns, "link", "add", "eth0", "type", "veth", "peer", "name", "eth1",
            ])
            .status()?;
        ensure!(s.success(), "veth in {ns}");
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
                pins == ACCOUNTING_LINKS,
                "clsact pins nothing for TC: {pins:?}"
            );
            ensure!(
                filters("eth0")?.contains("tether_tc_egres"),
                "{}",
                filters("eth0")?
            );
            let s = stats_of(env, &id)?;
            ensure!(s["interfaces"].as_array().map_or(0, Vec::len) == 2, "{s}");
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
            ensure!(clsact == 4, "{mine}");
        } else {
            // eth0 and eth1 of the pod's namespace: two TC links each.
            ensure!(
                pins.iter().filter(|p| p.starts_with("tc_")).count() == 4,
                "{pins:?}"
            );
            ensure!(cgroup_pins(&pins) == ACCOUNTING_LINKS, "{pins:?}");
        }
        // A second container of the pod, in its namespace: the interfaces stay the first
        // one's (its counters are not taken over or zeroed); the second one's attach skips
        // them, and its Create succeeds although its deny rule makes it fail closed.
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
        ensure!(out.code == 0, "{out}");
        wait_status(env, &second, "RUNNING")?;
        let theirs = pins_of(env, &second);
        ensure!(cgroup_pins(&theirs) == POLICY_LINKS, "{theirs:?}");
        ensure!(!theirs.iter().any(|p| p.starts_with("tc_")), "{theirs:?}");
        let interfaces = |id: &str| -> Result<usize> {
            let s = stats_of(env, id)?;
            Ok(s["interfaces"].as_array().map_or(0, Vec::len))
        };
        ensure!(interfaces(&second)? == 0 && interfaces(&id)? == 2);
        env.ctr.force_remove(&second)?;
        assert_detached(env, &second)?;
        ensure!(interfaces(&id)? == 2);
        ensure!(pins_of(env, &id) == pins, "{:?}", pins_of(env, &id));
        env.assert_no_leaks(&second)?;
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

#[test]
fn failure_policy_closed_fails_create_open_runs_and_nothing_hangs() -> Result<()> {
    tether("failure_policy", |env| {
        // Pins missing under a pin root of its own, and a "tetherd" that never answers:
        // every attach waits for the broker until the deadline and fails.
        let dir = tempfile::tempdir()?;
        let hang = dir.path().join("tetherd");
        let pids = dir.path().join("pids");
        std::fs::write(
            &hang,
            format!("#!/bin/sh\necho $$ >> {}\nexec sleep 600\n", pids.display()),
        )?;
        std::fs::set_permissions(&hang, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        let cfg = env.containerd().tether_config();
        let original = std::fs::read_to_string(&cfg)?;
        let broken = original
            .replace(
                &env.containerd().pin_root().display().to_string(),
                &env.containerd()
                    .bpffs_dir()
                    .join("empty")
                    .display()
                    .to_string(),
            )
            .replace(
                &env.containerd().tetherd_socket().display().to_string(),
                &dir.path().join("none.sock").display().to_string(),
            )
            + &format!(
                "[attach]\ndeadline_ms = 700\ntetherd = \"{}\"\n",
                hang.display()
            );
        std::fs::write(&cfg, broken)?;
        struct Restore(PathBuf, String, PathBuf);
        impl Drop for Restore {
            fn drop(&mut self) {
                let _ = std::fs::write(&self.0, &self.1);
                // The stand-ins the shims started: stop them, by the pids they wrote.
                for pid in std::fs::read_to_string(&self.2).unwrap_or_default().lines() {
                    if let Ok(pid) = pid.trim().parse::<i32>() {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                    }
                }
            }
        }
        let _restore = Restore(cfg.clone(), original, pids.clone());

        // Fail-closed (the plan denies something): Create fails with the reason, in time.
        let id = env.id("closed");
        let started = std::time::Instant::now();
        let out = env.ctr.run_container(
            &env.run(&id)
                .rm()
                .flag("--annotation")
                .flag("tether.io/egress-deny=127.0.0.2")
                .command(["/bin/true"]),
        )?;
        ensure!(out.code != 0, "created without its programs: {out}");
        ensure!(out.stderr.contains("tether attach"), "{out}");
        ensure!(
            started.elapsed() < Duration::from_secs(15),
            "create took {:?}",
            started.elapsed()
        );
        let _ = env.ctr.run(["container", "rm", &id]);
        env.assert_no_leaks(&id)?;

        // Fail-open: the container runs without programs.
        let id = env.id("open");
        let out = env.ctr.run_container(
            &env.run(&id)
                .rm()
                .flag("--annotation")
                .flag("tether.io/egress-deny=127.0.0.2")
                .flag("--annotation")
                .flag("tether.io/failure-policy=open")
                .command(["/bin/nc", "127.0.0.2", "9"]),
        )?;
        ensure!(
            out.stderr.contains("Connection refused"),
            "fail-open runs unprotected: {out}"
        );
        env.assert_no_leaks(&id)
    })
}

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
            pins_of(env, &id) == ACCOUNTING_LINKS,
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
