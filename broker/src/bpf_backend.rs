//! The real backend: tetherd's view of tether-bpf. It loads and pins the object (the only
//! caller of `load_and_pin` on a node), opens the pins of every version under the pin root,
//! and reads containers, counters and audit events out of them.
use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tether_api::types::{
    Acquired, AttachmentInfo, AuditEvent, ContainerInfo, ContainerStatsInfo, Counters, GcReport,
    InterfaceStatsInfo, KubernetesNames, MapUsage, ObjInfo, VersionInfo,
};
use tether_bpf::events::EventReader;
use tether_bpf::{container, gc, programs, NetnsKey, PinLayout, Programs};

use crate::backend::Backend;
use crate::config::Config;
use crate::error::BackendError;

/// The API's counters of the kernel's (summed over CPUs), for the wire.
fn wire_counters(c: &tether_bpf::Counters) -> Counters {
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

/// Opens the backend over the configured pin root.
pub fn open(config: &Config) -> Result<Arc<dyn Backend>, BackendError> {
    Ok(Arc::new(BpfBackend::new(PinLayout::new(&config.pin_root))))
}

/// tetherd's backend over tether-bpf.
pub struct BpfBackend {
    layout: PinLayout,
}

impl From<tether_bpf::Error> for BackendError {
    fn from(e: tether_bpf::Error) -> Self {
        use tether_bpf::Error as E;
        match e {
            E::Syscall { call, source } => BackendError::Kernel { call, source },
            E::Path { op, path, source } => BackendError::Io {
                what: op,
                path,
                source,
            },
            E::Libbpf { what, source } => BackendError::Kernel {
                call: what,
                source: io::Error::other(source.to_string()),
            },
            E::NoBpffs { path, reason } => BackendError::Pins { path, reason },
            E::NotLoaded { version, dir } => BackendError::Pins {
                path: dir,
                reason: format!("version {version} is not pinned"),
            },
            E::Tampered { path, reason } => BackendError::Tampered { path, reason },
            E::MapFull { map, max_entries } => BackendError::MapFull {
                map: format!("{map} ({max_entries} entries)"),
            },
            other @ (E::Cidr { .. } | E::Name { .. } | E::Quota { .. }) => {
                BackendError::NotFound(other.to_string())
            }
        }
    }
}

impl BpfBackend {
    pub fn new(layout: PinLayout) -> Self {
        BpfBackend { layout }
    }

    fn acquired(&self, p: &Programs) -> Result<Acquired, BackendError> {
        let v = p.version();
        let programs = p
            .ids()
            .into_iter()
            .map(|(prog, id)| ObjInfo {
                name: prog.name().to_string(),
                id,
                pin: self.layout.prog(v, prog.name()).display().to_string(),
                kind: prog_kind(prog).to_string(),
            })
            .collect();
        let maps = p
            .map_ids(&self.layout)?
            .into_iter()
            .map(|(name, id, pin)| ObjInfo {
                name: name.to_string(),
                id,
                pin: pin.display().to_string(),
                kind: "map".into(),
            })
            .collect();
        Ok(Acquired {
            version: v.to_string(),
            pin_dir: self.layout.version_dir(v).display().to_string(),
            programs,
            maps,
        })
    }

    /// Every version under the pin root that opens cleanly.
    fn opened(&self) -> Result<Vec<Programs>, BackendError> {
        let mut out = Vec::new();
        for v in self.layout.versions()? {
            match Programs::open(&self.layout, &v) {
                Ok(p) => out.push(p),
                Err(e) => log::warn!("version {v}: {e}"),
            }
        }
        Ok(out)
    }

    /// Staging directories of loaders that are gone (killed mid-load).
    fn remove_dead_staging(&self) -> Result<(), BackendError> {
        for dir in self.layout.staging_dirs()? {
            let pid = dir
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.rsplit('-').next())
                .and_then(|p| p.parse::<u32>().ok());
            // This tetherd's own are loads in flight (single-flight per version: a load
            // never starts twice), left alone like another live tetherd's.
            let alive = pid.is_some_and(|p| Path::new(&format!("/proc/{p}")).exists());
            if !alive {
                log::info!("removing unfinished load {}", dir.display());
                std::fs::remove_dir_all(&dir).map_err(|source| BackendError::Io {
                    what: "remove",
                    path: dir.clone(),
                    source,
                })?;
            }
        }
        Ok(())
    }
}

fn prog_kind(p: tether_bpf::Prog) -> &'static str {
    use tether_bpf::Prog::*;
    match p {
        CgroupIngress | CgroupEgress => "cgroup_skb",
        Connect4 | Connect6 | Sendmsg4 | Sendmsg6 => "cgroup_sock_addr",
        Setsockopt => "cgroup_sockopt",
        TcIngress | TcEgress => "tc",
    }
}

