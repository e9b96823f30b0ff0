//! `run`: create + attach + start; a foreground run then waits for the container's init
//! (this process is its subreaper) and exits with its status, deleting it (and detaching
//! its programs) unless `--keep`.
use std::ffi::OsString;

use super::args::{flag_name, RuncArgs};
use super::create::create;
use super::exec::exec;
use super::report::{report, status_code};
use super::runtime::runtime;
use crate::attach::attacher::Attacher;
use crate::config::Config;
use crate::runc::Passthrough;

pub fn run(runc: &Passthrough, args: &RuncArgs, config: &Config) -> i32 {
    let Some(id) = args.container_id() else {
        return exec(runc, args);
    };
    let detach = args.has_flag(&["--detach", "-d"]);
    let keep = args.has_flag(&["--keep"]);
    // run's own flags are not create's.
    let create_args: Vec<OsString> = args
        .args
        .iter()
        .filter(|a| {
            let a = a.to_string_lossy();
            !matches!(
                flag_name(&a),
                "--detach" | "-d" | "--keep" | "--no-subreaper"
            )
        })
        .cloned()
        .collect();
    if !detach {
        // Children of runc's create (the container's init) are reparented to us.
        if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
            report(args, &format!("tether-runc: PR_SET_CHILD_SUBREAPER: {e}"));
            return 1;
        }
    }
    let (code, pid) = create(runc, args, config, &create_args);
    if code != 0 {
        return code;
    }
    match runc.status("start", &[OsString::from(&id)]) {
        Ok(s) if s.success() => {}
        Ok(s) => return status_code(s),
        Err(e) => {
            report(args, &format!("tether-runc: start: {e}"));
            return 1;
        }
    }
    if detach {
        return 0;
    }
    let code = wait_for(pid);
    if !keep {
        let namespace = args.namespace();
        let attacher = Attacher::new();
        attacher.before_delete(&namespace, &id, config);
        let _ = runc.status("delete", &["--force".into(), OsString::from(&id)]);
        if let Ok(rt) = runtime() {
            rt.block_on(attacher.detach(&namespace, &id, config));
        }
    }
    code
}

/// Waits for `pid` (our child through the subreaper) and returns its exit code.
fn wait_for(pid: u32) -> i32 {
    use nix::sys::wait::{waitpid, WaitStatus};
    let target = nix::unistd::Pid::from_raw(pid as i32);
    loop {
        match waitpid(target, None) {
            Ok(WaitStatus::Exited(_, code)) => return code,
            Ok(WaitStatus::Signaled(_, sig, _)) => return 128 + sig as i32,
            Ok(_) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return 1,
        }
    }
}
