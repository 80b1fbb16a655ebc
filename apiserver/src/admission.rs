//! Admission that needs the store: Service ClusterIPs (from the service CIDR) and NodePorts
//! (30000–32767), never handed out twice.
//!
//! Each allocated IP or port is a key of its own (`/registry/ranges/serviceips/<ip>`,
//! `/registry/ranges/nodeports/<port>`), created in the same transaction as the Service with a
//! "does not exist" comparison. Two concurrent creates that pick the same IP cannot both
//! commit: one transaction fails its comparison and tries another IP. Deleting the Service
//! deletes its reservations in the same transaction.

use std::net::Ipv4Addr;

use serde_json::{json, Value};

/// The service CIDR: 10.96.0.0/12, as kubeadm's default. 10.96.0.1 is the `kubernetes` Service.
pub const SERVICE_NET: (Ipv4Addr, u32) = (Ipv4Addr::new(10, 96, 0, 0), 12);
pub const API_SERVICE_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 1);
/// The cluster DNS Service (kube-system/kube-dns), as kubeadm's.
pub const DNS_SERVICE_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
pub const NODE_PORTS: std::ops::RangeInclusive<u16> = 30000..=32767;

const IP_PREFIX: &str = "/registry/ranges/serviceips/";
const PORT_PREFIX: &str = "/registry/ranges/nodeports/";

/// One key that must not exist yet, and whether the client chose it (then a clash is the
/// client's error, not a reason to pick again).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    pub key: String,
    pub chosen_by_client: bool,
    pub what: String,
}

fn in_service_net(ip: Ipv4Addr) -> bool {
    let (net, bits) = SERVICE_NET;
    let mask = u32::MAX << (32 - bits);
    u32::from(ip) & mask == u32::from(net)
}

fn random_service_ip() -> Ipv4Addr {
    let (net, bits) = SERVICE_NET;
    let size = 1u32 << (32 - bits);
    // Skip the network address, .1 (the API) and the broadcast address.
    Ipv4Addr::from(u32::from(net) + 2 + rand::random::<u32>() % (size - 3))
}

/// Fills in a new Service's ClusterIP and NodePorts (picking free-looking ones at random) and
/// returns the keys to reserve with it. Errors name the field, for a 422.
pub fn service_create(svc: &mut Value) -> Result<Vec<Reservation>, (String, String)> {
    let mut out = Vec::new();
    let spec = &mut svc["spec"];
    let kind = spec["type"].as_str().unwrap_or("ClusterIP").to_string();
    if kind == "ExternalName" {
        return Ok(out);
    }
    match spec["clusterIP"].as_str() {
        Some("None") => {}
        Some(ip) if !ip.is_empty() => {
            let parsed: Ipv4Addr = ip.parse().map_err(|_| {
                (
                    "spec.clusterIP".to_string(),
                    format!("\"{ip}\": must be a valid IP address"),
                )
            })?;
            if !in_service_net(parsed) {
                return Err((
                    "spec.clusterIP".into(),
                    format!("\"{ip}\": provided IP is not in the valid range 10.96.0.0/12"),
                ));
            }
            out.push(Reservation {
                key: format!("{IP_PREFIX}{parsed}"),
                chosen_by_client: true,
                what: format!("spec.clusterIP: {ip}"),
            });
        }
        _ => {
            let ip = random_service_ip();
            spec["clusterIP"] = json!(ip.to_string());
            out.push(Reservation {
                key: format!("{IP_PREFIX}{ip}"),
                chosen_by_client: false,
                what: format!("spec.clusterIP: {ip}"),
            });
        }
    }
    if let Some(ip) = spec["clusterIP"].as_str().filter(|ip| *ip != "None") {
        spec["clusterIPs"] = json!([ip]);
        spec["ipFamilies"] = json!(["IPv4"]);
        spec["ipFamilyPolicy"] = json!("SingleStack");
    }
    if kind == "NodePort" || kind == "LoadBalancer" {
        // A random pick avoids the ports the client chose and the picks before it: a
        // duplicate is the client's mistake only.
        let mut avoid: std::collections::BTreeSet<i64> = spec["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["nodePort"].as_i64().filter(|n| *n != 0))
            .collect();
        if let Some(ports) = spec["ports"].as_array_mut() {
            for (i, p) in ports.iter_mut().enumerate() {
                match p["nodePort"].as_i64() {
                    Some(n) if n != 0 => {
                        let n = u16::try_from(n).ok().filter(|n| NODE_PORTS.contains(n)).ok_or_else(|| {
                            (format!("spec.ports[{i}].nodePort"), format!("{n}: provided port is not in the valid range. The range of valid ports is 30000-32767"))
                        })?;
                        out.push(Reservation {
                            key: format!("{PORT_PREFIX}{n}"),
                            chosen_by_client: true,
                            what: format!("spec.ports[{i}].nodePort: {n}"),
                        });
                    }
                    _ => {
                        let span = u32::from(NODE_PORTS.end() - NODE_PORTS.start()) + 1;
                        let n = loop {
                            let n = NODE_PORTS.start() + (rand::random::<u32>() % span) as u16;
                            if avoid.insert(i64::from(n)) {
                                break n;
                            }
                        };
                        p["nodePort"] = json!(n);
                        out.push(Reservation {
                            key: format!("{PORT_PREFIX}{n}"),
                            chosen_by_client: false,
                            what: format!("spec.ports[{i}].nodePort: {n}"),
                        });
                    }
                }
            }
        }
    }
    // Two ports of one Service cannot share a node port.
    for (i, a) in out.iter().enumerate() {
        if out[i + 1..].iter().any(|b| b.key == a.key) {
            return Err((
                "spec.ports".into(),
                format!("{}: duplicate node port", a.what),
            ));
        }
    }
    Ok(out)
}

/// The reservation keys a stored Service holds (to delete with it).
pub fn service_reservations(svc: &Value) -> Vec<String> {
    let mut keys = Vec::new();
    if let Some(ip) = svc["spec"]["clusterIP"]
        .as_str()
        .filter(|ip| ip.parse::<Ipv4Addr>().is_ok())
    {
        keys.push(format!("{IP_PREFIX}{ip}"));
    }
    for p in svc["spec"]["ports"]
        .as_array()
        .map_or(&[][..], Vec::as_slice)
    {
        if let Some(n) = p["nodePort"].as_i64().filter(|n| *n != 0) {
            keys.push(format!("{PORT_PREFIX}{n}"));
        }
    }
    keys
}

/// What a Service update changes in the reservations: keys to take (that must be free) and
/// keys to give back.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ServiceChange {
    pub acquire: Vec<Reservation>,
    pub release: Vec<String>,
}

