//! What Drover's clients of the API server share — the controllers, the scheduler and the node
//! agent, which all speak to it as any Kubernetes client would:
//!
//! - [`connect`]: a client for a URL (or several: [`failover`]), the cluster CA and a bearer
//!   token;
//! - [`informer`]: shared informers (one list + watch per kind, many subscribers);
//! - [`reflect`]: a cache of one kind kept by a list + watch, with a wake-up on each change;
//! - [`events`]: the one Event recorder (repeats counted into the first event, old ones
//!   forgotten).
//!
//! No decisions live here: only the plumbing between a component and the API.

pub mod connect;
pub mod events;
pub mod failover;
pub mod informer;
pub mod reflect;

pub use connect::{connect, connect_with_token_file};
