//! The Endpoints and EndpointSlice controllers, as kube-controller-manager's `endpoint` and
//! `endpointslice` controllers do (Kubernetes 1.32): for every Service with a selector, the
//! addresses of the pods it selects, in one Endpoints object of the Service's name and in
//! EndpointSlices of at most [`MAX_ENDPOINTS_PER_SLICE`] endpoints each.
//!
//! - A pod counts when it is in the Service's namespace, its labels carry every pair of the
//!   selector, it has an IP and a node, and it is not finished (Succeeded or Failed).
//! - Endpoints: Ready pods under `addresses`, the others under `notReadyAddresses`; pods being
//!   deleted are left out. With `publishNotReadyAddresses` every pod (deleted or not) is ready.
//!   Addresses are grouped in subsets by the ports they resolve to; over
//!   [`MAX_ENDPOINTS_CAPACITY`] addresses the object is truncated and annotated, as Kubernetes'.
//! - EndpointSlices: every pod, with `conditions {ready, serving, terminating}` (serving is the
//!   Ready condition, terminating a deletionTimestamp, ready is serving and not terminating, or
//!   true with `publishNotReadyAddresses`); one group of slices per address type and resolved
//!   port set, a placeholder slice with no endpoints when there are none. Slices are owned by
//!   the Service (the garbage collector deletes them with it).
//! - Service ports resolve per pod: a number `targetPort` is that number, a name the pod's
//!   container port of that name and protocol (pods without one are left out of that port),
//!   no `targetPort` the Service port.
//! - Services without a selector keep the Endpoints their users write; ExternalName Services
//!   get none. Slices this controller made for a Service that no longer wants them are deleted.
//!
//! [`desired_endpoints`], [`desired_slices`] and [`plan_slices`] decide from the cache alone;
//! [`reconcile`] writes the difference through the API and writes nothing when nothing
//! changed. A Service deleted takes its slices along by ownerReference; its Endpoints are
//! deleted by [`cleanup_orphans`], which the caller runs now and then (a deleted Service is no
//! longer reconciled), and which only deletes Endpoints this controller labelled as its own.
//!
//! Not done: `endpoints.kubernetes.io/last-change-trigger-time`, zones and topology hints on
//! slices (they need the nodes), dual-stack Endpoints (the primary family only, as Kubernetes),
//! the EndpointSlice mirroring of selector-less Endpoints, and Kubernetes' churn-minimising
//! slice packing (slices here are chunks of a sorted list, so one new pod may rewrite the
//! slices after it).
//!
//! Length: two controllers (Endpoints and EndpointSlices) over one pure model of a Service's
//! ready addresses, and their unit tests (about 40%); split, each would repeat the model's walk.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, ObjectReference, Pod, Service,
    ServicePort,
};
use k8s_openapi::api::discovery::v1::{
    Endpoint, EndpointConditions, EndpointPort as SlicePort, EndpointSlice,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{DeleteParams, PostParams, Preconditions};
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, ResourceExt};

use crate::error::failed;
use crate::expectations::{Expectations, Tracked};
use crate::requeue;
use api::pods::{controller_ref, is_ready, scheduled, terminal};

pub use crate::error::Error;

pub use api::wellknown::{SERVICE_NAME_LABEL, SLICE_CONTROLLER, SLICE_MANAGED_BY_LABEL};
/// The label that marks the Endpoints this controller made, and may delete when their Service
/// is gone (Kubernetes sets none on Endpoints; this one is Drover's).
pub const ENDPOINTS_MANAGED_BY_LABEL: &str = "endpoints.kubernetes.io/managed-by";
pub const ENDPOINTS_CONTROLLER: &str = "drover-endpoints-controller";
/// The label on the Endpoints and slices of a headless Service (`clusterIP: None`).
pub const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";
/// The annotation on Endpoints truncated to [`MAX_ENDPOINTS_CAPACITY`] addresses.
pub const OVER_CAPACITY_ANNOTATION: &str = "endpoints.kubernetes.io/over-capacity";
const TRIGGER_TIME_ANNOTATION: &str = "endpoints.kubernetes.io/last-change-trigger-time";
/// At most this many endpoints in one slice (kube-controller-manager's default).
pub const MAX_ENDPOINTS_PER_SLICE: usize = 100;
/// At most this many addresses in one Endpoints object.
pub const MAX_ENDPOINTS_CAPACITY: usize = 1000;

// ---------------------------------------------------------------------------------------------
// Which pods, which addresses, which ports.

/// The Service's selector, when it has one that selects something.
fn selector(svc: &Service) -> Option<&BTreeMap<String, String>> {
    svc.spec
        .as_ref()
        .and_then(|s| s.selector.as_ref())
        .filter(|s| !s.is_empty())
}

/// Whether this controller manages the Service's Endpoints and slices.
fn managed(svc: &Service) -> bool {
    let external = svc
        .spec
        .as_ref()
        .and_then(|s| s.type_.as_deref())
        .is_some_and(|t| t == "ExternalName");
    selector(svc).is_some() && !external
}

/// Whether the Service selects the pod: same namespace, every selector pair among its labels.
fn selects(svc: &Service, pod: &Pod) -> bool {
    let Some(sel) = selector(svc) else {
        return false;
    };
    let ns = |m: &ObjectMeta| m.namespace.clone().unwrap_or_else(|| "default".into());
    ns(&svc.metadata) == ns(&pod.metadata)
        && sel.iter().all(|(k, v)| pod.labels().get(k) == Some(v))
}

fn is_headless(svc: &Service) -> bool {
    svc.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) == Some("None")
}

fn publish_not_ready(svc: &Service) -> bool {
    svc.spec
        .as_ref()
        .and_then(|s| s.publish_not_ready_addresses)
        .unwrap_or(false)
}

fn service_ports(svc: &Service) -> &[ServicePort] {
    svc.spec
        .as_ref()
        .and_then(|s| s.ports.as_deref())
        .unwrap_or(&[])
}

fn is_terminating(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_some()
}

/// Whether the pod may have an address at all: an IP, a node, not finished, and (unless
/// `include_terminating`) not being deleted.
fn eligible(p: &Pod, include_terminating: bool) -> bool {
    !terminal(p)
        && scheduled(p)
        && !pod_ips(p).is_empty()
        && (include_terminating || !is_terminating(p))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Family {
    V4,
    V6,
}

impl Family {
    fn of(ip: &str) -> Option<Family> {
        match ip.parse::<IpAddr>().ok()? {
            IpAddr::V4(_) => Some(Family::V4),
            IpAddr::V6(_) => Some(Family::V6),
        }
    }

    fn address_type(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }
}

/// The pod's IPs, the primary first (status.podIPs, with status.podIP for agents that only
/// set that).
fn pod_ips(p: &Pod) -> Vec<&str> {
    let Some(status) = p.status.as_ref() else {
        return Vec::new();
    };
    let mut ips: Vec<&str> = Vec::new();
    let listed = status.pod_ips.iter().flatten().map(|i| i.ip.as_str());
    for ip in status.pod_ip.as_deref().into_iter().chain(listed) {
        if !ip.is_empty() && !ips.contains(&ip) {
            ips.push(ip);
        }
    }
    ips
}

/// The pod's IP of `family`.
fn pod_ip(p: &Pod, family: Family) -> Option<String> {
    pod_ips(p)
        .into_iter()
        .find(|ip| Family::of(ip) == Some(family))
        .map(str::to_string)
}

/// The families the Service says it serves: spec.ipFamilies, else its cluster IP's.
fn service_families(svc: &Service) -> Option<Vec<Family>> {
    let spec = svc.spec.as_ref()?;
    let mut families: Vec<Family> = Vec::new();
    for f in spec.ip_families.iter().flatten() {
        let f = match f.as_str() {
            "IPv4" => Family::V4,
            "IPv6" => Family::V6,
            _ => continue,
        };
        if !families.contains(&f) {
            families.push(f);
        }
    }
    if families.is_empty() {
        families.extend(spec.cluster_ip.as_deref().and_then(Family::of));
    }
    (!families.is_empty()).then_some(families)
}

/// The port a Service port reaches on `pod`, if the pod has it.
fn resolve_port(sp: &ServicePort, pod: &Pod) -> Option<i32> {
    let protocol = sp.protocol.as_deref().unwrap_or("TCP");
    match &sp.target_port {
        None | Some(IntOrString::Int(0)) => Some(sp.port),
        Some(IntOrString::String(s)) if s.is_empty() => Some(sp.port),
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(name)) => {
            let spec = pod.spec.as_ref()?;
            // Sidecars (init containers that keep running) serve too.
            let sidecars = spec
                .init_containers
                .iter()
                .flatten()
                .filter(|c| c.restart_policy.as_deref() == Some("Always"));
            spec.containers
                .iter()
                .chain(sidecars)
                .flat_map(|c| c.ports.iter().flatten())
                .find(|p| {
                    p.name.as_deref() == Some(name.as_str())
                        && p.protocol.as_deref().unwrap_or("TCP") == protocol
                })
                .map(|p| p.container_port)
        }
    }
}

