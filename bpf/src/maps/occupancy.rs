//! How full the per-container maps are: the figures tetherd exports so that a node running
//! out of entries is seen before containers are refused.
use super::deny::{Deny4Key, Deny6Key};
use super::handle::{MapFd, Maps};
use super::values::IfKey;
use crate::error::Result;

/// How full one per-container map is ([`Maps::occupancy`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Occupancy {
    pub name: &'static str,
    pub entries: usize,
    pub max_entries: u32,
    /// Whether a full map refuses new entries (and so new containers), rather than
    /// sending them elsewhere.
    pub refuses_when_full: bool,
}

impl Maps {
    /// How many entries each per-container map holds, of how many it can.
    pub fn occupancy(&self) -> Result<Vec<Occupancy>> {
        let of = |map: &MapFd, entries: usize, refuses_when_full| Occupancy {
            name: map.name,
            entries,
            max_entries: map.max_entries,
            refuses_when_full,
        };
        Ok(vec![
            of(&self.cgroups, self.cgroups.keys::<u64>()?.len(), true),
            // Slots taken: an interface without a free slot goes to `tc_ifaces`.
            of(&self.tc_slots, self.tc_owners.keys::<u32>()?.len(), false),
            of(&self.tc_ifaces, self.tc_ifaces.keys::<IfKey>()?.len(), true),
            of(&self.deny4, self.deny4.keys::<Deny4Key>()?.len(), true),
            of(&self.deny6, self.deny6.keys::<Deny6Key>()?.len(), true),
        ])
    }
}
