//! `kubectl port-forward` on the node: the session behind the log server's
//! `/portForward/{namespace}/{pod}` endpoint, which the API server's `pods/portforward` splices
//! the client's connection to.
//!
//! The protocol is `portforward.k8s.io` over SPDY ([`crate::spdy`]), reached two ways: an HTTP
//! upgrade to SPDY/3.1 (kubectl before 1.30, client-go's libraries), or a WebSocket with the
//! subprotocol `SPDY/3.1+portforward.k8s.io` whose binary messages carry the same SPDY bytes
//! (kubectl 1.30+, KEP-4006). For each connection it forwards, the client opens two streams
//! with the same `requestID` and `port`: `error`, where a failure is reported as text, and
//! `data`, the connection's bytes. (The Python client speaks `v4.channel.k8s.io` over a
//! WebSocket instead: [`channel_session`].) As kubelet does, the connection is made to the port on the
//! pod's localhost, inside its network namespace (in loopback mode, pods have no namespace of
//! their own: to the pod's address).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket};
use bytes::Bytes;
use k8s_openapi::api::core::v1::Pod;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::spdy;

/// The subprotocol over a SPDY upgrade (`X-Stream-Protocol-Version`).
pub const PROTOCOL: &str = "portforward.k8s.io";
/// The WebSocket subprotocol whose messages carry SPDY.
pub const TUNNEL: &str = "SPDY/3.1+portforward.k8s.io";
/// The channel protocols over a WebSocket (the Python client's port-forward): one connection
/// per port named in the query, each port a data and an error channel.
pub const CHANNELS: [&str; 2] = ["v4.channel.k8s.io", "v5.channel.k8s.io"];

const DIAL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one direction of a forwarded connection may go on after the other has ended.
const LINGER: Duration = Duration::from_secs(1);

/// Opens connections to a pod's ports.
pub trait Dial: Send + Sync {
    /// A connection to `port` of pod `namespace/pod` on this node. Err: why not, for the client.
    fn dial(
        &self,
        namespace: &str,
        pod: &str,
        port: u16,
    ) -> runtime::BoxFuture<'_, Result<TcpStream, String>>;
}

/// Where the pod is, as the API has it: its address, and its network namespace when it has one.
pub struct PodDial {
    pub client: kube::Client,
    pub node_name: String,
}

impl Dial for PodDial {
    fn dial(
        &self,
        namespace: &str,
        pod: &str,
        port: u16,
    ) -> runtime::BoxFuture<'_, Result<TcpStream, String>> {
        let (namespace, pod) = (namespace.to_string(), pod.to_string());
        Box::pin(async move {
            let pods: kube::Api<Pod> = kube::Api::namespaced(self.client.clone(), &namespace);
            let found = pods
                .get_opt(&pod)
                .await
                .map_err(|e| format!("cannot read pod {namespace}/{pod}: {e}"))?
                .ok_or_else(|| format!("pod {namespace}/{pod} not found"))?;
            let on_this_node = found.spec.as_ref().and_then(|s| s.node_name.as_deref())
                == Some(self.node_name.as_str());
            let ip = found
                .status
                .as_ref()
                .and_then(|s| s.pod_ip.as_deref())
                .and_then(|ip| ip.parse::<IpAddr>().ok());
            let (true, Some(ip)) = (on_this_node, ip) else {
                return Err(format!(
                    "pod {namespace}/{pod} is not running on node {}",
                    self.node_name
                ));
            };
            let uid = found.metadata.uid.unwrap_or_default();
            let netns = network::pods::PodLink::for_uid(&uid).netns_path();
            connect(netns.exists().then_some(netns), ip, port).await
        })
    }
}

