//! `tether-runc` as Docker's runc-compatible runtime (`"runtimes": {"tether-runc": {"path":
//! ...}}`), on every Docker release: the programs are in place before the first instruction,
//! counters are visible with tetherctl, a network connected later is attached, docker
//! exec/stop/rm behave as with runc, and nothing is left after `docker rm`.
use anyhow::{ensure, Result};
use tether_integration::dockerd::{Dockerd, IMAGE, TETHER_RUNC};

use super::{assert_gone, denied, id_of, nc, pins, refused, tc_pins, tetherctl, wait_counted};

#[test]
fn docker_run_with_tether_runc() -> Result<()> {
    // Node-wide deny rule: Docker 20.10 has no `docker run --annotation`.
    let d = Dockerd::start("[attach]\negress_deny = [\"127.0.0.2/32\"]\n")?;

    // The very first instruction connects to the denied address.
    let out = nc(&d, TETHER_RUNC, &[], "127.0.0.2")?;
    ensure!(denied(&out), "denied: {out}");
    let out = nc(&d, TETHER_RUNC, &[], "127.0.0.3")?;
    ensure!(refused(&out), "allowed: {out}");

    // Exit codes as with runc.
    for runtime in ["runc", TETHER_RUNC] {
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
    let bridge_ip = d.bridge_ip();
    let id = id_of(&d.ok(&[
        "run",
        "-d",
        "--runtime",
        TETHER_RUNC,
        IMAGE,
        "sh",
        "-c",
        &format!("ping -c 3 -i 0.2 {bridge_ip}; exec sleep 1000"),
    ])?);
    let pins_now = pins(&d, &id)?;
    ensure!(tc_pins(&pins_now) == 2, "{pins_now:?}");
    // Its network namespace is its own, with eth0 by start: there at create (Docker 20.10's
    // prestart hook), or added between create and start (Docker 28), when `tether-runc
    // start` moves it from its cgroup to eth0 before its first instruction. Counted at eth0,
    // it is judged there too (`judge_at = "auto"`): the node's deny rule takes every cgroup
    // program but the two cgroup_skb ones.
    let want = [
        "cgroup_tether_connect4",
        "cgroup_tether_connect6",
        "cgroup_tether_sendmsg4",
        "cgroup_tether_sendmsg6",
        "cgroup_tether_setsockopt",
    ];
    let cgroup_pins: Vec<&str> = pins_now
        .iter()
        .map(String::as_str)
        .filter(|p| p.starts_with("cgroup_"))
        .collect();
    ensure!(cgroup_pins == want, "{pins_now:?}");
    let row = wait_counted(&d, &id, 3)?;
    ensure!(row["namespace"] == "moby", "{row}");
    ensure!(
        row["counted_at"] == "interfaces"
            && row["tx_packets"].as_u64() == Some(super::tx_counted(&row))
            && row["cgroup"]["tx_packets"] == 0,
        "{row}"
    );
    // A second network connected to the running container: its new interface is attached.
    let net = format!("tether-e2e-{}", d.bridge());
    d.ok(&["network", "create", "--subnet", &d.spare_subnet(), &net])?;
    d.ok(&["network", "connect", &net, &id])?;
    tether_integration::wait::wait_until(
        "the new interface to be attached",
        std::time::Duration::from_secs(2),
        || Ok((tc_pins(&pins(&d, &id)?) == 4).then_some(())),
    )?;
    let out = d.ok(&["exec", &id, "echo", "exec-ok"])?;
    ensure!(out.stdout.contains("exec-ok"), "{out}");
    d.ok(&["stop", "-t", "1", &id])?;
    d.ok(&["rm", &id])?;
    d.ok(&["network", "rm", &net])?;
    // Pins, the link watcher (`tether-runc --tether-watch ... ID`), cgroup, map entries.
    assert_gone(&d, &id)?;
    let rows = tetherctl(&d, &["stats"])?;
    ensure!(
        rows.iter().all(|r| r["deleted"] == true),
        "live entries left: {rows:?}"
    );
    Ok(())
}
