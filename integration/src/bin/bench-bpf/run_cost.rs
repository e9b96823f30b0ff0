//! Per-run cost: each program's cost from BPF_PROG_TEST_RUN, untracked and tracked, with
//! and without a deny rule, and the test packet it runs on.
use anyhow::Result;
use tether_bpf::{programs, ContainerConfig, Prog, Programs};

use crate::fixture::private_bpffs;

/// An Ethernet + IPv4 + UDP packet to `dst` (BPF_PROG_TEST_RUN input).
pub fn udp4(dst: [u8; 4]) -> Vec<u8> {
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
pub fn run_cost(repeat: u32) -> Result<()> {
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
    let key = tether_bpf::IfKey::new(progs.netns_cookie_here()?, 1);
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
