//! An interface's entries: the slot of `tc_slots` its key hashes to (the TC programs' fast
//! path) or else its entry in `tc_ifaces`, and its counters.
use super::handle::Maps;
use super::raw::{RawContainer, RawIfName, RawIface, RawTcOwner, RawTcSlot};
use super::values::{Counters, IfKey};
use crate::error::{Error, Result};

/// The number of slots of `tc_slots`, the TC programs' fast path (`TETHER_TC_SLOTS`).
pub const TC_SLOTS: u32 = 1 << TC_SLOT_BITS;
const TC_SLOT_BITS: u32 = 10;

/// The slot of an interface in `tc_slots`: the mirror of `tether_tc_slot_of` in tether.h
/// (the TC program tests fail if the two differ).
pub fn tc_slot_of(key: IfKey) -> u32 {
    let x = key.netns_cookie ^ (u64::from(key.ifindex) << 32);
    (x.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - TC_SLOT_BITS)) as u32
}

impl Maps {
    /// Routes an interface's TC traffic to a container (whose entry must exist: its flags
    /// are copied); its counters start at zero, or stay if it is the container's already.
    /// The interface gets the slot of `tc_slots` its key hashes to if that slot is free (or
    /// already its own), else an entry in `tc_ifaces`; an interface already there stays
    /// there.
    pub fn set_iface(&self, key: IfKey, cgroup_id: u64) -> Result<()> {
        let flags = self.container_flags(cgroup_id)?;
        self.write_iface(key, cgroup_id, flags)?;
        self.recheck_flags(key, cgroup_id, flags)
    }

    fn write_iface(&self, key: IfKey, cgroup_id: u64, flags: u32) -> Result<()> {
        // Already this container's (an interface attached again after its ifindex was
        // taken by a new one): its counters stay, as a container's total may be theirs.
        if self.iface_owner(key)? == Some(cgroup_id) {
            return Ok(());
        }
        let iface = RawIface {
            cgroup_id,
            flags,
            pad: 0,
            counters: Counters::default(),
        };
        if self
            .tc_ifaces
            .lookup_percpu::<IfKey, RawIface>(&key, self.ncpus)?
            .is_none()
        {
            let slot = tc_slot_of(key);
            let owner = RawTcOwner { key, cgroup_id };
            // The claim is atomic: of two shims claiming one slot, one gets EEXIST.
            let claimed = self.tc_owners.insert(&slot, &owner)?;
            if claimed || self.slot_owner(slot)?.is_some_and(|o| o.key == key) {
                if !claimed {
                    self.tc_owners.update(&slot, &owner)?;
                }
                let written =
                    self.tc_slots
                        .update_percpu(&slot, &RawTcSlot { key, iface }, self.ncpus);
                if written.is_err() && claimed {
                    let _ = self.tc_owners.delete(&slot);
                }
                return written;
            }
        }
        self.tc_ifaces.update_percpu(&key, &iface, self.ncpus)
    }

    /// Routes a new interface's TC traffic to a container if no interface has `key` yet, and
    /// says whether it did. Between processes the claim is atomic (BPF_NOEXIST on the slot
    /// of `tc_slots` or on the entry of `tc_ifaces`): of two shims claiming one key, one
    /// gets `false`. The attach step picks [`crate::NetnsKey::Classid`] keys with it.
    pub fn claim_iface(&self, key: IfKey, cgroup_id: u64) -> Result<bool> {
        let flags = self.container_flags(cgroup_id)?;
        let claimed = self.claim_iface_with(key, cgroup_id, flags)?;
        if claimed {
            self.recheck_flags(key, cgroup_id, flags)?;
        }
        Ok(claimed)
    }

