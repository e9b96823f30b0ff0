//! One container's attachments: its cgroup links, its TC links inside its network namespace,
//! its map entries, and their removal. The mechanics only; what to attach is the caller's plan.
use std::fs;
use std::io;
use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::features::CgroupSockets;
use crate::link::Link;
use crate::maps::{Cidr, ContainerConfig, Counters, IfKey};
use crate::netlink;
use crate::pins::{self, PinLayout};
use crate::programs::{NetnsKey, Prog, Programs};
use crate::sys::{self, LinkInfo};
use crate::tc::{self, TcAttach};

mod reconfigure;
pub use reconfigure::reconfigure;

/// The cgroup id of a cgroup v2 directory: the inode number of the directory, which is the
/// kernfs node id the kernel reports as the cgroup id (64-bit kernels, Linux 5.5+).
pub fn cgroup_id(cgroup: BorrowedFd<'_>) -> Result<u64> {
    let st =
        nix::sys::stat::fstat(cgroup).map_err(|e| Error::syscall("fstat(cgroup)", e.into()))?;
    Ok(st.st_ino)
}

/// What [`attach_cgroup`] did.
#[derive(Debug, Clone)]
pub struct CgroupAttached {
    pub cgroup_id: u64,
    pub links: Vec<(Prog, LinkInfo)>,
}

/// The default quota of interfaces per network namespace that get TC programs. Each is an
/// entry of a map every container shares (65,536 entries).
pub const DEFAULT_MAX_INTERFACES: usize = 64;

/// Which interfaces of a network namespace get TC programs, and how many may.
#[derive(Debug, Clone, Copy)]
pub struct Select<'a> {
    /// Those named; `None`: all but `lo` (and `lo` too where the cgroup programs are
    /// blind, see [`CgroupSockets`]).
    pub only: Option<&'a [String]>,
    /// A quota: a namespace with more interfaces to attach than this is refused, and none
    /// of them is attached.
    pub max: usize,
}

impl Default for Select<'_> {
    /// All interfaces, up to [`DEFAULT_MAX_INTERFACES`].
    fn default() -> Self {
        Select {
            only: None,
            max: DEFAULT_MAX_INTERFACES,
        }
    }
}

/// An interface that [`attach_netns`] attached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IfaceAttached {
    pub key: IfKey,
    pub name: String,
    pub links: Vec<LinkInfo>,
}

/// Writes the container's entries and attaches the cgroup programs to `cgroup`, pinning each
/// link under the container's directory. All or nothing: on error everything done is undone.
pub fn attach_cgroup(
    programs: &Programs,
    layout: &PinLayout,
    namespace: &str,
    id: &str,
    cgroup: BorrowedFd<'_>,
    config: &ContainerConfig,
    deny: &[Cidr],
) -> Result<CgroupAttached> {
    let dir = layout.container_dir(namespace, id)?;
    let cgid = cgroup_id(cgroup)?;
    clear_stale(&dir)?;
    pins::make_dir(&dir)?;
    let maps = programs.maps();
    let undo = |dir: &Path| {
        let _ = remove_links(dir);
        let _ = maps.remove_container(cgid);
    };
    // Kernels before 5.11 charge the attach's cgroup storage to RLIMIT_MEMLOCK.
    let _memlock = crate::memlock::raise();
    let result = (|| {
        maps.set_container(cgid, config, namespace, id)?;
        for cidr in deny {
            maps.add_deny(cgid, cidr)?;
        }
        let mut links = Vec::new();
        for p in Prog::ALL
            .into_iter()
            .filter(|p| p.is_cgroup() && p.used_by(config))
        {
            let link = Link::cgroup(programs, p, cgroup)?;
            link.pin(&dir.join(format!("cgroup_{}", p.name())))?;
            links.push((p, link.info()));
        }
        if !links.is_empty() {
            maps.set_local(cgid, config)?;
        }
        Ok(CgroupAttached {
            cgroup_id: cgid,
            links,
        })
    })();
    if result.is_err() {
        undo(&dir);
    }
    result
}

