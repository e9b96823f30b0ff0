//! The escape probe: everything a tenant with a container's default capabilities can send,
//! aimed at an address it is denied, and a receiver that counts what arrives.
//!
//! `tether-escape send` runs inside the container and tries each [`VARIANTS`] entry once:
//! TCP, UDP, raw and ICMP sockets over IPv4, IPv6 and IPv4-mapped IPv6, TCP Fast Open, IP
//! options (a loose source route), IPv6 extension headers (destination options, a segment
//! routing header), IPv4 fragments, IPIP, GRE and 6in4 packets, and Ethernet frames written
//! to packet sockets (raw and datagram, with and without `PACKET_QDISC_BYPASS`, set the
//! 64-bit and the 32-bit way, tagged with a VLAN, IPv4 and IPv6). It prints one line per
//! variant: `VARIANT <name> <outcome>` (`sent`, or the errno that refused it).
//!
//! `tether-escape receive` runs in the receiving network namespace, on the interface that
//! faces the container, until its stdin closes; then it prints `ARRIVED <name> <frames>` for
//! each variant that reached it. A variant arrived when a frame carries its marker
//! (`TETHER-ESCAPE:<name>;`) or, for a TCP variant, a SYN to its port: a tunnelled or source
//! routed packet counts whatever its outer destination, since its marker is inside.

pub mod field;
pub mod wire;

