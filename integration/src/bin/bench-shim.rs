//! `bench-shim [ITERATIONS] [--idle N] [--out FILE]`: tether's shim against runc's, side by
//! side.
//!
//! One private containerd, one namespace, the busybox image. Runtimes: `io.containerd.runc.v2`,
//! `io.containerd.tether.v1` (if built) and `io.containerd.runc.v2-rs` (if
//! `containerd-shim-runc-v2-rs` is on PATH). Every iteration runs each runtime once, in turn
//! (A B A B ...), so drift on a shared machine hits all alike.
//!
//! (a) Latency: wall time of `ctr run --rm IMAGE ID /bin/true`; median, p90, min, max and
//!     the ratio of medians against runc.v2.
//! (b) Memory: VmRSS of the shim serving one idle container (`sleep 1000`), and the ratio.
//! (c) Memory at scale: the summed VmRSS of every shim process serving N idle containers
//!     (default 50) of each runtime, started one runtime at a time.
//!
//! The containerd is the system's, or the release in `TETHER_CONTAINERD_DIR` (the Rust shim
//! needs 2.x).
//! Numbers only: nothing here passes or fails on a timing.

use std::fmt::Write as _;
use std::fs;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tether_integration::ctr::{Run, Source};
use tether_integration::harness::{find_on_path, require_root};
use tether_integration::{containerd, image, procfs, rootfs, Containerd, Ctr, Runtime};

const DEFAULT_ITERATIONS: usize = 30;
/// Deadline of one `ctr run`.
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

struct Args {
    iterations: usize,
    idle: usize,
    out: Option<String>,
}

const DEFAULT_IDLE: usize = 50;

fn parse_args() -> Result<Args> {
    let mut args = Args {
        iterations: DEFAULT_ITERATIONS,
        idle: DEFAULT_IDLE,
        out: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--out" => args.out = Some(it.next().context("--out needs a file")?),
            "--idle" => {
                args.idle = it
                    .next()
                    .context("--idle needs a number")?
                    .parse()
                    .context("--idle needs a number")?
            }
            "-h" | "--help" => {
                println!(
                    "usage: bench-shim [ITERATIONS (default {DEFAULT_ITERATIONS})] \
                     [--idle N (default {DEFAULT_IDLE})] [--out FILE]"
                );
                std::process::exit(0);
            }
            n => {
                args.iterations = n
                    .parse()
                    .with_context(|| format!("ITERATIONS must be a number, got {n:?}"))?;
                if args.iterations == 0 {
                    bail!("ITERATIONS must be at least 1");
                }
            }
        }
    }
    Ok(args)
}

