//! The programs against the real kernel: BPF_PROG_TEST_RUN on crafted packets, real connect()
//! and sendmsg() from a process in a test cgroup, and real traffic over a veth pair.
mod common;

use std::os::fd::AsFd;

use common::*;
use tether_bpf::{container, Cidr, ContainerConfig, IfKey, Prog};

/// Re-executed by [`spawn_probe`]; does nothing in a normal test run.
#[test]
fn probe_entry() {
    if let Ok(p) = std::env::var("TETHER_PROBE") {
        probe_main(&p);
    }
}

/// An Ethernet + IPv4 + UDP packet to `dst` with `payload` bytes.
fn ipv4_packet(dst: [u8; 4], payload: usize) -> Vec<u8> {
    let mut p = vec![0u8; 14];
    p[12] = 0x08; // ETH_P_IP
    let total = 20 + 8 + payload;
    let mut ip = vec![
        0x45,
        0,
        (total >> 8) as u8,
        total as u8,
        0,
        0,
        0,
        0,
        64,
        17,
        0,
        0,
    ];
    ip.extend_from_slice(&[10, 0, 0, 1]);
    ip.extend_from_slice(&dst);
    p.extend_from_slice(&ip);
    p.extend_from_slice(&[0x30, 0x39, 0, 9, 0, (8 + payload) as u8, 0, 0]);
    p.extend(std::iter::repeat_n(0xab, payload));
    p
}

/// An Ethernet + IPv6 + UDP packet to `dst`.
fn ipv6_packet(dst: [u8; 16], payload: usize) -> Vec<u8> {
    let mut p = vec![0u8; 14];
    p[12] = 0x86;
    p[13] = 0xdd; // ETH_P_IPV6
    let plen = 8 + payload;
    p.extend_from_slice(&[0x60, 0, 0, 0, (plen >> 8) as u8, plen as u8, 17, 64]);
    p.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    p.extend_from_slice(&dst);
    p.extend_from_slice(&[0x30, 0x39, 0, 9, 0, plen as u8, 0, 0]);
    p.extend(std::iter::repeat_n(0xab, payload));
    p
}

/// In BPF_PROG_TEST_RUN the packet's socket belongs to no cgroup, which the kernel reports
/// as the root cgroup (id 1).
const TEST_RUN_CGROUP: u64 = 1;

#[test]
fn cgroup_skb_counts_and_enforces_without_traffic() {
    let fs = Bpffs::new();
    let progs = fs.load();
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
    let fs = Bpffs::new();
    let progs = fs.load();
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
    let fs = Bpffs::new();
    let progs = fs.load();
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

/// Outbound TCP is checked once, at connect(), and its packets are not looked up in the
/// deny rules again; a connection a denied peer opens to the container is checked packet
/// by packet, so the container's replies never reach the peer.
#[test]
fn tcp_out_is_vetted_at_connect_and_accepted_connections_per_packet() {
    let fs = Bpffs::new();
    let progs = fs.load();
    let cg = TestCgroup::new();
    let dir = cg.open();
    let attached = container::attach_cgroup(
        &progs,
        &fs.layout,
        "test",
        "tcp",
        dir.as_fd(),
        &ContainerConfig::default(),
        &["127.0.0.2/32".parse::<Cidr>().unwrap()],
    )
    .unwrap();
    let counters = || progs.maps().cgroup_counters(attached.cgroup_id).unwrap();

    // Out, to an allowed server outside the container: every byte arrives and is counted.
    let listener = std::net::TcpListener::bind("127.0.0.3:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut s, &mut buf).unwrap();
        buf.len()
    });
    let r = probe_result(&spawn_probe(
        None,
        Some(&cg),
        &format!("send 127.0.0.3:{port} 200000"),
    ));
    assert_eq!(r, "sent:200000");
    assert_eq!(server.join().unwrap(), 200000);
    let c = counters();
    assert!(c.tx_bytes >= 200000, "{c:?}");
    assert_eq!(c.drops, 0, "{c:?}");

    // In, from a denied peer: the SYN-ACK is dropped and the peer's connect times out; an
    // allowed peer then gets through to the same listener.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut server = spawn_probe_child(Some(&cg), &format!("accept 127.0.0.1:{port} 10"));
    let to = std::net::SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, port);
    let denied = std::net::Ipv4Addr::new(127, 0, 0, 2);
    let started = std::time::Instant::now();
    let outcome = loop {
        match connect_from(denied, to, std::time::Duration::from_millis(1500)) {
            // Not listening yet.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                assert!(started.elapsed().as_secs() < 5, "the probe never listened");
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            other => break other,
        }
    };
    let e = outcome.expect_err("a denied peer's connection was answered");
    assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "{e}");
    assert!(counters().drops >= 1, "{:?}", counters());
    let mut s = connect_from(
        std::net::Ipv4Addr::new(127, 0, 0, 3),
        to,
        std::time::Duration::from_secs(3),
    )
    .unwrap();
    std::io::Write::write_all(&mut s, b"0123456789").unwrap();
    drop(s);
    let _ = server.wait();
    let mut out = String::new();
    std::io::Read::read_to_string(server.stdout.as_mut().unwrap(), &mut out).unwrap();
    assert!(out.contains("RESULT accepted:10"), "{out}");
    container::detach(&progs, &fs.layout, "test", "tcp").unwrap();
}

