//! Expectations: the pods a controller created or deleted lately that the informer's cache may
//! not show yet, per owner uid, as Kubernetes' controllers keep them. A reconcile can run
//! before the watch has brought its own last writes; deciding from that cache alone would
//! create the same pods again (or delete a second pod in place of one already going). The
//! controller passes the [`Pending`] writes to its pure `plan`, which counts them as done.
//!
//! A creation is seen once the cache holds a pod of its name; a deletion once the cache no
//! longer holds the pod or shows it being deleted. Either is forgotten after
//! [`EXPECTATION_TTL`] in any case, so a write the watch never reports (a pod deleted again at
//! once) does not block the owner for ever. Only what this process did is known, which is
//! enough: a new process (a restart, a new leader) lists the cluster afresh and so sees what
//! an earlier one wrote.
//!
//! Each controller records with a creation what its plan needs to know of a pod on its way
//! (`T`): the ReplicaSet controller nothing, the Job controller the completion index, the
//! DaemonSet controller the node.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

/// How long a creation or deletion is expected to show up in the cache.
pub const EXPECTATION_TTL: Duration = Duration::from_secs(30);

/// Pods created or deleted lately for one owner that the cache may not show yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending<T> {
    /// Created pod name → what it was created for.
    pub created: BTreeMap<String, T>,
    pub deleted: BTreeSet<String>,
}

impl<T> Default for Pending<T> {
    fn default() -> Self {
        Pending {
            created: BTreeMap::new(),
            deleted: BTreeSet::new(),
        }
    }
}

struct Expected<T> {
    created: BTreeMap<String, (Instant, T)>,
    deleted: BTreeMap<String, Instant>,
}

impl<T> Default for Expected<T> {
    fn default() -> Self {
        Expected {
            created: BTreeMap::new(),
            deleted: BTreeMap::new(),
        }
    }
}

/// Creations and deletions per owner uid not yet seen in the cache. `new` is const, so a
/// controller may keep them in a static rather than in its `Context` (whose fields are then
/// the client and the caches alone): they only ever hold what this process did in the last
/// [`EXPECTATION_TTL`].
pub struct Expectations<T>(Mutex<BTreeMap<String, Expected<T>>>);

impl<T> Default for Expectations<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Expectations<T> {
    pub const fn new() -> Self {
        Expectations(Mutex::new(BTreeMap::new()))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Expected<T>>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records that a pod `name` was created for `uid`, with what it is for.
    pub fn created(&self, uid: &str, name: String, what: T) {
        let mut all = self.lock();
        let entry = all.entry(uid.to_string()).or_default();
        entry.created.insert(name, (Instant::now(), what));
    }

    /// Records that the pod `name` of `uid` was deleted.
    pub fn deleted(&self, uid: &str, name: String) {
        let mut all = self.lock();
        let entry = all.entry(uid.to_string()).or_default();
        entry.deleted.insert(name, Instant::now());
    }

    /// Forgets everything about `uid` (the owner is gone).
    pub fn forget(&self, uid: &str) {
        self.lock().remove(uid);
    }
}

impl<T: Clone> Expectations<T> {
    /// What is still pending for `uid`, given the pods in the cache that may show its writes
    /// (the owner's namespace's, or those it controls). What the cache shows, or what is
    /// older than [`EXPECTATION_TTL`], is forgotten.
    pub fn pending(&self, uid: &str, pods: &[Arc<Pod>]) -> Pending<T> {
        let mut all = self.lock();
        let Some(entry) = all.get_mut(uid) else {
            return Pending::default();
        };
        let names: BTreeMap<String, &Pod> = pods.iter().map(|p| (p.name_any(), &**p)).collect();
        entry
            .created
            .retain(|n, (at, _)| at.elapsed() < EXPECTATION_TTL && !names.contains_key(n));
        entry.deleted.retain(|n, at| {
            at.elapsed() < EXPECTATION_TTL
                && names
                    .get(n)
                    .is_some_and(|p| p.metadata.deletion_timestamp.is_none())
        });
        let pending = Pending {
            created: entry
                .created
                .iter()
                .map(|(n, (_, what))| (n.clone(), what.clone()))
                .collect(),
            deleted: entry.deleted.keys().cloned().collect(),
        };
        if entry.created.is_empty() && entry.deleted.is_empty() {
            all.remove(uid);
        }
        pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, deleting: bool) -> Arc<Pod> {
        let mut p = json!({"metadata": {"name": name}});
        if deleting {
            p["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        }
        Arc::new(serde_json::from_value(p).unwrap())
    }

    #[test]
    fn writes_are_pending_until_the_cache_shows_them() {
        let e: Expectations<&str> = Expectations::new();
        assert_eq!(e.pending("u", &[]), Pending::default());
        e.created("u", "new".into(), "node-a");
        e.deleted("u", "old".into());
        // The cache shows neither write yet.
        let p = e.pending("u", &[pod("old", false)]);
        assert_eq!(p.created.get("new"), Some(&"node-a"));
        assert!(p.deleted.contains("old"));
        assert_eq!(e.pending("other", &[]), Pending::default());
        // The new pod arrived and the old one is being deleted: both seen, and forgotten.
        let p = e.pending("u", &[pod("new", false), pod("old", true)]);
        assert_eq!(p, Pending::default());
        assert_eq!(e.pending("u", &[]), Pending::default());
        // A deletion is seen when the pod is gone; forget drops the rest.
        e.deleted("u", "gone".into());
        assert_eq!(e.pending("u", &[]), Pending::default());
        e.created("u", "x".into(), "node-b");
        e.forget("u");
        assert_eq!(e.pending("u", &[]), Pending::default());
    }
}
