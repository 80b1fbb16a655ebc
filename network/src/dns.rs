//! The cluster DNS every node agent serves to its pods, as kube-dns / CoreDNS's `kubernetes`
//! plugin do, after the Kubernetes DNS specification
//! (<https://github.com/kubernetes/dns/blob/master/docs/specification.md>).
//!
//! Two halves, so that the record logic can be tested without sockets:
//!
//! - [`ClusterRecords`]: a pure store fed with Services, EndpointSlices and Pods, whose
//!   [`ClusterRecords::answer`] decides what a name under the cluster domain resolves to;
//! - [`serve`]: hickory-server on sockets the caller has bound (in the namespace it chooses),
//!   answering from the store and forwarding every other name to the host's resolvers.
//!
//! [`resolv_conf`] is what a pod with `dnsPolicy: ClusterFirst` gets as its `/etc/resolv.conf`.
//!
//! Length: the records model, the answers and the server share private types; about 40% is
//! unit tests.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use hickory_proto::op::{Edns, Header, HeaderCounts, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, PTR, SOA, SRV};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::{Resolver, TokioResolver};
use hickory_server::net::runtime::Time;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use hickory_server::Server;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use tracing::{debug, warn};

/// Kubernetes' default cluster domain.
pub const DEFAULT_DOMAIN: &str = "cluster.local";

/// TTL of every record we answer with, and of negative answers (the SOA minimum): short, as in
/// CoreDNS, because Services and endpoints change under the names.
pub const TTL: u32 = 5;

/// The label by which an EndpointSlice names the Service it belongs to.
use api::wellknown::SERVICE_NAME_LABEL;

/// A CNAME chain longer than this is a loop between ExternalName Services (or an abuse).
const MAX_CNAME_CHAIN: usize = 8;

/// A TCP client that sends nothing for this long is dropped, so idle connections cannot pile up.
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// What a pod with `dnsPolicy: ClusterFirst` finds in `/etc/resolv.conf`, as the kubelet writes
/// it: its own namespace's Services first, then any namespace's, then the whole cluster domain;
/// `ndots:5` so that `svc.ns` and `svc.ns.svc` go through the search list before being tried as
/// absolute names.
pub fn resolv_conf(namespace: &str, nameserver: Ipv4Addr, domain: &str) -> String {
    let domain = domain.trim_end_matches('.');
    format!(
        "search {namespace}.svc.{domain} svc.{domain} {domain}\n\
         nameserver {nameserver}\n\
         options ndots:5\n"
    )
}

/// What the cluster DNS says about one name and type.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// The records, owned by the queried name (a CNAME stands in for any type, as in DNS).
    Records(Vec<Record>),
    /// The name exists, but has no records of this type (NOERROR with an empty answer).
    NoData,
    /// The name does not exist (NXDOMAIN).
    NxDomain,
    /// Not a name of the cluster: to be forwarded upstream.
    NotOurs,
}

/// What [`ClusterRecords::lookup`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// The cluster's addresses for the name.
    Addresses(Vec<IpAddr>),
    /// A name outside the cluster (asked as is, or an ExternalName's target): for the
    /// host's resolvers.
    External(String),
    NotFound,
}

/// The DNS view of the cluster: what the Services, EndpointSlices and Pods fed in say, kept as
/// the few fields DNS needs. Pure; the server reads it behind a lock.
#[derive(Debug, Clone)]
pub struct ClusterRecords {
    /// The cluster domain's labels, lowercase, e.g. `["cluster", "local"]`.
    domain: Vec<String>,
    zone: Name,
    /// The SOA's server and mailbox names, built once since they only depend on the domain.
    soa_mname: Name,
    soa_rname: Name,
    /// (namespace, name) → Service.
    services: BTreeMap<(String, String), Svc>,
    /// (namespace, service, slice name) → endpoints: keyed by Service first so that its slices are
    /// one range.
    slices: BTreeMap<(String, String, String), Slice>,
    /// (namespace, slice name) → the Service it is filed under, for removals by name and for a
    /// slice whose Service label changes.
    slice_service: HashMap<(String, String), String>,
    /// (namespace, name) of the pods: only to know which namespaces exist.
    pods: BTreeSet<(String, String)>,
    /// SOA serial: bumped on every change, so secondaries/caches could tell (none do today).
    serial: u32,
}

#[derive(Debug, Clone)]
struct Svc {
    kind: SvcKind,
    /// Named ports only: SRV records exist only for those.
    ports: Vec<PortSpec>,
    /// `publishNotReadyAddresses`: its not-ready endpoints are published too.
    publish_not_ready: bool,
}

#[derive(Debug, Clone)]
enum SvcKind {
    /// A virtual IP per family (empty while not yet allocated).
    ClusterIp(Vec<IpAddr>),
    /// `clusterIP: None`: the names resolve to the endpoints themselves.
    Headless,
    /// An alias; None when `externalName` is missing or not a DNS name.
    ExternalName(Option<Name>),
}

#[derive(Debug, Clone)]
struct PortSpec {
    /// Lowercase, as DNS compares names.
    name: String,
    /// Lowercase (`tcp`, `udp`, `sctp`), as it appears in `_<port>._<proto>`.
    protocol: String,
    port: u16,
}

#[derive(Debug, Clone)]
struct Slice {
    endpoints: Vec<Endpoint>,
    ports: Vec<PortSpec>,
}

#[derive(Debug, Clone)]
struct Endpoint {
    ips: Vec<IpAddr>,
    /// The label that names this endpoint under its Service: its hostname, else its dashed IP.
    label: Option<String>,
    ready: bool,
}

impl Default for ClusterRecords {
    fn default() -> Self {
        Self::new(DEFAULT_DOMAIN).expect("the default cluster domain is a valid name")
    }
}

impl ClusterRecords {
    /// An empty store for the cluster domain `domain` (e.g. `cluster.local`, trailing dot
    /// optional).
    pub fn new(domain: &str) -> anyhow::Result<Self> {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        anyhow::ensure!(!domain.is_empty(), "the cluster domain is empty");
        let zone = fqdn(&domain).with_context(|| format!("cluster domain {domain:?}"))?;
        let soa_mname = fqdn(&format!("ns.dns.{domain}")).context("SOA server name")?;
        let soa_rname = fqdn(&format!("hostmaster.{domain}")).context("SOA mailbox")?;
        Ok(Self {
            domain: domain.split('.').map(str::to_owned).collect(),
            zone,
            soa_mname,
            soa_rname,
            services: BTreeMap::new(),
            slices: BTreeMap::new(),
            slice_service: HashMap::new(),
            pods: BTreeSet::new(),
            serial: 1,
        })
    }

    /// The cluster domain, without a trailing dot.
    pub fn domain(&self) -> String {
        self.domain.join(".")
    }

    /// Whether no Service is known (no record but the zone's own).
    pub fn is_empty(&self) -> bool {
        self.services.is_empty() && self.slices.is_empty()
    }