#[test]
fn connect_and_sendmsg_are_denied_in_the_cgroup() {
    let fs = Bpffs::new();
    let progs = fs.load();
    let cg = TestCgroup::new();
    let dir = cg.open();
    let deny = [
        "127.0.0.2/32".parse::<Cidr>().unwrap(),
        "::1/128".parse::<Cidr>().unwrap(),
    ];
    let attached = container::attach_cgroup(
        &progs,
        &fs.layout,
        "test",
        "deny",
        dir.as_fd(),
        &ContainerConfig::default(),
        &deny,
    )
    .unwrap();
    assert_eq!(attached.links.len(), 6);

    // Nothing listens on port 9: allowed → refused, denied → EPERM.
    let r = probe_result(&spawn_probe(None, Some(&cg), "connect 127.0.0.2:9"));
    assert_eq!(r, "permission denied:1", "connect4 to a denied address");
    let r = probe_result(&spawn_probe(None, Some(&cg), "connect 127.0.0.3:9"));
    assert_eq!(r, "connection refused:111");
    let r = probe_result(&spawn_probe(None, Some(&cg), "connect [::1]:9"));
    assert_eq!(r, "permission denied:1", "connect6");
    let r = probe_result(&spawn_probe(None, Some(&cg), "sendto 127.0.0.2:9 3"));
    assert_eq!(r, "permission denied:1", "sendmsg4");
    let r = probe_result(&spawn_probe(
        None,
        Some(&cg),
        "sendto [::ffff:127.0.0.2]:9 1",
    ));
    assert_eq!(
        r, "permission denied:1",
        "sendmsg6 to an IPv4-mapped denied address"
    );
    // Outside the cgroup nothing is denied.
    let r = probe_result(&spawn_probe(None, None, "connect 127.0.0.2:9"));
    assert_eq!(r, "connection refused:111");

    let c = progs.maps().cgroup_counters(attached.cgroup_id).unwrap();
    assert_eq!(c.denials, 2 + 3 + 1, "{c:?}");

    let d = container::detach(&progs, &fs.layout, "test", "deny").unwrap();
    assert_eq!(d.links, 6);
    assert_eq!(d.counters.denials, 6);
    assert!(progs.maps().known_cgroups().unwrap().is_empty());
    assert!(!fs.layout.container_dir("test", "deny").unwrap().exists());
    // Detached: the same probe is no longer denied.
    let r = probe_result(&spawn_probe(None, Some(&cg), "connect 127.0.0.2:9"));
    assert_eq!(r, "connection refused:111");
}

