//! The CronJob controller (batch/v1): starts a Job from `spec.jobTemplate` at each time of
//! `spec.schedule`, as Kubernetes does.
//!
//! - The schedule is standard cron (5 fields: ranges, steps, lists, month and weekday names),
//!   a macro (`@hourly`, `@daily`/`@midnight`, `@weekly`, `@monthly`, `@yearly`/`@annually`)
//!   or `@every <duration>`, read in `spec.timeZone` (IANA; UTC when unset — Kubernetes uses
//!   the controller manager's zone, which is UTC in most clusters).
//! - Each pass starts the most recent time missed since `status.lastScheduleTime` (or the
//!   creation), never older ones; a time older than `startingDeadlineSeconds` is skipped.
//!   `concurrencyPolicy`: Allow, Forbid (skip while a Job runs; the time stays due, so it
//!   starts when that Job ends if still within the deadline) or Replace (delete the running
//!   Jobs first). `suspend` starts nothing.
//! - The Job is named `<cronjob>-<scheduled time in minutes since the epoch>`, so a time is
//!   never started twice (an AlreadyExists answer means it was started).
//! - Finished Jobs beyond `successfulJobsHistoryLimit` (3) and `failedJobsHistoryLimit` (1) are
//!   deleted, oldest first; `status.active`, `lastScheduleTime`, `lastSuccessfulTime` kept.
//!
//! Schedules are parsed by `croner` (configured for 5 fields, and `N/step` meaning `N-max/step`
//! as robfig/cron, Kubernetes' parser, reads it); time zones come from `chrono-tz`.
//!
//! [`plan`] decides from the cache and the time alone; [`reconcile`] writes.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds, Year};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::Store;
use kube::{Api, ResourceExt};
use serde_json::{json, Value};

use crate::error::failed;
use crate::job;
use crate::requeue;
use api::pods::controller_ref;

pub use crate::error::Error;

/// The annotation on a started Job: its scheduled time, RFC 3339, in the CronJob's zone.
pub const SCHEDULED_TIMESTAMP: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";
/// Requeue at least this often, so a clock that jumps is noticed.
const MAX_SLEEP: Duration = Duration::from_secs(60);

/// A CronJob's schedule.
#[derive(Debug, Clone)]
pub enum Schedule {
    Cron(Box<croner::Cron>),
    /// `@every <duration>`: times `d` apart, counted from the last one.
    Every(TimeDelta),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("unparsable schedule {schedule:?}: {reason}")]
    Schedule { schedule: String, reason: String },
    #[error("unknown time zone {0:?}")]
    TimeZone(String),
}

fn zone(name: &str) -> Result<Tz, ScheduleError> {
    name.parse::<Tz>()
        .map_err(|_| ScheduleError::TimeZone(name.to_string()))
}

/// Parses a schedule, with the zone of a `TZ=`/`CRON_TZ=` prefix if it has one (validation
/// refuses those prefixes today; they are read rather than misread).
pub fn parse_schedule(text: &str) -> Result<(Schedule, Option<Tz>), ScheduleError> {
    let bad = |reason: &str| ScheduleError::Schedule {
        schedule: text.to_string(),
        reason: reason.to_string(),
    };
    let mut rest = text.trim();
    let mut tz = None;
    for prefix in ["CRON_TZ=", "TZ="] {
        if let Some(after) = rest.strip_prefix(prefix) {
            let (name, expr) = after
                .split_once(char::is_whitespace)
                .ok_or_else(|| bad("a time zone prefix needs a schedule after it"))?;
            tz = Some(zone(name)?);
            rest = expr.trim();
        }
    }
    let expr = if let Some(every) = rest.strip_prefix("@every") {
        let d =
            humantime::parse_duration(every.trim()).map_err(|e| bad(&format!("@every: {e}")))?;
        // As robfig/cron: whole seconds, at least one.
        let secs = d.as_secs().max(1);
        let secs = i64::try_from(secs).map_err(|_| bad("@every: too long"))?;
        return Ok((Schedule::Every(TimeDelta::seconds(secs)), tz));
    } else if rest.starts_with('@') {
        match rest.to_ascii_lowercase().as_str() {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            _ => return Err(bad("unknown macro")),
        }
    } else {
        rest
    };
    if expr.split_whitespace().count() != 5 {
        return Err(bad(
            "expected 5 fields (minute hour day-of-month month day-of-week)",
        ));
    }
    let cron = CronParser::builder()
        .seconds(Seconds::Disallowed)
        .year(Year::Disallowed)
        .sloppy_ranges(true)
        .build()
        .parse(expr)
        .map_err(|e| bad(&e.to_string()))?;
    Ok((Schedule::Cron(Box::new(cron)), tz))
}

