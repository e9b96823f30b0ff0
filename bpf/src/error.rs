//! The error type of tether-bpf: every variant names the call, path or map it is about.
use std::io;
use std::path::PathBuf;

/// An error from loading, opening, attaching or reading tether's programs and maps.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A bpf(2) command or another system call failed.
    #[error("{call}: {source}")]
    Syscall {
        call: &'static str,
        #[source]
        source: io::Error,
    },
    /// A file system operation on a path failed.
    #[error("{op} {}: {source}", path.display())]
    Path {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// libbpf failed while opening or loading the object.
    #[error("libbpf: {what}: {source}")]
    Libbpf {
        what: &'static str,
        #[source]
        source: libbpf_rs::Error,
    },
    /// bpffs is not mounted where the pins live and could not be mounted.
    #[error("{} is not on a bpf file system: {reason}", path.display())]
    NoBpffs { path: PathBuf, reason: String },
    /// The programs of this version are not pinned (tetherd has not loaded them).
    #[error("programs of version {version} are not pinned under {}", dir.display())]
    NotLoaded { version: String, dir: PathBuf },
    /// A pin exists but is not what tether pinned there.
    #[error("pin {} is not tether's: {reason}", path.display())]
    Tampered { path: PathBuf, reason: String },
    /// A map has no room for another entry.
    #[error("map {map} is full ({max_entries} entries)")]
    MapFull { map: &'static str, max_entries: u32 },
    /// A CIDR (e.g. from an annotation) does not parse.
    #[error("invalid CIDR {value:?}: {reason}")]
    Cidr { value: String, reason: &'static str },
    /// A container asks for more of a shared map than its quota.
    #[error("{count} {what} exceed the quota of {max} per container")]
    Quota {
        what: &'static str,
        count: usize,
        max: usize,
    },
    /// A container id or namespace that cannot be stored or used as a pin name.
    #[error("invalid container {what} {value:?}: {reason}")]
    Name {
        what: &'static str,
        value: String,
        reason: &'static str,
    },
}

impl Error {
    pub(crate) fn syscall(call: &'static str, source: io::Error) -> Self {
        Error::Syscall { call, source }
    }

    pub(crate) fn path(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Path {
            op,
            path: path.into(),
            source,
        }
    }

    /// The errno behind this error, if it came from the kernel.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            Error::Syscall { source, .. } | Error::Path { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// The result type of tether-bpf.
pub type Result<T, E = Error> = std::result::Result<T, E>;
