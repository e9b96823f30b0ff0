//! The README's first command, `bash scripts/demo.sh`, end to end: it builds, starts a
//! private containerd, and shows a denied first connect and per-container statistics.
use std::path::Path;
use std::process::Command;

use anyhow::{ensure, Result};

#[test]
fn the_readme_quickstart_runs() -> Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new("bash")
        .arg("scripts/demo.sh")
        .current_dir(&root)
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");
    for want in [
        "exit code: 3 (the container's own)",
        "Operation not permitted",
        "-- tetherctl stats",
        "demo-sleeper",
        "deny_connect",
        "deleted",
    ] {
        ensure!(
            stdout.contains(want) || stderr.contains(want),
            "{want:?} missing from the demo's output:\n{stdout}\n{stderr}"
        );
    }
    Ok(())
}
