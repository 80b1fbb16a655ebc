//! Shared informers: one list + watch per kind feeding one cache, and every controller that
//! cares about the kind subscribes to it.
//!
//! Why not one watch per controller (kube's `Controller::new(...).owns(...)`): a controller
//! woken by its own watch may decide from a cache fed by another watch that has not seen the
//! change yet — a pod turns Ready, the ReplicaSet reconcile counts from a cache one event
//! behind, writes nothing and sleeps. Here a subscriber hears of an object only after the
//! cache it decides from holds it, so a reconcile never runs ahead of its cache.

use std::sync::{Arc, Mutex};

use futures_util::{Stream, StreamExt};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Api;
use tokio::sync::mpsc;

type Subscribers<K> = Arc<Mutex<Vec<mpsc::UnboundedSender<Result<K, watcher::Error>>>>>;

/// A cache of every object of one kind, with subscriptions to what touches it.
pub struct Informer<K>
where
    K: kube::Resource<DynamicType = ()> + Clone + 'static,
{
    store: Store<K>,
    subscribers: Subscribers<K>,
}

impl<K> Informer<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    /// Starts the list + watch in a task of `tasks` (so it stops when they are dropped). Take
    /// subscriptions before awaiting [`Informer::ready`], so none misses the initial list.
    pub fn start(api: Api<K>, tasks: &mut tokio::task::JoinSet<()>) -> Self {
        let (store, writer) = reflector::store();
        let subscribers: Subscribers<K> = Arc::default();
        let fanout = subscribers.clone();
        let reader = store.clone();
        // Objects of a (re)list reach the cache all at once at InitDone, so their
        // notifications wait for it too; objects the relist no longer has were deleted while
        // the watch was away, and are told as deletions (gone from the cache by then).
        let mut relisted: Vec<K> = Vec::new();
        let mut before: Vec<Arc<K>> = Vec::new();
        let events = reflector::reflector(writer, watcher(api, watcher::Config::default()))
            .default_backoff()
            .for_each(move |event| {
                let touched: Vec<K> = match event {
                    Ok(watcher::Event::Apply(o) | watcher::Event::Delete(o)) => vec![o],
                    Ok(watcher::Event::Init) => {
                        relisted.clear();
                        before = reader.state();
                        vec![]
                    }
                    Ok(watcher::Event::InitApply(o)) => {
                        relisted.push(o);
                        vec![]
                    }
                    Ok(watcher::Event::InitDone) => {
                        let kept: std::collections::HashSet<ObjectRef<K>> =
                            relisted.iter().map(ObjectRef::from_obj).collect();
                        let gone = std::mem::take(&mut before)
                            .into_iter()
                            .filter(|o| !kept.contains(&ObjectRef::from_obj(&**o)))
                            .map(|o| (*o).clone());
                        let mut touched = std::mem::take(&mut relisted);
                        touched.extend(gone);
                        touched
                    }
                    Err(e) => {
                        tracing::debug!("informer: {e}");
                        vec![]
                    }
                };
                if !touched.is_empty() {
                    let mut subs = fanout.lock().unwrap_or_else(|p| p.into_inner());
                    subs.retain(|tx| touched.iter().all(|o| tx.send(Ok(o.clone())).is_ok()));
                }
                async {}
            });
        tasks.spawn(events);
        Informer { store, subscribers }
    }

    /// The objects that touch the cache from now on (created, changed, deleted, relisted),
    /// each delivered after the cache holds it.
    pub fn subscribe(&self) -> impl Stream<Item = Result<K, watcher::Error>> + Send + 'static {
        let (tx, rx) = mpsc::unbounded_channel();
        self.subscribers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(tx);
        futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        })
    }

    pub fn store(&self) -> Store<K> {
        self.store.clone()
    }

    /// Waits for the first full list: deciding from an empty cache would create what already
    /// exists.
    pub async fn ready(&self) {
        let _ = self.store.wait_until_ready().await;
    }
}
