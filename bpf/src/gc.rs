//! Garbage collection of what crashed or deleted containers left behind, and of object
//! versions nothing uses any more.
use std::collections::HashSet;
use std::os::fd::AsFd;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::container;
use crate::error::Result;
use crate::pins::{self, PinLayout};
use crate::programs::{Prog, Programs};
use crate::sys;

/// Entries younger than this are left alone: their container may be between writing its
/// map entries and pinning its links.
pub const GRACE: Duration = Duration::from_secs(60);

/// What a collection removed (or, in a dry run, would remove).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// `namespace/id` of containers whose cgroup is gone.
    pub containers: Vec<String>,
    pub versions: Vec<String>,
    pub map_entries: usize,
}

/// Collects garbage across every opened version. `current` is never removed.
pub fn collect(
    layout: &PinLayout,
    versions: &[Programs],
    current: &str,
    dry_run: bool,
) -> Result<Report> {
    collect_with_grace(layout, versions, current, dry_run, GRACE)
}

/// [`collect`] with another grace period for young entries and versions (tests).
#[doc(hidden)]
pub fn collect_with_grace(
    layout: &PinLayout,
    versions: &[Programs],
    current: &str,
    dry_run: bool,
    grace: Duration,
) -> Result<Report> {
    let mut report = Report::default();
    let listed = container::list(layout)?;
    let mut live_cgroups = HashSet::new();
    let mut live_progs = HashSet::new();
    let mut dead = HashSet::new();
    let mut deleting = HashSet::new();
    for c in &listed {
        if is_attaching(c) {
            // Not stale yet: its shim is between creating the directory and pinning the
            // first cgroup link (container::attach_cgroup). Removing the directory now
            // would make that attach fail.
            live_progs.extend(c.links.iter().map(|(_, l)| l.prog_id));
            continue;
        }
        if is_deleting(c) {
            // Its shim is between `runc delete` and the detach, which reads the final
            // counters from its pins and entries and hands them to tetherd.
            live_progs.extend(c.links.iter().map(|(_, l)| l.prog_id));
            deleting.insert((c.namespace.clone(), c.id.clone()));
            continue;
        }
        if c.is_stale() {
            // Judged again: a container may have reused the id since the listing, and its
            // directory is then its own.
            let removed = dry_run
                || container::remove_if_stale(c, |now| now.is_stale() && !is_attaching(now))?;
            if removed {
                dead.insert((c.namespace.clone(), c.id.clone()));
                report.containers.push(format!("{}/{}", c.namespace, c.id));
            }
        } else {
            for (_, info) in &c.links {
                if info.cgroup_id != 0 {
                    live_cgroups.insert(info.cgroup_id);
                }
                live_progs.insert(info.prog_id);
            }
        }
    }
    let now = unix_nanos(SystemTime::now());
    for p in versions {
        let maps = p.maps();
        // The cgroups with entries first, then the young identities: a container writes its
        // identity before any other entry, so one that starts writing between the two reads
        // is either not among the known cgroups or among the young.
        let known = maps.known_cgroups()?;
        // A young entry may belong to a container between writing its entries and pinning
        // its links; it is kept unless its container was just found stale.
        let young: HashSet<u64> = maps
            .identities()?
            .into_iter()
            .filter(|(_, i)| {
                let who = (i.namespace.clone(), i.id.clone());
                deleting.contains(&who)
                    || (now.saturating_sub(i.attached_ns) < grace.as_nanos() as u64
                        && !dead.contains(&who))
            })
            .map(|(cg, _)| cg)
            .collect();
        for cg in known {
            if live_cgroups.contains(&cg) || young.contains(&cg) {
                continue;
            }
            if dry_run {
                report.map_entries += 1;
            } else {
                report.map_entries += maps.remove_container(cg)?;
            }
        }
        let used = p.ids().iter().any(|(_, id)| live_progs.contains(id));
        if p.version() != current && !used {
            report.versions.push(p.version().to_string());
            if !dry_run {
                pins::remove_tree(&layout.version_dir(p.version()))?;
            }
        }
    }
    // A version that does not open here (pinned by a build whose map layouts differ, or
    // damaged) is judged by its programs alone: it goes once no live link runs any of them,
    // unless it was pinned within the grace period (a load of another build may have only
    // just made it).
    let opened: HashSet<&str> = versions.iter().map(Programs::version).collect();
    for v in layout.versions()? {
        if v == current || opened.contains(v.as_str()) {
            continue;
        }
        let dir = layout.version_dir(&v);
        let ids = pinned_prog_ids(layout, &v);
        if ids.iter().any(|id| live_progs.contains(id)) {
            continue;
        }
        let young = std::fs::metadata(&dir)
            .and_then(|m| m.modified())
            .map(|t| t.elapsed().unwrap_or_default() < grace)
            .unwrap_or(true);
        if young {
            continue;
        }
        report.versions.push(v.clone());
        if !dry_run {
            pins::remove_tree(&dir)?;
        }
    }
    Ok(report)
}

/// The kernel ids of the programs pinned for `version` (those that open).
fn pinned_prog_ids(layout: &PinLayout, version: &str) -> Vec<u32> {
    Prog::ALL
        .iter()
        .filter_map(|p| {
            let fd = sys::obj_get(&layout.prog(version, p.name())).ok()?;
            sys::prog_info(fd.as_fd()).ok().map(|i| i.id)
        })
        .collect()
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// A container directory with no cgroup link that changed within [`GRACE`]: an attach in
/// progress, not a leftover.
/// Whether a container's shim marked it as being deleted (see [`container::DELETING`])
/// within the grace period; an older mark is a shim that died mid-delete, and its
/// container is collected as any other.
fn is_deleting(c: &container::ContainerLinks) -> bool {
    let marked = std::fs::metadata(c.dir.join(container::DELETING)).and_then(|m| m.modified());
    marked.is_ok_and(|t| {
        unix_nanos(SystemTime::now()).saturating_sub(unix_nanos(t)) < GRACE.as_nanos() as u64
    })
}

fn is_attaching(c: &container::ContainerLinks) -> bool {
    if c.links.iter().any(|(name, _)| name.starts_with("cgroup_")) {
        return false;
    }
    let changed = std::fs::metadata(&c.dir).and_then(|m| m.modified());
    changed.is_ok_and(|t| {
        unix_nanos(SystemTime::now()).saturating_sub(unix_nanos(t)) < GRACE.as_nanos() as u64
    })
}
