//! The attachment plan of one container: the node config overlaid with the container's
//! `tether.io/` annotations, validated before runc runs. Pure: no I/O.
use std::path::PathBuf;
use std::time::Duration;

use crate::spec::{Spec, NETWORK_NAMESPACE};
use tether_bpf::container::{Select, DEFAULT_MAX_INTERFACES};
use tether_bpf::maps::K8sNames;
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

/// What containerd's CRI plugin says a container is: `sandbox` (the pod's pause container,
/// which owns the pod's network namespace) or `container` (one that joins it).
pub const CRI_CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
/// The pod's name, its namespace, and the container's name, as the CRI plugin writes them.
pub const CRI_POD_NAME: &str = "io.kubernetes.cri.sandbox-name";
pub const CRI_POD_NAMESPACE: &str = "io.kubernetes.cri.sandbox-namespace";
pub const CRI_CONTAINER_NAME: &str = "io.kubernetes.cri.container-name";

/// Every key tether knows.
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

/// The keys a container may set when the node's `[attach] annotations` names none: those
/// that can only add to the node's policy or leave it as it is (each value is still held
/// to the node's floor). The audit's sampling and rate are the node's to give away: a
/// container that could raise its rate could crowd the shared event ring.
pub const DEFAULT_ALLOWED: [&str; 6] = [
    EGRESS_DENY,
    PROGRAMS,
    INTERFACES,
    FAILURE_POLICY,
    AUDIT,
    COUNT_AT,
];

/// Where a container's packets and bytes are counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CountAt {
    /// At the interfaces when runc creates the container's network namespace and it has an
    /// interface besides lo by start (Docker's bridge, `ctr run --cni`); at the cgroup
    /// otherwise (the host's namespace, one named in the spec that other containers may
    /// share, as a Kubernetes pod's, or one with only lo). Decided at attach, and again
    /// just before start for a container that had no interface at create.
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

/// Where the packets of a container under a policy are judged (`[attach] judge_at`).
/// Only a container whose network namespace runc creates, every interface of which gets TC
/// programs, can be judged at its interfaces: TC sees every packet it sends there but its
/// own loopback's. Any other is judged at its cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JudgeAt {
    /// At the interfaces when the container has an interface besides lo by start and
    /// nothing else needs the cgroup_skb hooks (it is counted at its interfaces, or not at
    /// all); at the cgroup otherwise. Decided as [`CountAt::Auto`] is.
    Auto,
    /// By the cgroup_skb egress program: a denied send of a socket fails with EPERM.
    Cgroup,
    /// By the TC egress program of each interface; no cgroup_skb egress program.
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
    /// Where a container under a policy is judged: [`JudgeAt::Interfaces`] sets
    /// `config.judge_at_interfaces`, [`JudgeAt::Auto`] is decided at attach, and a
    /// container whose interfaces TC does not all see is [`JudgeAt::Cgroup`].
    pub judge_at: JudgeAt,
    pub deadline: Duration,
    /// The nice value the shim's thread runs the attach step at (`None`: its own).
    pub nice: Option<i32>,
    /// The quota of interfaces of the container's network namespace that get TC programs.
    pub max_interfaces: usize,
    /// Whether links added to the namespace later get programs from this container's
    /// attachment: not for a container of a Kubernetes pod, whose sandbox's attachment
    /// owns the pod's interfaces, present and late (so they are counted for the pod, and
    /// stay attached while its containers come and go).
    pub watch_links: bool,
    /// Who the container is to Kubernetes, for what tetherd reports (a container of a pod
    /// that containerd's CRI plugin made; `None` for any other).
    pub k8s_names: Option<K8sNames>,
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

