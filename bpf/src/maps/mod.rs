//! Typed access to tether's shared maps, one file per concern:
//!
//! - `values`: the public value types (config, counters, interface keys, CIDRs, identity).
//! - `raw`: the `repr(C)` mirrors of `src/bpf/tether.h` and the config's flag encoding.
//! - `handle`: [`Maps`], the opened maps, and the generic operations on one map.
//! - `containers`, `ifaces`, `deny`, `occupancy`: what the entries mean, for a container,
//!   an interface, a deny rule, and the maps' fill level.
//!
//! Which programs a container needs is not decided here (see `Prog::used_by`).
mod containers;
mod deny;
mod handle;
mod ifaces;
mod occupancy;
mod raw;
mod values;

pub(crate) use handle::MapFd;
pub use handle::Maps;
pub use ifaces::{tc_slot_of, TC_SLOTS};
pub use occupancy::Occupancy;
pub(crate) use raw::RawEvent;
pub use values::{Cidr, ContainerConfig, Counters, Identity, IfKey, K8sNames};
