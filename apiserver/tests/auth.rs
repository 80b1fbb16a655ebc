//! Authentication and authorization through the API router against a real store: node
//! credentials, ServiceAccount tokens, RBAC and its escalation rule, binding and eviction.

mod common;

use axum::http::StatusCode;
use common::{call, call_as};
use serde_json::{json, Value};

async fn token_for(app: &axum::Router, uri: &str) -> String {
    let (code, body) = call(app, "POST", uri, Some(json!({"spec": {}}))).await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    body["status"]["token"].as_str().unwrap().to_string()
}

fn pod(name: &str, node: Option<&str>) -> Value {
    let mut p = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"containers": [{"name": "c", "image": "hello.wasm"}]}});
    if let Some(n) = node {
        p["spec"]["nodeName"] = json!(n);
    }
    p
}

#[tokio::test]
async fn a_node_changes_only_its_own_node_lease_and_pods() {
    let (_dir, _node, app) = common::start().await;
    let n1 = token_for(&app, "/api/v1/nodes/n1/token").await;
    let node = |name: &str| json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}});
    // Its Node was made with its credential, which is bound to it.
    let (code, body) = call_as(&app, &n1, "GET", "/api/v1/nodes/n1", None).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let (code, _) = call_as(&app, &n1, "POST", "/api/v1/nodes", Some(node("n1"))).await;
    assert_eq!(code, StatusCode::CONFLICT);
    let (code, body) = call_as(&app, &n1, "POST", "/api/v1/nodes", Some(node("n2"))).await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{body}");
    call(&app, "POST", "/api/v1/nodes", Some(node("n2"))).await;
    let (code, _) = call_as(&app, &n1, "DELETE", "/api/v1/nodes/n2", None).await;
    assert_eq!(code, StatusCode::FORBIDDEN);
    let status = json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}});
    let (code, _) = call_as(&app, &n1, "PATCH", "/api/v1/nodes/n1/status", Some(status)).await;
    assert_eq!(code, StatusCode::OK);

    for (name, on) in [
        ("mine", Some("n1")),
        ("theirs", Some("n2")),
        ("loose", None),
    ] {
        let (code, _) = call(
            &app,
            "POST",
            "/api/v1/namespaces/default/pods",
            Some(pod(name, on)),
        )
        .await;
        assert_eq!(code, StatusCode::CREATED);
    }
    let running = json!({"status": {"phase": "Running"}});
    let uri = |n: &str| format!("/api/v1/namespaces/default/pods/{n}/status");
    let (code, _) = call_as(&app, &n1, "PATCH", &uri("mine"), Some(running.clone())).await;
    assert_eq!(code, StatusCode::OK);
    for other in ["theirs", "loose"] {
        let (code, _) = call_as(&app, &n1, "PATCH", &uri(other), Some(running.clone())).await;
        assert_eq!(code, StatusCode::FORBIDDEN, "{other}");
    }
    let (code, _) = call_as(
        &app,
        &n1,
        "GET",
        "/api/v1/pods?fieldSelector=spec.nodeName%3Dn1",
        None,
    )
    .await;
    assert_eq!(code, StatusCode::OK, "nodes read pods");
    let (code, _) = call_as(
        &app,
        &n1,
        "POST",
        "/api/v1/namespaces/default/pods",
        Some(pod("new", None)),
    )
    .await;
    assert_eq!(code, StatusCode::FORBIDDEN, "nodes do not create pods");

    let lease = |n: &str| json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": n}});
    let leases = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases";
    let (code, _) = call_as(&app, &n1, "POST", leases, Some(lease("n1"))).await;
    assert_eq!(code, StatusCode::CREATED);
    let (code, _) = call_as(&app, &n1, "PUT", &format!("{leases}/n2"), Some(lease("n2"))).await;
    assert_eq!(code, StatusCode::FORBIDDEN);
    let (code, _) = call_as(
        &app,
        &n1,
        "GET",
        "/apis/rbac.authorization.k8s.io/v1/clusterroles",
        None,
    )
    .await;
    assert_eq!(code, StatusCode::FORBIDDEN);
    // A node cannot mint credentials, for itself or others.
    let (code, _) = call_as(&app, &n1, "POST", "/api/v1/nodes/n2/token", Some(json!({}))).await;
    assert_eq!(code, StatusCode::FORBIDDEN);
    // Forged and unknown tokens are not anybody.
    let (code, _) = call_as(&app, &format!("{n1}x"), "GET", "/api/v1/pods", None).await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn service_account_tokens_get_what_rbac_grants_and_no_more() {
    let (_dir, _node, app) = common::start().await;
    let sa =
        |n: &str| json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": n}});
    call(
        &app,
        "POST",
        "/api/v1/namespaces",
        Some(json!({"metadata": {"name": "team"}})),
    )
    .await;
    for name in ["reader", "lead"] {
        let (code, _) = call(
            &app,
            "POST",
            "/api/v1/namespaces/team/serviceaccounts",
            Some(sa(name)),
        )
        .await;
        assert_eq!(code, StatusCode::CREATED);
    }
    let reader = token_for(&app, "/api/v1/namespaces/team/serviceaccounts/reader/token").await;
    let lead = token_for(&app, "/api/v1/namespaces/team/serviceaccounts/lead/token").await;
    let pods = "/api/v1/namespaces/team/pods";

    let (code, body) = call_as(&app, &reader, "GET", pods, None).await;
    assert_eq!(code, StatusCode::FORBIDDEN);
    assert_eq!(body["reason"], "Forbidden");
    assert!(body["message"].as_str().unwrap().contains(
        "User \"system:serviceaccount:team:reader\" cannot list resource \"pods\" in API group \"\" in the namespace \"team\""
    ), "{body}");
    let (code, _) = call_as(&app, &reader, "GET", "/apis/apps/v1", None).await;
    assert_eq!(
        code,
        StatusCode::OK,
        "discovery is open to every authenticated user"
    );

    let binding = |name: &str, role: &str, who: &str| {
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": name}, "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [{"kind": "ServiceAccount", "name": who, "namespace": "team"}]})
    };
    let rolebindings = "/apis/rbac.authorization.k8s.io/v1/namespaces/team/rolebindings";
    let (code, _) = call(
        &app,
        "POST",
        rolebindings,
        Some(binding("lead-admin", "admin", "lead")),
    )
    .await;
    assert_eq!(code, StatusCode::CREATED);
    // An admin of the namespace may grant view there, but not cluster-admin.
    let (code, body) = call_as(
        &app,
        &lead,
        "POST",
        rolebindings,
        Some(binding("reader-view", "view", "reader")),
    )
    .await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    let (code, body) = call_as(
        &app,
        &lead,
        "POST",
        rolebindings,
        Some(binding("sneaky", "cluster-admin", "reader")),
    )
    .await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{body}");

    let (code, _) = call_as(&app, &reader, "GET", pods, None).await;
    assert_eq!(code, StatusCode::OK, "view granted");
    let (code, _) = call_as(
        &app,
        &reader,
        "GET",
        "/api/v1/namespaces/default/pods",
        None,
    )
    .await;
    assert_eq!(code, StatusCode::FORBIDDEN, "only in its namespace");
    let (code, _) = call_as(&app, &reader, "POST", pods, Some(pod("p", None))).await;
    assert_eq!(code, StatusCode::FORBIDDEN, "view does not create");
    let (code, _) = call_as(
        &app,
        &reader,
        "GET",
        "/api/v1/namespaces/team/secrets",
        None,
    )
    .await;
    assert_eq!(code, StatusCode::FORBIDDEN, "view does not read secrets");
    let (code, _) = call_as(&app, &lead, "POST", pods, Some(pod("p", None))).await;
    assert_eq!(code, StatusCode::CREATED, "admin creates");

    // Deleting the ServiceAccount revokes its tokens.
    call(
        &app,
        "DELETE",
        "/api/v1/namespaces/team/serviceaccounts/reader",
        None,
    )
    .await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let (code, _) = call_as(&app, &reader, "GET", pods, None).await;
        if code == StatusCode::UNAUTHORIZED {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "token still works: {code}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let (code, _) = call(
        &app,
        "POST",
        "/api/v1/namespaces/team/serviceaccounts/ghost/token",
        Some(json!({})),
    )
    .await;
    assert_eq!(code, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn binding_assigns_a_pod_once_and_eviction_deletes_it() {
    let (_dir, _node, app) = common::start().await;
    call(
        &app,
        "POST",
        "/api/v1/namespaces/default/pods",
        Some(pod("p", None)),
    )
    .await;
    let bind = |node: &str| json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "p"}, "target": {"kind": "Node", "name": node}});
    let uri = "/api/v1/namespaces/default/pods/p/binding";
    let (code, body) = call(&app, "POST", uri, Some(bind("n1"))).await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    let (_, p) = call(&app, "GET", "/api/v1/namespaces/default/pods/p", None).await;
    assert_eq!(p["spec"]["nodeName"], "n1");
    let (code, _) = call(&app, "POST", uri, Some(bind("n2"))).await;
    assert_eq!(code, StatusCode::CONFLICT);
    let (code, _) = call(&app, "POST", uri, Some(json!({"target": {}}))).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY);

    let eviction = json!({"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": "p"}, "deleteOptions": {"gracePeriodSeconds": 0}});
    let (code, body) = call(
        &app,
        "POST",
        "/api/v1/namespaces/default/pods/p/eviction",
        Some(eviction),
    )
    .await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    let (code, _) = call(&app, "GET", "/api/v1/namespaces/default/pods/p", None).await;
    assert_eq!(code, StatusCode::NOT_FOUND);
}