/// A resolved port: name ("" when unnamed), number, protocol, appProtocol.
type PortKey = (String, i32, String, Option<String>);

/// The Service's ports as they resolve on `pod`, in the Service's order; those the pod lacks
/// are left out.
fn resolved_ports(svc: &Service, pod: &Pod) -> Vec<PortKey> {
    service_ports(svc)
        .iter()
        .filter_map(|sp| {
            let port = resolve_port(sp, pod)?;
            Some((
                sp.name.clone().unwrap_or_default(),
                port,
                sp.protocol.clone().unwrap_or_else(|| "TCP".into()),
                sp.app_protocol.clone(),
            ))
        })
        .collect()
}

/// The pod's hostname in the Service's DNS, when the pod asks for one under it.
fn hostname(svc: &Service, pod: &Pod) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    let host = spec.hostname.as_deref().filter(|h| !h.is_empty())?;
    let under_service = spec.subdomain.as_deref() == Some(svc.name_any().as_str())
        && svc.namespace() == pod.namespace();
    under_service.then(|| host.to_string())
}

fn target_ref(pod: &Pod) -> ObjectReference {
    ObjectReference {
        kind: Some("Pod".into()),
        name: pod.metadata.name.clone(),
        namespace: pod.metadata.namespace.clone(),
        uid: pod.metadata.uid.clone(),
        ..Default::default()
    }
}

fn node_name(pod: &Pod) -> Option<String> {
    pod.spec.as_ref().and_then(|s| s.node_name.clone())
}

/// Sorts addresses by IP (numerically), then pod name: the same world, the same order.
fn ip_order(ip: &str, target: Option<&ObjectReference>) -> (Option<IpAddr>, String, String) {
    (
        ip.parse().ok(),
        ip.to_string(),
        target.and_then(|t| t.name.clone()).unwrap_or_default(),
    )
}

/// The Service's labels without those this controller sets itself, and the headless label.
fn derived_labels(svc: &Service, reserved: &[&str]) -> BTreeMap<String, String> {
    let mut labels: BTreeMap<String, String> = svc
        .labels()
        .iter()
        .filter(|(k, _)| !reserved.contains(&k.as_str()) && k.as_str() != HEADLESS_LABEL)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if is_headless(svc) {
        labels.insert(HEADLESS_LABEL.into(), String::new());
    }
    labels
}

// ---------------------------------------------------------------------------------------------
// Endpoints.

/// The Endpoints object the Service should have, or None when this controller leaves its
/// Endpoints alone (no selector, ExternalName).
pub fn desired_endpoints(svc: &Service, pods: &[Arc<Pod>]) -> Option<Endpoints> {
    if !managed(svc) {
        return None;
    }
    let publish = publish_not_ready(svc);
    let families = service_families(svc);
    let no_ports = service_ports(svc).is_empty();
    // Port set → (ready, not ready) addresses.
    let mut groups: BTreeMap<Vec<PortKey>, (Vec<EndpointAddress>, Vec<EndpointAddress>)> =
        BTreeMap::new();
    for pod in pods
        .iter()
        .filter(|p| selects(svc, p) && eligible(p, publish))
    {
        // The Service's primary family; with none known (headless), the pod's own primary IP.
        let ip = match &families {
            Some(f) => pod_ip(pod, f[0]),
            None => pod_ips(pod).first().map(|ip| ip.to_string()),
        };
        let Some(ip) = ip else { continue };
        let mut ports = if no_ports {
            // Only a headless Service may have addresses without ports.
            if !is_headless(svc) {
                continue;
            }
            Vec::new()
        } else {
            let ports = resolved_ports(svc, pod);
            if ports.is_empty() {
                continue;
            }
            ports
        };
        ports.sort();
        let address = EndpointAddress {
            ip,
            hostname: hostname(svc, pod),
            node_name: node_name(pod),
            target_ref: Some(target_ref(pod)),
        };
        let (ready, not_ready) = groups.entry(ports).or_default();
        if publish || is_ready(pod) {
            ready.push(address);
        } else {
            not_ready.push(address);
        }
    }
    let mut subsets: Vec<EndpointSubset> = groups
        .into_iter()
        .map(|(ports, (mut ready, mut not_ready))| {
            ready.sort_by_key(|a| ip_order(&a.ip, a.target_ref.as_ref()));
            not_ready.sort_by_key(|a| ip_order(&a.ip, a.target_ref.as_ref()));
            EndpointSubset {
                addresses: Some(ready),
                not_ready_addresses: Some(not_ready),
                ports: Some(ports.into_iter().map(endpoint_port).collect()),
            }
        })
        .collect();
    let truncated = truncate(&mut subsets);
    let subsets: Vec<EndpointSubset> = subsets.into_iter().filter_map(tidy_subset).collect();

    let mut labels = derived_labels(svc, &[ENDPOINTS_MANAGED_BY_LABEL]);
    labels.insert(
        ENDPOINTS_MANAGED_BY_LABEL.into(),
        ENDPOINTS_CONTROLLER.into(),
    );
    let annotations = truncated.then(|| {
        BTreeMap::from([(
            OVER_CAPACITY_ANNOTATION.to_string(),
            "truncated".to_string(),
        )])
    });
    Some(Endpoints {
        metadata: ObjectMeta {
            name: Some(svc.name_any()),
            namespace: svc.namespace(),
            labels: Some(labels),
            annotations,
            ..Default::default()
        },
        subsets: (!subsets.is_empty()).then_some(subsets),
    })
}

fn endpoint_port((name, port, protocol, app_protocol): PortKey) -> EndpointPort {
    EndpointPort {
        name: (!name.is_empty()).then_some(name),
        port,
        protocol: Some(protocol),
        app_protocol,
    }
}

/// A subset with its empty lists as absent, or None when it has no address at all.
fn tidy_subset(mut s: EndpointSubset) -> Option<EndpointSubset> {
    let none_if_empty = |v: Option<Vec<EndpointAddress>>| v.filter(|v| !v.is_empty());
    s.addresses = none_if_empty(s.addresses);
    s.not_ready_addresses = none_if_empty(s.not_ready_addresses);
    s.ports = s.ports.filter(|p| !p.is_empty());
    (s.addresses.is_some() || s.not_ready_addresses.is_some()).then_some(s)
}

/// Cuts the subsets down to [`MAX_ENDPOINTS_CAPACITY`] addresses, as Kubernetes does: not-ready
/// addresses go first; each subset keeps its share of what is left, rounded up. Whether
/// anything was cut.
fn truncate(subsets: &mut [EndpointSubset]) -> bool {
    let count = |v: &Option<Vec<EndpointAddress>>| v.as_ref().map_or(0, Vec::len);
    let ready: usize = subsets.iter().map(|s| count(&s.addresses)).sum();
    let not_ready: usize = subsets.iter().map(|s| count(&s.not_ready_addresses)).sum();
    if ready + not_ready <= MAX_ENDPOINTS_CAPACITY {
        return false;
    }
    let cut_ready = ready > MAX_ENDPOINTS_CAPACITY;
    let (max, total) = if cut_ready {
        (MAX_ENDPOINTS_CAPACITY, ready)
    } else {
        (MAX_ENDPOINTS_CAPACITY - ready, not_ready)
    };
    let mut room = max;
    for s in subsets.iter_mut() {
        let list = if cut_ready {
            s.not_ready_addresses = None;
            &mut s.addresses
        } else {
            &mut s.not_ready_addresses
        };
        let here = count(list);
        let share = (here * max).div_ceil(total).min(room);
        if let Some(v) = list.as_mut() {
            v.truncate(share);
        }
        room -= count(list);
    }
    true
}

