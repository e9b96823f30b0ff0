//! A pod's life under the `tether` handler, driven as kubelet drives it, beside a peer pod
//! under `runc` that serves it and is the control run.

use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use tether_integration::cri::{CriNode, RUNC_HANDLER, TETHER_HANDLER};
use tether_integration::wait::wait_until;

use super::{assert_pod_gone, on_node, stats_row, tc_attachments};
use crate::attach::tetherctl_at;

/// The port the peer pod serves: every connection's bytes go to a sink.
const PORT: u16 = 8080;
const SERVE: &str = "printf '#!/bin/sh\\ncat > /dev/null\\n' > /tmp/sink; chmod +x /tmp/sink; \
                     exec nc -ll -p 8080 -e /tmp/sink";
/// What each container of the tether pod sends the peer.
const FIRST_BYTES: u64 = 200_000;
const SECOND_BYTES: u64 = 50_000;
/// The bytes of an Ethernet header: TC counts frames, the cgroup programs IP packets.
const ETH_HLEN: u64 = 14;

#[test]
fn pod_life_under_tether() -> Result<()> {
    on_node("pod_life_under_tether", pod_life)
}

fn pod_life(node: &CriNode) -> Result<()> {
    let gw = node.gateway();
    let cri = &node.cri;

    // The peer: a runc pod serving PORT, and its control probe of the address the tether
    // pod is denied: from runc's pod it gets through.
    let peer_cfg = node.pod_config("peer", &[])?;
    let peer = cri.run_pod(&peer_cfg, RUNC_HANDLER)?;
    let peer_ip = cri.pod_ip(&peer)?;
    let server = cri.create_container(
        &peer,
        &node.container_config("server", SERVE, &[]),
        &peer_cfg,
    )?;
    cri.start_container(&server)?;
    let control = cri.create_container(
        &peer,
        &node.container_config("control", &format!("nc -w 3 {gw} 9; echo rc=$?"), &[]),
        &peer_cfg,
    )?;
    cri.start_container(&control)?;

    // The tether pod: its annotation denies the gateway; the first instruction of each of
    // its containers tries it. Then each container sends the peer its own amount.
    let app_cfg = node.pod_config("app", &[("tether.io/egress-deny", &gw)])?;
    let app = cri.run_pod(&app_cfg, TETHER_HANDLER)?;
    let send =
        |bytes| format!("head -c {bytes} /dev/zero | nc -w 3 {peer_ip} {PORT}; echo sent=$?");
    let first = cri.create_container(
        &app,
        &node.container_config(
            "first",
            &format!(
                "nc -w 3 {gw} 9; echo rc=$?; {}; sleep 1000",
                send(FIRST_BYTES)
            ),
            &[],
        ),
        &app_cfg,
    )?;
    let second = cri.create_container(
        &app,
        &node.container_config(
            "second",
            &format!(
                "nc -w 3 {gw} 9; echo rc=$?; {}; sleep 1000",
                send(SECOND_BYTES)
            ),
            &[],
        ),
        &app_cfg,
    )?;
    cri.start_container(&first)?;
    cri.start_container(&second)?;

    let (f, s, c) = wait_until(
        "the pods' containers to finish",
        Duration::from_secs(30),
        || {
            let f = node.log_of("app", "first")?;
            let s = node.log_of("app", "second")?;
            let c = node.log_of("peer", "control")?;
            Ok(
                (f.contains("sent=") && s.contains("sent=") && c.contains("rc="))
                    .then_some((f, s, c)),
            )
        },
    )
    .context("the pods' containers")?;
    ensure!(
        c.contains("Connection refused"),
        "control: runc's pod does not reach {gw}: {c}"
    );
    if crate::attach::blind() {
        return blind_pod(node, [&app, &first, &second], &peer, [&f, &s]);
    }
    for log in [&f, &s] {
        ensure!(
            log.contains("Operation not permitted") && !log.contains("Connection refused"),
            "the pod's deny annotation did not hold from the first instruction: {log}"
        );
    }
    ensure!(
        f.contains("sent=0") && s.contains("sent=0"),
        "sending to the peer: {f} / {s}"
    );

    // Per container, in the pod's shared netns: each counted at its cgroup, the sandbox
    // at the pod's eth0, the two adding up to the interface's totals.
    let fr = stats_row(node, &first)?;
    let sr = stats_row(node, &second)?;
    let pod = stats_row(node, &app)?;
    eprintln!("tetherctl stats:\n{fr}\n{sr}\n{pod}");
    for (row, bytes) in [(&fr, FIRST_BYTES), (&sr, SECOND_BYTES)] {
        ensure!(row["counted_at"] == "cgroup", "{row}");
        ensure!(
            row["tx_bytes"].as_u64().unwrap_or(0) >= bytes,
            "not all {bytes} bytes counted: {row}"
        );
    }
    for row in [&fr, &sr] {
        ensure!(
            row["denials"] == 1,
            "the denied connect is not counted: {row}"
        );
    }
    let eth0 = pod["interfaces"]
        .as_array()
        .and_then(|a| a.iter().find(|i| i["name"] == "eth0"))
        .cloned()
        .with_context(|| format!("the pod's eth0 is not counted: {pod}"))?;
    let n = |v: &serde_json::Value, k: &str| v[k].as_u64().unwrap_or(0);
    let (sum_bytes, sum_packets) = (
        n(&fr, "tx_bytes") + n(&sr, "tx_bytes"),
        n(&fr, "tx_packets") + n(&sr, "tx_packets"),
    );
    // eth0 sends the containers' packets with their Ethernet headers, and what the kernel
    // sends for the pod itself (ARP, IPv6 neighbour discovery and MLD: a few frames of at
    // most 128 bytes).
    let extra = n(&eth0, "tx_packets").saturating_sub(sum_packets);
    let framed = sum_bytes + ETH_HLEN * sum_packets;
    ensure!(
        n(&eth0, "tx_packets") >= sum_packets
            && extra <= 4
            && (framed..=framed + 128 * extra).contains(&n(&eth0, "tx_bytes")),
        "the containers' {sum_packets} packets, {sum_bytes} bytes, do not add up to eth0's: {eth0}"
    );

    // Names a Kubernetes user knows: every row carries its pod, namespace and container
    // (none for the sandbox); `--pod` sums the pod.
    for (row, container) in [(&fr, "first"), (&sr, "second"), (&pod, "")] {
        let want =
            serde_json::json!({"namespace": "tether-test", "pod": "app", "container": container});
        ensure!(row["kubernetes"] == want, "names: {row}");
    }
    let summed = tetherctl_at(
        node.containerd(),
        &["stats", "--pod", "app", "--namespace", "tether-test"],
    )?;
    let rows = summed.as_array().context("stats --pod")?;
    let total = rows.last().context("no total line")?;
    ensure!(
        rows.len() == 4
            && total["total"] == true
            && total["containers"] == 3
            && total["tx_bytes"].as_u64() >= Some(n(&fr, "tx_bytes") + n(&sr, "tx_bytes")),
        "stats --pod app: {summed}"
    );
    // Prometheus: the series as cAdvisor labels a pod's containers.
    let metrics = node.scrape_metrics()?;
    eprintln!(
        "tetherctl stats --pod app --namespace tether-test:\n{}\n/metrics, the pod's tx bytes:\n{}",
        tetherctl_text(
            node,
            &["stats", "--pod", "app", "--namespace", "tether-test"]
        )?,
        metrics
            .lines()
            .filter(
                |l| l.starts_with("tether_container_tx_bytes_total") && l.contains("pod=\"app\"")
            )
            .collect::<Vec<_>>()
            .join("\n")
    );
    let series = format!(
        "tether_container_tx_bytes_total{{id=\"{first}\",containerd_namespace=\"k8s.io\",\
         namespace=\"tether-test\",pod=\"app\",container=\"first\"}} "
    );
    let value: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix(&series))
        .with_context(|| format!("no {series} in\n{metrics}"))?
        .trim()
        .parse()?;
    ensure!(value >= n(&fr, "tx_bytes"), "{series}{value} < {fr}");
    // The audit log names the pod of the denied connect.
    let audit = wait_until(
        "the denial in the audit log",
        Duration::from_secs(10),
        || {
            Ok(node
                .audit_log()
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .find(|e| e["id"] == first.as_str()))
        },
    )?;
    ensure!(
        audit["kind"] == "deny_connect"
            && audit["kubernetes"]["pod"] == "app"
            && audit["kubernetes"]["container"] == "first",
        "audit: {audit}"
    );

    // ExecSync runs under the pod's rule too, and answers.
    let out = cri.exec_sync(&second, &["nc", "-w", "3", &gw, "9"], 10)?;
    ensure!(
        out.exit_code != 0 && out.stderr.contains("Operation not permitted"),
        "exec: {out:?}"
    );
    let out = cri.exec_sync(&second, &["echo", "hello"], 10)?;
    ensure!(
        out.exit_code == 0 && out.stdout == "hello\n",
        "exec: {out:?}"
    );

    // A second interface in the running pod's netns, as a multi-network plugin adds one,
    // gets its programs.
    let netns = cri.pod_netns(&app)?;
    let before = tc_attachments(node, &app)?.len();
    let host_end = format!("tcrix{}", std::process::id() % 100_000);
    ip(&[
        "link", "add", &host_end, "type", "veth", "peer", "name", "net1",
    ])?;
    let moved = netns
        .rsplit('/')
        .next()
        .context("netns path")
        .and_then(|name| ip(&["link", "set", "net1", "netns", name]));
    let attached = moved.and_then(|()| {
        wait_until("net1 to get its programs", Duration::from_secs(10), || {
            let now = tc_attachments(node, &app)?.len();
            Ok((now == 2 * before).then_some(now))
        })
    });
    let ps = tetherctl_at(node.containerd(), &["ps"]);
    let _ = ip(&["link", "delete", &host_end]);
    attached.with_context(|| format!("a second interface in the pod's netns: {ps:?}"))?;

    // Stop and remove, as kubelet does: nothing of the pod is left.
    for id in [&first, &second] {
        cri.stop_container(id, 2)?;
    }
    cri.stop_pod(&app)?;
    cri.remove_pod(&app)?;
    assert_pod_gone(node, &[&app, &first, &second], &netns)?;
    // A removed pod's series go with it.
    let metrics = node.scrape_metrics()?;
    ensure!(
        !metrics.contains("pod=\"app\""),
        "series of the removed pod are left:\n{metrics}"
    );
    cri.tear_down_pod(&peer)?;
    Ok(())
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip")?;
    ensure!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// `tetherctl ARGS` as a user reads it (tables).
