//! Load cost: one load and N opens of the pins (tether) against N loads (a loader per
//! container), each in a private bpffs.
use std::time::Instant;

use anyhow::Result;
use tether_bpf::{programs, Programs};

use crate::fixture::private_bpffs;

pub fn load_cost(n: usize) -> Result<()> {
    println!("== load cost, N = {n} containers");
    let (_m, layout) = private_bpffs("load")?;
    let t = Instant::now();
    let report = programs::load_and_pin(&layout, tether_bpf::VERSION)?;
    let mut opens = Vec::new();
    for _ in 0..n {
        opens.push(Programs::open(&layout, tether_bpf::VERSION)?);
    }
    let tether = t.elapsed();
    drop(opens);
    let mut naive_verified = 0u64;
    let t = Instant::now();
    for i in 0..n {
        let (_m, l) = private_bpffs(&format!("naive{i}"))?;
        naive_verified += programs::load_and_pin(&l, tether_bpf::VERSION)?.verified_insns;
    }
    let naive = t.elapsed();
    println!(
        "tether (1 load + {n} opens): {:>9.1} ms, verifier insns {}",
        tether.as_secs_f64() * 1e3,
        report.verified_insns
    );
    println!(
        "naive  ({n} loads):          {:>9.1} ms, verifier insns {}",
        naive.as_secs_f64() * 1e3,
        naive_verified
    );
    println!(
        "one load: {:.1} ms; naive / tether total time: {:.1}x",
        report.load_time.as_secs_f64() * 1e3,
        naive.as_secs_f64() / tether.as_secs_f64()
    );
    Ok(())
}
