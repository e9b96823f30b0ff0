//! The no-op baseline programs: `r0 = verdict; exit` (after an optional loop of known
//! cost) loaded straight through libbpf and linked to the cgroup_skb or TCX hooks, the
//! floor that tether's programs are compared with.
use std::fs;
use std::os::fd::AsFd;
use std::path::Path;

use anyhow::{bail, Context, Result};
use tether_bpf::container;

/// A program that does nothing but return (a no-op), linked to a hook: what the kernel's
/// hook costs by itself, the floor for any program there. Dropping it closes the links,
/// which detaches.
pub struct Noop {
    prog: std::os::fd::OwnedFd,
    _links: Vec<std::os::fd::OwnedFd>,
}

impl Noop {
    /// Loads `r0 = verdict; exit` as a program of `prog_type`, after a loop of `spin`
    /// register additions when `spin` > 0 (a known cost with no memory access).
    pub fn load(prog_type: u32, verdict: i32, spin: u32) -> Result<std::os::fd::OwnedFd> {
        use std::os::fd::{FromRawFd, OwnedFd};
        // One eBPF instruction in the kernel's encoding (struct bpf_insn, little endian).
        let insn = |code: u8, dst: u8, src: u8, off: i16, imm: i32| -> u64 {
            u64::from(code)
                | u64::from(dst | (src << 4)) << 8
                | u64::from(off as u16) << 16
                | u64::from(imm as u32) << 32
        };
        let mut insns = Vec::new();
        if spin > 0 {
            insns.extend([
                insn(0xb7, 1, 0, 0, spin as i32), // r1 = spin
                insn(0xb7, 2, 0, 0, 0),           // r2 = 0
                insn(0x0f, 2, 1, 0, 0),           // loop: r2 += r1
                insn(0x17, 1, 0, 0, 1),           // r1 -= 1
                insn(0x55, 1, 0, -3, 0),          // if r1 != 0 goto loop
            ]);
        }
        insns.push(insn(0xb7, 0, 0, 0, verdict)); // r0 = verdict
        insns.push(insn(0x95, 0, 0, 0, 0)); // exit
        let name = c"tether_noop";
        let license = c"GPL";
        // SAFETY: `insns` holds 8-byte eBPF instructions in the kernel's encoding (the
        // layout of bpf_insn) and outlives the call; name and license are NUL-terminated;
        // a null opts pointer selects libbpf's defaults.
        let prog = unsafe {
            libbpf_sys::bpf_prog_load(
                prog_type,
                name.as_ptr(),
                license.as_ptr(),
                insns.as_ptr().cast(),
                insns.len() as _,
                std::ptr::null_mut(),
            )
        };
        if prog < 0 {
            bail!(
                "BPF_PROG_LOAD (no-op, type {prog_type}): {}",
                std::io::Error::from_raw_os_error(-prog)
            );
        }
        // SAFETY: bpf_prog_load returned a new file descriptor that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(prog) })
    }

    /// A cgroup_skb no-op (pass) on both directions of `cgroup`, after `spin` additions.
    pub fn cgroup_skb(cgroup: &Path, spin: u32) -> Result<Self> {
        Self::cgroup_skb_on(
            cgroup,
            spin,
            &[
                libbpf_sys::BPF_CGROUP_INET_INGRESS,
                libbpf_sys::BPF_CGROUP_INET_EGRESS,
            ],
        )
    }

    /// A cgroup_skb no-op on the hooks `attach_types` of `cgroup`.
    pub fn cgroup_skb_on(cgroup: &Path, spin: u32, attach_types: &[u32]) -> Result<Self> {
        let prog = Self::load(libbpf_sys::BPF_PROG_TYPE_CGROUP_SKB, 1, spin)?;
        let cg = fs::File::open(cgroup)?;
        let mut links = Vec::new();
        for &attach_type in attach_types {
            links.push(tether_bpf::sys::link_create_cgroup(
                prog.as_fd(),
                cg.as_fd(),
                attach_type,
            )?);
        }
        Ok(Noop {
            prog,
            _links: links,
        })
    }

    /// A TC no-op (TCX_NEXT) on both directions of `dev` in `netns`, through TCX links
    /// made from inside the namespace ([`container::in_netns`]).
    pub fn tc(netns: &fs::File, dev: &str) -> Result<Self> {
        let prog = Self::load(libbpf_sys::BPF_PROG_TYPE_SCHED_CLS, -1, 0)?;
        let link_both = || -> Result<Vec<std::os::fd::OwnedFd>> {
            let ifindex = nix::net::if_::if_nametoindex(dev).context(dev.to_string())?;
            let mut links = Vec::new();
            for attach_type in [libbpf_sys::BPF_TCX_INGRESS, libbpf_sys::BPF_TCX_EGRESS] {
                links.push(tether_bpf::sys::link_create_tcx(
                    prog.as_fd(),
                    ifindex,
                    attach_type,
                )?);
            }
            Ok(links)
        };
        let links = container::in_netns(netns.as_fd(), || Ok(link_both()))??;
        Ok(Noop {
            prog,
            _links: links,
        })
    }

    pub fn stats(&self) -> Result<tether_bpf::sys::ProgInfo> {
        Ok(tether_bpf::sys::prog_info(self.prog.as_fd())?)
    }
}
