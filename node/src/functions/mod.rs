//! The function router: Knative Serving's data path in the node agent, instead of a mesh
//! gateway, an activator and a queue-proxy sidecar per pod. It listens on the node's address
//! (`--function-port`, 80 by default), finds a request's Route by its Host
//! (`{route}.{namespace}.{domain}`, a tag's `{tag}-{route}...`, or the in-cluster
//! `{route}.{namespace}.svc.cluster.local`), picks a revision by the Route's percentages, and
//! sends the request to one of its ready instances:
//!
//! - at most `containerConcurrency` requests at once per instance (the least busy is chosen);
//! - when none can take it, the request waits in the revision's queue (bounded: past
//!   [`QUEUE_LIMIT`] waiting, 503 with `Retry-After`), for at most the revision's
//!   `timeoutSeconds` (then 504);
//! - a revision scaled to zero is woken (`revisions/{name}/activate`) by the first request
//!   that finds it without instances, which waits for the first instance to be ready; the wait
//!   is a cold start, counted in the revision's histogram and told in an Event on the pod
//!   that took it (or, when the node started the function in process meanwhile — [`local`] —
//!   on the first pod that follows).
//!
//! Every request is metered ([`meter`]) from arrival to the end of its response, queued time
//! included, which is what the autoscaler scales on. The routing table ([`table`]) is rebuilt
//! from watches of Routes, Revisions and their pods whenever one changes.

pub mod local;
pub mod meter;
pub mod table;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use api::knative::{labels, Revision, Route};
use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use kube::Api;
use serde_json::{json, Value};
use tokio::sync::{watch, Notify};

use meter::Meter;
use table::{Instance, RevisionRoute, Table};

/// Requests one revision may hold waiting on one node before new ones get 503.
pub const QUEUE_LIMIT: usize = 10_000;
/// Connections the router holds at once.
const MAX_CONNECTIONS: usize = 16_384;
/// How long a client has to send a request's headers (also the idle limit between requests).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(60);
/// How often a revision without instances is asked to wake while requests wait for it.
const WAKE_AGAIN: Duration = Duration::from_secs(1);

type ResponseBody = Either<Metered<Incoming>, Full<Bytes>>;

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// One revision's instances, their requests in flight, the queue and the meter.
#[derive(Default)]
struct Gate {
    state: Mutex<GateState>,
    /// Woken when an instance frees a slot or the instances change.
    changed: Notify,
    meter: Mutex<Meter>,
}

#[derive(Default)]
struct GateState {
    instances: Vec<Instance>,
    concurrency: u32,
    inflight: HashMap<SocketAddr, u32>,
    waiting: usize,
    woken_at: Option<Instant>,
    /// Spreads ties between equally busy instances.
    turn: usize,
    /// How this node can start the revision in process, when it can ([`local::plan`]).
    in_process_plan: Option<Arc<local::Plan>>,
    /// The in-process instance, while the revision has no ready pod.
    in_process: Option<InProcessInstance>,
    /// Whether this stretch without pods has had its in-process start (one per stretch: the
    /// instance bridges to the pods, it does not replace them).
    in_process_spent: bool,
    /// An in-process start is under way.
    in_process_starting: bool,
    /// Whether a pod of the revision has existed since the last in-process start: only a
    /// stretch at zero after one frees the next start (a revision whose pods the API refuses
    /// — quota, Pod Security — is not served from the node agent instead).
    pod_seen: bool,
    /// The request that woke the revision onto the in-process instance and how long it
    /// waited, told on the first pod once it is ready.
    woken_by: Option<(String, Duration)>,
}

/// An instance of a revision running in the node agent's process ([`local`]).
struct InProcessInstance {
    instance: Instance,
    started: Instant,
    /// Dropping it stops the instance.
    _running: runtime::Running,
}

impl InProcessInstance {
    fn takes_requests(&self) -> bool {
        self.started.elapsed() < local::LIFETIME
    }
}

