//! The service load balancer, as k3s's: a LoadBalancer Service is answered on every node's
//! address at its port (the nodes' nftables rules, `network::services`), so its
//! `status.loadBalancer.ingress` lists the addresses of the Ready nodes. Services that are not
//! (or no longer) of type LoadBalancer have no ingress.

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

pub async fn reconcile(svc: Arc<Service>, ctx: Arc<Context>) -> Result<Action, Error> {
    let want = plan(&svc, &ctx.nodes.state());
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

pub fn error_policy(_: Arc<Service>, error: &Error, _: Arc<Context>) -> Action {
    tracing::warn!("service load balancer: {error}");
    Action::requeue(Duration::from_secs(2))
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
