//! The watch cache: every API object in memory, kept current by one follower of the store, so
//! that lists and watches are served without loading the store.
//!
//! One task follows the local engine's change index for `/registry/` (the same head channel
//! the store's own watchers use, so it costs the writer nothing) and applies each change to a
//! map of the current objects and to a bounded window of recent events. API watches then read
//! that window: thousands of watchers share one reader of the store, and a new event costs each
//! of them a key comparison, not a store scan. A watcher that falls behind the window, or asks
//! for a revision before it, carries on from the store's own watch (which keeps the full
//! retained history and says `Compacted` when even that is gone) — see [`Feed`].
//!
//! Consistency: the cache serves what this member has applied. A list that must be current
//! (no resourceVersion) first asks the store for a linearizable read revision and waits until
//! the cache has reached it, as kube-apiserver's "consistent list from cache" does.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use raft_store::engine::Engine;
use raft_store::{
    Event, EventKind, KeySpan, KeyValue, RangeRequest, RangeResponse, Revision, StoreError,
    WatchBatch,
};
use tokio::sync::watch;

/// The part of the keyspace the cache holds: every API object.
pub const CACHED_PREFIX: &str = "/registry/";

/// How many recent events the window keeps; older watchers fall back to the store.
const WINDOW_EVENTS: usize = 20_000;

/// How often an idle cache watcher reports progress (bookmarks).
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

struct CachedEvent {
    revision: Revision,
    kind: EventKind,
    kv: Arc<KeyValue>,
    prev: Option<Arc<KeyValue>>,
}

#[derive(Default)]
struct CacheState {
    objects: BTreeMap<Vec<u8>, Arc<KeyValue>>,
    events: VecDeque<CachedEvent>,
    /// The window holds every event of the revisions `(horizon, revision]`.
    horizon: Revision,
    revision: Revision,
    /// The last revision that changed an object whose key starts with a watched prefix.
    prefix_changed: BTreeMap<&'static str, Revision>,
}

/// What the cache does to each value it reads from the store (opening sealed Secrets).
pub type Opener = Arc<dyn Fn(&mut KeyValue) + Send + Sync>;

/// Something kept in step with the cache's objects, under the cache's lock, so that it reflects
/// exactly the revision the cache has published (the node authorizer's graph): a request that
/// waited for the cache to reach a revision sees it there too.
pub trait Index: Send + Sync {
    /// Everything again from `objects` (at start, and when the cache starts over).
    fn reset(&self, objects: &mut dyn Iterator<Item = &KeyValue>);
    /// The object at `key` is now `now` (None: deleted).
    fn changed(&self, key: &[u8], now: Option<&KeyValue>);
}

pub struct WatchCache {
    engine: Engine,
    opener: Opener,
    state: RwLock<CacheState>,
    revision: watch::Sender<Revision>,
    /// Prefixes whose last change revision is tracked (for the RBAC rules' memo).
    tracked: &'static [&'static str],
    /// How many events the window keeps.
    window: usize,
    indexes: Vec<Arc<dyn Index>>,
}

