//! The Services table programmed over netlink ([`network::netlink`]) in a network namespace of
//! its own, against the same ops written by the `nft` program: `nft list table ip drover` must
//! show the same ruleset either way, after a full sync and after changes.
//!
//! Needs root (it creates a network namespace) and the `nft` and `ip` programs; it fails with
//! a clear message without them. CI runs as root.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::process::{Command, Stdio};

use network::services::{self, NodeNet, Op, Protocol, ServicePort};

struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Netns {
        let uid = Command::new("id").arg("-u").output().expect("id -u");
        assert_eq!(
            String::from_utf8_lossy(&uid.stdout).trim(),
            "0",
            "this test needs root: it creates a network namespace"
        );
        let name = format!("drover-nltest-{tag}-{}", std::process::id());
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .expect("ip netns add")
            .success();
        assert!(ok, "cannot create network namespace {name}");
        Netns(name)
    }

    /// Runs `f` on a thread inside the namespace, with a tokio runtime of its own.
    fn within<T: Send + 'static>(&self, f: impl AsyncFnOnce() -> T + Send + 'static) -> T {
        let ns = std::fs::File::open(format!("/run/netns/{}", self.0)).expect("netns file");
        std::thread::spawn(move || {
            rustix::thread::move_into_link_name_space(
                ns.as_fd(),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )
            .expect("setns");
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(f())
        })
        .join()
        .expect("the namespace thread panicked")
    }

    fn apply(&self, ops: &[Op]) -> anyhow::Result<()> {
        let ops = ops.to_vec();
        self.within(async move || network::host::apply_ops(&ops).await)
    }

    /// The same ops through `nft -f -`.
    fn apply_text(&self, ops: &[Op]) {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.0, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("nft (install the nftables package)");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(network::nft::render(ops).as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "nft -f: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn list(&self) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.0, "nft", "list", "ruleset"])
            .output()
            .expect("nft list");
        assert!(
            out.status.success(),
            "nft list: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// A listing with each set's and chain's block as a unit, blocks sorted and elements sorted:
/// what is in the table, whatever the order things were added in.
fn normalized(listing: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut cur: Vec<String> = Vec::new();
    for line in listing.lines() {
        if line.starts_with("\tmap ") || line.starts_with("\tset ") || line.starts_with("\tchain ")
        {
            cur = vec![line.trim().to_string()];
        } else if line == "\t}" {
            let text = cur.join("\n");
            // elements = { a, b,\n c } → sorted
            let text = match (text.find("elements = {"), text.rfind('}')) {
                (Some(start), Some(end)) if end > start => {
                    let inner = &text[start + "elements = {".len()..end];
                    let mut elements: Vec<&str> = inner.split(',').map(str::trim).collect();
                    elements.sort();
                    format!(
                        "{}elements = {{ {} }}{}",
                        &text[..start],
                        elements.join(", "),
                        &text[end + 1..]
                    )
                }
                _ => text,
            };
            blocks.push(text);
            cur = Vec::new();
        } else if !cur.is_empty() && !line.trim().is_empty() {
            cur.push(line.trim().to_string());
        }
    }
    blocks.sort();
    blocks
}

fn port(
    key: &str,
    ip: [u8; 4],
    protocol: Protocol,
    port: u16,
    node_ports: &[u16],
    endpoints: &[([u8; 4], u16)],
) -> (String, ServicePort) {
    let sp = ServicePort {
        key: key.to_string(),
        ips: vec![Ipv4Addr::from(ip)],
        external_ips: vec![],
        protocol,
        port,
        node_ports: node_ports.to_vec(),
        endpoints: endpoints
            .iter()
            .map(|(ip, p)| (Ipv4Addr::from(*ip), *p))
            .collect(),
    };
    (key.to_string(), sp)
}

fn node() -> NodeNet {
    NodeNet {
        cluster_cidr: "10.42.0.0/16".parse().unwrap(),
        dns: Some((Ipv4Addr::new(10, 96, 0, 10), Ipv4Addr::new(192, 0, 2, 10))),
    }
}

fn cluster() -> BTreeMap<String, ServicePort> {
    BTreeMap::from([
        port(
            "default/web/tcp/80",
            [10, 96, 0, 20],
            Protocol::Tcp,
            80,
            &[30080],
            &[([10, 42, 0, 5], 8080), ([10, 42, 1, 6], 8080)],
        ),
        port(
            "default/api/tcp/443",
            [10, 96, 0, 30],
            Protocol::Tcp,
            443,
            &[],
            &[
                ([10, 42, 0, 7], 8443),
                ([10, 42, 1, 8], 8443),
                ([10, 42, 2, 9], 8443),
            ],
        ),
        port(
            "default/nobody/udp/81",
            [10, 96, 0, 21],
            Protocol::Udp,
            81,
            &[30081],
            &[],
        ),
        port(
            "kube-system/metrics/tcp/9100",
            [10, 96, 0, 40],
            Protocol::Tcp,
            9100,
            &[],
            &[([10, 42, 3, 3], 9100)],
        ),
    ])
}

#[test]
fn netlink_programs_the_same_table_as_nft() {
    let ns = Netns::new("same");
    let node = node();
    let ports = cluster();
    let full = services::full(&node, &ports);

    // The nft program's version first; the netlink full sync then replaces it.
    ns.apply_text(&full);
    let by_nft = ns.list();
    ns.apply(&full).expect("full sync over netlink");
    let by_netlink = ns.list();
    assert_eq!(normalized(&by_netlink), normalized(&by_nft));
    for want in [
        "ip daddr . meta l4proto . th dport vmap @service-ips",
        "fib daddr type local meta l4proto . th dport vmap @service-nodeports",
        "meta mark set meta mark | 0x00004000",
        "meta mark & 0x00004000 == 0x00004000 masquerade",
        "ip saddr 10.42.0.0/16 ip daddr != 10.42.0.0/16 fib daddr type != local masquerade",
        "ip daddr . meta l4proto . th dport @no-endpoint-services reject",
        "fib daddr type local meta l4proto . th dport @no-endpoint-nodeports reject",
        "ct state new jump service-rejects",
        "ip daddr 10.96.0.10 udp dport 53 dnat to 192.0.2.10",
        "ip daddr 10.96.0.10 tcp dport 53 dnat to 192.0.2.10",
        "10.96.0.20 . tcp . 80 : goto svc/default/web/tcp/80",
        "tcp . 30080 : goto svc/default/web/tcp/80",
        "fib daddr type local meta l4proto . th dport @external-nodeports meta mark set meta mark | 0x00004000",
        "ip daddr . meta l4proto . th dport @external-ips meta mark set meta mark | 0x00004000",
        "meta l4proto tcp numgen random mod 2 0 dnat to 10.42.0.5:8080",
        "meta l4proto tcp dnat to 10.42.1.6:8080",
        "meta l4proto tcp numgen random mod 3 0 dnat to 10.42.0.7:8443",
        "elements = { 10.96.0.21 . udp . 81 }",
        "elements = { udp . 30081 }",
        "type nat hook prerouting priority dstnat; policy accept;",
        "type filter hook forward priority filter - 10; policy accept;",
    ] {
        assert!(by_netlink.contains(want), "no `{want}` in\n{by_netlink}");
    }

    // A full sync again replaces the table in place.
    ns.apply(&full).expect("second full sync");
    assert_eq!(normalized(&ns.list()), normalized(&by_nft));

    // One added, one changed (3 endpoints to 1, and now a NodePort), one removed, one that
    // lost its endpoints.
    let mut next = ports.clone();
    next.extend([
        port(
            "default/new/tcp/8080",
            [10, 96, 0, 50],
            Protocol::Tcp,
            8080,
            &[],
            &[([10, 42, 4, 4], 80)],
        ),
        port(
            "default/api/tcp/443",
            [10, 96, 0, 30],
            Protocol::Tcp,
            443,
            &[30443],
            &[([10, 42, 2, 9], 8443)],
        ),
        port(
            "default/web/tcp/80",
            [10, 96, 0, 20],
            Protocol::Tcp,
            80,
            &[30080],
            &[],
        ),
    ]);
    next.remove("kube-system/metrics/tcp/9100");
    let changes = services::changes(&ports, &next);
    ns.apply(&changes).expect("changes over netlink");
    let after = ns.list();
    // As if programmed from nothing with the new state.
    let fresh = Netns::new("fresh");
    fresh.apply_text(&services::full(&node, &next));
    assert_eq!(normalized(&after), normalized(&fresh.list()));
    assert!(after.contains("10.96.0.50 . tcp . 8080 : goto svc/default/new/tcp/8080"));
    assert!(after.contains("tcp . 30443 : goto svc/default/api/tcp/443"));
    assert!(!after.contains("10.42.0.7"), "{after}");
    assert!(!after.contains("metrics"), "{after}");
    assert!(!after.contains("10.42.1.6"), "{after}");
    assert!(after.contains("10.96.0.20 . tcp . 80"), "{after}");

    // Nothing left to do: no batch at all.
    assert!(services::changes(&next, &next).is_empty());
    ns.apply(&[]).expect("an empty batch is nothing");

    // A batch the kernel refuses is refused whole, and says which op and why.
    let mut bad = services::changes(&next, &ports);
    bad.push(Op::DeleteChain("svc/default/not-there/tcp/1".into()));
    let err = ns
        .apply(&bad)
        .expect_err("deleting a missing chain fails")
        .to_string();
    assert!(
        err.contains("delete chain ip drover-svc")
            && err.contains(" svc/default/not-there/tcp/1")
            && err.contains("No such file or directory"),
        "{err}"
    );
    assert_eq!(
        normalized(&ns.list()),
        normalized(&after),
        "nothing applied"
    );
}

#[test]
fn a_large_table_goes_in_one_batch() {
    let ns = Netns::new("large");
    let mut ports = BTreeMap::new();
    for i in 0..3000u32 {
        let ip = Ipv4Addr::from((10 << 24 | 97 << 16) + i);
        let key = format!("bench/svc-{i}/tcp/80");
        ports.insert(
            key.clone(),
            ServicePort {
                key,
                ips: vec![ip],
                external_ips: vec![],
                protocol: Protocol::Tcp,
                port: 80,
                node_ports: if i % 10 == 0 {
                    vec![30000 + i as u16]
                } else {
                    vec![]
                },
                endpoints: (0..3)
                    .map(|k| (Ipv4Addr::from((10 << 24 | 42 << 16) + i * 3 + k), 8080))
                    .collect(),
            },
        );
    }
    // Without the table, every message fails: the first is named, the rest counted.
    let err = ns
        .apply(&services::changes(&BTreeMap::new(), &ports))
        .expect_err("no table yet")
        .to_string();
    assert!(
        err.contains(&format!(
            "`add chain ip {} svc/bench/svc-",
            services::shard_table(0)
        )) && err.contains("`: No such file or directory")
            && err.contains("more errors"),
        "{err}"
    );

    let full = services::full(&node(), &ports);
    let batch = network::netlink::Batch::encode(&full);
    assert!(
        batch.bytes().len() > 1 << 20,
        "{} bytes",
        batch.bytes().len()
    );
    ns.apply(&full).expect("large full sync");
    let listing = ns.list();
    // 3000 ClusterIPs and 300 NodePorts, each to its Service port's chain.
    assert_eq!(listing.matches(": goto svc/bench/").count(), 3300);
    assert_eq!(listing.matches("dnat to 10.42.").count(), 9000);
}
