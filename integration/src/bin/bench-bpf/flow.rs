//! One throughput flow: a client namespace joined by a veth pair to a server namespace
//! running `iperf3 -s`, the client's cgroup attached as a tracked container, what a toggle
//! attaches and detaches on it, and the counters read from it. Owns no schedule of runs.
use std::fs;
use std::os::fd::AsFd;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tether_bpf::{container, PinLayout, Programs};

use crate::fixture::{cgroup_root, num_cpus, sh, Cgroup, KillOnDrop, Netns};
use crate::noop::Noop;
use crate::{bench_plan, spin, steering, Steer, Toggle};

/// A client of the throughput benchmarks: a namespace joined by a veth pair (`veth0` on
/// 10.214.N.1 to `veth1` on 10.214.N.2) to a server namespace running `iperf3 -s`, and the
/// client's cgroup, which is attached as a container with [`bench_plan`].
pub struct Flow<'a> {
    progs: &'a Programs,
    layout: &'a PinLayout,
    /// iperf3's `-A` option: where the client and the server run ([`Steer`]).
    affinity: String,
    /// The container's id in the pins.
    id: String,
    server_ip: String,
    pub netns: fs::File,
    cgroup_id: u64,
    noop: std::cell::RefCell<Vec<Noop>>,
    // Dropped in this order: the server, then its namespaces and the cgroup.
    server: KillOnDrop,
    client_ns: Netns,
    _server_ns: Netns,
    pub cgroup: Cgroup,
}

impl<'a> Flow<'a> {
    pub fn new(progs: &'a Programs, layout: &'a PinLayout, n: u8) -> Result<Self> {
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
    pub fn attach_cgroup(&self) -> Result<()> {
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
    pub fn attach_tc(&self) -> Result<()> {
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

    pub fn detach(&self) -> Result<()> {
        container::detach(self.progs, self.layout, "bench", &self.id)?;
        Ok(())
    }

    /// Attaches what `toggle` toggles (from the state [`Flow::off`] leaves).
    pub fn on(&self, toggle: Toggle) -> Result<()> {
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
    pub fn off(&self, toggle: Toggle) -> Result<()> {
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
    pub fn client_script(&self, cgroup: &Path, args: &str) -> String {
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
    pub fn iperf(&self, cgroup: &Path, secs: u64) -> Result<f64> {
        let script = self.client_script(cgroup, &format!("-t {secs} -O 1 -J"));
        let out = sh("sh", &["-c", &script])?;
        let v: serde_json::Value = serde_json::from_str(&out).context("iperf3 -J output")?;
        v["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .context("iperf3 result without sum_received")
    }

    /// Segments the client's TCP has retransmitted (all of its namespace's sockets).
    pub fn retransmitted(&self) -> Result<u64> {
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
    pub fn server_counters(&self) -> Result<[u64; 3]> {
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
