//! runc's failures as the shim's callers tell them apart: a [`RuncError`] carries runc's own
//! message and a [`RuncErrorKind`] classified once, here, from that message. A leaf: it
//! imports nothing of the crate, so the crate's error type can hold it.

/// What went wrong, as far as callers need to tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuncErrorKind {
    /// The container does not exist (any more).
    NotFound,
    /// A container with this id already exists.
    AlreadyExists,
    /// The process to signal has already exited.
    ProcessFinished,
    /// Anything else: the message says what.
    Failed,
}

/// A runc command that failed, with runc's reason.
#[derive(Debug, Clone, thiserror::Error)]
#[error("OCI runtime {command} failed: {message}")]
pub struct RuncError {
    pub command: &'static str,
    pub kind: RuncErrorKind,
    pub message: String,
}

impl RuncError {
    pub fn new(command: &'static str, kind: RuncErrorKind, message: String) -> Self {
        Self {
            command,
            kind,
            message,
        }
    }

    /// Classifies runc's message. runc has no error codes; these phrases are the ones
    /// runc 1.0-1.2 print for these conditions (libcontainer/error.go and kill.go).
    pub(crate) fn classify(command: &'static str, message: String) -> Self {
        let m = message.to_ascii_lowercase();
        let kind = if m.contains("does not exist") || m.contains("container not found") {
            RuncErrorKind::NotFound
        } else if m.contains("already exists") {
            RuncErrorKind::AlreadyExists
        } else if m.contains("process already finished")
            || m.contains("container not running")
            || m.contains("no such process")
        {
            RuncErrorKind::ProcessFinished
        } else {
            RuncErrorKind::Failed
        };
        Self::new(command, kind, message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_classified_once() {
        let k = |m: &str| RuncError::classify("kill", m.to_string()).kind;
        assert_eq!(k("container \"x\" does not exist"), RuncErrorKind::NotFound);
        assert_eq!(
            k("container with id exists: x: already exists"),
            RuncErrorKind::AlreadyExists
        );
        assert_eq!(k("container not running"), RuncErrorKind::ProcessFinished);
        assert_eq!(
            k("os: process already finished"),
            RuncErrorKind::ProcessFinished
        );
        assert_eq!(k("permission denied"), RuncErrorKind::Failed);
    }
}