/// Subsets in a canonical form, to compare what is stored with what is wanted: lists sorted,
/// defaults filled in, empty lists absent, the pods' resourceVersions ignored.
fn canonical_subsets(subsets: Option<&Vec<EndpointSubset>>) -> Vec<EndpointSubset> {
    let canonical_addresses = |v: &Option<Vec<EndpointAddress>>| {
        let mut v = v.clone().unwrap_or_default();
        for a in &mut v {
            if let Some(t) = a.target_ref.as_mut() {
                t.resource_version = None;
            }
        }
        v.sort_by_key(|a| ip_order(&a.ip, a.target_ref.as_ref()));
        Some(v)
    };
    let mut out: Vec<EndpointSubset> = subsets
        .into_iter()
        .flatten()
        .filter_map(|s| {
            let mut ports = s.ports.clone().unwrap_or_default();
            for p in &mut ports {
                p.protocol.get_or_insert_with(|| "TCP".into());
                p.name = p.name.take().filter(|n| !n.is_empty());
            }
            ports.sort_by_key(|p| (p.name.clone(), p.port, p.protocol.clone()));
            tidy_subset(EndpointSubset {
                addresses: canonical_addresses(&s.addresses),
                not_ready_addresses: canonical_addresses(&s.not_ready_addresses),
                ports: Some(ports),
            })
        })
        .collect();
    out.sort_by_key(|s| serde_json::to_string(s).unwrap_or_default());
    out
}

/// Whether the stored Endpoints already say what `desired` says (subsets, labels, the
/// over-capacity annotation).
pub fn endpoints_in_sync(current: &Endpoints, desired: &Endpoints) -> bool {
    let over = |e: &Endpoints| e.annotations().get(OVER_CAPACITY_ANNOTATION).cloned();
    canonical_subsets(current.subsets.as_ref()) == canonical_subsets(desired.subsets.as_ref())
        && current.labels() == desired.labels()
        && over(current) == over(desired)
}

/// `current` rewritten to say what `desired` says, keeping its identity, resourceVersion and
/// other metadata.
fn endpoints_update(current: &Endpoints, desired: &Endpoints) -> Endpoints {
    let mut out = current.clone();
    out.metadata.labels = desired.metadata.labels.clone();
    let mut annotations = current.annotations().clone();
    annotations.remove(OVER_CAPACITY_ANNOTATION);
    annotations.remove(TRIGGER_TIME_ANNOTATION);
    annotations.extend(desired.annotations().clone());
    out.metadata.annotations = (!annotations.is_empty()).then_some(annotations);
    out.subsets = desired.subsets.clone();
    out
}

// ---------------------------------------------------------------------------------------------
// EndpointSlices.

fn slice_labels(svc: &Service) -> BTreeMap<String, String> {
    let mut labels = derived_labels(svc, &[SERVICE_NAME_LABEL, SLICE_MANAGED_BY_LABEL]);
    labels.insert(SERVICE_NAME_LABEL.into(), svc.name_any());
    labels.insert(SLICE_MANAGED_BY_LABEL.into(), SLICE_CONTROLLER.into());
    labels
}

fn new_slice(
    svc: &Service,
    family: Family,
    ports: Vec<PortKey>,
    endpoints: Vec<Endpoint>,
) -> EndpointSlice {
    EndpointSlice {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}-", svc.name_any())),
            namespace: svc.namespace(),
            labels: Some(slice_labels(svc)),
            owner_references: Some(vec![controller_ref(svc)]),
            ..Default::default()
        },
        address_type: family.address_type().into(),
        ports: Some(
            ports
                .into_iter()
                .map(|(name, port, protocol, app_protocol)| SlicePort {
                    name: Some(name),
                    port: Some(port),
                    protocol: Some(protocol),
                    app_protocol,
                })
                .collect(),
        ),
        endpoints,
    }
}

fn slice_endpoint(svc: &Service, pod: &Pod, ip: String) -> Endpoint {
    let serving = is_ready(pod);
    let terminating = is_terminating(pod);
    Endpoint {
        addresses: vec![ip],
        conditions: Some(EndpointConditions {
            ready: Some(publish_not_ready(svc) || (serving && !terminating)),
            serving: Some(serving),
            terminating: Some(terminating),
        }),
        hostname: hostname(svc, pod),
        node_name: node_name(pod),
        target_ref: Some(target_ref(pod)),
        ..Default::default()
    }
}

fn endpoint_order(e: &Endpoint) -> (Option<IpAddr>, String, String) {
    ip_order(
        e.addresses.first().map_or("", String::as_str),
        e.target_ref.as_ref(),
    )
}

/// The EndpointSlices the Service should have, in a fixed order and without names (each is
/// made with `generateName: <service>-`): per address type, per set of resolved ports, the
/// endpoints sorted by IP in chunks of [`MAX_ENDPOINTS_PER_SLICE`]; one empty placeholder
/// slice for an address type with no endpoints. Empty when the Service should have none.
pub fn desired_slices(svc: &Service, pods: &[Arc<Pod>]) -> Vec<EndpointSlice> {
    if !managed(svc) {
        return Vec::new();
    }
    let selected: Vec<&Pod> = pods
        .iter()
        .map(|p| &**p)
        .filter(|p| selects(svc, p) && eligible(p, true))
        .collect();
    // The Service's families; with none known (a headless Service), its pods' (IPv4 if none).
    let families = service_families(svc).unwrap_or_else(|| {
        let seen: BTreeSet<Family> = selected
            .iter()
            .filter_map(|p| pod_ips(p).first().and_then(|ip| Family::of(ip)))
            .collect();
        if seen.is_empty() {
            vec![Family::V4]
        } else {
            seen.into_iter().collect()
        }
    });
    let mut out = Vec::new();
    for family in families {
        let mut groups: BTreeMap<Vec<PortKey>, Vec<Endpoint>> = BTreeMap::new();
        for pod in &selected {
            let Some(ip) = pod_ip(pod, family) else {
                continue;
            };
            groups
                .entry(resolved_ports(svc, pod))
                .or_default()
                .push(slice_endpoint(svc, pod, ip));
        }
        if groups.is_empty() {
            out.push(new_slice(svc, family, Vec::new(), Vec::new()));
        }
        for (ports, mut endpoints) in groups {
            endpoints.sort_by_key(endpoint_order);
            for chunk in endpoints.chunks(MAX_ENDPOINTS_PER_SLICE) {
                out.push(new_slice(svc, family, ports.clone(), chunk.to_vec()));
            }
        }
    }
    out
}

/// What a slice says, in a canonical form: address type, ports, endpoints, labels.
type SliceContent = (
    String,
    Vec<SlicePort>,
    Vec<Endpoint>,
    BTreeMap<String, String>,
);

fn slice_content(s: &EndpointSlice) -> SliceContent {
    let mut ports = s.ports.clone().unwrap_or_default();
    for p in &mut ports {
        p.name.get_or_insert_with(String::new);
        p.protocol.get_or_insert_with(|| "TCP".into());
    }
    ports.sort_by_key(|p| (p.name.clone(), p.port, p.protocol.clone()));
    let mut endpoints = s.endpoints.clone();
    for e in &mut endpoints {
        if let Some(t) = e.target_ref.as_mut() {
            t.resource_version = None;
        }
    }
    endpoints.sort_by_key(endpoint_order);
    (s.address_type.clone(), ports, endpoints, s.labels().clone())
}

/// Whether the slice's controller ownerReference is this Service.
fn owned_by(slice: &EndpointSlice, svc: &Service) -> bool {
    let uid = svc.metadata.uid.as_deref().unwrap_or_default();
    slice
        .owner_references()
        .iter()
        .any(|o| o.controller == Some(true) && o.kind == "Service" && o.uid == uid)
}

