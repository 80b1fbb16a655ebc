//! Deciding where one pod goes: filters (which nodes can take it) and scores (which of those
//! is best), as Kubernetes' default profile does. Pure: no I/O, no clock.
//!
//! Per pod, what depends on the whole cluster (pods matching affinity terms, counts per
//! topology domain) is worked out once before the nodes are visited ([`PreFilter`]); each node
//! then costs a few map lookups. As in Kubernetes, a large cluster is not searched whole: the
//! search starts where the last one stopped and ends once enough feasible nodes are found
//! ([`feasible_to_find`]), which keeps a decision's cost flat in the cluster's size.

use std::collections::{BTreeMap, HashMap, HashSet};

use k8s_openapi::api::core::v1::{PodAffinityTerm, Taint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use api::placement::{node_term_matches, tolerates};

use crate::cluster::{Cluster, NodeState, PodInfo};

/// Why a node cannot take a pod, worded as Kubernetes words it in FailedScheduling events.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Unfit {
    Unschedulable,
    Runtime(String),
    NodeSelector,
    Taint(String),
    Insufficient(&'static str),
    TooManyPods,
    HostPorts,
    Affinity,
    AntiAffinity,
    ExistingAntiAffinity,
    Spread,
}

impl std::fmt::Display for Unfit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unfit::Unschedulable => write!(f, "node(s) were unschedulable"),
            Unfit::Runtime(h) => write!(f, "node(s) did not run the pod's runtime handler {h:?}"),
            Unfit::NodeSelector => write!(f, "node(s) didn't match Pod's node affinity/selector"),
            Unfit::Taint(t) => write!(f, "node(s) had untolerated taint {{{t}}}"),
            Unfit::Insufficient(r) => write!(f, "Insufficient {r}"),
            Unfit::TooManyPods => write!(f, "Too many pods"),
            Unfit::HostPorts => write!(
                f,
                "node(s) didn't have free ports for the requested pod ports"
            ),
            Unfit::Affinity => write!(f, "node(s) didn't match pod affinity rules"),
            Unfit::AntiAffinity => write!(f, "node(s) didn't match pod anti-affinity rules"),
            Unfit::ExistingAntiAffinity => write!(
                f,
                "node(s) didn't satisfy existing pods anti-affinity rules"
            ),
            Unfit::Spread => write!(f, "node(s) didn't match pod topology spread constraints"),
        }
    }
}

/// No node can take the pod: how many nodes were looked at and why each refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FitError {
    pub nodes: usize,
    pub reasons: BTreeMap<String, usize>,
}

impl std::fmt::Display for FitError {
    /// "0/5 nodes are available: 3 Insufficient cpu, 2 node(s) were unschedulable."
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts: Vec<String> = self
            .reasons
            .iter()
            .map(|(r, n)| format!("{n} {r}"))
            .collect();
        parts.sort();
        if parts.is_empty() {
            write!(f, "0/{} nodes are available.", self.nodes)
        } else {
            write!(
                f,
                "0/{} nodes are available: {}.",
                self.nodes,
                parts.join(", ")
            )
        }
    }
}

/// How many feasible nodes to find before choosing, as Kubernetes' adaptive
/// percentageOfNodesToScore: all of a small cluster, 10% of 5,000 nodes, never under 100.
pub fn feasible_to_find(nodes: usize) -> usize {
    if nodes < 100 {
        return nodes;
    }
    let percent = (50 - (nodes / 125) as i64).max(5) as usize;
    (nodes * percent / 100).max(100)
}

/// nodeSelector and required node affinity (terms ORed), as the DaemonSet controller reads
/// them ([`api::placement::node_matches`]): by reference, nothing allocated per node.
pub fn node_matches(pod: &PodInfo, node: &NodeState) -> bool {
    api::placement::node_matches(
        Some(&pod.node_selector),
        pod.required_node_affinity.as_ref(),
        &node.labels,
        &node.name,
    )
}

