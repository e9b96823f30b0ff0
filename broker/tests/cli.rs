//! End-to-end over the binaries: 50 concurrent `tetherctl acquire` spawn tetherd on
//! demand (with its hidden fake backend, so no root or bpf is needed) and cause one load.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

const TETHERD: &str = env!("CARGO_BIN_EXE_tetherd");
const TETHERCTL: &str = env!("CARGO_BIN_EXE_tetherctl");

/// Stops the tetherd serving `socket` (pid from its lock file) when dropped.
struct Daemon {
    socket: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let lock = self.socket.with_file_name("tetherd.lock");
        let Some(pid) = std::fs::read_to_string(lock)
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
        else {
            return;
        };
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
        let end = Instant::now() + Duration::from_secs(10);
        while self.socket.exists() && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn ctl(socket: &Path, args: &[&str]) -> Result<Output> {
    Command::new(TETHERCTL)
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()
        .context("run tetherctl")
}

/// Starts tetherd (fake backend) on `socket` with `config`, its stderr in `log`, and waits
/// for the socket; fails with the log if tetherd exits first.
fn start_fake_tetherd(
    config: &Path,
    socket: &Path,
    log: &Path,
) -> Result<(std::process::Child, Daemon)> {
    let mut child = Command::new(TETHERD)
        .args(["--fake-backend", "--config"])
        .arg(config)
        .arg("--socket")
        .arg(socket)
        .stderr(std::fs::File::create(log)?)
        .spawn()?;
    let daemon = Daemon {
        socket: socket.to_path_buf(),
    };
    let end = Instant::now() + Duration::from_secs(20);
    while !socket.exists() && Instant::now() < end {
        if let Some(status) = child.try_wait()? {
            bail!(
                "tetherd exited ({status}): {}",
                std::fs::read_to_string(log)?
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((child, daemon))
}

#[test]
fn fifty_acquires_spawn_one_tetherd_and_load_once() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let socket = dir.path().join("run/tetherd.sock");
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[broker]\naudit_log = \"{}\"\nallowed_uids = [{}]\n",
            dir.path().join("audit.jsonl").display(),
            nix::unistd::getuid()
        ),
    )?;
    let wrapper = dir.path().join("tetherd-fake");
    std::fs::write(
        &wrapper,
        format!("#!/bin/sh\nexec {TETHERD} --fake-backend \"$@\"\n"),
    )?;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755))?;
    let _daemon = Daemon {
        socket: socket.clone(),
    };

    let children: Vec<_> = (0..50)
        .map(|_| {
            Command::new(TETHERCTL)
                .arg("--socket")
                .arg(&socket)
                .args(["--json", "acquire", "--tetherd"])
                .arg(&wrapper)
                .arg("--config")
                .arg(&config)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
        })
        .collect::<Result<_, _>>()?;
    let mut loaded_now = 0;
    for c in children {
        let out = c.wait_with_output()?;
        ensure!(
            out.status.success(),
            "tetherctl acquire failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        ensure!(v["version"] == "fake-v1", "{v}");
        ensure!(v["programs"][0]["id"].is_u64(), "{v}");
        loaded_now += usize::from(v["loaded_now"] == true);
    }
    assert_eq!(loaded_now, 1);

    let out = ctl(&socket, &["--json", "status"])?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let st: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(st["loads"], 1);
    assert_eq!(st["acquires"], 50);

    let out = ctl(&socket, &["status"])?;
    let text = String::from_utf8(out.stdout)?;
    ensure!(text.contains("loads:             1"), "{text}");

    let out = ctl(&socket, &["stats", "nope"])?;
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr)?;
    ensure!(err.contains("nope") && err.contains("NOT_FOUND"), "{err}");

    let out = ctl(&socket, &["ps"])?;
    ensure!(out.status.success());
    ensure!(String::from_utf8(out.stdout)?.starts_with("ID "));

    let out = ctl(&socket, &["bogus-command"])?;
    assert_eq!(out.status.code(), Some(2));

    // A second tetherd on the same socket says so and exits 0.
    let out = Command::new(TETHERD)
        .args(["--fake-backend", "--config"])
        .arg(&config)
        .arg("--socket")
        .arg(&socket)
        .output()?;
    ensure!(out.status.success());
    let err = String::from_utf8(out.stderr)?;
    ensure!(err.contains("tetherd already running (pid "), "{err}");
    Ok(())
}