impl WatchCache {
    /// Loads the current objects from the local engine and starts following it.
    pub fn start(
        engine: Engine,
        tracked: &'static [&'static str],
        opener: Opener,
        indexes: Vec<Arc<dyn Index>>,
    ) -> Arc<WatchCache> {
        Self::with_window(engine, tracked, opener, indexes, WINDOW_EVENTS)
    }

    /// [`WatchCache::start`] with a window of `window` events.
    pub fn with_window(
        engine: Engine,
        tracked: &'static [&'static str],
        opener: Opener,
        indexes: Vec<Arc<dyn Index>>,
        window: usize,
    ) -> Arc<WatchCache> {
        let cache = Arc::new(WatchCache {
            engine,
            opener,
            state: RwLock::new(CacheState::default()),
            revision: watch::channel(0).0,
            tracked,
            window,
            indexes,
        });
        cache.reload();
        tokio::spawn(follow(Arc::downgrade(&cache)));
        cache
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, CacheState> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, CacheState> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The revision the cache reflects.
    pub fn revision(&self) -> Revision {
        self.read().revision
    }

    /// The revision of the last change under `prefix` (one of the tracked prefixes).
    pub fn changed_at(&self, prefix: &str) -> Revision {
        self.read().prefix_changed.get(prefix).copied().unwrap_or(0)
    }

    /// Starts over from the engine's current contents: at start, and when the engine moved past
    /// what the cache could follow (a snapshot installed on this member after compaction).
    fn reload(&self) {
        let span = KeySpan::prefix(CACHED_PREFIX);
        let resp = match self.engine.range(&RangeRequest::new(span)) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!("watch cache: loading the objects failed: {e}");
                return;
            }
        };
        let mut st = self.write();
        st.objects = resp
            .kvs
            .into_iter()
            .map(|mut kv| {
                (self.opener)(&mut kv);
                (kv.key.clone(), Arc::new(kv))
            })
            .collect();
        for index in &self.indexes {
            index.reset(&mut st.objects.values().map(|kv| kv.as_ref()));
        }
        st.events.clear();
        st.horizon = resp.revision;
        st.revision = resp.revision;
        for p in self.tracked {
            st.prefix_changed.insert(p, resp.revision);
        }
        drop(st);
        self.revision.send_replace(resp.revision);
    }

    fn apply(&self, batch: WatchBatch) {
        let mut st = self.write();
        for mut ev in batch.events {
            open_event(&self.opener, &mut ev);
            let revision = ev.kv.mod_revision;
            let prev = ev.prev_kv.map(Arc::new);
            let kv = Arc::new(ev.kv);
            match ev.kind {
                EventKind::Put => st.objects.insert(kv.key.clone(), kv.clone()),
                EventKind::Delete => st.objects.remove(&kv.key),
            };
            let now = (ev.kind == EventKind::Put).then_some(kv.as_ref());
            for index in &self.indexes {
                index.changed(&kv.key, now);
            }
            for p in self.tracked {
                if kv.key.starts_with(p.as_bytes()) {
                    st.prefix_changed.insert(p, revision);
                }
            }
            st.events.push_back(CachedEvent {
                revision,
                kind: ev.kind,
                kv,
                prev,
            });
        }
        // Trim whole revisions, so the window always holds all events of the ones it covers.
        while st.events.len() > self.window {
            let oldest = st.events.front().map(|e| e.revision).unwrap_or(0);
            while st.events.front().is_some_and(|e| e.revision == oldest) {
                st.events.pop_front();
            }
            st.horizon = oldest;
        }
        st.revision = batch.revision;
        drop(st);
        self.revision.send_replace(batch.revision);
    }

    /// Waits until the cache reflects `revision`; false if it did not within `timeout`.
    pub async fn wait_for(&self, revision: Revision, timeout: Duration) -> bool {
        let mut rx = self.revision.subscribe();
        let reached = tokio::time::timeout(timeout, rx.wait_for(|r| *r >= revision)).await;
        matches!(reached, Ok(Ok(_)))
    }

    /// One object as of the cache's revision.
    pub fn get(&self, key: &str) -> Option<Arc<KeyValue>> {
        self.read().objects.get(key.as_bytes()).cloned()
    }

    /// The objects under `prefix` (after `after`, if given) as of the cache's revision.
    pub fn range(&self, prefix: &str, after: Option<&[u8]>) -> RangeResponse {
        let st = self.read();
        let span = KeySpan::prefix(prefix);
        let lower = match after {
            Some(a) => std::ops::Bound::Excluded(a.to_vec()),
            None => std::ops::Bound::Included(prefix.as_bytes().to_vec()),
        };
        let kvs: Vec<KeyValue> = st
            .objects
            .range((lower, std::ops::Bound::Unbounded))
            .take_while(|(k, _)| span.contains(k))
            .map(|(_, kv)| KeyValue::clone(kv))
            .collect();
        RangeResponse {
            count: kvs.len() as u64,
            kvs,
            more: false,
            revision: st.revision,
        }
    }

    /// A watch of `prefix` from revision `from` (exclusive of nothing: events at `from` and later).
    pub fn watch(self: &Arc<Self>, prefix: String, from: Revision) -> CacheWatcher {
        CacheWatcher {
            cache: self.clone(),
            rx: self.revision.subscribe(),
            span: KeySpan::prefix(prefix),
            next: from,
        }
    }
}

