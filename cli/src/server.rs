//! `drover server`: runs one control-plane member until SIGINT or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use raft_store::{StoreConfig, StoreNode};

#[derive(clap::Args)]
pub struct ServerArgs {
    /// Where this member keeps its log, state and identity.
    #[arg(long, env = "DROVER_DATA_DIR", default_value_os_t = default_data_dir())]
    data_dir: PathBuf,
    /// The one address this member serves peers and clients on.
    #[arg(long, default_value = "127.0.0.1:6443")]
    listen: SocketAddr,
    /// Address of any member of an existing cluster to join (only used with a new data dir).
    #[arg(long)]
    join: Option<String>,
    /// Raft heartbeat interval, in milliseconds.
    #[arg(long, default_value_t = 100)]
    heartbeat_ms: u64,
    /// Raft election timeout range, in milliseconds: MIN-MAX.
    #[arg(long, default_value = "250-450", value_parser = parse_range)]
    election_timeout_ms: (u64, u64),
    /// Build a Raft snapshot and purge the log after this many entries.
    #[arg(long, default_value_t = 100_000)]
    snapshot_every: u64,
    /// Compact history older than this many seconds (checked that often).
    #[arg(long, default_value_t = 300)]
    compaction_interval_secs: u64,
    /// Where to write the admin kubeconfig (default: DATA_DIR/admin.kubeconfig).
    #[arg(long)]
    kubeconfig_out: Option<PathBuf>,
    /// The key that encrypts Secrets in the store (default: DATA_DIR/encryption.key). The first
    /// member makes it; every member joining later needs a copy.
    #[arg(long)]
    encryption_key_file: Option<PathBuf>,
    /// How long a node's agent may be silent before the node is unreachable and its pods are
    /// evicted (Kubernetes: 40s, then 300s of default toleration).
    #[arg(long, default_value = "6s", value_parser = humantime::parse_duration)]
    node_monitor_grace_period: std::time::Duration,
    /// How often HorizontalPodAutoscalers are evaluated (Kubernetes: 15s).
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    horizontal_pod_autoscaler_sync_period: std::time::Duration,
    /// The range pod addresses come from; each node gets a part of it (its spec.podCIDR).
    #[arg(long, default_value = api::cidr::DEFAULT_CLUSTER_CIDR)]
    cluster_cidr: ipnet::Ipv4Net,
    /// The size of each node's part of --cluster-cidr, in prefix bits.
    #[arg(long, default_value_t = api::cidr::DEFAULT_NODE_PREFIX, value_parser = clap::value_parser!(u8).range(8..=30))]
    node_cidr_mask_size: u8,
    /// Addresses for LoadBalancer Services (FIRST-LAST or a CIDR), which every node answers;
    /// without it a LoadBalancer Service's addresses are the nodes' own (as k3s).
    #[arg(long)]
    service_lb_pool: Option<controllers::servicelb::Pool>,
}

impl ServerArgs {
    pub fn data_dir(&self) -> &std::path::Path {
        &self.data_dir
    }

    pub fn cluster_cidr(&self) -> ipnet::Ipv4Net {
        self.cluster_cidr
    }
}

pub fn default_data_dir() -> PathBuf {
    match std::env::var_os("HOME") {
        Some(home) if !home.is_empty() && home != "/" => {
            PathBuf::from(home).join(".local/share/drover")
        }
        _ => PathBuf::from("/var/lib/drover"),
    }
}

fn parse_range(s: &str) -> Result<(u64, u64), String> {
    let (a, b) = s
        .split_once('-')
        .ok_or("expected MIN-MAX, for example 400-700")?;
    let a: u64 = a.trim().parse().map_err(|e| format!("MIN: {e}"))?;
    let b: u64 = b.trim().parse().map_err(|e| format!("MAX: {e}"))?;
    if a >= b {
        return Err("MIN must be smaller than MAX".into());
    }
    Ok((a, b))
}

/// Retries `op` while the store says it may work later (no leader yet, a member restarting).
/// Runs `op` until it succeeds, retrying for a minute while the cluster has no leader or the
/// outcome of an attempt is unknown (the leader was lost mid-request). Only for idempotent
/// operations (create-if-absent, then read back), which both callers are: retrying one whose
/// first attempt did land is harmless, and a starting member must not exit because the leader
/// changed under it.
async fn with_retry<T, F, Fut>(op: F) -> anyhow::Result<T>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, raft_store::StoreError>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e)
                if (e.is_retryable() || matches!(e, raft_store::StoreError::Indeterminate(_)))
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Logs to stderr, filtered by DROVER_LOG.
/// How the long-running commands (`up`, `server`, `node`) write their logs to stderr.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines, coloured only when stderr is a terminal (never in a log file).
    #[default]
    Text,
    /// One JSON object per line (timestamp, level, target, fields), for log collectors.
    Json,
}

/// Logs to stderr, filtered by `DROVER_LOG` (tracing's env-filter syntax).
pub fn init_logging(format: LogFormat) {
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("DROVER_LOG")
                .unwrap_or_else(|_| "info,openraft=warn".into()),
        )
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// A running control-plane member.
pub struct Member {
    pub node: std::sync::Arc<StoreNode>,
    pub api: std::sync::Arc<apiserver::ApiState>,
    pub pki: apiserver::pki::Pki,
    /// `https://host:port` of this member's API.
    pub url: String,
    pub kubeconfig: PathBuf,
    serving: tokio::task::JoinHandle<anyhow::Result<()>>,
}