/// The container's interfaces that carry the TC programs as clsact filters (kernels
/// without TCX): in the maps, but with no link pinned.
fn clsact_attachments(
    programs: &Programs,
    cgroup_id: u64,
    links: &[AttachmentInfo],
) -> Result<Vec<AttachmentInfo>, BackendError> {
    let ids = programs.ids();
    let prog_id = |want| {
        ids.iter()
            .find(|(p, _)| *p == want)
            .map_or(0, |(_, id)| *id)
    };
    let mut out = Vec::new();
    for (key, owner) in programs.maps().ifaces()? {
        let target = format!("ifindex:{}", key.ifindex);
        if owner != cgroup_id || links.iter().any(|a| a.target == target) {
            continue;
        }
        for (prog, name) in [
            (tether_bpf::Prog::TcIngress, "tether_tc_ingress"),
            (tether_bpf::Prog::TcEgress, "tether_tc_egress"),
        ] {
            out.push(AttachmentInfo {
                program: name.into(),
                kind: "clsact".into(),
                target: target.clone(),
                link_id: 0,
                prog_id: prog_id(prog),
            });
        }
    }
    Ok(out)
}

/// Attachment details from a pin name: `cgroup_<prog>` or `tc_<ifindex>_<direction>`.
/// A container's Kubernetes names from `programs`' maps. They only label what is reported:
/// a failed read is logged, not an error of the listing.
fn k8s_names(programs: &Programs, cgroup_id: u64) -> Option<KubernetesNames> {
    match programs.maps().k8s_names(cgroup_id) {
        Ok(n) => n.map(|n| KubernetesNames {
            namespace: n.namespace,
            pod: n.pod,
            container: n.container,
        }),
        Err(e) => {
            log::warn!("reading the Kubernetes names of cgroup {cgroup_id}: {e}");
            None
        }
    }
}

fn attachment(pin: &str, info: &tether_bpf::sys::LinkInfo) -> AttachmentInfo {
    if let Some(prog) = pin.strip_prefix("cgroup_") {
        AttachmentInfo {
            program: prog.to_string(),
            kind: "cgroup".into(),
            target: format!("cgroup:{}", info.cgroup_id),
            link_id: info.id,
            prog_id: info.prog_id,
        }
    } else {
        let dir = pin.rsplit('_').next().unwrap_or("");
        AttachmentInfo {
            program: format!("tether_tc_{dir}"),
            kind: "tcx".into(),
            target: format!("ifindex:{}", info.ifindex),
            link_id: info.id,
            prog_id: info.prog_id,
        }
    }
}

/// What the polling thread reads: every pinned version's ring (containers keep the version
/// they were attached with, so an upgrade leaves some on the old one).
struct Readers {
    /// The rings pinned when the reader was made (a version that does not open is left
    /// out of the reader, but counted here, so it is not retried at every poll).
    pinned: Vec<u32>,
    reader: Option<EventReader>,
    /// The versions read, in the reader's order.
    versions: Vec<Programs>,
}

thread_local! {
    /// The ring buffer readers of the thread that polls (they are not `Send`).
    static READERS: RefCell<Option<Readers>> = const { RefCell::new(None) };
}

impl Backend for BpfBackend {
    fn version(&self) -> String {
        tether_bpf::VERSION.to_string()
    }