    fn claim_iface_with(&self, key: IfKey, cgroup_id: u64, flags: u32) -> Result<bool> {
        let iface = RawIface {
            cgroup_id,
            flags,
            pad: 0,
            counters: Counters::default(),
        };
        if self
            .tc_ifaces
            .lookup_percpu::<IfKey, RawIface>(&key, self.ncpus)?
            .is_some()
        {
            return Ok(false);
        }
        let slot = tc_slot_of(key);
        if self
            .tc_owners
            .insert(&slot, &RawTcOwner { key, cgroup_id })?
        {
            let written = self
                .tc_slots
                .update_percpu(&slot, &RawTcSlot { key, iface }, self.ncpus);
            if written.is_err() {
                let _ = self.tc_owners.delete(&slot);
            }
            return written.map(|()| true);
        }
        if self.slot_owner(slot)?.is_some_and(|o| o.key == key) {
            return Ok(false);
        }
        self.tc_ifaces.insert_percpu(&key, &iface, self.ncpus)
    }

    /// Gives every interface of container `cgroup_id` the container's flags `flags`,
    /// keeping each CPU's counters. Run it after the container's own entry has `flags`:
    /// an interface attached meanwhile by another process, which copied the flags from
    /// before, is either listed here or sees the new flags when it checks them again
    /// ([`Maps::set_iface`]).
    pub(super) fn set_iface_flags(&self, cgroup_id: u64, flags: u32) -> Result<()> {
        for (key, owner) in self.ifaces()? {
            if owner == cgroup_id {
                self.set_one_iface_flags(key, flags)?;
            }
        }
        Ok(())
    }

    /// An interface's entry written with the container's flags `written`: if the
    /// container's flags changed meanwhile (see [`Maps::set_iface_flags`]), the entry gets
    /// the new ones.
    fn recheck_flags(&self, key: IfKey, cgroup_id: u64, written: u32) -> Result<()> {
        let now = self.container_flags(cgroup_id)?;
        if now != written {
            self.set_one_iface_flags(key, now)?;
        }
        Ok(())
    }

    /// The entry of interface `key` gets `flags`. A slot whose entry is not (yet) this
    /// interface's is left alone: its owner's claim comes before its entry, and the
    /// process writing the entry checks the flags again after it ([`Maps::set_iface`]).
    fn set_one_iface_flags(&self, key: IfKey, flags: u32) -> Result<()> {
        if let Some(slot) = self.slot_of_iface(key)? {
            if let Some(mut cpus) = self
                .tc_slots
                .lookup_percpu::<u32, RawTcSlot>(&slot, self.ncpus)?
                .filter(|cpus| cpus.iter().all(|c| c.key == key))
            {
                cpus.iter_mut().for_each(|c| c.iface.flags = flags);
                self.tc_slots.update_percpu_each(&slot, &cpus)?;
            }
        } else if let Some(mut cpus) = self
            .tc_ifaces
            .lookup_percpu::<IfKey, RawIface>(&key, self.ncpus)?
        {
            cpus.iter_mut().for_each(|c| c.flags = flags);
            self.tc_ifaces.update_percpu_each(&key, &cpus)?;
        }
        Ok(())
    }

    /// The flags of a container's entry, which its interfaces' entries copy.
    fn container_flags(&self, cgroup_id: u64) -> Result<u32> {
        self.container_config(cgroup_id)?
            .map(|c| RawContainer::of(&c).flags)
            .ok_or(Error::Name {
                what: "cgroup",
                value: cgroup_id.to_string(),
                reason: "has no container entry: its interfaces cannot be tracked",
            })
    }

    fn slot_owner(&self, slot: u32) -> Result<Option<RawTcOwner>> {
        self.tc_owners.lookup::<u32, RawTcOwner>(&slot)
    }

    /// The slot an interface holds, if it holds one.
    fn slot_of_iface(&self, key: IfKey) -> Result<Option<u32>> {
        let slot = tc_slot_of(key);
        Ok(self
            .slot_owner(slot)?
            .filter(|o| o.key == key)
            .map(|_| slot))
    }

    /// Every tracked interface and its container's cgroup id.
    pub fn ifaces(&self) -> Result<Vec<(IfKey, u64)>> {
        let mut out = Vec::new();
        for slot in self.tc_owners.keys::<u32>()? {
            if let Some(o) = self.slot_owner(slot)? {
                out.push((o.key, o.cgroup_id));
            }
        }
        for k in self.tc_ifaces.keys::<IfKey>()? {
            let cpus = self
                .tc_ifaces
                .lookup_percpu::<IfKey, RawIface>(&k, self.ncpus)?;
            if let Some(first) = cpus.as_deref().and_then(<[RawIface]>::first) {
                out.push((k, first.cgroup_id));
            }
        }
        Ok(out)
    }