    pub fn upsert_service(&mut self, service: &Service) {
        let Some((ns, name)) = key(&service.metadata) else {
            return;
        };
        let spec = service.spec.clone().unwrap_or_default();
        let kind = if spec.type_.as_deref() == Some("ExternalName") {
            SvcKind::ExternalName(spec.external_name.as_deref().and_then(|n| fqdn(n).ok()))
        } else if spec.cluster_ip.as_deref() == Some("None") {
            SvcKind::Headless
        } else {
            // clusterIPs holds one address per family (dual stack); clusterIP is its first.
            let ips = spec
                .cluster_ips
                .filter(|ips| !ips.is_empty())
                .or_else(|| spec.cluster_ip.map(|ip| vec![ip]))
                .unwrap_or_default();
            SvcKind::ClusterIp(ips.iter().filter_map(|ip| ip.parse().ok()).collect())
        };
        let ports = spec
            .ports
            .unwrap_or_default()
            .into_iter()
            .filter_map(|p| port_spec(p.name, p.protocol, Some(p.port)))
            .collect();
        let svc = Svc {
            kind,
            ports,
            publish_not_ready: spec.publish_not_ready_addresses == Some(true),
        };
        self.services.insert((ns, name), svc);
        self.changed();
    }

    pub fn remove_service(&mut self, namespace: &str, name: &str) {
        if self
            .services
            .remove(&(namespace.to_owned(), name.to_owned()))
            .is_some()
        {
            self.changed();
        }
    }

