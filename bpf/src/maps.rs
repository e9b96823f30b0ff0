//! Typed access to tether's shared maps. The `repr(C)` types here mirror `src/bpf/tether.h`;
//! the tests compare their sizes with the BTF types of the built object.
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsFd, OwnedFd};
use std::str::FromStr;

use crate::error::{Error, Result};
use crate::programs::Prog;
use crate::sys::{self, as_bytes, from_bytes, Pod};

const F_ACCOUNT: u32 = 1;
const F_POLICY: u32 = 2;
const F_AUDIT_DENY: u32 = 4;
const F_AUDIT_CONNECT: u32 = 8;
const F_COUNT_AT_IFACES: u32 = 16;

#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RawContainer {
    pub flags: u32,
    pub sample_every: u32,
    pub rate_per_sec: u32,
    pub burst: u32,
}
// SAFETY: repr(C), four u32 fields, no padding.
unsafe impl Pod for RawContainer {}

#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct RawIdentity {
    pub ns: [u8; 80],
    pub id: [u8; 96],
    pub attached_ns: u64,
}
impl Default for RawIdentity {
    fn default() -> Self {
        RawIdentity {
            ns: [0; 80],
            id: [0; 96],
            attached_ns: 0,
        }
    }
}
// SAFETY: repr(C), byte arrays (176 bytes) then a u64 at offset 176: no padding.
unsafe impl Pod for RawIdentity {}

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
    fn sum<'a>(cpus: impl IntoIterator<Item = &'a Counters>) -> Counters {
        let mut total = Counters::default();
        for c in cpus {
            total.add(c);
        }
        total
    }
}

/// A tracked cgroup's value in the per-CPU `cgroups` map (`struct tether_cgroup`).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct RawCgroup {
    pub config: RawContainer,
    pub cgroup_id: u64,
    pub counters: Counters,
}
// SAFETY: repr(C): 16 bytes of u32s then eight u64s at offset 16: no padding.
unsafe impl Pod for RawCgroup {}

impl RawCgroup {
    fn new(cgroup_id: u64, config: &ContainerConfig) -> Self {
        RawCgroup {
            config: config.raw(),
            cgroup_id,
            counters: Counters::default(),
        }
    }
}

/// A tracked interface's value in the per-CPU `tc_ifaces` map (`struct tether_iface`).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct RawIface {
    pub cgroup_id: u64,
    pub flags: u32,
    pub pad: u32,
    pub counters: Counters,
}
// SAFETY: repr(C): a u64, two u32s, seven u64s: no padding.
unsafe impl Pod for RawIface {}

/// The number of slots of `tc_slots`, the TC programs' fast path (`TETHER_TC_SLOTS`).
pub const TC_SLOTS: u32 = 1 << TC_SLOT_BITS;
const TC_SLOT_BITS: u32 = 10;

/// The slot of an interface in `tc_slots`: the mirror of `tether_tc_slot_of` in tether.h
/// (the TC program tests fail if the two differ).
pub fn tc_slot_of(key: IfKey) -> u32 {
    let x = key.netns_cookie ^ (u64::from(key.ifindex) << 32);
    (x.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - TC_SLOT_BITS)) as u32
}

/// An interface's entry in the per-CPU array `tc_slots` (`struct tether_tc_slot`); all
/// zero when the slot is free.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct RawTcSlot {
    pub key: IfKey,
    pub iface: RawIface,
}
// SAFETY: repr(C): two repr(C) structs of 16 and 72 bytes, both 8-aligned: no padding.
unsafe impl Pod for RawTcSlot {}

/// Who holds a slot of `tc_slots` (`struct tether_tc_owner`, the value of `tc_owners`).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct RawTcOwner {
    pub key: IfKey,
    pub cgroup_id: u64,
}
// SAFETY: repr(C): a 16-byte repr(C) struct and a u64: no padding.
unsafe impl Pod for RawTcOwner {}