impl GateState {
    /// The least busy instance with room, if any: a ready pod, else the in-process instance.
    fn pick(&mut self) -> Option<Instance> {
        self.settle_in_process();
        if self.instances.is_empty() {
            let inst = self
                .in_process
                .as_ref()
                .filter(|l| l.takes_requests())?
                .instance
                .clone();
            let busy = self.inflight.entry(inst.addr).or_default();
            if self.concurrency > 0 && *busy >= self.concurrency {
                return None;
            }
            *busy += 1;
            return Some(inst);
        }
        let n = self.instances.len();
        self.turn = self.turn.wrapping_add(1);
        let mut best: Option<(u32, &Instance)> = None;
        for i in 0..n {
            let inst = &self.instances[(self.turn + i) % n];
            let busy = self.inflight.get(&inst.addr).copied().unwrap_or(0);
            if self.concurrency > 0 && busy >= self.concurrency {
                continue;
            }
            if best.is_none_or(|(b, _)| busy < b) {
                best = Some((busy, inst));
            }
        }
        let inst = best?.1.clone();
        *self.inflight.entry(inst.addr).or_default() += 1;
        Some(inst)
    }

    /// Whether a request would find a place now.
    fn has_room(&self) -> bool {
        let free = |addr: &SocketAddr| {
            self.concurrency == 0
                || self.inflight.get(addr).copied().unwrap_or(0) < self.concurrency
        };
        if self.instances.is_empty() {
            self.in_process
                .as_ref()
                .is_some_and(|l| l.takes_requests() && free(&l.instance.addr))
        } else {
            self.instances.iter().any(|i| free(&i.addr))
        }
    }

    /// Stops the in-process instance once it takes no new requests (a pod is ready, or its
    /// lifetime is over) and its last request has ended.
    fn settle_in_process(&mut self) {
        let Some(l) = &self.in_process else { return };
        let retired = !self.instances.is_empty() || !l.takes_requests();
        let addr = l.instance.addr;
        if retired && self.inflight.get(&addr).copied().unwrap_or(0) == 0 {
            self.inflight.remove(&addr);
            self.in_process = None;
        }
    }
}

/// A place taken at an instance, given back when dropped.
struct Slot {
    gate: Arc<Gate>,
    addr: SocketAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut st = self.gate.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = st.inflight.get_mut(&self.addr) {
            *n = n.saturating_sub(1);
        }
        st.settle_in_process();
        drop(st);
        // One place freed: the longest waiting request takes it (tokio's Notify wakes the
        // oldest waiter first, and hands the wake on if that request is gone).
        self.gate.changed.notify_one();
    }
}

/// A request counted in its revision's meter until dropped.
struct Arrival {
    gate: Arc<Gate>,
}

impl Arrival {
    fn new(gate: Arc<Gate>) -> Arrival {
        gate.meter
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .arrived(unix_now());
        Arrival { gate }
    }
}

impl Drop for Arrival {
    fn drop(&mut self) {
        self.gate
            .meter
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .finished(unix_now());
    }
}

/// A response body that holds its request's slot and meter entry until it has been sent.
pub struct Metered<B> {
    inner: B,
    _slot: Slot,
    _arrival: Arrival,
}

impl<B: Body + Unpin> Body for Metered<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Why a request got no instance.
enum Refused {
    /// The revision's queue on this node is full.
    Overloaded,
}

/// Decrements the queue's count when a waiting request stops waiting (answered or gone).
struct Waiting<'a>(&'a Gate);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut st = self.0.state.lock().unwrap_or_else(|p| p.into_inner());
        st.waiting = st.waiting.saturating_sub(1);
    }
}

/// Which clients are in the cluster (for cluster-local routes): pods, by the cluster's pod
/// range, and the node itself (its host-network pods).
#[derive(Clone, Debug)]
pub struct ClusterClients {
    pub pod_range: ipnet::Ipv4Net,
    pub node_address: std::net::IpAddr,
}

impl ClusterClients {
    fn contains(&self, ip: std::net::IpAddr) -> bool {
        let ip = match ip {
            std::net::IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .map_or(std::net::IpAddr::V6(v6), std::net::IpAddr::V4),
            v4 => v4,
        };
        ip == self.node_address
            || matches!(ip, std::net::IpAddr::V4(v4) if self.pod_range.contains(&v4))
    }
}

