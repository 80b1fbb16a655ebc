//! The node agent: registers this node's Node object, renews its Lease every 2 s, watches the
//! pods bound to it and keeps one worker (`pod`) per pod, and serves container logs and
//! `kubectl exec`.
//!
//! Pod addresses and networks come from [`crate::network`]: a namespace and an address of the
//! node's pod range each (routed), or a loopback address each (loopback mode).

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use api::wellknown::{ARCH_LABEL, HOSTNAME_LABEL, OS_LABEL};
use futures_util::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::Api;
use runtime::images::ImageStore;
use runtime::SharedRuntime;
use serde_json::json;
use tokio::sync::mpsc;

use crate::logserver::{LogIndex, LogServer};
use crate::pod::{self, NodeContext, PodUpdate};

/// How often the node renews its Lease. The kubelet renews every 10 s and is given 40 s;
/// Drover's control plane gives a node 6 s (see controllers::nodelifecycle), so that a lost
/// node's pods run elsewhere within seconds. A renewal is one small write.
pub const LEASE_RENEW: Duration = Duration::from_secs(2);
const LEASE_DURATION_SECONDS: i32 = 6;
/// How often the Node's status (conditions, capacity) is posted while nothing happens.
const STATUS_EVERY_BEATS: u64 = 30;

pub struct NodeConfig {
    pub name: String,
    /// The node's address as other parts of the cluster reach it (logs endpoint, hostIP).
    pub address: IpAddr,
    /// Port of the node's log endpoint.
    pub port: u16,
    pub data_dir: PathBuf,
    pub backoff_base: Duration,
    /// How pods get their addresses and networks.
    pub pod_network: crate::network::Mode,
    /// Registries (`host:port`) reached over plain HTTP besides loopback ones.
    pub insecure_registries: Vec<String>,
    /// The cluster's own registry, pulled from with the node's credential.
    pub cluster_registry: Option<runtime::registry::ClusterRegistry>,
    /// The port of the function router (Knative Routes' traffic) on the node's address; 0:
    /// none.
    pub function_port: u16,
    /// Whether functions at zero are started in process while their pods come
    /// (`crate::functions::local`).
    pub functions_in_process: bool,
}

fn rfc3339_micros(t: std::time::SystemTime) -> String {
    humantime::format_rfc3339_micros(t).to_string()
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// What this machine offers, for the Node's status.
fn node_status(config: &NodeConfig, handlers: &[&str]) -> serde_json::Value {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mem_kib = read_trimmed("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0);
    let os_image = read_trimmed("/etc/os-release")
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_string())
        .unwrap_or_else(|| "Linux".into());
    let resources =
        json!({"cpu": cpus.to_string(), "memory": format!("{mem_kib}Ki"), "pods": "1000"});
    let now = rfc3339_micros(std::time::SystemTime::now());
    let condition = |t: &str, status: &str, reason: &str, message: &str| {
        json!({"type": t, "status": status, "reason": reason, "message": message,
               "lastHeartbeatTime": now.clone(), "lastTransitionTime": now.clone()})
    };
    json!({
        "capacity": resources,
        "allocatable": resources,
        "addresses": [
            {"type": "InternalIP", "address": config.address.to_string()},
            {"type": "Hostname", "address": config.name},
        ],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": config.port}},
        "nodeInfo": {
            "machineID": read_trimmed("/etc/machine-id"),
            "systemUUID": "",
            "bootID": read_trimmed("/proc/sys/kernel/random/boot_id"),
            "kernelVersion": read_trimmed("/proc/sys/kernel/osrelease"),
            "osImage": os_image,
            "containerRuntimeVersion": "wasmtime://48.0.8",
            "kubeletVersion": format!("v1.32.0-drover.{}", env!("CARGO_PKG_VERSION")),
            "kubeProxyVersion": "",
            "operatingSystem": "linux",
            "architecture": match std::env::consts::ARCH { "x86_64" => "amd64", "aarch64" => "arm64", a => a },
        },
        "runtimeHandlers": handlers.iter().map(|h| json!({"name": h, "features": {"recursiveReadOnlyMounts": false, "userNamespaces": false}})).collect::<Vec<_>>(),
        "conditions": [
            condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "drover node has sufficient memory available"),
            condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "drover node has no disk pressure"),
            condition("PIDPressure", "False", "KubeletHasSufficientPID", "drover node has sufficient PID available"),
            condition("Ready", "True", "KubeletReady", "drover node agent is posting ready status"),
        ],
    })
}

