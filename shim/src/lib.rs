//! containerd-shim-tether-v1: a containerd shim v2 (`io.containerd.tether.v1`) that
//! runs containers with runc, exactly as containerd's runc shim does, with a seam
//! between `runc create` and `runc start` where eBPF programs are attached
//! (see [`attach`]).

pub mod any;
pub mod attach;
pub mod cgroup;
pub mod cgroup_v1;
pub mod config;
pub mod container;
pub mod delete;
pub mod error;
pub mod events;
mod generated;
mod lock;
pub mod options;
pub mod process;
pub mod reaper;
pub mod runc;
pub mod runc_compat;
pub mod serve;
pub mod service;
pub mod spec;
pub mod start;
pub mod stdio;

use std::io::Write;

/// How this executable was linked, for `--version`: one shim runs per container, and the
/// dynamically linked one (a plain `cargo build`) holds about 1 MiB more resident memory
/// than the static-pie of `scripts/build-release.sh`. The kernel passes the program
/// interpreter's load address as AT_BASE, 0 for an executable without one.
fn linkage() -> &'static str {
    const AT_BASE: usize = 7;
    const WORD: usize = std::mem::size_of::<usize>();
    let Ok(auxv) = std::fs::read("/proc/self/auxv") else {
        return "linkage unknown";
    };
    let word = |b: &[u8]| b.try_into().map_or(0, usize::from_ne_bytes);
    let base = auxv
        .chunks_exact(2 * WORD)
        .find(|e| word(&e[..WORD]) == AT_BASE)
        .map_or(0, |e| word(&e[WORD..]));
    if base == 0 {
        "statically linked"
    } else {
        "dynamically linked: scripts/build-release.sh links it statically, about 1 MiB less per shim"
    }
}

/// Runs the shim binary: `start`, `delete`, or (no action) serve. Returns the exit code.
pub fn main() -> i32 {
    let args: Vec<_> = std::env::args_os().collect();
    let flags = match containerd_shim::parse(args.get(1..).unwrap_or_default()) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("containerd-shim-tether-v1: {e}");
            return 1;
        }
    };
    if flags.version {
        println!(
            "containerd-shim-tether-v1 {} ({})",
            env!("CARGO_PKG_VERSION"),
            linkage()
        );
        return 0;
    }
    // One thread serves everything. The few blocking calls made through the runtime
    // (containerd-shim's rootfs mounts and event socket) get a helper thread that exits
    // after a second idle, so an idle shim is one thread.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_keep_alive(std::time::Duration::from_secs(1))
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("containerd-shim-tether-v1: start runtime: {e}");
            return 1;
        }
    };
    let result = rt.block_on(async {
        match flags.action.as_str() {
            "start" => start::start(&flags).map(Some),
            "delete" => delete::delete(&flags).await.map(Some),
            "" => serve::serve(&flags).await.map(|()| None),
            other => Err(error::Error::InvalidArgument(format!(
                "unknown action {other:?}"
            ))),
        }
    });
    match result {
        Ok(Some(reply)) => {
            let mut out = std::io::stdout();
            if let Err(e) = out.write_all(&reply).and_then(|()| out.flush()) {
                eprintln!("containerd-shim-tether-v1: write reply: {e}");
                return 1;
            }
            0
        }
        Ok(None) => 0,
        Err(e) => {
            log::error!("{e}");
            eprintln!("containerd-shim-tether-v1: {e}");
            1
        }
    }
}