/// Whether a label selector of a pod affinity term or spread constraint selects `labels`: a
/// missing selector selects nothing, an empty one everything.
pub fn selects(selector: Option<&LabelSelector>, labels: &BTreeMap<String, String>) -> bool {
    let Some(s) = selector else { return false };
    let empty = s.match_labels.as_ref().is_none_or(|m| m.is_empty())
        && s.match_expressions.as_ref().is_none_or(|e| e.is_empty());
    empty || api::selector::selects(s, labels)
}

/// The namespaces a pod affinity term looks in: its list, or the pod's own; an empty
/// namespaceSelector means all (other namespace selectors need namespace labels, which the
/// scheduler does not watch: they count as the pod's own namespace).
fn term_namespaces(term: &PodAffinityTerm, pod: &PodInfo) -> Option<Vec<String>> {
    let all = term.namespace_selector.as_ref().is_some_and(|s| {
        s.match_labels.as_ref().is_none_or(|m| m.is_empty())
            && s.match_expressions.as_ref().is_none_or(|e| e.is_empty())
    });
    if all {
        return None;
    }
    match term.namespaces.as_deref() {
        Some(ns) if !ns.is_empty() => Some(ns.to_vec()),
        _ => Some(vec![pod.namespace.clone()]),
    }
}

/// Node index → placed pods there that `selector` selects in `namespaces` (None: all).
/// Narrowed by the label index through the selector's first matchLabels pair when it has one.
fn matching_pods(
    cluster: &Cluster,
    namespaces: Option<&[String]>,
    selector: Option<&LabelSelector>,
) -> HashMap<usize, u32> {
    let mut out = HashMap::new();
    let in_ns = |p: &PodInfo| namespaces.is_none_or(|ns| ns.contains(&p.namespace));
    let first_pair = selector
        .and_then(|s| s.match_labels.as_ref())
        .and_then(|m| m.iter().next());
    match (namespaces, first_pair) {
        (Some(ns), Some((k, v))) => {
            let only_pair = selector.is_some_and(|s| {
                s.match_labels.as_ref().is_some_and(|m| m.len() == 1)
                    && s.match_expressions.as_ref().is_none_or(|e| e.is_empty())
            });
            for n in ns {
                for (&node, &count) in cluster.nodes_with_label(n, k, v).into_iter().flatten() {
                    let count = if only_pair {
                        count
                    } else {
                        let Some(state) = cluster.node(node) else {
                            continue;
                        };
                        state
                            .pods
                            .values()
                            .filter(|p| p.namespace == *n && selects(selector, &p.labels))
                            .count() as u32
                    };
                    if count > 0 {
                        *out.entry(node).or_default() += count;
                    }
                }
            }
        }
        _ => {
            if selector.is_none() {
                return out;
            }
            for (node, p) in cluster.placed_pods() {
                if in_ns(p) && selects(selector, &p.labels) {
                    *out.entry(node).or_default() += 1;
                }
            }
        }
    }
    out
}

/// The topology domains of the nodes in `nodes` under `key`.
fn domains_of(cluster: &Cluster, nodes: &HashMap<usize, u32>, key: &str) -> HashMap<String, u32> {
    let mut out = HashMap::new();
    for (&i, &count) in nodes {
        if let Some(v) = cluster.node(i).and_then(|n| n.labels.get(key)) {
            *out.entry(v.clone()).or_default() += count;
        }
    }
    out
}

struct SpreadCheck {
    key: String,
    max_skew: i32,
    hard: bool,
    counts: HashMap<String, u32>,
    /// The smallest count over the eligible domains.
    min: u32,
    /// Whether the pod itself matches the constraint's selector (it will add one).
    self_match: u32,
}

/// What one pod needs from the whole cluster, worked out once per decision.
pub struct PreFilter {
    /// (topology key, domains holding pods the pod must not share a domain with)
    anti: Vec<(String, HashSet<String>)>,
    /// (topology key, domains holding pods the pod must share a domain with; None: any)
    affinity: Vec<(String, Option<HashSet<String>>)>,
    /// (topology key, domain) of placed pods whose anti-affinity refuses this pod.
    existing_anti: Vec<(String, String)>,
    spread: Vec<SpreadCheck>,
    /// Preferred inter-pod terms: (topology key, domain → weighted count).
    preferred: Vec<(String, HashMap<String, i64>)>,
}

