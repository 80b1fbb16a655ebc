//! The transport between members: Raft RPCs as bincode over HTTP/1.1 (on mutual TLS) on each
//! member's peer address. Connections are pooled and re-established by the HTTP client; every call has a
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
use crate::tls::PeerTls;

/// Header that carries the cluster id on every peer request.
pub const CLUSTER_HEADER: &str = "drover-cluster";

pub const PATH_APPEND: &str = "/raft/append";
pub const PATH_VOTE: &str = "/raft/vote";
pub const PATH_SNAPSHOT: &str = "/raft/snapshot";

/// How a member (or a client) reaches members: one pooled HTTP client, over mutual TLS when
/// the cluster has certificates. Connections are re-established by the client; outgoing ones
/// leave from the member's own address when it has a specific one, so that traffic between
/// members can be told apart (and, in fault tests, cut) by address.
#[derive(Clone)]
pub struct Transport {
    http: reqwest::Client,
    scheme: &'static str,
}

impl Transport {
    pub fn new(local: Option<IpAddr>, tls: Option<&PeerTls>) -> Transport {
        let builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(500))
            .pool_idle_timeout(Duration::from_secs(30))
            .tcp_nodelay(true)
            .http1_only()
            .local_address(local.filter(|ip| !ip.is_unspecified()));
        let (builder, scheme) = match tls {
            Some(tls) => (
                builder.use_preconfigured_tls(rustls::ClientConfig::clone(&tls.client)),
                "https",
            ),
            None => (builder, "http"),
        };
        Transport {
            http: builder
                .build()
                .expect("a client with a checked rustls configuration builds"),
            scheme,
        }
    }

    /// Plain HTTP, for members without certificates (in-process tests of the store alone).
    pub fn plaintext() -> Transport {
        Transport::new(None, None)
    }

    pub fn post(&self, addr: &str, path: &str) -> reqwest::RequestBuilder {
        self.http.post(format!("{}://{addr}{path}", self.scheme))
    }

    pub fn get(&self, addr: &str, path: &str) -> reqwest::RequestBuilder {
        self.http.get(format!("{}://{addr}{path}", self.scheme))
    }

    pub fn put(&self, addr: &str, path: &str) -> reqwest::RequestBuilder {
        self.http.put(format!("{}://{addr}{path}", self.scheme))
    }
}

#[derive(Clone)]
pub struct Network {
    pub transport: Transport,
    pub cluster_id: String,
}

pub struct PeerClient {
    transport: Transport,
    cluster_id: String,
    target: NodeId,
    addr: String,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerClient {
        PeerClient {
            transport: self.transport.clone(),
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
            .transport
            .post(&self.addr, path)
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
