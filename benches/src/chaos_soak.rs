//! The chaos soak (issue 15): a cluster of real `drover server` processes on loopback
//! addresses, under a mixed load through the store API and the Kubernetes API, while members
//! are killed with SIGKILL and restarted, cut off with nftables, and removed and replaced. At
//! the end every history is checked for linearizability, the watch stream for duplicates and
//! reordering and for writes it never delivered, and every acknowledged write for its
//! presence on every member. Prints one JSON line; exits non-zero if anything was lost or
//! wrong.
//!
//!     sudo target/release/chaos-soak [--members 3] [--duration 10m] [--seed N]
//!
//! Needs root (nftables). `.ci/run` runs a short soak on every submission;
//! `benches/chaos-soak.sh` runs the long ones written down in BENCHMARKS.md.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use futures_util::StreamExt;
use raft_store::{Consistency, KeySpan, RangeRequest};
use serde_json::{json, Value};
use testkit::linearizability::{check_kv, KvInput, KvOutput};
use testkit::workload::{final_reads, run_client, Outcome, Recorder};
use testkit::{Cluster, Partition};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "target/release/drover")]
    drover: PathBuf,
    #[arg(long, default_value_t = 3)]
    members: usize,
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Seeds the choice of faults and victims (the load's timing is the machine's).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// The 127.0.0.X block the members use.
    #[arg(long, default_value_t = 140)]
    first_ip: u8,
}

/// xorshift: the same seed chooses the same faults.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The Kubernetes API as the soak's clients reach it: the members' API addresses (`None` while
/// a member is down), the cluster CA and the admin token.
#[derive(Clone)]
struct Api {
    http: reqwest::Client,
    token: String,
    addrs: Arc<Mutex<Vec<Option<String>>>>,
}

impl Api {
    /// A running member's base URL, picked by `pick`.
    fn base(&self, pick: u64) -> Option<String> {
        let addrs = self.addrs.lock().expect("poisoned");
        let up: Vec<&String> = addrs.iter().flatten().collect();
        (!up.is_empty()).then(|| format!("https://{}", up[pick as usize % up.len()]))
    }
}

/// What came back for a request.
enum Answer {
    Status(u16, Option<Value>),
    /// The connection was refused: the request was never sent.
    NotSent,
    /// Sent, and the answer lost (reset, timeout): it may have taken effect.
    Lost,
}

async fn send(req: reqwest::RequestBuilder) -> Answer {
    match req.timeout(Duration::from_secs(10)).send().await {
        Ok(resp) => {
            let code = resp.status().as_u16();
            let body = if resp.status().is_success() {
                // A status without its body still decides the outcome.
                resp.json::<Value>().await.ok()
            } else {
                None
            };
            Answer::Status(code, body)
        }
        Err(e) if e.is_connect() => Answer::NotSent,
        Err(_) => Answer::Lost,
    }
}

/// A write's outcome from its answer: `done` maps the statuses that decide it; a 5xx or a
/// lost answer may hide a write that took effect; any other refusal (429, a 4xx the request
/// caused) proves nothing happened.
fn write_outcome(answer: &Answer, done: impl FnOnce(u16) -> Option<KvOutput>) -> Outcome {
    match answer {
        Answer::Status(code, _) => match done(*code) {
            Some(out) => Outcome::Done(out),
            None if *code >= 500 => Outcome::Unknown,
            None => Outcome::NotApplied,
        },
        Answer::NotSent => Outcome::NotApplied,
        Answer::Lost => Outcome::Unknown,
    }
}

fn value_of(cm: &Value) -> Option<String> {
    cm["data"]["v"].as_str().map(str::to_string)
}

fn resource_version(answer: &Answer) -> Option<u64> {
    match answer {
        Answer::Status(200 | 201, Some(obj)) => obj["metadata"]["resourceVersion"]
            .as_str()
            .and_then(|rv| rv.parse().ok()),
        _ => None,
    }
}

