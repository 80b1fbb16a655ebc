//! The node's pod networking, in one of two modes:
//!
//! - **routed** (the default; needs root): the node waits for the control plane to give it a
//!   pod range (Node.spec.podCIDR), gives each pod an address of that range and a network
//!   namespace of its own ([`network::pods`]), routes to the other nodes' ranges, programs
//!   Services into nftables and serves the cluster DNS;
//! - **loopback** (`--pod-ip-range`): each pod gets a loopback address of its own and no
//!   namespace, so that several node agents can share one host without root (tests, benches).
//!   Services then have no data path; their environment variables are still given.
//!
//! In both modes the node watches Services (their environment variables for new containers).

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::Context;
use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::runtime::reflector::{self, Store};
use kube::Api;
use network::host::LinuxHost;
use network::ipam::PodAddresses;
use network::pods::PodNetwork;
use network::proxy::{ChangeMarks, Changed, Kind, ProxyState, Snapshot};
use network::services::NodeNet;

#[derive(Clone, Debug)]
pub enum Mode {
    /// Pods get loopback addresses from this /16.
    Loopback(Ipv4Addr),
    Routed {
        cluster_cidr: Ipv4Net,
        /// The kube-dns Service's address, answered on every node by the node itself.
        dns_service_ip: Ipv4Addr,
    },
}

/// Hands out loopback pod addresses from a /16 (loopback mode).
pub struct LoopbackIps {
    base: u32,
    used: Mutex<BTreeSet<u32>>,
}

impl LoopbackIps {
    pub fn new(base: Ipv4Addr) -> LoopbackIps {
        LoopbackIps {
            base: u32::from(base) & 0xffff_0000,
            used: Mutex::new(BTreeSet::new()),
        }
    }

    /// `wanted` if it is free and in range (the pod had it before), else the next free one.
    pub fn take(&self, wanted: Option<IpAddr>) -> Option<IpAddr> {
        let range = self.base + 1..self.base + 0xffff;
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(IpAddr::V4(w)) = wanted {
            let n = u32::from(w);
            if range.contains(&n) && used.insert(n) {
                return Some(IpAddr::V4(w));
            }
        }
        let n = range.clone().find(|n| !used.contains(n))?;
        used.insert(n);
        Some(IpAddr::V4(Ipv4Addr::from(n)))
    }

    pub fn release(&self, ip: IpAddr) {
        if let IpAddr::V4(v) = ip {
            self.used
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&u32::from(v));
        }
    }
}

/// The node's pod networking (see the module's comment).
pub struct PodNet {
    mode: Mode,
    loopback: LoopbackIps,
    /// Routed mode: set once the node has its pod range.
    addresses: OnceLock<PodAddresses>,
    services: OnceLock<Store<Service>>,
    /// Routed mode: the cluster DNS records, also for the lookups of Wasm pods' requests.
    records: OnceLock<Arc<std::sync::RwLock<network::dns::ClusterRecords>>>,
    /// Routed mode: the NetworkPolicies, and the proxy's change marks.
    policies: OnceLock<Store<NetworkPolicy>>,
    marks: OnceLock<Arc<ChangeMarks>>,
    /// Pods of this node whose network is up, with their address, before the API's copy
    /// shows it: the proxy programs their NetworkPolicy from these, before they start.
    starting: Arc<Mutex<std::collections::HashMap<String, Arc<Pod>>>>,
    /// Policy syncs asked for, and the last one the proxy put in place.
    syncs_asked: std::sync::atomic::AtomicU64,
    synced: tokio::sync::watch::Sender<u64>,
}

/// How long a pod waits for its NetworkPolicy to be in place before its containers start.
const POLICY_WAIT: Duration = Duration::from_secs(10);

/// One pod's outgoing connections (Wasm pods' outgoing HTTP): names resolved as the pod's
/// resolver would (cluster names from this node's DNS records, other names by the host's
/// resolvers), connections opened from inside the pod's network namespace.
struct PodOutbound {
    netns: Option<PathBuf>,
    namespace: String,
    records: Option<Arc<std::sync::RwLock<network::dns::ClusterRecords>>>,
}