/// Authorization and dispatch read the same `watch`: a user allowed to list but not to watch
/// gets no watch stream by spelling `watch` another way (`%74rue`, `True`, `t`: every spelling
/// Go's strconv.ParseBool accepts is a watch, as kube-apiserver decodes it).
#[tokio::test]
async fn watch_is_authorized_as_it_is_served_whatever_its_spelling() {
    let (_dir, _node, app) = common::start().await;
    call(
        &app,
        "POST",
        "/api/v1/namespaces/default/serviceaccounts",
        Some(json!({"metadata": {"name": "lister"}})),
    )
    .await;
    let role = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": "list-only"},
        "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["list"]}]});
    let (code, _) = call(
        &app,
        "POST",
        "/apis/rbac.authorization.k8s.io/v1/namespaces/default/roles",
        Some(role),
    )
    .await;
    assert_eq!(code, StatusCode::CREATED);
    let binding = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": "lister"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "list-only"},
        "subjects": [{"kind": "ServiceAccount", "name": "lister", "namespace": "default"}]});
    let (code, _) = call(
        &app,
        "POST",
        "/apis/rbac.authorization.k8s.io/v1/namespaces/default/rolebindings",
        Some(binding),
    )
    .await;
    assert_eq!(code, StatusCode::CREATED);
    let token = token_for(
        &app,
        "/api/v1/namespaces/default/serviceaccounts/lister/token",
    )
    .await;
    let cms = "/api/v1/namespaces/default/configmaps";
    let (code, body) = call_as(&app, &token, "GET", cms, None).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    for spelling in ["true", "%74rue", "True", "TRUE", "t", "T", "1"] {
        let (code, body) = call_as(
            &app,
            &token,
            "GET",
            &format!("{cms}?watch={spelling}&timeoutSeconds=1"),
            None,
        )
        .await;
        assert_eq!(code, StatusCode::FORBIDDEN, "watch={spelling}: {body}");
    }
    // With the right, every spelling is a watch (a stream of events, not a List).
    for spelling in ["True", "t", "%74rue"] {
        let uri = format!("{cms}?watch={spelling}&timeoutSeconds=1");
        let text = common::call_raw(&app, "GET", &uri).await;
        assert!(
            !text.contains("\"kind\":\"ConfigMapList\""),
            "watch={spelling}: {text}"
        );
    }
}

