//! Clients of the store's HTTP service: [`RemoteMember`] talks to one member (members use it to
//! forward to the leader); [`StoreClient`] talks to a cluster, moving to another member when
//! one is down or has no leader. [`Status`] is what a member says of itself.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use futures_util::StreamExt;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::mvcc::{
    Consistency, KeySpan, RangeRequest, RangeResponse, Revision, StoreError, Txn, TxnResponse,
    WatchBatch,
};
use crate::network::Transport;
use crate::raft::NodeId;
use crate::tls::PeerTls;

/// A member's view of the cluster, for `drover store status` and tests.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Status {
    pub cluster_id: String,
    pub node_id: NodeId,
    pub addr: String,
    pub state: String,
    pub leader: Option<NodeId>,
    pub term: u64,
    pub voters: BTreeMap<NodeId, String>,
    pub learners: BTreeMap<NodeId, String>,
    pub revision: Revision,
    pub compact_revision: Revision,
    pub last_applied: u64,
    /// On the leader: how far each follower's log is known to match its own (the index it
    /// acknowledged). A restarted member whose log ends before that lost data it acknowledged.
    #[serde(default)]
    pub matched: BTreeMap<NodeId, u64>,
}

pub const FORWARDED_HEADER: &str = "drover-forwarded";

pub const PATH_STATUS: &str = "/store/v1/status";
pub const PATH_TXN: &str = "/store/v1/txn";
pub const PATH_RANGE: &str = "/store/v1/range";
pub const PATH_COMPACT: &str = "/store/v1/compact";
pub const PATH_JOIN: &str = "/store/v1/members/join";
pub const PATH_REMOVE: &str = "/store/v1/members/remove";
pub const PATH_WATCH: &str = "/store/v1/watch";

/// One member, by address.
#[derive(Clone)]
pub struct RemoteMember {
    transport: Transport,
    addr: String,
    forwarded: bool,
}

impl RemoteMember {
    /// A client for forwarding from one member to another: the request is marked so the
    /// receiver does not forward it again.
    pub fn new(transport: Transport, addr: &str) -> Self {
        RemoteMember {
            transport,
            addr: addr.to_string(),
            forwarded: true,
        }
    }

