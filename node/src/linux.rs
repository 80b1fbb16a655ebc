//! What a pod's Linux containers need beyond what Wasm containers do, decided from the pod
//! without I/O: their security context (the container's merged over the pod's), their command
//! and args as written (merged with the image later, by the runtime), and the pod's /etc files.

use std::net::{IpAddr, Ipv4Addr};

use k8s_openapi::api::core::v1::{Container, Pod};
use runtime::{LinuxOptions, SeccompProfile, Security};

/// The Linux side of a container's spec; `$(VAR)` in command and args expanded from `env`.
pub fn options(pod: &Pod, container: &Container, env: &[(String, String)]) -> LinuxOptions {
    let spec = pod.spec.clone().unwrap_or_default();
    let pod_sc = spec.security_context.unwrap_or_default();
    let sc = container.security_context.clone().unwrap_or_default();
    let caps = sc.capabilities.clone().unwrap_or_default();
    let expand = |list: &Option<Vec<String>>| {
        list.as_ref()
            .map(|l| l.iter().map(|a| crate::env::expand(a, env)).collect())
    };
    let id = |v: Option<i64>| v.and_then(|v| u32::try_from(v).ok());
    LinuxOptions {
        command: expand(&container.command),
        args: expand(&container.args),
        working_dir: container.working_dir.clone().filter(|d| !d.is_empty()),
        hostname: hostname(pod),
        stdin: container.stdin.unwrap_or(false),
        stdin_once: container.stdin_once.unwrap_or(false),
        tty: container.tty.unwrap_or(false),
        cpu_request: container
            .resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get("cpu"))
            .and_then(|q| api::quantity::millicores(&q.0)),
        security: Security {
            run_as_user: id(sc.run_as_user.or(pod_sc.run_as_user)),
            run_as_group: id(sc.run_as_group.or(pod_sc.run_as_group)),
            run_as_non_root: sc
                .run_as_non_root
                .or(pod_sc.run_as_non_root)
                .unwrap_or(false),
            read_only_root_filesystem: sc.read_only_root_filesystem.unwrap_or(false),
            privileged: sc.privileged.unwrap_or(false),
            allow_privilege_escalation: sc.allow_privilege_escalation,
            capabilities_add: caps.add.unwrap_or_default(),
            capabilities_drop: caps.drop.unwrap_or_default(),
            host_pid: spec.host_pid.unwrap_or(false),
            host_ipc: spec.host_ipc.unwrap_or(false),
            seccomp: match sc.seccomp_profile.or(pod_sc.seccomp_profile) {
                Some(p) if p.type_ == "Unconfined" => SeccompProfile::Unconfined,
                Some(p) if p.type_ == "Localhost" => {
                    SeccompProfile::Localhost(p.localhost_profile.unwrap_or_default())
                }
                _ => SeccompProfile::RuntimeDefault,
            },
        },
    }
}

/// The pod's hostname: `spec.hostname`, or its name, made a DNS label: lowercase letters,
/// digits and `-` only (anything else becomes `-`), at most 63 bytes, never starting with `-`
/// (it is an argument to `hostname` on the host).
pub fn hostname(pod: &Pod) -> String {
    let name = pod
        .spec
        .as_ref()
        .and_then(|s| s.hostname.clone())
        .filter(|h| !h.is_empty())
        .or_else(|| pod.metadata.name.clone())
        .unwrap_or_default();
    let label: String = name
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(63)
        .collect();
    match label.trim_matches('-') {
        "" => "pod".into(),
        l => l.to_string(),
    }
}

/// The pod's `/etc/hosts`, `/etc/hostname` and (when the cluster DNS is known and the pod's
/// dnsPolicy is ClusterFirst, the default) `/etc/resolv.conf`, as the kubelet writes them.
pub fn etc_files(pod: &Pod, pod_ip: IpAddr, dns: Option<Ipv4Addr>) -> Vec<(&'static str, String)> {
    let host = hostname(pod);
    let ns = pod
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let spec = pod.spec.clone().unwrap_or_default();
    let fqdn = spec
        .subdomain
        .as_deref()
        .filter(|s| !s.is_empty())
        .map(|sub| format!("{host}.{sub}.{ns}.svc.cluster.local\t"))
        .unwrap_or_default();
    let mut hosts = format!(
        "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
         {pod_ip}\t{fqdn}{host}\n"
    );
    for alias in spec.host_aliases.iter().flatten() {
        let ip = &alias.ip;
        if ip.parse::<IpAddr>().is_ok() {
            let names = alias.hostnames.clone().unwrap_or_default().join("\t");
            hosts.push_str(&format!("{ip}\t{names}\n"));
        }
    }
    let mut files = vec![("hosts", hosts), ("hostname", format!("{host}\n"))];
    let policy = spec.dns_policy.as_deref().unwrap_or("ClusterFirst");
    if let (Some(dns), "ClusterFirst" | "ClusterFirstWithHostNet") = (dns, policy) {
        files.push((
            "resolv.conf",
            network::dns::resolv_conf(&ns, dns, "cluster.local"),
        ));
    }
    files
}

