//! Benchmarks of tether's programs; prints numbers, asserts nothing. Run as root:
//!
//! ```text
//! cargo build --release -p tether-integration --bin bench-bpf
//! ./target/release/bench-bpf [SECONDS_PER_RUN] [ROUNDS] [N_CONTAINERS] [TOGGLED_FLOW_SECONDS] \
//!     [PAIRED_FLOWS_SECONDS]
//! ```
//!
//! 1. Load cost: one load + N opens of the pins (tether) vs N loads (a loader per container).
//! 2. Throughput: iperf3 over a veth pair between two namespaces the benchmark creates,
//!    programs attached vs none: separate runs alternating (median ratio), then one long
//!    flow with the programs attached and detached every two seconds (each attached
//!    period against its detached neighbours), then two flows at once with the programs
//!    on one and then the other, swapped every two seconds (same-window ratios).
//! 3. Per-packet cost of each program from the kernel's bpf_stats (run time / run count).
//!
//! Benchmark-only environment: `TETHER_BENCH_PLAN` (the tracked container's plan),
//! `TETHER_BENCH_TOGGLE` and `TETHER_BENCH_VERSUS` (what is attached, and what the other
//! flow carries meanwhile), `TETHER_BENCH_SPIN` (the `spin` toggle's loop) and
//! `TETHER_BENCH_STEER` (where the flows run: see `Steer`).
//!
//! Modules, by what they measure: [`run_cost`] (BPF_PROG_TEST_RUN), [`load_cost`],
//! [`attach_cost`], [`key_cost`] (netns-cookie against filter-classid interface keys),
//! [`throughput`] (alternating runs and bpf_stats) with [`periods`] (the
//! toggled and paired flows), [`flow`] (one iperf3 flow and its toggles), [`noop`] (the
//! no-op baseline programs), [`report`] (statistics) and [`fixture`] (bpffs mounts,
//! namespaces, cgroups, child processes). This file parses the arguments and the
//! benchmark-only environment and runs the benchmarks in order.
mod attach_cost;
mod fixture;
mod flow;
mod key_cost;
mod load_cost;
mod noop;
mod periods;
mod report;
mod run_cost;
mod throughput;

use anyhow::{bail, Context, Result};
use tether_bpf::ContainerConfig;

use crate::fixture::sh;

fn main() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("bench-bpf loads programs and makes namespaces: run it as root");
    }
    let args: Vec<String> = std::env::args().collect();
    let secs = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(5);
    let rounds = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(3);
    let n = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(50);
    let toggle_secs = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(60);
    let paired_secs = args.get(5).and_then(|s| s.parse().ok()).unwrap_or(120);
    println!(
        "kernel {}, tether object {}",
        sh("uname", &["-r"])?.trim(),
        tether_bpf::VERSION
    );
    run_cost::run_cost(1_000_000)?;
    load_cost::load_cost(n)?;
    attach_cost::attach_cost(n)?;
    key_cost::key_cost(n, 1_000_000)?;
    if secs > 0 {
        throughput::throughput(secs, rounds, toggle_secs, paired_secs)?;
    }
    Ok(())
}

/// Where the throughput flows run (benchmark-only `TETHER_BENCH_STEER`).
///
/// A veth pair delivers a packet on the CPU that sent it. With the client on CPU 0 and the
/// server on CPU 1, the client sends data from both: from its own CPU (write()) and from
/// the server's (an ACK processed there opens the window and sends more). The two CPUs'
/// backlogs drain independently, so data arrives out of order, the server takes it for
/// loss and the client retransmits: thousands of spurious retransmissions a second
/// (`TcpExtTCPDSACKRecvSegs`), and a flow whose rate follows its reordering, which a few
/// nanoseconds more on one path change by more than their share of the CPU.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Steer {
    /// The default: client on CPU 0, server on CPU 1, the veth pair as it comes.
    None,
    /// As `None`, with Receive Packet Steering: what `veth1` receives is processed on the
    /// server's CPU, what `veth0` receives on the client's. One queue per direction and
    /// no reordering, but an inter-processor interrupt per batch (a VM exit in a VM).
    Rps,
    /// Each flow's client and server on one CPU (flow N on CPU N): one queue, no
    /// reordering, no interrupts between CPUs; the flow's rate follows its CPU time.
    Cpu,
}

fn steering() -> Result<Steer> {
    match std::env::var("TETHER_BENCH_STEER").as_deref() {
        Err(_) | Ok("none") => Ok(Steer::None),
        Ok("rps") => Ok(Steer::Rps),
        Ok("cpu") => Ok(Steer::Cpu),
        Ok(other) => bail!("TETHER_BENCH_STEER={other}: expected none, rps or cpu"),
    }
}

