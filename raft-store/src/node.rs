//! One member of the store: its identity on disk, its Raft instance, and the operations the
//! rest of Drover (and remote clients, through `service`) use — txn, range, watch, compact,
//! membership — with forwarding to the leader where Raft requires it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers, ServerState, SnapshotPolicy};
use serde::{Deserialize, Serialize};

use crate::client::{RemoteMember, Status};
use crate::engine::{Applied, Command, Engine};
use crate::log_store::LogStore;
use crate::mvcc::{
    Consistency, KeySpan, Limits, RangeRequest, RangeResponse, Revision, StoreError, Txn,
    TxnResponse,
};
use crate::network::{Network, Transport};
use crate::proposer::Proposer;
use crate::raft::{NodeId, Raft, StateMachine};
use crate::tls::PeerTls;
use crate::watch::{self, WatchOptions, Watcher};

/// How a member runs. `Default` gives production values; tests shorten the timers.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    pub data_dir: PathBuf,
    /// The address this member serves peers and store clients on, and advertises to peers.
    pub listen: SocketAddr,
    /// Any member of the cluster to join (its peer address), when this data dir is new.
    pub join: Option<String>,
    /// The cluster a new data dir belongs to, when the caller knows it (it made the cluster's
    /// certificates, or was given them to join); otherwise a new id, or the joined peer's.
    pub cluster_id: Option<String>,
    /// Mutual TLS with the other members; `None` only for a store alone in tests.
    pub tls: Option<PeerTls>,
    pub heartbeat: Duration,
    pub election_timeout: (Duration, Duration),
    /// Build a Raft snapshot (and purge the log) after this many entries.
    pub snapshot_every: u64,
    /// The leader compacts history older than one interval this often (like kube-apiserver,
    /// which compacts every five minutes).
    pub compaction_interval: Duration,
    pub limits: Limits,
    pub watch: WatchOptions,
    /// How long a write may wait for commit before its outcome is reported unknown.
    pub write_timeout: Duration,
    /// How long a joining member keeps asking while the cluster cannot take it yet (no
    /// leader, another membership change in progress).
    pub join_timeout: Duration,
}

impl StoreConfig {
    pub fn new(data_dir: impl Into<PathBuf>, listen: SocketAddr) -> Self {
        StoreConfig {
            data_dir: data_dir.into(),
            listen,
            join: None,
            cluster_id: None,
            tls: None,
            // Failover within half a second: see ARCHITECTURE.md ("Timers").
            heartbeat: Duration::from_millis(50),
            election_timeout: (Duration::from_millis(100), Duration::from_millis(200)),
            snapshot_every: 100_000,
            compaction_interval: Duration::from_secs(300),
            limits: Limits::default(),
            watch: WatchOptions::default(),
            write_timeout: Duration::from_secs(10),
            join_timeout: Duration::from_secs(60),
        }
    }
}

/// What a data dir records about the member it belongs to.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Identity {
    pub cluster_id: String,
    pub node_id: NodeId,
    pub addr: String,
    /// False between asking to join and being accepted: a restart then asks again.
    pub joined: bool,
}

/// Errors that stop a member from starting. Each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("data dir {dir}: {msg}")]
    DataDir { dir: PathBuf, msg: String },
    #[error(
        "data dir {dir} belongs to cluster {ours}, but {peer} serves cluster {theirs}; \
         use a fresh --data-dir to join that cluster"
    )]
    ClusterMismatch {
        dir: PathBuf,
        ours: String,
        theirs: String,
        peer: String,
    },
    #[error(
        "data dir {dir} was created for peer address {recorded}, not {listen}; \
         start with --peer-listen {recorded}, or remove the member and join again with a fresh data dir"
    )]
    AddressChanged {
        dir: PathBuf,
        recorded: String,
        listen: String,
    },
    #[error("cannot join through {peer}: {msg}")]
    Join { peer: String, msg: String },
    #[error("raft: {0}")]
    Raft(String),
}