pub struct FunctionRouter {
    client: kube::Client,
    node_name: String,
    cluster: ClusterClients,
    /// Starts revisions in process while their pods come (None: requests wait for pods).
    in_process: Option<Arc<dyn local::Start>>,
    /// Counts changes of the revisions' pods (in-process instances wait on it for a pod's
    /// network).
    pods_changed: watch::Sender<u64>,
    table: RwLock<Arc<Table>>,
    gates: Mutex<HashMap<String, Arc<Gate>>>,
    http: hyper_util::client::legacy::Client<HttpConnector, Incoming>,
    events: kubeclient::events::Recorder,
    pods: std::sync::OnceLock<Store<Pod>>,
}

impl FunctionRouter {
    pub fn new(
        client: kube::Client,
        node_name: &str,
        cluster: ClusterClients,
        in_process: Option<Arc<dyn local::Start>>,
    ) -> Arc<FunctionRouter> {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let http = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(connector);
        Arc::new(FunctionRouter {
            events: kubeclient::events::Recorder::new(
                client.clone(),
                kubeclient::events::Source::Node(node_name.to_string()),
            ),
            client,
            node_name: node_name.to_string(),
            cluster,
            in_process,
            pods_changed: watch::Sender::new(0),
            table: RwLock::new(Arc::default()),
            gates: Mutex::default(),
            http,
            pods: Default::default(),
        })
    }

