//! Attaching one container to its cgroup and network namespace, the interfaces added later,
//! and detaching: the kernel side of the attach step, over `tether_bpf::container`. The
//! attach step's policy (deadline, failure policy, what is tracked) is the attacher's.
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{info, warn};
use tether_api::types::{ContainerStatsInfo, InterfaceStatsInfo};
use tether_bpf::container::{self, IfaceAttached};
use tether_bpf::features::CgroupSockets;
use tether_bpf::{ContainerConfig, Counters, PinLayout, Programs};

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
    } else if let Some(netns) = &netns {
        // A prestart hook, as Docker's before 28, has set its interfaces up by now.
        config =
            auto_config(plan, &config, netns.as_fd(), &select).map_err(|e| Error::attach(id, e))?;
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

/// Where `count_at` and `judge_at = "auto"` count and judge a container whose network
/// namespace runc created, by the interfaces it has now: at its interfaces when it has one
/// (judged there when nothing else needs the cgroup_skb hooks: it is counted there, or not
/// at all), else at its cgroup. Only ever moves to the interfaces: `config` as it is for
/// any other container, or where nothing is `auto`.
fn auto_config(
    plan: &Plan,
    config: &ContainerConfig,
    netns: BorrowedFd<'_>,
    select: &TcSelect,
) -> tether_bpf::Result<ContainerConfig> {
    let count_auto = plan.count_at == CountAt::Auto && config.account;
    let judge_auto = plan.judge_at == JudgeAt::Auto && config.policy;
    let mut to = *config;
    if plan.netns != Netns::New || !(count_auto || judge_auto) {
        return Ok(to);
    }
    if !container::has_interfaces(netns, select.only.as_deref())? {
        return Ok(to);
    }
    if count_auto {
        to.count_at_interfaces = true;
    }
    if judge_auto && (!to.account || to.count_at_interfaces) {
        to.judge_at_interfaces = true;
    }
    Ok(to)
}

/// Just before `runc start`: a container that `auto` left at its cgroup for want of an
/// interface at create, and that has one now (Docker 28 and `ctr run --cni` set up its
/// network between create and start), is moved to its interfaces (see [`auto_config`]):
/// nothing of it has run yet, so nothing it sends is counted or judged in the wrong place.
/// `pid`: its init process, whose cgroup is the container's.
pub fn settle_at_start(a: &Attachment, plan: &Plan, pid: u32) -> Result<()> {
    // Held throughout, as the link watcher's attach holds it: an interface it attached
    // meanwhile would copy the container's flags from before the change.
    let stopped = a.stopped.lock().unwrap_or_else(|e| e.into_inner());
    let Some(netns) = a.netns.as_ref().filter(|_| !*stopped) else {
        return Ok(());
    };
    if CgroupSockets::probe() == CgroupSockets::Blind {
        return Ok(());
    }
    let id = &a.id;
    let maps = a.programs.maps();
    let Some(from) = maps
        .container_config(a.cgroup_id)
        .map_err(|e| Error::attach(id, e))?
    else {
        return Ok(());
    };
    let to =
        auto_config(plan, &from, netns.as_fd(), &a.select).map_err(|e| Error::attach(id, e))?;
    if to == from {
        return Ok(());
    }
    let t0 = Instant::now();
    let cgroup_dir = crate::cgroup::cgroup2_dir(pid).map_err(|e| Error::attach(id, e))?;
    let cgroup = File::open(&cgroup_dir)
        .map_err(|e| Error::attach(id, format!("open {}: {e}", cgroup_dir.display())))?;
    let cgid = container::cgroup_id(cgroup.as_fd()).map_err(|e| Error::attach(id, e))?;
    if cgid != a.cgroup_id {
        return Err(Error::attach(
            id,
            format!(
                "its init process {pid} is in cgroup {cgid}, not in its attached cgroup {}",
                a.cgroup_id
            ),
        ));
    }
    let dir = a
        .layout
        .container_dir(&a.namespace, id)
        .map_err(|e| Error::attach(id, e))?;
    let (added, removed) =
        container::reconfigure(&a.programs, &dir, cgroup.as_fd(), cgid, &from, &to)
            .map_err(|e| Error::attach(id, e))?;
    let names = |p: &[tether_bpf::programs::Prog]| {
        p.iter().map(|p| p.name()).collect::<Vec<_>>().join(", ")
    };
    let moved = match (
        to.count_at_interfaces != from.count_at_interfaces,
        to.judge_at_interfaces != from.judge_at_interfaces,
    ) {
        (true, true) => "counted and judged",
        (true, false) => "counted",
        _ => "judged",
    };
    info!(
        "{id}: it has an interface at start: {moved} at its interfaces from here on (cgroup \
         programs added: [{}], removed: [{}]; {} us)",
        names(&added),
        names(&removed),
        t0.elapsed().as_micros()
    );
    Ok(())
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
