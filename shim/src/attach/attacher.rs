//! The one attach path of every front-end: the task service, the shim's `delete` action and
//! `tether-runc` all drive an [`Attacher`] through the same steps of a container's life
//! (see the [module docs](super)). It owns the step's policy: the plan's deadline, its
//! failure policy (fail-closed: the caller fails; fail-open: log and go on), what is kept of
//! an attached container, and the log line of every attach. The kernel side is
//! [`cgroup_netns`]'s, the programs [`programs`]'s, the link watcher [`watch`]'s.
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use log::{info, warn};
use tether_bpf::{container, Counters, PinLayout, Programs};
use tokio::task::JoinHandle;

use super::cgroup_netns::{self, Attachment};
use super::plan::Plan;
use super::programs::{self, ProgramCache};
use super::{priority, watch};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::lock::locked;
use crate::spec::{native_seccomp_arch, Hardening, CAP_NET_RAW};

/// What the attacher sees of a container that runc has created but not started.
pub struct CreatedContainer<'a> {
    pub namespace: &'a str,
    pub id: &'a str,
    /// The container's plan, resolved once by the front-end (before `prepare`).
    pub plan: &'a Plan,
    pub config: &'a Config,
    /// The config file the runtime options named, if any (passed to a tetherd started on
    /// demand).
    pub config_path: Option<PathBuf>,
    /// The container's init process, stopped before its first instruction.
    pub pid: u32,
}

/// What the attacher keeps of a container it attached.
struct Tracked {
    attachment: Arc<Attachment>,
    /// The container's plan, for what `auto` decides at start.
    plan: Plan,
    /// Its init process, stopped before its first instruction until start.
    pid: u32,
    watcher: Option<JoinHandle<()>>,
    /// The cgroup counters read just before `runc delete` (see [`Attacher::before_delete`]).
    before_delete: Option<Counters>,
}

/// What [`Attacher::before_delete`] read of a container another process attached: the
/// programs (opened once, for this read and the detach) and its cgroup counters.
struct ReadBeforeDelete {
    programs: Arc<Programs>,
    counters: Option<Counters>,
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
    /// Whether the step left the container judged at its interfaces.
    judged_at_interfaces: bool,
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

/// Attaches containers to the shared programs and detaches them. One per process: the
/// shim's serves every container of its group; `delete` and `tether-runc` make one for the
/// container they act on.
#[derive(Default)]
pub struct Attacher {
    tracked: Mutex<HashMap<String, Tracked>>,
    untracked: Mutex<HashMap<String, ReadBeforeDelete>>,
    programs: ProgramCache,
}

/// [`Attacher::hardening`] of a container under a policy on a node without tether's LSM
/// programs.
pub fn hardening_without_lsm(plan: &Plan) -> Hardening {
    hardening_for(
        plan,
        native_seccomp_arch(),
        tether_bpf::features::CgroupSockets::probe() == tether_bpf::features::CgroupSockets::Blind,
    )
}

/// [`hardening_without_lsm`] for the native seccomp architecture `arch` and whether the
/// cgroup programs are blind to the container's sockets (`blind`): then no cgroup
/// `setsockopt` hook refuses even a 64-bit `PACKET_QDISC_BYPASS`, and only taking away
/// packet sockets keeps their frames from slipping past TC.
pub(crate) fn hardening_for(plan: &Plan, arch: Option<&'static str>, blind: bool) -> Hardening {
    match arch {
        Some(arch) if !plan.config.refuse_packet_sockets && !blind => Hardening {
            withheld: &[],
            native_abi: Some(arch),
        },
        _ => Hardening {
            withheld: &[CAP_NET_RAW],
            native_abi: None,
        },
    }
}

/// `r`, or under a fail-open plan its error logged (with `then`, what happens next) and `Ok`.
fn policy(r: Result<()>, fail_closed: bool, then: &str) -> Result<()> {
    match r {
        Err(e) if !fail_closed => {
            warn!("{e} (failure policy: open{then})");
            Ok(())
        }
        other => other,
    }
}

impl Attacher {
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes the programs from their pins (tetherd loads them first when they are missing)
    /// while runc has not run yet: the attach step after `runc create` then finds them
    /// open, and programs that cannot be had fail Create with nothing to undo (fail-closed)
    /// or leave the retry to the attach step (fail-open). `config_path`: the config file
    /// the runtime options named.
    pub async fn prepare(
        &self,
        id: &str,
        plan: &Plan,
        config: &Config,
        config_path: Option<&Path>,
    ) -> Result<()> {
        // The naive benchmark mode loads inside the attach step, which is what it measures.
        if !plan.enabled || programs::naive_load_asked() {
            return Ok(());
        }
        let path = programs::config_path(config_path);
        let get = self.programs.get(config, path.as_deref(), id);
        let r = match tokio::time::timeout(plan.deadline, get).await {
            Ok(r) => r.map(|_| ()),
            Err(_) => Err(Error::attach(
                id,
                format!(
                    "programs not available within the deadline of {:?}",
                    plan.deadline
                ),
            )),
        };
        policy(r, plan.fail_closed, "; the attach step tries again")
    }

