//! The broker client, used by tetherctl and the shim: connects to tetherd's socket
//! (spawning tetherd on demand), and wraps each RPC in a typed method with a deadline.
//! The only place that spawns tetherd.

use std::fs::OpenOptions;
use std::future::Future;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use tokio::net::UnixStream;
use tokio::time::Instant;
use ttrpc::asynchronous::transport::Socket;

use crate::error::ClientError;
use crate::paths::{create_socket_dir, socket_dir, tetherd_log};
use crate::pb;
use crate::types::{AcquireReply, ContainerInfo, ContainerStatsInfo, GcReport, StatusInfo};

/// Per-call deadline unless set with [`Client::with_timeout`].
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection to tetherd.
#[derive(Clone)]
pub struct Client {
    inner: pb::BrokerClient,
    timeout: Duration,
}

fn is_absent(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOENT) | Some(libc::ECONNREFUSED)
    )
}

async fn connect_once(socket: &Path) -> io::Result<Client> {
    let stream = UnixStream::connect(socket).await?;
    let inner = ttrpc::asynchronous::Client::new(Socket::from(stream));
    Ok(Client {
        inner: pb::BrokerClient::new(inner),
        timeout: DEFAULT_TIMEOUT,
    })
}

/// Starts `tetherd --socket <socket> [--config <config>]` in its own session, stdin
/// from /dev/null, stdout and stderr appended to `<socket dir>/tetherd.log`.
///
/// The child is not double-forked: from a subreaper (the shim) a grandchild would be
/// reparented back to the spawner anyway. Instead a detached thread waits for it, so it
/// never lingers as a zombie while the spawner lives; if the spawner exits first, the
/// child is reparented and reaped by init (or the nearest subreaper).
fn spawn_tetherd(tetherd: &Path, socket: &Path, config: Option<&Path>) -> Result<(), ClientError> {
    let spawn_err = |source| ClientError::Spawn {
        path: tetherd.to_path_buf(),
        source,
    };
    let dir = socket_dir(socket);
    create_socket_dir(&dir).map_err(spawn_err)?;
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(tetherd_log(socket))
        .map_err(spawn_err)?;
    let log2 = log.try_clone().map_err(spawn_err)?;
    let mut cmd = Command::new(tetherd);
    cmd.arg("--socket").arg(socket);
    if let Some(c) = config {
        cmd.arg("--config").arg(c);
    }
    cmd.stdin(Stdio::null()).stdout(log).stderr(log2);
    // SAFETY: the closure runs in the forked child before exec and only calls setsid(2) and
    // setpriority(2), which are async-signal-safe and touch no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid().map_err(io::Error::from)?;
            // The daemon outlives its caller at the default priority, whatever the calling
            // thread's (a shim raises its own for the attach step). The result is ignored:
            // an unprivileged caller cannot lower a raised nice value, and runs as it is.
            libc::setpriority(libc::PRIO_PROCESS, 0, 0);
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(spawn_err)?;
    log::debug!("spawned {} (pid {})", tetherd.display(), child.id());
    // If the thread cannot be started the child is reaped by whoever inherits it.
    let _ = std::thread::Builder::new()
        .name("tetherd-reaper".into())
        .spawn(move || child.wait());
    Ok(())
}

impl Client {
    /// Connects to tetherd at `socket`, retrying while the socket is absent or refuses
    /// (tetherd starting up) until `deadline` has passed.
    pub async fn connect(socket: &Path, deadline: Duration) -> Result<Client, ClientError> {
        Self::connect_inner(socket, deadline, None).await
    }

    /// Connects to a tetherd that serves `socket` now: one attempt, no wait for a tetherd
    /// that is starting. For callers to whom tetherd is optional (a deleted container's
    /// final counters): a dead tetherd, its socket file left behind, is an immediate error.
    pub async fn connect_serving(socket: &Path, deadline: Duration) -> Result<Client, ClientError> {
        let connect_err = |source| ClientError::Connect {
            socket: socket.to_path_buf(),
            source,
        };
        match tokio::time::timeout(deadline, connect_once(socket)).await {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => Err(connect_err(e)),
            Err(_) => Err(connect_err(io::Error::from(io::ErrorKind::TimedOut))),
        }
    }

    /// Connects to tetherd at `socket`; if nobody serves it, spawns `tetherd` (with
    /// `config` if given) and retries with backoff until `deadline`. Many callers may do
    /// this at once: tetherd's instance lock lets one of the spawned daemons serve and
    /// the others exit.
    pub async fn connect_or_spawn(
        socket: &Path,
        tetherd: &Path,
        config: Option<&Path>,
        deadline: Duration,
    ) -> Result<Client, ClientError> {
        Self::connect_inner(socket, deadline, Some((tetherd, config))).await
    }

