//! The Job controller (batch/v1): runs pods of the template until enough of them succeed, as
//! Kubernetes does — `parallelism` pods at a time, `completions` successes to finish (or, with
//! no `completions`, one success and nothing left running), failure after more than
//! `backoffLimit` failed pods (or container restarts, for `restartPolicy: OnFailure`) or after
//! `activeDeadlineSeconds`, `suspend`, and deletion `ttlSecondsAfterFinished` after the end.
//! Both completion modes: NonIndexed, and Indexed (one success per index `0..completions`,
//! the index in the pod's annotation, label, hostname and `JOB_COMPLETION_INDEX`).
//!
//! The status carries the conditions of Kubernetes 1.31+: `SuccessCriteriaMet` and `Complete`,
//! or `FailureTarget` and `Failed` (each pair written at once: the pods are deleted in the
//! same pass), and `Suspended`; so `kubectl wait --for=condition=complete` works.
//!
//! Pods belong to a Job by their controller ownerReference. Counts come from the pods, with the
//! last written status as a floor, so a finished pod deleted by hand does not undo its count
//! (Kubernetes keeps pods until counted with a finalizer; this is the simpler, older scheme).
//! Replacements of failed pods wait 10 s, 20 s, 40 s, … (at most 6 min) after the last failure.
//! Not done: `podFailurePolicy`, `successPolicy`, `backoffLimitPerIndex`, adoption of orphans
//! by `spec.selector`, Events.
//!
//! [`plan`] decides from the cache alone; [`reconcile`] carries the plan out through the API.
//! Creations and deletions not yet seen in the cache are remembered for a while (see
//! [`Pending`]), so a reconcile racing the watch does not create or delete twice.
//!
//! Length: about 40% of this file is the unit tests of the pure plan, kept beside it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::{Job, JobCondition, JobStatus};
use k8s_openapi::api::core::v1::{EnvVar, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::chrono::{self, DateTime, SubsecRound, Utc};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::controller::Action;
use kube::runtime::reflector::Store;
use kube::{Api, ResourceExt};
use serde_json::{json, Value};

use crate::error::failed;
use crate::expectations::Expectations;
use crate::requeue;
use api::pods::{controller_ref, controller_uid, is_ready, phase, scheduled};

pub use crate::error::Error;

pub const JOB_NAME_LABEL: &str = "batch.kubernetes.io/job-name";
pub const LEGACY_JOB_NAME_LABEL: &str = "job-name";
pub const CONTROLLER_UID_LABEL: &str = "batch.kubernetes.io/controller-uid";
pub const LEGACY_CONTROLLER_UID_LABEL: &str = "controller-uid";
/// Annotation and label of an Indexed Job's pod.
pub const COMPLETION_INDEX: &str = "batch.kubernetes.io/job-completion-index";
/// The value of `spec.managedBy` that means this controller (as absent does).
const MANAGED_BY_US: &str = "kubernetes.io/job-controller";

/// At most this many pods are created or deleted in one pass, as in Kubernetes.
const MAX_PER_PASS: usize = 500;
/// The delay before a failed pod's replacement, doubled per consecutive failure.
const FAILURE_BACKOFF: Duration = Duration::from_secs(10);
const MAX_FAILURE_BACKOFF: Duration = Duration::from_secs(360);

/// Pods created or deleted lately for one Job that the cache may not show yet: created pod
/// names, with the completion index each was made for (Indexed Jobs).
pub type Pending = crate::expectations::Pending<Option<i32>>;

/// What the controller should do for one Job.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Plan {
    /// Pods to create: the completion index of each (None for NonIndexed Jobs).
    pub create: Vec<Option<i32>>,
    /// Pod names to delete, least useful first.
    pub delete: Vec<String>,
    /// The status to write (written only if it differs from the Job's).
    pub status: JobStatus,
    /// The Job finished more than ttlSecondsAfterFinished ago: delete it.
    pub delete_job: bool,
    /// When something is due without any change in the cluster (a deadline, a TTL, the end of
    /// a failure backoff): look again then at the latest.
    pub wake_in: Option<Duration>,
}

/// The completion index of an Indexed Job's pod, from its annotation (or label).
fn pod_index(p: &Pod) -> Option<i32> {
    p.annotations()
        .get(COMPLETION_INDEX)
        .or_else(|| p.labels().get(COMPLETION_INDEX))
        .and_then(|v| v.parse().ok())
}

/// When a finished pod finished: its last container's end, or else when it stopped being Ready.
fn finished_at(p: &Pod) -> Option<DateTime<Utc>> {
    let status = p.status.as_ref()?;
    let containers = status
        .container_statuses
        .iter()
        .flatten()
        .chain(status.init_container_statuses.iter().flatten());
    let ended = containers
        .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.finished_at.as_ref())
        .map(|t| t.0)
        .max();
    ended.or_else(|| {
        status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "Ready" && c.status == "False")
            .and_then(|c| c.last_transition_time.as_ref())
            .map(|t| t.0)
    })
}

/// Container restarts of a pod still running or pending (init containers included).
fn restarts(p: &Pod) -> i32 {
    if !matches!(phase(p), "Running" | "Pending") {
        return 0;
    }
    let Some(status) = p.status.as_ref() else {
        return 0;
    };
    status
        .container_statuses
        .iter()
        .flatten()
        .chain(status.init_container_statuses.iter().flatten())
        .map(|c| c.restart_count.max(0))
        .sum()
}

/// Lower is deleted first: unscheduled, then not running, then not ready, then the newest.
fn usefulness(p: &Pod) -> (bool, bool, bool, std::cmp::Reverse<Option<DateTime<Utc>>>) {
    let created = p.metadata.creation_timestamp.as_ref().map(|t| t.0);
    (
        scheduled(p),
        phase(p) == "Running",
        is_ready(p),
        std::cmp::Reverse(created),
    )
}