/// The slice writes that turn the existing slices into the desired ones.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct SlicePlan {
    /// Slices to create (with `generateName`).
    pub create: Vec<EndpointSlice>,
    /// Existing slices rewritten (name and resourceVersion of the one they replace).
    pub update: Vec<EndpointSlice>,
    /// Names of slices to delete.
    pub delete: Vec<String>,
}

impl SlicePlan {
    pub fn is_empty(&self) -> bool {
        self.create.is_empty() && self.update.is_empty() && self.delete.is_empty()
    }
}

/// Pairs the desired slices with `existing` (this controller's slices labelled for the
/// Service): a slice that already says what one desired says stays as it is; the others are
/// reused in name order for the rest of their address type; what is left is created or
/// deleted. Slices owned by another object (an older Service of the same name) are deleted.
pub fn plan_slices(
    svc: &Service,
    desired: Vec<EndpointSlice>,
    existing: &[Arc<EndpointSlice>],
) -> SlicePlan {
    let mut plan = SlicePlan::default();
    let mut pool: Vec<&EndpointSlice> = Vec::new();
    for s in existing {
        if owned_by(s, svc) {
            pool.push(s);
        } else {
            plan.delete.push(s.name_any());
        }
    }
    pool.sort_by_key(|s| s.name_any());
    let mut contents: Vec<Option<SliceContent>> =
        pool.iter().map(|s| Some(slice_content(s))).collect();
    // First, the slices that stay as they are.
    let mut rest: Vec<EndpointSlice> = Vec::new();
    for want in desired {
        let content = slice_content(&want);
        match contents.iter().position(|c| c.as_ref() == Some(&content)) {
            Some(i) => contents[i] = None,
            None => rest.push(want),
        }
    }
    // Then the others, rewritten in place where one of their address type is free.
    for want in rest {
        let free = pool
            .iter()
            .zip(&contents)
            .position(|(s, c)| c.is_some() && s.address_type == want.address_type);
        match free {
            Some(i) => {
                contents[i] = None;
                let mut updated = pool[i].clone();
                updated.metadata.labels = want.metadata.labels.clone();
                updated.metadata.owner_references = want.metadata.owner_references.clone();
                updated.ports = want.ports;
                updated.endpoints = want.endpoints;
                plan.update.push(updated);
            }
            None => plan.create.push(want),
        }
    }
    for (s, c) in pool.iter().zip(&contents) {
        if c.is_some() {
            plan.delete.push(s.name_any());
        }
    }
    plan
}

// ---------------------------------------------------------------------------------------------
// Which Services a change concerns.

/// The Services whose selector selects `pod` (in its namespace): those to reconcile when the
/// pod changes.
pub fn services_selecting(services: &[Arc<Service>], pod: &Pod) -> Vec<ObjectRef<Service>> {
    let mut out: Vec<ObjectRef<Service>> = services
        .iter()
        .filter(|s| selects(s, pod))
        .map(|s| ObjectRef::from_obj(&**s))
        .collect();
    out.sort_by_key(|r| (r.namespace.clone(), r.name.clone()));
    out.dedup();
    out
}

/// [`services_selecting`], and the Services whose slices list the pod: a pod whose labels no
/// longer match must leave the Services that selected it, and the watch only shows its new
/// labels. The mapper for `watches_stream(pods.subscribe(), …)`.
pub fn services_for_pod(
    services: &[Arc<Service>],
    slices: &[Arc<EndpointSlice>],
    pod: &Pod,
) -> Vec<ObjectRef<Service>> {
    let mut out = services_selecting(services, pod);
    let ns = pod.namespace();
    for s in slices {
        let listed = s.namespace() == ns
            && s.endpoints.iter().any(|e| {
                e.target_ref.as_ref().is_some_and(|t| {
                    t.kind.as_deref() == Some("Pod") && t.name == pod.metadata.name
                })
            });
        if let (true, Some(name)) = (listed, s.labels().get(SERVICE_NAME_LABEL)) {
            let mut r = ObjectRef::new(name);
            r.namespace = ns.clone();
            out.push(r);
        }
    }
    out.sort_by_key(|r| (r.namespace.clone(), r.name.clone()));
    out.dedup();
    out
}

/// The Service an Endpoints object belongs to (same name and namespace): a mapper for
/// `watches_stream(endpoints.subscribe(), …)`, so that Endpoints changed by hand are put back.
pub fn service_of_endpoints(ep: &Endpoints) -> Option<ObjectRef<Service>> {
    let mut r = ObjectRef::new(ep.metadata.name.as_deref()?);
    r.namespace = ep.namespace();
    Some(r)
}

// ---------------------------------------------------------------------------------------------
// Writing.

pub struct Context {
    pub client: kube::Client,
    pub pods: Store<Pod>,
    pub endpoints: Store<Endpoints>,
    pub slices: Store<EndpointSlice>,
    /// Slice writes per Service (`namespace/name`) not yet seen in the cache, so that a
    /// reconcile racing the watch does not create a slice twice.
    pub slice_writes: Expectations<(), EndpointSlice>,
}

/// A slice is deleted at once (nothing holds it in a grace period): a deletion is seen when
/// the cache no longer holds the slice.
impl Tracked for EndpointSlice {}

/// Writes the Endpoints if they differ from the cache's. Whether it wrote.
async fn sync_endpoints(ctx: &Context, ns: &str, desired: Endpoints) -> Result<bool, Error> {
    let name = desired.name_any();
    let api: Api<Endpoints> = Api::namespaced(ctx.client.clone(), ns);
    let key = ObjectRef::<Endpoints>::new(&name).within(ns);
    match ctx.endpoints.get(&key) {
        None => {
            // A 409 (made meanwhile, not yet in the cache) is an error: retried from a fresher
            // cache.
            api.create(&PostParams::default(), &desired)
                .await
                .map_err(failed(format!("creating endpoints {ns}/{name}")))?;
            Ok(true)
        }
        Some(current) if endpoints_in_sync(&current, &desired) => Ok(false),
        Some(current) => {
            let updated = endpoints_update(&current, &desired);
            api.replace(&name, &PostParams::default(), &updated)
                .await
                .map_err(failed(format!("updating endpoints {ns}/{name}")))?;
            Ok(true)
        }
    }
}

/// Writes the slice plan: creations first, then updates, then deletions, so that consumers
/// never see a pod vanish and come back. Whether it wrote.
async fn sync_slices(ctx: &Context, svc: &Service, plan: &SlicePlan) -> Result<bool, Error> {
    let ns = svc.namespace().unwrap_or_else(|| "default".into());
    let key = format!("{ns}/{}", svc.name_any());
    let api: Api<EndpointSlice> = Api::namespaced(ctx.client.clone(), &ns);
    for slice in &plan.create {
        let made = api
            .create(&PostParams::default(), slice)
            .await
            .map_err(failed(format!("service {key}: creating an endpointslice")))?;
        ctx.slice_writes.created(&key, made.name_any(), ());
    }
    for slice in &plan.update {
        let slice_name = slice.name_any();
        let old = slice.metadata.resource_version.clone().unwrap_or_default();
        api.replace(&slice_name, &PostParams::default(), slice)
            .await
            .map_err(failed(format!(
                "service {key}: updating endpointslice {slice_name}"
            )))?;
        ctx.slice_writes.updated(&key, slice_name, old);
    }
    for slice_name in &plan.delete {
        match api.delete(slice_name, &DeleteParams::default()).await {
            Ok(_) => ctx.slice_writes.deleted(&key, slice_name.clone()),
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => {
                return Err(failed(format!(
                    "service {key}: deleting endpointslice {slice_name}"
                ))(e))
            }
        }
    }
    Ok(!plan.is_empty())
}

/// This controller's slices labelled for the Service `ns/name`, from the cache.
fn cached_slices(ctx: &Context, ns: &str, name: &str) -> Vec<Arc<EndpointSlice>> {
    ctx.slices
        .state()
        .into_iter()
        .filter(|s| {
            s.namespace().as_deref() == Some(ns)
                && s.labels().get(SERVICE_NAME_LABEL).map(String::as_str) == Some(name)
                && s.labels().get(SLICE_MANAGED_BY_LABEL).map(String::as_str)
                    == Some(SLICE_CONTROLLER)
        })
        .collect()
}

