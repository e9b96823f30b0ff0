//! The `tether.broker.v1.Broker` ttrpc service: authorizes each request, calls the
//! backend off the async threads and encodes the answer. Holds no state of its own
//! besides what Status reports and the retired containers' final counters (`retired`),
//! which Stats lists after the live ones.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use tether_api::pb;
use tether_api::types::{ContainerStatsInfo, StatusInfo};
use ttrpc::asynchronous::TtrpcContext;

use crate::acquire::{blocking, Acquirer};
use crate::backend::Backend;
use crate::error::BackendError;
use crate::gc;
use crate::peer::authorize;
use crate::retired::Retired;

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
    /// Deleted containers' final counters, from Retire.
    retired: Mutex<Retired>,
}

impl BrokerService {
    pub fn new(backend: Arc<dyn Backend>, acquirer: Arc<Acquirer>, info: ServiceInfo) -> Self {
        BrokerService {
            backend,
            acquirer,
            info,
            started: Instant::now(),
            retired: Mutex::new(Retired::default()),
        }
    }

    /// The retired containers; a panic while holding the lock cannot leave `Retired`
    /// half-updated in a way that matters, so a poisoned lock is used as is.
    fn retired(&self) -> MutexGuard<'_, Retired> {
        self.retired
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
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

/// The stats Stats answers from the `live` (backend) and `retired` containers: all of
/// them, live first, if `id` is empty; else the one container with id `id`, or whose id
/// `id` is a unique prefix of. A live container wins over a retired one with the same
/// id (containerd lets a deleted container's id be used again).
fn select_stats(
    live: Vec<ContainerStatsInfo>,
    retired: Vec<ContainerStatsInfo>,
    id: &str,
) -> Result<Vec<ContainerStatsInfo>, BackendError> {
    let mut all = live;
    all.extend(retired);
    if id.is_empty() {
        return Ok(all);
    }
    // `all` holds the live containers first, so the first entry with an id is the one
    // to answer. A prefix is unique if it names one id, even if a live container and a
    // retired one both carry it.
    let pos = all.iter().position(|s| s.id == id).or_else(|| {
        let first = all.iter().position(|s| s.id.starts_with(id))?;
        let unique = all[first..]
            .iter()
            .filter(|s| s.id.starts_with(id))
            .all(|s| s.id == all[first].id);
        unique.then_some(first)
    });
    match pos {
        Some(i) => Ok(vec![all.swap_remove(i)]),
        None => {
            let mut matches: Vec<&str> = all
                .iter()
                .filter(|s| s.id.starts_with(id))
                .map(|s| s.id.as_str())
                .collect();
            matches.sort_unstable();
            matches.dedup();
            if matches.is_empty() {
                Err(BackendError::NotFound(format!("container {id:?}")))
            } else {
                Err(BackendError::Ambiguous {
                    prefix: id.to_string(),
                    matches: matches.len(),
                })
            }
        }
    }
}

/// The checked stats of a Retire request: present, with an id and a namespace.
fn retire_stats(req: pb::RetireRequest) -> Result<ContainerStatsInfo, BackendError> {
    let invalid = |field, reason| BackendError::InvalidRequest { field, reason };
    let stats: ContainerStatsInfo = req
        .stats
        .into_option()
        .ok_or(invalid("stats", "is missing"))?
        .into();
    if stats.id.is_empty() {
        return Err(invalid("stats.id", "is empty"));
    }
    if stats.namespace.is_empty() {
        return Err(invalid("stats.namespace", "is empty"));
    }
    Ok(stats)
}

/// Wall-clock nanoseconds since the epoch (0 if the clock is before it).
fn unix_now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
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
        let live = self.call("Stats", |b| b.stats()).await?;
        // Listed after the backend answered, so a container retired meanwhile shows up at
        // least once (it may then show up twice: live and retired, the latter marked).
        let retired = self.retired().list(Instant::now());
        let stats = select_stats(live, retired, &id).map_err(|e| failed("Stats", e))?;
        Ok(pb::StatsResponse {
            stats: stats.into_iter().map(Into::into).collect(),
            ..Default::default()
        })
    }

    async fn retire(
        &self,
        ctx: &TtrpcContext,
        req: pb::RetireRequest,
    ) -> ttrpc::Result<pb::RetireResponse> {
        let peer = authorize(ctx, &self.info.allowed_uids)?;
        let stats = retire_stats(req).map_err(|e| failed("Retire", e))?;
        log::debug!(
            "Retire {}/{} from pid {}",
            stats.namespace,
            stats.id,
            peer.pid
        );
        // `now` is read under the lock so that retirements are stored in time order.
        let mut retired = self.retired();
        retired.insert(stats, Instant::now(), unix_now_ns());
        Ok(pb::RetireResponse::default())
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
    use crate::backend::testing::FakeBackend;
    use crate::peer::{context_of, Peer};
    use pb::Broker as _;

    fn s(id: &str) -> ContainerStatsInfo {
        ContainerStatsInfo {
            id: id.into(),
            namespace: "default".into(),
            ..Default::default()
        }
    }

    fn retired(id: &str) -> ContainerStatsInfo {
        ContainerStatsInfo {
            deleted: true,
            deleted_at_unix_ns: 1,
            ..s(id)
        }
    }

    #[test]
    fn stats_selection_by_id_or_unique_prefix() {
        let all = vec![s("abc1"), s("abc2"), s("def")];
        let sel = |id| select_stats(all.clone(), Vec::new(), id);
        assert_eq!(sel("").unwrap().len(), 3);
        assert_eq!(sel("def").unwrap()[0].id, "def");
        assert_eq!(sel("abc2").unwrap()[0].id, "abc2");
        assert_eq!(sel("d").unwrap()[0].id, "def");
        let e = sel("abc").unwrap_err();
        assert_eq!(e.code(), ttrpc::Code::INVALID_ARGUMENT);
        let e = sel("zzz").unwrap_err();
        assert_eq!(e.code(), ttrpc::Code::NOT_FOUND);
        assert!(e.to_string().contains("zzz"));
    }

    #[test]
    fn stats_selection_with_retired() {
        let live = vec![s("abc1"), s("reused")];
        let gone = vec![retired("abc2"), retired("old9"), retired("reused")];
        let sel = |id| select_stats(live.clone(), gone.clone(), id);
        // All: live first, then retired, in the order given.
        let ids: Vec<_> = sel("")
            .unwrap()
            .into_iter()
            .map(|s| (s.id, s.deleted))
            .collect();
        assert_eq!(
            ids,
            [
                ("abc1".to_string(), false),
                ("reused".to_string(), false),
                ("abc2".to_string(), true),
                ("old9".to_string(), true),
                ("reused".to_string(), true),
            ]
        );
        // Exact and unique-prefix matches reach retired containers.
        let one = sel("abc2").unwrap();
        assert_eq!(
            (one.len(), one[0].id.as_str(), one[0].deleted),
            (1, "abc2", true)
        );
        assert_eq!(sel("old").unwrap()[0].id, "old9");
        // A prefix shared by a live and a retired container is ambiguous.
        let err = sel("abc").unwrap_err();
        assert_eq!(err.code(), ttrpc::Code::INVALID_ARGUMENT);
        assert!(err.to_string().contains("matches 2 containers"), "{err}");
        assert_eq!(sel("zzz").unwrap_err().code(), ttrpc::Code::NOT_FOUND);
        // An exact live match wins over a retired one, by id and by unique prefix.
        for id in ["reused", "reu"] {
            let one = sel(id).unwrap();
            assert_eq!(one.len(), 1, "{id}");
            assert_eq!(
                (one[0].id.as_str(), one[0].deleted),
                ("reused", false),
                "{id}"
            );
        }
        // An exact match wins over a longer id it is a prefix of.
        let one = select_stats(vec![s("ab12")], vec![retired("ab")], "ab").unwrap();
        assert_eq!((one[0].id.as_str(), one[0].deleted), ("ab", true));
        // With no live container of that id, the retired one answers.
        let one = select_stats(Vec::new(), gone.clone(), "reused").unwrap();
        assert!(one[0].deleted);
    }

    #[test]
    fn retire_request_is_checked() {
        let req = |stats: Option<ContainerStatsInfo>| pb::RetireRequest {
            stats: stats.map(Into::into).into(),
            ..Default::default()
        };
        let err = |r| match retire_stats(r) {
            Err(e) => (e.code(), e.to_string()),
            Ok(s) => panic!("accepted {s:?}"),
        };
        let bad = ttrpc::Code::INVALID_ARGUMENT;
        assert_eq!(
            err(req(None)),
            (bad, "invalid request: stats is missing".to_string())
        );
        assert_eq!(
            err(req(Some(s("")))),
            (bad, "invalid request: stats.id is empty".to_string())
        );
        let no_ns = ContainerStatsInfo {
            namespace: String::new(),
            ..s("abc")
        };
        assert_eq!(
            err(req(Some(no_ns))),
            (bad, "invalid request: stats.namespace is empty".to_string())
        );
        let ok = retire_stats(req(Some(s("abc")))).unwrap();
        assert_eq!((ok.id.as_str(), ok.namespace.as_str()), ("abc", "default"));
    }

    fn status_code<T: std::fmt::Debug>(r: ttrpc::Result<T>) -> ttrpc::Code {
        match r {
            Err(ttrpc::Error::RpcStatus(s)) => s.code(),
            other => panic!("expected a status, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn retire_is_authorized_then_listed_after_live() {
        let backend = Arc::new(FakeBackend::new());
        *backend.stats.lock().unwrap() = vec![s("live1")];
        let acquirer = Arc::new(Acquirer::new(backend.clone()));
        let svc = BrokerService::new(
            backend,
            acquirer,
            ServiceInfo {
                pin_root: PathBuf::from("/fake/bpf"),
                audit_log: PathBuf::from("/fake/audit.jsonl"),
                metrics: "off".into(),
                allowed_uids: vec![1000],
            },
        );
        let retire = || pb::RetireRequest {
            stats: protobuf::MessageField::some(s("gone1").into()),
            ..Default::default()
        };
        let ids = |r: pb::StatsResponse| -> Vec<(String, bool)> {
            r.stats.into_iter().map(|s| (s.id, s.deleted)).collect()
        };
        let root = context_of(Peer { uid: 0, pid: 1 });

        let nobody = context_of(Peer { uid: 65534, pid: 2 });
        let denied = svc.retire(&nobody, retire()).await;
        assert_eq!(status_code(denied), ttrpc::Code::PERMISSION_DENIED);
        let all = svc.stats(&root, pb::StatsRequest::default()).await.unwrap();
        assert_eq!(ids(all), [("live1".to_string(), false)]);

        let allowed = context_of(Peer { uid: 1000, pid: 3 });
        svc.retire(&allowed, retire()).await.unwrap();
        let all = svc.stats(&root, pb::StatsRequest::default()).await.unwrap();
        assert_eq!(
            ids(all),
            [("live1".to_string(), false), ("gone1".to_string(), true)]
        );

        let empty_id = pb::RetireRequest {
            stats: protobuf::MessageField::some(s("").into()),
            ..Default::default()
        };
        let bad = svc.retire(&root, empty_id).await;
        assert_eq!(status_code(bad), ttrpc::Code::INVALID_ARGUMENT);
    }
}
