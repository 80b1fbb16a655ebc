//! Label selectors (equality- and set-based, as in `kubectl get -l`) and field selectors.

use std::collections::BTreeMap;

use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

/// Whether `labels` satisfy a typed `metav1.LabelSelector`, as Kubernetes'
/// LabelSelectorAsSelector: the empty selector matches everything (NetworkPolicy's
/// `podSelector: {}`); an unknown operator matches nothing.
pub fn typed_matches(
    selector: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
    labels: &BTreeMap<String, String>,
) -> bool {
    let labels_ok = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let expressions_ok = selector.match_expressions.iter().flatten().all(|e| {
        let values = e.values.as_deref().unwrap_or_default();
        let have = labels.get(&e.key);
        match e.operator.as_str() {
            "In" => have.is_some_and(|h| values.contains(h)),
            "NotIn" => have.is_none_or(|h| !values.contains(h)),
            "Exists" => have.is_some(),
            "DoesNotExist" => have.is_none(),
            _ => false,
        }
    });
    labels_ok && expressions_ok
}

/// Whether `labels` satisfy `selector`. An empty selector matches nothing here, as controllers
/// must never adopt every pod of a namespace.
pub fn selects(
    selector: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
    labels: &BTreeMap<String, String>,
) -> bool {
    let empty = selector.match_labels.as_ref().is_none_or(|m| m.is_empty())
        && selector
            .match_expressions
            .as_ref()
            .is_none_or(|e| e.is_empty());
    if empty {
        return false;
    }
    typed_matches(selector, labels)
}

/// A parsed label selector; the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector(Vec<Requirement>);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid selector {selector:?}: {reason}")]
pub struct SelectorError {
    pub selector: String,
    pub reason: String,
}

/// Splits on commas that are not inside parentheses.
fn split_top(s: &str) -> Vec<&str> {
    let (mut depth, mut start, mut out) = (0i32, 0usize, Vec::new());
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn valid_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 317
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
}

