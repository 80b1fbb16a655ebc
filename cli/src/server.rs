//! `drover server`: runs one control-plane member until SIGINT or SIGTERM.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use raft_store::{StoreConfig, StoreNode};

#[derive(clap::Args)]
pub struct ServerArgs {
    /// Where this member keeps its log, state and identity.
    #[arg(long, env = "DROVER_DATA_DIR", default_value_os_t = default_data_dir())]
    data_dir: PathBuf,
    /// The address this member serves the Kubernetes API on (HTTPS only). Default:
    /// 127.0.0.1:6443 (`drover up`: the node's address, port 6443, so that pods reach it).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// The address pods and other hosts reach this member's API at: the endpoint of the
    /// `kubernetes` Service and a name in the API's certificate. Default: the --listen
    /// address, or for 0.0.0.0 the host's primary address.
    #[arg(long)]
    advertise_address: Option<IpAddr>,
    /// The address this member serves the other members on (mutual TLS with member
    /// certificates only). Default: the --listen address with the next port.
    #[arg(long)]
    peer_listen: Option<SocketAddr>,
    /// The API address (HOST:PORT) of any member of an existing cluster to join, with
    /// --token-file (only used with a new data dir).
    #[arg(long)]
    join: Option<String>,
    /// Members that form a new cluster together, as etcd's --initial-cluster: the API
    /// addresses (HOST:PORT) of all of them, this one included, the same list on each, each
    /// started with the same --token-file from `drover token generate`. The first listed
    /// founds the cluster and the others join it (only used with a new data dir).
    #[arg(long, value_delimiter = ',', conflicts_with = "join")]
    initial_cluster: Vec<String>,
    /// How long a new member keeps trying to join while the members it joins through are
    /// unreachable or still starting.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    join_timeout: Duration,
    /// A file holding the join token that `drover token server` prints on a member, or the
    /// shared secret from `drover token generate` (--initial-cluster; alone, the secret a new
    /// cluster's members join with).
    #[arg(long, env = "DROVER_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// The join token itself. Prefer --token-file: a command line is visible to every local
    /// user (`ps`).
    #[arg(long, hide_env_values = true)]
    token: Option<String>,
    /// Raft heartbeat interval, in milliseconds.
    #[arg(long, default_value_t = 50)]
    heartbeat_ms: u64,
    /// Raft election timeout range, in milliseconds: MIN-MAX. A follower that hears no leader
    /// for MAX (the leader's lease) plus a random time in the range starts an election: with
    /// the defaults, 300-400 ms after the leader's last heartbeat. Raise both on hosts whose
    /// members are far apart or starved of CPU.
    #[arg(long, default_value = "100-200", value_parser = parse_range)]
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
    /// member makes it; a member joining with a token receives it.
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
    /// The domain of Knative Routes' URLs: `http://{name}.{namespace}.{domain}` (Knative's
    /// config-domain).
    #[arg(long, default_value = "example.com")]
    function_domain: String,
    /// How long a Knative revision keeps its last instance after its last request (Knative's
    /// scale-to-zero-grace-period).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    scale_to_zero_grace_period: std::time::Duration,
    /// The Pod Security level namespaces enforce (and warn of) unless their
    /// `pod-security.kubernetes.io/*` labels say otherwise: privileged, baseline or
    /// restricted. kube-system is exempt.
    #[arg(long, default_value = "baseline", value_parser = parse_level)]
    pod_security_enforce: api::podsecurity::Level,
}

/// The API address `drover server` serves on without --listen.
pub const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 6443);

impl ServerArgs {
    pub fn listen(&self) -> SocketAddr {
        self.listen.unwrap_or(DEFAULT_LISTEN)
    }

    /// `drover up`: without --listen, the API is served on `address` (the node's), and the
    /// members' port stays on loopback (one member).
    pub fn default_listen_on(&mut self, address: IpAddr) {
        if self.listen.is_none() {
            self.listen = Some(SocketAddr::new(address, DEFAULT_LISTEN.port()));
            self.peer_listen.get_or_insert(SocketAddr::new(
                DEFAULT_LISTEN.ip(),
                DEFAULT_LISTEN.port() + 1,
            ));
        }
    }

    /// Where pods and other hosts reach this member's API (see --advertise-address).
    fn advertise(&self) -> IpAddr {
        if let Some(ip) = self.advertise_address {
            return ip;
        }
        let listen = self.listen().ip();
        if !listen.is_unspecified() {
            return listen;
        }
        match network::hostaddr::primary_ipv4() {
            network::hostaddr::HostAddress::DefaultRoute { address, .. } => IpAddr::V4(address),
            network::hostaddr::HostAddress::NoDefaultRoute(why) => {
                eprintln!(
                    "drover: no address to advertise the API at ({why}); pods will not reach \
                     it: pass --advertise-address"
                );
                IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)
            }
        }
    }

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

