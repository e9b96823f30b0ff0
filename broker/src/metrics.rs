//! Prometheus metrics: a `prometheus-client` collector that reads the backend at scrape
//! time, encoded in the text exposition format 0.0.4, served by hyper (HTTP/1.1, GET
//! /metrics, anything else 404) on a unix socket or a loopback TCP address. Owns the
//! metrics listener; the metric names, types, labels and help texts are this module's.

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::CONTENT_TYPE;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{prometheus_text, DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use tether_api::types::{ContainerInfo, ContainerStatsInfo, Counters, MapUsage, VersionInfo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};

use crate::acquire::Acquirer;
use crate::backend::Backend;
use crate::config::MetricsAddr;
use crate::error::Error;

/// What one scrape reports.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    pub loads: u64,
    pub acquires: u64,
    pub containers: Vec<ContainerInfo>,
    /// Live containers only, straight from the backend. Retired (deleted) containers are
    /// kept by the service, not the backend, and never reach the per-container families:
    /// a deleted container's series end with it, as Prometheus expects.
    pub stats: Vec<ContainerStatsInfo>,
    /// The pinned object versions, for how full their maps are.
    pub versions: Vec<VersionInfo>,
}

impl Snapshot {
    /// Reads a snapshot from the backend (blocking). A failed read is logged and reported
    /// as empty, so one broken map never fails the whole scrape.
    pub fn read(backend: &dyn Backend, acquirer: &Acquirer) -> Snapshot {
        fn logged<T: Default, E: std::fmt::Display>(what: &str, r: Result<T, E>) -> T {
            r.unwrap_or_else(|e| {
                log::warn!("metrics: {what}: {e}");
                T::default()
            })
        }
        Snapshot {
            loads: acquirer.loads(),
            acquires: acquirer.acquires(),
            containers: logged("list containers", backend.containers()),
            stats: logged("stats", backend.stats()),
            versions: logged("versions", backend.versions()),
        }
    }
}

/// A counter family's name as registered: the encoder appends `_total`, so
/// `tether_loads` is scraped as `tether_loads_total`.
type Field = fn(&Counters) -> u64;
const PER_CONTAINER: [(&str, &str, Field); 6] = [
    ("tether_container_rx_packets", "Packets received.", |c| {
        c.rx_packets
    }),
    ("tether_container_rx_bytes", "Bytes received.", |c| {
        c.rx_bytes
    }),
    ("tether_container_tx_packets", "Packets sent.", |c| {
        c.tx_packets
    }),
    ("tether_container_tx_bytes", "Bytes sent.", |c| c.tx_bytes),
    ("tether_container_drops", "Packets dropped.", |c| c.drops),
    (
        "tether_container_denials",
        "Connections and packets denied by egress policy.",
        |c| c.denials,
    ),
];

type Usage = fn(&MapUsage) -> u64;
const PER_MAP: [(&str, &str, Usage); 2] = [
    (
        "tether_map_entries",
        "Entries in a per-container map (tc_slots: slots taken).",
        |u| u.entries,
    ),
    (
        "tether_map_max_entries",
        "Entries a per-container map can hold.",
        |u| u.max_entries,
    ),
];

fn counter(e: &mut DescriptorEncoder<'_>, name: &str, help: &str, v: u64) -> std::fmt::Result {
    ConstCounter::new(v).encode(e.encode_descriptor(name, help, None, MetricType::Counter)?)
}