    /// A client for an end user: the member may forward the request to its leader.
    pub fn direct(transport: Transport, addr: &str) -> Self {
        RemoteMember {
            transport,
            addr: addr.to_string(),
            forwarded: false,
        }
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        path: &str,
        req: &Req,
        idempotent: bool,
        timeout: Duration,
    ) -> Result<Resp, StoreError> {
        let body = bincode::serialize(req).map_err(|e| StoreError::Internal(e.to_string()))?;
        let mut request = self
            .transport
            .post(&self.addr, path)
            .timeout(timeout)
            .body(body);
        if self.forwarded {
            request = request.header(FORWARDED_HEADER, "1");
        }
        let resp = request
            .send()
            .await
            .map_err(|e| self.transport_error(e, idempotent))?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| self.transport_error(e, idempotent))?;
        if !status.is_success() {
            return Err(StoreError::Unavailable(format!(
                "{} answered {status}: {}",
                self.addr,
                String::from_utf8_lossy(&bytes)
            )));
        }
        bincode::deserialize::<Result<Resp, StoreError>>(&bytes)
            .map_err(|e| StoreError::Internal(format!("bad answer from {}: {e}", self.addr)))?
    }

    fn transport_error(&self, e: reqwest::Error, idempotent: bool) -> StoreError {
        // A refused connection means the request never left: safe to send elsewhere.
        if e.is_connect() || idempotent {
            StoreError::Unavailable(format!("cannot reach {}: {e}", self.addr))
        } else {
            StoreError::Indeterminate(format!("lost contact with {} mid-request: {e}", self.addr))
        }
    }

    pub async fn status(&self) -> Result<Status, StoreError> {
        let resp = self
            .transport
            .get(&self.addr, PATH_STATUS)
            .timeout(Duration::from_secs(3))
            .send()
            .await
            .map_err(|e| StoreError::Unavailable(format!("cannot reach {}: {e}", self.addr)))?;
        resp.json().await.map_err(|e| {
            StoreError::Unavailable(format!("{} is not a Drover member: {e}", self.addr))
        })
    }

    pub async fn txn(&self, txn: &Txn) -> Result<TxnResponse, StoreError> {
        self.call(PATH_TXN, txn, false, Duration::from_secs(15))
            .await
    }

    pub async fn range(
        &self,
        req: &RangeRequest,
        consistency: Consistency,
    ) -> Result<RangeResponse, StoreError> {
        self.call(
            PATH_RANGE,
            &(req, consistency),
            true,
            Duration::from_secs(15),
        )
        .await
    }

    pub async fn compact(&self, revision: Revision) -> Result<Revision, StoreError> {
        self.call(PATH_COMPACT, &revision, true, Duration::from_secs(60))
            .await
    }

    /// Asks the cluster to add a member; returns once it is a voter. Catching up can take a
    /// while on a large store, hence the long deadline.
    pub async fn join(&self, node_id: NodeId, addr: &str) -> Result<(), StoreError> {
        self.call(
            PATH_JOIN,
            &(node_id, addr.to_string()),
            true,
            Duration::from_secs(300),
        )
        .await
    }

    pub async fn remove(&self, node_id: NodeId) -> Result<(), StoreError> {
        self.call(PATH_REMOVE, &node_id, true, Duration::from_secs(30))
            .await
    }

    /// Opens a watch on this member. The stream ends after an error item.
    pub async fn watch(
        &self,
        span: KeySpan,
        from: Revision,
    ) -> Result<impl futures_util::Stream<Item = Result<WatchBatch, StoreError>>, StoreError> {
        let body =
            bincode::serialize(&(span, from)).map_err(|e| StoreError::Internal(e.to_string()))?;
        let resp = self
            .transport
            .post(&self.addr, PATH_WATCH)
            .body(body)
            .send()
            .await
            .map_err(|e| StoreError::Unavailable(format!("cannot reach {}: {e}", self.addr)))?;
        if !resp.status().is_success() {
            return Err(StoreError::Unavailable(format!(
                "{} answered {}",
                self.addr,
                resp.status()
            )));
        }
        let addr = self.addr.clone();
        let mut body = resp.bytes_stream();
        let mut buf = BytesMut::new();
        Ok(async_stream(move |tx| async move {
            loop {
                while let Some(frame) = take_frame(&mut buf) {
                    let item = bincode::deserialize::<Result<WatchBatch, StoreError>>(&frame)
                        .unwrap_or_else(|e| {
                            Err(StoreError::Internal(format!("bad watch frame: {e}")))
                        });
                    let end = item.is_err();
                    if tx.send(item).await.is_err() || end {
                        return;
                    }
                }
                match body.next().await {
                    Some(Ok(chunk)) => buf.extend_from_slice(&chunk),
                    Some(Err(e)) => {
                        let _ = tx
                            .send(Err(StoreError::Unavailable(format!(
                                "watch on {addr} broke: {e}"
                            ))))
                            .await;
                        return;
                    }
                    None => {
                        let _ = tx
                            .send(Err(StoreError::Unavailable(format!(
                                "watch on {addr} ended"
                            ))))
                            .await;
                        return;
                    }
                }
            }
        }))
    }
}

