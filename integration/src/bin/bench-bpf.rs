//! Benchmarks of tether's programs; prints numbers, asserts nothing. Run as root:
//!
//! ```text
//! cargo build --release -p tether-integration --bin bench-bpf
//! ./target/release/bench-bpf [SECONDS_PER_RUN] [ROUNDS] [N_CONTAINERS] [TOGGLED_FLOW_SECONDS] \
//!     [PAIRED_FLOWS_SECONDS]
//! ```
//!
//! 1. Load cost: one load + N opens of the pins (tether) vs N loads (a loader per container).
//! 2. Throughput: iperf3 over a veth pair between two namespaces the benchmark creates,
//!    programs attached vs none: separate runs alternating (median ratio), then one long
//!    flow with the programs attached and detached every two seconds (each attached
//!    period against its detached neighbours), then two flows at once with the programs
//!    on one and then the other, swapped every two seconds (same-window ratios).
//! 3. Per-packet cost of each program from the kernel's bpf_stats (run time / run count).
//!
//! Benchmark-only environment: `TETHER_BENCH_PLAN` (the tracked container's plan),
//! `TETHER_BENCH_TOGGLE` and `TETHER_BENCH_VERSUS` (what is attached, and what the other
//! flow carries meanwhile), `TETHER_BENCH_SPIN` (the `spin` toggle's loop) and
//! `TETHER_BENCH_STEER` (where the flows run: see `Steer`).
use std::fs;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tether_bpf::{container, programs, ContainerConfig, PinLayout, Prog, Programs};

struct Mount(PathBuf);
impl Drop for Mount {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
        let _ = fs::remove_dir(&self.0);
    }
}

struct Netns(String);
impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

struct Cgroup(PathBuf);
impl Drop for Cgroup {
    fn drop(&mut self) {
        // Empty child cgroups first (the `noop-off-path` toggle makes one).
        for e in fs::read_dir(&self.0).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                let _ = fs::remove_dir(e.path());
            }
        }
        let _ = fs::remove_dir(&self.0);
    }
}

