//! Side-by-side benchmark of Drover's store and etcd, in one run on one machine.
//!
//! `store-bench throughput --system drover|etcd --members N` starts a fresh cluster of that
//! system on loopback, drives it with durable puts (N concurrent clients, fixed value size) for
//! a fixed time, and prints one JSON line: puts/s and latency percentiles.
//! `store-bench failover --system drover|etcd` starts three members, keeps a light write load
//! going, kill -9s the leader, and reports the time to the first acknowledged write after it.
//!
//! Both systems get the same load over HTTP/1.1 keep-alive connections, and both run with
//! mutual TLS everywhere, peers and clients: Drover through its store API on the members' peer
//! addresses (member certificates of the cluster CA), etcd through its v3 JSON gateway (etcd
//! 3.4's `/v3/kv/put`) with `--peer-client-cert-auth` and `--client-cert-auth` and certificates
//! of a CA made here. Clients talk to the leader, as an API server co-located with its store
//! member would.

use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use base64::Engine as _;
use clap::{Parser, Subcommand, ValueEnum};
use hdrhistogram::Histogram;
use raft_store::{RemoteMember, Txn};
use serde_json::json;
use tokio::sync::Mutex;

#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    mode: Mode,
    #[arg(long, value_enum, global = true, default_value = "drover")]
    system: System,
    /// The drover binary (build it with --release first).
    #[arg(long, global = true, default_value = "target/release/drover")]
    drover: PathBuf,
    #[arg(long, global = true, default_value = "etcd")]
    etcd: PathBuf,
}

#[derive(Subcommand)]
enum Mode {
    Throughput {
        #[arg(long, default_value_t = 3)]
        members: usize,
        #[arg(long, default_value_t = 64)]
        clients: usize,
        #[arg(long, default_value_t = 30)]
        secs: u64,
        #[arg(long, default_value_t = 256)]
        value_size: usize,
    },
    Failover {
        #[arg(long, default_value_t = 5)]
        trials: usize,
    },
    /// How long applies stall while a Raft snapshot of a large state is built (in process, on
    /// the engine alone: no network, no Raft).
    SnapshotPause {
        #[arg(long, default_value_t = 1_000_000)]
        keys: usize,
        #[arg(long, default_value_t = 256)]
        value_size: usize,
        /// Keys copied per hold of the lock (the engine's own export uses 4096).
        #[arg(long, default_value_t = 4096)]
        chunk: usize,
    },
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
enum System {
    Drover,
    Etcd,
}

/// A running cluster of either system.
enum Running {
    Drover(testkit::Cluster),
    Etcd(EtcdCluster),
}

struct EtcdCluster {
    _dir: tempfile::TempDir,
    clients: Vec<String>,
    children: Vec<Option<Child>>,
    /// A client with the CA and a client certificate.
    http: reqwest::Client,
}

/// A CA, a certificate per member (server and client, for its address) and one for clients,
/// as PEM files in `dir`: etcd's peer and client TLS.
struct EtcdPki {
    ca: PathBuf,
    members: Vec<(PathBuf, PathBuf)>,
    client_pem: String,
    ca_pem: String,
}

fn etcd_pki(dir: &std::path::Path, ips: &[String]) -> anyhow::Result<EtcdPki> {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf = |sans: Vec<String>| -> anyhow::Result<(String, String)> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(sans)?;
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        Ok((params.signed_by(&key, &issuer)?.pem(), key.serialize_pem()))
    };
    let ca = dir.join("ca.crt");
    std::fs::write(&ca, ca_cert.pem())?;
    let mut members = Vec::new();
    for (i, ip) in ips.iter().enumerate() {
        let (cert, key) = leaf(vec![ip.clone(), "127.0.0.1".into()])?;
        let (c, k) = (dir.join(format!("m{i}.crt")), dir.join(format!("m{i}.key")));
        std::fs::write(&c, cert)?;
        std::fs::write(&k, key)?;
        members.push((c, k));
    }
    let (cert, key) = leaf(vec!["client".into()])?;
    Ok(EtcdPki {
        ca,
        members,
        client_pem: format!("{cert}{key}"),
        ca_pem: ca_cert.pem(),
    })
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for c in self.children.iter_mut().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_port(ip: &str) -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind((ip, 0))?.local_addr()?.port())
}

