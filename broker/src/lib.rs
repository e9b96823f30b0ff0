//! tether-broker: `tetherd`, the node daemon that loads tether's eBPF programs once per
//! node and serves the broker API, its client (used by tetherctl and the shim), and
//! `tetherctl`'s commands.

pub mod acquire;
pub mod audit;
pub mod backend;
pub mod bpf_backend;
pub mod client;
pub mod config;
pub mod convert;
pub mod ctl;
pub mod daemon;
pub mod error;
pub mod gc;
pub mod instance;
pub mod logger;
pub mod metrics;
pub mod peer;
pub mod retired;
pub mod server;
pub mod service;
pub mod types;

pub use backend::Backend;
pub use client::Client;
pub use config::Config;
pub use error::{BackendError, ClientError, Error};
