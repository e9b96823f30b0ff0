//! The programs on crafted packets (BPF_PROG_TEST_RUN), without traffic: cgroup_skb and TC
//! counting and enforcement, the TC fast path's slot collisions, audit event sampling.
mod common;

use common::*;
use tether_bpf::{Cidr, ContainerConfig, IfKey, Prog};

#[test]
fn cgroup_skb_counts_and_enforces_without_traffic() {
    let fs = Bpffs::new().unwrap();
    let progs = fs.load().unwrap();
    let maps = progs.maps();

    // Untracked cgroup: pass, nothing counted.
    let pkt = ipv4_packet([192, 0, 2, 7], 100);
    assert_eq!(progs.test_run(Prog::CgroupEgress, &pkt).unwrap(), 1);
    assert_eq!(maps.cgroup_counters(TEST_RUN_CGROUP).unwrap().tx_packets, 0);

    maps.set_container(TEST_RUN_CGROUP, &ContainerConfig::default(), "test", "c1")
        .unwrap();
    maps.add_deny(TEST_RUN_CGROUP, &"192.0.2.0/24".parse::<Cidr>().unwrap())
        .unwrap();
    maps.add_deny(TEST_RUN_CGROUP, &"2001:db8::/32".parse::<Cidr>().unwrap())
        .unwrap();

    // Allowed destination: passes and is counted (cgroup_skb sees from the IP header on).
    let ok = ipv4_packet([198, 51, 100, 1], 100);
    assert_eq!(progs.test_run(Prog::CgroupEgress, &ok).unwrap(), 1);
    assert_eq!(progs.test_run(Prog::CgroupIngress, &ok).unwrap(), 1);
    let c = maps.cgroup_counters(TEST_RUN_CGROUP).unwrap();
    assert_eq!((c.tx_packets, c.rx_packets), (1, 1));
    assert_eq!(c.tx_bytes, (ok.len() - 14) as u64);

    // Denied: IPv4 and IPv6, dropped and counted, not counted as sent.
    assert_eq!(progs.test_run(Prog::CgroupEgress, &pkt).unwrap(), 0);
    let v6 = ipv6_packet(
        [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9],
        40,
    );
    assert_eq!(progs.test_run(Prog::CgroupEgress, &v6).unwrap(), 0);
    let v6_ok = ipv6_packet([0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2], 40);
    assert_eq!(progs.test_run(Prog::CgroupEgress, &v6_ok).unwrap(), 1);
    let c = maps.cgroup_counters(TEST_RUN_CGROUP).unwrap();
    assert_eq!(c.drops, 2);
    assert_eq!(c.tx_packets, 2);

    // Policy off: the same packet passes.
    let off = ContainerConfig {
        policy: false,
        ..ContainerConfig::default()
    };
    maps.set_container(TEST_RUN_CGROUP, &off, "test", "c1")
        .unwrap();
    assert_eq!(progs.test_run(Prog::CgroupEgress, &pkt).unwrap(), 1);

    // Counted at the interfaces: the cgroup programs still enforce, and count no packet.
    let at_ifaces = ContainerConfig {
        count_at_interfaces: true,
        ..ContainerConfig::default()
    };
    maps.set_container(TEST_RUN_CGROUP, &at_ifaces, "test", "c1")
        .unwrap();
    let before = maps.cgroup_counters(TEST_RUN_CGROUP).unwrap();
    assert_eq!(progs.test_run(Prog::CgroupEgress, &ok).unwrap(), 1);
    assert_eq!(progs.test_run(Prog::CgroupIngress, &ok).unwrap(), 1);
    assert_eq!(progs.test_run(Prog::CgroupEgress, &pkt).unwrap(), 0);
    let c = maps.cgroup_counters(TEST_RUN_CGROUP).unwrap();
    assert_eq!(
        (c.rx_packets, c.rx_bytes, c.tx_packets, c.tx_bytes),
        (
            before.rx_packets,
            before.rx_bytes,
            before.tx_packets,
            before.tx_bytes
        )
    );
    assert_eq!(c.drops, before.drops + 1);

    // Removing the container removes every entry.
    assert!(maps.remove_container(TEST_RUN_CGROUP).unwrap() >= 4);
    assert!(maps.known_cgroups().unwrap().is_empty());
    assert!(maps.deny_rules(TEST_RUN_CGROUP).unwrap().is_empty());
}

