//! tether's attach step: the container's cgroup and network namespace get the shared
//! programs from their pins (tetherd loads them once per node, started on demand when the
//! pins are missing), and a netlink watcher inside the namespace attaches to links added
//! later. Every wait has the plan's deadline.
use std::collections::HashMap;
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::spec::Spec;
use async_trait::async_trait;
use log::{info, warn};
use tether_api::types::{ContainerStatsInfo, InterfaceStatsInfo};
use tether_bpf::{container, Counters, PinLayout, Programs};
use tokio::io::unix::AsyncFd;
use tokio::task::JoinHandle;

use super::plan::{CountAt, Interfaces, Netns, Plan};
use super::priority;
use super::{AttachHook, CreatedContainer};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::locked;

/// Benchmark-only: each container loads its own copy of the programs (the load storm tether
/// exists to avoid), to compare against. Set in containerd's environment.
pub const NAIVE_LOAD_ENV: &str = "TETHER_BENCH_NAIVE_LOAD";
/// Benchmark-only: a file each attach appends its times to (see [`BenchRecord`]).
pub const TIMES_FILE_ENV: &str = "TETHER_BENCH_ATTACH_TIMES";

/// CPU time (user + system, all threads) this process has used so far.
fn cpu_time() -> Duration {
    match nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF) {
        Ok(u) => {
            let t = |tv: nix::sys::time::TimeVal| {
                Duration::new(tv.tv_sec() as u64, tv.tv_usec() as u32 * 1000)
            };
            t(u.user_time()) + t(u.system_time())
        }
        Err(_) => Duration::ZERO,
    }
}

/// How long this thread has waited for a CPU while runnable (the second field of
/// `/proc/thread-self/schedstat`); zero where the kernel does not keep it.
fn run_delay() -> Duration {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse().ok())
        .map(Duration::from_nanos)
        .unwrap_or_default()
}

/// One attach step's line in the benchmark's times file, started only when
/// [`TIMES_FILE_ENV`] is set: a container's create reads no clocks for it otherwise.
/// `cpu` and `runq` are the clocks' readings at the start, and after
/// [`BenchRecord::stop`] what the step took.
struct BenchRecord {
    path: PathBuf,
    cpu: Duration,
    runq: Duration,
}

impl BenchRecord {
    fn start() -> Option<Self> {
        let path = PathBuf::from(std::env::var_os(TIMES_FILE_ENV)?);
        Some(BenchRecord {
            path,
            cpu: cpu_time(),
            runq: run_delay(),
        })
    }

    /// The step is over: what it took of the CPU and of run-queue waits.
    fn stop(self) -> BenchRecord {
        BenchRecord {
            cpu: cpu_time().saturating_sub(self.cpu),
            runq: run_delay().saturating_sub(self.runq),
            path: self.path,
        }
    }

    /// Appends `<id> <wall µs> <cpu µs> <run-queue wait µs> <phase µs>...` (phases in
    /// [`AttachTimes::PHASES`] order) to the times file. Call it on a [`BenchRecord::stop`]ped
    /// record.
    fn finish(self, id: &str, wall_us: u128, t: &AttachTimes) {
        let mut line = format!(
            "{id} {wall_us} {} {}",
            self.cpu.as_micros(),
            self.runq.as_micros()
        );
        for d in t.phases() {
            line.push_str(&format!(" {}", d.as_micros()));
        }
        line.push('\n');
        let r = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .and_then(|mut f| std::io::Write::write_all(&mut f, line.as_bytes()));
        if let Err(e) = r {
            warn!("{}: {e}", self.path.display());
        }
    }
}

/// What the shim keeps of an attached container.
struct Tracked {
    namespace: String,
    layout: PinLayout,
    programs: Arc<Programs>,
    cgroup_id: u64,
    netns: Option<Arc<OwnedFd>>,
    only: Option<Vec<String>>,
    fail_closed: bool,
    watcher: Option<JoinHandle<()>>,
    /// The cgroup counters read just before `runc delete` (see [`AttachHook::before_delete`]).
    before_delete: Option<Counters>,
}