    /// Files the slice under the Service its `kubernetes.io/service-name` label names; a slice
    /// without that label belongs to no Service and is dropped.
    pub fn upsert_slice(&mut self, slice: &EndpointSlice) {
        let Some((ns, name)) = key(&slice.metadata) else {
            return;
        };
        // Out first: the label may have changed since the last version.
        self.detach_slice(&ns, &name);
        self.changed();
        let Some(service) = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
        else {
            return;
        };
        // FQDN slices (addressType FQDN) hold names, which A/AAAA records cannot carry.
        let ip_slice = matches!(slice.address_type.as_str(), "IPv4" | "IPv6");
        let endpoints = slice
            .endpoints
            .iter()
            .filter(|_| ip_slice)
            .map(|ep| {
                let ips: Vec<IpAddr> = ep.addresses.iter().filter_map(|a| a.parse().ok()).collect();
                let label = ep
                    .hostname
                    .as_deref()
                    .filter(|h| !h.is_empty())
                    .map(str::to_ascii_lowercase)
                    .or_else(|| ips.first().map(|ip| dashed(*ip)));
                Endpoint {
                    ips,
                    label,
                    // Kubernetes: a missing `ready` means ready.
                    ready: ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true),
                }
            })
            .collect();
        let ports = slice
            .ports
            .iter()
            .flatten()
            .filter_map(|p| port_spec(p.name.clone(), p.protocol.clone(), p.port))
            .collect();
        self.slice_service
            .insert((ns.clone(), name.clone()), service.clone());
        self.slices
            .insert((ns, service.clone(), name), Slice { endpoints, ports });
    }

    pub fn remove_slice(&mut self, namespace: &str, name: &str) {
        if self.detach_slice(namespace, name) {
            self.changed();
        }
    }

    pub fn upsert_pod(&mut self, pod: &Pod) {
        if let Some(key) = key(&pod.metadata) {
            if self.pods.insert(key) {
                self.changed();
            }
        }
    }

    pub fn remove_pod(&mut self, namespace: &str, name: &str) {
        if self.pods.remove(&(namespace.to_owned(), name.to_owned())) {
            self.changed();
        }
    }

    /// The zone's SOA record, which negative answers carry so that resolvers cache them for
    /// [`TTL`] seconds only.
    pub fn soa(&self) -> Record {
        let soa = SOA::new(
            self.soa_mname.clone(),
            self.soa_rname.clone(),
            self.serial,
            7200,
            1800,
            86400,
            TTL,
        );
        Record::from_rdata(self.zone.clone(), TTL, RData::SOA(soa))
    }

    /// What `name` (case-insensitive, trailing dot optional) has of type `qtype`.
    /// What a pod's name lookup of `name` gives, the way its resolver would ask (the search
    /// domains of `namespace` first for names with fewer than five dots, as `ndots:5`), for
    /// connections the node makes on a pod's behalf (Wasm pods' outgoing HTTP). Follows the
    /// cluster's CNAMEs (ExternalName Services).
    pub fn lookup(&self, name: &str, namespace: &str) -> Lookup {
        let name = name.trim_end_matches('.');
        let domain = self.domain();
        let mut candidates = Vec::new();
        if name.matches('.').count() < 5 {
            for search in [
                format!("{namespace}.svc.{domain}"),
                format!("svc.{domain}"),
                domain.clone(),
            ] {
                candidates.push(format!("{name}.{search}"));
            }
        }
        candidates.push(name.to_string());
        for candidate in candidates {
            match self.follow(&candidate) {
                Lookup::NotFound => continue,
                found => return found,
            }
        }
        Lookup::NotFound
    }

    fn follow(&self, name: &str) -> Lookup {
        let mut name = name.to_string();
        for _ in 0..8 {
            match self.answer(&name, RecordType::A) {
                Answer::Records(records) => {
                    let addresses: Vec<IpAddr> = records
                        .iter()
                        .filter_map(|r| match &r.data {
                            RData::A(a) => Some(IpAddr::V4(a.0)),
                            _ => None,
                        })
                        .collect();
                    if !addresses.is_empty() {
                        return Lookup::Addresses(addresses);
                    }
                    match records.iter().find_map(|r| match &r.data {
                        RData::CNAME(CNAME(target)) => Some(target.to_ascii()),
                        _ => None,
                    }) {
                        Some(target) => name = target.trim_end_matches('.').to_string(),
                        None => return Lookup::NotFound,
                    }
                }
                Answer::NoData | Answer::NxDomain => return Lookup::NotFound,
                Answer::NotOurs => return Lookup::External(name),
            }
        }
        Lookup::NotFound
    }

    pub fn answer(&self, name: &str, qtype: RecordType) -> Answer {
        let Ok(mut owner) = Name::from_ascii(name) else {
            // Not even a DNS name: not resolvable anywhere, but only ours to call NXDOMAIN.
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            let domain = self.domain();
            return if name == domain || name.ends_with(&format!(".{domain}")) {
                Answer::NxDomain
            } else {
                Answer::NotOurs
            };
        };
        // Answers are owned by the name as asked (its case kept, as resolvers that randomise the
        // case of their queries check).
        owner.set_fqdn(true);
        let labels: Vec<String> = owner
            .iter()
            .map(|l| String::from_utf8_lossy(l).to_ascii_lowercase())
            .collect();
        if let Some(ip) = reverse_ip(&labels) {
            return self.ptr(&owner, ip, qtype);
        }
        let Some(rest) = labels.strip_suffix(self.domain.as_slice()) else {
            return Answer::NotOurs;
        };
        match self.records_at(rest, &owner) {
            None => Answer::NxDomain,
            Some(records) => select(records, qtype),
        }
    }

    /// All the records at a name under the cluster domain (`rest`: its labels before the
    /// domain), or None when the name does not exist.
    fn records_at(&self, rest: &[String], owner: &Name) -> Option<Vec<Record>> {
        let strs: Vec<&str> = rest.iter().map(String::as_str).collect();
        match strs.as_slice() {
            [] => Some(vec![self.soa()]),
            [inner @ .., "svc"] => self.service_names(inner, owner),
            [inner @ .., "pod"] => match inner {
                [] => Some(Vec::new()),
                [ns] => self.namespace_exists(ns).then(Vec::new),
                // Any dashed IP in any namespace, as CoreDNS's `pods insecure` (kube-dns'
                // behaviour): certificates for `<ip>.<ns>.pod` names rely on it.
                [ip, _ns] => undashed(ip).map(|ip| vec![address(owner, ip)]),
                _ => None,
            },
            _ => None,
        }
    }

    /// Names under `svc.<domain>`, `inner` being the labels before `svc`.
    fn service_names(&self, inner: &[&str], owner: &Name) -> Option<Vec<Record>> {
        match *inner {
            [] => Some(Vec::new()),
            [ns] => self.namespace_exists(ns).then(Vec::new),
            [svc, ns] => {
                let s = self.service(ns, svc)?;
                Some(match &s.kind {
                    SvcKind::ClusterIp(ips) => ips.iter().map(|ip| address(owner, *ip)).collect(),
                    SvcKind::Headless => {
                        let ips: BTreeSet<IpAddr> = self
                            .endpoints(ns, svc, s)
                            .flat_map(|(_, ep)| ep.ips.iter().copied())
                            .collect();
                        ips.into_iter().map(|ip| address(owner, ip)).collect()
                    }
                    SvcKind::ExternalName(target) => target
                        .iter()
                        .map(|t| {
                            Record::from_rdata(owner.clone(), TTL, RData::CNAME(CNAME(t.clone())))
                        })
                        .collect(),
                })
            }
            // `_tcp.<svc>.<ns>.svc`: exists (empty) when some named port speaks that protocol.
            [proto, svc, ns] if proto.starts_with('_') => {
                let s = self.service(ns, svc)?;
                s.ports
                    .iter()
                    .any(|p| proto[1..] == p.protocol)
                    .then(Vec::new)
            }
            // `<hostname or dashed IP>.<svc>.<ns>.svc`: one endpoint of a headless Service.
            [label, svc, ns] => {
                let s = self.service(ns, svc)?;
                if !matches!(s.kind, SvcKind::Headless) {
                    return None;
                }
                let ips: BTreeSet<IpAddr> = self
                    .endpoints(ns, svc, s)
                    .filter(|(_, ep)| ep.label.as_deref() == Some(label))
                    .flat_map(|(_, ep)| ep.ips.iter().copied())
                    .collect();
                (!ips.is_empty()).then(|| ips.into_iter().map(|ip| address(owner, ip)).collect())
            }
            [port, proto, svc, ns] if port.starts_with('_') && proto.starts_with('_') => {
                self.srv(owner, ns, svc, &port[1..], &proto[1..])
            }
            _ => None,
        }
    }

    /// The SRV records of `_<port>._<proto>.<svc>.<ns>.svc`.
    fn srv(
        &self,
        owner: &Name,
        ns: &str,
        svc: &str,
        port: &str,
        proto: &str,
    ) -> Option<Vec<Record>> {
        let s = self.service(ns, svc)?;
        let spec = s
            .ports
            .iter()
            .find(|p| p.name == port && p.protocol == proto)?;
        let record = |port: u16, target: Name| {
            Record::from_rdata(
                owner.clone(),
                TTL,
                RData::SRV(SRV::new(0, 100, port, target)),
            )
        };
        let service_name = self.fqdn(&[svc, ns, "svc"]);
        Some(match &s.kind {
            SvcKind::ClusterIp(_) => service_name
                .map(|t| record(spec.port, t))
                .into_iter()
                .collect(),
            SvcKind::ExternalName(target) => target
                .iter()
                .map(|t| record(spec.port, t.clone()))
                .collect(),
            // One per endpoint, on the port the endpoint listens on (the slice's port of that
            // name), pointing at the endpoint's own name under the Service.
            SvcKind::Headless => {
                let mut seen = BTreeSet::new();
                self.endpoints(ns, svc, s)
                    .filter_map(|(slice, ep)| {
                        let p = slice
                            .ports
                            .iter()
                            .find(|p| p.name == port && p.protocol == proto)?;
                        let target = self.fqdn(&[ep.label.as_deref()?, svc, ns, "svc"])?;
                        seen.insert((target.clone(), p.port))
                            .then(|| record(p.port, target))
                    })
                    .collect()
            }
        })
    }

    /// PTR records for the cluster's own addresses (ClusterIPs, headless endpoints); any other
    /// address is the host resolvers' business.
    fn ptr(&self, owner: &Name, ip: IpAddr, qtype: RecordType) -> Answer {
        let mut targets = BTreeSet::new();
        for ((ns, name), s) in &self.services {
            match &s.kind {
                SvcKind::ClusterIp(ips) if ips.contains(&ip) => {
                    targets.extend(self.fqdn(&[name, ns, "svc"]));
                }
                SvcKind::Headless => {
                    for (_, ep) in self.endpoints(ns, name, s) {
                        if let Some(label) = ep.label.as_deref().filter(|_| ep.ips.contains(&ip)) {
                            targets.extend(self.fqdn(&[label, name, ns, "svc"]));
                        }
                    }
                }
                _ => {}
            }
        }
        if targets.is_empty() {
            return Answer::NotOurs;
        }
        let records = targets
            .into_iter()
            .map(|t| Record::from_rdata(owner.clone(), TTL, RData::PTR(PTR(t))))
            .collect();
        select(records, qtype)
    }

    fn service(&self, ns: &str, name: &str) -> Option<&Svc> {
        self.services.get(&(ns.to_owned(), name.to_owned()))
    }

    /// The endpoints a Service publishes in DNS, with the slice each is in.
    fn endpoints<'a>(
        &'a self,
        ns: &str,
        svc: &str,
        s: &'a Svc,
    ) -> impl Iterator<Item = (&'a Slice, &'a Endpoint)> + 'a {
        let (ns, svc) = (ns.to_owned(), svc.to_owned());
        self.slices
            .range((ns.clone(), svc.clone(), String::new())..)
            .take_while(move |((n, sv, _), _)| *n == ns && *sv == svc)
            .flat_map(|(_, slice)| slice.endpoints.iter().map(move |ep| (slice, ep)))
            .filter(move |(_, ep)| ep.ready || s.publish_not_ready)
    }

    /// We are told of no Namespace objects: a namespace exists when a Service or a Pod is in it.
    fn namespace_exists(&self, ns: &str) -> bool {
        let first = (ns.to_owned(), String::new());
        self.services
            .range(first.clone()..)
            .next()
            .is_some_and(|((n, _), _)| n == ns)
            || self
                .pods
                .range(first..)
                .next()
                .is_some_and(|(n, _)| n == ns)
    }

    /// `labels…<domain>.` as a name, None when the labels do not make one (too long, say).
    fn fqdn(&self, labels: &[&str]) -> Option<Name> {
        fqdn(&format!("{}.{}", labels.join("."), self.domain())).ok()
    }

    fn detach_slice(&mut self, ns: &str, name: &str) -> bool {
        let Some(service) = self.slice_service.remove(&(ns.to_owned(), name.to_owned())) else {
            return false;
        };
        self.slices
            .remove(&(ns.to_owned(), service, name.to_owned()))
            .is_some()
    }

    fn changed(&mut self) {
        self.serial = self.serial.wrapping_add(1);
    }
}

/// Of all the records at a name, those that answer `qtype`: a CNAME answers every type (the
/// name is an alias), ANY takes everything.
fn select(records: Vec<Record>, qtype: RecordType) -> Answer {
    let cname = records.iter().any(|r| r.record_type() == RecordType::CNAME);
    let records: Vec<Record> = records
        .into_iter()
        .filter(|r| cname || qtype == RecordType::ANY || r.record_type() == qtype)
        .collect();
    if records.is_empty() {
        Answer::NoData
    } else {
        Answer::Records(records)
    }
}

