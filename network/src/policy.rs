//! NetworkPolicy (networking.k8s.io/v1) as nftables rules, in Drover's table `ip
//! drover-policy`, enforced by the node where a pod runs:
//!
//! - every packet of a pod passes its node's `forward` hook (routed veths, see [`crate::pods`]),
//!   to a pod on the same node or not, so one chain per isolated pod does both directions:
//!   egress where the packet comes from a local pod, ingress where it goes to one;
//! - after DNAT: a Service's traffic is judged by the pod it reaches, as Kubernetes says;
//! - stateful: replies of allowed connections pass (`ct state established,related`);
//! - a pod is isolated in a direction once any policy selects it for that direction (its
//!   policyTypes, or Ingress plus Egress if it has egress rules), and then only what some
//!   policy allows passes; the rest is dropped;
//! - the node itself reaches its pods through the output hook, never filtered here, so probes
//!   keep working under a deny-all policy (Kubernetes' rule too).
//!
//! The table also masquerades hairpin traffic (a pod reaching itself through a Service), the
//! one other rule that depends on which pods run on the node.
//!
//! [`ruleset`] is pure: policies, pods and namespaces in, the whole table out. The table is
//! replaced in one transaction on each change; its size is that of the node's isolated pods'
//! rules, not of the cluster.
//!
//! Not done: egress to the node's own addresses (the cluster DNS among them) is not filtered
//! (it goes through the input hook); named ports in egress rules towards an ipBlock (they can
//! only name a pod's port) match nothing, as in Kubernetes.

use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

pub const TABLE: &str = "drover-policy";

/// A pod as policies see it.
struct PodView<'a> {
    pod: &'a Pod,
    ip: Ipv4Addr,
    namespace: &'a str,
    labels: BTreeMap<String, String>,
}

impl PodView<'_> {
    /// The container port named `name` with `protocol`.
    fn named_port(&self, name: &str, protocol: &str) -> Option<i32> {
        self.pod
            .spec
            .as_ref()?
            .containers
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
            .find(|p| {
                p.name.as_deref() == Some(name)
                    && p.protocol.as_deref().unwrap_or("TCP") == protocol
            })
            .map(|p| p.container_port)
    }
}

/// One ingress or egress rule of a policy: its peers (`from`/`to`) and its ports.
type Rule<'a> = (
    Option<&'a Vec<NetworkPolicyPeer>>,
    Option<&'a Vec<NetworkPolicyPort>>,
);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    Ingress,
    Egress,
}

fn policy_types(p: &NetworkPolicy) -> Vec<Direction> {
    let spec = p.spec.as_ref();
    match spec.and_then(|s| s.policy_types.as_ref()) {
        Some(types) => types
            .iter()
            .filter_map(|t| match t.as_str() {
                "Ingress" => Some(Direction::Ingress),
                "Egress" => Some(Direction::Egress),
                _ => None,
            })
            .collect(),
        None => {
            let mut v = vec![Direction::Ingress];
            if spec.and_then(|s| s.egress.as_ref()).is_some() {
                v.push(Direction::Egress);
            }
            v
        }
    }
}

/// The match on the far end's address of one peer: a set of pod addresses, or an ipBlock.
enum PeerMatch<'a> {
    Pods(Vec<&'a PodView<'a>>),
    Block { cidr: String, except: Vec<String> },
}

