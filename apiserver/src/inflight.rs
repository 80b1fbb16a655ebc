//! A cap on the requests being served at once, as kube-apiserver's `--max-requests-inflight`
//! (400 reads) and `--max-mutating-requests-inflight` (200 writes): past it a request is
//! answered at once with 429 and `Retry-After: 1`, which client-go and kubectl retry, instead
//! of piling up until the server runs out of memory. Long-running requests (watches, exec,
//! attach, port-forward, followed logs) and health checks do not count, as in Kubernetes.

use std::sync::Arc;

use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::query::Query;

pub const MAX_READS: usize = 400;
pub const MAX_WRITES: usize = 200;

pub struct Inflight {
    reads: Arc<Semaphore>,
    writes: Arc<Semaphore>,
}

impl Default for Inflight {
    fn default() -> Self {
        Inflight::new(MAX_READS, MAX_WRITES)
    }
}

impl Inflight {
    pub fn new(reads: usize, writes: usize) -> Inflight {
        Inflight {
            reads: Arc::new(Semaphore::new(reads)),
            writes: Arc::new(Semaphore::new(writes)),
        }
    }

    /// A place for a request, or None when every place of its kind is taken.
    pub fn admit(&self, method: &Method) -> Option<OwnedSemaphorePermit> {
        let mutating = !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
        let pool = if mutating { &self.writes } else { &self.reads };
        pool.clone().try_acquire_owned().ok()
    }
}

/// Whether a request is exempt from the cap: it lasts as long as the client wants (a watch,
/// a followed log, an exec, attach or port-forward session) or it is a health check. Decided
/// from the method and the exact shape of the path, so that a write with `?watch=1` or an
/// object named `exec` still counts.
pub fn exempt(method: &Method, path: &str, query: &Query) -> bool {
    let flag = |name: &str| {
        query
            .get(name)
            .is_some_and(|v| crate::query::is_true(Some(v)))
    };
    if matches!(path, "/healthz" | "/livez" | "/readyz") {
        return true;
    }
    let reads = matches!(*method, Method::GET);
    // /api/v1/namespaces/{ns}/pods/{name}/{subresource}
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let pod_subresource = match segments.as_slice() {
        ["api", "v1", "namespaces", _, "pods", _, sub] => Some(*sub),
        _ => None,
    };
    match pod_subresource {
        Some("exec" | "attach" | "portforward") => true,
        Some("log") => reads && flag("follow"),
        _ => reads && flag("watch"),
    }
}

/// The answer past the cap: kube-apiserver's words, and when to try again.
pub fn too_many_requests() -> Response {
    let status = api::object::status(
        429,
        "TooManyRequests",
        "Too many requests, please try again later.",
        Some(serde_json::json!({"retryAfterSeconds": 1})),
    );
    (
        StatusCode::TOO_MANY_REQUESTS,
        [
            (header::RETRY_AFTER, "1"),
            (header::CONTENT_TYPE, "application/json"),
        ],
        serde_json::to_vec(&status).expect("serialises"),
    )
        .into_response()
}