/// (namespace, name) of an object; objects read from the API always have both, but the
/// namespace defaults as the API server would default it.
fn key(meta: &ObjectMeta) -> Option<(String, String)> {
    let name = meta.name.clone().filter(|n| !n.is_empty())?;
    let ns = meta
        .namespace
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "default".to_owned());
    Some((ns, name))
}

/// A named port with a usable number; unnamed ports get no SRV records, so they are left out.
fn port_spec(
    name: Option<String>,
    protocol: Option<String>,
    port: Option<i32>,
) -> Option<PortSpec> {
    let name = name.filter(|n| !n.is_empty())?.to_ascii_lowercase();
    let port = u16::try_from(port?).ok()?;
    let protocol = protocol
        .unwrap_or_else(|| "TCP".to_owned())
        .to_ascii_lowercase();
    Some(PortSpec {
        name,
        protocol,
        port,
    })
}

fn fqdn(name: &str) -> Result<Name, hickory_proto::ProtoError> {
    let mut name = Name::from_ascii(name)?;
    name.set_fqdn(true);
    Ok(name)
}

fn address(owner: &Name, ip: IpAddr) -> Record {
    let data = match ip {
        IpAddr::V4(v4) => RData::A(A(v4)),
        IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
    };
    Record::from_rdata(owner.clone(), TTL, data)
}

/// An address as one DNS label: `10-1-2-3`, `fd00--1`.
fn dashed(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string().replace('.', "-"),
        IpAddr::V6(v6) => v6.to_string().replace(':', "-"),
    }
}

/// The inverse of [`dashed`].
fn undashed(label: &str) -> Option<IpAddr> {
    if let Ok(v4) = label.replace('-', ".").parse::<Ipv4Addr>() {
        return Some(IpAddr::V4(v4));
    }
    label
        .replace('-', ":")
        .parse::<Ipv6Addr>()
        .ok()
        .map(IpAddr::V6)
}

/// The address a full reverse name (`4.3.2.1.in-addr.arpa`, 32 nibbles `.ip6.arpa`) stands for.
fn reverse_ip(labels: &[String]) -> Option<IpAddr> {
    let strs: Vec<&str> = labels.iter().map(String::as_str).collect();
    match strs.as_slice() {
        [d, c, b, a, "in-addr", "arpa"] => {
            let octet = |s: &str| {
                s.parse::<u8>()
                    .ok()
                    .filter(|_| s.bytes().all(|b| b.is_ascii_digit()))
            };
            Some(IpAddr::V4(Ipv4Addr::new(
                octet(a)?,
                octet(b)?,
                octet(c)?,
                octet(d)?,
            )))
        }
        [nibbles @ .., "ip6", "arpa"] if nibbles.len() == 32 => {
            let mut bits = 0u128;
            for n in nibbles.iter().rev() {
                let mut chars = n.chars();
                let (Some(c), None) = (chars.next(), chars.next()) else {
                    return None;
                };
                bits = (bits << 4) | u128::from(c.to_digit(16)?);
            }
            Some(IpAddr::V6(Ipv6Addr::from(bits)))
        }
        _ => None,
    }
}

/// Where names outside the cluster domain go: a stub resolver over upstream servers, or nowhere
/// (those queries then get SERVFAIL).
#[derive(Clone)]
pub struct Forwarder(Option<TokioResolver>);

impl Forwarder {
    /// The host's resolvers, as its `/etc/resolv.conf` lists them; none if it cannot be read.
    pub fn system() -> Self {
        match hickory_resolver::system_conf::read_system_conf() {
            Ok((config, options)) => Self::build(config.name_servers().to_vec(), options),
            Err(error) => {
                warn!(%error, "cluster DNS: no host resolvers, names outside the cluster will fail");
                Self(None)
            }
        }
    }

    /// These servers (UDP, then TCP for truncated answers, on each address's port).
    pub fn to(servers: &[SocketAddr]) -> Self {
        let name_servers = servers
            .iter()
            .map(|addr| {
                let mut udp = ConnectionConfig::udp();
                udp.port = addr.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = addr.port();
                NameServerConfig::new(addr.ip(), true, vec![udp, tcp])
            })
            .collect();
        Self::build(name_servers, ResolverOpts::default())
    }

    /// No forwarding.
    pub fn none() -> Self {
        Self(None)
    }

    fn build(name_servers: Vec<NameServerConfig>, mut options: ResolverOpts) -> Self {
        if name_servers.is_empty() {
            warn!("cluster DNS: no upstream name servers, names outside the cluster will fail");
            return Self(None);
        }
        // A forwarder passes on what upstream said: the CNAMEs on the way too, and nothing from
        // this host's /etc/hosts.
        options.preserve_intermediates = true;
        options.use_hosts_file = ResolveHosts::Never;
        // No search domains: queries arrive fully qualified and are forwarded as they are.
        let config = ResolverConfig::from_parts(None, Vec::new(), name_servers);
        let mut builder = Resolver::builder_with_config(config, TokioRuntimeProvider::default());
        *builder.options_mut() = options;
        match builder.build() {
            Ok(resolver) => Self(Some(resolver)),
            Err(error) => {
                warn!(%error, "cluster DNS: cannot set up forwarding");
                Self(None)
            }
        }
    }
}

/// Serves the cluster DNS on `udp` and `tcp` (bound by the caller), answering names under the
/// cluster domain from `records` and forwarding the rest to the host's resolvers
/// (`/etc/resolv.conf`). Returns only when a socket fails; drop the future to stop the server.
pub async fn serve(
    udp: tokio::net::UdpSocket,
    tcp: tokio::net::TcpListener,
    records: Arc<RwLock<ClusterRecords>>,
) -> anyhow::Result<()> {
    serve_with(udp, tcp, records, Forwarder::system()).await
}

/// [`serve`], forwarding with `forwarder`.
pub async fn serve_with(
    udp: tokio::net::UdpSocket,
    tcp: tokio::net::TcpListener,
    records: Arc<RwLock<ClusterRecords>>,
    forwarder: Forwarder,
) -> anyhow::Result<()> {
    let handler = Handler {
        records,
        forwarder: forwarder.0,
    };
    // One server per transport, so that the first to fail ends the whole (one server would
    // keep going on the other transport, half deaf, until both had failed).
    let mut over_udp = Server::new(handler.clone());
    over_udp.register_socket(udp);
    let mut over_tcp = Server::new(handler);
    // 32: responses queued per TCP connection before the handler waits for the client.
    over_tcp.register_listener(tcp, TCP_IDLE_TIMEOUT, 32);
    let (transport, outcome) = tokio::select! {
        outcome = over_udp.block_until_done() => ("UDP", outcome),
        outcome = over_tcp.block_until_done() => ("TCP", outcome),
    };
    match outcome {
        Err(error) => {
            Err(anyhow::Error::new(error).context(format!("cluster DNS over {transport}")))
        }
        Ok(()) => anyhow::bail!("cluster DNS over {transport} stopped"),
    }
}

#[derive(Clone)]
struct Handler {
    records: Arc<RwLock<ClusterRecords>>,
    forwarder: Option<TokioResolver>,
}

/// A response, before it is put on the wire.
struct Response {
    code: ResponseCode,
    authoritative: bool,
    answers: Vec<Record>,
    authorities: Vec<Record>,
}

