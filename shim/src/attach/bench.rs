//! Benchmark-only instrumentation, built with the `bench` feature alone: the naive loader
//! (each container loads its own copy of the programs, the load storm tether exists to
//! avoid, for bench-attach to compare against) and the attach-time record. A shim for use
//! carries neither: the loader is half a megabyte of code (libbpf's object code, libelf,
//! zlib and the embedded object) that a shim, which only opens pins, does not need to map.
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use log::warn;
use tether_bpf::{PinLayout, Programs};

use crate::error::{Error, Result};

/// A file each attach appends its times to (see [`Record`]). Set in containerd's
/// environment.
pub const TIMES_FILE_ENV: &str = "TETHER_BENCH_ATTACH_TIMES";

/// CPU time (user + system, all threads) this process has used so far.
fn cpu_time() -> Duration {
    match nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF) {
        Ok(u) => {
            let t = |tv: nix::sys::time::TimeVal| {
                Duration::new(tv.tv_sec() as u64, tv.tv_usec() as u32 * 1000)
            };
            t(u.user_time()) + t(u.system_time())
        }
        Err(_) => Duration::ZERO,
    }
}

/// How long this thread has waited for a CPU while runnable (the second field of
/// `/proc/thread-self/schedstat`); zero where the kernel does not keep it.
fn run_delay() -> Duration {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse().ok())
        .map(Duration::from_nanos)
        .unwrap_or_default()
}

/// One attach step's line in the benchmark's times file, started only when
/// [`TIMES_FILE_ENV`] is set: a container's create reads no clocks for it otherwise.
/// `cpu` and `runq` are the clocks' readings at the start, and after [`Record::stop`] what
/// the step took.
pub struct Record {
    path: PathBuf,
    cpu: Duration,
    runq: Duration,
}

impl Record {
    pub fn start() -> Option<Self> {
        let path = PathBuf::from(std::env::var_os(TIMES_FILE_ENV)?);
        Some(Record {
            path,
            cpu: cpu_time(),
            runq: run_delay(),
        })
    }

    /// The step is over: what it took of the CPU and of run-queue waits.
    pub fn stop(self) -> Record {
        Record {
            cpu: cpu_time().saturating_sub(self.cpu),
            runq: run_delay().saturating_sub(self.runq),
            path: self.path,
        }
    }

    /// Appends `<id> <wall µs> <cpu µs> <run-queue wait µs> <phase µs>...` (phases in the
    /// order of the attach log line's) to the times file. Call it on a [`Record::stop`]ped
    /// record.
    pub fn finish(self, id: &str, wall_us: u128, phases: &[Duration]) {
        let mut line = format!(
            "{id} {wall_us} {} {}",
            self.cpu.as_micros(),
            self.runq.as_micros()
        );
        for d in phases {
            line.push_str(&format!(" {}", d.as_micros()));
        }
        line.push('\n');
        let r = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .and_then(|mut f| std::io::Write::write_all(&mut f, line.as_bytes()));
        if let Err(e) = r {
            warn!("{}: {e}", self.path.display());
        }
    }
}

/// Loads a private copy of the object for one container, pinned under `naive-<id>` beside
/// the shared pins (detach removes that directory).
pub async fn naive_load(shared: &PinLayout, id: &str) -> Result<(PinLayout, Arc<Programs>)> {
    let own = PinLayout::new(shared.root().join(format!("naive-{id}")));
    let l = own.clone();
    tokio::task::spawn_blocking(move || -> tether_bpf::Result<Programs> {
        shared_root_exists(&l)?;
        tether_bpf::programs::load_and_pin(&l, tether_bpf::VERSION)?;
        Programs::open(&l, tether_bpf::VERSION)
    })
    .await
    .map_err(|e| Error::attach(id, e))?
    .map(|p| (own, Arc::new(p)))
    .map_err(|e| Error::attach(id, e))
}

fn shared_root_exists(own: &PinLayout) -> tether_bpf::Result<()> {
    if let Some(parent) = own.root().parent() {
        std::fs::create_dir_all(parent).map_err(|e| tether_bpf::Error::Path {
            op: "mkdir",
            path: parent.to_path_buf(),
            source: e,
        })?;
    }
    Ok(())
}
