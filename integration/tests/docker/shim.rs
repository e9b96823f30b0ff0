//! The shim as Docker >= 23 takes it, over a private containerd (2.1 from
//! `scripts/docker-matrix.sh`): `docker run --runtime io.containerd.tether.v1`, the
//! `daemon.json` `runtimeType` form with a config named in its options, per-container rules
//! from `docker run --annotation`, `--network none|host|bridge`, `docker network connect`
//! after start, exec/stop/rm, and a dockerd restart under `live-restore`.
//!
//! Docker 20.10 cannot run a shim by name: these tests are ignored by default and run with
//! `--include-ignored` when `$TETHER_DOCKER_DIR` names a newer Docker; under 20.10 they fail
//! saying so.
use std::time::Duration;

use anyhow::{bail, ensure, Result};
use tether_integration::dockerd::{Dockerd, Setup, IMAGE, TETHER, TETHER_RUNC, TETHER_SHIM};
use tether_integration::{procfs, wait};

use super::{
    assert_gone, denied, id_of, nc, pins, refused, tc_pins, tetherctl, tx_counted, wait_counted,
};

const IGNORED: &str = "needs Docker >= 23: set TETHER_DOCKER_DIR (scripts/docker-matrix.sh)";
const DENY_2: &str = "tether.io/egress-deny=127.0.0.2/32";

fn start(setup: Setup) -> Result<Dockerd> {
    let engine = tether_integration::dockerd::engine()?;
    if !engine.runs_shims() {
        bail!(
            "Docker {} runs no containerd shim by name: {IGNORED}",
            engine.version
        );
    }
    Dockerd::start_with(setup)
}

/// The cgroup programs a container gets (deny rules: the sock_addr ones too).
fn cgroup_pins(pins: &[String]) -> Vec<&str> {
    pins.iter()
        .map(String::as_str)
        .filter(|p| p.starts_with("cgroup_"))
        .collect()
}