/// A directory left by an earlier container with the same id whose cgroup is gone is removed;
/// one whose links are alive means the id is attached already.
fn clear_stale(dir: &Path) -> Result<()> {
    let links = match read_links(dir) {
        Ok(l) => l,
        Err(Error::Path { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            return Ok(())
        }
        Err(e) => return Err(e),
    };
    for (name, link) in &links {
        if name.starts_with("cgroup_") && !link.is_defunct()? {
            return Err(Error::Name {
                what: "id",
                value: dir
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                reason: "is attached already (its cgroup links are alive)",
            });
        }
    }
    drop(links);
    remove_links(dir).map(|_| ())
}

/// Attaches the TC programs to every interface of the network namespace `netns` that has
/// none yet, and routes their traffic to the container's cgroup id. Idempotent: run it at
/// create, at start and whenever a link appears. Returns the interfaces attached by this call.
///
/// The calling thread joins `netns` for the work (TCX attaches by ifindex in the caller's
/// namespace) and returns to its own namespace before this returns.
pub fn attach_netns(
    programs: &Programs,
    layout: &PinLayout,
    namespace: &str,
    id: &str,
    cgroup_id: u64,
    netns: BorrowedFd<'_>,
) -> Result<Vec<IfaceAttached>> {
    attach_netns_only(
        programs,
        layout,
        namespace,
        id,
        cgroup_id,
        netns,
        Select::default(),
    )
}

/// [`attach_netns`] limited to the interfaces `select` picks.
pub fn attach_netns_only(
    programs: &Programs,
    layout: &PinLayout,
    namespace: &str,
    id: &str,
    cgroup_id: u64,
    netns: BorrowedFd<'_>,
    select: Select<'_>,
) -> Result<Vec<IfaceAttached>> {
    attach_netns_with(
        programs,
        layout,
        namespace,
        id,
        cgroup_id,
        netns,
        select,
        TcAttach::probe(),
    )
}

/// [`attach_netns_only`] with an explicit TC attach mode.
#[allow(clippy::too_many_arguments)]
pub fn attach_netns_with(
    programs: &Programs,
    layout: &PinLayout,
    namespace: &str,
    id: &str,
    cgroup_id: u64,
    netns: BorrowedFd<'_>,
    select: Select<'_>,
    tc: TcAttach,
) -> Result<Vec<IfaceAttached>> {
    refuse_host_netns(netns)?;
    let dir = layout.container_dir(namespace, id)?;
    require_attached(&dir, id)?;
    in_netns(netns, || attach_here(programs, &dir, cgroup_id, select, tc))
}

/// Removes the clsact filters of a container's interfaces (the clsact mode of
/// [`TcAttach`]; TCX links go with their pins in [`detach`]). Run it while the namespace
/// is still reachable through `netns`, before [`detach`] forgets the interfaces.
pub fn detach_clsact(programs: &Programs, netns: BorrowedFd<'_>, cgroup_id: u64) -> Result<usize> {
    let ifaces: Vec<u32> = programs
        .maps()
        .ifaces()?
        .into_iter()
        .filter(|(_, cg)| *cg == cgroup_id)
        .map(|(k, _)| k.ifindex)
        .collect();
    in_netns(netns, || {
        for ifindex in &ifaces {
            tc::clsact_detach(programs, *ifindex)?;
        }
        Ok(ifaces.len())
    })
}

/// The TC step comes after [`attach_cgroup`], which makes the container's directory: a
/// missing directory means the container is not (or no longer) attached, and nothing may be
/// pinned for it (a late link event must not resurrect a deleted container).
fn require_attached(dir: &Path, id: &str) -> Result<()> {
    if dir.is_dir() {
        Ok(())
    } else {
        Err(Error::Name {
            what: "id",
            value: id.to_string(),
            reason: "is not attached: its pin directory is missing (no cgroup attachment, or \
                     the bpffs was unmounted since)",
        })
    }
}

/// Runs `f` with the calling thread inside `netns`, then returns the thread to the network
/// namespace it was in. The network namespace is per thread, so the process's other threads
/// never see the change; running on the caller's thread costs no thread start and no wait
/// for a scheduler slot (both dominate under a burst of container starts).
///
/// Returning can in principle fail (setns(2) allocates); the thread is then marked stranded
/// and every later call on it tries to return first and fails until it can, so nothing runs
/// in a container's namespace by mistake.
///
/// The thread's own namespace is opened once per thread: code that moves a thread to
/// another network namespace by itself must not call this on that thread afterwards.
pub fn in_netns<T>(netns: BorrowedFd<'_>, f: impl FnOnce() -> Result<T>) -> Result<T> {
    use std::cell::RefCell;
    use std::os::fd::{AsFd, OwnedFd};
    use std::rc::Rc;
    thread_local! {
        /// The thread's own network namespace, opened on its first visit elsewhere.
        static HOME: RefCell<Option<Rc<OwnedFd>>> = const { RefCell::new(None) };
        /// The namespace this thread must return to, while it could not.
        static STRANDED: RefCell<Option<Rc<OwnedFd>>> = const { RefCell::new(None) };
    }
    let back = |home: BorrowedFd<'_>| {
        nix::sched::setns(home, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
            Error::syscall(
                "setns(CLONE_NEWNET) back to the thread's namespace",
                e.into(),
            )
        })
    };
    STRANDED.with(|s| -> Result<()> {
        let mut s = s.borrow_mut();
        if let Some(home) = s.as_ref() {
            back(home.as_fd())?;
            *s = None;
        }
        Ok(())
    })?;
    // Opened while the thread is at home (never stranded here: that was handled above).
    let home = HOME.with(|h| -> Result<Rc<OwnedFd>> {
        let mut h = h.borrow_mut();
        if let Some(fd) = h.as_ref() {
            return Ok(fd.clone());
        }
        let fd = Rc::new(OwnedFd::from(
            fs::File::open("/proc/thread-self/ns/net")
                .map_err(|e| Error::path("open", "/proc/thread-self/ns/net", e))?,
        ));
        *h = Some(fd.clone());
        Ok(fd)
    })?;
    nix::sched::setns(netns, nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| Error::syscall("setns(CLONE_NEWNET)", e.into()))?;
    let r = f();
    if let Err(e) = back(home.as_fd()) {
        STRANDED.with(|s| *s.borrow_mut() = Some(home));
        return Err(e);
    }
    r
}

