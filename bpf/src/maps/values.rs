//! The public value types of the maps: a container's config and identity, counters,
//! interface keys and CIDRs. They know nothing of the maps' layout (that is [`super::raw`])
//! nor of which programs a config needs (that is `Prog::used_by`).
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use crate::error::{Error, Result};
use crate::sys::Pod;

/// Packets, bytes, drops and denials of one container or one interface, summed over CPUs.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Counters {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    /// Packets dropped by the egress policy.
    pub drops: u64,
    /// connect()/sendmsg() calls refused with EPERM by the egress policy.
    pub denials: u64,
    /// Audit events sampled out, rate limited, or not fitting the ring buffer.
    pub events_lost: u64,
}
// SAFETY: repr(C), seven u64 fields, no padding.
unsafe impl Pod for Counters {}

impl Counters {
    /// Raises each counter to `o`'s where that is larger. Counters only grow, so of two
    /// readings of one container the result is the later (used when one reading could be
    /// taken only before the container's cgroup, and its local counters, went away).
    pub fn at_least(&mut self, o: &Counters) {
        self.combine(o, u64::max);
    }

    pub fn add(&mut self, o: &Counters) {
        self.combine(o, |a, b| a + b);
    }

    /// Sets every counter to `f(its value, o's)`.
    fn combine(&mut self, o: &Counters, f: impl Fn(u64, u64) -> u64) {
        self.rx_packets = f(self.rx_packets, o.rx_packets);
        self.rx_bytes = f(self.rx_bytes, o.rx_bytes);
        self.tx_packets = f(self.tx_packets, o.tx_packets);
        self.tx_bytes = f(self.tx_bytes, o.tx_bytes);
        self.drops = f(self.drops, o.drops);
        self.denials = f(self.denials, o.denials);
        self.events_lost = f(self.events_lost, o.events_lost);
    }

    /// The sum of per-CPU values.
    pub(super) fn sum<'a>(cpus: impl IntoIterator<Item = &'a Counters>) -> Counters {
        let mut total = Counters::default();
        for c in cpus {
            total.add(c);
        }
        total
    }
}

/// An interface inside a network namespace: the TC programs' key.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IfKey {
    /// The namespace's cookie; on kernels whose TC programs cannot read it (before 6.2), the
    /// classid of the interface's clsact filters ([`crate::NetnsKey::Classid`]).
    pub netns_cookie: u64,
    pub ifindex: u32,
    pad: u32,
}
// SAFETY: repr(C), u64 + u32 + explicit u32 padding.
unsafe impl Pod for IfKey {}

impl IfKey {
    pub fn new(netns_cookie: u64, ifindex: u32) -> Self {
        IfKey {
            netns_cookie,
            ifindex,
            pad: 0,
        }
    }
}

/// What the programs do for one container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContainerConfig {
    /// Count packets and bytes.
    pub account: bool,
    /// Enforce the container's deny rules.
    pub policy: bool,
    /// Emit an audit event for each denial (sampled, rate limited).
    pub audit_denials: bool,
    /// Emit an audit event for each new connection (sampled, rate limited).
    pub audit_connects: bool,
    /// With `account`: count packets and bytes at the container's interfaces (TC) alone,
    /// not at its cgroup. For a container whose network namespace is its own: the
    /// cgroup_skb programs then run only if the policy needs them (they cost a flow more
    /// than the TC programs do), and loopback traffic, which only they see, is not counted.
    pub count_at_interfaces: bool,
    /// With `policy`: packet sockets are refused, where the node-wide LSM program runs. For a
    /// container with no interface of its own where TC judges the frames they write (the
    /// host's network namespace, or `interfaces = none`).
    pub refuse_packet_sockets: bool,
    /// With `policy`: judge the container's packets at its interfaces (TC) alone, with no
    /// cgroup_skb egress program (which costs a flow more than the TC programs do). For a
    /// container whose network namespace is its own, every interface of which gets TC
    /// programs. Its connect() and UDP sendmsg() still see EPERM; what the sock_addr hooks do
    /// not see (raw and ICMP sockets, source-routed TCP) is dropped at TC without an error.
    pub judge_at_interfaces: bool,
    /// Keep one audit event in `sample_every` (0 or 1: every event).
    pub sample_every: u32,
    /// Audit events per second and CPU (0: unlimited).
    pub rate_per_sec: u32,
    /// Token bucket depth of the rate limit.
    pub burst: u32,
}