/// Whole seconds (robfig/cron's times have none below).
fn whole_seconds(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp(t.timestamp(), 0).unwrap_or(t)
}

impl Schedule {
    /// The first time of the schedule strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
        match self {
            Schedule::Cron(c) => c
                .find_next_occurrence(&t.with_timezone(&tz), false)
                .ok()
                .map(|t| t.with_timezone(&Utc)),
            Schedule::Every(d) => whole_seconds(t).checked_add_signed(*d),
        }
    }

    /// The latest time of the schedule after `after` and at or before `now`, if any.
    pub fn latest_between(
        &self,
        after: DateTime<Utc>,
        now: DateTime<Utc>,
        tz: Tz,
    ) -> Option<DateTime<Utc>> {
        let latest = match self {
            Schedule::Cron(c) => c
                .find_previous_occurrence(&now.with_timezone(&tz), true)
                .ok()
                .map(|t| t.with_timezone(&Utc))?,
            // The times are after + d, after + 2d, ...
            Schedule::Every(d) => {
                let first = whole_seconds(after).checked_add_signed(*d)?;
                if first > now {
                    return None;
                }
                let steps = (now - first).num_seconds() / d.num_seconds().max(1);
                first.checked_add_signed(*d * i32::try_from(steps).ok()?)?
            }
        };
        (latest > after && latest <= now).then_some(latest)
    }
}

/// The name of the Job for the time `scheduled`.
pub fn job_name(cj: &CronJob, scheduled: DateTime<Utc>) -> String {
    format!("{}-{}", cj.name_any(), scheduled.timestamp().div_euclid(60))
}

/// The Job to start for the time `scheduled`: the jobTemplate's labels, annotations and spec.
pub fn job_for(cj: &CronJob, scheduled: DateTime<Utc>, tz: Tz) -> Job {
    let template = cj
        .spec
        .as_ref()
        .map(|s| s.job_template.clone())
        .unwrap_or_default();
    let meta = template.metadata.unwrap_or_default();
    let mut annotations = meta.annotations.unwrap_or_default();
    annotations.insert(
        SCHEDULED_TIMESTAMP.into(),
        scheduled
            .with_timezone(&tz)
            .to_rfc3339_opts(SecondsFormat::Secs, true),
    );
    Job {
        metadata: ObjectMeta {
            name: Some(job_name(cj, scheduled)),
            namespace: cj.namespace(),
            labels: meta.labels,
            annotations: Some(annotations),
            owner_references: Some(vec![controller_ref(cj)]),
            ..ObjectMeta::default()
        },
        spec: template.spec,
        status: None,
    }
}

fn reference(j: &Job) -> ObjectReference {
    ObjectReference {
        api_version: Some("batch/v1".into()),
        kind: Some("Job".into()),
        name: Some(j.name_any()),
        namespace: j.namespace(),
        uid: j.metadata.uid.clone(),
        ..ObjectReference::default()
    }
}

fn controlled_by(j: &Job, uid: &str) -> bool {
    !uid.is_empty()
        && j.owner_references()
            .iter()
            .any(|o| o.controller == Some(true) && o.uid == uid)
}

fn job_condition(j: &Job, type_: &str) -> bool {
    j.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == type_ && c.status == "True"))
}

/// A Job to start now.
#[derive(Debug, Clone, PartialEq)]
pub struct Start {
    pub scheduled: DateTime<Utc>,
    pub job: Job,
}

/// What the controller should do for one CronJob.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Plan {
    pub start: Option<Start>,
    /// Running Jobs to delete before the start (concurrencyPolicy Replace).
    pub replace: Vec<String>,
    /// Finished Jobs beyond the history limits, oldest first.
    pub delete: Vec<String>,
    /// status.active without the Job to start (its reference comes from the API's answer).
    pub active: Vec<ObjectReference>,
    /// status.lastScheduleTime without the Job to start.
    pub last_schedule: Option<DateTime<Utc>>,
    pub last_successful: Option<DateTime<Utc>>,
    /// Why a time that is due is not started, for the log.
    pub skipped: Option<String>,
    /// The next time of the schedule after now.
    pub next: Option<DateTime<Utc>>,
}