#[test]
fn veth_traffic_is_counted_per_container_and_interface() {
    let fs = Bpffs::new();
    let progs = fs.load();
    let pair = VethPair::new();
    let cg = TestCgroup::new();
    let attached = container::attach_cgroup(
        &progs,
        &fs.layout,
        "test",
        "veth",
        cg.open().as_fd(),
        &ContainerConfig::default(),
        &[],
    )
    .unwrap();
    let ifaces = container::attach_netns(
        &progs,
        &fs.layout,
        "test",
        "veth",
        attached.cgroup_id,
        pair.a.open().as_fd(),
    )
    .unwrap();
    assert_eq!(ifaces.len(), 1, "{ifaces:?}");
    assert_eq!(ifaces[0].name, "veth0");
    assert_eq!(ifaces[0].key.ifindex, pair.a.ifindex("veth0"));
    // The receiving side is a second container whose veth0 has the same ifindex. It only
    // counts (no deny rules), so it gets only the cgroup_skb programs.
    let cg_b = TestCgroup::new();
    let b = container::attach_cgroup(
        &progs,
        &fs.layout,
        "test",
        "veth-b",
        cg_b.open().as_fd(),
        &ContainerConfig {
            policy: false,
            ..ContainerConfig::default()
        },
        &[],
    )
    .unwrap();
    let b_progs: Vec<Prog> = b.links.iter().map(|(p, _)| *p).collect();
    assert_eq!(b_progs, [Prog::CgroupIngress, Prog::CgroupEgress]);
    let ifaces_b = container::attach_netns(
        &progs,
        &fs.layout,
        "test",
        "veth-b",
        b.cgroup_id,
        pair.b.open().as_fd(),
    )
    .unwrap();
    assert_eq!(ifaces_b[0].key.ifindex, ifaces[0].key.ifindex);
    if progs.netns_key() == tether_bpf::NetnsKey::Cookie {
        assert_ne!(ifaces_b[0].key, ifaces[0].key);
    }
    // Idempotent: nothing new to attach.
    assert!(container::attach_netns(
        &progs,
        &fs.layout,
        "test",
        "veth",
        attached.cgroup_id,
        pair.a.open().as_fd()
    )
    .unwrap()
    .is_empty());

    const N: u64 = 25;
    let target = format!("{}:9", pair.addr_b);
    let r = probe_result(&spawn_probe(
        Some(&pair.a),
        Some(&cg),
        &format!("sendto {target} {N}"),
    ));
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
    let r = probe_result(&spawn_probe(
        Some(&pair.a),
        None,
        &format!("sendto {target} 5"),
    ));
    assert_eq!(r, "sent");
    let after = maps.iface_counters(ifaces[0].key).unwrap();
    assert_eq!(after.drops - before.drops, 5, "{after:?}");

    let d = container::detach(&progs, &fs.layout, "test", "veth").unwrap();
    assert_eq!(d.links, 6 + 2);
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

#[test]
fn pins_are_validated_on_open() {
    let fs = Bpffs::new();
    let _progs = fs.load();
    let v = tether_bpf::VERSION;
    // A map pinned where a program belongs.
    let prog_pin = fs.layout.prog(v, Prog::Connect4.name());
    std::fs::remove_file(&prog_pin).unwrap();
    let err = tether_bpf::Programs::open(&fs.layout, v).unwrap_err();
    assert!(err.to_string().contains("missing"), "{err}");
    let wrong = fs.layout.map(v, "cgroups");
    let mut m = libbpf_rs::MapHandle::from_pinned_path(&wrong).unwrap();
    m.pin(&prog_pin).unwrap();
    let err = tether_bpf::Programs::open(&fs.layout, v)
        .unwrap_err()
        .to_string();
    assert!(err.contains("is not tether's"), "{err}");
    assert!(err.contains("tether_connect4"), "{err}");
}

#[test]
fn load_is_atomic_and_adoptable() {
    let fs = Bpffs::new();
    let report = tether_bpf::programs::load_and_pin(&fs.layout, tether_bpf::VERSION).unwrap();
    assert!(!report.lost_race);
    assert!(report.verified_insns > 0);
    assert_eq!(
        fs.layout.versions().unwrap(),
        vec![tether_bpf::VERSION.to_string()]
    );
    assert!(fs.layout.staging_dirs().unwrap().is_empty());
    let a = tether_bpf::Programs::open(&fs.layout, tether_bpf::VERSION).unwrap();
    // A second load of the same version loses the race and leaves the first pins in place.
    let again = tether_bpf::programs::load_and_pin(&fs.layout, tether_bpf::VERSION).unwrap();
    assert!(again.lost_race);
    let b = tether_bpf::Programs::open(&fs.layout, tether_bpf::VERSION).unwrap();
    assert_eq!(a.ids(), b.ids());
}

#[test]
fn missing_bpffs_is_a_clear_error() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let layout = tether_bpf::PinLayout::new(dir.path().join("tether"));
    let err = tether_bpf::programs::load_and_pin(&layout, tether_bpf::VERSION)
        .unwrap_err()
        .to_string();
    assert!(err.contains("is not on a bpf file system"), "{err}");
}

#[test]
fn a_full_map_is_a_clear_error() {
    let fs = Bpffs::new();
    let progs = fs.load();
    let maps = progs.maps();
    let cfg = ContainerConfig::default();
    // identities and containers hold 16384 entries each.
    let mut n = 0u64;
    let err = loop {
        n += 1;
        match maps.set_container(n, &cfg, "full", &format!("c{n}")) {
            Ok(()) => assert!(n <= 16384, "more entries than the map holds"),
            Err(e) => break e,
        }
    };
    assert_eq!(n, 16385);
    let msg = err.to_string();
    assert!(msg.contains("is full") && msg.contains("16384"), "{msg}");
    // Entries already written stay usable; removing one makes room again.
    assert!(maps.remove_container(1).unwrap() >= 2);
    maps.set_container(n, &cfg, "full", "again").unwrap();
}

