//! What kubelet, metrics-server and `kubectl top` read: CRI `ContainerStats` of the same
//! workload under `runc` and `tether`, side by side, each matching its container's cgroup.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use tether_integration::cgroup;
use tether_integration::cri::{CriNode, RUNC_HANDLER, TETHER_HANDLER};
use tether_integration::wait::wait_until;

use super::on_node;

/// Writes and syncs a file, spins, then holds 4 MiB of anonymous memory (well above what
/// the kernel's per-CPU batching of memory.stat can hide, so that `rss_bytes` is non-zero
/// under either runtime) while a child sleeps: idle once the stats are read.
const WORK: &str = "dd if=/dev/zero of=/tmp/io bs=4096 count=64 conv=fsync 2>/dev/null; \
                    rm -f /tmp/io; i=0; while [ $i -lt 30000 ]; do i=$((i+1)); done; \
                    m=$(head -c 4194304 /dev/zero | tr '\\000' a); sleep 1000 & wait";
const MEMORY_LIMIT: i64 = 64 << 20;

#[test]
fn container_stats_match_runc_and_the_cgroup() -> Result<()> {
    on_node("container_stats", |node| {
        let runc = stats_under(node, RUNC_HANDLER)?;
        let tether = stats_under(node, TETHER_HANDLER)?;
        eprintln!("runc:   {runc}\ntether: {tether}");
        let (r, t) = (filled(&runc), filled(&tether));
        ensure!(
            r == t,
            "ContainerStats fields filled in under runc but not tether: {:?}; under tether \
             only: {:?}",
            r.difference(&t).collect::<Vec<_>>(),
            t.difference(&r).collect::<Vec<_>>()
        );
        Ok(())
    })
}

/// Runs [`WORK`] in a pod of `handler`; its ContainerStats once idle, as JSON, after
/// checking its CPU and memory usage against the cgroup's files.
fn stats_under(node: &CriNode, handler: &str) -> Result<serde_json::Value> {
    let cri = &node.cri;
    let name = format!("stats-{handler}");
    let cfg = node.pod_config(&name, &[])?;
    let pod = cri.run_pod(&cfg, handler)?;
    let (id, pid) = node.start_limited(&pod, &cfg, "work", WORK, MEMORY_LIMIT)?;
    wait_until("the work to end in sleep", Duration::from_secs(30), || {
        let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))?;
        Ok(children
            .split_whitespace()
            .any(|c| {
                std::fs::read_to_string(format!("/proc/{c}/comm"))
                    .is_ok_and(|n| n.trim() == "sleep")
            })
            .then_some(()))
    })?;
    let pid = i32::try_from(pid)?;
    let stats = cri.container_stats(&id)?;
    let cpu = stats
        .cpu
        .as_ref()
        .and_then(|c| c.usage_core_nano_seconds.as_ref())
        .map(|v| v.value)
        .context("no CPU usage")?;
    let want = cpu_usage_ns(pid)?;
    ensure!(want > 0, "{handler}: the busy loop used no CPU");
    ensure!(
        cpu == want,
        "{handler}: usage_core_nano_seconds {cpu} != the cgroup's {want}"
    );
    let mem = stats.memory.as_ref().context("no memory stats")?;
    let usage = mem.usage_bytes.as_ref().map_or(0, |v| v.value);
    let working_set = mem.working_set_bytes.as_ref().map_or(0, |v| v.value);
    ensure!(
        usage > 0 && working_set > 0 && working_set <= usage,
        "{handler}: memory usage {usage}, working set {working_set}"
    );
    let rss = mem.rss_bytes.as_ref().map_or(0, |v| v.value);
    ensure!(
        rss >= 2 << 20,
        "{handler}: rss_bytes {rss} while 4 MiB are held"
    );
    let limit = cgroup::memory_limit(pid)?;
    ensure!(
        limit == Some(MEMORY_LIMIT as u64),
        "{handler}: the cgroup's memory limit is {limit:?}"
    );
    let json = serde_json::to_value(&stats)?;
    cri.tear_down_pod(&pod)?;
    Ok(json)
}

/// The CPU time of `pid`'s cgroup in ns: cpuacct.usage (v1), cpu.stat usage_usec (v2).
fn cpu_usage_ns(pid: i32) -> Result<u64> {
    let read = |p: std::path::PathBuf| {
        std::fs::read_to_string(&p).with_context(|| p.display().to_string())
    };
    if let Ok(dir) = cgroup::dir_of(pid, "cpuacct") {
        return Ok(read(dir.join("cpuacct.usage"))?.trim().parse()?);
    }
    let stat = read(cgroup::dir_of(pid, "cpu")?.join("cpu.stat"))?;
    let usec: u64 = stat
        .lines()
        .find_map(|l| l.strip_prefix("usage_usec ")?.trim().parse().ok())
        .context("no usage_usec in cpu.stat")?;
    Ok(usec * 1000)
}

/// The paths of the non-zero leaves of a ContainerStats reply, timestamps and the
/// container's own attributes left out, and the writable layer's figures: containerd's
/// snapshotter gives those, sampled every few seconds, whatever the runtime. Major page
/// faults count wherever present: whether the workload met one depends on the page cache
/// (the first container to run busybox reads it from disk), not on the runtime.
fn filled(v: &serde_json::Value) -> BTreeSet<String> {
    fn walk(v: &serde_json::Value, path: &str, out: &mut BTreeSet<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    if !["timestamp", "attributes", "writable_layer"].contains(&k.as_str()) {
                        walk(v, &format!("{path}.{k}"), out);
                    }
                }
            }
            serde_json::Value::Number(n)
                if n.as_f64() != Some(0.0) || path.ends_with(".major_page_faults.value") =>
            {
                out.insert(path.to_owned());
            }
            serde_json::Value::String(s) if !s.is_empty() => {
                out.insert(path.to_owned());
            }
            _ => {}
        }
    }
    let mut out = BTreeSet::new();
    walk(v, "", &mut out);
    out
}
