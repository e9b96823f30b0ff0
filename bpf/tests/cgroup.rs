//! The cgroup programs against real sockets: connect() and sendmsg() from a probe process in a
//! test cgroup, and TCP connections in and out of it.
mod common;

use std::os::fd::AsFd;

use common::*;
use tether_bpf::{container, Cidr, ContainerConfig};

/// Re-executed by [`Probe`]; does nothing in a normal test run.
#[test]
fn probe_entry() {
    tether_bpf::testing::probe_entry().unwrap();
}

/// Outbound TCP is checked once, at connect(), and its packets are not looked up in the
/// deny rules again; a connection a denied peer opens to the container is checked packet
/// by packet, so the container's replies never reach the peer.
#[test]
fn tcp_out_is_vetted_at_connect_and_accepted_connections_per_packet() {
    let fs = Bpffs::new().unwrap();
    let progs = fs.load().unwrap();
    let cg = TestCgroup::new().unwrap();
    let dir = cg.open().unwrap();
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
    let r = Probe::new(&format!("send 127.0.0.3:{port} 200000"))
        .cgroup(&cg)
        .result()
        .unwrap();
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
    let mut server = Probe::new(&format!("accept 127.0.0.1:{port} 10"))
        .cgroup(&cg)
        .spawn()
        .unwrap();
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
    let fs = Bpffs::new().unwrap();
    let progs = fs.load().unwrap();
    let cg = TestCgroup::new().unwrap();
    let dir = cg.open().unwrap();
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
    assert_eq!(attached.links.len(), 7);

    // Nothing listens on port 9: allowed → refused, denied → EPERM.
    let r = Probe::new("connect 127.0.0.2:9")
        .cgroup(&cg)
        .result()
        .unwrap();
    assert_eq!(r, "permission denied:1", "connect4 to a denied address");
    let r = Probe::new("connect 127.0.0.3:9")
        .cgroup(&cg)
        .result()
        .unwrap();
    assert_eq!(r, "connection refused:111");
    let r = Probe::new("connect [::1]:9").cgroup(&cg).result().unwrap();
    assert_eq!(r, "permission denied:1", "connect6");
    let r = Probe::new("sendto 127.0.0.2:9 3")
        .cgroup(&cg)
        .result()
        .unwrap();
    assert_eq!(r, "permission denied:1", "sendmsg4");
    let r = Probe::new("sendto [::ffff:127.0.0.2]:9 1")
        .cgroup(&cg)
        .result()
        .unwrap();
    assert_eq!(
        r, "permission denied:1",
        "sendmsg6 to an IPv4-mapped denied address"
    );
    // Outside the cgroup nothing is denied.
    let r = Probe::new("connect 127.0.0.2:9").result().unwrap();
    assert_eq!(r, "connection refused:111");

    let c = progs.maps().cgroup_counters(attached.cgroup_id).unwrap();
    assert_eq!(c.denials, 2 + 3 + 1, "{c:?}");

    let d = container::detach(&progs, &fs.layout, "test", "deny").unwrap();
    assert_eq!(d.links, 7);
    assert_eq!(d.counters.denials, 6);
    assert!(progs.maps().known_cgroups().unwrap().is_empty());
    assert!(!fs.layout.container_dir("test", "deny").unwrap().exists());
    // Detached: the same probe is no longer denied.
    let r = Probe::new("connect 127.0.0.2:9")
        .cgroup(&cg)
        .result()
        .unwrap();
    assert_eq!(r, "connection refused:111");
}