impl PreFilter {
    pub fn new(cluster: &Cluster, pod: &PodInfo) -> PreFilter {
        let anti = pod
            .anti_affinity
            .iter()
            .map(|t| {
                let ns = term_namespaces(t, pod);
                let nodes = matching_pods(cluster, ns.as_deref(), t.label_selector.as_ref());
                let domains = domains_of(cluster, &nodes, &t.topology_key);
                (t.topology_key.clone(), domains.into_keys().collect())
            })
            .collect();
        let affinity = pod
            .affinity
            .iter()
            .map(|t| {
                let ns = term_namespaces(t, pod);
                let nodes = matching_pods(cluster, ns.as_deref(), t.label_selector.as_ref());
                let domains: HashSet<String> = domains_of(cluster, &nodes, &t.topology_key)
                    .into_keys()
                    .collect();
                // The first pod of a group that asks to be with its own kind goes anywhere.
                let ns_ok = ns.as_ref().is_none_or(|n| n.contains(&pod.namespace));
                let anywhere =
                    domains.is_empty() && ns_ok && selects(t.label_selector.as_ref(), &pod.labels);
                (t.topology_key.clone(), (!anywhere).then_some(domains))
            })
            .collect();
        let mut existing_anti = Vec::new();
        for key in cluster.anti_affinity_candidates(&pod.namespace, &pod.labels) {
            let Some((node, other)) = cluster.placed_pod(key) else {
                continue;
            };
            for t in &other.anti_affinity {
                let ns_ok = term_namespaces(t, other).is_none_or(|ns| ns.contains(&pod.namespace));
                if ns_ok && selects(t.label_selector.as_ref(), &pod.labels) {
                    if let Some(v) = cluster
                        .node(node)
                        .and_then(|n| n.labels.get(&t.topology_key))
                    {
                        existing_anti.push((t.topology_key.clone(), v.clone()));
                    }
                }
            }
        }
        let constrained = !pod.node_selector.is_empty() || pod.required_node_affinity.is_some();
        let spread = pod
            .spread
            .iter()
            .map(|c| {
                let ns = [pod.namespace.clone()];
                let nodes = matching_pods(cluster, Some(&ns), c.label_selector.as_ref());
                // Domains: those of the nodes the pod could go to by its node selection
                // (all of them, from the cluster's cache, when the pod names no nodes).
                let mut counts: HashMap<String, u32> = HashMap::new();
                if constrained {
                    for (i, n) in cluster.nodes.iter().enumerate() {
                        let Some(n) = n.as_ref().filter(|n| node_matches(pod, n)) else {
                            continue;
                        };
                        if let Some(v) = n.labels.get(&c.topology_key) {
                            *counts.entry(v.clone()).or_default() +=
                                nodes.get(&i).copied().unwrap_or(0);
                        }
                    }
                } else {
                    for d in cluster
                        .domains(&c.topology_key)
                        .into_iter()
                        .flat_map(|m| m.keys())
                    {
                        counts.insert(d.clone(), 0);
                    }
                    for (d, n) in domains_of(cluster, &nodes, &c.topology_key) {
                        counts.insert(d, n);
                    }
                }
                let min = counts.values().copied().min().unwrap_or(0);
                SpreadCheck {
                    key: c.topology_key.clone(),
                    max_skew: c.max_skew.max(1),
                    hard: c.when_unsatisfiable != "ScheduleAnyway",
                    counts,
                    min,
                    self_match: u32::from(selects(c.label_selector.as_ref(), &pod.labels)),
                }
            })
            .collect();
        let weighted = pod
            .preferred_affinity
            .iter()
            .map(|w| (w, i64::from(w.weight)))
            .chain(
                pod.preferred_anti_affinity
                    .iter()
                    .map(|w| (w, -i64::from(w.weight))),
            );
        let preferred = weighted
            .map(|(w, weight)| {
                let t = &w.pod_affinity_term;
                let ns = term_namespaces(t, pod);
                let nodes = matching_pods(cluster, ns.as_deref(), t.label_selector.as_ref());
                let domains = domains_of(cluster, &nodes, &t.topology_key)
                    .into_iter()
                    .map(|(d, n)| (d, weight * i64::from(n)))
                    .collect();
                (t.topology_key.clone(), domains)
            })
            .collect();
        PreFilter {
            anti,
            affinity,
            existing_anti,
            spread,
            preferred,
        }
    }
}

