//! tetherd's garbage collection: one collection (for the GarbageCollect call and for the
//! periodic timer), which also makes the acquirer forget removed versions, and the timer
//! that runs it every `gc_interval`.

use std::sync::Arc;
use std::time::Duration;

use tether_api::types::GcReport;

use crate::acquire::{blocking, Acquirer};
use crate::backend::Backend;
use crate::error::BackendError;

/// One collection at a time: the timer and a GarbageCollect call would otherwise race to
/// unlink the same pins (and one of them fail on the other's ENOENT).
static RUNNING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Collects once: entries of containers whose cgroup is gone, and unused versions.
pub async fn collect(
    backend: &Arc<dyn Backend>,
    acquirer: &Acquirer,
    dry_run: bool,
) -> Result<GcReport, BackendError> {
    let _one = RUNNING.lock().await;
    let b = backend.clone();
    let report = blocking("GarbageCollect", move || b.gc(dry_run)).await?;
    if !dry_run {
        acquirer.forget(&report.removed_versions);
        let removed = !report.removed_containers.is_empty()
            || !report.removed_versions.is_empty()
            || report.removed_map_entries > 0;
        if removed {
            log::info!(
                "garbage collected {} containers ({}), {} versions, {} map entries",
                report.removed_containers.len(),
                report.removed_containers.join(" "),
                report.removed_versions.len(),
                report.removed_map_entries
            );
        }
    }
    Ok(report)
}

/// Collects every `every`, the first time one interval after start-up. Runs until the
/// task is aborted; a failed collection is logged and retried at the next tick.
pub async fn periodic(backend: Arc<dyn Backend>, acquirer: Arc<Acquirer>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // An interval's first tick completes at once.
    tick.tick().await;
    loop {
        tick.tick().await;
        if let Err(e) = collect(&backend, &acquirer, false).await {
            log::warn!("periodic garbage collection: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::testing::FakeBackend;
    use tether_api::types::ContainerInfo;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn periodic_collects_stale_containers() {
        let fake = Arc::new(FakeBackend::new());
        *fake.containers.lock().unwrap() = vec![ContainerInfo {
            id: "gone".into(),
            stale: true,
            ..Default::default()
        }];
        let backend: Arc<dyn Backend> = fake.clone();
        let acquirer = Arc::new(Acquirer::new(backend.clone()));
        let task = tokio::spawn(periodic(backend, acquirer, Duration::from_millis(50)));
        let end = tokio::time::Instant::now() + Duration::from_secs(10);
        while !fake.containers.lock().unwrap().is_empty() {
            assert!(
                tokio::time::Instant::now() < end,
                "no collection within 10 s"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        task.abort();
    }
}
