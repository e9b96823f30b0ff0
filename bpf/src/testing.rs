//! Kernel-test fixtures shared by tether-bpf's and tetherd's tests (cargo feature `testing`,
//! never enabled in a build that ships): a private bpffs, a test cgroup, a crafted packet,
//! and a probe process that joins a cgroup and a network namespace and makes one connection.
//! Each fixture is undone in `Drop`. Fixtures return errors and leave the panicking to the
//! test; what only one crate's tests need (network namespaces, a tetherd node) stays there.
use std::fs;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::error::Result;
use crate::pins::PinLayout;
use crate::programs::{self, Programs};

/// In BPF_PROG_TEST_RUN the packet's socket belongs to no cgroup, which the kernel reports
/// as the root cgroup (id 1).
pub const TEST_RUN_CGROUP: u64 = 1;

/// The environment variables that tell a re-executed test binary to be a probe.
const PROBE: &str = "TETHER_PROBE";
const PROBE_CGROUP: &str = "TETHER_PROBE_CGROUP";
const PROBE_NETNS: &str = "TETHER_PROBE_NETNS";

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A name no other fixture of this machine uses: `prefix`, the process id and a counter.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}x{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// Kernel tests load programs, mount bpffs and make cgroups: they need root.
pub fn require_root() -> io::Result<()> {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "kernel tests load bpf programs, mount bpffs and make cgroups: run them as root",
        ))
    }
}

/// A bpffs instance of the test's own, so tests never see each other's pins (or the
/// node's). Unmounted in `Drop`.
pub struct Bpffs {
    mount: tempfile::TempDir,
    pub layout: PinLayout,
}

impl Bpffs {
    pub fn new() -> io::Result<Self> {
        require_root()?;
        let mount = tempfile::Builder::new().prefix("tether-bpffs-").tempdir()?;
        nix::mount::mount(
            Some("bpf"),
            mount.path(),
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )?;
        let layout = PinLayout::new(mount.path().join("tether"));
        Ok(Bpffs { mount, layout })
    }

    /// Loads and pins this build's object, and opens its pins.
    pub fn load(&self) -> Result<Programs> {
        programs::load_and_pin(&self.layout, crate::VERSION)?;
        Programs::open(&self.layout, crate::VERSION)
    }

    /// [`Bpffs::load`] with interface keys of the given kind, whatever the kernel's own
    /// (tests of the older kernels' classid keys on a newer kernel).
    pub fn load_with(&self, netns_key: crate::NetnsKey) -> Result<Programs> {
        programs::load_and_pin_with(&self.layout, crate::VERSION, netns_key)?;
        Ok(Programs::open(&self.layout, crate::VERSION)?.assume_netns_key(netns_key))
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(self.mount.path(), nix::mount::MntFlags::MNT_DETACH);
    }
}

/// The cgroup v2 hierarchy: pure v2 at /sys/fs/cgroup or the hybrid layout's unified mount.
pub fn cgroup2_root() -> PathBuf {
    let unified = Path::new("/sys/fs/cgroup/unified");
    if unified.join("cgroup.procs").exists() {
        unified.to_path_buf()
    } else {
        PathBuf::from("/sys/fs/cgroup")
    }
}

/// A cgroup v2 directory of the test's own, removed in `Drop` (if the test did not).
pub struct TestCgroup {
    pub path: PathBuf,
}

impl TestCgroup {
    pub fn new() -> io::Result<Self> {
        let path = cgroup2_root().join(unique("tether-test-"));
        fs::create_dir(&path).map_err(|e| annotate(e, "mkdir", &path))?;
        Ok(TestCgroup { path })
    }

    pub fn open(&self) -> io::Result<fs::File> {
        fs::File::open(&self.path).map_err(|e| annotate(e, "open", &self.path))
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // The test's processes have exited; rmdir fails only if one is still there.
        let _ = fs::remove_dir(&self.path);
    }
}

fn annotate(e: io::Error, call: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{call} {}: {e}", path.display()))
}

/// An Ethernet + IPv4 + UDP packet from 10.0.0.1 to `dst` with `payload` bytes (for
/// BPF_PROG_TEST_RUN).
pub fn ipv4_packet(dst: [u8; 4], payload: usize) -> Vec<u8> {
    let mut p = vec![0u8; 14];
    p[12] = 0x08; // ETH_P_IP
    let total = 20 + 8 + payload;
    p.extend_from_slice(&[
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
    ]);
    p.extend_from_slice(&[10, 0, 0, 1]);
    p.extend_from_slice(&dst);
    p.extend_from_slice(&[0x30, 0x39, 0, 9, 0, (8 + payload) as u8, 0, 0]);
    p.extend(std::iter::repeat_n(0xab, payload));
    p
}