impl runtime::outbound::Outbound for PodOutbound {
    fn connect(
        &self,
        host: String,
        port: u16,
    ) -> runtime::BoxFuture<'static, std::io::Result<tokio::net::TcpStream>> {
        let netns = self.netns.clone();
        let namespace = self.namespace.clone();
        let records = self.records.clone();
        Box::pin(async move {
            use network::dns::Lookup;
            let not_found = || {
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("{host}: no such host"),
                )
            };
            let ip: IpAddr = match host.parse() {
                Ok(ip) => ip,
                Err(_) => {
                    let lookup = match &records {
                        Some(r) => r
                            .read()
                            .unwrap_or_else(|p| p.into_inner())
                            .lookup(&host, &namespace),
                        None => Lookup::External(host.clone()),
                    };
                    match lookup {
                        Lookup::Addresses(a) => *a.first().ok_or_else(not_found)?,
                        Lookup::External(name) => tokio::net::lookup_host((name.as_str(), port))
                            .await?
                            .map(|a| a.ip())
                            .find(IpAddr::is_ipv4)
                            .ok_or_else(not_found)?,
                        Lookup::NotFound => return Err(not_found()),
                    }
                }
            };
            let addr = SocketAddr::new(ip, port);
            let Some(netns) = netns else {
                return tokio::net::TcpStream::connect(addr).await;
            };
            let stream = tokio::task::spawn_blocking(move || {
                runtime::netns::within(&netns, move || {
                    let s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(30))?;
                    s.set_nonblocking(true)?;
                    Ok(s)
                })
            })
            .await
            .map_err(std::io::Error::other)??;
            tokio::net::TcpStream::from_std(stream)
        })
    }
}

impl PodNet {
    /// How a pod in `namespace` with network namespace `netns` makes outgoing connections.
    pub fn outbound(
        &self,
        netns: Option<PathBuf>,
        namespace: &str,
    ) -> Arc<dyn runtime::outbound::Outbound> {
        Arc::new(PodOutbound {
            netns,
            namespace: namespace.to_string(),
            records: self.records.get().cloned(),
        })
    }

    /// The network namespace of pod `uid` of this node once its network is up: its own in
    /// routed mode, the node's (None) in loopback mode.
    pub fn netns_of(&self, uid: &str) -> Option<PathBuf> {
        self.is_routed()
            .then(|| network::pods::PodLink::for_uid(uid).netns_path())
    }

    /// Puts the NetworkPolicy of `pod` (address `ip`) in place before its containers start: a
    /// container that connects out at once (a Wasm function does within milliseconds) must
    /// not find its egress open because the policy was still waiting for the pod's status to
    /// go round through the API. Nothing to wait for in loopback mode or in a namespace
    /// without policies.
    pub async fn enforce_policy(&self, pod: &Pod, ip: IpAddr) -> anyhow::Result<()> {
        let (Some(policies), Some(marks)) = (self.policies.get(), self.marks.get()) else {
            return Ok(());
        };
        // Before the first list an empty cache would read as "no policies" (after a restart,
        // the first pods would start unguarded).
        tokio::time::timeout(POLICY_WAIT, policies.wait_until_ready())
            .await
            .map_err(|_| anyhow::anyhow!("the NetworkPolicies are not known yet"))?
            .map_err(|_| anyhow::anyhow!("the NetworkPolicy watch has stopped"))?;
        let ns = pod.metadata.namespace.as_deref();
        if !policies
            .state()
            .iter()
            .any(|p| p.metadata.namespace.as_deref() == ns)
        {
            return Ok(());
        }
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let mut with_ip = pod.clone();
        let status = with_ip.status.get_or_insert_with(Default::default);
        status.pod_ip = Some(ip.to_string());
        status.pod_ips = Some(vec![k8s_openapi::api::core::v1::PodIP {
            ip: ip.to_string(),
        }]);
        self.starting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(uid, Arc::new(with_ip));
        // Asked after the pod is in `starting`, so a sync that saw this ask saw the pod.
        let asked = self
            .syncs_asked
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            + 1;
        marks.mark(Changed::of(&[Kind::Pods]));
        let mut synced = self.synced.subscribe();
        tokio::time::timeout(POLICY_WAIT, synced.wait_for(|done| *done >= asked))
            .await
            .map_err(|_| anyhow::anyhow!("its NetworkPolicy is not in place yet"))?
            .map_err(|_| anyhow::anyhow!("the node's proxy has stopped"))?;
        Ok(())
    }

