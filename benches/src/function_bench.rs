//! Knative functions on one `drover up`, through the node's function router:
//!
//! - cold start: a Wasm hello function at zero pods, one request timed by the client, per
//!   round (the round waits for zero pods first); on one node, and at the end on three (two
//!   more `drover node`s join, the rounds go round the nodes' routers);
//! - burst from zero: many concurrent clients against a function at zero: errors, latency,
//!   and how long until the instance count the autoscaler wants is reached;
//! - step: 10 then 500 concurrent clients; how long until the target count is reached;
//! - the router's cost: the warm hello function through the router and at its pod directly,
//!   and the same component under `wasmtime serve`, with wrk, in the same run;
//! - `containerConcurrency: 1` under 64 clients: requests the function saw overlap
//!   (`examples/inflight` counts its own);
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
    /// Requests of the containerConcurrency 1 check (64 clients).
    #[arg(long, default_value_t = 100_000)]
    single_requests: usize,
    /// The parts to run (router, cold, burst, step, single, split, three), comma-separated;
    /// all by default.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Milliseconds a cold-start round waits after the function reached zero (0: none; a
    /// diagnostic, to see what the scale-down's own work costs the next cold start).
    #[arg(long, default_value_t = 0)]
    settle_ms: u64,
}

impl Args {
    fn wants(&self, part: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|p| p == part)
    }
}

