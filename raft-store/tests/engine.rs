//! MVCC semantics of the engine: revisions, txn, ranges at past revisions, paging, watch
//! resume, compaction, snapshots. (What survives a restart is tested end to end, with real
//! processes, in `cli/tests/store_cluster.rs`.)

use raft_store::engine::{Applied, Command, Engine, Head};
use raft_store::{
    Compare, CompareOp, EventKind, KeySpan, Op, OpResult, RangeRequest, StoreError, Txn,
    TxnResponse,
};

struct Fixture {
    engine: Engine,
    applied: u64,
}

impl Fixture {
    fn new() -> Self {
        Fixture {
            engine: Engine::new(),
            applied: 0,
        }
    }

    fn apply(&mut self, cmd: Command) -> Applied {
        self.applied += 1;
        let marker = self.applied.to_be_bytes();
        self.engine.apply(&[Some(cmd)], &marker).remove(0)
    }

    fn txn(&mut self, txn: Txn) -> TxnResponse {
        match self.apply(Command::Txn(txn)) {
            Applied::Txn(r) => r,
            other => panic!("expected a txn result, got {other:?}"),
        }
    }

    fn put(&mut self, k: &str, v: &str) -> u64 {
        self.txn(Txn::put(k, v)).revision
    }

    fn get(&self, k: &str, rev: u64) -> Result<Option<(String, u64, u64, u64)>, StoreError> {
        let resp = self
            .engine
            .range(&RangeRequest::new(KeySpan::key(k)).at(rev))?;
        Ok(resp.kvs.first().map(|kv| {
            (
                String::from_utf8(kv.value.clone()).unwrap(),
                kv.create_revision,
                kv.mod_revision,
                kv.version,
            )
        }))
    }

    fn keys(&self, req: RangeRequest) -> Vec<String> {
        self.engine
            .range(&req)
            .unwrap()
            .kvs
            .iter()
            .map(|kv| String::from_utf8(kv.key.clone()).unwrap())
            .collect()
    }
}

#[test]
fn every_write_gets_the_next_revision_and_keys_track_create_mod_version() {
    let mut f = Fixture::new();
    assert_eq!(f.put("a", "1"), 1);
    assert_eq!(f.put("b", "1"), 2);
    assert_eq!(f.put("a", "2"), 3);
    assert_eq!(f.get("a", 0).unwrap(), Some(("2".into(), 1, 3, 2)));
    // A txn that writes several keys uses one revision for all of them.
    let r = f.txn(Txn::put("c", "1").and_then(Op::put("d", "1")));
    assert_eq!(r.revision, 4);
    assert_eq!(f.get("d", 0).unwrap().unwrap().2, 4);
    // A txn that writes nothing does not move the revision.
    let r = f.txn(Txn {
        success: vec![Op::get("a")],
        ..Txn::default()
    });
    assert_eq!(r.revision, 4);
    assert_eq!(
        f.engine.head(),
        Head {
            revision: 4,
            compact_revision: 0
        }
    );
    // Delete then re-create: create_revision and version restart.
    f.txn(Txn::delete("a"));
    assert_eq!(f.get("a", 0).unwrap(), None);
    let rev = f.put("a", "3");
    assert_eq!(f.get("a", 0).unwrap(), Some(("3".into(), rev, rev, 1)));
}

#[test]
fn reads_at_past_revisions_see_the_past() {
    let mut f = Fixture::new();
    f.put("k", "v1"); // 1
    f.put("other", "x"); // 2
    f.put("k", "v2"); // 3
    f.txn(Txn::delete("k")); // 4
    assert_eq!(f.get("k", 1).unwrap().unwrap().0, "v1");
    assert_eq!(f.get("k", 2).unwrap().unwrap().0, "v1");
    assert_eq!(f.get("k", 3).unwrap().unwrap().0, "v2");
    assert_eq!(f.get("k", 4).unwrap(), None);
    assert_eq!(f.get("k", 0).unwrap(), None);
    assert_eq!(
        f.get("k", 9).unwrap_err(),
        StoreError::FutureRevision {
            requested: 9,
            current: 4
        }
    );
    assert_eq!(
        f.keys(RangeRequest::new(KeySpan::prefix("")).at(3)),
        vec!["k", "other"]
    );
}