    pub fn new(mode: Mode) -> PodNet {
        let base = match &mode {
            Mode::Loopback(base) => *base,
            Mode::Routed { .. } => Ipv4Addr::new(127, 1, 0, 0),
        };
        PodNet {
            loopback: LoopbackIps::new(base),
            mode,
            addresses: OnceLock::new(),
            services: OnceLock::new(),
            records: OnceLock::new(),
            policies: OnceLock::new(),
            marks: OnceLock::new(),
            starting: Arc::default(),
            syncs_asked: Default::default(),
            synced: tokio::sync::watch::Sender::new(0),
        }
    }

    /// The cluster DNS's address as pods name it (routed networking only).
    pub fn dns_server(&self) -> Option<Ipv4Addr> {
        match &self.mode {
            Mode::Routed { dns_service_ip, .. } => Some(*dns_service_ip),
            Mode::Loopback(_) => None,
        }
    }

    pub fn is_routed(&self) -> bool {
        matches!(self.mode, Mode::Routed { .. })
    }

    /// The address of pod `uid` (`previous` is the one it reported, kept if possible).
    pub fn address(&self, uid: &str, previous: Option<IpAddr>) -> anyhow::Result<IpAddr> {
        match &self.mode {
            Mode::Loopback(_) => self
                .loopback
                .take(previous)
                .context("no loopback pod address left"),
            Mode::Routed { .. } => {
                let addresses = self
                    .addresses
                    .get()
                    .context("the node has no pod range yet")?;
                Ok(IpAddr::V4(addresses.assign(uid)?))
            }
        }
    }

    /// Gives pod `uid` its network; returns its network namespace (routed mode).
    pub async fn attach(&self, uid: &str, ip: IpAddr) -> anyhow::Result<Option<PathBuf>> {
        match (&self.mode, ip) {
            (Mode::Routed { .. }, IpAddr::V4(v4)) => {
                let link = PodNetwork::add_pod(uid, v4).await?;
                Ok(Some(link.netns_path()))
            }
            _ => Ok(None),
        }
    }

    /// Takes pod `uid`'s network down and gives its address back.
    pub async fn detach(&self, uid: &str, ip: IpAddr) {
        self.starting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(uid);
        match &self.mode {
            Mode::Loopback(_) => self.loopback.release(ip),
            Mode::Routed { .. } => {
                if let Err(e) = PodNetwork::remove_pod(uid).await {
                    tracing::warn!("pod {uid}: {e:#}");
                }
                if let Some(a) = self.addresses.get() {
                    a.release(uid);
                }
            }
        }
    }

    /// After the first list of the node's pods: the addresses and namespaces of pods that are
    /// no longer here (deleted while the agent was down) are released.
    pub async fn forget_all_but(&self, pods: &BTreeSet<String>) {
        let Some(addresses) = self.addresses.get() else {
            return;
        };
        for uid in addresses.holders() {
            if !pods.contains(&uid) {
                tracing::info!("releasing the network of pod {uid}, gone while the agent was down");
                let _ = PodNetwork::remove_pod(&uid).await;
                addresses.release(&uid);
            }
        }
    }

