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

/// A private bpffs and tether config for tether-runc, with the tetherd it starts stopped
/// (by the pid in its lock file) and bpffs unmounted on drop.
struct Node {
    dir: tempfile::TempDir,
}

impl Node {
    fn new(extra: &str) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let bpffs = dir.path().join("bpffs");
        std::fs::create_dir(&bpffs)?;
        tether_integration::bpffs::mount(&bpffs)?;
        std::fs::write(
            dir.path().join("tether.toml"),
            format!(
                "[broker]\nsocket = \"{0}/tetherd/tetherd.sock\"\npin_root = \"{0}/bpffs/tether\"\naudit_log = \"{0}/tetherd/audit.jsonl\"\n{extra}\n",
                dir.path().display()
            ),
        )?;
        Ok(Node { dir })
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("tether.toml")
    }

    fn container_dir(&self, ns: &str, id: &str) -> PathBuf {
        self.dir
            .path()
            .join("bpffs/tether/containers")
            .join(ns)
            .join(id)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let lock = self.dir.path().join("tetherd/tetherd.lock");
        if let Some(pid) = std::fs::read_to_string(lock)
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let _ = nix::mount::umount2(
            &self.dir.path().join("bpffs"),
            nix::mount::MntFlags::MNT_DETACH,
        );
    }
}

/// A bundle whose process is `args` (busybox rootfs, no terminal, a new netns).
fn bundle(args: &[&str]) -> Result<tempfile::TempDir> {
    let b = tempfile::tempdir()?;
    tether_integration::rootfs::build_busybox(&b.path().join("rootfs"))?;
    let ok = Command::new("runc")
        .args(["spec", "--bundle"])
        .arg(b.path())
        .status()?;
    ensure!(ok.success(), "runc spec");
    let path = b.path().join("config.json");
    let mut spec: serde_json::Value = serde_json::from_slice(&std::fs::read(&path)?)?;
    spec["process"]["terminal"] = serde_json::Value::Bool(false);
    spec["process"]["args"] = serde_json::json!(args);
    std::fs::write(&path, serde_json::to_vec_pretty(&spec)?)?;
    Ok(b)
}

#[test]
fn run_attaches_before_the_first_instruction_and_returns_the_exit_code() -> Result<()> {
    let node = Node::new("[attach]\negress_deny = [\"127.0.0.2/32\"]\n")?;
    let root = tempfile::tempdir()?;
    let runc_root = root.path().join("tether-runc-test");
    let id = format!("trun{}", std::process::id());
    let run = |b: &tempfile::TempDir, extra: &[&str], detach: bool| -> Result<Output> {
        let mut c = Command::new(tether_runc()?);
        if detach {
            // A detached container keeps the stdio it was given: give it none to hold open.
            c.stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null());
        }
        Ok(c.arg("--root")
            .arg(&runc_root)
            .arg("run")
            .args(extra)
            .arg("--bundle")
            .arg(b.path())
            .arg(&id)
            .env("TETHER_CONFIG", node.config())
            .output()?)
    };

    // Foreground: the first instruction is denied; the container's exit code comes back.
    let b = bundle(&["/bin/sh", "-c", "nc 127.0.0.2 9; exit 7"])?;
    let out = run(&b, &[], false)?;
    ensure!(
        out.status.code() == Some(7),
        "exit {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        String::from_utf8_lossy(&out.stderr).contains("Operation not permitted"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        !node.container_dir("tether-runc-test", &id).exists(),
        "pins left after run"
    );

    // Detached: attached and running; delete detaches.
    let b = bundle(&["/bin/sleep", "1000"])?;
    let out = run(&b, &["--detach"], true)?;
    ensure!(out.status.success(), "detached run: {:?}", out.status);
    ensure!(
        node.container_dir("tether-runc-test", &id).exists(),
        "not attached"
    );
    let delete = |extra: &[&str]| -> Result<std::process::ExitStatus> {
        Ok(Command::new(tether_runc()?)
            .arg("--root")
            .arg(&runc_root)
            .arg("delete")
            .args(extra)
            .arg(&id)
            .env("TETHER_CONFIG", node.config())
            .stderr(std::process::Stdio::null())
            .status()?)
    };
    // runc refuses to delete a running container without --force: it keeps its programs.
    ensure!(!delete(&[])?.success(), "delete of a running container");
    ensure!(
        node.container_dir("tether-runc-test", &id).exists(),
        "detached although runc kept the container"
    );
    ensure!(delete(&["--force"])?.success(), "delete --force");
    ensure!(
        !node.container_dir("tether-runc-test", &id).exists(),
        "pins left after delete"
    );
    Ok(())
}

/// Runs tether-runc as rootless Podman does: inside a user namespace whose root is not the
/// host's (`unshare --user --map-root-user` maps one uid).
fn rootless(node: &Node, runc_root: &std::path::Path, args: &[&str]) -> Result<Output> {
    Ok(Command::new("unshare")
        .args(["--user", "--map-root-user", "--"])
        .arg(tether_runc()?)
        .arg("--root")
        .arg(runc_root)
        .args(args)
        .env("TETHER_CONFIG", node.config())
        .stdin(std::process::Stdio::null())
        .output()?)
}

