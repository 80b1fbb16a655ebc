//! What a container uses, as the node reports it for `kubectl top` and autoscaling: CPU time,
//! memory, and requests served (HTTP functions).
//!
//! A Wasm instance has no process whose CPU time the kernel counts, so the time is measured
//! where the guest runs: each poll of an instance's future runs guest code synchronously until
//! it yields (at the latest at the next epoch tick) or waits for I/O, so the time spent inside
//! the polls is the instance's CPU time.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

#[derive(Debug, Default)]
pub struct Usage {
    cpu_nanos: AtomicU64,
    memory_bytes: AtomicU64,
    requests: AtomicU64,
}

/// A reading of [`Usage`]'s counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sample {
    pub cpu_nanos: u64,
    pub memory_bytes: u64,
    pub requests: u64,
}

impl Usage {
    pub fn sample(&self) -> Sample {
        Sample {
            cpu_nanos: self.cpu_nanos.load(Ordering::Relaxed),
            memory_bytes: self.memory_bytes.load(Ordering::Relaxed),
            requests: self.requests.load(Ordering::Relaxed),
        }
    }

    pub fn add_cpu(&self, nanos: u64) {
        self.cpu_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    pub fn request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// The linear memory an instance grew to (the latest instance's, for HTTP functions).
    pub fn set_memory(&self, bytes: u64) {
        self.memory_bytes.store(bytes, Ordering::Relaxed);
    }
}

/// A future whose polls are counted as CPU time of `usage`.
pub struct Metered<F> {
    inner: Pin<Box<F>>,
    usage: Arc<Usage>,
}

impl<F: Future> Metered<F> {
    pub fn new(inner: F, usage: Arc<Usage>) -> Self {
        Metered {
            inner: Box::pin(inner),
            usage,
        }
    }
}

impl<F: Future> Future for Metered<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let started = Instant::now();
        let out = self.inner.as_mut().poll(cx);
        self.usage.add_cpu(started.elapsed().as_nanos() as u64);
        out
    }
}

/// Rates between two samples taken `seconds` apart: (nanocores, requests per second).
pub fn rates(before: Sample, after: Sample, seconds: f64) -> (u64, f64) {
    if seconds <= 0.0 {
        return (0, 0.0);
    }
    let cpu = after.cpu_nanos.saturating_sub(before.cpu_nanos) as f64 / seconds;
    let rps = after.requests.saturating_sub(before.requests) as f64 / seconds;
    (cpu as u64, rps)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn busy_polls_count_and_waiting_does_not() {
        let usage = Arc::new(Usage::default());
        Metered::new(
            async {
                let t = Instant::now();
                while t.elapsed() < std::time::Duration::from_millis(30) {}
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            },
            usage.clone(),
        )
        .await;
        let cpu = usage.sample().cpu_nanos;
        assert!((30_000_000..90_000_000).contains(&cpu), "{cpu}");
    }

    #[test]
    fn rates_are_per_second() {
        let a = Sample {
            cpu_nanos: 0,
            memory_bytes: 0,
            requests: 10,
        };
        let b = Sample {
            cpu_nanos: 500_000_000,
            memory_bytes: 0,
            requests: 30,
        };
        assert_eq!(rates(a, b, 2.0), (250_000_000, 10.0));
    }
}