fn main() -> Result<()> {
    let args = parse_args()?;
    require_root()?;
    let mut report = String::new();
    let mut notes = Vec::new();

    let mut runtimes = vec![Runtime::RuncV2];
    match containerd::tether_shim_binary() {
        Ok(p) => {
            let debug = if p.components().any(|c| c.as_os_str() == "debug") {
                " (a debug build: set TETHER_SHIM_BIN to a release build for fair RSS numbers)"
            } else {
                ""
            };
            notes.push(format!("tether shim: {}{debug}", p.display()));
            runtimes.push(Runtime::Tether);
        }
        Err(e) => notes.push(format!("tether skipped: {e:#}")),
    }
    match find_on_path(Runtime::RuncV2Rs.shim_binary()) {
        Some(p) => {
            notes.push(format!("runc-v2-rs shim: {}", p.display()));
            runtimes.push(Runtime::RuncV2Rs);
        }
        None => notes.push(format!(
            "runc.v2-rs skipped: {} is not on PATH (`cargo install containerd-runc-shim`; \
             note it speaks only the containerd 2.x start protocol)",
            Runtime::RuncV2Rs.shim_binary()
        )),
    }

    let cd = Containerd::start()?;
    let ctr = cd.ctr(&format!("bench-{}", std::process::id()));
    let work = tempfile::Builder::new()
        .prefix("tether-bench-")
        .tempdir()
        .context("creating the bench's temporary directory")?;
    let rootfs = rootfs::build_busybox(&work.path().join("rootfs"))?;
    image::import(
        &ctr,
        &rootfs,
        image::BUSYBOX_IMAGE,
        &work.path().join("image"),
    )?;
    let source = Source::Image(image::BUSYBOX_IMAGE.to_owned());

    // Warm-up, which also drops a runtime that cannot run a container at all.
    runtimes.retain(
        |rt| match time_run(&ctr, *rt, &source, &format!("warmup-{}", rt.tag())) {
            Ok(_) => true,
            Err(e) => {
                notes.push(format!("{rt} dropped: warm-up run failed: {e:#}"));
                false
            }
        },
    );

    // (a) Latency, A B A B.
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); runtimes.len()];
    let mut failures = vec![0usize; runtimes.len()];
    for i in 0..args.iterations {
        for (r, rt) in runtimes.iter().enumerate() {
            match time_run(&ctr, *rt, &source, &format!("lat-{}-{i}", rt.tag())) {
                Ok(d) => samples[r].push(d.as_secs_f64() * 1000.0),
                Err(e) => {
                    failures[r] += 1;
                    eprintln!("{rt} iteration {i}: {e:#}");
                }
            }
        }
    }

    writeln!(
        report,
        "## bench-shim: {} iterations, runtimes alternating per iteration\n",
        args.iterations
    )?;
    for n in &notes {
        writeln!(report, "- {n}")?;
    }
    writeln!(
        report,
        "\n### (a) `ctr run --rm IMAGE ID /bin/true`, wall time (ms)\n"
    )?;
    writeln!(
        report,
        "| runtime | n | failed | median | p90 | min | max | median / runc.v2 |"
    )?;
    writeln!(report, "|---|---|---|---|---|---|---|---|")?;
    let base_median = samples.first().and_then(|s| percentile(s, 50.0));
    for (r, rt) in runtimes.iter().enumerate() {
        let s = &samples[r];
        let median = percentile(s, 50.0);
        writeln!(
            report,
            "| {rt} | {} | {} | {} | {} | {} | {} | {} |",
            s.len(),
            failures[r],
            fmt_ms(median),
            fmt_ms(percentile(s, 90.0)),
            fmt_ms(percentile(s, 0.0)),
            fmt_ms(percentile(s, 100.0)),
            ratio(median, base_median),
        )?;
    }

    // (b) Memory of the shim serving one idle container.
    writeln!(
        report,
        "\n### (b) shim VmRSS with one idle container (`sleep 1000`)\n"
    )?;
    writeln!(
        report,
        "| runtime | VmRSS KiB | / runc.v2 | anonymous KiB | file-backed KiB | Pss KiB | threads |"
    )?;
    writeln!(report, "|---|---|---|---|---|---|---|")?;
    let mut base_rss = None;
    for rt in &runtimes {
        let id = format!("idle-{}", rt.tag());
        let rss = idle_shim_rss(&cd, &ctr, *rt, &source, &id);
        if let Err(e) = ctr.force_remove(&id) {
            eprintln!("removing {id}: {e:#}");
        }
        match rss {
            Ok([kib, anon, file, pss, threads]) => {
                let kib = kib as f64;
                if *rt == Runtime::RuncV2 {
                    base_rss = Some(kib);
                }
                writeln!(
                    report,
                    "| {rt} | {kib:.0} | {} | {anon} | {file} | {pss} | {threads} |",
                    ratio(Some(kib), base_rss)
                )?;
            }
            Err(e) => writeln!(report, "| {rt} | error: {e:#} | - | - | - | - | - |")?,
        }
    }

    // (c) Memory at scale.
    if args.idle > 0 {
        writeln!(
            report,
            "\n### (c) VmRSS of all shims serving {} idle containers per runtime\n",
            args.idle
        )?;
        writeln!(
            report,
            "| runtime | shim processes | VmRSS KiB, all | KiB per container | / runc.v2 |"
        )?;
        writeln!(report, "|---|---|---|---|---|")?;
        let mut base = None;
        for rt in &runtimes {
            match idle_many_rss(&cd, &ctr, *rt, &source, args.idle) {
                Ok((procs, kib)) => {
                    let kib = kib as f64;
                    if *rt == Runtime::RuncV2 {
                        base = Some(kib);
                    }
                    writeln!(
                        report,
                        "| {rt} | {procs} | {kib:.0} | {:.0} | {} |",
                        kib / args.idle as f64,
                        ratio(Some(kib), base)
                    )?;
                }
                Err(e) => writeln!(report, "| {rt} | error: {e:#} | - | - | - |")?,
            }
        }
    }

    print!("{report}");
    if let Some(out) = args.out {
        fs::write(&out, &report).with_context(|| format!("writing {out}"))?;
        println!("\n(written to {out})");
    }
    Ok(())
}

