//! Starts in process: a Wasm function at zero answers its first requests from the node agent's
//! own process while its pod is still on the way. Waking a revision through the API takes
//! five writes and as many watch hops (activate, ReplicaSet, pod, binding, status) before the
//! router sees a ready pod; instantiating the component here takes microseconds once it is
//! compiled. So the router starts the revision's one container itself — from the image the
//! node already holds, with the environment its pod would get — and sends the waiting
//! requests there, until a pod of the revision is ready anywhere (or [`LIFETIME`] has passed);
//! then the in-process instance takes no new requests and stops when its last one ends.
//!
//! Only what the node can run exactly as the pod would is started this way ([`plan`]): one
//! container, no volumes, environment values written in the spec (no Secret, ConfigMap or
//! field references, which only a pod bound to the node may read), no probes that hold the
//! pod back, no placement the node may not satisfy. Everything else waits for its pod.
//! Outgoing requests of an in-process instance leave through the network of a running pod
//! of the same revision on this node — the same address, Services and NetworkPolicy as its
//! own pod — and wait for one to run ([`PodNetwork`]), never through the node's own network.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use api::knative::{labels, Revision};
use k8s_openapi::api::core::v1::{Container, EnvVar, Node, Pod};
use kube::runtime::reflector::Store;
use kube::Api;
use runtime::images::{ImageKind, ImageStore};
use runtime::{BoxFuture, ContainerSpec, Running, SharedRuntime};
use tokio::sync::watch;

/// How long an in-process instance takes new requests while no pod of its revision is ready.
pub const LIFETIME: Duration = Duration::from_secs(10);

/// How long an in-process instance's outgoing connection waits for a pod of its revision to
/// run on this node.
const NETWORK_WAIT: Duration = Duration::from_secs(10);

/// What an in-process instance runs: the pod the revision's Deployment makes, as far as a
/// node can know it before it exists (no name, no address), and its one container.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub pod: Pod,
    pub container: Container,
    /// `namespace/name` of the revision.
    pub revision: String,
}

/// The in-process plan of `rev` on `node`, or why it must wait for its pod. Pure.
pub fn plan(rev: &Revision, node: Option<&Node>) -> Result<Plan, &'static str> {
    let node = node.ok_or("the node does not know itself yet")?;
    let node_spec = node.spec.clone().unwrap_or_default();
    if node_spec.unschedulable == Some(true) {
        return Err("the node is cordoned");
    }
    if node_spec
        .taints
        .iter()
        .flatten()
        .any(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
    {
        return Err("the node is tainted");
    }
    let spec = &rev.spec.pod;
    if spec.containers.len() != 1 || spec.init_containers.as_ref().is_some_and(|c| !c.is_empty()) {
        return Err("the revision has more than one container");
    }
    if spec.volumes.as_ref().is_some_and(|v| !v.is_empty()) {
        return Err("the revision has volumes");
    }
    if spec.node_selector.as_ref().is_some_and(|s| !s.is_empty())
        || spec.affinity.is_some()
        || spec.node_name.is_some()
    {
        return Err("the revision chooses its nodes");
    }
    if spec.host_network == Some(true) {
        return Err("the revision uses the node's network");
    }
    if spec
        .runtime_class_name
        .as_deref()
        .is_some_and(|c| c != "wasm")
    {
        return Err("the revision names a runtime class");
    }
    let own = &spec.containers[0];
    if own.volume_mounts.as_ref().is_some_and(|m| !m.is_empty()) {
        return Err("the container mounts volumes");
    }
    if own.env_from.as_ref().is_some_and(|e| !e.is_empty())
        || own.env.iter().flatten().any(|e| e.value_from.is_some())
    {
        return Err("the container's environment refers to other objects");
    }
    // An image its pod would pull again (`Always`, the default for `:latest` and no tag) may
    // have moved since the node took it: only a digest says the node holds the same one.
    let image = own.image.as_deref().unwrap_or_default();
    let latest = {
        let last = image.rsplit('/').next().unwrap_or(image);
        !last.contains(':') || last.ends_with(":latest")
    };
    let policy =
        own.image_pull_policy
            .as_deref()
            .unwrap_or(if latest { "Always" } else { "IfNotPresent" });
    if policy == "Always" && !image.contains("@sha256:") {
        return Err("its pod pulls the image on every start (imagePullPolicy Always)");
    }
    if own.readiness_probe.is_some() || own.startup_probe.is_some() {
        return Err("the container has a readiness or startup probe");
    }
    if own
        .lifecycle
        .as_ref()
        .is_some_and(|l| l.post_start.is_some())
    {
        return Err("the container has a postStart hook");
    }
    // Knative's variables first, the container's own after them (they win), as the
    // revision's Deployment has them.
    let mut container = own.clone();
    let written = own.env.clone().unwrap_or_default();
    let mut env: Vec<EnvVar> = api::knative::function_env(rev)
        .into_iter()
        .filter(|(name, _)| !written.iter().any(|e| e.name == *name))
        .map(|(name, value)| EnvVar {
            name,
            value: Some(value),
            value_from: None,
        })
        .collect();
    env.extend(written);
    container.env = Some(env);
    let mut pod_labels = rev.metadata.labels.clone().unwrap_or_default();
    let name = rev.metadata.name.clone().unwrap_or_default();
    pod_labels.insert(labels::REVISION.into(), name.clone());
    let namespace = rev.metadata.namespace.clone().unwrap_or_default();
    let pod = Pod {
        metadata: kube::api::ObjectMeta {
            // Its HOSTNAME: the function can tell (and say) it answers from the node agent.
            name: Some(format!("{name}-in-process")),
            namespace: Some(namespace.clone()),
            labels: Some(pod_labels),
            ..Default::default()
        },
        spec: Some(k8s_openapi::api::core::v1::PodSpec {
            containers: vec![container.clone()],
            ..spec.clone()
        }),
        status: None,
    };
    Ok(Plan {
        pod,
        container,
        revision: format!("{namespace}/{name}"),
    })
}