/// The first reason `node` cannot take `pod`, if any; in the order of Kubernetes' filter
/// plugins, so the reasons reported are the ones it would give.
pub fn filter(pod: &PodInfo, node: &NodeState, pre: &PreFilter) -> Result<(), Unfit> {
    if node.unschedulable {
        let cordon = Taint {
            key: api::wellknown::TAINT_UNSCHEDULABLE.into(),
            effect: "NoSchedule".into(),
            ..Default::default()
        };
        if !tolerates(&pod.tolerations, &cordon) {
            return Err(Unfit::Unschedulable);
        }
    }
    if let Some(h) = &pod.runtime_handler {
        let runs = node.handlers.contains(h) || (node.handlers.is_empty() && h == "wasm");
        if !runs {
            return Err(Unfit::Runtime(h.clone()));
        }
    }
    for t in &node.taints {
        if (t.effect == "NoSchedule" || t.effect == "NoExecute") && !tolerates(&pod.tolerations, t)
        {
            return Err(Unfit::Taint(format!(
                "{}: {}",
                t.key,
                t.value.as_deref().unwrap_or("")
            )));
        }
    }
    if !node_matches(pod, node) {
        return Err(Unfit::NodeSelector);
    }
    for (proto, ip, port) in &pod.host_ports {
        let clash = node.host_ports.keys().any(|(p, i, n)| {
            p == proto && n == port && (i == ip || i == "0.0.0.0" || ip == "0.0.0.0")
        });
        if clash {
            return Err(Unfit::HostPorts);
        }
    }
    let (have, used, want) = (&node.allocatable, &node.requested, &pod.requests);
    if used.pods + 1 > have.pods {
        return Err(Unfit::TooManyPods);
    }
    if want.cpu_millis > 0 && used.cpu_millis + want.cpu_millis > have.cpu_millis {
        return Err(Unfit::Insufficient("cpu"));
    }
    if want.memory > 0 && used.memory + want.memory > have.memory {
        return Err(Unfit::Insufficient("memory"));
    }
    for (key, allowed) in &pre.affinity {
        let ok = match (node.labels.get(key), allowed) {
            (Some(_), None) => true,
            (Some(v), Some(domains)) => domains.contains(v),
            (None, _) => false,
        };
        if !ok {
            return Err(Unfit::Affinity);
        }
    }
    for (key, forbidden) in &pre.anti {
        if node.labels.get(key).is_some_and(|v| forbidden.contains(v)) {
            return Err(Unfit::AntiAffinity);
        }
    }
    for (key, domain) in &pre.existing_anti {
        if node.labels.get(key) == Some(domain) {
            return Err(Unfit::ExistingAntiAffinity);
        }
    }
    for s in pre.spread.iter().filter(|s| s.hard) {
        let Some(v) = node.labels.get(&s.key) else {
            return Err(Unfit::Spread);
        };
        let count = s.counts.get(v).copied().unwrap_or(0);
        if (count + s.self_match) as i64 - s.min as i64 > i64::from(s.max_skew) {
            return Err(Unfit::Spread);
        }
    }
    Ok(())
}