/// What kubectl hears when the oci runtime cannot `what` (exec, attach) in a container.
fn refusal(
    e: runtime::oci::ExecError,
    what: &str,
    namespace: &str,
    pod: &str,
    container: &str,
) -> crate::exec::ExecError {
    match e {
        runtime::oci::ExecError::NotRunning(_) => crate::exec::ExecError::NotSupported(format!(
            "container {container:?} of pod {namespace}/{pod} is not a running Linux container \
             here ({what} is not supported for Wasm containers)"
        )),
        runtime::oci::ExecError::Failed(m) => crate::exec::ExecError::Failed(m),
    }
}

/// `kubectl exec` on this node: commands run in Linux containers through the oci runtime.
pub struct ContainerExec {
    pub oci: Option<std::sync::Arc<runtime::oci::OciRuntime>>,
}

impl crate::exec::Exec for ContainerExec {
    fn exec(
        &self,
        namespace: &str,
        pod: &str,
        container: &str,
        argv: Vec<String>,
        io: crate::exec::ExecIo,
    ) -> runtime::BoxFuture<'_, Result<crate::exec::Running, crate::exec::ExecError>> {
        use crate::exec::{ExecError, ExecIo, Running};
        let (namespace, pod, container) = (
            namespace.to_string(),
            pod.to_string(),
            container.to_string(),
        );
        Box::pin(async move {
            let Some(oci) = &self.oci else {
                return Err(ExecError::NotSupported(
                    "exec is not supported for Wasm containers, and this node runs no Linux \
                     containers"
                        .into(),
                ));
            };
            let started = match io {
                ExecIo::Pipes { stdin } => {
                    oci.exec(&namespace, &pod, &container, argv, stdin)
                        .map(|child| Running {
                            child,
                            terminal: None,
                        })
                }
                ExecIo::Terminal => oci
                    .exec_terminal(&namespace, &pod, &container, argv)
                    .await
                    .map(|(child, terminal)| Running {
                        child,
                        terminal: Some(terminal),
                    }),
            };
            started.map_err(|e| refusal(e, "exec", &namespace, &pod, &container))
        })
    }

    fn attach(
        &self,
        namespace: &str,
        pod: &str,
        container: &str,
    ) -> runtime::BoxFuture<'_, Result<Box<dyn crate::exec::AttachIo>, crate::exec::ExecError>>
    {
        use crate::exec::ExecError;
        let (namespace, pod, container) = (
            namespace.to_string(),
            pod.to_string(),
            container.to_string(),
        );
        Box::pin(async move {
            let Some(oci) = &self.oci else {
                return Err(ExecError::NotSupported(
                    "attach is not supported for Wasm containers".into(),
                ));
            };
            match oci.attach(&namespace, &pod, &container).await {
                Ok(conn) => Ok(Box::new(conn) as Box<dyn crate::exec::AttachIo>),
                Err(e) => Err(refusal(e, "attach", &namespace, &pod, &container)),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn the_container_security_context_wins_over_the_pod() {
        let p = pod(serde_json::json!({
            "metadata": {"name": "web-1", "namespace": "shop"},
            "spec": {
                "securityContext": {"runAsUser": 1000, "runAsGroup": 2000, "runAsNonRoot": true},
                "containers": [{"name": "c", "command": ["echo", "$(GREETING)"],
                    "securityContext": {"runAsUser": 33, "capabilities": {"drop": ["ALL"]}},
                    "resources": {"requests": {"cpu": "250m"}}}],
            },
        }));
        let c = p.spec.as_ref().unwrap().containers[0].clone();
        let o = options(&p, &c, &[("GREETING".into(), "hi".into())]);
        assert_eq!(o.command, Some(vec!["echo".to_string(), "hi".to_string()]));
        assert_eq!(o.args, None);
        assert_eq!(o.security.run_as_user, Some(33));
        assert_eq!(o.security.run_as_group, Some(2000));
        assert!(o.security.run_as_non_root);
        assert_eq!(o.security.capabilities_drop, vec!["ALL"]);
        assert_eq!(o.cpu_request, Some(250));
        assert_eq!(o.hostname, "web-1");
        let mut odd = p.clone();
        odd.spec.as_mut().unwrap().hostname = Some("-F/etc/machine-id".into());
        assert_eq!(hostname(&odd), "f-etc-machine-id");
    }

    #[test]
    fn etc_files_name_the_pod_and_the_cluster_dns() {
        let p = pod(serde_json::json!({
            "metadata": {"name": "web-1", "namespace": "shop"},
            "spec": {"subdomain": "web", "containers": [],
                     "hostAliases": [{"ip": "10.1.2.3", "hostnames": ["db"]}, {"ip": "bad"}]},
        }));
        let files = etc_files(
            &p,
            "10.42.0.7".parse().unwrap(),
            Some(Ipv4Addr::new(10, 96, 0, 10)),
        );
        let get = |n: &str| {
            files
                .iter()
                .find(|(f, _)| *f == n)
                .map(|(_, c)| c.clone())
                .unwrap()
        };
        assert!(get("hosts").contains("10.42.0.7\tweb-1.web.shop.svc.cluster.local\tweb-1\n"));
        assert!(get("hosts").contains("10.1.2.3\tdb\n"));
        assert!(!get("hosts").contains("bad"));
        assert_eq!(get("hostname"), "web-1\n");
        assert!(get("resolv.conf").contains("nameserver 10.96.0.10"));
        assert!(get("resolv.conf").contains("search shop.svc.cluster.local"));
        let no_dns = etc_files(&p, "10.42.0.7".parse().unwrap(), None);
        assert!(no_dns.iter().all(|(f, _)| *f != "resolv.conf"));
    }
}
