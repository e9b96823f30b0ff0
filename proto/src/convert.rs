//! Conversions between the plain types in `types` and the protobuf messages in `pb`, in
//! both directions (tetherd encodes, the client decodes).

use protobuf::MessageField;

use crate::pb;
use crate::types::*;

impl From<ObjInfo> for pb::Program {
    fn from(o: ObjInfo) -> Self {
        pb::Program {
            name: o.name,
            id: o.id,
            pin: o.pin,
            kind: o.kind,
            ..Default::default()
        }
    }
}

impl From<ObjInfo> for pb::Map {
    fn from(o: ObjInfo) -> Self {
        pb::Map {
            name: o.name,
            id: o.id,
            pin: o.pin,
            kind: o.kind,
            ..Default::default()
        }
    }
}

impl From<pb::Program> for ObjInfo {
    fn from(o: pb::Program) -> Self {
        ObjInfo {
            name: o.name,
            id: o.id,
            pin: o.pin,
            kind: o.kind,
        }
    }
}

impl From<pb::Map> for ObjInfo {
    fn from(o: pb::Map) -> Self {
        ObjInfo {
            name: o.name,
            id: o.id,
            pin: o.pin,
            kind: o.kind,
        }
    }
}

fn list<A, B: From<A>>(v: Vec<A>) -> Vec<B> {
    v.into_iter().map(B::from).collect()
}

impl From<AcquireReply> for pb::AcquireResponse {
    fn from(r: AcquireReply) -> Self {
        pb::AcquireResponse {
            version: r.acquired.version,
            pin_dir: r.acquired.pin_dir,
            programs: list(r.acquired.programs),
            maps: list(r.acquired.maps),
            loaded_now: r.loaded_now,
            ..Default::default()
        }
    }
}

impl From<pb::AcquireResponse> for AcquireReply {
    fn from(r: pb::AcquireResponse) -> Self {
        AcquireReply {
            acquired: Acquired {
                version: r.version,
                pin_dir: r.pin_dir,
                programs: list(r.programs),
                maps: list(r.maps),
            },
            loaded_now: r.loaded_now,
        }
    }
}

impl From<VersionInfo> for pb::VersionStatus {
    fn from(v: VersionInfo) -> Self {
        pb::VersionStatus {
            version: v.version,
            pin_dir: v.pin_dir,
            programs: list(v.programs),
            maps: list(v.maps),
            containers: v.containers,
            problem: v.problem.unwrap_or_default(),
            usage: list(v.usage),
            ..Default::default()
        }
    }
}

impl From<MapUsage> for pb::MapUsage {
    fn from(u: MapUsage) -> Self {
        pb::MapUsage {
            map: u.map,
            entries: u.entries,
            max_entries: u.max_entries,
            refuses_when_full: u.refuses_when_full,
            ..Default::default()
        }
    }
}

impl From<pb::MapUsage> for MapUsage {
    fn from(u: pb::MapUsage) -> Self {
        MapUsage {
            map: u.map,
            entries: u.entries,
            max_entries: u.max_entries,
            refuses_when_full: u.refuses_when_full,
        }
    }
}

impl From<pb::VersionStatus> for VersionInfo {
    fn from(v: pb::VersionStatus) -> Self {
        VersionInfo {
            version: v.version,
            pin_dir: v.pin_dir,
            programs: list(v.programs),
            maps: list(v.maps),
            containers: v.containers,
            problem: (!v.problem.is_empty()).then_some(v.problem),
            usage: list(v.usage),
        }
    }
}

impl From<StatusInfo> for pb::StatusResponse {
    fn from(s: StatusInfo) -> Self {
        pb::StatusResponse {
            version: s.version,
            pin_root: s.pin_root,
            versions: list(s.versions),
            loads: s.loads,
            acquires: s.acquires,
            pid: s.pid,
            uptime_seconds: s.uptime_seconds,
            audit_log: s.audit_log,
            metrics: s.metrics,
            netns_cookie_mode: s.netns_cookie_mode,
            ..Default::default()
        }
    }
}

