//! When a controller looks at an object again, besides the watches waking it: one rule for a
//! reconcile that succeeded ([`after_success`], [`no_later_than`]) and one error policy for
//! every controller ([`error_policy`]).
//!
//! A reconcile that wrote, or waits for writes the cache does not show yet, is looked at again
//! after [`BUSY`], in case the cache that woke it ran ahead of the one it decided from; one
//! with nothing under way after [`IDLE`], a resync in case a watch event was missed. Either is
//! brought forward to just after ([`WAKE_MARGIN`]) something timed falls due (a pod turning
//! available after minReadySeconds, a deadline, a schedule).

use std::fmt::Display;
use std::sync::Arc;
use std::time::Duration;

use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};

/// A reconcile that failed is tried again after this long. The error is a kube call that
/// failed (see [`crate::error`]); the next try decides afresh from the cache, so trying soon
/// is safe, and the shortest delay any controller used.
pub const RETRY: Duration = Duration::from_secs(1);
/// How soon a reconcile with work under way is looked at again.
pub const BUSY: Duration = Duration::from_secs(2);
/// How soon a reconcile with nothing under way is looked at again.
pub const IDLE: Duration = Duration::from_secs(300);
/// How long after something falls due the object is looked at, so that it is due by then.
pub const WAKE_MARGIN: Duration = Duration::from_millis(100);

/// The requeue of a reconcile that succeeded: after [`BUSY`] if `busy`, else after [`IDLE`];
/// sooner if something falls due in `wake_in`.
pub fn after_success(busy: bool, wake_in: Option<Duration>) -> Action {
    no_later_than(if busy { BUSY } else { IDLE }, wake_in)
}

/// A requeue just after `wake_in` (if anything falls due), and no later than `at_most`.
pub fn no_later_than(at_most: Duration, wake_in: Option<Duration>) -> Action {
    Action::requeue(wake_in.map_or(at_most, |wait| at_most.min(wait + WAKE_MARGIN)))
}

/// The error policy of every controller (`Controller::run`'s second argument): logs which
/// `controller` failed on which object (kind, `namespace/name`) and why, and tries that object
/// again after [`RETRY`].
pub fn error_policy<K, E, C>(controller: &'static str) -> impl Fn(Arc<K>, &E, Arc<C>) -> Action
where
    K: Resource<DynamicType = ()>,
    E: Display,
{
    move |obj: Arc<K>, error: &E, _ctx: Arc<C>| {
        let object = match obj.namespace() {
            Some(ns) => format!("{ns}/{}", obj.name_any()),
            None => obj.name_any(),
        };
        tracing::warn!(
            controller,
            kind = %K::kind(&()),
            %object,
            retry_in = ?RETRY,
            "reconcile failed: {error}"
        );
        Action::requeue(RETRY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Node;

    #[test]
    fn a_success_is_looked_at_again_by_how_busy_and_what_falls_due() {
        let secs = Duration::from_secs;
        assert_eq!(after_success(true, None), Action::requeue(BUSY));
        assert_eq!(after_success(false, None), Action::requeue(IDLE));
        assert_eq!(
            after_success(false, Some(secs(6))),
            Action::requeue(secs(6) + WAKE_MARGIN)
        );
        assert_eq!(after_success(true, Some(secs(6))), Action::requeue(BUSY));
        assert_eq!(
            no_later_than(secs(60), Some(secs(600))),
            Action::requeue(secs(60))
        );
    }

    #[test]
    fn an_error_is_tried_again_after_the_retry_delay() {
        let policy = error_policy::<Node, String, ()>("nodeipam");
        let node = Arc::new(Node::default());
        assert_eq!(
            policy(node, &"boom".to_string(), Arc::new(())),
            Action::requeue(RETRY)
        );
    }
}
