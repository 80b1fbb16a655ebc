//! Well-known labels, annotations and taints: one spelling each for every crate that writes or
//! reads them (the controllers, the scheduler, the node agent and its proxy and DNS).

/// The label that names an EndpointSlice's Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The label that names the controller managing an EndpointSlice.
pub const SLICE_MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
/// The value of [`SLICE_MANAGED_BY_LABEL`] for slices the control plane makes (Kubernetes' own,
/// so that tools that look for it find it).
pub const SLICE_CONTROLLER: &str = "endpointslice-controller.k8s.io";

/// A node's name as a label (the usual topology key).
pub const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";
pub const OS_LABEL: &str = "kubernetes.io/os";
pub const ARCH_LABEL: &str = "kubernetes.io/arch";

/// The taint of a node whose agent has gone silent.
pub const TAINT_UNREACHABLE: &str = "node.kubernetes.io/unreachable";
/// The taint of a node that reports itself not Ready.
pub const TAINT_NOT_READY: &str = "node.kubernetes.io/not-ready";
/// The taint of a cordoned node (`spec.unschedulable`).
pub const TAINT_UNSCHEDULABLE: &str = "node.kubernetes.io/unschedulable";
