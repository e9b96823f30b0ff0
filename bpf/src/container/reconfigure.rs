//! Moving a container that has run nothing yet between plans: where it is counted and
//! judged (`auto` at start), its cgroup links and its entries with it.
use std::fs;
use std::os::fd::BorrowedFd;
use std::path::Path;

use crate::error::{Error, Result};
use crate::link::Link;
use crate::maps::ContainerConfig;
#[cfg(doc)]
use crate::pins::PinLayout;
use crate::programs::{Prog, Programs};

/// Moves an attached container that has run nothing yet (between `runc create` and `runc
/// start`) from the config `from` to `to`, which differ in where it is counted and judged:
/// the cgroup programs `to` adds are attached to `cgroup` (whose id is `cgid`, as
/// [`crate::container::cgroup_id`] reads it) and pinned in the container's directory `dir`
/// ([`PinLayout::container_dir`]), its entries get `to`,
/// and the cgroup links `to` does not use are detached and unpinned. On an error before
/// the last step the container is left as `from` had it. Returns the programs added and
/// the programs removed.
pub fn reconfigure(
    programs: &Programs,
    dir: &Path,
    cgroup: BorrowedFd<'_>,
    cgid: u64,
    from: &ContainerConfig,
    to: &ContainerConfig,
) -> Result<(Vec<Prog>, Vec<Prog>)> {
    let maps = programs.maps();
    if maps.container_config(cgid)? != Some(*from) {
        return Err(Error::Name {
            what: "cgroup",
            value: cgid.to_string(),
            reason: "is not the container's as attached: it is not reconfigured",
        });
    }
    let cgroup_progs = || Prog::ALL.into_iter().filter(|p| p.is_cgroup());
    let added: Vec<Prog> = cgroup_progs()
        .filter(|p| p.used_by(to) && !p.used_by(from))
        .collect();
    let removed: Vec<Prog> = cgroup_progs()
        .filter(|p| p.used_by(from) && !p.used_by(to))
        .collect();
    let pin = |p: Prog| dir.join(format!("cgroup_{}", p.name()));
    let _memlock = crate::memlock::raise();
    let mut pinned = Vec::new();
    let result = (|| {
        for &p in &added {
            let link = Link::cgroup(programs, p, cgroup)?;
            link.pin(&pin(p))?;
            pinned.push(pin(p));
        }
        maps.reconfigure(cgid, to)?;
        if !added.is_empty() && !cgroup_progs().any(|p| p.used_by(from)) {
            // The first cgroup program on the cgroup made its local storage.
            maps.set_local(cgid, to)?;
        }
        Ok(())
    })();
    if let Err(e) = result {
        for path in pinned {
            if let Ok(link) = Link::open_pinned(&path) {
                let _ = link.detach();
            }
            let _ = fs::remove_file(&path);
        }
        let _ = maps.reconfigure(cgid, from);
        return Err(e);
    }
    for &p in &removed {
        let path = pin(p);
        let link = Link::open_pinned(&path)?;
        // A defunct link may refuse to detach; unpinning it releases it anyway.
        let _ = link.detach();
        fs::remove_file(&path).map_err(|e| Error::path("unlink", &path, e))?;
    }
    Ok((added, removed))
}
