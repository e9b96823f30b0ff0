//! `tether-runc`: a runc-compatible binary for callers that take an OCI runtime binary rather
//! than a shim (Docker 20.10's `runtimes`, containerd's runc shim `BinaryName`, Podman, CRI-O).
//!
//! Every runc command, flag, output and exit code passes through unchanged: most commands
//! `exec` the real runc. These differ:
//! - `create`: after runc's `create` succeeds, the container's programs are attached (as the
//!   shim does between create and start) before `tether-runc` returns; a fail-closed attach
//!   failure force-deletes the container and exits 1 with the reason (also written to runc's
//!   `--log` in its format, where callers such as containerd's shim read runc's errors).
//! - `start`: interfaces that appeared since create are attached, then runc's `start` runs.
//! - `delete`: runc's `delete` runs, then the container's programs are detached.
//! - `run` is `create` + attach + `start` (+ wait, for a foreground run).
//! - `restore` starts the container inside runc's call: refused under a fail-closed plan.
//! - `exec`: a container that runs without some capabilities (where the kernel runs no
//!   tether LSM program, a container under a policy has no `CAP_NET_RAW`) exec's without
//!   them too.
//!
//! One file per command tether handles ([`create`], [`start`], [`delete`], [`run`],
//! [`restore`], [`exec_process`]); every other command is [`exec`]'d. [`args`] parses the command line (passing unknown flags
//! through), [`report`] writes errors as runc does, [`watch`] is the link watcher process.
//! runc itself is run by [`crate::runc::Passthrough`]; the attach steps by the shim's
//! [`crate::attach::attacher::Attacher`].
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::runc::Passthrough;

pub mod args;
pub mod create;
pub mod delete;
pub mod exec;
pub mod exec_process;
pub mod report;
pub mod restore;
pub mod run;
pub mod runtime;
pub mod start;
pub mod watch;

use args::RuncArgs;
use report::report;

/// Where runc is looked for when the caller gives no `PATH` (Podman runs `kill` and
/// `delete` with an empty environment): root's usual search path, as runc's own callers
/// assume.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The real runc: `$TETHER_RUNC`, else `[runc] binary` of the config, else `runc` on PATH
/// (or [`DEFAULT_PATH`] where there is none), never this binary itself, should it be
/// installed as `runc`.
fn real_runc(config: &Config) -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("TETHER_RUNC") {
        return Ok(PathBuf::from(p));
    }
    let name = config.runc.binary.clone().unwrap_or_else(|| "runc".into());
    let me = std::env::current_exe()
        .ok()
        .and_then(|p| p.canonicalize().ok());
    find_runc(&name, std::env::var_os("PATH"), me.as_deref())
}

/// `name` itself if it is a path, else the first file of that name in the directories of
/// `path` (an unset or empty `path`: [`DEFAULT_PATH`]) that is not `me`.
fn find_runc(name: &str, path: Option<OsString>, me: Option<&Path>) -> Result<PathBuf, String> {
    if name.contains('/') {
        return Ok(PathBuf::from(name));
    }
    let path = path
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| DEFAULT_PATH.into());
    for dir in std::env::split_paths(&path) {
        let cand = dir.join(name);
        if cand.is_file() && cand.canonicalize().ok().as_deref() != me {
            return Ok(cand);
        }
    }
    Err(format!(
        "tether-runc: no {name} in {} (set TETHER_RUNC, or [runc] binary in the config)",
        path.to_string_lossy()
    ))
}

/// Runs `tether-runc` with `argv` (without the program name); returns the exit code.
pub fn main_with(argv: Vec<OsString>) -> i32 {
    if argv.first().is_some_and(|a| a == watch::WATCH_ARG) {
        return watch::watch(&argv[1..]);
    }
    let args = RuncArgs::parse(&argv);
    let config = match Config::load(None) {
        Ok(c) => c,
        Err(e) => {
            report(&args, &format!("tether-runc: {e}"));
            return 1;
        }
    };
    let runc = match real_runc(&config) {
        Ok(r) => Passthrough::new(r, args.global.clone()),
        Err(e) => {
            report(&args, &e);
            return 127;
        }
    };
    match args.command.as_deref() {
        Some("create") => create::create(&runc, &args, &config, &args.args).0,
        Some("start") => start::start(&runc, &args, &config),
        Some("delete") => delete::delete(&runc, &args, &config),
        Some("run") => run::run(&runc, &args, &config),
        Some("restore") => restore::restore(&runc, &args, &config),
        Some("exec") => exec_process::exec_process(&runc, &args, &config),
        _ => exec::exec(&runc, &args),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Podman runs `kill` and `delete` with no PATH at all: runc is still found.
    #[test]
    fn runc_is_found_without_a_path() {
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("runc");
        std::fs::write(&fake, "").unwrap();
        let on = |p: &Path| Some(OsString::from(p));
        assert_eq!(find_runc("runc", on(dir.path()), None).unwrap(), fake);
        // The default path is searched where PATH is unset or empty.
        for path in [None, Some(OsString::new())] {
            match find_runc("runc", path, None) {
                Ok(found) => assert!(DEFAULT_PATH.split(':').any(|d| found.starts_with(d))),
                Err(e) => assert!(e.contains(DEFAULT_PATH), "{e}"),
            }
        }
        // Never tether-runc itself, installed as runc.
        let me = fake.canonicalize().unwrap();
        assert!(find_runc("runc", on(dir.path()), Some(&me)).is_err());
        // A path is taken as it is.
        assert_eq!(
            find_runc("/opt/runc", None, None).unwrap(),
            PathBuf::from("/opt/runc")
        );
    }
}