fn gauge(e: &mut DescriptorEncoder<'_>, name: &str, help: &str, v: u64) -> std::fmt::Result {
    ConstGauge::new(v).encode(e.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

/// A snapshot encodes itself: the families in a fixed order, each declared even when it
/// has no sample.
impl Collector for Snapshot {
    fn encode(&self, mut e: DescriptorEncoder<'_>) -> std::fmt::Result {
        let s = self;
        counter(
            &mut e,
            "tether_loads",
            "Object versions loaded and pinned by this tetherd.",
            s.loads,
        )?;
        counter(
            &mut e,
            "tether_acquires",
            "Acquire calls served.",
            s.acquires,
        )?;
        gauge(
            &mut e,
            "tether_containers",
            "Containers with entries in the shared maps.",
            s.containers.len() as u64,
        )?;
        let attachments: usize = s.containers.iter().map(|c| c.attachments.len()).sum();
        gauge(
            &mut e,
            "tether_attachments",
            "Program attachments of all containers.",
            attachments as u64,
        )?;
        for (name, help, field) in PER_CONTAINER {
            let mut family = e.encode_descriptor(name, help, None, MetricType::Counter)?;
            for c in &s.stats {
                // As cAdvisor names a pod's containers, so that dashboards and
                // `sum by (namespace, pod)` work; empty outside Kubernetes.
                let k = c.kubernetes.as_ref();
                let labels = [
                    ("id", c.id.as_str()),
                    ("containerd_namespace", c.namespace.as_str()),
                    ("namespace", k.map_or("", |k| k.namespace.as_str())),
                    ("pod", k.map_or("", |k| k.pod.as_str())),
                    ("container", k.map_or("", |k| k.container.as_str())),
                ];
                ConstCounter::new(field(&c.total)).encode(family.encode_family(&labels)?)?;
            }
        }
        let lost = s
            .stats
            .iter()
            .fold(0u64, |a, c| a.wrapping_add(c.total.events_lost));
        counter(
            &mut e,
            "tether_events_lost",
            "Audit events lost (ring buffer full or rate limited).",
            lost,
        )?;
        for (name, help, field) in PER_MAP {
            let mut family = e.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for v in &s.versions {
                for u in &v.usage {
                    let labels = [("version", v.version.as_str()), ("map", u.map.as_str())];
                    ConstGauge::new(field(u)).encode(family.encode_family(&labels)?)?;
                }
            }
        }
        Ok(())
    }
}

/// Reads the backend at each scrape. Its `encode` blocks (map reads): run it off the
/// async workers.
struct BackendCollector {
    backend: Arc<dyn Backend>,
    acquirer: Arc<Acquirer>,
}

impl std::fmt::Debug for BackendCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendCollector").finish_non_exhaustive()
    }
}

impl Collector for BackendCollector {
    fn encode(&self, e: DescriptorEncoder<'_>) -> std::fmt::Result {
        Snapshot::read(self.backend.as_ref(), &self.acquirer).encode(e)
    }
}

/// The registry tetherd serves: one collector over `backend`.
pub fn registry(backend: Arc<dyn Backend>, acquirer: Arc<Acquirer>) -> Registry {
    let mut r = Registry::default();
    r.register_collector(Box::new(BackendCollector { backend, acquirer }));
    r
}

/// Encodes `registry` in the text exposition format 0.0.4.
pub fn encode(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut out = String::new();
    prometheus_text::encode(&mut out, registry)?;
    Ok(out)
}

/// Renders `s` in the text exposition format 0.0.4.
pub fn render(s: &Snapshot) -> String {
    let mut r = Registry::default();
    r.register_collector(Box::new(s.clone()));
    encode(&r).unwrap_or_default()
}

/// The largest request head read, and how long a client may take to send it.
const MAX_REQUEST_HEAD: usize = 8 << 10;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one connection may last in all (a client that never reads its response).
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    r
}

/// Answers one request: GET /metrics encodes the registry, anything else is 404.
async fn respond(
    req: Request<Incoming>,
    registry: Arc<Registry>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.method() != Method::GET || req.uri().path() != "/metrics" {
        return Ok(text(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found\n".into(),
        ));
    }
    Ok(
        match tokio::task::spawn_blocking(move || encode(&registry)).await {
            Ok(Ok(body)) => text(StatusCode::OK, prometheus_text::CONTENT_TYPE, body),
            Ok(Err(std::fmt::Error)) | Err(_) => {
                log::warn!("metrics: encoding the scrape failed");
                text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    "encoding failed\n".into(),
                )
            }
        },
    )
}

/// Serves the one request of connection `s` (no keep-alive: the connection is closed
/// after the response).
async fn handle<S>(s: S, registry: Arc<Registry>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn = http1::Builder::new()
        .keep_alive(false)
        .timer(TokioTimer::new())
        .header_read_timeout(REQUEST_TIMEOUT)
        .max_buf_size(MAX_REQUEST_HEAD)
        .serve_connection(
            TokioIo::new(s),
            service_fn(move |req| respond(req, registry.clone())),
        );
    match tokio::time::timeout(CONNECTION_TIMEOUT, conn).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => log::debug!("metrics: connection: {e}"),
        Err(_) => log::debug!("metrics: connection timed out"),
    }
}

/// A bound metrics listener.
pub enum MetricsListener {
    Unix(UnixListener, PathBuf),
    Tcp(TcpListener),
}

