//! One client over several API servers (the members of an HA control plane): requests go to
//! the server that answered last; one that cannot be reached is passed over for the next, as
//! client-go does behind a load balancer and etcd's clients do with several endpoints.
//!
//! Only a request that never reached a server is sent again elsewhere (the connection was
//! refused, reset before it was established, or timed out connecting): one that reached a
//! server and lost its answer may have taken effect, so its error goes back to the caller,
//! as a single server's would. Watches end with their server and are restarted by their
//! informer, which then lands on a server that answers.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::BoxFuture;
use http::{Request, Response};
use kube::client::Body;

/// A `tower` service over one `kube::Client` per server.
#[derive(Clone)]
pub struct Failover {
    servers: Arc<[(String, kube::Client)]>,
    current: Arc<AtomicUsize>,
}

impl Failover {
    pub fn new(servers: Vec<(String, kube::Client)>) -> Failover {
        assert!(!servers.is_empty(), "a failover client needs a server");
        Failover {
            servers: servers.into(),
            current: Arc::default(),
        }
    }
}

/// Whether `e` proves the request never reached the server (so sending it elsewhere is safe).
fn never_sent(e: &kube::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(client) = err.downcast_ref::<hyper_util::client::legacy::Error>() {
            return client.is_connect();
        }
        source = err.source();
    }
    false
}

/// The same request again (`http::request::Parts` cannot be cloned: its extensions are not).
fn copy_request(parts: &http::request::Parts, body: &bytes::Bytes) -> Request<Body> {
    let mut req = Request::new(Body::from(body.clone()));
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = parts.uri.clone();
    *req.version_mut() = parts.version;
    *req.headers_mut() = parts.headers.clone();
    req
}

impl tower::Service<Request<Body>> for Failover {
    type Response = Response<Body>;
    type Error = kube::Error;
    type Future = BoxFuture<'static, Result<Response<Body>, kube::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            // Kept to send again: the API's requests are small, watches have no body.
            let body = body.collect_bytes().await?;
            let first = this.current.load(Ordering::Relaxed);
            let n = this.servers.len();
            let mut last_error = None;
            for k in 0..n {
                let i = (first + k) % n;
                let (url, client) = &this.servers[i];
                match client.send(copy_request(&parts, &body)).await {
                    Ok(resp) => {
                        if i != first {
                            this.current.store(i, Ordering::Relaxed);
                            tracing::warn!(server = %url, "the API server before it is unreachable; using this one");
                        }
                        return Ok(resp);
                    }
                    Err(e) if never_sent(&e) => {
                        tracing::debug!(server = %url, error = %e, "API server unreachable");
                        last_error = Some(e);
                    }
                    Err(e) => return Err(e),
                }
            }
            Err(last_error.expect("at least one server was tried"))
        })
    }
}
