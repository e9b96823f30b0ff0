//! Plain Rust mirrors of the broker API's messages: what tetherd's backend returns, what
//! the client hands to its callers, what the shim reports for a deleted container and what
//! tetherctl prints as JSON. Conversions to and from the protobuf types live in `convert`.

use serde::{Deserialize, Serialize};

/// A pinned program or map of one object version.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjInfo {
    pub name: String,
    /// Kernel object id.
    pub id: u32,
    /// Its pin path in bpffs.
    pub pin: String,
    /// Program type (e.g. `cgroup_skb`) or map type (e.g. `percpu_hash`).
    pub kind: String,
}

/// The pins of one object version, ready to be opened by a shim.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Acquired {
    pub version: String,
    pub pin_dir: String,
    pub programs: Vec<ObjInfo>,
    pub maps: Vec<ObjInfo>,
}

/// An Acquire answer: the pins, and whether this very call loaded them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcquireReply {
    #[serde(flatten)]
    pub acquired: Acquired,
    pub loaded_now: bool,
}

/// One object version found under the pin root.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionInfo {
    pub version: String,
    pub pin_dir: String,
    pub programs: Vec<ObjInfo>,
    pub maps: Vec<ObjInfo>,
    /// Containers attached with this version.
    pub containers: u32,
    /// Why the pin directory failed validation; `None` if it is sound.
    pub problem: Option<String>,
    /// How full the per-container maps are (empty when the version has a problem).
    #[serde(default)]
    pub usage: Vec<MapUsage>,
}

/// How many entries a per-container map holds, of how many it can.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapUsage {
    pub map: String,
    pub entries: u64,
    pub max_entries: u64,
    /// Whether a full map refuses new containers (`tc_slots` does not: an interface
    /// without a free slot is counted through `tc_ifaces`).
    #[serde(default)]
    pub refuses_when_full: bool,
}

impl MapUsage {
    /// At or above this share of `max_entries` a map is reported as nearly full.
    pub const NEARLY_FULL_PERCENT: u64 = 90;

    /// At least [`Self::NEARLY_FULL_PERCENT`] full, in a map whose filling up refuses new
    /// containers.
    pub fn nearly_full(&self) -> bool {
        self.refuses_when_full
            && self.max_entries > 0
            && u128::from(self.entries) * 100
                >= u128::from(self.max_entries) * u128::from(Self::NEARLY_FULL_PERCENT)
    }
}

/// One attachment of a container.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachmentInfo {
    pub program: String,
    /// `cgroup`, `tcx` or `clsact`.
    pub kind: String,
    /// `cgroup:<path>` or `netns:<cookie>/<ifname>`.
    pub target: String,
    pub link_id: u32,
    pub prog_id: u32,
}

/// Who a container is to Kubernetes, from the annotations of containerd's CRI plugin.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubernetesNames {
    /// The pod's namespace.
    pub namespace: String,
    pub pod: String,
    /// The container's name; empty for the pod's sandbox.
    pub container: String,
}

/// A container with entries in the shared maps.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerInfo {
    pub id: String,
    pub namespace: String,
    pub cgroup_id: u64,
    pub version: String,
    pub attachments: Vec<AttachmentInfo>,
    /// The container's cgroup is gone; garbage collection will remove it.
    pub stale: bool,
    /// `None` for a container that is not in a Kubernetes pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<KubernetesNames>,
}

/// Traffic and policy counters, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub drops: u64,
    pub denials: u64,
    pub events_lost: u64,
}

impl Counters {
    /// Adds `other` field by field (wrapping, as the kernel's counters do).
    pub fn add(&mut self, other: &Counters) {
        self.rx_packets = self.rx_packets.wrapping_add(other.rx_packets);
        self.rx_bytes = self.rx_bytes.wrapping_add(other.rx_bytes);
        self.tx_packets = self.tx_packets.wrapping_add(other.tx_packets);
        self.tx_bytes = self.tx_bytes.wrapping_add(other.tx_bytes);
        self.drops = self.drops.wrapping_add(other.drops);
        self.denials = self.denials.wrapping_add(other.denials);
        self.events_lost = self.events_lost.wrapping_add(other.events_lost);
    }
}

/// Counters of one interface in a container's netns.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfaceStatsInfo {
    pub name: String,
    pub ifindex: u32,
    pub netns_cookie: u64,
    pub counters: Counters,
}