    async fn connect_inner(
        socket: &Path,
        deadline: Duration,
        spawn: Option<(&Path, Option<&Path>)>,
    ) -> Result<Client, ClientError> {
        let end = Instant::now() + deadline;
        let mut backoff = Duration::from_millis(10);
        let mut spawned = false;
        loop {
            let attempt = tokio::time::timeout_at(end, connect_once(socket)).await;
            let err = match attempt {
                Ok(Ok(c)) => return Ok(c),
                Ok(Err(e)) if is_absent(&e) => e,
                Ok(Err(source)) => {
                    return Err(ClientError::Connect {
                        socket: socket.to_path_buf(),
                        source,
                    })
                }
                Err(_) => io::Error::from(io::ErrorKind::TimedOut),
            };
            if let (Some((tetherd, config)), false) = (spawn, spawned) {
                spawn_tetherd(tetherd, socket, config)?;
                spawned = true;
            }
            let now = Instant::now();
            if now >= end {
                if spawned {
                    return Err(ClientError::NotServing {
                        socket: socket.to_path_buf(),
                        log: tetherd_log(socket),
                        after: deadline,
                        source: err,
                    });
                }
                return Err(ClientError::Connect {
                    socket: socket.to_path_buf(),
                    source: err,
                });
            }
            tokio::time::sleep_until((now + backoff).min(end)).await;
            backoff = (backoff * 2).min(Duration::from_millis(200));
        }
    }

    /// Sets the deadline of each later call.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    async fn rpc<T, Fut>(&self, method: &'static str, f: Fut) -> Result<T, ClientError>
    where
        Fut: Future<Output = ttrpc::Result<T>>,
    {
        match tokio::time::timeout(self.timeout, f).await {
            Err(_) => Err(ClientError::Deadline {
                what: method.to_string(),
                after: self.timeout,
            }),
            Ok(Ok(r)) => Ok(r),
            Ok(Err(ttrpc::Error::RpcStatus(s))) if s.code() == ttrpc::Code::DEADLINE_EXCEEDED => {
                Err(ClientError::Deadline {
                    what: method.to_string(),
                    after: self.timeout,
                })
            }
            Ok(Err(ttrpc::Error::RpcStatus(s))) => Err(ClientError::Rpc {
                method,
                code: s.code(),
                message: s.message,
            }),
            Ok(Err(source)) => Err(ClientError::Transport { method, source }),
        }
    }

    fn ctx(&self) -> ttrpc::context::Context {
        ttrpc::context::with_timeout(i64::try_from(self.timeout.as_nanos()).unwrap_or(i64::MAX))
    }

    /// Pins of `version` (empty: tetherd's own), loading them if needed.
    pub async fn acquire(&self, version: &str) -> Result<AcquireReply, ClientError> {
        let req = pb::AcquireRequest {
            version: version.to_string(),
            ..Default::default()
        };
        let r = self
            .rpc("Acquire", self.inner.acquire(self.ctx(), &req))
            .await?;
        Ok(r.into())
    }

    pub async fn status(&self) -> Result<StatusInfo, ClientError> {
        let req = pb::StatusRequest::default();
        let r = self
            .rpc("Status", self.inner.status(self.ctx(), &req))
            .await?;
        Ok(r.into())
    }

    pub async fn containers(&self) -> Result<Vec<ContainerInfo>, ClientError> {
        let req = pb::ListContainersRequest::default();
        let r = self
            .rpc(
                "ListContainers",
                self.inner.list_containers(self.ctx(), &req),
            )
            .await?;
        Ok(r.containers.into_iter().map(Into::into).collect())
    }

    /// Stats of container `id` (a unique prefix works), or of all if `id` is `None`.
    pub async fn stats(&self, id: Option<&str>) -> Result<Vec<ContainerStatsInfo>, ClientError> {
        let req = pb::StatsRequest {
            id: id.unwrap_or_default().to_string(),
            ..Default::default()
        };
        let r = self
            .rpc("Stats", self.inner.stats(self.ctx(), &req))
            .await?;
        Ok(r.stats.into_iter().map(Into::into).collect())
    }

    /// Reports the final counters of a deleted container, after everything of it was
    /// detached; tetherd keeps them for a while and Stats lists them as deleted.
    /// `stats.id` and `stats.namespace` must be set (else INVALID_ARGUMENT); `deleted`
    /// and `deleted_at_unix_ns` are set by tetherd.
    pub async fn retire(&self, stats: ContainerStatsInfo) -> Result<(), ClientError> {
        let req = pb::RetireRequest {
            stats: protobuf::MessageField::some(stats.into()),
            ..Default::default()
        };
        self.rpc("Retire", self.inner.retire(self.ctx(), &req))
            .await?;
        Ok(())
    }

    pub async fn gc(&self, dry_run: bool) -> Result<GcReport, ClientError> {
        let req = pb::GarbageCollectRequest {
            dry_run,
            ..Default::default()
        };
        let r = self
            .rpc(
                "GarbageCollect",
                self.inner.garbage_collect(self.ctx(), &req),
            )
            .await?;
        Ok(r.into())
    }
}
