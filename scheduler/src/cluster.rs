//! The scheduler's picture of the cluster: every node with what is placed on it, kept up to
//! date incrementally from the Node and Pod watches (and from the scheduler's own decisions,
//! "assumed" until the binding shows up in the watch), so no decision rescans the cluster.
//! Pure: no I/O.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{
    Node, NodeSelector, Pod, PodAffinityTerm, PreferredSchedulingTerm, Taint, Toleration,
    TopologySpreadConstraint, WeightedPodAffinityTerm,
};

/// What scoring counts for a container without requests, as Kubernetes does (100m, 200Mi), so
/// that request-less pods still spread.
const DEFAULT_CPU_MILLIS: u64 = 100;
const DEFAULT_MEMORY: u64 = 200 << 20;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Resources {
    pub cpu_millis: u64,
    pub memory: u64,
    pub pods: u64,
}

/// What the scheduler needs of a pod, extracted once.
#[derive(Clone, Debug, Default)]
pub struct PodInfo {
    /// namespace/name
    pub key: String,
    pub uid: String,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub priority: i32,
    /// Requests for fitting (containers summed, init containers' maximum, overhead).
    pub requests: Resources,
    /// Requests for scoring, with defaults for containers that ask for nothing.
    pub nonzero: Resources,
    /// (protocol, hostIP, hostPort)
    pub host_ports: Vec<(String, String, i32)>,
    pub node_selector: BTreeMap<String, String>,
    pub required_node_affinity: Option<NodeSelector>,
    pub preferred_node_affinity: Vec<PreferredSchedulingTerm>,
    pub tolerations: Vec<Toleration>,
    pub affinity: Vec<PodAffinityTerm>,
    pub anti_affinity: Vec<PodAffinityTerm>,
    pub preferred_affinity: Vec<WeightedPodAffinityTerm>,
    pub preferred_anti_affinity: Vec<WeightedPodAffinityTerm>,
    pub spread: Vec<TopologySpreadConstraint>,
    /// The runtime handler the pod needs (from its RuntimeClass), if it names one.
    pub runtime_handler: Option<String>,
    pub images: Vec<String>,
    pub scheduler_name: String,
    pub node_name: Option<String>,
}

fn resources_of(
    requests: Option<&BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>,
) -> (Option<u64>, Option<u64>) {
    let get = |k: &str| requests.and_then(|r| r.get(k)).map(|q| q.0.as_str());
    (
        get("cpu").and_then(api::quantity::millicores),
        get("memory").and_then(api::quantity::bytes),
    )
}