#[test]
fn a_tetherd_that_does_not_come_up_is_named_with_its_log() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let socket = dir.path().join("run/tetherd.sock");
    // A "tetherd" that exits at once.
    let out = ctl(
        &socket,
        &["--timeout", "0.5", "acquire", "--tetherd", "/bin/false"],
    )?;
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr)?;
    let log = dir.path().join("run/tetherd.log");
    ensure!(
        err.contains("started on demand") && err.contains(&log.display().to_string()),
        "{err}"
    );
    Ok(())
}

#[test]
fn tetherctl_fails_cleanly_without_tetherd() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let out = ctl(
        &dir.path().join("none.sock"),
        &["--timeout", "0.2", "status"],
    )?;
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr)?;
    if !err.contains("connect to tetherd") {
        bail!("{err}");
    }
    Ok(())
}

/// An audit log that cannot be opened (its directory is a file) does not keep tetherd from
/// serving: it starts, answers, and its log says what is lost.
#[test]
fn tetherd_serves_when_its_audit_log_cannot_be_opened() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let socket = dir.path().join("run/tetherd.sock");
    let not_a_dir = dir.path().join("file");
    std::fs::write(&not_a_dir, "")?;
    let audit = not_a_dir.join("audit.jsonl");
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[broker]\naudit_log = \"{}\"\nallowed_uids = [{}]\n",
            audit.display(),
            nix::unistd::getuid()
        ),
    )?;
    let log = dir.path().join("tetherd.log");
    let (mut child, _daemon) = start_fake_tetherd(&config, &socket, &log)?;
    let out = ctl(&socket, &["--json", "status"])?;
    ensure!(
        out.status.success(),
        "status: {}; tetherd: {}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(&log)?
    );
    let text = std::fs::read_to_string(&log)?;
    ensure!(
        text.contains(&audit.display().to_string()) && text.contains("audit events are lost"),
        "{text}"
    );
    drop(_daemon);
    let _ = child.wait();
    Ok(())
}

/// `[broker] allowed_uids` works end to end: a listed uid reaches the socket and is
/// admitted; another uid reaches it too and is refused by the peer-credential check with
/// a reason, not by the file system. (Needs root, to run tetherctl as other users.)
#[test]
fn allowed_uids_admit_the_listed_users_and_refuse_the_rest() -> Result<()> {
    ensure!(
        nix::unistd::geteuid().is_root(),
        "this test runs tetherctl as other users: run it as root"
    );
    let dir = tempfile::tempdir()?;
    // Other users must be able to walk to the socket.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
    let socket = dir.path().join("run/tetherd.sock");
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[broker]\naudit_log = \"{}\"\nallowed_uids = [65534]\n",
            dir.path().join("audit.jsonl").display()
        ),
    )?;
    let log = dir.path().join("tetherd.log");
    let (mut child, daemon) = start_fake_tetherd(&config, &socket, &log)?;
    let as_user = |uid: u32| -> Result<Output> {
        Command::new("setpriv")
            .arg(format!("--reuid={uid}"))
            .arg(format!("--regid={uid}"))
            .arg("--clear-groups")
            .arg(TETHERCTL)
            .arg("--socket")
            .arg(&socket)
            .args(["--timeout", "5", "--json", "status"])
            .output()
            .context("setpriv tetherctl")
    };
    let listed = as_user(65534)?;
    ensure!(
        listed.status.success(),
        "uid 65534 (listed): {}; tetherd: {}",
        String::from_utf8_lossy(&listed.stderr),
        std::fs::read_to_string(&log)?
    );
    let other = as_user(65533)?;
    let err = String::from_utf8_lossy(&other.stderr);
    ensure!(
        !other.status.success() && err.contains("PERMISSION_DENIED") && err.contains("65533"),
        "uid 65533 (not listed): {err}"
    );
    drop(daemon);
    let _ = child.wait();
    Ok(())
}
