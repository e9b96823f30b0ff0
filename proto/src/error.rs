//! The errors of tether-api: [`ClientError`] (what a broker client call reports) and
//! [`ConfigError`] (reading or parsing the node config file). Each names the socket,
//! binary or file it concerns.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use ttrpc::Code;

/// An error of a broker client call.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Connecting to tetherd's socket failed.
    #[error("connect to tetherd at {socket}: {source}")]
    Connect {
        socket: PathBuf,
        #[source]
        source: io::Error,
    },
    /// tetherd was started on demand but did not serve the socket before the deadline.
    #[error(
        "tetherd was started on demand but does not serve {socket} after {after:?} \
         (its output goes to {log}): {source}"
    )]
    NotServing {
        socket: PathBuf,
        log: PathBuf,
        after: Duration,
        #[source]
        source: io::Error,
    },
    /// Spawning tetherd failed.
    #[error("spawn tetherd {path}: {source}")]
    Spawn {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// `what` did not finish within `after`.
    #[error("{what}: no answer from tetherd within {after:?}")]
    Deadline { what: String, after: Duration },
    /// tetherd answered `method` with an error status.
    #[error("tetherd {method}: {message} ({code:?})")]
    Rpc {
        method: &'static str,
        code: Code,
        message: String,
    },
    /// The connection broke during `method`.
    #[error("tetherd {method}: {source}")]
    Transport {
        method: &'static str,
        #[source]
        source: ttrpc::Error,
    },
}

/// An error reading tether's node config file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read (a named file that is missing, or unreadable).
    #[error("read tether config {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The file is malformed, or has an unknown key, a value of the wrong type or an
    /// invalid value; `reason` names the key.
    #[error("tether config {path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
}