pub struct StoreNode {
    pub identity: Identity,
    pub config: StoreConfig,
    raft: Raft,
    engine: Engine,
    proposer: Proposer,
    transport: Transport,
    /// Membership changes go one at a time through this member while it leads: Raft refuses a
    /// change while another is in progress, which members started together would all meet.
    membership_lock: tokio::sync::Mutex<()>,
    /// Why this member's Raft log cannot be written now (its disk is full), if so.
    log_blocked: crate::log_store::Blocked,
    /// Held for the member's lifetime: two processes on one data dir would corrupt it.
    _lock: std::fs::File,
}

fn raft_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("raft: {e}"))
}

impl StoreNode {
    /// Opens the data dir and starts Raft. The member serves nothing yet: mount
    /// [`crate::service::router`] on the listener, then call [`StoreNode::bootstrap`].
    pub async fn open(config: StoreConfig) -> Result<Arc<StoreNode>, StartError> {
        let dir = config.data_dir.clone();
        let data_err = |msg: String| StartError::DataDir {
            dir: dir.clone(),
            msg,
        };
        crate::files::private_dir(&dir).map_err(data_err)?;
        let lock = lock_data_dir(&dir).map_err(data_err)?;
        let transport = Transport::new(Some(config.listen.ip()), config.tls.as_ref());
        let addr = config.listen.to_string();

        let identity = match read_identity(&dir).map_err(data_err)? {
            Some(id) => {
                if id.addr != addr {
                    return Err(StartError::AddressChanged {
                        dir,
                        recorded: id.addr,
                        listen: addr,
                    });
                }
                id
            }
            None => {
                let cluster_id = match (&config.cluster_id, &config.join) {
                    (Some(id), _) => id.clone(),
                    // Learn the cluster first, so peer traffic is accepted from the first RPC.
                    (None, Some(peer)) => {
                        RemoteMember::new(transport.clone(), peer)
                            .status()
                            .await
                            .map_err(|e| StartError::Join {
                                peer: peer.clone(),
                                msg: e.to_string(),
                            })?
                            .cluster_id
                    }
                    (None, None) => new_cluster_id(),
                };
                let id = Identity {
                    cluster_id,
                    node_id: rand::random::<u64>() >> 1 | 1,
                    addr: addr.clone(),
                    joined: config.join.is_none(),
                };
                write_identity(&dir, &id).map_err(data_err)?;
                id
            }
        };
        // A restarted member pointed at another cluster must not silently run as its own.
        if let (Some(peer), true) = (&config.join, identity.joined) {
            if let Ok(status) = RemoteMember::new(transport.clone(), peer).status().await {
                if status.cluster_id != identity.cluster_id {
                    return Err(StartError::ClusterMismatch {
                        dir,
                        ours: identity.cluster_id,
                        theirs: status.cluster_id,
                        peer: peer.clone(),
                    });
                }
            }
        }

        let engine = Engine::new();
        let log = LogStore::open(&dir.join("raft-log")).map_err(data_err)?;
        let log_blocked = log.blocked();
        log.forget_granted_leadership().map_err(data_err)?;
        let sm = StateMachine::open(engine.clone(), &dir).map_err(data_err)?;
        if identity.joined {
            let mut members = log.durable().members.clone();
            members.extend(sm.member_addrs());
            refuse_if_behind(&transport, &identity, log.durable().last_index, &members)
                .await
                .map_err(data_err)?;
        }
        let raft_config = openraft::Config {
            cluster_name: "drover".into(),
            heartbeat_interval: config.heartbeat.as_millis() as u64,
            election_timeout_min: config.election_timeout.0.as_millis() as u64,
            election_timeout_max: config.election_timeout.1.as_millis() as u64,
            install_snapshot_timeout: 10_000,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_every),
            max_in_snapshot_log_to_keep: 1_000,
            max_payload_entries: 1_000,
            ..Default::default()
        }
        .validate()
        .map_err(|e| StartError::Raft(e.to_string()))?;
        let network = Network {
            transport: transport.clone(),
            cluster_id: identity.cluster_id.clone(),
        };
        let raft = Raft::new(identity.node_id, Arc::new(raft_config), network, log, sm)
            .await
            .map_err(|e| StartError::Raft(e.to_string()))?;
        let proposer = Proposer::start(raft.clone(), config.write_timeout);
        let node = Arc::new(StoreNode {
            identity,
            config,
            raft,
            engine,
            proposer,
            transport,
            membership_lock: tokio::sync::Mutex::new(()),
            log_blocked,
            _lock: lock,
        });
        tokio::spawn(compaction_loop(Arc::downgrade(&node)));
        Ok(node)
    }

    /// Makes this member part of a cluster: a new single-member cluster, or a join through
    /// `--join` (as a learner that catches up first, then a voter). A no-op once done.
    pub async fn bootstrap(&self) -> Result<(), StartError> {
        if self
            .raft
            .is_initialized()
            .await
            .map_err(|e| StartError::Raft(e.to_string()))?
            && self.identity.joined
        {
            return Ok(());
        }
        match &self.config.join {
            None => {
                let members = BTreeMap::from([(
                    self.identity.node_id,
                    BasicNode {
                        addr: self.identity.addr.clone(),
                    },
                )]);
                self.raft
                    .initialize(members)
                    .await
                    .map_err(|e| StartError::Raft(e.to_string()))?;
            }
            Some(peer) => {
                // The peer may be between leaders (an election, a heal): keep asking a while.
                let remote = RemoteMember::direct(self.transport.clone(), peer);
                let deadline = tokio::time::Instant::now() + self.config.join_timeout;
                loop {
                    match remote
                        .join(self.identity.node_id, &self.identity.addr)
                        .await
                    {
                        Ok(()) => break,
                        Err(e) if e.is_retryable() && tokio::time::Instant::now() < deadline => {
                            tracing::info!(peer = %peer, error = %e, "join not possible yet; retrying");
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                        Err(e) => {
                            return Err(StartError::Join {
                                peer: peer.clone(),
                                msg: e.to_string(),
                            })
                        }
                    }
                }
                let mut id = self.identity.clone();
                id.joined = true;
                write_identity(&self.config.data_dir, &id).map_err(|msg| StartError::DataDir {
                    dir: self.config.data_dir.clone(),
                    msg,
                })?;
            }
        }
        Ok(())
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    pub async fn shutdown(&self) {
        let _ = self.raft.shutdown().await;
    }

    fn leader(&self) -> Option<(NodeId, String)> {
        let m = self.raft.metrics().borrow().clone();
        let leader = m.current_leader?;
        let addr = m
            .membership_config
            .membership()
            .get_node(&leader)?
            .addr
            .clone();
        Some((leader, addr))
    }

    fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().current_leader == Some(self.identity.node_id)
    }

    /// Where a request this member cannot serve should go, or why it cannot.
    fn leader_member(&self, forwarded: bool) -> Result<RemoteMember, StoreError> {
        match self.leader() {
            // A forwarded request that finds no leader here either is not sent round again.
            Some((id, _)) if id == self.identity.node_id => Err(StoreError::NoLeader),
            Some(_) if forwarded => Err(StoreError::NoLeader),
            Some((_, addr)) => Ok(RemoteMember::new(self.transport.clone(), &addr)),
            None => Err(StoreError::NoLeader),
        }
    }

    /// Runs a transaction through Raft on the leader (forwarded there from a follower). A
    /// read-only txn goes the same way: it adds no revision, and is linearizable for free.
    pub async fn txn(&self, txn: Txn, forwarded: bool) -> Result<TxnResponse, StoreError> {
        txn.validate(&self.config.limits)?;
        // A leader cut off from its quorum refuses a new write before proposing it, at once
        // (waiting here for an election would not help: the others hold it): retryable,
        // nothing was done, and the client tries another member.
        if self.cut_off() {
            return Err(StoreError::Unavailable(
                "this member leads but has lost its quorum; another member can serve".into(),
            ));
        }
        self.through_elections(forwarded, || async {
            if !self.is_leader() {
                return self.leader_member(forwarded)?.txn(&txn).await;
            }
            // A leader that cannot write its log cannot commit: say why at once.
            if let Some(why) = self.log_blocked.lock().expect("poisoned").clone() {
                return Err(StoreError::Unavailable(format!(
                    "the leader cannot write its Raft log ({why}); free space there and writes resume"
                )));
            }
            // Nor can a leader cut off from its quorum: a write in flight is answered as
            // unknown as soon as the cut is seen instead of at the commit timeout, so its
            // client moves on to the members that elected a new leader.
            tokio::select! {
                result = self.proposer.propose(txn.clone()) => result,
                () = self.until_cut_off() => Err(StoreError::Indeterminate(
                    "the leader lost its quorum while the write was in flight".into(),
                )),
            }
        })
        .await
    }

    /// How long a leader may go without hearing from a quorum before it counts itself cut
    /// off: twice the longest election timeout (by then the others have elected a new
    /// leader), and at least a second, so a leader slowed by load is not taken for one.
    fn cut_off_after(&self) -> Duration {
        (self.config.election_timeout.1 * 2).max(Duration::from_secs(1))
    }

    /// Whether this member leads a cluster of several voters but has not heard from a
    /// quorum of them for [`StoreNode::cut_off_after`] (openraft's `millis_since_quorum_ack`,
    /// refreshed at every turn of its loop, heartbeats included).
    fn cut_off(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.current_leader == Some(self.identity.node_id)
            && m.membership_config
                .membership()
                .voter_ids()
                .nth(1)
                .is_some()
            && m.millis_since_quorum_ack
                .is_some_and(|ms| u128::from(ms) > self.cut_off_after().as_millis())
    }

    /// Resolves once this member is a cut-off leader ([`StoreNode::cut_off`]).
    async fn until_cut_off(&self) {
        loop {
            tokio::time::sleep(self.config.heartbeat).await;
            if self.cut_off() {
                return;
            }
        }
    }

    /// Runs `op` again while it fails in a way that proves nothing was done (no leader known,
    /// the leader unreachable) for up to [`StoreNode::leader_wait`]: a request made on this
    /// member (the API's, the controllers') then rides out an election instead of failing
    /// with it. A forwarded request is answered at once: the member that forwarded it waits.
    async fn through_elections<T, F, Fut>(&self, forwarded: bool, op: F) -> Result<T, StoreError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        let deadline = tokio::time::Instant::now() + self.leader_wait();
        loop {
            match op().await {
                Err(e)
                    if !forwarded && e.is_retryable() && tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                other => return other,
            }
        }
    }

    /// How long a request made on this member waits for a leader: a few election rounds (the
    /// leader's lease plus an election timeout, each at most `election_timeout.1`), at least 2 s.
    fn leader_wait(&self) -> Duration {
        (self.config.election_timeout.1 * 4).max(Duration::from_secs(2))
    }

    /// Compacts history before `revision` on every member.
    pub async fn compact(
        &self,
        revision: Revision,
        forwarded: bool,
    ) -> Result<Revision, StoreError> {
        match self.write(Command::Compact(revision), forwarded).await? {
            Written::Here(Applied::Compacted { revision }) => Ok(revision),
            Written::Here(Applied::Refused(e)) => Err(e),
            Written::Here(other) => {
                Err(StoreError::Internal(format!("unexpected result {other:?}")))
            }
            Written::Forward(leader) => leader.compact(revision).await,
        }
    }

    /// Proposes a command here when this member leads, or says where to send it.
    async fn write(&self, command: Command, forwarded: bool) -> Result<Written, StoreError> {
        if !self.is_leader() {
            return self.leader_member(forwarded).map(Written::Forward);
        }
        let write = self.raft.client_write(command);
        match tokio::time::timeout(self.config.write_timeout, write).await {
            Ok(Ok(resp)) => Ok(Written::Here(resp.data)),
            // Leadership moved after this member took the write: it may still commit under the
            // next leader, so the outcome is unknown and it must not be sent on again.
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => {
                Err(StoreError::Indeterminate(
                    "leadership changed while the write was in flight".into(),
                ))
            }
            // Raft stopped underneath the write (shutdown): it may have been logged already.
            Ok(Err(e)) => Err(StoreError::Indeterminate(format!("raft: {e}"))),
            Err(_) => Err(StoreError::Indeterminate(format!(
                "not committed within {:?}",
                self.config.write_timeout
            ))),
        }
    }

    /// Confirms, on the leader, that everything acknowledged before now is applied here.
    /// Bounded: a leader cut off from its quorum cannot confirm, and says so.
    async fn linearize(&self) -> Result<(), StoreError> {
        let confirm = self.raft.ensure_linearizable();
        match tokio::time::timeout(self.config.write_timeout / 2, confirm).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(RaftError::APIError(_))) => Err(StoreError::NoLeader),
            Ok(Err(other)) => Err(raft_err(other)),
            Err(_) => Err(StoreError::Unavailable(
                "the leader could not reach a quorum to confirm the read".into(),
            )),
        }
    }

    /// Reads a range. Linearizable reads are confirmed by the leader (read index), so a
    /// follower hands them over; serializable reads are served from this member's state.
    pub async fn range(
        &self,
        req: RangeRequest,
        consistency: Consistency,
        forwarded: bool,
    ) -> Result<RangeResponse, StoreError> {
        self.config.limits.check_span(&req.span, "span")?;
        if consistency == Consistency::Linearizable {
            if let Some(answer) = self
                .through_elections(forwarded, || async {
                    if !self.is_leader() {
                        let leader = self.leader_member(forwarded)?;
                        return leader.range(&req, consistency).await.map(Some);
                    }
                    self.linearize().await.map(|()| None)
                })
                .await?
            {
                return Ok(answer);
            }
        }
        let engine = self.engine.clone();
        tokio::task::spawn_blocking(move || engine.range(&req))
            .await
            .map_err(|e| StoreError::Internal(e.to_string()))?
    }

    /// Watches `span` from `from` (0: from now) on this member.
    pub fn watch(&self, span: KeySpan, from: Revision) -> Watcher {
        watch::spawn(self.engine.clone(), span, from, self.config.watch.clone())
    }

    /// Adds a member: first as a learner, waiting until it has caught up, then as a voter.
    pub async fn add_member(
        &self,
        id: NodeId,
        addr: String,
        forwarded: bool,
    ) -> Result<(), StoreError> {
        if !self.is_leader() {
            return self.leader_member(forwarded)?.join(id, &addr).await;
        }
        let _one_at_a_time = self.membership_lock.lock().await;
        let voters = self.voters();
        if let Some(existing) = voters.get(&id) {
            return if *existing == addr {
                Ok(()) // a retried join that already went through
            } else {
                Err(StoreError::Membership(format!(
                    "member {id} already exists at {existing}"
                )))
            };
        }
        if voters.values().any(|a| *a == addr) {
            return Err(StoreError::Membership(format!(
                "another member already uses address {addr}; remove it first"
            )));
        }
        self.raft
            .add_learner(id, BasicNode { addr }, true)
            .await
            .map_err(membership_err)?;
        self.raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
            .await
            .map_err(membership_err)?;
        Ok(())
    }

    /// Removes a member (voter or learner).
    pub async fn remove_member(&self, id: NodeId, forwarded: bool) -> Result<(), StoreError> {
        if !self.is_leader() {
            return self.leader_member(forwarded)?.remove(id).await;
        }
        let _one_at_a_time = self.membership_lock.lock().await;
        let voters = self.voters();
        let learners = self.learners();
        if !voters.contains_key(&id) && !learners.contains_key(&id) {
            return Err(StoreError::Membership(format!(
                "member {id} is not in the cluster"
            )));
        }
        if voters.contains_key(&id) {
            if voters.len() == 1 {
                return Err(StoreError::Membership(
                    "cannot remove the last voter".into(),
                ));
            }
            self.raft
                .change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false)
                .await
                .map_err(membership_err)?;
        }
        if self.learners().contains_key(&id) {
            self.raft
                .change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false)
                .await
                .map_err(membership_err)?;
        }
        Ok(())
    }

    /// The voters of the effective membership, with their peer addresses.
    pub fn voters(&self) -> BTreeMap<NodeId, String> {
        self.members(true)
    }

    /// This member's own peer address.
    pub fn peer_address(&self) -> &str {
        &self.identity.addr
    }

    /// How this member reaches the others (mutual TLS): for services of the API server that
    /// talk member to member beside the store (the registry's blobs).
    pub fn transport(&self) -> &Transport {
        &self.transport
    }

    fn learners(&self) -> BTreeMap<NodeId, String> {
        self.members(false)
    }

    /// The voters (or the learners) of the effective membership, with their addresses.
    fn members(&self, voters: bool) -> BTreeMap<NodeId, String> {
        let config = self.raft.metrics().borrow().membership_config.clone();
        let m = config.membership();
        let ids: Vec<NodeId> = if voters {
            m.voter_ids().collect()
        } else {
            m.learner_ids().collect()
        };
        ids.into_iter()
            .filter_map(|id| Some((id, m.get_node(&id)?.addr.clone())))
            .collect()
    }

    pub fn status(&self) -> Status {
        let m = self.raft.metrics().borrow().clone();
        let head = self.engine.head();
        Status {
            cluster_id: self.identity.cluster_id.clone(),
            node_id: self.identity.node_id,
            addr: self.identity.addr.clone(),
            state: match m.state {
                ServerState::Leader => "leader",
                ServerState::Follower => "follower",
                ServerState::Candidate => "candidate",
                ServerState::Learner => "learner",
                ServerState::Shutdown => "shutdown",
            }
            .into(),
            leader: m.current_leader,
            term: m.current_term,
            voters: self.voters(),
            learners: self.learners(),
            revision: head.revision,
            compact_revision: head.compact_revision,
            last_applied: m.last_applied.map_or(0, |l| l.index),
            matched: m
                .replication
                .iter()
                .flatten()
                .filter_map(|(id, log)| Some((*id, log.as_ref()?.index)))
                .collect(),
        }
    }
}

