//! `drover node`: runs the node agent against a cluster's API server.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

#[derive(clap::Args)]
pub struct NodeArgs {
    /// The API server's URL, e.g. https://10.0.0.1:6443; for a control plane of several
    /// members, each member's, comma-separated: the agent moves to the next when one cannot be
    /// reached.
    #[arg(long, env = "DROVER_SERVER", required_unless_present = "cleanup")]
    server: Option<String>,
    /// A file holding the node's credential (`drover token node NAME` on the control plane
    /// prints one).
    #[arg(long, env = "DROVER_TOKEN_FILE", required_unless_present_any = ["cleanup", "token"])]
    token_file: Option<PathBuf>,
    /// The node's credential itself. Prefer --token-file: a command line is visible to every
    /// local user (`ps`).
    #[arg(long, env = "DROVER_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The cluster CA certificate (DATA_DIR/pki/ca.crt on a control-plane member).
    #[arg(long, required_unless_present = "cleanup")]
    ca_file: Option<PathBuf>,
    /// Remove what Drover's networking put on this host (its nftables table, pod network
    /// namespaces, routes) and exit.
    #[arg(long)]
    cleanup: bool,
    /// The cluster's pod range (the server's --cluster-cidr): pod traffic leaving it is
    /// masqueraded.
    #[arg(long, default_value = api::cidr::DEFAULT_CLUSTER_CIDR)]
    cluster_cidr: ipnet::Ipv4Net,
    #[command(flatten)]
    node: NodeOptions,
    #[command(flatten)]
    dir: NodeDir,
}

/// What `drover node` and `drover up` share.
#[derive(clap::Args, Clone)]
pub struct NodeOptions {
    /// The node's name (default: the host name).
    #[arg(long)]
    pub name: Option<String>,
    /// The address the cluster reaches this node at (default: the source address of the
    /// host's default route, as kubelet picks it; 127.0.0.1 when the host has none).
    #[arg(long)]
    pub node_address: Option<IpAddr>,
    /// The port of the node's log endpoint (the kubelet's is 10250).
    #[arg(long, default_value_t = 10250)]
    pub node_port: u16,
    /// Give pods loopback addresses from this /16 instead of a network namespace and an
    /// address of the node's pod range each: for several nodes on one host without root.
    #[arg(long)]
    pub pod_ip_range: Option<Ipv4Addr>,
    /// The cluster DNS Service's address (pods' resolver), answered by each node itself.
    #[arg(long, default_value = "10.96.0.10")]
    pub cluster_dns: Ipv4Addr,
    /// The first crash-loop back-off; it doubles per restart up to 5 minutes.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub crash_backoff: Duration,
    /// Let containers with `privileged: true` run on this node.
    #[arg(long)]
    pub allow_privileged: bool,
    /// A registry (host:port) to reach over plain HTTP (loopback ones always are). Repeatable.
    #[arg(long = "insecure-registry")]
    pub insecure_registries: Vec<String>,
    /// The port on the node's address where Knative Routes' traffic is answered (by Host:
    /// `{route}.{namespace}.{domain}`); 0: none.
    #[arg(long, default_value_t = 80)]
    pub function_port: u16,
    /// Whether a Wasm function at zero answers its first requests from the node agent's
    /// process while its pod starts (false: requests wait for the pod).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub functions_in_process: bool,
}

impl NodeOptions {
    /// The node's address: `--node-address`, or the host's primary address. Says which was
    /// chosen and why, since NodePorts and the pods' DNS depend on it.
    pub fn resolve_address(&self) -> IpAddr {
        if let Some(address) = self.node_address {
            return address;
        }
        match network::hostaddr::primary_ipv4() {
            network::hostaddr::HostAddress::DefaultRoute { address, interface } => {
                eprintln!(
                    "drover: node address {address} (the source address of the default route, \
                     on {interface}); --node-address chooses another"
                );
                IpAddr::V4(address)
            }
            network::hostaddr::HostAddress::NoDefaultRoute(why) => {
                eprintln!(
                    "drover: node address 127.0.0.1: {why}. NodePorts answer only on this \
                     machine and pods cannot reach the cluster DNS; pass --node-address with \
                     an address of this host to change that"
                );
                IpAddr::V4(Ipv4Addr::LOCALHOST)
            }
        }
    }
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_lowercase())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "drover-node".into())
}

/// Whether this process's effective uid is 0 (from /proc, so no libc call is needed).
pub(crate) fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let uids = s.lines().find(|l| l.starts_with("Uid:"))?.to_string();
            uids.split_whitespace().nth(2).map(|euid| euid == "0")
        })
        .unwrap_or(false)
}

pub fn default_node_dir() -> PathBuf {
    crate::server::default_data_dir().join("node")
}

/// The cluster's registry as the node reaches it: at the first API server in `servers`
/// (`https://host:port[,...]`), trusting `ca_pem`, with the node's `credential`.
pub fn cluster_registry(
    servers: &str,
    ca_pem: &str,
    credential: Arc<dyn Fn() -> Option<String> + Send + Sync>,
) -> anyhow::Result<runtime::registry::ClusterRegistry> {
    let first = servers.split(',').next().unwrap_or_default().trim();
    let address = first
        .strip_prefix("https://")
        .map(|rest| rest.split('/').next().unwrap_or_default())
        .filter(|a| !a.is_empty())
        .with_context(|| format!("--server {first:?} is not an https:// URL"))?;
    Ok(runtime::registry::ClusterRegistry {
        address: address.to_string(),
        ca_pem: ca_pem.to_string(),
        token: credential,
    })
}