/// One probe: this test binary run again, through its test named `probe_entry` (which
/// must call [`probe_entry`]), to do one thing from inside a cgroup and a network
/// namespace. What it does ([`probe_main`]): `connect ADDR` (TCP), `sendto ADDR N` (N UDP
/// datagrams), `send ADDR N` (N bytes over TCP), `accept ADDR SECS` (one TCP connection,
/// read to its end).
pub struct Probe<'a> {
    what: &'a str,
    cgroup: Option<&'a Path>,
    netns: Option<&'a Path>,
}

impl<'a> Probe<'a> {
    pub fn new(what: &'a str) -> Self {
        Probe {
            what,
            cgroup: None,
            netns: None,
        }
    }

    /// The probe joins `cgroup` before anything else.
    pub fn cgroup(mut self, cgroup: &'a TestCgroup) -> Self {
        self.cgroup = Some(&cgroup.path);
        self
    }

    /// The probe joins the network namespace bound at `path` (after the cgroup).
    pub fn netns(mut self, path: &'a Path) -> Self {
        self.netns = Some(path);
        self
    }

    fn command(&self) -> io::Result<Command> {
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.args([
            "--exact",
            "probe_entry",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(PROBE, self.what);
        if let Some(cg) = self.cgroup {
            cmd.env(PROBE_CGROUP, cg);
        }
        if let Some(ns) = self.netns {
            cmd.env(PROBE_NETNS, ns);
        }
        Ok(cmd)
    }

    /// Runs the probe and waits for it.
    pub fn output(&self) -> io::Result<Output> {
        self.command()?.output()
    }

    /// Runs the probe, waits for it and returns its outcome ([`probe_result`]).
    pub fn result(&self) -> io::Result<String> {
        probe_result(&self.output()?)
    }

    /// Starts the probe, its output piped; it runs while the test goes on.
    pub fn spawn(&self) -> io::Result<Child> {
        self.command()?
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
    }
}

/// The outcome a probe printed (`RESULT <outcome>`).
pub fn probe_result(out: &Output) -> io::Result<String> {
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .find_map(|l| l.split_once("RESULT ").map(|(_, r)| r.to_string()))
        .ok_or_else(|| {
            io::Error::other(format!(
                "probe printed no result: {stdout} {}",
                String::from_utf8_lossy(&out.stderr)
            ))
        })
}

/// The body of the `probe_entry` test: runs the probe this process was started as, and
/// does nothing in a normal test run.
pub fn probe_entry() -> io::Result<()> {
    match std::env::var(PROBE) {
        Ok(probe) => probe_main(&probe),
        Err(_) => Ok(()),
    }
}

/// Joins the probe's cgroup and namespace, runs `probe` and prints `RESULT <outcome>`.
/// A refused connection is an outcome (`<error kind>:<errno>`); a probe that cannot run
/// at all is an error.
pub fn probe_main(probe: &str) -> io::Result<()> {
    if let Ok(cg) = std::env::var(PROBE_CGROUP) {
        fs::write(
            Path::new(&cg).join("cgroup.procs"),
            std::process::id().to_string(),
        )?;
    }
    // After the cgroup: the probe runs on one thread, which joins the namespace.
    if let Ok(ns) = std::env::var(PROBE_NETNS) {
        nix::sched::setns(fs::File::open(ns)?, nix::sched::CloneFlags::CLONE_NEWNET)?;
    }
    let outcome = run_probe(probe)?;
    println!("\nRESULT {outcome}");
    Ok(())
}

fn run_probe(probe: &str) -> io::Result<String> {
    let bad = || io::Error::new(io::ErrorKind::InvalidInput, format!("bad probe {probe:?}"));
    let parts: Vec<&str> = probe.split_whitespace().collect();
    let addr: SocketAddr = parts.get(1).and_then(|a| a.parse().ok()).ok_or_else(bad)?;
    let number =
        || -> io::Result<u64> { parts.get(2).and_then(|n| n.parse().ok()).ok_or_else(bad) };
    let failed = |e: io::Error| format!("{}:{}", e.kind(), e.raw_os_error().unwrap_or(0));
    Ok(match parts[0] {
        "connect" => match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Ok(_) => "connected".to_string(),
            Err(e) => failed(e),
        },
        "sendto" => {
            let n = number()?;
            let sock = UdpSocket::bind(if addr.is_ipv4() {
                "0.0.0.0:0"
            } else {
                "[::]:0"
            })?;
            let mut last = "sent".to_string();
            for _ in 0..n {
                if let Err(e) = sock.send_to(&[0x5a; 100], addr) {
                    last = failed(e);
                }
            }
            last
        }
        "send" => {
            let n = number()? as usize;
            match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
                Ok(mut s) => match s.write_all(&vec![0x5a; n]) {
                    Ok(()) => format!("sent:{n}"),
                    Err(e) => e.kind().to_string(),
                },
                Err(e) => e.kind().to_string(),
            }
        }
        "accept" => accept_one(addr, Duration::from_secs(number()?))?,
        "recv" => recv_udp(addr, Duration::from_secs(number()?))?,
        "packet" => {
            // packet DST N MAC SRC MODE: N UDP datagrams to DST as frames of a packet socket
            // on veth0, to MAC, from SRC; MODE raw|dgram, with "-bypass" PACKET_QDISC_BYPASS.
            let (SocketAddr::V4(dst), Some(mac), Some(src), Some(mode)) =
                (addr, parts.get(3), parts.get(4), parts.get(5))
            else {
                return Err(bad());
            };
            let mac = parse_mac(mac).ok_or_else(bad)?;
            let src: std::net::Ipv4Addr = src.parse().map_err(|_| bad())?;
            match packet::send(dst, number()?, mac, src, mode) {
                Ok(()) => "sent".to_string(),
                Err(e) => failed(e),
            }
        }
        "raw" => {
            // raw DST N: N UDP datagrams to DST through a raw IPv4 socket (the kernel writes
            // the IP header): no connect() or sendmsg() hook sees them.
            let SocketAddr::V4(dst) = addr else {
                return Err(bad());
            };
            match packet::raw_udp(dst, number()?) {
                Ok(()) => "sent".to_string(),
                Err(e) => failed(e),
            }
        }
        "source-route" => match packet::source_route(addr) {
            Ok(()) => "set".to_string(),
            Err(e) => failed(e),
        },
        "packet-socket" => match packet::open() {
            Ok(()) => "opened".to_string(),
            Err(e) => failed(e),
        },
        "compat-bypass" => match packet::compat_bypass() {
            Ok(()) => "set".to_string(),
            Err(e) => failed(e),
        },
        _ => return Err(bad()),
    })
}