#[test]
fn txn_compares_choose_the_branch_atomically() {
    let mut f = Fixture::new();
    f.put("k", "v1");
    // Optimistic concurrency: update only if nobody wrote since revision 1.
    let ok = f.txn(Txn::put("k", "v2").when(Compare::mod_revision("k", CompareOp::Equal, 1)));
    assert!(ok.succeeded);
    let stale = f.txn(
        Txn::put("k", "v3")
            .when(Compare::mod_revision("k", CompareOp::Equal, 1))
            .or_else(Op::get("k")),
    );
    assert!(!stale.succeeded);
    assert_eq!(stale.range(0).unwrap().kvs[0].value, b"v2");
    assert_eq!(f.get("k", 0).unwrap().unwrap().0, "v2");
    // Create-if-absent.
    let created = f.txn(Txn::put("new", "x").when(Compare::exists("new", false)));
    assert!(created.succeeded);
    let again = f.txn(Txn::put("new", "y").when(Compare::exists("new", false)));
    assert!(!again.succeeded);
    // Value and version compares; all must hold.
    let both = f.txn(
        Txn::put("k", "v4")
            .when(Compare::value("k", CompareOp::Equal, "v2"))
            .when(Compare::version("k", CompareOp::Equal, 99)),
    );
    assert!(!both.succeeded);
    // Ops inside a txn see the txn's earlier writes.
    let r = f.txn(Txn::put("t", "1").and_then(Op::get("t")));
    assert_eq!(r.range(1).unwrap().kvs[0].value, b"1");
    // Put returns the previous value; delete returns what it deleted.
    let r = f.txn(Txn::put("k", "v5"));
    assert!(matches!(&r.results[0], OpResult::Put { prev: Some(p) } if p.value == b"v2"));
    let r = f.txn(Txn {
        success: vec![Op::Delete {
            span: KeySpan::prefix(""),
        }],
        ..Txn::default()
    });
    assert!(matches!(&r.results[0], OpResult::Delete { deleted } if deleted.len() == 3));
}

#[test]
fn ranges_page_with_limit_and_continue_at_one_revision() {
    let mut f = Fixture::new();
    for i in 0..10 {
        f.put(&format!("/p/{i}"), "v");
    }
    f.put("/q/0", "v");
    let first = RangeRequest::new(KeySpan::prefix("/p/")).limit(4);
    let mut page = f.engine.range(&first).unwrap();
    assert_eq!(page.count, 10);
    assert!(page.more);
    let mut seen: Vec<Vec<u8>> = page.kvs.iter().map(|kv| kv.key.clone()).collect();
    let mut req = first.clone();
    // Writes between pages do not show up: pages are pinned to the first page's revision.
    f.put("/p/00", "late");
    while let Some(next) = req.next_page(&page) {
        page = f.engine.range(&next).unwrap();
        seen.extend(page.kvs.iter().map(|kv| kv.key.clone()));
        req = next;
    }
    assert_eq!(seen.len(), 10);
    assert!(!seen.contains(&b"/p/00".to_vec()));
    let count = f
        .engine
        .range(&RangeRequest::new(KeySpan::prefix("/p/")).count_only())
        .unwrap();
    assert_eq!((count.count, count.kvs.len()), (11, 0));
    let r = KeySpan::Range {
        start: b"/p/3".to_vec(),
        end: Some(b"/p/6".to_vec()),
    };
    assert_eq!(f.keys(RangeRequest::new(r)), vec!["/p/3", "/p/4", "/p/5"]);
}

#[test]
fn changes_resume_from_any_revision_with_previous_values() {
    let mut f = Fixture::new();
    f.put("/w/a", "1"); // 1
    f.put("/x/b", "1"); // 2
    f.put("/w/a", "2"); // 3
    f.txn(Txn::delete("/w/a")); // 4
    let all = f
        .engine
        .changes_since(&KeySpan::prefix("/w/"), 1, 100)
        .unwrap();
    assert_eq!(all.revision, 4);
    let kinds: Vec<_> = all
        .events
        .iter()
        .map(|e| (e.kind, e.kv.mod_revision))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (EventKind::Put, 1),
            (EventKind::Put, 3),
            (EventKind::Delete, 4)
        ]
    );
    assert_eq!(all.events[1].prev_kv.as_ref().unwrap().value, b"1");
    assert_eq!(all.events[2].prev_kv.as_ref().unwrap().value, b"2");
    // Resuming in the middle gives exactly the rest.
    let rest = f
        .engine
        .changes_since(&KeySpan::prefix("/w/"), 3, 100)
        .unwrap();
    assert_eq!(rest.events.len(), 2);
    // Limited batches tile the history without gaps.
    let first = f.engine.changes_since(&KeySpan::prefix(""), 1, 2).unwrap();
    assert_eq!((first.revision, first.events.len()), (2, 2));
    let second = f
        .engine
        .changes_since(&KeySpan::prefix(""), first.revision + 1, 2)
        .unwrap();
    assert_eq!((second.revision, second.events.len()), (4, 2));
    // Past the head: nothing yet.
    let none = f.engine.changes_since(&KeySpan::prefix(""), 5, 2).unwrap();
    assert_eq!((none.revision, none.events.len()), (4, 0));
}

