//! `restore`: runc's `restore` starts the container's processes from a checkpoint inside the
//! call itself, with no gap between create and start for the attach step. Under a plan that
//! fails closed it is refused before runc runs; under an open one it runs, and tether-runc
//! says on stderr that the restored container has no programs.
use std::path::PathBuf;

use super::args::RuncArgs;
use super::exec::exec;
use super::report::report;
use crate::attach::plan::Plan;
use crate::config::Config;
use crate::container::load_spec;
use crate::runc::Passthrough;

pub fn restore(runc: &Passthrough, args: &RuncArgs, config: &Config) -> i32 {
    let Some(id) = args.container_id() else {
        return exec(runc, args);
    };
    let bundle = args
        .arg_value(&["--bundle", "-b"])
        .map(PathBuf::from)
        .or_else(|| std::env::current_dir().ok())
        .unwrap_or_else(|| PathBuf::from("."));
    let plan = match load_spec(&bundle).and_then(|spec| Plan::resolve(config, &spec)) {
        Ok(p) => p,
        Err(e) => {
            report(args, &format!("tether-runc: {e}"));
            return 1;
        }
    };
    if plan.enabled {
        let why = "a restored container runs from inside runc restore, before tether can \
                   attach its programs";
        if plan.fail_closed {
            report(
                args,
                &format!("tether-runc: {id}: restore refused: {why} (failure policy: closed)"),
            );
            return 1;
        }
        eprintln!("tether-runc: {id}: {why}: it runs without programs (failure policy: open)");
    }
    exec(runc, args)
}
