//! Kubernetes pods in tetherctl's output: the POD cell, which containers `stats --pod` and
//! `--namespace` keep, and their sum.

use tether_api::types::{ContainerStatsInfo, Counters, KubernetesNames};

/// The POD cell: `namespace/pod/container`, `namespace/pod` for a pod's sandbox, `-` for a
/// container outside Kubernetes.
pub fn pod_cell(k: Option<&KubernetesNames>) -> String {
    match k {
        None => "-".into(),
        Some(k) if k.container.is_empty() => format!("{}/{}", k.namespace, k.pod),
        Some(k) => format!("{}/{}/{}", k.namespace, k.pod, k.container),
    }
}

/// Which containers `tetherctl stats --pod/--namespace` keeps: those of the Kubernetes
/// pod (and namespace) named.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodFilter {
    pub pod: Option<String>,
    pub namespace: Option<String>,
}

impl PodFilter {
    pub fn is_empty(&self) -> bool {
        self.pod.is_none() && self.namespace.is_none()
    }

    pub fn keeps(&self, s: &ContainerStatsInfo) -> bool {
        let Some(k) = &s.kubernetes else {
            return self.is_empty();
        };
        self.pod.as_ref().is_none_or(|p| *p == k.pod)
            && self.namespace.as_ref().is_none_or(|n| *n == k.namespace)
    }
}

/// The sum of the totals of `stats`.
pub fn sum_totals(stats: &[ContainerStatsInfo]) -> Counters {
    let mut t = Counters::default();
    for s in stats {
        t.add(&s.total);
    }
    t
}
