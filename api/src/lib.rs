//! The Kubernetes object model: the kind registry (group, version, resource, namespaced, short
//! names, verbs), object metadata helpers and label selectors, and the pure rules the other
//! crates share: which pods a controller selects, where a pod may run, what a pod's state is,
//! the well-known labels and taints, and the pod network's CIDR arithmetic.
//!
//! Pure data and rules: no tokio, no HTTP, no storage. Objects are handled as JSON values;
//! `validate` checks them against the k8s-openapi types.

pub mod apply;
pub mod cause;
pub mod cidr;
pub mod columns;
pub mod convert;
pub mod credentials;
pub mod defaults;
pub mod impersonation;
pub mod knative;
pub mod nodegraph;
pub mod object;
pub mod patch;
pub mod placement;
pub mod pods;
pub mod podsecurity;
pub mod quantity;
pub mod rbac;
pub mod registry;
pub mod selector;
pub mod semantic;
pub mod validate;
pub mod wellknown;

pub use registry::{Resource, REGISTRY};
