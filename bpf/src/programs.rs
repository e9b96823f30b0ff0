//! The object's programs and maps: loading and pinning one version (tetherd only) and opening
//! the pins of a version (everyone else), validating that each pin is what tether put there.
use std::fs;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use libbpf_rs::skel::{OpenSkel, SkelBuilder};

use crate::error::{Error, Result};
use crate::maps::{ContainerConfig, MapFd, Maps, TC_SLOTS};
use crate::pins::{self, PinLayout};
use crate::skel::TetherSkelBuilder;
use crate::sys;

/// The programs of the object, in a fixed order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Prog {
    CgroupIngress,
    CgroupEgress,
    Connect4,
    Connect6,
    Sendmsg4,
    Sendmsg6,
    Setsockopt,
    TcIngress,
    TcEgress,
}

impl Prog {
    pub const ALL: [Prog; 9] = [
        Prog::CgroupIngress,
        Prog::CgroupEgress,
        Prog::Connect4,
        Prog::Connect6,
        Prog::Sendmsg4,
        Prog::Sendmsg6,
        Prog::Setsockopt,
        Prog::TcIngress,
        Prog::TcEgress,
    ];

    /// The program's name in the object (and its pin name).
    pub fn name(self) -> &'static str {
        match self {
            Prog::CgroupIngress => "tether_cg_ingress",
            Prog::CgroupEgress => "tether_cg_egress",
            Prog::Connect4 => "tether_connect4",
            Prog::Connect6 => "tether_connect6",
            Prog::Sendmsg4 => "tether_sendmsg4",
            Prog::Sendmsg6 => "tether_sendmsg6",
            Prog::Setsockopt => "tether_setsockopt",
            Prog::TcIngress => "tether_tc_ingress",
            Prog::TcEgress => "tether_tc_egress",
        }
    }

    pub(crate) fn prog_type(self) -> u32 {
        match self {
            Prog::CgroupIngress | Prog::CgroupEgress => libbpf_sys::BPF_PROG_TYPE_CGROUP_SKB,
            Prog::Connect4 | Prog::Connect6 | Prog::Sendmsg4 | Prog::Sendmsg6 => {
                libbpf_sys::BPF_PROG_TYPE_CGROUP_SOCK_ADDR
            }
            Prog::Setsockopt => libbpf_sys::BPF_PROG_TYPE_CGROUP_SOCKOPT,
            Prog::TcIngress | Prog::TcEgress => libbpf_sys::BPF_PROG_TYPE_SCHED_CLS,
        }
    }

    /// Where the program attaches: a cgroup hook or a TCX direction.
    pub(crate) fn attach_type(self) -> u32 {
        match self {
            Prog::CgroupIngress => libbpf_sys::BPF_CGROUP_INET_INGRESS,
            Prog::CgroupEgress => libbpf_sys::BPF_CGROUP_INET_EGRESS,
            Prog::Connect4 => libbpf_sys::BPF_CGROUP_INET4_CONNECT,
            Prog::Connect6 => libbpf_sys::BPF_CGROUP_INET6_CONNECT,
            Prog::Sendmsg4 => libbpf_sys::BPF_CGROUP_UDP4_SENDMSG,
            Prog::Sendmsg6 => libbpf_sys::BPF_CGROUP_UDP6_SENDMSG,
            Prog::Setsockopt => libbpf_sys::BPF_CGROUP_SETSOCKOPT,
            Prog::TcIngress => libbpf_sys::BPF_TCX_INGRESS,
            Prog::TcEgress => libbpf_sys::BPF_TCX_EGRESS,
        }
    }

    pub fn is_cgroup(self) -> bool {
        !matches!(self, Prog::TcIngress | Prog::TcEgress)
    }

    /// Whether a container with config `c` needs this program attached: a program with
    /// nothing to do for it costs every packet (or connect()) a run and its cgroup link costs
    /// the attach step a wait on the kernel's cgroup lock, so only what does work is attached.
    /// The config is fixed once the container runs (`auto` may move a container that has
    /// run nothing yet: [`crate::container::reconfigure`]).
    pub fn used_by(self, c: &ContainerConfig) -> bool {
        let at_cgroup = c.account && !c.count_at_interfaces;
        match self {
            Prog::CgroupIngress => at_cgroup,
            Prog::CgroupEgress => at_cgroup || (c.policy && !c.judge_at_interfaces),
            Prog::TcIngress | Prog::TcEgress => c.account || c.policy,
            // connect() is where TCP sockets are vetted and connections audited.
            Prog::Connect6 => c.policy || c.audit_connects,
            // A container counted at its interfaces alone still needs one cgroup link: the
            // link ties its pins to its cgroup's life (garbage collection, `ps` and the
            // "attached already" check read cgroup links). connect4 runs once per connect(),
            // not per packet, and does nothing for such a container.
            Prog::Connect4 => c.policy || c.audit_connects || (c.account && c.count_at_interfaces),
            Prog::Sendmsg4 | Prog::Sendmsg6 => c.policy,
            // Options that would take packets around the deny check.
            Prog::Setsockopt => c.policy,
        }
    }
}