use std::collections::BTreeMap;
use std::io::{self, BufRead, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::socket::{SockaddrLike, SockaddrStorage};

/// Where the probe aims: the container's own addresses, the denied ones and allowed ones
/// on the receiver's side, the interface frames leave by, and the first of the ports.
#[derive(Debug, Clone)]
pub struct Targets {
    pub iface: String,
    pub own4: Ipv4Addr,
    pub denied4: Ipv4Addr,
    pub allowed4: Ipv4Addr,
    pub own6: Ipv6Addr,
    pub denied6: Ipv6Addr,
    pub allowed6: Ipv6Addr,
    pub port_base: u16,
}

impl Targets {
    /// The arguments of `tether-escape send` that stand for these targets.
    pub fn args(&self) -> Vec<String> {
        vec![
            self.iface.clone(),
            self.own4.to_string(),
            self.denied4.to_string(),
            self.allowed4.to_string(),
            self.own6.to_string(),
            self.denied6.to_string(),
            self.allowed6.to_string(),
            self.port_base.to_string(),
        ]
    }

    /// Parses [`Targets::args`].
    pub fn parse(args: &[String]) -> Result<Self, String> {
        let [iface, own4, denied4, allowed4, own6, denied6, allowed6, port] = args else {
            return Err("send IFACE OWN4 DENIED4 ALLOWED4 OWN6 DENIED6 ALLOWED6 PORT".into());
        };
        let bad = |what: &str, v: &str| format!("bad {what}: {v:?}");
        Ok(Targets {
            iface: iface.clone(),
            own4: own4.parse().map_err(|_| bad("OWN4", own4))?,
            denied4: denied4.parse().map_err(|_| bad("DENIED4", denied4))?,
            allowed4: allowed4.parse().map_err(|_| bad("ALLOWED4", allowed4))?,
            own6: own6.parse().map_err(|_| bad("OWN6", own6))?,
            denied6: denied6.parse().map_err(|_| bad("DENIED6", denied6))?,
            allowed6: allowed6.parse().map_err(|_| bad("ALLOWED6", allowed6))?,
            port_base: port.parse().map_err(|_| bad("PORT", port))?,
        })
    }
}

/// One way out: its name, and what it does given the targets, its port and its marker.
pub struct Variant {
    pub name: &'static str,
    pub tcp: bool,
    send: fn(&Targets, u16, &[u8]) -> io::Result<()>,
}

const fn v(name: &'static str, send: fn(&Targets, u16, &[u8]) -> io::Result<()>) -> Variant {
    Variant {
        name,
        tcp: false,
        send,
    }
}

const fn tcp(name: &'static str, send: fn(&Targets, u16, &[u8]) -> io::Result<()>) -> Variant {
    Variant {
        name,
        tcp: true,
        send,
    }
}

/// Every way out the probe tries, in order (a variant's port is the base plus its index).
pub const VARIANTS: &[Variant] = &[
    v("udp4", |t, p, m| {
        udp_to(SocketAddr::new(t.denied4.into(), p), m)
    }),
    v("udp6", |t, p, m| {
        udp_to(SocketAddr::new(t.denied6.into(), p), m)
    }),
    v("udp-mapped", |t, p, m| {
        udp_to(SocketAddr::new(t.denied4.to_ipv6_mapped().into(), p), m)
    }),
    v("udp4-connected", |t, p, m| {
        let s = std::net::UdpSocket::bind("0.0.0.0:0")?;
        s.connect(SocketAddr::new(t.denied4.into(), p))?;
        s.send(m).map(drop)
    }),
    tcp("tcp4", |t, p, _| {
        tcp_to(SocketAddr::new(t.denied4.into(), p), &[], &[])
    }),
    tcp("tcp6", |t, p, _| {
        tcp_to(SocketAddr::new(t.denied6.into(), p), &[], &[])
    }),
    tcp("tcp-mapped", |t, p, _| {
        tcp_to(
            SocketAddr::new(t.denied4.to_ipv6_mapped().into(), p),
            &[],
            &[],
        )
    }),
    tcp("tcp-fastopen", |t, p, m| {
        let s = socket(libc::AF_INET, libc::SOCK_STREAM, 0)?;
        timeout(&s, Duration::from_secs(1))?;
        send_to(
            &s,
            m,
            SocketAddr::new(t.denied4.into(), p),
            libc::MSG_FASTOPEN,
        )
    }),
    tcp("tcp4-source-route", |t, p, _| {
        let opt = (libc::IPPROTO_IP, libc::IP_OPTIONS, wire::lsrr(&[t.denied4]));
        tcp_to(SocketAddr::new(t.allowed4.into(), p), &[opt], &[])
    }),
    v("udp4-source-route", |t, p, m| {
        let s = socket(libc::AF_INET, libc::SOCK_DGRAM, 0)?;
        setsockopt(
            &s,
            libc::IPPROTO_IP,
            libc::IP_OPTIONS,
            &wire::lsrr(&[t.denied4]),
        )?;
        send_to(&s, m, SocketAddr::new(t.allowed4.into(), p), 0)
    }),
    v("udp6-routing-header", |t, p, m| {
        let s = socket(libc::AF_INET6, libc::SOCK_DGRAM, 0)?;
        let srh = wire::segment_routing(t.denied6);
        setsockopt(&s, libc::IPPROTO_IPV6, libc::IPV6_RTHDR, &srh)?;
        send_to(&s, m, SocketAddr::new(t.allowed6.into(), p), 0)
    }),
    v("icmp4-raw", |t, _, m| {
        let s = socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP)?;
        send_to(&s, &wire::echo_request(8, m), ip_only(t.denied4.into()), 0)
    }),
    v("icmp6-raw", |t, _, m| {
        let s = socket(libc::AF_INET6, libc::SOCK_RAW, libc::IPPROTO_ICMPV6)?;
        send_to(
            &s,
            &wire::echo_request(128, m),
            ip_only(t.denied6.into()),
            0,
        )
    }),
    v("raw4-udp", |t, p, m| {
        let s = socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_UDP)?;
        send_to(&s, &wire::udp(p, m), ip_only(t.denied4.into()), 0)
    }),
    v("raw6-udp", |t, p, m| {
        let s = socket(libc::AF_INET6, libc::SOCK_RAW, libc::IPPROTO_UDP)?;
        send_to(&s, &wire::udp(p, m), ip_only(t.denied6.into()), 0)
    }),
    v("raw4-header", |t, p, m| {
        let pkt = wire::ipv4(t.own4, t.denied4, 17, &[], 0, &wire::udp(p, m));
        raw_ip4(t.denied4, &pkt)
    }),
    v("raw4-options", |t, p, m| {
        let opts = wire::lsrr(&[t.allowed4]);
        let pkt = wire::ipv4(t.own4, t.denied4, 17, &opts, 0, &wire::udp(p, m));
        raw_ip4(t.denied4, &pkt)
    }),
    v("raw4-fragment", |t, p, m| {
        // A later fragment (offset 64 bytes, the last): no UDP header of its own.
        let pkt = wire::ipv4(t.own4, t.denied4, 17, &[], 8, &wire::udp(p, m));
        raw_ip4(t.denied4, &pkt)
    }),
    v("raw6-header", |t, p, m| {
        let udp = wire::udp(p, m);
        let pkt = wire::ipv6(t.own6, t.denied6, 60, &wire::dest_options(17, &udp));
        let s = socket(libc::AF_INET6, libc::SOCK_RAW, libc::IPPROTO_RAW)?;
        send_to(&s, &pkt, ip_only(t.denied6.into()), 0)
    }),
    v("ipip", |t, p, m| {
        let inner = wire::ipv4(t.own4, t.denied4, 17, &[], 0, &wire::udp(p, m));
        let s = socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_IPIP)?;
        send_to(&s, &inner, ip_only(t.allowed4.into()), 0)
    }),
    v("gre", |t, p, m| {
        let inner = wire::ipv4(t.own4, t.denied4, 17, &[], 0, &wire::udp(p, m));
        let s = socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_GRE)?;
        send_to(
            &s,
            &wire::gre(0x0800, &inner),
            ip_only(t.allowed4.into()),
            0,
        )
    }),
    v("6in4", |t, p, m| {
        let inner = wire::ipv6(t.own6, t.denied6, 17, &wire::udp(p, m));
        let s = socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_IPV6)?;
        send_to(&s, &inner, ip_only(t.allowed4.into()), 0)
    }),
    v("packet-raw", |t, p, m| {
        packet(t, p, m, libc::SOCK_RAW, Bypass::No)
    }),
    v("packet-dgram", |t, p, m| {
        packet(t, p, m, libc::SOCK_DGRAM, Bypass::No)
    }),
    v("packet-raw-bypass", |t, p, m| {
        packet(t, p, m, libc::SOCK_RAW, Bypass::Native)
    }),
    v("packet-dgram-bypass", |t, p, m| {
        packet(t, p, m, libc::SOCK_DGRAM, Bypass::Native)
    }),
    v("packet-raw-bypass-ia32", |t, p, m| {
        packet(t, p, m, libc::SOCK_RAW, Bypass::Ia32)
    }),
    v("packet-vlan", |t, p, m| {
        let pkt = wire::ipv4(t.own4, t.denied4, 17, &[], 0, &wire::udp(p, m));
        let s = socket(libc::AF_PACKET, libc::SOCK_RAW, 0)?;
        send_ll(
            &s,
            &t.iface,
            libc::ETH_P_8021Q,
            &wire::ethernet(Some(7), 0x0800, &pkt),
        )
    }),
    v("packet-ipv6", |t, p, m| {
        let pkt = wire::ipv6(t.own6, t.denied6, 17, &wire::udp(p, m));
        let s = socket(libc::AF_PACKET, libc::SOCK_DGRAM, 0)?;
        send_ll(&s, &t.iface, libc::ETH_P_IPV6, &pkt)
    }),
];

