//! `create` (also the first half of `run`): the plan checked before runc runs, runc's
//! `create`, then the attach step before `tether-runc` returns, and the container's link
//! watcher started. A fail-closed attach failure force-deletes the container.
use std::ffi::OsString;
use std::path::PathBuf;

use super::args::RuncArgs;
use super::exec::exec;
use super::report::{report, status_code};
use super::runtime::runtime;
use super::watch::spawn_watcher;
use crate::attach::attacher::{Attacher, CreatedContainer};
use crate::attach::plan::Plan;
use crate::config::Config;
use crate::container::load_spec;
use crate::runc::Passthrough;

/// Runs runc's create with `create_args`, then attaches. Returns the exit code and the
/// container's init pid (0 unless created).
pub fn create(
    runc: &Passthrough,
    args: &RuncArgs,
    config: &Config,
    create_args: &[OsString],
) -> (i32, u32) {
    let Some(id) = args.container_id() else {
        return (exec(runc, args), 0);
    };
    let bundle = args
        .arg_value(&["--bundle", "-b"])
        .map(PathBuf::from)
        .or_else(|| std::env::current_dir().ok())
        .unwrap_or_else(|| PathBuf::from("."));
    // A bad plan fails before runc runs, as in the shim.
    let plan = match load_spec(&bundle).and_then(|spec| Plan::resolve(config, &spec)) {
        Ok(p) => p,
        Err(e) => {
            report(args, &format!("tether-runc: {e}"));
            return (1, 0);
        }
    };
    // Rootless (Podman's rootless mode): runc runs in a user namespace, without the
    // privileges that bpf(2) and the pin root need. Nothing can be attached; the failure
    // policy decides whether the container runs so.
    let rootless = plan.enabled && !in_initial_user_namespace();
    if rootless {
        let why = "a rootless container cannot be attached (tether-runc runs in a user \
                   namespace, without the privileges bpf(2) and the pin root need)";
        if plan.fail_closed {
            report(
                args,
                &format!("tether-runc: {id}: {why}: refused (failure policy: closed)"),
            );
            return (1, 0);
        }
        eprintln!("tether-runc: {id}: {why}: it runs without programs (failure policy: open)");
    }
    let attacher = Attacher::new();
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            report(args, &e);
            return (1, 0);
        }
    };
    if rootless {
        // Nothing to prepare.
    } else if let Err(e) = rt.block_on(attacher.prepare(&id, &plan, config, None)) {
        report(args, &format!("tether-runc: {e}"));
        return (1, 0);
    } else {
        // As in the shim; an exec into it gets them neither (see `exec`).
        if let Err(e) = attacher.hardening(&plan, config).apply(&bundle) {
            report(args, &format!("tether-runc: {e}"));
            return (1, 0);
        }
    }
    let status = match runc.status("create", create_args) {
        Ok(s) => s,
        Err(e) => {
            let bin = runc.binary().display();
            report(args, &format!("tether-runc: run {bin}: {e}"));
            return (1, 0);
        }
    };
    if !status.success() {
        return (status_code(status), 0);
    }
    let namespace = args.namespace();
    let mut init_pid = 0;
    let pid = match args
        .arg_value(&["--pid-file"])
        .and_then(|f| std::fs::read_to_string(f).ok())
        .and_then(|p| p.trim().parse::<u32>().ok())
    {
        // runc wrote it at create: no second runc run needed.
        Some(pid) => Ok(pid),
        None => runc.state(&id).map(|s| s.pid).map_err(|e| e.to_string()),
    };
    if rootless {
        return (0, pid.unwrap_or(0));
    }
    let result = pid.and_then(|pid| {
        init_pid = pid;
        let created = CreatedContainer {
            namespace: &namespace,
            id: &id,
            plan: &plan,
            config,
            config_path: None,
            pid,
        };
        rt.block_on(attacher.attach(&created))
            .map_err(|e| e.to_string())
    });
    match result {
        Ok(()) => {
            spawn_watcher(&namespace, &id, init_pid, &plan);
            (0, init_pid)
        }
        Err(e) => {
            let _ = runc.status("delete", &["--force".into(), id.clone().into()]);
            report(args, &format!("tether-runc: {e}"));
            (1, 0)
        }
    }
}

/// Whether this process is in the initial user namespace: its uid map is the identity over
/// every uid. Inside a rootless engine's namespace it maps a few ranges of the host's.
fn in_initial_user_namespace() -> bool {
    std::fs::read_to_string("/proc/self/uid_map").map_or(true, |m| is_identity_uid_map(&m))
}

fn is_identity_uid_map(map: &str) -> bool {
    let f: Vec<&str> = map.split_whitespace().collect();
    f == ["0", "0", "4294967295"]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_identity_map_is_the_initial_namespace() {
        assert!(is_identity_uid_map("         0          0 4294967295\n"));
        // Rootless Podman: root is the user, the rest from /etc/subuid.
        assert!(!is_identity_uid_map(
            "         0       1000          1\n         1     100000      65536\n"
        ));
        assert!(!is_identity_uid_map("0 0 1\n"));
        assert!(!is_identity_uid_map(""));
    }
}