/// Wall time of one `ctr run --rm`; an error unless it exits 0.
fn time_run(ctr: &Ctr, rt: Runtime, source: &Source, id: &str) -> Result<Duration> {
    let run = Run::new(rt, source.clone(), id)
        .rm()
        .timeout(RUN_TIMEOUT)
        .command(["/bin/true"]);
    let start = Instant::now();
    let out = ctr.run_container(&run)?;
    let elapsed = start.elapsed();
    out.ok()?;
    Ok(elapsed)
}

/// Starts `sleep 1000` detached and reads its shim's VmRSS, RssAnon, RssFile, Pss and
/// thread count, once the shim has been idle for a while (as on a node, where a shim serves a
/// long-running container).
fn idle_shim_rss(
    cd: &Containerd,
    ctr: &Ctr,
    rt: Runtime,
    source: &Source,
    id: &str,
) -> Result<[u64; 5]> {
    let run = Run::new(rt, source.clone(), id)
        .detach()
        .timeout(RUN_TIMEOUT)
        .command(["/bin/sleep", "1000"]);
    ctr.run_container(&run)?.ok()?;
    let shim = cd
        .shim_processes()?
        .into_iter()
        .find(|p| p.arg_after("-id") == Some(id))
        .with_context(|| format!("no shim process with -id {id}"))?;
    std::thread::sleep(IDLE_SETTLE);
    let mut out = [0; 5];
    for (o, key) in out.iter_mut().zip(["VmRSS", "RssAnon", "RssFile"]) {
        *o = procfs::status_field(shim.pid, key)?;
    }
    out[3] = procfs::pss_kib(shim.pid)?;
    out[4] = procfs::status_field(shim.pid, "Threads")?;
    Ok(out)
}

/// Starts `n` idle containers of `rt`, sums the VmRSS of the shim processes serving them
/// (once idle), removes them, and returns (shim processes, KiB).
fn idle_many_rss(
    cd: &Containerd,
    ctr: &Ctr,
    rt: Runtime,
    source: &Source,
    n: usize,
) -> Result<(usize, u64)> {
    let ids: Vec<String> = (0..n).map(|i| format!("many-{}-{i}", rt.tag())).collect();
    let result = (|| {
        for id in &ids {
            let run = Run::new(rt, source.clone(), id.as_str())
                .detach()
                .timeout(RUN_TIMEOUT)
                .command(["/bin/sleep", "1000"]);
            ctr.run_container(&run)?.ok()?;
        }
        std::thread::sleep(IDLE_SETTLE);
        let mut pids = std::collections::BTreeSet::new();
        for p in cd.shim_processes()? {
            if p.arg_after("-id")
                .is_some_and(|i| ids.iter().any(|x| x == i))
            {
                pids.insert(p.pid);
            }
        }
        let mut kib = 0;
        for pid in &pids {
            kib += procfs::status_field(*pid, "VmRSS")?;
        }
        Ok((pids.len(), kib))
    })();
    for id in &ids {
        if let Err(e) = ctr.force_remove(id) {
            eprintln!("removing {id}: {e:#}");
        }
    }
    result
}

/// How long a shim is left idle before its memory is read.
const IDLE_SETTLE: Duration = Duration::from_secs(2);

/// Nearest-rank percentile `p` (0..=100) of `samples`.
fn percentile(samples: &[f64], p: f64) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
    Some(s[rank.clamp(1, s.len()) - 1])
}

fn fmt_ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}"))
}

fn ratio(v: Option<f64>, base: Option<f64>) -> String {
    match (v, base) {
        (Some(v), Some(b)) if b > 0.0 => format!("{:.2}", v / b),
        _ => "-".to_owned(),
    }
}
