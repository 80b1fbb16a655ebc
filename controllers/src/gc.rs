//! The garbage collector over ownerReferences, and the `default` ServiceAccount of every
//! namespace.
//!
//! Each pass lists every kind the API serves ([`crate::kinds`], custom kinds included; not
//! events) through the API's watch cache and:
//! - deletes objects whose owners are all gone (background deletion: `kubectl delete
//!   deployment` takes its ReplicaSets, and they their pods), after checking the owner is
//!   really gone with a live read, so a cache that lags a new owner never costs a dependent;
//! - for an owner being deleted with `foregroundDeletion`, deletes its dependents first and
//!   then removes the finalizer;
//! - for an owner being deleted with `orphan`, removes itself from its dependents'
//!   ownerReferences and then removes the finalizer.
//!
//! [`plan`] decides from the listed objects alone. Passes run every [`PASS_EVERY`]; a list
//! per kind and pass is cheap against the watch cache at the scale of one cluster (an
//! incremental graph, as kube-controller-manager keeps, would avoid the rescans).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams,
};
use kube::{Api, ResourceExt};
use serde_json::json;

pub const PASS_EVERY: Duration = Duration::from_secs(2);

/// The kinds the collector looks at: every kind the API serves (as discovery says), but
/// events, which nothing owns and of which there are many.
fn collected(kinds: &[crate::kinds::Kind]) -> Vec<ApiResource> {
    kinds
        .iter()
        .filter(|k| k.resource.plural != "events")
        .map(|k| k.resource.clone())
        .collect()
}

/// One object as the collector sees it.
#[derive(Clone, Debug)]
pub struct Node {
    pub kind: usize,
    pub namespace: Option<String>,
    pub name: String,
    pub uid: String,
    pub owners: Vec<(String, String, String)>, // uid, apiVersion, kind... name in owner_names
    pub owner_names: Vec<String>,
    pub deleting: bool,
    pub finalizers: Vec<String>,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Objects whose owners look gone (to confirm, then delete): index into the nodes.
    pub orphaned: Vec<usize>,
    /// Dependents to delete for owners deleted in the foreground.
    pub delete_for_foreground: Vec<usize>,
    /// Owners whose foregroundDeletion finalizer can go (no dependents left).
    pub finish_foreground: Vec<usize>,
    /// (dependent, owner uid) references to remove for owners deleted with orphan.
    pub orphan_refs: Vec<(usize, String)>,
    /// Owners whose orphan finalizer can go.
    pub finish_orphan: Vec<usize>,
}

pub fn plan(nodes: &[Node]) -> Plan {
    let uids: BTreeSet<&str> = nodes.iter().map(|n| n.uid.as_str()).collect();
    let mut dependents: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, n) in nodes.iter().enumerate() {
        for (uid, _, _) in &n.owners {
            dependents.entry(uid.as_str()).or_default().push(i);
        }
    }
    let mut out = Plan::default();
    for (i, n) in nodes.iter().enumerate() {
        if !n.owners.is_empty()
            && !n.deleting
            && n.owners
                .iter()
                .all(|(uid, _, _)| !uids.contains(uid.as_str()))
        {
            out.orphaned.push(i);
        }
        if !n.deleting {
            continue;
        }
        let deps = dependents.get(n.uid.as_str()).cloned().unwrap_or_default();
        if n.finalizers.iter().any(|f| f == "orphan") {
            if deps.is_empty() {
                out.finish_orphan.push(i);
            } else {
                out.orphan_refs
                    .extend(deps.iter().map(|d| (*d, n.uid.clone())));
            }
        } else if n.finalizers.iter().any(|f| f == "foregroundDeletion") {
            if deps.is_empty() {
                out.finish_foreground.push(i);
            } else {
                out.delete_for_foreground
                    .extend(deps.iter().filter(|d| !nodes[**d].deleting));
            }
        }
    }
    out
}

fn api(client: &kube::Client, ar: &ApiResource, ns: Option<&str>) -> Api<DynamicObject> {
    match ns {
        Some(ns) => Api::namespaced_with(client.clone(), ns, ar),
        None => Api::all_with(client.clone(), ar),
    }
}

/// Lists every object of the kinds the collector knows.
async fn snapshot(client: &kube::Client, kinds: &[ApiResource]) -> Result<Vec<Node>, kube::Error> {
    let mut nodes = Vec::new();
    for (k, ar) in kinds.iter().enumerate() {
        for o in api(client, ar, None)
            .list(&ListParams::default())
            .await?
            .items
        {
            let refs = o.owner_references().to_vec();
            nodes.push(Node {
                kind: k,
                namespace: o.namespace(),
                name: o.name_any(),
                uid: o.uid().unwrap_or_default(),
                owners: refs
                    .iter()
                    .map(|r| (r.uid.clone(), r.api_version.clone(), r.kind.clone()))
                    .collect(),
                owner_names: refs.iter().map(|r| r.name.clone()).collect(),
                deleting: o.metadata.deletion_timestamp.is_some(),
                finalizers: o.finalizers().to_vec(),
            });
        }
    }
    Ok(nodes)
}

/// Whether the owner `(uid, apiVersion, kind)` named `name` is really gone (a live read).
async fn owner_gone(
    client: &kube::Client,
    kinds: &[ApiResource],
    ns: Option<&str>,
    owner: &(String, String, String),
    name: &str,
) -> bool {
    let Some(ar) = kinds
        .iter()
        .find(|ar| ar.api_version == owner.1 && ar.kind == owner.2)
    else {
        return false; // an owner kind the collector does not know: leave the dependent be
    };
    match api(client, ar, ns).get_opt(name).await {
        Ok(None) => true,
        Ok(Some(o)) => o.uid().as_deref() != Some(owner.0.as_str()),
        Err(_) => false,
    }
}

