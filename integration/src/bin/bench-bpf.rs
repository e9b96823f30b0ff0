//! Benchmarks of tether's programs; prints numbers, asserts nothing. Run as root:
//!
//! ```text
//! cargo build --release -p tether-integration --bin bench-bpf
//! ./target/release/bench-bpf [SECONDS_PER_RUN] [ROUNDS] [N_CONTAINERS] [TOGGLED_FLOW_SECONDS]
//! ```
//!
//! 1. Load cost: one load + N opens of the pins (tether) vs N loads (a loader per container).
//! 2. Throughput: iperf3 over a veth pair between two namespaces the benchmark creates,
//!    programs attached vs none: separate runs alternating (median ratio), then one long
//!    flow with the programs attached and detached every two seconds (each attached
//!    period against its detached neighbours).
//! 3. Per-packet cost of each program from the kernel's bpf_stats (run time / run count).
use std::fs;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tether_bpf::{container, programs, ContainerConfig, PinLayout, Prog, Programs};

struct Mount(PathBuf);
impl Drop for Mount {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
        let _ = fs::remove_dir(&self.0);
    }
}

struct Netns(String);
impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

struct Cgroup(PathBuf);
impl Drop for Cgroup {
    fn drop(&mut self) {
        let _ = fs::remove_dir(&self.0);
    }
}