/// A continue token is the server's, for one list: a token made up by a client (to start at
/// `/`, where the cluster's CA key and admin token are kept, or in another kind) is refused,
/// and so is a genuine token used on another collection or with other selectors.
#[tokio::test]
async fn continue_tokens_are_signed_and_bound_to_their_list() {
    use base64::Engine as _;
    let (_dir, node, app) = common::start().await;
    let sealer = apiserver::encryption::SecretBox::new(&[1; 32]);
    let secrets = apiserver::pki::ClusterSecrets::generate().unwrap();
    apiserver::cluster_secrets(&node, &sealer, Some(&secrets))
        .await
        .unwrap();
    let cms = "/api/v1/namespaces/default/configmaps";
    for name in ["a", "b", "c"] {
        call(
            &app,
            "POST",
            cms,
            Some(json!({"metadata": {"name": name, "labels": {"app": "x"}}})),
        )
        .await;
    }
    call(
        &app,
        "POST",
        "/api/v1/namespaces/default/secrets",
        Some(json!({"metadata": {"name": "crown-jewels"}, "stringData": {"k": "secret-value"}})),
    )
    .await;
    let (_, page) = call(&app, "GET", &format!("{cms}?limit=1"), None).await;
    let rv: u64 = page["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let genuine = page["metadata"]["continue"].as_str().unwrap().to_string();
    let (code, next) = call(
        &app,
        "GET",
        &format!("{cms}?limit=1&continue={genuine}"),
        None,
    )
    .await;
    assert_eq!(code, axum::http::StatusCode::OK, "{next}");
    assert_eq!(next["items"][0]["metadata"]["name"], "b");

    let services = "/api/v1/namespaces/default/services";
    let secrets = "/api/v1/namespaces/default/secrets";
    let mut attempts: Vec<(String, String)> = [
        (cms, "/"),
        (cms, "/drover/"),
        (services, "/registry/core/secrets/"),
        (services, "../secrets/default/"),
        (cms, ""),
    ]
    .iter()
    .flat_map(|(collection, start)| {
        let body = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(serde_json::to_vec(&json!({"rv": rv, "start": start})).unwrap());
        // Unsigned, and with the genuine token's signature borrowed.
        let (_, tag) = genuine.split_once('.').unwrap();
        vec![
            (collection.to_string(), body.clone()),
            (collection.to_string(), format!("{body}.{tag}")),
        ]
    })
    .collect();
    // The genuine token on another collection, another namespace and other selectors.
    attempts.push((secrets.to_string(), genuine.clone()));
    attempts.push((
        "/api/v1/namespaces/kube-system/configmaps".into(),
        genuine.clone(),
    ));
    attempts.push((format!("{cms}?labelSelector=app%3Dx"), genuine.clone()));
    for (collection, token) in attempts {
        let sep = if collection.contains('?') { '&' } else { '?' };
        let (code, answer) = call(
            &app,
            "GET",
            &format!("{collection}{sep}limit=50&continue={token}"),
            None,
        )
        .await;
        assert_eq!(
            code,
            axum::http::StatusCode::BAD_REQUEST,
            "{collection} with {token}: {answer}"
        );
        let text = answer.to_string();
        assert!(text.contains("continue"), "{text}");
        assert!(
            !text.contains("crown-jewels") && !text.contains("secret-value"),
            "{text}"
        );
    }
}

/// TokenRequest as Kubernetes has it: a token asked for another audience is no API credential,
/// no token outlives the cap, and a token bound to a pod dies with the pod.
#[tokio::test]
async fn tokens_serve_their_audiences_live_at_most_a_year_and_die_with_their_pod() {
    let (_dir, _node, app) = common::start().await;
    let sas = "/api/v1/namespaces/default/serviceaccounts";
    call(
        &app,
        "POST",
        sas,
        Some(json!({"metadata": {"name": "app"}})),
    )
    .await;
    let ask = |spec: Value| {
        let app = app.clone();
        async move {
            call(
                &app,
                "POST",
                "/api/v1/namespaces/default/serviceaccounts/app/token",
                Some(json!({"spec": spec})),
            )
            .await
        }
    };
    let review = |token: String, audiences: Vec<&'static str>| {
        let app = app.clone();
        async move {
            let (code, body) = call(
                &app,
                "POST",
                "/apis/authentication.k8s.io/v1/tokenreviews",
                Some(json!({"spec": {"token": token, "audiences": audiences}})),
            )
            .await;
            assert_eq!(code, StatusCode::CREATED, "{body}");
            body["status"]["authenticated"] == true
        }
    };
    let ns = "/api/v1/namespaces/default";

    // For a third party: it cannot be used on the API, the third party's review accepts it.
    let (code, body) = ask(json!({"audiences": ["vault"]})).await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    assert_eq!(body["spec"]["audiences"], json!(["vault"]));
    let vault = body["status"]["token"].as_str().unwrap().to_string();
    let (code, _) = call_as(&app, &vault, "GET", ns, None).await;
    assert_eq!(
        code,
        StatusCode::UNAUTHORIZED,
        "a token for vault was an API credential"
    );
    assert!(review(vault.clone(), vec!["vault"]).await);
    assert!(!review(vault, vec![]).await);
    // Without audiences: the API's, named in the answer as Kubernetes names it.
    let (_, body) = ask(json!({})).await;
    assert_eq!(
        body["spec"]["audiences"],
        json!(["https://kubernetes.default.svc.cluster.local"])
    );
    let api = body["status"]["token"].as_str().unwrap().to_string();
    let (code, _) = call_as(&app, &api, "GET", ns, None).await;
    assert_eq!(code, StatusCode::FORBIDDEN, "authenticated, not authorized");
    let (code, body) = ask(json!({"audiences": [""]})).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{body}");

    // Ten years asked, one year given.
    let (_, body) = ask(json!({"expirationSeconds": 10 * 365 * 86400})).await;
    assert_eq!(body["spec"]["expirationSeconds"], 365 * 86400);

    // Bound to a pod that runs as this ServiceAccount: valid while the pod lives.
    let mut web = pod("web", None);
    web["spec"]["serviceAccountName"] = json!("app");
    let (code, _) = call(&app, "POST", &format!("{ns}/pods"), Some(web.clone())).await;
    assert_eq!(code, StatusCode::CREATED);
    call(
        &app,
        "POST",
        &format!("{ns}/pods"),
        Some(pod("other", None)),
    )
    .await;
    let (code, body) =
        ask(json!({"boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": "web"}})).await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    assert_eq!(body["spec"]["boundObjectRef"]["name"], "web");
    let bound = body["status"]["token"].as_str().unwrap().to_string();
    assert!(review(bound.clone(), vec![]).await);
    for missing in [
        json!({"kind": "Pod", "name": "nope"}),
        json!({"kind": "Pod", "name": "web", "uid": "not-its-uid"}),
        json!({"kind": "Node", "name": "n1"}),
        json!({"kind": "Pod", "name": "other"}),
    ] {
        let (code, body) = ask(json!({"boundObjectRef": missing})).await;
        assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert!(body.to_string().contains("boundObjectRef"), "{body}");
    }
    let (code, _) = call(
        &app,
        "DELETE",
        &format!("{ns}/pods/web?gracePeriodSeconds=0"),
        None,
    )
    .await;
    assert!(code.is_success());
    // The same name again is another pod: the token stays dead.
    call(&app, "POST", &format!("{ns}/pods"), Some(web)).await;
    let mut dead = false;
    for _ in 0..100 {
        if !review(bound.clone(), vec![]).await {
            dead = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(dead, "a token outlived the pod it was bound to");
}

/// A node's credential is bound to its Node: deleting the Node revokes it, and a Node made
/// again under the same name (another uid) does not bring it back. A name that cannot name a
/// Node gets no credential.
#[tokio::test]
async fn deleting_a_node_revokes_its_credentials() {
    let (_dir, _node, app) = common::start().await;
    let n1 = token_for(&app, "/api/v1/nodes/n1/token").await;
    let (code, _) = call_as(&app, &n1, "GET", "/api/v1/nodes/n1", None).await;
    assert_eq!(code, StatusCode::OK);
    let (code, _) = call(&app, "DELETE", "/api/v1/nodes/n1", None).await;
    assert_eq!(code, StatusCode::OK);
    let (code, _) = call_as(&app, &n1, "GET", "/api/v1/nodes/n1", None).await;
    assert_eq!(code, StatusCode::UNAUTHORIZED, "revoked with its Node");
    let node = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}});
    let (code, _) = call(&app, "POST", "/api/v1/nodes", Some(node)).await;
    assert_eq!(code, StatusCode::CREATED);
    let (code, _) = call_as(&app, &n1, "GET", "/api/v1/nodes/n1", None).await;
    assert_eq!(
        code,
        StatusCode::UNAUTHORIZED,
        "a new Node of that name is another node"
    );
    let again = token_for(&app, "/api/v1/nodes/n1/token").await;
    let (code, _) = call_as(&app, &again, "GET", "/api/v1/nodes/n1", None).await;
    assert_eq!(code, StatusCode::OK);

    let (code, status) = call(
        &app,
        "POST",
        "/api/v1/nodes/Not_A_Name/token",
        Some(json!({})),
    )
    .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{status}");
}