/// Frames on a watch stream: a 4-byte big-endian length, then a bincode
/// `Result<WatchBatch, StoreError>`.
pub fn encode_frame(item: &Result<WatchBatch, StoreError>) -> Vec<u8> {
    let body = bincode::serialize(item).expect("watch items serialise");
    let mut out = Vec::with_capacity(body.len() + 4);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

fn take_frame(buf: &mut BytesMut) -> Option<bytes::Bytes> {
    if buf.len() < 4 {
        return None;
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if buf.len() < 4 + len {
        return None;
    }
    buf.advance(4);
    Some(buf.split_to(len).freeze())
}

/// A stream fed by a task: enough of `async-stream` for the watch decoder.
fn async_stream<T, F, Fut>(f: F) -> impl futures_util::Stream<Item = T>
where
    T: Send + 'static,
    F: FnOnce(tokio::sync::mpsc::Sender<T>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(f(tx));
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// A client of a whole cluster: given any members' addresses, it sends each request to one and
/// moves on to the next when a member is unreachable or has no leader. It never retries a
/// write whose outcome is unknown.
#[derive(Clone)]
pub struct StoreClient {
    members: Vec<RemoteMember>,
    /// How long to keep trying while no member can serve (an election, a restart).
    pub patience: Duration,
    /// The member that answered last: the next request starts there, so a member that is cut
    /// off or down costs one detour, not one per request.
    preferred: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl StoreClient {
    /// A client of members that serve plain HTTP (a store without certificates, in tests).
    pub fn new(addrs: &[String]) -> Self {
        StoreClient::with_transport(addrs, Transport::plaintext())
    }

    /// A client that presents a member's certificate (the admin's debug client, tests).
    pub fn with_tls(addrs: &[String], tls: &PeerTls) -> Self {
        StoreClient::with_transport(addrs, Transport::new(None, Some(tls)))
    }

    pub fn with_transport(addrs: &[String], transport: Transport) -> Self {
        StoreClient {
            members: addrs
                .iter()
                .map(|a| RemoteMember::direct(transport.clone(), a))
                .collect(),
            patience: Duration::from_secs(10),
            preferred: Default::default(),
        }
    }

    async fn with_retry<T, F, Fut>(&self, op: F) -> Result<T, StoreError>
    where
        F: Fn(RemoteMember) -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        use std::sync::atomic::Ordering;
        let deadline = tokio::time::Instant::now() + self.patience;
        let n = self.members.len();
        let start = self.preferred.load(Ordering::Relaxed);
        let mut tried = 0;
        loop {
            let at = (start + tried) % n;
            match op(self.members[at].clone()).await {
                Err(e) if e.is_retryable() && tokio::time::Instant::now() < deadline => {
                    tried += 1;
                    if tried % n == 0 {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
                other => {
                    // Whatever it answered, it answered: unreachable members are the ones
                    // passed over.
                    self.preferred.store(at, Ordering::Relaxed);
                    return other;
                }
            }
        }
    }

    pub async fn txn(&self, txn: &Txn) -> Result<TxnResponse, StoreError> {
        self.with_retry(|m| async move { m.txn(txn).await }).await
    }

    pub async fn put(&self, key: &[u8], value: &[u8]) -> Result<TxnResponse, StoreError> {
        self.txn(&Txn::put(key, value)).await
    }

    pub async fn range(
        &self,
        req: &RangeRequest,
        consistency: Consistency,
    ) -> Result<RangeResponse, StoreError> {
        self.with_retry(|m| async move { m.range(req, consistency).await })
            .await
    }

    pub async fn get(&self, key: &[u8]) -> Result<Option<crate::mvcc::KeyValue>, StoreError> {
        let resp = self
            .range(
                &RangeRequest::new(KeySpan::key(key)),
                Consistency::Linearizable,
            )
            .await?;
        Ok(resp.kvs.into_iter().next())
    }

    pub async fn compact(&self, revision: Revision) -> Result<Revision, StoreError> {
        self.with_retry(|m| async move { m.compact(revision).await })
            .await
    }

    pub async fn remove_member(&self, node_id: NodeId) -> Result<(), StoreError> {
        self.with_retry(|m| async move { m.remove(node_id).await })
            .await
    }

    pub async fn status(&self) -> Result<Status, StoreError> {
        self.with_retry(|m| async move { m.status().await }).await
    }

    pub async fn watch(
        &self,
        span: KeySpan,
        from: Revision,
    ) -> Result<impl futures_util::Stream<Item = Result<WatchBatch, StoreError>>, StoreError> {
        self.with_retry(|m| {
            let span = span.clone();
            async move { m.watch(span, from).await }
        })
        .await
    }
}
