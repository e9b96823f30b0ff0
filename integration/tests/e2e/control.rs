//! Controlling a running task: kill --all, ps, pause/resume, metrics, Stats against the
//! cgroup files, update.

use anyhow::{bail, ensure, Context, Result};
use tether_integration::wait::wait_until;
use tether_integration::{cgroup, shim_api, TestEnv};

use crate::common::*;

scenario!(kill_all_and_ps);
/// `ctr task ps` lists the init, its children and exec processes; `ctr task kill --all`
/// kills every one of them, execs included.
fn kill_all_and_ps(env: &mut TestEnv) -> Result<()> {
    let id = env.id("all");
    env.ctr
        .run_container(&env.run(&id).detach().sh("sleep 1000 & sleep 1000 & wait"))?
        .ok()?;
    let init_pid = wait_status(env, &id, "RUNNING")?;
    let exec = spawn_ctr(
        env,
        ["task", "exec", "--exec-id", "x", &id, "/bin/sleep", "1000"]
            .map(String::from)
            .to_vec(),
    );
    // sh, two sleeps, the exec'd sleep.
    let pids = wait_until("4 processes in ctr task ps", STATE_TIMEOUT, || {
        let pids = env.ctr.task_pids(&id)?;
        Ok((pids.len() == 4).then_some(pids))
    })?;
    ensure!(
        pids.contains(&init_pid),
        "ps {pids:?} lacks init {init_pid}"
    );
    for pid in &pids {
        let p = tether_integration::procfs::process(i32::try_from(*pid)?)?
            .with_context(|| format!("ps lists {pid}, which does not exist"))?;
        ensure!(
            p.program() == Some("sleep") || p.program() == Some("sh"),
            "ps lists {pid}: {:?}",
            p.cmdline
        );
    }

    env.ctr
        .ok(["task", "kill", "--all", "--signal", "SIGKILL", &id])?;
    let out = join(exec)?;
    ensure!(out.code == 137, "exec after kill --all: {out}");
    wait_status(env, &id, "STOPPED")?;
    for pid in pids {
        ensure!(
            !tether_integration::procfs::is_alive(i32::try_from(pid)?)?,
            "{pid} survived kill --all"
        );
    }
    env.ctr.ok(["task", "delete", &id])?;
    env.ctr.ok(["container", "delete", &id])?;
    env.assert_no_leaks(&id)
}

scenario!(pause_resume);
/// `ctr task pause` freezes the cgroup and shows PAUSED; resume thaws it.
fn pause_resume(env: &mut TestEnv) -> Result<()> {
    let id = detached_sleep(env, "pause", &[])?;
    let pid = i32::try_from(wait_status(env, &id, "RUNNING")?)?;
    ensure!(!cgroup::is_frozen(pid)?, "frozen before pause");

    env.ctr.ok(["task", "pause", &id])?;
    wait_status(env, &id, "PAUSED")?;
    ensure!(cgroup::is_frozen(pid)?, "PAUSED but cgroup not frozen");

    env.ctr.ok(["task", "resume", &id])?;
    wait_status(env, &id, "RUNNING")?;
    ensure!(!cgroup::is_frozen(pid)?, "RUNNING but cgroup frozen");
    let out = env.ctr.run([
        "task",
        "exec",
        "--exec-id",
        "after",
        &id,
        "/bin/sh",
        "-c",
        "exit 9",
    ])?;
    ensure!(out.code == 9, "exec after resume: {out}");
    kill_and_delete(env, &id)
}

scenario!(metrics);
/// `ctr task metrics` prints memory, cpu and pids rows for the task's cgroup.
fn metrics(env: &mut TestEnv) -> Result<()> {
    let id = detached_sleep(env, "metrics", &[])?;
    let out = env.ctr.ok(["task", "metrics", &id])?;
    let rows = metric_rows(&out.stdout);
    ensure!(!rows.is_empty(), "no metric rows: {}", out.stdout);
    let value =
        |pred: &dyn Fn(&str) -> bool| rows.iter().find(|(k, _)| pred(k)).map(|(_, v)| v.clone());
    let usage = value(&|k| k == "memory.usage_in_bytes" || k == "memory.usage")
        .context(format!("no memory usage row: {}", out.stdout))?;
    ensure!(usage.parse::<u64>()? > 0, "memory usage {usage}");
    ensure!(
        value(&|k| k.starts_with("cpu")).is_some(),
        "no cpu row: {}",
        out.stdout
    );
    let pids = value(&|k| k == "pids.current").context(format!("no pids row: {}", out.stdout))?;
    ensure!(pids == "1", "pids.current {pids} for a lone sleep");
    kill_and_delete(env, &id)
}

