//! `bench-attach [SEQUENTIAL] [CONCURRENT]`: the attach step's duration, tether (programs
//! from the pins tetherd loaded once) against a naive mode in which every shim loads its own
//! copy of the programs (`TETHER_BENCH_NAIVE_LOAD`, benchmark-only).
//!
//! The shim must be built with the benchmark-only `bench` feature, which a shim for use
//! leaves out: it enables both the naive loader and the attach-time records this benchmark
//! reads. Build it with `bash scripts/build-release.sh --features bench`. Without it, the
//! first container of each mode records no time, and the benchmark stops there and says so.
//!
//! Each mode gets its own private containerd. Each shim appends `<id> <microseconds>` per
//! attach to the file named by `TETHER_BENCH_ATTACH_TIMES` (benchmark-only). Sequential: containers
//! one after another (`ctr run --rm ... /bin/true`); concurrent: that many `ctr run -d` at
//! once. Then the whole create -> start -> exit -> delete of a trivial container for runc.v2,
//! tether and naive, sequential and concurrent. Prints p50 / p99 and ratios; asserts nothing.
use std::collections::HashMap;
use std::fs;
use std::thread;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tether_integration::ctr::{Run, Source};
use tether_integration::harness::require_root;
use tether_integration::{image, rootfs, Containerd, Ctr, Runtime};

const RUN_TIMEOUT: Duration = Duration::from_secs(240);

/// Attach durations (µs) of `ids`, from the file the shims append to
/// (`TETHER_BENCH_ATTACH_TIMES`, benchmark-only).
fn attach_times(m: &Mode, ids: &[String]) -> Result<Vec<f64>> {
    attach_column(m, ids, 1)
}

/// The shim's CPU time (µs, all threads) during each attach step.
fn attach_cpu(m: &Mode, ids: &[String]) -> Result<Vec<f64>> {
    attach_column(m, ids, 2)
}

/// How long the shim's thread waited for a CPU (µs) during each attach step.
fn attach_runq(m: &Mode, ids: &[String]) -> Result<Vec<f64>> {
    attach_column(m, ids, 3)
}

fn attach_column(m: &Mode, ids: &[String], col: usize) -> Result<Vec<f64>> {
    let text = fs::read_to_string(&m.times).context("reading the attach times")?;
    let mut by_id = HashMap::new();
    for line in text.lines() {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if let (Some(id), Some(v)) = (cols.first(), cols.get(col)) {
            if let Ok(v) = v.parse::<f64>() {
                by_id.insert(id.to_string(), v);
            }
        }
    }
    let mut out: Vec<f64> = ids.iter().filter_map(|i| by_id.get(i).copied()).collect();
    if out.len() != ids.len() {
        bail!(
            "{}: {} of {} containers recorded an attach time",
            m.name,
            out.len(),
            ids.len()
        );
    }
    out.sort_by(f64::total_cmp);
    Ok(out)
}

/// Phase columns of the times file after `<id> <wall> <cpu> <run-queue wait>` (the shim's
/// `AttachTimes`).
const PHASES: [&str; 5] = ["pins", "open", "cgroup", "netns", "watch"];

/// p50 and p99 (ms) of every phase of the attach steps of `ids`.
fn phase_row(m: &Mode, label: &str, ids: &[String]) -> Result<String> {
    let mut row = format!("| {label} |");
    for i in 0..PHASES.len() {
        let v = attach_column(m, ids, 4 + i)?;
        row.push_str(&format!(
            " {:.2} / {:.2} |",
            pct(&v, 50.0) / 1000.0,
            pct(&v, 99.0) / 1000.0
        ));
    }
    Ok(row)
}

fn pct(v: &[f64], p: f64) -> f64 {
    let i = ((p / 100.0) * (v.len() as f64 - 1.0)).round() as usize;
    v[i.min(v.len() - 1)]
}

struct Mode {
    name: &'static str,
    times: std::path::PathBuf,
    cd: Containerd,
    ctr: Ctr,
    source: Source,
    _work: tempfile::TempDir,
}