fn parse_level(s: &str) -> Result<api::podsecurity::Level, String> {
    api::podsecurity::Level::parse(s).ok_or_else(|| {
        format!("{s:?} is not a Pod Security level: privileged, baseline or restricted")
    })
}

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

/// How this start relates to the cluster: what the data dir already holds decides.
enum Membership {
    /// A member starting again with its certificates.
    Restart,
    /// A new data dir and no --join: a new cluster, whose secrets this member made.
    New(Box<apiserver::pki::ClusterSecrets>),
    /// Joining through a member: its grant (certificates, key, peers).
    Join(Box<apiserver::join::JoinGrant>),
}

impl ServerArgs {
    fn peer_listen(&self) -> anyhow::Result<SocketAddr> {
        match self.peer_listen {
            Some(addr) => Ok(addr),
            None => {
                let listen = self.listen();
                let port = listen.port().checked_add(1).context(
                    "--listen uses the last port, so the peer port cannot follow it; pass --peer-listen",
                )?;
                Ok(SocketAddr::new(listen.ip(), port))
            }
        }
    }

    /// The join token or shared secret given, if any.
    fn join_token(&self) -> anyhow::Result<Option<String>> {
        if let Some(path) = &self.token_file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the join token in {}", path.display()))?;
            return Ok(Some(text.trim().to_string()));
        }
        if let Some(token) = &self.token {
            eprintln!("drover server: warning: --token is visible to every local user; prefer --token-file");
            return Ok(Some(token.clone()));
        }
        Ok(None)
    }

    /// Decides how this member starts, and prepares the data dir for it: certificates (made or
    /// received) and the encryption key are in place when this returns.
    async fn membership(
        &self,
        peer: SocketAddr,
        key_file: &std::path::Path,
    ) -> anyhow::Result<Membership> {
        let dir = &self.data_dir;
        let identity = raft_store::node::read_identity(dir)
            .map_err(|e| anyhow::anyhow!("data dir {}: {e}", dir.display()))?;
        let creds = raft_store::MemberCredentials::load(dir).map_err(anyhow::Error::msg)?;
        match (&identity, creds.is_some(), &self.join) {
            (Some(id), true, join) if id.joined => {
                // Pointed at a cluster again: it must be this member's own.
                if let (Some(join), Some(creds)) = (join, &creds) {
                    match apiserver::join::check_same_cluster(join, &creds.ca_pem).await {
                        Err(apiserver::join::JoinError::NotTheCluster { .. }) => anyhow::bail!(
                            "data dir {} belongs to cluster {}, but {join} serves another \
                             cluster; use a fresh --data-dir to join that cluster",
                            dir.display(),
                            id.cluster_id
                        ),
                        Err(e) => tracing::warn!(error = %e, "cannot check --join {join}"),
                        Ok(()) => {}
                    }
                }
                Ok(Membership::Restart)
            }
            (Some(_), false, _) => anyhow::bail!(
                "data dir {} was made by a Drover whose members talked without TLS; this one \
                 needs member certificates. Start this member with a fresh --data-dir (and join \
                 it to the cluster again)",
                dir.display()
            ),
            (Some(id), true, _) if self.join.is_none() && self.initial_cluster.is_empty() => {
                anyhow::bail!(
                    "this member's join (to cluster {}) was interrupted; start it again with \
                     --join and --token-file",
                    id.cluster_id
                )
            }
            (identity, _, _) => {
                let text = self.join_token()?;
                let token = text
                    .as_deref()
                    .map(apiserver::pki::parse_join_token)
                    .transpose()
                    .map_err(anyhow::Error::msg)?;
                let listen = self.listen();
                let me = [listen, SocketAddr::new(self.advertise(), listen.port())];
                let plan = crate::formation::plan(
                    self.join.as_deref(),
                    &self.initial_cluster,
                    &me,
                    token.as_ref(),
                )
                .map_err(anyhow::Error::msg)?;
                if identity.is_some() && !matches!(plan, crate::formation::Plan::Join { .. }) {
                    anyhow::bail!(
                        "this member's join was interrupted; start it again with --join (or \
                         --initial-cluster) and --token-file"
                    );
                }
                match crate::formation::execute(plan, text.as_deref(), peer, self.join_timeout)
                    .await?
                {
                    crate::formation::Outcome::Found(secrets) => Ok(Membership::New(secrets)),
                    crate::formation::Outcome::Joined(grant) => {
                        if let Some(id) = identity {
                            anyhow::ensure!(
                                id.cluster_id == grant.cluster_id,
                                "data dir {} belongs to cluster {}, but the member it joined \
                                 through serves cluster {}; use a fresh --data-dir to join that \
                                 cluster",
                                dir.display(),
                                id.cluster_id,
                                grant.cluster_id
                            );
                        }
                        grant.credentials().save(dir).map_err(anyhow::Error::msg)?;
                        apiserver::encryption::SecretBox::install(key_file, &grant.encryption_key)?;
                        Ok(Membership::Join(grant))
                    }
                }
            }
        }
    }
}