impl MetricsListener {
    /// Binds `addr`; `Ok(None)` if metrics are off. A stale unix socket is replaced.
    /// (`MetricsAddr` holds only loopback TCP addresses: config parsing refuses others.)
    pub async fn bind(addr: &MetricsAddr) -> Result<Option<Self>, Error> {
        match addr {
            MetricsAddr::Off => Ok(None),
            MetricsAddr::Unix(path) => {
                match std::fs::remove_file(path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(source) => {
                        return Err(Error::Io {
                            what: "remove stale metrics socket",
                            path: path.clone(),
                            source,
                        })
                    }
                }
                let l = UnixListener::bind(path).map_err(|source| Error::Io {
                    what: "bind metrics socket",
                    path: path.clone(),
                    source,
                })?;
                Ok(Some(MetricsListener::Unix(l, path.clone())))
            }
            MetricsAddr::Tcp(a) => {
                let l = TcpListener::bind(a).await.map_err(|source| Error::Io {
                    what: "bind metrics address",
                    path: PathBuf::from(a.to_string()),
                    source,
                })?;
                Ok(Some(MetricsListener::Tcp(l)))
            }
        }
    }

    /// Serves scrapes until the task is aborted.
    pub async fn serve(self, backend: Arc<dyn Backend>, acquirer: Arc<Acquirer>) {
        let registry = Arc::new(registry(backend, acquirer));
        loop {
            let r = registry.clone();
            match &self {
                MetricsListener::Unix(l, _) => match l.accept().await {
                    Ok((s, _)) => {
                        tokio::spawn(handle(s, r));
                    }
                    Err(e) => log::warn!("metrics: accept: {e}"),
                },
                MetricsListener::Tcp(l) => match l.accept().await {
                    Ok((s, _)) => {
                        tokio::spawn(handle(s, r));
                    }
                    Err(e) => log::warn!("metrics: accept: {e}"),
                },
            }
        }
    }

