//! Services in nftables, as a node programs them (`network::services`), measured in a network
//! namespace of their own (needs root):
//!
//! - full: N Services × E endpoints programmed from nothing, one atomic batch;
//! - add / change: one Service added, and one Service's endpoints changed, when N exist;
//! - first packet: TCP connect time (SYN to SYN-ACK, the first packet DNATed) from the node to
//!   a Service's ClusterIP whose endpoint is a pod on the node, with 10 and with N Services,
//!   beside a direct connect to the pod's address.
//!
//! Prints one JSON line per measurement.
//!
//!     target/release/net-bench [--services 10000] [--endpoints 3] [--repeats 20] [--connects 2000]

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use clap::Parser;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use network::services::{self, NodeNet, Op, ServicePort};
use serde_json::json;

#[derive(Parser, Clone)]
struct Args {
    #[arg(long, default_value_t = 10_000)]
    services: usize,
    #[arg(long, default_value_t = 3)]
    endpoints: usize,
    /// Repeats of the add and change measurements (and 3 of the full one).
    #[arg(long, default_value_t = 20)]
    repeats: usize,
    /// TCP connects per first-packet measurement.
    #[arg(long, default_value_t = 2000)]
    connects: usize,
    /// Measure one-Service changes back to back instead of 100 ms apart.
    #[arg(long)]
    back_to_back: bool,
}

const NETNS: &str = "drover-netbench";
const POD_UID: &str = "netbench-pod-0000";
const POD_IP: Ipv4Addr = Ipv4Addr::new(10, 42, 0, 2);
const TARGET_IP: &str = "10.96.0.5";

fn cluster_ip(i: usize) -> String {
    // 10.97.0.0 upwards: clear of the target's 10.96.0.5.
    let n = (10u32 << 24 | 97 << 16) + i as u32;
    Ipv4Addr::from(n).to_string()
}

/// Service `i` with `e` endpoints (made-up pod addresses), as objects the API would hold.
fn service(
    i: usize,
    e: usize,
    ip: &str,
    endpoint_ips: Option<Vec<String>>,
) -> (Service, EndpointSlice) {
    let name = format!("svc-{i}");
    let svc = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "bench"},
        "spec": {"clusterIP": ip, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
    }))
    .expect("valid Service");
    let ips = endpoint_ips.unwrap_or_else(|| {
        (0..e)
            .map(|k| {
                let n = (10u32 << 24 | 42 << 16 | 1 << 8) + (i * e + k) as u32;
                Ipv4Addr::from(n).to_string()
            })
            .collect()
    });
    let slice = serde_json::from_value(json!({
        "metadata": {"name": format!("{name}-x"), "namespace": "bench", "labels": {"kubernetes.io/service-name": name}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": ips.iter().map(|ip| json!({"addresses": [ip], "conditions": {"ready": true}})).collect::<Vec<_>>()
    }))
    .expect("valid EndpointSlice");
    (svc, slice)
}

