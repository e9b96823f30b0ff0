//! The attachment plan of one container: the node config overlaid with the container's
//! `tether.io/` annotations, validated before runc runs. Pure: no I/O.
use std::path::PathBuf;
use std::time::Duration;

use crate::spec::{Spec, NETWORK_NAMESPACE};
use tether_bpf::{Cidr, ContainerConfig};

use crate::config::Config;
use crate::error::{Error, Result};

/// The annotation prefix; every key under it must be one of [`KEYS`].
pub const PREFIX: &str = "tether.io/";
/// Programs on or off: `all`, `none`, `accounting`, `policy` (comma-separated).
pub const PROGRAMS: &str = "tether.io/programs";
/// Egress deny list: comma-separated IPv4/IPv6 CIDRs (or addresses).
pub const EGRESS_DENY: &str = "tether.io/egress-deny";
/// Interfaces that get TC programs: `all`, `none`, or comma-separated names.
pub const INTERFACES: &str = "tether.io/interfaces";
/// `closed` (fail Create when attaching fails) or `open` (log and go on).
pub const FAILURE_POLICY: &str = "tether.io/failure-policy";
/// Audit events: `denials`, `connections`, `off`.
pub const AUDIT: &str = "tether.io/audit";
/// Keep one audit event in N.
pub const AUDIT_SAMPLE: &str = "tether.io/audit-sample";
/// Audit events per second (and CPU) for this container; 0 = unlimited.
pub const AUDIT_RATE: &str = "tether.io/audit-rate";

/// Where packets and bytes are counted: `auto`, `cgroup` or `interfaces` (see [`CountAt`]).
pub const COUNT_AT: &str = "tether.io/count-at";

pub const KEYS: [&str; 8] = [
    PROGRAMS,
    EGRESS_DENY,
    INTERFACES,
    FAILURE_POLICY,
    AUDIT,
    AUDIT_SAMPLE,
    AUDIT_RATE,
    COUNT_AT,
];

/// Where a container's packets and bytes are counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CountAt {
    /// At the interfaces when runc creates the container's network namespace and it has an
    /// interface besides lo at create (Docker's bridge); at the cgroup otherwise (the host's
    /// namespace, one named in the spec that other containers may share, as a Kubernetes
    /// pod's, or one with only lo, and on kernels whose TC keys are ifindexes alone).
    /// Decided at attach.
    Auto,
    /// At the cgroup: every socket of the container, loopback included. The cgroup_skb
    /// programs run for every packet.
    Cgroup,
    /// At the interfaces of the container's network namespace (lo excluded), by the TC
    /// programs alone; the cgroup_skb programs run only for a policy. Needs a namespace that
    /// is not the host's and interfaces that are not `none`: a container's annotation asking
    /// for it otherwise is refused; the node's config counts such a container at the cgroup.
    Interfaces,
}

/// Which interfaces of the container's network namespace get TC programs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Interfaces {
    All,
    None,
    Named(Vec<String>),
}

/// The container's network namespace as the spec gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Netns {
    /// The host's: cgroup programs only.
    Host,
    /// A new namespace runc creates (found at `/proc/<pid>/ns/net`).
    New,
    /// A namespace that exists already (Kubernetes pods): attach there.
    Path(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub enabled: bool,
    pub config: ContainerConfig,
    pub deny: Vec<Cidr>,
    pub interfaces: Interfaces,
    pub fail_closed: bool,
    pub netns: Netns,
    /// Where packets and bytes are counted. `config.count_at_interfaces` is set for
    /// [`CountAt::Interfaces`]; [`CountAt::Auto`] is decided at attach.
    pub count_at: CountAt,
    pub deadline: Duration,
    /// The nice value the shim's thread runs the attach step at (`None`: its own).
    pub nice: Option<i32>,
}

fn bad(key: &str, value: &str, why: impl std::fmt::Display) -> Error {
    Error::InvalidArgument(format!("{key}={value:?}: {why}"))
}

fn list(v: &str) -> impl Iterator<Item = &str> {
    v.split(',').map(str::trim).filter(|s| !s.is_empty())
}

fn parse_programs(key: &str, v: &str) -> Result<(bool, bool)> {
    let (mut account, mut policy) = (false, false);
    for item in list(v) {
        match item {
            "all" => (account, policy) = (true, true),
            "none" | "off" => (account, policy) = (false, false),
            "accounting" => account = true,
            "policy" => policy = true,
            other => {
                return Err(bad(
                    key,
                    v,
                    format!("unknown program set {other:?} (all, none, accounting, policy)"),
                ))
            }
        }
    }
    Ok((account, policy))
}

