//! The watch cache against a real store: lists and watches from memory, and watchers that fall
//! out of its window carry on from the store without a gap.

mod common;

use std::time::Duration;

use apiserver::cache::{Feed, WatchCache};
use raft_store::{EventKind, Txn};

async fn put(node: &raft_store::StoreNode, key: &str, value: &str) -> u64 {
    node.txn(Txn::put(key.as_bytes(), value.as_bytes()), false)
        .await
        .unwrap()
        .revision
}

#[tokio::test]
async fn lists_and_watches_follow_the_store_and_fall_back_past_the_window() {
    let (_dir, node, _router) = common::start().await;
    let cache = WatchCache::with_window(
        node.engine().clone(),
        &["/registry/t/"],
        std::sync::Arc::new(|_: &mut raft_store::KeyValue| {}),
        vec![],
        8,
    );
    let start = put(&node, "/registry/t/a", "1").await;
    assert!(cache.wait_for(start, Duration::from_secs(5)).await);
    assert_eq!(cache.changed_at("/registry/t/"), start);

    // A watcher inside the window, and one that will fall behind it.
    let mut live = Feed::Cache(cache.watch("/registry/t/".into(), start + 1));
    let mut late = Feed::Cache(cache.watch("/registry/t/".into(), start + 1));
    let mut last = start;
    let mut live_seen = Vec::new();
    for i in 0..30 {
        last = put(&node, &format!("/registry/t/k{i:02}"), "v").await;
        // Writes elsewhere move the revision but are not the watchers' business.
        put(&node, "/registry/other/x", "v").await;
        // The live watcher keeps up, so it stays in the window.
        while live_seen.last() != Some(&last) {
            let batch = live.next(&node).await.unwrap().unwrap();
            live_seen.extend(batch.events.iter().map(|e| e.kv.mod_revision));
        }
    }
    assert_eq!(live_seen.len(), 30);
    assert!(
        matches!(live, Feed::Cache(_)),
        "a watcher that keeps up reads the cache"
    );
    node.txn(Txn::delete(b"/registry/t/a".to_vec()), false)
        .await
        .unwrap();
    let end = node.engine().head().revision;
    assert!(cache.wait_for(end, Duration::from_secs(5)).await);

    let list = cache.range("/registry/t/", None);
    assert_eq!(list.kvs.len(), 30, "a deleted, k00..k29 present");
    assert_eq!(list.revision, end);
    let page = cache.range("/registry/t/", Some(b"/registry/t/k27"));
    assert_eq!(page.kvs.len(), 2);

    let deleted = live.next(&node).await.unwrap().unwrap();
    assert_eq!(deleted.events[0].kind, EventKind::Delete);
    {
        let feed = &mut late;
        let mut seen = Vec::new();
        while seen.len() < 31 {
            let batch = tokio::time::timeout(Duration::from_secs(5), feed.next(&node))
                .await
                .expect("events arrive")
                .expect("the watch goes on")
                .expect("no error");
            for ev in batch.events {
                assert!(ev.kv.key.starts_with(b"/registry/t/"));
                seen.push((ev.kind, ev.kv.mod_revision));
            }
        }
        let revisions: Vec<u64> = seen.iter().map(|e| e.1).collect();
        let mut sorted = revisions.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(revisions, sorted, "in order, no duplicates");
        assert!(seen[..30].iter().all(|e| e.0 == EventKind::Put));
        assert_eq!(seen[29].1, last);
        assert_eq!(seen[30].0, EventKind::Delete);
    }
    assert!(
        matches!(late, Feed::Store(..)),
        "the late watcher moved to the store"
    );
}