/// A refused membership change, as the caller should take it: leadership moving away or
/// another change in progress (a change by another member's request, or Raft's own joint
/// configuration step) are worth retrying; anything else is the request's fault.
fn membership_err(e: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>) -> StoreError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => StoreError::NoLeader,
        RaftError::APIError(ClientWriteError::ChangeMembershipError(
            ChangeMembershipError::InProgress(p),
        )) => StoreError::Unavailable(format!(
            "another membership change is in progress ({p}); retry"
        )),
        other => StoreError::Membership(other.to_string()),
    }
}

enum Written {
    Here(Applied),
    Forward(RemoteMember),
}

/// On the leader, compacts to the revision seen one interval ago, so history is kept for at
/// least one interval (watchers that lag less than that never see "compacted").
async fn compaction_loop(node: std::sync::Weak<StoreNode>) {
    let interval = match node.upgrade() {
        Some(n) => n.config.compaction_interval,
        None => return,
    };
    let mut previous: Option<Revision> = None;
    loop {
        tokio::time::sleep(interval).await;
        let Some(node) = node.upgrade() else { return };
        let head = node.engine.head();
        if let Some(target) = previous {
            if node.is_leader() && target > head.compact_revision {
                match node.compact(target, false).await {
                    Ok(_) => tracing::info!(revision = target, "compacted history"),
                    Err(e) => tracing::warn!(revision = target, error = %e, "compaction failed"),
                }
            }
        }
        previous = Some(head.revision);
    }
}