impl PodInfo {
    /// `handler_of` turns a RuntimeClass name into its handler (None when it does not exist;
    /// the class name then stands for the handler).
    pub fn from_pod(pod: &Pod, handler_of: impl Fn(&str) -> Option<String>) -> PodInfo {
        let meta = &pod.metadata;
        let namespace = meta.namespace.clone().unwrap_or_else(|| "default".into());
        let name = meta.name.clone().unwrap_or_default();
        let spec = pod.spec.clone().unwrap_or_default();
        let mut requests = Resources {
            pods: 1,
            ..Default::default()
        };
        let mut nonzero = requests;
        let mut host_ports = Vec::new();
        let mut images = Vec::new();
        for c in &spec.containers {
            let (cpu, mem) = resources_of(c.resources.as_ref().and_then(|r| r.requests.as_ref()));
            requests.cpu_millis += cpu.unwrap_or(0);
            requests.memory += mem.unwrap_or(0);
            nonzero.cpu_millis += cpu.unwrap_or(DEFAULT_CPU_MILLIS);
            nonzero.memory += mem.unwrap_or(DEFAULT_MEMORY);
            for p in c.ports.iter().flatten() {
                if let Some(hp) = p.host_port.filter(|p| *p > 0) {
                    host_ports.push((
                        p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                        p.host_ip.clone().unwrap_or_else(|| "0.0.0.0".into()),
                        hp,
                    ));
                }
            }
            if let Some(i) = &c.image {
                images.push(i.clone());
            }
        }
        // Init containers run one at a time before the others: the pod needs the largest.
        for c in spec.init_containers.iter().flatten() {
            let (cpu, mem) = resources_of(c.resources.as_ref().and_then(|r| r.requests.as_ref()));
            requests.cpu_millis = requests.cpu_millis.max(cpu.unwrap_or(0));
            requests.memory = requests.memory.max(mem.unwrap_or(0));
        }
        let (cpu, mem) = resources_of(spec.overhead.as_ref());
        requests.cpu_millis += cpu.unwrap_or(0);
        requests.memory += mem.unwrap_or(0);
        let affinity = spec.affinity.clone().unwrap_or_default();
        let node_affinity = affinity.node_affinity.unwrap_or_default();
        let pod_affinity = affinity.pod_affinity.unwrap_or_default();
        let pod_anti = affinity.pod_anti_affinity.unwrap_or_default();
        PodInfo {
            key: format!("{namespace}/{name}"),
            uid: meta.uid.clone().unwrap_or_default(),
            labels: meta.labels.clone().unwrap_or_default(),
            namespace,
            priority: spec.priority.unwrap_or(0),
            requests,
            nonzero,
            host_ports,
            node_selector: spec.node_selector.clone().unwrap_or_default(),
            required_node_affinity: node_affinity
                .required_during_scheduling_ignored_during_execution,
            preferred_node_affinity: node_affinity
                .preferred_during_scheduling_ignored_during_execution
                .unwrap_or_default(),
            tolerations: spec.tolerations.clone().unwrap_or_default(),
            affinity: pod_affinity
                .required_during_scheduling_ignored_during_execution
                .unwrap_or_default(),
            anti_affinity: pod_anti
                .required_during_scheduling_ignored_during_execution
                .unwrap_or_default(),
            preferred_affinity: pod_affinity
                .preferred_during_scheduling_ignored_during_execution
                .unwrap_or_default(),
            preferred_anti_affinity: pod_anti
                .preferred_during_scheduling_ignored_during_execution
                .unwrap_or_default(),
            spread: spec.topology_spread_constraints.clone().unwrap_or_default(),
            runtime_handler: spec
                .runtime_class_name
                .as_deref()
                .map(|c| handler_of(c).unwrap_or_else(|| c.to_string())),
            images,
            scheduler_name: spec
                .scheduler_name
                .clone()
                .unwrap_or_else(|| "default-scheduler".into()),
            node_name: spec.node_name.clone().filter(|n| !n.is_empty()),
        }
    }
}

/// One node and what is placed on it.
#[derive(Clone, Debug, Default)]
pub struct NodeState {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Taint>,
    pub unschedulable: bool,
    pub allocatable: Resources,
    pub requested: Resources,
    pub nonzero_requested: Resources,
    /// (protocol, hostIP, port) → pods using it
    pub host_ports: HashMap<(String, String, i32), u32>,
    /// Runtime handlers the node runs (status.runtimeHandlers); empty means "wasm", what every
    /// Drover node runs.
    pub handlers: BTreeSet<String>,
    /// Image names the node holds → size in bytes.
    pub images: HashMap<String, i64>,
    pub pods: HashMap<String, Arc<PodInfo>>,
}

impl NodeState {
    pub fn from_node(node: &Node) -> NodeState {
        let spec = node.spec.clone().unwrap_or_default();
        let status = node.status.clone().unwrap_or_default();
        let alloc = status.allocatable.clone().or(status.capacity.clone());
        let get = |k: &str| alloc.as_ref().and_then(|a| a.get(k)).map(|q| q.0.clone());
        let allocatable = Resources {
            cpu_millis: get("cpu")
                .and_then(|q| api::quantity::millicores(&q))
                .unwrap_or(0),
            memory: get("memory")
                .and_then(|q| api::quantity::bytes(&q))
                .unwrap_or(0),
            pods: get("pods").and_then(|q| q.parse().ok()).unwrap_or(110),
        };
        let mut images = HashMap::new();
        for i in status.images.iter().flatten() {
            for n in i.names.iter().flatten() {
                images.insert(n.clone(), i.size_bytes.unwrap_or(0));
            }
        }
        NodeState {
            name: node.metadata.name.clone().unwrap_or_default(),
            labels: node.metadata.labels.clone().unwrap_or_default(),
            taints: spec.taints.unwrap_or_default(),
            unschedulable: spec.unschedulable.unwrap_or(false),
            allocatable,
            handlers: status
                .runtime_handlers
                .iter()
                .flatten()
                .filter_map(|h| h.name.clone())
                .collect(),
            images,
            ..Default::default()
        }
    }

