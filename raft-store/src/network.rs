//! The transport between members: Raft RPCs as bincode over HTTP/1.1 on each member's one
//! address. Connections are pooled and re-established by the HTTP client; every call has a
//! deadline (openraft's TTL for the RPC), so a dead or cut-off peer costs a timeout, never a
//! hang. Each request names the cluster, and a member refuses peers of another cluster.

use std::net::IpAddr;
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{AnyError, BasicNode};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::raft::{NodeId, TypeConfig};

/// Header that carries the cluster id on every peer request.
pub const CLUSTER_HEADER: &str = "drover-cluster";

pub const PATH_APPEND: &str = "/raft/append";
pub const PATH_VOTE: &str = "/raft/vote";
pub const PATH_SNAPSHOT: &str = "/raft/snapshot";

/// Builds the HTTP client used for peers and for forwarding. Outgoing connections leave from
/// the member's own address when it has a specific one, so that traffic between members can be
/// told apart (and, in fault tests, cut) by address.
pub fn http_client(local: Option<IpAddr>) -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_millis(500))
        .pool_idle_timeout(Duration::from_secs(30))
        .tcp_nodelay(true)
        .local_address(local.filter(|ip| !ip.is_unspecified()))
        .build()
        .expect("a plain HTTP client always builds")
}

#[derive(Clone)]
pub struct Network {
    pub http: reqwest::Client,
    pub cluster_id: String,
}

pub struct PeerClient {
    http: reqwest::Client,
    cluster_id: String,
    target: NodeId,
    addr: String,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerClient {
        PeerClient {
            http: self.http.clone(),
            cluster_id: self.cluster_id.clone(),
            target,
            addr: node.addr.clone(),
        }
    }
}

impl PeerClient {
    async fn call<Req, Resp, E>(
        &self,
        path: &str,
        req: &Req,
        ttl: Duration,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let body = bincode::serialize(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let resp = self
            .http
            .post(format!("http://{}{}", self.addr, path))
            .header(CLUSTER_HEADER, &self.cluster_id)
            .timeout(ttl)
            .body(body)
            .send()
            .await
            .map_err(|e| {
                if e.is_connect() {
                    RPCError::Unreachable(Unreachable::new(&e))
                } else {
                    RPCError::Network(NetworkError::new(&e))
                }
            })?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        if !status.is_success() {
            let msg = String::from_utf8_lossy(&bytes).into_owned();
            return Err(RPCError::Network(NetworkError::new(&AnyError::error(
                format!(
                    "peer {} at {} answered {status}: {msg}",
                    self.target, self.addr
                ),
            ))));
        }
        let result: Result<Resp, RaftError<NodeId, E>> =
            bincode::deserialize(&bytes).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(PATH_APPEND, &rpc, option.hard_ttl()).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call(PATH_SNAPSHOT, &rpc, option.hard_ttl()).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(PATH_VOTE, &rpc, option.hard_ttl()).await
    }
}
