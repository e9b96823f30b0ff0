//! The shim's error type and its one mapping onto ttrpc status codes.
//!
//! Every failure that reaches containerd goes through [`Error`]; the mapping in
//! `From<Error> for ttrpc::Error` is the only place that picks a status code, so
//! containerd (and `ctr`) see `NotFound`, `AlreadyExists`, `Unimplemented`... exactly
//! where the Go runc shim returns them.

use std::io;

use containerd_shim::protos::ttrpc;

use crate::runc::error::RuncError;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("{0}: not found")]
    NotFound(String),
    #[error("{0}: already exists")]
    AlreadyExists(String),
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
    #[error("{0}: not implemented")]
    Unimplemented(&'static str),
    #[error(transparent)]
    Runc(#[from] RuncError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("{call}: {source}")]
    Sys {
        call: &'static str,
        #[source]
        source: nix::Error,
    },
    #[error("{context}: {source}")]
    Framework {
        context: &'static str,
        #[source]
        source: containerd_shim::Error,
    },
    #[error("decode {what}: {source}")]
    Decode {
        what: &'static str,
        #[source]
        source: containerd_shim::protos::protobuf::Error,
    },
    #[error("read OCI spec {path}: {reason}")]
    Spec { path: String, reason: String },
    /// Attaching the container's programs failed (fail-closed plans fail Create with it).
    #[error("tether attach {id}: {reason}")]
    Attach { id: String, reason: String },
    #[error("{context}: {source}")]
    Json {
        context: String,
        #[source]
        source: serde_json::Error,
    },
}

impl Error {
    /// An I/O error with what the shim was doing when it happened.
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// A failed system call, named.
    pub fn sys(call: &'static str, source: nix::Error) -> Self {
        Error::Sys { call, source }
    }

    /// Attaching a container's programs failed, and why.
    pub fn attach(id: &str, reason: impl std::fmt::Display) -> Self {
        Error::Attach {
            id: id.to_string(),
            reason: reason.to_string(),
        }
    }

    /// An error from the containerd-shim framework crate.
    pub fn framework(context: &'static str, source: containerd_shim::Error) -> Self {
        Error::Framework { context, source }
    }

    pub fn code(&self) -> ttrpc::Code {
        use crate::runc::error::RuncErrorKind;
        match self {
            Error::InvalidArgument(_) | Error::Spec { .. } | Error::Decode { .. } => {
                ttrpc::Code::INVALID_ARGUMENT
            }
            Error::NotFound(_) => ttrpc::Code::NOT_FOUND,
            Error::AlreadyExists(_) => ttrpc::Code::ALREADY_EXISTS,
            Error::FailedPrecondition(_) => ttrpc::Code::FAILED_PRECONDITION,
            Error::Unimplemented(_) => ttrpc::Code::UNIMPLEMENTED,
            Error::Runc(e) => match e.kind {
                RuncErrorKind::NotFound | RuncErrorKind::ProcessFinished => ttrpc::Code::NOT_FOUND,
                RuncErrorKind::AlreadyExists => ttrpc::Code::ALREADY_EXISTS,
                RuncErrorKind::Failed => ttrpc::Code::UNKNOWN,
            },
            Error::Io { .. } | Error::Sys { .. } | Error::Framework { .. } | Error::Json { .. } => {
                ttrpc::Code::UNKNOWN
            }
            Error::Attach { .. } => ttrpc::Code::FAILED_PRECONDITION,
        }
    }
}

impl From<Error> for ttrpc::Error {
    fn from(e: Error) -> Self {
        ttrpc::Error::RpcStatus(ttrpc::get_status(e.code(), e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runc::error::RuncErrorKind;

    fn code_of(e: Error) -> ttrpc::Code {
        match ttrpc::Error::from(e) {
            ttrpc::Error::RpcStatus(s) => s.code(),
            other => panic!("not a status: {other:?}"),
        }
    }

    #[test]
    fn errors_map_to_the_codes_containerd_expects() {
        assert_eq!(
            code_of(Error::NotFound("container x".into())),
            ttrpc::Code::NOT_FOUND
        );
        assert_eq!(
            code_of(Error::AlreadyExists("container x".into())),
            ttrpc::Code::ALREADY_EXISTS
        );
        assert_eq!(
            code_of(Error::Unimplemented("sandbox")),
            ttrpc::Code::UNIMPLEMENTED
        );
        assert_eq!(
            code_of(Error::InvalidArgument("bad".into())),
            ttrpc::Code::INVALID_ARGUMENT
        );
        assert_eq!(
            code_of(Error::FailedPrecondition("not started".into())),
            ttrpc::Code::FAILED_PRECONDITION
        );
        let finished = RuncError::new("kill", RuncErrorKind::ProcessFinished, "gone".into());
        assert_eq!(code_of(finished.into()), ttrpc::Code::NOT_FOUND);
        let failed = RuncError::new("create", RuncErrorKind::Failed, "boom".into());
        assert_eq!(code_of(failed.into()), ttrpc::Code::UNKNOWN);
    }

    #[test]
    fn message_keeps_the_reason() {
        let e = RuncError::new(
            "create",
            RuncErrorKind::Failed,
            "exec: \"/nope\": stat /nope: no such file or directory".into(),
        );
        match ttrpc::Error::from(Error::from(e)) {
            ttrpc::Error::RpcStatus(s) => {
                assert!(s.message().contains("OCI runtime create failed"));
                assert!(s.message().contains("no such file or directory"));
            }
            other => panic!("not a status: {other:?}"),
        }
    }
}
