//! tetherctl's output: aligned tables, humanized numbers, the key/value status view and
//! the JSON shapes. Pure functions from data to text; nothing here does I/O.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;
use tether_api::types::{
    AcquireReply, ContainerInfo, ContainerStatsInfo, Counters, KubernetesNames, StatusInfo,
};

pub use super::pods::{pod_cell, sum_totals, PodFilter};

/// Width of a shortened container id.
pub const SHORT_ID: usize = 12;

/// `1536` -> `1.5 KiB`; below 1 KiB: `512 B`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// `3725` -> `1h 2m 5s`.
pub fn human_duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m {s}s"),
        _ => format!("{d}d {h}h {m}m"),
    }
}

/// How long ago, in its largest unit: `45s`, `3m`, `2h`, `1d`.
pub fn human_ago(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m", secs / 60),
        3600..86400 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86400),
    }
}

/// The first 12 characters of a container id.
pub fn short_id(id: &str) -> &str {
    id.char_indices()
        .nth(SHORT_ID)
        .map_or(id, |(i, _)| &id[..i])
}

/// A text table: left-aligned text columns, right-aligned number columns, two spaces
/// between columns, no trailing spaces.
pub struct Table {
    headers: Vec<&'static str>,
    right: Vec<bool>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// `columns`: header and whether the column is right-aligned.
    pub fn new(columns: &[(&'static str, bool)]) -> Self {
        Table {
            headers: columns.iter().map(|c| c.0).collect(),
            right: columns.iter().map(|c| c.1).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let n = self.headers.len();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate().take(n) {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
        let mut out = String::new();
        let header: Vec<String> = self.headers.iter().map(|h| h.to_string()).collect();
        for cells in std::iter::once(&header).chain(self.rows.iter()) {
            let mut line = String::new();
            for (i, w) in widths.iter().enumerate() {
                let c = cells.get(i).map(String::as_str).unwrap_or("");
                let pad = w - c.chars().count();
                if i > 0 {
                    line.push_str("  ");
                }
                if self.right[i] {
                    line.push_str(&" ".repeat(pad));
                    line.push_str(c);
                } else {
                    line.push_str(c);
                    line.push_str(&" ".repeat(pad));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// `cgroup×6 tcx×2`: attachment counts per kind.
pub fn attachment_summary(c: &ContainerInfo) -> String {
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    for a in &c.attachments {
        *kinds.entry(a.kind.as_str()).or_default() += 1;
    }
    if kinds.is_empty() {
        return "-".into();
    }
    kinds
        .iter()
        .map(|(k, n)| format!("{k}×{n}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `tetherctl ps` (with `wide`: one line per attachment under each container).
pub fn ps_table(containers: &[ContainerInfo], wide: bool) -> String {
    let mut t = Table::new(&[
        ("ID", false),
        ("NAMESPACE", false),
        ("POD", false),
        ("CGROUP ID", true),
        ("VERSION", false),
        ("ATTACHMENTS", false),
    ]);
    for c in containers {
        let mut summary = attachment_summary(c);
        if c.stale {
            summary.push_str("  (stale: cgroup gone)");
        }
        t.row(vec![
            short_id(&c.id).to_string(),
            c.namespace.clone(),
            pod_cell(c.kubernetes.as_ref()),
            c.cgroup_id.to_string(),
            c.version.clone(),
            summary,
        ]);
    }
    if !wide {
        return t.render();
    }
    let mut out = String::new();
    let rendered = t.render();
    let mut lines = rendered.lines();
    if let Some(h) = lines.next() {
        let _ = writeln!(out, "{h}");
    }
    for (c, line) in containers.iter().zip(lines) {
        let _ = writeln!(out, "{line}");
        let mut a = Table::new(&[
            ("", false),
            ("KIND", false),
            ("PROGRAM", false),
            ("TARGET", false),
            ("LINK", true),
            ("PROG", true),
        ]);
        for at in &c.attachments {
            a.row(vec![
                String::new(),
                at.kind.clone(),
                at.program.clone(),
                at.target.clone(),
                at.link_id.to_string(),
                at.prog_id.to_string(),
            ]);
        }
        // Skip the attachment table's header row; the indent column keeps it aligned.
        for l in a.render().lines().skip(1) {
            let _ = writeln!(out, "  {l}");
        }
    }
    out
}

/// The STATE cell of `tetherctl stats`: `live` (attached, counters still moving) or
/// `deleted 3m ago` (final counters; `now_unix_ns` is the wall clock).
fn stats_state(s: &ContainerStatsInfo, now_unix_ns: u64) -> String {
    if !s.deleted {
        return "live".into();
    }
    let ago = now_unix_ns.saturating_sub(s.deleted_at_unix_ns) / 1_000_000_000;
    format!("deleted {} ago", human_ago(ago))
}

/// `tetherctl stats`; `now_unix_ns` (the wall clock) dates deleted containers. With
/// `total`, a last row sums the containers' totals.
pub fn stats_table(stats: &[ContainerStatsInfo], now_unix_ns: u64, total: bool) -> String {
    let mut t = Table::new(&[
        ("ID", false),
        ("NAMESPACE", false),
        ("POD", false),
        ("RX PKTS", true),
        ("RX BYTES", true),
        ("TX PKTS", true),
        ("TX BYTES", true),
        ("DROPS", true),
        ("DENIALS", true),
        ("COUNTED AT", false),
        ("STATE", false),
    ]);
    for s in stats {
        let c = &s.total;
        t.row(vec![
            short_id(&s.id).to_string(),
            s.namespace.clone(),
            pod_cell(s.kubernetes.as_ref()),
            c.rx_packets.to_string(),
            human_bytes(c.rx_bytes),
            c.tx_packets.to_string(),
            human_bytes(c.tx_bytes),
            c.drops.to_string(),
            c.denials.to_string(),
            if s.counted_at.is_empty() {
                "-".to_string()
            } else {
                s.counted_at.clone()
            },
            stats_state(s, now_unix_ns),
        ]);
    }
    if total {
        let c = sum_totals(stats);
        t.row(vec![
            "TOTAL".into(),
            String::new(),
            format!("{} containers", stats.len()),
            c.rx_packets.to_string(),
            human_bytes(c.rx_bytes),
            c.tx_packets.to_string(),
            human_bytes(c.tx_bytes),
            c.drops.to_string(),
            c.denials.to_string(),
        ]);
    }
    t.render()
}

/// One interface in a `stats --json` line.
#[derive(Serialize)]
struct InterfaceLine<'a> {
    name: &'a str,
    ifindex: u32,
    netns_cookie: u64,
    #[serde(flatten)]
    counters: Counters,
}

/// One `stats --json` line: a container's totals at the top level, keyed by its id.
#[derive(Serialize)]
struct StatsLine<'a> {
    id: &'a str,
    namespace: &'a str,
    cgroup_id: u64,
    #[serde(flatten)]
    total: Counters,
    cgroup: Counters,
    interfaces: Vec<InterfaceLine<'a>>,
    deleted: bool,
    deleted_at_unix_ns: u64,
    counted_at: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    kubernetes: Option<&'a KubernetesNames>,
}

/// The last `stats --json` line with `--pod`/`--namespace`: the sum of the containers'
/// totals.
#[derive(Serialize)]
struct TotalLine<'a> {
    total: bool,
    containers: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pod: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    kubernetes_namespace: Option<&'a str>,
    #[serde(flatten)]
    counters: Counters,
}

/// `tetherctl stats --json`: one JSON object per line per container; with a non-empty
/// `filter`, a last line with their sum (`"total": true`).
pub fn stats_json_lines(stats: &[ContainerStatsInfo], filter: &PodFilter) -> String {
    let mut out = String::new();
    for s in stats {
        let line = StatsLine {
            id: &s.id,
            namespace: &s.namespace,
            cgroup_id: s.cgroup_id,
            total: s.total,
            cgroup: s.cgroup,
            interfaces: s
                .interfaces
                .iter()
                .map(|i| InterfaceLine {
                    name: &i.name,
                    ifindex: i.ifindex,
                    netns_cookie: i.netns_cookie,
                    counters: i.counters,
                })
                .collect(),
            deleted: s.deleted,
            deleted_at_unix_ns: s.deleted_at_unix_ns,
            counted_at: &s.counted_at,
            kubernetes: s.kubernetes.as_ref(),
        };
        out.push_str(&serde_json::to_string(&line).unwrap_or_default());
        out.push('\n');
    }
    if !filter.is_empty() {
        let line = TotalLine {
            total: true,
            containers: stats.len(),
            pod: filter.pod.as_deref(),
            kubernetes_namespace: filter.namespace.as_deref(),
            counters: sum_totals(stats),
        };
        out.push_str(&serde_json::to_string(&line).unwrap_or_default());
        out.push('\n');
    }
    out
}

/// `tetherctl status`: key: value lines, then one line per pinned version.
pub fn status_text(s: &StatusInfo) -> String {
    let containers: u64 = s.versions.iter().map(|v| u64::from(v.containers)).sum();
    let rows = [
        ("version", s.version.clone()),
        ("pin root", s.pin_root.clone()),
        ("pid", s.pid.to_string()),
        ("uptime", human_duration(s.uptime_seconds)),
        ("loads", s.loads.to_string()),
        ("acquires", s.acquires.to_string()),
        ("containers", containers.to_string()),
        ("metrics", s.metrics.clone()),
        ("audit log", s.audit_log.clone()),
        ("netns cookie mode", s.netns_cookie_mode.clone()),
    ];
    let mut out = String::new();
    for (k, v) in rows {
        let _ = writeln!(out, "{:<19}{v}", format!("{k}:"));
    }
    let _ = writeln!(out, "pinned versions:");
    if s.versions.is_empty() {
        let _ = writeln!(out, "  (none)");
    }
    let mut t = Table::new(&[
        ("", false),
        ("", false),
        ("", false),
        ("", false),
        ("", false),
    ]);
    for v in &s.versions {
        let mark = if v.version == s.version { "*" } else { " " };
        let note = match &v.problem {
            Some(p) => format!("PROBLEM: {p}"),
            None if v.version == s.version => "current".to_string(),
            None => String::new(),
        };
        t.row(vec![
            format!("{mark} {}", v.version),
            v.pin_dir.clone(),
            format!("{} containers", v.containers),
            format!("{} programs, {} maps", v.programs.len(), v.maps.len()),
            note,
        ]);
    }
    for l in t.render().lines().skip(1) {
        let _ = writeln!(out, "  {l}");
    }
    for v in s.versions.iter().filter(|v| !v.usage.is_empty()) {
        let _ = writeln!(out, "per-container maps of {}:", v.version);
        let mut t = Table::new(&[
            ("MAP", false),
            ("ENTRIES", true),
            ("MAX", true),
            ("", false),
        ]);
        for u in &v.usage {
            t.row(vec![
                u.map.clone(),
                u.entries.to_string(),
                u.max_entries.to_string(),
                if u.nearly_full() {
                    "NEARLY FULL".to_string()
                } else {
                    String::new()
                },
            ]);
        }
        for l in t.render().lines() {
            let _ = writeln!(out, "  {}", l.trim_end());
        }
    }
    out
}

/// `tetherctl acquire` without `--json`.
pub fn acquire_text(r: &AcquireReply) -> String {
    let a = &r.acquired;
    let programs: Vec<String> = a
        .programs
        .iter()
        .map(|p| format!("{}={}", p.name, p.id))
        .collect();
    format!(
        "version:     {}\npin dir:     {}\nloaded now:  {}\nprograms:    {}\n",
        a.version,
        a.pin_dir,
        if r.loaded_now { "yes" } else { "no" },
        programs.join(" ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use tether_api::types::{AttachmentInfo, InterfaceStatsInfo, MapUsage, ObjInfo, VersionInfo};

    #[test]
    fn humanized_bytes() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1024), "1.0 KiB");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(1_258_291), "1.2 MiB");
        assert_eq!(human_bytes(5 << 30), "5.0 GiB");
        assert_eq!(human_bytes(u64::MAX), "16.0 EiB");
    }

    #[test]
    fn durations() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(3725), "1h 2m 5s");
        assert_eq!(human_duration(90000), "1d 1h 0m");
    }

    fn stats(id: &str, rx_bytes: u64) -> ContainerStatsInfo {
        let c = Counters {
            rx_packets: 10,
            rx_bytes,
            tx_packets: 12345,
            tx_bytes: 2048,
            drops: 1,
            denials: 2,
            events_lost: 0,
        };
        ContainerStatsInfo {
            id: id.into(),
            namespace: "k8s.io".into(),
            cgroup_id: 77,
            cgroup: c,
            interfaces: vec![InterfaceStatsInfo {
                name: "eth0".into(),
                ifindex: 3,
                netns_cookie: 4097,
                counters: c,
            }],
            total: c,
            deleted: false,
            deleted_at_unix_ns: 0,
            counted_at: "interfaces".into(),
            kubernetes: None,
        }
    }

    fn in_pod(id: &str, ns: &str, pod: &str, container: &str, rx_bytes: u64) -> ContainerStatsInfo {
        ContainerStatsInfo {
            kubernetes: Some(KubernetesNames {
                namespace: ns.into(),
                pod: pod.into(),
                container: container.into(),
            }),
            ..stats(id, rx_bytes)
        }
    }

    #[test]
    fn stats_of_a_pod_are_named_filtered_and_summed() {
        let all = [
            in_pod("sandbox1", "shop", "web", "", 0),
            in_pod("nginx1", "shop", "web", "nginx", 100),
            in_pod("sidecar1", "shop", "web", "proxy", 50),
            in_pod("db1", "shop", "db", "pg", 7),
            in_pod("web2", "blog", "web", "nginx", 9),
            stats("plain", 1),
        ];
        let filter = PodFilter {
            pod: Some("web".into()),
            namespace: Some("shop".into()),
        };
        let kept: Vec<ContainerStatsInfo> =
            all.iter().filter(|s| filter.keeps(s)).cloned().collect();
        assert_eq!(kept.len(), 3);
        let t = stats_table(&kept, 0, true);
        assert!(t.lines().nth(1).unwrap().contains("  shop/web  "), "{t}");
        assert!(
            t.lines().nth(2).unwrap().contains("  shop/web/nginx  "),
            "{t}"
        );
        let last = t.lines().last().unwrap();
        assert!(
            last.starts_with("TOTAL") && last.contains("3 containers"),
            "{t}"
        );
        assert!(last.contains("150 B"), "{t}");
        let json = stats_json_lines(&kept, &filter);
        let lines: Vec<serde_json::Value> = json
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[1]["kubernetes"]["container"], "nginx");
        assert_eq!(lines[3]["total"], true);
        assert_eq!(lines[3]["containers"], 3);
        assert_eq!(lines[3]["rx_bytes"], 150);
        assert_eq!(lines[3]["pod"], "web");
        // A namespace alone keeps every pod of it; no filter keeps all, unnamed too.
        let ns = PodFilter {
            pod: None,
            namespace: Some("shop".into()),
        };
        assert_eq!(all.iter().filter(|s| ns.keeps(s)).count(), 4);
        assert_eq!(
            all.iter().filter(|s| PodFilter::default().keeps(s)).count(),
            6
        );
        assert!(!stats_json_lines(&all, &PodFilter::default()).contains("\"total\""));
        assert!(stats_table(&all, 0, false)
            .lines()
            .last()
            .unwrap()
            .starts_with("plain"));
    }

    #[test]
    fn ago() {
        assert_eq!(human_ago(0), "0s");
        assert_eq!(human_ago(59), "59s");
        assert_eq!(human_ago(60), "1m");
        assert_eq!(human_ago(3599), "59m");
        assert_eq!(human_ago(7200), "2h");
        assert_eq!(human_ago(86400 * 3), "3d");
    }

    #[test]
    fn stats_table_is_aligned() {
        let t = stats_table(
            &[stats("0123456789abcdef0123", 500), stats("short", 3 << 20)],
            0,
            false,
        );
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("ID            NAMESPACE"), "{t}");
        assert!(lines[1].starts_with("0123456789ab  k8s.io"), "{t}");
        assert!(lines[2].starts_with("short         k8s.io"), "{t}");
        assert!(lines[2].contains("3.0 MiB"));
        // Right-aligned number columns end at the same column as their header.
        let end = lines[0].find("RX BYTES").unwrap() + "RX BYTES".len();
        assert_eq!(&lines[1][end - 5..end], "500 B");
        assert_eq!(&lines[2][end - 7..end], "3.0 MiB");
        assert!(lines.iter().all(|l| !l.ends_with(' ')));
        assert!(lines[0].ends_with("DENIALS  COUNTED AT  STATE"), "{t}");
        assert!(lines[1].contains("  interfaces  "), "{t}");
        assert!(lines[1].ends_with("  live"), "{t}");
    }

    #[test]
    fn stats_table_marks_deleted() {
        let now = 1_700_000_000 * 1_000_000_000;
        let gone = ContainerStatsInfo {
            deleted: true,
            deleted_at_unix_ns: now - 185 * 1_000_000_000,
            ..stats("gone", 1)
        };
        let t = stats_table(&[stats("here", 1), gone], now, false);
        let lines: Vec<&str> = t.lines().collect();
        assert!(
            lines[1].starts_with("here") && lines[1].ends_with("  live"),
            "{t}"
        );
        assert!(
            lines[2].starts_with("gone") && lines[2].ends_with("  deleted 3m ago"),
            "{t}"
        );
        // The number columns stay aligned.
        let end = lines[0].find("DENIALS").unwrap() + "DENIALS".len();
        assert_eq!(&lines[1][..end], &lines[2][..end].replace("gone", "here"));
        // A deletion stamped after `now` (clock stepped back) reads as just now.
        let future = ContainerStatsInfo {
            deleted: true,
            deleted_at_unix_ns: now + 5,
            ..stats("x", 1)
        };
        assert!(stats_table(&[future], now, false).contains("deleted 0s ago"));
    }

    #[test]
    fn stats_json_shape() {
        let out = stats_json_lines(&[stats("a", 1), stats("b", 2)], &PodFilter::default());
        let lines: Vec<serde_json::Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        let v = &lines[0];
        assert_eq!(v["id"], "a");
        assert_eq!(v["namespace"], "k8s.io");
        assert_eq!(v["cgroup_id"], 77);
        assert_eq!(v["rx_packets"], 10);
        assert_eq!(v["rx_bytes"], 1);
        assert_eq!(v["denials"], 2);
        assert_eq!(v["interfaces"][0]["name"], "eth0");
        assert_eq!(v["interfaces"][0]["tx_packets"], 12345);
        assert_eq!(v["cgroup"]["drops"], 1);
        assert_eq!(v["deleted"], false);
        assert_eq!(v["deleted_at_unix_ns"], 0);
        assert_eq!(v["counted_at"], "interfaces");

        let gone = ContainerStatsInfo {
            deleted: true,
            deleted_at_unix_ns: 1_700_000_000_000_000_000,
            ..stats("c", 3)
        };
        let v: serde_json::Value =
            serde_json::from_str(stats_json_lines(&[gone], &PodFilter::default()).trim()).unwrap();
        assert_eq!(v["deleted"], true);
        assert_eq!(v["deleted_at_unix_ns"], 1_700_000_000_000_000_000u64);
    }

    #[test]
    fn ps_summarizes_attachments() {
        let att = |kind: &str| AttachmentInfo {
            program: "count".into(),
            kind: kind.into(),
            target: "cgroup:/sys/fs/cgroup/x".into(),
            link_id: 5,
            prog_id: 6,
        };
        let c = ContainerInfo {
            id: "abcdefabcdefabcdef".into(),
            namespace: "default".into(),
            cgroup_id: 1234,
            version: "v1".into(),
            attachments: vec![att("cgroup"), att("tcx"), att("cgroup")],
            stale: false,
            kubernetes: None,
        };
        assert_eq!(attachment_summary(&c), "cgroup×2 tcx×1");
        let t = ps_table(std::slice::from_ref(&c), false);
        assert!(t
            .lines()
            .nth(1)
            .unwrap()
            .starts_with("abcdefabcdef  default    -  "));
        assert!(t.contains("cgroup×2 tcx×1"));
        let wide = ps_table(&[c], true);
        assert_eq!(wide.lines().count(), 2 + 3, "{wide}");
        assert!(wide.contains("cgroup:/sys/fs/cgroup/x"));
    }

    #[test]
    fn status_marks_current_and_problems() {
        let v = |name: &str, problem: Option<&str>| VersionInfo {
            version: name.into(),
            pin_dir: format!("/sys/fs/bpf/tether/{name}"),
            programs: vec![ObjInfo::default()],
            maps: vec![],
            containers: 2,
            problem: problem.map(str::to_string),
            usage: match problem {
                Some(_) => vec![],
                None => vec![
                    MapUsage {
                        map: "cgroups".into(),
                        entries: 3,
                        max_entries: 65536,
                        refuses_when_full: true,
                    },
                    MapUsage {
                        map: "deny4".into(),
                        entries: 59000,
                        max_entries: 65536,
                        refuses_when_full: true,
                    },
                ],
            },
        };
        let s = StatusInfo {
            version: "v2".into(),
            versions: vec![v("v1", Some("missing map")), v("v2", None)],
            uptime_seconds: 61,
            ..Default::default()
        };
        let text = status_text(&s);
        assert!(text.contains("version:           v2"), "{text}");
        assert!(text.contains("uptime:            1m 1s"), "{text}");
        assert!(text.contains("containers:        4"), "{text}");
        assert!(text
            .lines()
            .any(|l| l.contains("v1") && l.contains("PROBLEM: missing map")));
        assert!(text
            .lines()
            .any(|l| l.contains("* v2") && l.ends_with("current")));
        // Map usage of the sound version only; a map at 90% or more is flagged.
        assert!(text.contains("per-container maps of v2:"), "{text}");
        assert!(!text.contains("per-container maps of v1"), "{text}");
        let row = |name: &str| {
            text.lines()
                .find(|l| l.split_whitespace().next() == Some(name))
                .unwrap_or_else(|| panic!("no {name} row in {text}"))
                .split_whitespace()
                .collect::<Vec<_>>()
        };
        assert_eq!(row("cgroups"), ["cgroups", "3", "65536"]);
        assert_eq!(row("deny4"), ["deny4", "59000", "65536", "NEARLY", "FULL"]);
    }

    #[test]
    fn acquire_json_shape() {
        let r = AcquireReply {
            acquired: tether_api::types::Acquired {
                version: "v1".into(),
                pin_dir: "/p/v1".into(),
                programs: vec![ObjInfo {
                    name: "count".into(),
                    id: 7,
                    ..Default::default()
                }],
                maps: vec![],
            },
            loaded_now: true,
        };
        let v: serde_json::Value = serde_json::to_value(&r).unwrap();
        assert_eq!(v["version"], "v1");
        assert_eq!(v["pin_dir"], "/p/v1");
        assert_eq!(v["programs"][0]["name"], "count");
        assert_eq!(v["programs"][0]["id"], 7);
        assert_eq!(v["loaded_now"], true);
        assert!(acquire_text(&r).contains("programs:    count=7"));
    }
}