#[test]
fn the_longest_names_containerd_allows_fit() {
    let fs = Bpffs::new();
    let progs = fs.load();
    let maps = progs.maps();
    // containerd's identifiers (namespaces and container ids) have at most 76 characters.
    let (ns, id) = ("n".repeat(76), "i".repeat(76));
    maps.set_container(7, &ContainerConfig::default(), &ns, &id)
        .unwrap();
    assert_eq!(maps.cgroup_of(&ns, &id).unwrap(), Some(7));
    let err = maps
        .set_container(8, &ContainerConfig::default(), &"n".repeat(77), "x")
        .unwrap_err()
        .to_string();
    assert!(err.contains("longer than 76"), "{err}");
}

#[test]
fn a_new_version_is_pinned_beside_the_old_and_gc_removes_it_once_unused() {
    let fs = Bpffs::new();
    let current = fs.load();
    // An older build's object, pinned under its own version.
    let old_version = "00000000000000aa";
    tether_bpf::programs::load_and_pin(&fs.layout, old_version).unwrap();
    let old = tether_bpf::Programs::open(&fs.layout, old_version).unwrap();
    assert_ne!(
        old.ids(),
        current.ids(),
        "each version has its own programs"
    );
    let mut versions = fs.layout.versions().unwrap();
    versions.sort();
    assert_eq!(versions.len(), 2);

    // A container attached with the old version keeps it alive.
    let cg = TestCgroup::new();
    container::attach_cgroup(
        &old,
        &fs.layout,
        "test",
        "old",
        cg.open().as_fd(),
        &ContainerConfig::default(),
        &[],
    )
    .unwrap();
    let all = [
        tether_bpf::Programs::open(&fs.layout, tether_bpf::VERSION).unwrap(),
        tether_bpf::Programs::open(&fs.layout, old_version).unwrap(),
    ];
    let r = tether_bpf::gc::collect(&fs.layout, &all, tether_bpf::VERSION, false).unwrap();
    assert!(r.versions.is_empty(), "{r:?}");
    assert!(fs.layout.version_dir(old_version).exists());

    container::detach(&old, &fs.layout, "test", "old").unwrap();
    let r = tether_bpf::gc::collect(&fs.layout, &all, tether_bpf::VERSION, false).unwrap();
    assert_eq!(r.versions, vec![old_version.to_string()]);
    assert!(!fs.layout.version_dir(old_version).exists());
    assert!(
        fs.layout.version_dir(tether_bpf::VERSION).exists(),
        "current stays"
    );

    // A version this build cannot open (another build's map layouts; here a map pin gone)
    // goes by its programs alone: kept while a container runs them or while it is young,
    // removed once unused.
    let other = "00000000000000bb";
    tether_bpf::programs::load_and_pin(&fs.layout, other).unwrap();
    let other_progs = tether_bpf::Programs::open(&fs.layout, other).unwrap();
    let cg2 = TestCgroup::new();
    container::attach_cgroup(
        &other_progs,
        &fs.layout,
        "test",
        "other",
        cg2.open().as_fd(),
        &ContainerConfig::default(),
        &[],
    )
    .unwrap();
    std::fs::remove_file(fs.layout.map(other, "deny4")).unwrap();
    assert!(tether_bpf::Programs::open(&fs.layout, other).is_err());
    let current = [tether_bpf::Programs::open(&fs.layout, tether_bpf::VERSION).unwrap()];
    let gc = |grace| {
        tether_bpf::gc::collect_with_grace(&fs.layout, &current, tether_bpf::VERSION, false, grace)
            .unwrap()
            .versions
    };
    let no_grace = std::time::Duration::ZERO;
    assert!(gc(no_grace).is_empty(), "its programs are in use");
    container::detach(&other_progs, &fs.layout, "test", "other").unwrap();
    assert!(gc(std::time::Duration::from_secs(3600)).is_empty(), "young");
    assert_eq!(gc(no_grace), vec![other.to_string()]);
    assert!(!fs.layout.version_dir(other).exists());
}