/// `drover token rotate`: a new key signs; tokens of the old key work through the grace
/// period and not after; with no grace they die at once. Only system:masters may rotate.
#[tokio::test]
async fn rotating_the_signing_keys_retires_old_tokens_after_the_grace_period() {
    let (_dir, _node, app) = common::start().await;
    let rotate = "/drover/v1/token-keys/rotate";
    let sa = "/api/v1/namespaces/default/serviceaccounts";
    let (code, _) = call(&app, "POST", sa, Some(json!({"metadata": {"name": "app"}}))).await;
    assert_eq!(code, StatusCode::CREATED);
    let old = token_for(&app, &format!("{sa}/app/token")).await;
    // Discovery is open to every authenticated user: 401 is the token's failure alone.
    let works = |token: String| {
        let app = app.clone();
        async move { call_as(&app, &token, "GET", "/api", None).await.0 == StatusCode::OK }
    };
    assert!(works(old.clone()).await);

    // Not an admin: refused, and nothing rotates.
    let (code, _) = call_as(&app, &old, "POST", rotate, Some(json!({}))).await;
    assert_eq!(code, StatusCode::FORBIDDEN);
    let (code, status) = call(
        &app,
        "POST",
        &format!("{rotate}?graceSeconds=soon"),
        Some(json!({})),
    )
    .await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{status}");

    let (code, answer) = call(
        &app,
        "POST",
        &format!("{rotate}?graceSeconds=3600"),
        Some(json!({})),
    )
    .await;
    assert_eq!(code, StatusCode::OK, "{answer}");
    let kid = answer["kid"].as_str().unwrap().to_string();
    let new = token_for(&app, &format!("{sa}/app/token")).await;
    assert!(new.starts_with(&format!("drover.{kid}.")), "{new}");
    assert!(
        works(old.clone()).await,
        "the old key verifies through the grace period"
    );
    assert!(works(new.clone()).await);

    let (code, answer) = call(
        &app,
        "POST",
        &format!("{rotate}?graceSeconds=0"),
        Some(json!({})),
    )
    .await;
    assert_eq!(code, StatusCode::OK, "{answer}");
    assert_eq!(answer["keys"].as_array().unwrap().len(), 1, "{answer}");
    assert!(!works(old).await, "no grace: revoked");
    assert!(!works(new).await, "no grace: revoked");
    let newest = token_for(&app, &format!("{sa}/app/token")).await;
    assert!(works(newest).await);
}