/// (name, map type, key size, value size) of every shared map.
const MAPS: [(&str, u32, u32, u32); 12] = [
    ("cgroups", libbpf_sys::BPF_MAP_TYPE_PERCPU_HASH, 8, 80),
    (
        "cg_local",
        libbpf_sys::BPF_MAP_TYPE_PERCPU_CGROUP_STORAGE,
        8,
        80,
    ),
    ("identities", libbpf_sys::BPF_MAP_TYPE_HASH, 8, 184),
    ("tc_slots", libbpf_sys::BPF_MAP_TYPE_PERCPU_ARRAY, 4, 88),
    ("tc_owners", libbpf_sys::BPF_MAP_TYPE_HASH, 4, 24),
    ("tc_ifaces", libbpf_sys::BPF_MAP_TYPE_PERCPU_HASH, 16, 72),
    ("iface_names", libbpf_sys::BPF_MAP_TYPE_HASH, 16, 16),
    ("k8s_names", libbpf_sys::BPF_MAP_TYPE_HASH, 8, 384),
    ("deny4", libbpf_sys::BPF_MAP_TYPE_LPM_TRIE, 16, 4),
    ("deny6", libbpf_sys::BPF_MAP_TYPE_LPM_TRIE, 28, 4),
    ("rates", libbpf_sys::BPF_MAP_TYPE_PERCPU_HASH, 8, 24),
    ("events", libbpf_sys::BPF_MAP_TYPE_RINGBUF, 0, 0),
];

/// How the TC programs tell network namespaces apart on this kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetnsKey {
    /// The device's netns cookie, read through bpf_cast_to_kern_ctx() and CO-RE (Linux 6.2+):
    /// keys are (netns cookie, ifindex).
    Cookie,
    /// Older kernels: keys are (classid, ifindex), where classid is the 16-bit classid of the
    /// interface's clsact filters (cls_bpf hands it to the program in `skb->tc_classid`).
    /// The attach step picks, per interface, a classid that no tracked interface with the
    /// same ifindex has, so every CNI pod's `eth0` (ifindex 2 in each namespace) has a key
    /// of its own.
    Classid,
}

impl NetnsKey {
    /// Decides for the running kernel: bpf_cast_to_kern_ctx() arrived in Linux 6.2.
    /// `TETHER_NETNS_KEY=classid` picks the older kernels' way on a newer one (tests of it).
    pub fn probe() -> Self {
        if std::env::var("TETHER_NETNS_KEY").as_deref() == Ok("classid") {
            return NetnsKey::Classid;
        }
        if sys::kernel_at_least(6, 2) {
            NetnsKey::Cookie
        } else {
            NetnsKey::Classid
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            NetnsKey::Cookie => "netns-cookie",
            NetnsKey::Classid => "filter-classid",
        }
    }
}

