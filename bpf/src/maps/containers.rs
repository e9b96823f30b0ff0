//! A container's entries: its config and identity, its cgroup counters (in `cgroups` and
//! the cgroup's local storage), and its removal from every map.
use super::handle::{MapFd, Maps};
use super::raw::{RawCgroup, RawContainer, RawIdentity, RawK8sNames};
use super::values::{ContainerConfig, Counters, Identity, K8sNames};
use crate::error::{Error, Result};
use crate::pins;

fn c_string(raw: &[u8]) -> String {
    let end = raw.iter().position(|b| *b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

/// Copies `s` into `out`, cut on a character boundary to leave a NUL at the end.
fn put_c_string(out: &mut [u8], s: &str) {
    let mut n = s.len().min(out.len() - 1);
    while !s.is_char_boundary(n) {
        n -= 1;
    }
    out[..n].copy_from_slice(&s.as_bytes()[..n]);
}

impl Maps {
    /// Writes (or replaces) a container's configuration and identity; its counters start at
    /// zero.
    pub fn set_container(
        &self,
        cgroup_id: u64,
        config: &ContainerConfig,
        namespace: &str,
        id: &str,
    ) -> Result<()> {
        pins::check_name("namespace", namespace)?;
        pins::check_name("id", id)?;
        let mut ident = RawIdentity::default();
        ident.ns[..namespace.len()].copy_from_slice(namespace.as_bytes());
        ident.id[..id.len()].copy_from_slice(id.as_bytes());
        ident.attached_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        self.identities.update(&cgroup_id, &ident)?;
        // The config goes last: the programs act on a cgroup only once it is in `cgroups`.
        self.cgroups
            .update_percpu(&cgroup_id, &RawCgroup::new(cgroup_id, config), self.ncpus)
    }

    /// Writes a container's configuration into the local storage of its cgroup, which the
    /// kernel made when the first cgroup program was attached there: from here on the
    /// cgroup programs use it instead of `cgroups` (see `cg_local` in tether.bpf.c).
    /// Counters start at zero. Run it after [`Maps::set_container`] and the cgroup links.
    pub fn set_local(&self, cgroup_id: u64, config: &ContainerConfig) -> Result<()> {
        self.cg_local
            .update_percpu(&cgroup_id, &RawCgroup::new(cgroup_id, config), self.ncpus)
    }

    /// Rewrites the configuration of a tracked container wherever the programs read it: the
    /// entries of its interfaces, which copy its flags, its `cgroups` entry, its cgroup's
    /// local storage (while a cgroup program is attached), and its interfaces' entries
    /// again (one that another process attached meanwhile, with the flags from before, is
    /// then listed, or checks them again itself). Every CPU's counters are kept (what a
    /// program adds between the read and the write of an entry is lost: run it while the
    /// container runs nothing), but the cgroup's packets and bytes of a container moved to
    /// its interfaces. An untracked cgroup is an error.
    pub fn reconfigure(&self, cgroup_id: u64, config: &ContainerConfig) -> Result<()> {
        let raw = RawContainer::of(config);
        let Some(mut cpus) = self
            .cgroups
            .lookup_percpu::<u64, RawCgroup>(&cgroup_id, self.ncpus)?
        else {
            return Err(Error::Name {
                what: "cgroup",
                value: cgroup_id.to_string(),
                reason: "has no container entry: it cannot be reconfigured",
            });
        };
        self.set_iface_flags(cgroup_id, raw.flags)?;
        // Moved to its interfaces, a container's packets and bytes are theirs: what its
        // cgroup counted before (the kernel's own packets of its namespace, such as IPv6
        // neighbour discovery, whose sockets are charged to the cgroup that made the
        // namespace) left through them too. Its drops and denials stay.
        let moved = config.count_at_interfaces
            && cpus
                .first()
                .is_some_and(|c| !c.config.config().count_at_interfaces);
        let rewrite = |c: &mut RawCgroup| {
            c.config = raw;
            if moved {
                let k = &mut c.counters;
                (k.rx_packets, k.rx_bytes, k.tx_packets, k.tx_bytes) = (0, 0, 0, 0);
            }
        };
        cpus.iter_mut().for_each(rewrite);
        self.cgroups.update_percpu_each(&cgroup_id, &cpus)?;
        if let Some(mut cpus) = self
            .cg_local
            .lookup_percpu::<u64, RawCgroup>(&cgroup_id, self.ncpus)?
        {
            cpus.iter_mut().for_each(rewrite);
            self.cg_local.update_percpu_each(&cgroup_id, &cpus)?;
        }
        self.set_iface_flags(cgroup_id, raw.flags)
    }

    pub fn container_config(&self, cgroup_id: u64) -> Result<Option<ContainerConfig>> {
        Ok(self
            .cgroups
            .lookup_percpu::<u64, RawCgroup>(&cgroup_id, self.ncpus)?
            .and_then(|cpus| cpus.first().map(|r| r.config.config())))
    }

    /// Every tracked cgroup and who it is.
    pub fn identities(&self) -> Result<Vec<(u64, Identity)>> {
        let mut out = Vec::new();
        for cgid in self.identities.keys::<u64>()? {
            if let Some(raw) = self.identities.lookup::<u64, RawIdentity>(&cgid)? {
                out.push((
                    cgid,
                    Identity {
                        namespace: c_string(&raw.ns),
                        id: c_string(&raw.id),
                        attached_ns: raw.attached_ns,
                    },
                ));
            }
        }
        Ok(out)
    }

    /// The cgroup id of container `id` of `namespace`, if it is tracked.
    pub fn cgroup_of(&self, namespace: &str, id: &str) -> Result<Option<u64>> {
        Ok(self
            .identities()?
            .into_iter()
            .find(|(_, i)| i.namespace == namespace && i.id == id)
            .map(|(cg, _)| cg))
    }

    /// A container's cgroup counters, summed over CPUs and over `cgroups` and the cgroup's
    /// local storage (zero for an unknown cgroup). The local counters go with the cgroup.
    pub fn cgroup_counters(&self, cgroup_id: u64) -> Result<Counters> {
        self.cgroup_state(cgroup_id).map(|(_, c)| c)
    }

    /// A container's config (`None` for an unknown cgroup) and its cgroup counters, as
    /// [`Maps::container_config`] and [`Maps::cgroup_counters`] give them, from one read of
    /// its `cgroups` entry.
    pub fn cgroup_state(&self, cgroup_id: u64) -> Result<(Option<ContainerConfig>, Counters)> {
        let cpus = self
            .cgroups
            .lookup_percpu::<u64, RawCgroup>(&cgroup_id, self.ncpus)?;
        let config = cpus
            .as_deref()
            .and_then(<[RawCgroup]>::first)
            .map(|r| r.config.config());
        let mut total = cpus
            .map(|cpus| Counters::sum(cpus.iter().map(|c| &c.counters)))
            .unwrap_or_default();
        if let Some(local) = self.summed(&self.cg_local, cgroup_id)? {
            total.add(&local);
        }
        Ok((config, total))
    }

    /// A cgroup's counters in `map` (`cgroups` or `cg_local`), summed over CPUs.
    fn summed(&self, map: &MapFd, cgroup_id: u64) -> Result<Option<Counters>> {
        Ok(map
            .lookup_percpu::<u64, RawCgroup>(&cgroup_id, self.ncpus)?
            .map(|cpus| Counters::sum(cpus.iter().map(|c| &c.counters))))
    }

    /// The part of [`Maps::cgroup_counters`] counted in the cgroup's local storage, the
    /// cgroup programs' fast path (`None` while the cgroup has none).
    pub fn local_counters(&self, cgroup_id: u64) -> Result<Option<Counters>> {
        self.summed(&self.cg_local, cgroup_id)
    }

    /// Records who a container is to Kubernetes (each name cut to its field, as
    /// `struct tether_k8s_names` says).
    pub fn set_k8s_names(&self, cgroup_id: u64, names: &K8sNames) -> Result<()> {
        let mut raw = RawK8sNames::default();
        put_c_string(&mut raw.ns, &names.namespace);
        put_c_string(&mut raw.pod, &names.pod);
        put_c_string(&mut raw.container, &names.container);
        self.k8s_names.update(&cgroup_id, &raw)
    }

    /// A container's Kubernetes names, if it has any.
    pub fn k8s_names(&self, cgroup_id: u64) -> Result<Option<K8sNames>> {
        Ok(self
            .k8s_names
            .lookup::<u64, RawK8sNames>(&cgroup_id)?
            .map(|r| K8sNames {
                namespace: c_string(&r.ns),
                pod: c_string(&r.pod),
                container: c_string(&r.container),
            }))
    }

    /// Removes every entry of a container from every map; returns how many were removed.
    /// Idempotent.
    pub fn remove_container(&self, cgroup_id: u64) -> Result<usize> {
        // Config (and counters) first: from here on the programs ignore the cgroup.
        let mut n = self.cgroups.delete(&cgroup_id)? as usize;
        for (k, cg) in self.ifaces()? {
            if cg == cgroup_id {
                n += self.remove_iface(k)?;
            }
        }
        n += self.remove_deny_rules(cgroup_id)?;
        n += self.rates.delete(&cgroup_id)? as usize;
        n += self.k8s_names.delete(&cgroup_id)? as usize;
        n += self.identities.delete(&cgroup_id)? as usize;
        Ok(n)
    }

    /// Every cgroup id with an entry in any per-container map (for garbage collection).
    pub fn known_cgroups(&self) -> Result<Vec<u64>> {
        let mut ids: Vec<u64> = self.cgroups.keys::<u64>()?;
        ids.extend(self.identities.keys::<u64>()?);
        ids.extend(self.rates.keys::<u64>()?);
        ids.extend(self.k8s_names.keys::<u64>()?);
        ids.extend(self.ifaces()?.into_iter().map(|(_, cg)| cg));
        ids.sort_unstable();
        ids.dedup();
        Ok(ids)
    }
}
