//! Semantic validation: the rules kube-apiserver checks beyond an object's shape, with causes
//! worded as Kubernetes words them (`spec.template.spec.containers[1].name: Duplicate value:
//! "web"`), so that kubectl's messages read the same. Runs after defaulting.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::object;

pub use crate::cause::Cause;

impl Cause {
    fn invalid(field: impl Into<String>, value: &Value, why: &str) -> Cause {
        Cause {
            field: field.into(),
            reason: "FieldValueInvalid",
            message: format!("Invalid value: {}: {why}", show(value)),
        }
    }
    fn required(field: impl Into<String>, why: &str) -> Cause {
        let message = if why.is_empty() {
            "Required value".to_string()
        } else {
            format!("Required value: {why}")
        };
        Cause {
            field: field.into(),
            reason: "FieldValueRequired",
            message,
        }
    }
    fn duplicate(field: impl Into<String>, value: &Value) -> Cause {
        Cause {
            field: field.into(),
            reason: "FieldValueDuplicate",
            message: format!("Duplicate value: {}", show(value)),
        }
    }
    fn not_supported(field: impl Into<String>, value: &Value, allowed: &[&str]) -> Cause {
        let allowed: Vec<String> = allowed.iter().map(|a| format!("\"{a}\"")).collect();
        Cause {
            field: field.into(),
            reason: "FieldValueNotSupported",
            message: format!(
                "Unsupported value: {}: supported values: {}",
                show(value),
                allowed.join(", ")
            ),
        }
    }
    fn not_found(field: impl Into<String>, value: &Value) -> Cause {
        Cause {
            field: field.into(),
            reason: "FieldValueNotFound",
            message: format!("Not found: {}", show(value)),
        }
    }
}

fn show(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    }
}

/// Checks an object of `resource` (plural name); empty when it is valid.
pub fn check(resource: &str, obj: &Value) -> Vec<Cause> {
    let mut c = Vec::new();
    metadata(obj, &mut c);
    let spec = &obj["spec"];
    match resource {
        "services.serving.knative.dev" => c.extend(crate::knative::check("services", obj)),
        "configurations" | "revisions" | "routes" => c.extend(crate::knative::check(resource, obj)),
        "pods" => pod_spec(spec, "spec", &["Always", "OnFailure", "Never"], &mut c),
        "deployments" | "replicasets" | "daemonsets" | "statefulsets" => {
            workload(resource, spec, &mut c)
        }
        "jobs" => job_spec(spec, "spec", &mut c),
        "cronjobs" => {
            match spec["schedule"].as_str() {
                None | Some("") => c.push(Cause::required("spec.schedule", "")),
                Some(s) if !valid_schedule(s) => c.push(Cause::invalid(
                    "spec.schedule",
                    &spec["schedule"],
                    "unparseable schedule: expected 5 fields (minute hour day-of-month month day-of-week) or a @macro",
                )),
                _ => {}
            }
            job_spec(
                &spec["jobTemplate"]["spec"],
                "spec.jobTemplate.spec",
                &mut c,
            );
        }
        "services" => service(spec, &mut c),
        "configmaps" | "secrets" => {
            let mut seen = BTreeSet::new();
            for field in ["data", "binaryData", "stringData"] {
                for key in obj[field].as_object().into_iter().flat_map(|m| m.keys()) {
                    if !valid_config_key(key) {
                        c.push(Cause::invalid(
                            format!("{field}[{key}]"),
                            &Value::String(key.clone()),
                            "a valid config key must consist of alphanumeric characters, '-', '_' or '.'",
                        ));
                    } else if field != "stringData" && !seen.insert(key.clone()) {
                        c.push(Cause::duplicate(
                            format!("{field}[{key}]"),
                            &Value::String(key.clone()),
                        ));
                    }
                }
            }
        }
        "horizontalpodautoscalers" => {
            let min = spec["minReplicas"].as_i64().unwrap_or(1);
            if min < 1 {
                c.push(Cause::invalid(
                    "spec.minReplicas",
                    &spec["minReplicas"],
                    "must be greater than or equal to 1",
                ));
            }
            match spec["maxReplicas"].as_i64() {
                None => c.push(Cause::required("spec.maxReplicas", "")),
                Some(max) if max < min => c.push(Cause::invalid(
                    "spec.maxReplicas",
                    &spec["maxReplicas"],
                    "must be greater than or equal to `minReplicas`",
                )),
                _ => {}
            }
            for f in ["kind", "name"] {
                if spec["scaleTargetRef"][f].as_str().is_none_or(str::is_empty) {
                    c.push(Cause::required(format!("spec.scaleTargetRef.{f}"), ""));
                }
            }
        }
        "rolebindings" | "clusterrolebindings" => {
            let kind = &obj["roleRef"]["kind"];
            let allowed: &[&str] = if resource == "rolebindings" {
                &["Role", "ClusterRole"]
            } else {
                &["ClusterRole"]
            };
            if !allowed.iter().any(|a| kind == a) {
                c.push(Cause::not_supported("roleRef.kind", kind, allowed));
            }
            if obj["roleRef"]["name"].as_str().is_none_or(str::is_empty) {
                c.push(Cause::required("roleRef.name", ""));
            }
            for (i, s) in obj["subjects"].as_array().into_iter().flatten().enumerate() {
                let kinds = ["User", "Group", "ServiceAccount"];
                if !kinds.iter().any(|k| s["kind"] == *k) {
                    c.push(Cause::not_supported(
                        format!("subjects[{i}].kind"),
                        &s["kind"],
                        &kinds,
                    ));
                }
                if s["name"].as_str().is_none_or(str::is_empty) {
                    c.push(Cause::required(format!("subjects[{i}].name"), ""));
                }
            }
        }
        _ => {}
    }
    c
}

