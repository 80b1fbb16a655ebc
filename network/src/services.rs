//! Services as nftables rules, in Drover's own table `ip drover`, shaped like kube-proxy's
//! nftables mode but with fewer objects, so that programming is cheap:
//!
//! - one verdict map `service-ips` (address . protocol . port → `goto` the Service port's
//!   chain) for ClusterIPs and external IPs, and one `service-nodeports` (protocol . port) for
//!   NodePorts and LoadBalancer ports on the node's own addresses: a packet costs one lookup
//!   whatever the number of Services;
//! - one chain per Service port holding one rule, `dnat to numgen random mod N map {…}`, over
//!   its ready endpoints (kube-proxy has a chain per endpoint besides);
//! - Service ports with no ready endpoint are in `no-endpoint-services` / `-nodeports`, which
//!   the filter hooks answer with a reject, so a client fails at once instead of hanging;
//! - traffic that came from outside (NodePort, LoadBalancer) is marked and masqueraded, so
//!   that replies from a pod on another node come back through this node.
//!
//! [`desired`] turns Services and EndpointSlices into [`ServicePort`]s (pure); [`Changes`]
//! holds what differs between two such states and renders it as one atomic nft batch: a full
//! resync at start replaces Drover's table in one transaction (working rules never flushed
//! first), and each later change touches only its own map elements and chain.

use std::borrow::Borrow;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

pub const TABLE: &str = "drover";
/// Marks packets to be masqueraded on the way out (as kube-proxy's 0x4000).
pub const MASQUERADE_MARK: u32 = 0x4000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    fn parse(s: Option<&str>) -> Protocol {
        match s {
            Some("UDP") => Protocol::Udp,
            Some("SCTP") => Protocol::Sctp,
            _ => Protocol::Tcp,
        }
    }
    fn nft(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

/// One port of one Service, as the data path needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    /// `namespace/name/protocol/port`: unique, and the name of its chain.
    pub key: String,
    /// Addresses it answers on: the ClusterIP(s) and spec.externalIPs.
    pub ips: Vec<Ipv4Addr>,
    pub protocol: Protocol,
    pub port: u16,
    /// Answered on every address of the node: the NodePort, and for LoadBalancer Services
    /// also `port` itself (k3s's service load balancer answers on the nodes' addresses).
    pub node_ports: Vec<u16>,
    /// Ready endpoints (address, target port), sorted.
    pub endpoints: Vec<(Ipv4Addr, u16)>,
}

impl ServicePort {
    fn chain(&self) -> String {
        format!("svc/{}", self.key)
    }
}

/// The Service ports a node programs, by key, from every Service and EndpointSlice.
pub fn desired(
    services: &[impl Borrow<Service>],
    slices: &[impl Borrow<EndpointSlice>],
) -> BTreeMap<String, ServicePort> {
    let mut by_service: BTreeMap<(String, String), Vec<&EndpointSlice>> = BTreeMap::new();
    for slice in slices {
        let slice: &EndpointSlice = slice.borrow();
        if slice.address_type != "IPv4" {
            continue;
        }
        let Some(svc) = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("kubernetes.io/service-name"))
        else {
            continue;
        };
        let ns = slice.metadata.namespace.clone().unwrap_or_default();
        by_service.entry((ns, svc.clone())).or_default().push(slice);
    }
    let mut out = BTreeMap::new();
    for svc in services {
        let svc: &Service = svc.borrow();
        let Some(spec) = &svc.spec else { continue };
        let kind = spec.type_.as_deref().unwrap_or("ClusterIP");
        if kind == "ExternalName" {
            continue;
        }
        let ns = svc.metadata.namespace.clone().unwrap_or_default();
        let name = svc.metadata.name.clone().unwrap_or_default();
        let mut ips: Vec<Ipv4Addr> = spec
            .cluster_ips
            .iter()
            .flatten()
            .chain(spec.cluster_ip.iter())
            .chain(spec.external_ips.iter().flatten())
            .filter_map(|ip| ip.parse().ok())
            .collect();
        ips.sort();
        ips.dedup();
        let headless = spec.cluster_ip.as_deref() == Some("None");
        let slices = by_service
            .get(&(ns.clone(), name.clone()))
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        for sp in spec.ports.iter().flatten() {
            let Ok(port) = u16::try_from(sp.port) else {
                continue;
            };
            let protocol = Protocol::parse(sp.protocol.as_deref());
            let mut node_ports: Vec<u16> = Vec::new();
            if kind == "NodePort" || kind == "LoadBalancer" {
                node_ports.extend(sp.node_port.and_then(|p| u16::try_from(p).ok()));
            }
            if kind == "LoadBalancer" {
                node_ports.push(port);
            }
            if headless && node_ports.is_empty() {
                continue; // headless: DNS only
            }
            let mut endpoints = Vec::new();
            for slice in slices {
                let Some(target) = slice.ports.iter().flatten().find(|p| {
                    p.name.as_deref().unwrap_or("") == sp.name.as_deref().unwrap_or("")
                        && Protocol::parse(p.protocol.as_deref()) == protocol
                }) else {
                    continue;
                };
                let Some(target) = target.port.and_then(|p| u16::try_from(p).ok()) else {
                    continue;
                };
                for ep in &slice.endpoints {
                    let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
                    if !ready {
                        continue;
                    }
                    endpoints.extend(
                        ep.addresses
                            .iter()
                            .filter_map(|a| a.parse::<Ipv4Addr>().ok())
                            .map(|ip| (ip, target)),
                    );
                }
            }
            endpoints.sort();
            endpoints.dedup();
            let key = format!("{ns}/{name}/{}/{port}", protocol.nft());
            out.insert(
                key.clone(),
                ServicePort {
                    key,
                    ips: if headless { vec![] } else { ips.clone() },
                    protocol,
                    port,
                    node_ports,
                    endpoints,
                },
            );
        }
    }
    out
}

