//! The readable one-line form of an audit event for `tetherctl events`.

use std::time::{Duration, UNIX_EPOCH};
use tether_api::types::AuditEvent;

use crate::ctl::format::{pod_cell, short_id};

/// `1700000000123456789` -> `2023-11-14T22:13:20.123Z`.
pub fn rfc3339_millis(ts_ns: u64) -> String {
    let t = UNIX_EPOCH + Duration::from_nanos(ts_ns);
    humantime::format_rfc3339_millis(t).to_string()
}

/// A readable one-line rendering of an audit event.
pub fn event_line(e: &AuditEvent) -> String {
    format!(
        "{}  {:<14} {} ({}{})  {}/{} -> {}:{}  pid {}{}",
        rfc3339_millis(e.ts_ns),
        e.kind,
        short_id(&e.id),
        e.namespace,
        match &e.kubernetes {
            Some(k) => format!(", pod {}", pod_cell(Some(k))),
            None => String::new(),
        },
        e.protocol,
        e.family,
        if e.family == "ipv6" {
            format!("[{}]", e.daddr)
        } else {
            e.daddr.clone()
        },
        e.dport,
        e.pid,
        if e.ifindex != 0 {
            format!("  ifindex {}", e.ifindex)
        } else {
            String::new()
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        assert_eq!(rfc3339_millis(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            rfc3339_millis(1_700_000_000_123_456_789),
            "2023-11-14T22:13:20.123Z"
        );
        assert_eq!(
            rfc3339_millis(951_782_400_000_000_000),
            "2000-02-29T00:00:00.000Z"
        );
    }

    #[test]
    fn event_one_liner() {
        let e = AuditEvent {
            ts_ns: 1_700_000_000_000_000_000,
            id: "0123456789abcdef".into(),
            namespace: "default".into(),
            kind: "deny_connect".into(),
            family: "ipv6".into(),
            protocol: "tcp".into(),
            daddr: "2001:db8::1".into(),
            dport: 443,
            pid: 42,
            ..Default::default()
        };
        assert_eq!(
            event_line(&e),
            "2023-11-14T22:13:20.000Z  deny_connect   0123456789ab (default)  tcp/ipv6 -> [2001:db8::1]:443  pid 42"
        );
        let in_pod = AuditEvent {
            namespace: "k8s.io".into(),
            kubernetes: Some(tether_api::types::KubernetesNames {
                namespace: "shop".into(),
                pod: "web".into(),
                container: "nginx".into(),
            }),
            ..e
        };
        assert!(
            event_line(&in_pod).contains(" 0123456789ab (k8s.io, pod shop/web/nginx)  "),
            "{}",
            event_line(&in_pod)
        );
    }
}
