//! The Knative Pod Autoscaler (KPA), on the measurements of the nodes' function routers: every
//! router counts each revision's requests in flight (queued ones included) and keeps a
//! time-weighted average of that concurrency, and the number of requests, for each second;
//! the API server gathers them from every node (`/drover/v1/function-stats`), so the
//! autoscaler sees traffic of the second just past, with no scraping lag and no sidecar.
//!
//! The decision ([`decide`]) is Knative's: a stable window (60 s; `autoscaling.knative.dev/
//! window`) and a panic window (10 % of it; `panic-window-percentage`); the desired count is
//! the observed concurrency (or requests per second) over `target` × `target-utilization-
//! percentage`; a panic window needing twice the ready instances enters panic mode, which
//! only scales up until the stable window has passed without such a need; scale-down halves
//! at most; `min-scale`/`max-scale` bound it; zero only after the stable window saw no request
//! and the grace period (`--scale-to-zero-grace-period`, default 30 s, or the revision's
//! `scale-to-zero-pod-retention-period` if longer) has passed since the last one.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use api::knative::{self, labels, Revision};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Patch, PatchParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, ResourceExt};
use serde::Deserialize;
use serde_json::json;

/// How often the autoscaler decides (Knative's tick is 2 s).
pub const TICK: Duration = Duration::from_millis(500);

/// What a revision's annotations and the cluster ask of its scaling.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// `concurrency` or `rps`.
    pub metric: Metric,
    /// Per instance, before utilization.
    pub target: f64,
    /// Fraction of the target to aim for (0.7: Knative's 70 %).
    pub utilization: f64,
    pub stable_window: f64,
    pub panic_window: f64,
    /// Panic when the panic window needs this many times the ready instances (2.0).
    pub panic_threshold: f64,
    pub min_scale: i32,
    /// 0: no bound.
    pub max_scale: i32,
    /// Seconds without any request before the last instance goes.
    pub scale_to_zero_after: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    Concurrency,
    Rps,
}

impl Settings {
    /// A revision's settings from its annotations, with the cluster's grace period.
    pub fn of(rev: &Revision, grace: Duration) -> Settings {
        let a = rev.annotations();
        let get = |k: &str| a.get(&format!("autoscaling.knative.dev/{k}"));
        let number = |k: &str| get(k).and_then(|v| v.parse::<f64>().ok());
        let metric = match get("metric").map(String::as_str) {
            Some("rps") => Metric::Rps,
            _ => Metric::Concurrency,
        };
        let cc = rev.spec.container_concurrency.unwrap_or(0);
        let target = number("target").unwrap_or(match metric {
            Metric::Rps => 200.0,
            Metric::Concurrency if cc > 0 => cc as f64,
            Metric::Concurrency => 100.0,
        });
        let stable_window = get("window")
            .and_then(|w| knative::duration(w))
            .unwrap_or(60.0);
        let panic_pct = number("panic-window-percentage").unwrap_or(10.0);
        let retention = get("scale-to-zero-pod-retention-period")
            .and_then(|w| knative::duration(w))
            .unwrap_or(0.0);
        let int = |keys: [&str; 2]| {
            keys.iter()
                .find_map(|k| get(k))
                .and_then(|v| v.parse::<i32>().ok())
                .unwrap_or(0)
        };
        Settings {
            metric,
            target,
            utilization: number("target-utilization-percentage").unwrap_or(70.0) / 100.0,
            stable_window,
            panic_window: (stable_window * panic_pct / 100.0).max(1.0),
            panic_threshold: number("panic-threshold-percentage").unwrap_or(200.0) / 100.0,
            min_scale: int(["min-scale", "minScale"]),
            max_scale: int(["max-scale", "maxScale"]),
            scale_to_zero_after: grace.as_secs_f64().max(retention),
        }
    }
}

/// One revision's traffic, summed over every router.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Stats {
    /// Requests in flight or queued now.
    #[serde(default)]
    pub inflight: f64,
    /// Per whole second (unix time): the average concurrency and the requests that arrived.
    #[serde(default)]
    pub seconds: Vec<(u64, f64, f64)>,
}

