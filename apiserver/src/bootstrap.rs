//! What a cluster has from its start, made by `drover server` before it serves: the cluster's
//! CA and admin token (shared by all members through the store), the system namespaces, the
//! `kubernetes` and `kube-dns` Services with their reservations, the API server's Endpoints and
//! the default RBAC roles and bindings. Written straight to the store, not through the request
//! path: each is created only where it is missing.

use api::object;
use raft_store::{
    Compare, CompareOp, Consistency, KeySpan, KeyValue, Op, RangeRequest, StoreError, StoreNode,
    Txn,
};
use serde_json::{json, Value};

use crate::admission;
use crate::encryption::SecretBox;
use crate::stored::{stamp_new, to_bytes};

/// The namespaces that exist from the start, as in Kubernetes.
pub const SYSTEM_NAMESPACES: &[&str] =
    &["default", "kube-system", "kube-public", "kube-node-lease"];

/// The cluster's CA, admin token and join secret, shared by all members through the store: the
/// member that made the cluster proposes them (create-if-absent, so a restart mid-way keeps
/// what was stored), the others read them once they have joined. They are sealed with the
/// cluster's encryption key, like Secrets.
pub async fn cluster_secrets(
    store: &StoreNode,
    sealer: &SecretBox,
    proposed: Option<&crate::pki::ClusterSecrets>,
) -> Result<crate::pki::ClusterSecrets, StoreError> {
    const KEY: &str = "/drover/pki/cluster";
    let decode = |kv: &KeyValue| -> Result<crate::pki::ClusterSecrets, StoreError> {
        let plain = sealer
            .open(&kv.key, &kv.value)
            .map_err(StoreError::Internal)?;
        let v: Value = serde_json::from_slice(&plain)
            .map_err(|e| StoreError::Internal(format!("{KEY}: {e}")))?;
        let field = |f: &str| {
            v[f].as_str().map(String::from).ok_or_else(|| {
                StoreError::Internal(format!(
                    "{KEY} has no {f}: the cluster was made by an older Drover"
                ))
            })
        };
        Ok(crate::pki::ClusterSecrets {
            ca_pem: field("ca")?,
            ca_key_pem: field("caKey")?,
            admin_token: field("token")?,
            join_secret: field("joinSecret")?,
        })
    };
    let Some(fresh) = proposed else {
        let read = store
            .range(
                RangeRequest::new(KeySpan::key(KEY.as_bytes())),
                Consistency::Linearizable,
                false,
            )
            .await?;
        return match read.kvs.first() {
            Some(kv) => decode(kv),
            // Not yet visible here (a member that has just joined): the caller retries.
            None => Err(StoreError::NoLeader),
        };
    };
    let value = json!({
        "ca": fresh.ca_pem, "caKey": fresh.ca_key_pem, "token": fresh.admin_token,
        "joinSecret": fresh.join_secret,
    });
    let txn = Txn::put(
        KEY.as_bytes(),
        serde_json::to_vec(&value).expect("serialises"),
    )
    .when(Compare::exists(KEY.as_bytes(), false))
    .or_else(Op::get(KEY.as_bytes()));
    let resp = store.txn(sealer.seal_txn(txn), false).await?;
    if resp.succeeded {
        return Ok(fresh.clone());
    }
    match resp.range(0).and_then(|r| r.kvs.first()) {
        Some(kv) => decode(kv),
        None => Err(StoreError::Internal(format!(
            "{KEY} vanished while it was read"
        ))),
    }
}