const API: &str = "https://127.0.9.1:6443";
/// Functions the cold-start rounds go round.
const COLD_FUNCTIONS: usize = 20;
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
    async fn delete_ksvc(&self, name: &str) -> anyhow::Result<()> {
        self.send(
            reqwest::Method::DELETE,
            &format!("/apis/serving.knative.dev/v1/namespaces/default/services/{name}"),
            None,
            "",
        )
        .await?;
        Ok(())
    }
    /// The revision's deployment's spec.replicas and its pods.
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
    /// The revision's deployment's spec.replicas and its ready pods.
    async fn ready_scale(&self, revision: &str) -> anyhow::Result<(i64, usize)> {
        let d = self
            .get(&format!(
                "/apis/apps/v1/namespaces/default/deployments/{revision}-deployment"
            ))
            .await?;
        let pods = self
            .get(&format!("/api/v1/namespaces/default/pods?labelSelector=serving.knative.dev%2Frevision%3D{revision}"))
            .await?;
        let ready = pods["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| {
                p["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            })
            .count();
        Ok((d["spec"]["replicas"].as_i64().unwrap_or(-1), ready))
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
    get_at(client, ROUTER, host).await
}

/// One request to the router at `router` (`http://ip:port`) for `host`.
async fn get_at(client: &reqwest::Client, router: &str, host: &str) -> Result<String, String> {
    let resp = client
        .get(format!("{router}/"))
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

/// Waits for Knative Service `name` to be Ready.
async fn ready(api: &Api, name: &str) -> anyhow::Result<()> {
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

/// Cold starts: `rounds` requests, each to a function at zero pods, timed by the client, sent
/// round the `routers`. Rounds go round several functions, so that each round finds its
/// function at zero without waiting out a whole stable window (6 s, Knative's shortest).
async fn cold_starts(
    api: &Api,
    prefix: &str,
    rounds: usize,
    routers: &[String],
    settle_ms: u64,
) -> anyhow::Result<Histogram<u64>> {
    let names: Vec<String> = (0..COLD_FUNCTIONS)
        .map(|i| format!("{prefix}{i}"))
        .collect();
    for name in &names {
        api.apply(
            name,
            ksvc(
                name,
                json!({"autoscaling.knative.dev/window": "6s"}),
                name,
                None,
            ),
        )
        .await?;
    }
    for name in &names {
        ready(api, name).await?;
    }
    // A new connection each round, as a first request has (the client keeps none).
    let fresh = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(60))
        .build()?;
    let mut cold = Histogram::<u64>::new(3)?;
    for round in 0..rounds {
        let name = &names[round % COLD_FUNCTIONS];
        let revision = format!("{name}-00001");
        api.until(120, "the function to reach zero", || async {
            let (replicas, pods) = api.scale(&revision).await?;
            Ok((replicas == 0 && pods == 0).then_some(()))
        })
        .await?;
        tokio::time::sleep(Duration::from_millis(settle_ms)).await;
        let router = &routers[round % routers.len()];
        let t = Instant::now();
        get_at(&fresh, router, &host(name))
            .await
            .map_err(anyhow::Error::msg)?;
        cold.record(t.elapsed().as_micros() as u64)?;
    }
    for name in &names {
        api.delete_ksvc(name).await?;
    }
    Ok(cold)
}

async fn run(args: &Args, data: &std::path::Path) -> anyhow::Result<()> {
    let (http, token) = up_client::admin_client(data).await?;
    let api = Api { http, token };
    for (file, image) in [
        ("hello_world.wasm", "hello-world:v1"),
        ("inflight.wasm", "inflight:v1"),
    ] {
        let import = Command::new(&args.drover)
            .args(["image", "import", "--node-dir"])
            .arg(data.join("node"))
            .arg(args.examples.join(file))
            .arg(image)
            .output()?;
        anyhow::ensure!(
            import.status.success(),
            "import of {file} failed: {}",
            String::from_utf8_lossy(&import.stderr)
        );
    }
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
    if args.wants("router") {
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
        ready(&api, "warm").await?;
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
    }

    // --- cold start -------------------------------------------------------------------------
    if args.wants("cold") {
        let cold = cold_starts(
            &api,
            "cold",
            args.rounds,
            &[ROUTER.to_string()],
            args.settle_ms,
        )
        .await?;
        println!(
            "{}",
            json!({"op": "cold start from zero pods, Wasm hello, one node", "result": summary(&cold)})
        );
    }

    // --- burst from zero ---------------------------------------------------------------------
    if args.wants("burst") {
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
        ready(&api, "burst").await?;
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
            let (client, errors, first_error) =
                (client.clone(), errors.clone(), first_error.clone());
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
    }

    // --- step from 10 to 500 concurrent clients -----------------------------------------------
    if args.wants("step") {
        api.apply(
        "step",
        ksvc(
            "step",
            json!({"autoscaling.knative.dev/target": "10", "autoscaling.knative.dev/min-scale": "1"}),
            "step",
            None,
        ),
    )
    .await?;
        ready(&api, "step").await?;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let step_errors = Arc::new(AtomicU64::new(0));
        let load = |clients: usize| {
            (0..clients)
                .map(|_| {
                    let (client, stop, errors) =
                        (client.clone(), stop.clone(), step_errors.clone());
                    tokio::spawn(async move {
                        while !stop.load(Ordering::Relaxed) {
                            if get_once(&client, &host("step")).await.is_err() {
                                errors.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    })
                })
                .collect::<Vec<_>>()
        };
        let mut clients = load(10);
        // The stable window (60 s by default) sees 10 clients for a while: the autoscaler settles.
        tokio::time::sleep(Duration::from_secs(10)).await;
        let (before, _) = api.ready_scale("step-00001").await?;
        let stepped = Instant::now();
        clients.extend(load(490));
        let mut seen: Vec<(f64, i64, usize)> = Vec::new();
        while stepped.elapsed() < Duration::from_secs(15) {
            if let Ok((replicas, ready)) = api.ready_scale("step-00001").await {
                if seen
                    .last()
                    .is_none_or(|(_, r, n)| *r != replicas || *n != ready)
                {
                    seen.push((stepped.elapsed().as_secs_f64(), replicas, ready));
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        stop.store(true, Ordering::Relaxed);
        for c in clients {
            let _ = c.await;
        }
        let target = seen.iter().map(|(_, r, _)| *r).max().unwrap_or(0);
        let asked = seen
            .iter()
            .find(|(_, r, _)| *r == target)
            .map(|(t, _, _)| *t);
        let ready_at = seen
            .iter()
            .find(|(_, _, n)| *n as i64 >= target)
            .map(|(t, _, _)| *t);
        println!(
            "{}",
            json!({"op": "step from 10 to 500 concurrent", "scale_before": before, "target": target,
        "target_asked_s": asked, "target_ready_s": ready_at, "errors": step_errors.load(Ordering::Relaxed)})
        );
        api.delete_ksvc("step").await?;
    }

    // --- containerConcurrency 1 under 64 clients ---------------------------------------------
    if args.wants("single") {
        // examples/inflight takes a mark in its pod's emptyDir for each request and answers
        // "violation" when another request holds it.
        api.apply(
        "single",
        json!({"apiVersion": "serving.knative.dev/v1", "kind": "Service", "metadata": {"name": "single"},
            "spec": {"template": {"spec": {"containerConcurrency": 1,
                "containers": [{"image": "inflight:v1", "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
                "volumes": [{"name": "data", "emptyDir": {}}]}}}}),
    )
    .await?;
        ready(&api, "single").await?;
        let violations = Arc::new(AtomicU64::new(0));
        let single_errors = Arc::new(AtomicU64::new(0));
        let single_first_error = Arc::new(std::sync::Mutex::new(None::<String>));
        let per_client = args.single_requests / 64;
        let t = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..64 {
            let (client, violations, errors, first) = (
                client.clone(),
                violations.clone(),
                single_errors.clone(),
                single_first_error.clone(),
            );
            tasks.spawn(async move {
                for _ in 0..per_client {
                    match get_once(&client, &host("single")).await {
                        Ok(body) if body.starts_with("violation") => {
                            violations.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(_) => {}
                        Err(e) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            first.lock().unwrap().get_or_insert(e);
                        }
                    }
                }
            });
        }
        while let Some(r) = tasks.join_next().await {
            r?;
        }
        let (single_scale, _) = api.ready_scale("single-00001").await?;
        println!(
            "{}",
            json!({"op": "containerConcurrency 1, 64 clients", "requests": per_client * 64,
        "violations": violations.load(Ordering::Relaxed), "errors": single_errors.load(Ordering::Relaxed),
        "first_error": *single_first_error.lock().unwrap(), "took_s": t.elapsed().as_secs_f64(), "scale": single_scale})
        );
        api.delete_ksvc("single").await?;
    }

    // --- split -------------------------------------------------------------------------------
    if args.wants("split") {
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
        ready(&api, "split").await?;
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
    }

    // --- three nodes -------------------------------------------------------------------------
    if args.wants("three") {
        let nodes = join_nodes(args, data, 2).await?;
        api.until(60, "the two new nodes to be Ready", || async {
            let list = api.get("/api/v1/nodes").await?;
            let ready = list["items"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|n| {
                    n["status"]["conditions"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
                })
                .count();
            Ok((ready == 3).then_some(()))
        })
        .await?;
        let routers: Vec<String> = std::iter::once(ROUTER.to_string())
            .chain(nodes.addresses.iter().map(|a| format!("http://{a}:80")))
            .collect();
        let cold3 = cold_starts(&api, "three", args.rounds, &routers, args.settle_ms).await?;
        println!(
            "{}",
            json!({"op": "cold start from zero pods, Wasm hello, three nodes", "result": summary(&cold3)})
        );
        drop(nodes);
    }

    Ok(())
}

/// Node agents that joined the bench's `drover up`; killed when dropped.
struct JoinedNodes {
    children: Vec<std::process::Child>,
    addresses: Vec<String>,
}

impl Drop for JoinedNodes {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Starts `n` more node agents (`n2`, `n3`, ... at 127.0.9.2, ...), each with the example
/// images imported, joined to the `drover up` in `data` with a node token.
async fn join_nodes(args: &Args, data: &std::path::Path, n: usize) -> anyhow::Result<JoinedNodes> {
    let mut joined = JoinedNodes {
        children: Vec::new(),
        addresses: Vec::new(),
    };
    for k in 2..2 + n {
        let name = format!("n{k}");
        let address = format!("127.0.9.{k}");
        let dir = data.join(&name);
        let import = Command::new(&args.drover)
            .args(["image", "import", "--node-dir"])
            .arg(&dir)
            .arg(args.examples.join("hello_world.wasm"))
            .arg("hello-world:v1")
            .output()?;
        anyhow::ensure!(import.status.success(), "import into {name} failed");
        let token = Command::new(&args.drover)
            .args(["token", "node", &name, "--kubeconfig"])
            .arg(data.join("admin.kubeconfig"))
            .output()?;
        anyhow::ensure!(
            token.status.success(),
            "drover token node: {}",
            String::from_utf8_lossy(&token.stderr)
        );
        let token_file = data.join(format!("{name}.token"));
        std::fs::write(&token_file, &token.stdout)?;
        let log = std::fs::File::create(data.join(format!("{name}.log")))?;
        let child = Command::new(&args.drover)
            .args(["node", "--server", API, "--token-file"])
            .arg(&token_file)
            .arg("--ca-file")
            .arg(data.join("pki/ca.crt"))
            .args(["--name", &name, "--node-address", &address])
            .args(["--pod-ip-range", &format!("127.{}.0.0", 200 + k)])
            .arg("--node-dir")
            .arg(&dir)
            .env("DROVER_LOG", "warn")
            .stdout(log.try_clone()?)
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()?;
        joined.children.push(child);
        joined.addresses.push(address);
    }
    Ok(joined)
}
