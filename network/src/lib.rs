//! Drover's pod network, run by every node agent:
//!
//! - [`ipam`]: the node's record of which pod has which address (kept on disk, so an address is
//!   never handed out twice, also across restarts of the agent); the CIDR arithmetic is
//!   `api::cidr`;
//! - [`pods`]: a network namespace per pod, joined to the node by a routed veth pair;
//! - [`nft`]: the nftables vocabulary (ops of one transaction) and its nft-script rendering;
//!   [`netlink`] encodes the same ops for the kernel;
//! - [`services`]: Services as nftables ops (verdict maps, so the per-packet cost does not grow
//!   with the number of Services);
//! - [`policy`]: NetworkPolicy as an nftables table, enforced where the pod runs;
//! - [`dns`]: the cluster DNS every pod uses as its resolver;
//! - [`proxy`]: the node's proxy, deciding per changed kind what to program;
//! - [`host`]: the proxy's effects behind a trait (netlink, nft, iproute2), with a recording
//!   double;
//! - [`hostaddr`]: the host's primary address, a node's address when none is given.
//!
//! Decisions (which rules, which records, which address) are pure functions over Kubernetes
//! objects; the host is touched only in [`host`], [`pods`] (iproute2) and [`netlink`] (the
//! socket).

pub mod dns;
pub mod host;
pub mod hostaddr;
pub mod ipam;
pub mod netlink;
pub mod nft;
pub mod pods;
pub mod policy;
pub mod proxy;
pub mod services;
