//! The scheduler: places pending pods on nodes, as kube-scheduler does, on the Raft leader
//! beside the controllers.
//!
//! - [`cluster`]: the incremental picture of nodes and placed pods (pure);
//! - [`schedule`]: filters and scores for one pod (pure, benchmarked alone);
//! - [`queue`]: the priority queue with back-off and parking for unschedulable pods (pure);
//! - [`run`]: the I/O around them — informers on Nodes, Pods and RuntimeClasses, binding
//!   through `pods/binding`, FailedScheduling events and the PodScheduled condition.
//!
//! A decision is "assumed" into the cluster picture at once, so the next pod sees it, and
//! the binding is written in the background; a refused binding forgets the assumption and
//! the pod backs off.

pub mod cluster;
pub mod queue;
pub mod schedule;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::node::v1::RuntimeClass;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, ResourceExt};
use kubeclient::events::{Recorder, Type};
use kubeclient::informer::Informer;
use serde_json::json;
use tokio::sync::{Notify, Semaphore};

use cluster::{NodeState, PodInfo};
use queue::Queue;
use schedule::Scheduler;

/// The name pods ask for in spec.schedulerName (the default).
pub const NAME: &str = "default-scheduler";

/// Bindings written at once; each is one Raft write, so many in flight batch well. Kept well
/// under the API's cap on writes in flight (`apiserver::inflight::MAX_WRITES`, 200), which the
/// scheduler shares with every other client: past it, everyone's writes get 429.
const CONCURRENT_BINDS: usize = 128;
/// Reports of unschedulable pods (status and event) in flight at once.
const CONCURRENT_REPORTS: usize = 8;

struct State {
    scheduler: Scheduler,
    queue: Queue,
}

struct Shared {
    state: Mutex<State>,
    wake: Notify,
    client: kube::Client,
    events: Recorder,
    runtime_classes: Store<RuntimeClass>,
    /// Pods as last seen, for events and status (by key).
    pods: Store<Pod>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn pod_info(&self, pod: &Pod) -> PodInfo {
        PodInfo::from_pod(pod, |class| {
            self.runtime_classes
                .get(&ObjectRef::new(class))
                .map(|rc| rc.handler.clone())
        })
    }
}

/// Keeps the cluster picture and the queue up to date from the pod watch.
fn on_pod(shared: &Shared, pod: &Pod, deleted: bool) {
    let info = Arc::new(shared.pod_info(pod));
    let mut st = shared.lock();
    let gone = deleted || api::pods::terminal(pod);
    match (&info.node_name, gone) {
        (_, true) => {
            st.queue.remove(&info.key);
            if st.scheduler.cluster.is_placed(&info.key) {
                st.scheduler.cluster.remove_pod(&info.key);
                st.queue.cluster_changed(Instant::now());
                shared.wake.notify_one();
            }
        }
        (Some(node), false) => {
            st.queue.remove(&info.key);
            let node = node.clone();
            st.scheduler.cluster.place(info, &node, false);
        }
        (None, false) => {
            // A pending pod already decided on (its binding on the way) is not tried again.
            let ours = info.scheduler_name == NAME;
            let terminating = pod.metadata.deletion_timestamp.is_some();
            if ours && !terminating && !st.scheduler.cluster.is_assumed(&info.key) {
                st.queue.add(info);
                shared.wake.notify_one();
            }
        }
    }
}

fn on_node(shared: &Shared, node: &Node, deleted: bool) {
    let mut st = shared.lock();
    let changed = if deleted {
        st.scheduler.cluster.remove_node(&node.name_any());
        false // fewer nodes fit no more pods
    } else {
        st.scheduler.cluster.upsert_node(NodeState::from_node(node))
    };
    // Only a change that can make a parked pod fit releases them: agents re-post their
    // status every minute, which must not retry every unschedulable pod each time.
    if changed {
        st.queue.cluster_changed(Instant::now());
        shared.wake.notify_one();
    }
}

async fn bind(shared: Arc<Shared>, pod: Arc<PodInfo>, node: String) {
    let (ns, name) = pod.key.split_once('/').unwrap_or(("default", &pod.key));
    let binding = json!({
        "apiVersion": "v1", "kind": "Binding",
        "metadata": {"name": name, "namespace": ns, "uid": pod.uid},
        "target": {"apiVersion": "v1", "kind": "Node", "name": node},
    });
    let api: Api<Pod> = Api::namespaced(shared.client.clone(), ns);
    let body = serde_json::to_vec(&binding).expect("serialises");
    let result = api
        .create_subresource::<serde_json::Value>("binding", name, &PostParams::default(), body)
        .await;
    let cached = shared.pods.get(&ObjectRef::new(name).within(ns));
    match result {
        Ok(_) => {
            shared.lock().queue.done(&pod.key);
            if let Some(p) = cached {
                let msg = format!("Successfully assigned {ns}/{name} to {node}");
                shared.events.record(&*p, Type::Normal, "Scheduled", &msg);
            }
        }
        Err(e) => {
            let mut st = shared.lock();
            // Only an assumption is undone: if the watch has meanwhile shown the pod bound
            // (the write committed though the answer failed), that placement stands.
            if st.scheduler.cluster.is_assumed(&pod.key) {
                st.scheduler.cluster.remove_pod(&pod.key);
            }
            match &e {
                // Gone, or bound by someone else: nothing to retry.
                kube::Error::Api(s) if s.code == 404 || s.code == 409 => st.queue.done(&pod.key),
                _ => {
                    tracing::warn!("scheduler: cannot bind {}: {e}", pod.key);
                    st.queue.retry(&pod.key, Instant::now());
                }
            }
            drop(st);
            shared.wake.notify_one();
        }
    }
}

