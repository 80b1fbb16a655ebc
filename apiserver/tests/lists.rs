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
