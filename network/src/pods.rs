//! A network namespace per pod, joined to the node by a routed veth pair — Calico's picture
//! rather than a bridge: the pod's default route goes to a link-local gateway (169.254.1.1)
//! that is the node's end of the pair, and the node routes `podIP/32` to that end. Every
//! packet of every pod, to a pod on the same node or not, passes the node's IP layer, so
//! Services and NetworkPolicy are one set of nftables rules with no br_netfilter.
//!
//! Between nodes: a route to every other node's pod range via that node's address
//! ([`PodNetwork::sync_node_routes`]), tagged with Drover's route protocol number so that
//! Drover's routes can be found and removed without touching anyone else's.
//!
//! The host is driven through iproute2's `ip` in batch mode (three commands per pod): it is
//! on every Linux host, its behaviour is documented and stable, and a failed step names
//! itself in its error. Netlink from Rust (rtnetlink) would save those process starts, a few
//! milliseconds per pod start; see BENCHMARKS.md.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use anyhow::{bail, Context};
use ipnet::Ipv4Net;

/// Drover's routes carry this protocol number (`ip route ... proto 211`).
pub const ROUTE_PROTO: &str = "211";
/// The pod's gateway: link-local, the same in every pod, answered by the node's veth end.
pub const POD_GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// The MAC of every node-side veth end (as Calico does), so pods need no ARP for the gateway.
const GATEWAY_MAC: &str = "ee:ee:ee:ee:ee:ee";
/// The label of the load balancer addresses Drover puts on `lo`.
const LB_LABEL: &str = "lo:drover";
/// Network namespaces of pods are /run/netns/drover-<uid prefix>.
pub const NETNS_PREFIX: &str = "drover-";

/// The names of one pod's network pieces, from its uid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodLink {
    /// The network namespace's name (under /run/netns).
    pub netns: String,
    /// The node's end of the veth pair (at most 15 bytes, as interface names must be).
    pub host_veth: String,
}

impl PodLink {
    pub fn for_uid(uid: &str) -> PodLink {
        let short: String = uid
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .take(12)
            .collect();
        PodLink {
            netns: format!("{NETNS_PREFIX}{short}"),
            host_veth: format!("drv{short}"),
        }
    }

    pub fn netns_path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.netns)
    }
}