/// Listens on `addr`, says so, and reads one connection to its end: `accepted:<bytes>`.
fn accept_one(addr: SocketAddr, within: Duration) -> io::Result<String> {
    let l = TcpListener::bind(addr)?;
    l.set_nonblocking(true)?;
    println!("\nLISTENING");
    let deadline = Instant::now() + within;
    loop {
        match l.accept() {
            Ok((mut s, _)) => {
                s.set_nonblocking(false)?;
                let mut buf = Vec::new();
                let _ = s.read_to_end(&mut buf);
                return Ok(format!("accepted:{}", buf.len()));
            }
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Ok(e.kind().to_string()),
        }
    }
}

/// Binds `addr` (UDP), says so, and counts datagrams until none came for `quiet`:
/// `received:<count>`.
fn recv_udp(addr: SocketAddr, quiet: Duration) -> io::Result<String> {
    let sock = UdpSocket::bind(addr)?;
    sock.set_read_timeout(Some(quiet))?;
    println!("\nLISTENING");
    let mut n = 0u64;
    let mut buf = [0u8; 2048];
    while sock.recv(&mut buf).is_ok() {
        n += 1;
    }
    Ok(format!("received:{n}"))
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let bytes: Vec<u8> = s
        .split(':')
        .map(|b| u8::from_str_radix(b, 16))
        .collect::<std::result::Result<_, _>>()
        .ok()?;
    bytes.try_into().ok()
}

