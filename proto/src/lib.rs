//! tether-api: what tetherd, tetherctl and the shim share, and nothing of the daemon.
//!
//! - [`pb`]: the protobuf messages and the async ttrpc client and server of
//!   `tether/broker/v1/broker.proto` (`tether.broker.v1`), generated into OUT_DIR at build
//!   time;
//! - [`types`]: plain Rust mirrors of those messages, and [`convert`] between the two;
//! - [`client`]: the broker client, which starts tetherd on demand;
//! - [`config`]: the schema of the node config file;
//! - [`paths`]: every default path (config file, socket, pin root, audit log, tetherd).
//!
//! It depends on no eBPF code and no daemon machinery (HTTP, command-line parsing), so the
//! shim links only what it calls.

pub mod client;
pub mod config;
pub mod convert;
pub mod error;
pub mod paths;
pub mod pb;
pub mod types;

pub use client::Client;
pub use config::Config;
pub use error::{ClientError, ConfigError};