/// Starts a member: its certificates (made, kept, or received through a join), the store
/// behind mutual TLS on the peer address, then the API on the API address once the member has
/// its serving certificate.
pub async fn start(args: &ServerArgs) -> anyhow::Result<Member> {
    let peer = args.peer_listen()?;
    anyhow::ensure!(
        peer != args.listen(),
        "--peer-listen must differ from --listen: the API and the members are served apart"
    );
    anyhow::ensure!(
        !peer.ip().is_unspecified(),
        "the peer address {peer} is what other members dial and what the member certificate \
         names: pass --peer-listen IP:PORT with this machine's address (it may differ from --listen)"
    );
    // Bind first: a busy port is reported before anything is written to the data dir.
    let bind = |addr: SocketAddr, what: &'static str| async move {
        tokio::net::TcpListener::bind(addr).await.with_context(|| {
            format!("cannot listen on {addr} ({what}); is another member already using it?")
        })
    };
    let listener = bind(args.listen(), "--listen").await?;
    let peer_listener = bind(peer, "--peer-listen").await?;
    // The API address answers from now on, closing TLS connections until the member has its
    // certificates: members started together that ask this one for a join hear "not yet" at
    // once instead of waiting on a listener nobody accepts on.
    let api_slot: apiserver::listener::ApiSlot = Default::default();
    let api_serving = tokio::spawn(apiserver::listener::serve(listener, api_slot.clone()));

    let key_file = args
        .encryption_key_file
        .clone()
        .unwrap_or_else(|| args.data_dir.join("encryption.key"));
    let membership = args.membership(peer, &key_file).await?;
    let sealer = std::sync::Arc::new(apiserver::encryption::SecretBox::load_or_create(
        &key_file,
        matches!(membership, Membership::New(_)),
    )?);
    let mut config = StoreConfig::new(&args.data_dir, peer);
    match &membership {
        Membership::Restart => {}
        Membership::New(secrets) => {
            let cluster_id = raft_store::node::new_cluster_id();
            secrets
                .save_proposed(&args.data_dir)
                .map_err(anyhow::Error::msg)?;
            secrets
                .member_credentials(&cluster_id, peer.ip())
                .and_then(|creds| creds.save(&args.data_dir))
                .map_err(anyhow::Error::msg)?;
            config.cluster_id = Some(cluster_id);
        }
        Membership::Join(grant) => {
            config.cluster_id = Some(grant.cluster_id.clone());
            config.join = grant.peers.first().cloned();
            anyhow::ensure!(config.join.is_some(), "the cluster named no member to join");
        }
    }
    let cluster_id = match &config.cluster_id {
        Some(id) => id.clone(),
        None => {
            raft_store::node::read_identity(&args.data_dir)
                .map_err(anyhow::Error::msg)?
                .context("member.json vanished")?
                .cluster_id
        }
    };
    let tls = raft_store::PeerTls::new(
        &raft_store::MemberCredentials::load(&args.data_dir)
            .map_err(anyhow::Error::msg)?
            .context("the member certificate vanished")?,
        &cluster_id,
    )
    .map_err(anyhow::Error::msg)?;
    config.tls = Some(tls.clone());
    config.heartbeat = Duration::from_millis(args.heartbeat_ms);
    config.election_timeout = (
        Duration::from_millis(args.election_timeout_ms.0),
        Duration::from_millis(args.election_timeout_ms.1),
    );
    config.snapshot_every = args.snapshot_every;
    config.join_timeout = args.join_timeout;
    config.compaction_interval = Duration::from_secs(args.compaction_interval_secs);
    let node = StoreNode::open(config).await?;
    // The registry's blob files: other members copy them through the peer address.
    let blobs = std::sync::Arc::new(
        apiserver::registry::blobs::Blobs::open(
            &args.data_dir.join("registry"),
            Default::default(),
        )
        .context("cannot open the registry's files in the data dir")?,
    );
    let peers_serving = tokio::spawn(raft_store::service::serve(
        peer_listener,
        raft_store::service::router(node.clone())
            .merge(apiserver::registry::replicate::peer_router(blobs.clone())),
        Some(tls.server.clone()),
    ));

    // The API: HTTPS with the cluster's certificates. A restarted member has its serving
    // certificate already; a joining one signs it with the CA key it reads from the store once
    // it is a member, so the API opens after bootstrap.
    let listen = args.listen();
    let ip = listen.ip();
    let advertise = args.advertise();
    let hosts = apiserver::pki::serving_names(&[ip, advertise]);
    let host = if ip.is_unspecified() {
        "127.0.0.1".to_string()
    } else {
        ip.to_string()
    };
    let address = format!("{host}:{}", listen.port());
    // What pods reach through the `kubernetes` Service.
    let advertised = SocketAddr::new(advertise, listen.port()).to_string();
    node.bootstrap().await?;
    let pki = match apiserver::pki::load(&args.data_dir, &hosts).map_err(anyhow::Error::msg)? {
        Some(pki) => pki,
        None => {
            // The first member proposes what it made (kept on disk until stored, so a crash
            // in between does not lose the CA its certificate was signed by).
            let kept = apiserver::pki::ClusterSecrets::load_proposed(&args.data_dir)
                .map_err(anyhow::Error::msg)?;
            let proposed = match &membership {
                Membership::New(secrets) => Some(secrets.as_ref()),
                _ => kept.as_ref(),
            };
            let secrets =
                with_retry(|| apiserver::cluster_secrets(&node, &sealer, proposed)).await?;
            let pki = apiserver::pki::create(&args.data_dir, &hosts, &secrets)
                .map_err(anyhow::Error::msg)?;
            apiserver::pki::ClusterSecrets::forget_proposed(&args.data_dir);
            pki
        }
    };
    let tls = std::sync::Arc::new(apiserver::pki::server_tls(&pki).map_err(anyhow::Error::msg)?);
    let kubeconfig = args
        .kubeconfig_out
        .clone()
        .unwrap_or_else(|| args.data_dir.join("admin.kubeconfig"));
    let api_state = apiserver::ApiState::new(
        node.clone(),
        pki.admin_token.clone(),
        address.clone(),
        sealer.clone(),
    );
    api_state
        .trust_nodes(&pki.ca_pem)
        .map_err(anyhow::Error::msg)?;
    api_state.set_pod_security(apiserver::podsecurity::Settings::enforcing(
        args.pod_security_enforce,
    ));
    api_state.serve_registry(blobs);
    // Before the API opens: nothing is signed with a key a rotation retired.
    with_retry(|| api_state.load_signing_keys()).await?;
    *api_slot.write().unwrap_or_else(|p| p.into_inner()) =
        Some((tls, apiserver::router(api_state.clone())));
    // After the API opens: whoever finds a new kubeconfig can use it at once.
    apiserver::pki::write_kubeconfig(&pki, &format!("https://{address}"), &kubeconfig)
        .map_err(anyhow::Error::msg)?;
    // The system namespaces and the kubernetes Service, once a leader can take the writes.
    let boot = node.clone();
    let boot_address = advertised;
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
        functions: controllers::FunctionSettings {
            domain: args.function_domain.clone(),
            scale_to_zero_grace: args.scale_to_zero_grace_period,
        },
    };
    let root_ca = pki.ca_pem.clone();
    let is_leader = move || {
        let status = leader_of.status();
        status.leader == Some(status.node_id)
    };
    tokio::spawn(controllers::run_while_leader(
        admin,
        is_leader,
        move |client: kube::Client| {
            let ca_pem = root_ca.clone();
            let settings = settings.clone();
            async move {
                tokio::join!(
                    controllers::run(client.clone(), settings),
                    controllers::rootca::run(client.clone(), ca_pem),
                    scheduler::run(client)
                );
            }
        },
    ));
    eprintln!(
        "drover server: kubeconfig for kubectl: {}",
        kubeconfig.display()
    );
    let id = &node.identity;
    eprintln!(
        "drover server: member {} of cluster {}: API on {address}, members on {} (mutual TLS), data in {}",
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
        serving: tokio::spawn(async move {
            tokio::select! {
                res = api_serving => res.context("API task")?.context("serving the API"),
                res = peers_serving => res.context("peer task")?.context("serving the members"),
            }
        }),
    })
}