struct Server(Child);
impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn sh(cmd: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .with_context(|| cmd.to_string())?;
    if !out.status.success() {
        bail!("{cmd} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn private_bpffs(tag: &str) -> Result<(Mount, PinLayout)> {
    let dir = std::env::temp_dir().join(format!("tether-bench-{tag}-{}", std::process::id()));
    fs::create_dir_all(&dir)?;
    nix::mount::mount(
        Some("bpf"),
        &dir,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )?;
    let layout = PinLayout::new(dir.join("tether"));
    Ok((Mount(dir), layout))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn load_cost(n: usize) -> Result<()> {
    println!("== load cost, N = {n} containers");
    let (_m, layout) = private_bpffs("load")?;
    let t = Instant::now();
    let report = programs::load_and_pin(&layout, tether_bpf::VERSION)?;
    let mut opens = Vec::new();
    for _ in 0..n {
        opens.push(Programs::open(&layout, tether_bpf::VERSION)?);
    }
    let tether = t.elapsed();
    drop(opens);
    let mut naive_verified = 0u64;
    let t = Instant::now();
    for i in 0..n {
        let (_m, l) = private_bpffs(&format!("naive{i}"))?;
        naive_verified += programs::load_and_pin(&l, tether_bpf::VERSION)?.verified_insns;
    }
    let naive = t.elapsed();
    println!(
        "tether (1 load + {n} opens): {:>9.1} ms, verifier insns {}",
        tether.as_secs_f64() * 1e3,
        report.verified_insns
    );
    println!(
        "naive  ({n} loads):          {:>9.1} ms, verifier insns {}",
        naive.as_secs_f64() * 1e3,
        naive_verified
    );
    println!(
        "one load: {:.1} ms; naive / tether total time: {:.1}x",
        report.load_time.as_secs_f64() * 1e3,
        naive.as_secs_f64() / tether.as_secs_f64()
    );
    Ok(())
}

/// One iperf3 run from `ns_a` (the client in `cgroup`) to `target`; bits per second
/// received. The client runs on CPU 0 and the server on CPU 1 (`-A 0,1`), so the scheduler
/// does not move them between runs; the first second (slow start) is omitted.
fn iperf(ns_a: &str, cgroup: &Path, target: &str, secs: u64) -> Result<f64> {
    let affinity = if num_cpus() >= 2 { "-A 0,1" } else { "" };
    let script = format!(
        "echo $$ > {}/cgroup.procs && exec ip netns exec {ns_a} iperf3 -c {target} -t {secs} -O 1 {affinity} -J",
        cgroup.display()
    );
    let out = sh("sh", &["-c", &script])?;
    let v: serde_json::Value = serde_json::from_str(&out).context("iperf3 -J output")?;
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("iperf3 result without sum_received")
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The plan of the throughput benchmark's tracked container (benchmark-only
/// `TETHER_BENCH_PLAN`): `accounting` (the default plan of a container: counters only) or
/// `policy` (counters and one deny rule, so every cgroup program is attached).
fn bench_plan() -> Result<(&'static str, ContainerConfig, Vec<tether_bpf::Cidr>)> {
    match std::env::var("TETHER_BENCH_PLAN").as_deref() {
        Ok("accounting") | Err(_) => Ok((
            "accounting",
            ContainerConfig {
                policy: false,
                ..ContainerConfig::default()
            },
            vec![],
        )),
        Ok("policy") => Ok((
            "policy",
            ContainerConfig::default(),
            vec!["192.0.2.0/24".parse()?],
        )),
        Ok(other) => bail!("TETHER_BENCH_PLAN={other}: expected accounting or policy"),
    }
}

/// The throughput benchmark's tracked cgroup, attached as a container with [`bench_plan`].
fn attach_tracked(
    progs: &Programs,
    layout: &PinLayout,
    tracked: &Path,
) -> Result<container::CgroupAttached> {
    let (_, config, deny) = bench_plan()?;
    Ok(container::attach_cgroup(
        progs,
        layout,
        "bench",
        "tracked",
        fs::File::open(tracked)?.as_fd(),
        &config,
        &deny,
    )?)
}

/// A cgroup_skb program that passes every packet and does nothing else, linked to both
/// directions of a cgroup: the cost of the kernel's cgroup hook by itself, a floor for what
/// any cgroup_skb program can cost. Dropping it closes the links, which detaches.
struct NoopCgroupSkb {
    _links: Vec<std::os::fd::OwnedFd>,
}

impl NoopCgroupSkb {
    fn attach(cgroup: &Path) -> Result<Self> {
        use std::os::fd::{FromRawFd, OwnedFd};
        // r0 = 1 (pass); exit.
        let insns: [u64; 2] = [0x0000_0001_0000_00b7, 0x0000_0000_0000_0095];
        let name = c"tether_noop";
        let license = c"GPL";
        // SAFETY: `insns` holds two 8-byte eBPF instructions in the kernel's encoding (the
        // layout of bpf_insn) and outlives the call; name and license are NUL-terminated;
        // a null opts pointer selects libbpf's defaults.
        let prog = unsafe {
            libbpf_sys::bpf_prog_load(
                libbpf_sys::BPF_PROG_TYPE_CGROUP_SKB,
                name.as_ptr(),
                license.as_ptr(),
                insns.as_ptr().cast(),
                insns.len() as _,
                std::ptr::null_mut(),
            )
        };
        if prog < 0 {
            bail!(
                "BPF_PROG_LOAD (no-op cgroup_skb): {}",
                std::io::Error::from_raw_os_error(-prog)
            );
        }
        // SAFETY: bpf_prog_load returned a new file descriptor that nothing else owns.
        let prog = unsafe { OwnedFd::from_raw_fd(prog) };
        let cg = fs::File::open(cgroup)?;
        let mut links = Vec::new();
        for attach_type in [
            libbpf_sys::BPF_CGROUP_INET_INGRESS,
            libbpf_sys::BPF_CGROUP_INET_EGRESS,
        ] {
            links.push(tether_bpf::sys::link_create_cgroup(
                prog.as_fd(),
                cg.as_fd(),
                attach_type,
            )?);
        }
        Ok(NoopCgroupSkb { _links: links })
    }
}

/// TC programs on the interfaces of the tracked container's namespace.
fn attach_tracked_tc(
    progs: &Programs,
    layout: &PinLayout,
    cgroup_id: u64,
    netns: &fs::File,
) -> Result<()> {
    container::attach_netns(progs, layout, "bench", "tracked", cgroup_id, netns.as_fd())?;
    Ok(())
}

/// What [`toggled`] measures with.
struct Toggled<'a> {
    progs: &'a Programs,
    layout: &'a PinLayout,
    ns_a: &'a str,
    tracked: &'a Path,
    netns: &'a fs::File,
    cgroup_id: u64,
    total: Duration,
}

/// How long the programs stay attached (then detached) in [`toggled`].
const TOGGLE_PERIOD: Duration = Duration::from_secs(2);
/// Around a toggle, iperf3 intervals are not used: the flow's start lags ours by the
/// control connection, and attaching or detaching takes a few RCU grace periods.
const TOGGLE_GUARD: f64 = 0.15;

/// One long iperf3 flow from the tracked cgroup while the programs are attached and
/// detached every [`TOGGLE_PERIOD`]; compares the throughput of each attached period with
/// the detached periods on either side. Adjacent periods of one flow share its connection,
/// its CPUs and nearly its moment, so most of the noise between separate runs cancels.
/// Expects the tracked cgroup attached and no TC programs; leaves it so.
fn toggled(t: &Toggled<'_>) -> Result<()> {
    let secs = t.total.as_secs();
    println!(
        "== iperf3, one {secs} s flow, programs attached and detached every {} ms",
        TOGGLE_PERIOD.as_millis()
    );
    // Which programs come and go (benchmark-only): `all` (default), `cgroup` (TC stays
    // off), `tc` (the cgroup programs stay on), `noop` (not tether's programs: a
    // cgroup_skb program that does nothing, for the cost of the kernel's hook itself), or
    // `none` (nothing at all: the method's own bias and noise, an A/A test).
    let what = std::env::var("TETHER_BENCH_TOGGLE").unwrap_or_else(|_| "all".into());
    if !["all", "cgroup", "tc", "noop", "none"].contains(&what.as_str()) {
        bail!("TETHER_BENCH_TOGGLE={what}: expected all, cgroup, tc, noop or none");
    }
    println!("toggled: {what}");
    let noop = std::cell::RefCell::new(None);
    let attach_cg = || attach_tracked(t.progs, t.layout, t.tracked).map(|_| ());
    let attach_tc = || attach_tracked_tc(t.progs, t.layout, t.cgroup_id, t.netns);
    let attach = || -> Result<()> {
        if what == "none" {
            return Ok(());
        }
        if what == "noop" {
            *noop.borrow_mut() = Some(NoopCgroupSkb::attach(t.tracked)?);
            return Ok(());
        }
        if what != "tc" {
            attach_cg()?;
        }
        if what != "cgroup" {
            attach_tc()?;
        }
        Ok(())
    };
    let detach = || -> Result<()> {
        if what == "none" {
            return Ok(());
        }
        if what == "noop" {
            noop.borrow_mut().take();
            return Ok(());
        }
        container::detach(t.progs, t.layout, "bench", "tracked")?;
        if what == "tc" {
            attach_cg()?;
        }
        Ok(())
    };
    if what == "noop" || what == "none" {
        // Tether's programs stay off for the whole flow.
        container::detach(t.progs, t.layout, "bench", "tracked")?;
    }
    detach()?;
    let affinity = if num_cpus() >= 2 { "-A 0,1" } else { "" };
    let script = format!(
        "echo $$ > {}/cgroup.procs && exec ip netns exec {} iperf3 -c 10.214.0.2 -t {secs} -i 0.25 {affinity} -J",
        t.tracked.display(),
        t.ns_a
    );
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
    while next + TOGGLE_PERIOD / 2 < t.total {
        if let Some(wait) = next.checked_sub(t0.elapsed()) {
            std::thread::sleep(wait);
        }
        let start = t0.elapsed().as_secs_f64();
        if on {
            detach()?;
        } else {
            attach()?;
        }
        on = !on;
        toggles.push((start, t0.elapsed().as_secs_f64(), on));
        next += TOGGLE_PERIOD;
    }
    let out = client.wait_with_output().context("iperf3 -c")?;
    if on {
        detach()?;
    }
    if what != "tc" {
        attach_cg()?;
    }
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
    let mut sorted = ratios.clone();
    sorted.sort_by(f64::total_cmp);
    let n = ratios.len() as f64;
    let mean = ratios.iter().sum::<f64>() / n;
    let sd = (ratios.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0)).sqrt();
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
        "attached / neighbouring detached, {} periods: median {:.3}, mean {:.3} ± {:.3} (95% CI), quartiles {:.3}–{:.3}",
        ratios.len(),
        sorted[sorted.len() / 2],
        mean,
        1.96 * sd / n.sqrt(),
        sorted[sorted.len() / 4],
        sorted[(3 * sorted.len()) / 4]
    );
    Ok(())
}

fn throughput(secs: u64, rounds: usize, toggle_secs: u64) -> Result<()> {
    println!("== iperf3 over veth, {rounds} rounds of {secs} s each, alternating");
    println!("tracked container's plan: {}", bench_plan()?.0);
    let (_m, layout) = private_bpffs("tput")?;
    programs::load_and_pin(&layout, tether_bpf::VERSION)?;
    let progs = Programs::open(&layout, tether_bpf::VERSION)?;
    let tag = std::process::id();
    let a = Netns(format!("tether-bench-a{tag}"));
    let b = Netns(format!("tether-bench-b{tag}"));
    for ns in [&a, &b] {
        sh("ip", &["netns", "add", &ns.0])?;
        sh("ip", &["-n", &ns.0, "link", "set", "lo", "up"])?;
    }
    sh(
        "ip",
        &[
            "-n", &a.0, "link", "add", "veth0", "type", "veth", "peer", "name", "veth1", "netns",
            &b.0,
        ],
    )?;
    for (ns, dev, addr) in [
        (&a, "veth0", "10.214.0.1/24"),
        (&b, "veth1", "10.214.0.2/24"),
    ] {
        sh("ip", &["-n", &ns.0, "addr", "add", addr, "dev", dev])?;
        sh("ip", &["-n", &ns.0, "link", "set", dev, "up"])?;
    }
    let _server = Server(
        Command::new("ip")
            .args(["netns", "exec", &b.0, "iperf3", "-s", "-B", "10.214.0.2"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("iperf3 -s")?,
    );
    std::thread::sleep(Duration::from_millis(500));
    let root = if Path::new("/sys/fs/cgroup/unified/cgroup.procs").exists() {
        PathBuf::from("/sys/fs/cgroup/unified")
    } else {
        PathBuf::from("/sys/fs/cgroup")
    };
    let plain = Cgroup(root.join(format!("tether-bench-plain-{tag}")));
    let tracked = Cgroup(root.join(format!("tether-bench-tracked-{tag}")));
    fs::create_dir_all(&plain.0)?;
    fs::create_dir_all(&tracked.0)?;
    let cg = attach_tracked(&progs, &layout, &tracked.0)?;
    let netns_fd = fs::File::open(format!("/run/netns/{}", a.0))?;

    // Throughput first, without bpf_stats (which adds its own cost to every run). Each
    // round is a pair of runs, in ABBA order (none first in even rounds, attached first in
    // odd ones) so that drift and any effect of going first cancel out.
    let attach_tc = || attach_tracked_tc(&progs, &layout, cg.cgroup_id, &netns_fd);
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
                attach_tc()?;
                pair[1] = iperf(&a.0, &tracked.0, "10.214.0.2", secs)?;
                container::detach(&progs, &layout, "bench", "tracked")?;
                attach_tracked(&progs, &layout, &tracked.0)?;
            } else {
                pair[0] = iperf(&a.0, &plain.0, "10.214.0.2", secs)?;
            }
        }
        off.push(pair[0]);
        on.push(pair[1]);
        pairs.push(pair[1] / pair[0]);
    }
    if toggle_secs > 0 {
        toggled(&Toggled {
            progs: &progs,
            layout: &layout,
            ns_a: &a.0,
            tracked: &tracked.0,
            netns: &netns_fd,
            cgroup_id: cg.cgroup_id,
            total: Duration::from_secs(toggle_secs),
        })?;
    }

    // Then one attached run with bpf_stats on, for each program's cost per run.
    attach_tc()?;
    let stats = tether_bpf::sys::enable_run_time_stats()?;
    let before: Vec<_> = Prog::ALL
        .iter()
        .map(|p| progs.run_stats(*p))
        .collect::<Result<_, _>>()?;
    let stats_started = Instant::now();
    let stats_bps = iperf(&a.0, &tracked.0, "10.214.0.2", secs)?;
    let stats_wall = stats_started.elapsed();
    let after: Vec<_> = Prog::ALL
        .iter()
        .map(|p| progs.run_stats(*p))
        .collect::<Result<_, _>>()?;
    drop(stats);
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
    container::detach(&progs, &layout, "bench", "tracked")?;
    Ok(())
}