/// Raw scores of one node; normalised across the feasible nodes by [`Scheduler::pick`].
#[derive(Clone, Copy, Debug, Default)]
struct Raw {
    /// 0..=100 each, already normalised.
    least_allocated: i64,
    balanced: i64,
    image: i64,
    /// Normalised later (higher better except where noted).
    untolerated_prefer: i64, // lower better
    node_affinity: i64,
    inter_pod: i64,
    spread: i64, // lower better
}

fn raw_scores(pod: &PodInfo, node: &NodeState, pre: &PreFilter) -> Raw {
    let alloc = &node.allocatable;
    let frac = |used: u64, want: u64, have: u64| {
        if have == 0 {
            1.0
        } else {
            ((used + want) as f64 / have as f64).min(1.0)
        }
    };
    let cpu = frac(
        node.nonzero_requested.cpu_millis,
        pod.nonzero.cpu_millis,
        alloc.cpu_millis,
    );
    let mem = frac(
        node.nonzero_requested.memory,
        pod.nonzero.memory,
        alloc.memory,
    );
    let mut raw = Raw {
        least_allocated: (((1.0 - cpu) + (1.0 - mem)) * 50.0) as i64,
        balanced: ((1.0 - (cpu - mem).abs() / 2.0) * 100.0) as i64,
        ..Default::default()
    };
    if !pod.images.is_empty() {
        let present = pod
            .images
            .iter()
            .filter(|i| node.images.contains_key(*i))
            .count();
        raw.image = (present * 100 / pod.images.len()) as i64;
    }
    raw.untolerated_prefer = node
        .taints
        .iter()
        .filter(|t| t.effect == "PreferNoSchedule" && !tolerates(&pod.tolerations, t))
        .count() as i64;
    raw.node_affinity = pod
        .preferred_node_affinity
        .iter()
        .filter(|p| node_term_matches(&p.preference, &node.labels, &node.name))
        .map(|p| i64::from(p.weight))
        .sum();
    raw.inter_pod = pre
        .preferred
        .iter()
        .filter_map(|(key, domains)| domains.get(node.labels.get(key)?))
        .sum();
    raw.spread = pre
        .spread
        .iter()
        .filter(|s| !s.hard)
        .map(|s| {
            node.labels
                .get(&s.key)
                .map_or(0, |v| i64::from(s.counts.get(v).copied().unwrap_or(0)))
        })
        .sum();
    raw
}

/// Maps `v` in `min..=max` onto 0..=100 (`reverse`: lower is better).
fn normalise(v: i64, min: i64, max: i64, reverse: bool) -> i64 {
    if max == min {
        return 0; // all equal: this score tells the nodes apart no way
    }
    let s = (v - min) * 100 / (max - min);
    if reverse {
        100 - s
    } else {
        s
    }
}

/// Decides pods' nodes over a [`Cluster`] it owns.
pub struct Scheduler {
    pub cluster: Cluster,
    /// Where the next search starts, so consecutive pods spread over the whole cluster.
    next_start: usize,
    rng: u64,
}

impl Default for Scheduler {
    fn default() -> Self {
        Scheduler::new(Cluster::default(), 0x9e37_79b9_7f4a_7c15)
    }
}

impl Scheduler {
    pub fn new(cluster: Cluster, seed: u64) -> Scheduler {
        Scheduler {
            cluster,
            next_start: 0,
            rng: seed | 1,
        }
    }

