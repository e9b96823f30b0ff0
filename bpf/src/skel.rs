//! The skeleton libbpf-cargo generates from `src/bpf/tether.bpf.c` (build.rs writes it to
//! `OUT_DIR`): the object's bytes, and typed access to its programs, maps and BTF types.
//! Generated code, so the lints do not apply.
#![allow(
    clippy::all,
    clippy::pedantic,
    clippy::undocumented_unsafe_blocks,
    unsafe_op_in_unsafe_fn,
    missing_docs,
    dead_code,
    unused_imports
)]

include!(concat!(env!("OUT_DIR"), "/tether.skel.rs"));