/// `[attach] judge_at`: where the packets of a container under a policy whose network
/// namespace runc creates (and every interface of which gets TC programs) are judged.
fn parse_judge_at(v: &str) -> Result<JudgeAt> {
    match v.trim() {
        "auto" => Ok(JudgeAt::Auto),
        "cgroup" => Ok(JudgeAt::Cgroup),
        "interfaces" => Ok(JudgeAt::Interfaces),
        _ => Err(bad(
            "[attach] judge_at",
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

/// An annotation's value that would lower what the node sets: refused, naming both.
fn lowers(key: &str, value: &str, node: &str, what: impl std::fmt::Display) -> Error {
    Error::InvalidArgument(format!(
        "{key}={value:?} would lower the node's policy ({node}): {what}; an annotation may \
         only make a container stricter than the node"
    ))
}

/// How a node setting reads in an error: `[attach] key = "value"`, or its default.
fn node_setting(key: &str, set: Option<&str>, default: &str) -> String {
    match set {
        Some(v) => format!("[attach] {key} = {v:?}"),
        None => format!("[attach] {key} unset, default {default:?}"),
    }
}

/// The keys the node lets containers set: `[attach] annotations`, each a known key, or
/// [`DEFAULT_ALLOWED`].
fn allowed_keys(config: &Config) -> Result<Vec<&str>> {
    let Some(list) = &config.attach.annotations else {
        return Ok(DEFAULT_ALLOWED.to_vec());
    };
    list.iter()
        .map(|k| {
            KEYS.iter()
                .copied()
                .find(|known| known == k)
                .ok_or_else(|| {
                    bad(
                        "[attach] annotations",
                        k,
                        format!("not a tether annotation (tether knows {})", KEYS.join(", ")),
                    )
                })
        })
        .collect()
}

/// Whether the interfaces `a` covers include all of `b`'s.
fn covers(a: &Interfaces, b: &Interfaces) -> bool {
    match (a, b) {
        (Interfaces::All, _) | (_, Interfaces::None) => true,
        (Interfaces::Named(a), Interfaces::Named(b)) => b.iter().all(|n| a.contains(n)),
        _ => false,
    }
}

/// An audit setting's rank: off < denials < connections.
fn audit_rank(a: (bool, bool)) -> u8 {
    u8::from(a.0) + u8::from(a.1)
}

/// The default quota of deny rules per container (`[attach] max_rules`), the node's and
/// the container's together. Each is an entry of a map every container shares (65,536
/// entries): at 256, a node's 110 pods (Kubernetes' default maximum) at their quota fill
/// less than half of it.
pub const DEFAULT_MAX_RULES: u32 = 256;

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

    /// Which interfaces get TC programs, and how many may: what an [`Attachment`] keeps.
    ///
    /// [`Attachment`]: super::cgroup_netns::Attachment
    pub fn tc_select(&self) -> TcSelect {
        TcSelect {
            only: self.only(),
            max: self.max_interfaces,
        }
    }

    /// Resolves and validates the plan of a container. Every error names the key (config
    /// key or annotation) and its value. The node's config is a floor: a container's
    /// annotations may add deny rules and make it stricter, never lower what the node sets
    /// (an annotation that would is refused, naming the node's setting), and only the keys
    /// the node allows (`[attach] annotations`) may be set at all.
    pub fn resolve(config: &Config, spec: &Spec) -> Result<Plan> {
        let a = &config.attach;
        let ann = spec.annotations();
        let allowed = allowed_keys(config)?;
        let mut keys: Vec<&String> = ann.keys().filter(|k| k.starts_with(PREFIX)).collect();
        keys.sort();
        for k in keys {
            if !KEYS.contains(&k.as_str()) {
                return Err(Error::InvalidArgument(format!(
                    "unknown annotation {k:?} (tether knows {})",
                    KEYS.join(", ")
                )));
            }
            if !allowed.contains(&k.as_str()) {
                let list = if allowed.is_empty() {
                    "none".to_string()
                } else {
                    allowed.join(", ")
                };
                return Err(Error::InvalidArgument(format!(
                    "annotation {k:?} is not one this node lets containers set ([attach] \
                     annotations allows {list})"
                )));
            }
        }
        let get = |k: &str| ann.get(k).map(String::as_str);

        let node_programs = match &a.programs {
            Some(v) => parse_programs("[attach] programs", v)?,
            None => (true, true),
        };
        let mut node_deny = Vec::new();
        for v in a.egress_deny.iter().flatten() {
            parse_cidrs("[attach] egress_deny", v, &mut node_deny)?;
        }
        // What the node enforces on every container: its rules, with its policy on.
        let node_enforces = node_programs.1 && !node_deny.is_empty();
        let (mut account, mut policy) = node_programs;
        if let Some(v) = get(PROGRAMS) {
            (account, policy) = parse_programs(PROGRAMS, v)?;
            let node = node_setting("programs", a.programs.as_deref(), "all");
            if node_programs.0 && !account {
                return Err(lowers(PROGRAMS, v, &node, "it switches accounting off"));
            }
            if node_enforces && !policy {
                return Err(lowers(
                    PROGRAMS,
                    v,
                    &format!("{node}, and [attach] egress_deny"),
                    "it switches off the policy that enforces the node's deny rules",
                ));
            }
        }
        let mut deny = node_deny;
        if let Some(v) = get(EGRESS_DENY) {
            parse_cidrs(EGRESS_DENY, v, &mut deny)?;
            // The container's own rules with the policy off would be dropped without a word.
            if !policy {
                return Err(bad(
                    EGRESS_DENY,
                    v,
                    "the container's programs do not enforce a policy (tether.io/programs or \
                     [attach] programs): drop the rules or enable the policy",
                ));
            }
        }
        // A quota on the node's shared deny maps: one container cannot fill them for all.
        let max_rules = a.max_rules.unwrap_or(DEFAULT_MAX_RULES) as usize;
        if deny.len() > max_rules {
            let node_rules = a.egress_deny.iter().flatten().count();
            return Err(match get(EGRESS_DENY) {
                Some(v) if node_rules <= max_rules => bad(
                    EGRESS_DENY,
                    v,
                    format!(
                        "{} deny rules with the node's exceed the quota of {max_rules} per \
                         container ([attach] max_rules)",
                        deny.len()
                    ),
                ),
                _ => Error::InvalidArgument(format!(
                    "[attach] egress_deny: {node_rules} rules exceed [attach] max_rules = \
                     {max_rules}"
                )),
            });
        }
        let node_interfaces = match &a.interfaces {
            Some(v) => parse_interfaces("[attach] interfaces", v)?,
            None => Interfaces::All,
        };
        let mut interfaces = node_interfaces.clone();
        if let Some(v) = get(INTERFACES) {
            interfaces = parse_interfaces(INTERFACES, v)?;
            if !covers(&interfaces, &node_interfaces) {
                let node = node_setting("interfaces", a.interfaces.as_deref(), "all");
                return Err(lowers(
                    INTERFACES,
                    v,
                    &node,
                    "it leaves out interfaces the node gives programs",
                ));
            }
        }
        let node_audit = match &a.audit {
            Some(v) => parse_audit("[attach] audit", v)?,
            None => (true, false),
        };
        let mut audit = node_audit;
        if let Some(v) = get(AUDIT) {
            audit = parse_audit(AUDIT, v)?;
            if audit_rank(audit) < audit_rank(node_audit) {
                let node = node_setting("audit", a.audit.as_deref(), "denials");
                return Err(lowers(AUDIT, v, &node, "it audits less than the node"));
            }
        }
        let node_sample = a.audit_sample.unwrap_or(1).max(1);
        let mut sample = node_sample;
        if let Some(v) = get(AUDIT_SAMPLE) {
            sample = parse_u32(AUDIT_SAMPLE, v, 1)?;
            if sample > node_sample {
                let node = format!("[attach] audit_sample = {node_sample}");
                return Err(lowers(
                    AUDIT_SAMPLE,
                    v,
                    &node,
                    "it keeps fewer audit events than the node",
                ));
            }
        }
        let node_rate = a.audit_rate.unwrap_or(100);
        let mut rate = node_rate;
        if let Some(v) = get(AUDIT_RATE) {
            rate = parse_u32(AUDIT_RATE, v, 0)?;
            // 0 is unlimited: the most a container can keep.
            if rate != 0 && (node_rate == 0 || rate < node_rate) {
                let node = format!("[attach] audit_rate = {node_rate} (0: unlimited)");
                return Err(lowers(
                    AUDIT_RATE,
                    v,
                    &node,
                    "it keeps fewer audit events than the node",
                ));
            }
        }
        let enforce = policy && !deny.is_empty();
        let node_closed = match &a.failure_policy {
            Some(v) => parse_failure("[attach] failure_policy", v)?,
            None => node_enforces,
        };
        let mut fail_closed = match &a.failure_policy {
            Some(_) => node_closed,
            None => enforce,
        };
        if let Some(v) = get(FAILURE_POLICY) {
            fail_closed = parse_failure(FAILURE_POLICY, v)?;
            if node_closed && !fail_closed {
                let node = match &a.failure_policy {
                    Some(p) => format!("[attach] failure_policy = {p:?}"),
                    None => "[attach] egress_deny, which fails closed".to_string(),
                };
                return Err(lowers(
                    FAILURE_POLICY,
                    v,
                    &node,
                    "a container the node fails closed must not run unattached",
                ));
            }
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
            let asked = parse_count_at(COUNT_AT, v)?;
            // Where to count is the node's to say when it says it.
            if a.count_at.is_some() && asked != count_at.1 {
                let node = node_setting("count_at", a.count_at.as_deref(), "auto");
                return Err(lowers(
                    COUNT_AT,
                    v,
                    &node,
                    "the node decides where its containers are counted",
                ));
            }
            count_at = (COUNT_AT, asked);
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
        // Judged at TC alone only where TC sees every packet the container sends: a
        // namespace of its own (no other container's programs own its interfaces), every
        // interface of it attached, present and late.
        let node_judge_at = match a.judge_at.as_deref() {
            Some(v) => parse_judge_at(v)?,
            None => JudgeAt::Auto,
        };
        let judge_at = if enforce && netns == Netns::New && interfaces == Interfaces::All {
            node_judge_at
        } else {
            JudgeAt::Cgroup
        };
        let judge_at_interfaces = judge_at == JudgeAt::Interfaces;
        let pod_member = spec
            .annotations()
            .get(CRI_CONTAINER_TYPE)
            .is_some_and(|t| t == "container");
        Ok(Plan {
            enabled,
            config: ContainerConfig {
                account,
                policy: enforce,
                audit_denials: audit.0,
                audit_connects: audit.1,
                count_at_interfaces: account && count_at == CountAt::Interfaces,
                // No TC program judges what its packet sockets write.
                refuse_packet_sockets: enforce
                    && (netns == Netns::Host || interfaces == Interfaces::None),
                judge_at_interfaces,
                sample_every: sample,
                rate_per_sec: rate,
                burst: rate.saturating_mul(2).max(1),
            },
            deny,
            interfaces,
            fail_closed,
            netns,
            count_at,
            judge_at,
            deadline: a.deadline(),
            nice: parse_nice(a.nice)?,
            max_interfaces: a
                .max_interfaces
                .map_or(DEFAULT_MAX_INTERFACES, |n| n as usize),
            watch_links: !pod_member,
            k8s_names: k8s_names(spec),
        })
    }
}

/// The container's Kubernetes names from the CRI plugin's annotations: a pod's sandbox
/// has no container name.
fn k8s_names(spec: &Spec) -> Option<K8sNames> {
    let ann = spec.annotations();
    let get = |k: &str| ann.get(k).cloned().unwrap_or_default();
    let pod = ann.get(CRI_POD_NAME)?.clone();
    Some(K8sNames {
        namespace: get(CRI_POD_NAMESPACE),
        pod,
        container: get(CRI_CONTAINER_NAME),
    })
}

/// The owned form of [`Select`]: which interfaces of a container's namespace get TC
/// programs (those named, else all), and the quota.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcSelect {
    pub only: Option<Vec<String>>,
    pub max: usize,
}

impl TcSelect {
    pub fn as_select(&self) -> Select<'_> {
        Select {
            only: self.only.as_deref(),
            max: self.max,
        }
    }
}

#[cfg(test)]
mod tests;