/// An interface inside a network namespace: the TC programs' key.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IfKey {
    /// The namespace's cookie (0 on kernels whose TC programs cannot read it).
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

#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Deny4Key {
    pub prefixlen: u32,
    pub cgroup_lo: u32,
    pub cgroup_hi: u32,
    pub addr: [u8; 4],
}
// SAFETY: repr(C), three u32 and four bytes: no padding.
unsafe impl Pod for Deny4Key {}

#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Deny6Key {
    pub prefixlen: u32,
    pub cgroup_lo: u32,
    pub cgroup_hi: u32,
    pub addr: [u8; 16],
}
// SAFETY: repr(C), three u32 and sixteen bytes: no padding.
unsafe impl Pod for Deny6Key {}

#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct RawEvent {
    pub ts_ns: u64,
    pub cgroup_id: u64,
    pub kind: u32,
    pub pid: u32,
    pub family: u16,
    pub protocol: u16,
    pub dport: u16,
    pub pad: u16,
    pub ifindex: u32,
    pub daddr: [u8; 16],
    pub pad2: u32,
}
// SAFETY: repr(C): 8+8+4+4+2+2+2+2+4+16+4 = 56 bytes, a multiple of 8: no padding.
unsafe impl Pod for RawEvent {}

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
            sample_every: 1,
            rate_per_sec: 100,
            burst: 200,
        }
    }
}

impl ContainerConfig {
    /// Whether a container with this config needs program `p` attached: a program with
    /// nothing to do for it costs every packet (or connect()) a run and its cgroup link costs
    /// the attach step a wait on the kernel's cgroup lock, so only what does work is attached.
    /// The config is fixed for the container's life.
    pub fn uses(&self, p: Prog) -> bool {
        let at_cgroup = self.account && !self.count_at_interfaces;
        match p {
            Prog::CgroupIngress => at_cgroup,
            Prog::CgroupEgress => at_cgroup || self.policy,
            Prog::TcIngress | Prog::TcEgress => self.account || self.policy,
            // connect() is where TCP sockets are vetted and connections audited.
            Prog::Connect6 => self.policy || self.audit_connects,
            // A container counted at its interfaces alone still needs one cgroup link: the
            // link ties its pins to its cgroup's life (garbage collection, `ps` and the
            // "attached already" check read cgroup links). connect4 runs once per connect(),
            // not per packet, and does nothing for such a container.
            Prog::Connect4 => {
                self.policy || self.audit_connects || (self.account && self.count_at_interfaces)
            }
            Prog::Sendmsg4 | Prog::Sendmsg6 => self.policy,
        }
    }

    fn raw(&self) -> RawContainer {
        let mut flags = 0;
        for (on, f) in [
            (self.account, F_ACCOUNT),
            (self.policy, F_POLICY),
            (self.audit_denials, F_AUDIT_DENY),
            (self.audit_connects, F_AUDIT_CONNECT),
            (self.count_at_interfaces, F_COUNT_AT_IFACES),
        ] {
            if on {
                flags |= f;
            }
        }
        RawContainer {
            flags,
            sample_every: self.sample_every,
            rate_per_sec: self.rate_per_sec,
            burst: self.burst,
        }
    }

