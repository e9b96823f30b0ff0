//! The seam between tetherd's server and the eBPF layer: the synchronous `Backend` trait
//! the server calls (always through `spawn_blocking`), and a `FakeBackend` for tests.
//! The real backend lives in `bpf_backend`.

use std::time::Duration;

use crate::error::BackendError;
pub use tether_api::types::{
    Acquired, AttachmentInfo, AuditEvent, ContainerInfo, ContainerStatsInfo, Counters, GcReport,
    InterfaceStatsInfo, MapUsage, ObjInfo, VersionInfo,
};

/// What tetherd needs from the eBPF layer. Every method may block; none may panic.
pub trait Backend: Send + Sync + 'static {
    /// The object version this build carries.
    fn version(&self) -> String;
    /// Pins of `version` if they already exist and validate (no load). Ok(None) if absent.
    fn adopt(&self, version: &str) -> Result<Option<Acquired>, BackendError>;
    /// Load + pin `version` (the caller guarantees only one call at a time per version).
    fn load(&self, version: &str) -> Result<Acquired, BackendError>;
    /// Every version under the pin root, with its validation problem if any.
    fn versions(&self) -> Result<Vec<VersionInfo>, BackendError>;
    /// Every container with entries in the shared maps.
    fn containers(&self) -> Result<Vec<ContainerInfo>, BackendError>;
    /// Counters of every container.
    fn stats(&self) -> Result<Vec<ContainerStatsInfo>, BackendError>;
    /// Removes entries of containers whose cgroup is gone and versions nothing uses.
    fn gc(&self, dry_run: bool) -> Result<GcReport, BackendError>;
    /// Blocking: waits up to `timeout` for audit events and returns those that arrived.
    fn poll_events(&self, timeout: Duration) -> Result<Vec<AuditEvent>, BackendError>;
    /// How interfaces are keyed across namespaces (e.g. `netns_cookie`, `inode`).
    fn netns_cookie_mode(&self) -> String;
}

/// A backend for tests: pins nothing, counts loads, and serves whatever containers,
/// stats and events a test puts in.
pub mod testing {
    use std::collections::{HashSet, VecDeque};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Condvar, Mutex, MutexGuard};
    use std::time::Duration;

    use super::*;

    /// An in-memory `Backend`. `load` sleeps a little to widen races between callers.
    #[derive(Default)]
    pub struct FakeBackend {
        loads: AtomicUsize,
        pinned: Mutex<HashSet<String>>,
        /// Containers `containers()` returns.
        pub containers: Mutex<Vec<ContainerInfo>>,
        /// Stats `stats()` returns.
        pub stats: Mutex<Vec<ContainerStatsInfo>>,
        events: Mutex<VecDeque<AuditEvent>>,
        events_ready: Condvar,
    }

    /// The object version a `FakeBackend` carries.
    pub const FAKE_VERSION: &str = "fake-v1";

    fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
        m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    impl FakeBackend {
        pub fn new() -> Self {
            Self::default()
        }

        /// How many times `load` ran.
        pub fn loads(&self) -> usize {
            self.loads.load(Ordering::SeqCst)
        }

        /// Marks `version` as already pinned, so `adopt` finds it.
        pub fn pin(&self, version: &str) {
            lock(&self.pinned).insert(version.to_string());
        }

        /// Removes the pins of `version`, as an unmounted bpffs would.
        pub fn unpin(&self, version: &str) {
            lock(&self.pinned).remove(version);
        }

        /// Queues an audit event for `poll_events`.
        pub fn push_event(&self, event: AuditEvent) {
            lock(&self.events).push_back(event);
            self.events_ready.notify_all();
        }

        fn acquired(version: &str) -> Acquired {
            let pin_dir = format!("/fake/bpf/tether/{version}");
            Acquired {
                version: version.to_string(),
                programs: vec![ObjInfo {
                    name: "count_egress".into(),
                    id: 7,
                    pin: format!("{pin_dir}/progs/count_egress"),
                    kind: "cgroup_skb".into(),
                }],
                maps: vec![ObjInfo {
                    name: "counters".into(),
                    id: 9,
                    pin: format!("{pin_dir}/maps/counters"),
                    kind: "percpu_hash".into(),
                }],
                pin_dir,
            }
        }
    }

    impl Backend for FakeBackend {
        fn version(&self) -> String {
            FAKE_VERSION.to_string()
        }

        fn adopt(&self, version: &str) -> Result<Option<Acquired>, BackendError> {
            Ok(lock(&self.pinned)
                .contains(version)
                .then(|| Self::acquired(version)))
        }

        fn load(&self, version: &str) -> Result<Acquired, BackendError> {
            // Like the real backend, it can only load the object it carries.
            if version != FAKE_VERSION {
                return Err(BackendError::NotFound(format!("object version {version}")));
            }
            self.loads.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(20));
            self.pin(version);
            Ok(Self::acquired(version))
        }

        fn versions(&self) -> Result<Vec<VersionInfo>, BackendError> {
            let mut versions: Vec<_> = lock(&self.pinned).iter().cloned().collect();
            versions.sort();
            Ok(versions
                .into_iter()
                .map(|v| {
                    let a = Self::acquired(&v);
                    VersionInfo {
                        version: a.version,
                        pin_dir: a.pin_dir,
                        programs: a.programs,
                        maps: a.maps,
                        containers: 0,
                        problem: None,
                        usage: vec![MapUsage {
                            map: "cgroups".into(),
                            entries: 1,
                            max_entries: 4,
                            refuses_when_full: true,
                        }],
                    }
                })
                .collect())
        }

        fn containers(&self) -> Result<Vec<ContainerInfo>, BackendError> {
            Ok(lock(&self.containers).clone())
        }

        fn stats(&self) -> Result<Vec<ContainerStatsInfo>, BackendError> {
            Ok(lock(&self.stats).clone())
        }

        fn gc(&self, dry_run: bool) -> Result<GcReport, BackendError> {
            let mut containers = lock(&self.containers);
            let stale: Vec<String> = containers
                .iter()
                .filter(|c| c.stale)
                .map(|c| c.id.clone())
                .collect();
            if !dry_run {
                containers.retain(|c| !c.stale);
            }
            Ok(GcReport {
                removed_map_entries: u32::try_from(stale.len()).unwrap_or(u32::MAX),
                removed_containers: stale,
                removed_versions: Vec::new(),
            })
        }

        fn poll_events(&self, timeout: Duration) -> Result<Vec<AuditEvent>, BackendError> {
            let events = lock(&self.events);
            let (mut events, _) = self
                .events_ready
                .wait_timeout_while(events, timeout, |e| e.is_empty())
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            Ok(events.drain(..).collect())
        }

        fn netns_cookie_mode(&self) -> String {
            "netns_cookie".to_string()
        }
    }
}