/// [`netlink::link_events_socket_here`] bound inside `netns`: a message whenever a link there
/// is added or changes. The socket stays in that namespace.
pub fn link_events_socket(netns: BorrowedFd<'_>) -> Result<std::os::fd::OwnedFd> {
    refuse_host_netns(netns)?;
    in_netns(netns, netlink::link_events_socket_here)
}

/// [`attach_netns_only`], and with `watch` [`link_events_socket`] in the same visit to the
/// namespace: the watch socket is bound before the interfaces are listed, so no link added
/// in between is missed.
#[allow(clippy::too_many_arguments)]
pub fn attach_netns_and_watch(
    programs: &Programs,
    layout: &PinLayout,
    namespace: &str,
    id: &str,
    cgroup_id: u64,
    netns: BorrowedFd<'_>,
    select: Select<'_>,
    watch: bool,
) -> Result<(Vec<IfaceAttached>, Option<std::os::fd::OwnedFd>)> {
    refuse_host_netns(netns)?;
    let dir = layout.container_dir(namespace, id)?;
    require_attached(&dir, id)?;
    let tc = TcAttach::probe();
    in_netns(netns, || {
        let watch = watch.then(netlink::link_events_socket_here).transpose()?;
        let attached = attach_here(programs, &dir, cgroup_id, select, tc)?;
        Ok((attached, watch))
    })
}