    fn add_pod(&mut self, pod: Arc<PodInfo>) {
        add(&mut self.requested, &pod.requests, 1);
        add(&mut self.nonzero_requested, &pod.nonzero, 1);
        for p in &pod.host_ports {
            *self.host_ports.entry(p.clone()).or_default() += 1;
        }
        self.pods.insert(pod.key.clone(), pod);
    }

    fn remove_pod(&mut self, key: &str) -> Option<Arc<PodInfo>> {
        let pod = self.pods.remove(key)?;
        add(&mut self.requested, &pod.requests, -1);
        add(&mut self.nonzero_requested, &pod.nonzero, -1);
        for p in &pod.host_ports {
            if let Some(n) = self.host_ports.get_mut(p) {
                *n -= 1;
                if *n == 0 {
                    self.host_ports.remove(p);
                }
            }
        }
        Some(pod)
    }
}

/// The anti-affinity index keys of a pod's required anti-affinity terms.
fn anti_keys(pod: &PodInfo) -> Vec<Option<(String, String, String)>> {
    pod.anti_affinity
        .iter()
        .map(|t| {
            let pair = t
                .label_selector
                .as_ref()
                .and_then(|s| s.match_labels.as_ref())
                .and_then(|m| m.iter().next());
            // Only a term looking in the pod's own namespace narrows by namespace.
            let own_ns = t.namespace_selector.is_none()
                && t.namespaces.as_ref().is_none_or(|n| n.is_empty());
            match pair {
                Some((k, v)) if own_ns => Some((pod.namespace.clone(), k.clone(), v.clone())),
                _ => None,
            }
        })
        .collect()
}

fn add(total: &mut Resources, r: &Resources, sign: i64) {
    let f = |t: u64, v: u64| {
        if sign > 0 {
            t.saturating_add(v)
        } else {
            t.saturating_sub(v)
        }
    };
    total.cpu_millis = f(total.cpu_millis, r.cpu_millis);
    total.memory = f(total.memory, r.memory);
    total.pods = f(total.pods, r.pods);
}

/// Every node, and where every placed pod is. Nodes live in a slab (`Vec<Option<_>>`) so
/// indices stay valid as nodes come and go; the label index finds the pods an affinity term
/// can match without visiting every pod.
#[derive(Default)]
pub struct Cluster {
    pub nodes: Vec<Option<NodeState>>,
    index: HashMap<String, usize>,
    free: Vec<usize>,
    /// pod key → node index
    placed: HashMap<String, usize>,
    /// Pods placed by this scheduler whose binding the watch has not shown yet.
    assumed: BTreeSet<String>,
    /// (namespace, label key, label value) → node index → pods there with that label
    by_label: HashMap<(String, String, String), HashMap<usize, u32>>,
    /// Placed pods with required anti-affinity terms (checked against every incoming pod).
    pub with_anti_affinity: BTreeMap<String, usize>,
    /// Pods the watch shows on nodes it has not shown yet: pod key → (node, pod).
    waiting: HashMap<String, (String, Arc<PodInfo>)>,
    /// Bumped on every node change: what caches derived from nodes compare against.
    pub node_generation: u64,
    /// Topology key → (node generation it was built at, domain → nodes in it).
    domains: HashMap<String, (u64, HashMap<String, u32>)>,
    /// Placed pods with required anti-affinity, by the first matchLabels pair of each term
    /// ((namespace, key, value); None for terms without one), so an incoming pod checks only
    /// the terms that can select it.
    anti_by_label: HashMap<Option<(String, String, String)>, BTreeSet<String>>,
}

