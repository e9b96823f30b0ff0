//! `runc exec` through `tether-runc`: a process exec'd into a container that runs without
//! some capabilities (see `Attacher::hardening`) gets them neither, whether its
//! process spec comes in a file (`--process`, as Docker and Podman give it) or from
//! `--cap` flags. Everything else is runc's, unchanged.
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use super::args::{flag_name, RuncArgs};
use super::exec::exec;
use super::report::report;
use crate::attach::plan::Plan;
use crate::config::Config;
use crate::container::load_spec;
use crate::runc::Passthrough;

/// runc exec's flags that take a value.
const EXEC_VALUE_FLAGS: &[&str] = &[
    "--console-socket",
    "--cwd",
    "--env",
    "-e",
    "--process",
    "-p",
    "--apparmor",
    "--process-label",
    "--pid-file",
    "--cap",
    "-c",
    "--user",
    "-u",
    "--additional-gids",
    "-g",
    "--preserve-fds",
    "--cgroup",
];

/// The parts of an exec command line tether reads.
#[derive(Debug, Default, PartialEq, Eq)]
struct ExecLine {
    id: Option<String>,
    process: Option<PathBuf>,
}

fn parse(args: &[OsString]) -> ExecLine {
    let mut line = ExecLine::default();
    let mut i = 0;
    while i < args.len() {
        let a = args[i].to_string_lossy();
        if !a.starts_with('-') {
            line.id = Some(a.into_owned());
            break;
        }
        let name = flag_name(&a);
        let value = match a.split_once('=') {
            Some((_, v)) => Some(OsString::from(v)),
            None if EXEC_VALUE_FLAGS.contains(&name) => {
                i += 1;
                args.get(i).cloned()
            }
            None => None,
        };
        if matches!(name, "--process" | "-p") {
            line.process = value.map(PathBuf::from);
        }
        i += 1;
    }
    line
}

/// `args` without `--cap CAP` (any spelling) for the capabilities `withheld`, up to the
/// container id.
fn without_caps(args: &[OsString], withheld: &[&str]) -> Vec<OsString> {
    let mut out = Vec::with_capacity(args.len());
    let mut i = 0;
    while i < args.len() {
        let a = args[i].to_string_lossy();
        if !a.starts_with('-') {
            out.extend_from_slice(&args[i..]);
            break;
        }
        let name = flag_name(&a);
        let takes = !a.contains('=') && EXEC_VALUE_FLAGS.contains(&name);
        let value = match a.split_once('=') {
            Some((_, v)) => Some(v.to_string()),
            None if takes => args.get(i + 1).map(|v| v.to_string_lossy().into_owned()),
            None => None,
        };
        let step = if takes { 2 } else { 1 };
        let dropped = matches!(name, "--cap" | "-c")
            && value.is_some_and(|v| withheld.iter().any(|w| *w == v));
        if !dropped {
            out.extend(args[i..(i + step).min(args.len())].iter().cloned());
        }
        i += step;
    }
    out
}

/// Rewrites the process spec at `path` without the capabilities `withheld`.
fn rewrite_process(path: &Path, withheld: &[&str]) -> Result<(), String> {
    let bad = |e: &dyn std::fmt::Display| format!("process spec {}: {e}", path.display());
    let bytes = std::fs::read(path).map_err(|e| bad(&e))?;
    let mut process: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| bad(&e))?;
    let mut changed = false;
    for cap in withheld {
        changed |= crate::spec::drop_capability(&mut process, cap);
    }
    if changed {
        let text = serde_json::to_vec(&process).map_err(|e| bad(&e))?;
        std::fs::write(path, text).map_err(|e| bad(&e))?;
    }
    Ok(())
}

/// What the container `id` runs without, decided as its create decided it.
fn withheld(
    runc: &Passthrough,
    id: &str,
    config: &Config,
) -> Result<&'static [&'static str], String> {
    let state = runc.state(id).map_err(|e| e.to_string())?;
    let plan = load_spec(&state.bundle)
        .and_then(|spec| Plan::resolve(config, &spec))
        .map_err(|e| e.to_string())?;
    let layout = crate::attach::programs::layout(config);
    let guarded = tether_bpf::programs::lsm_guards(&layout, tether_bpf::VERSION);
    Ok(if plan.enabled && plan.config.policy && !guarded {
        crate::attach::attacher::hardening_without_lsm(&plan).withheld
    } else {
        &[]
    })
}

/// `runc exec`, the process without the container's withheld capabilities.
pub fn exec_process(runc: &Passthrough, args: &RuncArgs, config: &Config) -> i32 {
    let line = parse(&args.args);
    let Some(id) = line.id else {
        return exec(runc, args);
    };
    // A container runc does not know: runc says so.
    let withheld = match withheld(runc, &id, config) {
        Ok(w) => w,
        Err(_) => return exec(runc, args),
    };
    if withheld.is_empty() {
        return exec(runc, args);
    }
    if let Some(process) = &line.process {
        if let Err(e) = rewrite_process(process, withheld) {
            report(args, &format!("tether-runc: exec {id}: {e}"));
            return 1;
        }
    }
    let args = RuncArgs {
        args: without_caps(&args.args, withheld),
        ..args.clone()
    };
    exec(runc, &args)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn the_id_and_process_file_are_found_past_value_flags() {
        let line = parse(&os(&[
            "--cwd",
            "/",
            "--process",
            "/p.json",
            "-d",
            "--pid-file=/x",
            "ctr1",
            "sh",
        ]));
        assert_eq!(line.id.as_deref(), Some("ctr1"));
        assert_eq!(line.process.as_deref(), Some(Path::new("/p.json")));
        assert_eq!(
            parse(&os(&["-p=/q", "c"])).process.as_deref(),
            Some(Path::new("/q"))
        );
        assert_eq!(parse(&os(&["--tty"])), ExecLine::default());
    }

    #[test]
    fn withheld_caps_are_taken_out_of_the_flags_only() {
        let args = os(&[
            "--cap",
            "CAP_NET_RAW",
            "--cap=CAP_KILL",
            "-c",
            "CAP_NET_RAW",
            "--cap=CAP_NET_RAW",
            "-t",
            "c1",
            "ping",
            "--cap",
            "CAP_NET_RAW",
        ]);
        assert_eq!(
            without_caps(&args, &["CAP_NET_RAW"]),
            os(&["--cap=CAP_KILL", "-t", "c1", "ping", "--cap", "CAP_NET_RAW"])
        );
    }

    #[test]
    fn a_process_file_loses_the_withheld_caps() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("process.json");
        std::fs::write(
            &p,
            r#"{"cwd":"/","args":["sh"],"capabilities":{"bounding":["CAP_NET_RAW","CAP_KILL"]}}"#,
        )
        .unwrap();
        rewrite_process(&p, &["CAP_NET_RAW"]).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        assert_eq!(
            v["capabilities"]["bounding"],
            serde_json::json!(["CAP_KILL"])
        );
        std::fs::write(&p, "{broken").unwrap();
        let e = rewrite_process(&p, &["CAP_NET_RAW"]).unwrap_err();
        assert!(e.contains("process.json"), "{e}");
    }
}
