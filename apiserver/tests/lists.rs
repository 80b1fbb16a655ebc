//! Lists: paging with limit/continue over a consistent revision, label selectors, and the same
//! answers from the fast path (plain lists) and the full path (field selectors).

mod common;

use std::collections::BTreeSet;

use axum::http::StatusCode;
use common::{call, start};
use serde_json::json;

const CM: &str = "/api/v1/namespaces/default/configmaps";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_cover_every_object_once_at_one_revision() {
    let (_dir, _node, app) = start().await;
    for i in 0..7 {
        let labels = if i % 2 == 0 {
            json!({"even": "yes"})
        } else {
            json!({})
        };
        call(
            &app,
            "POST",
            CM,
            Some(json!({"metadata": {"name": format!("c{i}"), "labels": labels}})),
        )
        .await;
    }
    let mut names = BTreeSet::new();
    let mut uri = format!("{CM}?limit=3");
    let mut pages = 0;
    let mut revision = None;
    loop {
        let (code, list) = call(&app, "GET", &uri, None).await;
        assert_eq!(code, StatusCode::OK, "{list}");
        pages += 1;
        for item in list["items"].as_array().unwrap() {
            assert!(
                names.insert(item["metadata"]["name"].as_str().unwrap().to_string()),
                "{item} twice"
            );
            assert!(item["metadata"]["resourceVersion"]
                .as_str()
                .unwrap()
                .parse::<u64>()
                .is_ok());
        }
        // Writes between pages do not show up in later pages.
        if pages == 1 {
            revision = list["metadata"]["resourceVersion"]
                .as_str()
                .map(String::from);
            call(
                &app,
                "POST",
                CM,
                Some(json!({"metadata": {"name": "c9-late"}})),
            )
            .await;
        }
        match list["metadata"]["continue"].as_str() {
            Some(token) => uri = format!("{CM}?limit=3&continue={token}"),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(names.len(), 7, "{names:?}");
    assert!(revision.is_some());

    // Label selectors on the fast path, field selectors on the full path: same objects.
    let (_, even) = call(&app, "GET", &format!("{CM}?labelSelector=even%3Dyes"), None).await;
    assert_eq!(even["items"].as_array().unwrap().len(), 4);
    let (_, by_name) = call(
        &app,
        "GET",
        &format!("{CM}?fieldSelector=metadata.name%3Dc3"),
        None,
    )
    .await;
    assert_eq!(by_name["items"].as_array().unwrap().len(), 1);
    assert_eq!(by_name["kind"], "ConfigMapList");
    let (_, all) = call(&app, "GET", CM, None).await;
    assert_eq!(all["kind"], "ConfigMapList");
    assert_eq!(
        all["items"].as_array().unwrap().len(),
        8,
        "the seven and the late one"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_selector_watch_sees_objects_enter_and_leave_the_selection() {
    let (_dir, _node, app) = start().await;
    let (_, list) = call(&app, "GET", CM, None).await;
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    let watch_app = app.clone();
    let watch = tokio::spawn(async move {
        let uri =
            format!("{CM}?watch=1&resourceVersion={rv}&labelSelector=app%3Da&timeoutSeconds=2");
        common::call_raw(&watch_app, "GET", &uri).await
    });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    call(
        &app,
        "POST",
        CM,
        Some(json!({"metadata": {"name": "x", "labels": {"app": "a"}}})),
    )
    .await;
    let merge = "application/merge-patch+json";
    let relabel = |value: &str| json!({"metadata": {"labels": {"app": value}}});
    let (code, patched) =
        common::call_with_type(&app, "PATCH", &format!("{CM}/x"), relabel("b"), merge).await;
    assert_eq!(
        (code, &patched["metadata"]["labels"]["app"]),
        (StatusCode::OK, &json!("b"))
    );
    common::call_with_type(&app, "PATCH", &format!("{CM}/x"), relabel("a"), merge).await;
    call(&app, "DELETE", &format!("{CM}/x"), None).await;
    call(
        &app,
        "POST",
        CM,
        Some(json!({"metadata": {"name": "other", "labels": {"app": "b"}}})),
    )
    .await;
    let body = watch.await.unwrap();
    let types: Vec<String> = body
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["type"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        types,
        vec!["ADDED", "DELETED", "ADDED", "DELETED"],
        "{body}"
    );
}

/// A streaming list (client-go's WatchList, on by default from 1.35: `watch=1`,
/// `sendInitialEvents=true`, `resourceVersionMatch=NotOlderThan`, `allowWatchBookmarks=true`)
/// gets the current objects as ADDED events and then a BOOKMARK annotated
/// `k8s.io/initial-events-end`, at the revision of that list; without it client-go's reflectors
/// wait for ever (`kubectl wait`, `rollout status`, Helm 4's `--wait`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streaming_list_ends_its_initial_events_with_a_bookmark() {
    let (_dir, _node, app) = common::start().await;
    let cms = "/api/v1/namespaces/default/configmaps";
    for name in ["one", "two"] {
        common::call(
            &app,
            "POST",
            cms,
            Some(serde_json::json!({"metadata": {"name": name}})),
        )
        .await;
    }
    let (_, list) = common::call(&app, "GET", cms, None).await;
    let listed = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    let text = common::call_raw(
        &app,
        "GET",
        &format!("{cms}?watch=1&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&resourceVersion=&allowWatchBookmarks=true&timeoutSeconds=1"),
    )
    .await;
    let events: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.len(), 3, "{text}");
    assert!(events[..2].iter().all(|e| e["type"] == "ADDED"), "{text}");
    let bookmark = &events[2];
    assert_eq!(bookmark["type"], "BOOKMARK", "{text}");
    assert_eq!(
        bookmark["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"],
        "true"
    );
    let at: u64 = bookmark["object"]["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(at >= listed.parse::<u64>().unwrap(), "{text}");
    // A plain watch from a resourceVersion gets no initial events and no such bookmark.
    let text = common::call_raw(
        &app,
        "GET",
        &format!("{cms}?watch=1&resourceVersion={listed}&timeoutSeconds=1"),
    )
    .await;
    assert!(!text.contains("initial-events-end"), "{text}");
}

/// An Event written through `events.k8s.io/v1` is a core Event (and the other way round), as
/// both groups read one store in kube-apiserver: `kubectl get events` and `kubectl events`
/// show every event, whichever recorder wrote it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_of_both_groups_are_one_list() {
    let (_dir, _node, app) = start().await;
    let (code, created) = call(
        &app,
        "POST",
        "/apis/events.k8s.io/v1/namespaces/default/events",
        Some(
            json!({"metadata": {"name": "new-style"}, "eventTime": "2026-12-07T12:00:00.000000Z",
            "reason": "Pulled", "type": "Normal", "note": "image pulled", "action": "Pull",
            "reportingController": "drover/node", "reportingInstance": "n1",
            "regarding": {"kind": "Pod", "namespace": "default", "name": "web"}}),
        ),
    )
    .await;
    assert_eq!(code, StatusCode::CREATED, "{created}");
    assert_eq!(created["note"], "image pulled");
    let (code, _) = call(
        &app,
        "POST",
        "/api/v1/namespaces/default/events",
        Some(
            json!({"metadata": {"name": "old-style"}, "reason": "Started", "type": "Normal",
            "message": "container started", "involvedObject": {"kind": "Pod", "name": "web"}}),
        ),
    )
    .await;
    assert_eq!(code, StatusCode::CREATED);
    let (_, core) = call(&app, "GET", "/api/v1/namespaces/default/events", None).await;
    let (_, new) = call(
        &app,
        "GET",
        "/apis/events.k8s.io/v1/namespaces/default/events",
        None,
    )
    .await;
    let names = |list: &serde_json::Value| {
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["metadata"]["name"].as_str().unwrap().to_string())
            .collect::<BTreeSet<_>>()
    };
    assert_eq!(names(&core), names(&new));
    assert_eq!(names(&core).len(), 2);
    let as_core = core["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["metadata"]["name"] == "new-style")
        .unwrap();
    assert_eq!(as_core["message"], "image pulled");
    assert_eq!(as_core["involvedObject"]["name"], "web");
    let as_new = new["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["metadata"]["name"] == "old-style")
        .unwrap();
    assert_eq!(as_new["apiVersion"], "events.k8s.io/v1");
    assert_eq!(as_new["note"], "container started");
    assert_eq!(as_new["regarding"]["name"], "web");
    // One object: deleting it through either group removes it from both.
    let (code, _) = call(
        &app,
        "DELETE",
        "/apis/events.k8s.io/v1/namespaces/default/events/old-style",
        None,
    )
    .await;
    assert_eq!(code, StatusCode::OK);
    let (code, _) = call(
        &app,
        "GET",
        "/api/v1/namespaces/default/events/old-style",
        None,
    )
    .await;
    assert_eq!(code, StatusCode::NOT_FOUND);
}

/// Lists of 128 KiB or more go out gzipped to clients that accept it (as kube-apiserver's
/// APIResponseCompression); smaller answers, clients that do not, and watches stay plain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_lists_are_gzipped_for_clients_that_accept_it() {
    use axum::body::Body;
    use axum::http::Request;
    use std::io::Read;
    use tower::ServiceExt;
    let (_dir, _node, app) = start().await;
    let filler = "x".repeat(4096);
    for i in 0..40 {
        let (code, _) = call(
            &app,
            "POST",
            CM,
            Some(json!({"metadata": {"name": format!("big{i}")}, "data": {"f": filler}})),
        )
        .await;
        assert_eq!(code, StatusCode::CREATED);
    }
    let get = |uri: &str, gzip: bool| {
        let mut req = Request::builder()
            .uri(uri)
            .header("authorization", "Bearer t");
        if gzip {
            req = req.header("accept-encoding", "gzip");
        }
        app.clone().oneshot(req.body(Body::empty()).unwrap())
    };
    let resp = get(CM, true).await.unwrap();
    assert_eq!(resp.headers()["content-encoding"], "gzip");
    let zipped = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    let mut text = String::new();
    flate2::read::GzDecoder::new(&zipped[..])
        .read_to_string(&mut text)
        .unwrap();
    let list: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(list["items"].as_array().unwrap().len(), 40);
    assert!(zipped.len() * 10 < text.len(), "it compressed");
    // Not asked for, or small: plain.
    let resp = get(CM, false).await.unwrap();
    assert!(resp.headers().get("content-encoding").is_none());
    let resp = get(&format!("{CM}/big1"), true).await.unwrap();
    assert!(resp.headers().get("content-encoding").is_none());
    // A watch is a stream: never compressed, whatever it carries.
    let resp = get(&format!("{CM}?watch=1&timeoutSeconds=1"), true)
        .await
        .unwrap();
    assert!(resp.headers().get("content-encoding").is_none());
}
