//! Churn with faults: containers created and removed at a concurrency of 20 while tetherd,
//! containerd and random shims are killed (SIGKILL) at random moments and the bpffs is
//! unmounted once. Every container that started was attached before its first instruction
//! (its first instruction is a connect to a denied address, which must fail with EPERM),
//! every create that failed said why, and once the operator's cleanup has run (what ctr's
//! `--rm` could not do while containerd was down) nothing is left: no pins, map entries,
//! cgroups, mounts, bundles or processes of any of them.
//!
//! `TETHER_CHURN_CONTAINERS` sets the number (default 100; 1000 for the full run),
//! `TETHER_CHURN_SEED` the seed of the fault schedule (printed). One thing the cleanup
//! removes as an operator would, and counts: the empty cgroups of a `runc create` killed
//! with its shim, when containerd 1.6/1.7, restarted, dropped the container's bundle
//! without calling the shim's `delete` (its log names the container; runc.v2 leaves the
//! same). Anything else left fails the test.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tether_integration::ctr::{Run, Source};
use tether_integration::wait::wait_until;
use tether_integration::{leaks, Runtime, TestEnv};

use super::{container_dir, tether, tetherctl};

const CONCURRENCY: usize = 20;

/// Whether ctr could not reach containerd at all (as ctr 1.6/1.7 and 2.x say it).
fn unreachable(class: &str) -> bool {
    class.starts_with("failed to dial") || class.contains("Error while dialing")
}

/// What became of one container.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    /// It ran, and its first connect was refused by the deny rule.
    Enforced,
    /// It ran, and its first connect was not refused: a violation.
    Unenforced(String),
    /// `ctr run` failed before the container's command ran: the class of its error (see
    /// [`error_class`]) and the error.
    Failed(String, String),
}

/// A small deterministic generator for the fault schedule (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % below.max(1)
    }
}

