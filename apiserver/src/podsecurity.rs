//! Pod Security admission, as kube-apiserver's PodSecurity plugin: each namespace chooses its
//! levels with the `pod-security.kubernetes.io/{enforce,audit,warn}` labels (the rules and
//! messages are `api::podsecurity`'s), the cluster gives the levels of namespaces without
//! labels (`drover server --pod-security-enforce`, baseline by default; warn and audit
//! privileged) and exempts `kube-system`.
//!
//! - A new pod that breaks its namespace's `enforce` level is refused: 403, `pods "p" is
//!   forbidden: violates PodSecurity "baseline:latest": ...`. One that breaks `warn` is created
//!   with a `Warning:` header, which kubectl prints.
//! - A workload (Deployment, Job, CronJob, ...) is never refused for its template; its writer
//!   is warned of what its pods would break, at the enforce and warn levels.
//! - A namespace whose labels name no level or version is refused (422 naming the label).
//!
//! Pods are checked when created: afterwards their spec changes only where it cannot matter
//! (images, deadlines, tolerations). There is no audit log yet, so `audit` is read and unused.

use api::podsecurity::{self, Level, LevelVersion, Policy, Version};
use serde_json::{Map, Value};

/// The cluster's side of Pod Security: the levels of namespaces without labels, and the
/// namespaces exempt.
#[derive(Clone, Debug)]
pub struct Settings {
    pub default: Policy,
    pub exempt_namespaces: Vec<String>,
}

impl Settings {
    /// Namespaces without labels enforce `level` (their workloads are warned of it);
    /// `kube-system` is exempt. Warn and audit are privileged unless labelled, as
    /// kube-apiserver's defaults: a namespace labelled `enforce: privileged` hears nothing.
    pub fn enforcing(level: Level) -> Settings {
        let privileged = LevelVersion::new(Level::Privileged, Version::Latest);
        Settings {
            default: Policy {
                enforce: LevelVersion::new(level, Version::Latest),
                audit: privileged,
                warn: privileged,
            },
            exempt_namespaces: vec!["kube-system".into()],
        }
    }
}

impl Default for Settings {
    fn default() -> Settings {
        Settings::enforcing(Level::Baseline)
    }
}

/// What admission decides for one object.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Admitted, with these warnings for the client.
    Admit(Vec<String>),
    /// Refused: the message of a 403.
    Deny(String),
}

/// Pod Security's verdict on `obj` of `resource`, created (`create`) or updated in the
/// namespace `namespace` whose labels are `labels`.
pub fn review(
    settings: &Settings,
    namespace: &str,
    labels: Option<&Map<String, Value>>,
    resource: &str,
    obj: &Value,
    create: bool,
) -> Verdict {
    if settings.exempt_namespaces.iter().any(|n| n == namespace) {
        return Verdict::Admit(vec![]);
    }
    let Some((metadata, spec)) = podsecurity::pod_template(resource, obj) else {
        return Verdict::Admit(vec![]);
    };
    let policy = podsecurity::policy(labels, &settings.default);
    if resource == "pods" {
        if !create {
            return Verdict::Admit(vec![]);
        }
        let broken = podsecurity::evaluate(policy.enforce, metadata, spec);
        if !broken.is_empty() {
            let name = obj["metadata"]["name"].as_str().unwrap_or_default();
            return Verdict::Deny(format!(
                "pods \"{name}\" is forbidden: {}",
                podsecurity::enforce_message(policy.enforce, &broken)
            ));
        }
        if policy.warn.equivalent(&policy.enforce) {
            return Verdict::Admit(vec![]);
        }
        let broken = podsecurity::evaluate(policy.warn, metadata, spec);
        return Verdict::Admit(if broken.is_empty() {
            vec![]
        } else {
            vec![podsecurity::warn_message(policy.warn, &broken)]
        });
    }
    // A workload: its writer hears what its pods would break, at each level once.
    let mut levels = vec![policy.enforce];
    if !policy.warn.equivalent(&policy.enforce) {
        levels.push(policy.warn);
    }
    let warnings = levels
        .into_iter()
        .filter_map(|lv| {
            let broken = podsecurity::evaluate(lv, metadata, spec);
            (!broken.is_empty()).then(|| podsecurity::warn_message(lv, &broken))
        })
        .collect();
    Verdict::Admit(warnings)
}

/// Each Pod Security label of a namespace that names no level or version, for a 422.
pub fn namespace_label_problems(namespace: &Value) -> Vec<api::semantic::Cause> {
    let labels = namespace["metadata"]["labels"].as_object();
    podsecurity::policy_with_errors(labels, &Policy::default()).1
}

/// A `Warning` header's value for `text` (RFC 7234: code 299, agent "-", quoted text).
pub fn warning_header(text: &str) -> String {
    let quoted = text.replace('\\', "\\\\").replace('"', "\\\"");
    format!("299 - \"{quoted}\"")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn host_pod() -> Value {
        json!({"metadata": {"name": "p"}, "spec": {"hostNetwork": true,
               "containers": [{"name": "c", "image": "x"}]}})
    }

    #[test]
    fn pods_are_refused_past_enforce_and_workloads_only_warned() {
        let s = Settings::default();
        let Verdict::Deny(msg) = review(&s, "default", None, "pods", &host_pod(), true) else {
            panic!("a hostNetwork pod passes baseline")
        };
        assert_eq!(
            msg,
            "pods \"p\" is forbidden: violates PodSecurity \"baseline:latest\": host namespaces (hostNetwork=true)"
        );
        assert_eq!(
            review(&s, "kube-system", None, "pods", &host_pod(), true),
            Verdict::Admit(vec![])
        );
        let privileged = json!({"pod-security.kubernetes.io/enforce": "privileged"});
        assert_eq!(
            review(&s, "ops", privileged.as_object(), "pods", &host_pod(), true),
            Verdict::Admit(vec![]),
            "a namespace that chose privileged hears nothing"
        );
        let deployment = json!({"metadata": {"name": "d"}, "spec": {"template": host_pod()}});
        let Verdict::Admit(warnings) =
            review(&s, "default", None, "deployments", &deployment, true)
        else {
            panic!("workloads are never refused")
        };
        assert_eq!(
            warnings,
            ["would violate PodSecurity \"baseline:latest\": host namespaces (hostNetwork=true)"]
        );
        // Warn stricter than enforce: the pod is created, with the warning.
        let labels = json!({"pod-security.kubernetes.io/warn": "restricted"});
        let plain = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "x"}]}});
        let Verdict::Admit(warnings) =
            review(&s, "default", labels.as_object(), "pods", &plain, true)
        else {
            panic!("baseline admits a plain pod")
        };
        assert!(warnings[0].starts_with("would violate PodSecurity \"restricted:latest\": allowPrivilegeEscalation != false"), "{warnings:?}");
    }

    #[test]
    fn bad_namespace_labels_are_named_and_warnings_are_quoted() {
        let ns = json!({"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "strict"}}});
        let problems = namespace_label_problems(&ns);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0]
                .field
                .contains("pod-security.kubernetes.io/enforce"),
            "{problems:?}"
        );
        assert_eq!(warning_header("a \"b\""), "299 - \"a \\\"b\\\"\"");
    }
}