pub struct NodeAgent {
    config: NodeConfig,
    client: kube::Client,
    ctx: Arc<NodeContext>,
    /// The port the function router listens on, once it does (0: none), as the Node says.
    function_port: AtomicU16,
}

impl NodeAgent {
    pub fn new(
        config: NodeConfig,
        client: kube::Client,
        runtime: SharedRuntime,
        oci: Option<Arc<runtime::oci::OciRuntime>>,
        images: Arc<ImageStore>,
    ) -> NodeAgent {
        let ctx = Arc::new(NodeContext {
            node_name: config.name.clone(),
            host_ip: config.address,
            pods_dir: config.data_dir.join("pods"),
            runtime,
            oci,
            images,
            client: client.clone(),
            backoff_base: config.backoff_base,
            logs: Arc::new(LogIndex::default()),
            events: Arc::new(kubeclient::events::Recorder::new(
                client.clone(),
                kubeclient::events::Source::Node(config.name.clone()),
            )),
            registries: Arc::new(runtime::registry::Registries::new(
                config.insecure_registries.clone(),
                config.cluster_registry.clone(),
            )),
            usage: Arc::default(),
            network: Arc::new(crate::network::PodNet::new(config.pod_network.clone())),
        });
        NodeAgent {
            config,
            client,
            ctx,
            function_port: AtomicU16::new(0),
        }
    }

