//! What only tether-bpf's kernel tests need, beside the shared fixtures of
//! `tether_bpf::testing` (re-exported here): network namespaces joined by a veth pair, an
//! IPv6 packet, and a TCP connection from a chosen source address. Each is removed in Drop.
#![allow(dead_code)]

use std::fs;
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::os::fd::{AsFd, AsRawFd};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

pub use tether_bpf::testing::*;

/// A network namespace made with `ip netns add`.
pub struct Netns {
    pub name: String,
    /// Where it is bound (`/run/netns/<name>`).
    pub path: PathBuf,
}

impl Netns {
    pub fn new() -> Self {
        let name = unique("tether-t");
        run("ip", &["netns", "add", &name]);
        run("ip", &["-n", &name, "link", "set", "lo", "up"]);
        let path = PathBuf::from(format!("/run/netns/{name}"));
        Netns { name, path }
    }

    pub fn open(&self) -> fs::File {
        fs::File::open(&self.path).expect("open netns")
    }

    pub fn ifindex(&self, dev: &str) -> u32 {
        let out = run("ip", &["-n", &self.name, "-o", "link", "show", dev]);
        out.split(':').next().unwrap().trim().parse().unwrap()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

static SUBNET: AtomicU32 = AtomicU32::new(0);

/// Two namespaces joined by a veth pair: `a` has `veth0` at 10.213.N.1, `b` has `veth0` at
/// 10.213.N.2 (a subnet that exists only between these two namespaces).
pub struct VethPair {
    pub a: Netns,
    pub b: Netns,
    pub addr_a: String,
    pub addr_b: String,
}

impl VethPair {
    pub fn new() -> Self {
        let a = Netns::new();
        let b = Netns::new();
        let n = (std::process::id() + SUBNET.fetch_add(1, Ordering::Relaxed)) % 250 + 1;
        let (addr_a, addr_b) = (format!("10.213.{n}.1"), format!("10.213.{n}.2"));
        // The same ifindex on both ends: counters must still be kept apart.
        run(
            "ip",
            &[
                "-n", &a.name, "link", "add", "veth0", "index", "20", "type", "veth", "peer",
                "name", "veth0", "index", "20", "netns", &b.name,
            ],
        );
        for (ns, addr) in [(&a, &addr_a), (&b, &addr_b)] {
            run(
                "ip",
                &[
                    "-n",
                    &ns.name,
                    "addr",
                    "add",
                    &format!("{addr}/24"),
                    "dev",
                    "veth0",
                ],
            );
            run("ip", &["-n", &ns.name, "link", "set", "veth0", "up"]);
        }
        VethPair {
            a,
            b,
            addr_a,
            addr_b,
        }
    }
}

pub fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().expect(cmd);
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An Ethernet + IPv6 + UDP packet from fd00::1 to `dst`.
pub fn ipv6_packet(dst: [u8; 16], payload: usize) -> Vec<u8> {
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

/// A TCP connection from `src` (any port) to `dst`, or the error after `timeout`.
pub fn connect_from(
    src: Ipv4Addr,
    dst: SocketAddrV4,
    timeout: Duration,
) -> std::io::Result<TcpStream> {
    use nix::sys::socket::{
        bind, connect, getsockopt, socket, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn,
    };
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    bind(fd.as_raw_fd(), &SockaddrIn::from(SocketAddrV4::new(src, 0)))?;
    match connect(fd.as_raw_fd(), &SockaddrIn::from(dst)) {
        Ok(()) | Err(nix::errno::Errno::EINPROGRESS) => {}
        Err(e) => return Err(e.into()),
    }
    let mut pfd = [nix::poll::PollFd::new(
        fd.as_fd(),
        nix::poll::PollFlags::POLLOUT,
    )];
    let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
    if nix::poll::poll(&mut pfd, ms)? == 0 {
        return Err(std::io::ErrorKind::TimedOut.into());
    }
    let err = getsockopt(&fd, sockopt::SocketError)?;
    if err != 0 {
        return Err(std::io::Error::from_raw_os_error(err));
    }
    let stream = TcpStream::from(fd);
    stream.set_nonblocking(false)?;
    Ok(stream)
}

/// The TC selection of the veth tests: `veth0` alone. Where the cgroup programs are blind
/// (`CgroupSockets::Blind`) the default takes `lo` too; these tests are about the veth.
pub fn veth0() -> tether_bpf::container::Select<'static> {
    static ONLY: std::sync::LazyLock<Vec<String>> =
        std::sync::LazyLock::new(|| vec!["veth0".to_string()]);
    tether_bpf::container::Select {
        only: Some(ONLY.as_slice()),
        ..Default::default()
    }
}
