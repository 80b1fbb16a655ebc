//! Shared test fixtures: real `drover` processes on loopback ([`cluster`]), a recorded
//! concurrent workload ([`workload`]) and a linearizability checker ([`linearizability`]).

pub mod cluster;
pub mod linearizability;
pub mod workload;

pub use cluster::{Cluster, Partition};
