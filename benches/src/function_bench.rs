//! Knative functions on one `drover up`, through the node's function router:
//!
//! - cold start: a Wasm hello function at zero pods, one request timed by the client, per
//!   round (the round waits for zero pods first);
//! - burst from zero: many concurrent clients against a function at zero: errors, latency,
//!   and how long until the instance count the autoscaler wants is reached;
//! - step: 10 then 500 concurrent clients; how long until the target count is reached;
//! - the router's cost: the warm hello function through the router and at its pod directly,
//!   and the same component under `wasmtime serve`, with wrk, in the same run;
//! - a 90/10 split over many requests, and how soon a changed split reaches new requests.
//!
//! Prints one JSON line per measurement. `benches/functions.sh` installs wrk and the wasmtime
//! CLI and runs it.
//!
//!     target/release/function-bench [--rounds 200] [--burst-clients 1000 --burst-requests 50000]

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;
use serde_json::{json, Value};

#[path = "up_client.rs"]
mod up_client;
#[path = "wrk.rs"]
mod wrk;
use wrk::wrk;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "target/release/drover")]
    drover: PathBuf,
    #[arg(long, default_value = "examples/target/wasm32-wasip2/release")]
    examples: PathBuf,
    #[arg(long)]
    wasmtime: Option<PathBuf>,
    /// Cold-start rounds (each waits for the function to reach zero: ~7 s).
    #[arg(long, default_value_t = 30)]
    rounds: usize,
    #[arg(long, default_value_t = 1000)]
    burst_clients: usize,
    #[arg(long, default_value_t = 50_000)]
    burst_requests: usize,
    #[arg(long, default_value_t = 10)]
    wrk_seconds: u64,
    #[arg(long, default_value_t = 10_000)]
    split_requests: usize,
}

const API: &str = "https://127.0.9.1:6443";
const ROUTER: &str = "http://127.0.9.1:80";

struct Api {
    http: reqwest::Client,
    token: String,
}