    fn adopt(&self, version: &str) -> Result<Option<Acquired>, BackendError> {
        match Programs::open(&self.layout, version) {
            Ok(p) => Ok(Some(self.acquired(&p)?)),
            Err(tether_bpf::Error::NotLoaded { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn load(&self, version: &str) -> Result<Acquired, BackendError> {
        if version != tether_bpf::VERSION {
            return Err(BackendError::NotFound(format!(
                "object version {version} (this tetherd carries {})",
                tether_bpf::VERSION
            )));
        }
        self.layout.ensure_root()?;
        self.remove_dead_staging()?;
        let report = programs::load_and_pin(&self.layout, version)?;
        let verified = match report.verified_insns {
            0 => "the kernel does not report instructions verified".to_string(),
            n => format!("{n} instructions verified"),
        };
        log::info!(
            "loaded version {version} in {:?} ({verified}){}{}",
            report.load_time,
            match &report.lsm {
                programs::Lsm::Attached => "; LSM program attached: PACKET_QDISC_BYPASS refused \
                     to every caller under a policy"
                    .to_string(),
                programs::Lsm::Inactive => "; no BPF LSM: PACKET_QDISC_BYPASS refused to 64-bit \
                     callers only"
                    .to_string(),
                programs::Lsm::Failed(e) => format!(
                    "; the LSM program could not be loaded or attached ({e}): \
                     PACKET_QDISC_BYPASS refused to 64-bit callers only"
                ),
            },
            if report.lost_race {
                ", another loader was first"
            } else {
                ""
            }
        );
        let p = Programs::open(&self.layout, version)?;
        self.acquired(&p)
    }

    fn versions(&self) -> Result<Vec<VersionInfo>, BackendError> {
        let listed = container::list(&self.layout)?;
        let mut out = Vec::new();
        for v in self.layout.versions()? {
            let dir = self.layout.version_dir(&v).display().to_string();
            match Programs::open(&self.layout, &v) {
                Ok(p) => {
                    let ids: Vec<u32> = p.ids().into_iter().map(|(_, id)| id).collect();
                    let used = listed
                        .iter()
                        .filter(|c| c.links.iter().any(|(_, l)| ids.contains(&l.prog_id)))
                        .count();
                    let a = self.acquired(&p)?;
                    let usage = p
                        .maps()
                        .occupancy()?
                        .into_iter()
                        .map(|o| MapUsage {
                            map: o.name.to_string(),
                            entries: o.entries as u64,
                            max_entries: u64::from(o.max_entries),
                            refuses_when_full: o.refuses_when_full,
                        })
                        .collect();
                    out.push(VersionInfo {
                        version: v,
                        pin_dir: dir,
                        programs: a.programs,
                        maps: a.maps,
                        containers: u32::try_from(used).unwrap_or(u32::MAX),
                        problem: None,
                        usage,
                    });
                }
                Err(e) => out.push(VersionInfo {
                    version: v,
                    pin_dir: dir,
                    problem: Some(e.to_string()),
                    ..Default::default()
                }),
            }
        }
        Ok(out)
    }

    fn containers(&self) -> Result<Vec<ContainerInfo>, BackendError> {
        let versions = self.opened()?;
        let mut out = Vec::new();
        for c in container::list(&self.layout)? {
            let cgroup_id = c
                .links
                .iter()
                .map(|(_, l)| l.cgroup_id)
                .find(|id| *id != 0)
                .unwrap_or(0);
            let programs = versions.iter().find(|p| {
                p.ids()
                    .iter()
                    .any(|(_, id)| c.links.iter().any(|(_, l)| l.prog_id == *id))
            });
            let version = programs
                .map(|p| p.version().to_string())
                .unwrap_or_default();
            let mut attachments: Vec<AttachmentInfo> =
                c.links.iter().map(|(n, l)| attachment(n, l)).collect();
            if let Some(p) = programs.filter(|_| cgroup_id != 0) {
                attachments.extend(clsact_attachments(p, cgroup_id, &attachments)?);
            }
            let kubernetes = programs
                .filter(|_| cgroup_id != 0)
                .and_then(|p| k8s_names(p, cgroup_id));
            out.push(ContainerInfo {
                stale: c.is_stale(),
                attachments,
                id: c.id,
                namespace: c.namespace,
                cgroup_id,
                version,
                kubernetes,
            });
        }
        Ok(out)
    }

    fn stats(&self) -> Result<Vec<ContainerStatsInfo>, BackendError> {
        let mut out = Vec::new();
        for p in self.opened()? {
            let maps = p.maps();
            let ifaces = maps.ifaces()?;
            for (cg, ident) in maps.identities()? {
                let mut per_iface = Vec::new();
                for (k, _) in ifaces.iter().filter(|(_, owner)| *owner == cg) {
                    let c = wire_counters(&maps.iface_counters(*k)?);
                    let mut info = InterfaceStatsInfo::new(k.ifindex, k.netns_cookie, c);
                    if let Some(name) = maps.iface_name(*k).ok().flatten() {
                        info.name = name;
                    }
                    per_iface.push(info);
                }
                // In the maps, so not deleted: retired containers are the service's.
                let (config, counters) = maps.cgroup_state(cg)?;
                let mut info = ContainerStatsInfo::from_counters(
                    &ident.namespace,
                    &ident.id,
                    cg,
                    wire_counters(&counters),
                    per_iface,
                    config.is_some_and(|c| c.count_at_interfaces),
                );
                info.kubernetes = k8s_names(&p, cg);
                out.push(info);
            }
        }
        out.sort_by(|a, b| (&a.namespace, &a.id).cmp(&(&b.namespace, &b.id)));
        Ok(out)
    }

    fn gc(&self, dry_run: bool) -> Result<GcReport, BackendError> {
        let versions = self.opened()?;
        let r = gc::collect(&self.layout, &versions, tether_bpf::VERSION, dry_run)?;
        Ok(GcReport {
            removed_containers: r.containers,
            removed_versions: r.versions,
            removed_map_entries: u32::try_from(r.map_entries).unwrap_or(u32::MAX),
        })
    }

    fn poll_events(&self, timeout: Duration) -> Result<Vec<AuditEvent>, BackendError> {
        // The rings pinned now; a version removed, added or loaded again since the last
        // poll (its ring is new) rebuilds the reader.
        let mut pinned = Vec::new();
        let mut with_ring = Vec::new();
        for v in self.layout.versions()? {
            match tether_bpf::events::ring_id(&self.layout, &v) {
                Ok(id) => {
                    pinned.push(id);
                    with_ring.push(v);
                }
                Err(e) => log::debug!("audit: version {v}: {e}"),
            }
        }
        let tagged = READERS.with(|cell| -> Result<_, BackendError> {
            let mut slot = cell.borrow_mut();
            if slot.as_ref().map(|r| r.pinned.as_slice()) != Some(pinned.as_slice()) {
                *slot = None;
                let versions: Vec<Programs> = self
                    .opened()?
                    .into_iter()
                    .filter(|p| with_ring.iter().any(|v| v == p.version()))
                    .collect();
                let reader = if versions.is_empty() {
                    None
                } else {
                    let refs: Vec<&Programs> = versions.iter().collect();
                    Some(EventReader::over(&refs)?)
                };
                *slot = Some(Readers {
                    pinned: pinned.clone(),
                    reader,
                    versions,
                });
            }
            let Some(Readers {
                reader: Some(reader),
                versions,
                ..
            }) = slot.as_mut()
            else {
                std::thread::sleep(timeout);
                return Ok(Vec::new());
            };
            let events = reader.poll_tagged(timeout)?;
            if events.is_empty() {
                return Ok(Vec::new());
            }
            // Who each event's cgroup is, from the identities of the version it came from,
            // and its Kubernetes names there.
            let mut names: HashMap<usize, HashMap<u64, tether_bpf::maps::Identity>> =
                HashMap::new();
            let mut pods: HashMap<(usize, u64), Option<KubernetesNames>> = HashMap::new();
            let mut out = Vec::with_capacity(events.len());
            for (i, e) in events {
                if let std::collections::hash_map::Entry::Vacant(v) = names.entry(i) {
                    v.insert(versions[i].maps().identities()?.into_iter().collect());
                }
                let who = names.get(&i).and_then(|m| m.get(&e.cgroup_id)).cloned();
                let pod = pods
                    .entry((i, e.cgroup_id))
                    .or_insert_with(|| k8s_names(&versions[i], e.cgroup_id))
                    .clone();
                out.push((e, who, pod));
            }
            Ok(out)
        })?;
        if tagged.is_empty() {
            return Ok(Vec::new());
        }
        // Events carry CLOCK_MONOTONIC times; the log wants wall-clock times.
        let offset = wall_minus_monotonic();
        Ok(tagged
            .into_iter()
            .map(|(e, who, kubernetes)| {
                let who = who.as_ref();
                AuditEvent {
                    ts_ns: e.ts_ns.wrapping_add(offset),
                    id: who.map(|w| w.id.clone()).unwrap_or_default(),
                    namespace: who.map(|w| w.namespace.clone()).unwrap_or_default(),
                    cgroup_id: e.cgroup_id,
                    kind: e.kind.as_str().to_string(),
                    family: if e.daddr.is_ipv4() { "ipv4" } else { "ipv6" }.into(),
                    protocol: match e.protocol {
                        6 => "tcp".into(),
                        17 => "udp".into(),
                        1 => "icmp".into(),
                        58 => "icmpv6".into(),
                        n => n.to_string(),
                    },
                    daddr: e.daddr.to_string(),
                    dport: e.dport,
                    pid: e.pid,
                    ifindex: e.ifindex,
                    kubernetes,
                }
            })
            .collect())
    }

    fn netns_cookie_mode(&self) -> String {
        NetnsKey::probe().as_str().to_string()
    }
}

fn wall_minus_monotonic() -> u64 {
    let wall = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mono = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0);
    wall.wrapping_sub(mono)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_counters_copy_every_field() {
        let k = tether_bpf::Counters {
            rx_packets: 1,
            rx_bytes: 2,
            tx_packets: 3,
            tx_bytes: 4,
            drops: 5,
            denials: 6,
            events_lost: 7,
        };
        let w = wire_counters(&k);
        let fields = [
            w.rx_packets,
            w.rx_bytes,
            w.tx_packets,
            w.tx_bytes,
            w.drops,
            w.denials,
            w.events_lost,
        ];
        assert_eq!(fields, [1, 2, 3, 4, 5, 6, 7]);
    }
}
