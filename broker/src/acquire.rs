//! Single-flight Acquire: per object version, at most one `adopt`/`load` runs at a time,
//! and once a version is known to be pinned every later Acquire is answered from memory.
//! A load runs to its end in a task of its own, whatever happens to the call that started
//! it: a client that gives up (its deadline passes while the verifier works, as on a slow
//! or loaded machine) does not cancel it, and the next Acquire waits for it instead of
//! starting another. Owns the `loads` and `acquires` counters.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tether_api::types::{AcquireReply, Acquired};
use tokio::sync::OnceCell;

use crate::backend::Backend;
use crate::error::BackendError;

/// Runs a blocking backend call on tokio's blocking pool; a panic in the backend
/// becomes `BackendError::Crashed`.
pub async fn blocking<T, F>(call: &'static str, f: F) -> Result<T, BackendError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, BackendError> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| BackendError::Crashed { call })?
}

/// Pinned versions known to this tetherd, with single-flight loading.
pub struct Acquirer {
    backend: Arc<dyn Backend>,
    versions: Mutex<HashMap<String, Arc<OnceCell<Acquired>>>>,
    loads: Arc<AtomicU64>,
    acquires: AtomicU64,
}

/// A version must be usable as one directory name under the pin root, and not one of the
/// names the pin root keeps for other things (the containers' links, unfinished loads).
fn check_version(v: &str) -> Result<(), BackendError> {
    let ok = !v.is_empty()
        && v != "."
        && v != ".."
        && v != "containers"
        && !v.starts_with("staging-")
        && v.len() <= 128
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-+".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(BackendError::BadVersion(v.to_string()))
    }
}

impl Acquirer {
    pub fn new(backend: Arc<dyn Backend>) -> Self {
        Acquirer {
            backend,
            versions: Mutex::new(HashMap::new()),
            loads: Arc::new(AtomicU64::new(0)),
            acquires: AtomicU64::new(0),
        }
    }

    /// Loads performed by this tetherd.
    pub fn loads(&self) -> u64 {
        self.loads.load(Ordering::Relaxed)
    }

    /// Acquire calls served by this tetherd.
    pub fn acquires(&self) -> u64 {
        self.acquires.load(Ordering::Relaxed)
    }

    fn cell(&self, version: &str) -> Arc<OnceCell<Acquired>> {
        let mut map = self
            .versions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        map.entry(version.to_string()).or_default().clone()
    }

    /// Returns the pins of `version` (empty: the backend's own), adopting existing pins
    /// or loading them. Concurrent callers for one version share one adopt/load.
    pub async fn acquire(&self, version: &str) -> Result<AcquireReply, BackendError> {
        self.acquires.fetch_add(1, Ordering::Relaxed);
        let version = if version.is_empty() {
            self.backend.version()
        } else {
            version.to_string()
        };
        check_version(&version)?;
        let mut cell = self.cell(&version);
        if cell.get().is_some() {
            // A caller asks because it could not open the pins: they may be gone since
            // (the bpffs unmounted, or mounted again empty). Then they are had again.
            let (b, v) = (self.backend.clone(), version.clone());
            if let Some(a) = blocking("adopt", move || b.adopt(&v)).await? {
                return Ok(AcquireReply {
                    acquired: a,
                    loaded_now: false,
                });
            }
            log::warn!(
                "the pins of version {version} are gone (was the bpffs unmounted?): loading \
                 them again"
            );
            self.forget_cell(&version, &cell);
            cell = self.cell(&version);
        }
        let loaded_here = Arc::new(AtomicBool::new(false));
        let task = {
            let (backend, loads, loaded_here) = (
                self.backend.clone(),
                self.loads.clone(),
                loaded_here.clone(),
            );
            let cell = cell.clone();
            let version = version.clone();
            tokio::spawn(async move {
                cell.get_or_try_init(|| async {
                    let b = backend.clone();
                    let v = version.clone();
                    if let Some(a) = blocking("adopt", move || b.adopt(&v)).await? {
                        log::info!("adopted pins of version {version} at {}", a.pin_dir);
                        return Ok(a);
                    }
                    let v = version.clone();
                    let a = blocking("load", move || backend.load(&v)).await?;
                    loads.fetch_add(1, Ordering::Relaxed);
                    loaded_here.store(true, Ordering::Relaxed);
                    log::info!("loaded version {version}, pinned at {}", a.pin_dir);
                    Ok::<_, BackendError>(a)
                })
                .await
                .cloned()
            })
        };
        let result = task
            .await
            .unwrap_or(Err(BackendError::Crashed { call: "acquire" }));
        let acquired = match result {
            Ok(a) => a,
            Err(e) => {
                // A version that could not be had keeps no entry (callers may name any).
                self.forget_unset(&version);
                return Err(e);
            }
        };
        Ok(AcquireReply {
            acquired: acquired.clone(),
            loaded_now: loaded_here.load(Ordering::Relaxed),
        })
    }