/// The other containers whose TC programs count and judge the interfaces of `netns` that
/// `select` picks (their owners, each once; `cgroup_id`'s own left out). Where the cgroup
/// programs are blind, a container that joins another's network namespace is judged by
/// these owners' programs and rules alone.
pub fn shared_owners(
    programs: &Programs,
    netns: BorrowedFd<'_>,
    cgroup_id: u64,
    select: Select<'_>,
) -> Result<Vec<u64>> {
    refuse_host_netns(netns)?;
    in_netns(netns, || {
        let maps = programs.maps();
        let classid_keys = programs.netns_key() == NetnsKey::Classid;
        let cookie = programs.netns_cookie_here()?;
        let mut owners = Vec::new();
        for (ifindex, name) in sys::interfaces()? {
            if !gets_tc(&name, select.only) {
                continue;
            }
            let key = if classid_keys {
                match tc::clsact_classid(ifindex)?.filter(|c| *c & 0xffff != 0) {
                    Some(classid) => IfKey::new(u64::from(classid & 0xffff), ifindex),
                    None => continue,
                }
            } else {
                IfKey::new(cookie, ifindex)
            };
            if let Some(owner) = maps.iface_owner(key)? {
                if owner != cgroup_id && !owners.contains(&owner) {
                    owners.push(owner);
                }
            }
        }
        Ok(owners)
    })
}

/// Whether the network namespace `netns` has an interface the TC programs would be
/// attached to (any but `lo`, limited to `only` when given): where a container's traffic can
/// be counted at its interfaces.
pub fn has_interfaces(netns: BorrowedFd<'_>, only: Option<&[String]>) -> Result<bool> {
    in_netns(netns, || {
        Ok(sys::interfaces()?
            .into_iter()
            .any(|(_, name)| gets_tc(&name, only)))
    })
}

/// Whether the interface `name` gets TC programs: those named in `only`, else all but `lo`,
/// whose traffic the cgroup programs see. Where they do not ([`CgroupSockets::Blind`]),
/// `lo` too, so that the container's loopback traffic is enforced and counted at TC.
fn gets_tc(name: &str, only: Option<&[String]>) -> bool {
    match only {
        Some(o) => o.iter().any(|n| n == name),
        None => name != "lo" || CgroupSockets::probe() == CgroupSockets::Blind,
    }
}

fn attach_here(
    programs: &Programs,
    dir: &Path,
    cgroup_id: u64,
    select: Select<'_>,
    tc: TcAttach,
) -> Result<Vec<IfaceAttached>> {
    let picked: Vec<(u32, String)> = sys::interfaces()?
        .into_iter()
        .filter(|(_, name)| gets_tc(name, select.only))
        .collect();
    if picked.len() > select.max {
        return Err(Error::Quota {
            what: "interfaces",
            count: picked.len(),
            max: select.max,
        });
    }
    let cookie = programs.netns_cookie_here()?;
    let classid_keys = programs.netns_key() == NetnsKey::Classid;
    // Classid keys live in clsact filters: TCX has no classid.
    let tc = if classid_keys { TcAttach::Clsact } else { tc };
    let classid_start = if classid_keys { classid_start()? } else { 0 };
    let maps = programs.maps();
    let mut out = Vec::new();
    for (ifindex, name) in picked {
        if classid_keys {
            if let Some(key) = attach_classid(programs, ifindex, &name, cgroup_id, classid_start)? {
                out.push(IfaceAttached {
                    key,
                    name,
                    links: Vec::new(),
                });
            }
            continue;
        }
        let key = IfKey::new(cookie, ifindex);
        if tc == TcAttach::Clsact {
            let owner = maps.iface_owner(key)?;
            if owner == Some(cgroup_id) || counted_for_another(programs, owner, cgroup_id, &name)? {
                continue;
            }
            maps.set_iface(key, cgroup_id)?;
            if let Err(e) = tc::clsact_attach(programs, ifindex, 0) {
                // Neither a filter nor the entry stays behind: the next attach starts afresh.
                let _ = tc::clsact_detach(programs, ifindex);
                let _ = maps.remove_iface(key);
                return Err(e);
            }
            out.push(IfaceAttached {
                key,
                name,
                links: Vec::new(),
            });
            continue;
        }
        let pin_in = dir.join(format!("tc_{ifindex}_ingress"));
        let pin_eg = dir.join(format!("tc_{ifindex}_egress"));
        if let Ok(existing) = Link::open_pinned(&pin_in) {
            if !existing.is_defunct()? {
                continue;
            }
            // The interface that had this ifindex went away; a new one took the number.
            let _ = fs::remove_file(&pin_in);
            let _ = fs::remove_file(&pin_eg);
        }
        if counted_for_another(programs, maps.iface_owner(key)?, cgroup_id, &name)? {
            continue;
        }
        let ingress = Link::tcx(programs, Prog::TcIngress, ifindex)?;
        let egress = Link::tcx(programs, Prog::TcEgress, ifindex)?;
        ingress.pin(&pin_in)?;
        // The entry goes in once the links are pinned; if either step fails the pins go
        // (the links detach when dropped), so a later attach does not take the interface for
        // one already counted.
        if let Err(e) = egress
            .pin(&pin_eg)
            .and_then(|()| maps.set_iface(key, cgroup_id))
        {
            let _ = fs::remove_file(&pin_in);
            let _ = fs::remove_file(&pin_eg);
            return Err(e);
        }
        out.push(IfaceAttached {
            key,
            name,
            links: vec![ingress.info(), egress.info()],
        });
    }
    // Names are for display only: one that cannot be written leaves the interface `if<N>`.
    for a in &out {
        let _ = maps.set_iface_name(a.key, &a.name);
    }
    Ok(out)
}

