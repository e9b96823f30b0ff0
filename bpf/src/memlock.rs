//! RLIMIT_MEMLOCK for the attach step on kernels that charge BPF memory to it (before 5.11,
//! which charge memory cgroups instead). There each cgroup attach of a program that uses
//! the per-CPU cgroup storage (`cg_local`) allocates that storage and charges it against the
//! attaching process's memlock limit, counted over everything root has locked (tetherd's maps
//! included): a shim under systemd's default 64 KiB fails every attach with ENOMEM.
//!
//! The limit is raised only while an attach runs, and restored after: the shim's limits are
//! what runc passes on to the containers it starts, and those must be the same as under the
//! runc shim. Raises nest across threads of one process (a shim serving several containers):
//! the first raises, the last restores.
use std::sync::Mutex;

use nix::sys::resource::{getrlimit, setrlimit, Resource, RLIM_INFINITY};

/// The limit saved by the first of the live guards, and how many are live.
static RAISED: Mutex<(usize, Option<(u64, u64)>)> = Mutex::new((0, None));

/// While alive, the process's memlock limit is raised (kernels before 5.11 only).
pub(crate) struct MemlockRaised {
    active: bool,
}

/// Raises the memlock limit to unlimited (or to the hard limit, without CAP_SYS_RESOURCE)
/// where the kernel charges BPF memory to it.
pub(crate) fn raise() -> MemlockRaised {
    if crate::sys::kernel_at_least(5, 11) {
        return MemlockRaised { active: false };
    }
    let mut state = RAISED.lock().unwrap_or_else(|e| e.into_inner());
    if state.0 == 0 {
        let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_MEMLOCK) else {
            return MemlockRaised { active: false };
        };
        if setrlimit(Resource::RLIMIT_MEMLOCK, RLIM_INFINITY, RLIM_INFINITY).is_err()
            && setrlimit(Resource::RLIMIT_MEMLOCK, hard, hard).is_err()
        {
            return MemlockRaised { active: false };
        }
        state.1 = Some((soft, hard));
    }
    state.0 += 1;
    MemlockRaised { active: true }
}

impl Drop for MemlockRaised {
    fn drop(&mut self) {
        if !self.active {
            return;
        }
        let mut state = RAISED.lock().unwrap_or_else(|e| e.into_inner());
        state.0 -= 1;
        if state.0 == 0 {
            if let Some((soft, hard)) = state.1.take() {
                // Lowering is always permitted.
                let _ = setrlimit(Resource::RLIMIT_MEMLOCK, soft, hard);
            }
        }
    }
}
