//! Docker with tether, against a private dockerd (see `tether_integration::dockerd`): the
//! system's Docker 20.10, or the one `$TETHER_DOCKER_DIR` names (`scripts/docker-matrix.sh`
//! runs both).
//!
//! - [`runc_compat`]: `tether-runc` as a runc-compatible runtime, on every Docker release.
//! - [`shim`]: the shim as Docker >= 23 takes it (`--runtime io.containerd.tether.v1`, the
//!   `daemon.json` `runtimeType` form, `--annotation`), every network mode, a late interface,
//!   and a dockerd restart under `live-restore`. Docker 20.10 has no shim runtimes: these
//!   are `#[ignore]`d by default and run with `--include-ignored` against a newer Docker.
//!
//! Every container's traffic goes to loopback or to the bridges the fixture made.
use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, ensure, Result};
use tether_integration::dockerd::Dockerd;
use tether_integration::{cgroup, procfs, wait};

mod runc_compat;
mod shim;

/// `tetherctl --json ARGS` against the daemon's tetherd: one JSON value per line.
pub fn tetherctl(d: &Dockerd, args: &[&str]) -> Result<Vec<serde_json::Value>> {
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
    Ok(text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?)
}

/// The names of a container's pins, sorted.
pub fn pins(d: &Dockerd, id: &str) -> Result<Vec<String>> {
    let mut p: Vec<String> = std::fs::read_dir(d.container_dir(id))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    p.sort_unstable();
    Ok(p)
}

/// How many TC programs (one per interface and direction) a container has pinned.
pub fn tc_pins(pins: &[String]) -> usize {
    pins.iter().filter(|p| p.starts_with("tc_")).count()
}

/// Packets sent that the TC programs of the container's interfaces counted.
pub fn iface_tx(row: &serde_json::Value) -> u64 {
    row["interfaces"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| i["tx_packets"].as_u64().unwrap_or(0))
        .sum()
}

/// Packets sent that tether counted for `id`, wherever it counts them: the interfaces' TC
/// counters when it counts at the interfaces, else the cgroup's.
pub fn tx_counted(row: &serde_json::Value) -> u64 {
    if row["counted_at"] == "interfaces" {
        iface_tx(row)
    } else {
        row["tx_packets"].as_u64().unwrap_or(0)
    }
}

/// Waits until at least `min` packets sent by `id` are counted; returns its stats row.
pub fn wait_counted(d: &Dockerd, id: &str, min: u64) -> Result<serde_json::Value> {
    wait::wait_until(
        &format!("{min} packets of {id} to be counted"),
        Duration::from_secs(10),
        || {
            let rows = tetherctl(d, &["stats", id])?;
            let row = rows.first().cloned().ok_or_else(|| anyhow!("no row"))?;
            Ok((tx_counted(&row) >= min).then_some(row))
        },
    )
}

/// The container's full id from `docker run -d` / `docker create` output.
pub fn id_of(out: &tether_integration::Output) -> String {
    out.stdout.trim().to_string()
}

/// After `docker rm`: no pins, no process naming the container (shim, link watcher), no
/// cgroup named after it, no live entry in tether's maps.
pub fn assert_gone(d: &Dockerd, id: &str) -> Result<()> {
    let me = std::process::id() as i32;
    wait::wait_until(
        &format!("everything of {id} to be gone"),
        Duration::from_secs(15),
        || {
            if d.container_dir(id).exists() {
                return Ok(None);
            }
            let procs: Vec<String> = procfs::processes()?
                .into_iter()
                .filter(|p| p.pid != me && !p.is_zombie())
                .map(|p| p.cmdline_string())
                .filter(|c| c.contains(id))
                .collect();
            if !procs.is_empty() {
                return Ok(None);
            }
            Ok(cgroup::find_dirs_named(id, 4)?.is_empty().then_some(()))
        },
    )?;
    let live = tetherctl(d, &["stats"])?;
    ensure!(
        !live.iter().any(|r| r["id"] == id && r["deleted"] != true),
        "map entries left after docker rm: {live:?}"
    );
    Ok(())
}

/// `nc HOST 9` in a new container of `runtime` with `extra` flags, removed after.
pub fn nc(
    d: &Dockerd,
    runtime: &str,
    extra: &[&str],
    host: &str,
) -> Result<tether_integration::Output> {
    let mut args = vec!["run", "--rm", "--runtime", runtime];
    args.extend_from_slice(extra);
    args.extend_from_slice(&[tether_integration::dockerd::IMAGE, "nc", host, "9"]);
    d.docker(&args)
}

/// `out` is a connect refused by tether (EPERM at connect()).
pub fn denied(out: &tether_integration::Output) -> bool {
    out.code != 0 && out.stderr.contains("Operation not permitted")
}

/// `out` is a connect that reached the address (nothing listens on port 9).
pub fn refused(out: &tether_integration::Output) -> bool {
    out.code != 0 && out.stderr.contains("Connection refused")
}
