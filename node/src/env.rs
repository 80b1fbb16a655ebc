//! A container's environment and volumes, resolved from its pod: `env` values and
//! `valueFrom` (configMapKeyRef, secretKeyRef, fieldRef, resourceFieldRef), `envFrom`, the
//! HOSTNAME a container sees, and the files of configMap and secret volumes.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret, ServiceAccount};
use kube::Api;

/// Why a container's configuration cannot be made (reason `CreateContainerConfigError`).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// Reads the ConfigMaps and Secrets a pod refers to, and asks for its ServiceAccount's tokens.
pub struct Sources {
    pub configmaps: Api<ConfigMap>,
    pub secrets: Api<Secret>,
    pub service_accounts: Api<ServiceAccount>,
}

impl Sources {
    pub async fn configmap(
        &self,
        name: &str,
    ) -> Result<Option<BTreeMap<String, String>>, ConfigError> {
        match self.configmaps.get_opt(name).await {
            Ok(Some(cm)) => {
                let mut data = cm.data.unwrap_or_default();
                for (k, v) in cm.binary_data.unwrap_or_default() {
                    data.insert(k, String::from_utf8_lossy(&v.0).into_owned());
                }
                Ok(Some(data))
            }
            Ok(None) => Ok(None),
            Err(e) => Err(ConfigError(format!("cannot read configmap {name:?}: {e}"))),
        }
    }

    pub async fn secret(
        &self,
        name: &str,
    ) -> Result<Option<BTreeMap<String, Vec<u8>>>, ConfigError> {
        match self.secrets.get_opt(name).await {
            Ok(Some(s)) => {
                let mut data: BTreeMap<String, Vec<u8>> = s
                    .data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.0))
                    .collect();
                for (k, v) in s.string_data.unwrap_or_default() {
                    data.insert(k, v.into_bytes());
                }
                Ok(Some(data))
            }
            Ok(None) => Ok(None),
            Err(e) => Err(ConfigError(format!("cannot read secret {name:?}: {e}"))),
        }
    }
}

impl Sources {
    /// A token of `pod`'s ServiceAccount for `audience` (None: the API), bound to the pod,
    /// valid for `seconds` (TokenRequest, as the kubelet asks for projected tokens).
    pub async fn token(
        &self,
        pod: &Pod,
        audience: Option<&str>,
        seconds: i64,
    ) -> Result<String, ConfigError> {
        let account = pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".into());
        let mut spec = serde_json::json!({
            "expirationSeconds": seconds,
            "boundObjectRef": {"kind": "Pod", "apiVersion": "v1",
                               "name": pod.metadata.name, "uid": pod.metadata.uid},
        });
        if let Some(a) = audience {
            spec["audiences"] = serde_json::json!([a]);
        }
        let body = serde_json::json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec});
        let answer: serde_json::Value = self
            .service_accounts
            .create_subresource(
                "token",
                &account,
                &kube::api::PostParams::default(),
                serde_json::to_vec(&body).expect("serialises"),
            )
            .await
            .map_err(|e| {
                ConfigError(format!(
                    "cannot get a token of ServiceAccount {account:?}: {e}"
                ))
            })?;
        answer["status"]["token"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| ConfigError(format!("the token request for {account:?} got no token")))
    }
}

/// The value of a `fieldRef` path for this pod.
pub fn field_value(pod: &Pod, path: &str, pod_ip: &str, host_ip: &str) -> Option<String> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let label_or_annotation = |map: &Option<BTreeMap<String, String>>, key: &str| {
        map.as_ref().and_then(|m| m.get(key).cloned())
    };
    Some(match path {
        "metadata.name" => meta.name.clone()?,
        "metadata.namespace" => meta.namespace.clone()?,
        "metadata.uid" => meta.uid.clone()?,
        "spec.nodeName" => spec?.node_name.clone()?,
        "spec.serviceAccountName" => spec?.service_account_name.clone().unwrap_or_default(),
        "status.podIP" | "status.podIPs" => pod_ip.to_string(),
        "status.hostIP" | "status.hostIPs" => host_ip.to_string(),
        p => {
            let key = p
                .strip_prefix("metadata.labels['")
                .or_else(|| p.strip_prefix("metadata.annotations['"))?
                .strip_suffix("']")?;
            if p.starts_with("metadata.labels") {
                label_or_annotation(&meta.labels, key)?
            } else {
                label_or_annotation(&meta.annotations, key)?
            }
        }
    })
}