fn env_number(key: &str, default: u64) -> u64 {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// ctr's error (its last `ctr: ` line; else the first line, as ctr's logged warnings and
/// cleanup errors come first), without the prefix and the ids that differ per container.
fn error_class(stderr: &str) -> String {
    let line = stderr
        .lines()
        .rev()
        .find(|l| l.starts_with("ctr: "))
        .or_else(|| stderr.lines().find(|l| !l.trim().is_empty()))
        .unwrap_or("");
    let line = line.trim_start_matches("ctr: ");
    line.split_whitespace()
        .map(|w| {
            if w.contains("churn") || w.chars().filter(char::is_ascii_digit).count() > 4 {
                "…"
            } else {
                w
            }
        })
        .take(14)
        .collect::<Vec<_>>()
        .join(" ")
}

fn classify(out: Result<tether_integration::Output>) -> Outcome {
    match out {
        Err(e) => Outcome::Failed(format!("{e:#}"), format!("{e:#}")),
        Ok(o) if o.stdout.contains("churn-started") || o.stderr.contains("churn-started") => {
            let all = format!("{}{}", o.stdout, o.stderr);
            if all.contains("Operation not permitted") {
                Outcome::Enforced
            } else {
                Outcome::Unenforced(all)
            }
        }
        Ok(o) => Outcome::Failed(error_class(&o.stderr), o.stderr.trim().to_string()),
    }
}

#[derive(Default, Debug)]
struct Faults {
    tetherd: u32,
    shims: u32,
    containerd: u32,
    bpffs: u32,
}

/// The next fault: tetherd, a shim (chosen by `rng`) and containerd in turn; the bpffs is
/// unmounted once, after a third of the run.
fn fault(env: &mut TestEnv, rng: &mut Rng, done: f64, f: &mut Faults) -> Result<()> {
    if f.bpffs == 0 && done > 0.33 {
        // Lazily, as an operator's `umount -l` would: what holds the old mount keeps it.
        let dir = env.containerd().bpffs_dir();
        nix::mount::umount2(&dir, nix::mount::MntFlags::MNT_DETACH)
            .with_context(|| format!("umount {}", dir.display()))?;
        std::thread::sleep(Duration::from_millis(500));
        tether_integration::bpffs::mount(&dir)?;
        f.bpffs += 1;
        return Ok(());
    }
    match (f.tetherd + f.shims + f.containerd) % 3 {
        0 => {
            if let Some(pid) = env.containerd().tetherd_pid() {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            f.tetherd += 1;
        }
        1 => {
            let shims = env.shims()?;
            if !shims.is_empty() {
                let victim = &shims[rng.next(shims.len() as u64) as usize];
                let _ = kill(Pid::from_raw(victim.pid), Signal::SIGKILL);
            }
            f.shims += 1;
        }
        _ => {
            if let Some(pid) = env.containerd().pid() {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
                std::thread::sleep(Duration::from_millis(200 + rng.next(800)));
                env.restart_containerd()?;
                f.containerd += 1;
            }
        }
    }
    Ok(())
}

/// Removes what is left of `ids` in containerd, as an operator (or kubelet) would after
/// clients lost their daemon mid-call: every task and container it lists. A shim that a
/// killed containerd started but never gave a container is not listed: it goes by itself
/// (`ORPHAN_GRACE`), and the containerd that loaded it since removes its bundle.
fn clean_up(env: &mut TestEnv, ids: &[String]) -> Result<()> {
    let mut listed = env.ctr.ok(["tasks", "ls", "-q"])?.stdout;
    listed.push_str(&env.ctr.ok(["containers", "ls", "-q"])?.stdout);
    for id in listed.lines().map(str::trim) {
        if ids.iter().any(|i| i == id) {
            env.ctr.force_remove(id)?;
        }
    }
    Ok(())
}

/// Whether containerd itself dropped container `id` at a restart: containerd 1.6 and 1.7
/// (`ShimManager.loadShims`), finding a bundle whose container record is gone, log
/// `loading container <id>`, unmount its rootfs and delete the bundle, and call neither
/// the shim's `delete` nor runc: the cgroups of a `runc create` that was killed with its
/// shim stay, under runc.v2 as under tether.
fn dropped_by_containerd(log: &str, id: &str) -> bool {
    let needle = format!("loading container {id}");
    log.lines().any(|l| l.contains(&needle))
}

/// The empty cgroups that containerd left of the containers it dropped
/// ([`dropped_by_containerd`]): removed here, as an operator would, and counted.
fn collect_dropped_cgroups(env: &TestEnv, ids: &[String]) -> Result<Vec<String>> {
    let log = std::fs::read_to_string(env.containerd().log_path()).unwrap_or_default();
    let mut removed = Vec::new();
    for id in ids.iter().filter(|id| dropped_by_containerd(&log, id)) {
        let l = leaks::find(env.containerd(), env.namespace(), id)?;
        if !l.processes.is_empty() || !l.mounts.is_empty() || !l.dirs.is_empty() {
            continue;
        }
        for cg in &l.cgroups {
            // Empty, or the kernel refuses: what is not empty stays a leftover.
            if std::fs::remove_dir(cg).is_ok() {
                removed.push(format!("{id}: {}", cg.display()));
            }
        }
    }
    Ok(removed)
}

/// What is left of `ids`: pins, tetherd's rows (map entries), processes, mounts, cgroups,
/// bundles and runc state.
fn leftovers(env: &TestEnv, ids: &[String]) -> Result<Vec<String>> {
    let mut left: Vec<String> = ids
        .iter()
        .filter(|id| container_dir(env, id).exists())
        .map(|id| format!("{id}: pins"))
        .collect();
    let ps = tetherctl(env, &["ps"])?;
    left.extend(
        ps.as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["namespace"] == env.namespace())
            .map(|r| format!("{}: tetherctl ps row", r["id"])),
    );
    for id in ids {
        let l = leaks::find(env.containerd(), env.namespace(), id)?;
        if !l.is_empty() {
            left.push(format!("{id}: {l}"));
        }
    }
    Ok(left)
}

fn churn(env: &mut TestEnv) -> Result<()> {
    let n = env_number("TETHER_CHURN_CONTAINERS", 100) as usize;
    let seed = env_number(
        "TETHER_CHURN_SEED",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64),
    ) | 1;
    eprintln!("churn: {n} containers, concurrency {CONCURRENCY}, seed {seed}");
    let ids: Arc<Vec<String>> = Arc::new((0..n).map(|_| env.id("churn")).collect());
    let next = Arc::new(AtomicUsize::new(0));
    let finished = Arc::new(AtomicUsize::new(0));
    let outcomes = Arc::new(Mutex::new(Vec::with_capacity(n)));
    let redials = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let (ids, next, finished, outcomes, redials) = (
                ids.clone(),
                next.clone(),
                finished.clone(),
                outcomes.clone(),
                redials.clone(),
            );
            let ctr = env.ctr.clone();
            let rootfs = env.rootfs_dir().to_path_buf();
            std::thread::spawn(move || loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(id) = ids.get(i) else { break };
                let run = Run::new(Runtime::Tether, Source::Rootfs(rootfs.clone()), id)
                    .rm()
                    .flag("--annotation")
                    .flag("tether.io/egress-deny=127.0.0.2/32")
                    .timeout(Duration::from_secs(90))
                    .sh("nc -w 1 127.0.0.2 9; echo churn-started; sleep 1");
                // As kubelet would: a client that could not reach containerd (it is being
                // restarted) created nothing and tries again.
                let outcome = loop {
                    match classify(ctr.run_container(&run)) {
                        Outcome::Failed(why, _) if unreachable(&why) => {
                            redials.fetch_add(1, Ordering::SeqCst);
                            std::thread::sleep(Duration::from_millis(100));
                        }
                        o => break o,
                    }
                };
                if let Ok(mut o) = outcomes.lock() {
                    o.push((id.clone(), outcome));
                }
                finished.fetch_add(1, Ordering::SeqCst);
            })
        })
        .collect();

    let mut rng = Rng(seed);
    let mut faults = Faults::default();
    while finished.load(Ordering::SeqCst) < n {
        std::thread::sleep(Duration::from_millis(100 + rng.next(500)));
        if finished.load(Ordering::SeqCst) >= n {
            break;
        }
        let done = finished.load(Ordering::SeqCst) as f64 / n as f64;
        fault(env, &mut rng, done, &mut faults)?;
    }
    for w in workers {
        let _ = w.join();
    }
    let elapsed = started.elapsed();
    if env.containerd().pid().is_none() {
        env.restart_containerd()?;
    }
    clean_up(env, &ids)?;

    // What stays must go: tetherd (started again if it was killed last) collects the pins
    // and map entries of containers whose shims died.
    let config = env.containerd().tether_config();
    tetherctl(env, &["acquire", "--config", &config.display().to_string()])?;
    let mut dropped = Vec::new();
    let left = wait_until(
        "the churn's leftovers to go",
        Duration::from_secs(180),
        || {
            let _ = tetherctl(env, &["gc"]);
            dropped.extend(collect_dropped_cgroups(env, &ids)?);
            Ok(leftovers(env, &ids)?.is_empty().then_some(()))
        },
    )
    .map_err(|e| match leftovers(env, &ids) {
        Ok(l) => e.context(format!("left: {l:?}")),
        Err(e2) => e.context(e2),
    });

    let outcomes = outcomes.lock().map(|o| o.clone()).unwrap_or_default();
    let mut failures: BTreeMap<String, (usize, String)> = BTreeMap::new();
    let mut enforced = 0;
    let mut violations = Vec::new();
    for (id, o) in &outcomes {
        match o {
            Outcome::Enforced => enforced += 1,
            Outcome::Unenforced(out) => violations.push(format!("{id}: {out}")),
            Outcome::Failed(why, full) => {
                let e = failures.entry(why.clone()).or_insert((0, full.clone()));
                e.0 += 1;
            }
        }
    }
    eprintln!(
        "churn: {n} containers in {:.1} s: {enforced} started and denied from their first \
         instruction, {} failed, {} ran unenforced; {} tries again while containerd was down; \
         faults: {faults:?}",
        elapsed.as_secs_f64(),
        failures.values().map(|(n, _)| n).sum::<usize>(),
        violations.len(),
        redials.load(Ordering::SeqCst)
    );
    for (count, example) in failures.values() {
        eprintln!("  {count:4} failed, as: {example}");
    }
    ensure!(outcomes.len() == n, "{} of {n} outcomes", outcomes.len());
    ensure!(
        faults.tetherd > 0 && faults.shims > 0 && faults.containerd > 0 && faults.bpffs == 1,
        "the run ended before every kind of fault: {faults:?}"
    );
    if !violations.is_empty() {
        dump_logs(env, &violations);
    }
    ensure!(
        violations.is_empty(),
        "containers ran without their deny rule: {violations:?}"
    );
    let unexplained: Vec<_> = failures.keys().filter(|w| w.trim().is_empty()).collect();
    ensure!(
        unexplained.is_empty(),
        "creates failed without an error: {}",
        failures.get("").map_or(0, |(n, _)| *n)
    );
    if left.is_err() {
        dump_logs(env, &leftovers(env, &ids).unwrap_or_default());
    }
    left.context("leftovers after the churn")?;
    eprintln!(
        "churn: 0 pins, map entries, cgroups, mounts, bundles or processes left; {} empty \
         cgroups of containers containerd dropped at a restart without the shim's delete \
         (as under runc.v2) removed by the cleanup: {dropped:?}",
        dropped.len()
    );
    Ok(())
}

/// What containerd (with the shims' logs) and tetherd said about the containers named in
/// `lines`, and tetherd's log, for a failure to be understood from CI's output.
fn dump_logs(env: &TestEnv, lines: &[String]) {
    let ids: Vec<&str> = lines.iter().filter_map(|l| l.split(':').next()).collect();
    let containerd = std::fs::read_to_string(env.containerd().log_path()).unwrap_or_default();
    for line in containerd
        .lines()
        .filter(|l| ids.iter().any(|id| l.contains(id)))
    {
        eprintln!("containerd: {line}");
    }
    let socket = env.containerd().tetherd_socket();
    let tetherd = socket.with_file_name("tetherd.log");
    for line in std::fs::read_to_string(tetherd).unwrap_or_default().lines() {
        eprintln!("tetherd: {line}");
    }
}

#[test]
#[ignore = "run alone, by scripts/test.sh (it kills its daemons and loads the machine): \
            cargo test -p tether-integration --test e2e -- --ignored attach::churn"]
fn churn_with_faults_leaks_nothing() -> Result<()> {
    tether("churn", churn)
}