impl Stats {
    /// The average concurrency or rate over the `window` seconds before `now` (seconds without
    /// a sample had no traffic).
    fn average(&self, metric: Metric, now: u64, window: f64) -> f64 {
        let from = now.saturating_sub(window.ceil() as u64);
        let sum: f64 = self
            .seconds
            .iter()
            .filter(|(t, _, _)| *t >= from && *t < now)
            .map(|(_, c, r)| match metric {
                Metric::Concurrency => *c,
                Metric::Rps => *r,
            })
            .sum();
        sum / window.ceil().max(1.0)
    }

    /// The last second with any traffic.
    fn last_active(&self) -> Option<u64> {
        self.seconds
            .iter()
            .filter(|(_, c, r)| *c > 0.0 || *r > 0.0)
            .map(|(t, _, _)| *t)
            .max()
    }
}

/// What the autoscaler remembers of a revision between ticks.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Memory {
    /// Since when it panics (unix seconds).
    pub panic_since: Option<f64>,
    /// The highest count decided while panicking (never scaled below in panic).
    pub panic_scale: i32,
    /// When traffic was last seen (unix seconds, fractional).
    pub last_active: Option<f64>,
}

/// The instance count a revision should have now (`now` in unix seconds).
pub fn decide(
    s: &Settings,
    stats: &Stats,
    ready: i32,
    current: i32,
    memory: &mut Memory,
    now: f64,
) -> i32 {
    let second = now.floor() as u64;
    let per_instance = (s.target * s.utilization).max(0.01);
    let mut stable = stats.average(s.metric, second, s.stable_window);
    let mut panic = stats.average(s.metric, second, s.panic_window);
    // What is in flight now (queued requests at a function scaled to zero among them) counts
    // at once: it is the panic window's newest sample.
    if s.metric == Metric::Concurrency {
        panic = panic.max(stats.inflight);
        stable = stable.max(stats.inflight / s.stable_window.max(1.0));
    }
    if stats.inflight > 0.0 {
        memory.last_active = Some(now);
    } else if let Some(t) = stats.last_active() {
        let end = (t + 1) as f64;
        memory.last_active = Some(memory.last_active.map_or(end, |m| m.max(end)));
    }
    // Saturating: measurements are bounded where they are gathered, the count here too.
    let want_stable = (stable / per_instance).ceil().min(f64::from(i32::MAX)) as i32;
    let want_panic = (panic / per_instance).ceil().min(f64::from(i32::MAX)) as i32;
    let ready_f = f64::from(ready.max(1));
    if f64::from(want_panic) / ready_f >= s.panic_threshold && want_panic > ready {
        // Each tick over the threshold extends the panic by a stable window (Knative's).
        memory.panic_since = Some(now);
    } else if memory
        .panic_since
        .is_some_and(|since| now - since >= s.stable_window)
    {
        memory.panic_since = None;
        memory.panic_scale = 0;
    }
    let mut want = if memory.panic_since.is_some() {
        let w = want_panic.max(memory.panic_scale).max(current);
        memory.panic_scale = w;
        w
    } else {
        // Scale-down halves at most per decision (Knative's max-scale-down-rate 2).
        want_stable.max(current / 2)
    };
    if want == 0 && current > 0 {
        let idle_for = memory.last_active.map_or(f64::INFINITY, |t| now - t);
        if idle_for < s.stable_window.max(s.scale_to_zero_after) {
            want = 1;
        }
    }
    if want == 0 && stats.inflight > 0.0 {
        want = 1;
    }
    if s.max_scale > 0 {
        want = want.min(s.max_scale);
    }
    want.max(s.min_scale)
}

/// The revisions' traffic as the API server gathers it from the nodes.
#[derive(Debug, Default, Deserialize)]
pub struct AllStats {
    #[serde(default)]
    pub revisions: HashMap<String, Stats>,
}

pub struct Context {
    pub client: kube::Client,
    pub revisions: Store<Revision>,
    /// Which revisions routes reach (min-scale holds for these only).
    pub routes: Store<api::knative::Route>,
    pub deployments: Store<Deployment>,
    pub pods: Store<Pod>,
    pub grace: Duration,
}

