//! The Kubernetes object model: types (k8s-openapi), the kind registry (group, version,
//! resource, namespaced, short names), defaulting, validation with field paths, label and
//! field selectors, patch merge rules and table columns.
//!
//! Pure data and rules: no tokio, no HTTP, no storage. Filled by the API issue.