fn peers<'a>(
    peers: Option<&Vec<NetworkPolicyPeer>>,
    policy_ns: &str,
    pods: &'a [PodView<'a>],
    ns_labels: &BTreeMap<String, BTreeMap<String, String>>,
) -> Option<Vec<PeerMatch<'a>>> {
    // No `from`/`to` (or an empty list): every peer.
    let list = peers.filter(|l| !l.is_empty())?;
    let empty = BTreeMap::new();
    let mut out = Vec::new();
    for peer in list {
        if let Some(block) = &peer.ip_block {
            // Parsed, never pasted: the text goes into an nft script run as root. An IPv6
            // block (this data path is IPv4) or a malformed one matches nothing here.
            if let Ok(cidr) = block.cidr.trim().parse::<ipnet::Ipv4Net>() {
                let except = block
                    .except
                    .iter()
                    .flatten()
                    .filter_map(|e| e.trim().parse::<ipnet::Ipv4Net>().ok())
                    .map(|e| e.to_string())
                    .collect();
                out.push(PeerMatch::Block {
                    cidr: cidr.to_string(),
                    except,
                });
            }
            continue;
        }
        let selected: Vec<&PodView> = pods
            .iter()
            .filter(|p| match &peer.namespace_selector {
                Some(sel) => {
                    api::selector::typed_matches(sel, ns_labels.get(p.namespace).unwrap_or(&empty))
                }
                None => p.namespace == policy_ns,
            })
            .filter(|p| {
                peer.pod_selector
                    .as_ref()
                    .is_none_or(|sel| api::selector::typed_matches(sel, &p.labels))
            })
            .collect();
        out.push(PeerMatch::Pods(selected));
    }
    Some(out)
}

/// `meta l4proto tcp th dport 80` for one policy port, resolving a named port on `owner`
/// (the pod whose port it is); None when the name does not resolve (the port matches nothing).
fn port_match(port: &NetworkPolicyPort, owner: Option<&PodView>) -> Option<String> {
    let protocol = port.protocol.as_deref().unwrap_or("TCP");
    // Only the three protocols Kubernetes knows reach the script.
    let proto = match protocol {
        "TCP" => "tcp",
        "UDP" => "udp",
        "SCTP" => "sctp",
        _ => return None,
    };
    let number = match &port.port {
        None => return Some(format!("meta l4proto {proto}")),
        Some(IntOrString::Int(n)) => *n,
        Some(IntOrString::String(name)) => match name.parse() {
            Ok(n) => n,
            Err(_) => owner?.named_port(name, protocol)?,
        },
    };
    Some(match port.end_port {
        Some(end) if end > number => format!("meta l4proto {proto} th dport {number}-{end}"),
        _ => format!("meta l4proto {proto} th dport {number}"),
    })
}

