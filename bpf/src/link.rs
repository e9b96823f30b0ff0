//! Attachments as owned values: a [`Link`] is one bpf_link (cgroup or TCX).
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use crate::error::{Error, Result};
use crate::programs::{Prog, Programs};
use crate::sys::{self, LinkInfo};

/// One attachment of one program.
///
/// Dropping a `Link` closes its fd: a link that is not pinned is then detached by the kernel;
/// a pinned link stays attached until its pin is removed (see [`Link::pin`]), which is how a
/// container's programs outlive the shim that attached them.
#[must_use = "dropping an unpinned Link detaches the program"]
#[derive(Debug)]
pub struct Link {
    fd: OwnedFd,
    info: LinkInfo,
}

impl Link {
    fn from_fd(fd: OwnedFd) -> Result<Self> {
        let info = sys::link_info(fd.as_fd())?;
        Ok(Link { fd, info })
    }

    /// Attaches `prog` to a cgroup (a directory fd of cgroup v2). Multi-attach: programs of
    /// other tools on the same cgroup keep running.
    pub fn cgroup(programs: &Programs, prog: Prog, cgroup: BorrowedFd<'_>) -> Result<Self> {
        debug_assert!(prog.is_cgroup());
        let fd = sys::link_create_cgroup(programs.fd(prog), cgroup, prog.attach_type())?;
        Link::from_fd(fd)
    }

    /// Attaches a TC program with TCX (Linux 6.6+) to `ifindex` in the calling thread's network
    /// namespace, after the programs already there.
    pub fn tcx(programs: &Programs, prog: Prog, ifindex: u32) -> Result<Self> {
        debug_assert!(!prog.is_cgroup());
        let fd = sys::link_create_tcx(programs.fd(prog), ifindex, prog.attach_type())?;
        Link::from_fd(fd)
    }

    /// Opens a pinned link.
    pub fn open_pinned(path: &Path) -> Result<Self> {
        let fd = sys::obj_get(path)?;
        Link::from_fd(fd).map_err(|_| Error::Tampered {
            path: path.to_path_buf(),
            reason: "not a bpf link".into(),
        })
    }

    /// Pins the link at `path` so it outlives this process.
    pub fn pin(&self, path: &Path) -> Result<()> {
        sys::obj_pin(self.fd.as_fd(), path)
    }

    /// Detaches now, whoever else holds the link (pins included).
    pub fn detach(self) -> Result<()> {
        sys::link_detach(self.fd.as_fd())
    }

    /// What the kernel reported when the link was opened.
    pub fn info(&self) -> LinkInfo {
        self.info
    }

    /// Fresh information from the kernel (e.g. whether its cgroup or interface went away).
    pub fn refresh(&self) -> Result<LinkInfo> {
        sys::link_info(self.fd.as_fd())
    }

    /// Whether the link lost its target: cgroup removed, or interface/netns gone.
    pub fn is_defunct(&self) -> Result<bool> {
        let i = self.refresh()?;
        Ok(match i.link_type {
            libbpf_sys::BPF_LINK_TYPE_CGROUP => i.cgroup_id == 0,
            libbpf_sys::BPF_LINK_TYPE_TCX => i.ifindex == 0,
            _ => false,
        })
    }
}

impl AsFd for Link {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