/// Brings one Service's Endpoints and EndpointSlices in line with its pods.
pub async fn reconcile(svc: Arc<Service>, ctx: Arc<Context>) -> Result<Action, Error> {
    if svc.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = svc.namespace().unwrap_or_else(|| "default".into());
    let name = svc.name_any();
    let pods: Vec<Arc<Pod>> = ctx
        .pods
        .state()
        .into_iter()
        .filter(|p| p.namespace().as_deref() == Some(ns.as_str()))
        .collect();
    let mut wrote = false;
    if let Some(desired) = desired_endpoints(&svc, &pods) {
        wrote |= sync_endpoints(&ctx, &ns, desired).await?;
    }
    let existing = cached_slices(&ctx, &ns, &name);
    if !ctx
        .slice_writes
        .pending(&format!("{ns}/{name}"), &existing)
        .is_empty()
    {
        // Our last writes are not in the cache yet: deciding now would write them again.
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    let plan = plan_slices(&svc, desired_slices(&svc, &pods), &existing);
    wrote |= sync_slices(&ctx, &svc, &plan).await?;
    // After a write, look again soon, in case the cache that woke this reconcile ran ahead of
    // the one it decided from.
    Ok(requeue::after_success(wrote, None))
}

/// Deletes what this controller made for Services that are gone: Endpoints labelled
/// [`ENDPOINTS_MANAGED_BY_LABEL`]` = `[`ENDPOINTS_CONTROLLER`] with no Service of their name,
/// and its slices whose Service is gone (the garbage collector deletes those too; this covers
/// slices with no usable ownerReference). Never `default/kubernetes`, which the API server
/// keeps. Waits for both caches' first list. Returns how many objects it deleted.
pub async fn cleanup_orphans(ctx: &Context, services: &Store<Service>) -> Result<usize, Error> {
    // Deciding from a cache not yet filled would delete everything.
    if services.wait_until_ready().await.is_err()
        || ctx.endpoints.wait_until_ready().await.is_err()
        || ctx.slices.wait_until_ready().await.is_err()
    {
        return Ok(0);
    }
    let exists = |ns: Option<String>, name: &str| {
        let mut r = ObjectRef::<Service>::new(name);
        r.namespace = ns;
        services.get(&r).is_some()
    };
    let mut deleted = 0;
    for ep in ctx.endpoints.state() {
        let (ns, name) = (ep.namespace(), ep.name_any());
        let ours = ep
            .labels()
            .get(ENDPOINTS_MANAGED_BY_LABEL)
            .map(String::as_str)
            == Some(ENDPOINTS_CONTROLLER);
        let apiserver_own = ns.as_deref() == Some("default") && name == "kubernetes";
        if !ours || apiserver_own || exists(ns.clone(), &name) {
            continue;
        }
        let ns = ns.unwrap_or_else(|| "default".into());
        let api: Api<Endpoints> = Api::namespaced(ctx.client.clone(), &ns);
        if delete_exactly(&api, &name, ep.metadata.uid.clone())
            .await
            .map_err(failed(format!("deleting orphan endpoints {ns}/{name}")))?
        {
            tracing::info!("endpoints {ns}/{name}: deleted, its service is gone");
            deleted += 1;
        }
    }
    for slice in ctx.slices.state() {
        let ours = slice
            .labels()
            .get(SLICE_MANAGED_BY_LABEL)
            .map(String::as_str)
            == Some(SLICE_CONTROLLER);
        let Some(service) = slice.labels().get(SERVICE_NAME_LABEL) else {
            continue;
        };
        if !ours || exists(slice.namespace(), service) {
            continue;
        }
        let ns = slice.namespace().unwrap_or_else(|| "default".into());
        let name = slice.name_any();
        let api: Api<EndpointSlice> = Api::namespaced(ctx.client.clone(), &ns);
        if delete_exactly(&api, &name, slice.metadata.uid.clone())
            .await
            .map_err(failed(format!("deleting orphan endpointslice {ns}/{name}")))?
        {
            deleted += 1;
        }
    }
    Ok(deleted)
}

/// Deletes the object of this uid only (not a newer one of the same name). Whether it did;
/// gone already or replaced meanwhile is not an error.
async fn delete_exactly<K>(api: &Api<K>, name: &str, uid: Option<String>) -> kube::Result<bool>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid,
            resource_version: None,
        }),
        ..Default::default()
    };
    match api.delete(name, &params).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    /// A Service `web` in `default` selecting app=web, with `spec` merged into its spec.
    fn svc(spec: Value) -> Service {
        let mut s = json!({
            "metadata": {"name": "web", "namespace": "default", "uid": "svc-uid", "labels": {"team": "a"}},
            "spec": {"selector": {"app": "web"}, "clusterIP": "10.96.0.20", "ipFamilies": ["IPv4"],
                     "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]},
        });
        for (k, v) in spec.as_object().unwrap() {
            if v.is_null() {
                s["spec"].as_object_mut().unwrap().remove(k);
            } else {
                s["spec"][k] = v.clone();
            }
        }
        serde_json::from_value(s).unwrap()
    }

    /// A running pod of app=web on node n1 with `ip`, Ready or not; `extra` patches it:
    /// `{"metadata": {...}, "spec": {...}, "status": {...}}` merged one level deep.
    fn pod_with(name: &str, ip: &str, ready: bool, extra: Value) -> Arc<Pod> {
        let mut p = json!({
            "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"), "labels": {"app": "web"}},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "i",
                     "ports": [{"name": "web", "containerPort": 9090, "protocol": "TCP"}]}]},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                       "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]},
        });
        for (part, fields) in extra.as_object().unwrap() {
            for (k, v) in fields.as_object().unwrap() {
                if v.is_null() {
                    p[part].as_object_mut().unwrap().remove(k);
                } else {
                    p[part][k] = v.clone();
                }
            }
        }
        Arc::new(serde_json::from_value(p).unwrap())
    }

    fn pod(name: &str, ip: &str, ready: bool) -> Arc<Pod> {
        pod_with(name, ip, ready, json!({}))
    }

    fn terminating(name: &str, ip: &str, ready: bool) -> Arc<Pod> {
        pod_with(
            name,
            ip,
            ready,
            json!({"metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z"}}),
        )
    }

    fn ips(v: &Option<Vec<EndpointAddress>>) -> Vec<&str> {
        v.iter().flatten().map(|a| a.ip.as_str()).collect()
    }

    /// (ip, ready, serving, terminating) of every endpoint of the slices, in order.
    fn conditions(slices: &[EndpointSlice]) -> Vec<(String, bool, bool, bool)> {
        slices
            .iter()
            .flat_map(|s| &s.endpoints)
            .map(|e| {
                let c = e.conditions.clone().unwrap();
                (
                    e.addresses[0].clone(),
                    c.ready.unwrap(),
                    c.serving.unwrap(),
                    c.terminating.unwrap(),
                )
            })
            .collect()
    }

    /// What the cache would hold after the API server stored `s` under `name`.
    fn stored(s: &EndpointSlice, name: &str, rv: &str) -> Arc<EndpointSlice> {
        let mut v = serde_json::to_value(s).unwrap();
        v["metadata"]["name"] = json!(name);
        v["metadata"]["resourceVersion"] = json!(rv);
        v["metadata"]
            .as_object_mut()
            .unwrap()
            .remove("generateName");
        Arc::new(serde_json::from_value(v).unwrap())
    }

    #[test]
    fn services_without_a_selector_or_external_name_get_nothing() {
        let pods = [pod("a", "10.0.0.1", true)];
        for spec in [
            json!({"selector": null}),
            json!({"selector": {}}),
            json!({"type": "ExternalName", "externalName": "example.com"}),
        ] {
            let s = svc(spec);
            assert_eq!(desired_endpoints(&s, &pods), None, "{:?}", s.spec);
            assert!(desired_slices(&s, &pods).is_empty());
        }
    }

    #[test]
    fn ready_pods_are_addresses_and_the_others_not_ready_addresses() {
        let pods = [
            pod("a", "10.0.0.1", true),
            pod("b", "10.0.0.2", false),
            terminating("c", "10.0.0.3", true),
        ];
        let ep = desired_endpoints(&svc(json!({})), &pods).unwrap();
        assert_eq!(ep.metadata.name.as_deref(), Some("web"));
        assert_eq!(
            ep.labels(),
            &BTreeMap::from([
                ("team".to_string(), "a".to_string()),
                (
                    ENDPOINTS_MANAGED_BY_LABEL.to_string(),
                    ENDPOINTS_CONTROLLER.to_string()
                ),
            ])
        );
        let subsets = ep.subsets.unwrap();
        assert_eq!(subsets.len(), 1);
        assert_eq!(ips(&subsets[0].addresses), ["10.0.0.1"]);
        assert_eq!(
            ips(&subsets[0].not_ready_addresses),
            ["10.0.0.2"],
            "the terminating pod is left out"
        );
        assert_eq!(
            subsets[0].ports,
            Some(vec![EndpointPort {
                name: Some("http".into()),
                port: 8080,
                protocol: Some("TCP".into()),
                app_protocol: None
            }])
        );
        let a = &subsets[0].addresses.as_ref().unwrap()[0];
        assert_eq!(a.node_name.as_deref(), Some("n1"));
        let t = a.target_ref.as_ref().unwrap();
        assert_eq!(
            (
                t.kind.as_deref(),
                t.name.as_deref(),
                t.namespace.as_deref(),
                t.uid.as_deref()
            ),
            (Some("Pod"), Some("a"), Some("default"), Some("uid-a"))
        );
        assert_eq!(a.hostname, None);
    }

    #[test]
    fn slices_carry_ready_serving_and_terminating_conditions() {
        let pods = [
            pod("a", "10.0.0.1", true),
            pod("b", "10.0.0.2", false),
            terminating("c", "10.0.0.3", true),
            terminating("d", "10.0.0.4", false),
        ];
        let slices = desired_slices(&svc(json!({})), &pods);
        assert_eq!(slices.len(), 1);
        assert_eq!(
            conditions(&slices),
            [
                ("10.0.0.1".into(), true, true, false),
                ("10.0.0.2".into(), false, false, false),
                ("10.0.0.3".into(), false, true, true),
                ("10.0.0.4".into(), false, false, true),
            ]
        );
        let s = &slices[0];
        assert_eq!(s.address_type, "IPv4");
        assert_eq!(s.metadata.generate_name.as_deref(), Some("web-"));
        assert_eq!(s.metadata.name, None);
        assert_eq!(s.labels().get(SERVICE_NAME_LABEL).unwrap(), "web");
        assert_eq!(
            s.labels().get(SLICE_MANAGED_BY_LABEL).unwrap(),
            SLICE_CONTROLLER
        );
        assert_eq!(s.labels().get("team").unwrap(), "a");
        let owner = &s.owner_references()[0];
        assert_eq!(
            (
                owner.kind.as_str(),
                owner.uid.as_str(),
                owner.controller,
                owner.block_owner_deletion
            ),
            ("Service", "svc-uid", Some(true), Some(true))
        );
        assert_eq!(
            s.ports,
            Some(vec![SlicePort {
                name: Some("http".into()),
                port: Some(8080),
                protocol: Some("TCP".into()),
                app_protocol: None
            }])
        );
        assert_eq!(s.endpoints[0].node_name.as_deref(), Some("n1"));
        assert_eq!(
            s.endpoints[0].target_ref.as_ref().unwrap().name.as_deref(),
            Some("a")
        );
    }

    #[test]
    fn publish_not_ready_addresses_makes_every_pod_ready() {
        let s = svc(json!({"publishNotReadyAddresses": true}));
        let pods = [
            pod("a", "10.0.0.1", true),
            pod("b", "10.0.0.2", false),
            terminating("c", "10.0.0.3", false),
        ];
        let subsets = desired_endpoints(&s, &pods).unwrap().subsets.unwrap();
        assert_eq!(
            ips(&subsets[0].addresses),
            ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
        );
        assert_eq!(subsets[0].not_ready_addresses, None);
        assert_eq!(
            conditions(&desired_slices(&s, &pods)),
            [
                ("10.0.0.1".into(), true, true, false),
                ("10.0.0.2".into(), true, false, false),
                ("10.0.0.3".into(), true, false, true),
            ]
        );
    }

    #[test]
    fn pods_without_ip_node_or_match_and_finished_pods_are_left_out() {
        let pods = [
            pod("ok", "10.0.0.1", true),
            pod_with(
                "no-ip",
                "",
                true,
                json!({"status": {"podIP": null, "podIPs": null}}),
            ),
            pod_with(
                "no-node",
                "10.0.0.3",
                true,
                json!({"spec": {"nodeName": null}}),
            ),
            pod_with(
                "done",
                "10.0.0.4",
                false,
                json!({"status": {"phase": "Succeeded"}}),
            ),
            pod_with(
                "failed",
                "10.0.0.5",
                false,
                json!({"status": {"phase": "Failed"}}),
            ),
            pod_with(
                "other-app",
                "10.0.0.6",
                true,
                json!({"metadata": {"labels": {"app": "api"}}}),
            ),
            pod_with(
                "other-ns",
                "10.0.0.7",
                true,
                json!({"metadata": {"namespace": "prod"}}),
            ),
            // podIP alone (no podIPs) is enough.
            pod_with(
                "ip-only",
                "10.0.0.8",
                true,
                json!({"status": {"podIPs": null}}),
            ),
        ];
        let s = svc(json!({}));
        let subsets = desired_endpoints(&s, &pods).unwrap().subsets.unwrap();
        assert_eq!(ips(&subsets[0].addresses), ["10.0.0.1", "10.0.0.8"]);
        let slices = desired_slices(&s, &pods);
        let listed: Vec<String> = conditions(&slices).into_iter().map(|c| c.0).collect();
        assert_eq!(listed, ["10.0.0.1", "10.0.0.8"]);
    }

    #[test]
    fn named_target_ports_resolve_per_pod_and_group_the_addresses() {
        let s = svc(json!({"ports": [
            {"name": "http", "port": 80, "protocol": "TCP", "targetPort": "web"},
            {"name": "metrics", "port": 9100, "protocol": "TCP"},
        ]}));
        let pods = [
            pod("a", "10.0.0.1", true),
            // Another container port number under the same name.
            pod_with(
                "b",
                "10.0.0.2",
                true,
                json!({"spec": {"containers": [{"name": "c", "image": "i",
                "ports": [{"name": "web", "containerPort": 7070}]}]}}),
            ),
            // No port of that name: only the metrics port.
            pod_with(
                "c",
                "10.0.0.3",
                false,
                json!({"spec": {"containers": [{"name": "c", "image": "i"}]}}),
            ),
            // The name with another protocol does not count.
            pod_with(
                "d",
                "10.0.0.4",
                true,
                json!({"spec": {"containers": [{"name": "c", "image": "i",
                "ports": [{"name": "web", "containerPort": 9090, "protocol": "UDP"}]}]}}),
            ),
            // A sidecar's port counts.
            pod_with(
                "e",
                "10.0.0.5",
                true,
                json!({"spec": {"containers": [{"name": "c", "image": "i"}],
                "initContainers": [{"name": "s", "image": "i", "restartPolicy": "Always",
                    "ports": [{"name": "web", "containerPort": 9090}]}]}}),
            ),
        ];
        let subsets = desired_endpoints(&s, &pods).unwrap().subsets.unwrap();
        let summary: Vec<(Vec<i32>, Vec<&str>, Vec<&str>)> = subsets
            .iter()
            .map(|s| {
                let ports = s.ports.iter().flatten().map(|p| p.port).collect();
                (ports, ips(&s.addresses), ips(&s.not_ready_addresses))
            })
            .collect();
        assert_eq!(
            summary,
            [
                (vec![7070, 9100], vec!["10.0.0.2"], vec![]),
                (vec![9090, 9100], vec!["10.0.0.1", "10.0.0.5"], vec![]),
                (vec![9100], vec!["10.0.0.4"], vec!["10.0.0.3"]),
            ]
        );
        let slices = desired_slices(&s, &pods);
        let summary: Vec<(Vec<i32>, Vec<String>)> = slices
            .iter()
            .map(|s| {
                let ports = s.ports.iter().flatten().filter_map(|p| p.port).collect();
                (
                    ports,
                    s.endpoints.iter().map(|e| e.addresses[0].clone()).collect(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                (vec![7070, 9100], vec!["10.0.0.2".to_string()]),
                (vec![9090, 9100], vec!["10.0.0.1".into(), "10.0.0.5".into()]),
                (vec![9100], vec!["10.0.0.3".into(), "10.0.0.4".into()]),
            ]
        );
    }

    #[test]
    fn a_missing_target_port_is_the_service_port() {
        let s = svc(json!({"ports": [{"port": 80, "protocol": "TCP", "appProtocol": "http"}]}));
        let pods = [pod("a", "10.0.0.1", true)];
        let subsets = desired_endpoints(&s, &pods).unwrap().subsets.unwrap();
        let port = &subsets[0].ports.as_ref().unwrap()[0];
        assert_eq!((port.name.as_deref(), port.port), (None, 80));
        assert_eq!(port.app_protocol.as_deref(), Some("http"));
        let slices = desired_slices(&s, &pods);
        let port = &slices[0].ports.as_ref().unwrap()[0];
        assert_eq!((port.name.as_deref(), port.port), (Some(""), Some(80)));
        assert_eq!(port.app_protocol.as_deref(), Some("http"));
    }

    #[test]
    fn hostnames_only_for_pods_in_the_service_subdomain() {
        let pods = [
            pod_with(
                "a",
                "10.0.0.1",
                true,
                json!({"spec": {"hostname": "a-0", "subdomain": "web"}}),
            ),
            pod_with(
                "b",
                "10.0.0.2",
                true,
                json!({"spec": {"hostname": "b-0", "subdomain": "other"}}),
            ),
            pod_with("c", "10.0.0.3", true, json!({"spec": {"subdomain": "web"}})),
        ];
        let s = svc(json!({}));
        let subsets = desired_endpoints(&s, &pods).unwrap().subsets.unwrap();
        let hosts: Vec<Option<&str>> = subsets[0]
            .addresses
            .iter()
            .flatten()
            .map(|a| a.hostname.as_deref())
            .collect();
        assert_eq!(hosts, [Some("a-0"), None, None]);
        let slices = desired_slices(&s, &pods);
        let hosts: Vec<Option<&str>> = slices[0]
            .endpoints
            .iter()
            .map(|e| e.hostname.as_deref())
            .collect();
        assert_eq!(hosts, [Some("a-0"), None, None]);
    }

    #[test]
    fn a_service_without_pods_has_empty_endpoints_and_a_placeholder_slice() {
        let s = svc(json!({}));
        let ep = desired_endpoints(&s, &[]).unwrap();
        assert_eq!(ep.subsets, None);
        let slices = desired_slices(&s, &[]);
        assert_eq!(slices.len(), 1);
        assert!(slices[0].endpoints.is_empty());
        assert_eq!(slices[0].ports, Some(vec![]));
        assert_eq!(slices[0].address_type, "IPv4");
    }

    #[test]
    fn slices_hold_at_most_100_endpoints_in_ip_order() {
        let pods: Vec<Arc<Pod>> = (0..250)
            .rev()
            .map(|i| {
                pod(
                    &format!("p{i}"),
                    &format!("10.0.{}.{}", i / 200, i % 200),
                    i % 2 == 0,
                )
            })
            .collect();
        let slices = desired_slices(&svc(json!({})), &pods);
        let sizes: Vec<usize> = slices.iter().map(|s| s.endpoints.len()).collect();
        assert_eq!(sizes, [100, 100, 50]);
        let all: Vec<String> = conditions(&slices).into_iter().map(|c| c.0).collect();
        let expected: Vec<String> = (0..250)
            .map(|i| format!("10.0.{}.{}", i / 200, i % 200))
            .collect();
        assert_eq!(
            all, expected,
            "numeric IP order (10.0.0.9 before 10.0.0.10)"
        );
    }

    #[test]
    fn the_same_pods_in_any_order_give_the_same_objects() {
        let mut pods: Vec<Arc<Pod>> = (0..130)
            .map(|i| pod(&format!("p{i}"), &format!("10.1.0.{}", i), i % 3 != 0))
            .collect();
        pods.push(terminating("t", "10.1.1.1", true));
        let s = svc(json!({}));
        let ep = desired_endpoints(&s, &pods);
        let slices = desired_slices(&s, &pods);
        pods.reverse();
        pods.rotate_left(17);
        assert_eq!(desired_endpoints(&s, &pods), ep);
        assert_eq!(desired_slices(&s, &pods), slices);
    }

    #[test]
    fn ipv6_pods_of_a_headless_service_get_ipv6_slices() {
        let s = svc(json!({"clusterIP": "None", "ipFamilies": null}));
        let pods = [pod("a", "fd00::2", true), pod("b", "fd00::1", false)];
        let slices = desired_slices(&s, &pods);
        assert_eq!(slices.len(), 1);
        assert_eq!(slices[0].address_type, "IPv6");
        assert_eq!(slices[0].labels().get(HEADLESS_LABEL).unwrap(), "");
        let listed: Vec<String> = conditions(&slices).into_iter().map(|c| c.0).collect();
        assert_eq!(listed, ["fd00::1", "fd00::2"]);
        let ep = desired_endpoints(&s, &pods).unwrap();
        assert_eq!(ep.labels().get(HEADLESS_LABEL).unwrap(), "");
        let subsets = ep.subsets.unwrap();
        assert_eq!(ips(&subsets[0].addresses), ["fd00::2"]);
        // An IPv4 Service takes the pods' IPv4 addresses only.
        let v4 = svc(json!({}));
        let dual = pod_with(
            "d",
            "10.0.0.9",
            true,
            json!({"status": {"podIPs": [{"ip": "10.0.0.9"}, {"ip": "fd00::9"}]}}),
        );
        let slices = desired_slices(&v4, &[pods[0].clone(), dual]);
        assert_eq!(slices.len(), 1);
        assert_eq!(conditions(&slices)[0].0, "10.0.0.9");
    }

    #[test]
    fn a_headless_service_without_ports_lists_addresses_without_ports() {
        let s = svc(json!({"clusterIP": "None", "ipFamilies": null, "ports": null}));
        let pods = [pod("a", "10.0.0.1", true)];
        let subsets = desired_endpoints(&s, &pods).unwrap().subsets.unwrap();
        assert_eq!(ips(&subsets[0].addresses), ["10.0.0.1"]);
        assert_eq!(subsets[0].ports, None);
        let slices = desired_slices(&s, &pods);
        assert_eq!(slices[0].endpoints.len(), 1);
        assert_eq!(slices[0].ports, Some(vec![]));
    }

    #[test]
    fn endpoints_beyond_1000_addresses_are_truncated_not_ready_first() {
        let pods: Vec<Arc<Pod>> = (0..1100)
            .map(|i| {
                pod(
                    &format!("p{i}"),
                    &format!("10.2.{}.{}", i / 250, i % 250),
                    i < 900,
                )
            })
            .collect();
        let ep = desired_endpoints(&svc(json!({})), &pods).unwrap();
        assert_eq!(
            ep.annotations()
                .get(OVER_CAPACITY_ANNOTATION)
                .map(String::as_str),
            Some("truncated")
        );
        let subsets = ep.subsets.unwrap();
        assert_eq!(ips(&subsets[0].addresses).len(), 900);
        assert_eq!(ips(&subsets[0].not_ready_addresses).len(), 100);
        let under = desired_endpoints(&svc(json!({})), &pods[..1000]).unwrap();
        assert!(under.annotations().is_empty());
    }

    #[test]
    fn stored_endpoints_in_another_order_are_in_sync() {
        let s = svc(json!({}));
        let pods = [pod("a", "10.0.0.1", true), pod("b", "10.0.0.2", false)];
        let desired = desired_endpoints(&s, &pods).unwrap();
        // As stored: another address order, resourceVersions, protocol left to defaults.
        let mut v = serde_json::to_value(&desired).unwrap();
        v["metadata"]["resourceVersion"] = json!("7");
        v["subsets"][0]["addresses"][0]["targetRef"]["resourceVersion"] = json!("3");
        v["subsets"][0]["ports"][0]
            .as_object_mut()
            .unwrap()
            .remove("protocol");
        let current: Endpoints = serde_json::from_value(v).unwrap();
        assert!(endpoints_in_sync(&current, &desired));
        // A pod turned ready: out of sync; the rewrite keeps the stored identity.
        let later = desired_endpoints(&s, &[pods[0].clone(), pod("b", "10.0.0.2", true)]).unwrap();
        assert!(!endpoints_in_sync(&current, &later));
        let updated = endpoints_update(&current, &later);
        assert_eq!(updated.metadata.resource_version.as_deref(), Some("7"));
        assert!(endpoints_in_sync(&updated, &later));
        // Labels count too.
        let relabelled = svc(json!({}));
        let mut relabelled = relabelled;
        relabelled.metadata.labels = None;
        assert!(!endpoints_in_sync(
            &current,
            &desired_endpoints(&relabelled, &pods).unwrap()
        ));
    }

    #[test]
    fn an_unchanged_world_plans_no_slice_writes() {
        let s = svc(json!({}));
        let pods: Vec<Arc<Pod>> = (0..150)
            .map(|i| pod(&format!("p{i}"), &format!("10.3.0.{i}"), true))
            .collect();
        let desired = desired_slices(&s, &pods);
        // Generated names need not sort in the desired order.
        let existing = vec![
            stored(&desired[1], "web-aaaaa", "5"),
            stored(&desired[0], "web-zzzzz", "6"),
        ];
        let plan = plan_slices(&s, desired, &existing);
        assert!(plan.is_empty(), "{plan:?}");
        assert!(plan_slices(&s, desired_slices(&s, &[]), &[]).create.len() == 1);
    }

    #[test]
    fn slices_are_rewritten_in_place_created_and_deleted() {
        let s = svc(json!({}));
        let pods: Vec<Arc<Pod>> = (0..150)
            .map(|i| pod(&format!("p{i}"), &format!("10.3.0.{i}"), true))
            .collect();
        let before = desired_slices(&s, &pods);
        let existing = vec![
            stored(&before[0], "web-a", "5"),
            stored(&before[1], "web-b", "6"),
        ];
        // One pod turns unready: the second slice is rewritten, the first stays.
        let mut changed = pods.clone();
        changed[120] = pod("p120", "10.3.0.120", false);
        let plan = plan_slices(&s, desired_slices(&s, &changed), &existing);
        assert!(plan.create.is_empty() && plan.delete.is_empty());
        assert_eq!(plan.update.len(), 1);
        let u = &plan.update[0];
        assert_eq!(u.metadata.name.as_deref(), Some("web-b"));
        assert_eq!(u.metadata.resource_version.as_deref(), Some("6"));
        assert_eq!(u.endpoints.len(), 50);
        // 250 pods: one more slice.
        let more: Vec<Arc<Pod>> = (0..250)
            .map(|i| {
                pod(
                    &format!("p{i}"),
                    &format!("10.3.{}.{}", i / 200, i % 200),
                    true,
                )
            })
            .collect();
        let plan = plan_slices(&s, desired_slices(&s, &more), &existing);
        assert_eq!(plan.create.len(), 1);
        assert!(plan.delete.is_empty());
        // 20 pods: one slice stays or is rewritten, the other goes.
        let plan = plan_slices(&s, desired_slices(&s, &pods[..20]), &existing);
        assert_eq!((plan.update.len(), plan.create.len()), (1, 0));
        assert_eq!(plan.delete, ["web-b"]);
        // No pods: one slice becomes the placeholder.
        let plan = plan_slices(&s, desired_slices(&s, &[]), &existing);
        assert_eq!(plan.update.len(), 1);
        assert!(plan.update[0].endpoints.is_empty());
        assert_eq!(plan.delete, ["web-b"]);
        // The Service no longer selects: every slice goes.
        let plan = plan_slices(
            &s,
            desired_slices(&svc(json!({"selector": null})), &pods),
            &existing,
        );
        assert_eq!(plan.delete, ["web-a", "web-b"]);
    }

    #[test]
    fn slices_of_another_owner_or_address_type_are_deleted() {
        let s = svc(json!({}));
        let pods = [pod("a", "10.0.0.1", true)];
        let desired = desired_slices(&s, &pods);
        let mut old_owner = (*stored(&desired[0], "web-old", "1")).clone();
        old_owner.metadata.owner_references.as_mut().unwrap()[0].uid = "older-svc".into();
        let mut v6 = (*stored(&desired[0], "web-v6", "2")).clone();
        v6.address_type = "IPv6".into();
        let plan = plan_slices(&s, desired, &[Arc::new(old_owner), Arc::new(v6)]);
        assert_eq!(plan.create.len(), 1, "IPv6 slices cannot become IPv4 ones");
        assert!(plan.update.is_empty());
        assert_eq!(plan.delete, ["web-old", "web-v6"]);
    }

    #[test]
    fn pods_map_to_the_services_that_select_them() {
        let web = Arc::new(svc(json!({})));
        let mut all = (*web).clone();
        all.metadata.name = Some("all".into());
        all.spec.as_mut().unwrap().selector = Some(BTreeMap::new());
        let mut api = (*web).clone();
        api.metadata.name = Some("api".into());
        api.spec.as_mut().unwrap().selector = Some(BTreeMap::from([("app".into(), "api".into())]));
        let mut prod = (*web).clone();
        prod.metadata.namespace = Some("prod".into());
        let mut narrow = (*web).clone();
        narrow.metadata.name = Some("narrow".into());
        narrow.spec.as_mut().unwrap().selector = Some(BTreeMap::from([
            ("app".into(), "web".into()),
            ("tier".into(), "fe".into()),
        ]));
        let services: Vec<Arc<Service>> = vec![
            web,
            Arc::new(all),
            Arc::new(api),
            Arc::new(prod),
            Arc::new(narrow),
        ];
        let p = pod("a", "10.0.0.1", true);
        let names = |refs: Vec<ObjectRef<Service>>| -> Vec<String> {
            refs.into_iter()
                .map(|r| format!("{}/{}", r.namespace.unwrap_or_default(), r.name))
                .collect()
        };
        assert_eq!(names(services_selecting(&services, &p)), ["default/web"]);
        let fe = pod_with(
            "b",
            "10.0.0.2",
            true,
            json!({"metadata": {"labels": {"app": "web", "tier": "fe"}}}),
        );
        assert_eq!(
            names(services_selecting(&services, &fe)),
            ["default/narrow", "default/web"]
        );
        // A pod that left the selector still reaches the Service whose slices list it.
        let moved = pod_with(
            "a",
            "10.0.0.1",
            true,
            json!({"metadata": {"labels": {"app": "gone"}}}),
        );
        assert!(services_selecting(&services, &moved).is_empty());
        let mut slice = (*stored(
            &desired_slices(&services[0], std::slice::from_ref(&p))[0],
            "web-x",
            "1",
        ))
        .clone();
        assert_eq!(
            names(services_for_pod(
                &services,
                &[Arc::new(slice.clone())],
                &moved
            )),
            ["default/web"]
        );
        slice.metadata.namespace = Some("prod".into());
        assert!(services_for_pod(&services, &[Arc::new(slice)], &moved).is_empty());
        let ep = desired_endpoints(&services[0], &[p]).unwrap();
        assert_eq!(
            names(service_of_endpoints(&ep).into_iter().collect()),
            ["default/web"]
        );
    }

    #[test]
    fn a_deleted_slice_is_pending_until_the_cache_no_longer_holds_it() {
        let slice = |deleting: bool| {
            let mut s =
                json!({"metadata": {"name": "web-abc"}, "addressType": "IPv4", "endpoints": []});
            if deleting {
                s["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
            }
            Arc::new(serde_json::from_value::<EndpointSlice>(s).unwrap())
        };
        let writes: Expectations<(), EndpointSlice> = Expectations::new();
        writes.deleted("default/web", "web-abc".into());
        // Unlike a pod, a slice being deleted is not gone yet.
        assert!(writes
            .pending("default/web", &[slice(true)])
            .deleted
            .contains("web-abc"));
        assert!(!writes.pending("default/web", &[slice(false)]).is_empty());
        assert!(writes.pending("default/web", &[]).is_empty());
    }
}