impl InterfaceStatsInfo {
    /// The counters of interface `ifindex` of the netns with cookie `netns_cookie`, named
    /// `if<ifindex>` (the reader is not in that netns and cannot see the name).
    pub fn new(ifindex: u32, netns_cookie: u64, counters: Counters) -> Self {
        InterfaceStatsInfo {
            name: format!("if{ifindex}"),
            ifindex,
            netns_cookie,
            counters,
        }
    }
}

/// Counters of one container: its cgroup, each interface, and the total.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerStatsInfo {
    pub id: String,
    pub namespace: String,
    pub cgroup_id: u64,
    pub cgroup: Counters,
    pub interfaces: Vec<InterfaceStatsInfo>,
    pub total: Counters,
    /// The container was deleted: these are its final counters, kept by tetherd for a
    /// while after the shim retired it.
    #[serde(default)]
    pub deleted: bool,
    /// When tetherd received the retirement (CLOCK_REALTIME nanoseconds); 0 if not deleted.
    #[serde(default)]
    pub deleted_at_unix_ns: u64,
    /// Where packets and bytes are counted: [`COUNTED_AT_CGROUP`] (the cgroup, loopback
    /// included; the interfaces count theirs too) or [`COUNTED_AT_INTERFACES`] (the
    /// interfaces but lo; the cgroup counts drops and denials only). The total's packets and
    /// bytes are that layer's. Empty from a tetherd that did not say.
    #[serde(default)]
    pub counted_at: String,
    /// `None` for a container that is not in a Kubernetes pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<KubernetesNames>,
}

/// [`ContainerStatsInfo::counted_at`] of a container counted at its cgroup.
pub const COUNTED_AT_CGROUP: &str = "cgroup";
/// [`ContainerStatsInfo::counted_at`] of a container counted at its interfaces.
pub const COUNTED_AT_INTERFACES: &str = "interfaces";

impl ContainerStatsInfo {
    /// A live container's statistics from its cgroup counters and its interfaces' counters.
    /// The total takes the cgroup's counters and adds what only TC sees: its packet-level
    /// drops and the audit events it could not send; and, for a container counted at its
    /// interfaces (`count_at_interfaces`: its cgroup counts no packets), their packets and
    /// bytes. Otherwise both layers count packets and bytes and the cgroup's are the total.
    pub fn from_counters(
        namespace: &str,
        id: &str,
        cgroup_id: u64,
        cgroup: Counters,
        interfaces: Vec<InterfaceStatsInfo>,
        count_at_interfaces: bool,
    ) -> Self {
        let mut total = cgroup;
        for c in interfaces.iter().map(|i| &i.counters) {
            total.drops = total.drops.wrapping_add(c.drops);
            total.events_lost = total.events_lost.wrapping_add(c.events_lost);
            if count_at_interfaces {
                total.rx_packets = total.rx_packets.wrapping_add(c.rx_packets);
                total.rx_bytes = total.rx_bytes.wrapping_add(c.rx_bytes);
                total.tx_packets = total.tx_packets.wrapping_add(c.tx_packets);
                total.tx_bytes = total.tx_bytes.wrapping_add(c.tx_bytes);
            }
        }
        ContainerStatsInfo {
            id: id.to_string(),
            namespace: namespace.to_string(),
            cgroup_id,
            cgroup,
            interfaces,
            total,
            deleted: false,
            deleted_at_unix_ns: 0,
            counted_at: if count_at_interfaces {
                COUNTED_AT_INTERFACES
            } else {
                COUNTED_AT_CGROUP
            }
            .to_string(),
            kubernetes: None,
        }
    }
}

/// What a garbage collection removed (or would remove, on a dry run).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcReport {
    pub removed_containers: Vec<String>,
    pub removed_versions: Vec<String>,
    pub removed_map_entries: u32,
}

/// One audit event (a denial, or another policy event), as written to the audit log,
/// one JSON object per line.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// CLOCK_REALTIME nanoseconds.
    pub ts_ns: u64,
    /// containerd container id.
    pub id: String,
    pub namespace: String,
    pub cgroup_id: u64,
    /// e.g. `deny_connect`, `deny_packet`.
    pub kind: String,
    /// `ipv4` or `ipv6`.
    pub family: String,
    /// e.g. `tcp`, `udp`, or the protocol number.
    pub protocol: String,
    pub daddr: String,
    pub dport: u16,
    pub pid: u32,
    pub ifindex: u32,
    /// Who the container is to Kubernetes; `None` outside a pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<KubernetesNames>,
}