#[test]
fn tc_counts_per_interface_and_drops_denied() {
    let fs = Bpffs::new().unwrap();
    let progs = fs.load().unwrap();
    let maps = progs.maps();
    let cookie = progs.netns_cookie_here().unwrap();
    // BPF_PROG_TEST_RUN runs on the loopback device (ifindex 1) of the caller's namespace.
    let key = IfKey::new(cookie, 1);
    let pkt = ipv4_packet([203, 0, 113, 5], 64);
    assert_eq!(progs.test_run(Prog::TcEgress, &pkt).unwrap(), u32::MAX); // TC_ACT_UNSPEC
    assert_eq!(maps.iface_counters(key).unwrap().tx_packets, 0);

    maps.set_container(42, &ContainerConfig::default(), "test", "tc")
        .unwrap();
    maps.set_iface(key, 42).unwrap();
    // Another namespace's interface with the same ifindex has its own counters.
    let other = IfKey::new(cookie.wrapping_add(1), 1);
    maps.set_iface(other, 42).unwrap();

    assert_eq!(progs.test_run(Prog::TcEgress, &pkt).unwrap(), u32::MAX);
    assert_eq!(progs.test_run(Prog::TcIngress, &pkt).unwrap(), u32::MAX);
    let c = maps.iface_counters(key).unwrap();
    assert_eq!((c.tx_packets, c.rx_packets), (1, 1));
    assert_eq!(c.tx_bytes, pkt.len() as u64);
    if cookie != 0 {
        assert_eq!(maps.iface_counters(other).unwrap(), Default::default());
    }

    maps.add_deny(42, &"203.0.113.0/24".parse().unwrap())
        .unwrap();
    assert_eq!(progs.test_run(Prog::TcEgress, &pkt).unwrap(), 2); // TC_ACT_SHOT
    let v6 = ipv6_packet([0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x99], 10);
    assert_eq!(progs.test_run(Prog::TcEgress, &v6).unwrap(), u32::MAX);
    maps.add_deny(42, &"fd00::99".parse().unwrap()).unwrap();
    assert_eq!(progs.test_run(Prog::TcEgress, &v6).unwrap(), 2);
    // Ingress is never subject to the egress policy.
    assert_eq!(progs.test_run(Prog::TcIngress, &pkt).unwrap(), u32::MAX);
    assert_eq!(maps.iface_counters(key).unwrap().drops, 2);
}