async fn fetch(client: &kube::Client) -> Result<AllStats, kube::Error> {
    let req = http::Request::get("/drover/v1/function-stats")
        .body(Vec::new())
        .expect("a valid request");
    client.request(req).await
}

/// Decides for every KPA-class revision each [`TICK`] and writes the counts that change, on
/// the Deployment's `/scale`.
pub async fn run(ctx: Arc<Context>) {
    let mut memory: BTreeMap<String, Memory> = BTreeMap::new();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let stats = match fetch(&ctx.client).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("knative autoscaler: reading the routers' stats: {e}");
                continue;
            }
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        let revisions = ctx.revisions.state();
        memory.retain(|k, _| revisions.iter().any(|r| key(r) == *k));
        // Ready pods per revision, counted once a tick.
        let mut ready_pods: BTreeMap<String, i32> = BTreeMap::new();
        for p in ctx.pods.state() {
            if let (Some(ns), Some(rev)) = (p.namespace(), p.labels().get(labels::REVISION)) {
                if super::pod_ready(&p) {
                    *ready_pods.entry(format!("{ns}/{rev}")).or_default() += 1;
                }
            }
        }
        // Revisions some route sends traffic to, or names by a tag: min-scale holds for these
        // only (Knative's routingState active), so a revision no route reaches can go to zero.
        let routed: std::collections::BTreeSet<String> = ctx
            .routes
            .state()
            .iter()
            .flat_map(|r| {
                let ns = r.namespace().unwrap_or_default();
                r.status
                    .traffic
                    .iter()
                    .filter_map(move |t| Some(format!("{ns}/{}", t.revision_name.as_ref()?)))
                    .collect::<Vec<_>>()
            })
            .collect();
        for rev in revisions {
            if rev.metadata.deletion_timestamp.is_some()
                || rev
                    .annotations()
                    .get("autoscaling.knative.dev/class")
                    .is_some_and(|c| c != "kpa.autoscaling.knative.dev")
            {
                continue;
            }
            let ns = rev.namespace().unwrap_or_default();
            let name = format!("{}-deployment", rev.name_any());
            let Some(deployment) = ctx.deployments.get(&ObjectRef::new(&name).within(&ns)) else {
                continue;
            };
            let current = deployment
                .spec
                .as_ref()
                .and_then(|s| s.replicas)
                .unwrap_or(1);
            let k = key(&rev);
            let ready = ready_pods.get(&k).copied().unwrap_or(0);
            let mut settings = Settings::of(&rev, ctx.grace);
            // A revision not yet Ready is not unreachable but pending (a route following the
            // latest revision moves to it once it is): its min-scale holds.
            if !routed.contains(&k) && super::ready_once(&rev) {
                settings.min_scale = 0;
            }
            let rev_stats = stats.revisions.get(&k).cloned().unwrap_or_default();
            let mem = memory.entry(k.clone()).or_insert_with(|| Memory {
                // A revision first seen counts as just active: it is not scaled to zero before
                // its first grace period has passed.
                last_active: Some(now),
                ..Memory::default()
            });
            let mut want = decide(&settings, &rev_stats, ready, current, mem, now);
            // A revision that has not yet been Ready keeps its initial scale: scaled to zero
            // while its image is still being pulled, nothing would ever start it again.
            if !super::ready_once(&rev) {
                want = want.max(super::initial_scale(&rev));
            }
            if want != current {
                tracing::info!(revision = %k, from = current, to = want, "knative autoscaler: scaling");
                let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
                if let Err(e) = api
                    .patch_scale(
                        &name,
                        &PatchParams::default(),
                        &Patch::Merge(json!({"spec": {"replicas": want}})),
                    )
                    .await
                {
                    tracing::warn!("knative autoscaler: scaling {k}: {e}");
                }
            }
        }
    }
}

