//! A revision's traffic as this router sees it: requests in flight (queued ones included),
//! their time-weighted average per whole second, requests per second, and cold starts. The
//! autoscaler reads every router's meters through the API server (`/functions/stats`).

use std::collections::VecDeque;

use serde_json::{json, Value};

/// Seconds of history kept (the longest stable window Knative allows is an hour; 10 minutes
/// covers every window its users set in practice, and a longer one sees zeros before).
const HISTORY: usize = 600;

/// Cold-start buckets of `drover_function_cold_start_seconds`, in seconds.
pub const COLD_START_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

#[derive(Debug, Default)]
pub struct Meter {
    inflight: u32,
    /// When `inflight` last changed (unix seconds).
    last: f64,
    /// The whole second being measured, and its concurrency × time and arrivals so far.
    second: u64,
    area: f64,
    arrivals: u32,
    /// Finished seconds: (second, average concurrency, requests).
    history: VecDeque<(u64, f64, f64)>,
    /// Cold starts: count per bucket (the last is +Inf), their sum and count.
    cold_buckets: [u64; COLD_START_BUCKETS.len() + 1],
    cold_sum: f64,
    cold_count: u64,
    /// Cold starts answered by an in-process instance.
    cold_in_process: u64,
}

impl Meter {
    /// Moves the meter to `now`, closing the seconds that ended.
    fn advance(&mut self, now: f64) {
        if self.last == 0.0 {
            self.last = now;
            self.second = now.floor() as u64;
        }
        let now = now.max(self.last);
        let current = now.floor() as u64;
        while self.second < current {
            let end = (self.second + 1) as f64;
            self.area += f64::from(self.inflight) * (end - self.last).max(0.0);
            self.last = end;
            if self.area > 0.0 || self.arrivals > 0 {
                self.history
                    .push_back((self.second, self.area, f64::from(self.arrivals)));
                if self.history.len() > HISTORY {
                    self.history.pop_front();
                }
            }
            self.area = 0.0;
            self.arrivals = 0;
            self.second += 1;
            // A long idle gap: skip to the present at once.
            if self.inflight == 0 && self.second < current {
                self.second = current;
                self.last = current as f64;
            }
        }
        self.area += f64::from(self.inflight) * (now - self.last);
        self.last = now;
    }

    /// A request arrived (it is in flight until [`Meter::finished`]).
    pub fn arrived(&mut self, now: f64) {
        self.advance(now);
        self.inflight += 1;
        self.arrivals += 1;
    }

    pub fn finished(&mut self, now: f64) {
        self.advance(now);
        self.inflight = self.inflight.saturating_sub(1);
    }

    /// A request waited `seconds` for its revision to start from zero.
    pub fn cold_start(&mut self, seconds: f64, in_process: bool) {
        self.cold_in_process += u64::from(in_process);
        let i = COLD_START_BUCKETS
            .iter()
            .position(|b| seconds <= *b)
            .unwrap_or(COLD_START_BUCKETS.len());
        self.cold_buckets[i] += 1;
        self.cold_sum += seconds;
        self.cold_count += 1;
    }

    /// The report: in flight now, finished seconds, cold starts (cumulative, Prometheus'
    /// histogram form).
    pub fn report(&mut self, now: f64) -> Value {
        self.advance(now);
        let mut seconds: Vec<Value> = self
            .history
            .iter()
            .map(|(t, c, r)| json!([t, c, r]))
            .collect();
        // The second under way, as far as it has gone: the autoscaler averages only whole
        // seconds, but must know a function was asked just now (a request answered in a few
        // milliseconds after a wake leaves nothing in flight, and the function at its scale
        // of one would look idle until the second ends).
        let area = self.area + f64::from(self.inflight) * (now - self.last).max(0.0);
        if area > 0.0 || self.arrivals > 0 {
            seconds.push(json!([self.second, area, self.arrivals]));
        }
        let mut cumulative = 0;
        let buckets: Vec<Value> = COLD_START_BUCKETS
            .iter()
            .map(|b| b.to_string())
            .chain(std::iter::once("+Inf".to_string()))
            .zip(self.cold_buckets)
            .map(|(le, n)| {
                cumulative += n;
                json!([le, cumulative])
            })
            .collect();
        json!({"inflight": self.inflight, "seconds": seconds,
            "coldStarts": {"count": self.cold_count, "sum": self.cold_sum, "buckets": buckets,
                "inProcess": self.cold_in_process}})
    }

    pub fn inflight(&self) -> u32 {
        self.inflight
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrency_is_averaged_over_each_second_by_time() {
        let mut m = Meter::default();
        m.arrived(100.0);
        m.arrived(100.5);
        m.finished(101.0);
        // Second 100: one for the whole second, another for half: 1.5.
        m.finished(101.25);
        let r = m.report(102.5);
        assert_eq!(r["seconds"], json!([[100, 1.5, 2.0], [101, 0.25, 0.0]]));
        assert_eq!(r["inflight"], 0);
        // An idle stretch adds no seconds.
        m.arrived(200.0);
        let r = m.report(201.0);
        assert_eq!(
            r["seconds"].as_array().unwrap().last().unwrap(),
            &json!([200, 1.0, 1.0])
        );
        assert_eq!(r["seconds"].as_array().unwrap().len(), 3);
        // A request come and gone within the second under way shows at once.
        m.finished(201.0);
        m.arrived(300.25);
        m.finished(300.5);
        let r = m.report(300.75);
        assert_eq!(
            r["seconds"].as_array().unwrap().last().unwrap(),
            &json!([300, 0.25, 1])
        );
    }

    #[test]
    fn cold_starts_fill_a_cumulative_histogram() {
        let mut m = Meter::default();
        m.cold_start(0.004, true);
        m.cold_start(0.03, false);
        m.cold_start(20.0, false);
        let r = m.report(1.0);
        assert_eq!(r["coldStarts"]["count"], 3);
        assert_eq!(r["coldStarts"]["inProcess"], 1);
        let buckets = r["coldStarts"]["buckets"].as_array().unwrap();
        assert_eq!(buckets[2], json!(["0.005", 1]));
        assert_eq!(buckets[5], json!(["0.05", 2]));
        assert_eq!(buckets[12], json!(["+Inf", 3]));
    }
}