    /// The unix socket path to remove at shutdown, if any.
    pub fn unix_path(&self) -> Option<PathBuf> {
        match self {
            MetricsListener::Unix(_, p) => Some(p.clone()),
            MetricsListener::Tcp(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tether_api::types::AttachmentInfo;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn escapes_label_values() {
        let s = Snapshot {
            stats: vec![ContainerStatsInfo {
                id: r#"a"b\c"#.into(),
                namespace: "x\ny".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let text = render(&s);
        assert!(
            text.contains(r#"tether_container_drops_total{id="a\"b\\c",containerd_namespace="x\ny",namespace="",pod="",container=""} 0"#),
            "{text}"
        );
    }

    #[test]
    fn renders_families() {
        let s = Snapshot {
            loads: 1,
            acquires: 50,
            containers: vec![ContainerInfo {
                id: "c1".into(),
                attachments: vec![AttachmentInfo::default(), AttachmentInfo::default()],
                ..Default::default()
            }],
            stats: vec![ContainerStatsInfo {
                id: "c1".into(),
                namespace: "k8s.\"io\"".into(),
                kubernetes: Some(tether_api::types::KubernetesNames {
                    namespace: "shop".into(),
                    pod: "web".into(),
                    container: "nginx".into(),
                }),
                total: Counters {
                    rx_packets: 3,
                    tx_bytes: 1500,
                    denials: 2,
                    events_lost: 4,
                    ..Default::default()
                },
                ..Default::default()
            }],
            versions: vec![VersionInfo {
                version: "v1".into(),
                usage: vec![MapUsage {
                    map: "cgroups".into(),
                    entries: 7,
                    max_entries: 65536,
                    refuses_when_full: true,
                }],
                ..Default::default()
            }],
        };
        let text = render(&s);
        for line in [
            "# TYPE tether_loads_total counter",
            "tether_loads_total 1",
            "tether_acquires_total 50",
            "# TYPE tether_containers gauge",
            "tether_containers 1",
            "tether_attachments 2",
            r#"tether_container_rx_packets_total{id="c1",containerd_namespace="k8s.\"io\"",namespace="shop",pod="web",container="nginx"} 3"#,
            r#"tether_container_tx_bytes_total{id="c1",containerd_namespace="k8s.\"io\"",namespace="shop",pod="web",container="nginx"} 1500"#,
            r#"tether_container_denials_total{id="c1",containerd_namespace="k8s.\"io\"",namespace="shop",pod="web",container="nginx"} 2"#,
            "tether_events_lost_total 4",
            "# TYPE tether_map_entries gauge",
            r#"tether_map_entries{version="v1",map="cgroups"} 7"#,
            r#"tether_map_max_entries{version="v1",map="cgroups"} 65536"#,
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        // Every sample line belongs to a family declared before it.
        let mut declared = Vec::new();
        for l in text.lines() {
            if let Some(rest) = l.strip_prefix("# TYPE ") {
                declared.push(rest.split(' ').next().unwrap().to_string());
            } else if !l.starts_with('#') {
                let name = l.split(['{', ' ']).next().unwrap();
                assert_eq!(declared.last().map(String::as_str), Some(name), "{l}");
            }
        }
        assert!(text.ends_with('\n'));
    }

    /// Every family, with its type and help text, exactly as the README documents them.
    #[test]
    fn families_keep_their_names_types_and_help() {
        let text = render(&Snapshot::default());
        let want = "\
# HELP tether_loads_total Object versions loaded and pinned by this tetherd.
# TYPE tether_loads_total counter
tether_loads_total 0
# HELP tether_acquires_total Acquire calls served.
# TYPE tether_acquires_total counter
tether_acquires_total 0
# HELP tether_containers Containers with entries in the shared maps.
# TYPE tether_containers gauge
tether_containers 0
# HELP tether_attachments Program attachments of all containers.
# TYPE tether_attachments gauge
tether_attachments 0
# HELP tether_container_rx_packets_total Packets received.
# TYPE tether_container_rx_packets_total counter
# HELP tether_container_rx_bytes_total Bytes received.
# TYPE tether_container_rx_bytes_total counter
# HELP tether_container_tx_packets_total Packets sent.
# TYPE tether_container_tx_packets_total counter
# HELP tether_container_tx_bytes_total Bytes sent.
# TYPE tether_container_tx_bytes_total counter
# HELP tether_container_drops_total Packets dropped.
# TYPE tether_container_drops_total counter
# HELP tether_container_denials_total Connections and packets denied by egress policy.
# TYPE tether_container_denials_total counter
# HELP tether_events_lost_total Audit events lost (ring buffer full or rate limited).
# TYPE tether_events_lost_total counter
tether_events_lost_total 0
# HELP tether_map_entries Entries in a per-container map (tc_slots: slots taken).
# TYPE tether_map_entries gauge
# HELP tether_map_max_entries Entries a per-container map can hold.
# TYPE tether_map_max_entries gauge
";
        assert_eq!(text, want);
    }

    /// The `ip:port` form: a loopback TCP listener, scraped over TCP.
    #[tokio::test]
    async fn serves_on_loopback_tcp() {
        use crate::backend::testing::FakeBackend;
        let addr = MetricsAddr::Tcp("127.0.0.1:0".parse().unwrap());
        let Some(listener) = MetricsListener::bind(&addr).await.unwrap() else {
            panic!("metrics are on");
        };
        let MetricsListener::Tcp(tcp) = &listener else {
            panic!("a TCP listener");
        };
        let local = tcp.local_addr().unwrap();
        assert!(listener.unix_path().is_none());
        let backend: Arc<dyn Backend> = Arc::new(FakeBackend::new());
        let acq = Arc::new(Acquirer::new(backend.clone()));
        let server = tokio::spawn(listener.serve(backend, acq));
        let mut s = tokio::net::TcpStream::connect(local).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").await.unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).await.unwrap();
        server.abort();
        assert!(resp.starts_with("HTTP/1.0 200 OK"), "{resp}");
        assert!(
            resp.contains("\r\n\r\n# HELP tether_loads_total "),
            "{resp}"
        );
    }

    #[tokio::test]
    async fn http_get_metrics_and_404() {
        use crate::backend::testing::FakeBackend;
        let backend: Arc<dyn Backend> = Arc::new(FakeBackend::new());
        let acq = Arc::new(Acquirer::new(backend.clone()));
        let registry = Arc::new(registry(backend, acq));
        for (req, want) in [
            (
                "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
                "HTTP/1.1 200 OK",
            ),
            ("GET / HTTP/1.1\r\n\r\n", "HTTP/1.1 404 Not Found"),
            ("POST /metrics HTTP/1.1\r\n\r\n", "HTTP/1.1 404 Not Found"),
        ] {
            let (mut client, server) = tokio::io::duplex(64 << 10);
            let task = tokio::spawn(handle(server, registry.clone()));
            client.write_all(req.as_bytes()).await.unwrap();
            let mut resp = String::new();
            client.read_to_string(&mut resp).await.unwrap();
            task.await.unwrap();
            assert!(resp.starts_with(want), "{resp}");
            if want.ends_with("200 OK") {
                assert!(resp.contains("text/plain; version=0.0.4"));
                assert!(resp.contains("tether_loads_total 0"));
            }
        }
    }
}