/// Starts in-process instances (a trait so that the router's rules can be tested with a
/// double).
pub trait Start: Send + Sync {
    /// Starts `plan`'s container listening on loopback; its outgoing connections go through
    /// `network`. Resolves to the running instance (its `serving` address set) or why not.
    fn start(
        &self,
        plan: Arc<Plan>,
        network: PodNetwork,
    ) -> BoxFuture<'static, Result<Running, String>>;
}

/// Where an in-process instance's outgoing connections are made: a running pod of its
/// revision on this node, found in the router's view of the revisions' pods.
#[derive(Clone)]
pub struct PodNetwork {
    pub pods: Store<Pod>,
    /// Changes whenever the router's view of the pods does.
    pub pods_changed: watch::Receiver<u64>,
    pub node_name: String,
}

impl PodNetwork {
    /// The uid of a running pod of `revision` (`namespace/name`) on this node, when one
    /// runs there.
    fn running_pod(&self, revision: &str) -> Option<String> {
        let (ns, name) = revision.split_once('/')?;
        self.pods.state().iter().find_map(|p| {
            let on_this_node = p.spec.as_ref()?.node_name.as_deref() == Some(&self.node_name);
            let of_revision =
                p.metadata.labels.as_ref()?.get(labels::REVISION) == Some(&name.to_string());
            let status = p.status.as_ref()?;
            let running = status.phase.as_deref() == Some("Running") && status.pod_ip.is_some();
            (p.metadata.namespace.as_deref() == Some(ns)
                && on_this_node
                && of_revision
                && running
                && p.metadata.deletion_timestamp.is_none())
            .then(|| p.metadata.uid.clone())
            .flatten()
        })
    }

    /// Whether a live pod of `revision` is bound to another node and none to this one: then
    /// no pod will run here to lend its network.
    fn only_elsewhere(&self, revision: &str) -> bool {
        let Some((ns, name)) = revision.split_once('/') else {
            return false;
        };
        let bound: Vec<String> = self
            .pods
            .state()
            .iter()
            .filter(|p| {
                p.metadata.namespace.as_deref() == Some(ns)
                    && p.metadata.deletion_timestamp.is_none()
                    && p.metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get(labels::REVISION))
                        .is_some_and(|r| r == name)
            })
            .filter_map(|p| p.spec.as_ref()?.node_name.clone())
            .collect();
        !bound.is_empty() && !bound.contains(&self.node_name)
    }

    /// Waits (at most [`NETWORK_WAIT`]) for a pod of `revision` to run on this node; gives up
    /// at once when its pods are bound elsewhere.
    async fn wait_for_pod(&self, revision: &str) -> Option<String> {
        let mut changed = self.pods_changed.clone();
        let wait = async {
            loop {
                if let Some(uid) = self.running_pod(revision) {
                    return Some(uid);
                }
                if self.only_elsewhere(revision) {
                    return None;
                }
                if changed.changed().await.is_err() {
                    return None;
                }
            }
        };
        tokio::time::timeout(NETWORK_WAIT, wait)
            .await
            .ok()
            .flatten()
    }
}

/// The outgoing connections of an in-process instance: through the network of its
/// revision's pod on this node.
struct BorrowedNetwork {
    pods: PodNetwork,
    revision: String,
    namespace: String,
    net: Arc<crate::network::PodNet>,
}

