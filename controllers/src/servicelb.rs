//! The service load balancer. A LoadBalancer Service gets, in `status.loadBalancer.ingress`:
//!
//! - without an address pool (as k3s's klipper-lb): the addresses of the Ready nodes, since
//!   every node answers the Service's port on its own addresses (`network::services`);
//! - with `drover server --service-lb-pool` (as MetalLB's layer-2 mode, without its leader
//!   election): one address of the pool, kept for the Service's life, which every node takes
//!   as a local address and answers (`node::network`).
//!
//! Services that are not (or no longer) of type LoadBalancer have no ingress. Addresses are
//! given under a lock, counting those given but not yet in the cache, so two Services never
//! get the same one.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Service};
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::Store;
use kube::{Api, ResourceExt};
use serde_json::json;

use crate::error::{failed, Error};

pub struct Context {
    pub client: kube::Client,
    pub nodes: Store<Node>,
    pub services: Store<Service>,
    pub pool: Option<Pool>,
    /// Pool addresses given by this controller, by Service (`ns/name`), until the cache shows them.
    pub given: std::sync::Mutex<std::collections::BTreeMap<String, std::net::Ipv4Addr>>,
}

/// A range of addresses for LoadBalancer Services: `FIRST-LAST` or a CIDR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pool {
    pub first: std::net::Ipv4Addr,
    pub last: std::net::Ipv4Addr,
}

impl std::str::FromStr for Pool {
    type Err = String;
    fn from_str(s: &str) -> Result<Pool, String> {
        let bad = || {
            format!(
                "{s:?} is not an address range (FIRST-LAST, or a CIDR such as 192.168.1.240/28)"
            )
        };
        let (first, last) = if let Some((a, b)) = s.split_once('-') {
            (
                a.trim().parse().map_err(|_| bad())?,
                b.trim().parse().map_err(|_| bad())?,
            )
        } else {
            let net: ipnet::Ipv4Net = s.trim().parse().map_err(|_| bad())?;
            (net.network(), net.broadcast())
        };
        if u32::from(first) > u32::from(last) {
            return Err(bad());
        }
        Ok(Pool { first, last })
    }
}

impl Pool {
    fn contains(&self, ip: std::net::Ipv4Addr) -> bool {
        (u32::from(self.first)..=u32::from(self.last)).contains(&u32::from(ip))
    }

    /// `current` if it is in the pool and free, else the first free address.
    pub fn pick(
        &self,
        current: Option<std::net::Ipv4Addr>,
        taken: &std::collections::BTreeSet<std::net::Ipv4Addr>,
    ) -> Option<std::net::Ipv4Addr> {
        if let Some(ip) = current.filter(|ip| self.contains(*ip) && !taken.contains(ip)) {
            return Some(ip);
        }
        (u32::from(self.first)..=u32::from(self.last))
            .map(std::net::Ipv4Addr::from)
            .find(|ip| !taken.contains(ip))
    }
}

/// The ingress addresses `svc` should show: the InternalIPs of Ready, schedulable nodes.
pub fn plan(svc: &Service, nodes: &[Arc<Node>]) -> Vec<String> {
    if svc.spec.as_ref().and_then(|s| s.type_.as_deref()) != Some("LoadBalancer") {
        return Vec::new();
    }
    let mut ips: Vec<String> = nodes
        .iter()
        .filter(|n| {
            n.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .filter_map(|n| {
            n.status
                .as_ref()?
                .addresses
                .iter()
                .flatten()
                .find(|a| a.type_ == "InternalIP")
                .map(|a| a.address.clone())
        })
        .collect();
    ips.sort();
    ips.dedup();
    ips
}

fn current(svc: &Service) -> Vec<String> {
    svc.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .map(|i| i.iter().filter_map(|x| x.ip.clone()).collect())
        .unwrap_or_default()
}

fn key(svc: &Service) -> String {
    format!("{}/{}", svc.namespace().unwrap_or_default(), svc.name_any())
}

fn is_load_balancer(svc: &Service) -> bool {
    svc.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("LoadBalancer")
}

/// The pool address `svc` should have, reserving it among `given`.
fn from_pool(svc: &Service, pool: &Pool, ctx: &Context) -> Option<String> {
    let mut given = ctx.given.lock().unwrap_or_else(|p| p.into_inner());
    let all = ctx.services.state();
    let me = key(svc);
    // What the cache shows wins over our memory; forget Services that are gone.
    given.retain(|k, _| {
        all.iter()
            .any(|s| key(s) == *k && is_load_balancer(s) && current(s).is_empty())
    });
    let mut taken: std::collections::BTreeSet<std::net::Ipv4Addr> = all
        .iter()
        .filter(|s| key(s) != me && is_load_balancer(s))
        .flat_map(|s| current(s))
        .filter_map(|ip| ip.parse().ok())
        .collect();
    taken.extend(given.iter().filter(|(k, _)| **k != me).map(|(_, ip)| *ip));
    let mine = current(svc)
        .first()
        .and_then(|ip| ip.parse().ok())
        .or_else(|| given.get(&me).copied());
    let ip = pool.pick(mine, &taken)?;
    given.insert(me, ip);
    Some(ip.to_string())
}

pub async fn reconcile(svc: Arc<Service>, ctx: Arc<Context>) -> Result<Action, Error> {
    let want = match (&ctx.pool, is_load_balancer(&svc)) {
        (Some(pool), true) => match from_pool(&svc, pool, &ctx) {
            Some(ip) => vec![ip],
            None => {
                tracing::warn!(service = %key(&svc), "the load balancer pool has no address left");
                // Looked at again soon: a deleted Service may free an address meanwhile.
                return Ok(Action::requeue(Duration::from_secs(3)));
            }
        },
        _ => plan(&svc, &ctx.nodes.state()),
    };
    if want == current(&svc) {
        return Ok(Action::await_change());
    }
    let ns = svc.namespace().unwrap_or_default();
    let name = svc.name_any();
    let ingress: Vec<serde_json::Value> = want
        .iter()
        .map(|ip| json!({"ip": ip, "ipMode": "VIP"}))
        .collect();
    let patch = json!({"status": {"loadBalancer": {"ingress": ingress}}});
    Api::<Service>::namespaced(ctx.client.clone(), &ns)
        .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(failed(format!(
            "service {ns}/{name}: setting its load balancer ingress"
        )))?;
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_balancers_get_the_ready_nodes_addresses() {
        let node = |ip: &str, ready: &str| {
            Arc::new(
                serde_json::from_value::<Node>(json!({
                    "metadata": {"name": ip},
                    "status": {"addresses": [{"type": "InternalIP", "address": ip}],
                               "conditions": [{"type": "Ready", "status": ready}]}
                }))
                .unwrap(),
            )
        };
        let nodes = vec![
            node("10.0.0.2", "True"),
            node("10.0.0.1", "True"),
            node("10.0.0.3", "Unknown"),
        ];
        let lb: Service = serde_json::from_value(
            json!({"metadata": {"name": "s"}, "spec": {"type": "LoadBalancer"}}),
        )
        .unwrap();
        assert_eq!(plan(&lb, &nodes), ["10.0.0.1", "10.0.0.2"]);
        let plain: Service = serde_json::from_value(
            json!({"metadata": {"name": "s"}, "spec": {"type": "ClusterIP"}}),
        )
        .unwrap();
        assert!(plan(&plain, &nodes).is_empty());
    }
}
