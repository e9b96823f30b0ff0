//! Component test: tetherd's server in-process on a temporary socket over `FakeBackend`.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tether_api::types::{AuditEvent, ContainerInfo, ContainerStatsInfo, Counters};
use tether_api::{Client, ClientError};
use tether_broker::backend::testing::{FakeBackend, FAKE_VERSION};
use tether_broker::config::{Config, MetricsAddr};
use tether_broker::{server, Backend, Error};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

const DEADLINE: Duration = Duration::from_secs(10);

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) -> Result<()> {
    let end = Instant::now() + DEADLINE;
    while !cond() {
        if Instant::now() > end {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

fn fake() -> Arc<FakeBackend> {
    let f = FakeBackend::new();
    *f.containers.lock().unwrap() = vec![ContainerInfo {
        id: "0123456789abcdef".into(),
        namespace: "default".into(),
        cgroup_id: 99,
        version: FAKE_VERSION.into(),
        ..Default::default()
    }];
    *f.stats.lock().unwrap() = vec![ContainerStatsInfo {
        id: "0123456789abcdef".into(),
        namespace: "default".into(),
        cgroup_id: 99,
        total: Counters {
            rx_packets: 5,
            rx_bytes: 500,
            ..Default::default()
        },
        ..Default::default()
    }];
    Arc::new(f)
}

fn config(dir: &Path) -> Config {
    Config {
        socket: dir.join("run/tetherd.sock"),
        pin_root: dir.join("bpf"),
        audit_log: dir.join("log/audit.jsonl"),
        metrics: MetricsAddr::Unix(dir.join("run/metrics.sock")),
        allowed_uids: vec![nix::unistd::getuid().as_raw()],
        ..Config::default()
    }
}

/// Sends raw bytes on a fresh connection and returns it (still open).
async fn raw(socket: &Path, bytes: &[u8]) -> Result<UnixStream> {
    let mut s = UnixStream::connect(socket).await?;
    s.write_all(bytes).await?;
    Ok(s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_and_bad_frames() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let cfg = config(dir.path());
    let backend = fake();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let dyn_backend: Arc<dyn Backend> = backend.clone();
    let server_cfg = cfg.clone();
    let server = tokio::spawn(async move {
        server::serve(&server_cfg, dyn_backend, async {
            let _ = stop_rx.await;
        })
        .await
    });

    let client = Client::connect(&cfg.socket, DEADLINE).await?;

    // Acquire: the first call loads, concurrent and later ones do not.
    let first = client.acquire("").await?;
    assert_eq!(first.acquired.version, FAKE_VERSION);
    assert!(first.loaded_now);
    let many: Vec<_> = (0..20)
        .map(|_| {
            let socket = cfg.socket.clone();
            tokio::spawn(async move {
                let c = Client::connect(&socket, DEADLINE).await?;
                c.acquire(FAKE_VERSION).await
            })
        })
        .collect();
    for t in many {
        assert!(!t.await??.loaded_now);
    }
    assert_eq!(backend.loads(), 1);

    // Status.
    let st = client.status().await?;
    assert_eq!(st.version, FAKE_VERSION);
    assert_eq!((st.loads, st.acquires), (1, 21));
    assert_eq!(st.pid, std::process::id());
    assert_eq!(st.versions.len(), 1);
    assert_eq!(st.audit_log, cfg.audit_log.display().to_string());

    // Stats, containers.
    let all = client.stats(None).await?;
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].total.rx_bytes, 500);
    assert_eq!(client.stats(Some("0123456789ab")).await?.len(), 1);
    match client.stats(Some("nope")).await {
        Err(ClientError::Rpc { code, message, .. }) => {
            assert_eq!(code, ttrpc::Code::NOT_FOUND);
            assert!(message.contains("nope"), "{message}");
        }
        other => bail!("expected NOT_FOUND, got {other:?}"),
    }
    assert_eq!(client.containers().await?[0].cgroup_id, 99);
    assert!(client.gc(true).await?.removed_containers.is_empty());

    // Garbage bytes and an oversized frame close only their own connections.
    let mut garbage = raw(
        &cfg.socket,
        b"GET / HTTP/1.1\r\n\r\nthis is not ttrpc at all",
    )
    .await?;
    let mut header = Vec::new();
    header.extend_from_slice(&(100u32 << 20).to_be_bytes()); // length: 100 MiB
    header.extend_from_slice(&1u32.to_be_bytes()); // stream id
    header.extend_from_slice(&[1, 0]); // request, no flags
    header.extend_from_slice(&[0u8; 4096]);
    let oversized = raw(&cfg.socket, &header).await?;
    assert_eq!(client.status().await?.version, FAKE_VERSION);
    drop(oversized);
    garbage.shutdown().await?;
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, garbage.read_to_end(&mut sink)).await;
    drop(garbage);
    let fresh = Client::connect(&cfg.socket, DEADLINE).await?;
    assert_eq!(fresh.status().await?.loads, 1);

    // Audit events reach the audit log as JSON lines.
    backend.push_event(AuditEvent {
        ts_ns: 1,
        id: "0123456789abcdef".into(),
        kind: "deny_connect".into(),
        daddr: "192.0.2.1".into(),
        dport: 443,
        ..Default::default()
    });
    let audit = cfg.audit_log.clone();
    wait_for("the audit line", || {
        std::fs::read_to_string(&audit).is_ok_and(|t| t.contains("\"daddr\":\"192.0.2.1\""))
    })
    .await?;

    // Metrics over the unix socket.
    let MetricsAddr::Unix(metrics) = &cfg.metrics else {
        unreachable!()
    };
    let mut m = raw(metrics, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await?;
    let mut resp = String::new();
    tokio::time::timeout(DEADLINE, m.read_to_string(&mut resp)).await??;
    assert!(resp.starts_with("HTTP/1.1 200 OK"), "{resp}");
    assert!(resp.contains("tether_loads_total 1"), "{resp}");
    assert!(
        resp.contains(&format!(
            r#"tether_map_entries{{version="{FAKE_VERSION}",map="cgroups"}} 1"#
        )),
        "{resp}"
    );
    assert!(
        resp.contains(
            r#"tether_container_rx_bytes_total{id="0123456789abcdef",containerd_namespace="default",namespace="",pod="",container=""} 500"#
        ),
        "{resp}"
    );

    // A second instance on the same socket refuses to start and leaves it alone.
    let second = server::serve(&cfg, backend.clone(), async {}).await;
    match second {
        Err(Error::AlreadyRunning { pid }) => assert_eq!(pid, std::process::id().to_string()),
        other => bail!("expected AlreadyRunning, got {other:?}"),
    }
    assert_eq!(client.status().await?.loads, 1);

    // Shutdown removes the sockets.
    let _ = stop_tx.send(());
    tokio::time::timeout(DEADLINE, server)
        .await
        .context("server did not stop")???;
    assert!(!cfg.socket.exists());
    assert!(!metrics.exists());
    Ok(())
}

fn unix_now_ns() -> u64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retired_containers_are_listed_as_deleted() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let cfg = config(dir.path());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let backend: Arc<dyn Backend> = fake();
    let server_cfg = cfg.clone();
    let server = tokio::spawn(async move {
        server::serve(&server_cfg, backend, async {
            let _ = stop_rx.await;
        })
        .await
    });
    let client = Client::connect(&cfg.socket, DEADLINE).await?;

    let gone = |rx_bytes| ContainerStatsInfo {
        id: "fedcba9876543210".into(),
        namespace: "default".into(),
        cgroup_id: 100,
        total: Counters {
            rx_bytes,
            ..Default::default()
        },
        ..Default::default()
    };
    let before = unix_now_ns();
    client.retire(gone(4242)).await?;
    let after = unix_now_ns();

    // Live containers first, then the retired one, marked and dated by tetherd.
    let all = client.stats(None).await?;
    let ids: Vec<_> = all.iter().map(|s| (s.id.as_str(), s.deleted)).collect();
    assert_eq!(
        ids,
        [("0123456789abcdef", false), ("fedcba9876543210", true)]
    );
    assert_eq!(all[0].deleted_at_unix_ns, 0);
    let retired = &all[1];
    assert_eq!((retired.cgroup_id, retired.total.rx_bytes), (100, 4242));
    assert!(
        (before..=after).contains(&retired.deleted_at_unix_ns),
        "{before} <= {} <= {after}",
        retired.deleted_at_unix_ns
    );
    let by_prefix = client.stats(Some("fedc")).await?;
    assert_eq!(by_prefix, std::slice::from_ref(retired));

    // A second Retire of the same container replaces the first.
    client.retire(gone(5000)).await?;
    let all = client.stats(None).await?;
    assert_eq!(all.len(), 2);
    assert_eq!(all[1].total.rx_bytes, 5000);

    // A retired container with a live one's id: the live one answers for that id.
    client
        .retire(ContainerStatsInfo {
            id: "0123456789abcdef".into(),
            namespace: "default".into(),
            ..Default::default()
        })
        .await?;
    assert_eq!(client.stats(None).await?.len(), 3);
    let one = client.stats(Some("0123456789abcdef")).await?;
    assert_eq!((one.len(), one[0].deleted), (1, false));

    // Requests without an id or a namespace are refused, naming the field.
    for (stats, field) in [
        (
            ContainerStatsInfo {
                namespace: "default".into(),
                ..Default::default()
            },
            "stats.id",
        ),
        (
            ContainerStatsInfo {
                id: "abc".into(),
                ..Default::default()
            },
            "stats.namespace",
        ),
    ] {
        match client.retire(stats).await {
            Err(ClientError::Rpc {
                method,
                code,
                message,
            }) => {
                assert_eq!(method, "Retire");
                assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT);
                assert!(message.contains(field), "{message}");
            }
            other => bail!("expected INVALID_ARGUMENT for {field}, got {other:?}"),
        }
    }
    assert_eq!(client.stats(None).await?.len(), 3);

    // Metrics show live containers only.
    let MetricsAddr::Unix(metrics) = &cfg.metrics else {
        unreachable!()
    };
    let mut m = raw(metrics, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await?;
    let mut resp = String::new();
    tokio::time::timeout(DEADLINE, m.read_to_string(&mut resp)).await??;
    assert!(resp.starts_with("HTTP/1.1 200 OK"), "{resp}");
    assert!(resp.contains(r#"id="0123456789abcdef""#), "{resp}");
    assert!(!resp.contains("fedcba9876543210"), "{resp}");
    let rx_series = resp
        .lines()
        .filter(|l| l.starts_with("tether_container_rx_bytes_total{"))
        .count();
    assert_eq!(rx_series, 1, "{resp}");
    assert!(
        resp.contains(
            r#"tether_container_rx_bytes_total{id="0123456789abcdef",containerd_namespace="default",namespace="",pod="",container=""} 500"#
        ),
        "{resp}"
    );

    let _ = stop_tx.send(());
    tokio::time::timeout(DEADLINE, server)
        .await
        .context("server did not stop")???;
    Ok(())
}

#[tokio::test]
async fn connect_reports_absent_socket_after_deadline() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let sock = dir.path().join("none.sock");
    let t = Instant::now();
    match Client::connect(&sock, Duration::from_millis(200)).await {
        Err(ClientError::Connect { socket, .. }) => assert_eq!(socket, sock),
        Err(other) => bail!("unexpected {other}"),
        Ok(_) => bail!("connected to nothing"),
    }
    assert!(t.elapsed() >= Duration::from_millis(200));
    Ok(())
}
