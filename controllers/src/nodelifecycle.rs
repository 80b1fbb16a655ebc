//! The node lifecycle controller: a node is healthy while its agent renews its Lease; past
//! the grace period its conditions become Unknown and it is tainted
//! `node.kubernetes.io/unreachable` (NoSchedule and NoExecute), or `not-ready` when the agent
//! itself reports NotReady. Pods on a NoExecute-tainted node are evicted (deleted) unless they
//! tolerate the taint, after their tolerationSeconds when they give one, so their controllers
//! recreate them on other nodes. Pods of nodes that no longer exist are removed: terminating
//! ones at once (nothing will ever confirm their end), the others after 40 s.
//!
//! Kubernetes waits 40 s before a silent node is unreachable and then 300 s (the default
//! tolerations) before evicting: a lost node's pods run elsewhere after about 6 minutes.
//! Drover's agents renew every 2 s, the grace period is 6 s and pods get no default
//! toleration, so they run elsewhere within about 10 s ([`Settings`], `drover server
//! --node-monitor-grace-period`).
//!
//! [`decide`] and [`evictions`] are pure; [`run`] is a pass every second over the informers'
//! caches.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod, Taint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::chrono::{DateTime, Utc};
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, ResourceExt};
use serde_json::json;

use kubeclient::events::{Recorder, Type};

pub use api::wellknown::{TAINT_NOT_READY as NOT_READY, TAINT_UNREACHABLE as UNREACHABLE};

#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// How long a node may be silent before it is unreachable.
    pub grace: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            grace: Duration::from_secs(6),
        }
    }
}

/// What a node should look like now.
#[derive(Debug, Default, PartialEq)]
pub struct Decision {
    /// Mark the node's conditions Unknown (its agent went silent).
    pub mark_unknown: bool,
    /// The node's new taints, when they must change.
    pub taints: Option<Vec<Taint>>,
}

fn ready_condition(node: &Node) -> Option<(String, Option<DateTime<Utc>>)> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| {
            (
                c.status.clone(),
                c.last_heartbeat_time.as_ref().map(|t| t.0),
            )
        })
}

/// The node's last sign of life: its Lease's renewTime, its Ready heartbeat, or its creation.
pub fn last_heartbeat(node: &Node, lease: Option<&Lease>) -> Option<DateTime<Utc>> {
    let renewed = lease
        .and_then(|l| l.spec.as_ref())
        .and_then(|s| s.renew_time.as_ref())
        .map(|t| t.0);
    let posted = ready_condition(node).and_then(|(_, t)| t);
    let created = node.metadata.creation_timestamp.as_ref().map(|t| t.0);
    [renewed, posted, created].into_iter().flatten().max()
}

/// `silent_for`: how long since this controller last saw the node's heartbeat change, on its
/// own clock (the times in the Lease are the node's clock; comparing them with this one's
/// would make clock skew look like silence).
pub fn decide(
    node: &Node,
    silent_for: Duration,
    now: DateTime<Utc>,
    settings: &Settings,
) -> Decision {
    let silent = silent_for > settings.grace;
    let status = ready_condition(node).map(|(s, _)| s).unwrap_or_default();
    let mut out = Decision {
        mark_unknown: silent && status != "Unknown",
        ..Default::default()
    };
    let health_taint = if silent {
        Some(UNREACHABLE)
    } else if status == "False" {
        Some(NOT_READY)
    } else {
        None
    };
    let current: Vec<Taint> = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    let ours = |t: &Taint| t.key == UNREACHABLE || t.key == NOT_READY;
    let have: BTreeSet<(String, String)> = current
        .iter()
        .filter(|t| ours(t))
        .map(|t| (t.key.clone(), t.effect.clone()))
        .collect();
    let want: BTreeSet<(String, String)> = health_taint
        .into_iter()
        .flat_map(|k| {
            [
                (k.to_string(), "NoSchedule".to_string()),
                (k.to_string(), "NoExecute".to_string()),
            ]
        })
        .collect();
    if have != want {
        let mut taints: Vec<Taint> = current
            .iter()
            .filter(|t| !ours(t) || want.contains(&(t.key.clone(), t.effect.clone())))
            .cloned()
            .collect();
        for (key, effect) in &want {
            if !have.contains(&(key.clone(), effect.clone())) {
                taints.push(Taint {
                    key: key.clone(),
                    effect: effect.clone(),
                    time_added: Some(Time(now)),
                    value: None,
                });
            }
        }
        out.taints = Some(taints);
    }
    out
}

