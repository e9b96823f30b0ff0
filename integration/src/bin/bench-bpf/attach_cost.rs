//! Attach cost: the library's attach steps (cgroup, netns, link watch, detach) timed one
//! by one for N containers in turn, with one resident container attached throughout.
use std::fs;
use std::os::fd::AsFd;
use std::time::Instant;

use anyhow::Result;
use tether_bpf::{container, programs, ContainerConfig, Programs};

use crate::fixture::{cgroup_root, private_bpffs, sh, Cgroup, Netns};

/// The library's attach steps one by one, on a test cgroup and a namespace with one veth.
pub fn attach_cost(n: usize) -> Result<()> {
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
    let root = cgroup_root();
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
