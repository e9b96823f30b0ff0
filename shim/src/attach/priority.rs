//! The attach step's scheduling priority.
//!
//! Every container of the runtime waits for its attach step between `runc create` and
//! `runc start`. The step needs about 0.3 ms of CPU, but it blocks a few times (the kernel's
//! cgroup and rtnl locks, bpffs), and under a burst of container starts each wake-up queues
//! behind every `runc create` that is running: on a small node that wait, not the work, is
//! the step's tail. The shim's thread therefore runs the step at a raised priority (a lower
//! nice value) and returns to its own priority when the step is over. A nice value only
//! changes the thread's share of the CPU under the fair scheduler; it cannot starve
//! anything, and the step is bounded by its deadline.
use log::{debug, warn};

/// The calling thread's id. nix makes the syscall(2) itself, which a static-pie link needs:
/// glibc's gettid() wrapper is a null weak symbol there.
fn thread_id() -> libc::id_t {
    nix::unistd::gettid().as_raw() as libc::id_t
}

/// Nice values the kernel accepts.
pub const NICE_RANGE: std::ops::RangeInclusive<i32> = -20..=19;

/// The calling thread runs at `nice` until this is dropped, then at the nice value it had.
pub struct Raised {
    tid: libc::id_t,
    before: i32,
}

impl Raised {
    /// Raises the calling thread's priority to `nice`. `None` when there is nothing to do
    /// (the thread is at `nice` or above already) or the kernel refused (no
    /// CAP_SYS_NICE): the step then runs at the thread's own priority.
    pub fn to(nice: i32) -> Option<Raised> {
        let tid = thread_id();
        // getpriority(2) returns the nice value, which may be -1: errno tells an error apart.
        // SAFETY: errno_location returns the calling thread's errno; getpriority only reads.
        let before = unsafe {
            *libc::__errno_location() = 0;
            let v = libc::getpriority(libc::PRIO_PROCESS, tid);
            if v == -1 && *libc::__errno_location() != 0 {
                debug!(
                    "getpriority: {}; the attach step runs at the thread's priority",
                    std::io::Error::last_os_error()
                );
                return None;
            }
            v
        };
        if before <= nice {
            return None;
        }
        // SAFETY: setpriority on the calling thread's own id; no memory is passed.
        if unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, nice) } != 0 {
            debug!(
                "setpriority({nice}): {}; the attach step runs at nice {before}",
                std::io::Error::last_os_error()
            );
            return None;
        }
        Some(Raised { tid, before })
    }
}

impl Drop for Raised {
    fn drop(&mut self) {
        // SAFETY: as in `to`: the thread's own id, no memory passed.
        if unsafe { libc::setpriority(libc::PRIO_PROCESS, self.tid, self.before) } != 0 {
            warn!(
                "restoring nice {} after the attach step: {}",
                self.before,
                std::io::Error::last_os_error()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nice() -> i32 {
        // SAFETY: as in `Raised::to`.
        unsafe { libc::getpriority(libc::PRIO_PROCESS, thread_id()) }
    }

    #[test]
    fn raised_for_the_guard_and_restored_after() {
        // A thread of its own: nice is per thread, and the test harness shares threads.
        std::thread::spawn(|| {
            let before = nice();
            match Raised::to(-5) {
                Some(r) => {
                    assert_eq!(nice(), -5);
                    drop(r);
                    assert_eq!(nice(), before);
                }
                // Without CAP_SYS_NICE nothing changes.
                None => assert_eq!(nice(), before),
            }
            // Asking for a lower priority than the thread has is left alone.
            assert!(Raised::to(19).is_none() || before > 19);
            assert_eq!(nice(), before);
        })
        .join()
        .unwrap();
    }
}
