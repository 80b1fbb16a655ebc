//! Where each Host goes: the routing table of Knative Routes, built from the Routes' statuses
//! (which the control plane resolves to revisions), the Revisions and their ready pods. Pure:
//! the router rebuilds it whenever one of those changes.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use api::knative::{labels, Revision, Route};
use k8s_openapi::api::core::v1::{Node, Pod};

/// One share of a host's traffic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Share {
    /// `namespace/name` of the revision.
    pub revision: String,
    pub percent: u32,
}

/// A ready instance of a revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instance {
    pub addr: SocketAddr,
    pub pod: String,
}

/// What the router needs of a revision.
#[derive(Clone, Debug, PartialEq)]
pub struct RevisionRoute {
    /// Requests one instance takes at once; 0 is no limit.
    pub concurrency: u32,
    pub timeout: Duration,
    pub instances: Vec<Instance>,
    /// Whether the revision has pods at all (ready or not, not being deleted).
    pub has_pods: bool,
    /// How this node can start the revision in process, when it can.
    pub in_process: Option<Arc<super::local::Plan>>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Table {
    /// By lower-case host, without a port.
    pub hosts: HashMap<String, Vec<Share>>,
    /// Hosts of cluster-local routes: answered to clients in the cluster only.
    pub cluster_local: std::collections::HashSet<String>,
    /// The nodes' internal addresses: clients in the cluster too (pods' requests to another
    /// node's router leave with their node's address).
    pub node_addresses: std::collections::HashSet<IpAddr>,
    pub revisions: HashMap<String, RevisionRoute>,
}

impl Table {
    /// The shares of the host a request names (its `Host` header, a port allowed), for a
    /// client in the cluster (`in_cluster`) or outside it.
    pub fn shares(&self, host: &str, in_cluster: bool) -> Option<&[Share]> {
        let host = host.rsplit_once(':').map_or(host, |(h, port)| {
            if port.chars().all(|c| c.is_ascii_digit()) {
                h
            } else {
                host
            }
        });
        let host = host.to_ascii_lowercase();
        if !in_cluster && self.cluster_local.contains(&host) {
            return None;
        }
        self.hosts.get(&host).map(Vec::as_slice)
    }
}

/// The host of an `http://host[:port]/...` URL.
fn url_host(url: &str) -> Option<String> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))?;
    let host = rest.split('/').next()?;
    let host = host.rsplit_once(':').map_or(host, |(h, _)| h);
    (!host.is_empty()).then(|| host.to_ascii_lowercase())
}

/// Picks the share a request goes to, from a number in 0..100.
pub fn pick(shares: &[Share], roll: u32) -> Option<&Share> {
    let mut acc = 0;
    for s in shares {
        acc += s.percent;
        if roll < acc {
            return Some(s);
        }
    }
    None
}

