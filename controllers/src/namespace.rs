//! The namespace controller: a deleted namespace stays Terminating while this empties it.
//!
//! Each pass, for every namespace being deleted that still has the `kubernetes` finalizer
//! (spec.finalizers): every object of every namespaced kind the API serves ([`crate::kinds`])
//! is deleted as a client would delete it — pods gracefully, by their nodes; objects with
//! finalizers kept until those are removed; dependents collected. The namespace's conditions
//! say what is left and which finalizers hold it, as Kubernetes reports them (`kubectl
//! describe namespace`). Once nothing is left, the finalizer goes through `/finalize` and the
//! namespace is deleted for good.
//!
//! [`conditions`] decides from a census of what is left alone.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::ResourceExt;
use serde_json::{json, Value};

use crate::kinds::Kind;

pub const PASS_EVERY: Duration = Duration::from_secs(1);
const FINALIZER: &str = "kubernetes";

/// What is left in a namespace being emptied.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Census {
    /// Resource (plural, with its group) → objects left.
    pub remaining: BTreeMap<String, usize>,
    /// Finalizer → objects it holds.
    pub finalizers: BTreeMap<String, usize>,
}

impl Census {
    pub fn add(&mut self, resource: &str, finalizers: &[String]) {
        *self.remaining.entry(resource.to_string()).or_default() += 1;
        for f in finalizers {
            *self.finalizers.entry(f.clone()).or_default() += 1;
        }
    }

    pub fn is_empty(&self) -> bool {
        self.remaining.is_empty()
    }
}

/// The namespace's deletion conditions for `census`, as kube-controller-manager words them.
pub fn conditions(census: &Census, now: &str) -> Vec<Value> {
    let condition = |type_: &str, holds: bool, reason: &str, message: String| {
        json!({"type": type_, "status": if holds { "True" } else { "False" },
               "lastTransitionTime": now, "reason": reason, "message": message})
    };
    let list = |counts: &BTreeMap<String, usize>| {
        counts
            .iter()
            .map(|(what, n)| format!("{what} has {n} resource instances"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let remaining = !census.remaining.is_empty();
    let held = !census.finalizers.is_empty();
    vec![
        condition(
            "NamespaceDeletionDiscoveryFailure",
            false,
            "ResourcesDiscovered",
            "All resources successfully discovered".into(),
        ),
        condition(
            "NamespaceDeletionContentFailure",
            false,
            "ContentDeleted",
            "All content successfully deleted, may be waiting on finalization".into(),
        ),
        if remaining {
            condition(
                "NamespaceContentRemaining",
                true,
                "SomeResourcesRemain",
                format!("Some resources are remaining: {}", list(&census.remaining)),
            )
        } else {
            condition(
                "NamespaceContentRemaining",
                false,
                "ContentRemoved",
                "All content successfully removed".into(),
            )
        },
        if held {
            condition(
                "NamespaceFinalizersRemaining",
                true,
                "SomeFinalizersRemain",
                format!(
                    "Some content in the namespace has finalizers remaining: {}",
                    list(&census.finalizers).replace(" has ", " in ")
                ),
            )
        } else {
            condition(
                "NamespaceFinalizersRemaining",
                false,
                "ContentHasNoFinalizers",
                "All content-preserving finalizers finished".into(),
            )
        },
    ]
}

/// The same conditions, ignoring when they were written (to write only a change).
fn same(a: &[Value], b: &[Value]) -> bool {
    let strip = |v: &[Value]| -> Vec<Value> {
        v.iter()
            .map(|c| {
                let mut c = c.clone();
                c.as_object_mut().map(|m| m.remove("lastTransitionTime"));
                c
            })
            .collect()
    };
    strip(a) == strip(b)
}

/// Deletes what is left in `ns` and counts what is still there.
async fn empty(client: &kube::Client, kinds: &[Kind], ns: &str) -> Result<Census, kube::Error> {
    let mut census = Census::default();
    for kind in kinds.iter().filter(|k| k.namespaced) {
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &kind.resource);
        let items = api.list(&ListParams::default()).await?.items;
        let name = match kind.resource.group.as_str() {
            "" => kind.resource.plural.clone(),
            g => format!("{}.{g}", kind.resource.plural),
        };
        for o in &items {
            if o.metadata.deletion_timestamp.is_none() {
                match api.delete(&o.name_any(), &DeleteParams::background()).await {
                    Ok(_) => {}
                    // Gone already, or changed meanwhile (the next pass sees it again).
                    Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
                    Err(e) => return Err(e),
                }
            }
            census.add(&name, o.finalizers());
        }
    }
    Ok(census)
}

/// One pass over the namespaces being deleted.
pub async fn pass(client: &kube::Client, kinds: &[Kind]) -> Result<(), kube::Error> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    for ns in namespaces.list(&ListParams::default()).await?.items {
        let finalizers = ns
            .spec
            .as_ref()
            .and_then(|s| s.finalizers.clone())
            .unwrap_or_default();
        if ns.metadata.deletion_timestamp.is_none() || !finalizers.iter().any(|f| f == FINALIZER) {
            continue;
        }
        let name = ns.name_any();
        let census = empty(client, kinds, &name).await?;
        if census.is_empty() {
            tracing::info!("namespace {name}: empty, finalized");
            let rest: Vec<&String> = finalizers.iter().filter(|f| *f != FINALIZER).collect();
            let finalized = json!({"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": name, "resourceVersion": ns.resource_version()},
                "spec": {"finalizers": rest}});
            namespaces
                .replace_subresource(
                    "finalize",
                    &name,
                    &PostParams::default(),
                    serde_json::to_vec(&finalized).expect("serialises"),
                )
                .await?;
            match namespaces.delete(&name, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
            continue;
        }
        let now = k8s_openapi::chrono::Utc::now()
            .to_rfc3339_opts(k8s_openapi::chrono::SecondsFormat::Secs, true);
        let wanted = conditions(&census, &now);
        let have: Vec<Value> = ns
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .map(|c| c.iter().map(|c| json!(c)).collect())
            .unwrap_or_default();
        if !same(&have, &wanted) {
            let patch = json!({"status": {"phase": "Terminating", "conditions": wanted}});
            namespaces
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
        }
    }
    Ok(())
}

/// Runs passes until dropped.
pub async fn run(client: kube::Client) {
    let mut kinds = crate::kinds::Cached::default();
    loop {
        let result = match kinds.get(&client).await {
            Ok(kinds) => pass(&client, kinds).await,
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            tracing::warn!("namespace controller: {e}");
        }
        tokio::time::sleep(PASS_EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_name_what_is_left_and_what_holds_it() {
        let mut census = Census::default();
        census.add("configmaps", &["example.com/hold".to_string()]);
        census.add("configmaps", &[]);
        let c = conditions(&census, "now");
        let find = |t: &str| c.iter().find(|c| c["type"] == t).unwrap().clone();
        assert_eq!(find("NamespaceContentRemaining")["status"], "True");
        assert_eq!(
            find("NamespaceContentRemaining")["message"],
            "Some resources are remaining: configmaps has 2 resource instances"
        );
        assert_eq!(
            find("NamespaceFinalizersRemaining")["message"],
            "Some content in the namespace has finalizers remaining: example.com/hold in 1 resource instances"
        );
        let empty = conditions(&Census::default(), "later");
        assert_eq!(empty[2]["status"], "False");
        assert!(!same(&c, &empty));
        assert!(same(&c, &conditions(&census, "later")));
    }
}
