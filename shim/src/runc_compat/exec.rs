//! Every runc command `tether-runc` does not handle itself: this process becomes runc, with
//! the caller's command line unchanged.
use super::args::RuncArgs;
use super::report::report;
use crate::runc::Passthrough;

/// Replaces this process with runc running `args`; returns runc's exit code for "could not
/// execute" (127) if that failed.
pub fn exec(runc: &Passthrough, args: &RuncArgs) -> i32 {
    let err = runc.exec(args.command.as_deref(), &args.args);
    report(
        args,
        &format!("tether-runc: exec {}: {err}", runc.binary().display()),
    );
    127
}
