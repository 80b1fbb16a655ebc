//! CIDR arithmetic of the pod network and its defaults: the cluster's pod range cut into one
//! range per node. Pure; the control plane's node IPAM controller decides with it, and nodes and
//! the command line share its defaults.

use std::collections::BTreeSet;

use ipnet::Ipv4Net;

/// Kubernetes' defaults (kubeadm, k3s): pods in 10.42.0.0/16 (k3s) with a /24 per node.
pub const DEFAULT_CLUSTER_CIDR: &str = "10.42.0.0/16";
pub const DEFAULT_NODE_PREFIX: u8 = 24;

/// The first range of `prefix` bits inside `cluster` that no node has yet, or None when the
/// cluster CIDR is used up.
pub fn next_node_cidr(cluster: Ipv4Net, prefix: u8, taken: &BTreeSet<Ipv4Net>) -> Option<Ipv4Net> {
    cluster
        .subnets(prefix)
        .ok()?
        .find(|net| !taken.iter().any(|t| t.contains(net) || net.contains(t)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ranges_never_overlap_and_run_out() {
        let cluster: Ipv4Net = "10.42.0.0/22".parse().unwrap();
        let mut taken = BTreeSet::new();
        for want in [
            "10.42.0.0/24",
            "10.42.1.0/24",
            "10.42.2.0/24",
            "10.42.3.0/24",
        ] {
            let got = next_node_cidr(cluster, 24, &taken).unwrap();
            assert_eq!(got.to_string(), want);
            taken.insert(got);
        }
        assert_eq!(next_node_cidr(cluster, 24, &taken), None);
        // A hole left by a deleted node is reused; a bigger range given by hand is respected.
        taken.remove(&"10.42.1.0/24".parse().unwrap());
        taken.remove(&"10.42.2.0/24".parse().unwrap());
        taken.insert("10.42.2.0/23".parse().unwrap());
        assert_eq!(
            next_node_cidr(cluster, 24, &taken).unwrap().to_string(),
            "10.42.1.0/24"
        );
    }
}
