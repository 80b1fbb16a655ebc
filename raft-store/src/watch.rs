//! Watches: ordered, gap-free change streams that never hold up a writer.
//!
//! Each watcher is a task that *pulls*: it remembers the next revision it owes its consumer,
//! wakes when the engine's head moves (a `tokio::sync::watch`, which the writer updates without
//! waiting for anybody), and reads the changes from the engine's change index. Writers therefore
//! never block on watchers, and watchers never block each other. What a watcher has read but
//! its consumer has not taken sits in a bounded channel; a consumer that leaves it full for
//! longer than the grace period is cut off with [`StoreError::WatcherTooSlow`] naming the
//! revision to resume from. One slot of the channel is always kept free for that error.

use std::time::Duration;

use tokio::sync::mpsc;

use crate::engine::Engine;
use crate::mvcc::{KeySpan, Revision, StoreError, WatchBatch};

/// How a watch behaves; the defaults suit an API server's watch cache.
#[derive(Clone, Debug)]
pub struct WatchOptions {
    /// Batches buffered for a slow consumer.
    pub buffer: usize,
    /// How long a full buffer is tolerated before the watcher is cut off.
    pub slow_grace: Duration,
    /// An idle watcher reports progress this often (a batch with no events).
    pub progress_every: Duration,
    /// Revisions read from the engine per batch.
    pub revisions_per_batch: u64,
}

impl Default for WatchOptions {
    fn default() -> Self {
        WatchOptions {
            buffer: 256,
            slow_grace: Duration::from_secs(5),
            progress_every: Duration::from_secs(5),
            revisions_per_batch: 512,
        }
    }
}

/// The consumer side of a watch. Dropping it stops the watcher task.
pub struct Watcher {
    rx: mpsc::Receiver<Result<WatchBatch, StoreError>>,
}

impl Watcher {
    /// The next batch; `None` once the watch has ended (after an error was delivered, or when
    /// the store shut down).
    pub async fn next(&mut self) -> Option<Result<WatchBatch, StoreError>> {
        self.rx.recv().await
    }
}

/// Starts watching `span` from revision `from` (0: from the next write on).
pub fn spawn(engine: Engine, span: KeySpan, from: Revision, opts: WatchOptions) -> Watcher {
    let (tx, rx) = mpsc::channel(opts.buffer.max(2));
    tokio::spawn(run(engine, span, from, opts, tx));
    Watcher { rx }
}

enum Sent {
    Ok,
    Closed,
    CutOff,
}

/// Sends a batch if two slots are free within the grace period, keeping the last for an error.
async fn send(
    tx: &mpsc::Sender<Result<WatchBatch, StoreError>>,
    batch: WatchBatch,
    resume_from: Revision,
    grace: Duration,
) -> Sent {
    match tokio::time::timeout(grace, tx.reserve_many(2)).await {
        Ok(Ok(mut permits)) => {
            if let Some(p) = permits.next() {
                p.send(Ok(batch));
            }
            Sent::Ok
        }
        Ok(Err(_)) => Sent::Closed,
        Err(_) => {
            let _ = tx.try_send(Err(StoreError::WatcherTooSlow { resume_from }));
            Sent::CutOff
        }
    }
}

async fn run(
    engine: Engine,
    span: KeySpan,
    from: Revision,
    opts: WatchOptions,
    tx: mpsc::Sender<Result<WatchBatch, StoreError>>,
) {
    let mut heads = engine.subscribe();
    let mut next = if from == 0 {
        engine.head().revision + 1
    } else {
        from
    };
    loop {
        let head = *heads.borrow_and_update();
        if next <= head.revision {
            let (e, s, n, per) = (engine.clone(), span.clone(), next, opts.revisions_per_batch);
            let read = tokio::task::spawn_blocking(move || e.changes_since(&s, n, per)).await;
            let batch = match read {
                Ok(Ok(batch)) => batch,
                Ok(Err(err)) => {
                    let _ = tx.send(Err(err)).await;
                    return;
                }
                Err(join) => {
                    let _ = tx.send(Err(StoreError::Internal(join.to_string()))).await;
                    return;
                }
            };
            let resume_from = next;
            next = batch.revision + 1;
            if !batch.events.is_empty() {
                match send(&tx, batch, resume_from, opts.slow_grace).await {
                    Sent::Ok => {}
                    Sent::Closed | Sent::CutOff => return,
                }
            }
            continue;
        }
        tokio::select! {
            changed = heads.changed() => {
                if changed.is_err() {
                    return; // the engine is gone: the store is shutting down
                }
            }
            _ = tokio::time::sleep(opts.progress_every) => {
                let progress = WatchBatch { events: Vec::new(), revision: next - 1 };
                if let Sent::Closed | Sent::CutOff = send(&tx, progress, next, opts.slow_grace).await {
                    return;
                }
            }
            _ = tx.closed() => return,
        }
    }
}
