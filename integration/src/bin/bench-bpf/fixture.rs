//! What the benchmarks create on the machine and remove again: private bpffs mounts,
//! network namespaces, cgroups and child processes, each removed when dropped; and the
//! small host queries they share (a command's output, the cgroup2 root, the CPU count).
//! Owns no measurement.
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use anyhow::{bail, Context, Result};
use tether_bpf::PinLayout;

pub struct Mount(pub PathBuf);
impl Drop for Mount {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
        let _ = fs::remove_dir(&self.0);
    }
}

pub struct Netns(pub String);
impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

pub struct Cgroup(pub PathBuf);
impl Drop for Cgroup {
    fn drop(&mut self) {
        // Empty child cgroups first (the `noop-off-path` toggle makes one).
        for e in fs::read_dir(&self.0).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                let _ = fs::remove_dir(e.path());
            }
        }
        let _ = fs::remove_dir(&self.0);
    }
}

/// A child process (an iperf3 server or client), killed and reaped when dropped.
pub struct KillOnDrop(pub Child);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn sh(cmd: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .with_context(|| cmd.to_string())?;
    if !out.status.success() {
        bail!("{cmd} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn private_bpffs(tag: &str) -> Result<(Mount, PinLayout)> {
    let dir = std::env::temp_dir().join(format!("tether-bench-{tag}-{}", std::process::id()));
    fs::create_dir_all(&dir)?;
    tether_integration::bpffs::mount(&dir)?;
    let layout = PinLayout::new(dir.join("tether"));
    Ok((Mount(dir), layout))
}

pub fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

pub fn cgroup_root() -> PathBuf {
    if Path::new("/sys/fs/cgroup/unified/cgroup.procs").exists() {
        PathBuf::from("/sys/fs/cgroup/unified")
    } else {
        PathBuf::from("/sys/fs/cgroup")
    }
}