impl Cluster {
    pub fn node_count(&self) -> usize {
        self.index.len()
    }

    pub fn node_index(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }

    pub fn node(&self, i: usize) -> Option<&NodeState> {
        self.nodes.get(i).and_then(|n| n.as_ref())
    }

    /// Adds or updates a node, keeping what is placed on it. Returns whether anything a
    /// decision looks at changed (a new node, labels, taints, cordon, allocatable, runtime
    /// handlers, images): only then may parked pods fit now.
    pub fn upsert_node(&mut self, mut state: NodeState) -> bool {
        self.node_generation += 1;
        match self.index.get(&state.name) {
            Some(&i) => {
                let relevant = self.nodes[i].as_ref().is_none_or(|old| {
                    old.labels != state.labels
                        || old.taints != state.taints
                        || old.unschedulable != state.unschedulable
                        || old.allocatable != state.allocatable
                        || old.handlers != state.handlers
                        || old.images.len() != state.images.len()
                });
                if let Some(old) = self.nodes[i].take() {
                    state.requested = old.requested;
                    state.nonzero_requested = old.nonzero_requested;
                    state.host_ports = old.host_ports;
                    state.pods = old.pods;
                }
                self.nodes[i] = Some(state);
                relevant
            }
            None => {
                let i = match self.free.pop() {
                    Some(i) => i,
                    None => {
                        self.nodes.push(None);
                        self.nodes.len() - 1
                    }
                };
                let name = state.name.clone();
                self.index.insert(name.clone(), i);
                self.nodes[i] = Some(state);
                let arrived: Vec<Arc<PodInfo>> = self
                    .waiting
                    .values()
                    .filter(|(n, _)| *n == name)
                    .map(|(_, p)| p.clone())
                    .collect();
                for pod in arrived {
                    self.place(pod, &name, false);
                }
                true
            }
        }
    }

    /// Forgets a node. Pods the watch showed on it wait for it to come back (an agent
    /// re-registers its Node); pods only assumed there are forgotten.
    pub fn remove_node(&mut self, name: &str) {
        self.node_generation += 1;
        if let Some(i) = self.index.remove(name) {
            if let Some(n) = self.nodes[i].take() {
                for (key, pod) in &n.pods {
                    self.placed.remove(key);
                    self.with_anti_affinity.remove(key);
                    self.unindex(pod, i);
                    if !self.assumed.remove(key) {
                        self.waiting
                            .insert(key.clone(), (name.to_string(), pod.clone()));
                    }
                }
            }
            self.free.push(i);
        }
    }

    fn unindex(&mut self, pod: &PodInfo, node: usize) {
        for k in anti_keys(pod) {
            if let Some(set) = self.anti_by_label.get_mut(&k) {
                set.remove(&pod.key);
                if set.is_empty() {
                    self.anti_by_label.remove(&k);
                }
            }
        }
        for (k, v) in &pod.labels {
            let key = (pod.namespace.clone(), k.clone(), v.clone());
            if let Some(m) = self.by_label.get_mut(&key) {
                if let Some(n) = m.get_mut(&node) {
                    *n -= 1;
                    if *n == 0 {
                        m.remove(&node);
                    }
                }
                if m.is_empty() {
                    self.by_label.remove(&key);
                }
            }
        }
    }

