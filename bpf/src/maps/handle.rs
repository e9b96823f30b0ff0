//! The typed handle of the shared maps: [`Maps`], one opened fd per map, and the generic
//! bpf(2) map operations on [`MapFd`] (typed keys and values, per-CPU values, iteration).
//! What the entries mean is the business of the sibling modules.
use std::os::fd::{AsFd, OwnedFd};

use crate::error::{Error, Result};
use crate::sys::{self, as_bytes, from_bytes, Pod};

/// How often an update that got ENOMEM is tried again (about 60 ms in all).
const ENOMEM_RETRIES: u32 = 16;

/// One opened map: its fd and the name used in errors.
#[derive(Debug)]
pub(crate) struct MapFd {
    pub name: &'static str,
    pub fd: OwnedFd,
    pub max_entries: u32,
}

/// A per-CPU map's value: `value` once per CPU, each 8-byte aligned.
fn percpu_value<V: Pod>(value: &V, ncpus: usize) -> Vec<u8> {
    let stride = std::mem::size_of::<V>().next_multiple_of(8);
    let mut buf = vec![0u8; stride * ncpus];
    for cpu in buf.chunks_exact_mut(stride) {
        cpu[..std::mem::size_of::<V>()].copy_from_slice(as_bytes(value));
    }
    buf
}

impl MapFd {
    pub(super) fn update<K: Pod, V: Pod>(&self, key: &K, value: &V) -> Result<()> {
        self.update_bytes(as_bytes(key), as_bytes(value))
    }

