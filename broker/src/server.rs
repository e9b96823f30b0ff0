//! tetherd's serving loop: takes the instance lock, binds the socket, adopts existing pins,
//! starts the ttrpc server, the metrics responder, the audit thread and the periodic
//! garbage collection, and tears them down (removing the sockets) when the shutdown
//! future completes.

use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use ttrpc::asynchronous::transport::Listener;
use ttrpc::asynchronous::Server;

use crate::acquire::Acquirer;
use crate::audit::{self, AuditTarget};
use crate::backend::Backend;
use crate::config::Config;
use crate::error::Error;
use crate::gc;
use crate::instance;
use crate::metrics::MetricsListener;
use crate::peer::PeerCredHook;
use crate::service::{BrokerService, ServiceInfo};

fn remove_socket(path: &Path) {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => log::warn!("remove {}: {e}", path.display()),
    }
}

/// Serves the broker API for `backend` as configured until `shutdown` completes.
///
/// Returns `Error::AlreadyRunning` without touching the socket if another tetherd holds
/// the instance lock. A bad request (garbage, oversized frame) closes only its
/// connection.
pub async fn serve<F>(config: &Config, backend: Arc<dyn Backend>, shutdown: F) -> Result<(), Error>
where
    F: Future<Output = ()>,
{
    let reach = instance::Reach::for_allowed(&config.allowed_uids);
    let lock = instance::lock_for(&config.socket, reach)?;
    let std_listener = instance::bind_socket(&config.socket, &lock, reach)?;
    let result = run(config, backend, std_listener, shutdown).await;
    remove_socket(&config.socket);
    drop(lock);
    result
}

async fn run<F>(
    config: &Config,
    backend: Arc<dyn Backend>,
    std_listener: std::os::unix::net::UnixListener,
    shutdown: F,
) -> Result<(), Error>
where
    F: Future<Output = ()>,
{
    let acquirer = Arc::new(Acquirer::new(backend.clone()));
    if let Err(e) = acquirer.adopt_current().await {
        // Not fatal: the first Acquire adopts or loads again and reports the error.
        log::warn!("adopt existing pins: {e}");
    }

    let target = AuditTarget {
        path: config.audit_log.clone(),
        max_bytes: config.audit_max_bytes,
        keep: config.audit_keep,
    };
    let stop_audit = Arc::new(AtomicBool::new(false));
    let audit_thread =
        audit::spawn(backend.clone(), target, stop_audit.clone()).map_err(|source| Error::Io {
            what: "start audit thread for",
            path: config.audit_log.clone(),
            source,
        })?;

    // Everything from here to the shutdown may fail; the cleanup below runs either way, so
    // a failed start leaves no audit thread, metrics task or metrics socket behind.
    let mut metrics_socket = None;
    let mut metrics_task = None;
    let mut gc_task = None;
    let served = async {
        let metrics = MetricsListener::bind(&config.metrics).await?;
        metrics_socket = metrics.as_ref().and_then(MetricsListener::unix_path);
        metrics_task = metrics.map(|m| tokio::spawn(m.serve(backend.clone(), acquirer.clone())));

        let for_gc = (backend.clone(), acquirer.clone());
        let service = BrokerService::new(
            backend,
            acquirer,
            ServiceInfo {
                pin_root: config.pin_root.clone(),
                audit_log: config.audit_log.clone(),
                metrics: config.metrics.to_string(),
                allowed_uids: config.allowed_uids.clone(),
            },
        );
        let listener = Listener::try_from(std_listener).map_err(|source| Error::Io {
            what: "register socket",
            path: config.socket.clone(),
            source,
        })?;
        let mut server = Server::new()
            .add_listener(listener)
            .set_accept_hook(PeerCredHook)
            .register_service(tether_api::pb::create_broker(Arc::new(service)));
        server.start().await.map_err(Error::Ttrpc)?;
        gc_task = config
            .gc_interval
            .map(|every| tokio::spawn(gc::periodic(for_gc.0, for_gc.1, every)));
        log::info!(
            "serving on {} (metrics {}, audit log {}, garbage collection {})",
            config.socket.display(),
            config.metrics,
            config.audit_log.display(),
            match config.gc_interval {
                Some(every) => format!("every {}s", every.as_secs()),
                None => "off".into(),
            }
        );

        shutdown.await;
        log::info!("shutting down");
        let _ = server.shutdown().await;
        Ok::<(), Error>(())
    }
    .await;

    if let Some(t) = gc_task {
        t.abort();
    }
    if let Some(t) = metrics_task {
        t.abort();
    }
    if let Some(p) = metrics_socket {
        remove_socket(&p);
    }
    stop_audit.store(true, Ordering::Relaxed);
    if tokio::task::spawn_blocking(move || audit_thread.join())
        .await
        .is_err()
    {
        log::warn!("audit thread did not stop cleanly");
    }
    served
}