/// Refuses to start a member whose log ends before what the leader knows it acknowledged:
/// its data dir was restored from an old copy (or lost writes some other way), and taking part
/// in Raft with it could vote in a term it already voted in, or help elect a leader without
/// committed entries. Asked of the members its log names, before Raft runs; when none answers
/// (the whole cluster is restarting) there is nothing to compare with, and it starts.
async fn refuse_if_behind(
    transport: &Transport,
    identity: &Identity,
    last_index: Option<u64>,
    members: &[String],
) -> Result<(), String> {
    let ours = last_index.unwrap_or(0);
    let peers: BTreeSet<&String> = members.iter().filter(|a| **a != identity.addr).collect();
    let asks = peers.into_iter().map(|addr| {
        let remote = RemoteMember::direct(transport.clone(), addr);
        async move {
            tokio::time::timeout(Duration::from_secs(2), remote.status())
                .await
                .ok()
                .and_then(Result::ok)
        }
    });
    for status in futures_util::future::join_all(asks)
        .await
        .into_iter()
        .flatten()
    {
        let leads = status.leader == Some(status.node_id);
        if let (true, Some(&acked)) = (leads, status.matched.get(&identity.node_id)) {
            if acked > ours {
                return Err(format!(
                    "its Raft log ends at entry {ours}, but this member had already stored entry \
                     {acked} (the leader, {}, says so): the data dir is older than the member, \
                     restored from an old copy or damaged. Starting it could break the \
                     cluster's guarantees. Remove the member (`drover store remove-member {}`) \
                     and join it again with a fresh data dir",
                    status.addr, identity.node_id
                ));
            }
        }
    }
    Ok(())
}

