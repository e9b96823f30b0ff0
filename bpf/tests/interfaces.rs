//! The TC programs on real traffic over a veth pair: counting per container and interface,
//! both attach modes (TCX and the clsact fallback), ifindex-only keys, and containers sharing
//! a network namespace.
mod common;

use std::os::fd::AsFd;

use common::*;
use tether_bpf::container::Select;
use tether_bpf::{container, ContainerConfig, NetnsKey, Prog};

/// Re-executed by [`Probe`]; does nothing in a normal test run.
#[test]
fn probe_entry() {
    tether_bpf::testing::probe_entry().unwrap();
}

#[test]
fn veth_traffic_is_counted_per_container_and_interface() {
    veth_traffic(NetnsKey::probe());
}

/// The same with the keys of kernels before 6.2 (filter classid, ifindex): two namespaces'
/// `veth0` with one ifindex are counted apart.
#[test]
fn veth_traffic_is_counted_per_container_and_interface_with_classid_keys() {
    veth_traffic(NetnsKey::Classid);
}

fn veth_traffic(netns_key: NetnsKey) {
    let fs = Bpffs::new().unwrap();
    let progs = fs.load_with(netns_key).unwrap();
    let pair = VethPair::new();
    let cg = TestCgroup::new().unwrap();
    let attached = container::attach_cgroup(
        &progs,
        &fs.layout,
        "test",
        "veth",
        cg.open().unwrap().as_fd(),
        &ContainerConfig::default(),
        &[],
    )
    .unwrap();
    let ifaces = container::attach_netns_only(
        &progs,
        &fs.layout,
        "test",
        "veth",
        attached.cgroup_id,
        pair.a.open().as_fd(),
        veth0(),
    )
    .unwrap();
    assert_eq!(ifaces.len(), 1, "{ifaces:?}");
    assert_eq!(ifaces[0].name, "veth0");
    assert_eq!(ifaces[0].key.ifindex, pair.a.ifindex("veth0"));
    // The receiving side is a second container whose veth0 has the same ifindex. It only
    // counts (no deny rules), so it gets only the cgroup_skb programs.
    let cg_b = TestCgroup::new().unwrap();
    let b = container::attach_cgroup(
        &progs,
        &fs.layout,
        "test",
        "veth-b",
        cg_b.open().unwrap().as_fd(),
        &ContainerConfig {
            policy: false,
            ..ContainerConfig::default()
        },
        &[],
    )
    .unwrap();
    let b_progs: Vec<Prog> = b.links.iter().map(|(p, _)| *p).collect();
    assert_eq!(b_progs, [Prog::CgroupIngress, Prog::CgroupEgress]);
    let ifaces_b = container::attach_netns_only(
        &progs,
        &fs.layout,
        "test",
        "veth-b",
        b.cgroup_id,
        pair.b.open().as_fd(),
        veth0(),
    )
    .unwrap();
    assert_eq!(ifaces_b[0].key.ifindex, ifaces[0].key.ifindex);
    assert_ne!(ifaces_b[0].key, ifaces[0].key);
    assert!(ifaces[0].key.netns_cookie != 0 && ifaces_b[0].key.netns_cookie != 0);
    // Idempotent: nothing new to attach.
    assert!(container::attach_netns_only(
        &progs,
        &fs.layout,
        "test",
        "veth",
        attached.cgroup_id,
        pair.a.open().as_fd(),
        veth0()
    )
    .unwrap()
    .is_empty());

    const N: u64 = 25;
    let target = format!("{}:9", pair.addr_b);
    let r = Probe::new(&format!("sendto {target} {N}"))
        .netns(&pair.a.path)
        .cgroup(&cg)
        .result()
        .unwrap();
    assert_eq!(r, "sent");

    let maps = progs.maps();
    let cgc = maps.cgroup_counters(attached.cgroup_id).unwrap();
    assert_eq!(
        cgc.tx_packets, N,
        "cgroup egress counts exactly the datagrams sent"
    );
    assert_eq!(cgc.tx_bytes, N * (20 + 8 + 100));
    // All of it in the cgroup's local storage: the programs took the fast path.
    assert_eq!(
        maps.local_counters(attached.cgroup_id).unwrap(),
        Some(cgc),
        "counted in the cgroup's local storage"
    );
    let tc = maps.iface_counters(ifaces[0].key).unwrap();
    // TC also sees ARP (and maybe IPv6 neighbour discovery): at least N, a few more at most.
    assert!(tc.tx_packets >= N && tc.tx_packets <= N + 10, "{tc:?}");
    assert!(tc.tx_bytes >= N * (14 + 20 + 8 + 100), "{tc:?}");
    assert!(
        tc.rx_packets >= 1,
        "replies (ARP, ICMP unreachable) arrive: {tc:?}"
    );
    let tc_b = maps.iface_counters(ifaces_b[0].key).unwrap();
    assert!(
        tc_b.rx_packets >= N && tc_b.rx_packets <= N + 10,
        "{tc_b:?}"
    );
    assert!(
        tc_b.tx_packets >= 1 && tc_b.tx_packets < N,
        "b only replies: {tc_b:?}"
    );
    container::detach(&progs, &fs.layout, "test", "veth-b").unwrap();

    // Packet-level policy at TC: a process outside the tracked cgroup is dropped at veth0.
    maps.add_deny(attached.cgroup_id, &pair.addr_b.parse().unwrap())
        .unwrap();
    let before = maps.iface_counters(ifaces[0].key).unwrap();
    let r = Probe::new(&format!("sendto {target} 5"))
        .netns(&pair.a.path)
        .result()
        .unwrap();
    assert_eq!(r, "sent");
    let after = maps.iface_counters(ifaces[0].key).unwrap();
    assert_eq!(after.drops - before.drops, 5, "{after:?}");

    let tc_links = ifaces[0].links.len();
    if tc_links == 0 {
        assert_eq!(
            container::detach_clsact(&progs, pair.a.open().as_fd(), attached.cgroup_id).unwrap(),
            1
        );
    }
    let d = container::detach(&progs, &fs.layout, "test", "veth").unwrap();
    assert_eq!(d.links, 7 + tc_links);
    assert_eq!(d.counters.tx_packets, N, "final counters: {:?}", d.counters);
    assert_eq!(d.interfaces.len(), 1);
    assert!(maps.ifaces().unwrap().is_empty());
    // The local storage lives as long as the cgroup.
    drop(cg);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while maps.local_counters(attached.cgroup_id).unwrap().is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "local storage outlived its cgroup"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// The TC filters on the egress of `veth0` in `netns` (clsact mode), as `tc` shows them.
fn egress_filters(netns: &Netns) -> String {
    run(
        "ip",
        &[
            "netns",
            "exec",
            &netns.name,
            "tc",
            "filter",
            "show",
            "dev",
            "veth0",
            "egress",
        ],
    )
}

/// Where keys are (filter classid, ifindex) (kernels before 6.2): the classid is read back
/// from an interface's filters, so a container in a namespace whose interface lost its
/// container's entry (stale) takes it over with the same key, and attaching again finds
/// nothing new.
#[test]
fn classid_keys_are_read_back_from_the_filters() {
    let fs = Bpffs::new().unwrap();
    let progs = fs.load_with(NetnsKey::Classid).unwrap();
    let pair = VethPair::new();
    let attach_cg = |id: &str, cg: &TestCgroup| {
        container::attach_cgroup(
            &progs,
            &fs.layout,
            "test",
            id,
            cg.open().unwrap().as_fd(),
            &ContainerConfig::default(),
            &[],
        )
        .unwrap()
        .cgroup_id
    };
    let attach_if = |id: &str, cgid: u64| {
        container::attach_netns_only(
            &progs,
            &fs.layout,
            "test",
            id,
            cgid,
            pair.a.open().as_fd(),
            veth0(),
        )
        .unwrap()
    };
    let (cg_a, cg_c) = (TestCgroup::new().unwrap(), TestCgroup::new().unwrap());
    let a = attach_cg("classid-a", &cg_a);
    let first = attach_if("classid-a", a);
    assert_eq!(first.len(), 1);
    let key = first[0].key;
    assert!(
        key.netns_cookie != 0 && key.netns_cookie <= 0xffff,
        "{key:?}"
    );
    assert!(attach_if("classid-a", a).is_empty(), "attached twice");
    let shown = egress_filters(&pair.a);
    assert!(
        shown.contains("tether_tc_egress") && shown.contains(&format!("{:x}", key.netns_cookie)),
        "{shown}"
    );
    // The container goes without its filters removed: its entry is gone, the filter stays.
    container::detach(&progs, &fs.layout, "test", "classid-a").unwrap();
    assert!(progs.maps().ifaces().unwrap().is_empty());
    let c = attach_cg("classid-c", &cg_c);
    let taken = attach_if("classid-c", c);
    assert_eq!(taken.len(), 1);
    assert_eq!(taken[0].key, key, "the classid of the filter is kept");
    assert_eq!(progs.maps().ifaces().unwrap(), [(key, c)]);
    assert_eq!(
        container::detach_clsact(&progs, pair.a.open().as_fd(), c).unwrap(),
        1
    );
    assert!(!egress_filters(&pair.a).contains("tether"));
    container::detach(&progs, &fs.layout, "test", "classid-c").unwrap();
    assert!(progs.maps().ifaces().unwrap().is_empty());
}

#[test]
fn clsact_fallback_counts_and_detaches() {
    use tether_bpf::tc::TcAttach;
    let fs = Bpffs::new().unwrap();
    let progs = fs.load().unwrap();
    let pair = VethPair::new();
    let cg = TestCgroup::new().unwrap();
    let attached = container::attach_cgroup(
        &progs,
        &fs.layout,
        "test",
        "clsact",
        cg.open().unwrap().as_fd(),
        &ContainerConfig::default(),
        &[],
    )
    .unwrap();
    let netns = pair.a.open();
    let ifaces = container::attach_netns_with(
        &progs,
        &fs.layout,
        "test",
        "clsact",
        attached.cgroup_id,
        netns.as_fd(),
        veth0(),
        TcAttach::Clsact,
    )
    .unwrap();
    assert_eq!(ifaces.len(), 1);
    let shown = egress_filters(&pair.a);
    assert!(shown.contains("tether_tc_egres"), "{shown}");
    // Idempotent.
    assert!(container::attach_netns_with(
        &progs,
        &fs.layout,
        "test",
        "clsact",
        attached.cgroup_id,
        netns.as_fd(),
        veth0(),
        TcAttach::Clsact,
    )
    .unwrap()
    .is_empty());

    let target = format!("{}:9", pair.addr_b);
    let r = Probe::new(&format!("sendto {target} 10"))
        .netns(&pair.a.path)
        .result()
        .unwrap();
    assert_eq!(r, "sent");
    let c = progs.maps().iface_counters(ifaces[0].key).unwrap();
    assert!(c.tx_packets >= 10 && c.tx_packets <= 20, "{c:?}");

    assert_eq!(
        container::detach_clsact(&progs, netns.as_fd(), attached.cgroup_id).unwrap(),
        1
    );
    let shown = egress_filters(&pair.a);
    assert!(!shown.contains("tether"), "{shown}");
    container::detach(&progs, &fs.layout, "test", "clsact").unwrap();
    assert!(progs.maps().ifaces().unwrap().is_empty());
}

/// Containers sharing a network namespace (a pod's): the first one attached counts its
/// interfaces; a later one skips them, in every TC mode the kernel has, and neither takes them over nor
/// zeroes the first one's counters.
#[test]
fn a_shared_namespace_stays_counted_for_the_first_container() {
    shared_namespace(NetnsKey::probe());
}

/// The same with classid keys: the second container finds the first one's key in the
/// interface's filters.
#[test]
fn a_shared_namespace_stays_counted_for_the_first_container_with_classid_keys() {
    shared_namespace(NetnsKey::Classid);
}

fn shared_namespace(netns_key: NetnsKey) {
    use tether_bpf::tc::TcAttach;
    let fs = Bpffs::new().unwrap();
    let progs = fs.load_with(netns_key).unwrap();
    let maps = progs.maps();
    let pair = VethPair::new();
    let netns = pair.a.open();
    let target = format!("{}:9", pair.addr_b);
    // Classid keys live in clsact filters only.
    let modes: &[TcAttach] = match netns_key {
        NetnsKey::Classid => &[TcAttach::Clsact],
        NetnsKey::Cookie => TcAttach::available(),
    };
    for &mode in modes {
        let (cg_a, cg_b) = (TestCgroup::new().unwrap(), TestCgroup::new().unwrap());
        let attach = |id: &str, cg: &TestCgroup| {
            let config = ContainerConfig {
                count_at_interfaces: true,
                ..ContainerConfig::default()
            };
            let cgid = container::attach_cgroup(
                &progs,
                &fs.layout,
                "test",
                id,
                cg.open().unwrap().as_fd(),
                &config,
                &[],
            )
            .unwrap()
            .cgroup_id;
            let ifaces = container::attach_netns_with(
                &progs,
                &fs.layout,
                "test",
                id,
                cgid,
                netns.as_fd(),
                veth0(),
                mode,
            )
            .unwrap();
            (cgid, ifaces)
        };
        let (a, ifaces) = attach("pod-a", &cg_a);
        assert_eq!(ifaces.len(), 1, "{mode:?}");
        let key = ifaces[0].key;
        let r = Probe::new(&format!("sendto {target} 10"))
            .netns(&pair.a.path)
            .result()
            .unwrap();
        assert_eq!(r, "sent");
        let before = maps.iface_counters(key).unwrap();
        assert!(before.tx_packets >= 10, "{mode:?}: {before:?}");

        let (b, ifaces) = attach("pod-b", &cg_b);
        assert!(ifaces.is_empty(), "{mode:?}: {ifaces:?}");
        assert_eq!(maps.ifaces().unwrap(), [(key, a)], "{mode:?}");
        // Not zeroed (the namespace's own chatter, as IPv6 neighbour discovery, may add).
        let kept = maps.iface_counters(key).unwrap();
        assert!(kept.tx_packets >= before.tx_packets, "{mode:?}: {kept:?}");
        let r = Probe::new(&format!("sendto {target} 10"))
            .netns(&pair.a.path)
            .result()
            .unwrap();
        assert_eq!(r, "sent");
        let after = maps.iface_counters(key).unwrap();
        assert!(
            after.tx_packets >= before.tx_packets + 10,
            "{mode:?}: {after:?}"
        );

        // The second one's removal leaves the first one counting.
        if mode == TcAttach::Clsact {
            assert_eq!(
                container::detach_clsact(&progs, netns.as_fd(), b).unwrap(),
                0
            );
        }
        container::detach(&progs, &fs.layout, "test", "pod-b").unwrap();
        assert_eq!(maps.ifaces().unwrap(), [(key, a)], "{mode:?}");
        if mode == TcAttach::Clsact {
            assert_eq!(
                container::detach_clsact(&progs, netns.as_fd(), a).unwrap(),
                1
            );
        }
        let d = container::detach(&progs, &fs.layout, "test", "pod-a").unwrap();
        assert!(d.count_at_interfaces, "{mode:?}");
        assert_eq!(d.interfaces.len(), 1, "{mode:?}");
        assert_eq!(d.interfaces[0].0, key, "{mode:?}");
        assert!(d.interfaces[0].1.tx_packets >= after.tx_packets, "{mode:?}");
        assert!(maps.ifaces().unwrap().is_empty(), "{mode:?}");
    }
}

/// A namespace with more interfaces than the quota is refused whole: none of them gets
/// programs or an entry, and at the quota all do.
#[test]
fn a_namespace_over_the_interface_quota_is_refused() {
    let fs = Bpffs::new().unwrap();
    let progs = fs.load().unwrap();
    let ns = Netns::new();
    // Two veth pairs with both ends in the namespace: four interfaces besides lo.
    for i in 0..2 {
        let (a, b) = (format!("dq{i}a"), format!("dq{i}b"));
        let args = [
            "-n", &ns.name, "link", "add", &a, "type", "veth", "peer", "name", &b,
        ];
        run("ip", &args);
    }
    let cg = TestCgroup::new().unwrap();
    let a = container::attach_cgroup(
        &progs,
        &fs.layout,
        "test",
        "quota",
        cg.open().unwrap().as_fd(),
        &ContainerConfig::default(),
        &[],
    )
    .unwrap();
    let attach = |max| {
        container::attach_netns_only(
            &progs,
            &fs.layout,
            "test",
            "quota",
            a.cgroup_id,
            ns.open().as_fd(),
            Select { only: None, max },
        )
    };
    let owned = || {
        progs
            .maps()
            .ifaces()
            .unwrap()
            .into_iter()
            .filter(|(_, cg)| *cg == a.cgroup_id)
            .count()
    };
    // Where the cgroup programs are blind, lo gets TC programs too.
    let lo = usize::from(
        tether_bpf::features::CgroupSockets::probe() == tether_bpf::features::CgroupSockets::Blind,
    );
    let n = 4 + lo;
    let e = attach(n - 1).unwrap_err();
    assert!(
        matches!(e, tether_bpf::Error::Quota { what: "interfaces", count, max }
            if count == n && max == n - 1),
        "{e}"
    );
    assert_eq!(owned(), 0, "an interface attached over the quota");
    assert_eq!(attach(n).unwrap().len(), n);
    assert_eq!(owned(), n);
    container::detach(&progs, &fs.layout, "test", "quota").unwrap();
}

/// A link-events socket that overran (ENOBUFS: a burst of link changes beyond its buffer)
/// is not a broken watch: the drain says a link was added, so the watcher lists the
/// namespace again.
#[test]
fn an_overrun_link_events_socket_asks_for_a_new_look() {
    let ns = Netns::new();
    let sock = container::link_events_socket(ns.open().as_fd()).unwrap();
    // The smallest receive buffer the kernel allows.
    nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::RcvBuf, &0).unwrap();
    for i in 0..40 {
        let (a, b) = (format!("ob{i}a"), format!("ob{i}b"));
        let args = [
            "-n", &ns.name, "link", "add", &a, "type", "veth", "peer", "name", &b,
        ];
        run("ip", &args);
    }
    let mut buf = vec![0u8; tether_bpf::netlink::RECV_BUFFER];
    let r = tether_bpf::netlink::drain(sock.as_fd(), &mut buf).unwrap();
    assert_eq!(r, tether_bpf::netlink::Drained::Empty { new_link: true });
    // Drained: nothing more.
    let r = tether_bpf::netlink::drain(sock.as_fd(), &mut buf).unwrap();
    assert_eq!(r, tether_bpf::netlink::Drained::Empty { new_link: false });
}