/// Where an attach step spent its time (logged with every attach).
struct AttachTimes {
    /// Taking the programs from this process's cache, or opening their pins.
    programs: Duration,
    /// Finding and opening the container's cgroup directory and network namespace.
    open: Duration,
    /// Map entries and cgroup links.
    cgroup: Duration,
    /// Entering the network namespace, TC links, the link watch socket.
    netns: Duration,
    /// Registering the link watcher.
    watch: Duration,
}

impl AttachTimes {
    /// Phase names: the log line's, and the benchmark times file's columns after
    /// `<id> <wall> <cpu> <run-queue wait>`.
    const PHASES: [&'static str; 5] = ["pins", "open", "cgroup", "netns", "watch"];

    fn phases(&self) -> [Duration; 5] {
        [
            self.programs,
            self.open,
            self.cgroup,
            self.netns,
            self.watch,
        ]
    }
}

/// The eBPF attach hook.
#[derive(Default)]
pub struct EbpfAttach {
    tracked: Mutex<HashMap<String, Tracked>>,
    programs: Mutex<HashMap<PathBuf, Arc<Programs>>>,
}

/// The pin layout the config names (default `/sys/fs/bpf/tether`).
pub(crate) fn layout(config: &Config) -> PinLayout {
    PinLayout::new(config.broker.pin_root())
}

fn attach_err(id: &str, reason: impl std::fmt::Display) -> Error {
    Error::Attach {
        id: id.to_string(),
        reason: reason.to_string(),
    }
}

/// The cgroup v2 directory of `pid`: its `0::` line in /proc/<pid>/cgroup under the cgroup2
/// mount (pure v2 at /sys/fs/cgroup, or the hybrid layout's unified mount).
fn cgroup2_dir(pid: u32) -> std::result::Result<PathBuf, String> {
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .map_err(|e| format!("read /proc/{pid}/cgroup: {e}"))?;
    cgroup2_dir_of(pid, &cgroup, &cgroup2_mount()?)
}

/// Where the cgroup2 file system is mounted; found once per process. The two usual places
/// are checked with statfs(2); only elsewhere is /proc/self/mountinfo read (it grows with
/// every container's rootfs mount, and reading it takes the mount table's lock).
fn cgroup2_mount() -> std::result::Result<PathBuf, String> {
    static MOUNT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    if let Some(m) = MOUNT.get() {
        return Ok(m.clone());
    }
    let usual = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .into_iter()
        .find(|p| {
            nix::sys::statfs::statfs(*p)
                .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
        })
        .map(PathBuf::from);
    let mount = match usual {
        Some(m) => m,
        None => {
            let mounts = std::fs::read_to_string("/proc/self/mountinfo")
                .map_err(|e| format!("read /proc/self/mountinfo: {e}"))?;
            cgroup2_mount_of(&mounts)?
        }
    };
    Ok(MOUNT.get_or_init(|| mount).clone())
}

/// The cgroup2 mount point in the text of /proc/self/mountinfo.
fn cgroup2_mount_of(mountinfo: &str) -> std::result::Result<PathBuf, String> {
    mountinfo
        .lines()
        .find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            right
                .starts_with("cgroup2 ")
                .then(|| left.split(' ').nth(4).map(PathBuf::from))?
        })
        .ok_or_else(|| "no cgroup2 file system is mounted".to_string())
}

/// [`cgroup2_dir`] over the text of /proc/<pid>/cgroup and the cgroup2 mount point.
fn cgroup2_dir_of(pid: u32, cgroup: &str, mount: &Path) -> std::result::Result<PathBuf, String> {
    let rel = cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .ok_or_else(|| format!("process {pid} is in no cgroup v2 (no 0:: line)"))?;
    if rel == "/" {
        return Err(format!(
            "process {pid} is at the root of the cgroup v2 hierarchy, not in a cgroup of its own"
        ));
    }
    Ok(mount.join(rel.trim_start_matches('/')))
}

/// The config file a tetherd started on demand is given: the one the runtime options named,
/// else `$TETHER_CONFIG`.
fn config_path(from_options: Option<&Path>) -> Option<PathBuf> {
    tether_api::paths::config_file(from_options)
}