/// Follows the engine's head until the cache is dropped or the store shuts down.
async fn follow(cache: std::sync::Weak<WatchCache>) {
    let Some(mut heads) = cache.upgrade().map(|c| c.engine.subscribe()) else {
        return;
    };
    let span = KeySpan::prefix(CACHED_PREFIX);
    loop {
        let head = *heads.borrow_and_update();
        let Some(c) = cache.upgrade() else { return };
        let next = c.revision() + 1;
        if next <= head.revision {
            match c.engine.changes_since(&span, next, 1024) {
                Ok(batch) => c.apply(batch),
                Err(StoreError::Compacted { .. }) => c.reload(),
                Err(e) => {
                    tracing::error!("watch cache: following the store failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            continue;
        }
        drop(c);
        if heads.changed().await.is_err() {
            return;
        }
    }
}

/// Why a cache watcher cannot go on: the revision it needs is older than the window.
#[derive(Debug)]
pub struct OutOfWindow {
    pub from: Revision,
}

/// One API watch reading the cache's window of events.
pub struct CacheWatcher {
    cache: Arc<WatchCache>,
    rx: watch::Receiver<Revision>,
    span: KeySpan,
    next: Revision,
}

impl CacheWatcher {
    /// The next batch of events (or, after an idle while, an empty progress batch).
    pub async fn next(&mut self) -> Option<Result<WatchBatch, OutOfWindow>> {
        loop {
            let _ = *self.rx.borrow_and_update();
            {
                let st = self.cache.read();
                if self.next <= st.revision {
                    if self.next <= st.horizon {
                        return Some(Err(OutOfWindow { from: self.next }));
                    }
                    let first = st.events.partition_point(|e| e.revision < self.next);
                    let events: Vec<Event> = st
                        .events
                        .range(first..)
                        .filter(|e| self.span.contains(&e.kv.key))
                        .map(|e| Event {
                            kind: e.kind,
                            kv: KeyValue::clone(&e.kv),
                            prev_kv: e.prev.as_deref().cloned(),
                        })
                        .collect();
                    let revision = st.revision;
                    self.next = revision + 1;
                    if !events.is_empty() {
                        return Some(Ok(WatchBatch { events, revision }));
                    }
                    continue;
                }
            }
            tokio::select! {
                changed = self.rx.changed() => if changed.is_err() { return None },
                _ = tokio::time::sleep(PROGRESS_EVERY) => {
                    return Some(Ok(WatchBatch { events: Vec::new(), revision: self.next - 1 }));
                }
            }
        }
    }
}

fn open_event(opener: &Opener, ev: &mut Event) {
    opener(&mut ev.kv);
    if let Some(prev) = ev.prev_kv.as_mut() {
        opener(prev);
    }
}

/// Where a watch's events come from: the cache's window while it can, then the store.
pub enum Feed {
    Cache(CacheWatcher),
    Store(raft_store::watch::Watcher, Opener),
}

impl Feed {
    pub async fn next(
        &mut self,
        store: &raft_store::StoreNode,
    ) -> Option<Result<WatchBatch, StoreError>> {
        loop {
            match self {
                Feed::Store(w, opener) => {
                    let mut batch = w.next().await;
                    if let Some(Ok(b)) = batch.as_mut() {
                        b.events.iter_mut().for_each(|ev| open_event(opener, ev));
                    }
                    return batch;
                }
                Feed::Cache(w) => match w.next().await? {
                    Ok(batch) => return Some(Ok(batch)),
                    Err(OutOfWindow { from }) => {
                        let span = w.span.clone();
                        let opener = w.cache.opener.clone();
                        *self = Feed::Store(store.watch(span, from), opener);
                    }
                },
            }
        }
    }
}
