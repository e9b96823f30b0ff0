//! The link watcher of a container `tether-runc` created: a small detached process
//! (`tether-runc --tether-watch ...`) that attaches to links added to the container's
//! network namespace later (`docker network connect`) and exits with the container. The
//! shim watches in-process; `tether-runc` returns right after create. The watching itself
//! is the shim's one link watcher ([`crate::attach::watch`]), run blocking.
use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;

use crate::attach::cgroup_netns::Attachment;
use crate::attach::plan::{Plan, TcSelect};
use crate::attach::programs;
use crate::attach::watch;
use crate::config::Config;
use tether_bpf::container::DEFAULT_MAX_INTERFACES;

/// The first argument that makes `tether-runc` the link watcher of one container (never a
/// runc flag).
pub const WATCH_ARG: &str = "--tether-watch";

/// Starts the link watcher of a created container with init `pid`, when its plan puts
/// programs on its interfaces: `--tether-watch NAMESPACE ID PID NETNS [INTERFACES]` (the
/// plan's namespace to watch and, when not all, its interfaces, comma-separated).
pub fn spawn_watcher(namespace: &str, id: &str, pid: u32, plan: &Plan) {
    let Some(netns) = plan.netns_path(pid).filter(|_| plan.enabled) else {
        return;
    };
    let Ok(me) = std::env::current_exe() else {
        return;
    };
    let mut c = Command::new(me);
    c.arg(WATCH_ARG)
        .arg(namespace)
        .arg(id)
        .arg(pid.to_string())
        .arg(netns);
    if let Some(only) = plan.only() {
        c.arg(only.join(","));
    }
    let r = c
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn();
    if let Err(e) = r {
        log::warn!("{id}: link watcher not started: {e}");
    }
}

/// The link watcher process, with the arguments after [`WATCH_ARG`]. Exits when the
/// container's init is gone or its programs were detached.
pub fn watch(argv: &[OsString]) -> i32 {
    let (ns, id, pid, netns, only) = match argv {
        [ns, id, pid, netns] => (ns, id, pid, netns, None),
        [ns, id, pid, netns, only] => (ns, id, pid, netns, Some(only)),
        _ => return 2,
    };
    let Ok(pid) = pid.to_string_lossy().parse::<u32>() else {
        return 2;
    };
    let (ns, id) = (ns.to_string_lossy(), id.to_string_lossy());
    let only = only.map(|o| o.to_string_lossy().split(',').map(String::from).collect());
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    let Ok(config) = Config::load(None) else {
        return 1;
    };
    let layout = programs::layout(&config);
    let Ok(dir) = layout.container_dir(&ns, &id) else {
        return 1;
    };
    let select = TcSelect {
        only,
        max: config
            .attach
            .max_interfaces
            .map_or(DEFAULT_MAX_INTERFACES, |n| n as usize),
    };
    let attachment = match Attachment::from_pins(layout, &ns, &id, netns.as_ref(), select) {
        Ok(Some(a)) => Arc::new(a),
        Ok(None) => return 0,
        Err(_) => return 1,
    };
    let Some(netns) = attachment.netns.as_ref() else {
        return 0;
    };
    let Ok(sock) = tether_bpf::container::link_events_socket(std::os::fd::AsFd::as_fd(netns))
    else {
        return 1;
    };
    // The container's init is gone, or its programs were detached (`delete`): done.
    let alive = || dir.exists() && proc_dir.exists();
    match watch::run_blocking(attachment, sock, alive) {
        Ok(()) => 0,
        Err(_) => 1,
    }
}