/// Attaches the clsact filters of one interface where keys are (filter classid, ifindex)
/// ([`NetnsKey::Classid`], kernels before 6.2), and returns its key if this call attached it.
///
/// An interface that carries tether's filters already has its classid there: it is the
/// container's own or a live container's that shares the namespace (skipped), or stale
/// (taken over, classid kept). A new interface gets the first classid from `start` on whose
/// key no tracked interface has, claimed atomically, so two namespaces' `eth0` (the same
/// ifindex in every CNI pod) never share a key, even when their shims attach at once.
fn attach_classid(
    programs: &Programs,
    ifindex: u32,
    name: &str,
    cgroup_id: u64,
    start: u32,
) -> Result<Option<IfKey>> {
    let maps = programs.maps();
    let attach = |key: IfKey, classid: u32| {
        if let Err(e) = tc::clsact_attach(programs, ifindex, classid) {
            // Neither a filter nor the entry stays behind: the next attach starts afresh.
            let _ = tc::clsact_detach(programs, ifindex);
            let _ = maps.remove_iface(key);
            return Err(e);
        }
        Ok(Some(key))
    };
    if let Some(classid) = tc::clsact_classid(ifindex)?.filter(|c| *c & 0xffff != 0) {
        let classid = classid & 0xffff;
        let key = IfKey::new(u64::from(classid), ifindex);
        let owner = maps.iface_owner(key)?;
        if owner == Some(cgroup_id) || counted_for_another(programs, owner, cgroup_id, name)? {
            return Ok(None);
        }
        maps.set_iface(key, cgroup_id)?;
        return attach(key, classid);
    }
    for i in 0..CLASSIDS {
        let classid = (start + i) % CLASSIDS + 1;
        let key = IfKey::new(u64::from(classid), ifindex);
        if maps.claim_iface(key, cgroup_id)? {
            return attach(key, classid);
        }
    }
    Err(Error::Name {
        what: "interface",
        value: name.to_string(),
        reason: "finds every filter classid taken by tracked interfaces with its ifindex",
    })
}

/// The classids a key can have: 1..=65535 (cls_bpf hands the program its low 16 bits; 0 is
/// a filter without one).
const CLASSIDS: u32 = 0xffff;

/// Where the search for a free classid starts in the calling thread's network namespace:
/// from its inode number, so that namespaces attaching at once rarely probe the same keys.
fn classid_start() -> Result<u32> {
    let st = nix::sys::stat::stat("/proc/thread-self/ns/net")
        .map_err(|e| Error::path("stat", "/proc/thread-self/ns/net", e.into()))?;
    Ok((st.st_ino % u64::from(CLASSIDS)) as u32)
}

