//! Create fails cleanly and in time: a malformed annotation, and the failure policy when the
//! programs cannot be had (closed fails Create with the reason, open runs unprotected).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{ensure, Result};

use super::{container_dir, tether};

#[test]
fn malformed_annotation_fails_create() -> Result<()> {
    tether("bad_annotation", |env| {
        for (ann, want) in [
            ("tether.io/egress-deny=10.0.0.1/8", "host bits"),
            ("tether.io/egress-deny=banana", "banana"),
            ("tether.io/egres-deny=1.2.3.4", "unknown annotation"),
            ("tether.io/failure-policy=sometimes", "sometimes"),
            ("tether.io/count-at=eth0", "tether.io/count-at"),
        ] {
            let id = env.id("bad");
            let out = env.ctr.run_container(
                &env.run(&id)
                    .rm()
                    .flag("--annotation")
                    .flag(ann)
                    .command(["/bin/true"]),
            )?;
            ensure!(out.code != 0, "{ann}: created anyway: {out}");
            ensure!(out.stderr.contains(want), "{ann}: {out}");
            let _ = env.ctr.run(["container", "rm", &id]);
            ensure!(!container_dir(env, &id).exists(), "{ann}: pins left");
            env.assert_no_leaks(&id)?;
        }
        Ok(())
    })
}

#[test]
fn failure_policy_closed_fails_create_open_runs_and_nothing_hangs() -> Result<()> {
    tether("failure_policy", |env| {
        // Pins missing under a pin root of its own, and a "tetherd" that never answers:
        // every attach waits for the broker until the deadline and fails.
        let dir = tempfile::tempdir()?;
        let hang = dir.path().join("tetherd");
        let pids = dir.path().join("pids");
        std::fs::write(
            &hang,
            format!("#!/bin/sh\necho $$ >> {}\nexec sleep 600\n", pids.display()),
        )?;
        std::fs::set_permissions(&hang, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        let cfg = env.containerd().tether_config();
        let original = std::fs::read_to_string(&cfg)?;
        // The fixture's own [attach] section, if any, is last: this one replaces it.
        let broken = original
            .split("[attach]")
            .next()
            .unwrap_or_default()
            .replace(
                &env.containerd().pin_root().display().to_string(),
                &env.containerd()
                    .bpffs_dir()
                    .join("empty")
                    .display()
                    .to_string(),
            )
            .replace(
                &env.containerd().tetherd_socket().display().to_string(),
                &dir.path().join("none.sock").display().to_string(),
            )
            + &format!(
                "[attach]\ndeadline_ms = 700\ntetherd = \"{}\"\n",
                hang.display()
            );
        std::fs::write(&cfg, broken)?;
        struct Restore(PathBuf, String, PathBuf);
        impl Drop for Restore {
            fn drop(&mut self) {
                let _ = std::fs::write(&self.0, &self.1);
                // The stand-ins the shims started: stop them, by the pids they wrote.
                for pid in std::fs::read_to_string(&self.2).unwrap_or_default().lines() {
                    if let Ok(pid) = pid.trim().parse::<i32>() {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                    }
                }
            }
        }
        let _restore = Restore(cfg.clone(), original, pids.clone());

        // Fail-closed (the plan denies something): Create fails with the reason, in time.
        let id = env.id("closed");
        let started = std::time::Instant::now();
        let out = env.ctr.run_container(
            &env.run(&id)
                .rm()
                .flag("--annotation")
                .flag("tether.io/egress-deny=127.0.0.2")
                .command(["/bin/true"]),
        )?;
        ensure!(out.code != 0, "created without its programs: {out}");
        ensure!(out.stderr.contains("tether attach"), "{out}");
        ensure!(
            started.elapsed() < Duration::from_secs(15),
            "create took {:?}",
            started.elapsed()
        );
        let _ = env.ctr.run(["container", "rm", &id]);
        env.assert_no_leaks(&id)?;

        // Fail-open: the container runs without programs.
        let id = env.id("open");
        let out = env.ctr.run_container(
            &env.run(&id)
                .rm()
                .flag("--annotation")
                .flag("tether.io/egress-deny=127.0.0.2")
                .flag("--annotation")
                .flag("tether.io/failure-policy=open")
                .command(["/bin/nc", "127.0.0.2", "9"]),
        )?;
        ensure!(
            out.stderr.contains("Connection refused"),
            "fail-open runs unprotected: {out}"
        );
        env.assert_no_leaks(&id)
    })
}