fn condition<'a>(status: &'a JobStatus, type_: &str) -> Option<&'a JobCondition> {
    status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == type_)
}

fn condition_true(status: &JobStatus, type_: &str) -> bool {
    condition(status, type_).is_some_and(|c| c.status == "True")
}

/// Sets a condition; its times move only when its status changes. A False condition is
/// written only over an existing one (an absent condition already means not true).
fn set_condition(
    status: &mut JobStatus,
    type_: &str,
    value: bool,
    reason: &str,
    message: &str,
    now: DateTime<Utc>,
) {
    let text = if value { "True" } else { "False" };
    let conditions = status.conditions.get_or_insert_with(Vec::new);
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(c) if c.status == text => {}
        Some(c) => {
            c.status = text.into();
            c.reason = Some(reason.into());
            c.message = Some(message.into());
            c.last_probe_time = Some(Time(now));
            c.last_transition_time = Some(Time(now));
        }
        None if value => conditions.push(JobCondition {
            type_: type_.into(),
            status: text.into(),
            reason: Some(reason.into()),
            message: Some(message.into()),
            last_probe_time: Some(Time(now)),
            last_transition_time: Some(Time(now)),
        }),
        None => {}
    }
    if conditions.is_empty() {
        status.conditions = None;
    }
}

/// When the Job finished (its Complete or Failed condition turned True), if it has and the
/// time is known.
pub fn finished_at_time(status: &JobStatus) -> Option<DateTime<Utc>> {
    ["Complete", "Failed"]
        .iter()
        .filter_map(|t| condition(status, t))
        .find(|c| c.status == "True")
        .and_then(|c| {
            c.last_transition_time
                .as_ref()
                .or(status.completion_time.as_ref())
                .map(|t| t.0)
        })
}

/// Whether a Job has finished (Complete or Failed).
pub fn is_finished(job: &Job) -> bool {
    job.status
        .as_ref()
        .is_some_and(|s| condition_true(s, "Complete") || condition_true(s, "Failed"))
}

/// Parses `completedIndexes` ("1,3-5,7") into indexes below `limit`.
fn parse_indexes(s: Option<&str>, limit: i32) -> BTreeSet<i32> {
    let mut out = BTreeSet::new();
    for part in s
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
    {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        if let (Ok(a), Ok(b)) = (a.trim().parse::<i32>(), b.trim().parse::<i32>()) {
            out.extend((a.max(0)..=b.min(limit - 1)).filter(|i| *i < limit));
        }
    }
    out
}

/// Formats indexes as `completedIndexes`: ascending, runs as ranges ("1,3-5,7").
fn format_indexes(indexes: &BTreeSet<i32>) -> Option<String> {
    let mut parts: Vec<String> = Vec::new();
    let mut run: Option<(i32, i32)> = None;
    for &i in indexes {
        run = match run {
            Some((a, b)) if i == b + 1 => Some((a, i)),
            Some((a, b)) => {
                parts.push(if a == b {
                    a.to_string()
                } else {
                    format!("{a}-{b}")
                });
                Some((i, i))
            }
            None => Some((i, i)),
        };
    }
    if let Some((a, b)) = run {
        parts.push(if a == b {
            a.to_string()
        } else {
            format!("{a}-{b}")
        });
    }
    (!parts.is_empty()).then(|| parts.join(","))
}

fn to_std(d: chrono::TimeDelta) -> Duration {
    d.to_std().unwrap_or_default()
}