/// A child process (an iperf3 server or client), killed and reaped when dropped.
struct KillOnDrop(Child);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn sh(cmd: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .with_context(|| cmd.to_string())?;
    if !out.status.success() {
        bail!("{cmd} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn private_bpffs(tag: &str) -> Result<(Mount, PinLayout)> {
    let dir = std::env::temp_dir().join(format!("tether-bench-{tag}-{}", std::process::id()));
    fs::create_dir_all(&dir)?;
    nix::mount::mount(
        Some("bpf"),
        &dir,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )?;
    let layout = PinLayout::new(dir.join("tether"));
    Ok((Mount(dir), layout))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn load_cost(n: usize) -> Result<()> {
    println!("== load cost, N = {n} containers");
    let (_m, layout) = private_bpffs("load")?;
    let t = Instant::now();
    let report = programs::load_and_pin(&layout, tether_bpf::VERSION)?;
    let mut opens = Vec::new();
    for _ in 0..n {
        opens.push(Programs::open(&layout, tether_bpf::VERSION)?);
    }
    let tether = t.elapsed();
    drop(opens);
    let mut naive_verified = 0u64;
    let t = Instant::now();
    for i in 0..n {
        let (_m, l) = private_bpffs(&format!("naive{i}"))?;
        naive_verified += programs::load_and_pin(&l, tether_bpf::VERSION)?.verified_insns;
    }
    let naive = t.elapsed();
    println!(
        "tether (1 load + {n} opens): {:>9.1} ms, verifier insns {}",
        tether.as_secs_f64() * 1e3,
        report.verified_insns
    );
    println!(
        "naive  ({n} loads):          {:>9.1} ms, verifier insns {}",
        naive.as_secs_f64() * 1e3,
        naive_verified
    );
    println!(
        "one load: {:.1} ms; naive / tether total time: {:.1}x",
        report.load_time.as_secs_f64() * 1e3,
        naive.as_secs_f64() / tether.as_secs_f64()
    );
    Ok(())
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Where the throughput flows run (benchmark-only `TETHER_BENCH_STEER`).
///
/// A veth pair delivers a packet on the CPU that sent it. With the client on CPU 0 and the
/// server on CPU 1, the client sends data from both: from its own CPU (write()) and from
/// the server's (an ACK processed there opens the window and sends more). The two CPUs'
/// backlogs drain independently, so data arrives out of order, the server takes it for
/// loss and the client retransmits: thousands of spurious retransmissions a second
/// (`TcpExtTCPDSACKRecvSegs`), and a flow whose rate follows its reordering, which a few
/// nanoseconds more on one path change by more than their share of the CPU.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Steer {
    /// The default: client on CPU 0, server on CPU 1, the veth pair as it comes.
    None,
    /// As `None`, with Receive Packet Steering: what `veth1` receives is processed on the
    /// server's CPU, what `veth0` receives on the client's. One queue per direction and
    /// no reordering, but an inter-processor interrupt per batch (a VM exit in a VM).
    Rps,
    /// Each flow's client and server on one CPU (flow N on CPU N): one queue, no
    /// reordering, no interrupts between CPUs; the flow's rate follows its CPU time.
    Cpu,
}

fn steering() -> Result<Steer> {
    match std::env::var("TETHER_BENCH_STEER").as_deref() {
        Err(_) | Ok("none") => Ok(Steer::None),
        Ok("rps") => Ok(Steer::Rps),
        Ok("cpu") => Ok(Steer::Cpu),
        Ok(other) => bail!("TETHER_BENCH_STEER={other}: expected none, rps or cpu"),
    }
}

/// The plan of the throughput benchmark's tracked container (benchmark-only
/// `TETHER_BENCH_PLAN`), as the shim's default (`count_at = "auto"`) makes it for a
/// container whose network namespace is its own with an interface (the client's veth0):
/// `accounting` (the default plan: counters only, counted at the interfaces), `policy`
/// (counters and one deny rule, so the cgroup programs a policy needs are attached too),
/// or `cgroup` (counters only, counted at the cgroup: `count_at = "cgroup"`).
fn bench_plan() -> Result<(&'static str, ContainerConfig, Vec<tether_bpf::Cidr>)> {
    let accounting = ContainerConfig {
        policy: false,
        count_at_interfaces: true,
        ..ContainerConfig::default()
    };
    match std::env::var("TETHER_BENCH_PLAN").as_deref() {
        Ok("accounting") | Err(_) => Ok(("accounting", accounting, vec![])),
        Ok("policy") => Ok((
            "policy",
            ContainerConfig {
                policy: true,
                ..accounting
            },
            vec!["192.0.2.0/24".parse()?],
        )),
        Ok("cgroup") => Ok((
            "cgroup",
            ContainerConfig {
                count_at_interfaces: false,
                ..accounting
            },
            vec![],
        )),
        Ok(other) => bail!("TETHER_BENCH_PLAN={other}: expected accounting, policy or cgroup"),
    }
}

/// A program that does nothing but return (a no-op), linked to a hook: what the kernel's
/// hook costs by itself, the floor for any program there. Dropping it closes the links,
/// which detaches.
struct Noop {
    prog: std::os::fd::OwnedFd,
    _links: Vec<std::os::fd::OwnedFd>,
}

impl Noop {
    /// Loads `r0 = verdict; exit` as a program of `prog_type`, after a loop of `spin`
    /// register additions when `spin` > 0 (a known cost with no memory access).
    fn load(prog_type: u32, verdict: i32, spin: u32) -> Result<std::os::fd::OwnedFd> {
        use std::os::fd::{FromRawFd, OwnedFd};
        // One eBPF instruction in the kernel's encoding (struct bpf_insn, little endian).
        let insn = |code: u8, dst: u8, src: u8, off: i16, imm: i32| -> u64 {
            u64::from(code)
                | u64::from(dst | (src << 4)) << 8
                | u64::from(off as u16) << 16
                | u64::from(imm as u32) << 32
        };
        let mut insns = Vec::new();
        if spin > 0 {
            insns.extend([
                insn(0xb7, 1, 0, 0, spin as i32), // r1 = spin
                insn(0xb7, 2, 0, 0, 0),           // r2 = 0
                insn(0x0f, 2, 1, 0, 0),           // loop: r2 += r1
                insn(0x17, 1, 0, 0, 1),           // r1 -= 1
                insn(0x55, 1, 0, -3, 0),          // if r1 != 0 goto loop
            ]);
        }
        insns.push(insn(0xb7, 0, 0, 0, verdict)); // r0 = verdict
        insns.push(insn(0x95, 0, 0, 0, 0)); // exit
        let name = c"tether_noop";
        let license = c"GPL";
        // SAFETY: `insns` holds 8-byte eBPF instructions in the kernel's encoding (the
        // layout of bpf_insn) and outlives the call; name and license are NUL-terminated;
        // a null opts pointer selects libbpf's defaults.
        let prog = unsafe {
            libbpf_sys::bpf_prog_load(
                prog_type,
                name.as_ptr(),
                license.as_ptr(),
                insns.as_ptr().cast(),
                insns.len() as _,
                std::ptr::null_mut(),
            )
        };
        if prog < 0 {
            bail!(
                "BPF_PROG_LOAD (no-op, type {prog_type}): {}",
                std::io::Error::from_raw_os_error(-prog)
            );
        }
        // SAFETY: bpf_prog_load returned a new file descriptor that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(prog) })
    }

    /// A cgroup_skb no-op (pass) on both directions of `cgroup`, after `spin` additions.
    fn cgroup_skb(cgroup: &Path, spin: u32) -> Result<Self> {
        Self::cgroup_skb_on(
            cgroup,
            spin,
            &[
                libbpf_sys::BPF_CGROUP_INET_INGRESS,
                libbpf_sys::BPF_CGROUP_INET_EGRESS,
            ],
        )
    }

    /// A cgroup_skb no-op on the hooks `attach_types` of `cgroup`.
    fn cgroup_skb_on(cgroup: &Path, spin: u32, attach_types: &[u32]) -> Result<Self> {
        let prog = Self::load(libbpf_sys::BPF_PROG_TYPE_CGROUP_SKB, 1, spin)?;
        let cg = fs::File::open(cgroup)?;
        let mut links = Vec::new();
        for &attach_type in attach_types {
            links.push(tether_bpf::sys::link_create_cgroup(
                prog.as_fd(),
                cg.as_fd(),
                attach_type,
            )?);
        }
        Ok(Noop {
            prog,
            _links: links,
        })
    }

    /// A TC no-op (TCX_NEXT) on both directions of `dev` in `netns`, through TCX links
    /// made from inside the namespace ([`container::in_netns`]).
    fn tc(netns: &fs::File, dev: &str) -> Result<Self> {
        let prog = Self::load(libbpf_sys::BPF_PROG_TYPE_SCHED_CLS, -1, 0)?;
        let link_both = || -> Result<Vec<std::os::fd::OwnedFd>> {
            let ifindex = nix::net::if_::if_nametoindex(dev).context(dev.to_string())?;
            let mut links = Vec::new();
            for attach_type in [libbpf_sys::BPF_TCX_INGRESS, libbpf_sys::BPF_TCX_EGRESS] {
                links.push(tether_bpf::sys::link_create_tcx(
                    prog.as_fd(),
                    ifindex,
                    attach_type,
                )?);
            }
            Ok(links)
        };
        let links = container::in_netns(netns.as_fd(), || Ok(link_both()))??;
        Ok(Noop {
            prog,
            _links: links,
        })
    }

    fn stats(&self) -> Result<tether_bpf::sys::ProgInfo> {
        Ok(tether_bpf::sys::prog_info(self.prog.as_fd())?)
    }
}

/// What the toggled and paired benchmarks attach and detach (benchmark-only
/// `TETHER_BENCH_TOGGLE`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Toggle {
    /// The cgroup and the TC programs (the default).
    All,
    /// The cgroup programs; TC stays off. (With the default plan, counted at the
    /// interfaces, that is connect4 alone: `TETHER_BENCH_PLAN=cgroup` for cgroup_skb.)
    Cgroup,
    /// The TC programs; the cgroup programs stay on (as for `Cgroup`).
    Tc,
    /// Not tether's programs: a cgroup_skb program that does nothing (the kernel's hook).
    Noop,
    /// A TC program that does nothing, on the client's `veth0` (the TCX hook).
    NoopTc,
    /// The cgroup_skb no-op on the egress hook only.
    NoopCgEgress,
    /// The cgroup_skb no-op on the ingress hook only.
    NoopCgIngress,
    /// Both no-ops: the hooks that tether's programs use, without tether's work.
    NoopAll,
    /// Both no-ops, off the flow's path (cgroup_skb on an empty child cgroup of the
    /// client's, TC on the client namespace's `lo`): the same attach and detach work with no
    /// per-packet work for the flow, a check that toggling itself costs the flow nothing.
    NoopOffPath,
    /// The cgroup_skb no-op after a loop of `TETHER_BENCH_SPIN` additions (default 300):
    /// a known cost per packet, which calibrates what a nanosecond costs in throughput.
    Spin,
    /// Nothing at all: the method's own bias and noise (an A/A test).
    None,
}

impl Toggle {
    /// What the benchmarks toggle: `TETHER_BENCH_TOGGLE`, default `all`.
    fn from_env() -> Result<Self> {
        Self::parse("TETHER_BENCH_TOGGLE", "all")
    }

    /// What the other flow of [`paired`] carries meanwhile: `TETHER_BENCH_VERSUS`, default
    /// `none` (nothing). With `noop-all` the ratio is tether's work beyond the kernel's
    /// hooks, in one window.
    fn versus_from_env() -> Result<Self> {
        Self::parse("TETHER_BENCH_VERSUS", "none")
    }

    fn parse(var: &str, default: &str) -> Result<Self> {
        Ok(match std::env::var(var).as_deref().unwrap_or(default) {
            "all" => Toggle::All,
            "cgroup" => Toggle::Cgroup,
            "tc" => Toggle::Tc,
            "noop" => Toggle::Noop,
            "noop-tc" => Toggle::NoopTc,
            "noop-cg-egress" => Toggle::NoopCgEgress,
            "noop-cg-ingress" => Toggle::NoopCgIngress,
            "noop-all" => Toggle::NoopAll,
            "noop-off-path" => Toggle::NoopOffPath,
            "spin" => Toggle::Spin,
            "none" => Toggle::None,
            other => {
                bail!("{var}={other}: expected all, cgroup, tc, noop, noop-tc, noop-cg-egress, noop-cg-ingress, noop-all, noop-off-path, spin or none")
            }
        })
    }
}

/// A client of the throughput benchmarks: a namespace joined by a veth pair (`veth0` on
/// 10.214.N.1 to `veth1` on 10.214.N.2) to a server namespace running `iperf3 -s`, and the
/// client's cgroup, which is attached as a container with [`bench_plan`].
struct Flow<'a> {
    progs: &'a Programs,
    layout: &'a PinLayout,
    /// iperf3's `-A` option: where the client and the server run ([`Steer`]).
    affinity: String,
    /// The container's id in the pins.
    id: String,
    server_ip: String,
    netns: fs::File,
    cgroup_id: u64,
    noop: std::cell::RefCell<Vec<Noop>>,
    // Dropped in this order: the server, then its namespaces and the cgroup.
    server: KillOnDrop,
    client_ns: Netns,
    _server_ns: Netns,
    cgroup: Cgroup,
}

impl<'a> Flow<'a> {
    fn new(progs: &'a Programs, layout: &'a PinLayout, n: u8) -> Result<Self> {
        let tag = format!("{}-{n}", std::process::id());
        let a = Netns(format!("tether-bench-a{tag}"));
        sh("ip", &["netns", "add", &a.0])?;
        let b = Netns(format!("tether-bench-b{tag}"));
        sh("ip", &["netns", "add", &b.0])?;
        for ns in [&a, &b] {
            sh("ip", &["-n", &ns.0, "link", "set", "lo", "up"])?;
        }
        sh(
            "ip",
            &[
                "-n", &a.0, "link", "add", "veth0", "type", "veth", "peer", "name", "veth1",
                "netns", &b.0,
            ],
        )?;
        let server_ip = format!("10.214.{n}.2");
        for (ns, dev, addr) in [
            (&a, "veth0", format!("10.214.{n}.1/24")),
            (&b, "veth1", format!("{server_ip}/24")),
        ] {
            sh("ip", &["-n", &ns.0, "addr", "add", &addr, "dev", dev])?;
            sh("ip", &["-n", &ns.0, "link", "set", dev, "up"])?;
        }
        let steer = steering()?;
        if steer == Steer::Rps && num_cpus() >= 2 {
            // The client's ACKs are received on its CPU (0), the server's data on the
            // server's (1), whichever CPU sent them: see [`Steer::Rps`].
            for (ns, dev, cpus) in [(&a, "veth0", "1"), (&b, "veth1", "2")] {
                let rps = format!("echo {cpus} > /sys/class/net/{dev}/queues/rx-0/rps_cpus");
                sh("ip", &["netns", "exec", &ns.0, "sh", "-c", &rps])?;
            }
        }
        let server = KillOnDrop(
            Command::new("ip")
                .args(["netns", "exec", &b.0, "iperf3", "-s", "-B", &server_ip])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("iperf3 -s")?,
        );
        let cgroup = Cgroup(cgroup_root().join(format!("tether-bench-tracked-{tag}")));
        fs::create_dir_all(&cgroup.0)?;
        let cgroup_id = container::cgroup_id(fs::File::open(&cgroup.0)?.as_fd())?;
        let netns = fs::File::open(format!("/run/netns/{}", a.0))?;
        std::thread::sleep(Duration::from_millis(500));
        let affinity = match steer {
            Steer::Cpu => {
                let c = n as usize % num_cpus();
                format!("-A {c},{c}")
            }
            _ if num_cpus() >= 2 => "-A 0,1".to_string(),
            _ => String::new(),
        };
        Ok(Flow {
            progs,
            layout,
            affinity,
            id: format!("tracked{n}"),
            server_ip,
            netns,
            cgroup_id,
            noop: Default::default(),
            server,
            client_ns: a,
            _server_ns: b,
            cgroup,
        })
    }

    /// The cgroup programs, with [`bench_plan`].
    fn attach_cgroup(&self) -> Result<()> {
        let (_, config, deny) = bench_plan()?;
        container::attach_cgroup(
            self.progs,
            self.layout,
            "bench",
            &self.id,
            fs::File::open(&self.cgroup.0)?.as_fd(),
            &config,
            &deny,
        )?;
        Ok(())
    }

    /// The TC programs on the interfaces of the client's namespace.
    fn attach_tc(&self) -> Result<()> {
        container::attach_netns(
            self.progs,
            self.layout,
            "bench",
            &self.id,
            self.cgroup_id,
            self.netns.as_fd(),
        )?;
        Ok(())
    }

    fn detach(&self) -> Result<()> {
        container::detach(self.progs, self.layout, "bench", &self.id)?;
        Ok(())
    }

    /// Attaches what `toggle` toggles (from the state [`Flow::off`] leaves).
    fn on(&self, toggle: Toggle) -> Result<()> {
        match toggle {
            Toggle::None => Ok(()),
            Toggle::NoopOffPath => {
                let idle = self.cgroup.0.join("idle");
                fs::create_dir_all(&idle)?;
                let mut noop = self.noop.borrow_mut();
                noop.push(Noop::cgroup_skb(&idle, 0)?);
                noop.push(Noop::tc(&self.netns, "lo")?);
                Ok(())
            }
            Toggle::NoopCgEgress | Toggle::NoopCgIngress => {
                let hook = if toggle == Toggle::NoopCgEgress {
                    libbpf_sys::BPF_CGROUP_INET_EGRESS
                } else {
                    libbpf_sys::BPF_CGROUP_INET_INGRESS
                };
                let noop = Noop::cgroup_skb_on(&self.cgroup.0, 0, &[hook])?;
                self.noop.borrow_mut().push(noop);
                Ok(())
            }
            Toggle::Noop | Toggle::NoopTc | Toggle::NoopAll | Toggle::Spin => {
                let spin = if toggle == Toggle::Spin { spin()? } else { 0 };
                let mut noop = self.noop.borrow_mut();
                if toggle != Toggle::NoopTc {
                    noop.push(Noop::cgroup_skb(&self.cgroup.0, spin)?);
                }
                if toggle == Toggle::NoopTc || toggle == Toggle::NoopAll {
                    noop.push(Noop::tc(&self.netns, "veth0")?);
                }
                Ok(())
            }
            Toggle::All => {
                self.attach_cgroup()?;
                self.attach_tc()
            }
            Toggle::Cgroup => self.attach_cgroup(),
            Toggle::Tc => self.attach_tc(),
        }
    }

    /// Detaches what `toggle` toggles: nothing of tether stays attached, except the cgroup
    /// programs when only TC is toggled.
    fn off(&self, toggle: Toggle) -> Result<()> {
        self.noop.borrow_mut().clear();
        self.detach()?;
        if toggle == Toggle::Tc {
            self.attach_cgroup()?;
        }
        Ok(())
    }

    /// An iperf3 client in `cgroup` and the flow's client namespace, to its server; the
    /// client and the server are pinned to CPUs ([`Steer`]) so the scheduler does not
    /// move them.
    fn client_script(&self, cgroup: &Path, args: &str) -> String {
        format!(
            "echo $$ > {}/cgroup.procs && exec ip netns exec {} iperf3 -c {} {} {args}",
            cgroup.display(),
            self.client_ns.0,
            self.server_ip,
            self.affinity
        )
    }

    /// One iperf3 run from `cgroup` (the flow's own, or another); bits per second
    /// received, the first second (slow start) omitted.
    fn iperf(&self, cgroup: &Path, secs: u64) -> Result<f64> {
        let script = self.client_script(cgroup, &format!("-t {secs} -O 1 -J"));
        let out = sh("sh", &["-c", &script])?;
        let v: serde_json::Value = serde_json::from_str(&out).context("iperf3 -J output")?;
        v["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .context("iperf3 result without sum_received")
    }

    /// Segments the client's TCP has retransmitted (all of its namespace's sockets).
    fn retransmitted(&self) -> Result<u64> {
        let snmp = sh(
            "ip",
            &["netns", "exec", &self.client_ns.0, "cat", "/proc/net/snmp"],
        )?;
        let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
        let (names, values) = (tcp.next(), tcp.next());
        names
            .zip(values)
            .and_then(|(n, v)| {
                n.split_whitespace()
                    .zip(v.split_whitespace())
                    .find(|(n, _)| *n == "RetransSegs")
                    .and_then(|(_, v)| v.parse().ok())
            })
            .context("/proc/net/snmp of the client's namespace: no Tcp RetransSegs")
    }

    /// The server's `veth1` counters: bytes and packets (skbs: one per TSO segment train)
    /// received, and packets sent (the ACKs), from /proc/PID/net/dev of the server (which
    /// shows its process's namespace).
    fn server_counters(&self) -> Result<[u64; 3]> {
        let path = format!("/proc/{}/net/dev", self.server.0.id());
        let text = fs::read_to_string(&path).with_context(|| path.clone())?;
        let fields: Vec<u64> = text
            .lines()
            .find_map(|l| l.trim_start().strip_prefix("veth1:"))
            .map(|rest| {
                rest.split_whitespace()
                    .filter_map(|n| n.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        if fields.len() < 10 {
            bail!("{path}: no counters for veth1");
        }
        Ok([fields[0], fields[1], fields[9]])
    }
}

/// Additions per run of the `spin` toggle's program (benchmark-only `TETHER_BENCH_SPIN`).
fn spin() -> Result<u32> {
    match std::env::var("TETHER_BENCH_SPIN") {
        Err(_) => Ok(300),
        Ok(v) => v
            .parse()
            .ok()
            .filter(|n| (1..=100_000).contains(n))
            .with_context(|| format!("TETHER_BENCH_SPIN={v}: expected 1..=100000")),
    }
}

fn cgroup_root() -> PathBuf {
    if Path::new("/sys/fs/cgroup/unified/cgroup.procs").exists() {
        PathBuf::from("/sys/fs/cgroup/unified")
    } else {
        PathBuf::from("/sys/fs/cgroup")
    }
}

/// How long the programs stay attached (then detached) in [`toggled`] and [`paired`].
const TOGGLE_PERIOD: Duration = Duration::from_secs(2);
/// Around a toggle, iperf3 intervals are not used: the flow's start lags ours by the
/// control connection, and attaching or detaching takes a few RCU grace periods.
const TOGGLE_GUARD: f64 = 0.15;

/// Mean, 95% CI half-width, median and quartiles of `v` (not empty).
fn summary(v: &[f64]) -> String {
    let mut sorted = v.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let sd = (v.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0)).sqrt();
    format!(
        "median {:.3}, mean {:.4} ± {:.4} (95% CI), quartiles {:.3}–{:.3}",
        sorted[sorted.len() / 2],
        mean,
        1.96 * sd / n.sqrt(),
        sorted[sorted.len() / 4],
        sorted[(3 * sorted.len()) / 4]
    )
}

/// One long iperf3 flow from the tracked cgroup while the programs are attached and
/// detached every [`TOGGLE_PERIOD`]; compares the throughput of each attached period with
/// the detached periods on either side. Adjacent periods of one flow share its connection,
/// its CPUs and nearly its moment, so most of the noise between separate runs cancels.
/// Expects the flow's cgroup attached and no TC programs; leaves it so.
fn toggled(flow: &Flow<'_>, total: Duration, what: Toggle) -> Result<()> {
    let secs = total.as_secs();
    println!(
        "== iperf3, one {secs} s flow, programs attached and detached every {} ms",
        TOGGLE_PERIOD.as_millis()
    );
    println!("toggled: {what:?}");
    flow.off(what)?;
    let script = flow.client_script(&flow.cgroup.0, &format!("-t {secs} -i 0.25 -J"));
    let t0 = Instant::now();
    let client = Command::new("sh")
        .args(["-c", &script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("iperf3 -c")?;
    // (start, end, attached after) of every toggle, in seconds since the client started.
    let mut toggles: Vec<(f64, f64, bool)> = Vec::new();
    let mut on = false;
    let mut next = TOGGLE_PERIOD;
    while next + TOGGLE_PERIOD / 2 < total {
        if let Some(wait) = next.checked_sub(t0.elapsed()) {
            std::thread::sleep(wait);
        }
        let start = t0.elapsed().as_secs_f64();
        if on {
            flow.off(what)?;
        } else {
            flow.on(what)?;
        }
        on = !on;
        toggles.push((start, t0.elapsed().as_secs_f64(), on));
        next += TOGGLE_PERIOD;
    }
    let out = client.wait_with_output().context("iperf3 -c")?;
    flow.off(Toggle::All)?;
    flow.attach_cgroup()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("iperf3 -J output: {}", String::from_utf8_lossy(&out.stderr)))?;
    // Mean throughput of the clean intervals of each period (period k follows toggle k-1).
    let mut periods: Vec<(bool, Vec<f64>)> = std::iter::once(false)
        .chain(toggles.iter().map(|t| t.2))
        .map(|on| (on, Vec::new()))
        .collect();
    for iv in v["intervals"].as_array().context("iperf3 intervals")? {
        let (Some(s), Some(e), Some(bps)) = (
            iv["sum"]["start"].as_f64(),
            iv["sum"]["end"].as_f64(),
            iv["sum"]["bits_per_second"].as_f64(),
        ) else {
            continue;
        };
        let clean = toggles
            .iter()
            .all(|(ts, te, _)| *te + TOGGLE_GUARD < s || e + TOGGLE_GUARD < *ts);
        if !clean {
            continue;
        }
        let k = toggles.iter().filter(|(_, te, _)| *te < s).count();
        periods[k].1.push(bps);
    }
    let means: Vec<Option<(bool, f64)>> = periods
        .iter()
        .map(|(on, v)| (!v.is_empty()).then(|| (*on, v.iter().sum::<f64>() / v.len() as f64)))
        .collect();
    // Each attached period against the mean of the detached periods on either side.
    let mut ratios = Vec::new();
    for k in 1..means.len().saturating_sub(1) {
        if let (Some((false, before)), Some((true, during)), Some((false, after))) =
            (means[k - 1], means[k], means[k + 1])
        {
            ratios.push(during / ((before + after) / 2.0));
        }
    }
    if ratios.is_empty() {
        bail!("no attached period with clean detached periods on both sides");
    }
    let gbit = |on: bool| {
        let v: Vec<f64> = means
            .iter()
            .flatten()
            .filter(|m| m.0 == on)
            .map(|m| m.1)
            .collect();
        v.iter().sum::<f64>() / v.len().max(1) as f64 / 1e9
    };
    println!(
        "detached periods {:.2} Gbit/s, attached {:.2} Gbit/s (means)",
        gbit(false),
        gbit(true)
    );
    println!(
        "attached / neighbouring detached, {} periods: {}",
        ratios.len(),
        summary(&ratios)
    );
    Ok(())
}

/// Two iperf3 flows at once, each from its own container's namespace over its own veth
/// pair, with the programs attached to one container and then to the other, swapping every
/// [`TOGGLE_PERIOD`]. Both clients share CPU 0 and both servers CPU 1, and the two flows'
/// bytes are read over the same window (the servers' interface counters), so what the
/// machine does to both (other guests, the host, frequency) cancels in the ratio of their
/// bytes. Sharing a CPU, each flow gets about half of it, so the ratio is that of the bytes
/// each moves per unit of CPU: the ratio of a lone CPU-bound flow's throughput with and
/// without the programs. The flows' own difference cancels between a period and the next,
/// where their roles are swapped: the estimate is sqrt(r_a * r_b) over each pair of
/// periods, r being the attached flow's bytes over the other's.
/// Leaves both flows with nothing attached.
fn paired(flows: [&Flow<'_>; 2], total: Duration, what: Toggle, versus: Toggle) -> Result<()> {
    let periods = (total.as_secs_f64() / TOGGLE_PERIOD.as_secs_f64()) as usize & !1;
    if periods == 0 {
        bail!(
            "two flows at once: {} s is less than one pair of {} s periods",
            total.as_secs(),
            TOGGLE_PERIOD.as_secs()
        );
    }
    println!(
        "== iperf3, two flows at once for {} s, programs on one flow and then the other, swapped every {} ms",
        total.as_secs(),
        TOGGLE_PERIOD.as_millis()
    );
    println!("toggled: {what:?}, the other flow meanwhile: {versus:?}");
    if what == Toggle::Tc || versus == Toggle::Tc {
        bail!(
            "TETHER_BENCH_VERSUS works with toggles that leave nothing attached when off (not tc)"
        );
    }
    for f in flows {
        f.off(what)?;
    }
    let secs = (periods as u64 + 1) * TOGGLE_PERIOD.as_secs() + 3;
    let mut clients = Vec::new();
    for f in flows {
        clients.push(KillOnDrop(
            Command::new("sh")
                .args(["-c", &f.client_script(&f.cgroup.0, &format!("-t {secs}"))])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("iperf3 -c")?,
        ));
    }
    // Past slow start, both flows running.
    std::thread::sleep(Duration::from_millis(1500));
    let retrans_before = [flows[0].retransmitted()?, flows[1].retransmitted()?];
    let t0 = Instant::now();
    let mut ratios = Vec::new(); // the attached flow's bytes / the other's
    let mut moved_total = [[0u64; 3]; 2]; // per flow: bytes, data packets, ACKs
    for k in 0..periods {
        let (on, other) = (k % 2, 1 - k % 2);
        flows[other].off(what)?;
        if versus != Toggle::None {
            flows[on].off(versus)?;
        }
        flows[on].on(what)?;
        flows[other].on(versus)?;
        std::thread::sleep(Duration::from_secs_f64(TOGGLE_GUARD));
        let start = [flows[0].server_counters()?, flows[1].server_counters()?];
        let end_at = TOGGLE_PERIOD * (k as u32 + 1);
        if let Some(wait) = end_at.checked_sub(t0.elapsed()) {
            std::thread::sleep(wait);
        }
        let end = [flows[0].server_counters()?, flows[1].server_counters()?];
        let moved = [end[0][0] - start[0][0], end[1][0] - start[1][0]];
        if moved.contains(&0) {
            bail!("period {k}: a flow moved no bytes ({moved:?}); did an iperf3 client exit?");
        }
        for f in 0..2 {
            for c in 0..3 {
                moved_total[f][c] += end[f][c] - start[f][c];
            }
        }
        ratios.push(moved[on] as f64 / moved[other] as f64);
    }
    let retrans = [
        flows[0].retransmitted()? - retrans_before[0],
        flows[1].retransmitted()? - retrans_before[1],
    ];
    for f in flows {
        f.off(Toggle::All)?;
    }
    drop(clients);
    let label = match versus {
        Toggle::None => "attached / not".to_string(),
        v => format!("attached / {v:?} on the other flow"),
    };
    let effect: Vec<f64> = ratios.chunks(2).map(|p| (p[0] * p[1]).sqrt()).collect();
    let asymmetry: Vec<f64> = ratios.chunks(2).map(|p| (p[0] / p[1]).sqrt()).collect();
    let measured = periods as f64 * (TOGGLE_PERIOD.as_secs_f64() - TOGGLE_GUARD);
    for (f, [bytes, data, acks]) in moved_total.iter().enumerate() {
        println!(
            "flow {f}: {:.2} Gbit/s, {:.0} data packets/s of {:.1} KiB, {:.0} ACKs/s (measured windows), {:.0} segments retransmitted/s",
            *bytes as f64 * 8.0 / 1e9 / measured,
            *data as f64 / measured,
            *bytes as f64 / *data as f64 / 1024.0,
            *acks as f64 / measured,
            retrans[f] as f64 / t0.elapsed().as_secs_f64()
        );
    }
    if what == Toggle::Spin {
        // The spin loop's own cost, from the kernel's timing of repeated test runs.
        let pkt = udp4([10, 214, 0, 2]);
        let cost = |spin| -> Result<u32> {
            let prog = Noop::load(libbpf_sys::BPF_PROG_TYPE_CGROUP_SKB, 1, spin)?;
            Ok(tether_bpf::sys::prog_test_run_repeat(prog.as_fd(), &pkt, None, 100_000)?.1)
        };
        println!(
            "spin program {} ns per run, no-op {} ns (BPF_PROG_TEST_RUN)",
            cost(spin()?)?,
            cost(0)?
        );
    }
    println!(
        "flow 0 / flow 1, whatever is attached ({} pairs of periods): {}",
        asymmetry.len(),
        summary(&asymmetry)
    );
    println!(
        "{label}, same window ({} pairs of periods): {}",
        effect.len(),
        summary(&effect)
    );
    Ok(())
}

fn throughput(secs: u64, rounds: usize, toggle_secs: u64, paired_secs: u64) -> Result<()> {
    println!("== iperf3 over veth, {rounds} rounds of {secs} s each, alternating");
    println!("tracked container's plan: {}", bench_plan()?.0);
    println!(
        "flow placement: {}",
        format!("{:?}", steering()?).to_lowercase()
    );
    let (_m, layout) = private_bpffs("tput")?;
    programs::load_and_pin(&layout, tether_bpf::VERSION)?;
    let progs = Programs::open(&layout, tether_bpf::VERSION)?;
    let flow = Flow::new(&progs, &layout, 0)?;
    let plain = Cgroup(cgroup_root().join(format!("tether-bench-plain-{}", std::process::id())));
    fs::create_dir_all(&plain.0)?;
    flow.attach_cgroup()?;
    let what = Toggle::from_env()?;

    // Throughput first, without bpf_stats (which adds its own cost to every run). Each
    // round is a pair of runs, in ABBA order (none first in even rounds, attached first in
    // odd ones) so that drift and any effect of going first cancel out.
    let (mut off, mut on, mut pairs) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let mut pair = [0.0; 2];
        let order = if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for attached in order {
            if attached {
                // TC programs are on veth0 only during the attached runs.
                flow.attach_tc()?;
                pair[1] = flow.iperf(&flow.cgroup.0, secs)?;
                flow.detach()?;
                flow.attach_cgroup()?;
            } else {
                pair[0] = flow.iperf(&plain.0, secs)?;
            }
        }
        off.push(pair[0]);
        on.push(pair[1]);
        pairs.push(pair[1] / pair[0]);
    }
    if toggle_secs > 0 {
        toggled(&flow, Duration::from_secs(toggle_secs), what)?;
    }
    if paired_secs > 0 {
        let second = Flow::new(&progs, &layout, 1)?;
        paired(
            [&flow, &second],
            Duration::from_secs(paired_secs),
            what,
            Toggle::versus_from_env()?,
        )?;
        flow.attach_cgroup()?;
    }

    // Then one attached run with bpf_stats on, for each program's cost per run, beside a
    // no-op cgroup_skb program on the same cgroup: what bpf_stats reports for a program
    // that does nothing (its clock reads and the call), the floor of every figure.
    flow.attach_tc()?;
    let noop = [
        ("no-op cgroup_skb", Noop::cgroup_skb(&flow.cgroup.0, 0)?),
        ("no-op tc", Noop::tc(&flow.netns, "veth0")?),
    ];
    let stats = tether_bpf::sys::enable_run_time_stats()?;
    let before: Vec<_> = Prog::ALL
        .iter()
        .map(|p| progs.run_stats(*p))
        .collect::<Result<_, _>>()?;
    let noop_before: Vec<_> = noop.iter().map(|n| n.1.stats()).collect::<Result<_>>()?;
    let stats_started = Instant::now();
    let stats_bps = flow.iperf(&flow.cgroup.0, secs)?;
    let stats_wall = stats_started.elapsed();
    let after: Vec<_> = Prog::ALL
        .iter()
        .map(|p| progs.run_stats(*p))
        .collect::<Result<_, _>>()?;
    let noop_after: Vec<_> = noop.iter().map(|n| n.1.stats()).collect::<Result<_>>()?;
    drop(stats);
    let noop_names = noop.map(|n| n.0);
    if rounds > 0 {
        let (m_off, m_on) = (median(&mut off.clone()), median(&mut on.clone()));
        let gbit = |v: &[f64]| {
            v.iter()
                .map(|x| format!("{:.2}", x / 1e9))
                .collect::<Vec<_>>()
                .join(" ")
        };
        println!(
            "none:     {} Gbit/s (median {:.2})",
            gbit(&off),
            m_off / 1e9
        );
        println!("attached: {} Gbit/s (median {:.2})", gbit(&on), m_on / 1e9);
        println!(
            "throughput ratio attached / none: {:.3} (medians); per round: {} (median {:.3})",
            m_on / m_off,
            pairs
                .iter()
                .map(|r| format!("{r:.3}"))
                .collect::<Vec<_>>()
                .join(" "),
            median(&mut pairs.clone())
        );
    }
    println!("== per-packet cost (bpf_stats during one more attached run)");
    let mut total_ns = 0u64;
    for (i, p) in Prog::ALL.iter().enumerate() {
        let runs = after[i].run_cnt - before[i].run_cnt;
        let ns = after[i].run_time_ns - before[i].run_time_ns;
        total_ns += ns;
        if runs > 0 {
            println!(
                "{:<20} {:>12} runs {:>8.1} ns/run",
                p.name(),
                runs,
                ns as f64 / runs as f64
            );
        } else {
            println!("{:<20} {:>12} runs", p.name(), 0);
        }
    }
    for (i, name) in noop_names.iter().enumerate() {
        let runs = noop_after[i].run_cnt - noop_before[i].run_cnt;
        if runs > 0 {
            println!(
                "{name:<20} {runs:>12} runs {:>8.1} ns/run (does nothing: the floor)",
                (noop_after[i].run_time_ns - noop_before[i].run_time_ns) as f64 / runs as f64
            );
        }
    }
    // What the programs cost the whole transfer: their run time against the run's CPU
    // time (two busy CPUs: iperf3's client and server with their softirqs). This bounds
    // the throughput they can take, without the run-to-run noise of throughput itself.
    let cpu_ns = stats_wall.as_nanos() as f64 * num_cpus().min(2) as f64;
    println!(
        "programs' run time: {:.2} ms over {:.1} s at {:.2} Gbit/s: {:.4}% of two CPUs, {:.2} ns per KiB",
        total_ns as f64 / 1e6,
        stats_wall.as_secs_f64(),
        stats_bps / 1e9,
        100.0 * total_ns as f64 / cpu_ns,
        total_ns as f64 / (stats_bps / 8.0 * stats_wall.as_secs_f64() / 1024.0)
    );
    flow.detach()?;
    Ok(())
}

/// The library's attach steps one by one, on a test cgroup and a namespace with one veth.
fn attach_cost(n: usize) -> Result<()> {
    println!("== attach steps, {n} containers one after another (median / p99, us)");
    let (_m, layout) = private_bpffs("attach")?;
    programs::load_and_pin(&layout, tether_bpf::VERSION)?;
    let progs = Programs::open(&layout, tether_bpf::VERSION)?;
    let tag = std::process::id();
    let ns = Netns(format!("tether-bench-att{tag}"));
    sh("ip", &["netns", "add", &ns.0])?;
    sh(
        "ip",
        &[
            "-n", &ns.0, "link", "add", "eth0", "type", "veth", "peer", "name", "eth1",
        ],
    )?;
    let netns = fs::File::open(format!("/run/netns/{}", ns.0))?;
    let root = cgroup_root();
    // A node normally has containers running: one stays attached throughout, so the
    // kernel's per-hook static keys stay enabled (a first attach on an idle node patches
    // kernel text, a cost paid once, not per container).
    let resident = Cgroup(root.join(format!("tether-bench-att-{tag}-resident")));
    fs::create_dir_all(&resident.0)?;
    container::attach_cgroup(
        &progs,
        &layout,
        "bench",
        "resident",
        fs::File::open(&resident.0)?.as_fd(),
        &ContainerConfig::default(),
        &[],
    )?;
    let (mut cg_t, mut tc_t, mut watch_t, mut detach_t) = (vec![], vec![], vec![], vec![]);
    for i in 0..n {
        let cg = Cgroup(root.join(format!("tether-bench-att-{tag}-{i}")));
        fs::create_dir_all(&cg.0)?;
        let id = format!("c{i}");
        let dir = fs::File::open(&cg.0)?;
        let t = Instant::now();
        let a = container::attach_cgroup(
            &progs,
            &layout,
            "bench",
            &id,
            dir.as_fd(),
            &ContainerConfig::default(),
            &[],
        )?;
        cg_t.push(t.elapsed().as_secs_f64() * 1e6);
        let t = Instant::now();
        container::attach_netns(&progs, &layout, "bench", &id, a.cgroup_id, netns.as_fd())?;
        tc_t.push(t.elapsed().as_secs_f64() * 1e6);
        let t = Instant::now();
        let sock = container::link_events_socket(netns.as_fd())?;
        watch_t.push(t.elapsed().as_secs_f64() * 1e6);
        drop(sock);
        let t = Instant::now();
        container::detach(&progs, &layout, "bench", &id)?;
        detach_t.push(t.elapsed().as_secs_f64() * 1e6);
    }
    container::detach(&progs, &layout, "bench", "resident")?;
    for (name, v) in [
        ("cgroup: 6 links + entries", &mut cg_t),
        ("netns: 2 interfaces, 4 links", &mut tc_t),
        ("link watch socket", &mut watch_t),
        ("detach", &mut detach_t),
    ] {
        v.sort_by(f64::total_cmp);
        println!(
            "{name:<30} {:>8.0} {:>8.0}",
            v[v.len() / 2],
            v[(v.len() * 99 / 100).min(v.len() - 1)]
        );
    }
    Ok(())
}

/// An Ethernet + IPv4 + UDP packet to `dst` (BPF_PROG_TEST_RUN input).
fn udp4(dst: [u8; 4]) -> Vec<u8> {
    let mut p = vec![0u8; 14];
    p[12] = 0x08;
    p.extend_from_slice(&[0x45, 0, 0, 128, 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1]);
    p.extend_from_slice(&dst);
    p.extend_from_slice(&[0x30, 0x39, 0, 9, 0, 108, 0, 0]);
    p.resize(14 + 128, 0xab);
    p
}

/// Each program's cost per run from BPF_PROG_TEST_RUN (the kernel times `repeat` runs):
/// repeatable, unlike traffic on a shared machine.
fn run_cost(repeat: u32) -> Result<()> {
    println!("== cost per run, BPF_PROG_TEST_RUN x {repeat} (ns)");
    let (_m, layout) = private_bpffs("cost")?;
    programs::load_and_pin(&layout, tether_bpf::VERSION)?;
    let progs = Programs::open(&layout, tether_bpf::VERSION)?;
    let maps = progs.maps();
    let pkt = udp4([198, 51, 100, 7]);
    // BPF_PROG_TEST_RUN's packet belongs to the root cgroup (id 1) and the loopback device.
    let cost = |p: Prog| progs.test_run_cost(p, &pkt, repeat);
    println!(
        "cgroup egress, untracked cgroup     {:>6}",
        cost(Prog::CgroupEgress)?
    );
    let accounting = ContainerConfig {
        policy: false,
        ..ContainerConfig::default()
    };
    maps.set_container(1, &accounting, "bench", "cost")?;
    println!(
        "cgroup egress, tracked, accounting  {:>6}",
        cost(Prog::CgroupEgress)?
    );
    maps.remove_container(1)?;
    maps.set_container(1, &ContainerConfig::default(), "bench", "cost")?;
    println!(
        "cgroup egress, tracked, no rules    {:>6}",
        cost(Prog::CgroupEgress)?
    );
    println!(
        "cgroup ingress, tracked             {:>6}",
        cost(Prog::CgroupIngress)?
    );
    maps.add_deny(1, &"192.0.2.0/24".parse()?)?;
    println!(
        "cgroup egress, tracked, 1 rule      {:>6}",
        cost(Prog::CgroupEgress)?
    );
    let key = tether_bpf::IfKey::new(progs.netns_cookie_here()?, 1);
    maps.set_iface(key, 1)?;
    println!(
        "tc egress, tracked interface        {:>6}",
        cost(Prog::TcEgress)?
    );
    println!(
        "tc ingress, tracked interface       {:>6}",
        cost(Prog::TcIngress)?
    );
    maps.remove_container(1)?;
    Ok(())
}

fn main() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("bench-bpf loads programs and makes namespaces: run it as root");
    }
    let args: Vec<String> = std::env::args().collect();
    let secs = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(5);
    let rounds = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(3);
    let n = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(50);
    let toggle_secs = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(60);
    let paired_secs = args.get(5).and_then(|s| s.parse().ok()).unwrap_or(120);
    println!(
        "kernel {}, tether object {}",
        sh("uname", &["-r"])?.trim(),
        tether_bpf::VERSION
    );
    run_cost(1_000_000)?;
    load_cost(n)?;
    attach_cost(n)?;
    if secs > 0 {
        throughput(secs, rounds, toggle_secs, paired_secs)?;
    }
    Ok(())
}
