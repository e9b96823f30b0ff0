//! The errors of tether-broker: `BackendError` (what a backend or a request handler
//! reports, and its one mapping to a ttrpc status), `Error` (tetherd setup: config, socket,
//! lock, files) and `CtlError` (a tetherctl command). A broker client's errors are
//! tether-api's `ClientError`.

use std::io;
use std::path::{Path, PathBuf};

use tether_api::{ClientError, ConfigError};
use ttrpc::Code;

/// An error of a `Backend` call or of a request tetherd refuses; becomes a ttrpc status
/// through [`BackendError::code`].
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// A pin directory or pin is missing pieces or unusable.
    #[error("pins {path}: {reason}")]
    Pins { path: PathBuf, reason: String },
    /// A pin exists but is not what tether pinned there (wrong type, wrong program).
    #[error("pins {path} were tampered with: {reason}")]
    Tampered { path: PathBuf, reason: String },
    /// A bpf or other kernel call failed.
    #[error("{call}: {source}")]
    Kernel {
        call: &'static str,
        #[source]
        source: io::Error,
    },
    /// A file operation on `path` failed.
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The named thing (version, container) does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// A shared map has no room left.
    #[error("map {map} is full")]
    MapFull { map: String },
    /// The backend cannot serve at all (not built, kernel lacks a feature).
    #[error("backend unavailable: {0}")]
    Unavailable(&'static str),
    /// A requested object version is not a plain directory name.
    #[error("invalid object version {0:?}")]
    BadVersion(String),
    /// The backend panicked during `call`.
    #[error("backend crashed during {call}")]
    Crashed { call: &'static str },
    /// A container id prefix that names more than one container.
    #[error("container id prefix {prefix:?} matches {matches} containers: give more of the id")]
    Ambiguous { prefix: String, matches: usize },
    /// A request field (dotted path, e.g. `stats.id`) is missing or unusable.
    #[error("invalid request: {field} {reason}")]
    InvalidRequest {
        field: &'static str,
        reason: &'static str,
    },
}

impl BackendError {
    /// The ttrpc status code a caller sees for this error. The only place backend errors
    /// meet ttrpc codes.
    pub fn code(&self) -> Code {
        match self {
            BackendError::Pins { .. } => Code::FAILED_PRECONDITION,
            BackendError::Tampered { .. } => Code::DATA_LOSS,
            BackendError::Kernel { source, .. } => match source.raw_os_error() {
                Some(libc::EPERM) | Some(libc::EACCES) => Code::PERMISSION_DENIED,
                Some(libc::ENOMEM) | Some(libc::E2BIG) | Some(libc::ENOSPC) => {
                    Code::RESOURCE_EXHAUSTED
                }
                _ => Code::INTERNAL,
            },
            BackendError::Io { .. } => Code::INTERNAL,
            BackendError::NotFound(_) => Code::NOT_FOUND,
            BackendError::MapFull { .. } => Code::RESOURCE_EXHAUSTED,
            BackendError::Unavailable(_) => Code::UNAVAILABLE,
            BackendError::BadVersion(_) => Code::INVALID_ARGUMENT,
            BackendError::Crashed { .. } => Code::INTERNAL,
            BackendError::InvalidRequest { .. } => Code::INVALID_ARGUMENT,
            BackendError::Ambiguous { .. } => Code::INVALID_ARGUMENT,
        }
    }

    /// The ttrpc error a handler returns for this error; the message starts with
    /// `tetherd:` so a caller can tell where it came from.
    pub fn to_ttrpc(&self) -> ttrpc::Error {
        ttrpc::Error::RpcStatus(ttrpc::get_status(self.code(), format!("tetherd: {self}")))
    }
}

/// An error setting up or running tetherd.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The config file cannot be read, is malformed, or has an unknown or invalid key.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A command-line flag has an invalid value.
    #[error("tetherd {flag}: {reason}")]
    Flag { flag: &'static str, reason: String },
    /// Another tetherd holds the instance lock.
    #[error("tetherd already running (pid {pid})")]
    AlreadyRunning { pid: String },
    /// A file system operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The ttrpc server failed to start or stop.
    #[error("ttrpc server: {0}")]
    Ttrpc(#[source] ttrpc::Error),
    /// The backend failed while starting up.
    #[error(transparent)]
    Backend(#[from] BackendError),
}

impl Error {
    /// Builds the `map_err` closure for a failed file operation `what` on `path`.
    pub(crate) fn io<'a>(
        what: &'static str,
        path: &'a Path,
    ) -> impl FnOnce(io::Error) -> Error + 'a {
        move |source| Error::Io {
            what,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// An error of a tetherctl command.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error(transparent)]
    Client(#[from] ClientError),
    /// Reading a file (the audit log) failed.
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Writing to stdout failed (e.g. a closed pipe).
    #[error("write output: {0}")]
    Output(#[source] io::Error),
    /// The tetherd binary to spawn could not be located.
    #[error("locate tetherd next to tetherctl: {0}")]
    LocateTetherd(#[source] io::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_errors_map_to_codes() {
        let p = || PathBuf::from("/sys/fs/bpf/tether/v1");
        let kernel = |errno| BackendError::Kernel {
            call: "bpf(BPF_PROG_LOAD)",
            source: io::Error::from_raw_os_error(errno),
        };
        let cases = [
            (
                BackendError::Pins {
                    path: p(),
                    reason: "missing".into(),
                },
                Code::FAILED_PRECONDITION,
            ),
            (
                BackendError::Tampered {
                    path: p(),
                    reason: "not a program".into(),
                },
                Code::DATA_LOSS,
            ),
            (kernel(libc::EPERM), Code::PERMISSION_DENIED),
            (kernel(libc::ENOMEM), Code::RESOURCE_EXHAUSTED),
            (kernel(libc::EINVAL), Code::INTERNAL),
            (
                BackendError::Io {
                    what: "read",
                    path: p(),
                    source: io::Error::from_raw_os_error(libc::EIO),
                },
                Code::INTERNAL,
            ),
            (BackendError::NotFound("version v9".into()), Code::NOT_FOUND),
            (
                BackendError::MapFull {
                    map: "policy".into(),
                },
                Code::RESOURCE_EXHAUSTED,
            ),
            (BackendError::Unavailable("no bpf"), Code::UNAVAILABLE),
            (
                BackendError::BadVersion("../x".into()),
                Code::INVALID_ARGUMENT,
            ),
            (BackendError::Crashed { call: "load" }, Code::INTERNAL),
            (
                BackendError::InvalidRequest {
                    field: "stats.id",
                    reason: "is empty",
                },
                Code::INVALID_ARGUMENT,
            ),
        ];
        for (err, code) in cases {
            assert_eq!(err.code(), code, "{err}");
            match err.to_ttrpc() {
                ttrpc::Error::RpcStatus(s) => {
                    assert_eq!(s.code(), code);
                    assert!(s.message.starts_with("tetherd: "), "{}", s.message);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }
}