/// Connects to `port` on localhost inside `netns`, or to `ip` without one.
async fn connect(netns: Option<PathBuf>, ip: IpAddr, port: u16) -> Result<TcpStream, String> {
    let failed = |e: std::io::Error| {
        format!("error forwarding port {port} to pod: failed to connect to localhost:{port} inside the pod's network: {e}")
    };
    let Some(netns) = netns else {
        return tokio::time::timeout(DIAL_TIMEOUT, TcpStream::connect((ip, port)))
            .await
            .map_err(|_| failed(std::io::ErrorKind::TimedOut.into()))?
            .map_err(failed);
    };
    let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
    let stream = tokio::task::spawn_blocking(move || {
        runtime::netns::within(&netns, move || {
            let s = std::net::TcpStream::connect_timeout(&addr, DIAL_TIMEOUT)?;
            s.set_nonblocking(true)?;
            Ok(s)
        })
    })
    .await
    .map_err(|e| failed(std::io::Error::other(e)))?
    .map_err(failed)?;
    TcpStream::from_std(stream).map_err(failed)
}

/// Serves one port-forward session on `io` (after the upgrade) until the client goes away.
pub async fn session<IO>(io: IO, dial: Arc<dyn Dial>, namespace: String, pod: String)
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let mut session = spdy::serve(io);
    // Streams waiting for their pair, by requestID.
    let mut waiting: HashMap<String, spdy::Stream> = HashMap::new();
    while let Some(stream) = session.streams.recv().await {
        let id = stream.header("requestid").unwrap_or_default().to_string();
        let Some(other) = waiting.remove(&id) else {
            waiting.insert(id, stream);
            continue;
        };
        let (error, data) = if stream.header("streamtype") == Some("error") {
            (stream, other)
        } else {
            (other, stream)
        };
        let port = data
            .header("port")
            .or(error.header("port"))
            .and_then(|p| p.parse::<u16>().ok())
            .filter(|p| *p > 0);
        let (dial, namespace, pod) = (dial.clone(), namespace.clone(), pod.clone());
        tokio::spawn(async move {
            let Some(port) = port else {
                let _ = error
                    .out
                    .send(b"invalid port in the port-forward request")
                    .await;
                let _ = error.out.finish().await;
                let _ = data.out.finish().await;
                return;
            };
            match dial.dial(&namespace, &pod, port).await {
                Ok(conn) => forward(conn, data).await,
                Err(message) => {
                    let _ = error.out.send(message.as_bytes()).await;
                    let _ = data.out.finish().await;
                }
            }
            // kubectl reads the error stream to its end: a FIN, never a reset.
            let _ = error.out.finish().await;
        });
    }
    session.close().await;
}

/// Copies both ways between the pod's connection and the data stream until both have ended.
async fn forward(conn: TcpStream, mut data: spdy::Stream) {
    let (mut from_pod, mut to_pod) = conn.into_split();
    let out = data.out.clone();
    let upstream = async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match from_pod.read(&mut buf).await {
                Ok(n) if n > 0 => {
                    if out.send(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                _ => break,
            }
        }
        let _ = out.finish().await;
    };
    let downstream = async move {
        while let Some(chunk) = data.data.recv().await {
            if to_pod.write_all(&chunk).await.is_err() {
                break;
            }
        }
        let _ = to_pod.shutdown().await;
    };
    // When one direction ends, the other has a second to finish, then both are closed (as
    // containerd's CRI port-forward does): kubectl closes its local connection only when
    // this connection's error stream ends, and that is after both.
    tokio::pin!(upstream, downstream);
    tokio::select! {
        _ = &mut upstream => {
            let _ = tokio::time::timeout(LINGER, downstream).await;
        }
        _ = &mut downstream => {
            let _ = tokio::time::timeout(LINGER, upstream).await;
        }
    }
}

