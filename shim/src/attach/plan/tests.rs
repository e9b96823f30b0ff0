//! The plan's resolution, against node configs and annotations.
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
            ..Default::default()
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
    assert_eq!(p.max_interfaces, DEFAULT_MAX_INTERFACES);
    let p = Plan::resolve(&cfg("[attach]\nmax_interfaces = 5\n"), &spec(&[], None)).unwrap();
    assert_eq!(p.tc_select().as_select().max, 5);
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
    // The annotation decides where the node leaves it to the default.
    let s = spec(&[(COUNT_AT, "interfaces")], Some(None));
    let p = Plan::resolve(&Config::default(), &s).unwrap();
    assert_eq!(p.count_at, CountAt::Interfaces);
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
    let s = spec(&[(COUNT_AT, "interfaces")], Some(None));
    assert!(
        !Plan::resolve(&cfg("[attach]\nprograms = \"policy\"\n"), &s)
            .unwrap()
            .config
            .count_at_interfaces
    );
    // The node's choice leaves the containers without interfaces at the cgroup.
    for (conf, s) in [
        ("", spec(&[], None)),
        ("interfaces = \"none\"\n", spec(&[], Some(None))),
    ] {
        let node = cfg(&format!("[attach]\ncount_at = \"interfaces\"\n{conf}"));
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
            vec![(COUNT_AT, "interfaces")],
            "[attach]\ninterfaces = \"none\"\n",
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
    let p = Plan::resolve(&cfg("[attach]\nprograms = \"none\"\n"), &spec(&[], None)).unwrap();
    assert!(!p.enabled);
}

/// A node config that lets containers set every key.
fn all_keys() -> Config {
    let keys: Vec<String> = KEYS.iter().map(|k| format!("{k:?}")).collect();
    cfg(&format!("[attach]\nannotations = [{}]\n", keys.join(", ")))
}

