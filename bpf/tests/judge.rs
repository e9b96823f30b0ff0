//! The packet judge on crafted packets (BPF_PROG_TEST_RUN): what a container with CAP_NET_RAW
//! can build — IPv4 options, IPv6 extension headers, fragments, VLAN and QinQ tags, IPIP, GRE
//! and IPv6 tunnels, truncated headers — judged by the cgroup egress program and by the TC
//! egress program, each beside a control packet that the same program lets through.
mod common;

use common::*;
use tether_bpf::{ContainerConfig, IfKey, Prog, Programs};

const DENIED4: [u8; 4] = [192, 0, 2, 7];
const ALLOWED4: [u8; 4] = [198, 51, 100, 1];
const DENIED6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9];
const ALLOWED6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

const UDP: u8 = 17;
const IPIP: u8 = 4;
const IPV6: u8 = 41;
const GRE: u8 = 47;

/// A UDP header and 16 bytes of payload.
fn udp() -> Vec<u8> {
    let mut u = vec![0x30, 0x39, 0, 9, 0, 24, 0, 0];
    u.extend([0x5a; 16]);
    u
}

/// An IPv4 header (with `options`, padded to 4 bytes) and `payload`.
fn ipv4(dst: [u8; 4], proto: u8, options: &[u8], frag: u16, payload: &[u8]) -> Vec<u8> {
    let mut opts = options.to_vec();
    while opts.len() % 4 != 0 {
        opts.push(0);
    }
    let ihl = (20 + opts.len()) / 4;
    let total = 20 + opts.len() + payload.len();
    let mut h = vec![
        0x40 | ihl as u8,
        0,
        (total >> 8) as u8,
        total as u8,
        0,
        1,
        (frag >> 8) as u8,
        frag as u8,
        64,
        proto,
        0,
        0,
        10,
        0,
        0,
        1,
    ];
    h.extend(dst);
    h.extend(opts);
    h.extend(payload);
    h
}

/// An IPv6 header whose next header is `next`, then `rest` (extension headers and payload).
fn ipv6(dst: [u8; 16], next: u8, rest: &[u8]) -> Vec<u8> {
    let len = rest.len();
    let mut h = vec![0x60, 0, 0, 0, (len >> 8) as u8, len as u8, next, 64];
    h.extend([0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    h.extend(dst);
    h.extend(rest);
    h
}

/// An 8-byte IPv6 extension header (hop-by-hop, destination options, routing) naming `next`.
fn ext8(next: u8, rest: [u8; 6]) -> Vec<u8> {
    let mut e = vec![next, 0];
    e.extend(rest);
    e
}

/// An IPv6 fragment header: `offset` in 8-byte units, more fragments follow.
fn frag6(next: u8, offset: u16) -> Vec<u8> {
    let o = (offset << 3) | 1;
    vec![next, 0, (o >> 8) as u8, o as u8, 0, 0, 0, 1]
}

/// A GRE header with `flags` (C 0x80, K 0x20, S 0x10) carrying `ethertype`.
fn gre(flags: u8, ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut g = vec![flags, 0, (ethertype >> 8) as u8, ethertype as u8];
    for bit in [0x80, 0x20, 0x10] {
        if flags & bit != 0 {
            g.extend([0, 0, 0, 0]);
        }
    }
    g.extend(payload);
    g
}

/// An Ethernet frame of `ethertype` after the given VLAN tags (TPID, VID).
fn frame(tags: &[u16], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1];
    for tpid in tags {
        f.extend([(tpid >> 8) as u8, *tpid as u8, 0, 5]);
    }
    f.extend([(ethertype >> 8) as u8, ethertype as u8]);
    f.extend(payload);
    f
}

fn eth4(p: Vec<u8>) -> Vec<u8> {
    frame(&[], 0x0800, &p)
}

fn eth6(p: Vec<u8>) -> Vec<u8> {
    frame(&[], 0x86dd, &p)
}

/// What the two egress programs do with a packet: passes or not.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum Verdict {
    Pass,
    Drop,
}
use Verdict::*;

struct Judge {
    _fs: Bpffs,
    progs: Programs,
}

const TC_CGROUP: u64 = 4242;

