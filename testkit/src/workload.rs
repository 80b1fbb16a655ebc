//! A concurrent client workload that records what it saw, for linearizability checking and
//! for proving that acknowledged writes survive faults.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use raft_store::{
    Compare, CompareOp, Consistency, KeySpan, RangeRequest, StoreClient, StoreError, Txn,
};

use crate::linearizability::{KvInput, KvOutput, Operation};

/// One recorded operation on one key.
pub type KeyedOperation = (String, Operation<KvInput, KvOutput>);

/// Everything the clients did, with times on one monotonic clock.
#[derive(Clone)]
pub struct Recorder {
    start: Instant,
    pub ops: Arc<Mutex<Vec<KeyedOperation>>>,
    /// Unique keys whose put was acknowledged.
    pub acked: Arc<Mutex<BTreeSet<String>>>,
    pub counts: Arc<Mutex<Counts>>,
}

#[derive(Default, Debug, Clone)]
pub struct Counts {
    pub ok: u64,
    pub unknown: u64,
    pub failed: u64,
}

impl Recorder {
    pub fn new() -> Self {
        Recorder {
            start: Instant::now(),
            ops: Arc::default(),
            acked: Arc::default(),
            counts: Arc::default(),
        }
    }
    /// Nanoseconds since the recorder was made: the clock every operation is timed on.
    pub fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }
    /// Records one operation on `key`, called at `call` and ending now.
    pub fn record(&self, key: &str, call: u64, input: KvInput, outcome: Outcome) {
        let mut counts = self.counts.lock().unwrap();
        let op = match outcome {
            Outcome::Done(output) => {
                counts.ok += 1;
                Operation {
                    call,
                    ret: Some(self.now()),
                    input,
                    output: Some(output),
                }
            }
            Outcome::Unknown => {
                counts.unknown += 1;
                Operation {
                    call,
                    ret: None,
                    input,
                    output: None,
                }
            }
            // Definitely not applied (or a read that failed): nothing to check.
            Outcome::NotApplied => {
                counts.failed += 1;
                return;
            }
        };
        self.ops.lock().unwrap().push((key.to_string(), op));
    }
}

impl Recorder {
    /// The longest time, in ms, between two writes that completed (any outcome the store
    /// decided, swapped or not): how long writes were unavailable at worst.
    pub fn longest_gap_ms(&self) -> u64 {
        let mut done: Vec<u64> = self
            .ops
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, op)| !matches!(op.input, KvInput::Get))
            .filter_map(|(_, op)| op.ret)
            .collect();
        done.sort_unstable();
        done.windows(2)
            .map(|w| (w[1] - w[0]) / 1_000_000)
            .max()
            .unwrap_or(0)
    }
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

/// How an operation ended, as far as its client can tell.
pub enum Outcome {
    Done(KvOutput),
    /// It may or may not have taken effect (a lost answer, a timeout).
    Unknown,
    /// It certainly did not take effect (a write), or failed (a read): not checked.
    NotApplied,
}

fn write_outcome<T>(r: &Result<T, StoreError>, done: impl FnOnce(&T) -> KvOutput) -> Outcome {
    match r {
        Ok(v) => Outcome::Done(done(v)),
        Err(StoreError::NoLeader | StoreError::InvalidArgument(_)) => Outcome::NotApplied,
        // A refused connection is reported as Unavailable and is definite; anything else
        // unexpected is treated as unknown, which only makes the check more permissive.
        Err(StoreError::Unavailable(m)) if m.starts_with("cannot reach") => Outcome::NotApplied,
        Err(_) => Outcome::Unknown,
    }
}

/// One client: random puts, gets, compare-and-swaps and deletes on `keys`, plus a put of a
/// unique key every few operations, until `until`.
pub async fn run_client(
    client: StoreClient,
    rec: Recorder,
    id: usize,
    keys: Vec<String>,
    until: Instant,
) {
    let mut n = 0u64;
    let mut rng = id as u64 * 7919 + 1;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    while Instant::now() < until {
        n += 1;
        let key = keys[(next() % keys.len() as u64) as usize].clone();
        let value = format!("c{id}-{n}");
        let call = rec.now();
        match next() % 10 {
            0..=3 => {
                let r = client
                    .txn(&Txn::put(key.as_bytes(), value.as_bytes()))
                    .await;
                rec.record(
                    &key,
                    call,
                    KvInput::Put(value),
                    write_outcome(&r, |_| KvOutput::Done),
                );
            }
            4..=6 => {
                let r = client
                    .range(
                        &RangeRequest::new(KeySpan::key(key.as_bytes())),
                        Consistency::Linearizable,
                    )
                    .await;
                let outcome = match r {
                    Ok(resp) => Outcome::Done(KvOutput::Value(
                        resp.kvs
                            .first()
                            .map(|kv| String::from_utf8_lossy(&kv.value).into_owned()),
                    )),
                    Err(_) => Outcome::NotApplied,
                };
                rec.record(&key, call, KvInput::Get, outcome);
            }
            7..=8 => {
                // Compare-and-swap against the value this client last read is rare to win;
                // swap against "absent" or a fresh read instead.
                let current = client.get(key.as_bytes()).await.ok().flatten();
                let expect = current.map(|kv| String::from_utf8_lossy(&kv.value).into_owned());
                let call = rec.now();
                let compare = match &expect {
                    Some(v) => Compare::value(key.as_bytes(), CompareOp::Equal, v.as_bytes()),
                    None => Compare::exists(key.as_bytes(), false),
                };
                let r = client
                    .txn(&Txn::put(key.as_bytes(), value.as_bytes()).when(compare))
                    .await;
                rec.record(
                    &key,
                    call,
                    KvInput::Cas { expect, new: value },
                    write_outcome(&r, |resp| KvOutput::Swapped(resp.succeeded)),
                );
            }
            _ => {
                let r = client.txn(&Txn::delete(key.as_bytes())).await;
                rec.record(
                    &key,
                    call,
                    KvInput::Delete,
                    write_outcome(&r, |_| KvOutput::Done),
                );
            }
        }
        if n.is_multiple_of(4) {
            let unique = format!("/acked/{id}/{n}");
            if client.put(unique.as_bytes(), b"x").await.is_ok() {
                rec.acked.lock().unwrap().insert(unique);
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Reads every register key once more (after the faults) so the final state is checked too.
pub async fn final_reads(client: &StoreClient, rec: &Recorder, keys: &[String]) {
    for key in keys {
        let call = rec.now();
        if let Ok(resp) = client
            .range(
                &RangeRequest::new(KeySpan::key(key.as_bytes())),
                Consistency::Linearizable,
            )
            .await
        {
            let v = resp
                .kvs
                .first()
                .map(|kv| String::from_utf8_lossy(&kv.value).into_owned());
            rec.record(key, call, KvInput::Get, Outcome::Done(KvOutput::Value(v)));
        }
    }
}