    fn table(&self) -> Arc<Table> {
        self.table.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn gate(&self, revision: &str) -> Arc<Gate> {
        self.gates
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(revision.to_string())
            .or_default()
            .clone()
    }

    /// Takes a new table: each revision's gate learns its instances and limit, and requests
    /// waiting for instances look again.
    pub fn set_table(&self, table: Table) {
        let mut gates = self.gates.lock().unwrap_or_else(|p| p.into_inner());
        let mut woken = Vec::new();
        for (key, route) in &table.revisions {
            let gate = gates.entry(key.clone()).or_default();
            if let Some((inst, what, waited)) = update_gate(gate, route) {
                woken.push((key.clone(), inst, what, waited));
            }
        }
        // A revision gone: its waiting requests learn it (they find no instance and time out)
        // and its gate goes when nothing holds it.
        gates.retain(|key, gate| table.revisions.contains_key(key) || Arc::strong_count(gate) > 1);
        drop(gates);
        *self.table.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(table);
        for (revision, inst, what, waited) in woken {
            self.tell_woken(&revision, &inst, &what, waited, true);
        }
    }

    /// Every revision's meter, for the autoscaler.
    pub fn stats(&self) -> Value {
        let now = unix_now();
        let gates: Vec<(String, Arc<Gate>)> = self
            .gates
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, g)| (k.clone(), g.clone()))
            .collect();
        let revisions: serde_json::Map<String, Value> = gates
            .into_iter()
            .map(|(k, g)| {
                let report = g
                    .meter
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .report(now);
                (k, report)
            })
            .collect();
        json!({"revisions": revisions})
    }

    /// Waits for a place at an instance of `revision`, waking it when it has none. Returns
    /// the place and, for the request that woke it, how long it waited.
    async fn acquire(
        self: &Arc<Self>,
        revision: &str,
        gate: &Arc<Gate>,
    ) -> Result<(Slot, Option<Instance>), Refused> {
        let mut waited_from: Option<Instant> = None;
        let mut woke = false;
        let mut waiting: Option<Waiting> = None;
        loop {
            let notified = gate.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut st = gate.state.lock().unwrap_or_else(|p| p.into_inner());
                // A new request queues behind those already waiting (first come, first
                // served); a waiting one tries when woken.
                let in_turn = waiting.is_some() || st.waiting == 0;
                if let Some(inst) = in_turn.then(|| st.pick()).flatten() {
                    // Others still waiting and room left: the next one takes a place too
                    // (several may have freed, or come with new instances).
                    let others = st.waiting > usize::from(waiting.is_some()) && st.has_room();
                    drop(st);
                    drop(waiting);
                    if others {
                        gate.changed.notify_one();
                    }
                    if let Some(from) = waited_from.filter(|_| woke) {
                        gate.meter
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .cold_start(from.elapsed().as_secs_f64(), inst.pod.is_empty());
                    }
                    let addr = inst.addr;
                    return Ok((
                        Slot {
                            gate: gate.clone(),
                            addr,
                        },
                        woke.then_some(inst),
                    ));
                }
                if waiting.is_none() {
                    if st.waiting >= QUEUE_LIMIT {
                        return Err(Refused::Overloaded);
                    }
                    st.waiting += 1;
                    waiting = Some(Waiting(gate));
                    waited_from = Some(Instant::now());
                }
                if st.instances.is_empty() && st.woken_at.is_none_or(|t| t.elapsed() >= WAKE_AGAIN)
                {
                    st.woken_at = Some(Instant::now());
                    woke = true;
                    let router = self.clone();
                    let revision = revision.to_string();
                    tokio::spawn(async move { router.wake(&revision).await });
                    self.start_in_process(gate, &mut st);
                }
            }
            // Without instances, look again after a while even if nothing changes: the wake
            // may have failed, or the revision gone back to zero before it was ready.
            let _ = tokio::time::timeout(WAKE_AGAIN, notified).await;
        }
    }

    /// Starts the revision in process, if it may be and has not been in this stretch without
    /// pods; the waiting requests take the instance as soon as it listens.
    fn start_in_process(self: &Arc<Self>, gate: &Arc<Gate>, st: &mut GateState) {
        let (Some(starter), Some(plan), Some(pods)) = (
            self.in_process.clone(),
            st.in_process_plan.clone(),
            self.pods.get().cloned(),
        ) else {
            return;
        };
        if st.in_process.is_some() || st.in_process_spent || st.in_process_starting {
            return;
        }
        st.in_process_spent = true;
        st.in_process_starting = true;
        st.pod_seen = false;
        let network = local::PodNetwork {
            pods,
            pods_changed: self.pods_changed.subscribe(),
            node_name: self.node_name.clone(),
        };
        let gate = gate.clone();
        let timeout = self
            .table()
            .revisions
            .get(&plan.revision)
            .map_or(Duration::from_secs(300), |r| r.timeout);
        tokio::spawn(async move {
            let revision = plan.revision.clone();
            let started = starter.start(plan, network).await;
            let addr = {
                let mut st = gate.state.lock().unwrap_or_else(|p| p.into_inner());
                st.in_process_starting = false;
                match started {
                    Ok(running) => match running.serving {
                        // A pod that got ready meanwhile wins; the instance is dropped (stopped).
                        Some(addr) if st.instances.is_empty() && st.in_process.is_none() => {
                            st.in_process = Some(InProcessInstance {
                                instance: Instance {
                                    addr,
                                    pod: String::new(),
                                },
                                started: Instant::now(),
                                _running: running,
                            });
                            addr
                        }
                        _ => return,
                    },
                    Err(e) => {
                        tracing::debug!(revision, "function router: no start in process: {e}");
                        return;
                    }
                }
            };
            gate.changed.notify_waiters();
            // Its lifetime over, it goes even if no request or pod comes to retire it; and
            // when a request still holds it (a response that streams on), the revision's
            // timeout later, whatever it holds.
            tokio::time::sleep(local::LIFETIME).await;
            gate.state
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .settle_in_process();
            gate.changed.notify_waiters();
            tokio::time::sleep(timeout).await;
            let mut st = gate.state.lock().unwrap_or_else(|p| p.into_inner());
            if st
                .in_process
                .as_ref()
                .is_some_and(|l| l.instance.addr == addr)
            {
                st.in_process = None;
            }
        });
    }

    /// Asks the control plane for an instance of `revision` (`namespace/name`).
    async fn wake(&self, revision: &str) {
        let Some((ns, name)) = revision.split_once('/') else {
            return;
        };
        let path =
            format!("/apis/serving.knative.dev/v1/namespaces/{ns}/revisions/{name}/activate");
        let req = http::Request::post(path)
            .header(header::CONTENT_TYPE, "application/json")
            .body(b"{}".to_vec())
            .expect("a valid request");
        if let Err(e) = self.client.request::<Value>(req).await {
            tracing::warn!(revision, "function router: cannot wake the revision: {e}");
        }
    }

    /// Serves one request from `peer`.
    async fn handle(
        self: Arc<Self>,
        mut req: Request<Incoming>,
        peer: SocketAddr,
    ) -> Response<ResponseBody> {
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_string)
            .or_else(|| req.uri().host().map(str::to_string))
            .unwrap_or_default();
        let table = self.table();
        let in_cluster =
            self.cluster.contains(peer.ip()) || table.node_addresses.contains(&peer.ip());
        let Some(shares) = table.shares(&host, in_cluster) else {
            return plain(
                StatusCode::NOT_FOUND,
                &format!("no function answers host {host:?}"),
            );
        };
        let roll = rand::random_range(0..100);
        let Some(share) = table::pick(shares, roll) else {
            return plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "the route has no traffic targets",
            );
        };
        let Some(route) = table.revisions.get(&share.revision) else {
            return plain(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("revision {} is not known here yet", share.revision),
            );
        };
        let timeout = route.timeout;
        let gate = self.gate(&share.revision);
        let arrival = Arrival::new(gate.clone());
        let started = Instant::now();
        let (slot, woken) =
            match tokio::time::timeout(timeout, self.acquire(&share.revision, &gate)).await {
                Ok(Ok(got)) => got,
                Ok(Err(Refused::Overloaded)) => {
                    let mut r = plain(
                        StatusCode::SERVICE_UNAVAILABLE,
                        &format!(
                            "revision {} is overloaded: {QUEUE_LIMIT} requests are waiting",
                            share.revision
                        ),
                    );
                    r.headers_mut()
                        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                    return r;
                }
                Err(_) => {
                    return plain(
                        StatusCode::GATEWAY_TIMEOUT,
                        &format!(
                            "no instance of revision {} was ready within {timeout:?}",
                            share.revision
                        ),
                    );
                }
            };
        if let Some(inst) = woken {
            let what = format!("{} {host}{}", req.method(), req.uri().path());
            if inst.pod.is_empty() {
                // Told on the first pod, once one is ready (at once if one is already).
                let mut st = gate.state.lock().unwrap_or_else(|p| p.into_inner());
                match st.instances.first().cloned() {
                    None => st.woken_by = Some((what, started.elapsed())),
                    Some(first) => {
                        drop(st);
                        self.tell_woken(&share.revision, &first, &what, started.elapsed(), true);
                    }
                }
            } else {
                self.tell_woken(&share.revision, &inst, &what, started.elapsed(), false);
            }
        }
        let path = req
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        *req.uri_mut() = match format!("http://{}{path}", slot.addr).parse() {
            Ok(uri) => uri,
            Err(_) => return plain(StatusCode::BAD_REQUEST, "the request's path is not valid"),
        };
        let left = timeout.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, self.http.request(req)).await {
            Ok(Ok(resp)) => resp.map(|body| {
                Either::Left(Metered {
                    inner: body,
                    _slot: slot,
                    _arrival: arrival,
                })
            }),
            Ok(Err(e)) => plain(
                StatusCode::BAD_GATEWAY,
                &format!("the instance at {} did not answer: {e}", slot.addr),
            ),
            Err(_) => plain(
                StatusCode::GATEWAY_TIMEOUT,
                &format!(
                    "revision {} did not answer within {timeout:?}",
                    share.revision
                ),
            ),
        }
    }

    /// An Event on the pod that took the request which woke its revision (or, `in_process`,
    /// the first pod after the in-process instance that took it).
    fn tell_woken(
        &self,
        revision: &str,
        inst: &Instance,
        what: &str,
        waited: Duration,
        in_process: bool,
    ) {
        let Some(pods) = self.pods.get() else { return };
        let ns = revision.split_once('/').map_or("", |(ns, _)| ns);
        let Some(pod) = pods.get(&reflector::ObjectRef::new(&inst.pod).within(ns)) else {
            return;
        };
        self.events.pod(
            &pod,
            None,
            kubeclient::events::Type::Normal,
            "Activated",
            &if in_process {
                format!(
                    "Started from zero by request {what} (it waited {} ms, answered in process \
                     on node {} while this pod started)",
                    waited.as_millis(),
                    self.node_name
                )
            } else {
                format!(
                    "Started from zero by request {what} (it waited {} ms)",
                    waited.as_millis()
                )
            },
        );
    }

    /// Serves the router on `listener` and keeps its table from the cluster, until dropped.
    pub async fn run(self: Arc<Self>, listener: tokio::net::TcpListener) {
        let changed = Arc::new(Notify::new());
        let (routes, routes_writer) = reflector::store::<Route>();
        let (revisions, revisions_writer) = reflector::store::<Revision>();
        let (pods, pods_writer) = reflector::store::<Pod>();
        let (nodes, nodes_writer) = reflector::store::<Node>();
        let _ = self.pods.set(pods.clone());
        let mark = |n: &Arc<Notify>| {
            let n = n.clone();
            move || n.notify_one()
        };
        kubeclient::reflect::spawn(Api::all(self.client.clone()), routes_writer, mark(&changed));
        kubeclient::reflect::spawn(
            Api::all(self.client.clone()),
            revisions_writer,
            mark(&changed),
        );
        let pods_marked = {
            let (router, changed) = (self.clone(), changed.clone());
            move || {
                router.pods_changed.send_modify(|n| *n = n.wrapping_add(1));
                changed.notify_one();
            }
        };
        kubeclient::reflect::spawn_with(
            Api::all(self.client.clone()),
            watcher::Config::default().labels(labels::REVISION),
            pods_writer,
            pods_marked,
        );
        // The nodes: this one's cordon and taints (may it run a revision in process?) and
        // every node's address (clients in the cluster).
        kubeclient::reflect::spawn(Api::all(self.client.clone()), nodes_writer, mark(&changed));
        let router = self.clone();
        tokio::spawn(async move {
            loop {
                changed.notified().await;
                let all_nodes = nodes.state();
                let node = all_nodes
                    .iter()
                    .find(|n| n.metadata.name.as_deref() == Some(router.node_name.as_str()));
                router.set_table(table::build(
                    &routes.state(),
                    &revisions.state(),
                    &pods.state(),
                    node.map(|n| n.as_ref()),
                    &all_nodes,
                ));
            }
        });
        // Bounded like the node's other endpoints: past this, new connections wait in the
        // listen backlog.
        let connections = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        loop {
            let Ok(permit) = connections.clone().acquire_owned().await else {
                return;
            };
            let (stream, peer) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!("function router: accept: {e}");
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let router = self.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let service = hyper::service::service_fn(move |req| {
                    let router = router.clone();
                    async move { Ok::<_, std::convert::Infallible>(router.handle(req, peer).await) }
                });
                // A client must send its headers within the limit (no slowloris).
                if let Err(e) = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(HEADER_READ_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), service)
                    .await
                {
                    tracing::debug!("function router: connection: {e}");
                }
            });
        }
    }
}

