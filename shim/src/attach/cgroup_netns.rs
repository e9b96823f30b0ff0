//! Attaching one container to its cgroup and network namespace, the interfaces added later,
//! and detaching: the kernel side of the attach step, over `tether_bpf::container`. The
//! attach step's policy (deadline, failure policy, what is tracked) is the attacher's.
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{info, warn};
use tether_api::types::{ContainerStatsInfo, InterfaceStatsInfo};
use tether_bpf::container::{self, IfaceAttached};
use tether_bpf::features::CgroupSockets;
use tether_bpf::{Counters, PinLayout, Programs};

use super::plan::{CountAt, JudgeAt, Netns, Plan, TcSelect};
use crate::error::{Error, Result};

/// What is attached of one container: the programs, its cgroup, and the network namespace
/// whose interfaces get TC programs (if any). Holds the namespace open, so that interfaces
/// added later can be attached (and clsact filters removed) while the container lives.
pub struct Attachment {
    pub namespace: String,
    pub id: String,
    pub layout: PinLayout,
    pub programs: Arc<Programs>,
    pub cgroup_id: u64,
    pub netns: Option<OwnedFd>,
    /// The interfaces that get TC programs, and how many may.
    pub select: TcSelect,
    /// Held while interfaces are attached; `true` once the container is being detached
    /// ([`Attachment::stop_watching`]): no late attach runs after that.
    stopped: std::sync::Mutex<bool>,
    /// The container's pin directory, held open (see [`hold_pins`]).
    _pins: Option<OwnedFd>,
}

/// The container's pin directory, opened (`O_PATH`) and held for as long as the container
/// is: the links are pinned there, and a bpffs that is unmounted (`umount -l`) while
/// something holds a file of it lives on, with every pin in it, so the container's links stay
/// attached. Without a holder the kernel would drop them with the file system. `None` where
/// the directory cannot be opened (nothing is pinned there: nothing to hold).
fn hold_pins(layout: &PinLayout, namespace: &str, id: &str) -> Option<OwnedFd> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = layout.container_dir(namespace, id).ok()?;
    match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
        .open(&dir)
    {
        Ok(f) => Some(f.into()),
        Err(e) => {
            warn!("{id}: hold {}: {e}", dir.display());
            None
        }
    }
}