#[test]
fn audit_events_are_sampled_and_rate_limited() {
    let fs = Bpffs::new();
    let progs = fs.load();
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

/// Where TC keys are (0, ifindex) (kernels before 6.2, which attach with clsact), an
/// interface of a second namespace with a tracked ifindex is refused, in both attach modes,
/// and leaves nothing behind.
#[test]
fn ifindex_only_keys_refuse_a_shared_ifindex() {
    use tether_bpf::tc::TcAttach;
    let fs = Bpffs::new();
    let progs = fs
        .load()
        .assume_netns_key(tether_bpf::NetnsKey::IfindexOnly);
    let pair = VethPair::new();
    let attach_cg = |id: &str, cg: &TestCgroup| {
        container::attach_cgroup(
            &progs,
            &fs.layout,
            "test",
            id,
            cg.open().as_fd(),
            &ContainerConfig::default(),
            &[],
        )
        .unwrap()
        .cgroup_id
    };
    let (cg_a, cg_b) = (TestCgroup::new(), TestCgroup::new());
    let (a, b) = (attach_cg("shared-a", &cg_a), attach_cg("shared-b", &cg_b));
    let ifaces = container::attach_netns(
        &progs,
        &fs.layout,
        "test",
        "shared-a",
        a,
        pair.a.open().as_fd(),
    )
    .unwrap();
    assert_eq!(ifaces[0].key.netns_cookie, 0);
    assert_eq!(ifaces[0].key.ifindex, pair.b.ifindex("veth0"));
    for mode in [TcAttach::Tcx, TcAttach::Clsact] {
        let err = container::attach_netns_with(
            &progs,
            &fs.layout,
            "test",
            "shared-b",
            b,
            pair.b.open().as_fd(),
            None,
            mode,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("veth0") && err.contains("ifindex of another tracked container"),
            "{mode:?}: {err}"
        );
        let ifaces = progs.maps().ifaces().unwrap();
        assert_eq!(ifaces, [(ifaces[0].0, a)], "{mode:?}");
        let b_dir = fs.layout.container_dir("test", "shared-b").unwrap();
        let pins: Vec<_> = std::fs::read_dir(&b_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with("tc_"))
            .collect();
        assert!(pins.is_empty(), "{mode:?}: {pins:?}");
        let shown = egress_filters(&pair.b);
        assert!(!shown.contains("tether"), "{mode:?}: {shown}");
    }
    container::detach(&progs, &fs.layout, "test", "shared-a").unwrap();
    container::detach(&progs, &fs.layout, "test", "shared-b").unwrap();
    assert!(progs.maps().ifaces().unwrap().is_empty());
}

#[test]
fn clsact_fallback_counts_and_detaches() {
    use tether_bpf::tc::TcAttach;
    let fs = Bpffs::new();
    let progs = fs.load();
    let pair = VethPair::new();
    let cg = TestCgroup::new();
    let attached = container::attach_cgroup(
        &progs,
        &fs.layout,
        "test",
        "clsact",
        cg.open().as_fd(),
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
        None,
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
        None,
        TcAttach::Clsact,
    )
    .unwrap()
    .is_empty());

    let target = format!("{}:9", pair.addr_b);
    let r = probe_result(&spawn_probe(
        Some(&pair.a),
        None,
        &format!("sendto {target} 10"),
    ));
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
/// interfaces; a later one skips them, in both TC modes, and neither takes them over nor
/// zeroes the first one's counters.
#[test]
fn a_shared_namespace_stays_counted_for_the_first_container() {
    use tether_bpf::tc::TcAttach;
    let fs = Bpffs::new();
    let progs = fs.load();
    let maps = progs.maps();
    let pair = VethPair::new();
    let netns = pair.a.open();
    let target = format!("{}:9", pair.addr_b);
    for mode in [TcAttach::Tcx, TcAttach::Clsact] {
        let (cg_a, cg_b) = (TestCgroup::new(), TestCgroup::new());
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
                cg.open().as_fd(),
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
                None,
                mode,
            )
            .unwrap();
            (cgid, ifaces)
        };
        let (a, ifaces) = attach("pod-a", &cg_a);
        assert_eq!(ifaces.len(), 1, "{mode:?}");
        let key = ifaces[0].key;
        let r = probe_result(&spawn_probe(
            Some(&pair.a),
            None,
            &format!("sendto {target} 10"),
        ));
        assert_eq!(r, "sent");
        let before = maps.iface_counters(key).unwrap();
        assert!(before.tx_packets >= 10, "{mode:?}: {before:?}");

        let (b, ifaces) = attach("pod-b", &cg_b);
        assert!(ifaces.is_empty(), "{mode:?}: {ifaces:?}");
        assert_eq!(maps.ifaces().unwrap(), [(key, a)], "{mode:?}");
        // Not zeroed (the namespace's own chatter, as IPv6 neighbour discovery, may add).
        let kept = maps.iface_counters(key).unwrap();
        assert!(kept.tx_packets >= before.tx_packets, "{mode:?}: {kept:?}");
        let r = probe_result(&spawn_probe(
            Some(&pair.a),
            None,
            &format!("sendto {target} 10"),
        ));
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
