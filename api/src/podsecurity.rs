//! Pod Security Standards: the checks of Kubernetes' pod-security-admission library
//! (`k8s.io/pod-security-admission/policy`), the namespace labels that choose a policy, and the
//! messages kube-apiserver words from them. Pure functions over pod specs held as JSON values.
//! The rules, reasons, details and their order follow the library as Kubernetes v1.32 ships it
//! (pod-security-admission v0.32).
//!
//! # Levels, versions and the check list
//!
//! A level is `privileged` (no checks), `baseline` or `restricted`. A version pins the checks
//! to a Kubernetes release: `latest` or `v1.N`. Drover serves the v1.32 API, so `latest` means
//! v1.32 and a newer pinned version is evaluated as v1.32, as a v1.32 kube-apiserver does; an
//! older pinned version gets the checks as they were then (see [`Version`]). At v1.32:
//!
//! * baseline: `appArmorProfile`, `capabilities_baseline`, `hostNamespaces`, `hostPathVolumes`,
//!   `hostPorts`, `privileged`, `procMount`, `seLinuxOptions`, `seccompProfile_baseline`,
//!   `sysctls`, `windowsHostProcess`;
//! * restricted: the baseline checks, except that `capabilities_restricted` replaces
//!   `capabilities_baseline`, `restrictedVolumes` replaces `hostPathVolumes` and
//!   `seccompProfile_restricted` replaces `seccompProfile_baseline`; then
//!   `allowPrivilegeEscalation`, `capabilities_restricted`, `restrictedVolumes`, `runAsNonRoot`,
//!   `runAsUser`, `seccompProfile_restricted`.
//!
//! Violations come in that order (upstream sorts the check ids, baseline ones first), which is
//! the order of the parts of the message. Containers are visited as upstream visits them:
//! `initContainers`, then `containers`, then `ephemeralContainers`.
//!
//! v1.32 particulars worth knowing: the safe sysctls include `net.ipv4.tcp_rmem` and
//! `net.ipv4.tcp_wmem` (added to the v1.32 policy); an `image` volume is a restricted volume
//! (of type "unknown"; v1.33 allowed it); `hostUsers: false` relaxes nothing (v1.32 gates that
//! behind an alpha feature gate, off by default; v1.35 made it unconditional). Pods with
//! `spec.os.name: windows` skip `allowPrivilegeEscalation`, `capabilities_restricted` and
//! `seccompProfile_restricted` (v1.25+), as upstream.
//!
//! # Drover
//!
//! Wasm pods are pods: the checks read the pod spec, not the runtime that will run it. A
//! hostPath volume is a hostPath volume whether the pod runs in wasmtime or in a Linux
//! container, a privileged container asks for privilege either way, and so on: no exemption by
//! runtime (or RuntimeClass) here. Exemptions (namespaces, users, runtime classes), if any, are
//! the admission's business, not this module's.
//!
//! # Messages
//!
//! kube-apiserver words the outcome of an evaluation as
//!
//! * enforce (the request is refused, 403 Forbidden, `pods "p" is forbidden: ` before it):
//!   `violates PodSecurity "baseline:latest": host namespaces (hostNetwork=true), hostPath
//!   volumes (volume "v")` — [`enforce_message`];
//! * warn (a `Warning` header) and audit (the `pod-security.kubernetes.io/audit-violations`
//!   audit annotation): `would violate PodSecurity "restricted:latest": ...` —
//!   [`warn_message`].
//!
//! Each violation reads `reason (detail)`, joined by ", " ([`summary`]).

use std::collections::BTreeSet;
use std::fmt;

use serde_json::{Map, Value};

use crate::semantic::Cause;

/// The Kubernetes minor version Drover serves (v1.32): what `latest` means, and the newest
/// policy version evaluated.
pub const LATEST_MINOR: u32 = 32;

/// The label prefix of the namespace policy labels.
pub const LABEL_PREFIX: &str = "pod-security.kubernetes.io/";
pub const ENFORCE_LABEL: &str = "pod-security.kubernetes.io/enforce";
pub const ENFORCE_VERSION_LABEL: &str = "pod-security.kubernetes.io/enforce-version";
pub const AUDIT_LABEL: &str = "pod-security.kubernetes.io/audit";
pub const AUDIT_VERSION_LABEL: &str = "pod-security.kubernetes.io/audit-version";
pub const WARN_LABEL: &str = "pod-security.kubernetes.io/warn";
pub const WARN_VERSION_LABEL: &str = "pod-security.kubernetes.io/warn-version";
/// The audit annotation that carries the audit-mode message ([`warn_message`]).
pub const AUDIT_VIOLATIONS_ANNOTATION: &str = "pod-security.kubernetes.io/audit-violations";
/// The audit annotation that names the enforced policy (`baseline:latest`).
pub const ENFORCE_POLICY_ANNOTATION: &str = "pod-security.kubernetes.io/enforce-policy";

/// A Pod Security Standards level, from least to most restrictive (so `Ord` compares
/// strictness).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    Privileged,
    Baseline,
    Restricted,
}

impl Level {
    /// `privileged`, `baseline` or `restricted`, exactly (upstream compares case-sensitively).
    pub fn parse(s: &str) -> Option<Level> {
        match s {
            "privileged" => Some(Level::Privileged),
            "baseline" => Some(Level::Baseline),
            "restricted" => Some(Level::Restricted),
            _ => None,
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Level::Privileged => "privileged",
            Level::Baseline => "baseline",
            Level::Restricted => "restricted",
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A policy version: `v1.N` or `latest`. Ordered as upstream orders them: by minor version,
/// `latest` newer than any.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Version {
    /// `v1.N`.
    V1(u64),
    /// `latest`: the newest policy this server knows ([`LATEST_MINOR`]).
    Latest,
}

impl Version {
    /// `latest`, or `v1.N` with N a decimal number without leading zeros (`v1.0`, `v1.32`), as
    /// upstream's `^v1\.([0-9]|[1-9][0-9]*)$`.
    pub fn parse(s: &str) -> Option<Version> {
        if s == "latest" {
            return Some(Version::Latest);
        }
        let minor = s.strip_prefix("v1.")?;
        let digits_ok = !minor.is_empty()
            && minor.bytes().all(|b| b.is_ascii_digit())
            && (minor.len() == 1 || !minor.starts_with('0'));
        if !digits_ok {
            return None;
        }
        // Upstream reads N as a Go int: any value up to i64::MAX.
        let n: i64 = minor.parse().ok()?;
        Some(Version::V1(n as u64))
    }

    /// The minor version whose checks are evaluated: `latest` and versions newer than this
    /// server are [`LATEST_MINOR`].
    pub fn effective_minor(&self) -> u32 {
        match *self {
            Version::V1(m) => m.min(u64::from(LATEST_MINOR)) as u32,
            Version::Latest => LATEST_MINOR,
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Version::V1(m) => write!(f, "v1.{m}"),
            Version::Latest => f.write_str("latest"),
        }
    }
}

/// A level at a version; displays as upstream does, `baseline:latest`, `restricted:v1.30`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LevelVersion {
    pub level: Level,
    pub version: Version,
}

impl LevelVersion {
    pub const fn new(level: Level, version: Version) -> LevelVersion {
        LevelVersion { level, version }
    }

    /// Whether both evaluate the same: both privileged (whatever the version), or the same
    /// level and version (upstream's `Equivalent`).
    pub fn equivalent(&self, other: &LevelVersion) -> bool {
        (self.level == Level::Privileged && other.level == Level::Privileged) || self == other
    }
}

impl fmt::Display for LevelVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.level, self.version)
    }
}

/// A namespace's policy: the level and version each mode evaluates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    pub enforce: LevelVersion,
    pub audit: LevelVersion,
    pub warn: LevelVersion,
}

impl Default for Policy {
    /// `privileged:latest` for every mode: the defaults of kube-apiserver's PodSecurity plugin
    /// when its configuration sets none.
    fn default() -> Policy {
        let p = LevelVersion::new(Level::Privileged, Version::Latest);
        Policy {
            enforce: p,
            audit: p,
            warn: p,
        }
    }
}

impl Policy {
    /// Whether no mode checks anything.
    pub fn fully_privileged(&self) -> bool {
        self.enforce.level == Level::Privileged
            && self.audit.level == Level::Privileged
            && self.warn.level == Level::Privileged
    }
}

/// The policy a namespace's labels choose (`pod-security.kubernetes.io/{enforce,audit,warn}`
/// and their `-version`), `default` for what they leave unset. See [`policy_with_errors`] for
/// how invalid values are taken.
pub fn policy(namespace_labels: Option<&Map<String, Value>>, default: &Policy) -> Policy {
    policy_with_errors(namespace_labels, default).0
}