impl Attachment {
    /// The attachment of a container another process attached (`tether-runc start`, its
    /// link watcher), found from the pins: `None` when nothing is loaded or the container is
    /// not tracked. `netns`: the namespace to watch ([`Plan::netns_path`]).
    pub fn from_pins(
        layout: PinLayout,
        namespace: &str,
        id: &str,
        netns: &Path,
        select: TcSelect,
    ) -> tether_bpf::Result<Option<Attachment>> {
        let programs = match Programs::open(&layout, tether_bpf::VERSION) {
            Ok(p) => p,
            Err(tether_bpf::Error::NotLoaded { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let Some(cgroup_id) = programs.maps().cgroup_of(namespace, id)? else {
            return Ok(None);
        };
        let netns = File::open(netns).map_err(|e| tether_bpf::Error::Path {
            op: "open",
            path: netns.to_path_buf(),
            source: e,
        })?;
        let pins = hold_pins(&layout, namespace, id);
        Ok(Some(Attachment {
            namespace: namespace.to_string(),
            id: id.to_string(),
            layout,
            programs: Arc::new(programs),
            cgroup_id,
            netns: Some(netns.into()),
            select,
            stopped: std::sync::Mutex::new(false),
            _pins: pins,
        }))
    }

    /// Attaches to the interfaces of the container's network namespace that have no programs
    /// yet (added since the last visit). No unbounded wait inside: bpf(2), setns(2) and a
    /// netlink dump of the namespace.
    pub fn attach_new_interfaces(&self) -> tether_bpf::Result<Vec<IfaceAttached>> {
        let stopped = self.stopped.lock().unwrap_or_else(|e| e.into_inner());
        let Some(netns) = self.netns.as_ref().filter(|_| !*stopped) else {
            return Ok(Vec::new());
        };
        container::attach_netns_only(
            &self.programs,
            &self.layout,
            &self.namespace,
            &self.id,
            self.cgroup_id,
            netns.as_fd(),
            self.select.as_select(),
        )
    }

    /// No interface is attached from here on: waits for an attach of new interfaces in
    /// progress (the link watcher's, on a blocking thread), then makes every later one a
    /// no-op. Run it before detaching.
    pub fn stop_watching(&self) {
        *self.stopped.lock().unwrap_or_else(|e| e.into_inner()) = true;
    }

    /// clsact filters are not pinned: they are removed through the namespace, while this
    /// process still holds it. Nothing to do where TC links are used.
    pub fn detach_clsact(&self) {
        let Some(netns) = &self.netns else { return };
        if tether_bpf::tc::TcAttach::probe() != tether_bpf::tc::TcAttach::Clsact {
            return;
        }
        if let Err(e) = container::detach_clsact(&self.programs, netns.as_fd(), self.cgroup_id) {
            warn!("{}: remove clsact filters: {e}", self.id);
        }
    }
}

/// A container attached by [`attach`]: what is attached, the link-events socket bound in its
/// namespace (for the watcher), and where the step spent its time.
pub struct Attached {
    pub attachment: Attachment,
    pub watch: Option<OwnedFd>,
    /// Whether the container's packets are judged at its interfaces (no cgroup_skb egress
    /// program), as its plan says or, for `judge_at = "auto"`, as its interfaces decided.
    pub judged_at_interfaces: bool,
    /// Finding and opening the container's cgroup directory and network namespace.
    pub open: Duration,
    /// Map entries and cgroup links.
    pub cgroup: Duration,
    /// Entering the network namespace, TC links, the link watch socket.
    pub netns: Duration,
}

/// Attaches a created container (init `pid`) to `programs` as its plan says: map entries and
/// cgroup links, then TC links in its network namespace, with a link-events socket bound
/// there before the interfaces are listed (so no link added in between is missed).
pub fn attach(
    namespace: &str,
    id: &str,
    pid: u32,
    plan: &Plan,
    layout: PinLayout,
    programs: Arc<Programs>,
) -> Result<Attached> {
    let t0 = Instant::now();
    let cgroup_dir = crate::cgroup::cgroup2_dir(pid).map_err(|e| Error::attach(id, e))?;
    let cgroup = File::open(&cgroup_dir)
        .map_err(|e| Error::attach(id, format!("open {}: {e}", cgroup_dir.display())))?;
    let netns = match plan.netns_path(pid) {
        Some(p) => Some(OwnedFd::from(File::open(&p).map_err(|e| {
            Error::attach(id, format!("open network namespace {}: {e}", p.display()))
        })?)),
        None => None,
    };
    let select = plan.tc_select();
    let mut config = plan.config;
    let blind = CgroupSockets::probe() == CgroupSockets::Blind;
    if blind {
        // The cgroup programs will not see this container's sockets: what they would enforce
        // and count is done at the interfaces of its network namespace, loopback included.
        // In the host's namespace there is nowhere to do it.
        if netns.is_none() && (config.account || config.policy) {
            return Err(Error::attach(
                id,
                format!(
                    "the kernel does not charge sockets to their cgroup v2 (cgroup-sockets: {}), \
                     and the container shares the host's network namespace, so it can be \
                     neither enforced nor counted; boot with the pure cgroup v2 layout \
                     (systemd.unified_cgroup_hierarchy=1) or a kernel from 5.15",
                    CgroupSockets::Blind.as_str()
                ),
            ));
        }
        config.count_at_interfaces = config.account;
        info!(
            "{id}: cgroup-sockets: {}: enforced and counted at the interfaces of its network \
             namespace, loopback included",
            CgroupSockets::Blind.as_str()
        );
    } else if plan.netns == Netns::New {
        // The namespace is the container's alone: count at its interfaces if it has any (a
        // prestart hook, as Docker's, has set them up by now), and judge there too when
        // nothing else needs the cgroup_skb hooks.
        let count_auto = plan.count_at == CountAt::Auto && config.account;
        let judge_auto = plan.judge_at == JudgeAt::Auto && config.policy;
        if let (Some(netns), true) = (&netns, count_auto || judge_auto) {
            let has = container::has_interfaces(netns.as_fd(), select.only.as_deref())
                .map_err(|e| Error::attach(id, e))?;
            if count_auto {
                config.count_at_interfaces = has;
            }
            if judge_auto {
                config.judge_at_interfaces = has && (!config.account || config.count_at_interfaces);
            }
        }
    }
    let t_open = Instant::now();
    let cg = container::attach_cgroup(
        &programs,
        &layout,
        namespace,
        id,
        cgroup.as_fd(),
        &config,
        &plan.deny,
    )
    .map_err(|e| Error::attach(id, e))?;
    if let Some(names) = &plan.k8s_names {
        // What tetherd reports the container as; it is enforced and counted without.
        if let Err(e) = programs.maps().set_k8s_names(cg.cgroup_id, names) {
            warn!("{id}: recording its Kubernetes names: {e}");
        }
    }
    let pins = hold_pins(&layout, namespace, id);
    let t_cgroup = Instant::now();
    let watch = match &netns {
        // A pod's container attaches the present interfaces; its sandbox watches for late ones.
        Some(netns) => {
            let (attached, watch) = container::attach_netns_and_watch(
                &programs,
                &layout,
                namespace,
                id,
                cg.cgroup_id,
                netns.as_fd(),
                select.as_select(),
                plan.watch_links,
            )
            .map_err(|e| Error::attach(id, e))?;
            if blind && config.policy && attached.is_empty() {
                // Its interfaces (lo included) judge by their owners' rules, and the kernel
                // does not tell this container's packets from theirs: it may run only where
                // those rules deny all that its own do (a pod's containers carry the pod's
                // annotations, and every container the node's rules).
                let owners = container::shared_owners(
                    &programs,
                    netns.as_fd(),
                    cg.cgroup_id,
                    select.as_select(),
                )
                .map_err(|e| Error::attach(id, e))?;
                let uncovered = uncovered_by_owners(&programs, &owners, &plan.deny)
                    .map_err(|e| Error::attach(id, e))?;
                if let Some(why) = uncovered {
                    return Err(Error::attach(
                        id,
                        format!(
                            "the kernel does not charge sockets to their cgroup v2 \
                             (cgroup-sockets: {}), and the interfaces of the network namespace \
                             it joins carry another container's programs, which judge its \
                             packets by their own rules: {why}; boot with the pure cgroup v2 \
                             layout (systemd.unified_cgroup_hierarchy=1) or a kernel from 5.15",
                            CgroupSockets::Blind.as_str()
                        ),
                    ));
                }
                info!(
                    "{id}: cgroup-sockets: {}: judged at the interfaces of the network namespace \
                     it joins, by the rules of cgroup {owners:?}, which cover its own; its \
                     traffic is counted there, with theirs",
                    CgroupSockets::Blind.as_str()
                );
            }
            watch
        }
        None => None,
    };
    Ok(Attached {
        attachment: Attachment {
            namespace: namespace.to_string(),
            id: id.to_string(),
            layout,
            programs,
            cgroup_id: cg.cgroup_id,
            netns,
            select,
            stopped: std::sync::Mutex::new(false),
            _pins: pins,
        },
        watch,
        judged_at_interfaces: config.judge_at_interfaces,
        open: t_open - t0,
        cgroup: t_cgroup - t_open,
        netns: t_cgroup.elapsed(),
    })
}

/// Why the containers `owners`, whose programs judge the interfaces a container shares with
/// them, would not deny all that its rules `deny` do (`None`: they would): none at all, one
/// without a policy, or a rule of the container's inside none of an owner's.
fn uncovered_by_owners(
    programs: &Programs,
    owners: &[u64],
    deny: &[tether_bpf::Cidr],
) -> tether_bpf::Result<Option<String>> {
    if owners.is_empty() {
        return Ok(Some("no container's programs judge them".into()));
    }
    let maps = programs.maps();
    for &owner in owners {
        if !maps.container_config(owner)?.is_some_and(|c| c.policy) {
            return Ok(Some(format!(
                "the container of cgroup {owner} has no policy"
            )));
        }
        let theirs = maps.deny_rules(owner)?;
        if let Some(rule) = deny.iter().find(|r| !theirs.iter().any(|t| t.contains(r))) {
            return Ok(Some(format!(
                "its deny rule {rule} is not among those of the container of cgroup {owner}"
            )));
        }
    }
    Ok(None)
}

/// Where a deleted container's final counters go: tetherd's socket, and how long delete
/// waits for it (the attach deadline; tetherd down, the counters are still in the shim's
/// log line).
#[derive(Debug, Clone)]
pub struct ReportTo {
    pub socket: PathBuf,
    pub deadline: Duration,
}

/// Detaches a container: its links and map entries go; with `report_to`, its final counters
/// go to tetherd (which keeps them readable for a while after the container is gone).
/// `programs`: the pins this process opened already, if any (else they are opened).
/// `earlier`: the cgroup counters read before `runc delete` removed the cgroup.
pub async fn detach(
    namespace: &str,
    id: &str,
    layout: PinLayout,
    programs: Option<Arc<Programs>>,
    report_to: Option<ReportTo>,
    earlier: Option<Counters>,
) {
    // The benchmark's naive mode pinned a private copy for the container: it goes too.
    let naive = layout
        .root()
        .file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with("naive-"));
    if naive {
        let root = layout.root().to_path_buf();
        remove_links(namespace, id, layout, programs, None, earlier).await;
        let _ = std::fs::remove_dir_all(root);
        return;
    }
    remove_links(namespace, id, layout, programs, report_to, earlier).await;
}

async fn remove_links(
    namespace: &str,
    id: &str,
    layout: PinLayout,
    programs: Option<Arc<Programs>>,
    report_to: Option<ReportTo>,
    earlier: Option<Counters>,
) {
    let dir = match layout.container_dir(namespace, id) {
        Ok(d) => d,
        Err(_) => return,
    };
    if !dir.exists() {
        return;
    }
    let r = match programs {
        Some(p) => Ok(p),
        None => Programs::open(&layout, tether_bpf::VERSION).map(Arc::new),
    }
    .and_then(|p| container::detach(&p, &layout, namespace, id));
    match r {
        Ok(mut d) => {
            // The cgroup's local counters went with the cgroup at `runc delete`.
            if let Some(e) = &earlier {
                d.counters.at_least(e);
            }
            let interfaces = d.interfaces.iter().map(|(k, c)| {
                let mut i = InterfaceStatsInfo::new(k.ifindex, k.netns_cookie, wire_counters(c));
                if let Some((_, name)) = d.interface_names.iter().find(|(n, _)| n == k) {
                    i.name = name.clone();
                }
                i
            });
            let mut stats = ContainerStatsInfo::from_counters(
                namespace,
                id,
                d.cgroup_id.unwrap_or(0),
                wire_counters(&d.counters),
                interfaces.collect(),
                d.count_at_interfaces,
            );
            stats.kubernetes = d.k8s_names.map(|n| tether_api::types::KubernetesNames {
                namespace: n.namespace,
                pod: n.pod,
                container: n.container,
            });
            let c = &stats.total;
            info!(
                "detached: {} links, {} map entries; final counters (at the {}) rx {} pkts {} B, tx {} pkts {} B, drops {}, denials {}",
                d.links, d.map_entries, stats.counted_at, c.rx_packets, c.rx_bytes, c.tx_packets, c.tx_bytes, c.drops, c.denials
            );
            if let Some(to) = report_to {
                retire(&to, stats).await;
            }
        }
        Err(e) => warn!("detach: {e}"),
    }
}

/// The API's counters of the kernel's (summed over CPUs), for the wire.
fn wire_counters(c: &Counters) -> tether_api::types::Counters {
    tether_api::types::Counters {
        rx_packets: c.rx_packets,
        rx_bytes: c.rx_bytes,
        tx_packets: c.tx_packets,
        tx_bytes: c.tx_bytes,
        drops: c.drops,
        denials: c.denials,
        events_lost: c.events_lost,
    }
}

/// Hands a deleted container's final counters to tetherd, if it serves. Best effort: delete
/// waits at most `to.deadline` for a tetherd that serves, and not at all for one that does
/// not (a killed tetherd leaves its socket file; waiting for it made every delete wait).
async fn retire(to: &ReportTo, stats: ContainerStatsInfo) {
    if !to.socket.exists() {
        return;
    }
    let sent = async {
        let client = tether_api::Client::connect_serving(&to.socket, to.deadline)
            .await?
            .with_timeout(to.deadline);
        client.retire(stats).await
    };
    match tokio::time::timeout(to.deadline, sent).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => info!("final counters not handed to tetherd: {e}"),
        Err(_) => info!(
            "final counters not handed to tetherd within {:?}",
            to.deadline
        ),
    }
}
