//! Shared test fixtures: real `drover` processes on loopback ([`cluster`]), a recorded
//! concurrent workload ([`workload`]), a linearizability checker ([`linearizability`]), an OCI
//! registry on loopback ([`registry`]) and container images to push to it ([`images`]).

pub mod cluster;
pub mod images;
pub mod linearizability;
pub mod registry;
pub mod workload;

pub use cluster::{Cluster, Partition, Together};
