//! A minimal busybox root filesystem, built from the host's static busybox.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::process;

/// Where Debian's `busybox-static` installs busybox.
pub const HOST_BUSYBOX: &str = "/bin/busybox";

/// Builds a busybox rootfs in `dir` (created if missing) and returns `dir`.
///
/// Layout: `bin/busybox` (a copy of [`HOST_BUSYBOX`], which must be statically linked) plus a
/// `bin/<applet>` symlink per applet of `busybox --list`; `etc/passwd`, `etc/group`; empty
/// `tmp` (1777), `proc`, `sys`, `dev`, `root`.
pub fn build_busybox(dir: &Path) -> Result<PathBuf> {
    let host = Path::new(HOST_BUSYBOX);
    if !host.is_file() {
        bail!("{HOST_BUSYBOX} missing: install busybox-static");
    }
    for sub in ["bin", "etc", "tmp", "proc", "sys", "dev", "root"] {
        let p = dir.join(sub);
        fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
    }
    let tmp = dir.join("tmp");
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o1777))
        .with_context(|| format!("chmod 1777 {}", tmp.display()))?;

    let busybox = dir.join("bin/busybox");
    fs::copy(host, &busybox)
        .with_context(|| format!("copying {HOST_BUSYBOX} to {}", busybox.display()))?;
    for applet in applets()? {
        // `busybox --list` names busybox itself; linking it would replace the binary with a
        // symlink to itself.
        if applet == "busybox" || applet.contains('/') {
            continue;
        }
        let link = dir.join("bin").join(&applet);
        symlink("busybox", &link).with_context(|| format!("linking {}", link.display()))?;
    }

    fs::write(
        dir.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )
    .context("writing etc/passwd")?;
    fs::write(dir.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n")
        .context("writing etc/group")?;
    Ok(dir.to_path_buf())
}

/// The applet names of the host's busybox.
fn applets() -> Result<Vec<String>> {
    let out = process::run(
        Command::new(HOST_BUSYBOX).arg("--list"),
        None,
        Duration::from_secs(10),
    )?
    .ok()
    .context("busybox --list")?;
    Ok(out
        .stdout
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect())
}

/// Copies the host's `binary` into the rootfs at `dir` as `/bin/<name>`, with the shared
/// libraries it loads (as `ldd` lists them) at their own paths.
pub fn add_binary(dir: &Path, binary: &Path, name: &str) -> Result<()> {
    let out = process::run(
        Command::new("ldd").arg(binary),
        None,
        Duration::from_secs(10),
    )?;
    let mut files = vec![(binary.to_path_buf(), dir.join("bin").join(name))];
    // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)`, `/lib64/ld-linux-x86-64.so.2 (0x...)`;
    // a static binary has none ("not a dynamic executable", a failure).
    if out.success() {
        for lib in out.stdout.split_whitespace().filter(|w| w.starts_with('/')) {
            files.push((PathBuf::from(lib), dir.join(lib.trim_start_matches('/'))));
        }
    }
    for (from, to) in files {
        if let Some(parent) = to.parent() {
            fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        fs::copy(&from, &to)
            .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_a_runnable_tree() {
        let tmp = tempfile::tempdir().unwrap();
        let root = build_busybox(tmp.path()).unwrap();
        assert!(root.join("bin/busybox").is_file());
        assert_eq!(
            fs::read_link(root.join("bin/sh")).unwrap(),
            PathBuf::from("busybox")
        );
        // The binary itself must not have been replaced by a self-link.
        assert!(!fs::symlink_metadata(root.join("bin/busybox"))
            .unwrap()
            .file_type()
            .is_symlink());
        let out = process::run(
            Command::new(root.join("bin/sh")).args(["-c", "echo ok"]),
            None,
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(out.stdout, "ok\n");
    }
}
