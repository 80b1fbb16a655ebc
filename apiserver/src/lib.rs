//! The Kubernetes-compatible HTTP API over `raft-store`.
//!
//! - [`pki`]: cluster CA, serving certificate, admin token, kubeconfig.
//! - [`listener`]: the API address: TLS only, bounded handshakes and headers.
//! - [`join`]: servers joining with a join token (both sides).
//! - [`nodecerts`]: serving certificates for nodes' endpoints, each for its own node name;
//!   [`nodetokens`]: nodes' credentials, bound to their Nodes.
//! - [`inflight`]: the cap on requests served at once (429 past it); `query`: the query string,
//!   parsed once for authorization, the cap and dispatch.
//! - [`path`]: parsing Kubernetes request paths.
//! - [`cache`]: the watch cache that serves lists and watches from memory.
//! - [`access`]: authentication and authorization as request paths do them;
//!   [`auth`]: bearer tokens (admin, ServiceAccounts, nodes), the node authorizer and RBAC;
//!   [`signing`]: the keys tokens are signed with; [`rotation`]: `drover token rotate`.
//! - [`encryption`]: Secrets (and the cluster CA key) sealed with AES-GCM in the store.
//! - [`admission`]: ClusterIP and NodePort allocation for Services; [`podsecurity`]: Pod
//!   Security admission (the namespaces' levels; the rules are `api::podsecurity`).
//! - `request`: the API itself: the [`router`], authentication, and one dispatcher to the
//!   handlers of reads, writes, deletes and the subresources that act; `strategy`: what is
//!   particular to one kind in that path; `respond`: Kubernetes' responses; `stored`: how
//!   objects are stored; `state`: [`ApiState`]; `bootstrap`: what a cluster has from its start.
//! - [`discovery`]: discovery and OpenAPI documents; [`protobuf`]: protobuf request bodies →
//!   JSON; [`metrics`]: metrics.k8s.io; [`proxy`]: requests passed on to nodes.
//! - [`registry`]: the cluster's OCI registry under `/v2/`.
//!
//! The only crate that speaks HTTP to Kubernetes clients.

pub mod access;
pub mod admission;
pub mod auth;
mod bootstrap;
pub mod cache;
mod compress;
pub mod discovery;
pub mod encryption;
pub mod inflight;
pub mod join;
pub mod listener;
pub mod metrics;
pub mod nodecerts;
pub mod nodetokens;
mod openapi_v2;
pub mod path;
pub mod pki;
pub mod podsecurity;
pub mod protobuf;
pub mod proxy;
mod query;
pub mod registry;
mod request;
mod respond;
pub mod rotation;
pub mod signing;
mod state;
mod stored;
mod strategy;

pub use bootstrap::{bootstrap, cluster_secrets, SYSTEM_NAMESPACES};
pub use request::router;
pub use state::ApiState;
