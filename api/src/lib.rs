//! The Kubernetes object model: the kind registry (group, version, resource, namespaced, short
//! names, verbs), object metadata helpers and label selectors.
//!
//! Pure data and rules: no tokio, no HTTP, no storage. Objects are handled as JSON values here;
//! typed validation with k8s-openapi comes with the rest of the API issue.

pub mod columns;
pub mod convert;
pub mod defaults;
pub mod object;
pub mod registry;
pub mod selector;

pub use registry::{Resource, REGISTRY};
