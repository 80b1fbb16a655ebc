//! Leader-side batching of client transactions into single log entries.
//!
//! openraft 0.9 appends one entry per proposal and waits for that append's fsync before it
//! looks at the next proposal, so one proposal per client write would cap the store at one
//! write per fsync. The proposer queues concurrent writes and proposes whatever has gathered
//! as one `Command::Batch` entry, with a few batches in flight at a time: while one batch waits
//! for its fsync the next one fills up, so batches grow with the load (as etcd batches the
//! proposals of one Raft `Ready`).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::engine::{Applied, Command};
use crate::mvcc::{Op, StoreError, Txn, TxnResponse};
use crate::raft::Raft;

/// Batches in flight at once: enough to keep the log busy while earlier batches apply.
const IN_FLIGHT: usize = 4;
/// Upper bounds for one batch.
const MAX_TXNS: usize = 1024;
const MAX_BYTES: usize = 4 * 1024 * 1024;

type Reply = oneshot::Sender<Result<TxnResponse, StoreError>>;

#[derive(Clone)]
pub struct Proposer {
    queue: mpsc::UnboundedSender<(Txn, Reply)>,
}

impl Proposer {
    pub fn start(raft: Raft, write_timeout: Duration) -> Proposer {
        let (queue, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(raft, rx, write_timeout));
        Proposer { queue }
    }

    /// Proposes `txn` (on the leader) and waits for its result.
    pub async fn propose(&self, txn: Txn) -> Result<TxnResponse, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.queue
            .send((txn, reply))
            .map_err(|_| StoreError::Unavailable("the store is shutting down".into()))?;
        rx.await.unwrap_or_else(|_| {
            Err(StoreError::Indeterminate(
                "the store stopped while the write was in flight".into(),
            ))
        })
    }
}

fn approx_size(txn: &Txn) -> usize {
    txn.success
        .iter()
        .chain(&txn.failure)
        .map(|op| match op {
            Op::Put { key, value } => key.len() + value.len(),
            _ => 64,
        })
        .sum::<usize>()
        + txn.compare.len() * 64
}

async fn run(raft: Raft, mut rx: mpsc::UnboundedReceiver<(Txn, Reply)>, write_timeout: Duration) {
    let in_flight = Arc::new(Semaphore::new(IN_FLIGHT));
    while let Some(first) = rx.recv().await {
        // Wait for a slot first: what arrives meanwhile joins this batch.
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let mut bytes = approx_size(&first.0);
        let mut batch = vec![first];
        while batch.len() < MAX_TXNS && bytes < MAX_BYTES {
            match rx.try_recv() {
                Ok(next) => {
                    bytes += approx_size(&next.0);
                    batch.push(next);
                }
                Err(_) => break,
            }
        }
        let (mut txns, replies): (Vec<Txn>, Vec<Reply>) = batch.into_iter().unzip();
        let command = if txns.len() == 1 {
            Command::Txn(txns.pop().expect("one txn"))
        } else {
            Command::Batch(txns)
        };
        let pending = match raft.client_write_ff(command).await {
            Ok(pending) => pending,
            Err(fatal) => {
                // Never handed to Raft: safe to retry elsewhere.
                for reply in replies {
                    let _ = reply.send(Err(StoreError::Unavailable(format!("raft: {fatal}"))));
                }
                continue;
            }
        };
        tokio::spawn(async move {
            let results: Vec<Result<TxnResponse, StoreError>> =
                match tokio::time::timeout(write_timeout, pending).await {
                    Ok(Ok(Ok(resp))) => match resp.data {
                        Applied::Txn(r) => vec![Ok(r)],
                        Applied::Batch(rs) => rs.into_iter().map(Ok).collect(),
                        Applied::Refused(e) => vec![Err(e); replies.len()],
                        other => {
                            vec![
                                Err(StoreError::Internal(format!("unexpected result {other:?}")));
                                replies.len()
                            ]
                        }
                    },
                    // Leadership moved after the batch was proposed: it may still commit under
                    // the next leader, so the outcome is unknown and it must not be resent.
                    Ok(Ok(Err(e))) => vec![
                        Err(StoreError::Indeterminate(format!(
                            "leadership changed while the write was in flight: {e}"
                        )));
                        replies.len()
                    ],
                    Ok(Err(_)) => vec![
                        Err(StoreError::Indeterminate(
                            "raft stopped while the write was in flight".into()
                        ));
                        replies.len()
                    ],
                    Err(_) => vec![
                        Err(StoreError::Indeterminate(format!(
                            "not committed within {write_timeout:?}"
                        )));
                        replies.len()
                    ],
                };
            for (reply, result) in replies.into_iter().zip(results) {
                let _ = reply.send(result);
            }
            drop(permit);
        });
    }
}