/// Whether an interface, routed to the container of cgroup `owner` if any, is another live
/// container's already: containers that share
/// a network namespace (a Kubernetes pod's, `docker run --network container:`) share its
/// interfaces, and the first to attach counts them. The others skip them: taking one over
/// would zero the first's counters (its total, when it is counted at its interfaces) and,
/// with TCX, fail on the programs attached there already. An entry whose container has
/// no entry any more is stale and is taken over.
fn counted_for_another(
    programs: &Programs,
    owner: Option<u64>,
    cgroup_id: u64,
    name: &str,
) -> Result<bool> {
    let Some(other) = owner.filter(|o| *o != cgroup_id) else {
        return Ok(false);
    };
    let live = programs.maps().container_config(other)?.is_some();
    if live {
        log::info!("interface {name}: counted for the container of cgroup {other}, which shares its network namespace");
    }
    Ok(live)
}

/// TC programs never go on the host's interfaces: a netns that is init's is refused.
fn refuse_host_netns(netns: BorrowedFd<'_>) -> Result<()> {
    let theirs =
        nix::sys::stat::fstat(netns).map_err(|e| Error::syscall("fstat(netns)", e.into()))?;
    if let Ok(host) = nix::sys::stat::stat("/proc/1/ns/net") {
        if host.st_ino == theirs.st_ino && host.st_dev == theirs.st_dev {
            return Err(Error::Name {
                what: "network namespace",
                value: "/proc/1/ns/net".into(),
                reason: "is the host's: TC programs are only attached inside containers",
            });
        }
    }
    Ok(())
}

/// What [`detach`] removed, with the container's final counters.
#[derive(Debug, Clone, Default)]
pub struct Detached {
    pub cgroup_id: Option<u64>,
    pub links: usize,
    pub map_entries: usize,
    pub counters: Counters,
    pub interfaces: Vec<(IfKey, Counters)>,
    /// The names of those interfaces that had one recorded.
    pub interface_names: Vec<(IfKey, String)>,
    /// The container's packets and bytes were counted at its interfaces, not its cgroup
    /// ([`ContainerConfig::count_at_interfaces`]).
    pub count_at_interfaces: bool,
    /// Who the container was to Kubernetes, if it was in a pod.
    pub k8s_names: Option<crate::maps::K8sNames>,
}

/// Detaches and removes every link pin, map entry and the directory of a container, and
/// returns its final counters. Idempotent.
pub fn detach(
    programs: &Programs,
    layout: &PinLayout,
    namespace: &str,
    id: &str,
) -> Result<Detached> {
    let dir = layout.container_dir(namespace, id)?;
    let maps = programs.maps();
    let mut out = Detached::default();
    let cgid = maps.cgroup_of(namespace, id)?;
    if let Some(cg) = cgid {
        let (config, counters) = maps.cgroup_state(cg)?;
        out.counters = counters;
        out.count_at_interfaces = config.is_some_and(|c| c.count_at_interfaces);
        out.k8s_names = maps.k8s_names(cg).ok().flatten();
        for (k, owner) in maps.ifaces()? {
            if owner == cg {
                out.interfaces.push((k, maps.iface_counters(k)?));
                if let Ok(Some(name)) = maps.iface_name(k) {
                    out.interface_names.push((k, name));
                }
            }
        }
    }
    out.links = remove_links(&dir)?;
    if let Some(parent) = dir.parent() {
        // Only succeeds once the namespace has no container left.
        let _ = fs::remove_dir(parent);
    }
    if let Some(cg) = cgid {
        out.map_entries = maps.remove_container(cg)?;
    }
    out.cgroup_id = cgid;
    Ok(out)
}

