//! Create fails cleanly and in time: a malformed annotation, the failure policy when the
//! programs cannot be had (closed fails Create with the reason, open runs unprotected), and
//! a shim killed in the middle of `runc create`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{ensure, Context, Result};

use super::{refused_at_create, tether};

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
            refused_at_create(env, &id, &out, &[want]).context(ann)?;
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
        ensure!(
            started.elapsed() < Duration::from_secs(15),
            "create took {:?}",
            started.elapsed()
        );
        refused_at_create(env, &id, &out, &["tether attach"])?;

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

/// A stand-in for runc whose `create` leaves what a `runc create` killed together with its
/// shim leaves (the container's cgroups in every hierarchy, a process in them that outlives
/// it) and then hangs, as a create in progress; every other verb is the real runc's.
fn mid_create_runc(dir: &std::path::Path, runc: &std::path::Path) -> Result<PathBuf> {
    let script = format!(
        r#"#!/bin/sh
prev=
for a; do [ "$prev" = --bundle ] && bundle=$a; prev=$a; done
case " $* " in
*" create "*) ;;
*) exec {runc} "$@" ;;
esac
path=$(grep -o '"cgroupsPath":"[^"]*"' "$bundle/config.json" | cut -d'"' -f4)
if [ "$(stat -fc %T /sys/fs/cgroup)" = cgroup2fs ]; then
  roots=/sys/fs/cgroup
else
  roots=$(for h in /sys/fs/cgroup/*; do [ -L "$h" ] || ! mountpoint -q "$h" || echo "$h"; done)
fi
for r in $roots; do mkdir -p "$r$path"; done
sleep 1000 </dev/null >/dev/null 2>&1 &
for r in $roots; do
  case "$r" in */cpuset|*/cpu,cpuacct|*/net_cls,net_prio|*/perf_event|*/rdma|*/misc) continue ;; esac
  echo $! >"$r$path/cgroup.procs" 2>/dev/null
done
echo $! >{dir}/pid
touch {dir}/ready
exec sleep 1000
"#,
        runc = runc.display(),
        dir = dir.display(),
    );
    let path = dir.join("runc");
    std::fs::write(&path, script)?;
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    Ok(path)
}

/// A shim SIGKILLed while `runc create` runs: containerd's cleanup runs the shim's `delete`,
/// runc knows no such container, and the delete removes the container's cgroups, killing
/// what is left in them, so nothing stays.
#[test]
fn a_shim_killed_mid_create_leaves_no_cgroups() -> Result<()> {
    tether("mid_create", |env| {
        let dir = tempfile::tempdir()?;
        let runc = tether_integration::harness::find_on_path("runc")
            .ok_or_else(|| anyhow::anyhow!("no runc on PATH"))?;
        let wrapper = mid_create_runc(dir.path(), &runc)?;
        let cfg = env.containerd().tether_config();
        let original = std::fs::read_to_string(&cfg)?;
        std::fs::write(
            &cfg,
            format!("[runc]\nbinary = \"{}\"\n{original}", wrapper.display()),
        )?;
        struct Restore(PathBuf, String);
        impl Drop for Restore {
            fn drop(&mut self) {
                let _ = std::fs::write(&self.0, &self.1);
            }
        }
        let restore = Restore(cfg, original);

        let id = env.id("midcreate");
        let ctr = env.ctr.clone();
        let run = env.run(&id).detach().command(["/bin/sleep", "1000"]);
        let create = std::thread::spawn(move || ctr.run_container(&run));
        tether_integration::wait::wait_until(
            "runc create to be under way",
            Duration::from_secs(30),
            || Ok(dir.path().join("ready").exists().then_some(())),
        )?;
        let pid: i32 = std::fs::read_to_string(dir.path().join("pid"))?
            .trim()
            .parse()?;
        let cgroups =
            tether_integration::leaks::find(env.containerd(), env.namespace(), &id)?.cgroups;
        ensure!(!cgroups.is_empty(), "the stand-in made no cgroups");
        let shim = env.shim_of(&id)?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(shim.pid),
            nix::sys::signal::Signal::SIGKILL,
        )?;
        let out = create
            .join()
            .map_err(|_| anyhow::anyhow!("the ctr thread panicked"))??;
        ensure!(out.code != 0, "the create succeeded: {out}");
        drop(restore);
        let alive = || {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
        };
        let left = tether_integration::wait::wait_until(
            "the container's cgroups and process to go",
            Duration::from_secs(30),
            || {
                let l = tether_integration::leaks::find(env.containerd(), env.namespace(), &id)?;
                Ok((l.cgroups.is_empty() && !alive()).then_some(()))
            },
        );
        if left.is_err() {
            // Whatever the verdict, nothing of the stand-in's stays on the machine.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            std::thread::sleep(Duration::from_millis(200));
            for c in &cgroups {
                let _ = std::fs::remove_dir(c);
            }
        }
        left.map_err(|e| {
            e.context(format!(
                "the cgroups {cgroups:?} or the process {pid} of a killed create stayed"
            ))
        })?;
        let _ = env.ctr.run(["container", "rm", &id]);
        env.assert_no_leaks(&id)
    })
}
