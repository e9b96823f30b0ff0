//! The task API (`containerd.task.v2.Task` / `v3`) over runc.
//!
//! State transitions that must be ordered against exits (create, start, exec start)
//! and the handling of exits hold `lifecycle`, so a process that exits the moment it
//! starts still gets its TaskStart before its TaskExit, and its pid is known before
//! its exit is looked up.

mod exec_spec;
mod lifecycle;
mod task;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::atomic::{AtomicUsize, Ordering},
    sync::{Arc, Mutex, Weak},
    time::{Duration, Instant},
};

use async_trait::async_trait;
use containerd_shim::{
    asynchronous::io::Stdio,
    protos::{
        api::*,
        events::task::*,
        protobuf::{well_known_types::empty::Empty, MessageField},
        shim::oci::ProcessDetails,
        shim_async::Task,
        ttrpc::{self, r#async::TtrpcContext},
    },
};
use log::{debug, info, warn};
use nix::sys::signal::{kill, Signal};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{
    attach::attacher::{Attacher, CreatedContainer},
    attach::plan::Plan,
    config::Config,
    container::{load_spec, read_pid, Container},
    error::{Error, Result},
    events::Events,
    lock::locked,
    options::{checkpoint_options, ShimOptions},
    process::{timestamp, Process},
    reaper::{Exit, Reaper},
    runc::{CheckpointArgs, Runc},
    stdio::{resize, Prepared},
};

pub struct TaskService {
    namespace: String,
    reaper: Arc<Reaper>,
    events: Arc<Events>,
    containers: Mutex<HashMap<String, Arc<Container>>>,
    lifecycle: Arc<tokio::sync::Mutex<()>>,
    attacher: Arc<Attacher>,
    shutdown: CancellationToken,
    /// Creates in flight: a shim that holds no container yet is not idle while one runs.
    creates: AtomicUsize,
}

/// How long a shim may hold no container, with no create in flight, before it concludes
/// that no containerd will use it. containerd creates a container right after it starts
/// the shim, and shuts the shim down right after it deletes the last container; a shim
/// that stays empty was started (or emptied) by a containerd that died in between, and
/// containerd 1.6 never collects such a shim, nor its bundle.
pub const ORPHAN_GRACE: Duration = Duration::from_secs(30);

/// How often the shim looks whether it is orphaned.
const ORPHAN_CHECK: Duration = Duration::from_secs(2);

/// Counts a create in flight for as long as it lives.
pub(super) struct CreateInFlight<'a>(&'a AtomicUsize);

impl<'a> CreateInFlight<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Self(count)
    }
}

impl Drop for CreateInFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl TaskService {
    /// Creates the service and spawns the task that turns process exits into state
    /// and events.
    pub fn new(
        namespace: &str,
        reaper: Arc<Reaper>,
        exits: mpsc::UnboundedReceiver<Exit>,
        events: Events,
        attacher: Arc<Attacher>,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        let s = Arc::new(Self {
            namespace: namespace.to_string(),
            reaper,
            events: Arc::new(events),
            containers: Mutex::new(HashMap::new()),
            lifecycle: Arc::new(tokio::sync::Mutex::new(())),
            attacher,
            shutdown,
            creates: AtomicUsize::new(0),
        });
        tokio::spawn(Self::handle_exits(Arc::downgrade(&s), exits));
        tokio::spawn(Self::watch_orphaned(Arc::downgrade(&s), ORPHAN_GRACE));
        s
    }