fn metadata(obj: &Value, c: &mut Vec<Cause>) {
    let meta = &obj["metadata"];
    for (k, v) in meta["labels"].as_object().into_iter().flatten() {
        if let Some(why) = invalid_qualified_name(k) {
            c.push(Cause::invalid(
                "metadata.labels",
                &Value::String(k.clone()),
                &why,
            ));
        }
        if let Some(why) = v.as_str().and_then(invalid_label_value) {
            c.push(Cause::invalid("metadata.labels", v, &why));
        }
    }
    let mut controllers = Vec::new();
    for (i, owner) in meta["ownerReferences"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        for f in ["apiVersion", "kind", "name", "uid"] {
            if owner[f].as_str().is_none_or(str::is_empty) {
                c.push(Cause::required(
                    format!("metadata.ownerReferences[{i}].{f}"),
                    "",
                ));
            }
        }
        if owner["controller"] == true {
            controllers.push(owner["name"].as_str().unwrap_or("").to_string());
        }
    }
    if controllers.len() > 1 {
        c.push(Cause::invalid(
            "metadata.ownerReferences",
            &Value::from(controllers.len()),
            &format!("Only one reference can have Controller set to true. Found \"true\" in references for {}", controllers.join(" and ")),
        ));
    }
    let mut size = 0;
    for (k, v) in meta["annotations"].as_object().into_iter().flatten() {
        if let Some(why) = invalid_qualified_name(&k.to_lowercase()) {
            c.push(Cause::invalid(
                "metadata.annotations",
                &Value::String(k.clone()),
                &why,
            ));
        }
        size += k.len() + v.as_str().map_or(0, str::len);
    }
    if size > 256 * 1024 {
        c.push(Cause {
            field: "metadata.annotations".into(),
            reason: "FieldValueTooLong",
            message: "Too long: must have at most 262144 bytes".into(),
        });
    }
}

/// Why `key` is not a qualified name (`prefix/name`, as label and annotation keys are).
pub fn invalid_qualified_name(key: &str) -> Option<String> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        if let Some(why) = object::invalid_subdomain(p) {
            return Some(format!("prefix part {why}"));
        }
    }
    if name.is_empty() || name.len() > 63 || !name_chars(name) {
        return Some(
            "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')".into(),
        );
    }
    None
}

fn name_chars(s: &str) -> bool {
    let alnum = |c: char| c.is_ascii_alphanumeric();
    s.starts_with(alnum)
        && s.ends_with(alnum)
        && s.chars().all(|c| alnum(c) || matches!(c, '-' | '_' | '.'))
}

/// Why `v` is not a valid label value.
pub fn invalid_label_value(v: &str) -> Option<String> {
    if v.is_empty() {
        return None;
    }
    if v.len() > 63 {
        return Some("must be no more than 63 characters".into());
    }
    (!name_chars(v)).then(|| {
        "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')".into()
    })
}

fn valid_config_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 253
        && k != "."
        && k != ".."
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// An IANA service name (named ports): at most 15 lowercase letters, digits and '-', with a
/// letter, and no '--'.
fn valid_port_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 15
        && n.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && n.chars().any(|c| c.is_ascii_lowercase())
        && !n.starts_with('-')
        && !n.ends_with('-')
        && !n.contains("--")
}