async fn start_etcd(bin: &PathBuf, members: usize, first_ip: u8) -> anyhow::Result<EtcdCluster> {
    let dir = tempfile::tempdir()?;
    let mut peers = Vec::new();
    let mut clients = Vec::new();
    let ips: Vec<String> = (0..members)
        .map(|i| format!("127.0.0.{}", first_ip as usize + i))
        .collect();
    for ip in &ips {
        peers.push(format!("https://{ip}:{}", free_port(ip)?));
        clients.push(format!("{ip}:{}", free_port(ip)?));
    }
    let pki = etcd_pki(dir.path(), &ips)?;
    let initial: Vec<String> = peers
        .iter()
        .enumerate()
        .map(|(i, p)| format!("m{i}={p}"))
        .collect();
    let mut children = Vec::new();
    for i in 0..members {
        let log = std::fs::File::create(dir.path().join(format!("m{i}.log")))?;
        let child = Command::new(bin)
            .args(["--name", &format!("m{i}")])
            .arg("--data-dir")
            .arg(dir.path().join(format!("m{i}")))
            .args(["--listen-client-urls", &format!("https://{}", clients[i])])
            .args([
                "--advertise-client-urls",
                &format!("https://{}", clients[i]),
            ])
            .arg("--cert-file")
            .arg(&pki.members[i].0)
            .arg("--key-file")
            .arg(&pki.members[i].1)
            .arg("--trusted-ca-file")
            .arg(&pki.ca)
            .arg("--client-cert-auth")
            .arg("--peer-cert-file")
            .arg(&pki.members[i].0)
            .arg("--peer-key-file")
            .arg(&pki.members[i].1)
            .arg("--peer-trusted-ca-file")
            .arg(&pki.ca)
            .arg("--peer-client-cert-auth")
            .args(["--listen-peer-urls", &peers[i]])
            .args(["--initial-advertise-peer-urls", &peers[i]])
            .args(["--initial-cluster", &initial.join(",")])
            .args(["--initial-cluster-state", "new"])
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("start {} (apt-get install etcd-server)", bin.display()))?;
        children.push(Some(child));
    }
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_millis(200))
        .use_rustls_tls()
        .add_root_certificate(reqwest::Certificate::from_pem(pki.ca_pem.as_bytes())?)
        .identity(reqwest::Identity::from_pem(pki.client_pem.as_bytes())?)
        .build()?;
    let c = EtcdCluster {
        _dir: dir,
        clients,
        children,
        http,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while etcd_leader(&c).await.is_none() {
        if Instant::now() > deadline {
            bail!("etcd did not elect a leader");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(c)
}

/// An etcd member's `/v3/maintenance/status`, if it answers within half a second.
async fn etcd_status(c: &EtcdCluster, addr: &str) -> Option<serde_json::Value> {
    let resp = c
        .http
        .post(format!("https://{addr}/v3/maintenance/status"))
        .timeout(Duration::from_millis(500))
        .json(&json!({}))
        .send()
        .await
        .ok()?;
    resp.json().await.ok()
}

/// The index of the etcd member that leads, asking every live member.
async fn etcd_leader(c: &EtcdCluster) -> Option<usize> {
    for (i, addr) in c.clients.iter().enumerate() {
        if c.children[i].is_none() {
            continue;
        }
        let Some(v) = etcd_status(c, addr).await else {
            continue;
        };
        if v["leader"].is_string() && v["leader"] == v["header"]["member_id"] {
            return Some(i);
        }
    }
    None
}

impl Running {
    async fn start(args: &Args, members: usize, first_ip: u8) -> anyhow::Result<Running> {
        Ok(match args.system {
            System::Drover => {
                let mut c = testkit::Cluster::new(&args.drover, first_ip)?;
                c.flags.clear(); // production timers
                for _ in 0..members {
                    c.add_member().await?;
                }
                Running::Drover(c)
            }
            System::Etcd => Running::Etcd(start_etcd(&args.etcd, members, first_ip).await?),
        })
    }

    async fn leader(&self) -> anyhow::Result<usize> {
        match self {
            Running::Drover(c) => c.leader(Duration::from_secs(30)).await,
            Running::Etcd(c) => {
                let deadline = Instant::now() + Duration::from_secs(30);
                loop {
                    if let Some(i) = etcd_leader(c).await {
                        return Ok(i);
                    }
                    if Instant::now() > deadline {
                        bail!("no etcd leader");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// The highest Raft term a live member reports: how many elections there have been.
    async fn term(&self) -> u64 {
        match self {
            Running::Drover(c) => {
                let mut term = 0;
                for i in 0..c.members.len() {
                    if let Ok(s) = c.status(i).await {
                        term = term.max(s.term);
                    }
                }
                term
            }
            Running::Etcd(c) => {
                let mut term = 0;
                for addr in &c.clients {
                    if let Some(v) = etcd_status(c, addr).await {
                        // The JSON gateway gives 64-bit numbers as strings.
                        let t = v["raftTerm"]
                            .as_str()
                            .and_then(|t| t.parse().ok())
                            .or_else(|| v["raftTerm"].as_u64())
                            .unwrap_or(0);
                        term = term.max(t);
                    }
                }
                term
            }
        }
    }

    fn addrs(&self) -> Vec<String> {
        match self {
            // The store's own address, behind mutual TLS (the API address does not serve it).
            Running::Drover(c) => c.members.iter().map(|m| m.peer.to_string()).collect(),
            Running::Etcd(c) => c.clients.clone(),
        }
    }

    fn kill(&mut self, i: usize) {
        match self {
            Running::Drover(c) => c.kill(i),
            Running::Etcd(c) => {
                if let Some(mut child) = c.children[i].take() {
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
        }
    }
}

/// One durable put, the same shape for both systems.
#[derive(Clone)]
enum Putter {
    Drover(RemoteMember),
    Etcd { http: reqwest::Client, url: String },
}

impl Putter {
    fn new(cluster: &Running, addr: &str) -> Self {
        match cluster {
            Running::Drover(c) => Putter::Drover(RemoteMember::direct(
                raft_store::network::Transport::new(
                    None,
                    Some(&c.tls().expect("a member certificate")),
                ),
                addr,
            )),
            Running::Etcd(c) => Putter::Etcd {
                http: c.http.clone(),
                url: format!("https://{addr}/v3/kv/put"),
            },
        }
    }

    async fn put(&self, key: &[u8], value: &[u8], timeout: Duration) -> anyhow::Result<()> {
        match self {
            Putter::Drover(m) => {
                tokio::time::timeout(timeout, m.txn(&Txn::put(key, value))).await??;
            }
            Putter::Etcd { http, url } => {
                let b64 = base64::engine::general_purpose::STANDARD;
                let resp = http
                    .post(url)
                    .timeout(timeout)
                    .json(&json!({"key": b64.encode(key), "value": b64.encode(value)}))
                    .send()
                    .await?;
                if !resp.status().is_success() {
                    bail!("etcd answered {}", resp.status());
                }
                let v: serde_json::Value = resp.json().await?;
                if v.get("error").is_some() {
                    bail!("etcd: {v}");
                }
            }
        }
        Ok(())
    }
}

async fn throughput(
    args: &Args,
    members: usize,
    clients: usize,
    secs: u64,
    value_size: usize,
) -> anyhow::Result<()> {
    let first_ip = if args.system == System::Drover {
        61
    } else {
        71
    };
    let cluster = Running::start(args, members, first_ip).await?;
    let leader = cluster.leader().await?;
    let addr = cluster.addrs()[leader].clone();
    let putter = Putter::new(&cluster, &addr);
    let term_before = cluster.term().await;
    let value = vec![b'v'; value_size];
    let warmup = Duration::from_secs(2);
    let start = Instant::now();
    let measure_from = start + warmup;
    let end = measure_from + Duration::from_secs(secs);
    let hist = Arc::new(Mutex::new(Histogram::<u64>::new(3)?));
    let errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (putter, value, hist, errors) =
            (putter.clone(), value.clone(), hist.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let mut local = Histogram::<u64>::new(3).expect("histogram");
            let mut n = 0u64;
            while Instant::now() < end {
                n += 1;
                let key = format!("/bench/{c}/{}", n % 1000);
                let t0 = Instant::now();
                match putter
                    .put(key.as_bytes(), &value, Duration::from_secs(10))
                    .await
                {
                    Ok(()) if t0 >= measure_from => {
                        local
                            .record(t0.elapsed().as_micros() as u64)
                            .expect("record");
                    }
                    Ok(()) => {}
                    Err(_) => {
                        errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            }
            hist.lock().await.add(local).expect("merge");
        }));
    }
    for t in tasks {
        t.await?;
    }
    let elapsed = (Instant::now() - measure_from).as_secs_f64();
    // Elections under load: none should happen with a healthy leader.
    let elections = cluster.term().await.saturating_sub(term_before);
    let h = hist.lock().await;
    let result = json!({
        "system": format!("{:?}", args.system).to_lowercase(),
        "members": members,
        "clients": clients,
        "value_bytes": value_size,
        "seconds": secs,
        "puts_per_sec": (h.len() as f64 / elapsed).round(),
        "p50_ms": h.value_at_quantile(0.50) as f64 / 1000.0,
        "p99_ms": h.value_at_quantile(0.99) as f64 / 1000.0,
        "errors": errors.load(std::sync::atomic::Ordering::Relaxed),
        "elections_under_load": elections,
    });
    println!("{result}");
    Ok(())
}

async fn failover(args: &Args, trials: usize) -> anyhow::Result<()> {
    let mut times = Vec::new();
    for trial in 0..trials {
        let first_ip = if args.system == System::Drover {
            81
        } else {
            91
        };
        let mut cluster = Running::start(args, 3, first_ip).await?;
        let leader = cluster.leader().await?;
        let addrs = cluster.addrs();
        // Writers against the two members that survive, as clients with several endpoints do.
        let survivors: Vec<String> = addrs
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != leader)
            .map(|(_, a)| a.clone())
            .collect();
        let first_ack = Arc::new(Mutex::new(None::<Instant>));
        let killed_at = Arc::new(Mutex::new(None::<Instant>));
        let stop = Instant::now() + Duration::from_secs(20);
        let mut tasks = Vec::new();
        for (w, addr) in survivors.iter().cycle().take(4).enumerate() {
            let putter = Putter::new(&cluster, addr);
            let (first_ack, killed_at) = (first_ack.clone(), killed_at.clone());
            tasks.push(tokio::spawn(async move {
                let mut n = 0u64;
                while Instant::now() < stop {
                    n += 1;
                    let call = Instant::now();
                    let ok = putter
                        .put(
                            format!("/fo/{w}/{n}").as_bytes(),
                            b"x",
                            Duration::from_millis(500),
                        )
                        .await
                        .is_ok();
                    if ok {
                        let killed = *killed_at.lock().await;
                        // Count only writes issued after the kill.
                        if killed.is_some_and(|k| call >= k) {
                            let mut f = first_ack.lock().await;
                            if f.is_none() {
                                *f = Some(Instant::now());
                            }
                            return;
                        }
                    } else {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            }));
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        *killed_at.lock().await = Some(Instant::now());
        cluster.kill(leader);
        for t in tasks {
            t.await?;
        }
        let (k, f) = (
            killed_at.lock().await.expect("killed"),
            *first_ack.lock().await,
        );
        match f {
            Some(f) => {
                let ms = (f - k).as_secs_f64() * 1000.0;
                eprintln!("trial {trial}: {ms:.0} ms");
                times.push(ms);
            }
            None => eprintln!("trial {trial}: no write succeeded within 20 s"),
        }
    }
    times.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
    let median = times.get(times.len() / 2).copied();
    println!(
        "{}",
        json!({
            "system": format!("{:?}", args.system).to_lowercase(),
            "failover_ms_median": median.map(|m| m.round()),
            "failover_ms_all": times.iter().map(|m| m.round()).collect::<Vec<_>>(),
        })
    );
    Ok(())
}

/// Fills an engine with `keys` keys, then builds a snapshot while one thread applies puts as
/// fast as it can, and reports the longest apply (the stall a snapshot causes) beside the
/// export's duration. Before 2026-12-07 the whole export ran under the state's lock, so every
/// apply waited for all of it: the duration is what that pause was.
fn snapshot_pause(keys: usize, value_size: usize, chunk: usize) -> anyhow::Result<()> {
    use raft_store::engine::{Command, Engine};
    let engine = Engine::new();
    let value = vec![b'v'; value_size];
    let mut applied = 0u64;
    for chunk in (0..keys).collect::<Vec<_>>().chunks(1000) {
        let batch: Vec<Txn> = chunk
            .iter()
            .map(|i| {
                Txn::put(
                    format!("/registry/pods/default/p{i:08}").as_bytes(),
                    value.as_slice(),
                )
            })
            .collect();
        applied += 1;
        engine.apply(&[Some(Command::Batch(batch))], &applied.to_be_bytes());
    }
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (writer_engine, writer_stop) = (engine.clone(), stop.clone());
    let origin = Instant::now();
    let writer = std::thread::spawn(move || {
        let mut h = Histogram::<u64>::new(3).expect("histogram");
        let mut longest = (Duration::ZERO, Duration::ZERO); // (when, how long)
        let mut n = applied;
        while !writer_stop.load(std::sync::atomic::Ordering::Relaxed) {
            n += 1;
            let put = Txn::put(
                format!("/registry/pods/default/p{:08}", n % 1000).as_bytes(),
                b"x",
            );
            let t0 = Instant::now();
            writer_engine.apply(&[Some(Command::Txn(put))], &n.to_be_bytes());
            let took = t0.elapsed();
            if took > longest.1 {
                longest = (t0 - origin, took);
            }
            h.record(took.as_micros() as u64).expect("record");
        }
        (h, longest)
    });
    // Let the writer run alone first, so its own figures are in the histogram as a baseline.
    std::thread::sleep(Duration::from_millis(500));
    let t0 = Instant::now();
    let mut copied = t0;
    let (payload, _) = engine.export_in_chunks(chunk, &mut || copied = Instant::now());
    let export_ms = t0.elapsed().as_secs_f64() * 1000.0;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (h, longest) = writer.join().expect("writer");
    let ms = |d: Duration| (d.as_secs_f64() * 1000.0).round();
    println!(
        "{}",
        json!({
            "keys": keys,
            "snapshot_bytes": payload.len(),
            "export_ms": export_ms.round(),
            "applies_during_run": h.len(),
            "apply_p50_us": h.value_at_quantile(0.5),
            "apply_p99_us": h.value_at_quantile(0.99),
            "apply_max_ms": h.max() as f64 / 1000.0,
            // When the longest apply began, against the export's phases (ms from the start).
            "longest_apply_at_ms": ms(longest.0),
            "export_began_at_ms": ms(t0 - origin),
            "copy_ended_at_ms": ms(copied - origin),
            "export_ended_at_ms": ms(t0 - origin) + export_ms.round(),
        })
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    match args.mode {
        Mode::Throughput {
            members,
            clients,
            secs,
            value_size,
        } => throughput(&args, members, clients, secs, value_size).await,
        Mode::Failover { trials } => failover(&args, trials).await,
        Mode::SnapshotPause {
            keys,
            value_size,
            chunk,
        } => snapshot_pause(keys, value_size, chunk),
    }
}