/// [`policy`], and the labels it could not parse, as upstream's `PolicyToEvaluate`:
///
/// * an invalid `enforce` level enforces `restricted` (fail closed);
/// * an invalid `audit` or `warn` level is `privileged` (fail open: nothing audited or warned);
/// * an invalid version is `latest`;
/// * when `enforce` is set (validly) and `warn` is not, warn takes the enforce level if it is
///   stricter than the default warn level, and its version too unless `warn-version` is set.
///
/// A valid policy always comes back. The errors are worded as Kubernetes words them
/// (`metadata.labels[pod-security.kubernetes.io/enforce]: Invalid value: "foo": must be one of
/// privileged, baseline, restricted`): upstream refuses to create a namespace with invalid
/// labels, or to update one when the update changes the errors (422 Invalid, with these
/// causes); a pod in a namespace that has them is still evaluated (with the values above) and
/// its audit event gets the annotation `error: Failed to parse policy: <errors>`.
pub fn policy_with_errors(
    namespace_labels: Option<&Map<String, Value>>,
    default: &Policy,
) -> (Policy, Vec<Cause>) {
    let mut p = *default;
    let mut errors = Vec::new();
    let Some(labels) = namespace_labels else {
        return (p, errors);
    };
    let label = |key: &str| labels.get(key).and_then(Value::as_str);

    // Upstream's order, which is the order of the errors: enforce, enforce-version, audit,
    // audit-version, warn, warn-version.
    let mut has_enforce_level = false;
    if let Some(v) = label(ENFORCE_LABEL) {
        let l = parse_level(ENFORCE_LABEL, v, &mut errors);
        has_enforce_level = l.is_some();
        p.enforce.level = l.unwrap_or(Level::Restricted); // fail closed
    }
    if let Some(v) = label(ENFORCE_VERSION_LABEL) {
        p.enforce.version = parse_version(ENFORCE_VERSION_LABEL, v, &mut errors);
    }
    if let Some(v) = label(AUDIT_LABEL) {
        p.audit.level = parse_level(AUDIT_LABEL, v, &mut errors).unwrap_or(Level::Privileged);
    }
    if let Some(v) = label(AUDIT_VERSION_LABEL) {
        p.audit.version = parse_version(AUDIT_VERSION_LABEL, v, &mut errors);
    }
    let has_warn_level = label(WARN_LABEL).is_some();
    if let Some(v) = label(WARN_LABEL) {
        p.warn.level = parse_level(WARN_LABEL, v, &mut errors).unwrap_or(Level::Privileged);
    }
    let has_warn_version = label(WARN_VERSION_LABEL).is_some();
    if let Some(v) = label(WARN_VERSION_LABEL) {
        p.warn.version = parse_version(WARN_VERSION_LABEL, v, &mut errors);
    }

    // Warn defaults to an explicitly set, stricter enforce level.
    if !has_warn_level && has_enforce_level && p.enforce.level > p.warn.level {
        p.warn.level = p.enforce.level;
        if !has_warn_version {
            p.warn.version = p.enforce.version;
        }
    }
    (p, errors)
}

fn parse_level(key: &str, value: &str, errors: &mut Vec<Cause>) -> Option<Level> {
    let l = Level::parse(value);
    if l.is_none() {
        errors.push(invalid_label(
            key,
            value,
            "must be one of privileged, baseline, restricted",
        ));
    }
    l
}

fn parse_version(key: &str, value: &str, errors: &mut Vec<Cause>) -> Version {
    Version::parse(value).unwrap_or_else(|| {
        errors.push(invalid_label(key, value, r#"must be "latest" or "v1.x""#));
        Version::Latest
    })
}

fn invalid_label(key: &str, value: &str, why: &str) -> Cause {
    Cause {
        field: format!("metadata.labels[{key}]"),
        reason: "FieldValueInvalid",
        message: format!("Invalid value: {}: {why}", go_quote(value)),
    }
}

/// One failed check: upstream's forbidden reason and detail, e.g. reason `host namespaces`,
/// detail `hostNetwork=true`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub reason: String,
    pub detail: String,
}

impl Violation {
    fn new(reason: impl Into<String>, detail: impl Into<String>) -> Violation {
        Violation {
            reason: reason.into(),
            detail: detail.into(),
        }
    }
}

impl fmt::Display for Violation {
    /// `reason (detail)`, or `reason` alone when the detail is empty.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.detail.is_empty() {
            f.write_str(&self.reason)
        } else {
            write!(f, "{} ({})", self.reason, self.detail)
        }
    }
}

/// Every check of `level` at `latest` that the pod fails, in upstream's order. `metadata` is
/// the pod's (or pod template's) metadata, read for the annotations some checks look at;
/// `pod_spec` its spec. Either may be `Null`.
pub fn check(level: Level, metadata: &Value, pod_spec: &Value) -> Vec<Violation> {
    evaluate(
        LevelVersion::new(level, Version::Latest),
        metadata,
        pod_spec,
    )
}

/// [`check`] at a pinned version (`baseline:v1.22`): the checks as that Kubernetes release had
/// them; versions newer than this server are evaluated as [`LATEST_MINOR`].
pub fn evaluate(lv: LevelVersion, metadata: &Value, pod_spec: &Value) -> Vec<Violation> {
    if lv.level == Level::Privileged {
        return Vec::new();
    }
    let minor = lv.version.effective_minor();
    let pod = Pod {
        meta: metadata,
        spec: pod_spec,
    };
    CHECKS
        .iter()
        .filter(|c| minor >= c.since)
        .filter(|c| match (lv.level, c.level) {
            (Level::Baseline, Level::Restricted) => false,
            (Level::Restricted, Level::Baseline) => c.replaced_at.is_none_or(|at| minor < at),
            _ => true,
        })
        .filter_map(|c| (c.run)(&pod, minor))
        .collect()
}

/// The violations as upstream's `ForbiddenDetail`: `reason (detail)`, joined by ", ".
pub fn summary(violations: &[Violation]) -> String {
    violations
        .iter()
        .map(Violation::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The reasons alone, joined by ", " (upstream's `ForbiddenReason`, which the warnings of a
/// namespace label change list per pod: `web-0 (and 2 other pods): host namespaces,
/// privileged`).
pub fn reasons(violations: &[Violation]) -> String {
    violations
        .iter()
        .map(|v| v.reason.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The enforce-mode message: `violates PodSecurity "baseline:latest": host namespaces
/// (hostNetwork=true), hostPath volumes (volume "v")`. kube-apiserver refuses the request with
/// it as a Forbidden error (`pods "p" is forbidden: violates PodSecurity ...`).
pub fn enforce_message(lv: LevelVersion, violations: &[Violation]) -> String {
    format!(
        "violates PodSecurity {}: {}",
        go_quote(&lv.to_string()),
        summary(violations)
    )
}

/// The warn- and audit-mode message: `would violate PodSecurity "restricted:latest":
/// allowPrivilegeEscalation != false (container "c" must set
/// securityContext.allowPrivilegeEscalation=false), ...`.
pub fn warn_message(lv: LevelVersion, violations: &[Violation]) -> String {
    format!(
        "would violate PodSecurity {}: {}",
        go_quote(&lv.to_string()),
        summary(violations)
    )
}

static NULL: Value = Value::Null;

/// The pod metadata and spec that PodSecurity evaluates in an object of `resource` (plural
/// resource name, e.g. `deployments`; the kind, e.g. `Deployment`, is accepted too): the pod's
/// own for pods; `template` for PodTemplates; `spec.template` for ReplicationControllers,
/// ReplicaSets, Deployments, StatefulSets, DaemonSets and Jobs; `spec.jobTemplate.spec.template`
/// for CronJobs. None for other resources, or when the object has no template (upstream then
/// skips the evaluation). A missing metadata or spec inside a template is `Null`, which the
/// checks read as empty.
pub fn pod_template<'a>(resource: &str, obj: &'a Value) -> Option<(&'a Value, &'a Value)> {
    let template = match resource {
        "pods" | "Pod" => {
            return Some((present(obj, "metadata"), present(obj, "spec")));
        }
        "podtemplates" | "PodTemplate" => obj.get("template"),
        "replicationcontrollers"
        | "ReplicationController"
        | "replicasets"
        | "ReplicaSet"
        | "deployments"
        | "Deployment"
        | "statefulsets"
        | "StatefulSet"
        | "daemonsets"
        | "DaemonSet"
        | "jobs"
        | "Job" => obj.get("spec").and_then(|s| s.get("template")),
        "cronjobs" | "CronJob" => obj
            .get("spec")
            .and_then(|s| s.get("jobTemplate"))
            .and_then(|j| j.get("spec"))
            .and_then(|s| s.get("template")),
        _ => return None,
    };
    let template = template.filter(|t| t.is_object())?;
    Some((present(template, "metadata"), present(template, "spec")))
}

fn present<'a>(obj: &'a Value, key: &str) -> &'a Value {
    obj.get(key).unwrap_or(&NULL)
}

// ---------------------------------------------------------------------------------------------
// The checks.

struct Pod<'a> {
    meta: &'a Value,
    spec: &'a Value,
}

impl<'a> Pod<'a> {
    /// initContainers, containers, ephemeralContainers, in that order.
    fn containers(&self) -> impl Iterator<Item = &'a Value> {
        let spec = self.spec;
        ["initContainers", "containers", "ephemeralContainers"]
            .into_iter()
            .flat_map(move |k| spec.get(k).and_then(Value::as_array).into_iter().flatten())
    }

    /// `spec.securityContext.<path>`, if set (not null).
    fn pod_sc(&self, path: &[&str]) -> Option<&'a Value> {
        get(self.spec, &[&["securityContext"], path].concat())
    }

    fn windows(&self) -> bool {
        get(self.spec, &["os", "name"]).and_then(Value::as_str) == Some("windows")
    }

    fn annotations(&self) -> impl Iterator<Item = (&'a str, &'a str)> {
        self.meta
            .get("annotations")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
            .filter_map(|(k, v)| Some((k.as_str(), v.as_str()?)))
    }

    fn annotation(&self, key: &str) -> Option<&'a str> {
        get(self.meta, &["annotations", key]).and_then(Value::as_str)
    }
}

/// The value at `path` under `v`, if every step is set and the value is not null (a Go nil
/// pointer).
fn get<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter()
        .try_fold(v, |v, k| v.get(*k))
        .filter(|v| !v.is_null())
}

/// `container.securityContext.<path>`, if set.
fn csc<'a>(c: &'a Value, path: &[&str]) -> Option<&'a Value> {
    get(c, &[&["securityContext"], path].concat())
}

fn name(c: &Value) -> &str {
    c.get("name").and_then(Value::as_str).unwrap_or("")
}

fn str_of(v: Option<&Value>) -> &str {
    v.and_then(Value::as_str).unwrap_or("")
}