fn tetherd_path(config: &Config) -> PathBuf {
    config
        .attach
        .tetherd
        .clone()
        .unwrap_or_else(tether_api::paths::tetherd)
}

impl EbpfAttach {
    pub fn new() -> Self {
        Self::default()
    }

    /// Attaches to interfaces added since create, for a container this process did not
    /// attach (`tether-runc start`). Nothing to do for a container tether does not track.
    pub async fn resync(
        &self,
        namespace: &str,
        id: &str,
        pid: u32,
        config: &Config,
        plan: &Plan,
    ) -> Result<()> {
        if !plan.enabled || plan.netns == Netns::Host || plan.interfaces == Interfaces::None {
            return Ok(());
        }
        let layout = layout(config);
        let (ns, cid) = (namespace.to_string(), id.to_string());
        let netns_path: PathBuf = match &plan.netns {
            Netns::Path(p) => p.clone(),
            _ => format!("/proc/{pid}/ns/net").into(),
        };
        let only = match &plan.interfaces {
            Interfaces::Named(n) => Some(n.clone()),
            _ => None,
        };
        let work = || -> tether_bpf::Result<usize> {
            let programs = match Programs::open(&layout, tether_bpf::VERSION) {
                Ok(p) => p,
                Err(tether_bpf::Error::NotLoaded { .. }) => return Ok(0),
                Err(e) => return Err(e),
            };
            let Some(cgid) = programs.maps().cgroup_of(&ns, &cid)? else {
                return Ok(0);
            };
            let netns = File::open(&netns_path).map_err(|e| tether_bpf::Error::Path {
                op: "open",
                path: netns_path.clone(),
                source: e,
            })?;
            let added = container::attach_netns_only(
                &programs,
                &layout,
                &ns,
                &cid,
                cgid,
                netns.as_fd(),
                only.as_deref(),
            )?;
            Ok(added.len())
        };
        // No unbounded wait inside: bpf(2), setns(2) and a netlink dump of the namespace.
        let r = work().map(|_| ()).map_err(|e| attach_err(id, e));
        match r {
            Err(e) if !plan.fail_closed => {
                warn!("{e} (failure policy: open)");
                Ok(())
            }
            other => other,
        }
    }

    /// Reads what a container this process did not attach needs read before `runc delete`
    /// removes its cgroup (and its local counters with it): the programs, opened once for
    /// both this read and [`EbpfAttach::detach_now`], and its cgroup counters now. `None`
    /// when the pins cannot be opened (nothing is loaded: nothing to detach).
    pub fn read_before_delete(namespace: &str, id: &str, config: &Config) -> Option<BeforeDelete> {
        let programs = Arc::new(Programs::open(&layout(config), tether_bpf::VERSION).ok()?);
        let maps = programs.maps();
        let counters = match maps.cgroup_of(namespace, id) {
            Ok(Some(cgid)) => maps.cgroup_counters(cgid).ok(),
            _ => None,
        };
        Some(BeforeDelete { programs, counters })
    }

    /// Detaches a container this process did not attach (the `delete` action), with what
    /// [`EbpfAttach::read_before_delete`] read before `runc delete`.
    pub async fn detach_now(
        &self,
        namespace: &str,
        id: &str,
        config: &Config,
        before: Option<BeforeDelete>,
    ) {
        let (programs, earlier) = match before {
            Some(b) => (Some(b.programs), b.counters),
            None => (None, None),
        };
        Self::remove(
            namespace.to_string(),
            id.to_string(),
            layout(config),
            programs,
            Some(socket(config)),
            earlier,
        )
        .await;
    }