/// The docker-link style variables of `services` as the kubelet gives them to a container:
/// every Service with a ClusterIP in the pod's namespace (unless `enableServiceLinks: false`),
/// and the `kubernetes` Service of `default` always. For Service `redis-primary`, port 6379:
/// `REDIS_PRIMARY_SERVICE_HOST`, `_SERVICE_PORT`, `_SERVICE_PORT_<NAME>`, `REDIS_PRIMARY_PORT=tcp://ip:6379`,
/// and `REDIS_PRIMARY_PORT_6379_TCP`, `_PROTO`, `_PORT`, `_ADDR`.
pub fn service_environment(
    pod: &Pod,
    services: &[std::sync::Arc<k8s_openapi::api::core::v1::Service>],
) -> Vec<(String, String)> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let links = pod
        .spec
        .as_ref()
        .and_then(|s| s.enable_service_links)
        .unwrap_or(true);
    let mut chosen: Vec<&k8s_openapi::api::core::v1::Service> = services
        .iter()
        .map(|s| s.as_ref())
        .filter(|s| {
            let (sns, name) = (
                s.metadata.namespace.as_deref().unwrap_or(""),
                s.metadata.name.as_deref().unwrap_or(""),
            );
            (sns == "default" && name == "kubernetes") || (links && sns == ns)
        })
        .collect();
    chosen.sort_by_key(|s| s.metadata.name.clone());
    let mut env = Vec::new();
    for svc in chosen {
        let Some(spec) = &svc.spec else { continue };
        let Some(ip) = spec
            .cluster_ip
            .as_deref()
            .filter(|ip| !ip.is_empty() && *ip != "None")
        else {
            continue;
        };
        let ports = spec.ports.as_deref().unwrap_or_default();
        let Some(first) = ports.first() else { continue };
        let name = svc
            .metadata
            .name
            .as_deref()
            .unwrap_or_default()
            .to_uppercase()
            .replace('-', "_");
        env.push((format!("{name}_SERVICE_HOST"), ip.to_string()));
        env.push((format!("{name}_SERVICE_PORT"), first.port.to_string()));
        for p in ports {
            if let Some(pname) = p.name.as_deref().filter(|n| !n.is_empty()) {
                let pname = pname.to_uppercase().replace('-', "_");
                env.push((format!("{name}_SERVICE_PORT_{pname}"), p.port.to_string()));
            }
        }
        let proto = |p: &k8s_openapi::api::core::v1::ServicePort| {
            p.protocol.as_deref().unwrap_or("TCP").to_string()
        };
        env.push((
            format!("{name}_PORT"),
            format!("{}://{ip}:{}", proto(first).to_lowercase(), first.port),
        ));
        for p in ports {
            let pr = proto(p);
            let prefix = format!("{name}_PORT_{}_{pr}", p.port);
            env.push((
                prefix.clone(),
                format!("{}://{ip}:{}", pr.to_lowercase(), p.port),
            ));
            env.push((format!("{prefix}_PROTO"), pr.to_lowercase()));
            env.push((format!("{prefix}_PORT"), p.port.to_string()));
            env.push((format!("{prefix}_ADDR"), ip.to_string()));
        }
    }
    env
}

