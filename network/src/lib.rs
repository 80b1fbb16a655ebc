//! Drover's pod network, run by every node agent:
//!
//! - [`ipam`]: CIDR arithmetic, and the node's record of which pod has which address (kept on
//!   disk, so an address is never handed out twice, also across restarts of the agent);
//! - [`pods`]: a network namespace per pod, joined to the node by a routed veth pair;
//! - [`services`]: Services as nftables rules (verdict maps, so the per-packet cost does not
//!   grow with the number of Services), sent as netlink batches by [`netlink`];
//! - [`policy`]: NetworkPolicy as nftables rules, enforced where the pod runs;
//! - [`dns`]: the cluster DNS every pod uses as its resolver;
//! - [`hostaddr`]: the host's primary address, a node's address when none is given.
//!
//! Decisions (which rules, which records, which address) are pure functions over Kubernetes
//! objects; the host is touched in [`pods`] (iproute2), [`netlink`] (the Services' nftables
//! transactions) and [`services::apply`] (the nft command line, for NetworkPolicy) only.

pub mod dns;
pub mod hostaddr;
pub mod ipam;
pub mod netlink;
pub mod pods;
pub mod policy;
pub mod services;