/// Checks and completes a Service update. The ClusterIP cannot change (a client that leaves it
/// out keeps the old one). Node ports follow the type: a NodePort or LoadBalancer Service keeps
/// the node port each of its ports had (by port and protocol), gets a new one for a new port,
/// or takes the one the client chose; any other type gives its node ports back.
pub fn service_update(old: &Value, new: &mut Value) -> Result<ServiceChange, (String, String)> {
    let before = old["spec"]["clusterIP"].clone();
    match new["spec"]["clusterIP"].as_str() {
        None | Some("") => {
            new["spec"]["clusterIP"] = before;
            new["spec"]["clusterIPs"] = old["spec"]["clusterIPs"].clone();
        }
        Some(ip) if Some(ip) == before.as_str() => {}
        Some(ip) => {
            return Err((
                "spec.clusterIP".into(),
                format!("\"{ip}\": field is immutable"),
            ))
        }
    }
    let port_key = |p: &Value| {
        (
            p["port"].as_i64(),
            p["protocol"].as_str().unwrap_or("TCP").to_string(),
        )
    };
    let previous: std::collections::HashMap<_, i64> = old["spec"]["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| Some((port_key(p), p["nodePort"].as_i64().filter(|n| *n != 0)?)))
        .collect();
    let old_keys = service_reservations(old);
    let kind = new["spec"]["type"]
        .as_str()
        .unwrap_or("ClusterIP")
        .to_string();
    // Ports a random pick must avoid: those the client chose or this Service keeps, and those
    // it had (a port given back is not handed out again in the same change).
    let mut avoid: std::collections::BTreeSet<i64> = new["spec"]["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            p["nodePort"]
                .as_i64()
                .filter(|n| *n != 0)
                .or_else(|| previous.get(&port_key(p)).copied())
        })
        .collect();
    avoid.extend(previous.values().copied());
    let mut acquire = Vec::new();
    for (i, p) in new["spec"]["ports"]
        .as_array_mut()
        .into_iter()
        .flatten()
        .enumerate()
    {
        if kind != "NodePort" && kind != "LoadBalancer" {
            if let Some(m) = p.as_object_mut() {
                m.remove("nodePort");
            }
            continue;
        }
        let (n, chosen_by_client) = match p["nodePort"].as_i64().filter(|n| *n != 0) {
            Some(n) => (n, true),
            None => match previous.get(&port_key(p)) {
                Some(kept) => (*kept, false),
                None => {
                    let span = u32::from(NODE_PORTS.end() - NODE_PORTS.start()) + 1;
                    let n = loop {
                        let n =
                            i64::from(NODE_PORTS.start() + (rand::random::<u32>() % span) as u16);
                        if avoid.insert(n) {
                            break n;
                        }
                    };
                    (n, false)
                }
            },
        };
        if !u16::try_from(n).is_ok_and(|n| NODE_PORTS.contains(&n)) {
            return Err((
                format!("spec.ports[{i}].nodePort"),
                format!("{n}: provided port is not in the valid range. The range of valid ports is 30000-32767"),
            ));
        }
        p["nodePort"] = json!(n);
        let key = format!("{PORT_PREFIX}{n}");
        if acquire.iter().any(|r: &Reservation| r.key == key) {
            return Err((
                "spec.ports".into(),
                format!("spec.ports[{i}].nodePort: {n}: duplicate node port"),
            ));
        }
        acquire.push(Reservation {
            key,
            chosen_by_client,
            what: format!("spec.ports[{i}].nodePort: {n}"),
        });
    }
    let new_keys = service_reservations(new);
    Ok(ServiceChange {
        acquire: acquire
            .into_iter()
            .filter(|r| !old_keys.contains(&r.key))
            .collect(),
        release: old_keys
            .into_iter()
            .filter(|k| !new_keys.contains(k))
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_ips_and_node_ports_are_picked_in_range() {
        let mut svc = json!({"spec": {"type": "NodePort", "ports": [{"port": 80}, {"port": 443, "nodePort": 30443}]}});
        let r = service_create(&mut svc).unwrap();
        let ip: Ipv4Addr = svc["spec"]["clusterIP"].as_str().unwrap().parse().unwrap();
        assert!(in_service_net(ip) && ip != API_SERVICE_IP);
        assert!(
            NODE_PORTS.contains(&(svc["spec"]["ports"][0]["nodePort"].as_i64().unwrap() as u16))
        );
        assert_eq!(r.len(), 3);
        assert!(r
            .iter()
            .any(|x| x.chosen_by_client && x.key.ends_with("/30443")));
        assert_eq!(service_reservations(&svc).len(), 3);
    }

    #[test]
    fn bad_choices_name_the_field() {
        let mut out_of_range = json!({"spec": {"clusterIP": "192.168.1.1"}});
        assert_eq!(
            service_create(&mut out_of_range).unwrap_err().0,
            "spec.clusterIP"
        );
        let mut bad_port =
            json!({"spec": {"type": "NodePort", "ports": [{"port": 80, "nodePort": 80}]}});
        assert_eq!(
            service_create(&mut bad_port).unwrap_err().0,
            "spec.ports[0].nodePort"
        );
        let mut dup = json!({"spec": {"type": "NodePort", "ports": [{"port": 80, "nodePort": 30001}, {"port": 81, "nodePort": 30001}]}});
        assert!(service_create(&mut dup)
            .unwrap_err()
            .1
            .contains("duplicate"));
        let mut headless = json!({"spec": {"clusterIP": "None"}});
        assert!(service_create(&mut headless).unwrap().is_empty());
    }

    #[test]
    fn node_ports_follow_the_type_and_are_kept_by_port() {
        let old = json!({"spec": {"type": "NodePort", "clusterIP": "10.96.0.9", "ports": [
            {"port": 80, "nodePort": 30080}, {"port": 443, "nodePort": 30443}]}});
        // Same ports, no nodePort sent: each keeps its own, nothing changes hands.
        let mut same =
            json!({"spec": {"type": "NodePort", "ports": [{"port": 443}, {"port": 80}]}});
        assert_eq!(
            service_update(&old, &mut same).unwrap(),
            ServiceChange::default()
        );
        assert_eq!(same["spec"]["ports"][0]["nodePort"], 30443);
        // A new port gets a new node port; a dropped one is given back; a chosen one is taken.
        let mut changed = json!({"spec": {"type": "NodePort", "ports": [{"port": 80}, {"port": 8080}, {"port": 9090, "nodePort": 31000}]}});
        let c = service_update(&old, &mut changed).unwrap();
        assert_eq!(c.release, vec![format!("{PORT_PREFIX}30443")]);
        assert_eq!(c.acquire.len(), 2);
        assert!(!c.acquire[0].chosen_by_client && c.acquire[1].chosen_by_client);
        assert_eq!(c.acquire[1].key, format!("{PORT_PREFIX}31000"));
        // ClusterIP again: all node ports go back.
        let mut plain =
            json!({"spec": {"type": "ClusterIP", "ports": [{"port": 80, "nodePort": 30080}]}});
        let c = service_update(&old, &mut plain).unwrap();
        assert!(plain["spec"]["ports"][0].get("nodePort").is_none());
        assert_eq!(c.release.len(), 2);
        let mut bad =
            json!({"spec": {"type": "NodePort", "ports": [{"port": 80, "nodePort": 80}]}});
        assert_eq!(
            service_update(&old, &mut bad).unwrap_err().0,
            "spec.ports[0].nodePort"
        );
    }

    #[test]
    fn the_cluster_ip_is_immutable() {
        let old = json!({"spec": {"clusterIP": "10.96.0.9", "clusterIPs": ["10.96.0.9"]}});
        let mut keep = json!({"spec": {}});
        service_update(&old, &mut keep).unwrap();
        assert_eq!(keep["spec"]["clusterIP"], "10.96.0.9");
        let mut change = json!({"spec": {"clusterIP": "10.96.0.10"}});
        assert!(service_update(&old, &mut change)
            .unwrap_err()
            .1
            .contains("immutable"));
    }
}
