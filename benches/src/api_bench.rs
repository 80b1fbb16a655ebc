//! Latency of the Kubernetes API on one `drover server`, through HTTPS with the admin token:
//! create, get and update of single pods, list of 5,000 pods, and 1,000 concurrent watchers
//! receiving a stream of updates. Prints one JSON line per measurement.
//!
//!     target/release/api-bench [--drover target/release/drover] [--pods 5000] [--watchers 1000]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use serde_json::{json, Value};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "target/release/drover")]
    drover: PathBuf,
    #[arg(long, default_value_t = 5000)]
    pods: usize,
    /// Concurrent clients for the single-object operations.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    #[arg(long, default_value_t = 1000)]
    watchers: usize,
    /// Updates sent while the watchers listen.
    #[arg(long, default_value_t = 50)]
    updates: usize,
    /// Let the server give each pod its ServiceAccount token volume (Kubernetes' default).
    #[arg(long)]
    token_volumes: bool,
    /// Leave the pods to the default scheduler (which, with no node, reports each one as
    /// unschedulable while the bench runs).
    #[arg(long)]
    scheduled: bool,
}

/// The pods written: without a ServiceAccount token volume unless `--token-volumes`, so that
/// servers from before and after ServiceAccount admission store objects of the same size (the
/// volume and its mounts make a pod 1.5x the bytes, which lists and watches pay for); and for a
/// scheduler that does not exist unless `--scheduled`: with no node, the default scheduler
/// writes a status and an event for each of the 5,000 unschedulable pods, beside (and, since
/// those writes are bounded, after) the requests measured.
fn pod(name: &str, token_volume: bool, scheduled: bool) -> Value {
    let mut pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": "bench"}},
           "spec": {"containers": [{"name": "main", "image": "example/hello:1", "ports": [{"containerPort": 8080}]}]}});
    if !token_volume {
        pod["spec"]["automountServiceAccountToken"] = json!(false);
    }
    if !scheduled {
        pod["spec"]["schedulerName"] = json!("api-bench");
    }
    pod
}

fn report(op: &str, h: &Histogram<u64>, extra: Value) {
    let mut line = json!({
        "op": op, "count": h.len(),
        "p50_ms": h.value_at_quantile(0.5) as f64 / 1000.0,
        "p99_ms": h.value_at_quantile(0.99) as f64 / 1000.0,
    });
    if let (Some(l), Some(e)) = (line.as_object_mut(), extra.as_object()) {
        l.extend(e.clone());
    }
    println!("{line}");
}

