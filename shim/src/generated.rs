//! The protobuf types build.rs generates from runc's and CRI's runtime-options protos
//! (read by [`crate::options`]).
include!(concat!(env!("OUT_DIR"), "/protos/mod.rs"));