impl Response {
    fn error(code: ResponseCode) -> Self {
        Self {
            code,
            authoritative: false,
            answers: Vec::new(),
            authorities: Vec::new(),
        }
    }
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        response_handle: R,
    ) -> ResponseInfo {
        // EDNS is answered with EDNS (it carries the client's UDP size, which bounds ours);
        // we speak version 0 only.
        let edns = request.edns.as_ref().map(|theirs| {
            let mut ours = Edns::new();
            ours.set_max_payload(theirs.max_payload().max(512));
            ours.set_version(0);
            ours
        });
        let response = if request.edns.as_ref().is_some_and(|e| e.version() > 0) {
            Response::error(ResponseCode::BADVERS)
        } else if request.metadata.message_type != MessageType::Query {
            Response::error(ResponseCode::FormErr)
        } else if request.metadata.op_code != OpCode::Query {
            Response::error(ResponseCode::NotImp)
        } else {
            match request.request_info() {
                // Exactly one question, as every resolver sends.
                Err(_) => Response::error(ResponseCode::FormErr),
                Ok(info) if info.query.query_class() != DNSClass::IN => {
                    Response::error(ResponseCode::NotImp)
                }
                Ok(info) => {
                    let query = info.query.original();
                    self.resolve(query.name(), query.query_type()).await
                }
            }
        };
        send(request, response_handle, edns, response).await
    }
}

impl Handler {
    async fn resolve(&self, name: &Name, qtype: RecordType) -> Response {
        let (answer, soa) = {
            // A writer that panicked left the records as consistent as any other moment.
            let records = self.records.read().unwrap_or_else(|e| e.into_inner());
            (records.answer(&name.to_ascii(), qtype), records.soa())
        };
        let ours = |code, answers, authorities| Response {
            code,
            authoritative: true,
            answers,
            authorities,
        };
        match answer {
            Answer::Records(records) => {
                let answers = self.follow_cname(records, qtype).await;
                ours(ResponseCode::NoError, answers, Vec::new())
            }
            Answer::NoData => ours(ResponseCode::NoError, Vec::new(), vec![soa]),
            Answer::NxDomain => ours(ResponseCode::NXDomain, Vec::new(), vec![soa]),
            Answer::NotOurs => self.forward(name, qtype).await,
        }
    }

    /// Resolves the target of an answer that ends in a CNAME (an ExternalName Service) when
    /// the client asked for something else, as CoreDNS does: stub resolvers (glibc's, musl's)
    /// do not chase CNAMEs themselves. A target that cannot be resolved leaves the CNAME alone.
    async fn follow_cname(&self, mut answers: Vec<Record>, qtype: RecordType) -> Vec<Record> {
        if matches!(qtype, RecordType::CNAME | RecordType::ANY) {
            return answers;
        }
        for _ in 0..MAX_CNAME_CHAIN {
            let Some(RData::CNAME(CNAME(target))) = answers.last().map(|r| &r.data) else {
                break;
            };
            let target = target.clone();
            let answer = {
                let records = self.records.read().unwrap_or_else(|e| e.into_inner());
                records.answer(&target.to_ascii(), qtype)
            };
            match answer {
                Answer::Records(more) => answers.extend(more),
                Answer::NotOurs => {
                    if let Some(resolver) = &self.forwarder {
                        match resolver.lookup(target.clone(), qtype).await {
                            Ok(lookup) => answers.extend(lookup.answers().iter().cloned()),
                            Err(error) => debug!(%target, %error, "CNAME target not resolved"),
                        }
                    }
                    break;
                }
                Answer::NoData | Answer::NxDomain => break,
            }
        }
        answers
    }

    /// Asks upstream, passing its verdict on: records, NXDOMAIN or NODATA (with its SOA, so the
    /// client caches the negative answer as long as upstream said), else SERVFAIL.
    async fn forward(&self, name: &Name, qtype: RecordType) -> Response {
        let Some(resolver) = &self.forwarder else {
            return Response::error(ResponseCode::ServFail);
        };
        match resolver.lookup(name.clone(), qtype).await {
            Ok(lookup) => Response {
                code: ResponseCode::NoError,
                authoritative: false,
                answers: lookup.answers().to_vec(),
                authorities: Vec::new(),
            },
            Err(NetError::Dns(DnsError::NoRecordsFound(none))) => Response {
                code: none.response_code,
                authoritative: false,
                answers: Vec::new(),
                authorities: none
                    .soa
                    .map(|soa| soa.into_record_of_rdata())
                    .into_iter()
                    .collect(),
            },
            Err(error) => {
                debug!(%name, %qtype, %error, "forwarding failed");
                Response::error(ResponseCode::ServFail)
            }
        }
    }
}

