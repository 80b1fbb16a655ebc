//! The node's proxy: keeps the node's Service rules, NetworkPolicy table, cluster DNS records,
//! routes to other nodes' pods and LoadBalancer pool addresses in step with the cluster
//! (kube-proxy's job, CoreDNS's, and the routing and policy parts of Calico's).
//!
//! Decisions only: [`ProxyState::sync`] is told which kinds changed since the last sync
//! ([`Changed`]) and given the caches ([`Snapshot`]); it recomputes what those kinds feed and
//! asks the [`Host`] for the effects that differ from what is in place. So a pod's status
//! update rebuilds only the policy table's text (and writes nothing when it is the same), never
//! the DNS records or the Service rules:
//!
//! | kind changed | recomputed |
//! |---|---|
//! | Services | Service rules, DNS records, pool addresses |
//! | EndpointSlices | Service rules, DNS records |
//! | Nodes | routes, pool addresses |
//! | NetworkPolicies, Pods, Namespaces | the policy table |
//! | Pods | this node's pods' host ports (the Service rules, only when those changed) |
//!
//! A failed effect is retried: `sync` returns the kinds to mark changed again (after a pause,
//! the caller's choice), and a failed Services transaction is followed by a full one.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, RwLock};

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;

use crate::dns::ClusterRecords;
use crate::host::Host;
use crate::services::{self, NodeNet, ServicePort};

/// The kinds the proxy watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Services,
    EndpointSlices,
    Nodes,
    NetworkPolicies,
    Pods,
    Namespaces,
}

impl Kind {
    fn bit(self) -> u8 {
        1 << self as u8
    }
}

/// A set of kinds that changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Changed(u8);

impl Changed {
    /// Every kind: the first sync, which puts everything in place.
    pub const ALL: Changed = Changed(0b11_1111);

    pub fn of(kinds: &[Kind]) -> Changed {
        Changed(kinds.iter().fold(0, |bits, k| bits | k.bit()))
    }
    pub fn has(self, kind: Kind) -> bool {
        self.0 & kind.bit() != 0
    }
    pub fn any(self, kinds: &[Kind]) -> bool {
        kinds.iter().any(|k| self.has(*k))
    }
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
    pub fn union(self, other: Changed) -> Changed {
        Changed(self.0 | other.0)
    }
}

/// Change marks shared between the watches (which set them) and the proxy's loop (which takes
/// them): a burst of changes to one kind is one mark, taken once.
#[derive(Default)]
pub struct ChangeMarks {
    bits: AtomicU8,
    wake: tokio::sync::Notify,
}

impl ChangeMarks {
    pub fn mark(&self, changed: Changed) {
        self.bits.fetch_or(changed.0, Ordering::SeqCst);
        self.wake.notify_one();
    }

    /// A function that marks `kind` (for a watch to call on every change).
    pub fn marker(self: &Arc<Self>, kind: Kind) -> impl Fn() + Send + Sync + 'static {
        let marks = self.clone();
        move || marks.mark(Changed::of(&[kind]))
    }

    /// Takes the marks there are now (perhaps none).
    pub fn take_now(&self) -> Changed {
        Changed(self.bits.swap(0, Ordering::SeqCst))
    }

    /// Waits until some kind is marked, then takes the marks.
    pub async fn take(&self) -> Changed {
        loop {
            let bits = self.bits.swap(0, Ordering::SeqCst);
            if bits != 0 {
                return Changed(bits);
            }
            self.wake.notified().await;
        }
    }
}

/// The caches the proxy decides from.
pub struct Snapshot {
    pub services: Vec<Arc<Service>>,
    pub slices: Vec<Arc<EndpointSlice>>,
    pub nodes: Vec<Arc<Node>>,
    pub policies: Vec<Arc<NetworkPolicy>>,
    pub pods: Vec<Arc<Pod>>,
    pub namespaces: Vec<Arc<Namespace>>,
}

/// What is in place on the host (as far as the proxy knows), and the node it is for.
pub struct ProxyState {
    node_name: String,
    node_net: NodeNet,
    /// The Service ports in the kernel; None until a full transaction succeeded.
    services: Option<BTreeMap<String, ServicePort>>,
    /// This node's pods' host ports as last computed (they are programmed with the Services).
    host_ports: BTreeMap<String, ServicePort>,
    policy: Option<String>,
    routes: Option<Vec<(Ipv4Net, Ipv4Addr)>>,
    pool_addresses: Option<Vec<Ipv4Addr>>,
    /// The DNS records the node's DNS server answers from.
    dns: Arc<RwLock<ClusterRecords>>,
}