async fn remove_finalizer(
    client: &kube::Client,
    kinds: &[ApiResource],
    n: &Node,
    finalizer: &str,
) -> Result<(), kube::Error> {
    let rest: Vec<&String> = n.finalizers.iter().filter(|f| *f != finalizer).collect();
    let patch = json!({"metadata": {"finalizers": rest}});
    api(client, &kinds[n.kind], n.namespace.as_deref())
        .patch(&n.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map(|_| ())
}

/// One pass of the collector.
pub async fn pass(client: &kube::Client, kinds: &[ApiResource]) -> Result<(), kube::Error> {
    let nodes = snapshot(client, kinds).await?;
    let plan = plan(&nodes);
    for i in plan.orphaned {
        let n = &nodes[i];
        let mut gone = true;
        for (owner, name) in n.owners.iter().zip(&n.owner_names) {
            gone &= owner_gone(client, kinds, n.namespace.as_deref(), owner, name).await;
        }
        if gone {
            tracing::info!(
                "gc: deleting {}/{} (its owners are gone)",
                kinds[n.kind].kind,
                n.name
            );
            let _ = api(client, &kinds[n.kind], n.namespace.as_deref())
                .delete(&n.name, &DeleteParams::background())
                .await;
        }
    }
    for i in plan.delete_for_foreground {
        let n = &nodes[i];
        let _ = api(client, &kinds[n.kind], n.namespace.as_deref())
            .delete(&n.name, &DeleteParams::foreground())
            .await;
    }
    for i in plan.finish_foreground {
        remove_finalizer(client, kinds, &nodes[i], "foregroundDeletion").await?;
    }
    for (i, owner_uid) in plan.orphan_refs {
        let n = &nodes[i];
        let o = api(client, &kinds[n.kind], n.namespace.as_deref())
            .get(&n.name)
            .await?;
        let kept: Vec<_> = o
            .owner_references()
            .iter()
            .filter(|r| r.uid != owner_uid)
            .cloned()
            .collect();
        // The last reference goes with the field (Kubernetes omits an empty list).
        let refs = if kept.is_empty() {
            json!(null)
        } else {
            json!(kept)
        };
        let patch = json!({"metadata": {"ownerReferences": refs}});
        api(client, &kinds[n.kind], n.namespace.as_deref())
            .patch(&n.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
    }
    for i in plan.finish_orphan {
        remove_finalizer(client, kinds, &nodes[i], "orphan").await?;
    }
    default_service_accounts(client).await
}

/// Every active namespace has a `default` ServiceAccount, as Kubernetes makes it.
async fn default_service_accounts(client: &kube::Client) -> Result<(), kube::Error> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let accounts: Api<ServiceAccount> = Api::all(client.clone());
    let have: BTreeSet<String> = accounts
        .list(&ListParams::default().fields("metadata.name=default"))
        .await?
        .items
        .iter()
        .filter_map(|sa| sa.namespace())
        .collect();
    for ns in namespaces.list(&ListParams::default()).await?.items {
        let name = ns.name_any();
        if have.contains(&name) || ns.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let sa: ServiceAccount =
            serde_json::from_value(json!({"metadata": {"name": "default", "namespace": name}}))
                .expect("a valid ServiceAccount");
        match Api::<ServiceAccount>::namespaced(client.clone(), &name)
            .create(&PostParams::default(), &sa)
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 || e.code == 403 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Runs passes until dropped.
pub async fn run(client: kube::Client) {
    let mut kinds = crate::kinds::Cached::default();
    loop {
        let result = match kinds.get(&client).await {
            Ok(kinds) => pass(&client, &collected(kinds)).await,
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            tracing::warn!("gc: {e}");
        }
        tokio::time::sleep(PASS_EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(uid: &str, owner: Option<&str>, deleting: bool, finalizers: &[&str]) -> Node {
        Node {
            kind: 0,
            namespace: Some("default".into()),
            name: uid.into(),
            uid: uid.into(),
            owners: owner
                .map(|o| {
                    vec![(
                        o.to_string(),
                        "apps/v1".to_string(),
                        "ReplicaSet".to_string(),
                    )]
                })
                .unwrap_or_default(),
            owner_names: owner.map(|o| vec![o.to_string()]).unwrap_or_default(),
            deleting,
            finalizers: finalizers.iter().map(|f| f.to_string()).collect(),
        }
    }

    #[test]
    fn dependents_of_gone_owners_are_collected() {
        let nodes = vec![
            node("rs", Some("deploy"), false, &[]),
            node("pod", Some("rs"), false, &[]),
            node("free", None, false, &[]),
        ];
        assert_eq!(
            plan(&nodes).orphaned,
            vec![0],
            "the deployment is gone; the pod's owner is not"
        );
    }

    #[test]
    fn foreground_deletes_dependents_first_and_orphan_lets_them_go() {
        let nodes = vec![
            node("rs", None, true, &["foregroundDeletion"]),
            node("pod", Some("rs"), false, &[]),
        ];
        let p = plan(&nodes);
        assert_eq!(p.delete_for_foreground, vec![1]);
        assert!(p.finish_foreground.is_empty());
        let p = plan(&nodes[..1]);
        assert_eq!(p.finish_foreground, vec![0]);
        let nodes = vec![
            node("rs", None, true, &["orphan"]),
            node("pod", Some("rs"), false, &[]),
        ];
        let p = plan(&nodes);
        assert_eq!(p.orphan_refs, vec![(1, "rs".to_string())]);
        assert_eq!(plan(&nodes[..1]).finish_orphan, vec![0]);
    }
}