    /// The container (cgroup id) an interface is routed to, if it is tracked: two lookups,
    /// where [`Maps::ifaces`] walks every tracked interface.
    pub fn iface_owner(&self, key: IfKey) -> Result<Option<u64>> {
        if let Some(o) = self.slot_owner(tc_slot_of(key))?.filter(|o| o.key == key) {
            return Ok(Some(o.cgroup_id));
        }
        Ok(self
            .tc_ifaces
            .lookup_percpu::<IfKey, RawIface>(&key, self.ncpus)?
            .as_deref()
            .and_then(<[RawIface]>::first)
            .map(|i| i.cgroup_id))
    }

    /// An interface's counters, summed over CPUs (zero for an unknown interface).
    pub fn iface_counters(&self, key: IfKey) -> Result<Counters> {
        if let Some(slot) = self.slot_of_iface(key)? {
            let cpus = self
                .tc_slots
                .lookup_percpu::<u32, RawTcSlot>(&slot, self.ncpus)?
                .unwrap_or_default();
            // A slot claimed but not written yet (or being freed) holds another key.
            return Ok(Counters::sum(
                cpus.iter()
                    .filter(|s| s.key == key)
                    .map(|s| &s.iface.counters),
            ));
        }
        Ok(Counters::sum(
            self.tc_ifaces
                .lookup_percpu::<IfKey, RawIface>(&key, self.ncpus)?
                .unwrap_or_default()
                .iter()
                .map(|c| &c.counters),
        ))
    }

    /// Records the name of a tracked interface (cut to 15 bytes, as the kernel's are).
    pub fn set_iface_name(&self, key: IfKey, name: &str) -> Result<()> {
        let mut raw = RawIfName::default();
        let bytes = name.as_bytes();
        let n = bytes.len().min(raw.name.len() - 1);
        raw.name[..n].copy_from_slice(&bytes[..n]);
        self.iface_names.update(&key, &raw)
    }

    /// The name recorded for an interface, if any.
    pub fn iface_name(&self, key: IfKey) -> Result<Option<String>> {
        Ok(self.iface_names.lookup::<IfKey, RawIfName>(&key)?.map(|r| {
            let end = r.name.iter().position(|b| *b == 0).unwrap_or(r.name.len());
            String::from_utf8_lossy(&r.name[..end]).into_owned()
        }))
    }

    /// Forgets an interface (its counters and its name). A slot is cleared before it is
    /// given up, so the programs stop using it before another interface can claim it.
    pub fn remove_iface(&self, key: IfKey) -> Result<usize> {
        let _ = self.iface_names.delete(&key)?;
        if let Some(slot) = self.slot_of_iface(key)? {
            self.tc_slots
                .update_percpu(&slot, &RawTcSlot::default(), self.ncpus)?;
            return Ok(self.tc_owners.delete(&slot)? as usize);
        }
        Ok(self.tc_ifaces.delete(&key)? as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tc_slots_spread_sequential_cookies() {
        // Netns cookies come from a counter: consecutive namespaces must not collide.
        for ifindex in [1, 2, 7, 1000] {
            let mut slots: Vec<u32> = (1..=512)
                .map(|c| tc_slot_of(IfKey::new(c, ifindex)))
                .collect();
            assert!(slots.iter().all(|s| *s < TC_SLOTS));
            slots.sort_unstable();
            slots.dedup();
            assert_eq!(slots.len(), 512, "ifindex {ifindex}");
        }
        // Interfaces of one namespace spread too.
        let mut slots: Vec<u32> = (1..=64).map(|i| tc_slot_of(IfKey::new(77, i))).collect();
        slots.sort_unstable();
        slots.dedup();
        assert_eq!(slots.len(), 64);
    }
}
