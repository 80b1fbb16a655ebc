//! Watches on a real single-member store served on loopback: resume from any revision, no gaps,
//! live events, "compacted" for revisions that are gone, and slow watchers that are cut off
//! (with the revision to resume from) without holding up writers or other watchers.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use raft_store::watch::WatchOptions;
use raft_store::{
    EventKind, KeySpan, StoreClient, StoreConfig, StoreError, StoreNode, Txn, WatchBatch,
};

async fn start(watch: WatchOptions) -> (tempfile::TempDir, Arc<StoreNode>, StoreClient) {
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut config = StoreConfig::new(dir.path().join("data"), listener.local_addr().unwrap());
    config.watch = watch;
    let node = StoreNode::open(config).await.unwrap();
    tokio::spawn(raft_store::service::serve(
        listener,
        raft_store::service::router(node.clone()),
        None,
    ));
    node.bootstrap().await.unwrap();
    let client = StoreClient::new(std::slice::from_ref(&node.identity.addr));
    // The first write waits for the election.
    client.put(b"/init", b"x").await.unwrap();
    (dir, node, client)
}

fn revisions(batches: &[WatchBatch]) -> Vec<u64> {
    batches
        .iter()
        .flat_map(|b| b.events.iter().map(|e| e.kv.mod_revision))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_resumes_from_any_revision_and_continues_live() {
    let (_dir, node, client) = start(WatchOptions::default()).await; // revision 1
    for i in 2..=5 {
        client
            .put(format!("/w/{i}").as_bytes(), b"v")
            .await
            .unwrap();
    }
    client.put(b"/other", b"v").await.unwrap(); // 6, outside the span
    client.txn(&Txn::delete("/w/3")).await.unwrap(); // 7
    let mut watcher = node.watch(KeySpan::prefix("/w/"), 3);
    let mut got = Vec::new();
    while revisions(&got).len() < 4 {
        got.push(watcher.next().await.unwrap().unwrap());
    }
    assert_eq!(revisions(&got), vec![3, 4, 5, 7]);
    let last = got.iter().flat_map(|b| &b.events).last().unwrap();
    assert_eq!(last.kind, EventKind::Delete);
    assert_eq!(last.prev_kv.as_ref().unwrap().key, b"/w/3");
    // Live: a write after the watch started arrives too.
    client.put(b"/w/live", b"v").await.unwrap(); // 8
    let live = watcher.next().await.unwrap().unwrap();
    assert_eq!(revisions(&[live]), vec![8]);

    // The same over HTTP, through the client.
    let mut remote = client.watch(KeySpan::prefix("/w/"), 4).await.unwrap();
    let mut got = Vec::new();
    while revisions(&got).len() < 4 {
        got.push(remote.next().await.unwrap().unwrap());
    }
    assert_eq!(revisions(&got), vec![4, 5, 7, 8]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watching_a_compacted_revision_fails_with_compacted() {
    let (_dir, node, client) = start(WatchOptions::default()).await;
    for i in 0..5 {
        client
            .put(format!("/c/{i}").as_bytes(), b"v")
            .await
            .unwrap();
    }
    client.compact(4).await.unwrap();
    let mut watcher = node.watch(KeySpan::prefix("/c/"), 3);
    let err = watcher.next().await.unwrap().unwrap_err();
    assert_eq!(
        err,
        StoreError::Compacted {
            requested: 3,
            compact_revision: 4
        }
    );
    assert!(
        watcher.next().await.is_none(),
        "the watch ends after its error"
    );
    // From just after the compaction point it works, previous values included.
    let mut watcher = node.watch(KeySpan::prefix("/c/"), 5);
    let batch = watcher.next().await.unwrap().unwrap();
    assert_eq!(revisions(&[batch]), vec![5, 6]);
    // Over HTTP the error arrives as the last item of the stream.
    let mut remote = client.watch(KeySpan::prefix("/c/"), 2).await.unwrap();
    assert!(matches!(
        remote.next().await,
        Some(Err(StoreError::Compacted { .. }))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_watcher_is_cut_off_without_blocking_writers_or_other_watchers() {
    let opts = WatchOptions {
        buffer: 4,
        slow_grace: Duration::from_millis(300),
        progress_every: Duration::from_secs(60),
        revisions_per_batch: 1,
    };
    let (_dir, node, client) = start(opts).await;
    let from = node.engine().head().revision + 1;
    let mut slow = node.watch(KeySpan::prefix("/s/"), from);
    let mut fast = node.watch(KeySpan::prefix("/s/"), from);
    let fast_reader = tokio::spawn(async move {
        let mut seen = Vec::new();
        while seen.len() < 200 {
            let batch = fast.next().await.unwrap().unwrap();
            seen.extend(revisions(&[batch]));
        }
        seen
    });
    // 200 writes while the slow watcher reads nothing: all of them complete.
    for i in 0..200 {
        client
            .put(format!("/s/{i}").as_bytes(), b"v")
            .await
            .unwrap();
    }
    let fast_seen = fast_reader.await.unwrap();
    assert_eq!(
        fast_seen,
        (from..from + 200).collect::<Vec<_>>(),
        "the fast watcher saw every write in order"
    );

    // The slow one got what fitted in its buffer, then the cut-off naming where to resume.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let mut delivered = Vec::new();
    let resume_from = loop {
        match slow.next().await.unwrap() {
            Ok(batch) => delivered.extend(revisions(&[batch])),
            Err(StoreError::WatcherTooSlow { resume_from }) => break resume_from,
            Err(other) => panic!("unexpected error {other}"),
        }
    };
    assert!(
        delivered.len() < 200,
        "a bounded buffer cannot hold 200 batches"
    );
    assert_eq!(
        resume_from,
        from + delivered.len() as u64,
        "resume exactly after what was delivered"
    );
    assert!(slow.next().await.is_none());
    // Resuming gives the rest, with no gap and no repeat.
    let mut resumed = node.watch(KeySpan::prefix("/s/"), resume_from);
    while delivered.len() < 200 {
        let batch = resumed.next().await.unwrap().unwrap();
        delivered.extend(revisions(&[batch]));
    }
    assert_eq!(delivered, (from..from + 200).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_watch_reports_progress() {
    let opts = WatchOptions {
        progress_every: Duration::from_millis(100),
        ..WatchOptions::default()
    };
    let (_dir, node, client) = start(opts).await;
    client.put(b"/elsewhere", b"v").await.unwrap();
    let head = node.engine().head().revision;
    let mut watcher = node.watch(KeySpan::prefix("/quiet/"), 0);
    let batch = watcher.next().await.unwrap().unwrap();
    assert!(batch.events.is_empty());
    assert_eq!(
        batch.revision, head,
        "progress names the revision the watcher has covered"
    );
}
