//! The tests' own bpf file systems.

use std::path::Path;

use anyhow::{Context, Result};

/// Mounts a bpffs at `dir` (which must exist), as `mount -t bpf bpf DIR`.
pub fn mount(dir: &Path) -> Result<()> {
    nix::mount::mount(
        Some("bpf"),
        dir,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .with_context(|| format!("mount -t bpf bpf {}", dir.display()))
}