/// The plan for `job` given the pods of its namespace in the cache, the pods created or
/// deleted lately that the cache may not show yet, and the time.
pub fn plan(job: &Job, pods: &[Arc<Pod>], pending: &Pending, now: DateTime<Utc>) -> Plan {
    let uid = job.metadata.uid.as_deref().unwrap_or_default();
    let spec = job.spec.clone().unwrap_or_default();
    let old = job.status.clone().unwrap_or_default();
    let mut status = old.clone();
    let mut out = Plan::default();
    let wake = |d: Duration, out: &mut Plan| {
        out.wake_in = Some(out.wake_in.map_or(d, |w| w.min(d)));
    };

    let indexed = spec.completion_mode.as_deref() == Some("Indexed");
    // Indexed Jobs must have completions (validation says so); one index if not.
    let completions = match spec.completions {
        None if indexed => Some(1),
        c => c.map(|c| c.max(0)),
    };
    let parallelism = spec.parallelism.unwrap_or(1).max(0);
    let backoff_limit = spec.backoff_limit.unwrap_or(6).max(0);
    let suspended = spec.suspend == Some(true);
    let on_failure = spec
        .template
        .spec
        .as_ref()
        .and_then(|s| s.restart_policy.as_deref())
        == Some("OnFailure");

    // Sort this Job's pods out.
    let owned: Vec<&Pod> = pods
        .iter()
        .map(|p| &**p)
        .filter(|p| !uid.is_empty() && controller_uid(p) == Some(uid))
        .collect();
    let (mut active, mut succeeded, mut failed) = (Vec::new(), Vec::new(), Vec::new());
    let mut terminating = 0;
    for p in &owned {
        match phase(p) {
            "Succeeded" => succeeded.push(*p),
            "Failed" => failed.push(*p),
            _ if p.metadata.deletion_timestamp.is_some()
                || pending.deleted.contains(&p.name_any()) =>
            {
                terminating += 1
            }
            _ => active.push(*p),
        }
    }
    let seen: BTreeSet<String> = owned.iter().map(|p| p.name_any()).collect();
    let in_flight: Vec<Option<i32>> = pending
        .created
        .iter()
        .filter(|(name, _)| !seen.contains(*name))
        .map(|(_, index)| *index)
        .collect();

    // Counts never go down: a finished pod may be deleted after it was counted.
    let failed_count = (failed.len() as i32).max(old.failed.unwrap_or(0));
    let completion_limit = completions.unwrap_or(0);
    let done_indexes: BTreeSet<i32> = if indexed {
        let mut done = parse_indexes(old.completed_indexes.as_deref(), completion_limit);
        done.extend(
            succeeded
                .iter()
                .filter_map(|p| pod_index(p))
                .filter(|i| (0..completion_limit).contains(i)),
        );
        done
    } else {
        BTreeSet::new()
    };
    let succeeded_count = if indexed {
        done_indexes.len() as i32
    } else {
        (succeeded.len() as i32).max(old.succeeded.unwrap_or(0))
    };

    let finished = condition_true(&old, "Complete") || condition_true(&old, "Failed");
    let mut delete: Vec<&Pod> = Vec::new();
    if finished {
        // A finished Job runs nothing more; what still runs is stopped.
        delete.extend(active.iter().copied());
        if let (Some(ttl), Some(end)) = (spec.ttl_seconds_after_finished, finished_at_time(&old)) {
            match end.checked_add_signed(chrono::Duration::seconds(i64::from(ttl.max(0)))) {
                Some(expires) if now < expires => wake(to_std(expires - now), &mut out),
                Some(_) => out.delete_job = true,
                None => {}
            }
        }
    } else {
        // The clock of activeDeadlineSeconds starts at the first unsuspended pass and again
        // at each resume: it counts time the Job may run.
        let resumed = !suspended && condition_true(&old, "Suspended");
        if (status.start_time.is_none() && !suspended) || resumed {
            status.start_time = Some(Time(now));
        }
        let start = status.start_time.as_ref().map(|t| t.0);
        // Kubernetes counts restarts against the limit apart from failed pods, with >=.
        let restart_count: i32 = if on_failure {
            active.iter().map(|p| restarts(p)).sum()
        } else {
            0
        };
        let restarts_exceeded = on_failure
            && if backoff_limit == 0 {
                restart_count > 0
            } else {
                restart_count >= backoff_limit
            };
        let mut failure = None;
        if failed_count > backoff_limit || restarts_exceeded {
            failure = Some((
                "BackoffLimitExceeded",
                "Job has reached the specified backoff limit",
            ));
        } else if let (Some(limit), Some(start), false) =
            (spec.active_deadline_seconds, start, suspended)
        {
            // A deadline too far to write down is none.
            let deadline = chrono::Duration::try_seconds(limit.max(0))
                .and_then(|d| start.checked_add_signed(d))
                .unwrap_or(DateTime::<Utc>::MAX_UTC);
            if now >= deadline {
                failure = Some((
                    "DeadlineExceeded",
                    "Job was active longer than specified deadline",
                ));
            } else {
                wake(to_std(deadline - now), &mut out);
            }
        }

        if let Some((reason, message)) = failure {
            delete.extend(active.iter().copied());
            set_condition(&mut status, "FailureTarget", true, reason, message, now);
            set_condition(&mut status, "Failed", true, reason, message, now);
        } else {
            // How many pods should run now.
            let remaining = if indexed {
                completion_limit - done_indexes.len() as i32
            } else {
                match completions {
                    // With no completions, the first success ends the Job once the pods
                    // still running are done; none is started after it.
                    None if succeeded_count > 0 => 0,
                    None => parallelism,
                    Some(c) => c - succeeded_count,
                }
            };
            let want = if suspended {
                0
            } else {
                remaining.clamp(0, parallelism)
            } as usize;

            // Indexed: pods of an index already done, out of range or run twice go first.
            let mut running = active.clone();
            if indexed {
                let mut taken = BTreeSet::new();
                running.clear();
                for p in &active {
                    match pod_index(p) {
                        Some(i)
                            if (0..completion_limit).contains(&i)
                                && !done_indexes.contains(&i)
                                && taken.insert(i) =>
                        {
                            running.push(*p)
                        }
                        _ => delete.push(*p),
                    }
                }
            }
            // Without completions, pods still running after a success are left to finish.
            let keep = match completions {
                None if !indexed && succeeded_count > 0 && !suspended => running.len(),
                _ => want,
            };
            if running.len() > keep {
                running.sort_by_key(|p| usefulness(p));
                let extra = running.len() - keep;
                delete.extend(running.drain(..extra));
            } else if running.len() + in_flight.len() < want {
                let missing = (want - running.len() - in_flight.len()).min(MAX_PER_PASS);
                // A failed pod's replacement waits, longer after each failure since the last
                // success, so a crashing Job does not burn through its backoffLimit at once.
                let last_success = succeeded.iter().filter_map(|p| finished_at(p)).max();
                let failures: Vec<DateTime<Utc>> = failed
                    .iter()
                    .filter_map(|p| finished_at(p))
                    .filter(|t| last_success.is_none_or(|s| *t > s))
                    .collect();
                let ready_at = failures.iter().max().map(|last| {
                    let doublings = (failures.len() as u32 - 1).min(16);
                    let delay = (FAILURE_BACKOFF * 2u32.pow(doublings)).min(MAX_FAILURE_BACKOFF);
                    *last + chrono::Duration::from_std(delay).unwrap_or_default()
                });
                match ready_at {
                    Some(at) if now < at => wake(to_std(at - now), &mut out),
                    _ if indexed => {
                        let busy: BTreeSet<i32> = running
                            .iter()
                            .filter_map(|p| pod_index(p))
                            .chain(in_flight.iter().flatten().copied())
                            .collect();
                        out.create = (0..completion_limit)
                            .filter(|i| !done_indexes.contains(i) && !busy.contains(i))
                            .take(missing)
                            .map(Some)
                            .collect();
                    }
                    _ => out.create = vec![None; missing],
                }
            }

            let complete = running.is_empty()
                && in_flight.is_empty()
                && out.create.is_empty()
                && match completions {
                    None => succeeded_count > 0,
                    Some(_) if indexed => done_indexes.len() as i32 >= completion_limit,
                    Some(c) => succeeded_count >= c,
                };
            if complete {
                let (reason, message) = (
                    "CompletionsReached",
                    "Reached expected number of succeeded pods",
                );
                set_condition(
                    &mut status,
                    "SuccessCriteriaMet",
                    true,
                    reason,
                    message,
                    now,
                );
                set_condition(&mut status, "Complete", true, reason, message, now);
                status.completion_time = Some(Time(now));
            } else if suspended {
                set_condition(
                    &mut status,
                    "Suspended",
                    true,
                    "JobSuspended",
                    "Job suspended",
                    now,
                );
            } else if resumed {
                set_condition(
                    &mut status,
                    "Suspended",
                    false,
                    "JobResumed",
                    "Job resumed",
                    now,
                );
            }
        }
    }

    delete.truncate(MAX_PER_PASS);
    let deleting: BTreeSet<String> = delete.iter().map(|p| p.name_any()).collect();
    let still_active: Vec<&&Pod> = active
        .iter()
        .filter(|p| !deleting.contains(&p.name_any()))
        .collect();
    status.active = Some(still_active.len() as i32);
    status.ready = Some(still_active.iter().filter(|p| is_ready(p)).count() as i32);
    status.terminating = Some(terminating + deleting.len() as i32);
    status.succeeded = Some(succeeded_count);
    status.failed = Some(failed_count);
    if indexed {
        status.completed_indexes = format_indexes(&done_indexes);
    }
    out.delete = delete.iter().map(|p| p.name_any()).collect();
    out.status = status;
    out
}

