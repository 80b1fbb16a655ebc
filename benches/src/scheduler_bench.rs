//! Scheduler throughput with 5,000 simulated nodes and 10,000 pending pods (mixed requests,
//! a tenth with required anti-affinity, a tenth with topology spread over zones), as issue 5
//! and Kubernetes' scheduler_perf measure it:
//!
//! - `core`: the scheduler's decision core alone (queue, filters, scores, assume), in process;
//! - `e2e`: one `drover server` whose scheduler binds pods created through the API, with the
//!   nodes simulated (Node objects without agents, and the server started with a long
//!   node grace period so they are not declared lost). Pods are created by concurrent clients
//!   while the scheduler runs (or, with `--pods-first`, before the nodes exist, so the queue is
//!   full when they come); the rate is bound pods per second from the first binding to the
//!   last, read from a watch.
//!
//!     target/release/scheduler-bench [--mode core|e2e|both] [--pods-first] [--nodes 5000] [--pods 10000]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use scheduler::cluster::{NodeState, PodInfo};
use scheduler::queue::Queue;
use scheduler::schedule::Scheduler;
use serde_json::{json, Value};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "both")]
    mode: String,
    #[arg(long, default_value = "target/release/drover")]
    drover: PathBuf,
    #[arg(long, default_value_t = 5000)]
    nodes: usize,
    #[arg(long, default_value_t = 10000)]
    pods: usize,
    /// Runs of the core measurement (the median is reported).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Concurrent clients creating pods in the end-to-end run.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// End to end: create the pods before the nodes, so the scheduler works from a full queue
    /// rather than at the pace of pod creation.
    #[arg(long)]
    pods_first: bool,
}

fn node_json(i: usize) -> Value {
    json!({"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": format!("sim-{i}"), "labels": {
            "kubernetes.io/hostname": format!("sim-{i}"),
            "topology.kubernetes.io/zone": format!("zone-{}", i % 10)}},
        "spec": {},
        "status": {"allocatable": {"cpu": "32", "memory": "128Gi", "pods": "110"},
                   "capacity": {"cpu": "32", "memory": "128Gi", "pods": "110"},
                   "conditions": [{"type": "Ready", "status": "True"}]}})
}

/// Pod `i`: requests from 100m/128Mi to 1/2Gi; every tenth with anti-affinity among its app
/// (groups of 10), every tenth (offset) spread over zones.
fn pod_json(i: usize) -> Value {
    let cpu = format!("{}m", 100 + (i % 10) * 100);
    let memory = format!("{}Mi", 128 * (1 + i % 16));
    let app = format!("app-{}", i / 10);
    let mut pod = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("p{i}"), "namespace": "default", "labels": {"app": app}},
        "spec": {"containers": [{"name": "c", "image": "example/hello:1",
            "resources": {"requests": {"cpu": cpu, "memory": memory}}}]}});
    if i % 10 == 3 {
        pod["spec"]["affinity"] = json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
            [{"labelSelector": {"matchLabels": {"app": app}}, "topologyKey": "kubernetes.io/hostname"}]}});
    }
    if i % 10 == 7 {
        pod["spec"]["topologySpreadConstraints"] = json!([{"maxSkew": 1,
            "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "DoNotSchedule",
            "labelSelector": {"matchLabels": {"app": app}}}]);
    }
    pod
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// The decision core alone: every pod through the queue, picked and assumed.
fn core(args: &Args) -> anyhow::Result<()> {
    let nodes: Vec<NodeState> = (0..args.nodes)
        .map(|i| {
            Ok(NodeState::from_node(&serde_json::from_value::<Node>(
                node_json(i),
            )?))
        })
        .collect::<anyhow::Result<_>>()?;
    let pods: Vec<Arc<PodInfo>> = (0..args.pods)
        .map(|i| {
            let pod: Pod = serde_json::from_value(pod_json(i))?;
            Ok(Arc::new(PodInfo::from_pod(&pod, |_| None)))
        })
        .collect::<anyhow::Result<_>>()?;
    let mut rates = Vec::new();
    for run in 0..args.runs {
        let mut s = Scheduler::new(Default::default(), run as u64 + 1);
        for n in &nodes {
            s.cluster.upsert_node(n.clone());
        }
        let mut q = Queue::default();
        let start = Instant::now();
        for p in &pods {
            q.add(p.clone());
        }
        let now = Instant::now();
        let mut unschedulable = 0;
        while let Some(p) = q.pop(now) {
            match s.pick(&p) {
                Ok(node) => {
                    s.cluster.place(p.clone(), &node, true);
                    q.done(&p.key);
                }
                Err(_) => {
                    unschedulable += 1;
                    q.unschedulable(&p.key, now);
                }
            }
        }
        let secs = start.elapsed().as_secs_f64();
        anyhow::ensure!(unschedulable == 0, "{unschedulable} pods did not fit");
        rates.push(args.pods as f64 / secs);
    }
    println!(
        "{}",
        json!({"op": "scheduler-core", "nodes": args.nodes, "pods": args.pods,
               "pods_per_s_median": median(rates.clone()).round(), "runs": rates.iter().map(|r| r.round()).collect::<Vec<_>>()})
    );
    Ok(())
}

