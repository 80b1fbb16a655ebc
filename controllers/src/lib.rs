//! Reconcile loops that turn declared state into running state. They run on the Raft leader
//! only ([`run_while_leader`]) and talk to the cluster only through the API, like any client.
//!
//! Machinery is kube-rs's runtime: reflectors (list + watch into a shared cache) and
//! `Controller` (a work queue per kind with rate-limited retries, reconciles triggered by the
//! object and by the objects it owns). Each controller's decision is a pure `plan` function
//! over the cache, tested alone; its `reconcile` writes the plan through the API.
//!
//! - [`replicaset`]: N pods of a template, adoption, least-useful-first deletion.
//! - [`deployment`]: ReplicaSets per template, RollingUpdate and Recreate, revisions.
//! - [`gc`]: the garbage collector over ownerReferences; default ServiceAccounts.

pub mod deployment;
pub mod gc;
pub mod replicaset;
pub mod selector;

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::{reflector, watcher, Controller, WatchStreamExt};
use kube::Api;

/// A cache of every object of a kind, kept by list + watch in a task of `tasks` (so it stops
/// when the controllers do).
async fn cache<K>(api: Api<K>, tasks: &mut tokio::task::JoinSet<()>) -> reflector::Store<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store();
    let stream = reflector(writer, watcher(api, watcher::Config::default()))
        .default_backoff()
        .touched_objects()
        .for_each(|_| async {});
    tasks.spawn(stream);
    // Deciding from an empty cache would create what already exists.
    let _ = store.wait_until_ready().await;
    store
}

/// Runs every controller until the returned future is dropped.
pub async fn run(client: kube::Client) {
    // Dropped (and its tasks aborted) when this future is.
    let mut caches = tokio::task::JoinSet::new();
    let pods = cache(Api::<Pod>::all(client.clone()), &mut caches).await;
    let replicasets = cache(Api::<ReplicaSet>::all(client.clone()), &mut caches).await;
    let rs_ctx = Arc::new(replicaset::Context {
        client: client.clone(),
        pods,
        expectations: Default::default(),
    });
    let rs = Controller::new(
        Api::<ReplicaSet>::all(client.clone()),
        watcher::Config::default(),
    )
    .owns(Api::<Pod>::all(client.clone()), watcher::Config::default())
    .run(replicaset::reconcile, replicaset::error_policy, rs_ctx)
    .for_each(|_| async {});
    let d_ctx = Arc::new(deployment::Context {
        client: client.clone(),
        replicasets,
    });
    let deployments = Controller::new(
        Api::<Deployment>::all(client.clone()),
        watcher::Config::default(),
    )
    .owns(
        Api::<ReplicaSet>::all(client.clone()),
        watcher::Config::default(),
    )
    .run(deployment::reconcile, deployment::error_policy, d_ctx)
    .for_each(|_| async {});
    tokio::join!(rs, deployments, gc::run(client.clone()));
    drop(caches);
}

/// Runs the controllers whenever `is_leader` says this member leads, and stops them when it
/// no longer does, so exactly one member reconciles at a time.
pub async fn run_while_leader<F>(client: kube::Client, is_leader: F)
where
    F: Fn() -> bool + Send + 'static,
{
    let mut running: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        let leader = is_leader();
        if running.as_ref().is_some_and(|t| t.is_finished()) {
            tracing::warn!("controllers: stopped unexpectedly; restarting");
            running = None;
        }
        match (&running, leader) {
            (None, true) => {
                tracing::info!("controllers: this member leads; starting");
                running = Some(tokio::spawn(run(client.clone())));
            }
            (Some(task), false) => {
                tracing::info!("controllers: leadership moved; stopping");
                task.abort();
                running = None;
            }
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
