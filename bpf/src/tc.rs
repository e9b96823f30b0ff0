//! How TC programs are attached: TCX links (Linux 6.6+), or clsact filters on older kernels.
//!
//! A TCX link is a bpf_link: pinned under the container's directory, listed by tetherd, and
//! detached by unpinning. A clsact filter (cls_bpf in direct-action mode, through netlink)
//! is not a bpf object: it lives on the interface until removed, so tether gives its filters
//! a fixed handle and priority and removes them by those at detach, from inside the
//! container's network namespace. Its classid is the namespace part of the interface's key
//! on kernels before 6.2 ([`crate::NetnsKey::Classid`]).
use std::os::fd::BorrowedFd;

use libbpf_rs::{TcHookBuilder, TC_EGRESS, TC_INGRESS};

use crate::error::{Error, Result};
use crate::programs::{Prog, Programs};
use crate::tc_filter;

/// The filter handle and priority tether's clsact filters use.
const CLSACT_HANDLE: u32 = 0x7e7;
const CLSACT_PRIORITY: u32 = 0x7e7;

/// The way TC programs go on an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcAttach {
    /// TCX links (Linux 6.6+): multi-program, owned by a bpf_link, pinnable.
    Tcx,
    /// A clsact qdisc with a direct-action cls_bpf filter per direction (older kernels).
    Clsact,
}

impl TcAttach {
    /// TCX where the kernel has it (6.6+), clsact otherwise. `TETHER_TC_ATTACH=tcx|clsact`
    /// overrides the choice (for kernels with TCX disabled, and for tests of the fallback).
    pub fn probe() -> Self {
        match std::env::var("TETHER_TC_ATTACH").as_deref() {
            Ok("clsact") => TcAttach::Clsact,
            Ok("tcx") => TcAttach::Tcx,
            // Classid keys (kernels before 6.2, or chosen) live in clsact filters.
            _ if crate::NetnsKey::probe() == crate::NetnsKey::Classid => TcAttach::Clsact,
            _ if crate::sys::kernel_at_least(6, 6) => TcAttach::Tcx,
            _ => TcAttach::Clsact,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TcAttach::Tcx => "tcx",
            TcAttach::Clsact => "clsact",
        }
    }

    /// Every mode this kernel has: clsact always, TCX from 6.6 (where keys are netns cookies).
    pub fn available() -> &'static [TcAttach] {
        if crate::sys::kernel_at_least(6, 6) && crate::NetnsKey::probe() == crate::NetnsKey::Cookie
        {
            &[TcAttach::Tcx, TcAttach::Clsact]
        } else {
            &[TcAttach::Clsact]
        }
    }
}

fn hook(prog: BorrowedFd<'_>, ifindex: u32, ingress: bool) -> libbpf_rs::TcHook {
    let mut b = TcHookBuilder::new(prog);
    b.ifindex(ifindex as i32)
        .replace(true)
        .handle(CLSACT_HANDLE)
        .priority(CLSACT_PRIORITY);
    b.hook(if ingress { TC_INGRESS } else { TC_EGRESS })
}

fn tc_err(call: &'static str, e: libbpf_rs::Error) -> Error {
    Error::Libbpf {
        what: call,
        source: e,
    }
}

/// Attaches both TC programs to `ifindex` as clsact filters in the calling thread's network
/// namespace (creating the clsact qdisc if needed), with `classid` (the namespace part of the
/// interface's key where the programs key by classid; 0 otherwise). Replaces tether's own
/// earlier filters.
pub(crate) fn clsact_attach(programs: &Programs, ifindex: u32, classid: u32) -> Result<()> {
    tc_filter::ensure_clsact(ifindex)?;
    for (prog, ingress, name) in [
        (Prog::TcIngress, true, "tether_tc_ingress"),
        (Prog::TcEgress, false, "tether_tc_egress"),
    ] {
        tc_filter::replace(
            filter_at(ifindex, ingress),
            programs.fd(prog),
            name,
            classid,
        )?;
    }
    Ok(())
}

fn filter_at(ifindex: u32, ingress: bool) -> tc_filter::FilterAt {
    tc_filter::FilterAt {
        ifindex,
        ingress,
        handle: CLSACT_HANDLE,
        priority: CLSACT_PRIORITY,
    }
}

/// The classid of tether's egress filter on `ifindex` in the calling thread's network
/// namespace, if it has one (of this version's programs or another's: the handle and
/// priority are tether's).
pub(crate) fn clsact_classid(ifindex: u32) -> Result<Option<u32>> {
    Ok(tc_filter::get(filter_at(ifindex, false))?.map(|f| f.classid))
}

/// Removes tether's clsact filters from `ifindex` in the calling thread's network namespace.
/// Filters (or the interface) already gone are fine.
pub(crate) fn clsact_detach(programs: &Programs, ifindex: u32) -> Result<()> {
    for (prog, ingress) in [(Prog::TcIngress, true), (Prog::TcEgress, false)] {
        let mut h = hook(programs.fd(prog), ifindex, ingress);
        if let Err(e) = h.detach() {
            let gone = matches!(
                e.kind(),
                libbpf_rs::ErrorKind::NotFound | libbpf_rs::ErrorKind::InvalidInput
            );
            if !gone {
                return Err(tc_err("detach cls_bpf filter", e));
            }
        }
    }
    Ok(())
}
