//! The `tether.broker.v1.Broker` ttrpc service: authorizes each request, calls the
//! backend off the async threads and encodes the answer. Holds no state of its own
//! besides what Status reports.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use tether_proto as pb;
use ttrpc::asynchronous::TtrpcContext;

use crate::acquire::{blocking, Acquirer};
use crate::backend::Backend;
use crate::error::BackendError;
use crate::gc;
use crate::peer::authorize;
use crate::types::{ContainerStatsInfo, StatusInfo};

/// What Status reports about tetherd's configuration.
#[derive(Debug, Clone)]
pub struct ServiceInfo {
    pub pin_root: PathBuf,
    pub audit_log: PathBuf,
    pub metrics: String,
    pub allowed_uids: Vec<u32>,
}

/// The Broker service over one backend.
pub struct BrokerService {
    backend: Arc<dyn Backend>,
    acquirer: Arc<Acquirer>,
    info: ServiceInfo,
    started: Instant,
}

impl BrokerService {
    pub fn new(backend: Arc<dyn Backend>, acquirer: Arc<Acquirer>, info: ServiceInfo) -> Self {
        BrokerService {
            backend,
            acquirer,
            info,
            started: Instant::now(),
        }
    }

    async fn call<T, F>(&self, call: &'static str, f: F) -> ttrpc::Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&dyn Backend) -> Result<T, BackendError> + Send + 'static,
    {
        let backend = self.backend.clone();
        blocking(call, move || f(backend.as_ref()))
            .await
            .map_err(|e| failed(call, e))
    }
}

/// Logs a failed request once, here where it is answered, and encodes it.
fn failed(method: &str, e: BackendError) -> ttrpc::Error {
    log::warn!("{method}: {e}");
    e.to_ttrpc()
}

/// The stats of container `id` (exact id, or a unique prefix of one).
fn select_stats(
    all: Vec<ContainerStatsInfo>,
    id: &str,
) -> Result<Vec<ContainerStatsInfo>, BackendError> {
    if id.is_empty() {
        return Ok(all);
    }
    if let Some(s) = all.iter().find(|s| s.id == id) {
        return Ok(vec![s.clone()]);
    }
    let matches: Vec<_> = all.into_iter().filter(|s| s.id.starts_with(id)).collect();
    if matches.len() == 1 {
        Ok(matches)
    } else {
        Err(BackendError::NotFound(format!("container {id:?}")))
    }
}

#[async_trait]
impl pb::Broker for BrokerService {
    async fn acquire(
        &self,
        ctx: &TtrpcContext,
        req: pb::AcquireRequest,
    ) -> ttrpc::Result<pb::AcquireResponse> {
        let peer = authorize(ctx, &self.info.allowed_uids)?;
        log::debug!("Acquire {:?} from pid {}", req.version, peer.pid);
        let reply = self
            .acquirer
            .acquire(&req.version)
            .await
            .map_err(|e| failed("Acquire", e))?;
        Ok(reply.into())
    }

    async fn status(
        &self,
        ctx: &TtrpcContext,
        _req: pb::StatusRequest,
    ) -> ttrpc::Result<pb::StatusResponse> {
        authorize(ctx, &self.info.allowed_uids)?;
        let (versions, version, cookie_mode) = self
            .call("Status", |b| {
                Ok((b.versions()?, b.version(), b.netns_cookie_mode()))
            })
            .await?;
        let status = StatusInfo {
            version,
            pin_root: self.info.pin_root.display().to_string(),
            versions,
            loads: self.acquirer.loads(),
            acquires: self.acquirer.acquires(),
            pid: std::process::id(),
            uptime_seconds: self.started.elapsed().as_secs(),
            audit_log: self.info.audit_log.display().to_string(),
            metrics: self.info.metrics.clone(),
            netns_cookie_mode: cookie_mode,
        };
        Ok(status.into())
    }

    async fn list_containers(
        &self,
        ctx: &TtrpcContext,
        _req: pb::ListContainersRequest,
    ) -> ttrpc::Result<pb::ListContainersResponse> {
        authorize(ctx, &self.info.allowed_uids)?;
        let containers = self.call("ListContainers", |b| b.containers()).await?;
        Ok(pb::ListContainersResponse {
            containers: containers.into_iter().map(Into::into).collect(),
            ..Default::default()
        })
    }

    async fn stats(
        &self,
        ctx: &TtrpcContext,
        req: pb::StatsRequest,
    ) -> ttrpc::Result<pb::StatsResponse> {
        authorize(ctx, &self.info.allowed_uids)?;
        let id = req.id;
        let stats = self
            .call("Stats", move |b| select_stats(b.stats()?, &id))
            .await?;
        Ok(pb::StatsResponse {
            stats: stats.into_iter().map(Into::into).collect(),
            ..Default::default()
        })
    }

    async fn garbage_collect(
        &self,
        ctx: &TtrpcContext,
        req: pb::GarbageCollectRequest,
    ) -> ttrpc::Result<pb::GarbageCollectResponse> {
        authorize(ctx, &self.info.allowed_uids)?;
        let report = gc::collect(&self.backend, &self.acquirer, req.dry_run)
            .await
            .map_err(|e| failed("GarbageCollect", e))?;
        Ok(report.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_selection_by_id_or_unique_prefix() {
        let s = |id: &str| ContainerStatsInfo {
            id: id.into(),
            ..Default::default()
        };
        let all = vec![s("abc1"), s("abc2"), s("def")];
        assert_eq!(select_stats(all.clone(), "").unwrap().len(), 3);
        assert_eq!(select_stats(all.clone(), "def").unwrap()[0].id, "def");
        assert_eq!(select_stats(all.clone(), "abc2").unwrap()[0].id, "abc2");
        assert_eq!(select_stats(all.clone(), "d").unwrap()[0].id, "def");
        let e = select_stats(all.clone(), "abc").unwrap_err();
        assert_eq!(e.code(), ttrpc::Code::NOT_FOUND);
        let e = select_stats(all, "zzz").unwrap_err();
        assert!(e.to_string().contains("zzz"));
    }
}