async fn send<R: ResponseHandler>(
    request: &Request,
    mut handle: R,
    mut edns: Option<Edns>,
    response: Response,
) -> ResponseInfo {
    let mut metadata = Metadata::response_from_request(&request.metadata);
    metadata.response_code = response.code;
    metadata.authoritative = response.authoritative;
    // We resolve anything (forwarding what is not ours): clients must not go elsewhere.
    metadata.recursion_available = true;
    // Response codes above 15 (BADVERS) keep their high bits in the OPT record.
    if let Some(edns) = edns.as_mut() {
        edns.set_rcode_high(response.code.high());
    }
    let message = MessageResponseBuilder::new(&request.queries, edns.as_ref()).build(
        metadata,
        response.answers.iter(),
        response.authorities.iter(),
        std::iter::empty(),
        std::iter::empty(),
    );
    match handle.send_response(message).await {
        Ok(info) => info,
        Err(error) => {
            debug!(%error, "cluster DNS: response not sent");
            metadata.response_code = ResponseCode::ServFail;
            ResponseInfo::from(Header {
                metadata,
                counts: HeaderCounts::default(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn service(value: serde_json::Value) -> Service {
        serde_json::from_value(value).unwrap()
    }

    fn slice(value: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(value).unwrap()
    }

    /// web: ClusterIP with a named port; db: headless, three endpoints (one not ready);
    /// ext: ExternalName; alias: ExternalName to web.
    fn cluster() -> ClusterRecords {
        let mut r = ClusterRecords::default();
        r.upsert_service(&service(json!({
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
                     "ports": [{"name": "http", "port": 80, "protocol": "TCP"},
                               {"port": 8080}]}
        })));
        r.upsert_service(&service(json!({
            "metadata": {"name": "db", "namespace": "prod"},
            "spec": {"clusterIP": "None", "ports": [{"name": "pg", "port": 5432}]}
        })));
        r.upsert_slice(&slice(json!({
            "metadata": {"name": "db-abc", "namespace": "prod",
                         "labels": {"kubernetes.io/service-name": "db"}},
            "addressType": "IPv4",
            "endpoints": [
                {"addresses": ["10.42.0.5"], "hostname": "db-0", "conditions": {"ready": true}},
                {"addresses": ["10.42.0.6"], "conditions": {"ready": true}},
                {"addresses": ["10.42.0.7"], "hostname": "db-2", "conditions": {"ready": false}}
            ],
            "ports": [{"name": "pg", "port": 15432, "protocol": "TCP"}]
        })));
        r.upsert_service(&service(json!({
            "metadata": {"name": "ext", "namespace": "default"},
            "spec": {"type": "ExternalName", "externalName": "example.com"}
        })));
        r.upsert_service(&service(json!({
            "metadata": {"name": "alias", "namespace": "default"},
            "spec": {"type": "ExternalName", "externalName": "web.default.svc.cluster.local"}
        })));
        r
    }

    fn ips(answer: &Answer) -> Vec<IpAddr> {
        let Answer::Records(records) = answer else {
            panic!("expected records, got {answer:?}");
        };
        let mut ips: Vec<IpAddr> = records
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(IpAddr::V4(a.0)),
                RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                _ => None,
            })
            .collect();
        ips.sort();
        ips
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn name(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    #[test]
    fn service_a_is_its_cluster_ip() {
        let r = cluster();
        let answer = r.answer("web.default.svc.cluster.local.", RecordType::A);
        assert_eq!(ips(&answer), [ip("10.96.0.10")]);
        let Answer::Records(records) = &answer else {
            unreachable!()
        };
        assert_eq!(records[0].ttl, TTL);
        assert_eq!(records[0].name, name("web.default.svc.cluster.local."));
    }

    #[test]
    fn names_are_case_insensitive_and_the_dot_optional() {
        let r = cluster();
        let answer = r.answer("WEB.Default.SVC.cluster.LOCAL", RecordType::A);
        assert_eq!(ips(&answer), [ip("10.96.0.10")]);
        // The owner keeps the case it was asked in.
        let Answer::Records(records) = &answer else {
            unreachable!()
        };
        assert!(records[0]
            .name
            .eq_case(&name("WEB.Default.SVC.cluster.LOCAL.")));
    }

    #[test]
    fn aaaa_of_an_ipv4_service_is_nodata() {
        let r = cluster();
        assert_eq!(
            r.answer("web.default.svc.cluster.local", RecordType::AAAA),
            Answer::NoData
        );
        assert_eq!(
            r.answer("web.default.svc.cluster.local", RecordType::TXT),
            Answer::NoData
        );
    }

    #[test]
    fn unknown_services_and_namespaces_are_nxdomain() {
        let r = cluster();
        for missing in [
            "nope.default.svc.cluster.local",
            "web.nope.svc.cluster.local",
            "nope.svc.cluster.local",
            "x.web.default.svc.cluster.local", // web is not headless
            "a.b.c.d.e.svc.cluster.local",
            "whatever.cluster.local",
            "not-an-ip.default.pod.cluster.local",
            "_nope._tcp.web.default.svc.cluster.local",
            "_http._udp.web.default.svc.cluster.local",
        ] {
            assert_eq!(
                r.answer(missing, RecordType::A),
                Answer::NxDomain,
                "{missing}"
            );
        }
        // Names that exist without records of their own.
        for empty in [
            "default.svc.cluster.local",
            "svc.cluster.local",
            "pod.cluster.local",
            "_tcp.web.default.svc.cluster.local",
        ] {
            assert_eq!(r.answer(empty, RecordType::A), Answer::NoData, "{empty}");
        }
    }

    #[test]
    fn names_elsewhere_are_not_ours() {
        let r = cluster();
        assert_eq!(r.answer("example.com", RecordType::A), Answer::NotOurs);
        assert_eq!(
            r.answer("cluster.local.example.com.", RecordType::A),
            Answer::NotOurs
        );
        assert_eq!(r.answer(".", RecordType::NS), Answer::NotOurs);
        // A domain of our own.
        let other = ClusterRecords::new("Corp.Example.").unwrap();
        assert_eq!(other.domain(), "corp.example");
        assert_eq!(
            other.answer("web.default.svc.cluster.local", RecordType::A),
            Answer::NotOurs
        );
        assert_eq!(
            other.answer("web.default.svc.corp.example", RecordType::A),
            Answer::NxDomain
        );
    }

    #[test]
    fn headless_service_resolves_to_its_ready_endpoints() {
        let r = cluster();
        let answer = r.answer("db.prod.svc.cluster.local", RecordType::A);
        assert_eq!(ips(&answer), [ip("10.42.0.5"), ip("10.42.0.6")]);
        // Endpoints with a hostname have a name of their own; the others their dashed IP.
        let answer = r.answer("db-0.db.prod.svc.cluster.local", RecordType::A);
        assert_eq!(ips(&answer), [ip("10.42.0.5")]);
        let answer = r.answer("10-42-0-6.db.prod.svc.cluster.local", RecordType::A);
        assert_eq!(ips(&answer), [ip("10.42.0.6")]);
        // Not ready: not published.
        assert_eq!(
            r.answer("db-2.db.prod.svc.cluster.local", RecordType::A),
            Answer::NxDomain
        );
    }

    #[test]
    fn publish_not_ready_addresses_publishes_them() {
        let mut r = cluster();
        r.upsert_service(&service(json!({
            "metadata": {"name": "db", "namespace": "prod"},
            "spec": {"clusterIP": "None", "publishNotReadyAddresses": true}
        })));
        let answer = r.answer("db-2.db.prod.svc.cluster.local", RecordType::A);
        assert_eq!(ips(&answer), [ip("10.42.0.7")]);
    }

    #[test]
    fn slices_follow_their_service_label_and_go_away() {
        let mut r = cluster();
        r.upsert_slice(&slice(json!({
            "metadata": {"name": "db-def", "namespace": "prod",
                         "labels": {"kubernetes.io/service-name": "db"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.42.1.9"]}]
        })));
        let answer = r.answer("db.prod.svc.cluster.local", RecordType::A);
        assert_eq!(
            ips(&answer),
            [ip("10.42.0.5"), ip("10.42.0.6"), ip("10.42.1.9")]
        );
        // Relabelled to another Service: gone from db.
        r.upsert_slice(&slice(json!({
            "metadata": {"name": "db-def", "namespace": "prod",
                         "labels": {"kubernetes.io/service-name": "other"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.42.1.9"]}]
        })));
        let answer = r.answer("db.prod.svc.cluster.local", RecordType::A);
        assert_eq!(ips(&answer), [ip("10.42.0.5"), ip("10.42.0.6")]);
        r.remove_slice("prod", "db-abc");
        assert_eq!(
            r.answer("db.prod.svc.cluster.local", RecordType::A),
            Answer::NoData
        );
        r.remove_service("prod", "db");
        assert_eq!(
            r.answer("db.prod.svc.cluster.local", RecordType::A),
            Answer::NxDomain
        );
        assert_eq!(
            r.answer("prod.svc.cluster.local", RecordType::A),
            Answer::NxDomain
        );
    }

    #[test]
    fn external_name_is_a_cname_for_any_type() {
        let r = cluster();
        for qtype in [RecordType::A, RecordType::AAAA, RecordType::CNAME] {
            let Answer::Records(records) = r.answer("ext.default.svc.cluster.local", qtype) else {
                panic!("no records for {qtype}");
            };
            assert_eq!(records.len(), 1);
            assert_eq!(records[0].data, RData::CNAME(CNAME(name("example.com."))));
        }
    }

    #[test]
    fn srv_for_named_ports() {
        let r = cluster();
        let Answer::Records(records) =
            r.answer("_http._tcp.web.default.svc.cluster.local", RecordType::SRV)
        else {
            panic!("no SRV");
        };
        assert_eq!(
            records.iter().map(|r| r.data.clone()).collect::<Vec<_>>(),
            [RData::SRV(SRV::new(
                0,
                100,
                80,
                name("web.default.svc.cluster.local.")
            ))]
        );
        // Headless: one per ready endpoint, on the endpoint's port.
        let Answer::Records(records) =
            r.answer("_pg._tcp.db.prod.svc.cluster.local", RecordType::SRV)
        else {
            panic!("no SRV");
        };
        let mut targets: Vec<(u16, String)> = records
            .iter()
            .map(|r| match &r.data {
                RData::SRV(srv) => (srv.port, srv.target.to_ascii()),
                other => panic!("{other:?}"),
            })
            .collect();
        targets.sort();
        assert_eq!(
            targets,
            [
                (15432, "10-42-0-6.db.prod.svc.cluster.local.".to_owned()),
                (15432, "db-0.db.prod.svc.cluster.local.".to_owned()),
            ]
        );
        // An A query of an SRV name: it exists, without addresses.
        assert_eq!(
            r.answer("_http._tcp.web.default.svc.cluster.local", RecordType::A),
            Answer::NoData
        );
    }

    #[test]
    fn pod_records_answer_any_dashed_ip() {
        let r = cluster();
        let answer = r.answer("10-42-3-4.anywhere.pod.cluster.local", RecordType::A);
        assert_eq!(ips(&answer), [ip("10.42.3.4")]);
        let answer = r.answer("fd00--1.default.pod.cluster.local", RecordType::AAAA);
        assert_eq!(ips(&answer), [ip("fd00::1")]);
        assert_eq!(
            r.answer("10-42-3-4.default.pod.cluster.local", RecordType::AAAA),
            Answer::NoData
        );
        assert_eq!(
            r.answer("10-42-3-400.default.pod.cluster.local", RecordType::A),
            Answer::NxDomain
        );
    }

    #[test]
    fn pods_make_their_namespace_exist() {
        let mut r = cluster();
        assert_eq!(
            r.answer("team.pod.cluster.local", RecordType::A),
            Answer::NxDomain
        );
        let pod: Pod =
            serde_json::from_value(json!({"metadata": {"name": "p", "namespace": "team"}}))
                .unwrap();
        r.upsert_pod(&pod);
        assert_eq!(
            r.answer("team.pod.cluster.local", RecordType::A),
            Answer::NoData
        );
        assert_eq!(
            r.answer("team.svc.cluster.local", RecordType::A),
            Answer::NoData
        );
        r.remove_pod("team", "p");
        assert_eq!(
            r.answer("team.svc.cluster.local", RecordType::A),
            Answer::NxDomain
        );
    }

    #[test]
    fn reverse_names_of_cluster_addresses() {
        let r = cluster();
        let Answer::Records(records) = r.answer("10.0.96.10.in-addr.arpa.", RecordType::PTR) else {
            panic!("no PTR");
        };
        assert_eq!(
            records[0].data,
            RData::PTR(PTR(name("web.default.svc.cluster.local.")))
        );
        let Answer::Records(records) = r.answer("5.0.42.10.in-addr.arpa", RecordType::PTR) else {
            panic!("no PTR");
        };
        assert_eq!(
            records[0].data,
            RData::PTR(PTR(name("db-0.db.prod.svc.cluster.local.")))
        );
        // Addresses that are not the cluster's are the host resolvers' to answer.
        assert_eq!(
            r.answer("8.8.8.8.in-addr.arpa", RecordType::PTR),
            Answer::NotOurs
        );
        assert_eq!(
            r.answer("96.10.in-addr.arpa", RecordType::PTR),
            Answer::NotOurs
        );
    }

    #[test]
    fn apex_has_the_soa() {
        let r = cluster();
        let Answer::Records(records) = r.answer("cluster.local", RecordType::SOA) else {
            panic!("no SOA");
        };
        assert_eq!(records, [r.soa()]);
        assert_eq!(r.answer("cluster.local", RecordType::A), Answer::NoData);
    }

    #[test]
    fn garbage_names_do_not_panic() {
        let r = cluster();
        let long = "a".repeat(300);
        for junk in [
            "",
            "..",
            "a..b.cluster.local",
            &long,
            "\u{1F600}.svc.cluster.local",
            "_._.svc.cluster.local",
        ] {
            let _ = r.answer(junk, RecordType::A);
        }
        assert_eq!(
            r.answer(&format!("{long}.cluster.local"), RecordType::A),
            Answer::NxDomain
        );
    }

    #[test]
    fn resolv_conf_for_cluster_first() {
        assert_eq!(
            resolv_conf("shop", Ipv4Addr::new(10, 96, 0, 10), "cluster.local."),
            "search shop.svc.cluster.local svc.cluster.local cluster.local\n\
             nameserver 10.96.0.10\n\
             options ndots:5\n"
        );
    }

    mod server {
        use super::*;
        use hickory_proto::op::DnsResponse;
        use hickory_proto::op::{Message, Query};
        use hickory_server::net::client::{Client, ClientHandle};
        use hickory_server::net::tcp::TcpClientStream;
        use hickory_server::net::udp::UdpClientStream;
        use tokio::net::{TcpListener, UdpSocket};

        const TIMEOUT: Duration = Duration::from_secs(2);

        /// A server on 127.0.0.1 (UDP and TCP on the same port, as a resolver expects of a name
        /// server), running until the test ends.
        async fn start(records: ClusterRecords, forwarder: Forwarder) -> SocketAddr {
            // The UDP port may be taken for TCP by someone else: try a few.
            for _ in 0..20 {
                let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
                let addr = udp.local_addr().unwrap();
                let Ok(tcp) = TcpListener::bind(addr).await else {
                    continue;
                };
                let records = Arc::new(RwLock::new(records));
                tokio::spawn(serve_with(udp, tcp, records, forwarder));
                return addr;
            }
            panic!("no port free for both UDP and TCP");
        }

        async fn udp_client(addr: SocketAddr) -> Client<TokioRuntimeProvider> {
            let stream = UdpClientStream::builder(addr, TokioRuntimeProvider::default())
                .with_timeout(Some(TIMEOUT))
                .build();
            let (client, background) = Client::<TokioRuntimeProvider>::from_sender(stream);
            tokio::spawn(background);
            client
        }

        async fn tcp_client(addr: SocketAddr) -> Client<TokioRuntimeProvider> {
            let (stream, handle) =
                TcpClientStream::new(addr, None, Some(TIMEOUT), TokioRuntimeProvider::default());
            let stream = stream.await.unwrap();
            let (client, background) =
                Client::<TokioRuntimeProvider>::with_timeout(stream, handle, TIMEOUT);
            tokio::spawn(background);
            client
        }

        async fn query(
            client: &mut Client<TokioRuntimeProvider>,
            qname: &str,
            qtype: RecordType,
        ) -> DnsResponse {
            tokio::time::timeout(TIMEOUT * 2, client.query(name(qname), DNSClass::IN, qtype))
                .await
                .expect("no response in time")
                .expect("query failed")
        }

        fn data(response: &DnsResponse) -> Vec<RData> {
            response.answers.iter().map(|r| r.data.clone()).collect()
        }

        #[tokio::test]
        async fn answers_over_udp_and_tcp() {
            let addr = start(cluster(), Forwarder::none()).await;
            let mut udp = udp_client(addr).await;
            let mut tcp = tcp_client(addr).await;

            for client in [&mut udp, &mut tcp] {
                let r = query(client, "web.default.svc.cluster.local.", RecordType::A).await;
                assert_eq!(r.metadata.response_code, ResponseCode::NoError);
                assert!(r.metadata.authoritative && r.metadata.recursion_available);
                assert_eq!(data(&r), [RData::A(A(Ipv4Addr::new(10, 96, 0, 10)))]);
                assert_eq!(r.answers[0].ttl, TTL);
            }

            let r = query(
                &mut udp,
                "ext.default.svc.cluster.local.",
                RecordType::CNAME,
            )
            .await;
            assert_eq!(data(&r), [RData::CNAME(CNAME(name("example.com.")))]);

            let r = query(&mut udp, "nope.default.svc.cluster.local.", RecordType::A).await;
            assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
            assert!(r.answers.is_empty());
            // With the SOA, so that the NXDOMAIN is cached for TTL seconds.
            assert_eq!(r.authorities.len(), 1);
            assert_eq!(r.authorities[0].record_type(), RecordType::SOA);

            let r = query(&mut tcp, "web.default.svc.cluster.local.", RecordType::AAAA).await;
            assert_eq!(r.metadata.response_code, ResponseCode::NoError);
            assert!(r.answers.is_empty());
        }

        #[tokio::test]
        async fn cname_to_a_cluster_name_is_followed() {
            let addr = start(cluster(), Forwarder::none()).await;
            let mut udp = udp_client(addr).await;
            let r = query(&mut udp, "alias.default.svc.cluster.local.", RecordType::A).await;
            assert_eq!(
                data(&r),
                [
                    RData::CNAME(CNAME(name("web.default.svc.cluster.local."))),
                    RData::A(A(Ipv4Addr::new(10, 96, 0, 10))),
                ]
            );
            // A target we cannot resolve (no forwarding here): the CNAME alone.
            let r = query(&mut udp, "ext.default.svc.cluster.local.", RecordType::A).await;
            assert_eq!(r.metadata.response_code, ResponseCode::NoError);
            assert_eq!(data(&r), [RData::CNAME(CNAME(name("example.com.")))]);
        }

        #[tokio::test]
        async fn other_names_are_forwarded_upstream() {
            // Upstream: another of our servers, for the domain upstream.test.
            let mut theirs = ClusterRecords::new("upstream.test").unwrap();
            theirs.upsert_service(&service(json!({
                "metadata": {"name": "api", "namespace": "default"},
                "spec": {"clusterIP": "10.77.0.1"}
            })));
            let upstream = start(theirs, Forwarder::none()).await;
            let addr = start(cluster(), Forwarder::to(&[upstream])).await;
            let mut udp = udp_client(addr).await;

            let r = query(&mut udp, "api.default.svc.upstream.test.", RecordType::A).await;
            assert_eq!(r.metadata.response_code, ResponseCode::NoError);
            assert!(!r.metadata.authoritative && r.metadata.recursion_available);
            assert_eq!(data(&r), [RData::A(A(Ipv4Addr::new(10, 77, 0, 1)))]);

            let r = query(&mut udp, "nope.default.svc.upstream.test.", RecordType::A).await;
            assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
            assert_eq!(r.authorities.len(), 1, "upstream's SOA is passed on");

            // Still ours, not forwarded.
            let r = query(&mut udp, "web.default.svc.cluster.local.", RecordType::A).await;
            assert!(r.metadata.authoritative);
        }

        #[tokio::test]
        async fn serve_forwards_to_the_host_and_answers_cluster_names() {
            // Whatever this host's /etc/resolv.conf says (or lacks), cluster names are ours.
            let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = udp.local_addr().unwrap();
            tokio::spawn(serve(udp, tcp, Arc::new(RwLock::new(cluster()))));
            let mut udp = udp_client(addr).await;
            let r = query(&mut udp, "web.default.svc.cluster.local.", RecordType::A).await;
            assert_eq!(data(&r), [RData::A(A(Ipv4Addr::new(10, 96, 0, 10)))]);
        }

        #[tokio::test]
        async fn without_upstream_other_names_fail() {
            let addr = start(cluster(), Forwarder::none()).await;
            let mut udp = udp_client(addr).await;
            let r = query(&mut udp, "example.org.", RecordType::A).await;
            assert_eq!(r.metadata.response_code, ResponseCode::ServFail);
        }

        /// One raw datagram out, its answer (if any within the timeout) back.
        async fn exchange(addr: SocketAddr, bytes: &[u8]) -> Option<Message> {
            let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            socket.send_to(bytes, addr).await.unwrap();
            let mut buf = vec![0; 4096];
            let (len, _) = tokio::time::timeout(TIMEOUT, socket.recv_from(&mut buf))
                .await
                .ok()?
                .ok()?;
            Some(Message::from_vec(&buf[..len]).unwrap())
        }

        #[tokio::test]
        async fn other_opcodes_are_not_implemented_and_junk_is_survived() {
            let addr = start(cluster(), Forwarder::none()).await;

            let mut status = Message::new(7, MessageType::Query, OpCode::Status);
            status.add_query(Query::query(
                name("web.default.svc.cluster.local."),
                RecordType::A,
            ));
            let r = exchange(addr, &status.to_vec().unwrap())
                .await
                .expect("no answer");
            assert_eq!(r.metadata.id, 7);
            assert_eq!(r.metadata.response_code, ResponseCode::NotImp);

            // Two questions in one query: a format error.
            let mut two = Message::new(8, MessageType::Query, OpCode::Query);
            two.add_query(Query::query(
                name("web.default.svc.cluster.local."),
                RecordType::A,
            ));
            two.add_query(Query::query(
                name("ext.default.svc.cluster.local."),
                RecordType::A,
            ));
            let r = exchange(addr, &two.to_vec().unwrap())
                .await
                .expect("no answer");
            assert_eq!(r.metadata.response_code, ResponseCode::FormErr);

            // Junk: a header with nonsense behind it, and less than a header.
            let mut junk = vec![0x12, 0x34, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0];
            junk.extend_from_slice(&[0xff; 40]);
            let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            socket.send_to(&junk, addr).await.unwrap();
            socket.send_to(&[1, 2, 3], addr).await.unwrap();

            // Still serving (the junk, sent first, has been through the server by now).
            let mut udp = udp_client(addr).await;
            let r = query(&mut udp, "web.default.svc.cluster.local.", RecordType::A).await;
            assert_eq!(data(&r), [RData::A(A(Ipv4Addr::new(10, 96, 0, 10)))]);
        }
    }

    #[test]
    fn pod_lookups_use_the_search_domains_and_follow_external_names() {
        let mut r = ClusterRecords::default();
        r.upsert_service(
            &serde_json::from_value(serde_json::json!({
                "metadata": {"name": "web", "namespace": "shop"},
                "spec": {"clusterIP": "10.96.0.20", "ports": [{"port": 80}]}
            }))
            .unwrap(),
        );
        r.upsert_service(
            &serde_json::from_value(serde_json::json!({
                "metadata": {"name": "docs", "namespace": "shop"},
                "spec": {"type": "ExternalName", "externalName": "docs.example.org"}
            }))
            .unwrap(),
        );
        let web = Lookup::Addresses(vec!["10.96.0.20".parse().unwrap()]);
        assert_eq!(r.lookup("web", "shop"), web);
        assert_eq!(r.lookup("web.shop", "default"), web);
        assert_eq!(r.lookup("web.shop.svc.cluster.local.", "default"), web);
        assert_eq!(r.lookup("web", "default"), Lookup::External("web".into()));
        assert_eq!(
            r.lookup("docs", "shop"),
            Lookup::External("docs.example.org".into())
        );
        assert_eq!(
            r.lookup("example.com", "shop"),
            Lookup::External("example.com".into())
        );
    }
}