/// Creates what a cluster has from the start, where it is missing: the system namespaces, the
/// `kubernetes` Service (10.96.0.1:443) with Endpoints and an EndpointSlice pointing at this
/// API server (`api_address`, the address pods reach it at), and the default RBAC roles.
pub async fn bootstrap(store: &StoreNode, api_address: &str) -> Result<(), StoreError> {
    let create = |key: String, obj: Value, extra: Option<String>| async move {
        let mut txn =
            Txn::put(key.as_bytes(), to_bytes(&obj)).when(Compare::exists(key.as_bytes(), false));
        let owner = format!(
            "{}/{}",
            object::namespace(&obj).unwrap_or_default(),
            object::name(&obj).unwrap_or_default()
        );
        if let Some(reservation) = extra {
            txn = txn.and_then(Op::put(reservation.as_bytes(), owner.into_bytes()));
        }
        store.txn(txn, false).await.map(|_| ())
    };
    let find = |name| api::registry::find("", "v1", name).expect("registered");
    for name in SYSTEM_NAMESPACES {
        let mut obj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}, "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}});
        stamp_new(&mut obj);
        create(find("namespaces").key(None, name), obj, None).await?;
    }
    let (host, port) = api_address
        .rsplit_once(':')
        .unwrap_or((api_address, "6443"));
    let port: u16 = port.parse().unwrap_or(6443);
    let ip = admission::API_SERVICE_IP.to_string();
    let mut svc = json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "kubernetes", "namespace": "default", "labels": {"component": "apiserver", "provider": "kubernetes"}},
        "spec": {"type": "ClusterIP", "clusterIP": ip, "clusterIPs": [ip], "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack", "sessionAffinity": "None",
                 "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": port}]},
        "status": {"loadBalancer": {}}});
    stamp_new(&mut svc);
    let reservation = admission::service_reservations(&svc).into_iter().next();
    create(
        find("services").key(Some("default"), "kubernetes"),
        svc,
        reservation,
    )
    .await?;
    // The cluster DNS: every node answers this address itself (node::network), so the
    // Service has no selector and no endpoints.
    let dns_ip = admission::DNS_SERVICE_IP.to_string();
    let mut dns = json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "kube-dns", "namespace": "kube-system", "labels": {"k8s-app": "kube-dns", "kubernetes.io/name": "CoreDNS", "kubernetes.io/cluster-service": "true"}},
        "spec": {"type": "ClusterIP", "clusterIP": dns_ip, "clusterIPs": [dns_ip], "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack", "sessionAffinity": "None",
                 "ports": [{"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                           {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53}]},
        "status": {"loadBalancer": {}}});
    stamp_new(&mut dns);
    let reservation = admission::service_reservations(&dns).into_iter().next();
    create(
        find("services").key(Some("kube-system"), "kube-dns"),
        dns,
        reservation,
    )
    .await?;
    publish_api_endpoints(store, host, port).await?;
    // The default ClusterRoles and their bindings (cluster-admin for system:masters, discovery
    // for every authenticated user); made once, so that an operator may edit them after.
    let rbac =
        |name| api::registry::find("rbac.authorization.k8s.io", "v1", name).expect("registered");
    let (roles, bindings) = api::rbac::default_roles();
    for (resource, objects) in [("clusterroles", roles), ("clusterrolebindings", bindings)] {
        for mut obj in objects {
            stamp_new(&mut obj);
            let name = object::name(&obj).unwrap_or_default().to_string();
            create(rbac(resource).key(None, &name), obj, None).await?;
        }
    }
    Ok(())
}

/// Points the `kubernetes` Service's Endpoints and EndpointSlice at `host:port`, this member's
/// API as pods reach it; written when missing or pointing elsewhere (the member's address
/// changed), left alone otherwise. Nodes program the Service from the slice.
///
/// The last member to start is the one endpoint: kube-apiserver's lease-based reconciler,
/// which lists every live member, is still to come with high availability.
async fn publish_api_endpoints(store: &StoreNode, host: &str, port: u16) -> Result<(), StoreError> {
    let endpoints = api::registry::find("", "v1", "endpoints").expect("registered");
    let slices =
        api::registry::find("discovery.k8s.io", "v1", "endpointslices").expect("registered");
    let wanted = [
        (
            endpoints.key(Some("default"), "kubernetes"),
            json!({"apiVersion": "v1", "kind": "Endpoints",
                "metadata": {"name": "kubernetes", "namespace": "default",
                    "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
                "subsets": [{"addresses": [{"ip": host}],
                    "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}]}),
            "subsets",
        ),
        (
            slices.key(Some("default"), "kubernetes"),
            json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": "kubernetes", "namespace": "default",
                    "labels": {"kubernetes.io/service-name": "kubernetes",
                        "endpointslice.kubernetes.io/managed-by": "drover-apiserver"}},
                "addressType": "IPv4",
                "endpoints": [{"addresses": [host], "conditions": {"ready": true}}],
                "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}),
            "endpoints",
        ),
    ];
    for (key, mut obj, field) in wanted {
        let read = store
            .range(
                RangeRequest::new(KeySpan::key(key.as_bytes())),
                Consistency::Linearizable,
                false,
            )
            .await?;
        let txn = match read.kvs.first() {
            None => {
                stamp_new(&mut obj);
                Txn::put(key.as_bytes(), to_bytes(&obj))
                    .when(Compare::exists(key.as_bytes(), false))
            }
            Some(kv) => {
                let mut current: Value = serde_json::from_slice(&kv.value)
                    .map_err(|e| StoreError::Internal(format!("{key}: {e}")))?;
                if current[field] == obj[field] && current["ports"] == obj["ports"] {
                    continue;
                }
                current[field] = obj[field].take();
                if field == "endpoints" {
                    current["ports"] = obj["ports"].take();
                }
                Txn::put(key.as_bytes(), to_bytes(&current)).when(Compare::mod_revision(
                    key.as_bytes(),
                    CompareOp::Equal,
                    kv.mod_revision,
                ))
            }
        };
        // A lost race (another member wrote it meanwhile) is the caller's retry.
        if !store.txn(txn, false).await?.succeeded {
            return Err(StoreError::NoLeader);
        }
    }
    Ok(())
}
