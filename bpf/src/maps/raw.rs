//! The `repr(C)` mirrors of `src/bpf/tether.h` that the maps hold and the ring buffer
//! carries, and the encoding of a [`ContainerConfig`] into the programs' flags. Nothing here
//! touches a map; the tests compare the sizes with the BTF types of the built object.
use super::values::{ContainerConfig, Counters, IfKey};
use crate::sys::Pod;

const F_ACCOUNT: u32 = 1;
const F_POLICY: u32 = 2;
const F_AUDIT_DENY: u32 = 4;
const F_AUDIT_CONNECT: u32 = 8;
const F_COUNT_AT_IFACES: u32 = 16;
const F_REFUSE_PACKET: u32 = 32;
const F_JUDGE_AT_IFACES: u32 = 64;

#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RawContainer {
    pub flags: u32,
    pub sample_every: u32,
    pub rate_per_sec: u32,
    pub burst: u32,
}
// SAFETY: repr(C), four u32 fields, no padding.
unsafe impl Pod for RawContainer {}

#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct RawIdentity {
    pub ns: [u8; 80],
    pub id: [u8; 96],
    pub attached_ns: u64,
}
impl Default for RawIdentity {
    fn default() -> Self {
        RawIdentity {
            ns: [0; 80],
            id: [0; 96],
            attached_ns: 0,
        }
    }
}
// SAFETY: repr(C), byte arrays (176 bytes) then a u64 at offset 176: no padding.
unsafe impl Pod for RawIdentity {}

impl RawContainer {
    /// The programs' form of a container's config (`struct tether_container`).
    pub(super) fn of(config: &ContainerConfig) -> Self {
        let mut flags = 0;
        for (on, f) in [
            (config.account, F_ACCOUNT),
            (config.policy, F_POLICY),
            (config.audit_denials, F_AUDIT_DENY),
            (config.audit_connects, F_AUDIT_CONNECT),
            (config.count_at_interfaces, F_COUNT_AT_IFACES),
            (config.refuse_packet_sockets, F_REFUSE_PACKET),
            (config.judge_at_interfaces, F_JUDGE_AT_IFACES),
        ] {
            if on {
                flags |= f;
            }
        }
        RawContainer {
            flags,
            sample_every: config.sample_every,
            rate_per_sec: config.rate_per_sec,
            burst: config.burst,
        }
    }

    /// The config this entry was written from.
    pub(super) fn config(&self) -> ContainerConfig {
        ContainerConfig {
            account: self.flags & F_ACCOUNT != 0,
            policy: self.flags & F_POLICY != 0,
            audit_denials: self.flags & F_AUDIT_DENY != 0,
            audit_connects: self.flags & F_AUDIT_CONNECT != 0,
            count_at_interfaces: self.flags & F_COUNT_AT_IFACES != 0,
            refuse_packet_sockets: self.flags & F_REFUSE_PACKET != 0,
            judge_at_interfaces: self.flags & F_JUDGE_AT_IFACES != 0,
            sample_every: self.sample_every,
            rate_per_sec: self.rate_per_sec,
            burst: self.burst,
        }
    }
}

/// A tracked cgroup's value in the per-CPU `cgroups` map (`struct tether_cgroup`).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct RawCgroup {
    pub config: RawContainer,
    pub cgroup_id: u64,
    pub counters: Counters,
}
// SAFETY: repr(C): 16 bytes of u32s then eight u64s at offset 16: no padding.
unsafe impl Pod for RawCgroup {}

impl RawCgroup {
    pub(super) fn new(cgroup_id: u64, config: &ContainerConfig) -> Self {
        RawCgroup {
            config: RawContainer::of(config),
            cgroup_id,
            counters: Counters::default(),
        }
    }
}

/// A tracked interface's value in the per-CPU `tc_ifaces` map (`struct tether_iface`).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct RawIface {
    pub cgroup_id: u64,
    pub flags: u32,
    pub pad: u32,
    pub counters: Counters,
}
// SAFETY: repr(C): a u64, two u32s, seven u64s: no padding.
unsafe impl Pod for RawIface {}

