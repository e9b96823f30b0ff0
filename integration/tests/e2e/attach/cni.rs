//! CNI pods: the bridge network the tests give `ctr run --cni`, and twenty pods started at
//! once, each in its own network namespace with an `eth0` of the same ifindex (2), each
//! counted at its interface and held to its own deny rule. On kernels before 6.2 the TC
//! programs cannot read a namespace's cookie and key interfaces by their filters' classid:
//! this is the test that every pod still gets a key of its own.

use std::path::PathBuf;
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{ensure, Result};
use tether_integration::{Runtime, TestEnv};

use super::{lo_tc, stats_of, tether, tetherctl};
use crate::common::*;

/// A CNI bridge network for `ctr run --cni` (ctr 1.6 reads /etc/cni/net.d and
/// /opt/cni/bin): a test-owned subnet on a test-owned bridge, removed on drop together with
/// whatever the test created under /etc/cni and /opt/cni.
pub(super) struct CniNetwork {
    conf: PathBuf,
    created: Vec<PathBuf>,
    bridge: String,
    _ipam: tempfile::TempDir,
    /// One network at a time: the tests of this binary share its config file and bridge.
    _one: MutexGuard<'static, ()>,
}

static ONE_NETWORK: Mutex<()> = Mutex::new(());

pub(super) const CNI_SUBNET_GW: &str = "10.215.0.1";

impl CniNetwork {
    pub(super) fn new() -> Result<Self> {
        let one = ONE_NETWORK.lock().unwrap_or_else(|e| e.into_inner());
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
            _one: one,
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

/// Twenty pods at once on one bridge: even ones deny the bridge's gateway, odd ones do not;
/// each pings it three times as its first instruction. Every pod starts (none refused for
/// its `eth0`'s ifindex) counted and judged at `eth0`, which arrived between create and
/// start; the odd ones reach the gateway and are counted there, the even ones' pings are
/// dropped there and counted as dropped, and nothing is left behind.
#[test]
fn twenty_cni_pods_are_each_counted_and_enforced() -> Result<()> {
    tether("cni20", twenty_pods)
}

/// The same with the keys of kernels before 6.2 (filter classid, ifindex), on any kernel.
#[test]
fn twenty_cni_pods_are_each_counted_and_enforced_with_classid_keys() -> Result<()> {
    let mut env = TestEnv::with_env(
        Runtime::Tether,
        "cni20c",
        vec![("TETHER_NETNS_KEY".into(), "classid".into())],
    )?;
    twenty_pods(&mut env)
}

fn twenty_pods(env: &mut TestEnv) -> Result<()> {
    {
        let _net = CniNetwork::new()?;
        const PODS: usize = 20;
        let ids: Vec<String> = (0..PODS).map(|_| env.id("pod")).collect();
        let runs: Vec<_> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let mut run = env
                    .run(id)
                    .rm()
                    .flag("--cni")
                    .timeout(Duration::from_secs(300));
                if i % 2 == 0 {
                    run = run
                        .flag("--annotation")
                        .flag(format!("tether.io/egress-deny={CNI_SUBNET_GW}/32"));
                }
                spawn_run(
                    env,
                    run.sh(&format!(
                        "if out=$(ping -c 3 -i 0.2 -W 2 {CNI_SUBNET_GW} 2>&1); \
                         then echo reached; else echo blocked; echo \"$out\"; fi"
                    )),
                )
            })
            .collect();
        let mut outputs = Vec::new();
        for (id, r) in ids.iter().zip(runs) {
            let out = join(r)?;
            ensure!(out.success(), "{id} did not run: {out}");
            outputs.push(out);
        }
        let (mut reached, mut blocked) = (0, 0);
        for (i, (id, out)) in ids.iter().zip(&outputs).enumerate() {
            let row = stats_of(env, id)?;
            let ifaces = row["interfaces"].as_array().cloned().unwrap_or_default();
            // eth0, and lo where TC stands in for blind cgroup programs (lo is ifindex 1).
            ensure!(
                ifaces.len() == 1 + lo_tc(),
                "{id}: one interface, eth0: {row}"
            );
            let eth0 = ifaces
                .iter()
                .find(|i| i["ifindex"] != 1)
                .cloned()
                .unwrap_or_default();
            // eth0 arrives between create and start (ctr runs CNI then): `auto` counts
            // the pod at its interfaces from its first instruction, and judges it there.
            ensure!(row["counted_at"] == "interfaces", "{id}: {row}");
            if i % 2 == 0 {
                // Dropped at TC, which gives the sender no error: ping's raw socket sees
                // no EPERM (the cgroup egress program, which would give it, is not
                // attached). Where the cgroup programs are blind and there is no BPF LSM
                // the container has no CAP_NET_RAW (no cgroup hook refuses
                // PACKET_QDISC_BYPASS), so ping's raw socket is refused (ctr leaves ICMP
                // datagram sockets off: ping_group_range).
                let refused_socket = lo_tc() == 1 && out.stdout.contains("permission denied");
                ensure!(
                    out.stdout.starts_with("blocked")
                        && !out.stdout.contains("Operation not permitted"),
                    "{id} denies the gateway: {out}"
                );
                // ping's packets are dropped (a denied connect would count as a denial).
                ensure!(
                    refused_socket || row["drops"].as_u64() >= Some(1),
                    "{id}: {row}"
                );
                blocked += 1;
            } else {
                ensure!(
                    out.stdout.starts_with("reached"),
                    "{id} reaches the gateway: {out}"
                );
                ensure!(
                    eth0["tx_packets"].as_u64() >= Some(3),
                    "{id}: 3 pings counted at eth0: {row}"
                );
                ensure!(row["denials"] == 0 && row["drops"] == 0, "{id}: {row}");
                reached += 1;
            }
        }
        let mode = tetherctl(env, &["status"])?["netns_cookie_mode"].clone();
        eprintln!(
            "{PODS} pods: {reached} reached the gateway, {blocked} were denied; keys: {mode}"
        );
        // Every pod had a key of its own: as many distinct keys as pods.
        let stats = tetherctl(env, &["stats"])?;
        let mut keys = std::collections::BTreeSet::new();
        for row in stats.as_array().into_iter().flatten() {
            if ids.iter().any(|id| row["id"] == id.as_str()) {
                for i in row["interfaces"].as_array().into_iter().flatten() {
                    keys.insert((i["netns_cookie"].as_u64(), i["ifindex"].as_u64()));
                }
            }
        }
        ensure!(
            keys.len() == PODS * (1 + lo_tc()),
            "{} keys for {PODS} pods: {keys:?}",
            keys.len()
        );
        for id in &ids {
            env.assert_no_leaks(id)?;
        }
        let ps = tetherctl(env, &["ps"])?;
        ensure!(
            ps.as_array().is_none_or(|a| a.is_empty()),
            "tracked after --rm: {ps}"
        );
    }
    Ok(())
}
