//! The kinds the API serves, as its discovery documents say: what the garbage collector and
//! the namespace controller act on. Every kind a client can list and delete counts, custom
//! kinds too once they are served, so neither keeps a list of its own that a new kind would
//! have to be added to.

use std::time::{Duration, Instant};

use kube::api::ApiResource;
use kube::discovery::{verbs, Discovery, Scope};

/// How long one discovery is used before it is asked again (kinds come and go rarely; a
/// custom kind is picked up within this).
pub const REFRESH_EVERY: Duration = Duration::from_secs(30);

/// One kind that can be listed and deleted.
#[derive(Clone, Debug)]
pub struct Kind {
    pub resource: ApiResource,
    pub namespaced: bool,
}

/// Every listable, deletable kind, at its preferred version (autoscaling/v1 and v2 are the
/// same HorizontalPodAutoscalers: one of them is enough).
pub async fn discover(client: &kube::Client) -> Result<Vec<Kind>, kube::Error> {
    let discovery = Discovery::new(client.clone()).run().await?;
    let mut kinds = Vec::new();
    for group in discovery.groups() {
        for (resource, caps) in group.recommended_resources() {
            if caps.supports_operation(verbs::LIST) && caps.supports_operation(verbs::DELETE) {
                kinds.push(Kind {
                    resource,
                    namespaced: caps.scope == Scope::Namespaced,
                });
            }
        }
    }
    Ok(kinds)
}

/// The kinds, discovered again when they are older than [`REFRESH_EVERY`].
#[derive(Default)]
pub struct Cached {
    kinds: Vec<Kind>,
    at: Option<Instant>,
}

impl Cached {
    pub async fn get(&mut self, client: &kube::Client) -> Result<&[Kind], kube::Error> {
        if self.at.is_none_or(|at| at.elapsed() > REFRESH_EVERY) {
            self.kinds = discover(client).await?;
            self.at = Some(Instant::now());
        }
        Ok(&self.kinds)
    }
}