fn tetherctl_text(node: &CriNode, args: &[&str]) -> Result<String> {
    crate::attach::tetherctl_text_at(node.containerd(), args)
}

/// The pod on a node whose cgroup programs are blind to sockets: its containers carry the
/// pod's rule, which the sandbox's programs at the pod's interfaces enforce (the kernel does
/// not tell the containers' packets apart there). The denied connect's SYN is dropped
/// (a timeout, not EPERM), the sends get through, and the pod's eth0 counts all of it.
fn blind_pod(node: &CriNode, ids: [&str; 3], peer: &str, logs: [&String; 2]) -> Result<()> {
    let app = ids[0];
    let cri = &node.cri;
    for log in logs {
        ensure!(
            !log.contains("Connection refused") && !log.contains("rc=0"),
            "the pod's deny annotation did not hold from the first instruction: {log}"
        );
        ensure!(log.contains("sent=0"), "sending to the peer: {log}");
    }
    let pod = stats_row(node, app)?;
    eprintln!("tetherctl stats, the sandbox:\n{pod}");
    let eth0 = pod["interfaces"]
        .as_array()
        .and_then(|a| a.iter().find(|i| i["name"] == "eth0"))
        .cloned()
        .with_context(|| format!("the pod's eth0 is not counted: {pod}"))?;
    let n = |v: &serde_json::Value, k: &str| v[k].as_u64().unwrap_or(0);
    ensure!(
        n(&eth0, "tx_bytes") >= FIRST_BYTES + SECOND_BYTES,
        "the containers' bytes are not counted at the pod's eth0: {eth0}"
    );
    ensure!(
        n(&eth0, "drops") >= 2,
        "the two denied SYNs are not counted as drops: {eth0}"
    );
    let netns = cri.pod_netns(app)?;
    cri.tear_down_pod(app)?;
    assert_pod_gone(node, &ids, &netns)?;
    cri.tear_down_pod(peer)
}
