//! The Kubernetes-compatible HTTP API over `raft-store`.
//!
//! - [`pki`]: cluster CA, serving certificate, admin token, kubeconfig.
//! - [`listener`]: one address for everything: TLS connections get the API, plaintext ones the
//!   store's peer protocol.
//! - [`path`]: parsing Kubernetes request paths.
//! - [`cache`]: the watch cache that serves lists and watches from memory.
//! - [`auth`]: bearer tokens (admin, ServiceAccounts, nodes), the node authorizer and RBAC.
//! - [`encryption`]: Secrets (and the cluster CA key) sealed with AES-GCM in the store.
//! - [`admission`]: ClusterIP and NodePort allocation for Services.
//! - [`discovery`], [`handlers`]: the API itself; [`protobuf`]: protobuf request bodies → JSON.
//!
//! The only crate that speaks HTTP to Kubernetes clients.

pub mod admission;
pub mod auth;
pub mod cache;
pub mod discovery;
pub mod encryption;
pub mod handlers;
pub mod listener;
pub mod metrics;
pub mod path;
pub mod pki;
pub mod protobuf;
pub mod proxy;