/// The library's attach steps one by one, on a test cgroup and a namespace with one veth.
fn attach_cost(n: usize) -> Result<()> {
    println!("== attach steps, {n} containers one after another (median / p99, us)");
    let (_m, layout) = private_bpffs("attach")?;
    programs::load_and_pin(&layout, tether_bpf::VERSION)?;
    let progs = Programs::open(&layout, tether_bpf::VERSION)?;
    let tag = std::process::id();
    let ns = Netns(format!("tether-bench-att{tag}"));
    sh("ip", &["netns", "add", &ns.0])?;
    sh(
        "ip",
        &[
            "-n", &ns.0, "link", "add", "eth0", "type", "veth", "peer", "name", "eth1",
        ],
    )?;
    let netns = fs::File::open(format!("/run/netns/{}", ns.0))?;
    let root = if Path::new("/sys/fs/cgroup/unified/cgroup.procs").exists() {
        PathBuf::from("/sys/fs/cgroup/unified")
    } else {
        PathBuf::from("/sys/fs/cgroup")
    };
    // A node normally has containers running: one stays attached throughout, so the
    // kernel's per-hook static keys stay enabled (a first attach on an idle node patches
    // kernel text, a cost paid once, not per container).
    let resident = Cgroup(root.join(format!("tether-bench-att-{tag}-resident")));
    fs::create_dir_all(&resident.0)?;
    container::attach_cgroup(
        &progs,
        &layout,
        "bench",
        "resident",
        fs::File::open(&resident.0)?.as_fd(),
        &ContainerConfig::default(),
        &[],
    )?;
    let (mut cg_t, mut tc_t, mut watch_t, mut detach_t) = (vec![], vec![], vec![], vec![]);
    for i in 0..n {
        let cg = Cgroup(root.join(format!("tether-bench-att-{tag}-{i}")));
        fs::create_dir_all(&cg.0)?;
        let id = format!("c{i}");
        let dir = fs::File::open(&cg.0)?;
        let t = Instant::now();
        let a = container::attach_cgroup(
            &progs,
            &layout,
            "bench",
            &id,
            dir.as_fd(),
            &ContainerConfig::default(),
            &[],
        )?;
        cg_t.push(t.elapsed().as_secs_f64() * 1e6);
        let t = Instant::now();
        container::attach_netns(&progs, &layout, "bench", &id, a.cgroup_id, netns.as_fd())?;
        tc_t.push(t.elapsed().as_secs_f64() * 1e6);
        let t = Instant::now();
        let sock = container::link_events_socket(netns.as_fd())?;
        watch_t.push(t.elapsed().as_secs_f64() * 1e6);
        drop(sock);
        let t = Instant::now();
        container::detach(&progs, &layout, "bench", &id)?;
        detach_t.push(t.elapsed().as_secs_f64() * 1e6);
    }
    container::detach(&progs, &layout, "bench", "resident")?;
    for (name, v) in [
        ("cgroup: 6 links + entries", &mut cg_t),
        ("netns: 2 interfaces, 4 links", &mut tc_t),
        ("link watch socket", &mut watch_t),
        ("detach", &mut detach_t),
    ] {
        v.sort_by(f64::total_cmp);
        println!(
            "{name:<30} {:>8.0} {:>8.0}",
            v[v.len() / 2],
            v[(v.len() * 99 / 100).min(v.len() - 1)]
        );
    }
    Ok(())
}