    fn random(&mut self) -> u64 {
        // xorshift64: ties between equally good nodes are broken at random, as Kubernetes
        // does; quality of randomness does not matter here.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    /// The node for `pod`, or why there is none.
    pub fn pick(&mut self, pod: &PodInfo) -> Result<String, FitError> {
        let total = self.cluster.node_count();
        let slots = self.cluster.nodes.len();
        for c in &pod.spread {
            self.cluster.refresh_domains(&c.topology_key);
        }
        let pre = PreFilter::new(&self.cluster, pod);
        let want = feasible_to_find(total);
        let mut feasible: Vec<(usize, Raw)> = Vec::with_capacity(want.min(1024));
        let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
        let mut visited = 0;
        for step in 0..slots {
            let i = (self.next_start + step) % slots;
            let Some(node) = self.cluster.nodes[i].as_ref() else {
                continue;
            };
            visited = step + 1;
            match filter(pod, node, &pre) {
                Ok(()) => {
                    feasible.push((i, raw_scores(pod, node, &pre)));
                    if feasible.len() >= want {
                        break;
                    }
                }
                Err(u) => *reasons.entry(u.to_string()).or_default() += 1,
            }
        }
        if slots > 0 {
            self.next_start = (self.next_start + visited) % slots;
        }
        if feasible.is_empty() {
            return Err(FitError {
                nodes: total,
                reasons,
            });
        }
        let range = |f: fn(&Raw) -> i64| {
            let values = feasible.iter().map(|(_, r)| f(r));
            (values.clone().min().unwrap_or(0), values.max().unwrap_or(0))
        };
        let (taint_min, taint_max) = range(|r| r.untolerated_prefer);
        let (na_min, na_max) = range(|r| r.node_affinity);
        let (ip_min, ip_max) = range(|r| r.inter_pod);
        let (sp_min, sp_max) = range(|r| r.spread);
        let mut best: Option<(i64, usize)> = None;
        let mut ties = 0u64;
        for (i, r) in &feasible {
            // Kubernetes' default weights: TaintToleration 3, NodeAffinity 2,
            // PodTopologySpread 2, InterPodAffinity 2, NodeResourcesFit 1,
            // NodeResourcesBalancedAllocation 1, ImageLocality 1.
            let score = 3 * normalise(r.untolerated_prefer, taint_min, taint_max, true)
                + 2 * normalise(r.node_affinity, na_min, na_max, false)
                + 2 * normalise(r.spread, sp_min, sp_max, true)
                + 2 * normalise(r.inter_pod, ip_min, ip_max, false)
                + r.least_allocated
                + r.balanced
                + r.image;
            match best {
                Some((b, _)) if score < b => {}
                Some((b, _)) if score == b => {
                    ties += 1;
                    if self.random().is_multiple_of(ties + 1) {
                        best = Some((score, *i));
                    }
                }
                _ => {
                    ties = 0;
                    best = Some((score, *i));
                }
            }
        }
        let (_, i) = best.expect("feasible is not empty");
        Ok(self.cluster.nodes[i]
            .as_ref()
            .map(|n| n.name.clone())
            .unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Node, Pod};
    use serde_json::{json, Value};
    use std::sync::Arc;

    fn node(name: &str, cpu: &str, extra: Value) -> NodeState {
        let mut n = json!({"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            "spec": {}, "status": {"allocatable": {"cpu": cpu, "memory": "8Gi", "pods": "110"}}});
        merge(&mut n, extra);
        NodeState::from_node(&serde_json::from_value::<Node>(n).unwrap())
    }

    fn pod(name: &str, extra: Value) -> PodInfo {
        let mut p = json!({"metadata": {"name": name, "namespace": "default", "labels": {"app": "web"}},
            "spec": {"containers": [{"name": "c", "image": "hello:1"}]}});
        merge(&mut p, extra);
        PodInfo::from_pod(&serde_json::from_value::<Pod>(p).unwrap(), |_| None)
    }

    fn merge(base: &mut Value, extra: Value) {
        match (base, extra) {
            (Value::Object(b), Value::Object(e)) => {
                for (k, v) in e {
                    merge(b.entry(k).or_insert(Value::Null), v);
                }
            }
            (b, e) => *b = e,
        }
    }

    fn scheduler(nodes: Vec<NodeState>) -> Scheduler {
        let mut s = Scheduler::default();
        for n in nodes {
            s.cluster.upsert_node(n);
        }
        s
    }

    /// Picks and places `pod`, as the scheduling loop does.
    fn place(s: &mut Scheduler, pod: PodInfo) -> Result<String, FitError> {
        let node = s.pick(&pod)?;
        s.cluster.place(Arc::new(pod), &node, true);
        Ok(node)
    }

    fn cpu(m: &str) -> Value {
        json!({"spec": {"containers": [{"name": "c", "image": "hello:1", "resources": {"requests": {"cpu": m}}}]}})
    }

    #[test]
    fn requests_must_fit_and_the_failure_is_explained() {
        let mut s = scheduler(vec![
            node("small", "1", json!({})),
            node("big", "4", json!({})),
        ]);
        assert_eq!(place(&mut s, pod("a", cpu("2"))).unwrap(), "big");
        assert_eq!(place(&mut s, pod("b", cpu("2"))).unwrap(), "big");
        let err = place(&mut s, pod("c", cpu("2"))).unwrap_err();
        assert_eq!(
            err.to_string(),
            "0/2 nodes are available: 2 Insufficient cpu."
        );
        // Freed by a deletion, the room is there again.
        s.cluster.remove_pod("default/a");
        assert_eq!(place(&mut s, pod("c", cpu("2"))).unwrap(), "big");
    }

    #[test]
    fn taints_cordons_and_selectors_filter_with_kubernetes_wording() {
        let mut s = scheduler(vec![
            node(
                "tainted",
                "4",
                json!({"spec": {"taints": [{"key": "node.kubernetes.io/not-ready", "effect": "NoExecute"}]}}),
            ),
            node("cordoned", "4", json!({"spec": {"unschedulable": true}})),
            node(
                "gpu",
                "4",
                json!({"metadata": {"labels": {"accel": "gpu"}}}),
            ),
        ]);
        let err = place(
            &mut s,
            pod("a", json!({"spec": {"nodeSelector": {"accel": "tpu"}}})),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "0/3 nodes are available: 1 node(s) didn't match Pod's node affinity/selector, \
             1 node(s) had untolerated taint {node.kubernetes.io/not-ready: }, 1 node(s) were unschedulable."
        );
        assert_eq!(place(&mut s, pod("b", json!({}))).unwrap(), "gpu");
        let tolerant = json!({"spec": {"nodeSelector": {"kubernetes.io/hostname": "tainted"},
            "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute"}]}});
        assert_eq!(place(&mut s, pod("c", tolerant)).unwrap(), "tainted");
        let affinity = json!({"spec": {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
            {"nodeSelectorTerms": [{"matchExpressions": [{"key": "accel", "operator": "In", "values": ["gpu", "tpu"]}]}]}}}}});
        assert_eq!(place(&mut s, pod("d", affinity)).unwrap(), "gpu");
    }

