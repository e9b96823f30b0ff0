//! The container's cgroups: metrics in containerd's types and OOM notifications,
//! on pure cgroup v2 and on the v1/v2 hybrid layout (where runc puts resource
//! controllers, memory included, on v1).

use std::{
    fs,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
};

use containerd_shim::protos::protobuf::well_known_types::any::Any;
use log::{debug, warn};
use tokio::io::unix::AsyncFd;

use crate::error::{Error, Result};

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Whether /sys/fs/cgroup itself is a cgroup2 mount (pure v2).
pub fn is_unified() -> bool {
    nix::sys::statfs::statfs(CGROUP_ROOT)
        .map(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
        .unwrap_or(false)
}

/// The container's cgroup metrics as containerd's `Any` (v1 or v2 `Metrics`).
pub fn metrics(pid: u32) -> Result<Any> {
    let cg = containerd_shim::cgroup::get_cgroup(pid)
        .map_err(|e| Error::framework("find the container's cgroup", e))?;
    if is_unified() {
        let m = containerd_shim::cgroup::collect_metrics_v2(&cg)
            .map_err(|e| Error::framework("collect cgroup v2 metrics", e))?;
        crate::any::pack(&m)
    } else {
        let m = containerd_shim::cgroup::collect_metrics(&cg)
            .map_err(|e| Error::framework("collect cgroup v1 metrics", e))?;
        crate::any::pack(&m)
    }
}

/// Where the memory controller of `pid` lives.
#[derive(Debug, PartialEq, Eq)]
enum MemoryCgroup {
    V1(PathBuf),
    V2(PathBuf),
}

fn memory_cgroup(proc_cgroup: &str, unified: bool) -> Option<MemoryCgroup> {
    for line in proc_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let path = path.trim_start_matches('/');
        if unified && controllers.is_empty() {
            return Some(MemoryCgroup::V2(Path::new(CGROUP_ROOT).join(path)));
        }
        if controllers.split(',').any(|c| c == "memory") {
            return Some(MemoryCgroup::V1(
                Path::new(CGROUP_ROOT).join("memory").join(path),
            ));
        }
    }
    None
}

/// Resolves once per OOM kill in the container's memory cgroup. Returns when the
/// cgroup goes away. `pid` is the container's init.
pub async fn watch_oom(pid: u32, mut on_oom: impl FnMut()) -> Result<()> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .map_err(|e| Error::io(format!("read /proc/{pid}/cgroup"), e))?;
    match memory_cgroup(&text, is_unified()) {
        Some(MemoryCgroup::V1(dir)) => watch_v1(&dir, on_oom).await,
        Some(MemoryCgroup::V2(dir)) => watch_v2(&dir, &mut on_oom).await,
        None => {
            debug!("no memory cgroup for pid {pid}: no OOM events");
            Ok(())
        }
    }
}

/// cgroup v1: an eventfd registered on `memory.oom_control` through `cgroup.event_control`;
/// it is also signalled (and then reads as the cgroup being removed) when the cgroup goes.
async fn watch_v1(dir: &Path, mut on_oom: impl FnMut()) -> Result<()> {
    let oom_control = fs::File::open(dir.join("memory.oom_control"))
        .map_err(|e| Error::io(format!("open {}/memory.oom_control", dir.display()), e))?;
    // SAFETY: eventfd has no pointer arguments; we own the returned descriptor.
    let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if raw < 0 {
        return Err(Error::io("eventfd", std::io::Error::last_os_error()));
    }
    // SAFETY: `raw` is a fresh descriptor returned by eventfd above, owned by no one else.
    let efd = unsafe { OwnedFd::from_raw_fd(raw) };
    fs::write(
        dir.join("cgroup.event_control"),
        format!("{} {}", efd.as_raw_fd(), oom_control.as_raw_fd()),
    )
    .map_err(|e| Error::io(format!("register OOM eventfd in {}", dir.display()), e))?;
    // SAFETY: the AsyncFd owns the eventfd, so the descriptor stays open and unchanged
    // for as long as it is registered.
    let efd =
        unsafe { AsyncFd::register(efd) }.map_err(|e| Error::io("register eventfd", e.into()))?;
    let oom_count = dir.join("memory.oom_control");
    loop {
        let mut guard = efd
            .readable()
            .await
            .map_err(|e| Error::io("wait for OOM eventfd", e))?;
        let mut buf = [0u8; 8];
        // SAFETY: reads 8 bytes into a valid 8-byte buffer from our own eventfd.
        let n = unsafe { libc::read(efd.get_ref().as_raw_fd(), buf.as_mut_ptr().cast(), 8) };
        guard.clear_ready();
        if n != 8 {
            continue;
        }
        // The eventfd also fires when the cgroup is removed.
        if !oom_count.exists() {
            return Ok(());
        }
        on_oom();
    }
}

/// cgroup v2: `memory.events` changes (inotify IN_MODIFY) and its `oom_kill` count grows.
async fn watch_v2(dir: &Path, on_oom: &mut impl FnMut()) -> Result<()> {
    use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
    let events = dir.join("memory.events");
    let ino = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK)
        .map_err(|e| Error::sys("inotify_init", e))?;
    ino.add_watch(&events, AddWatchFlags::IN_MODIFY)
        .map_err(|e| Error::sys("inotify_add_watch memory.events", e))?;
    // SAFETY: the AsyncFd owns the inotify instance and so its descriptor for as long as
    // it is registered.
    let fd = unsafe { AsyncFd::register(InotifyFd(ino)) }
        .map_err(|e| Error::io("register inotify", e.into()))?;
    let mut last = oom_kills(&events).unwrap_or(0);
    loop {
        let mut guard = fd
            .readable()
            .await
            .map_err(|e| Error::io("wait for memory.events", e))?;
        let _ = fd.get_ref().0.read_events();
        guard.clear_ready();
        let Some(now) = oom_kills(&events) else {
            return Ok(());
        };
        if now > last {
            on_oom();
        }
        last = now;
    }
}

struct InotifyFd(nix::sys::inotify::Inotify);

impl AsRawFd for InotifyFd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsFd;
        self.0.as_fd().as_raw_fd()
    }
}

fn oom_kills(events: &Path) -> Option<u64> {
    let text = fs::read_to_string(events).ok()?;
    let v = text
        .lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|v| v.trim().parse().ok());
    if v.is_none() {
        warn!("{} has no oom_kill counter", events.display());
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_cgroup_on_hybrid_and_unified() {
        let hybrid = "12:pids:/default/c1\n4:memory:/default/c1\n0::/default/c1\n";
        assert_eq!(
            memory_cgroup(hybrid, false),
            Some(MemoryCgroup::V1(PathBuf::from(
                "/sys/fs/cgroup/memory/default/c1"
            )))
        );
        let unified = "0::/system.slice/c1\n";
        assert_eq!(
            memory_cgroup(unified, true),
            Some(MemoryCgroup::V2(PathBuf::from(
                "/sys/fs/cgroup/system.slice/c1"
            )))
        );
        assert_eq!(memory_cgroup("0::/x\n", false), None);
    }

    #[test]
    fn oom_kill_counter_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("memory.events");
        fs::write(&p, "low 0\nhigh 0\nmax 3\noom 2\noom_kill 2\n").unwrap();
        assert_eq!(oom_kills(&p), Some(2));
        assert_eq!(oom_kills(&dir.path().join("gone")), None);
    }
}