    /// The programs from their pins; when they are missing, tetherd loads them (started on
    /// demand) and the pins are opened after.
    async fn programs(
        &self,
        config: &Config,
        config_path: Option<&Path>,
        id: &str,
    ) -> Result<(PinLayout, Arc<Programs>)> {
        let layout = layout(config);
        if std::env::var_os(NAIVE_LOAD_ENV).is_some() {
            return naive_load(&layout, id).await;
        }
        if let Some(p) = locked(&self.programs).get(layout.root()) {
            return Ok((layout, p.clone()));
        }
        let programs = match Programs::open(&layout, tether_bpf::VERSION) {
            Ok(p) => p,
            Err(tether_bpf::Error::NotLoaded { .. }) => {
                let socket = socket(config);
                let deadline = Duration::from_millis(config.attach.deadline_ms.unwrap_or(2000));
                let client = tether_api::Client::connect_or_spawn(
                    &socket,
                    &tetherd_path(config),
                    config_path,
                    deadline,
                )
                .await
                .map_err(|e| attach_err(id, e))?
                .with_timeout(deadline);
                client
                    .acquire(tether_bpf::VERSION)
                    .await
                    .map_err(|e| attach_err(id, e))?;
                Programs::open(&layout, tether_bpf::VERSION).map_err(|e| attach_err(id, e))?
            }
            Err(e) => return Err(attach_err(id, e)),
        };
        let programs = Arc::new(programs);
        locked(&self.programs).insert(layout.root().to_path_buf(), programs.clone());
        Ok((layout, programs))
    }

    /// Attaches a created container. The syscalls run on this thread: the shim's runtime is
    /// single-threaded and the work is a few hundred microseconds of bpf(2), setns(2) and
    /// netlink calls with no unbounded wait (a TCX link adds one RCU grace period, about
    /// 14 ms, per program and interface), while handing it to another thread would add a
    /// wait for a scheduler slot each way (milliseconds when containers start in a burst).
    /// Other requests to this shim wait for the step meanwhile, as they wait for Create.
    async fn try_attach(&self, c: &CreatedContainer<'_>, plan: &Plan) -> Result<AttachTimes> {
        let id = c.id;
        let config_path = config_path(c.config_path.as_deref());
        let t0 = std::time::Instant::now();
        let (layout, programs) = self.programs(c.config, config_path.as_deref(), id).await?;
        let t_programs = std::time::Instant::now();
        let cgroup_dir = cgroup2_dir(c.pid).map_err(|e| attach_err(id, e))?;
        let cgroup = File::open(&cgroup_dir)
            .map_err(|e| attach_err(id, format!("open {}: {e}", cgroup_dir.display())))?;
        let netns = match (&plan.netns, &plan.interfaces) {
            (Netns::Host, _) | (_, Interfaces::None) => None,
            (Netns::New, _) => Some(format!("/proc/{}/ns/net", c.pid).into()),
            (Netns::Path(p), _) => Some(p.clone()),
        };
        let netns = match netns {
            Some(p) => Some(Arc::new(OwnedFd::from(File::open(&p).map_err(|e| {
                attach_err(id, format!("open network namespace {}: {e}", p.display()))
            })?))),
            None => None,
        };
        let only = match &plan.interfaces {
            Interfaces::Named(n) => Some(n.clone()),
            _ => None,
        };
        let mut config = plan.config;
        // The namespace is the container's alone: count at its interfaces if it has any (a
        // prestart hook, as Docker's, has set them up by now). Not where TC keys are
        // ifindexes alone (kernels before 6.2): an interface whose ifindex another tracked
        // container's has is refused there, which would leave the container uncounted.
        if plan.count_at == CountAt::Auto
            && config.account
            && plan.netns == Netns::New
            && programs.netns_key() == tether_bpf::NetnsKey::Cookie
        {
            if let Some(netns) = &netns {
                config.count_at_interfaces =
                    container::has_interfaces(netns.as_fd(), only.as_deref())
                        .map_err(|e| attach_err(id, e))?;
            }
        }
        let t_open = std::time::Instant::now();
        let cg = container::attach_cgroup(
            &programs,
            &layout,
            c.namespace,
            id,
            cgroup.as_fd(),
            &config,
            &plan.deny,
        )
        .map_err(|e| attach_err(id, e))?;
        let t_cgroup = std::time::Instant::now();
        let watch = match &netns {
            Some(netns) => Some(
                container::attach_netns_and_watch(
                    &programs,
                    &layout,
                    c.namespace,
                    id,
                    cg.cgroup_id,
                    netns.as_fd(),
                    only.as_deref(),
                )
                .map_err(|e| attach_err(id, e))?
                .1,
            ),
            None => None,
        };
        let t_netns = std::time::Instant::now();
        let mut tracked = Tracked {
            namespace: c.namespace.to_string(),
            layout,
            programs,
            cgroup_id: cg.cgroup_id,
            netns,
            only,
            fail_closed: plan.fail_closed,
            watcher: None,
            before_delete: None,
        };
        if let Some(sock) = watch {
            tracked.watcher = Some(watch_links(id.to_string(), &tracked, sock)?);
        }
        locked(&self.tracked).insert(id.to_string(), tracked);
        Ok(AttachTimes {
            programs: t_programs - t0,
            open: t_open - t_programs,
            cgroup: t_cgroup - t_open,
            netns: t_netns - t_cgroup,
            watch: t_netns.elapsed(),
        })
    }