impl Default for ContainerConfig {
    fn default() -> Self {
        ContainerConfig {
            account: true,
            policy: true,
            audit_denials: true,
            audit_connects: false,
            count_at_interfaces: false,
            refuse_packet_sockets: false,
            judge_at_interfaces: false,
            sample_every: 1,
            rate_per_sec: 100,
            burst: 200,
        }
    }
}

/// An IPv4 or IPv6 network, e.g. `10.0.0.0/8`, `fd00::/8`, or a single address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl FromStr for Cidr {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = |reason| Error::Cidr {
            value: s.to_string(),
            reason,
        };
        let s_trim = s.trim();
        let (ip, prefix) = match s_trim.split_once('/') {
            Some((ip, p)) => (ip, Some(p)),
            None => (s_trim, None),
        };
        let addr: IpAddr = ip.parse().map_err(|_| bad("not an IPv4 or IPv6 address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| bad("prefix length out of range"))?,
        };
        let cidr = Cidr { addr, prefix };
        if cidr.network() != addr {
            return Err(bad("has host bits set beyond the prefix length"));
        }
        Ok(cidr)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Cidr {
    /// Whether every address of `other` is in this network (same family, a prefix no
    /// longer than `other`'s, and `other`'s network inside this one).
    pub fn contains(&self, other: &Cidr) -> bool {
        self.addr.is_ipv4() == other.addr.is_ipv4()
            && self.prefix <= other.prefix
            && Cidr {
                addr: other.addr,
                prefix: self.prefix,
            }
            .network()
                == self.addr
    }

    fn network(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(a) => {
                let bits = u32::from(a);
                let mask = if self.prefix == 0 {
                    0
                } else {
                    u32::MAX << (32 - self.prefix)
                };
                IpAddr::V4(Ipv4Addr::from(bits & mask))
            }
            IpAddr::V6(a) => {
                let bits = u128::from(a);
                let mask = if self.prefix == 0 {
                    0
                } else {
                    u128::MAX << (128 - self.prefix)
                };
                IpAddr::V6(Ipv6Addr::from(bits & mask))
            }
        }
    }
}

/// Who a container is to Kubernetes, from the annotations of containerd's CRI plugin.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct K8sNames {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub pod: String,
    /// The container's name; empty for the pod's sandbox.
    pub container: String,
}

/// Who a tracked cgroup is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub namespace: String,
    pub id: String,
    /// When the container was attached (CLOCK_REALTIME, nanoseconds).
    pub attached_ns: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_contains() {
        let c = |s: &str| s.parse::<Cidr>().unwrap();
        assert!(c("10.0.0.0/8").contains(&c("10.1.2.3")));
        assert!(c("10.0.0.0/8").contains(&c("10.1.0.0/16")));
        assert!(c("10.0.0.0/8").contains(&c("10.0.0.0/8")));
        assert!(!c("10.1.0.0/16").contains(&c("10.0.0.0/8")));
        assert!(!c("10.0.0.0/8").contains(&c("11.0.0.1")));
        assert!(c("0.0.0.0/0").contains(&c("192.0.2.1")));
        assert!(!c("0.0.0.0/0").contains(&c("::1")));
        assert!(!c("::/0").contains(&c("10.0.0.1")));
        assert!(c("fd00::/8").contains(&c("fd12::1")));
        assert!(!c("fd00::/8").contains(&c("fe80::1")));
    }

    #[test]
    fn cidr_parse() {
        let c: Cidr = "10.0.0.0/8".parse().unwrap();
        assert_eq!(c.to_string(), "10.0.0.0/8");
        assert_eq!("127.0.0.2".parse::<Cidr>().unwrap().prefix, 32);
        assert_eq!("::1".parse::<Cidr>().unwrap().prefix, 128);
        assert_eq!("fd00::/8".parse::<Cidr>().unwrap().to_string(), "fd00::/8");
        assert_eq!("0.0.0.0/0".parse::<Cidr>().unwrap().prefix, 0);
        for (bad, why) in [
            ("10.0.0.1/8", "host bits"),
            ("10.0.0.0/33", "out of range"),
            ("banana", "not an IPv4"),
            ("::/129", "out of range"),
            ("10.0.0.0/", "out of range"),
        ] {
            let e = bad.parse::<Cidr>().unwrap_err().to_string();
            assert!(e.contains(why) && e.contains(bad), "{bad}: {e}");
        }
    }
}