/// What the node's table holds besides the Services: the ranges it masquerades for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeNet {
    /// Pod traffic from here to outside this range is masqueraded (leaving the cluster).
    pub cluster_cidr: ipnet::Ipv4Net,
    /// The cluster DNS Service address and where it is answered on this node (the node's own
    /// DNS server): pods' resolver is the same address everywhere, served by their own node.
    pub dns: Option<(Ipv4Addr, Ipv4Addr)>,
}

/// The table's fixed part: maps, hooks, masquerading.
pub fn base_ruleset(node: &NodeNet) -> String {
    let mut s = String::new();
    let cluster = node.cluster_cidr;
    let m = MASQUERADE_MARK;
    let _ = write!(
        s,
        "table ip {TABLE} {{\n\
         \tmap service-ips {{ type ipv4_addr . inet_proto . inet_service : verdict; }}\n\
         \tmap service-nodeports {{ type inet_proto . inet_service : verdict; }}\n\
         \tset no-endpoint-services {{ type ipv4_addr . inet_proto . inet_service; }}\n\
         \tset no-endpoint-nodeports {{ type inet_proto . inet_service; }}\n\
         \tchain services {{\n\
         \t\tip daddr . meta l4proto . th dport vmap @service-ips\n\
         \t\tfib daddr type local meta l4proto . th dport vmap @service-nodeports\n\
         \t}}\n\
         \tchain mark-for-masquerade {{ meta mark set meta mark | {m:#x}; }}\n\
         \tchain nat-prerouting {{ type nat hook prerouting priority -100; policy accept; jump services; }}\n\
         \tchain nat-output {{ type nat hook output priority -100; policy accept; jump services; }}\n\
         \tchain nat-postrouting {{\n\
         \t\ttype nat hook postrouting priority 100; policy accept;\n\
         \t\tmeta mark & {m:#x} == {m:#x} masquerade\n\
         \t\tip saddr {cluster} ip daddr != {cluster} fib daddr type != local masquerade\n\
         \t}}\n\
         \tchain service-rejects {{\n\
         \t\tip daddr . meta l4proto . th dport @no-endpoint-services reject\n\
         \t\tfib daddr type local meta l4proto . th dport @no-endpoint-nodeports reject\n\
         \t}}\n\
         \tchain filter-input {{ type filter hook input priority -10; policy accept; ct state new jump service-rejects; }}\n\
         \tchain filter-forward {{ type filter hook forward priority -10; policy accept; ct state new jump service-rejects; }}\n\
         \tchain filter-output {{ type filter hook output priority -10; policy accept; ct state new jump service-rejects; }}\n\
         }}\n"
    );
    if let Some((vip, local)) = node.dns {
        let _ = write!(
            s,
            "add chain ip {TABLE} cluster-dns\n\
             add rule ip {TABLE} cluster-dns meta l4proto {{ tcp, udp }} th dport 53 dnat to {local}\n\
             add element ip {TABLE} service-ips {{ {vip} . udp . 53 : goto cluster-dns, {vip} . tcp . 53 : goto cluster-dns }}\n"
        );
    }
    s
}