/// What one load cost.
#[derive(Debug, Clone)]
pub struct LoadReport {
    pub version: String,
    /// Wall time of open + load (the verifier's work dominates).
    pub load_time: Duration,
    /// Instructions the verifier processed, over all programs (0 on kernels before 5.16,
    /// which do not report it).
    pub verified_insns: u64,
    /// True when another loader published the same version first and this load was dropped.
    pub lost_race: bool,
    /// The node-wide LSM program (PACKET_QDISC_BYPASS refused to 32-bit callers too).
    pub lsm: Lsm,
}

/// Whether the node-wide LSM program is attached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lsm {
    Attached,
    /// The kernel does not run BPF LSM.
    Inactive,
    /// The kernel runs BPF LSM, but loading or attaching the program failed (the reason).
    Failed(String),
}

/// Loads the object, pins it as `version` under `layout` and returns the report. Only tetherd
/// calls this. The pins appear all at once (rename of a staging directory), so a crash at any
/// point leaves either no version directory or a complete one.
pub fn load_and_pin(layout: &PinLayout, version: &str) -> Result<LoadReport> {
    load_and_pin_with(layout, version, NetnsKey::probe())
}

/// [`load_and_pin`] with the TC programs reading interface keys as `netns_key` says (tests
/// of one mode on kernels of the other; a kernel before 6.2 has only [`NetnsKey::Classid`]).
#[doc(hidden)]
pub fn load_and_pin_with(
    layout: &PinLayout,
    version: &str,
    netns_key: NetnsKey,
) -> Result<LoadReport> {
    layout.ensure_root()?;
    let staging = layout.staging_dir(version);
    pins::remove_tree(&staging)?;
    pins::make_dir(&staging.join("progs"))?;
    pins::make_dir(&staging.join("maps"))?;
    let result = load_into(&staging, version, netns_key);
    let report = match result {
        Ok(r) => r,
        Err(e) => {
            let _ = pins::remove_tree(&staging);
            return Err(e);
        }
    };
    let target = layout.version_dir(version);
    match fs::rename(&staging, &target) {
        Ok(()) => Ok(report),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EEXIST) | Some(libc::ENOTEMPTY)) => {
            pins::remove_tree(&staging)?;
            Ok(LoadReport {
                lost_race: true,
                ..report
            })
        }
        Err(e) => {
            let _ = pins::remove_tree(&staging);
            Err(Error::path("rename", &target, e))
        }
    }
}

/// Loads with the node-wide LSM program where the kernel runs BPF LSM, and without it where
/// it does not, or where loading it fails (a kernel in lockdown, a policy that refuses LSM
/// programs): the LSM program closes a gap the rest does not depend on.
fn load_into(staging: &std::path::Path, version: &str, netns_key: NetnsKey) -> Result<LoadReport> {
    if crate::lsm::BpfLsm::probe() == crate::lsm::BpfLsm::Inactive {
        return load_object(staging, version, netns_key, false);
    }
    match load_object(staging, version, netns_key, true) {
        Ok(r) => Ok(r),
        Err(e) => {
            let mut r = load_object(staging, version, netns_key, false)?;
            r.lsm = Lsm::Failed(e.to_string());
            Ok(r)
        }
    }
}

