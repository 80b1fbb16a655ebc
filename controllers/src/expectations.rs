//! Expectations: the objects a controller created, updated or deleted lately that the
//! informer's cache may not show yet, per owner, as Kubernetes' controllers keep them. A
//! reconcile can run before the watch has brought its own last writes; deciding from that
//! cache alone would create the same pods again (or delete a second pod in place of one
//! already going, or write a slice twice). The controller passes the [`Pending`] writes to its
//! pure `plan`, which counts them as done, or waits until none is left.
//!
//! A creation is seen once the cache holds an object of its name; an update once the cache no
//! longer shows the object at the resourceVersion it replaced; a deletion once the cache no
//! longer holds the object or, for a kind whose deletion takes a while ([`Tracked`]: a pod in
//! its grace period), shows it being deleted. Each is forgotten after [`EXPECTATION_TTL`] in
//! any case, so a write the watch never reports (a pod deleted again at once) does not block
//! the owner for ever.
//!
//! A controller keeps its expectations in its `Context`, made with its caches by
//! [`crate::run`]: only what this run of the controller did is known, which is enough, since
//! a new run (a restart, a new leader) lists the cluster into new caches and so sees what an
//! earlier one wrote.
//!
//! Each controller records with a creation what its plan needs to know of an object on its way
//! (`T`): the ReplicaSet controller nothing, the Job controller the completion index, the
//! DaemonSet controller the node. Owners are named by uid, or by any key that names them (the
//! endpoints controller keeps its EndpointSlice writes per Service `namespace/name`).

use std::collections::{BTreeMap, BTreeSet};
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::{Resource, ResourceExt};

/// How long a creation, update or deletion is expected to show up in the cache.
pub const EXPECTATION_TTL: Duration = Duration::from_secs(30);

/// A kind whose writes a controller expects to see in its cache.
pub trait Tracked: Resource {
    /// Whether this cached object counts as deleted already, though the cache still holds it.
    /// By default it does not: a deletion is seen once the object is gone.
    fn deletion_seen(&self) -> bool {
        false
    }
}

/// A pod being deleted is as good as gone to its controller: it may take its grace period to
/// go, and is replaced meanwhile.
impl Tracked for Pod {
    fn deletion_seen(&self) -> bool {
        self.metadata.deletion_timestamp.is_some()
    }
}

/// Writes made lately for one owner that the cache may not show yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending<T> {
    /// Created object name → what it was created for.
    pub created: BTreeMap<String, T>,
    pub updated: BTreeSet<String>,
    pub deleted: BTreeSet<String>,
}

impl<T> Default for Pending<T> {
    fn default() -> Self {
        Pending {
            created: BTreeMap::new(),
            updated: BTreeSet::new(),
            deleted: BTreeSet::new(),
        }
    }
}

impl<T> Pending<T> {
    /// Whether the cache shows every write.
    pub fn is_empty(&self) -> bool {
        self.created.is_empty() && self.updated.is_empty() && self.deleted.is_empty()
    }
}

/// One owner's writes not yet seen, each with when it was made.
struct Writes<T> {
    created: BTreeMap<String, (Instant, T)>,
    /// Updated object name → the resourceVersion the update replaced.
    updated: BTreeMap<String, (Instant, String)>,
    deleted: BTreeMap<String, Instant>,
}

impl<T> Default for Writes<T> {
    fn default() -> Self {
        Writes {
            created: BTreeMap::new(),
            updated: BTreeMap::new(),
            deleted: BTreeMap::new(),
        }
    }
}

impl<T> Writes<T> {
    fn is_empty(&self) -> bool {
        self.created.is_empty() && self.updated.is_empty() && self.deleted.is_empty()
    }
}

/// Creations, updates and deletions of objects of kind `K` (pods unless said otherwise) per
/// owner, not yet seen in the cache.
pub struct Expectations<T, K = Pod> {
    by_owner: Mutex<BTreeMap<String, Writes<T>>>,
    kind: PhantomData<fn(&K)>,
}

impl<T, K> Default for Expectations<T, K> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T, K> Expectations<T, K> {
    pub fn new() -> Self {
        Expectations {
            by_owner: Mutex::new(BTreeMap::new()),
            kind: PhantomData,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Writes<T>>> {
        self.by_owner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records that the object `name` was created for `owner`, with what it is for.
    pub fn created(&self, owner: &str, name: String, what: T) {
        let mut all = self.lock();
        let entry = all.entry(owner.to_string()).or_default();
        entry.created.insert(name, (Instant::now(), what));
    }

    /// Records that the object `name` of `owner` was updated from `resource_version`.
    pub fn updated(&self, owner: &str, name: String, resource_version: String) {
        let mut all = self.lock();
        let entry = all.entry(owner.to_string()).or_default();
        entry
            .updated
            .insert(name, (Instant::now(), resource_version));
    }

    /// Records that the object `name` of `owner` was deleted.
    pub fn deleted(&self, owner: &str, name: String) {
        let mut all = self.lock();
        let entry = all.entry(owner.to_string()).or_default();
        entry.deleted.insert(name, Instant::now());
    }

    /// Forgets everything about `owner` (it is gone).
    pub fn forget(&self, owner: &str) {
        self.lock().remove(owner);
    }
}

impl<T: Clone, K: Tracked> Expectations<T, K> {
    /// What is still pending for `owner`, given the objects in the cache that may show its
    /// writes (the owner's namespace's, or those it controls). What the cache shows, or what
    /// is older than [`EXPECTATION_TTL`], is forgotten.
    pub fn pending(&self, owner: &str, cached: &[Arc<K>]) -> Pending<T> {
        let mut all = self.lock();
        let Some(entry) = all.get_mut(owner) else {
            return Pending::default();
        };
        let names: BTreeMap<String, &K> = cached.iter().map(|o| (o.name_any(), &**o)).collect();
        entry
            .created
            .retain(|n, (at, _)| at.elapsed() < EXPECTATION_TTL && !names.contains_key(n));
        entry.updated.retain(|n, (at, old)| {
            at.elapsed() < EXPECTATION_TTL
                && names
                    .get(n)
                    .is_some_and(|o| o.meta().resource_version.as_ref() == Some(old))
        });
        entry.deleted.retain(|n, at| {
            at.elapsed() < EXPECTATION_TTL && names.get(n).is_some_and(|o| !o.deletion_seen())
        });
        let pending = Pending {
            created: entry
                .created
                .iter()
                .map(|(n, (_, what))| (n.clone(), what.clone()))
                .collect(),
            updated: entry.updated.keys().cloned().collect(),
            deleted: entry.deleted.keys().cloned().collect(),
        };
        if entry.is_empty() {
            all.remove(owner);
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

    #[test]
    fn an_update_is_pending_while_the_cache_shows_the_version_it_replaced() {
        let at = |rv: &str| {
            let p = json!({"metadata": {"name": "s", "resourceVersion": rv}});
            Arc::new(serde_json::from_value::<Pod>(p).unwrap())
        };
        let e: Expectations<()> = Expectations::new();
        e.updated("u", "s".into(), "7".into());
        let p = e.pending("u", &[at("7")]);
        assert!(p.updated.contains("s") && !p.is_empty());
        assert!(e.pending("u", &[at("8")]).is_empty());
        assert_eq!(e.pending("u", &[at("7")]), Pending::default());
        // An object gone is no longer at the old version either.
        e.updated("u", "s".into(), "7".into());
        assert!(e.pending("u", &[]).is_empty());
    }
}