/// Gives a gate its revision's instances and limits; returns the request to tell on the first
/// pod when pods have come after an in-process start.
fn update_gate(gate: &Arc<Gate>, route: &RevisionRoute) -> Option<(Instance, String, Duration)> {
    let mut st = gate.state.lock().unwrap_or_else(|p| p.into_inner());
    st.in_process_plan = route.in_process.clone();
    if route.has_pods {
        st.pod_seen = true;
    } else if route.instances.is_empty() && st.pod_seen {
        // At zero again after a pod: the next request may start it in process again. A pod
        // that is never made, or never gets ready, keeps it spent, so a revision that cannot
        // run is not served from the node agent for ever.
        st.in_process_spent = false;
        st.pod_seen = false;
    }
    if st.instances == route.instances && st.concurrency == route.concurrency {
        return None;
    }
    st.instances = route.instances.clone();
    st.concurrency = route.concurrency;
    let mut told = None;
    if let Some(first) = st.instances.first().cloned() {
        // Pods are here: the next stretch at zero may start in process again.
        st.in_process_spent = false;
        told = st
            .woken_by
            .take()
            .map(|(what, waited)| (first, what, waited));
    }
    st.settle_in_process();
    drop(st);
    gate.changed.notify_waiters();
    told
}

fn plain(status: StatusCode, message: &str) -> Response<ResponseBody> {
    let mut r = Response::new(Either::Right(Full::new(Bytes::from(format!(
        "{message}\n"
    )))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inst(port: u16) -> Instance {
        Instance {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            pod: format!("p{port}"),
        }
    }

    #[test]
    fn the_least_busy_instance_with_room_is_picked() {
        let mut st = GateState {
            instances: vec![inst(1), inst(2)],
            concurrency: 1,
            ..Default::default()
        };
        let a = st.pick().unwrap();
        let b = st.pick().unwrap();
        assert_ne!(a.addr, b.addr);
        assert!(st.pick().is_none(), "both hold their one request");
        *st.inflight.get_mut(&a.addr).unwrap() -= 1;
        assert_eq!(st.pick().unwrap().addr, a.addr);
        st.concurrency = 0;
        assert!(st.pick().is_some(), "no limit");
    }

    /// An in-process instance whose stop channel the test watches.
    fn in_process(
        port: u16,
    ) -> (
        InProcessInstance,
        tokio::sync::watch::Receiver<runtime::StopRequest>,
    ) {
        let (_exit_tx, exit_rx) = tokio::sync::oneshot::channel();
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(None);
        let instance = InProcessInstance {
            instance: Instance {
                addr: SocketAddr::from(([127, 0, 0, 1], port)),
                pod: String::new(),
            },
            started: Instant::now(),
            _running: runtime::Running::new(exit_rx, stop_tx),
        };
        (instance, stop_rx)
    }

    #[test]
    fn an_in_process_start_is_spent_until_a_pod_has_come_and_gone() {
        let gate = Arc::new(Gate::default());
        let route = |has_pods: bool, instances: Vec<Instance>| RevisionRoute {
            concurrency: 0,
            timeout: Duration::from_secs(300),
            instances,
            has_pods,
            in_process: None,
        };
        {
            let mut st = gate.state.lock().unwrap();
            st.in_process_spent = true;
        }
        // The API makes no pod (quota, Pod Security): still spent, however often it looks.
        update_gate(&gate, &route(false, vec![]));
        update_gate(&gate, &route(false, vec![]));
        assert!(gate.state.lock().unwrap().in_process_spent);
        // A pod came (not ready) and went: at zero again, a new start may come.
        update_gate(&gate, &route(true, vec![]));
        assert!(gate.state.lock().unwrap().in_process_spent);
        update_gate(&gate, &route(false, vec![]));
        assert!(!gate.state.lock().unwrap().in_process_spent);
        // A ready pod frees it at once.
        gate.state.lock().unwrap().in_process_spent = true;
        update_gate(&gate, &route(true, vec![inst(1)]));
        assert!(!gate.state.lock().unwrap().in_process_spent);
    }

    #[test]
    fn the_in_process_instance_bridges_until_a_pod_is_ready_and_stops_after_its_last_request() {
        let (local, stopped) = in_process(9);
        let mut st = GateState {
            concurrency: 1,
            in_process: Some(local),
            ..Default::default()
        };
        let first = st
            .pick()
            .expect("no pod yet: the in-process instance takes it");
        assert!(first.pod.is_empty());
        assert!(st.pick().is_none(), "it too holds containerConcurrency");
        // A pod is ready: new requests go to it, the in-process instance finishes its own.
        st.instances = vec![inst(1)];
        st.settle_in_process();
        assert!(st.in_process.is_some(), "its request is still in flight");
        assert_eq!(st.pick().unwrap().addr, inst(1).addr);
        *st.inflight.get_mut(&first.addr).unwrap() -= 1;
        st.settle_in_process();
        assert!(st.in_process.is_none());
        assert!(
            stopped.has_changed().is_err(),
            "dropped: the instance stops"
        );

        // Past its lifetime it takes nothing, even with no pod, and goes once idle.
        let (mut old, _stopped) = in_process(10);
        old.started = Instant::now() - local::LIFETIME;
        let mut st = GateState {
            in_process: Some(old),
            ..Default::default()
        };
        assert!(st.pick().is_none());
        assert!(st.in_process.is_none());
    }
}