impl Judge {
    fn new() -> Self {
        let fs = Bpffs::new().unwrap();
        let progs = fs.load().unwrap();
        let maps = progs.maps();
        let cookie = progs.netns_cookie_here().unwrap();
        // The cgroup programs' test runs are in cgroup TEST_RUN_CGROUP; the TC programs'
        // on loopback (ifindex 1) of this namespace, tracked as TC_CGROUP's.
        for cg in [TEST_RUN_CGROUP, TC_CGROUP] {
            maps.set_container(cg, &ContainerConfig::default(), "test", "judge")
                .unwrap();
            maps.add_deny(cg, &"192.0.2.0/24".parse().unwrap()).unwrap();
            maps.add_deny(cg, &"2001:db8::/32".parse().unwrap())
                .unwrap();
        }
        maps.set_iface(IfKey::new(cookie, 1), TC_CGROUP).unwrap();
        Judge { _fs: fs, progs }
    }

    fn cgroup(&self, frame: &[u8]) -> Verdict {
        match self.progs.test_run(Prog::CgroupEgress, frame).unwrap() {
            1 => Pass,
            0 => Drop,
            r => panic!("cgroup egress returned {r}"),
        }
    }

    fn tc(&self, frame: &[u8]) -> Verdict {
        match self.progs.test_run(Prog::TcEgress, frame).unwrap() {
            u32::MAX => Pass,
            2 => Drop,
            r => panic!("tc egress returned {r}"),
        }
    }

    /// Both programs judge `frame` as `want`.
    fn both(&self, what: &str, frame: &[u8], want: Verdict) {
        assert_eq!(self.cgroup(frame), want, "cgroup egress: {what}");
        assert_eq!(self.tc(frame), want, "tc egress: {what}");
    }
}

#[test]
fn ipv4_options_source_routes_are_refused_and_others_pass() {
    let j = Judge::new();
    j.both(
        "plain, allowed",
        &eth4(ipv4(ALLOWED4, UDP, &[], 0, &udp())),
        Pass,
    );
    j.both(
        "plain, denied",
        &eth4(ipv4(DENIED4, UDP, &[], 0, &udp())),
        Drop,
    );
    // Record route (7) and router alert (148) behind NOPs: options a host sends.
    let rr = [1, 7, 7, 4, 0, 0, 0, 0];
    j.both(
        "record route",
        &eth4(ipv4(ALLOWED4, UDP, &rr, 0, &udp())),
        Pass,
    );
    let ra = [148, 4, 0, 0];
    j.both(
        "router alert",
        &eth4(ipv4(ALLOWED4, UDP, &ra, 0, &udp())),
        Pass,
    );
    // Loose and strict source routes through an allowed first hop to a denied address.
    let mut lsrr = vec![1, 131, 7, 4];
    lsrr.extend(DENIED4);
    j.both("LSRR", &eth4(ipv4(ALLOWED4, 6, &lsrr, 0, &udp())), Drop);
    let mut ssrr = vec![137, 7, 4];
    ssrr.extend(ALLOWED4);
    j.both("SSRR", &eth4(ipv4(ALLOWED4, UDP, &ssrr, 0, &udp())), Drop);
    // A source route after a timestamp option, and malformed option lengths.
    let mut after = vec![68, 8, 5, 0, 0, 0, 0, 0, 131, 7, 4];
    after.extend(DENIED4);
    j.both(
        "LSRR after a timestamp",
        &eth4(ipv4(ALLOWED4, UDP, &after, 0, &udp())),
        Drop,
    );
    j.both(
        "option length 0",
        &eth4(ipv4(ALLOWED4, UDP, &[7, 0, 0, 0], 0, &udp())),
        Drop,
    );
    j.both(
        "option past the header",
        &eth4(ipv4(ALLOWED4, UDP, &[1, 1, 1, 7], 0, &udp())),
        Drop,
    );
}