/// A container attached counted and judged at its cgroup (no interface at create), moved to
/// its interfaces before it runs (`auto` at start): its cgroup_skb links go, the other
/// cgroup links stay, and its own packets are counted and judged at its interface from then
/// on, which is where its interface's entry learns it (its flags, copied from the
/// container's at the interface's attach, change with the container's).
#[test]
fn a_container_moved_to_its_interfaces_is_counted_and_judged_there() {
    let fs = Bpffs::new().unwrap();
    let progs = fs.load().unwrap();
    let pair = VethPair::new();
    let cg = TestCgroup::new().unwrap();
    let from = ContainerConfig::default();
    assert!(from.policy && from.account && !from.count_at_interfaces);
    let attached = container::attach_cgroup(
        &progs,
        &fs.layout,
        "test",
        "moved",
        cg.open().unwrap().as_fd(),
        &from,
        &[],
    )
    .unwrap();
    let ifaces = container::attach_netns_only(
        &progs,
        &fs.layout,
        "test",
        "moved",
        attached.cgroup_id,
        pair.a.open().as_fd(),
        veth0(),
    )
    .unwrap();
    assert_eq!(ifaces.len(), 1, "{ifaces:?}");
    // Counted at the cgroup before the move (as the kernel's own packets of a namespace
    // can be before start); afterwards those are the interface's alone.
    let target = format!("{}:9", pair.addr_b);
    let r = Probe::new(&format!("sendto {target} 3"))
        .netns(&pair.a.path)
        .cgroup(&cg)
        .result()
        .unwrap();
    assert_eq!(r, "sent");
    let maps = progs.maps();
    assert_eq!(
        maps.cgroup_counters(attached.cgroup_id).unwrap().tx_packets,
        3
    );
    let to = ContainerConfig {
        count_at_interfaces: true,
        judge_at_interfaces: true,
        ..from
    };
    let dir = fs.layout.container_dir("test", "moved").unwrap();
    let (added, removed) = container::reconfigure(
        &progs,
        &dir,
        cg.open().unwrap().as_fd(),
        attached.cgroup_id,
        &from,
        &to,
    )
    .unwrap();
    assert!(added.is_empty(), "{added:?}");
    assert_eq!(removed, [Prog::CgroupIngress, Prog::CgroupEgress]);
    let mut pins: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("cgroup_"))
        .collect();
    pins.sort();
    assert_eq!(
        pins,
        [
            "cgroup_tether_connect4",
            "cgroup_tether_connect6",
            "cgroup_tether_sendmsg4",
            "cgroup_tether_sendmsg6",
            "cgroup_tether_setsockopt"
        ]
    );
    assert_eq!(maps.container_config(attached.cgroup_id).unwrap(), Some(to));

    // Counted at veth0, not at the cgroup.
    const N: u64 = 10;
    let r = Probe::new(&format!("sendto {target} {N}"))
        .netns(&pair.a.path)
        .cgroup(&cg)
        .result()
        .unwrap();
    assert_eq!(r, "sent");
    let cgc = maps.cgroup_counters(attached.cgroup_id).unwrap();
    assert_eq!(cgc.tx_packets, 0, "{cgc:?}");
    let tc = maps.iface_counters(ifaces[0].key).unwrap();
    assert!(tc.tx_packets >= N, "{tc:?}");

    // Judged at veth0: a raw socket's datagrams to a denied address (no connect() or
    // sendmsg() hook sees them) leave the socket without an error and are dropped there.
    // Judged at the cgroup, the cgroup egress program would have refused them with EPERM.
    maps.add_deny(attached.cgroup_id, &pair.addr_b.parse().unwrap())
        .unwrap();
    let r = Probe::new(&format!("raw {target} 5"))
        .netns(&pair.a.path)
        .cgroup(&cg)
        .result()
        .unwrap();
    assert_eq!(r, "sent");
    let after = maps.iface_counters(ifaces[0].key).unwrap();
    assert_eq!(after.drops - tc.drops, 5, "{after:?}");

    let tc_links = ifaces[0].links.len();
    if tc_links == 0 {
        container::detach_clsact(&progs, pair.a.open().as_fd(), attached.cgroup_id).unwrap();
    }
    let d = container::detach(&progs, &fs.layout, "test", "moved").unwrap();
    assert_eq!(d.links, 5 + tc_links);
}