fn is_true(v: Option<&Value>) -> bool {
    v.and_then(Value::as_bool) == Some(true)
}

fn strings(v: Option<&Value>) -> impl Iterator<Item = &str> {
    v.and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
}

/// `"a", "b"`: upstream's joinQuote (no escaping inside).
fn join_quote<S: AsRef<str>>(items: impl IntoIterator<Item = S>) -> String {
    let items: Vec<String> = items
        .into_iter()
        .map(|s| format!("\"{}\"", s.as_ref()))
        .collect();
    items.join(", ")
}

fn plural<'s>(singular: &'s str, plural: &'s str, n: usize) -> &'s str {
    if n == 1 {
        singular
    } else {
        plural
    }
}

/// `container "a"` / `containers "a", "b"`.
fn containers_phrase(names: &[&str]) -> String {
    format!(
        "{} {}",
        plural("container", "containers", names.len()),
        join_quote(names)
    )
}

/// A string quoted as Go's `%q` quotes it (for the ASCII escapes that matter here).
fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            // Not printable to Go: other controls, spaces but ' ', common format characters.
            c if c.is_control()
                || c.is_whitespace()
                || matches!(
                    c,
                    '\u{ad}' | '\u{200b}'..='\u{200f}' | '\u{2060}' | '\u{feff}'
                ) =>
            {
                out.push_str(&format!("\\u{:04x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

type CheckFn = fn(&Pod, u32) -> Option<Violation>;

struct Check {
    level: Level,
    /// The first minor version that has the check.
    since: u32,
    /// For a baseline check: the minor version from which a restricted check replaces it at the
    /// restricted level.
    replaced_at: Option<u32>,
    run: CheckFn,
}

/// Upstream's order: baseline check ids sorted, then restricted ones sorted.
const CHECKS: &[Check] = &[
    // baseline
    Check::baseline(0, app_armor_profile), // appArmorProfile
    Check::baseline_replaced(0, 22, capabilities_baseline), // capabilities_baseline
    Check::baseline(0, host_namespaces),   // hostNamespaces
    Check::baseline_replaced(0, 0, host_path_volumes), // hostPathVolumes
    Check::baseline(0, host_ports),        // hostPorts
    Check::baseline(0, privileged),        // privileged
    Check::baseline(0, proc_mount),        // procMount
    Check::baseline(0, se_linux_options),  // seLinuxOptions
    Check::baseline_replaced(0, 19, seccomp_baseline), // seccompProfile_baseline
    Check::baseline(0, sysctls),           // sysctls
    Check::baseline(0, windows_host_process), // windowsHostProcess
    // restricted
    Check::restricted(8, allow_privilege_escalation), // allowPrivilegeEscalation
    Check::restricted(22, capabilities_restricted),   // capabilities_restricted
    Check::restricted(0, restricted_volumes),         // restrictedVolumes
    Check::restricted(0, run_as_non_root),            // runAsNonRoot
    Check::restricted(23, run_as_user),               // runAsUser
    Check::restricted(19, seccomp_restricted),        // seccompProfile_restricted
];

impl Check {
    const fn baseline(since: u32, run: CheckFn) -> Check {
        Check {
            level: Level::Baseline,
            since,
            replaced_at: None,
            run,
        }
    }
    const fn baseline_replaced(since: u32, replaced_at: u32, run: CheckFn) -> Check {
        Check {
            level: Level::Baseline,
            since,
            replaced_at: Some(replaced_at),
            run,
        }
    }
    const fn restricted(since: u32, run: CheckFn) -> Check {
        Check {
            level: Level::Restricted,
            since,
            replaced_at: None,
            run,
        }
    }
}

/// "pod", then `containers "a", "b"`, joined by " and ".
fn setters(pod: bool, containers: &[&str]) -> String {
    let mut s = Vec::new();
    if pod {
        s.push("pod".to_string());
    }
    if !containers.is_empty() {
        s.push(containers_phrase(containers));
    }
    s.join(" and ")
}

fn host_namespaces(pod: &Pod, _: u32) -> Option<Violation> {
    let set: Vec<String> = ["hostNetwork", "hostPID", "hostIPC"]
        .into_iter()
        .filter(|k| is_true(pod.spec.get(*k)))
        .map(|k| format!("{k}=true"))
        .collect();
    (!set.is_empty()).then(|| Violation::new("host namespaces", set.join(", ")))
}

fn privileged(pod: &Pod, _: u32) -> Option<Violation> {
    let bad: Vec<&str> = pod
        .containers()
        .filter(|c| is_true(csc(c, &["privileged"])))
        .map(name)
        .collect();
    (!bad.is_empty()).then(|| {
        Violation::new(
            "privileged",
            format!(
                "{} must not set securityContext.privileged=true",
                containers_phrase(&bad)
            ),
        )
    })
}

const BASELINE_CAPABILITIES: &[&str] = &[
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

fn capabilities_baseline(pod: &Pod, _: u32) -> Option<Violation> {
    let mut bad = Vec::new();
    let mut caps = BTreeSet::new();
    for c in pod.containers() {
        let mut valid = true;
        for cap in strings(csc(c, &["capabilities", "add"])) {
            if !BASELINE_CAPABILITIES.contains(&cap) {
                valid = false;
                caps.insert(cap);
            }
        }
        if !valid {
            bad.push(name(c));
        }
    }
    (!bad.is_empty()).then(|| {
        Violation::new(
            "non-default capabilities",
            format!(
                "{} must not include {} in securityContext.capabilities.add",
                containers_phrase(&bad),
                join_quote(caps)
            ),
        )
    })
}

fn host_path_volumes(pod: &Pod, _: u32) -> Option<Violation> {
    let bad: Vec<&str> = volumes(pod)
        .filter(|v| get(v, &["hostPath"]).is_some())
        .map(name)
        .collect();
    (!bad.is_empty()).then(|| {
        Violation::new(
            "hostPath volumes",
            format!(
                "{} {}",
                plural("volume", "volumes", bad.len()),
                join_quote(&bad)
            ),
        )
    })
}

fn volumes<'a>(pod: &Pod<'a>) -> impl Iterator<Item = &'a Value> {
    pod.spec
        .get("volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

fn host_ports(pod: &Pod, _: u32) -> Option<Violation> {
    let mut bad = Vec::new();
    // Upstream collects the ports as strings in a string set: sorted as strings.
    let mut ports = BTreeSet::new();
    for c in pod.containers() {
        let mut valid = true;
        for p in c
            .get("ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let hp = p.get("hostPort").and_then(Value::as_i64).unwrap_or(0);
            if hp != 0 {
                valid = false;
                ports.insert(hp.to_string());
            }
        }
        if !valid {
            bad.push(name(c));
        }
    }
    (!bad.is_empty()).then(|| {
        Violation::new(
            "hostPort",
            format!(
                "{} {} {} {}",
                containers_phrase(&bad),
                plural("uses", "use", bad.len()),
                plural("hostPort", "hostPorts", ports.len()),
                ports.into_iter().collect::<Vec<_>>().join(", ")
            ),
        )
    })
}

fn app_armor_profile(pod: &Pod, _: u32) -> Option<Violation> {
    let allowed_type = |t: &str| matches!(t, "RuntimeDefault" | "Localhost");
    let mut bad_values = BTreeSet::new();
    let mut bad_pod = false;
    if let Some(p) = pod.pod_sc(&["appArmorProfile"]) {
        let t = str_of(p.get("type"));
        if !allowed_type(t) {
            bad_pod = true;
            bad_values.insert(t.to_string());
        }
    }
    let mut bad_containers = Vec::new();
    for c in pod.containers() {
        if let Some(p) = csc(c, &["appArmorProfile"]) {
            let t = str_of(p.get("type"));
            if !allowed_type(t) {
                bad_containers.push(name(c));
                bad_values.insert(t.to_string());
            }
        }
    }
    let mut who = vec![];
    let s = setters(bad_pod, &bad_containers);
    if !s.is_empty() {
        who.push(s);
    }

    const PREFIX: &str = "container.apparmor.security.beta.kubernetes.io/";
    let mut annotations: Vec<String> = pod
        .annotations()
        .filter(|(k, v)| {
            k.starts_with(PREFIX)
                && !(v.is_empty() || *v == "runtime/default" || v.starts_with("localhost/"))
        })
        .map(|(k, v)| format!("{k}={}", go_quote(v)))
        .collect();
    annotations.sort();
    let mut values: Vec<String> = bad_values.into_iter().collect();
    if !annotations.is_empty() {
        who.push(plural("annotation", "annotations", annotations.len()).to_string());
        values.extend(annotations);
    }
    (!who.is_empty()).then(|| {
        Violation::new(
            plural(
                "forbidden AppArmor profile",
                "forbidden AppArmor profiles",
                values.len(),
            ),
            format!(
                "{} must not set AppArmor profile type to {}",
                who.join(" and "),
                join_quote(&values)
            ),
        )
    })
}

fn se_linux_options(pod: &Pod, minor: u32) -> Option<Violation> {
    let allowed: &[&str] = if minor >= 31 {
        &[
            "",
            "container_t",
            "container_init_t",
            "container_kvm_t",
            "container_engine_t",
        ]
    } else {
        &["", "container_t", "container_init_t", "container_kvm_t"]
    };
    let mut bad_types = BTreeSet::new();
    let (mut set_user, mut set_role) = (false, false);
    let mut valid = |opts: &Value| {
        let mut ok = true;
        let t = str_of(opts.get("type"));
        if !allowed.contains(&t) {
            ok = false;
            bad_types.insert(t.to_string());
        }
        if !str_of(opts.get("user")).is_empty() {
            ok = false;
            set_user = true;
        }
        if !str_of(opts.get("role")).is_empty() {
            ok = false;
            set_role = true;
        }
        ok
    };
    let bad_pod = pod.pod_sc(&["seLinuxOptions"]).is_some_and(|o| !valid(o));
    let bad_containers: Vec<&str> = pod
        .containers()
        .filter(|c| csc(c, &["seLinuxOptions"]).is_some_and(|o| !valid(o)))
        .map(name)
        .collect();
    if !bad_pod && bad_containers.is_empty() {
        return None;
    }
    let mut data = Vec::new();
    if !bad_types.is_empty() {
        data.push(format!(
            "{} {}",
            plural("type", "types", bad_types.len()),
            join_quote(&bad_types)
        ));
    }
    if set_user {
        data.push("user may not be set".to_string());
    }
    if set_role {
        data.push("role may not be set".to_string());
    }
    Some(Violation::new(
        "seLinuxOptions",
        format!(
            "{} set forbidden securityContext.seLinuxOptions: {}",
            setters(bad_pod, &bad_containers),
            data.join("; ")
        ),
    ))
}

fn proc_mount(pod: &Pod, _: u32) -> Option<Violation> {
    let mut bad = Vec::new();
    let mut types = BTreeSet::new();
    for c in pod.containers() {
        if let Some(t) = csc(c, &["procMount"]) {
            let t = t.as_str().unwrap_or("");
            if t != "Default" {
                bad.push(name(c));
                types.insert(t);
            }
        }
    }
    (!bad.is_empty()).then(|| {
        Violation::new(
            "procMount",
            format!(
                "{} must not set securityContext.procMount to {}",
                containers_phrase(&bad),
                join_quote(types)
            ),
        )
    })
}

fn valid_seccomp(t: &str) -> bool {
    matches!(t, "RuntimeDefault" | "Localhost")
}

/// What a pod and its containers set as `seccompProfile.type`.
struct Seccomp<'a> {
    /// The pod sets a bad type.
    bad_pod: bool,
    /// The pod sets a good type.
    pod_set: bool,
    /// Containers that set a bad type.
    bad_containers: Vec<&'a str>,
    /// The bad types, pod's and containers'.
    bad_values: BTreeSet<&'a str>,
    /// Containers that set none.
    unset: Vec<&'a str>,
}

fn seccomp_setters<'a>(pod: &Pod<'a>) -> Seccomp<'a> {
    let mut bad_values = BTreeSet::new();
    let (mut bad_pod, mut pod_set) = (false, false);
    if let Some(p) = pod.pod_sc(&["seccompProfile"]) {
        let t = str_of(p.get("type"));
        if valid_seccomp(t) {
            pod_set = true;
        } else {
            bad_pod = true;
            bad_values.insert(t);
        }
    }
    let mut bad_containers = Vec::new();
    let mut unset = Vec::new();
    for c in pod.containers() {
        match csc(c, &["seccompProfile"]) {
            Some(p) => {
                let t = str_of(p.get("type"));
                if !valid_seccomp(t) {
                    bad_containers.push(name(c));
                    bad_values.insert(t);
                }
            }
            None => unset.push(name(c)),
        }
    }
    Seccomp {
        bad_pod,
        pod_set,
        bad_containers,
        bad_values,
        unset,
    }
}

fn explicit_seccomp_violation(s: &Seccomp) -> Option<Violation> {
    (s.bad_pod || !s.bad_containers.is_empty()).then(|| {
        Violation::new(
            "seccompProfile",
            format!(
                "{} must not set securityContext.seccompProfile.type to {}",
                setters(s.bad_pod, &s.bad_containers),
                join_quote(&s.bad_values)
            ),
        )
    })
}

fn seccomp_baseline(pod: &Pod, minor: u32) -> Option<Violation> {
    if minor < 19 {
        return seccomp_annotations(pod);
    }
    explicit_seccomp_violation(&seccomp_setters(pod))
}

/// Before v1.19, seccomp was set by the alpha annotations.
fn seccomp_annotations(pod: &Pod) -> Option<Violation> {
    const POD_KEY: &str = "seccomp.security.alpha.kubernetes.io/pod";
    const CONTAINER_PREFIX: &str = "container.seccomp.security.alpha.kubernetes.io/";
    let valid =
        |v: &str| v == "runtime/default" || v == "docker/default" || v.starts_with("localhost/");
    let mut forbidden = BTreeSet::new();
    if let Some(v) = pod.annotation(POD_KEY) {
        if !valid(v) {
            forbidden.insert(format!("{POD_KEY}={}", go_quote(v)));
        }
    }
    for c in pod.containers() {
        let key = format!("{CONTAINER_PREFIX}{}", name(c));
        if let Some(v) = pod.annotation(&key) {
            if !valid(v) {
                forbidden.insert(format!("{key}={}", go_quote(v)));
            }
        }
    }
    (!forbidden.is_empty()).then(|| {
        Violation::new(
            "seccompProfile",
            format!(
                "forbidden {} {}",
                plural("annotation", "annotations", forbidden.len()),
                forbidden.into_iter().collect::<Vec<_>>().join(", ")
            ),
        )
    })
}

fn seccomp_restricted(pod: &Pod, minor: u32) -> Option<Violation> {
    if minor >= 25 && pod.windows() {
        return None;
    }
    let s = seccomp_setters(pod);
    if let Some(v) = explicit_seccomp_violation(&s) {
        return Some(v);
    }
    (!s.pod_set && !s.unset.is_empty()).then(|| {
        Violation::new(
            "seccompProfile",
            format!(
                "pod or {} must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\"",
                containers_phrase(&s.unset)
            ),
        )
    })
}

fn safe_sysctl(name: &str, minor: u32) -> bool {
    match name {
        "kernel.shm_rmid_forced"
        | "net.ipv4.ip_local_port_range"
        | "net.ipv4.tcp_syncookies"
        | "net.ipv4.ping_group_range"
        | "net.ipv4.ip_unprivileged_port_start" => true,
        "net.ipv4.ip_local_reserved_ports" => minor >= 27,
        "net.ipv4.tcp_keepalive_time"
        | "net.ipv4.tcp_fin_timeout"
        | "net.ipv4.tcp_keepalive_intvl"
        | "net.ipv4.tcp_keepalive_probes" => minor >= 29,
        "net.ipv4.tcp_rmem" | "net.ipv4.tcp_wmem" => minor >= 32,
        _ => false,
    }
}

fn sysctls(pod: &Pod, minor: u32) -> Option<Violation> {
    let bad: Vec<&str> = pod
        .pod_sc(&["sysctls"])
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|s| str_of(s.get("name")))
        .filter(|n| !safe_sysctl(n, minor))
        .collect();
    (!bad.is_empty()).then(|| Violation::new("forbidden sysctls", bad.join(", ")))
}

