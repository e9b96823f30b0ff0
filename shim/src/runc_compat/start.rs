//! `start`: interfaces that appeared since create (CNI run by the caller) get programs,
//! then runc's `start` runs.
use super::args::RuncArgs;
use super::exec::exec;
use super::report::report;
use super::runtime::runtime;
use crate::attach::attacher::Attacher;
use crate::attach::plan::Plan;
use crate::config::Config;
use crate::container::load_spec;
use crate::runc::Passthrough;

pub fn start(runc: &Passthrough, args: &RuncArgs, config: &Config) -> i32 {
    if let Some(id) = args.container_id() {
        if let Err(e) = before_start(runc, args, config, &id) {
            report(args, &format!("tether-runc: {e}"));
            return 1;
        }
    }
    exec(runc, args)
}

/// The attach step's `before_start` for a container `tether-runc create` attached: found
/// from its pins, with the plan of its bundle.
fn before_start(
    runc: &Passthrough,
    args: &RuncArgs,
    config: &Config,
    id: &str,
) -> Result<(), String> {
    let state = runc.state(id).map_err(|e| e.to_string())?;
    if !state.created {
        // Started already, or stopped: runc's start says so; nothing of the attach step
        // runs for a container that has run.
        return Ok(());
    }
    let spec = load_spec(&state.bundle).map_err(|e| e.to_string())?;
    let plan = Plan::resolve(config, &spec).map_err(|e| e.to_string())?;
    let rt = runtime()?;
    let attacher = Attacher::new();
    rt.block_on(attacher.before_start_from_pins(&args.namespace(), id, state.pid, config, &plan))
        .map_err(|e| e.to_string())
}