    fn container(&self, id: &str) -> Result<Arc<Container>> {
        locked(&self.containers)
            .get(id)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("container {id}")))
    }

    /// Whether the shim holds no container and has no create in flight.
    fn is_empty(&self) -> bool {
        self.creates.load(Ordering::SeqCst) == 0 && locked(&self.containers).is_empty()
    }

    /// Shuts the shim down once it has been empty (see [`ORPHAN_GRACE`]) for `grace`. Its
    /// going closes the connection of a containerd that loaded it since it was orphaned,
    /// which then removes its bundle, as for any shim that died.
    async fn watch_orphaned(this: Weak<Self>, grace: Duration) {
        let mut empty_since: Option<Instant> = None;
        loop {
            tokio::time::sleep(ORPHAN_CHECK.min(grace)).await;
            let Some(s) = this.upgrade() else { return };
            if !s.is_empty() {
                empty_since = None;
                continue;
            }
            let since = *empty_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= grace {
                warn!(
                    "no container for {} s and none being created: the containerd that started \
                     this shim is gone; shutting down",
                    grace.as_secs()
                );
                s.shutdown.cancel();
                return;
            }
        }
    }

    async fn handle_exits(this: Weak<Self>, mut exits: mpsc::UnboundedReceiver<Exit>) {
        while let Some(exit) = exits.recv().await {
            let Some(s) = this.upgrade() else { return };
            let _g = s.lifecycle.lock().await;
            let containers: Vec<_> = locked(&s.containers).values().cloned().collect();
            for c in containers {
                let Some(p) = c.process_by_pid(exit.pid as u32) else {
                    continue;
                };
                debug!(
                    "container {} process {:?} pid {} exited {}",
                    c.id, p.exec_id, exit.pid, exit.status
                );
                if p.exec_id.is_empty() && c.shared_pid_ns {
                    // Without its own pid namespace the container's other processes
                    // outlive init; the runc shim kills them too, before the exit is seen.
                    if let Err(e) = c.runc.kill(&c.id, Signal::SIGKILL as u32, true).await {
                        debug!("kill remaining processes of {}: {e}", c.id);
                    }
                }
                // As the runc shim: the exit is recorded (Wait returns), then published.
                p.set_exited(exit);
                s.events
                    .send(TaskExit {
                        container_id: c.id.clone(),
                        id: if p.exec_id.is_empty() {
                            c.id.clone()
                        } else {
                            p.exec_id.clone()
                        },
                        pid: exit.pid as u32,
                        exit_status: exit.status,
                        exited_at: MessageField::some(timestamp(exit.at)),
                        ..Default::default()
                    })
                    .await;
                break;
            }
        }
    }
}

/// Adds criu's own reason (the error lines of its dump log) to a failed checkpoint.
fn with_criu_log(e: Error, work: &Path) -> Error {
    let Error::Runc(mut r) = e else { return e };
    let log = work.join("dump.log");
    if let Ok(text) = std::fs::read_to_string(&log) {
        let reasons: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("Error") || l.contains("error"))
            .collect();
        let tail = &reasons[reasons.len().saturating_sub(3)..];
        if !tail.is_empty() {
            r.message = format!(
                "{}; criu ({}): {}",
                r.message,
                log.display(),
                tail.join(" | ")
            );
        }
    }
    Error::Runc(r)
}

fn delete_response(p: &Process) -> DeleteResponse {
    let exit = p.exit();
    DeleteResponse {
        pid: p.pid(),
        exit_status: exit.map(|e| e.status).unwrap_or(0),
        exited_at: exit.map(|e| timestamp(e.at)).into(),
        ..Default::default()
    }
}

fn state_response(c: &Container, p: &Process) -> StateResponse {
    let exit = p.exit();
    StateResponse {
        id: if p.exec_id.is_empty() {
            c.id.clone()
        } else {
            p.exec_id.clone()
        },
        bundle: c.bundle.display().to_string(),
        pid: p.pid(),
        status: p.status().into(),
        stdin: p.stdio.stdin.clone(),
        stdout: p.stdio.stdout.clone(),
        stderr: p.stdio.stderr.clone(),
        terminal: p.stdio.terminal,
        exit_status: exit.map(|e| e.status).unwrap_or(0),
        exited_at: exit.map(|e| timestamp(e.at)).into(),
        exec_id: p.exec_id.clone(),
        ..Default::default()
    }
}

type TtrpcResult<T> = ttrpc::Result<T>;

fn log_err<T>(what: &str, id: &str, r: Result<T>) -> TtrpcResult<T> {
    r.map_err(|e| {
        debug!("{what} {id}: {e}");
        e.into()
    })
}