/// Resolves `ann` on a new netns under the node config `conf`; the error's text.
fn refused(conf: &str, ann: &[(&str, &str)]) -> String {
    match Plan::resolve(&cfg(conf), &spec(ann, Some(None))) {
        Ok(p) => panic!("{ann:?} under {conf:?} resolved: {p:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn the_node_is_a_floor() {
    let rules = "[attach]\negress_deny = [\"10.0.0.0/8\"]\n";
    let every = {
        let keys: Vec<String> = KEYS.iter().map(|k| format!("{k:?}")).collect();
        format!("annotations = [{}]\n", keys.join(", "))
    };
    // Each annotation that would lower the node's setting: refused, naming the key,
    // the value and the node's setting.
    for (conf, ann, node) in [
        (rules.to_string(), (PROGRAMS, "none"), "[attach] programs"),
        (
            rules.to_string(),
            (PROGRAMS, "accounting"),
            "[attach] egress_deny",
        ),
        (
            "".into(),
            (PROGRAMS, "policy"),
            "[attach] programs unset, default \"all\"",
        ),
        ("".into(), (INTERFACES, "none"), "[attach] interfaces"),
        (
            "[attach]\ninterfaces = \"eth0,eth1\"\n".into(),
            (INTERFACES, "eth0"),
            "\"eth0,eth1\"",
        ),
        (
            rules.to_string(),
            (FAILURE_POLICY, "open"),
            "[attach] egress_deny",
        ),
        (
            "[attach]\nfailure_policy = \"closed\"\n".into(),
            (FAILURE_POLICY, "open"),
            "failure_policy = \"closed\"",
        ),
        ("".into(), (AUDIT, "off"), "[attach] audit"),
        (
            "[attach]\naudit = \"connections\"\n".into(),
            (AUDIT, "denials"),
            "\"connections\"",
        ),
        (
            format!("[attach]\naudit_sample = 4\n{every}"),
            (AUDIT_SAMPLE, "5"),
            "audit_sample = 4",
        ),
        (
            format!("[attach]\n{every}"),
            (AUDIT_RATE, "50"),
            "audit_rate = 100",
        ),
        (
            format!("[attach]\naudit_rate = 0\n{every}"),
            (AUDIT_RATE, "1000"),
            "audit_rate = 0",
        ),
        (
            "[attach]\ncount_at = \"cgroup\"\n".into(),
            (COUNT_AT, "interfaces"),
            "count_at = \"cgroup\"",
        ),
    ] {
        let e = refused(&conf, &[ann]);
        assert!(
            e.contains(ann.0) && e.contains(ann.1) && e.contains(node) && e.contains("lower"),
            "{ann:?} under {conf:?}: {e}"
        );
    }
    // What only adds, or leaves the node's setting as it is, resolves.
    for (conf, ann) in [
        (rules.to_string(), vec![(EGRESS_DENY, "192.0.2.1")]),
        (
            rules.to_string(),
            vec![(PROGRAMS, "all"), (FAILURE_POLICY, "closed")],
        ),
        ("".into(), vec![(PROGRAMS, "accounting")]),
        (
            "[attach]\nprograms = \"accounting\"\n".into(),
            vec![(PROGRAMS, "all"), (EGRESS_DENY, "192.0.2.1")],
        ),
        (
            "[attach]\ninterfaces = \"eth0\"\n".into(),
            vec![(INTERFACES, "eth0,eth1")],
        ),
        (
            "[attach]\ninterfaces = \"eth0\"\n".into(),
            vec![(INTERFACES, "all")],
        ),
        ("".into(), vec![(AUDIT, "connections")]),
        (
            "".into(),
            vec![(EGRESS_DENY, "192.0.2.1"), (FAILURE_POLICY, "open")],
        ),
        (
            format!("[attach]\naudit_sample = 4\n{every}"),
            vec![(AUDIT_SAMPLE, "2")],
        ),
        (format!("[attach]\n{every}"), vec![(AUDIT_RATE, "0")]),
        (format!("[attach]\n{every}"), vec![(AUDIT_RATE, "500")]),
        (
            "[attach]\ncount_at = \"cgroup\"\n".into(),
            vec![(COUNT_AT, "cgroup")],
        ),
    ] {
        if let Err(e) = Plan::resolve(&cfg(&conf), &spec(&ann, Some(None))) {
            panic!("{ann:?} under {conf:?}: {e}");
        }
    }
    let p = Plan::resolve(
        &cfg(rules),
        &spec(
            &[(EGRESS_DENY, "192.0.2.1"), (AUDIT, "connections")],
            Some(None),
        ),
    )
    .unwrap();
    assert!(p.config.policy && p.fail_closed && p.config.audit_connects);
    assert_eq!(p.deny.len(), 2, "the container's rule adds to the node's");
}

#[test]
fn deny_rules_have_a_quota() {
    let many = |n: usize| -> String {
        (0..n)
            .map(|i| format!("10.{}.{}.0/24", i / 256, i % 256))
            .collect::<Vec<_>>()
            .join(",")
    };
    let rules = "[attach]\negress_deny = [\"192.0.2.0/24\"]\nmax_rules = 8\n";
    let p = Plan::resolve(&cfg(rules), &spec(&[(EGRESS_DENY, &many(7))], Some(None)));
    assert_eq!(p.unwrap().deny.len(), 8);
    let e = refused(rules, &[(EGRESS_DENY, &many(8))]);
    assert!(
        e.contains(EGRESS_DENY) && e.contains("9 deny rules") && e.contains("max_rules"),
        "{e}"
    );
    // The default quota.
    let e = refused("", &[(EGRESS_DENY, &many(DEFAULT_MAX_RULES as usize + 1))]);
    assert!(e.contains("quota of 256"), "{e}");
    // The node's own rules over its quota: the config's error.
    let e = refused(
        "[attach]\negress_deny = [\"192.0.2.0/24\", \"198.51.100.0/24\"]\nmax_rules = 1\n",
        &[],
    );
    assert!(e.contains("[attach] egress_deny: 2 rules"), "{e}");
}

#[test]
fn only_the_keys_the_node_allows() {
    // By default the audit's sampling and rate are the node's.
    for k in [AUDIT_SAMPLE, AUDIT_RATE] {
        let e = refused("", &[(k, "1")]);
        assert!(
            e.contains(k) && e.contains("[attach] annotations allows tether.io/egress-deny"),
            "{e}"
        );
    }
    // A node that allows only deny rules.
    let conf = "[attach]\nannotations = [\"tether.io/egress-deny\"]\n";
    let e = refused(conf, &[(AUDIT, "connections")]);
    assert!(
        e.contains(AUDIT) && e.contains("allows tether.io/egress-deny)"),
        "{e}"
    );
    Plan::resolve(&cfg(conf), &spec(&[(EGRESS_DENY, "192.0.2.1")], Some(None))).unwrap();
    // None at all.
    let e = refused(
        "[attach]\nannotations = []\n",
        &[(EGRESS_DENY, "192.0.2.1")],
    );
    assert!(e.contains("allows none"), "{e}");
    // A key in the list that tether does not know is the config's error.
    let e = refused("[attach]\nannotations = [\"tether.io/egres-deny\"]\n", &[]);
    assert!(
        e.contains("[attach] annotations") && e.contains("tether.io/egres-deny"),
        "{e}"
    );
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
fn packet_sockets_refused_only_where_no_tc_program_judges_them() {
    let deny = [(EGRESS_DENY, "192.0.2.0/24")];
    let refuse = |spec| {
        Plan::resolve(&all_keys(), &spec)
            .unwrap()
            .config
            .refuse_packet_sockets
    };
    // Host network under a policy: nothing judges its frames.
    assert!(refuse(spec(&deny, None)));
    // Its own namespace: TC judges them; or no policy at all.
    assert!(!refuse(spec(&deny, Some(None))));
    assert!(!refuse(spec(&[], None)));
    // Its own namespace, where the node selects no interface.
    let none = cfg("[attach]\ninterfaces = \"none\"\negress_deny = [\"192.0.2.0/24\"]\n");
    assert!(
        Plan::resolve(&none, &spec(&[], Some(None)))
            .unwrap()
            .config
            .refuse_packet_sockets
    );
}

#[test]
fn judged_at_the_interfaces_only_where_tc_sees_every_packet() {
    let node = |extra: &str| {
        cfg(&format!(
            "[attach]\njudge_at = \"interfaces\"\negress_deny = [\"192.0.2.0/24\"]\n{extra}"
        ))
    };
    let judged = |c: &Config, s: &Spec| Plan::resolve(c, s).unwrap().config.judge_at_interfaces;
    // Its own namespace, every interface attached: judged at TC; counted there too, it has
    // no cgroup egress program.
    let p = Plan::resolve(&node("count_at = \"interfaces\"\n"), &spec(&[], Some(None))).unwrap();
    assert!(p.config.judge_at_interfaces && p.config.policy);
    assert!(!tether_bpf::programs::Prog::CgroupEgress.used_by(&p.config));
    // The host's network, a namespace others may share (a pod's), some interfaces only, or
    // none: the cgroup egress program judges.
    assert!(!judged(&node(""), &spec(&[], None)));
    assert!(!judged(&node(""), &spec(&[], Some(Some("/run/netns/pod")))));
    assert!(!judged(
        &node("interfaces = \"eth0\"\n"),
        &spec(&[], Some(None))
    ));
    assert!(!judged(
        &node("interfaces = \"none\"\n"),
        &spec(&[], Some(None))
    ));
    // No deny rule: nothing to judge.
    let no_rules = cfg("[attach]\njudge_at = \"interfaces\"\n");
    assert!(!judged(&no_rules, &spec(&[], Some(None))));
    // The default, "auto", is decided by the container's interfaces at create and at start
    // for a container TC can judge, and is the cgroup for any other.
    let at = |c: &Config, s: &Spec| Plan::resolve(c, s).unwrap().judge_at;
    let default = cfg("[attach]\negress_deny = [\"192.0.2.0/24\"]\n");
    assert_eq!(at(&default, &spec(&[], Some(None))), JudgeAt::Auto);
    assert!(!judged(&default, &spec(&[], Some(None))));
    assert_eq!(at(&default, &spec(&[], None)), JudgeAt::Cgroup);
    assert_eq!(
        at(&default, &spec(&[], Some(Some("/run/netns/pod")))),
        JudgeAt::Cgroup
    );
    assert_eq!(
        at(
            &cfg("[attach]\negress_deny = [\"192.0.2.0/24\"]\ninterfaces = \"eth0\"\n"),
            &spec(&[], Some(None))
        ),
        JudgeAt::Cgroup
    );
    assert_eq!(at(&no_rules, &spec(&[], Some(None))), JudgeAt::Cgroup);
    let cgroup = cfg("[attach]\njudge_at = \"cgroup\"\negress_deny = [\"192.0.2.0/24\"]\n");
    assert_eq!(at(&cgroup, &spec(&[], Some(None))), JudgeAt::Cgroup);
    assert!(tether_bpf::programs::Prog::CgroupEgress.used_by(
        &Plan::resolve(&cgroup, &spec(&[], Some(None)))
            .unwrap()
            .config
    ));
    // A bad value is named, whatever the container.
    let bad = cfg("[attach]\njudge_at = \"tc\"\n");
    let e = Plan::resolve(&bad, &spec(&[], None))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("[attach] judge_at") && e.contains("\"tc\""),
        "{e}"
    );
}

#[test]
fn without_lsm_blind_cgroup_programs_cost_the_container_its_packet_sockets() {
    use crate::attach::attacher::hardening_for;
    let deny = [(EGRESS_DENY, "192.0.2.0/24")];
    let own = Plan::resolve(&all_keys(), &spec(&deny, Some(None))).unwrap();
    // TC judges its frames, the cgroup hook refuses PACKET_QDISC_BYPASS: the native ABI only.
    let h = hardening_for(&own, Some("SCMP_ARCH_X86_64"), false);
    assert!(h.withheld.is_empty() && h.native_abi == Some("SCMP_ARCH_X86_64"));
    // Blind cgroup programs refuse nothing: no packet sockets at all.
    let h = hardening_for(&own, Some("SCMP_ARCH_X86_64"), true);
    assert_eq!(h.withheld, [crate::spec::CAP_NET_RAW]);
    assert_eq!(h.native_abi, None);
    // No TC program to judge its frames (the host's network): no packet sockets either way.
    let host = Plan::resolve(&all_keys(), &spec(&deny, None)).unwrap();
    assert_eq!(
        hardening_for(&host, Some("SCMP_ARCH_X86_64"), false).withheld,
        [crate::spec::CAP_NET_RAW]
    );
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
        let e = Plan::resolve(&all_keys(), &spec(&[(k, v)], Some(None)))
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
            &cfg("[attach]\nprograms = \"none\"\n"),
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

#[test]
fn a_pods_late_links_are_its_sandboxs() {
    let netns = Some(Some("/proc/1/ns/net"));
    let member = spec(&[(CRI_CONTAINER_TYPE, "container")], netns);
    let sandbox = spec(
        &[(CRI_CONTAINER_TYPE, "sandbox")],
        Some(Some("/run/netns/cni-1")),
    );
    let config = cfg("");
    assert!(!Plan::resolve(&config, &member).unwrap().watch_links);
    assert!(Plan::resolve(&config, &sandbox).unwrap().watch_links);
    assert!(
        Plan::resolve(&config, &spec(&[], Some(None)))
            .unwrap()
            .watch_links
    );
}

#[test]
fn a_pods_containers_carry_their_kubernetes_names() {
    let member = spec(
        &[
            (CRI_CONTAINER_TYPE, "container"),
            (CRI_POD_NAME, "web-7d4b9"),
            (CRI_POD_NAMESPACE, "shop"),
            (CRI_CONTAINER_NAME, "nginx"),
        ],
        Some(Some("/proc/1/ns/net")),
    );
    let names = Plan::resolve(&cfg(""), &member).unwrap().k8s_names.unwrap();
    assert_eq!(
        (
            names.namespace.as_str(),
            names.pod.as_str(),
            names.container.as_str()
        ),
        ("shop", "web-7d4b9", "nginx")
    );
    let sandbox = spec(
        &[(CRI_POD_NAME, "web-7d4b9"), (CRI_POD_NAMESPACE, "shop")],
        Some(Some("/run/netns/cni-1")),
    );
    let names = Plan::resolve(&cfg(""), &sandbox)
        .unwrap()
        .k8s_names
        .unwrap();
    assert_eq!(names.container, "");
    assert_eq!(
        Plan::resolve(&cfg(""), &spec(&[], Some(None)))
            .unwrap()
            .k8s_names,
        None
    );
}