fn parse_interfaces(key: &str, v: &str) -> Result<Interfaces> {
    match v.trim() {
        "all" => Ok(Interfaces::All),
        "none" => Ok(Interfaces::None),
        _ => {
            let names: Vec<String> = list(v).map(str::to_string).collect();
            if names.is_empty() {
                return Err(bad(key, v, "empty interface list (use \"none\")"));
            }
            for n in &names {
                if n.len() > 15 || n.contains('/') || n.contains(char::is_whitespace) {
                    return Err(bad(key, v, format!("{n:?} is not an interface name")));
                }
            }
            Ok(Interfaces::Named(names))
        }
    }
}

fn parse_failure(key: &str, v: &str) -> Result<bool> {
    match v.trim() {
        "closed" => Ok(true),
        "open" => Ok(false),
        _ => Err(bad(key, v, "expected \"closed\" or \"open\"")),
    }
}

fn parse_audit(key: &str, v: &str) -> Result<(bool, bool)> {
    match v.trim() {
        "denials" => Ok((true, false)),
        "connections" => Ok((true, true)),
        "off" | "none" => Ok((false, false)),
        _ => Err(bad(
            key,
            v,
            "expected \"denials\", \"connections\" or \"off\"",
        )),
    }
}

fn parse_count_at(key: &str, v: &str) -> Result<CountAt> {
    match v.trim() {
        "auto" => Ok(CountAt::Auto),
        "cgroup" => Ok(CountAt::Cgroup),
        "interfaces" => Ok(CountAt::Interfaces),
        _ => Err(bad(
            key,
            v,
            "expected \"auto\", \"cgroup\" or \"interfaces\"",
        )),
    }
}

fn parse_u32(key: &str, v: &str, min: u32) -> Result<u32> {
    match v.trim().parse::<u32>() {
        Ok(n) if n >= min => Ok(n),
        _ => Err(bad(key, v, format!("expected a whole number >= {min}"))),
    }
}

fn parse_cidrs(key: &str, v: &str, out: &mut Vec<Cidr>) -> Result<()> {
    for item in list(v) {
        let c: Cidr = item.parse().map_err(|e| bad(key, v, e))?;
        if !out.contains(&c) {
            out.push(c);
        }
    }
    Ok(())
}

/// `[attach] nice`: default -20; 0 leaves the thread's own priority.
fn parse_nice(v: Option<i32>) -> Result<Option<i32>> {
    match v.unwrap_or(DEFAULT_NICE) {
        0 => Ok(None),
        n if super::priority::NICE_RANGE.contains(&n) => Ok(Some(n)),
        n => Err(bad(
            "[attach] nice",
            &n.to_string(),
            "expected a nice value from -20 to 19 (0: the shim's own priority)",
        )),
    }
}

/// The attach step's default nice value (see `super::priority`).
pub const DEFAULT_NICE: i32 = -20;

impl Plan {
    /// The network namespace whose interfaces get TC programs (and whose new links are
    /// watched): `None` for the host's or with `interfaces = none`. `pid`: the container's
    /// init, whose namespace a new one is.
    pub fn netns_path(&self, pid: u32) -> Option<PathBuf> {
        match (&self.netns, &self.interfaces) {
            (Netns::Host, _) | (_, Interfaces::None) => None,
            (Netns::New, _) => Some(format!("/proc/{pid}/ns/net").into()),
            (Netns::Path(p), _) => Some(p.clone()),
        }
    }

    /// The interfaces that get TC programs when not all do.
    pub fn only(&self) -> Option<Vec<String>> {
        match &self.interfaces {
            Interfaces::Named(n) => Some(n.clone()),
            _ => None,
        }
    }

