//! The cluster registry and `drover deploy`, measured.
//!
//! - deploy: `drover deploy hello_world.wasm --name hello-N` on a `drover up`, from the command
//!   to the first 200 from the function's URL through the node's router (a new Service each
//!   run), `--deploys` runs.
//! - throughput: a `--mib` MiB blob pushed (monolithic upload) and pulled, to Drover's registry
//!   (HTTPS, admin token) and to Debian's `docker-registry` (the CNCF distribution registry,
//!   plain HTTP on loopback, no auth) in the same run, `--rounds` rounds each, medians.
//! - three servers: the same push to a three-server cluster (acknowledged once two hold the
//!   blob), against the one-server push above.
//!
//! Prints one JSON line per measurement.
//!
//!     target/release/registry-bench [--drover target/release/drover] [--mib 1024]

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use futures_util::StreamExt;
use serde_json::json;

#[path = "up_client.rs"]
mod up_client;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "target/release/drover")]
    drover: PathBuf,
    #[arg(long, default_value = "examples/target/wasm32-wasip2/release")]
    examples: PathBuf,
    #[arg(long, default_value_t = 20)]
    deploys: usize,
    /// The blob's size for the throughput runs.
    #[arg(long, default_value_t = 1024)]
    mib: usize,
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// The parts to run (deploy, throughput, three), comma-separated; all by default.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
}

impl Args {
    fn wants(&self, part: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|p| p == part)
    }
}

const ADDRESS: &str = "127.0.9.1:6443";
const ROUTER: &str = "127.0.9.1:80";

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

