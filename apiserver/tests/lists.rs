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