    fn from_raw(r: &RawContainer) -> Self {
        ContainerConfig {
            account: r.flags & F_ACCOUNT != 0,
            policy: r.flags & F_POLICY != 0,
            audit_denials: r.flags & F_AUDIT_DENY != 0,
            audit_connects: r.flags & F_AUDIT_CONNECT != 0,
            count_at_interfaces: r.flags & F_COUNT_AT_IFACES != 0,
            sample_every: r.sample_every,
            rate_per_sec: r.rate_per_sec,
            burst: r.burst,
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

/// Who a tracked cgroup is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub namespace: String,
    pub id: String,
    /// When the container was attached (CLOCK_REALTIME, nanoseconds).
    pub attached_ns: u64,
}

fn c_string(raw: &[u8]) -> String {
    let end = raw.iter().position(|b| *b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

/// One opened map: its fd and the name used in errors.
#[derive(Debug)]
pub(crate) struct MapFd {
    pub name: &'static str,
    pub fd: OwnedFd,
    pub max_entries: u32,
}

impl MapFd {
    fn update<K: Pod, V: Pod>(&self, key: &K, value: &V) -> Result<()> {
        self.update_bytes(as_bytes(key), as_bytes(value))
    }

    /// Adds an entry only if its key is absent (BPF_NOEXIST): Ok(false) when it is there.
    fn insert<K: Pod, V: Pod>(&self, key: &K, value: &V) -> Result<bool> {
        match self.update_flags(
            as_bytes(key),
            as_bytes(value),
            libbpf_sys::BPF_NOEXIST.into(),
        ) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(false),
            other => other.map(|()| true),
        }
    }

    fn update_bytes(&self, key: &[u8], value: &[u8]) -> Result<()> {
        self.update_flags(key, value, libbpf_sys::BPF_ANY.into())
    }

    fn update_flags(&self, key: &[u8], value: &[u8], flags: u64) -> Result<()> {
        sys::map_update(self.fd.as_fd(), key, value, flags).map_err(|e| match e.raw_os_error() {
            Some(libc::E2BIG) | Some(libc::ENOSPC) => Error::MapFull {
                map: self.name,
                max_entries: self.max_entries,
            },
            _ => e,
        })
    }

    /// Per-CPU maps: one value per possible CPU, each at an 8-byte aligned stride.
    fn update_percpu<K: Pod, V: Pod>(&self, key: &K, value: &V, ncpus: usize) -> Result<()> {
        let stride = std::mem::size_of::<V>().next_multiple_of(8);
        let mut buf = vec![0u8; stride * ncpus];
        for cpu in buf.chunks_exact_mut(stride) {
            cpu[..std::mem::size_of::<V>()].copy_from_slice(as_bytes(value));
        }
        self.update_bytes(as_bytes(key), &buf)
    }

    /// Every CPU's value of a per-CPU map's entry.
    fn lookup_percpu<K: Pod, V: Pod>(&self, key: &K, ncpus: usize) -> Result<Option<Vec<V>>> {
        let stride = std::mem::size_of::<V>().next_multiple_of(8);
        let mut buf = vec![0u8; stride * ncpus];
        if !sys::map_lookup(self.fd.as_fd(), as_bytes(key), &mut buf)? {
            return Ok(None);
        }
        Ok(Some(
            buf.chunks_exact(stride)
                .filter_map(|cpu| from_bytes::<V>(&cpu[..std::mem::size_of::<V>()]))
                .collect(),
        ))
    }

    fn lookup<K: Pod, V: Pod>(&self, key: &K) -> Result<Option<V>> {
        let mut buf = vec![0u8; std::mem::size_of::<V>()];
        if sys::map_lookup(self.fd.as_fd(), as_bytes(key), &mut buf)? {
            Ok(from_bytes(&buf))
        } else {
            Ok(None)
        }
    }

    fn delete<K: Pod>(&self, key: &K) -> Result<bool> {
        sys::map_delete(self.fd.as_fd(), as_bytes(key))
    }

    fn keys<K: Pod>(&self) -> Result<Vec<K>> {
        let mut out = Vec::new();
        let mut next = K::default();
        let mut cur: Option<K> = None;
        loop {
            let mut buf = vec![0u8; std::mem::size_of::<K>()];
            let more =
                sys::map_next_key(self.fd.as_fd(), cur.as_ref().map(|k| as_bytes(k)), &mut buf)?;
            if !more {
                return Ok(out);
            }
            next = from_bytes(&buf).unwrap_or(next);
            out.push(next);
            cur = Some(next);
        }
    }
}

/// How full one per-container map is ([`Maps::occupancy`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Occupancy {
    pub name: &'static str,
    pub entries: usize,
    pub max_entries: u32,
    /// Whether a full map refuses new entries (and so new containers), rather than
    /// sending them elsewhere.
    pub refuses_when_full: bool,
}

/// The shared maps of one object version.
#[derive(Debug)]
pub struct Maps {
    pub(crate) cgroups: MapFd,
    /// Per-cgroup local storage of the cgroup programs: made by the kernel when the first
    /// of them is attached to a cgroup, freed with the cgroup.
    pub(crate) cg_local: MapFd,
    pub(crate) identities: MapFd,
    /// The TC programs' fast path: an array slot per interface (see `tc_slots` in
    /// tether.bpf.c); `tc_owners` says who holds which, `tc_ifaces` has the rest.
    pub(crate) tc_slots: MapFd,
    pub(crate) tc_owners: MapFd,
    pub(crate) tc_ifaces: MapFd,
    pub(crate) deny4: MapFd,
    pub(crate) deny6: MapFd,
    pub(crate) rates: MapFd,
    pub(crate) events: MapFd,
    pub(crate) ncpus: usize,
}

fn split(cgid: u64) -> (u32, u32) {
    (cgid as u32, (cgid >> 32) as u32)
}

impl Maps {
    /// Writes (or replaces) a container's configuration and identity; its counters start at
    /// zero.
    pub fn set_container(
        &self,
        cgroup_id: u64,
        config: &ContainerConfig,
        namespace: &str,
        id: &str,
    ) -> Result<()> {
        crate::pins::check_name("namespace", namespace)?;
        crate::pins::check_name("id", id)?;
        let mut ident = RawIdentity::default();
        ident.ns[..namespace.len()].copy_from_slice(namespace.as_bytes());
        ident.id[..id.len()].copy_from_slice(id.as_bytes());
        ident.attached_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        self.identities.update(&cgroup_id, &ident)?;
        // The config goes last: the programs act on a cgroup only once it is in `cgroups`.
        self.cgroups
            .update_percpu(&cgroup_id, &RawCgroup::new(cgroup_id, config), self.ncpus)
    }

    /// Writes a container's configuration into the local storage of its cgroup, which the
    /// kernel made when the first cgroup program was attached there: from here on the
    /// cgroup programs use it instead of `cgroups` (see `cg_local` in tether.bpf.c).
    /// Counters start at zero. Run it after [`Maps::set_container`] and the cgroup links.
    pub fn set_local(&self, cgroup_id: u64, config: &ContainerConfig) -> Result<()> {
        self.cg_local
            .update_percpu(&cgroup_id, &RawCgroup::new(cgroup_id, config), self.ncpus)
    }

    pub fn container_config(&self, cgroup_id: u64) -> Result<Option<ContainerConfig>> {
        Ok(self
            .cgroups
            .lookup_percpu::<u64, RawCgroup>(&cgroup_id, self.ncpus)?
            .and_then(|cpus| cpus.first().map(|r| ContainerConfig::from_raw(&r.config))))
    }

    /// Every tracked cgroup and who it is.
    pub fn identities(&self) -> Result<Vec<(u64, Identity)>> {
        let mut out = Vec::new();
        for cgid in self.identities.keys::<u64>()? {
            if let Some(raw) = self.identities.lookup::<u64, RawIdentity>(&cgid)? {
                out.push((
                    cgid,
                    Identity {
                        namespace: c_string(&raw.ns),
                        id: c_string(&raw.id),
                        attached_ns: raw.attached_ns,
                    },
                ));
            }
        }
        Ok(out)
    }

    /// The cgroup id of container `id` of `namespace`, if it is tracked.
    pub fn cgroup_of(&self, namespace: &str, id: &str) -> Result<Option<u64>> {
        Ok(self
            .identities()?
            .into_iter()
            .find(|(_, i)| i.namespace == namespace && i.id == id)
            .map(|(cg, _)| cg))
    }

    /// Adds a deny rule for a container's egress.
    pub fn add_deny(&self, cgroup_id: u64, cidr: &Cidr) -> Result<()> {
        let (lo, hi) = split(cgroup_id);
        let one = 1u32;
        match cidr.addr {
            IpAddr::V4(a) => self.deny4.update(
                &Deny4Key {
                    prefixlen: 64 + u32::from(cidr.prefix),
                    cgroup_lo: lo,
                    cgroup_hi: hi,
                    addr: a.octets(),
                },
                &one,
            ),
            IpAddr::V6(a) => self.deny6.update(
                &Deny6Key {
                    prefixlen: 64 + u32::from(cidr.prefix),
                    cgroup_lo: lo,
                    cgroup_hi: hi,
                    addr: a.octets(),
                },
                &one,
            ),
        }
    }

    /// A container's deny rules.
    pub fn deny_rules(&self, cgroup_id: u64) -> Result<Vec<Cidr>> {
        let (lo, hi) = split(cgroup_id);
        let mut out = Vec::new();
        for k in self.deny4.keys::<Deny4Key>()? {
            if (k.cgroup_lo, k.cgroup_hi) == (lo, hi) {
                out.push(Cidr {
                    addr: IpAddr::V4(Ipv4Addr::from(k.addr)),
                    prefix: (k.prefixlen - 64) as u8,
                });
            }
        }
        for k in self.deny6.keys::<Deny6Key>()? {
            if (k.cgroup_lo, k.cgroup_hi) == (lo, hi) {
                out.push(Cidr {
                    addr: IpAddr::V6(Ipv6Addr::from(k.addr)),
                    prefix: (k.prefixlen - 64) as u8,
                });
            }
        }
        Ok(out)
    }

    /// A container's cgroup counters, summed over CPUs and over `cgroups` and the cgroup's
    /// local storage (zero for an unknown cgroup). The local counters go with the cgroup.
    pub fn cgroup_counters(&self, cgroup_id: u64) -> Result<Counters> {
        self.cgroup_state(cgroup_id).map(|(_, c)| c)
    }

    /// A container's config (`None` for an unknown cgroup) and its cgroup counters, as
    /// [`Maps::container_config`] and [`Maps::cgroup_counters`] give them, from one read of
    /// its `cgroups` entry.
    pub fn cgroup_state(&self, cgroup_id: u64) -> Result<(Option<ContainerConfig>, Counters)> {
        let cpus = self
            .cgroups
            .lookup_percpu::<u64, RawCgroup>(&cgroup_id, self.ncpus)?;
        let config = cpus
            .as_deref()
            .and_then(<[RawCgroup]>::first)
            .map(|r| ContainerConfig::from_raw(&r.config));
        let mut total = cpus
            .map(|cpus| Counters::sum(cpus.iter().map(|c| &c.counters)))
            .unwrap_or_default();
        if let Some(local) = self.summed(&self.cg_local, cgroup_id)? {
            total.add(&local);
        }
        Ok((config, total))
    }

    /// A cgroup's counters in `map` (`cgroups` or `cg_local`), summed over CPUs.
    fn summed(&self, map: &MapFd, cgroup_id: u64) -> Result<Option<Counters>> {
        Ok(map
            .lookup_percpu::<u64, RawCgroup>(&cgroup_id, self.ncpus)?
            .map(|cpus| Counters::sum(cpus.iter().map(|c| &c.counters))))
    }

    /// The part of [`Maps::cgroup_counters`] counted in the cgroup's local storage, the
    /// cgroup programs' fast path (`None` while the cgroup has none).
    pub fn local_counters(&self, cgroup_id: u64) -> Result<Option<Counters>> {
        self.summed(&self.cg_local, cgroup_id)
    }

    /// Routes an interface's TC traffic to a container (whose entry must exist: its flags
    /// are copied); its counters start at zero, or stay if it is the container's already.
    /// The interface gets the slot of `tc_slots` its key hashes to if that slot is free (or
    /// already its own), else an entry in `tc_ifaces`; an interface already there stays
    /// there.
    pub fn set_iface(&self, key: IfKey, cgroup_id: u64) -> Result<()> {
        let flags = self
            .container_config(cgroup_id)?
            .map(|c| c.raw().flags)
            .ok_or(Error::Name {
                what: "cgroup",
                value: cgroup_id.to_string(),
                reason: "has no container entry: its interfaces cannot be tracked",
            })?;
        // Already this container's (an interface attached again after its ifindex was
        // taken by a new one): its counters stay, as a container's total may be theirs.
        if self.iface_owner(key)? == Some(cgroup_id) {
            return Ok(());
        }
        let iface = RawIface {
            cgroup_id,
            flags,
            pad: 0,
            counters: Counters::default(),
        };
        if self
            .tc_ifaces
            .lookup_percpu::<IfKey, RawIface>(&key, self.ncpus)?
            .is_none()
        {
            let slot = tc_slot_of(key);
            let owner = RawTcOwner { key, cgroup_id };
            // The claim is atomic: of two shims claiming one slot, one gets EEXIST.
            let claimed = self.tc_owners.insert(&slot, &owner)?;
            if claimed || self.slot_owner(slot)?.is_some_and(|o| o.key == key) {
                if !claimed {
                    self.tc_owners.update(&slot, &owner)?;
                }
                let written =
                    self.tc_slots
                        .update_percpu(&slot, &RawTcSlot { key, iface }, self.ncpus);
                if written.is_err() && claimed {
                    let _ = self.tc_owners.delete(&slot);
                }
                return written;
            }
        }
        self.tc_ifaces.update_percpu(&key, &iface, self.ncpus)
    }

    fn slot_owner(&self, slot: u32) -> Result<Option<RawTcOwner>> {
        self.tc_owners.lookup::<u32, RawTcOwner>(&slot)
    }

    /// The slot an interface holds, if it holds one.
    fn slot_of_iface(&self, key: IfKey) -> Result<Option<u32>> {
        let slot = tc_slot_of(key);
        Ok(self
            .slot_owner(slot)?
            .filter(|o| o.key == key)
            .map(|_| slot))
    }

    /// Every tracked interface and its container's cgroup id.
    pub fn ifaces(&self) -> Result<Vec<(IfKey, u64)>> {
        let mut out = Vec::new();
        for slot in self.tc_owners.keys::<u32>()? {
            if let Some(o) = self.slot_owner(slot)? {
                out.push((o.key, o.cgroup_id));
            }
        }
        for k in self.tc_ifaces.keys::<IfKey>()? {
            let cpus = self
                .tc_ifaces
                .lookup_percpu::<IfKey, RawIface>(&k, self.ncpus)?;
            if let Some(first) = cpus.as_deref().and_then(<[RawIface]>::first) {
                out.push((k, first.cgroup_id));
            }
        }
        Ok(out)
    }

    /// The container (cgroup id) an interface is routed to, if it is tracked: two lookups,
    /// where [`Maps::ifaces`] walks every tracked interface.
    pub fn iface_owner(&self, key: IfKey) -> Result<Option<u64>> {
        if let Some(o) = self.slot_owner(tc_slot_of(key))?.filter(|o| o.key == key) {
            return Ok(Some(o.cgroup_id));
        }
        Ok(self
            .tc_ifaces
            .lookup_percpu::<IfKey, RawIface>(&key, self.ncpus)?
            .as_deref()
            .and_then(<[RawIface]>::first)
            .map(|i| i.cgroup_id))
    }

    /// An interface's counters, summed over CPUs (zero for an unknown interface).
    pub fn iface_counters(&self, key: IfKey) -> Result<Counters> {
        if let Some(slot) = self.slot_of_iface(key)? {
            let cpus = self
                .tc_slots
                .lookup_percpu::<u32, RawTcSlot>(&slot, self.ncpus)?
                .unwrap_or_default();
            // A slot claimed but not written yet (or being freed) holds another key.
            return Ok(Counters::sum(
                cpus.iter()
                    .filter(|s| s.key == key)
                    .map(|s| &s.iface.counters),
            ));
        }
        Ok(Counters::sum(
            self.tc_ifaces
                .lookup_percpu::<IfKey, RawIface>(&key, self.ncpus)?
                .unwrap_or_default()
                .iter()
                .map(|c| &c.counters),
        ))
    }

    /// Forgets an interface (and its counters). A slot is cleared before it is given up,
    /// so the programs stop using it before another interface can claim it.
    pub fn remove_iface(&self, key: IfKey) -> Result<usize> {
        if let Some(slot) = self.slot_of_iface(key)? {
            self.tc_slots
                .update_percpu(&slot, &RawTcSlot::default(), self.ncpus)?;
            return Ok(self.tc_owners.delete(&slot)? as usize);
        }
        Ok(self.tc_ifaces.delete(&key)? as usize)
    }

    /// Removes every entry of a container from every map; returns how many were removed.
    /// Idempotent.
    pub fn remove_container(&self, cgroup_id: u64) -> Result<usize> {
        // Config (and counters) first: from here on the programs ignore the cgroup.
        let mut n = self.cgroups.delete(&cgroup_id)? as usize;
        for (k, cg) in self.ifaces()? {
            if cg == cgroup_id {
                n += self.remove_iface(k)?;
            }
        }
        let (lo, hi) = split(cgroup_id);
        for k in self.deny4.keys::<Deny4Key>()? {
            if (k.cgroup_lo, k.cgroup_hi) == (lo, hi) {
                n += self.deny4.delete(&k)? as usize;
            }
        }
        for k in self.deny6.keys::<Deny6Key>()? {
            if (k.cgroup_lo, k.cgroup_hi) == (lo, hi) {
                n += self.deny6.delete(&k)? as usize;
            }
        }
        n += self.rates.delete(&cgroup_id)? as usize;
        n += self.identities.delete(&cgroup_id)? as usize;
        Ok(n)
    }

    /// Every cgroup id with an entry in any per-container map (for garbage collection).
    pub fn known_cgroups(&self) -> Result<Vec<u64>> {
        let mut ids: Vec<u64> = self.cgroups.keys::<u64>()?;
        ids.extend(self.identities.keys::<u64>()?);
        ids.extend(self.rates.keys::<u64>()?);
        ids.extend(self.ifaces()?.into_iter().map(|(_, cg)| cg));
        ids.sort_unstable();
        ids.dedup();
        Ok(ids)
    }

    /// How many entries each per-container map holds, of how many it can.
    pub fn occupancy(&self) -> Result<Vec<Occupancy>> {
        let of = |map: &MapFd, entries: usize, refuses_when_full| Occupancy {
            name: map.name,
            entries,
            max_entries: map.max_entries,
            refuses_when_full,
        };
        Ok(vec![
            of(&self.cgroups, self.cgroups.keys::<u64>()?.len(), true),
            // Slots taken: an interface without a free slot goes to `tc_ifaces`.
            of(&self.tc_slots, self.tc_owners.keys::<u32>()?.len(), false),
            of(&self.tc_ifaces, self.tc_ifaces.keys::<IfKey>()?.len(), true),
            of(&self.deny4, self.deny4.keys::<Deny4Key>()?.len(), true),
            of(&self.deny6, self.deny6.keys::<Deny6Key>()?.len(), true),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn only_programs_with_work_are_used() {
        let used = |c: ContainerConfig| -> Vec<Prog> {
            Prog::ALL.into_iter().filter(|p| c.uses(*p)).collect()
        };
        let base = ContainerConfig {
            account: false,
            policy: false,
            audit_denials: true,
            audit_connects: false,
            ..ContainerConfig::default()
        };
        let account = ContainerConfig {
            account: true,
            ..base
        };
        assert_eq!(
            used(account),
            [
                Prog::CgroupIngress,
                Prog::CgroupEgress,
                Prog::TcIngress,
                Prog::TcEgress
            ]
        );
        let audit = ContainerConfig {
            audit_connects: true,
            ..account
        };
        assert_eq!(
            used(audit),
            [
                Prog::CgroupIngress,
                Prog::CgroupEgress,
                Prog::Connect4,
                Prog::Connect6,
                Prog::TcIngress,
                Prog::TcEgress
            ]
        );
        let policy = ContainerConfig {
            policy: true,
            ..base
        };
        assert_eq!(
            used(policy),
            Prog::ALL
                .into_iter()
                .filter(|p| *p != Prog::CgroupIngress)
                .collect::<Vec<_>>()
        );
        assert_eq!(used(ContainerConfig::default()), Prog::ALL);
        assert!(used(base).is_empty());
        // Counted at the interfaces: no cgroup_skb program, connect4 as the cgroup anchor.
        let at_ifaces = ContainerConfig {
            count_at_interfaces: true,
            ..account
        };
        assert_eq!(
            used(at_ifaces),
            [Prog::Connect4, Prog::TcIngress, Prog::TcEgress]
        );
        // ... and with a policy, cgroup egress for the packet-level drops.
        let with_policy = ContainerConfig {
            policy: true,
            ..at_ifaces
        };
        assert_eq!(
            used(with_policy),
            Prog::ALL
                .into_iter()
                .filter(|p| *p != Prog::CgroupIngress)
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn tc_slots_spread_sequential_cookies() {
        // Netns cookies come from a counter: consecutive namespaces must not collide.
        for ifindex in [1, 2, 7, 1000] {
            let mut slots: Vec<u32> = (1..=512)
                .map(|c| tc_slot_of(IfKey::new(c, ifindex)))
                .collect();
            assert!(slots.iter().all(|s| *s < TC_SLOTS));
            slots.sort_unstable();
            slots.dedup();
            assert_eq!(slots.len(), 512, "ifindex {ifindex}");
        }
        // Interfaces of one namespace spread too.
        let mut slots: Vec<u32> = (1..=64).map(|i| tc_slot_of(IfKey::new(77, i))).collect();
        slots.sort_unstable();
        slots.dedup();
        assert_eq!(slots.len(), 64);
    }

    #[test]
    fn config_flags_round_trip() {
        let c = ContainerConfig {
            account: true,
            policy: false,
            audit_denials: true,
            audit_connects: true,
            count_at_interfaces: true,
            sample_every: 3,
            rate_per_sec: 5,
            burst: 9,
        };
        assert_eq!(ContainerConfig::from_raw(&c.raw()), c);
    }

    #[test]
    fn layouts_match_the_object() {
        use crate::skel::types;
        use std::mem::size_of;
        assert_eq!(
            size_of::<RawContainer>(),
            size_of::<types::tether_container>()
        );
        assert_eq!(
            size_of::<RawIdentity>(),
            size_of::<types::tether_identity>()
        );
        assert_eq!(size_of::<Counters>(), size_of::<types::tether_counters>());
        assert_eq!(size_of::<RawCgroup>(), size_of::<types::tether_cgroup>());
        assert_eq!(size_of::<RawIface>(), size_of::<types::tether_iface>());
        assert_eq!(size_of::<IfKey>(), size_of::<types::tether_if_key>());
        assert_eq!(size_of::<RawTcSlot>(), size_of::<types::tether_tc_slot>());
        assert_eq!(size_of::<RawTcOwner>(), size_of::<types::tether_tc_owner>());
        assert_eq!(size_of::<Deny4Key>(), size_of::<types::tether_deny4_key>());
        assert_eq!(size_of::<Deny6Key>(), size_of::<types::tether_deny6_key>());
        // tether_event is not a map value, so the skeleton has no type for it; tether.h asserts 56.
        assert_eq!(size_of::<RawEvent>(), 56);
    }
}
