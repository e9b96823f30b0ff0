//! A container's deny rules in the LPM tries `deny4` and `deny6`: the key encoding (the
//! cgroup id's 64 bits, then the address, so one trie holds every container's rules and a
//! lookup matches only the container's own) and the operations on the rules.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::handle::Maps;
use super::values::Cidr;
use crate::error::Result;
use crate::sys::Pod;

/// A key of `deny4` (`struct tether_deny4_key`).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Deny4Key {
    /// Bits that count: the cgroup id's 64, then the rule's prefix.
    pub prefixlen: u32,
    pub cgroup_lo: u32,
    pub cgroup_hi: u32,
    pub addr: [u8; 4],
}
// SAFETY: repr(C), three u32 and four bytes: no padding.
unsafe impl Pod for Deny4Key {}

/// A key of `deny6` (`struct tether_deny6_key`).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Deny6Key {
    /// Bits that count: the cgroup id's 64, then the rule's prefix.
    pub prefixlen: u32,
    pub cgroup_lo: u32,
    pub cgroup_hi: u32,
    pub addr: [u8; 16],
}
// SAFETY: repr(C), three u32 and sixteen bytes: no padding.
unsafe impl Pod for Deny6Key {}

/// The cgroup id's two halves, as the keys hold them.
fn split(cgid: u64) -> (u32, u32) {
    (cgid as u32, (cgid >> 32) as u32)
}

/// The trie's prefix length of a rule: the cgroup id always counts.
fn prefixlen(cidr: &Cidr) -> u32 {
    64 + u32::from(cidr.prefix)
}

/// The rule a key holds.
fn rule(prefixlen: u32, addr: IpAddr) -> Cidr {
    Cidr {
        addr,
        prefix: (prefixlen - 64) as u8,
    }
}

impl Maps {
    /// Adds a deny rule for a container's egress.
    pub fn add_deny(&self, cgroup_id: u64, cidr: &Cidr) -> Result<()> {
        let (lo, hi) = split(cgroup_id);
        let one = 1u32;
        match cidr.addr {
            IpAddr::V4(a) => self.deny4.update(
                &Deny4Key {
                    prefixlen: prefixlen(cidr),
                    cgroup_lo: lo,
                    cgroup_hi: hi,
                    addr: a.octets(),
                },
                &one,
            ),
            IpAddr::V6(a) => self.deny6.update(
                &Deny6Key {
                    prefixlen: prefixlen(cidr),
                    cgroup_lo: lo,
                    cgroup_hi: hi,
                    addr: a.octets(),
                },
                &one,
            ),
        }
    }

    /// A container's deny rules.
    pub fn deny_rules(&self, cgroup_id: u64) -> Result<Vec<Cidr>> {
        let (v4, v6) = self.deny_keys(cgroup_id)?;
        let v4 = v4
            .iter()
            .map(|k| rule(k.prefixlen, IpAddr::V4(Ipv4Addr::from(k.addr))));
        let v6 = v6
            .iter()
            .map(|k| rule(k.prefixlen, IpAddr::V6(Ipv6Addr::from(k.addr))));
        Ok(v4.chain(v6).collect())
    }

    /// Removes every deny rule of a container; returns how many were removed.
    pub(super) fn remove_deny_rules(&self, cgroup_id: u64) -> Result<usize> {
        let (v4, v6) = self.deny_keys(cgroup_id)?;
        let mut n = 0;
        for k in v4 {
            n += self.deny4.delete(&k)? as usize;
        }
        for k in v6 {
            n += self.deny6.delete(&k)? as usize;
        }
        Ok(n)
    }

    /// The keys of a container's rules in `deny4` and in `deny6`.
    fn deny_keys(&self, cgroup_id: u64) -> Result<(Vec<Deny4Key>, Vec<Deny6Key>)> {
        let cgroup = split(cgroup_id);
        let mut v4 = self.deny4.keys::<Deny4Key>()?;
        v4.retain(|k| (k.cgroup_lo, k.cgroup_hi) == cgroup);
        let mut v6 = self.deny6.keys::<Deny6Key>()?;
        v6.retain(|k| (k.cgroup_lo, k.cgroup_hi) == cgroup);
        Ok((v4, v6))
    }
}