/// The plan for `cj` given the Jobs of its namespace (in the cache) and the time. An error
/// means the schedule or the time zone cannot be read: nothing is to be done.
pub fn plan(cj: &CronJob, jobs: &[Arc<Job>], now: DateTime<Utc>) -> Result<Plan, ScheduleError> {
    let uid = cj.metadata.uid.as_deref().unwrap_or_default();
    let spec = cj.spec.clone().unwrap_or_default();
    let status = cj.status.clone().unwrap_or_default();
    let (schedule, prefix_zone) = parse_schedule(&spec.schedule)?;
    let tz = match spec.time_zone.as_deref() {
        Some(name) => zone(name)?,
        None => prefix_zone.unwrap_or(Tz::UTC),
    };
    let mut out = Plan {
        last_schedule: status.last_schedule_time.as_ref().map(|t| t.0),
        next: schedule.next_after(now, tz),
        ..Plan::default()
    };

    let owned: Vec<&Job> = jobs
        .iter()
        .map(|j| &**j)
        .filter(|j| controlled_by(j, uid))
        .collect();
    let gone = |j: &Job| j.metadata.deletion_timestamp.is_some();
    let running: Vec<&Job> = owned
        .iter()
        .copied()
        .filter(|j| !job::is_finished(j) && !gone(j))
        .collect();

    // status.active: the references already there (in their order), then the others.
    let running_uids: BTreeSet<&str> = running
        .iter()
        .filter_map(|j| j.metadata.uid.as_deref())
        .collect();
    out.active = status
        .active
        .iter()
        .flatten()
        .filter(|r| r.uid.as_deref().is_some_and(|u| running_uids.contains(u)))
        .cloned()
        .collect();
    let mut others: Vec<&Job> = running
        .iter()
        .copied()
        .filter(|j| !out.active.iter().any(|r| r.uid == j.metadata.uid))
        .collect();
    others.sort_by_key(|j| (j.metadata.creation_timestamp.clone(), j.name_any()));
    out.active.extend(others.into_iter().map(reference));

    out.last_successful = owned
        .iter()
        .filter(|j| job_condition(j, "Complete"))
        .filter_map(|j| {
            let s = j.status.as_ref()?;
            s.completion_time
                .as_ref()
                .map(|t| t.0)
                .or_else(|| job::finished_at_time(s))
        })
        .chain(status.last_successful_time.as_ref().map(|t| t.0))
        .max();

    // History: the oldest finished Jobs beyond each limit.
    let age = |j: &&Job| {
        let started = j.status.as_ref().and_then(|s| s.start_time.clone());
        (
            started.or(j.metadata.creation_timestamp.clone()),
            j.name_any(),
        )
    };
    for (type_, limit) in [
        ("Complete", spec.successful_jobs_history_limit.unwrap_or(3)),
        ("Failed", spec.failed_jobs_history_limit.unwrap_or(1)),
    ] {
        let mut finished: Vec<&Job> = owned
            .iter()
            .copied()
            .filter(|j| job_condition(j, type_) && !gone(j))
            .collect();
        finished.sort_by_key(age);
        let extra = finished.len().saturating_sub(limit.max(0) as usize);
        out.delete
            .extend(finished[..extra].iter().map(|j| j.name_any()));
    }

    if spec.suspend == Some(true) {
        return Ok(out);
    }
    // The most recent time missed since the last start (or the creation); older misses are
    // dropped, as Kubernetes drops them.
    let since = out
        .last_schedule
        .or(cj.metadata.creation_timestamp.as_ref().map(|t| t.0))
        .unwrap_or(now);
    let Some(scheduled) = schedule.latest_between(since, now, tz) else {
        return Ok(out);
    };
    if let Some(deadline) = spec.starting_deadline_seconds {
        let latest_start =
            TimeDelta::try_seconds(deadline.max(0)).and_then(|d| scheduled.checked_add_signed(d));
        if latest_start.is_some_and(|t| t < now) {
            out.skipped = Some(format!(
                "missed the starting deadline ({deadline}s) of {}",
                scheduled.to_rfc3339()
            ));
            return Ok(out);
        }
    }
    let name = job_name(cj, scheduled);
    if owned.iter().any(|j| j.name_any() == name) {
        // Started already; the status did not say so yet.
        out.last_schedule = out.last_schedule.max(Some(scheduled));
        return Ok(out);
    }
    match spec.concurrency_policy.as_deref() {
        Some("Forbid") if !running.is_empty() => {
            out.skipped = Some(format!(
                "{} is still running and concurrencyPolicy is Forbid",
                running[0].name_any()
            ));
            return Ok(out);
        }
        Some("Replace") => {
            out.replace = running.iter().map(|j| j.name_any()).collect();
            out.active.clear();
        }
        _ => {}
    }
    out.start = Some(Start {
        scheduled,
        job: job_for(cj, scheduled, tz),
    });
    Ok(out)
}