/// ServiceAccount admission: a pod runs as `default` unless it names an account, and gets the
/// token volume unless the pod, or failing that its ServiceAccount, says
/// `automountServiceAccountToken: false`.
#[tokio::test]
async fn the_token_volume_follows_the_pod_then_its_service_account() {
    let (_dir, _node, app) = common::start().await;
    let ns = "/api/v1/namespaces/default";
    let (code, body) = call(
        &app,
        "POST",
        &format!("{ns}/serviceaccounts"),
        Some(json!({"metadata": {"name": "quiet"}, "automountServiceAccountToken": false})),
    )
    .await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    let token_volumes = |pod: &Value| -> usize {
        pod["spec"]["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|v| {
                v["name"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with("kube-api-access-")
            })
            .count()
    };
    let create = |name: &str, spec: Value| {
        let app = app.clone();
        let mut p = pod(name, None);
        for (k, v) in spec.as_object().unwrap() {
            p["spec"][k] = v.clone();
        }
        async move {
            let (code, body) = call(&app, "POST", &format!("{ns}/pods"), Some(p)).await;
            assert_eq!(code, StatusCode::CREATED, "{body}");
            body
        }
    };
    let plain = create("plain", json!({})).await;
    assert_eq!(plain["spec"]["serviceAccountName"], "default");
    assert_eq!(plain["spec"]["serviceAccount"], "default");
    assert_eq!(token_volumes(&plain), 1);
    let quiet = create("quiet", json!({"serviceAccountName": "quiet"})).await;
    assert_eq!(token_volumes(&quiet), 0, "the account opts out");
    let insists = create(
        "insists",
        json!({"serviceAccountName": "quiet", "automountServiceAccountToken": true}),
    )
    .await;
    assert_eq!(token_volumes(&insists), 1, "the pod's word wins");
    let off = create("off", json!({"automountServiceAccountToken": false})).await;
    assert_eq!(token_volumes(&off), 0);
}