/// The pod to create for `job` (for completion index `index` of an Indexed Job).
pub fn pod_for(job: &Job, index: Option<i32>) -> Pod {
    let name = job.name_any();
    let uid = job.metadata.uid.clone().unwrap_or_default();
    let template = job
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default();
    let mut meta = template.metadata.unwrap_or_default();
    meta.name = None;
    meta.generate_name = Some(match index {
        Some(i) => format!("{name}-{i}-"),
        None => format!("{name}-"),
    });
    meta.namespace = job.namespace();
    meta.resource_version = None;
    meta.uid = None;
    meta.owner_references = Some(vec![controller_ref(job)]);
    let labels = meta.labels.get_or_insert_with(BTreeMap::new);
    labels.insert(JOB_NAME_LABEL.into(), name.clone());
    labels.insert(LEGACY_JOB_NAME_LABEL.into(), name.clone());
    labels.insert(CONTROLLER_UID_LABEL.into(), uid.clone());
    labels.insert(LEGACY_CONTROLLER_UID_LABEL.into(), uid);
    let mut spec = template.spec;
    if let Some(i) = index {
        labels.insert(COMPLETION_INDEX.into(), i.to_string());
        meta.annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(COMPLETION_INDEX.into(), i.to_string());
        if let Some(spec) = spec.as_mut() {
            if spec.hostname.as_deref().is_none_or(str::is_empty) {
                spec.hostname = Some(format!("{name}-{i}"));
            }
            let containers = spec
                .containers
                .iter_mut()
                .chain(spec.init_containers.iter_mut().flatten());
            for c in containers {
                let env = c.env.get_or_insert_with(Vec::new);
                if !env.iter().any(|e| e.name == "JOB_COMPLETION_INDEX") {
                    env.push(EnvVar {
                        name: "JOB_COMPLETION_INDEX".into(),
                        value: Some(i.to_string()),
                        value_from: None,
                    });
                }
            }
        }
    }
    Pod {
        metadata: meta,
        spec,
        status: None,
    }
}

pub struct Context {
    pub client: kube::Client,
    pub pods: Store<Pod>,
    /// Creations and deletions per Job uid not yet seen in the cache (with the completion
    /// index of each created pod).
    pub expectations: Expectations<Option<i32>>,
}

/// A merge patch that turns status `old` into `new`: fields `new` lacks are set to null.
fn status_patch(old: &JobStatus, new: &JobStatus) -> Value {
    let mut patch = serde_json::to_value(new).unwrap_or_else(|_| json!({}));
    let old = serde_json::to_value(old).unwrap_or_else(|_| json!({}));
    if let (Some(patch), Some(old)) = (patch.as_object_mut(), old.as_object()) {
        for key in old.keys() {
            patch.entry(key.clone()).or_insert(Value::Null);
        }
    }
    json!({ "status": patch })
}

