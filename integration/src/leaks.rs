//! What must be gone once a container has been deleted.
//!
//! After `ctr task delete` / `ctr run --rm`, neither runtime may leave behind: a process whose
//! `argv` names the container (the shim runs with `-id ID`), a mount naming it, a cgroup
//! directory named after it, its bundle directory or its runc state directory.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;

use crate::containerd::{Containerd, RUNC_ROOT};
use crate::{cgroup, procfs, wait};

/// How deep below each cgroup hierarchy's root to look for the container's cgroup.
/// ctr puts containers at `/<namespace>/<id>`.
const CGROUP_DEPTH: usize = 4;

/// Default time allowed for asynchronous cleanup (shim exit) after deletion.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);

/// Things found still present for a container.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Leaks {
    pub processes: Vec<String>,
    pub mounts: Vec<PathBuf>,
    pub cgroups: Vec<PathBuf>,
    pub dirs: Vec<PathBuf>,
}

impl Leaks {
    pub fn is_empty(&self) -> bool {
        self.processes.is_empty()
            && self.mounts.is_empty()
            && self.cgroups.is_empty()
            && self.dirs.is_empty()
    }
}

impl fmt::Display for Leaks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "processes: {:?}; mounts: {:?}; cgroups: {:?}; dirs: {:?}",
            self.processes, self.mounts, self.cgroups, self.dirs
        )
    }
}

/// What of container `id` in `namespace` of `cd` is still present right now.
pub fn find(cd: &Containerd, namespace: &str, id: &str) -> Result<Leaks> {
    let me = std::process::id() as i32;
    let processes = procfs::processes()?
        .into_iter()
        .filter(|p| p.pid != me && !p.is_zombie())
        .filter(|p| p.cmdline.iter().any(|a| a.contains(id)))
        .map(|p| format!("{} {}", p.pid, p.cmdline_string()))
        .collect();
    let mounts = procfs::mounts()?
        .into_iter()
        .map(|m| m.mount_point)
        .filter(|p| p.components().any(|c| c.as_os_str() == id))
        .collect();
    let cgroups = cgroup::find_dirs_named(id, CGROUP_DEPTH)?;
    let dirs = [
        cd.bundle_dir(namespace, id),
        Path::new(RUNC_ROOT).join(namespace).join(id),
    ]
    .into_iter()
    .filter(|d| d.exists())
    .collect();
    Ok(Leaks {
        processes,
        mounts,
        cgroups,
        dirs,
    })
}

/// Waits (up to `timeout`) until nothing of container `id` is left; fails listing what is.
pub fn assert_none(cd: &Containerd, namespace: &str, id: &str, timeout: Duration) -> Result<()> {
    let mut last = Leaks::default();
    wait::wait_until(
        &format!("container {id} to leave nothing behind"),
        timeout,
        || {
            last = find(cd, namespace, id)?;
            Ok(last.is_empty().then_some(()))
        },
    )
    .map_err(|e| e.context(format!("leaked for {id}: {last}")))
}
