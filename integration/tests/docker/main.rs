//! Docker 20.10 (Debian's dockerd, private) with tether as a runc-compatible runtime
//! (`"runtimes": {"tether": {"path": ".../tether-runc"}}`): the programs are in place before
//! the first instruction, counters are visible with tetherctl, docker exec/stop/rm behave as
//! with runc, and nothing is left after `docker rm`.
use std::process::Command;

use anyhow::{anyhow, ensure, Result};
use tether_integration::dockerd::{Dockerd, BRIDGE_IP, IMAGE};

fn tetherctl(d: &Dockerd, args: &[&str]) -> Result<serde_json::Value> {
    let bin = tether_integration::containerd::tether_shim_binary()?
        .parent()
        .map(|p| p.join("tetherctl"))
        .ok_or_else(|| anyhow!("no tetherctl"))?;
    let out = Command::new(bin)
        .arg("--socket")
        .arg(d.tetherd_socket())
        .arg("--json")
        .args(args)
        .output()?;
    ensure!(
        out.status.success(),
        "tetherctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let rows: Vec<serde_json::Value> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    Ok(serde_json::Value::Array(rows))
}

#[test]
fn docker_run_with_tether_runtime() -> Result<()> {
    // Node-wide deny rule: Docker 20.10 has no `docker run --annotation`.
    let d = Dockerd::start("[attach]\negress_deny = [\"127.0.0.2/32\"]\n")?;

    // The very first instruction connects to the denied address.
    let out = d.docker(&[
        "run",
        "--rm",
        "--runtime",
        "tether",
        IMAGE,
        "nc",
        "127.0.0.2",
        "9",
    ])?;
    ensure!(
        out.code != 0 && out.stderr.contains("Operation not permitted"),
        "denied: {out}"
    );
    let out = d.docker(&[
        "run",
        "--rm",
        "--runtime",
        "tether",
        IMAGE,
        "nc",
        "127.0.0.3",
        "9",
    ])?;
    ensure!(out.stderr.contains("Connection refused"), "allowed: {out}");

    // Exit codes as with runc.
    for runtime in ["runc", "tether"] {
        let out = d.docker(&[
            "run",
            "--rm",
            "--runtime",
            runtime,
            IMAGE,
            "sh",
            "-c",
            "exit 3",
        ])?;
        ensure!(out.code == 3, "{runtime}: {out}");
    }

    // A container on the bridge: its eth0 is attached at create, its pings are counted.
    let id = d
        .ok(&[
            "run",
            "-d",
            "--runtime",
            "tether",
            IMAGE,
            "sh",
            "-c",
            &format!("ping -c 3 -i 0.2 {BRIDGE_IP}; exec sleep 1000"),
        ])?
        .stdout
        .trim()
        .to_string();
    let pins: Vec<String> = std::fs::read_dir(d.container_dir(&id))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    ensure!(
        pins.iter().filter(|p| p.starts_with("tc_")).count() == 2,
        "{pins:?}"
    );
    // Its network namespace is its own, with eth0 at create: counted at eth0 (where TC keys
    // carry the netns cookie). The node's deny rule: every cgroup program, but cgroup_skb
    // ingress, which only counts, when eth0 counts.
    let at_ifaces = tether_bpf::NetnsKey::probe() == tether_bpf::NetnsKey::Cookie;
    let mut want = vec![
        "cgroup_tether_cg_egress",
        "cgroup_tether_connect4",
        "cgroup_tether_connect6",
        "cgroup_tether_sendmsg4",
        "cgroup_tether_sendmsg6",
    ];
    if !at_ifaces {
        want.insert(1, "cgroup_tether_cg_ingress");
    }
    let mut cgroup_pins: Vec<&str> = pins
        .iter()
        .map(String::as_str)
        .filter(|p| p.starts_with("cgroup_"))
        .collect();
    cgroup_pins.sort_unstable();
    ensure!(cgroup_pins == want, "{pins:?}");
    let (row, tx) = tether_integration::wait::wait_until(
        "the pings to be counted",
        std::time::Duration::from_secs(10),
        || {
            let s = tetherctl(&d, &["stats", &id])?;
            let row = s[0].clone();
            let tx: u64 = row["interfaces"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|i| i["tx_packets"].as_u64().unwrap_or(0))
                .sum();
            Ok((tx >= 3).then_some((row, tx)))
        },
    )?;
    ensure!(row["namespace"] == "moby", "{row}");
    if at_ifaces {
        ensure!(
            row["counted_at"] == "interfaces"
                && row["tx_packets"].as_u64() == Some(tx)
                && row["cgroup"]["tx_packets"] == 0,
            "{row}"
        );
    } else {
        ensure!(row["counted_at"] == "cgroup", "{row}");
    }
    // A second network connected to the running container: its new interface is attached.
    d.ok(&[
        "network",
        "create",
        "--subnet",
        "10.217.0.0/24",
        "tether-e2e-net2",
    ])?;
    d.ok(&["network", "connect", "tether-e2e-net2", &id])?;
    tether_integration::wait::wait_until(
        "the new interface to be attached",
        std::time::Duration::from_secs(2),
        || {
            let n = std::fs::read_dir(d.container_dir(&id))?
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("tc_"))
                .count();
            Ok((n == 4).then_some(()))
        },
    )?;
    let out = d.ok(&["exec", &id, "echo", "exec-ok"])?;
    ensure!(out.stdout.contains("exec-ok"), "{out}");
    d.ok(&["stop", "-t", "1", &id])?;
    d.ok(&["rm", &id])?;
    d.ok(&["network", "rm", "tether-e2e-net2"])?;
    ensure!(!d.container_dir(&id).exists(), "pins left after docker rm");
    // Its link watcher exits with it.
    tether_integration::wait::wait_until(
        "the container's link watcher to exit",
        std::time::Duration::from_secs(5),
        || {
            let left = tether_integration::procfs::processes()?
                .into_iter()
                .any(|p| {
                    p.cmdline_string().contains("--tether-watch")
                        && p.cmdline_string().contains(&id)
                });
            Ok((!left).then_some(()))
        },
    )?;
    let live = tetherctl(&d, &["stats"])?;
    ensure!(
        !live.as_array().is_some_and(|a| a
            .iter()
            .any(|r| r["id"] == id.as_str() && r["deleted"] != true)),
        "map entries left after docker rm: {live}"
    );
    Ok(())
}