fn load_object(
    staging: &std::path::Path,
    version: &str,
    netns_key: NetnsKey,
    lsm: bool,
) -> Result<LoadReport> {
    let started = Instant::now();
    let mut object = MaybeUninit::uninit();
    let mut open = TetherSkelBuilder::default()
        .open(&mut object)
        .map_err(|source| Error::Libbpf {
            what: "open object",
            source,
        })?;
    if let Some(rodata) = open.maps.rodata_data.as_deref_mut() {
        rodata.tc_netns_cookie = u32::from(netns_key == NetnsKey::Cookie);
    }
    open.progs.tether_lsm_setsockopt.set_autoload(lsm);
    open.progs.tether_lsm_socket.set_autoload(lsm);
    let skel = open.load().map_err(|source| Error::Libbpf {
        what: "load object (verifier)",
        source,
    })?;
    let load_time = started.elapsed();
    let progs: [(Prog, BorrowedFd<'_>); 9] = [
        (Prog::CgroupIngress, skel.progs.tether_cg_ingress.as_fd()),
        (Prog::CgroupEgress, skel.progs.tether_cg_egress.as_fd()),
        (Prog::Connect4, skel.progs.tether_connect4.as_fd()),
        (Prog::Connect6, skel.progs.tether_connect6.as_fd()),
        (Prog::Sendmsg4, skel.progs.tether_sendmsg4.as_fd()),
        (Prog::Sendmsg6, skel.progs.tether_sendmsg6.as_fd()),
        (Prog::Setsockopt, skel.progs.tether_setsockopt.as_fd()),
        (Prog::TcIngress, skel.progs.tether_tc_ingress.as_fd()),
        (Prog::TcEgress, skel.progs.tether_tc_egress.as_fd()),
    ];
    let mut verified_insns = 0u64;
    for (p, fd) in progs {
        verified_insns += u64::from(sys::prog_info(fd)?.verified_insns);
        sys::obj_pin(fd, &staging.join("progs").join(p.name()))?;
    }
    let maps: [(&str, BorrowedFd<'_>); 12] = [
        ("cgroups", skel.maps.cgroups.as_fd()),
        ("cg_local", skel.maps.cg_local.as_fd()),
        ("identities", skel.maps.identities.as_fd()),
        ("tc_slots", skel.maps.tc_slots.as_fd()),
        ("tc_owners", skel.maps.tc_owners.as_fd()),
        ("tc_ifaces", skel.maps.tc_ifaces.as_fd()),
        ("iface_names", skel.maps.iface_names.as_fd()),
        ("k8s_names", skel.maps.k8s_names.as_fd()),
        ("deny4", skel.maps.deny4.as_fd()),
        ("deny6", skel.maps.deny6.as_fd()),
        ("rates", skel.maps.rates.as_fd()),
        ("events", skel.maps.events.as_fd()),
    ];
    for (name, fd) in maps {
        sys::obj_pin(fd, &staging.join("maps").join(name))?;
    }
    let lsm = if lsm {
        let node_wide = [
            (&skel.progs.tether_lsm_setsockopt, LSM_LINKS[0]),
            (&skel.progs.tether_lsm_socket, LSM_LINKS[1]),
        ];
        let mut outcome = Lsm::Attached;
        for (prog, name) in node_wide {
            verified_insns += u64::from(sys::prog_info(prog.as_fd())?.verified_insns);
            if let Err(e) = attach_lsm(prog, staging, name) {
                outcome = Lsm::Failed(e.to_string());
                break;
            }
        }
        outcome
    } else {
        Lsm::Inactive
    };
    Ok(LoadReport {
        version: version.to_string(),
        load_time,
        verified_insns,
        lost_race: false,
        lsm,
    })
}

/// Attaches the node-wide LSM program once, its link pinned with the version: it lives as
/// long as the version's pins, and goes when they are removed.
fn attach_lsm(
    prog: &libbpf_rs::ProgramMut<'_>,
    staging: &std::path::Path,
    name: &str,
) -> Result<()> {
    let mut link = prog.attach_lsm().map_err(|source| Error::Libbpf {
        what: "attach the LSM program",
        source,
    })?;
    pins::make_dir(&staging.join("links"))?;
    link.pin(staging.join("links").join(name))
        .map_err(|source| Error::Libbpf {
            what: "pin the LSM link",
            source,
        })
}

/// The pins of the node-wide LSM links, under a version's `links/`: setsockopt() of every
/// caller, and socket() of packet sockets.
pub const LSM_LINKS: [&str; 2] = ["lsm_setsockopt", "lsm_socket"];

/// Whether the node-wide LSM links of `version` are pinned (see [`Programs::lsm_guards`]).
pub fn lsm_guards(layout: &PinLayout, version: &str) -> bool {
    let links = layout.version_dir(version).join("links");
    LSM_LINKS
        .iter()
        .all(|l| fs::symlink_metadata(links.join(l)).is_ok())
}

/// The pinned programs and maps of one version, opened and validated.
#[derive(Debug)]
pub struct Programs {
    version: String,
    progs: Vec<(Prog, OwnedFd, u32)>,
    maps: Maps,
    netns_key: NetnsKey,
    lsm_guards: bool,
}

impl Programs {
    /// Opens the pins of `version`. `Error::NotLoaded` when the version directory does not
    /// exist; `Error::Tampered` when a pin is missing or is not what tether pinned.
    pub fn open(layout: &PinLayout, version: &str) -> Result<Self> {
        let dir = layout.version_dir(version);
        match fs::metadata(&dir) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(Error::NotLoaded {
                    version: version.to_string(),
                    dir,
                })
            }
            Err(e) => return Err(Error::path("stat", &dir, e)),
        }
        pins::check_private(&dir)?;
        let mut progs = Vec::with_capacity(Prog::ALL.len());
        for p in Prog::ALL {
            let path = layout.prog(version, p.name());
            let fd = open_pin(&path)?;
            let info = sys::prog_info(fd.as_fd()).map_err(|_| Error::Tampered {
                path: path.clone(),
                reason: "not a program".into(),
            })?;
            // The kernel keeps the first 15 bytes of a program name.
            let want: String = p.name().chars().take(15).collect();
            if info.prog_type != p.prog_type() || info.name != want {
                return Err(Error::Tampered {
                    path,
                    reason: format!(
                        "program {:?} of type {}, expected {:?} of type {}",
                        info.name,
                        info.prog_type,
                        want,
                        p.prog_type()
                    ),
                });
            }
            progs.push((p, fd, info.id));
        }
        let open = |name: &'static str| open_map(layout, version, name);
        let maps = Maps {
            cgroups: open("cgroups")?,
            cg_local: open("cg_local")?,
            identities: open("identities")?,
            tc_slots: open("tc_slots")?,
            tc_owners: open("tc_owners")?,
            tc_ifaces: open("tc_ifaces")?,
            iface_names: open("iface_names")?,
            k8s_names: open("k8s_names")?,
            deny4: open("deny4")?,
            deny6: open("deny6")?,
            rates: open("rates")?,
            events: open("events")?,
            ncpus: sys::possible_cpus()?,
        };
        let lsm_guards = lsm_guards(layout, version);
        Ok(Programs {
            version: version.to_string(),
            progs,
            maps,
            netns_key: NetnsKey::probe(),
            lsm_guards,
        })
    }

    pub fn version(&self) -> &str {
        &self.version
    }

    /// Whether the node-wide LSM programs of this version run (their link pins exist): they
    /// refuse packet sockets where no TC program judges a container's frames, and judge
    /// the setsockopt() of 32-bit callers, which the cgroup setsockopt hook never sees.
    pub fn lsm_guards(&self) -> bool {
        self.lsm_guards
    }

    pub fn maps(&self) -> &Maps {
        &self.maps
    }

    pub fn netns_key(&self) -> NetnsKey {
        self.netns_key
    }

    /// This handle writes TC keys as `key` says instead of as the running kernel's programs
    /// read them (the loaded programs do not change): tests of the attach rules of one mode
    /// on kernels of the other.
    #[doc(hidden)]
    pub fn assume_netns_key(mut self, key: NetnsKey) -> Self {
        self.netns_key = key;
        self
    }

    /// The namespace part of the TC keys of interfaces in the caller's current network
    /// namespace: its cookie, or 0 where the programs key by filter classid (chosen per
    /// interface at attach).
    pub fn netns_cookie_here(&self) -> Result<u64> {
        match self.netns_key {
            NetnsKey::Cookie => sys::current_netns_cookie(),
            NetnsKey::Classid => Ok(0),
        }
    }

    pub(crate) fn fd(&self, p: Prog) -> BorrowedFd<'_> {
        // Programs::open pushes every Prog in Prog::ALL order.
        self.progs[p as usize].1.as_fd()
    }

    /// The kernel id of a program.
    pub fn id(&self, p: Prog) -> u32 {
        self.progs[p as usize].2
    }

    /// Kernel ids of all programs, in `Prog::ALL` order.
    pub fn ids(&self) -> Vec<(Prog, u32)> {
        self.progs.iter().map(|(p, _, id)| (*p, *id)).collect()
    }

    /// Kernel ids and pins of the maps.
    pub fn map_ids(
        &self,
        layout: &PinLayout,
    ) -> Result<Vec<(&'static str, u32, std::path::PathBuf)>> {
        let m = &self.maps;
        [
            &m.cgroups,
            &m.cg_local,
            &m.identities,
            &m.tc_slots,
            &m.tc_owners,
            &m.tc_ifaces,
            &m.iface_names,
            &m.k8s_names,
            &m.deny4,
            &m.deny6,
            &m.rates,
            &m.events,
        ]
        .into_iter()
        .map(|f| {
            let info = sys::map_info(f.fd.as_fd())?;
            Ok((f.name, info.id, layout.map(&self.version, f.name)))
        })
        .collect()
    }

    /// Run time statistics of a program (they move while bpf stats are enabled).
    pub fn run_stats(&self, p: Prog) -> Result<sys::ProgInfo> {
        sys::prog_info(self.fd(p))
    }

    /// Runs a program once on `packet` (BPF_PROG_TEST_RUN) and returns its verdict.
    pub fn test_run(&self, p: Prog, packet: &[u8]) -> Result<u32> {
        // A test run of a program with cgroup storage allocates that storage, charged to
        // RLIMIT_MEMLOCK before 5.11.
        let _memlock = crate::memlock::raise();
        sys::prog_test_run(self.fd(p), packet, None)
    }

    /// Runs a program `repeat` times on `packet` in the kernel and returns the mean time of
    /// one run in nanoseconds (BPF_PROG_TEST_RUN's own measurement).
    pub fn test_run_cost(&self, p: Prog, packet: &[u8], repeat: u32) -> Result<u32> {
        let _memlock = crate::memlock::raise();
        sys::prog_test_run_repeat(self.fd(p), packet, None, repeat).map(|(_, ns)| ns)
    }

    /// The events ring buffer's fd (for [`crate::events::EventReader`]).
    pub(crate) fn events_fd(&self) -> BorrowedFd<'_> {
        self.maps.events.fd.as_fd()
    }
}

