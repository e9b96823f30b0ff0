//! tether-bpf: tether's eBPF programs (`src/bpf/tether.bpf.c`) and the safe layer around them.
//!
//! - [`programs`]: load and pin one object version (tetherd only), open a version's pins.
//! - [`pins`]: where everything lives in bpffs.
//! - [`maps`]: typed keys and values of the shared maps.
//! - [`link`] and [`container`]: attach to a container's cgroup and network namespace, detach.
//! - [`events`]: the audit ring buffer.
//!
//! Every bpf(2) command and every `unsafe` is in [`sys`]. No policy lives here: which programs a
//! container gets, and what happens when attaching fails, is the caller's decision.
pub mod container;
pub mod error;
pub mod events;
pub mod gc;
pub mod link;
pub mod maps;
pub mod netlink;
pub mod pins;
pub mod programs;
pub mod sys;
pub mod tc;

#[allow(
    clippy::all,
    clippy::pedantic,
    clippy::undocumented_unsafe_blocks,
    unsafe_op_in_unsafe_fn,
    missing_docs,
    dead_code,
    unused_imports
)]
mod skel {
    include!(concat!(env!("OUT_DIR"), "/tether.skel.rs"));
}

pub use error::{Error, Result};
pub use maps::{Cidr, ContainerConfig, Counters, IfKey};
pub use pins::PinLayout;
pub use programs::{NetnsKey, Prog, Programs};

/// The version of the object this build carries: a hash of its bytes.
pub const VERSION: &str = env!("TETHER_BPF_VERSION");
