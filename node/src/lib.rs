//! The node agent: registration and heartbeats, pod workers and their lifecycle state
//! machine, probes, volumes, logs, stats, pod networking and cluster DNS.
//!
//! Talks to the cluster only through the API. Filled by the node issue.
