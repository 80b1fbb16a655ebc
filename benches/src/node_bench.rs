//! The node and its wasm runtime, measured on one `drover up`:
//!
//! - pod start: pod create → Ready as a watch sees it, image cached, one pod at a time;
//! - density: node memory (the whole `drover up` process, store and API included) per idle
//!   Wasm HTTP pod;
//! - throughput: requests/s of the hello function at its pod address with wrk, and the same
//!   component under `wasmtime serve`, in the same run;
//! - instantiate: one instance of the hello component from its pre-instantiated form.
//!
//! Prints one JSON line per measurement. `benches/node-vs-wasmtime.sh` installs wrk and the
//! wasmtime CLI and runs it.
//!
//!     target/release/node-bench [--drover target/release/drover] [--wasmtime PATH]

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;

#[path = "up_client.rs"]
mod up_client;
#[path = "wrk.rs"]
mod wrk;
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use wrk::wrk;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "target/release/drover")]
    drover: PathBuf,
    /// The example programs built for wasm32-wasip2.
    #[arg(long, default_value = "examples/target/wasm32-wasip2/release")]
    examples: PathBuf,
    /// The wasmtime CLI to compare with (skipped when not given).
    #[arg(long)]
    wasmtime: Option<PathBuf>,
    #[arg(long, default_value_t = 200)]
    start_pods: usize,
    #[arg(long, default_value_t = 1000)]
    density_pods: usize,
    #[arg(long, default_value_t = 10)]
    wrk_seconds: u64,
    #[arg(long, default_value_t = 10_000)]
    instantiations: usize,
}

fn pod(name: &str, label: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"bench": label}},
           "spec": {"containers": [{"name": "hw", "image": "hello-world:v1", "ports": [{"containerPort": 8080}]}]}})
}

fn ready(p: &Value) -> bool {
    p["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let hello = args.examples.join("hello_world.wasm");
    anyhow::ensure!(
        hello.exists(),
        "{} is missing: build the examples first",
        hello.display()
    );

    // Instantiation, in process, before anything else runs.
    {
        let rt = runtime::wasm::WasmRuntime::new(dir.path().join("bench-cache"))?;
        let store = runtime::images::ImageStore::open(&dir.path().join("bench-images"))?;
        let image = store.import(&hello, "hello-world:v1")?;
        let spec = runtime::ContainerSpec {
            pod_namespace: "default".into(),
            pod_name: "bench".into(),
            pod_uid: "u".into(),
            container: "hw".into(),
            image,
            args: vec!["hw".into()],
            env: vec![("HOSTNAME".into(), "bench".into())],
            mounts: vec![],
            log: runtime::logs::LogFile::create(&dir.path().join("bench.log"))?,
            memory_limit: None,
            cpu_limit: None,
            listen: None,
            max_concurrency: None,
            netns: None,
            outbound: None,
            usage: Default::default(),
            linux: Default::default(),
        };
        let times = rt
            .time_instantiation(&spec, args.instantiations)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut h = Histogram::<u64>::new(3)?;
        for t in times.iter().skip(100) {
            h.record(t.as_nanos() as u64)?;
        }
        println!(
            "{}",
            json!({"op": "instantiate (ProxyPre, pooling)", "count": h.len(),
                   "p50_us": h.value_at_quantile(0.5) as f64 / 1000.0, "p99_us": h.value_at_quantile(0.99) as f64 / 1000.0})
        );
    }

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
        ])
        .env("DROVER_LOG", "warn")
        .stdout(log.try_clone()?)
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()?;
    let pid = up.id();
    let result = run(&args, &data, pid).await;
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

