//! The shim as a subreaper: the one place that calls `wait`.
//!
//! Every child the shim spawns (runc invocations) and every orphan that lands on it
//! (container processes, once runc has exited) is reaped here. A child spawned through
//! [`Reaper::spawn`] is registered *under the same lock* as the spawn itself, so its
//! exit can never be reaped before someone is waiting for it (the race a plain
//! `Child::wait` next to a `waitpid(-1)` loop loses). Exits of processes nobody spawned
//! through us (container init and exec processes) go to the stream returned by
//! [`Reaper::start`].

use std::{
    collections::HashMap,
    process::{Child, Command},
    sync::{Arc, Mutex},
    time::SystemTime,
};

use log::{debug, warn};
use nix::{
    sys::wait::{waitpid, WaitPidFlag, WaitStatus},
    unistd::Pid,
};
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::{mpsc, oneshot},
};

use crate::error::{Error, Result};

/// How a process ended, in containerd's encoding: the exit code, or 128 + the
/// signal that killed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    pub pid: i32,
    pub status: u32,
    pub at: SystemTime,
}

impl Exit {
    fn from_wait(ws: WaitStatus) -> Option<Self> {
        let (pid, status) = match ws {
            WaitStatus::Exited(pid, code) => (pid, code as u32),
            WaitStatus::Signaled(pid, sig, _) => (pid, 128 + sig as u32),
            _ => return None,
        };
        Some(Exit {
            pid: pid.as_raw(),
            status,
            at: SystemTime::now(),
        })
    }
}

#[derive(Default)]
struct Waiters {
    by_pid: HashMap<i32, oneshot::Sender<Exit>>,
}

/// Reaps children; hands each exit to whoever spawned it, or to the orphan stream.
pub struct Reaper {
    waiters: Mutex<Waiters>,
}

impl Reaper {
    /// Makes this process a subreaper and starts reaping on SIGCHLD. Returns the
    /// reaper and the stream of exits of processes not spawned through it.
    ///
    /// Must be called from within the tokio runtime, before any child is spawned.
    pub fn start() -> Result<(Arc<Self>, mpsc::UnboundedReceiver<Exit>)> {
        nix::sys::prctl::set_child_subreaper(true)
            .map_err(|e| Error::sys("prctl(PR_SET_CHILD_SUBREAPER)", e))?;
        let mut sigchld =
            signal(SignalKind::child()).map_err(|e| Error::io("install SIGCHLD handler", e))?;
        let reaper = Arc::new(Reaper {
            waiters: Mutex::new(Waiters::default()),
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let r = reaper.clone();
        tokio::spawn(async move {
            loop {
                r.reap_all(&tx);
                if sigchld.recv().await.is_none() {
                    break;
                }
            }
        });
        Ok((reaper, rx))
    }

    fn reap_all(&self, orphans: &mpsc::UnboundedSender<Exit>) {
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => return,
                Ok(ws) => {
                    let Some(exit) = Exit::from_wait(ws) else {
                        continue;
                    };
                    let waiter = self.lock().by_pid.remove(&exit.pid);
                    match waiter {
                        Some(w) => {
                            let _ = w.send(exit);
                        }
                        None => {
                            debug!("reaped pid {} status {}", exit.pid, exit.status);
                            let _ = orphans.send(exit);
                        }
                    }
                }
                Err(nix::errno::Errno::ECHILD) => return,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    warn!("waitpid: {e}");
                    return;
                }
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Waiters> {
        crate::lock::locked(&self.waiters)
    }

    /// Spawns `cmd` and returns it with a receiver of its exit. The caller must never
    /// call `wait` on the child: the reaper owns that.
    pub fn spawn(&self, cmd: &mut Command) -> std::io::Result<(Child, oneshot::Receiver<Exit>)> {
        let mut waiters = self.lock();
        let child = cmd.spawn()?;
        let (tx, rx) = oneshot::channel();
        waiters.by_pid.insert(child.id() as i32, tx);
        Ok((child, rx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_encoding_matches_containerd() {
        let e = Exit::from_wait(WaitStatus::Exited(Pid::from_raw(7), 3)).unwrap();
        assert_eq!((e.pid, e.status), (7, 3));
        let e = Exit::from_wait(WaitStatus::Signaled(
            Pid::from_raw(8),
            nix::sys::signal::Signal::SIGKILL,
            false,
        ))
        .unwrap();
        assert_eq!((e.pid, e.status), (8, 137));
        assert!(Exit::from_wait(WaitStatus::StillAlive).is_none());
    }
}