/// Which of `pods` (on `node`) to evict now, and when the next one is due.
pub fn evictions(
    node: &Node,
    pods: &[Arc<Pod>],
    now: DateTime<Utc>,
) -> (Vec<Arc<Pod>>, Option<Duration>) {
    let taints: Vec<&Taint> = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .into_iter()
        .flatten()
        .filter(|t| t.effect == "NoExecute")
        .collect();
    let mut evict = Vec::new();
    let mut next: Option<Duration> = None;
    if taints.is_empty() {
        return (evict, next);
    }
    for pod in pods {
        if pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let tolerations = pod
            .spec
            .as_ref()
            .and_then(|s| s.tolerations.clone())
            .unwrap_or_default();
        // The pod stays for the shortest toleration among the taints (none: forever).
        let mut stay: Option<Duration> = None;
        let mut untolerated = false;
        for t in &taints {
            let matching = tolerations
                .iter()
                .find(|tol| api::placement::tolerates(std::slice::from_ref(tol), t));
            match matching {
                None => untolerated = true,
                Some(tol) => {
                    if let Some(secs) = tol.toleration_seconds {
                        let added = t.time_added.as_ref().map_or(now, |a| a.0);
                        let until = added + k8s_openapi::chrono::Duration::seconds(secs.max(0));
                        let left = (until - now).to_std().unwrap_or_default();
                        stay = Some(stay.map_or(left, |s| s.min(left)));
                    }
                }
            }
        }
        match (untolerated, stay) {
            (true, _) => evict.push(pod.clone()),
            (false, Some(left)) if left.is_zero() => evict.push(pod.clone()),
            (false, Some(left)) => next = Some(next.map_or(left, |n| n.min(left))),
            (false, None) => {}
        }
    }
    (evict, next)
}

/// Node name → (the heartbeat value last seen, when this controller first saw it).
pub type Observed = HashMap<String, (Option<DateTime<Utc>>, Instant)>;

pub struct Context {
    pub client: kube::Client,
    pub nodes: Store<Node>,
    pub leases: Store<Lease>,
    pub pods: Store<Pod>,
    pub events: Recorder,
    pub settings: Settings,
    /// Per node: the last heartbeat value seen and when (this clock) it was first seen.
    pub observed: std::sync::Mutex<Observed>,
    /// Pods bound to nodes that do not exist, by uid: since when.
    pub orphaned: std::sync::Mutex<HashMap<String, Instant>>,
}

impl Context {
    /// How long the node's heartbeat has not changed, as this controller saw it. A node first
    /// seen now (or after this member became leader) gets the full grace period.
    fn silent_for(&self, node: &str, heartbeat: Option<DateTime<Utc>>) -> Duration {
        let mut seen = self.observed.lock().unwrap_or_else(|p| p.into_inner());
        let entry = seen
            .entry(node.to_string())
            .or_insert((heartbeat, Instant::now()));
        if entry.0 != heartbeat {
            *entry = (heartbeat, Instant::now());
        }
        entry.1.elapsed()
    }
}

async fn apply(
    ctx: &Context,
    node: &Node,
    decision: Decision,
    now: DateTime<Utc>,
) -> kube::Result<()> {
    let api: Api<Node> = Api::all(ctx.client.clone());
    let name = node.name_any();
    // Taints first: their patch is a compare-and-swap on the cached resourceVersion, which
    // the status write would change.
    if let Some(taints) = decision.taints {
        // A concurrent cordon or taint by a user is not overwritten (the next pass decides
        // again).
        let patch = json!({"metadata": {"resourceVersion": node.resource_version()},
                           "spec": {"taints": taints}});
        api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
    }
    if decision.mark_unknown {
        let at = now.to_rfc3339_opts(k8s_openapi::chrono::SecondsFormat::Secs, true);
        let unknown = |t: &str| {
            json!({"type": t, "status": "Unknown", "reason": "NodeStatusUnknown",
                   "message": "Kubelet stopped posting node status.", "lastTransitionTime": at})
        };
        let mut conditions: Vec<serde_json::Value> = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .into_iter()
            .flatten()
            .map(|c| unknown(&c.type_))
            .collect();
        // A node that never posted conditions gets a Ready one, so it is marked once.
        if !conditions.iter().any(|c| c["type"] == "Ready") {
            conditions.push(unknown("Ready"));
        }
        api.patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Strategic(&json!({"status": {"conditions": conditions}})),
        )
        .await?;
        ctx.events.record(
            node,
            Type::Normal,
            "NodeNotReady",
            &format!("Node {name} status is now: NodeNotReady"),
        );
    }
    Ok(())
}