    /// Creates or refreshes the Node object. A Node may exist before its agent first runs
    /// (made when its credential was issued): its labels are set then.
    pub async fn register(&self) -> anyhow::Result<()> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let name = &self.config.name;
        let labels = json!({
            HOSTNAME_LABEL: name,
            OS_LABEL: "linux",
            ARCH_LABEL: match std::env::consts::ARCH { "x86_64" => "amd64", "aarch64" => "arm64", a => a },
            "drover.dev/runtime-wasm": "true",
            "drover.dev/runtime-oci": self.ctx.oci.is_some().to_string(),
        });
        if nodes.get_opt(name).await?.is_none() {
            let node: Node = serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "Node",
                "metadata": {"name": name, "labels": labels},
                "spec": {},
            }))?;
            match nodes.create(&PostParams::default(), &node).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => return Err(e.into()),
            }
        }
        // Where this node's function router answers, for Knative routes' in-cluster Services:
        // only once it listens (a port it could not bind would draw traffic to nothing).
        let function_port = match self.function_port.load(Ordering::Relaxed) {
            0 => serde_json::Value::Null,
            port => json!(port.to_string()),
        };
        // Merged into what is there (a label an admin added stays); unchanged, nothing is written.
        nodes
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(&json!({"metadata": {"labels": labels,
                    "annotations": {"drover.dev/function-port": function_port}}})),
            )
            .await?;
        let mut handlers = vec![self.ctx.runtime.handler()];
        if self.ctx.oci.is_some() {
            handlers.push("oci");
        }
        let status = json!({"status": node_status(&self.config, &handlers)});
        nodes
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
            .await?;
        Ok(())
    }

    /// Renews the node's Lease in kube-node-lease (creating it the first time).
    async fn renew_lease(&self) -> anyhow::Result<()> {
        let leases: Api<Lease> = Api::namespaced(self.client.clone(), "kube-node-lease");
        let name = &self.config.name;
        let now = rfc3339_micros(std::time::SystemTime::now());
        let patch = json!({"spec": {"holderIdentity": name, "leaseDurationSeconds": LEASE_DURATION_SECONDS, "renewTime": now}});
        match leases
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 => {
                let lease: Lease = serde_json::from_value(json!({
                    "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": name, "namespace": "kube-node-lease"},
                    "spec": {"holderIdentity": name, "leaseDurationSeconds": LEASE_DURATION_SECONDS, "renewTime": now},
                }))?;
                leases.create(&PostParams::default(), &lease).await?;
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Runs the agent until the task is dropped.
    pub async fn run(self: Arc<Self>) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.ctx.pods_dir)?;
        if let Some(oci) = &self.ctx.oci {
            // Containers of a previous run of this agent are gone with it: their pods start
            // again from nothing, as Wasm pods do.
            oci.clean_up().await;
        }
        let function_listener = if self.config.function_port != 0 {
            let addr = SocketAddr::new(self.config.address, self.config.function_port);
            match tokio::net::TcpListener::bind(addr).await {
                Ok(listener) => {
                    tracing::info!("function router on {addr}");
                    self.function_port
                        .store(self.config.function_port, Ordering::Relaxed);
                    Some(listener)
                }
                // The node runs without it: its pods do not need it.
                Err(e) => {
                    tracing::warn!(
                        "cannot serve functions (Knative routes) on {addr}: {e}; choose another --function-port, or 0 for none"
                    );
                    None
                }
            }
        } else {
            None
        };
        let mut attempt = 0u32;
        while let Err(e) = self.register().await {
            attempt += 1;
            if attempt % 10 == 1 {
                tracing::warn!("cannot register node {}: {e:#}; retrying", self.config.name);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        tracing::info!("node {} registered", self.config.name);

        let in_process: Option<Arc<dyn crate::functions::local::Start>> =
            self.config.functions_in_process.then(|| {
                Arc::new(crate::functions::local::InProcess {
                    runtime: self.ctx.runtime.clone(),
                    images: self.ctx.images.clone(),
                    registries: self.ctx.registries.clone(),
                    net: self.ctx.network.clone(),
                    client: self.client.clone(),
                    host_ip: self.config.address,
                    log_dir: self.config.data_dir.join("functions"),
                }) as Arc<dyn crate::functions::local::Start>
            });
        let pod_range = match &self.config.pod_network {
            crate::network::Mode::Routed { cluster_cidr, .. } => *cluster_cidr,
            crate::network::Mode::Loopback(base) => {
                ipnet::Ipv4Net::new(*base, 16).expect("a /16").trunc()
            }
        };
        let functions = crate::functions::FunctionRouter::new(
            self.client.clone(),
            &self.config.name,
            crate::functions::ClusterClients {
                pod_range,
                node_address: self.config.address,
            },
            in_process,
        );
        if let Some(listener) = function_listener {
            tokio::spawn(functions.clone().run(listener));
        }
        let logs = Arc::new(
            LogServer::new(
                self.config.name.clone(),
                self.ctx.pods_dir.clone(),
                self.ctx.logs.clone(),
                self.ctx.usage.clone(),
                self.client.clone(),
                Arc::new(crate::linux::ContainerExec {
                    oci: self.ctx.oci.clone(),
                }),
                Arc::new(crate::portforward::PodDial {
                    client: self.client.clone(),
                    node_name: self.config.name.clone(),
                }),
            )
            .with_functions(functions),
        );
        tokio::spawn(self.ctx.usage.clone().run());
        tokio::spawn(crate::imagegc::run(
            self.ctx.images.clone(),
            self.client.clone(),
            self.config.name.clone(),
        ));
        let addr = SocketAddr::new(self.config.address, self.config.port);
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot serve container logs on {addr}: {e}"))?;
        let tls = crate::endpoint::serving_tls(&self.client, &self.config.name).await?;
        tokio::spawn(crate::endpoint::serve(listener, logs.router(), tls));

        let heartbeat = self.clone();
        tokio::spawn(async move {
            let mut beats = 0u64;
            let mut last_renewed = std::time::Instant::now();
            loop {
                // Bounded: a request that hangs (a half-open connection) must not stop the
                // heartbeat, or a live node would be declared lost.
                let renewed = tokio::time::timeout(LEASE_RENEW, heartbeat.renew_lease()).await;
                // The gap since the previous renewal, this one's duration included.
                let silent_for = last_renewed.elapsed();
                let ok = match renewed {
                    Ok(Ok(())) => true,
                    Ok(Err(e)) => {
                        tracing::warn!("cannot renew the node lease: {e:#}");
                        false
                    }
                    Err(_) => {
                        tracing::warn!("renewing the node lease took over {LEASE_RENEW:?}");
                        false
                    }
                };
                if ok {
                    last_renewed = std::time::Instant::now();
                }
                // The Node's conditions are refreshed less often, as the kubelet does, and at
                // once after a silence (the control plane has marked them Unknown meanwhile).
                let after_silence = ok && silent_for > 2 * LEASE_RENEW;
                if beats % STATUS_EVERY_BEATS == STATUS_EVERY_BEATS - 1 || after_silence {
                    let posted = tokio::time::timeout(4 * LEASE_RENEW, heartbeat.register()).await;
                    if !matches!(posted, Ok(Ok(()))) {
                        tracing::warn!("cannot refresh the node status");
                    }
                }
                beats += 1;
                tokio::time::sleep(LEASE_RENEW).await;
            }
        });

        // The heartbeat runs meanwhile: a node waiting for its pod range is alive.
        self.ctx
            .network
            .start(
                self.client.clone(),
                &self.config.name,
                self.config.address,
                &self.config.data_dir,
            )
            .await
            .context("cannot start pod networking")?;
        self.watch_pods().await
    }

    /// Keeps one worker per pod bound to this node, from a watch of those pods.
    async fn watch_pods(&self) -> anyhow::Result<()> {
        let pods: Api<Pod> = Api::all(self.client.clone());
        let selector = format!("spec.nodeName={}", self.config.name);
        let stream = watcher(pods, watcher::Config::default().fields(&selector));
        futures_util::pin_mut!(stream);
        let mut workers: HashMap<String, (mpsc::UnboundedSender<PodUpdate>, IpAddr)> =
            HashMap::new();
        let mut seen_in_relist: Option<BTreeSet<String>> = None;
        let mut first_list = true;
        while let Some(event) = stream.next().await {
            let event = match event {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!("pod watch: {e}; resuming");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            match event {
                watcher::Event::Init => seen_in_relist = Some(BTreeSet::new()),
                watcher::Event::InitApply(pod) | watcher::Event::Apply(pod) => {
                    if let Some(seen) = seen_in_relist.as_mut() {
                        seen.insert(pod.metadata.uid.clone().unwrap_or_default());
                    }
                    self.apply(&mut workers, pod);
                }
                watcher::Event::InitDone => {
                    if first_list {
                        // Networks of pods deleted while the agent was down are released.
                        first_list = false;
                        let here: BTreeSet<String> = workers.keys().cloned().collect();
                        self.ctx.network.forget_all_but(&here).await;
                    }
                    // Pods that vanished while the watch was down are gone.
                    if let Some(seen) = seen_in_relist.take() {
                        let gone: Vec<String> = workers
                            .keys()
                            .filter(|u| !seen.contains(*u))
                            .cloned()
                            .collect();
                        for uid in gone {
                            self.remove(&mut workers, &uid);
                        }
                    }
                }
                watcher::Event::Delete(pod) => {
                    let uid = pod.metadata.uid.clone().unwrap_or_default();
                    self.remove(&mut workers, &uid);
                }
            }
        }
        Ok(())
    }

    fn apply(
        &self,
        workers: &mut HashMap<String, (mpsc::UnboundedSender<PodUpdate>, IpAddr)>,
        pod: Pod,
    ) {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        if let Some((tx, _)) = workers.get(&uid) {
            match tx.send(PodUpdate::Changed(Box::new(pod))) {
                Ok(()) => return,
                Err(returned) => {
                    // The worker ended but the pod is still here (its final delete failed):
                    // a new worker finishes the job.
                    // (Its worker gave the pod's address back as it ended.)
                    workers.remove(&uid);
                    let PodUpdate::Changed(p) = returned.0 else {
                        return;
                    };
                    return self.apply(workers, *p);
                }
            }
        }
        // A pod that has finished and will not run again needs no worker after a restart.
        let phase = pod
            .status
            .as_ref()
            .and_then(|s| s.phase.clone())
            .unwrap_or_default();
        if (phase == "Succeeded" || phase == "Failed") && pod.metadata.deletion_timestamp.is_none()
        {
            return;
        }
        let previous = pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.as_deref())
            .and_then(|ip| ip.parse().ok());
        // A hostNetwork pod has the node's network, and so its address.
        let host_network = pod
            .spec
            .as_ref()
            .and_then(|s| s.host_network)
            .unwrap_or(false);
        let assigned = if host_network {
            Ok(self.config.address)
        } else {
            self.ctx.network.address(&uid, previous)
        };
        let ip = match assigned {
            Ok(ip) => ip,
            Err(e) => {
                tracing::error!("pod {uid}: {e:#}");
                return;
            }
        };
        let tx = pod::spawn(self.ctx.clone(), pod, ip);
        workers.insert(uid, (tx, ip));
    }

    fn remove(
        &self,
        workers: &mut HashMap<String, (mpsc::UnboundedSender<PodUpdate>, IpAddr)>,
        uid: &str,
    ) {
        if let Some((tx, _)) = workers.remove(uid) {
            // The worker stops the pod, then gives its network and address back.
            let _ = tx.send(PodUpdate::Gone);
        }
    }
}
