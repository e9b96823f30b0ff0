//! Packets and frames as a tenant builds them by hand: IPv4 (with options and fragments),
//! IPv6 (with extension headers), UDP, the encapsulations a raw socket can carry, and
//! Ethernet frames (with a VLAN tag) for packet sockets.

use std::net::{Ipv4Addr, Ipv6Addr};

/// The Internet checksum of `bytes`.
pub fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A UDP header (no checksum: valid for IPv4, ignored by a packet sniffer) and `payload`.
pub fn udp(dst_port: u16, payload: &[u8]) -> Vec<u8> {
    let len = (8 + payload.len()) as u16;
    let mut p = Vec::with_capacity(len.into());
    p.extend(40000_u16.to_be_bytes());
    p.extend(dst_port.to_be_bytes());
    p.extend(len.to_be_bytes());
    p.extend([0, 0]);
    p.extend(payload);
    p
}

/// An ICMP (or ICMPv6, `kind` 128) echo request carrying `payload`, its checksum filled in
/// for ICMP (the kernel fills in ICMPv6's).
pub fn echo_request(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![kind, 0, 0, 0, 0x7e, 0x7e, 0, 1];
    p.extend(payload);
    if kind == 8 {
        let c = checksum(&p);
        p[2..4].copy_from_slice(&c.to_be_bytes());
    }
    p
}

/// An IPv4 packet: header with `options` (padded to 4 bytes), a fragment offset in 8-byte
/// units, protocol `proto`, then `payload`.
pub fn ipv4(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    options: &[u8],
    frag_offset: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut opts = options.to_vec();
    while opts.len() % 4 != 0 {
        opts.push(0);
    }
    let hlen = 20 + opts.len();
    let total = (hlen + payload.len()) as u16;
    let mut p = vec![0x40 | (hlen / 4) as u8, 0];
    p.extend(total.to_be_bytes());
    p.extend([0x7e, 0x7e]);
    p.extend((frag_offset & 0x1fff).to_be_bytes());
    p.extend([64, proto, 0, 0]);
    p.extend(src.octets());
    p.extend(dst.octets());
    p.extend(opts);
    let c = checksum(&p);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p.extend(payload);
    p
}

/// An IPv6 packet: header, then `payload` whose first header is `next`.
pub fn ipv6(src: Ipv6Addr, dst: Ipv6Addr, next: u8, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x60, 0, 0, 0];
    p.extend((payload.len() as u16).to_be_bytes());
    p.extend([next, 64]);
    p.extend(src.octets());
    p.extend(dst.octets());
    p.extend(payload);
    p
}

/// An IPv6 destination-options header (8 bytes, padding only) in front of `payload`.
pub fn dest_options(next: u8, payload: &[u8]) -> Vec<u8> {
    // Next header, length 0 (8 bytes), PadN of 4 bytes.
    let mut p = vec![next, 0, 1, 4, 0, 0, 0, 0];
    p.extend(payload);
    p
}

/// A GRE header (no checksum, key or sequence) for `ethertype`, then `payload`.
pub fn gre(ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0, 0];
    p.extend(ethertype.to_be_bytes());
    p.extend(payload);
    p
}

/// An IPv4 loose source route option through `hops` (NOP first, for alignment).
pub fn lsrr(hops: &[Ipv4Addr]) -> Vec<u8> {
    let mut o = vec![1u8, 131, (3 + 4 * hops.len()) as u8, 4];
    for h in hops {
        o.extend(h.octets());
    }
    o
}

/// An IPv6 segment routing header (type 4) whose active segment is `via`, the final
/// destination being filled in by the kernel (segment 0).
pub fn segment_routing(via: Ipv6Addr) -> Vec<u8> {
    // Next header (set by the kernel), length 4 (two segments), type 4, segments left 1,
    // last entry 1, flags, tag.
    let mut o = vec![0u8, 4, 4, 1, 1, 0, 0, 0];
    o.extend(Ipv6Addr::UNSPECIFIED.octets());
    o.extend(via.octets());
    o
}

/// An Ethernet frame to the broadcast address, with an 802.1Q tag when `vlan` is set.
pub fn ethernet(vlan: Option<u16>, ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend([0x02, 0, 0, 0x7e, 0x7e, 1]);
    if let Some(id) = vlan {
        f.extend(0x8100_u16.to_be_bytes());
        f.extend((id & 0x0fff).to_be_bytes());
    }
    f.extend(ethertype.to_be_bytes());
    f.extend(payload);
    f
}

/// What a sniffer needs to know of a frame: whether it is a TCP SYN, and to which outer
/// destination port (through VLAN tags, IPv4 options and IPv6 extension headers).
pub fn tcp_syn_port(frame: &[u8]) -> Option<u16> {
    let mut at = 12;
    let mut ethertype = u16::from_be_bytes([*frame.get(at)?, *frame.get(at + 1)?]);
    while ethertype == 0x8100 || ethertype == 0x88a8 {
        at += 4;
        ethertype = u16::from_be_bytes([*frame.get(at)?, *frame.get(at + 1)?]);
    }
    let ip = frame.get(at + 2..)?;
    let (proto, l4) = match ethertype {
        0x0800 => {
            let hlen = usize::from(ip.first()? & 0x0f) * 4;
            (*ip.get(9)?, ip.get(hlen..)?)
        }
        0x86dd => {
            let mut next = *ip.get(6)?;
            let mut off = 40;
            // Hop-by-hop, routing, destination options.
            while matches!(next, 0 | 43 | 60) {
                let h = ip.get(off..off + 2)?;
                next = h[0];
                off += (usize::from(h[1]) + 1) * 8;
            }
            (next, ip.get(off..)?)
        }
        _ => return None,
    };
    let syn = proto == 6 && l4.get(13)? & 0x12 == 0x02;
    syn.then(|| u16::from_be_bytes([l4[2], l4[3]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_header_checksums_to_zero() {
        let p = ipv4(
            Ipv4Addr::new(10, 0, 0, 1),
            Ipv4Addr::new(10, 0, 0, 2),
            17,
            &lsrr(&[Ipv4Addr::new(10, 0, 0, 3)]),
            0,
            &udp(9, b"x"),
        );
        assert_eq!(p[0], 0x47);
        assert_eq!(checksum(&p[..28]), 0);
    }

    #[test]
    fn syn_ports_are_found_through_tags_and_extension_headers() {
        let mut tcp = vec![0u8; 20];
        tcp[2..4].copy_from_slice(&4711_u16.to_be_bytes());
        tcp[13] = 0x02;
        let v4 = ipv4(
            Ipv4Addr::LOCALHOST,
            Ipv4Addr::LOCALHOST,
            6,
            &lsrr(&[Ipv4Addr::LOCALHOST]),
            0,
            &tcp,
        );
        assert_eq!(tcp_syn_port(&ethernet(Some(7), 0x0800, &v4)), Some(4711));
        let v6 = ipv6(
            Ipv6Addr::LOCALHOST,
            Ipv6Addr::LOCALHOST,
            60,
            &dest_options(6, &tcp),
        );
        assert_eq!(tcp_syn_port(&ethernet(None, 0x86dd, &v6)), Some(4711));
        tcp[13] = 0x12;
        let synack = ipv4(Ipv4Addr::LOCALHOST, Ipv4Addr::LOCALHOST, 6, &[], 0, &tcp);
        assert_eq!(tcp_syn_port(&ethernet(None, 0x0800, &synack)), None);
        assert_eq!(tcp_syn_port(&[0; 10]), None);
    }
}