fn windows_host_process(pod: &Pod, _: u32) -> Option<Violation> {
    let bad: Vec<&str> = pod
        .containers()
        .filter(|c| is_true(csc(c, &["windowsOptions", "hostProcess"])))
        .map(name)
        .collect();
    let bad_pod = is_true(pod.pod_sc(&["windowsOptions", "hostProcess"]));
    (bad_pod || !bad.is_empty()).then(|| {
        Violation::new(
            "hostProcess",
            format!(
                "{} must not set securityContext.windowsOptions.hostProcess=true",
                setters(bad_pod, &bad)
            ),
        )
    })
}

fn allow_privilege_escalation(pod: &Pod, minor: u32) -> Option<Violation> {
    if minor >= 25 && pod.windows() {
        return None;
    }
    let bad: Vec<&str> = pod
        .containers()
        .filter(|c| csc(c, &["allowPrivilegeEscalation"]).and_then(Value::as_bool) != Some(false))
        .map(name)
        .collect();
    (!bad.is_empty()).then(|| {
        Violation::new(
            "allowPrivilegeEscalation != false",
            format!(
                "{} must set securityContext.allowPrivilegeEscalation=false",
                containers_phrase(&bad)
            ),
        )
    })
}

fn capabilities_restricted(pod: &Pod, minor: u32) -> Option<Violation> {
    if minor >= 25 && pod.windows() {
        return None;
    }
    let mut missing_drop_all = Vec::new();
    let mut adding = Vec::new();
    let mut forbidden = BTreeSet::new();
    for c in pod.containers() {
        let Some(caps) = csc(c, &["capabilities"]) else {
            missing_drop_all.push(name(c));
            continue;
        };
        if !strings(caps.get("drop")).any(|d| d == "ALL") {
            missing_drop_all.push(name(c));
        }
        let mut bad = false;
        for cap in strings(caps.get("add")) {
            if cap != "NET_BIND_SERVICE" {
                bad = true;
                forbidden.insert(cap);
            }
        }
        if bad {
            adding.push(name(c));
        }
    }
    let mut details = Vec::new();
    if !missing_drop_all.is_empty() {
        details.push(format!(
            "{} must set securityContext.capabilities.drop=[\"ALL\"]",
            containers_phrase(&missing_drop_all)
        ));
    }
    if !adding.is_empty() {
        details.push(format!(
            "{} must not include {} in securityContext.capabilities.add",
            containers_phrase(&adding),
            join_quote(forbidden)
        ));
    }
    (!details.is_empty()).then(|| Violation::new("unrestricted capabilities", details.join("; ")))
}

/// The volume sources the restricted level allows (v1.32: `image` is not one).
const ALLOWED_VOLUMES: &[&str] = &[
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
];

/// The restricted volume sources upstream names, in its order of precedence; anything else is
/// "unknown".
const RESTRICTED_VOLUMES: &[&str] = &[
    "hostPath",
    "gcePersistentDisk",
    "awsElasticBlockStore",
    "gitRepo",
    "nfs",
    "iscsi",
    "glusterfs",
    "rbd",
    "flexVolume",
    "cinder",
    "cephfs",
    "flocker",
    "fc",
    "azureFile",
    "vsphereVolume",
    "quobyte",
    "azureDisk",
    "photonPersistentDisk",
    "portworxVolume",
    "scaleIO",
    "storageos",
];