#[test]
#[ignore = "needs Docker >= 23: set TETHER_DOCKER_DIR (scripts/docker-matrix.sh)"]
fn docker_shim_runtime_annotations_and_daemon_json() -> Result<()> {
    // daemon.json's `tether` runtime names a config (options.ConfigPath) that denies
    // 127.0.0.4; the node config, which `--runtime io.containerd.tether.v1` reads, does not.
    let d = start(Setup {
        runtime_toml: "[attach]\negress_deny = [\"127.0.0.4/32\"]\n".into(),
        ..Setup::default()
    })?;
    // A deny rule from `docker run --annotation`, in place before the first instruction.
    let ann = ["--annotation", DENY_2];
    let out = nc(&d, TETHER_SHIM, &ann, "127.0.0.2")?;
    ensure!(denied(&out), "annotated: {out}");
    let out = nc(&d, TETHER_SHIM, &[], "127.0.0.2")?;
    ensure!(refused(&out), "no annotation: {out}");
    // The daemon.json form: its config reached the shim through the runtime options.
    let out = nc(&d, TETHER, &[], "127.0.0.4")?;
    ensure!(denied(&out), "daemon.json runtime: {out}");
    let out = nc(&d, TETHER_SHIM, &[], "127.0.0.4")?;
    ensure!(refused(&out), "node config: {out}");
    let out = nc(&d, TETHER, &ann, "127.0.0.2")?;
    ensure!(denied(&out), "daemon.json runtime with annotation: {out}");
    // A bad annotation fails the run with tether's reason, naming key and value.
    let out = nc(
        &d,
        TETHER_SHIM,
        &["--annotation", "tether.io/egress-deny=banana"],
        "127.0.0.2",
    )?;
    ensure!(
        out.code != 0
            && out.stderr.contains("tether.io/egress-deny")
            && out.stderr.contains("banana"),
        "bad annotation: {out}"
    );
    // Exit codes as with runc, through every way of naming tether.
    for runtime in ["runc", TETHER_SHIM, TETHER, TETHER_RUNC] {
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
    // `--rm` left nothing: no container pins, no shim.
    let Some(cd) = d.containerd() else {
        bail!("Docker >= 23 runs over the fixture's containerd")
    };
    wait::wait_until("the shims to exit", Duration::from_secs(15), || {
        Ok(cd.shim_processes()?.is_empty().then_some(()))
    })?;
    let left: Vec<_> = std::fs::read_dir(d.pin_root().join("containers/moby"))
        .map(|r| r.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    ensure!(left.is_empty(), "pins left after --rm: {left:?}");
    Ok(())
}

#[test]
#[ignore = "needs Docker >= 23: set TETHER_DOCKER_DIR (scripts/docker-matrix.sh)"]
fn docker_shim_network_modes_and_late_interface() -> Result<()> {
    let d = start(Setup::default())?;
    let ann = ["--annotation", DENY_2];
    // The annotation's deny rule holds in every network mode: it is at the cgroup.
    for net in ["none", "host", "bridge"] {
        let mut extra = ann.to_vec();
        extra.extend(["--network", net]);
        let out = nc(&d, TETHER_SHIM, &extra, "127.0.0.2")?;
        ensure!(denied(&out), "--network {net}: {out}");
    }
    // none: a netns of its own with only lo: no TC program, counted at the cgroup (loopback
    // included). host: the host's netns, whose interfaces tether leaves alone. The traffic is
    // three TCP SYNs, not ping: on a host network without BPF LSM a container under a policy
    // runs without CAP_NET_RAW, and busybox's ping needs a raw socket (README: What a deny
    // rule enforces).
    for net in ["none", "host"] {
        let id = id_of(&d.ok(&[
            "run",
            "-d",
            "--runtime",
            TETHER_SHIM,
            ann[0],
            ann[1],
            "--network",
            net,
            IMAGE,
            "sh",
            "-c",
            "for i in 1 2 3; do nc 127.0.0.1 9; done; exec sleep 1000",
        ])?);
        let p = pins(&d, &id)?;
        ensure!(tc_pins(&p) == 0, "--network {net}: {p:?}");
        ensure!(
            cgroup_pins(&p).contains(&"cgroup_tether_connect4"),
            "--network {net}: {p:?}"
        );
        let row = wait_counted(&d, &id, 3)?;
        ensure!(row["counted_at"] == "cgroup", "--network {net}: {row}");
        d.ok(&["rm", "-f", &id])?;
        assert_gone(&d, &id)?;
    }
    // bridge: eth0 attached by start, its pings counted there (with netns-cookie keys).
    let bridge_ip = d.bridge_ip();
    let id = id_of(&d.ok(&[
        "run",
        "-d",
        "--runtime",
        TETHER_SHIM,
        ann[0],
        ann[1],
        IMAGE,
        "sh",
        "-c",
        &format!("ping -c 3 -i 0.2 {bridge_ip}; exec sleep 1000"),
    ])?);
    let p = pins(&d, &id)?;
    ensure!(tc_pins(&p) == 2, "{p:?}");
    // Judged where it is counted (`judge_at = "auto"`): at eth0, with no cgroup_skb egress
    // program. Docker 28 sets the network up after the task is created, before it starts
    // (before 28 a prestart hook did it during `runc create`): the shim moves the container
    // to eth0 at start.
    ensure!(
        !cgroup_pins(&p).contains(&"cgroup_tether_cg_egress"),
        "{p:?}"
    );
    let row = wait_counted(&d, &id, 3)?;
    ensure!(row["namespace"] == "moby", "{row}");
    ensure!(
        row["counted_at"] == "interfaces" && super::iface_tx(&row) >= 3,
        "{row}"
    );
    // A network connected after start: its interface is attached by the shim's watcher.
    let net = format!("tether-e2e-{}", d.bridge());
    d.ok(&["network", "create", "--subnet", &d.spare_subnet(), &net])?;
    d.ok(&["network", "connect", &net, &id])?;
    wait::wait_until(
        "the new interface to be attached",
        Duration::from_secs(5),
        || Ok((tc_pins(&pins(&d, &id)?) == 4).then_some(())),
    )?;
    // Traffic on the new interface is counted too: ping its network's gateway.
    let gw = d.spare_subnet().replace(".0/24", ".1");
    let before = tx_counted(&tetherctl(&d, &["stats", &id])?[0]);
    let out = d.ok(&["exec", &id, "ping", "-c", "2", "-i", "0.2", &gw])?;
    ensure!(out.stdout.contains("2 packets received"), "{out}");
    wait_counted(&d, &id, before + 2)?;
    let out = d.ok(&["exec", &id, "echo", "exec-ok"])?;
    ensure!(out.stdout.contains("exec-ok"), "{out}");
    // exec'd processes are in the container's cgroup: the deny rule holds for them.
    let out = d.docker(&["exec", &id, "nc", "127.0.0.2", "9"])?;
    ensure!(denied(&out), "exec: {out}");
    d.ok(&["stop", "-t", "1", &id])?;
    d.ok(&["rm", &id])?;
    d.ok(&["network", "rm", &net])?;
    assert_gone(&d, &id)?;
    Ok(())
}

#[test]
#[ignore = "needs Docker >= 23: set TETHER_DOCKER_DIR (scripts/docker-matrix.sh)"]
fn docker_live_restore_keeps_containers_attached() -> Result<()> {
    let mut d = start(Setup {
        live_restore: true,
        ..Setup::default()
    })?;
    let bridge_ip = d.bridge_ip();
    // One container through the shim, one through tether-runc (and runc's shim).
    let mut ids = Vec::new();
    for runtime in [TETHER_SHIM, TETHER_RUNC] {
        let mut args = vec!["run", "-d", "--runtime", runtime];
        if runtime == TETHER_SHIM {
            args.extend(["--annotation", DENY_2]);
        }
        args.extend([IMAGE, "sleep", "1000"]);
        ids.push(id_of(&d.ok(&args)?));
    }
    let state = |d: &Dockerd, id: &str| -> Result<String> {
        Ok(
            d.ok(&["inspect", "-f", "{{.State.Running}} {{.State.Pid}}", id])?
                .stdout
                .trim()
                .to_string(),
        )
    };
    let mut before = Vec::new();
    for id in &ids {
        d.ok(&["exec", id, "ping", "-c", "2", "-i", "0.2", &bridge_ip])?;
        wait_counted(&d, id, 2)?;
        before.push((state(&d, id)?, pins(&d, id)?));
    }
    let shims: Vec<i32> = shim_pids(&d)?;
    let old_pid = d.pid();
    d.restart()?;
    ensure!(d.pid() != old_pid, "dockerd was not restarted");
    for (id, (st, p)) in ids.iter().zip(&before) {
        // The same process, the same attachments.
        ensure!(st.starts_with("true "), "{id} before: {st}");
        ensure!(
            state(&d, id)? == *st,
            "{id} after restart: {}",
            state(&d, id)?
        );
        ensure!(pins(&d, id)? == *p, "{id}: pins changed");
        // Counting goes on, exec and the deny rule work after the restart.
        let sent = tx_counted(&tetherctl(&d, &["stats", id])?[0]);
        d.ok(&["exec", id, "ping", "-c", "2", "-i", "0.2", &bridge_ip])?;
        wait_counted(&d, id, sent + 2)?;
    }
    ensure!(
        shim_pids(&d)? == shims,
        "the shims changed across the restart"
    );
    let out = d.docker(&["exec", &ids[0], "nc", "127.0.0.2", "9"])?;
    ensure!(denied(&out), "after restart: {out}");
    for id in &ids {
        d.ok(&["stop", "-t", "1", id])?;
        d.ok(&["rm", id])?;
        assert_gone(&d, id)?;
    }
    Ok(())
}

/// The pids of the shims serving the daemon's containerd, sorted.
fn shim_pids(d: &Dockerd) -> Result<Vec<i32>> {
    let Some(cd) = d.containerd() else {
        bail!("no private containerd")
    };
    let mut p: Vec<i32> = cd
        .shim_processes()?
        .into_iter()
        .filter(|s| procfs::is_alive(s.pid).unwrap_or(false))
        .map(|s| s.pid)
        .collect();
    p.sort_unstable();
    Ok(p)
}
