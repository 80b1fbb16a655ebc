//! The Kubernetes-compatible HTTP API over `raft-store`: discovery, OpenAPI, CRUD, watch,
//! patch, subresources, authn/authz and admission.
//!
//! The only crate that speaks HTTP to Kubernetes clients. Filled by the API issue.
