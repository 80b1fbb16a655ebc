//! A cache of one kind kept by a list + watch (kube's reflector), which tells its owner of every
//! change. The node's proxy keeps its Services, EndpointSlices, Nodes, NetworkPolicies, Pods and
//! Namespaces this way, marking which kind changed; it decides when to read the caches.

use futures_util::StreamExt;
use kube::runtime::reflector::store::Writer;
use kube::runtime::{reflector, watcher, WatchStreamExt};
use kube::Api;

/// Keeps `writer`'s cache of `api` in a task, calling `changed` after each change reaches it.
/// A watch error is retried with back-off (and logged at debug: a restarting API server is
/// expected).
pub fn spawn<K>(api: Api<K>, writer: Writer<K>, changed: impl Fn() + Send + Sync + 'static)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    spawn_with(api, watcher::Config::default(), writer, changed)
}

/// [`spawn`], watching only what `config` selects (a label selector).
pub fn spawn_with<K>(
    api: Api<K>,
    config: watcher::Config,
    writer: Writer<K>,
    changed: impl Fn() + Send + Sync + 'static,
) where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    tokio::spawn(async move {
        let stream = reflector::reflector(writer, watcher(api, config))
            .default_backoff()
            .touched_objects();
        futures_util::pin_mut!(stream);
        while let Some(item) = stream.next().await {
            if let Err(e) = item {
                tracing::debug!("watch: {e}");
            }
            changed();
        }
    });
}
