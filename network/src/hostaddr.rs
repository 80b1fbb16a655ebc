//! The host's primary address, as kubelet picks a node's InternalIP when none is given: the
//! source address the kernel uses on the default route. Read from `/proc/net/route` (which
//! route is the default) and from a route lookup towards its gateway (a UDP `connect`, which
//! sends no packet), so no netlink or `ip` program is needed, and it works without root.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};

/// The address chosen, or why none could be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostAddress {
    /// The source address of the default route through `interface`.
    DefaultRoute {
        address: Ipv4Addr,
        interface: String,
    },
    /// No usable default route: the host is offline or has only local networks.
    NoDefaultRoute(String),
}

/// One default route of `/proc/net/route`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DefaultRoute {
    pub interface: String,
    /// 0.0.0.0 for a route straight onto a link (no gateway).
    pub gateway: Ipv4Addr,
    pub metric: u32,
}

/// The default route with the lowest metric among those that are up, from the text of
/// `/proc/net/route` (addresses in the kernel's byte order, written as hex).
pub fn default_route(proc_net_route: &str) -> Option<DefaultRoute> {
    const RTF_UP: u32 = 0x1;
    proc_net_route
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let hex = |i: usize| u32::from_str_radix(f.get(i)?, 16).ok();
            let (destination, gateway, flags, mask) = (hex(1)?, hex(2)?, hex(3)?, hex(7)?);
            let metric = f.get(6)?.parse::<u32>().ok()?;
            let default = destination == 0 && mask == 0 && flags & RTF_UP != 0;
            default.then(|| DefaultRoute {
                interface: f[0].to_string(),
                // The file prints the address's bytes (network order) as one integer of the
                // host's order: its native bytes are the address.
                gateway: Ipv4Addr::from(gateway.to_ne_bytes()),
                metric,
            })
        })
        .filter(|r| r.interface != "lo")
        .min_by_key(|r| r.metric)
}

/// The host's primary IPv4 address (see the module doc).
pub fn primary_ipv4() -> HostAddress {
    let table = match std::fs::read_to_string("/proc/net/route") {
        Ok(t) => t,
        Err(e) => return HostAddress::NoDefaultRoute(format!("cannot read /proc/net/route: {e}")),
    };
    let Some(route) = default_route(&table) else {
        return HostAddress::NoDefaultRoute("the host has no default route".into());
    };
    if route.gateway.is_unspecified() {
        return HostAddress::NoDefaultRoute(format!(
            "the default route on {} has no gateway to take the source address of",
            route.interface
        ));
    }
    // The kernel's own choice of source towards the gateway.
    let source = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
        .and_then(|s| {
            s.connect(SocketAddr::from((route.gateway, 9)))?;
            s.local_addr()
        })
        .map(|a| a.ip());
    match source {
        Ok(IpAddr::V4(address)) if !address.is_loopback() && !address.is_unspecified() => {
            HostAddress::DefaultRoute {
                address,
                interface: route.interface,
            }
        }
        Ok(other) => HostAddress::NoDefaultRoute(format!(
            "the default route through {} has no usable source address ({other})",
            route.interface
        )),
        Err(e) => HostAddress::NoDefaultRoute(format!(
            "no route towards the default gateway {} on {}: {e}",
            route.gateway, route.interface
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str =
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
        eth0\t00000000\t010200C0\t0003\t0\t0\t100\t00000000\t0\t0\t0\n\
        eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
        wlan0\t00000000\t0100A8C0\t0003\t0\t0\t600\t00000000\t0\t0\t0\n";

    #[test]
    fn the_default_route_with_the_lowest_metric_wins() {
        let route = default_route(TABLE).unwrap();
        assert_eq!(route.interface, "eth0");
        assert_eq!(route.metric, 100);
        if cfg!(target_endian = "little") {
            assert_eq!(route.gateway, Ipv4Addr::new(192, 0, 2, 1));
        }
    }

    #[test]
    fn no_default_route_no_answer() {
        let only_local = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\n\
            eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\n";
        assert_eq!(default_route(only_local), None);
        // A route that is down is no way out.
        let down = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\n\
            eth0\t00000000\t010200C0\t0002\t0\t0\t0\t00000000\n";
        assert_eq!(default_route(down), None);
        assert_eq!(default_route(""), None);
        assert_eq!(default_route("garbage\nmore garbage here\n"), None);
    }

    #[test]
    fn this_host_answers_with_an_address_or_says_why_not() {
        match primary_ipv4() {
            HostAddress::DefaultRoute { address, interface } => {
                assert!(!address.is_loopback());
                assert!(!interface.is_empty());
            }
            HostAddress::NoDefaultRoute(why) => assert!(!why.is_empty()),
        }
    }
}