/// setsockopt(2) of option `name` at `level` on `sock`, its value the bytes of `value`.
pub fn setsockopt_bytes(
    sock: BorrowedFd<'_>,
    level: i32,
    name: i32,
    value: &[u8],
) -> io::Result<()> {
    // SAFETY: the value is a live buffer of the length passed.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            level,
            name,
            value.as_ptr().cast(),
            value.len() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `PACKET_QDISC_BYPASS` set on packet socket `sock` the way a 32-bit process sets it: the
/// i386 `setsockopt` (366 there), through `int 0x80`, whose arguments are 32 bits wide, so
/// the option's value sits in memory below 4 GiB.
#[cfg(target_arch = "x86_64")]
pub fn ia32_qdisc_bypass(sock: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: an anonymous private mapping of one page, unmapped below.
    let page = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_32BIT,
            -1,
            0,
        )
    };
    if page == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the page is mapped, writable and aligned for a c_int.
    unsafe { *page.cast::<libc::c_int>() = 1 };
    let ret: i32;
    // SAFETY: the i386 setsockopt(fd, level, optname, optval, optlen) reads 4 bytes at
    // `page`, mapped above; ebx (which the compiler reserves) is swapped in and back.
    unsafe {
        std::arch::asm!(
            "xchg {fd:e}, ebx",
            "int 0x80",
            "xchg {fd:e}, ebx",
            fd = inout(reg) sock.as_raw_fd() => _,
            inlateout("eax") 366 => ret,
            in("ecx") libc::SOL_PACKET,
            in("edx") libc::PACKET_QDISC_BYPASS,
            in("esi") page as usize as u32,
            in("edi") 4,
        );
    }
    // SAFETY: the page mapped above, no longer used.
    unsafe { libc::munmap(page, 4096) };
    if ret < 0 {
        return Err(io::Error::from_raw_os_error(-ret));
    }
    Ok(())
}

/// Not an x86-64 machine: there is no i386 system call to make.
#[cfg(not(target_arch = "x86_64"))]
pub fn ia32_qdisc_bypass(_: BorrowedFd<'_>) -> io::Result<()> {
    Err(io::Error::from_raw_os_error(libc::ENOSYS))
}

/// Frames written to a packet socket, as a tenant with CAP_NET_RAW writes them.
mod packet {
    use std::io;
    use std::net::{Ipv4Addr, SocketAddrV4};
    use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

    use super::{ia32_qdisc_bypass, setsockopt_bytes};

    /// Opens (and closes) a packet socket.
    pub fn open() -> io::Result<()> {
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: socket(2) with constant arguments; the fd is owned right after.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a socket this function just opened and nothing else owns.
        drop(unsafe { OwnedFd::from_raw_fd(fd) });
        Ok(())
    }

    /// `n` UDP datagrams (no checksum) to `dst` through a raw IPv4 socket of protocol UDP.
    pub fn raw_udp(dst: SocketAddrV4, n: u64) -> io::Result<()> {
        // SAFETY: socket(2) with constant arguments; the fd is owned right after.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_UDP) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a socket this function just opened and nothing else owns.
        let sock = unsafe { OwnedFd::from_raw_fd(fd) };
        let payload = [0x5a_u8; 64];
        let mut datagram = Vec::with_capacity(8 + payload.len());
        datagram.extend(40000u16.to_be_bytes());
        datagram.extend(dst.port().to_be_bytes());
        datagram.extend(((8 + payload.len()) as u16).to_be_bytes());
        datagram.extend([0, 0]);
        datagram.extend(payload);
        let to = nix::sys::socket::SockaddrIn::from(dst);
        let mut last = Ok(());
        for _ in 0..n {
            if let Err(e) = nix::sys::socket::sendto(
                sock.as_raw_fd(),
                &datagram,
                &to,
                nix::sys::socket::MsgFlags::empty(),
            ) {
                last = Err(io::Error::from(e));
            }
        }
        last
    }