    #[test]
    fn anti_affinity_puts_one_per_node_both_ways() {
        let mut s = scheduler(
            (0..3)
                .map(|i| node(&format!("n{i}"), "4", json!({})))
                .collect(),
        );
        let anti = json!({"spec": {"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
            [{"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": "kubernetes.io/hostname"}]}}}});
        let mut used: Vec<String> = (0..3)
            .map(|i| place(&mut s, pod(&format!("w{i}"), anti.clone())).unwrap())
            .collect();
        used.sort();
        assert_eq!(used, ["n0", "n1", "n2"]);
        let err = place(&mut s, pod("w3", anti)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "0/3 nodes are available: 3 node(s) didn't match pod anti-affinity rules."
        );
        // A plain pod with the label is refused by the placed pods' anti-affinity.
        let err = place(&mut s, pod("plain", json!({}))).unwrap_err();
        assert!(
            err.to_string()
                .contains("3 node(s) didn't satisfy existing pods anti-affinity rules"),
            "{err}"
        );
        // Another app is welcome.
        assert!(place(
            &mut s,
            pod("other", json!({"metadata": {"labels": {"app": "db"}}}))
        )
        .is_ok());
    }

    #[test]
    fn affinity_follows_the_first_pod_of_its_kind() {
        let mut s = scheduler(
            (0..4)
                .map(|i| node(&format!("n{i}"), "4", json!({})))
                .collect(),
        );
        let with = json!({"spec": {"affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
            [{"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": "kubernetes.io/hostname"}]}}}});
        let first = place(&mut s, pod("a", with.clone())).unwrap();
        for i in 0..3 {
            assert_eq!(
                place(&mut s, pod(&format!("b{i}"), with.clone())).unwrap(),
                first
            );
        }
    }

    #[test]
    fn topology_spread_keeps_zones_within_max_skew() {
        let zone = |z: &str| json!({"metadata": {"labels": {"topology.kubernetes.io/zone": z}}});
        let mut s = scheduler(vec![
            node("a1", "64", zone("a")),
            node("a2", "64", zone("a")),
            node("a3", "64", zone("a")),
            node("b1", "64", zone("b")),
        ]);
        let spread = json!({"spec": {"topologySpreadConstraints": [{"maxSkew": 1,
            "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "DoNotSchedule",
            "labelSelector": {"matchLabels": {"app": "web"}}}]}});
        let mut per_zone = BTreeMap::<char, i32>::new();
        for i in 0..10 {
            let n = place(&mut s, pod(&format!("p{i}"), spread.clone())).unwrap();
            *per_zone.entry(n.chars().next().unwrap()).or_default() += 1;
            let (a, b) = (
                per_zone.get(&'a').copied().unwrap_or(0),
                per_zone.get(&'b').copied().unwrap_or(0),
            );
            assert!((a - b).abs() <= 1, "skew after {i}: {per_zone:?}");
        }
    }

    #[test]
    fn equal_nodes_share_the_load_and_host_ports_do_not_clash() {
        let mut s = scheduler(
            (0..4)
                .map(|i| node(&format!("n{i}"), "4", json!({})))
                .collect(),
        );
        let mut count = BTreeMap::<String, i32>::new();
        for i in 0..40 {
            *count
                .entry(place(&mut s, pod(&format!("p{i}"), json!({}))).unwrap())
                .or_default() += 1;
        }
        assert!(
            count.values().all(|c| *c == 10),
            "least allocated spreads: {count:?}"
        );
        let port = json!({"spec": {"containers": [{"name": "c", "image": "i", "ports": [{"containerPort": 80, "hostPort": 8080}]}]}});
        for i in 0..4 {
            place(&mut s, pod(&format!("hp{i}"), port.clone())).unwrap();
        }
        let err = place(&mut s, pod("hp4", port)).unwrap_err();
        assert_eq!(err.to_string(), "0/4 nodes are available: 4 node(s) didn't have free ports for the requested pod ports.");
    }

    #[test]
    fn runtime_handlers_and_pods_seen_before_their_node() {
        let mut s = scheduler(vec![
            node(
                "wasm",
                "4",
                json!({"status": {"runtimeHandlers": [{"name": "wasm"}]}}),
            ),
            node(
                "oci",
                "4",
                json!({"status": {"runtimeHandlers": [{"name": "runc"}]}}),
            ),
        ]);
        let runc = json!({"spec": {"runtimeClassName": "runc"}});
        for i in 0..3 {
            assert_eq!(
                place(&mut s, pod(&format!("c{i}"), runc.clone())).unwrap(),
                "oci"
            );
        }
        let err = place(
            &mut s,
            pod("x", json!({"spec": {"runtimeClassName": "gvisor"}})),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("2 node(s) did not run the pod's runtime handler \"gvisor\""),
            "{err}"
        );
        // A pod the watch shows on a node it has not shown yet counts once the node comes.
        let mut s = scheduler(vec![]);
        let early = Arc::new(pod("early", cpu("3")));
        assert!(!s.cluster.place(early, "late", false));
        s.cluster.upsert_node(node("late", "4", json!({})));
        assert_eq!(s.cluster.node(0).unwrap().requested.cpu_millis, 3000);
        assert!(s.pick(&pod("next", cpu("2"))).is_err());
    }

    #[test]
    fn a_large_cluster_is_sampled_not_scanned() {
        assert_eq!(feasible_to_find(50), 50);
        assert_eq!(feasible_to_find(5000), 500);
        assert_eq!(feasible_to_find(100_000), 5000);
        assert_eq!(feasible_to_find(200), 100);
    }
}