/// The plan of the throughput benchmark's tracked container (benchmark-only
/// `TETHER_BENCH_PLAN`), as the shim's default (`count_at = "auto"`) makes it for a
/// container whose network namespace is its own with an interface (the client's veth0):
/// `accounting` (the default plan: counters only, counted at the interfaces), `policy`
/// (counters and one deny rule, judged at the interfaces as `judge_at = "auto"` judges such
/// a container: no cgroup_skb egress program; `policy-tc`, `judge_at = "interfaces"`, is
/// the same), `policy-cgroup` (the same rule judged at the cgroup, `judge_at = "cgroup"`:
/// the cgroup_skb egress program judges the container's sockets' packets), or `cgroup`
/// (counters only, counted at the cgroup: `count_at = "cgroup"`).
fn bench_plan() -> Result<(&'static str, ContainerConfig, Vec<tether_bpf::Cidr>)> {
    let accounting = ContainerConfig {
        policy: false,
        count_at_interfaces: true,
        ..ContainerConfig::default()
    };
    // One deny rule, judged at the interfaces (`at_ifaces`) or at the cgroup.
    let policy = |name, at_ifaces| -> Result<_> {
        let config = ContainerConfig {
            policy: true,
            judge_at_interfaces: at_ifaces,
            ..accounting
        };
        Ok((name, config, vec!["192.0.2.0/24".parse()?]))
    };
    match std::env::var("TETHER_BENCH_PLAN").as_deref() {
        Ok("accounting") | Err(_) => Ok(("accounting", accounting, vec![])),
        Ok("policy") => policy("policy", true),
        Ok("policy-tc") => policy("policy-tc", true),
        Ok("policy-cgroup") => policy("policy-cgroup", false),
        Ok("cgroup") => Ok((
            "cgroup",
            ContainerConfig {
                count_at_interfaces: false,
                ..accounting
            },
            vec![],
        )),
        Ok(other) => {
            bail!("TETHER_BENCH_PLAN={other}: expected accounting, policy, policy-tc, policy-cgroup or cgroup")
        }
    }
}

/// What the toggled and paired benchmarks attach and detach (benchmark-only
/// `TETHER_BENCH_TOGGLE`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Toggle {
    /// The cgroup and the TC programs (the default).
    All,
    /// The cgroup programs; TC stays off. (With the default plan, counted at the
    /// interfaces, that is connect4 alone: `TETHER_BENCH_PLAN=cgroup` for cgroup_skb.)
    Cgroup,
    /// The TC programs; the cgroup programs stay on (as for `Cgroup`).
    Tc,
    /// Not tether's programs: a cgroup_skb program that does nothing (the kernel's hook).
    Noop,
    /// A TC program that does nothing, on the client's `veth0` (the TCX hook).
    NoopTc,
    /// The cgroup_skb no-op on the egress hook only.
    NoopCgEgress,
    /// The cgroup_skb no-op on the ingress hook only.
    NoopCgIngress,
    /// Both no-ops: the hooks that tether's programs use, without tether's work.
    NoopAll,
    /// Both no-ops, off the flow's path (cgroup_skb on an empty child cgroup of the
    /// client's, TC on the client namespace's `lo`): the same attach and detach work with no
    /// per-packet work for the flow, a check that toggling itself costs the flow nothing.
    NoopOffPath,
    /// The cgroup_skb no-op after a loop of `TETHER_BENCH_SPIN` additions (default 300):
    /// a known cost per packet, which calibrates what a nanosecond costs in throughput.
    Spin,
    /// Nothing at all: the method's own bias and noise (an A/A test).
    None,
}

impl Toggle {
    /// What the benchmarks toggle: `TETHER_BENCH_TOGGLE`, default `all`.
    fn from_env() -> Result<Self> {
        Self::parse("TETHER_BENCH_TOGGLE", "all")
    }

    /// What the other flow of [`periods::paired`] carries meanwhile: `TETHER_BENCH_VERSUS`, default
    /// `none` (nothing). With `noop-all` the ratio is tether's work beyond the kernel's
    /// hooks, in one window.
    fn versus_from_env() -> Result<Self> {
        Self::parse("TETHER_BENCH_VERSUS", "none")
    }

    fn parse(var: &str, default: &str) -> Result<Self> {
        Ok(match std::env::var(var).as_deref().unwrap_or(default) {
            "all" => Toggle::All,
            "cgroup" => Toggle::Cgroup,
            "tc" => Toggle::Tc,
            "noop" => Toggle::Noop,
            "noop-tc" => Toggle::NoopTc,
            "noop-cg-egress" => Toggle::NoopCgEgress,
            "noop-cg-ingress" => Toggle::NoopCgIngress,
            "noop-all" => Toggle::NoopAll,
            "noop-off-path" => Toggle::NoopOffPath,
            "spin" => Toggle::Spin,
            "none" => Toggle::None,
            other => {
                bail!("{var}={other}: expected all, cgroup, tc, noop, noop-tc, noop-cg-egress, noop-cg-ingress, noop-all, noop-off-path, spin or none")
            }
        })
    }
}

/// Additions per run of the `spin` toggle's program (benchmark-only `TETHER_BENCH_SPIN`).
fn spin() -> Result<u32> {
    match std::env::var("TETHER_BENCH_SPIN") {
        Err(_) => Ok(300),
        Ok(v) => v
            .parse()
            .ok()
            .filter(|n| (1..=100_000).contains(n))
            .with_context(|| format!("TETHER_BENCH_SPIN={v}: expected 1..=100000")),
    }
}