/// Opens one pinned map and checks it against [`MAPS`].
fn open_map(layout: &PinLayout, version: &str, name: &'static str) -> Result<MapFd> {
    let path = layout.map(version, name);
    let Some((_, ty, key, value)) = MAPS.iter().copied().find(|(n, ..)| *n == name) else {
        return Err(Error::Tampered {
            path,
            reason: "not one of tether's maps".into(),
        });
    };
    let fd = open_pin(&path)?;
    let info = sys::map_info(fd.as_fd()).map_err(|_| Error::Tampered {
        path: path.clone(),
        reason: "not a map".into(),
    })?;
    // The programs index `tc_slots` by a hash of TC_SLOT_BITS bits.
    let slots = ["tc_slots", "tc_owners"].contains(&name);
    if slots && info.max_entries != TC_SLOTS {
        return Err(Error::Tampered {
            path,
            reason: format!("{} entries, expected {}", info.max_entries, TC_SLOTS),
        });
    }
    if info.map_type != ty || info.key_size != key || info.value_size != value {
        return Err(Error::Tampered {
            path,
            reason: format!(
                "map of type {} with {}-byte keys and {}-byte values, expected type {} \
                 with {}-byte keys and {}-byte values",
                info.map_type, info.key_size, info.value_size, ty, key, value
            ),
        });
    }
    Ok(MapFd {
        name,
        fd,
        max_entries: info.max_entries,
    })
}

fn open_pin(path: &std::path::Path) -> Result<OwnedFd> {
    sys::obj_get(path).map_err(|e| match e.raw_os_error() {
        Some(libc::ENOENT) => Error::Tampered {
            path: path.to_path_buf(),
            reason: "missing".into(),
        },
        Some(libc::EINVAL) | Some(libc::EPERM) => Error::Tampered {
            path: path.to_path_buf(),
            reason: "not a bpf object".into(),
        },
        _ => e,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_programs_with_work_are_used() {
        let used = |c: ContainerConfig| -> Vec<Prog> {
            Prog::ALL.into_iter().filter(|p| p.used_by(&c)).collect()
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
}