#[test]
fn ipv6_extension_headers_are_walked_and_routing_headers_refused() {
    let j = Judge::new();
    let udp6 = |dst, rest: Vec<u8>, next| eth6(ipv6(dst, next, &rest));
    j.both("plain, allowed", &udp6(ALLOWED6, udp(), UDP), Pass);
    j.both("plain, denied", &udp6(DENIED6, udp(), UDP), Drop);
    // Hop-by-hop, then destination options, then UDP.
    let mut chain = ext8(60, [0; 6]);
    chain.extend(ext8(UDP, [0; 6]));
    chain.extend(udp());
    j.both(
        "hop-by-hop and destination options",
        &udp6(ALLOWED6, chain, 0),
        Pass,
    );
    // A routing header (segment routing, type 4) behind a hop-by-hop header.
    let mut srh = ext8(43, [0; 6]);
    srh.extend([UDP, 2, 4, 0, 0, 0, 0, 0]);
    srh.extend(DENIED6);
    srh.extend(udp());
    j.both("segment routing header", &udp6(ALLOWED6, srh, 0), Drop);
    let mut rh0 = vec![UDP, 2, 0, 1, 0, 0, 0, 0];
    rh0.extend(ALLOWED6);
    rh0.extend(udp());
    j.both("type 0 routing header", &udp6(ALLOWED6, rh0, 43), Drop);
    // More extension headers than the judge walks.
    let mut long = Vec::new();
    for _ in 0..9 {
        long.extend(ext8(60, [0; 6]));
    }
    long.extend(udp());
    j.both(
        "nine destination options headers",
        &udp6(ALLOWED6, long, 60),
        Drop,
    );
    // A chain cut short.
    j.both(
        "truncated extension header",
        &udp6(ALLOWED6, vec![60], 60),
        Drop,
    );
}

#[test]
fn fragments_are_judged_by_what_they_carry() {
    let j = Judge::new();
    // IPv4: a first fragment of an IPIP packet carries the inner header; a later one not.
    let inner_denied = ipv4(DENIED4, UDP, &[], 0, &udp());
    let first = ipv4(ALLOWED4, IPIP, &[], 0x2000, &inner_denied);
    j.both("IPIP first fragment, inner denied", &eth4(first), Drop);
    let later = ipv4(ALLOWED4, IPIP, &[], 0x0003, &[0x5a; 24]);
    j.both("IPIP later fragment", &eth4(later), Pass);
    let cut = ipv4(ALLOWED4, IPIP, &[], 0x2000, &inner_denied[..8]);
    j.both(
        "IPIP first fragment without the inner header",
        &eth4(cut),
        Drop,
    );
    let later_denied = ipv4(DENIED4, UDP, &[], 0x0003, &[0x5a; 24]);
    j.both(
        "later fragment to a denied address",
        &eth4(later_denied),
        Drop,
    );
    // IPv6: a fragment header, first (IPv6 in IPv6, inner denied) and later.
    let mut first6 = frag6(IPV6, 0);
    first6.extend(ipv6(DENIED6, UDP, &udp()));
    j.both(
        "IPv6 first fragment, inner denied",
        &eth6(ipv6(ALLOWED6, 44, &first6)),
        Drop,
    );
    let mut later6 = frag6(IPV6, 3);
    later6.extend([0x5a; 24]);
    j.both(
        "IPv6 later fragment",
        &eth6(ipv6(ALLOWED6, 44, &later6)),
        Pass,
    );
    let mut first_ok = frag6(UDP, 0);
    first_ok.extend(udp());
    j.both(
        "IPv6 first fragment of UDP",
        &eth6(ipv6(ALLOWED6, 44, &first_ok)),
        Pass,
    );
}

