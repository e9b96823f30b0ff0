//! `delete`: runc's `delete` runs, then the container's programs are detached, unless runc
//! kept the container.
use super::args::RuncArgs;
use super::report::{report, status_code};
use super::runtime::runtime;
use crate::attach::attacher::Attacher;
use crate::config::Config;
use crate::runc::Passthrough;

pub fn delete(runc: &Passthrough, args: &RuncArgs, config: &Config) -> i32 {
    let attacher = Attacher::new();
    let namespace = args.namespace();
    let id = args.container_id();
    // Read before `runc delete` removes the cgroup, and its local counters with it.
    if let Some(id) = &id {
        attacher.before_delete(&namespace, id, config);
    }
    let status = match runc.status("delete", &args.args) {
        Ok(s) => s,
        Err(e) => {
            let bin = runc.binary().display();
            report(args, &format!("tether-runc: run {bin}: {e}"));
            return 1;
        }
    };
    // A delete runc refused (a running container without --force) keeps the container, and
    // its programs with it; a container runc no longer knows has nothing left to keep them
    // for.
    let gone = |id: &str| status.success() || runc.state(id).is_err();
    if let Some(id) = id.filter(|id| gone(id.as_str())) {
        if let Ok(rt) = runtime() {
            rt.block_on(attacher.detach(&namespace, &id, config));
        }
    }
    status_code(status)
}