fn mode(name: &'static str, mut env: Vec<(String, String)>) -> Result<Mode> {
    let work = tempfile::Builder::new().prefix("tether-bench-").tempdir()?;
    let times = work.path().join("attach-times");
    env.push((
        "TETHER_BENCH_ATTACH_TIMES".into(),
        times.display().to_string(),
    ));
    let cd = Containerd::start_with_env(env)?;
    // A naive burst takes seconds per container: give every mode the same long deadline so
    // nothing is cut short (and attached fail-open without a time).
    let mut cfg = fs::read_to_string(cd.tether_config())?;
    cfg.push_str("\n[attach]\ndeadline_ms = 120000\n");
    fs::write(cd.tether_config(), cfg)?;
    let ctr = cd.ctr(&format!("bench-{name}"));
    let rootfs = rootfs::build_busybox(&work.path().join("rootfs"))?;
    image::import(
        &ctr,
        &rootfs,
        image::BUSYBOX_IMAGE,
        &work.path().join("image"),
    )?;
    Ok(Mode {
        name,
        times,
        cd,
        ctr,
        source: Source::Image(image::BUSYBOX_IMAGE.to_owned()),
        _work: work,
    })
}

fn sequential(m: &Mode, first: usize, n: usize) -> Result<Vec<f64>> {
    let ids: Vec<String> = (first..first + n)
        .map(|i| format!("seq-{}-{i}", m.name))
        .collect();
    for id in &ids {
        let run = Run::new(Runtime::Tether, m.source.clone(), id.clone())
            .rm()
            .timeout(RUN_TIMEOUT)
            .command(["/bin/true"]);
        let out = m.ctr.run_container(&run)?;
        if !out.success() {
            bail!("{id}: {out}");
        }
    }
    attach_times(m, &ids)
}

/// The command that builds a shim with the benchmark-only `bench` feature.
const BENCH_BUILD: &str = "bash scripts/build-release.sh --features bench";

/// Runs one container in `m` and checks that its shim recorded an attach time, before any
/// measurement: a shim built without the `bench` feature records none (and cannot load
/// naively), which is said here with the command that builds one.
fn warm_up(m: &Mode) -> Result<()> {
    let id = format!("seq-{}-1000000", m.name);
    let run = Run::new(Runtime::Tether, m.source.clone(), id.clone())
        .rm()
        .timeout(RUN_TIMEOUT)
        .command(["/bin/true"]);
    let out = m.ctr.run_container(&run)?;
    if !out.success() {
        bail!("{id}: {out}");
    }
    let recorded = match fs::read_to_string(&m.times) {
        Ok(text) => text
            .lines()
            .any(|l| l.split_whitespace().next() == Some(id.as_str())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => {
            return Err(e).with_context(|| format!("reading {}", m.times.display()));
        }
    };
    if !recorded {
        let shim = tether_integration::containerd::tether_shim_binary()
            .map_or_else(|_| "the shim".to_string(), |p| p.display().to_string());
        // What the shim said about the container (the naive loader's absence, for one).
        let log = fs::read_to_string(m.cd.log_path()).unwrap_or_default();
        let said: Vec<&str> = log.lines().filter(|l| l.contains(id.as_str())).collect();
        bail!(
            "{}: the first container recorded no attach time: {shim} was built without the \
             benchmark-only `bench` feature (attach-time records and the naive loader), which \
             bench-attach needs. Build it with\n\n    {BENCH_BUILD}\n\n\
             containerd's log about {id}:\n{}",
            m.name,
            said[said.len().saturating_sub(5)..].join("\n")
        );
    }
    Ok(())
}

/// Wall, CPU and run-queue wait times (µs) of the attach steps of `n` containers created
/// at once.
fn concurrent(m: &Mode, n: usize) -> Result<(Vec<f64>, Vec<f64>, Vec<f64>)> {
    let ids: Vec<String> = (0..n).map(|i| format!("conc-{}-{i}", m.name)).collect();
    let handles: Vec<_> = ids
        .iter()
        .map(|id| {
            let run = Run::new(Runtime::Tether, m.source.clone(), id.clone())
                .detach()
                .timeout(RUN_TIMEOUT)
                .command(["/bin/sleep", "1000"]);
            let ctr = m.ctr.clone();
            thread::spawn(move || ctr.run_container(&run))
        })
        .collect();
    for h in handles {
        let out = h
            .join()
            .map_err(|_| anyhow::anyhow!("ctr thread panicked"))??;
        if !out.success() {
            bail!("{out}");
        }
    }
    for id in &ids {
        let _ = m.ctr.force_remove(id);
    }
    Ok((
        attach_times(m, &ids)?,
        attach_cpu(m, &ids)?,
        attach_runq(m, &ids)?,
    ))
}

/// Wall times (ms) of `n` concurrent `ctr run --rm ... /bin/true` (create, start, exit,
/// delete) of `rt`.
fn concurrent_latency(m: &Mode, rt: Runtime, tag: &str, n: usize) -> Result<Vec<f64>> {
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let run = Run::new(rt, m.source.clone(), format!("lat-{tag}-{i}"))
                .rm()
                .timeout(RUN_TIMEOUT)
                .command(["/bin/true"]);
            let ctr = m.ctr.clone();
            thread::spawn(move || {
                let t = std::time::Instant::now();
                let out = ctr.run_container(&run)?;
                if !out.success() {
                    bail!("{out}");
                }
                Ok(t.elapsed().as_secs_f64() * 1000.0)
            })
        })
        .collect();
    let mut v = Vec::new();
    for h in handles {
        v.push(
            h.join()
                .map_err(|_| anyhow::anyhow!("ctr thread panicked"))??,
        );
    }
    v.sort_by(f64::total_cmp);
    Ok(v)
}

