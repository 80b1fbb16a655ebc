//! Where a pod may run: node selectors (`nodeSelector`, required node affinity) against a
//! node, and tolerations against taints. Pure. They serve the DaemonSet controller (which nodes get a daemon) and the
//! scheduler (which nodes can take a pod) alike, so both read a pod's node constraints the
//! same way; they take the node's labels and name by reference, as the scheduler keeps them,
//! and allocate nothing (the scheduler calls them for every node it visits).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{NodeSelector, NodeSelectorRequirement, NodeSelectorTerm};

/// Whether a node selector requirement holds for `value` (the node's label `r.key`, or its name
/// for a `matchFields` requirement; None when the label is absent): In, NotIn, Exists,
/// DoesNotExist, and Gt/Lt comparing integers with the first value. Other operators never hold.
pub fn requirement_matches(r: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = r.values.as_deref().unwrap_or_default();
    let listed = |v: &str| values.iter().any(|x| x == v);
    let number = |s: &str| s.parse::<i64>().ok();
    match r.operator.as_str() {
        "In" => value.is_some_and(listed),
        "NotIn" => value.is_none_or(|v| !listed(v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => {
            let (Some(v), Some(bound)) = (
                value.and_then(number),
                values.first().and_then(|b| number(b)),
            ) else {
                return false;
            };
            if r.operator == "Gt" {
                v > bound
            } else {
                v < bound
            }
        }
        _ => false,
    }
}

/// Whether a node selector term matches the node with `labels` and `name`: all its expressions
/// (labels) and fields (only `metadata.name`) hold. An empty term matches no node.
pub fn node_term_matches(
    term: &NodeSelectorTerm,
    labels: &BTreeMap<String, String>,
    name: &str,
) -> bool {
    let exprs = term.match_expressions.as_deref().unwrap_or_default();
    let fields = term.match_fields.as_deref().unwrap_or_default();
    if exprs.is_empty() && fields.is_empty() {
        return false;
    }
    exprs
        .iter()
        .all(|r| requirement_matches(r, labels.get(&r.key).map(String::as_str)))
        && fields
            .iter()
            .all(|r| r.key == "metadata.name" && requirement_matches(r, Some(name)))
}

/// Whether a pod's `nodeSelector` (every pair among the node's labels) and required node
/// affinity (any of its terms; none given: any node) admit the node with `labels` and `name`.
pub fn node_matches(
    node_selector: Option<&BTreeMap<String, String>>,
    required: Option<&NodeSelector>,
    labels: &BTreeMap<String, String>,
    name: &str,
) -> bool {
    node_selector
        .into_iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v))
        && required.is_none_or(|s| {
            s.node_selector_terms
                .iter()
                .any(|t| node_term_matches(t, labels, name))
        })
}

/// Whether one of `tolerations` tolerates `taint` (key, value and effect, with the Exists
/// operator and empty keys and effects as wildcards).
pub fn tolerates(
    tolerations: &[k8s_openapi::api::core::v1::Toleration],
    taint: &k8s_openapi::api::core::v1::Taint,
) -> bool {
    tolerations.iter().any(|t| {
        let effect_ok = t
            .effect
            .as_deref()
            .is_none_or(|e| e.is_empty() || e == taint.effect);
        let key = t.key.as_deref().unwrap_or("");
        let exists = t.operator.as_deref() == Some("Exists");
        let key_ok = if key.is_empty() {
            exists
        } else {
            key == taint.key
        };
        let value_ok =
            exists || t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("");
        effect_ok && key_ok && value_ok
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_selectors_match_labels_fields_and_numbers() {
        let labels: BTreeMap<String, String> = [("zone", "a"), ("cores", "8")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let req = |v: serde_json::Value| -> NodeSelector {
            serde_json::from_value(serde_json::json!({ "nodeSelectorTerms": v })).unwrap()
        };
        let matching =
            |terms: serde_json::Value| node_matches(None, Some(&req(terms)), &labels, "n1");
        let expr = |key: &str, op: &str, values: &[&str]| serde_json::json!([{"matchExpressions": [{"key": key, "operator": op, "values": values}]}]);
        assert!(matching(expr("zone", "In", &["a", "b"])));
        assert!(!matching(expr("zone", "NotIn", &["a"])));
        assert!(matching(expr("disk", "NotIn", &["ssd"])));
        assert!(matching(expr("zone", "Exists", &[])));
        assert!(matching(expr("disk", "DoesNotExist", &[])));
        assert!(matching(expr("cores", "Gt", &["4"])));
        assert!(!matching(expr("cores", "Lt", &["4"])));
        assert!(!matching(expr("zone", "Gt", &["4"])), "not a number");
        assert!(!matching(expr("zone", "Near", &["a"])));
        let field = |name: &str| serde_json::json!([{"matchFields": [{"key": "metadata.name", "operator": "In", "values": [name]}]}]);
        assert!(matching(field("n1")));
        assert!(!matching(field("n2")));
        // Terms are ORed; an empty term matches nothing.
        assert!(matching(serde_json::json!([{}, {"matchFields": [
            {"key": "metadata.name", "operator": "In", "values": ["n1"]}]}])));
        assert!(!matching(serde_json::json!([{}])));
        // No constraint at all: any node; nodeSelector pairs must all be there.
        assert!(node_matches(None, None, &labels, "n1"));
        let sel: BTreeMap<String, String> = [("zone".to_string(), "a".to_string())].into();
        assert!(node_matches(Some(&sel), None, &labels, "n1"));
        let sel: BTreeMap<String, String> = [("zone".to_string(), "b".to_string())].into();
        assert!(!node_matches(Some(&sel), None, &labels, "n1"));
    }
}