/// The environment of one container, in the order Kubernetes builds it: the Services'
/// variables, then `envFrom`, then `env` (which wins), with HOSTNAME set to the pod's hostname.
pub async fn environment(
    pod: &Pod,
    container: &Container,
    sources: &Sources,
    pod_ip: &str,
    host_ip: &str,
    services: Vec<(String, String)>,
) -> Result<Vec<(String, String)>, ConfigError> {
    let mut env: Vec<(String, String)> = Vec::new();
    let set = |env: &mut Vec<(String, String)>, k: String, v: String| {
        env.retain(|(name, _)| *name != k);
        env.push((k, v));
    };
    let hostname = pod
        .spec
        .as_ref()
        .and_then(|s| s.hostname.clone())
        .or_else(|| pod.metadata.name.clone())
        .unwrap_or_default();
    set(&mut env, "HOSTNAME".into(), hostname);
    for (k, v) in services {
        set(&mut env, k, v);
    }
    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        if let Some(r) = &from.config_map_ref {
            match sources.configmap(&r.name).await? {
                Some(data) => {
                    for (k, v) in data {
                        set(&mut env, format!("{prefix}{k}"), v);
                    }
                }
                None if r.optional == Some(true) => {}
                None => return Err(ConfigError(format!("configmap {:?} not found", r.name))),
            }
        }
        if let Some(r) = &from.secret_ref {
            match sources.secret(&r.name).await? {
                Some(data) => {
                    for (k, v) in data {
                        set(
                            &mut env,
                            format!("{prefix}{k}"),
                            String::from_utf8_lossy(&v).into_owned(),
                        );
                    }
                }
                None if r.optional == Some(true) => {}
                None => return Err(ConfigError(format!("secret {:?} not found", r.name))),
            }
        }
    }
    for var in container.env.iter().flatten() {
        let value = match (&var.value, &var.value_from) {
            (Some(v), _) => Some(expand(v, &env)),
            (None, None) => Some(String::new()),
            (None, Some(from)) => {
                if let Some(r) = &from.config_map_key_ref {
                    let data = sources.configmap(&r.name).await?;
                    match data.and_then(|d| d.get(&r.key).cloned()) {
                        Some(v) => Some(v),
                        None if r.optional == Some(true) => None,
                        None => {
                            return Err(ConfigError(format!(
                                "couldn't find key {} in ConfigMap {}/{}",
                                r.key,
                                pod.metadata.namespace.as_deref().unwrap_or(""),
                                r.name
                            )))
                        }
                    }
                } else if let Some(r) = &from.secret_key_ref {
                    let data = sources.secret(&r.name).await?;
                    match data.and_then(|d| d.get(&r.key).cloned()) {
                        Some(v) => Some(String::from_utf8_lossy(&v).into_owned()),
                        None if r.optional == Some(true) => None,
                        None => {
                            return Err(ConfigError(format!(
                                "couldn't find key {} in Secret {}/{}",
                                r.key,
                                pod.metadata.namespace.as_deref().unwrap_or(""),
                                r.name
                            )))
                        }
                    }
                } else if let Some(f) = &from.field_ref {
                    Some(
                        field_value(pod, &f.field_path, pod_ip, host_ip).ok_or_else(|| {
                            ConfigError(format!("unsupported fieldRef {:?}", f.field_path))
                        })?,
                    )
                } else if let Some(r) = &from.resource_field_ref {
                    let resources = container.resources.as_ref();
                    let pick = |limits: bool| {
                        let map = if limits {
                            resources.and_then(|r| r.limits.as_ref())
                        } else {
                            resources.and_then(|r| r.requests.as_ref())
                        };
                        let (kind, name) = r.resource.split_once('.')?;
                        let q = map?.get(name)?;
                        let _ = kind;
                        Some(match name {
                            "memory" => api::quantity::bytes(&q.0)?.to_string(),
                            "cpu" => api::quantity::millicores(&q.0)?.div_ceil(1000).to_string(),
                            _ => q.0.clone(),
                        })
                    };
                    pick(r.resource.starts_with("limits")).or(Some("0".into()))
                } else {
                    None
                }
            }
        };
        if let Some(v) = value {
            set(&mut env, var.name.clone(), v);
        }
    }
    Ok(env)
}