async fn evict(ctx: &Context, pod: &Pod) {
    let ns = pod.namespace().unwrap_or_else(|| "default".into());
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let node = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap_or_default();
    match api.delete(&pod.name_any(), &DeleteParams::default()).await {
        Ok(_) => {
            tracing::info!("node {node}: evicted {ns}/{}", pod.name_any());
            ctx.events.record(
                pod,
                Type::Normal,
                "TaintManagerEviction",
                &format!("Marking for deletion Pod {ns}/{}", pod.name_any()),
            );
        }
        Err(kube::Error::Api(e)) if e.code == 404 => {}
        Err(e) => tracing::warn!("cannot evict {ns}/{}: {e}", pod.name_any()),
    }
}

/// One pass over every node and the pods on them.
pub async fn pass(ctx: &Context) {
    let now = Utc::now();
    let pods = ctx.pods.state();
    let mut by_node: std::collections::HashMap<String, Vec<Arc<Pod>>> = Default::default();
    for p in &pods {
        if let Some(n) = p
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .filter(|n| !n.is_empty())
        {
            by_node.entry(n).or_default().push(p.clone());
        }
    }
    for node in ctx.nodes.state() {
        let name = node.name_any();
        let lease = ctx
            .leases
            .get(&ObjectRef::new(&name).within("kube-node-lease"));
        let silent_for = ctx.silent_for(&name, last_heartbeat(&node, lease.as_deref()));
        let decision = decide(&node, silent_for, now, &ctx.settings);
        // This node's pods are this node's business, whatever is decided below.
        let on_node = by_node.remove(&name).unwrap_or_default();
        if decision != Decision::default() {
            if let Some(taints) = &decision.taints {
                tracing::info!(
                    "node {name}: taints now {:?}",
                    taints
                        .iter()
                        .map(|t| format!("{}:{}", t.key, t.effect))
                        .collect::<Vec<_>>()
                );
            }
            if let Err(e) = apply(ctx, &node, decision, now).await {
                tracing::debug!("node {name}: {e}");
            }
            continue; // pods are looked at once the taints are in the cache
        }
        let (evict_now, _) = evictions(&node, &on_node, now);
        for pod in evict_now {
            evict(ctx, &pod).await;
        }
    }
    let nodes: std::collections::HashSet<String> =
        ctx.nodes.state().iter().map(|n| n.name_any()).collect();
    ctx.observed
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .retain(|n, _| nodes.contains(n));
    // What is left are pods of nodes that do not exist. Nothing will ever run or stop them:
    // terminating ones are removed at once, the others after a quarantine (a pod bound just
    // before its node registers is not an orphan), as Kubernetes' pod GC does.
    let orphans: Vec<Arc<Pod>> = by_node.into_values().flatten().collect();
    let uids: Vec<String> = orphans
        .iter()
        .map(|p| p.metadata.uid.clone().unwrap_or_default())
        .collect();
    let due = {
        let mut seen = ctx.orphaned.lock().unwrap_or_else(|p| p.into_inner());
        due_orphans(&mut seen, &uids, Instant::now(), ORPHAN_QUARANTINE)
    };
    for pod in orphans {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        if pod.metadata.deletion_timestamp.is_none() && !due.contains(&uid) {
            continue;
        }
        let ns = pod.namespace().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(kube::api::Preconditions {
                uid: Some(uid),
                resource_version: None,
            }),
            ..Default::default()
        };
        match api.delete(&pod.name_any(), &params).await {
            Ok(_) => tracing::info!(
                "removed {ns}/{}: its node {:?} does not exist",
                pod.name_any(),
                pod.spec.as_ref().and_then(|s| s.node_name.as_deref())
            ),
            Err(e) => tracing::debug!("cannot remove orphaned pod {ns}/{}: {e}", pod.name_any()),
        }
    }
}

/// How long a pod bound to a node that does not exist waits before it is removed.
pub const ORPHAN_QUARANTINE: Duration = Duration::from_secs(40);

/// Which of the orphaned pods `uids` have been orphans for `quarantine`; `seen` remembers
/// since when, and forgets pods that are no longer orphans.
pub fn due_orphans(
    seen: &mut HashMap<String, Instant>,
    uids: &[String],
    now: Instant,
    quarantine: Duration,
) -> Vec<String> {
    seen.retain(|uid, _| uids.contains(uid));
    uids.iter()
        .filter(|uid| now.duration_since(*seen.entry((*uid).clone()).or_insert(now)) >= quarantine)
        .cloned()
        .collect()
}

