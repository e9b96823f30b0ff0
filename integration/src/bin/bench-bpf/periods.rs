//! The throughput run's periods: one long flow with the programs attached and detached
//! every two seconds ([`toggled`]), and two flows at once with the programs on one and
//! then the other ([`paired`]), each period compared with its neighbours in time.
use std::os::fd::AsFd;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::fixture::KillOnDrop;
use crate::flow::Flow;
use crate::noop::Noop;
use crate::report::summary;
use crate::run_cost::udp4;
use crate::{spin, Toggle};

/// How long the programs stay attached (then detached) in [`toggled`] and [`paired`].
pub const TOGGLE_PERIOD: Duration = Duration::from_secs(2);
/// Around a toggle, iperf3 intervals are not used: the flow's start lags ours by the
/// control connection, and attaching or detaching takes a few RCU grace periods.
pub const TOGGLE_GUARD: f64 = 0.15;

/// One long iperf3 flow from the tracked cgroup while the programs are attached and
/// detached every [`TOGGLE_PERIOD`]; compares the throughput of each attached period with
/// the detached periods on either side. Adjacent periods of one flow share its connection,
/// its CPUs and nearly its moment, so most of the noise between separate runs cancels.
/// Expects the flow's cgroup attached and no TC programs; leaves it so.
pub fn toggled(flow: &Flow<'_>, total: Duration, what: Toggle) -> Result<()> {
    let secs = total.as_secs();
    println!(
        "== iperf3, one {secs} s flow, programs attached and detached every {} ms",
        TOGGLE_PERIOD.as_millis()
    );
    println!("toggled: {what:?}");
    flow.off(what)?;
    let script = flow.client_script(&flow.cgroup.0, &format!("-t {secs} -i 0.25 -J"));
    let t0 = Instant::now();
    let client = Command::new("sh")
        .args(["-c", &script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("iperf3 -c")?;
    // (start, end, attached after) of every toggle, in seconds since the client started.
    let mut toggles: Vec<(f64, f64, bool)> = Vec::new();
    let mut on = false;
    let mut next = TOGGLE_PERIOD;
    while next + TOGGLE_PERIOD / 2 < total {
        if let Some(wait) = next.checked_sub(t0.elapsed()) {
            std::thread::sleep(wait);
        }
        let start = t0.elapsed().as_secs_f64();
        if on {
            flow.off(what)?;
        } else {
            flow.on(what)?;
        }
        on = !on;
        toggles.push((start, t0.elapsed().as_secs_f64(), on));
        next += TOGGLE_PERIOD;
    }
    let out = client.wait_with_output().context("iperf3 -c")?;
    flow.off(Toggle::All)?;
    flow.attach_cgroup()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("iperf3 -J output: {}", String::from_utf8_lossy(&out.stderr)))?;
    // Mean throughput of the clean intervals of each period (period k follows toggle k-1).
    let mut periods: Vec<(bool, Vec<f64>)> = std::iter::once(false)
        .chain(toggles.iter().map(|t| t.2))
        .map(|on| (on, Vec::new()))
        .collect();
    for iv in v["intervals"].as_array().context("iperf3 intervals")? {
        let (Some(s), Some(e), Some(bps)) = (
            iv["sum"]["start"].as_f64(),
            iv["sum"]["end"].as_f64(),
            iv["sum"]["bits_per_second"].as_f64(),
        ) else {
            continue;
        };
        let clean = toggles
            .iter()
            .all(|(ts, te, _)| *te + TOGGLE_GUARD < s || e + TOGGLE_GUARD < *ts);
        if !clean {
            continue;
        }
        let k = toggles.iter().filter(|(_, te, _)| *te < s).count();
        periods[k].1.push(bps);
    }
    let means: Vec<Option<(bool, f64)>> = periods
        .iter()
        .map(|(on, v)| (!v.is_empty()).then(|| (*on, v.iter().sum::<f64>() / v.len() as f64)))
        .collect();
    // Each attached period against the mean of the detached periods on either side.
    let mut ratios = Vec::new();
    for k in 1..means.len().saturating_sub(1) {
        if let (Some((false, before)), Some((true, during)), Some((false, after))) =
            (means[k - 1], means[k], means[k + 1])
        {
            ratios.push(during / ((before + after) / 2.0));
        }
    }
    if ratios.is_empty() {
        bail!("no attached period with clean detached periods on both sides");
    }
    let gbit = |on: bool| {
        let v: Vec<f64> = means
            .iter()
            .flatten()
            .filter(|m| m.0 == on)
            .map(|m| m.1)
            .collect();
        v.iter().sum::<f64>() / v.len().max(1) as f64 / 1e9
    };
    println!(
        "detached periods {:.2} Gbit/s, attached {:.2} Gbit/s (means)",
        gbit(false),
        gbit(true)
    );
    println!(
        "attached / neighbouring detached, {} periods: {}",
        ratios.len(),
        summary(&ratios)
    );
    Ok(())
}

/// Two iperf3 flows at once, each from its own container's namespace over its own veth
/// pair, with the programs attached to one container and then to the other, swapping every
/// [`TOGGLE_PERIOD`]. Both clients share CPU 0 and both servers CPU 1, and the two flows'
/// bytes are read over the same window (the servers' interface counters), so what the
/// machine does to both (other guests, the host, frequency) cancels in the ratio of their
/// bytes. Sharing a CPU, each flow gets about half of it, so the ratio is that of the bytes
/// each moves per unit of CPU: the ratio of a lone CPU-bound flow's throughput with and
/// without the programs. The flows' own difference cancels between a period and the next,
/// where their roles are swapped: the estimate is sqrt(r_a * r_b) over each pair of
/// periods, r being the attached flow's bytes over the other's.
/// Leaves both flows with nothing attached.
pub fn paired(flows: [&Flow<'_>; 2], total: Duration, what: Toggle, versus: Toggle) -> Result<()> {
    let periods = (total.as_secs_f64() / TOGGLE_PERIOD.as_secs_f64()) as usize & !1;
    if periods == 0 {
        bail!(
            "two flows at once: {} s is less than one pair of {} s periods",
            total.as_secs(),
            TOGGLE_PERIOD.as_secs()
        );
    }
    println!(
        "== iperf3, two flows at once for {} s, programs on one flow and then the other, swapped every {} ms",
        total.as_secs(),
        TOGGLE_PERIOD.as_millis()
    );
    println!("toggled: {what:?}, the other flow meanwhile: {versus:?}");
    if what == Toggle::Tc || versus == Toggle::Tc {
        bail!(
            "TETHER_BENCH_VERSUS works with toggles that leave nothing attached when off (not tc)"
        );
    }
    // A container's programs are attached before its first instruction, so its sockets
    // connect with them on (its TCP sockets vetted by its connect hook): the clients start
    // with the programs on both flows, which come off once the flows run.
    for f in flows {
        f.off(what)?;
        f.on(what)?;
    }
    let secs = (periods as u64 + 1) * TOGGLE_PERIOD.as_secs() + 3;
    let mut clients = Vec::new();
    for f in flows {
        clients.push(KillOnDrop(
            Command::new("sh")
                .args(["-c", &f.client_script(&f.cgroup.0, &format!("-t {secs}"))])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("iperf3 -c")?,
        ));
    }
    // Past slow start, both flows running.
    std::thread::sleep(Duration::from_millis(1500));
    for f in flows {
        f.off(what)?;
    }
    let retrans_before = [flows[0].retransmitted()?, flows[1].retransmitted()?];
    let t0 = Instant::now();
    let mut ratios = Vec::new(); // the attached flow's bytes / the other's
    let mut moved_total = [[0u64; 3]; 2]; // per flow: bytes, data packets, ACKs
    for k in 0..periods {
        let (on, other) = (k % 2, 1 - k % 2);
        flows[other].off(what)?;
        if versus != Toggle::None {
            flows[on].off(versus)?;
        }
        flows[on].on(what)?;
        flows[other].on(versus)?;
        std::thread::sleep(Duration::from_secs_f64(TOGGLE_GUARD));
        let start = [flows[0].server_counters()?, flows[1].server_counters()?];
        let end_at = TOGGLE_PERIOD * (k as u32 + 1);
        if let Some(wait) = end_at.checked_sub(t0.elapsed()) {
            std::thread::sleep(wait);
        }
        let end = [flows[0].server_counters()?, flows[1].server_counters()?];
        let moved = [end[0][0] - start[0][0], end[1][0] - start[1][0]];
        if moved.contains(&0) {
            bail!("period {k}: a flow moved no bytes ({moved:?}); did an iperf3 client exit?");
        }
        for f in 0..2 {
            for c in 0..3 {
                moved_total[f][c] += end[f][c] - start[f][c];
            }
        }
        ratios.push(moved[on] as f64 / moved[other] as f64);
    }
    let retrans = [
        flows[0].retransmitted()? - retrans_before[0],
        flows[1].retransmitted()? - retrans_before[1],
    ];
    for f in flows {
        f.off(Toggle::All)?;
    }
    drop(clients);
    let label = match versus {
        Toggle::None => "attached / not".to_string(),
        v => format!("attached / {v:?} on the other flow"),
    };
    let effect: Vec<f64> = ratios.chunks(2).map(|p| (p[0] * p[1]).sqrt()).collect();
    let asymmetry: Vec<f64> = ratios.chunks(2).map(|p| (p[0] / p[1]).sqrt()).collect();
    let measured = periods as f64 * (TOGGLE_PERIOD.as_secs_f64() - TOGGLE_GUARD);
    for (f, [bytes, data, acks]) in moved_total.iter().enumerate() {
        println!(
            "flow {f}: {:.2} Gbit/s, {:.0} data packets/s of {:.1} KiB, {:.0} ACKs/s (measured windows), {:.0} segments retransmitted/s",
            *bytes as f64 * 8.0 / 1e9 / measured,
            *data as f64 / measured,
            *bytes as f64 / *data as f64 / 1024.0,
            *acks as f64 / measured,
            retrans[f] as f64 / t0.elapsed().as_secs_f64()
        );
    }
    if what == Toggle::Spin {
        // The spin loop's own cost, from the kernel's timing of repeated test runs.
        let pkt = udp4([10, 214, 0, 2]);
        let cost = |spin| -> Result<u32> {
            let prog = Noop::load(libbpf_sys::BPF_PROG_TYPE_CGROUP_SKB, 1, spin)?;
            Ok(tether_bpf::sys::prog_test_run_repeat(prog.as_fd(), &pkt, None, 100_000)?.1)
        };
        println!(
            "spin program {} ns per run, no-op {} ns (BPF_PROG_TEST_RUN)",
            cost(spin()?)?,
            cost(0)?
        );
    }
    println!(
        "flow 0 / flow 1, whatever is attached ({} pairs of periods): {}",
        asymmetry.len(),
        summary(&asymmetry)
    );
    println!(
        "{label}, same window ({} pairs of periods): {}",
        effect.len(),
        summary(&effect)
    );
    Ok(())
}