/// A GET with impersonation headers, as the admin ("t") or another token.
async fn call_impersonating(
    app: &axum::Router,
    token: &str,
    uri: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, Value) {
    common::call_with_headers(app, token, "GET", uri, Value::Null, headers).await
}

/// The impersonation attacks of issue 16, at the headers: `Impersonate-User: nobody` read
/// Secrets as the admin; a token without rights could become the admin or join
/// system:masters; groups without a user were taken.
#[tokio::test]
async fn impersonation_headers_are_authorized_part_by_part() {
    let (_dir, _node, app) = common::start().await;
    let secrets = "/api/v1/namespaces/default/secrets";
    let (code, _) = call_impersonating(&app, "t", secrets, &[("Impersonate-User", "nobody")]).await;
    assert_eq!(
        code,
        StatusCode::FORBIDDEN,
        "served as the admin, not as nobody"
    );
    let (code, body) = call_impersonating(
        &app,
        "t",
        secrets,
        &[("Impersonate-Group", "system:masters")],
    )
    .await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{body}");
    call(
        &app,
        "POST",
        "/api/v1/namespaces/default/serviceaccounts",
        Some(json!({"metadata": {"name": "nobody-much"}})),
    )
    .await;
    let token = token_for(
        &app,
        "/api/v1/namespaces/default/serviceaccounts/nobody-much/token",
    )
    .await;
    for headers in [
        vec![("Impersonate-User", "admin")],
        vec![
            ("Impersonate-User", "admin"),
            ("Impersonate-Group", "system:masters"),
        ],
        vec![(
            "Impersonate-User",
            "system:serviceaccount:kube-system:default",
        )],
    ] {
        let (code, body) = call_impersonating(&app, &token, secrets, &headers).await;
        assert_eq!(code, StatusCode::FORBIDDEN, "{headers:?}: {body}");
        assert!(
            body["message"]
                .as_str()
                .unwrap_or("")
                .contains("cannot impersonate"),
            "{body}"
        );
    }
    // The admin as a user with no rights, with extras and a uid: who am I says so.
    let (code, body) = call_impersonating(
        &app,
        "t",
        "/api/v1/namespaces/default/configmaps",
        &[
            ("Impersonate-User", "carol"),
            ("Impersonate-Uid", "42"),
            ("Impersonate-Extra-Team", "shop"),
        ],
    )
    .await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("User \"carol\""),
        "{body}"
    );
}