    /// What a container under `plan` must run without, once [`Attacher::prepare`] has the
    /// programs, where the kernel does not run tether's LSM programs (which refuse packet
    /// sockets where no TC program judges them, and `PACKET_QDISC_BYPASS` from 32-bit
    /// callers):
    /// - with no TC program to judge its frames (the host's network, `interfaces = none`),
    ///   no `CAP_NET_RAW`: its packet sockets would write frames no program judges. Raw IP
    ///   sockets go with it; ping works through ICMP datagram sockets where
    ///   `net.ipv4.ping_group_range` allows them;
    /// - with TC programs, only the native system call ABI: a 32-bit `setsockopt()`, which
    ///   the cgroup hook never sees, could set `PACKET_QDISC_BYPASS` and send frames past TC.
    ///   Where the architecture has no seccomp name here, or where the cgroup programs are
    ///   blind to its sockets (`cgroup-sockets: blind`: no cgroup hook refuses even a 64-bit
    ///   `PACKET_QDISC_BYPASS`), `CAP_NET_RAW` goes instead.
    pub fn hardening(&self, plan: &Plan, config: &Config) -> Hardening {
        let unguarded = self
            .programs
            .cached(&programs::layout(config))
            .is_some_and(|p| !p.lsm_guards());
        if !(plan.enabled && plan.config.policy && unguarded) {
            return Hardening::default();
        }
        hardening_without_lsm(plan)
    }

    /// Attaches a created container; on failure nothing half-attached stays behind, and
    /// under a fail-closed plan the error is returned (the caller deletes the container).
    pub async fn attach(&self, c: &CreatedContainer<'_>) -> Result<()> {
        let plan = c.plan;
        if !plan.enabled {
            return Ok(());
        }
        let started = Instant::now();
        #[cfg(feature = "bench")]
        let bench = super::bench::Record::start();
        let raised = plan.nice.and_then(priority::Raised::to);
        let r = tokio::time::timeout(plan.deadline, self.try_attach(c)).await;
        // The step is over here: what follows the return to the thread's own priority (a
        // wait for a CPU, under load) is not the step's.
        let wall = started.elapsed().as_micros();
        #[cfg(feature = "bench")]
        let bench = bench.map(super::bench::Record::stop);
        let ran_at = raised
            .as_ref()
            .and(plan.nice)
            .map(|n| format!(", at nice {n}"))
            .unwrap_or_default();
        drop(raised);
        let r = match r {
            Ok(Ok(t)) => {
                #[cfg(feature = "bench")]
                if let Some(b) = bench {
                    b.finish(c.id, wall, &t.phases());
                }
                let phases: Vec<String> = AttachTimes::PHASES
                    .iter()
                    .zip(t.phases())
                    .map(|(n, d)| format!("{n} {} us", d.as_micros()))
                    .collect();
                let judged = if t.judged_at_interfaces {
                    "; judged at its interfaces (no cgroup egress program)"
                } else {
                    ""
                };
                info!(
                    "attached {} in {wall} us ({}){ran_at}{judged}",
                    c.id,
                    phases.join(", ")
                );
                Ok(())
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Error::attach(
                c.id,
                format!("not done within the deadline of {:?}", plan.deadline),
            )),
        };
        let Err(e) = r else { return Ok(()) };
        // Nothing half-attached stays behind, whatever the policy.
        let removed = locked(&self.tracked).remove(c.id);
        if let Some(mut t) = removed {
            if let Some(w) = t.watcher.take() {
                w.abort();
            }
            t.attachment.stop_watching();
        }
        let layout = programs::layout(c.config);
        let cached = self.programs.cached(&layout);
        cgroup_netns::detach(c.namespace, c.id, layout, cached, None, None).await;
        if plan.fail_closed {
            Err(e)
        } else {
            warn!("{e}; the container runs without its programs (failure policy: open)");
            Ok(())
        }
    }