impl runtime::outbound::Outbound for BorrowedNetwork {
    fn connect(
        &self,
        host: String,
        port: u16,
    ) -> BoxFuture<'static, std::io::Result<tokio::net::TcpStream>> {
        let pods = self.pods.clone();
        let revision = self.revision.clone();
        let namespace = self.namespace.clone();
        let net = self.net.clone();
        Box::pin(async move {
            let Some(uid) = pods.wait_for_pod(&revision).await else {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionRefused,
                    format!(
                        "no pod of revision {revision} runs on this node, and the function \
                         answered from the node agent makes no connection but through one"
                    ),
                ));
            };
            net.outbound(net.netns_of(&uid), &namespace)
                .connect(host, port)
                .await
        })
    }
}

/// Starts in-process instances on the node's Wasm runtime, from images the node holds.
pub struct InProcess {
    pub runtime: SharedRuntime,
    pub images: Arc<ImageStore>,
    /// To tell the cluster registry's images of other namespaces (never started from here:
    /// the revision's pod pulls them with its own credentials).
    pub registries: Arc<runtime::registry::Registries>,
    pub net: Arc<crate::network::PodNet>,
    pub client: kube::Client,
    pub host_ip: IpAddr,
    /// Where the instances' output goes (`{dir}/{namespace}_{revision}.log`).
    pub log_dir: PathBuf,
}

impl Start for InProcess {
    fn start(
        &self,
        plan: Arc<Plan>,
        network: PodNetwork,
    ) -> BoxFuture<'static, Result<Running, String>> {
        let runtime = self.runtime.clone();
        let images = self.images.clone();
        let registries = self.registries.clone();
        let net = self.net.clone();
        let client = self.client.clone();
        let host_ip = self.host_ip.to_string();
        let log_dir = self.log_dir.clone();
        Box::pin(async move {
            let container = &plan.container;
            let reference = container.image.as_deref().unwrap_or_default();
            let namespace = plan.pod.metadata.namespace.clone().unwrap_or_default();
            // The node's copy of another namespace's image was pulled for a pod allowed to run
            // it; the revision's pod pulls it again with its own credentials (`pod::image`).
            let image = crate::pod::image::stored(&images, &registries, reference, &namespace)
                .ok_or_else(|| {
                    format!("image {reference:?} is not on this node for namespace {namespace}")
                })?;
            if !matches!(image.kind, ImageKind::Wasm) {
                return Err(format!("image {reference:?} is not a Wasm component"));
            }
            let services = crate::env::service_environment(&plan.pod, &net.services(&namespace));
            // The plan refers to no other object, so these are never read; they are the
            // pod's own way of resolving its environment, kept so the two cannot differ.
            let sources = crate::env::Sources {
                configmaps: Api::namespaced(client.clone(), &namespace),
                secrets: Api::namespaced(client.clone(), &namespace),
                service_accounts: Api::namespaced(client, &namespace),
            };
            let env =
                crate::env::environment(&plan.pod, container, &sources, "", &host_ip, services)
                    .await
                    .map_err(|e| e.0)?;
            let revision = plan.revision.replace('/', "_");
            std::fs::create_dir_all(&log_dir).map_err(|e| e.to_string())?;
            let log = runtime::logs::LogFile::create(&log_dir.join(format!("{revision}.log")))
                .map_err(|e| format!("cannot open its log: {e}"))?;
            let limit = |resource: &str| {
                container
                    .resources
                    .as_ref()
                    .and_then(|r| r.limits.as_ref())
                    .and_then(|l| l.get(resource))
                    .map(|q| q.0.clone())
            };
            let outbound: Arc<dyn runtime::outbound::Outbound> = Arc::new(BorrowedNetwork {
                pods: network,
                revision: plan.revision.clone(),
                namespace: namespace.clone(),
                net,
            });
            let spec = ContainerSpec {
                pod_namespace: namespace,
                pod_name: plan.pod.metadata.name.clone().unwrap_or_default(),
                pod_uid: String::new(),
                container: container.name.clone(),
                image,
                args: crate::pod::command_line(container, &env),
                env,
                mounts: Vec::new(),
                log,
                memory_limit: limit("memory").as_deref().and_then(api::quantity::bytes),
                cpu_limit: limit("cpu").as_deref().and_then(api::quantity::millicores),
                listen: Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0)),
                // The router holds containerConcurrency for it: no other router sends here.
                max_concurrency: None,
                netns: None,
                outbound: Some(outbound),
                usage: Arc::default(),
                linux: Default::default(),
            };
            let running = runtime.start(spec).await.map_err(|e| e.to_string())?;
            if running.serving.is_none() {
                running.stop();
                return Err("the image is not an HTTP function".into());
            }
            Ok(running)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn revision(spec: serde_json::Value) -> Revision {
        serde_json::from_value(json!({
            "metadata": {"name": "hello-00001", "namespace": "fn",
                "labels": {labels::SERVICE: "hello", labels::CONFIGURATION: "hello"}},
            "spec": spec}))
        .unwrap()
    }