    /// The Services of `namespace` and `default` (for their environment variables).
    pub fn services(&self, namespace: &str) -> Vec<Arc<Service>> {
        self.services
            .get()
            .map(|s| {
                s.state()
                    .into_iter()
                    .filter(|svc| {
                        let ns = svc.metadata.namespace.as_deref();
                        ns == Some(namespace) || ns == Some("default")
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Starts the node's networking: in routed mode waits for the node's pod range first.
    pub async fn start(
        self: &Arc<Self>,
        client: kube::Client,
        node_name: &str,
        node_ip: IpAddr,
        data_dir: &Path,
    ) -> anyhow::Result<()> {
        let (services_store, services_writer) = reflector::store::<Service>();
        let _ = self.services.set(services_store.clone());
        let marks = Arc::new(ChangeMarks::default());
        kubeclient::reflect::spawn(
            Api::<Service>::all(client.clone()),
            services_writer,
            marks.marker(Kind::Services),
        );
        let Mode::Routed {
            cluster_cidr,
            dns_service_ip,
        } = self.mode.clone()
        else {
            return Ok(());
        };
        PodNetwork::prepare_node()?;
        let range = wait_for_pod_range(&client, node_name).await;
        tracing::info!(%range, "node pod range");
        let addresses = PodAddresses::open(&data_dir.join("ipam"), range)?;
        let _ = self.addresses.set(addresses);

        let watch = |kind| marks.marker(kind);
        let (slices, slices_writer) = reflector::store::<EndpointSlice>();
        kubeclient::reflect::spawn(
            Api::all(client.clone()),
            slices_writer,
            watch(Kind::EndpointSlices),
        );
        let (nodes, nodes_writer) = reflector::store::<Node>();
        kubeclient::reflect::spawn(Api::all(client.clone()), nodes_writer, watch(Kind::Nodes));
        // NetworkPolicy needs every pod's address and labels, and namespaces' labels.
        let (policies, policies_writer) = reflector::store::<NetworkPolicy>();
        let _ = self.policies.set(policies.clone());
        let _ = self.marks.set(marks.clone());
        kubeclient::reflect::spawn(
            Api::all(client.clone()),
            policies_writer,
            watch(Kind::NetworkPolicies),
        );
        let (pods, pods_writer) = reflector::store::<Pod>();
        kubeclient::reflect::spawn(Api::all(client.clone()), pods_writer, watch(Kind::Pods));
        let (namespaces, namespaces_writer) = reflector::store::<Namespace>();
        kubeclient::reflect::spawn(
            Api::all(client.clone()),
            namespaces_writer,
            watch(Kind::Namespaces),
        );
        let IpAddr::V4(node_v4) = node_ip else {
            anyhow::bail!("routed pod networking needs an IPv4 node address");
        };
        let node_net = NodeNet {
            cluster_cidr,
            dns: Some((dns_service_ip, node_v4)),
        };
        let dns = Arc::new(std::sync::RwLock::new(
            network::dns::ClusterRecords::default(),
        ));
        let _ = self.records.set(dns.clone());
        serve_dns(SocketAddr::new(node_ip, 53), dns.clone()).await;
        let caches = Caches {
            services: services_store,
            slices,
            nodes,
            policies,
            pods,
            namespaces,
            starting: self.starting.clone(),
        };
        let state = ProxyState::new(node_name, node_net, dns);
        tokio::spawn(run_proxy(state, caches, marks, self.clone()));
        Ok(())
    }
}

/// Serves the cluster DNS on `addr` (UDP and TCP), where the kube-dns Service address leads
/// on this node. A node that cannot bind it runs on without cluster DNS, and says so.
async fn serve_dns(
    addr: SocketAddr,
    records: Arc<std::sync::RwLock<network::dns::ClusterRecords>>,
) {
    let udp = tokio::net::UdpSocket::bind(addr).await;
    let tcp = tokio::net::TcpListener::bind(addr).await;
    match (udp, tcp) {
        (Ok(udp), Ok(tcp)) => {
            tokio::spawn(async move {
                if let Err(e) = network::dns::serve(udp, tcp, records).await {
                    tracing::error!("cluster DNS stopped: {e:#}");
                }
            });
        }
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!(
                "cannot serve the cluster DNS on {addr}: {e}; pods will not resolve cluster names"
            );
        }
    }
}

async fn wait_for_pod_range(client: &kube::Client, node_name: &str) -> Ipv4Net {
    let nodes: Api<Node> = Api::all(client.clone());
    let mut waited = 0u32;
    loop {
        if let Ok(node) = nodes.get(node_name).await {
            if let Some(cidr) = node
                .spec
                .and_then(|s| s.pod_cidr)
                .and_then(|c| c.parse().ok())
            {
                return cidr;
            }
        }
        waited += 1;
        if waited.is_multiple_of(20) {
            tracing::warn!("node {node_name} has no pod range (spec.podCIDR) yet; waiting");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The caches the node's proxy decides from (see [`network::proxy`]).
struct Caches {
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    nodes: Store<Node>,
    policies: Store<NetworkPolicy>,
    pods: Store<Pod>,
    namespaces: Store<Namespace>,
    /// This node's pods whose address the API does not show yet (`PodNet::enforce_policy`).
    starting: Arc<Mutex<std::collections::HashMap<String, Arc<Pod>>>>,
}

impl Caches {
    async fn ready(&self) {
        let _ = self.services.wait_until_ready().await;
        let _ = self.slices.wait_until_ready().await;
        let _ = self.nodes.wait_until_ready().await;
        let _ = self.policies.wait_until_ready().await;
        let _ = self.pods.wait_until_ready().await;
        let _ = self.namespaces.wait_until_ready().await;
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            services: self.services.state(),
            slices: self.slices.state(),
            nodes: self.nodes.state(),
            policies: self.policies.state(),
            pods: self.pods(),
            namespaces: self.namespaces.state(),
        }
    }

    /// The API's pods, with this node's starting pods' addresses where it lacks them.
    fn pods(&self) -> Vec<Arc<Pod>> {
        let mut pods = self.pods.state();
        let starting = self.starting.lock().unwrap_or_else(|p| p.into_inner());
        for (uid, local) in starting.iter() {
            match pods
                .iter_mut()
                .find(|p| p.metadata.uid.as_deref() == Some(uid.as_str()))
            {
                Some(p) => {
                    if p.status.as_ref().and_then(|s| s.pod_ip.as_ref()).is_none() {
                        *p = local.clone();
                    }
                }
                None => pods.push(local.clone()),
            }
        }
        pods
    }
}

/// The node's proxy loop: waits for the caches, puts everything in place, then on each batch
/// of change marks brings the host in step for the kinds that changed (kube-proxy's job,
/// CoreDNS's, and the routing and policy parts of Calico's).
async fn run_proxy(
    mut state: ProxyState,
    caches: Caches,
    marks: Arc<ChangeMarks>,
    net: Arc<PodNet>,
) {
    caches.ready().await;
    let mut changed = Changed::ALL;
    loop {
        // Read before the snapshot: every pod asked for by then is in it. An ask whose mark
        // this batch missed (taken just before it was set) still gets its pods recomputed.
        let asked = net.syncs_asked.load(std::sync::atomic::Ordering::SeqCst);
        if asked > *net.synced.borrow() {
            changed = changed.union(Changed::of(&[Kind::Pods]));
        }
        let retry = state.sync(&LinuxHost, changed, &caches.snapshot()).await;
        // The policy rules are in place unless their part failed (another kind's failure,
        // a Service the host refused, must not hold every pod start back).
        if !retry.any(&[Kind::Pods, Kind::NetworkPolicies, Kind::Namespaces]) {
            net.synced.send_if_modified(|done| {
                let newer = asked > *done;
                *done = (*done).max(asked);
                newer
            });
        }
        if !retry.is_empty() {
            // The host refused: try again shortly, whatever else happens meanwhile.
            let marks = marks.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(1)).await;
                marks.mark(retry);
            });
        }
        changed = marks.take().await;
        // Let a burst of changes (a rollout) land before recomputing.
        tokio::time::sleep(Duration::from_millis(10)).await;
        changed = changed.union(marks.take_now());
    }
}

/// `drover node --cleanup`: removes Drover's nftables table and routes, and the network
/// namespaces of the pods of the node whose directory is `data_dir`.
pub async fn cleanup(data_dir: &Path) -> anyhow::Result<()> {
    // Each part is removed even when another fails; the address records go last, only when
    // every pod's namespace went (they are how the next cleanup finds them).
    let tables = network::host::cleanup_tables().await;
    let pods = PodNetwork::cleanup(&data_dir.join("ipam")).await;
    if pods.is_ok() {
        let _ = std::fs::remove_dir_all(data_dir.join("ipam"));
    }
    match (tables, pods) {
        (Ok(()), Ok(())) => Ok(()),
        (Err(e), Ok(())) | (Ok(()), Err(e)) => Err(e),
        (Err(a), Err(b)) => Err(anyhow::anyhow!("{a:#}; {b:#}")),
    }
}

#[cfg(test)]
mod tests {
    use crate::network::LoopbackIps;
    use std::net::IpAddr;
    use std::net::Ipv4Addr;

    #[test]
    fn pod_addresses_are_unique_and_come_back() {
        let ips = LoopbackIps::new(Ipv4Addr::new(127, 1, 0, 0));
        let a = ips.take(None).unwrap();
        let b = ips.take(None).unwrap();
        assert_ne!(a, b);
        assert_eq!(ips.take(Some(a)).map(|x| x != a), Some(true), "a is taken");
        let wanted: IpAddr = "127.1.3.4".parse().unwrap();
        assert_eq!(ips.take(Some(wanted)), Some(wanted));
        ips.release(a);
        assert_eq!(ips.take(Some(a)), Some(a));
        assert_ne!(
            ips.take(Some("10.0.0.1".parse().unwrap())).unwrap(),
            "10.0.0.1".parse::<IpAddr>().unwrap()
        );
    }
}