fn valid_value(v: &str) -> bool {
    v.len() <= 63
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

impl LabelSelector {
    pub fn parse(selector: &str) -> Result<LabelSelector, SelectorError> {
        let err = |reason: String| SelectorError {
            selector: selector.to_string(),
            reason,
        };
        let mut reqs = Vec::new();
        if selector.trim().is_empty() {
            return Ok(LabelSelector(reqs));
        }
        for part in split_top(selector) {
            let part = part.trim();
            let req = if let Some(key) = part.strip_prefix('!') {
                Requirement::DoesNotExist(key.trim().to_string())
            } else if let Some((k, v)) = part.split_once("!=") {
                Requirement::NotEquals(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                Requirement::Equals(k.trim().into(), v.trim().into())
            } else if let Some((k, rest)) = part.split_once(" notin ") {
                Requirement::NotIn(
                    k.trim().into(),
                    set(rest)
                        .ok_or_else(|| err(format!("{part:?}: expected a (value, ...) set")))?,
                )
            } else if let Some((k, rest)) = part.split_once(" in ") {
                Requirement::In(
                    k.trim().into(),
                    set(rest)
                        .ok_or_else(|| err(format!("{part:?}: expected a (value, ...) set")))?,
                )
            } else {
                Requirement::Exists(part.to_string())
            };
            let (key, values): (&str, Vec<&str>) = match &req {
                Requirement::Equals(k, v) | Requirement::NotEquals(k, v) => (k, vec![v.as_str()]),
                Requirement::In(k, vs) | Requirement::NotIn(k, vs) => {
                    (k, vs.iter().map(String::as_str).collect())
                }
                Requirement::Exists(k) | Requirement::DoesNotExist(k) => (k, vec![]),
            };
            if !valid_key(key) {
                return Err(err(format!("{key:?} is not a valid label key")));
            }
            if let Some(v) = values.iter().find(|v| !valid_value(v)) {
                return Err(err(format!("{v:?} is not a valid label value")));
            }
            reqs.push(req);
        }
        Ok(LabelSelector(reqs))
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|req| match req {
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::NotEquals(k, v) => labels.get(k) != Some(v),
            Requirement::In(k, vs) => labels.get(k).is_some_and(|l| vs.contains(l)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|l| !vs.contains(l)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::DoesNotExist(k) => !labels.contains_key(k),
        })
    }
}

fn set(s: &str) -> Option<Vec<String>> {
    let inner = s.trim().strip_prefix('(')?.strip_suffix(')')?;
    Some(
        inner
            .split(',')
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
            .collect(),
    )
}

/// A field selector: `path=value`, `path==value` or `path!=value`, comma-separated, on dotted
/// JSON paths such as `metadata.name`, `spec.nodeName` or `status.phase`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector(Vec<(String, String, bool)>);

impl FieldSelector {
    pub fn parse(selector: &str) -> Result<FieldSelector, SelectorError> {
        let mut out = Vec::new();
        for part in selector.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (path, value, equal) = if let Some((p, v)) = part.split_once("!=") {
                (p, v, false)
            } else if let Some((p, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                (p, v, true)
            } else {
                return Err(SelectorError {
                    selector: selector.into(),
                    reason: format!("{part:?}: expected field=value or field!=value"),
                });
            };
            out.push((path.trim().to_string(), value.trim().to_string(), equal));
        }
        Ok(FieldSelector(out))
    }

    /// The first field this selector names that `resource` (e.g. `pods`, `events`) cannot be
    /// selected by, as kube-apiserver's field label conversions allow them: `metadata.name` and
    /// `metadata.namespace` on every kind, and a few fields of some kinds.
    pub fn unsupported(&self, resource: &str) -> Option<&str> {
        let extra: &[&str] = match resource {
            "pods" => &[
                "spec.nodeName",
                "spec.restartPolicy",
                "spec.schedulerName",
                "spec.serviceAccountName",
                "spec.hostNetwork",
                "status.phase",
                "status.podIP",
                "status.nominatedNodeName",
            ],
            "events" => &[
                "involvedObject.kind",
                "involvedObject.namespace",
                "involvedObject.name",
                "involvedObject.uid",
                "involvedObject.apiVersion",
                "involvedObject.resourceVersion",
                "involvedObject.fieldPath",
                "reason",
                "reportingComponent",
                "source",
                "type",
                "regarding.kind",
                "regarding.namespace",
                "regarding.name",
                "regarding.uid",
                "regarding.apiVersion",
                "regarding.resourceVersion",
                "regarding.fieldPath",
                "reportingController",
            ],
            "secrets" => &["type"],
            "nodes" => &["spec.unschedulable"],
            "namespaces" => &["status.phase"],
            "replicasets" | "replicationcontrollers" => &["status.replicas"],
            "jobs" => &["status.successful"],
            "services" => &["spec.clusterIP", "spec.type"],
            "certificatesigningrequests" => &["spec.signerName"],
            _ => &[],
        };
        self.0
            .iter()
            .map(|(path, _, _)| path.as_str())
            .find(|p| !["metadata.name", "metadata.namespace"].contains(p) && !extra.contains(p))
    }

    pub fn matches(&self, object: &Value) -> bool {
        self.0.iter().all(|(path, want, equal)| {
            let got = path.split('.').try_fold(object, |v, part| v.get(part));
            let got = match got {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Null) | None => String::new(),
                Some(other) => other.to_string(),
            };
            (got == *want) == *equal
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controller_selectors_select_labels_and_expressions_and_empty_selects_nothing() {
        let s: k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector =
            serde_json::from_value(serde_json::json!({
                "matchLabels": {"app": "web"},
                "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]}]
            }))
            .unwrap();
        let l = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert!(selects(&s, &l(&[("app", "web"), ("tier", "a")])));
        assert!(!selects(&s, &l(&[("app", "web"), ("tier", "c")])));
        assert!(!selects(&s, &l(&[("app", "api"), ("tier", "a")])));
        assert!(!selects(&Default::default(), &l(&[("app", "web")])));
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn equality_and_set_based_selectors() {
        let l = labels(&[("environment", "prod"), ("app", "invoice"), ("tier", "web")]);
        let check = |s: &str| LabelSelector::parse(s).unwrap().matches(&l);
        assert!(check("environment=prod,app=invoice"));
        assert!(check("environment==prod"));
        assert!(!check("environment!=prod"));
        assert!(check("tier in (web, api)"));
        assert!(!check("tier notin (web)"));
        assert!(check("app"));
        assert!(!check("!app"));
        assert!(check("!missing,environment in (prod),tier"));
        assert!(check(""));
    }

    #[test]
    fn bad_selectors_are_errors_that_name_the_part() {
        let err = LabelSelector::parse("app=in valid").unwrap_err();
        assert!(err.to_string().contains("not a valid label value"), "{err}");
        let err = LabelSelector::parse("tier in web").unwrap_err();
        assert!(
            err.to_string().contains("expected a (value, ...) set"),
            "{err}"
        );
        assert!(FieldSelector::parse("metadata.name").is_err());
    }

    #[test]
    fn field_selectors_follow_dotted_paths() {
        let pod = serde_json::json!({"metadata": {"name": "a", "namespace": "ns"}, "spec": {"nodeName": "n1"}, "status": {"phase": "Running"}});
        let check = |s: &str| FieldSelector::parse(s).unwrap().matches(&pod);
        assert!(check("metadata.name=a,spec.nodeName=n1"));
        assert!(check("status.phase!=Pending"));
        assert!(!check("metadata.namespace=other"));
        assert!(check("spec.missing="));
    }

    #[test]
    fn only_the_fields_kubernetes_indexes_can_be_selected() {
        let f = |s: &str| FieldSelector::parse(s).unwrap();
        assert_eq!(
            f("metadata.name=a,spec.nodeName=n").unsupported("pods"),
            None
        );
        assert_eq!(
            f("spec.nodeName=n").unsupported("configmaps"),
            Some("spec.nodeName")
        );
        assert_eq!(f("bogus.field=x").unsupported("pods"), Some("bogus.field"));
        assert_eq!(f("involvedObject.name=p").unsupported("events"), None);
    }
}