/// The target Service (its endpoint the bench's pod) and `n - 1` others.
fn cluster(n: usize, e: usize) -> BTreeMap<String, ServicePort> {
    let mut svcs = Vec::new();
    let mut slices = Vec::new();
    let (s, sl) = service(0, 1, TARGET_IP, Some(vec![POD_IP.to_string()]));
    svcs.push(s);
    slices.push(sl);
    for i in 1..n {
        let (s, sl) = service(i, e, &cluster_ip(i), None);
        svcs.push(s);
        slices.push(sl);
    }
    services::desired(&svcs, &slices)
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn p99(v: &mut [Duration]) -> Duration {
    v.sort();
    v[(v.len() * 99 / 100).min(v.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn node() -> NodeNet {
    NodeNet {
        cluster_cidr: "10.42.0.0/16".parse().expect("valid"),
        dns: None,
    }
}

async fn timed_apply(batch: &[Op]) -> anyhow::Result<Duration> {
    let t = Instant::now();
    network::host::apply_ops(batch).await?;
    Ok(t.elapsed())
}

/// Connect times to `addr`, `n` of them.
fn connects(addr: SocketAddr, n: usize) -> anyhow::Result<Vec<Duration>> {
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        times.push(t.elapsed());
        drop(s);
    }
    Ok(times)
}

async fn first_packet(args: &Args, services_now: usize) -> anyhow::Result<()> {
    let target: SocketAddr = format!("{TARGET_IP}:80").parse()?;
    let direct = SocketAddr::new(POD_IP.into(), 8080);
    // Warm up (ARP, caches), then measure.
    connects(target, 50)?;
    let mut via_service = connects(target, args.connects)?;
    let mut straight = connects(direct, args.connects)?;
    println!(
        "{}",
        json!({"measure": "first_packet", "services": services_now,
               "service_connect_p50_us": us(median(&mut via_service)), "service_connect_p99_us": us(p99(&mut via_service)),
               "direct_connect_p50_us": us(median(&mut straight)), "direct_connect_p99_us": us(p99(&mut straight))})
    );
    Ok(())
}

async fn bench(args: Args) -> anyhow::Result<()> {
    network::pods::PodNetwork::prepare_node()?;
    // A pod to reach: its namespace and address as the node makes them, and a listener in it
    // (accepting and closing, on a thread).
    network::pods::PodNetwork::add_pod(POD_UID, POD_IP).await?;
    let netns = network::pods::PodLink::for_uid(POD_UID).netns_path();
    let listener = runtime::netns::within(&netns, || TcpListener::bind((POD_IP, 8080)))?;
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            drop(conn);
        }
    });

    // A few Services: the first-packet baseline.
    let small = cluster(10, args.endpoints);
    network::host::apply_ops(&services::full(&node(), &small)).await?;
    first_packet(&args, 10).await?;

    // N Services from nothing.
    let big = cluster(args.services, args.endpoints);
    let full = services::full(&node(), &big);
    let mut fulls = Vec::new();
    for _ in 0..3 {
        network::host::apply_nft_script(&format!(
            "add table ip {0}\ndelete table ip {0}\n",
            services::TABLE
        ))
        .await?;
        fulls.push(timed_apply(&full).await?);
    }
    let batch_bytes = network::netlink::Batch::encode(&full).bytes().len();
    println!(
        "{}",
        json!({"measure": "full", "services": args.services, "endpoints": args.endpoints,
               "batch_bytes": batch_bytes, "median_ms": ms(median(&mut fulls)),
               "runs_ms": fulls.iter().map(|d| ms(*d)).collect::<Vec<_>>()})
    );
    first_packet(&args, args.services).await?;

    // One Service added (and taken away again between runs), and one changed.
    let mut plus_one = big.clone();
    let (s, sl) = service(
        args.services + 1,
        args.endpoints,
        &cluster_ip(args.services + 1),
        None,
    );
    plus_one.extend(services::desired(&[s], &[sl]));
    let mut changed = big.clone();
    let (s, sl) = service(
        1,
        args.endpoints.saturating_sub(1).max(1),
        &cluster_ip(1),
        None,
    );
    changed.extend(services::desired(&[s], &[sl]));
    let (mut adds, mut changes) = (Vec::new(), Vec::new());
    // Each measured change comes 100 ms after the one before, as changes do on a node: back to
    // back, a commit also waits for the kernel's deferred clean-up of the previous one (a
    // grace period, ~5 ms here), which `--back-to-back` measures.
    let gap = Duration::from_millis(if args.back_to_back { 0 } else { 100 });
    for _ in 0..args.repeats {
        tokio::time::sleep(gap).await;
        adds.push(timed_apply(&services::changes(&big, &plus_one)).await?);
        network::host::apply_ops(&services::changes(&plus_one, &big)).await?;
        tokio::time::sleep(gap).await;
        changes.push(timed_apply(&services::changes(&big, &changed)).await?);
        network::host::apply_ops(&services::changes(&changed, &big)).await?;
    }
    println!(
        "{}",
        json!({"measure": "one_service", "services": args.services, "back_to_back": args.back_to_back,
               "add_median_ms": ms(median(&mut adds)), "add_p99_ms": ms(p99(&mut adds)),
               "change_median_ms": ms(median(&mut changes)), "change_p99_ms": ms(p99(&mut changes))})
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _ = Command::new("ip").args(["netns", "del", NETNS]).status();
    let ok = Command::new("ip")
        .args(["netns", "add", NETNS])
        .status()?
        .success();
    anyhow::ensure!(
        ok,
        "cannot create network namespace {NETNS} (the bench needs root)"
    );
    // Everything runs on a thread inside the bench's namespace; the nft and ip processes it
    // starts are born there too.
    let result = runtime::netns::within(Path::new(&format!("/run/netns/{NETNS}")), move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let r = rt.block_on(async {
            // A node has a default route; without one, a connect to a ClusterIP fails before
            // nftables sees it.
            for cmd in [
                "link set lo up",
                "link add uplink type veth peer name uplink-peer",
                "link set uplink up",
                "link set uplink-peer up",
                "addr add 192.0.2.10/24 dev uplink",
                "route add default dev uplink",
            ] {
                let _ = Command::new("ip").args(cmd.split(' ')).status();
            }
            let r = bench(args).await;
            let _ = network::pods::PodNetwork::remove_pod(POD_UID).await;
            r
        });
        r.map_err(|e| std::io::Error::other(format!("{e:#}")))
    });
    let _ = Command::new("ip").args(["netns", "del", NETNS]).status();
    result.map_err(Into::into)
}