pub struct Context {
    pub client: kube::Client,
    pub jobs: Store<Job>,
}

/// Carries out the plan for one CronJob.
pub async fn reconcile(cj: Arc<CronJob>, ctx: Arc<Context>) -> Result<Action, Error> {
    if cj.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = cj.namespace().unwrap_or_else(|| "default".into());
    let name = cj.name_any();
    let uid = cj.metadata.uid.clone().unwrap_or_default();
    let api: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    let mut jobs: Vec<Arc<Job>> = ctx
        .jobs
        .state()
        .into_iter()
        .filter(|j| j.namespace().as_deref() == Some(ns.as_str()) && controlled_by(j, &uid))
        .collect();
    // The status may name Jobs the cache does not hold: just started (the cache lags) or
    // gone. The API says which, so a Forbid policy is not fooled by a slow cache.
    let listed: Vec<String> = cj
        .status
        .iter()
        .flat_map(|s| s.active.iter().flatten())
        .filter_map(|r| r.name.clone())
        .collect();
    for job_name in listed {
        if jobs.iter().any(|j| j.name_any() == job_name) {
            continue;
        }
        let live = api.get_opt(&job_name).await.map_err(failed(format!(
            "cronjob {ns}/{name}: reading job {job_name}"
        )))?;
        if let Some(j) = live.filter(|j| controlled_by(j, &uid)) {
            jobs.push(Arc::new(j));
        }
    }

    let now = Utc::now();
    let plan = match plan(&cj, &jobs, now) {
        Ok(plan) => plan,
        Err(e) => {
            // Validation refuses most bad schedules; one that slips through is left alone
            // until it is changed.
            tracing::warn!("cronjob {ns}/{name}: {e}; not scheduling it");
            return Ok(Action::await_change());
        }
    };
    if let Some(why) = &plan.skipped {
        tracing::debug!("cronjob {ns}/{name}: not starting a job: {why}");
    }

    for job_name in &plan.replace {
        match api.delete(job_name, &DeleteParams::background()).await {
            Ok(_) => tracing::info!("cronjob {ns}/{name}: deleted {job_name} to replace it"),
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => {
                return Err(failed(format!(
                    "cronjob {ns}/{name}: replacing job {job_name}"
                ))(e))
            }
        }
    }
    let mut active = plan.active.clone();
    let mut last_schedule = plan.last_schedule;
    if let Some(start) = &plan.start {
        let job_name = start.job.name_any();
        let started = match api.create(&PostParams::default(), &start.job).await {
            Ok(j) => {
                tracing::info!("cronjob {ns}/{name}: started job {job_name}");
                Some(j)
            }
            // Started before (by an earlier pass whose status write the cache has not
            // shown); only ours counts, a Job of the same name made by someone else is theirs.
            Err(kube::Error::Api(e)) if e.code == 409 => api
                .get_opt(&job_name)
                .await
                .map_err(failed(format!(
                    "cronjob {ns}/{name}: reading job {job_name}"
                )))?
                .filter(|j| controlled_by(j, &uid)),
            Err(e) => {
                return Err(failed(format!(
                    "cronjob {ns}/{name}: creating job {job_name}"
                ))(e))
            }
        };
        if let Some(j) = started {
            if !active.iter().any(|r| r.uid == j.metadata.uid) && !job::is_finished(&j) {
                active.push(reference(&j));
            }
            last_schedule = last_schedule.max(Some(start.scheduled));
        }
    }
    for job_name in &plan.delete {
        match api.delete(job_name, &DeleteParams::background()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => {
                return Err(failed(format!(
                    "cronjob {ns}/{name}: deleting old job {job_name}"
                ))(e))
            }
        }
    }

    let old = cj.status.clone().unwrap_or_default();
    let time = |t: Option<DateTime<Utc>>| t.map(|t| t.timestamp());
    let changed = old.active.clone().unwrap_or_default() != active
        || time(old.last_schedule_time.map(|t| t.0)) != time(last_schedule)
        || time(old.last_successful_time.map(|t| t.0)) != time(plan.last_successful);
    if changed {
        let patch = json!({"status": {
            "active": if active.is_empty() { Value::Null } else { json!(active) },
            "lastScheduleTime": last_schedule.map(Time),
            "lastSuccessfulTime": plan.last_successful.map(Time),
        }});
        let cronjobs: Api<CronJob> = Api::namespaced(ctx.client.clone(), &ns);
        cronjobs
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(failed(format!("cronjob {ns}/{name}: writing status")))?;
    }

    // Wake just after the next time, and at least every minute.
    let until_next = plan.next.and_then(|t| (t - now).to_std().ok());
    Ok(requeue::no_later_than(MAX_SLEEP, until_next))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn next(schedule: &str, from: &str) -> String {
        let (s, tz) = parse_schedule(schedule).unwrap();
        s.next_after(t(from), tz.unwrap_or(Tz::UTC))
            .unwrap()
            .to_rfc3339()
    }

    const CREATED: &str = "2026-03-01T00:00:30Z";

    /// A CronJob; `extra` is merged into its spec.
    fn cronjob(schedule: &str, extra: Value) -> CronJob {
        let mut cj = json!({
            "metadata": {"name": "backup", "namespace": "default", "uid": "cj-uid", "creationTimestamp": CREATED},
            "spec": {"schedule": schedule,
                "jobTemplate": {"metadata": {"labels": {"app": "backup"}, "annotations": {"note": "n"}},
                    "spec": {"template": {"spec": {"restartPolicy": "OnFailure", "containers": [{"name": "c", "image": "i"}]}}}}},
        });
        for (k, v) in extra.as_object().unwrap() {
            if k == "status" {
                cj["status"] = v.clone();
            } else {
                cj["spec"][k] = v.clone();
            }
        }
        serde_json::from_value(cj).unwrap()
    }

    /// A Job of the CronJob: "running", "complete" or "failed", started at `start`.
    fn job_in(name: &str, state: &str, start: &str) -> Arc<Job> {
        let mut j = json!({
            "metadata": {"name": name, "namespace": "default", "uid": format!("{name}-uid"), "creationTimestamp": start,
                "ownerReferences": [{"apiVersion": "batch/v1", "kind": "CronJob", "name": "backup", "uid": "cj-uid", "controller": true}]},
            "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "i"}]}}},
            "status": {"startTime": start},
        });
        match state {
            "complete" => {
                j["status"]["completionTime"] = json!(start);
                j["status"]["conditions"] =
                    json!([{"type": "Complete", "status": "True", "lastTransitionTime": start}]);
            }
            "failed" => {
                j["status"]["conditions"] =
                    json!([{"type": "Failed", "status": "True", "lastTransitionTime": start}])
            }
            _ => {}
        }
        Arc::new(serde_json::from_value(j).unwrap())
    }

    #[test]
    fn cron_syntax_macros_names_ranges_steps_and_lists() {
        // 2026-03-10 is a Tuesday.
        let from = "2026-03-10T13:07:20Z";
        assert_eq!(next("@hourly", from), "2026-03-10T14:00:00+00:00");
        assert_eq!(next("@daily", from), "2026-03-11T00:00:00+00:00");
        assert_eq!(next("@midnight", from), "2026-03-11T00:00:00+00:00");
        assert_eq!(next("@weekly", from), "2026-03-15T00:00:00+00:00");
        assert_eq!(next("@monthly", from), "2026-04-01T00:00:00+00:00");
        assert_eq!(next("@yearly", from), "2027-01-01T00:00:00+00:00");
        assert_eq!(next("@annually", from), "2027-01-01T00:00:00+00:00");
        assert_eq!(next("*/15 * * * *", from), "2026-03-10T13:15:00+00:00");
        assert_eq!(next("0 */6 * * *", from), "2026-03-10T18:00:00+00:00");
        assert_eq!(next("5-10/5 1,2 * * *", from), "2026-03-11T01:05:00+00:00");
        assert_eq!(
            next("30 9 * JAN,MAR MON-FRI", from),
            "2026-03-11T09:30:00+00:00"
        );
        assert_eq!(next("0 0 * * sat", from), "2026-03-14T00:00:00+00:00");
        assert_eq!(next("0 12 * * 7", from), "2026-03-15T12:00:00+00:00");
        // N/step is N-max/step, as in robfig/cron.
        assert_eq!(next("40/10 * * * *", from), "2026-03-10T13:40:00+00:00");
        assert_eq!(next("0 0 1 jun *", from), "2026-06-01T00:00:00+00:00");
        // @every counts from the time given.
        assert_eq!(next("@every 90m", from), "2026-03-10T14:37:20+00:00");
        for bad in [
            "",
            "every minute",
            "* * * * * *",
            "* * * *",
            "61 * * * *",
            "* 24 * * *",
            "@fortnightly",
            "@every soon",
            "TZ=Mars/Base 0 * * * *",
        ] {
            assert!(parse_schedule(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn times_are_read_in_the_time_zone() {
        let cj = |tz: &str| cronjob("0 9 * * *", json!({"timeZone": tz}));
        // New York: 9:00 is 14:00 UTC in winter (EST) and 13:00 UTC in summer (EDT).
        let p = plan(&cj("America/New_York"), &[], t("2026-01-15T00:00:00Z")).unwrap();
        assert_eq!(p.next, Some(t("2026-01-15T14:00:00Z")));
        let p = plan(&cj("America/New_York"), &[], t("2026-07-15T00:00:00Z")).unwrap();
        assert_eq!(p.next, Some(t("2026-07-15T13:00:00Z")));
        // A run due in that zone is started, its annotation in the zone's offset.
        let p = plan(&cj("Europe/Paris"), &[], t("2026-07-15T07:00:05Z")).unwrap();
        let start = p.start.unwrap();
        assert_eq!(start.scheduled, t("2026-07-15T07:00:00Z"));
        assert_eq!(
            start
                .job
                .annotations()
                .get(SCHEDULED_TIMESTAMP)
                .map(String::as_str),
            Some("2026-07-15T09:00:00+02:00")
        );
        // A TZ= prefix is read too; spec.timeZone wins over it.
        let (_, tz) = parse_schedule("CRON_TZ=Asia/Tokyo 0 9 * * *").unwrap();
        assert_eq!(tz, Some(chrono_tz::Asia::Tokyo));
        let both = cronjob("TZ=Asia/Tokyo 0 9 * * *", json!({"timeZone": "UTC"}));
        let p = plan(&both, &[], t("2026-07-15T00:00:00Z")).unwrap();
        assert_eq!(p.next, Some(t("2026-07-15T09:00:00Z")));
        // An unknown zone or schedule: an error, nothing planned.
        assert_eq!(
            plan(&cj("Nowhere/Special"), &[], t(CREATED)),
            Err(ScheduleError::TimeZone("Nowhere/Special".into()))
        );
        assert!(plan(&cronjob("bad", json!({})), &[], t(CREATED)).is_err());
    }

    #[test]
    fn a_schedule_that_never_comes_plans_nothing_quickly() {
        let cj = cronjob("0 0 31 2 *", json!({}));
        let started = std::time::Instant::now();
        let p = plan(&cj, &[], t("2026-03-01T00:00:00Z")).unwrap();
        assert!(p.start.is_none() && p.next.is_none());
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn the_latest_missed_time_is_started_once_named_by_its_minute() {
        let cj = cronjob(
            "*/5 * * * *",
            json!({"status": {"lastScheduleTime": "2026-03-01T00:05:00Z"}}),
        );
        let now = t("2026-03-01T00:27:10Z");
        let p = plan(&cj, &[], now).unwrap();
        let start = p.start.clone().unwrap();
        assert_eq!(
            start.scheduled,
            t("2026-03-01T00:25:00Z"),
            "the latest, not 00:10"
        );
        let minutes = t("2026-03-01T00:25:00Z").timestamp() / 60;
        assert_eq!(start.job.name_any(), format!("backup-{minutes}"));
        assert_eq!(p.next, Some(t("2026-03-01T00:30:00Z")));
        assert_eq!(
            p.last_schedule,
            Some(t("2026-03-01T00:05:00Z")),
            "set once started"
        );
        // Job metadata: the template's labels and annotations, the time, the owner.
        let job = &start.job;
        assert_eq!(job.labels().get("app").map(String::as_str), Some("backup"));
        assert_eq!(job.annotations().get("note").map(String::as_str), Some("n"));
        assert_eq!(
            job.annotations()
                .get(SCHEDULED_TIMESTAMP)
                .map(String::as_str),
            Some("2026-03-01T00:25:00Z")
        );
        let owner = &job.owner_references()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
            ("CronJob", "cj-uid", Some(true))
        );
        assert_eq!(job.namespace().as_deref(), Some("default"));
        assert!(job.spec.is_some());
        // Its Job exists already (the status lags): not started again, the status catches up.
        let existing = job_in(&job.name_any(), "running", "2026-03-01T00:25:00Z");
        let p = plan(&cj, &[existing], now).unwrap();
        assert!(p.start.is_none());
        assert_eq!(p.last_schedule, Some(t("2026-03-01T00:25:00Z")));
        assert_eq!(p.active.len(), 1);
    }

    #[test]
    fn nothing_is_due_before_the_first_time_after_creation() {
        let cj = cronjob("*/5 * * * *", json!({}));
        let p = plan(&cj, &[], t("2026-03-01T00:04:59Z")).unwrap();
        assert!(p.start.is_none() && p.skipped.is_none());
        assert_eq!(p.next, Some(t("2026-03-01T00:05:00Z")));
        // The time of creation itself (00:00, before 00:00:30) is not due.
        let p = plan(&cj, &[], t("2026-03-01T00:05:00Z")).unwrap();
        assert_eq!(p.start.unwrap().scheduled, t("2026-03-01T00:05:00Z"));
    }

    #[test]
    fn many_missed_times_cost_nothing_and_only_the_latest_runs() {
        let cj = cronjob(
            "* * * * *",
            json!({"status": {"lastScheduleTime": "2020-01-01T00:00:00Z"}}),
        );
        let started = std::time::Instant::now();
        let p = plan(&cj, &[], t("2026-03-01T12:34:56Z")).unwrap();
        assert_eq!(p.start.unwrap().scheduled, t("2026-03-01T12:34:00Z"));
        assert!(started.elapsed() < Duration::from_secs(1));
        // @every too.
        let cj = cronjob(
            "@every 1h",
            json!({"status": {"lastScheduleTime": "2026-03-01T00:00:00Z"}}),
        );
        let p = plan(&cj, &[], t("2026-03-01T05:30:00Z")).unwrap();
        assert_eq!(p.start.unwrap().scheduled, t("2026-03-01T05:00:00Z"));
        assert_eq!(p.next, Some(t("2026-03-01T06:30:00Z")));
    }

    #[test]
    fn a_time_older_than_the_starting_deadline_is_skipped() {
        let cj = cronjob(
            "*/5 * * * *",
            json!({"startingDeadlineSeconds": 60, "status": {"lastScheduleTime": "2026-03-01T00:05:00Z"}}),
        );
        let p = plan(&cj, &[], t("2026-03-01T00:27:10Z")).unwrap();
        assert!(p.start.is_none());
        assert!(p.skipped.unwrap().contains("starting deadline"));
        let p = plan(&cj, &[], t("2026-03-01T00:25:50Z")).unwrap();
        assert_eq!(p.start.unwrap().scheduled, t("2026-03-01T00:25:00Z"));
    }

    #[test]
    fn concurrency_policies() {
        let status = json!({"lastScheduleTime": "2026-03-01T00:05:00Z"});
        let now = t("2026-03-01T00:10:01Z");
        let running = job_in("backup-old", "running", "2026-03-01T00:05:00Z");
        let done = job_in("backup-done", "complete", "2026-03-01T00:00:00Z");
        let jobs = [running.clone(), done.clone()];
        // Allow (the default): a second Job beside the running one.
        let p = plan(
            &cronjob("*/5 * * * *", json!({"status": status})),
            &jobs,
            now,
        )
        .unwrap();
        assert!(p.start.is_some() && p.replace.is_empty());
        // Forbid: nothing while one runs, and the time stays due.
        let forbid = cronjob(
            "*/5 * * * *",
            json!({"concurrencyPolicy": "Forbid", "status": status}),
        );
        let p = plan(&forbid, &jobs, now).unwrap();
        assert!(p.start.is_none());
        assert!(p.skipped.unwrap().contains("Forbid"));
        assert_eq!(p.last_schedule, Some(t("2026-03-01T00:05:00Z")));
        let p = plan(&forbid, std::slice::from_ref(&done), now).unwrap();
        assert!(p.start.is_some(), "nothing runs: started");
        // Replace: the running Job goes, the new one starts.
        let replace = cronjob(
            "*/5 * * * *",
            json!({"concurrencyPolicy": "Replace", "status": status}),
        );
        let p = plan(&replace, &jobs, now).unwrap();
        assert_eq!(p.replace, vec!["backup-old".to_string()]);
        assert!(p.start.is_some());
        assert!(p.active.is_empty(), "the replaced Job leaves status.active");
        // Suspended: nothing starts.
        let suspended = cronjob("*/5 * * * *", json!({"suspend": true, "status": status}));
        let p = plan(&suspended, &[], now).unwrap();
        assert!(p.start.is_none());
    }

    #[test]
    fn history_limits_delete_the_oldest_finished_jobs() {
        let jobs: Vec<Arc<Job>> = (1..=5)
            .map(|i| {
                job_in(
                    &format!("ok-{i}"),
                    "complete",
                    &format!("2026-03-0{i}T00:00:00Z"),
                )
            })
            .chain((1..=3).map(|i| {
                job_in(
                    &format!("bad-{i}"),
                    "failed",
                    &format!("2026-03-0{i}T01:00:00Z"),
                )
            }))
            .chain([job_in("run", "running", "2026-03-06T00:00:00Z")])
            .collect();
        let now = t("2026-03-06T00:00:30Z");
        let p = plan(&cronjob("@yearly", json!({})), &jobs, now).unwrap();
        assert_eq!(p.delete, vec!["ok-1", "ok-2", "bad-1", "bad-2"]);
        let p = plan(
            &cronjob(
                "@yearly",
                json!({"successfulJobsHistoryLimit": 0, "failedJobsHistoryLimit": 5}),
            ),
            &jobs,
            now,
        )
        .unwrap();
        assert_eq!(p.delete, vec!["ok-1", "ok-2", "ok-3", "ok-4", "ok-5"]);
        // Jobs of another owner are not counted, nor touched.
        let mut theirs = (*job_in("theirs", "complete", "2026-01-01T00:00:00Z")).clone();
        theirs.metadata.owner_references.as_mut().unwrap()[0].uid = "other".into();
        let p = plan(
            &cronjob("@yearly", json!({"successfulJobsHistoryLimit": 0})),
            &[Arc::new(theirs)],
            now,
        )
        .unwrap();
        assert!(p.delete.is_empty());
    }

    #[test]
    fn status_lists_running_jobs_and_the_last_success() {
        let a = job_in("a", "running", "2026-03-02T00:00:00Z");
        let b = job_in("b", "running", "2026-03-01T00:00:00Z");
        let c = job_in("c", "complete", "2026-03-03T00:00:00Z");
        let d = job_in("d", "complete", "2026-03-04T00:00:00Z");
        // The status lists a first, then c (now finished): a keeps its place, b is added, c goes.
        let cj = cronjob(
            "@yearly",
            json!({"status": {"active": [
                {"apiVersion": "batch/v1", "kind": "Job", "name": "a", "namespace": "default", "uid": "a-uid", "resourceVersion": "7"},
                {"apiVersion": "batch/v1", "kind": "Job", "name": "c", "namespace": "default", "uid": "c-uid"}],
                "lastSuccessfulTime": "2026-03-03T12:00:00Z"}}),
        );
        let p = plan(&cj, &[a, b, c, d], t("2026-03-05T00:00:00Z")).unwrap();
        let names: Vec<_> = p.active.iter().map(|r| r.name.clone().unwrap()).collect();
        assert_eq!(names, vec!["a", "b"]);
        assert_eq!(
            p.active[0].resource_version.as_deref(),
            Some("7"),
            "kept as it was"
        );
        assert_eq!(p.last_successful, Some(t("2026-03-04T00:00:00Z")));
    }
}