/// The marker a variant's packets carry.
pub fn marker(name: &str) -> Vec<u8> {
    format!("TETHER-ESCAPE:{name};").into_bytes()
}

/// Tries every variant against `t`; one `VARIANT <name> <outcome>` line each.
/// Tries every variant whose name starts with `only` (every variant: `""`), each at its own
/// port, and says what became of it.
pub fn send_all(t: &Targets, only: &str, out: &mut impl Write) -> io::Result<()> {
    for (i, variant) in VARIANTS.iter().enumerate() {
        if !variant.name.starts_with(only) {
            continue;
        }
        let port = t.port_base + i as u16;
        let outcome = match (variant.send)(t, port, &marker(variant.name)) {
            Ok(()) => "sent".to_string(),
            Err(e) => outcome_of(&e),
        };
        writeln!(out, "VARIANT {} {outcome}", variant.name)?;
    }
    Ok(())
}

/// `EPERM`, `ECONNREFUSED`, ... or the error's text when it has no errno.
pub fn outcome_of(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(n) => format!("{:?}", nix::errno::Errno::from_raw(n)),
        None => e.to_string().replace(' ', "-"),
    }
}

/// Parses `tether-escape send`'s output: variant → outcome.
pub fn parse_sent(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("VARIANT "))
        .filter_map(|l| l.split_once(' '))
        .map(|(n, o)| (n.to_string(), o.to_string()))
        .collect()
}