    /// Resolves and validates the plan of a container. Every error names the key (config
    /// key or annotation) and its value.
    pub fn resolve(config: &Config, spec: &Spec) -> Result<Plan> {
        let a = &config.attach;
        let ann = spec.annotations();
        for k in ann.keys() {
            if k.starts_with(PREFIX) && !KEYS.contains(&k.as_str()) {
                return Err(Error::InvalidArgument(format!(
                    "unknown annotation {k:?} (tether knows {})",
                    KEYS.join(", ")
                )));
            }
        }
        let get = |k: &str| ann.get(k).map(String::as_str);

        let (mut account, mut policy) = match &a.programs {
            Some(v) => parse_programs("[attach] programs", v)?,
            None => (true, true),
        };
        if let Some(v) = get(PROGRAMS) {
            (account, policy) = parse_programs(PROGRAMS, v)?;
        }
        let mut deny = Vec::new();
        for v in a.egress_deny.iter().flatten() {
            parse_cidrs("[attach] egress_deny", v, &mut deny)?;
        }
        if let Some(v) = get(EGRESS_DENY) {
            parse_cidrs(EGRESS_DENY, v, &mut deny)?;
            // The node's rules may be switched off per container; the container's own
            // rules with the policy off would be dropped without a word.
            if !policy {
                return Err(bad(
                    EGRESS_DENY,
                    v,
                    "the container's programs do not enforce a policy (tether.io/programs or \
                     [attach] programs): drop the rules or enable the policy",
                ));
            }
        }
        let mut interfaces = match &a.interfaces {
            Some(v) => parse_interfaces("[attach] interfaces", v)?,
            None => Interfaces::All,
        };
        if let Some(v) = get(INTERFACES) {
            interfaces = parse_interfaces(INTERFACES, v)?;
        }
        let mut audit = match &a.audit {
            Some(v) => parse_audit("[attach] audit", v)?,
            None => (true, false),
        };
        if let Some(v) = get(AUDIT) {
            audit = parse_audit(AUDIT, v)?;
        }
        let mut sample = a.audit_sample.unwrap_or(1).max(1);
        if let Some(v) = get(AUDIT_SAMPLE) {
            sample = parse_u32(AUDIT_SAMPLE, v, 1)?;
        }
        let mut rate = a.audit_rate.unwrap_or(100);
        if let Some(v) = get(AUDIT_RATE) {
            rate = parse_u32(AUDIT_RATE, v, 0)?;
        }
        let enforce = policy && !deny.is_empty();
        let mut fail_closed = match &a.failure_policy {
            Some(v) => parse_failure("[attach] failure_policy", v)?,
            None => enforce,
        };
        if let Some(v) = get(FAILURE_POLICY) {
            fail_closed = parse_failure(FAILURE_POLICY, v)?;
        }
        let enabled = a.enabled.unwrap_or(true) && (account || enforce);
        let netns = spec
            .namespace(NETWORK_NAMESPACE)
            .map_or(Netns::Host, |n| match &n.path {
                Some(p) => Netns::Path(p.clone()),
                None => Netns::New,
            });
        let mut count_at = (
            "[attach] count_at",
            match &a.count_at {
                Some(v) => parse_count_at("[attach] count_at", v)?,
                None => CountAt::Auto,
            },
        );
        if let Some(v) = get(COUNT_AT) {
            count_at = (COUNT_AT, parse_count_at(COUNT_AT, v)?);
        }
        let no_interfaces = netns == Netns::Host || interfaces == Interfaces::None;
        if count_at.1 == CountAt::Interfaces && no_interfaces && count_at.0 != COUNT_AT {
            // The node's choice, for the containers that have interfaces of their own; a
            // container in the host's namespace, or with no TC programs, has none to count
            // at (refusing it would refuse every host-network container of the node).
            count_at.1 = CountAt::Cgroup;
        }
        if count_at.1 == CountAt::Interfaces && account {
            let value = "interfaces";
            if netns == Netns::Host {
                return Err(bad(
                    count_at.0,
                    value,
                    "the container runs in the host's network namespace: it has no \
                     interfaces of its own to count at (use \"auto\" or \"cgroup\")",
                ));
            }
            if interfaces == Interfaces::None {
                return Err(bad(
                    count_at.0,
                    value,
                    "the container's interfaces get no programs (interfaces \"none\")",
                ));
            }
        }
        let count_at = count_at.1;
        Ok(Plan {
            enabled,
            config: ContainerConfig {
                account,
                policy: enforce,
                audit_denials: audit.0,
                audit_connects: audit.1,
                count_at_interfaces: account && count_at == CountAt::Interfaces,
                sample_every: sample,
                rate_per_sec: rate,
                burst: rate.saturating_mul(2).max(1),
            },
            deny,
            interfaces,
            fail_closed,
            netns,
            count_at,
            deadline: a.deadline(),
            nice: parse_nice(a.nice)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{Linux, Namespace, PID_NAMESPACE};
    use std::collections::HashMap;
    use std::path::Path;

    fn spec(ann: &[(&str, &str)], netns: Option<Option<&str>>) -> Spec {
        let mut namespaces = vec![Namespace {
            typ: PID_NAMESPACE.into(),
            path: None,
        }];
        if let Some(path) = netns {
            namespaces.push(Namespace {
                typ: NETWORK_NAMESPACE.into(),
                path: path.map(PathBuf::from),
            });
        }
        Spec {
            annotations: Some(
                ann.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect::<HashMap<_, _>>(),
            ),
            linux: Some(Linux {
                namespaces: Some(namespaces),
            }),
        }
    }

    fn cfg(text: &str) -> Config {
        Config::parse(text, Path::new("t.toml")).unwrap()
    }

    #[test]
    fn defaults_account_without_enforcing() {
        let p = Plan::resolve(&Config::default(), &spec(&[], Some(None))).unwrap();
        assert!(p.enabled && p.config.account && !p.config.policy);
        assert!(!p.fail_closed, "nothing enforced: fail open");
        assert_eq!(p.interfaces, Interfaces::All);
        assert_eq!(p.netns, Netns::New);
        assert_eq!(p.deadline, Duration::from_secs(2));
        assert_eq!(p.nice, Some(DEFAULT_NICE));
    }

    #[test]
    fn where_packets_are_counted() {
        let own = spec(&[], Some(None));
        // Default: decided at attach; the plan itself counts at the cgroup.
        let p = Plan::resolve(&Config::default(), &own).unwrap();
        assert_eq!(p.count_at, CountAt::Auto);
        assert!(!p.config.count_at_interfaces);
        let p = Plan::resolve(&cfg("[attach]\ncount_at = \"interfaces\"\n"), &own).unwrap();
        assert_eq!(p.count_at, CountAt::Interfaces);
        assert!(p.config.count_at_interfaces);
        // The annotation wins over the node's config.
        let s = spec(&[(COUNT_AT, "cgroup")], Some(None));
        let p = Plan::resolve(&cfg("[attach]\ncount_at = \"interfaces\"\n"), &s).unwrap();
        assert_eq!(p.count_at, CountAt::Cgroup);
        assert!(!p.config.count_at_interfaces);
        // A pod's namespace, named in the spec: at the interfaces only when asked.
        let s = spec(
            &[(COUNT_AT, "interfaces")],
            Some(Some("/var/run/netns/pod")),
        );
        assert!(
            Plan::resolve(&Config::default(), &s)
                .unwrap()
                .config
                .count_at_interfaces
        );
        // No counting: nothing to count anywhere, and nothing to refuse.
        let s = spec(
            &[(COUNT_AT, "interfaces"), (PROGRAMS, "policy")],
            Some(None),
        );
        assert!(
            !Plan::resolve(&Config::default(), &s)
                .unwrap()
                .config
                .count_at_interfaces
        );
        // The node's choice leaves the containers without interfaces at the cgroup.
        let node = cfg("[attach]\ncount_at = \"interfaces\"\n");
        for s in [spec(&[], None), spec(&[(INTERFACES, "none")], Some(None))] {
            let p = Plan::resolve(&node, &s).unwrap();
            assert_eq!(p.count_at, CountAt::Cgroup);
            assert!(!p.config.count_at_interfaces);
        }
        // A container's own annotation is refused, naming the key: no interfaces to count at.
        for (ann, conf, netns, key, why) in [
            (
                vec![(COUNT_AT, "interfaces")],
                "",
                None,
                COUNT_AT,
                "host's network namespace",
            ),
            (
                vec![(COUNT_AT, "interfaces"), (INTERFACES, "none")],
                "",
                Some(None),
                COUNT_AT,
                "interfaces \"none\"",
            ),
            (
                vec![(COUNT_AT, "eth0")],
                "",
                Some(None),
                COUNT_AT,
                "expected \"auto\"",
            ),
        ] {
            let e = Plan::resolve(&cfg(conf), &spec(&ann, netns)).unwrap_err();
            let m = e.to_string();
            assert!(m.contains(key) && m.contains(why), "{m}");
        }
    }

    #[test]
    fn attach_step_priority() {
        let s = spec(&[], Some(None));
        let p = Plan::resolve(&cfg("[attach]\nnice = -5\n"), &s).unwrap();
        assert_eq!(p.nice, Some(-5));
        let p = Plan::resolve(&cfg("[attach]\nnice = 0\n"), &s).unwrap();
        assert_eq!(p.nice, None, "0: the shim's own priority");
        for bad in ["-21", "20"] {
            let e = Plan::resolve(&cfg(&format!("[attach]\nnice = {bad}\n")), &s).unwrap_err();
            let m = e.to_string();
            assert!(m.contains("[attach] nice") && m.contains(bad), "{m}");
        }
    }

    #[test]
    fn deny_annotation_enforces_and_fails_closed() {
        let p = Plan::resolve(
            &Config::default(),
            &spec(&[(EGRESS_DENY, "127.0.0.2, fd00::/8")], Some(None)),
        )
        .unwrap();
        assert!(p.config.policy && p.fail_closed);
        assert_eq!(p.deny.len(), 2);
        let p = Plan::resolve(
            &Config::default(),
            &spec(
                &[(EGRESS_DENY, "127.0.0.2"), (FAILURE_POLICY, "open")],
                Some(None),
            ),
        )
        .unwrap();
        assert!(!p.fail_closed);
    }

    #[test]
    fn config_and_annotations_combine() {
        let c = cfg("[attach]\negress_deny = [\"10.0.0.0/8\"]\ninterfaces = \"eth0\"\naudit = \"connections\"\n");
        let p = Plan::resolve(&c, &spec(&[(EGRESS_DENY, "192.0.2.1")], Some(None))).unwrap();
        assert_eq!(p.deny.len(), 2);
        assert_eq!(p.interfaces, Interfaces::Named(vec!["eth0".into()]));
        assert!(p.config.audit_connects);
        let p = Plan::resolve(&c, &spec(&[(PROGRAMS, "none")], Some(None))).unwrap();
        assert!(!p.enabled);
    }

    #[test]
    fn host_and_existing_netns() {
        let p = Plan::resolve(&Config::default(), &spec(&[], None)).unwrap();
        assert_eq!(p.netns, Netns::Host);
        let p = Plan::resolve(
            &Config::default(),
            &spec(&[], Some(Some("/var/run/netns/pod"))),
        )
        .unwrap();
        assert_eq!(p.netns, Netns::Path("/var/run/netns/pod".into()));
    }

    #[test]
    fn bad_values_name_key_and_value() {
        for (k, v, why) in [
            (EGRESS_DENY, "10.0.0.1/8", "host bits"),
            (EGRESS_DENY, "banana", "not an IPv4"),
            (PROGRAMS, "everything", "unknown program set"),
            (FAILURE_POLICY, "maybe", "closed"),
            (AUDIT_SAMPLE, "0", ">= 1"),
            (AUDIT_RATE, "-3", "whole number"),
            (INTERFACES, "a/b", "not an interface"),
        ] {
            let e = Plan::resolve(&Config::default(), &spec(&[(k, v)], Some(None)))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(k) && e.contains(v) && e.contains(why),
                "{k}={v}: {e}"
            );
        }
        // A container's own deny rules with its policy off.
        for programs in ["accounting", "none"] {
            let e = Plan::resolve(
                &Config::default(),
                &spec(
                    &[(PROGRAMS, programs), (EGRESS_DENY, "10.0.0.0/8")],
                    Some(None),
                ),
            )
            .unwrap_err()
            .to_string();
            assert!(
                e.contains(EGRESS_DENY) && e.contains("do not enforce a policy"),
                "{e}"
            );
        }
        // The node's rules with the policy off for one container: accounting only.
        let node = Config::parse(
            "[attach]\negress_deny = [\"10.0.0.0/8\"]\n",
            std::path::Path::new("t"),
        )
        .unwrap();
        let p = Plan::resolve(&node, &spec(&[(PROGRAMS, "accounting")], Some(None))).unwrap();
        assert!(!p.config.policy && p.config.account);
        let e = Plan::resolve(
            &Config::default(),
            &spec(&[("tether.io/egres-deny", "x")], Some(None)),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("unknown annotation") && e.contains("tether.io/egres-deny"),
            "{e}"
        );
        let c = cfg("[attach]\negress_deny = [\"nope\"]\n");
        let e = Plan::resolve(&c, &spec(&[], Some(None)))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("[attach] egress_deny") && e.contains("nope"),
            "{e}"
        );
    }
}