/// An interface whose slot of the TC fast path another interface holds is counted through
/// `tc_ifaces`; freed slots are taken again, and nothing is counted twice or lost.
#[test]
fn tc_slot_collision_falls_back_to_the_hash() {
    use tether_bpf::maps::tc_slot_of;
    let fs = Bpffs::new().unwrap();
    let progs = fs.load().unwrap();
    let maps = progs.maps();
    let cookie = progs.netns_cookie_here().unwrap();
    let key = IfKey::new(cookie, 1);
    // An interface of another namespace whose key hashes to the same slot.
    let rival = (1..u64::MAX)
        .map(|d| IfKey::new(cookie.wrapping_add(d), 1))
        .find(|k| tc_slot_of(*k) == tc_slot_of(key))
        .unwrap();
    let placed = || {
        let o = maps.occupancy().unwrap();
        let n = |name| o.iter().find(|m| m.name == name).unwrap().entries;
        (n("tc_slots"), n("tc_ifaces"))
    };
    let pkt = ipv4_packet([203, 0, 113, 5], 64);
    maps.set_container(42, &ContainerConfig::default(), "test", "slots")
        .unwrap();
    maps.set_container(43, &ContainerConfig::default(), "test", "rival")
        .unwrap();

    maps.set_iface(rival, 43).unwrap();
    maps.set_iface(key, 42).unwrap();
    assert_eq!(placed(), (1, 1));
    let mut listed = maps.ifaces().unwrap();
    listed.sort();
    let mut want = vec![(key, 42), (rival, 43)];
    want.sort();
    assert_eq!(listed, want);
    // One in the slot, one in the hash: each found by its key.
    assert_eq!(maps.iface_owner(key).unwrap(), Some(42));
    assert_eq!(maps.iface_owner(rival).unwrap(), Some(43));
    let unknown = IfKey::new(cookie.wrapping_add(7), 9);
    assert_eq!(maps.iface_owner(unknown).unwrap(), None);
    assert_eq!(progs.test_run(Prog::TcEgress, &pkt).unwrap(), u32::MAX);
    assert_eq!(maps.iface_counters(key).unwrap().tx_packets, 1);
    assert_eq!(maps.iface_counters(rival).unwrap(), Default::default());

    // The slot is freed; the interface in the hash stays there and keeps counting.
    assert_eq!(maps.remove_iface(rival).unwrap(), 1);
    maps.set_iface(key, 42).unwrap();
    assert_eq!(placed(), (0, 1));
    assert_eq!(progs.test_run(Prog::TcIngress, &pkt).unwrap(), u32::MAX);
    assert_eq!(maps.iface_counters(key).unwrap().rx_packets, 1);

    // Once it is forgotten it takes the free slot, with counters from zero.
    assert_eq!(maps.remove_iface(key).unwrap(), 1);
    maps.set_iface(key, 42).unwrap();
    assert_eq!(placed(), (1, 0));
    assert_eq!(maps.iface_counters(key).unwrap(), Default::default());
    assert_eq!(progs.test_run(Prog::TcIngress, &pkt).unwrap(), u32::MAX);
    let c = maps.iface_counters(key).unwrap();
    assert_eq!((c.rx_packets, c.tx_packets), (1, 0));
    assert_eq!(maps.ifaces().unwrap(), vec![(key, 42)]);

    // The rival now finds its slot taken; removing the containers empties both maps.
    maps.set_iface(rival, 43).unwrap();
    assert_eq!(placed(), (1, 1));
    assert_eq!(maps.iface_counters(rival).unwrap(), Default::default());
    maps.remove_container(42).unwrap();
    maps.remove_container(43).unwrap();
    assert_eq!(placed(), (0, 0));
    assert!(maps.ifaces().unwrap().is_empty());
}

#[test]
fn audit_events_are_sampled_and_rate_limited() {
    let fs = Bpffs::new().unwrap();
    let progs = fs.load().unwrap();
    let maps = progs.maps();
    let mut reader = tether_bpf::events::EventReader::new(&progs).unwrap();
    // Burst of 3 tokens, refilled at 1 per second: a flood yields about 3 events.
    let cfg = ContainerConfig {
        rate_per_sec: 1,
        burst: 3,
        ..ContainerConfig::default()
    };
    maps.set_container(TEST_RUN_CGROUP, &cfg, "test", "noisy")
        .unwrap();
    maps.add_deny(TEST_RUN_CGROUP, &"192.0.2.0/24".parse().unwrap())
        .unwrap();
    let pkt = ipv4_packet([192, 0, 2, 1], 10);
    for _ in 0..100 {
        assert_eq!(progs.test_run(Prog::CgroupEgress, &pkt).unwrap(), 0);
    }
    let events = reader.poll(std::time::Duration::from_millis(100)).unwrap();
    // Per-CPU buckets: at most burst events per CPU the test ran on.
    assert!(
        !events.is_empty() && events.len() <= 3 * 2,
        "{}",
        events.len()
    );
    let e = &events[0];
    assert_eq!(e.kind, tether_bpf::events::EventKind::DropCgroup);
    assert_eq!(e.daddr.to_string(), "192.0.2.1");
    assert_eq!(e.cgroup_id, TEST_RUN_CGROUP);
    let c = maps.cgroup_counters(TEST_RUN_CGROUP).unwrap();
    assert_eq!(c.drops, 100);
    assert_eq!(c.events_lost as usize, 100 - events.len());

    // Sampling: one in ten, no rate limit.
    let cfg = ContainerConfig {
        sample_every: 10,
        rate_per_sec: 0,
        ..ContainerConfig::default()
    };
    maps.remove_container(TEST_RUN_CGROUP).unwrap();
    maps.set_container(TEST_RUN_CGROUP, &cfg, "test", "sampled")
        .unwrap();
    maps.add_deny(TEST_RUN_CGROUP, &"192.0.2.0/24".parse().unwrap())
        .unwrap();
    for _ in 0..100 {
        progs.test_run(Prog::CgroupEgress, &pkt).unwrap();
    }
    let events = reader.poll(std::time::Duration::from_millis(100)).unwrap();
    // One in ten per CPU: 10, or 9 if the runs were split across two CPUs.
    assert!((9..=10).contains(&events.len()), "{}", events.len());
}