/// Carries out the plan for one Job.
pub async fn reconcile(job: Arc<Job>, ctx: Arc<Context>) -> Result<Action, Error> {
    if job.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    // A Job another controller manages (spec.managedBy) is left to it.
    let managed_by = job.spec.as_ref().and_then(|s| s.managed_by.as_deref());
    if managed_by.is_some_and(|m| m != MANAGED_BY_US) {
        return Ok(Action::await_change());
    }
    let ns = job.namespace().unwrap_or_else(|| "default".into());
    let name = job.name_any();
    let uid = job.metadata.uid.clone().unwrap_or_default();
    let pods: Vec<Arc<Pod>> = ctx
        .pods
        .state()
        .into_iter()
        .filter(|p| p.namespace().as_deref() == Some(ns.as_str()))
        .filter(|p| controller_uid(p) == Some(uid.as_str()))
        .collect();
    let pending = ctx.expectations.pending(&uid, &pods);
    // Whole seconds: the API keeps times to the second, so a status compared later is stable.
    let now = Utc::now().trunc_subsecs(0);
    let plan = plan(&job, &pods, &pending, now);

    if plan.delete_job {
        // Background propagation: the pods go after the Job, through the garbage collector.
        // The uid precondition spares a new Job of the same name.
        let mut params = DeleteParams::background();
        params.preconditions = Some(Preconditions {
            uid: Some(uid.clone()),
            resource_version: None,
        });
        let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
        match jobs.delete(&name, &params).await {
            Ok(_) => tracing::info!("job {ns}/{name}: deleted, ttlSecondsAfterFinished passed"),
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
            Err(e) => return Err(failed(format!("deleting finished job {ns}/{name}"))(e)),
        }
        ctx.expectations.forget(&uid);
        return Ok(Action::await_change());
    }

    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    for pod in &plan.delete {
        match api.delete(pod, &DeleteParams::default()).await {
            Ok(_) => ctx.expectations.deleted(&uid, pod.clone()),
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(failed(format!("job {ns}/{name}: deleting pod {pod}"))(e)),
        }
    }
    for index in &plan.create {
        let pod = pod_for(&job, *index);
        let created = api
            .create(&PostParams::default(), &pod)
            .await
            .map_err(failed(format!("job {ns}/{name}: creating a pod")))?;
        ctx.expectations.created(&uid, created.name_any(), *index);
    }

    let old = job.status.clone().unwrap_or_default();
    if plan.status != old {
        let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
        jobs.patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(&status_patch(&old, &plan.status)),
        )
        .await
        .map_err(failed(format!("job {ns}/{name}: writing status")))?;
    }

    // Work under way is looked at again soon, in case the cache that woke this reconcile ran
    // ahead of the one it decided from; anything timed, when it is due.
    let busy = !plan.create.is_empty() || !plan.delete.is_empty() || !pending.created.is_empty();
    Ok(requeue::after_success(busy, plan.wake_in))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    const T0: &str = "2026-01-01T00:00:00Z";

    /// A Job; `extra` is merged into its spec.
    fn job(extra: Value) -> Job {
        let mut j = json!({
            "metadata": {"name": "pi", "namespace": "default", "uid": "job-uid", "creationTimestamp": T0},
            "spec": {"template": {"metadata": {"labels": {"app": "pi"}},
                     "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "i"}]}}},
        });
        for (k, v) in extra.as_object().unwrap() {
            j["spec"][k] = v.clone();
        }
        serde_json::from_value(j).unwrap()
    }

    fn with_status(mut j: Job, status: Value) -> Job {
        j.status = Some(serde_json::from_value(status).unwrap());
        j
    }

    /// A pod of the Job in `phase`; ready pods are Running and Ready.
    fn pod(name: &str, phase: &str) -> Arc<Pod> {
        pod_with(name, phase, json!({}))
    }

    fn pod_with(name: &str, phase: &str, extra: Value) -> Arc<Pod> {
        let mut p = json!({
            "metadata": {"name": name, "namespace": "default", "creationTimestamp": T0,
                "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": "pi", "uid": "job-uid", "controller": true}]},
            "spec": {"nodeName": "n", "containers": [{"name": "c", "image": "i"}]},
            "status": {"phase": phase, "conditions": [{"type": "Ready", "status": if phase == "Running" { "True" } else { "False" }}]},
        });
        for (k, v) in extra.as_object().unwrap() {
            match (k.as_str(), v) {
                ("annotations", _) => p["metadata"]["annotations"] = v.clone(),
                ("deletionTimestamp", _) => p["metadata"]["deletionTimestamp"] = v.clone(),
                ("ownerUid", Value::String(u)) => {
                    p["metadata"]["ownerReferences"][0]["uid"] = json!(u)
                }
                ("finishedAt", _) => {
                    p["status"]["containerStatuses"] = json!([{"name": "c", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
                        "state": {"terminated": {"exitCode": 1, "finishedAt": v}}}])
                }
                ("restarts", _) => {
                    p["status"]["containerStatuses"] = json!([{"name": "c", "image": "i", "imageID": "", "ready": true, "restartCount": v,
                        "state": {"running": {}}}])
                }
                _ => panic!("unknown test field {k}"),
            }
        }
        Arc::new(serde_json::from_value(p).unwrap())
    }

    fn none() -> Pending {
        Pending::default()
    }

    fn cond<'a>(p: &'a Plan, t: &str) -> Option<&'a JobCondition> {
        condition(&p.status, t)
    }

    #[test]
    fn starts_parallelism_pods_within_the_remaining_completions() {
        let j = job(json!({"completions": 5, "parallelism": 2}));
        let now = t(T0);
        let p = plan(&j, &[], &none(), now);
        assert_eq!(p.create, vec![None, None]);
        assert_eq!(p.status.start_time, Some(Time(now)), "started now");
        assert_eq!(p.status.active, Some(0));
        // 3 succeeded, 1 running: 1 remaining completion beside the running one... no more.
        let pods = [
            pod("a", "Succeeded"),
            pod("b", "Succeeded"),
            pod("c", "Succeeded"),
            pod("d", "Running"),
        ];
        let p = plan(&j, &pods, &none(), now);
        assert_eq!(p.create, vec![None], "5 - 3 = 2 wanted, 1 running");
        assert_eq!((p.status.active, p.status.ready), (Some(1), Some(1)));
        assert_eq!(p.status.succeeded, Some(3));
        // 4 succeeded: one more wanted, and one is running.
        let pods = [
            pod("a", "Succeeded"),
            pod("b", "Succeeded"),
            pod("c", "Succeeded"),
            pod("e", "Succeeded"),
            pod("d", "Running"),
        ];
        let p = plan(&j, &pods, &none(), now);
        assert!(p.create.is_empty() && p.delete.is_empty());
        assert!(cond(&p, "Complete").is_none());
    }

    #[test]
    fn pods_on_their_way_count_and_terminating_pods_do_not() {
        let j = job(json!({"completions": 4, "parallelism": 3}));
        let mut pending = none();
        pending.created.insert("x".into(), None);
        let pods = [
            pod("a", "Running"),
            pod_with(
                "b",
                "Running",
                json!({"deletionTimestamp": "2026-01-01T00:00:01Z"}),
            ),
        ];
        let p = plan(&j, &pods, &pending, t(T0));
        assert_eq!(p.create, vec![None], "3 wanted: a, x on its way, one new");
        assert_eq!((p.status.active, p.status.terminating), (Some(1), Some(1)));
        // Once the cache holds x, it is no longer in flight.
        let pods = [pod("a", "Running"), pod("x", "Pending")];
        assert_eq!(plan(&j, &pods, &pending, t(T0)).create, vec![None]);
    }

    #[test]
    fn extra_active_pods_are_deleted_least_useful_first() {
        let j = job(json!({"completions": 10, "parallelism": 1}));
        let mut unscheduled = (*pod("pending", "Pending")).clone();
        unscheduled.spec.as_mut().unwrap().node_name = None;
        let pods = [
            pod("running", "Running"),
            Arc::new(unscheduled),
            pod("theirs", "Running"),
        ];
        let mut theirs = (*pods[2]).clone();
        theirs.metadata.owner_references.as_mut().unwrap()[0].uid = "other".into();
        let pods = [pods[0].clone(), pods[1].clone(), Arc::new(theirs)];
        let p = plan(&j, &pods, &none(), t(T0));
        assert_eq!(p.delete, vec!["pending".to_string()]);
        assert!(p.create.is_empty());
        assert_eq!((p.status.active, p.status.terminating), (Some(1), Some(1)));
    }

    #[test]
    fn without_completions_the_first_success_ends_the_job_once_nothing_runs() {
        let j = job(json!({"parallelism": 3}));
        let now = t("2026-01-01T00:05:00Z");
        assert_eq!(plan(&j, &[], &none(), now).create.len(), 3);
        // One succeeded, one still running: no new pod, the running one is left alone.
        let pods = [pod("a", "Succeeded"), pod("b", "Running")];
        let p = plan(&j, &pods, &none(), now);
        assert!(p.create.is_empty() && p.delete.is_empty());
        assert!(cond(&p, "Complete").is_none());
        // Nothing runs any more: complete.
        let pods = [pod("a", "Succeeded"), pod("b", "Failed")];
        let p = plan(&j, &pods, &none(), now);
        assert!(p.create.is_empty());
        let c = cond(&p, "Complete").unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_deref()),
            ("True", Some("CompletionsReached"))
        );
        assert!(condition_true(&p.status, "SuccessCriteriaMet"));
        assert_eq!(p.status.completion_time, Some(Time(now)));
    }

    #[test]
    fn completions_reached_completes_and_stops_what_still_runs() {
        let j = job(json!({"completions": 2, "parallelism": 3}));
        let now = t("2026-01-01T00:05:00Z");
        let pods = [
            pod("a", "Succeeded"),
            pod("b", "Succeeded"),
            pod("c", "Running"),
        ];
        let p = plan(&j, &pods, &none(), now);
        assert_eq!(p.delete, vec!["c".to_string()]);
        assert!(condition_true(&p.status, "Complete"));
        assert_eq!((p.status.active, p.status.succeeded), (Some(0), Some(2)));
        // A finished job creates nothing, even if its pods go away.
        let done = with_status(j, serde_json::to_value(&p.status).unwrap());
        let p = plan(&done, &[], &none(), now);
        assert!(p.create.is_empty() && p.delete.is_empty() && !p.delete_job);
        assert_eq!(p.status.succeeded, Some(2), "counts never go down");
        let before = done.status.as_ref().unwrap();
        assert_eq!(p.status.conditions, before.conditions, "times kept");
        assert_eq!(p.status.completion_time, before.completion_time);
        assert_eq!(p.status.terminating, Some(0), "the stopped pod is gone");
    }

    #[test]
    fn more_failures_than_the_backoff_limit_fail_the_job() {
        let j = job(json!({"completions": 3, "parallelism": 2, "backoffLimit": 1}));
        let now = t("2026-01-01T01:00:00Z");
        // One failure is within the limit: a replacement (its backoff long past).
        let pods = [
            pod_with("a", "Failed", json!({"finishedAt": T0})),
            pod("b", "Running"),
        ];
        let p = plan(&j, &pods, &none(), now);
        assert_eq!(p.create, vec![None]);
        assert_eq!(p.status.failed, Some(1));
        // Two failures: over the limit. The running pod is stopped.
        let pods = [
            pod_with("a", "Failed", json!({"finishedAt": T0})),
            pod_with("c", "Failed", json!({"finishedAt": T0})),
            pod("b", "Running"),
        ];
        let p = plan(&j, &pods, &none(), now);
        assert!(p.create.is_empty());
        assert_eq!(p.delete, vec!["b".to_string()]);
        let c = cond(&p, "Failed").unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_deref()),
            ("True", Some("BackoffLimitExceeded"))
        );
        assert!(condition_true(&p.status, "FailureTarget"));
        assert!(!condition_true(&p.status, "Complete"));
        assert_eq!(p.status.completion_time, None);
    }

    #[test]
    fn restarts_count_against_the_backoff_limit_with_on_failure() {
        let mut j = job(json!({"backoffLimit": 2}));
        j.spec
            .as_mut()
            .unwrap()
            .template
            .spec
            .as_mut()
            .unwrap()
            .restart_policy = Some("OnFailure".into());
        let now = t(T0);
        let p = plan(
            &j,
            &[pod_with("a", "Running", json!({"restarts": 1}))],
            &none(),
            now,
        );
        assert!(!condition_true(&p.status, "Failed"));
        let p = plan(
            &j,
            &[pod_with("a", "Running", json!({"restarts": 2}))],
            &none(),
            now,
        );
        assert_eq!(
            cond(&p, "Failed").unwrap().reason.as_deref(),
            Some("BackoffLimitExceeded")
        );
        assert_eq!(p.delete, vec!["a".to_string()]);
        // With restartPolicy Never, restarts do not count (there are none in practice).
        let j = job(json!({"backoffLimit": 2}));
        let p = plan(
            &j,
            &[pod_with("a", "Running", json!({"restarts": 5}))],
            &none(),
            now,
        );
        assert!(!condition_true(&p.status, "Failed"));
    }

    #[test]
    fn a_failed_pod_is_replaced_after_an_exponential_backoff() {
        let j = job(json!({"completions": 1, "backoffLimit": 6}));
        let a = pod_with("a", "Failed", json!({"finishedAt": T0}));
        let b = pod_with("b", "Failed", json!({"finishedAt": "2026-01-01T00:00:30Z"}));
        // One failure: 10 s.
        let p = plan(
            &j,
            std::slice::from_ref(&a),
            &none(),
            t("2026-01-01T00:00:04Z"),
        );
        assert!(p.create.is_empty());
        assert_eq!(p.wake_in, Some(Duration::from_secs(6)));
        let p = plan(
            &j,
            std::slice::from_ref(&a),
            &none(),
            t("2026-01-01T00:00:10Z"),
        );
        assert_eq!(p.create, vec![None]);
        // Two failures: 20 s after the last.
        let p = plan(
            &j,
            &[a.clone(), b.clone()],
            &none(),
            t("2026-01-01T00:00:45Z"),
        );
        assert!(p.create.is_empty());
        assert_eq!(p.wake_in, Some(Duration::from_secs(5)));
        let p = plan(&j, &[a, b], &none(), t("2026-01-01T00:00:50Z"));
        assert_eq!(p.create, vec![None]);
    }

    #[test]
    fn the_active_deadline_fails_the_job_and_is_waited_for() {
        let j = with_status(
            job(json!({"completions": 1, "activeDeadlineSeconds": 60})),
            json!({"startTime": T0}),
        );
        let pods = [pod("a", "Running")];
        let p = plan(&j, &pods, &none(), t("2026-01-01T00:00:45Z"));
        assert!(!condition_true(&p.status, "Failed"));
        assert_eq!(p.wake_in, Some(Duration::from_secs(15)));
        let p = plan(&j, &pods, &none(), t("2026-01-01T00:01:00Z"));
        let c = cond(&p, "Failed").unwrap();
        assert_eq!(c.reason.as_deref(), Some("DeadlineExceeded"));
        assert_eq!(p.delete, vec!["a".to_string()]);
        assert_eq!(p.status.start_time, Some(Time(t(T0))), "kept");
        // A deadline beyond the calendar is no deadline (and no panic).
        let far = with_status(
            job(json!({"activeDeadlineSeconds": i64::MAX})),
            json!({"startTime": T0}),
        );
        assert!(!condition_true(
            &plan(&far, &pods, &none(), t(T0)).status,
            "Failed"
        ));
    }

    #[test]
    fn suspend_stops_the_pods_and_resume_restarts_the_deadline_clock() {
        let j = with_status(
            job(
                json!({"completions": 2, "parallelism": 2, "suspend": true, "activeDeadlineSeconds": 60}),
            ),
            json!({"startTime": T0}),
        );
        let now = t("2026-01-01T00:10:00Z");
        let pods = [pod("a", "Running"), pod("b", "Pending")];
        let p = plan(&j, &pods, &none(), now);
        assert!(p.create.is_empty());
        assert_eq!(p.delete.len(), 2);
        assert!(
            !condition_true(&p.status, "Failed"),
            "no deadline while suspended"
        );
        let c = cond(&p, "Suspended").unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_deref()),
            ("True", Some("JobSuspended"))
        );
        // Resumed: the condition turns False, the clock starts again, pods are created.
        let mut resumed = with_status(j, serde_json::to_value(&p.status).unwrap());
        resumed.spec.as_mut().unwrap().suspend = Some(false);
        let later = t("2026-01-01T01:00:00Z");
        let p = plan(&resumed, &[], &none(), later);
        assert_eq!(p.create.len(), 2);
        let c = cond(&p, "Suspended").unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_deref()),
            ("False", Some("JobResumed"))
        );
        assert_eq!(p.status.start_time, Some(Time(later)));
        assert!(!condition_true(&p.status, "Failed"));
        // A Job created suspended gets no start time.
        let p = plan(&job(json!({"suspend": true})), &[], &none(), later);
        assert_eq!(p.status.start_time, None);
    }

    #[test]
    fn a_finished_job_is_deleted_after_its_ttl() {
        let j = with_status(
            job(json!({"ttlSecondsAfterFinished": 100})),
            json!({"succeeded": 1, "completionTime": T0,
                   "conditions": [{"type": "Complete", "status": "True", "lastTransitionTime": T0}]}),
        );
        let p = plan(
            &j,
            &[pod("a", "Succeeded")],
            &none(),
            t("2026-01-01T00:01:00Z"),
        );
        assert!(!p.delete_job);
        assert_eq!(p.wake_in, Some(Duration::from_secs(40)));
        let p = plan(
            &j,
            &[pod("a", "Succeeded")],
            &none(),
            t("2026-01-01T00:01:40Z"),
        );
        assert!(p.delete_job);
        // A failed Job too, from its Failed condition.
        let failed = with_status(
            job(json!({"ttlSecondsAfterFinished": 0})),
            json!({"conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "lastTransitionTime": T0}]}),
        );
        assert!(plan(&failed, &[], &none(), t(T0)).delete_job);
        // No TTL: kept.
        let kept = with_status(
            job(json!({})),
            json!({"conditions": [{"type": "Complete", "status": "True", "lastTransitionTime": T0}]}),
        );
        let p = plan(&kept, &[], &none(), t("2030-01-01T00:00:00Z"));
        assert!(!p.delete_job && p.wake_in.is_none());
    }

    #[test]
    fn indexed_jobs_run_each_index_once() {
        let j = job(json!({"completionMode": "Indexed", "completions": 4, "parallelism": 2}));
        let at = |i: i32| json!({"annotations": {COMPLETION_INDEX: i.to_string()}});
        let p = plan(&j, &[], &none(), t(T0));
        assert_eq!(p.create, vec![Some(0), Some(1)]);
        // 0 done, 1 running twice, 2 on its way: the duplicate goes, nothing more is needed.
        let pods = [
            pod_with("p0", "Succeeded", at(0)),
            pod_with("p1", "Running", at(1)),
            pod_with("p1b", "Running", at(1)),
        ];
        let mut pending = none();
        pending.created.insert("p2".into(), Some(2));
        let p = plan(&j, &pods, &pending, t(T0));
        assert_eq!(p.delete, vec!["p1b".to_string()]);
        assert!(p.create.is_empty());
        assert_eq!(p.status.completed_indexes.as_deref(), Some("0"));
        // 0 and 2 done, 1 running: index 3 is next.
        let pods = [
            pod_with("p0", "Succeeded", at(0)),
            pod_with("p1", "Running", at(1)),
            pod_with("p2", "Succeeded", at(2)),
        ];
        let p = plan(&j, &pods, &none(), t(T0));
        assert_eq!(p.create, vec![Some(3)]);
        assert_eq!(p.status.completed_indexes.as_deref(), Some("0,2"));
        assert_eq!(p.status.succeeded, Some(2));
        // All done (one recorded only in the status): complete.
        let j = with_status(j, json!({"completedIndexes": "0-1"}));
        let pods = [
            pod_with("p2", "Succeeded", at(2)),
            pod_with("p3", "Succeeded", at(3)),
        ];
        let p = plan(&j, &pods, &none(), t(T0));
        assert!(condition_true(&p.status, "Complete"));
        assert_eq!(p.status.completed_indexes.as_deref(), Some("0-3"));
    }

    #[test]
    fn index_lists_round_trip() {
        let set = parse_indexes(Some("1,3-5,7, 9-8,x,12"), 10);
        assert_eq!(set.iter().copied().collect::<Vec<_>>(), vec![1, 3, 4, 5, 7]);
        assert_eq!(format_indexes(&set).as_deref(), Some("1,3-5,7"));
        assert_eq!(format_indexes(&BTreeSet::new()), None);
    }

    #[test]
    fn pods_carry_the_job_labels_owner_and_index() {
        let j = job(json!({"completionMode": "Indexed", "completions": 3}));
        let p = pod_for(&j, None);
        assert_eq!(p.metadata.generate_name.as_deref(), Some("pi-"));
        assert_eq!(p.metadata.namespace.as_deref(), Some("default"));
        let labels = p.metadata.labels.clone().unwrap();
        for (k, v) in [
            ("app", "pi"),
            (JOB_NAME_LABEL, "pi"),
            ("job-name", "pi"),
            (CONTROLLER_UID_LABEL, "job-uid"),
            ("controller-uid", "job-uid"),
        ] {
            assert_eq!(labels.get(k).map(String::as_str), Some(v), "{k}");
        }
        let owner = &p.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (
                owner.kind.as_str(),
                owner.uid.as_str(),
                owner.controller,
                owner.block_owner_deletion
            ),
            ("Job", "job-uid", Some(true), Some(true))
        );
        let p = pod_for(&j, Some(2));
        assert_eq!(p.metadata.generate_name.as_deref(), Some("pi-2-"));
        assert_eq!(pod_index(&p), Some(2));
        let spec = p.spec.unwrap();
        assert_eq!(spec.hostname.as_deref(), Some("pi-2"));
        let env = spec.containers[0].env.clone().unwrap();
        assert_eq!(env[0].name, "JOB_COMPLETION_INDEX");
        assert_eq!(env[0].value.as_deref(), Some("2"));
    }

    #[test]
    fn conditions_keep_their_times_while_unchanged() {
        let mut s = JobStatus::default();
        set_condition(&mut s, "Suspended", false, "JobResumed", "", t(T0));
        assert!(s.conditions.is_none(), "False is not written over nothing");
        set_condition(&mut s, "Suspended", true, "JobSuspended", "", t(T0));
        let later = t("2026-01-02T00:00:00Z");
        set_condition(&mut s, "Suspended", true, "JobSuspended", "", later);
        let c = condition(&s, "Suspended").unwrap();
        assert_eq!(c.last_transition_time, Some(Time(t(T0))));
        set_condition(&mut s, "Suspended", false, "JobResumed", "", later);
        let c = condition(&s, "Suspended").unwrap();
        assert_eq!(c.last_transition_time, Some(Time(later)));
    }

    #[test]
    fn status_patches_clear_what_is_gone() {
        let old: JobStatus =
            serde_json::from_value(json!({"active": 1, "completedIndexes": "0"})).unwrap();
        let new: JobStatus = serde_json::from_value(json!({"active": 0})).unwrap();
        assert_eq!(
            status_patch(&old, &new),
            json!({"status": {"active": 0, "completedIndexes": null}})
        );
    }
}
