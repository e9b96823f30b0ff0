//! `bench-cri [PODS] [ROUNDS]`: pods started at once through containerd's CRI, as kubelet
//! starts them, under the `runc` handler (`io.containerd.runc.v2`) and the `tether` handler,
//! side by side on one node (a [`CriNode`]).
//!
//! Each round starts PODS one-container pods at once under one handler, then under the
//! other (the order alternates between rounds), removing each batch before the next. A
//! pod's start latency is RunPodSandbox + CreateContainer + StartContainer, as kubelet
//! sees it. Prints p50 and p99 per handler and the tether/runc ratios, how many times
//! tetherd loaded the programs (one per node is the point), and whether every tether
//! container was attached when its start returned. Asserts nothing.
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use tether_integration::cri::{CriClient, CriNode, RUNC_HANDLER, TETHER_HANDLER};
use tether_integration::harness::require_root;
use tether_integration::process;

/// Starts one pod of `handler`: its id, its container's id and the time it took.
fn start_pod(node: &CriNode, handler: &str, name: &str) -> Result<(String, String, Duration)> {
    let cri = CriClient::connect(&node.containerd().address())?;
    let cfg = node.pod_config(name, &[])?;
    let container = node.container_config("app", "exec sleep 1000", &[]);
    let t0 = Instant::now();
    let pod = cri.run_pod(&cfg, handler)?;
    let id = cri.create_container(&pod, &container, &cfg)?;
    cri.start_container(&id)?;
    Ok((pod, id, t0.elapsed()))
}

/// One batch: `pods` pods of `handler` at once; their start times, and the container ids.
fn batch(
    node: &CriNode,
    handler: &str,
    round: usize,
    pods: usize,
) -> Result<(Vec<f64>, Vec<String>)> {
    let results: Vec<Result<(String, String, Duration)>> = thread::scope(|s| {
        let handles: Vec<_> = (0..pods)
            .map(|i| {
                let name = format!("b{round}-{handler}-{i}");
                s.spawn(move || start_pod(node, handler, &name))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow!("a starter thread panicked")))
            })
            .collect()
    });
    let mut times = Vec::new();
    let mut ids = Vec::new();
    let mut first_err = None;
    for r in results {
        match r {
            Ok((_, id, d)) => {
                times.push(d.as_secs_f64() * 1000.0);
                ids.push(id);
            }
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_err {
        return Err(e.context(format!("{handler}: {} of {pods} pods started", times.len())));
    }
    Ok((times, ids))
}

/// Removes every pod of the node, several at once.
fn remove_all(node: &CriNode) -> Result<()> {
    let pods = node.cri.list_pods()?;
    let results: Vec<Result<()>> = thread::scope(|s| {
        pods.chunks(pods.len().div_ceil(8).max(1))
            .map(|chunk| {
                s.spawn(move || -> Result<()> {
                    let cri = CriClient::connect(&node.containerd().address())?;
                    for p in chunk {
                        cri.tear_down_pod(p)?;
                    }
                    Ok(())
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow!("a remover thread panicked")))
            })
            .collect()
    });
    results.into_iter().collect()
}

/// `tetherctl --json ARGS` against the node's tetherd.
fn tetherctl(node: &CriNode, args: &[&str]) -> Result<serde_json::Value> {
    let bin = tether_integration::containerd::tether_shim_binary()?.with_file_name("tetherctl");
    let mut cmd = std::process::Command::new(&bin);
    cmd.arg("--socket")
        .arg(node.containerd().tetherd_socket())
        .arg("--json")
        .args(args);
    let out = process::run(&mut cmd, None, Duration::from_secs(30))?
        .ok()
        .with_context(|| format!("tetherctl {args:?}"))?;
    Ok(serde_json::from_str(&out.stdout)?)
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() -> Result<()> {
    require_root()?;
    let mut args = std::env::args().skip(1);
    let pods: usize = args.next().map_or(Ok(50), |a| a.parse()).context("PODS")?;
    let rounds: usize = args.next().map_or(Ok(3), |a| a.parse()).context("ROUNDS")?;
    let node = CriNode::start()?;
    let version = node.cri.version()?;
    eprintln!(
        "bench-cri: {pods} pods at once, {rounds} rounds, {} {}",
        version.runtime_name, version.runtime_version
    );
    let mut runc = Vec::new();
    let mut tether = Vec::new();
    let mut unattached = 0usize;
    for round in 0..rounds {
        let order = if round % 2 == 0 {
            [RUNC_HANDLER, TETHER_HANDLER]
        } else {
            [TETHER_HANDLER, RUNC_HANDLER]
        };
        for handler in order {
            let (times, ids) = batch(&node, handler, round, pods)?;
            if handler == TETHER_HANDLER {
                let ps = tetherctl(&node, &["ps"])?;
                let attached = |id: &String| {
                    ps.as_array().is_some_and(|a| {
                        a.iter().any(|r| {
                            r["id"] == id.as_str()
                                && r["attachments"].as_array().is_some_and(|at| !at.is_empty())
                        })
                    })
                };
                unattached += ids.iter().filter(|id| !attached(id)).count();
                tether.extend(times);
            } else {
                runc.extend(times);
            }
            remove_all(&node)?;
        }
    }
    let status = tetherctl(&node, &["status"])?;
    runc.sort_by(f64::total_cmp);
    tether.sort_by(f64::total_cmp);
    println!("| CRI pod start (RunPodSandbox..StartContainer), {pods} at once | p50 ms | p99 ms |");
    println!("|---|---|---|");
    for (name, v) in [("runc (io.containerd.runc.v2)", &runc), ("tether", &tether)] {
        println!(
            "| {name}, n={} | {:.1} | {:.1} |",
            v.len(),
            pct(v, 50.0),
            pct(v, 99.0)
        );
    }
    println!(
        "| ratio tether / runc | {:.3} | {:.3} |",
        pct(&tether, 50.0) / pct(&runc, 50.0),
        pct(&tether, 99.0) / pct(&runc, 99.0)
    );
    println!(
        "program loads by tetherd: {} (acquires {}); tether containers not attached at start: {unattached}",
        status["loads"], status["acquires"]
    );
    Ok(())
}