    /// Records `pod` as placed on `node` (from the watch, or assumed by the scheduler).
    /// Returns false when the node is unknown.
    pub fn place(&mut self, pod: Arc<PodInfo>, node: &str, assumed: bool) -> bool {
        let Some(&i) = self.index.get(node) else {
            // A pod on a node not seen yet (the watches race): placed when the node comes.
            self.remove_pod(&pod.key);
            self.waiting
                .insert(pod.key.clone(), (node.to_string(), pod));
            return false;
        };
        // Replaces what was known of the pod (the watch confirming an assumption included).
        self.remove_pod(&pod.key);
        for (k, v) in &pod.labels {
            *self
                .by_label
                .entry((pod.namespace.clone(), k.clone(), v.clone()))
                .or_default()
                .entry(i)
                .or_default() += 1;
        }
        if !pod.anti_affinity.is_empty() {
            self.with_anti_affinity.insert(pod.key.clone(), i);
            for k in anti_keys(&pod) {
                self.anti_by_label
                    .entry(k)
                    .or_default()
                    .insert(pod.key.clone());
            }
        }
        self.placed.insert(pod.key.clone(), i);
        if assumed {
            self.assumed.insert(pod.key.clone());
        }
        if let Some(n) = self.nodes[i].as_mut() {
            n.add_pod(pod);
        }
        true
    }

    /// Forgets a pod (deleted, finished, or its binding failed).
    pub fn remove_pod(&mut self, key: &str) {
        self.waiting.remove(key);
        self.assumed.remove(key);
        self.with_anti_affinity.remove(key);
        if let Some(i) = self.placed.remove(key) {
            if let Some(pod) = self.nodes[i].as_mut().and_then(|n| n.remove_pod(key)) {
                self.unindex(&pod, i);
            }
        }
    }

    /// The placed pods whose anti-affinity terms may select a pod of `namespace` with
    /// `labels`.
    pub fn anti_affinity_candidates<'a>(
        &'a self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
    ) -> impl Iterator<Item = &'a String> + 'a {
        let mut keys: Vec<Option<(String, String, String)>> = labels
            .iter()
            .map(|(k, v)| Some((namespace.to_string(), k.clone(), v.clone())))
            .collect();
        keys.push(None);
        let mut out: BTreeSet<&'a String> = BTreeSet::new();
        for k in keys {
            out.extend(self.anti_by_label.get(&k).into_iter().flatten());
        }
        out.into_iter()
    }

    /// Rebuilds the domains of topology key `key` if nodes changed since they were built.
    pub fn refresh_domains(&mut self, key: &str) {
        let current = self
            .domains
            .get(key)
            .is_some_and(|(g, _)| *g == self.node_generation);
        if current {
            return;
        }
        let mut map: HashMap<String, u32> = HashMap::new();
        for n in self.nodes.iter().flatten() {
            if let Some(v) = n.labels.get(key) {
                *map.entry(v.clone()).or_default() += 1;
            }
        }
        self.domains
            .insert(key.to_string(), (self.node_generation, map));
    }

    /// The domains of `key` (domain → how many nodes), as of the last [`Cluster::refresh_domains`].
    pub fn domains(&self, key: &str) -> Option<&HashMap<String, u32>> {
        self.domains.get(key).map(|(_, m)| m)
    }

    pub fn is_assumed(&self, key: &str) -> bool {
        self.assumed.contains(key)
    }

    pub fn is_placed(&self, key: &str) -> bool {
        self.placed.contains_key(key)
    }

    /// The nodes holding pods of `namespace` with label `key=value`, and how many.
    pub fn nodes_with_label(
        &self,
        namespace: &str,
        key: &str,
        value: &str,
    ) -> Option<&HashMap<usize, u32>> {
        self.by_label
            .get(&(namespace.to_string(), key.to_string(), value.to_string()))
    }

    /// Every placed pod (for selectors the label index cannot narrow).
    pub fn placed_pods(&self) -> impl Iterator<Item = (usize, &Arc<PodInfo>)> {
        self.nodes
            .iter()
            .enumerate()
            .filter_map(|(i, n)| n.as_ref().map(|n| (i, n)))
            .flat_map(|(i, n)| n.pods.values().map(move |p| (i, p)))
    }

    pub fn placed_pod(&self, key: &str) -> Option<(usize, &Arc<PodInfo>)> {
        let i = *self.placed.get(key)?;
        Some((i, self.node(i)?.pods.get(key)?))
    }
}