    /// Adds an entry only if its key is absent (BPF_NOEXIST): Ok(false) when it is there.
    pub(super) fn insert<K: Pod, V: Pod>(&self, key: &K, value: &V) -> Result<bool> {
        match self.update_flags(
            as_bytes(key),
            as_bytes(value),
            libbpf_sys::BPF_NOEXIST.into(),
        ) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(false),
            other => other.map(|()| true),
        }
    }

    fn update_bytes(&self, key: &[u8], value: &[u8]) -> Result<()> {
        self.update_flags(key, value, libbpf_sys::BPF_ANY.into())
    }

    fn update_flags(&self, key: &[u8], value: &[u8], flags: u64) -> Result<()> {
        let mut result = sys::map_update(self.fd.as_fd(), key, value, flags);
        // Maps that are not preallocated take their elements from per-CPU caches of the
        // kernel's BPF memory allocator (5.18+, kernel/bpf/memalloc.c), refilled
        // asynchronously from irq_work: a burst of updates from one CPU can find the cache
        // empty and get ENOMEM although the map has room. Wait for the refill, briefly.
        let mut wait = std::time::Duration::from_micros(50);
        for _ in 0..ENOMEM_RETRIES {
            match &result {
                Err(e) if e.raw_os_error() == Some(libc::ENOMEM) => {
                    std::thread::sleep(wait);
                    wait = (wait * 2).min(std::time::Duration::from_millis(5));
                    result = sys::map_update(self.fd.as_fd(), key, value, flags);
                }
                _ => break,
            }
        }
        result.map_err(|e| match e.raw_os_error() {
            Some(libc::E2BIG) | Some(libc::ENOSPC) => Error::MapFull {
                map: self.name,
                max_entries: self.max_entries,
            },
            _ => e,
        })
    }

    /// Per-CPU maps: one value per possible CPU, each at an 8-byte aligned stride.
    pub(super) fn update_percpu<K: Pod, V: Pod>(
        &self,
        key: &K,
        value: &V,
        ncpus: usize,
    ) -> Result<()> {
        self.update_bytes(as_bytes(key), &percpu_value(value, ncpus))
    }

    /// Writes each CPU's own value of a per-CPU map's entry (`values`: one per possible CPU,
    /// as [`MapFd::lookup_percpu`] reads them).
    pub(super) fn update_percpu_each<K: Pod, V: Pod>(&self, key: &K, values: &[V]) -> Result<()> {
        let size = std::mem::size_of::<V>();
        let stride = size.next_multiple_of(8);
        let mut buf = vec![0u8; stride * values.len()];
        for (cpu, v) in buf.chunks_exact_mut(stride).zip(values) {
            cpu[..size].copy_from_slice(as_bytes(v));
        }
        self.update_bytes(as_bytes(key), &buf)
    }

    /// [`MapFd::update_percpu`] only if the key is absent (BPF_NOEXIST): Ok(false) when it
    /// is there.
    pub(super) fn insert_percpu<K: Pod, V: Pod>(
        &self,
        key: &K,
        value: &V,
        ncpus: usize,
    ) -> Result<bool> {
        match self.update_flags(
            as_bytes(key),
            &percpu_value(value, ncpus),
            libbpf_sys::BPF_NOEXIST.into(),
        ) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(false),
            other => other.map(|()| true),
        }
    }

    /// Every CPU's value of a per-CPU map's entry.
    pub(super) fn lookup_percpu<K: Pod, V: Pod>(
        &self,
        key: &K,
        ncpus: usize,
    ) -> Result<Option<Vec<V>>> {
        let stride = std::mem::size_of::<V>().next_multiple_of(8);
        let mut buf = vec![0u8; stride * ncpus];
        if !sys::map_lookup(self.fd.as_fd(), as_bytes(key), &mut buf)? {
            return Ok(None);
        }
        Ok(Some(
            buf.chunks_exact(stride)
                .filter_map(|cpu| from_bytes::<V>(&cpu[..std::mem::size_of::<V>()]))
                .collect(),
        ))
    }

    pub(super) fn lookup<K: Pod, V: Pod>(&self, key: &K) -> Result<Option<V>> {
        let mut buf = vec![0u8; std::mem::size_of::<V>()];
        if sys::map_lookup(self.fd.as_fd(), as_bytes(key), &mut buf)? {
            Ok(from_bytes(&buf))
        } else {
            Ok(None)
        }
    }

    pub(super) fn delete<K: Pod>(&self, key: &K) -> Result<bool> {
        sys::map_delete(self.fd.as_fd(), as_bytes(key))
    }

    /// Every key, once. A hash map's walk starts over from its first key when the key it
    /// stands on is deleted meanwhile (another container's delete): keys seen already are
    /// not listed again.
    pub(super) fn keys<K: Pod>(&self) -> Result<Vec<K>> {
        let mut out = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut next = K::default();
        let mut cur: Option<K> = None;
        loop {
            let mut buf = vec![0u8; std::mem::size_of::<K>()];
            let more =
                sys::map_next_key(self.fd.as_fd(), cur.as_ref().map(|k| as_bytes(k)), &mut buf)?;
            if !more {
                return Ok(out);
            }
            next = from_bytes(&buf).unwrap_or(next);
            if seen.insert(buf) {
                out.push(next);
            }
            cur = Some(next);
        }
    }
}

/// The shared maps of one object version.
#[derive(Debug)]
pub struct Maps {
    pub(crate) cgroups: MapFd,
    /// Per-cgroup local storage of the cgroup programs: made by the kernel when the first
    /// of them is attached to a cgroup, freed with the cgroup.
    pub(crate) cg_local: MapFd,
    pub(crate) identities: MapFd,
    /// The TC programs' fast path: an array slot per interface (see `tc_slots` in
    /// tether.bpf.c); `tc_owners` says who holds which, `tc_ifaces` has the rest.
    pub(crate) tc_slots: MapFd,
    pub(crate) tc_owners: MapFd,
    pub(crate) tc_ifaces: MapFd,
    /// Each tracked interface's name, for userspace alone.
    pub(crate) iface_names: MapFd,
    pub(crate) k8s_names: MapFd,
    pub(crate) deny4: MapFd,
    pub(crate) deny6: MapFd,
    pub(crate) rates: MapFd,
    pub(crate) events: MapFd,
    pub(crate) ncpus: usize,
}