fn key(rev: &Revision) -> String {
    format!("{}/{}", rev.namespace().unwrap_or_default(), rev.name_any())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            metric: Metric::Concurrency,
            target: 10.0,
            utilization: 1.0,
            stable_window: 60.0,
            panic_window: 6.0,
            panic_threshold: 2.0,
            min_scale: 0,
            max_scale: 0,
            scale_to_zero_after: 30.0,
        }
    }

    /// `n` seconds up to `now` at concurrency `c`.
    fn trace(now: u64, n: u64, c: f64) -> Stats {
        Stats {
            inflight: c,
            seconds: (now - n..now).map(|t| (t, c, c)).collect(),
        }
    }

    #[test]
    fn steady_load_gets_load_over_target() {
        let mut m = Memory::default();
        assert_eq!(
            decide(&settings(), &trace(1000, 60, 35.0), 4, 4, &mut m, 1000.0),
            4
        );
        assert_eq!(m.panic_since, None);
    }

    #[test]
    fn a_burst_panics_at_once_and_never_scales_down_while_panicking() {
        let mut m = Memory::default();
        // 10 concurrent for a minute, then 500 for the last 2 seconds.
        let mut s = trace(1000, 60, 10.0);
        s.seconds.retain(|(t, _, _)| *t < 998);
        s.seconds.extend([(998, 500.0, 500.0), (999, 500.0, 500.0)]);
        s.inflight = 500.0;
        assert_eq!(decide(&settings(), &s, 1, 1, &mut m, 1000.0), 50);
        assert_eq!(m.panic_since, Some(1000.0));
        // The load drops: still 50 while panicking.
        let quiet = trace(1010, 60, 10.0);
        assert_eq!(decide(&settings(), &quiet, 50, 50, &mut m, 1010.0), 50);
        // A stable window later panic ends and scale-down halves at most.
        assert_eq!(decide(&settings(), &quiet, 50, 50, &mut m, 1061.0), 25);
        assert_eq!(m.panic_since, None);
    }

    #[test]
    fn zero_only_after_a_quiet_window_and_the_grace_period() {
        let mut s = settings();
        s.stable_window = 6.0;
        s.panic_window = 1.0;
        let mut m = Memory::default();
        // The last request was in second 1000.
        let stats = Stats {
            inflight: 0.0,
            seconds: vec![(1000, 1.0, 1.0)],
        };
        assert_eq!(decide(&s, &stats, 1, 1, &mut m, 1001.5), 1);
        assert_eq!(
            decide(&s, &stats, 1, 1, &mut m, 1020.0),
            1,
            "within the grace period"
        );
        assert_eq!(decide(&s, &stats, 1, 1, &mut m, 1031.5), 0);
        // A request queued at a router wakes it.
        let waiting = Stats {
            inflight: 1.0,
            seconds: vec![],
        };
        assert_eq!(decide(&s, &waiting, 0, 0, &mut m, 1100.0), 1);
    }

    #[test]
    fn bounds_and_annotations() {
        let rev: Revision =
            serde_json::from_value(json!({"metadata": {"name": "r", "annotations": {
            "autoscaling.knative.dev/min-scale": "2", "autoscaling.knative.dev/max-scale": "3",
            "autoscaling.knative.dev/window": "10s", "autoscaling.knative.dev/target": "5"}},
            "spec": {"containerConcurrency": 1, "containers": []}}))
            .unwrap();
        let s = Settings::of(&rev, Duration::from_secs(30));
        assert_eq!(
            (
                s.target,
                s.stable_window,
                s.panic_window,
                s.min_scale,
                s.max_scale
            ),
            (5.0, 10.0, 1.0, 2, 3)
        );
        let mut m = Memory::default();
        assert_eq!(decide(&s, &Stats::default(), 0, 0, &mut m, 1000.0), 2);
        assert_eq!(decide(&s, &trace(1000, 10, 100.0), 3, 3, &mut m, 1000.0), 3);
        let cc: Revision = serde_json::from_value(json!({"metadata": {"name": "r"},
            "spec": {"containerConcurrency": 4, "containers": []}}))
        .unwrap();
        assert_eq!(Settings::of(&cc, Duration::from_secs(30)).target, 4.0);
    }
}
