//! The scheduling queue, as Kubernetes keeps it: pods waiting to be tried (highest priority
//! first, then oldest), pods backing off after a failed attempt (1 s doubling to 10 s), and
//! pods that fit nowhere, parked until the cluster changes (or 5 minutes pass). Pure: the
//! caller passes the time.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cluster::PodInfo;

pub const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// How long an unschedulable pod waits for a cluster change before it is tried anyway.
pub const MAX_PARKED: Duration = Duration::from_secs(300);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Where {
    Active,
    BackingOff(Instant),
    Parked(Instant),
    /// Popped and being decided on or bound.
    InFlight,
}

struct Entry {
    pod: Arc<PodInfo>,
    place: Where,
    attempts: u32,
    /// Changes whenever the entry enters the active heap, so stale heap items are skipped.
    ticket: u64,
}

#[derive(Default)]
pub struct Queue {
    entries: HashMap<String, Entry>,
    /// (priority, Reverse(ticket)) → key: highest priority, then first in.
    active: BinaryHeap<(i32, Reverse<u64>, String)>,
    backoff: BTreeSet<(Instant, String)>,
    /// Parked pods by when they were parked, so releasing them never scans the whole queue.
    parked: BTreeSet<(Instant, String)>,
    next_ticket: u64,
}

/// Takes `key` out of the index its place keeps it in (back-off or parked).
fn unindex(
    backoff: &mut BTreeSet<(Instant, String)>,
    parked: &mut BTreeSet<(Instant, String)>,
    place: Where,
    key: &str,
) {
    match place {
        Where::BackingOff(at) => {
            backoff.remove(&(at, key.to_string()));
        }
        Where::Parked(since) => {
            parked.remove(&(since, key.to_string()));
        }
        Where::Active | Where::InFlight => {}
    }
}

fn backoff(attempts: u32) -> Duration {
    let d = INITIAL_BACKOFF.saturating_mul(1 << attempts.saturating_sub(1).min(10));
    d.min(MAX_BACKOFF)
}

impl Queue {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn contains(&self, key: &str) -> bool {
        self.entries.contains_key(key)
    }

    fn activate(&mut self, key: &str) {
        self.next_ticket += 1;
        let ticket = self.next_ticket;
        if let Some(e) = self.entries.get_mut(key) {
            unindex(&mut self.backoff, &mut self.parked, e.place, key);
            e.place = Where::Active;
            e.ticket = ticket;
            self.active
                .push((e.pod.priority, Reverse(ticket), key.to_string()));
        }
    }

    /// A pending pod, new or changed. A changed pod that was parked is tried again (the change
    /// may make it fit); one backing off keeps waiting.
    pub fn add(&mut self, pod: Arc<PodInfo>) {
        let key = pod.key.clone();
        match self.entries.get_mut(&key) {
            Some(e) => {
                e.pod = pod;
                if matches!(e.place, Where::Parked(_)) {
                    self.activate(&key);
                }
            }
            None => {
                self.entries.insert(
                    key.clone(),
                    Entry {
                        pod,
                        place: Where::Active,
                        attempts: 0,
                        ticket: 0,
                    },
                );
                self.activate(&key);
            }
        }
    }

    /// A pod that is gone or no longer pending.
    pub fn remove(&mut self, key: &str) {
        if let Some(e) = self.entries.remove(key) {
            unindex(&mut self.backoff, &mut self.parked, e.place, key);
        }
    }

    /// Moves pods whose back-off has passed, and pods parked too long, to the active queue.
    fn flush(&mut self, now: Instant) {
        while let Some((at, key)) = self.backoff.first().cloned() {
            if at > now {
                break;
            }
            self.backoff.pop_first();
            self.activate(&key);
        }
    }

    /// The next pod to try, if one is due. It stays known (in flight) until [`Queue::done`],
    /// [`Queue::unschedulable`] or [`Queue::retry`].
    pub fn pop(&mut self, now: Instant) -> Option<Arc<PodInfo>> {
        self.flush(now);
        while let Some((_, Reverse(ticket), key)) = self.active.pop() {
            let Some(e) = self.entries.get_mut(&key) else {
                continue;
            };
            if e.place != Where::Active || e.ticket != ticket {
                continue;
            }
            e.place = Where::InFlight;
            e.attempts += 1;
            return Some(e.pod.clone());
        }
        None
    }

    /// When the earliest back-off ends, if any pod backs off.
    pub fn next_due(&self) -> Option<Instant> {
        self.backoff.first().map(|(at, _)| *at)
    }