    /// The attach step proper. The syscalls run on this thread: the shim's runtime is
    /// single-threaded and the work is a few hundred microseconds of bpf(2), setns(2) and
    /// netlink calls with no unbounded wait (a TCX link adds one RCU grace period, about
    /// 14 ms, per program and interface), while handing it to another thread would add a
    /// wait for a scheduler slot each way (milliseconds when containers start in a burst).
    /// Other requests to this shim wait for the step meanwhile, as they wait for Create.
    async fn try_attach(&self, c: &CreatedContainer<'_>) -> Result<AttachTimes> {
        let t0 = Instant::now();
        let config_path = programs::config_path(c.config_path.as_deref());
        let (layout, programs) = self
            .programs
            .get(c.config, config_path.as_deref(), c.id)
            .await?;
        let t_programs = t0.elapsed();
        let a = cgroup_netns::attach(c.namespace, c.id, c.pid, c.plan, layout, programs)?;
        let t_watch = Instant::now();
        let attachment = Arc::new(a.attachment);
        let watcher = match a.watch {
            Some(sock) => Some(watch::spawn(attachment.clone(), sock)?),
            None => None,
        };
        let tracked = Tracked {
            attachment,
            plan: c.plan.clone(),
            pid: c.pid,
            watcher,
            before_delete: None,
        };
        locked(&self.tracked).insert(c.id.to_string(), tracked);
        Ok(AttachTimes {
            programs: t_programs,
            open: a.open,
            cgroup: a.cgroup,
            netns: a.netns,
            watch: t_watch.elapsed(),
            judged_at_interfaces: a.judged_at_interfaces,
        })
    }

    /// Just before `runc start`: interfaces a caller added since create (CNI run by the
    /// caller, Docker 28) get programs, and `auto` moves a container that has one now to
    /// its interfaces ([`cgroup_netns::settle_at_start`]).
    pub async fn before_start(&self, id: &str) -> Result<()> {
        let (attachment, plan, pid) = {
            let map = locked(&self.tracked);
            let Some(t) = map.get(id) else { return Ok(()) };
            (t.attachment.clone(), t.plan.clone(), t.pid)
        };
        policy(at_start(&attachment, &plan, pid), plan.fail_closed, "")
    }

    /// [`Attacher::before_start`] for a container another process attached (`tether-runc
    /// start`): found from its pins, with its plan and init `pid`. Nothing to do for a
    /// container tether does not track.
    pub async fn before_start_from_pins(
        &self,
        namespace: &str,
        id: &str,
        pid: u32,
        config: &Config,
        plan: &Plan,
    ) -> Result<()> {
        if !plan.enabled {
            return Ok(());
        }
        let layout = programs::layout(config);
        // Whatever order of runc calls the caller makes: a container that its create did
        // not attach (created by runc itself, or under an open plan whose attach failed)
        // does not start under a fail-closed plan.
        if !layout
            .container_dir(namespace, id)
            .is_ok_and(|d| d.is_dir())
        {
            let e = Error::attach(
                id,
                "it has no programs: it was not created through tether-runc, or its attach \
                 failed",
            );
            return policy(Err(e), plan.fail_closed, "; it starts without programs");
        }
        let Some(netns) = plan.netns_path(pid) else {
            return Ok(());
        };
        let r = match Attachment::from_pins(layout, namespace, id, &netns, plan.tc_select()) {
            Ok(Some(a)) => at_start(&a, plan, pid),
            Ok(None) => Ok(()),
            Err(e) => Err(Error::attach(id, e)),
        };
        policy(r, plan.fail_closed, "")
    }