    /// Detaches a container; with `report_to`, its final counters go to tetherd (which keeps
    /// them readable for a while after the container is gone).
    /// `programs`: the pins this process opened already, if any (else they are opened).
    async fn remove(
        namespace: String,
        id: String,
        layout: PinLayout,
        programs: Option<Arc<Programs>>,
        report_to: Option<PathBuf>,
        earlier: Option<Counters>,
    ) {
        let naive = layout
            .root()
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("naive-"));
        if naive {
            let root = layout.root().to_path_buf();
            Self::remove_links(namespace, id, layout, programs, None, earlier).await;
            let _ = std::fs::remove_dir_all(root);
            return;
        }
        Self::remove_links(namespace, id, layout, programs, report_to, earlier).await;
    }

    async fn remove_links(
        namespace: String,
        id: String,
        layout: PinLayout,
        programs: Option<Arc<Programs>>,
        report_to: Option<PathBuf>,
        earlier: Option<Counters>,
    ) {
        let dir = match layout.container_dir(&namespace, &id) {
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
        .and_then(|p| container::detach(&p, &layout, &namespace, &id));
        match r {
            Ok(mut d) => {
                // The cgroup's local counters went with the cgroup at `runc delete`.
                if let Some(e) = &earlier {
                    d.counters.at_least(e);
                }
                let interfaces = d.interfaces.iter().map(|(k, c)| {
                    InterfaceStatsInfo::new(k.ifindex, k.netns_cookie, wire_counters(c))
                });
                let stats = ContainerStatsInfo::from_counters(
                    &namespace,
                    &id,
                    d.cgroup_id.unwrap_or(0),
                    wire_counters(&d.counters),
                    interfaces.collect(),
                    d.count_at_interfaces,
                );
                let c = &stats.total;
                info!(
                    "detached: {} links, {} map entries; final counters (at the {}) rx {} pkts {} B, tx {} pkts {} B, drops {}, denials {}",
                    d.links, d.map_entries, stats.counted_at, c.rx_packets, c.rx_bytes, c.tx_packets, c.tx_bytes, c.drops, c.denials
                );
                if let Some(socket) = report_to {
                    retire(&socket, stats).await;
                }
            }
            Err(e) => warn!("detach: {e}"),
        }
    }
}

/// What the `delete` action reads before `runc delete` (see [`EbpfAttach::read_before_delete`]).
pub struct BeforeDelete {
    programs: Arc<Programs>,
    counters: Option<Counters>,
}

fn socket(config: &Config) -> PathBuf {
    config.broker.socket()
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

/// How long a deleted container's counters may take to reach tetherd; delete does not wait
/// longer (tetherd down: the counters are still in the shim's log line).
const RETIRE_DEADLINE: Duration = Duration::from_millis(300);

/// Hands a deleted container's final counters to tetherd, if it runs. Best effort.
async fn retire(socket: &Path, stats: ContainerStatsInfo) {
    if !socket.exists() {
        return;
    }
    let sent = async {
        let client = tether_api::Client::connect(socket, RETIRE_DEADLINE)
            .await?
            .with_timeout(RETIRE_DEADLINE);
        client.retire(stats).await
    };
    match tokio::time::timeout(RETIRE_DEADLINE, sent).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => info!("final counters not handed to tetherd: {e}"),
        Err(_) => info!("final counters not handed to tetherd within {RETIRE_DEADLINE:?}"),
    }
}

