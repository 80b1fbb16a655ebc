//! Node IPAM: gives every Node a pod range (`spec.podCIDR`) cut from the cluster CIDR, as
//! kube-controller-manager's range allocator does. A node keeps its range for life (Kubernetes
//! does not let it change); a deleted node's range is free again.
//!
//! Nodes are reconciled one at a time under a lock, and ranges handed out but not yet seen in
//! the cache count as taken, so two new nodes never get the same range.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::Store;
use kube::{Api, ResourceExt};
use serde_json::json;

use crate::error::{failed, Error};

#[derive(Clone, Copy, Debug)]
pub struct Settings {
    pub cluster_cidr: Ipv4Net,
    /// The size of each node's range, in prefix bits (Kubernetes: /24).
    pub node_prefix: u8,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            cluster_cidr: api::cidr::DEFAULT_CLUSTER_CIDR.parse().expect("valid CIDR"),
            node_prefix: api::cidr::DEFAULT_NODE_PREFIX,
        }
    }
}

pub struct Context {
    pub client: kube::Client,
    pub nodes: Store<Node>,
    pub settings: Settings,
    /// Ranges handed out by this controller, by node name, until the cache shows them.
    pub given: Mutex<BTreeMap<String, Ipv4Net>>,
}

fn range_of(node: &Node) -> Option<Ipv4Net> {
    node.spec.as_ref()?.pod_cidr.as_deref()?.parse().ok()
}

/// The range a node without one should get, or None if it has one (or none is left).
pub fn plan(
    node: &Node,
    all: &[Arc<Node>],
    given: &BTreeSet<Ipv4Net>,
    settings: &Settings,
) -> Option<Ipv4Net> {
    if range_of(node).is_some() {
        return None;
    }
    let mut taken: BTreeSet<Ipv4Net> = all.iter().filter_map(|n| range_of(n)).collect();
    taken.extend(given.iter().copied());
    api::cidr::next_node_cidr(settings.cluster_cidr, settings.node_prefix, &taken)
}

/// What the node named `name` needs, from the cache as it is now (`all`) and the ranges handed
/// out but not yet seen (`given`, updated): the range to give it, if any.
///
/// The node is looked up in `all` rather than taken from the queued reconcile: a copy queued
/// before the node got its range would get it a second one, its own range counting as
/// another's.
pub fn choose(
    name: &str,
    all: &[Arc<Node>],
    given: &mut BTreeMap<String, Ipv4Net>,
    settings: &Settings,
) -> Need {
    let Some(node) = all.iter().find(|n| n.name_any() == name) else {
        return Need::Nothing;
    };
    // Forget what the cache now shows, and ranges of nodes that are gone.
    given.retain(|n, _| {
        all.iter()
            .any(|o| o.name_any() == *n && range_of(o).is_none())
    });
    if let Some(mine) = given.get(name) {
        return Need::Range(*mine);
    }
    let taken: BTreeSet<Ipv4Net> = given.values().copied().collect();
    match plan(node, all, &taken, settings) {
        Some(c) => {
            given.insert(name.to_string(), c);
            Need::Range(c)
        }
        None if range_of(node).is_none() => Need::NoneLeft,
        None => Need::Nothing,
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Need {
    /// The node has its range, or is gone.
    Nothing,
    /// The node gets this range.
    Range(Ipv4Net),
    /// The node has none and the cluster CIDR has none left.
    NoneLeft,
}

pub async fn reconcile(queued: Arc<Node>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _ = ctx.nodes.wait_until_ready().await;
    let name = queued.name_any();
    let need = {
        let mut given = ctx.given.lock().unwrap_or_else(|p| p.into_inner());
        choose(&name, &ctx.nodes.state(), &mut given, &ctx.settings)
    };
    let cidr = match need {
        Need::Nothing => return Ok(Action::await_change()),
        Need::NoneLeft => {
            tracing::warn!(node = %name, cidr = %ctx.settings.cluster_cidr, "no pod range left for the node");
            return Ok(Action::requeue(Duration::from_secs(30)));
        }
        Need::Range(c) => c,
    };
    let patch = json!({"spec": {"podCIDR": cidr.to_string(), "podCIDRs": [cidr.to_string()]}});
    Api::<Node>::all(ctx.client.clone())
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(failed(format!("giving node {name} pod range {cidr}")))?;
    tracing::info!(node = %name, %cidr, "pod range assigned");
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, cidr: Option<&str>) -> Arc<Node> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name},
                "spec": {"podCIDR": cidr},
            }))
            .unwrap(),
        )
    }

    #[test]
    fn a_new_node_gets_the_first_free_range_and_a_ranged_node_keeps_its_own() {
        let settings = Settings::default();
        let all = vec![
            node("a", Some("10.42.0.0/24")),
            node("b", None),
            node("c", Some("10.42.2.0/24")),
        ];
        assert_eq!(plan(&all[0], &all, &BTreeSet::new(), &settings), None);
        assert_eq!(
            plan(&all[1], &all, &BTreeSet::new(), &settings)
                .unwrap()
                .to_string(),
            "10.42.1.0/24"
        );
        // A range just given to another node (not yet in the cache) is taken too.
        let given = BTreeSet::from(["10.42.1.0/24".parse().unwrap()]);
        assert_eq!(
            plan(&all[1], &all, &given, &settings).unwrap().to_string(),
            "10.42.3.0/24"
        );
    }

    #[test]
    fn a_node_queued_before_it_got_its_range_gets_no_second_one() {
        let settings = Settings::default();
        let mut given = BTreeMap::new();
        // Queued when the node was new; the cache shows it with its range by the time it runs.
        let now = vec![node("a", Some("10.42.0.0/24"))];
        assert_eq!(choose("a", &now, &mut given, &settings), Need::Nothing);
        // A new node gets a range once, however often it is reconciled before the cache
        // shows it.
        let new = vec![node("a", Some("10.42.0.0/24")), node("b", None)];
        let first = choose("b", &new, &mut given, &settings);
        assert_eq!(first, Need::Range("10.42.1.0/24".parse().unwrap()));
        assert_eq!(choose("b", &new, &mut given, &settings), first);
        assert_eq!(choose("gone", &new, &mut given, &settings), Need::Nothing);
    }
}