    /// The container has stopped and `runc delete` comes next, which removes its cgroup
    /// and its local counters with it: they are read now, for [`Attacher::detach`]. For a
    /// container another process attached, the programs are opened here (once, for this
    /// read and the detach); nothing is read when it has no pins.
    pub fn before_delete(&self, namespace: &str, id: &str, config: &Config) {
        if let Some(t) = locked(&self.tracked).get_mut(id) {
            let a = &t.attachment;
            mark_deleting(&a.layout, namespace, id);
            match a.programs.maps().cgroup_counters(a.cgroup_id) {
                Ok(c) => t.before_delete = Some(c),
                Err(e) => warn!("{id}: counters before delete: {e}"),
            }
            return;
        }
        let layout = programs::layout(config);
        if !layout
            .container_dir(namespace, id)
            .is_ok_and(|d| d.exists())
        {
            return;
        }
        mark_deleting(&layout, namespace, id);
        let Ok(programs) = Programs::open(&layout, tether_bpf::VERSION) else {
            return;
        };
        let maps = programs.maps();
        let counters = match maps.cgroup_of(namespace, id) {
            Ok(Some(cgid)) => maps.cgroup_counters(cgid).ok(),
            _ => None,
        };
        let read = ReadBeforeDelete {
            programs: Arc::new(programs),
            counters,
        };
        locked(&self.untracked).insert(id.to_string(), read);
    }

    /// After `runc delete`: the container's links and map entries go, and its final
    /// counters to tetherd. Also for a container another process attached (the shim died,
    /// or `tether-runc`): idempotent.
    pub async fn detach(&self, namespace: &str, id: &str, config: &Config) {
        let socket = Some(cgroup_netns::ReportTo {
            socket: programs::socket(config),
            deadline: config.attach.deadline(),
        });
        let tracked = locked(&self.tracked).remove(id);
        if let Some(mut t) = tracked {
            if let Some(w) = t.watcher.take() {
                w.abort();
            }
            t.attachment.stop_watching();
            // runc delete has already run; the attachment still holds the namespace.
            t.attachment.detach_clsact();
            let a = &t.attachment;
            let (layout, programs) = (a.layout.clone(), Some(a.programs.clone()));
            cgroup_netns::detach(namespace, id, layout, programs, socket, t.before_delete).await;
            return;
        }
        let read = locked(&self.untracked).remove(id);
        let (programs, earlier) = match read {
            Some(r) => (Some(r.programs), r.counters),
            None => (None, None),
        };
        let layout = programs::layout(config);
        cgroup_netns::detach(namespace, id, layout, programs, socket, earlier).await;
    }
}

/// Keeps tetherd's garbage collection off a container from `runc delete` (which removes
/// its cgroup) to its detach, which hands its final counters on. Best effort: unmarked, a
/// collection in that window takes the counters with the pins.
fn mark_deleting(layout: &PinLayout, namespace: &str, id: &str) {
    if let Err(e) = container::mark_deleting(layout, namespace, id) {
        warn!("{id}: marking it as being deleted: {e}");
    }
}

/// What is done just before `runc start`: the interfaces added since create are attached,
/// then `auto` has its say ([`cgroup_netns::settle_at_start`]).
fn at_start(a: &Attachment, plan: &Plan, pid: u32) -> Result<()> {
    attach_added(a)?;
    cgroup_netns::settle_at_start(a, plan, pid)
}

/// Attaches to the interfaces added since the last visit, and logs them.
fn attach_added(a: &Attachment) -> Result<()> {
    let added = a
        .attach_new_interfaces()
        .map_err(|e| Error::attach(&a.id, e))?;
    for i in added {
        info!(
            "{}: attached to {} (ifindex {}) before start",
            a.id, i.name, i.key.ifindex
        );
    }
    Ok(())
}
