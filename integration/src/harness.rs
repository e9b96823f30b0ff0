//! [`TestEnv`]: what one scenario run against one runtime needs.
//!
//! A private [`Containerd`], a `ctr` bound to a namespace unique to this scenario, runtime and
//! process, a busybox rootfs (and, on demand, the same rootfs as an image), and unique
//! container ids. Scenarios built on it can run in parallel in one test binary.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

use anyhow::{anyhow, bail, Context, Result};
use tempfile::TempDir;

use crate::containerd::{self, Containerd};
use crate::containerd_release;
use crate::ctr::{Ctr, Run, Source};
use crate::procfs::ProcInfo;
use crate::runtime::Runtime;
use crate::{image, leaks, procfs, rootfs};

/// One scenario's environment; see the module docs.
pub struct TestEnv {
    pub runtime: Runtime,
    pub ctr: Ctr,
    // Dropped before `dir` (fields drop in order): the daemon's containers may use the rootfs.
    containerd: Containerd,
    rootfs: PathBuf,
    image: OnceLock<Result<String, String>>,
    next_id: AtomicU32,
    suffix: String,
    dir: TempDir,
}

impl TestEnv {
    /// Starts a private containerd for `scenario` (a short `[a-z0-9_]` name) and `runtime`.
    pub fn new(runtime: Runtime, scenario: &str) -> Result<Self> {
        Self::with_env(runtime, scenario, Vec::new())
    }

    /// [`TestEnv::new`] with extra environment for containerd and its shims.
    pub fn with_env(runtime: Runtime, scenario: &str, env: Vec<(String, String)>) -> Result<Self> {
        require_root()?;
        require_shim(runtime)?;
        // Unique per env even if two envs of one process share a scenario name: runc's
        // state (/run/containerd/runc/NAMESPACE/ID) and cgroups (/NAMESPACE/ID) are shared
        // by all containerds on the machine.
        static ENVS: AtomicU32 = AtomicU32::new(0);
        let suffix = format!(
            "{}-{}-{}-{}",
            scenario.replace('_', "-"),
            runtime.tag(),
            std::process::id(),
            ENVS.fetch_add(1, Ordering::Relaxed)
        );
        let containerd = Containerd::start_with_env(env)?;
        let ctr = containerd.ctr(&suffix);
        let dir = tempfile::Builder::new()
            .prefix("tether-env-")
            .tempdir()
            .context("creating the scenario's temporary directory")?;
        let rootfs = rootfs::build_busybox(&dir.path().join("rootfs"))?;
        Ok(TestEnv {
            runtime,
            ctr,
            containerd,
            rootfs,
            image: OnceLock::new(),
            next_id: AtomicU32::new(1),
            suffix,
            dir,
        })
    }

    pub fn containerd(&self) -> &Containerd {
        &self.containerd
    }

    /// Stops and starts containerd again (same root and state); shims keep running.
    pub fn restart_containerd(&mut self) -> Result<()> {
        self.containerd.restart()
    }

    pub fn namespace(&self) -> &str {
        self.ctr.namespace()
    }

    /// The busybox rootfs directory.
    pub fn rootfs_dir(&self) -> &Path {
        &self.rootfs
    }

    /// A container id unique across all scenarios of all test processes on this machine.
    /// `what` should be a short `[a-z]` word.
    pub fn id(&self, what: &str) -> String {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        format!("{what}{n}-{}", self.suffix)
    }

    /// `ctr run --runtime R --rootfs DIR ID` with this env's busybox rootfs.
    pub fn run(&self, id: &str) -> Run {
        Run::new(self.runtime, Source::Rootfs(self.rootfs.clone()), id)
    }

    /// `ctr run --runtime R IMAGE ID` with the busybox image (imported on first use).
    pub fn run_image(&self, id: &str) -> Result<Run> {
        let image = self.image()?;
        Ok(Run::new(self.runtime, Source::Image(image), id))
    }

    /// The busybox image's name, importing it on first use.
    pub fn image(&self) -> Result<String> {
        self.image
            .get_or_init(|| {
                let work = self.dir.path().join("image");
                image::import(&self.ctr, &self.rootfs, image::BUSYBOX_IMAGE, &work)
                    .map(|()| image::BUSYBOX_IMAGE.to_owned())
                    .map_err(|e| format!("{e:#}"))
            })
            .clone()
            .map_err(|e| anyhow!("importing the busybox image: {e}"))
    }

    /// Fails unless nothing of container `id` is left (waits for async cleanup).
    pub fn assert_no_leaks(&self, id: &str) -> Result<()> {
        leaks::assert_none(
            &self.containerd,
            self.namespace(),
            id,
            leaks::DEFAULT_TIMEOUT,
        )
    }

    /// Live shim processes of this env's containerd.
    pub fn shims(&self) -> Result<Vec<ProcInfo>> {
        self.containerd.shim_processes()
    }

    /// The live shim process started for container `id` (its `-id` is `id`).
    pub fn shim_of(&self, id: &str) -> Result<ProcInfo> {
        let shims = self.shims()?;
        shims
            .iter()
            .find(|p| {
                p.arg_after("-id") == Some(id)
                    && p.arg_after("-namespace") == Some(self.namespace())
            })
            .cloned()
            .ok_or_else(|| {
                anyhow!(
                    "no live shim with -id {id}; shims: {:?}",
                    shims
                        .iter()
                        .map(ProcInfo::cmdline_string)
                        .collect::<Vec<_>>()
                )
            })
    }

    /// VmRSS (KiB) of the shim started for container `id`.
    pub fn shim_rss_kib(&self, id: &str) -> Result<u64> {
        let shim = self.shim_of(id)?;
        procfs::vm_rss_kib(shim.pid)
    }

    /// Kills and deletes container `id` if it still exists (for cleanup paths).
    pub fn remove(&self, id: &str) -> Result<()> {
        self.ctr.force_remove(id)
    }
}

/// The tests drive containerd, runc and cgroups: they need root.
pub fn require_root() -> Result<()> {
    if !nix::unistd::Uid::effective().is_root() {
        bail!("tether end-to-end tests need root (they start containerd and runc)");
    }
    Ok(())
}

/// Fails with a clear message if `runtime`'s shim binary cannot be found.
pub fn require_shim(runtime: Runtime) -> Result<()> {
    match runtime {
        Runtime::Tether => containerd::tether_shim_binary().map(drop),
        Runtime::RuncV2 if containerd_release::dir().is_some() => {
            let shim = containerd_release::binary(runtime.shim_binary());
            shim.is_file()
                .then_some(())
                .ok_or_else(|| anyhow!("{} is not a file", shim.display()))
        }
        Runtime::RuncV2 | Runtime::RuncV2Rs => find_on_path(runtime.shim_binary())
            .map(drop)
            .ok_or_else(|| anyhow!("{} is not on PATH", runtime.shim_binary())),
    }
}

/// `name` looked up on `$PATH`.
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}