impl Api {
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        content_type: &str,
    ) -> anyhow::Result<Value> {
        let mut req = self
            .http
            .request(method, format!("{API}{path}"))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.header("content-type", content_type).body(b.to_string());
        }
        let resp = req.send().await?;
        let status = resp.status();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        anyhow::ensure!(status.is_success(), "{path}: {status}: {v}");
        Ok(v)
    }
    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.send(reqwest::Method::GET, path, None, "").await
    }
    async fn apply(&self, name: &str, ksvc: Value) -> anyhow::Result<Value> {
        self.send(
            reqwest::Method::PATCH,
            &format!("/apis/serving.knative.dev/v1/namespaces/default/services/{name}?fieldManager=bench&force=true"),
            Some(ksvc),
            "application/apply-patch+yaml",
        )
        .await
    }
    /// The revision's deployment's spec.replicas and its ready pods.
    async fn scale(&self, revision: &str) -> anyhow::Result<(i64, usize)> {
        let d = self
            .get(&format!(
                "/apis/apps/v1/namespaces/default/deployments/{revision}-deployment"
            ))
            .await?;
        let pods = self
            .get(&format!("/api/v1/namespaces/default/pods?labelSelector=serving.knative.dev%2Frevision%3D{revision}"))
            .await?;
        let n = pods["items"].as_array().map_or(0, Vec::len);
        Ok((d["spec"]["replicas"].as_i64().unwrap_or(-1), n))
    }
    async fn until<T, F, Fut>(&self, secs: u64, what: &str, mut check: F) -> anyhow::Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
    {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(v) = check().await? {
                return Ok(v);
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{what} did not happen in {secs} s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn ksvc(name: &str, annotations: Value, env: &str, traffic: Option<Value>) -> Value {
    let mut v = json!({"apiVersion": "serving.knative.dev/v1", "kind": "Service", "metadata": {"name": name},
        "spec": {"template": {"metadata": {"annotations": annotations},
            "spec": {"containers": [{"image": "hello-world:v1", "ports": [{"containerPort": 8080}],
                "env": [{"name": "TARGET", "value": env}]}]}}}});
    if let Some(t) = traffic {
        v["spec"]["traffic"] = t;
    }
    v
}

fn host(name: &str) -> String {
    format!("{name}.default.example.com")
}

fn summary(h: &Histogram<u64>) -> Value {
    let ms = |q: f64| (h.value_at_quantile(q) as f64 / 1000.0 * 100.0).round() / 100.0;
    json!({"count": h.len(), "p50_ms": ms(0.5), "p99_ms": ms(0.99), "max_ms": ms(1.0)})
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let log = std::fs::File::create(dir.path().join("up.log"))?;
    let mut up = Command::new(&args.drover)
        .args(["up", "--data-dir"])
        .arg(&data)
        .args([
            "--listen",
            "127.0.9.1:6443",
            "--node-address",
            "127.0.9.1",
            "--node-port",
            "10250",
            "--pod-ip-range",
            "127.200.0.0",
            "--name",
            "bench",
            "--scale-to-zero-grace-period",
            "0s",
        ])
        .env("DROVER_LOG", "warn")
        .stdout(log.try_clone()?)
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()?;
    let result = run(&args, &data).await;
    let _ = up.kill();
    let _ = up.wait();
    if result.is_err() {
        eprintln!(
            "{}",
            std::fs::read_to_string(dir.path().join("up.log")).unwrap_or_default()
        );
    }
    result
}

async fn get_once(client: &reqwest::Client, host: &str) -> Result<String, String> {
    let resp = client
        .get(format!("{ROUTER}/"))
        .header("host", host)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status();
    let body = resp.text().await.map_err(|e| e.to_string())?;
    if status.is_success() {
        Ok(body)
    } else {
        Err(format!("{status}: {body}"))
    }
}

async fn run(args: &Args, data: &std::path::Path) -> anyhow::Result<()> {
    let (http, token) = up_client::admin_client(data).await?;
    let api = Api { http, token };
    let import = Command::new(&args.drover)
        .args(["image", "import", "--node-dir"])
        .arg(data.join("node"))
        .arg(args.examples.join("hello_world.wasm"))
        .arg("hello-world:v1")
        .output()?;
    anyhow::ensure!(
        import.status.success(),
        "import failed: {}",
        String::from_utf8_lossy(&import.stderr)
    );
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(2000)
        .timeout(Duration::from_secs(60))
        .build()?;
    api.until(60, "the node to be Ready", || async {
        Ok(api.get("/api/v1/nodes/bench").await.ok().and_then(|n| {
            n["status"]["conditions"]
                .as_array()?
                .iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
                .then_some(())
        }))
    })
    .await?;

    // --- the router's cost: warm, through the router and direct ---------------------------
    api.apply(
        "warm",
        ksvc(
            "warm",
            json!({"autoscaling.knative.dev/min-scale": "1"}),
            "warm",
            None,
        ),
    )
    .await?;
    let ready = |name: &'static str| {
        let api = &api;
        async move {
            api.until(120, "the service to be Ready", || async {
                let s = api
                    .get(&format!(
                        "/apis/serving.knative.dev/v1/namespaces/default/services/{name}"
                    ))
                    .await?;
                Ok(s["status"]["conditions"].as_array().and_then(|cs| {
                    cs.iter()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
                        .then_some(())
                }))
            })
            .await
        }
    };
    ready("warm").await?;
    let pods = api
        .get("/api/v1/namespaces/default/pods?labelSelector=serving.knative.dev%2Fservice%3Dwarm")
        .await?;
    let pod_ip = pods["items"][0]["status"]["podIP"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let direct = format!("http://{pod_ip}:8080/");
    let routed64 = wrk(
        &format!("{ROUTER}/"),
        Some(&host("warm")),
        2,
        64,
        args.wrk_seconds,
    )?;
    let routed1 = wrk(
        &format!("{ROUTER}/"),
        Some(&host("warm")),
        1,
        1,
        args.wrk_seconds,
    )?;
    let direct64 = wrk(&direct, None, 2, 64, args.wrk_seconds)?;
    let direct1 = wrk(&direct, None, 1, 1, args.wrk_seconds)?;
    println!(
        "{}",
        json!({"op": "warm hello through the router", "wrk": "-t2 -c64", "result": routed64})
    );
    println!(
        "{}",
        json!({"op": "warm hello through the router", "wrk": "-t1 -c1", "result": routed1})
    );
    println!(
        "{}",
        json!({"op": "warm hello at its pod", "wrk": "-t2 -c64", "result": direct64})
    );
    println!(
        "{}",
        json!({"op": "warm hello at its pod", "wrk": "-t1 -c1", "result": direct1})
    );
    println!(
        "{}",
        json!({"op": "router's added latency at one connection (p50, µs)",
        "added_p50_us": routed1["p50_us"].as_f64().unwrap_or(0.0) - direct1["p50_us"].as_f64().unwrap_or(0.0)})
    );
    if let Some(wasmtime) = &args.wasmtime {
        let mut serve = Command::new(wasmtime)
            .args([
                "serve",
                "-S",
                "cli=y",
                "--env",
                "HOSTNAME=bench",
                "--addr",
                "127.0.9.2:8080",
            ])
            .arg(args.examples.join("hello_world.wasm"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect("127.0.9.2:8080").is_err() {
            anyhow::ensure!(Instant::now() < deadline, "wasmtime serve never listened");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let w64 = wrk("http://127.0.9.2:8080/", None, 2, 64, args.wrk_seconds);
        let w1 = wrk("http://127.0.9.2:8080/", None, 1, 1, args.wrk_seconds);
        let _ = serve.kill();
        let _ = serve.wait();
        let (w64, w1) = (w64?, w1?);
        println!(
            "{}",
            json!({"op": "hello under wasmtime serve", "wrk": "-t2 -c64", "result": w64})
        );
        println!(
            "{}",
            json!({"op": "hello under wasmtime serve", "wrk": "-t1 -c1", "result": w1})
        );
        println!(
            "{}",
            json!({"op": "throughput ratio router/wasmtime serve (-c64)",
            "ratio": (routed64["requests_per_s"].as_f64().unwrap_or(0.0) / w64["requests_per_s"].as_f64().unwrap_or(1.0) * 100.0).round() / 100.0})
        );
    }

    // --- cold start -------------------------------------------------------------------------
    api.apply(
        "cold",
        ksvc(
            "cold",
            json!({"autoscaling.knative.dev/window": "6s"}),
            "cold",
            None,
        ),
    )
    .await?;
    ready("cold").await?;
    let mut cold = Histogram::<u64>::new(3)?;
    for _ in 0..args.rounds {
        api.until(120, "the function to reach zero", || async {
            let (replicas, pods) = api.scale("cold-00001").await?;
            Ok((replicas == 0 && pods == 0).then_some(()))
        })
        .await?;
        // A new connection each round, as a first request has.
        let fresh = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()?;
        let t = Instant::now();
        get_once(&fresh, &host("cold"))
            .await
            .map_err(anyhow::Error::msg)?;
        cold.record(t.elapsed().as_micros() as u64)?;
    }
    println!(
        "{}",
        json!({"op": "cold start from zero pods, Wasm hello, one node", "result": summary(&cold)})
    );

    // --- burst from zero ---------------------------------------------------------------------
    api.apply(
        "burst",
        ksvc(
            "burst",
            json!({"autoscaling.knative.dev/window": "6s", "autoscaling.knative.dev/target": "10"}),
            "burst",
            None,
        ),
    )
    .await?;
    ready("burst").await?;
    api.until(120, "the burst function to reach zero", || async {
        let (replicas, pods) = api.scale("burst-00001").await?;
        Ok((replicas == 0 && pods == 0).then_some(()))
    })
    .await?;
    let errors = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(std::sync::Mutex::new(None::<String>));
    let per_client = args.burst_requests / args.burst_clients.max(1);
    let started = Instant::now();
    let scale_watch = {
        let (http, token) = (api.http.clone(), api.token.clone());
        tokio::spawn(async move {
            let api = Api { http, token };
            let mut seen: Vec<(Duration, i64)> = Vec::new();
            loop {
                if let Ok((r, _)) = api.scale("burst-00001").await {
                    if seen.last().is_none_or(|(_, last)| *last != r) {
                        seen.push((started.elapsed(), r));
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                if started.elapsed() > Duration::from_secs(30) {
                    return seen;
                }
            }
        })
    };
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..args.burst_clients {
        let (client, errors, first_error) = (client.clone(), errors.clone(), first_error.clone());
        tasks.spawn(async move {
            let mut h = Histogram::<u64>::new(3).expect("a histogram");
            for _ in 0..per_client {
                let t = Instant::now();
                match get_once(&client, &host("burst")).await {
                    Ok(_) => h.record(t.elapsed().as_micros() as u64).expect("in range"),
                    Err(e) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        first_error.lock().unwrap().get_or_insert(e);
                    }
                }
            }
            h
        });
    }
    let mut burst = Histogram::<u64>::new(3)?;
    while let Some(h) = tasks.join_next().await {
        burst.add(h?)?;
    }
    let took = started.elapsed();
    let seen = scale_watch.await?;
    let peak = seen.iter().map(|(_, r)| *r).max().unwrap_or(0);
    let reached = seen
        .iter()
        .find(|(_, r)| *r == peak)
        .map(|(t, _)| t.as_secs_f64());
    println!(
        "{}",
        json!({"op": "burst from zero", "clients": args.burst_clients, "requests": per_client * args.burst_clients,
        "errors": errors.load(Ordering::Relaxed), "first_error": *first_error.lock().unwrap(), "took_s": took.as_secs_f64(),
        "latency": summary(&burst), "peak_scale": peak, "peak_reached_s": reached,
        "scale_steps": seen.iter().map(|(t, r)| json!([(t.as_secs_f64() * 1000.0).round() / 1000.0, r])).collect::<Vec<_>>()})
    );

    // --- split -------------------------------------------------------------------------------
    api.apply(
        "split",
        ksvc(
            "split",
            json!({"autoscaling.knative.dev/min-scale": "1"}),
            "one",
            None,
        ),
    )
    .await?;
    ready("split").await?;
    api.apply("split", ksvc("split", json!({"autoscaling.knative.dev/min-scale": "1"}), "two",
        Some(json!([{"revisionName": "split-00001", "percent": 90}, {"latestRevision": true, "percent": 10}])))).await?;
    api.until(120, "the split to be in place", || async {
        let r = api
            .get("/apis/serving.knative.dev/v1/namespaces/default/routes/split")
            .await?;
        Ok((r["status"]["traffic"].as_array().map_or(0, Vec::len) == 2).then_some(()))
    })
    .await?;
    let mut newer = 0usize;
    for _ in 0..args.split_requests {
        let body = get_once(&client, &host("split"))
            .await
            .map_err(anyhow::Error::msg)?;
        if body.contains("split-00002") {
            newer += 1;
        }
    }
    println!(
        "{}",
        json!({"op": "split 90/10", "requests": args.split_requests, "to_10_percent": newer,
        "share": (newer as f64 / args.split_requests as f64 * 10000.0).round() / 100.0})
    );
    // A change of split: all to the new revision; how soon new requests follow it.
    let t = Instant::now();
    api.apply("split", ksvc("split", json!({"autoscaling.knative.dev/min-scale": "1"}), "two",
        Some(json!([{"revisionName": "split-00001", "percent": 0}, {"latestRevision": true, "percent": 100}])))).await?;
    loop {
        let body = get_once(&client, &host("split"))
            .await
            .map_err(anyhow::Error::msg)?;
        let mut all_new = body.contains("split-00002");
        for _ in 0..19 {
            all_new &= get_once(&client, &host("split"))
                .await
                .map_err(anyhow::Error::msg)?
                .contains("split-00002");
        }
        if all_new {
            break;
        }
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(30),
            "the new split never took effect"
        );
    }
    println!(
        "{}",
        json!({"op": "a changed split reaches new requests", "after_ms": t.elapsed().as_millis()})
    );
    Ok(())
}
