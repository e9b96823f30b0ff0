//! tether end-to-end test support.
//!
//! Everything here drives real components: a private `containerd` per fixture, the real
//! `ctr`, runc, the kernel's cgroups and `/proc`. Nothing is mocked. The scenario tests in
//! `tests/e2e/` and the `bench-shim` binary are built on these pieces:
//!
//! - [`containerd`]: the private daemon fixture ([`Containerd`]), its cleanup and restart.
//! - [`containerd_release`]: which containerd (1.6, 1.7, 2.x) runs, and its config format.
//! - [`ctr`]: the `ctr` CLI wrapper ([`Ctr`]) and the `ctr run` argument builder ([`Run`]).
//! - [`rootfs`] and [`image`]: a busybox rootfs and its import as an OCI image.
//! - [`events`]: a background `ctr events` subscription ([`EventLog`]).
//! - [`leaks`]: what must be gone after a container is deleted.
//! - [`cgroup`], [`procfs`]: reading the kernel's view of a container.
//! - [`shim_api`]: shim calls `ctr` 1.6 cannot make (`Task.Update`, and any Task request).
//! - [`pty`]: running `ctr -t` on a pseudo terminal.
//! - [`process`], [`wait`]: every child has a deadline, every wait polls with one.
//! - [`harness`]: [`TestEnv`], one scenario's containerd, namespace and rootfs.
//! - [`escape`]: the escape probe, run in a container, and its receiver.
//! - [`dockerd`], [`podman`]: private Docker and Podman daemons with tether as a runtime.
//! - [`cri`]: a node driven through containerd's CRI as kubelet drives it ([`cri::CriNode`]).
//!
//! The library must not panic on I/O errors: everything returns `anyhow::Result` with context,
//! and `Drop` impls log and carry on.

pub mod bpffs;
pub mod cgroup;
pub mod containerd;
pub mod containerd_release;
pub mod cri;
pub mod ctr;
pub mod dockerd;
pub mod escape;
pub mod events;
pub mod harness;
pub mod image;
pub mod leaks;
pub mod podman;
pub mod process;
pub mod procfs;
pub mod pty;
pub mod rootfs;
pub mod runtime;
pub mod shim_api;
pub mod wait;

pub use containerd::Containerd;
pub use ctr::{Ctr, Run};
pub use events::EventLog;
pub use harness::TestEnv;
pub use process::Output;
pub use runtime::Runtime;