/// One API client: creates, reads, replaces by resourceVersion and deletes a few ConfigMaps,
/// every value written unique, each ConfigMap recorded as a register. Returns the
/// resourceVersions of its acknowledged writes, which the watch must deliver.
async fn api_client(api: Api, rec: Recorder, id: u64, until: Instant) -> BTreeSet<u64> {
    let mut rng = Rng(id * 7919 + 17);
    let mut acked = BTreeSet::new();
    let mut n = 0u64;
    while Instant::now() < until {
        n += 1;
        let name = format!("cm-{}", rng.below(6));
        let Some(base) = api.base(rng.next()) else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let url = format!("{base}/api/v1/namespaces/default/configmaps");
        let value = format!("a{id}-{n}");
        let call = rec.now();
        match rng.below(10) {
            0..=2 => {
                let answer = send(
                    api.http
                        .get(format!("{url}/{name}"))
                        .bearer_auth(&api.token),
                )
                .await;
                let outcome = match answer {
                    Answer::Status(200, Some(cm)) => Outcome::Done(KvOutput::Value(value_of(&cm))),
                    Answer::Status(404, _) => Outcome::Done(KvOutput::Value(None)),
                    _ => Outcome::NotApplied,
                };
                rec.record(&name, call, KvInput::Get, outcome);
            }
            3..=4 => {
                let body = json!({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": name}, "data": {"v": value}});
                let answer = send(api.http.post(&url).bearer_auth(&api.token).json(&body)).await;
                let outcome = write_outcome(&answer, |code| match code {
                    201 => Some(KvOutput::Swapped(true)),
                    409 => Some(KvOutput::Swapped(false)),
                    _ => None,
                });
                acked.extend(resource_version(&answer));
                rec.record(
                    &name,
                    call,
                    KvInput::Cas {
                        expect: None,
                        new: value,
                    },
                    outcome,
                );
            }
            5..=7 => {
                // Read, then replace with the resourceVersion read: a compare-and-swap on the
                // value read, since every value written is unique.
                let read = send(
                    api.http
                        .get(format!("{url}/{name}"))
                        .bearer_auth(&api.token),
                )
                .await;
                let Answer::Status(200, Some(mut cm)) = read else {
                    continue;
                };
                let expect = value_of(&cm);
                cm["data"]["v"] = json!(value);
                let call = rec.now();
                let answer = send(
                    api.http
                        .put(format!("{url}/{name}"))
                        .bearer_auth(&api.token)
                        .json(&cm),
                )
                .await;
                let outcome = write_outcome(&answer, |code| match code {
                    200 => Some(KvOutput::Swapped(true)),
                    409 | 404 => Some(KvOutput::Swapped(false)),
                    _ => None,
                });
                acked.extend(resource_version(&answer));
                rec.record(&name, call, KvInput::Cas { expect, new: value }, outcome);
            }
            _ => {
                let answer = send(
                    api.http
                        .delete(format!("{url}/{name}"))
                        .bearer_auth(&api.token),
                )
                .await;
                let outcome = write_outcome(&answer, |code| {
                    matches!(code, 200 | 404).then_some(KvOutput::Done)
                });
                rec.record(&name, call, KvInput::Delete, outcome);
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    acked
}

/// What the watcher saw.
#[derive(Default, Debug)]
struct Watched {
    /// resourceVersion → events delivered with it (more than one: a duplicate).
    events: BTreeMap<u64, u32>,
    /// An event older than the one before it.
    out_of_order: u64,
    /// Watches that had to list again (410 Gone): what they missed is no gap.
    relists: Vec<(u64, u64)>,
    reconnects: u64,
}

/// Watches the ConfigMaps of `default` until `until` plus a grace to catch up, resuming from
/// the last resourceVersion on any member whenever a stream ends.
async fn watcher(api: Api, until: Instant) -> Watched {
    let mut seen = Watched::default();
    let mut last: u64 = 0;
    let mut pick = 0u64;
    while Instant::now() < until {
        pick += 1;
        let Some(base) = api.base(pick) else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let url = format!(
            "{base}/api/v1/namespaces/default/configmaps?watch=1&resourceVersion={last}&allowWatchBookmarks=true"
        );
        let Ok(resp) = api.http.get(&url).bearer_auth(&api.token).send().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        if !resp.status().is_success() {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        seen.reconnects += 1;
        let mut body = resp.bytes_stream();
        let mut buf = Vec::new();
        'stream: while let Ok(Some(chunk)) =
            tokio::time::timeout(until.saturating_duration_since(Instant::now()), body.next()).await
        {
            let Ok(chunk) = chunk else { break };
            buf.extend_from_slice(&chunk);
            while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=nl).collect();
                let Ok(event) = serde_json::from_slice::<Value>(&line) else {
                    continue;
                };
                let kind = event["type"].as_str().unwrap_or("");
                if kind == "ERROR" {
                    // 410: history compacted past `last`; list again from now.
                    if let Some(now) = list_version(&api, &base).await {
                        seen.relists.push((last, now));
                        last = now;
                    }
                    break 'stream;
                }
                let Some(rv) = event["object"]["metadata"]["resourceVersion"]
                    .as_str()
                    .and_then(|rv| rv.parse::<u64>().ok())
                else {
                    continue;
                };
                if kind == "BOOKMARK" {
                    last = last.max(rv);
                    continue;
                }
                if rv <= last {
                    seen.out_of_order += 1;
                }
                *seen.events.entry(rv).or_default() += 1;
                last = last.max(rv);
            }
        }
    }
    seen
}

async fn list_version(api: &Api, base: &str) -> Option<u64> {
    let resp = api
        .http
        .get(format!("{base}/api/v1/namespaces/default/configmaps"))
        .bearer_auth(&api.token)
        .send()
        .await
        .ok()?;
    let list: Value = resp.json().await.ok()?;
    list["metadata"]["resourceVersion"].as_str()?.parse().ok()
}

#[derive(Default, Debug)]
struct Faults {
    kills: u32,
    partitions: u32,
    replacements: u32,
}

/// Injects faults until `until`: every 3–8 s one of kill -9 and restart (after 1–3 s), cut
/// off with nftables (3–6 s), or remove a member and add a new one. Never more than a minority
/// down at once: one fault at a time.
async fn chaos(
    c: &mut Cluster,
    api: &Api,
    rng: &mut Rng,
    until: Instant,
) -> anyhow::Result<Faults> {
    let mut faults = Faults::default();
    let publish = |c: &Cluster| {
        *api.addrs.lock().expect("poisoned") = c
            .members
            .iter()
            .map(|m| m.is_running().then(|| m.addr.to_string()))
            .collect();
    };
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(3000 + rng.below(5000))).await;
        if Instant::now() >= until {
            break;
        }
        let running: Vec<usize> = (0..c.members.len())
            .filter(|&i| c.members[i].is_running())
            .collect();
        let victim = running[rng.below(running.len() as u64) as usize];
        match rng.below(10) {
            0..=4 => {
                c.kill(victim);
                publish(c);
                tokio::time::sleep(Duration::from_millis(1000 + rng.below(2000))).await;
                c.restart(victim).await?;
                publish(c);
                faults.kills += 1;
            }
            5..=7 => {
                let cut = Partition::isolate(c.members[victim].addr.ip())?;
                tokio::time::sleep(Duration::from_millis(3000 + rng.below(3000))).await;
                drop(cut);
                faults.partitions += 1;
            }
            _ => {
                let id = c.status(victim).await?.node_id;
                c.client().remove_member(id).await?;
                c.kill(victim);
                publish(c);
                c.add_member().await?;
                publish(c);
                faults.replacements += 1;
            }
        }
    }
    Ok(faults)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut c = Cluster::new(&args.drover, args.first_ip)?;
    c.flags.clear(); // the production timers
    for _ in 0..args.members {
        c.add_member().await?;
    }
    let data = c.members[0].data_dir.clone();
    let ca = reqwest::Certificate::from_pem(&std::fs::read(data.join("pki/ca.crt"))?)?;
    let token = std::fs::read_to_string(data.join("pki/admin.token"))?
        .trim()
        .to_string();
    let api = Api {
        http: reqwest::Client::builder()
            .add_root_certificate(ca)
            .tls_built_in_root_certs(false)
            .build()?,
        token,
        addrs: Arc::new(Mutex::new(
            c.members.iter().map(|m| Some(m.addr.to_string())).collect(),
        )),
    };
    let started = Instant::now();
    let until = started + args.duration;

    let store_rec = Recorder::new();
    let api_rec = Recorder::new();
    let keys: Vec<String> = (0..6).map(|i| format!("/soak/reg/{i}")).collect();
    let mut store_clients = Vec::new();
    for id in 0..4 {
        let mut client = c.client();
        client.patience = Duration::from_secs(20);
        store_clients.push(tokio::spawn(run_client(
            client,
            store_rec.clone(),
            id,
            keys.clone(),
            until,
        )));
    }
    let api_clients: Vec<_> = (0..4)
        .map(|id| tokio::spawn(api_client(api.clone(), api_rec.clone(), id, until)))
        .collect();
    let watch = tokio::spawn(watcher(api.clone(), until + Duration::from_secs(15)));

    let mut rng = Rng(args.seed.max(1));
    let faults = chaos(&mut c, &api, &mut rng, until).await;
    for t in store_clients {
        t.await?;
    }
    let mut acked_versions = BTreeSet::new();
    for t in api_clients {
        acked_versions.extend(t.await?);
    }
    let faults = faults?;
    let watched = watch.await?;

    // The store: final reads, linearizability, every acknowledged unique write on every member.
    let client = c.client();
    final_reads(&client, &store_rec, &keys).await;
    let store_history = store_rec.ops.lock().expect("poisoned").clone();
    let store_check = check_kv(&store_history);
    let acked = store_rec.acked.lock().expect("poisoned").clone();
    let mut lost = 0usize;
    for i in 0..c.members.len() {
        if !c.members[i].is_running() {
            continue;
        }
        let member = c.client_of(&[c.members[i].peer.to_string()]);
        // Read through the leader first (linearizable), so the member has applied everything.
        client
            .range(
                &RangeRequest::new(KeySpan::prefix("/acked/")),
                Consistency::Linearizable,
            )
            .await?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let resp = member
                .range(
                    &RangeRequest::new(KeySpan::prefix("/acked/")),
                    Consistency::Serializable,
                )
                .await?;
            let present: BTreeSet<String> = resp
                .kvs
                .iter()
                .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
                .collect();
            let missing = acked.difference(&present).count();
            if missing == 0 || Instant::now() > deadline {
                lost = lost.max(missing);
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    // The API: linearizability of every ConfigMap, and the watch against the acknowledged writes.
    let api_history = api_rec.ops.lock().expect("poisoned").clone();
    let api_check = check_kv(&api_history);
    let in_relist = |rv: &u64| {
        watched
            .relists
            .iter()
            .any(|(from, to)| rv > from && rv <= to)
    };
    let undelivered: Vec<u64> = acked_versions
        .iter()
        .filter(|rv| !watched.events.contains_key(rv) && !in_relist(rv))
        .copied()
        .collect();
    let duplicates = watched.events.values().filter(|n| **n > 1).count();

    let counts = store_rec.counts.lock().expect("poisoned").clone();
    let api_counts = api_rec.counts.lock().expect("poisoned").clone();
    let ok = store_check.is_ok()
        && api_check.is_ok()
        && lost == 0
        && undelivered.is_empty()
        && duplicates == 0
        && watched.out_of_order == 0;
    println!(
        "{}",
        json!({
            "members": args.members,
            "seconds": started.elapsed().as_secs(),
            "seed": args.seed,
            "faults": {"kill_9_and_restart": faults.kills, "partition": faults.partitions,
                       "member_replaced": faults.replacements},
            "store_ops": {"ok": counts.ok, "unknown": counts.unknown, "failed": counts.failed},
            "api_ops": {"ok": api_counts.ok, "unknown": api_counts.unknown, "failed": api_counts.failed},
            "histories_checked": {"store_keys": keys.len(), "store_operations": store_history.len(),
                                  "configmaps": 6, "api_operations": api_history.len()},
            "store_linearizable": store_check.as_ref().map(|_| "yes".to_string()).unwrap_or_else(|e| e.clone()),
            "api_linearizable": api_check.as_ref().map(|_| "yes".to_string()).unwrap_or_else(|e| e.clone()),
            "acknowledged_store_writes": acked.len(),
            "acknowledged_store_writes_lost": lost,
            "acknowledged_api_writes": acked_versions.len(),
            "watch": {"events": watched.events.len(), "duplicates": duplicates,
                      "out_of_order": watched.out_of_order, "undelivered": undelivered.len(),
                      "relists": watched.relists.len(), "streams": watched.reconnects},
            "longest_write_unavailability_ms": store_rec.longest_gap_ms(),
            "ok": ok,
        })
    );
    if !ok {
        eprintln!("{}", c.all_logs());
        std::process::exit(1);
    }
    Ok(())
}