/// A figure of the shim's Stats reply (`reply`) and the cgroup file it comes from (`file`),
/// read while the file stands still: the file, the reply, the file again, until the two
/// reads of the file agree (at most 20 tries), so that a page charged or freed in between
/// does not count as a difference.
fn steady(file: &dyn Fn() -> Result<u64>, reply: &dyn Fn() -> Result<u64>) -> Result<(u64, u64)> {
    let mut last = (0, 0);
    for _ in 0..20 {
        let before = file()?;
        let got = reply()?;
        let after = file()?;
        if before == after {
            return Ok((got, after));
        }
        last = (got, after);
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Ok(last)
}

scenario!(stats_match_the_cgroup);
/// The shim's Stats reply (what kubelet's CRI stats, metrics-server and `ctr task metrics`
/// read) gives what the cgroup files say, field by field: CPU total, user, kernel and per
/// CPU after a busy loop, throttling, memory usage and limit, pids. Run under both
/// runtimes with the same assertions: tether answers as runc.v2 does.
fn stats_match_the_cgroup(env: &mut TestEnv) -> Result<()> {
    use containerd_shim_protos::api::{StatsRequest, StatsResponse};
    use containerd_shim_protos::protobuf::Message;
    let id = env.id("stats");
    env.ctr
        .run_container(
            &env.run(&id)
                .detach()
                .flag("--memory-limit")
                .flag("67108864")
                .sh(
                    "dd if=/dev/zero of=/tmp/io bs=4096 count=64 conv=fsync 2>/dev/null; \
                     rm -f /tmp/io; \
                     i=0; while [ $i -lt 30000 ]; do i=$((i+1)); done; exec sleep 1000",
                ),
        )?
        .ok()?;
    let pid = wait_status(env, &id, "RUNNING")?;
    // Idle from here: the figures stand still while the reply and the files are read.
    wait_until("the busy loop to end", STATE_TIMEOUT, || {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))?;
        Ok((comm.trim() == "sleep").then_some(()))
    })?;
    std::thread::sleep(std::time::Duration::from_millis(200));
    let shim = shim_api::shim_endpoint(env.containerd(), env.namespace(), &id)?;
    let req = StatsRequest {
        id: id.clone(),
        ..Default::default()
    };
    let fetch = || -> Result<containerd_shim_protos::protobuf::well_known_types::any::Any> {
        let reply = shim_api::call(&shim, env.namespace(), "Stats", req.write_to_bytes()?)?;
        let any = StatsResponse::parse_from_bytes(&reply)?.stats.into_option();
        any.context("Stats has no metrics")
    };
    let any = fetch()?;
    let pid = i32::try_from(pid)?;
    let file = |controller: &str, name: &str| -> Result<String> {
        let path = cgroup::dir_of(pid, controller)?.join(name);
        Ok(std::fs::read_to_string(&path)
            .with_context(|| path.display().to_string())?
            .trim()
            .to_string())
    };
    let keyed = |text: &str, key: &str| -> Option<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
    };
    if any.type_url.ends_with("cgroups.v1.Metrics") {
        use containerd_shim_protos::cgroups::metrics::Metrics;
        let m = Metrics::parse_from_bytes(&any.value)?;
        let cpu = m.cpu.clone().into_option().context("no cpu")?;
        let usage = cpu.usage.clone().into_option().context("no cpu usage")?;
        let total: u64 = file("cpuacct", "cpuacct.usage")?.parse()?;
        ensure!(total > 0, "the busy loop used no CPU");
        ensure!(
            usage.total == total,
            "cpu total {} != cpuacct.usage {total}",
            usage.total
        );
        let percpu: Vec<u64> = file("cpuacct", "cpuacct.usage_percpu")?
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()?;
        ensure!(
            usage.per_cpu == percpu,
            "per cpu {:?} != {percpu:?}",
            usage.per_cpu
        );
        let stat = file("cpuacct", "cpuacct.stat")?;
        let ns = |k| keyed(&stat, k).map(|t| t * 10_000_000);
        ensure!(
            Some(usage.user) == ns("user") && Some(usage.kernel) == ns("system"),
            "user/kernel {}/{} != cpuacct.stat {stat:?}",
            usage.user,
            usage.kernel
        );
        let throttle = cpu
            .throttling
            .clone()
            .into_option()
            .context("no throttling")?;
        let cpu_stat = file("cpu", "cpu.stat")?;
        ensure!(
            Some(throttle.periods) == keyed(&cpu_stat, "nr_periods")
                && Some(throttle.throttled_time) == keyed(&cpu_stat, "throttled_time"),
            "throttling {throttle:?} != cpu.stat {cpu_stat:?}"
        );
        let mem = m.memory.clone().into_option().context("no memory")?;
        let entry = mem.usage.clone().into_option().context("no memory usage")?;
        // The kernel frees and charges pages (the test's writes, per-CPU charge caches)
        // while the two are read: compared once the file stands still around a reply.
        let (got, used) = steady(
            &|| Ok(file("memory", "memory.usage_in_bytes")?.parse()?),
            &|| {
                let m = Metrics::parse_from_bytes(&fetch()?.value)?;
                Ok(m.memory.usage.as_ref().map_or(0, |u| u.usage))
            },
        )?;
        ensure!(got == used, "memory usage {got} != {used}");
        ensure!(entry.limit == 64 << 20, "memory limit {}", entry.limit);
        let mstat = file("memory", "memory.stat")?;
        ensure!(
            Some(mem.total_inactive_file) == keyed(&mstat, "total_inactive_file")
                && Some(mem.rss) == keyed(&mstat, "rss"),
            "memory.stat: rss {} inactive_file {} != {mstat:?}",
            mem.rss,
            mem.total_inactive_file
        );
        let pids = m.pids.clone().into_option().context("no pids")?;
        ensure!(pids.current == 1, "pids.current {}", pids.current);
        // Block I/O: the throttle files where the kernel has no CFQ ones (as here).
        let dir = cgroup::dir_of(pid, "blkio")?;
        if !dir.join("blkio.io_serviced_recursive").exists() {
            let sum = |text: &str| -> u64 {
                text.lines()
                    .filter(|l| !l.starts_with("Total"))
                    .filter_map(|l| l.split_whitespace().last()?.parse::<u64>().ok())
                    .sum()
            };
            let want = sum(&file("blkio", "blkio.throttle.io_service_bytes")?);
            let blkio = m.blkio.clone().into_option().context("no blkio")?;
            let got: u64 = blkio
                .io_service_bytes_recursive
                .iter()
                .map(|e| e.value)
                .sum();
            ensure!(
                got == want,
                "blkio bytes {got} != the throttle file's {want}"
            );
        }
    } else {
        use containerd_shim_protos::cgroups_v2::metrics::Metrics;
        let m = Metrics::parse_from_bytes(&any.value)?;
        let cpu = m.cpu.clone().into_option().context("no cpu")?;
        let stat = file("cpu", "cpu.stat")?;
        ensure!(cpu.usage_usec > 0, "the busy loop used no CPU");
        ensure!(
            Some(cpu.usage_usec) == keyed(&stat, "usage_usec")
                && Some(cpu.user_usec) == keyed(&stat, "user_usec")
                && Some(cpu.system_usec) == keyed(&stat, "system_usec")
                && Some(cpu.nr_periods) == keyed(&stat, "nr_periods"),
            "cpu {cpu:?} != cpu.stat {stat:?}"
        );
        let mem = m.memory.clone().into_option().context("no memory")?;
        let (got, used) = steady(&|| Ok(file("memory", "memory.current")?.parse()?), &|| {
            Ok(Metrics::parse_from_bytes(&fetch()?.value)?
                .memory
                .as_ref()
                .map_or(0, |m| m.usage))
        })?;
        ensure!(got == used, "memory usage {got} != {used}");
        ensure!(
            mem.usage_limit == 64 << 20,
            "memory limit {}",
            mem.usage_limit
        );
        let pids = m.pids.clone().into_option().context("no pids")?;
        ensure!(pids.current == 1, "pids.current {}", pids.current);
    }
    kill_and_delete(env, &id)
}