/// `$(VAR)` references to earlier variables expand; `$$(VAR)` stays literal, as in Kubernetes.
pub fn expand(value: &str, env: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(i) = rest.find("$(") {
        if rest[..i].ends_with('$') {
            out.push_str(&rest[..i - 1]);
            out.push_str("$(");
            rest = &rest[i + 2..];
            continue;
        }
        out.push_str(&rest[..i]);
        match rest[i + 2..].find(')') {
            Some(end) => {
                let name = &rest[i + 2..i + 2 + end];
                match env.iter().rev().find(|(k, _)| k == name) {
                    Some((_, v)) => out.push_str(v),
                    None => out.push_str(&rest[i..i + 3 + end]),
                }
                rest = &rest[i + 3 + end..];
            }
            None => {
                out.push_str(&rest[i..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_expand_and_escapes_stay() {
        let env = vec![("A".to_string(), "1".to_string())];
        assert_eq!(expand("x-$(A)-$(B)-$$(A)", &env), "x-1-$(B)-$(A)");
        assert_eq!(expand("plain", &env), "plain");
        assert_eq!(expand("$(A", &env), "$(A");
    }

    #[test]
    fn field_refs_read_the_pod() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns", "labels": {"app": "web"}},
            "spec": {"nodeName": "n1", "containers": []}}))
        .unwrap();
        assert_eq!(field_value(&pod, "metadata.name", "", "").unwrap(), "p");
        assert_eq!(field_value(&pod, "spec.nodeName", "", "").unwrap(), "n1");
        assert_eq!(
            field_value(&pod, "status.podIP", "10.0.0.1", "").unwrap(),
            "10.0.0.1"
        );
        assert_eq!(
            field_value(&pod, "metadata.labels['app']", "", "").unwrap(),
            "web"
        );
        assert!(field_value(&pod, "spec.bogus", "", "").is_none());
    }

    #[test]
    fn services_give_docker_link_variables_and_links_can_be_turned_off() {
        let svc = |ns: &str, name: &str, ip: &str| {
            std::sync::Arc::new(
                serde_json::from_value::<k8s_openapi::api::core::v1::Service>(serde_json::json!({
                    "metadata": {"name": name, "namespace": ns},
                    "spec": {"clusterIP": ip, "ports": [{"name": "http-alt", "port": 8080, "protocol": "TCP"}, {"port": 53, "protocol": "UDP"}]}
                }))
                .unwrap(),
            )
        };
        let services = vec![
            svc("default", "kubernetes", "10.96.0.1"),
            svc("shop", "redis-primary", "10.96.0.7"),
            svc("shop", "headless", "None"),
            svc("other", "elsewhere", "10.96.0.9"),
        ];
        let pod: Pod = serde_json::from_value(serde_json::json!({"metadata": {"name": "p", "namespace": "shop"}, "spec": {"containers": []}})).unwrap();
        let env: std::collections::BTreeMap<String, String> =
            service_environment(&pod, &services).into_iter().collect();
        assert_eq!(env["REDIS_PRIMARY_SERVICE_HOST"], "10.96.0.7");
        assert_eq!(env["REDIS_PRIMARY_SERVICE_PORT"], "8080");
        assert_eq!(env["REDIS_PRIMARY_SERVICE_PORT_HTTP_ALT"], "8080");
        assert_eq!(env["REDIS_PRIMARY_PORT"], "tcp://10.96.0.7:8080");
        assert_eq!(env["REDIS_PRIMARY_PORT_53_UDP"], "udp://10.96.0.7:53");
        assert_eq!(env["REDIS_PRIMARY_PORT_53_UDP_ADDR"], "10.96.0.7");
        assert_eq!(env["KUBERNETES_SERVICE_HOST"], "10.96.0.1");
        assert!(!env
            .keys()
            .any(|k| k.starts_with("HEADLESS") || k.starts_with("ELSEWHERE")));
        let pod: Pod = serde_json::from_value(serde_json::json!({"metadata": {"name": "p", "namespace": "shop"}, "spec": {"containers": [], "enableServiceLinks": false}})).unwrap();
        let env = service_environment(&pod, &services);
        assert!(
            env.iter().all(|(k, _)| k.starts_with("KUBERNETES_")),
            "{env:?}"
        );
    }
}