    fn node(spec: serde_json::Value) -> Node {
        serde_json::from_value(json!({"metadata": {"name": "n1"}, "spec": spec})).unwrap()
    }

    #[test]
    fn a_plain_function_runs_with_its_pods_environment() {
        let rev = revision(
            json!({"containers": [{"name": "user-container", "image": "hello:v1",
            "env": [{"name": "TARGET", "value": "x"}, {"name": "PORT", "value": "9000"}]}]}),
        );
        let plan = plan(&rev, Some(&node(json!({})))).unwrap();
        assert_eq!(plan.revision, "fn/hello-00001");
        let env: Vec<(String, Option<String>)> = plan
            .container
            .env
            .unwrap()
            .into_iter()
            .map(|e| (e.name, e.value))
            .collect();
        assert_eq!(
            env,
            [
                ("K_REVISION".into(), Some("hello-00001".into())),
                ("K_CONFIGURATION".into(), Some("hello".into())),
                ("K_SERVICE".into(), Some("hello".into())),
                ("TARGET".into(), Some("x".into())),
                ("PORT".into(), Some("9000".into())),
            ],
            "the container's own PORT wins, as in the revision's Deployment"
        );
        assert_eq!(
            plan.pod.metadata.labels.unwrap()[labels::REVISION],
            "hello-00001"
        );
    }

    #[test]
    fn what_only_a_pod_may_have_waits_for_the_pod() {
        let ok = json!({});
        let cases = [
            (
                json!({"containers": [{"image": "a:v1"}, {"image": "b"}]}),
                ok.clone(),
            ),
            (
                json!({"containers": [{"image": "a:v1"}], "initContainers": [{"name": "i", "image": "b"}]}),
                ok.clone(),
            ),
            (
                json!({"containers": [{"image": "a:v1"}], "volumes": [{"name": "v", "emptyDir": {}}]}),
                ok.clone(),
            ),
            (
                json!({"containers": [{"image": "a:v1", "env": [{"name": "S", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]}]}),
                ok.clone(),
            ),
            (
                json!({"containers": [{"image": "a:v1", "envFrom": [{"configMapRef": {"name": "c"}}]}]}),
                ok.clone(),
            ),
            (
                json!({"containers": [{"image": "a:v1", "readinessProbe": {"tcpSocket": {"port": 8080}}}]}),
                ok.clone(),
            ),
            (
                json!({"containers": [{"image": "a:v1"}], "nodeSelector": {"disk": "ssd"}}),
                ok.clone(),
            ),
            (
                json!({"containers": [{"image": "a:v1"}], "runtimeClassName": "oci"}),
                ok.clone(),
            ),
            (
                json!({"containers": [{"image": "a:v1"}], "hostNetwork": true}),
                ok.clone(),
            ),
            (
                json!({"containers": [{"image": "a:v1"}]}),
                json!({"unschedulable": true}),
            ),
            (
                json!({"containers": [{"image": "a:v1"}]}),
                json!({"taints": [{"key": "k", "effect": "NoSchedule"}]}),
            ),
        ];
        for (spec, node_spec) in cases {
            let rev = revision(spec.clone());
            assert!(
                plan(&rev, Some(&node(node_spec.clone()))).is_err(),
                "{spec} on {node_spec}"
            );
        }
        let rev = revision(json!({"containers": [{"image": "a:v1"}]}));
        assert!(plan(&rev, None).is_err(), "a node that has not seen itself");
        assert!(plan(&rev, Some(&node(json!({})))).is_ok());
        for moving in [
            json!({"containers": [{"image": "a"}]}),
            json!({"containers": [{"image": "a:latest"}]}),
            json!({"containers": [{"image": "a:v1", "imagePullPolicy": "Always"}]}),
        ] {
            assert!(
                plan(&revision(moving.clone()), Some(&node(json!({})))).is_err(),
                "{moving}"
            );
        }
        let pinned = revision(
            json!({"containers": [{"image": "reg/a@sha256:0123", "imagePullPolicy": "Always"}]}),
        );
        assert!(
            plan(&pinned, Some(&node(json!({})))).is_ok(),
            "pinned by digest"
        );
        assert!(plan(
            &rev,
            Some(&node(
                json!({"taints": [{"key": "k", "effect": "PreferNoSchedule"}]})
            ))
        )
        .is_ok());
    }
}