fn restricted_volumes(pod: &Pod, _: u32) -> Option<Violation> {
    let mut bad = Vec::new();
    let mut types = BTreeSet::new();
    for v in volumes(pod) {
        if ALLOWED_VOLUMES.iter().any(|k| get(v, &[k]).is_some()) {
            continue;
        }
        bad.push(name(v));
        let t = RESTRICTED_VOLUMES
            .iter()
            .find(|k| get(v, &[k]).is_some())
            .copied()
            .unwrap_or("unknown");
        types.insert(t);
    }
    (!bad.is_empty()).then(|| {
        Violation::new(
            "restricted volume types",
            format!(
                "{} {} {} {} {}",
                plural("volume", "volumes", bad.len()),
                join_quote(&bad),
                plural("uses", "use", bad.len()),
                plural(
                    "restricted volume type",
                    "restricted volume types",
                    types.len()
                ),
                join_quote(types)
            ),
        )
    })
}

fn run_as_non_root(pod: &Pod, _: u32) -> Option<Violation> {
    let (mut bad_pod, mut pod_true) = (false, false);
    if let Some(v) = pod.pod_sc(&["runAsNonRoot"]).and_then(Value::as_bool) {
        if v {
            pod_true = true;
        } else {
            bad_pod = true;
        }
    }
    let mut bad = Vec::new();
    let mut unset = Vec::new();
    for c in pod.containers() {
        match csc(c, &["runAsNonRoot"]).and_then(Value::as_bool) {
            Some(false) => bad.push(name(c)),
            Some(true) => {}
            None if !pod_true => unset.push(name(c)),
            None => {}
        }
    }
    if bad_pod || !bad.is_empty() {
        return Some(Violation::new(
            "runAsNonRoot != true",
            format!(
                "{} must not set securityContext.runAsNonRoot=false",
                setters(bad_pod, &bad)
            ),
        ));
    }
    (!unset.is_empty()).then(|| {
        Violation::new(
            "runAsNonRoot != true",
            format!(
                "pod or {} must set securityContext.runAsNonRoot=true",
                containers_phrase(&unset)
            ),
        )
    })
}