/// Runs passes every second until dropped.
pub async fn run(ctx: Arc<Context>) {
    loop {
        pass(&ctx).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::chrono::TimeZone;

    fn at(s: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + s, 0).unwrap()
    }

    fn node(ready: &str, taints: serde_json::Value) -> Node {
        serde_json::from_value(
            json!({"metadata": {"name": "n1", "creationTimestamp": "2027-01-15T08:00:00Z"},
            "spec": {"taints": taints},
            "status": {"conditions": [{"type": "Ready", "status": ready}]}}),
        )
        .unwrap()
    }

    fn pod(tolerations: serde_json::Value) -> Arc<Pod> {
        Arc::new(
            serde_json::from_value(json!({"metadata": {"name": "p", "namespace": "default"},
            "spec": {"nodeName": "n1", "containers": [{"name": "c"}], "tolerations": tolerations}}))
            .unwrap(),
        )
    }

    #[test]
    fn a_silent_node_becomes_unknown_and_unreachable_and_recovers() {
        let s = Settings::default();
        let secs = Duration::from_secs;
        let fresh = decide(&node("True", json!([])), secs(5), at(5), &s);
        assert_eq!(fresh, Decision::default());
        let silent = decide(
            &node("True", json!([{"key": "user", "effect": "NoSchedule"}])),
            secs(7),
            at(7),
            &s,
        );
        assert!(silent.mark_unknown);
        let keys: Vec<String> = silent
            .taints
            .clone()
            .unwrap()
            .iter()
            .map(|t| format!("{}:{}", t.key, t.effect))
            .collect();
        assert_eq!(
            keys,
            [
                "user:NoSchedule",
                "node.kubernetes.io/unreachable:NoExecute",
                "node.kubernetes.io/unreachable:NoSchedule"
            ]
        );
        // Once marked, nothing more to do while silent.
        let tainted = serde_json::to_value(silent.taints.unwrap()).unwrap();
        assert_eq!(
            decide(&node("Unknown", tainted.clone()), secs(9), at(9), &s),
            Decision::default()
        );
        // Heard from again: the taints go, the user's stays.
        let back = decide(&node("True", tainted), secs(1), at(11), &s);
        assert!(!back.mark_unknown);
        assert_eq!(back.taints.unwrap().len(), 1);
        // An agent reporting NotReady gets not-ready taints.
        let nr = decide(&node("False", json!([])), secs(1), at(11), &s);
        assert_eq!(nr.taints.unwrap()[0].key, NOT_READY);
    }

    #[test]
    fn pods_are_evicted_unless_tolerated_and_after_their_toleration_seconds() {
        let n = node(
            "Unknown",
            json!([{"key": UNREACHABLE, "effect": "NoExecute", "timeAdded": "2027-01-15T08:00:00Z"}]),
        );
        let added: DateTime<Utc> = "2027-01-15T08:00:00Z".parse().unwrap();
        let plain = pod(json!([]));
        let forever =
            pod(json!([{"key": UNREACHABLE, "operator": "Exists", "effect": "NoExecute"}]));
        let thirty = pod(
            json!([{"key": UNREACHABLE, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 30}]),
        );
        let pods = vec![plain.clone(), forever, thirty];
        let (now, next) = evictions(
            &n,
            &pods,
            added + k8s_openapi::chrono::Duration::seconds(10),
        );
        assert_eq!(now.len(), 1);
        assert_eq!(next, Some(Duration::from_secs(20)));
        let (later, _) = evictions(
            &n,
            &pods,
            added + k8s_openapi::chrono::Duration::seconds(30),
        );
        assert_eq!(later.len(), 2, "the 30 s toleration ran out");
        // A NoSchedule taint alone evicts nothing.
        let cordoned = node("True", json!([{"key": "x", "effect": "NoSchedule"}]));
        assert!(evictions(&cordoned, &[plain], added).0.is_empty());
    }

    #[test]
    fn orphaned_pods_are_due_after_the_quarantine_and_forgotten_when_adopted_by_a_node() {
        let mut seen = HashMap::new();
        let t0 = Instant::now();
        let q = Duration::from_secs(40);
        let a = vec!["a".to_string()];
        assert!(due_orphans(&mut seen, &a, t0, q).is_empty());
        assert!(due_orphans(&mut seen, &a, t0 + Duration::from_secs(39), q).is_empty());
        // Its node appeared meanwhile: it is no orphan, and the clock starts over.
        assert!(due_orphans(&mut seen, &[], t0 + Duration::from_secs(39), q).is_empty());
        assert!(due_orphans(&mut seen, &a, t0 + Duration::from_secs(41), q).is_empty());
        assert_eq!(
            due_orphans(&mut seen, &a, t0 + Duration::from_secs(81), q),
            a
        );
    }
}
