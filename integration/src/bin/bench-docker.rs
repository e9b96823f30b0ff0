//! `bench-docker [ITERATIONS] [--idle N]`: tether's shim against runc's under Docker, side
//! by side.
//!
//! One private dockerd from 23 on (the one `TETHER_DOCKER_DIR` names, over the private
//! containerd `TETHER_CONTAINERD_DIR` names, as `scripts/docker-matrix.sh` prepares them),
//! the busybox image, `--network none`. Runtimes: `io.containerd.runc.v2` and
//! `io.containerd.tether.v1`, each taken by name (`docker run --runtime`).
//!
//! (a) Latency: wall time of `docker run --rm IMAGE /bin/true`, the runtimes in turn
//!     (A B A B ...), so drift on a shared machine hits both alike; median and the ratio.
//! (b) Memory: VmRSS of the shim serving one idle container (`sleep 1000`), after it has
//!     been idle for a while.
//! (c) Memory at scale: the summed VmRSS of the shims serving N idle containers (default
//!     50) of each runtime, started one runtime at a time.
//!
//! Numbers only: nothing here passes or fails on a timing.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tether_integration::dockerd::{Dockerd, IMAGE};
use tether_integration::harness::require_root;
use tether_integration::procfs;

const RUNTIMES: [&str; 2] = ["io.containerd.runc.v2", "io.containerd.tether.v1"];
const DEFAULT_ITERATIONS: usize = 20;
const DEFAULT_IDLE: usize = 50;
/// How long a shim is left idle before its memory is read.
const IDLE_SETTLE: Duration = Duration::from_secs(2);

fn parse_args() -> Result<(usize, usize)> {
    let (mut iterations, mut idle) = (DEFAULT_ITERATIONS, DEFAULT_IDLE);
    let mut args = std::env::args().skip(1);
    let mut positional = 0;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--idle" => {
                let v = args.next().context("--idle needs a number")?;
                idle = v.parse().with_context(|| format!("--idle {v:?}"))?;
            }
            _ if positional == 0 => {
                iterations = a.parse().with_context(|| format!("ITERATIONS {a:?}"))?;
                positional += 1;
            }
            _ => bail!("usage: bench-docker [ITERATIONS] [--idle N]"),
        }
    }
    Ok((iterations, idle))
}

fn main() -> Result<()> {
    let (iterations, idle) = parse_args()?;
    require_root()?;
    let d = Dockerd::start("")?;
    if !d.engine().runs_shims() {
        bail!(
            "Docker {} runs no containerd shims by name (23 or later is needed; set \
             TETHER_DOCKER_DIR)",
            d.engine().version
        );
    }
    let containerd = d
        .containerd()
        .context("a Docker from 23 runs over a containerd")?;
    println!(
        "Docker {} over containerd {}; {iterations} runs per runtime, {idle} idle containers",
        d.engine().version,
        tether_integration::containerd_release::release()
            .map(|r| r.version)
            .unwrap_or_else(|_| "?".into())
    );

    // (a) docker run --rm latency, alternating.
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); RUNTIMES.len()];
    for _ in 0..iterations {
        for (rt, t) in RUNTIMES.iter().zip(times.iter_mut()) {
            let started = Instant::now();
            d.ok(&[
                "run",
                "--rm",
                "--network",
                "none",
                "--runtime",
                rt,
                IMAGE,
                "/bin/true",
            ])?;
            t.push(started.elapsed().as_secs_f64() * 1e3);
        }
    }
    let medians: Vec<f64> = times.iter_mut().map(|t| median(t)).collect();

    // (b) and (c): idle shims.
    let shim_of = |id: &str| -> Result<i32> {
        containerd
            .shim_processes()?
            .into_iter()
            .find(|p| p.arg_after("-id") == Some(id))
            .map(|p| p.pid)
            .with_context(|| format!("no shim process with -id {id}"))
    };
    let mut one = Vec::new();
    let mut many = Vec::new();
    for rt in RUNTIMES {
        let mut ids = Vec::new();
        let result = (|| -> Result<(u64, usize, u64)> {
            for _ in 0..idle.max(1) {
                let out = d.ok(&[
                    "run",
                    "-d",
                    "--network",
                    "none",
                    "--runtime",
                    rt,
                    IMAGE,
                    "/bin/sleep",
                    "1000",
                ])?;
                ids.push(out.stdout.trim().to_string());
            }
            std::thread::sleep(IDLE_SETTLE);
            let first = procfs::status_field(shim_of(&ids[0])?, "VmRSS")?;
            let mut pids = std::collections::BTreeSet::new();
            for id in &ids {
                pids.insert(shim_of(id)?);
            }
            let mut kib = 0;
            for pid in &pids {
                kib += procfs::status_field(*pid, "VmRSS")?;
            }
            Ok((first, pids.len(), kib))
        })();
        for id in &ids {
            let _ = d.docker(&["rm", "-f", id]);
        }
        let (first, shims, kib) = result?;
        one.push(first);
        many.push((shims, kib));
    }

    println!();
    println!(
        "| runtime | `docker run --rm` median | / runc.v2 | VmRSS, 1 idle | VmRSS, {idle} idle \
         (shims; per container) | / runc.v2 |"
    );
    println!("|---|---|---|---|---|---|");
    for (i, rt) in RUNTIMES.iter().enumerate() {
        let (shims, kib) = many[i];
        println!(
            "| {rt} | {:.1} ms | {:.2} | {} KiB | {} KiB ({shims}; {}) | {:.2} |",
            medians[i],
            medians[i] / medians[0],
            one[i],
            kib,
            kib / idle.max(1) as u64,
            kib as f64 / many[0].1.max(1) as f64,
        );
    }
    Ok(())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}