/// The whole `drover-policy` table for the pods of `node`, replacing the previous one.
pub fn ruleset(
    policies: &[impl Borrow<NetworkPolicy>],
    pods: &[impl Borrow<Pod>],
    namespaces: &[impl Borrow<Namespace>],
    node: &str,
) -> String {
    let views: Vec<PodView> = pods
        .iter()
        .map(|p| p.borrow())
        // Finished pods have given their address back: it may be another pod's now.
        .filter(|p| {
            let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
            !matches!(phase, Some("Succeeded" | "Failed"))
        })
        .filter_map(|pod| {
            let ip = pod.status.as_ref()?.pod_ip.as_deref()?.parse().ok()?;
            Some(PodView {
                pod,
                ip,
                namespace: pod.metadata.namespace.as_deref().unwrap_or("default"),
                labels: pod.metadata.labels.clone().unwrap_or_default(),
            })
        })
        .collect();
    let ns_labels: BTreeMap<String, BTreeMap<String, String>> = namespaces
        .iter()
        .map(|n| n.borrow())
        .map(|n| {
            let mut labels = n.metadata.labels.clone().unwrap_or_default();
            // Set by Kubernetes on every namespace (1.22+), so policies can select by name.
            labels.insert(
                "kubernetes.io/metadata.name".into(),
                n.metadata.name.clone().unwrap_or_default(),
            );
            (n.metadata.name.clone().unwrap_or_default(), labels)
        })
        .collect();
    let local: Vec<&PodView> = views
        .iter()
        .filter(|p| p.pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node))
        .collect();

    let mut chains = String::new();
    let mut ingress_map = Vec::new();
    let mut egress_map = Vec::new();
    for (i, target) in local.iter().enumerate() {
        for direction in [Direction::Ingress, Direction::Egress] {
            let selecting: Vec<&NetworkPolicy> = policies
                .iter()
                .map(|p| p.borrow())
                .filter(|p| {
                    p.metadata.namespace.as_deref().unwrap_or("default") == target.namespace
                })
                .filter(|p| policy_types(p).contains(&direction))
                .filter(|p| {
                    let sel = p
                        .spec
                        .as_ref()
                        .map(|s| s.pod_selector.clone())
                        .unwrap_or_default();
                    api::selector::typed_matches(&sel, &target.labels)
                })
                .collect();
            if selecting.is_empty() {
                continue;
            }
            let (chain, verdict, far) = match direction {
                Direction::Ingress => (format!("ingress-{i}"), "accept", "saddr"),
                Direction::Egress => (format!("egress-{i}"), "return", "daddr"),
            };
            let mut rules = Vec::new();
            for policy in selecting {
                let ns = policy.metadata.namespace.as_deref().unwrap_or("default");
                let spec = policy.spec.as_ref();
                let allow: Vec<Rule> = match direction {
                    Direction::Ingress => spec
                        .and_then(|s| s.ingress.as_ref())
                        .into_iter()
                        .flatten()
                        .map(|r| (r.from.as_ref(), r.ports.as_ref()))
                        .collect(),
                    Direction::Egress => spec
                        .and_then(|s| s.egress.as_ref())
                        .into_iter()
                        .flatten()
                        .map(|r| (r.to.as_ref(), r.ports.as_ref()))
                        .collect(),
                };
                for (peer_list, ports) in allow {
                    let ports: Vec<&NetworkPolicyPort> = ports.into_iter().flatten().collect();
                    let peer_matches = peers(peer_list, ns, &views, &ns_labels);
                    // Each (peer, port owner) pair: named ports belong to the protected pod on
                    // ingress, to the far pod on egress.
                    let mut addr_ports: Vec<(String, Option<&PodView>)> = Vec::new();
                    match &peer_matches {
                        None => addr_ports.push((String::new(), None)),
                        Some(list) => {
                            for m in list {
                                match m {
                                    PeerMatch::Block { cidr, except } => {
                                        let mut e = format!("ip {far} {cidr}");
                                        if !except.is_empty() {
                                            let _ = write!(
                                                e,
                                                " ip {far} != {{ {} }}",
                                                except.join(", ")
                                            );
                                        }
                                        addr_ports.push((e, None));
                                    }
                                    PeerMatch::Pods(pods) if direction == Direction::Egress => {
                                        for p in pods {
                                            addr_ports
                                                .push((format!("ip {far} {}", p.ip), Some(p)));
                                        }
                                    }
                                    PeerMatch::Pods(pods) => {
                                        let ips: BTreeSet<String> =
                                            pods.iter().map(|p| p.ip.to_string()).collect();
                                        if !ips.is_empty() {
                                            let set =
                                                ips.into_iter().collect::<Vec<_>>().join(", ");
                                            addr_ports
                                                .push((format!("ip {far} {{ {set} }}"), None));
                                        }
                                    }
                                }
                            }
                        }
                    }
                    for (addr, far_pod) in &addr_ports {
                        let owner = match direction {
                            Direction::Ingress => Some(*target),
                            Direction::Egress => *far_pod,
                        };
                        if ports.is_empty() {
                            rules.push(format!("{addr} {verdict}"));
                            continue;
                        }
                        for port in &ports {
                            if let Some(pm) = port_match(port, owner) {
                                rules.push(format!("{addr} {pm} {verdict}"));
                            }
                        }
                    }
                }
            }
            let _ = writeln!(chains, "\tchain {chain} {{");
            for r in rules {
                let _ = writeln!(chains, "\t\t{}", r.trim());
            }
            let _ = writeln!(chains, "\t\tdrop\n\t}}");
            match direction {
                Direction::Ingress => ingress_map.push(format!("{} : jump {chain}", target.ip)),
                Direction::Egress => egress_map.push(format!("{} : jump {chain}", target.ip)),
            }
        }
    }
    let mut s = format!("add table ip {TABLE}\ndelete table ip {TABLE}\ntable ip {TABLE} {{\n");
    let _ = writeln!(s, "\tchain forward {{\n\t\ttype filter hook forward priority 0; policy accept;\n\t\tct state established,related accept");
    if !egress_map.is_empty() {
        let _ = writeln!(s, "\t\tip saddr vmap {{ {} }}", egress_map.join(", "));
    }
    if !ingress_map.is_empty() {
        let _ = writeln!(s, "\t\tip daddr vmap {{ {} }}", ingress_map.join(", "));
    }
    let _ = writeln!(s, "\t}}");
    s.push_str(&chains);
    // Hairpin: a pod that reaches itself through a Service gets a packet from its own address,
    // which its kernel drops as martian; such packets leave with the node's address instead
    // (kube-proxy masquerades them too).
    if !local.is_empty() {
        let pairs: Vec<String> = local.iter().map(|p| format!("{0} . {0}", p.ip)).collect();
        let _ = writeln!(
            s,
            "\tchain hairpin {{\n\t\ttype nat hook postrouting priority 100; policy accept;\n\t\tct status dnat ip saddr . ip daddr {{ {} }} masquerade\n\t}}",
            pairs.join(", ")
        );
    }
    s.push_str("}\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, ns: &str, ip: &str, node: &str, labels: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": {"nodeName": node, "containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}]},
            "status": {"podIP": ip}
        }))
        .unwrap()
    }
    fn policy(v: serde_json::Value) -> NetworkPolicy {
        serde_json::from_value(v).unwrap()
    }
    fn ns(name: &str, labels: serde_json::Value) -> Namespace {
        serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).unwrap()
    }

    #[test]
    fn without_policies_nothing_is_isolated() {
        let pods = vec![pod("a", "default", "10.42.0.2", "n1", json!({"app": "a"}))];
        let out = ruleset(
            &Vec::<NetworkPolicy>::new(),
            &pods,
            &Vec::<Namespace>::new(),
            "n1",
        );
        assert!(!out.contains("vmap"), "{out}");
        assert!(out.contains("ct state established,related accept"), "{out}");
    }

    #[test]
    fn deny_all_then_an_allow_by_pod_selector_and_named_port() {
        let pods = vec![
            pod("web", "default", "10.42.0.2", "n1", json!({"app": "web"})),
            pod(
                "client",
                "default",
                "10.42.1.3",
                "n2",
                json!({"role": "client"}),
            ),
            pod(
                "other",
                "default",
                "10.42.1.4",
                "n2",
                json!({"role": "other"}),
            ),
            pod("far", "prod", "10.42.1.5", "n2", json!({"role": "client"})),
        ];
        let namespaces = vec![ns("default", json!({})), ns("prod", json!({"env": "prod"}))];
        let deny = policy(
            json!({"metadata": {"name": "deny", "namespace": "default"}, "spec": {"podSelector": {}}}),
        );
        let out = ruleset(std::slice::from_ref(&deny), &pods, &namespaces, "n1");
        assert!(
            out.contains("ip daddr vmap { 10.42.0.2 : jump ingress-0 }"),
            "{out}"
        );
        assert!(out.contains("chain ingress-0 {\n\t\tdrop\n\t}"), "{out}");
        assert!(!out.contains("ip saddr vmap"), "ingress only: {out}");
        assert!(
            out.contains("ct status dnat ip saddr . ip daddr { 10.42.0.2 . 10.42.0.2 } masquerade"),
            "{out}"
        );

        let allow = policy(
            json!({"metadata": {"name": "allow", "namespace": "default"}, "spec": {
                "podSelector": {"matchLabels": {"app": "web"}},
                "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "client"}}}], "ports": [{"port": "http"}]}]
            }}),
        );
        let out = ruleset(&[deny.clone(), allow.clone()], &pods, &namespaces, "n1");
        assert!(
            out.contains("ip saddr { 10.42.1.3 } meta l4proto tcp th dport 8080 accept"),
            "{out}"
        );
        assert!(
            !out.contains("10.42.1.5"),
            "a pod of another namespace is not selected: {out}"
        );

        // By namespace: both clients, across namespaces, once the namespace selector is given.
        let by_ns = policy(
            json!({"metadata": {"name": "ns", "namespace": "default"}, "spec": {
                "podSelector": {"matchLabels": {"app": "web"}},
                "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"env": "prod"}}, "podSelector": {"matchLabels": {"role": "client"}}}]}]
            }}),
        );
        let out = ruleset(&[by_ns], &pods, &namespaces, "n1");
        assert!(out.contains("ip saddr { 10.42.1.5 } accept"), "{out}");
        // On the clients' node the deny-all isolates the default namespace's pods only.
        let out = ruleset(&[deny, allow], &pods, &namespaces, "n2");
        assert!(
            out.contains(
                "ip daddr vmap { 10.42.1.3 : jump ingress-0, 10.42.1.4 : jump ingress-1 }"
            ),
            "{out}"
        );
    }

    #[test]
    fn egress_with_ip_blocks_and_port_ranges() {
        let pods = vec![pod(
            "app",
            "default",
            "10.42.0.2",
            "n1",
            json!({"app": "x"}),
        )];
        let egress = policy(
            json!({"metadata": {"name": "e", "namespace": "default"}, "spec": {
                "podSelector": {}, "policyTypes": ["Egress"],
                "egress": [{"to": [{"ipBlock": {"cidr": "192.168.0.0/16", "except": ["192.168.1.0/24"]}}],
                            "ports": [{"protocol": "UDP", "port": 5000, "endPort": 5010}]}]
            }}),
        );
        let out = ruleset(&[egress], &pods, &Vec::<Namespace>::new(), "n1");
        assert!(
            out.contains("ip saddr vmap { 10.42.0.2 : jump egress-0 }"),
            "{out}"
        );
        assert!(out.contains("ip daddr 192.168.0.0/16 ip daddr != { 192.168.1.0/24 } meta l4proto udp th dport 5000-5010 return"), "{out}");
        assert!(!out.contains("ip daddr vmap"), "egress only: {out}");
    }

    #[test]
    fn blocks_and_protocols_are_parsed_never_pasted() {
        let pods = vec![pod(
            "app",
            "default",
            "10.42.0.2",
            "n1",
            json!({"app": "x"}),
        )];
        let hostile = policy(
            json!({"metadata": {"name": "e", "namespace": "default"}, "spec": {
                "podSelector": {}, "policyTypes": ["Ingress"],
                "ingress": [
                    {"from": [{"ipBlock": {"cidr": "0.0.0.0/0 accept } } flush ruleset"}}]},
                    {"from": [{"ipBlock": {"cidr": "fd00::/8"}}]},
                    {"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["bad", "10.1.0.0/16"]}}],
                     "ports": [{"protocol": "ICMP; flush ruleset", "port": 1}, {"protocol": "UDP", "port": 53}]}
                ]
            }}),
        );
        let out = ruleset(&[hostile], &pods, &Vec::<Namespace>::new(), "n1");
        assert!(!out.contains("flush") && !out.contains("fd00"), "{out}");
        assert!(out.contains("ip saddr 10.0.0.0/8 ip saddr != { 10.1.0.0/16 } meta l4proto udp th dport 53 accept"), "{out}");
        assert_eq!(
            out.matches(" accept\n").count(),
            2,
            "only the established rule and the UDP one: {out}"
        );
    }
}