/// Detaches and unlinks every link pinned in `dir`, then removes `dir`.
fn remove_links(dir: &Path) -> Result<usize> {
    let links = match read_links(dir) {
        Ok(l) => l,
        Err(Error::Path { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            return Ok(0)
        }
        Err(e) => return Err(e),
    };
    let n = links.len();
    for (name, link) in links {
        // A defunct link may refuse to detach; unpinning it below releases it anyway.
        let _ = link.detach();
        let path = dir.join(&name);
        fs::remove_file(&path).map_err(|e| Error::path("unlink", &path, e))?;
    }
    pins::remove_tree(dir)?;
    Ok(n)
}

fn read_links(dir: &Path) -> Result<Vec<(String, Link)>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| Error::path("read_dir", dir, e))? {
        let entry = entry.map_err(|e| Error::path("read_dir", dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == DELETING {
            continue;
        }
        match Link::open_pinned(&entry.path()) {
            Ok(link) => out.push((name, link)),
            Err(e) => log::warn!("skipping {}: {e}", entry.path().display()),
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// The mark a container's directory carries while its shim deletes it (a directory: bpffs
/// holds no plain files). Between `runc delete`, which removes the cgroup, and the detach,
/// which reads the final counters and removes the pins, the container looks stale; the
/// mark keeps garbage collection off it for [`crate::gc::GRACE`], so its counters are the
/// shim's to hand on.
pub const DELETING: &str = "deleting";

/// Marks container `namespace/id` as being deleted (see [`DELETING`]); nothing to do for a
/// container that is not attached.
pub fn mark_deleting(layout: &PinLayout, namespace: &str, id: &str) -> Result<()> {
    let dir = layout.container_dir(namespace, id)?;
    if !dir.is_dir() {
        return Ok(());
    }
    let mark = dir.join(DELETING);
    match fs::create_dir(&mark) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(Error::path("mkdir", &mark, e)),
    }
}

/// One container's directory and its links, as found in bpffs.
#[derive(Debug, Clone)]
pub struct ContainerLinks {
    pub namespace: String,
    pub id: String,
    pub dir: PathBuf,
    /// (pin name, link info) — fresh from the kernel.
    pub links: Vec<(String, LinkInfo)>,
}

impl ContainerLinks {
    /// The container's cgroup is gone (every cgroup link defunct) or it has no links at all.
    pub fn is_stale(&self) -> bool {
        let cg: Vec<_> = self
            .links
            .iter()
            .filter(|(n, _)| n.starts_with("cgroup_"))
            .collect();
        cg.is_empty() || cg.iter().all(|(_, i)| i.cgroup_id == 0)
    }
}

/// One container's directory and its links as they are now; `None` when it is gone.
fn read_container(dir: &Path, namespace: &str, id: &str) -> Result<Option<ContainerLinks>> {
    let links = match read_links(dir) {
        Ok(l) => l,
        Err(Error::Path { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            return Ok(None)
        }
        Err(e) => return Err(e),
    };
    Ok(Some(ContainerLinks {
        namespace: namespace.to_string(),
        id: id.to_string(),
        dir: dir.to_path_buf(),
        links: links
            .into_iter()
            .map(|(n, l)| {
                let info = l.refresh().unwrap_or(l.info());
                (n, info)
            })
            .collect(),
    }))
}

/// Removes a container's directory and links found stale earlier, if it still is by
/// `stale` (judged again just before): a container that reused the id since has made the
/// directory its own, and it is left alone. Returns whether it was removed.
pub fn remove_if_stale(
    found: &ContainerLinks,
    stale: impl Fn(&ContainerLinks) -> bool,
) -> Result<bool> {
    match read_container(&found.dir, &found.namespace, &found.id)? {
        Some(now) if stale(&now) => {
            remove_links(&found.dir)?;
            if let Some(parent) = found.dir.parent() {
                let _ = fs::remove_dir(parent);
            }
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// Every container directory under the layout, with its links. A directory that goes away
/// while it is read is left out.
pub fn list(layout: &PinLayout) -> Result<Vec<ContainerLinks>> {
    let root = layout.containers_dir();
    let mut out = Vec::new();
    let namespaces = match fs::read_dir(&root) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(Error::path("read_dir", &root, e)),
    };
    for ns in namespaces.flatten() {
        let Ok(ids) = fs::read_dir(ns.path()) else {
            continue;
        };
        let namespace = pins::decode_name(&ns.file_name().to_string_lossy());
        for c in ids.flatten() {
            let id = pins::decode_name(&c.file_name().to_string_lossy());
            if let Some(found) = read_container(&c.path(), &namespace, &id)? {
                out.push(found);
            }
        }
    }
    out.sort_by(|a, b| (&a.namespace, &a.id).cmp(&(&b.namespace, &b.id)));
    Ok(out)
}