/// tetherd's state as reported by Status.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusInfo {
    /// The object version this tetherd carries.
    pub version: String,
    pub pin_root: String,
    pub versions: Vec<VersionInfo>,
    pub loads: u64,
    pub acquires: u64,
    pub pid: u32,
    pub uptime_seconds: u64,
    pub audit_log: String,
    /// `off`, `unix:<path>` or `<ip>:<port>`.
    pub metrics: String,
    pub netns_cookie_mode: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_add() {
        let mut a = Counters {
            rx_packets: 1,
            rx_bytes: 10,
            events_lost: u64::MAX,
            ..Default::default()
        };
        a.add(&Counters {
            rx_packets: 2,
            rx_bytes: 5,
            drops: 3,
            events_lost: 2,
            ..Default::default()
        });
        assert_eq!(
            (a.rx_packets, a.rx_bytes, a.drops, a.events_lost),
            (3, 15, 3, 1)
        );
    }

    #[test]
    fn totals_take_packets_from_the_cgroup_and_add_what_only_tc_sees() {
        let cg = Counters {
            tx_packets: 10,
            tx_bytes: 1000,
            drops: 1,
            denials: 2,
            events_lost: 3,
            ..Default::default()
        };
        let iface = Counters {
            tx_packets: 12,
            tx_bytes: 1100,
            drops: 4,
            events_lost: 5,
            ..Default::default()
        };
        let iface = InterfaceStatsInfo::new(2, 9, iface);
        let s = ContainerStatsInfo::from_counters("default", "web", 7, cg, vec![iface], false);
        let t = s.total;
        assert_eq!((t.tx_packets, t.tx_bytes), (10, 1000));
        assert_eq!((t.drops, t.denials, t.events_lost), (5, 2, 8));
        assert_eq!(s.interfaces[0].name, "if2");
        assert_eq!(s.interfaces[0].counters.tx_packets, 12);
        assert_eq!(s.counted_at, COUNTED_AT_CGROUP);
    }

    #[test]
    fn totals_of_a_container_counted_at_its_interfaces_take_their_packets() {
        // The cgroup counts drops and denials only; two interfaces count packets.
        let cg = Counters {
            drops: 1,
            denials: 2,
            ..Default::default()
        };
        let eth0 = Counters {
            rx_packets: 3,
            rx_bytes: 300,
            tx_packets: 4,
            tx_bytes: 400,
            drops: 1,
            ..Default::default()
        };
        let eth1 = Counters {
            rx_packets: 5,
            rx_bytes: 500,
            tx_packets: 6,
            tx_bytes: 600,
            events_lost: 7,
            ..Default::default()
        };
        let ifaces = vec![
            InterfaceStatsInfo::new(2, 9, eth0),
            InterfaceStatsInfo::new(3, 9, eth1),
        ];
        let s = ContainerStatsInfo::from_counters("default", "web", 7, cg, ifaces, true);
        let t = s.total;
        assert_eq!((t.rx_packets, t.rx_bytes), (8, 800));
        assert_eq!((t.tx_packets, t.tx_bytes), (10, 1000));
        assert_eq!((t.drops, t.denials, t.events_lost), (2, 2, 7));
        assert_eq!(s.counted_at, COUNTED_AT_INTERFACES);
    }

    #[test]
    fn stats_json_without_deleted_fields_parses() {
        // What a tether-broker from before Retire serialized.
        let old = r#"{"id":"a","namespace":"default","cgroup_id":7,
            "cgroup":{"rx_packets":0,"rx_bytes":0,"tx_packets":0,"tx_bytes":0,"drops":0,"denials":0,"events_lost":0},
            "interfaces":[],
            "total":{"rx_packets":1,"rx_bytes":0,"tx_packets":0,"tx_bytes":0,"drops":0,"denials":0,"events_lost":0}}"#;
        let s: ContainerStatsInfo = serde_json::from_str(old).unwrap();
        assert_eq!((s.id.as_str(), s.total.rx_packets), ("a", 1));
        assert!(!s.deleted);
        assert_eq!(s.deleted_at_unix_ns, 0);
    }

    #[test]
    fn nearly_full_from_ninety_percent_of_maps_that_refuse() {
        let u = |map: &str, entries, max_entries| MapUsage {
            map: map.into(),
            entries,
            max_entries,
            refuses_when_full: map != "tc_slots",
        };
        assert!(!u("cgroups", 89, 100).nearly_full());
        assert!(u("cgroups", 90, 100).nearly_full());
        assert!(u("deny4", u64::MAX, u64::MAX).nearly_full());
        assert!(!u("deny4", 0, 0).nearly_full());
        // A full slot array sends interfaces to tc_ifaces; nothing is refused.
        assert!(!u("tc_slots", 1024, 1024).nearly_full());
    }
}