/// An Ethernet + IPv4 + UDP packet to `dst` (BPF_PROG_TEST_RUN input).
fn udp4(dst: [u8; 4]) -> Vec<u8> {
    let mut p = vec![0u8; 14];
    p[12] = 0x08;
    p.extend_from_slice(&[0x45, 0, 0, 128, 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1]);
    p.extend_from_slice(&dst);
    p.extend_from_slice(&[0x30, 0x39, 0, 9, 0, 108, 0, 0]);
    p.resize(14 + 128, 0xab);
    p
}

/// Each program's cost per run from BPF_PROG_TEST_RUN (the kernel times `repeat` runs):
/// repeatable, unlike traffic on a shared machine.
fn run_cost(repeat: u32) -> Result<()> {
    println!("== cost per run, BPF_PROG_TEST_RUN x {repeat} (ns)");
    let (_m, layout) = private_bpffs("cost")?;
    programs::load_and_pin(&layout, tether_bpf::VERSION)?;
    let progs = Programs::open(&layout, tether_bpf::VERSION)?;
    let maps = progs.maps();
    let pkt = udp4([198, 51, 100, 7]);
    // BPF_PROG_TEST_RUN's packet belongs to the root cgroup (id 1) and the loopback device.
    let cost = |p: Prog| progs.test_run_cost(p, &pkt, repeat);
    println!(
        "cgroup egress, untracked cgroup     {:>6}",
        cost(Prog::CgroupEgress)?
    );
    let accounting = ContainerConfig {
        policy: false,
        ..ContainerConfig::default()
    };
    maps.set_container(1, &accounting, "bench", "cost")?;
    println!(
        "cgroup egress, tracked, accounting  {:>6}",
        cost(Prog::CgroupEgress)?
    );
    maps.remove_container(1)?;
    maps.set_container(1, &ContainerConfig::default(), "bench", "cost")?;
    println!(
        "cgroup egress, tracked, no rules    {:>6}",
        cost(Prog::CgroupEgress)?
    );
    println!(
        "cgroup ingress, tracked             {:>6}",
        cost(Prog::CgroupIngress)?
    );
    maps.add_deny(1, &"192.0.2.0/24".parse()?)?;
    println!(
        "cgroup egress, tracked, 1 rule      {:>6}",
        cost(Prog::CgroupEgress)?
    );
    let key = tether_bpf::IfKey::new(tether_bpf::sys::current_netns_cookie()?, 1);
    maps.set_iface(key, 1)?;
    println!(
        "tc egress, tracked interface        {:>6}",
        cost(Prog::TcEgress)?
    );
    println!(
        "tc ingress, tracked interface       {:>6}",
        cost(Prog::TcIngress)?
    );
    maps.remove_container(1)?;
    Ok(())
}

fn main() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("bench-bpf loads programs and makes namespaces: run it as root");
    }
    let args: Vec<String> = std::env::args().collect();
    let secs = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(5);
    let rounds = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(3);
    let n = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(50);
    let toggle_secs = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(60);
    println!(
        "kernel {}, tether object {}",
        sh("uname", &["-r"])?.trim(),
        tether_bpf::VERSION
    );
    run_cost(1_000_000)?;
    load_cost(n)?;
    attach_cost(n)?;
    if secs > 0 {
        throughput(secs, rounds, toggle_secs)?;
    }
    Ok(())
}