/// Loads a private copy of the object for one container (benchmarks only). Built only with
/// the `bench-naive-load` feature: the loader (libbpf's object code, libelf, zlib and the
/// embedded object) is half a megabyte of code that a shim, which only opens pins, does not
/// need to map.
#[cfg(not(feature = "bench-naive-load"))]
async fn naive_load(_shared: &PinLayout, id: &str) -> Result<(PinLayout, Arc<Programs>)> {
    Err(attach_err(
        id,
        format!(
            "{NAIVE_LOAD_ENV} is set, but this shim was built without the benchmark-only \
             `bench-naive-load` feature"
        ),
    ))
}

/// Loads a private copy of the object for one container (benchmarks only).
#[cfg(feature = "bench-naive-load")]
async fn naive_load(shared: &PinLayout, id: &str) -> Result<(PinLayout, Arc<Programs>)> {
    let own = PinLayout::new(shared.root().join(format!("naive-{id}")));
    let l = own.clone();
    let cid = id.to_string();
    tokio::task::spawn_blocking(move || -> tether_bpf::Result<Programs> {
        shared_root_exists(&l)?;
        tether_bpf::programs::load_and_pin(&l, tether_bpf::VERSION)?;
        Programs::open(&l, tether_bpf::VERSION)
    })
    .await
    .map_err(|e| attach_err(&cid, e))?
    .map(|p| (own, Arc::new(p)))
    .map_err(|e| attach_err(id, e))
}

#[cfg(feature = "bench-naive-load")]
fn shared_root_exists(own: &PinLayout) -> tether_bpf::Result<()> {
    if let Some(parent) = own.root().parent() {
        std::fs::create_dir_all(parent).map_err(|e| tether_bpf::Error::Path {
            op: "mkdir",
            path: parent.to_path_buf(),
            source: e,
        })?;
    }
    Ok(())
}

/// Re-attaches whenever a link is added in the container's network namespace.
fn watch_links(id: String, t: &Tracked, sock: OwnedFd) -> Result<JoinHandle<()>> {
    let Some(netns) = t.netns.clone() else {
        return Err(attach_err(&id, "no network namespace to watch"));
    };
    // SAFETY: the AsyncFd owns the OwnedFd, which stays open and is the same fd for the
    // AsyncFd's whole life.
    let sock = unsafe { AsyncFd::register(sock) }
        .map_err(|e| Error::io("watch links", std::io::Error::from(e)))?;
    let (programs, layout, ns, only, cgid) = (
        t.programs.clone(),
        t.layout.clone(),
        t.namespace.clone(),
        t.only.clone(),
        t.cgroup_id,
    );
    Ok(tokio::spawn(async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let Ok(mut guard) = sock.readable().await else {
                return;
            };
            let mut new_link = false;
            // Drain what is queued; RTM_NEWLINK (16) at offset 4 of each nlmsghdr.
            loop {
                match nix::sys::socket::recv(
                    std::os::fd::AsRawFd::as_raw_fd(sock.get_ref()),
                    &mut buf,
                    nix::sys::socket::MsgFlags::empty(),
                ) {
                    Ok(0) => return,
                    Ok(n) => new_link |= crate::runc_compat::has_new_link(&buf[..n]),
                    Err(nix::errno::Errno::EAGAIN) => {
                        guard.clear_ready();
                        break;
                    }
                    Err(e) => {
                        warn!("link watch of {id}: {e}");
                        return;
                    }
                }
            }
            if !new_link {
                continue;
            }
            let (p, l, n, i, o, nsfd) = (
                programs.clone(),
                layout.clone(),
                ns.clone(),
                id.clone(),
                only.clone(),
                netns.clone(),
            );
            match container::attach_netns_only(&p, &l, &n, &i, cgid, nsfd.as_fd(), o.as_deref()) {
                Ok(added) => {
                    for a in added {
                        info!(
                            "{id}: attached to new interface {} (ifindex {})",
                            a.name, a.key.ifindex
                        );
                    }
                }
                Err(e) => warn!("{id}: attach to new interface: {e}"),
            }
        }
    }))
}