#[test]
fn compaction_forgets_old_revisions_but_keeps_everything_after() {
    let mut f = Fixture::new();
    f.put("a", "1"); // 1
    f.put("a", "2"); // 2
    f.put("b", "1"); // 3
    f.txn(Txn::delete("b")); // 4
    f.put("a", "3"); // 5
    assert_eq!(
        f.apply(Command::Compact(4)),
        Applied::Compacted { revision: 4 }
    );
    assert_eq!(
        f.engine.head(),
        Head {
            revision: 5,
            compact_revision: 4
        }
    );
    assert!(matches!(
        f.get("a", 3),
        Err(StoreError::Compacted {
            requested: 3,
            compact_revision: 4
        })
    ));
    // The compaction revision itself stays readable.
    assert_eq!(f.get("a", 4).unwrap().unwrap().0, "2");
    assert_eq!(f.get("b", 4).unwrap(), None);
    assert_eq!(f.get("a", 5).unwrap().unwrap().0, "3");
    // Watching from the compaction point or before is refused; after it works, with prev values.
    assert!(matches!(
        f.engine.changes_since(&KeySpan::prefix(""), 4, 10),
        Err(StoreError::Compacted {
            compact_revision: 4,
            ..
        })
    ));
    let after = f.engine.changes_since(&KeySpan::prefix(""), 5, 10).unwrap();
    assert_eq!(after.events.len(), 1);
    assert_eq!(after.events[0].prev_kv.as_ref().unwrap().value, b"2");
    // Compacting backwards or into the future is refused the same way on every member.
    assert!(matches!(
        f.apply(Command::Compact(3)),
        Applied::Refused(StoreError::Compacted { .. })
    ));
    assert!(matches!(
        f.apply(Command::Compact(9)),
        Applied::Refused(StoreError::FutureRevision { .. })
    ));
}

#[test]
fn export_and_import_round_trip() {
    let mut f = Fixture::new();
    f.put("a", "1");
    f.put("a", "2");
    f.put("b", "1");
    f.apply(Command::Compact(2));
    f.put("c", "1");
    let (payload, applied) = f.engine.export();
    assert_eq!(applied.unwrap(), f.applied.to_be_bytes());

    let other = Fixture::new();
    other.engine.import(&payload).unwrap();
    assert_eq!(other.engine.head(), f.engine.head());
    assert_eq!(other.engine.applied(), f.engine.applied());
    for rev in [0, 2, 3, 4] {
        let req = RangeRequest::new(KeySpan::prefix("")).at(rev);
        assert_eq!(
            other.engine.range(&req).unwrap(),
            f.engine.range(&req).unwrap(),
            "at {rev}"
        );
    }
    assert_eq!(
        other
            .engine
            .changes_since(&KeySpan::prefix(""), 3, 10)
            .unwrap(),
        f.engine.changes_since(&KeySpan::prefix(""), 3, 10).unwrap()
    );
}

#[test]
fn inverted_and_empty_spans_read_nothing_and_never_panic() {
    let mut f = Fixture::new();
    f.put("a", "1");
    f.put("c", "1");
    let inverted = KeySpan::Range {
        start: b"c".to_vec(),
        end: Some(b"a".to_vec()),
    };
    assert_eq!(
        f.engine
            .range(&RangeRequest::new(inverted.clone()))
            .unwrap()
            .count,
        0
    );
    let r = f.txn(Txn {
        success: vec![Op::Delete { span: inverted }],
        ..Txn::default()
    });
    assert_eq!(r.revision, 2, "deleting nothing adds no revision");
    let empty = KeySpan::Range {
        start: b"b".to_vec(),
        end: Some(b"b".to_vec()),
    };
    assert_eq!(
        f.engine.changes_since(&empty, 1, 10).unwrap().events.len(),
        0
    );
}