/// Builds the agent for `client` with its wasm runtime and image store under `data_dir`.
pub fn agent(
    options: &NodeOptions,
    cluster_cidr: ipnet::Ipv4Net,
    data_dir: PathBuf,
    client: kube::Client,
    cluster_registry: runtime::registry::ClusterRegistry,
) -> anyhow::Result<Arc<node::agent::NodeAgent>> {
    let wasm = runtime::wasm::WasmRuntime::new(data_dir.join("wasm-cache"))
        .context("cannot start the wasm runtime")?;
    let images = runtime::images::ImageStore::open(&data_dir.join("images"))?;
    // Linux containers need root (namespaces, cgroups, mounts) and a pod network namespace.
    let oci = if is_root() && options.pod_ip_range.is_none() {
        let shim = std::env::current_exe().context("cannot find the drover binary (the shim)")?;
        let mut config = runtime::oci::OciConfig::for_node(&data_dir, shim);
        config.allow_privileged = options.allow_privileged;
        Some(runtime::oci::OciRuntime::new(config).context("cannot set up the container runtime")?)
    } else {
        None
    };
    let config = node::agent::NodeConfig {
        name: options.name.clone().unwrap_or_else(hostname),
        address: options.resolve_address(),
        port: options.node_port,
        data_dir,
        backoff_base: options.crash_backoff,
        pod_network: match options.pod_ip_range {
            Some(base) => node::network::Mode::Loopback(base),
            // Namespaces, routes and nftables need root: without it, say so and give pods
            // loopback addresses rather than fail at the first pod.
            None if !is_root() => {
                eprintln!(
                    "drover: not running as root: pods get loopback addresses (127.1.0.0/16) \
                     instead of a network namespace each, and Services have no data path"
                );
                node::network::Mode::Loopback(std::net::Ipv4Addr::new(127, 1, 0, 0))
            }
            None => node::network::Mode::Routed {
                cluster_cidr,
                dns_service_ip: options.cluster_dns,
            },
        },
        insecure_registries: options.insecure_registries.clone(),
        cluster_registry: Some(cluster_registry),
        function_port: options.function_port,
        functions_in_process: options.functions_in_process,
    };
    Ok(Arc::new(node::agent::NodeAgent::new(
        config,
        client,
        Arc::new(wasm),
        oci,
        Arc::new(images),
    )))
}

#[derive(clap::Args)]
pub struct NodeDir {
    /// Where the node keeps its images, compiled code and pod files.
    #[arg(long, env = "DROVER_NODE_DIR", default_value_os_t = default_node_dir())]
    pub node_dir: PathBuf,
}

pub async fn run(args: NodeArgs) -> anyhow::Result<()> {
    if args.cleanup {
        // Containers first (they hold pod network namespaces open), then the network.
        if is_root() {
            let shim =
                std::env::current_exe().context("cannot find the drover binary (the shim)")?;
            let config = runtime::oci::OciConfig::for_node(&args.dir.node_dir, shim);
            runtime::oci::OciRuntime::new(config)?.clean_up().await;
        }
        node::volumes::release_all(&args.dir.node_dir.join("pods"));
        node::network::cleanup(&args.dir.node_dir).await?;
        eprintln!(
            "drover node: Drover's containers, secret volumes, nftables table, pod namespaces and routes are removed"
        );
        return Ok(());
    }
    let (Some(server), Some(ca_file)) = (&args.server, &args.ca_file) else {
        anyhow::bail!("--server, --token-file and --ca-file are needed");
    };
    let token = match (&args.token_file, &args.token) {
        (Some(path), _) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read --token-file {}", path.display()))?
            .trim()
            .to_string(),
        (None, Some(token)) => {
            eprintln!(
                "drover node: warning: --token is visible to every local user; prefer --token-file"
            );
            token.clone()
        }
        (None, None) => anyhow::bail!("--token-file is needed (drover token node NAME prints one)"),
    };
    let token = &token;
    let ca = std::fs::read_to_string(ca_file)
        .with_context(|| format!("cannot read --ca-file {}", ca_file.display()))?;
    let client = kubeclient::connect(server, &ca, token)?;
    // A token file is read again at each pull: it may be renewed while the node runs.
    let credential: Arc<dyn Fn() -> Option<String> + Send + Sync> = match &args.token_file {
        Some(path) => {
            let path = path.clone();
            Arc::new(move || {
                std::fs::read_to_string(&path)
                    .ok()
                    .map(|t| t.trim().to_string())
            })
        }
        None => {
            let token = token.clone();
            Arc::new(move || Some(token.clone()))
        }
    };
    let registry = cluster_registry(server, &ca, credential)?;
    let agent = agent(
        &args.node,
        args.cluster_cidr,
        args.dir.node_dir,
        client,
        registry,
    )?;
    let running = tokio::spawn(agent.run());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        res = running => res.context("node agent")??,
    }
    eprintln!("drover node: stopped");
    Ok(())
}