impl From<pb::StatusResponse> for StatusInfo {
    fn from(s: pb::StatusResponse) -> Self {
        StatusInfo {
            version: s.version,
            pin_root: s.pin_root,
            versions: list(s.versions),
            loads: s.loads,
            acquires: s.acquires,
            pid: s.pid,
            uptime_seconds: s.uptime_seconds,
            audit_log: s.audit_log,
            metrics: s.metrics,
            netns_cookie_mode: s.netns_cookie_mode,
        }
    }
}

impl From<AttachmentInfo> for pb::Attachment {
    fn from(a: AttachmentInfo) -> Self {
        pb::Attachment {
            program: a.program,
            kind: a.kind,
            target: a.target,
            link_id: a.link_id,
            prog_id: a.prog_id,
            ..Default::default()
        }
    }
}

impl From<pb::Attachment> for AttachmentInfo {
    fn from(a: pb::Attachment) -> Self {
        AttachmentInfo {
            program: a.program,
            kind: a.kind,
            target: a.target,
            link_id: a.link_id,
            prog_id: a.prog_id,
        }
    }
}

impl From<ContainerInfo> for pb::Container {
    fn from(c: ContainerInfo) -> Self {
        pb::Container {
            id: c.id,
            namespace: c.namespace,
            cgroup_id: c.cgroup_id,
            version: c.version,
            attachments: list(c.attachments),
            stale: c.stale,
            kubernetes: names_in(c.kubernetes),
            ..Default::default()
        }
    }
}

impl From<pb::Container> for ContainerInfo {
    fn from(c: pb::Container) -> Self {
        ContainerInfo {
            id: c.id,
            namespace: c.namespace,
            cgroup_id: c.cgroup_id,
            version: c.version,
            attachments: list(c.attachments),
            stale: c.stale,
            kubernetes: names_out(&c.kubernetes),
        }
    }
}

impl From<Counters> for pb::Counters {
    fn from(c: Counters) -> Self {
        pb::Counters {
            rx_packets: c.rx_packets,
            rx_bytes: c.rx_bytes,
            tx_packets: c.tx_packets,
            tx_bytes: c.tx_bytes,
            drops: c.drops,
            denials: c.denials,
            events_lost: c.events_lost,
            ..Default::default()
        }
    }
}

impl From<&pb::Counters> for Counters {
    fn from(c: &pb::Counters) -> Self {
        Counters {
            rx_packets: c.rx_packets,
            rx_bytes: c.rx_bytes,
            tx_packets: c.tx_packets,
            tx_bytes: c.tx_bytes,
            drops: c.drops,
            denials: c.denials,
            events_lost: c.events_lost,
        }
    }
}

fn names_in(n: Option<KubernetesNames>) -> MessageField<pb::KubernetesNames> {
    MessageField::from_option(n.map(|n| pb::KubernetesNames {
        namespace: n.namespace,
        pod: n.pod,
        container: n.container,
        ..Default::default()
    }))
}

fn names_out(n: &MessageField<pb::KubernetesNames>) -> Option<KubernetesNames> {
    n.as_ref().map(|n| KubernetesNames {
        namespace: n.namespace.clone(),
        pod: n.pod.clone(),
        container: n.container.clone(),
    })
}

fn counters_in(c: Counters) -> MessageField<pb::Counters> {
    MessageField::some(c.into())
}

fn counters_out(c: &MessageField<pb::Counters>) -> Counters {
    c.as_ref().map(Counters::from).unwrap_or_default()
}

impl From<InterfaceStatsInfo> for pb::InterfaceStats {
    fn from(i: InterfaceStatsInfo) -> Self {
        pb::InterfaceStats {
            name: i.name,
            ifindex: i.ifindex,
            netns_cookie: i.netns_cookie,
            counters: counters_in(i.counters),
            ..Default::default()
        }
    }
}

impl From<pb::InterfaceStats> for InterfaceStatsInfo {
    fn from(i: pb::InterfaceStats) -> Self {
        InterfaceStatsInfo {
            counters: counters_out(&i.counters),
            name: i.name,
            ifindex: i.ifindex,
            netns_cookie: i.netns_cookie,
        }
    }
}