pub async fn run(args: ServerArgs) -> anyhow::Result<()> {
    let member = start(&args).await?;
    member.wait_for_signal().await
}

impl Member {
    /// Serves until SIGINT or SIGTERM, then shuts the store down cleanly.
    pub async fn wait_for_signal(self) -> anyhow::Result<()> {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut serving = self.serving;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
            res = &mut serving => {
                res.context("server task")??;
            }
        }
        eprintln!("drover: shutting down");
        self.node.shutdown().await;
        Ok(())
    }
}

/// Starts a member: the store, then the API once the member has its certificates.
pub async fn start(args: &ServerArgs) -> anyhow::Result<Member> {
    // The encryption key first: a joining member without it is told so before it joins.
    let key_file = args
        .encryption_key_file
        .clone()
        .unwrap_or_else(|| args.data_dir.join("encryption.key"));
    let sealer = std::sync::Arc::new(apiserver::encryption::SecretBox::load_or_create(
        &key_file,
        args.join.is_none(),
    )?);

    let mut config = StoreConfig::new(&args.data_dir, args.listen);
    config.join = args.join.clone();
    config.heartbeat = Duration::from_millis(args.heartbeat_ms);
    config.election_timeout = (
        Duration::from_millis(args.election_timeout_ms.0),
        Duration::from_millis(args.election_timeout_ms.1),
    );
    config.snapshot_every = args.snapshot_every;
    config.compaction_interval = Duration::from_secs(args.compaction_interval_secs);

    // Bind first: a busy port is reported before anything is written to the data dir.
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {}; is another member already using it?",
                args.listen
            )
        })?;
    let node = StoreNode::open(config).await?;

    // The API: HTTPS with the cluster's certificates, beside the store's peer protocol. A
    // restarted member has its certificates already; a new one gets the cluster's CA and admin
    // token through the store once it is a member, so the TLS side opens after bootstrap.
    let ip = args.listen.ip();
    let mut hosts = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    if !ip.is_unspecified() && !hosts.contains(&ip.to_string()) {
        hosts.push(ip.to_string());
    }
    let host = if ip.is_unspecified() {
        "127.0.0.1".to_string()
    } else {
        ip.to_string()
    };
    let address = format!("{host}:{}", args.listen.port());
    let api_slot: apiserver::listener::ApiSlot = Default::default();
    let store_routes = raft_store::service::router(node.clone());
    let serving = tokio::spawn(apiserver::listener::serve(
        listener,
        api_slot.clone(),
        store_routes,
    ));
    node.bootstrap().await?;
    let pki = match apiserver::pki::load(&args.data_dir).map_err(anyhow::Error::msg)? {
        Some(pki) => pki,
        None => {
            let secrets = with_retry(|| apiserver::cluster_secrets(&node, &sealer)).await?;
            apiserver::pki::create(&args.data_dir, &hosts, &secrets).map_err(anyhow::Error::msg)?
        }
    };
    let tls = std::sync::Arc::new(apiserver::pki::server_tls(&pki).map_err(anyhow::Error::msg)?);
    let kubeconfig = args
        .kubeconfig_out
        .clone()
        .unwrap_or_else(|| args.data_dir.join("admin.kubeconfig"));
    apiserver::pki::write_kubeconfig(&pki, &format!("https://{address}"), &kubeconfig)
        .map_err(anyhow::Error::msg)?;
    let api_state = apiserver::ApiState::new(
        node.clone(),
        pki.admin_token.clone(),
        address.clone(),
        sealer.clone(),
    );
    *api_slot.write().unwrap_or_else(|p| p.into_inner()) =
        Some((tls, apiserver::router(api_state.clone())));
    // The system namespaces and the kubernetes Service, once a leader can take the writes.
    let boot = node.clone();
    let boot_address = address.clone();
    tokio::spawn(async move {
        if let Err(e) = with_retry(|| apiserver::bootstrap(&boot, &boot_address)).await {
            tracing::error!(error = %e, "cannot create the system namespaces");
        }
    });
    // Controllers run on whichever member leads, through the API like any client.
    let admin = kubeclient::connect(&format!("https://{address}"), &pki.ca_pem, &pki.admin_token)?;
    let leader_of = node.clone();
    let settings = controllers::Settings {
        nodes: controllers::nodelifecycle::Settings {
            grace: args.node_monitor_grace_period,
        },
        hpa: controllers::hpa::Settings {
            sync_period: args.horizontal_pod_autoscaler_sync_period,
        },
        ipam: controllers::nodeipam::Settings {
            cluster_cidr: args.cluster_cidr,
            node_prefix: args.node_cidr_mask_size,
        },
        lb_pool: args.service_lb_pool,
    };
    let is_leader = move || {
        let status = leader_of.status();
        status.leader == Some(status.node_id)
    };
    tokio::spawn(controllers::run_while_leader(
        admin,
        is_leader,
        move |client: kube::Client| async move {
            tokio::join!(
                controllers::run(client.clone(), settings),
                scheduler::run(client)
            );
        },
    ));
    eprintln!(
        "drover server: kubeconfig for kubectl: {}",
        kubeconfig.display()
    );
    let id = &node.identity;
    eprintln!(
        "drover server: member {} of cluster {} serving on {}, data in {}",
        id.node_id,
        id.cluster_id,
        id.addr,
        args.data_dir.display()
    );

    Ok(Member {
        node,
        api: api_state,
        pki,
        url: format!("https://{address}"),
        kubeconfig,
        serving: tokio::spawn(
            async move { serving.await.context("server task")?.context("serving") },
        ),
    })
}