/// Parses `tether-escape receive`'s output: variant → frames that arrived.
pub fn parse_arrived(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|l| l.strip_prefix("ARRIVED "))
        .filter_map(|l| l.split_once(' '))
        .filter_map(|(n, c)| Some((n.to_string(), c.parse().ok()?)))
        .collect()
}

fn ip_only(ip: IpAddr) -> SocketAddr {
    SocketAddr::new(ip, 0)
}

fn socket(domain: i32, ty: i32, proto: i32) -> io::Result<OwnedFd> {
    // SAFETY: socket(2) takes no pointers; a valid fd is owned right after.
    let fd = unsafe { libc::socket(domain, ty | libc::SOCK_CLOEXEC, proto) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just opened by this function and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn setsockopt(s: &OwnedFd, level: i32, name: i32, value: &[u8]) -> io::Result<()> {
    tether_bpf::testing::setsockopt_bytes(s.as_fd(), level, name, value)
}

fn timeout(s: &OwnedFd, d: Duration) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: d.as_secs() as libc::time_t,
        tv_usec: d.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: a timeval is plain data; its bytes are read for the length of the struct.
    let bytes = unsafe {
        std::slice::from_raw_parts(
            (&tv as *const libc::timeval).cast::<u8>(),
            std::mem::size_of::<libc::timeval>(),
        )
    };
    setsockopt(s, libc::SOL_SOCKET, libc::SO_SNDTIMEO, bytes)?;
    setsockopt(s, libc::SOL_SOCKET, libc::SO_RCVTIMEO, bytes)
}

fn send_to(s: &OwnedFd, buf: &[u8], to: SocketAddr, flags: i32) -> io::Result<()> {
    let sa = SockaddrStorage::from(to);
    // SAFETY: buf and the address are live for the call, with the lengths passed.
    let r = unsafe {
        libc::sendto(
            s.as_raw_fd(),
            buf.as_ptr().cast(),
            buf.len(),
            flags,
            sa.as_ptr().cast(),
            sa.len(),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn udp_to(to: SocketAddr, m: &[u8]) -> io::Result<()> {
    let domain = if to.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    send_to(&socket(domain, libc::SOCK_DGRAM, 0)?, m, to, 0)
}

/// Connects to `to` (within a second) after setting `opts`, then sends `data`. A refused
/// connection (the receiver has no listener) still sent its SYN: it is `sent`.
fn tcp_to(to: SocketAddr, opts: &[(i32, i32, Vec<u8>)], data: &[u8]) -> io::Result<()> {
    let domain = if to.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    let s = socket(domain, libc::SOCK_STREAM | libc::SOCK_NONBLOCK, 0)?;
    for (level, name, value) in opts {
        setsockopt(&s, *level, *name, value)?;
    }
    let sa = SockaddrStorage::from(to);
    // SAFETY: the address is live for the call, with the length passed.
    let r = unsafe { libc::connect(s.as_raw_fd(), sa.as_ptr().cast(), sa.len()) };
    if r != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(e);
        }
        let mut pfd = libc::pollfd {
            fd: s.as_raw_fd(),
            events: libc::POLLOUT,
            revents: 0,
        };
        // SAFETY: one live pollfd.
        unsafe { libc::poll(&mut pfd, 1, 1000) };
    }
    if !data.is_empty() {
        send_to(&s, data, to, libc::MSG_NOSIGNAL).or_else(|e| {
            if e.raw_os_error() == Some(libc::ECONNREFUSED) {
                Ok(())
            } else {
                Err(e)
            }
        })?;
    }
    Ok(())
}

/// A whole IPv4 packet through a raw socket with `IP_HDRINCL` (`IPPROTO_RAW`).
fn raw_ip4(to: Ipv4Addr, pkt: &[u8]) -> io::Result<()> {
    let s = socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW)?;
    send_to(&s, pkt, ip_only(to.into()), 0)
}

enum Bypass {
    No,
    Native,
    Ia32,
}

/// A UDP datagram to the denied IPv4 address as a frame of a packet socket of type `ty`.
fn packet(t: &Targets, port: u16, m: &[u8], ty: i32, bypass: Bypass) -> io::Result<()> {
    let s = socket(libc::AF_PACKET, ty, 0)?;
    match bypass {
        Bypass::No => {}
        Bypass::Native => setsockopt(
            &s,
            libc::SOL_PACKET,
            libc::PACKET_QDISC_BYPASS,
            &1_i32.to_ne_bytes(),
        )?,
        Bypass::Ia32 => in_child(|| tether_bpf::testing::ia32_qdisc_bypass(s.as_fd()))?,
    }
    let pkt = wire::ipv4(t.own4, t.denied4, 17, &[], 0, &wire::udp(port, m));
    let frame = if ty == libc::SOCK_RAW {
        wire::ethernet(None, 0x0800, &pkt)
    } else {
        pkt
    };
    send_ll(&s, &t.iface, libc::ETH_P_IP, &frame)
}

/// Sends `frame` out of `iface` to the broadcast address.
fn send_ll(s: &OwnedFd, iface: &str, proto: i32, frame: &[u8]) -> io::Result<()> {
    let ifindex = nix::net::if_::if_nametoindex(iface).map_err(io::Error::from)?;
    // SAFETY: sockaddr_ll is plain data; all zero is a valid value.
    let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    to.sll_family = libc::AF_PACKET as u16;
    to.sll_protocol = (proto as u16).to_be();
    to.sll_ifindex = ifindex as i32;
    to.sll_halen = 6;
    to.sll_addr[..6].copy_from_slice(&[0xff; 6]);
    // SAFETY: frame and `to` are live for the call, with the lengths passed.
    let r = unsafe {
        libc::sendto(
            s.as_raw_fd(),
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&to as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Runs `f` in a child process: a system call that a seccomp profile answers by killing
/// the caller kills the child, not the probe. The child's errno comes back as its exit code.
fn in_child(f: impl FnOnce() -> io::Result<()>) -> io::Result<()> {
    // SAFETY: `send` runs on the probe's only thread; the child makes system calls and exits.
    match unsafe { nix::unistd::fork() }.map_err(io::Error::from)? {
        nix::unistd::ForkResult::Child => {
            let code = match f() {
                Ok(()) => 0,
                Err(e) => e.raw_os_error().unwrap_or(libc::EIO),
            };
            // SAFETY: _exit ends the child without running the parent's exit handlers.
            unsafe { libc::_exit(code) }
        }
        nix::unistd::ForkResult::Parent { child } => {
            match nix::sys::wait::waitpid(child, None).map_err(io::Error::from)? {
                nix::sys::wait::WaitStatus::Exited(_, 0) => Ok(()),
                nix::sys::wait::WaitStatus::Exited(_, code) => {
                    Err(io::Error::from_raw_os_error(code))
                }
                nix::sys::wait::WaitStatus::Signaled(_, sig, _) => {
                    Err(io::Error::other(format!("killed-by-{sig:?}")))
                }
                other => Err(io::Error::other(format!("{other:?}"))),
            }
        }
    }
}

/// Counts the variants' frames arriving on `iface` until `input` ends, then prints
/// `ARRIVED <name> <frames>` for each that arrived. Says `READY` once it listens.
pub fn receive(
    iface: &str,
    port_base: u16,
    input: impl BufRead + Send + 'static,
    out: &mut impl Write,
) -> io::Result<()> {
    let s = socket(
        libc::AF_PACKET,
        libc::SOCK_RAW,
        i32::from((libc::ETH_P_ALL as u16).to_be()),
    )?;
    let ifindex = nix::net::if_::if_nametoindex(iface).map_err(io::Error::from)?;
    // SAFETY: sockaddr_ll is plain data; all zero is a valid value.
    let mut at: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    at.sll_family = libc::AF_PACKET as u16;
    at.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
    at.sll_ifindex = ifindex as i32;
    // SAFETY: `at` is live for the call, with its length passed.
    let r = unsafe {
        libc::bind(
            s.as_raw_fd(),
            (&at as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    timeout(&s, Duration::from_millis(100))?;
    let done = Arc::new(AtomicBool::new(false));
    let stop = done.clone();
    std::thread::spawn(move || {
        for _ in input.lines() {}
        stop.store(true, Ordering::SeqCst);
    });
    writeln!(out, "READY")?;
    out.flush()?;

    let mut arrived: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut buf = vec![0u8; 65536];
    // After stdin closes, what is still queued is read (a last poll returns nothing).
    let mut draining = false;
    loop {
        // SAFETY: sockaddr_ll is plain data; all zero is a valid value.
        let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        // SAFETY: buf and `from` are live and writable for the lengths passed.
        let n = unsafe {
            libc::recvfrom(
                s.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                0,
                (&mut from as *mut libc::sockaddr_ll).cast(),
                &mut len,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if !matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
            ) {
                return Err(e);
            }
            if draining {
                break;
            }
            draining = done.load(Ordering::SeqCst);
            continue;
        }
        if from.sll_pkttype == libc::PACKET_OUTGOING {
            continue;
        }
        if let Some(name) = variant_of(&buf[..n as usize], port_base) {
            *arrived.entry(name).or_default() += 1;
        }
    }
    for (name, n) in arrived {
        writeln!(out, "ARRIVED {name} {n}")?;
    }
    Ok(())
}

/// The variant a frame belongs to: by the marker it carries, or as a TCP SYN to a TCP
/// variant's port.
fn variant_of(frame: &[u8], port_base: u16) -> Option<&'static str> {
    const PREFIX: &[u8] = b"TETHER-ESCAPE:";
    if let Some(at) = frame.windows(PREFIX.len()).position(|w| w == PREFIX) {
        let rest = &frame[at + PREFIX.len()..];
        let end = rest.iter().position(|&b| b == b';')?;
        return VARIANTS
            .iter()
            .find(|v| v.name.as_bytes() == &rest[..end])
            .map(|v| v.name);
    }
    let port = wire::tcp_syn_port(frame)?;
    let index = usize::from(port.checked_sub(port_base)?);
    VARIANTS.get(index).filter(|v| v.tcp).map(|v| v.name)
}

/// The `tether-escape` command line.
pub fn main(args: &[String]) -> Result<(), String> {
    let stdout = io::stdout();
    match args.first().map(String::as_str) {
        Some("send") => {
            // An optional last argument: only the variants whose names start with it.
            let (targets, only) = match &args[1..] {
                [t @ .., only] if t.len() == 8 => (t, only.as_str()),
                t => (t, ""),
            };
            let t = Targets::parse(targets)?;
            send_all(&t, only, &mut stdout.lock()).map_err(|e| e.to_string())
        }
        Some("receive") => {
            let [_, iface, port] = args else {
                return Err("receive IFACE PORT".into());
            };
            let port = port.parse().map_err(|_| format!("bad PORT: {port:?}"))?;
            let stdin = io::BufReader::new(io::stdin());
            receive(iface, port, stdin, &mut stdout.lock())
                .map_err(|e| format!("receiving on {iface}: {e}"))
        }
        _ => Err("usage: tether-escape send TARGETS [NAME-PREFIX] | receive IFACE PORT".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variants_are_named_once_and_found_by_marker_and_port() {
        let mut names: Vec<_> = VARIANTS.iter().map(|v| v.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), VARIANTS.len());
        let frame = wire::ethernet(None, 0x0800, &marker("gre"));
        assert_eq!(variant_of(&frame, 40000), Some("gre"));
        let mut tcp = vec![0u8; 20];
        let i = VARIANTS.iter().position(|v| v.name == "tcp6").unwrap();
        tcp[2..4].copy_from_slice(&(40000 + i as u16).to_be_bytes());
        tcp[13] = 0x02;
        let v6 = wire::ipv6(Ipv6Addr::LOCALHOST, Ipv6Addr::LOCALHOST, 6, &tcp);
        let frame = wire::ethernet(None, 0x86dd, &v6);
        assert_eq!(variant_of(&frame, 40000), Some("tcp6"));
        // A UDP variant's port is not a TCP variant.
        assert_eq!(variant_of(&frame, 40000 + i as u16 - 3), None);
    }

    #[test]
    fn outputs_parse() {
        let sent = parse_sent("VARIANT udp4 sent\nnoise\nVARIANT gre EPERM\n");
        assert_eq!(sent["udp4"], "sent");
        assert_eq!(sent["gre"], "EPERM");
        let arrived = parse_arrived("READY\nARRIVED udp4 2\n");
        assert_eq!(arrived["udp4"], 2);
        assert!(Targets::parse(&["eth0".into()]).is_err());
    }
}