fn pod_ready(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none()
        && p.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The table of `routes`, over `revisions` and their `pods`, on `node` (this one, once seen),
/// in a cluster of `nodes`. A route's hosts are its URL's,
/// its in-cluster names (`name.namespace.svc.cluster.local`, `name.namespace.svc`,
/// `name.namespace`) and its tags' URLs; the control plane publishes no URL a route cannot
/// have (a host another route holds), so every host here has one owner.
pub fn build(
    routes: &[Arc<Route>],
    revisions: &[Arc<Revision>],
    pods: &[Arc<Pod>],
    node: Option<&Node>,
    nodes: &[Arc<Node>],
) -> Table {
    let mut table = Table {
        node_addresses: nodes
            .iter()
            .flat_map(|n| n.status.iter().flat_map(|s| s.addresses.iter().flatten()))
            .filter(|a| a.type_ == "InternalIP")
            .filter_map(|a| a.address.parse().ok())
            .collect(),
        ..Table::default()
    };
    for rev in revisions {
        let (Some(ns), Some(name)) = (&rev.metadata.namespace, &rev.metadata.name) else {
            continue;
        };
        let port = u16::try_from(api::knative::port(&rev.spec)).unwrap_or(8080);
        let of_revision = |p: &&Arc<Pod>| {
            p.metadata.namespace.as_ref() == Some(ns)
                && p.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(labels::REVISION))
                    == Some(name)
        };
        let has_pods = pods
            .iter()
            .filter(of_revision)
            .any(|p| p.metadata.deletion_timestamp.is_none());
        let instances = pods
            .iter()
            .filter(of_revision)
            .filter(|p| pod_ready(p))
            .filter_map(|p| {
                let ip: IpAddr = p.status.as_ref()?.pod_ip.as_ref()?.parse().ok()?;
                Some(Instance {
                    addr: SocketAddr::new(ip, port),
                    pod: p.metadata.name.clone().unwrap_or_default(),
                })
            })
            .collect();
        table.revisions.insert(
            format!("{ns}/{name}"),
            RevisionRoute {
                concurrency: u32::try_from(rev.spec.container_concurrency.unwrap_or(0))
                    .unwrap_or(0),
                timeout: Duration::from_secs(
                    u64::try_from(
                        rev.spec
                            .timeout_seconds
                            .unwrap_or(api::knative::DEFAULT_TIMEOUT_SECONDS),
                    )
                    .unwrap_or(300)
                    .max(1),
                ),
                instances,
                has_pods,
                in_process: super::local::plan(rev, node).ok().map(Arc::new),
            },
        );
    }
    for route in routes {
        let (Some(ns), Some(name)) = (&route.metadata.namespace, &route.metadata.name) else {
            continue;
        };
        let status = &route.status;
        // Only hosts the route may have (its name and namespace first): a status is the
        // controllers' to write, and a forged one must not take another route's host.
        let own = |host: &str, tag: Option<&str>| {
            let prefix = match tag {
                Some(tag) => format!("{tag}-{name}.{ns}."),
                None => format!("{name}.{ns}."),
            };
            host.starts_with(&prefix)
        };
        let Some(url) = status
            .url
            .as_deref()
            .and_then(url_host)
            .filter(|h| own(h, None))
        else {
            continue;
        };
        let shares: Vec<Share> = status
            .traffic
            .iter()
            .filter_map(|t| {
                Some(Share {
                    revision: format!("{ns}/{}", t.revision_name.as_ref()?),
                    percent: u32::try_from(t.percent.unwrap_or(0)).unwrap_or(0),
                })
            })
            .filter(|s| s.percent > 0)
            .collect();
        let internal = [
            format!("{name}.{ns}.svc.cluster.local"),
            format!("{name}.{ns}.svc"),
            format!("{name}.{ns}"),
        ];
        let cluster_local = api::knative::cluster_local(route.metadata.labels.as_ref());
        for host in std::iter::once(url).chain(internal) {
            if cluster_local {
                table.cluster_local.insert(host.clone());
            }
            table.hosts.entry(host).or_insert_with(|| shares.clone());
        }
        for t in &status.traffic {
            let (Some(tag_url), Some(rev), Some(tag)) = (
                t.url.as_deref().and_then(url_host),
                &t.revision_name,
                t.tag.as_deref(),
            ) else {
                continue;
            };
            if !own(&tag_url, Some(tag)) {
                continue;
            }
            if cluster_local {
                table.cluster_local.insert(tag_url.clone());
            }
            table.hosts.entry(tag_url).or_insert_with(|| {
                vec![Share {
                    revision: format!("{ns}/{rev}"),
                    percent: 100,
                }]
            });
        }
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn route() -> Arc<Route> {
        Arc::new(
            serde_json::from_value(json!({"metadata": {"name": "hello", "namespace": "default"},
                "status": {"url": "http://hello.default.example.com", "traffic": [
                    {"revisionName": "hello-00002", "percent": 90},
                    {"revisionName": "hello-00001", "percent": 10, "tag": "old", "url": "http://old-hello.default.example.com"},
                    {"revisionName": "hello-00003", "percent": 0, "tag": "next", "url": "http://next-hello.default.example.com"}]}}))
            .unwrap(),
        )
    }

    fn revision(name: &str, cc: i64) -> Arc<Revision> {
        Arc::new(
            serde_json::from_value(json!({"metadata": {"name": name, "namespace": "default"},
                "spec": {"containerConcurrency": cc, "containers": [{"image": "x", "ports": [{"containerPort": 9000}]}]}}))
            .unwrap(),
        )
    }

    fn pod(name: &str, rev: &str, ip: &str, ready: bool) -> Arc<Pod> {
        Arc::new(
            serde_json::from_value(json!({"metadata": {"name": name, "namespace": "default", "labels": {labels::REVISION: rev}},
                "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}}))
            .unwrap(),
        )
    }

    #[test]
    fn hosts_split_by_percent_and_tags_reach_their_revision_alone() {
        let t = build(
            &[route()],
            &[revision("hello-00001", 0), revision("hello-00002", 1)],
            &[
                pod("a", "hello-00002", "10.0.0.5", true),
                pod("b", "hello-00002", "10.0.0.6", false),
            ],
            None,
            &[],
        );
        let main = t.shares("Hello.Default.example.com:80", true).unwrap();
        assert_eq!(main.len(), 2, "a 0 % share takes nothing");
        assert_eq!(pick(main, 0).unwrap().revision, "default/hello-00002");
        assert_eq!(pick(main, 89).unwrap().revision, "default/hello-00002");
        assert_eq!(pick(main, 90).unwrap().revision, "default/hello-00001");
        assert_eq!(
            t.shares("hello.default.svc.cluster.local", true).unwrap(),
            main
        );
        assert_eq!(
            t.shares("old-hello.default.example.com", true).unwrap()[0].revision,
            "default/hello-00001"
        );
        assert_eq!(
            t.shares("next-hello.default.example.com", true).unwrap()[0].revision,
            "default/hello-00003"
        );
        assert!(t.shares("other.default.example.com", true).is_none());
        assert!(
            t.shares("hello.default.example.com", false).is_some(),
            "a public route answers clients outside the cluster"
        );
        // A status naming another route's host (forged: statuses are the controllers') is
        // not taken.
        let forged: Arc<Route> = Arc::new(
            serde_json::from_value(json!({"metadata": {"name": "evil", "namespace": "mine"},
                "status": {"url": "http://hello.default.example.com", "traffic": [
                    {"revisionName": "x", "percent": 100, "tag": "t", "url": "http://old-hello.default.example.com"}]}}))
            .unwrap(),
        );
        let t2 = build(&[forged, route()], &[], &[], None, &[]);
        assert_eq!(
            t2.shares("hello.default.example.com", true).unwrap()[0].revision,
            "default/hello-00002"
        );
        assert_eq!(
            t2.shares("old-hello.default.example.com", true).unwrap()[0].revision,
            "default/hello-00001"
        );
        let r = &t.revisions["default/hello-00002"];
        assert_eq!(r.concurrency, 1);
        assert_eq!(
            r.instances,
            [Instance {
                addr: "10.0.0.5:9000".parse().unwrap(),
                pod: "a".into()
            }]
        );
    }

    #[test]
    fn a_cluster_local_route_answers_clients_in_the_cluster_only() {
        let local: Arc<Route> = Arc::new(
            serde_json::from_value(json!({"metadata": {"name": "inner", "namespace": "default",
                "labels": {api::knative::VISIBILITY_LABEL: "cluster-local"}},
                "status": {"url": "http://inner.default.svc.cluster.local", "traffic": [
                    {"revisionName": "inner-00001", "percent": 100},
                    {"revisionName": "inner-00001", "percent": 0, "tag": "t", "url": "http://t-inner.default.svc.cluster.local"}]}}))
            .unwrap(),
        );
        let nodes: Vec<Arc<Node>> = vec![Arc::new(
            serde_json::from_value(json!({"metadata": {"name": "n2"}, "status": {"addresses": [
                {"type": "InternalIP", "address": "10.0.0.2"}, {"type": "ExternalIP", "address": "203.0.113.9"}]}}))
            .unwrap(),
        )];
        let t = build(&[local], &[], &[], None, &nodes);
        assert_eq!(
            t.node_addresses,
            ["10.0.0.2".parse().unwrap()].into(),
            "another node's pods reach this router from their node's address"
        );
        for host in [
            "inner.default.svc.cluster.local",
            "inner.default",
            "t-inner.default.svc.cluster.local",
        ] {
            assert!(t.shares(host, true).is_some(), "{host}");
            assert!(t.shares(host, false).is_none(), "{host}");
        }
    }
}