fn add_service(s: &mut String, sp: &ServicePort) {
    let chain = sp.chain();
    let proto = sp.protocol.nft();
    let _ = writeln!(s, "add chain ip {TABLE} {chain}");
    if sp.endpoints.is_empty() {
        for ip in &sp.ips {
            let _ = writeln!(
                s,
                "add element ip {TABLE} no-endpoint-services {{ {ip} . {proto} . {} }}",
                sp.port
            );
        }
        for np in &sp.node_ports {
            let _ = writeln!(
                s,
                "add element ip {TABLE} no-endpoint-nodeports {{ {proto} . {np} }}"
            );
        }
        return;
    }
    // One rule per endpoint, each taking its share of what the ones before left (1/N, then
    // 1/(N-1), ... then all), as iptables' statistic mode: no per-Service anonymous map,
    // which the kernel binds at a cost growing with the number of sets (measured: 19 s for
    // 10,000 Services, against 0.4 s for this form).
    let n = sp.endpoints.len();
    for (i, (ip, port)) in sp.endpoints.iter().enumerate() {
        let left = n - i;
        let pick = if left > 1 {
            format!("numgen random mod {left} == 0 ")
        } else {
            String::new()
        };
        let _ = writeln!(
            s,
            "add rule ip {TABLE} {chain} meta l4proto {proto} {pick}dnat to {ip}:{port}"
        );
    }
    // External traffic is first marked for masquerading, then balanced the same way.
    let _ = writeln!(s, "add chain ip {TABLE} ext/{}", sp.key);
    let _ = writeln!(
        s,
        "add rule ip {TABLE} ext/{} jump mark-for-masquerade",
        sp.key
    );
    let _ = writeln!(s, "add rule ip {TABLE} ext/{} goto {chain}", sp.key);
    for ip in &sp.ips {
        let _ = writeln!(
            s,
            "add element ip {TABLE} service-ips {{ {ip} . {proto} . {} : goto {chain} }}",
            sp.port
        );
    }
    for np in &sp.node_ports {
        let _ = writeln!(
            s,
            "add element ip {TABLE} service-nodeports {{ {proto} . {np} : goto ext/{} }}",
            sp.key
        );
    }
}

fn remove_service(s: &mut String, sp: &ServicePort) {
    let chain = sp.chain();
    let proto = sp.protocol.nft();
    if sp.endpoints.is_empty() {
        for ip in &sp.ips {
            let _ = writeln!(
                s,
                "delete element ip {TABLE} no-endpoint-services {{ {ip} . {proto} . {} }}",
                sp.port
            );
        }
        for np in &sp.node_ports {
            let _ = writeln!(
                s,
                "delete element ip {TABLE} no-endpoint-nodeports {{ {proto} . {np} }}"
            );
        }
    } else {
        for ip in &sp.ips {
            let _ = writeln!(
                s,
                "delete element ip {TABLE} service-ips {{ {ip} . {proto} . {} }}",
                sp.port
            );
        }
        for np in &sp.node_ports {
            let _ = writeln!(
                s,
                "delete element ip {TABLE} service-nodeports {{ {proto} . {np} }}"
            );
        }
        let _ = writeln!(s, "delete chain ip {TABLE} ext/{}", sp.key);
    }
    let _ = writeln!(s, "delete chain ip {TABLE} {chain}");
}

/// The nft batch that takes the table from `old` to `new`: removals first (a port can move
/// from one Service to another), then additions. A changed Service port is removed and added
/// again inside the same batch, which the kernel applies atomically.
pub fn changes(old: &BTreeMap<String, ServicePort>, new: &BTreeMap<String, ServicePort>) -> String {
    let mut s = String::new();
    for (key, sp) in old {
        if new.get(key) != Some(sp) {
            remove_service(&mut s, sp);
        }
    }
    for (key, sp) in new {
        if old.get(key) != Some(sp) {
            add_service(&mut s, sp);
        }
    }
    s
}

/// The whole table from nothing, replacing whatever Drover had before in one transaction.
pub fn full(node: &NodeNet, ports: &BTreeMap<String, ServicePort>) -> String {
    // `add` then `delete` makes the delete valid whether or not the table existed.
    let mut s = format!("add table ip {TABLE}\ndelete table ip {TABLE}\n");
    s.push_str(&base_ruleset(node));
    s.push_str(&changes(&BTreeMap::new(), ports));
    s
}

