//! tether-bpf: tether's eBPF programs (`src/bpf/tether.bpf.c`) and the safe layer around them.
//!
//! - [`programs`]: load and pin one object version (tetherd only), open a version's pins.
//! - [`pins`]: where everything lives in bpffs.
//! - [`maps`]: typed keys and values of the shared maps.
//! - [`link`] and [`container`]: attach to a container's cgroup and network namespace, detach.
//! - [`events`]: the audit ring buffer.
//! - `testing` (cargo feature `testing`): the fixtures of the kernel tests.
//!
//! Every bpf(2) command and every `unsafe` is in [`sys`]. No policy lives here: what a
//! container's config holds, and what happens when attaching fails, is the caller's decision;
//! [`Prog::used_by`] only names the programs that have work to do for a given config.
pub mod container;
pub mod error;
pub mod events;
pub mod features;
pub mod gc;
pub mod link;
pub mod lsm;
pub mod maps;
mod memlock;
pub mod netlink;
pub mod pins;
pub mod programs;
mod skel;
pub mod sys;
pub mod tc;
mod tc_filter;
#[cfg(feature = "testing")]
pub mod testing;

pub use error::{Error, Result};
pub use features::Features;
pub use maps::{Cidr, ContainerConfig, Counters, IfKey};
pub use pins::PinLayout;
pub use programs::{NetnsKey, Prog, Programs};

/// The version of the object this build carries: a hash of its bytes.
pub const VERSION: &str = env!("TETHER_BPF_VERSION");