/// An interface's entry in the per-CPU array `tc_slots` (`struct tether_tc_slot`); all
/// zero when the slot is free.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct RawTcSlot {
    pub key: IfKey,
    pub iface: RawIface,
}
// SAFETY: repr(C): two repr(C) structs of 16 and 72 bytes, both 8-aligned: no padding.
unsafe impl Pod for RawTcSlot {}

/// A container's Kubernetes names (`struct tether_k8s_names`, the value of `k8s_names`).
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct RawK8sNames {
    pub ns: [u8; 64],
    pub pod: [u8; 256],
    pub container: [u8; 64],
}
impl Default for RawK8sNames {
    fn default() -> Self {
        RawK8sNames {
            ns: [0; 64],
            pod: [0; 256],
            container: [0; 64],
        }
    }
}
// SAFETY: repr(C), byte arrays only (384 bytes): no padding.
unsafe impl Pod for RawK8sNames {}

/// An interface's name (`struct tether_if_name`, the value of `iface_names`).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct RawIfName {
    pub name: [u8; 16],
}
// SAFETY: repr(C): 16 bytes, no padding.
unsafe impl Pod for RawIfName {}

/// Who holds a slot of `tc_slots` (`struct tether_tc_owner`, the value of `tc_owners`).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct RawTcOwner {
    pub key: IfKey,
    pub cgroup_id: u64,
}
// SAFETY: repr(C): a 16-byte repr(C) struct and a u64: no padding.
unsafe impl Pod for RawTcOwner {}

#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct RawEvent {
    pub ts_ns: u64,
    pub cgroup_id: u64,
    pub kind: u32,
    pub pid: u32,
    pub family: u16,
    pub protocol: u16,
    pub dport: u16,
    pub pad: u16,
    pub ifindex: u32,
    pub daddr: [u8; 16],
    pub pad2: u32,
}
// SAFETY: repr(C): 8+8+4+4+2+2+2+2+4+16+4 = 56 bytes, a multiple of 8: no padding.
unsafe impl Pod for RawEvent {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_flags_round_trip() {
        let c = ContainerConfig {
            account: true,
            policy: false,
            audit_denials: true,
            audit_connects: true,
            count_at_interfaces: true,
            refuse_packet_sockets: true,
            judge_at_interfaces: true,
            sample_every: 3,
            rate_per_sec: 5,
            burst: 9,
        };
        assert_eq!(RawContainer::of(&c).config(), c);
    }

    #[test]
    fn layouts_match_the_object() {
        use super::super::deny::{Deny4Key, Deny6Key};
        use crate::skel::types;
        use std::mem::size_of;
        assert_eq!(
            size_of::<RawContainer>(),
            size_of::<types::tether_container>()
        );
        assert_eq!(
            size_of::<RawIdentity>(),
            size_of::<types::tether_identity>()
        );
        assert_eq!(
            size_of::<RawK8sNames>(),
            size_of::<types::tether_k8s_names>()
        );
        assert_eq!(size_of::<Counters>(), size_of::<types::tether_counters>());
        assert_eq!(size_of::<RawCgroup>(), size_of::<types::tether_cgroup>());
        assert_eq!(size_of::<RawIface>(), size_of::<types::tether_iface>());
        assert_eq!(size_of::<IfKey>(), size_of::<types::tether_if_key>());
        assert_eq!(size_of::<RawTcSlot>(), size_of::<types::tether_tc_slot>());
        assert_eq!(size_of::<RawTcOwner>(), size_of::<types::tether_tc_owner>());
        assert_eq!(size_of::<Deny4Key>(), size_of::<types::tether_deny4_key>());
        assert_eq!(size_of::<Deny6Key>(), size_of::<types::tether_deny6_key>());
        // tether_event is not a map value, so the skeleton has no type for it; tether.h asserts 56.
        assert_eq!(size_of::<RawEvent>(), 56);
    }
}
