//! The throughput run: iperf3 over veth with the programs attached against none, in
//! alternating runs (ABBA rounds), then the toggled and paired periods ([`crate::periods`]),
//! then one attached run under bpf_stats for each program's cost per packet beside the
//! no-op baselines.
use std::fs;
use std::time::{Duration, Instant};

use anyhow::Result;
use tether_bpf::{programs, Prog, Programs};

use crate::fixture::{cgroup_root, num_cpus, private_bpffs, Cgroup};
use crate::flow::Flow;
use crate::noop::Noop;
use crate::periods::{paired, toggled};
use crate::report::median;
use crate::{bench_plan, steering, Toggle};

pub fn throughput(secs: u64, rounds: usize, toggle_secs: u64, paired_secs: u64) -> Result<()> {
    println!("== iperf3 over veth, {rounds} rounds of {secs} s each, alternating");
    println!("tracked container's plan: {}", bench_plan()?.0);
    println!(
        "flow placement: {}",
        format!("{:?}", steering()?).to_lowercase()
    );
    let (_m, layout) = private_bpffs("tput")?;
    programs::load_and_pin(&layout, tether_bpf::VERSION)?;
    let progs = Programs::open(&layout, tether_bpf::VERSION)?;
    let flow = Flow::new(&progs, &layout, 0)?;
    let plain = Cgroup(cgroup_root().join(format!("tether-bench-plain-{}", std::process::id())));
    fs::create_dir_all(&plain.0)?;
    flow.attach_cgroup()?;
    let what = Toggle::from_env()?;

    // Throughput first, without bpf_stats (which adds its own cost to every run). Each
    // round is a pair of runs, in ABBA order (none first in even rounds, attached first in
    // odd ones) so that drift and any effect of going first cancel out.
    let (mut off, mut on, mut pairs) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let mut pair = [0.0; 2];
        let order = if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for attached in order {
            if attached {
                // TC programs are on veth0 only during the attached runs.
                flow.attach_tc()?;
                pair[1] = flow.iperf(&flow.cgroup.0, secs)?;
                flow.detach()?;
                flow.attach_cgroup()?;
            } else {
                pair[0] = flow.iperf(&plain.0, secs)?;
            }
        }
        off.push(pair[0]);
        on.push(pair[1]);
        pairs.push(pair[1] / pair[0]);
    }
    if toggle_secs > 0 {
        toggled(&flow, Duration::from_secs(toggle_secs), what)?;
    }
    if paired_secs > 0 {
        let second = Flow::new(&progs, &layout, 1)?;
        paired(
            [&flow, &second],
            Duration::from_secs(paired_secs),
            what,
            Toggle::versus_from_env()?,
        )?;
        flow.attach_cgroup()?;
    }

    // Then one attached run with bpf_stats on, for each program's cost per run, beside a
    // no-op cgroup_skb program on the same cgroup: what bpf_stats reports for a program
    // that does nothing (its clock reads and the call), the floor of every figure.
    flow.attach_tc()?;
    let noop = [
        ("no-op cgroup_skb", Noop::cgroup_skb(&flow.cgroup.0, 0)?),
        ("no-op tc", Noop::tc(&flow.netns, "veth0")?),
    ];
    let stats = tether_bpf::sys::enable_run_time_stats()?;
    let before: Vec<_> = Prog::ALL
        .iter()
        .map(|p| progs.run_stats(*p))
        .collect::<Result<_, _>>()?;
    let noop_before: Vec<_> = noop.iter().map(|n| n.1.stats()).collect::<Result<_>>()?;
    let stats_started = Instant::now();
    let stats_bps = flow.iperf(&flow.cgroup.0, secs)?;
    let stats_wall = stats_started.elapsed();
    let after: Vec<_> = Prog::ALL
        .iter()
        .map(|p| progs.run_stats(*p))
        .collect::<Result<_, _>>()?;
    let noop_after: Vec<_> = noop.iter().map(|n| n.1.stats()).collect::<Result<_>>()?;
    drop(stats);
    let noop_names = noop.map(|n| n.0);
    if rounds > 0 {
        let (m_off, m_on) = (median(&mut off.clone()), median(&mut on.clone()));
        let gbit = |v: &[f64]| {
            v.iter()
                .map(|x| format!("{:.2}", x / 1e9))
                .collect::<Vec<_>>()
                .join(" ")
        };
        println!(
            "none:     {} Gbit/s (median {:.2})",
            gbit(&off),
            m_off / 1e9
        );
        println!("attached: {} Gbit/s (median {:.2})", gbit(&on), m_on / 1e9);
        println!(
            "throughput ratio attached / none: {:.3} (medians); per round: {} (median {:.3})",
            m_on / m_off,
            pairs
                .iter()
                .map(|r| format!("{r:.3}"))
                .collect::<Vec<_>>()
                .join(" "),
            median(&mut pairs.clone())
        );
    }
    println!("== per-packet cost (bpf_stats during one more attached run)");
    let mut total_ns = 0u64;
    for (i, p) in Prog::ALL.iter().enumerate() {
        let runs = after[i].run_cnt - before[i].run_cnt;
        let ns = after[i].run_time_ns - before[i].run_time_ns;
        total_ns += ns;
        if runs > 0 {
            println!(
                "{:<20} {:>12} runs {:>8.1} ns/run",
                p.name(),
                runs,
                ns as f64 / runs as f64
            );
        } else {
            println!("{:<20} {:>12} runs", p.name(), 0);
        }
    }
    for (i, name) in noop_names.iter().enumerate() {
        let runs = noop_after[i].run_cnt - noop_before[i].run_cnt;
        if runs > 0 {
            println!(
                "{name:<20} {runs:>12} runs {:>8.1} ns/run (does nothing: the floor)",
                (noop_after[i].run_time_ns - noop_before[i].run_time_ns) as f64 / runs as f64
            );
        }
    }
    // What the programs cost the whole transfer: their run time against the run's CPU
    // time (two busy CPUs: iperf3's client and server with their softirqs). This bounds
    // the throughput they can take, without the run-to-run noise of throughput itself.
    let cpu_ns = stats_wall.as_nanos() as f64 * num_cpus().min(2) as f64;
    println!(
        "programs' run time: {:.2} ms over {:.1} s at {:.2} Gbit/s: {:.4}% of two CPUs, {:.2} ns per KiB",
        total_ns as f64 / 1e6,
        stats_wall.as_secs_f64(),
        stats_bps / 1e9,
        100.0 * total_ns as f64 / cpu_ns,
        total_ns as f64 / (stats_bps / 8.0 * stats_wall.as_secs_f64() / 1024.0)
    );
    flow.detach()?;
    Ok(())
}