impl ProxyState {
    pub fn new(node_name: &str, node_net: NodeNet, dns: Arc<RwLock<ClusterRecords>>) -> Self {
        ProxyState {
            node_name: node_name.to_string(),
            node_net,
            services: None,
            host_ports: BTreeMap::new(),
            policy: None,
            routes: None,
            pool_addresses: None,
            dns,
        }
    }

    /// Brings the host in step with `now` for the kinds in `changed`; returns the kinds whose
    /// effect failed, to be marked changed again.
    pub async fn sync(&mut self, host: &dyn Host, changed: Changed, now: &Snapshot) -> Changed {
        use Kind::*;
        let mut retry = Vec::new();
        let mut ports_changed = false;
        if changed.has(Pods) {
            let host_ports = services::host_ports(&now.pods, &self.node_name);
            ports_changed = host_ports != self.host_ports;
            self.host_ports = host_ports;
        }
        if changed.any(&[Services, EndpointSlices]) || ports_changed {
            let mut records = ClusterRecords::default();
            now.services.iter().for_each(|s| records.upsert_service(s));
            now.slices.iter().for_each(|s| records.upsert_slice(s));
            *self.dns.write().unwrap_or_else(|p| p.into_inner()) = records;

            let desired = services::with_host_ports(
                services::desired(&now.services, &now.slices),
                &self.host_ports,
            );
            let ops = match &self.services {
                None => services::full(&self.node_net, &desired),
                Some(old) => services::changes(old, &desired),
            };
            if ops.is_empty() {
                self.services = Some(desired);
            } else {
                match host.apply_service_ops(&ops).await {
                    Ok(()) => self.services = Some(desired),
                    Err(e) => {
                        tracing::warn!("programming Services: {e:#}");
                        // Next time from nothing, in one transaction.
                        self.services = None;
                        retry.push(Services);
                    }
                }
            }
        }
        if changed.any(&[NetworkPolicies, Pods, Namespaces]) {
            let policy =
                crate::policy::ruleset(&now.policies, &now.pods, &now.namespaces, &self.node_name);
            if self.policy.as_ref() != Some(&policy) {
                match host.apply_policy(&policy).await {
                    Ok(()) => self.policy = Some(policy),
                    Err(e) => {
                        tracing::warn!("programming NetworkPolicy: {e:#}");
                        retry.push(NetworkPolicies);
                    }
                }
            }
        }
        if changed.has(Nodes) {
            let routes = other_nodes_routes(&now.nodes, &self.node_name);
            if self.routes.as_ref() != Some(&routes) {
                match host.sync_routes(&routes).await {
                    Ok(()) => self.routes = Some(routes),
                    Err(e) => {
                        tracing::warn!("routes to other nodes: {e:#}");
                        self.routes = None;
                        retry.push(Nodes);
                    }
                }
            }
        }
        if changed.any(&[Services, Nodes]) {
            let pool = pool_addresses(&now.services, &now.nodes);
            if self.pool_addresses.as_ref() != Some(&pool) {
                match host.sync_service_addresses(&pool).await {
                    Ok(()) => self.pool_addresses = Some(pool),
                    Err(e) => {
                        tracing::warn!("LoadBalancer pool addresses: {e:#}");
                        retry.push(Services);
                    }
                }
            }
        }
        Changed::of(&retry)
    }
}

/// The LoadBalancer addresses this node takes as its own (those of `--service-lb-pool`):
/// every LoadBalancer ingress address that is not a node's.
pub fn pool_addresses(services: &[Arc<Service>], nodes: &[Arc<Node>]) -> Vec<Ipv4Addr> {
    let node_ips: BTreeSet<String> = nodes
        .iter()
        .filter_map(|n| n.status.as_ref()?.addresses.clone())
        .flatten()
        .map(|a| a.address)
        .collect();
    let mut ips: Vec<Ipv4Addr> = services
        .iter()
        .filter(|s| s.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("LoadBalancer"))
        .filter_map(|s| s.status.as_ref()?.load_balancer.as_ref()?.ingress.clone())
        .flatten()
        .filter_map(|i| i.ip)
        .filter(|ip| !node_ips.contains(ip))
        .filter_map(|ip| ip.parse().ok())
        .collect();
    ips.sort();
    ips.dedup();
    ips
}