impl From<ContainerStatsInfo> for pb::ContainerStats {
    fn from(s: ContainerStatsInfo) -> Self {
        pb::ContainerStats {
            id: s.id,
            namespace: s.namespace,
            cgroup_id: s.cgroup_id,
            cgroup: counters_in(s.cgroup),
            interfaces: list(s.interfaces),
            total: counters_in(s.total),
            deleted: s.deleted,
            deleted_at_unix_ns: s.deleted_at_unix_ns,
            counted_at: s.counted_at,
            kubernetes: names_in(s.kubernetes),
            ..Default::default()
        }
    }
}

impl From<pb::ContainerStats> for ContainerStatsInfo {
    fn from(s: pb::ContainerStats) -> Self {
        ContainerStatsInfo {
            cgroup: counters_out(&s.cgroup),
            total: counters_out(&s.total),
            id: s.id,
            namespace: s.namespace,
            cgroup_id: s.cgroup_id,
            interfaces: list(s.interfaces),
            deleted: s.deleted,
            deleted_at_unix_ns: s.deleted_at_unix_ns,
            counted_at: s.counted_at,
            kubernetes: names_out(&s.kubernetes),
        }
    }
}

impl From<GcReport> for pb::GarbageCollectResponse {
    fn from(g: GcReport) -> Self {
        pb::GarbageCollectResponse {
            removed_containers: g.removed_containers,
            removed_versions: g.removed_versions,
            removed_map_entries: g.removed_map_entries,
            ..Default::default()
        }
    }
}

impl From<pb::GarbageCollectResponse> for GcReport {
    fn from(g: pb::GarbageCollectResponse) -> Self {
        GcReport {
            removed_containers: g.removed_containers,
            removed_versions: g.removed_versions,
            removed_map_entries: g.removed_map_entries,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_round_trip() {
        let c = Counters {
            rx_packets: 1,
            rx_bytes: 2,
            tx_packets: 3,
            tx_bytes: 4,
            drops: 5,
            denials: 6,
            events_lost: 7,
        };
        let s = ContainerStatsInfo {
            id: "abc".into(),
            namespace: "default".into(),
            cgroup_id: 42,
            cgroup: c,
            interfaces: vec![InterfaceStatsInfo {
                name: "eth0".into(),
                ifindex: 2,
                netns_cookie: 4096,
                counters: c,
            }],
            total: c,
            deleted: false,
            deleted_at_unix_ns: 0,
            counted_at: "interfaces".into(),
            kubernetes: None,
        };
        let back: ContainerStatsInfo = pb::ContainerStats::from(s.clone()).into();
        assert_eq!(back, s);
        let named = ContainerStatsInfo {
            kubernetes: Some(KubernetesNames {
                namespace: "shop".into(),
                pod: "web".into(),
                container: "nginx".into(),
            }),
            ..s.clone()
        };
        let back: ContainerStatsInfo = pb::ContainerStats::from(named.clone()).into();
        assert_eq!(back, named);

        let retired = ContainerStatsInfo {
            deleted: true,
            deleted_at_unix_ns: 1_700_000_000_123_456_789,
            ..s
        };
        let msg = pb::ContainerStats::from(retired.clone());
        assert!(msg.deleted);
        assert_eq!(msg.deleted_at_unix_ns, 1_700_000_000_123_456_789);
        // Through the wire format too, as the client sees it.
        let bytes = protobuf::Message::write_to_bytes(&pb::RetireRequest {
            stats: MessageField::some(msg),
            ..Default::default()
        })
        .unwrap();
        let req: pb::RetireRequest = protobuf::Message::parse_from_bytes(&bytes).unwrap();
        let back: ContainerStatsInfo = req.stats.unwrap().into();
        assert_eq!(back, retired);
    }

    #[test]
    fn empty_problem_is_none() {
        let v = VersionInfo {
            version: "v1".into(),
            problem: Some("missing prog".into()),
            usage: vec![MapUsage {
                map: "cgroups".into(),
                entries: 3,
                max_entries: 65536,
                refuses_when_full: true,
            }],
            ..Default::default()
        };
        let back: VersionInfo = pb::VersionStatus::from(v.clone()).into();
        assert_eq!(back, v);
        let ok: VersionInfo = pb::VersionStatus::default().into();
        assert_eq!(ok.problem, None);
    }
}
