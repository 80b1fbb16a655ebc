//! The root CA publisher: every active namespace has a ConfigMap `kube-root-ca.crt` holding
//! the cluster CA (`ca.crt`), as kube-controller-manager's root-ca-cert-publisher makes it.
//! Pods' ServiceAccount volumes project it, so clients inside pods trust the API server.
//!
//! A pass every few seconds over the namespaces and those ConfigMaps, like the default
//! ServiceAccounts of [`crate::gc`]: a missing one is created, a changed one put back.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;

pub const NAME: &str = "kube-root-ca.crt";

const PASS_EVERY: Duration = Duration::from_secs(2);

/// One pass: the namespaces whose ConfigMap is missing or says another CA get it.
pub async fn pass(client: &kube::Client, ca_pem: &str) -> Result<(), kube::Error> {
    let have: BTreeMap<String, Option<String>> = Api::<ConfigMap>::all(client.clone())
        .list(&ListParams::default().fields(&format!("metadata.name={NAME}")))
        .await?
        .items
        .into_iter()
        .filter_map(|cm| {
            let ca = cm.data.as_ref().and_then(|d| d.get("ca.crt").cloned());
            Some((cm.namespace()?, ca))
        })
        .collect();
    for ns in Api::<Namespace>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items
    {
        let name = ns.name_any();
        if ns.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let api = Api::<ConfigMap>::namespaced(client.clone(), &name);
        let wanted = json!({"apiVersion": "v1", "kind": "ConfigMap",
                            "metadata": {"name": NAME, "namespace": name},
                            "data": {"ca.crt": ca_pem}});
        let done = match have.get(&name) {
            Some(Some(ca)) if ca == ca_pem => continue,
            Some(_) => api
                .patch(NAME, &PatchParams::default(), &Patch::Merge(&wanted))
                .await
                .map(|_| ()),
            None => {
                let cm: ConfigMap = serde_json::from_value(wanted).expect("a valid ConfigMap");
                api.create(&PostParams::default(), &cm).await.map(|_| ())
            }
        };
        match done {
            Ok(()) => {}
            // Made meanwhile, or its namespace went.
            Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 || e.code == 403 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Runs passes until dropped.
pub async fn run(client: kube::Client, ca_pem: String) {
    loop {
        if let Err(e) = pass(&client, &ca_pem).await {
            tracing::warn!("root CA publisher: {e}");
        }
        tokio::time::sleep(PASS_EVERY).await;
    }
}
