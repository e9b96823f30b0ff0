//! Interface keys, both ways, side by side in one run: netns-cookie keys (Linux 6.2+) and
//! filter-classid keys (what kernels before 6.2 use: each interface's clsact filters carry
//! a classid claimed at attach). The netns attach step (a namespace with two interfaces)
//! for TCX + cookie, clsact + cookie and clsact + classid, alternating per container, and
//! each TC program's run cost (BPF_PROG_TEST_RUN) with either key.
use std::fs;
use std::os::fd::AsFd;
use std::time::Instant;

use anyhow::Result;
use tether_bpf::container::Select;
use tether_bpf::tc::TcAttach;
use tether_bpf::{container, programs, ContainerConfig, IfKey, NetnsKey, Prog, Programs};

use crate::fixture::{cgroup_root, private_bpffs, sh, Cgroup, Netns};
use crate::run_cost::udp4;

struct Way {
    name: &'static str,
    key: NetnsKey,
    tc: TcAttach,
    times: Vec<f64>,
}

/// The netns attach step and the TC programs' cost with each kind of key.
pub fn key_cost(n: usize, repeat: u32) -> Result<()> {
    println!("== interface keys: netns attach step, {n} containers per way (median / p99 us)");
    let tag = std::process::id();
    let ns = Netns(format!("tether-bench-key{tag}"));
    sh("ip", &["netns", "add", &ns.0])?;
    sh(
        "ip",
        &[
            "-n", &ns.0, "link", "add", "eth0", "type", "veth", "peer", "name", "eth1",
        ],
    )?;
    let netns = fs::File::open(format!("/run/netns/{}", ns.0))?;
    let (_m1, cookie_layout) = private_bpffs("key-cookie")?;
    let (_m2, classid_layout) = private_bpffs("key-classid")?;
    let open = |layout, key| -> Result<Programs> {
        programs::load_and_pin_with(layout, tether_bpf::VERSION, key)?;
        Ok(Programs::open(layout, tether_bpf::VERSION)?.assume_netns_key(key))
    };
    let cookie = open(&cookie_layout, NetnsKey::Cookie)?;
    let classid = open(&classid_layout, NetnsKey::Classid)?;
    let mut ways = Vec::new();
    if TcAttach::available().contains(&TcAttach::Tcx) {
        ways.push(Way {
            name: "tcx, netns-cookie keys",
            key: NetnsKey::Cookie,
            tc: TcAttach::Tcx,
            times: vec![],
        });
    }
    ways.push(Way {
        name: "clsact, netns-cookie keys",
        key: NetnsKey::Cookie,
        tc: TcAttach::Clsact,
        times: vec![],
    });
    ways.push(Way {
        name: "clsact, filter-classid keys",
        key: NetnsKey::Classid,
        tc: TcAttach::Clsact,
        times: vec![],
    });
    let root = cgroup_root();
    for i in 0..n {
        for w in ways.iter_mut() {
            let (progs, layout) = match w.key {
                NetnsKey::Cookie => (&cookie, &cookie_layout),
                NetnsKey::Classid => (&classid, &classid_layout),
            };
            let cg = Cgroup(root.join(format!("tether-bench-key-{tag}-{i}")));
            fs::create_dir_all(&cg.0)?;
            let id = format!("k{i}");
            let a = container::attach_cgroup(
                progs,
                layout,
                "bench",
                &id,
                fs::File::open(&cg.0)?.as_fd(),
                &ContainerConfig::default(),
                &[],
            )?;
            let t = Instant::now();
            let attached = container::attach_netns_with(
                progs,
                layout,
                "bench",
                &id,
                a.cgroup_id,
                netns.as_fd(),
                Select::default(),
                w.tc,
            )?;
            w.times.push(t.elapsed().as_secs_f64() * 1e6);
            anyhow::ensure!(attached.len() == 2, "{}: {attached:?}", w.name);
            if w.tc == TcAttach::Clsact {
                container::detach_clsact(progs, netns.as_fd(), a.cgroup_id)?;
            }
            container::detach(progs, layout, "bench", &id)?;
        }
    }
    let base = median(&mut ways[0].times.clone());
    for w in ways.iter_mut() {
        let m = median(&mut w.times);
        let p99 = w.times[(w.times.len() * 99 / 100).min(w.times.len() - 1)];
        println!(
            "{:<30} {m:>8.0} {p99:>8.0}   x{:.2}",
            w.name,
            m / base.max(1.0)
        );
    }

    println!("== interface keys: TC programs per run, tracked interface (ns)");
    let pkt = udp4([198, 51, 100, 7]);
    for (name, progs) in [
        ("netns-cookie keys", &cookie),
        ("filter-classid keys", &classid),
    ] {
        let maps = progs.maps();
        maps.set_container(1, &ContainerConfig::default(), "bench", "cost")?;
        // BPF_PROG_TEST_RUN runs on the loopback device with no filter: key (0 or cookie, 1).
        maps.set_iface(IfKey::new(progs.netns_cookie_here()?, 1), 1)?;
        let eg = progs.test_run_cost(Prog::TcEgress, &pkt, repeat)?;
        let ing = progs.test_run_cost(Prog::TcIngress, &pkt, repeat)?;
        println!("{name:<30} egress {eg:>6}   ingress {ing:>6}");
        maps.remove_container(1)?;
    }
    Ok(())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