/// Tells the pod's owner why it waits: a FailedScheduling event and the PodScheduled
/// condition, as kube-scheduler writes them.
async fn report_unschedulable(shared: Arc<Shared>, key: String, message: String) {
    let Some((ns, name)) = key.split_once('/') else {
        return;
    };
    let Some(pod) = shared.pods.get(&ObjectRef::new(name).within(ns)) else {
        return;
    };
    shared
        .events
        .record(&*pod, Type::Warning, "FailedScheduling", &message);
    let already = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "PodScheduled"))
        .is_some_and(|c| c.status == "False" && c.message.as_deref() == Some(&message));
    if already {
        return;
    }
    let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let patch = json!({"status": {"conditions": [{"type": "PodScheduled", "status": "False",
        "reason": "Unschedulable", "message": message, "lastProbeTime": null,
        "lastTransitionTime": now}]}});
    let api: Api<Pod> = Api::namespaced(shared.client.clone(), ns);
    if let Err(e) = api
        .patch_status(name, &PatchParams::default(), &Patch::Strategic(&patch))
        .await
    {
        tracing::debug!("scheduler: cannot update {key}'s status: {e}");
    }
}

/// The scheduling loop: pop, decide, assume, bind in the background.
async fn schedule_loop(shared: Arc<Shared>) {
    let binds = Arc::new(Semaphore::new(CONCURRENT_BINDS));
    // Thousands of pods that fit nowhere must not become thousands of concurrent status writes
    // (the API's cap would answer those, and everyone else, with 429).
    let reports = Arc::new(Semaphore::new(CONCURRENT_REPORTS));
    loop {
        let next = {
            let mut st = shared.lock();
            let now = Instant::now();
            st.queue.tick(now);
            match st.queue.pop(now) {
                Some(pod) => {
                    let State { scheduler, queue } = &mut *st;
                    match scheduler.pick(&pod) {
                        Ok(node) => {
                            scheduler.cluster.place(pod.clone(), &node, true);
                            Ok((pod, node))
                        }
                        Err(fit) => {
                            queue.unschedulable(&pod.key, now);
                            Err(Some((pod.key.clone(), fit.to_string())))
                        }
                    }
                }
                None => Err(None),
            }
        };
        match next {
            Ok((pod, node)) => {
                let permit = binds.clone().acquire_owned().await.expect("never closed");
                let shared = shared.clone();
                tokio::spawn(async move {
                    bind(shared, pod, node).await;
                    drop(permit);
                });
            }
            Err(Some((key, message))) => {
                tracing::debug!("scheduler: {key}: {message}");
                let permit = reports.clone().acquire_owned().await.expect("never closed");
                let shared = shared.clone();
                tokio::spawn(async move {
                    report_unschedulable(shared, key, message).await;
                    drop(permit);
                });
            }
            Err(None) => {
                let due = shared.lock().queue.next_due();
                let wait = due
                    .map(|d| d.saturating_duration_since(Instant::now()))
                    .unwrap_or(Duration::from_secs(5))
                    .min(Duration::from_secs(5));
                let _ = tokio::time::timeout(wait, shared.wake.notified()).await;
            }
        }
    }
}

/// Runs the scheduler until the returned future is dropped.
pub async fn run(client: kube::Client) {
    let mut tasks = tokio::task::JoinSet::new();
    let nodes = Informer::<Node>::start(Api::all(client.clone()), &mut tasks);
    let pods = Informer::<Pod>::start(Api::all(client.clone()), &mut tasks);
    let classes = Informer::<RuntimeClass>::start(Api::all(client.clone()), &mut tasks);
    let (node_events, pod_events) = (nodes.subscribe(), pods.subscribe());
    nodes.ready().await;
    pods.ready().await;
    classes.ready().await;
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            scheduler: Scheduler::default(),
            queue: Queue::default(),
        }),
        wake: Notify::new(),
        client: client.clone(),
        events: Recorder::component(client.clone(), NAME),
        runtime_classes: classes.store(),
        pods: pods.store(),
    });
    // The picture is complete before the first decision: the nodes, then every pod (the
    // subscriptions deliver these again; taking them twice changes nothing).
    for n in nodes.store().state() {
        on_node(&shared, &n, false);
    }
    for p in pods.store().state() {
        on_pod(&shared, &p, false);
    }
    let node_store = nodes.store();
    let s = shared.clone();
    let watch_nodes = node_events.for_each(move |n| {
        if let Ok(n) = n {
            let deleted = node_store.get(&ObjectRef::from_obj(&n)).is_none();
            on_node(&s, &n, deleted);
        }
        async {}
    });
    let pod_store = pods.store();
    let s = shared.clone();
    let watch_pods = pod_events.for_each(move |p| {
        if let Ok(p) = p {
            let deleted = pod_store.get(&ObjectRef::from_obj(&p)).is_none();
            on_pod(&s, &p, deleted);
        }
        async {}
    });
    tokio::join!(watch_nodes, watch_pods, schedule_loop(shared));
    drop(tasks);
}