/// Runs `op(i)` for i in 0..n over `clients` concurrent tasks and returns the latencies (µs).
async fn measure<F, Fut>(n: usize, clients: usize, op: F) -> anyhow::Result<Histogram<u64>>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let op = Arc::new(op);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (op, next) = (op.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut h = Histogram::<u64>::new(3).expect("histogram");
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    return Ok::<_, anyhow::Error>(h);
                }
                let t = Instant::now();
                op(i).await?;
                h.record(t.elapsed().as_micros() as u64)?;
            }
        }));
    }
    let mut all = Histogram::<u64>::new(3)?;
    for t in tasks {
        all.add(t.await??)?;
    }
    Ok(all)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut cluster = testkit::Cluster::new(&args.drover, 131)?;
    cluster.flags.clear();
    cluster.add_member().await?;
    let data = &cluster.members[0].data_dir;
    // The member writes its certificates once it is up.
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
        .pool_max_idle_per_host(2048)
        .build()?;
    // Wait for the default namespace.
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
    let pods = format!("{base}/api/v1/namespaces/default/pods");
    let ctx = Arc::new((http.clone(), token.clone(), pods.clone()));

    let c = ctx.clone();
    let (token_volumes, scheduled) = (args.token_volumes, args.scheduled);
    let h = measure(args.pods, args.clients, move |i| {
        let c = c.clone();
        async move {
            let resp =
                c.0.post(&c.2)
                    .bearer_auth(&c.1)
                    .json(&pod(&format!("p{i}"), token_volumes, scheduled))
                    .send()
                    .await?;
            anyhow::ensure!(resp.status() == 201, "create answered {}", resp.status());
            Ok(())
        }
    })
    .await?;
    report("create", &h, json!({"clients": args.clients}));

    let c = ctx.clone();
    let n = args.pods;
    let h = measure(args.pods, args.clients, move |i| {
        let c = c.clone();
        async move {
            let resp =
                c.0.get(format!("{}/p{}", c.2, (i * 7919) % n))
                    .bearer_auth(&c.1)
                    .send()
                    .await?;
            anyhow::ensure!(resp.status() == 200, "get answered {}", resp.status());
            resp.bytes().await?;
            Ok(())
        }
    })
    .await?;
    report("get", &h, json!({"clients": args.clients}));

    let c = ctx.clone();
    let h = measure(args.pods.min(2000), args.clients, move |i| {
        let c = c.clone();
        async move {
            let url = format!("{}/p{i}", c.2);
            let mut obj: Value = c.0.get(&url).bearer_auth(&c.1).send().await?.json().await?;
            obj["metadata"]["labels"]["updated"] = json!("yes");
            let resp = c.0.put(&url).bearer_auth(&c.1).json(&obj).send().await?;
            anyhow::ensure!(resp.status() == 200, "update answered {}", resp.status());
            Ok(())
        }
    })
    .await?;
    report("update (get + put)", &h, json!({"clients": args.clients}));

    let c = ctx.clone();
    let h = measure(20, 1, move |_| {
        let c = c.clone();
        async move {
            let list: Value = c.0.get(&c.2).bearer_auth(&c.1).send().await?.json().await?;
            anyhow::ensure!(
                list["items"].as_array().map_or(0, Vec::len) >= n,
                "short list"
            );
            Ok(())
        }
    })
    .await?;
    report("list", &h, json!({"objects": args.pods}));

    // Watchers: each holds a watch on the namespace's pods from now; a writer then updates one
    // pod `updates` times; every watcher must see every update. Delivery latency is from the
    // start of the write to each watcher's receipt.
    let rv: Value = http
        .get(format!("{pods}?limit=1"))
        .bearer_auth(&token)
        .send()
        .await?
        .json()
        .await?;
    let rv = rv["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or("0")
        .to_string();
    let sent = Arc::new(std::sync::Mutex::new(std::collections::HashMap::<
        String,
        Instant,
    >::new()));
    // One connection per watcher, as separate clients (informers in other processes) would have.
    let watch_http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(
            data.join("pki/ca.crt"),
        )?)?)
        .tls_built_in_root_certs(false)
        .http1_only()
        .build()?;
    let mut watchers = Vec::new();
    let t0 = Instant::now();
    for _ in 0..args.watchers {
        let resp = watch_http
            .get(format!(
                "{pods}?watch=1&resourceVersion={rv}&labelSelector=app%3Dbench"
            ))
            .bearer_auth(&token)
            .send()
            .await?;
        let updates = args.updates;
        watchers.push(tokio::spawn(async move {
            // (resourceVersion, when it arrived) of each update seen.
            let mut seen: Vec<(String, Instant)> = Vec::new();
            let mut body = resp.bytes_stream();
            let mut buf = Vec::new();
            while seen.len() < updates {
                let Some(chunk) = body.next().await else {
                    break;
                };
                buf.extend_from_slice(&chunk?);
                while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=pos).collect();
                    let ev: Value = serde_json::from_slice(&line)?;
                    if ev["object"]["metadata"]["labels"]["seq"].is_string() {
                        let rv = ev["object"]["metadata"]["resourceVersion"]
                            .as_str()
                            .unwrap_or("")
                            .to_string();
                        seen.push((rv, Instant::now()));
                    }
                }
            }
            Ok::<_, anyhow::Error>(seen)
        }));
    }
    let setup = t0.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    for i in 0..args.updates {
        let url = format!("{pods}/p0");
        let patch = json!({"metadata": {"labels": {"seq": i.to_string()}}});
        // Delivery is measured from the start of the write (so it includes the write itself).
        let at = Instant::now();
        let resp = http
            .patch(&url)
            .bearer_auth(&token)
            .header("content-type", "application/merge-patch+json")
            .body(patch.to_string())
            .send()
            .await?;
        let obj: Value = resp.json().await?;
        let rv = obj["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or("")
            .to_string();
        sent.lock().expect("poisoned").insert(rv, at);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut all = Histogram::<u64>::new(3)?;
    let sent = sent.lock().expect("poisoned").clone();
    for w in watchers {
        match tokio::time::timeout(Duration::from_secs(60), w).await {
            Ok(Ok(Ok(seen))) => {
                for (rv, at) in seen {
                    let sent_at = sent
                        .get(&rv)
                        .ok_or_else(|| anyhow::anyhow!("an event for a write never made: {rv}"))?;
                    all.record(at.saturating_duration_since(*sent_at).as_micros() as u64)?;
                }
            }
            other => anyhow::bail!("a watcher failed: {:?}", other.map(|r| r.map(|r| r.err()))),
        }
    }
    report(
        "watch delivery",
        &all,
        json!({"watchers": args.watchers, "updates": args.updates, "expected": args.watchers * args.updates, "setup_ms": setup.as_millis()}),
    );
    Ok(())
}
