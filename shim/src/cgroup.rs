//! The container's cgroups, the one module that reads the cgroup file systems: metrics in
//! containerd's types, OOM notifications, and where a process's cgroup v2 directory is (the
//! attach step's target), on pure cgroup v2 and on the v1/v2 hybrid layout (where runc puts
//! resource controllers, memory included, on v1).

use std::{
    fs,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
};

use containerd_shim::protos::protobuf::well_known_types::any::Any;
use log::{debug, warn};
use nix::sys::eventfd::{EfdFlags, EventFd};
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
        let mut m = containerd_shim::cgroup::collect_metrics(&cg)
            .map_err(|e| Error::framework("collect cgroup v1 metrics", e))?;
        crate::cgroup_v1::complete(&mut m, pid);
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
    let efd = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
        .map_err(|e| Error::sys("eventfd", e))?;
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
        let read = efd.get_ref().read();
        guard.clear_ready();
        if read.is_err() {
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

/// The cgroup v2 directory of `pid`: its `0::` line in /proc/<pid>/cgroup under the cgroup2
/// mount (pure v2 at /sys/fs/cgroup, or the hybrid layout's unified mount).
pub fn cgroup2_dir(pid: u32) -> std::result::Result<PathBuf, String> {
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .map_err(|e| format!("read /proc/{pid}/cgroup: {e}"))?;
    cgroup2_dir_of(pid, &cgroup, &tether_bpf::features::cgroup2_mount()?)
}

/// Removes the cgroup directories of a container that runc has no state for (a `runc
/// create` killed with its shim leaves them): `cgroups_path` is the spec's
/// `linux.cgroupsPath` in cgroupfs form, looked up in every cgroup hierarchy. A process
/// still in one is what is left of that create (its `runc init`, which dies with `runc
/// create` but may not have left yet): it is killed, and the removal tried again until
/// [`LEFTOVER_WAIT`] has passed. Only the container's own cgroups; a systemd-driver path
/// (`slice:prefix:name`) is systemd's to collect. Returns how many were removed.
pub fn remove_leftover_cgroups(cgroups_path: &str) -> usize {
    let mounts = match fs::read_to_string("/proc/self/mountinfo") {
        Ok(m) => m,
        Err(e) => {
            warn!("read /proc/self/mountinfo: {e}");
            return 0;
        }
    };
    let mut left = leftover_cgroup_dirs(&mounts, cgroups_path);
    let mut removed = 0;
    let deadline = std::time::Instant::now() + LEFTOVER_WAIT;
    loop {
        left.retain(|dir| {
            for pid in fs::read_to_string(dir.join("cgroup.procs"))
                .unwrap_or_default()
                .lines()
                .filter_map(|l| l.trim().parse::<i32>().ok())
            {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            match fs::remove_dir(dir) {
                Ok(()) => {
                    removed += 1;
                    false
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
                // Busy: a process on its way out, or a child cgroup; tried again.
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => true,
                Err(e) => {
                    warn!("remove cgroup {}: {e}", dir.display());
                    false
                }
            }
        });
        if left.is_empty() || std::time::Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    for dir in &left {
        warn!("remove cgroup {}: still busy", dir.display());
    }
    removed
}

/// How long [`remove_leftover_cgroups`] waits for a leftover cgroup to empty.
const LEFTOVER_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// The directories [`remove_leftover_cgroups`] tries: `cgroups_path` below each cgroup and
/// cgroup2 mount in the text of /proc/self/mountinfo. None for a systemd-driver path, a
/// path that is not absolute, or one that climbs (`..`).
fn leftover_cgroup_dirs(mountinfo: &str, cgroups_path: &str) -> Vec<PathBuf> {
    let path = Path::new(cgroups_path);
    if cgroups_path.contains(':')
        || !path.is_absolute()
        || path.components().count() < 2
        || path
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Vec::new();
    }
    let rel = cgroups_path.trim_start_matches('/');
    let mut out: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let fstype = right.split(' ').next()?;
            (fstype == "cgroup" || fstype == "cgroup2")
                .then(|| left.split(' ').nth(4).map(|m| Path::new(m).join(rel)))?
        })
        .collect();
    out.sort();
    out.dedup();
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leftover_cgroups_are_looked_for_in_every_hierarchy() {
        let mountinfo = "\
30 24 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid shared:5 - cgroup2 cgroup2 rw
33 30 0:29 / /sys/fs/cgroup/memory rw,nosuid shared:7 - cgroup cgroup rw,memory
34 30 0:30 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:8 - cgroup cgroup rw,cpu,cpuacct
40 20 0:40 / /run/x rw - tmpfs tmpfs rw
";
        assert_eq!(
            leftover_cgroup_dirs(mountinfo, "/default/c1"),
            [
                "/sys/fs/cgroup/cpu,cpuacct/default/c1",
                "/sys/fs/cgroup/memory/default/c1",
                "/sys/fs/cgroup/unified/default/c1",
            ]
            .map(PathBuf::from)
        );
        for refused in [
            "system.slice:cri-containerd:c1",
            "default/c1",
            "/",
            "/a/../b",
        ] {
            assert!(
                leftover_cgroup_dirs(mountinfo, refused).is_empty(),
                "{refused}"
            );
        }
    }

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

    #[test]
    fn cgroup_dir_on_pure_v2_and_hybrid() {
        let cg = "0::/default/web\n";
        let pure = Path::new("/sys/fs/cgroup");
        assert_eq!(
            cgroup2_dir_of(1, cg, pure).unwrap(),
            PathBuf::from("/sys/fs/cgroup/default/web")
        );
        let cg = "4:memory:/default/web\n0::/default/web\n";
        let hybrid = Path::new("/sys/fs/cgroup/unified");
        assert_eq!(
            cgroup2_dir_of(1, cg, hybrid).unwrap(),
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
    }
}
