//! tether-runc passes runc's commands through unchanged: the same output and exit code as
//! runc itself, for commands tether does not touch.
use std::path::PathBuf;
use std::process::{Command, Output};

use anyhow::{ensure, Result};

fn tether_runc() -> Result<PathBuf> {
    let p = tether_integration::containerd::tether_shim_binary()?
        .parent()
        .map(|d| d.join("tether-runc"))
        .ok_or_else(|| anyhow::anyhow!("no build directory"))?;
    ensure!(p.is_file(), "{} is not built", p.display());
    Ok(p)
}

fn both(args: &[&str]) -> Result<(Output, Output)> {
    let ours = Command::new(tether_runc()?)
        .args(args)
        .env("TETHER_CONFIG", "/dev/null")
        .output()?;
    let theirs = Command::new("runc").args(args).output()?;
    Ok((ours, theirs))
}

#[test]
fn untouched_commands_behave_exactly_as_runc() -> Result<()> {
    let root = tempfile::tempdir()?;
    let root_arg = root.path().display().to_string();
    let cases: Vec<Vec<&str>> = vec![
        vec!["--version"],
        vec!["--root", &root_arg, "list"],
        vec!["--root", &root_arg, "list", "--format", "json"],
        vec!["--root", &root_arg, "state", "no-such-container"],
        vec!["--root", &root_arg, "kill", "no-such-container", "KILL"],
        vec!["--root", &root_arg, "no-such-command"],
    ];
    for args in cases {
        let (ours, theirs) = both(&args)?;
        ensure!(
            ours.status.code() == theirs.status.code(),
            "{args:?}: exit {:?} vs runc's {:?}",
            ours.status,
            theirs.status
        );
        ensure!(ours.stdout == theirs.stdout, "{args:?}: stdout differs");
        // runc's errors carry a timestamp; compare them without it.
        let strip = |b: &[u8]| {
            String::from_utf8_lossy(b)
                .lines()
                .map(|l| l.split_once("msg=").map_or(l, |(_, m)| m).to_string())
                .collect::<Vec<_>>()
        };
        ensure!(
            strip(&ours.stderr) == strip(&theirs.stderr),
            "{args:?}: stderr differs"
        );
    }
    // `spec` writes the same config.json.
    let a = tempfile::tempdir()?;
    let b = tempfile::tempdir()?;
    let s1 = Command::new(tether_runc()?)
        .args(["spec", "--bundle"])
        .arg(a.path())
        .env("TETHER_CONFIG", "/dev/null")
        .status()?;
    let s2 = Command::new("runc")
        .args(["spec", "--bundle"])
        .arg(b.path())
        .status()?;
    ensure!(s1.success() && s2.success());
    ensure!(
        std::fs::read(a.path().join("config.json"))?
            == std::fs::read(b.path().join("config.json"))?
    );
    Ok(())
}