/// Through the API: simulated nodes, pods created by clients, bindings by the server's scheduler.
async fn e2e(args: &Args) -> anyhow::Result<()> {
    let mut cluster = testkit::Cluster::new(&args.drover, 137)?;
    cluster.flags.clear();
    cluster
        .flags
        .extend(["--node-monitor-grace-period".into(), "1h".into()]);
    cluster.add_member().await?;
    let data = &cluster.members[0].data_dir;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !data.join("pki/admin.token").exists() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the member never wrote its certificates"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ca = reqwest::Certificate::from_pem(&std::fs::read(data.join("pki/ca.crt"))?)?;
    let token = std::fs::read_to_string(data.join("pki/admin.token"))?
        .trim()
        .to_string();
    let base = format!("https://{}", cluster.members[0].addr);
    let http = reqwest::Client::builder()
        .add_root_certificate(ca)
        .tls_built_in_root_certs(false)
        .pool_max_idle_per_host(1024)
        .build()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while http
        .get(format!("{base}/api/v1/namespaces/default"))
        .bearer_auth(&token)
        .send()
        .await?
        .status()
        != 200
    {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the default namespace never appeared"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ctx: Ctx = Arc::new((http.clone(), token.clone(), base.clone()));
    // Watch for bindings from now on.
    let list: Value = http
        .get(format!("{base}/api/v1/namespaces/default/pods?limit=1"))
        .bearer_auth(&token)
        .send()
        .await?
        .json()
        .await?;
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or("0")
        .to_string();
    let watch = http
        .get(format!(
            "{base}/api/v1/namespaces/default/pods?watch=1&resourceVersion={rv}"
        ))
        .bearer_auth(&token)
        .send()
        .await?;
    let want = args.pods;
    let watcher = tokio::spawn(async move {
        let mut bound = std::collections::HashSet::new();
        let mut first = None;
        let mut buf = Vec::new();
        let mut body = watch.bytes_stream();
        while let Some(chunk) = body.next().await {
            buf.extend_from_slice(&chunk?);
            while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=nl).collect();
                let Ok(event) = serde_json::from_slice::<Value>(&line) else {
                    continue;
                };
                let obj = &event["object"];
                if obj["spec"]["nodeName"]
                    .as_str()
                    .is_some_and(|n| !n.is_empty())
                    && bound.insert(obj["metadata"]["name"].as_str().unwrap_or("").to_string())
                {
                    let now = Instant::now();
                    let first = *first.get_or_insert(now);
                    if bound.len() == want {
                        return Ok::<_, anyhow::Error>((first, now));
                    }
                }
            }
        }
        anyhow::bail!("the watch ended after {} bindings", bound.len())
    });
    let start = Instant::now();
    let (nodes_secs, pods_secs) = if args.pods_first {
        // The queue fills with pods that fit nowhere, then the nodes come.
        let p = create(&ctx, args.pods, args.clients, pod_request).await?;
        let n = create(&ctx, args.nodes, args.clients, node_request).await?;
        (n, p)
    } else {
        let n = create(&ctx, args.nodes, args.clients, node_request).await?;
        // Let the scheduler's node watch catch up before the pods come.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let p = create(&ctx, args.pods, args.clients, pod_request).await?;
        (n, p)
    };
    let (first, last) = tokio::time::timeout(Duration::from_secs(600), watcher).await???;
    let bind_secs = last.duration_since(first).as_secs_f64();
    println!(
        "{}",
        json!({"op": "scheduler-e2e", "pods_first": args.pods_first, "nodes": args.nodes, "pods": args.pods,
               "clients": args.clients, "nodes_s": (nodes_secs * 10.0).round() / 10.0,
               "created_pods_per_s": (args.pods as f64 / pods_secs).round(),
               "bound_per_s": (args.pods as f64 / bind_secs).round(),
               "start_to_last_binding_s": (last.duration_since(start).as_secs_f64() * 10.0).round() / 10.0})
    );
    Ok(())
}

type Ctx = Arc<(reqwest::Client, String, String)>;

/// Simulated node `i`: the object, then its status, as an agent writes them.
async fn node_request(c: Ctx, i: usize) -> anyhow::Result<()> {
    let node = node_json(i);
    let r =
        c.0.post(format!("{}/api/v1/nodes", c.2))
            .bearer_auth(&c.1)
            .json(&node)
            .send()
            .await?;
    anyhow::ensure!(r.status() == 201, "node create answered {}", r.status());
    r.bytes().await?; // read to the end: a dropped body resets its HTTP/2 stream
    let r =
        c.0.patch(format!("{}/api/v1/nodes/sim-{i}/status", c.2))
            .bearer_auth(&c.1)
            .header("content-type", "application/merge-patch+json")
            .body(serde_json::to_vec(&json!({"status": node["status"]}))?)
            .send()
            .await?;
    anyhow::ensure!(r.status() == 200, "node status answered {}", r.status());
    r.bytes().await?;
    Ok(())
}

async fn pod_request(c: Ctx, i: usize) -> anyhow::Result<()> {
    let r =
        c.0.post(format!("{}/api/v1/namespaces/default/pods", c.2))
            .bearer_auth(&c.1)
            .json(&pod_json(i))
            .send()
            .await?;
    anyhow::ensure!(r.status() == 201, "pod create answered {}", r.status());
    r.bytes().await?;
    Ok(())
}

/// Runs `request(i)` for i in 0..n over `clients` concurrent requests; returns the seconds.
async fn create<F, Fut>(ctx: &Ctx, n: usize, clients: usize, request: F) -> anyhow::Result<f64>
where
    F: Fn(Ctx, usize) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let started = Instant::now();
    futures_util::stream::iter(0..n)
        .map(|i| request(ctx.clone(), i))
        .buffer_unordered(clients)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<Vec<()>>>()?;
    Ok(started.elapsed().as_secs_f64())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.mode == "core" || args.mode == "both" {
        core(&args)?;
    }
    if args.mode == "e2e" || args.mode == "both" {
        e2e(&args).await?;
    }
    Ok(())
}