/// Runs `ip` with a batch of commands on stdin.
async fn ip_batch(netns: Option<&str>, batch: &str) -> anyhow::Result<()> {
    use tokio::io::AsyncWriteExt;
    let mut cmd = tokio::process::Command::new("ip");
    if let Some(ns) = netns {
        cmd.args(["-n", ns]);
    }
    cmd.args(["-b", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().context("cannot run ip (iproute2)")?;
    let mut stdin = child.stdin.take().context("ip stdin")?;
    stdin.write_all(batch.as_bytes()).await?;
    drop(stdin);
    let out = child.wait_with_output().await?;
    if !out.status.success() {
        bail!("ip: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

async fn ip(args: &[&str]) -> anyhow::Result<String> {
    let out = tokio::process::Command::new("ip")
        .args(args)
        .output()
        .await
        .context("cannot run ip (iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The node's pod network: makes and removes pods' namespaces, keeps the routes to other
/// nodes' pods.
pub struct PodNetwork;

impl PodNetwork {
    /// Turns on what routing pods needs on the node (forwarding).
    pub fn prepare_node() -> anyhow::Result<()> {
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
            .context("cannot enable IPv4 forwarding (/proc/sys/net/ipv4/ip_forward); the node agent needs root")?;
        Ok(())
    }

    /// Gives pod `uid` its namespace with `ip` on eth0. Idempotent: a namespace kept from
    /// before a restart of the agent is reused as it is.
    pub async fn add_pod(uid: &str, ip: Ipv4Addr) -> anyhow::Result<PodLink> {
        let link = PodLink::for_uid(uid);
        if link.netns_path().exists() && Self::pod_is_wired(&link, ip).await {
            Self::host_link_settings(&link.host_veth)?;
            return Ok(link);
        }
        // Half-made from an earlier try: start again.
        let _ = Self::remove_pod(uid).await;
        let PodLink { netns, host_veth } = &link;
        ip_batch(None, &format!("netns add {netns}\n"))
            .await
            .with_context(|| format!("creating network namespace {netns}"))?;
        ip_batch(
            None,
            &format!(
                "link add {host_veth} address {GATEWAY_MAC} type veth peer name eth0 netns {netns}\n\
                 link set {host_veth} up\n\
                 route replace {ip}/32 dev {host_veth} proto {ROUTE_PROTO} scope link\n"
            ),
        )
        .await
        .with_context(|| format!("wiring {host_veth} for pod address {ip}"))?;
        Self::host_link_settings(host_veth)?;
        ip_batch(
            Some(netns),
            &format!(
                "link set lo up\n\
                 link set eth0 up\n\
                 addr add {ip}/32 dev eth0\n\
                 neigh replace {POD_GATEWAY} lladdr {GATEWAY_MAC} dev eth0 nud permanent\n\
                 route add {POD_GATEWAY} dev eth0 scope link\n\
                 route add default via {POD_GATEWAY} dev eth0\n"
            ),
        )
        .await
        .with_context(|| format!("setting up eth0 {ip} in {netns}"))?;
        Ok(link)
    }

    /// The kernel settings of a pod's link on the host side.
    fn host_link_settings(host_veth: &str) -> anyhow::Result<()> {
        let conf = |setting: &str, value: &str, why: &str| {
            std::fs::write(
                format!("/proc/sys/net/ipv4/conf/{host_veth}/{setting}"),
                value,
            )
            .with_context(|| format!("{why} on {host_veth} ({setting})"))
        };
        // Strict reverse-path filtering on the pod's link: a packet from it must come from an
        // address routed back through it, so a pod (a container with CAP_NET_RAW) cannot
        // forge another pod's address past NetworkPolicy, which matches on source addresses.
        conf("rp_filter", "1", "turning on reverse-path filtering")?;
        // A NodePort reached at 127.0.0.1 from the host is sent to the pod from 127.0.0.1
        // (masqueraded on the way out) and answered back to it: the kernel lets loopback
        // addresses over this link only with route_localnet. The base table refuses new
        // connections to 127.0.0.0/8 from other sources, so pods gain no way in with it.
        conf(
            "route_localnet",
            "1",
            "letting NodePorts answer on 127.0.0.1",
        )
    }

    /// Whether the pod's network is complete: its host route, its address, and its default
    /// route (the last step of `add_pod`, so a half-made one is made again).
    async fn pod_is_wired(link: &PodLink, addr: Ipv4Addr) -> bool {
        let host = ip(&[
            "route",
            "show",
            &format!("{addr}/32"),
            "dev",
            &link.host_veth,
        ])
        .await;
        let inside = ip(&["-n", &link.netns, "addr", "show", "dev", "eth0"]).await;
        let default = ip(&["-n", &link.netns, "route", "show", "default"]).await;
        matches!((host, inside, default), (Ok(h), Ok(a), Ok(d))
            if !h.trim().is_empty() && a.contains(&format!("{addr}/32")) && !d.trim().is_empty())
    }

    /// Removes pod `uid`'s namespace; its veth pair and route go with it.
    pub async fn remove_pod(uid: &str) -> anyhow::Result<()> {
        let link = PodLink::for_uid(uid);
        if link.netns_path().exists() {
            ip(&["netns", "del", &link.netns])
                .await
                .with_context(|| format!("removing network namespace {}", link.netns))?;
        }
        // A veth left without its namespace (never the case after `netns del`, but a crash
        // between the two commands of add_pod can leave one).
        let _ = ip(&["link", "del", &link.host_veth]).await;
        Ok(())
    }

    /// Makes Drover's routes to other nodes' pod ranges exactly `routes` (range → node address).
    pub async fn sync_node_routes(routes: &[(Ipv4Net, Ipv4Addr)]) -> anyhow::Result<()> {
        let current = ip(&["route", "show", "proto", ROUTE_PROTO]).await?;
        let mut batch = String::new();
        for line in current.lines() {
            // Pod /32 routes (dev drv...) are the pods'; only ranges via a node are ours here.
            let mut words = line.split_whitespace();
            let Some(dest) = words.next() else { continue };
            if !line.contains(" via ") {
                continue;
            }
            if !routes.iter().any(|(net, _)| net.to_string() == dest) {
                batch.push_str(&format!("route del {dest} proto {ROUTE_PROTO}\n"));
            }
        }
        for (net, via) in routes {
            batch.push_str(&format!(
                "route replace {net} via {via} proto {ROUTE_PROTO}\n"
            ));
        }
        if !batch.is_empty() {
            ip_batch(None, &batch)
                .await
                .context("updating routes to other nodes' pods")?;
        }
        Ok(())
    }

    /// Makes the node's load balancer addresses (from `--service-lb-pool`) exactly `ips`: local
    /// addresses on `lo`, labelled `lo:drover` to tell them from anyone else's, so that the
    /// node answers ARP for them on its network and takes their traffic to the Services'
    /// rules.
    pub async fn sync_service_addresses(ips: &[Ipv4Addr]) -> anyhow::Result<()> {
        let current = ip(&["-o", "-4", "addr", "show", "dev", "lo", "label", LB_LABEL]).await?;
        let have: Vec<Ipv4Addr> = current
            .lines()
            .filter_map(|l| l.split_whitespace().skip_while(|w| *w != "inet").nth(1))
            .filter_map(|a| a.split('/').next()?.parse().ok())
            .collect();
        let mut batch = String::new();
        for old in have.iter().filter(|a| !ips.contains(a)) {
            batch.push_str(&format!("addr del {old}/32 dev lo label {LB_LABEL}\n"));
        }
        for new in ips.iter().filter(|a| !have.contains(a)) {
            batch.push_str(&format!("addr add {new}/32 dev lo label {LB_LABEL}\n"));
        }
        if !batch.is_empty() {
            ip_batch(None, &batch)
                .await
                .context("updating load balancer addresses")?;
        }
        Ok(())
    }

    /// Removes the namespaces of the pods recorded in `ipam_dir` (see [`crate::ipam`]) and
    /// Drover's routes (`drover node --cleanup`). Other nodes' pods on the same host (test
    /// clusters) are left alone.
    /// Every step is tried; the errors are reported together.
    pub async fn cleanup(ipam_dir: &std::path::Path) -> anyhow::Result<()> {
        let mut errors = Vec::new();
        for uid in crate::ipam::PodAddresses::recorded_pods(ipam_dir) {
            if let Err(e) = Self::remove_pod(&uid).await {
                errors.push(format!("{e:#}"));
            }
        }
        // `flush` fails when there is nothing to flush: not an error here.
        let _ = ip(&["route", "flush", "proto", ROUTE_PROTO]).await;
        if let Err(e) = Self::sync_service_addresses(&[]).await {
            errors.push(format!("{e:#}"));
        }
        anyhow::ensure!(errors.is_empty(), "{}", errors.join("; "));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_the_kernel_limits() {
        let link = PodLink::for_uid("5f1e6a2b-9c3d-4e5f-8a7b-1c2d3e4f5a6b");
        assert_eq!(link.netns, "drover-5f1e6a2b9c3d");
        assert_eq!(link.host_veth, "drv5f1e6a2b9c3d");
        assert!(link.host_veth.len() <= 15);
    }
}
