//! Prometheus metrics: rendering in the text exposition format 0.0.4, and a minimal
//! HTTP/1.1 responder (GET /metrics, anything else 404) on a unix socket or a loopback
//! TCP address. Owns the metrics listener.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tether_api::types::{ContainerInfo, ContainerStatsInfo, MapUsage, VersionInfo};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener};

use crate::acquire::{blocking, Acquirer};
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

/// Escapes a label value: backslash, double quote and line feed (exposition format 0.0.4).
pub fn escape_label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// One sample with labels: `name{k="v",...} value`, the values escaped.
fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: u64) {
    let labels: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape_label(v)))
        .collect();
    let _ = writeln!(out, "{name}{{{}}} {value}", labels.join(","));
}

/// Renders `s` in the text exposition format 0.0.4.
pub fn render(s: &Snapshot) -> String {
    let mut out = String::new();
    family(
        &mut out,
        "tether_loads_total",
        "counter",
        "Object versions loaded and pinned by this tetherd.",
    );
    let _ = writeln!(out, "tether_loads_total {}", s.loads);
    family(
        &mut out,
        "tether_acquires_total",
        "counter",
        "Acquire calls served.",
    );
    let _ = writeln!(out, "tether_acquires_total {}", s.acquires);
    family(
        &mut out,
        "tether_containers",
        "gauge",
        "Containers with entries in the shared maps.",
    );
    let _ = writeln!(out, "tether_containers {}", s.containers.len());
    family(
        &mut out,
        "tether_attachments",
        "gauge",
        "Program attachments of all containers.",
    );
    let attachments: usize = s.containers.iter().map(|c| c.attachments.len()).sum();
    let _ = writeln!(out, "tether_attachments {attachments}");

    type Field = fn(&ContainerStatsInfo) -> u64;
    let per_container: [(&str, &str, Field); 6] = [
        (
            "tether_container_rx_packets_total",
            "Packets received.",
            |c| c.total.rx_packets,
        ),
        ("tether_container_rx_bytes_total", "Bytes received.", |c| {
            c.total.rx_bytes
        }),
        ("tether_container_tx_packets_total", "Packets sent.", |c| {
            c.total.tx_packets
        }),
        ("tether_container_tx_bytes_total", "Bytes sent.", |c| {
            c.total.tx_bytes
        }),
        ("tether_container_drops_total", "Packets dropped.", |c| {
            c.total.drops
        }),
        (
            "tether_container_denials_total",
            "Connections and packets denied by egress policy.",
            |c| c.total.denials,
        ),
    ];
    for (name, help, field) in per_container {
        family(&mut out, name, "counter", help);
        for c in &s.stats {
            sample(
                &mut out,
                name,
                &[("id", &c.id), ("namespace", &c.namespace)],
                field(c),
            );
        }
    }
    family(
        &mut out,
        "tether_events_lost_total",
        "counter",
        "Audit events lost (ring buffer full or rate limited).",
    );
    let lost: u64 = s
        .stats
        .iter()
        .fold(0u64, |a, c| a.wrapping_add(c.total.events_lost));
    let _ = writeln!(out, "tether_events_lost_total {lost}");

    type Usage = fn(&MapUsage) -> u64;
    let per_map: [(&str, &str, Usage); 2] = [
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
    for (name, help, field) in per_map {
        family(&mut out, name, "gauge", help);
        for v in &s.versions {
            for u in &v.usage {
                sample(
                    &mut out,
                    name,
                    &[("version", &v.version), ("map", &u.map)],
                    field(u),
                );
            }
        }
    }
    out
}

/// Collects a snapshot from the backend.
async fn snapshot(backend: &Arc<dyn Backend>, acquirer: &Acquirer) -> Snapshot {
    let b = backend.clone();
    let containers = blocking("containers", move || b.containers()).await;
    let b = backend.clone();
    let stats = blocking("stats", move || b.stats()).await;
    let b = backend.clone();
    let versions = blocking("versions", move || b.versions()).await;
    if let Err(e) = &containers {
        log::warn!("metrics: list containers: {e}");
    }
    if let Err(e) = &stats {
        log::warn!("metrics: stats: {e}");
    }
    if let Err(e) = &versions {
        log::warn!("metrics: versions: {e}");
    }
    Snapshot {
        loads: acquirer.loads(),
        acquires: acquirer.acquires(),
        containers: containers.unwrap_or_default(),
        stats: stats.unwrap_or_default(),
        versions: versions.unwrap_or_default(),
    }
}

const MAX_REQUEST_HEAD: usize = 8 << 10;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Reads a request head and returns its request line, or `None` if the peer sent
/// nothing usable in time.
async fn read_request_line<S: AsyncRead + Unpin>(s: &mut S) -> Option<String> {
    let mut buf = Vec::with_capacity(512);
    let read = async {
        let mut chunk = [0u8; 512];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < MAX_REQUEST_HEAD {
            let n = s.read(&mut chunk).await.ok()?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        Some(())
    };
    tokio::time::timeout(REQUEST_TIMEOUT, read).await.ok()??;
    let head = String::from_utf8_lossy(&buf);
    head.lines().next().map(str::to_string)
}

/// Answers one HTTP request on `s`.
async fn handle<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    backend: Arc<dyn Backend>,
    acquirer: Arc<Acquirer>,
) {
    let Some(line) = read_request_line(&mut s).await else {
        return;
    };
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next(), parts.next());
    let response = if method == Some("GET") && target == Some("/metrics") {
        let body = render(&snapshot(&backend, &acquirer).await);
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    } else {
        let body = "not found\n";
        format!(
            "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    let _ = s.write_all(response.as_bytes()).await;
    let _ = s.shutdown().await;
}

/// A bound metrics listener.
pub enum MetricsListener {
    Unix(UnixListener, PathBuf),
    Tcp(TcpListener),
}

impl MetricsListener {
    /// Binds `addr`; `Ok(None)` if metrics are off. A stale unix socket is replaced.
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
        loop {
            let (b, a) = (backend.clone(), acquirer.clone());
            match &self {
                MetricsListener::Unix(l, _) => match l.accept().await {
                    Ok((s, _)) => {
                        tokio::spawn(handle(s, b, a));
                    }
                    Err(e) => log::warn!("metrics: accept: {e}"),
                },
                MetricsListener::Tcp(l) => match l.accept().await {
                    Ok((s, _)) => {
                        tokio::spawn(handle(s, b, a));
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
    use tether_api::types::{AttachmentInfo, Counters};

    #[test]
    fn escapes_label_values() {
        assert_eq!(escape_label(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape_label("x\ny"), "x\\ny");
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
            r#"tether_container_rx_packets_total{id="c1",namespace="k8s.\"io\""} 3"#,
            r#"tether_container_tx_bytes_total{id="c1",namespace="k8s.\"io\""} 1500"#,
            r#"tether_container_denials_total{id="c1",namespace="k8s.\"io\""} 2"#,
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

    #[tokio::test]
    async fn http_get_metrics_and_404() {
        use crate::backend::testing::FakeBackend;
        let backend: Arc<dyn Backend> = Arc::new(FakeBackend::new());
        let acq = Arc::new(Acquirer::new(backend.clone()));
        for (req, want) in [
            (
                "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
                "HTTP/1.1 200 OK",
            ),
            ("GET / HTTP/1.1\r\n\r\n", "HTTP/1.1 404 Not Found"),
            ("POST /metrics HTTP/1.1\r\n\r\n", "HTTP/1.1 404 Not Found"),
        ] {
            let (mut client, server) = tokio::io::duplex(64 << 10);
            let task = tokio::spawn(handle(server, backend.clone(), acq.clone()));
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
