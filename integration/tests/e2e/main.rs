//! End-to-end scenarios through `ctr` against a private containerd.
//!
//! Every scenario is one function taking a [`TestEnv`]; `scenario!` runs it once per runtime
//! (`<module>::<scenario>::runc_v2` and `...::tether`) with the same assertions. The bar for
//! tether is to behave like `io.containerd.runc.v2` in every one of them.
//!
//! Needs root, containerd (the system's 1.6, or the 1.7/2.x in `$TETHER_CONTAINERD_DIR`;
//! `scripts/containerd-matrix.sh` runs the suite once per release), runc, busybox-static; the
//! tether variants need the shim built (`cargo build -p tether-shim`, or `TETHER_SHIM_BIN`).

#[macro_use]
mod common;

mod attach;
mod bad_input;
mod burst;
mod cgroup_driver;
mod checkpoint;
mod control;
mod cri;
mod events;
mod fixture;
mod grouping;
mod lifecycle;
mod parity;
mod restart;
mod stdio_race;
mod versions;
