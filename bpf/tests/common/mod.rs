//! Fixtures for tether-bpf's kernel tests: a private bpffs, a test cgroup, network namespaces
//! joined by a veth pair, and a probe process that runs inside them. Each is removed in Drop.
#![allow(dead_code)]

use std::fs;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tether_bpf::{PinLayout, Programs};

static SEQ: AtomicU32 = AtomicU32::new(0);

pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}x{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "tether-bpf's tests load programs: run them as root"
    );
}

/// A bpffs instance of our own, so tests never see each other's pins (or the node's).
pub struct Bpffs {
    pub mount: tempfile::TempDir,
    pub layout: PinLayout,
}

impl Bpffs {
    pub fn new() -> Self {
        require_root();
        let mount = tempfile::Builder::new()
            .prefix("tether-bpffs-")
            .tempdir()
            .expect("tempdir");
        nix::mount::mount(
            Some("bpf"),
            mount.path(),
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .expect("mount -t bpf");
        let layout = PinLayout::new(mount.path().join("tether"));
        Bpffs { mount, layout }
    }

    pub fn load(&self) -> Programs {
        tether_bpf::programs::load_and_pin(&self.layout, tether_bpf::VERSION).expect("load");
        Programs::open(&self.layout, tether_bpf::VERSION).expect("open pins")
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

/// A cgroup v2 directory of the test's own.
pub struct TestCgroup {
    pub path: PathBuf,
}

impl TestCgroup {
    pub fn new() -> Self {
        let path = cgroup2_root().join(unique("tether-test-"));
        fs::create_dir(&path).expect("mkdir cgroup");
        TestCgroup { path }
    }

    pub fn open(&self) -> fs::File {
        fs::File::open(&self.path).expect("open cgroup dir")
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // Processes of the test have exited; rmdir fails only if one is still there.
        let _ = fs::remove_dir(&self.path);
    }
}

/// A network namespace made with `ip netns add`.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new() -> Self {
        let name = unique("tether-t");
        run("ip", &["netns", "add", &name]);
        run("ip", &["-n", &name, "link", "set", "lo", "up"]);
        Netns { name }
    }

    pub fn open(&self) -> fs::File {
        fs::File::open(format!("/run/netns/{}", self.name)).expect("open netns")
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
        let n = (std::process::id() + SEQ.fetch_add(1, Ordering::Relaxed)) % 250 + 1;
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

/// The command that runs `probe` in a new process (this test binary, re-executed),
/// optionally inside a network namespace and a cgroup. The probe joins the cgroup itself
/// before doing anything else.
fn probe_command(netns: Option<&Netns>, cgroup: Option<&TestCgroup>, probe: &str) -> Command {
    let exe = std::env::current_exe().expect("current_exe");
    let mut cmd = Command::new(exe);
    if let Some(ns) = netns {
        cmd.env("TETHER_PROBE_NETNS", format!("/run/netns/{}", ns.name));
    }
    cmd.args([
        "--exact",
        "probe_entry",
        "--nocapture",
        "--test-threads",
        "1",
    ])
    .env("TETHER_PROBE", probe);
    if let Some(cg) = cgroup {
        cmd.env("TETHER_PROBE_CGROUP", &cg.path);
    }
    cmd
}

/// Runs `probe` (see [`probe_command`]) and waits for it.
pub fn spawn_probe(netns: Option<&Netns>, cgroup: Option<&TestCgroup>, probe: &str) -> Output {
    probe_command(netns, cgroup, probe)
        .output()
        .expect("spawn probe")
}

/// [`spawn_probe`] without waiting: the probe runs while the test goes on.
pub fn spawn_probe_child(cgroup: Option<&TestCgroup>, probe: &str) -> std::process::Child {
    probe_command(None, cgroup, probe)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn probe")
}

/// A TCP connection from `src` (any port) to `dst`, or the error after `timeout`.
pub fn connect_from(
    src: std::net::Ipv4Addr,
    dst: std::net::SocketAddrV4,
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
    use std::os::fd::AsRawFd;
    bind(
        fd.as_raw_fd(),
        &SockaddrIn::from(std::net::SocketAddrV4::new(src, 0)),
    )?;
    match connect(fd.as_raw_fd(), &SockaddrIn::from(dst)) {
        Ok(()) | Err(nix::errno::Errno::EINPROGRESS) => {}
        Err(e) => return Err(e.into()),
    }
    let mut pfd = [nix::poll::PollFd::new(
        std::os::fd::AsFd::as_fd(&fd),
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

/// The probe's body: `connect ADDR` (TCP), `sendto ADDR N` (UDP), `send ADDR N` (N bytes
/// over TCP), `accept ADDR SECS` (one TCP connection, read to its end). Prints
/// `RESULT <outcome>`.
pub fn probe_main(probe: &str) {
    if let Ok(cg) = std::env::var("TETHER_PROBE_CGROUP") {
        fs::write(
            Path::new(&cg).join("cgroup.procs"),
            std::process::id().to_string(),
        )
        .expect("join cgroup");
    }
    // After the cgroup: the probe runs on one thread, which joins the namespace.
    if let Ok(ns) = std::env::var("TETHER_PROBE_NETNS") {
        let f = fs::File::open(ns).expect("open netns");
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
    }
    let parts: Vec<&str> = probe.split_whitespace().collect();
    let addr: SocketAddr = parts[1].parse().expect("probe address");
    let outcome = match parts[0] {
        "connect" => match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Ok(_) => "connected".to_string(),
            Err(e) => e.kind().to_string() + ":" + &e.raw_os_error().unwrap_or(0).to_string(),
        },
        "sendto" => {
            let n: usize = parts[2].parse().expect("count");
            let bind = if addr.is_ipv4() {
                "0.0.0.0:0"
            } else {
                "[::]:0"
            };
            let sock = UdpSocket::bind(bind).expect("bind");
            let mut last = "sent".to_string();
            for _ in 0..n {
                if let Err(e) = sock.send_to(&[0x5a; 100], addr) {
                    last = e.kind().to_string() + ":" + &e.raw_os_error().unwrap_or(0).to_string();
                }
            }
            last
        }
        "send" => {
            let n: usize = parts[2].parse().expect("count");
            match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
                Ok(mut s) => match std::io::Write::write_all(&mut s, &vec![0x5a; n]) {
                    Ok(()) => format!("sent:{n}"),
                    Err(e) => e.kind().to_string(),
                },
                Err(e) => e.kind().to_string(),
            }
        }
        "accept" => {
            let secs: u64 = parts[2].parse().expect("seconds");
            let l = std::net::TcpListener::bind(addr).expect("listen");
            l.set_nonblocking(true).expect("nonblocking");
            println!("\nLISTENING");
            let deadline = std::time::Instant::now() + Duration::from_secs(secs);
            loop {
                match l.accept() {
                    Ok((mut s, _)) => {
                        s.set_nonblocking(false).expect("blocking");
                        let mut buf = Vec::new();
                        let _ = std::io::Read::read_to_end(&mut s, &mut buf);
                        break format!("accepted:{}", buf.len());
                    }
                    Err(_) if std::time::Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    Err(e) => break e.kind().to_string(),
                }
            }
        }
        other => panic!("unknown probe {other}"),
    };
    println!("\nRESULT {outcome}");
}

pub fn probe_result(out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .find_map(|l| l.split_once("RESULT ").map(|(_, r)| r))
        .unwrap_or_else(|| {
            panic!(
                "probe printed no result: {stdout} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
        .to_string()
}