/// The TLS settings of the member whose data dir this is (its credentials and cluster id), for
/// debug clients and tests on the member's host.
pub fn member_tls(data_dir: &Path) -> Result<PeerTls, String> {
    let creds = crate::tls::MemberCredentials::load(data_dir)?.ok_or_else(|| {
        format!(
            "{} has no member certificate (pki/member.crt); is it a member's data dir?",
            data_dir.display()
        )
    })?;
    let identity = read_identity(data_dir)?
        .ok_or_else(|| format!("{} has no {IDENTITY_FILE}", data_dir.display()))?;
    PeerTls::new(&creds, &identity.cluster_id)
}

/// A new cluster's id: 128 random bits in hex.
pub fn new_cluster_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

const IDENTITY_FILE: &str = "member.json";
const LOCK_FILE: &str = "LOCK";

fn lock_data_dir(dir: &Path) -> Result<std::fs::File, String> {
    let file = crate::files::private_file()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(LOCK_FILE))
        .map_err(|e| format!("cannot create {LOCK_FILE}: {e}"))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(
            "is in use by another drover process; stop it first, or choose another --data-dir"
                .into(),
        ),
        Err(std::fs::TryLockError::Error(e)) => Err(format!("cannot lock {LOCK_FILE}: {e}")),
    }
}

pub fn read_identity(dir: &Path) -> Result<Option<Identity>, String> {
    match std::fs::read(dir.join(IDENTITY_FILE)) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            format!("{IDENTITY_FILE} is unreadable ({e}); this is not a Drover data dir")
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let entries = match std::fs::read_dir(dir) {
                Ok(entries) => entries,
                // No data dir yet: a new member.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(format!("cannot read: {e}")),
            };
            let foreign = entries.filter_map(Result::ok).any(|entry| {
                // A joining member is given its certificates and the API server's
                // encryption key before its store starts.
                !matches!(
                    entry.file_name().to_str(),
                    Some("lost+found" | LOCK_FILE | "encryption.key" | "pki")
                )
            });
            if foreign {
                return Err(format!(
                    "the directory is not empty and has no {IDENTITY_FILE}; \
                     it is not a Drover data dir (choose an empty or new directory)"
                ));
            }
            Ok(None)
        }
        Err(e) => Err(format!("cannot read {IDENTITY_FILE}: {e}")),
    }
}

fn write_identity(dir: &Path, id: &Identity) -> Result<(), String> {
    let bytes = serde_json::to_vec_pretty(id).expect("identity serialises");
    crate::files::write_private(&dir.join(IDENTITY_FILE), &bytes)
}