fn valid_schedule(s: &str) -> bool {
    let s = s.trim();
    if let Some(m) = s.strip_prefix('@') {
        return matches!(
            m,
            "yearly" | "annually" | "monthly" | "weekly" | "daily" | "midnight" | "hourly"
        ) || m.starts_with("every ");
    }
    let s = s
        .strip_prefix("CRON_TZ=")
        .or_else(|| s.strip_prefix("TZ="))
        .and_then(|rest| rest.split_once(' ').map(|(_, r)| r))
        .unwrap_or(s);
    let fields: Vec<&str> = s.split_whitespace().collect();
    fields.len() == 5
        && fields.iter().all(|f| {
            f.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '*' | '/' | ',' | '-' | '?'))
        })
}

fn port_in_range(v: &Value, min: i64) -> bool {
    v.as_i64().is_some_and(|p| (min..=65535).contains(&p))
}

const PROTOCOLS: &[&str] = &["TCP", "UDP", "SCTP"];

fn pod_spec(spec: &Value, at: &str, restart: &[&str], c: &mut Vec<Cause>) {
    if spec["containers"].as_array().is_none_or(Vec::is_empty) {
        c.push(Cause::required(format!("{at}.containers"), ""));
    }
    let volumes: BTreeSet<&str> = spec["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["name"].as_str())
        .collect();
    let mut volume_names = BTreeSet::new();
    for (i, v) in spec["volumes"].as_array().into_iter().flatten().enumerate() {
        let field = format!("{at}.volumes[{i}].name");
        match v["name"].as_str() {
            None | Some("") => c.push(Cause::required(field, "")),
            Some(n) => {
                if let Some(why) = object::invalid_label(n) {
                    c.push(Cause::invalid(field, &v["name"], &why));
                } else if !volume_names.insert(n) {
                    c.push(Cause::duplicate(field, &v["name"]));
                }
            }
        }
    }
    let mut names = BTreeSet::new();
    for list in ["initContainers", "containers"] {
        for (i, ctr) in spec[list].as_array().into_iter().flatten().enumerate() {
            let here = format!("{at}.{list}[{i}]");
            match ctr["name"].as_str() {
                None | Some("") => c.push(Cause::required(format!("{here}.name"), "")),
                Some(n) => {
                    if let Some(why) = object::invalid_label(n) {
                        c.push(Cause::invalid(format!("{here}.name"), &ctr["name"], &why));
                    } else if !names.insert(n.to_string()) {
                        c.push(Cause::duplicate(format!("{here}.name"), &ctr["name"]));
                    }
                }
            }
            if ctr["image"].as_str().is_none_or(|i| i.trim().is_empty()) {
                c.push(Cause::required(format!("{here}.image"), ""));
            }
            container(ctr, &here, &volumes, c);
        }
    }
    if let Some(policy) = spec.get("restartPolicy").filter(|p| !p.is_null()) {
        if !restart.iter().any(|r| policy == *r) {
            c.push(Cause::not_supported(
                format!("{at}.restartPolicy"),
                policy,
                restart,
            ));
        }
    }
    if let Some(g) = spec["terminationGracePeriodSeconds"]
        .as_i64()
        .filter(|g| *g < 0)
    {
        c.push(Cause::invalid(
            format!("{at}.terminationGracePeriodSeconds"),
            &Value::from(g),
            "must be greater than or equal to 0",
        ));
    }
}

fn container(ctr: &Value, here: &str, volumes: &BTreeSet<&str>, c: &mut Vec<Cause>) {
    let mut port_names = BTreeSet::new();
    for (j, p) in ctr["ports"].as_array().into_iter().flatten().enumerate() {
        let field = format!("{here}.ports[{j}]");
        match p.get("containerPort") {
            None => c.push(Cause::required(format!("{field}.containerPort"), "")),
            Some(v) if !port_in_range(v, 1) => c.push(Cause::invalid(
                format!("{field}.containerPort"),
                v,
                "must be between 1 and 65535, inclusive",
            )),
            _ => {}
        }
        if let Some(h) = p
            .get("hostPort")
            .filter(|h| !h.is_null() && !port_in_range(h, 0))
        {
            c.push(Cause::invalid(
                format!("{field}.hostPort"),
                h,
                "must be between 1 and 65535, inclusive",
            ));
        }
        if let Some(proto) = p.get("protocol").filter(|v| !v.is_null()) {
            if !PROTOCOLS.iter().any(|x| proto == *x) {
                c.push(Cause::not_supported(
                    format!("{field}.protocol"),
                    proto,
                    PROTOCOLS,
                ));
            }
        }
        if let Some(n) = p["name"].as_str().filter(|n| !n.is_empty()) {
            if !valid_port_name(n) {
                c.push(Cause::invalid(format!("{field}.name"), &p["name"], "must be no more than 15 characters, contain only lowercase letters, digits and '-', and contain at least one letter"));
            } else if !port_names.insert(n) {
                c.push(Cause::duplicate(format!("{field}.name"), &p["name"]));
            }
        }
    }
    for (j, e) in ctr["env"].as_array().into_iter().flatten().enumerate() {
        match e["name"].as_str() {
            None | Some("") => c.push(Cause::required(format!("{here}.env[{j}].name"), "")),
            Some(n) if n.contains('=') || !n.chars().all(|ch| ch.is_ascii_graphic()) => {
                c.push(Cause::invalid(
                    format!("{here}.env[{j}].name"),
                    &e["name"],
                    "a valid environment variable name must consist only of printable ASCII characters other than '='",
                ))
            }
            _ => {}
        }
    }
    for (j, m) in ctr["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let name = m["name"].as_str().unwrap_or("");
        if !volumes.contains(name) {
            c.push(Cause::not_found(
                format!("{here}.volumeMounts[{j}].name"),
                &m["name"],
            ));
        }
        if m["mountPath"].as_str().is_none_or(str::is_empty) {
            c.push(Cause::required(
                format!("{here}.volumeMounts[{j}].mountPath"),
                "",
            ));
        }
    }
}

/// The labels a selector's `matchLabels` and `In`/`Exists` expressions demand of a template.
fn selector_matches(selector: &Value, labels: &BTreeMap<String, String>) -> bool {
    let exprs_ok = selector["matchExpressions"]
        .as_array()
        .into_iter()
        .flatten()
        .all(|e| {
            let key = e["key"].as_str().unwrap_or("");
            let values: Vec<&str> = e["values"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            let have = labels.get(key).map(String::as_str);
            match e["operator"].as_str().unwrap_or("") {
                "In" => have.is_some_and(|h| values.contains(&h)),
                "NotIn" => have.is_none_or(|h| !values.contains(&h)),
                "Exists" => have.is_some(),
                "DoesNotExist" => have.is_none(),
                _ => false,
            }
        });
    let labels_ok = selector["matchLabels"]
        .as_object()
        .into_iter()
        .flatten()
        .all(|(k, v)| labels.get(k).map(String::as_str) == v.as_str());
    exprs_ok && labels_ok
}

fn workload(resource: &str, spec: &Value, c: &mut Vec<Cause>) {
    if let Some(r) = spec["replicas"].as_i64().filter(|r| *r < 0) {
        c.push(Cause::invalid(
            "spec.replicas",
            &Value::from(r),
            "must be greater than or equal to 0",
        ));
    }
    let selector = &spec["selector"];
    let empty = selector["matchLabels"]
        .as_object()
        .is_none_or(|m| m.is_empty())
        && selector["matchExpressions"]
            .as_array()
            .is_none_or(Vec::is_empty);
    if selector.is_null() {
        c.push(Cause::required("spec.selector", ""));
    } else if empty {
        c.push(Cause::invalid(
            "spec.selector",
            selector,
            &format!(
                "empty selector is invalid for {}",
                resource.trim_end_matches('s')
            ),
        ));
    } else {
        let labels = object::labels(&spec["template"]);
        if !selector_matches(selector, &labels) {
            let shown: Vec<String> = labels.iter().map(|(k, v)| format!("{k:?}:{v:?}")).collect();
            c.push(Cause {
                field: "spec.template.metadata.labels".into(),
                reason: "FieldValueInvalid",
                message: format!(
                    "Invalid value: map[string]string{{{}}}: `selector` does not match template `labels`",
                    shown.join(", ")
                ),
            });
        }
    }
    for (k, v) in spec["template"]["metadata"]["labels"]
        .as_object()
        .into_iter()
        .flatten()
    {
        if let Some(why) = invalid_qualified_name(k) {
            c.push(Cause::invalid(
                "spec.template.metadata.labels",
                &Value::String(k.clone()),
                &why,
            ));
        }
        if let Some(why) = v.as_str().and_then(invalid_label_value) {
            c.push(Cause::invalid("spec.template.metadata.labels", v, &why));
        }
    }
    if resource == "deployments" {
        let t = &spec["strategy"]["type"];
        if !t.is_null() && t != "Recreate" && t != "RollingUpdate" {
            c.push(Cause::not_supported(
                "spec.strategy.type",
                t,
                &["Recreate", "RollingUpdate"],
            ));
        }
    }
    pod_spec(
        &spec["template"]["spec"],
        "spec.template.spec",
        &["Always"],
        c,
    );
}

fn job_spec(spec: &Value, at: &str, c: &mut Vec<Cause>) {
    for f in [
        "parallelism",
        "completions",
        "backoffLimit",
        "activeDeadlineSeconds",
    ] {
        if let Some(n) = spec[f].as_i64().filter(|n| *n < 0) {
            c.push(Cause::invalid(
                format!("{at}.{f}"),
                &Value::from(n),
                "must be greater than or equal to 0",
            ));
        }
    }
    let template = &spec["template"]["spec"];
    let here = format!("{at}.template.spec");
    if template["restartPolicy"].as_str().is_none_or(str::is_empty) {
        c.push(Cause::required(
            format!("{here}.restartPolicy"),
            "valid values: \"OnFailure\", \"Never\"",
        ));
    }
    pod_spec(template, &here, &["OnFailure", "Never"], c);
}

fn service(spec: &Value, c: &mut Vec<Cause>) {
    let t = spec["type"].as_str().unwrap_or("ClusterIP");
    let types = ["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"];
    if !types.contains(&t) {
        c.push(Cause::not_supported("spec.type", &spec["type"], &types));
    }
    if t == "ExternalName" {
        match spec["externalName"].as_str() {
            None | Some("") => c.push(Cause::required("spec.externalName", "")),
            Some(n) => {
                if let Some(why) = object::invalid_subdomain(n.trim_end_matches('.')) {
                    c.push(Cause::invalid(
                        "spec.externalName",
                        &spec["externalName"],
                        &why,
                    ));
                }
            }
        }
    } else if spec["ports"].as_array().is_none_or(Vec::is_empty) && spec["clusterIP"] != "None" {
        c.push(Cause::required("spec.ports", ""));
    }
    let ports = spec["ports"].as_array().cloned().unwrap_or_default();
    let mut names = BTreeSet::new();
    let mut seen = BTreeSet::new();
    for (i, p) in ports.iter().enumerate() {
        let at = format!("spec.ports[{i}]");
        match p["name"].as_str().filter(|n| !n.is_empty()) {
            None if ports.len() > 1 => c.push(Cause::required(format!("{at}.name"), "")),
            None => {}
            Some(n) => {
                if object::invalid_label(n).is_some() {
                    c.push(Cause::invalid(format!("{at}.name"), &p["name"], "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character"));
                } else if !names.insert(n.to_string()) {
                    c.push(Cause::duplicate(format!("{at}.name"), &p["name"]));
                }
            }
        }
        match p.get("port") {
            None => c.push(Cause::required(format!("{at}.port"), "")),
            Some(v) if !port_in_range(v, 1) => c.push(Cause::invalid(
                format!("{at}.port"),
                v,
                "must be between 1 and 65535, inclusive",
            )),
            _ => {}
        }
        let proto = p["protocol"].as_str().unwrap_or("TCP");
        if !PROTOCOLS.contains(&proto) {
            c.push(Cause::not_supported(
                format!("{at}.protocol"),
                &p["protocol"],
                PROTOCOLS,
            ));
        }
        if !seen.insert((p["port"].as_i64(), proto.to_string())) {
            c.push(Cause::duplicate(
                at.clone(),
                &Value::String(format!("{}/{proto}", p["port"])),
            ));
        }
        match &p["targetPort"] {
            Value::Null => {}
            Value::String(n) if valid_port_name(n) => {}
            v @ Value::Number(_) if port_in_range(v, 1) => {}
            v => c.push(Cause::invalid(
                format!("{at}.targetPort"),
                v,
                "must be between 1 and 65535, inclusive, or a port name",
            )),
        }
    }
    for (k, v) in spec["selector"].as_object().into_iter().flatten() {
        if let Some(why) = invalid_qualified_name(k) {
            c.push(Cause::invalid(
                "spec.selector",
                &Value::String(k.clone()),
                &why,
            ));
        }
        if let Some(why) = v.as_str().and_then(invalid_label_value) {
            c.push(Cause::invalid("spec.selector", v, &why));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(resource: &str, obj: Value) -> Vec<String> {
        check(resource, &obj)
            .into_iter()
            .map(|c| c.line())
            .collect()
    }

    #[test]
    fn a_deployment_selector_must_match_its_template() {
        let d = json!({"metadata": {"name": "d"}, "spec": {"replicas": 1,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "api"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}});
        let causes = fields("deployments", d);
        assert_eq!(causes.len(), 1, "{causes:?}");
        assert!(causes[0].starts_with("spec.template.metadata.labels: Invalid value: map[string]string{\"app\":\"api\"}: `selector` does not match template `labels`"), "{causes:?}");
    }

    #[test]
    fn containers_are_checked_each_with_its_path() {
        let p = json!({"metadata": {"name": "p", "labels": {"bad key!": "v", "ok": "bad value!"}},
            "spec": {"containers": [
                {"name": "web", "image": "i", "ports": [{"containerPort": 70000}, {"containerPort": 80, "protocol": "HTTP"}]},
                {"name": "web", "image": "", "env": [{"name": "A=B"}], "volumeMounts": [{"name": "missing", "mountPath": "/m"}]}
            ], "restartPolicy": "Sometimes"}});
        let causes = fields("pods", p);
        let want = [
            "metadata.labels: Invalid value: \"bad key!\"",
            "metadata.labels: Invalid value: \"bad value!\"",
            "spec.containers[0].ports[0].containerPort: Invalid value: 70000: must be between 1 and 65535, inclusive",
            "spec.containers[0].ports[1].protocol: Unsupported value: \"HTTP\"",
            "spec.containers[1].name: Duplicate value: \"web\"",
            "spec.containers[1].image: Required value",
            "spec.containers[1].env[0].name: Invalid value: \"A=B\"",
            "spec.containers[1].volumeMounts[0].name: Not found: \"missing\"",
            "spec.restartPolicy: Unsupported value: \"Sometimes\"",
        ];
        for w in want {
            assert!(
                causes.iter().any(|c| c.starts_with(w)),
                "missing {w:?} in {causes:#?}"
            );
        }
        assert_eq!(causes.len(), want.len(), "{causes:#?}");
    }

    #[test]
    fn services_jobs_cronjobs_and_hpas() {
        let svc = json!({"spec": {"ports": [{"port": 80}, {"port": 0, "name": "b"}]}});
        let causes = fields("services", svc);
        assert!(
            causes
                .iter()
                .any(|c| c.starts_with("spec.ports[0].name: Required value")),
            "{causes:?}"
        );
        assert!(
            causes
                .iter()
                .any(|c| c.starts_with("spec.ports[1].port: Invalid value: 0")),
            "{causes:?}"
        );
        let ext = json!({"spec": {"type": "ExternalName"}});
        assert_eq!(
            fields("services", ext),
            vec!["spec.externalName: Required value"]
        );
        let job =
            json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "i"}]}}}});
        assert!(
            fields("jobs", job)[0].starts_with("spec.template.spec.restartPolicy: Required value")
        );
        let cj = json!({"spec": {"schedule": "every minute", "jobTemplate": {"spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "i"}]}}}}}});
        assert!(fields("cronjobs", cj)[0].starts_with("spec.schedule: Invalid value"));
        let ok = json!({"spec": {"schedule": "*/5 * * * *", "jobTemplate": {"spec": {"template": {"spec": {"restartPolicy": "OnFailure", "containers": [{"name": "c", "image": "i"}]}}}}}});
        assert!(fields("cronjobs", ok).is_empty());
        let hpa = json!({"spec": {"minReplicas": 3, "maxReplicas": 2, "scaleTargetRef": {"kind": "Deployment", "name": "d"}}});
        assert_eq!(fields("horizontalpodautoscalers", hpa).len(), 1);
        let owned = json!({"metadata": {"ownerReferences": [
            {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "a", "uid": "1", "controller": true},
            {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "b", "controller": true}]}});
        let causes = fields("configmaps", owned);
        assert_eq!(causes.len(), 2, "{causes:?}");
        assert!(causes[0].starts_with("metadata.ownerReferences[1].uid: Required value"));
        assert!(causes[1].contains("Only one reference can have Controller set to true"));
        let cm = json!({"data": {"ok.key": "v", "bad/key": "v"}});
        assert_eq!(fields("configmaps", cm).len(), 1);
    }
}