    /// The pod was placed and bound: forget it.
    pub fn done(&mut self, key: &str) {
        self.remove(key);
    }

    /// The pod fits nowhere: park it until the cluster changes.
    pub fn unschedulable(&mut self, key: &str, now: Instant) {
        if let Some(e) = self.entries.get_mut(key) {
            e.place = Where::Parked(now);
            self.parked.insert((now, key.to_string()));
        }
    }

    /// The attempt failed for another reason (binding refused): back off, then retry.
    pub fn retry(&mut self, key: &str, now: Instant) {
        if let Some(e) = self.entries.get_mut(key) {
            let at = now + backoff(e.attempts);
            e.place = Where::BackingOff(at);
            self.backoff.insert((at, key.to_string()));
        }
    }

    /// Something changed that may let parked pods fit (a node came or changed, a pod went):
    /// parked pods go back, through their back-off.
    pub fn cluster_changed(&mut self, now: Instant) {
        self.release_parked(now, |_| true);
    }

    /// Parked pods older than [`MAX_PARKED`] go back (a change may have been missed).
    pub fn tick(&mut self, now: Instant) {
        self.release_parked(now, |since| now.duration_since(since) >= MAX_PARKED);
    }

    fn release_parked(&mut self, now: Instant, due: impl Fn(Instant) -> bool) {
        while let Some((since, key)) = self.parked.first().cloned() {
            if !due(since) {
                break; // the rest were parked later
            }
            self.parked.pop_first();
            if let Some(e) = self.entries.get_mut(&key) {
                let at = now + backoff(e.attempts);
                e.place = Where::BackingOff(at);
                self.backoff.insert((at, key));
            }
        }
    }

    /// How many pods are parked as unschedulable (for logs and tests).
    pub fn parked(&self) -> usize {
        self.parked.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, priority: i32) -> Arc<PodInfo> {
        Arc::new(PodInfo {
            key: format!("default/{name}"),
            priority,
            ..Default::default()
        })
    }

    #[test]
    fn higher_priority_first_then_first_in() {
        let mut q = Queue::default();
        let now = Instant::now();
        q.add(pod("a", 0));
        q.add(pod("b", 10));
        q.add(pod("c", 0));
        let order: Vec<String> = std::iter::from_fn(|| q.pop(now).map(|p| p.key.clone())).collect();
        assert_eq!(order, ["default/b", "default/a", "default/c"]);
    }

    #[test]
    fn parked_pods_return_on_change_after_their_backoff() {
        let mut q = Queue::default();
        let now = Instant::now();
        q.add(pod("a", 0));
        let a = q.pop(now).unwrap();
        q.unschedulable(&a.key, now);
        assert!(q.pop(now).is_none());
        assert_eq!(q.parked(), 1);
        q.cluster_changed(now);
        assert!(q.pop(now).is_none(), "backs off first");
        assert_eq!(q.next_due(), Some(now + INITIAL_BACKOFF));
        assert_eq!(q.pop(now + INITIAL_BACKOFF).unwrap().key, "default/a");
        // Second failure: twice the wait.
        q.retry("default/a", now);
        assert!(q.pop(now + INITIAL_BACKOFF).is_none());
        assert!(q.pop(now + 2 * INITIAL_BACKOFF).is_some());
    }

    #[test]
    fn a_changed_parked_pod_is_tried_at_once_and_removed_pods_never_return() {
        let mut q = Queue::default();
        let now = Instant::now();
        q.add(pod("a", 0));
        q.add(pod("b", 0));
        let a = q.pop(now).unwrap();
        q.unschedulable(&a.key, now);
        q.add(pod("a", 5));
        assert_eq!(q.pop(now).unwrap().key, "default/a");
        q.remove("default/b");
        assert!(q.pop(now).is_none());
        assert_eq!(q.len(), 1, "a is in flight, b is gone");
        q.unschedulable("default/a", now);
        q.tick(now + MAX_PARKED - Duration::from_secs(1));
        assert_eq!(q.parked(), 1, "not parked long enough yet");
        q.tick(now + MAX_PARKED);
        assert_eq!(q.parked(), 0, "parked too long: backs off and retries");
    }

    #[test]
    fn backoff_doubles_up_to_ten_seconds() {
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(2), Duration::from_secs(2));
        assert_eq!(backoff(4), Duration::from_secs(8));
        assert_eq!(backoff(5), Duration::from_secs(10));
        assert_eq!(backoff(60), Duration::from_secs(10));
    }
}