/// Wall times (ms) of `n` sequential `ctr run --rm ... /bin/true` of `rt`.
fn sequential_latency(
    m: &Mode,
    rt: Runtime,
    tag: &str,
    first: usize,
    n: usize,
) -> Result<Vec<f64>> {
    let mut v = Vec::new();
    for i in first..first + n {
        let run = Run::new(rt, m.source.clone(), format!("slat-{tag}-{i}"))
            .rm()
            .timeout(RUN_TIMEOUT)
            .command(["/bin/true"]);
        let t = std::time::Instant::now();
        let out = m.ctr.run_container(&run)?;
        if !out.success() {
            bail!("{out}");
        }
        v.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(v)
}

fn lat_row(name: &str, v: &[f64], base: &[f64]) -> String {
    format!(
        "| {name} | {} | {:.1} | {:.1} | {:.2} |",
        v.len(),
        pct(v, 50.0),
        pct(v, 99.0),
        pct(v, 50.0) / pct(base, 50.0)
    )
}

fn row(name: &str, v: &[f64], base: Option<&[f64]>) -> String {
    let ms = |us: f64| us / 1000.0;
    let ratio = base.map_or("-".to_string(), |b| {
        format!("{:.1}x", pct(v, 50.0) / pct(b, 50.0))
    });
    format!(
        "| {name} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {ratio} |",
        v.len(),
        ms(pct(v, 50.0)),
        ms(pct(v, 90.0)),
        ms(pct(v, 99.0)),
        ms(pct(v, 100.0)),
    )
}

fn main() -> Result<()> {
    require_root()?;
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let seq_n = args.first().copied().unwrap_or(30);
    let conc_n = args.get(1).copied().unwrap_or(50);
    let tether = mode("tether", Vec::new())?;
    let naive = mode(
        "naive",
        vec![("TETHER_BENCH_NAIVE_LOAD".into(), "1".into())],
    )?;
    // Warm-up: tetherd starts and loads once; page cache. The first container of each mode
    // also tells whether the shim was built to record attach times and to load naively.
    warm_up(&tether)?;
    warm_up(&naive)?;
    // A node normally runs containers: one stays up in each mode, so the kernel's
    // per-hook static keys stay on (the first attach on an idle node patches kernel text).
    for m in [&tether, &naive] {
        let run = Run::new(Runtime::Tether, m.source.clone(), "resident".to_string())
            .detach()
            .timeout(RUN_TIMEOUT)
            .command(["/bin/sleep", "1000"]);
        m.ctr.run_container(&run)?;
    }
    let mut t_seq = Vec::new();
    let mut n_seq = Vec::new();
    // Alternate in chunks of five so drift hits both alike.
    for chunk in 0..seq_n.div_ceil(5) {
        t_seq.extend(sequential(&tether, chunk * 5, 5)?);
        n_seq.extend(sequential(&naive, chunk * 5, 5)?);
    }
    t_seq.sort_by(f64::total_cmp);
    n_seq.sort_by(f64::total_cmp);
    let (t_conc, mut t_cpu, mut t_runq) = concurrent(&tether, conc_n)?;
    let (n_conc, _, _) = concurrent(&naive, conc_n)?;
    t_runq.sort_by(f64::total_cmp);
    t_cpu.sort_by(f64::total_cmp);
    // create -> start -> exit -> delete, runc.v2 (in the tether containerd) vs tether vs naive.
    let (mut l_runc, mut l_tether, mut l_naive) = (Vec::new(), Vec::new(), Vec::new());
    for chunk in 0..seq_n.div_ceil(5) {
        l_runc.extend(sequential_latency(
            &tether,
            Runtime::RuncV2,
            "runc",
            chunk * 5,
            5,
        )?);
        l_tether.extend(sequential_latency(
            &tether,
            Runtime::Tether,
            "tether",
            chunk * 5,
            5,
        )?);
        l_naive.extend(sequential_latency(
            &naive,
            Runtime::Tether,
            "naive",
            chunk * 5,
            5,
        )?);
    }
    for v in [&mut l_runc, &mut l_tether, &mut l_naive] {
        v.sort_by(f64::total_cmp);
    }
    let c_runc = concurrent_latency(&tether, Runtime::RuncV2, "crunc", conc_n)?;
    let c_tether = concurrent_latency(&tether, Runtime::Tether, "ctether", conc_n)?;
    let c_naive = concurrent_latency(&naive, Runtime::Tether, "cnaive", conc_n)?;
    for m in [&tether, &naive] {
        let _ = m.ctr.force_remove("resident");
    }
    println!("## bench-attach: attach step duration (ms), from the shims' log lines\n");
    println!("| mode | n | p50 | p90 | p99 | max | p50 / tether |");
    println!("|---|---|---|---|---|---|---|");
    println!("{}", row("tether, sequential", &t_seq, None));
    println!("{}", row("naive, sequential", &n_seq, Some(&t_seq)));
    println!(
        "{}",
        row(&format!("tether, {conc_n} concurrent"), &t_conc, None)
    );
    println!(
        "{}",
        row(
            &format!("naive, {conc_n} concurrent"),
            &n_conc,
            Some(&t_conc)
        )
    );
    println!(
        "\ntether, {conc_n} concurrent: the shim's CPU time during the attach step: p50 {:.2} ms, p99 {:.2} ms",
        pct(&t_cpu, 50.0) / 1000.0,
        pct(&t_cpu, 99.0) / 1000.0
    );
    println!(
        "tether, {conc_n} concurrent: the shim's thread waiting for a CPU during the attach step: p50 {:.2} ms, p99 {:.2} ms",
        pct(&t_runq, 50.0) / 1000.0,
        pct(&t_runq, 99.0) / 1000.0
    );
    println!("\n### tether's attach step by phase (ms, p50 / p99)\n");
    println!("| mode | {} |", PHASES.join(" | "));
    println!("|---|{}", "---|".repeat(PHASES.len()));
    let seq_ids: Vec<String> = (0..seq_n.div_ceil(5) * 5)
        .map(|i| format!("seq-tether-{i}"))
        .collect();
    let conc_ids: Vec<String> = (0..conc_n).map(|i| format!("conc-tether-{i}")).collect();
    println!("{}", phase_row(&tether, "sequential", &seq_ids)?);
    println!(
        "{}",
        phase_row(&tether, &format!("{conc_n} concurrent"), &conc_ids)?
    );
    println!("\n## create -> start -> exit -> delete (`ctr run --rm IMAGE ID /bin/true`, ms)\n");
    println!("| runtime | n | p50 | p99 | p50 / runc.v2 |");
    println!("|---|---|---|---|---|");
    println!("{}", lat_row("runc.v2, sequential", &l_runc, &l_runc));
    println!("{}", lat_row("tether, sequential", &l_tether, &l_runc));
    println!("{}", lat_row("naive, sequential", &l_naive, &l_runc));
    let c = format!("{conc_n} concurrent");
    println!("{}", lat_row(&format!("runc.v2, {c}"), &c_runc, &c_runc));
    println!("{}", lat_row(&format!("tether, {c}"), &c_tether, &c_runc));
    println!("{}", lat_row(&format!("naive, {c}"), &c_naive, &c_runc));
    Ok(())
}