fn run_as_user(pod: &Pod, _: u32) -> Option<Violation> {
    let root = |v: Option<&Value>| v.and_then(Value::as_i64) == Some(0);
    let bad_pod = root(pod.pod_sc(&["runAsUser"]));
    let bad: Vec<&str> = pod
        .containers()
        .filter(|c| root(csc(c, &["runAsUser"])))
        .map(name)
        .collect();
    (bad_pod || !bad.is_empty()).then(|| {
        Violation::new(
            "runAsUser=0",
            format!("{} must not set runAsUser=0", setters(bad_pod, &bad)),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(level: Level, spec: Value) -> Vec<(String, String)> {
        run_meta(level, json!({}), spec)
    }

    fn run_meta(level: Level, meta: Value, spec: Value) -> Vec<(String, String)> {
        check(level, &meta, &spec)
            .into_iter()
            .map(|v| (v.reason, v.detail))
            .collect()
    }

    fn one(reason: &str, detail: &str) -> Vec<(String, String)> {
        vec![(reason.to_string(), detail.to_string())]
    }

    /// A pod that meets the restricted level: the container the Kubernetes docs' restricted
    /// examples show.
    fn restricted_container(name: &str) -> Value {
        json!({
            "name": name,
            "image": "nginx",
            "securityContext": {
                "allowPrivilegeEscalation": false,
                "runAsNonRoot": true,
                "seccompProfile": {"type": "RuntimeDefault"},
                "capabilities": {"drop": ["ALL"]}
            }
        })
    }

    fn restricted_spec() -> Value {
        json!({"containers": [restricted_container("c")]})
    }

    fn with(mut spec: Value, patch: Value) -> Value {
        merge(&mut spec, patch);
        spec
    }

    fn merge(target: &mut Value, patch: Value) {
        match (target, patch) {
            (Value::Object(t), Value::Object(p)) => {
                for (k, v) in p {
                    merge(t.entry(k).or_insert(Value::Null), v);
                }
            }
            (t, p) => *t = p,
        }
    }

    /// The restricted spec with the container's securityContext patched.
    fn with_csc(patch: Value) -> Value {
        let mut spec = restricted_spec();
        merge(&mut spec["containers"][0]["securityContext"], patch);
        spec
    }

    #[test]
    fn restricted_pod_passes_every_level() {
        for level in [Level::Privileged, Level::Baseline, Level::Restricted] {
            assert_eq!(run(level, restricted_spec()), vec![], "{level}");
        }
        // Pod-level runAsNonRoot and seccompProfile cover the containers.
        let spec = json!({
            "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "Localhost", "localhostProfile": "p.json"}},
            "initContainers": [{"name": "i", "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}}}],
            "containers": [{"name": "c", "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}, "runAsUser": 1000}}],
            "volumes": [
                {"name": "a", "configMap": {"name": "x"}}, {"name": "b", "csi": {"driver": "d"}},
                {"name": "c", "downwardAPI": {}}, {"name": "d", "emptyDir": {}},
                {"name": "e", "ephemeral": {}}, {"name": "f", "persistentVolumeClaim": {"claimName": "x"}},
                {"name": "g", "projected": {}}, {"name": "h", "secret": {"secretName": "s"}}
            ]
        });
        assert_eq!(run(Level::Restricted, spec), vec![]);
    }

    #[test]
    fn privileged_checks_nothing() {
        let spec = json!({"hostNetwork": true, "containers": [{"name": "c", "securityContext": {"privileged": true}}]});
        assert_eq!(run(Level::Privileged, spec), vec![]);
    }

    #[test]
    fn host_namespaces() {
        assert_eq!(
            run(
                Level::Baseline,
                with(restricted_spec(), json!({"hostNetwork": true}))
            ),
            one("host namespaces", "hostNetwork=true")
        );
        assert_eq!(
            run(
                Level::Baseline,
                with(
                    restricted_spec(),
                    json!({"hostNetwork": true, "hostPID": true, "hostIPC": true})
                )
            ),
            one(
                "host namespaces",
                "hostNetwork=true, hostPID=true, hostIPC=true"
            )
        );
        assert_eq!(
            run(
                Level::Baseline,
                with(
                    restricted_spec(),
                    json!({"hostNetwork": false, "hostPID": false})
                )
            ),
            vec![]
        );
    }

    #[test]
    fn privileged_containers() {
        assert_eq!(
            run(Level::Baseline, with_csc(json!({"privileged": true}))),
            one(
                "privileged",
                r#"container "c" must not set securityContext.privileged=true"#
            )
        );
        let spec = json!({
            "initContainers": [{"name": "i", "securityContext": {"privileged": true}}],
            "containers": [{"name": "a", "securityContext": {"privileged": true}}, {"name": "b", "securityContext": {"privileged": false}}],
            "ephemeralContainers": [{"name": "e", "securityContext": {"privileged": true}}]
        });
        assert_eq!(
            run(Level::Baseline, spec),
            one(
                "privileged",
                r#"containers "i", "a", "e" must not set securityContext.privileged=true"#
            )
        );
        assert_eq!(
            run(Level::Baseline, with_csc(json!({"privileged": false}))),
            vec![]
        );
    }

    #[test]
    fn capabilities_baseline() {
        let spec = json!({"containers": [
            {"name": "a", "securityContext": {"capabilities": {"add": ["SYS_ADMIN", "NET_RAW", "CHOWN"]}}},
            {"name": "b", "securityContext": {"capabilities": {"add": ["NET_RAW"]}}},
            {"name": "c", "securityContext": {"capabilities": {"add": ["KILL", "SYS_CHROOT", "NET_BIND_SERVICE"]}}}
        ]});
        assert_eq!(
            run(Level::Baseline, spec),
            one(
                "non-default capabilities",
                r#"containers "a", "b" must not include "NET_RAW", "SYS_ADMIN" in securityContext.capabilities.add"#
            )
        );
        let ok = json!({"containers": [{"name": "a", "securityContext": {"capabilities": {"add": BASELINE_CAPABILITIES}}}]});
        assert_eq!(run(Level::Baseline, ok), vec![]);
    }

    #[test]
    fn host_path_volumes() {
        let spec = with(
            restricted_spec(),
            json!({"volumes": [{"name": "v", "hostPath": {"path": "/var/run"}}, {"name": "e", "emptyDir": {}}]}),
        );
        assert_eq!(
            run(Level::Baseline, spec.clone()),
            one("hostPath volumes", r#"volume "v""#)
        );
        // At restricted, restrictedVolumes replaces the hostPath check.
        assert_eq!(
            run(Level::Restricted, spec),
            one(
                "restricted volume types",
                r#"volume "v" uses restricted volume type "hostPath""#
            )
        );
        let two = json!({"volumes": [{"name": "a", "hostPath": {"path": "/"}}, {"name": "b", "hostPath": {"path": "/x"}}]});
        assert_eq!(
            run(Level::Baseline, two),
            one("hostPath volumes", r#"volumes "a", "b""#)
        );
        let ok = json!({"volumes": [{"name": "n", "nfs": {"server": "s", "path": "/"}}]});
        assert_eq!(run(Level::Baseline, ok), vec![]);
    }

    #[test]
    fn host_ports() {
        let spec = json!({"containers": [
            {"name": "a", "ports": [{"containerPort": 80}]},
            {"name": "b", "ports": [{"containerPort": 80, "hostPort": 8080}]}
        ]});
        assert_eq!(
            run(Level::Baseline, spec),
            one("hostPort", r#"container "b" uses hostPort 8080"#)
        );
        let spec = json!({"containers": [
            {"name": "a", "ports": [{"containerPort": 1, "hostPort": 0}]},
            {"name": "b", "ports": [{"containerPort": 1, "hostPort": 10}, {"containerPort": 2, "hostPort": 9}]},
            {"name": "c", "ports": [{"containerPort": 3, "hostPort": 30}, {"containerPort": 2, "hostPort": 10}]}
        ]});
        // Ports sort as strings, as upstream's string set does.
        assert_eq!(
            run(Level::Baseline, spec),
            one("hostPort", r#"containers "b", "c" use hostPorts 10, 30, 9"#)
        );
        let ok =
            json!({"containers": [{"name": "a", "ports": [{"containerPort": 80, "hostPort": 0}]}]});
        assert_eq!(run(Level::Baseline, ok), vec![]);
    }

    #[test]
    fn app_armor() {
        let spec = with(
            restricted_spec(),
            json!({"securityContext": {"appArmorProfile": {"type": "Unconfined"}}}),
        );
        assert_eq!(
            run(Level::Baseline, spec),
            one(
                "forbidden AppArmor profile",
                r#"pod must not set AppArmor profile type to "Unconfined""#
            )
        );
        assert_eq!(
            run(
                Level::Baseline,
                with_csc(json!({"appArmorProfile": {"type": "Unconfined"}}))
            ),
            one(
                "forbidden AppArmor profile",
                r#"container "c" must not set AppArmor profile type to "Unconfined""#
            )
        );
        let meta = json!({"annotations": {
            "container.apparmor.security.beta.kubernetes.io/": "bogus",
            "container.apparmor.security.beta.kubernetes.io/a": "",
            "container.apparmor.security.beta.kubernetes.io/b": "runtime/default",
            "container.apparmor.security.beta.kubernetes.io/c": "localhost/",
            "container.apparmor.security.beta.kubernetes.io/d": "localhost/foo",
            "container.apparmor.security.beta.kubernetes.io/e": "unconfined",
            "container.apparmor.security.beta.kubernetes.io/f": "unknown"
        }});
        assert_eq!(
            run_meta(Level::Baseline, meta, restricted_spec()),
            one(
                "forbidden AppArmor profiles",
                concat!(
                    r#"annotations must not set AppArmor profile type to "#,
                    r#""container.apparmor.security.beta.kubernetes.io/="bogus"", "#,
                    r#""container.apparmor.security.beta.kubernetes.io/e="unconfined"", "#,
                    r#""container.apparmor.security.beta.kubernetes.io/f="unknown"""#
                )
            )
        );
        let both = json!({
            "securityContext": {"appArmorProfile": {"type": "Unconfined"}},
            "containers": [{"name": "a", "securityContext": {"appArmorProfile": {"type": "Bogus"}}}]
        });
        let meta = json!({"annotations": {"container.apparmor.security.beta.kubernetes.io/a": "unconfined"}});
        assert_eq!(
            run_meta(Level::Baseline, meta, both),
            one(
                "forbidden AppArmor profiles",
                r#"pod and container "a" and annotation must not set AppArmor profile type to "Bogus", "Unconfined", "container.apparmor.security.beta.kubernetes.io/a="unconfined"""#
            )
        );
        let ok = with(
            with_csc(json!({"appArmorProfile": {"type": "Localhost", "localhostProfile": "p"}})),
            json!({"securityContext": {"appArmorProfile": {"type": "RuntimeDefault"}}}),
        );
        let meta = json!({"annotations": {"container.apparmor.security.beta.kubernetes.io/c": "runtime/default"}});
        assert_eq!(run_meta(Level::Restricted, meta, ok), vec![]);
    }

    #[test]
    fn se_linux() {
        assert_eq!(
            run(
                Level::Baseline,
                with_csc(json!({"seLinuxOptions": {"type": "spc_t"}}))
            ),
            one(
                "seLinuxOptions",
                r#"container "c" set forbidden securityContext.seLinuxOptions: type "spc_t""#
            )
        );
        let spec = json!({
            "securityContext": {"seLinuxOptions": {"type": "foo", "user": "u", "role": "r"}},
            "containers": [
                {"name": "e", "securityContext": {"seLinuxOptions": {"type": "bar"}}},
                {"name": "f", "securityContext": {"seLinuxOptions": {"user": "u"}}},
                {"name": "g", "securityContext": {"seLinuxOptions": {"role": "r"}}},
                {"name": "h", "securityContext": {"seLinuxOptions": {"type": "container_t", "level": "s0:c1"}}}
            ]
        });
        assert_eq!(
            run(Level::Baseline, spec),
            one(
                "seLinuxOptions",
                r#"pod and containers "e", "f", "g" set forbidden securityContext.seLinuxOptions: types "bar", "foo"; user may not be set; role may not be set"#
            )
        );
        assert_eq!(
            run(
                Level::Baseline,
                with(
                    restricted_spec(),
                    json!({"securityContext": {"seLinuxOptions": {"role": "r"}}})
                )
            ),
            one(
                "seLinuxOptions",
                "pod set forbidden securityContext.seLinuxOptions: role may not be set"
            )
        );
        for t in [
            "",
            "container_t",
            "container_init_t",
            "container_kvm_t",
            "container_engine_t",
        ] {
            assert_eq!(
                run(
                    Level::Restricted,
                    with_csc(json!({"seLinuxOptions": {"type": t}}))
                ),
                vec![],
                "{t}"
            );
        }
        // container_engine_t came with v1.31.
        let engine = with_csc(json!({"seLinuxOptions": {"type": "container_engine_t"}}));
        let v30 = LevelVersion::new(Level::Baseline, Version::V1(30));
        assert_eq!(
            evaluate(v30, &Value::Null, &engine),
            vec![Violation::new(
                "seLinuxOptions",
                r#"container "c" set forbidden securityContext.seLinuxOptions: type "container_engine_t""#
            )]
        );
    }

    #[test]
    fn proc_mount() {
        assert_eq!(
            run(Level::Baseline, with_csc(json!({"procMount": "Unmasked"}))),
            one(
                "procMount",
                r#"container "c" must not set securityContext.procMount to "Unmasked""#
            )
        );
        assert_eq!(
            run(Level::Restricted, with_csc(json!({"procMount": "Default"}))),
            vec![]
        );
        // v1.32 does not relax it for user-namespaced pods.
        let spec = with(
            with_csc(json!({"procMount": "Unmasked"})),
            json!({"hostUsers": false}),
        );
        assert_eq!(run(Level::Baseline, spec).len(), 1);
    }

    #[test]
    fn seccomp_baseline() {
        let spec = with(
            restricted_spec(),
            json!({"securityContext": {"seccompProfile": {"type": "Unconfined"}}}),
        );
        assert_eq!(
            run(Level::Baseline, spec),
            one(
                "seccompProfile",
                r#"pod must not set securityContext.seccompProfile.type to "Unconfined""#
            )
        );
        let spec = json!({
            "securityContext": {"seccompProfile": {"type": "Unconfined"}},
            "containers": [
                {"name": "c", "securityContext": {"seccompProfile": {"type": "Unconfined"}}},
                {"name": "d", "securityContext": {"seccompProfile": {"type": "Unconfined"}}},
                {"name": "e"}
            ]
        });
        assert_eq!(
            run(Level::Baseline, spec),
            one(
                "seccompProfile",
                r#"pod and containers "c", "d" must not set securityContext.seccompProfile.type to "Unconfined""#
            )
        );
        // Baseline does not require a profile.
        assert_eq!(
            run(Level::Baseline, json!({"containers": [{"name": "c"}]})),
            vec![]
        );
        // Before v1.19, the alpha annotations.
        let meta = json!({"annotations": {
            "seccomp.security.alpha.kubernetes.io/pod": "unconfined",
            "container.seccomp.security.alpha.kubernetes.io/a": "unconfined",
            "container.seccomp.security.alpha.kubernetes.io/b": "unknown",
            "container.seccomp.security.alpha.kubernetes.io/c": "runtime/default"
        }});
        let spec = json!({"containers": [{"name": "a"}, {"name": "b"}, {"name": "c"}]});
        assert_eq!(
            evaluate(
                LevelVersion::new(Level::Baseline, Version::V1(18)),
                &meta,
                &spec
            ),
            vec![Violation::new(
                "seccompProfile",
                r#"forbidden annotations container.seccomp.security.alpha.kubernetes.io/a="unconfined", container.seccomp.security.alpha.kubernetes.io/b="unknown", seccomp.security.alpha.kubernetes.io/pod="unconfined""#
            )]
        );
        assert_eq!(check(Level::Baseline, &meta, &spec), vec![]);
    }

    #[test]
    fn sysctls() {
        let spec = with(
            restricted_spec(),
            json!({"securityContext": {"sysctls": [
                {"name": "kernel.shm_rmid_forced", "value": "0"},
                {"name": "kernel.msgmax", "value": "65536"},
                {"name": "net.core.somaxconn", "value": "1024"}
            ]}}),
        );
        assert_eq!(
            run(Level::Baseline, spec),
            one("forbidden sysctls", "kernel.msgmax, net.core.somaxconn")
        );
        let safe = [
            "kernel.shm_rmid_forced",
            "net.ipv4.ip_local_port_range",
            "net.ipv4.ip_unprivileged_port_start",
            "net.ipv4.tcp_syncookies",
            "net.ipv4.ping_group_range",
            "net.ipv4.ip_local_reserved_ports",
            "net.ipv4.tcp_keepalive_time",
            "net.ipv4.tcp_fin_timeout",
            "net.ipv4.tcp_keepalive_intvl",
            "net.ipv4.tcp_keepalive_probes",
            "net.ipv4.tcp_rmem",
            "net.ipv4.tcp_wmem",
        ];
        let all: Vec<Value> = safe
            .iter()
            .map(|n| json!({"name": n, "value": "1"}))
            .collect();
        let spec = with(
            restricted_spec(),
            json!({"securityContext": {"sysctls": all}}),
        );
        assert_eq!(run(Level::Restricted, spec.clone()), vec![]);
        // Pinned to v1.26: only the first five.
        let v26 = LevelVersion::new(Level::Baseline, Version::V1(26));
        assert_eq!(
            evaluate(v26, &Value::Null, &spec)[0].detail,
            safe[5..].join(", ")
        );
    }

    #[test]
    fn windows_host_process() {
        let spec = json!({
            "securityContext": {"windowsOptions": {"hostProcess": true}},
            "containers": [{"name": "a", "securityContext": {"windowsOptions": {"hostProcess": true}}}, {"name": "b"}]
        });
        assert_eq!(
            run(Level::Baseline, spec),
            one(
                "hostProcess",
                r#"pod and container "a" must not set securityContext.windowsOptions.hostProcess=true"#
            )
        );
        assert_eq!(
            run(
                Level::Baseline,
                with_csc(json!({"windowsOptions": {"hostProcess": false}}))
            ),
            vec![]
        );
    }

    #[test]
    fn restricted_volume_types() {
        let mut volumes: Vec<Value> = ALLOWED_VOLUMES
            .iter()
            .enumerate()
            .map(|(i, t)| json!({"name": format!("a{}", i + 1), *t: {}}))
            .collect();
        volumes.extend(
            RESTRICTED_VOLUMES
                .iter()
                .enumerate()
                .map(|(i, t)| json!({"name": format!("b{}", i + 1), *t: {}})),
        );
        volumes.push(json!({"name": "c1"}));
        let spec = with(restricted_spec(), json!({"volumes": volumes}));
        assert_eq!(
            run(Level::Restricted, spec),
            one(
                "restricted volume types",
                concat!(
                    r#"volumes "b1", "b2", "b3", "b4", "b5", "b6", "b7", "b8", "b9", "b10", "b11", "b12", "b13", "b14", "b15", "b16", "b17", "b18", "b19", "b20", "b21", "c1""#,
                    r#" use restricted volume types "awsElasticBlockStore", "azureDisk", "azureFile", "cephfs", "cinder", "fc", "flexVolume", "flocker", "gcePersistentDisk", "gitRepo", "glusterfs", "#,
                    r#""hostPath", "iscsi", "nfs", "photonPersistentDisk", "portworxVolume", "quobyte", "rbd", "scaleIO", "storageos", "unknown", "vsphereVolume""#
                )
            )
        );
        // v1.32 has no exception for image volumes.
        let image = with(
            restricted_spec(),
            json!({"volumes": [{"name": "i", "image": {"reference": "x"}}]}),
        );
        assert_eq!(
            run(Level::Restricted, image.clone()),
            one(
                "restricted volume types",
                r#"volume "i" uses restricted volume type "unknown""#
            )
        );
        assert_eq!(run(Level::Baseline, image), vec![]);
    }

    #[test]
    fn allow_privilege_escalation() {
        let spec = json!({"containers": [
            {"name": "a", "securityContext": {"allowPrivilegeEscalation": false, "runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}, "capabilities": {"drop": ["ALL"]}}},
            {"name": "b", "securityContext": {"allowPrivilegeEscalation": true, "runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}, "capabilities": {"drop": ["ALL"]}}}
        ]});
        assert_eq!(
            run(Level::Restricted, spec.clone()),
            one(
                "allowPrivilegeEscalation != false",
                r#"container "b" must set securityContext.allowPrivilegeEscalation=false"#
            )
        );
        assert_eq!(run(Level::Baseline, spec), vec![]);
    }

    #[test]
    fn run_as_non_root() {
        assert_eq!(
            run(Level::Restricted, with_csc(json!({"runAsNonRoot": false}))),
            one(
                "runAsNonRoot != true",
                r#"container "c" must not set securityContext.runAsNonRoot=false"#
            )
        );
        let mut spec = restricted_spec();
        spec["containers"][0]["securityContext"]
            .as_object_mut()
            .unwrap()
            .remove("runAsNonRoot");
        assert_eq!(
            run(Level::Restricted, spec.clone()),
            one(
                "runAsNonRoot != true",
                r#"pod or container "c" must set securityContext.runAsNonRoot=true"#
            )
        );
        assert_eq!(
            run(
                Level::Restricted,
                with(
                    spec.clone(),
                    json!({"securityContext": {"runAsNonRoot": true}})
                )
            ),
            vec![]
        );
        assert_eq!(
            run(
                Level::Restricted,
                with(spec, json!({"securityContext": {"runAsNonRoot": false}}))
            ),
            one(
                "runAsNonRoot != true",
                "pod must not set securityContext.runAsNonRoot=false"
            )
        );
    }

    #[test]
    fn run_as_user() {
        let spec = with(
            with_csc(json!({"runAsUser": 0})),
            json!({"securityContext": {"runAsUser": 0}}),
        );
        assert_eq!(
            run(Level::Restricted, spec.clone()),
            one(
                "runAsUser=0",
                r#"pod and container "c" must not set runAsUser=0"#
            )
        );
        assert_eq!(run(Level::Baseline, spec.clone()), vec![]);
        // runAsUser came with v1.23.
        let v22 = LevelVersion::new(Level::Restricted, Version::V1(22));
        assert_eq!(evaluate(v22, &Value::Null, &spec), vec![]);
        assert_eq!(
            run(Level::Restricted, with_csc(json!({"runAsUser": 1000}))),
            vec![]
        );
    }

    #[test]
    fn seccomp_restricted() {
        let mut spec = restricted_spec();
        spec["containers"][0]["securityContext"]
            .as_object_mut()
            .unwrap()
            .remove("seccompProfile");
        assert_eq!(
            run(Level::Restricted, spec.clone()),
            one(
                "seccompProfile",
                r#"pod or container "c" must set securityContext.seccompProfile.type to "RuntimeDefault" or "Localhost""#
            )
        );
        assert_eq!(
            run(
                Level::Restricted,
                with(
                    spec.clone(),
                    json!({"securityContext": {"seccompProfile": {"type": "RuntimeDefault"}}})
                )
            ),
            vec![]
        );
        assert_eq!(
            run(
                Level::Restricted,
                with(
                    spec,
                    json!({"securityContext": {"seccompProfile": {"type": "Unconfined"}}})
                )
            ),
            one(
                "seccompProfile",
                r#"pod must not set securityContext.seccompProfile.type to "Unconfined""#
            )
        );
    }

    #[test]
    fn capabilities_restricted() {
        let spec = json!({"containers": [
            {"name": "a", "securityContext": {"capabilities": {"add": ["FOO", "BAR"]}}},
            {"name": "b", "securityContext": {"capabilities": {"add": ["BAR", "BAZ"]}}},
            {"name": "c", "securityContext": {"capabilities": {"add": ["NET_BIND_SERVICE", "CHOWN"], "drop": ["ALL", "FOO"]}}}
        ]});
        let v = check(Level::Restricted, &Value::Null, &spec);
        let caps = v
            .iter()
            .find(|v| v.reason == "unrestricted capabilities")
            .unwrap();
        assert_eq!(
            caps.detail,
            r#"containers "a", "b" must set securityContext.capabilities.drop=["ALL"]; containers "a", "b", "c" must not include "BAR", "BAZ", "CHOWN", "FOO" in securityContext.capabilities.add"#
        );
        // capabilities_restricted replaces capabilities_baseline at restricted.
        assert!(!v.iter().any(|v| v.reason == "non-default capabilities"));
        assert_eq!(
            run(
                Level::Restricted,
                with_csc(json!({"capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}}))
            ),
            vec![]
        );
        // Before v1.22, restricted used the baseline capability check.
        let v21 = LevelVersion::new(Level::Restricted, Version::V1(21));
        let reasons: Vec<String> = evaluate(v21, &Value::Null, &spec)
            .into_iter()
            .map(|v| v.reason)
            .collect();
        assert!(reasons.contains(&"non-default capabilities".to_string()));
        assert!(!reasons.contains(&"unrestricted capabilities".to_string()));
    }

    #[test]
    fn windows_pods_skip_linux_only_restricted_checks() {
        let spec = json!({"os": {"name": "windows"}, "containers": [{"name": "a", "securityContext": {"runAsNonRoot": true}}]});
        assert_eq!(run(Level::Restricted, spec), vec![]);
        let spec = json!({"os": {"name": "linux"}, "containers": [{"name": "a", "securityContext": {"runAsNonRoot": true}}]});
        assert_eq!(
            reasons(&check(Level::Restricted, &Value::Null, &spec)),
            "allowPrivilegeEscalation != false, unrestricted capabilities, seccompProfile"
        );
    }

    #[test]
    fn order_and_messages() {
        let spec = json!({
            "hostNetwork": true,
            "containers": [{"name": "c", "image": "nginx", "securityContext": {"privileged": true}}],
            "volumes": [{"name": "v", "hostPath": {"path": "/"}}]
        });
        let baseline = check(Level::Baseline, &Value::Null, &spec);
        let lv = LevelVersion::new(Level::Baseline, Version::Latest);
        assert_eq!(
            enforce_message(lv, &baseline),
            r#"violates PodSecurity "baseline:latest": host namespaces (hostNetwork=true), hostPath volumes (volume "v"), privileged (container "c" must not set securityContext.privileged=true)"#
        );
        let restricted = check(Level::Restricted, &Value::Null, &spec);
        let lv = LevelVersion::new(Level::Restricted, Version::V1(30));
        assert_eq!(
            warn_message(lv, &restricted),
            concat!(
                r#"would violate PodSecurity "restricted:v1.30": host namespaces (hostNetwork=true), "#,
                r#"privileged (container "c" must not set securityContext.privileged=true), "#,
                r#"allowPrivilegeEscalation != false (container "c" must set securityContext.allowPrivilegeEscalation=false), "#,
                r#"unrestricted capabilities (container "c" must set securityContext.capabilities.drop=["ALL"]), "#,
                r#"restricted volume types (volume "v" uses restricted volume type "hostPath"), "#,
                r#"runAsNonRoot != true (pod or container "c" must set securityContext.runAsNonRoot=true), "#,
                r#"seccompProfile (pod or container "c" must set securityContext.seccompProfile.type to "RuntimeDefault" or "Localhost")"#
            )
        );
        assert_eq!(
            reasons(&baseline),
            "host namespaces, hostPath volumes, privileged"
        );
        assert_eq!(
            Violation::new("x", "").to_string(),
            "x",
            "an empty detail has no parentheses"
        );
    }

    #[test]
    fn levels_and_versions() {
        assert_eq!(Level::parse("baseline"), Some(Level::Baseline));
        assert_eq!(Level::parse("Baseline"), None);
        assert!(Level::Restricted > Level::Baseline && Level::Baseline > Level::Privileged);
        assert_eq!(Version::parse("latest"), Some(Version::Latest));
        assert_eq!(Version::parse("v1.0"), Some(Version::V1(0)));
        assert_eq!(Version::parse("v1.32"), Some(Version::V1(32)));
        assert_eq!(
            Version::parse("v1.9223372036854775807"),
            Some(Version::V1(i64::MAX as u64))
        );
        for bad in [
            "v1.032",
            "v1.",
            "1.30",
            "v2.1",
            "v1.3a",
            "v1.-1",
            "v1.+1",
            "Latest",
            "v1.9223372036854775808",
        ] {
            assert_eq!(Version::parse(bad), None, "{bad}");
        }
        assert!(Version::V1(40) < Version::Latest);
        assert_eq!(Version::V1(40).effective_minor(), LATEST_MINOR);
        assert_eq!(
            LevelVersion::new(Level::Restricted, Version::V1(28)).to_string(),
            "restricted:v1.28"
        );
        let p1 = LevelVersion::new(Level::Privileged, Version::V1(1));
        let p2 = LevelVersion::new(Level::Privileged, Version::Latest);
        assert!(p1.equivalent(&p2));
        assert!(!LevelVersion::new(Level::Baseline, Version::V1(1))
            .equivalent(&LevelVersion::new(Level::Baseline, Version::Latest)));
    }

    fn labels(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn policy_from_labels() {
        let default = Policy::default();
        assert_eq!(policy(None, &default), default);
        assert_eq!(policy(Some(&Map::new()), &default), default);
        assert!(default.fully_privileged());

        let l = labels(json!({
            "pod-security.kubernetes.io/enforce": "baseline",
            "pod-security.kubernetes.io/enforce-version": "v1.30",
            "pod-security.kubernetes.io/audit": "restricted",
            "other": "x"
        }));
        let (p, errs) = policy_with_errors(Some(&l), &default);
        assert!(errs.is_empty());
        assert_eq!(
            p.enforce,
            LevelVersion::new(Level::Baseline, Version::V1(30))
        );
        assert_eq!(
            p.audit,
            LevelVersion::new(Level::Restricted, Version::Latest)
        );
        // Warn follows a stricter enforce, its version too.
        assert_eq!(p.warn, LevelVersion::new(Level::Baseline, Version::V1(30)));

        // An explicit warn is kept; a warn-version is kept when warn follows enforce.
        let l = labels(json!({
            "pod-security.kubernetes.io/enforce": "restricted",
            "pod-security.kubernetes.io/warn-version": "v1.29"
        }));
        let p = policy(Some(&l), &default);
        assert_eq!(
            p.warn,
            LevelVersion::new(Level::Restricted, Version::V1(29))
        );
        let l = labels(json!({
            "pod-security.kubernetes.io/enforce": "restricted",
            "pod-security.kubernetes.io/warn": "privileged"
        }));
        assert_eq!(policy(Some(&l), &default).warn.level, Level::Privileged);

        // Missing labels take the defaults.
        let d = Policy {
            enforce: LevelVersion::new(Level::Baseline, Version::V1(31)),
            audit: LevelVersion::new(Level::Restricted, Version::Latest),
            warn: LevelVersion::new(Level::Restricted, Version::Latest),
        };
        let l = labels(json!({"pod-security.kubernetes.io/audit": "baseline"}));
        let p = policy(Some(&l), &d);
        assert_eq!(p.enforce, d.enforce);
        assert_eq!(p.audit, LevelVersion::new(Level::Baseline, Version::Latest));
        assert_eq!(p.warn, d.warn);
    }

    #[test]
    fn policy_with_invalid_labels() {
        let default = Policy::default();
        let l = labels(json!({
            "pod-security.kubernetes.io/warn": "loose",
            "pod-security.kubernetes.io/enforce-version": "1.30",
            "pod-security.kubernetes.io/enforce": "strict",
            "pod-security.kubernetes.io/audit": "Restricted"
        }));
        let (p, errs) = policy_with_errors(Some(&l), &default);
        // Enforce fails closed, audit and warn fail open, a bad version is latest; warn does
        // not follow an invalid enforce.
        assert_eq!(
            p.enforce,
            LevelVersion::new(Level::Restricted, Version::Latest)
        );
        assert_eq!(p.audit.level, Level::Privileged);
        assert_eq!(p.warn.level, Level::Privileged);
        let lines: Vec<String> = errs.iter().map(Cause::line).collect();
        assert_eq!(
            lines,
            vec![
                r#"metadata.labels[pod-security.kubernetes.io/enforce]: Invalid value: "strict": must be one of privileged, baseline, restricted"#,
                r#"metadata.labels[pod-security.kubernetes.io/enforce-version]: Invalid value: "1.30": must be "latest" or "v1.x""#,
                r#"metadata.labels[pod-security.kubernetes.io/audit]: Invalid value: "Restricted": must be one of privileged, baseline, restricted"#,
                r#"metadata.labels[pod-security.kubernetes.io/warn]: Invalid value: "loose": must be one of privileged, baseline, restricted"#,
            ]
        );
        assert!(errs.iter().all(|c| c.reason == "FieldValueInvalid"));

        // An invalid enforce still evaluates pods, at restricted.
        let l = labels(json!({"pod-security.kubernetes.io/enforce": ""}));
        let (p, errs) = policy_with_errors(Some(&l), &default);
        assert_eq!(p.enforce.level, Level::Restricted);
        assert_eq!(p.warn.level, Level::Privileged);
        assert_eq!(errs.len(), 1);
    }

    #[test]
    fn pod_templates() {
        let template = json!({"metadata": {"annotations": {"a": "b"}}, "spec": {"hostPID": true}});
        for r in [
            "deployments",
            "replicasets",
            "statefulsets",
            "daemonsets",
            "jobs",
            "replicationcontrollers",
            "Deployment",
            "ReplicaSet",
            "StatefulSet",
            "DaemonSet",
            "Job",
            "ReplicationController",
        ] {
            let obj = json!({"metadata": {"name": "w"}, "spec": {"template": template.clone()}});
            let (m, s) = pod_template(r, &obj).unwrap_or_else(|| panic!("{r}"));
            assert_eq!(m, &template["metadata"], "{r}");
            assert_eq!(s, &template["spec"], "{r}");
            assert_eq!(
                reasons(&check(Level::Baseline, m, s)),
                "host namespaces",
                "{r}"
            );
        }
        let cron = json!({"spec": {"schedule": "* * * * *", "jobTemplate": {"spec": {"template": template.clone()}}}});
        for r in ["cronjobs", "CronJob"] {
            let (m, s) = pod_template(r, &cron).unwrap();
            assert_eq!((m, s), (&template["metadata"], &template["spec"]));
        }
        let pt = json!({"metadata": {"name": "t"}, "template": template.clone()});
        assert_eq!(
            pod_template("podtemplates", &pt),
            Some((&template["metadata"], &template["spec"]))
        );
        let pod = json!({"metadata": {"name": "p"}, "spec": {"containers": []}});
        assert_eq!(
            pod_template("pods", &pod),
            Some((&pod["metadata"], &pod["spec"]))
        );
        // No template, or not a workload.
        assert_eq!(
            pod_template("replicationcontrollers", &json!({"spec": {}})),
            None
        );
        assert_eq!(
            pod_template("services", &json!({"spec": {"template": template}})),
            None
        );
        // A template without metadata: Null, which the checks read as empty.
        let obj = json!({"spec": {"template": {"spec": {"hostIPC": true}}}});
        let (m, s) = pod_template("deployments", &obj).unwrap();
        assert!(m.is_null());
        assert_eq!(
            check(Level::Baseline, m, s),
            vec![Violation::new("host namespaces", "hostIPC=true")]
        );
    }

    #[test]
    fn go_quoting() {
        assert_eq!(go_quote("a\"b\\c\n\u{1}"), r#""a\"b\\c\n\x01""#);
        assert_eq!(go_quote("é"), "\"é\"");
        assert_eq!(go_quote("a\u{a0}b"), r#""a\u00a0b""#);
    }

    #[test]
    fn wasm_pods_are_not_exempt() {
        // A Wasm pod (Drover picks the runtime from the image, or a RuntimeClass) is checked
        // like any other: its hostPath volume is a hostPath volume.
        let spec = json!({
            "runtimeClassName": "wasm",
            "containers": [{"name": "app", "image": "registry.local/app.wasm"}],
            "volumes": [{"name": "data", "hostPath": {"path": "/srv"}}]
        });
        assert_eq!(
            run(Level::Baseline, spec),
            one("hostPath volumes", r#"volume "data""#)
        );
    }
}