/// The WebSocket tunnel's bytes as a byte stream: each binary message is the next slice of
/// the SPDY session, both ways.
pub fn tunnel(socket: WebSocket) -> tokio::io::DuplexStream {
    use futures_util::{SinkExt, StreamExt};
    let (ours, theirs) = tokio::io::duplex(64 * 1024);
    let (mut read_half, mut write_half) = tokio::io::split(theirs);
    let (mut sink, mut source) = socket.split();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            tokio::select! {
                read = read_half.read(&mut buf) => match read {
                    Ok(n) if n > 0 => {
                        let message = Message::Binary(Bytes::copy_from_slice(&buf[..n]));
                        if sink.send(message).await.is_err() {
                            break;
                        }
                    }
                    _ => {
                        let _ = sink.close().await;
                        break;
                    }
                },
                message = source.next() => match message {
                    Some(Ok(Message::Binary(bytes))) => {
                        if write_half.write_all(&bytes).await.is_err() {
                            break;
                        }
                    }
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                    Some(Ok(_)) => {}
                },
            }
        }
    });
    ours
}

/// The ports a WebSocket port-forward asks for: `ports=80,443` or `ports` repeated. Err: what
/// is wrong, for the client.
pub fn ports(query: &str) -> Result<Vec<u16>, String> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query)
        .map_err(|e| format!("the query string is not valid: {e}"))?;
    let mut ports = Vec::new();
    for (k, v) in pairs.iter().filter(|(k, _)| k == "ports") {
        for p in v.split(',').map(str::trim) {
            match p.parse::<u16>() {
                Ok(n) if n > 0 => ports.push(n),
                _ => return Err(format!("{k}: invalid port {p:?}")),
            }
        }
    }
    if ports.is_empty() {
        return Err("query parameter \"port\" is required".into());
    }
    Ok(ports)
}

/// Port-forward over a WebSocket's channels (kubelet's `v4.channel.k8s.io` port-forward): the
/// i-th port's data is channel 2i and its errors 2i+1, each announced first with the port as
/// two little-endian bytes. One connection per port, for the life of the WebSocket.
pub async fn channel_session(
    socket: WebSocket,
    dial: Arc<dyn Dial>,
    namespace: String,
    pod: String,
    ports: Vec<u16>,
) {
    use futures_util::{SinkExt, StreamExt};
    let (mut sink, mut source) = socket.split();
    let (out_tx, mut out_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
    let mut to_pod = HashMap::new();
    let mut tasks = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let (data, error) = (2 * i as u8, 2 * i as u8 + 1);
        for channel in [data, error] {
            let mut hello = vec![channel];
            hello.extend_from_slice(&port.to_le_bytes());
            if sink.send(Message::Binary(hello.into())).await.is_err() {
                return;
            }
        }
        match dial.dial(&namespace, &pod, *port).await {
            Ok(conn) => {
                let (mut reader, writer) = conn.into_split();
                to_pod.insert(data, writer);
                let out = out_tx.clone();
                tasks.push(tokio::spawn(async move {
                    let mut buf = vec![0u8; 32 * 1024];
                    while let Ok(n) = reader.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        let mut message = vec![data];
                        message.extend_from_slice(&buf[..n]);
                        if out.send(message).await.is_err() {
                            break;
                        }
                    }
                }));
            }
            Err(message) => {
                let mut m = vec![error];
                m.extend_from_slice(message.as_bytes());
                let _ = out_tx.send(m).await;
            }
        }
    }
    drop(out_tx);
    loop {
        tokio::select! {
            out = out_rx.recv() => match out {
                Some(message) => {
                    if sink.send(Message::Binary(message.into())).await.is_err() {
                        break;
                    }
                }
                // Every pod connection has ended.
                None => break,
            },
            message = source.next() => match message {
                Some(Ok(Message::Binary(data))) => {
                    let Some((&channel, rest)) = data.split_first() else { continue };
                    if let Some(writer) = to_pod.get_mut(&channel) {
                        if !rest.is_empty() && writer.write_all(rest).await.is_err() {
                            to_pod.remove(&channel);
                        }
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
        }
    }
    for t in tasks {
        t.abort();
    }
    let _ = sink.close().await;
}
