//! Kubernetes request paths, parsed into what they address. Pure; tested alone.

use api::registry::{self, Resource};

/// Whether a request is the registry's (`/v2`, `/v2/...`), which answers in its own protocol.
pub fn is_registry(path: &str) -> bool {
    path == "/v2" || path.starts_with("/v2/")
}

/// What a request path names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `/api`: the core group's versions.
    CoreVersions,
    /// `/apis`: the group list.
    Groups,
    /// `/apis/{group}`.
    Group(String),
    /// `/api/v1` or `/apis/{group}/{version}`: a resource list.
    Resources { group: String, version: String },
    /// A collection or one object of a served resource.
    Object(ObjectPath),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectPath {
    pub resource: &'static Resource,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub subresource: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathError {
    /// No such path (404).
    NotFound,
    /// A namespaced path for a cluster-scoped resource, or the reverse (404 as well, with a hint).
    Scope(String),
}

pub fn parse(path: &str) -> Result<Target, PathError> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let (group, version, rest): (&str, &str, &[&str]) = match parts.as_slice() {
        ["api"] => return Ok(Target::CoreVersions),
        ["apis"] => return Ok(Target::Groups),
        ["apis", g] => return Ok(Target::Group((*g).to_string())),
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Err(PathError::NotFound),
    };
    if rest.is_empty() {
        return Ok(Target::Resources {
            group: group.into(),
            version: version.into(),
        });
    }
    // `namespaces/{ns}/{resource}/...` addresses objects in a namespace; `namespaces/{ns}` and
    // `namespaces/{ns}/status|finalize` address the Namespace object itself.
    let (namespace, rest) = match rest {
        ["namespaces", _, res] if group.is_empty() && matches!(*res, "status" | "finalize") => {
            (None, rest)
        }
        ["namespaces", ns, _, ..] => (Some((*ns).to_string()), &rest[2..]),
        _ => (None, rest),
    };
    let (res, name, sub) = match rest {
        [res] => (*res, None, None),
        [res, name] => (*res, Some((*name).to_string()), None),
        [res, name, sub] => (*res, Some((*name).to_string()), Some((*sub).to_string())),
        _ => return Err(PathError::NotFound),
    };
    let resource = registry::find(group, version, res).ok_or(PathError::NotFound)?;
    if namespace.is_some() && !resource.namespaced {
        return Err(PathError::Scope(format!(
            "{} is not namespaced",
            resource.name
        )));
    }
    Ok(Target::Object(ObjectPath {
        resource,
        namespace,
        name,
        subresource: sub,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(path: &str) -> (String, Option<String>, Option<String>, Option<String>) {
        match parse(path).unwrap() {
            Target::Object(o) => (
                o.resource.name.to_string(),
                o.namespace,
                o.name,
                o.subresource,
            ),
            other => panic!("{path}: {other:?}"),
        }
    }
    fn s(x: &str) -> Option<String> {
        Some(x.to_string())
    }

    #[test]
    fn paths_address_what_kube_apiserver_would() {
        assert_eq!(parse("/api").unwrap(), Target::CoreVersions);
        assert_eq!(parse("/apis").unwrap(), Target::Groups);
        assert_eq!(
            parse("/api/v1").unwrap(),
            Target::Resources {
                group: "".into(),
                version: "v1".into()
            }
        );
        assert_eq!(object("/api/v1/pods"), ("pods".into(), None, None, None));
        assert_eq!(
            object("/api/v1/namespaces/default/pods"),
            ("pods".into(), s("default"), None, None)
        );
        assert_eq!(
            object("/api/v1/namespaces/default/pods/web/log"),
            ("pods".into(), s("default"), s("web"), s("log"))
        );
        assert_eq!(
            object("/api/v1/namespaces/default"),
            ("namespaces".into(), None, s("default"), None)
        );
        assert_eq!(
            object("/api/v1/namespaces/default/status"),
            ("namespaces".into(), None, s("default"), s("status"))
        );
        assert_eq!(
            object("/apis/apps/v1/namespaces/a/deployments/d/scale"),
            ("deployments".into(), s("a"), s("d"), s("scale"))
        );
        assert_eq!(
            object("/api/v1/nodes/n1"),
            ("nodes".into(), None, s("n1"), None)
        );
    }

    #[test]
    fn unknown_and_misscoped_paths_are_refused() {
        assert_eq!(parse("/api/v1/widgets"), Err(PathError::NotFound));
        assert_eq!(parse("/apis/apps/v2/deployments"), Err(PathError::NotFound));
        assert!(matches!(
            parse("/api/v1/namespaces/a/nodes"),
            Err(PathError::Scope(_))
        ));
        assert_eq!(parse("/healthz"), Err(PathError::NotFound));
    }
}