/// Applies nft batches (`nft -f -`): one process per batch, each batch atomic.
pub async fn apply(batch: &str) -> anyhow::Result<()> {
    use anyhow::Context;
    use tokio::io::AsyncWriteExt;
    if batch.is_empty() {
        return Ok(());
    }
    let mut child = tokio::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("cannot run nft (install the nftables package)")?;
    let mut stdin = child.stdin.take().context("nft stdin")?;
    stdin.write_all(batch.as_bytes()).await?;
    drop(stdin);
    let out = child.wait_with_output().await?;
    anyhow::ensure!(
        out.status.success(),
        "nft: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// Removes Drover's tables (`drover node --cleanup`); nothing else is touched.
pub async fn cleanup() -> anyhow::Result<()> {
    let policy = crate::policy::TABLE;
    apply(&format!(
        "add table ip {TABLE}\ndelete table ip {TABLE}\nadd table ip {policy}\ndelete table ip {policy}\n"
    ))
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc(v: serde_json::Value) -> Service {
        serde_json::from_value(v).unwrap()
    }
    fn slice(v: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn ready_endpoints_of_each_port_and_nodeports() {
        let services = vec![svc(json!({
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"type": "NodePort", "clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20"],
                     "ports": [{"name": "http", "port": 80, "targetPort": 8080, "nodePort": 30080}]}
        }))];
        let slices = vec![slice(json!({
            "metadata": {"name": "web-abc", "namespace": "default", "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [
                {"addresses": ["10.42.0.5"], "conditions": {"ready": true}},
                {"addresses": ["10.42.1.7"], "conditions": {"ready": false}},
                {"addresses": ["10.42.1.6"]}
            ]
        }))];
        let got = desired(&services, &slices);
        let sp = &got["default/web/tcp/80"];
        assert_eq!(sp.ips, [Ipv4Addr::new(10, 96, 0, 20)]);
        assert_eq!(sp.node_ports, [30080]);
        assert_eq!(
            sp.endpoints,
            [
                (Ipv4Addr::new(10, 42, 0, 5), 8080),
                (Ipv4Addr::new(10, 42, 1, 6), 8080)
            ]
        );
        let batch = changes(&BTreeMap::new(), &got);
        assert!(batch.contains("svc/default/web/tcp/80 meta l4proto tcp numgen random mod 2 == 0 dnat to 10.42.0.5:8080\n"), "{batch}");
        assert!(
            batch.contains("svc/default/web/tcp/80 meta l4proto tcp dnat to 10.42.1.6:8080\n"),
            "{batch}"
        );
        assert!(
            batch.contains("service-nodeports { tcp . 30080 : goto ext/default/web/tcp/80 }"),
            "{batch}"
        );
        // Nothing changed: nothing to do.
        assert_eq!(changes(&got, &got), "");
        // No endpoints left: rejected instead of balanced.
        let empty = desired(&services, &Vec::<EndpointSlice>::new());
        let batch = changes(&got, &empty);
        assert!(
            batch.contains("delete element ip drover service-ips { 10.96.0.20 . tcp . 80 }"),
            "{batch}"
        );
        assert!(
            batch.contains("add element ip drover no-endpoint-services { 10.96.0.20 . tcp . 80 }"),
            "{batch}"
        );
        assert!(
            batch.contains("add element ip drover no-endpoint-nodeports { tcp . 30080 }"),
            "{batch}"
        );
    }

    #[test]
    fn headless_and_external_name_services_get_no_rules_and_load_balancers_answer_on_nodes() {
        let services = vec![
            svc(
                json!({"metadata": {"name": "h", "namespace": "a"}, "spec": {"clusterIP": "None", "ports": [{"port": 80}]}}),
            ),
            svc(
                json!({"metadata": {"name": "x", "namespace": "a"}, "spec": {"type": "ExternalName", "externalName": "example.com"}}),
            ),
            svc(
                json!({"metadata": {"name": "lb", "namespace": "a"}, "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.9", "ports": [{"port": 8080, "nodePort": 31000}]}}),
            ),
        ];
        let got = desired(&services, &Vec::<EndpointSlice>::new());
        assert_eq!(got.keys().collect::<Vec<_>>(), ["a/lb/tcp/8080"]);
        assert_eq!(got["a/lb/tcp/8080"].node_ports, [31000, 8080]);
    }
}