/// Routes to every other node's pod range via that node's internal address.
pub fn other_nodes_routes(nodes: &[Arc<Node>], me: &str) -> Vec<(Ipv4Net, Ipv4Addr)> {
    let mut routes: Vec<(Ipv4Net, Ipv4Addr)> = nodes
        .iter()
        .filter(|n| n.metadata.name.as_deref() != Some(me))
        .filter_map(|n| {
            let cidr = n.spec.as_ref()?.pod_cidr.as_deref()?.parse().ok()?;
            let via = n
                .status
                .as_ref()?
                .addresses
                .iter()
                .flatten()
                .find(|a| a.type_ == "InternalIP")?
                .address
                .parse()
                .ok()?;
            Some((cidr, via))
        })
        .collect();
    routes.sort();
    routes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::{Effect, RecordingHost};
    use serde_json::json;

    fn obj<T: k8s_openapi::serde::de::DeserializeOwned>(v: serde_json::Value) -> Arc<T> {
        Arc::new(serde_json::from_value(v).unwrap())
    }

    fn snapshot() -> Snapshot {
        Snapshot {
            services: vec![obj(
                json!({"metadata": {"name": "web", "namespace": "default"},
                "spec": {"type": "ClusterIP", "clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20"],
                         "ports": [{"port": 80, "targetPort": 8080}]}}),
            )],
            slices: vec![obj(
                json!({"metadata": {"name": "web-a", "namespace": "default",
                    "labels": {"kubernetes.io/service-name": "web"}},
                "addressType": "IPv4",
                "endpoints": [{"addresses": ["10.42.0.5"], "conditions": {"ready": true}}],
                "ports": [{"port": 8080, "protocol": "TCP"}]}),
            )],
            nodes: vec![
                obj(
                    json!({"metadata": {"name": "me"}, "spec": {"podCIDR": "10.42.0.0/24"},
                    "status": {"addresses": [{"type": "InternalIP", "address": "192.0.2.10"}]}}),
                ),
                obj(
                    json!({"metadata": {"name": "other"}, "spec": {"podCIDR": "10.42.1.0/24"},
                    "status": {"addresses": [{"type": "InternalIP", "address": "192.0.2.11"}]}}),
                ),
            ],
            policies: vec![],
            pods: vec![obj(
                json!({"metadata": {"name": "p", "namespace": "default", "labels": {"app": "web"}},
                "spec": {"nodeName": "me", "containers": []},
                "status": {"podIP": "10.42.0.5"}}),
            )],
            namespaces: vec![obj(json!({"metadata": {"name": "default"}}))],
        }
    }

    fn state() -> (ProxyState, Arc<RwLock<ClusterRecords>>) {
        let dns = Arc::new(RwLock::new(ClusterRecords::default()));
        let node = NodeNet {
            cluster_cidr: "10.42.0.0/16".parse().unwrap(),
            dns: None,
        };
        (ProxyState::new("me", node, dns.clone()), dns)
    }

    #[tokio::test]
    async fn the_first_sync_puts_everything_in_place_and_a_second_changes_nothing() {
        let (mut proxy, dns) = state();
        let host = RecordingHost::default();
        let now = snapshot();
        let retry = proxy.sync(&host, Changed::ALL, &now).await;
        assert!(retry.is_empty());
        let effects = host.take();
        assert!(
            matches!(&effects[0], Effect::ServiceOps(ops) if ops.len() > 10),
            "a full Services transaction first: {effects:?}"
        );
        assert!(matches!(&effects[1], Effect::Policy(_)));
        assert_eq!(
            effects[2],
            Effect::Routes(vec![(
                "10.42.1.0/24".parse().unwrap(),
                Ipv4Addr::new(192, 0, 2, 11)
            )])
        );
        assert_eq!(effects[3], Effect::ServiceAddresses(vec![]));
        assert!(!dns.read().unwrap().is_empty(), "the DNS records are built");
        // The same caches again: nothing to do on the host.
        assert!(proxy.sync(&host, Changed::ALL, &now).await.is_empty());
        assert_eq!(host.take(), vec![]);
    }

    #[tokio::test]
    async fn a_pod_change_touches_only_the_policy_table() {
        let (mut proxy, dns) = state();
        let host = RecordingHost::default();
        let mut now = snapshot();
        proxy.sync(&host, Changed::ALL, &now).await;
        host.take();
        // The DNS records are not rebuilt for a pod: clear them and see they stay cleared.
        *dns.write().unwrap() = ClusterRecords::default();
        // A pod on another node, with no policy in place, changes nothing here.
        now.pods.push(obj(
            json!({"metadata": {"name": "far", "namespace": "default"},
            "spec": {"nodeName": "other", "containers": []}, "status": {"podIP": "10.42.1.9"}}),
        ));
        proxy.sync(&host, Changed::of(&[Kind::Pods]), &now).await;
        assert_eq!(host.take(), vec![]);
        // A pod here changes the policy table (its hairpin rule), and only that.
        now.pods.push(obj(
            json!({"metadata": {"name": "q", "namespace": "default"},
            "spec": {"nodeName": "me", "containers": []}, "status": {"podIP": "10.42.0.6"}}),
        ));
        proxy.sync(&host, Changed::of(&[Kind::Pods]), &now).await;
        let effects = host.take();
        assert!(
            matches!(effects.as_slice(), [Effect::Policy(p)] if p.contains("10.42.0.6")),
            "{effects:?}"
        );
        assert!(dns.read().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_pod_of_this_node_with_a_host_port_changes_the_service_rules() {
        let (mut proxy, _) = state();
        let host = RecordingHost::default();
        let mut now = snapshot();
        proxy.sync(&host, Changed::ALL, &now).await;
        host.take();
        now.pods.push(obj(json!({
            "metadata": {"name": "hp", "namespace": "default", "uid": "u1"},
            "spec": {"nodeName": "me", "containers": [{"name": "c", "image": "i",
                "ports": [{"containerPort": 80, "hostPort": 8081}]}]},
            "status": {"phase": "Running", "podIP": "10.42.0.8"}})));
        proxy.sync(&host, Changed::of(&[Kind::Pods]), &now).await;
        let effects = host.take();
        let text = match effects.as_slice() {
            [Effect::ServiceOps(ops), Effect::Policy(_)] => crate::nft::render(ops),
            other => panic!("{other:?}"),
        };
        assert!(
            text.contains("tcp . 8081 : goto svc/hostport/u1/tcp/any/8081"),
            "{text}"
        );
        // Its status changing otherwise (a condition) leaves the Service rules alone.
        proxy.sync(&host, Changed::of(&[Kind::Pods]), &now).await;
        assert_eq!(host.take(), vec![]);
        // Gone: its port goes.
        now.pods.pop();
        proxy.sync(&host, Changed::of(&[Kind::Pods]), &now).await;
        let text = match host.take().as_slice() {
            [Effect::ServiceOps(ops), Effect::Policy(_)] => crate::nft::render(ops),
            other => panic!("{other:?}"),
        };
        assert!(
            text.contains("delete element") && text.contains("8081"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn an_endpoint_change_is_one_small_transaction_and_a_refused_one_is_redone_whole() {
        let (mut proxy, _) = state();
        let host = RecordingHost::default();
        let mut now = snapshot();
        proxy.sync(&host, Changed::ALL, &now).await;
        host.take();
        now.slices = vec![obj(
            json!({"metadata": {"name": "web-a", "namespace": "default",
                "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.42.0.5"], "conditions": {"ready": true}},
                          {"addresses": ["10.42.0.7"], "conditions": {"ready": true}}],
            "ports": [{"port": 8080, "protocol": "TCP"}]}),
        )];
        host.fail_service_ops.store(true, Ordering::SeqCst);
        let retry = proxy
            .sync(&host, Changed::of(&[Kind::EndpointSlices]), &now)
            .await;
        assert_eq!(retry, Changed::of(&[Kind::Services]));
        let small = match host.take().as_slice() {
            [Effect::ServiceOps(ops)] => ops.len(),
            other => panic!("{other:?}"),
        };
        host.fail_service_ops.store(false, Ordering::SeqCst);
        assert!(proxy.sync(&host, retry, &now).await.is_empty());
        match host.take().as_slice() {
            [Effect::ServiceOps(ops)] => assert!(
                ops.len() > small,
                "after a refusal the next transaction is a full one"
            ),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn marks_coalesce_per_kind() {
        let marks = Arc::new(ChangeMarks::default());
        let pods = marks.marker(Kind::Pods);
        for _ in 0..100 {
            pods();
        }
        marks.marker(Kind::Nodes)();
        let taken = marks.take().await;
        assert_eq!(taken, Changed::of(&[Kind::Pods, Kind::Nodes]));
        assert!(!taken.has(Kind::Services));
    }
}
