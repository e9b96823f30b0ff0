//! tether-broker: `tetherd`, the node daemon that loads tether's eBPF programs once per
//! node and serves the broker API, and `tetherctl`'s commands. The API itself (messages,
//! plain types, the client, the config schema, default paths) is tether-api's.

pub mod acquire;
pub mod audit;
pub mod backend;
pub mod bpf_backend;
pub mod config;
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

pub use backend::Backend;
pub use config::Config;
pub use error::{BackendError, Error};