/// TC's cache of the destinations its judge allowed, for a container judged at its
/// interfaces: a plain TCP segment to a destination the judge let through is not judged
/// again for that container (shown by a rule added afterwards, which a running container's
/// rules never are: they are written before its first instruction), and the same segment
/// of another container, whose rules deny it, is judged and dropped. Runs pinned to one CPU:
/// the cache is per CPU.
#[test]
fn tc_caches_only_what_its_judge_allowed_each_container() {
    let mut one = nix::sched::CpuSet::new();
    one.set(0).unwrap();
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &one).unwrap();
    let fs = Bpffs::new().unwrap();
    let progs = fs.load().unwrap();
    let maps = progs.maps();
    let key = IfKey::new(progs.netns_cookie_here().unwrap(), 1);
    let judged = ContainerConfig {
        count_at_interfaces: true,
        judge_at_interfaces: true,
        ..ContainerConfig::default()
    };
    let tcp4 = {
        let mut p = ipv4_packet([203, 0, 113, 5], 64);
        p[14 + 9] = 6; // IPPROTO_TCP
        p
    };
    let tcp6 = {
        let mut p = ipv6_packet([0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x99], 64);
        p[14 + 6] = 6;
        p
    };
    const PASS: u32 = u32::MAX; // TC_ACT_UNSPEC
    const SHOT: u32 = 2;
    maps.set_container(42, &judged, "test", "allowed").unwrap();
    maps.set_container(43, &judged, "test", "denied").unwrap();
    for deny in ["203.0.113.0/24", "fd00::/16"] {
        maps.add_deny(43, &deny.parse().unwrap()).unwrap();
    }
    maps.set_iface(key, 42).unwrap();
    assert_eq!(progs.test_run(Prog::TcEgress, &tcp4).unwrap(), PASS);
    assert_eq!(progs.test_run(Prog::TcEgress, &tcp6).unwrap(), PASS);
    for deny in ["203.0.113.5/32", "fd00::99/128"] {
        maps.add_deny(42, &deny.parse().unwrap()).unwrap();
    }
    assert_eq!(progs.test_run(Prog::TcEgress, &tcp4).unwrap(), PASS);
    assert_eq!(progs.test_run(Prog::TcEgress, &tcp6).unwrap(), PASS);
    // Not plain (UDP): judged, so the new rule holds.
    assert_eq!(
        progs
            .test_run(Prog::TcEgress, &ipv4_packet([203, 0, 113, 5], 64))
            .unwrap(),
        SHOT
    );
    // The interface now container 43's: its rules judge the same segments.
    assert_eq!(maps.remove_iface(key).unwrap(), 1);
    maps.set_iface(key, 43).unwrap();
    assert_eq!(progs.test_run(Prog::TcEgress, &tcp4).unwrap(), SHOT);
    assert_eq!(progs.test_run(Prog::TcEgress, &tcp6).unwrap(), SHOT);
    assert_eq!(maps.iface_counters(key).unwrap().drops, 2);
}