#[test]
fn a_corrupt_snapshot_is_an_error_not_a_panic() {
    let f = Fixture::new();
    let err = f.engine.import(b"not a snapshot").unwrap_err();
    assert!(err.to_string().contains("corrupt snapshot"), "{err}");
}

/// The commands of the concurrent-export test: puts over 20,000 keys (several export chunks),
/// deletes, and a compaction every 500 commands.
fn mixed_command(i: u64, revision_hint: u64) -> Command {
    let key = format!("k{:05}", (i * 7919) % 20_000);
    match i % 10 {
        _ if i % 500 == 499 => Command::Compact(revision_hint.saturating_sub(100).max(1)),
        0 => Command::Txn(Txn::delete(key.as_bytes())),
        _ => Command::Txn(Txn::put(key.as_bytes(), format!("v{i}").as_bytes())),
    }
}

/// A snapshot is built a chunk at a time while applies go on between chunks (so a million keys
/// do not stop the world): what it holds must still be the state at exactly one applied index,
/// with writes, deletes and compactions landing mid-export, and identical to what a member that
/// applied the same commands up to that index holds.
#[test]
fn a_snapshot_built_while_writes_and_compactions_apply_is_the_state_at_one_index() {
    let engine = Engine::new();
    let mut next = 0u64;
    let apply = |engine: &Engine, next: &mut u64| {
        let cmd = mixed_command(*next, engine.head().revision);
        *next += 1;
        engine.apply(&[Some(cmd)], &next.to_be_bytes());
    };
    for _ in 0..12_000 {
        apply(&engine, &mut next);
    }
    let started_at = next;
    // 37 commands each time the export lets go of the lock (every 100 keys).
    let (payload, marker) =
        engine.export_in_chunks(100, &mut || (0..37).for_each(|_| apply(&engine, &mut next)));
    let n = u64::from_be_bytes(marker.unwrap().try_into().unwrap());
    assert_eq!(n, started_at, "the snapshot is of the state when it began");
    assert!(
        next - started_at > 1_000,
        "compactions must have landed mid-export ({} commands did)",
        next - started_at
    );

    let reference = Engine::new();
    let mut replayed = 0u64;
    while replayed < n {
        apply(&reference, &mut replayed);
    }
    let restored = Engine::new();
    restored.import(&payload).unwrap();
    assert_eq!(restored.head(), reference.head());
    let all = RangeRequest::new(KeySpan::prefix(""));
    assert_eq!(
        restored.range(&all).unwrap(),
        reference.range(&all).unwrap()
    );
    let at_snapshot = reference.head();
    let head = at_snapshot;
    for rev in [
        head.compact_revision,
        (head.compact_revision + head.revision) / 2,
    ] {
        assert_eq!(
            restored.range(&all.clone().at(rev)).unwrap(),
            reference.range(&all.clone().at(rev)).unwrap(),
            "at revision {rev}"
        );
    }
    let from = head.compact_revision + 1;
    assert_eq!(
        restored
            .changes_since(&KeySpan::prefix(""), from, 1_000_000)
            .unwrap(),
        reference
            .changes_since(&KeySpan::prefix(""), from, 1_000_000)
            .unwrap()
    );
    // And both go on alike: a member that installed the snapshot and then applied the commands
    // after it is the member that applied everything.
    let (mut at_reference, mut at_restored) = (n, n);
    while at_reference < next {
        apply(&reference, &mut at_reference);
        apply(&restored, &mut at_restored);
    }
    let head = reference.head();
    assert_eq!(restored.head(), head);
    for rev in [
        0,
        head.compact_revision,
        (head.compact_revision + head.revision) / 2,
    ] {
        assert_eq!(
            restored.range(&all.clone().at(rev)).unwrap(),
            reference.range(&all.clone().at(rev)).unwrap(),
            "at revision {rev} after replaying the rest"
        );
    }
    // The history the compactions mid-export spared is pruned once the export ends.
    let live = engine.head();
    assert!(live.compact_revision > at_snapshot.compact_revision);
    assert!(engine
        .range(&all.clone().at(live.compact_revision - 1))
        .is_err());
}