#[test]
fn a_rootless_create_is_refused_when_fail_closed_and_said_when_open() -> Result<()> {
    let b = bundle(&["/bin/true"])?;
    let root = tempfile::tempdir()?;
    let runc_root = root.path().join("runc");
    let id = format!("trl{}", std::process::id());
    let bundle_arg = b.path().to_string_lossy().into_owned();

    // Fail-closed (a deny rule): refused before runc runs, with the reason.
    let node = Node::new("[attach]\negress_deny = [\"127.0.0.2/32\"]\n")?;
    let out = rootless(&node, &runc_root, &["create", "--bundle", &bundle_arg, &id])?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.code() == Some(1), "exit {:?}: {err}", out.status);
    ensure!(
        err.contains("a rootless container cannot be attached") && err.contains("closed"),
        "{err}"
    );
    ensure!(!runc_root.join(&id).exists(), "runc ran: {err}");
    ensure!(
        !node.dir.path().join("tetherd").exists(),
        "tetherd was asked for programs: {err}"
    );

    // Fail-open: said on stderr, and nothing of tether's is made for it.
    let node =
        Node::new("[attach]\negress_deny = [\"127.0.0.2/32\"]\nfailure_policy = \"open\"\n")?;
    let out = rootless(&node, &runc_root, &["create", "--bundle", &bundle_arg, &id])?;
    let _ = rootless(&node, &runc_root, &["delete", "--force", &id]);
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        err.contains("a rootless container cannot be attached")
            && err.contains("runs without programs"),
        "{err}"
    );
    ensure!(
        !node.container_dir("tether-runc-test", &id).exists()
            && !node.container_dir("default", &id).exists(),
        "pins made for a rootless container"
    );
    Ok(())
}

/// A container created by runc itself, not through tether-runc, has no programs: under a
/// fail-closed plan `tether-runc start` refuses it (it stays created); under an open one it
/// starts.
#[test]
fn start_refuses_a_container_its_create_did_not_attach_when_fail_closed() -> Result<()> {
    let root = tempfile::tempdir()?;
    let runc_root = root.path().join("tether-runc-test");
    let id = format!("tstart{}", std::process::id());
    let b = bundle(&["/bin/sleep", "1000"])?;
    let runc = |prog: &std::path::Path, node: Option<&Node>, args: &[&str]| -> Result<Output> {
        let mut c = Command::new(prog);
        c.arg("--root").arg(&runc_root).args(args);
        if let Some(n) = node {
            c.env("TETHER_CONFIG", n.config());
        }
        Ok(c.stdin(std::process::Stdio::null()).output()?)
    };
    let status = |node: &Node| -> Result<String> {
        let out = runc(&tether_runc()?, Some(node), &["state", &id])?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        Ok(v["status"].as_str().unwrap_or_default().to_string())
    };
    let bundle_arg = b.path().display().to_string();
    let plain = std::path::PathBuf::from("runc");
    // The created container keeps the stdio it was given: give it none to hold open.
    let create = || -> Result<()> {
        let ok = Command::new(&plain)
            .arg("--root")
            .arg(&runc_root)
            .args(["create", "--bundle", &bundle_arg, &id])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()?;
        ensure!(ok.success(), "runc create: {ok}");
        Ok(())
    };

    let closed = Node::new("[attach]\negress_deny = [\"127.0.0.2/32\"]\n")?;
    create()?;
    let out = runc(&tether_runc()?, Some(&closed), &["start", &id])?;
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let state = status(&closed)?;
    let _ = runc(&plain, None, &["delete", "--force", &id]);
    ensure!(out.status.code() == Some(1), "started: {err}");
    ensure!(err.contains("has no programs"), "{err}");
    ensure!(state == "created", "{state}");

    // The control: the same start under an open plan runs the container.
    let open =
        Node::new("[attach]\negress_deny = [\"127.0.0.2/32\"]\nfailure_policy = \"open\"\n")?;
    create()?;
    let out = runc(&tether_runc()?, Some(&open), &["start", &id])?;
    let state = status(&open)?;
    let _ = runc(&plain, None, &["delete", "--force", &id]);
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(state == "running", "{state}");
    Ok(())
}

/// `restore` starts the container inside runc's call, with no gap for the attach step:
/// refused before runc runs under a fail-closed plan; under an open one runc's restore runs
/// (here it fails on a missing image, exactly as runc's own), with a warning.
#[test]
fn restore_is_refused_when_fail_closed_and_runc_s_own_when_open() -> Result<()> {
    let root = tempfile::tempdir()?;
    let runc_root = root.path().join("tether-runc-restore");
    let id = format!("trestore{}", std::process::id());
    let b = bundle(&["/bin/sleep", "1000"])?;
    let image = root.path().join("no-such-image");
    let args = |bin: &std::path::Path, node: Option<&Node>| -> Result<Output> {
        let mut c = Command::new(bin);
        c.arg("--root").arg(&runc_root).arg("restore");
        c.arg("--bundle")
            .arg(b.path())
            .arg("--image-path")
            .arg(&image);
        c.arg("--detach").arg(&id);
        if let Some(n) = node {
            c.env("TETHER_CONFIG", n.config());
        }
        Ok(c.stdin(std::process::Stdio::null()).output()?)
    };

    let closed = Node::new("[attach]\negress_deny = [\"127.0.0.2/32\"]\n")?;
    let out = args(&tether_runc()?, Some(&closed))?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.code() == Some(1), "closed: {out:?}");
    ensure!(
        err.contains("restore refused") && err.contains("failure policy: closed"),
        "{err}"
    );
    ensure!(!runc_root.join(&id).exists(), "runc ran: {out:?}");

    let open = Node::new("")?;
    let ours = args(&tether_runc()?, Some(&open))?;
    let theirs = args(std::path::Path::new("runc"), None)?;
    let err = String::from_utf8_lossy(&ours.stderr);
    ensure!(
        ours.status.code() == theirs.status.code() && ours.status.code() != Some(0),
        "open: {ours:?} vs runc's {theirs:?}"
    );
    ensure!(err.contains("runs without programs"), "{err}");
    Ok(())
}