#[test]
fn tunnelled_packets_are_judged_by_their_own_destination() {
    let j = Judge::new();
    let to = |dst| ipv4(dst, UDP, &[], 0, &udp());
    let to6 = |dst| ipv6(dst, UDP, &udp());
    j.both(
        "IPIP, inner allowed",
        &eth4(ipv4(ALLOWED4, IPIP, &[], 0, &to(ALLOWED4))),
        Pass,
    );
    j.both(
        "IPIP, inner denied",
        &eth4(ipv4(ALLOWED4, IPIP, &[], 0, &to(DENIED4))),
        Drop,
    );
    j.both(
        "6in4, inner denied",
        &eth4(ipv4(ALLOWED4, IPV6, &[], 0, &to6(DENIED6))),
        Drop,
    );
    j.both(
        "IPIP in IPv6, inner denied",
        &eth6(ipv6(ALLOWED6, IPIP, &to(DENIED4))),
        Drop,
    );
    j.both(
        "IPv6 in IPv6, inner allowed",
        &eth6(ipv6(ALLOWED6, IPV6, &to6(ALLOWED6))),
        Pass,
    );
    // GRE: plain, with checksum, key and sequence number, and Ethernet over GRE.
    let g = |flags, et, p: &[u8]| eth4(ipv4(ALLOWED4, GRE, &[], 0, &gre(flags, et, p)));
    j.both("GRE, inner allowed", &g(0, 0x0800, &to(ALLOWED4)), Pass);
    j.both("GRE, inner denied", &g(0, 0x0800, &to(DENIED4)), Drop);
    j.both(
        "GRE C K S, inner denied",
        &g(0xb0, 0x0800, &to(DENIED4)),
        Drop,
    );
    j.both(
        "GRE, inner IPv6 denied",
        &g(0x20, 0x86dd, &to6(DENIED6)),
        Drop,
    );
    let teb = frame(&[], 0x0800, &to(DENIED4));
    j.both("Ethernet over GRE, inner denied", &g(0, 0x6558, &teb), Drop);
    let teb_ok = frame(&[], 0x0800, &to(ALLOWED4));
    j.both(
        "Ethernet over GRE, inner allowed",
        &g(0, 0x6558, &teb_ok),
        Pass,
    );
    j.both(
        "GRE of an unknown kind (MPLS)",
        &g(0, 0x8847, &[0; 24]),
        Drop,
    );
    // A tunnel in a tunnel is not walked.
    let nested = ipv4(ALLOWED4, IPIP, &[], 0, &to(ALLOWED4));
    j.both(
        "IPIP in IPIP",
        &eth4(ipv4(ALLOWED4, IPIP, &[], 0, &nested)),
        Drop,
    );
    // An inner header cut short.
    j.both(
        "IPIP, inner truncated",
        &eth4(ipv4(ALLOWED4, IPIP, &[], 0, &[0x45, 0, 0])),
        Drop,
    );
}

#[test]
fn tc_reads_the_frame_past_vlan_tags() {
    let j = Judge::new();
    let to = |dst| ipv4(dst, UDP, &[], 0, &udp());
    assert_eq!(
        j.tc(&frame(&[0x8100], 0x0800, &to(ALLOWED4))),
        Pass,
        "802.1Q, allowed"
    );
    assert_eq!(
        j.tc(&frame(&[0x8100], 0x0800, &to(DENIED4))),
        Drop,
        "802.1Q, denied"
    );
    let v6 = ipv6(DENIED6, UDP, &udp());
    assert_eq!(
        j.tc(&frame(&[0x8100], 0x86dd, &v6)),
        Drop,
        "802.1Q, IPv6 denied"
    );
    assert_eq!(
        j.tc(&frame(&[0x88a8, 0x8100], 0x0800, &to(DENIED4))),
        Drop,
        "QinQ, denied"
    );
    assert_eq!(
        j.tc(&frame(&[0x88a8, 0x8100], 0x0800, &to(ALLOWED4))),
        Pass,
        "QinQ, allowed"
    );
    let three = frame(&[0x88a8, 0x8100, 0x8100], 0x0800, &to(ALLOWED4));
    assert_eq!(j.tc(&three), Drop, "three tags");
    // Not IP: ARP passes.
    assert_eq!(j.tc(&frame(&[], 0x0806, &[0; 28])), Pass, "ARP");
    // Headers cut short: an IPv4 header behind a tag, options past the frame's end.
    let cut = frame(&[0x8100], 0x0800, &to(ALLOWED4)[..12]);
    assert_eq!(j.tc(&cut), Drop, "truncated IPv4 header");
    let mut long_ihl = to(ALLOWED4);
    long_ihl[0] = 0x4f;
    assert_eq!(
        j.tc(&frame(&[], 0x0800, &long_ihl)),
        Drop,
        "options past the end"
    );
    // The counters: every drop is the interface's.
    let maps = j.progs.maps();
    let cookie = j.progs.netns_cookie_here().unwrap();
    assert!(maps.iface_counters(IfKey::new(cookie, 1)).unwrap().drops >= 6);
}