/// `(name, value)` rows of the METRIC table of `ctr task metrics`.
fn metric_rows(text: &str) -> Vec<(String, String)> {
    text.lines()
        .skip_while(|l| !l.starts_with("METRIC"))
        .skip(1)
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some((f.next()?.to_owned(), f.collect::<Vec<_>>().join(" ")))
        })
        .collect()
}

scenario!(update);
/// Task.Update (what `ctr task update --memory-limit` does in containerd >= 1.7) changes the
/// cgroup's memory limit.
fn update(env: &mut TestEnv) -> Result<()> {
    const BEFORE: u64 = 64 << 20;
    const AFTER: u64 = 32 << 20;
    let id = detached_sleep(env, "update", &[&format!("--memory-limit={BEFORE}")])?;
    let pid = i32::try_from(wait_status(env, &id, "RUNNING")?)?;
    let limit = cgroup::memory_limit(pid)?;
    ensure!(limit == Some(BEFORE), "limit before update: {limit:?}");

    shim_api::update_memory_limit(env.containerd(), env.namespace(), &id, AFTER as i64)?;
    let limit = cgroup::memory_limit(pid)?;
    if limit != Some(AFTER) {
        bail!("limit after update to {AFTER}: {limit:?}");
    }
    wait_status(env, &id, "RUNNING")?;
    kill_and_delete(env, &id)
}
