//! Impersonation: a caller acting as another user (`kubectl --as`, `--as-group`, `--as-uid`;
//! client-go's `Impersonate-User`, `Impersonate-Group`, `Impersonate-Uid` and
//! `Impersonate-Extra-<key>` headers), as kube-apiserver's impersonation filter does it. Each
//! part asked for is its own authorization check with the verb `impersonate` — users (or the
//! ServiceAccount itself), groups, uids, userextras/<key> — and only when all pass is the request
//! served as the impersonated user. Pure: the caller hands in the headers and asks RBAC.

use std::collections::BTreeMap;

use crate::rbac::{Attributes, ResourceAttributes, User};

/// What a request's headers ask to be served as.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Requested {
    pub user: Option<String>,
    pub groups: Vec<String>,
    pub uid: Option<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

/// Why impersonation headers cannot be honoured as sent (HTTP 400).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("Impersonate-Group, Impersonate-Uid and Impersonate-Extra-* need Impersonate-User")]
    WithoutUser,
    #[error("the Impersonate-Extra key {0:?} is not valid percent-encoding")]
    BadExtraKey(String),
}

const EXTRA_PREFIX: &str = "impersonate-extra-";

/// Reads the impersonation headers among `headers` (name, value), names in any case. None:
/// the request impersonates nobody.
pub fn requested<'a>(
    headers: impl Iterator<Item = (&'a str, &'a str)>,
) -> Result<Option<Requested>, RequestError> {
    let mut r = Requested::default();
    let mut any = false;
    for (name, value) in headers {
        let name = name.to_ascii_lowercase();
        match name.as_str() {
            "impersonate-user" => r.user = Some(value.to_string()),
            "impersonate-group" => r.groups.push(value.to_string()),
            "impersonate-uid" => r.uid = Some(value.to_string()),
            _ => match name.strip_prefix(EXTRA_PREFIX) {
                // Header names cannot carry every character of a key: they come
                // percent-encoded, as client-go sends them.
                Some(key) => {
                    let key = percent_encoding::percent_decode_str(key)
                        .decode_utf8()
                        .map_err(|_| RequestError::BadExtraKey(key.to_string()))?
                        .into_owned();
                    r.extra.entry(key).or_default().push(value.to_string());
                }
                None => continue,
            },
        }
        any = true;
    }
    if !any {
        return Ok(None);
    }
    if r.user.is_none() {
        return Err(RequestError::WithoutUser);
    }
    Ok(Some(r))
}

/// One `impersonate` permission a request needs: (API group, resource, subresource,
/// namespace, name).
pub type Check = (&'static str, &'static str, String, String, String);

/// Every permission impersonating `r` needs, in the order kube-apiserver checks them.
pub fn checks(r: &Requested) -> Vec<Check> {
    let mut out = Vec::new();
    if let Some(user) = &r.user {
        match service_account(user) {
            Some((ns, name)) => out.push((
                "",
                "serviceaccounts",
                String::new(),
                ns.to_string(),
                name.to_string(),
            )),
            None => out.push(("", "users", String::new(), String::new(), user.clone())),
        }
    }
    for g in &r.groups {
        out.push(("", "groups", String::new(), String::new(), g.clone()));
    }
    if let Some(uid) = &r.uid {
        out.push((
            "authentication.k8s.io",
            "uids",
            String::new(),
            String::new(),
            uid.clone(),
        ));
    }
    for (key, values) in &r.extra {
        for v in values {
            out.push((
                "authentication.k8s.io",
                "userextras",
                key.clone(),
                String::new(),
                v.clone(),
            ));
        }
    }
    out
}

/// The attributes RBAC is asked about for `check`.
pub fn attributes(check: &Check) -> Attributes<'_> {
    let (group, resource, sub, ns, name) = check;
    Attributes {
        verb: "impersonate",
        resource: Some(ResourceAttributes {
            group,
            resource,
            subresource: sub,
            namespace: ns,
            name,
        }),
        path: "",
    }
}

/// The user a permitted impersonation serves the request as. A ServiceAccount impersonated
/// without groups gets a ServiceAccount's groups; everybody but `system:anonymous` is in
/// `system:authenticated`.
pub fn user(r: &Requested) -> User {
    let name = r.user.clone().unwrap_or_default();
    let mut groups = r.groups.clone();
    if groups.is_empty() {
        if let Some((ns, _)) = service_account(&name) {
            groups = vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{ns}"),
            ];
        }
    }
    let everybody = if name == "system:anonymous" {
        "system:unauthenticated"
    } else {
        "system:authenticated"
    };
    if !groups.iter().any(|g| g == everybody) {
        groups.push(everybody.into());
    }
    User {
        name,
        groups,
        uid: r.uid.clone().unwrap_or_default(),
        extra: r.extra.clone(),
    }
}

fn service_account(user: &str) -> Option<(&str, &str)> {
    user.strip_prefix("system:serviceaccount:")?.split_once(':')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&str, &str)]) -> Result<Option<Requested>, RequestError> {
        requested(headers.iter().copied())
    }

    #[test]
    fn no_headers_impersonate_nobody() {
        assert_eq!(req(&[("Authorization", "Bearer x")]), Ok(None));
    }

    #[test]
    fn every_part_is_its_own_check() {
        let r = req(&[
            ("Impersonate-User", "bob"),
            ("Impersonate-Group", "devs"),
            ("impersonate-group", "ops"),
            ("Impersonate-Uid", "1234"),
            ("Impersonate-Extra-Acme.com%2Fproject", "shop"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(r.extra["acme.com/project"], ["shop"]);
        let checks: Vec<(&str, &str, &str)> = checks(&r)
            .iter()
            .map(|(g, res, sub, _, _)| (*g, *res, sub.as_str()))
            .map(|(g, res, sub)| (g, res, if sub.is_empty() { "" } else { "key" }))
            .collect();
        assert_eq!(
            checks,
            [
                ("", "users", ""),
                ("", "groups", ""),
                ("", "groups", ""),
                ("authentication.k8s.io", "uids", ""),
                ("authentication.k8s.io", "userextras", "key"),
            ]
        );
        let u = user(&r);
        assert_eq!(u.name, "bob");
        assert_eq!(u.groups, ["devs", "ops", "system:authenticated"]);
        assert_eq!(u.uid, "1234");
    }

    #[test]
    fn a_service_account_is_checked_as_one_and_gets_its_groups() {
        let r = req(&[("Impersonate-User", "system:serviceaccount:shop:robot")])
            .unwrap()
            .unwrap();
        let c = &checks(&r)[0];
        assert_eq!(
            (c.1, c.3.as_str(), c.4.as_str()),
            ("serviceaccounts", "shop", "robot")
        );
        assert_eq!(
            user(&r).groups,
            [
                "system:serviceaccounts",
                "system:serviceaccounts:shop",
                "system:authenticated"
            ]
        );
    }

    #[test]
    fn groups_without_a_user_are_refused() {
        assert_eq!(
            req(&[("Impersonate-Group", "system:masters")]),
            Err(RequestError::WithoutUser)
        );
        assert!(matches!(
            req(&[("Impersonate-User", "a"), ("Impersonate-Extra-%ff", "x")]),
            Err(RequestError::BadExtraKey(_))
        ));
    }
}
