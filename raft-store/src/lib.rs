//! raft-store: Drover's replicated MVCC key-value store, the part of the cluster that etcd is
//! in Kubernetes. It knows nothing of Kubernetes.
//!
//! - [`mvcc`]: the data model (revisions, ranges, txns, watch events, errors) — plain data.
//! - [`engine`]: the MVCC state, in memory: apply, range at a revision, change index, compaction.
//! - [`raft`], [`log_store`], [`wal`]: openraft's state machine (on the engine) and its log
//!   (an append-only WAL with group commit).
//! - [`network`], [`service`], [`client`]: bincode over HTTP between members and from clients.
//! - [`tls`]: mutual TLS between members (certificates of the cluster CA naming the cluster).
//! - [`node`]: one member — identity, bootstrap/join, forwarding to the leader, membership.
//! - [`proposer`]: leader-side batching of concurrent txns into one log entry.
//! - [`watch`]: per-watcher tasks that pull from the change index and never block writers.

pub mod client;
pub mod engine;
pub mod files;
pub mod log_store;
pub mod mvcc;
pub mod network;
pub mod node;
pub mod proposer;
pub mod raft;
pub mod service;
pub mod tls;
pub mod wal;
pub mod watch;

pub use client::Status;
pub use client::{RemoteMember, StoreClient};
pub use mvcc::*;
pub use node::{StartError, StoreConfig, StoreNode};
pub use tls::{MemberCredentials, PeerTls};