async fn run(args: &Args, data: &std::path::Path, pid: u32) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let (http, token) = up_client::admin_client(data).await?;
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
    let base = "https://127.0.9.1:6443".to_string();
    let pods = format!("{base}/api/v1/namespaces/default/pods");
    loop {
        let r = http
            .get(format!("{base}/api/v1/nodes/bench"))
            .bearer_auth(&token)
            .send()
            .await?;
        if r.status() == 200 && ready_node(&r.json::<Value>().await?) {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "the node never became Ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Warm the compile cache, as "image cached" means.
    create_and_wait(&http, &token, &pods, "warm", "warm").await?;
    delete_all(&http, &token, &pods, "warm").await?;

    // --- pod start ---------------------------------------------------------------------------
    let watch = http
        .get(format!("{pods}?watch=1&labelSelector=bench%3Dstart"))
        .bearer_auth(&token)
        .send()
        .await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, Instant)>();
    tokio::spawn(async move {
        let mut body = watch.bytes_stream();
        let mut buf = Vec::new();
        while let Some(Ok(chunk)) = body.next().await {
            buf.extend_from_slice(&chunk);
            while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=nl).collect();
                if let Ok(ev) = serde_json::from_slice::<Value>(&line) {
                    if ready(&ev["object"]) {
                        let name = ev["object"]["metadata"]["name"]
                            .as_str()
                            .unwrap_or("")
                            .to_string();
                        let _ = tx.send((name, Instant::now()));
                    }
                }
            }
        }
    });
    let mut h = Histogram::<u64>::new(3)?;
    let mut seen = std::collections::HashSet::new();
    for i in 0..args.start_pods {
        let name = format!("start-{i}");
        let t = Instant::now();
        let r = http
            .post(&pods)
            .bearer_auth(&token)
            .json(&pod(&name, "start"))
            .send()
            .await?;
        anyhow::ensure!(r.status() == 201, "create failed: {}", r.text().await?);
        loop {
            let (n, at) = tokio::time::timeout(Duration::from_secs(30), rx.recv())
                .await?
                .ok_or_else(|| anyhow::anyhow!("the watch ended"))?;
            if n == name && seen.insert(n) {
                h.record(at.duration_since(t).as_micros() as u64)?;
                break;
            }
        }
    }
    println!(
        "{}",
        json!({"op": "pod start (create → Ready, via watch)", "count": h.len(),
               "p50_ms": h.value_at_quantile(0.5) as f64 / 1000.0, "p99_ms": h.value_at_quantile(0.99) as f64 / 1000.0})
    );

    // --- throughput ------------------------------------------------------------------------
    let ip: String = {
        let r = http
            .get(format!("{pods}/start-0"))
            .bearer_auth(&token)
            .send()
            .await?;
        r.json::<Value>().await?["status"]["podIP"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    delete_all(&http, &token, &pods, "start").await?;
    create_and_wait(&http, &token, &pods, "served", "served").await?;
    let served_ip = {
        let r = http
            .get(format!("{pods}/served"))
            .bearer_auth(&token)
            .send()
            .await?;
        r.json::<Value>().await?["status"]["podIP"]
            .as_str()
            .unwrap_or(&ip)
            .to_string()
    };
    let url = format!("http://{served_ip}:8080/");
    let drover64 = wrk(&url, None, 2, 64, args.wrk_seconds)?;
    let drover1 = wrk(&url, None, 1, 1, args.wrk_seconds.min(5))?;
    println!(
        "{}",
        json!({"op": "hello throughput, drover node", "wrk": "-t2 -c64", "result": drover64})
    );
    println!(
        "{}",
        json!({"op": "hello latency, drover node", "wrk": "-t1 -c1", "result": drover1})
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
        let version = Command::new(wasmtime).arg("--version").output()?;
        let w64 = wrk("http://127.0.9.2:8080/", None, 2, 64, args.wrk_seconds);
        let w1 = wrk(
            "http://127.0.9.2:8080/",
            None,
            1,
            1,
            args.wrk_seconds.min(5),
        );
        let _ = serve.kill();
        let _ = serve.wait();
        let version = String::from_utf8_lossy(&version.stdout).trim().to_string();
        let (w64, w1) = (w64?, w1?);
        println!(
            "{}",
            json!({"op": "hello throughput, wasmtime serve", "version": version, "wrk": "-t2 -c64", "result": w64})
        );
        println!(
            "{}",
            json!({"op": "hello latency, wasmtime serve", "version": version, "wrk": "-t1 -c1", "result": w1})
        );
        let ratio = drover64["requests_per_s"].as_f64().unwrap_or(0.0)
            / w64["requests_per_s"].as_f64().unwrap_or(1.0);
        println!(
            "{}",
            json!({"op": "throughput ratio drover/wasmtime serve", "ratio": (ratio * 100.0).round() / 100.0})
        );
    }
    delete_all(&http, &token, &pods, "served").await?;

    // --- density -----------------------------------------------------------------------------
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = rss_kib(pid);
    let n = args.density_pods;
    let created = Instant::now();
    let mut tasks = futures_util::stream::iter(0..n)
        .map(|i| {
            let (http, token, pods) = (http.clone(), token.clone(), pods.clone());
            async move {
                http.post(&pods)
                    .bearer_auth(&token)
                    .json(&pod(&format!("idle-{i}"), "idle"))
                    .send()
                    .await
            }
        })
        .buffer_unordered(8);
    while let Some(r) = tasks.next().await {
        anyhow::ensure!(r?.status() == 201, "a density pod was refused");
    }
    let deadline = Instant::now() + Duration::from_secs(600);
    let ready_count = loop {
        let list: Value = http
            .get(format!("{pods}?labelSelector=bench%3Didle"))
            .bearer_auth(&token)
            .send()
            .await?
            .json()
            .await?;
        let count = list["items"]
            .as_array()
            .map(|a| a.iter().filter(|p| ready(p)).count())
            .unwrap_or(0);
        if count == n || Instant::now() > deadline {
            break count;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let all_ready = created.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = rss_kib(pid);
    println!(
        "{}",
        json!({"op": "density: idle Wasm HTTP pods on one node", "pods": n, "ready": ready_count,
               "all_ready_s": all_ready.as_secs_f64(), "rss_before_mib": before / 1024, "rss_after_mib": after / 1024,
               "per_pod_kib": (after.saturating_sub(before)) as f64 / n as f64})
    );
    Ok(())
}

fn ready_node(n: &Value) -> bool {
    n["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

async fn create_and_wait(
    http: &reqwest::Client,
    token: &str,
    pods: &str,
    name: &str,
    label: &str,
) -> anyhow::Result<()> {
    let r = http
        .post(pods)
        .bearer_auth(token)
        .json(&pod(name, label))
        .send()
        .await?;
    anyhow::ensure!(r.status() == 201, "create failed: {}", r.text().await?);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let p: Value = http
            .get(format!("{pods}/{name}"))
            .bearer_auth(token)
            .send()
            .await?
            .json()
            .await?;
        if ready(&p) {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "{name} never became Ready: {p}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn delete_all(
    http: &reqwest::Client,
    token: &str,
    pods: &str,
    label: &str,
) -> anyhow::Result<()> {
    http.delete(format!("{pods}?labelSelector=bench%3D{label}"))
        .bearer_auth(token)
        .send()
        .await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let list: Value = http
            .get(format!("{pods}?labelSelector=bench%3D{label}"))
            .bearer_auth(token)
            .send()
            .await?
            .json()
            .await?;
        if list["items"].as_array().is_none_or(|a| a.is_empty()) {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "pods labelled {label} were never all deleted"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