#[async_trait]
impl AttachHook for EbpfAttach {
    /// Resolves the plan and takes the programs from their pins (tetherd loads them first
    /// when they are missing) while runc has not run yet: the attach step after `runc
    /// create` then finds them open, and programs that cannot be had fail Create with nothing
    /// to undo (fail-closed) or leave the retry to the attach step (fail-open).
    async fn prepare(
        &self,
        id: &str,
        spec: &Spec,
        config: &Config,
        config_path: Option<&Path>,
    ) -> Result<()> {
        let plan = Plan::resolve(config, spec)?;
        // The naive benchmark mode loads inside the attach step, which is what it measures.
        if !plan.enabled || std::env::var_os(NAIVE_LOAD_ENV).is_some() {
            return Ok(());
        }
        let path = self::config_path(config_path);
        let r =
            match tokio::time::timeout(plan.deadline, self.programs(config, path.as_deref(), id))
                .await
            {
                Ok(r) => r.map(|_| ()),
                Err(_) => Err(attach_err(
                    id,
                    format!(
                        "programs not available within the deadline of {:?}",
                        plan.deadline
                    ),
                )),
            };
        match r {
            Err(e) if !plan.fail_closed => {
                warn!("{e} (failure policy: open; the attach step tries again)");
                Ok(())
            }
            other => other,
        }
    }

