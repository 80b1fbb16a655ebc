//! The node agent: registers the Node and renews its Lease ([`agent`]), runs one worker per pod
//! bound to it ([`pod`]) through the runtimes of the `runtime` crate, with the pod lifecycle as
//! pure rules ([`lifecycle`]), probes ([`probe`]), environment ([`env`]) and volumes
//! ([`volumes`]), and serves container logs and `kubectl exec` to the API server ([`logserver`],
//! [`exec`]) over TLS with a serving certificate of the cluster CA ([`endpoint`]).
//!
//! Talks to the cluster only through the Kubernetes API (kube-rs), with the node's own
//! credential: a node may change only its Node, its Lease and the pods bound to it.

pub mod agent;
pub mod endpoint;
pub mod env;
pub mod exec;
pub mod functions;
pub mod imagegc;
pub mod lifecycle;
pub mod linux;
pub mod logserver;
pub mod metrics;
pub mod network;
pub mod pod;
pub mod portforward;
pub mod probe;
pub mod spdy;
pub mod volumes;
