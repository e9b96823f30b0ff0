//! tether's attach step, between `runc create` and `runc start`: the container's cgroup and
//! network namespace get the shared programs from their pins (tetherd loads them once per
//! node, started on demand when the pins are missing), and a watcher inside the namespace
//! attaches to links added later. Every wait has the plan's deadline.
//!
//! Every front-end (the task service, the shim's `delete` action, `tether-runc`) goes
//! through one [`attacher::Attacher`], at fixed points of a container's life: `prepare`
//! before runc runs (a bad plan, or programs that cannot be had, must fail Create with
//! nothing created), `attach` once the container exists but has not executed a single
//! instruction, `before_start` just before `runc start`, `before_delete` just before
//! `runc delete`, and `detach` after it. A failing `attach` makes Create delete the
//! container and fail. The front-end resolves the container's [`plan::Plan`] once and
//! passes it.
//!
//! - [`attacher`]: the [`attacher::Attacher`] and its contract with the front-ends.
//! - [`plan`]: the plan of one container (config and annotations; pure).
//! - [`programs`]: the programs: this process's cache, their pins, tetherd.
//! - [`cgroup_netns`]: attaching to the cgroup and network namespace, and detaching.
//! - [`watch`]: the link watcher (one implementation, async and blocking callers).
//! - [`priority`]: the attach step's scheduling priority.
//! - `bench` (the `bench` feature only): the benchmark's naive loader and attach times.

pub mod attacher;
#[cfg(feature = "bench")]
mod bench;
pub mod cgroup_netns;
pub mod plan;
pub mod priority;
pub mod programs;
pub mod watch;