    /// Drops the entry of `version` if it is still `cell` (another caller may have put a
    /// new one in its place).
    fn forget_cell(&self, version: &str, cell: &Arc<OnceCell<Acquired>>) {
        let mut map = self
            .versions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if map.get(version).is_some_and(|c| Arc::ptr_eq(c, cell)) {
            map.remove(version);
        }
    }

    /// Drops the entry of `version` unless it holds pins (another caller may have set it).
    fn forget_unset(&self, version: &str) {
        let mut map = self
            .versions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if map.get(version).is_some_and(|c| c.get().is_none()) {
            map.remove(version);
        }
    }

    /// At start-up: adopts the current version's pins if they exist, without loading.
    /// Returns whether pins were adopted.
    pub async fn adopt_current(&self) -> Result<bool, BackendError> {
        let version = self.backend.version();
        let backend = self.backend.clone();
        let v = version.clone();
        match blocking("adopt", move || backend.adopt(&v)).await? {
            Some(a) => {
                log::info!("adopted pins of version {version} at {}", a.pin_dir);
                // A concurrent Acquire may have filled the cell first; either is fine.
                let _ = self.cell(&version).set(a);
                Ok(true)
            }
            None => {
                log::info!("no pins of version {version} yet; loading on first Acquire");
                Ok(false)
            }
        }
    }

    /// Forgets versions whose pins were removed, so the next Acquire adopts or loads again.
    pub fn forget(&self, versions: &[String]) {
        let mut map = self
            .versions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for v in versions {
            map.remove(v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::testing::{FakeBackend, FAKE_VERSION};

    /// A caller that gives up while the load runs (its ttrpc deadline) does not cancel it:
    /// the next caller waits for the same load.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_load_outlives_the_call_that_started_it() {
        let fake = Arc::new(FakeBackend::new());
        let acq = Arc::new(Acquirer::new(fake.clone()));
        let gave_up =
            tokio::time::timeout(std::time::Duration::from_millis(1), acq.acquire("")).await;
        assert!(gave_up.is_err(), "the load takes longer than the deadline");
        let r = acq.acquire("").await.unwrap();
        assert_eq!(r.acquired.version, FAKE_VERSION);
        assert_eq!(fake.loads(), 1);
        assert_eq!(acq.loads(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fifty_concurrent_acquires_load_once() {
        let fake = Arc::new(FakeBackend::new());
        let acq = Arc::new(Acquirer::new(fake.clone()));
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let acq = acq.clone();
                tokio::spawn(async move { acq.acquire("").await })
            })
            .collect();
        let mut loaded_now = 0;
        for t in tasks {
            let r = t.await.unwrap().unwrap();
            assert_eq!(r.acquired.version, FAKE_VERSION);
            loaded_now += usize::from(r.loaded_now);
        }
        assert_eq!(fake.loads(), 1);
        assert_eq!(loaded_now, 1);
        assert_eq!(acq.loads(), 1);
        assert_eq!(acq.acquires(), 50);
    }

    /// Pins that went after they were had (the bpffs unmounted, or mounted again empty)
    /// are loaded again, once for any number of callers, not answered from memory.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pins_gone_since_are_loaded_again_once() {
        let fake = Arc::new(FakeBackend::new());
        let acq = Arc::new(Acquirer::new(fake.clone()));
        acq.acquire("").await.unwrap();
        assert!(!acq.acquire("").await.unwrap().loaded_now);
        fake.unpin(FAKE_VERSION);
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let acq = acq.clone();
                tokio::spawn(async move { acq.acquire("").await })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        assert_eq!(fake.loads(), 2);
        assert!(fake.adopt(FAKE_VERSION).unwrap().is_some());
    }

    #[tokio::test]
    async fn adopts_existing_pins_without_loading() {
        let fake = Arc::new(FakeBackend::new());
        fake.pin(FAKE_VERSION);
        let acq = Acquirer::new(fake.clone());
        assert!(acq.adopt_current().await.unwrap());
        let r = acq.acquire(FAKE_VERSION).await.unwrap();
        assert!(!r.loaded_now);
        assert_eq!(fake.loads(), 0);
    }

    #[tokio::test]
    async fn versions_that_cannot_be_had_leave_no_entry() {
        let acq = Acquirer::new(Arc::new(FakeBackend::new()));
        for i in 0..100 {
            assert!(matches!(
                acq.acquire(&format!("other-{i}")).await,
                Err(BackendError::NotFound(_))
            ));
        }
        acq.acquire("").await.unwrap();
        let known: Vec<String> = acq.versions.lock().unwrap().keys().cloned().collect();
        assert_eq!(known, [FAKE_VERSION]);
    }

    #[tokio::test]
    async fn rejects_path_like_versions() {
        let acq = Acquirer::new(Arc::new(FakeBackend::new()));
        for bad in [
            "..",
            "a/b",
            "x y",
            "containers",
            "staging-0123456789abcdef-1",
        ] {
            assert!(matches!(
                acq.acquire(bad).await,
                Err(BackendError::BadVersion(_))
            ));
        }
    }
}