    /// A source route through `via` on a TCP socket: IP_OPTIONS with a loose source route
    /// (IPv4), or an IPV6_RTHDR segment routing header (IPv6).
    pub fn source_route(via: std::net::SocketAddr) -> io::Result<()> {
        let (family, level, name, value) = match via {
            std::net::SocketAddr::V4(a) => {
                // NOP, LSRR (type 131, length 7, pointer 4), the hop.
                let mut o = vec![1u8, 131, 7, 4];
                o.extend(a.ip().octets());
                (libc::AF_INET, libc::IPPROTO_IP, libc::IP_OPTIONS, o)
            }
            std::net::SocketAddr::V6(a) => {
                // Routing header type 4 (segment routing), one segment.
                let mut o = vec![0u8, 2, 4, 0, 0, 0, 0, 0];
                o.extend(a.ip().octets());
                (libc::AF_INET6, libc::IPPROTO_IPV6, libc::IPV6_RTHDR, o)
            }
        };
        // SAFETY: socket(2) with constant arguments; the fd is owned right after.
        let fd = unsafe { libc::socket(family, libc::SOCK_STREAM, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a socket this function just opened and nothing else owns.
        let sock = unsafe { OwnedFd::from_raw_fd(fd) };
        setsockopt_bytes(sock.as_fd(), level, name, &value)
    }

    /// setsockopt(PACKET_QDISC_BYPASS) on a packet socket the way a 32-bit process makes it:
    /// the i386 system call (`int 0x80`, setsockopt is 366 there), whose arguments are 32 bits
    /// wide, so the option's value sits in memory below 4 GiB.
    #[cfg(target_arch = "x86_64")]
    pub fn compat_bypass() -> io::Result<()> {
        let proto = (libc::ETH_P_IP as u16).to_be();
        // SAFETY: socket(2) with constant arguments; the fd is owned right after.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a socket this function just opened and nothing else owns.
        let sock = unsafe { OwnedFd::from_raw_fd(fd) };
        ia32_qdisc_bypass(sock.as_fd())
    }

    /// An IPv4 header (with its checksum) and a UDP datagram (no checksum) from `src`.
    fn udp_packet(src: Ipv4Addr, dst: SocketAddrV4) -> Vec<u8> {
        let payload = [0x5a_u8; 64];
        let total = 20 + 8 + payload.len();
        let mut p = vec![
            0x45,
            0,
            (total >> 8) as u8,
            total as u8,
            0,
            1,
            0x40,
            0,
            64,
            17,
            0,
            0,
        ];
        p.extend(src.octets());
        p.extend(dst.ip().octets());
        let mut sum: u32 = p
            .chunks(2)
            .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
            .sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        let csum = !(sum as u16);
        p[10..12].copy_from_slice(&csum.to_be_bytes());
        let ulen = 8 + payload.len();
        p.extend(40000_u16.to_be_bytes());
        p.extend(dst.port().to_be_bytes());
        p.extend((ulen as u16).to_be_bytes());
        p.extend([0, 0]);
        p.extend(payload);
        p
    }

    pub fn send(
        dst: SocketAddrV4,
        n: u64,
        mac: [u8; 6],
        src: Ipv4Addr,
        mode: &str,
    ) -> io::Result<()> {
        let (kind, bypass) = match mode {
            "raw" => (libc::SOCK_RAW, false),
            "dgram" => (libc::SOCK_DGRAM, false),
            "raw-bypass" => (libc::SOCK_RAW, true),
            "dgram-bypass" => (libc::SOCK_DGRAM, true),
            _ => return Err(io::Error::from(io::ErrorKind::InvalidInput)),
        };
        let proto = (libc::ETH_P_IP as u16).to_be();
        // SAFETY: socket(2) with constant arguments; the fd is owned right after.
        let fd = unsafe { libc::socket(libc::AF_PACKET, kind, i32::from(proto)) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a socket this function just opened and nothing else owns.
        let sock = unsafe { OwnedFd::from_raw_fd(fd) };
        if bypass {
            setsockopt_bytes(
                sock.as_fd(),
                libc::SOL_PACKET,
                libc::PACKET_QDISC_BYPASS,
                &1i32.to_ne_bytes(),
            )?;
        }
        // SAFETY: the name is a NUL-terminated constant.
        let ifindex = unsafe { libc::if_nametoindex(c"veth0".as_ptr()) };
        if ifindex == 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: sockaddr_ll is plain data; all zero is a valid value.
        let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        to.sll_family = libc::AF_PACKET as u16;
        to.sll_protocol = proto;
        to.sll_ifindex = ifindex as i32;
        to.sll_halen = 6;
        to.sll_addr[..6].copy_from_slice(&mac);
        let mut frame = Vec::new();
        if kind == libc::SOCK_RAW {
            frame.extend(mac);
            frame.extend([2, 0, 0, 0, 0, 1]);
            frame.extend(0x0800_u16.to_be_bytes());
        }
        frame.extend(udp_packet(src, dst));
        // Every frame is tried: a dropped one fails its sendto (ENOBUFS), not the next.
        let mut last = Ok(());
        for _ in 0..n {
            // SAFETY: frame and `to` are live for the call, with the lengths passed.
            let r = unsafe {
                libc::sendto(
                    sock.as_raw_fd(),
                    frame.as_ptr().cast(),
                    frame.len(),
                    0,
                    (&to as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                )
            };
            if r < 0 {
                last = Err(io::Error::last_os_error());
            }
        }
        last
    }
}