fn sha256(bytes: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    let hex: String = d.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// A registry to push to: its base URL, a client and a token if it wants one.
struct Target {
    base: String,
    http: reqwest::Client,
    token: Option<String>,
}

impl Target {
    fn auth(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    /// One monolithic push of `blob` into `repo`; seconds.
    async fn push(&self, repo: &str, blob: &bytes::Bytes, digest: &str) -> anyhow::Result<f64> {
        let started = Instant::now();
        // docker-registry takes a monolithic upload only as POST (begin) then PUT (finish).
        let begun = self
            .auth(
                self.http
                    .post(format!("{}/v2/{repo}/blobs/uploads/", self.base)),
            )
            .send()
            .await?;
        anyhow::ensure!(begun.status().as_u16() == 202, "begin: {}", begun.status());
        let location = begun
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let url = if location.starts_with("http") {
            location
        } else {
            format!("{}{location}", self.base)
        };
        let sep = if url.contains('?') { '&' } else { '?' };
        let done = self
            .auth(self.http.put(format!("{url}{sep}digest={digest}")))
            .header("content-type", "application/octet-stream")
            .body(blob.clone())
            .send()
            .await?;
        anyhow::ensure!(
            done.status().as_u16() == 201,
            "finish: {} {}",
            done.status(),
            done.text().await.unwrap_or_default()
        );
        Ok(started.elapsed().as_secs_f64())
    }

    /// One pull of the blob, its bytes counted and dropped; seconds.
    async fn pull(&self, repo: &str, digest: &str, size: usize) -> anyhow::Result<f64> {
        let started = Instant::now();
        let resp = self
            .auth(
                self.http
                    .get(format!("{}/v2/{repo}/blobs/{digest}", self.base)),
            )
            .send()
            .await?;
        anyhow::ensure!(resp.status().is_success(), "pull: {}", resp.status());
        let mut got = 0usize;
        let mut body = resp.bytes_stream();
        while let Some(chunk) = body.next().await {
            got += chunk?.len();
        }
        anyhow::ensure!(got == size, "pulled {got} bytes of {size}");
        Ok(started.elapsed().as_secs_f64())
    }
}

fn blob(mib: usize, salt: u8) -> (bytes::Bytes, String) {
    // Incompressible and distinct per salt: nobody can skip a push it already holds.
    let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ salt as u64;
    let mut v = vec![0u8; mib << 20];
    for chunk in v.chunks_mut(8) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
    }
    let digest = sha256(&v);
    (bytes::Bytes::from(v), digest)
}

async fn throughput(
    args: &Args,
    name: &str,
    target: &Target,
    repo: &str,
) -> anyhow::Result<(f64, f64)> {
    let (mut pushes, mut pulls) = (Vec::new(), Vec::new());
    let size = args.mib << 20;
    for round in 0..args.rounds {
        let (data, digest) = blob(args.mib, round as u8);
        let push = target.push(repo, &data, &digest).await?;
        drop(data);
        let pull = target.pull(repo, &digest, size).await?;
        pushes.push(args.mib as f64 / push);
        pulls.push(args.mib as f64 / pull);
    }
    let (push, pull) = (median(pushes), median(pulls));
    println!(
        "{}",
        json!({"op": format!("{} MiB blob, {name}", args.mib), "push_mib_s": push, "pull_mib_s": pull, "rounds": args.rounds})
    );
    Ok((push, pull))
}

async fn deploys(args: &Args, data: &std::path::Path) -> anyhow::Result<()> {
    let kubeconfig = data.join("admin.kubeconfig");
    let wasm = args.examples.join("hello_world.wasm");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let mut took = Vec::new();
    for i in 0..args.deploys {
        let name = format!("hello-{i}");
        let started = Instant::now();
        let out = tokio::process::Command::new(&args.drover)
            .arg("deploy")
            .arg(&wasm)
            .args(["--name", &name, "--kubeconfig"])
            .arg(&kubeconfig)
            .output()
            .await?;
        anyhow::ensure!(
            out.status.success(),
            "drover deploy: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let host = format!("{name}.default.example.com");
        loop {
            let ok = http
                .get(format!("http://{ROUTER}/"))
                .header("host", &host)
                .send()
                .await
                .is_ok_and(|r| r.status().as_u16() == 200);
            if ok {
                break;
            }
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(30),
                "{name} never answered"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        took.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    println!(
        "{}",
        json!({"op": "drover deploy hello_world.wasm → first 200 from its URL (ms)",
               "runs": took.len(), "p50_ms": percentile(took.clone(), 0.5),
               "p99_ms": percentile(took.clone(), 0.99), "max_ms": percentile(took, 1.0)})
    );
    Ok(())
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
            ADDRESS,
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
    let result = run(&args, &data).await;
    let _ = up.kill();
    let _ = up.wait();
    if let Err(e) = &result {
        eprintln!(
            "{e:#}\n{}",
            std::fs::read_to_string(dir.path().join("up.log")).unwrap_or_default()
        );
    }
    result
}

async fn run(args: &Args, data: &std::path::Path) -> anyhow::Result<()> {
    let (http, token) = up_client::admin_client(data).await?;
    // The API opens a moment after the credentials are written.
    let deadline = Instant::now() + Duration::from_secs(60);
    while http
        .get(format!("https://{ADDRESS}/v2/"))
        .bearer_auth(&token)
        .send()
        .await
        .map(|r| r.status().as_u16() != 200)
        .unwrap_or(true)
    {
        anyhow::ensure!(Instant::now() < deadline, "the registry never answered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if args.wants("deploy") {
        deploys(args, data).await?;
    }
    let one = Target {
        base: format!("https://{ADDRESS}"),
        http: http.clone(),
        token: Some(token.clone()),
    };
    let mut one_push = None;
    if args.wants("throughput") {
        let peer = testkit::registry::LocalRegistry::start();
        let distribution = Target {
            base: format!("http://{}", peer.address),
            http: reqwest::Client::new(),
            token: None,
        };
        let (dp, dl) =
            throughput(args, "docker-registry (HTTP)", &distribution, "bench/blob").await?;
        let (op, ol) = throughput(args, "Drover, one server (HTTPS)", &one, "default/blob").await?;
        one_push = Some(op);
        println!(
            "{}",
            json!({"op": "Drover / docker-registry", "push_ratio": op / dp, "pull_ratio": ol / dl})
        );
    }
    if args.wants("three") {
        let mut cluster = testkit::cluster::Cluster::start(&args.drover, 250, 3).await?;
        let member = &cluster.members[0];
        let ca =
            reqwest::Certificate::from_pem(&std::fs::read(member.data_dir.join("pki/ca.crt"))?)?;
        let token = std::fs::read_to_string(member.data_dir.join("pki/admin.token"))?
            .trim()
            .to_string();
        let three = Target {
            base: format!("https://{}", member.addr),
            http: reqwest::Client::builder()
                .add_root_certificate(ca)
                .tls_built_in_root_certs(false)
                .build()?,
            token: Some(token),
        };
        let (tp, _) = throughput(
            args,
            "Drover, three servers (HTTPS)",
            &three,
            "default/blob",
        )
        .await?;
        if let Some(op) = one_push {
            println!(
                "{}",
                json!({"op": "push time, three servers / one", "ratio": op / tp})
            );
        }
        for i in 0..3 {
            cluster.kill(i);
        }
    }
    Ok(())
}
