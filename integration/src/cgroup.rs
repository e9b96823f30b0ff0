//! The kernel's view of a container's cgroup, on cgroup v1, v2 or the hybrid of both.
//!
//! Paths are found from `/proc/PID/cgroup` and the cgroup mounts in `/proc/self/mountinfo`,
//! so nothing assumes `/sys/fs/cgroup/<controller>` or a pure v2 layout.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};

use crate::procfs;

/// A mounted cgroup hierarchy.
#[derive(Debug, Clone)]
pub struct Hierarchy {
    pub mount_point: PathBuf,
    /// `None` for the v2 (unified) hierarchy.
    pub v1_controllers: Option<Vec<String>>,
}

impl Hierarchy {
    pub fn is_v2(&self) -> bool {
        self.v1_controllers.is_none()
    }

    /// Whether this hierarchy manages `controller` (for v2: listed in `cgroup.controllers`).
    pub fn has_controller(&self, controller: &str) -> bool {
        match &self.v1_controllers {
            Some(c) => c.iter().any(|c| c == controller),
            None => fs::read_to_string(self.mount_point.join("cgroup.controllers"))
                .map(|s| s.split_whitespace().any(|c| c == controller))
                .unwrap_or(false),
        }
    }
}

/// All cgroup hierarchies mounted in this mount namespace (first mount of each kind).
pub fn hierarchies() -> Result<Vec<Hierarchy>> {
    let mut out: Vec<Hierarchy> = Vec::new();
    for m in procfs::mounts()? {
        let h = match m.fstype.as_str() {
            "cgroup2" => Hierarchy {
                mount_point: m.mount_point,
                v1_controllers: None,
            },
            "cgroup" => Hierarchy {
                mount_point: m.mount_point,
                v1_controllers: Some(
                    m.super_options
                        .split(',')
                        .filter(|o| {
                            !matches!(*o, "rw" | "ro")
                                && (!o.contains('=') || o.starts_with("name="))
                        })
                        .map(str::to_owned)
                        .collect(),
                ),
            },
            _ => continue,
        };
        let duplicate = out
            .iter()
            .any(|o| match (&o.v1_controllers, &h.v1_controllers) {
                (None, None) => true,
                (Some(a), Some(b)) => a == b,
                _ => false,
            });
        if !duplicate {
            out.push(h);
        }
    }
    Ok(out)
}

/// The directory of `pid`'s cgroup that manages `controller`: a v1 hierarchy that has it,
/// else the v2 hierarchy if it has it.
pub fn dir_of(pid: i32, controller: &str) -> Result<PathBuf> {
    let proc_cgroup = format!("/proc/{pid}/cgroup");
    let text =
        fs::read_to_string(&proc_cgroup).with_context(|| format!("reading {proc_cgroup}"))?;
    let hierarchies = hierarchies()?;
    // Lines are `ID:CONTROLLERS:PATH`; v2 is `0::PATH`.
    let mut v2_path = None;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, ctrls, path) = match (parts.next(), parts.next(), parts.next()) {
            (Some(a), Some(b), Some(c)) => (a, b, c),
            _ => continue,
        };
        if ctrls.is_empty() {
            v2_path = Some(path.to_owned());
            continue;
        }
        if ctrls.split(',').any(|c| c == controller) {
            let h = hierarchies
                .iter()
                .find(|h| h.v1_controllers.is_some() && h.has_controller(controller))
                .ok_or_else(|| anyhow!("no mounted v1 hierarchy for {controller}"))?;
            return Ok(join_cgroup_path(&h.mount_point, path));
        }
    }
    let v2 = hierarchies
        .iter()
        .find(|h| h.is_v2())
        .ok_or_else(|| anyhow!("{controller} is in no v1 hierarchy and no cgroup2 is mounted"))?;
    if !v2.has_controller(controller) {
        bail!(
            "controller {controller} is neither in a v1 hierarchy nor in {}",
            v2.mount_point.display()
        );
    }
    let path = v2_path.ok_or_else(|| anyhow!("{proc_cgroup} has no v2 line"))?;
    Ok(join_cgroup_path(&v2.mount_point, &path))
}

fn join_cgroup_path(mount_point: &Path, path: &str) -> PathBuf {
    mount_point.join(path.trim_start_matches('/'))
}

fn read_trimmed(path: &Path) -> Result<String> {
    Ok(fs::read_to_string(path)
        .with_context(|| format!("reading {}", path.display()))?
        .trim()
        .to_owned())
}

/// The memory limit of `pid`'s cgroup in bytes; `None` for unlimited.
pub fn memory_limit(pid: i32) -> Result<Option<u64>> {
    let dir = dir_of(pid, "memory")?;
    let v1 = dir.join("memory.limit_in_bytes");
    let (file, value) = if v1.exists() {
        let v = read_trimmed(&v1)?;
        (v1, v)
    } else {
        let v2 = dir.join("memory.max");
        let v = read_trimmed(&v2)?;
        (v2, v)
    };
    if value == "max" {
        return Ok(None);
    }
    let bytes: u64 = value
        .parse()
        .with_context(|| format!("parsing {}: {value:?}", file.display()))?;
    // v1 reports "unlimited" as a huge page-aligned number.
    Ok((bytes < (1 << 62)).then_some(bytes))
}

/// Whether `pid`'s cgroup is frozen (v1 `freezer.state` is `FROZEN`, v2 `cgroup.freeze` is 1).
pub fn is_frozen(pid: i32) -> Result<bool> {
    match dir_of(pid, "freezer") {
        Ok(dir) => Ok(read_trimmed(&dir.join("freezer.state"))? == "FROZEN"),
        Err(_) => {
            // v2 has no freezer controller: every non-root cgroup has cgroup.freeze.
            let dir = v2_dir_of(pid)?;
            Ok(read_trimmed(&dir.join("cgroup.freeze"))? == "1")
        }
    }
}

fn v2_dir_of(pid: i32) -> Result<PathBuf> {
    let proc_cgroup = format!("/proc/{pid}/cgroup");
    let text =
        fs::read_to_string(&proc_cgroup).with_context(|| format!("reading {proc_cgroup}"))?;
    let path = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .ok_or_else(|| anyhow!("{proc_cgroup} has no v2 line"))?;
    let v2 = hierarchies()?
        .into_iter()
        .find(Hierarchy::is_v2)
        .ok_or_else(|| anyhow!("no cgroup2 mounted"))?;
    Ok(join_cgroup_path(&v2.mount_point, path))
}

/// Directories named `name` at most `max_depth` levels below any cgroup hierarchy's root.
pub fn find_dirs_named(name: &str, max_depth: usize) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for h in hierarchies()? {
        walk(&h.mount_point, name, max_depth, &mut found);
    }
    Ok(found)
}

fn walk(dir: &Path, name: &str, depth: usize, found: &mut Vec<PathBuf>) {
    if depth == 0 {
        return;
    }
    // A cgroup removed during the walk is not an error.
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let p = e.path();
        if e.file_name() == name {
            found.push(p.clone());
        }
        walk(&p, name, depth - 1, found);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_own_memory_cgroup() {
        // Any Linux box running these tests has a memory controller somewhere.
        let dir = dir_of(std::process::id() as i32, "memory").unwrap();
        assert!(dir.is_dir(), "{}", dir.display());
    }
}