    async fn attach(&self, c: &CreatedContainer<'_>) -> Result<()> {
        let plan = Plan::resolve(c.config, c.spec)?;
        if !plan.enabled {
            return Ok(());
        }
        let started = std::time::Instant::now();
        let bench = BenchRecord::start();
        let raised = plan.nice.and_then(priority::Raised::to);
        let r = tokio::time::timeout(plan.deadline, self.try_attach(c, &plan)).await;
        // The step is over here: what follows the return to the thread's own priority (a
        // wait for a CPU, under load) is not the step's.
        let wall = started.elapsed().as_micros();
        let bench = bench.map(BenchRecord::stop);
        let ran_at = raised
            .as_ref()
            .and(plan.nice)
            .map(|n| format!(", at nice {n}"))
            .unwrap_or_default();
        drop(raised);
        let r = match r {
            Ok(Ok(t)) => {
                if let Some(b) = bench {
                    b.finish(c.id, wall, &t);
                }
                let phases: Vec<String> = AttachTimes::PHASES
                    .iter()
                    .zip(t.phases())
                    .map(|(n, d)| format!("{n} {} us", d.as_micros()))
                    .collect();
                info!(
                    "attached {} in {wall} us ({}){ran_at}",
                    c.id,
                    phases.join(", ")
                );
                Ok(())
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(attach_err(
                c.id,
                format!("not done within the deadline of {:?}", plan.deadline),
            )),
        };
        let Err(e) = r else { return Ok(()) };
        // Nothing half-attached stays behind, whatever the policy.
        if let Some(mut t) = locked(&self.tracked).remove(c.id) {
            if let Some(w) = t.watcher.take() {
                w.abort();
            }
        }
        let layout = layout(c.config);
        let programs = locked(&self.programs).get(layout.root()).cloned();
        Self::remove(
            c.namespace.to_string(),
            c.id.to_string(),
            layout,
            programs,
            None,
            None,
        )
        .await;
        if plan.fail_closed {
            Err(e)
        } else {
            warn!("{e}; the container runs without its programs (failure policy: open)");
            Ok(())
        }
    }

    async fn before_start(&self, id: &str, _pid: u32) -> Result<()> {
        let job = {
            let map = locked(&self.tracked);
            let Some(t) = map.get(id) else { return Ok(()) };
            let Some(netns) = t.netns.clone() else {
                return Ok(());
            };
            (
                t.programs.clone(),
                t.layout.clone(),
                t.namespace.clone(),
                t.only.clone(),
                t.cgroup_id,
                netns,
                t.fail_closed,
            )
        };
        let (p, l, ns, only, cgid, netns, fail_closed) = job;
        // Interfaces a caller added between create and start (CNI run by the caller).
        let r = container::attach_netns_only(&p, &l, &ns, id, cgid, netns.as_fd(), only.as_deref())
            .map(|added| {
                for a in added {
                    info!(
                        "{id}: attached to {} (ifindex {}) before start",
                        a.name, a.key.ifindex
                    );
                }
            })
            .map_err(|e| attach_err(id, e));
        match r {
            Err(e) if !fail_closed => {
                warn!("{e} (failure policy: open)");
                Ok(())
            }
            other => other,
        }
    }

    async fn before_delete(&self, id: &str) {
        let mut map = locked(&self.tracked);
        let Some(t) = map.get_mut(id) else { return };
        match t.programs.maps().cgroup_counters(t.cgroup_id) {
            Ok(c) => t.before_delete = Some(c),
            Err(e) => warn!("{id}: counters before delete: {e}"),
        }
    }

    async fn detach(&self, namespace: &str, id: &str, config: &Config) {
        let t = locked(&self.tracked).remove(id);
        let earlier = t.as_ref().and_then(|t| t.before_delete);
        let (layout, programs) = match t {
            Some(mut t) => {
                if let Some(w) = t.watcher.take() {
                    w.abort();
                }
                // clsact filters are not pinned: remove them while the shim still holds
                // the namespace (runc delete has already run).
                if let Some(netns) = t.netns.clone() {
                    if tether_bpf::tc::TcAttach::probe() == tether_bpf::tc::TcAttach::Clsact {
                        if let Err(e) =
                            container::detach_clsact(&t.programs, netns.as_fd(), t.cgroup_id)
                        {
                            warn!("{id}: remove clsact filters: {e}");
                        }
                    }
                }
                (t.layout, Some(t.programs))
            }
            None => (layout(config), None),
        };
        Self::remove(
            namespace.to_string(),
            id.to_string(),
            layout,
            programs,
            Some(socket(config)),
            earlier,
        )
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PURE_V2: &str = "25 1 0:22 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw\n";
    const HYBRID: &str = "30 25 0:26 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n\
                          31 25 0:27 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n";

    #[test]
    fn cgroup_dir_on_pure_v2_and_hybrid() {
        let cg = "0::/default/web\n";
        let pure = cgroup2_mount_of(PURE_V2).unwrap();
        assert_eq!(pure, PathBuf::from("/sys/fs/cgroup"));
        assert_eq!(
            cgroup2_dir_of(1, cg, &pure).unwrap(),
            PathBuf::from("/sys/fs/cgroup/default/web")
        );
        let cg = "4:memory:/default/web\n0::/default/web\n";
        let hybrid = cgroup2_mount_of(HYBRID).unwrap();
        assert_eq!(
            cgroup2_dir_of(1, cg, &hybrid).unwrap(),
            PathBuf::from("/sys/fs/cgroup/unified/default/web")
        );
    }

    #[test]
    fn no_cgroup_of_its_own_is_an_error() {
        let root = Path::new("/sys/fs/cgroup");
        let e = cgroup2_dir_of(7, "0::/\n", root).unwrap_err();
        assert!(e.contains("root of the cgroup v2 hierarchy"), "{e}");
        let e = cgroup2_dir_of(7, "4:memory:/x\n", root).unwrap_err();
        assert!(e.contains("no 0:: line"), "{e}");
        let e = cgroup2_mount_of("30 25 0:26 / /sys/fs/cgroup/memory rw - cgroup cgroup rw\n")
            .unwrap_err();
        assert!(e.contains("no cgroup2"), "{e}");
    }

    #[test]
    fn this_machine_has_a_cgroup2_mount() {
        let m = cgroup2_mount().unwrap();
        assert!(m.join("cgroup.procs").exists(), "{}", m.display());
    }
}
